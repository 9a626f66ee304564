"""Unit tests for gatekit/render.py and the templates: pure rendering, no hosts, no network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from pathlib import Path

import pytest
import yaml

from gatekit import render
from gatekit.onhost.layout import Layout
from gatekit.defaults import DEFAULTS
from gatekit.inventory import settings_for
from gatekit.render import litellm_config, litellm_config_yaml, redis_acl_hash, scram_sha256_verifier, secret_env
from gatekit.spec import parse_size, parse_spec

SPEC_PATH = Path("inv/render.gateway.yaml")

# Fake secret values: the launcher gets them at run time and must keep them off its command line.
SECRET_VALUES = {
    "openai_key": "sk-FAKE-openai-PLAINTEXT-1111aaaa",
    "openai_backup_key": "fake-openai-backup-PLAINTEXT-2222bbbb",
    "anthropic_key": "fake-anthropic-PLAINTEXT-3333cccc",
    "litellm_master_key": "sk-master-FAKE-PLAINTEXT-4444dddd",
    "redis_password": "redis-FAKE-PLAINTEXT-5555eeee",
    "postgres_password": "pg-FAKE-PLAINTEXT-6666ffff",
}


def _dep(provider, model, api_base, secret, **extra):
    return {"provider": provider, "model": model, "api_base": api_base, "secret": secret, **extra}


SPEC_DATA = {
    "version": 1,
    "vault": "render.secrets.enc.yaml",
    "models": [
        {
            "name": "fast",
            "price": {"input_per_1m": 0.15, "output_per_1m": 0.60},
            "deployments": [
                _dep("openai", "gpt-4o-mini", "https://api.openai.com/v1", "openai_key", weight=3, rpm=500, tpm=200000),
                _dep("openai", "gpt-4o-mini", "https://backup.example.com/v1", "openai_backup_key", weight=1),
            ],
        },
        {
            "name": "smart",
            "price": {"input_per_1m": 2.50, "output_per_1m": 10.00},
            "deployments": [_dep("openai", "gpt-4o", "https://api.openai.com/v1", "openai_key")],
        },
        {
            "name": "claude",
            "price": {"input_per_1m": 3.00, "output_per_1m": 15.00},
            "deployments": [_dep("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", "anthropic_key")],
        },
    ],
    "fallbacks": [
        {"from": "smart", "to": ["fast"]},
        {"from": "claude", "to": ["smart", "fast"]},
        {"from": "fast", "to": [{"model": "smart", "allow_pricier": True}]},
    ],
    "aliases": {"gpt-4o": "smart", "sonnet": "claude"},
    "retry": {"num_retries": 3, "timeout_errors": 4, "server_errors": 1, "allowed_fails": 5, "cooldown_time": 60},
    "budgets": {"providers": {"openai": {"max_usd": 200, "duration": "1d"}, "anthropic": {"max_usd": 50, "duration": "12h"}}},
    "settings": {"litellm_ports": [4001, 4002, 4003, 4004], "litellm_request_timeout": 300},
}


def make_spec(**overrides):
    data = {**SPEC_DATA, **overrides}
    return parse_spec(data, SPEC_PATH, secret_names=set(SECRET_VALUES))


@pytest.fixture()
def spec():
    return make_spec()


@pytest.fixture()
def settings(spec):
    return settings_for(spec, {})


REDIS = {"host": "10.0.0.21", "port": 6380, "db": 1}


def assert_no_secret_values(text: str):
    for name, value in SECRET_VALUES.items():
        assert value not in text, f"secret {name} leaked"
        # nor a recognisable piece of one
        assert value[-8:] not in text, f"secret {name} leaked (tail)"


# --- LiteLLM config.yaml ---------------------------------------------------------------------------------------


def test_config_references_secrets_only_through_environment(spec, settings):
    cfg = litellm_config(spec, settings, REDIS)
    keys = [d["litellm_params"]["api_key"] for d in cfg["model_list"]]
    assert keys == [
        "os.environ/GK_SECRET_OPENAI_KEY",
        "os.environ/GK_SECRET_OPENAI_BACKUP_KEY",
        "os.environ/GK_SECRET_OPENAI_KEY",
        "os.environ/GK_SECRET_ANTHROPIC_KEY",
    ]
    assert secret_env("openai_key") == "GK_SECRET_OPENAI_KEY"
    assert cfg["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
    assert cfg["router_settings"]["redis_password"] == "os.environ/REDIS_PASSWORD"
    assert credential_fields(cfg) and all(v.startswith("os.environ/") for _, v in credential_fields(cfg))


def credential_fields(cfg) -> list[tuple[str, str]]:
    """Every value in the config whose key names a credential, as (path, value)."""
    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, node

    return [(p, v) for p, v in walk(cfg) if re.search(r"(api_key|master_key|password|database_url)$", p)]


def test_every_credential_in_the_config_is_an_environment_reference_with_a_database_and_redis(spec, settings):
    # The renderer never sees a secret value: each credential field is a reference to the environment the
    # launcher fills from systemd credentials (a literal here would be a plaintext secret on disk).
    settings = {**settings, "litellm_database": True}
    for redis in (None, REDIS):
        fields = dict(credential_fields(litellm_config(spec, settings, redis)))
        assert fields and all(isinstance(v, str) and v.startswith("os.environ/") for v in fields.values()), fields
        assert ".router_settings.redis_password" in fields if redis else ".router_settings.redis_password" not in fields


def test_retry_policy(spec, settings):
    router = litellm_config(spec, settings, None)["router_settings"]
    policy = router["retry_policy"]
    assert policy["AuthenticationErrorRetries"] == 0
    assert policy["BadRequestErrorRetries"] == 0
    assert policy["RateLimitErrorRetries"] == 0
    assert policy["TimeoutErrorRetries"] == 4
    assert policy["InternalServerErrorRetries"] == 1
    assert policy["ContentPolicyViolationErrorRetries"] == 0
    assert router["num_retries"] == 3
    assert router["allowed_fails"] == 5
    assert router["cooldown_time"] == 60
    assert router["timeout"] == 300
    assert router["routing_strategy"] == "simple-shuffle"


def test_retry_policy_follows_the_spec():
    spec = make_spec(retry={"timeout_errors": 0, "server_errors": 5})
    policy = litellm_config(spec, settings_for(spec, {}), None)["router_settings"]["retry_policy"]
    assert policy["TimeoutErrorRetries"] == 0
    assert policy["InternalServerErrorRetries"] == 5


def test_fallbacks_and_aliases(spec, settings):
    router = litellm_config(spec, settings, None)["router_settings"]
    assert router["fallbacks"] == [{"smart": ["fast"]}, {"claude": ["smart", "fast"]}, {"fast": ["smart"]}]
    assert router["model_group_alias"] == {"gpt-4o": "smart", "sonnet": "claude"}


def test_no_aliases_no_model_group_alias():
    spec = make_spec(aliases={}, fallbacks=[])
    router = litellm_config(spec, settings_for(spec, {}), None)["router_settings"]
    assert "model_group_alias" not in router
    assert router["fallbacks"] == []


def test_deployments(spec, settings):
    models = litellm_config(spec, settings, None)["model_list"]
    assert [m["model_name"] for m in models] == ["fast", "fast", "smart", "claude"]
    ids = [m["model_info"]["id"] for m in models]
    assert len(ids) == len(set(ids)) == 4
    first, second = models[0], models[1]
    assert first["litellm_params"] == {
        "model": "openai/gpt-4o-mini",
        "api_base": "https://api.openai.com/v1",
        "api_key": "os.environ/GK_SECRET_OPENAI_KEY",
        "weight": 3,
        "timeout": 60,
        "stream_timeout": 30,
        "rpm": 500,
        "tpm": 200000,
    }
    assert "rpm" not in second["litellm_params"] and "tpm" not in second["litellm_params"]
    assert second["litellm_params"]["api_base"] == "https://backup.example.com/v1"
    assert models[3]["litellm_params"]["model"] == "anthropic/claude-sonnet-4-5"


def test_ids_are_stable_across_renders(spec, settings):
    a = [m["model_info"]["id"] for m in litellm_config(spec, settings, None)["model_list"]]
    b = [m["model_info"]["id"] for m in litellm_config(make_spec(), settings, REDIS)["model_list"]]
    assert a == b


def test_cost_per_token(spec, settings):
    prices = {m.name: m.price for m in spec.models}
    for d in litellm_config(spec, settings, None)["model_list"]:
        price = prices[d["model_name"]]
        assert d["model_info"]["input_cost_per_token"] == pytest.approx(price.input_per_1m / 1e6, rel=1e-12)
        assert d["model_info"]["output_cost_per_token"] == pytest.approx(price.output_per_1m / 1e6, rel=1e-12)
    smart = next(d for d in litellm_config(spec, settings, None)["model_list"] if d["model_name"] == "smart")
    assert smart["model_info"]["input_cost_per_token"] == pytest.approx(2.5e-6)
    assert smart["model_info"]["output_cost_per_token"] == pytest.approx(1e-5)


def test_redis_only_with_a_target(spec, settings):
    without = litellm_config(spec, settings, None)["router_settings"]
    assert not any(k.startswith("redis") for k in without)
    with_redis = litellm_config(spec, settings, REDIS)["router_settings"]
    assert with_redis["redis_host"] == "10.0.0.21"
    assert with_redis["redis_port"] == 6380
    assert with_redis["redis_password"] == "os.environ/REDIS_PASSWORD"
    # Every Redis call and connection gives up after litellm_redis_timeout (LiteLLM's RedisCache default: 5 s).
    assert with_redis["cache_kwargs"] == {"socket_timeout": 0.25, "socket_connect_timeout": 0.25}
    assert "cache_kwargs" not in without
    slow = litellm_config(spec, {**settings, "litellm_redis_timeout": 2}, REDIS)["router_settings"]["cache_kwargs"]
    assert slow == {"socket_timeout": 2, "socket_connect_timeout": 2}
    text = litellm_config_yaml(spec, settings, None)
    # No Redis setting and no reference to its password (metric names may say "redis": they are excluded ones).
    assert not re.search(r"^\s*redis\w*:", text, re.M) and "REDIS" not in text and "cache_params" not in text


def test_database_url_only_with_database(spec, settings):
    assert settings["litellm_database"] is False
    general = litellm_config(spec, settings, None)["general_settings"]
    auth = {"master_key": "os.environ/LITELLM_MASTER_KEY", "custom_auth": "keyauth.user_api_key_auth"}
    assert general == auth
    general = litellm_config(spec, {**settings, "litellm_database": True}, None)["general_settings"]
    assert general == {**auth, "database_url": "os.environ/DATABASE_URL"}


def test_budgets(spec, settings):
    cfg = litellm_config(spec, settings, REDIS)
    assert cfg["router_settings"]["provider_budget_config"] == {
        "openai": {"budget_limit": 200, "time_period": "1d"},
        "anthropic": {"budget_limit": 50, "time_period": "12h"},
    }
    assert "max_budget" not in cfg["litellm_settings"]
    proxy = make_spec(
        budgets={"proxy": {"max_usd": 1000, "duration": "30d"}},
        settings={**SPEC_DATA["settings"], "litellm_database": True},
    )
    cfg = litellm_config(proxy, settings_for(proxy, {}), None)
    assert cfg["litellm_settings"]["max_budget"] == 1000
    assert cfg["litellm_settings"]["budget_duration"] == "30d"
    assert "provider_budget_config" not in cfg["router_settings"]
    assert cfg["litellm_settings"]["request_timeout"] == 300
    assert cfg["litellm_settings"]["drop_params"] is True


def test_config_yaml_round_trips(spec, settings):
    for redis in (None, REDIS):
        text = litellm_config_yaml(spec, settings, redis)
        assert text.startswith("# Rendered by gatekit from render.gateway.yaml")
        loaded = yaml.safe_load(text)
        assert loaded == litellm_config(spec, settings, redis)
        assert yaml.safe_load(yaml.safe_dump(loaded, sort_keys=False)) == loaded
        assert list(loaded) == ["model_list", "router_settings", "litellm_settings", "general_settings"]


def test_config_yaml_is_deterministic(spec, settings):
    assert litellm_config_yaml(spec, settings, REDIS) == litellm_config_yaml(make_spec(), dict(settings), dict(REDIS))


# --- nginx ----------------------------------------------------------------------------------------------------------


def nginx(settings, cert="/etc/gatekit/tls/gatekit.crt", key="/etc/gatekit/tls/gatekit.key"):
    return render.template("nginx/gatekit.conf.j2", s=settings, layout=Layout.from_settings(settings), tls_cert=cert, tls_key=key)


def server_blocks(conf: str) -> list[str]:
    """Top-level `server { ... }` blocks (brace matching)."""
    blocks, depth, start = [], 0, None
    for m in re.finditer(r"server\s*\{|\{|\}", conf):
        tok = m.group(0)
        if tok != "}":
            if depth == 0 and tok.startswith("server"):
                start = m.start()
            depth += 1
        else:
            depth -= 1
            if depth == 0 and start is not None:
                blocks.append(conf[start:m.end()])
                start = None
    assert depth == 0, "unbalanced braces"
    return blocks


def directives(conf: str) -> list[str]:
    return [line.strip() for line in conf.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_nginx_streaming_directives(settings):
    conf = nginx(settings)
    lines = directives(conf)
    for d in [
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 600s;",
        "gzip off;",
        "server_tokens off;",
        "keepalive_timeout 0s;",  # no idle client connection for a reload to close (the default)
        "proxy_pass http://litellm;",
    ]:
        assert d in lines, d
    assert any(line.startswith("more_clear_headers ") and "'x-litellm-*'" in line for line in lines)
    assert "include /etc/nginx/gatekit/upstream.conf;" in lines


def test_nginx_timeouts_and_ports_follow_settings(settings):
    s = {**settings, "nginx_read_timeout": 1234, "nginx_send_timeout": 77, "nginx_https_port": 8443, "nginx_keepalive_timeout": 65,
         "nginx_http_port": 8080, "nginx_client_max_body_size": "50m", "nginx_server_name": "gw.example.com"}
    conf = nginx(s)
    lines = directives(conf)
    assert "proxy_read_timeout 1234s;" in lines
    assert "proxy_send_timeout 77s;" in lines
    assert "keepalive_timeout 65s;" in lines and "keepalive_timeout 0s;" not in lines
    assert "proxy_read_timeout 600s;" not in lines
    assert "listen 8443 ssl default_server;" in lines
    assert "listen 8080 default_server;" in lines
    assert "client_max_body_size 50m;" in lines
    assert "server_name gw.example.com;" in lines


def test_nginx_redirect_and_tls_servers(settings):
    conf = nginx(settings, cert="/srv/tls/my.crt", key="/srv/tls/my.key")
    blocks = server_blocks(conf)
    assert len(blocks) == 2
    plain, tls = blocks
    assert "listen 80 default_server;" in directives(plain)
    assert "return 301 https://$host$request_uri;" in directives(plain)
    assert "proxy_pass" not in plain and "ssl" not in plain
    tls_lines = directives(tls)
    assert "listen 443 ssl default_server;" in tls_lines
    assert "listen [::]:443 ssl default_server;" in tls_lines
    assert "ssl_certificate /srv/tls/my.crt;" in tls_lines
    assert "ssl_certificate_key /srv/tls/my.key;" in tls_lines
    assert "proxy_pass http://litellm;" in tls_lines
    assert not any(re.search(r"ssl_protocols.*(SSLv|TLSv1(\.1)?\b(?!\.))", line) for line in tls_lines)


def test_nginx_needs_its_inputs(settings):
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render.template("nginx/gatekit.conf.j2", s=settings, layout=Layout.from_settings(settings), tls_cert="/a")


# --- systemd unit -----------------------------------------------------------------------------------------------------

CREDS = ["gk_secret_anthropic_key", "gk_secret_openai_key", "litellm_master_key", "redis_password"]


def unit(settings, credentials=CREDS, egress=()):
    return render.template(
        "litellm/litellm@.service.j2",
        s=settings,
        layout=Layout.from_settings(settings),
        credentials=credentials,
        egress_allow=egress,
    )


def unit_values(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in directives(text):
        if "=" in line and not line.startswith("["):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_unit_memory_and_restart(settings):
    v = unit_values(unit(settings))
    assert v["MemoryHigh"] == [settings["litellm_memory_high"]]
    assert v["MemoryMax"] == [settings["litellm_memory_max"]]
    assert parse_size(v["MemoryHigh"][0]) < parse_size(v["MemoryMax"][0])
    assert v["Restart"] == ["always"]
    assert v["RestartSec"] == [str(settings["litellm_restart_sec"])]
    assert v["StartLimitBurst"] == [str(settings["litellm_start_limit_burst"])]
    assert v["StartLimitIntervalSec"] == [str(settings["litellm_start_limit_interval"])]
    assert v["TimeoutStopSec"] == [str(settings["litellm_timeout_stop_sec"])]
    assert int(v["TimeoutStopSec"][0]) > settings["litellm_graceful_timeout"]


def test_unit_follows_settings(settings):
    s = {**settings, "litellm_memory_high": "3G", "litellm_memory_max": "3584M", "litellm_restart_sec": 7,
         "litellm_start_limit_burst": 4, "litellm_start_limit_interval": 120, "litellm_timeout_stop_sec": 90,
         "litellm_user": "gw"}
    v = unit_values(unit(s))
    assert (v["MemoryHigh"], v["MemoryMax"]) == (["3G"], ["3584M"])
    assert (v["RestartSec"], v["StartLimitBurst"], v["StartLimitIntervalSec"]) == (["7"], ["4"], ["120"])
    assert v["TimeoutStopSec"] == ["90"]
    assert v["User"] == ["gw"] and v["Group"] == ["gw"]


def test_unit_start_limits_are_in_the_unit_section(settings):
    text = unit(settings)
    unit_section = text.split("[Service]")[0]
    assert "StartLimitBurst=" in unit_section and "StartLimitIntervalSec=" in unit_section


def test_unit_hardening(settings):
    v = unit_values(unit(settings))
    assert v["NoNewPrivileges"] == ["yes"]
    assert v["ProtectSystem"] == ["strict"]
    assert v["ProtectHome"] == ["yes"]
    assert v["PrivateTmp"] == ["yes"]
    assert v["ReadWritePaths"] == ["/var/lib/litellm/%i"]


def test_unit_credentials(settings):
    text = unit(settings)
    v = unit_values(text)
    assert v["LoadCredentialEncrypted"] == [f"{c}:/etc/gatekit/creds/{c}.cred" for c in CREDS]
    one = unit_values(unit(settings, credentials=["litellm_master_key"]))
    assert one["LoadCredentialEncrypted"] == ["litellm_master_key:/etc/gatekit/creds/litellm_master_key.cred"]


def test_unit_has_no_secret_in_environment(settings):
    text = unit(settings)
    env = unit_values(text)["Environment"]
    assert env == ["GK_PORT=%i"]
    for line in env:
        assert not re.search(r"KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL", line, re.IGNORECASE), line
    assert unit_values(text)["EnvironmentFile"] == [f"{settings['litellm_config_dir']}/litellm.env"]


def test_env_file_has_no_secrets():
    settings = {**DEFAULTS, "litellm_extra_env": {"HTTPS_PROXY": "http://proxy:3128"}, "litellm_redis_breaker_recovery": 7}
    text = render.litellm_env(settings, REDIS, "host=10.0.0.22 port=5432 dbname=litellm user=litellm")
    lines = directives(text)
    assert "REDIS_HOST=10.0.0.21" in lines and "REDIS_PORT=6380" in lines and "REDIS_DB=1" in lines
    assert "HTTPS_PROXY=http://proxy:3128" in lines
    assert "LITELLM_LOG=WARNING" in lines
    assert "PYTHONFAULTHANDLER=1" in lines
    # LiteLLM's Redis circuit breaker, from the settings (LiteLLM reads these names: litellm/constants.py).
    assert {"REDIS_CIRCUIT_BREAKER_ENABLED=true", "REDIS_CIRCUIT_BREAKER_FAILURE_THRESHOLD=5",
            "REDIS_CIRCUIT_BREAKER_TIMEOUT_MIN_DURATION=1.0", "REDIS_CIRCUIT_BREAKER_RECOVERY_TIMEOUT=7"} <= set(lines)
    assert "GK_USAGE_PG=host=10.0.0.22 port=5432 dbname=litellm user=litellm" in lines
    assert not any(re.search(r"KEY|PASSWORD|SECRET", line) for line in lines)
    no_redis = render.litellm_env({**DEFAULTS, "litellm_log_level": "INFO"}, None, None)
    assert "REDIS" not in no_redis and "GK_USAGE_PG" not in no_redis
    assert "LITELLM_LOG=INFO" in directives(no_redis)


# --- launcher ---------------------------------------------------------------------------------------------------------

ENV_FOR = {
    "gk_secret_openai_key": "GK_SECRET_OPENAI_KEY",
    "litellm_master_key": "LITELLM_MASTER_KEY",
    "redis_password": "REDIS_PASSWORD",
    "postgres_password": "GK_POSTGRES_PASSWORD",
}


def launcher(database: bool, venv: str = "/opt/litellm/venv", workers: int = 2) -> str:
    return render.template(
        "litellm/launch.py.j2",
        venv=venv,
        lib_dir="/opt/litellm/lib/gatekit",
        env_for=ENV_FOR,
        database=database,
        db_user="litellm",
        db_name="litellm",
        db_host="10.0.0.21",
        db_port=5432,
        config_path="/etc/litellm/config.yaml",
        bind="127.0.0.1",
        workers=workers,
        healthcheck_timeout=120,
        keepalive_timeout=75,
        max_requests=10000,
        max_requests_jitter=1000,
    )


@pytest.mark.parametrize("database", [False, True])
def test_launcher_is_valid_python_without_secrets(database):
    text = launcher(database)
    compile(text, "gatekit-litellm-launch", "exec")
    assert text.startswith("#!/opt/litellm/venv/bin/python3\n")
    assert ("DATABASE_URL" in text) is database
    assert '"--config", "/etc/litellm/config.yaml"' in text
    assert '"--host", "127.0.0.1"' in text
    assert '"--num_workers", "2"' in text


@pytest.mark.parametrize("database", [False, True])
def test_launcher_uses_prometheus_multiprocess_mode_only_for_several_workers(database):
    """One worker serves /metrics from memory (multiprocess mode costs CPU on every request); several share files."""
    assert 'os.environ["PROMETHEUS_MULTIPROC_DIR"] = ' in launcher(database, workers=2)
    single = launcher(database, workers=1)
    compile(single, "gatekit-litellm-launch", "exec")
    assert 'os.environ["PROMETHEUS_MULTIPROC_DIR"] = ' not in single
    assert 'os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)' in single


def _fake_litellm_cli(tmp_path):
    """A venv whose `litellm` records the arguments and environment it is exec'd with in record.json."""
    import sys

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    record = tmp_path / "record.json"
    fake = venv / "bin" / "litellm"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'cli': sys.argv, 'env': dict(os.environ)}}))\n"
    )
    fake.chmod(0o755)
    return venv, record


