"""Facts the roles decide on. Each command works on a minimal Debian host (sh, cat, awk, grep) and
tolerates what is not installed yet; process() is pure."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase


class MemTotalMB(FactBase):
    """Host memory in MB, from /proc/meminfo (no procps needed)."""

    def command(self):
        return "awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo"

    def process(self, output):
        return int(output[0]) if output else None


class FileText(FactBase):
    """A small file's text, or "" when it does not exist."""

    def command(self, path):
        return f"cat {shlex.quote(path)} 2>/dev/null || true"

    def default(self):
        return ""

    def process(self, output):
        return "\n".join(output)


class CredentialFingerprints(FactBase):
    """{secret name: fingerprint} for credentials already encrypted on the host."""

    def command(self, directory):
        d = shlex.quote(directory)
        return (
            f"for f in {d}/*.fp; do [ -f \"$f\" ] && [ -f \"${{f%.fp}}.cred\" ] && "
            f"printf '%s %s\\n' \"$(basename \"$f\" .fp)\" \"$(cat \"$f\")\"; done; true"
        )

    def default(self):
        return {}

    def process(self, output):
        return dict(line.split(" ", 1) for line in output if " " in line)


class PostgresLitellmState(FactBase):
    """Role/database/password state for the LiteLLM role; empty before PostgreSQL is installed."""

    def command(self, role, database):
        sql = (
            "SELECT 'role', coalesce(rolpassword, '') FROM pg_authid WHERE rolname = '{r}' "
            "UNION ALL SELECT 'db', pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{d}'"
        ).format(r=role, d=database)
        return (
            "if command -v psql >/dev/null && id postgres >/dev/null 2>&1 && "
            "runuser -u postgres -- psql -XtAc 'SELECT 1' >/dev/null 2>&1; then "
            f"runuser -u postgres -- psql -XtA -F ' ' -c {shlex.quote(sql)}; fi"
        )

    def default(self):
        return {}

    def process(self, output):
        state = {}
        for line in output:
            kind, _, value = line.partition(" ")
            state[kind] = value
        return state


class SystemdUnitActive(FactBase):
    """{unit: is-active state} for the given units (works before the units exist)."""

    def command(self, *units):
        return " ; ".join(f"printf '%s %s\\n' {shlex.quote(u)} \"$(systemctl is-active {shlex.quote(u)})\"" for u in units)

    def default(self):
        return {}

    def process(self, output):
        return dict(line.split(" ", 1) for line in output if " " in line)
