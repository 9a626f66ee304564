"""LiteLLM Proxy: hash-locked venv, rendered config, encrypted credentials, one systemd instance per port.

Every instance of the live set (Layout.instance_sets) runs and serves behind nginx; the other set is
key rotation's (roles/rotation.py).

Stages: install (user, venv) -> configure (config.yaml, env, launcher, on-host programs, credentials,
unit) -> activate. On a gateway that serves, a change to what LiteLLM starts from (config, environment,
launcher, unit, a program LiteLLM loads, a key with litellm_restart_on_secret_change) is never written over the
live files: it is staged and goes live through the blue/green switch (roles/switch.py switch_in_waves: the other
instance set starts from it, canaries, nginx switches, the old set drains; a failure rolls back), the first
gateway alone, then the others in batches. A gateway that does not serve yet gets its files in place and starts.
A new venv (a LiteLLM upgrade) is built beside the live one; the launcher names its build, so an upgrade is a
launcher change and goes through the same switch (the old set keeps its venv until it stops).
Every on-host path comes from the host's Layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import server, systemd

from gatekit.hoststate import OS_RELEASE, Desired, PackageWave, gateway_probe
from gatekit.clientkeys import host_table, load_keys
from gatekit.facts import IPFilteringEnforced
from gatekit.inventory import context
from gatekit.onhost.layout import LAYOUT_JSON, Layout
from gatekit.render import litellm_config, litellm_config_yaml, litellm_env, template
from gatekit.resources import onhost_source
from gatekit.spec import memory_max_problem
from gatekit.roles import credentials, topology
from gatekit.roles.switch import (deployment_digests, fault_injection, helper_sandbox, rotate_argv, switch_in_waves,
                                  touched_deployments)
from gatekit.roles.venv import PACKAGES, VenvBuild, release_problem  # noqa: F401 - PACKAGES: roles/packages.py reads it here

ONHOST_PROGRAMS = ("layout.py", "instance.py", "rotate.py", "keyauth.py", "gcpolicy.py", "probe.py", "unitstats.py",
                   "upstream.py", "recycle.py")  # uploaded to Layout.lib_dir with layout.json
LOADED_BY_LITELLM = ("keyauth.py", "gcpolicy.py")  # run inside LiteLLM: a new version takes effect through a restart


def render_config(ctx) -> str:
    """config.yaml for the keys in the vault (deployment ids carry each key's fingerprint)."""
    return litellm_config_yaml(ctx.spec, ctx.settings, topology.redis_target(ctx.settings), credentials.key_fingerprints(ctx))


def config_digests(ctx) -> dict[str, str]:
    """{deployment id: digest} of the config render_config renders (roles/switch.py deployment_digests)."""
    return deployment_digests(litellm_config(ctx.spec, ctx.settings, topology.redis_target(ctx.settings),
                                             credentials.key_fingerprints(ctx)))


@dataclass
class Switch:
    """What a serving gateway's change stages for the blue/green switch instead of writing it live."""

    files: dict  # path -> (content, user, group, mode)
    secrets: dict  # name -> value: keys changed with litellm_restart_on_secret_change
    argv: list  # gatekit-rotate's (rotate_argv)


@dataclass
class Gateway:
    """What litellm_setup found and changed on one gateway, for litellm_start and litellm_ready."""

    settings: dict
    layout: Layout
    ports: tuple[int, ...]  # the live set
    venv: VenvBuild
    install_started: bool  # the venv install runs in the background (gatekit-venv-install)
    credentials: list[str]
    want: Desired  # its signals: "daemon-reload", "restart", "migrate"
    was_active: dict[int, bool]  # per live port
    running_enabled: dict[int, bool]
    switch: Switch | None = None  # a serving gateway's change, staged
    # A switch was cut off (its journal): which set runs is its recovery's to decide, not live.json's (the set it names
    # may be the one the cut-off switch had drained and its recovery stops again).
    interrupted: bool = False

    @property
    def restarted(self) -> list[int]:
        """The instances new inputs restart (those that were running; the others start with them)."""
        return [p for p in self.ports if self.was_active[p]]


def litellm():
    """The whole role, for running it alone. deploy.py puts nginx between start and readiness."""
    gw = litellm_setup()
    litellm_start(gw)
    litellm_ready(gw)


@deploy("LiteLLM Proxy")
def litellm_setup(packages: PackageWave | None = None) -> Gateway:
    """install (packages, venv started in the background) + configure (files, credentials, unit).

    `packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings
    L = Layout.from_settings(s)
    svc = s["litellm_user"]
    env_for = credentials.secrets_for_gateway(ctx)
    build = VenvBuild.for_settings(L, s)

    # Read first (one round trip) which of the blue/green pair is live and whether a rotation is pending.
    probe = gateway_probe()
    unsupported = release_problem(probe.text(OS_RELEASE))
    if unsupported:  # before any operation of the role: nothing is installed on a host the locks do not fit
        raise PyinfraError(f"host {host.name}: {unsupported}")
    # A switch (a rotation or a deploy's) that was cut off: this deploy's switch recovers it first (gatekit-rotate
    # rolls it back or finishes it), then switches to what this deploy stages, if that is not live by then.
    interrupted = L.journal_file in probe.state["texts"]
    ports = L.live_set(probe.text(L.live_file))
    instances = [L.instance(p) for p in ports]

    # --- everything this role manages, each with what its change triggers; then one read ---------
    want = Desired(packages=PACKAGES, units=[*instances, L.recycle_timer], users=[svc], texts=[L.venv_stamp])
    for path, owner, group, mode in (
        (L.litellm_home, "root", "root", "755"),
        (L.bin_dir, "root", "root", "755"),
        (f"{L.litellm_home}/lib", "root", "root", "755"),
        (L.lib_dir, "root", "root", "755"),
        (L.litellm_config_dir, "root", svc, "750"),
        (L.gatekit_etc, "root", "root", "755"),
        (L.creds_dir, "root", "root", "700"),
        (L.litellm_state_dir, svc, svc, "750"),
        *((L.instance_dir(p), svc, svc, "750") for p in L.litellm_ports),
        (L.gatekit_state_dir, "root", "root", "755"),
    ):
        want.dir(path, owner, group, mode)
    want.file(L.config, render_config(ctx), "root", svc, "640", notify="restart",
              name="Render LiteLLM config.yaml (secrets only as os.environ references)")
    want.file(L.env_file, litellm_env(s, topology.redis_target(s), topology.usage_database(s)),
              "root", svc, "640", notify="restart", name="Render LiteLLM environment (no secrets)")
    # No restart: the custom-auth hook re-reads the table when it changes, so keys come and go without a failed request.
    want.file(L.client_keys, host_table(ctx.spec, load_keys(ctx.spec)), "root", svc, "640",
              name="Ship the client keys table (hashes and limits, never a key)")
    want.file(L.launcher, launcher(s, L, env_for, L.venv_build(build.stamp)), mode="755", notify="restart",
              name="Install the LiteLLM launcher")
    for program in ONHOST_PROGRAMS:
        want.file(L.program(program), onhost_source(program), mode="644" if program in ("layout.py", "gcpolicy.py") else "755",
                  notify="restart" if program in LOADED_BY_LITELLM else (), name=f"Install the on-host program {program}")
    want.file(L.program(LAYOUT_JSON), L.to_json(), name="Install the host layout (paths, units, ports) for the on-host programs")
    egress = topology.egress_allow(s)
    if egress and not host.get_fact(IPFilteringEnforced):
        raise PyinfraError(
            f"host {host.name}: litellm_egress_allow is set, but systemd on this host does not enforce IPAddressDeny= "
            "(no BPF cgroup firewall: a cgroup v1 hierarchy or an old kernel), so the allowlist would silently allow "
            "everything. Fix: boot the host with the unified cgroup hierarchy (systemd.unified_cgroup_hierarchy=1), "
            "or remove litellm_egress_allow for it and filter egress elsewhere (a firewall or an egress proxy).")
    want.file(L.unit_file, template("litellm/litellm@.service.j2", s=s, layout=L, credentials=sorted(env_for),
                                    egress_allow=egress),
              notify=("daemon-reload", "restart"), name="Install the litellm@.service template unit")
    for unit, text in recycle_units(s, L).items():
        want.file(L.unit_path(unit), text, notify=("daemon-reload", "restart:recycle"), name=f"Render {unit}")
    if s["litellm_database"]:
        want.file(L.migrate_unit_file, template("litellm/litellm-migrate.service.j2", layout=L, credentials=sorted(env_for),
                                                prisma_engines_mirror=s["litellm_prisma_engines_mirror"]),
                  notify=("daemon-reload", "migrate"), name="Install the LiteLLM database migration unit")
    credentials.declare(want, L, env_for)
    want.read()

    problem = memory_max_problem(f"host {host.name}", s["litellm_memory_max"], want.state["mem_mb"])
    if problem:
        raise PyinfraError(problem)

    # --- install: the venv first, in the background (the longest step: it overlaps everything else) ---
    # In deploy.py python3-venv comes with the first package wave, so the build starts right after it,
    # before the second wave's long installs (PostgreSQL) that it then overlaps.
    want.ensure_packages("Install Python venv support", installed_by=packages)
    venv_changed = want.text(L.venv_stamp) != build.stamp
    if venv_changed:
        build.start(s["litellm_install_timeout"])
    want.ensure_user("Create the litellm system user", svc, L.litellm_state_dir)

    # --- configure ----------------------------------------------------------------------------
    was_active = {p: want.state["units"].get(L.instance(p), ("", ""))[0] == "active" for p in ports}
    switch = (staged_change(ctx, L, want, env_for, probe.text(L.live_file), interrupted)
              if any(was_active.values()) or interrupted else None)
    want.apply()
    want.notify("restart", *credentials.install(ctx, L, env_for, want, skip=switch.secrets if switch else ()))
    return Gateway(
        settings=s,
        layout=L,
        ports=ports,
        venv=build,
        install_started=venv_changed,
        credentials=sorted(env_for),
        want=want,
        was_active=was_active,
        running_enabled={p: want.state["units"].get(L.instance(p)) == ("active", "enabled") for p in ports},
        switch=switch,
        interrupted=interrupted,
    )


def recycle_units(s: dict, L: Layout) -> dict[str, str]:
    """{unit: text} of gatekit-recycle (gatekit/onhost/recycle.py) and its timer; it runs in gatekit-rotate's sandbox."""
    sandbox = helper_sandbox(L, None)
    return {unit: template(tpl, s=s, layout=L, sandbox=sandbox)
            for unit, tpl in ((L.recycle_service, "litellm/gatekit-recycle.service.j2"),
                              (L.recycle_timer, "litellm/gatekit-recycle.timer.j2"))}


def staged_change(ctx, L: Layout, want: Desired, env_for: dict, live_record: str, interrupted: bool) -> Switch | None:
    """On a serving gateway: the files that would restart LiteLLM and the keys changed on purpose, taken out of what
    the role writes live, for the switch; None when there are none. A new credential (a secret the live set never
    loaded) is still written in place: nothing running reads it. After an interrupted switch every such file is
    staged: the host's files may be either side's until gatekit-rotate has recovered."""
    s = ctx.settings
    files = want.take_changed("restart", every=interrupted)
    _, changed = credentials.pending(ctx, L, env_for, want)
    credentials.refuse_changed_keys(ctx, changed)
    secrets = {n: ctx.secret(n) for n in changed}
    if not files and not secrets and not interrupted:
        return None
    digests = config_digests(ctx)
    argv = rotate_argv(s, secrets, touched_deployments(digests, live_record), [], files=sorted(files),
                       models=ctx.spec.public_names(), digests=digests, change="deploy", **fault_injection())
    return Switch(files=files, secrets=secrets, argv=argv)


def launcher(s: dict, L: Layout, env_for: dict, venv: str) -> str:
    """`venv`: the build this launcher runs (Layout.venv_build), named and not the `venv` symlink, so that an
    instance keeps its venv when a new one is built and switched to (Layout.launcher_venv reads it back)."""
    return template(
        "litellm/launch.py.j2",
        venv=venv,
        lib_dir=L.lib_dir,
        env_for=env_for,
        database=s["litellm_database"],
        db_user=s["postgres_user"],
        db_name=s["postgres_db"],
        db_host=topology.database_host(),
        db_port=s["postgres_port"],
        config_path=L.config,
        bind=s["litellm_bind"],
        workers=s["litellm_workers"],
        healthcheck_timeout=s["litellm_worker_healthcheck_timeout"],
        keepalive_timeout=s["litellm_keepalive_timeout"],
        max_requests=s["litellm_max_requests_before_restart"],
        max_requests_jitter=s["litellm_max_requests_jitter"],
    )


@deploy("LiteLLM Proxy")
def litellm_start(gw: Gateway):
    """activate: wait for the venv install, then start the live instances, or restart them for new inputs."""
    want, L = gw.want, gw.layout
    if gw.install_started:
        want.notify(("restart", "migrate"), gw.venv.wait(serving=gw.switch is not None))
    systemd.daemon_reload(name="Reload systemd units", _if=want.changed("daemon-reload"))
    if gw.settings["litellm_database"]:
        # Prisma generate + migrate run here, at provisioning, never at service start.
        server.shell(name="Generate Prisma client and migrate the LiteLLM database",
                     commands=[f"systemctl start {gw.layout.migrate_unit}"], _if=want.changed("migrate"))
    # A unit that was not running starts now with the new inputs; only a running one needs a restart.
    for port in () if gw.interrupted else gw.ports:
        if not gw.running_enabled[port]:
            systemd.service(name=f"Enable and start {L.instance(port)}", service=L.instance(port), running=True, enabled=True)
    if gw.switch:
        sw = gw.switch
        what = ", ".join([*sorted(sw.secrets), *(p.rsplit("/", 1)[-1] for p in sorted(sw.files))])
        switch_in_waves(f"Switch LiteLLM to its new inputs: {what} (blue/green + canaries)", layout=L, secrets=sw.secrets,
                        files=sw.files, argv=sw.argv)
        return  # the switch starts the other set from the new inputs (and a new venv): nothing to restart
    restart = want.changed("restart")
    for port in gw.restarted:
        # One at a time, each ready before the next restarts: nginx passes requests to the others meanwhile.
        systemd.service(name=f"Restart {L.instance(port)} for its new inputs", service=L.instance(port), restarted=True,
                        _if=restart)
        if port != gw.restarted[-1]:
            wait_ready(gw, port, _if=restart)


def wait_ready(gw: Gateway, port: int, _if=None):
    server.shell(
        name=f"Wait for {gw.layout.instance(port)} /health/readiness",
        commands=[f"python3 {gw.layout.program('instance.py')} wait-ready {port} --timeout {gw.settings['litellm_ready_timeout']}"],
        _if=_if,
    )


@deploy("LiteLLM Proxy")
def litellm_ready(gw: Gateway):
    """After a (re)start, wait for /health/readiness of each live instance not yet waited for (deploy.py
    configures nginx in the meantime)."""
    restart = gw.want.changed("restart")
    for port in () if gw.interrupted else gw.ports:  # the switch's recovery waits for the set it leaves serving
        if not gw.was_active[port]:
            wait_ready(gw, port)
        elif port == gw.restarted[-1] and not gw.switch:
            wait_ready(gw, port, _if=restart)
    # Recycling runs once the instances serve (a first start never counts towards it: litellm_recycle_min_age).
    timer = gw.layout.recycle_timer
    if gw.want.state["units"].get(timer) != ("active", "enabled"):
        systemd.service(name=f"Enable and start {timer}", service=timer, running=True, enabled=True)
    systemd.service(name=f"Restart {timer} for its new settings", service=timer, restarted=True,
                    _if=gw.want.changed("restart:recycle"))
