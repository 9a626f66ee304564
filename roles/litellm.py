"""LiteLLM Proxy: hash-locked venv, rendered config, encrypted credentials, one systemd instance per port.

Stages: install (user, venv) -> configure (config.yaml, env, launcher, credentials, unit) -> activate
(daemon-reload only when the unit changed, restart only instances whose inputs changed, then wait for
/health/readiness).
"""

from __future__ import annotations

import hashlib
import io
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra import host, inventory
from pyinfra.api import FileUploadCommand, deploy, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import files, server, systemd

from gatekit import background
from gatekit.defaults import COMPROMISED_LITELLM_VERSIONS
from gatekit.hoststate import LIVE_FILE, ROTATION_JOURNAL, Desired, PackageWave, gateway_probe, live_port
from gatekit.inventory import context, group_hosts
from gatekit.render import litellm_config_yaml, secret_env, template
from gatekit.spec import parse_size

REPO = Path(__file__).resolve().parent.parent
CREDS_DIR = "/etc/gatekit/creds"
STATE_DIR = "/var/lib/litellm"
UNIT_FILE = "/etc/systemd/system/litellm@.service"
INSTALL_UNIT = "gatekit-venv-install.service"
INSTALL_SCRIPT = "{home}/bin/gatekit-venv-install"
LAUNCHER = "{home}/bin/gatekit-litellm-launch"
ROTATE_SCRIPT = "{home}/bin/gatekit-rotate"
ROTATE_SOURCE = REPO / "gatekit" / "onhost" / "rotate.py"
UV_LOCK = REPO / "requirements" / "uv.lock"
PACKAGES = ["python3", "python3-venv"]  # the venv build needs them (python3-venv: ensurepip, Debian's pip wheel)
PIP_WHEELS = "/usr/share/python-wheels"  # python3-pip-whl: the pip that fetches uv for the build
# Staging for plaintext on its way into systemd-creds: tmpfs (RAM), root-only, removed at once.
STAGE_DIR = "/run/gatekit"


def fingerprint(value: str) -> str:
    """Names a key without revealing it (the fake provider and rotation use the same scheme)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def _lock_file(s: dict) -> Path:
    name = s["litellm_requirements"]
    if s["litellm_database"] and name == "requirements/litellm.lock":
        name = "requirements/litellm-db.lock"
    path = (REPO / name) if not Path(name).is_absolute() else Path(name)
    text = path.read_text()
    for bad in COMPROMISED_LITELLM_VERSIONS:
        if f"litellm=={bad}" in text:
            raise PyinfraError(f"{path}: pins litellm=={bad}, a compromised release. Fix: use requirements/litellm.lock.")
    if "--hash=sha256:" not in text:
        raise PyinfraError(f"{path}: no hashes. Fix: generate it with --generate-hashes (see its header).")
    return path


def _index_args(s: dict, tool: str) -> list[str]:
    args, url = [], ""
    if s["litellm_pip_find_links"]:
        url = s["litellm_pip_find_links"]
        args += ["--no-index", "--find-links", url]
    elif s["litellm_pip_index_url"]:
        url = s["litellm_pip_index_url"]
        args += ["--index-url", url]
    if url.startswith("http://") and tool == "pip":
        # The operator chose a plain-HTTP mirror; --require-hashes still pins every byte. (uv needs no flag.)
        args += ["--trusted-host", urlsplit(url).hostname]
    return args


def _pip_args(s: dict) -> str:
    args = ["--disable-pip-version-check", "-q", "--require-hashes", "--no-deps", "--only-binary=:all:"]
    return " ".join(shlex.quote(a) for a in args + _index_args(s, "pip"))


def _uv_args(s: dict) -> str:
    # uv compiles bytecode on all cores (the service cannot write .pyc files under ProtectSystem=strict,
    # so without them every start would compile LiteLLM again); no cache left behind on the host.
    args = ["-q", "--require-hashes", "--no-deps", "--only-binary", ":all:", "--compile-bytecode", "--no-cache"]
    return " ".join(shlex.quote(a) for a in args + _index_args(s, "uv"))


def redis_target_for(s: dict) -> dict | None:
    redis_hosts = group_hosts(inventory, "redis")
    if not redis_hosts:
        return None
    r = redis_hosts[0]
    # A gateway on the Redis host itself talks over loopback.
    address = "127.0.0.1" if r.name == host.name else r.data.private_address
    return {"host": address, "port": s["redis_port"], "db": s["redis_litellm_db"]}


def secrets_for_gateway(ctx) -> dict[str, str]:
    """{secret name: environment variable} of everything a gateway's LiteLLM process needs."""
    s = ctx.settings
    names = {d.secret: secret_env(d.secret) for m in ctx.spec.models for d in m.deployments}
    names[s["litellm_master_key_secret"]] = "LITELLM_MASTER_KEY"
    names[s["redis_password_secret"]] = "REDIS_PASSWORD"
    if s["litellm_database"]:
        names[s["postgres_password_secret"]] = "GK_POSTGRES_PASSWORD"
    return names


