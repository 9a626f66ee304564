"""One round trip per role: what is on the host, so operations are yielded only where it differs.

pyinfra's own operations each gather their facts over SSH, one round trip per file, package list or
unit. A no-op re-run of the stack then costs ~120 sequential round trips. Here a role first describes
everything it manages, reads the host's state in one command (HostState), and calls pyinfra's
operations only for what is missing or different. The operations still re-check their own facts, so
correctness never depends on this shortcut; it only skips work that is provably done.
"""

from __future__ import annotations

import hashlib
import io
import shlex
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import FactBase
from pyinfra.operations import apt, files, server, systemd

from gatekit.onhost.layout import Layout


class HostState(FactBase):
    """paths -> "type mode user group sha1"; packages -> installed?; units -> active/enabled;
    users -> exists?; texts -> content of small files; meminfo -> MemTotal in MB."""

    def command(self, paths=(), packages=(), units=(), users=(), texts=()):
        # printf, never echo: dash's echo rewrites backslashes. Every name is shell-quoted.
        q = shlex.quote
        parts = ["awk '/^MemTotal:/ {print \"mem \" int($2/1024)}' /proc/meminfo"]
        for p in paths:
            parts.append(
                f"if [ -L {q(p)} ]; then printf 'path l - - - - %s\\n' {q(p)}; "
                f"elif [ -d {q(p)} ]; then printf 'path d %s - %s\\n' \"$(stat -c '%a %U %G' {q(p)})\" {q(p)}; "
                f"elif [ -f {q(p)} ]; then printf 'path f %s %s %s\\n' \"$(stat -c '%a %U %G' {q(p)})\" "
                f"\"$(sha1sum < {q(p)} | cut -d' ' -f1)\" {q(p)}; fi"
            )
        if packages:
            parts.append(
                "dpkg-query -W -f='pkg ${Package} ${db:Status-Abbrev}\\n' "
                + " ".join(q(p) for p in packages)
                + " 2>/dev/null"
            )
        for u in units:
            parts.append(
                f"printf 'unit %s %s %s\\n' {q(u)} \"$(systemctl is-active {q(u)})\" "
                f"\"$(systemctl is-enabled {q(u)} 2>/dev/null)\""
            )
        for u in users:
            parts.append(f"id -u {q(u)} >/dev/null 2>&1 && printf 'user %s\\n' {q(u)}")
        for t in texts:
            # The path goes last-but-one, length-prefixed, so paths with spaces parse back exactly.
            parts.append(
                f"[ -f {q(t)} ] && printf 'text %s %s %s\\n' {len(t)} {q(t)} \"$(head -c 4096 {q(t)} | tr '\\n' ' ')\""
            )
        return " ; ".join(parts) + " ; true"

    def process(self, output):
        state = {"mem_mb": None, "paths": {}, "packages": set(), "units": {}, "users": set(), "texts": {}}
        for line in output:
            kind, _, rest = line.partition(" ")
            if kind == "mem":
                state["mem_mb"] = int(rest)
            elif kind == "path":
                typ, mode, user, group, sha1, path = rest.split(" ", 5)
                state["paths"][path] = (typ, mode, user, group, sha1)
            elif kind == "pkg":
                name, _, status = rest.partition(" ")
                if status.startswith("ii"):
                    state["packages"].add(name.split(":")[0])
            elif kind == "unit":
                name, active, *enabled = rest.split(" ")
                state["units"][name] = (active, enabled[0] if enabled else "")
            elif kind == "user":
                state["users"].add(rest)
            elif kind == "text":
                size, _, rest = rest.partition(" ")
                path, text = rest[: int(size)], rest[int(size) + 1 :]
                state["texts"][path] = text.strip()
        return state


class Unchanged:
    """Stands in for an operation that was not needed: nothing changed."""

    def did_change(self) -> bool:
        return False


UNCHANGED = Unchanged()


@dataclass(frozen=True)
class PackageWave:
    """One operation that installs the packages of all of a host's roles at once (roles/packages.py)."""

    op: object
    packages: frozenset[str]


def _mode(m: str) -> int:
    return int(str(m), 8)


def _signals(notify) -> tuple[str, ...]:
    return (notify,) if isinstance(notify, str) else tuple(notify or ())


