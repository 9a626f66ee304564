"""The whole stack on booted hosts: deploy, serve, stream, re-run, self-heal, contain, isolate, keep secrets.

Tests run in file order against one deployed stack; the host-adding test comes last because it
changes the inventory.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
import ssl
import statistics
import time

import httpx
import pytest

from lab.env import WHEELHOUSE_PORT
from tests.e2e.conftest import ADDED, ADDED_SETTINGS, ADDED_SUITE
from lab.checks import OOM_ALLOCATOR, completion, doctor_failures, secret_locations, unit_memory_cgroup, wait_until

PORT = 4001
UNIT = f"litellm@{PORT}.service"


def test_fresh_deploy_serves_each_gateway_over_tls(lab, client, provider):
    assert lab.first_deploy.ok, lab.first_deploy.stderr[-3000:]
    assert lab.first_deploy.changes > 0
    for gw in ("gw1", "gw2"):
        since = time.time()
        r = completion(client, lab.gateway_url(gw), model="fast")
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].startswith("fake-answer model=fake-fast")
        seen = provider.requests(since=since)
        assert any(req["model"] == "fake-fast" and req["status"] == 200 for req in seen)
        # Upstream-detail headers are stripped by nginx; nginx does not advertise its version.
        assert not [h for h in r.headers if h.lower().startswith("x-litellm-")]
        assert r.headers.get("server") == "nginx"


def test_anthropic_model_and_alias_route(lab, client):
    url = lab.gateway_url("gw1")
    r = completion(client, url, model="claude")
    assert r.status_code == 200, r.text
    assert "fake-claude" in r.json()["choices"][0]["message"]["content"]
    r = completion(client, url, model="gpt-4o")  # alias of smart
    assert r.status_code == 200, r.text
    assert "fake-smart" in r.json()["choices"][0]["message"]["content"]


def test_http_redirects_to_https(lab, client):
    r = client.get(f"http://{lab.hosts['gw1'].address}/v1/models", follow_redirects=False)
    assert r.status_code == 301
    assert r.headers["location"].startswith("https://")


def test_stream_arrives_in_separate_chunks(lab, client, provider):
    provider.stream(chunks=6, delay=0.2)
    try:
        for gw in ("gw1", "gw2"):
            body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            t0 = time.monotonic()
            arrivals = []
            with client.stream("POST", f"{lab.gateway_url(gw)}/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(line[6:]).get("choices") else {}
                        if delta.get("content"):
                            arrivals.append(time.monotonic() - t0)
            assert len(arrivals) >= 5, arrivals
            span = arrivals[-1] - arrivals[0]
            # 6 chunks 200 ms apart: the first must arrive about a second before the last, not with it.
            assert span > 0.6, f"{gw}: chunks arrived together: {arrivals}"
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
            assert statistics.median(gaps) > 0.1, f"{gw}: chunks lumped: {arrivals}"
    finally:
        provider.stream(chunks=5, delay=0.2)


def test_nginx_effective_config_unbuffered(lab):
    for gw in ("gw1", "gw2"):
        conf = lab.hosts[gw].run("nginx -T 2>/dev/null").stdout
        block = conf[conf.index("# configuration file /etc/nginx/conf.d/gatekit.conf:"):]
        # The TLS server's own level, which every location inherits; no location sets its own.
        tls = re.sub(r"#[^\n]*", "", block[block.index(" ssl default_server;"):])
        server_level = re.sub(r"location [^{]*\{[^}]*\}", "", tls[: tls.index("location ")])
        for directive in ("proxy_buffering off;", "proxy_request_buffering off;", "proxy_http_version 1.1;",
                          'proxy_set_header Connection "";'):
            assert directive in server_level, directive
        assert re.search(r"proxy_read_timeout \d+s;", server_level)
        for location in re.findall(r"location [^{]*\{[^}]*\}", tls):
            assert "proxy_buffering" not in location and "proxy_set_header" not in location, location
        assert "proxy_buffering on" not in conf
        assert "server_tokens off;" in conf
        assert "gzip off;" in block


def test_second_run_changes_nothing(lab):
    again = lab.deploy()
    assert again.ok
    assert again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in lab.hosts}
    lab.rerun_seconds = again.seconds


def test_failed_venv_build_stops_the_deploy_and_leaves_the_live_venv(lab, client):
    """An install that cannot complete (here: a wheelhouse URL with nothing behind it) fails the deploy with
    the build's own log; the live venv, the running instance and traffic are untouched."""
    gws = [lab.hosts[n] for n in lab.groups["gateways"]]
    venv = {gw.name: lab.layout(gw.name).venv for gw in gws}
    live = {gw.name: gw.run(f"readlink {venv[gw.name]}").stdout.strip() for gw in gws}
    assert all(v.startswith(lab.layout(n).venvs_dir + "/") for n, v in live.items()), live
    pids = {gw.name: _show(gw, "MainPID") for gw in gws}
    saved = dict(lab.settings)
    lab.settings["litellm_pip_find_links"] = f"http://{lab.bridge_ip}:{WHEELHOUSE_PORT}/missing/"
    lab.write_spec()
    try:
        failed = lab.deploy(check=False)
    finally:
        lab.settings.clear()
        lab.settings.update(saved)
        lab.write_spec()
    assert not failed.ok
    assert "LiteLLM venv install failed" in failed.stderr and "the live venv is unchanged" in failed.stderr
    for gw in gws:
        assert gw.run(f"readlink {venv[gw.name]}").stdout.strip() == live[gw.name]
        assert _show(gw, "MainPID") == pids[gw.name]  # not restarted
        assert gw.run("systemctl is-active gatekit-venv-install.service", check=False).stdout.strip() != "active"
        r = completion(client, lab.gateway_url(gw.name))
        assert r.status_code == 200, r.text
    # Back to the working settings: the live venv matches them again, so nothing is left to do.
    again = lab.deploy()
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in lab.hosts}


