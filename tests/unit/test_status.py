"""`gatekit status`: the evidence command's output read back, a gateway's state from it, the fleet's mix."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

from gatekit.defaults import DEFAULTS
from gatekit.onhost.layout import Layout
from gatekit.status import evidence_command, fleet_status, gateway_status, parse_evidence, render_text, unreachable

LIVE = {"ports": [4003, 4004], "config_sha1": "c" * 40, "change": "deploy", "changed_at": "2026-12-07T09:00:00Z",
        "secrets": {"openai_key": {"fingerprint": "f" * 16, "version": 2}}}


def _host(tmp_path, live=LIVE, journal=None, config="model_list: []\n") -> Layout:
    """A gateway's files under tmp_path, as the deploy and the switch leave them."""
    L = Layout.from_settings({**DEFAULTS, "litellm_home": str(tmp_path / "opt"), "litellm_config_dir": str(tmp_path / "etc")})
    L = Layout(**{**L.__dict__, "gatekit_state_dir": str(tmp_path / "state"), "gatekit_etc": str(tmp_path / "gk")})
    for d in (L.litellm_config_dir, L.gatekit_state_dir, L.creds_dir, f"{L.venvs_dir}/abc/lib/python3.11/site-packages/litellm-1.106.2.dist-info"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    (tmp_path / L.venv).symlink_to(f"{L.venvs_dir}/abc")
    if live is not None:
        (tmp_path / L.live_file).write_text(json.dumps(live))
    if journal is not None:
        (tmp_path / L.journal_file).write_text(json.dumps(journal))
    (tmp_path / L.config).write_text(config)
    (tmp_path / L.cred_fingerprint("openai_key")).write_text("f" * 16 + "\n")
    (tmp_path / L.cred_fingerprint("litellm_master_key")).write_text("m" * 16 + "\n")
    return L


def _evidence(L) -> dict:
    out = subprocess.run(["sh", "-c", evidence_command(L)], capture_output=True, text=True, check=True).stdout
    return parse_evidence(out.splitlines())


def test_the_evidence_command_reads_what_the_switch_recorded(tmp_path):
    L = _host(tmp_path)
    ev = _evidence(L)
    assert ev["live"] == LIVE and ev["journal"] is None
    assert ev["config_sha1"] == hashlib.sha1(b"model_list: []\n").hexdigest()
    assert ev["litellm_version"] == "1.106.2" and ev["venv"].endswith("/abc")
    assert ev["fingerprints"] == {"openai_key": "f" * 16, "litellm_master_key": "m" * 16}


def test_a_gateway_matching_the_spec_and_vault_is_current(tmp_path):
    L = _host(tmp_path)
    ev = _evidence(L)
    g = gateway_status("gw1", ev, ev["config_sha1"], {"openai_key": "f" * 16, "litellm_master_key": "m" * 16})
    assert g["state"] == "current" and g["pending"] == [] and g["ports"] == [4003, 4004]
    assert g["last_change"] == "deploy" and g["changed_at"] == "2026-12-07T09:00:00Z"


def test_a_changed_spec_or_key_is_pending_and_names_what(tmp_path):
    ev = _evidence(_host(tmp_path))
    g = gateway_status("gw1", ev, "0" * 40, {"openai_key": "e" * 16, "litellm_master_key": "m" * 16})
    assert g["state"] == "pending"
    assert g["pending"] == ["config (a deploy would switch to the spec's)", "keys openai_key (rotate_keys.py)"]


def test_a_journal_left_behind_is_an_interrupted_switch(tmp_path):
    journal = {"old_ports": [4001, 4002], "new_ports": [4003, 4004], "secrets": [], "files": ["/etc/litellm/config.yaml"],
               "change": "deploy", "started": 1.0}
    ev = _evidence(_host(tmp_path, journal=journal))
    g = gateway_status("gw1", ev, ev["config_sha1"], {})
    assert g["state"] == "interrupted" and g["interrupted"]["new_ports"] == [4003, 4004]
    assert "interrupted switch" in render_text(fleet_status([g]))


def test_a_fresh_gateway_without_a_record_shows_its_first_deploy(tmp_path):
    ev = _evidence(_host(tmp_path, live=None))
    g = gateway_status("gw1", ev, ev["config_sha1"], {})
    assert g["state"] == "current" and g["ports"] is None and g["last_change"] is None
    assert "last change: first deploy" in render_text(fleet_status([g]))


def test_an_unreadable_record_is_not_a_crash():
    line = "live " + base64.b64encode(b"{not json").decode()
    assert parse_evidence([line])["live"] == {"unreadable": True}


def test_the_fleet_is_mixed_when_configs_or_versions_differ(tmp_path):
    a = gateway_status("gw1", _evidence(_host(tmp_path / "a")), "x", {})
    b = gateway_status("gw2", _evidence(_host(tmp_path / "b", config="model_list: [other]\n")), "x", {})
    c = gateway_status("gw3", _evidence(_host(tmp_path / "c")), "x", {})
    assert not fleet_status([a, c])["mixed"]
    mixed = fleet_status([a, b, c])
    assert mixed["mixed"] and len(mixed["config_sha1s"]) == 2 and "MIXED: 2 configs" in render_text(mixed)
    # An unreachable gateway is reported, not counted as a config of its own.
    down = fleet_status([a, unreachable("gw9", "TimeoutError: timed out")])
    assert not down["mixed"] and "gw9: UNREACHABLE  TimeoutError: timed out" in render_text(down)
