"""What every gatekit host needs before its roles: the tools the kit itself runs."""

from pyinfra.api import deploy

from gatekit.hoststate import Desired

# Minimal Debian lacks these; the kit runs them (openssl for certificates, procps for ops debugging).
BASE_PACKAGES = ["ca-certificates", "openssl", "procps", "python3"]


@deploy("gatekit base")
def base():
    want = Desired(packages=BASE_PACKAGES)
    want.read()
    # Package lists are refreshed only when something is missing: a converged host costs one round trip.
    want.ensure_packages("Install base packages")
