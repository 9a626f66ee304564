"""Unit tests for key rotation: roles.rotation.deployment_ids and the on-host transaction of
gatekit/onhost/rotate.py, run on a temporary directory with systemd, nginx, LiteLLM and Redis faked."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import stat
import subprocess
import sys
from itertools import chain, combinations
from pathlib import Path

import pytest
import yaml

import gatekit.onhost.instance as I
import gatekit.onhost.rotate as R
from gatekit.onhost.layout import Layout
from gatekit.defaults import DEFAULTS
from gatekit.render import litellm_config
from gatekit.spec import parse_spec
from roles.rotation import deployment_ids

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example.gateway.yaml"

# --- deployment_ids ----------------------------------------------------------------------------------------


def _spec():
    data = yaml.safe_load(EXAMPLE.read_text())
    data = copy.deepcopy(data)
    # A second deployment for `fast`, with its own key.
    data["models"][0]["deployments"].append(
        {"provider": "openai", "model": "gpt-4o-mini", "api_base": "https://backup.openai.example/v1",
         "secret": "openai_backup_key", "weight": 1}
    )
    return parse_spec(data, Path("inv/example.gateway.yaml"))


def _config_ids(spec, names):
    cfg = litellm_config(spec, {**DEFAULTS, **spec.settings}, None)
    return [e["model_info"]["id"] for e in cfg["model_list"] if e["model_info"]["gatekit_secret"] in names]


def test_deployment_ids_of_the_example_spec():
    spec = _spec()
    assert deployment_ids(spec, {"openai_key"}) == ["fast--0", "smart--0"]
    assert deployment_ids(spec, {"openai_backup_key"}) == ["fast--1"]
    assert deployment_ids(spec, {"anthropic_key"}) == ["claude--0"]
    assert deployment_ids(spec, {"openai_key", "anthropic_key"}) == ["fast--0", "smart--0", "claude--0"]
    assert deployment_ids(spec, set()) == []
    assert deployment_ids(spec, {"litellm_master_key"}) == []  # no deployment uses it


def test_deployment_ids_match_the_rendered_model_info_ids():
    spec = _spec()
    secrets = sorted(spec.secrets_used() | {"litellm_master_key"})
    all_ids = _config_ids(spec, set(secrets))
    assert len(all_ids) == len(set(all_ids)) == 4  # ids are unique across the config
    for subset in chain.from_iterable(combinations(secrets, k) for k in range(len(secrets) + 1)):
        names = set(subset)
        assert deployment_ids(spec, names) == _config_ids(spec, names), names


# --- the on-host transaction: a fake host ---------------------------------------------------------------


def up():
    """nginx's upstream as the fake host's events record it: a port, or a tuple for a set of several."""
    ports = R.upstream_ports()
    return ports[0] if len(ports) == 1 else tuple(ports)


def upstream_text(ports) -> str:
    from gatekit import render

    return render.template("nginx/upstream.conf.j2", ports=list(ports), bind="127.0.0.1", keepalive=32, keepalive_timeout=60)

UPSTREAM_TEXT = """# Rendered by gatekit: the LiteLLM instance(s) nginx sends traffic to.
upstream litellm {
    server 127.0.0.1:%d max_fails=0;
    keepalive 32;
}
"""


class FakeHost:
    """Files in tmp_path; systemd, nginx, LiteLLM and Redis as recorded fakes."""

    def __init__(self, tmp_path: Path, monkeypatch, live: int = 4001, ports=(4001, 4002)):
        self.root = tmp_path
        self.creds = tmp_path / "creds"
        self.state = tmp_path / "state"
        self.nginx = tmp_path / "nginx" / "gatekit"
        for d in (self.creds, self.nginx):
            d.mkdir(parents=True)
        self.upstream = self.nginx / "upstream.conf"
        self.upstream.write_text(UPSTREAM_TEXT % live if isinstance(live, int) else upstream_text(live))
        live = {live} if isinstance(live, int) else set(live)
        # Every path the program touches comes from its layout: here all of them under tmp_path.
        monkeypatch.setattr(R, "LAYOUT", Layout(
            gatekit_etc=str(tmp_path), gatekit_state_dir=str(self.state), nginx_dir=str(tmp_path / "nginx"),
            litellm_config_dir=str(tmp_path), litellm_home=str(tmp_path / "home"), litellm_ports=ports,
        ))
        self.running = set(live)
        self.events: list[tuple] = []
        self.calls: list[tuple] = []
        self.nginx_ok = True
        self.fail: dict[str, Exception] = {}  # "ready" | "canary" | "canary-nginx" | "purge" -> raised
        monkeypatch.setattr(R, "run", self.run)
        monkeypatch.setattr(R, "stop_instances", self.stop_instances)
        monkeypatch.setattr(R, "wait_ready", self.wait_ready)
        monkeypatch.setattr(R, "canary", self.canary)
        monkeypatch.setattr(R, "purge_redis", self.purge_redis)
        monkeypatch.setattr(R, "unit_secret", self.unit_secret)
        monkeypatch.setattr(R, "nginx_workers", self.nginx_workers)
        monkeypatch.setattr(R, "invocations", self.invocations)
        # A clock that moves only when the program sleeps: its waits (the canary through nginx retries for
        # 10 s) end at once in fake time instead of spinning through real seconds.
        self.clock = 1000.0
        monkeypatch.setattr(R.time, "sleep", self.sleep)
        monkeypatch.setattr(R.time, "monotonic", lambda: self.clock)
        self.generation = 1  # nginx's workers: a reload starts generation N+1 and retires generation N
        self.starts = {p: 1 for p in self.running}  # how often systemd started each instance

    # -- fakes --
    def run(self, *argv, check=True):
        self.calls.append(argv)
        rc, err = 0, ""
        if argv[:2] == ("nginx", "-t"):
            self.events.append(("nginx -t", up()))
            if not self.nginx_ok:
                rc, err = 1, "nginx: [emerg] host not found in upstream"
        elif argv[:2] == ("systemctl", "reload"):
            self.events.append(("reload", up()))
            self.generation += 1
        elif argv[:2] == ("systemctl", "restart"):
            port = int(re.fullmatch(r"litellm@(\d+)\.service", argv[2]).group(1))
            self.events.append(("restart", port, self.cred_text("openai_key")))
            self.running.add(port)
            self.starts[port] = self.starts.get(port, 0) + 1
        elif argv[:2] == ("systemctl", "start"):
            for unit in argv[2:]:
                if unit.startswith("litellm@"):
                    port = int(re.fullmatch(r"litellm@(\d+)\.service", unit).group(1))
                    self.events.append(("start", port))
                    self.running.add(port)
                    self.starts[port] = self.starts.get(port, 0) + 1
        elif argv[:2] in (("systemctl", "enable"), ("systemctl", "disable")):
            self.events.extend((argv[1], unit) for unit in argv[2:])
        if check and rc:
            raise RuntimeError(f"{' '.join(argv)}: {err}")
        return subprocess.CompletedProcess(argv, rc, "", err)

    def stop_instances(self, ports):
        for port in ports:
            self.events.append(("stop", port))
            self.running.discard(port)

    def wait_ready(self, port, timeout):
        self.events.append(("ready", port))
        assert port in self.running, "waiting for an instance that was never started"
        if "ready" in self.fail:
            raise self.fail["ready"]

    def sleep(self, seconds):
        self.events.append(("sleep", seconds))
        self.clock += seconds

    def canary(self, base_url, master_key, ids, check_header):
        step = "canary" if check_header else "canary-nginx"
        self.events.append((step, base_url, master_key, list(ids), self.cred_text("openai_key"), up()))
        if step in self.fail:
            raise self.fail[step]

    def purge_redis(self, port, ids, redis_cred="redis_password"):
        self.events.append(("purge", port, list(ids)))
        if "purge" in self.fail:
            raise self.fail["purge"]
        return 3

    def nginx_workers(self):
        retiring = {10 * (self.generation - 1) + 1: "nginx: worker process is shutting down"} if self.generation > 1 else {}
        return {**retiring, 10 * self.generation + 1: "nginx: worker process"}

    def invocations(self, ports):
        return {str(p): f"run-{p}-{self.starts.get(p, 0)}" for p in ports if p in self.running}

    def crash_and_restart(self, port):
        """systemd restarting an instance after it died: it starts from the credential in place now."""
        self.starts[port] = self.starts.get(port, 0) + 1
        self.running.add(port)

    def unit_secret(self, port, name):
        self.events.append(("unit_secret", port, name))
        return "sk-master-fake"

    # -- helpers --
    def put(self, name, cred, fp, suffix=""):
        for ext, text in (("cred", cred), ("fp", fp + "\n")):
            p = self.creds / f"{name}.{ext}{suffix}"
            p.write_text(text)
            p.chmod(0o600)

    def stage(self, name, cred, fp):
        self.put(name, cred, fp, ".next")

    def cred_text(self, name, suffix=""):
        p = self.creds / f"{name}.cred{suffix}"
        return p.read_text() if p.exists() else None

    def fp_text(self, name, suffix=""):
        p = self.creds / f"{name}.fp{suffix}"
        return p.read_text().strip() if p.exists() else None

    def files(self):
        return sorted(p.name for p in self.creds.iterdir())

    def snapshot(self):
        return {p.name: p.read_text() for p in sorted(self.creds.iterdir())}

    def live(self):
        p = self.state / "live.json"
        return json.loads(p.read_text()) if p.exists() else None

    def journal(self):
        p = self.state / "rotation.json"
        return json.loads(p.read_text()) if p.exists() else None

    def write_journal(self, **journal):
        self.state.mkdir(exist_ok=True)
        (self.state / "rotation.json").write_text(json.dumps(journal))

    def kinds(self):
        return [e[0] for e in self.events]

    def of(self, kind):
        return [e for e in self.events if e[0] == kind]


@pytest.fixture
def gw(tmp_path, monkeypatch):
    return FakeHost(tmp_path, monkeypatch)


def args(**over):
    base = dict(secrets="openai_key", deployments="fast--0,smart--0", ports="4001,4002", https_port=443,
                ready_timeout=5.0, drain_timeout=5.0, settle=0.25, fail_after="", fail_at="",
                master_cred="litellm_master_key", redis_cred="redis_password", purge_deployments="fast--0,smart--0")
    base.update(over)
    return argparse.Namespace(**base)


# --- credentials ----------------------------------------------------------------------------------------


def test_swap_creds_moves_next_into_place_and_keeps_prev(gw):
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.stage("openai_key", "NEW-cred", "newfp")
    gw.stage("fresh_key", "FRESH-cred", "freshfp")  # no current credential yet
    R.swap_creds(["openai_key", "fresh_key"])
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.fp_text("openai_key") == "newfp"
    assert gw.cred_text("openai_key", ".prev") == "OLD-cred" and gw.fp_text("openai_key", ".prev") == "oldfp"
    assert gw.cred_text("fresh_key") == "FRESH-cred"
    assert gw.files() == sorted(["openai_key.cred", "openai_key.fp", "openai_key.cred.prev", "openai_key.fp.prev",
                                 "fresh_key.cred", "fresh_key.fp"])
    # The kept copy is as private as the original.
    assert stat.S_IMODE(os.stat(gw.creds / "openai_key.cred.prev").st_mode) == 0o600


def test_config_is_swapped_restored_and_retired_with_the_credentials(gw, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    assert R.LAYOUT.config == str(config)
    config.write_text("ids: old\n")
    config.chmod(0o640)
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.stage("openai_key", "NEW-cred", "newfp")
    R.swap_creds(["openai_key"])
    assert config.read_text() == "ids: new\n" and (tmp_path / "config.yaml.prev").read_text() == "ids: old\n"
    # The previous file is moved, not copied: its mode (and owner) are exactly what the deploy set.
    assert stat.S_IMODE(os.stat(tmp_path / "config.yaml.prev").st_mode) == 0o640
    R.restore_creds(["openai_key"])
    assert config.read_text() == "ids: old\n" and gw.cred_text("openai_key") == "OLD-cred"
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    R.discard_staged(["openai_key"])
    assert not (tmp_path / "config.yaml.next").exists()
    gw.stage("openai_key", "NEW-cred", "newfp")
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    R.swap_creds(["openai_key"])
    R.cleanup_prev(["openai_key"])
    assert (tmp_path / "config.yaml.retired").read_text() == "ids: old\n"
    assert not (tmp_path / "config.yaml.prev").exists()


def test_swap_creds_refuses_and_changes_nothing_when_one_name_is_not_staged(gw):
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.stage("openai_key", "NEW-cred", "newfp")
    gw.put("anthropic_key", "OLD-ant", "oldant")
    before = gw.snapshot()
    with pytest.raises(RuntimeError, match=r"anthropic_key\.cred\.next.*missing"):
        R.swap_creds(["openai_key", "anthropic_key"])
    assert gw.snapshot() == before


def test_restore_creds_puts_prev_back_and_leaves_next_alone(gw):
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.stage("openai_key", "NEW-cred", "newfp")
    R.swap_creds(["openai_key"])
    gw.stage("openai_key", "NEWER-cred", "newerfp")  # staged again by a later run
    R.restore_creds(["openai_key"])
    assert gw.cred_text("openai_key") == "OLD-cred" and gw.fp_text("openai_key") == "oldfp"
    assert gw.cred_text("openai_key", ".next") == "NEWER-cred"
    assert gw.files() == ["openai_key.cred", "openai_key.cred.next", "openai_key.fp", "openai_key.fp.next"]


def test_restore_creds_without_prev_changes_nothing(gw):
    gw.put("openai_key", "CUR", "curfp")
    before = gw.snapshot()
    R.restore_creds(["openai_key", "never_seen"])
    assert gw.snapshot() == before


def test_discard_staged_removes_only_next_files_of_the_named_secrets(gw):
    gw.put("openai_key", "CUR", "curfp")
    gw.put("openai_key", "PREV", "prevfp", ".prev")
    gw.stage("openai_key", "NEXT", "nextfp")
    gw.stage("anthropic_key", "ANT-NEXT", "antfp")
    R.discard_staged(["openai_key", "not_there"])
    assert gw.files() == sorted(["openai_key.cred", "openai_key.fp", "openai_key.cred.prev", "openai_key.fp.prev",
                                 "anthropic_key.cred.next", "anthropic_key.fp.next"])


def test_cleanup_prev_renames_prev_to_retired(gw):
    gw.put("openai_key", "CUR", "curfp")
    gw.put("openai_key", "PREV", "prevfp", ".prev")
    gw.put("openai_key", "ANCIENT", "ancientfp", ".retired")  # an earlier rotation's leftover is replaced
    R.cleanup_prev(["openai_key", "not_there"])
    assert gw.files() == ["openai_key.cred", "openai_key.cred.retired", "openai_key.fp", "openai_key.fp.retired"]
    assert gw.cred_text("openai_key", ".retired") == "PREV" and gw.fp_text("openai_key", ".retired") == "prevfp"
    assert gw.cred_text("openai_key") == "CUR"


# --- record ---------------------------------------------------------------------------------------------


def test_record_writes_live_json_and_counts_versions(gw):
    gw.state.mkdir()
    gw.put("openai_key", "C1", "fp-one")
    R.record([4002], ["openai_key"], {})
    first = gw.live()
    assert first["ports"] == [4002]
    assert first["secrets"]["openai_key"]["fingerprint"] == "fp-one"  # NAME.fp, without its newline
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["rotated_at"])
    assert first["secrets"]["openai_key"]["rotated_at"] == first["rotated_at"]

    gw.put("openai_key", "C2", "fp-two")
    R.record([4001], ["openai_key"], {})
    gw.put("anthropic_key", "A1", "ant-one")
    gw.put("openai_key", "C3", "fp-three")
    R.record([4002], ["openai_key", "anthropic_key"], {})
    third = gw.live()
    # Each rotation is one version more; the deployed key counts as version 1, so the first rotation is 2.
    assert first["secrets"]["openai_key"]["version"] == 2
    assert third["secrets"]["openai_key"]["version"] == 4
    assert third["ports"] == [4002]
    assert third["secrets"]["openai_key"]["fingerprint"] == "fp-three"
    assert third["secrets"]["anthropic_key"] == {"fingerprint": "ant-one", "version": 2,
                                                 "rotated_at": third["rotated_at"]}


def test_record_increments_one_at_a_time(gw):
    gw.state.mkdir()
    gw.put("openai_key", "C", "fp")
    seen = []
    for port in (4002, 4001, 4002):
        R.record([port], ["openai_key"], {})
        seen.append((gw.live()["ports"][0], gw.live()["secrets"]["openai_key"]["version"]))
    assert seen == [(4002, 2), (4001, 3), (4002, 4)]


def test_record_keeps_secrets_it_did_not_rotate(gw):
    gw.state.mkdir()
    (gw.state / "live.json").write_text(json.dumps(
        {"port": 4001, "secrets": {"anthropic_key": {"fingerprint": "a", "version": 5, "rotated_at": "x"}}}))
    gw.put("openai_key", "C", "fp")
    R.record([4002], ["openai_key"], {})
    live = gw.live()
    assert live["secrets"]["anthropic_key"] == {"fingerprint": "a", "version": 5, "rotated_at": "x"}
    assert live["secrets"]["openai_key"]["version"] == 2 and live["ports"] == [4002]


# --- nginx upstream -------------------------------------------------------------------------------------


def test_upstream_port_parses_the_server_line(gw):
    assert up() == 4001
    gw.upstream.write_text("upstream litellm {\n    server 127.0.0.1:4002 max_fails=0;\n}\n")
    assert up() == 4002
    gw.upstream.write_text("server 127.0.0.1:4002 max_fails=0;")
    assert up() == 4002


def test_upstream_port_without_server_line_raises(gw):
    gw.upstream.write_text("upstream litellm {\n    keepalive 32;\n}\n")
    with pytest.raises(RuntimeError, match="no upstream server line"):
        up()


def test_set_upstream_rewrites_only_the_port_and_reloads(gw):
    R.set_upstream([4002])
    assert gw.upstream.read_text() == UPSTREAM_TEXT % 4002
    assert gw.events == [("nginx -t", 4002), ("reload", 4002)]
    assert ("systemctl", "reload", "nginx.service") in gw.calls
    assert sorted(p.name for p in gw.nginx.iterdir()) == ["upstream.conf"]  # no .before / .candidate left


def test_set_upstream_to_the_same_port_does_nothing(gw):
    R.set_upstream([4001])
    assert gw.upstream.read_text() == UPSTREAM_TEXT % 4001
    assert gw.calls == [] and gw.events == []


def test_set_upstream_refused_by_nginx_restores_the_file(gw):
    gw.nginx_ok = False
    original = gw.upstream.read_text()
    with pytest.raises(RuntimeError, match="nginx -t refused the new upstream"):
        R.set_upstream([4002])
    assert gw.upstream.read_text() == original
    assert gw.of("reload") == []  # never reloaded with a refused configuration
    assert gw.of("nginx -t") == [("nginx -t", 4002)]  # nginx checked the candidate, not the old file
    assert sorted(p.name for p in gw.nginx.iterdir()) == ["upstream.conf"]


def test_switch_pending_until_every_old_worker_retires_and_a_new_one_serves():
    before = {11: "nginx: worker process", 12: "nginx: worker process"}
    # The master has the signal but has not started or told anyone yet.
    assert "11, 12 from before the reload still take connections" in R.switch_pending(before, dict(before))
    # New workers run, one old worker has not yet processed its QUIT: it still accepts with the old upstream.
    now = {11: "nginx: worker process is shutting down", 12: "nginx: worker process", 21: "nginx: worker process"}
    assert "12 from before" in R.switch_pending(before, now)
    # Old workers retiring (or gone) and a new one serving: done.
    assert R.switch_pending(before, {11: "nginx: worker process is shutting down", 21: "nginx: worker process"}) is None
    assert R.switch_pending(before, {21: "nginx: worker process"}) is None
    # Old workers retired but nothing new serves (the master failed to load the new configuration).
    assert R.switch_pending(before, {11: "nginx: worker process is shutting down"}) == "no nginx worker started by the reload"
    assert R.switch_pending(before, {}) == "no nginx worker started by the reload"


def test_nginx_workers_reads_the_masters_children_and_their_titles(tmp_path, monkeypatch):
    def proc(pid, ppid, title, comm="nginx"):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194624 0 0 0 0 0 0 0 0 20 0 1 0 5000 0 0\n")
        (d / "cmdline").write_bytes(title.encode() + b"\0")
    proc(100, 1, "nginx: master process /usr/sbin/nginx -g daemon on; master_process on;")
    proc(101, 100, "nginx: worker process")
    proc(102, 100, "nginx: worker process is shutting down")
    proc(103, 1, "nginx: worker process")  # another nginx (not this master's)
    proc(104, 100, "weird) name", comm="a) b")  # a title with a parenthesis: stat is parsed from the last ')'
    (tmp_path / "self").mkdir()
    calls = []

    def unit_props(unit):
        calls.append(unit)
        return {"ActiveState": "active", "MainPID": "100"}

    monkeypatch.setattr(R.probe, "unit_props", unit_props)
    assert R.nginx_workers(str(tmp_path)) == {101: "nginx: worker process", 102: "nginx: worker process is shutting down"}
    assert calls == ["nginx.service"]
    monkeypatch.setattr(R.probe, "unit_props", lambda unit: {"ActiveState": "inactive", "MainPID": "0"})
    assert R.nginx_workers(str(tmp_path)) == {}  # nginx not running: no workers, never a guess


def test_set_upstream_returns_only_once_the_old_workers_stopped_taking_connections(gw, monkeypatch):
    polls = []
    real = gw.nginx_workers

    def slow_master():  # the old worker gets its QUIT only on the fourth look after the reload
        workers = real()
        if gw.generation > 1:
            polls.append(1)
            if len(polls) < 4:
                workers[11] = "nginx: worker process"
        return workers

    monkeypatch.setattr(R, "nginx_workers", slow_master)
    R.set_upstream([4002])
    assert len(polls) == 4
    assert gw.kinds() == ["nginx -t", "reload", "sleep", "sleep", "sleep"]


def test_set_upstream_raises_when_the_reload_never_takes_effect(gw, monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(R.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(R, "nginx_workers", lambda: {11: "nginx: worker process"})  # the master kept the old ones
    with pytest.raises(RuntimeError, match=r"reload did not take effect within 30 s: nginx workers 11 from before"):
        R.set_upstream([4002])


def test_rotate_waits_for_the_switch_before_the_canary_through_nginx_and_the_drain(gw, monkeypatch):
    _ready(gw)
    seen = []
    real = gw.nginx_workers

    def workers():
        seen.append(gw.kinds()[-1])
        return real()

    monkeypatch.setattr(R, "nginx_workers", workers)
    assert R.rotate(args()) == 0
    assert seen == ["nginx -t", "reload"]  # looked before the reload and after it, nothing else ran between
    assert gw.kinds().index("reload") < gw.kinds().index("canary-nginx") < gw.kinds().index("sleep")


# --- rotate(): the whole transaction -----------------------------------------------------------------------


def _ready(gw):
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.put("anthropic_key", "ANT-cred", "antfp")
    gw.stage("openai_key", "NEW-cred", "newfp")


def assert_rolled_back(gw, old=4001, new=4002, live_before=None):
    assert up() == old
    assert gw.upstream.read_text() == UPSTREAM_TEXT % old
    assert gw.running == {old}
    assert ("stop", new) in gw.events
    assert ("stop", old) not in gw.events
    assert gw.cred_text("openai_key") == "OLD-cred" and gw.fp_text("openai_key") == "oldfp"
    assert gw.cred_text("anthropic_key") == "ANT-cred"
    assert gw.files() == ["anthropic_key.cred", "anthropic_key.fp", "openai_key.cred", "openai_key.fp"]
    assert gw.journal() is None
    assert gw.live() == live_before
    assert gw.of("enable") == [] and gw.of("disable") == []


def test_rotate_success(gw, capsys):
    _ready(gw)
    assert R.rotate(args()) == 0

    assert up() == 4002
    assert gw.upstream.read_text() == UPSTREAM_TEXT % 4002
    assert gw.running == {4002}
    assert gw.journal() is None
    live = gw.live()
    assert live["ports"] == [4002]
    assert live["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert set(live["secrets"]) == {"openai_key"}
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.fp_text("openai_key") == "newfp"
    assert gw.cred_text("openai_key", ".retired") == "OLD-cred"
    assert gw.files() == sorted(["anthropic_key.cred", "anthropic_key.fp", "openai_key.cred", "openai_key.fp",
                                 "openai_key.cred.retired", "openai_key.fp.retired"])

    # The order of the steps, and what each saw.
    assert gw.kinds() == ["stop", "start", "ready", "unit_secret", "canary", "nginx -t", "reload", "purge",
                          "canary-nginx", "sleep", "stop", "enable", "disable"]
    assert gw.of("stop") == [("stop", 4002), ("stop", 4001)]  # leftover NEW first, OLD only after the switch
    assert gw.of("start") == [("start", 4002)]
    assert gw.of("unit_secret") == [("unit_secret", 4002, "litellm_master_key")]
    # Direct canary: NEW instance, new credential already in place, traffic still on OLD.
    assert gw.of("canary") == [("canary", "http://127.0.0.1:4002", "sk-master-fake", ["fast--0", "smart--0"],
                                "NEW-cred", 4001)]
    assert gw.of("reload") == [("reload", 4002)]
    assert gw.of("purge") == [("purge", 4002, ["fast--0", "smart--0"])]
    # Canary through nginx, after the switch.
    assert gw.of("canary-nginx") == [("canary-nginx", "https://127.0.0.1:443", "sk-master-fake",
                                      ["fast--0", "smart--0"], "NEW-cred", 4002)]
    assert gw.of("sleep") == [("sleep", 0.25)]
    assert gw.of("enable") == [("enable", "litellm@4002.service")]
    assert gw.of("disable") == [("disable", "litellm@4001.service")]
    out = capsys.readouterr().out
    assert "litellm@4001 -> litellm@4002" in out and "3 Redis keys purged" in out


def test_rotate_journal_during_the_run(gw, monkeypatch):
    _ready(gw)
    seen = []
    real_canary = gw.canary

    def canary(*a, **kw):
        seen.append(gw.journal())
        return real_canary(*a, **kw)

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args()) == 0
    assert seen[0]["old_ports"] == [4001] and seen[0]["new_ports"] == [4002]
    assert seen[0]["secrets"] == ["openai_key"] and seen[0]["swapped"] is True
    assert gw.journal() is None


def test_rotate_twice_alternates_ports_and_counts_versions(gw):
    _ready(gw)
    assert R.rotate(args()) == 0
    gw.stage("openai_key", "NEWER-cred", "newerfp")
    gw.events.clear()
    assert R.rotate(args()) == 0
    assert up() == 4001
    assert gw.running == {4001}
    assert gw.of("stop") == [("stop", 4001), ("stop", 4002)]
    live = gw.live()
    assert live["ports"] == [4001]
    assert live["secrets"]["openai_key"]["fingerprint"] == "newerfp"
    assert live["secrets"]["openai_key"]["version"] == 3
    assert gw.cred_text("openai_key", ".retired") == "NEW-cred"


def test_rotate_with_nothing_staged_does_nothing(gw, capsys):
    gw.put("openai_key", "OLD-cred", "oldfp")
    before = gw.snapshot()
    assert R.rotate(args()) == 0
    assert gw.snapshot() == before
    assert gw.calls == [] and gw.events == []
    assert gw.journal() is None and gw.live() is None
    assert "nothing staged" in capsys.readouterr().out


def test_rotate_only_the_staged_secrets(gw):
    _ready(gw)  # anthropic_key is asked for but not staged
    assert R.rotate(args(secrets="openai_key,anthropic_key", deployments="fast--0,smart--0,claude--0")) == 0
    assert set(gw.live()["secrets"]) == {"openai_key"}
    assert gw.cred_text("anthropic_key") == "ANT-cred"
    assert not (gw.creds / "anthropic_key.cred.retired").exists()


def test_rotate_from_an_upstream_outside_the_pair_goes_to_the_first_port(gw):
    gw.upstream.write_text(UPSTREAM_TEXT % 5000)
    gw.running = {5000}
    _ready(gw)
    assert R.rotate(args()) == 0
    assert up() == 4001
    assert gw.live()["ports"] == [4001]
    assert ("stop", 5000) in gw.events


def test_rotate_failure_in_canary_rolls_back(gw, capsys):
    _ready(gw)
    gw.fail["canary"] = RuntimeError("fast--0: HTTP 401: invalid api key")
    assert R.rotate(args()) == 1
    assert_rolled_back(gw)
    assert gw.of("nginx -t") == [] and gw.of("reload") == []  # traffic never moved
    assert gw.of("purge") == [] and gw.of("canary-nginx") == []
    err = capsys.readouterr().err
    assert "step canary failed" in err and "HTTP 401" in err


def test_rollback_restarts_an_old_instance_that_systemd_restarted_from_the_refused_key(gw4, monkeypatch, capsys):
    """Old set 4001+4002, new 4003+4004: 4001 dies after the swap and systemd starts it again, from the new
    credential. The canary refuses the key: the rollback restores the old credential, then restarts 4001
    (only 4001) and waits for it, so no instance keeps serving the refused key."""
    gw = gw4
    _ready(gw)
    real_canary = gw.canary

    def canary(base_url, master_key, ids, check_header):
        if base_url.endswith(":4003"):
            gw.crash_and_restart(4001)
        real_canary(base_url, master_key, ids, check_header)
        raise RuntimeError("fast--0: HTTP 401: invalid api key")

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args()) == 1
    assert gw.of("restart") == [("restart", 4001, "OLD-cred")]  # after the credential is back
    kinds = gw.kinds()
    assert kinds[kinds.index("restart") + 1] == "ready" and gw.of("ready")[-1] == ("ready", 4001)
    assert gw.running == {4001, 4002}
    assert "litellm@4001 started during the rotation, from the refused key: restarting it" in capsys.readouterr().err


def test_rollback_restarts_nothing_when_no_old_instance_restarted(gw):
    _ready(gw)
    gw.fail["canary"] = RuntimeError("fast--0: HTTP 401: invalid api key")
    assert R.rotate(args()) == 1
    assert gw.of("restart") == []


def test_rotate_failure_of_swap_creds_itself_discards_the_staged_files(gw, monkeypatch, capsys):
    _ready(gw)
    gw.stage("anthropic_key", "ANT-NEW", "antnewfp")

    def swap_fails(names):
        assert sorted(names) == ["anthropic_key", "openai_key"]
        raise OSError("No space left on device")

    monkeypatch.setattr(R, "swap_creds", swap_fails)
    assert R.rotate(args(secrets="openai_key,anthropic_key")) == 1
    assert_rolled_back(gw)  # also: no .next file of either secret is left
    assert gw.of("start") == []
    assert "step swap-creds failed: No space left on device" in capsys.readouterr().err


def test_rotate_failure_in_ready_rolls_back(gw, capsys):
    _ready(gw)
    gw.fail["ready"] = RuntimeError("litellm@4002 not ready after 5s")
    assert R.rotate(args()) == 1
    assert_rolled_back(gw)
    assert gw.of("canary") == []
    assert "step ready failed" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["purge", "canary-nginx"])
def test_rotate_failure_after_the_switch_switches_back(gw, capsys, where):
    _ready(gw)
    gw.fail[where] = RuntimeError("boom")
    assert R.rotate(args()) == 1
    assert_rolled_back(gw)
    # Traffic had moved to NEW: it is moved back to OLD (nginx -t + graceful reload both ways).
    assert gw.of("reload") == [("reload", 4002), ("reload", 4001)]
    assert gw.kinds().index("stop", 1) > gw.kinds().index("reload", gw.kinds().index("reload") + 1)
    assert f"step {where} failed" in capsys.readouterr().err


def test_rotate_nginx_refusing_the_switch_rolls_back(gw, capsys):
    _ready(gw)
    gw.nginx_ok = False
    assert R.rotate(args()) == 1
    assert_rolled_back(gw)
    assert gw.of("reload") == []
    assert "step switch failed" in capsys.readouterr().err


def test_rotate_rollback_keeps_an_existing_live_json(gw):
    gw.state.mkdir()
    before = {"port": 4001, "rotated_at": "2020-01-01T00:00:00Z",
              "secrets": {"openai_key": {"fingerprint": "oldfp", "version": 2, "rotated_at": "2020-01-01T00:00:00Z"}}}
    (gw.state / "live.json").write_text(json.dumps(before))
    _ready(gw)
    gw.fail["canary-nginx"] = RuntimeError("boom")
    assert R.rotate(args()) == 1
    assert_rolled_back(gw, live_before=before)


ROLLED_BACK_STEPS = ["swap-creds", "start", "ready", "canary", "switch", "purge", "canary-nginx"]


@pytest.mark.parametrize("step", ROLLED_BACK_STEPS)
def test_rotate_fail_at_each_step_up_to_canary_nginx_rolls_back(gw, capsys, step):
    _ready(gw)
    assert R.rotate(args(fail_at=step)) == 1
    assert_rolled_back(gw)
    moved = ROLLED_BACK_STEPS.index(step) >= ROLLED_BACK_STEPS.index("switch")
    assert gw.of("reload") == ([("reload", 4002), ("reload", 4001)] if moved else [])
    err = capsys.readouterr().err
    assert f"step {step} failed: fault injection" in err


def test_rotate_fail_at_drain_is_finished_forward_by_the_next_run(gw):
    # Past the switch (and canary-nginx) the rotation only goes forward: a failure in drain is not rolled back,
    # the journal stays, and the next run completes the rotation.
    _ready(gw)
    with pytest.raises(RuntimeError, match="fault injection"):
        R.rotate(args(fail_at="drain"))
    assert up() == 4002
    assert gw.running == {4002}
    assert gw.journal()["swapped"] is True and gw.journal()["new_ports"] == [4002]
    assert gw.live() is None
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.cred_text("openai_key", ".prev") == "OLD-cred"

    gw.events.clear()
    assert R.rotate(args()) == 0  # nothing staged: only the recovery runs
    assert gw.journal() is None
    assert gw.live()["ports"] == [4002] and gw.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.cred_text("openai_key", ".retired") == "OLD-cred"
    assert up() == 4002
    assert gw.of("reload") == []


def test_rotate_fail_at_record_has_no_injection_point(gw):
    # rotate() calls fault() after every step but `record`: --fail-at record changes nothing.
    _ready(gw)
    assert R.rotate(args(fail_at="record")) == 0
    assert gw.live()["ports"] == [4002] and gw.journal() is None


# --- recover() ------------------------------------------------------------------------------------------


def _interrupted(gw, upstream, swapped=True):
    """A rotation 4001 -> 4002 cut off: creds swapped (or not), NEW started, upstream where given."""
    gw.upstream.write_text(UPSTREAM_TEXT % upstream)
    gw.running = {4001, 4002} if upstream == 4002 or swapped else {4001}
    if swapped:
        gw.put("openai_key", "NEW-cred", "newfp")
        gw.put("openai_key", "OLD-cred", "oldfp", ".prev")
    else:
        gw.put("openai_key", "OLD-cred", "oldfp")
        gw.stage("openai_key", "NEW-cred", "newfp")
    journal = {"old_port": 4001, "new_port": 4002, "secrets": ["openai_key"], "started": 1.0, "swapped": swapped}
    gw.write_journal(**journal)
    return journal


def test_recover_forward_when_nginx_is_already_on_new(gw):
    journal = _interrupted(gw, upstream=4002)
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("stop") == [("stop", 4001)]
    assert gw.running == {4002}
    assert gw.of("enable") == [("enable", "litellm@4002.service")]
    assert gw.of("disable") == [("disable", "litellm@4001.service")]
    assert gw.live()["ports"] == [4002]
    assert gw.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw.cred_text("openai_key") == "NEW-cred"
    assert gw.files() == ["openai_key.cred", "openai_key.cred.retired", "openai_key.fp", "openai_key.fp.retired"]
    assert up() == 4002 and gw.of("reload") == []


def test_recover_back_when_nginx_is_still_on_old(gw):
    journal = _interrupted(gw, upstream=4001, swapped=True)
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("stop") == [("stop", 4002)]
    assert gw.running == {4001}
    assert gw.cred_text("openai_key") == "OLD-cred" and gw.fp_text("openai_key") == "oldfp"
    assert gw.files() == ["openai_key.cred", "openai_key.fp"]
    assert gw.live() is None
    assert up() == 4001 and gw.of("reload") == []
    assert gw.of("enable") == [] and gw.of("disable") == []


def test_recover_back_restarts_old_instances_started_after_the_swap(gw):
    """Cut off after the swap, then the host rebooted: the old instance started at boot from the new credential.
    Rolling back restores the old one and restarts that instance from it; a journal without the record (an
    older release) restarts nothing."""
    journal = _interrupted(gw, upstream=4001, swapped=True)
    journal["old_invocations"] = {"4001": "run-4001-1"}
    gw.crash_and_restart(4001)  # the boot
    R.recover(journal)
    assert gw.of("restart") == [("restart", 4001, "OLD-cred")]
    assert gw.journal() is None and gw.cred_text("openai_key") == "OLD-cred"

    gw.events.clear()
    journal = _interrupted(gw, upstream=4001, swapped=True)
    gw.crash_and_restart(4001)
    R.recover(journal)
    assert gw.of("restart") == []


def test_recover_back_before_the_swap_leaves_creds_alone(gw):
    journal = _interrupted(gw, upstream=4001, swapped=False)
    before = gw.snapshot()
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("stop") == [("stop", 4002)]
    assert gw.snapshot() == before  # including the staged .next files


def test_recover_keeps_freshly_staged_credentials(gw):
    journal = _interrupted(gw, upstream=4001, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")  # the re-run staged before gatekit-rotate ran
    R.recover(journal)
    assert gw.cred_text("openai_key") == "OLD-cred"
    assert gw.cred_text("openai_key", ".next") == "NEWEST-cred" and gw.fp_text("openai_key", ".next") == "newestfp"


def test_recover_forward_keeps_freshly_staged_credentials(gw):
    journal = _interrupted(gw, upstream=4002, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    R.recover(journal)
    assert gw.cred_text("openai_key") == "NEW-cred"
    assert gw.cred_text("openai_key", ".next") == "NEWEST-cred"


def test_rerun_after_an_interrupted_rotation_rolls_back_then_rotates_the_fresh_key(gw):
    _interrupted(gw, upstream=4001, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    assert R.rotate(args()) == 0
    assert up() == 4002
    assert gw.running == {4002}
    assert gw.journal() is None
    assert gw.cred_text("openai_key") == "NEWEST-cred"
    assert gw.cred_text("openai_key", ".retired") == "OLD-cred"  # the key live before the cut-off run
    assert gw.live()["ports"] == [4002] and gw.live()["secrets"]["openai_key"]["fingerprint"] == "newestfp"
    # The canary tested the freshly staged key.
    assert gw.of("canary")[0][4] == "NEWEST-cred"


def test_rerun_after_an_interrupted_rotation_finishes_forward_then_rotates_the_fresh_key(gw):
    _interrupted(gw, upstream=4002, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    assert R.rotate(args()) == 0
    assert up() == 4001  # forward to 4002, then the new rotation 4002 -> 4001
    assert gw.running == {4001}
    assert gw.cred_text("openai_key") == "NEWEST-cred"
    assert gw.cred_text("openai_key", ".retired") == "NEW-cred"
    live = gw.live()
    assert live["ports"] == [4001]
    assert live["secrets"]["openai_key"] == {"fingerprint": "newestfp", "version": 3,
                                             "rotated_at": live["rotated_at"]}


def test_rerun_restaging_the_key_recovery_already_made_live_rotates_nothing_more(gw):
    # Interrupted after the switch: recovery finishes forward to NEW. The controller could not tell from
    # the fingerprint files and re-staged the same key: it must be discarded, not rotated a second time.
    _interrupted(gw, upstream=4002, swapped=True)
    gw.stage("openai_key", "NEW-cred", "newfp")
    assert R.rotate(args()) == 0
    assert up() == 4002
    assert not os.path.exists(os.path.join(R.LAYOUT.creds_dir, "openai_key.cred.next"))
    assert not os.path.exists(os.path.join(R.LAYOUT.creds_dir, "openai_key.fp.next"))
    assert gw.live()["secrets"]["openai_key"]["version"] == 2


# --- canary, wait_ready, purge_redis with only HTTP/systemd/Redis faked --------------------------------------


@pytest.fixture
def http_calls(monkeypatch):
    calls, answers = [], []

    def http(url, body, headers, timeout=30):
        calls.append((url, body, headers))
        return answers.pop(0)

    monkeypatch.setattr(R, "http", http)
    monkeypatch.setattr(I, "http", http)
    return calls, answers


def test_canary_asks_each_deployment_without_fallbacks_or_retries(http_calls):
    calls, answers = http_calls
    answers += [(200, {"x-litellm-model-id": "fast--0"}, "{}"), (200, {"x-litellm-model-id": "smart--0"}, "{}")]
    R.canary("http://127.0.0.1:4002", "sk-m", ["fast--0", "smart--0"], check_header=True)
    assert [c[0] for c in calls] == ["http://127.0.0.1:4002/v1/chat/completions"] * 2
    assert [c[1]["model"] for c in calls] == ["fast--0", "smart--0"]
    for _, body, headers in calls:
        assert body["max_tokens"] == 1 and body["disable_fallbacks"] is True and body["num_retries"] == 0
        assert headers == {"Authorization": "Bearer sk-m"}


@pytest.mark.parametrize(
    "answer, message",
    [
        ((401, {}, '{"error": "invalid key"}'), "fast--0: HTTP 401"),
        ((200, {"x-litellm-model-id": "fast--1"}, "{}"), "answered by 'fast--1'"),
        ((200, {}, "{}"), "answered by None"),
        ((200, {"x-litellm-model-id": "fast--0", "x-litellm-attempted-fallbacks": "1"}, "{}"), "through a fallback"),
    ],
)
def test_canary_refuses_a_wrong_answer(http_calls, answer, message):
    _, answers = http_calls
    answers.append(answer)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        R.canary("http://127.0.0.1:4002", "sk-m", ["fast--0"], check_header=True)


def test_canary_through_nginx_checks_only_the_status(http_calls):
    _, answers = http_calls
    answers += [(200, {}, "{}")]  # nginx strips x-litellm-* headers
    R.canary("https://127.0.0.1:443", "sk-m", ["fast--0"], check_header=False)
    answers += [(502, {}, "bad gateway")]
    with pytest.raises(RuntimeError, match="HTTP 502"):
        R.canary("https://127.0.0.1:443", "sk-m", ["fast--0"], check_header=False)


def test_wait_ready_stops_at_a_failed_unit(monkeypatch, http_calls):
    calls, _ = http_calls
    monkeypatch.setattr(I, "unit_failed", lambda unit: True)
    with pytest.raises(RuntimeError, match=r"litellm@4002.service failed to start"):
        R.wait_ready(4002, 30)
    assert calls == []


def test_wait_ready_returns_when_readiness_answers_200(monkeypatch, http_calls):
    calls, answers = http_calls
    monkeypatch.setattr(I, "unit_failed", lambda unit: False)
    monkeypatch.setattr(I.time, "sleep", lambda s: None)
    answers += [(503, {}, ""), (200, {}, "")]
    R.wait_ready(4002, 30)
    assert [c[0] for c in calls] == ["http://127.0.0.1:4002/health/readiness"] * 2


def test_purge_redis_without_redis_configured_deletes_nothing(tmp_path, monkeypatch):
    env = tmp_path / "litellm.env"
    env.write_text("# no redis\nLITELLM_LOG=INFO\n")
    monkeypatch.setattr(R, "LAYOUT", Layout(litellm_config_dir=str(tmp_path)))
    monkeypatch.setitem(sys.modules, "redis", None)  # importing it would fail
    assert R.purge_redis(4002, ["fast--0"]) == 0


def test_purge_redis_deletes_only_the_rotated_deployments_keys(tmp_path, monkeypatch):
    env = tmp_path / "litellm.env"
    env.write_text("LITELLM_LOG=INFO\nREDIS_HOST=10.0.0.5\nREDIS_PORT=6380\nREDIS_DB=1\n")
    monkeypatch.setattr(R, "LAYOUT", Layout(litellm_config_dir=str(tmp_path)))
    monkeypatch.setattr(R, "unit_secret", lambda port, name: f"secret-of-{name}@{port}")
    made = {}

    class FakeRedis:
        def __init__(self, host, port, db, password):
            made.update(host=host, port=port, db=db, password=password)
            # LiteLLM's real key shapes (router.py / cooldown_cache.py), as bytes like Redis returns them.
            self.keys = {b"deployment:fast--0:cooldown", b"fast--0:fails", b"fast--0:gpt-4o-mini:rpm:12-30",
                         b"smart--0:successes", b"claude--0:fails", b"fast--10:fails", b"superfast--0:fails",
                         b"deployment_spend:fast--0:1d", b"deployment_budget_start_time:fast--0"}
            self.deleted = []

        def scan_iter(self, match, count):
            assert match.startswith("*") and match.endswith("*")
            return [k for k in sorted(self.keys) if match.strip("*").encode() in k]

        def delete(self, key):
            self.deleted.append(key)
            return 1

        def close(self):
            made["closed"] = True

    monkeypatch.setitem(sys.modules, "redis", None)  # rotate.py must not import LiteLLM's venv's redis
    monkeypatch.setattr(R, "Redis", FakeRedis)
    r = R.purge_redis(4002, ["fast--0", "smart--0"])
    assert r == 4
    assert made["host"] == "10.0.0.5" and made["port"] == 6380 and made["db"] == 1
    assert made["password"] == "secret-of-redis_password@4002"


# --- two instances live at once (the default layout: blue 4001+4002, green 4003+4004) ------------------------

BLUE, GREEN = (4001, 4002), (4003, 4004)


@pytest.fixture
def gw4(tmp_path, monkeypatch):
    return FakeHost(tmp_path, monkeypatch, live=BLUE, ports=BLUE + GREEN)


def test_upstream_text_for_a_set_is_what_the_deploy_renders(gw4):
    for ports in (GREEN, BLUE, (4001,), (4001, 4002, 4003)):
        assert R.upstream_text(upstream_text(BLUE), ports) == upstream_text(ports)
    assert R.upstream_ports() == list(BLUE)


def test_rotate_a_set_of_two(gw4, capsys):
    _ready(gw4)
    assert R.rotate(args()) == 0
    assert gw4.upstream.read_text() == upstream_text(GREEN)  # a re-deploy renders the same: zero changes
    assert gw4.running == set(GREEN)
    assert gw4.live()["ports"] == list(GREEN) and "port" not in gw4.live()
    assert gw4.kinds() == ["stop", "stop", "start", "start", "ready", "ready", "unit_secret", "canary", "canary",
                           "nginx -t", "reload", "purge", "canary-nginx", "sleep", "stop", "stop", "enable", "enable",
                           "disable", "disable"]
    # Both new instances start side by side, before either is waited for.
    assert gw4.of("start") == [("start", 4003), ("start", 4004)]
    assert gw4.of("ready") == [("ready", 4003), ("ready", 4004)]
    # Each new instance proves the key on its own, while nginx still serves the whole old set.
    assert [(e[1], e[4], e[5]) for e in gw4.of("canary")] == [
        ("http://127.0.0.1:4003", "NEW-cred", BLUE), ("http://127.0.0.1:4004", "NEW-cred", BLUE)]
    assert gw4.of("reload") == [("reload", GREEN)]
    assert gw4.of("stop")[2:] == [("stop", 4001), ("stop", 4002)]  # the old set only after the switch
    assert gw4.of("enable") == [("enable", "litellm@4003.service"), ("enable", "litellm@4004.service")]
    assert gw4.of("disable") == [("disable", "litellm@4001.service"), ("disable", "litellm@4002.service")]
    assert "litellm@4001,4002 -> litellm@4003,4004" in capsys.readouterr().out
    # And back: green -> blue.
    gw4.stage("openai_key", "NEWER-cred", "newerfp")
    assert R.rotate(args()) == 0
    assert gw4.upstream.read_text() == upstream_text(BLUE) and gw4.running == set(BLUE)
    assert gw4.live()["ports"] == list(BLUE) and gw4.live()["secrets"]["openai_key"]["version"] == 3


def test_one_instance_of_the_new_set_failing_its_canary_rolls_the_whole_set_back(gw4, monkeypatch):
    _ready(gw4)
    real = gw4.canary

    def canary(base_url, *a, **kw):
        real(base_url, *a, **kw)
        if base_url.endswith(":4004"):
            raise RuntimeError("fast--0: HTTP 401")

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args()) == 1
    assert gw4.upstream.read_text() == upstream_text(BLUE)
    assert gw4.running == set(BLUE)
    assert gw4.of("reload") == []  # nginx never left the old set
    assert gw4.cred_text("openai_key") == "OLD-cred" and gw4.journal() is None


def test_a_set_of_two_becomes_ready_within_one_timeout(gw4, monkeypatch):
    _ready(gw4)
    given = []
    monkeypatch.setattr(R, "wait_ready", lambda port, timeout: given.append(timeout))
    assert R.rotate(args(ready_timeout=30.0)) == 0
    assert len(given) == 2 and given[0] <= 30.0 and given[1] <= given[0]


def _cut_off_after(gw, monkeypatch, step):
    """A rotation of the staged key whose helper dies (SIGKILL, here SystemExit) right after `step`."""
    _ready(gw)
    monkeypatch.setattr(R.os, "kill", lambda pid, sig: (_ for _ in ()).throw(SystemExit(f"killed after {step}")))
    with pytest.raises(SystemExit):
        R.rotate(args(fail_after=step))


@pytest.mark.parametrize("step", ["swap-creds", "start", "ready", "canary"])
def test_a_set_cut_off_before_the_switch_is_rolled_back_by_the_next_run(gw4, monkeypatch, step):
    _cut_off_after(gw4, monkeypatch, step)
    assert gw4.upstream.read_text() == upstream_text(BLUE)  # nginx never left the old set
    assert gw4.journal()["old_ports"] == list(BLUE) and gw4.journal()["new_ports"] == list(GREEN)
    gw4.events.clear()
    assert R.rotate(args()) == 0  # recovery rolls back; then the staged key is gone, so nothing to rotate
    assert gw4.journal() is None
    assert gw4.upstream.read_text() == upstream_text(BLUE) and set(BLUE) <= gw4.running
    assert gw4.of("stop") == [("stop", 4003), ("stop", 4004)] and gw4.of("reload") == []
    assert gw4.cred_text("openai_key") == "OLD-cred"


@pytest.mark.parametrize("step", ["switch", "purge", "canary-nginx", "drain"])
def test_a_set_cut_off_after_the_switch_is_finished_forward_by_the_next_run(gw4, monkeypatch, step):
    _cut_off_after(gw4, monkeypatch, step)
    assert gw4.upstream.read_text() == upstream_text(GREEN)
    assert R.rotate(args()) == 0
    assert gw4.journal() is None and gw4.running == set(GREEN)
    assert gw4.live()["ports"] == list(GREEN) and gw4.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw4.upstream.read_text() == upstream_text(GREEN)


def test_a_journal_of_an_older_release_is_recovered(gw4):
    # Written by a release whose sets held one port each: old_port/new_port.
    gw4.put("openai_key", "NEW-cred", "newfp")
    gw4.put("openai_key", "OLD-cred", "oldfp", ".prev")
    gw4.upstream.write_text(upstream_text((4001,)))
    journal = {"old_port": 4001, "new_port": 4003, "secrets": ["openai_key"], "started": 1.0, "swapped": True}
    gw4.write_journal(**journal)
    R.recover(journal)
    assert gw4.journal() is None and gw4.cred_text("openai_key") == "OLD-cred"
    assert ("stop", 4003) in gw4.events


def test_old_deployment_ids_after_an_interrupted_swap_are_the_journals_not_the_new_keys():
    from roles.rotation import old_deployment_ids

    new = ["fast--0--newnewne", "smart--0--newnewne"]
    # A plain rotation: the fingerprint files name the live (old) key.
    assert old_deployment_ids(["fast--0--oldoldol"], new, None) == ["fast--0--oldoldol"]
    # Cut off after the swap: the files already name the new key; the journal recorded the old ids.
    journal = json.dumps({"purge": ["fast--0--oldoldol", "smart--0--oldoldol"]})
    assert old_deployment_ids(new, new, journal) == ["fast--0--oldoldol", "smart--0--oldoldol"]
    # A journal that cannot be read (or holds no list of names) adds nothing and never fails the run.
    for bad in ("{", "[]", json.dumps({"purge": "fast--0"}), json.dumps({"purge": [1, None]})):
        assert old_deployment_ids(new, new, bad) == []
