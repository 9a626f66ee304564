"""The serving path, side by side in one run on one sandbox gateway (gw1; Redis and PostgreSQL on data1), the
same fake provider and the same config.yaml for every contender, each behind the same nginx:

  kit       the kit's launch as deployed: every instance of the live set behind nginx (default two
            single-worker instances)
  stock-1   LiteLLM's stock launch, `litellm --config config.yaml` with its defaults (one worker)
  stock-N   the stock launch with as many workers as the kit runs in total (`--num_workers N`)

For each contender, an open-loop generator (requests sent on a fixed schedule, latency counted from the
scheduled send, so queueing is never hidden) steps up the rate; a rate is held when its whole window ends
with 0 failures, p99 under 1 s and at least 97% of the scheduled requests sent on time. 20% of the requests are
streams. Printed per contender: the highest rate held, p50/p99 there, added latency (p50/p99 minus the
provider called directly at the same rate), CPU seconds per 1,000 requests (the contender's processes only),
resident memory (RSS and PSS summed over its processes, and the units' MemoryCurrent), HTTP 500s and LiteLLM's ContextVar errors in its
journal. `wrk` (Debian's, closed loop) cross-checks the generator's top rate on the same run.
`--soak N` then sends N requests to the kit at its highest held rate and counts 500s and ContextVar errors.

`--cpu-rounds N` then runs the kit and stock-1 side by side and alternates them N rounds at `--cpu-rate`:
CPU per request with the machine's drift shared alike (one pass each varied by 10-20% between runs).

`--pythons` instead compares the kit's launch on Debian 12's Python 3.11 (gw1) with Debian 13's Python 3.13 (gw2,
booted from Debian 13 beside it, the same locks and config): each gateway stepped up the rates as above, then, with
`--cpu-rounds N`, the two alternated N rounds at `--cpu-rate` (only one under load at a time).

Usage: .venv/bin/python bench/gateway.py [--seconds 30] [--rates 20,40,...] [--soak 20000] [--only kit,stock-1]
       [--cpu-rounds 6 --cpu-rate 60]
       .venv/bin/python bench/gateway.py --pythons [--seconds 30] [--rates ...] [--cpu-rounds 6 --cpu-rate 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatekit.onhost import upstream  # noqa: E402
from lab import sandbox as sb  # noqa: E402
from lab.env import KIT_PACKAGES, Lab  # noqa: E402
from lab.fakeprovider import FakeProviderClient  # noqa: E402

from rawhttp import Pool  # noqa: E402  (beside this script)

GROUPS = {"gateways": ["gw1"], "redis": ["data1"], "postgres": ["data1"]}
STOCK_PORT = 4190
STOCK_UNIT = "gk-bench-stock.service"
CONTEXTVAR = re.compile(r"ContextVar|was created in a different Context|has already been used once")
BODY = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


# ---- the open-loop generator ---------------------------------------------------------------------------
STREAM_BODY = json.dumps({**BODY, "stream": True}).encode()
PLAIN_BODY = json.dumps(BODY).encode()


async def _one(pool: Pool, stream: bool) -> tuple[bool, int | str]:
    """(answered correctly, HTTP status or the client-side exception's name)."""
    try:
        status, data = await pool.post(STREAM_BODY if stream else PLAIN_BODY)
    except Exception as exc:  # noqa: BLE001 - any client-side failure is a failed request
        return False, type(exc).__name__
    if stream:
        events = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.startswith("data: ")]
        return status == 200 and bool(events) and events[-1] == "data: [DONE]", status
    return status == 200 and b"fake-answer" in data, status


async def open_loop(url: str, headers: dict, rate: float, seconds: float, stream_share: float = 0.2) -> dict:
    """Requests at a fixed rate for `seconds`; latency from each request's scheduled send time. Also returns the
    generator's own CPU per 1,000 requests (it shares the machine's cores with what it measures)."""
    lat, statuses, late = [], {}, 0
    failed = 0
    pool = Pool(url, headers)
    cpu0 = time.process_time()
    loop = asyncio.get_running_loop()
    n = int(rate * seconds)
    start = loop.time() + 0.2
    every = max(1, round(1 / stream_share)) if stream_share else 0

    async def fire(i: int):
        nonlocal failed, late
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late += 1  # the generator itself fell behind: the window does not count as held
        ok, status = await _one(pool, bool(every) and i % every == every - 1)
        lat.append(loop.time() - due)
        statuses[status] = statuses.get(status, 0) + 1
        if not ok:
            failed += 1

    try:
        await asyncio.gather(*(fire(i) for i in range(n)))
    finally:
        await pool.close()
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    return {"rate": rate, "sent": n, "failed": failed, "late": late, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "statuses": statuses, "http500": statuses.get(500, 0),
            "generator_cpu_s_per_1000": (time.process_time() - cpu0) / max(n, 1) * 1000}


