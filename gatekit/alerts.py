"""gatekit's Prometheus alert rules, rendered from the spec and the monitoring settings.

One alert per failure the kit exists for, over the scrape jobs of gatekit/monitoring.py (every series
carries `host`). Rules group by `model_group` and `api_provider`, never `model_id`: deployment ids carry
the key's fingerprint and change with every rotation. LiteLLM's counters are already summed over an
instance's workers; its gauges carry a `pid` label per worker, so gauges are aggregated without it.
Cooldowns alert on `litellm_deployment_cooled_down_total`, not on `litellm_deployment_state` (reported
never to return to 0 after a cooldown, LiteLLM #35653).

Each alert's promtool unit test lives in tests/unit/promtool/alerts_test.yml; test_alerts.py fails when an
alert has none.
"""

from __future__ import annotations

import yaml

from gatekit.onhost.probe import LITELLM_UNIT_ACTIVE
from gatekit.spec import GatewaySpec

_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Recording rules the alerts and the dashboard share.
# LITELLM_UNIT_ACTIVE: 1 per (host, port) whose litellm@PORT unit systemd runs. Defined in gatekit/onhost/probe.py:
# doctor's on-host collector queries it, and is sent to hosts alone.
RECORDING = [
    {
        "record": LITELLM_UNIT_ACTIVE,
        "expr": 'label_replace(max without (state, type) (node_systemd_unit_state{job="node", '
                'name=~"litellm@[0-9]+[.]service", state="active"}), "port", "$1", "name", "litellm@([0-9]+)[.]service")',
    },
]


COOLED = "litellm_deployment_cooled_down_total"


def period_seconds(duration: str) -> int:
    """A spec budget duration ("1d", "30d", "12h") in seconds."""
    return int(duration[:-1]) * _SECONDS[duration[-1]]


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, fix: str) -> dict:
    rule = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "fix": fix}
    return rule


