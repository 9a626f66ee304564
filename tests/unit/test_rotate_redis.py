"""The one Redis client of the on-host programs (probe.Redis, standard library only: the root helpers import nothing
from LiteLLM's venv) and LiteLLM's Redis key names (probe.router_key_deployment, cooldown_deployment), as rotation's
purge and doctor use them, against a small RESP server that keeps keys in a dict.

Deployment ids are built as the deploy builds them (gatekit.render.deployment_id): public model names may hold ':'
and '/', and one id may be the start of another ("team/fast--1" and "team/fast--10")."""

from __future__ import annotations

import fnmatch
import socketserver
import threading
from pathlib import Path

import pytest
import yaml

from gatekit import doctor as d
from gatekit.defaults import DEFAULTS
from gatekit.onhost import probe, rotate
from gatekit.render import deployment_id, litellm_config_yaml
from gatekit.spec import parse_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "inventories" / "example.gateway.yaml"

# The rotated key's deployments: a model name with ':' (and a fingerprint), one with '/' (no fingerprint known).
OLD = deployment_id("llama3:8b", 0, "aaaa1111aaaa1111")
OLD2 = deployment_id("team/fast", 1)
NEW = deployment_id("llama3:8b", 0, "bbbb2222bbbb2222")  # the same deployment with the new key: its state stays
TEN = deployment_id("team/fast", 10)  # OLD2 is the start of this id
PLAIN = deployment_id("llama3", 0, "aaaa1111aaaa1111")  # "llama3" is the start of OLD's model name


def test_the_ids_are_the_deploys():
    assert (OLD, OLD2, NEW, TEN, PLAIN) == ("llama3:8b--0--aaaa1111", "team/fast--1", "llama3:8b--0--bbbb2222",
                                            "team/fast--10", "llama3--0--aaaa1111")


class _Fake(socketserver.StreamRequestHandler):
    def _read(self):
        line = self.rfile.readline()
        assert line[:1] == b"*"
        args = []
        for _ in range(int(line[1:-2])):
            n = int(self.rfile.readline()[1:-2])
            args.append(self.rfile.read(n + 2)[:-2])
        return args

    def handle(self):
        srv = self.server
        authed = srv.password is None
        while True:
            try:
                args = self._read()
            except (AssertionError, ValueError):
                return
            cmd = args[0].decode().upper()
            srv.seen.append(cmd)
            if cmd == "AUTH":
                authed = args[1].decode() == srv.password
                self.wfile.write(b"+OK\r\n" if authed else b"-WRONGPASS invalid username-password pair\r\n")
            elif not authed:
                self.wfile.write(b"-NOAUTH Authentication required.\r\n")
            elif cmd == "PING":
                self.wfile.write(b"+PONG\r\n")
            elif cmd == "SELECT":
                srv.db = int(args[1])
                self.wfile.write(b"+OK\r\n")
            elif cmd == "SCAN":
                cursor, pattern = int(args[1]), args[3].decode()
                srv.patterns.append(pattern)
                keys = sorted(k for k in srv.keys if fnmatch.fnmatchcase(k.decode(), pattern))
                page, nxt = keys[cursor:cursor + 2], cursor + 2 if cursor + 2 < len(keys) else 0
                out = b"*2\r\n$%d\r\n%d\r\n*%d\r\n" % (len(str(nxt)), nxt, len(page))
                out += b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in page)
                self.wfile.write(out)
            elif cmd == "DEL":
                n = sum(1 for k in args[1:] if srv.keys.pop(k, None) is not None)
                self.wfile.write(b":%d\r\n" % n)
            else:
                self.wfile.write(b"-ERR unknown command\r\n")


