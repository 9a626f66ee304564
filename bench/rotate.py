"""Key rotation benchmark on the example topology (data1 + 2 gateways), under constant client load
through nginx (plain and streamed requests, models on the rotated key and on another key).

gatekit: `pyinfra INVENTORY rotate_keys.py --data rotate=openai_key` (blue/green, canary, switch, drain).
naive:   the same new key encrypted over the live credential and the live instances restarted one at a time, each
         ready before the next, host by host (lab/naive.py: what a restart-based deploy did; the kit's own deploy
         with litellm_restart_on_secret_change now switches blue/green too).
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
from lab.env import KIT_PACKAGES, Lab, fake_key  # noqa: E402
from lab.load import Load  # noqa: E402
from lab.naive import encrypt_over, rolling_restart  # noqa: E402
from gatekit.vault import resolve_key, set_secret  # noqa: E402

GATEWAYS = ["gw1", "gw2"]


def new_key(lab: Lab, label: str):
    value = fake_key(label)
    set_secret(lab.vault_path, resolve_key(lab.vault_path, key_file=lab.key_file), "openai_key", value)
    lab.secret_values["openai_key"] = value


def loaded(lab: Lab, seconds: float | None = None, action=None) -> tuple[dict, object]:
    with Load(lab, GATEWAYS, threads_per_gateway=2, think=0.0) as load:
        out = action() if action else time.sleep(seconds)
        time.sleep(1)
    return load.summary(), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-seconds", type=float, default=20)
    args = ap.parse_args()
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    with tempfile.TemporaryDirectory(prefix="gk-bench-rotate-") as tmp:
        lab = Lab.create(Path(tmp), base=base)
        try:
            lab.setup({"gateways": GATEWAYS, "redis": ["data1"], "postgres": ["data1"]})
            lab.deploy()
            rows = {}

            rows["before (no rotation)"], _ = loaded(lab, args.baseline_seconds)

            new_key(lab, "bench-gatekit")
            summary, result = loaded(lab, action=lambda: lab.deploy("rotate_keys.py", extra=["--data", "rotate=openai_key"]))
            per_host = {gw: json.loads(lab.hosts[gw].run("cat /var/lib/gatekit/live.json").stdout).get("last_rotation_seconds")
                        for gw in GATEWAYS}
            rows["gatekit rotate_keys.py"] = {**summary, "total_s": round(result.seconds, 1), "per_host_s": per_host}

            # Baseline: the new key written over the live credential, the live instances restarted, host by host.
            new_key(lab, "bench-naive")
            t0 = time.monotonic()

            def naive():
                for gw in GATEWAYS:
                    encrypt_over(lab, gw, "openai_key", lab.secret_values["openai_key"])
                    rolling_restart(lab, gw)

            summary, _ = loaded(lab, action=naive)
            total = time.monotonic() - t0
            rows["naive rewrite + restart"] = {**summary, "total_s": round(total, 1),
                                               "per_host_s": round(total / len(GATEWAYS), 1)}
        finally:
            lab.stop()

    Path(__file__).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'phase':28}{'requests':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}  rotation time")
    for name, r in rows.items():
        extra = f"total {r['total_s']}s, per host {r['per_host_s']}" if "total_s" in r else ""
        print(f"{name:28}{r['requests']:>9}{r['failed']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}  {extra}")
    for name, r in rows.items():
        for line in r.get("failures", [])[:3] if name != "naive rewrite + restart" else []:
            print(f"  {name}: failed: {line}")


if __name__ == "__main__":
    main()
