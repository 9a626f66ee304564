"""What the monitoring host scrapes, as data: pure, so the controller's tests check it without hosts.

Every target carries `host` (the inventory name), so alerts and dashboards speak of hosts, not addresses.
Jobs (the contract of gatekit/alerts.py and templates/monitoring/grafana-dashboard.json):
- litellm: each LiteLLM instance's own /metrics/PORT/ through the gateway's nginx metrics listener, one
  target per port (label `port`). The standby half of the blue/green pair is stopped by design, so its
  targets are down: alerts join `up` with the unit's state instead of reading `up` alone.
- node: node_exporter on every host (systemd units, OOM kills, gatekit's textfile metrics).
- redis, postgres: their exporters, where those run.
- gateway_probe: the blackbox exporter on the monitoring host calls each gateway's public liveness route
  over TLS (is it serving, when does its certificate expire).
- prometheus: itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from gatekit.onhost.layout import Layout

PROBE_MODULE = "gatekit_liveness"
# Units node_exporter's systemd collector reports ([.] rather than \. : systemd rewrites backslashes).
UNITS_REGEX = "(litellm@[0-9]+|nginx|redis-server|postgresql|postgresql@.+|prometheus.*|gatekit-.+)[.]service"


@dataclass(frozen=True)
class Monitored:
    """One inventory host as the monitoring host sees it."""

    name: str
    address: str  # private address
    groups: frozenset[str]
    settings: dict  # that host's effective settings (DEFAULTS < spec < host data)


def _job(name: str, targets: list[tuple[str, dict]], interval: int, **extra) -> dict:
    job = {"job_name": name, "scrape_interval": f"{interval}s", **extra}
    job["static_configs"] = [{"targets": [t], "labels": labels} for t, labels in targets]
    return job


def scrape_jobs(hosts: list[Monitored], s: dict, private_address: str) -> list[dict]:
    """Prometheus' scrape_configs for `hosts`, seen from a monitoring host at `private_address` with settings `s`."""
    interval = s["monitoring_scrape_interval"]
    ordered = sorted(hosts, key=lambda h: h.name)
    gateways = [h for h in ordered if "gateways" in h.groups]
    litellm = [
        (f"{h.address}:{h.settings['nginx_metrics_port']}",
         {"host": h.name, "port": str(port), "__metrics_path__": f"/metrics/{port}/"})
        for h in gateways for port in h.settings["litellm_ports"]
    ]
    jobs = [
        _job("prometheus", [(f"{private_address}:{s['monitoring_prometheus_port']}", {"host": _self(hosts, private_address)})], interval),
        _job("node", [(f"{h.address}:{h.settings['monitoring_node_exporter_port']}", {"host": h.name}) for h in ordered], interval),
        _job("litellm", litellm, interval),
        _job("redis", [(f"{h.address}:{h.settings['monitoring_redis_exporter_port']}", {"host": h.name})
                       for h in ordered if "redis" in h.groups], interval),
        _job("postgres", [(f"{h.address}:{h.settings['monitoring_postgres_exporter_port']}", {"host": h.name})
                          for h in ordered if "postgres" in h.groups], interval),
        _job("gateway_probe", [(f"https://{h.address}:{h.settings['nginx_https_port']}/health/liveliness", {"host": h.name})
                               for h in gateways], interval,
             metrics_path="/probe", params={"module": [PROBE_MODULE]},
             relabel_configs=[
                 {"source_labels": ["__address__"], "target_label": "__param_target"},
                 {"source_labels": ["__param_target"], "target_label": "instance"},
                 {"target_label": "__address__", "replacement": f"127.0.0.1:{s['monitoring_blackbox_port']}"},
             ]),
    ]
    return [j for j in jobs if j["static_configs"]]


def _self(hosts: list[Monitored], address: str) -> str:
    return next((h.name for h in hosts if h.address == address), address)


def prometheus_config(hosts: list[Monitored], s: dict, private_address: str, layout: Layout) -> str:
    config = {
        "global": {"scrape_interval": f"{s['monitoring_scrape_interval']}s",
                   "evaluation_interval": f"{s['monitoring_scrape_interval']}s"},
        "rule_files": [layout.alert_rules],
        **({"alerting": {"alertmanagers": [{"static_configs": [{"targets": list(s["monitoring_alertmanagers"])}]}]}}
           if s["monitoring_alertmanagers"] else {}),
        "scrape_configs": scrape_jobs(hosts, s, private_address),
    }
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    return "# Rendered by gatekit from the inventory; edits are overwritten on the next deploy.\n" + body


def metrics_allow(monitoring_addresses: list[str], admin_allow: list[str]) -> list[str]:
    """Who reaches a gateway's metrics listener: the monitoring hosts and the admin networks."""
    return sorted({*(f"{a}/32" if ":" not in a else f"{a}/128" for a in monitoring_addresses), *admin_allow})