@dataclass
class Gateway:
    """What litellm_setup found and changed on one gateway, for litellm_start and litellm_ready."""

    settings: dict
    port: int
    venv: str
    stamp: str
    install_started: bool  # the venv install runs in the background (gatekit-venv-install)
    credentials: list[str]
    unit_changed: object  # did_change() of the unit file operation
    was_active: bool
    running_enabled: bool
    inputs_changed: Callable[[], bool]

    @property
    def instance(self) -> str:
        return f"litellm@{self.port}.service"


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
    home, venv, conf_dir, svc = s["litellm_home"], f"{s['litellm_home']}/venv", s["litellm_config_dir"], s["litellm_user"]
    env_for = secrets_for_gateway(ctx)
    # On the host: the LiteLLM lock and uv's, read once for the stamp and the upload.
    locks = {f"{home}/requirements.lock": _lock_file(s).read_text(), f"{home}/uv.lock": UV_LOCK.read_text()}
    installer = (s["litellm_installer"], _pip_args(s), _uv_args(s))
    # Everything that decides what ends up in the venv: the locks, the installer and its arguments.
    stamp = hashlib.sha256("\n".join((*locks.values(), *installer)).encode()).hexdigest()
    redis_target = redis_target_for(s)
    pg = group_hosts(inventory, "postgres")

    # --- describe everything this role manages, then read the host once -------------------------
    # Read first (one round trip) which of the blue/green pair is live and whether a rotation is pending.
    probe = gateway_probe()
    if ROTATION_JOURNAL in probe.state["texts"]:
        raise PyinfraError(
            f"host {host.name}: a key rotation is in progress or was interrupted ({ROTATION_JOURNAL}). "
            "Fix: re-run rotate_keys.py for this inventory; it completes or rolls back the rotation."
        )
    port = live_port(probe.text(LIVE_FILE), s["litellm_ports"])
    instance = f"litellm@{port}.service"

    want = Desired(
        packages=PACKAGES,
        units=[instance],
        users=[svc],
        texts=[f"{venv}/.gatekit-stamp", *(f"{CREDS_DIR}/{name}.fp" for name in env_for)],
        paths_to_check=[f"{CREDS_DIR}/{name}.cred" for name in env_for],
    )
    for path, owner, group, mode in (
        (home, "root", "root", "755"),
        (f"{home}/bin", "root", "root", "755"),
        (conf_dir, "root", svc, "750"),
        ("/etc/gatekit", "root", "root", "755"),
        (CREDS_DIR, "root", "root", "700"),
        (STATE_DIR, svc, svc, "750"),
        *((f"{STATE_DIR}/{p}", svc, svc, "750") for p in s["litellm_ports"]),
        ("/var/lib/gatekit", "root", "root", "755"),
    ):
        want.dir(path, owner, group, mode)
    want.file(f"{conf_dir}/config.yaml", render_config(ctx, redis_target), "root", svc, "640")
    want.file(
        f"{conf_dir}/litellm.env",
        template("litellm/litellm.env.j2", redis=redis_target, extra_env=s["litellm_extra_env"]),
        "root",
        svc,
        "640",
    )
    want.file(
        LAUNCHER.format(home=home),
        template(
            "litellm/launch.py.j2",
            venv=venv,
            env_for=env_for,
            database=s["litellm_database"],
            db_user=s["postgres_user"],
            db_name=s["postgres_db"],
            db_host=(pg[0].data.private_address if pg else "127.0.0.1"),
            db_port=s["postgres_port"],
            config_path=f"{conf_dir}/config.yaml",
            bind=s["litellm_bind"],
            workers=s["litellm_workers"],
            healthcheck_timeout=s["litellm_worker_healthcheck_timeout"],
            keepalive_timeout=s["litellm_keepalive_timeout"],
            max_requests=s["litellm_max_requests_before_restart"],
            max_requests_jitter=s["litellm_max_requests_jitter"],
        ),
        mode="755",
    )
    want.file(ROTATE_SCRIPT.format(home=home), ROTATE_SOURCE.read_text(), mode="755")
    want.file(
        UNIT_FILE,
        template("systemd/litellm@.service.j2", s=s, state_dir=STATE_DIR, creds_dir=CREDS_DIR, credentials=sorted(env_for)),
    )
    want.read()

    mem_mb = want.state["mem_mb"]
    if mem_mb and parse_size(s["litellm_memory_max"]) > mem_mb * 1024 * 1024:
        raise PyinfraError(
            f"host {host.name}: litellm_memory_max {s['litellm_memory_max']} is above the host's memory "
            f"({mem_mb} MB), so it never protects the host. Fix: lower litellm_memory_max for this host."
        )

    # --- install: the venv first, in the background (the longest step: it overlaps everything else) ---
    # In deploy.py python3-venv comes with the first package wave, so the build starts right after it,
    # before the second wave's long installs (PostgreSQL) that it then overlaps.
    want.ensure_packages("Install Python venv support", installed_by=packages)
    venv_changed = want.text(f"{venv}/.gatekit-stamp") != stamp
    if venv_changed:
        script = template(
            "litellm/venv-install.sh.j2",
            venv=venv,
            new=venv_dir(home, stamp),
            installer=installer[0],
            pip_args=installer[1],
            uv_args=installer[2],
            lock=f"{home}/requirements.lock",
            uv_lock=f"{home}/uv.lock",
            pip_wheels=PIP_WHEELS,
            stamp=stamp,
        )
        start_venv_install(
            name=f"Start the LiteLLM venv install in the background ({installer[0]} --require-hashes)",
            home=home,
            uploads={**locks, INSTALL_SCRIPT.format(home=home): script},
            script=INSTALL_SCRIPT.format(home=home),
            timeout=s["litellm_install_timeout"],
        )
    want.ensure_user("Create the litellm system user", svc, STATE_DIR)
    for path in want.dirs:
        want.ensure_dir(f"Directory {path}", path)

    # --- configure ----------------------------------------------------------------------------
    config = want.ensure_file("Render LiteLLM config.yaml (secrets only as os.environ references)", f"{conf_dir}/config.yaml")
    env_file = want.ensure_file("Render LiteLLM environment (no secrets)", f"{conf_dir}/litellm.env")
    launcher = want.ensure_file("Install the LiteLLM launcher", LAUNCHER.format(home=home))
    want.ensure_file("Install gatekit-rotate (blue/green key rotation)", ROTATE_SCRIPT.format(home=home))
    creds_changed = install_credentials(ctx, env_for, want)
    unit = want.ensure_file("Install the litellm@.service template unit", UNIT_FILE)
    return Gateway(
        settings=s,
        port=port,
        venv=venv,
        stamp=stamp,
        install_started=venv_changed,
        credentials=sorted(env_for),
        unit_changed=unit,
        was_active=want.state["units"].get(instance, ("", ""))[0] == "active",
        running_enabled=want.state["units"].get(instance) == ("active", "enabled"),
        inputs_changed=lambda: venv_changed
        or any(op.did_change() for op in (config, env_file, launcher, unit, *creds_changed)),
    )


