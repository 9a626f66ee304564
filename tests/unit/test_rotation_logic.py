"""Unit tests for key rotation: roles.rotation.deployment_ids and the on-host transaction of
gatekit/onhost/rotate.py, run on a temporary directory with systemd, nginx, LiteLLM and Redis faked.

The fake host is the default layout: two sets of two instances (blue 4001+4002 live, green 4003+4004), behind
the upstream file gatekit/onhost/upstream.py renders (what the nginx role deploys). rotate.py's arguments are
parsed by its own parser, as on the host."""

from __future__ import annotations

import copy
import dataclasses
import http.client
import hashlib
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import urllib.error
from itertools import chain, combinations
from pathlib import Path

import pytest
import yaml

import gatekit.onhost.instance as I
import gatekit.onhost.rotate as R
from gatekit.defaults import DEFAULTS
from gatekit.onhost import upstream
from gatekit.onhost.layout import Layout
from gatekit.render import litellm_config
from gatekit.spec import parse_spec
from roles.rotation import deployment_ids

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example.gateway.yaml"
BLUE, GREEN = (4001, 4002), (4003, 4004)

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
    """The ports nginx's upstream file sends traffic to, as a tuple."""
    return tuple(R.upstream_ports())


def conf(ports) -> str:
    """The upstream file the deploy renders for the fake host (default bind and keepalive), written out."""
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in ports)
    return ("# Rendered by gatekit: the LiteLLM instances nginx sends traffic to (every instance of the live set).\n"
            "# A request that cannot connect to one (it died, or is restarting) goes to the next: proxy_next_upstream.\n"
            "upstream litellm {\n"
            "    # Streams hold a connection for minutes: send each request to the instance with the fewest.\n"
            "    least_conn;\n"
            f"{servers}"
            "    keepalive 32;\n"
            "    # Below LiteLLM's own idle timeout: nginx closes an idle connection before LiteLLM can.\n"
            "    keepalive_timeout 60s;\n"
            "}\n")


class FakeHost:
    """Files in tmp_path; systemd, nginx, LiteLLM and Redis as recorded fakes."""

    def __init__(self, tmp_path: Path, monkeypatch, live=BLUE, ports=BLUE + GREEN):
        self.root = tmp_path
        self.creds = tmp_path / "creds"
        self.state = tmp_path / "state"
        self.nginx = tmp_path / "nginx" / "gatekit"
        for d in (self.creds, self.nginx):
            d.mkdir(parents=True)
        # Every path the program touches comes from its layout: here all of them under tmp_path.
        layout = Layout(gatekit_etc=str(tmp_path), gatekit_state_dir=str(self.state), nginx_dir=str(tmp_path / "nginx"),
                        litellm_config_dir=str(tmp_path), litellm_home=str(tmp_path / "home"), litellm_ports=ports,
                        systemd_dir=str(tmp_path / "systemd"))
        monkeypatch.setattr(R, "LAYOUT", layout)
        self.upstream = self.nginx / "upstream.conf"
        self.upstream.write_text(upstream.for_layout(layout, live))  # as the nginx role deploys it
        self.running = set(live)
        self.events: list[tuple] = []
        self.calls: list[tuple] = []
        self.nginx_ok = True
        self.refuse: dict[tuple[str, str], str] = {}  # (systemctl verb, unit) -> its stderr: exit 1
        self.fail: dict[str, Exception] = {}  # "ready" | "canary" | "canary-nginx" | "purge" -> raised
        monkeypatch.setattr(R, "run", self.run)
        monkeypatch.setattr(R, "wait_ready", self.wait_ready)
        monkeypatch.setattr(R, "canary", self.canary)
        monkeypatch.setattr(R, "canary_models", self.canary_models)
        monkeypatch.setattr(R, "purge_redis", self.purge_redis)
        monkeypatch.setattr(R, "unit_secret", self.unit_secret)
        monkeypatch.setattr(R, "nginx_workers", self.nginx_workers)
        monkeypatch.setattr(R, "invocations", self.invocations)
        # A clock that moves only when the program sleeps: its waits end at once in fake time.
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
        elif argv[0] == "systemctl":
            verb, units = argv[1], [a for a in argv[2:] if not a.startswith("--")]
            for unit in units or ([None] if verb == "daemon-reload" else []):
                if (verb, unit) in self.refuse:  # systemctl goes on with the other units, then exits 1
                    rc, err = 1, self.refuse[(verb, unit)]
                else:
                    self.unit_op(verb, unit)
        if check and rc:
            raise RuntimeError(f"{' '.join(argv)}: {err}")
        return subprocess.CompletedProcess(argv, rc, "", err)

    def unit_op(self, verb, unit):
        port = int(m.group(1)) if unit and (m := re.fullmatch(r"litellm@(\d+)\.service", unit)) else None
        if verb == "reload" and unit == "nginx.service":
            self.events.append(("reload", up()))
            self.generation += 1
        elif verb == "stop" and port:
            self.events.append(("stop", port))
            self.running.discard(port)
        elif verb in ("start", "restart") and port:
            self.events.append(("start", port) if verb == "start" else ("restart", port, self.cred_text("openai_key")))
            self.running.add(port)
            self.starts[port] = self.starts.get(port, 0) + 1
        elif verb in ("enable", "disable"):
            self.events.append((verb, unit))
        elif verb == "daemon-reload":
            unit_file = Path(R.LAYOUT.unit_file)
            self.events.append(("daemon-reload", unit_file.read_text() if unit_file.exists() else None))

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

    def canary_models(self, base_url, master_key, names):
        self.events.append(("canary-models", base_url, list(names), up()))
        if "canary-models" in self.fail:
            raise self.fail["canary-models"]

    def purge_redis(self, port, ids, redis_cred, known_ids=()):
        self.events.append(("purge", port, list(ids), redis_cred, list(known_ids)))
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


def args(secrets="openai_key", deployments="fast--0,smart--0", purge="fast--0--oldoldol,smart--0--oldoldol",
         ready_timeout=5.0, settle=0.25, fail_after="", fail_at="", master_cred="litellm_master_key",
         redis_cred="redis_password", files="", models="", digests="", change=""):
    """rotate.py's arguments through its own parser, as the helper unit gets them."""
    argv = ["--secrets", secrets, "--deployments", deployments, "--purge-deployments", purge,
            "--master-cred", master_cred, "--redis-cred", redis_cred, "--ready-timeout", str(ready_timeout),
            "--settle", str(settle)]
    for flag, value in (("--files", files), ("--models", models), ("--digests", digests), ("--change", change)):
        argv += [flag, value] if value else []
    argv += ["--fail-after", fail_after] if fail_after else []
    argv += ["--fail-at", fail_at] if fail_at else []
    return R.parser().parse_args(argv)


