"""Every tunable of the kit, defaulted in one place, each with a one-line meaning.

Names are flat and role-prefixed. A gateway spec's `settings:` mapping overrides them for the whole
environment; pyinfra host data with the same name overrides them for one host.
"""

DEFAULTS: dict[str, object] = {
    # --- nginx -------------------------------------------------------------------------------
    "nginx_https_port": 443,  # TLS listener clients use
    "nginx_http_port": 80,  # plain listener; only redirects to HTTPS
    "nginx_server_name": "_",  # server_name; "_" answers any Host
    "nginx_tls_cert": "",  # path of an existing certificate on the host; empty = self-signed generated there
    "nginx_tls_key": "",  # path of the matching private key on the host
    "nginx_selfsigned_dir": "/etc/gatekit/tls",  # where the self-signed pair is generated when none is given
    "nginx_read_timeout": 600,  # seconds nginx waits between two reads from LiteLLM (long streams)
    "nginx_send_timeout": 600,  # seconds nginx waits between two writes to LiteLLM
    "nginx_keepalive_timeout": 0,  # seconds nginx keeps a client's idle connection for its next request; 0 = one request per connection, so a reload (every switch, rotation, recycle) never closes a connection a client is about to reuse (see README)
    "nginx_client_max_body_size": "20m",  # largest request body (prompts with images/files)
    "nginx_upstream_keepalive": 32,  # idle keepalive connections kept open to LiteLLM per worker
    "nginx_upstream_keepalive_timeout": 60,  # seconds nginx keeps an idle connection to LiteLLM; must be below litellm_keepalive_timeout
    "nginx_admin_allow": ["127.0.0.1/32", "::1/128"],  # networks (CIDR) that reach LiteLLM's admin routes (UI, management, /health, /metrics) through nginx; the public reaches only the client API
    "nginx_metrics_port": 9464,  # plain-HTTP listener on the gateway's private address serving only each instance's /metrics/PORT/, to the monitoring hosts and nginx_admin_allow (no secrets in metrics; the TLS port's admin surface stays closed to them)
    # --- redis -------------------------------------------------------------------------------
    "redis_port": 6379,  # TCP port Redis listens on (loopback + private address only)
    "redis_maxmemory": "256mb",  # Redis memory ceiling
    "redis_maxmemory_policy": "allkeys-lru",  # what Redis evicts at the ceiling (LiteLLM keys are all cache-like)
    "redis_litellm_db": 1,  # the DB index reserved for LiteLLM (0 left to other users)
    "redis_password_secret": "redis_password",  # vault secret holding the Redis password
    # --- postgres ----------------------------------------------------------------------------
    "postgres_port": 5432,  # TCP port PostgreSQL listens on
    "postgres_version": 0,  # PostgreSQL major version whose cluster config gatekit writes (/etc/postgresql/N/main); 0 = the host's: its installed cluster, else what its apt installs (Debian 12: 15, Debian 13: 17)
    "postgres_db": "litellm",  # database created for LiteLLM
    "postgres_user": "litellm",  # role created for LiteLLM (scram-sha-256)
    "postgres_password_secret": "postgres_password",  # vault secret holding that role's password
    # --- litellm -----------------------------------------------------------------------------
    "litellm_user": "litellm",  # system user the proxy runs as
    "litellm_home": "/opt/litellm",  # venv, launcher and state live here
    "litellm_config_dir": "/etc/litellm",  # rendered config.yaml (no secrets in it)
    "litellm_requirements": "requirements/litellm.lock",  # hash-locked requirements file: requirements/... = shipped with the kit, another relative path = from the current directory
    "litellm_installer": "uv",  # "uv" (hash-locked in requirements/uv.lock; installs and compiles on all cores) or "pip"
    "litellm_pip_index_url": "",  # package index URL (pip and uv) for mirrored installs; empty = PyPI
    "litellm_pip_find_links": "",  # wheelhouse URL or host path (--find-links); with it no index is used
    "litellm_ports": [4001, 4002, 4003, 4004],  # litellm@PORT instances in two equal halves, blue and green: every instance of the live set serves behind nginx at once (one dying costs only its in-flight requests), rotation starts the other set; never 4000
    "litellm_bind": "127.0.0.1",  # LiteLLM listens here; nginx is the only way in
    "litellm_workers": 1,  # uvicorn worker processes per instance (spawned); 1 = no supervisor process, the instances of a set share the load
    "litellm_max_requests_before_restart": 0,  # recycle each worker after this many requests (slow leaks), with litellm_workers >= 2 only (uvicorn's supervisor keeps serving meanwhile); 0 = off. Single-worker instances recycle by exiting, and the instances of a set, equally loaded, exited together (measured: 73 and 422 failed requests in two 240 s runs at 100 requests/s)
    "litellm_max_requests_jitter": 1000,  # spread worker recycling so the workers of an instance never restart together
    "litellm_keepalive_timeout": 75,  # seconds uvicorn keeps an idle connection open; above nginx's so nginx always closes first (uvicorn's default 5 s races nginx's reuse: sporadic 502s)
    "litellm_worker_healthcheck_timeout": 120,  # seconds uvicorn's supervisor waits for a worker before killing it (its default 5 s kills workers starting on a busy CPU, in a loop)
    "litellm_memory_high": "1280M",  # systemd MemoryHigh: throttling + reclaim start here
    "litellm_memory_max": "1536M",  # systemd MemoryMax: the kernel kills the instance above this
    "litellm_recycle_memory_percent": 85,  # an instance of the live set using this share of litellm_memory_high is drained (nginx sends it nothing new) and restarted, one at a time, before MemoryHigh throttles it; 0 = off
    "litellm_recycle_max_age": 0,  # seconds: an instance of the live set running longer is recycled the same way (slow leaks, fragmentation); 0 = off
    "litellm_recycle_min_age": 600,  # seconds: a younger instance is never recycled (one already above the threshold at start would otherwise restart in a loop)
    "litellm_recycle_interval": 30,  # seconds between two checks (gatekit-recycle.timer); each check recycles at most one instance
    "litellm_restart_sec": 2,  # RestartSec: pause before systemd restarts a dead instance
    "litellm_start_limit_burst": 10,  # StartLimitBurst: restarts allowed within the interval below
    "litellm_start_limit_interval": 300,  # StartLimitIntervalSec
    "litellm_graceful_timeout": 30,  # longest in-flight request drained on SIGTERM (stop, rotation)
    "litellm_timeout_stop_sec": 45,  # TimeoutStopSec: must exceed the graceful timeout
    "litellm_install_timeout": 1200,  # seconds the background venv install may take before it is stopped and the deploy fails
    "litellm_ready_timeout": 120,  # seconds the deploy waits for /health/readiness after a (re)start
    "litellm_request_timeout": 600,  # LiteLLM's upstream request timeout in seconds (a fallback: every deployment gets the two below)
    "litellm_deployment_timeout": 60,  # seconds one attempt at a deployment waits for a call that is not streamed (its whole answer comes at once); then it is a timeout: retried per retry.timeout_errors, the deployment cooled down, then the model's fallbacks. A deployment's own `timeout` overrides it
    "litellm_deployment_stream_timeout": 30,  # the same for a streamed call: seconds until its first chunk, and between two chunks. A deployment's own `stream_timeout` overrides it
    "litellm_redis_timeout": 0.25,  # seconds LiteLLM waits for one Redis call or connection before it counts as failed: what a silent (cut-off) Redis adds to a request per Redis call until the breaker opens. LiteLLM's own default, 5 s, put p99 at 10 s
    "litellm_redis_breaker_failures": 5,  # failed Redis calls in a row that open LiteLLM's Redis circuit breaker: Redis is skipped, rpm/tpm, cooldowns and budgets count per instance
    "litellm_redis_breaker_window": 1.0,  # seconds a streak of Redis timeouts must span before it opens the breaker (LiteLLM's guard against one stalled event loop timing out many calls at once)
    "litellm_redis_breaker_recovery": 10,  # seconds the breaker stays open before one call tries Redis again: shared state resumes at most this long after Redis answers again
    "litellm_master_key_secret": "litellm_master_key",  # vault secret holding the proxy master key
    "litellm_database": False,  # True = LiteLLM uses PostgreSQL (needs Prisma engines, see README)
    "litellm_prisma_engines_mirror": "",  # PRISMA_ENGINES_MIRROR for hosts that cannot reach Prisma's server
    "litellm_log_level": "WARNING",  # LITELLM_LOG, LiteLLM's and uvicorn's log level: DEBUG, INFO, WARNING, ERROR or CRITICAL; INFO logs two lines per request (the router's call and uvicorn's access line, CPU on the hot path) that nginx's access log already holds
    "litellm_extra_env": {},  # extra non-secret environment for the proxy
    "litellm_egress_allow": [],  # addresses/CIDRs LiteLLM may connect to (providers' IPs; Redis and PostgreSQL are added); empty = no egress filter. IPs only: systemd filters packets, not host names
    "litellm_restart_on_secret_change": False,  # let a deploy switch a running gateway to a changed key (blue/green, as rotate_keys.py does); default: refuse and point to rotate_keys.py
    "rotation_settle_sec": 1.0,  # pause after the nginx switch before the old instance stops
    # --- rollout: the order a change that restarts LiteLLM (a key rotation, a deploy's new config) reaches the gateways; fleet-wide, spec settings only ---
    "rollout_first_gateway": "",  # the gateway that takes a change alone first, canaries passed before any other starts; empty = the first of the inventory's gateways
    "rollout_batch": "1",  # after the first, how many gateways change side by side: a count ("2") or a share of the rest ("25%"); the first failure stops every later batch
    # --- monitoring (hosts in the optional `monitoring` group run Prometheus; every host runs node_exporter) ---
    "monitoring_prometheus_port": 9090,  # Prometheus' HTTP API and UI, on the monitoring host's private address and loopback only
    "monitoring_scrape_interval": 15,  # seconds between scrapes (and between rule evaluations)
    "monitoring_retention": "15d",  # how long Prometheus keeps samples (its --storage.tsdb.retention.time)
    "monitoring_node_exporter_port": 9100,  # node_exporter on every host's private address
    "monitoring_redis_exporter_port": 9121,  # redis_exporter on the Redis host's private address
    "monitoring_postgres_exporter_port": 9187,  # postgres_exporter on the PostgreSQL host's private address
    "monitoring_alertmanagers": [],  # "host:port" of Alertmanagers Prometheus sends firing alerts to (email, chat, paging); empty = alerts are seen in Prometheus (/alerts, /api/v1/alerts) only
    "monitoring_blackbox_port": 9115,  # blackbox_exporter on the monitoring host's loopback: probes each gateway's public liveness and TLS certificate
    "monitoring_error_ratio": 0.05,  # alert when more than this share of a provider's calls fail (5xx or timeouts) over 5 min
    "monitoring_429_ratio": 0.05,  # alert when more than this share of a provider's calls are answered 429 over 5 min
    "monitoring_p99_seconds": 30.0,  # alert when a model group's p99 total request latency exceeds this over 10 min (streams included)
    "monitoring_cert_days": 14,  # alert when a gateway's TLS certificate expires within this many days
    "monitoring_budget_burn": 1.0,  # alert when a provider budget's spend rate over the last hour, kept up, would exceed this multiple of the budget in its period
}

# LiteLLM picks a random port when 4000 is taken, silently: never let it be asked for.
FORBIDDEN_LITELLM_PORTS = frozenset({4000})

# Releases known to be compromised; refused wherever a LiteLLM version appears.
COMPROMISED_LITELLM_VERSIONS = frozenset({"1.82.7", "1.82.8"})
