"""gatekit doctor's checks: evidence in (as the on-host collector prints it), results out. Each check passes on a
healthy host's evidence and fails, naming what it saw, on a broken one. No hosts here."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml

from gatekit import doctor as d
from gatekit.defaults import DEFAULTS
from gatekit.onhost import probe
from gatekit.onhost.probe import fingerprint
from gatekit.render import litellm_config_yaml
from gatekit.spec import parse_spec

SECRETS = {"openai_key": "sk-test-openai-1", "anthropic_key": "sk-test-anthropic-1", "litellm_master_key": "sk-master",
           "redis_password": "redis-pw", "postgres_password": "pg-pw"}
SECRET_ENV = {"openai_key": "GK_SECRET_OPENAI_KEY", "anthropic_key": "GK_SECRET_ANTHROPIC_KEY",
              "litellm_master_key": "LITELLM_MASTER_KEY", "redis_password": "REDIS_PASSWORD",
              "postgres_password": "GK_POSTGRES_PASSWORD"}
VAULT_FPS = {n: fingerprint(v) for n, v in SECRETS.items()}
H = "gw1"


def _dep(model, secret="openai_key", **extra):
    return {"provider": "openai", "model": model, "api_base": "http://10.0.0.1:8080/v1", "secret": secret, **extra}


SPEC_DATA = {
    "version": 1,
    "vault": "x.secrets.enc.yaml",
    "models": [
        {"name": "fast", "price": {"input_per_1m": 0.15, "output_per_1m": 0.6}, "deployments": [_dep("f")]},
        {"name": "smart", "price": {"input_per_1m": 2.5, "output_per_1m": 10}, "deployments": [_dep("s")]},
        {"name": "claude", "price": {"input_per_1m": 3, "output_per_1m": 15},
         "deployments": [_dep("c", secret="anthropic_key")]},
    ],
    "fallbacks": [{"from": "smart", "to": ["fast"]}, {"from": "claude", "to": ["smart"]}],
    "aliases": {"gpt-4o": "smart"},
}


def make_spec(**overrides):
    return parse_spec({**copy.deepcopy(SPEC_DATA), **overrides}, Path("inv/lab.gateway.yaml"), secret_names=set(SECRETS))


@pytest.fixture()
def spec():
    return make_spec()


def live_config(spec, edit=None) -> str:
    """config.yaml as the deploy renders it, optionally edited as data (a hand edit on the host)."""
    fps = {s: fingerprint(SECRETS[s]) for s in spec.secrets_used()}
    text = litellm_config_yaml(spec, dict(DEFAULTS), {"host": "10.0.0.3", "port": 6379, "db": 1}, fps)
    if edit is None:
        return text
    data = yaml.safe_load(text)
    edit(data)
    return yaml.safe_dump(data)


# ---- evidence of a healthy gateway, as probe.py prints it ----------------------------------------------
def instance(port: int, start: float = 2000.0, workers_env: dict | None = None, **props) -> dict:
    base = {"ActiveState": "active", "SubState": "running", "MainPID": str(port * 10), "NRestarts": "0",
            "Result": "success", "MemoryMax": str(1600 << 20), "MemoryHigh": str(1400 << 20),
            "MemoryCurrent": str(300 << 20), "Restart": "always", "LoadState": "loaded"}
    procs = [{"pid": port * 10, "ppid": 1, "start": start, "env": {}}]
    if workers_env is not None:
        procs.append({"pid": port * 10 + 1, "ppid": port * 10, "start": start + 1, "env": workers_env})
    return {"unit": f"litellm@{port}.service", "props": {**base, **props}, "processes": procs,
            "runtime_credentials": dict(VAULT_FPS), "oom_kills": 0, "exposure": 1.1}


def gateway(**extra) -> dict:
    gw = {
        "instances": {f"litellm@{p}.service": instance(p) for p in (4001, 4002)},
        "credential_files": {n: {"mtime": 1000.0} for n in SECRETS},
        "live_json": None,
    }
    stopped = instance(4003)
    stopped["props"].update(ActiveState="inactive", MainPID="0", MemoryCurrent="[not set]")
    stopped.update(processes=[], runtime_credentials={})
    gw["instances"]["litellm@4003.service"] = stopped
    gw.update(extra)
    return gw


LIVE = ["litellm@4001.service", "litellm@4002.service"]


def fails_with(result: d.Result, *words: str):
    assert result.status == d.FAIL, result
    for w in words:
        assert w in result.evidence, (w, result.evidence)
    assert result.fix


def passes(result: d.Result):
    assert result.status == d.OK, result


# ---- memory ---------------------------------------------------------------------------------------------
def test_memory_ok_on_a_healthy_gateway():
    r = d.check_memory(H, gateway(), LIVE)
    passes(r)
    assert "300M/1600M" in r.evidence


@pytest.mark.parametrize("props,words", [
    ({"MemoryMax": "infinity"}, ("MemoryMax=infinity",)),
    ({"MemoryHigh": "infinity"}, ("MemoryHigh=infinity",)),
    ({"MemoryHigh": str(1600 << 20)}, ("not below MemoryMax",)),
    ({"Restart": "on-failure"}, ("Restart=on-failure",)),
    ({"NRestarts": "3"}, ("restarted 3 time(s)",)),
    ({"MemoryCurrent": str(1500 << 20)}, ("using 1500M of MemoryMax 1600M",)),
])
def test_memory_fails_on_each_broken_guard(props, words):
    gw = gateway()
    gw["instances"]["litellm@4002.service"]["props"].update(props)
    fails_with(d.check_memory(H, gw, LIVE), "litellm@4002", *words)


def test_memory_counts_oom_kills_and_a_dead_live_instance():
    gw = gateway()
    gw["instances"]["litellm@4001.service"]["oom_kills"] = 2
    gw["instances"]["litellm@4002.service"]["props"].update(ActiveState="failed", Result="oom-kill")
    r = d.check_memory(H, gw, LIVE)
    fails_with(r, "2 OOM kill(s)", "litellm@4002.service (live) is not running (failed/oom-kill)")


# ---- stale keys -----------------------------------------------------------------------------------------
def test_stale_key_ok_when_every_instance_loaded_the_vaults_keys():
    gw = gateway()
    gw["instances"]["litellm@4001.service"] = instance(4001, workers_env={v: VAULT_FPS[n] for n, v in SECRET_ENV.items()})
    passes(d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV))


def test_stale_key_fails_on_an_instance_started_with_an_old_key():
    gw = gateway()
    gw["instances"]["litellm@4002.service"]["runtime_credentials"]["openai_key"] = fingerprint("sk-old")
    r = d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV)
    fails_with(r, "litellm@4002 loaded openai_key at start: differs from the vault")
    assert fingerprint("sk-old") not in r.evidence and VAULT_FPS["openai_key"] not in r.evidence


def test_stale_key_fails_on_a_worker_holding_an_old_key():
    gw = gateway()
    gw["instances"]["litellm@4001.service"] = instance(4001, workers_env={"GK_SECRET_ANTHROPIC_KEY": fingerprint("old")})
    fails_with(d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV), "litellm@4001 pid 40011 holds anthropic_key: differs")


def test_stale_key_fails_on_a_process_older_than_its_credential_file():
    gw = gateway()
    gw["credential_files"]["openai_key"]["mtime"] = 2500.0  # written after the instances started (2000)
    fails_with(d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV), "started 500s before openai_key.cred was last written")


def test_stale_key_tolerates_the_start_time_resolution():
    gw = gateway()
    gw["credential_files"]["openai_key"]["mtime"] = 2001.0  # within a second of the start: same deploy step
    passes(d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV))


def test_stale_key_ignores_stopped_instances():
    gw = gateway()
    gw["instances"]["litellm@4003.service"]["runtime_credentials"] = {"openai_key": fingerprint("old")}
    passes(d.check_stale_key(H, gw, VAULT_FPS, SECRET_ENV))


# ---- retries and cost -----------------------------------------------------------------------------------
def test_retries_cost_ok_on_the_rendered_config(spec):
    passes(d.check_retries_cost(H, live_config(spec), spec))


def test_retries_cost_fails_on_a_hand_edited_429_retry(spec):
    def edit(c):
        c["router_settings"]["retry_policy"]["RateLimitErrorRetries"] = 3
    fails_with(d.check_retries_cost(H, live_config(spec, edit), spec), "RateLimitErrorRetries=3")


def test_retries_cost_fails_when_no_policy_leaves_num_retries_for_4xx(spec):
    def edit(c):
        del c["router_settings"]["retry_policy"]
    r = d.check_retries_cost(H, live_config(spec, edit), spec)
    fails_with(r, "AuthenticationErrorRetries=2 (num_retries, no policy entry)", "BadRequestErrorRetries", "RateLimitErrorRetries")


def test_retries_cost_fails_on_a_pricier_fallback_the_spec_does_not_allow(spec):
    def edit(c):
        c["router_settings"]["fallbacks"].append({"fast": ["claude"]})
    fails_with(d.check_retries_cost(H, live_config(spec, edit), spec), "fallback fast -> claude is pricier")


def test_retries_cost_accepts_a_pricier_fallback_the_spec_allows():
    spec = make_spec(fallbacks=[{"from": "fast", "to": [{"model": "claude", "allow_pricier": True}]}])
    passes(d.check_retries_cost(H, live_config(spec), spec))


def test_retries_cost_fails_on_a_fallback_to_an_unknown_model(spec):
    def edit(c):
        c["router_settings"]["fallbacks"].append({"fast": ["gpt-5-secret-sauce"]})
    fails_with(d.check_retries_cost(H, live_config(spec, edit), spec), "not a model of the spec")


def test_retries_cost_fails_on_missing_or_broken_config(spec):
    fails_with(d.check_retries_cost(H, None, spec), "missing")
    fails_with(d.check_retries_cost(H, "model_list: [\n", spec), "not valid YAML")


# ---- routing --------------------------------------------------------------------------------------------
def test_routing_ok_on_the_rendered_config(spec):
    passes(d.check_routing(H, live_config(spec), spec, []))


def test_routing_fails_on_weight_zero_missing_model_and_dangling_alias(spec):
    def edit(c):
        c["model_list"][0]["litellm_params"]["weight"] = 0
        c["model_list"] = [m for m in c["model_list"] if m["model_name"] != "claude"]
        c["router_settings"]["model_group_alias"]["gpt-4o"] = "smarter"
    r = d.check_routing(H, live_config(spec, edit), spec, [])
    fails_with(r, "weight 0 is never picked", "claude (spec) has no deployment", "gpt-4o -> smarter")


def test_routing_fails_on_a_deployment_in_cooldown(spec):
    dep = yaml.safe_load(live_config(spec))["model_list"][1]["model_info"]["id"]
    fails_with(d.check_routing(H, live_config(spec), spec, [f"deployment:{dep}:cooldown"]), f"deployment {dep} is cooling down")
    # Another gateway's keys (other fingerprint, other id) in the shared Redis are not this host's problem.
    passes(d.check_routing(H, live_config(spec), spec, ["deployment:smart--0--00000000:cooldown"]))


def test_routing_fails_when_redis_could_not_be_read(spec):
    fails_with(d.check_routing(H, live_config(spec), spec, None), "cooldowns unknown")


# ---- streaming through nginx ----------------------------------------------------------------------------
NGINX_CONF = """# configuration file /etc/nginx/nginx.conf:
user www-data;
http {
    gzip on;
    include /etc/nginx/conf.d/*.conf;
}
"""
GATEKIT_CONF = """
# configuration file /etc/nginx/conf.d/gatekit.conf:
include /etc/nginx/gatekit/upstream.conf;
server { listen 80 default_server; return 301 https://$host$request_uri; }
server {
    listen 443 ssl default_server;
    listen [::]:443 ssl default_server;
    ssl_certificate /etc/gatekit/tls/gateway.crt;
    gzip off;
    proxy_http_version 1.1;
    proxy_buffering off;
    proxy_request_buffering off;
    include /etc/nginx/gatekit/extra*.conf;
    location ~ ^/(v1/)?(chat/completions|completions)$ { proxy_pass http://litellm$uri$is_args$args; }
    location = /metrics/4001/ { proxy_pass http://127.0.0.1:4001/metrics/; }
    location / { allow 127.0.0.1/32; deny all; proxy_pass http://litellm; }
}
"""
UPSTREAM = """
# configuration file /etc/nginx/gatekit/upstream.conf:
upstream litellm { least_conn; server 127.0.0.1:4001; keepalive 32; }
"""


def nginx_ev(site: str = GATEKIT_CONF, extra: str = "", test_ok: bool = True, not_after: str = "Mar  9 08:05:21 2029 GMT"):
    return {"test_ok": test_ok, "test_output": "nginx: [emerg] unknown directive \"bogus\"" if not test_ok else "",
            "dump": NGINX_CONF + site + UPSTREAM + extra,
            "certs": {"/etc/gatekit/tls/gateway.crt": {"not_after": not_after, "error": None}}}


def test_streaming_config_ok_on_the_kits_site():
    r = d.check_streaming_config(H, nginx_ev(), 443)
    passes(r)
    assert r.evidence.startswith("2 location(s)")  # the metrics location goes elsewhere


def test_streaming_config_reads_the_kits_template():
    """The real template, rendered: the check must pass on what the deploy writes."""
    from gatekit.onhost.layout import Layout
    from gatekit.render import template

    site = template("nginx/gatekit.conf.j2", s=dict(DEFAULTS), layout=Layout(), tls_cert="/c.crt", tls_key="/c.key")
    dump = "\n# configuration file /etc/nginx/conf.d/gatekit.conf:\n" + site
    passes(d.check_streaming_config(H, nginx_ev(site=dump), 443))


def test_streaming_config_fails_on_buffering_turned_on_by_an_included_drop_in():
    extra = "\n# configuration file /etc/nginx/gatekit/extra-tuning.conf:\nproxy_buffering on;\n"
    fails_with(d.check_streaming_config(H, nginx_ev(extra=extra), 443), "proxy_buffering on")


def test_streaming_config_fails_on_a_location_override_and_defaults():
    site = GATEKIT_CONF.replace("proxy_pass http://litellm; }", "proxy_pass http://litellm; proxy_request_buffering on; }") \
        .replace("    proxy_http_version 1.1;\n", "")
    r = d.check_streaming_config(H, nginx_ev(site=site), 443)
    fails_with(r, "location /: proxy_request_buffering on", "proxy_http_version 1.0")


def test_streaming_config_fails_on_gzip_of_event_streams():
    site = GATEKIT_CONF.replace("gzip off;", "gzip on; gzip_types text/event-stream application/json;")
    fails_with(d.check_streaming_config(H, nginx_ev(site=site), 443), "gzip on for text/event-stream")
    # gzip of other types only is fine for streams
    site = GATEKIT_CONF.replace("gzip off;", "gzip on; gzip_types application/json;")
    passes(d.check_streaming_config(H, nginx_ev(site=site), 443))


def test_streaming_config_fails_without_the_gateways_server():
    fails_with(d.check_streaming_config(H, nginx_ev(), 8443), "no TLS server on port 8443")
    fails_with(d.check_streaming_config(H, {"dump": ""}, 443), "printed nothing")


def test_streaming_config_ignores_braces_and_hashes_in_quotes():
    site = GATEKIT_CONF.replace("gzip off;", "gzip off; return_text '{ # not a comment }';")
    passes(d.check_streaming_config(H, nginx_ev(site=site), 443))


@pytest.mark.parametrize("status,arrivals,error,want", [
    (200, [0.0, 0.2, 0.4], None, d.OK),
    (200, [0.0, 0.001, 0.002], None, d.FAIL),  # buffered then flushed at once
    (200, [0.3], None, d.FAIL),
    (502, [], None, d.FAIL),
    (None, [], "ConnectError: refused", d.FAIL),
])
def test_evaluate_stream(status, arrivals, error, want):
    assert d.evaluate_stream(status, arrivals, error)[0] == want


# ---- TLS, exposure --------------------------------------------------------------------------------------
NOW = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0))


def test_tls_ok_far_from_expiry():
    r = d.check_tls(H, nginx_ev(), 443, 14, NOW)
    passes(r)
    assert "/etc/gatekit/tls/gateway.crt expires in" in r.evidence


def test_tls_fails_near_expiry_and_on_nginx_t():
    fails_with(d.check_tls(H, nginx_ev(not_after="Jan  5 00:00:00 2026 GMT"), 443, 14, NOW), "expires in 4.0 days (limit 14)")
    fails_with(d.check_tls(H, nginx_ev(test_ok=False), 443, 14, NOW), "nginx -t failed", "unknown directive")


def test_tls_fails_on_an_unreadable_certificate():
    ev = nginx_ev()
    ev["certs"]["/etc/gatekit/tls/gateway.crt"] = {"not_after": None, "error": "Could not open file"}
    fails_with(d.check_tls(H, ev, 443, 14, NOW), "Could not open file")


def test_nginx_checks_read_the_layouts_nginx_directory():
    """nginx -T starts at the layout's nginx.conf; a relative include is relative to its directory."""
    from gatekit.onhost.layout import Layout

    layout = Layout(nginx_dir="/srv/nginx")
    dump = nginx_ev()["dump"].replace("include /etc/nginx/conf.d/", "include conf.d/").replace("/etc/nginx/", "/srv/nginx/")
    ev = {**nginx_ev(), "dump": dump}
    passes(d.check_streaming_config(H, ev, 443, layout))
    passes(d.check_tls(H, ev, 443, 14, NOW, layout))
    fails_with(d.check_streaming_config(H, ev, 443), "no TLS server on port 443")  # the default layout: /etc/nginx
    no_site = {**ev, "dump": dump.split("\n# configuration file /srv/nginx/conf.d/gatekit.conf:")[0]}
    r = d.check_streaming_config(H, no_site, 443, layout)
    fails_with(r, "no TLS server on port 443")
    assert "/srv/nginx/conf.d/gatekit.conf" in r.fix


def test_exposure():
    passes(d.check_exposure(H, gateway()))
    gw = gateway()
    gw["instances"]["litellm@4001.service"]["exposure"] = 6.4
    gw["instances"]["litellm@4002.service"]["exposure"] = None
    fails_with(d.check_exposure(H, gw), "exposure 6.4 > 2.5", "litellm@4002.service: systemd-analyze security gave no score")


# ---- Redis, PostgreSQL ----------------------------------------------------------------------------------
GOOD_REDIS = {"target": "10.0.0.3:6379", "without_auth": "ERR NOAUTH Authentication required.", "with_auth": "PONG", "cooldowns": []}
GOOD_PG = {"target": "10.0.0.3:5432", "without_auth": "password requested (scram-sha-256)", "with_auth": "ok"}


def test_redis_and_postgres_ok():
    passes(d.check_redis(H, {"redis": GOOD_REDIS}, None))
    passes(d.check_postgres(H, {"postgres": GOOD_PG}, {"pg_isready": {"rc": 0, "output": "accepting"}}))
    passes(d.check_redis("data1", None, {"redis_local": {"target": "127.0.0.1:6379", "without_auth": GOOD_REDIS["without_auth"]}}))
    assert d.check_redis(H, {}, {}) is None  # a host with no Redis to look at gets no row


@pytest.mark.parametrize("change,words", [
    ({"without_auth": "PONG"}, "answers PING without a password"),
    ({"with_auth": "ERR WRONGPASS invalid username-password pair"}, "with the password"),
    ({"error": "ConnectionRefusedError: [Errno 111] Connection refused"}, "Connection refused"),
])
def test_redis_fails(change, words):
    fails_with(d.check_redis(H, {"redis": {**GOOD_REDIS, **change}}, None), words)


@pytest.mark.parametrize("gw_change,data,words", [
    ({"without_auth": "ok (no password asked)"}, None, "without password: ok (no password asked)"),
    ({"with_auth": "refused: 28P01 password authentication failed"}, None, "28P01"),
    ({}, {"pg_isready": {"rc": 2, "output": "no response"}}, "pg_isready: no response"),
])
def test_postgres_fails(gw_change, data, words):
    fails_with(d.check_postgres(H, {"postgres": {**GOOD_PG, **gw_change}}, data), words)


# ---- supply chain ---------------------------------------------------------------------------------------
LOCK = """# hash lock
litellm==1.106.2 \\
    --hash=sha256:aaaa
PyYAML==6.0.3 \\
    --hash=sha256:bbbb
typing_extensions==4.15.0 ; python_version < "3.13" \\
    --hash=sha256:cccc
"""


def good_venv(**extra):
    return {"present": True, "path": "/opt/litellm/venv", "files": 10,
            "dists": {"litellm": "1.106.2", "PyYAML": "6.0.3", "typing-extensions": "4.15.0"},
            "modified": [], "missing": [], "unrecorded": [], "unrecorded_pth": [], **extra}


KIT_PROCS = [{"pid": 1, "unit": "litellm@4001.service", "command": "/opt/litellm/venv/bin/python3 launch"},
             {"pid": 2, "unit": "gatekit-venv-install.service", "command": "..."}]


def test_lock_pins_normalizes_names():
    assert d.lock_pins(LOCK) == {"litellm": "1.106.2", "pyyaml": "6.0.3", "typing-extensions": "4.15.0"}


def test_supply_chain_ok():
    passes(d.check_supply_chain(H, good_venv(), KIT_PROCS, d.lock_pins(LOCK)))


@pytest.mark.parametrize("venv,procs,words", [
    (good_venv(modified=["lib/python3.11/site-packages/litellm/main.py"]), [], "modified: lib/python3.11/site-packages/litellm/main.py"),
    (good_venv(missing=["bin/litellm"]), [], "missing: bin/litellm"),
    (good_venv(unrecorded=["lib/python3.11/site-packages/zz.pth"], unrecorded_pth=["lib/python3.11/site-packages/zz.pth"]), [],
     ".pth in no RECORD: lib/python3.11/site-packages/zz.pth"),
    (good_venv(unrecorded=["lib/python3.11/site-packages/evil.py"]), [], "file in no RECORD: lib/python3.11/site-packages/evil.py"),
    (good_venv(dists={"litellm": "1.82.7", "PyYAML": "6.0.3", "typing-extensions": "4.15.0"}), [], "litellm 1.82.7 (lock: 1.106.2)"),
    (good_venv(dists={"litellm": "1.106.2", "PyYAML": "6.0.3", "typing-extensions": "4.15.0", "evil": "1.0"}), [], "evil 1.0 is not in the lock"),
    (good_venv(dists={"litellm": "1.106.2"}), [], "pyyaml 6.0.3 (locked) not installed"),
    (good_venv(), [{"pid": 9, "unit": "cron.service", "command": "/opt/litellm/venv/bin/python3 -c x"}], "unit cron.service runs from the venv"),
    ({"present": False, "path": "/opt/litellm/venv"}, [], "no venv at /opt/litellm/venv"),
])
def test_supply_chain_fails(venv, procs, words):
    fails_with(d.check_supply_chain(H, venv, procs, d.lock_pins(LOCK)), words)


def test_supply_chain_allows_pip_with_the_pip_installer():
    venv = good_venv(dists={"litellm": "1.106.2", "PyYAML": "6.0.3", "typing-extensions": "4.15.0", "pip": "25.0"})
    fails_with(d.check_supply_chain(H, venv, [], d.lock_pins(LOCK)), "pip 25.0 is not in the lock")
    passes(d.check_supply_chain(H, venv, [], d.lock_pins(LOCK), extra_allowed=("pip",)))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_probe_venv_finds_modified_missing_and_unrecorded_files(tmp_path):
    """The collector's venv walk, on a small venv-shaped tree."""
    root = tmp_path / "venvs" / "abc"
    site = root / "lib" / "python3.11" / "site-packages"
    (site / "pkg" / "__pycache__").mkdir(parents=True)
    (site / "pkg-1.0.dist-info").mkdir()
    files = {"pkg/__init__.py": b"x = 1\n", "pkg/core.py": b"def f(): pass\n", "pkg/gone.py": b"", "pkg.pth": b"./pkg\n"}
    record = []
    for rel, data in files.items():
        record.append(f"{rel},{_record_hash(data)},{len(data)}")
        if rel != "pkg/gone.py":
            (site / rel).write_bytes(data)
    metadata = b"Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\n"
    record += [f"pkg-1.0.dist-info/METADATA,{_record_hash(metadata)},{len(metadata)}", "pkg-1.0.dist-info/RECORD,,"]
    (site / "pkg-1.0.dist-info" / "RECORD").write_text("\n".join(record) + "\n")
    (site / "pkg-1.0.dist-info" / "METADATA").write_bytes(metadata)
    (site / "pkg" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"bytecode")  # compiled at install
    (site / "pkg" / "__pycache__" / "hook.cpython-311.pyc").write_bytes(b"bytecode")  # no source: planted
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (root / "bin").mkdir()
    (root / "bin" / "python3").write_text("")
    (site / "pkg" / "core.py").write_bytes(b"import os; os.system('curl evil')\n")  # tampered
    (site / "zz-hook.pth").write_text("import evil\n")  # planted
    (site / "evil.py").write_text("")
    link = tmp_path / "venv"
    link.symlink_to(root)
    ev = probe.venv({"venv": str(link), "venv_scaffolding": ["pyvenv.cfg"]})
    assert ev["dists"] == {"pkg": "1.0"}
    assert ev["modified"] == ["lib/python3.11/site-packages/pkg/core.py"]
    assert ev["missing"] == ["lib/python3.11/site-packages/pkg/gone.py"]
    assert ev["unrecorded_pth"] == ["lib/python3.11/site-packages/zz-hook.pth"]
    assert ev["unrecorded"] == ["lib/python3.11/site-packages/evil.py", "lib/python3.11/site-packages/pkg/__pycache__/hook.cpython-311.pyc",
                                "lib/python3.11/site-packages/zz-hook.pth"]
    r = d.check_supply_chain(H, ev, [], {"pkg": "1.0"})
    fails_with(r, "modified: lib/python3.11/site-packages/pkg/core.py", ".pth in no RECORD")


# ---- drift, output --------------------------------------------------------------------------------------
def test_drift_counts_real_changes_only():
    plan = {"plan": [
        {"name": "LiteLLM Proxy | Render LiteLLM config.yaml", "names": ["LiteLLM Proxy | Install layout.py",
         "LiteLLM Proxy | Render LiteLLM config.yaml"], "hosts_with_change": ["gw1"], "hosts_with_conditional_change": []},
        {"name": "LiteLLM Proxy | Restart litellm@4001", "hosts_with_change": [], "hosts_with_conditional_change": ["gw1", "gw2"]},
    ], "results": None}
    changes = d.drift_by_host(plan)
    assert changes == {"gw1": ["LiteLLM Proxy | Install layout.py / LiteLLM Proxy | Render LiteLLM config.yaml"]}
    fails_with(d.check_drift("gw1", changes.get("gw1")), "Render LiteLLM config.yaml")
    passes(d.check_drift("gw2", changes.get("gw2", [])))
    fails_with(d.check_drift("gw2", None, "pyinfra --dry failed (rc=1): boom"), "boom")


def test_results_json_ok_only_without_failures():
    ok = [d.Result(H, "tls", d.OK, "fine"), d.skipped(H, "streaming_call", "no --calls")]
    assert json.loads(d.results_json(ok))["ok"] is True
    assert json.loads(d.results_json(ok + [d.Result(H, "memory", d.FAIL, "x", "y")]))["ok"] is False


def test_probe_command_carries_no_secret_and_runs_stdlib_python():
    from gatekit.doctor_run import probe_command

    params = {"gateway": True, "secret_env": SECRET_ENV}
    cmd = probe_command(params)
    assert cmd.startswith("python3 -I -c ")
    for value in SECRETS.values():
        assert value not in cmd
    arg = json.loads(base64.b64decode(cmd.rsplit(" ", 1)[1]))
    assert arg == params


def test_probe_imports_only_the_standard_library():
    import ast
    import sys

    tree = ast.parse(Path(probe.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - {"__future__"} <= set(sys.stdlib_module_names), names


# ---- monitoring -------------------------------------------------------------------------------------------
HEALTHY_PROM = {"port": 9090, "ready": True, "alert_rules": 15, "targets": 16, "down": [], "firing": []}


def test_monitoring_is_checked_only_on_monitoring_hosts():
    assert d.check_monitoring("db1", {"pg_isready": {"rc": 0, "output": ""}}) is None


def test_monitoring_ok_names_what_fires_without_failing():
    r = d.check_monitoring("mon1", {"prometheus": HEALTHY_PROM})
    assert r.status == d.OK and "15 alert rules" in r.evidence and "no alert firing" in r.evidence
    r = d.check_monitoring("mon1", {"prometheus": {**HEALTHY_PROM, "firing": ["OOMKill", "StaleKey"]}})
    assert r.status == d.OK and "firing: OOMKill, StaleKey" in r.evidence


@pytest.mark.parametrize("broken, words", [
    ({"ready": False}, "not ready"),
    ({"alert_rules": 0}, "no alert rule loaded"),
    ({"down": [{"job": "node", "host": "gw1", "port": None}]}, "target down: node on gw1"),
    ({"down": [{"job": "litellm", "host": "gw2", "port": "4001"}]}, "target down: litellm on gw2 port 4001"),
])
def test_monitoring_fails_on_each_problem(broken, words):
    r = d.check_monitoring("mon1", {"prometheus": {**HEALTHY_PROM, **broken}})
    assert r.status == d.FAIL and words in r.evidence and r.fix


def test_monitoring_fails_when_prometheus_does_not_answer():
    r = d.check_monitoring("mon1", {"prometheus": {"port": 9090, "error": "URLError: refused"}})
    assert r.status == d.FAIL and "127.0.0.1:9090" in r.evidence


def test_the_collectors_down_queries_skip_the_stopped_standby_set():
    """The LiteLLM query joins on the unit actually running, like the LiteLLMInstanceDown alert."""
    from gatekit.alerts import LITELLM_UNIT_ACTIVE

    assert 'job!="litellm"' in probe.DOWN_QUERIES[0]
    assert 'job="litellm"' in probe.DOWN_QUERIES[1] and f"and on (host, port) ({LITELLM_UNIT_ACTIVE} == 1)" in probe.DOWN_QUERIES[1]


# ---- malformed evidence: each check fails on its own, naming what it saw ----------------------------------
@pytest.mark.parametrize("not_after", ["garbage", "2029-03-09 08:05:21Z", "Feb 30 08:05:21 2029 GMT", "Mar  9 2029", 20290309, ["Mar"]],
                         ids=repr)
def test_tls_fails_on_a_certificate_date_it_cannot_parse(not_after):
    r = d.check_tls(H, nginx_ev(not_after=not_after), 443, 14, NOW)
    fails_with(r, "/etc/gatekit/tls/gateway.crt", repr(not_after)[:40], "not understood")
    assert "\n" not in r.evidence and "openssl x509" in r.fix


def test_tls_judges_each_certificate_on_its_own():
    """An unparseable date on one certificate does not hide the other's expiry."""
    extra = "\n# configuration file /etc/nginx/conf.d/other.conf:\nserver { listen 443 ssl; ssl_certificate /etc/other.crt; }\n"
    ev = nginx_ev(extra=extra, not_after="garbage")
    ev["certs"]["/etc/other.crt"] = {"not_after": "Jan  5 00:00:00 2026 GMT", "error": None}
    r = d.check_tls(H, ev, 443, 14, NOW)
    fails_with(r, "/etc/gatekit/tls/gateway.crt: end date 'garbage' not understood", "/etc/other.crt expires in 4.0 days")


def _gw_with(**changes) -> dict:
    gw = gateway()
    for unit_key, value in changes.items():
        gw["instances"]["litellm@4001.service"][unit_key] = value
    return gw


# Each check, called with evidence the collector of another gatekit version (or a broken host) could print.
MALFORMED = {
    "memory": [
        lambda: d.check_memory(H, {"instances": "garbage"}, LIVE),
        lambda: d.check_memory(H, {"instances": {"litellm@4001.service": {"props": None}}}, LIVE),
        lambda: d.check_memory(H, {"instances": {"litellm@4001.service": {}}}, LIVE),
        lambda: d.check_memory(H, _gw_with(props={**instance(4001)["props"], "MemoryMax": 1600 << 20}), LIVE),
        lambda: d.check_memory(H, None, LIVE),
    ],
    "stale_key": [
        lambda: d.check_stale_key(H, _gw_with(processes=[{"pid": 1}]), VAULT_FPS, SECRET_ENV),
        lambda: d.check_stale_key(H, _gw_with(processes=[{"pid": 1, "start": "yesterday", "env": {}}]), VAULT_FPS, SECRET_ENV),
        lambda: d.check_stale_key(H, _gw_with(runtime_credentials=None), VAULT_FPS, SECRET_ENV),
        lambda: d.check_stale_key(H, {**gateway(), "credential_files": {"openai_key": None}}, VAULT_FPS, SECRET_ENV),
        lambda: d.check_stale_key(H, [], VAULT_FPS, SECRET_ENV),
    ],
    "retries_cost": [
        lambda spec: d.check_retries_cost(H, "router_settings: [a, b]\n", spec),
        lambda spec: d.check_retries_cost(H, "router_settings: {retry_policy: [x]}\n", spec),
        lambda spec: d.check_retries_cost(H, "router_settings: {fallbacks: [fast]}\n", spec),
        lambda spec: d.check_retries_cost(H, "router_settings: {fallbacks: [{fast: [[smart]]}]}\n", spec),
        lambda spec: d.check_retries_cost(H, 42, spec),
    ],
    "routing": [
        lambda spec: d.check_routing(H, "model_list: [fast, smart]\n", spec, []),
        lambda spec: d.check_routing(H, "model_list: [{model_name: [fast]}]\n", spec, []),
        lambda spec: d.check_routing(H, "model_list: []\nrouter_settings: {model_group_alias: [gpt-4o]}\n", spec, []),
        lambda spec: d.check_routing(H, "model_list: [{model_name: fast, litellm_params: [weight]}]\n", spec, []),
        lambda spec: d.check_routing(H, "router_settings: 7\n", spec, []),
    ],
    "streaming_config": [
        lambda: d.check_streaming_config(H, None, 443),
        lambda: d.check_streaming_config(H, "nginx -T output", 443),
        lambda: d.check_streaming_config(H, {"dump": ["# configuration file /etc/nginx/nginx.conf:"]}, 443),
    ],
    "tls": [
        lambda: d.check_tls(H, None, 443, 14, NOW),
        lambda: d.check_tls(H, {**nginx_ev(), "certs": ["/etc/gatekit/tls/gateway.crt"]}, 443, 14, NOW),
        lambda: d.check_tls(H, {**nginx_ev(), "certs": {"/etc/gatekit/tls/gateway.crt": "Mar  9 08:05:21 2029 GMT"}}, 443, 14, NOW),
        lambda: d.check_tls(H, {**nginx_ev(test_ok=False), "test_output": 1}, 443, 14, NOW),
        lambda: d.check_tls(H, {**nginx_ev(), "dump": 7}, 443, 14, NOW),
        lambda: d.check_tls(H, nginx_ev(), 443, 14, "now"),
    ],
    "exposure": [
        lambda: d.check_exposure(H, _gw_with(exposure="high")),
        lambda: d.check_exposure(H, _gw_with(exposure=[1.1])),
        lambda: d.check_exposure(H, {"instances": ["litellm@4001.service"]}),
    ],
    "redis": [
        lambda: d.check_redis(H, {"redis": "PONG"}, None),
        lambda: d.check_redis(H, {"redis": {**GOOD_REDIS, "without_auth": 401}}, None),
        lambda: d.check_redis(H, None, {"redis_local": None}),
    ],
    "postgres": [
        lambda: d.check_postgres(H, {"postgres": None}, None),
        lambda: d.check_postgres(H, {"postgres": {**GOOD_PG, "without_auth": 0}}, None),
        lambda: d.check_postgres(H, None, {"pg_isready": {"output": "accepting"}}),
        lambda: d.check_postgres(H, None, {"pg_isready": "accepting"}),
    ],
    "supply_chain": [
        lambda: d.check_supply_chain(H, None, [], d.lock_pins(LOCK)),
        lambda: d.check_supply_chain(H, good_venv(dists=["litellm"]), [], d.lock_pins(LOCK)),
        lambda: d.check_supply_chain(H, good_venv(modified=None), [], d.lock_pins(LOCK)),
        lambda: d.check_supply_chain(H, good_venv(unrecorded=[3]), [], d.lock_pins(LOCK)),
        lambda: d.check_supply_chain(H, good_venv(), [{"pid": 9}], d.lock_pins(LOCK)),
        lambda: d.check_supply_chain(H, good_venv(), None, d.lock_pins(LOCK)),
    ],
    "monitoring": [
        lambda: d.check_monitoring("mon1", {"prometheus": "ready"}),
        lambda: d.check_monitoring("mon1", {"prometheus": {**HEALTHY_PROM, "down": ["gw1"]}}),
        lambda: d.check_monitoring("mon1", {"prometheus": {**HEALTHY_PROM, "firing": [1, 2]}}),
        lambda: d.check_monitoring("mon1", []),
    ],
}
MALFORMED_CASES = [(check, i) for check, calls in MALFORMED.items() for i in range(len(calls))]


@pytest.mark.parametrize(("check", "i"), MALFORMED_CASES, ids=[f"{c}-{i}" for c, i in MALFORMED_CASES])
def test_malformed_evidence_fails_that_check_with_evidence_and_a_fix(spec, check, i):
    call = MALFORMED[check][i]
    r = call(spec) if call.__code__.co_argcount else call()
    assert isinstance(r, d.Result), r
    assert (r.check, r.status) == (check, d.FAIL), r
    assert r.evidence and "\n" not in r.evidence and r.fix, r
    for value in SECRETS.values():
        assert value not in r.evidence + r.fix


def test_malformed_evidence_names_the_field_it_could_not_read():
    fails_with(d.check_memory(H, {"instances": "garbage"}, LIVE), "instances", "str")
    fails_with(d.check_supply_chain(H, None, [], {}), "venv", "missing")
    fails_with(d.check_retries_cost(H, "router_settings: [a]\n", make_spec()), "config.yaml", "router_settings", "list")
    fails_with(d.check_exposure(H, _gw_with(exposure="high")), "litellm@4001.service", "'high'")


def test_an_unforeseen_error_fails_only_its_check_naming_its_type_and_place(monkeypatch):
    """Not its message: that could quote anything the host printed. GATEKIT_DEBUG=1 raises it."""
    def boom(*args):
        raise TypeError("a message quoting sk-master")
    monkeypatch.delenv("GATEKIT_DEBUG", raising=False)
    monkeypatch.setattr(d, "gateway_servers", boom)
    r = d.check_streaming_config(H, nginx_ev(), 443)
    assert (r.check, r.status) == ("streaming_config", d.FAIL) and r.fix, r
    assert r.evidence.startswith("evidence not readable (TypeError at gatekit/doctor.py:"), r.evidence
    assert "sk-master" not in r.evidence + r.fix
    passes(d.check_exposure(H, gateway()))  # the other checks are untouched
    monkeypatch.setenv("GATEKIT_DEBUG", "1")
    with pytest.raises(TypeError, match="sk-master"):
        d.check_streaming_config(H, nginx_ev(), 443)


# ---- the controller side: one host's evidence through every check -----------------------------------------
def _evidence(spec, **gw_changes) -> dict:
    gw = gateway(nginx=nginx_ev(), config=live_config(spec), venv=good_venv(), venv_units=[], redis=GOOD_REDIS)
    gw.update(gw_changes)
    return {"host": "gw1", "now": NOW, "gateway": gw, "data": {}}


@pytest.fixture()
def run_host(spec, monkeypatch):
    """doctor_run.host_results on a gateway `gw1` of the test spec, without an inventory."""
    from types import SimpleNamespace

    from gatekit import doctor_run
    from gatekit.roles import credentials

    monkeypatch.setattr(credentials, "secrets_for_gateway", lambda ctx: dict(SECRET_ENV))
    pins = d.lock_pins(LOCK)  # the venv of good_venv(), whatever the kit's real lock pins
    monkeypatch.setattr(doctor_run.d, "lock_pins", lambda text, environment=None: pins)
    host = SimpleNamespace(name=H, data={})

    def run(ev: dict, **settings) -> dict[str, d.Result]:
        ctx = SimpleNamespace(settings={**DEFAULTS, **settings}, spec=spec, secret=SECRETS.__getitem__)
        return {r.check: r for r in doctor_run.host_results(host, ctx, ev, calls=False)}
    return run


GATEWAY_ROWS = ["memory", "stale_key", "switch", "retries_cost", "routing", "routing_calls", "streaming_config",
                "streaming_call", "exposure", "tls", "supply_chain", "redis"]


def test_host_results_on_healthy_evidence(spec, run_host):
    results = run_host(_evidence(spec))
    assert list(results) == GATEWAY_ROWS
    assert {c for c, r in results.items() if r.status != d.OK} == {"routing_calls", "streaming_call"}, results


def test_host_results_read_nginx_where_the_hosts_layout_puts_it(spec, run_host):
    moved = nginx_ev()["dump"].replace("/etc/nginx/", "/srv/nginx/")
    results = run_host(_evidence(spec, nginx={**nginx_ev(), "dump": moved}), nginx_dir="/srv/nginx")
    passes(results["streaming_config"])
    passes(results["tls"])


def test_host_results_go_on_after_an_unparseable_certificate_date(spec, run_host):
    results = run_host(_evidence(spec, nginx=nginx_ev(not_after="garbage")))
    assert list(results) == GATEWAY_ROWS
    fails_with(results["tls"], "'garbage' not understood")
    assert {c for c, r in results.items() if r.status == d.FAIL} == {"tls"}, results


@pytest.mark.parametrize("field,value,failed", [
    ("nginx", None, {"streaming_config", "tls"}),
    ("venv", "gone", {"supply_chain"}),
    ("redis", "PONG", {"redis", "routing"}),  # routing: cooldowns unknown
    ("instances", None, {"memory"}),  # the live instances are not running
    ("live_json", 7, set()),  # as a live.json that is no JSON: the blue set
], ids=repr)
def test_host_results_give_every_row_on_malformed_gateway_evidence(spec, run_host, field, value, failed):
    gw = _evidence(spec)["gateway"]
    if value is None:
        del gw[field]
    else:
        gw[field] = value
    results = run_host({"now": NOW, "gateway": gw, "data": {}})
    assert list(results) == GATEWAY_ROWS
    assert {c for c, r in results.items() if r.status == d.FAIL} == failed, results


def test_host_results_use_the_controllers_clock_when_the_hosts_is_not_a_number(spec, run_host):
    results = run_host({**_evidence(spec), "now": "garbage"})
    assert list(results) == GATEWAY_ROWS
    passes(results["tls"])


@pytest.mark.parametrize("gw", ["x", [], 7], ids=repr)
def test_host_results_fail_every_gateway_check_on_gateway_evidence_that_is_no_mapping(spec, run_host, gw):
    results = run_host({"now": NOW, "gateway": gw, "data": []})
    assert list(results) == GATEWAY_ROWS + ["postgres"]
    assert {c for c, r in results.items() if r.status != d.FAIL} == {"routing_calls", "streaming_call"}, results
    assert "gateway evidence" in results["memory"].evidence and type(gw).__name__ in results["memory"].evidence


@pytest.mark.parametrize("line", ["GATEKIT-PROBE {\"now\": ", "GATEKIT-PROBE [1, 2]", "GATEKIT-PROBE null"], ids=repr)
def test_collect_refuses_a_collector_line_that_is_not_a_json_object(line):
    from types import SimpleNamespace

    from gatekit.doctor_run import collect

    output = SimpleNamespace(stdout_lines=[line], stderr_lines=[])
    host = SimpleNamespace(data={}, connect=lambda **kw: None, disconnect=lambda: None,
                           run_shell_command=lambda *a, **kw: (True, output))
    ev, err = collect(host, {})
    assert ev is None and "collector" in err and "JSON object" in err, err


@pytest.mark.parametrize("stdout", ["[1, 2]", '{"plan": ["op"]}', '{"plan": [{"name": "x", "hosts_with_change": 7}]}'], ids=repr)
def test_dry_run_reports_a_plan_it_cannot_read_as_the_drift_checks_error(monkeypatch, stdout):
    from types import SimpleNamespace

    from gatekit import doctor_run

    monkeypatch.setattr(doctor_run.subprocess, "run", lambda *a, **kw: SimpleNamespace(stdout=stdout, stderr="", returncode=0))
    changes, err = doctor_run.dry_run(Path("inv.py"), None)
    assert changes is None and "pyinfra --dry --json printed a plan this gatekit does not read" in err, err
    fails_with(d.check_drift(H, changes, err), "does not read")


def test_switch_fails_while_a_journal_is_on_the_gateway_naming_what_and_where():
    assert d.check_switch("gw1", {}).status == d.OK
    journal = json.dumps({"old_ports": [4001, 4002], "new_ports": [4003, 4004], "secrets": [], "change": "deploy",
                          "files": ["/etc/litellm/config.yaml", "/etc/litellm/litellm.env"]})
    r = d.check_switch("gw1", {"journal": journal})
    assert r.status == d.FAIL and r.fix.startswith("if no deploy or rotation is running: re-run deploy.py")
    assert r.evidence == ("a deploy switch (/etc/litellm/config.yaml, /etc/litellm/litellm.env) from litellm@[4001, 4002] "
                          "to litellm@[4003, 4004] is running or was cut off")
    assert d.check_switch("gw1", {"journal": "{cut off"}).evidence.startswith("a rotation switch (unreadable journal)")
    assert d.check_switch("gw1", {"journal": 7}).status == d.FAIL  # evidence it cannot read fails the check


MARKED_LOCK = """litellm==1.106.2 \\
    --hash=sha256:aaaa
async-timeout==5.0.1 ; python_full_version < '3.11.3' \\
    --hash=sha256:bbbb
colorama==0.4.6 ; sys_platform == 'win32' \\
    --hash=sha256:cccc
hf-xet==1.8.0 ; platform_machine == 'x86_64' or platform_machine == 'aarch64' \\
    --hash=sha256:dddd
"""


@pytest.mark.parametrize("python, machine, want", [
    ("3.11.2", "x86_64", {"litellm", "async-timeout", "hf-xet"}),  # Debian 12's Python: the backport installs
    ("3.13.5", "x86_64", {"litellm", "hf-xet"}),
    ("3.13.5", "riscv64", {"litellm"}),
])
def test_lock_pins_are_the_ones_the_hosts_python_installs(python, machine, want):
    env = d.marker_environment({"python_version": python, "machine": machine})
    assert set(d.lock_pins(MARKED_LOCK, env)) == want


def test_a_backport_the_hosts_python_does_not_install_is_not_missing_from_its_venv():
    venv = good_venv(python_version="3.13.5", machine="x86_64")
    venv["dists"] = {"litellm": "1.106.2", "hf-xet": "1.8.0"}
    passes(d.check_supply_chain(H, venv, KIT_PROCS, d.lock_pins(MARKED_LOCK, d.marker_environment(venv))))
    venv = good_venv(python_version="3.11.2", machine="x86_64")
    venv["dists"] = {"litellm": "1.106.2", "hf-xet": "1.8.0"}
    fails_with(d.check_supply_chain(H, venv, KIT_PROCS, d.lock_pins(MARKED_LOCK, d.marker_environment(venv))),
               "async-timeout 5.0.1 (locked) not installed")


@pytest.mark.parametrize("lock", ["litellm.lock", "litellm-db.lock", "litellm-1.108.7.lock"])
def test_the_shipped_locks_cover_debian_12_and_13s_pythons(lock):
    """Resolved for every Python from 3.11 (uv --universal): what only Windows or only an older Python needs is
    behind a marker. A lock resolved for 3.11 alone would make Debian 13 hosts install 3.11's backports."""
    from gatekit.resources import requirements_file

    text = requirements_file(f"requirements/{lock}").read_text()
    on = {v: d.lock_pins(text, d.marker_environment({"python_version": v, "machine": "x86_64"})) for v in ("3.11.2", "3.13.5")}
    assert "litellm" in on["3.13.5"] and on["3.11.2"]["litellm"] == on["3.13.5"]["litellm"]
    assert set(on["3.11.2"]) - set(on["3.13.5"]) == {"async-timeout"}
    assert not {"colorama", "pywin32"} & (set(on["3.11.2"]) | set(on["3.13.5"]))
