"""rotate_keys.py's command lines: the one the controller builds for gatekit-rotate (roles/switch.py rotate_argv),
read by gatekit-rotate's own parser; and the operator's `pyinfra INVENTORY rotate_keys.py`, refused before any host
is contacted when it names no secret."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import gatekit.onhost.rotate as R
from gatekit import vault
from gatekit.defaults import DEFAULTS
from roles.rotation import NO_SECRET, cli_problems
from roles.switch import rotate_argv

REPO = Path(__file__).resolve().parents[2]
SETTINGS = {**DEFAULTS, "litellm_master_key_secret": "mk_prod", "redis_password_secret": "redis_pw_prod",
            "litellm_ready_timeout": 77, "rotation_settle_sec": 2.5}


def _parsed(argv):
    # As the operation puts it on the host's command line (roles/switch.py switch_gateway), and back.
    return R.parser().parse_args(shlex.split(" ".join(shlex.quote(a) for a in argv)))


def test_the_controllers_command_line_reads_back_as_the_settings_it_was_built_from():
    argv = rotate_argv(SETTINGS, {"openai_key": "sk-a", "anthropic_key": "sk-b"},
                       ["llama3:8b--0--abcd1234", "team/fast--1--abcd1234"], ["llama3:8b--0--00ff00ff"],
                       fail_after="canary")
    ns = _parsed(argv)
    assert (ns.master_cred, ns.redis_cred, ns.ready_timeout, ns.settle) == ("mk_prod", "redis_pw_prod", 77.0, 2.5)
    assert ns.secrets == "openai_key,anthropic_key"
    assert ns.deployments == "llama3:8b--0--abcd1234,team/fast--1--abcd1234"
    assert ns.purge_deployments == "llama3:8b--0--00ff00ff"
    assert (ns.fail_after, ns.fail_at) == ("canary", "")


def test_the_defaults_reach_gatekit_rotate_from_gatekit_defaults():
    ns = _parsed(rotate_argv(DEFAULTS, {}, [], [], fail_at="purge"))
    assert (ns.master_cred, ns.redis_cred) == ("litellm_master_key", "redis_password")
    assert (ns.ready_timeout, ns.settle) == (120.0, 1.0)
    assert (ns.secrets, ns.deployments, ns.purge_deployments, ns.fail_after, ns.fail_at) == ("-", "", "", "", "purge")


def test_a_deploys_switch_reads_back_with_its_files_models_and_digests():
    argv = rotate_argv(DEFAULTS, {}, ["quick--0"], [], files=["/etc/litellm/config.yaml", "/etc/systemd/system/litellm@.service"],
                       models=["fast", "llama3:8b", "gpt-4o"], digests={"llama3:8b--0--abcd1234": "0123456789ab"},
                       change="deploy")
    ns = _parsed(argv)
    assert R._list(ns.files) == ["/etc/litellm/config.yaml", "/etc/systemd/system/litellm@.service"]
    assert R._list(ns.models) == ["fast", "llama3:8b", "gpt-4o"] and R._list(ns.secrets) == []
    assert R.digests(ns.digests) == {"llama3:8b--0--abcd1234": "0123456789ab"} and ns.change == "deploy"


@pytest.mark.parametrize("option", ["--master-cred", "--redis-cred", "--ready-timeout", "--settle"])
def test_gatekit_rotate_defaults_no_setting_of_its_own(option):
    """A setting's value comes from the controller only: without it gatekit-rotate refuses to run."""
    full = ["--secrets", "openai_key", "--master-cred", "m", "--redis-cred", "r", "--ready-timeout", "1", "--settle", "0"]
    i = full.index(option)
    with pytest.raises(SystemExit):
        R.parser().parse_args(full[:i] + full[i + 2:])
    R.parser().parse_args(full)  # and with it, it does


# --- no secret named: refused before connecting ------------------------------------------------------------------