def test_litellm_unit_settings(lab):
    out = lab.hosts["gw1"].run(
        f"systemctl show {UNIT} -p MemoryMax -p MemoryHigh -p Restart -p User -p NoNewPrivileges "
        "-p ProtectSystem -p ProtectHome -p PrivateTmp -p TimeoutStopUSec -p StartLimitBurst"
    ).stdout
    props = dict(line.split("=", 1) for line in out.splitlines())
    assert int(props["MemoryHigh"]) < int(props["MemoryMax"])
    assert props["Restart"] == "always"
    assert props["User"] == "litellm"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict"
    assert props["PrivateTmp"] == "yes"
    assert props["StartLimitBurst"] == "10"
    # LiteLLM is reachable only on loopback: nginx is the only way in.
    listen = lab.hosts["gw1"].run("ss -Hltn").stdout
    assert f"127.0.0.1:{PORT}" in listen and f"0.0.0.0:{PORT}" not in listen


def test_litellm_units_are_contained(lab):
    """systemd's own rating of what each LiteLLM unit could do: 2.5 or lower for the instances (6.4 before
    the unit was hardened), the venv build and the rotation helper (9.6 for a transient unit without the
    kit's properties, measured here too), with the instance serving (the rest of the suite runs against it)."""
    from roles.switch import helper_sandbox
    from roles.venv import build_sandbox

    def exposure(host, unit: str) -> float:
        out = host.run(f"systemd-analyze security --no-pager {unit}").stdout
        return float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))

    for name in lab.groups["gateways"]:
        host, L = lab.hosts[name], lab.layout(name)
        scores = {f"instance {port}": exposure(host, L.instance(port)) for port in lab.live_ports(name)}
        # The transient units with exactly the properties the kit gives them, kept alive to be rated.
        for kind, props in (("venv-build", build_sandbox(L.litellm_home)),
                            ("rotation-helper", helper_sandbox(L, lab.hosts["data1"].address)), ("bare", ())):
            args = " ".join(f"--property={shlex.quote(p)}" for p in props)
            host.run(f"systemd-run --quiet --unit=gk-score-{kind} {args} sleep 120")
            try:
                scores[kind] = exposure(host, f"gk-score-{kind}.service")
            finally:
                host.run(f"systemctl stop gk-score-{kind}.service", check=False)
        print(name, scores)
        assert scores["bare"] > 9, scores  # the rating works: an unconfined root unit is rated unsafe
        assert max(v for k, v in scores.items() if k != "bare") <= 2.5, (name, scores)


