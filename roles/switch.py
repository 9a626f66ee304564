"""The blue/green switch of the gateways, for key rotation and for every deploy change that needs LiteLLM restarted.

One operation per gateway (switch_gateway): stage the new inputs on the host (credentials encrypted as
NAME.cred.next, files as PATH.next), then run gatekit-rotate there, which does the blue/green switch with
canaries and rolls back by itself on failure (see gatekit/onhost/rotate.py). Every path, unit and port the host
program uses comes from the layout.json the deploy put beside it.

Fleet order (switch_in_waves): the first gateway (rollout_first_gateway, else the first of the inventory's
`gateways`) alone, then the others in inventory order in batches of rollout_batch; a wave starts only once every
earlier one succeeded, so the first failure leaves every later gateway untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation

from gatekit.defaults import DEFAULTS
from gatekit.inventory import context, group_hosts
from gatekit.onhost.layout import Layout
from gatekit.roles import topology
from gatekit.roles.credentials import encrypt_commands

# Every gateway's switch operation, of every wave. A wave runs only after the earlier ones, so "an earlier
# gateway failed" = one of these already ran and errored.
_SWITCHES: list = []


def deployment_digests(config: dict) -> dict[str, str]:
    """{deployment id: sha1 of what LiteLLM calls it with} of a rendered config (render.litellm_config): recorded on
    the host with each switch, so the next change canaries exactly the deployments it adds or alters."""
    return {d["model_info"]["id"]: hashlib.sha1(json.dumps(d["litellm_params"], sort_keys=True).encode()).hexdigest()[:12]
            for d in config["model_list"]}


def touched_deployments(new: dict[str, str], live_record: str) -> list[str]:
    """The ids of `new` (deployment_digests) whose digest the host's live.json does not record: all of them when it
    records none (a host switched before digests were recorded, or a record it cannot read)."""
    try:
        recorded = json.loads(live_record or "{}").get("deployments")
    except (ValueError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        return list(new)
    return [i for i, digest in new.items() if recorded.get(i) != digest]


def rotate_argv(s: dict, secrets, deployment_ids, purge_ids, fail_after: str = "", fail_at: str = "", files=(),
                models=(), digests: dict | None = None, change: str = "rotation") -> list[str]:
    """gatekit-rotate's arguments (gatekit/onhost/rotate.py parser()) for a host whose settings are `s`: every
    value with a setting comes from it, so gatekit/defaults.py is the only place they are defaulted."""
    argv = [
        "--secrets", ",".join(secrets) or "-",
        "--files", ",".join(files),
        "--models", ",".join(models),
        "--digests", ",".join(f"{i}={d}" for i, d in (digests or {}).items()),
        "--change", change,
        "--deployments", ",".join(deployment_ids),
        "--purge-deployments", ",".join(purge_ids),
        "--master-cred", s["litellm_master_key_secret"],
        "--redis-cred", s["redis_password_secret"],
        "--ready-timeout", str(s["litellm_ready_timeout"]),
        "--settle", str(s["rotation_settle_sec"]),
    ]
    if fail_after:
        argv += ["--fail-after", fail_after]
    if fail_at:
        argv += ["--fail-at", fail_at]
    return argv


@operation()
def switch_gateway(layout: Layout, secrets: dict, files: dict, argv: list, credentials: list, redis_host: str = "",
                   active: bool = True):
    """Stage encrypted credentials and files ({path: (content, user, group, mode)}, each as PATH.next) and run
    gatekit-rotate with `argv` (rotate_argv) on this host (inside a transient unit, so a dropped SSH session or a
    killed controller cannot stop it half-way). `credentials`: the names of the master key and the Redis password,
    which the canaries and the purge authenticate with. `active` False: this host's place in a wave it is not in
    (switch_in_waves), nothing to do."""
    if not active:
        return
    yield f"install -d -m 700 {layout.stage_dir}"
    for name, value in secrets.items():
        yield from encrypt_commands(layout, name, value, ".next")
    for i, (path, (content, user, group, mode)) in enumerate(sorted(files.items())):
        yield FileUploadCommand(io.StringIO(content), f"{path}.next", remote_temp_filename=f"{layout.stage_dir}/.upload-{i}")
        yield f"chown {user}:{group} {shlex.quote(path)}.next && chmod {mode} {shlex.quote(path)}.next"
    # One switch per host at a time: wait for an earlier one (e.g. from a killed controller) to end.
    unit = layout.rotate_unit
    yield f"while systemctl is-active --quiet {unit}; do sleep 1; done"
    props = " ".join(f"--property={shlex.quote(p)}"
                     for p in ("TimeoutStopSec=120", *helper_sandbox(layout, redis_host, sorted(files))))
    # The credentials the canaries and the purge authenticate with: the file the new instance will start from.
    for name in sorted(set(credentials)):
        cred = layout.cred(name)
        props += f' --property="LoadCredentialEncrypted={name}:$([ -e {cred}.next ] && echo {cred}.next || echo {cred})"'
    yield (
        f"systemd-run --quiet --wait --pipe --collect --unit={unit} {props} "
        f"{HELPER_PYTHON} {layout.program('rotate.py')} " + " ".join(shlex.quote(a) for a in argv)
    )


# The system's python, without site directories or environment: rotate.py needs only the standard library.
HELPER_PYTHON = "/usr/bin/python3 -E -s -S"


def helper_sandbox(layout: Layout, redis_host: str | None, files=()) -> tuple[str, ...]:
    """The rotation helper runs as root (it starts and stops units over D-Bus, tests and reloads nginx, swaps
    credentials and the config), with only that: it writes the credentials, LiteLLM's config, gatekit's
    state, nginx's include directory and logs (`nginx -t` opens nginx's log files, which belong to www-data,
    and binds its ports: CAP_DAC_OVERRIDE and CAP_NET_BIND_SERVICE are its only capabilities); gets the two credentials it authenticates with from systemd
    (LoadCredentialEncrypted), never from another unit; talks only to loopback and Redis. `files`: the paths a
    deploy's switch swaps (renamed in their directories, which it then writes too). LiteLLM's home: the `venv` symlink
    there follows the live launcher's build (rotate.py point_venv_at_live)."""
    writable = [layout.creds_dir, layout.litellm_config_dir, layout.gatekit_state_dir, layout.nginx_include_dir,
                layout.nginx_log_dir, layout.litellm_home]
    writable += [d for d in dict.fromkeys(os.path.dirname(f) for f in files) if d not in writable]
    return (
        "UMask=0022", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
        f"ReadWritePaths={' '.join(writable)}",
        "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
        "ProtectHostname=yes", "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
        "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
        "IPAddressDeny=any", "IPAddressAllow=127.0.0.0/8 ::1/128" + (f" {redis_host}" if redis_host else ""),
    )


