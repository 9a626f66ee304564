"""Deploy benchmark: fresh (cold / warm package caches) and no-op re-run times for 1, 3 and 6 hosts.

cold: hosts start from the minimal base; apt downloads every package from the Debian mirror.
warm: the base already holds every .deb the kit installs (apt's archive cache), as on a re-provisioned
      host or behind a package cache. In both, LiteLLM installs from a local wheelhouse (hash-checked),
      so the figures measure the kit, not the internet link.
Topologies: 1 = one host with every role; 3 = data1 + 2 gateways; 6 = data1 + 5 gateways.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, Lab  # noqa: E402


def topology(n: int) -> dict:
    if n == 1:
        return {"gateways": ["gw1"], "redis": ["gw1"], "postgres": ["gw1"]}
    return {"gateways": [f"gw{i}" for i in range(1, n)], "redis": ["data1"], "postgres": ["data1"]}


def measure(n: int, base: Path, reruns: int, repeat: int) -> dict:
    """`repeat` fresh deploys (new hosts each time), the no-op re-runs after the last one."""
    groups = topology(n)
    fresh_all, times = [], []
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="gk-bench-") as tmp:
            lab = Lab.create(Path(tmp), base=base)
            try:
                lab.setup(groups)
                fresh_all.append(lab.deploy().seconds)
                if i == repeat - 1:
                    for _ in range(reruns):
                        again = lab.deploy()
                        assert again.changes == 0, f"re-run changed {again.changes} things"
                        times.append(again.seconds)
            finally:
                lab.stop()
    return {"hosts": n, "fresh_s": round(statistics.median(fresh_all), 1), "fresh_all_s": [round(t, 1) for t in fresh_all],
            "rerun_s": round(statistics.median(times), 2), "rerun_all_s": [round(t, 2) for t in times]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[1, 3, 6])
    ap.add_argument("--caches", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    ap.add_argument("--reruns", type=int, default=3, help="no-op re-runs per topology (median reported)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh deploys per topology on new hosts (median reported)")
    args = ap.parse_args()
    bases = {"cold": sb.ensure_base(), "warm": sb.ensure_base(seed_debs=KIT_PACKAGES)}
    rows = []
    for cache in args.caches:
        for n in args.hosts:
            row = {"cache": cache, **measure(n, bases[cache], args.reruns, args.repeat)}
            rows.append(row)
            print(f"{cache:5} {n} host(s): fresh deploy {row['fresh_s']:6.1f} s (runs {row['fresh_all_s']})   "
                  f"no-op re-run {row['rerun_s']:5.2f} s (runs {row['rerun_all_s']})", flush=True)
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'cache':6}{'hosts':>6}{'fresh (s)':>12}{'re-run (s)':>12}")
    for r in rows:
        print(f"{r['cache']:6}{r['hosts']:>6}{r['fresh_s']:>12.1f}{r['rerun_s']:>12.2f}")


if __name__ == "__main__":
    main()
