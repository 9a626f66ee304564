"""Checks the end-to-end tests and benchmarks share: a client and a completion through a gateway, waiting for a
condition, and where a secret's plaintext appears on the lab's hosts."""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import sys
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


# One scan per host. Each of its three parts must find a control value planted just before it (a file, a
# process's command line, a journal line), so a scan that could not run, or read nothing, fails the test
# instead of reading as "no secret found". Only file names and counts come back, never a matched value.
_SECRET_SCAN = r"""
set -u
P=/root/.gk-patterns C="$(cat /root/.gk-control-value)"
printf '%s\n' "$C" > /root/.gk-control
grep -rlF -f $P --exclude=.gk-patterns --exclude=.gk-control-value --exclude-dir=proc --exclude-dir=sys \
     --exclude-dir=credentials --exclude-dir=dev / 2>/root/.gk-grep-errors
echo "files-rc $?"
echo "grep-errors $(grep -vc 'No such file or directory' /root/.gk-grep-errors)"
python3 -c 'import time; time.sleep(60)' "$C" </dev/null >/dev/null 2>&1 & ctl=$!  # its fds: ssh need not wait
for i in $(seq 100); do grep -qF -- "$C" /proc/$ctl/cmdline 2>/dev/null && break; sleep 0.05; done  # exec'd
for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < $f; echo; done 2>/dev/null | grep -oF -f $P \
  | awk -v c="$C" '$0 == c {n++} $0 != c {o++} END {print "cmdline", n+0, o+0}'
kill $ctl
echo "$C" | systemd-cat -t gk-secret-scan && journalctl --sync
journalctl --no-pager -o export | grep -aoF -f $P \
  | awk -v c="$C" '$0 == c {n++} $0 != c {o++} END {print "journal", n+0, o+0}'
"""


def secret_locations(lab, values) -> list[str]:
    """Every place on any host where one of `values` appears in plaintext (files outside the services'
    runtime credentials, process command lines, the journal). Raises AssertionError when a scan did not run."""
    found = []
    for name, host in lab.hosts.items():
        control = f"gk-scan-control-{secrets.token_hex(12)}"
        host.put("/root/.gk-patterns", "\n".join([*values, control]) + "\n", mode="0600")
        host.put("/root/.gk-control-value", control, mode="0600")
        try:
            out = host.run(_SECRET_SCAN, check=False, timeout=420)
        finally:
            host.run("rm -f /root/.gk-patterns /root/.gk-control /root/.gk-control-value /root/.gk-grep-errors",
                     check=False)
        found += _scan_findings(name, out.stdout)
    return found


def _scan_findings(name: str, stdout: str) -> list[str]:
    files, report = [], {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("files-rc", "grep-errors", "cmdline", "journal"):
            report[word] = [int(x) for x in rest.split()]
        else:
            files.append(line)
    problems = []
    if report.get("files-rc", [2])[0] not in (0, 1) and report.get("grep-errors", [1])[0] != 0:
        problems.append(f"the file scan failed ({report})")
    if "/root/.gk-control" not in files:
        problems.append("the file scan did not find its control file")
    for part in ("cmdline", "journal"):
        if report.get(part, [0])[0] < 1:
            problems.append(f"the {part} scan did not find its control value")
    assert not problems, f"{name}: secret scan could not prove anything: {'; '.join(problems)}"
    return [f"{name}:{f}" for f in files if f != "/root/.gk-control"] + [
        f"{name}: {'process command line' if part == 'cmdline' else part} ({report[part][1]} matches)"
        for part in ("cmdline", "journal") if report[part][1]]


def redis_cli(lab, *commands: str) -> list[str]:
    """Run redis-cli commands on the lab's Redis host in LiteLLM's database; the password goes over stdin,
    never into an argument. Returns one output line per command."""
    data = lab.groups["redis"][0]
    db = lab.host_settings(data)["redis_litellm_db"]
    lines = [f"AUTH {lab.secret_values['redis_password']}", f"SELECT {db}", *commands]
    out = lab.hosts[data].run("redis-cli", input="\n".join(lines) + "\n").stdout.splitlines()
    assert out[:2] == ["OK", "OK"], out[:2]
    return out[2:]


def deployment_id(lab, gateway: str, model: str) -> str:
    """The id LiteLLM knows one of `model`'s deployments by, read from the gateway's live config.yaml."""
    import yaml

    config = yaml.safe_load(lab.hosts[gateway].run(f"cat {lab.layout(gateway).config}").stdout)
    mine = [d["model_info"]["id"] for d in config["model_list"] if d["model_name"] == model]
    assert len(mine) == 1, (model, mine)
    return mine[0]


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


def gatekit(lab, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The gatekit CLI of this checkout, as an operator runs it against the lab (its vault key in the environment)."""
    from lab.env import REPO

    env = {**lab.env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "gatekit.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def doctor_failures(lab, gw: str) -> dict[str, str]:
    """{check: evidence} of what `gatekit doctor --host GW` finds failing on that gateway."""
    p = gatekit(lab, "doctor", str(lab.inventory_path), "--json", "--host", gw, check=False)
    results = [r for r in json.loads(p.stdout)["results"] if r["host"] == lab.hosts[gw].address]
    failing = {r["check"]: r["evidence"] for r in results if r["status"] == "fail"}
    assert results and (p.returncode == 1) == bool(failing), (p.returncode, failing, p.stderr[-2000:])
    return failing
