"""The LLM providers a deployment may name, and what each takes in the spec (its shape).

LiteLLM calls a deployment `{provider}/{model}` with `api_base` and an API key; where the provider's request
differs (Azure's deployments path and `api-version`, Gemini's `{api_base}/models/{model}:generateContent`), the
spec's fields differ too. Each rule below is one of LiteLLM's, read in its source for the locked versions
(1.106.2 and 1.108.7), so a spec LiteLLM would turn into a failing call is refused before any host is touched.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Shape:
    """default_base: LiteLLM's own endpoint when `api_base` is not set (None: `api_base` is required).
    base_rule: what LiteLLM appends to `api_base`, so what the spec's value must (not) end in.
    api_version: the provider needs `api_version` (pinned in the spec, never LiteLLM's changing default)."""

    default_base: str | None = None
    base_rule: str = ""  # "version" (Gemini) | "resource" (Azure) | ""
    api_version: bool = False


# Providers with a shape of their own or an endpoint LiteLLM knows. Any other provider LiteLLM knows
# (LITELLM_PROVIDERS) takes an API key and a required api_base, as every deployment did before shapes.
SHAPES = {
    "openai": Shape("https://api.openai.com/v1"),
    "anthropic": Shape("https://api.anthropic.com"),
    # LiteLLM sends {api_base}/deployments/... under /openai itself, with the api-version query and an api-key header.
    "azure": Shape(None, base_rule="resource", api_version=True),
    # LiteLLM builds {api_base}/models/{model}:generateContent: the base ends in the API version (/v1beta).
    "gemini": Shape("https://generativelanguage.googleapis.com/v1beta", base_rule="version"),
    "deepseek": Shape("https://api.deepseek.com/beta"),
    "mistral": Shape("https://api.mistral.ai/v1"),
    "openrouter": Shape("https://openrouter.ai/api/v1"),
    "groq": Shape("https://api.groq.com/openai/v1"),
    "together_ai": Shape("https://api.together.ai/v1"),
    "fireworks_ai": Shape("https://api.fireworks.ai/inference/v1"),
    "xai": Shape("https://api.x.ai"),
    "perplexity": Shape("https://api.perplexity.ai"),
    "deepinfra": Shape("https://api.deepinfra.com/v1/openai"),
    "cerebras": Shape("https://api.cerebras.ai/v1"),
}

# Providers whose credential is not one API key: refused until the spec can describe it.
UNSUPPORTED = {
    **dict.fromkeys(("bedrock", "bedrock_mantle", "sagemaker", "sagemaker_chat", "sagemaker_nova"),
                    "signs each request with an AWS access-key pair and region"),
    **dict.fromkeys(("vertex_ai", "vertex_ai_beta"), "authenticates with a Google service-account credential"),
    **dict.fromkeys(("watsonx", "watsonx_text"), "needs an IBM Cloud project and IAM token exchange"),
    "oci": "signs each request with an OCI API signing key",
    "github_copilot": "authenticates through GitHub's device-login flow",
}

# LiteLLM's provider list (litellm.types.utils.LlmProviders) of the locked versions, 1.106.2 and 1.108.7 (a union;
# names with '-' are left out: the spec's provider pattern refuses them). Refresh it with a new lock.
LITELLM_PROVIDERS = frozenset("""
    a2a a2a_agent ai21 ai21_chat aiml aiohttp_openai amazon_nova anthropic anthropic_text apertis assemblyai
    auto_router aws_polly aws_textract azure azure_ai azure_speech azure_text baseten bedrock bedrock_mantle
    bespoke black_forest_labs bytez cerebras charity_engine chatgpt chutes clarifai cloudflare codestral
    cognition cohere cohere_chat cometapi compactifai coralbricks cortecs cursor custom custom_openai darkbloom
    dashscope databricks databricks_agent datarobot deepgram deepinfra deepseek docker_model_runner dotprompt
    edenai elevenlabs empower fal_ai featherless_ai fireworks_ai friendliai galadriel gdc gemini gigachat github
    github_copilot gradient_ai groq helicone heroku hosted_vllm huggingface humanloop hyperbolic inception
    inferenceapis infinity jina_ai lambda_ai langflow langfuse langgraph laya lemonade libertai litellm_agent
    litellm_proxy llamafile lm_studio manus maritalk meta meta_llama microsoft_365_copilot milvus minimax
    mistral modelscope mongodb moonshot morph nadir nebius neosantara nlp_cloud novita nscale
    nvidia_nim nvidia_riva oci ollama ollama_chat oobabooga openai openai_like openrouter ovhcloud parasail
    perplexity petals pg_vector pinstripes poe predibase prism publicai qwen_ai_platform qwencloud ragflow
    recraft reducto reka replicate runwayml s3_vectors sagemaker sagemaker_chat sagemaker_nova sail sambanova
    sap scaledown scaleway snowflake soniox stability strands_decider synthetic tencent tensormesh
    together_ai topaz transcribe triton typesafe v0 valkey vercel_ai_gateway vertex_ai vertex_ai_beta vllm
    volcengine voyage wandb watsonx watsonx_text xai xiaomi_mimo xinference zai
""".split())

AZURE_API_VERSION_RE = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$"
_VERSION_SEGMENT = re.compile(r"^v[0-9]+((alpha|beta)[0-9]*)?$")


def shape(provider: str) -> Shape:
    return SHAPES.get(provider, Shape())


def provider_problem(provider: str) -> str:
    """Why a deployment cannot name this provider ("" when it can), with the fix."""
    if provider in UNSUPPORTED:
        return (f"provider {provider!r} {UNSUPPORTED[provider]}, which a deployment's single secret cannot hold "
                f"(not supported yet). Fix: use one of {', '.join(sorted(SHAPES))}, or another provider that "
                "takes an API key")
    if provider not in LITELLM_PROVIDERS:
        close = difflib.get_close_matches(provider, sorted(LITELLM_PROVIDERS), n=3, cutoff=0.8)
        hint = f" (did you mean {', '.join(repr(p) for p in close)}?)" if close else ""
        return (f"{provider!r} is not a provider LiteLLM knows{hint}. Fix: use one of {', '.join(sorted(SHAPES))}, or "
                "another of LiteLLM's providers with its api_base")
    return ""


def base_problem(provider: str, api_base: str | None) -> str:
    """What is wrong with a deployment's api_base for its provider ("" when nothing), with the fix."""
    s = shape(provider)
    if api_base is None:
        if s.default_base is None:
            what = "the Azure resource endpoint, such as https://NAME.openai.azure.com" if provider == "azure" \
                else "the provider's endpoint"
            return f"provider {provider!r} has no default endpoint. Fix: set api_base to {what}"
        return ""
    path = urlsplit(api_base).path.rstrip("/")
    if s.base_rule == "version" and not _VERSION_SEGMENT.match(path.rsplit("/", 1)[-1]):
        return (f"LiteLLM calls {api_base.rstrip('/')}/models/MODEL:generateContent, which {provider} does not serve "
                f"(every call a 404). Fix: end api_base with the API version, such as "
                f"{api_base.rstrip('/')}/v1beta, or leave api_base out for {s.default_base}")
    if s.base_rule == "resource" and "/openai" in path:
        return ("LiteLLM appends /openai/deployments/MODEL/chat/completions to api_base itself. Fix: set api_base to "
                "the resource endpoint only, such as https://NAME.openai.azure.com")
    return ""


def api_version_problem(provider: str, api_version: str | None) -> str:
    if shape(provider).api_version and api_version is None:
        return (f"provider {provider!r} needs api_version (LiteLLM's own default changes with its releases). "
                "Fix: pin it, such as api_version: 2024-10-21")
    if not shape(provider).api_version and api_version is not None:
        return f"provider {provider!r} takes no api_version (it would be ignored). Fix: remove it"
    return ""


def deployment_problems(provider: str, api_base: str | None, api_version: str | None) -> list[tuple[str, str]]:
    """[(field, problem)] of one deployment's provider fields: the provider alone when it is refused (its api_base
    and api_version cannot be judged then), else api_base's and api_version's, each when there is one."""
    refused = provider_problem(provider)
    if refused:
        return [("provider", refused)]
    found = (("api_base", base_problem(provider, api_base)), ("api_version", api_version_problem(provider, api_version)))
    return [(field, problem) for field, problem in found if problem]
