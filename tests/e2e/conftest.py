"""One deployed gatekit stack per test session, on booted systemd-nspawn hosts.

data1 holds Redis + PostgreSQL, gw1 and gw2 are gateways. The fake LLM provider runs on the machine,
on the sandbox bridge address. Everything is torn down at the end, also on failure or interrupt
(the sandbox registers atexit and signal handlers too).
"""

from __future__ import annotations

import os
import ssl
import sys
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakeprovider import FakeProviderClient  # noqa: E402

from gatekit.lab import Lab, Load  # noqa: E402,F401 - Load re-exported for the tests

GROUPS = {"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"]}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot systemd-nspawn hosts and need root")
    lab = Lab.create(tmp_path_factory.mktemp("lab"))
    try:
        lab.setup(GROUPS)
        lab.first_deploy = lab.deploy()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def provider(lab) -> FakeProviderClient:
    return FakeProviderClient(lab.provider_url)


@pytest.fixture(scope="session")
def client(lab) -> httpx.Client:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the sandbox gateways use self-signed certificates
    headers = {"Authorization": f"Bearer {lab.secret_values['litellm_master_key']}"}
    with httpx.Client(verify=ctx, headers=headers, timeout=60, trust_env=False) as c:
        yield c


def completion(client: httpx.Client, url: str, model: str = "fast", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **extra}
    return client.post(f"{url}/v1/chat/completions", json=body)


def wait_until(fn, timeout: float, interval: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def secret_locations(lab, values) -> list[str]:
    """Every place on any host where one of `values` appears in plaintext (files outside the services'
    runtime credentials, process command lines, the journal)."""
    patterns = "\n".join(values) + "\n"
    found = []
    for name, host in lab.hosts.items():
        host.put("/root/.gk-patterns", patterns, mode="0600")
        try:
            files = host.run(
                "grep -rlsF -f /root/.gk-patterns --exclude=.gk-patterns --exclude-dir=proc --exclude-dir=sys "
                "--exclude-dir=credentials --exclude-dir=dev / ; true",
                timeout=300,
            ).stdout.split()
            found += [f"{name}:{f}" for f in files]
            cmdlines = host.run(
                "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done | grep -cF -f /root/.gk-patterns; true"
            ).stdout.strip()
            if cmdlines != "0":
                found.append(f"{name}: process command line")
            journal = host.run(
                "journalctl --no-pager -o export | grep -caF -f /root/.gk-patterns; true", timeout=120
            ).stdout.strip()
            if journal != "0":
                found.append(f"{name}: journal")
        finally:
            host.run("rm -f /root/.gk-patterns", check=False)
    return found
