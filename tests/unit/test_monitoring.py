"""The monitoring role's pure parts: scrape targets from the inventory, drop-ins, the gateway's metrics listener."""

from __future__ import annotations

import re

import pytest
import yaml

from gatekit import monitoring as mon
from gatekit import render
from gatekit.defaults import DEFAULTS
from gatekit.inventory import check_hosts
from gatekit.onhost.layout import Layout

S = dict(DEFAULTS)
GW2 = {**S, "litellm_ports": [4301, 4302], "nginx_https_port": 8443, "nginx_metrics_port": 9500,
       "monitoring_node_exporter_port": 9200}
HOSTS = [
    mon.Monitored("gw1", "10.9.0.11", frozenset({"gateways"}), S),
    mon.Monitored("gw2", "10.9.0.12", frozenset({"gateways"}), GW2),
    mon.Monitored("db1", "10.9.0.20", frozenset({"postgres"}), S),
    mon.Monitored("cache1", "10.9.0.21", frozenset({"redis"}), {**S, "monitoring_redis_exporter_port": 9999}),
    mon.Monitored("mon1", "10.9.0.30", frozenset({"monitoring"}), S),
]


def config(hosts=HOSTS, s=S, addr="10.9.0.30"):
    return yaml.safe_load(mon.prometheus_config(hosts, s, addr, Layout.from_settings(s)))


def targets(cfg, job):
    out = []
    for j in cfg["scrape_configs"]:
        if j["job_name"] == job:
            out += [(t, sc["labels"]) for sc in j["static_configs"] for t in sc["targets"]]
    return out


def test_every_instance_port_of_every_gateway_is_a_target_with_its_own_settings():
    cfg = config()
    got = {(t, lb["host"], lb["port"], lb["__metrics_path__"]) for t, lb in targets(cfg, "litellm")}
    assert got == {("10.9.0.11:9464", "gw1", str(p), f"/metrics/{p}/") for p in (4001, 4002, 4003, 4004)} | {
        ("10.9.0.12:9500", "gw2", str(p), f"/metrics/{p}/") for p in (4301, 4302)}


def test_exporters_are_scraped_where_their_service_runs_at_each_hosts_port():
    cfg = config()
    assert {lb["host"]: t for t, lb in targets(cfg, "node")} == {
        "gw1": "10.9.0.11:9100", "gw2": "10.9.0.12:9200", "db1": "10.9.0.20:9100", "cache1": "10.9.0.21:9100",
        "mon1": "10.9.0.30:9100"}
    assert targets(cfg, "redis") == [("10.9.0.21:9999", {"host": "cache1"})]
    assert targets(cfg, "postgres") == [("10.9.0.20:9187", {"host": "db1"})]
    assert targets(cfg, "prometheus") == [("10.9.0.30:9090", {"host": "mon1"})]


def test_gateways_are_probed_on_their_public_tls_port_through_the_local_blackbox_exporter():
    cfg = config(s={**S, "monitoring_blackbox_port": 9333})
    assert {lb["host"]: t for t, lb in targets(cfg, "gateway_probe")} == {
        "gw1": "https://10.9.0.11:443/health/liveliness", "gw2": "https://10.9.0.12:8443/health/liveliness"}
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "gateway_probe")
    assert job["params"] == {"module": [mon.PROBE_MODULE]} and job["metrics_path"] == "/probe"
    assert {"target_label": "__address__", "replacement": "127.0.0.1:9333"} in job["relabel_configs"]
    blackbox = yaml.safe_load(render.template("monitoring/blackbox.yml.j2"))
    assert mon.PROBE_MODULE in blackbox["modules"]


def test_jobs_without_targets_are_left_out_and_intervals_follow_the_setting():
    cfg = config(hosts=[h for h in HOSTS if "redis" not in h.groups], s={**S, "monitoring_scrape_interval": 7})
    assert "redis" not in {j["job_name"] for j in cfg["scrape_configs"]}
    assert cfg["global"] == {"scrape_interval": "7s", "evaluation_interval": "7s"}
    assert cfg["rule_files"] == ["/etc/gatekit/monitoring/alerts.yml"]


def test_the_rendered_config_is_deterministic():
    assert mon.prometheus_config(HOSTS, S, "10.9.0.30", Layout()) == mon.prometheus_config(
        list(reversed(HOSTS)), S, "10.9.0.30", Layout())


def _exec_start(text: str) -> str:
    lines = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart=") and ln != "ExecStart="]
    assert len(lines) == 1 and "ExecStart=\n" in text + "\n", text  # the package's ExecStart is reset first
    return lines[0]


@pytest.mark.parametrize("tpl,port_key", [
    ("monitoring/node-exporter.conf.j2", "monitoring_node_exporter_port"),
    ("monitoring/redis-exporter.conf.j2", "monitoring_redis_exporter_port"),
    ("monitoring/postgres-exporter.conf.j2", "monitoring_postgres_exporter_port"),
    ("monitoring/prometheus.conf.j2", "monitoring_prometheus_port"),
])
def test_every_exporter_listens_on_the_private_address_only(tpl, port_key):
    s = {**S, port_key: 9876}
    text = render.template(tpl, s=s, layout=Layout.from_settings(s), private_address="10.9.0.10",
                           units_regex=mon.UNITS_REGEX, credential="redis_pw")
    cmd = _exec_start(text)
    listens = re.findall(r"-?-web\.listen-address=(\S+?)'?(?:\s|$)", cmd)
    assert listens == ["10.9.0.10:9876"], cmd
    assert "EnvironmentFile=\n" in text  # Debian's ARGS file cannot add a second listener
    assert "\\" not in cmd  # systemd would rewrite a backslash


