"""Rotate provider keys on the gateways: one host at a time, stop at the first failure.

Which secrets: pyinfra data `rotate` ("openai_key,anthropic_key") or env GATEKIT_ROTATE. Their new values
are already in the vault (`gatekit secrets set`). For each gateway, in inventory order, one operation:
stage the new credentials encrypted on the host (NAME.cred.next), then run gatekit-rotate there, which
does the blue/green switch with canaries and rolls back by itself on failure (see gatekit/onhost/rotate.py).
A gateway whose live credentials already match the vault is skipped: a second run changes nothing.
"""

from __future__ import annotations

import io
import os
import shlex

from pyinfra import host
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError

from gatekit.hoststate import ROTATION_JOURNAL, Desired
from gatekit.inventory import context
from gatekit.render import deployment_id
from roles.litellm import (CREDS_DIR, ROTATE_SCRIPT, STAGE_DIR, encrypt_credential_commands, fingerprint,
                           key_fingerprints, redis_target_for, render_config, secrets_for_gateway)

# Every host's rotation operation. Hosts are collected in no fixed order but executed serially, so
# "an earlier host failed" = one of these already ran and errored.
_ROTATIONS: list = []


def requested() -> list[str]:
    raw = host.data.get("rotate") or os.environ.get("GATEKIT_ROTATE", "")
    names = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
    return sorted({n.strip() for n in names if n and n.strip()})


def deployment_ids(spec, names: set[str], fingerprints: dict[str, str] | None = None) -> list[str]:
    """The LiteLLM deployment ids (model_info.id, see render.py) whose key is one of `names`."""
    fps = fingerprints or {}
    return [deployment_id(m.name, i, fps.get(d.secret)) for m in spec.models for i, d in enumerate(m.deployments)
            if d.secret in names]


@operation()
def rotate_gateway(secrets: dict, config: str, config_path: str, service_group: str, deployment_ids: list,
                   purge_ids: list, ports: list, https_port: int, ready_timeout: int, settle: float, venv: str,
                   script: str, master_cred: str, redis_cred: str, fail_after: str = "", fail_at: str = ""):
    """Stage encrypted credentials and run gatekit-rotate on this host (inside a transient unit, so a
    dropped SSH session or a killed controller cannot stop it half-way)."""
    yield f"install -d -m 700 {STAGE_DIR}"
    for name, value in secrets.items():
        yield from encrypt_credential_commands(name, value, ".next")
    # The config whose deployment ids carry the new keys' fingerprints; swapped in with the credentials.
    yield FileUploadCommand(io.StringIO(config), f"{config_path}.next", remote_temp_filename=f"{STAGE_DIR}/.upload-config")
    yield f"chown root:{service_group} {config_path}.next && chmod 640 {config_path}.next"
    args = [
        "--secrets", ",".join(secrets) or "-",
        "--deployments", ",".join(deployment_ids),
        "--purge-deployments", ",".join(purge_ids),
        "--ports", ",".join(str(p) for p in ports),
        "--https-port", str(https_port),
        "--master-cred", master_cred,
        "--redis-cred", redis_cred,
        "--ready-timeout", str(ready_timeout),
        "--settle", str(settle),
    ]
    if fail_after:
        args += ["--fail-after", fail_after]
    if fail_at:
        args += ["--fail-at", fail_at]
    # One rotation per host at a time: wait for an earlier one (e.g. from a killed controller) to end.
    yield "while systemctl is-active --quiet gatekit-rotate.service; do sleep 1; done"
    yield (
        "systemd-run --quiet --wait --pipe --collect --unit=gatekit-rotate --property=TimeoutStopSec=120 "
        f"{venv}/bin/python3 {script} " + " ".join(shlex.quote(a) for a in args)
    )


@deploy("Rotate provider keys")
def rotation():
    names = requested()
    if not names:
        raise PyinfraError(
            "rotate_keys.py: which secrets? Fix: --data rotate=openai_key[,other] (or GATEKIT_ROTATE=...)."
        )
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

    want = Desired(texts=[ROTATION_JOURNAL, *(f"{CREDS_DIR}/{n}.fp" for n in names)])
    want.read()
    interrupted = ROTATION_JOURNAL in want.state["texts"]
    # After an interruption the fingerprint files may already show the new key while the host still
    # serves the old one: stage everything requested; gatekit-rotate skips what recovery proves is live.
    todo = {n: ctx.secret(n) for n in names
            if interrupted or want.text(f"{CREDS_DIR}/{n}.fp") != fingerprint(ctx.secret(n))}
    if not todo and not interrupted:
        return  # this host already serves the vault's keys

    new_fps = key_fingerprints(ctx)
    host_fps = {n: want.text(f"{CREDS_DIR}/{n}.fp") for n in todo}
    op = rotate_gateway(
        name=f"Rotate {', '.join(todo) or 'interrupted rotation'} (blue/green + canary)",
        secrets=todo,
        config=render_config(ctx, redis_target_for(s)),
        config_path=f"{s['litellm_config_dir']}/config.yaml",
        service_group=s["litellm_user"],
        deployment_ids=deployment_ids(ctx.spec, set(todo), new_fps),
        purge_ids=deployment_ids(ctx.spec, set(todo), host_fps),
        ports=list(s["litellm_ports"]),
        https_port=s["nginx_https_port"],
        ready_timeout=s["litellm_ready_timeout"],
        settle=s["rotation_settle_sec"],
        venv=f"{s['litellm_home']}/venv",
        script=ROTATE_SCRIPT.format(home=s["litellm_home"]),
        master_cred=s["litellm_master_key_secret"],
        redis_cred=s["redis_password_secret"],
        fail_after=str(host.data.get("gatekit_rotate_fail_after") or ""),
        fail_at=str(host.data.get("gatekit_rotate_fail_at") or ""),
        _serial=True,
        # Stop at the first failure: hosts after a failed one are left untouched.
        _if=lambda: not any(m.is_complete() and m.did_error() for m in _ROTATIONS),
    )
    _ROTATIONS.append(op)
