"""The wheel ships the kit inside its own namespace and works from there: built from the checkout,
installed into a fresh venv (its dependencies reached through a path entry, never the checkout), it
finds its templates, locks and on-host programs through the package and renders every template."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "gatekit", "roles", "templates", "requirements")

# One context for every template: StrictUndefined makes any name a template uses and this lacks fail.
RENDER_ALL = r"""
import json, sys
from importlib.resources import files
import gatekit, gatekit.render as render
from gatekit.defaults import DEFAULTS
from gatekit.onhost.layout import Layout
from gatekit.roles.venv import lock_file

s = dict(DEFAULTS)
L = Layout.from_settings(s)
context = dict(
    s=s, layout=L, credentials=["litellm_master_key", "redis_password"], venv=L.venv, new=L.venv_build("0" * 64),
    env_for={"litellm_master_key": "LITELLM_MASTER_KEY"}, database=False, db_user="litellm", db_name="litellm",
    db_host="10.0.0.5", db_port=5432, config_path=L.config, bind="127.0.0.1", workers=2, healthcheck_timeout=120,
    keepalive_timeout=75, max_requests=10000, max_requests_jitter=1000, redis={"host": "10.0.0.5", "port": 6379, "db": 1},
    breaker={"failures": 5, "window": 1.0, "recovery": 10}, extra_env={}, ports=[4001], keepalive=32, tls_cert="/etc/gatekit/tls/gateway.crt", tls_key="/etc/gatekit/tls/gateway.key",
    private_address="10.0.0.5", password_hash="0" * 64, gateway_addresses=["10.0.0.6"], installer="uv", pip_args="-q",
    uv_args="-q", lock=L.requirements_lock, uv_lock=L.uv_lock, pip_wheels="/usr/share/python-wheels", stamp="0" * 64,
    prisma_engines_mirror="", egress_allow=["10.0.0.5"], lib_dir=L.lib_dir,
    usage_db="host=10.0.0.5 port=5432 dbname=litellm user=litellm", log_level="WARNING",
    units_regex="(nginx)[.]service", credential="redis_password", metrics_allow=["10.0.0.7/32"],
    secrets={"openai_key": "GK_SECRET_OPENAI_KEY"}, sandbox=["ProtectSystem=strict"],
)
root = files("gatekit.templates")
names = sorted(f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() and d.name != "__pycache__"
               for f in d.iterdir() if f.name.endswith(".j2"))
rendered = {n: len(render.template(n, **context)) for n in names}
print(json.dumps({"package": gatekit.__file__, "templates_dir": str(render.TEMPLATES), "rendered": rendered,
                  "lock": str(lock_file(s)), "rotate": len(files("gatekit.onhost").joinpath("rotate.py").read_text())}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                    "-w", str(out), str(src)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("gatekit-*.whl")
    return whl


def test_wheel_holds_only_the_gatekit_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"gatekit", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for expected in ("gatekit/roles/litellm.py", "gatekit/roles/packages.py", "gatekit/templates/litellm/litellm@.service.j2",
                     "gatekit/templates/nginx/gatekit.conf.j2", "gatekit/requirements/litellm.lock",
                     "gatekit/requirements/uv.lock", "gatekit/onhost/rotate.py", "gatekit/onhost/layout.py", "gatekit/onhost/keyauth.py", "gatekit/onhost/gcpolicy.py",
                     "gatekit/onhost/unitstats.py", "gatekit/templates/monitoring/grafana-dashboard.json"):
        assert expected in names, expected
    checkout_templates = sorted(str(p.relative_to(REPO / "templates")) for p in (REPO / "templates").rglob("*.j2"))
    assert sorted(n.removeprefix("gatekit/templates/") for n in names if n.endswith(".j2")) == checkout_templates
    assert not any(n.startswith(("lab/", "tests/", "roles/", "templates/")) for n in names)


def test_installed_wheel_renders_every_template(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--disable-pip-version-check",
                    "--target", str(purelib), str(wheel)], check=True, capture_output=True, text=True)
    # The dependencies (pyinfra, jinja2, ...) from the test venv, appended after the fresh site-packages: a
    # plain path entry, so the checkout's editable finder there is not loaded.
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    assert not (purelib / "roles").exists() and not (purelib / "templates").exists()
    proc = subprocess.run([str(venv / "bin/python"), "-c", RENDER_ALL], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["package"].startswith(str(purelib)) and out["templates_dir"].startswith(str(purelib))
    assert out["lock"].startswith(str(purelib)) and out["rotate"] > 1000
    checkout = sorted(str(p.relative_to(REPO / "templates")) for p in (REPO / "templates").rglob("*.j2"))
    assert sorted(out["rendered"]) == checkout
    assert all(size > 0 for size in out["rendered"].values()), out["rendered"]
    no_roles = subprocess.run([str(venv / "bin/python"), "-c", "import roles"], cwd=tmp_path, capture_output=True, text=True)
    assert no_roles.returncode != 0 and "No module named 'roles'" in no_roles.stderr
