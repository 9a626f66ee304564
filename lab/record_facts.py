"""What a real converged host answers, recorded for tests/unit/test_roles_ops.py.

`python -m lab record-facts` (as root) boots the end-to-end tests' lab (data1 + gw1 + gw2 with gw2's
non-default paths and ports, tests/e2e/conftest.py) under a fixed run id and fixed, obviously fake secrets,
deploys the stack once, then collects deploy.py against that lab's own inventory the way the unit test
does, with every fact the roles ask for answered live: its command runs on the host (as pyinfra runs it,
`sh -c` over ssh) and its raw output is kept. The recording (tests/unit/fixtures/converged/facts.json:
the spec, the hosts' inventory data, the fake secrets and each host's raw fact outputs) is saved only if
replaying it yields no operation.

The unit test replays it: every fact is answered from the recorded output through the fact's own
process(), so a role that declares a path, content, mode, owner, package or unit the real host does not
have yields an operation and fails. When roles, templates or on-host programs change on purpose, the
recording is stale and the test says to run the command again.

The collection harness itself (deploy.py collected for every host against fed facts, no host, no SSH) is
here too: the unit tests feed it made-up states, the recorder live ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "unit" / "fixtures" / "converged" / "facts.json"
REFRESH = ".venv/bin/python -m lab record-facts"
RUN_ID = "facts"  # fixed: the same bridge, addresses and provider URL on every recording
# Throwaway values, never shaped like a real provider key (LiteLLM wants its master key to start with sk-).
SECRETS = {
    "openai_key": "gk-test-fixture-openai-key",
    "anthropic_key": "gk-test-fixture-anthropic-key",
    "litellm_master_key": "sk-gk-fixture-master",
    "redis_password": "gk-test-fixture-redis-password",
    "postgres_password": "gk-test-fixture-postgres-password",
}
# What decides what the roles declare; listed with their digests so a failure names what changed since.
SOURCES = ("deploy.py", "roles/*.py", "templates/**/*", "gatekit/**/*.py", "requirements/**/*")
FACTS = ("HostState", "IPFilteringEnforced", "PostgresLitellmState")


# ---- the collection harness ---------------------------------------------------------------------------
def operation_order(state):
    """pyinfra.api.util.get_operation_order_from_stack without inspect's source lookups (the same line
    numbers from the same frames, read from the frames themselves: ~20x faster)."""
    from pyinfra.api.util import PYINFRA_INSTALL_DIR

    frames, frame = [], sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    start = next((i for i, f in enumerate(frames) if f.f_code.co_filename == state.current_deploy_filename), 0)
    return [state.current_op_file_number] + [
        f.f_lineno for f in frames[start:] if not f.f_code.co_filename.startswith(PYINFRA_INSTALL_DIR)
    ]


class Names(frozenset):
    """The names one operation has across hosts; equal to a name it includes (the host's own)."""

    def __eq__(self, other):
        return other in self if isinstance(other, str) else frozenset.__eq__(self, other)

    __hash__ = frozenset.__hash__


@contextmanager
def _patched(answer, on_read):
    """pyinfra as its command line collects, with every fact answered by `answer(host, cls, kwargs)`."""
    import pyinfra
    from pyinfra.api.host import Host

    from gatekit.hoststate import Desired

    real_read = Desired.read

    def get_fact(self, cls, *args, **kwargs):
        assert not args, (cls, args)
        return answer(self, cls, kwargs)

    def read(self):
        if on_read is not None:
            from pyinfra import host

            on_read(host, self)
        return real_read(self)

    op_module = sys.modules["pyinfra.api.operation"]
    saved = (pyinfra.is_cli, op_module.get_operation_order_from_stack, Host.get_fact)
    pyinfra.is_cli, op_module.get_operation_order_from_stack, Host.get_fact = True, operation_order, get_fact
    Desired.read = read
    try:
        yield
    finally:
        pyinfra.is_cli, op_module.get_operation_order_from_stack, Host.get_fact = saved
        Desired.read = real_read


def collect(spec_file: Path, hosts: dict, answer: Callable, entry: str = "deploy.py",
            on_read: Callable | None = None, inventory_file: str = "test-inventory.py") -> dict[str, list]:
    """Collect `entry` for every host as pyinfra's command line does (operations identified by their place in
    the deploy file), facts answered by `answer(host, cls, kwargs)`; `on_read(host, desired)` sees each
    Desired before it reads. hosts: {group: [(name, data)]}. Returns {host: [(Names, its _if or None, its
    meta)]}, in order. The vault's key comes from the environment (GATEKIT_VAULT_KEY_FILE)."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.state import StateStage
    from pyinfra.context import ctx_host, ctx_inventory, ctx_state

    import gatekit.inventory as gk_inventory

    groups = gk_inventory.groups(inventory_file, str(spec_file), hosts)
    names = list(dict.fromkeys(n for entries, _ in groups.values() for n, _ in entries))
    inventory = Inventory((names, {}), **groups)
    state = State(inventory, Config(), check_for_changes=False)
    state.init(inventory, Config())
    state.current_deploy_filename = str(REPO / entry)
    state.current_op_file_number = 0
    state.set_stage(StateStage.Prepare)

    def run():
        with _patched(answer, on_read), ctx_state.use(state), ctx_inventory.use(inventory):
            for host in inventory:
                state.activate_host(host)
                with ctx_host.use(host):
                    runpy.run_path(str(REPO / entry), run_name="deploy")

    # In a thread of its own: pyinfra reads the whole call stack for every operation, and pytest's is deep.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run).result()
    out = {}
    for host in inventory:
        ops = []
        for op_hash in state.get_op_order():
            data = state.ops[host].get(op_hash)
            if data is not None:
                # One operation of the deploy file on all hosts carries every host's name for it.
                ops.append((Names(state.op_meta[op_hash].names), data.global_arguments.get("_if") or None,
                            data.operation_meta))
        out[host.name] = ops
    return out


def would_run(ops, changed: set[str] = frozenset()) -> list[str]:
    """Names of the operations that would run: unconditional ones, and conditional ones whose `_if`
    holds once the operations named in `changed` have changed the host."""
    for name, _, meta in ops:
        if any(c == name for c in changed):
            meta.set_complete(True, ["changed"], None)
    result = []
    for name, conds, _ in ops:
        conds = conds if isinstance(conds, list) else [conds] if conds else []
        if all(c() for c in conds):
            result.append(name)
    return result


def op_names(ops) -> list[str]:
    """The names of the operations that would run (one named per host shows each host's name)."""
    return [" / ".join(sorted(n)) for n in would_run(ops)]


# ---- one recorded fact ------------------------------------------------------------------------------------
def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    return value


def fact_key(fact: str, kwargs: dict) -> str:
    return json.dumps([fact, _plain(kwargs)], sort_keys=True)


def output_lines(stdout: bytes) -> list[str]:
    """Lines as pyinfra hands them to process(): split on newlines only, each without its newline."""
    lines = stdout.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def fact_value(cls, entry: dict):
    """What pyinfra's get_fact returns for this output: process() of a successful command's non-empty
    stdout, else the fact's default()."""
    fact = cls()
    if entry["exit"] == 0 and entry["stdout"]:
        return fact.process(list(entry["stdout"]))
    return fact.default()


def source_digests() -> dict[str, str]:
    out = {}
    for pattern in SOURCES:
        for p in REPO.glob(pattern):
            if p.is_file() and "__pycache__" not in p.parts:
                out[p.relative_to(REPO).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return dict(sorted(out.items()))


class Stale(AssertionError):
    """The roles asked for something the recording does not hold."""


@dataclass
class Recording:
    """spec: the lab's spec (parsed), spec_name its file name (config.yaml names it); secrets: its vault's
    values; hosts: {group: [[name, data]]} as the lab's inventory has them (name = address; ssh settings left
    out); facts: {host: [{fact, kwargs, exit, stdout}]} in the order first asked; sources: {file: digest} of
    SOURCES when recorded."""

    spec_name: str
    spec: dict
    secrets: dict[str, str]
    hosts: dict[str, list]
    facts: dict[str, list[dict]]
    sources: dict[str, str] = field(default_factory=dict)

    ABOUT = ("What a converged lab's hosts answered to the facts the roles ask for, recorded by `" + REFRESH
             + "` (lab/record_facts.py) for tests/unit/test_roles_ops.py. The secrets are throwaway test values.")

    # ---- file -------------------------------------------------------------------------------------
    def dumps(self) -> str:
        data = {"about": self.ABOUT, "spec_name": self.spec_name, "spec": self.spec, "secrets": self.secrets,
                "hosts": self.hosts, "facts": self.facts, "sources": self.sources}
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def save(self, path: Path = FIXTURE) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.dumps())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path = FIXTURE) -> "Recording":
        if not path.exists():
            raise Stale(f"{path} is missing. Record it as root, from the checkout: {REFRESH}")
        data = json.loads(path.read_text())
        return cls(spec_name=data["spec_name"], spec=data["spec"], secrets=data["secrets"], hosts=data["hosts"],
                   facts=data["facts"], sources=data.get("sources", {}))

    def copy(self) -> "Recording":
        return copy.deepcopy(self)

    # ---- replay -----------------------------------------------------------------------------------
    def label(self, name: str) -> str:
        for entries in self.hosts.values():
            for n, data in entries:
                if n == name and data.get("sandbox_name"):
                    return f"{data['sandbox_name']} ({name})"
        return name

    def host_name(self, sandbox_name: str) -> str:
        """The recorded inventory name (its address) of the lab host called `sandbox_name`."""
        for entries in self.hosts.values():
            for n, data in entries:
                if data.get("sandbox_name") == sandbox_name:
                    return n
        raise KeyError(sandbox_name)

    def changed_sources(self) -> list[str]:
        now = source_digests()
        return sorted(f for f in {*now, *self.sources} if now.get(f) != self.sources.get(f))

    def hint(self) -> str:
        changed = self.changed_sources()
        since = (f"changed since it was recorded: {', '.join(changed[:12])}{' ...' if len(changed) > 12 else ''}"
                 if changed else "none of deploy.py, roles/, templates/, gatekit/, requirements/ changed since")
        return (f"The recording ({FIXTURE.relative_to(REPO)}) is what a real converged lab answered ({since}). "
                "Either a role now declares something a converged host does not have (a bug: fix the role), or "
                "roles, templates or on-host programs changed on purpose: then the recording is stale, refresh it "
                f"as root, from the checkout, with `{REFRESH}` (boots a lab: about 2 minutes with warm caches) and "
                "commit it with the change.")

    def answer(self, host, cls, kwargs):
        """pyinfra's get_fact from the recording: the recorded output through the fact's own process()."""
        key = fact_key(cls.__name__, kwargs)
        for e in self.facts.get(host.name, []):
            if fact_key(e["fact"], e["kwargs"]) == key:
                return fact_value(cls, e)
        raise Stale(f"{self.label(host.name)}: {cls.__name__} asked with arguments the recording does not hold"
                    f"{self._nearest(host.name, cls.__name__, kwargs)}\n{self.hint()}")

    def _nearest(self, host: str, fact: str, kwargs: dict) -> str:
        asked = {k: set(_plain(v)) if isinstance(v, (list, tuple)) else {v} for k, v in kwargs.items()}
        best, best_score = None, -1
        for e in self.facts.get(host, []):
            if e["fact"] != fact:
                continue
            rec = {k: set(v) if isinstance(v, list) else {v} for k, v in e["kwargs"].items()}
            score = sum(len(asked.get(k, set()) & rec.get(k, set())) for k in {*asked, *rec})
            if score > best_score:
                best, best_score = rec, score
        if best is None:
            return f" (it asked {fact} nothing when recorded)"
        lines = []
        for k in sorted({*asked, *best}):
            now, then = asked.get(k, set()), best.get(k, set())
            new, gone = sorted(map(str, now - then)), sorted(map(str, then - now))
            lines += [f"  {k}: now asked, not recorded: {v}" for v in new]
            lines += [f"  {k}: recorded, no longer asked: {v}" for v in gone]
        return ":\n" + "\n".join(lines)

    @contextmanager
    def inventory(self, workdir: Path):
        """The recorded spec beside a vault holding the recorded secrets; the environment reads its key."""
        import yaml

        from gatekit import vault

        workdir.mkdir(parents=True, exist_ok=True)
        spec_file = workdir / self.spec_name
        spec_file.write_text(yaml.safe_dump(self.spec, sort_keys=False))
        vault_path, key_file = workdir / self.spec["vault"], workdir / "vault.key"
        if not vault_path.exists():
            vault.init_vault(vault_path, key_file=key_file, passphrase=None)
            vault.update_secrets(vault_path, vault.resolve_key(vault_path, key_file=key_file), self.secrets,
                                 drop_missing=False)
        with _environ(GATEKIT_VAULT_KEY_FILE=str(key_file), GATEKIT_VAULT_PASSPHRASE=None, GATEKIT_ROTATE=None):
            yield spec_file

    def replay(self, workdir: Path) -> dict[str, list]:
        """deploy.py collected for the recorded hosts, every fact answered from the recording."""
        with self.inventory(workdir) as spec_file:
            hosts = {g: [tuple(e) for e in entries] for g, entries in self.hosts.items()}
            return collect(spec_file, hosts, self.answer)

    def problems(self, workdir: Path, hint: bool = True) -> list[str]:
        """What keeps the replay from yielding no operation (then, with `hint`, what to do about it)."""
        from pyinfra.api.exceptions import PyinfraError

        try:
            ops = self.replay(workdir)
        except Stale as exc:
            return [str(exc)]
        except PyinfraError as exc:
            return [f"the deploy stopped on the recorded hosts: {exc}"] + ([self.hint()] if hint else [])
        out = []
        for host, host_ops in ops.items():
            # A handler's _if is only asked once nothing runs unconditionally (it reads their results).
            running = [" / ".join(sorted(n)) for n, cond, _ in host_ops if cond is None] or op_names(host_ops)
            if running:
                out.append(f"{self.label(host)} would run: " + "; ".join(running))
        missing = sorted({n for entries in self.hosts.values() for n, _ in entries} - set(ops))
        if missing:
            out.append(f"hosts not collected: {missing}")
        if out and hint:
            out.append(self.hint())
        return out


@contextmanager
def _environ(**values):
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---- recording ----------------------------------------------------------------------------------------
class LiveFacts:
    """get_fact answered by running the fact's command on the host: run(host name, command) -> (exit code,
    stdout bytes). Each distinct (fact, arguments) runs once per host; outputs are kept in asking order."""

    def __init__(self, run: Callable[[str, str], tuple[int, bytes]]):
        self.run = run
        self.facts: dict[str, dict[str, dict]] = {}
        self.declared: dict[str, set[str]] = {}  # host -> files the roles declare with their content

    def answer(self, host, cls, kwargs):
        if cls.__name__ not in FACTS:
            raise AssertionError(f"unexpected fact {cls.__name__}: a role read the host outside its one round trip")
        entries = self.facts.setdefault(host.name, {})
        key = fact_key(cls.__name__, kwargs)
        if key not in entries:
            entries[key] = self.ask(host.name, cls, kwargs)
        return fact_value(cls, entries[key])

    def ask(self, host: str, cls, kwargs: dict) -> dict:
        code, stdout = self.run(host, cls().command(**kwargs))
        return {"fact": cls.__name__, "kwargs": _plain(kwargs), "exit": code, "stdout": output_lines(stdout)}

    def on_read(self, host, want):
        self.declared.setdefault(host.name, set()).update(want.files)

    def recorded(self) -> dict[str, list[dict]]:
        """The outputs, with the hash of each file the roles only check for presence (TLS certificate,
        encrypted credentials: new on every boot) recorded as "-", so a recording is the same every time."""
        out = {}
        for host, entries in self.facts.items():
            out[host] = [normalized(e, self.declared.get(host, set())) for e in entries.values()]
        return out


def normalized(entry: dict, declared_files: set[str]) -> dict:
    if entry["fact"] != "HostState":
        return entry
    lines = []
    for line in entry["stdout"]:
        parts = line.split(" ", 6)
        if parts[:2] == ["path", "f"] and len(parts) == 7 and parts[6] not in declared_files:
            parts[5] = "-"
            line = " ".join(parts)
        lines.append(line)
    return {**entry, "stdout": lines}


def record(spec_file: Path, hosts: dict, secrets: dict[str, str], run: Callable[[str, str], tuple[int, bytes]]) -> Recording:
    """Collect deploy.py for `hosts` with every fact answered live by `run`, plus whether each host enforces
    IPAddressDeny= (asked only where a gateway has an egress allowlist). The vault's key: from the environment."""
    import yaml

    from gatekit.facts import IPFilteringEnforced

    live = LiveFacts(run)
    collect(spec_file, hosts, live.answer, on_read=live.on_read, inventory_file="lab_inventory.py")
    for name in dict.fromkeys(n for entries in hosts.values() for n, _ in entries):
        key = fact_key(IPFilteringEnforced.__name__, {})
        entries = live.facts.setdefault(name, {})
        if key not in entries:
            entries[key] = live.ask(name, IPFilteringEnforced, {})
    return Recording(spec_name=Path(spec_file).name, spec=yaml.safe_load(Path(spec_file).read_text()), secrets=dict(secrets),
                     hosts={g: [[n, d] for n, d in entries] for g, entries in hosts.items()},
                     facts=live.recorded(), sources=source_digests())


def lab_hosts(lab) -> dict[str, list[tuple[str, dict]]]:
    """The lab inventory's groups as (name, data), without the ssh settings (this machine's key path)."""
    from lab import sandbox as sb

    def data(h):
        return {k: v for k, v in {**sb.default_host_data(h), **h.data}.items() if not k.startswith("ssh_")}

    return {g: [(lab.hosts[n].address, data(lab.hosts[n])) for n in names] for g, names in lab.groups.items()}


def ssh_runner(lab) -> Callable[[str, str], tuple[int, bytes]]:
    """Run a fact's command on a lab host as pyinfra does (`sh -c`, over ssh, as root)."""
    by_name = {h.address: h for h in lab.hosts.values()}

    def run(name: str, command: str) -> tuple[int, bytes]:
        h = by_name[name]
        proc = subprocess.run([*h.ssh_argv(), "--", "sh -c " + shlex.quote(command)], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=300)
        if proc.returncode == 255:
            raise RuntimeError(f"ssh to {h.name} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        return proc.returncode, proc.stdout

    return run


def record_lab(out: Path = FIXTURE) -> int:
    """Boot the e2e lab, deploy, record, tear down; save only a recording whose replay yields nothing."""
    from lab.env import Lab

    if os.geteuid() != 0:
        print("error: recording boots systemd-nspawn hosts and needs root", file=sys.stderr)
        return 2
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.e2e.conftest import GROUPS, HOST_SETTINGS  # the e2e lab's hosts and gw2's non-default settings

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gk-record-facts-"))
    try:
        lab = Lab.create(work / "lab", run_id=RUN_ID)
        try:
            print(f"booting {', '.join(dict.fromkeys(n for ns in GROUPS.values() for n in ns))} (run id {RUN_ID}) ...", flush=True)
            lab.setup(GROUPS, host_settings=HOST_SETTINGS)
            lab.write_vault(dict(SECRETS))  # fixed values: the same files on every recording
            print("deploying ...", flush=True)
            result = lab.deploy()
            print(f"deployed in {result.seconds:.0f} s ({result.changes} changes); recording ...", flush=True)
            with _environ(GATEKIT_VAULT_KEY_FILE=str(lab.key_file), GATEKIT_VAULT_PASSPHRASE=None, GATEKIT_ROTATE=None):
                recording = record(lab.spec_path, lab_hosts(lab), SECRETS, ssh_runner(lab))
        finally:
            print("stopping the lab ...", flush=True)
            lab.stop()
        problems = recording.copy().problems(work / "replay", hint=False)
        if problems:
            rejected = Path(tempfile.mkdtemp(prefix="gk-record-facts-rejected-")) / out.name
            recording.save(rejected)
            print("error: the lab's hosts, just deployed, do not replay to no operation: what a role declares "
                  "differs from what its own deploy left on the host (or a fact's output differs per boot). "
                  f"Not saved; the recording is kept in {rejected}:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        recording.save(out)
        print(f"recorded {out} ({out.stat().st_size} bytes) in {time.monotonic() - t0:.0f} s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
