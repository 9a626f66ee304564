"""Long host-side steps run as transient systemd units, started by one operation and awaited by a later one.

pyinfra runs one operation at a time across all hosts, so a step that takes a minute on one host holds
every other host for that minute. Started in the background, it overlaps the operations in between;
the wait then costs only what is left of it. As a unit (not a shell `&`) it survives a dropped SSH
session, keeps its own journal, and a re-run can tell whether it is still going.
"""

from __future__ import annotations

import shlex


def start_commands(unit: str, description: str, command: str, timeout: int, properties: tuple[str, ...] = ()) -> list[str]:
    """Shell commands that start `command` as the oneshot transient `unit` and return at once."""
    props = " ".join(f"-p {shlex.quote(p)}" for p in ("RemainAfterExit=yes", f"TimeoutStartSec={timeout}", *properties))
    return [
        # A run cut off earlier may still be going, or its finished unit still loaded: clear it first.
        f"systemctl stop {unit} 2>/dev/null || true; systemctl reset-failed {unit} 2>/dev/null || true",
        f"systemd-run --no-block --quiet --unit={unit} --description={shlex.quote(description)} "
        f"--service-type=oneshot {props} {command}",
    ]


def wait_command(unit: str, done: str, failure: str) -> str:
    """Shell command: wait for `unit` to finish and unload it; unless the shell test `done` then holds,
    print the unit's last journal lines and `failure` (which may use $result) to stderr and exit 1."""
    return (
        # Running, or still queued (right after `systemd-run --no-block` the unit may not have started yet).
        f"while [ \"$(systemctl show -P ActiveState {unit})\" = activating ] || "
        f"systemctl list-jobs --no-legend 2>/dev/null | awk '{{print $2}}' | grep -qx {unit}; do sleep 0.5; done; "
        f"result=$(systemctl show -P Result {unit}); inv=$(systemctl show -P InvocationID {unit}); "
        f"systemctl stop {unit} 2>/dev/null || true; systemctl reset-failed {unit} 2>/dev/null || true; "
        f"if ! {{ {done}; }}; then "
        f"[ -n \"$inv\" ] && journalctl _SYSTEMD_INVOCATION_ID=$inv -o cat -n 30 --no-pager >&2; "
        f"echo \"{failure}\" >&2; exit 1; fi"
    )
