"""gatekit doctor on the deployed lab: every check passes on the fresh deploy, then hosts are broken on purpose
(one break per check, several at once) and each check must fail naming what it saw, then pass again once the
break is undone. Every break is undone in a finally (later tests share these hosts), with the original files'
contents and times, so neither the gateways nor a re-deploy can tell anything happened.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gatekit.render import redis_acl_hash
from lab.checks import deployment_id, redis_cli, wait_for_scrapes
from lab.env import REPO

CHECKS_GATEWAY = {"memory", "stale_key", "switch", "retries_cost", "routing", "routing_calls", "streaming_config", "streaming_call",
                  "exposure", "tls", "supply_chain", "redis", "postgres", "drift"}
CHECKS_DATA = {"redis", "postgres", "monitoring", "drift"}  # data1 is the monitoring host too
BACKUP = "/root/gk-doctor-backup"


def doctor(lab, *args: str) -> tuple[int, dict, str]:
    p = subprocess.run([sys.executable, "-m", "gatekit.cli", "doctor", str(lab.inventory_path), "--json", *args],
                       cwd=REPO, env=lab.env(), capture_output=True, text=True, timeout=600)
    leaked = [n for n, v in lab.secret_values.items() if v in p.stdout or v in p.stderr]
    assert not leaked, f"doctor printed the value of {leaked}"
    try:
        data = json.loads(p.stdout)
    except ValueError:
        pytest.fail(f"doctor printed no JSON (rc={p.returncode}): {p.stderr[-2000:]}")
    return p.returncode, data, p.stderr


def by_host(lab, data: dict) -> dict[str, dict[str, dict]]:
    """{sandbox name: {check: result}}; the inventory names hosts by address."""
    names = {h.address: n for n, h in lab.hosts.items()}
    out: dict[str, dict[str, dict]] = {}
    for r in data["results"]:
        out.setdefault(names.get(r["host"], r["host"]), {})[r["check"]] = r
    return out


def test_doctor_passes_on_the_deployed_lab(lab):
    wait_for_scrapes(lab)  # the monitoring check reads Prometheus' last scrape of each target
    rc, data, _ = doctor(lab, "--calls")
    results = by_host(lab, data)
    bad = [r for r in data["results"] if r["status"] != "ok"]
    assert rc == 0 and data["ok"] and not bad, bad
    for gw in ("gw1", "gw2"):
        assert set(results[gw]) == CHECKS_GATEWAY
    assert set(results["data1"]) == CHECKS_DATA
    # gw2 runs two workers per instance: its spawned workers hold the keys in their environment, and doctor read them.
    assert "4 process(es)" in results["gw2"]["stale_key"]["evidence"]


# ---- the breaks, each with its undo --------------------------------------------------------------------
def save(host, *paths: str):
    host.run(f"mkdir -p {BACKUP} && " + " && ".join(f"cp -a {p} {BACKUP}/{i}" for i, p in enumerate(paths)))


def restore(host, *paths: str):
    # cp -a: the original bytes, owner, mode and modification time (the stale-key check compares times).
    host.run(" ; ".join(f"cp -a {BACKUP}/{i} {p}" for i, p in enumerate(paths)) + f" ; rm -rf {BACKUP}", check=False)


def unit_dropin(port: int) -> str:
    return f"/run/systemd/system/litellm@{port}.service.d/zz-doctor-test.conf"


def test_each_check_fails_on_its_break_and_passes_after_the_repair(lab):
    gw1, gw2, data1 = lab.hosts["gw1"], lab.hosts["gw2"], lab.hosts["data1"]
    L1, L2 = lab.layout("gw1"), lab.layout("gw2")
    p1 = lab.live_ports("gw1")
    site2 = f"{L2.venv}/lib/python3.11/site-packages"
    cert1 = L1.tls_pair[0]
    gw1_files = (L1.config, cert1, L1.tls_pair[1])
    gw2_files = (L2.nginx_site, L2.cred("openai_key"), f"{site2}/six.py")
    pg_hba = data1.run("runuser -u postgres -- psql -XtAc 'SHOW hba_file'").stdout.strip()  # the running server's
    assert pg_hba.startswith("/etc/postgresql/") and pg_hba.endswith("/main/pg_hba.conf"), pg_hba
    # Two deployments cool down, one of a model named with ':' (LiteLLM's key embeds the name whole).
    cooling = [deployment_id(lab, "gw1", "claude"), deployment_id(lab, "gw1", "llama3:8b")]
    save(gw1, *gw1_files)
    save(gw2, *gw2_files)
    save(data1, pg_hba)
    try:
        # gw1: a hand-edited live config (retry 429s, a pricier fallback); MemoryMax lifted on one live instance,
        # the sandbox loosened on the other; a certificate about to expire.
        gw1.run(f"sed -i 's/RateLimitErrorRetries: 0/RateLimitErrorRetries: 3/; s/^  - smart:$/  - fast:\\n    - claude\\n  - smart:/' {L1.config}")
        for port, lines in ((p1[0], "MemoryMax=infinity"),
                            (p1[-1], "PrivateUsers=no\nProtectSystem=no\nProtectHome=no\nNoNewPrivileges=no\n"
                                     "CapabilityBoundingSet=~\nSystemCallFilter=\nRestrictNamespaces=no\nRestrictAddressFamilies=")):
            gw1.run(f"mkdir -p $(dirname {unit_dropin(port)}) && printf '[Service]\\n{lines}\\n' > {unit_dropin(port)}")
        gw1.run("systemctl daemon-reload")
        gw1.run(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3 -subj /CN=doctor-test "
                f"-keyout {L1.tls_pair[1]} -out {cert1} 2>/dev/null")
        # gw2: nginx buffers streams (file only: nginx -T shows it, the running nginx keeps serving unbuffered);
        # a credential re-encrypted under the live instances (a key staged without a restart); a planted .pth and a
        # modified file in the venv.
        gw2.run(f"sed -i '0,/proxy_buffering off;/s//proxy_buffering on;/' {L2.nginx_site}")
        gw2.run(f"systemd-creds encrypt --name=openai_key - {L2.cred('openai_key')}", input="gk-doctor-test-not-a-key")
        gw2.run(f"echo '# planted by test_doctor' > {site2}/zz-doctor-test.pth && echo '# modified by test_doctor' >> {site2}/six.py")
        # data1: PostgreSQL trusts the gateways (no password); a deployment cools down (LiteLLM's key in Redis).
        data1.run(f"sed -i 's/scram-sha-256/trust/' {pg_hba} && systemctl reload postgresql")
        redis_cli(lab, *[f"SET deployment:{i}:cooldown doctor-test EX 120" for i in cooling])

        rc, data, _ = doctor(lab)
        assert rc == 1 and not data["ok"]
        r = by_host(lab, data)
        expect = {
            ("gw1", "retries_cost"): ["RateLimitErrorRetries=3", "fallback fast -> claude is pricier"],
            ("gw1", "memory"): [f"litellm@{p1[0]}.service: MemoryMax=infinity"],
            ("gw1", "exposure"): [f"litellm@{p1[-1]}.service: exposure"],
            ("gw1", "tls"): [f"{cert1} expires in", "days (limit 14)"],
            ("gw1", "routing"): [f"deployment {i} is cooling down" for i in cooling],
            ("gw1", "drift"): ["Switch LiteLLM to its new inputs: config.yaml"],  # staged, never written live
            ("gw2", "streaming_config"): ["proxy_buffering on"],
            ("gw2", "stale_key"): ["before openai_key.cred was last written"],
            ("gw2", "supply_chain"): [".pth in no RECORD: lib/python3.11/site-packages/zz-doctor-test.pth",
                                      "modified: lib/python3.11/site-packages/six.py"],
            ("gw2", "postgres"): ["without password: ok (no password asked)"],
            ("data1", "postgres"): [],  # pg_isready still fine: the break is seen from the gateways
            ("data1", "drift"): ["pg_hba"],
        }
        for (host, check), words in expect.items():
            res = r[host][check]
            if not words:
                continue
            assert res["status"] == "fail", (host, res)
            for w in words:
                assert w in res["evidence"], (host, check, w, res["evidence"])
            assert res["fix"]
        # What was not broken still passes, and model calls were not made without --calls.
        for host, check in (("gw2", "memory"), ("gw2", "exposure"), ("gw2", "tls"), ("gw1", "stale_key"),
                            ("gw1", "supply_chain"), ("gw1", "streaming_config"), ("data1", "postgres")):
            assert r[host][check]["status"] == "ok", r[host][check]
        assert {r["gw1"]["routing_calls"]["status"], r["gw2"]["streaming_call"]["status"]} == {"skipped"}
    finally:
        restore(gw1, *gw1_files)
        gw1.run(f"rm -f {unit_dropin(p1[0])} {unit_dropin(p1[-1])}; systemctl daemon-reload", check=False)
        restore(gw2, *gw2_files)
        gw2.run(f"rm -f {site2}/zz-doctor-test.pth", check=False)
        restore(data1, pg_hba)
        data1.run("systemctl reload postgresql", check=False)
        redis_cli(lab, *[f"DEL deployment:{i}:cooldown" for i in cooling])

    wait_for_scrapes(lab)
    rc, data, _ = doctor(lab)
    bad = [r for r in data["results"] if r["status"] == "fail"]
    assert rc == 0 and data["ok"] and not bad, bad


def test_redis_without_a_password_fails_on_the_data_host_and_the_gateways(lab):
    """A separate round: with no password Redis also refuses remote clients (protected mode), which would hide the
    cooldown break above. The password is sent to redis-cli over stdin, never in its arguments."""
    data1 = lab.hosts["data1"]
    pw = lab.secret_values["redis_password"]
    data1.run("redis-cli", input=f"AUTH {pw}\nACL SETUSER default nopass\n")
    try:
        rc, data, _ = doctor(lab, "--host", "data1")
        r = by_host(lab, data)["data1"]
        assert rc == 1 and r["redis"]["status"] == "fail", r["redis"]
        assert "local 127.0.0.1:6379: answers PING without a password" in r["redis"]["evidence"]
        rc, data, _ = doctor(lab, "--host", "gw1")
        gw = by_host(lab, data)["gw1"]["redis"]
        assert gw["status"] == "fail" and "without password" in gw["evidence"], gw
    finally:
        data1.run("redis-cli", check=False, input=f"ACL SETUSER default resetpass #{redis_acl_hash(pw)}\n")
    rc, data, _ = doctor(lab, "--host", "data1")
    assert rc == 0 and by_host(lab, data)["data1"]["redis"]["status"] == "ok", data


def test_the_call_checks_fail_on_a_lumped_stream_and_a_failing_model(lab, provider):
    """--calls, broken for real: gw2's nginx buffers streams (told to ignore LiteLLM's X-Accel-Buffering, which
    otherwise turns buffering off per response), so the streamed call arrives in one lump; the provider fails
    every call of one model, so routing_calls names it on every gateway. Both pass once undone."""
    gw2 = lab.hosts["gw2"]
    site = lab.layout("gw2").nginx_site
    save(gw2, site)
    try:
        gw2.run(f"sed -i 's/proxy_buffering off;/proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;/' {site}"
                " && nginx -t && systemctl reload nginx")
        provider.faults(500, model="fake-smart")
        rc, data, _ = doctor(lab, "--calls")
        r = by_host(lab, data)
        assert rc == 1
        assert r["gw2"]["streaming_call"]["status"] == "fail", r["gw2"]["streaming_call"]
        assert r["gw1"]["streaming_call"]["status"] == "ok", r["gw1"]["streaming_call"]
        for gw in ("gw1", "gw2"):
            calls = r[gw]["routing_calls"]
            assert calls["status"] == "fail" and "smart" in calls["evidence"] and calls["fix"], calls
            assert "fast" not in calls["evidence"], calls
    finally:
        provider.clear_faults()
        restore(gw2, site)
        gw2.run("systemctl reload nginx", check=False)
    rc, data, _ = doctor(lab, "--calls")
    r = by_host(lab, data)
    for gw in ("gw1", "gw2"):
        assert {r[gw][c]["status"] for c in ("streaming_call", "routing_calls", "streaming_config")} == {"ok"}, r[gw]
