"""Unit tests for gatekit/spec.py (and the host checks in gatekit/inventory.py): fast, no hosts, no network."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gatekit.defaults import DEFAULTS
from gatekit.inventory import check_hosts, settings_for
from gatekit.spec import SpecError, check_settings, load_spec, parse_size, parse_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example.gateway.yaml"
SPEC_PATH = Path("inv/test.gateway.yaml")
FILE = "inv/test.gateway.yaml"

# Every secret the base spec needs (deployments + master key + redis password).
SECRETS = frozenset({"openai_key", "anthropic_key", "litellm_master_key", "redis_password"})


def _dep(provider: str, model: str, api_base: str, secret: str, **extra) -> dict:
    return {"provider": provider, "model": model, "api_base": api_base, "secret": secret, **extra}


BASE: dict = {
    "version": 1,
    "vault": "test.secrets.enc.yaml",
    "models": [
        {
            "name": "fast",
            "price": {"input_per_1m": 0.15, "output_per_1m": 0.60},
            "deployments": [_dep("openai", "gpt-4o-mini", "https://api.openai.com/v1", "openai_key", weight=1)],
        },
        {
            "name": "smart",
            "price": {"input_per_1m": 2.50, "output_per_1m": 10.00},
            "deployments": [_dep("openai", "gpt-4o", "https://api.openai.com/v1", "openai_key", weight=1)],
        },
        {
            "name": "claude",
            "price": {"input_per_1m": 3.00, "output_per_1m": 15.00},
            "deployments": [_dep("anthropic", "claude-sonnet-4-5", "https://api.anthropic.com", "anthropic_key")],
        },
    ],
    "fallbacks": [{"from": "smart", "to": ["fast"]}, {"from": "claude", "to": ["smart", "fast"]}],
    "aliases": {"gpt-4o": "smart"},
    "retry": {"num_retries": 2, "timeout_errors": 2, "server_errors": 2},
    "budgets": {"providers": {"openai": {"max_usd": 200, "duration": "1d"}}},
    "settings": {"litellm_ports": [4001, 4002, 4003, 4004], "litellm_memory_high": "1280M", "litellm_memory_max": "1536M"},
}


def base() -> dict:
    return copy.deepcopy(BASE)


def problems_of(data: object, secret_names: set[str] | frozenset[str] | None = SECRETS) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, SPEC_PATH, secret_names=set(secret_names) if secret_names is not None else None)
    exc = info.value
    assert exc.problems, "SpecError without problems"
    assert str(exc) == "\n".join(exc.problems)
    return exc.problems


def matching(problems: list[str], *needles: str) -> list[str]:
    return [p for p in problems if all(n in p for n in needles)]


# --- the valid inputs ------------------------------------------------------------------------------------------


def test_example_spec_parses():
    spec = load_spec(EXAMPLE, check_secrets=False)
    assert [m.name for m in spec.models] == ["fast", "smart", "claude"]
    assert spec.path == EXAMPLE
    assert spec.vault_path == (EXAMPLE.parent / "example.secrets.enc.yaml").resolve()
    assert spec.secrets_used() == {"openai_key", "anthropic_key"}
    assert spec.aliases == {"gpt-4o": "smart"}
    assert [(fb.from_, [t.model for t in fb.targets()]) for fb in spec.fallbacks] == [
        ("smart", ["fast"]),
        ("claude", ["smart"]),
    ]
    assert spec.retry.auth_errors == spec.retry.bad_request_errors == spec.retry.rate_limit_errors == 0
    assert set(spec.budgets.providers) == {"openai", "anthropic"}


def test_base_spec_is_valid():
    # Every case in the table below must fail because of its mutation alone.
    spec = parse_spec(base(), SPEC_PATH, secret_names=set(SECRETS))
    assert spec.path == SPEC_PATH
    assert spec.secrets_used() == {"openai_key", "anthropic_key"}


def test_rich_spec_parses_and_reports_its_secrets():
    data = {
        "version": 1,
        "vault": "secrets.enc.yaml",
        "models": [
            {
                "name": "big",
                "price": {"input_per_1m": 5, "output_per_1m": 20},
                "deployments": [
                    _dep("openai", "gpt-4o", "https://api.openai.com/v1", "openai_key", weight=3, rpm=100),
                    _dep("azure", "gpt-4o-eu", "https://eu.example.azure.com", "azure_eu_key", weight=1, tpm=90000,
                         api_version="2024-10-21"),
                    _dep("azure", "gpt-4o-us", "http://us.example.azure.com:8443/v1", "azure_us_key", weight=0.5,
                         api_version="2025-04-01-preview"),
                ],
            },
            {
                "name": "mid",
                "price": {"input_per_1m": 1, "output_per_1m": 4},
                "deployments": [
                    _dep("anthropic", "claude-haiku", "https://api.anthropic.com", "anthropic_key"),
                    _dep("anthropic", "claude-haiku", "https://backup.anthropic.example", "anthropic_backup_key"),
                ],
            },
            {
                "name": "tiny",
                "price": {"input_per_1m": 0.1, "output_per_1m": 0.4},
                "deployments": [_dep("openai", "gpt-4o-mini", "https://api.openai.com/v1", "openai_key")],
            },
            {
                # same prices as tiny: equal is not pricier
                "name": "tiny-twin",
                "price": {"input_per_1m": 0.1, "output_per_1m": 0.4},
                "deployments": [_dep("openai", "gpt-4.1-nano", "https://api.openai.com/v1", "openai_key")],
            },
        ],
        "fallbacks": [
            {"from": "big", "to": ["mid", {"model": "tiny"}]},
            {"from": "mid", "to": ["tiny"]},
            {"from": "tiny", "to": ["tiny-twin"]},
        ],
        "aliases": {"gpt-4o": "big", "cheap": "tiny"},
        "budgets": {
            "providers": {
                "openai": {"max_usd": 100, "duration": "1d"},
                "azure": {"max_usd": 50.5, "duration": "12h"},
                "anthropic": {"max_usd": 10, "duration": "30d"},
            }
        },
        "settings": {"litellm_ports": [4001, 4002, 4003, 4004], "litellm_database": True},
    }
    names = {"openai_key", "azure_eu_key", "azure_us_key", "anthropic_key", "anthropic_backup_key",
             "litellm_master_key", "redis_password", "postgres_password"}
    spec = parse_spec(data, SPEC_PATH, secret_names=names)
    assert spec.secrets_used() == {"openai_key", "azure_eu_key", "azure_us_key", "anthropic_key", "anthropic_backup_key"}
    assert [len(m.deployments) for m in spec.models] == [3, 2, 1, 1]
    assert spec.model("big").deployments[2].weight == 0.5
    assert spec.model("nope") is None
    assert [t.model for t in spec.fallbacks[0].targets()] == ["mid", "tiny"]
    assert not any(t.allow_pricier for fb in spec.fallbacks for t in fb.targets())
    assert spec.budgets.providers["azure"].max_usd == 50.5
    assert spec.vault_path == (SPEC_PATH.parent / "secrets.enc.yaml").resolve()


def test_pricier_fallback_is_accepted_when_marked():
    data = base()
    data["fallbacks"] = [{"from": "fast", "to": [{"model": "smart", "allow_pricier": True}, "fast-twin"]}]
    data["models"].append(
        {
            "name": "fast-twin",
            "price": {"input_per_1m": 0.15, "output_per_1m": 0.60},
            "deployments": [_dep("openai", "gpt-4.1-mini", "https://api.openai.com/v1", "openai_key")],
        }
    )
    spec = parse_spec(data, SPEC_PATH, secret_names=set(SECRETS))
    targets = spec.fallbacks[0].targets()
    assert [(t.model, t.allow_pricier) for t in targets] == [("smart", True), ("fast-twin", False)]
    # ...and the same fallback without the mark is refused.
    data["fallbacks"] = [{"from": "fast", "to": [{"model": "smart"}]}]
    probs = problems_of(data)
    assert matching(probs, FILE, "fallbacks[0].to[0]", "more expensive", "allow_pricier: true", "Fix:")


def test_secrets_are_not_checked_without_names():
    data = base()
    data["models"][0]["deployments"][0]["secret"] = "not_in_any_vault"
    spec = parse_spec(data, SPEC_PATH, secret_names=None)
    assert "not_in_any_vault" in spec.secrets_used()


# --- malformed inputs -------------------------------------------------------------------------------------------


def _set(*path_and_value):
    """A mutation setting data[path...] = value."""
    *path, key, value = path_and_value

    def mutate(d):
        for p in path:
            d = d[p]
        d[key] = value

    return mutate


def _del(*path):
    def mutate(d):
        for p in path[:-1]:
            d = d[p]
        del d[path[-1]]

    return mutate


def _settings(**kv):
    def mutate(d):
        d["settings"].update(kv)

    return mutate


def _add_model(name: str, provider: str = "openai", secret: str = "openai_key", price=(0.15, 0.6)):
    def mutate(d):
        d["models"].append(
            {
                "name": name,
                "price": {"input_per_1m": price[0], "output_per_1m": price[1]},
                "deployments": [_dep(provider, "some-model", "https://api.example.com/v1", secret)],
            }
        )

    return mutate


def _both(*mutations):
    def mutate(d):
        for m in mutations:
            m(d)

    return mutate


ALL_BUT = lambda name: SECRETS - {name}  # noqa: E731

# (id, mutation, expected substrings of one problem line, secret names available)
CASES = [
    # names used in fallbacks/aliases must be models; close names get a hint
    ("fallback-from-unknown-close", _set("fallbacks", 0, "from", "smrt"),
     ["fallbacks[0].from", "'smrt' is not a model", "did you mean 'smart'?"], SECRETS),
    ("fallback-from-unknown-far", _set("fallbacks", 0, "from", "zzzzzz"),
     ["fallbacks[0].from", "'zzzzzz' is not a model", "use one of ['claude', 'fast', 'smart']"], SECRETS),
    ("fallback-to-unknown-close", _set("fallbacks", 1, "to", 1, "fasst"),
     ["fallbacks[1].to[1]", "'fasst' is not a model", "did you mean 'fast'?"], SECRETS),
    ("fallback-to-unknown-object", _set("fallbacks", 0, "to", 0, {"model": "fst"}),
     ["fallbacks[0].to[0]", "'fst' is not a model", "did you mean 'fast'?"], SECRETS),
    ("alias-target-unknown", _set("aliases", "gpt-4o", "smort"),
     ["aliases.gpt-4o", "'smort' is not a model", "did you mean 'smart'?"], SECRETS),
    ("alias-shadows-model", _set("aliases", "fast", "smart"),
     ["aliases.fast", "shadows the model", "rename the alias"], SECRETS),
    # deployments
    ("weight-zero", _set("models", 1, "deployments", 0, "weight", 0),
     ["models[1].deployments[0].weight", "weight 0", "'smart'", "never routes"], SECRETS),
    ("weight-negative", _set("models", 1, "deployments", 0, "weight", -2),
     ["models[1].deployments[0].weight", "weight -2", "set a weight > 0"], SECRETS),
    ("deployments-empty", _set("models", 2, "deployments", []),
     ["models[2].deployments", "'claude' has no deployments", "add at least one deployment"], SECRETS),
    ("duplicate-model-name", _add_model("smart", price=(0.1, 0.1)),
     ["models:", "'smart' is listed twice"], SECRETS),
    ("bad-api-base", _set("models", 0, "deployments", 0, "api_base", "api.openai.com/v1"),
     ["models[0].deployments[0].api_base", "use a value matching"], SECRETS),
    ("bad-provider", _set("models", 2, "deployments", 0, "provider", "Anthropic AI"),
     ["models[2].deployments[0].provider", "use a value matching"], SECRETS),
    ("negative-price", _set("models", 1, "price", "input_per_1m", -1),
     ["models[1].price.input_per_1m", "greater than or equal to 0"], SECRETS),
    ("bad-secret-name", _set("models", 0, "deployments", 0, "secret", "OpenAI-Key"),
     ["models[0].deployments[0].secret", "use a value matching"], SECRETS),
    # fallbacks must not go somewhere dearer (or nowhere)
    ("fallback-pricier-input", _set("models", 0, "price", {"input_per_1m": 5.0, "output_per_1m": 0.6}),
     ["fallbacks[0].to[0]", "'smart' -> 'fast'", "more expensive", "allow_pricier: true"], SECRETS),
    ("fallback-pricier-output", _set("models", 0, "price", {"input_per_1m": 0.15, "output_per_1m": 20}),
     ["fallbacks[0].to[0]", "'smart' -> 'fast'", "more expensive", "allow_pricier: true"], SECRETS),
    ("fallback-pricier-second-target", _set("fallbacks", 0, "to", ["fast", "claude"]),
     ["fallbacks[0].to[1]", "'smart' -> 'claude'", "more expensive"], SECRETS),
    ("fallback-to-itself", _set("fallbacks", 1, "to", ["claude"]),
     ["fallbacks[1].to[0]", "falls back to itself"], SECRETS),
    # retries that multiply spend
    ("retry-auth-errors", _set("retry", "auth_errors", 1),
     ["retry.auth_errors", "401/403", "set retry.auth_errors to 0"], SECRETS),
    ("retry-bad-request-errors", _set("retry", "bad_request_errors", 2),
     ["retry.bad_request_errors", "400", "set retry.bad_request_errors to 0"], SECRETS),
    ("retry-rate-limit-errors", _set("retry", "rate_limit_errors", 3),
     ["retry.rate_limit_errors", "429", "set retry.rate_limit_errors to 0"], SECRETS),
    ("retry-num-retries-over-5", _set("retry", "num_retries", 6),
     ["retry.num_retries", "less than or equal to 5"], SECRETS),
    ("retry-unknown-class", _set("retry", "auth_error", 0),
     ["retry.auth_error", "Extra inputs are not permitted", "fix its spelling"], SECRETS),
    # memory and the systemd/gunicorn settings
    ("memory-high-equals-max", _settings(litellm_memory_high="1536M", litellm_memory_max="1536M"),
     ["settings.litellm_memory_high", "must be below", "lower litellm_memory_high"], SECRETS),
    ("memory-high-above-max", _settings(litellm_memory_high="2G", litellm_memory_max="1536M"),
     ["settings.litellm_memory_high", "MemoryHigh (2G) must be below MemoryMax (1536M)"], SECRETS),
    ("nginx-keepalive-outlives-litellm", _settings(nginx_upstream_keepalive_timeout=75, litellm_keepalive_timeout=5),
     ["settings.nginx_upstream_keepalive_timeout", "must be below litellm_keepalive_timeout (5 s)", "502",
      "lower nginx_upstream_keepalive_timeout"], SECRETS),
    ("memory-not-a-size", _settings(litellm_memory_max="lots"),
     ["settings.litellm_memory_max", "not a size: 'lots'", "a size like the default 1536M"], SECRETS),
    ("memory-high-not-a-size", _settings(litellm_memory_high="1.5G"),
     ["settings.litellm_memory_high", "not a size: '1.5G'"], SECRETS),
    ("unknown-setting-close", _settings(litellm_worker=4),
     ["settings.litellm_worker", "unknown setting", "did you mean 'litellm_workers'?"], SECRETS),
    ("setting-wrong-type", _settings(litellm_workers="4"),
     ["settings.litellm_workers", "expected int, got '4'"], SECRETS),
    ("setting-bool-for-int", _settings(nginx_read_timeout=True),
     ["settings.nginx_read_timeout", "expected int, got True"], SECRETS),
    ("port-4000", _settings(litellm_ports=[4000]),
     ["settings.litellm_ports", "4000 is LiteLLM's default port", "use another port"], SECRETS),
    ("port-4000-among-others", _settings(litellm_ports=[4001, 4000]),
     ["settings.litellm_ports", "4000 is LiteLLM's default port"], SECRETS),
    ("duplicate-ports", _settings(litellm_ports=[4001, 4002, 4001]),
     ["settings.litellm_ports", "duplicate port", "list each port once"], SECRETS),
    ("port-out-of-range", _settings(litellm_ports=[80]),
     ["settings.litellm_ports", "between 1024 and 65535"], SECRETS),
    ("timeout-stop-equals-graceful", _settings(litellm_timeout_stop_sec=30, litellm_graceful_timeout=30),
     ["settings.litellm_timeout_stop_sec", "must exceed litellm_graceful_timeout (30s)"], SECRETS),
    ("timeout-stop-below-graceful", _settings(litellm_timeout_stop_sec=10),
     ["settings.litellm_timeout_stop_sec", "must exceed litellm_graceful_timeout"], SECRETS),
    ("workers-zero", _settings(litellm_workers=0),
     ["settings.litellm_workers", "out of range", "from 1 to 64"], SECRETS),
    ("installer-unknown", _settings(litellm_installer="poetry"),
     ["settings.litellm_installer", "'poetry'", 'use "uv" (default) or "pip"'], SECRETS),
    ("index-url-with-password", _settings(litellm_pip_index_url="https://ci:hunter2@mirror.example/simple"),
     ["settings.litellm_pip_index_url", "carries credentials", "/root/.netrc"], SECRETS),
    ("index-url-with-user-token", _settings(litellm_pip_index_url="https://tok3n@mirror.example/simple"),
     ["settings.litellm_pip_index_url", "carries credentials", "/root/.netrc"], SECRETS),
    ("find-links-with-password", _settings(litellm_pip_find_links="https://u:p@wheels.example/"),
     ["settings.litellm_pip_find_links", "carries credentials"], SECRETS),
    ("nginx-cert-without-key", _settings(nginx_tls_cert="/etc/ssl/gw.pem"),
     ["settings.nginx_tls_cert/nginx_tls_key", "give both or neither"], SECRETS),
    ("nginx-key-without-cert", _settings(nginx_tls_key="/etc/ssl/gw.key"),
     ["settings.nginx_tls_cert/nginx_tls_key", "give both or neither"], SECRETS),
    # secrets referenced but absent from the vault
    ("secret-missing-deployment", _set("models", 2, "deployments", 0, "secret", "anthropic_kee"),
     ["models[2].deployments[0].secret", "'anthropic_kee'", "does not exist", "gatekit secrets --vault"], SECRETS),
    ("secret-missing-master-key", lambda d: None,
     ["settings.litellm_master_key_secret", "'litellm_master_key'", "does not exist"], ALL_BUT("litellm_master_key")),
    ("secret-missing-master-key-renamed", _settings(litellm_master_key_secret="gw_master"),
     ["settings.litellm_master_key_secret", "'gw_master'", "does not exist"], SECRETS),
    ("secret-missing-redis-password", lambda d: None,
     ["settings.redis_password_secret", "'redis_password'", "does not exist"], ALL_BUT("redis_password")),
    ("secret-missing-postgres-password", _settings(litellm_database=True),
     ["settings.postgres_password_secret", "'postgres_password'", "does not exist"], SECRETS),
    # top-level shape
    ("unknown-top-level-field", _set("fallback", []),
     ["fallback: Extra inputs are not permitted", "fix its spelling"], SECRETS),
    ("version-2", _set("version", 2),
     ["version", "Input should be 1", "use 1"], SECRETS),
    ("missing-vault", _del("vault"),
     ["vault: Field required", "add it"], SECRETS),
    ("empty-vault", _set("vault", "  "),
     ["vault", "empty path"], SECRETS),
    ("models-empty", _set("models", []),
     ["models", "at least 1 item"], SECRETS),
    ("missing-price", _del("models", 1, "price"),
     ["models[1].price: Field required", "add it"], SECRETS),
    # budgets
    ("proxy-budget-without-database", _set("budgets", "proxy", {"max_usd": 500, "duration": "30d"}),
     ["budgets.proxy", "only with a database", "litellm_database: true"], SECRETS),
    ("budget-unused-provider", _set("budgets", "providers", "mistral", {"max_usd": 5, "duration": "1d"}),
     ["budgets.providers.mistral", "no deployment uses provider 'mistral'", "use one of ['anthropic', 'openai']"],
     SECRETS),
    ("budget-bad-duration", _set("budgets", "providers", "openai", {"max_usd": 5, "duration": "1 week"}),
     ["budgets.providers.openai.duration", "use a value matching"], SECRETS),
    ("budget-zero", _set("budgets", "providers", "openai", {"max_usd": 0, "duration": "1d"}),
     ["budgets.providers.openai.max_usd", "greater than 0"], SECRETS),
    # versions: the hash lock decides; litellm_version is refused (test_litellm_version_is_refused_naming_the_lock)
    ("litellm-version-retired", _set("litellm_version", "1.82.7"),
     ["litellm_version", "no longer read", "remove litellm_version"], SECRETS),
]


def test_case_ids_are_distinct():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


@pytest.mark.parametrize(("mutate", "expected", "secret_names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_spec_is_refused(mutate, expected, secret_names):
    data = base()
    mutate(data)
    problems = problems_of(data, secret_names)
    hits = matching(problems, *expected)
    assert hits, f"no problem contains all of {expected!r}:\n" + "\n".join(problems)
    for line in hits:
        assert line.startswith(FILE + ": "), line
        assert "Fix:" in line, line
        # the field path follows the file name
        assert line[len(FILE) + 2:].startswith(expected[0].split(":")[0]), line
    # every problem reported obeys the same contract
    for line in problems:
        assert line.startswith(FILE + ": ") and "Fix:" in line, line


def test_top_level_list_is_refused():
    problems = problems_of([BASE])
    assert problems == [f"{FILE}: (top level): expected a mapping with version, vault, models. Fix: see the example."]


@pytest.mark.parametrize("data", [None, "version: 1", 1], ids=["empty-file", "string", "int"])
def test_top_level_non_mapping_is_refused(data):
    assert matching(problems_of(data), FILE, "(top level)", "Fix:")


def test_every_problem_is_reported_not_only_the_first():
    data = base()
    data["models"][1]["deployments"][0]["weight"] = 0
    data["fallbacks"][0]["to"] = ["fasst"]
    data["aliases"]["gpt-4o"] = "smort"
    data["retry"]["auth_errors"] = 1
    data["retry"]["rate_limit_errors"] = 1
    data["budgets"]["providers"]["mistral"] = {"max_usd": 5, "duration": "1d"}
    data["litellm_version"] = "1.82.7"
    data["settings"]["litellm_ports"] = [4000]
    data["settings"]["litellm_memory_high"] = "2G"
    problems = problems_of(data, ALL_BUT("redis_password"))
    for needle in [
        "models[1].deployments[0].weight",
        "fallbacks[0].to[0]",
        "aliases.gpt-4o",
        "retry.auth_errors",
        "retry.rate_limit_errors",
        "budgets.providers.mistral",
        "litellm_version",
        "settings.litellm_ports",
        "settings.litellm_memory_high",
        "'redis_password'",
    ]:
        assert matching(problems, FILE, needle, "Fix:"), f"{needle} not reported:\n" + "\n".join(problems)
    assert len(problems) == 10


def test_every_schema_problem_is_reported_not_only_the_first():
    data = base()
    data["version"] = 2
    data["models"][0]["deployments"][0]["provider"] = "Open AI"
    data["models"][1]["price"]["output_per_1m"] = -3
    data["retry"]["num_retries"] = 9
    data["extra"] = True
    problems = problems_of(data)
    for needle in ["version", "models[0].deployments[0].provider", "models[1].price.output_per_1m",
                   "retry.num_retries", "extra"]:
        assert matching(problems, FILE + ": " + needle, "Fix:"), f"{needle} not reported:\n" + "\n".join(problems)


# --- load_spec ---------------------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.gateway.yaml"
    bad.write_text("version: 1\nvault: v.enc.yaml\nmodels:\n  - name: fast\n    price: {input_per_1m: 1\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad, check_secrets=False)
    (problem,) = info.value.problems
    assert problem.startswith(f"{bad}: line ")
    assert "not valid YAML" in problem and "Fix:" in problem
    line = int(problem.split(": line ")[1].split(":")[0])
    assert 5 <= line <= 6


def test_yaml_tab_indent_error_line(tmp_path):
    bad = tmp_path / "tabs.gateway.yaml"
    bad.write_text("version: 1\nvault: v\nmodels:\n\t- name: x\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad, check_secrets=False)
    assert info.value.problems[0].startswith(f"{bad}: line 4: not valid YAML")


def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.gateway.yaml", check_secrets=False)
    assert "file not found" in str(info.value) and "Fix:" in str(info.value)


def test_load_spec_missing_vault_when_checking_secrets(tmp_path):
    import yaml

    spec_file = tmp_path / "env.gateway.yaml"
    spec_file.write_text(yaml.safe_dump(base()))
    with pytest.raises(SpecError) as info:
        load_spec(spec_file)
    msg = str(info.value)
    assert msg.startswith(f"{spec_file}: vault:")
    assert str((tmp_path / "test.secrets.enc.yaml").resolve()) in msg
    # without the secret check the same file is fine
    assert load_spec(spec_file, check_secrets=False).secrets_used() == {"openai_key", "anthropic_key"}


def test_load_spec_reports_semantic_problems_with_the_file_path(tmp_path):
    import yaml

    data = base()
    data["retry"]["auth_errors"] = 2
    spec_file = tmp_path / "env.gateway.yaml"
    spec_file.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as info:
        load_spec(spec_file, check_secrets=False)
    assert matching(info.value.problems, f"{spec_file}: retry.auth_errors", "Fix:")


# --- check_settings / sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("1536M", 1536 * 2**20), ("2G", 2 * 2**30), ("512mb", 512 * 2**20), (1048576, 1048576), ("64k", 65536),
     ("1T", 2**40)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "1.5G", "-1M", "2X", None, " 3 G ", "0\r", "1536M\n", "\t2G"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_defaults_pass_their_own_checks():
    assert check_settings({}, "x") == []
    assert check_settings(dict(DEFAULTS), "x", host_memory_mb=4096) == []


def test_memory_max_above_host_memory():
    where = "inv/hosts.py: gateways: gw1"
    problems = check_settings({"litellm_memory_max": "2G", "litellm_memory_high": "1G"}, where, host_memory_mb=1024)
    (p,) = problems
    assert p.startswith(where + ": settings.litellm_memory_max: ")
    assert "MemoryMax (2G) is above the host's memory (1024 MB)" in p and "Fix:" in p
    # exactly the host's memory is allowed; one MB more is not
    assert check_settings({"litellm_memory_max": "1024M", "litellm_memory_high": "800M"}, where, 1024) == []
    assert check_settings({"litellm_memory_max": "1025M", "litellm_memory_high": "800M"}, where, 1024)
    # the defaults (1536M) do not fit a 1 GB host
    assert matching(check_settings({}, where, host_memory_mb=1024), "settings.litellm_memory_max", "1024 MB")


def test_check_settings_reports_high_and_host_memory_together():
    problems = check_settings({"litellm_memory_high": "4G", "litellm_memory_max": "3G"}, "w", host_memory_mb=2048)
    assert matching(problems, "w: settings.litellm_memory_high", "must be below")
    assert matching(problems, "w: settings.litellm_memory_max", "above the host's memory")


# --- inventory host checks -----------------------------------------------------------------------------------------

INV = "inventories/test.py"


def good_hosts() -> dict:
    return {
        "gateways": [("gw1", {"private_address": "10.0.0.11"}), ("gw2", {"private_address": "10.0.0.12"})],
        "redis": [("db1", {"private_address": "10.0.0.21"})],
        "postgres": [("db1", {"private_address": "10.0.0.21"})],
    }


def test_good_hosts_pass():
    assert check_hosts(INV, good_hosts()) == []


def _hosts_missing_address(h):
    del h["gateways"][1][1]["private_address"]


def _hosts_bad_address(h):
    h["gateways"][0][1]["private_address"] = "gw1.internal"


def _hosts_empty_gateways(h):
    h["gateways"] = []


def _hosts_two_redis(h):
    h["redis"].append(("db2", {"private_address": "10.0.0.22"}))


def _hosts_two_postgres(h):
    h["postgres"].append(("db2", {"private_address": "10.0.0.22"}))


def _hosts_no_postgres_group(h):
    del h["postgres"]


def _hosts_memory(h):
    h["gateways"][0][1]["memory_mb"] = 1024


def _hosts_bad_override(h):
    h["gateways"][1][1]["litellm_ports"] = [4000]


def _hosts_unknown_override(h):
    h["gateways"][1][1]["litellm_wrkers"] = 3


HOST_CASES = [
    ("missing-private-address", _hosts_missing_address, ["gateways: gw2: private_address missing", "Fix:"]),
    ("non-ip-private-address", _hosts_bad_address,
     ["gateways: gw1: private_address 'gw1.internal' is not an IP address", "Fix:"]),
    ("empty-gateways", _hosts_empty_gateways, ["gateways: no hosts", "Fix:"]),
    ("missing-postgres-group", _hosts_no_postgres_group, ["postgres: no hosts", "Fix:"]),
    ("two-redis-hosts", _hosts_two_redis, ["redis: 2 hosts", "Fix: keep one host in redis"]),
    ("two-postgres-hosts", _hosts_two_postgres, ["postgres: 2 hosts", "Fix: keep one host in postgres"]),
    ("memory-max-above-host-memory", _hosts_memory,
     ["gateways: gw1: settings.litellm_memory_max", "above the host's memory (1024 MB)", "Fix:"]),
    ("host-override-port-4000", _hosts_bad_override, ["gateways: gw2: settings.litellm_ports", "4000", "Fix:"]),
    ("host-unknown-override", _hosts_unknown_override, ["gateways: gw2: litellm_wrkers: unknown setting", "Fix:"]),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in HOST_CASES], ids=[c[0] for c in HOST_CASES])
def test_bad_hosts_are_refused(mutate, expected):
    hosts = good_hosts()
    mutate(hosts)
    problems = check_hosts(INV, hosts)
    assert matching(problems, INV + ": ", *expected), "\n".join(problems)
    for p in problems:
        assert p.startswith(INV + ": ") and "Fix:" in p, p


def test_ipv6_private_address_is_accepted_and_host_memory_that_fits_passes():
    hosts = good_hosts()
    hosts["gateways"][0][1].update(private_address="fd00::11", memory_mb=4096)
    assert check_hosts(INV, hosts) == []


def test_all_host_problems_are_reported():
    hosts = good_hosts()
    _hosts_missing_address(hosts)
    _hosts_bad_address(hosts)
    _hosts_two_redis(hosts)
    _hosts_memory(hosts)
    problems = check_hosts(INV, hosts)
    assert len(problems) == 4, problems


def test_settings_for_layers_defaults_spec_and_host():
    data = base()
    data["settings"] = {"litellm_workers": 4, "nginx_read_timeout": 900}
    spec = parse_spec(data, SPEC_PATH)
    s = settings_for(spec, {"litellm_workers": 8, "private_address": "10.0.0.1", "redis_port": None})
    assert s["litellm_workers"] == 8  # host wins
    assert s["nginx_read_timeout"] == 900  # spec wins over default
    assert s["redis_port"] == DEFAULTS["redis_port"]  # None in host data does not override
    assert "private_address" not in s
    assert set(s) == set(DEFAULTS)


@pytest.mark.parametrize("key, value, message", [
    ("litellm_home", "relative/path", "not an absolute, normalized path"),
    ("litellm_home", "/opt/lite llm", "not an absolute, normalized path"),
    ("litellm_home", "/opt/litellm;rm -rf /", "not an absolute, normalized path"),
    ("litellm_home", "/opt/../etc", "not an absolute, normalized path"),
    ("litellm_home", "/opt/litellm/", "not an absolute, normalized path"),
    ("litellm_config_dir", "/etc", "system or gatekit directory"),
    ("litellm_config_dir", "/etc/gatekit", "system or gatekit directory"),
    ("litellm_home", "/var/lib", "system or gatekit directory"),
    ("litellm_home", "/", "not an absolute, normalized path"),
    ("nginx_selfsigned_dir", "/etc/nginx", "system or gatekit directory"),
    ("litellm_config_dir", "/opt/litellm", "the same directory as litellm_home"),
    ("nginx_tls_cert", "cert.pem", "not an absolute, normalized path"),
    ("litellm_user", "root", "not a system user name"),
    ("litellm_user", "Lite LLM", "not a system user name"),
    ("litellm_bind", "localhost", "not an IPv4 loopback address"),
    ("litellm_bind", "0.0.0.0", "not an IPv4 loopback address"),  # past nginx, to the admin routes
    ("litellm_bind", "10.0.0.5", "not an IPv4 loopback address"),
    ("litellm_bind", "::1", "not an IPv4 loopback address"),  # nginx's server lines would need [::1]
    ("litellm_bind", "127.0.0.1 ", "not an IPv4 loopback address"),
    ("litellm_bind", 2130706433, "expected str"),  # an integer is not an address
])
def test_hostile_path_user_and_bind_settings_are_refused(key, value, message):
    from gatekit.spec import check_settings

    extra = {"nginx_tls_key": "/etc/ssl/gw.key"} if key == "nginx_tls_cert" else {}
    problems = check_settings({key: value, **extra}, "inv.py: gw1")
    assert len(problems) == 1 and problems[0].startswith(f"inv.py: gw1: settings.{key}: ") and message in problems[0]
    assert "Fix:" in problems[0]


def test_non_default_paths_are_accepted():
    from gatekit.spec import check_settings

    assert check_settings({"litellm_home": "/srv/gk-litellm", "litellm_config_dir": "/srv/gk-etc/litellm",
                           "nginx_selfsigned_dir": "/srv/gk-etc/tls", "litellm_user": "gk_proxy",
                           "nginx_tls_cert": "/etc/ssl/gw.pem", "nginx_tls_key": "/etc/ssl/gw.key"}, "x") == []


@pytest.mark.parametrize("key, value, message", [
    ("nginx_server_name", "gw.example.com; return 200 hi", "not a list of host names"),
    ("nginx_server_name", "gw.example.com\nlocation /", "not a list of host names"),
    ("nginx_server_name", "", "not a list of host names"),
    ("nginx_client_max_body_size", "20m; allow all", "a size like 20m"),
    ("nginx_client_max_body_size", "lots", "a size like 20m"),
    ("nginx_admin_allow", ["0.0.0.0/0"], "whole internet"),
    ("nginx_admin_allow", ["::/0"], "whole internet"),
    ("nginx_admin_allow", ["10.0.0.1/8"], "has host bits set"),
    ("nginx_admin_allow", ["localhost"], "does not appear to be an IPv4 or IPv6 network"),
    ("nginx_admin_allow", ["10.0.0.0/8; allow all"], "does not appear to be"),
    ("nginx_admin_allow", [1], "a list of networks"),
])
def test_hostile_nginx_settings_are_refused(key, value, message):
    from gatekit.spec import check_settings

    problems = check_settings({key: value}, "spec.yaml")
    assert len(problems) == 1 and problems[0].startswith(f"spec.yaml: settings.{key}: ") and message in problems[0], problems
    assert "Fix:" in problems[0]


def test_good_nginx_settings_are_accepted():
    from gatekit.spec import check_settings

    assert check_settings({"nginx_server_name": "gw.example.com api.example.com", "nginx_client_max_body_size": "512k",
                           "nginx_admin_allow": ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]}, "x") == []


# --- hostile inputs (issue 10): each refused with one line naming the file, the field and the fix ------------


@pytest.mark.parametrize("api_base, message", [
    ("https://user:pw@api.openai.com/v1", "credentials in the URL"),
    ("https://api.openai.com/v1 trailing", "whitespace"),
    ("https://api.openai.com/v1\nX: y", "control characters"),
    ("https://api.openai.com/v1?key=1", "query or fragment"),
    ("https://api.openai.com/v1#frag", "query or fragment"),
    ("https://api.openai.com:99999/v1", "invalid port"),
    ("https://api.openai.com/v1\"", "not valid in a URL"),
    ("ftp://api.openai.com/v1", "pattern"),
])
def test_hostile_api_base_is_refused(api_base, message):
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text())
    data["models"][0]["deployments"][0]["api_base"] = api_base
    with pytest.raises(SpecError) as exc:
        parse_spec(data, Path("inv/x.gateway.yaml"))
    assert any("api_base" in p and message in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("env, message", [
    ({"FOO": "a\nREDIS_HOST=evil"}, "line break"),
    ({"FOO": 'a"b'}, "quote"),
    ({"FOO": "a\\b"}, "backslash"),
    ({"FOO": " padded"}, "surrounding space"),
    ({"FOO BAR": "x"}, "not an environment variable name"),
    ({"REDIS_HOST": "10.0.0.9"}, "set by gatekit itself"),
    ({"GK_SECRET_OPENAI_KEY": "x"}, "set by gatekit itself"),
    ({"FOO": ["a"]}, "string or number"),
    ({"FOO": True}, "string or number"),
])
def test_hostile_extra_env_is_refused(env, message):
    from gatekit.spec import check_settings

    problems = check_settings({"litellm_extra_env": env}, "spec.yaml")
    assert len(problems) == 1 and problems[0].startswith("spec.yaml: settings.litellm_extra_env") and message in problems[0]


def test_good_extra_env_renders_one_line_each():
    from gatekit import render
    from gatekit.spec import check_settings

    assert check_settings({"litellm_extra_env": {"OTEL_ENDPOINT": "http://10.0.0.3:4318/v1", "N": 3}}, "x") == []
    text = render.litellm_env({**DEFAULTS, "litellm_extra_env": {"OTEL_ENDPOINT": "http://10.0.0.3:4318/v1"}}, None, None)
    assert text.splitlines()[-1] == "OTEL_ENDPOINT=http://10.0.0.3:4318/v1"


@pytest.mark.parametrize("addr", ["0.0.0.0", "::", "224.0.0.1", "127.0.0.1", "255.255.255.255", "169.254.1.1", 167772161,
                                  "10.0.0.1/24", "10.0.0.1 ", ""])
def test_private_address_must_be_a_unicast_ip_other_hosts_reach(addr):
    from gatekit.inventory import check_hosts

    hosts = {"gateways": [("gw1", {"private_address": addr})], "redis": [("d", {"private_address": "10.0.0.2"})],
             "postgres": [("d", {"private_address": "10.0.0.2"})]}
    problems = check_hosts("inv.py", hosts)
    assert len(problems) == 1 and problems[0].startswith("inv.py: gateways: gw1: private_address") and "Fix:" in problems[0]


def test_duplicate_yaml_keys_are_refused(tmp_path):
    spec = tmp_path / "x.gateway.yaml"
    text = EXAMPLE.read_text()
    spec.write_text(text.replace("version: 1", "version: 1\nversion: 1", 1))
    line = text[: text.index("version: 1")].count("\n") + 2
    with pytest.raises(SpecError) as exc:
        load_spec(spec, check_secrets=False)
    assert exc.value.problems == [f"{spec}: line {line}: 'version' is given twice; YAML would silently keep the last. Fix: keep one."]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "a directory, not a spec file"),
    (lambda p: p.write_bytes(b"version: 1\nvault: \xff\xfe\n"), "not UTF-8 text"),
])
def test_unreadable_spec_is_one_line(tmp_path, make, message):
    spec = tmp_path / "x.gateway.yaml"
    make(spec)
    with pytest.raises(SpecError) as exc:
        load_spec(spec, check_secrets=False)
    assert len(exc.value.problems) == 1 and exc.value.problems[0].startswith(f"{spec}: ") and message in exc.value.problems[0]


@pytest.mark.parametrize("key, value", [
    ("nginx_https_port", 0), ("nginx_https_port", 70000), ("redis_port", -1), ("postgres_port", 65536),
    ("litellm_workers", 0), ("litellm_workers", 10**6), ("redis_litellm_db", 16), ("nginx_read_timeout", 0),
    ("litellm_ready_timeout", 10**9), ("rotation_settle_sec", float("inf")), ("rotation_settle_sec", float("nan")),
    ("litellm_install_timeout", 5), ("nginx_upstream_keepalive", 0), ("postgres_version", 7),
])
def test_numbers_out_of_range_are_refused(key, value):
    problems = check_settings({key: value}, "spec.yaml")
    assert problems and problems[0].startswith(f"spec.yaml: settings.{key}: ") and "out of range" in problems[0]


def test_postgres_version_0_is_the_hosts_and_other_small_numbers_are_refused_saying_so():
    assert check_settings({"postgres_version": 0}, "spec.yaml") == []
    assert check_settings({"postgres_version": 7}, "spec.yaml") == [
        "spec.yaml: settings.postgres_version: 7 is out of range. Fix: 0 (the host's) or a value from 10 to 99."]
    assert check_settings({"nginx_https_port": 0}, "spec.yaml") == [
        "spec.yaml: settings.nginx_https_port: 0 is out of range. Fix: a value from 1 to 65535."]


def test_nginx_ports_must_differ():
    problems = check_settings({"nginx_https_port": 8443, "nginx_http_port": 8443}, "s")
    assert len(problems) == 1 and "port 8443 is also nginx_https_port's" in problems[0]
    assert problems[0].startswith("s: settings.nginx_http_port: ")
    (p,) = check_settings({"nginx_https_port": 4001}, "s")
    assert p.startswith("s: settings.nginx_https_port: port 4001 is also litellm_ports'") and "Fix:" in p


@pytest.mark.parametrize("field, value", [("input_per_1m", float("inf")), ("output_per_1m", float("nan")),
                                          ("weight", float("inf"))])
def test_infinite_prices_and_weights_are_refused(field, value):
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text())
    if field == "weight":
        data["models"][0]["deployments"][0]["weight"] = value
    else:
        data["models"][0]["price"][field] = value
    with pytest.raises(SpecError) as exc:
        parse_spec(data, Path("inv/x.gateway.yaml"))
    assert any(field in p and "Fix" in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("level", ["info", "VERBOSE", "", 20, None, ["INFO"], "INFO\nX=1", "x" * 500])
def test_log_level_outside_the_levels_is_refused_naming_the_fix(level):
    from gatekit.spec import check_settings

    problems = check_settings({"litellm_log_level": level}, "inv/gw.yaml")
    assert len(problems) == 1 and "settings.litellm_log_level" in problems[0] and "WARNING" in problems[0], problems
    assert "\n" not in problems[0] and len(problems[0]) < 300


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
def test_log_levels_are_accepted(level):
    from gatekit.spec import check_settings

    assert check_settings({"litellm_log_level": level}, "inv/gw.yaml") == []


# --- the LiteLLM version: the hash lock decides it, not a number in the spec -----------------------------------


def _pinned(lock: Path) -> str:
    """The litellm==VERSION line of a lock, read here with the test's own pattern."""
    (version,) = [line.split("==")[1].split()[0] for line in lock.read_text().splitlines() if line.startswith("litellm==")]
    return version


