"""Rotate provider keys on the gateways: one host at a time, stop at the first failure.

Which secrets: pyinfra data `rotate` ("openai_key,anthropic_key") or env GATEKIT_ROTATE. Their new values
are already in the vault (`gatekit secrets set`). For each gateway, one at a time, one operation (in
pyinfra's serial order, which is not the inventory's: pyinfra iterates a set of hosts):
stage the new credentials encrypted on the host (NAME.cred.next), then run gatekit-rotate there, which
does the blue/green switch with canaries and rolls back by itself on failure (see gatekit/onhost/rotate.py).
Every path, unit and port the host program uses comes from the layout.json the deploy put beside it.
A gateway whose live credentials already match the vault is skipped: a second run changes nothing.
"""

from __future__ import annotations

import io
import json
import os
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError

from gatekit.hoststate import Desired
from gatekit.inventory import cli_data, context
from gatekit.onhost.layout import Layout
from gatekit.onhost.probe import fingerprint
from gatekit.render import deployment_id
from gatekit.roles.credentials import encrypt_commands, key_fingerprints, secrets_for_gateway
from gatekit.roles import topology
from gatekit.roles.litellm import render_config

# Every host's rotation operation. Hosts are collected in no fixed order but executed serially, so
# "an earlier host failed" = one of these already ran and errored.
_ROTATIONS: list = []


NO_SECRET = "rotate_keys.py: which secrets? Fix: --data rotate=openai_key[,other] (or GATEKIT_ROTATE=...)."


def requested() -> list[str]:
    raw = host.data.get("rotate") or os.environ.get("GATEKIT_ROTATE", "")
    names = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return sorted({n.strip() for n in names if n and n.strip()})


def cli_problems(argv: list[str], environ=os.environ) -> list[str]:
    """What stops a `pyinfra INVENTORY rotate_keys.py` command line before pyinfra connects to any host: no secret
    named. pyinfra loads the deploy file only after connecting to every host, so the inventory must check this while
    it loads (gatekit.inventory.groups, given the command line's arguments), where a secret named but not used by the
    gateways is refused already (data_problems)."""
    if not any(os.path.basename(a) == "rotate_keys.py" for a in argv):
        return []
    raw = cli_data(argv).get("rotate") or environ.get("GATEKIT_ROTATE", "")
    return [] if any(n.strip() for n in raw.split(",")) else [NO_SECRET]


def deployment_ids(spec, names: set[str], fingerprints: dict[str, str] | None = None) -> list[str]:
    """The LiteLLM deployment ids (model_info.id, see render.py) whose key is one of `names`."""
    fps = fingerprints or {}
    return [deployment_id(m.name, i, fps.get(d.secret)) for m in spec.models for i, d in enumerate(m.deployments)
            if d.secret in names]


