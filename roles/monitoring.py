"""Monitoring, with Debian's packages: node_exporter on every host, the Redis and PostgreSQL exporters where
those run, and Prometheus with gatekit's alert rules (plus a blackbox exporter probing each gateway's public
side) on the hosts of the optional `monitoring` group. Nothing of it is installed without that group.

Stages: setup (before the packages' wave: each packaged unit's drop-in, so even the first start after
install listens on the private address only, never the packages' all-address default; the monitoring
host's configuration; the Redis password as an encrypted credential) -> activate (after the wave:
daemon-reload and restart where a drop-in changed; `promtool check config` then a reload where only
Prometheus' configuration or rules changed; everything enabled and running).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import server, systemd

from gatekit import monitoring as mon
from gatekit.hoststate import Desired, PackageWave
from gatekit.inventory import context
from gatekit.onhost.layout import Layout
from gatekit.render import template
from gatekit.roles import credentials, topology

NODE_PACKAGES = ["prometheus-node-exporter"]
SERVER_PACKAGES = ["prometheus", "prometheus-blackbox-exporter"]
REDIS_PACKAGES = ["prometheus-redis-exporter"]
POSTGRES_PACKAGES = ["prometheus-postgres-exporter"]
# Pseudo-groups for the package waves (roles/packages.py): a host is "monitored" when the inventory has a
# monitoring group, and then also "monitored-<its group>".
WAVE = {"monitored": NODE_PACKAGES, "monitoring": SERVER_PACKAGES,
        "monitored-redis": REDIS_PACKAGES, "monitored-postgres": POSTGRES_PACKAGES}


def enabled() -> bool:
    return bool(topology.monitoring_addresses())


def wave_groups(groups) -> set[str]:
    """The pseudo-groups of a host in `groups` (empty without monitoring)."""
    if not enabled():
        return set()
    return {"monitored", *(f"monitored-{g}" for g in groups if g in ("redis", "postgres"))}


@dataclass
class Setup:
    want: Desired
    units: list[str]  # packaged units this host runs, in start order
    packages: list[str]


def _units(L: Layout, groups) -> list[tuple[str, str]]:
    """(unit, drop-in template) of every packaged unit this host runs."""
    units = [(L.node_exporter_unit, "monitoring/node-exporter.conf.j2")]
    if "redis" in groups:
        units.append((L.redis_exporter_unit, "monitoring/redis-exporter.conf.j2"))
    if "postgres" in groups:
        units.append((L.postgres_exporter_unit, "monitoring/postgres-exporter.conf.j2"))
    if "monitoring" in groups:
        units += [(L.blackbox_unit, "monitoring/blackbox-exporter.conf.j2"), (L.prometheus_unit, "monitoring/prometheus.conf.j2")]
    return units


@deploy("Monitoring setup")
def monitoring_setup() -> Setup | None:
    """Before the package wave that installs the exporters: their drop-ins and configuration."""
    if not enabled():
        return None
    ctx = context(host)
    s = ctx.settings
    L = Layout.from_settings(s)
    addr = host.data.private_address
    groups = set(host.groups)
    want = Desired()
    units = _units(L, groups)
    for unit, tpl in units:
        want.dir(f"{L.systemd_dir}/{unit}.d")
        want.file(L.dropin(unit), template(tpl, s=s, layout=L, private_address=addr, units_regex=mon.UNITS_REGEX,
                                           credential=s["redis_password_secret"]),
                  notify=("daemon-reload", f"restart:{unit}"), name=f"Render gatekit's drop-in for {unit}")
    cred_names = []
    if "redis" in groups:
        cred_names = [s["redis_password_secret"]]
        want.dir(L.gatekit_etc, mode="755")
        want.dir(L.creds_dir, mode="700")
        credentials.declare(want, L, cred_names)
    if "monitoring" in groups:
        from gatekit.alerts import alert_rules

        want.dir(L.gatekit_etc, mode="755")
        want.dir(L.monitoring_dir)
        want.file(L.prometheus_config, mon.prometheus_config(topology.monitored_hosts(), s, addr, L),
                  notify="reload:prometheus", name="Render Prometheus' scrape configuration")
        want.file(L.alert_rules, alert_rules(ctx.spec, s), notify="reload:prometheus", name="Render gatekit's alert rules")
        want.file(L.blackbox_config, template("monitoring/blackbox.yml.j2"), notify=f"restart:{L.blackbox_unit}",
                  name="Render the blackbox exporter's probe modules")
        for unit, tpl in ((L.prometheus_loopback_socket, "monitoring/prometheus-loopback.socket.j2"),
                          (L.prometheus_loopback_service, "monitoring/prometheus-loopback.service.j2")):
            want.file(L.unit_path(unit), template(tpl, s=s, layout=L, private_address=addr),
                      notify=("daemon-reload", "restart:loopback"), name=f"Render {unit}")
        units.append((L.prometheus_loopback_socket, ""))
    if "gateways" in groups:
        secrets = credentials.secrets_for_gateway(ctx)
        for unit, tpl in ((L.unitstats_service, "monitoring/gatekit-unitstats.service.j2"),
                          (L.unitstats_timer, "monitoring/gatekit-unitstats.timer.j2"),
                          (L.reach_service, "monitoring/gatekit-reach.service.j2")):
            want.file(L.unit_path(unit), template(tpl, s=s, layout=L, secrets=secrets),
                      notify=("daemon-reload", f"restart:{L.unitstats_timer}"), name=f"Render {unit}")
        units.append((L.unitstats_timer, ""))
    want.units = [u for u, _ in units]
    want.read()
    want.apply()
    if cred_names:
        # The exporter restarts with a new password; nothing serves requests with it.
        # On a gateway the same credential is LiteLLM's, and changes only by rotation (credentials.install).
        want.notify(f"restart:{L.redis_exporter_unit}",
                    *credentials.install(ctx, L, cred_names, want, refuse_live_change="gateways" in groups))
    packages = sorted({p for g in {*groups, *wave_groups(groups)} for p in WAVE.get(g, [])})
    return Setup(want, [u for u, _ in units], packages)


@deploy("Monitoring")
def monitoring(setup: Setup | None, packages: PackageWave | None = None):
    """After the package wave: units reloaded, restarted or started as what changed requires."""
    if setup is None:
        return
    L = Layout.from_settings(context(host).settings)
    want = setup.want
    installed = Desired(packages=setup.packages, units=setup.units)
    installed.read()
    installed.ensure_packages("Install the monitoring packages", installed_by=packages)
    systemd.daemon_reload(name="Reload systemd for gatekit's monitoring units", _if=want.changed("daemon-reload"))
    restarted = want.changed(f"restart:{L.prometheus_unit}")
    if L.prometheus_unit in setup.units:
        server.shell(name="Check Prometheus' configuration and rules (promtool)",
                     commands=[f"promtool check config {L.prometheus_config} >/dev/null"],
                     _if=lambda: want.changed("reload:prometheus")() or restarted())
    for unit in setup.units:
        want_state = installed.state["units"].get(unit, ("", ""))
        if want_state != ("active", "enabled"):
            systemd.service(name=f"Enable and start {unit}", service=unit, running=True, enabled=True)
        signal = "restart:loopback" if unit == L.prometheus_loopback_socket else f"restart:{unit}"
        systemd.service(name=f"Restart {unit} for its new settings", service=unit, restarted=True, _if=want.changed(signal))
    if L.prometheus_unit in setup.units:
        systemd.service(name="Reload Prometheus for its new targets or rules", service=L.prometheus_unit, reloaded=True,
                        _if=want.changed("reload:prometheus", unless=f"restart:{L.prometheus_unit}"))
