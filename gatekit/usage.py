"""Client-key usage, read from the inventory's PostgreSQL host over pyinfra's connection (SSH as usual)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from gatekit.spec import SpecError


def fetch_usage(inventory_file: Path) -> dict[str, dict]:
    """{key name: {"today": {...}, "month": {...}}} from gatekit.key_usage; a one-line error otherwise."""
    import os

    from pyinfra.api import Config, State
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    from gatekit.inventory import context
    from gatekit.onhost.keyauth import USAGE_REPORT

    # As pyinfra's CLI sets them up: inventory files run inside pyinfra's context.
    state = State(check_for_changes=False)
    state.cwd = os.getcwd()
    ctx_state.set(state)
    config = Config()
    ctx_config.set(config)
    inventory = make_inventory(str(inventory_file), cwd=state.cwd)
    ctx_inventory.set(inventory)
    hosts = list(inventory.get_group("postgres", []))
    if not hosts:
        raise SpecError([f"{inventory_file}: no host in group postgres, where usage is kept. "
                               "Fix: pass the inventory the gateways were deployed with."])
    host = hosts[0]
    state.init(inventory, config)
    db = context(host).settings["postgres_db"]
    host.connect(raise_exceptions=True)
    try:
        sql = "SELECT 1 FROM pg_namespace WHERE nspname = 'gatekit' AND to_regclass('gatekit.key_usage') IS NOT NULL"
        cmd = (f"cd / && runuser -u postgres -- psql -XAt -v ON_ERROR_STOP=1 -d {shlex.quote(db)} -c {shlex.quote(sql)} "
               f"-c {shlex.quote(USAGE_REPORT)}")
        ok, output = host.run_shell_command(cmd, print_output=False, print_input=False)
    finally:
        host.disconnect()
    if not ok:
        detail = " ".join(line for line in output.stderr_lines if "error" in line.lower() or "FATAL" in line)
        raise SpecError([f"{host.name}: cannot read usage from PostgreSQL database {db}: {detail[:200]}. "
                         "Fix: deploy first (it creates the schema)."])
    usage = {}
    for line in output.stdout_lines:
        if line.startswith("{"):
            row = json.loads(line)
            usage[row["key"]] = row
    return usage
