"""Deaths of LiteLLM processes on a lab gateway (kill -9 of an instance or of a worker, an OOM kill), shared by
the end-to-end tests and bench/crash.py, and how requests around a death are told apart: in flight on the
dying process (may fail) or started after it (must be served). And a partition: a host's port that silently
drops every packet sent to it (no refusal: what a cut network or a frozen server looks like to a client). And
the switch killed after each of its steps, one step per gateway at once (steps_on_each_gateway)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from lab.checks import OOM_ALLOCATOR, unit_memory_cgroup, wait_until


def steps_on_each_gateway(gws: list[str], steps, prepare, run) -> list[str]:
    """`steps` in turns of one step per gateway, the gateways of a turn side by side (a switch touches only its own
    host): prepare(runs) once per turn ([(gw, step)]: the change they all make), then run(gw, step, prepared) on each.
    Returns every gateway's failure ("gw, killed after step: ..."), not only the first."""
    errors = []
    for turn in range(0, len(steps), len(gws)):
        runs = list(zip(gws, steps[turn:turn + len(gws)]))
        prepared = prepare(runs)
        with ThreadPoolExecutor(len(runs)) as pool:
            futures = [(gw, step, pool.submit(run, gw, step, prepared)) for gw, step in runs]
        for gw, step, future in futures:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - every gateway's failure is reported, not only the first
                errors.append(f"{gw}, killed after {step}: {type(exc).__name__}: {exc}")
    return errors


def main_pid(host, unit: str) -> int:
    return int(host.run(f"systemctl show -p MainPID --value {unit}").stdout.strip())


def kill_9(host, pid: int, port: int | None = None) -> float:
    """kill -9, then wait until the process is dead; returns that moment (monotonic). SIGKILL is sent at once,
    but the kernel takes a while to tear a large process down (tens of ms, longer on a busy host), and until
    its files are closed its listening socket still completes connections, which are then reset: requests in
    flight on the dying process (seen: a 502 begun after the SIGKILL, 42 ms long, ending 5 ms before systemd
    saw the process die).
    Dead = its port no longer listens (an instance's main process), or it is gone or a zombie (a worker,
    whose listening socket its supervisor holds)."""
    gone = f"! ss -Hltn 'sport = :{port}' | grep -q ." if port else f"! grep -qs '^State:.*[RSDT]' /proc/{pid}/status"
    host.run(f"kill -9 {pid}; for i in $(seq 2000); do {gone} && exit 0; sleep 0.005; done; exit 1")
    return time.monotonic()


def oom_kill(host, unit: str) -> float:
    """The kernel's OOM killer ends the unit's main process: a process put in the unit's memory cgroup allocates
    past MemoryMax, and the main process's raised OOM score makes it the kernel's first choice. Returns when
    the allocator has ended (the kernel's second choice), so after the death (monotonic)."""
    cg = unit_memory_cgroup(host, unit)
    host.put("/root/alloc.py", OOM_ALLOCATOR)
    host.run(f"echo 1000 > /proc/{main_pid(host, unit)}/oom_score_adj")
    host.run(f"python3 /root/alloc.py {cg} 0; true", check=False, timeout=180)
    return time.monotonic()


def kill_a_worker(host, unit: str) -> float:
    """kill -9 of one worker of a multi-worker instance; returns once uvicorn's supervisor has replaced it."""
    supervisor = main_pid(host, unit)
    workers = host.run(f"pgrep -P {supervisor}").stdout.split()
    if len(workers) < 2:
        raise RuntimeError(f"{unit} has no workers to kill (one process per instance): {workers}")
    killed_at = kill_9(host, int(workers[0]))
    wait_until(lambda: len(set(host.run(f"pgrep -P {supervisor}").stdout.split()) - {workers[0]}) >= 2, 120,
               what="uvicorn to replace the worker")
    if main_pid(host, unit) != supervisor:
        raise RuntimeError(f"{unit} restarted: the supervisor died with its worker")
    return killed_at


def restarted_and_ready(host, L, unit: str, pid: int, port: int) -> float:
    """Waits until systemd has started the dead instance again and it serves; returns that moment (monotonic)."""
    wait_until(lambda: main_pid(host, unit) not in (0, pid), 30, what="systemd to restart it")
    if host.run(f"python3 {L.program('instance.py')} wait-ready {port} --timeout 120", timeout=130,
                check=False).returncode != 0:
        raise RuntimeError(f"{unit} did not become ready after its restart")
    return time.monotonic()


def after_death(load, killed_at: float) -> tuple[list, list]:
    """(failures of requests that started after the death, failures of requests in flight at it)."""
    after = [r for r in load.failures if r[0] > killed_at]
    in_flight = [r for r in load.failures if r[0] <= killed_at]
    return after, in_flight


@contextlib.contextmanager
def dropped(lab, host: str, port: int):
    """Every TCP packet to `host`:`port` dropped on the lab's bridge (nftables' bridge family on this machine: the
    hosts themselves are left as they are) while the block runs; removed afterwards whatever happens."""
    table = f"gkdrop{lab.sandbox.bridge[-8:]}"
    rule = (f"table bridge {table} {{\n chain forward {{\n  type filter hook forward priority -200; policy accept;\n"
            f"  ip daddr {lab.hosts[host].address} tcp dport {port} drop\n }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=rule, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", table], check=True)
