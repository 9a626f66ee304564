"""rotate.py's own Redis client (standard library only: the root helper imports nothing from LiteLLM's
venv), against a small RESP server that keeps keys in a dict."""

from __future__ import annotations

import fnmatch
import socketserver
import threading

import pytest

from gatekit.onhost import rotate


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
            elif cmd == "SELECT":
                srv.db = int(args[1])
                self.wfile.write(b"+OK\r\n")
            elif cmd == "SCAN":
                cursor, pattern = int(args[1]), args[3].decode()
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


@pytest.fixture
def fake_redis():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Fake)
    srv.daemon_threads = True
    srv.password, srv.seen, srv.db = "pw-for-test", [], None
    srv.keys = {k.encode(): b"1" for k in (
        "deployment:fast--0--aaaa1111:cooldown", "fast--0--aaaa1111:fails", "fast--0--aaaa1111:fast:rpm:17-05",
        "deployment_spend:fast--0--aaaa1111", "fast--1--bbbb2222:fails", "other:key", "fast--0--aaaa11112:fails")}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_scan_pages_through_every_match_and_delete_counts(fake_redis):
    r = rotate.Redis("127.0.0.1", fake_redis.server_address[1], db=3, password="pw-for-test")
    try:
        found = sorted(r.scan_iter(match="*fast--0--aaaa1111*"))
        assert len(found) == 5  # more than one SCAN page of 2
        assert r.delete(b"other:key") == 1 and r.delete(b"other:key") == 0
    finally:
        r.close()
    assert fake_redis.db == 3 and fake_redis.seen[:2] == ["AUTH", "SELECT"]


def test_a_wrong_password_is_an_error_that_does_not_show_it(fake_redis):
    with pytest.raises(RuntimeError) as exc:
        rotate.Redis("127.0.0.1", fake_redis.server_address[1], db=0, password="not-the-password")
    assert "WRONGPASS" in str(exc.value) and "not-the-password" not in str(exc.value)


def test_purge_deletes_only_the_deployments_own_keys(fake_redis, monkeypatch, tmp_path):
    env = tmp_path / "litellm.env"
    env.write_text(f"# comment\nREDIS_HOST=127.0.0.1\nREDIS_PORT={fake_redis.server_address[1]}\nREDIS_DB=2\n")
    monkeypatch.setattr(rotate, "LAYOUT", rotate.Layout.from_settings({"litellm_config_dir": str(tmp_path)}))
    monkeypatch.setattr(rotate, "unit_secret", lambda port, name: "pw-for-test")
    assert rotate.purge_redis(4001, ["fast--0--aaaa1111"]) == 3
    left = {k.decode() for k in fake_redis.keys}
    # Spend counters are money, kept; another deployment and a longer id that merely contains it: kept.
    assert left == {"deployment_spend:fast--0--aaaa1111", "fast--1--bbbb2222:fails", "other:key",
                    "fast--0--aaaa11112:fails"}
