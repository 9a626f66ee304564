"""`gatekit status INVENTORY`: what each gateway serves now, read from the record its last switch wrote (live.json,
gatekit/onhost/rotate.py record()), and whether the fleet is mixed or has a change pending.

Read-only. One SSH command per gateway (shell only, no Python needed on the host): the live record, an interrupted
switch's journal, the config's sha1, the live venv and the LiteLLM version in it, and each credential's fingerprint
file. What the controller would deploy (config sha1, key fingerprints) comes from the spec and the vault.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gatekit.onhost.layout import Layout


def evidence_command(L: Layout) -> str:
    q = shlex.quote
    return " ; ".join([
        f"[ -f {q(L.live_file)} ] && printf 'live %s\\n' \"$(base64 -w0 < {q(L.live_file)})\"",
        f"[ -f {q(L.journal_file)} ] && printf 'journal %s\\n' \"$(base64 -w0 < {q(L.journal_file)})\"",
        f"[ -f {q(L.config)} ] && printf 'config %s\\n' \"$(sha1sum < {q(L.config)} | cut -d' ' -f1)\"",
        f"printf 'venv %s\\n' \"$(readlink {q(L.venv)})\"",
        f"for d in {q(L.venv)}/lib/python3*/site-packages/litellm-*.dist-info; do [ -d \"$d\" ] && "
        "printf 'litellm %s\\n' \"${d##*/}\"; done",
        f"for f in {q(L.creds_dir)}/*.fp; do [ -f \"$f\" ] && printf 'fp %s %s\\n' \"$(basename \"$f\" .fp)\" "
        "\"$(cat \"$f\")\"; done",
        "true",
    ])


def parse_evidence(lines: list[str]) -> dict:
    """The evidence command's lines -> {live, journal, config_sha1, venv, litellm_version, fingerprints}."""
    ev: dict = {"live": None, "journal": None, "config_sha1": "", "venv": "", "litellm_version": "", "fingerprints": {}}
    for line in lines:
        kind, _, rest = line.strip().partition(" ")
        if kind in ("live", "journal"):
            try:
                ev[kind] = json.loads(base64.b64decode(rest))
            except ValueError:
                ev[kind] = {"unreadable": True}
        elif kind == "config":
            ev["config_sha1"] = rest
        elif kind == "venv":
            ev["venv"] = rest
        elif kind == "litellm" and rest.startswith("litellm-"):
            ev["litellm_version"] = Layout.dist_info_version(rest)
        elif kind == "fp":
            name, _, fp = rest.partition(" ")
            ev["fingerprints"][name] = fp
    return ev


def gateway_status(name: str, ev: dict, want_config_sha1: str, want_fingerprints: dict[str, str]) -> dict:
    """One gateway's status from its evidence and what a deploy would put there now."""
    live = ev["live"] if isinstance(ev["live"], dict) else {}
    pending = []
    if ev["config_sha1"] != want_config_sha1:
        pending.append("config (a deploy would switch to the spec's)")
    keys = sorted(n for n, fp in want_fingerprints.items() if ev["fingerprints"].get(n) != fp)
    if keys:
        pending.append(f"keys {', '.join(keys)} (rotate_keys.py)")
    return {
        "gateway": name,
        "state": "interrupted" if ev["journal"] is not None else ("pending" if pending else "current"),
        "ports": live.get("ports"),
        "litellm_version": ev["litellm_version"],
        "venv": ev["venv"],
        "config_sha1": ev["config_sha1"],
        "recorded_config_sha1": live.get("config_sha1"),
        "fingerprints": ev["fingerprints"],
        "last_change": live.get("change"),
        "changed_at": live.get("changed_at") or live.get("rotated_at"),
        "pending": pending,
        "interrupted": ev["journal"] is not None and {k: ev["journal"].get(k) for k in ("old_ports", "new_ports",
                                                                                        "secrets", "files", "change")},
    }


def unreachable(name: str, why: str) -> dict:
    return {"gateway": name, "state": "unreachable", "error": why, "ports": None, "litellm_version": "", "venv": "",
            "config_sha1": "", "recorded_config_sha1": None, "fingerprints": {}, "last_change": None, "changed_at": None,
            "pending": [], "interrupted": False}


def fleet_status(gateways: list[dict]) -> dict:
    seen = [g for g in gateways if g["state"] != "unreachable"]
    configs = {g["config_sha1"] for g in seen}
    versions = {g["litellm_version"] for g in seen}
    return {"gateways": gateways, "mixed": len(configs) > 1 or len(versions) > 1,
            "config_sha1s": sorted(configs), "litellm_versions": sorted(versions)}


def render_text(status: dict) -> str:
    lines = []
    for g in status["gateways"]:
        if g["state"] == "unreachable":
            lines.append(f"{g['gateway']}: UNREACHABLE  {g['error']}. Fix: check that the host is up and that SSH "
                         "as in the inventory works")
            continue
        keys = " ".join(f"{n}={fp[:8]}" for n, fp in sorted(g["fingerprints"].items()))
        when = f"{g['last_change'] or 'first deploy'}" + (f" at {g['changed_at']}" if g["changed_at"] else "")
        lines.append(f"{g['gateway']}: {g['state'].upper()}  LiteLLM {g['litellm_version'] or '?'}  "
                     f"config {g['config_sha1'][:12] or 'missing'}  live set {g['ports'] or 'first (blue)'}  "
                     f"last change: {when}")
        lines.append(f"    keys: {keys or 'none'}")
        for p in g["pending"]:
            lines.append(f"    pending: {p}")
        if g["interrupted"]:
            lines.append(f"    interrupted switch {g['interrupted']}. Fix: re-run deploy.py or rotate_keys.py: it "
                         "finishes or rolls it back")
    lines.append("fleet: " + ("MIXED: " + f"{len(status['config_sha1s'])} configs, LiteLLM "
                              f"{', '.join(v or '?' for v in status['litellm_versions'])}" if status["mixed"] else
                              "every gateway on one config and one LiteLLM version"))
    return "\n".join(lines)


def run_status(inventory_file: Path) -> dict:
    from pyinfra.context import ctx_host

    from gatekit.doctor_run import connector_error, load_fleet
    from gatekit.onhost.probe import fingerprint
    from gatekit.roles.credentials import secrets_for_gateway
    from gatekit.roles.litellm import render_config

    hosts, contexts = load_fleet(inventory_file, group="gateways")
    want = {}
    for h in hosts:  # rendered as the deploy renders it, this host's peers read from the inventory through pyinfra's host
        ctx = contexts[h.name]
        with ctx_host.use(h):
            want[h.name] = (hashlib.sha1(render_config(ctx).encode()).hexdigest(),
                            {n: fingerprint(ctx.secret(n)) for n in secrets_for_gateway(ctx)})

    def one(h) -> dict:
        L = Layout.from_settings(contexts[h.name].settings)
        try:
            h.connect(raise_exceptions=True)
            try:
                _, output = h.run_shell_command(evidence_command(L), print_output=False, print_input=False,
                                                **({"_sudo": True} if h.data.get("_sudo") else {}))
            finally:
                h.disconnect()
        except Exception as exc:  # noqa: BLE001 - any connector failure is one line for the operator
            return unreachable(h.name, connector_error(exc))
        return gateway_status(h.name, parse_evidence(output.stdout_lines), *want[h.name])

    with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
        return fleet_status(list(pool.map(one, hosts)))