@deploy("LiteLLM Proxy")
def litellm_start(gw: Gateway):
    """activate: wait for the venv install, then start the live instance, or restart it for new inputs."""
    if gw.install_started:
        wait_venv_install(gw)
    if gw.settings["litellm_database"]:
        prisma_setup(gw.settings, gw.venv, gw.install_started, gw.credentials)
    systemd.daemon_reload(name="Reload systemd units", _if=gw.unit_changed.did_change)
    if not gw.running_enabled:
        systemd.service(name=f"Enable and start {gw.instance}", service=gw.instance, running=True, enabled=True)
    # A unit that was not running has just started with the new inputs; only a running one needs a restart.
    systemd.service(
        name=f"Restart {gw.instance} for its new inputs",
        service=gw.instance,
        restarted=True,
        _if=lambda: gw.was_active and gw.inputs_changed(),
    )


@deploy("LiteLLM Proxy")
def litellm_ready(gw: Gateway):
    """After a (re)start, wait for /health/readiness (deploy.py configures nginx in the meantime)."""
    wait_ready(gw.port, gw.settings, _if=lambda: gw.inputs_changed() or not gw.was_active)


@operation()
def start_venv_install(home: str, uploads: dict, script: str, timeout: int):
    """Upload the locks and the install script, run it as a transient unit and return at once.

    One operation (not one per file) so that it is among the gateway's first operations.
    """
    yield f"install -d -m 755 {home} {home}/bin"
    for dest, content in uploads.items():
        yield FileUploadCommand(io.StringIO(content), dest)
        yield f"chown root:root {dest} && chmod {'700' if dest == script else '644'} {dest}"
    # (A run cut off earlier is stopped first: the script then rebuilds its half-done venv.)
    # Lowest CPU priority: the install must not starve what runs beside it (a live LiteLLM during an
    # upgrade; the deploy's own package installs on a fresh host). User=root gives it HOME (/root/.netrc).
    yield from background.start_commands(
        INSTALL_UNIT, "gatekit: install LiteLLM into its venv", script, timeout,
        ("Nice=19", "IOSchedulingPriority=7", "User=root"),
    )


