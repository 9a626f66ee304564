"""lab/load.py: the e2e tests' "0 failed requests" is only as strict as Load, so Load must count a request
that got no answer as failed, never send it again and count the resend."""

from __future__ import annotations

import http.server
import threading
import time

from lab.load import Load


class _Gateway(http.server.ThreadingHTTPServer):
    """Answers like the gateway, except that every third request's connection is closed without a response
    (what a client sees when nginx drops a keepalive connection it just reloaded away from)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.count = 0
        self.dropped = 0
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.count += 1
            drop = self.server.count % 3 == 0
            self.server.dropped += drop
        if drop:
            self.close_connection = True  # closed with nothing sent
            return
        body = b'{"choices":[{"message":{"content":"fake-answer"}}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Lab:
    secret_values = {"litellm_master_key": "sk-test-not-a-key"}

    def __init__(self, url: str):
        self.url = url

    def gateway_url(self, gw: str) -> str:
        return self.url


def test_a_request_closed_without_an_answer_is_a_failure_and_never_resent():
    server = _Gateway()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Load(_Lab(f"http://127.0.0.1:{server.server_address[1]}"), ["gw"], streams=False, think=0.01) as load:
            deadline = time.monotonic() + 10
            while server.dropped < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    s = load.summary()
    assert server.dropped >= 3
    # Every request the server saw is one result: none was sent twice to make up for a lost one.
    assert s["requests"] == server.count, (s, server.count)
    assert s["failed"] == server.dropped, (s, server.dropped)
    assert all("RemoteProtocolError" in d for _, _, ok, d, _ in load.results if not ok), load.failures


def test_a_summary_of_one_gateway_counts_only_its_requests():
    load = Load(_Lab("http://127.0.0.1:9"), ["gw1", "gw2"])
    # (start, gateway, ok, detail, seconds): gw1 100 requests of 0.01..1.00 s, one failed; gw2 one slow request.
    load.results = [(0.0, "gw1", i != 7, f"r{i}", (i + 1) / 100) for i in range(100)] + [(0.0, "gw2", True, "s", 9.0)]
    one = load.summary("gw1")
    assert (one["requests"], one["failed"], one["p50_ms"], one["p99_ms"]) == (100, 1, 510.0, 1000.0)
    assert one["failures"] == ["gw1: r7"]
    other = load.summary("gw2")
    assert (other["requests"], other["failed"], other["p99_ms"], other["failures"]) == (1, 0, 9000.0, [])
    assert load.summary()["requests"] == 101 and load.summary()["p99_ms"] == 1000.0
