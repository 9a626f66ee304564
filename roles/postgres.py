"""PostgreSQL for LiteLLM: a scram-sha-256 role and database, reachable only from the gateways."""

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import server, systemd

from gatekit.facts import PostgresLitellmState
from gatekit.hoststate import Desired, PackageWave
from gatekit.inventory import context
from gatekit.onhost import keyauth
from gatekit.onhost.layout import Layout
from gatekit.render import scram_sha256_verifier, template
from gatekit.roles import topology


PACKAGES = ["postgresql"]


def _psql(sql: str, database: str = "postgres") -> str:
    return f"runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 -d {shlex.quote(database)} -c {shlex.quote(sql)}"


@deploy("PostgreSQL")
def postgres(packages: PackageWave | None = None):
    """`packages`: the deploy-wide wave that installs PACKAGES (deploy.py); alone, the role installs them."""
    ctx = context(host)
    s = ctx.settings
    # Where the cluster's configuration lives follows the host's PostgreSQL (Debian 12: 15, Debian 13: 17), read
    # from the host (gatekit/facts.py) unless the setting names one.
    role, db = s["postgres_user"], s["postgres_db"]
    state = host.get_fact(PostgresLitellmState, role=role, database=db, monitor=Layout.postgres_monitor_role)
    version = s["postgres_version"] or state["major"]
    if not version:
        raise PyinfraError(f"host {host.name}: cannot tell which PostgreSQL it runs or would install (no cluster in "
                           "/etc/postgresql, apt knows no package postgresql, and it is not Debian 12 or 13). Fix: "
                           "apt-get update on the host, or set postgres_version for it.")
    L = Layout.from_settings({**s, "postgres_version": version})
    unit = L.postgres_unit

    want = Desired(packages=PACKAGES, units=[unit])
    # listen_addresses needs a restart; pg_hba only a reload.
    want.file(
        f"{L.postgres_conf_dir}/conf.d/gatekit.conf",
        template("postgres/gatekit.conf.j2", s=s, private_address=host.data.private_address),
        user="postgres", group="postgres", mode="644", notify="restart", name="Render PostgreSQL listen/auth settings",
    )
    want.file(
        f"{L.postgres_conf_dir}/pg_hba.conf",
        template("postgres/pg_hba.conf.j2", s=s, gateway_addresses=topology.gateway_addresses()),
        user="postgres", group="postgres", mode="640", notify="reload", name="Render pg_hba.conf (only gateway hosts admitted)",
    )
    want.read()

    want.ensure_packages("Install PostgreSQL", installed_by=packages, notify="restart")
    want.apply()
    want.ensure_running("Enable and start PostgreSQL", unit)
    systemd.service(name="Restart PostgreSQL for new listen settings", service=unit, restarted=True, _if=want.changed("restart"))
    # A restart also reads pg_hba.
    systemd.service(name="Reload PostgreSQL for new pg_hba", service=unit, reloaded=True,
                    _if=want.changed("reload", unless="restart"))

    # The verifier, never the password, goes to the host.
    verifier = scram_sha256_verifier(ctx.secret(s["postgres_password_secret"]), salt_seed=role)
    wait = "for i in $(seq 60); do runuser -u postgres -- psql -XtAc 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.5; done"
    if "role" not in state:
        server.shell(name=f"Create PostgreSQL role {role}", commands=[wait, _psql(f"CREATE ROLE {role} LOGIN PASSWORD '{verifier}'")])
    elif state["role"] != verifier:
        server.shell(name=f"Set PostgreSQL role {role}'s password", commands=[_psql(f"ALTER ROLE {role} LOGIN PASSWORD '{verifier}'")])
    if "db" not in state:
        server.shell(name=f"Create database {db}", commands=[wait, _psql(f"CREATE DATABASE {db} OWNER {role}")])
    elif state["db"] != role:
        server.shell(name=f"Give database {db} to {role}", commands=[_psql(f"ALTER DATABASE {db} OWNER TO {role}")])

    # gatekit's own schema (client-key usage), owned by the LiteLLM role that writes it.
    if state.get("schema") != keyauth.SCHEMA_VERSION:
        server.shell(name=f"Create or migrate gatekit's usage schema in {db}",
                     commands=[wait, _psql(f"SET ROLE {role};" + keyauth.SCHEMA_SQL, database=db)])

    # The exporter's role (roles/monitoring.py): no password, so only peer login over the local socket works.
    monitor = L.postgres_monitor_role
    if topology.monitoring_addresses() and state.get("monitor") != monitor:
        server.shell(name=f"Create PostgreSQL role {monitor} (pg_monitor, local peer login only)", commands=[wait, _psql(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{monitor}') THEN CREATE ROLE {monitor}; "
            f"END IF; END$$; ALTER ROLE {monitor} LOGIN PASSWORD NULL; GRANT pg_monitor TO {monitor}")])
