"""What Prometheus cannot see of a gateway's LiteLLM instances, written for node_exporter's textfile collector.

Run as root by gatekit-unitstats.timer (roles/monitoring.py) on every gateway of a monitored fleet:
    python3 -E -s -S {lib}/unitstats.py --out DIR/gatekit.prom --secret NAME=ENVVAR ...
Metrics:
- gatekit_unit_memory_bytes / _memory_max_bytes / _memory_high_bytes{unit}: the cgroup's memory against the
  unit's limits (guard #1: silent OOM);
- gatekit_stale_key{port, secret}: 1 when litellm@PORT holds a key other than the host's current credential
  (by fingerprint of the credential systemd decrypted for it and of its workers' /proc/PID/environ, never
  the value), or a process of it started before that credential was last written (guard #2: rotated key,
  old key still used);
- gatekit_dependency_reachable{dependency, target}: 1 when the Redis or PostgreSQL the instances use (from
  litellm.env) answered a connection from this gateway within DEPENDENCY_TIMEOUT, else 0: the gateway's own view,
  which sees a cut between it and a data host that the data host's exporters (still answering) cannot;
- gatekit_unitstats_timestamp_seconds: when this ran (an alert-free way to see it stopped).
Python stdlib only; reads layout.json beside it. Never prints or writes a secret.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __package__:
    from .layout import Layout
    from .probe import (all_parents, descendants, env_file, environ, fingerprint, postgres_check, proc_stat, read,
                        redis_check, unit_props)
    from .rotate import write_atomic
else:  # on the host: uploaded beside this program
    from layout import Layout
    from probe import (all_parents, descendants, env_file, environ, fingerprint, postgres_check, proc_stat, read,
                       redis_check, unit_props)
    from rotate import write_atomic

# Seconds a dependency has to answer a connection (a LAN answers in milliseconds; a cut path never does). Both are
# tried in each run, which the timer repeats every scrape interval (5 s or more).
DEPENDENCY_TIMEOUT = 2.0


def stale_keys(layout: Layout, port: int, main_pid: int, variables: dict[str, str], parents: dict[int, int],
               proc: str = "/proc") -> dict[str, int]:
    """{secret: 1 if the instance holds another key than the host's current credential, or a process of it
    started before that credential was written; else 0}.

    What an instance holds: the credential systemd decrypted for it when it started (the launcher reads it
    into its own environment, which /proc/PID/environ does not show: that file is the environment at exec),
    and the environment of each spawned worker (which is)."""
    held = {}
    for name in variables:
        # Through the instance's own root: systemd shows a unit's credentials to that unit's namespace only.
        value = read(f"{proc}/{main_pid}/root{layout.runtime_credential(port, name)}")
        held[name] = {fingerprint(value.rstrip("\n")) if value is not None else None}
    started = []
    for pid in descendants(main_pid, parents):
        env = environ(pid, proc)
        for name, var in variables.items():
            if var in env:
                held[name].add(fingerprint(env[var]))
        st = proc_stat(pid, proc)
        started.append(st[1] if st else None)
    stale = {name: 0 for name in variables}
    for name in variables:
        current = (read(layout.cred_fingerprint(name)) or "").strip()
        try:
            written = os.stat(layout.cred(name)).st_mtime
        except OSError:
            continue
        if current and held[name] - {None, current}:
            stale[name] = 1
        # A second of slack: start times are known to the clock tick, file times to the write.
        if any(s is not None and s < written - 1 for s in started):
            stale[name] = 1
    return stale


def dependencies(env: dict[str, str], timeout: float = DEPENDENCY_TIMEOUT) -> list[tuple[str, str, int]]:
    """[(dependency, "host:port", 1 if it answered within timeout else 0)] for the Redis and the usage PostgreSQL
    of litellm.env: a connection without credentials, which either server answers (PONG or NOAUTH; a password
    request or a refusal) when the path to it works. A dropped path times out; a stopped server refuses."""
    out = []
    if "REDIS_HOST" in env:
        r = redis_check(env["REDIS_HOST"], int(env["REDIS_PORT"]), 0, None, timeout)
        out.append(("redis", r["target"], 0 if "error" in r else 1))
    if "GK_USAGE_PG" in env:
        pg = postgres_check(env["GK_USAGE_PG"], None, timeout)
        out.append(("postgres", pg["target"], 0 if pg["without_auth"].startswith("error:") else 1))
    return out


def _num(value: str) -> str | None:
    return value if value.isdigit() else None  # "infinity" and "[not set]" are no numbers


def render(layout: Layout, variables: dict[str, str], proc: str = "/proc") -> str:
    units = [layout.instance(p) for p in layout.litellm_ports]
    props = {unit: unit_props(unit) for unit in units}
    parents = all_parents(proc)
    lines = [
        "# HELP gatekit_unit_memory_bytes Memory of the unit's cgroup now.",
        "# TYPE gatekit_unit_memory_bytes gauge",
        "# HELP gatekit_unit_memory_max_bytes The unit's MemoryMax (absent when unlimited).",
        "# TYPE gatekit_unit_memory_max_bytes gauge",
        "# HELP gatekit_unit_memory_high_bytes The unit's MemoryHigh (absent when unlimited).",
        "# TYPE gatekit_unit_memory_high_bytes gauge",
        "# HELP gatekit_stale_key 1 when a running instance holds a key other than the host's current credential.",
        "# TYPE gatekit_stale_key gauge",
    ]
    for port, unit in zip(layout.litellm_ports, units):
        p = props.get(unit, {})
        for metric, key in (("memory", "MemoryCurrent"), ("memory_max", "MemoryMax"), ("memory_high", "MemoryHigh")):
            value = _num(p.get(key, ""))
            if value is not None and p.get("ActiveState") == "active":
                lines.append(f'gatekit_unit_{metric}_bytes{{unit="{unit}"}} {value}')
        pid = int(p.get("MainPID") or 0)
        if p.get("ActiveState") == "active" and pid > 0:
            for name, stale in sorted(stale_keys(layout, port, pid, variables, parents, proc).items()):
                lines.append(f'gatekit_stale_key{{port="{port}",secret="{name}"}} {stale}')
    lines += ["# HELP gatekit_unitstats_timestamp_seconds When gatekit-unitstats last ran.",
              "# TYPE gatekit_unitstats_timestamp_seconds gauge",
              f"gatekit_unitstats_timestamp_seconds {time.time():.0f}"]
    return "\n".join(lines) + "\n"


def render_dependencies(deps: list[tuple[str, str, int]]) -> str:
    lines = ["# HELP gatekit_dependency_reachable 1 when the dependency answered a connection from this gateway.",
             "# TYPE gatekit_dependency_reachable gauge"]
    lines += [f'gatekit_dependency_reachable{{dependency="{name}",target="{target}"}} {up}' for name, target, up in deps]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="unitstats.py")
    ap.add_argument("--out", required=True, help="the .prom file node_exporter's textfile collector reads")
    ap.add_argument("--secret", action="append", default=[], metavar="NAME=ENVVAR",
                    help="a provider key credential and the variable LiteLLM reads it from")
    # A mode of its own, run by its own unit (gatekit-reach.service): the network, without the root privileges
    # and the /proc view the instance stats need.
    ap.add_argument("--dependencies", action="store_true",
                    help="write only gatekit_dependency_reachable: Redis and PostgreSQL of litellm.env, from here")
    args = ap.parse_args(argv)
    layout = Layout.beside(__file__)
    if args.dependencies:
        write_atomic(args.out, render_dependencies(dependencies(env_file(layout.env_file))))
        return 0
    variables = dict(item.split("=", 1) for item in args.secret)
    write_atomic(args.out, render(layout, variables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
