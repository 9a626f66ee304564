# Single-host variant: one machine runs nginx, LiteLLM, Redis, PostgreSQL and (optional) the monitoring.
# Run: pyinfra inventories/single.py deploy.py
from gatekit.inventory import groups

_host = ("gateway.example.net", {"private_address": "10.0.0.20", "memory_mb": 4096})

_g = groups(
    inventory_file="inventories/single.py",
    spec_file="inventories/example.gateway.yaml",
    # monitoring (optional): Prometheus with gatekit's alert rules and the exporters; drop it to run without.
    hosts={"gateways": [_host], "redis": [_host], "postgres": [_host], "monitoring": [_host]},
    data={"ssh_user": "root"},
)
gateways, redis, postgres, monitoring = _g["gateways"], _g["redis"], _g["postgres"], _g["monitoring"]