def venv_dir(home: str, stamp: str) -> str:
    """Where the venv for this stamp is built; `{home}/venv` is a symlink to the live one."""
    return f"{home}/venvs/{stamp[:16]}"


def wait_venv_install(gw: Gateway):
    server.shell(
        name="Wait for the LiteLLM venv install, then switch to it",
        commands=switch_venv_commands(gw.venv, venv_dir(gw.settings["litellm_home"], gw.stamp), gw.stamp),
    )


def switch_venv_commands(venv: str, new: str, stamp: str, unit: str = INSTALL_UNIT) -> list[str]:
    """Wait for the background build; on success make it the live venv (symlink switch), keeping the
    previous one for a manual rollback; on failure show the build's log, leave the live venv alone and fail."""
    return [
        background.wait_command(
            unit,
            done=f"[ \"$(cat {new}/.gatekit-stamp 2>/dev/null)\" = {stamp} ]",
            failure=f"LiteLLM venv install failed (result: $result); the live venv is unchanged. Fix: see the "
            f"lines above (journalctl -u {unit}); re-run the deploy to retry.",
        ),
        # Hosts deployed before venvs were versioned hold a plain directory here.
        f"if [ -d {venv} ] && [ ! -L {venv} ]; then rm -rf {venv}.old && mv {venv} {venv}.old; fi",
        f"prev=$(readlink {venv} || true); ln -sfn {new} {venv}.next && mv -T {venv}.next {venv}; "
        f"for d in $(dirname {new})/*; do [ \"$d\" = {new} ] || [ \"$d\" = \"$prev\" ] || rm -rf \"$d\"; done; "
        f"rm -rf {venv}.old",
    ]


def key_fingerprints(ctx) -> dict[str, str]:
    return {d.secret: fingerprint(ctx.secret(d.secret)) for m in ctx.spec.models for d in m.deployments}


def render_config(ctx, redis_target: dict | None) -> str:
    """config.yaml for the keys in the vault (deployment ids carry each key's fingerprint)."""
    return litellm_config_yaml(ctx.spec, ctx.settings, redis_target, key_fingerprints(ctx))


def install_credentials(ctx, env_for: dict[str, str], want: Desired) -> list:
    """Encrypt each secret with the host's systemd credential key. Only changed secrets travel.

    The plaintext is staged on tmpfs (root-only), encrypted by systemd-creds (reading the file, so the
    value is never in a command line), and removed in the same command. A fingerprint file lets re-runs
    see that nothing changed without decrypting anything.
    """
    todo = {
        name: ctx.secret(name)
        for name in sorted(env_for)
        if want.text(f"{CREDS_DIR}/{name}.fp") != fingerprint(ctx.secret(name))
        or f"{CREDS_DIR}/{name}.cred" not in want.state["paths"]
    }
    # A changed key on a running gateway would need a restart, and a restart is a gap in service and
    # the moment old and new keys get mixed up. That is rotate_keys.py's job (blue/green, canary, rollback).
    changed = sorted(n for n in todo if f"{CREDS_DIR}/{n}.cred" in want.state["paths"] and want.text(f"{CREDS_DIR}/{n}.fp"))
    if changed and not ctx.settings["litellm_restart_on_secret_change"]:
        raise PyinfraError(
            f"host {host.name}: {', '.join(changed)} in the vault differ from the credentials live on the host. "
            f"Fix: rotate without downtime: pyinfra INVENTORY rotate_keys.py --data rotate={','.join(changed)} "
            "(or set litellm_restart_on_secret_change: true to accept a restart)."
        )
    if not todo:
        return []
    fps = ", ".join(f"{name} ({fingerprint(value)})" for name, value in todo.items())
    return [encrypt_credentials(name=f"Encrypt credentials {fps}", secrets=todo)]


