"""The baseline the benchmarks compare gatekit's blue/green switch with: what a deploy did before it (and what a
hand-rolled playbook does): the new input written over the live one, then the live instances restarted one at a
time, each ready before the next (systemctl restart + /health/readiness). Lab only."""

from __future__ import annotations

import hashlib
import shlex


def rolling_restart(lab, gw: str):
    """Restart the live instances of one gateway one at a time, each ready before the next goes."""
    host, L = lab.hosts[gw], lab.layout(gw)
    for port in lab.live_ports(gw):
        host.run(f"systemctl restart {L.instance(port)} && python3 {L.program('instance.py')} wait-ready {port} "
                 f"--timeout 300")


def write_over(lab, gw: str, path: str, content: str):
    """`content` over the live file at `path`, keeping its owner and mode (content via stdin)."""
    q = shlex.quote(path)
    lab.hosts[gw].run(f"cat > {q}.naive && chown --reference={q} {q}.naive && chmod --reference={q} {q}.naive && "
                      f"mv {q}.naive {q}", input=content)


def encrypt_over(lab, gw: str, name: str, value: str):
    """A new key encrypted over the live credential (systemd-creds, value via stdin) with its fingerprint file."""
    from gatekit.onhost.probe import fingerprint

    L = lab.layout(gw)
    cred = shlex.quote(L.cred(name))
    lab.hosts[gw].run(f"systemd-creds encrypt --name={shlex.quote(name)} - {cred} && chmod 600 {cred} && "
                      f"echo {fingerprint(value)} > {shlex.quote(L.cred_fingerprint(name))}", input=value)


def config_edit(text: str) -> str:
    """A harmless config change (a comment with a new value): what any spec change costs a restart-based deploy."""
    return text + f"# naive change {hashlib.sha1(text.encode()).hexdigest()[:8]}\n"
