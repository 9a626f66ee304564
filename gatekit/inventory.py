"""Glue between pyinfra inventories and the gateway spec.

Inventory files call `groups()` so a bad spec or a bad host entry stops the run while the inventory
loads, before pyinfra connects to any host. Deploy files call `context()` for the validated spec, the
effective settings of the current host and the decrypted secrets.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gatekit.defaults import DEFAULTS
from gatekit.spec import HOST_NAME, GatewaySpec, SpecError, check_settings, key_shown, load_spec, shown

GROUPS = ("gateways", "redis", "postgres")
OPTIONAL_GROUPS = ("monitoring",)  # Prometheus and its alert rules (roles/monitoring.py)
ROLE_GROUPS = {"redis": "redis", "postgres": "postgres", "litellm": "gateways", "nginx": "gateways"}  # roles/run.py


def cli_data(argv: list[str]) -> dict[str, str]:
    """The `--data key=value` pairs of a pyinfra command line (pyinfra applies them only after the
    inventory has loaded, too late to refuse a typo before connecting)."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        value = arg.split("=", 1)[1] if arg.startswith("--data=") else argv[i + 1] if arg == "--data" and i + 1 < len(argv) else None
        if value is not None and "=" in value:
            k, v = value.split("=", 1)
            out[k.strip()] = v
        i += 2 if arg == "--data" else 1
    return out


def data_problems(spec: GatewaySpec, data: dict[str, str], where: str = "--data") -> list[str]:
    """`--data rotate=` names secrets the gateways use; `--data role=` names a role."""
    problems = []
    if "rotate" in data:
        s = {**DEFAULTS, **spec.settings}
        used = spec.secrets_used() | {s["litellm_master_key_secret"], s["redis_password_secret"], s["postgres_password_secret"]}
        names = [n.strip() for n in data["rotate"].split(",") if n.strip()]
        if not names:
            problems.append(f"{where}: rotate: no secret named. Fix: --data rotate=NAME[,NAME] with one of {', '.join(sorted(used))}.")
        for n in names:
            if n not in used:
                problems.append(f"{where}: rotate: {n[:80]!r} is not a secret the gateways use. "
                                f"Fix: use one of {', '.join(sorted(used))}.")
    for k in data:
        if k in DEFAULTS:
            problems.append(f"{where}: {k}: settings cannot be given with --data (they would skip validation). "
                            "Fix: put it in the spec's settings, or in the host's data in the inventory.")
    if "role" in data and data["role"] not in ROLE_GROUPS:
        problems.append(f"{where}: role: {data['role'][:80]!r} is not a role. Fix: use one of {', '.join(sorted(ROLE_GROUPS))}.")
    return problems


def _error(problems: list[str]) -> Exception:
    # pyinfra prints PyinfraError messages cleanly (no traceback) and executes nothing.
    from pyinfra.api.exceptions import PyinfraError

    return PyinfraError("invalid gatekit input:\n  " + "\n  ".join(problems))


# Host data keys gatekit reads besides the settings.
HOST_KEYS = ("private_address", "memory_mb")
# Prefixes of gatekit's settings: a host data key with one that is no setting is a typo, not pyinfra's.
SETTING_PREFIXES = ("litellm_", "nginx_", "redis_", "postgres_", "monitoring_", "rotation_", "rollout_")
# Settings of the fleet as a whole (the order changes reach the gateways): the spec's settings only.
FLEET_SETTINGS = ("rollout_first_gateway", "rollout_batch")
_HOST_NAME_RE = re.compile(HOST_NAME)
_MAX_MEMORY_MB = 1 << 30  # 1 PB


