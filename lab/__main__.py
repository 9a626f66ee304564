"""The lab's one command line (scripts/sandbox runs it):

    python -m lab up [--single] [--exit]   boot hosts, deploy the whole stack, show a streamed call
    python -m lab down                      remove every sandbox host, bridge and cgroup left behind
    python -m lab hosts NAME... [--inventory F]   boot bare hosts only and keep them until Ctrl-C
    python -m lab base [--seed PKG]         build the cached base root file system now
    python -m lab status                    list sandbox runs
    python -m lab record-facts [--out F]    record a converged lab's facts for tests/unit/test_roles_ops.py
                                            (boots data1 + gw1 + gw2, deploys, records, tears down)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from lab import sandbox as sb

SANDBOX_DIR = Path(__file__).resolve().parent.parent / ".sandbox"


def up(single: bool, exit_after: bool) -> int:
    from lab.env import Lab

    if os.geteuid() != 0:
        print("error: the sandbox boots systemd-nspawn hosts and needs root", file=sys.stderr)
        return 2
    lab = Lab.create(SANDBOX_DIR, run_id="sandbox")
    try:
        groups = ({"gateways": ["gw1"], "redis": ["gw1"], "postgres": ["gw1"], "monitoring": ["gw1"]} if single
                  else {"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"], "monitoring": ["data1"]})
        print("starting the fake LLM provider and the wheelhouse, booting hosts ...", flush=True)
        lab.setup(groups)
        print(f"deploying: pyinfra {lab.inventory_path} deploy.py ...", flush=True)
        result = lab.deploy(check=False)
        if not result.ok:
            print(result.stderr[-4000:], file=sys.stderr)
            print(f"error: deploy failed; full log: {lab.workdir / 'last-deploy.stderr'}", file=sys.stderr)
            return 1
        print(f"deployed in {result.seconds:.1f}s ({result.changes} changes)")
        for gw in groups["gateways"]:
            print(f"gateway: {lab.gateway_url(gw)}  (self-signed TLS; master key: "
                  f"gatekit secrets get litellm_master_key --vault {lab.vault_path} --key-file {lab.key_file})")
        for mon in groups.get("monitoring", []):
            port = lab.host_settings(mon)["monitoring_prometheus_port"]
            print(f"prometheus: http://{lab.hosts[mon].address}:{port}  (alerts: /alerts; dashboard: import "
                  "templates/monitoring/grafana-dashboard.json in a Grafana pointed at it)")
        demo_stream(lab, groups["gateways"][0])
        if exit_after:
            return 0
        print("sandbox running; Ctrl-C stops it and removes the hosts", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        print("stopping the sandbox ...", flush=True)
        lab.stop()


def demo_stream(lab, gateway: str):
    import httpx

    url = f"{lab.gateway_url(gateway)}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {lab.secret_values['litellm_master_key']}"}
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    print(f"streamed call: POST {url} (model fast)")
    t0 = time.monotonic()
    with httpx.Client(verify=False, trust_env=False, timeout=60) as client:
        with client.stream("POST", url, json=body, headers=headers) as r:
            print(f"  HTTP {r.status_code}")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    print(f"  +{time.monotonic() - t0:5.2f}s {line[6:120]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description="gatekit's test lab on systemd-nspawn hosts")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="boot hosts, deploy the whole stack, print the gateway URL and a streamed call")
    u.add_argument("--single", action="store_true", help="one host holding every role instead of data1 + gw1 + gw2")
    u.add_argument("--exit", dest="exit_after", action="store_true", help="tear everything down after the demo call")
    sub.add_parser("down", help="remove every sandbox host, bridge and cgroup left by earlier runs")
    h = sub.add_parser("hosts", help="boot bare hosts and keep them until Ctrl-C")
    h.add_argument("hosts", nargs="+")
    h.add_argument("--run-id")
    h.add_argument("--inventory", help="write a pyinfra inventory here")
    h.add_argument("--group", default="sandbox")
    h.add_argument("--no-memory", action="store_true", help="do not enforce MemoryMax")
    b = sub.add_parser("base", help="build the cached base root file system now")
    b.add_argument("--seed", action="append", default=[], help="package whose .debs to pre-download")
    sub.add_parser("status", help="list sandbox runs")
    r = sub.add_parser("record-facts", help="boot the e2e lab, deploy, and record what its converged hosts answer "
                                            "to the roles' facts (tests/unit/fixtures/converged/facts.json)")
    r.add_argument("--out", type=Path, help="where to write the recording (default: the unit tests' fixture)")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            return up(args.single, args.exit_after)
        if args.cmd == "down":
            removed = sb.cleanup_leftovers(verbose=True)
            print("sandbox leftovers removed: " + (", ".join(removed) if removed else "nothing"))
            return 0
        if args.cmd == "hosts":
            return sb._cmd_up(args)
        if args.cmd == "base":
            t0 = time.monotonic()
            print(sb.ensure_base(seed_debs=args.seed), f"({time.monotonic() - t0:.1f} s)")
            return 0
        if args.cmd == "status":
            return sb._cmd_status()
        if args.cmd == "record-facts":
            from lab import record_facts

            return record_facts.record_lab(args.out or record_facts.FIXTURE)
    except sb.SandboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