def test_the_fake_hosts_upstream_is_the_deployed_file(gw):
    assert gw.upstream.read_text() == conf(BLUE)
    assert up() == BLUE


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
    files = [str(config)]  # --files, as roles/rotation.py passes the config with every rotation
    config.write_text("ids: old\n")
    config.chmod(0o640)
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    gw.put("openai_key", "OLD-cred", "oldfp")
    gw.stage("openai_key", "NEW-cred", "newfp")
    R.swap_creds(["openai_key"], files)
    assert config.read_text() == "ids: new\n" and (tmp_path / "config.yaml.prev").read_text() == "ids: old\n"
    # The previous file is moved, not copied: its mode (and owner) are exactly what the deploy set.
    assert stat.S_IMODE(os.stat(tmp_path / "config.yaml.prev").st_mode) == 0o640
    R.restore_creds(["openai_key"], files)
    assert config.read_text() == "ids: old\n" and gw.cred_text("openai_key") == "OLD-cred"
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    R.discard_staged(["openai_key"], files)
    assert not (tmp_path / "config.yaml.next").exists()
    gw.stage("openai_key", "NEW-cred", "newfp")
    (tmp_path / "config.yaml.next").write_text("ids: new\n")
    R.swap_creds(["openai_key"], files)
    R.cleanup_prev(["openai_key"], files)
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
    R.record(list(GREEN), ["openai_key"], {})
    first = gw.live()
    assert first["ports"] == [4003, 4004]
    assert first["secrets"]["openai_key"]["fingerprint"] == "fp-one"  # NAME.fp, without its newline
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", first["rotated_at"])
    assert first["secrets"]["openai_key"]["rotated_at"] == first["rotated_at"]

    gw.put("openai_key", "C2", "fp-two")
    R.record(list(BLUE), ["openai_key"], {})
    gw.put("anthropic_key", "A1", "ant-one")
    gw.put("openai_key", "C3", "fp-three")
    R.record(list(GREEN), ["openai_key", "anthropic_key"], {})
    third = gw.live()
    # Each rotation is one version more; the deployed key counts as version 1, so the first rotation is 2.
    assert first["secrets"]["openai_key"]["version"] == 2
    assert third["secrets"]["openai_key"]["version"] == 4
    assert third["ports"] == [4003, 4004]
    assert third["secrets"]["openai_key"]["fingerprint"] == "fp-three"
    assert third["secrets"]["anthropic_key"] == {"fingerprint": "ant-one", "version": 2,
                                                 "rotated_at": third["rotated_at"]}


def test_record_increments_one_at_a_time(gw):
    gw.state.mkdir()
    gw.put("openai_key", "C", "fp")
    seen = []
    for ports in (GREEN, BLUE, GREEN):
        R.record(list(ports), ["openai_key"], {})
        seen.append((tuple(gw.live()["ports"]), gw.live()["secrets"]["openai_key"]["version"]))
    assert seen == [(GREEN, 2), (BLUE, 3), (GREEN, 4)]


def test_record_keeps_secrets_it_did_not_rotate(gw):
    gw.state.mkdir()
    (gw.state / "live.json").write_text(json.dumps(
        {"ports": [4001, 4002], "secrets": {"anthropic_key": {"fingerprint": "a", "version": 5, "rotated_at": "x"}}}))
    gw.put("openai_key", "C", "fp")
    R.record(list(GREEN), ["openai_key"], {})
    live = gw.live()
    assert live["secrets"]["anthropic_key"] == {"fingerprint": "a", "version": 5, "rotated_at": "x"}
    assert live["secrets"]["openai_key"]["version"] == 2 and live["ports"] == [4003, 4004]


def _venv_build(gw, stamp: str, version: str) -> str:
    d = gw.root / "home" / "venvs" / stamp
    (d / "lib" / "python3.11" / "site-packages" / f"litellm-{version}.dist-info").mkdir(parents=True)
    return str(d)


def test_record_points_venv_at_the_build_the_live_launcher_names_and_records_its_version(gw):
    """An upgrade: the launcher swapped in names the new build; once the new set is live, `venv` moves to it and
    live.json says which LiteLLM serves. Before record, `venv` still names the old build (the old set's)."""
    gw.state.mkdir()
    old, new = _venv_build(gw, "a" * 16, "1.106.2"), _venv_build(gw, "b" * 16, "1.108.7")
    os.symlink(old, R.LAYOUT.venv)
    Path(R.LAYOUT.bin_dir).mkdir(parents=True)
    Path(R.LAYOUT.launcher).write_text(f"#!{new}/bin/python3\nimport os\n")
    R.record(list(GREEN), [], {"change": "deploy"})
    assert os.readlink(R.LAYOUT.venv) == new
    assert (gw.live()["venv"], gw.live()["litellm_version"]) == (new, "1.108.7")
    Path(R.LAYOUT.launcher).write_text(f"#!{old}/bin/python3\nimport os\n")  # and back: the kept build
    R.record(list(BLUE), [], {"change": "deploy"})
    assert os.readlink(R.LAYOUT.venv) == old and gw.live()["litellm_version"] == "1.106.2"


def test_record_moves_a_plain_venv_directory_of_an_older_deploy_aside(gw):
    gw.state.mkdir()
    new = _venv_build(gw, "c" * 16, "1.106.2")
    (Path(R.LAYOUT.venv) / "bin").mkdir(parents=True)
    Path(R.LAYOUT.bin_dir).mkdir(parents=True)
    Path(R.LAYOUT.launcher).write_text(f"#!{new}/bin/python3\n")
    R.record(list(GREEN), [], {})
    assert os.readlink(R.LAYOUT.venv) == new and (Path(R.LAYOUT.venv + ".old") / "bin").is_dir()


# --- nginx upstream -------------------------------------------------------------------------------------


def test_upstream_ports_are_read_from_the_server_lines(gw):
    assert up() == BLUE
    gw.upstream.write_text("upstream litellm {\n    server 127.0.0.1:4003 max_fails=0;\n    server 127.0.0.1:4004;\n}\n")
    assert up() == GREEN
    gw.upstream.write_text("server 127.0.0.1:4002 max_fails=0;")
    assert up() == (4002,)


def test_upstream_ports_without_server_line_raises(gw):
    gw.upstream.write_text("upstream litellm {\n    keepalive 32;\n}\n")
    with pytest.raises(RuntimeError, match="no upstream server line"):
        up()


def test_set_upstream_writes_the_deployed_file_for_the_set_and_reloads(gw):
    R.set_upstream(list(GREEN))
    assert gw.upstream.read_text() == conf(GREEN)  # a re-deploy renders the same: zero changes
    assert gw.events == [("nginx -t", GREEN), ("reload", GREEN)]
    assert ("systemctl", "reload", "nginx.service") in gw.calls
    assert sorted(p.name for p in gw.nginx.iterdir()) == ["upstream.conf"]  # no temporary file left