def test_launcher_maps_credentials_to_environment(tmp_path):
    """Run the launcher for real; a fake `litellm` records the environment and arguments it is exec'd with."""
    import json
    import subprocess
    import sys

    venv, record = _fake_litellm_cli(tmp_path)
    script = tmp_path / "gatekit-litellm-launch"
    script.write_text(launcher(database=True, venv=str(venv)))
    creds = tmp_path / "creds"
    creds.mkdir()
    values = {
        "gk_secret_openai_key": SECRET_VALUES["openai_key"],
        "litellm_master_key": SECRET_VALUES["litellm_master_key"],
        "redis_password": SECRET_VALUES["redis_password"],
        "postgres_password": SECRET_VALUES["postgres_password"],
    }
    for name, value in values.items():
        (creds / name).write_text(value + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "GK_PORT": "4001", "RUNTIME_DIRECTORY": str(tmp_path / "run"),
           "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, str(script), "--skip_server_startup"], env=env, check=True, timeout=60)
    seen = json.loads(record.read_text())
    args, got = seen["cli"], seen["env"]
    assert args[args.index("--port") + 1] == "4001"
    assert args[args.index("--config") + 1] == "/etc/litellm/config.yaml"
    assert args[-1] == "--skip_server_startup"
    assert got["GK_SECRET_OPENAI_KEY"] == SECRET_VALUES["openai_key"]  # trailing newline stripped
    assert got["LITELLM_MASTER_KEY"] == SECRET_VALUES["litellm_master_key"]
    assert got["REDIS_PASSWORD"] == SECRET_VALUES["redis_password"]
    assert got["GK_POSTGRES_PASSWORD"] == SECRET_VALUES["postgres_password"]  # kept: the usage writer (keyauth.py) connects with it too
    assert got["DATABASE_URL"] == f"postgresql://litellm:{SECRET_VALUES['postgres_password']}@10.0.0.21:5432/litellm"
    assert got["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "run" / "prometheus")
    assert_no_secret_values(json.dumps(args))  # nothing secret on the command line


def _run_dbless_launcher(tmp_path, extra_env: dict, args: tuple = ()) -> dict:
    """Run the DB-less launcher with a fake `uvicorn` module and a fake `litellm` CLI; returns what ran."""
    import json
    import subprocess
    import sys

    venv, record = _fake_litellm_cli(tmp_path)
    hook = tmp_path / "hook"
    hook.mkdir()
    # Like uvicorn's supervisor, the fake spawns a worker: a spawned child re-runs the launcher as its main
    # module, which must not launch again.
    (hook / "uvicorn.py").write_text(
        "import json, multiprocessing, os\n"
        "def _worker(path):\n"
        "    open(path, 'w').write('worker ran')\n"
        "def run(**kwargs):\n"
        f"    child = multiprocessing.get_context('spawn').Process(target=_worker, args=({str(tmp_path / 'worker')!r},))\n"
        "    child.start()\n"
        "    child.join(30)\n"
        "    kwargs['worker_exit'] = child.exitcode\n"
        f"    open({str(record)!r}, 'w').write(json.dumps({{'uvicorn': kwargs, 'env': dict(os.environ)}}))\n"
    )
    script = tmp_path / "gatekit-litellm-launch"
    script.write_text(launcher(database=False, venv=str(venv)))
    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ENV_FOR:
        (creds / name).write_text(f"value-of-{name}\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "GK_PORT": "4002", "RUNTIME_DIRECTORY": str(tmp_path / "run"),
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(hook), **extra_env}
    subprocess.run([sys.executable, str(script), *args], env=env, check=True, timeout=60)
    return json.loads(record.read_text())


def test_dbless_launcher_runs_uvicorn_directly(tmp_path):
    import json

    seen = _run_dbless_launcher(tmp_path, {"LITELLM_LOG": "warning"})
    assert (tmp_path / "worker").read_text() == "worker ran"
    assert seen["uvicorn"].pop("worker_exit") == 0
    assert seen["uvicorn"] == {
        "app": "litellm.proxy.proxy_server:app", "host": "127.0.0.1", "port": 4002, "server_header": False,
        "loop": "gcpolicy:new_event_loop", "workers": 2, "timeout_worker_healthcheck": 120, "timeout_keep_alive": 75,
        "limit_max_requests": 10000,
        "limit_max_requests_jitter": 1000, "log_level": 30,
    }
    env = seen["env"]
    assert env["NUM_WORKERS"] == "2"
    assert json.loads(env["WORKER_CONFIG"])["config"] == "/etc/litellm/config.yaml"
    assert env["LITELLM_MASTER_KEY"] == "value-of-litellm_master_key"
    assert "DATABASE_URL" not in env
    assert env["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "run" / "prometheus")


@pytest.mark.parametrize("extra_env, args", [
    ({"GK_LITELLM_VIA_CLI": "1"}, ()),  # the operator's escape hatch
    ({"JSON_LOGS": "True"}, ()),  # the CLI sets up uvicorn's JSON log config
    ({}, ("--skip_server_startup",)),
])
def test_dbless_launcher_takes_the_cli_when_asked(tmp_path, extra_env, args):
    seen = _run_dbless_launcher(tmp_path, extra_env, args)
    assert "uvicorn" not in seen
    cli = seen["cli"]
    assert cli[cli.index("--num_workers") + 1] == "2"
    assert cli[cli.index("--port") + 1] == "4002"
    assert cli[len(cli) - len(args):] == list(args)


def test_launcher_refuses_to_run_outside_systemd(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "gatekit-litellm-launch"
    script.write_text(launcher(database=False, venv=str(tmp_path / "venv")))
    res = subprocess.run([sys.executable, str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode != 0
    assert "no CREDENTIALS_DIRECTORY" in res.stderr


# --- redis ------------------------------------------------------------------------------------------------------------


def test_redis_conf(settings):
    password = SECRET_VALUES["redis_password"]
    text = render.template(
        "redis/redis.conf.j2", s=settings, private_address="10.0.0.21", password_hash=redis_acl_hash(password)
    )
    lines = directives(text)
    bind = [line for line in lines if line.startswith("bind ")]
    assert len(bind) == 1 and bind[0].split()[1:] == ["127.0.0.1", "10.0.0.21"]
    assert "0.0.0.0" not in text
    digest = hashlib.sha256(password.encode()).hexdigest()
    users = [line for line in lines if line.startswith("user ")]
    assert len(users) == 1
    user = users[0].split()
    assert f"#{digest}" in user
    assert not any(tok.startswith(">") for tok in user)  # '>' would be a plaintext password
    assert "-flushall" in user and "-flushdb" in user
    assert password not in text
    assert f"maxmemory {settings['redis_maxmemory']}" in lines
    assert f"maxmemory-policy {settings['redis_maxmemory_policy']}" in lines
    assert f"port {settings['redis_port']}" in lines
    assert "protected-mode yes" in lines


def test_redis_acl_hash():
    assert redis_acl_hash("secret") == hashlib.sha256(b"secret").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", redis_acl_hash(SECRET_VALUES["redis_password"]))
    assert redis_acl_hash("a") != redis_acl_hash("b")


# --- postgres ---------------------------------------------------------------------------------------------------------


def test_pg_hba(settings):
    gateways = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    text = render.template("postgres/pg_hba.conf.j2", s=settings, gateway_addresses=gateways)
    rows = [line.split() for line in directives(text)]
    host_rows = [r for r in rows if r[0].startswith("host")]
    db, user = settings["postgres_db"], settings["postgres_user"]
    for addr in gateways:
        assert [r for r in host_rows if r[3] == f"{addr}/32"] == [["host", db, user, f"{addr}/32", "scram-sha-256"]]
    # only loopback + the gateways, every host line scram-sha-256, for the LiteLLM db and role only
    assert len(host_rows) == len(gateways) + 1
    for r in host_rows:
        assert r[0] == "host" and r[1:3] == [db, user] and r[-1] == "scram-sha-256", r
        net = ipaddress.ip_network(r[3])
        assert net.num_addresses == 1, r
    assert "0.0.0.0/0" not in text and "::/0" not in text
    assert not any(r[0].startswith("host") and "all" in r[1:3] for r in rows)
    assert not any(r[-1] in ("trust", "password", "md5") for r in rows)


def test_pg_hba_follows_db_settings(settings):
    s = {**settings, "postgres_db": "gw", "postgres_user": "gwuser"}
    text = render.template("postgres/pg_hba.conf.j2", s=s, gateway_addresses=["192.168.1.5"])
    assert "host    gw   gwuser   192.168.1.5/32   scram-sha-256" in text


def test_postgres_conf(settings):
    text = render.template("postgres/gatekit.conf.j2", s=settings, private_address="10.0.0.21")
    lines = directives(text)
    assert "listen_addresses = 'localhost,10.0.0.21'" in lines
    assert "password_encryption = scram-sha-256" in lines
    assert "*" not in text


# --- SCRAM-SHA-256 verifier ---------------------------------------------------------------------------------------

SCRAM_RE = re.compile(r"SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)")


def parse_verifier(v: str):
    m = SCRAM_RE.fullmatch(v)
    assert m, v
    return int(m.group(1)), base64.b64decode(m.group(2)), base64.b64decode(m.group(3)), base64.b64decode(m.group(4))


def independent_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """RFC 5802 / RFC 7677: SaltedPassword = Hi(password, salt, i); StoredKey = H(HMAC(SP, "Client Key"))."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return stored_key, server_key


def test_scram_format():
    v = scram_sha256_verifier(SECRET_VALUES["postgres_password"], salt_seed="litellm")
    iterations, salt, stored, server = parse_verifier(v)
    assert iterations == 4096
    assert len(salt) == 16
    assert len(stored) == 32 and len(server) == 32
    assert SECRET_VALUES["postgres_password"] not in v


def test_scram_deterministic_and_distinct():
    pw = SECRET_VALUES["postgres_password"]
    v = scram_sha256_verifier(pw, salt_seed="litellm")
    assert v == scram_sha256_verifier(pw, salt_seed="litellm")
    other_pw = scram_sha256_verifier(pw + "x", salt_seed="litellm")
    other_role = scram_sha256_verifier(pw, salt_seed="other_role")
    assert len({v, other_pw, other_role}) == 3
    # the salt itself differs too, not only the keys
    assert len({parse_verifier(x)[1] for x in (v, other_pw, other_role)}) == 3


@pytest.mark.parametrize(
    ("password", "role", "iterations"),
    [("correct horse battery staple", "litellm", 4096), (SECRET_VALUES["postgres_password"], "gw", 4096),
     ("pässwörd-ünïcode", "litellm", 4096), ("short", "litellm", 10000)],
)
def test_scram_matches_independent_implementation(password, role, iterations):
    v = scram_sha256_verifier(password, salt_seed=role, iterations=iterations)
    got_iter, salt, stored, server = parse_verifier(v)
    assert got_iter == iterations
    exp_stored, exp_server = independent_keys(password, salt, iterations)
    assert stored == exp_stored
    assert server == exp_server
    # a wrong password does not produce the same StoredKey with this salt
    assert independent_keys(password + "!", salt, iterations)[0] != stored


def test_scram_verifier_authenticates_a_simulated_exchange():
    """Play a SCRAM-SHA-256 exchange as PostgreSQL would, holding only the verifier."""
    password = SECRET_VALUES["postgres_password"]
    iterations, salt, stored_key, server_key = parse_verifier(scram_sha256_verifier(password, salt_seed="litellm"))
    auth_message = b"n=,r=clientnonce,r=clientnonceservernonce,s=" + base64.b64encode(salt) + b",i=4096,c=biws,r=..."

    def client_proof(pw: str) -> bytes:
        salted = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        return bytes(a ^ b for a, b in zip(client_key, signature))

    def server_accepts(proof: bytes) -> bool:
        signature = hmac.digest(stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)

    assert server_accepts(client_proof(password))
    assert not server_accepts(client_proof("wrong password"))
    # the server proves itself with ServerKey; the client can check it from the password alone
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    assert hmac.digest(server_key, auth_message, "sha256") == hmac.digest(
        hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256"
    )


def test_defaults_render_every_template(settings):
    """Each template renders with the default settings (StrictUndefined catches a missing name)."""
    assert set(settings) == set(DEFAULTS) and settings["litellm_ports"] == [4001, 4002, 4003, 4004]
    assert nginx(settings) and unit(settings) and launcher(False)


def test_deployment_ids_carry_the_key_fingerprint():
    from gatekit.render import deployment_id

    assert deployment_id("fast", 0) == "fast--0"
    assert deployment_id("fast", 2, "0123456789abcdef") == "fast--2--01234567"
    from gatekit.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "inventories" / "example.gateway.yaml", check_secrets=False)
    settings = settings_for(spec, {})
    fps = {"openai_key": "aaaaaaaa11112222", "anthropic_key": "bbbbbbbb33334444"}
    ids = {e["model_name"]: e["model_info"]["id"] for e in litellm_config(spec, settings, None, fps)["model_list"]}
    assert ids == {"fast": "fast--0--aaaaaaaa", "smart": "smart--0--aaaaaaaa", "claude": "claude--0--bbbbbbbb"}
    # A new key for one provider changes exactly the ids of that provider's deployments.
    fps2 = {**fps, "openai_key": "cccccccc55556666"}
    ids2 = {e["model_name"]: e["model_info"]["id"] for e in litellm_config(spec, settings, None, fps2)["model_list"]}
    assert ids2["claude"] == ids["claude"] and ids2["fast"] != ids["fast"] and ids2["smart"] != ids["smart"]


def test_unit_follows_non_default_paths(settings):
    s = {**settings, "litellm_home": "/srv/gk", "litellm_config_dir": "/srv/gk-etc"}
    v = unit_values(unit(s))
    assert v["ExecStart"] == ["/srv/gk/bin/gatekit-litellm-launch"]
    assert v["EnvironmentFile"] == ["/srv/gk-etc/litellm.env"]
    assert v["WorkingDirectory"] == ["/var/lib/litellm/%i"]


def test_migration_unit_follows_the_layout(settings):
    s = {**settings, "litellm_home": "/srv/gk", "litellm_config_dir": "/srv/gk-etc"}
    text = render.template("litellm/litellm-migrate.service.j2", layout=Layout.from_settings(s),
                           credentials=["litellm_master_key"], prisma_engines_mirror="https://mirror.example/prisma")
    v = unit_values(text)
    generate, migrate = v["ExecStart"]
    assert generate.startswith("/srv/gk/venv/bin/python3 -c ")
    assert migrate == "/srv/gk/bin/gatekit-litellm-launch --skip_server_startup"
    assert v["EnvironmentFile"] == ["/srv/gk-etc/litellm.env"]
    assert "PRISMA_ENGINES_MIRROR=https://mirror.example/prisma" in v["Environment"]
    assert v["LoadCredentialEncrypted"] == ["litellm_master_key:/etc/gatekit/creds/litellm_master_key.cred"]


def test_the_migration_finds_the_schema_in_the_venvs_own_site_packages(settings, tmp_path):
    """The generate step, run as systemd would run it (its quoting), by this Python against a stand-in prisma CLI:
    the schema path is this interpreter's site-packages, whatever its version (3.11 or 3.13)."""
    import shlex
    import subprocess
    import sys
    import sysconfig

    text = render.template("litellm/litellm-migrate.service.j2", layout=Layout.from_settings(settings),
                           credentials=[], prisma_engines_mirror="")
    argv = shlex.split(unit_values(text)["ExecStart"][0])
    assert argv[0].endswith("/venv/bin/python3") and argv[1] == "-c"
    (tmp_path / "prisma").mkdir()
    (tmp_path / "prisma" / "__init__.py").write_text("")
    (tmp_path / "prisma" / "__main__.py").write_text("import sys; print(repr(sys.argv[1:]))")
    out = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}).stdout
    schema = sysconfig.get_paths()["purelib"] + "/litellm/proxy/schema.prisma"
    assert out.strip() == repr(["generate", "--schema", schema])


def _locations(conf: str) -> dict[str, str]:
    """location pattern -> its block text (locations hold no nested blocks here)."""
    text = "\n".join(directives(conf))
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"(?m)^location\s+([^{]+)\{([^}]*)\}", text)}


PUBLIC_PATHS = ["/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/embeddings", "/embeddings",
                "/v1/responses", "/v1/models", "/models", "/v1/models/fast", "/v1/messages", "/v1/messages/count_tokens",
                "/health/liveliness", "/health/liveness"]
ADMIN_PATHS = ["/", "/ui", "/ui/", "/openapi.json", "/docs", "/routes", "/metrics", "/health", "/health/readiness",
               "/model/info", "/v1/model/info", "/key/generate", "/key/list", "/config/update", "/spend/logs",
               "/cache/flushall", "/v1/chat/completions/x", "/v1/models/a/b", "/v1/messages/batches", "/user/new",
               "/openai/deployments/fast/chat/completions", "/v1/chat/completionsX", "/xv1/models"]


@pytest.mark.parametrize("path", PUBLIC_PATHS + ADMIN_PATHS)
def test_nginx_public_side_is_the_client_api_only(settings, path):
    """nginx's own matching order (regex locations first, then the `/` prefix): a public path lands in a
    regex location that proxies it; any other path lands in `/`, which only admin networks pass."""
    locs = _locations(nginx(settings))
    regexes = [p.removeprefix("~").strip() for p in locs if p.startswith("~")]
    matched = [r for r in regexes if re.search(r, path)]
    if path in PUBLIC_PATHS:
        assert len(matched) == 1, (path, matched)
        assert "proxy_pass http://litellm$uri$is_args$args;" in locs[f"~ {matched[0]}"]
        assert "deny" not in locs[f"~ {matched[0]}"]
    else:
        assert matched == [], (path, matched)


def test_nginx_admin_routes_only_from_admin_networks(settings):
    admin = _locations(nginx(settings))["/"]
    assert [line.strip() for line in admin.strip().splitlines()] == [
        "allow 127.0.0.1/32;", "allow ::1/128;", "deny all;", "proxy_pass http://litellm;"]
    admin = _locations(nginx({**settings, "nginx_admin_allow": ["10.1.0.0/16"]}))["/"]
    assert "allow 10.1.0.0/16;" in admin and "127.0.0.1" not in admin and "deny all;" in admin
    admin = _locations(nginx({**settings, "nginx_admin_allow": []}))["/"]
    assert "allow" not in admin and "deny all;" in admin


def test_unit_is_contained(settings):
    v = unit_values(unit(settings))
    for key, value in {"CapabilityBoundingSet": "", "PrivateUsers": "yes", "ProtectProc": "invisible",
                       "MemoryDenyWriteExecute": "yes", "UMask": "0077", "SystemCallArchitectures": "native",
                       "RestrictNamespaces": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict"}.items():
        assert v[key] == [value], key
    assert v["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert "IPAddressDeny" not in v  # no egress filter unless the operator lists where LiteLLM may connect
    v = unit_values(unit(settings, egress=["10.0.0.5", "203.0.113.0/24"]))
    assert v["IPAddressDeny"] == ["any"] and v["IPAddressAllow"] == ["localhost", "10.0.0.5", "203.0.113.0/24"]


def test_prometheus_metrics_with_bounded_labels(spec, settings):
    """LiteLLM's Prometheus callback is on (nginx keeps /metrics/ to admin networks, so LiteLLM's own key
    check on it is off); no label may come from the client's side or carry a key hash."""
    ls = litellm_config(spec, settings, None)["litellm_settings"]
    assert ls["callbacks"][0] == "prometheus" and "keyauth.usage_logger" in ls["callbacks"]
    assert ls["require_auth_for_metrics_endpoint"] is False
    assert {"end_user", "user", "client_ip", "user_agent", "hashed_api_key", "requested_model"} <= set(ls["prometheus_exclude_labels"])
    assert "api_key_alias" not in ls["prometheus_exclude_labels"]  # the key's name: bounded by the keys file


def test_each_instances_metrics_only_from_admin_networks(settings):
    """Every instance of both sets has its own metrics path; exact-match locations win over the regexes and
    the `/` prefix, and each one keeps the public out."""
    s = {**settings, "litellm_ports": [4301, 4302, 4303, 4304], "nginx_admin_allow": ["10.1.0.0/16"]}
    locs = _locations(nginx(s))
    for port in (4301, 4302, 4303, 4304):
        block = [line.strip() for line in locs[f"= /metrics/{port}/"].strip().splitlines()]
        assert block == ["allow 10.1.0.0/16;", "deny all;", f"proxy_pass http://127.0.0.1:{port}/metrics/;"]
    assert not [p for p in locs if p.startswith("=") and p not in {f"= /metrics/{n}/" for n in (4301, 4302, 4303, 4304)}]
    regexes = [p.removeprefix("~").strip() for p in locs if p.startswith("~")]
    assert not [r for r in regexes if re.search(r, "/metrics/4301/")]


def test_metrics_of_litellms_own_database_are_off_without_it_and_none_the_kit_reads(spec, settings):
    """No LiteLLM database: no LiteLLM users, teams, orgs, customers or virtual-key budgets to report, and no
    request should pay for looking them up. None of them feeds an alert or a dashboard panel."""
    import json

    from gatekit.alerts import alerts
    from gatekit.resources import templates_dir

    ls = render.litellm_config(spec, settings, REDIS)["litellm_settings"]
    assert ls["prometheus_exclude_metrics"] == list(render.PROMETHEUS_EXCLUDED_METRICS)
    assert "litellm_remaining_user_budget_metric" in ls["prometheus_exclude_metrics"]
    used = " ".join(r["expr"] for r in alerts(spec, settings)) + (templates_dir() / "monitoring" / "grafana-dashboard.json").read_text()
    assert not [m for m in render.PROMETHEUS_EXCLUDED_METRICS if m in used]
    json.dumps(ls)  # plain data for config.yaml
    with_db = render.litellm_config(spec, {**settings, "litellm_database": True}, REDIS)["litellm_settings"]
    assert "prometheus_exclude_metrics" not in with_db  # LiteLLM's own keys, teams and users exist there


def test_a_deployment_waits_its_own_timeout_then_cools_down_at_once(spec, settings):
    """Per attempt: the settings' timeouts unless the deployment has its own; one timeout cools the deployment down."""
    d = spec.models[0].deployments[1]
    d.timeout, d.stream_timeout = 12.5, 4
    cfg = litellm_config(spec, {**settings, "litellm_deployment_timeout": 90, "litellm_deployment_stream_timeout": 20}, None)
    params = [m["litellm_params"] for m in cfg["model_list"]]
    assert [(p["timeout"], p["stream_timeout"]) for p in params] == [(90, 20), (12.5, 4), (90, 20), (90, 20)]
    # A timeout, a refused key or an unknown model cools a deployment down at once; a 429 only where the model has
    # other deployments; nothing at the router's level (that would drop LiteLLM's single-deployment safety net).
    assert "allowed_fails_policy" not in cfg["router_settings"]
    infos = {(m["model_name"], m["model_info"]["id"]): m["model_info"] for m in cfg["model_list"]}
    at_first = {"TimeoutErrorAllowedFails": 0, "AuthenticationErrorAllowedFails": 0, "NotFoundErrorAllowedFails": 0}
    for (name, _), info in infos.items():
        several = len(spec.model(name).deployments) > 1
        assert info["allowed_fails_policy"] == ({**at_first, "RateLimitErrorAllowedFails": 0} if several else at_first)
        assert info["allowed_fails"] == spec.retry.allowed_fails
    assert any(len(m.deployments) > 1 for m in spec.models) and any(len(m.deployments) == 1 for m in spec.models)
