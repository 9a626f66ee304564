"""Client-key usage, read from the inventory's PostgreSQL host over pyinfra's connection (SSH as usual)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from gatekit.spec import SpecError


def fetch_usage(inventory_file: Path) -> dict[str, dict]:
    """{key name: {"today": {...}, "month": {...}}} from gatekit.key_usage; a one-line error otherwise."""
    from pyinfra.api import Config, State
    from pyinfra_cli.inventory import make_inventory

    from gatekit.inventory import context
    from gatekit.onhost.keyauth import USAGE_REPORT

    inventory = make_inventory(str(inventory_file))
    state = State(inventory=inventory, config=Config())
    hosts = list(inventory.get_group("postgres", []))
    if not hosts:
        raise SpecError([f"{inventory_file}: no host in group postgres, where usage is kept. "
                               "Fix: pass the inventory the gateways were deployed with."])
    host = hosts[0]
    state.init(inventory, state.config)
    db = context(host).settings["postgres_db"]
    host.connect(raise_exceptions=True)
    try:
        sql = f"SELECT 1 FROM pg_namespace WHERE nspname = 'gatekit' AND to_regclass('gatekit.key_usage') IS NOT NULL"
        cmd = (f"runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -d {shlex.quote(db)} -c {shlex.quote(sql)} "
               f"-c {shlex.quote(USAGE_REPORT)}")
        ok, output = host.run_shell_command(cmd, print_output=False, print_input=False)
    finally:
        host.disconnect()
    if not ok:
        raise click.ClickException(f"{host.name}: cannot read usage from PostgreSQL database {db}: "
                                   f"{' '.join(output.stderr_lines)[:200]}. Fix: deploy first (it creates the schema).")
    usage = {}
    for line in output.stdout_lines:
        if line.startswith("{"):
            row = json.loads(line)
            usage[row["key"]] = row
    return usage