def test_set_upstream_writes_the_hosts_bind_and_keepalive_from_its_layout(gw, monkeypatch):
    monkeypatch.setattr(R, "LAYOUT", dataclasses.replace(R.LAYOUT, litellm_bind="127.0.0.2", nginx_upstream_keepalive=48,
                                                          nginx_upstream_keepalive_timeout=50))
    R.set_upstream(list(GREEN))
    text = gw.upstream.read_text()
    assert "    server 127.0.0.2:4003 max_fails=0;\n    server 127.0.0.2:4004 max_fails=0;\n" in text
    assert "    keepalive 48;\n" in text and "    keepalive_timeout 50s;\n" in text


def test_set_upstream_to_the_same_set_does_nothing(gw):
    R.set_upstream(list(BLUE))
    assert gw.upstream.read_text() == conf(BLUE)
    assert gw.calls == [] and gw.events == []


def test_set_upstream_refused_by_nginx_restores_the_file(gw):
    gw.nginx_ok = False
    original = gw.upstream.read_text()
    with pytest.raises(RuntimeError, match="nginx -t refused the new upstream"):
        R.set_upstream(list(GREEN))
    assert gw.upstream.read_text() == original
    assert gw.of("reload") == []  # never reloaded with a refused configuration
    assert gw.of("nginx -t") == [("nginx -t", GREEN)]  # nginx checked the candidate, not the old file
    assert sorted(p.name for p in gw.nginx.iterdir()) == ["upstream.conf"]


def test_set_upstream_fails_when_systemctl_refuses_the_reload(gw):
    gw.refuse[("reload", "nginx.service")] = "Job for nginx.service failed because the control process exited."
    with pytest.raises(R.UnitError, match=r"systemctl reload nginx.service failed \(exit 1\): Job for nginx.service failed"):
        R.set_upstream(list(GREEN))


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
    R.set_upstream(list(GREEN))
    assert len(polls) == 4
    assert gw.kinds() == ["nginx -t", "reload", "sleep", "sleep", "sleep"]


def test_set_upstream_raises_when_the_reload_never_takes_effect(gw, monkeypatch):
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(R.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(R, "nginx_workers", lambda: {11: "nginx: worker process"})  # the master kept the old ones
    with pytest.raises(RuntimeError, match=r"reload did not take effect within 30 s: nginx workers 11 from before"):
        R.set_upstream(list(GREEN))


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


def assert_rolled_back(gw, live_before=None):
    assert up() == BLUE
    assert gw.upstream.read_text() == conf(BLUE)
    assert gw.running == set(BLUE)
    assert ("stop", 4003) in gw.events and ("stop", 4004) in gw.events
    assert ("stop", 4001) not in gw.events and ("stop", 4002) not in gw.events
    assert gw.cred_text("openai_key") == "OLD-cred" and gw.fp_text("openai_key") == "oldfp"
    assert gw.cred_text("anthropic_key") == "ANT-cred"
    assert gw.files() == ["anthropic_key.cred", "anthropic_key.fp", "openai_key.cred", "openai_key.fp"]
    assert gw.journal() is None
    assert gw.live() == live_before
    assert gw.of("enable") == [] and gw.of("disable") == []


def test_rotate_success(gw, capsys):
    _ready(gw)
    assert R.rotate(args()) == 0

    assert up() == GREEN
    assert gw.upstream.read_text() == conf(GREEN)  # a re-deploy renders the same: zero changes
    assert gw.running == set(GREEN)
    assert gw.journal() is None
    live = gw.live()
    assert live["ports"] == [4003, 4004]
    assert live["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert set(live["secrets"]) == {"openai_key"}
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.fp_text("openai_key") == "newfp"
    assert gw.cred_text("openai_key", ".retired") == "OLD-cred"
    assert gw.files() == sorted(["anthropic_key.cred", "anthropic_key.fp", "openai_key.cred", "openai_key.fp",
                                 "openai_key.cred.retired", "openai_key.fp.retired"])

    # The order of the steps, and what each saw.
    assert gw.kinds() == ["stop", "stop", "start", "start", "ready", "ready", "unit_secret", "canary", "canary",
                          "nginx -t", "reload", "purge", "canary-nginx", "sleep", "stop", "stop", "enable", "enable",
                          "disable", "disable"]
    # Leftovers of NEW stopped first, OLD only after the switch.
    assert gw.of("stop") == [("stop", 4003), ("stop", 4004), ("stop", 4001), ("stop", 4002)]
    # Both new instances start side by side, before either is waited for.
    assert gw.of("start") == [("start", 4003), ("start", 4004)]
    assert gw.of("ready") == [("ready", 4003), ("ready", 4004)]
    assert gw.of("unit_secret") == [("unit_secret", 4003, "litellm_master_key")]
    # Each new instance proves the key on its own, new credential in place, while nginx still serves the old set.
    assert gw.of("canary") == [
        ("canary", "http://127.0.0.1:4003", "sk-master-fake", ["fast--0", "smart--0"], "NEW-cred", BLUE),
        ("canary", "http://127.0.0.1:4004", "sk-master-fake", ["fast--0", "smart--0"], "NEW-cred", BLUE)]
    assert gw.of("reload") == [("reload", GREEN)]
    # The old key's ids purged, the new ones known (a longer id keeps its own keys).
    assert gw.of("purge") == [("purge", 4003, ["fast--0--oldoldol", "smart--0--oldoldol"], "redis_password",
                               ["fast--0", "smart--0"])]
    # Canary through nginx, after the switch.
    assert gw.of("canary-nginx") == [("canary-nginx", "https://127.0.0.1:443", "sk-master-fake",
                                      ["fast--0", "smart--0"], "NEW-cred", GREEN)]
    assert gw.of("sleep") == [("sleep", 0.25)]
    assert gw.of("enable") == [("enable", "litellm@4003.service"), ("enable", "litellm@4004.service")]
    assert gw.of("disable") == [("disable", "litellm@4001.service"), ("disable", "litellm@4002.service")]
    out = capsys.readouterr().out
    assert "litellm@4001,4002 -> litellm@4003,4004" in out and "3 Redis keys purged" in out


def test_rotate_uses_the_credential_names_and_times_it_is_given(gw):
    _ready(gw)
    assert R.rotate(args(master_cred="mk_prod", redis_cred="redis_pw_prod", settle=2.5, ready_timeout=30.0)) == 0
    assert gw.of("unit_secret") == [("unit_secret", 4003, "mk_prod")]
    assert gw.of("purge")[0][3] == "redis_pw_prod"
    assert gw.of("sleep") == [("sleep", 2.5)]


def test_rotate_journal_during_the_run(gw, monkeypatch):
    _ready(gw)
    seen = []
    real_canary = gw.canary

    def canary(*a, **kw):
        seen.append(gw.journal())
        return real_canary(*a, **kw)

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args(master_cred="mk", redis_cred="rp", settle=0.5, ready_timeout=7.0)) == 0
    assert seen[0]["old_ports"] == [4001, 4002] and seen[0]["new_ports"] == [4003, 4004]
    assert seen[0]["secrets"] == ["openai_key"] and seen[0]["swapped"] is True
    # Everything a recovery needs, as this run was given it.
    assert (seen[0]["master_cred"], seen[0]["redis_cred"], seen[0]["settle"], seen[0]["ready_timeout"]) == ("mk", "rp", 0.5, 7.0)
    assert seen[0]["old_invocations"] == {"4001": "run-4001-1", "4002": "run-4002-1"}
    assert gw.journal() is None


def test_rotate_twice_alternates_sets_and_counts_versions(gw):
    _ready(gw)
    assert R.rotate(args()) == 0
    gw.stage("openai_key", "NEWER-cred", "newerfp")
    gw.events.clear()
    assert R.rotate(args()) == 0
    assert up() == BLUE and gw.upstream.read_text() == conf(BLUE)
    assert gw.running == set(BLUE)
    assert gw.of("stop") == [("stop", 4001), ("stop", 4002), ("stop", 4003), ("stop", 4004)]
    live = gw.live()
    assert live["ports"] == [4001, 4002]
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


def test_rotate_from_an_upstream_outside_the_sets_goes_to_the_first_set(gw):
    gw.upstream.write_text(conf([5000]))
    gw.running = {5000}
    _ready(gw)
    assert R.rotate(args()) == 0
    assert up() == BLUE
    assert gw.live()["ports"] == [4001, 4002]
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


def test_one_instance_of_the_new_set_failing_its_canary_rolls_the_whole_set_back(gw, monkeypatch):
    _ready(gw)
    real = gw.canary

    def canary(base_url, *a, **kw):
        real(base_url, *a, **kw)
        if base_url.endswith(":4004"):
            raise RuntimeError("fast--0: HTTP 401")

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args()) == 1
    assert_rolled_back(gw)
    assert gw.of("reload") == []  # nginx never left the old set


