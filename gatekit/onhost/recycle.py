"""gatekit-recycle: graceful recycling of the live LiteLLM instances of ONE gateway host, one at a time.

A single-worker instance cannot recycle itself without dropping what it serves (it exits; equally loaded, the
instances of a set reached a request count together). So this program, run by gatekit-recycle.timer every
litellm_recycle_interval seconds, picks at most one instance of the live set that passed its memory threshold
(litellm_recycle_memory_percent of MemoryHigh) or its age (litellm_recycle_max_age), never one younger than
litellm_recycle_min_age, and:
  1. takes it out of nginx's upstream (the file as the deploy renders it: upstream.py; nginx -t, graceful reload,
     done once every nginx worker from before the reload stopped taking connections): new requests go to the others;
  2. restarts it (systemd stops it gracefully: its in-flight requests, streams included, finish first);
  3. waits for /health/readiness, then puts it back in the upstream.
Never two of a set together: it runs only when every instance of the live set is active and in the upstream (or
puts back one a cut-off run left out, once it is ready), and never beside a switch: it holds the host's switch lock
(gatekit-rotate takes the same lock for its whole run) and skips the round when the lock is held or a switch
journal exists. A set of one instance is never recycled (nothing else would serve meanwhile).

Installed beside rotate.py (whose nginx and unit helpers it uses) and layout.json; Python standard library only,
run as root by the system's python3 with no site directories, in the same sandbox as gatekit-rotate.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import time

if __package__:
    from . import probe, rotate
    from .layout import Layout
else:  # on the host: uploaded beside this program
    import probe
    import rotate
    from layout import Layout


def log(msg: str, err: bool = False):
    print(f"gatekit-recycle: {msg}", file=sys.stderr if err else sys.stdout, flush=True)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def reason(props: dict[str, str], now_us: int, memory_percent: int, max_age: float, min_age: float) -> str | None:
    """Why this instance (its `systemctl show` properties) is due for recycling, or None. now_us: CLOCK_MONOTONIC in
    microseconds, the clock of systemd's ...TimestampMonotonic."""
    started = _int(props.get("ActiveEnterTimestampMonotonic"))
    if props.get("ActiveState") != "active" or not started:
        return None
    age = (now_us - started) / 1e6
    if age < min_age:
        return None
    current, high = _int(props.get("MemoryCurrent")), _int(props.get("MemoryHigh"))
    if memory_percent and current is not None and high and current * 100 >= high * memory_percent:
        return f"memory {current >> 20} MiB >= {memory_percent}% of MemoryHigh {high >> 20} MiB"
    if max_age and age >= max_age:
        return f"running {age:.0f} s >= litellm_recycle_max_age {max_age:g} s"
    return None


def recycle_one(L: Layout, args) -> int:
    """One round, under the switch lock. 0 when nothing needed doing or the recycle succeeded."""
    if os.path.exists(L.journal_file):
        log("a switch is pending (journal present): not this round")
        return 0
    live = L.live_set(probe.read(L.live_file) or "")
    served = rotate.upstream_ports()
    missing = [p for p in live if p not in served]
    if missing:  # a cut-off round left one out: back in once it is ready (nothing else this round)
        for port in missing:
            rotate.wait_ready(port, args.ready_timeout)
        rotate.set_upstream(live)
        log(f"put {rotate.named(missing)} back behind nginx")
        return 0
    if len(live) < 2:
        return 0
    props = {p: probe.unit_props(L.instance(p)) for p in live}
    if set(served) != set(live) or any(props[p].get("ActiveState") != "active" for p in live):
        log(f"not every instance of {rotate.named(live)} serves (nginx: {rotate.named(served)}): not this round")
        return 0
    now_us = int(time.monotonic() * 1e6)
    due = ((p, why) for p in live if (why := reason(props[p], now_us, args.memory_percent, args.max_age, args.min_age)))
    port, why = next(due, (None, None))
    if port is None:
        return 0
    unit = L.instance(port)
    t0 = time.monotonic()
    log(f"recycling {unit}: {why}")
    rotate.set_upstream([p for p in live if p != port])  # nginx sends it nothing new from here
    try:
        rotate.systemctl("restart", unit)  # graceful stop: what it serves finishes first
        rotate.wait_ready(port, args.ready_timeout)
    except (RuntimeError, OSError) as exc:
        # Left out of nginx: the others serve; the next round puts it back once it is ready.
        log(f"{unit} not back after its restart: {exc}", err=True)
        return 1
    rotate.set_upstream(live)
    log(f"recycled {unit} in {time.monotonic() - t0:.1f} s ({why})")
    return 0


def main_with(L: Layout, args) -> int:
    with open(L.switch_lock, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("a switch runs (lock held): not this round")
            return 0
        rotate.LAYOUT = L  # rotate's nginx and unit helpers act on this host's layout
        return recycle_one(L, args)


def parser() -> argparse.ArgumentParser:
    """As gatekit-recycle.service passes them from the host's settings (gatekit/defaults.py defaults each)."""
    ap = argparse.ArgumentParser(prog="gatekit-recycle")
    ap.add_argument("--memory-percent", type=int, required=True, help="litellm_recycle_memory_percent (0 = off)")
    ap.add_argument("--max-age", type=float, required=True, help="litellm_recycle_max_age, seconds (0 = off)")
    ap.add_argument("--min-age", type=float, required=True, help="litellm_recycle_min_age, seconds")
    ap.add_argument("--ready-timeout", type=float, required=True, help="litellm_ready_timeout, seconds")
    return ap


def main():
    sys.exit(main_with(Layout.beside(__file__), parser().parse_args()))


if __name__ == "__main__":
    main()