RECORD_UVICORN = (
    "import json, os\n"
    "import uvicorn\n"
    "def _record(*args, **kwargs):\n"
    "    with open(os.environ['GK_RECORD'], 'w') as fh:\n"
    "        json.dump({'args': list(args), 'kwargs': kwargs, 'env': dict(os.environ)}, fh, default=repr)\n"
    "    raise SystemExit(0)\n"
    "uvicorn.run = _record\n"
)


def test_direct_uvicorn_launch_matches_litellm_cli(lab):
    """Without a database the launcher runs uvicorn itself instead of through LiteLLM's CLI (whose
    supervisor imports the whole proxy and then serves nothing). Pin that both hand uvicorn the same
    arguments and the workers the same environment, with the locked LiteLLM on a deployed gateway."""
    gw = lab.hosts["gw1"]
    unit = gw.run(f"systemctl cat {UNIT}").stdout
    names = re.findall(r"^LoadCredentialEncrypted=([^:]+):", unit, re.M)
    assert names, unit
    gw.put("/root/gk-hook/sitecustomize.py", RECORD_UVICORN)
    creds = " ".join(f"echo not-a-secret > /root/gk-creds/{n};" for n in names)
    gw.run(f"mkdir -p /root/gk-creds && {creds}")
    seen = {}
    for mode, switch in (("direct", ""), ("cli", "GK_LITELLM_VIA_CLI=1")):
        # A clean environment, like systemd's: only the unit's variables (litellm.env and the ones it sets).
        gw.run(
            f"rm -rf /root/gk-run-{mode}; env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c 'set -a; "
            f". /etc/litellm/litellm.env; set +a; CREDENTIALS_DIRECTORY=/root/gk-creds GK_PORT=4011 "
            f"RUNTIME_DIRECTORY=/root/gk-run-{mode} PYTHONPATH=/root/gk-hook GK_RECORD=/root/gk-{mode}.json {switch} "
            "exec /opt/litellm/bin/gatekit-litellm-launch'",
            timeout=180,
        )
        seen[mode] = json.loads(gw.run(f"cat /root/gk-{mode}.json").stdout)
    direct, cli = seen["direct"], seen["cli"]
    workers = int(lab.host_settings("gw1")["litellm_workers"])
    assert direct["kwargs"]["app"] == "litellm.proxy.proxy_server:app"
    assert direct["kwargs"]["workers"] == workers
    # The one difference: the loop factory runs Python's cycle collector between loop callbacks only.
    assert direct["kwargs"].pop("loop") == "gcpolicy:new_event_loop" and cli["kwargs"].pop("loop") == "uvloop"
    assert (direct["args"], direct["kwargs"]) == (cli["args"], cli["kwargs"])
    ours = {"GK_LITELLM_VIA_CLI", "GK_RECORD", "RUNTIME_DIRECTORY", "PROMETHEUS_MULTIPROC_DIR"}
    differ = {k for k in set(direct["env"]) | set(cli["env"]) if k not in ours
              and direct["env"].get(k) != cli["env"].get(k)}
    assert not differ, {k: (direct["env"].get(k), cli["env"].get(k)) for k in differ}
    assert "WORKER_CONFIG" in direct["env"] and "NUM_WORKERS" in direct["env"]
    # The running instance. With several workers its main process (the uvicorn supervisor) has not loaded
    # the proxy (no pydantic-core in its mappings), its workers have; with one (the default) the main
    # process is the server itself, with no child.
    main = _show(gw, "MainPID")
    assert "gatekit-litellm-launch" in gw.run(f"tr '\\0' ' ' < /proc/{main}/cmdline").stdout
    main_loaded = gw.run(f"grep -c pydantic_core /proc/{main}/maps", check=False).stdout.strip() != "0"
    children = gw.run(f"cat /proc/{main}/task/*/children").stdout.split()
    loaded = [w for w in children if gw.run(f"grep -c pydantic_core /proc/{w}/maps", check=False).stdout.strip() != "0"]
    if workers == 1:
        assert main_loaded and not children, children
    else:
        assert not main_loaded and len(loaded) == workers, (children, loaded)
    gw.run("rm -rf /root/gk-hook /root/gk-creds /root/gk-run-* /root/gk-direct.json /root/gk-cli.json")


def _show(host, prop: str) -> str:
    return host.run(f"systemctl show {UNIT} -p {prop} --value").stdout.strip()


