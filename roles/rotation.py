"""Rotate provider keys on the gateways through the blue/green switch (roles/switch.py): the first gateway alone,
then the others in batches; stop at the first failure.

Which secrets: pyinfra data `rotate` ("openai_key,anthropic_key") or env GATEKIT_ROTATE. Their new values are
already in the vault (`gatekit secrets set`). Each gateway stages the new credentials and the config whose
deployment ids carry their fingerprints, and gatekit-rotate switches (see gatekit/onhost/rotate.py). A gateway
whose live credentials already match the vault is skipped: a second run changes nothing.
"""

from __future__ import annotations

import json
import os

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from gatekit.hoststate import Desired
from gatekit.inventory import cli_data, context
from gatekit.onhost.layout import Layout
from gatekit.onhost.probe import fingerprint
from gatekit.render import deployment_id
from gatekit.roles.credentials import key_fingerprints, secrets_for_gateway
from gatekit.roles.litellm import config_digests, render_config
from gatekit.roles.switch import fault_injection, rotate_argv, switch_in_waves

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
    config = render_config(ctx)
    switch_in_waves(
        f"Rotate {', '.join(todo) or 'interrupted rotation'} (blue/green + canary)",
        layout=L,
        secrets=todo,
        # The config whose deployment ids carry the new keys' fingerprints; swapped in with the credentials.
        files={L.config: (config, "root", L.litellm_user, "640")},
        argv=rotate_argv(s, todo, new_ids, purge_ids, files=[L.config], digests=config_digests(ctx), **fault_injection()),
    )
