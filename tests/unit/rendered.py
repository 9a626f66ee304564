"""Every file gatekit renders for a host, from a settings mapping: what the roles put on the hosts, rendered the
way the roles render it (their own functions where they are pure, the same template arguments otherwise), for
the example inventory's topology (inventories/example.py: gw1 and gw2, data1 with Redis, PostgreSQL and
monitoring). Shared by the property test of hostile settings and the checkers' own tests."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shlex
from pathlib import Path
from types import SimpleNamespace

from gatekit import background, monitoring, render
from gatekit.alerts import alert_rules
from gatekit.clientkeys import host_table
from gatekit.onhost import upstream
from gatekit.onhost.layout import Layout
from gatekit.roles import credentials, topology
from gatekit.roles import litellm as litellm_role
from gatekit.roles import monitoring as monitoring_role
from gatekit.roles import venv as venv_role
from gatekit.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = load_spec(REPO / "inventories" / "example.gateway.yaml", check_secrets=False)

GATEWAY, GATEWAY2, DATA = "10.0.0.11", "10.0.0.12", "10.0.0.10"  # gw1, gw2, data1 (Redis, PostgreSQL, monitoring)
_HOSTS = {"gateways": [("gw1", GATEWAY), ("gw2", GATEWAY2)], "redis": [("data1", DATA)], "postgres": [("data1", DATA)],
          "monitoring": [("data1", DATA)]}
FINGERPRINTS = {d.secret: hashlib.sha256(d.secret.encode()).hexdigest()[:16] for m in SPEC.models for d in m.deployments}


@contextlib.contextmanager
def on_gateway():
    """topology's view of the inventory (which hosts run Redis, PostgreSQL, monitoring), as gw1 sees it."""
    saved = topology.group_hosts, topology.host
    topology.group_hosts = lambda _inventory, group: [
        SimpleNamespace(name=n, data=SimpleNamespace(private_address=a)) for n, a in _HOSTS.get(group, [])]
    topology.host = SimpleNamespace(name="gw1")
    try:
        yield
    finally:
        topology.group_hosts, topology.host = saved


def template_inputs(module, call) -> dict:
    """The arguments a role function passes to render.template (recorded, nothing rendered): what the
    property test renders again with sentinels."""
    seen = {}
    saved = module.template
    module.template = lambda name, **kw: seen.update(kw, _name=name) or ""
    try:
        call()
    finally:
        module.template = saved
    return seen


def venv_build(L: Layout, s: dict) -> venv_role.VenvBuild:
    """roles/venv.py's build for these settings, without reading the lock file (its text is not rendered)."""
    installer = (s["litellm_installer"], venv_role.pip_args(s), venv_role.uv_args(s))
    return venv_role.VenvBuild(L, {}, installer, hashlib.sha256("\n".join(installer).encode()).hexdigest())


def venv_install_unit(L: Layout, s: dict) -> str:
    """The transient unit of the background venv build (systemd-run's -p properties and command, as the
    shell splits the command roles/venv.py sends) as a unit file."""
    properties = ("Nice=19", "IOSchedulingPriority=7", "User=root", *venv_role.build_sandbox(L.litellm_home))
    command = background.start_commands(L.venv_install_unit, "gatekit: install LiteLLM into its venv", L.install_script,
                                        s["litellm_install_timeout"], properties)[1]
    words = shlex.split(command)
    props = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "-p"]
    last = max(i for i, w in enumerate(words) if w == "-p") + 2
    return ("[Unit]\nDescription=gatekit: install LiteLLM into its venv\n\n[Service]\nType=oneshot\n"
            + "".join(f"{p}\n" for p in props) + "ExecStart=" + " ".join(shlex.quote(w) for w in words[last:]) + "\n")


