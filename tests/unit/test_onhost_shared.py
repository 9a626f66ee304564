"""One definition per fact shared by the controller and the on-host programs: the key fingerprint, the litellm.env
parser, the Redis client and LiteLLM's key names, the unit-active metric's name. They live in probe.py, which
doctor_run.py sends to hosts alone, so probe.py itself must import no sibling."""

from __future__ import annotations

import ast
from pathlib import Path

from gatekit import alerts, vault
from gatekit.onhost import instance, probe, rotate, unitstats

ONHOST = Path(__file__).resolve().parents[2] / "gatekit" / "onhost"


def test_probe_imports_no_sibling_so_it_runs_sent_alone():
    tree = ast.parse((ONHOST / "probe.py").read_text())
    siblings = {p.stem for p in ONHOST.glob("*.py")}
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not relative and not names & siblings, names & siblings


def test_one_fingerprint():
    from roles import credentials, rotation

    assert probe.fingerprint("sk-test-key") == "0d62f396c1317066"  # SHA-256[:16], written out
    for module in (unitstats, vault, credentials, rotation):
        assert module.fingerprint is probe.fingerprint, module.__name__
    assert not hasattr(instance, "fingerprint")  # no second name for it to drift under


def test_one_env_parser():
    assert probe.parse_env("# c\nREDIS_HOST=10.0.0.3\n  REDIS_PORT=6379\nX=a=b\n\n  # REDIS_DB=9\n") == {
        "REDIS_HOST": "10.0.0.3", "REDIS_PORT": "6379", "X": "a=b"}


def test_one_redis_client():
    assert not hasattr(rotate, "Redis") and not hasattr(probe, "redis_call") and not hasattr(probe, "_redis_item")


def test_one_name_for_the_unit_active_metric():
    assert alerts.LITELLM_UNIT_ACTIVE is probe.LITELLM_UNIT_ACTIVE == "gatekit:litellm_unit_active"
    assert alerts.RECORDING[0]["record"] == "gatekit:litellm_unit_active"
    assert "(gatekit:litellm_unit_active == 1)" in probe.DOWN_QUERIES[1]