# LiteLLM's key shapes (router_utils/cooldown_cache.py, router_callbacks/track_deployment_metrics.py,
# types/router.py RouterCacheEnum, router_strategy/lowest_tpm_rpm_v2.py, budget_limiter.py) for these ids.
PURGED = {
    f"deployment:{OLD}:cooldown", f"{OLD}:fails", f"{OLD}:successes",
    f"global_router:{OLD}:ollama/llama3:8b:rpm:12-30", f"global_router:{OLD}:ollama/llama3:8b:itpm:12-30",
    f"{OLD}:ollama/llama3:8b:tpm:12-31",
    f"deployment:{OLD2}:cooldown", f"{OLD2}:fails", f"global_router:{OLD2}:openai/gpt-4o-mini:otpm:09-05",
}
KEPT = {
    # money: spend and budget windows of the old deployments
    f"deployment_spend:{OLD}:1d", f"deployment_budget_start_time:{OLD}", f"deployment_spend:{OLD2}:30d",
    # the new key's own state
    f"deployment:{NEW}:cooldown", f"{NEW}:fails", f"global_router:{NEW}:ollama/llama3:8b:rpm:12-30",
    # ids that merely start like the rotated ones
    f"deployment:{TEN}:cooldown", f"{TEN}:fails", f"global_router:{TEN}:openai/gpt-4o-mini:rpm:12-30",
    f"deployment:{PLAIN}:cooldown", f"{PLAIN}:fails",
    # anything else
    "other:key", "litellm:cache:llama3:8b--0--aaaa1111",
}


@pytest.fixture
def fake_redis():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Fake)
    srv.daemon_threads = True
    srv.password, srv.seen, srv.db, srv.patterns = "pw-for-test", [], None, []
    srv.keys = {k.encode(): b"1" for k in PURGED | KEPT}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_scan_pages_through_every_match_and_delete_counts(fake_redis):
    r = probe.Redis("127.0.0.1", fake_redis.server_address[1], db=3, password="pw-for-test")
    try:
        found = sorted(r.scan_iter(match=f"*{OLD2}*"))
        assert len(found) == 7  # OLD2's 3 (+ its spend key) and TEN's 3: more than one SCAN page of 2
        assert r.delete(b"other:key") == 1 and r.delete(b"other:key") == 0
    finally:
        r.close()
    assert fake_redis.db == 3 and fake_redis.seen[:2] == ["AUTH", "SELECT"]


def test_a_wrong_password_is_an_error_that_does_not_show_it(fake_redis):
    with pytest.raises(probe.RedisError) as exc:
        probe.Redis("127.0.0.1", fake_redis.server_address[1], db=0, password="not-the-password")
    assert "WRONGPASS" in str(exc.value) and "not-the-password" not in str(exc.value)


def _purge(fake_redis, monkeypatch, tmp_path, ids, known=()):
    env = tmp_path / "litellm.env"
    env.write_text(f"# comment\nREDIS_HOST=127.0.0.1\nREDIS_PORT={fake_redis.server_address[1]}\nREDIS_DB=2\n")
    monkeypatch.setattr(rotate, "LAYOUT", rotate.Layout.from_settings({"litellm_config_dir": str(tmp_path)}))
    monkeypatch.setattr(rotate, "unit_secret", lambda port, name: "pw-for-test" if name == "redis_pw" else "wrong")
    return rotate.purge_redis(4001, ids, "redis_pw", known)


def test_purge_deletes_exactly_the_rotated_deployments_router_state(fake_redis, monkeypatch, tmp_path):
    assert _purge(fake_redis, monkeypatch, tmp_path, [OLD, OLD2], [NEW]) == 9
    assert {k.decode() for k in fake_redis.keys} == KEPT
    assert fake_redis.db == 2


def test_purge_of_an_id_that_starts_another_keeps_the_others_keys(fake_redis, monkeypatch, tmp_path):
    # Only "team/fast--1" rotates: the keys of "team/fast--10" (which it starts) all stay.
    assert _purge(fake_redis, monkeypatch, tmp_path, [OLD2]) == 3
    left = {k.decode() for k in fake_redis.keys}
    assert {f"deployment:{TEN}:cooldown", f"{TEN}:fails", f"global_router:{TEN}:openai/gpt-4o-mini:rpm:12-30"} <= left
    assert not {f"deployment:{OLD2}:cooldown", f"{OLD2}:fails"} & left


def test_purge_without_redis_configured_deletes_nothing(tmp_path, monkeypatch):
    (tmp_path / "litellm.env").write_text("# no redis\nLITELLM_LOG=INFO\n")
    monkeypatch.setattr(rotate, "LAYOUT", rotate.Layout.from_settings({"litellm_config_dir": str(tmp_path)}))
    monkeypatch.setattr(probe, "Redis", None)  # never connects
    assert rotate.purge_redis(4002, [OLD], "redis_pw") == 0


