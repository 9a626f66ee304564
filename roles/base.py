"""What every gatekit host needs before its roles: fresh package lists and the tools the kit runs."""

from pyinfra.api import deploy
from pyinfra.operations import apt

# Minimal Debian lacks these; the kit runs them (openssl for certificates, procps for ops debugging).
BASE_PACKAGES = ["ca-certificates", "openssl", "procps", "python3"]


@deploy("gatekit base")
def base():
    apt.update(name="Refresh package lists (at most hourly)", cache_time=3600)
    apt.packages(name="Install base packages", packages=BASE_PACKAGES, no_recommends=True)
