"""The blue/green switch's controller side (roles/switch.py): the fleet's waves, which deployments a change touched,
what the helper may write; and the rollout settings' checks."""

from __future__ import annotations

import json

import pytest

from gatekit.defaults import DEFAULTS
from gatekit.inventory import check_hosts
from gatekit.onhost.layout import Layout
from gatekit.render import litellm_config
from gatekit.spec import check_settings
from roles.switch import batch_size, deployment_digests, fleet_waves, helper_sandbox, touched_deployments

from tests.unit.test_spec_hostile import FILE, INV, example, hosts_with, parse_spec, Path


@pytest.fixture
def spec():
    return parse_spec(example(), Path(FILE))  # inventories/example.gateway.yaml


GWS = ["gw-a", "gw-b", "gw-c", "gw-d", "gw-e", "gw-f", "gw-g"]


@pytest.mark.parametrize("first, batch, waves", [
    ("", "1", [["gw-a"], ["gw-b"], ["gw-c"], ["gw-d"], ["gw-e"], ["gw-f"], ["gw-g"]]),
    ("", "2", [["gw-a"], ["gw-b", "gw-c"], ["gw-d", "gw-e"], ["gw-f", "gw-g"]]),
    ("", "100%", [["gw-a"], ["gw-b", "gw-c", "gw-d", "gw-e", "gw-f", "gw-g"]]),
    ("gw-d", "50%", [["gw-d"], ["gw-a", "gw-b", "gw-c"], ["gw-e", "gw-f", "gw-g"]]),
    ("", "10%", [["gw-a"], ["gw-b"], ["gw-c"], ["gw-d"], ["gw-e"], ["gw-f"], ["gw-g"]]),  # at least one at a time
    ("", "9999", [["gw-a"], ["gw-b", "gw-c", "gw-d", "gw-e", "gw-f", "gw-g"]]),
])
def test_the_first_gateway_goes_alone_then_the_rest_in_inventory_order_in_batches(first, batch, waves):
    assert fleet_waves(GWS, first, batch) == waves


def test_one_gateway_is_one_wave():
    assert fleet_waves(["only"], "", "25%") == [["only"]]
    assert batch_size("25%", 0) == 1


def _config(spec, **settings):
    return litellm_config(spec, {**DEFAULTS, **spec.settings, **settings}, None, {"openai_key": "a" * 16})


def test_a_changed_or_added_deployment_is_touched_an_unchanged_one_is_not(spec):
    before = deployment_digests(_config(spec))
    record = json.dumps({"ports": [4001, 4002], "deployments": before})
    assert touched_deployments(before, record) == []
    cfg = _config(spec)
    cfg["model_list"][0]["litellm_params"]["api_base"] = "https://elsewhere.example/v1"
    changed_id = cfg["model_list"][0]["model_info"]["id"]
    assert touched_deployments(deployment_digests(cfg), record) == [changed_id]
    added = {**before, "new--0": "0" * 12}
    assert touched_deployments(added, record) == ["new--0"]


@pytest.mark.parametrize("record", ["", "{", '{"ports": [4001]}', '{"deployments": ["x"]}', "[]"])
def test_without_a_readable_record_every_deployment_is_touched(spec, record):
    digests = deployment_digests(_config(spec))
    assert touched_deployments(digests, record) == list(digests)


def test_every_model_and_alias_is_a_public_name(spec):
    names = spec.public_names()
    assert set(names) == {m.name for m in spec.models} | set(spec.aliases) and len(names) == len(set(names))


def test_the_helper_writes_the_directories_of_the_files_it_swaps_and_no_other():
    L = Layout.from_settings({**DEFAULTS, "litellm_home": "/srv/gk", "litellm_config_dir": "/srv/gk-etc"})
    base = dict(p.split("=", 1) for p in helper_sandbox(L, None) if "=" in p)["ReadWritePaths"].split()
    props = helper_sandbox(L, None, [L.config, L.unit_file, L.launcher])
    paths = dict(p.split("=", 1) for p in props if "=" in p)["ReadWritePaths"].split()
    assert paths == base + ["/etc/systemd/system", "/srv/gk/bin"]
    assert "/srv/gk-etc" in base and "/etc/systemd/system" not in base  # a rotation's helper writes no unit
    assert "/srv/gk" in base  # LiteLLM's home: the `venv` symlink follows the live launcher's build


@pytest.mark.parametrize("value", ["0", "-1", "101%", "0%", "1.5", "x", " 2", "", "2 gateways"])
def test_a_batch_that_is_not_a_count_or_a_share_is_refused(value):
    (problem,) = check_settings({"rollout_batch": value}, "spec.yaml")
    assert problem.startswith("spec.yaml: settings.rollout_batch: ") and "Fix:" in problem


def test_rollout_settings_are_refused_per_host_and_the_first_gateway_must_be_one():
    problems = check_hosts(INV, hosts_with(rollout_batch="2"))
    assert [p for p in problems if "settings.rollout_batch: a fleet-wide setting" in p and "Fix:" in p], problems
    problems = check_hosts(INV, hosts_with(), spec_settings={"rollout_first_gateway": "gw9"})
    assert [p for p in problems if "rollout_first_gateway 'gw9' is not one of them" in p], problems
    assert not [p for p in check_hosts(INV, hosts_with(), spec_settings={"rollout_first_gateway": "gw1"})
                if "rollout" in p]