def encrypt_credential_commands(name: str, value: str, suffix: str):
    """Upload `value` to tmpfs (root-only), encrypt it with the host's credential key into
    {CREDS_DIR}/{name}.cred{suffix} (its fingerprint into .fp{suffix}) and remove the plaintext in the same
    command: systemd-creds reads the file, so the value is never in a command line. Shared with rotation."""
    staged = f"{STAGE_DIR}/{name}"
    cred = f"{CREDS_DIR}/{name}.cred{suffix}"
    yield FileUploadCommand(io.StringIO(value), staged, remote_temp_filename=f"{STAGE_DIR}/.upload-{name}")
    yield (
        f"chmod 600 {staged}; systemd-creds encrypt --name={name} {staged} {cred}; rc=$?; rm -f {staged}; "
        f"[ $rc -eq 0 ] && chmod 600 {cred} && echo {fingerprint(value)} > {CREDS_DIR}/{name}.fp{suffix}"
    )


@operation()
def encrypt_credentials(secrets: dict[str, str]):
    """One operation for all changed secrets: each is encrypted beside the live one, then swapped in
    (the previous kept as .cred.prev)."""
    yield f"install -d -m 700 {STAGE_DIR}"
    for name, value in secrets.items():
        yield from encrypt_credential_commands(name, value, ".new")
        c = f"{CREDS_DIR}/{name}"
        yield f"if [ -f {c}.cred ]; then cp -p {c}.cred {c}.cred.prev; fi; mv {c}.cred.new {c}.cred && mv {c}.fp.new {c}.fp"


def wait_ready(port: int, s: dict, **kwargs):
    url = f"http://{s['litellm_bind']}:{port}/health/readiness"
    unit = f"litellm@{port}.service"
    probe = (
        "import subprocess, sys, time, urllib.request\n"
        f"deadline = time.time() + {s['litellm_ready_timeout']}\n"
        "while time.time() < deadline:\n"
        "    try:\n"
        f"        if urllib.request.urlopen({url!r}, timeout=5).status == 200: sys.exit(0)\n"
        "    except Exception: pass\n"
        # Restart= gives up after the start limit: no point waiting out the timeout then.
        f"    if subprocess.run(['systemctl', 'is-failed', '--quiet', {unit!r}]).returncode == 0:\n"
        f"        sys.exit('{unit} failed to start: see journalctl -u {unit}')\n"
        "    time.sleep(0.5)\n"
        f"sys.exit('{unit} not ready after {s['litellm_ready_timeout']}s: see journalctl -u {unit}')\n"
    )
    server.shell(name=f"Wait for litellm@{port} /health/readiness", commands=[f"python3 -c {shlex.quote(probe)}"], **kwargs)


def prisma_setup(s: dict, venv: str, venv_changed: bool, credentials: list[str]):
    """LiteLLM's database mode: Prisma engines are fetched at generate time, so generate + migrate run
    here, at provisioning, never at service start (a restart must not depend on a download)."""
    env = {"PATH": f"{venv}/bin:/usr/bin:/bin"}
    if s["litellm_prisma_engines_mirror"]:
        env["PRISMA_ENGINES_MIRROR"] = s["litellm_prisma_engines_mirror"]
    unit = files.put(
        name="Install the LiteLLM database migration unit",
        src=io.StringIO(
            "[Unit]\nDescription=LiteLLM Prisma generate + migrate (gatekit, provisioning only)\n\n[Service]\nType=oneshot\n"
            + "".join(f"Environment={k}={v}\n" for k, v in env.items())
            + "Environment=GK_PORT=0\nEnvironmentFile=" + s["litellm_config_dir"] + "/litellm.env\n"
            + "".join(f"LoadCredentialEncrypted={c}:{CREDS_DIR}/{c}.cred\n" for c in credentials)
            + f"ExecStart={venv}/bin/python3 -m prisma generate --schema "
            + f"{venv}/lib/python3.11/site-packages/litellm/proxy/schema.prisma\n"
            + f"ExecStart={s['litellm_home']}/bin/gatekit-litellm-launch --skip_server_startup\n"
        ),
        dest="/etc/systemd/system/litellm-migrate.service",
        mode="644",
    )
    systemd.daemon_reload(name="Reload systemd units (migration unit)", _if=unit.did_change)
    server.shell(
        name="Generate Prisma client and migrate the LiteLLM database",
        commands=["systemctl start litellm-migrate.service"],
        _if=lambda: venv_changed or unit.did_change(),
    )

