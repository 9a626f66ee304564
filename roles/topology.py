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


def gateway_addresses() -> list[str]:
    """Private addresses of every gateway: the only clients PostgreSQL admits."""
    return sorted({h.data.private_address for h in group_hosts(inventory, "gateways")})
