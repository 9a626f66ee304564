"""Checks the end-to-end tests and benchmarks share: a client and a completion through a gateway, waiting for a
condition, and where a secret's plaintext appears on the lab's hosts."""

from __future__ import annotations

import ssl
import time

import httpx


def lab_client(headers: dict) -> httpx.Client:
    """A client of the lab's gateways, whose certificates are self-signed, sending `headers` on every call."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return httpx.Client(verify=ctx, headers=headers, timeout=60, trust_env=False)


def gateway_client(lab) -> httpx.Client:
    """A client of the lab's gateways with the master key."""
    return lab_client({"Authorization": f"Bearer {lab.secret_values['litellm_master_key']}"})


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


def prometheus_query(lab, expr: str) -> list[dict]:
    """An instant query against the lab's Prometheus (on its monitoring host's private address)."""
    mon = lab.groups["monitoring"][0]
    url = f"http://{lab.hosts[mon].address}:{lab.host_settings(mon)['monitoring_prometheus_port']}/api/v1/query"
    r = httpx.get(url, params={"query": expr}, timeout=30, trust_env=False).json()
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def wait_for_scrapes(lab, timeout: float = 90):
    """Until Prometheus has seen every target that should answer answer (after a deploy or a restart, its last
    scrape may predate the instance's readiness)."""
    from gatekit.onhost.probe import DOWN_QUERIES

    wait_until(lambda: not [r for q in DOWN_QUERIES for r in prometheus_query(lab, q)], timeout, interval=2,
               what="every live target up in Prometheus")


# Allocates 32 MiB every 10 ms (6.4 GB in all) inside a unit's memory cgroup (argv[1]), with the OOM score
# adjustment argv[2]: the kernel's OOM killer must act when the unit reaches its MemoryMax.
OOM_ALLOCATOR = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
    "open('/proc/self/oom_score_adj', 'w').write(sys.argv[2])  # 0, or higher to be killed first\n"
    "blocks = []\n"
    "for _ in range(200):\n"
    "    blocks.append(bytearray(32 * 1024 * 1024))\n"
    "    time.sleep(0.01)\n"
    "print('survived')\n"
)


def unit_memory_cgroup(host, unit: str) -> str:
    """The unit's memory cgroup directory (the sandbox hosts run cgroup v1's memory controller)."""
    cg = host.run(f"systemctl show {unit} -p ControlGroup --value").stdout.strip()
    return f"/sys/fs/cgroup/memory{cg}"
