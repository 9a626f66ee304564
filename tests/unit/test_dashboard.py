"""The Grafana dashboard (templates/monitoring/grafana-dashboard.json), checked without Grafana: the shape of
Grafana's dashboard schema version it targets, PromQL that Prometheus parses, and a panel for each thing
issue 11 asks to see. tests/e2e/test_monitoring.py runs every query against the deployed Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from gatekit.resources import templates_dir
from tests.unit.test_alerts import promtool

DASHBOARD = templates_dir() / "monitoring" / "grafana-dashboard.json"
SCHEMA_VERSION = 39  # Grafana 10.3 - 11.x
PANEL_TYPES = {"timeseries", "stat", "gauge", "table", "bargauge", "row", "text"}


@pytest.fixture(scope="module")
def dash() -> dict:
    return json.loads(DASHBOARD.read_text())


def exprs(dash):
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


def test_top_level_shape_of_the_schema_version(dash):
    assert dash["schemaVersion"] == SCHEMA_VERSION
    assert isinstance(dash["title"], str) and dash["title"]
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dash["uid"])  # Grafana's uid limit
    assert isinstance(dash["panels"], list) and isinstance(dash["templating"]["list"], list)
    assert dash["time"].keys() == {"from", "to"}
    assert "id" not in dash or dash["id"] is None  # an id would pin the dashboard to one Grafana database


def test_panels_have_unique_ids_known_types_and_a_non_overlapping_grid(dash):
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    cells = set()
    for p in dash["panels"]:
        assert p["type"] in PANEL_TYPES, p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) and g[k] >= 0 for k in ("h", "w", "x", "y")), p["title"]
        assert g["w"] >= 1 and g["h"] >= 1 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


def test_every_target_uses_the_datasource_variable_and_unique_ref_ids(dash):
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip()
            for used in re.findall(r"\$(\w+)", t["expr"]):
                assert used.startswith("__") or used in variables, f"{p['title']}: ${used} is not a variable"


def test_every_query_parses_as_promql(dash, tmp_path):
    """promtool parses each query (Grafana's variables replaced as Grafana would) as a recording rule."""
    rules = [{"record": f"panel:q{i}", "expr": e.replace("$__rate_interval", "1m").replace("$host", ".*")}
             for i, (_, e) in enumerate(exprs(dash))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("what, metric", [
    ("request rate by provider/model", "litellm_deployment_total_requests_total"),
    ("error ratio", "litellm_deployment_failure_responses_total"),
    ("total latency quantiles", "litellm_request_total_latency_metric_bucket"),
    ("time to first token", "litellm_llm_api_time_to_first_token_metric_bucket"),
    ("tokens", "litellm_output_tokens_metric_total"),
    ("spend", "litellm_spend_metric_total"),
    ("cooldowns", "litellm_deployment_cooled_down_total"),
    ("fallbacks", "litellm_deployment_successful_fallbacks_total"),
    ("memory against MemoryMax", "gatekit_unit_memory_max_bytes"),
    ("restarts", "node_systemd_service_restart_total"),
])
def test_a_panel_shows(dash, what, metric):
    assert any(metric in e for _, e in exprs(dash)), what


def test_latency_panels_show_p50_p95_p99_grouped_by_model_group_not_model_id(dash):
    text = " ".join(e for _, e in exprs(dash))
    for q in ("0.50", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, model_group)" in text
    assert "model_id" not in text  # changes with every rotation


def test_every_recording_rule_the_dashboard_reads_is_one_gatekit_records(dash):
    """The dashboard is a static file: a recording rule it names (gatekit:...) must be one alerts.py records, so
    renaming the rule in its one definition (gatekit/onhost/probe.py) cannot leave a blank panel behind."""
    from gatekit.alerts import RECORDING

    used = {name for _, e in exprs(dash) for name in re.findall(r"gatekit:[A-Za-z_:]+", e)}
    assert used and used <= {r["record"] for r in RECORDING}, used
