"""Unit tests for the blue/green instance sets and single-worker recycling checks of gatekit.spec.check_settings."""

from __future__ import annotations

import pytest

from gatekit.defaults import DEFAULTS
from gatekit.spec import check_settings

WHERE = "inv/x.yaml"


def test_defaults_are_accepted():
    assert check_settings({}, WHERE) == []
    assert DEFAULTS["litellm_ports"] == [4001, 4002, 4003, 4004]  # two instances live at once
    assert DEFAULTS["litellm_workers"] == 1


@pytest.mark.parametrize("ports", [[4001, 4002, 4003, 4004], [4004, 4003, 4002, 4001], [5001, 6001, 5002, 6002],
                                   [1024, 65535, 2000, 3000], list(range(5001, 5017))])
def test_even_counts_of_distinct_ports_are_accepted(ports):
    assert check_settings({"litellm_ports": ports}, WHERE) == []


@pytest.mark.parametrize("ports", [[4001, 4002], [5001, 6001]])
def test_a_pair_is_accepted_without_single_worker_recycling(ports):
    assert check_settings({"litellm_ports": ports, "litellm_workers": 2}, WHERE) == []
    assert check_settings({"litellm_ports": ports, "litellm_max_requests_before_restart": 0}, WHERE) == []


@pytest.mark.parametrize("ports", [[4001], [4001, 4002, 4003], [], [4001, 4002, 4003, 4004, 4005], list(range(5001, 5019))])
def test_not_two_equal_halves_refused(ports):
    problems = check_settings({"litellm_ports": ports, "litellm_workers": 2}, WHERE)
    assert len(problems) == 1, problems
    (p,) = problems
    assert p.startswith(f"{WHERE}: settings.litellm_ports: ")
    assert "two equal halves" in p
    assert f"{len(ports)} ports" in p
    assert "Fix:" in p


def test_duplicate_ports_refused_as_duplicates():
    problems = check_settings({"litellm_ports": [4001, 4001, 4002, 4003]}, WHERE)
    assert len(problems) == 1, problems
    assert "settings.litellm_ports" in problems[0] and "duplicate port" in problems[0]
    assert "Fix:" in problems[0]


def test_port_4000_refused():
    problems = check_settings({"litellm_ports": [4000, 4001, 4002, 4003]}, WHERE)
    assert len(problems) == 1, problems
    assert "settings.litellm_ports" in problems[0] and "4000" in problems[0] and "Fix:" in problems[0]


@pytest.mark.parametrize("ports", [[80, 4001, 4002, 4003], [4001, 70000, 4002, 4003], [4001, "4002", 4003, 4004], [4001, True, 4003, 4004]])
def test_ports_out_of_range_or_not_int_refused(ports):
    problems = check_settings({"litellm_ports": ports}, WHERE)
    assert len(problems) == 1, problems
    assert "settings.litellm_ports" in problems[0] and "Fix:" in problems[0]


def test_ports_not_a_list_refused():
    problems = check_settings({"litellm_ports": 4001}, WHERE)
    assert len(problems) == 1, problems
    assert "settings.litellm_ports" in problems[0] and "Fix:" in problems[0]


def test_default_one_worker_does_not_recycle():
    assert DEFAULTS["litellm_workers"] == 1 and DEFAULTS["litellm_max_requests_before_restart"] == 0
    assert check_settings({}, WHERE) == []


@pytest.mark.parametrize("ports", [[4001, 4002], [4001, 4002, 4003, 4004], list(range(4101, 4117))])
def test_one_worker_with_recycling_refused_whatever_the_set(ports):
    # Equally loaded single-worker instances reach the limit together: all of the set exits at once.
    problems = check_settings({"litellm_workers": 1, "litellm_max_requests_before_restart": 500,
                               "litellm_ports": ports}, WHERE)
    assert len(problems) == 1, problems
    (p,) = problems
    assert p.startswith(f"{WHERE}: settings.litellm_max_requests_before_restart: ") and "Fix:" in p
    assert "litellm_workers" in p


def test_one_worker_without_recycling_accepted():
    assert check_settings({"litellm_workers": 1, "litellm_max_requests_before_restart": 0}, WHERE) == []


@pytest.mark.parametrize("workers", [2, 4])
def test_several_workers_with_recycling_accepted(workers):
    assert check_settings({"litellm_workers": workers, "litellm_max_requests_before_restart": 10000}, WHERE) == []


def test_both_problems_reported_together():
    problems = check_settings({"litellm_ports": [4000, 4001], "litellm_workers": 1,
                               "litellm_max_requests_before_restart": 500}, WHERE)
    assert len(problems) == 2, problems
    assert any("4000 is LiteLLM's default port" in p for p in problems)
    assert any(p.startswith(f"{WHERE}: settings.litellm_max_requests_before_restart: ") for p in problems)