@pytest.mark.parametrize("key, ids, owner", [
    (f"deployment:{OLD}:cooldown", {OLD}, OLD),
    (f"{OLD}:fails", {OLD}, OLD),
    (f"global_router:{OLD}:ollama/llama3:8b:rpm:12-30", {OLD}, OLD),
    (f"{OLD}:ollama/llama3:8b:tpm:12-30", {OLD}, OLD),
    ("fast--0:tpm:12-30", {"fast--0"}, "fast--0"),  # lowest_tpm_rpm.py: no model
    (f"deployment_spend:{OLD}:1d", {OLD}, None),
    (f"deployment_budget_start_time:{OLD}", {OLD}, None),
    (f"{TEN}:fails", {OLD2}, None),
    (f"global_router:{TEN}:openai/gpt-4o-mini:rpm:12-30", {OLD2}, None),
    (f"deployment:{TEN}:cooldown", {OLD2}, None),
    (f"{OLD}:fails:extra", {OLD}, None),
    (f"{OLD}:ollama/llama3:8b:rpm", {OLD}, None),  # no minute: not a usage key
    # An id that is another plus ":<provider>/...": the longer one known owns its usage keys, never the shorter.
    ("a--0--cccc3333:openai/x--0--dddd4444:openai/gpt:rpm:12-30", {"a--0--cccc3333", "a--0--cccc3333:openai/x--0--dddd4444"},
     "a--0--cccc3333:openai/x--0--dddd4444"),
    # ... and a model name holding ':' before its '/' is never read as a model: the shorter id does not own this.
    ("a--0--cccc3333:b--0--dddd4444:openai/gpt:rpm:12-30", {"a--0--cccc3333"}, None),
])
def test_router_key_deployment_reads_litellms_key_shapes_exactly(key, ids, owner):
    assert probe.router_key_deployment(key, ids) == owner


@pytest.mark.parametrize("key, dep", [
    (f"deployment:{OLD}:cooldown", OLD),
    ("deployment:a/b:c:d--1--12345678:cooldown", "a/b:c:d--1--12345678"),
    ("deployment::cooldown", None),
    (f"{OLD}:cooldown", None),
    (f"deployment:{OLD}:fails", None),
])
def test_cooldown_deployment_is_the_whole_id(key, dep):
    assert probe.cooldown_deployment(key) == dep


def test_doctor_collects_deployment_cooldowns_with_the_shared_client(fake_redis):
    fake_redis.keys[b"provider:openai:cooldown"] = b"1"  # ends like one, is not a deployment's
    ev = probe.redis_check("127.0.0.1", fake_redis.server_address[1], 5, "pw-for-test")
    assert ev["without_auth"] == "ERR NOAUTH Authentication required." and ev["with_auth"] == "PONG"
    assert ev["cooldowns"] == sorted([f"deployment:{OLD2}:cooldown", f"deployment:{OLD}:cooldown",
                                      f"deployment:{NEW}:cooldown", f"deployment:{TEN}:cooldown",
                                      f"deployment:{PLAIN}:cooldown"])
    assert fake_redis.db == 5 and "error" not in ev
    wrong = probe.redis_check("127.0.0.1", fake_redis.server_address[1], 5, "not-it")
    assert wrong["with_auth"] == "ERR WRONGPASS invalid username-password pair" and "cooldowns" not in wrong


def _live_config():
    data = yaml.safe_load(EXAMPLE.read_text())
    data["models"][0]["name"] = "llama3:8b"
    data["models"][1]["name"] = "team/fast"
    data.pop("fallbacks")  # they name the example's models
    data.pop("aliases")
    spec = parse_spec(data, Path("inv/example.gateway.yaml"))
    return spec, litellm_config_yaml(spec, dict(DEFAULTS), None, {"openai_key": "aaaa1111aaaa1111"})


def test_doctor_sees_the_cooldown_of_a_model_named_with_colon_and_slash():
    spec, config = _live_config()
    r = d.check_routing("gw1", config, spec, [f"deployment:{OLD}:cooldown"])
    assert r.status == d.FAIL and f"deployment {OLD} is cooling down" in r.evidence, r.evidence
    # Another deployment's id that merely starts like one of the config's is not the config's.
    r = d.check_routing("gw1", config, spec, [f"deployment:{deployment_id('team/fast', 10, 'aaaa1111')}:cooldown"])
    assert r.status == d.OK, r.evidence