def test_kill_9_main_process_is_restarted(lab, client):
    gw = lab.hosts["gw1"]
    pid, restarts = _show(gw, "MainPID"), int(_show(gw, "NRestarts"))
    assert pid != "0"
    gw.run(f"kill -9 {pid}")
    wait_until(lambda: int(_show(gw, "NRestarts")) > restarts and _show(gw, "MainPID") not in ("0", pid),
               60, what="systemd to restart LiteLLM")
    r = wait_until(lambda: completion(client, lab.gateway_url("gw1")).status_code == 200, 120,
                   what="LiteLLM to answer again after kill -9")
    assert r


def _unit_memory_cgroup(host) -> str:
    return unit_memory_cgroup(host, UNIT)


def test_memory_max_is_enforced_by_the_kernel(lab, client):
    gw = lab.hosts["gw1"]
    cg = _unit_memory_cgroup(gw)
    limit = int(gw.run(f"cat {cg}/memory.limit_in_bytes").stdout)
    assert limit == int(_show(gw, "MemoryMax")), "MemoryMax is not applied to the unit's memory cgroup"
    gw.put("/root/alloc.py", OOM_ALLOCATOR)

    # 1. A process in the unit allocating 6.4 GB against a ~1.1 GB MemoryMax is killed by the kernel;
    #    LiteLLM itself keeps serving.
    restarts = int(_show(gw, "NRestarts"))
    oom_kills = lambda: int(gw.run(f"awk '/^oom_kill / {{print $2}}' {cg}/memory.oom_control").stdout or 0)  # noqa: E731
    before = oom_kills()
    r = gw.run(f"python3 /root/alloc.py {cg} 0; echo rc=$?", check=False, timeout=120)
    assert "survived" not in r.stdout and "rc=137" in r.stdout, r.stdout + r.stderr
    assert oom_kills() > before, "the allocator died, but not by the cgroup's OOM killer"
    assert int(_show(gw, "NRestarts")) == restarts
    assert completion(client, lab.gateway_url("gw1")).status_code == 200

    # 2. When the kernel's choice falls on LiteLLM's main process (raised oom_score_adj: raising needs no
    #    privilege, lowering does), the instance is killed by the kernel and systemd restarts it.
    main = _show(gw, "MainPID")
    gw.run(f"echo 1000 > /proc/{main}/oom_score_adj")
    since = gw.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    gw.run(f"python3 /root/alloc.py {cg} 0; true", check=False, timeout=180)
    wait_until(lambda: int(_show(gw, "NRestarts")) > restarts, 90, what="restart after the OOM kill")
    journal = gw.run(f"journalctl -u {UNIT} --since '{since}' --no-pager -o cat").stdout
    assert "status=9/KILL" in journal, journal[-2000:]
    wait_until(lambda: completion(client, lab.gateway_url("gw1")).status_code == 200, 120,
               what="LiteLLM to answer after the OOM restart")


def test_redis_refuses_unauthenticated_and_flushall(lab):
    data = lab.hosts["data1"]
    addr = data.address
    r = data.run(f"redis-cli -h {addr} ping", check=False)
    assert "NOAUTH" in r.stdout + r.stderr
    pw = lab.secret_values["redis_password"]
    auth = "read -r REDISCLI_AUTH; export REDISCLI_AUTH; "
    assert data.run(auth + f"redis-cli -h {addr} ping", input=pw + "\n").stdout.strip() == "PONG"
    r = data.run(auth + f"redis-cli -h {addr} flushall", input=pw + "\n", check=False)
    assert "NOPERM" in r.stdout + r.stderr
    # Redis listens on loopback and the private address only.
    listen = data.run("ss -Hltn").stdout
    assert "0.0.0.0:6379" not in listen and f"{addr}:6379" in listen


@pytest.fixture(scope="module")
def psql_on_gw1(lab):
    lab.hosts["gw1"].run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client >/dev/null",
                         timeout=300)
    return lab.hosts["gw1"]


