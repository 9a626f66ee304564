"""What a dying LiteLLM process costs the clients, side by side in one run on one sandbox lab (Redis and
PostgreSQL on data1, the same fake provider):

  kit        gw1, the kit's shape: every instance of the live set behind nginx (default two single-worker
             instances), nginx passing a request it could not connect with to the other
  baseline   gw2, the kit's previous shape: one live instance of two workers (`litellm_ports: [4001, 4002]`,
             `litellm_workers: 2`), its standby stopped

For each gateway and each fault (kill -9 of a live instance's main process, kill -9 of one worker where an
instance has several, an OOM kill by the kernel in the instance's cgroup), N rounds under steady client traffic
(the e2e suite's Load: threads per gateway in a loop, plain and streamed, SDK-like retry of a request that got
no response at all, counted): the requests that started after the death and how many of them failed, the
failures of requests in flight on the dying process (counted apart: they may fail), and the seconds until the
dead instance serves again. Nothing here asserts; the e2e suite asserts the kit's shape loses only in-flight
requests.

Usage: .venv/bin/python bench/crash.py [--rounds 3] [--threads 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, Lab  # noqa: E402
from lab.faults import after_death, kill_9, kill_a_worker, main_pid, oom_kill, restarted_and_ready  # noqa: E402
from lab.load import Load  # noqa: E402

GROUPS = {"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"]}
SHAPES = {"gw1": "kit", "gw2": "baseline"}
BASELINE = {"litellm_ports": [4001, 4002], "litellm_workers": 2}
FAULTS = ["kill -9 instance", "kill -9 worker", "OOM kill"]


def failure_kind(detail: str) -> str:
    """A failed request's HTTP status or client-side exception name, from Load's detail line."""
    m = re.search(r"\b([1-5]\d\d)\b|(\w+Error|\w+Exception|\w+Timeout)", detail)
    return (m.group(1) or m.group(2)) if m else detail.split()[0]


def one_round(lab: Lab, gw: str, fault: str, threads: int) -> dict:
    host, L = lab.hosts[gw], lab.layout(gw)
    port = lab.live_ports(gw)[0]
    unit = L.instance(port)
    pid = main_pid(host, unit)
    with Load(lab, [gw], threads_per_gateway=threads) as load:
        time.sleep(2)
        if fault == "kill -9 worker":
            killed_at = kill_a_worker(host, unit)
            back_at = time.monotonic()  # kill_a_worker returns once the supervisor has replaced it
        else:
            killed_at = kill_9(host, pid, port) if fault == "kill -9 instance" else oom_kill(host, unit)
            back_at = restarted_and_ready(host, L, unit, pid, port)
        time.sleep(2)
    after, in_flight = after_death(load, killed_at)
    return {"started_after": sum(1 for r in load.results if r[0] > killed_at), "failed_after": len(after),
            "failed_in_flight": len(in_flight), "back_s": back_at - killed_at,
            "kinds": dict(Counter(failure_kind(r[3]) for r in load.failures))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per gateway and fault")
    ap.add_argument("--threads", type=int, default=3, help="client threads per gateway")
    args = ap.parse_args()
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gk-bench-crash-") as tmp:
        lab = Lab.create(Path(tmp), base=base)
        try:
            lab.setup(GROUPS, host_settings={"gw2": BASELINE})
            lab.deploy()
            for gw, shape in SHAPES.items():
                workers = int(lab.host_settings(gw)["litellm_workers"])
                live = len(lab.live_ports(gw))
                for fault in FAULTS:
                    if fault == "kill -9 worker" and workers < 2:
                        print(f"{shape:<9} {fault:<17} n/a: one process per instance, its death is `kill -9 instance`",
                              flush=True)
                        continue
                    rounds = []
                    for i in range(args.rounds):
                        r = one_round(lab, gw, fault, args.threads)
                        rounds.append(r)
                        print(f"{shape:<9} {fault:<17} round {i + 1}: {r['started_after']} started after the death, "
                              f"{r['failed_after']} of them failed; {r['failed_in_flight']} in flight failed; back in "
                              f"{r['back_s']:.1f} s; failures {r['kinds']}", flush=True)
                    rows.append({"shape": shape, "gateway": gw, "live_instances": live, "workers": workers,
                                 "fault": fault, "rounds": rounds})
        finally:
            lab.stop()

    print(f"\n{args.rounds} rounds per row, {args.threads} client threads per gateway; kit = gw1, baseline = gw2 "
          f"(the kit's previous shape)")
    print(f"{'shape':<9} {'live x wrk':>10} {'fault':<17} {'after':>6} {'failed':>7} {'in flight':>9} {'back s':>7}  failures")
    for row in rows:
        rs = row["rounds"]
        kinds = Counter()
        for r in rs:
            kinds.update(r["kinds"])
        print(f"{row['shape']:<9} {row['live_instances']:>5} x {row['workers']:<2} {row['fault']:<17} "
              f"{sum(r['started_after'] for r in rs):>6} {sum(r['failed_after'] for r in rs):>7} "
              f"{sum(r['failed_in_flight'] for r in rs):>9} {statistics.median(r['back_s'] for r in rs):>7.1f}  "
              f"{dict(kinds) or '-'}")
    print("after = requests started after the death (summed over rounds), failed = how many of those failed, in flight = "
          "failures of requests the dying process held; back s = median seconds until the dead instance (or worker) serves")
    Path(__file__).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