# Every rendered file and its format.
FILES = {
    "litellm/config.yaml": "yaml",
    "litellm/litellm.env": "env",
    "litellm/client_keys.json": "json",
    "litellm/layout.json": "json",
    "litellm/launch.py": "python",
    "litellm/venv-install.sh": "shell",
    "systemd/litellm@.service": "unit",
    "systemd/litellm-migrate.service": "unit",
    "systemd/gatekit-venv-install.service": "unit",
    "systemd/gatekit-recycle.service": "unit",
    "systemd/gatekit-recycle.timer": "unit",
    "systemd/gatekit-unitstats.service": "unit",
    "systemd/gatekit-unitstats.timer": "unit",
    "systemd/gatekit-reach.service": "unit",
    "systemd/gatekit-prometheus-loopback.socket": "unit",
    "systemd/gatekit-prometheus-loopback.service": "unit",
    "systemd/prometheus-node-exporter.service.d/gatekit.conf": "unit",
    "systemd/prometheus-redis-exporter.service.d/gatekit.conf": "unit",
    "systemd/prometheus-postgres-exporter.service.d/gatekit.conf": "unit",
    "systemd/prometheus-blackbox-exporter.service.d/gatekit.conf": "unit",
    "systemd/prometheus.service.d/gatekit.conf": "unit",
    "nginx/gatekit.conf": "nginx",
    "nginx/upstream.conf": "nginx",
    "redis/redis.conf": "redis",
    "postgres/gatekit.conf": "postgres",
    "postgres/pg_hba.conf": "pg_hba",
    "monitoring/prometheus.yml": "yaml",
    "monitoring/alerts.yml": "yaml",
    "monitoring/blackbox.yml": "yaml",
}
DROPIN_HOST = {"prometheus-node-exporter.service": GATEWAY, "prometheus-redis-exporter.service": DATA,
               "prometheus-postgres-exporter.service": DATA, "prometheus-blackbox-exporter.service": DATA,
               "prometheus.service": DATA}


def layout(s: dict, **fixed) -> Layout:
    """The host layout of these settings; `fixed`: its fixed locations moved (a check's temporary root)."""
    return dataclasses.replace(Layout.from_settings(s), **fixed)


class _Reads(dict):
    """Settings that remember which of them a renderer read (by key: a renderer that iterates them all
    cannot be cached)."""

    def __init__(self, data: dict):
        super().__init__(data)
        self.read: set = set()
        self.all = False

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def _everything(self, name):
        def method(*a, **kw):
            self.all = True
            return getattr(super(_Reads, self), name)(*a, **kw)
        return method

    def __iter__(self):
        self.all = True
        return super().__iter__()

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def items(self):
        self.all = True
        return super().items()

    def keys(self):
        self.all = True
        return super().keys()

    def values(self):
        self.all = True
        return super().values()


_CACHE: dict = {}


def _cached(name: str, render_file, s: dict, other: tuple) -> str:
    """render_file(s), reused for settings that agree on every setting it read for an earlier call with the same
    `other` inputs (the renderers are pure). A hostile value re-renders only the files that read it: rendering
    is mostly PyYAML's pure-Python emitter, too slow to run for every file of every example."""
    entries = _CACHE.setdefault((name, other), [])
    for reads, text in entries:
        if all(k in s and repr(s[k]) == r for k, r in reads):
            return text
    tracked = _Reads(s)
    text = render_file(tracked)
    if not tracked.all:
        entries.append((tuple((k, repr(s[k]) if k in s else None) for k in sorted(tracked.read)), text))
        del entries[:-32]
    return text