def batch_size(batch: str, rest: int) -> int:
    """rollout_batch ("2" or "25%") as a number of gateways out of `rest`: at least 1."""
    if batch.endswith("%"):
        return max(1, rest * int(batch[:-1]) // 100)
    return max(1, int(batch))


def fleet_waves(gateways: list[str], first: str, batch: str) -> list[list[str]]:
    """The order a change reaches the fleet: [first] alone, then the rest in inventory order, `batch` at a time."""
    first = first or gateways[0]
    rest = [g for g in gateways if g != first]
    size = batch_size(batch, len(rest))
    return [[first], *(rest[i:i + size] for i in range(0, len(rest), size))]


def waves_of_fleet() -> list[list[str]]:
    """fleet_waves for this inventory; rollout_* are fleet-wide (the spec's settings, refused as host data)."""
    s = {**DEFAULTS, **context(host).spec.settings}
    return fleet_waves([h.name for h in group_hosts(host.inventory, "gateways")], s["rollout_first_gateway"],
                       s["rollout_batch"])


def _no_earlier_failure() -> bool:
    return not any(m.is_complete() and m.did_error() for m in _SWITCHES)


def fault_injection() -> dict[str, str]:
    """The lab's fault injection (host data gatekit_rotate_fail_after / _fail_at: gatekit-rotate kills itself after,
    or fails inside, that step), as rotate_argv takes it."""
    return {"fail_after": str(host.data.get("gatekit_rotate_fail_after") or ""),
            "fail_at": str(host.data.get("gatekit_rotate_fail_at") or "")}


def switch_in_waves(name: str, layout: Layout, secrets: dict, files: dict, argv: list):
    """switch_gateway on this host in its wave of the fleet (waves_of_fleet), authenticating its canaries and purge
    with the master key and Redis password the host's settings name. The host takes a place in every wave up to its
    own (an operation that does nothing where it is not in the wave): pyinfra orders operations by what each host
    runs before what, so wave N+1 then always comes after wave N."""
    s = context(host).settings
    switch = dict(layout=layout, secrets=secrets, files=files, argv=argv,
                  credentials=[s["litellm_master_key_secret"], s["redis_password_secret"]],
                  redis_host=(topology.redis_target(s) or {}).get("host", ""))
    waves = waves_of_fleet()
    mine = next(i for i, wave in enumerate(waves) if host.name in wave)
    for i in host.loop(range(mine + 1)):
        # Stop at the first failure: every gateway of a later wave is left untouched.
        gate = {"_if": _no_earlier_failure} if i == mine and i > 0 else {}
        op = switch_gateway(
            name=f"{name} (wave {i + 1} of {len(waves)}: {', '.join(waves[i])})" if i == mine else
            f"Switch wave {i + 1} of {len(waves)}: {', '.join(waves[i])} (another gateway's turn)",
            active=i == mine,
            **gate,
            **switch,
        )
        _SWITCHES.append(op)
