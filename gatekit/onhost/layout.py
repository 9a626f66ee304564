"""Every on-host path, unit and port gatekit manages, in one place.

Shared by the controller (the roles render and check these paths) and the programs that run on the
host (rotate.py, instance.py): the deploy uploads this module beside them with the host's values in
layout.json, so a non-default `litellm_home`, `litellm_config_dir` or port reaches the host program
exactly as the roles used it. Python stdlib only: it runs in LiteLLM's venv on the host.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

LAYOUT_JSON = "layout.json"  # beside this module on the host


@dataclass(frozen=True)
class Layout:
    # From the settings of the same name (gatekit/defaults.py explains each).
    litellm_home: str = "/opt/litellm"
    litellm_config_dir: str = "/etc/litellm"
    litellm_user: str = "litellm"
    litellm_ports: tuple[int, ...] = (4001, 4002, 4003, 4004)
    litellm_bind: str = "127.0.0.1"
    nginx_https_port: int = 443
    nginx_tls_cert: str = ""
    nginx_tls_key: str = ""
    nginx_selfsigned_dir: str = "/etc/gatekit/tls"
    nginx_upstream_keepalive: int = 32  # the upstream file's values (gatekit/onhost/upstream.py): rotation rewrites it
    nginx_upstream_keepalive_timeout: int = 60
    postgres_version: int = 0  # 0: the host's (roles/postgres.py reads it from the host)
    # Fixed locations (no setting); fields only so that tests can point them into a temporary directory.
    gatekit_etc: str = "/etc/gatekit"
    gatekit_state_dir: str = "/var/lib/gatekit"
    litellm_state_dir: str = "/var/lib/litellm"
    stage_dir: str = "/run/gatekit"  # tmpfs, root-only: plaintext on its way into systemd-creds
    credentials_runtime_dir: str = "/run/credentials"  # where systemd decrypts a unit's credentials
    systemd_dir: str = "/etc/systemd/system"
    nginx_dir: str = "/etc/nginx"
    nginx_log_dir: str = "/var/log/nginx"  # Debian's nginx logs (`nginx -t` opens them)
    redis_dir: str = "/etc/redis"
    postgres_dir: str = "/etc/postgresql"
    prometheus_state_dir: str = "/var/lib/prometheus"  # Debian's packages' home for Prometheus' data and textfiles

    @classmethod
    def from_settings(cls, settings: dict) -> Layout:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in settings.items() if k in names}
        if "litellm_ports" in values:
            values["litellm_ports"] = tuple(int(p) for p in values["litellm_ports"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        data["litellm_ports"] = tuple(data["litellm_ports"])
        return cls(**data)

    @classmethod
    def beside(cls, module_file: str) -> Layout:
        """The host's layout, from layout.json next to the program. Never guessed: a default path on a
        host deployed with other settings would act on the wrong files."""
        path = os.path.join(os.path.dirname(os.path.abspath(module_file)), LAYOUT_JSON)
        try:
            with open(path) as fh:
                return cls.from_json(fh.read())
        except FileNotFoundError:
            raise SystemExit(f"gatekit: {path} missing. Fix: re-run the deploy; it installs the host's layout "
                             "beside the on-host programs.") from None

    # ---- LiteLLM: code ------------------------------------------------------------------------------
    @property
    def venv(self) -> str:  # a symlink to the live set's build under venvs/ (the one its launcher names)
        return f"{self.litellm_home}/venv"

    @property
    def venvs_dir(self) -> str:
        return f"{self.litellm_home}/venvs"

    def venv_build(self, stamp: str) -> str:
        return f"{self.venvs_dir}/{stamp[:16]}"

    @staticmethod
    def launcher_venv(launcher_text: str) -> str:
        """The venv a launcher runs LiteLLM from: its interpreter line names venvs/STAMP/bin/python3 (roles/litellm.py
        launcher()), so an instance keeps the venv it started from while a new one is built and switched to."""
        first = launcher_text.split("\n", 1)[0]
        if not first.startswith("#!") or not first.endswith("/bin/python3"):
            return ""
        return first[2:-len("/bin/python3")]

    @staticmethod
    def litellm_version(venv: str) -> str:
        """The LiteLLM version installed in `venv` (its dist-info), "" when there is none."""
        import glob

        for d in sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "litellm-*.dist-info"))):
            return Layout.dist_info_version(os.path.basename(d))
        return ""

    @staticmethod
    def dist_info_version(name: str) -> str:
        """litellm-1.2.3.dist-info -> 1.2.3 (also for gatekit status, which lists the directory over SSH)."""
        return name[len("litellm-"):-len(".dist-info")]

    @property
    def venv_stamp(self) -> str:
        return f"{self.venv}/.gatekit-stamp"

    @property
    def bin_dir(self) -> str:
        return f"{self.litellm_home}/bin"

    @property
    def lib_dir(self) -> str:  # the on-host programs and this module
        return f"{self.litellm_home}/lib/gatekit"

    @property
    def launcher(self) -> str:
        return f"{self.bin_dir}/gatekit-litellm-launch"

    @property
    def install_script(self) -> str:
        return f"{self.bin_dir}/gatekit-venv-install"

    @property
    def requirements_lock(self) -> str:
        return f"{self.litellm_home}/requirements.lock"

    @property
    def uv_lock(self) -> str:
        return f"{self.litellm_home}/uv.lock"

    def program(self, name: str) -> str:
        return f"{self.lib_dir}/{name}"

    # ---- LiteLLM: configuration and state -----------------------------------------------------------
    @property
    def config(self) -> str:
        return f"{self.litellm_config_dir}/config.yaml"

    @property
    def env_file(self) -> str:
        return f"{self.litellm_config_dir}/litellm.env"

    @property
    def client_keys(self) -> str:  # hashed client keys and their limits (gatekit.clientkeys.host_table)
        return f"{self.litellm_config_dir}/client_keys.json"

    def instance_dir(self, port: int) -> str:
        return f"{self.litellm_state_dir}/{port}"

    @property
    def creds_dir(self) -> str:
        return f"{self.gatekit_etc}/creds"

    def cred(self, name: str) -> str:
        return f"{self.creds_dir}/{name}.cred"

    def cred_fingerprint(self, name: str) -> str:
        return f"{self.creds_dir}/{name}.fp"

    def runtime_credential(self, port: int, name: str) -> str:
        return f"{self.credentials_runtime_dir}/{self.instance(port)}/{name}"

    @property
    def live_file(self) -> str:  # written by rotate.py: which instance set is live, the keys it serves
        return f"{self.gatekit_state_dir}/live.json"

    @property
    def journal_file(self) -> str:  # present while a rotation runs or was cut off
        return f"{self.gatekit_state_dir}/rotation.json"

    @property
    def switch_lock(self) -> str:  # flock()ed by gatekit-rotate for its whole run, and by gatekit-recycle
        return f"{self.gatekit_state_dir}/switch.lock"

    # ---- the instances ------------------------------------------------------------------------------
    @property
    def instance_sets(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """litellm_ports in two equal halves, blue and green. One set is live, all of its instances behind
        nginx at once (a dead one costs only its in-flight requests); key rotation starts the other set."""
        half = len(self.litellm_ports) // 2
        return self.litellm_ports[:half], self.litellm_ports[half:]

    def other_set(self, ports) -> tuple[int, ...]:
        blue, green = self.instance_sets
        return green if set(ports) == set(blue) else blue

    def set_of(self, ports) -> tuple[int, ...] | None:
        """The set holding every one of `ports` (None when they are not all in one set)."""
        for candidate in self.instance_sets:
            if ports and all(p in candidate for p in ports):
                return candidate
        return None

    def live_set(self, live_json: str | None) -> tuple[int, ...]:
        """The set nginx serves: the one live.json names, else blue."""
        try:
            data = json.loads(live_json) if live_json else None
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        named = data.get("ports") if isinstance(data.get("ports"), list) else []
        return self.set_of(named) or self.instance_sets[0]

    # ---- systemd ------------------------------------------------------------------------------------
    @staticmethod
    def instance(port: int) -> str:
        return f"litellm@{port}.service"

    @property
    def unit_file(self) -> str:
        return f"{self.systemd_dir}/litellm@.service"

    migrate_unit = "litellm-migrate.service"
    venv_install_unit = "gatekit-venv-install.service"
    packages_unit = "gatekit-packages.service"
    rotate_unit = "gatekit-rotate.service"

    @property
    def migrate_unit_file(self) -> str:
        return f"{self.systemd_dir}/{self.migrate_unit}"

    # ---- nginx --------------------------------------------------------------------------------------
    nginx_unit = "nginx.service"

    @property
    def nginx_conf(self) -> str:  # nginx's main file: `nginx -T` prints it first, relative includes are from nginx_dir
        return f"{self.nginx_dir}/nginx.conf"

    @property
    def nginx_include_dir(self) -> str:
        return f"{self.nginx_dir}/gatekit"

    @property
    def nginx_upstream(self) -> str:
        return f"{self.nginx_include_dir}/upstream.conf"

    @property
    def nginx_site(self) -> str:
        return f"{self.nginx_dir}/conf.d/gatekit.conf"

    @property
    def nginx_default_site(self) -> str:
        return f"{self.nginx_dir}/sites-enabled/default"

    @property
    def tls_pair(self) -> tuple[str, str]:
        """(certificate, key): the operator's, or the self-signed pair generated on the host."""
        if self.nginx_tls_cert:
            return self.nginx_tls_cert, self.nginx_tls_key
        return f"{self.nginx_selfsigned_dir}/gateway.crt", f"{self.nginx_selfsigned_dir}/gateway.key"

    # ---- Redis, PostgreSQL --------------------------------------------------------------------------
    redis_unit = "redis-server.service"
    postgres_unit = "postgresql.service"

    @property
    def redis_conf(self) -> str:
        return f"{self.redis_dir}/redis.conf"

    @property
    def postgres_conf_dir(self) -> str:
        if not self.postgres_version:  # 0: the host's, known only from its facts (roles/postgres.py reads them)
            raise ValueError("postgres_version 0 (the host's) has not been read from the host")
        return f"{self.postgres_dir}/{self.postgres_version}/main"

    # ---- monitoring (roles/monitoring.py) -------------------------------------------------------------
    prometheus_unit = "prometheus.service"
    node_exporter_unit = "prometheus-node-exporter.service"
    redis_exporter_unit = "prometheus-redis-exporter.service"
    postgres_exporter_unit = "prometheus-postgres-exporter.service"
    blackbox_unit = "prometheus-blackbox-exporter.service"
    # Prometheus listens on one address; this socket gives it the loopback one too (systemd-socket-proxyd).
    prometheus_loopback_socket = "gatekit-prometheus-loopback.socket"
    prometheus_loopback_service = "gatekit-prometheus-loopback.service"
    recycle_service = "gatekit-recycle.service"  # gateways: drains and restarts one live instance past its memory or age
    recycle_timer = "gatekit-recycle.timer"
    unitstats_service = "gatekit-unitstats.service"  # gateways: instance memory and stale keys for node_exporter
    unitstats_timer = "gatekit-unitstats.timer"
    reach_service = "gatekit-reach.service"  # gateways: whether Redis and PostgreSQL answer from here (started beside unitstats)
    postgres_monitor_role = "prometheus"  # peer-authenticated over the socket: the exporter's system user

    @property
    def monitoring_dir(self) -> str:  # gatekit's own files, beside (not over) the packages' conffiles
        return f"{self.gatekit_etc}/monitoring"

    @property
    def prometheus_config(self) -> str:
        return f"{self.monitoring_dir}/prometheus.yml"

    @property
    def alert_rules(self) -> str:
        return f"{self.monitoring_dir}/alerts.yml"

    @property
    def blackbox_config(self) -> str:
        return f"{self.monitoring_dir}/blackbox.yml"

    @property
    def prometheus_data(self) -> str:
        return f"{self.prometheus_state_dir}/metrics2"

    @property
    def textfile_dir(self) -> str:  # node_exporter's textfile collector reads *.prom here
        return f"{self.prometheus_state_dir}/node-exporter"

    def dropin(self, unit: str) -> str:
        """gatekit's drop-in for a packaged unit: written before the package installs, so even its first
        start listens where gatekit says (the packages' defaults listen on every address)."""
        return f"{self.systemd_dir}/{unit}.d/gatekit.conf"

    def unit_path(self, unit: str) -> str:
        return f"{self.systemd_dir}/{unit}"
