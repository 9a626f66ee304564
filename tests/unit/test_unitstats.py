"""gatekit-unitstats (gatekit/onhost/unitstats.py) on a fake /proc and credentials directory: stale keys by
fingerprint and by start time, the process tree, and the textfile it writes."""

from __future__ import annotations

import os
import time

import pytest

from gatekit.onhost import probe, unitstats
from gatekit.onhost.probe import fingerprint
from gatekit.onhost.layout import Layout

TCK = os.sysconf("SC_CLK_TCK")
VARS = {"openai_key": "GK_SECRET_OPENAI_KEY", "anthropic_key": "GK_SECRET_ANTHROPIC_KEY"}


def fake_process(proc, pid, ppid, env: dict[str, str], started_ago: float):
    d = proc / str(pid)
    d.mkdir(parents=True)
    start = int((time.time() - probe.BOOT - started_ago) * TCK)
    # comm may hold spaces and parentheses: fields are counted after the last ')'.
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} (python3 (x) y) " + " ".join(fields))
    (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()) + b"\0")


@pytest.fixture
def host(tmp_path):
    L = Layout(gatekit_etc=str(tmp_path / "etc"), credentials_runtime_dir=str(tmp_path / "run-creds"))
    os.makedirs(L.creds_dir)
    for name, value in (("openai_key", "sk-new"), ("anthropic_key", "ak-1")):
        open(L.cred(name), "w").write("encrypted")
        os.utime(L.cred(name), (time.time() - 600, time.time() - 600))
        open(L.cred_fingerprint(name), "w").write(fingerprint(value) + "\n")
    proc = tmp_path / "proc"
    return L, proc


def test_a_worker_holding_the_previous_key_is_stale_and_the_value_never_leaves(host):
    L, proc = host
    fake_process(proc, 100, 1, {"GK_SECRET_OPENAI_KEY": "sk-new", "GK_SECRET_ANTHROPIC_KEY": "ak-1"}, 120)
    fake_process(proc, 101, 100, {"GK_SECRET_OPENAI_KEY": "sk-old", "GK_SECRET_ANTHROPIC_KEY": "ak-1"}, 100)
    tree = probe.all_parents(str(proc))
    assert probe.descendants(100, tree) == [100, 101]
    assert unitstats.stale_keys(L, 4001, 100, VARS, tree, str(proc)) == {"openai_key": 1, "anthropic_key": 0}


def test_a_single_worker_instance_is_judged_by_the_credential_systemd_decrypted_for_it(host):
    """One worker: the launcher sets the keys in its own environment after exec, invisible in /proc."""
    L, proc = host
    fake_process(proc, 100, 1, {"GK_PORT": "4001"}, 120)
    root = f"{proc}/100/root"  # the instance's own view: only it sees its credentials
    os.makedirs(root + os.path.dirname(L.runtime_credential(4001, "openai_key")))
    open(root + L.runtime_credential(4001, "openai_key"), "w").write("sk-old\n")
    open(root + L.runtime_credential(4001, "anthropic_key"), "w").write("ak-1")
    assert unitstats.stale_keys(L, 4001, 100, VARS, probe.all_parents(str(proc)), str(proc)) == {
        "openai_key": 1, "anthropic_key": 0}


def test_current_keys_are_not_stale(host):
    L, proc = host
    fake_process(proc, 100, 1, {"GK_SECRET_OPENAI_KEY": "sk-new", "GK_SECRET_ANTHROPIC_KEY": "ak-1"}, 120)
    assert unitstats.stale_keys(L, 4001, 100, VARS, probe.all_parents(str(proc)), str(proc)) == {
        "openai_key": 0, "anthropic_key": 0}


def test_a_process_started_before_its_credential_was_written_is_stale(host):
    """Same fingerprint file, but the credential changed after the process started (fingerprint written
    later, or a credential that never reached the environment)."""
    L, proc = host
    fake_process(proc, 100, 1, {"GK_SECRET_OPENAI_KEY": "sk-new", "GK_SECRET_ANTHROPIC_KEY": "ak-1"}, 120)
    os.utime(L.cred("anthropic_key"), (time.time() - 10, time.time() - 10))
    assert unitstats.stale_keys(L, 4001, 100, VARS, probe.all_parents(str(proc)), str(proc)) == {
        "openai_key": 0, "anthropic_key": 1}


def test_render_writes_memory_and_staleness_only_for_running_instances(host, monkeypatch, tmp_path):
    L, proc = host
    fake_process(proc, 100, 1, {"GK_SECRET_OPENAI_KEY": "sk-old", "GK_SECRET_ANTHROPIC_KEY": "ak-1"}, 120)
    props = {"litellm@4001.service": {"ActiveState": "active", "MainPID": "100", "MemoryCurrent": "1000",
                                      "MemoryMax": "2000", "MemoryHigh": "infinity"},
             "litellm@4003.service": {"ActiveState": "inactive", "MainPID": "0", "MemoryCurrent": "[not set]"}}
    monkeypatch.setattr(unitstats, "unit_props", lambda unit: props.get(unit, {}))
    text = unitstats.render(L, VARS, str(proc))
    assert 'gatekit_unit_memory_bytes{unit="litellm@4001.service"} 1000' in text
    assert 'gatekit_unit_memory_max_bytes{unit="litellm@4001.service"} 2000' in text
    assert "memory_high_bytes" not in text.replace("# HELP gatekit_unit_memory_high_bytes", "").replace(
        "# TYPE gatekit_unit_memory_high_bytes", "")  # unlimited: absent, not a bogus number
    assert 'gatekit_stale_key{port="4001",secret="openai_key"} 1' in text
    assert "4003" not in text
    assert "sk-old" not in text and "sk-new" not in text
    out = tmp_path / "gatekit.prom"
    unitstats.write_atomic(str(out), text)
    assert out.read_text() == text and oct(out.stat().st_mode & 0o777) == "0o644"



