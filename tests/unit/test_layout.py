"""The on-host layout: one description of every path, unit and port, the same on the controller and on
the host (where the programs read it from layout.json beside them, with no gatekit installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from gatekit.defaults import DEFAULTS
from gatekit.onhost.layout import Layout
from gatekit.resources import onhost_source
from roles.litellm import ONHOST_PROGRAMS

NON_DEFAULT = {**DEFAULTS, "litellm_home": "/srv/gk", "litellm_config_dir": "/srv/gk-etc", "litellm_ports": [4301, 4302],
               "nginx_https_port": 8443, "litellm_bind": "127.0.0.2", "postgres_version": 16, "litellm_user": "gk",
               "nginx_upstream_keepalive": 48, "nginx_upstream_keepalive_timeout": 50}
ONHOST = Path(__file__).resolve().parents[2] / "gatekit" / "onhost"


def test_every_on_host_module_is_uploaded():
    """The on-host programs import each other flat on the host: a module of gatekit/onhost/ the deploy does not
    upload would be missing there (an ImportError at the first rotation, not in any test run from the checkout)."""
    assert sorted(ONHOST_PROGRAMS) == sorted(p.name for p in ONHOST.glob("*.py") if p.name != "__init__.py")


def test_layout_defaults_are_the_settings_defaults():
    # Layout() (what a program without layout.json assumes) must not drift from gatekit/defaults.py.
    assert Layout.from_settings(DEFAULTS) == Layout()
    for f in fields(Layout):
        if f.name in DEFAULTS:
            default = DEFAULTS[f.name]
            assert getattr(Layout(), f.name) == (tuple(default) if isinstance(default, list) else default), f.name


def test_every_path_follows_its_setting():
    L = Layout.from_settings(NON_DEFAULT)
    assert (L.config, L.env_file) == ("/srv/gk-etc/config.yaml", "/srv/gk-etc/litellm.env")
    assert (L.venv, L.launcher, L.lib_dir) == ("/srv/gk/venv", "/srv/gk/bin/gatekit-litellm-launch", "/srv/gk/lib/gatekit")
    assert L.venv_build("ab" * 32) == "/srv/gk/venvs/" + "ab" * 8
    assert L.postgres_conf_dir == "/etc/postgresql/16/main"
    assert L.instance(4301) == "litellm@4301.service"
    assert L.runtime_credential(4302, "openai_key") == "/run/credentials/litellm@4302.service/openai_key"
    assert L.tls_pair == ("/etc/gatekit/tls/gateway.crt", "/etc/gatekit/tls/gateway.key")
    own = Layout.from_settings({**NON_DEFAULT, "nginx_tls_cert": "/etc/ssl/gw.pem", "nginx_tls_key": "/etc/ssl/gw.key"})
    assert own.tls_pair == ("/etc/ssl/gw.pem", "/etc/ssl/gw.key")


def test_json_round_trip():
    L = Layout.from_settings(NON_DEFAULT)
    assert Layout.from_json(L.to_json()) == L


def test_uploaded_programs_read_the_layout_beside_them_without_gatekit(tmp_path):
    """As deployed: the programs the deploy uploads, in one directory with layout.json, run by a
    Python without site-packages (-S: no gatekit, no third-party module)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ONHOST_PROGRAMS:
        (lib / name).write_text(onhost_source(name))
    L = Layout.from_settings(NON_DEFAULT)
    (lib / "layout.json").write_text(L.to_json())
    probe = (
        "import importlib, json, sys; sys.path.insert(0, sys.argv[1]); "
        "mods = [importlib.import_module(m) for m in sys.argv[2:]]; import instance, layout, upstream; "
        "L = layout.Layout.beside(instance.__file__); print(json.dumps([L.config, L.env_file, L.creds_dir, "
        "L.nginx_upstream, list(L.litellm_ports), L.nginx_https_port, L.litellm_bind, upstream.for_layout(L, [4301]), "
        "'gatekit' in sys.modules]))"
    )
    # Every uploaded module imports flat, beside the others (as rotate.py, unitstats.py and instance.py run).
    modules = [name[:-3] for name in ONHOST_PROGRAMS if name not in ("keyauth.py", "gcpolicy.py")]  # those need LiteLLM
    out = subprocess.run([sys.executable, "-S", "-c", probe, str(lib), *modules], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    *paths, upstream_conf, gatekit_imported = json.loads(out.stdout)
    assert paths == ["/srv/gk-etc/config.yaml", "/srv/gk-etc/litellm.env", "/etc/gatekit/creds",
                     "/etc/nginx/gatekit/upstream.conf", [4301, 4302], 8443, "127.0.0.2"]
    assert not gatekit_imported
    # The upstream file rotation writes on the host carries the host's bind address and keepalive settings.
    assert "    server 127.0.0.2:4301 max_fails=0;\n" in upstream_conf
    assert "    keepalive 48;\n" in upstream_conf and "    keepalive_timeout 50s;\n" in upstream_conf
    for program in ("rotate.py", "instance.py"):
        run = subprocess.run([sys.executable, "-S", str(lib / program), "--help"], capture_output=True, text=True)
        assert run.returncode == 0 and "usage:" in run.stdout, run.stderr
    # Without layout.json the programs refuse to guess the host's paths.
    (lib / "layout.json").unlink()
    run = subprocess.run([sys.executable, "-S", str(lib / "rotate.py"), "--secrets", "openai_key", "--master-cred", "m",
                          "--redis-cred", "r", "--ready-timeout", "1", "--settle", "0"], capture_output=True, text=True)
    assert run.returncode != 0 and "layout.json missing. Fix: re-run the deploy" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-S", str(lib / "instance.py"), "wait-ready", "4001", "--timeout", "1"],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "layout.json missing" in run.stderr, run.stderr


def test_the_launchers_venv_is_read_from_its_interpreter_line(tmp_path):
    L = Layout(litellm_home=str(tmp_path))
    build = L.venv_build("0123456789abcdef" * 4)
    assert Layout.launcher_venv(f"#!{build}/bin/python3\nimport os\n") == build
    assert Layout.launcher_venv("#!/usr/bin/env python3\n") == "" and Layout.launcher_venv("") == ""
    site = Path(build) / "lib" / "python3.11" / "site-packages"
    assert Layout.litellm_version(build) == ""
    (site / "litellm-1.108.7.dist-info").mkdir(parents=True)
    (site / "litellm_enterprise-0.1.79.dist-info").mkdir()
    assert Layout.litellm_version(build) == "1.108.7"