def test_a_set_becomes_ready_within_one_timeout(gw, monkeypatch):
    _ready(gw)
    given = []
    monkeypatch.setattr(R, "wait_ready", lambda port, timeout: given.append(timeout))
    assert R.rotate(args(ready_timeout=30.0)) == 0
    assert len(given) == 2 and given[0] <= 30.0 and given[1] <= given[0]


def test_rollback_restarts_an_old_instance_that_systemd_restarted_from_the_refused_key(gw, monkeypatch, capsys):
    """Old set 4001+4002, new 4003+4004: 4001 dies after the swap and systemd starts it again, from the new
    credential. The canary refuses the key: the rollback restores the old credential, then restarts 4001
    (only 4001) and waits for it, so no instance keeps serving the refused key."""
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
    assert gw.running == set(BLUE)
    assert "litellm@4001 started during the rotation, from the refused key: restarting it" in capsys.readouterr().err


def test_rollback_restarts_nothing_when_no_old_instance_restarted(gw):
    _ready(gw)
    gw.fail["canary"] = RuntimeError("fast--0: HTTP 401: invalid api key")
    assert R.rotate(args()) == 1
    assert gw.of("restart") == []


def test_rotate_failure_of_swap_creds_itself_discards_the_staged_files(gw, monkeypatch, capsys):
    _ready(gw)
    gw.stage("anthropic_key", "ANT-NEW", "antnewfp")

    def swap_fails(names, files=()):
        assert sorted(names) == ["anthropic_key", "openai_key"]
        raise OSError("No space left on device")

    monkeypatch.setattr(R, "swap_creds", swap_fails)
    assert R.rotate(args(secrets="openai_key,anthropic_key")) == 1
    assert_rolled_back(gw)  # also: no .next file of either secret is left
    assert gw.of("start") == []
    assert "step swap-creds failed: No space left on device" in capsys.readouterr().err


def test_rotate_failure_in_ready_rolls_back(gw, capsys):
    _ready(gw)
    gw.fail["ready"] = RuntimeError("litellm@4003 not ready after 5s")
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
    assert gw.of("reload") == [("reload", GREEN), ("reload", BLUE)]
    second_reload = gw.kinds().index("reload", gw.kinds().index("reload") + 1)
    assert gw.events.index(("stop", 4003), second_reload) > second_reload  # NEW stops only once traffic is back
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
    before = {"ports": [4001, 4002], "rotated_at": "2020-01-01T00:00:00Z",
              "secrets": {"openai_key": {"fingerprint": "oldfp", "version": 2, "rotated_at": "2020-01-01T00:00:00Z"}}}
    (gw.state / "live.json").write_text(json.dumps(before))
    _ready(gw)
    gw.fail["canary-nginx"] = RuntimeError("boom")
    assert R.rotate(args()) == 1
    assert_rolled_back(gw, live_before=before)


ROLLED_BACK_STEPS = R.FAULT_STEPS[:R.FAULT_STEPS.index("drain")]


@pytest.mark.parametrize("step", ROLLED_BACK_STEPS)
def test_rotate_fail_at_each_step_up_to_canary_nginx_rolls_back(gw, capsys, step):
    _ready(gw)
    assert R.rotate(args(fail_at=step)) == 1
    assert_rolled_back(gw)
    moved = ROLLED_BACK_STEPS.index(step) >= ROLLED_BACK_STEPS.index("switch")
    assert gw.of("reload") == ([("reload", GREEN), ("reload", BLUE)] if moved else [])
    err = capsys.readouterr().err
    assert f"step {step} failed: fault injection" in err


def test_rotate_fail_at_drain_is_finished_forward_by_the_next_run(gw, capsys):
    # Past the switch (and canary-nginx) the rotation only goes forward: a failure in drain is not rolled back,
    # the journal stays, and the next run completes the rotation.
    _ready(gw)
    assert R.rotate(args(fail_at="drain")) == 1
    assert "step drain failed: fault injection" in capsys.readouterr().err
    assert up() == GREEN
    assert gw.running == set(GREEN)
    assert gw.journal()["swapped"] is True and gw.journal()["new_ports"] == [4003, 4004]
    assert gw.live() is None
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.cred_text("openai_key", ".prev") == "OLD-cred"

    gw.events.clear()
    assert R.rotate(args()) == 0  # nothing staged: only the recovery runs
    assert gw.journal() is None
    assert gw.live()["ports"] == [4003, 4004] and gw.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw.cred_text("openai_key") == "NEW-cred" and gw.cred_text("openai_key", ".retired") == "OLD-cred"
    assert up() == GREEN
    assert gw.of("reload") == []


@pytest.mark.parametrize("step", ["record", "canary_nginx"])
def test_a_fault_step_without_an_injection_point_is_refused_not_ignored(gw, step):
    # rotate() calls fault() after every step but `record`; a misspelt step would never fire either.
    with pytest.raises(SystemExit):
        args(fail_at=step)
    with pytest.raises(SystemExit):
        args(fail_after=step)


