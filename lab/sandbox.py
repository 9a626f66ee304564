"""Throwaway Debian 12 test hosts with systemd as PID 1, booted with systemd-nspawn.

Implements the measured recipe in docs/test-hosts.md (shared docs):

* one base root file system built with debootstrap and cached outside any checkout
  (``BASE_CACHE``), overlaid per host (``--overlay=BASE:UPPER:/``), never modified while a host runs;
* one bridge + nft masquerade table + static addresses (systemd-networkd) per sandbox run, named from
  the run id so concurrent runs cannot clash;
* a launcher per host that moves itself into its own cgroups (name=systemd, unified and, optionally,
  a writable v1 memory cgroup for real ``MemoryMax=`` enforcement), gives the container its own
  boot-time/monotonic clocks (time namespace, so ``uptime`` restarts at every boot) and restarts the
  container when it exits with 133 (``systemctl reboot`` inside);
* a state file per run (owner pid, bridge, table, cgroups, launcher pids) so that a later run, or
  ``python -m lab down``, removes whatever a killed run left behind.

Typical use::

    with Sandbox() as sb:
        gw, db = sb.boot(["gw1", "db1"])
        gw.run("systemctl is-system-running --wait", check=False)
        write_inventory(tmp / "inventory.py", {"gateways": [gw], "postgres": [db]})

Everything here needs root.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import keyword
import os
import pprint
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

# --------------------------------------------------------------------------------------------------
# Constants and locations
# --------------------------------------------------------------------------------------------------

BASE_CACHE = Path(os.environ.get("GATEKIT_SANDBOX_CACHE", "/var/cache/gatekit-sandbox"))
#: Per-run state files (always small) live here; data (upper dirs, logs) too unless /run is small.
RUN_ROOT = Path(os.environ.get("GATEKIT_SANDBOX_RUN", "/run/gatekit-sandbox"))
#: Where per-run data goes when /run is a RAM file system or has too little space.
ALT_DATA_ROOT = Path("/var/tmp/gatekit-sandbox")
#: Minimum free space for keeping host upper dirs under /run.
MIN_RUN_FREE_BYTES = 8 * 1024**3

SUITE = "bookworm"  # Debian 12: the default host
#: Debian releases a sandbox host can run (test-hosts.md: trixie's systemd 257 boots with these flags here).
SUITES = ("bookworm", "trixie")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_INCLUDE = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "sudo",
    "iproute2",
    "ca-certificates",
)
#: Units that only make noise or compete with tests on throwaway hosts.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "getty@tty1.service",
)
#: binary -> Debian package providing it, for the machine that runs the sandbox.
MACHINE_BINARIES = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nft": "nftables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "unshare": "util-linux",
}

APT_LISTS = Path("/var/lib/apt/lists")  # the machine's, to know whether apt-get update is needed

SUBNET_PREFIX = "10.77"
FIRST_HOST_OCTET = 11
NSPAWN_REBOOT_EXIT = 133
STATE_VERSION = 1
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "gatekit-"
BRIDGE_PREFIX = "gk"
TABLE_PREFIX = "gatekit_"
KEY_NAME = "id_ed25519"
BOOT_TIMEOUT = 60.0

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HOST_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(RuntimeError):
    """A sandbox operation failed (with enough context to see why)."""


class SandboxCommandError(subprocess.CalledProcessError):
    """A command run on a sandbox host failed; the message includes its output."""

    def __init__(self, host: str, returncode: int, cmd, output=None, stderr=None):
        super().__init__(returncode, cmd, output, stderr)
        self.host = host

    def __str__(self) -> str:
        def tail(text) -> str:
            if not text:
                return ""
            if isinstance(text, bytes):
                text = text.decode(errors="replace")
            return text[-2000:]

        return (
            f"command on {self.host} exited {self.returncode}: {self.cmd}\n"
            f"--- stdout (tail) ---\n{tail(self.output)}\n--- stderr (tail) ---\n{tail(self.stderr)}"
        )


# --------------------------------------------------------------------------------------------------
# Pure helpers (unit tested without hosts)
# --------------------------------------------------------------------------------------------------


def new_run_id() -> str:
    return secrets.token_hex(3)


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id):
        raise ValueError(f"invalid sandbox run id {run_id!r}: use [A-Za-z0-9_.-], at most 64 characters")
    return run_id


def validate_host_name(name: str) -> str:
    if not isinstance(name, str) or not _HOST_NAME_RE.match(name):
        raise ValueError(
            f"invalid sandbox host name {name!r}: lowercase letters, digits and '-', 1-32 characters"
        )
    return name


def run_tag(run_id: str) -> str:
    """Short name fragment for a run: the id itself when short and plain, else a hash of it."""
    validate_run_id(run_id)
    if re.fullmatch(r"[a-z0-9]{1,10}", run_id):
        return run_id
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


@dataclasses.dataclass(frozen=True)
class RunNames:
    run_id: str
    tag: str
    bridge: str  # network interface name, <= 15 characters
    table: str  # nft table (family ip)
    cgroup: str  # directory name below each cgroup hierarchy


def derive_names(run_id: str) -> RunNames:
    tag = run_tag(run_id)
    bridge = f"{BRIDGE_PREFIX}{tag}"
    assert len(bridge) <= 15, bridge
    return RunNames(
        run_id=run_id,
        tag=tag,
        bridge=bridge,
        table=f"{TABLE_PREFIX}{tag}",
        cgroup=f"{CGROUP_PREFIX}{run_id}",
    )


def machine_name(tag: str, host: str) -> str:
    """nspawn machine name: prefixed with the run tag, because nspawn names the host-side veth
    ``vb-<machine>`` and two concurrent runs with the same host names must not collide."""
    return f"{tag}-{host}"


def subnet_for(index: int) -> ipaddress.IPv4Network:
    if not 1 <= index <= 254:
        raise ValueError(f"subnet index must be 1..254, got {index}")
    return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{index}.0/24")


def gateway_for(index: int) -> str:
    return f"{SUBNET_PREFIX}.{index}.1"


def host_address(index: int, ordinal: int) -> str:
    """Address of the ordinal-th host (0-based) of a run: .11, .12, ..."""
    octet = FIRST_HOST_OCTET + ordinal
    if not FIRST_HOST_OCTET <= octet <= 254:
        raise ValueError(f"no address left for host number {ordinal + 1} in {subnet_for(index)}")
    return f"{SUBNET_PREFIX}.{index}.{octet}"


def preferred_subnet_index(run_id: str) -> int:
    return 2 + int(hashlib.sha256(run_id.encode()).hexdigest()[:8], 16) % 250


def pick_subnet_index(
    run_id: str,
    existing: Iterable[ipaddress.IPv4Network],
    reserved: Iterable[int] = (),
    requested: int | None = None,
) -> int:
    """Choose N for 10.77.N.0/24: derived from the run id, skipping subnets that overlap any
    existing address/route (``existing``) or that another live run reserved."""
    nets = [n for n in existing if n.prefixlen > 0]  # a default route overlaps everything
    reserved = set(reserved)

    def free(i: int) -> bool:
        candidate = subnet_for(i)
        return i not in reserved and not any(candidate.overlaps(n) for n in nets)

    if requested is not None:
        if not free(requested):
            raise SandboxError(f"subnet {subnet_for(requested)} is already in use on this machine")
        return requested
    start = preferred_subnet_index(run_id)
    for step in range(254):
        i = (start - 1 + step) % 254 + 1
        if free(i):
            return i
    raise SandboxError(f"no free {SUBNET_PREFIX}.N.0/24 subnet left on this machine")


def render_network_file(address: str, gateway: str, dns: Sequence[str] = ()) -> str:
    lines = [
        "[Match]",
        "Name=host0",
        "",
        "[Network]",
        f"Address={address}/24",
        f"Gateway={gateway}",
    ]
    lines += [f"DNS={d}" for d in dns]
    lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no", ""]
    return "\n".join(lines)


def parse_nameservers(resolv_conf: str) -> list[str]:
    out = []
    for line in resolv_conf.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                if ipaddress.ip_address(parts[1]).version == 4:
                    out.append(parts[1])
            except ValueError:
                pass
    return out


def parse_debian_mirror(sources: str, suite: str = SUITE) -> str | None:
    """First URI of a deb822 stanza that carries ``suite`` (the main archive, not security)."""
    for stanza in re.split(r"\n\s*\n", sources):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if suite in fields.get("suites", "").split() and fields.get("uris"):
            return fields["uris"].split()[0]
    for line in sources.splitlines():  # one-line format
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            uri_idx = 2 if parts[1].startswith("[") else 1
            if len(parts) > uri_idx + 1 and parts[uri_idx + 1] == suite:
                return parts[uri_idx]
    return None


def base_dir_name(extra_packages: Sequence[str] = (), seed_debs: Sequence[str] = (), suite: str = SUITE) -> str:
    """``base-bookworm`` for the plain base (``base-trixie`` for Debian 13); variants get a short hash of their
    package lists, so cold and warm (seeded package cache) bases coexist."""
    if suite not in SUITES:
        raise SandboxError(f"suite {suite!r}: not one of {', '.join(SUITES)}")
    extra, seed = sorted(set(extra_packages)), sorted(set(seed_debs))
    if not extra and not seed:
        return f"base-{suite}"
    digest = hashlib.sha256(json.dumps({"extra": extra, "seed": seed}).encode()).hexdigest()[:8]
    return f"base-{suite}-{digest}"


def choose_data_root(run_fstype: str, run_free_bytes: int) -> str:
    """'run' to keep host upper dirs under /run, 'var' for /var/tmp (RAM file system or too small)."""
    if run_fstype in ("tmpfs", "ramfs") or run_free_bytes < MIN_RUN_FREE_BYTES:
        return "var"
    return "run"


def is_stale(state: Mapping, pid_alive: Callable[[int, int | None], bool]) -> bool:
    """A run's state is stale (a leftover) when its owner process is gone."""
    pid = state.get("owner_pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    return not pid_alive(pid, state.get("owner_start"))


def partition_states(
    states: Iterable[Mapping], pid_alive: Callable[[int, int | None], bool]
) -> tuple[list[Mapping], list[Mapping]]:
    """Split run states into (live, stale)."""
    live, stale = [], []
    for st in states:
        (stale if is_stale(st, pid_alive) else live).append(st)
    return live, stale


def orphan_names(present: Iterable[str], prefix: str, referenced: Iterable[str]) -> list[str]:
    """Resources with our prefix that no run state (live or stale) references."""
    referenced = set(referenced)
    return sorted(n for n in present if n.startswith(prefix) and n not in referenced)


def default_host_data(host: "Host") -> dict:
    return {
        "ssh_user": "root",
        "ssh_key": str(host.key_path),
        "ssh_strict_host_key_checking": "off",
        "ssh_known_hosts_file": "/dev/null",
        "private_address": host.address,
        "sandbox_name": host.name,
    }


def _check_literal(value, where: str) -> None:
    try:
        ok = ast.literal_eval(repr(value)) == value
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        ok = False
    if not ok:
        raise TypeError(f"inventory data {where} is not a plain Python literal: {value!r}")


def render_inventory(groups: Mapping[str, Sequence["Host"]], data: Mapping | None = None,
                     spec_file: Path | None = None, inventory_file: Path | None = None) -> str:
    """Text of a pyinfra 3 inventory module: one list of ``(address, data)`` tuples per group.
    Host data = harness defaults, then ``data`` (global), then the host's own ``Host.data``.
    With ``spec_file``: a gatekit inventory (gatekit.inventory.groups validates spec, settings and vault)."""
    data = dict(data or {})
    _check_literal(data, "(global)")
    out = [
        '"""pyinfra inventory of throwaway sandbox hosts (generated by lab.sandbox; do not edit)."""',
        "",
    ]
    if spec_file is not None:
        out += ["from gatekit.inventory import groups as _gatekit_groups", ""]
    for group, hosts in groups.items():
        if not group.isidentifier() or keyword.iskeyword(group) or group.startswith("_"):
            raise ValueError(f"inventory group name must be a public Python identifier: {group!r}")
        entries = []
        for h in hosts:
            host_data = default_host_data(h)
            host_data.update(data)
            host_data.update(h.data)
            _check_literal(host_data, f"of host {h.name}")
            entries.append((h.address, host_data))
        out.append(f"{group} = {pprint.pformat(entries, sort_dicts=False, width=100)}")
        out.append("")
    if spec_file is not None:
        names = list(groups)
        out += [
            f"_g = _gatekit_groups(inventory_file={str(inventory_file)!r}, spec_file={str(spec_file)!r},",
            "                      hosts={" + ", ".join(f"{g!r}: {g}" for g in names) + "})",
            "globals().update(_g)  # every gatekit group, empty ones included, with its group data",
            "",
        ]
    return "\n".join(out)


def write_inventory(path: Path, groups: dict[str, list["Host"]], data: dict | None = None,
                    spec_file: Path | None = None) -> Path:
    """Write a pyinfra 3 inventory file for sandbox hosts (a host may be in several groups)."""
    path = Path(path)
    text = render_inventory(groups, data, spec_file=spec_file, inventory_file=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def render_launcher(
    *,
    name: str,
    cgroup_dirs: Sequence[Path],
    stop_file: Path,
    console_log: Path,
    nspawn_argv: Sequence[str],
    unshare: str = "unshare",
) -> str:
    """Shell launcher of one host: own cgroups, own clocks, restart on reboot (exit 133)."""
    q = shlex.quote
    nspawn = " ".join(q(a) for a in nspawn_argv)
    lines = [
        "#!/bin/bash",
        f"# gatekit sandbox launcher for host {name} (generated; runs detached from the test process)",
        "set -u",
        f"log={q(str(console_log))}",
    ]
    for d in cgroup_dirs:
        lines.append(
            f'echo $$ > {q(str(d))}/cgroup.procs || {{ echo "cannot enter cgroup {d}" >>"$log"; exit 97; }}'
        )
    lines += [
        "rc=0",
        "while :; do",
        f"  [ -e {q(str(stop_file))} ] && break",
        "  off=$(awk '{printf \"%d\", $1 - 1}' /proc/uptime)",
        '  echo "=== gatekit-sandbox: starting (clock offset -$off s) $(date -Is)" >>"$log"',
        f'  {q(unshare)} --fork --time --boottime=-"$off" --monotonic=-"$off" {nspawn} </dev/null >>"$log" 2>&1',
        "  rc=$?",
        '  echo "=== gatekit-sandbox: nspawn exited with $rc $(date -Is)" >>"$log"',
        f"  [ \"$rc\" -eq {NSPAWN_REBOOT_EXIT} ] || break",
        "done",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Small system helpers
# --------------------------------------------------------------------------------------------------


def _env() -> dict:
    env = dict(os.environ)
    path = env.get("PATH", "")
    for p in _SBIN_PATH.split(":"):
        if p not in path.split(":"):
            path = f"{path}:{p}" if path else p
    env["PATH"] = path
    env.setdefault("LC_ALL", "C.UTF-8")
    env["DEBIAN_FRONTEND"] = "noninteractive"
    return env


def _which(binary: str) -> str | None:
    return shutil.which(binary, path=_env()["PATH"])


def _run(argv: Sequence[str], check: bool = True, input: str | None = None, timeout: float | None = 600,
         **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        list(argv), input=input, text=True, capture_output=True, env=_env(), timeout=timeout, **kw
    )
    if check and proc.returncode != 0:
        raise SandboxError(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{(proc.stdout or '')[-2000:]}"
            f"{(proc.stderr or '')[-2000:]}"
        )
    return proc


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a process, None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def pid_start_time(pid: int) -> int | None:
    st = _proc_stat(pid)
    return st[2] if st else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start_time is None or st[2] == start_time


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            kids += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for c in _children(todo.pop()):
            out.append(c)
            todo.append(c)
    return out


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _cgroup_procs(root: Path) -> list[int]:
    pids: list[int] = []
    if not root.is_dir():
        return pids
    for dirpath, _dirs, _files in os.walk(root):
        try:
            pids += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
        except OSError:
            pass
    return pids


def _rmdir_cgroup(root: Path, kill_timeout: float = 10.0) -> None:
    """Remove a cgroup tree depth-first, killing anything still inside first."""
    if not root.is_dir():
        return
    deadline = time.monotonic() + kill_timeout
    while True:
        pids = [p for p in _cgroup_procs(root) if p != os.getpid()]
        if not pids:
            break
        for p in pids:
            _kill(p, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise SandboxError(f"processes {pids} do not leave cgroup {root}")
        time.sleep(0.05)
    for _attempt in range(50):
        busy = False
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError:
                busy = True
        if not busy:
            return
        time.sleep(0.1)
    raise SandboxError(f"cannot remove cgroup {root}")


def _own_cgroup(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _num, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    raise SandboxError(f"this process has no {controller!r} cgroup")


def _check_cgroup_layout() -> None:
    if not (CGROUP_ROOT / "systemd" / "cgroup.procs").exists() or not (
        CGROUP_ROOT / "unified" / "cgroup.procs"
    ).exists():
        raise SandboxError(
            "gatekit sandbox needs the hybrid cgroup layout (v1 name=systemd + cgroup2 at "
            "/sys/fs/cgroup/unified) of the project's machine kind"
        )


def _mount_fstype(path: Path) -> str:
    best, fstype = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def _existing_networks() -> list[ipaddress.IPv4Network]:
    nets: list[ipaddress.IPv4Network] = []
    proc = _run(["ip", "-j", "-4", "addr", "show"], check=False)
    with contextlib.suppress(ValueError):
        for link in json.loads(proc.stdout or "[]"):
            for a in link.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    nets.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    proc = _run(["ip", "-j", "-4", "route", "show", "table", "all"], check=False)
    with contextlib.suppress(ValueError):
        for r in json.loads(proc.stdout or "[]"):
            dst = r.get("dst", "")
            if not dst or dst == "default":
                continue
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _ssh_base_argv(key_path: Path, connect_timeout: int = 5) -> list[str]:
    return [
        "ssh",
        "-i", str(key_path),
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "ServerAliveInterval=15",
    ]


# --------------------------------------------------------------------------------------------------
# Locks: one per cache (base builds, key) and one machine-wide for run state + network resources
# --------------------------------------------------------------------------------------------------


class _FileLock:
    """flock-based lock, re-entrant within this process (signal handlers run cleanup on the main
    thread while it may already hold the lock)."""

    def __init__(self, path_fn: Callable[[], Path]):
        self._path_fn = path_fn
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self):
        self._rlock.acquire()
        if self._depth == 0:
            path = self._path_fn()
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._rlock.release()


_CACHE_LOCK = _FileLock(lambda: BASE_CACHE / ".lock")
_RUN_LOCK = _FileLock(lambda: RUN_ROOT / ".lock")


# --------------------------------------------------------------------------------------------------
# Machine packages, key, base root file system
# --------------------------------------------------------------------------------------------------


def ensure_host_packages() -> None:
    """Install the machine-side packages when one of their binaries is missing (fresh CI machines)."""
    missing = sorted({pkg for binary, pkg in MACHINE_BINARIES.items() if _which(binary) is None})
    if not missing:
        return
    lists = APT_LISTS
    have_lists = lists.is_dir() and any(p.name.endswith("_Packages") for p in lists.iterdir())
    if not have_lists:
        _run(["apt-get", "update"], timeout=600)
    proc = _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=False, timeout=1200)
    if proc.returncode != 0:  # stale lists: refresh once and retry
        _run(["apt-get", "update"], timeout=600)
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=1200)
    still = [b for b in MACHINE_BINARIES if _which(b) is None]
    if still:
        raise SandboxError(f"binaries still missing after apt-get install: {still}")


def key_path() -> Path:
    return BASE_CACHE / KEY_NAME


def ensure_key() -> Path:
    """The harness's ed25519 key pair (private key path returned)."""
    key = key_path()
    with _CACHE_LOCK:
        if not (key.exists() and key.with_suffix(".pub").exists()):
            BASE_CACHE.mkdir(parents=True, exist_ok=True)
            for p in (key, key.with_suffix(".pub")):
                p.unlink(missing_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gatekit-sandbox", "-f", str(key)])
        key.chmod(0o600)
    return key


def machine_mirror() -> str:
    d = Path("/etc/apt/sources.list.d")
    for f in [d / "debian.sources", *sorted(d.glob("*.sources")), Path("/etc/apt/sources.list"),
              *sorted(d.glob("*.list"))]:
        with contextlib.suppress(OSError):
            uri = parse_debian_mirror(f.read_text())
            if uri:
                return uri
    return DEFAULT_MIRROR


def _marker(base: Path) -> Path:
    return base.with_name(base.name + ".complete")


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the process that started it dies (PR_SET_PDEATHSIG)."""
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


#: Builders run in a private mount namespace (debootstrap mounts proc/sys inside the target: they
#: vanish with the namespace) and die with us (pdeathsig -> unshare -> --kill-child), so a killed
#: build never leaves mounts or a process writing into a directory the next build removes.
_PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child"]


def _chroot_sh(root: Path, script: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """Run a shell script chrooted into root with /proc mounted in a private mount namespace."""
    r = shlex.quote(str(root))
    inner = f"mount -t proc proc {r}/proc && exec chroot {r} /bin/sh -ec {shlex.quote(script)}"
    return _run([*_PRIVATE_MOUNTS, "sh", "-ec", inner], timeout=timeout, preexec_fn=_die_with_parent)


def _umount_below(path: Path) -> None:
    """Lazily unmount anything mounted at or below path (deepest first) before removing it."""
    prefix = str(path.resolve()).rstrip("/")
    try:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return
    mounts = [m.replace("\\040", " ") for m in mounts]
    for m in sorted((m for m in mounts if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True):
        _run(["umount", "-l", m], check=False)


def ensure_base(extra_packages: Sequence[str] = (), seed_debs: Sequence[str] = (), suite: str = SUITE) -> Path:
    """Build (once) and return the cached base root file system.

    ``extra_packages`` are added to debootstrap's ``--include``; ``seed_debs`` are only downloaded
    into the base's apt archive cache (with populated package lists): a "warm package cache" base.
    The base is built in ``<name>.partial`` and a ``<name>.complete`` marker is written last, so an
    interrupted build is thrown away and rebuilt.
    """
    ensure_host_packages()
    key = ensure_key()
    base = BASE_CACHE / base_dir_name(extra_packages, seed_debs, suite)
    marker = _marker(base)
    if marker.exists() and base.is_dir():
        return base
    with _CACHE_LOCK:
        if marker.exists() and base.is_dir():
            return base
        partial = base.with_name(base.name + ".partial")
        for leftover in (partial, base):
            if leftover.exists():
                _umount_below(leftover)
                shutil.rmtree(leftover)
        t0 = time.monotonic()
        mirror = machine_mirror()
        include = list(dict.fromkeys([*BASE_INCLUDE, *extra_packages]))
        log = base.with_name(base.name + ".build.log")
        with open(log, "w") as logf:
            proc = subprocess.run(
                [*_PRIVATE_MOUNTS, "debootstrap", "--variant=minbase", f"--include={','.join(include)}",
                 suite, str(partial), mirror],
                stdout=logf, stderr=subprocess.STDOUT, env=_env(), timeout=3600, preexec_fn=_die_with_parent,
            )
        if proc.returncode != 0:
            raise SandboxError(f"debootstrap failed ({proc.returncode}); log {log}:\n{_tail(log)}")
        _configure_base(partial, key.with_suffix(".pub").read_text(), suite)
        _clean_apt(partial)  # debootstrap's own .debs: not part of any "warm cache"
        if seed_debs:
            pkgs = " ".join(shlex.quote(p) for p in seed_debs)
            _chroot_sh(partial, f"apt-get update -q && apt-get install -y -q --download-only {pkgs}")
        partial.rename(base)
        marker.write_text(json.dumps({
            "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - t0, 1),
            "suite": suite, "mirror": mirror, "include": include, "seed_debs": list(seed_debs),
        }, indent=1) + "\n")
    return base


def _clean_apt(root: Path) -> None:
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    for f in (root / "var/cache/apt").glob("*.bin"):
        f.unlink()
    lists = root / "var/lib/apt/lists"
    if lists.is_dir():
        for f in lists.iterdir():
            if f.is_file() and f.name != "lock":
                f.unlink()


def _configure_base(root: Path, pubkey: str, suite: str = SUITE) -> None:
    # harness key for root
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    ak = ssh_dir / "authorized_keys"
    ak.write_text(pubkey)
    ak.chmod(0o600)
    # every host must get its own machine-id (generated at first boot)
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    # debootstrap copied the builder's name; without the file each container uses its machine name
    (root / "etc/hostname").unlink(missing_ok=True)
    _run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"])
    _run(["systemctl", f"--root={root}", "mask", *MASKED_UNITS])
    # apt sources like the machine's (bookworm, -updates, -security), for the host's own release
    machine_sources = Path("/etc/apt/sources.list.d/debian.sources")
    if machine_sources.exists():
        text = re.sub(rf"\b{SUITE}\b", suite, machine_sources.read_text())
        (root / "etc/apt/sources.list.d/debian.sources").write_text(text)
        (root / "etc/apt/sources.list").unlink(missing_ok=True)
    # outbound HTTPS goes through a proxy with its own CAs: trust them inside the hosts too
    local_ca = Path("/usr/local/share/ca-certificates")
    crts = sorted(local_ca.glob("*.crt")) if local_ca.is_dir() else []
    if crts:
        dest = root / "usr/local/share/ca-certificates"
        dest.mkdir(parents=True, exist_ok=True)
        for c in crts:
            shutil.copy2(c, dest / c.name)
        with contextlib.suppress(SandboxError):  # hash links for OpenSSL CApath users
            _chroot_sh(root, "update-ca-certificates >/dev/null 2>&1", timeout=300)
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if bundle.exists():
        shutil.copy2(bundle, root / "etc/ssl/certs/ca-certificates.crt")
    resolv = Path("/etc/resolv.conf")
    if resolv.exists():
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copy2(resolv, root / "etc/resolv.conf")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


# --------------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------------


def _state_path(run_id: str) -> Path:
    return RUN_ROOT / run_id / "state.json"


def _write_state(state: dict) -> None:
    path = _state_path(state["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_states() -> list[dict]:
    states = []
    if not RUN_ROOT.is_dir():
        return states
    for p in sorted(RUN_ROOT.glob("*/state.json")):
        try:
            st = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(st, dict) and st.get("run_id") == p.parent.name:
            states.append(st)
    return states


def _ip_forward_path() -> Path:
    return Path("/proc/sys/net/ipv4/ip_forward")


def _ip_forward_saved() -> Path:
    return RUN_ROOT / "ip_forward.orig"


def _enable_ip_forward() -> None:
    """Save the machine's original value once (shared by concurrent runs) and turn forwarding on."""
    saved = _ip_forward_saved()
    current = _ip_forward_path().read_text().strip()
    if not saved.exists():
        saved.write_text(current + "\n")
    if current != "1":
        _ip_forward_path().write_text("1\n")


def _restore_ip_forward_if_last() -> None:
    """Restore the original value when no live run needs forwarding any more."""
    saved = _ip_forward_saved()
    if not saved.exists():
        return
    live, _stale = partition_states(read_states(), pid_alive)
    if live:
        return
    value = saved.read_text().strip()
    if value in ("0", "1"):
        _ip_forward_path().write_text(value + "\n")
    saved.unlink(missing_ok=True)


def _outer_nspawns(host_state: Mapping) -> list[int]:
    """The host's supervising nspawn process(es): found below the launcher and, should the launcher
    be gone, in the host's cgroups. (nspawn's short-lived inner child also has comm
    systemd-nspawn; the container's PID 1 is the supervisor's child.)"""
    pids: set[int] = set()
    lpid, lstart = host_state.get("launcher_pid"), host_state.get("launcher_start")
    if isinstance(lpid, int) and pid_alive(lpid, lstart):
        pids.update(_descendants(lpid))
    for cg in host_state.get("cgroups", []):
        pids.update(_cgroup_procs(Path(cg)))
    out = []
    for p in pids:
        st = _proc_stat(p)
        if st and st[0] not in ("Z", "X") and _comm(p) == "systemd-nspawn" and _comm(st[1]) != "systemd-nspawn":
            out.append(p)
    return sorted(out)


def _stop_host(host_state: Mapping, term_wait: float = 20.0, second_wait: float = 5.0) -> None:
    """Orderly stop of one host from its state: stop file (the launcher must not restart it), TERM
    to nspawn (orderly poweroff, ~0.2-2 s), a second TERM after term_wait (nspawn then kills at
    once), and if nspawn still lives, SIGKILL to the container's PID 1 (never kill -9 nspawn alone:
    the container's systemd would be orphaned and keep running). Finally anything left in the
    host's cgroups is killed."""
    stop_file = host_state.get("stop_file")
    if stop_file:
        with contextlib.suppress(OSError):
            Path(stop_file).parent.mkdir(parents=True, exist_ok=True)
            Path(stop_file).touch()
    lpid, lstart = host_state.get("launcher_pid"), host_state.get("launcher_start")

    def launcher_alive() -> bool:
        return isinstance(lpid, int) and pid_alive(lpid, lstart)

    t0 = time.monotonic()
    terms_sent, last_term, killed_init = 0, 0.0, False
    hard_deadline = term_wait + 2 * second_wait + 10
    while True:
        outer = _outer_nspawns(host_state)
        if not outer and not launcher_alive():
            break
        now = time.monotonic()
        if outer:
            if terms_sent == 0 or (terms_sent == 1 and now - last_term > term_wait):
                for p in outer:
                    _kill(p, signal.SIGTERM)
                terms_sent += 1
                last_term = now
            elif terms_sent >= 2 and now - last_term > second_wait and not killed_init:
                for p in outer:
                    for child in _children(p):
                        _kill(child, signal.SIGKILL)
                killed_init = True
        if now - t0 > hard_deadline:
            for cg in host_state.get("cgroups", []):
                for p in _cgroup_procs(Path(cg)):
                    if p != os.getpid():
                        _kill(p, signal.SIGKILL)
            if launcher_alive():
                _kill(lpid, signal.SIGKILL)
            if now - t0 > hard_deadline + 10:
                raise SandboxError(f"host {host_state.get('name')} does not stop")
        time.sleep(0.05)
    # anything still inside (e.g. a container whose nspawn was kill -9'd earlier)
    for cg in host_state.get("cgroups", []):
        for p in _cgroup_procs(Path(cg)):
            if p != os.getpid():
                _kill(p, signal.SIGKILL)


def _teardown_host(host_state: Mapping) -> None:
    _stop_host(host_state)
    for cg in host_state.get("cgroups", []):
        _rmdir_cgroup(Path(cg))
    hostdir = host_state.get("dir")
    if hostdir:
        shutil.rmtree(hostdir, ignore_errors=True)


def _teardown_network(state: Mapping) -> None:
    bridge, table = state.get("bridge"), state.get("table")
    if bridge and _link_exists(bridge):
        _run(["ip", "link", "del", bridge], check=False)
    if table:
        proc = _run(["nft", "list", "table", "ip", table], check=False)
        if proc.returncode == 0:
            _run(["nft", "delete", "table", "ip", table], check=False)


def teardown_state(state: Mapping, parallel: bool = True) -> list[str]:
    """Remove everything a run (alive or not) created, from its state; returns problems found."""
    problems: list[str] = []
    hosts = list(state.get("hosts", {}).values())

    def one(h):
        try:
            _teardown_host(h)
        except Exception as e:  # keep going: remove as much as possible
            problems.append(f"host {h.get('name')}: {e}")

    if parallel and len(hosts) > 1:
        with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as ex:
            list(ex.map(one, hosts))
    else:
        for h in hosts:
            one(h)
    with _RUN_LOCK:
        try:
            _teardown_network(state)
        except Exception as e:
            problems.append(f"network: {e}")
        for cg in state.get("cgroup_roots", []):
            try:
                _rmdir_cgroup(Path(cg))
            except Exception as e:
                problems.append(f"cgroup {cg}: {e}")
        data_dir = state.get("data_dir")
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
        run_id = state.get("run_id")
        if run_id:
            shutil.rmtree(RUN_ROOT / run_id, ignore_errors=True)
        try:
            _restore_ip_forward_if_last()
        except Exception as e:
            problems.append(f"ip_forward: {e}")
    return problems


def _present_bridges() -> list[str]:
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/class/net"):
            if name.startswith(BRIDGE_PREFIX) and Path(f"/sys/class/net/{name}/bridge").exists():
                out.append(name)
    return out


def _bridge_in_our_range(name: str) -> bool:
    proc = _run(["ip", "-j", "-4", "addr", "show", "dev", name], check=False)
    with contextlib.suppress(ValueError):
        for link in json.loads(proc.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("local", "").startswith(SUBNET_PREFIX + ".") and a.get("local", "").endswith(".1"):
                    return True
    return False


def _present_tables() -> list[str]:
    proc = _run(["nft", "-j", "list", "tables", "ip"], check=False)
    names = []
    with contextlib.suppress(ValueError):
        for item in json.loads(proc.stdout or "{}").get("nftables", []):
            t = item.get("table")
            if t and t.get("family") == "ip":
                names.append(t["name"])
    return names


def _memory_cgroup_bases() -> list[Path]:
    bases = [CGROUP_ROOT / "memory"]
    with contextlib.suppress(SandboxError, OSError):
        own = CGROUP_ROOT / ("memory" + _own_cgroup("memory"))
        if own not in bases:
            bases.append(own)
    return bases


def cleanup_leftovers(verbose: bool = False) -> list[str]:
    """Remove what killed runs left behind: runs whose owner process is gone (from their state
    files), plus resources with our names that no state references. Live runs are not touched.
    Returns a description of what was removed."""
    removed: list[str] = []
    say = (lambda m: print(m, file=sys.stderr)) if verbose else (lambda m: None)
    if os.geteuid() != 0:
        raise SandboxError("gatekit sandbox cleanup needs root")
    with _RUN_LOCK:
        # Held throughout: two runs starting at once must not both tear down the same leftover.
        _live, stale = partition_states(read_states(), pid_alive)
        for st in stale:
            say(f"cleaning leftover run {st.get('run_id')} (owner pid {st.get('owner_pid')} is gone)")
            problems = teardown_state(st)
            removed.append(f"run {st.get('run_id')}")
            for p in problems:
                say(f"  problem: {p}")
        states = read_states()  # live ones again (others may have started meanwhile)
        ref_bridges = {s.get("bridge") for s in states}
        ref_tables = {s.get("table") for s in states}
        ref_cgroups = {f"{CGROUP_PREFIX}{s.get('run_id')}" for s in states}
        ref_runs = {s.get("run_id") for s in states}
        for br in orphan_names(_present_bridges(), BRIDGE_PREFIX, ref_bridges):
            if _bridge_in_our_range(br):
                say(f"deleting orphan bridge {br}")
                _run(["ip", "link", "del", br], check=False)
                removed.append(f"bridge {br}")
        for table in orphan_names(_present_tables(), TABLE_PREFIX, ref_tables):
            say(f"deleting orphan nft table {table}")
            _run(["nft", "delete", "table", "ip", table], check=False)
            removed.append(f"table {table}")
        hierarchies = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified", *_memory_cgroup_bases()]
        for h in hierarchies:
            if not h.is_dir():
                continue
            present = [p.name for p in h.iterdir() if p.is_dir()]
            for name in orphan_names(present, CGROUP_PREFIX, ref_cgroups):
                say(f"removing orphan cgroup {h / name}")
                with contextlib.suppress(SandboxError):
                    _rmdir_cgroup(h / name)
                removed.append(f"cgroup {h / name}")
        for root in (RUN_ROOT, ALT_DATA_ROOT):
            if not root.is_dir():
                continue
            for d in root.iterdir():
                if d.is_dir() and d.name not in ref_runs and not (d / "state.json").exists():
                    say(f"removing orphan run dir {d}")
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(f"dir {d}")
        _restore_ip_forward_if_last()
    return removed


# --------------------------------------------------------------------------------------------------
# Hosts and the sandbox
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Host:
    name: str
    address: str
    key_path: Path
    memory_cgroup: Path | None = None  # the host's writable v1 memory cgroup (memory_enforced)
    console_log: Path | None = None
    data: dict = dataclasses.field(default_factory=dict)  # extra pyinfra host data for inventories

    def ssh_argv(self, connect_timeout: int = 5) -> list[str]:
        return [*_ssh_base_argv(self.key_path, connect_timeout), f"root@{self.address}"]

    def run(self, cmd: str, check: bool = True, timeout: float | None = 300, input: str | None = None,
            connect_timeout: int = 5) -> subprocess.CompletedProcess:
        """Run a shell command as root on the host over ssh (text mode)."""
        argv = [*self.ssh_argv(connect_timeout), "--", cmd]
        proc = subprocess.run(argv, input=input, text=True, capture_output=True, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise SandboxCommandError(self.name, proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def put(self, path: str, content: str, mode: str = "0644") -> None:
        """Write a file on the host (content via stdin, never on the command line)."""
        q = shlex.quote(path)
        self.run(f"install -D -m {shlex.quote(mode)} /dev/stdin {q}", input=content)

    def ssh_ready(self) -> bool:
        try:
            with socket.create_connection((self.address, 22), timeout=0.5):
                pass
        except OSError:
            return False
        try:
            return self.run("true", check=False, timeout=10, connect_timeout=3).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_ready(self, timeout: float = BOOT_TIMEOUT, alive: Callable[[], bool] | None = None) -> float:
        """Wait until ``ssh root@ADDR true`` works; returns the seconds waited."""
        t0 = time.monotonic()
        while True:
            if self.ssh_ready():
                return time.monotonic() - t0
            if alive is not None and not alive():
                raise SandboxError(
                    f"host {self.name} ({self.address}) stopped while booting; console log "
                    f"{self.console_log}:\n{_tail(self.console_log) if self.console_log else ''}"
                )
            if time.monotonic() - t0 > timeout:
                raise SandboxError(
                    f"host {self.name} ({self.address}) not reachable over ssh after {timeout:.0f} s; "
                    f"console log {self.console_log}:\n{_tail(self.console_log) if self.console_log else ''}"
                )
            time.sleep(0.1)


_ACTIVE: list["Sandbox"] = []
_ACTIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False
_PREV_HANDLERS: dict[int, object] = {}


def _down_all() -> None:
    with _ACTIVE_LOCK:
        active = list(_ACTIVE)
    for sb in reversed(active):
        with contextlib.suppress(Exception):
            sb.down()


def _on_signal(signum, frame):
    _down_all()
    prev = _PREV_HANDLERS.get(signum)
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    else:  # default action: die by the same signal
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_down_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError, OSError):
                prev = signal.getsignal(sig)
                if prev == signal.SIG_IGN:  # e.g. a background job: the signal must not stop us
                    continue
                _PREV_HANDLERS[sig] = prev
                signal.signal(sig, _on_signal)
    _HANDLERS_INSTALLED = True


class Sandbox:
    """A set of throwaway Debian 12 hosts on their own bridge. Use as a context manager."""

    def __init__(self, run_id: str | None = None, subnet_index: int | None = None,
                 memory_enforced: bool = True, base: Path | None = None):
        self.run_id = validate_run_id(run_id) if run_id is not None else new_run_id()
        self.names = derive_names(self.run_id)
        self.bridge = self.names.bridge
        self.table = self.names.table
        self.requested_subnet_index = subnet_index
        if subnet_index is not None:
            subnet_for(subnet_index)  # validate early
        self.subnet_index: int | None = None
        self.memory_enforced = memory_enforced
        self.base = Path(base) if base is not None else None
        self.run_dir = RUN_ROOT / self.run_id
        self.data_dir: Path | None = None
        self.key_path: Path = key_path()
        self.hosts: dict[str, Host] = {}
        self._state: dict | None = None
        self._next_ordinal = 0
        self._up = False
        self._down_lock = threading.RLock()
        self._popen: dict[str, subprocess.Popen] = {}

    # ---- properties
    @property
    def subnet(self) -> ipaddress.IPv4Network:
        self._require_up()
        return subnet_for(self.subnet_index)

    @property
    def gateway_address(self) -> str:
        """The bridge's address: services on the machine bind here to be reachable from hosts."""
        self._require_up()
        return gateway_for(self.subnet_index)

    def _require_up(self):
        if not self._up or self.subnet_index is None:
            raise SandboxError("sandbox is not up (call up() or use it as a context manager)")

    # ---- context manager
    def __enter__(self) -> "Sandbox":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # ---- lifecycle
    def up(self) -> "Sandbox":
        if self._up:
            return self
        if os.geteuid() != 0:
            raise SandboxError("gatekit sandbox needs root")
        _check_cgroup_layout()
        ensure_host_packages()
        self.key_path = ensure_key()
        if self.base is None:
            self.base = ensure_base()
        elif not self.base.is_dir():
            raise SandboxError(f"base root file system {self.base} does not exist")
        cleanup_leftovers()
        _install_handlers()
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)
        try:
            with _RUN_LOCK:
                states = read_states()
                if any(s.get("run_id") == self.run_id for s in states):
                    raise SandboxError(f"sandbox run {self.run_id} already exists")
                if _link_exists(self.bridge):
                    raise SandboxError(f"network interface {self.bridge} already exists")
                self.subnet_index = pick_subnet_index(
                    self.run_id, _existing_networks(),
                    reserved={s["subnet_index"] for s in states if isinstance(s.get("subnet_index"), int)},
                    requested=self.requested_subnet_index,
                )
                self.data_dir = self._choose_data_dir()
                self._state = {
                    "version": STATE_VERSION,
                    "run_id": self.run_id,
                    "owner_pid": os.getpid(),
                    "owner_start": pid_start_time(os.getpid()),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "bridge": self.bridge,
                    "table": self.table,
                    "subnet_index": self.subnet_index,
                    "data_dir": str(self.data_dir),
                    "base": str(self.base),
                    "cgroup_roots": self._cgroup_roots_for_run(),
                    "hosts": {},
                }
                _write_state(self._state)  # before creating anything, so a crash leaves a trail
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._setup_network()
            self._up = True
        except BaseException:
            self.down()
            raise
        return self

    def _choose_data_dir(self) -> Path:
        override = os.environ.get("GATEKIT_SANDBOX_DATA")
        if override:
            return Path(override) / self.run_id
        RUN_ROOT.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(RUN_ROOT)
        where = choose_data_root(_mount_fstype(RUN_ROOT), st.f_bavail * st.f_frsize)
        return self.run_dir if where == "run" else ALT_DATA_ROOT / self.run_id

    def _cgroup_roots_for_run(self) -> list[str]:
        roots = [CGROUP_ROOT / "systemd" / self.names.cgroup, CGROUP_ROOT / "unified" / self.names.cgroup]
        if self.memory_enforced:
            roots.append(CGROUP_ROOT / ("memory" + _own_cgroup("memory")).rstrip("/") / self.names.cgroup)
        return [str(r) for r in roots]

    def _setup_network(self) -> None:
        gw = gateway_for(self.subnet_index)
        net = subnet_for(self.subnet_index)
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{gw}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        # Readiness polling starts before a host's interface exists: with the default 1 s ARP
        # retransmit time an unanswered probe delays noticing a ready host by up to a second.
        # Per-interface setting of our own bridge only; it goes away with the bridge.
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv4/neigh/{self.bridge}/retrans_time_ms").write_text("100\n")
        _enable_ip_forward()
        _run(["nft", "-f", "-"], input=(
            f"table ip {self.table} {{\n"
            f"  chain postrouting {{\n"
            f"    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {net} ip daddr != {net} masquerade\n"
            f"  }}\n"
            f"}}\n"
        ))

    def boot(self, names: list[str], timeout: float = BOOT_TIMEOUT, base: Path | None = None) -> list[Host]:
        """Boot hosts in parallel and wait until ssh works on each; may be called again to add hosts. `base`:
        another root file system for these hosts (ensure_base(suite="trixie"): Debian 13) than the sandbox's."""
        self._require_up()
        if isinstance(names, str):
            names = [names]
        names = [validate_host_name(n) for n in names]
        dup = {n for n in names if names.count(n) > 1} | (set(names) & set(self.hosts))
        if dup:
            raise SandboxError(f"host name(s) already used in this sandbox: {sorted(dup)}")
        dns = parse_nameservers(Path("/etc/resolv.conf").read_text()) if Path("/etc/resolv.conf").exists() else []
        new: list[Host] = []
        host_states: list[dict] = []
        with _RUN_LOCK:
            for n in names:
                address = host_address(self.subnet_index, self._next_ordinal)
                self._next_ordinal += 1
                hdir = self.data_dir / "hosts" / n
                cgroups = [str(Path(r) / n) for r in self._state["cgroup_roots"]]
                mem = Path(cgroups[2]) if self.memory_enforced else None
                hs = {
                    "name": n, "address": address, "dir": str(hdir), "cgroups": cgroups,
                    "stop_file": str(hdir / "stop"), "launcher_pid": None, "launcher_start": None,
                    "memory_cgroup": str(mem) if mem else None, "base": str(base or self.base),
                }
                self._state["hosts"][n] = hs
                host = Host(name=n, address=address, key_path=self.key_path, memory_cgroup=mem,
                            console_log=hdir / "console.log")
                self.hosts[n] = host
                new.append(host)
                host_states.append(hs)
            _write_state(self._state)
            for hs in host_states:
                for cg in hs["cgroups"]:
                    Path(cg).mkdir(parents=True, exist_ok=True)
        for host, hs in zip(new, host_states):
            self._prepare_host(host, hs, dns)
        with _RUN_LOCK:
            for host, hs in zip(new, host_states):
                self._start_launcher(host, hs)
            _write_state(self._state)

        def wait(host: Host) -> float:
            hs = self._state["hosts"][host.name]
            return host.wait_ready(timeout, alive=lambda: pid_alive(hs["launcher_pid"], hs["launcher_start"]))

        with ThreadPoolExecutor(max_workers=max(1, len(new))) as ex:
            futures = [ex.submit(wait, h) for h in new]
            errors = []
            for f in futures:
                try:
                    f.result()
                except Exception as e:
                    errors.append(e)
        if errors:
            raise SandboxError("\n\n".join(str(e) for e in errors))
        return new

    def _prepare_host(self, host: Host, hs: dict, dns: list[str]) -> None:
        hdir = Path(hs["dir"])
        upper = hdir / "upper"
        (upper / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
        (upper / "etc/systemd/network/10-host0.network").write_text(
            render_network_file(host.address, gateway_for(self.subnet_index), dns)
        )
        (upper / "etc/hostname").write_text(host.name + "\n")
        ssh_dir = upper / "root/.ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(upper / "root", 0o700)
        os.chmod(ssh_dir, 0o700)
        ak = ssh_dir / "authorized_keys"
        ak.write_text(self.key_path.with_suffix(".pub").read_text())
        ak.chmod(0o600)
        Path(hs["stop_file"]).unlink(missing_ok=True)
        nspawn = _which("systemd-nspawn") or "systemd-nspawn"
        argv = [
            nspawn, "--quiet", "--boot", "-D", hs["base"], f"--overlay={hs['base']}:{upper}:/",
            "-M", machine_name(self.names.tag, host.name),
            "--register=no", "--keep-unit", "--timezone=off", "--link-journal=no", "--console=read-only",
            f"--network-bridge={self.bridge}", "--resolv-conf=copy-host",
        ]
        if host.memory_cgroup is not None:
            argv += ["--tmpfs=/sys/fs/cgroup", f"--bind={host.memory_cgroup}:/sys/fs/cgroup/memory"]
        script = render_launcher(
            name=host.name, cgroup_dirs=[Path(c) for c in hs["cgroups"]], stop_file=Path(hs["stop_file"]),
            console_log=host.console_log, nspawn_argv=argv, unshare=_which("unshare") or "unshare",
        )
        launcher = hdir / "launch.sh"
        launcher.write_text(script)
        launcher.chmod(0o700)
        hs["launcher"] = str(launcher)

    def _start_launcher(self, host: Host, hs: dict) -> None:
        proc = subprocess.Popen(
            ["/bin/bash", hs["launcher"]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True, env=_env(),
        )
        hs["launcher_pid"] = proc.pid
        hs["launcher_start"] = pid_start_time(proc.pid)
        self._popen[host.name] = proc
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{host.name}").start()

    def stop(self, name: str) -> None:
        """Stop a host (orderly poweroff) and remove it and its disk."""
        hs = (self._state or {}).get("hosts", {}).get(name)
        if hs is None:
            raise KeyError(name)
        _teardown_host(hs)
        with _RUN_LOCK:
            self._state["hosts"].pop(name, None)
            _write_state(self._state)
        self.hosts.pop(name, None)
        self._popen.pop(name, None)

    def reboot(self, name: str, timeout: float = BOOT_TIMEOUT) -> float:
        """``systemctl reboot`` on a host and wait until ssh works again; returns seconds."""
        host = self.hosts[name]
        hs = self._state["hosts"][name]
        host.run("systemctl reboot", check=False, timeout=30)
        t0 = time.monotonic()
        while host.ssh_ready() and time.monotonic() - t0 < 30:  # wait for it to go down
            time.sleep(0.1)
        host.wait_ready(timeout, alive=lambda: pid_alive(hs["launcher_pid"], hs["launcher_start"]))
        return time.monotonic() - t0

    def down(self) -> None:
        """Stop all hosts, delete bridge + nft table, restore ip_forward, remove cgroups and dirs.
        Idempotent; also runs at exit and on SIGTERM/SIGINT."""
        with self._down_lock:
            state = self._state
            if state is not None and state.get("owner_pid") != os.getpid():
                state = None  # a forked child inherited this object: the parent owns the hosts
            if state is not None:
                problems = teardown_state(state)
                self._state = None
                if problems:
                    print(f"gatekit sandbox {self.run_id}: cleanup problems: {problems}", file=sys.stderr)
            self._up = False
            self.hosts.clear()
            self._popen.clear()
            with _ACTIVE_LOCK:
                if self in _ACTIVE:
                    _ACTIVE.remove(self)

    def inventory(self, path: Path, groups: dict[str, list[Host]], data: dict | None = None) -> Path:
        return write_inventory(path, groups, data)


# --------------------------------------------------------------------------------------------------
# Command line: python -m lab {up,down,hosts,base,status} (lab/__main__.py)
# --------------------------------------------------------------------------------------------------


def _cmd_status() -> int:
    states = read_states()
    if not states:
        print("no sandbox runs")
    for st in states:
        alive = "live" if not is_stale(st, pid_alive) else "LEFTOVER (owner gone)"
        print(f"{st['run_id']}: {alive}, owner pid {st.get('owner_pid')}, bridge {st.get('bridge')}, "
              f"subnet {SUBNET_PREFIX}.{st.get('subnet_index')}.0/24, data {st.get('data_dir')}")
        for h in st.get("hosts", {}).values():
            print(f"  {h['name']}: {h['address']}")
    return 0


def _cmd_up(args) -> int:
    sb = Sandbox(run_id=args.run_id, memory_enforced=not args.no_memory)
    with sb:
        t0 = time.monotonic()
        hosts = sb.boot(args.hosts)
        print(f"booted {len(hosts)} host(s) in {time.monotonic() - t0:.2f} s; gateway {sb.gateway_address}")
        for h in hosts:
            print(f"  {h.name}: ssh {' '.join(shlex.quote(a) for a in h.ssh_argv())}")
        if args.inventory:
            write_inventory(Path(args.inventory), {args.group: hosts})
            print(f"inventory: {args.inventory}")
        print("press Ctrl-C to stop and remove everything")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0
