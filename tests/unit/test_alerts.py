"""gatekit's alert rules: valid for Prometheus (promtool check rules), each alert unit-tested with promtool
(tests/unit/promtool/alerts_test.yml), thresholds and budgets taken from the spec and the settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gatekit import alerts
from gatekit.defaults import DEFAULTS
from gatekit.spec import load_spec

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "inventories" / "example.gateway.yaml"
TESTS = HERE / "promtool" / "alerts_test.yml"


def promtool() -> str:
    # scripts/bootstrap puts Debian's promtool in the venv; a missing one fails the tests, never skips them.
    found = shutil.which("promtool") or str(Path(__import__("sys").executable).with_name("promtool"))
    assert Path(found).exists(), "promtool missing: run scripts/bootstrap"
    return found


@pytest.fixture(scope="module")
def spec():
    return load_spec(EXAMPLE, check_secrets=False)


def rendered(spec, tmp_path, **settings) -> Path:
    out = tmp_path / "alerts.yml"
    out.write_text(alerts.alert_rules(spec, {**DEFAULTS, **settings}))
    return out


def run(*args, cwd):
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rules_pass_promtool_check(spec, tmp_path):
    proc = run("check", "rules", str(rendered(spec, tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_fires_in_its_promtool_test(spec, tmp_path):
    rendered(spec, tmp_path)
    shutil.copy(TESTS, tmp_path / "alerts_test.yml")
    proc = run("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_case(spec):
    names = {r["alert"] for r in alerts.alerts(spec, DEFAULTS)}
    cases = [c for t in yaml.safe_load(TESTS.read_text())["tests"] for c in t["alert_rule_test"]]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    assert names <= {c["alertname"] for c in cases}, "alerts without a promtool test"
    # The per-provider budget alerts share one template: one firing provider proves it.
    assert {n for n in names if not n.startswith("BudgetBurn_")} <= firing
    assert any(n.startswith("BudgetBurn_") for n in firing)
    assert {"BudgetBurn_openai", "BudgetBurn_anthropic"} <= names


def test_a_broken_rule_fails_the_promtool_test(spec, tmp_path):
    """The promtool test can fail: a threshold raised above the test's 10% error ratio silences the alert."""
    rendered(spec, tmp_path, monitoring_error_ratio=0.5)
    shutil.copy(TESTS, tmp_path / "alerts_test.yml")
    proc = run("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode != 0 and "ProviderErrorRatio" in proc.stdout + proc.stderr


def test_thresholds_follow_the_settings(spec):
    rules = {r["alert"]: r for r in alerts.alerts(spec, {**DEFAULTS, "monitoring_error_ratio": 0.2,
                                                          "monitoring_429_ratio": 0.3, "monitoring_p99_seconds": 7.5,
                                                          "monitoring_cert_days": 3, "monitoring_budget_burn": 2})}
    assert rules["ProviderErrorRatio"]["expr"].endswith("> 0.2")
    assert rules["Provider429Ratio"]["expr"].endswith("> 0.3")
    assert rules["HighP99Latency"]["expr"].endswith("> 7.5")
    assert rules["TLSCertificateExpiry"]["expr"].endswith(f"< {3 * 86400}")
    # 2x a $200 daily budget
    assert rules["BudgetBurn_openai"]["expr"].endswith("* 86400 > 400")


def test_budget_alerts_follow_the_spec(spec):
    lean = spec.model_copy(update={"budgets": spec.budgets.model_copy(update={"providers": {}})})
    assert not [r for r in alerts.alerts(lean, DEFAULTS) if r["alert"].startswith("BudgetBurn_")]
    assert alerts.period_seconds("30d") == 30 * 86400 and alerts.period_seconds("12h") == 43200


def test_rules_group_by_provider_and_model_group_never_by_model_id(spec):
    """model_id changes with every rotation (deployment ids carry the key's fingerprint)."""
    for rule in alerts.alerts(spec, DEFAULTS):
        assert "model_id" not in rule["expr"], rule["alert"]