def _cut_off_after(gw, monkeypatch, step):
    """A rotation of the staged key whose helper dies (SIGKILL, here SystemExit) right after `step`."""
    _ready(gw)
    monkeypatch.setattr(R.os, "kill", lambda pid, sig: (_ for _ in ()).throw(SystemExit(f"killed after {step}")))
    with pytest.raises(SystemExit):
        R.rotate(args(fail_after=step))


@pytest.mark.parametrize("step", R.FAULT_STEPS[:R.FAULT_STEPS.index("switch")])
def test_a_rotation_cut_off_before_the_switch_is_rolled_back_by_the_next_run(gw, monkeypatch, step):
    _cut_off_after(gw, monkeypatch, step)
    assert gw.upstream.read_text() == conf(BLUE)  # nginx never left the old set
    assert gw.journal()["old_ports"] == list(BLUE) and gw.journal()["new_ports"] == list(GREEN)
    gw.events.clear()
    assert R.rotate(args()) == 0  # recovery rolls back; then the staged key is gone, so nothing to rotate
    assert gw.journal() is None
    assert gw.upstream.read_text() == conf(BLUE) and set(BLUE) <= gw.running
    assert gw.of("stop") == [("stop", 4003), ("stop", 4004)] and gw.of("reload") == []
    assert gw.cred_text("openai_key") == "OLD-cred"


@pytest.mark.parametrize("step", R.FAULT_STEPS[R.FAULT_STEPS.index("switch"):])
def test_a_rotation_cut_off_after_the_switch_is_finished_forward_by_the_next_run(gw, monkeypatch, step):
    _cut_off_after(gw, monkeypatch, step)
    assert gw.upstream.read_text() == conf(GREEN)
    assert R.rotate(args()) == 0
    assert gw.journal() is None and gw.running == set(GREEN)
    assert gw.live()["ports"] == [4003, 4004] and gw.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw.upstream.read_text() == conf(GREEN)


@pytest.mark.parametrize("step", R.FAULT_STEPS)
def test_a_deploy_switch_cut_off_at_any_step_leaves_one_config_live_and_the_next_run_settles_it(gw, monkeypatch, step):
    """A deploy's switch (a changed config.yaml, no key: roles/litellm.py) whose helper dies right after `step`:
    before nginx switched, the next run rolls back (the old config and set serve, nothing staged is left); from the
    switch on, it finishes forward (the new config is live and recorded)."""
    config = Path(R.LAYOUT.config)
    config.write_text("ids: old\n")
    Path(f"{config}.next").write_text("ids: new\n")
    gw.put("openai_key", "OLD-cred", "oldfp")
    deploy = dict(secrets="-", purge="", files=str(config), change="deploy")
    with monkeypatch.context() as m, pytest.raises(SystemExit):
        m.setattr(R.os, "kill", lambda pid, sig: (_ for _ in ()).throw(SystemExit(f"killed after {step}")))
        R.rotate(args(**deploy, fail_after=step))
    switched = R.FAULT_STEPS.index(step) >= R.FAULT_STEPS.index("switch")
    assert gw.upstream.read_text() == conf(GREEN if switched else BLUE)
    assert gw.journal()["files"] == [str(config)]
    assert R.rotate(args(secrets="-", purge="", change="deploy")) == 0  # the next run: nothing staged this time
    assert gw.journal() is None
    want, ports = ("ids: new\n", GREEN) if switched else ("ids: old\n", BLUE)
    assert config.read_text() == want and gw.upstream.read_text() == conf(ports) and gw.running == set(ports)
    assert not Path(f"{config}.next").exists() and not Path(f"{config}.prev").exists()
    assert gw.cred_text("openai_key") == "OLD-cred"
    if switched:
        assert gw.live()["ports"] == list(GREEN) and gw.live()["config_sha1"] == R.file_sha1(str(config))


# --- recover() ------------------------------------------------------------------------------------------


def _interrupted(gw, upstream_on, swapped=True):
    """A rotation blue -> green cut off: creds swapped (or not), green started, nginx on `upstream_on`."""
    gw.upstream.write_text(conf(upstream_on))
    gw.running = set(BLUE) | (set(GREEN) if upstream_on == GREEN or swapped else set())
    if swapped:
        gw.put("openai_key", "NEW-cred", "newfp")
        gw.put("openai_key", "OLD-cred", "oldfp", ".prev")
    else:
        gw.put("openai_key", "OLD-cred", "oldfp")
        gw.stage("openai_key", "NEW-cred", "newfp")
    journal = {"old_ports": list(BLUE), "new_ports": list(GREEN), "secrets": ["openai_key"], "started": 1.0,
               "swapped": swapped, "deployments": ["fast--0--newfp"], "purge": ["fast--0--oldfp"],
               "master_cred": "mk_prod", "redis_cred": "redis_pw_prod", "settle": 0.5, "ready_timeout": 9.0,
               "old_invocations": {"4001": "run-4001-1", "4002": "run-4002-1"}}
    gw.write_journal(**journal)
    return journal


def test_recover_forward_when_nginx_is_already_on_new(gw):
    journal = _interrupted(gw, upstream_on=GREEN)
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("purge") == [("purge", 4003, ["fast--0--oldfp"], "redis_pw_prod", ["fast--0--newfp"])]
    assert gw.of("unit_secret") == [("unit_secret", 4003, "mk_prod")]
    assert gw.of("sleep") == [("sleep", 0.5)]
    assert gw.of("stop") == [("stop", 4001), ("stop", 4002)]
    assert gw.running == set(GREEN)
    assert gw.of("enable") == [("enable", "litellm@4003.service"), ("enable", "litellm@4004.service")]
    assert gw.of("disable") == [("disable", "litellm@4001.service"), ("disable", "litellm@4002.service")]
    assert gw.live()["ports"] == [4003, 4004]
    assert gw.live()["secrets"]["openai_key"]["fingerprint"] == "newfp"
    assert gw.cred_text("openai_key") == "NEW-cred"
    assert gw.files() == ["openai_key.cred", "openai_key.cred.retired", "openai_key.fp", "openai_key.fp.retired"]
    assert up() == GREEN and gw.of("reload") == []


def test_recover_back_when_nginx_is_still_on_old(gw):
    journal = _interrupted(gw, upstream_on=BLUE, swapped=True)
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("stop") == [("stop", 4003), ("stop", 4004)]
    assert gw.running == set(BLUE)
    assert gw.cred_text("openai_key") == "OLD-cred" and gw.fp_text("openai_key") == "oldfp"
    assert gw.files() == ["openai_key.cred", "openai_key.fp"]
    assert gw.live() is None
    assert up() == BLUE and gw.of("reload") == []
    assert gw.of("enable") == [] and gw.of("disable") == [] and gw.of("restart") == []


