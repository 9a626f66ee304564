"""Where a host's peers are: the Redis and PostgreSQL a gateway talks to, read from the inventory."""

from __future__ import annotations

from pyinfra import host, inventory

from gatekit.inventory import group_hosts


def redis_target(s: dict) -> dict | None:
    """{host, port, db} of the inventory's Redis for this gateway; None without a redis group."""
    redis_hosts = group_hosts(inventory, "redis")
    if not redis_hosts:
        return None
    r = redis_hosts[0]
    # A gateway on the Redis host itself talks over loopback.
    address = "127.0.0.1" if r.name == host.name else r.data.private_address
    return {"host": address, "port": s["redis_port"], "db": s["redis_litellm_db"]}


def database_host() -> str:
    """The private address of the inventory's PostgreSQL (loopback when there is none)."""
    pg = group_hosts(inventory, "postgres")
    return pg[0].data.private_address if pg else "127.0.0.1"


def usage_database(s: dict) -> str | None:
    """libpq conninfo (no password) of the PostgreSQL that keeps client-key usage; None without a postgres group."""
    if not group_hosts(inventory, "postgres"):
        return None
    return f"host={database_host()} port={s['postgres_port']} dbname={s['postgres_db']} user={s['postgres_user']}"


def gateway_addresses() -> list[str]:
    """Private addresses of every gateway: the only clients PostgreSQL admits."""
    return sorted({h.data.private_address for h in group_hosts(inventory, "gateways")})


def egress_allow(s: dict) -> list[str]:
    """What a gateway's LiteLLM may connect to when the operator set litellm_egress_allow: those networks
    plus this inventory's Redis and PostgreSQL. Empty (no allowlist) when the setting is empty."""
    if not s["litellm_egress_allow"]:
        return []
    peers = [t["host"] for t in (redis_target(s),) if t] + [database_host()]
    return sorted({*s["litellm_egress_allow"], *(p for p in peers if p != "127.0.0.1")})


def monitoring_addresses() -> list[str]:
    """Private addresses of the monitoring hosts (empty without a monitoring group)."""
    return sorted({h.data.private_address for h in group_hosts(inventory, "monitoring")})


def monitored_hosts() -> list:
    """Every inventory host with what the monitoring host needs of it (gatekit.monitoring.Monitored)."""
    from gatekit.inventory import GROUPS, OPTIONAL_GROUPS, context, settings_for
    from gatekit.monitoring import Monitored

    spec = context(host).spec
    kit_groups = (*GROUPS, *OPTIONAL_GROUPS)
    seen = {}
    for group in kit_groups:
        for h in group_hosts(inventory, group):
            seen.setdefault(h.name, h)
    return [Monitored(h.name, h.data.private_address, frozenset(g for g in h.groups if g in kit_groups),
                      settings_for(spec, h.data.dict())) for h in seen.values()]
