"""What LiteLLM's Prometheus callback costs per request with and without the metrics a DB-less gateway
cannot fill (user, team, org, customer and LiteLLM-key budgets, DB spend queues), side by side in one run on
one sandbox gateway.

The two variants differ only in `litellm_settings.prometheus_exclude_metrics` of the instance's config.yaml:
  trimmed   the kit's config as rendered (gatekit.render.PROMETHEUS_EXCLUDED_METRICS excluded)
  full      the same config with that list removed (every metric LiteLLM defines, as before)
They alternate (full, trimmed, full, trimmed, ...) on the same instance: the config is swapped, the instance
restarted and warmed up, then N requests are sent from the gateway itself straight to the instance (loopback,
fixed concurrency, no nginx) and the CPU time of the instance's processes is read from /proc before and after.
Printed per round and per variant: CPU seconds per 1,000 requests, requests per second, failures.

Usage: .venv/bin/python bench/metrics_trim.py [--requests 2000] [--concurrency 8] [--rounds 2]
Needs a running sandbox (`scripts/sandbox up`); it restores the deployed config when done.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekit.onhost.layout import Layout  # noqa: E402

SANDBOX = Path(__file__).resolve().parent.parent / ".sandbox"

# Runs on the gateway with the system python: N requests at fixed concurrency to one instance, CPU of the
# instance's cgroup (utime + stime of every process in it) before and after.
LOAD = r'''
import json, os, sys, time, threading, urllib.request
port, n, conc, key, unit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def cpu():
    ticks = 0
    cg = open(f"/sys/fs/cgroup/systemd/system.slice/system-litellm.slice/{unit}/cgroup.procs").read().split()
    for pid in cg:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")
body = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
def one():
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer " + key})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read(); return r.status == 200
    except Exception:
        return False
for _ in range(50):  # warm-up
    one()
fails, lock, left = [0], threading.Lock(), [n]
def worker():
    while True:
        with lock:
            if left[0] == 0: return
            left[0] -= 1
        if not one():
            with lock: fails[0] += 1
c0, t0 = cpu(), time.monotonic()
ts = [threading.Thread(target=worker) for _ in range(conc)]
[t.start() for t in ts]; [t.join() for t in ts]
c1, t1 = cpu(), time.monotonic()
print(json.dumps({"cpu": c1 - c0, "seconds": t1 - t0, "fails": fails[0]}))
'''


def ssh(address: str, cmd: str, stdin: str | None = None) -> str:
    key = "/var/cache/gatekit-sandbox/id_ed25519"
    return subprocess.run(["ssh", "-q", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                           f"root@{address}", cmd], input=stdin, capture_output=True, text=True, check=True, timeout=900).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    inventory = (SANDBOX / "lab_inventory.py").read_text()
    address = inventory.split("gateways = [('", 1)[1].split("'", 1)[0]
    master = subprocess.run([sys.executable, "-m", "gatekit.cli", "secrets", "get", "litellm_master_key",
                             "--vault", str(SANDBOX / "lab.secrets.enc.yaml"), "--key-file", str(SANDBOX / "vault.key")],
                            capture_output=True, text=True, check=True).stdout.strip()
    L = Layout()
    port = L.instance_sets[0][0]
    unit = L.instance(port)
    deployed = ssh(address, f"cat {L.config}")
    trimmed = yaml.safe_load(deployed)
    if not trimmed["litellm_settings"].get("prometheus_exclude_metrics"):
        print("the deployed config excludes no metric: deploy the kit first", file=sys.stderr)
        return 1
    full = json.loads(json.dumps(trimmed))
    del full["litellm_settings"]["prometheus_exclude_metrics"]
    variants = {"full": yaml.safe_dump(full, sort_keys=False), "trimmed": yaml.safe_dump(trimmed, sort_keys=False)}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    try:
        for rnd in range(args.rounds):
            for name, text in variants.items():
                ssh(address, f"cat > {L.config}.bench && chown --reference={L.config} {L.config}.bench && "
                             f"chmod --reference={L.config} {L.config}.bench && mv {L.config}.bench {L.config} && "
                             f"systemctl restart {unit} && python3 {L.program('instance.py')} wait-ready {port} --timeout 300",
                    stdin=text)
                out = ssh(address, f"python3 -c {shlex.quote(LOAD)} {port} {args.requests} {args.concurrency} "
                                   f"\"$(cat)\" {unit}", stdin=master)
                r = json.loads(out.strip().splitlines()[-1])
                r["cpu_per_1k"] = r["cpu"] / args.requests * 1000
                r["rps"] = args.requests / r["seconds"]
                results[name].append(r)
                print(f"round {rnd + 1} {name:<8} cpu s/1k {r['cpu_per_1k']:6.2f}  req/s {r['rps']:6.1f}  "
                      f"failed {r['fails']}", flush=True)
    finally:
        ssh(address, f"cat > {L.config}.bench && chown --reference={L.config} {L.config}.bench && "
                     f"chmod --reference={L.config} {L.config}.bench && mv {L.config}.bench {L.config} && "
                     f"systemctl restart {unit}", stdin=deployed)
    print(f"\n{'variant':<8} {'cpu s/1k (median)':>18} {'req/s (median)':>15} {'failed':>7}")
    for name, rs in results.items():
        print(f"{name:<8} {statistics.median(r['cpu_per_1k'] for r in rs):18.2f} "
              f"{statistics.median(r['rps'] for r in rs):15.1f} {sum(r['fails'] for r in rs):7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
