"""The Debian packages of all of a host's roles, installed in two shared operations.

pyinfra runs one operation at a time across all hosts, and an operation called from the same place runs
on every host at once. With one install per role, every host waits through each role's install in
turn (the gateways' nginx after the data host's PostgreSQL, and so on). Here each wave is one operation:
every host installs its own packages side by side, after one shared package-list refresh.

The first wave holds what the LiteLLM venv build needs, which starts right after it, in the background;
the second wave's long installs then overlap that build. Each role still installs its own packages when
run alone (roles/run.py); in deploy.py it receives the wave and yields no install of its own.
"""

from pyinfra import host
from pyinfra.api import deploy

from gatekit.hoststate import Desired, PackageWave
from roles import base, litellm, nginx, postgres, redis

# group -> packages; "all" is every host.
FIRST_WAVE = {"all": base.BASE_PACKAGES, "gateways": litellm.PACKAGES, "redis": redis.PACKAGES}
SECOND_WAVE = {"postgres": postgres.PACKAGES, "gateways": nginx.PACKAGES}


def wanted(wave: dict[str, list[str]], groups) -> list[str]:
    return sorted({p for group, names in wave.items() if group == "all" or group in groups for p in names})


@deploy("Packages")
def install_packages(wave: dict[str, list[str]], label: str) -> PackageWave:
    names = wanted(wave, host.groups)
    want = Desired(packages=names)
    want.read()
    return PackageWave(want.ensure_packages(f"Install the {label} wave of packages"), frozenset(names))