def test_postgres_admits_only_gateways_with_password(lab, psql_on_gw1):
    data_addr = lab.hosts["data1"].address
    pw = lab.secret_values["postgres_password"]
    dsn = f"host={data_addr} user=litellm dbname=litellm connect_timeout=5"
    with_pw = "read -r PGPASSWORD; export PGPASSWORD; "
    # From a gateway with the password: accepted, as the LiteLLM role.
    r = psql_on_gw1.run(with_pw + f"psql '{dsn}' -XtAc 'select current_user'", input=pw + "\n")
    assert r.stdout.strip() == "litellm"
    # From a gateway without a password: refused.
    r = psql_on_gw1.run(f"psql '{dsn}' -w -XtAc 'select 1'", check=False)
    assert r.returncode != 0 and "password" in (r.stdout + r.stderr).lower()
    # With a wrong password: refused.
    r = psql_on_gw1.run(with_pw + f"psql '{dsn}' -XtAc 'select 1'", input="wrong\n", check=False)
    assert r.returncode != 0 and "authentication failed" in r.stderr
    # From a non-gateway address (the data host's own private address), even with the password: refused.
    r = lab.hosts["data1"].run(with_pw + f"psql '{dsn}' -XtAc 'select 1'", input=pw + "\n", check=False)
    assert r.returncode != 0 and "no pg_hba.conf entry" in r.stderr


def test_plaintext_secrets_appear_nowhere(lab, client):
    # pyinfra's own output, first run.
    for text in (lab.first_deploy.stdout, lab.first_deploy.stderr):
        for value in lab.secret_values.values():
            assert value not in text
    # Generate some traffic first so request paths have had their chance to log.
    assert completion(client, lab.gateway_url("gw2")).status_code == 200
    assert secret_locations(lab, lab.secret_values.values()) == []
    # Credentials on disk are encrypted and root-only.
    gw = lab.hosts["gw1"]
    listing = gw.run("stat -c '%a %U %n' /etc/gatekit/creds /etc/gatekit/creds/*.cred").stdout
    for line in listing.splitlines():
        mode, owner, _ = line.split(" ", 2)
        assert owner == "root" and mode in ("700", "600"), line


PROBE_IP_FILTER = "systemd-run --quiet --wait --pipe --collect -p IPAddressDeny=any /bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/9' 2>&1 || true"


def test_an_egress_allowlist_systemd_cannot_enforce_stops_the_deploy(lab):
    """litellm_egress_allow is enforced by systemd's BPF cgroup firewall (IPAddressDeny=). Where systemd
    cannot attach it (these sandbox hosts run in a cgroup v1 hierarchy) it only logs a warning and lets
    everything through: the deploy must refuse, naming the host and the fix, and change nothing. Where it
    is enforced, the unit gets the allowlist."""
    gw = lab.hosts["gw2"]
    enforced = "not permitted" in gw.run(PROBE_IP_FILTER).stdout.lower()
    unit_before = gw.run(f"cat {lab.layout('gw2').unit_file}").stdout
    gw.data["litellm_egress_allow"] = [f"{lab.bridge_ip}/32"]
    try:
        lab.write_inventory(lab.groups)
        result = lab.deploy(check=False)
    finally:
        del gw.data["litellm_egress_allow"]
        lab.write_inventory(lab.groups)
    if enforced:
        assert result.ok and "IPAddressDeny=any" in gw.run(f"cat {lab.layout('gw2').unit_file}").stdout
        assert lab.deploy().ok  # back to no allowlist
    else:
        assert not result.ok and "does not enforce IPAddressDeny=" in result.stderr, result.stderr[-2000:]
        assert "Fix: boot the host with the unified cgroup hierarchy" in result.stderr
        assert gw.run(f"cat {lab.layout('gw2').unit_file}").stdout == unit_before
    assert lab.deploy().changes == 0


