"""Property: any string a setting can be given is either refused by validation (one line: where, field,
fix) or renders into files that still parse as intended (no line, directive or block added or lost)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gatekit import monitoring, render
from gatekit.defaults import DEFAULTS
from gatekit.onhost.layout import Layout
from gatekit.spec import check_settings

STRING_SETTINGS = sorted(k for k, v in DEFAULTS.items() if isinstance(v, str))
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["x; return 200", "x\nlocation / {", "a}b", "$(id)", "`id`", "a\"b", "a'b", "a\\b", "#x", " x",
                     "x\r\nY=1", "/etc/../etc", "/opt/x y", "\x00", "10m;", "_ x", "* ;"]),
    st.builds(lambda a, b: a + b, st.sampled_from(["/opt/gk", "gw.example.com", "20m", "uv"]),
              st.sampled_from([";", "\n", " {", "}", "\"", "'", "\\", "$x", "#"])),
)


def render_all(s: dict) -> dict[str, str]:
    L = Layout.from_settings(s)
    cert, key = L.tls_pair
    return {
        "nginx": render.template("nginx/gatekit.conf.j2", s=s, layout=L, tls_cert=cert, tls_key=key),
        "unit": render.template("litellm/litellm@.service.j2", s=s, layout=L, credentials=["litellm_master_key"],
                                egress_allow=[]),
        "migrate": render.template("litellm/litellm-migrate.service.j2", layout=L, credentials=["litellm_master_key"],
                                   prisma_engines_mirror=s["litellm_prisma_engines_mirror"]),
        "redis": render.template("redis/redis.conf.j2", s=s, private_address="10.0.0.5", password_hash="0" * 64),
        "postgres": render.template("postgres/gatekit.conf.j2", s=s, private_address="10.0.0.5"),
        "pg_hba": render.template("postgres/pg_hba.conf.j2", s=s, gateway_addresses=["10.0.0.6"]),
        "prometheus_unit": render.template("monitoring/prometheus.conf.j2", s=s, layout=L, private_address="10.0.0.5"),
        "prometheus": monitoring.prometheus_config(
            [monitoring.Monitored("gw1", "10.0.0.6", frozenset({"gateways"}), s)], s, "10.0.0.5", L),
    }


def shape(name: str, text: str) -> tuple:
    """What a parser of the format sees: the number of lines, and for nginx its statements and blocks."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if name == "nginx":
        body = "\n".join(re.sub(r"#.*", "", ln) for ln in lines)
        return len(lines), body.count(";"), body.count("{"), body.count("}")
    return (len(lines),)


# A valid non-empty value of each setting whose emptiness changes a file's shape by design (an optional
# line): the baseline for a non-empty hostile value.
NON_EMPTY = {"nginx_tls_cert": "/etc/ssl/gw.pem", "nginx_tls_key": "/etc/ssl/gw.key",
             "litellm_prisma_engines_mirror": "https://mirror.example/prisma", "litellm_pip_index_url": "https://m.example/simple",
             "litellm_pip_find_links": "/srv/wheels"}


def baseline(key: str, value: str) -> dict:
    s = dict(DEFAULTS)
    if value and key in NON_EMPTY:
        s[key] = NON_EMPTY[key]
        if key.startswith("nginx_tls_"):
            s.update({k: NON_EMPTY[k] for k in ("nginx_tls_cert", "nginx_tls_key")})
    return {name: shape(name, text) for name, text in render_all(s).items()}


@pytest.mark.parametrize("key", STRING_SETTINGS)
@hsettings(max_examples=60, deadline=None)
@given(value=HOSTILE)
def test_a_string_setting_is_refused_or_renders_as_intended(key, value):
    s = {**DEFAULTS, key: value}
    if key in ("nginx_tls_cert", "nginx_tls_key"):
        s = {**s, "nginx_tls_cert": value, "nginx_tls_key": value}
    problems = check_settings({k: s[k] for k in (key, "nginx_tls_cert", "nginx_tls_key")}, "spec.yaml")
    if problems:
        assert all(p.startswith("spec.yaml: settings.") and "Fix:" in p for p in problems), problems
        return
    expected = baseline(key, value)
    for name, text in render_all(s).items():
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", text), (key, value, name)
        assert shape(name, text) == expected[name], (key, value, name)
