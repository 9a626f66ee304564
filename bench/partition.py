"""Redis cut off by dropped packets (a partition: nothing refused) for --cut-seconds under constant client load
through nginx, with LiteLLM's own Redis defaults (5 s socket timeout, its breaker opening after timeouts spanning
5 s, closed again after 60 s) and with gatekit's (gatekit/defaults.py litellm_redis_*), each against the same load
with Redis answering, on the example topology (data1 + 2 gateways), in one run. Per gateway: p50/p99 of whole
responses, failures (no resends).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import faults  # noqa: E402
from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, Lab  # noqa: E402
from lab.load import Load  # noqa: E402

GATEWAYS = ["gw1", "gw2"]
# LiteLLM 1.106.2's own values (RedisCache socket_timeout; litellm/constants.py REDIS_CIRCUIT_BREAKER_*).
LITELLM_DEFAULTS = {"litellm_redis_timeout": 5.0, "litellm_redis_breaker_failures": 5,
                    "litellm_redis_breaker_window": 5.0, "litellm_redis_breaker_recovery": 60}


def measure(lab: Lab, seconds: float, cut: bool) -> dict:
    redis = lab.groups["redis"][0]
    with Load(lab, GATEWAYS) as load:
        time.sleep(2)
        if cut:
            with faults.dropped(lab, redis, lab.host_settings(redis)["redis_port"]):
                time.sleep(seconds)
        else:
            time.sleep(seconds)
        time.sleep(2)
    return {gw: load.summary(gw) for gw in GATEWAYS}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cut-seconds", type=float, default=30)
    args = ap.parse_args()
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="gk-bench-partition-") as tmp:
        lab = Lab.create(Path(tmp), base=base, settings=dict(LITELLM_DEFAULTS))
        try:
            lab.setup({"gateways": GATEWAYS, "redis": ["data1"], "postgres": ["data1"]})
            lab.deploy()
            rows["LiteLLM defaults: Redis answering"] = measure(lab, args.cut_seconds, cut=False)
            rows["LiteLLM defaults: Redis cut off"] = measure(lab, args.cut_seconds, cut=True)
            for key in LITELLM_DEFAULTS:
                lab.settings.pop(key)
            lab.write_spec()
            lab.deploy()  # the switch: new instances, each with a closed breaker, from gatekit's settings
            rows["gatekit: Redis answering"] = measure(lab, args.cut_seconds, cut=False)
            rows["gatekit: Redis cut off"] = measure(lab, args.cut_seconds, cut=True)
        finally:
            lab.stop()
    Path(__file__).with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nRedis packets dropped for {args.cut_seconds:g} s, 1 client thread per gateway, no resends")
    print(f"{'phase':36}" + "".join(f"{gw + ' req/failed':>18}{gw + ' p50/p99 ms':>20}" for gw in GATEWAYS))
    for name, r in rows.items():
        cells = "".join(f"{str(r[gw]['requests']) + '/' + str(r[gw]['failed']):>18}"
                        f"{str(r[gw]['p50_ms']) + '/' + str(r[gw]['p99_ms']):>20}" for gw in GATEWAYS)
        print(f"{name:36}{cells}")


if __name__ == "__main__":
    main()