# ---- gatekit_dependency_reachable: the gateway's own view of Redis and PostgreSQL ---------------------------
class FakeServer:
    """A TCP server on 127.0.0.1 that answers each connection's first bytes with `reply` (None: never answers,
    as a server behind a cut path looks once the connection is up)."""

    def __init__(self, reply: bytes | None):
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply, self.held = reply, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            conn.recv(4096)
            if self.reply is not None:
                conn.sendall(self.reply)

    def close(self):
        for c in self.held:
            c.close()
        self.sock.close()


def _pg_message(kind: bytes, body: bytes) -> bytes:
    import struct

    return kind + struct.pack("!I", len(body) + 4) + body


def _free_port() -> int:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]  # closed again: connections to it are refused


def _env(redis_port: int, pg_port: int) -> dict[str, str]:
    return {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(redis_port), "REDIS_DB": "0",
            "GK_USAGE_PG": f"host=127.0.0.1 port={pg_port} dbname=litellm user=litellm"}


def test_a_redis_and_postgres_that_answer_without_credentials_are_reachable():
    import struct

    redis = FakeServer(b"-NOAUTH Authentication required.\r\n")
    pg = FakeServer(_pg_message(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\0\0"))  # asks for a password
    try:
        assert unitstats.dependencies(_env(redis.port, pg.port), timeout=2) == [
            ("redis", f"127.0.0.1:{redis.port}", 1), ("postgres", f"127.0.0.1:{pg.port}", 1)]
    finally:
        redis.close(), pg.close()


def test_a_refusal_is_still_an_answer():
    """pg_hba refusing this gateway is a configuration problem (doctor's postgres check), not a cut path."""
    pg = FakeServer(_pg_message(b"E", b"SFATAL\0C28000\0Mno pg_hba.conf entry\0\0"))
    try:
        env = {"GK_USAGE_PG": f"host=127.0.0.1 port={pg.port} dbname=litellm user=litellm"}
        assert unitstats.dependencies(env, timeout=2) == [("postgres", f"127.0.0.1:{pg.port}", 1)]
    finally:
        pg.close()


def test_a_silent_or_refusing_dependency_is_unreachable():
    silent_redis, silent_pg = FakeServer(None), FakeServer(None)
    try:
        t0 = time.monotonic()
        assert unitstats.dependencies(_env(silent_redis.port, silent_pg.port), timeout=0.3) == [
            ("redis", f"127.0.0.1:{silent_redis.port}", 0), ("postgres", f"127.0.0.1:{silent_pg.port}", 0)]
        assert time.monotonic() - t0 < 5  # each waits its timeout, not the probe's default
    finally:
        silent_redis.close(), silent_pg.close()
    refused = _free_port()
    assert [up for _, _, up in unitstats.dependencies(_env(refused, refused), timeout=2)] == [0, 0]


def test_no_redis_or_postgres_in_the_environment_means_no_dependency_series():
    assert unitstats.dependencies({"LITELLM_LOG": "INFO"}) == []
    text = unitstats.render_dependencies([("redis", "10.0.0.2:6379", 1), ("postgres", "10.0.0.2:5432", 0)])
    assert 'gatekit_dependency_reachable{dependency="redis",target="10.0.0.2:6379"} 1\n' in text
    assert 'gatekit_dependency_reachable{dependency="postgres",target="10.0.0.2:5432"} 0\n' in text


def test_the_dependencies_mode_writes_only_what_it_found_from_litellm_env(tmp_path, monkeypatch):
    """--dependencies reads litellm.env beside the layout (no secret in it) and writes its own textfile."""
    pg = FakeServer(_pg_message(b"E", b"SFATAL\0C28000\0Mno pg_hba.conf entry\0\0"))
    try:
        L = Layout(litellm_config_dir=str(tmp_path))
        (tmp_path / "litellm.env").write_text(
            f"# rendered\nLITELLM_LOG=INFO\nGK_USAGE_PG=host=127.0.0.1 port={pg.port} dbname=d user=u\n")
        monkeypatch.setattr(unitstats.Layout, "beside", staticmethod(lambda _: L))
        out = tmp_path / "gatekit-reach.prom"
        assert unitstats.main(["--dependencies", "--out", str(out)]) == 0
        assert out.read_text().splitlines()[2:] == [
            f'gatekit_dependency_reachable{{dependency="postgres",target="127.0.0.1:{pg.port}"}} 1']
    finally:
        pg.close()
