"""nginx in front of LiteLLM: TLS, HTTP redirected, streams unbuffered, upstream details stripped.

A config change is checked with `nginx -t` and applied with a graceful reload, never a restart, so
in-flight streams finish on the old workers.
"""

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from gatekit.facts import FileText
from gatekit.inventory import context
from gatekit.render import template

UPSTREAM_FILE = "/etc/nginx/gatekit/upstream.conf"


@deploy("nginx")
def nginx():
    ctx = context(host)
    s = ctx.settings

    install = apt.packages(
        name="Install nginx (+ headers-more to strip upstream headers)",
        packages=["nginx", "libnginx-mod-http-headers-more-filter", "openssl"],
        no_recommends=True,
    )

    cert, key = s["nginx_tls_cert"], s["nginx_tls_key"]
    if not cert:
        d = s["nginx_selfsigned_dir"]
        cert, key = f"{d}/gateway.crt", f"{d}/gateway.key"
        files.directory(name=f"Directory {d}", path=d, user="root", group="root", mode="755")
        # Generated on the host so the private key never leaves it; only when missing (idempotent).
        if not host.get_fact(FileText, path=cert).startswith("-----BEGIN CERTIFICATE"):
            san = f"IP:{host.data.private_address}" if host.data.private_address else "DNS:localhost"
            server.shell(
                name="Generate a self-signed TLS certificate",
                commands=[
                    f"umask 077; openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj '/CN=gatekit-gateway' "
                    f"-addext 'subjectAltName={san},DNS:localhost' -keyout {key} -out {cert} 2>/dev/null",
                    f"chmod 644 {cert}",
                ],
            )

    files.directory(name="Directory /etc/nginx/gatekit", path="/etc/nginx/gatekit", user="root", group="root", mode="755")
    upstream = files.put(
        name="Render the LiteLLM upstream",
        src=io.StringIO(
            template(
                "nginx/upstream.conf.j2",
                ports=s["litellm_ports"],
                bind=s["litellm_bind"],
                keepalive=s["nginx_upstream_keepalive"],
            )
        ),
        dest=UPSTREAM_FILE,
        mode="644",
    )
    site = files.put(
        name="Render the gatekit nginx site",
        src=io.StringIO(template("nginx/gatekit.conf.j2", s=s, tls_cert=cert, tls_key=key)),
        dest="/etc/nginx/conf.d/gatekit.conf",
        mode="644",
    )
    default_site = files.link(
        name="Remove Debian's default site", path="/etc/nginx/sites-enabled/default", present=False
    )

    changed = lambda: any(op.did_change() for op in (install, upstream, site, default_site))  # noqa: E731
    server.shell(name="Check the nginx config (nginx -t)", commands=["nginx -t -q"], _if=changed)
    systemd.service(name="Enable and start nginx", service="nginx.service", running=True, enabled=True)
    systemd.service(name="Reload nginx gracefully", service="nginx.service", reloaded=True, _if=changed)