def test_the_blackbox_exporter_listens_on_loopback_and_prometheus_also_through_the_loopback_socket():
    text = render.template("monitoring/blackbox-exporter.conf.j2", s=S, layout=Layout())
    assert "--web.listen-address=127.0.0.1:9115" in _exec_start(text)
    sock = render.template("monitoring/prometheus-loopback.socket.j2", s=S, layout=Layout())
    assert "ListenStream=127.0.0.1:9090" in sock
    svc = render.template("monitoring/prometheus-loopback.service.j2", s=S, layout=Layout(), private_address="10.9.0.10")
    assert "systemd-socket-proxyd 10.9.0.10:9090" in svc and "DynamicUser=yes" in svc


def test_the_redis_password_reaches_the_exporter_from_an_encrypted_credential_only():
    L = Layout()
    text = render.template("monitoring/redis-exporter.conf.j2", s=S, layout=L, private_address="10.9.0.10", credential="cache_pw")
    assert f"LoadCredentialEncrypted=cache_pw:{L.cred('cache_pw')}" in text
    cmd = _exec_start(text)
    # systemd turns $$ into $: the shell reads the credential; no password on the command line.
    assert '$$(cat "$${CREDENTIALS_DIRECTORY}/cache_pw")' in cmd and "-redis.password" not in cmd
    assert "-redis.addr=redis://127.0.0.1:6379" in cmd


def test_node_exporter_reports_gatekits_units_and_reads_its_textfiles():
    L = Layout()
    cmd = _exec_start(render.template("monitoring/node-exporter.conf.j2", s=S, layout=L, private_address="10.9.0.10",
                                      units_regex=mon.UNITS_REGEX))
    assert "--collector.systemd " in cmd and "--collector.systemd.enable-restarts-metrics" in cmd
    assert f"--collector.textfile.directory={L.textfile_dir}" in cmd
    regex = re.compile(mon.UNITS_REGEX)
    for unit in ("litellm@4001.service", "nginx.service", "redis-server.service", "postgresql@15-main.service",
                 "prometheus.service", "gatekit-rotate.service"):
        assert regex.fullmatch(unit), unit
    for unit in ("ssh.service", "litellm@.service", "cron.service"):
        assert not regex.fullmatch(unit), unit


def _nginx(metrics_allow):
    cert, key = Layout().tls_pair
    return render.template("nginx/gatekit.conf.j2", s=S, layout=Layout(), tls_cert=cert, tls_key=key,
                           private_address="10.9.0.11", metrics_allow=metrics_allow)


def test_the_gateways_metrics_listener_serves_only_instance_metrics_to_the_monitoring_hosts():
    text = _nginx(mon.metrics_allow(["10.9.0.30"], S["nginx_admin_allow"]))
    block = text[text.index("listen 10.9.0.11:9464;"):]
    block = block[: block.index("\n}\n")]
    assert re.findall(r"allow (\S+);", block) == ["10.9.0.30/32", "127.0.0.1/32", "::1/128"]
    assert "deny all;" in block and "return 404;" in block
    assert sorted(re.findall(r"location = (/metrics/\d+/)", block)) == [f"/metrics/{p}/" for p in (4001, 4002, 4003, 4004)]
    assert "proxy_pass http://litellm" not in block  # never the client API
    assert "ssl" not in block
    # The standby ports' refused scrapes go to their own log, not error.log.
    assert "error_log /var/log/nginx/gatekit-metrics.error.log;" in block
    assert text.count("error_log") == 1


def test_without_monitoring_hosts_there_is_no_metrics_listener():
    assert ":9464" not in _nginx([])


def test_the_monitoring_group_is_optional_and_checked_like_the_others():
    base = {"gateways": [("gw1", {"private_address": "10.0.0.1"})], "redis": [("d", {"private_address": "10.0.0.2"})],
            "postgres": [("d", {"private_address": "10.0.0.2"})]}
    assert check_hosts("inv.py", base) == []
    assert check_hosts("inv.py", {**base, "monitoring": [("m", {"private_address": "10.0.0.3"})]}) == []
    bad = check_hosts("inv.py", {**base, "monitoring": [("m", {"private_address": "127.0.0.1"})]})
    assert len(bad) == 1 and "inv.py: monitoring: m: private_address" in bad[0]
    typo = check_hosts("inv.py", {**base, "monitor": [("m", {"private_address": "10.0.0.3"})]})
    assert typo == ["inv.py: 'monitor': unknown group. Fix: use gateways, redis, postgres, monitoring."]


def test_alertmanagers_are_rendered_only_when_set():
    assert "alerting" not in config()
    cfg = config(s={**S, "monitoring_alertmanagers": ["am1.example.org:9093", "10.9.0.40:9093"]})
    assert cfg["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["am1.example.org:9093", "10.9.0.40:9093"]}]}]}


@pytest.mark.parametrize("value", [["am1"], ["am1:0"], ["am1:70000"], ["am1:9093\n  - evil:1"], ["a b:9093"], "am1:9093", [9093]])
def test_alertmanagers_that_are_not_host_port_are_refused_in_one_line(value):
    from gatekit.spec import check_settings

    (problem,) = check_settings({"monitoring_alertmanagers": value}, "prod.gateway.yaml")
    assert problem.startswith("prod.gateway.yaml: settings.monitoring_alertmanagers:") and "Fix:" in problem
    assert "\n" not in problem