def render_all(s: dict, **fixed) -> dict[str, str]:
    """Every file of FILES for settings `s` (DEFAULTS < spec < host data, merged)."""
    L = layout(s, **fixed)
    cert, key = L.tls_pair
    with on_gateway():
        env_for = credentials.secrets_for_gateway(SimpleNamespace(settings=s, spec=SPEC))
        redis_target = topology.redis_target(s)
        usage_db = topology.usage_database(s)
        egress = topology.egress_allow(s)
        gateways = topology.gateway_addresses()
        metrics_allow = monitoring.metrics_allow(topology.monitoring_addresses(), s["nginx_admin_allow"])
        launcher = litellm_role.launcher(s, L, env_for, L.venv_build("f" * 64))  # reads the topology: never cached
    env_names = tuple(sorted(env_for.items()))
    renderers = {
        "litellm/config.yaml": (lambda t: render.litellm_config_yaml(SPEC, t, redis_target, FINGERPRINTS),
                                (repr(redis_target),)),
        "litellm/litellm.env": (lambda t: render.litellm_env(t, redis_target, usage_db), (repr(redis_target), usage_db)),
        "litellm/client_keys.json": (lambda t: host_table(SPEC, {}), ()),
        "litellm/layout.json": (lambda t: L.to_json(), (L,)),
        "litellm/launch.py": (lambda t: launcher, (launcher,)),
        "litellm/venv-install.sh": (lambda t: venv_build(L, t).script(), (L,)),
        "systemd/litellm@.service": (lambda t: render.template(
            "litellm/litellm@.service.j2", s=t, layout=L, credentials=sorted(env_for), egress_allow=egress),
            (L, env_names, tuple(egress))),
        "systemd/litellm-migrate.service": (lambda t: render.template(
            "litellm/litellm-migrate.service.j2", layout=L, credentials=sorted(env_for),
            prisma_engines_mirror=t["litellm_prisma_engines_mirror"]), (L, env_names)),
        "systemd/gatekit-venv-install.service": (lambda t: venv_install_unit(L, t), (L,)),
        "nginx/gatekit.conf": (lambda t: render.template(
            "nginx/gatekit.conf.j2", s=t, layout=L, tls_cert=cert, tls_key=key, private_address=GATEWAY,
            metrics_allow=metrics_allow), (L, tuple(metrics_allow))),
        "nginx/upstream.conf": (lambda t: upstream.for_layout(L, L.instance_sets[0]), (L,)),
    }
    for unit, tpl in ((L.unitstats_service, "monitoring/gatekit-unitstats.service.j2"),
                      (L.unitstats_timer, "monitoring/gatekit-unitstats.timer.j2"),
                      (L.reach_service, "monitoring/gatekit-reach.service.j2")):
        renderers[f"systemd/{unit}"] = (lambda t, tpl=tpl: render.template(tpl, s=t, layout=L, secrets=env_for),
                                        (L, env_names))
    for unit in (L.recycle_service, L.recycle_timer):
        renderers[f"systemd/{unit}"] = (lambda t, unit=unit: litellm_role.recycle_units(t, L)[unit], (L,))
    for unit, tpl in ((L.prometheus_loopback_socket, "monitoring/prometheus-loopback.socket.j2"),
                      (L.prometheus_loopback_service, "monitoring/prometheus-loopback.service.j2")):
        renderers[f"systemd/{unit}"] = (lambda t, tpl=tpl: render.template(tpl, s=t, layout=L, private_address=DATA), (L,))
    for unit, tpl in monitoring_role._units(L, {"redis", "postgres", "monitoring"}):
        renderers[f"systemd/{unit}.d/gatekit.conf"] = (lambda t, tpl=tpl, unit=unit: render.template(
            tpl, s=t, layout=L, private_address=DROPIN_HOST[unit], units_regex=monitoring.UNITS_REGEX,
            credential=t["redis_password_secret"]), (L,))
    renderers["redis/redis.conf"] = (lambda t: render.template(
        "redis/redis.conf.j2", s=t, private_address=DATA, password_hash=render.redis_acl_hash("redis-FAKE-password")), ())
    renderers["postgres/gatekit.conf"] = (lambda t: render.template("postgres/gatekit.conf.j2", s=t, private_address=DATA), ())
    renderers["postgres/pg_hba.conf"] = (lambda t: render.template("postgres/pg_hba.conf.j2", s=t,
                                                                   gateway_addresses=gateways), (tuple(gateways),))

    def prometheus_yml(t):
        hosts = [monitoring.Monitored("gw1", GATEWAY, frozenset({"gateways"}), t),
                 monitoring.Monitored("gw2", GATEWAY2, frozenset({"gateways"}), t),
                 monitoring.Monitored("data1", DATA, frozenset({"redis", "postgres", "monitoring"}), t)]
        return monitoring.prometheus_config(hosts, t, DATA, L)

    renderers["monitoring/prometheus.yml"] = (prometheus_yml, (L,))
    renderers["monitoring/alerts.yml"] = (lambda t: alert_rules(SPEC, t), ())
    renderers["monitoring/blackbox.yml"] = (lambda t: render.template("monitoring/blackbox.yml.j2"), ())
    assert set(renderers) == set(FILES), set(renderers) ^ set(FILES)
    return {name: _cached(name, fn, s, other) for name, (fn, other) in renderers.items()}


