"""Facts the roles decide on besides HostState (gatekit/hoststate.py). Commands tolerate what is not
installed yet; process() is pure."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class IPFilteringEnforced(FactBase):
    """Whether systemd enforces IPAddressDeny= on this host, tried for real: a transient unit denied every
    address connects to a closed loopback port. Enforced: EPERM at once ("Operation not permitted").
    Not enforced (no BPF cgroup firewall, e.g. a cgroup v1 hierarchy): "Connection refused". systemd only
    logs a warning then, so an egress allowlist would silently allow everything."""

    def command(self):
        return ("systemd-run --quiet --wait --pipe --collect -p IPAddressDeny=any "
                "/bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/9' 2>&1 || true")

    def default(self):
        return False

    def process(self, output):
        return "not permitted" in "\n".join(output).lower()


# The PostgreSQL major version whose cluster configuration the postgres role writes (/etc/postgresql/N/main): the
# installed cluster's ("installed N": the newest with a main cluster) or, before the first install, the one the
# host's apt would install for the package `postgresql` ("candidate N": its dependency on postgresql-N) or, on a
# fresh image without package lists yet, Debian's default for the host's release ("release N").
_MAJOR = ("sed -n 's/^VERSION_ID=\"\\{0,1\\}\\([0-9]*\\)\"\\{0,1\\}$/release \\1/p' /etc/os-release 2>/dev/null; "
          "for d in /etc/postgresql/*/main; do [ -d \"$d\" ] && v=${d%/main} && echo \"installed ${v##*/}\"; done; "
          "apt-cache depends postgresql 2>/dev/null | sed -n 's/^ *Depends: postgresql-\\([0-9][0-9]*\\)$/candidate \\1/p'")


# Debian's default PostgreSQL per release (what postgresql-common's supported_versions answers there): used only
# where no fact exists yet, before the first apt-get update of a fresh image; apt's own answer decides after that.
DEBIAN_POSTGRES = {"12": 15, "13": 17}


class PostgresLitellmState(FactBase):
    """Role/database/password state for the LiteLLM role, and which version of gatekit's usage schema the
    database holds (the comment on gatekit.key_usage, "schema"), and whether the monitoring role exists
    ("monitor"); those are absent before PostgreSQL is installed. "major": the PostgreSQL major version installed,
    else the one apt would install, else the release's default (DEBIAN_POSTGRES), else None. One round trip."""

    def command(self, role, database, monitor="prometheus"):
        sql = (
            "SELECT 'role', coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{r}' "
            "UNION ALL SELECT 'db', pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{d}' "
            # The exporter's role: may log in, member of pg_monitor (statistics, never table data).
            "UNION ALL SELECT 'monitor', rolname FROM pg_roles WHERE rolname = '{m}' AND rolcanlogin "
            "AND pg_has_role(rolname, 'pg_monitor', 'MEMBER')"
        ).format(r=role, d=database, m=monitor)
        schema = "SELECT 'schema ' || coalesce(obj_description(to_regclass('gatekit.key_usage'), 'pg_class'), '')"
        return (
            f"{_MAJOR}; "
            "if command -v psql >/dev/null && id postgres >/dev/null 2>&1 && "
            "runuser -u postgres -- psql -XtAc 'SELECT 1' >/dev/null 2>&1; then "
            f"runuser -u postgres -- psql -XtA -F ' ' -c {shlex.quote(sql)}; "
            f"runuser -u postgres -- psql -XtA -d {shlex.quote(database)} -c {shlex.quote(schema)} 2>/dev/null "
            "|| true; fi"
        )

    def default(self):
        return {"major": None}

    def process(self, output):
        state, majors, release = {}, {"installed": [], "candidate": []}, None
        for line in output:
            kind, _, value = line.partition(" ")
            if kind in majors:
                if value.isdigit():
                    majors[kind].append(int(value))
            elif kind == "release":
                release = value
            else:
                state[kind] = value
        state["major"] = max(majors["installed"] or majors["candidate"] or [0]) or DEBIAN_POSTGRES.get(release)
        return state
