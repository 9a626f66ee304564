"""What a client key costs per request, side by side in one run on one sandbox gateway (data1 holds Redis
and PostgreSQL): closed-loop load through nginx (4 threads, non-streamed calls to model `fast`) with

  master   the master key: gatekit's auth hook compares it and returns (the shortest path: the baseline)
  client   a client key: SHA-256 lookup in the shipped table, model check, usage summed and written to
           PostgreSQL every 2 s
  limited  a client key with rpm/tpm (LiteLLM's limiter, counted in Redis) far above the load
  budget   a client key with a monthly budget far above the load (this month's cost re-read from
           PostgreSQL every 2 s, checked before each call)

Each contender runs twice, interleaved (A B C D A B C D), so drift on the shared machine hits all alike.
Usage: .venv/bin/python bench/keys.py [--seconds 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, REPO, Lab  # noqa: E402
from lab.load import Load  # noqa: E402

GROUPS = {"gateways": ["gw1"], "redis": ["data1"], "postgres": ["data1"]}


def add_key(lab: Lab, name: str, *opts: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gatekit.cli", "keys", "add", name, "--spec", str(lab.spec_path),
                           "--models", "fast,claude", *opts], cwd=REPO, env=lab.env(), capture_output=True,
                          text=True, check=True)
    return proc.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="gk-bench-keys-") as tmp:
        lab = Lab.create(Path(tmp), base=base)
        try:
            lab.setup(GROUPS)
            lab.deploy()
            keys = {
                "master": lab.secret_values["litellm_master_key"],
                "client": add_key(lab, "bench-client"),
                "limited": add_key(lab, "bench-limited", "--rpm", "1000000", "--tpm", "1000000000"),
                "budget": add_key(lab, "bench-budget", "--budget", "1000000"),
            }
            lab.deploy()
            time.sleep(2)
            with Load(lab, ["gw1"], threads_per_gateway=4, think=0.0, api_key=keys["master"], models=("fast",),
                      streams=False):
                time.sleep(5)  # warm-up
            rows: dict[str, list[dict]] = {k: [] for k in keys}
            for _ in range(2):
                for name, key in keys.items():
                    with Load(lab, ["gw1"], threads_per_gateway=4, think=0.0, api_key=key, models=("fast",),
                              streams=False) as load:
                        time.sleep(args.seconds)
                    s = load.summary()
                    s["rps"] = s["requests"] / (args.seconds + 1)
                    rows[name].append(s)
        finally:
            lab.stop()
    print(f"\n{'contender':<9} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}   (two rounds, mean; p99 the worse)")
    for name, runs in rows.items():
        rps = sum(r["rps"] for r in runs) / len(runs)
        p50 = sum(r["p50_ms"] for r in runs) / len(runs)
        p99 = max(r["p99_ms"] for r in runs)
        failed = sum(r["failed"] for r in runs)
        print(f"{name:<9} {rps:>7.1f} {p50:>8.1f} {p99:>8.1f} {failed:>7}")
    print("baseline: master; the others add the client-key path to every request.")


if __name__ == "__main__":
    main()