@pytest.mark.parametrize("argv, environ, problems", [
    (["inv.py", "rotate_keys.py"], {}, [NO_SECRET]),
    (["inv.py", "rotate_keys.py", "--data", "rotate="], {}, [NO_SECRET]),
    (["inv.py", "rotate_keys.py", "--data=rotate= , "], {}, [NO_SECRET]),
    (["-y", "inv.py", "/srv/kit/rotate_keys.py", "--data", "rotate=openai_key"], {}, []),
    (["inv.py", "rotate_keys.py"], {"GATEKIT_ROTATE": "openai_key"}, []),
    (["inv.py", "deploy.py"], {}, []),
    (["inv.py", "roles/run.py", "--data", "role=nginx"], {}, []),
])
def test_cli_problems_of_a_rotate_keys_command_line(argv, environ, problems):
    assert cli_problems(argv, environ) == problems


def test_the_message_is_one_line_with_its_fix():
    assert NO_SECRET == "rotate_keys.py: which secrets? Fix: --data rotate=openai_key[,other] (or GATEKIT_ROTATE=...)."


# pyinfra's command line in a child process whose connect step is replaced by a marker: any attempt to contact a host
# shows as CONNECT-ATTEMPTED (exit 99). No network is used: the hosts are never resolved.
PYINFRA = """
import sys
import pyinfra_cli.cli as cli

def connect_all(state):
    print("CONNECT-ATTEMPTED", flush=True)
    sys.exit(99)

cli.connect_all = connect_all
sys.argv = ["pyinfra", *sys.argv[1:]]
from pyinfra_cli.main import main
main()
"""
INVENTORY = """
from gatekit.inventory import groups

_g = groups(inventory_file="inv.py", spec_file={spec!r}, hosts={{
    "gateways": [("gw1.invalid", {{"private_address": "10.0.0.11"}})],
    "redis": [("db1.invalid", {{"private_address": "10.0.0.10"}})],
    "postgres": [("db1.invalid", {{"private_address": "10.0.0.10"}})],
}})
gateways, redis, postgres, monitoring = _g["gateways"], _g["redis"], _g["postgres"], _g["monitoring"]
"""


@pytest.fixture
def pyinfra_cli(tmp_path):
    spec = tmp_path / "x.gateway.yaml"
    spec.write_text((REPO / "inventories" / "example.gateway.yaml").read_text())
    path, key = tmp_path / "example.secrets.enc.yaml", tmp_path / "vault.key"
    vault.init_vault(path, key_file=key, passphrase=None)
    k = vault.resolve_key(path, key_file=key)
    for name in ("openai_key", "anthropic_key", "litellm_master_key", "redis_password", "postgres_password"):
        vault.set_secret(path, k, name, f"sk-secret-value-of-{name}")
    inventory = tmp_path / "inv.py"
    inventory.write_text(INVENTORY.format(spec=str(spec)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKIT_")}
    env.update(GATEKIT_VAULT_KEY_FILE=str(key), PYTHONPATH=str(REPO))

    def run(*args):
        proc = subprocess.run([sys.executable, "-c", PYINFRA, str(inventory), "rotate_keys.py", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    return run


def test_the_harness_sees_a_connection_attempt(pyinfra_cli):
    """The control: a valid command line goes on to connect (and is stopped there by the marker)."""
    rc, out = pyinfra_cli("--data", "rotate=openai_key", "-y")
    assert rc == 99 and "CONNECT-ATTEMPTED" in out, out


def test_an_empty_rotate_is_refused_before_connecting(pyinfra_cli):
    rc, out = pyinfra_cli("--data", "rotate=", "-y")
    assert rc not in (0, 99) and "CONNECT-ATTEMPTED" not in out, out
    assert "rotate: no secret named" in out, out


def test_no_rotate_at_all_is_refused_before_connecting(pyinfra_cli):
    rc, out = pyinfra_cli("-y")
    assert rc not in (0, 99) and "CONNECT-ATTEMPTED" not in out, out
    assert NO_SECRET in out, out
