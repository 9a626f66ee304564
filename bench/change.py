"""A config change on running gateways under constant client load through nginx (plain and streamed requests):
gatekit's deploy (staged config, blue/green switch with canaries, the first gateway alone, then the next) against
the restart-based change the kit made before (config written over the live one, the live instances restarted one at
a time, each ready before the next: lab/naive.py), on the example topology (data1 + 2 gateways), in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, Lab  # noqa: E402
from lab.load import Load  # noqa: E402
from lab.naive import config_edit, rolling_restart, write_over  # noqa: E402

GATEWAYS = ["gw1", "gw2"]


def loaded(lab: Lab, seconds: float | None = None, action=None) -> tuple[dict, object]:
    with Load(lab, GATEWAYS, threads_per_gateway=2, think=0.0) as load:
        out = action() if action else time.sleep(seconds)
        time.sleep(1)
    return load.summary(), out


def naive_change(lab: Lab) -> dict:
    per_host = {}
    for gw in GATEWAYS:
        t0 = time.monotonic()
        L = lab.layout(gw)
        write_over(lab, gw, L.config, config_edit(lab.hosts[gw].run(f"cat {L.config}").stdout))
        rolling_restart(lab, gw)
        per_host[gw] = round(time.monotonic() - t0, 1)
    return per_host


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-seconds", type=float, default=20)
    args = ap.parse_args()
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gk-bench-change-") as tmp:
        lab = Lab.create(Path(tmp), base=base)
        try:
            lab.setup({"gateways": GATEWAYS, "redis": ["data1"], "postgres": ["data1"]})
            lab.deploy()
            rows["before (no change)"], _ = loaded(lab, args.baseline_seconds)

            lab.weights["fast"] = 2
            lab.write_spec()
            summary, result = loaded(lab, action=lambda: lab.deploy())
            per_host = {gw: json.loads(lab.hosts[gw].run(f"cat {lab.layout(gw).live_file}").stdout).get("last_rotation_seconds")
                        for gw in GATEWAYS}
            rows["gatekit deploy (switch)"] = {**summary, "total_s": round(result.seconds, 1), "per_host_s": per_host}

            t0 = time.monotonic()
            summary, per_host = loaded(lab, action=lambda: naive_change(lab))
            rows["naive write + restart"] = {**summary, "total_s": round(time.monotonic() - t0, 1), "per_host_s": per_host}
        finally:
            lab.stop()

    Path(__file__).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'phase':26}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}  change time")
    for name, r in rows.items():
        extra = f"total {r['total_s']}s, per host {r['per_host_s']}" if "total_s" in r else ""
        print(f"{name:26}{r['requests']:>9}{r['failed']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}  {extra}")
    for name, r in rows.items():
        for line in r.get("failures", [])[:3]:
            print(f"  {name}: failed: {line}")


if __name__ == "__main__":
    main()