def count_contextvar(journal: str) -> int:
    return sum(1 for ln in journal.splitlines() if CONTEXTVAR.search(ln))


def stat_cpu_ticks(stat: str) -> int:
    """utime + stime + cutime + cstime from a /proc/PID/stat line (children it reaped included)."""
    return sum(int(x) for x in stat.rsplit(")", 1)[1].split()[11:15])  # the command name may hold ")"


def local_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process on this machine (the fake provider)."""
    return stat_cpu_ticks(Path(f"/proc/{pid}/stat").read_text()) / os.sysconf("SC_CLK_TCK")


def held(step: dict) -> bool:
    return step["failed"] == 0 and step["p99_ms"] < 1000 and step["late"] <= 0.03 * step["sent"]


# ---- the gateway host ----------------------------------------------------------------------------------
class Gateway:
    def __init__(self, lab: Lab, name: str = "gw1"):
        self.lab, self.host, self.L = lab, lab.hosts[name], lab.layout(name)
        self.url = f"{lab.gateway_url(name)}/v1/chat/completions"
        self.headers = {"Authorization": f"Bearer {lab.secret_values['litellm_master_key']}"}
        self.kit_ports = list(lab.live_ports(name))
        self.provider_pid = lab.procs[0].pid  # Lab.start_services starts the fake provider first

    def sh(self, cmd: str, check: bool = True) -> str:
        return self.host.run(cmd, check=check, timeout=600).stdout

    def point_nginx(self, ports: list[int]):
        self.host.put(self.L.nginx_upstream, upstream.for_layout(self.L, ports))
        self.sh("nginx -t -q && systemctl reload nginx")
        time.sleep(1.5)

    def pids(self, unit: str) -> list[int]:
        cg = self.sh(f"systemctl show -p ControlGroup --value {unit}").strip()
        procs = self.sh(f"cat /sys/fs/cgroup/systemd{cg}/cgroup.procs 2>/dev/null || true")
        return [int(p) for p in procs.split()]

    def cpu_seconds(self, units: list[str]) -> float:
        """utime+stime of the units' processes, children they reaped included (a recycled worker's too)."""
        pids = [p for u in units for p in self.pids(u)]
        if not pids:
            return 0.0
        out = self.sh("for p in " + " ".join(map(str, pids)) + "; do cat /proc/$p/stat 2>/dev/null; echo; done; getconf CLK_TCK")
        lines = [ln for ln in out.splitlines() if ln.strip()]
        return sum(stat_cpu_ticks(ln) for ln in lines[:-1]) / int(lines[-1])

    def memory_mb(self, units: list[str]) -> tuple[float, float, float]:
        """(RSS, PSS, MemoryCurrent) in MB, summed over the units: MemoryCurrent is what MemoryMax limits
        (the cgroup's charge, page cache included)."""
        pids = [p for u in units for p in self.pids(u)]
        out = self.sh("for p in " + " ".join(map(str, pids)) + "; do grep -E '^(Rss|Pss):' /proc/$p/smaps_rollup; done")
        rss = sum(int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("Rss"))
        pss = sum(int(ln.split()[1]) for ln in out.splitlines() if ln.startswith("Pss"))
        current = sum(int(v) for u in units
                      if (v := self.sh(f"systemctl show -p MemoryCurrent --value {u}").strip()).isdigit())
        return rss / 1024, pss / 1024, current / 2**20

    def restarts(self, units: list[str]) -> int:
        return sum(int(self.sh(f"systemctl show -p NRestarts --value {u}").strip() or 0) for u in units)

    def journal(self, units: list[str], since: float) -> str:
        return self.sh(f"journalctl --no-pager -o short-precise --since=@{int(since)} "
                       + " ".join(f"-u {u}" for u in units), check=False)

    def contextvar_errors(self, units: list[str], since: float) -> int:
        return count_contextvar(self.journal(units, since))

    def start_stock(self, workers: int | None):
        """LiteLLM's own CLI with its defaults, as the kit's unit user, from the kit's credentials and env."""
        launcher = self.sh(f"cat {self.L.launcher}")
        env_for = json.loads(re.search(r"^ENV_FOR = (.*)$", launcher, re.M).group(1))
        lib = re.search(r'sys\.path\.insert\(0, "([^"]+)"\)', launcher).group(1)
        script = (
            "#!/bin/sh\nset -e\n"
            + "".join(f'export {var}="$(cat "$CREDENTIALS_DIRECTORY/{name}")"\n' for name, var in env_for.items())
            # The kit's environment file names its log level; the stock launch keeps LiteLLM's default.
            # As `pip install litellm[proxy]` has it: without httptools (the kit's lock adds it), so uvicorn
            # parses HTTP with h11. A module that refuses to import stands in for the missing package.
            + f"unset LITELLM_LOG\nexport PYTHONPATH=/var/lib/gk-bench-stock/no-httptools:{lib}\n"
            + f"exec {self.L.venv}/bin/litellm --config {self.L.config} --port {STOCK_PORT}"
            + (f" --num_workers {workers}" if workers else "") + "\n"
        )
        self.host.put("/usr/local/sbin/gk-bench-stock", script, mode="0755")
        creds = " ".join(f"-p LoadCredentialEncrypted={n}:{self.L.cred(n)}" for n in env_for)
        self.sh(f"systemctl stop {STOCK_UNIT} 2>/dev/null; systemctl reset-failed {STOCK_UNIT} 2>/dev/null; "
                f"install -d -o {self.L.litellm_user} /var/lib/gk-bench-stock /var/lib/gk-bench-stock/no-httptools; "
                f"echo 'raise ImportError(\"httptools: not in a stock litellm[proxy] install\")' "
                f"> /var/lib/gk-bench-stock/no-httptools/httptools.py; "
                f"systemd-run --unit={STOCK_UNIT} -p User={self.L.litellm_user} -p EnvironmentFile={self.L.env_file} "
                f"-p WorkingDirectory=/var/lib/gk-bench-stock -p PrivateTmp=yes {creds} /usr/local/sbin/gk-bench-stock", check=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            probe = (f"python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:{STOCK_PORT}"
                     f"/health/readiness', timeout=5).status)\" 2>/dev/null")
            if self.sh(probe, check=False).strip() == "200":
                return
            time.sleep(2)
        raise RuntimeError("stock LiteLLM did not become ready:\n" + self.sh(f"journalctl -u {STOCK_UNIT} -n 40 --no-pager", check=False))

    def stop_stock(self):
        self.sh(f"systemctl stop {STOCK_UNIT}", check=False)


# ---- one contender -------------------------------------------------------------------------------------
def cpu_step(gw: Gateway, units: list[str], rate: float, seconds: float) -> dict:
    """One open-loop window, with the CPU per 1,000 requests of the contender's units and of the fake provider."""
    cpu0, provider0 = gw.cpu_seconds(units), local_cpu_seconds(gw.provider_pid)
    step = asyncio.run(open_loop(gw.url, gw.headers, rate, seconds))
    step["cpu_s_per_1000"] = (gw.cpu_seconds(units) - cpu0) / step["sent"] * 1000
    step["provider_cpu_s_per_1000"] = (local_cpu_seconds(gw.provider_pid) - provider0) / step["sent"] * 1000
    return step


def measure(gw: Gateway, name: str, ports: list[int], units: list[str], rates: list[float], seconds: float) -> dict:
    gw.point_nginx(ports)
    asyncio.run(open_loop(gw.url, gw.headers, rates[0], 10))  # warm-up: the first seconds after a start are slow
    steps, best = [], None
    since = time.time()
    restarts0 = gw.restarts(units)
    for rate in rates:
        step = cpu_step(gw, units, rate, seconds)
        steps.append(step)
        print(f"  {name:<8} {rate:>6.0f}/s  p50 {step['p50_ms']:>7.1f} ms  p99 {step['p99_ms']:>7.1f} ms  "
              f"failed {step['failed']:>4}  late {step['late']:>4}  cpu {step['cpu_s_per_1000']:.1f} s/1000  "
              f"(generator {step['generator_cpu_s_per_1000']:.1f}, provider {step['provider_cpu_s_per_1000']:.1f})", flush=True)
        if held(step):
            best = step
        else:
            break
        time.sleep(2)
    rss, pss, current = gw.memory_mb(units)
    # Everything the contender logged (and nginx's errors), for the 500s, 502s or restarts counted here.
    journal = gw.journal(units, since)
    nginx_errors = gw.sh("tail -n 200 /var/log/nginx/error.log", check=False)
    Path(__file__).with_name(f"gateway-{name}.log").write_text(journal + nginx_errors)
    return {"name": name, "best": best, "steps": steps, "rss_mb": rss, "pss_mb": pss, "current_mb": current,
            "restarts": gw.restarts(units) - restarts0,
            "http500": sum(s["http500"] for s in steps), "contextvar": count_contextvar(journal)}


def cpu_rounds(contenders: dict[str, tuple[Gateway, list[int], list[str]]], rounds: int, rate: float,
               seconds: float) -> dict[str, list[float]]:
    """CPU s/1,000 requests per contender (its gateway, ports and units) and round, the contenders alternating
    (order reversed every other round) while all run: a slow drift of the shared machine hits each of them alike,
    unlike one pass each."""
    out: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in (names if i % 2 == 0 else names[::-1]):
            gw, ports, units = contenders[name]
            gw.point_nginx(ports)
            asyncio.run(open_loop(gw.url, gw.headers, rate, 3))  # fresh keep-alive connections to this one
            step = cpu_step(gw, units, rate, seconds)
            out[name].append(step["cpu_s_per_1000"])
            print(f"  round {i + 1} {name:<11} {rate:.0f}/s  cpu {out[name][-1]:.1f} s/1000  failed {step['failed']}  "
                  f"p99 {step['p99_ms']:.0f} ms", flush=True)
    return out


def pythons(args, rates: list[float]) -> None:
    """The kit on Python 3.11 (Debian 12, gw1) against Python 3.13 (Debian 13, gw2), side by side in one lab."""
    with tempfile.TemporaryDirectory(prefix="gk-bench-py-") as tmp:
        lab = Lab.create(Path(tmp), base=sb.ensure_base(seed_debs=KIT_PACKAGES),
                         settings={"nginx_keepalive_timeout": 65, **json.loads(args.settings)})
        try:
            lab.setup({"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"]}, suites={"gw2": "trixie"})
            lab.deploy()
            FakeProviderClient(lab.provider_url).stream(chunks=5, delay=0.0)
            gws = {}
            for name in ("gw1", "gw2"):
                gw = Gateway(lab, name)
                py = gw.sh(f"{gw.L.venv}/bin/python3 -c 'import platform; print(platform.python_version())'").strip()
                gws[f"py{py}"] = gw
            kits = {label: (gw, gw.kit_ports, [gw.L.instance(p) for p in gw.kit_ports]) for label, gw in gws.items()}
            rows = [measure(gw, label, ports, units, rates, args.seconds) for label, (gw, ports, units) in kits.items()]
            alternating = cpu_rounds(kits, args.cpu_rounds, args.cpu_rate, args.seconds) if args.cpu_rounds else None
        finally:
            lab.stop()
    print(f"\nthe kit's launch per Python, rates held {args.seconds:.0f} s each, 20% streams, open loop")
    print(f"{'python':<11} {'held/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu s/1k':>9} {'RSS MB':>7} {'PSS MB':>7} {'cgrp MB':>7}")
    for r in rows:
        b = r["best"] or {"rate": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "cpu_s_per_1000": float("nan")}
        print(f"{r['name']:<11} {b['rate']:>7.0f} {b['p50_ms']:>7.1f} {b['p99_ms']:>7.1f} {b['cpu_s_per_1000']:>9.1f} "
              f"{r['rss_mb']:>7.0f} {r['pss_mb']:>7.0f} {r['current_mb']:>7.0f}")
    if alternating:
        print(f"CPU s/1,000 at {args.cpu_rate:.0f}/s, {args.cpu_rounds} alternating rounds of {args.seconds:.0f} s:")
        for name, values in alternating.items():
            print(f"  {name:<11} median {statistics.median(values):5.1f}   rounds " + " ".join(f"{v:.1f}" for v in values))
        a, b = list(alternating.values())
        ratios = [y / x for x, y in zip(a, b)]
        print(f"  {list(alternating)[1]} / {list(alternating)[0]} within each round: median "
              f"{statistics.median(ratios):.2f}   " + " ".join(f"{r:.2f}" for r in ratios))
    Path(__file__).with_name("gateway-pythons.json").write_text(json.dumps({"rows": rows, "alternating_cpu": alternating},
                                                                             indent=1))


def wrk_rate(gw: Gateway, connections: int, seconds: int) -> float | None:
    """Debian's wrk, closed loop, non-streamed only: the top throughput the generator should not beat."""
    if not shutil.which("wrk"):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write('wrk.method = "POST"\nwrk.body = \'' + json.dumps(BODY) + '\'\n'
                'wrk.headers["Content-Type"] = "application/json"\n'
                f'wrk.headers["Authorization"] = "{gw.headers["Authorization"]}"\n')
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", f.name, gw.url],
                         capture_output=True, text=True).stdout
    Path(f.name).unlink()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return float(m.group(1)) if m and not non2xx else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30, help="how long each rate is held")
    ap.add_argument("--rates", default="20,40,60,80,100,120,140,160,200,240")
    ap.add_argument("--soak", type=int, default=0, help="requests sent to the kit at its highest rate (ContextVar count)")
    ap.add_argument("--only", default="kit,stock-1,stock-N")
    ap.add_argument("--settings", default="{}", help="JSON settings for the kit's deploy, e.g. '{\"litellm_workers\": 2}'")
    ap.add_argument("--cpu-rounds", type=int, default=0,
                    help="then alternate the kit and stock-1 (both running) this many rounds at --cpu-rate: CPU per request")
    ap.add_argument("--cpu-rate", type=float, default=60)
    ap.add_argument("--pythons", action="store_true", help="the kit on Python 3.11 (Debian 12) against 3.13 (Debian 13)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.pythons:
        return pythons(args, rates)
    only = args.only.split(",")
    base = sb.ensure_base(seed_debs=KIT_PACKAGES)
    rows, soak, alternating = [], None, None
    with tempfile.TemporaryDirectory(prefix="gk-bench-gw-") as tmp:
        # Client keep-alive on (the kit's default is off, see README): this bench measures LiteLLM's launch, not a
        # TLS handshake per request, and its figures in the README were taken that way.
        lab = Lab.create(Path(tmp), base=base, settings={"nginx_keepalive_timeout": 65, **json.loads(args.settings)})
        try:
            lab.setup(GROUPS)
            lab.deploy()
            # Streams of 5 chunks without pauses: the latencies are the gateway's, not the provider's pacing.
            FakeProviderClient(lab.provider_url).stream(chunks=5, delay=0.0)
            gw = Gateway(lab)
            workers = int(lab.host_settings("gw1")["litellm_workers"])
            total_workers = workers * len(gw.kit_ports)
            kit_units = [gw.L.instance(p) for p in gw.kit_ports]
            direct = asyncio.run(open_loop(f"{lab.provider_url}/v1/chat/completions", {"Authorization": "Bearer x"},
                                           rates[0], min(args.seconds, 15)))
            print(f"provider direct at {rates[0]:.0f}/s: p50 {direct['p50_ms']:.1f} ms  p99 {direct['p99_ms']:.1f} ms", flush=True)
            plan = [("kit", gw.kit_ports, kit_units, None), ("stock-1", [STOCK_PORT], [STOCK_UNIT], 0),
                    (f"stock-{total_workers}", [STOCK_PORT], [STOCK_UNIT], total_workers)]
            for name, ports, units, stock_workers in plan:
                if name not in only and not (name.startswith("stock-") and name != "stock-1" and "stock-N" in only):
                    continue
                if stock_workers is not None:
                    gw.start_stock(stock_workers or None)
                row = measure(gw, name, ports, units, rates, args.seconds)
                row["wrk"] = wrk_rate(gw, 32, 15)
                if name == "kit" and args.soak and row["best"]:
                    since = time.time()
                    s = asyncio.run(open_loop(gw.url, gw.headers, row["best"]["rate"], args.soak / row["best"]["rate"]))
                    soak = {"rate": row["best"]["rate"], "sent": s["sent"], "failed": s["failed"], "http500": s["http500"],
                            "contextvar": gw.contextvar_errors(units, since), "p99_ms": s["p99_ms"],
                            "statuses": s["statuses"]}
                    Path(__file__).with_name("gateway-soak.log").write_text(
                        gw.journal(units, since) + gw.sh("tail -n 200 /var/log/nginx/error.log; "
                                                         "grep -v '\" 200 ' /var/log/nginx/access.log | tail -n 200", check=False))
                if stock_workers is not None:
                    gw.stop_stock()
                rows.append(row)
            if args.cpu_rounds:
                gw.start_stock(None)
                alternating = cpu_rounds({"kit": (gw, gw.kit_ports, kit_units), "stock-1": (gw, [STOCK_PORT], [STOCK_UNIT])},
                                         args.cpu_rounds, args.cpu_rate, args.seconds)
                gw.stop_stock()
            gw.point_nginx(gw.kit_ports)
        finally:
            lab.stop()

    print(f"\nprovider direct p50/p99 at {rates[0]:.0f}/s: {direct['p50_ms']:.1f}/{direct['p99_ms']:.1f} ms; "
          f"rates held {args.seconds:.0f} s each, 20% streams, open loop")
    print(f"{'contender':<10} {'held/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'+p50':>6} {'+p99':>6} {'cpu s/1k':>9} "
          f"{'RSS MB':>7} {'PSS MB':>7} {'cgrp MB':>7} {'500s':>5} {'ctxvar':>6} {'restart':>7} {'wrk/s':>6}")
    for r in rows:
        b = r["best"] or {"rate": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "cpu_s_per_1000": float("nan")}
        print(f"{r['name']:<10} {b['rate']:>7.0f} {b['p50_ms']:>7.1f} {b['p99_ms']:>7.1f} "
              f"{b['p50_ms'] - direct['p50_ms']:>6.1f} {b['p99_ms'] - direct['p99_ms']:>6.1f} {b['cpu_s_per_1000']:>9.1f} "
              f"{r['rss_mb']:>7.0f} {r['pss_mb']:>7.0f} {r['current_mb']:>7.0f} {r['http500']:>5} {r['contextvar']:>6} {r['restarts']:>7} "
              f"{(r['wrk'] or float('nan')):>6.0f}")
    # CPU per request also at one rate every contender held: at its own top rate a contender that holds more
    # shares the 2 cores with more generator and nginx work, which costs each request more CPU.
    held_rates = [r["best"]["rate"] for r in rows if r["best"]]
    common = min(held_rates) if held_rates else None
    at_common = {r["name"]: next((s["cpu_s_per_1000"] for s in r["steps"] if s["rate"] == common), None) for r in rows}
    if common:
        print(f"cpu s/1k at {common:.0f}/s (held by all): "
              + "  ".join(f"{name} {v:.1f}" for name, v in at_common.items() if v is not None))
    stock1 = next((r for r in rows if r["name"] == "stock-1" and r["best"]), None)
    kit = next((r for r in rows if r["name"] == "kit" and r["best"]), None)
    if stock1 and kit:
        print(f"kit vs stock-1: {kit['best']['rate'] / stock1['best']['rate']:.2f}x the rate (target >= 2), "
              f"{kit['best']['cpu_s_per_1000'] / stock1['best']['cpu_s_per_1000']:.2f}x the CPU per request at each one's "
              f"top rate, {at_common['kit'] / at_common['stock-1']:.2f}x at {common:.0f}/s (target <= 0.8)")
    if alternating:
        print(f"CPU s/1,000 at {args.cpu_rate:.0f}/s, {args.cpu_rounds} alternating rounds of {args.seconds:.0f} s "
              f"(both running, nginx pointed at one at a time):")
        for name, values in alternating.items():
            print(f"  {name:<8} median {statistics.median(values):5.1f}   rounds " + " ".join(f"{v:.1f}" for v in values))
        ratios = [k / s_ for k, s_ in zip(alternating["kit"], alternating["stock-1"])]
        print(f"  kit / stock-1 within each round: median {statistics.median(ratios):.2f}   "
              + " ".join(f"{r:.2f}" for r in ratios) + " (target <= 0.8)")
    if soak:
        print(f"soak: {soak['sent']} requests to the kit at {soak['rate']:.0f}/s: {soak['failed']} failed, "
              f"{soak['http500']} HTTP 500, {soak['contextvar']} ContextVar errors, p99 {soak['p99_ms']:.0f} ms; "
              f"answers {soak['statuses']}")
    Path(__file__).with_suffix(".json").write_text(json.dumps({"direct": direct, "rows": rows, "soak": soak,
                                                               "cpu_at_common_rate": {"rate": common, **at_common},
                                                               "alternating_cpu": alternating}, indent=1))


if __name__ == "__main__":
    main()