def rotate_argv(s: dict, secrets, deployment_ids, purge_ids, fail_after: str = "", fail_at: str = "") -> list[str]:
    """gatekit-rotate's arguments (gatekit/onhost/rotate.py parser()) for a host whose settings are `s`: every
    value with a setting comes from it, so gatekit/defaults.py is the only place they are defaulted."""
    argv = [
        "--secrets", ",".join(secrets) or "-",
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
def rotate_gateway(layout: Layout, secrets: dict, config: str, argv: list, credentials: list, redis_host: str = ""):
    """Stage encrypted credentials and run gatekit-rotate with `argv` (rotate_argv) on this host (inside a transient
    unit, so a dropped SSH session or a killed controller cannot stop it half-way). `credentials`: the names of the
    master key and the Redis password, which the canaries and the purge authenticate with."""
    yield f"install -d -m 700 {layout.stage_dir}"
    for name, value in secrets.items():
        yield from encrypt_commands(layout, name, value, ".next")
    # The config whose deployment ids carry the new keys' fingerprints; swapped in with the credentials.
    yield FileUploadCommand(io.StringIO(config), f"{layout.config}.next", remote_temp_filename=f"{layout.stage_dir}/.upload-config")
    yield f"chown root:{layout.litellm_user} {layout.config}.next && chmod 640 {layout.config}.next"
    # One rotation per host at a time: wait for an earlier one (e.g. from a killed controller) to end.
    unit = layout.rotate_unit
    yield f"while systemctl is-active --quiet {unit}; do sleep 1; done"
    props = " ".join(f"--property={shlex.quote(p)}" for p in ("TimeoutStopSec=120", *helper_sandbox(layout, redis_host)))
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


def helper_sandbox(layout: Layout, redis_host: str | None) -> tuple[str, ...]:
    """The rotation helper runs as root (it starts and stops units over D-Bus, tests and reloads nginx, swaps
    credentials and the config), with only that: it writes the credentials, LiteLLM's config, gatekit's
    state, nginx's include directory and logs (`nginx -t` opens nginx's log files, which belong to www-data,
    and binds its ports: CAP_DAC_OVERRIDE and CAP_NET_BIND_SERVICE are its only capabilities); gets the two credentials it authenticates with from systemd
    (LoadCredentialEncrypted), never from another unit; talks only to loopback and Redis."""
    return (
        "UMask=0022", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_NET_BIND_SERVICE", "ProtectSystem=strict",
        f"ReadWritePaths={layout.creds_dir} {layout.litellm_config_dir} {layout.gatekit_state_dir} "
        f"{layout.nginx_include_dir} {layout.nginx_log_dir}",
        "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes", "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes", "ProtectClock=yes",
        "ProtectHostname=yes", "RestrictNamespaces=yes", "RestrictRealtime=yes", "RestrictSUIDSGID=yes",
        "LockPersonality=yes", "MemoryDenyWriteExecute=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures=native", "SystemCallFilter=@system-service",
        "IPAddressDeny=any", "IPAddressAllow=127.0.0.0/8 ::1/128" + (f" {redis_host}" if redis_host else ""),
    )


def old_deployment_ids(from_fingerprints: list[str], new_ids: list[str], journal: str | None) -> list[str]:
    """The deployment ids whose Redis state the rotation purges: those of the keys the host's fingerprint
    files name, and, after an interruption, those its journal recorded. Cut off after the swap, the
    fingerprint files already name the new key, whose state must stay; the journal names the old one."""
    try:
        recorded = json.loads(journal or "{}").get("purge", [])
    except (ValueError, AttributeError):
        recorded = []
    recorded = [i for i in recorded if isinstance(i, str)] if isinstance(recorded, list) else []
    return [i for i in dict.fromkeys([*from_fingerprints, *recorded]) if i not in new_ids]


@deploy("Rotate provider keys")
def rotation():
    names = requested()
    if not names:  # refused before connecting when the inventory calls cli_problems; here for any other way in
        raise PyinfraError(NO_SECRET)
    if "gateways" not in host.groups:
        return
    ctx = context(host)
    s = ctx.settings
    used = secrets_for_gateway(ctx)
    unknown = [n for n in names if n not in used]
    if unknown:
        raise PyinfraError(
            f"rotate: {', '.join(unknown)} not used by the gateways. Fix: rotate one of {sorted(used)}."
        )

    L = Layout.from_settings(s)
    want = Desired(texts=[L.journal_file, *(L.cred_fingerprint(n) for n in names)])
    want.read()
    interrupted = L.journal_file in want.state["texts"]
    # After an interruption the fingerprint files may already show the new key while the host still
    # serves the old one: stage everything requested; gatekit-rotate skips what recovery proves is live.
    todo = {n: ctx.secret(n) for n in names
            if interrupted or want.text(L.cred_fingerprint(n)) != fingerprint(ctx.secret(n))}
    if not todo and not interrupted:
        return  # this host already serves the vault's keys

    new_fps = key_fingerprints(ctx)
    host_fps = {n: want.text(L.cred_fingerprint(n)) for n in todo}
    new_ids = deployment_ids(ctx.spec, set(todo), new_fps)
    purge_ids = old_deployment_ids(deployment_ids(ctx.spec, set(todo), host_fps), new_ids, want.text(L.journal_file))
    op = rotate_gateway(
        name=f"Rotate {', '.join(todo) or 'interrupted rotation'} (blue/green + canary)",
        layout=L,
        secrets=todo,
        config=render_config(ctx),
        argv=rotate_argv(s, todo, new_ids, purge_ids, fail_after=str(host.data.get("gatekit_rotate_fail_after") or ""),
                         fail_at=str(host.data.get("gatekit_rotate_fail_at") or "")),
        credentials=[s["litellm_master_key_secret"], s["redis_password_secret"]],
        redis_host=(topology.redis_target(s) or {}).get("host", ""),
        _serial=True,
        # Stop at the first failure: hosts after a failed one are left untouched.
        _if=lambda: not any(m.is_complete() and m.did_error() for m in _ROTATIONS),
    )
    _ROTATIONS.append(op)
