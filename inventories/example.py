# Example environment: one data host (Redis + PostgreSQL) and two gateways.
# Run: pyinfra inventories/example.py deploy.py
# Host data: private_address (required: the address other hosts use), ssh_* settings, and any setting from
# gatekit/defaults.py to override it for that host only (e.g. litellm_memory_max).
from gatekit.inventory import groups

_data_host = ("data1.example.net", {"private_address": "10.0.0.10", "memory_mb": 4096})
_gateways = [
    ("gw1.example.net", {"private_address": "10.0.0.11", "memory_mb": 4096}),
    ("gw2.example.net", {"private_address": "10.0.0.12", "memory_mb": 4096}),
]

_g = groups(
    inventory_file="inventories/example.py",
    spec_file="inventories/example.gateway.yaml",
    # monitoring (optional): Prometheus with gatekit's alert rules; every host then runs node_exporter.
    hosts={"gateways": _gateways, "redis": [_data_host], "postgres": [_data_host], "monitoring": [_data_host]},
    data={"ssh_user": "root"},
)
gateways, redis, postgres, monitoring = _g["gateways"], _g["redis"], _g["postgres"], _g["monitoring"]
