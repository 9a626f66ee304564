"""Pure rendering: spec + settings -> the files the roles put on hosts. No host access here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import jinja2
import yaml

from gatekit.spec import GatewaySpec

from gatekit.resources import templates_dir

TEMPLATES = templates_dir()

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def template(name: str, **context) -> str:
    return _env.get_template(name).render(**context)


def secret_env(name: str) -> str:
    """The environment variable a secret reaches LiteLLM as (config.yaml names it, never its value)."""
    return "GK_SECRET_" + name.upper()


def deployment_id(model: str, index: int, key_fingerprint: str | None = None) -> str:
    """LiteLLM model_info.id. With the key's fingerprint in it, router state in the shared Redis
    (cooldowns, failure and usage counters) belongs to one key: a canary failing with a new key can
    never cool down the deployment live instances serve with the old key, and the old key's failures
    never follow the new one."""
    return f"{model}--{index}" + (f"--{key_fingerprint[:8]}" if key_fingerprint else "")


PROMETHEUS_EXCLUDED_LABELS = ("end_user", "user", "user_email", "user_alias", "hashed_api_key", "requested_model",
                              "client_ip", "user_agent", "team", "team_alias", "org_id", "org_alias",
                              "project_id", "project_alias")


# LiteLLM's metrics about its own database's entities (names as LiteLLM 1.106.2 defines them; it refuses to
# start on a name it does not know, so a LiteLLM upgrade that renames one fails the e2e suite, never silently).
PROMETHEUS_EXCLUDED_METRICS = (
    "litellm_remaining_team_budget_metric", "litellm_team_max_budget_metric", "litellm_team_budget_remaining_hours_metric",
    "litellm_team_members_metric",
    "litellm_remaining_org_budget_metric", "litellm_org_max_budget_metric", "litellm_org_budget_remaining_hours_metric",
    "litellm_remaining_api_key_budget_metric", "litellm_api_key_max_budget_metric",
    "litellm_api_key_budget_remaining_hours_metric",
    "litellm_remaining_user_budget_metric", "litellm_user_max_budget_metric", "litellm_user_budget_remaining_hours_metric",
    "litellm_remaining_customer_budget_metric", "litellm_customer_max_budget_metric",
    "litellm_customer_budget_remaining_hours_metric",
    "litellm_pod_lock_manager_size", "litellm_in_memory_daily_spend_update_queue_size",
    "litellm_redis_daily_spend_update_queue_size", "litellm_in_memory_spend_update_queue_size",
    "litellm_redis_spend_update_queue_size",
)


# Errors that cool a deployment down at their first occurrence (LiteLLM's deployment-level allowed_fails_policy): a
# timeout (a hung provider: the next calls skip the deployment, to the model's other deployments or its fallbacks,
# instead of each waiting out its timeout again), a refused key and an unknown model (as LiteLLM's default does).
COOLDOWN_AT_FIRST = {"TimeoutErrorAllowedFails": 0, "AuthenticationErrorAllowedFails": 0, "NotFoundErrorAllowedFails": 0}


def cooldown_policy(spec: GatewaySpec, m) -> dict:
    """model_info fields of each deployment of model `m`: COOLDOWN_AT_FIRST, and a 429 too where the model has other
    deployments. Every other error counts to retry.allowed_fails; on a model's only deployment it never cools it
    down (LiteLLM's single-deployment safety net, which model_info.allowed_fails keeps: the router-level policy
    would drop it for every error)."""
    policy = dict(COOLDOWN_AT_FIRST)
    if len(m.deployments) > 1:
        policy["RateLimitErrorAllowedFails"] = 0
    return {"allowed_fails_policy": policy, "allowed_fails": spec.retry.allowed_fails}


def litellm_config(spec: GatewaySpec, settings: dict, redis: dict | None, fingerprints: dict | None = None) -> dict:
    """LiteLLM's config.yaml as data. Secrets appear only as os.environ/... references.
    fingerprints: {secret name: fingerprint} of the keys this config will run with."""
    model_list = []
    for m in spec.models:
        for i, d in enumerate(m.deployments):
            params = {
                "model": f"{d.provider}/{d.model}",
                # No api_base: LiteLLM's own endpoint for the provider (gatekit/providers.py SHAPES).
                **({"api_base": d.api_base} if d.api_base else {}),
                **({"api_version": d.api_version} if d.api_version else {}),
                "api_key": f"os.environ/{secret_env(d.secret)}",
                "weight": d.weight,
                # Per attempt: a provider that accepts a call and never answers costs this long, not the 600 s
                # request timeout (then a retry per retry.timeout_errors, the deployment cooled down, the fallbacks).
                "timeout": d.timeout or settings["litellm_deployment_timeout"],
                "stream_timeout": d.stream_timeout or settings["litellm_deployment_stream_timeout"],
            }
            if d.rpm:
                params["rpm"] = d.rpm
            if d.tpm:
                params["tpm"] = d.tpm
            model_list.append(
                {
                    "model_name": m.name,
                    "litellm_params": params,
                    "model_info": {
                        # Stable ids let a canary tell which deployment answered (x-litellm-model-id).
                        "id": deployment_id(m.name, i, (fingerprints or {}).get(d.secret)),
                        "gatekit_secret": d.secret,
                        "input_cost_per_token": m.price.input_per_1m / 1e6,
                        "output_cost_per_token": m.price.output_per_1m / 1e6,
                        **cooldown_policy(spec, m),
                    },
                }
            )

    router = {
        "routing_strategy": "simple-shuffle",
        "num_retries": spec.retry.num_retries,
        "retry_policy": spec.retry.policy(),
        "allowed_fails": spec.retry.allowed_fails,
        "cooldown_time": spec.retry.cooldown_time,
        "timeout": settings["litellm_request_timeout"],
        "fallbacks": [{fb.from_: [t.model for t in fb.targets()]} for fb in spec.fallbacks],
    }
    if spec.aliases:
        router["model_group_alias"] = dict(spec.aliases)
    if redis:
        # Host/port/password here; the DB index comes from REDIS_DB in the unit's environment.
        router["redis_host"] = redis["host"]
        router["redis_port"] = redis["port"]
        router["redis_password"] = "os.environ/REDIS_PASSWORD"
        # A Redis that stops answering (a partition, not a refusal) holds each call this long, not LiteLLM's 5 s:
        # its circuit breaker (litellm.env) then skips Redis until it answers again.
        timeout = settings["litellm_redis_timeout"]
        router["cache_kwargs"] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if spec.budgets.providers:
        router["provider_budget_config"] = {
            p: {"budget_limit": b.max_usd, "time_period": b.duration} for p, b in spec.budgets.providers.items()
        }

    litellm_settings: dict = {"request_timeout": settings["litellm_request_timeout"], "drop_params": True}
    if spec.budgets.proxy:
        litellm_settings["max_budget"] = spec.budgets.proxy.max_usd
        litellm_settings["budget_duration"] = spec.budgets.proxy.duration

    # gatekit's hook (onhost/keyauth.py, on the launcher's sys.path): client keys without LiteLLM's database,
    # their usage in PostgreSQL and their monthly budgets. The master key stays the operator's.
    litellm_settings["callbacks"] = ["prometheus", "keyauth.usage_logger"]
    # LiteLLM's Prometheus callback on /metrics/ (aggregated over the workers through the instance's
    # PROMETHEUS_MULTIPROC_DIR, see the launcher). nginx serves it to nginx_admin_allow only, so LiteLLM's own
    # key check on it is off. Labels stay bounded: none from the client's side (user, end user, IP, agent,
    # the raw requested model) and no key hash (the key's name is the api_key_alias label).
    litellm_settings["require_auth_for_metrics_endpoint"] = False
    litellm_settings["prometheus_exclude_labels"] = list(PROMETHEUS_EXCLUDED_LABELS)
    if not settings["litellm_database"]:
        # Without LiteLLM's database there are no LiteLLM users, teams, orgs, customers or virtual-key budgets
        # to report: off, so no request pays for looking them up (bench/metrics_trim.py measures it).
        litellm_settings["prometheus_exclude_metrics"] = list(PROMETHEUS_EXCLUDED_METRICS)
    general = {"master_key": "os.environ/LITELLM_MASTER_KEY", "custom_auth": "keyauth.user_api_key_auth"}
    if settings["litellm_database"]:
        general["database_url"] = "os.environ/DATABASE_URL"

    return {
        "model_list": model_list,
        "router_settings": router,
        "litellm_settings": litellm_settings,
        "general_settings": general,
    }


def litellm_env(settings: dict, redis: dict | None, usage_db: str | None) -> str:
    """litellm.env: LiteLLM's non-secret environment (Redis target and circuit breaker, usage database, log level)."""
    breaker = {"failures": settings["litellm_redis_breaker_failures"], "window": settings["litellm_redis_breaker_window"],
               "recovery": settings["litellm_redis_breaker_recovery"]}
    return template("litellm/litellm.env.j2", redis=redis, breaker=breaker, extra_env=settings["litellm_extra_env"],
                    log_level=settings["litellm_log_level"], usage_db=usage_db)


def litellm_config_yaml(spec: GatewaySpec, settings: dict, redis: dict | None, fingerprints: dict | None = None) -> str:
    body = yaml.safe_dump(litellm_config(spec, settings, redis, fingerprints), sort_keys=False, default_flow_style=False)
    return "# Rendered by gatekit from " + spec.path.name + "; edits are overwritten on the next deploy.\n" + body


def scram_sha256_verifier(password: str, salt_seed: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier, so the plaintext never travels to or rests on the DB host.

    The salt is derived from the password and role so re-runs produce the same verifier (idempotency)
    while different roles/passwords still get different salts.
    """
    salt = hmac.new(password.encode(), b"gatekit-pg-salt:" + salt_seed.encode(), hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def redis_acl_hash(password: str) -> str:
    """Redis ACL `#<sha256>` form: redis.conf holds a hash, never the password."""
    return hashlib.sha256(password.encode()).hexdigest()
