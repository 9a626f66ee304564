"""Provider keys and service secrets on a gateway: encrypted with the host's systemd credential key.

The plaintext is staged on tmpfs (root-only), encrypted by systemd-creds (reading the file, so the value
is never in a command line), and removed in the same command. A fingerprint file beside each credential
lets re-runs see that nothing changed without decrypting anything. Shared by the litellm role (first
install) and rotation (the next key, staged as NAME.cred.next).
"""

from __future__ import annotations

import io

from pyinfra import host
from pyinfra.api import FileUploadCommand, operation
from pyinfra.api.exceptions import PyinfraError

from gatekit.hoststate import Desired
from gatekit.onhost.probe import fingerprint
from gatekit.onhost.layout import Layout
from gatekit.render import secret_env
from gatekit.roles import topology


def secrets_for_gateway(ctx) -> dict[str, str]:
    """{secret name: environment variable} of everything a gateway's LiteLLM process needs."""
    s = ctx.settings
    names = {d.secret: secret_env(d.secret) for m in ctx.spec.models for d in m.deployments}
    names[s["litellm_master_key_secret"]] = "LITELLM_MASTER_KEY"
    names[s["redis_password_secret"]] = "REDIS_PASSWORD"
    if s["litellm_database"] or topology.usage_database(s):  # LiteLLM's own tables, or client-key usage
        names[s["postgres_password_secret"]] = "GK_POSTGRES_PASSWORD"
    return names


def key_fingerprints(ctx) -> dict[str, str]:
    """{provider key secret: fingerprint} of the vault's current keys."""
    return {d.secret: fingerprint(ctx.secret(d.secret)) for m in ctx.spec.models for d in m.deployments}


def declare(want: Desired, layout: Layout, names) -> None:
    """What install() needs read from the host: each credential's fingerprint and presence."""
    want.texts += [layout.cred_fingerprint(n) for n in names]
    want.paths_to_check += [layout.cred(n) for n in names]


def pending(ctx, layout: Layout, names, want: Desired) -> tuple[dict[str, str], list[str]]:
    """({name: value} of each secret whose fingerprint differs from the host's or that is missing there, [names of
    those that replace a credential already on the host])."""
    todo = {
        name: ctx.secret(name)
        for name in sorted(names)
        if want.text(layout.cred_fingerprint(name)) != fingerprint(ctx.secret(name))
        or layout.cred(name) not in want.state["paths"]
    }
    changed = sorted(n for n in todo if layout.cred(n) in want.state["paths"] and want.text(layout.cred_fingerprint(n)))
    return todo, changed


def refuse_changed_keys(ctx, changed: list[str]):
    """A changed key on a running gateway is rotate_keys.py's job (blue/green, canary, rollback), unless the
    operator set litellm_restart_on_secret_change."""
    if changed and not ctx.settings["litellm_restart_on_secret_change"]:
        raise PyinfraError(
            f"host {host.name}: {', '.join(changed)} in the vault differ from the credentials live on the host. "
            f"Fix: rotate without downtime: pyinfra INVENTORY rotate_keys.py --data rotate={','.join(changed)} "
            "(or set litellm_restart_on_secret_change: true to accept a restart)."
        )


def install(ctx, layout: Layout, names, want: Desired, refuse_live_change: bool = True, skip=()) -> list:
    """Encrypt each secret whose fingerprint differs from the host's; only changed secrets travel.
    refuse_live_change: a changed secret stops the deploy (LiteLLM's keys change by rotation only); `skip`: names
    the caller stages itself (a blue/green switch)."""
    todo, changed = pending(ctx, layout, names, want)
    if refuse_live_change:
        refuse_changed_keys(ctx, changed)
    todo = {n: v for n, v in todo.items() if n not in skip}
    if not todo:
        return []
    fps = ", ".join(f"{name} ({fingerprint(value)})" for name, value in todo.items())
    return [encrypt_credentials(name=f"Encrypt credentials {fps}", layout=layout, secrets=todo)]


def encrypt_commands(layout: Layout, name: str, value: str, suffix: str):
    """Upload `value` to tmpfs (root-only), encrypt it with the host's credential key into
    NAME.cred{suffix} (its fingerprint into NAME.fp{suffix}) and remove the plaintext in the same command."""
    staged = f"{layout.stage_dir}/{name}"
    cred = layout.cred(name) + suffix
    yield FileUploadCommand(io.StringIO(value), staged, remote_temp_filename=f"{layout.stage_dir}/.upload-{name}")
    yield (
        f"chmod 600 {staged}; systemd-creds encrypt --name={name} {staged} {cred}; rc=$?; rm -f {staged}; "
        f"[ $rc -eq 0 ] && chmod 600 {cred} && echo {fingerprint(value)} > {layout.cred_fingerprint(name)}{suffix}"
    )


@operation()
def encrypt_credentials(layout: Layout, secrets: dict[str, str]):
    """One operation for all changed secrets: each is encrypted beside the live one, then swapped in
    (the previous kept as .cred.prev)."""
    yield f"install -d -m 700 {layout.stage_dir}"
    for name, value in secrets.items():
        yield from encrypt_commands(layout, name, value, ".new")
        c = f"{layout.creds_dir}/{name}"
        yield f"if [ -f {c}.cred ]; then cp -p {c}.cred {c}.cred.prev; fi; mv {c}.cred.new {c}.cred && mv {c}.fp.new {c}.fp"
