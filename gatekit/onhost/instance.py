"""One LiteLLM instance seen from its host: HTTP to it, which failures of it are transient, the readiness wait.

Used by rotate.py on the host, and run by the deploy after a (re)start:
    python3 {lib}/instance.py wait-ready PORT --timeout SECONDS
Python stdlib only; reads the host's layout.json beside it.
"""

from __future__ import annotations

import argparse
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from http.client import IncompleteRead  # (http is this module's HTTP call)

if __package__:
    from .layout import Layout
else:  # on the host: uploaded beside this program
    from layout import Layout


def http(url: str, body: dict | None, headers: dict, timeout: float = 30) -> tuple[int, dict, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # our own self-signed front, on loopback
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode(errors="replace")


def transient(exc: BaseException) -> bool:
    """A failure that waiting can cure: the instance (or nginx) refused or reset the connection, closed it without
    an answer, or did not answer in time (it is starting, restarting, or busy). Anything else (an HTTP error
    status, a TLS or name error, an unreachable network) is an answer, or a fault that no retry changes."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    # ConnectionError: refused, reset (RemoteDisconnected is one), aborted, broken pipe; TimeoutError: socket.timeout.
    return isinstance(exc, (ConnectionError, TimeoutError, IncompleteRead))


def unit_failed(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-failed", "--quiet", unit]).returncode == 0


def wait_ready(layout: Layout, port: int, timeout: float):
    """Until /health/readiness answers 200; fails at once when systemd gave up on the unit (its start
    limit), not after the whole timeout."""
    unit = layout.instance(port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if unit_failed(unit):
            raise RuntimeError(f"{unit} failed to start: see journalctl -u {unit}")
        try:
            if http(f"http://{layout.litellm_bind}:{port}/health/readiness", None, {}, timeout=5)[0] == 200:
                return
        except Exception as exc:  # noqa: BLE001 - only transient() ones are waited out
            if not transient(exc):
                raise RuntimeError(f"{unit}: /health/readiness: {type(exc).__name__}: {exc}") from exc
        time.sleep(0.5)
    raise RuntimeError(f"{unit} not ready after {timeout:.0f}s: see journalctl -u {unit}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="instance.py")
    sub = ap.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("wait-ready", help="wait for /health/readiness of litellm@PORT")
    ready.add_argument("port", type=int)
    ready.add_argument("--timeout", type=float, required=True, help="seconds (the deploy passes litellm_ready_timeout)")
    args = ap.parse_args(argv)
    try:
        wait_ready(Layout.beside(__file__), args.port, args.timeout)
    except RuntimeError as exc:
        print(f"gatekit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
