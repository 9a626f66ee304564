"""Glue between pyinfra inventories and the gateway spec.

Inventory files call `groups()` so a bad spec or a bad host entry stops the run while the inventory
loads, before pyinfra connects to any host. Deploy files call `context()` for the validated spec, the
effective settings of the current host and the decrypted secrets.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from gatekit.defaults import DEFAULTS
from gatekit.spec import GatewaySpec, SpecError, check_settings, load_spec

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


def check_hosts(inventory_file: str, hosts: dict[str, list[tuple[str, dict]]]) -> list[str]:
    """Problems with the host entries themselves (groups, private addresses, per-host settings)."""
    problems = []
    for group in GROUPS:
        if not hosts.get(group):
            problems.append(f"{inventory_file}: {group}: no hosts. Fix: list at least one host in {group}.")
    for group in ("redis", "postgres"):
        if len(hosts.get(group, [])) > 1:
            problems.append(
                f"{inventory_file}: {group}: {len(hosts[group])} hosts; gatekit manages one {group} server. "
                f"Fix: keep one host in {group}."
            )
    for group in hosts:
        if group not in (*GROUPS, *OPTIONAL_GROUPS):
            problems.append(f"{inventory_file}: {str(group)[:80]!r}: unknown group. Fix: use {', '.join((*GROUPS, *OPTIONAL_GROUPS))}.")
    for group, entries in hosts.items():
        for name, data in entries:
            where = f"{inventory_file}: {group}: {name}"
            addr = data.get("private_address")
            if not addr:
                problems.append(f"{where}: private_address missing. Fix: add the host's private IP as private_address.")
            else:
                try:
                    ip = ipaddress.ip_address(addr) if isinstance(addr, str) else None
                except ValueError:
                    ip = None
                if ip is None:
                    problems.append(f"{where}: private_address {addr!r} is not an IP address. Fix: use an IP.")
                elif ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip.is_reserved or ip.is_link_local \
                        or str(ip) == "255.255.255.255":
                    problems.append(
                        f"{where}: private_address {addr!r} is not a unicast address other hosts reach (Redis and "
                        "PostgreSQL listen on it, pg_hba admits it). Fix: use the host's private network IP."
                    )
            overrides = {k: v for k, v in data.items() if k in DEFAULTS}
            problems += check_settings(overrides, where, data.get("memory_mb"))
            unknown = [k for k in data if k.startswith(("litellm_", "nginx_", "redis_", "postgres_")) and k not in DEFAULTS]
            for k in unknown:
                problems.append(f"{where}: {k}: unknown setting. Fix: see gatekit/defaults.py for every setting.")
    return problems


def groups(inventory_file: str, spec_file: str, hosts: dict[str, list[tuple[str, dict]]], data: dict | None = None):
    """Build pyinfra inventory groups after validating the spec and the hosts.

    hosts: {"gateways": [(name, data)], "redis": [...], "postgres": [...], "monitoring": [...] (optional)}
    — one host may be in several.
    Returns {group: ([(name, data)], group_data)} for the inventory module's globals.
    """
    problems = check_hosts(inventory_file, hosts)
    spec = None
    try:
        spec = load_spec(spec_file)
    except SpecError as exc:
        problems += exc.problems
    if spec is not None and os.path.basename(sys.argv[0]).startswith("pyinfra"):
        data_args = cli_data(sys.argv[1:])
        if os.environ.get("GATEKIT_ROTATE") and "rotate" not in data_args:
            data_args["rotate"] = os.environ["GATEKIT_ROTATE"]
        problems += data_problems(spec, data_args)
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
    problems = check_settings({k: host_data[k] for k in DEFAULTS if host_data.get(k) is not None}, f"host {host.name}")
    if problems:
        raise _error(problems)
    return Context(spec=spec, settings=settings, secrets=_secrets(str(spec.vault_path)))


def group_hosts(inventory, group: str):
    return list(inventory.get_group(group, default=[]))