def alerts(spec: GatewaySpec, s: dict) -> list[dict]:
    err, r429 = s["monitoring_error_ratio"], s["monitoring_429_ratio"]
    p99, days, burn = s["monitoring_p99_seconds"], s["monitoring_cert_days"], s["monitoring_budget_burn"]
    provider_rate = 'sum by (api_provider) (rate(litellm_deployment_total_requests_total[5m]))'
    rules = [
        _alert("GatewayDown", 'probe_success{job="gateway_probe"} == 0', "1m", "critical",
               "{{ $labels.host }}: the public liveness route does not answer over TLS",
               "check nginx and litellm@ units on the host: systemctl status nginx 'litellm@*'; gatekit doctor"),
        _alert("HostDown", 'up{job="node"} == 0', "2m", "critical",
               "{{ $labels.host }}: node_exporter does not answer (host down or unreachable)",
               "check the host and its private network"),
        _alert("LiteLLMInstanceDown",
               f'up{{job="litellm"}} == 0 and on (host, port) ({LITELLM_UNIT_ACTIVE} == 1)', "2m", "critical",
               "{{ $labels.host }}: litellm@{{ $labels.port }} runs but its metrics do not answer",
               "journalctl -u litellm@{{ $labels.port }}; the instance may be hung"),
        _alert("LiteLLMRestartLoop",
               'increase(node_systemd_service_restart_total{job="node", name=~"litellm@[0-9]+[.]service"}[15m]) >= 3',
               "", "critical",
               "{{ $labels.host }}: {{ $labels.name }} restarted {{ $value | humanize }} times in 15 min (crash or OOM loop)",
               "journalctl -u {{ $labels.name }}: OOM kills mean MemoryMax is too low or the process leaks"),
        _alert("UnitFailed",
               'node_systemd_unit_state{job="node", state="failed"} == 1', "1m", "critical",
               "{{ $labels.host }}: {{ $labels.name }} has failed",
               "systemctl status {{ $labels.name }}; journalctl -u {{ $labels.name }}"),
        _alert("OOMKill", 'increase(node_vmstat_oom_kill{job="node"}[15m]) > 0', "", "warning",
               "{{ $labels.host }}: the kernel killed a process for memory in the last 15 min",
               "journalctl -k | grep -i oom; compare litellm_memory_max with the instances' use"),
        _alert("ProviderErrorRatio",
               f'sum by (api_provider) (rate(litellm_deployment_failure_responses_total{{exception_status=~"5..|408"}}[5m]))'
               f' / {provider_rate} > {err}', "5m", "warning",
               "{{ $labels.api_provider }}: {{ $value | humanizePercentage }} of calls fail with 5xx or timeouts",
               "check the provider's status; fallbacks carry the traffic meanwhile"),
        _alert("Provider429Ratio",
               f'sum by (api_provider) (rate(litellm_deployment_failure_responses_total{{exception_status="429"}}[5m]))'
               f' / {provider_rate} > {r429}', "5m", "warning",
               "{{ $labels.api_provider }}: {{ $value | humanizePercentage }} of calls are rate limited (429)",
               "raise the provider's limits or lower rpm/tpm in the spec; 429s are never retried"),
        # A deployment's first cooldown creates its series at 1, which increase() cannot see: new series count too.
        _alert("DeploymentCooledDown",
               f'(sum by (api_provider, litellm_model_name) (increase({COOLED}[5m])) > 0)'
               f' or (sum by (api_provider, litellm_model_name) ({COOLED} unless {COOLED} offset 5m) > 0)',
               "", "warning",
               "{{ $labels.api_provider }}/{{ $labels.litellm_model_name }} was put in cooldown (skipped by the router)",
               "the provider refused it (401, 404, 408, 429) or it failed too often: see ProviderErrorRatio and journalctl -u litellm@*"),
        _alert("HighP99Latency",
               f'histogram_quantile(0.99, sum by (le, model_group) (rate(litellm_request_total_latency_metric_bucket[10m]))) > {p99}',
               "5m", "warning",
               "{{ $labels.model_group }}: p99 request latency {{ $value | humanizeDuration }}",
               "compare litellm_llm_api_latency_metric (provider) with the total: queueing in the gateway or a slow provider"),
        _alert("StaleKey", "max by (host, port, secret) (gatekit_stale_key) > 0", "1m", "critical",
               "{{ $labels.host }}: litellm@{{ $labels.port }} runs with a {{ $labels.secret }} other than the current one",
               "pyinfra INVENTORY rotate_keys.py --data rotate={{ $labels.secret }}; then gatekit doctor"),
        _alert("TLSCertificateExpiry",
               f'probe_ssl_earliest_cert_expiry{{job="gateway_probe"}} - time() < {days * 86400}', "", "warning",
               "{{ $labels.host }}: the TLS certificate expires in {{ $value | humanizeDuration }}",
               "renew nginx_tls_cert/nginx_tls_key and deploy (a self-signed one: remove it on the host and deploy)"),
        _alert("RedisDown", 'redis_up{job="redis"} == 0 or up{job="redis"} == 0', "1m", "critical",
               "{{ $labels.host }}: Redis does not answer (rate limits, cooldowns and budgets are per process meanwhile)",
               "systemctl status redis-server on the host"),
        # LiteLLM's Redis circuit breaker (litellm_redis_*): open while this instance cannot reach Redis in time.
        _alert("RedisBypassed",
               'max by (host, port) (litellm_redis_circuit_breaker_state{job="litellm", state!="closed"}) > 0', "10s",
               "warning",
               "{{ $labels.host }}: litellm@{{ $labels.port }} skips Redis (its circuit breaker is open): rate limits, "
               "cooldowns and budgets count per instance meanwhile",
               "check the path from this gateway to Redis (redis-cli -h REDIS ping from the gateway; packet loss, "
               "a firewall); it closes by itself once Redis answers"),
        _alert("PostgresDown", 'pg_up{job="postgres"} == 0 or up{job="postgres"} == 0', "1m", "critical",
               "{{ $labels.host }}: PostgreSQL does not answer (client-key usage is buffered in the workers meanwhile)",
               "systemctl status postgresql on the host"),
        # The gateway's own view (gatekit-unitstats): a cut between a gateway and a data host leaves that host's
        # exporters answering the monitoring host, so RedisDown and PostgresDown stay silent.
        _alert("DependencyUnreachable", "min by (host, dependency, target) (gatekit_dependency_reachable) == 0",
               "20s", "warning",
               "{{ $labels.host }} cannot reach {{ $labels.dependency }} at {{ $labels.target }} (Redis: limits and "
               "cooldowns per instance; PostgreSQL: client-key usage buffered in the workers meanwhile)",
               "check the path from this gateway to {{ $labels.target }} (packet loss, a firewall) and the server "
               "itself (RedisDown, PostgresDown); gatekit doctor --host {{ $labels.host }}"),
    ]
    for provider, budget in sorted(spec.budgets.providers.items()):
        limit = burn * budget.max_usd
        rules.append(_alert(
            f"BudgetBurn_{provider}",
            f'sum(rate(litellm_spend_metric_total{{api_provider="{provider}"}}[1h])) * {period_seconds(budget.duration)} > {limit:g}',
            "5m", "warning",
            f"{provider}: at the last hour's spend rate the {budget.duration} budget of ${budget.max_usd:g} "
            f"would be spent {burn:g}x over",
            "find the key or model driving spend (dashboard: spend by key); lower its budget or revoke it",
        ))
    return rules


def alert_rules(spec: GatewaySpec, s: dict) -> str:
    doc = {"groups": [
        {"name": "gatekit-recording", "rules": RECORDING},
        {"name": "gatekit", "rules": alerts(spec, s)},
    ]}
    return "# Rendered by gatekit from the spec; edits are overwritten on the next deploy.\n" + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False, width=200)