LOCKED = _pinned(REPO / "requirements" / "litellm.lock")


@pytest.mark.parametrize("version", ["1.82.7", "9.9.9", LOCKED, 1.0])
def test_litellm_version_is_refused_naming_the_lock(version):
    data = base()
    data["litellm_version"] = version
    problems = problems_of(data)
    assert problems == [f"{FILE}: litellm_version: no longer read: the hash lock the hosts install decides LiteLLM's "
                        f"version (requirements/litellm.lock pins litellm {LOCKED}). Fix: remove litellm_version; to change "
                        "the version, point settings.litellm_requirements at another hash lock."]


def test_litellm_version_names_the_lock_the_settings_choose(tmp_path):
    lock = tmp_path / "mine.lock"
    lock.write_text("litellm[proxy]==1.200.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    data = base()
    data["litellm_version"] = "1.200.0"
    data["settings"]["litellm_requirements"] = str(lock)
    (p,) = problems_of(data)
    assert f"({lock} pins litellm 1.200.0)" in p
    data["settings"] = {"litellm_database": True}
    (p,) = matching(problems_of(data, SECRETS | {"postgres_password"}), "litellm_version")
    assert f"(requirements/litellm-db.lock pins litellm {_pinned(REPO / 'requirements' / 'litellm-db.lock')})" in p


def test_the_spec_model_has_no_litellm_version():
    spec = parse_spec(base(), SPEC_PATH, secret_names=set(SECRETS))
    assert not hasattr(spec, "litellm_version")


@pytest.mark.parametrize("pin", ["litellm==1.82.7", "litellm[proxy]==1.82.8", "LiteLLM==1.82.7"])
def test_a_lock_pinning_a_compromised_litellm_is_refused_before_any_host(tmp_path, pin):
    lock = tmp_path / "old.lock"
    lock.write_text(f"httpx==0.28.1 \\\n    --hash=sha256:{'1' * 64}\n{pin} \\\n    --hash=sha256:{'0' * 64}\n")
    data = base()
    data["settings"]["litellm_requirements"] = str(lock)
    (p,) = problems_of(data)
    version = pin.split("==")[1]
    assert p.startswith(f"{FILE}: settings.litellm_requirements: {lock} pins litellm=={version}, a compromised release.")
    assert "Fix:" in p
    # a host that points at it is refused as well
    (p,) = check_settings({"litellm_requirements": str(lock)}, "inv.py: gateways: gw1")
    assert p.startswith("inv.py: gateways: gw1: settings.litellm_requirements: ")


def test_the_kits_locks_pass():
    assert check_settings({}, "x") == [] and check_settings({"litellm_database": True}, "x") == []
    assert check_settings({"litellm_requirements": "does/not/exist.lock"}, "x") == []  # unreadable: the install reports it


@pytest.mark.parametrize("value, ok", [
    ("256mb", True), ("0", True), ("1073741824", True), ("9999gb", True), ("512M", True), ("999999999kb", True),
    ("999999999999gb", False),  # 1e21 bytes: Redis's multiplication wraps around 2^64 into another limit
    ("10000gb", False), ("9999999mb", False), ("1tb", False), ("256 mb", False),
])
def test_redis_maxmemory_is_a_size_redis_reads_as_written(value, ok):
    problems = check_settings({"redis_maxmemory": value}, "spec.yaml")
    assert (problems == []) is ok, problems
    assert ok or (len(problems) == 1 and problems[0].startswith("spec.yaml: settings.redis_maxmemory:") and "Fix:" in problems[0])


def test_a_second_fallback_entry_for_the_same_model_is_refused():
    # LiteLLM takes the first {model: [...]} entry that names the model: the second would be silently ignored.
    data = base()
    data["fallbacks"] = [*data["fallbacks"], {"from": "claude", "to": ["fast"]}]
    assert problems_of(data) == [
        f"{SPEC_PATH}: fallbacks[2].from: 'claude' already has its fallbacks in fallbacks[1]. "
        "Fix: list all of its targets there, in order."]


def _deadline_spec(tmp_path, **settings):
    import yaml as _yaml

    from gatekit.spec import parse_spec
    data = _yaml.safe_load((Path(__file__).resolve().parents[2] / "inventories" / "example.gateway.yaml").read_text())
    data["settings"].update(settings)
    return data, lambda d: parse_spec(d, tmp_path / "x.gateway.yaml")


def test_a_call_that_could_wait_past_nginx_is_refused_naming_the_model_and_the_fix(tmp_path):
    from gatekit.spec import SpecError

    data, parse = _deadline_spec(tmp_path)
    parse(data)  # the defaults fit: 60 s x (one attempt per deployment, at most 3) per model and fallback < 600 s
    data["settings"]["nginx_read_timeout"] = 110
    with pytest.raises(SpecError) as exc:
        parse(data)
    smart = [p for p in exc.value.problems if "a call to 'smart'" in p]
    assert len(smart) == 1 and "can wait 120 s" in smart[0] and "smart 60 s + fast 60 s" in smart[0], exc.value.problems
    assert "Fix: lower settings.litellm_deployment_timeout" in smart[0] and "raise settings.nginx_read_timeout" in smart[0]
    # A deployment's own timeout counts instead of the setting's.
    data["settings"]["nginx_read_timeout"] = 600
    data["models"][1]["deployments"][0]["stream_timeout"] = 590
    with pytest.raises(SpecError) as exc:
        parse(data)
    assert [p for p in exc.value.problems if "a streamed call to 'smart' can wait 620 s" in p], exc.value.problems


@pytest.mark.parametrize("value", [True, "5", 0, -1, 86401])
def test_a_deployment_timeout_that_is_no_number_of_seconds_is_refused(tmp_path, value):
    from gatekit.spec import SpecError

    data, parse = _deadline_spec(tmp_path)
    data["models"][0]["deployments"][0]["timeout"] = value
    with pytest.raises(SpecError) as exc:
        parse(data)
    assert [p for p in exc.value.problems if "models[0].deployments[0].timeout" in p], exc.value.problems
