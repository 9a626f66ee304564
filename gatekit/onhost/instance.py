"""One LiteLLM instance seen from its host: key fingerprints, HTTP to it, the readiness wait.

Used on the controller (fingerprints), by rotate.py on the host, and run by the deploy after a (re)start:
    python3 {lib}/instance.py wait-ready PORT --timeout SECONDS
Python stdlib only; reads the host's layout.json beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

if __package__:
    from .layout import Layout
else:  # on the host: uploaded beside this program
    from layout import Layout


def fingerprint(value: str) -> str:
    """Names a key without revealing it (the fake provider, the deploy and rotation use the same scheme)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


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
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{unit} not ready after {timeout:.0f}s: see journalctl -u {unit}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="instance.py")
    sub = ap.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("wait-ready", help="wait for /health/readiness of litellm@PORT")
    ready.add_argument("port", type=int)
    ready.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args(argv)
    try:
        wait_ready(Layout.beside(__file__), args.port, args.timeout)
    except RuntimeError as exc:
        print(f"gatekit: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
