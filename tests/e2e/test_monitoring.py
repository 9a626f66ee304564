"""The monitoring stack on the lab: Prometheus on data1 (the `monitoring` group) scraping every host over the
private network, LiteLLM's counters exact over workers and instances, real faults firing gatekit's alerts,
and every dashboard query answered by the live Prometheus.

Tests in this file run in order: the dashboard test reads the traffic, faults and restarts of the ones
before it.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections import defaultdict
from pathlib import Path

import httpx

from gatekit.alerts import LITELLM_UNIT_ACTIVE
from lab.checks import completion, prometheus_query, wait_until

DASHBOARD = Path(__file__).resolve().parents[2] / "templates" / "monitoring" / "grafana-dashboard.json"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


# ---- helpers ------------------------------------------------------------------------------------------
def prom_url(lab) -> str:
    return f"http://{lab.hosts['data1'].address}:{lab.host_settings('data1')['monitoring_prometheus_port']}"


def query(lab, expr: str) -> list[dict]:
    return prometheus_query(lab, expr)


def value(lab, expr: str) -> float | None:
    result = query(lab, expr)
    return float(result[0]["value"][1]) if result else None


def alerts(lab, name: str, state: str = "firing") -> list[dict]:
    data = httpx.get(f"{prom_url(lab)}/api/v1/alerts", timeout=30, trust_env=False).json()["data"]["alerts"]
    return [a for a in data if a["labels"]["alertname"] == name and a["state"] == state]


def scrape(lab, gw: str) -> dict[tuple[str, frozenset], float]:
    """Every live instance's metrics of `gw` as the monitoring host reads them (the gateway's metrics
    listener on its private address), summed per (name, labels) over the instances."""
    s = lab.host_settings(gw)
    urls = [f"http://{lab.hosts[gw].address}:{s['nginx_metrics_port']}/metrics/{p}/" for p in lab.live_ports(gw)]
    code = "import sys, urllib.request\nfor u in sys.argv[1:]: print(urllib.request.urlopen(u, timeout=20).read().decode())"
    out = lab.hosts["data1"].run(f"python3 -c {shlex.quote(code)} {' '.join(urls)}").stdout
    totals: dict[tuple[str, frozenset], float] = defaultdict(float)
    for line in out.splitlines():
        m = SAMPLE.match(line)
        if m:
            totals[(m.group(1), frozenset(LABEL.findall(m.group(2) or "")))] += float(m.group(3))
    return totals


def total(samples, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, lbs), v in samples.items() if n == name and want <= lbs)


# ---- the stack ----------------------------------------------------------------------------------------
def test_monitoring_listens_privately_and_scrapes_every_live_target(lab):
    hosts = {h.address: name for name, h in lab.hosts.items()}

    def targets():
        found = httpx.get(f"{prom_url(lab)}/api/v1/targets", timeout=30, trust_env=False).json()["data"]["activeTargets"]
        return [(t["labels"]["job"], hosts[t["labels"]["host"]], t["labels"].get("port"), t["health"]) for t in found]

    def expected():
        want = {("prometheus", "data1", None), ("redis", "data1", None), ("postgres", "data1", None)}
        want |= {("node", n, None) for n in lab.hosts}
        for gw in lab.groups["gateways"]:
            want.add(("gateway_probe", gw, None))
            want |= {("litellm", gw, str(p)) for p in lab.live_ports(gw)}
        return want

    # Every live target answers; the standby set of each gateway is a target too, down by design.
    wait_until(lambda: expected() <= {(j, h, p) for j, h, p, health in targets() if health == "up"}, 60,
               what="every live target up")
    standby = {(h, p) for j, h, p, health in targets() if j == "litellm" and health != "up"}
    assert standby == {(gw, str(p)) for gw in lab.groups["gateways"]
                       for p in lab.layout(gw).litellm_ports if p not in lab.live_ports(gw)}
    # Their refused scrapes are logged to the metrics listener's own log; error.log stays clear of them.
    for gw in lab.groups["gateways"]:
        host, port = lab.hosts[gw], lab.host_settings(gw)["nginx_metrics_port"]
        standby_port = next(p for p in lab.layout(gw).litellm_ports if p not in lab.live_ports(gw))
        wait_until(lambda: f"/metrics/{standby_port}/" in host.run(
            "cat /var/log/nginx/gatekit-metrics.error.log 2>/dev/null || true").stdout, 60, what="refused scrape logged")
        assert f':{port}"' not in host.run("cat /var/log/nginx/error.log").stdout
    # gw2's non-default metrics and node_exporter ports are what Prometheus scrapes.
    s2 = lab.host_settings("gw2")
    assert query(lab, f'up{{job="node", instance="{lab.hosts["gw2"].address}:{s2["monitoring_node_exporter_port"]}"}}')

    # Nothing of the monitoring stack listens on every address: only sshd and nginx's public ports do.
    for name, host in lab.hosts.items():
        s = lab.host_settings(name)
        public = {"22"} | ({str(s["nginx_https_port"]), str(s["nginx_http_port"])} if name in lab.groups["gateways"] else set())
        wide = [ln for ln in host.run("ss -ltnpH").stdout.splitlines()
                if (m := re.search(r"\s(?:0\.0\.0\.0|\*|\[::\]):(\d+)\s", ln)) and m.group(1) not in public]
        assert not wide, f"{name} listens on every address: {wide}"
    # Prometheus on the monitoring host's loopback (systemd socket) and private address, nowhere else.
    assert '"status":"success"' in lab.hosts["data1"].run(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen("
        f"'http://127.0.0.1:{lab.host_settings('data1')['monitoring_prometheus_port']}/api/v1/query?query=up').read().decode())\"").stdout


def test_metrics_listener_serves_only_the_monitoring_host(lab):
    s = lab.host_settings("gw2")
    url = f"http://{lab.hosts['gw2'].address}:{s['nginx_metrics_port']}"
    port = lab.live_ports("gw2")[0]
    probe = "python3 -c \"import sys,urllib.request,urllib.error\ntry: print(urllib.request.urlopen(sys.argv[1]).status)\nexcept urllib.error.HTTPError as e: print(e.code)\" "
    assert lab.hosts["data1"].run(probe + f"{url}/metrics/{port}/").stdout.strip() == "200"
    # Another gateway (not a monitoring host, not an admin network) and any other path: refused.
    assert lab.hosts["gw1"].run(probe + f"{url}/metrics/{port}/").stdout.strip() == "403"
    assert lab.hosts["data1"].run(probe + f"{url}/v1/models").stdout.strip() == "404"


def test_known_traffic_gives_exact_counter_deltas_over_workers_and_instances(lab, client, provider):
    """gw2 runs 2 instances of 2 workers each: every counter is summed over all four processes."""
    url = lab.gateway_url("gw2")
    provider.clear_faults()
    before = scrape(lab, "gw2")
    since = time.time()
    assert [completion(client, url).status_code for _ in range(4)] == [200] * 4
    with client.stream("POST", f"{url}/v1/chat/completions", json={
            "model": "fast", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    provider.faults(429, 1, model="fake-fast")
    assert completion(client, url).status_code == 429  # never retried, no fallback for fast
    provider.faults(500, 2, model="fake-claude")
    assert completion(client, url, model="claude").status_code == 200  # claude fails (its retry too): smart answers
    provider.clear_faults()
    # The provider saw the call and its one retry (retry.num_retries: 1 in the lab's spec); LiteLLM counts
    # one failed call of the deployment, not one per attempt.
    assert [r["status"] for r in provider.requests(since=since, model="fake-claude")] == [500, 500]

    after = scrape(lab, "gw2")
    wanted = {  # (metric, labels): what the traffic above must have added, summed over every process
        ("litellm_deployment_success_responses_total", "model_group=fast"): 5,
        ("litellm_deployment_success_responses_total", "model_group=smart"): 1,
        ("litellm_deployment_total_requests_total", "model_group=fast"): 6,
        ("litellm_deployment_failure_responses_total", "model_group=fast,exception_status=429"): 1,
        ("litellm_deployment_failure_responses_total", "model_group=claude,exception_status=500"): 1,
        ("litellm_deployment_total_requests_total", "model_group=claude"): 1,
        ("litellm_deployment_successful_fallbacks_total", "fallback_model=smart"): 1,
        ("litellm_llm_api_time_to_first_token_metric_count", "model_group=fast"): 1,
        ("litellm_request_total_latency_metric_count", "model_group=fast"): 5,
        ("litellm_proxy_total_requests_metric_total", "status_code=429"): 1,
    }

    def delta(name, spec):
        labels = dict(kv.split("=", 1) for kv in spec.split(",")) if spec else {}
        return (total(after, name, api_key_alias="(master)", **labels)
                - total(before, name, api_key_alias="(master)", **labels))

    got = {key: delta(*key) for key in wanted}
    assert got == wanted
    assert delta("litellm_spend_metric_total", "api_provider=openai") > 0
    # Labels stay bounded: nothing from the client's side.
    names = {k for (_, lbs) in after for k, _ in lbs}
    assert not names & {"end_user", "user", "client_ip", "user_agent", "hashed_api_key", "requested_model"}

    # Prometheus holds the same sums (scraped once per instance: nothing doubled, nothing lost).
    host = lab.hosts["gw2"].address
    want = total(after, "litellm_deployment_total_requests_total")
    wait_until(lambda: value(lab, f'sum(litellm_deployment_total_requests_total{{host="{host}"}})') == want, 60,
               what=f"Prometheus to scrape {want} requests on gw2")


def test_provider_faults_fire_their_alerts(lab, client, provider):
    """Provider 500s make the error ratio cross its threshold (ProviderErrorRatio pending: it then waits out
    its `for`); a provider refusing the key (401) puts the deployment in cooldown, and the deployed Prometheus
    fires DeploymentCooledDown for it. (LiteLLM never cools a single-deployment group down for 5xx unless
    allowed_fails differs from its default; a 401 it always does.)"""
    url = lab.gateway_url("gw1")
    provider.faults(500, model="fake-claude")
    try:
        # A call per check, so failures keep coming across scrapes (a rate needs two samples of a series).
        wait_until(lambda: completion(client, url, model="claude") and [
            a for a in alerts(lab, "ProviderErrorRatio", "pending") + alerts(lab, "ProviderErrorRatio")
            if a["labels"]["api_provider"] == "anthropic"], 90, interval=2, what="ProviderErrorRatio pending for anthropic")
        provider.clear_faults()
        provider.faults(401, 2, model="fake-claude")
        completion(client, url, model="claude")
        wait_until(lambda: [a for a in alerts(lab, "DeploymentCooledDown") if a["labels"]["api_provider"] == "anthropic"],
                   60, interval=2, what="DeploymentCooledDown for anthropic")
    finally:
        provider.clear_faults()
    # Leave claude served by its own deployment again for the tests that follow (the lab's cooldown_time is 10 s).
    since = time.time()
    wait_until(lambda: completion(client, url, model="claude").status_code == 200
               and provider.requests(since=since, model="fake-claude"), 90, interval=3, what="claude out of cooldown")


def test_a_crash_loop_fires_the_restart_alert(lab):
    gw = lab.hosts["gw1"]
    port = lab.live_ports("gw1")[-1]
    unit = f"litellm@{port}.service"
    for _ in range(3):
        before = int(gw.run(f"systemctl show -p NRestarts --value {unit}").stdout)
        gw.run(f"kill -9 $(systemctl show -p MainPID --value {unit})")
        wait_until(lambda: int(gw.run(f"systemctl show -p NRestarts --value {unit}").stdout) > before, 60,
                   what=f"{unit} restarted")
    wait_until(lambda: [a for a in alerts(lab, "LiteLLMRestartLoop") if a["labels"]["name"] == unit], 90,
               interval=2, what="LiteLLMRestartLoop")
    gw.run(f"python3 {lab.layout('gw1').program('instance.py')} wait-ready {port} --timeout 240", timeout=300)


def test_a_key_swapped_under_a_running_instance_is_reported_stale(lab):
    """The host's credential changes under a running instance (what a rotation that never restarted would
    leave): gatekit-unitstats reports it and StaleKey goes pending, then everything returns to current."""
    gw = lab.hosts["gw1"]
    L = lab.layout("gw1")
    fp = L.cred_fingerprint("anthropic_key")
    address = gw.address
    gw.run(f"cp -p {fp} {fp}.orig")
    try:
        gw.run(f"printf '%s\\n' {'0' * 16} > {fp}")
        wait_until(lambda: value(lab, f'max(gatekit_stale_key{{host="{address}", secret="anthropic_key"}})') == 1, 60,
                   interval=2, what="gatekit_stale_key = 1")
        wait_until(lambda: alerts(lab, "StaleKey", "pending") + alerts(lab, "StaleKey"), 60, interval=2,
                   what="StaleKey pending")
    finally:
        gw.run(f"mv -f {fp}.orig {fp}")
    wait_until(lambda: value(lab, f'max(gatekit_stale_key{{host="{address}"}})') == 0, 60, interval=2,
               what="gatekit_stale_key back to 0")


def test_doctor_sees_a_target_prometheus_cannot_scrape(lab):
    """doctor's monitoring check on the monitoring host: ok on the healthy lab, fails naming the target while
    gw1's node_exporter is stopped, ok again once it runs."""
    from tests.e2e.test_doctor import by_host, doctor

    gw1 = lab.hosts["gw1"]

    def monitoring_check():
        _, data, _ = doctor(lab, "--host", "data1")
        return by_host(lab, data)["data1"]["monitoring"]

    assert monitoring_check()["status"] == "ok"
    gw1.run("systemctl stop prometheus-node-exporter")
    try:
        failed = wait_until(lambda: (r := monitoring_check())["status"] == "fail" and r, 60, interval=2,
                            what="doctor to see gw1's node_exporter down")
        assert f"target down: node on {gw1.address}" in failed["evidence"] and failed["fix"]
    finally:
        gw1.run("systemctl start prometheus-node-exporter")
    wait_until(lambda: monitoring_check()["status"] == "ok", 60, interval=2, what="doctor's monitoring check ok again")


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
                "rate", "increase", "histogram_quantile", "time", "and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges, strings and words removed)."""
    bare = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)', " ", expr)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare) if w not in PROMQL_WORDS}


def test_every_dashboard_query_returns_data_from_the_live_prometheus(lab):
    """After the traffic, faults and restarts above. A panel naming a metric Prometheus does not have fails."""
    dashboard = json.loads(DASHBOARD.read_text())
    known = set(httpx.get(f"{prom_url(lab)}/api/v1/label/__name__/values", timeout=30, trust_env=False).json()["data"])
    assert LITELLM_UNIT_ACTIVE in known
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = (target["expr"].replace("$__rate_interval", "15m").replace("$host", ".*"))
            for metric in metric_names(expr):
                assert metric in known, f"panel {panel['title']!r} queries {metric}, which Prometheus does not have"
            if not query(lab, expr):
                empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