def test_added_host_is_provisioned_existing_unchanged(lab, client):
    """The added gateway runs Debian 13 (Python 3.13, systemd 257, nginx 1.26) beside the Debian 12 fleet: the same
    deploy provisions it from the same locks, it serves, a re-run changes nothing, and doctor finds nothing wrong
    on it (the supply-chain check reads the lock's markers for its Python)."""
    result = lab.add_gateway(ADDED, suite=ADDED_SUITE, settings=ADDED_SETTINGS)
    gw3 = lab.hosts[ADDED]
    assert gw3.run("python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 13)"
    assert result.ok
    assert result.changed_ops(gw3.address), "the new host was not provisioned"
    for name in ("gw1", "gw2"):
        assert result.changed_ops(lab.hosts[name].address) == [], name
    # The data host admits the new gateway in pg_hba (and reloads), and its Prometheus scrapes it (checked,
    # then reloaded); nothing else changes there.
    # (pyinfra names an operation after the first host that ran it at that place of the deploy: gw3's name
    # may stand for data1's scrape configuration, so that one is counted, not named.)
    data_changes = result.changed_ops(lab.hosts["data1"].address)
    assert len(data_changes) == 5 and {"Monitoring | Check Prometheus' configuration and rules (promtool)",
                                       "Monitoring | Reload Prometheus for its new targets or rules",
                                       "PostgreSQL | Reload PostgreSQL for new pg_hba",
                                       "PostgreSQL | Render pg_hba.conf (only gateway hosts admitted)"} <= set(data_changes), data_changes
    r = completion(client, lab.gateway_url("gw3"))
    assert r.status_code == 200, r.text
    prometheus = f"http://{lab.hosts['data1'].address}:{lab.host_settings('data1')['monitoring_prometheus_port']}"

    def gw3_scraped():
        up = httpx.get(f"{prometheus}/api/v1/query", params={"query": f'up{{host="{gw3.address}"}}'}, timeout=30,
                       trust_env=False).json()["data"]["result"]
        return {r["metric"]["job"] for r in up if r["value"][1] == "1"} >= {"node", "litellm", "gateway_probe"}

    wait_until(gw3_scraped, 60, what="Prometheus to scrape the new gateway")
    final = lab.deploy()
    assert final.ok and final.changes == 0
    assert doctor_failures(lab, "gw3") == {}


def test_non_default_paths_and_ports_are_used_everywhere(lab, client):
    """gw2 is deployed with another litellm_home, litellm_config_dir, instance ports, HTTPS port and TLS
    directory (conftest.NON_DEFAULT): every file, unit and listener is where its settings say, and
    nothing lands in the default places."""
    gw, L = lab.hosts["gw2"], lab.layout("gw2")
    assert L.litellm_home != "/opt/litellm" and L.litellm_config_dir != "/etc/litellm"
    port = L.litellm_ports[0]
    unit = gw.run(f"systemctl cat {L.instance(port)}").stdout
    assert f"ExecStart={L.launcher}" in unit and f"EnvironmentFile={L.env_file}" in unit
    for path in (L.config, L.env_file, L.launcher, L.program("rotate.py"), L.program("instance.py"),
                 L.program("layout.py"), L.program("layout.json"), *L.tls_pair):
        assert gw.run(f"test -f {path}", check=False).returncode == 0, path
    # The on-host programs read exactly this layout.
    on_host = gw.run(f"cat {L.program('layout.json')}").stdout
    assert json.loads(on_host)["litellm_config_dir"] == L.litellm_config_dir
    assert json.loads(on_host)["litellm_ports"] == list(L.litellm_ports)
    assert gw.run("test -e /opt/litellm || test -e /etc/litellm", check=False).returncode != 0
    listen = gw.run("ss -Hltn").stdout
    assert f"127.0.0.1:{port}" in listen and f":{L.nginx_https_port} " in listen and ":443 " not in listen
    assert gw.run(f"python3 {L.program('instance.py')} wait-ready {port} --timeout 30", check=False).returncode == 0
    r = completion(client, lab.gateway_url("gw2"))
    assert r.status_code == 200, r.text


PUBLIC_ROUTE = re.compile(r"^/(v1/)?(chat/completions|completions|embeddings|responses|models|models/[A-Za-z0-9._:-]+)$"
                          r"|^/v1/messages(/count_tokens)?$|^/health/(liveliness|liveness)$")
FROM_LOOPBACK = (
    "import ssl, sys, urllib.request\n"
    "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
    "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.stdin.read().strip()})\n"
    "print(urllib.request.urlopen(req, context=ctx, timeout=60).read().decode())\n"
)
LAZY_PREFIXES = "from litellm.proxy._lazy_features import LAZY_FEATURES as F; print('\\n'.join(p for f in F for p in f.path_prefixes))"


def test_public_side_reaches_only_the_client_api(lab, client):
    """Every route LiteLLM serves (its OpenAPI paths and /routes, read through nginx from the gateway's
    loopback, an admin network, plus the prefixes of the routers it registers lazily) is either public
    client API or refused from the public side, master key or not: a LiteLLM upgrade that adds a route
    cannot open it silently."""
    gw, L = lab.hosts["gw1"], lab.layout("gw1")
    key = lab.secret_values["litellm_master_key"]

    def admin_get(path: str) -> dict:
        url = f"https://127.0.0.1:{L.nginx_https_port}{path}"
        return json.loads(gw.run(f"python3 -c {shlex.quote(FROM_LOOPBACK)} {url}", input=key + "\n").stdout)

    paths = {*admin_get("/openapi.json")["paths"], *(r["path"] for r in admin_get("/routes")["routes"])}
    lazy = gw.run(f"{L.venv}/bin/python -c {shlex.quote(LAZY_PREFIXES)}").stdout.split()
    paths |= {p.rstrip("/") + "/x" for p in lazy} | set(lazy)
    assert len(paths) > 100 and {"/v1/chat/completions", "/key/generate", "/v1/messages"} <= paths, sorted(paths)[:50]
    paths = sorted(paths)
    public, refused, wrong = [], [], []
    base = lab.gateway_url("gw1")
    for path in paths:
        concrete = re.sub(r"\{[^}]*\}", "x", path)
        for headers in ({"Authorization": f"Bearer {key}"}, {"Authorization": ""}):
            status = client.get(f"{base}{concrete}", headers=headers).status_code
            if PUBLIC_ROUTE.match(concrete):
                public.append(concrete)
                if status == 403:
                    wrong.append((concrete, status, "public route refused"))
            else:
                refused.append(concrete)
                if status != 403:
                    wrong.append((concrete, status, "admin route reachable from the public side"))
    assert wrong == [], wrong[:20]
    assert {"/v1/chat/completions", "/v1/messages", "/v1/models", "/v1/embeddings"} <= set(public)
    assert {"/routes", "/key/generate", "/model/info", "/health"} <= set(refused)
    for path in ("/ui", "/openapi.json", "/health", "/model/info", "/key/list"):
        assert client.get(f"{base}{path}", headers={"Authorization": ""}).status_code == 403, path
    # A raw path nginx resolves to an admin route is refused; LiteLLM only ever sees the resolved path.
    for raw_path in ("/v1/chat/completions/../../key/list", "/v1/models/..%2F..%2Fkey%2Flist", "//key/list"):
        conn = http.client.HTTPSConnection(gw.address, L.nginx_https_port, timeout=30,
                                           context=ssl._create_unverified_context())
        conn.request("GET", raw_path, headers={"Authorization": f"Bearer {key}"})  # sent as is, not normalized
        assert conn.getresponse().status in (403, 404), raw_path
        conn.close()
    # The client API itself still works from the public side.
    assert completion(client, base).status_code == 200


HOSTILE_PTH_PROBE = r'''
import errno, json, os, socket
def _attempts(state):
    results = {}
    def attempt(name, fn):
        try:
            fn()
            results[name] = "allowed"
        except OSError as exc:  # the errno says which guard refused; the test checks it per attempt
            results[name] = errno.errorcode.get(exc.errno, str(exc.errno))
        except Exception as exc:  # a probe that broke (a typo, an empty directory) proves nothing: reported as such
            results[name] = "probe error: " + type(exc).__name__
    def read(path):
        with open(path, "rb") as fh:
            fh.read(1)
    def write(path):
        with open(path, "w") as fh:
            fh.write("x")
    def read_creds():
        names = os.listdir("{creds}")
        read("{creds}/" + names[0])
    def other_credentials():
        read("{live_credential}")  # the live instance's master key, by its path
    attempt("read /root/.ssh", lambda: os.listdir("/root/.ssh"))
    attempt("read /etc/shadow", lambda: read("/etc/shadow"))
    attempt("read encrypted credentials", read_creds)
    attempt("read another unit's credentials", other_credentials)
    attempt("write a systemd unit", lambda: write("/etc/systemd/system/gk-hostile.service"))
    attempt("write into the venv", lambda: write("{venv}/gk-hostile"))
    attempt("write into the config dir", lambda: write("{config_dir}/gk-hostile"))
    attempt("add a cron job", lambda: write("/etc/cron.d/gk-hostile"))
    attempt("connect elsewhere", lambda: socket.create_connection(("{elsewhere}", 22), timeout=3).close())
    with open(os.path.join(state, "hostile.json"), "w") as fh:
        json.dump(results, fh)
if os.environ.get("GK_PORT") and os.environ.get("GK_PORT") != "0" and not os.path.exists("hostile.json"):
    _attempts(os.getcwd())
'''


# attempt -> the errno its guard gives (ProtectHome=yes, file modes, ProtectSystem=strict, IPAddressDeny=)
HOSTILE_PTH_DENIED = {
    "read /root/.ssh": {"EACCES"},
    "read /etc/shadow": {"EACCES"},
    "read encrypted credentials": {"EACCES"},
    # Hidden: systemd mounts each unit's credentials where only that unit sees them. ENOENT proves it only
    # because the probe first shows, as root on the host, that the same path exists.
    "read another unit's credentials": {"ENOENT"},
    "write a systemd unit": {"EROFS"},
    "write into the venv": {"EROFS"},
    "write into the config dir": {"EROFS"},
    "add a cron job": {"EROFS"},
}


def test_a_hostile_pth_in_the_venv_is_contained(lab, client):
    """Both gateways at once (each start of a standby instance takes a while)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(_hostile_pth_probe, lab, client, gw) for gw in ("gw1", "gw2")]:
            f.result()


def _hostile_pth_probe(lab, client, gateway):
    """A compromised dependency (like LiteLLM 1.82.7's credential stealer, a .pth run at every Python start)
    inside the running service: every attempt to reach beyond the service's own needs fails, and the
    gateway keeps serving. Run in an instance of the gateway's standby set (gw2: non-default
    paths). Outbound connections stay open without litellm_egress_allow (see the next test for why the
    sandbox hosts cannot have one)."""
    gw, L = lab.hosts[gateway], lab.layout(gateway)
    egress = lab.host_settings(gateway).get("litellm_egress_allow")
    elsewhere = lab.hosts["gw1" if gateway == "gw2" else "data1"].address  # neither provider, Redis nor PostgreSQL
    live_set = lab.live_ports(gateway)
    live, standby = live_set[0], L.other_set(live_set)[0]
    site = gw.run(f"{L.venv}/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])'").stdout.strip()
    probe = HOSTILE_PTH_PROBE.replace("{creds}", L.creds_dir).replace("{venv}", L.venv).replace(
        "{config_dir}", L.litellm_config_dir).replace("{elsewhere}", elsewhere).replace(
        "{live_credential}", L.runtime_credential(live, "litellm_master_key"))
    # Every target exists (seen as root): a refusal below is the guard's, not a wrong path's.
    gw.run(f"test -d /root/.ssh && test -s /etc/shadow && test -n \"$(ls -A {L.creds_dir})\" && "
           f"test -s {L.runtime_credential(live, 'litellm_master_key')} && test -d {L.venv}/ && "
           f"test -d {L.litellm_config_dir} && test -d /etc/systemd/system && test -d /etc/cron.d")
    gw.put(f"{site}/gk_hostile_probe.py", probe)
    gw.put(f"{site}/gk_hostile.pth", "import gk_hostile_probe\n")
    result_file = f"{L.instance_dir(standby)}/hostile.json"
    try:
        gw.run(f"rm -f {result_file}; systemctl start {L.instance(standby)}")
        gw.run(f"python3 {L.program('instance.py')} wait-ready {standby} --timeout 180", timeout=200)
        results = json.loads(gw.run(f"cat {result_file}").stdout)
        assert completion(client, lab.gateway_url(gateway)).status_code == 200
    finally:
        gw.run(f"rm -f {site}/gk_hostile.pth {site}/gk_hostile_probe.py {result_file}; "
               f"systemctl stop {L.instance(standby)}", check=False)
    print(gateway, json.dumps(results, indent=1))
    # Each attempt must be refused by the guard meant to stop it, seen in its errno: ENOENT (a wrong path) or a
    # probe error (a typo, an empty directory) is not containment.
    want = dict(HOSTILE_PTH_DENIED)
    want["connect elsewhere"] = {"EPERM"} if egress else {"allowed"}  # open unless litellm_egress_allow is set
    wrong = {k: results.get(k) for k in want if results.get(k) not in want[k]}
    assert set(results) == set(want) and wrong == {}, (wrong, results)
    assert gw.run("test -e /etc/systemd/system/gk-hostile.service || test -e /etc/cron.d/gk-hostile", check=False).returncode != 0