def unit_paths(L: Layout) -> dict[str, str]:
    """Where each unit file of FILES goes on its host."""
    return {name: f"{L.systemd_dir}/{name.split('/', 1)[1]}" for name, fmt in FILES.items() if fmt == "unit"}


def units_to_verify(L: Layout) -> list[str]:
    return [L.instance(L.litellm_ports[0]), L.migrate_unit, L.venv_install_unit, L.recycle_service, L.recycle_timer,
            L.unitstats_service, L.unitstats_timer, L.reach_service,
            L.prometheus_loopback_socket, L.prometheus_loopback_service, L.node_exporter_unit, L.redis_exporter_unit,
            L.postgres_exporter_unit, L.blackbox_unit, L.prometheus_unit]


def executables(L: Layout) -> list[str]:
    """The programs the units start, where they are on a host of this layout (the packages' and gatekit's)."""
    return [L.launcher, f"{L.venv}/bin/python3", L.install_script, "/usr/bin/python3", "/bin/sh", "/usr/bin/prometheus",
            "/usr/bin/prometheus-node-exporter", "/usr/bin/prometheus-blackbox-exporter",
            "/usr/bin/prometheus-postgres-exporter", "/lib/systemd/systemd-socket-proxyd"]


def external_checks(variants: list[dict], workdir: Path, tls_pair: tuple[Path, Path],
                    groups=("nginx", "systemd", "prometheus")) -> list[str]:
    """The real tools on rendered settings variants (each: its settings): nginx -t of the site and upstream,
    systemd-analyze verify of every unit, promtool check config of prometheus.yml with its rules. Returns
    the failures, each naming its variant."""
    from tests.unit import syntax

    nginx, units, prom = [], [], []
    for k, s in enumerate(variants):
        L = layout(s)
        files = render_all(s)
        if "nginx" in groups:
            nginx.append({"site": files["nginx/gatekit.conf"], "upstream": files["nginx/upstream.conf"],
                          "upstream_path": L.nginx_upstream, "tls": L.tls_pair, "log_dir": L.nginx_log_dir})
        if "systemd" in groups:
            paths = unit_paths(L)
            units.append({"units": {paths[n]: files[n] for n in paths}, "verify": units_to_verify(L),
                          "executables": executables(L)})
        if "prometheus" in groups:
            d = workdir / f"promroot{k}"
            moved = render_all(s, gatekit_etc=str(d / "etc/gatekit"))
            prom.append({"config": moved["monitoring/prometheus.yml"], "rules": moved["monitoring/alerts.yml"],
                         "rules_path": layout(s, gatekit_etc=str(d / "etc/gatekit")).alert_rules})
    failures = []
    if nginx:
        failures += syntax.nginx_check(nginx, workdir, tls_pair)
    if units:
        failures += syntax.systemd_verify(units, workdir)
    if prom:
        failures += syntax.promtool_check(prom, workdir)
    return failures
