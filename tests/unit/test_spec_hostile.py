"""Hostile and mistyped input to the spec and the inventory: each problem is one line naming the file, the
field and the fix, all problems are reported together, and no exception other than SpecError escapes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from gatekit.defaults import DEFAULTS
from gatekit.inventory import check_hosts
from gatekit.spec import SpecError, check_settings, memory_max_problem, parse_spec, pricier_without_consent, url_problem

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example.gateway.yaml"
FILE = "inv/x.gateway.yaml"
INV = "inv.py"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def spec_problems(data: dict) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_spec(data, Path(FILE))
    assert exc.value.problems
    return exc.value.problems


def one_line_each(problems: list[str], prefix: str) -> None:
    """The contract of every problem line: where, field, fix; one printable line of bounded length."""
    for p in problems:
        assert p.isprintable(), repr(p)  # no line break, control character or invisible (RTL) character
        assert len(p.splitlines()) == 1, repr(p)
        assert p.startswith(prefix), p
        assert "Fix:" in p, p
        assert len(p) < 700, p


def hosts_with(**data) -> dict:
    return {"gateways": [("gw1", {"private_address": "10.0.0.11", **data})],
            "redis": [("d1", {"private_address": "10.0.0.10"})], "postgres": [("d1", {"private_address": "10.0.0.10"})]}


# --- bool is no number (bug 1) -------------------------------------------------------------------------------

NUMBER_SETTINGS = sorted(k for k, v in DEFAULTS.items() if type(v) in (int, float))


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("key", NUMBER_SETTINGS)
def test_a_bool_is_refused_where_a_number_is_expected(key, value):
    problems = check_settings({key: value}, "s.yaml")
    kind = "float" if isinstance(DEFAULTS[key], float) else "int"
    assert problems == [f"s.yaml: settings.{key}: expected {kind}, got {value}. "
                        f"Fix: use a {kind} like the default {DEFAULTS[key]!r}."]


def test_an_int_is_a_float():
    assert check_settings({"monitoring_error_ratio": 1, "monitoring_p99_seconds": 30}, "s.yaml") == []


# --- every problem at once (bug 2) ----------------------------------------------------------------------------


def test_a_size_error_does_not_hide_the_other_problems():
    problems = check_settings({"litellm_memory_max": "lots", "nginx_server_name": "a;b",
                               "litellm_max_requests_before_restart": 500}, "s.yaml")
    one_line_each(problems, "s.yaml: settings.")
    assert sorted(p.split(": ")[1] for p in problems) == [
        "settings.litellm_max_requests_before_restart", "settings.litellm_memory_max", "settings.nginx_server_name"]


def test_both_sizes_are_named_when_both_are_wrong():
    problems = check_settings({"litellm_memory_high": "1,5G", "litellm_memory_max": "2 G"}, "s.yaml")
    assert [p.split(": ")[1] for p in problems] == ["settings.litellm_memory_high", "settings.litellm_memory_max"]
    one_line_each(problems, "s.yaml: settings.")


def test_a_type_error_does_not_hide_the_other_problems():
    problems = check_settings({"litellm_workers": "4", "nginx_server_name": "a;b", "redis_port": 0}, "s.yaml")
    assert sorted(p.split(": ")[1] for p in problems) == [
        "settings.litellm_workers", "settings.nginx_server_name", "settings.redis_port"]


def test_a_mistyped_value_is_not_blamed_for_its_default():
    # litellm_workers "2" is mistyped: the recycling check must not then complain about 1 worker (the default).
    problems = check_settings({"litellm_workers": "2", "litellm_max_requests_before_restart": 500}, "s.yaml")
    assert [p.split(": ")[1] for p in problems] == ["settings.litellm_workers"]


@pytest.mark.parametrize("text", ["١٢٨٠M", "1280\u0661M", "99999999999999999999T", "0x10M"])
def test_parse_size_reads_ascii_digits_that_systemd_reads_only(text):
    problems = check_settings({"litellm_memory_high": text}, "s.yaml")
    assert [p.split(": ")[1] for p in problems] == ["settings.litellm_memory_high"]
    one_line_each(problems, "s.yaml: settings.litellm_memory_high: not a size")


# --- port clashes name the fields that clash (bug 3) --------------------------------------------------------

PORT_FIELD = re.compile(r"\b[a-z]+(?:_[a-z0-9]+)*_ports?\b")


@pytest.mark.parametrize("settings, reported, other", [
    ({"nginx_http_port": 9464}, "nginx_http_port", "nginx_metrics_port"),
    ({"nginx_metrics_port": 443}, "nginx_metrics_port", "nginx_https_port"),
    ({"nginx_metrics_port": 80}, "nginx_metrics_port", "nginx_http_port"),
    ({"nginx_https_port": 8443, "nginx_http_port": 8443}, "nginx_http_port", "nginx_https_port"),
    ({"nginx_metrics_port": 4003}, "nginx_metrics_port", "litellm_ports"),
    ({"litellm_ports": [4001, 4002, 9464, 4004]}, "litellm_ports", "nginx_metrics_port"),
    ({"redis_port": 80}, "redis_port", "nginx_http_port"),
    ({"monitoring_blackbox_port": 9100}, "monitoring_blackbox_port", "monitoring_node_exporter_port"),
    ({"postgres_port": 6379}, "postgres_port", "redis_port"),
])
def test_a_port_clash_names_the_two_fields_that_clash(settings, reported, other):
    (p,) = check_settings(settings, "s.yaml")
    assert p.startswith(f"s.yaml: settings.{reported}: "), p
    assert set(PORT_FIELD.findall(p)) == {reported, other}, p
    one_line_each([p], "s.yaml: settings.")


# --- URLs that urllib cannot split (bug 4) ------------------------------------------------------------------

HOSTILE_URLS = ["http://[::1", "http://[::1]x/", "http://[fe80::1%25eth0/", "http://[not-ip]/", "http://exa mple.com",
                "http://host:99999", "http://host:port", "http://host:", "http://host:0", "https://", "ftp://x",
                "http://x/\n", "http://x\r\nHost: y", "http://x/\x00", "http://\u202eexample.com", "http://ex\u200bample.com",
                "http://exa\uff0fmple.com", "https://x/\u202epath", "http://a\\b/", "http://a;b/", "http://a$b/", "http://" + "a" * 3000,
                "https://x/" + "p" * 3000]
URL_SETTINGS = ["litellm_pip_index_url", "litellm_pip_find_links", "litellm_prisma_engines_mirror"]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_url_problem_never_raises(url):
    assert url_problem(url)


@pytest.mark.parametrize("url", HOSTILE_URLS)
@pytest.mark.parametrize("key", URL_SETTINGS)
def test_a_hostile_url_setting_is_one_line(key, url):
    (p,) = check_settings({key: url}, "s.yaml")
    one_line_each([p], f"s.yaml: settings.{key}: ")


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_a_hostile_api_base_is_one_line(url):
    data = example()
    data["models"][0]["deployments"][0]["api_base"] = url
    problems = spec_problems(data)
    one_line_each(problems, f"{FILE}: models[0].deployments[0].api_base: ")


@pytest.mark.parametrize("url", ["https://api.openai.com/v1", "http://10.0.0.5:8080", "https://[fd00::5]:8443/v1",
                                 "https://my_host.internal/v1/", "http://xn--bcher-kva.example/"])
def test_plain_urls_are_accepted(url):
    assert url_problem(url) == ""
    assert check_settings({"litellm_pip_index_url": url, "litellm_prisma_engines_mirror": url}, "s.yaml") == []


def test_a_percent_sign_in_the_prisma_mirror_is_refused():
    # It is written into a systemd unit (Environment=), where % starts a specifier.
    (p,) = check_settings({"litellm_prisma_engines_mirror": "https://m.example/%2Fprisma"}, "s.yaml")
    assert p.startswith("s.yaml: settings.litellm_prisma_engines_mirror: ") and "'%'" in p
    assert check_settings({"litellm_pip_index_url": "https://m.example/%2Fsimple"}, "s.yaml") == []


# --- names: aliases and the other free-text names (bug 5) ---------------------------------------------------


@pytest.mark.parametrize("alias", ["fast\x00", "a\nb", "gpt\u202e4o", "zero\u200bwidth", " fast", "", "-x", "a b",
                                   "a;b", "{a}", "x" * 200, "gpt-4o\n"])
def test_an_alias_must_follow_the_model_name_rule(alias):
    data = example()
    data["aliases"] = {alias: "fast"}
    problems = spec_problems(data)
    one_line_each(problems, f"{FILE}: ")
    assert [p for p in problems if p.startswith(f"{FILE}: aliases: ")] == problems, problems


@pytest.mark.parametrize("model", ["gpt-4o\u202e", "gpt\u200b-4o", "gpt-4o\u2028", "a\x7fb", "x" * 600])
def test_a_deployment_model_must_be_printable(model):
    data = example()
    data["models"][0]["deployments"][0]["model"] = model
    problems = spec_problems(data)
    one_line_each(problems, f"{FILE}: models[0].deployments[0].model: ")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["budgets"]["providers"].update({"openai\nX": {"max_usd": 5, "duration": "1d"}}), "budgets.providers."),
    (lambda d: d["budgets"]["providers"].update({"a" * 500: {"max_usd": 5, "duration": "1d"}}), "budgets.providers."),
    (lambda d: d["budgets"]["providers"].update({"x\u202e": {"max_usd": 0, "duration": "1d"}}), "budgets.providers."),
    (lambda d: d.update({"extra\nfield": 1}), "'extra\\nfield'"),
    (lambda d: d.update({"vault": "secrets\n.enc.yaml"}), "vault"),
    (lambda d: d.update({"client_keys": "keys\u202e.yaml"}), "client_keys"),
    (lambda d: d["fallbacks"].append({"from": "x" * 5000, "to": ["fast"]}), "fallbacks[2].from"),
    (lambda d: d["fallbacks"].append({"from": "smart", "to": ["fa\nst"]}), "fallbacks[2].to[0]"),
    (lambda d: d["settings"].update({"litellm_wrkers\n": 2}), "settings.'litellm_wrkers\\n'"),
    (lambda d: d["settings"].update({"x" * 500: 2}), "settings."),
    (lambda d: d["models"][0].update({"name": "fast\u202e"}), "models[0].name"),
])
def test_other_free_text_names_stay_on_one_line(mutate, field):
    data = example()
    mutate(data)
    problems = spec_problems(data)
    one_line_each(problems, f"{FILE}: ")
    assert any(p.startswith(f"{FILE}: {field}") for p in problems), problems


def test_a_mistyped_secret_setting_is_reported_not_raised_while_secrets_are_checked():
    data = example()
    data["settings"] = {"litellm_master_key_secret": ["a"], "litellm_database": "yes"}
    with pytest.raises(SpecError) as exc:
        parse_spec(data, Path(FILE), secret_names={"openai_key", "anthropic_key", "redis_password"})
    assert sorted(p.split(": ")[1] for p in exc.value.problems) == [
        "settings.litellm_database", "settings.litellm_master_key_secret"]


# --- inventory host data of the wrong type (bug 6) ----------------------------------------------------------

WRONG = [123, -1, 1.5, math.nan, True, False, "4001", "", "a\nb", "x" * 5000, [], ["10.0.0.1"], [1, 2], {}, {"a": 1},
         b"10.0.0.1", ("10.0.0.1",)]


def _type_ok(expected: object, value: object) -> bool:
    if isinstance(value, bool):
        return isinstance(expected, bool)
    if isinstance(expected, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(expected))


@pytest.mark.parametrize("value", WRONG, ids=[repr(v)[:20] for v in WRONG])
@pytest.mark.parametrize("key", ["private_address", "memory_mb", "litellm_ports", "litellm_workers", "litellm_memory_max",
                                 "nginx_admin_allow", "litellm_extra_env", "litellm_database", "monitoring_error_ratio"])
def test_a_mistyped_host_value_is_a_one_line_problem(key, value):
    problems = check_hosts(INV, hosts_with(**{key: value}))
    one_line_each(problems, f"{INV}: gateways: gw1: ")
    expected = {"private_address": "10.0.0.11", "memory_mb": 4096}.get(key, DEFAULTS.get(key))
    if not _type_ok(expected, value):
        assert problems and all(key in p for p in problems), problems


@pytest.mark.parametrize("hosts, needle", [
    ({"gateways": "gw1"}, "gateways: expected a list of hosts"),
    ({"gateways": None}, "gateways: expected a list of hosts"),
    ({"gateways": [("gw1",)]}, "gateways[0]: ('gw1',) is not a host"),
    ({"gateways": [("gw1", {}, 3)]}, "gateways[0]: "),
    ({"gateways": [None]}, "gateways[0]: None is not a host"),
    ({"gateways": [("gw1", "10.0.0.11")]}, "gateways: gw1: host data '10.0.0.11' is not a mapping"),
    ({"gateways": [("gw1", None)]}, "gateways: gw1: host data None is not a mapping"),
    ({"gateways": [(1, {"private_address": "10.0.0.11"})]}, "gateways[0]: host name 1 is not a host name"),
    ({"gateways": [("gw 1", {"private_address": "10.0.0.11"})]}, "gateways[0]: host name 'gw 1'"),
    ({"gateways": [("gw1\n", {"private_address": "10.0.0.11"})]}, "gateways[0]: host name 'gw1\\n'"),
    ({"gateways": [("gw1", {"private_address": "10.0.0.11", 7: "x"})]}, "gateways: gw1: data key 7 is not a name"),
    ({"gateways": [("gw1", {"private_address": "10.0.0.11", "monitoring_scrape_intervall": 5})]},
     "gateways: gw1: monitoring_scrape_intervall: unknown setting"),
    ({"gateways": ["gw1"]}, "gateways: gw1: private_address missing"),
    ({7: []}, "7: unknown group"),
])
def test_a_malformed_host_entry_is_a_one_line_problem(hosts, needle):
    base = hosts_with()
    problems = check_hosts(INV, {**base, **hosts})
    one_line_each(problems, f"{INV}: ")
    assert any(needle in p for p in problems), problems


def test_hosts_that_are_not_a_mapping_are_one_line():
    (p,) = check_hosts(INV, [("gw1", {})])
    one_line_each([p], f"{INV}: hosts: ")


@pytest.mark.parametrize("data, needle", [
    ({"litellm_workers": "4"}, "data: settings.litellm_workers: expected int"),
    ({"litellm_wrkers": 4}, "data: litellm_wrkers: unknown setting"),
    ({1: 2}, "data: data key 1 is not a name"),
    ({"memory_mb": "4096"}, "gateways: gw1: memory_mb '4096'"),
    ({"private_address": 7}, "postgres: d1: private_address 7"),
])
def test_group_data_is_checked_like_host_data(data, needle):
    hosts = {**hosts_with(), "redis": [("d1", {})], "postgres": [("d1", {})]}  # d1 takes the group's private_address
    problems = check_hosts(INV, hosts, data)
    one_line_each(problems, f"{INV}: ")
    assert any(needle in p for p in problems), problems


def test_group_data_is_not_a_mapping():
    (p,) = check_hosts(INV, hosts_with(), ["ssh_user=root"])
    one_line_each([p], f"{INV}: data: ")


def test_host_settings_are_checked_over_the_spec_settings():
    spec_settings = {"litellm_memory_high": "3G", "litellm_memory_max": "4G"}
    # alone over the defaults (1536M max) a 2G MemoryHigh is refused; over the spec's 4G it is right
    assert check_hosts(INV, hosts_with(litellm_memory_high="2G")) != []
    assert check_hosts(INV, hosts_with(litellm_memory_high="2G"), spec_settings=spec_settings) == []
    # and a host that moves its max below the spec's high is refused
    (p,) = check_hosts(INV, hosts_with(litellm_memory_max="2G"), spec_settings=spec_settings)
    assert p.startswith(f"{INV}: gateways: gw1: settings.litellm_memory_high: MemoryHigh (3G) must be below MemoryMax (2G)")
    # group data sits between the two
    assert check_hosts(INV, hosts_with(), {"litellm_memory_high": "1G", "litellm_memory_max": "2G"}, spec_settings) == []


def test_none_in_host_data_is_unset_as_at_deploy():
    assert check_hosts(INV, hosts_with(litellm_workers=None, memory_mb=None)) == []


# --- functions the roles and the doctor share (item 8) ------------------------------------------------------


def test_memory_max_problem():
    p = memory_max_problem("host gw1", "2G", 1024)
    assert p == ("host gw1: settings.litellm_memory_max: MemoryMax (2G) is above the host's memory (1024 MB), so it "
                 "never protects the host. Fix: set litellm_memory_max below the host's memory.")
    assert memory_max_problem("w", "1024M", 1024) is None  # exactly the host's memory fits
    assert memory_max_problem("w", "1025M", 1024) is not None
    assert memory_max_problem("w", "1048577K", 1024) is not None
    for unknown in (None, 0, True, "1024"):
        assert memory_max_problem("w", "2G", unknown) is None, unknown
    assert memory_max_problem("w", "lots", 1024) is None  # not a size: check_settings reports it


def test_pricier_without_consent():
    data = example()
    data["fallbacks"] = [{"from": "fast", "to": [{"model": "claude", "allow_pricier": True}]},
                         {"from": "smart", "to": ["fast"]}]
    data["models"].append({"name": "fast-twin", "price": {"input_per_1m": 0.15, "output_per_1m": 0.60},
                           "deployments": data["models"][0]["deployments"]})
    data["models"].append({"name": "dear-in", "price": {"input_per_1m": 0.16, "output_per_1m": 0.60},
                           "deployments": data["models"][0]["deployments"]})
    spec = parse_spec(data, Path(FILE))
    assert pricier_without_consent(spec, "fast", "claude") is False  # dearer, with consent
    assert pricier_without_consent(spec, "fast", "smart") is True  # dearer, no consent for this pair
    assert pricier_without_consent(spec, "smart", "claude") is True
    assert pricier_without_consent(spec, "fast", "dear-in") is True  # dearer input alone
    assert pricier_without_consent(spec, "smart", "fast") is False  # cheaper
    assert pricier_without_consent(spec, "fast", "fast-twin") is False  # the same price
    assert pricier_without_consent(spec, "nope", "claude") is False and pricier_without_consent(spec, "fast", "nope") is False


# --- the sweep: every setting, every wrong type, hostile strings --------------------------------------------

SWEEP = [0, -1, 10**20, 1.5, math.nan, math.inf, True, False, None, "", "x", "a\nb", "a\x00b", "a;b", "{", "x" * 10000,
         "\u202eabc", "a\r\nb", "\u2028", [], [1], ["x"], [None], {}, {"a": 1}, {1: 2}]


@pytest.fixture(scope="module")
def example_spec():
    return parse_spec(example(), Path(FILE))


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_sweep_every_setting_refused_in_one_line_or_right_type(key, example_spec):
    from gatekit.alerts import alert_rules
    from tests.unit.test_hostile_settings import render_all

    for value in SWEEP:
        for where, check in (("s.yaml", lambda: check_settings({key: value}, "s.yaml")),
                             (f"{INV}: gateways: gw1", lambda: check_hosts(INV, hosts_with(**{key: value})))):
            problems = check()  # SpecError-style problems or nothing; any exception fails the test
            one_line_each(problems, f"{where}: ")
            if value is None and where != "s.yaml":
                continue  # None in host data = not set
            if problems:
                assert any(f"settings.{key}" in p for p in problems), (key, value, problems)
                continue
            # accepted: of the setting's type, one printable line, and every file still renders
            assert _type_ok(DEFAULTS[key], value), (key, value)
            assert not isinstance(value, str) or (value.isprintable() and len(value.splitlines()) <= 1), (key, value)
            render_all({**DEFAULTS, key: value})
            rules = alert_rules(example_spec, {**DEFAULTS, key: value})
            assert not re.search(r"\b(True|False|None|nan|inf)\b", rules), (key, value)  # a threshold is a number
