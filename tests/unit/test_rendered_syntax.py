"""The syntax checkers of tests/unit/syntax.py: every file gatekit renders passes its own checker (the real tool
where one runs here: nginx -t, systemd-analyze verify, promtool, sh/bash -n, compile(), YAML/JSON), and each
checker refuses a deliberately broken file, so the property test of hostile settings can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gatekit.defaults import DEFAULTS
from tests.unit import rendered, syntax
from tests.unit.rendered import FILES, render_all
from tests.unit.syntax import Broken

VARIANTS = {
    "default": {},
    "database, pip, egress filter, extra env, own TLS pair": {
        "litellm_database": True, "litellm_installer": "pip", "litellm_egress_allow": ["10.1.0.0/16"],
        "litellm_extra_env": {"OTEL_SERVICE_NAME": "gateway 1"}, "nginx_tls_cert": "/etc/ssl/gw.pem",
        "nginx_tls_key": "/etc/ssl/gw.key", "litellm_pip_index_url": "http://10.0.0.1:8080/simple",
        "litellm_prisma_engines_mirror": "https://m.example/prisma", "monitoring_alertmanagers": ["10.0.0.9:9093"],
        "litellm_workers": 2, "litellm_max_requests_before_restart": 1000},
}


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> tuple[Path, Path]:
    return syntax.self_signed_pair(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_file_passes_its_checkers(variant, tls_pair, tmp_path):
    s = {**DEFAULTS, **VARIANTS[variant]}
    files = render_all(s)
    assert set(files) == set(FILES)
    for name, text in files.items():
        syntax.structure(FILES[name], text)  # Broken fails the test
    assert rendered.external_checks([s], tmp_path, tls_pair) == []


def test_the_render_cache_never_hides_a_change():
    """render_all reuses a file rendered for settings that agree on every setting it read: the same files as
    a fresh render, for changes to every setting."""
    changes = {"nginx_server_name": "a.example", "litellm_home": "/srv/gk", "litellm_database": True,
               "monitoring_scrape_interval": 30, "litellm_ports": [5001, 5002], "redis_maxmemory": "1gb",
               "litellm_extra_env": {"A": "b"}, "monitoring_alertmanagers": ["10.0.0.9:9093"], "postgres_user": "u"}
    for key, value in changes.items():
        s = {**DEFAULTS, key: value}
        cached = render_all(s)
        rendered._CACHE.clear()
        assert render_all(s) == cached, key
        assert render_all(dict(DEFAULTS)) != cached, key  # and the change shows


# ---- each checker fails on a broken file -------------------------------------------------------------------


def base(name: str) -> str:
    return render_all(dict(DEFAULTS))[name]


def test_yaml_and_json_refuse_broken_or_reshaped_files():
    text = base("monitoring/prometheus.yml")
    with pytest.raises(Broken, match="documents"):
        syntax.yaml_shape(text + "---\nscrape_configs: []\n")
    with pytest.raises(Broken, match="YAML"):
        syntax.yaml_shape(text.replace("scrape_configs:", "scrape_configs: [", 1))
    assert syntax.yaml_shape(text.replace("global:", "global:\n  extra: 1", 1)) != syntax.yaml_shape(text)
    with pytest.raises(Broken, match="JSON"):
        syntax.json_shape(base("litellm/layout.json")[:-3])
    data = json.loads(base("litellm/layout.json"))
    assert syntax.json_shape(json.dumps({**data, "x": 1})) != syntax.json_shape(base("litellm/layout.json"))


def test_the_nginx_parser_refuses_broken_sites_and_sees_added_directives():
    text = base("nginx/gatekit.conf")
    for broken, reason in ((text + "}\n", "unexpected '}'"), (text + "gzip off", "without ';'"),
                           (text + "gzip 'off;\n", "unterminated"), (text + "server {\n", "end of file"),
                           (text.replace("gzip off;", "gzip \"off\"x;"), "after a quoted string")):
        with pytest.raises(Broken, match=reason):
            syntax.nginx_statements(broken)
    for changed in (text.replace("server_name _;", "server_name _; return 200;", 1),
                    text.replace("server_tokens off;", "server_tokens off")):  # the next directive's words join it
        assert syntax.nginx_statements(changed) != syntax.nginx_statements(text)
    assert syntax.nginx_statements(text.replace("server_name _;", "server_name 'a;b';", 1)) == syntax.nginx_statements(text)


def test_nginx_t_refuses_a_broken_site(tls_pair, tmp_path):
    """nginx -t with the headers-more module loaded: the kit's site passes, each break fails, and the check's
    files stay under its directory (its file directives' paths are moved there)."""
    L = rendered.layout(DEFAULTS)
    ok = {"site": base("nginx/gatekit.conf"), "upstream": base("nginx/upstream.conf"), "upstream_path": L.nginx_upstream,
          "tls": L.tls_pair, "log_dir": L.nginx_log_dir}
    broken = [
        {**ok, "site": ok["site"].replace("client_max_body_size 20m;", "client_max_body_size 20x;")},
        {**ok, "site": ok["site"].replace("gzip off;", "gzip off; bogus_directive 1;")},
        {**ok, "site": ok["site"].replace("more_clear_headers", "more_clear_headerz")},
        {**ok, "upstream": ok["upstream"].replace("least_conn;", "least_conn x;")},
        {**ok, "site": ok["site"].replace("server_name _;", "server_name _;}", 1)},
        {**ok, "site": ok["site"].replace(L.tls_pair[0], "/nowhere/cert.pem")},  # a certificate that is not there
    ]
    failures = syntax.nginx_check([ok, *broken], tmp_path, tls_pair)
    assert [f.split(":")[0] for f in failures] == [f"variant {k}" for k in range(1, len(broken) + 1)], failures
    assert syntax.rooted("    include /etc/x.conf;\n    error_log /var/log/a.log;\n", "/R") == \
        "    include /R/etc/x.conf;\n    error_log /R/var/log/a.log;\n"


def test_systemd_analyze_verify_refuses_broken_units(tmp_path):
    L = rendered.layout(DEFAULTS)
    files = render_all(dict(DEFAULTS))
    paths = rendered.unit_paths(L)
    ok = {"units": {paths[n]: files[n] for n in paths}, "verify": rendered.units_to_verify(L),
          "executables": rendered.executables(L)}
    unit = paths["systemd/litellm@.service"]

    def with_unit(text):
        return {**ok, "units": {**ok["units"], unit: text}}

    text = files["systemd/litellm@.service"]
    broken = [
        with_unit(text.replace("MemoryMax=1536M", "MemoryMax=1536m")),  # ignored by systemd: no memory limit
        with_unit(text.replace("Restart=always", "Restart=always\nRestartt=always")),
        with_unit(text.replace(f"ExecStart={L.launcher}", f"ExecStart=/opt/lite llm/bin/x")),
        with_unit(text.replace("Description=LiteLLM Proxy on port %i", "Description=LiteLLM %k")),
        {**ok, "units": {**ok["units"], paths["systemd/prometheus.service.d/gatekit.conf"]:
                         files["systemd/prometheus.service.d/gatekit.conf"].replace("ExecStart=\n", "")}},
    ]
    failures = syntax.systemd_verify([ok, *broken], tmp_path)
    assert [f.split(":")[0] for f in failures] == [f"variant {k}" for k in range(1, len(broken) + 1)], failures


def test_the_unit_parser_refuses_continuations_and_sees_added_lines_and_specifiers():
    text = base("systemd/litellm@.service")
    with pytest.raises(Broken, match="continuation"):
        syntax.unit_lines(text.replace("User=litellm", "User=litellm \\"))
    with pytest.raises(Broken, match="not a Key=value"):
        syntax.unit_lines(text.replace("User=litellm", "User=litellm\nnot an assignment"))
    with pytest.raises(Broken, match="specifier"):
        syntax.unit_lines(text.replace("User=litellm", "User=lite%"))
    with pytest.raises(Broken, match="No closing quotation"):
        syntax.unit_lines(text.replace("ExecStart=/opt", "ExecStart='/opt"))
    for changed in (text.replace("User=litellm", "User=litellm\nExecStartPre=/bin/sh"),
                    text.replace("User=litellm", "User=lite%ilm"),
                    text.replace("ExecStart=/opt/litellm/bin/gatekit-litellm-launch", "ExecStart=/opt/x y")):
        assert syntax.unit_lines(changed) != syntax.unit_lines(text)


def test_the_environment_file_reader_is_systemds():
    text = base("litellm/litellm.env")
    names = [k for k, _ in syntax.env_file(text)]
    # systemd 252: whitespace around names and values dropped, quotes and escapes read, a comment ending in a
    # backslash swallows the next line
    assert syntax.env_pairs("A=x y  \n  B = 'q' \n# c \\\nC=1\nD=\"a\\$b\\x\"\nE=a\\\nb\n")[0] == \
        [("A", "x y"), ("B", "q"), ("D", "a$b\\x"), ("E", "ab")]
    with pytest.raises(Broken, match="quote or escape"):
        syntax.env_file(text + "X=a\\\nY=1\n")
    with pytest.raises(Broken, match="unterminated"):
        syntax.env_file(text + "X='a\n")
    with pytest.raises(Broken, match="no variable name"):
        syntax.env_file(text + "A-B=1\n")
    assert [k for k, _ in syntax.env_file(text + "X=a\nY=1\n")] != names + ["X"]


def test_the_redis_and_postgres_parsers_refuse_broken_lines():
    redis = base("redis/redis.conf")
    with pytest.raises(Broken, match="unbalanced"):
        syntax.redis_directives(redis.replace("maxmemory 256mb", 'maxmemory "256mb'))
    with pytest.raises(Broken, match="closing quote"):
        syntax.redis_directives(redis.replace("maxmemory 256mb", 'maxmemory "256"mb'))
    assert syntax.redis_directives(redis.replace("maxmemory 256mb", "maxmemory 256mb\nuser x on")) != \
        syntax.redis_directives(redis)
    assert syntax.redis_directives(redis.replace("maxmemory 256mb", "maxmemory 256 mb")) != syntax.redis_directives(redis)
    pg = base("postgres/gatekit.conf")
    for broken in (pg.replace("port = 5432", "port = 5432 x"), pg.replace("'localhost", "'localhost'x'")):
        with pytest.raises(Broken, match="syntax error"):
            syntax.postgres_settings(broken)
    hba = base("postgres/pg_hba.conf")
    with pytest.raises(Broken, match="unterminated"):
        syntax.pg_hba_records(hba.replace("host    litellm", 'host    "litellm', 1))
    with pytest.raises(Broken, match="no connection type"):
        syntax.pg_hba_records(hba + "hots all all 10.0.0.1/32 trust\n")
    assert syntax.pg_hba_records(hba.replace("litellm   127", "litellm x  127")) != syntax.pg_hba_records(hba)


def test_promtool_refuses_a_broken_config_or_rule(tmp_path):
    def variant(k, config=None, rules=None):
        moved = render_all(dict(DEFAULTS), gatekit_etc=str(tmp_path / f"root{k}/etc/gatekit"))
        return {"config": config(moved["monitoring/prometheus.yml"]) if config else moved["monitoring/prometheus.yml"],
                "rules": rules(moved["monitoring/alerts.yml"]) if rules else moved["monitoring/alerts.yml"],
                "rules_path": rendered.layout(DEFAULTS, gatekit_etc=str(tmp_path / f"root{k}/etc/gatekit")).alert_rules}

    variants = [variant(0), variant(1, config=lambda t: t.replace("scrape_interval: 15s", "scrape_interval: 15x", 1)),
                variant(2, rules=lambda t: t.replace("== 0", "== = 0", 1)),
                variant(3, rules=lambda t: t.replace("for: 1m", "for: 1 minute", 1))]
    failures = syntax.promtool_check(variants, tmp_path)
    assert [f.split(":")[0] for f in failures] == ["variant 1", "variant 2", "variant 3"], failures


def test_the_python_and_shell_checks_refuse_broken_programs():
    launcher = base("litellm/launch.py")
    with pytest.raises(Broken, match="Python"):
        syntax.python_shape(launcher.replace('"/opt/litellm/lib/gatekit"', '"/opt/litellm/lib/gate"kit"', 1))
    tree, constants = syntax.python_shape(launcher)
    tree2, constants2 = syntax.python_shape(launcher.replace('"/opt/litellm/lib/gatekit"', '"/opt/lit\\nellm"', 1))
    assert tree2 == tree and constants2 != constants  # an escape reads back as another value
    script = base("litellm/venv-install.sh")
    for broken, shell in ((script.replace("fi\n", "", 1), "sh -n"), (script.replace('"$new"', '"$new', 1), "sh -n")):
        with pytest.raises(Broken, match=shell):
            syntax.shell_parse(broken)
    parsed = syntax.shell_parse(script)
    assert syntax.shell_parse(script.replace("rm -rf \"$new\"", "rm -rf \"$new\"; id", 1)) != parsed
    assert "gatekit_script" in parsed and "rm -rf \"$new\"" in parsed


def test_a_control_character_is_refused_in_every_format():
    for name, fmt in FILES.items():
        with pytest.raises(Broken, match="control character"):
            syntax.structure(fmt, base(name) + "\x1b")


def test_expansions_are_seen_where_a_reader_expands():
    """A $ in a unit's command line, in an nginx word or in a shell word is an expansion there, never a character:
    each checker tells it from a plain one."""
    unit = base("systemd/prometheus.service.d/gatekit.conf")
    assert syntax.unit_lines(unit.replace("retention.time=15d", "retention.time=15d$x")) != \
        syntax.unit_lines(unit.replace("retention.time=15d", "retention.time=15dxx"))
    site = base("nginx/gatekit.conf")
    assert syntax.nginx_statements(site.replace("server_name _;", "server_name $x;", 1)) != \
        syntax.nginx_statements(site.replace("server_name _;", "server_name xx;", 1))


def test_shell_words_are_the_shells(tmp_path):
    assert syntax.shell_words("'a b' c\\ d \"e\"f", tmp_path) == ["a b", "c d", "ef"]
    assert syntax.shell_words("https://m/$x?y", tmp_path) == ["https://m/?y"]  # expanded, unlike shlex.split
    (tmp_path / "match").write_text("")
    assert syntax.shell_words("ma*", tmp_path) == ["match"]
    assert syntax.shell_words("$(id) `id`", tmp_path) == []  # no program runs: restricted, no PATH
