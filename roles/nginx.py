"""nginx in front of LiteLLM: TLS, HTTP redirected, streams unbuffered, upstream details stripped.

A config change is checked with `nginx -t` and applied with a graceful reload, never a restart, so
in-flight streams finish on the old workers.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from gatekit.hoststate import LIVE_FILE, Desired, PackageWave, any_changed, gateway_probe, live_port
from gatekit.inventory import context
from gatekit.render import template

UPSTREAM_FILE = "/etc/nginx/gatekit/upstream.conf"
SITE_FILE = "/etc/nginx/conf.d/gatekit.conf"
DEFAULT_SITE = "/etc/nginx/sites-enabled/default"


PACKAGES = ["nginx", "libnginx-mod-http-headers-more-filter", "openssl"]


@deploy("nginx")
def nginx(packages: PackageWave | None = None):
    """`packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings
    unit = "nginx.service"

    cert, key = s["nginx_tls_cert"], s["nginx_tls_key"]
    selfsigned = not cert
    if selfsigned:
        d = s["nginx_selfsigned_dir"]
        cert, key = f"{d}/gateway.crt", f"{d}/gateway.key"

    want = Desired(
        packages=PACKAGES,
        units=[unit],
        paths_to_check=[cert, DEFAULT_SITE],
    )
    if selfsigned:
        want.dir(s["nginx_selfsigned_dir"])
    want.dir("/etc/nginx/gatekit")
    want.file(
        UPSTREAM_FILE,
        template(
            "nginx/upstream.conf.j2",
            # Only the live instance of the blue/green pair; rotation moves it (same text as rendered here).
            ports=[live_port(gateway_probe().text(LIVE_FILE), s["litellm_ports"])],
            bind=s["litellm_bind"],
            keepalive=s["nginx_upstream_keepalive"],
            keepalive_timeout=s["nginx_upstream_keepalive_timeout"],
        ),
    )
    want.file(SITE_FILE, template("nginx/gatekit.conf.j2", s=s, tls_cert=cert, tls_key=key))
    want.read()

    install = want.ensure_packages("Install nginx (+ headers-more to strip upstream headers)", installed_by=packages)
    if selfsigned:
        want.ensure_dir(f"Directory {s['nginx_selfsigned_dir']}", s["nginx_selfsigned_dir"])
        # Generated on the host so the private key never leaves it; only when missing (idempotent).
        if cert not in want.state["paths"]:
            san = f"IP:{host.data.private_address}" if host.data.private_address else "DNS:localhost"
            server.shell(
                name="Generate a self-signed TLS certificate",
                commands=[
                    f"umask 077; openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj '/CN=gatekit-gateway' "
                    f"-addext 'subjectAltName={san},DNS:localhost' -keyout {key} -out {cert} 2>/dev/null",
                    f"chmod 644 {cert}",
                ],
            )
    want.ensure_dir("Directory /etc/nginx/gatekit", "/etc/nginx/gatekit")
    upstream = want.ensure_file("Render the LiteLLM upstream", UPSTREAM_FILE)
    site = want.ensure_file("Render the gatekit nginx site", SITE_FILE)
    default_site = want.ensure_absent("Remove Debian's default site", DEFAULT_SITE)

    changed = any_changed(install, upstream, site, default_site)
    server.shell(name="Check the nginx config (nginx -t)", commands=["nginx -t -q"], _if=changed)
    want.ensure_running("Enable and start nginx", unit)
    systemd.service(name="Reload nginx gracefully", service=unit, reloaded=True, _if=changed)
