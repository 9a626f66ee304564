"""nginx in front of LiteLLM: TLS, HTTP redirected, streams unbuffered, upstream details stripped.

A config change is checked with `nginx -t` and applied with a graceful reload, never a restart, so
in-flight streams finish on the old workers.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from gatekit import monitoring
from gatekit.hoststate import Desired, PackageWave, gateway_probe
from gatekit.inventory import context
from gatekit.onhost import upstream
from gatekit.onhost.layout import Layout
from gatekit.render import template
from gatekit.roles import topology

PACKAGES = ["nginx", "libnginx-mod-http-headers-more-filter", "openssl"]


@deploy("nginx")
def nginx(packages: PackageWave | None = None):
    """`packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings
    L = Layout.from_settings(s)
    cert, key = L.tls_pair
    selfsigned = not s["nginx_tls_cert"]

    want = Desired(packages=PACKAGES, units=[L.nginx_unit], paths_to_check=[cert])
    if selfsigned:
        want.dir(s["nginx_selfsigned_dir"])
    want.dir(L.nginx_include_dir)
    # Every instance of the live set, side by side. The switch (rotation, a deploy's change) moves the set on the host
    # with the same renderer and the same values (the host's layout.json), so the file is only ever written one way.
    # While a switch is running or was cut off (its journal), the file is the switch's alone: this run's switch
    # finishes or rolls it back and leaves the file for the set it serves, which live.json then names. (Rendered
    # here from live.json read before that, it could send nginx to the set the recovery has just stopped.)
    probe = gateway_probe()
    if L.journal_file not in probe.state["texts"]:
        live = L.live_set(probe.text(L.live_file))
        want.file(L.nginx_upstream, upstream.for_layout(L, live), notify="reload", name="Render the LiteLLM upstream")
    monitors = topology.monitoring_addresses()
    allow = monitoring.metrics_allow(monitors, s["nginx_admin_allow"]) if monitors else []
    want.file(L.nginx_site, template("nginx/gatekit.conf.j2", s=s, layout=L, tls_cert=cert, tls_key=key,
                                     private_address=host.data.private_address, metrics_allow=allow),
              notify="reload", name="Render the gatekit nginx site")
    want.remove(L.nginx_default_site, notify="reload", name="Remove Debian's default site")
    want.read()

    want.ensure_packages("Install nginx (+ headers-more to strip upstream headers)", installed_by=packages, notify="reload")
    want.apply()
    # Generated on the host so the private key never leaves it; only when missing (idempotent).
    if selfsigned and cert not in want.state["paths"]:
        san = f"IP:{host.data.private_address}" if host.data.private_address else "DNS:localhost"
        server.shell(
            name="Generate a self-signed TLS certificate",
            commands=[
                f"umask 077; openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj '/CN=gatekit-gateway' "
                f"-addext 'subjectAltName={san},DNS:localhost' -keyout {key} -out {cert} 2>/dev/null",
                f"chmod 644 {cert}",
            ],
        )
    reload = want.changed("reload")
    server.shell(name="Check the nginx config (nginx -t)", commands=["nginx -t -q"], _if=reload)
    want.ensure_running("Enable and start nginx", L.nginx_unit)
    systemd.service(name="Reload nginx gracefully", service=L.nginx_unit, reloaded=True, _if=reload)
