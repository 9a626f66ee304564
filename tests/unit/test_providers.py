"""Provider shapes (gatekit/providers.py): what a deployment of each provider takes in the spec, refused with one line
naming file, field and fix before any host is touched, and rendered into LiteLLM's config the way its provider code
reads it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gatekit.inventory import settings_for
from gatekit.render import litellm_config
from gatekit.spec import SpecError, parse_spec

FILE = "inv/p.gateway.yaml"
SECRETS = {"k", "litellm_master_key", "redis_password"}


def spec_with(*deployments: dict) -> dict:
    return {"version": 1, "vault": "v.enc.yaml",
            "models": [{"name": "m", "price": {"input_per_1m": 1, "output_per_1m": 1},
                        "deployments": [{"secret": "k", **d} for d in deployments]}]}


def problems(*deployments: dict) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(*deployments), Path(FILE), secret_names=SECRETS)
    return info.value.problems


def params(*deployments: dict) -> list[dict]:
    spec = parse_spec(spec_with(*deployments), Path(FILE), secret_names=SECRETS)
    return [d["litellm_params"] for d in litellm_config(spec, settings_for(spec, {}), None)["model_list"]]


def test_azure_renders_its_pinned_api_version_and_resource_endpoint():
    (p,) = params({"provider": "azure", "model": "gpt4o-prod", "api_base": "https://acme.openai.azure.com",
                   "api_version": "2024-10-21"})
    assert (p["model"], p["api_base"], p["api_version"]) == ("azure/gpt4o-prod", "https://acme.openai.azure.com",
                                                             "2024-10-21")
    assert p["api_key"] == "os.environ/GK_SECRET_K"


def test_azure_without_api_version_or_endpoint_is_refused_with_both_problems():
    found = problems({"provider": "azure", "model": "gpt4o-prod"})
    assert found == [
        f"{FILE}: models[0].deployments[0].api_base: provider 'azure' has no default endpoint. Fix: set api_base to the "
        "Azure resource endpoint, such as https://NAME.openai.azure.com.",
        f"{FILE}: models[0].deployments[0].api_version: provider 'azure' needs api_version (LiteLLM's own default "
        "changes with its releases). Fix: pin it, such as api_version: 2024-10-21.",
    ]


def test_azure_endpoint_with_the_path_litellm_appends_is_refused():
    (line,) = problems({"provider": "azure", "model": "d", "api_version": "2024-10-21",
                        "api_base": "https://acme.openai.azure.com/openai/deployments/d"})
    assert line.startswith(f"{FILE}: models[0].deployments[0].api_base: LiteLLM appends /openai/deployments/")


@pytest.mark.parametrize("version", ["latest", "2024-10", "v1", "2024-10-21-beta"])
def test_an_unpinned_or_malformed_api_version_is_refused(version):
    (line,) = problems({"provider": "azure", "model": "d", "api_base": "https://a.openai.azure.com",
                        "api_version": version})
    assert line.startswith(f"{FILE}: models[0].deployments[0].api_version: String should match pattern "), line
    assert line.endswith("Fix: use a value matching ^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$."), line


def test_api_version_on_a_provider_that_ignores_it_is_refused():
    (line,) = problems({"provider": "openai", "model": "gpt-4o", "api_version": "2024-10-21"})
    assert line == (f"{FILE}: models[0].deployments[0].api_version: provider 'openai' takes no api_version (it would "
                    "be ignored). Fix: remove it.")


def test_gemini_without_api_base_uses_litellms_endpoint():
    (p,) = params({"provider": "gemini", "model": "gemini-2.5-flash"})
    assert p["model"] == "gemini/gemini-2.5-flash" and "api_base" not in p and "api_version" not in p


@pytest.mark.parametrize("base", ["https://generativelanguage.googleapis.com/v1beta", "http://10.0.0.5:8080/v1",
                                  "https://gw.example.com/google/v1alpha/"])
def test_gemini_api_base_ending_in_an_api_version_is_taken(base):
    (p,) = params({"provider": "gemini", "model": "gemini-2.5-flash", "api_base": base})
    assert p["api_base"] == base


@pytest.mark.parametrize("base", ["https://generativelanguage.googleapis.com", "https://generativelanguage.googleapis.com/",
                                  "http://10.0.0.5:8080/v1beta/models"])
def test_gemini_api_base_without_the_api_version_is_the_404_trap(base):
    (line,) = problems({"provider": "gemini", "model": "gemini-2.5-flash", "api_base": base})
    assert line.startswith(f"{FILE}: models[0].deployments[0].api_base: LiteLLM calls ")
    assert "/models/MODEL:generateContent" in line and "Fix: end api_base with the API version" in line


@pytest.mark.parametrize("provider", ["openai", "anthropic", "deepseek", "mistral", "openrouter", "groq"])
def test_providers_with_an_endpoint_of_their_own_need_no_api_base(provider):
    (p,) = params({"provider": provider, "model": "x"})
    assert p["model"] == f"{provider}/x" and "api_base" not in p


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai_like", "ollama_chat"])
def test_providers_without_an_endpoint_need_api_base(provider):
    (line,) = problems({"provider": provider, "model": "x"})
    assert line == (f"{FILE}: models[0].deployments[0].api_base: provider {provider!r} has no default endpoint. "
                    "Fix: set api_base to the provider's endpoint.")
    (p,) = params({"provider": provider, "model": "x", "api_base": "http://10.0.0.9:8000/v1"})
    assert p["api_base"] == "http://10.0.0.9:8000/v1"


@pytest.mark.parametrize("provider, why", [("bedrock", "AWS access-key pair"),
                                           ("vertex_ai", "Google service-account credential")])
def test_providers_whose_credential_is_not_one_key_are_refused(provider, why):
    (line,) = problems({"provider": provider, "model": "x", "api_base": "https://example.com"})
    assert line.startswith(f"{FILE}: models[0].deployments[0].provider: provider {provider!r} ")
    assert why in line and "(not supported yet). Fix: use one of " in line


@pytest.mark.parametrize("typo, meant", [("opneai", "'openai'"), ("gemnii", "'gemini'"), ("deepsek", "'deepseek'")])
def test_an_unknown_provider_is_refused_with_the_name_it_resembles(typo, meant):
    (line,) = problems({"provider": typo, "model": "x", "api_base": "https://example.com/v1"})
    assert line.startswith(f"{FILE}: models[0].deployments[0].provider: {typo!r} is not a provider LiteLLM knows "
                           f"(did you mean {meant}")
    assert "Fix: use one of anthropic, azure, " in line


def test_every_deployment_is_checked_and_reported_together():
    found = problems({"provider": "gemini", "model": "g", "api_base": "https://generativelanguage.googleapis.com"},
                     {"provider": "hosted_vllm", "model": "v"},
                     {"provider": "nosuch", "model": "n", "api_version": "2024-10-21"})
    assert [line.split(": ")[1] for line in found] == [
        "models[0].deployments[0].api_base", "models[0].deployments[1].api_base", "models[0].deployments[2].provider"]


def test_a_spec_without_any_shape_field_renders_as_before():
    """The deployments every existing spec has (provider, model, api_base, one secret) render unchanged."""
    base = {"provider": "openai", "model": "gpt-4o", "api_base": "https://api.openai.com/v1"}
    (p,) = params(copy.deepcopy(base))
    assert {k: p[k] for k in ("model", "api_base", "api_key")} == {
        "model": "openai/gpt-4o", "api_base": "https://api.openai.com/v1", "api_key": "os.environ/GK_SECRET_K"}
    assert "api_version" not in p