def _entries(inventory_file: str, group: str, entries: object) -> tuple[list[tuple[str, dict]], list[str]]:
    """The (name, data) entries of a group, each as pyinfra takes it (a name, or a (name, data) pair)."""
    where = f"{inventory_file}: {group}"
    if not isinstance(entries, (list, tuple)):
        return [], [f"{where}: expected a list of hosts, got {shown(entries)}. "
                    "Fix: a list of (name, data) pairs, e.g. [('gw1', {'private_address': '10.0.0.11'})]."]
    out, problems = [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = (entry, {})
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            problems.append(f"{where}[{i}]: {shown(entry)} is not a host. "
                            "Fix: a (name, data) pair, e.g. ('gw1', {'private_address': '10.0.0.11'}).")
            continue
        name, data = entry
        if not isinstance(name, str) or not _HOST_NAME_RE.fullmatch(name):
            problems.append(f"{where}[{i}]: host name {shown(name)} is not a host name pyinfra can connect to. "
                            "Fix: a host name or address (letters, digits, '.', '-', ':', '@', '/').")
            continue
        if not isinstance(data, dict):
            problems.append(f"{where}: {name}: host data {shown(data)} is not a mapping. "
                            "Fix: a dict, e.g. {'private_address': '10.0.0.11'}.")
            continue
        out.append((name, data))
    return out, problems


def _key_problems(where: str, data: dict) -> list[str]:
    """Keys of host (or group) data that are no names, or look like a setting and are none (a typo)."""
    problems = []
    for k in data:
        if not isinstance(k, str):
            problems.append(f"{where}: data key {shown(k)} is not a name. Fix: use string keys, e.g. 'private_address'.")
        elif k.startswith(SETTING_PREFIXES) and k not in DEFAULTS:
            close = difflib.get_close_matches(k[:200], DEFAULTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see gatekit/defaults.py for every setting"
            problems.append(f"{where}: {key_shown(k)}: unknown setting. Fix: {hint}")
    return problems


def _memory_mb_ok(mem: object) -> bool:
    return mem is None or isinstance(mem, int) and not isinstance(mem, bool) and 1 <= mem <= _MAX_MEMORY_MB


def _host_value_problems(where: str, data: dict) -> list[str]:
    """private_address and memory_mb of one host's data."""
    problems = []
    addr = data.get("private_address")
    if addr is None or addr == "":
        problems.append(f"{where}: private_address missing. Fix: add the host's private IP as private_address.")
    else:
        try:
            ip = ipaddress.ip_address(addr) if isinstance(addr, str) else None
        except ValueError:
            ip = None
        if ip is None:
            problems.append(f"{where}: private_address {shown(addr)} is not an IP address. Fix: use an IP.")
        elif ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_reserved or ip.is_link_local \
                or str(ip) == "255.255.255.255":
            problems.append(
                f"{where}: private_address {shown(addr)} is not a unicast address other hosts reach (Redis and "
                "PostgreSQL listen on it, pg_hba admits it). Fix: use the host's private network IP."
            )
    mem = data.get("memory_mb")
    if not _memory_mb_ok(mem):
        problems.append(f"{where}: memory_mb {shown(mem)} is not the host's memory in MB. "
                        "Fix: a whole number of MB, e.g. 4096 (or leave it out).")
    return problems


def _fleet_setting_problems(where: str, data: dict) -> list[str]:
    return [f"{where}: settings.{k}: a fleet-wide setting (the order a change reaches the gateways) cannot be set "
            "per host. Fix: put it in the spec's settings." for k in FLEET_SETTINGS
            if isinstance(data, dict) and data.get(k) is not None]


def _overrides(data: dict) -> dict:
    # None = not set, as settings_for() reads host data.
    return {k: v for k, v in data.items() if isinstance(k, str) and k in DEFAULTS and v is not None}


def check_hosts(inventory_file: str, hosts: dict[str, list[tuple[str, dict]]], group_data: dict | None = None,
                spec_settings: dict | None = None) -> list[str]:
    """Problems with the host entries themselves (groups, private addresses, per-host settings).

    group_data: the data every group gets (groups()'s `data`), under each host's own; spec_settings: the
    validated spec's settings, which the hosts' settings override (their combined checks see both)."""
    if not isinstance(hosts, dict):
        return [f"{inventory_file}: hosts: expected a mapping of group to hosts, got {shown(hosts)}. "
                f"Fix: e.g. {{'gateways': [...], 'redis': [...], 'postgres': [...]}}."]
    problems = []
    base = dict(spec_settings or {})
    if group_data is not None:
        if not isinstance(group_data, dict):
            problems.append(f"{inventory_file}: data: expected a mapping, got {shown(group_data)}. "
                            "Fix: e.g. {'ssh_user': 'root'}.")
            group_data = {}
        where = f"{inventory_file}: data"
        problems += _key_problems(where, group_data) + _fleet_setting_problems(where, group_data)  # private_address and memory_mb: checked with each host's
        group_problems = check_settings(_overrides(group_data), where, base=base)
        problems += group_problems
        if not group_problems:
            base.update(_overrides(group_data))
    else:
        group_data = {}
    entries: dict[object, list[tuple[str, dict]]] = {}
    for group, value in hosts.items():
        entries[group], bad = _entries(inventory_file, key_shown(group), value)
        problems += bad
    first = (spec_settings or {}).get("rollout_first_gateway")
    if first and entries.get("gateways") and first not in [name for name, _ in entries["gateways"]]:
        problems.append(f"{inventory_file}: gateways: the spec's rollout_first_gateway {shown(first)} is not one of them. "
                        f"Fix: name one of {', '.join(name for name, _ in entries['gateways'])}, or leave it empty "
                        "(the first gateway listed).")
    for group in GROUPS:
        if not entries.get(group) and not any(p.startswith(f"{inventory_file}: {group}") for p in problems):
            problems.append(f"{inventory_file}: {group}: no hosts. Fix: list at least one host in {group}.")
    for group in ("redis", "postgres"):
        if len(entries.get(group, [])) > 1:
            problems.append(
                f"{inventory_file}: {group}: {len(entries[group])} hosts; gatekit manages one {group} server. "
                f"Fix: keep one host in {group}."
            )
    for group in hosts:
        if group not in (*GROUPS, *OPTIONAL_GROUPS):
            problems.append(f"{inventory_file}: {shown(group)}: unknown group. Fix: use {', '.join((*GROUPS, *OPTIONAL_GROUPS))}.")
    for group, group_entries in entries.items():
        if group not in (*GROUPS, *OPTIONAL_GROUPS):
            continue
        for name, data in group_entries:
            where = f"{inventory_file}: {group}: {name}"
            problems += _key_problems(where, data) + _fleet_setting_problems(where, data)
            data = {**{k: v for k, v in group_data.items() if k in HOST_KEYS}, **data}
            problems += _host_value_problems(where, data)
            mem = data.get("memory_mb") if _memory_mb_ok(data.get("memory_mb")) else None
            problems += check_settings(_overrides(data), where, mem, base=base)
    return problems


def groups(inventory_file: str, spec_file: str, hosts: dict[str, list[tuple[str, dict]]], data: dict | None = None):
    """Build pyinfra inventory groups after validating the spec and the hosts.

    hosts: {"gateways": [(name, data)], "redis": [...], "postgres": [...], "monitoring": [...] (optional)}
    — one host may be in several.
    Returns {group: ([(name, data)], group_data)} for the inventory module's globals.
    """
    problems, spec = [], None
    try:
        spec = load_spec(spec_file)
    except SpecError as exc:
        problems += exc.problems
    # The hosts' settings override the spec's: checked over them (over the defaults when the spec is refused).
    problems += check_hosts(inventory_file, hosts, data, spec.settings if spec is not None else None)
    if spec is not None and os.path.basename(sys.argv[0]).startswith("pyinfra"):
        data_args = cli_data(sys.argv[1:])
        if os.environ.get("GATEKIT_ROTATE") and "rotate" not in data_args:
            data_args["rotate"] = os.environ["GATEKIT_ROTATE"]
        problems += data_problems(spec, data_args)
        from gatekit.roles.rotation import cli_problems  # here: roles.rotation imports this module

        problems += cli_problems(sys.argv[1:])
    if problems:
        raise _error(problems)
    # The vault's key and MAC, checked while the inventory loads: a wrong key or a tampered vault stops
    # the run before pyinfra connects to any host (and is reported even when a host is unreachable).
    _secrets(str(spec.vault_path))
    group_data = {"gatekit_spec": str(Path(spec_file).resolve()), **(data or {})}
    return {g: (list(hosts.get(g, [])), dict(group_data)) for g in (*GROUPS, *OPTIONAL_GROUPS)}


@functools.lru_cache(maxsize=None)
def _spec(path: str) -> GatewaySpec:
    return load_spec(path)


@functools.lru_cache(maxsize=None)
def _secrets(vault_path: str) -> dict[str, str]:
    from gatekit.vault import VaultError, read_secrets, resolve_key

    try:
        return read_secrets(Path(vault_path), resolve_key(Path(vault_path)))
    except VaultError as exc:
        raise _error([f"{vault_path}: {exc}"]) from None


@dataclass(frozen=True)
class Context:
    spec: GatewaySpec
    settings: dict
    secrets: dict[str, str]

    def secret(self, name: str) -> str:
        return self.secrets[name]


def settings_for(spec: GatewaySpec, host_data: dict) -> dict:
    """DEFAULTS < spec settings < this host's data."""
    out = {**DEFAULTS, **spec.settings}
    out.update({k: host_data[k] for k in DEFAULTS if host_data.get(k) is not None})
    return out


def context(host) -> Context:
    path = host.data.get("gatekit_spec") or os.environ.get("GATEKIT_SPEC")
    if not path:
        raise _error(["inventory: gatekit_spec is not set. Fix: build the inventory with gatekit.inventory.groups()."])
    try:
        spec = _spec(str(path))
    except SpecError as exc:
        raise _error(exc.problems) from None
    host_data = host.data.dict()
    settings = settings_for(spec, host_data)
    problems = check_settings({k: host_data[k] for k in DEFAULTS if host_data.get(k) is not None}, f"host {host.name}",
                              base=spec.settings)
    if problems:
        raise _error(problems)
    return Context(spec=spec, settings=settings, secrets=_secrets(str(spec.vault_path)))


def group_hosts(inventory, group: str):
    return list(inventory.get_group(group, default=[]))