@dataclass
class Desired:
    """What one role manages on one host, each file and directory declared once with what its change
    triggers (`notify="restart"`, in the style of geerlingguy's handlers). `read()` fetches the host's
    state for all of it at once; `apply()` yields operations only for what differs; `changed(signal)` is
    the `_if` of the handler (reload, restart, ...) that those changes trigger."""

    packages: list[str] = field(default_factory=list)
    files: dict[str, tuple] = field(default_factory=dict)  # dest -> (content, user, group, mode)
    dirs: dict[str, tuple] = field(default_factory=dict)  # path -> (user, group, mode)
    units: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    paths_to_check: list[str] = field(default_factory=list)  # read, not managed (e.g. to remove)
    state: dict | None = None
    installing: bool = False
    # path -> (operation name, signals), in declaration order: apply() follows it.
    declared: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    absent: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    signals: dict[str, list] = field(default_factory=dict)  # signal -> operations that raise it

    def read(self) -> dict:
        self.state = host.get_fact(
            HostState,
            paths=tuple(sorted({*self.files, *self.dirs, *self.absent, *self.paths_to_check})),
            packages=tuple(self.packages),
            units=tuple(self.units),
            users=tuple(self.users),
            texts=tuple(self.texts),
        )
        return self.state

    # ---- declare before read() ------------------------------------------------------------------
    def dir(self, path: str, user="root", group="root", mode="755", notify=(), name: str = ""):
        self.dirs[path] = (user, group, mode)
        self.declared[path] = (name or f"Directory {path}", _signals(notify))

    def file(self, dest: str, content: str, user="root", group="root", mode="644", notify=(), name: str = ""):
        self.files[dest] = (content, user, group, mode)
        self.declared[dest] = (name or f"File {dest}", _signals(notify))

    def remove(self, path: str, notify=(), name: str = ""):
        self.absent[path] = (name or f"Remove {path}", _signals(notify))

    # ---- change signals ---------------------------------------------------------------------------
    def notify(self, signal, *ops):
        for s in _signals(signal):
            self.signals.setdefault(s, []).extend(ops)
        return ops[0] if len(ops) == 1 else ops

    def changed(self, signal: str, unless: str = ""):
        """`_if` for the handler of `signal`: true once an operation that raises it changed the host
        (and, with `unless`, none raising that stronger signal did: a restart covers a reload)."""
        ops, stronger = self.signals.get(signal, []), self.signals.get(unless, []) if unless else []
        return lambda: any(op.did_change() for op in ops) and not any(op.did_change() for op in stronger)

    # ---- operations, yielded only when the host differs ------------------------------------------
    def apply(self):
        """Directories and files in declaration order, then removals; each raises its signals."""
        for path, (name, signals) in self.declared.items():
            op = self.ensure_dir(name, path) if path in self.dirs else self.ensure_file(name, path)
            self.notify(signals, op)
        for path, (name, signals) in self.absent.items():
            self.notify(signals, self.ensure_absent(name, path))

    def differs(self, dest: str) -> bool:
        """A declared file whose content, mode or owner on the host is not the declared one (or that is missing)."""
        content, user, group, mode = self.files[dest]
        cur = self.state["paths"].get(dest)
        sha1 = hashlib.sha1(content.encode()).hexdigest()
        return not (cur and cur[0] == "f" and cur[4] == sha1 and _mode(cur[1]) == _mode(mode) and cur[2:4] == (user, group))

    def take_changed(self, signal: str, every: bool = False) -> dict[str, tuple]:
        """The declared files raising `signal` that differ on the host (`every`: all of them), {dest: (content, user,
        group, mode)}, taken out of what apply() writes: the caller stages them instead (a blue/green switch swaps
        them in)."""
        taken = {dest: self.files[dest] for dest, (_, signals) in self.declared.items()
                 if dest in self.files and signal in signals and (every or self.differs(dest))}
        for dest in taken:
            del self.declared[dest]
        return taken

    def ensure_packages(self, name: str, installed_by: PackageWave | None = None, notify=()):
        """Install what is missing; `installed_by`: a deploy-wide wave that already installs it this run."""
        missing = [p for p in self.packages if p not in self.state["packages"]]
        if not missing:
            return UNCHANGED
        self.installing = True  # packages may create paths the snapshot saw as absent
        if installed_by is not None and set(missing) <= installed_by.packages:
            return self.notify(notify, installed_by.op)
        apt.update(name="Refresh package lists (at most hourly)", cache_time=3600)
        return self.notify(notify, apt.packages(name=name, packages=self.packages, no_recommends=True))

    def ensure_dir(self, name: str, path: str):
        user, group, mode = self.dirs[path]
        cur = self.state["paths"].get(path)
        if cur and cur[0] == "d" and _mode(cur[1]) == _mode(mode) and cur[2:4] == (user, group):
            return UNCHANGED
        return files.directory(name=name, path=path, user=user, group=group, mode=mode)

    def ensure_file(self, name: str, dest: str, **kwargs):
        content, user, group, mode = self.files[dest]
        if not self.differs(dest):
            return UNCHANGED
        return files.put(name=name, src=io.StringIO(content), dest=dest, user=user, group=group, mode=mode, **kwargs)

    def ensure_absent(self, name: str, path: str):
        """`path` must have been declared with remove() or be in paths_to_check."""
        if path not in self.state["paths"] and not self.installing:
            return UNCHANGED
        if self.installing:
            # The package being installed in this run may create it: remove whatever is there then.
            return server.shell(name=name, commands=[f"rm -f {shlex.quote(path)}"])
        return files.file(name=name, path=path, present=False) if self.state["paths"][path][0] != "l" else files.link(
            name=name, path=path, present=False
        )

    def ensure_running(self, name: str, unit: str):
        active, enabled = self.state["units"].get(unit, ("", ""))
        if active == "active" and enabled == "enabled":
            return UNCHANGED
        return systemd.service(name=name, service=unit, running=True, enabled=True)

    def ensure_user(self, name: str, user: str, home: str):
        if user in self.state["users"]:
            return UNCHANGED
        server.group(name=f"Create the {user} group", group=user, system=True)
        return server.user(
            name=name, user=user, group=user, system=True, home=home, shell="/usr/sbin/nologin", create_home=False
        )

    def text(self, path: str) -> str:
        return self.state["texts"].get(path, "")


_FIXED = Layout()
LIVE_FILE = _FIXED.live_file  # written by gatekit-rotate: which instance set is live
ROTATION_JOURNAL = _FIXED.journal_file  # present while a rotation is running or was cut off


OS_RELEASE = "/etc/os-release"  # which Debian release: the venv build's Python (roles/venv.py release_problem)


def gateway_probe() -> Desired:
    """Live instance set + pending rotation + the host's release; identical arguments, so pyinfra reads it once per
    host and run."""
    probe = Desired(texts=[LIVE_FILE, ROTATION_JOURNAL, OS_RELEASE])
    probe.read()
    return probe
