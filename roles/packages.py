"""The Debian packages of all of a host's roles, installed in two shared waves.

pyinfra runs one operation at a time across all hosts, and an operation called from the same place runs
on every host at once. With one install per role, every host waits through each role's install in
turn (the gateways through the data host's PostgreSQL, the data host through the gateways' nginx). Here
each host installs all its roles' packages of a wave in one operation, side by side with the others.

- The first wave is installed right away: base tools, what the LiteLLM venv build needs (it starts right
  after, in the background) and Redis (small).
- The second wave (PostgreSQL, nginx) is installed in the background, as a transient unit
  (gatekit-packages), overlapping the gateways' configuration and the venv build; deploy.py waits for it
  right before the first role that needs it. A failed install stops the deploy with apt's own log.

Each role still installs its own packages when run alone (roles/run.py); in deploy.py it receives the
wave and yields no install of its own.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.apt import noninteractive_apt
from pyinfra.operations import apt, server

from gatekit import background
from gatekit.hoststate import UNCHANGED, Desired, PackageWave
from gatekit.onhost.layout import Layout
from gatekit.roles import litellm, monitoring, nginx, postgres, redis

# Minimal Debian lacks these; the kit runs them (openssl for certificates, procps for ops debugging).
BASE_PACKAGES = ["ca-certificates", "openssl", "procps", "python3"]

# group -> packages, each role's list read from its module; "all" is every host.
FIRST_WAVE = {"all": BASE_PACKAGES, "gateways": litellm.PACKAGES, "redis": redis.PACKAGES}
# The exporters and Prometheus come with the second wave: their drop-ins are written before it starts.
SECOND_WAVE = {"postgres": postgres.PACKAGES, "gateways": nginx.PACKAGES, **monitoring.WAVE}
ROLE_GROUPS = ("gateways", "redis", "postgres", "monitoring", *monitoring.WAVE)

UNIT = Layout.packages_unit
INSTALL_TIMEOUT = 1800  # seconds; a slow mirror, not a hung dpkg (apt waits up to 300 s for the dpkg lock)


def all_packages() -> list[str]:
    """Every package any host of the kit may need (the lab pre-installs them into its base image)."""
    return sorted({*wanted(FIRST_WAVE, ROLE_GROUPS), *wanted(SECOND_WAVE, ROLE_GROUPS)})


@deploy("gatekit base")
def base():
    """What every host needs before a role run alone (roles/run.py); deploy.py installs it in the first wave."""
    want = Desired(packages=BASE_PACKAGES)
    want.read()
    # Package lists are refreshed only when something is missing: a converged host costs one round trip.
    want.ensure_packages("Install base packages")


def wanted(wave: dict[str, list[str]], groups) -> list[str]:
    return sorted({p for group, names in wave.items() if group == "all" or group in groups for p in names})


def host_groups() -> set[str]:
    """This host's groups, with the monitoring pseudo-groups (roles/monitoring.py)."""
    return {*host.groups, *monitoring.wave_groups(host.groups)}


def install_command(packages: list[str]) -> str:
    # Waits for the dpkg lock (unattended-upgrades on a real host) instead of failing at once.
    return noninteractive_apt("-o DPkg::Lock::Timeout=300 install --no-install-recommends " + " ".join(packages))


def installed_test(names: tuple[str, ...]) -> str:
    """Shell test: every one of `names` is installed (dpkg says so, whatever the unit's result)."""
    quoted = " ".join(shlex.quote(n) for n in names)
    return f"[ \"$(dpkg-query -W -f='${{db:Status-Abbrev}}\\n' {quoted} 2>/dev/null | grep -c '^ii')\" = {len(names)} ]"


def _desired(wave: dict[str, list[str]]) -> Desired:
    """This host's packages of `wave`, with their state read from one fact that covers both waves: the
    arguments are identical in both, so pyinfra reads it once per host (one round trip, not two)."""
    groups = host_groups()
    want = Desired(packages=wanted(wave, groups))
    want.state = Desired(packages=sorted({*wanted(FIRST_WAVE, groups), *wanted(SECOND_WAVE, groups)})).read()
    return want


@deploy("Packages")
def install_packages(wave: dict[str, list[str]], label: str) -> PackageWave:
    """Install this host's packages of `wave` now."""
    want = _desired(wave)
    return PackageWave(want.ensure_packages(f"Install the {label} wave of packages"), frozenset(want.packages))


@dataclass(frozen=True)
class PendingWave:
    label: str
    packages: tuple[str, ...]
    missing: tuple[str, ...]


@deploy("Packages")
def start_packages(wave: dict[str, list[str]], label: str) -> PendingWave:
    """Start installing this host's missing packages of `wave` in the background; `wait_packages` joins it."""
    want = _desired(wave)
    names = want.packages
    missing = tuple(p for p in names if p not in want.state["packages"])
    if missing:
        apt.update(name="Refresh package lists (at most hourly)", cache_time=3600)
        server.shell(
            name=f"Start the {label} wave of packages in the background ({', '.join(missing)})",
            commands=background.start_commands(
                UNIT, f"gatekit: install the {label} wave of packages",
                "/bin/sh -c " + shlex.quote(install_command(list(missing))), INSTALL_TIMEOUT,
            ),
        )
    return PendingWave(label, tuple(names), missing)


@deploy("Packages")
def wait_packages(pending: PendingWave) -> PackageWave:
    """Wait for the background install; fail with apt's log unless every package is installed."""
    if not pending.missing:
        return PackageWave(UNCHANGED, frozenset(pending.packages))
    op = server.shell(
        name=f"Wait for the {pending.label} wave of packages",
        commands=[
            background.wait_command(
                UNIT,
                done=installed_test(pending.missing),
                failure=f"Installing {' '.join(pending.missing)} failed (result: $result). Fix: see apt's lines "
                f"above (journalctl -u {UNIT}); re-run the deploy to retry.",
            )
        ],
    )
    return PackageWave(op, frozenset(pending.packages))