def test_recover_back_restarts_the_old_instances_started_after_the_swap(gw, monkeypatch):
    """Cut off after the swap, then 4001 started again (a crash, a reboot) from the new credential. Rolling back
    restores the old one and restarts that instance (only it) from it, waiting as long as the journal says."""
    journal = _interrupted(gw, upstream_on=BLUE, swapped=True)
    gw.crash_and_restart(4001)
    waited = []
    monkeypatch.setattr(R, "wait_ready", lambda port, timeout: waited.append((port, timeout)))
    R.recover(journal)
    assert gw.of("restart") == [("restart", 4001, "OLD-cred")]
    assert waited == [(4001, 9.0)]
    assert gw.journal() is None and gw.cred_text("openai_key") == "OLD-cred"


def test_recover_back_before_the_swap_leaves_creds_alone(gw):
    journal = _interrupted(gw, upstream_on=BLUE, swapped=False)
    before = gw.snapshot()
    R.recover(journal)
    assert gw.journal() is None
    assert gw.of("stop") == [("stop", 4003), ("stop", 4004)]
    assert gw.snapshot() == before  # including the staged .next files


def test_recover_keeps_freshly_staged_credentials(gw):
    journal = _interrupted(gw, upstream_on=BLUE, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")  # the re-run staged before gatekit-rotate ran
    R.recover(journal)
    assert gw.cred_text("openai_key") == "OLD-cred"
    assert gw.cred_text("openai_key", ".next") == "NEWEST-cred" and gw.fp_text("openai_key", ".next") == "newestfp"


def test_recover_forward_keeps_freshly_staged_credentials(gw):
    journal = _interrupted(gw, upstream_on=GREEN, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    R.recover(journal)
    assert gw.cred_text("openai_key") == "NEW-cred"
    assert gw.cred_text("openai_key", ".next") == "NEWEST-cred"


def test_rerun_after_an_interrupted_rotation_rolls_back_then_rotates_the_fresh_key(gw):
    _interrupted(gw, upstream_on=BLUE, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    assert R.rotate(args()) == 0
    assert up() == GREEN
    assert gw.running == set(GREEN)
    assert gw.journal() is None
    assert gw.cred_text("openai_key") == "NEWEST-cred"
    assert gw.cred_text("openai_key", ".retired") == "OLD-cred"  # the key live before the cut-off run
    assert gw.live()["ports"] == [4003, 4004] and gw.live()["secrets"]["openai_key"]["fingerprint"] == "newestfp"
    # The canary tested the freshly staged key.
    assert gw.of("canary")[0][4] == "NEWEST-cred"


def test_rerun_after_an_interrupted_rotation_finishes_forward_then_rotates_the_fresh_key(gw):
    _interrupted(gw, upstream_on=GREEN, swapped=True)
    gw.stage("openai_key", "NEWEST-cred", "newestfp")
    assert R.rotate(args()) == 0
    assert up() == BLUE  # forward to green, then the new rotation green -> blue
    assert gw.running == set(BLUE)
    assert gw.cred_text("openai_key") == "NEWEST-cred"
    assert gw.cred_text("openai_key", ".retired") == "NEW-cred"
    live = gw.live()
    assert live["ports"] == [4001, 4002]
    assert live["secrets"]["openai_key"] == {"fingerprint": "newestfp", "version": 3,
                                             "rotated_at": live["rotated_at"]}


def test_rerun_restaging_the_key_recovery_already_made_live_rotates_nothing_more(gw):
    # Interrupted after the switch: recovery finishes forward to NEW. The controller could not tell from
    # the fingerprint files and re-staged the same key: it must be discarded, not rotated a second time.
    _interrupted(gw, upstream_on=GREEN, swapped=True)
    gw.stage("openai_key", "NEW-cred", "newfp")
    assert R.rotate(args()) == 0
    assert up() == GREEN
    assert not os.path.exists(os.path.join(R.LAYOUT.creds_dir, "openai_key.cred.next"))
    assert not os.path.exists(os.path.join(R.LAYOUT.creds_dir, "openai_key.fp.next"))
    assert gw.live()["secrets"]["openai_key"]["version"] == 2


# --- systemctl's exit status: every unit operation the rotation relies on is checked ---------------------------

REFUSED = "Failed to enable unit: Unit file /etc/systemd/system/litellm@.service is masked."


def test_a_refused_enable_of_the_new_set_fails_the_drain_and_the_next_run_finishes_it(gw, capsys):
    """Otherwise the old set would come back at the next boot, with the retired key."""
    _ready(gw)
    gw.refuse[("enable", "litellm@4004.service")] = REFUSED
    assert R.rotate(args()) == 1
    err = capsys.readouterr().err
    assert "step drain failed: systemctl enable litellm@4003.service litellm@4004.service failed (exit 1): " + REFUSED in err
    assert up() == GREEN and gw.running == set(GREEN)  # forward only: traffic stays on the proven set
    assert gw.journal() is not None and gw.live() is None
    del gw.refuse[("enable", "litellm@4004.service")]
    gw.events.clear()
    assert R.rotate(args()) == 0  # recovery finishes it
    assert ("enable", "litellm@4004.service") in gw.events and ("disable", "litellm@4002.service") in gw.events
    assert gw.journal() is None and gw.live()["ports"] == [4003, 4004]


@pytest.mark.parametrize("verb, unit", [("disable", "litellm@4001.service"), ("stop", "litellm@4002.service")])
def test_a_refused_disable_or_stop_of_the_old_set_fails_the_drain(gw, capsys, verb, unit):
    _ready(gw)
    gw.refuse[(verb, unit)] = f"Failed to {verb} {unit}: Access denied"
    assert R.rotate(args()) == 1
    err = capsys.readouterr().err
    assert f"step drain failed: systemctl {verb} litellm@4001.service litellm@4002.service failed (exit 1): " in err
    assert f"Failed to {verb} {unit}: Access denied" in err
    assert gw.journal() is not None and gw.live() is None


@pytest.mark.parametrize("verb, unit, words", [
    ("stop", "litellm@4004.service", "systemctl stop litellm@4003.service litellm@4004.service failed"),
    ("start", "litellm@4003.service", "systemctl start --no-block litellm@4003.service litellm@4004.service failed"),
])
def test_a_refused_stop_of_leftovers_or_start_of_the_new_set_fails_the_start_step(gw, capsys, verb, unit, words):
    _ready(gw)
    gw.refuse[(verb, unit)] = "Job failed. See \"journalctl -xe\" for details."
    assert R.rotate(args()) == 1
    err = capsys.readouterr().err
    assert f"step start failed: {words} (exit 1): Job failed." in err
    assert gw.of("ready") == [] and gw.of("canary") == []
    assert gw.cred_text("openai_key") == "OLD-cred" and up() == BLUE


def test_a_refused_stop_in_the_rollback_keeps_the_journal_and_the_next_run_finishes_the_rollback(gw, monkeypatch,
                                                                                                capsys):
    _ready(gw)

    def canary(*a, **kw):  # from here on, systemd cannot stop 4003
        gw.refuse[("stop", "litellm@4003.service")] = "Failed to stop litellm@4003.service: Connection timed out"
        raise RuntimeError("fast--0: HTTP 401: invalid api key")

    monkeypatch.setattr(R, "canary", canary)
    assert R.rotate(args()) == 1
    err = capsys.readouterr().err
    assert "step canary failed" in err
    assert "rollback not finished: systemctl stop litellm@4003.service litellm@4004.service failed (exit 1): " \
           "Failed to stop litellm@4003.service: Connection timed out" in err
    # What could be done is done: traffic and the credential are the old ones; 4004 stopped, 4003 still runs.
    assert up() == BLUE and gw.cred_text("openai_key") == "OLD-cred"
    assert gw.running == {4001, 4002, 4003}
    assert gw.journal() is not None
    del gw.refuse[("stop", "litellm@4003.service")]
    gw.events.clear()
    assert R.rotate(args()) == 0  # the rollback finished, nothing staged any more
    assert gw.of("stop") == [("stop", 4003), ("stop", 4004)]
    assert gw.journal() is None and gw.running == set(BLUE) and gw.cred_text("openai_key") == "OLD-cred"


def test_a_refused_restart_of_an_old_instance_keeps_the_journal(gw, capsys):
    journal = _interrupted(gw, upstream_on=BLUE, swapped=True)
    gw.crash_and_restart(4002)
    gw.refuse[("restart", "litellm@4002.service")] = "Failed to restart litellm@4002.service: Unit is masked."
    assert R.rotate(args()) == 1
    assert "recovering the interrupted rotation failed: systemctl restart litellm@4002.service failed (exit 1): " \
           "Failed to restart litellm@4002.service: Unit is masked." in capsys.readouterr().err
    assert gw.journal() == journal  # the next run restarts it again
    assert gw.cred_text("openai_key") == "OLD-cred" and not set(GREEN) & gw.running


def test_the_rotation_calls_systemctl_checked_except_reset_failed(gw, monkeypatch):
    """Every unit operation goes through R.systemctl (exit status checked), but reset-failed (a failure of it
    shows in the start that follows)."""
    _ready(gw)
    direct, checked, inside = [], [], []
    real_run, real_systemctl = gw.run, R.systemctl

    def run(*argv, check=True):
        if argv[0] == "systemctl" and not inside:
            direct.append(argv[1])
        return real_run(*argv, check=check)

    def systemctl(verb, *a):
        checked.append(verb)
        inside.append(verb)
        try:
            return real_systemctl(verb, *a)
        finally:
            inside.pop()

    monkeypatch.setattr(R, "run", run)
    monkeypatch.setattr(R, "systemctl", systemctl)
    assert R.rotate(args()) == 0
    assert direct == ["reset-failed"]
    assert checked == ["stop", "start", "reload", "stop", "enable", "disable"]


# --- canary, wait_ready with only HTTP/systemd faked -------------------------------------------------------


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


# --- which failures are waited out: only transient ones (refused, reset, timed out) ----------------------------

TRANSIENT = {
    "refused": ConnectionRefusedError(111, "Connection refused"),
    "reset": ConnectionResetError(104, "Connection reset by peer"),
    "closed without answer": http.client.RemoteDisconnected("Remote end closed connection without response"),
    "read timeout": socket.timeout("timed out"),
    "refused, through urllib": urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
    "connect timeout, through urllib": urllib.error.URLError(TimeoutError("timed out")),
}
FINAL = {
    "an answer other than 200": RuntimeError("fast--0: HTTP 401: invalid api key"),
    "name not known": urllib.error.URLError(socket.gaierror(-2, "Name or service not known")),
    "certificate refused": urllib.error.URLError(ssl.SSLCertVerificationError(1, "certificate verify failed")),
    "network unreachable": OSError(101, "Network is unreachable"),
    "a bug": KeyError("x-litellm-model-id"),
}


@pytest.fixture
def fake_clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(R.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(R.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(I.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(I.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    return now


def _failing_canary(monkeypatch, exc, times):
    calls = []

    def canary(base_url, master_key, ids, check_header):
        calls.append((base_url, check_header))
        if len(calls) <= times:
            raise exc

    monkeypatch.setattr(R, "canary", canary)
    return calls


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_canary_through_nginx_tries_again_after_a_transient_failure(monkeypatch, fake_clock, exc):
    calls = _failing_canary(monkeypatch, exc, times=2)
    R.canary_through_nginx(8443, "sk-m", ["fast--0"])
    assert calls == [("https://127.0.0.1:8443", False)] * 3


@pytest.mark.parametrize("exc", FINAL.values(), ids=FINAL.keys())
def test_canary_through_nginx_fails_at_once_on_any_other_failure(monkeypatch, fake_clock, exc):
    calls = _failing_canary(monkeypatch, exc, times=1)
    with pytest.raises(type(exc)):
        R.canary_through_nginx(8443, "sk-m", ["fast--0"])
    assert len(calls) == 1 and fake_clock[0] == 0.0


def test_canary_through_nginx_gives_up_on_a_transient_failure_after_its_timeout(monkeypatch, fake_clock):
    calls = _failing_canary(monkeypatch, ConnectionRefusedError(111, "Connection refused"), times=10**6)
    with pytest.raises(ConnectionRefusedError):
        R.canary_through_nginx(8443, "sk-m", ["fast--0"], timeout=3.0)
    assert 3.0 < fake_clock[0] <= 3.3 and len(calls) == 12


def _readiness(monkeypatch, exc, times):
    calls = []

    def http(url, body, headers, timeout=30):
        calls.append(url)
        if len(calls) <= times:
            raise exc
        return 200, {}, "{}"

    monkeypatch.setattr(I, "http", http)
    monkeypatch.setattr(I, "unit_failed", lambda unit: False)
    return calls


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_wait_ready_waits_out_a_transient_failure(monkeypatch, fake_clock, exc):
    calls = _readiness(monkeypatch, exc, times=2)
    R.wait_ready(4003, 30)
    assert calls == ["http://127.0.0.1:4003/health/readiness"] * 3


@pytest.mark.parametrize("exc", [e for k, e in FINAL.items() if k != "an answer other than 200"],
                         ids=[k for k in FINAL if k != "an answer other than 200"])
def test_wait_ready_fails_at_once_on_any_other_failure(monkeypatch, fake_clock, exc):
    calls = _readiness(monkeypatch, exc, times=1)
    with pytest.raises(RuntimeError, match=rf"litellm@4003.service: /health/readiness: {type(exc).__name__}: "):
        R.wait_ready(4003, 30)
    assert len(calls) == 1 and fake_clock[0] == 0.0


def test_wait_ready_gives_up_on_a_transient_failure_after_its_timeout(monkeypatch, fake_clock):
    calls = _readiness(monkeypatch, ConnectionRefusedError(111, "Connection refused"), times=10**6)
    with pytest.raises(RuntimeError, match=r"litellm@4003.service not ready after 3s"):
        R.wait_ready(4003, 3)
    assert len(calls) == 6


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


# ---- a deploy's change: files staged beside the live ones, the same switch -----------------------------------
def _deploy_files(gw) -> dict[str, str]:
    """The config, environment and unit live on the fake host, each with a staged .next."""
    L = R.LAYOUT
    Path(L.systemd_dir).mkdir(exist_ok=True)
    files = {L.config: "config", L.env_file: "env", L.unit_file: "unit"}
    for path, what in files.items():
        Path(path).write_text(f"old {what}\n")
        Path(path + ".next").write_text(f"new {what}\n")
    return files


def test_a_deploy_change_switches_its_staged_files_and_canaries_every_public_model(gw):
    files = _deploy_files(gw)
    assert R.rotate(args(secrets="-", deployments="quick--0", purge="", files=",".join(files),
                         models="fast,quick,gpt-4o", digests="fast--0=abc,quick--0=def", change="deploy")) == 0
    for path, what in files.items():
        assert Path(path).read_text() == f"new {what}\n" and Path(path + ".retired").read_text() == f"old {what}\n"
        assert not Path(path + ".next").exists() and not Path(path + ".prev").exists()
    # systemd re-read the new unit before the new set started from it.
    assert gw.kinds().index("daemon-reload") < gw.kinds().index("start")
    assert gw.of("daemon-reload") == [("daemon-reload", "new unit\n")]
    # Each new instance: the changed deployment answered by itself, then every public name, before the switch.
    assert gw.of("canary-models") == [("canary-models", f"http://127.0.0.1:{p}", ["fast", "quick", "gpt-4o"], BLUE)
                                      for p in GREEN]
    assert [e[3] for e in gw.of("canary")] == [["quick--0"], ["quick--0"]]
    assert up() == GREEN and gw.running == set(GREEN) and gw.journal() is None
    live = gw.live()
    assert live["change"] == "deploy" and live["deployments"] == {"fast--0": "abc", "quick--0": "def"}
    assert live["config_sha1"] == hashlib.sha1(b"new config\n").hexdigest()
    assert live["secrets"] == {} and "rotated_at" not in live  # no key changed


def test_a_deploy_change_whose_public_model_fails_rolls_every_file_back(gw, capsys):
    files = _deploy_files(gw)
    gw.fail["canary-models"] = RuntimeError("model quick (deployment quick--0): HTTP 404: model not found")
    assert R.rotate(args(secrets="-", deployments="", purge="", files=",".join(files), models="fast,quick",
                         change="deploy")) == 1
    for path, what in files.items():
        assert Path(path).read_text() == f"old {what}\n", path
        assert not [p for p in Path(path).parent.iterdir() if p.name.startswith(Path(path).name + ".")], path
    # The unit is re-read after the swap and again after it is restored: systemd knows the old one again.
    assert gw.of("daemon-reload") == [("daemon-reload", "new unit\n"), ("daemon-reload", "old unit\n")]
    assert up() == BLUE and gw.running == set(BLUE) and gw.journal() is None and gw.live() is None
    assert "step canary failed: model quick (deployment quick--0): HTTP 404" in capsys.readouterr().err


def test_files_staged_again_after_a_recovery_made_them_live_switch_nothing(gw, capsys):
    files = _deploy_files(gw)
    for path in files:
        Path(path).write_text(Path(path + ".next").read_text())
    assert R.rotate(args(secrets="-", files=",".join(files), models="fast", change="deploy")) == 0
    assert gw.events == [] and not [p for p in files if Path(p + ".next").exists()]
    assert "nothing staged" in capsys.readouterr().out


def test_a_deploy_switch_cut_off_after_the_swap_is_rolled_back_with_its_files(gw, monkeypatch):
    files = _deploy_files(gw)
    monkeypatch.setattr(R.os, "kill", lambda pid, sig: (_ for _ in ()).throw(SystemExit("killed")))
    with pytest.raises(SystemExit):
        R.rotate(args(secrets="-", files=",".join(files), models="fast", change="deploy", fail_after="start"))
    assert Path(R.LAYOUT.config).read_text() == "new config\n" and gw.journal()["files"] == list(files)
    # The next run (nothing staged any more) recovers: nginx never left the old set, so it rolls back.
    assert R.rotate(args(secrets="-", files="", models="", change="deploy")) == 0
    for path, what in files.items():
        assert Path(path).read_text() == f"old {what}\n", path
    assert up() == BLUE and gw.running == set(BLUE) and gw.journal() is None


def _upgrade_files(gw) -> tuple[dict[str, str], str, str]:
    """An upgrade staged on the fake host: the config and a launcher naming a new venv build; `venv` on the old one."""
    files = _deploy_files(gw)
    L = R.LAYOUT
    old, new = _venv_build(gw, "a" * 16, "1.106.2"), _venv_build(gw, "b" * 16, "1.108.7")
    os.symlink(old, L.venv)
    Path(L.bin_dir).mkdir(parents=True)
    Path(L.launcher).write_text(f"#!{old}/bin/python3\n")
    Path(L.launcher + ".next").write_text(f"#!{new}/bin/python3\n")
    return {**files, L.launcher: "launcher"}, old, new


@pytest.mark.parametrize("step", R.FAULT_STEPS)
def test_an_upgrade_cut_off_after_any_step_is_rolled_back_or_finished_by_the_next_run(gw, monkeypatch, step):
    """kill -9 of the deploy's switch after each step (here SystemExit where it would SIGKILL itself), then the next
    run with nothing staged: before nginx switched, every file (the launcher too) is the old one again and `venv` never
    moved; after, the new files serve, `venv` names the new build and live.json the new LiteLLM."""
    files, old, new = _upgrade_files(gw)
    monkeypatch.setattr(R.os, "kill", lambda pid, sig: (_ for _ in ()).throw(SystemExit(f"killed after {step}")))
    with pytest.raises(SystemExit):
        R.rotate(args(secrets="-", files=",".join(files), models="fast", change="deploy", fail_after=step))
    assert gw.journal() is not None
    assert R.rotate(args(secrets="-", files="", models="", change="deploy")) == 0
    assert gw.journal() is None
    forward = step in ("switch", "purge", "canary-nginx", "drain")
    assert Path(R.LAYOUT.launcher).read_text() == f"#!{new if forward else old}/bin/python3\n"
    assert Path(R.LAYOUT.config).read_text() == ("new config\n" if forward else "old config\n")
    assert os.readlink(R.LAYOUT.venv) == (new if forward else old)
    assert up() == (GREEN if forward else BLUE) and gw.running == set(GREEN if forward else BLUE)
    if forward:
        assert gw.live()["litellm_version"] == "1.108.7" and gw.live()["venv"] == new
