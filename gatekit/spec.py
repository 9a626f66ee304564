"""The gateway spec: one typed description of models, fallbacks, retries, budgets and role settings.

`load_spec()` reads the YAML an inventory points at and refuses, before any host is touched, everything
that is known to break a gateway in production. Every error names the file, the field and the fix.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import itertools
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gatekit import providers
from gatekit.defaults import COMPROMISED_LITELLM_VERSIONS, DEFAULTS, FORBIDDEN_LITELLM_PORTS
from gatekit.onhost.layout import Layout
from gatekit.resources import requirements_file

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
SECRET_RE = r"^[a-z][a-z0-9_]{0,63}$"

# The retry classes LiteLLM's router knows, as spelled in the spec -> LiteLLM's RetryPolicy field.
RETRY_CLASSES = {
    "auth_errors": "AuthenticationErrorRetries",
    "bad_request_errors": "BadRequestErrorRetries",
    "rate_limit_errors": "RateLimitErrorRetries",
    "content_policy_errors": "ContentPolicyViolationErrorRetries",
    "timeout_errors": "TimeoutErrorRetries",
    "server_errors": "InternalServerErrorRetries",
}
# Retrying these multiplies spend and turns a rate limit into an avalanche: always 0.
NEVER_RETRIED = {
    "auth_errors": "401/403 (a bad key stays bad)",
    "bad_request_errors": "400 (the same request fails the same way)",
    "rate_limit_errors": "429 (retries deepen the rate limit; let fallbacks or the client back off)",
}


class SpecError(Exception):
    """Bad input: every problem found, each naming file, field and fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Price(_Strict):
    input_per_1m: float = Field(ge=0, allow_inf_nan=False, description="USD per 1M input tokens")
    output_per_1m: float = Field(ge=0, allow_inf_nan=False, description="USD per 1M output tokens")

    def dearer_than(self, other: Price) -> bool:
        return self.input_per_1m > other.input_per_1m or self.output_per_1m > other.output_per_1m


class Deployment(_Strict):
    provider: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="LiteLLM provider prefix: openai, anthropic, ...")
    model: str = Field(min_length=1, max_length=512, description="the provider's model name")
    api_base: str | None = Field(default=None, pattern=r"^https?://[^\s/]+",
                                 description="provider endpoint (optional where LiteLLM has one: gatekit/providers.py)")
    api_version: str | None = Field(default=None, pattern=providers.AZURE_API_VERSION_RE,
                                    description="Azure's api-version, pinned (azure only)")
    secret: str = Field(pattern=SECRET_RE, description="vault secret holding this deployment's API key")
    weight: float = Field(default=1.0, allow_inf_nan=False)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    timeout: float | None = Field(default=None, gt=0, le=86400, allow_inf_nan=False, strict=True,
                                  description="seconds per attempt, not streamed (settings.litellm_deployment_timeout)")
    stream_timeout: float | None = Field(default=None, gt=0, le=86400, allow_inf_nan=False, strict=True,
                                         description="seconds to the first chunk and between chunks, streamed "
                                                     "(settings.litellm_deployment_stream_timeout)")

    @field_validator("api_base")
    @classmethod
    def _plain_url(cls, value: str | None) -> str | None:
        problem = url_problem(value) if value is not None else ""
        if problem:
            raise ValueError(f"{problem}; use a plain http(s) URL such as https://api.openai.com/v1")
        return value

    @field_validator("model")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not value.isprintable() or value != value.strip():
            raise ValueError("control or invisible characters, or surrounding spaces, in the model name")
        return value


class Model(_Strict):
    name: str = Field(pattern=NAME_RE, description="public model name clients ask for")
    price: Price
    deployments: list[Deployment]


class FallbackTarget(_Strict):
    model: str
    allow_pricier: bool = False  # explicit consent to fall back into a more expensive model


class Fallback(_Strict):
    from_: str = Field(alias="from")
    to: list[str | FallbackTarget] = Field(min_length=1)

    def targets(self) -> list[FallbackTarget]:
        return [t if isinstance(t, FallbackTarget) else FallbackTarget(model=t) for t in self.to]


class Retry(_Strict):
    num_retries: int = Field(default=2, ge=0, le=5, description="retries for retryable errors (5xx, timeouts)")
    timeout_errors: int = Field(default=2, ge=0, le=5)
    server_errors: int = Field(default=2, ge=0, le=5)
    content_policy_errors: int = Field(default=0, ge=0, le=5)
    auth_errors: int = Field(default=0, ge=0)
    bad_request_errors: int = Field(default=0, ge=0)
    rate_limit_errors: int = Field(default=0, ge=0)
    allowed_fails: int = Field(default=3, ge=1, description="failures per minute before a deployment cools down")
    cooldown_time: int = Field(default=30, ge=1, description="seconds a failing deployment is skipped")

    def policy(self) -> dict[str, int]:
        return {litellm_name: getattr(self, field) for field, litellm_name in RETRY_CLASSES.items()}


class Budget(_Strict):
    max_usd: float = Field(gt=0, allow_inf_nan=False)
    duration: str = Field(pattern=r"^[1-9][0-9]*[smhd]$", description="window such as 1d, 30d, 12h")


class Budgets(_Strict):
    proxy: Budget | None = None  # proxy-wide; LiteLLM enforces it only with a database
    providers: dict[str, Budget] = Field(default_factory=dict)  # per provider, enforced via Redis


class GatewaySpec(_Strict):
    version: Literal[1]
    vault: str = Field(description="encrypted secrets file, relative to this spec")
    models: list[Model] = Field(min_length=1)
    fallbacks: list[Fallback] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
    retry: Retry = Field(default_factory=Retry)
    budgets: Budgets = Field(default_factory=Budgets)
    settings: dict[str, Any] = Field(default_factory=dict)
    client_keys: str | None = Field(default=None, description="client keys file (hashes and limits), relative to this spec")

    @field_validator("vault", "client_keys")
    @classmethod
    def _vault_relative(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("empty path")
        if v is not None and (not v.isprintable() or len(v) > 1024):
            raise ValueError("control or invisible characters in the path, or longer than 1024 characters")
        return v

    # Filled by load_spec: where the spec came from, for messages and relative paths.
    _path: Path = Path("<spec>")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def vault_path(self) -> Path:
        return (self._path.parent / self.vault).resolve()

    @property
    def keys_path(self) -> Path:
        """Where the client keys live: `client_keys`, else beside the spec (prod.gateway.yaml -> prod.keys.yaml)."""
        if self.client_keys:
            return (self._path.parent / self.client_keys).resolve()
        name = self._path.name
        stem = name[: -len(".gateway.yaml")] if name.endswith(".gateway.yaml") else self._path.stem
        return (self._path.parent / f"{stem}.keys.yaml").resolve()

    def model(self, name: str) -> Model | None:
        return next((m for m in self.models if m.name == name), None)

    def secrets_used(self) -> set[str]:
        return {d.secret for m in self.models for d in m.deployments}

    def public_names(self) -> list[str]:
        """Every name a client may call: the models, then the aliases (doctor's calls, the switch's canaries)."""
        return [*(m.name for m in self.models), *self.aliases]


_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@-]{1,80}")


def shown(value: object, limit: int = 80) -> str:
    """`value` for a one-line message: its repr (control and invisible characters escaped), cut to `limit`."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escaped(text: str, limit: int = 120) -> str:
    """`text` inside a one-line message, unquoted: line breaks, control and non-ASCII characters escaped."""
    out = text.encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def key_shown(key: object) -> str:
    """A mapping key as part of a field path: as written when plain, else quoted and escaped."""
    return key if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key) else shown(key, 40)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + key_shown(part)
    return out or "(top level)"


def _fix_for(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "remove it or fix its spelling (see inventories/example.gateway.yaml for every field)"
    if kind == "missing":
        return "add it"
    if kind == "literal_error":
        return f"use {err.get('ctx', {}).get('expected', 'a supported value')}"
    if kind == "string_pattern_mismatch":
        return f"use a value matching {err.get('ctx', {}).get('pattern')}"
    return "correct the value"


def _pydantic_problems(path: Path, exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("str", "FallbackTarget"))
        problems.append(f"{path}: {_loc(loc)}: {err['msg']}. Fix: {_fix_for(err)}.")
    return sorted(set(problems))


# MemoryHigh=/MemoryMax= as systemd reads them (its suffixes are capitals; 0 is out of range).
_SYSTEMD_SIZE_RE = re.compile(r"[1-9][0-9]{0,18}[KMGT]?")


def parse_size(value: object) -> int:
    """A systemd/Redis-style size ('1536M', '2G', '512mb', 1048576) in bytes."""
    # ASCII digits only (int() would read other scripts' digits, which systemd does not); no spaces: the value
    # is rendered as written; below 2**63 bytes, what systemd can hold.
    m = re.fullmatch(r"([0-9]{1,19})([kmgt]?)b?", str(value), re.IGNORECASE)
    size = int(m.group(1)) * 1024 ** "_kmgt".index(m.group(2).lower() or "_") if m else -1
    if not 0 <= size < 2**63:
        raise ValueError(f"not a size: {shown(value, 40)} (use e.g. 1536M or 2G)")
    return size


def memory_max_problem(where: str, memory_max: object, host_memory_mb: object) -> str | None:
    """The one-line problem when MemoryMax (`litellm_memory_max`) is above a host's memory, else None.

    `host_memory_mb`: the host's memory in MB (the inventory's memory_mb, or what the host reports);
    None or 0 = unknown, nothing to compare. A memory_max that is not a size is reported by check_settings,
    not here (None)."""
    if not host_memory_mb or not isinstance(host_memory_mb, int) or isinstance(host_memory_mb, bool):
        return None
    try:
        size = parse_size(memory_max)
    except ValueError:
        return None
    if size <= host_memory_mb * 1024 * 1024:
        return None
    return (f"{where}: settings.litellm_memory_max: MemoryMax ({memory_max}) is above the host's memory "
            f"({host_memory_mb} MB), so it never protects the host. Fix: set litellm_memory_max below the host's memory.")


def pricier_without_consent(spec: GatewaySpec, src: str, dst: str) -> bool:
    """True when a fallback from model `src` to model `dst` goes to a more expensive model (input or output
    price) and no fallback of the spec from `src` lists `dst` with allow_pricier: true. False when either
    is not a model of the spec (that is reported as an unknown model, not as a price)."""
    src_model, dst_model = spec.model(src), spec.model(dst)
    if src_model is None or dst_model is None or not dst_model.price.dearer_than(src_model.price):
        return False
    return not any(fb.from_ == src and any(t.model == dst and t.allow_pricier for t in fb.targets())
                   for fb in spec.fallbacks)


# LiteLLM's hash locks: the lock installed decides the version (roles/venv.py installs it).
DEFAULT_LOCK, DATABASE_LOCK = "requirements/litellm.lock", "requirements/litellm-db.lock"
_LITELLM_PIN_RE = re.compile(r"^litellm(?:\[[^\]]*\])?==([^\s;\\]+)", re.IGNORECASE | re.MULTILINE)


def lock_name(settings: dict) -> str:
    """The lock a host with these (merged) settings installs: litellm_requirements, whose default becomes
    the database lock with litellm_database."""
    name = settings["litellm_requirements"]
    return DATABASE_LOCK if settings["litellm_database"] and name == DEFAULT_LOCK else name


@functools.lru_cache(maxsize=32)
def _lock_pin(path: str, mtime_ns: int) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    pins = _LITELLM_PIN_RE.findall(text)
    return pins[0] if pins else None


def locked_litellm_version(name: str) -> str | None:
    """The LiteLLM version the lock `name` (a litellm_requirements value) pins, or None when it cannot be read."""
    path = requirements_file(name)
    try:
        return _lock_pin(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError):
        return None


def _type_problem(key: str, value: object, where: str) -> str | None:
    """A value of another type than the default's: a bool is no number, an int is a float."""
    default = DEFAULTS[key]
    expected = type(default)
    if isinstance(value, bool):
        ok = expected is bool
    elif expected is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, expected)
    if ok:
        return None
    return (f"{where}: settings.{key}: expected {expected.__name__}, got {shown(value)}. "
            f"Fix: use a {expected.__name__} like the default {default!r}.")


# Every TCP listener a host may run (one host may run every role), in the order they claim their port.
_LISTENERS = ("nginx_https_port", "nginx_http_port", "nginx_metrics_port", "litellm_ports", "redis_port", "postgres_port",
              "monitoring_prometheus_port", "monitoring_node_exporter_port", "monitoring_redis_exporter_port",
              "monitoring_postgres_exporter_port", "monitoring_blackbox_port")


def _port_problems(merged: dict, given: set[str], where: str) -> list[str]:
    """Two listeners on one port: the clash is reported at the setting given here (the inherited one
    claimed the port first), naming both."""
    order = [k for k in _LISTENERS if k not in given] + [k for k in _LISTENERS if k in given]
    taken: dict[int, str] = {}
    problems = []
    for key in order:
        value = merged[key]
        ports = value if key == "litellm_ports" and isinstance(value, list) else [value]
        for port in ports:
            if not isinstance(port, int) or isinstance(port, bool) or key == "litellm_ports" and not 1024 <= port <= 65535:
                continue  # litellm_ports' own check reports it
            other = taken.setdefault(port, key)
            if other != key:
                problems.append(f"{where}: settings.{key}: port {port} is also {other}'s; each listener needs a port of "
                                f"its own (one host may run every role). Fix: give {key} or {other} another port.")
                break
    return problems


def check_settings(settings: dict[str, Any], where: str, host_memory_mb: int | None = None,
                   base: dict[str, Any] | None = None) -> list[str]:
    """Problems in a settings mapping (spec-wide or one host's), each naming `where` and the fix.

    `base`: settings already checked that these override (a host's are checked over the spec's); the checks
    that combine several settings see DEFAULTS < base < settings. Every problem is reported at once: a value
    of the wrong type or out of range is reported alone, and the combined checks see the default in its place."""
    problems: list[str] = []
    bad: set[str] = set()
    for key, value in settings.items():
        if not isinstance(key, str):
            problems.append(f"{where}: settings: {shown(key)} is not a setting name. Fix: see gatekit/defaults.py "
                            "for every setting.")
            continue
        if key not in DEFAULTS:
            close = difflib.get_close_matches(key, DEFAULTS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see gatekit/defaults.py for every setting"
            problems.append(f"{where}: settings.{key_shown(key)}: unknown setting. Fix: {hint}")
            continue
        problem = _type_problem(key, value, where)
        if problem is None and key in BOUNDS:
            low, high = BOUNDS[key]
            if not (low <= value <= high) and not (key in ZERO_MEANS_THE_HOSTS and value == 0):  # also NaN
                zero = "0 (the host's) or " if key in ZERO_MEANS_THE_HOSTS else ""
                problem = (f"{where}: settings.{key}: {shown(value)} is out of range. "
                           f"Fix: {zero}a value from {low} to {high}.")
        if problem:
            problems.append(problem)
            bad.add(key)

    given = {k for k in settings if isinstance(k, str) and k in DEFAULTS and k not in bad}
    merged = {**DEFAULTS, **(base or {}), **{k: settings[k] for k in given}}
    combined = _combined_problems(merged, given, where, host_memory_mb)
    # A combined problem that involves a setting already reported (it names it) would be about that
    # setting's default, not about the value given: left out.
    return problems + [p for p in combined if not any(re.search(rf"\b{k}\b", p[len(where):]) for k in bad)]


def _combined_problems(merged: dict, given: set[str], where: str, host_memory_mb: int | None) -> list[str]:
    """The checks of values that have the right type and range, alone and together."""
    problems = _port_problems(merged, given, where)
    sizes = {}
    for key in ("litellm_memory_high", "litellm_memory_max"):
        try:
            sizes[key] = parse_size(merged[key])
        except ValueError as exc:
            problems.append(f"{where}: settings.{key}: {exc}. Fix: a size like the default {DEFAULTS[key]} "
                            "(digits, then K, M, G or T).")
            continue
        if not _SYSTEMD_SIZE_RE.fullmatch(merged[key]):
            # systemd ignores a MemoryHigh=/MemoryMax= it cannot read (lowercase suffix, "mb", 0): no limit at all.
            del sizes[key]
            problems.append(f"{where}: settings.{key}: {shown(merged[key], 40)} is not a size systemd reads (it would "
                            "ignore the line: the instances would run without that limit). Fix: digits, then K, M, G "
                            f"or T in capitals, above 0, like the default {DEFAULTS[key]}.")
    if len(sizes) == 2 and sizes["litellm_memory_high"] >= sizes["litellm_memory_max"]:
        problems.append(
            f"{where}: settings.litellm_memory_high: MemoryHigh ({merged['litellm_memory_high']}) must be below "
            f"MemoryMax ({merged['litellm_memory_max']}); otherwise the kernel kills before it ever throttles. "
            "Fix: lower litellm_memory_high (about 80-85% of litellm_memory_max)."
        )
    if "litellm_memory_max" in sizes:
        problem = memory_max_problem(where, merged["litellm_memory_max"], host_memory_mb)
        if problem:
            problems.append(problem)
    if merged["nginx_upstream_keepalive_timeout"] >= merged["litellm_keepalive_timeout"]:
        problems.append(
            f"{where}: settings.nginx_upstream_keepalive_timeout: {merged['nginx_upstream_keepalive_timeout']} s must "
            f"be below litellm_keepalive_timeout ({merged['litellm_keepalive_timeout']} s): when LiteLLM closes an idle "
            "connection first, a request nginx sends on it at that moment fails with 502. "
            "Fix: lower nginx_upstream_keepalive_timeout or raise litellm_keepalive_timeout."
        )
    ports = merged["litellm_ports"]
    if not all(isinstance(p, int) and not isinstance(p, bool) and 1024 <= p <= 65535 for p in ports):
        problems.append(f"{where}: settings.litellm_ports: {shown(ports)}. Fix: list an even number of ports between "
                        "1024 and 65535, e.g. [4001, 4002, 4003, 4004].")
    elif set(ports) & FORBIDDEN_LITELLM_PORTS:
        problems.append(
            f"{where}: settings.litellm_ports: 4000 is LiteLLM's default port, and LiteLLM silently moves to a "
            "random port when it is taken. Fix: use another port, e.g. 4001."
        )
    elif len(set(ports)) != len(ports):
        problems.append(f"{where}: settings.litellm_ports: duplicate port. Fix: list each port once.")
    elif len(ports) % 2 or not 2 <= len(ports) <= 16:
        problems.append(
            f"{where}: settings.litellm_ports: {len(ports)} ports; gatekit needs two equal halves, a blue and a green set "
            "(the live set serves, key rotation starts the other), 2 to 16 ports in all. "
            "Fix: list an even number of ports, e.g. [4001, 4002, 4003, 4004]."
        )
    if merged["litellm_workers"] == 1 and merged["litellm_max_requests_before_restart"]:
        problems.append(
            f"{where}: settings.litellm_max_requests_before_restart: with 1 worker an instance recycles by exiting, and "
            "the instances of the live set, equally loaded, exit at about the same time (every request refused until "
            "one is back). Fix: set litellm_workers: 2 or more (workers recycle while their supervisor serves), or "
            "litellm_max_requests_before_restart: 0."
        )
    if merged["litellm_timeout_stop_sec"] <= merged["litellm_graceful_timeout"]:
        problems.append(
            f"{where}: settings.litellm_timeout_stop_sec: must exceed litellm_graceful_timeout "
            f"({merged['litellm_graceful_timeout']}s), or systemd kills requests still draining. "
            "Fix: raise litellm_timeout_stop_sec."
        )
    if merged["litellm_log_level"] not in LOG_LEVELS:
        problems.append(
            f"{where}: settings.litellm_log_level: {shown(merged['litellm_log_level'], 40)}. "
            f"Fix: use one of {', '.join(LOG_LEVELS)} (default WARNING)."
        )
    if merged["litellm_installer"] not in ("uv", "pip"):
        problems.append(
            f"{where}: settings.litellm_installer: {shown(merged['litellm_installer'])}. "
            "Fix: use \"uv\" (default) or \"pip\"."
        )
    if bool(merged["nginx_tls_cert"]) != bool(merged["nginx_tls_key"]):
        problems.append(
            f"{where}: settings.nginx_tls_cert/nginx_tls_key: give both or neither "
            "(neither = a self-signed certificate is generated on the host). Fix: set the missing one."
        )
    problems += _host_path_problems(merged, where)
    problems += _nginx_problems(merged, where)
    problems += _network_list_problems(merged, "litellm_egress_allow", where, "is no allowlist at all")
    problems += _extra_env_problems(merged["litellm_extra_env"], where)
    problems += _alertmanager_problems(merged["monitoring_alertmanagers"], where)
    for key, (pattern, fix) in _TOKEN_RULES.items():
        value = merged[key]
        if not re.fullmatch(pattern, value):
            problems.append(f"{where}: settings.{key}: {shown(value)} is not accepted here. Fix: {fix}.")
    problems += _url_setting_problems(merged, where)
    problems += _lock_problems(merged, where)
    if not _USER_RE.fullmatch(merged["litellm_user"]) or merged["litellm_user"] == "root":
        problems.append(
            f"{where}: settings.litellm_user: {shown(merged['litellm_user'])} is not a system user name gatekit can "
            "create (lowercase letters, digits, _ and -, at most 32, not root). Fix: use e.g. 'litellm'."
        )
    try:
        bind_ok = ipaddress.IPv4Address(merged["litellm_bind"]).is_loopback
    except (ValueError, TypeError):
        bind_ok = False
    if not bind_ok:
        # Any other address would let clients past nginx, to the admin routes it keeps from the public.
        problems.append(f"{where}: settings.litellm_bind: {shown(merged['litellm_bind'])} is not an IPv4 loopback "
                        "address (LiteLLM must be reachable only through nginx). Fix: use 127.0.0.1.")
    return problems


def _url_setting_problems(merged: dict, where: str) -> list[str]:
    problems = []
    for key in ("litellm_pip_index_url", "litellm_pip_find_links", "litellm_prisma_engines_mirror"):
        value = merged[key]
        if not value or (key == "litellm_pip_find_links" and _PATH_RE.fullmatch(value)):
            continue
        problem = url_problem(value) if "://" in value else "not a URL"
        if problem == _URL_CREDENTIALS and key != "litellm_prisma_engines_mirror":
            problems.append(
                f"{where}: settings.{key}: the URL carries credentials (a user name or password); they would sit in "
                "pip's or uv's process arguments, the install script and the journal. Fix: drop them from the URL and "
                "put them in /root/.netrc on the hosts (pip and uv read it)."
            )
        elif problem:
            problems.append(f"{where}: settings.{key}: {shown(value)}: {problem}. Fix: a plain http(s) URL"
                            + (" or an absolute path on the host." if key == "litellm_pip_find_links" else "."))
        elif key == "litellm_prisma_engines_mirror" and "%" in value:
            problems.append(f"{where}: settings.{key}: {shown(value)}: '%' starts a specifier in the systemd unit it "
                            "is written to. Fix: a URL without '%'.")
    return problems


def _lock_problems(merged: dict, where: str) -> list[str]:
    """The lock the hosts install must not pin a compromised LiteLLM (refused here, before any host is touched;
    roles/venv.py refuses it again when it installs). An unreadable lock is reported by the install."""
    name = lock_name(merged)
    version = locked_litellm_version(name)
    if version in COMPROMISED_LITELLM_VERSIONS:
        return [f"{where}: settings.litellm_requirements: {escaped(name)} pins litellm=={escaped(version, 40)}, a compromised release. "
                f"Fix: use the kit's {DEFAULT_LOCK}, or regenerate the lock at another version."]
    return []


_URL_CREDENTIALS = "credentials in the URL would land in config.yaml; keep keys in the vault"
_NETLOC_RE = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]@]+))(?::(?P<port>[0-9]{1,5}))?")
_URL_HOST_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*\.?")


def url_problem(value: str) -> str:
    """Why `value` is not a plain http(s) URL (no credentials, whitespace, query or fragment), or ''.
    Never raises: whatever urllib cannot split is a problem too."""
    if not isinstance(value, str):
        return "not a string"
    if not value.isprintable() or any(c.isspace() for c in value):
        return "whitespace or control characters (or invisible ones) in the URL"
    if len(value) > 2048:
        return "longer than 2048 characters"
    try:
        parts = urlsplit(value)
        host = parts.hostname
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        return "not a URL urllib can read (a bracket or character out of place)"
    if parts.scheme not in ("http", "https") or not host:
        return "not an http(s) URL with a host"
    if has_credentials:
        return _URL_CREDENTIALS
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return "a query or fragment has no place in an API base"
    if any(c in value for c in "\"'<>{}|^`\\"):
        return "characters that are not valid in a URL"
    # The host and port as written, not as urllib reads them (it lets through `[::1]x` and `host:`).
    m = _NETLOC_RE.fullmatch(parts.netloc)
    if not m:
        return "not a host name or [IPv6 address], then an optional :port"
    if m["port"] is not None and not 1 <= int(m["port"]) <= 65535:
        return "an invalid port"
    if m["ip6"] is not None:
        try:
            ipaddress.IPv6Address(m["ip6"])
        except ValueError:
            return "an invalid IPv6 address"
    elif len(m["name"]) > 253 or not _URL_HOST_RE.fullmatch(m["name"].lower()):
        return "an invalid host name (letters, digits, '-' and '.'; an international name in its xn-- form)"
    return ""


# Settings whose 0 means "read it from the host" (gatekit/defaults.py), besides their range.
ZERO_MEANS_THE_HOSTS = ("postgres_version",)
# (lowest, highest) of every number setting: what the service, nginx or Redis can actually take.
_HOUR, _DAY = 3600, 86400
BOUNDS = {
    "nginx_https_port": (1, 65535), "nginx_http_port": (1, 65535), "redis_port": (1, 65535), "postgres_port": (1, 65535),
    "nginx_read_timeout": (1, _DAY), "nginx_send_timeout": (1, _DAY), "nginx_keepalive_timeout": (0, _HOUR),
    "nginx_upstream_keepalive": (1, 10000),
    "nginx_upstream_keepalive_timeout": (1, _HOUR), "redis_litellm_db": (0, 15), "postgres_version": (10, 99),
    "litellm_workers": (1, 64), "litellm_max_requests_before_restart": (0, 10**9),
    "litellm_max_requests_jitter": (0, 10**9), "litellm_keepalive_timeout": (1, _HOUR),
    "litellm_worker_healthcheck_timeout": (1, _HOUR), "litellm_restart_sec": (0, _HOUR),
    "litellm_start_limit_burst": (1, 1000), "litellm_start_limit_interval": (1, _DAY),
    "litellm_graceful_timeout": (1, _HOUR), "litellm_timeout_stop_sec": (1, _HOUR), "litellm_install_timeout": (60, _DAY),
    "litellm_ready_timeout": (1, _HOUR), "litellm_request_timeout": (1, _DAY), "rotation_settle_sec": (0, 60),
    "litellm_redis_timeout": (0.01, 60), "litellm_redis_breaker_failures": (1, 10000),
    "litellm_redis_breaker_window": (0, _HOUR), "litellm_redis_breaker_recovery": (1, _DAY),
    "litellm_deployment_timeout": (1, _DAY), "litellm_deployment_stream_timeout": (1, _DAY),
    "litellm_recycle_memory_percent": (0, 99), "litellm_recycle_max_age": (0, 365 * _DAY),
    "litellm_recycle_min_age": (0, _DAY), "litellm_recycle_interval": (5, _HOUR),
    "nginx_metrics_port": (1, 65535), "monitoring_prometheus_port": (1, 65535), "monitoring_scrape_interval": (1, _HOUR),
    "monitoring_node_exporter_port": (1, 65535), "monitoring_redis_exporter_port": (1, 65535),
    "monitoring_postgres_exporter_port": (1, 65535), "monitoring_blackbox_port": (1, 65535),
    "monitoring_error_ratio": (0.0001, 1), "monitoring_429_ratio": (0.0001, 1), "monitoring_p99_seconds": (0.01, _DAY),
    "monitoring_cert_days": (1, 3650), "monitoring_budget_burn": (0.01, 100),
}

# pyinfra's host names: a host name, an address, or a connector such as @local or @docker/debian:12.
HOST_NAME = r"[A-Za-z0-9@_.:/\[\]-][A-Za-z0-9@_.:/\[\]+=~-]{0,252}"

# Settings that reach a rendered file, a command or an SQL statement as one token.
_IDENT = (r"[a-z_][a-z0-9_]{0,62}", "a lowercase identifier such as litellm")
_SECRET_NAME = (SECRET_RE.strip("^$"), "a secret name such as litellm_master_key (lowercase, digits, _)")
_TOKEN_RULES = {
    # Redis multiplies the digits by the unit without an overflow check: bounded far below 2^64 bytes (10 TB).
    "redis_maxmemory": (r"[0-9]{1,12}|[0-9]{1,9}[kK][bB]?|[0-9]{1,6}[mM][bB]?|[0-9]{1,4}[gG][bB]?",
                        "a size such as 256mb (at most 12 digits of bytes, 9 of k, 6 of m, 4 of g)"),
    "redis_maxmemory_policy": (r"(?:volatile|allkeys)-(?:lru|lfu|random)|volatile-ttl|noeviction",
                               "one of Redis's policies, e.g. allkeys-lru"),
    "postgres_user": _IDENT,
    "postgres_db": _IDENT,
    "litellm_master_key_secret": _SECRET_NAME,
    "redis_password_secret": _SECRET_NAME,
    "postgres_password_secret": _SECRET_NAME,
    "monitoring_retention": (r"[1-9][0-9]{0,5}(?:ms|s|m|h|d|w|y)", "a duration such as 15d (digits, then ms, s, m, h, d, w or y)"),
    "litellm_requirements": (r"[A-Za-z0-9._/-]+", "a path of letters, digits, '.', '_', '-' and '/'"),
    "rollout_batch": (r"[1-9][0-9]{0,3}|(?:[1-9][0-9]?|100)%", "a count of gateways such as 2, or a share such as 25%"),
    "rollout_first_gateway": (f"|{HOST_NAME}",
                              "empty (the first gateway listed) or the name of a gateway in the inventory"),
}

# One server name as nginx takes it: labels of letters, digits, '_' and '-', a wildcard only as "*." in front or
# ".*" at the end (nginx refuses "*", "*a", "*." and "."), a leading "." (the name and its subdomains) or a
# trailing one. Checked against nginx -t (tests/unit/test_hostile_settings.py).
_SERVER_NAME = r"(?:\*\.|\.)?[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*(?:\.\*|\.)?"
_SERVER_NAME_RE = re.compile(rf"^{_SERVER_NAME}( {_SERVER_NAME})*$")
_SIZE_RE = re.compile(r"^[0-9]{1,9}[kKmMgG]?$")


def _nginx_problems(merged: dict, where: str) -> list[str]:
    """Values that go into nginx's config verbatim: each must be one token nginx parses as intended."""
    problems = []
    if not _SERVER_NAME_RE.fullmatch(merged["nginx_server_name"]):
        problems.append(f"{where}: settings.nginx_server_name: {shown(merged['nginx_server_name'])} is not a list of "
                        "host names nginx takes. Fix: host names separated by single spaces (a wildcard only as '*.' "
                        "in front or '.*' at the end), or '_' for any.")
    if not _SIZE_RE.fullmatch(merged["nginx_client_max_body_size"]):
        problems.append(f"{where}: settings.nginx_client_max_body_size: {shown(merged['nginx_client_max_body_size'])}. "
                        "Fix: a size like 20m (digits, then k, m or g).")
    return problems + _network_list_problems(merged, "nginx_admin_allow", where,
                                             "admits the whole internet to the admin routes")


def _network_list_problems(merged: dict, key: str, where: str, whole_internet: str) -> list[str]:
    nets = merged[key]
    if not isinstance(nets, list) or not all(isinstance(n, str) for n in nets):
        return [f"{where}: settings.{key}: {shown(nets)}. Fix: a list of networks like ['10.0.0.0/24']."]
    problems = []
    for net in nets:
        try:
            parsed = ipaddress.ip_network(net, strict=True)
        except ValueError as exc:
            problems.append(f"{where}: settings.{key}: {shown(net)}: {escaped(str(exc))}. "
                            "Fix: a network like 10.0.0.0/24.")
            continue
        if parsed.prefixlen == 0:
            problems.append(f"{where}: settings.{key}: {shown(net)} {whole_internet}. Fix: list the networks needed "
                            "(an empty list for the default).")
    return problems


_HOST_PORT_RE = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$")


def _alertmanager_problems(value, where: str) -> list[str]:
    """Each entry lands in prometheus.yml as one target: host:port, nothing else."""
    fix = "Fix: a list like ['alerts.example.org:9093', '10.0.0.9:9093']."
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"{where}: settings.monitoring_alertmanagers: {shown(value)}. {fix}"]
    problems = []
    for entry in value:
        m = _HOST_PORT_RE.fullmatch(entry)
        if not m or not 1 <= int(m.group(1)) <= 65535:
            problems.append(f"{where}: settings.monitoring_alertmanagers: {shown(entry)} is not host:port. {fix}")
    return problems


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Set by the kit itself in the environment file or the launcher: an extra value must not replace them.
KIT_ENV = frozenset({"LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_LOG", "PYTHONFAULTHANDLER", "REDIS_HOST", "REDIS_PORT", "REDIS_DB",
                     "REDIS_PASSWORD", "LITELLM_MASTER_KEY", "DATABASE_URL", "GK_PORT", "PATH", "PYTHONPATH",
                     "CREDENTIALS_DIRECTORY"})
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _extra_env_problems(env, where: str) -> list[str]:
    """litellm_extra_env lands in a systemd environment file, one `NAME=value` line each: a value must be
    one line that systemd reads back exactly (no quotes or backslashes, which it would interpret)."""
    key = f"{where}: settings.litellm_extra_env"
    if not isinstance(env, dict):
        return [f"{key}: expected a mapping of NAME: value. Fix: e.g. {{OTEL_SERVICE_NAME: gateway}}."]
    problems = []
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            problems.append(f"{key}: {shown(name)} is not an environment variable name. Fix: letters, digits and _.")
        elif name in KIT_ENV or name.startswith("GK_"):
            problems.append(f"{key}.{name}: set by gatekit itself. Fix: use the matching setting instead.")
        elif not isinstance(value, (str, int, float)) or isinstance(value, bool):
            problems.append(f"{key}.{name}: expected a string or number. Fix: quote it in YAML.")
        elif not str(value).isprintable() or any(c in str(value) for c in "\"'\\") or str(value) != str(value).strip():
            problems.append(f"{key}.{name}: the value has a line break, control character, quote, backslash or "
                            "surrounding space, which systemd would not read back as written. Fix: a plain one-line value.")
    return problems


# Directories the kit creates and chowns/chmods: a system directory here would be re-owned or re-moded.
MANAGED_DIRS = ("litellm_home", "litellm_config_dir", "nginx_selfsigned_dir")
# Directories of the system or of the kit itself that a managed directory must not be, nor contain.
_RESERVED_DIRS = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt", "/opt", "/proc",
                  "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/usr/local", "/usr/lib",
                  "/usr/share", "/var/lib", "/var/log", "/var/tmp", "/var/cache", "/etc/systemd", "/etc/nginx",
                  "/etc/redis", "/etc/postgresql", "/etc/ssl", "/etc/gatekit/creds", "/var/lib/gatekit",
                  "/var/lib/litellm", "/run/gatekit")
# The launcher's interpreter under litellm_home (templates/litellm/launch.py.j2's #! line: a build's python3):
# binfmt_script execs no interpreter path longer than 253 bytes (the #! line and its newline must fit in 256 bytes).
_LAUNCHER_INTERPRETER = Layout(litellm_home="").venv_build("0" * 64) + "/bin/python3"
_LAUNCHER_SHOWN = _LAUNCHER_INTERPRETER.replace("0" * 16, "STAMP")
# Paths go into shell commands, unit files and nginx's config: only plain characters.
_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


def _host_path_problems(merged: dict, where: str) -> list[str]:
    problems = []
    for key in (*MANAGED_DIRS, "nginx_tls_cert", "nginx_tls_key"):
        value = merged[key]
        if key.startswith("nginx_tls_") and not value:
            continue
        parts = value.split("/")
        if not _PATH_RE.fullmatch(value) or "." in parts or ".." in parts or len(value) > 255:
            problems.append(
                f"{where}: settings.{key}: {shown(value)} is not an absolute, normalized path of letters, digits, '.', '_' "
                f"and '-' (at most 255). Fix: use a path like the default {DEFAULTS[key] or '/etc/ssl/gateway.pem'!r}."
            )
        elif key == "litellm_home" and len(value) + len(_LAUNCHER_INTERPRETER) > 253:
            problems.append(
                f"{where}: settings.litellm_home: {len(value)} characters; the kernel runs the launcher only if its "
                f"interpreter line (#!{{litellm_home}}{_LAUNCHER_SHOWN}) fits in 256 bytes. Fix: a path of at most "
                f"{253 - len(_LAUNCHER_INTERPRETER)} characters."
            )
        elif key.startswith("nginx_tls_") and (value in _RESERVED_DIRS or any(r.startswith(value + "/") for r in _RESERVED_DIRS)):
            problems.append(
                f"{where}: settings.{key}: {value!r} is a system directory, not a file. Fix: the path of the PEM file, "
                f"like '/etc/ssl/gateway.pem'."
            )
        elif key in MANAGED_DIRS and (value in _RESERVED_DIRS or any(r.startswith(value + "/") for r in _RESERVED_DIRS)):
            problems.append(
                f"{where}: settings.{key}: {value!r} is (or holds) a system or gatekit directory whose owner and mode "
                f"the deploy would change. Fix: use a directory of its own, like the default {DEFAULTS[key]!r}."
            )
    cert, key_file = merged["nginx_tls_cert"], merged["nginx_tls_key"]
    if cert and key_file and (cert.startswith(key_file + "/") or key_file.startswith(cert + "/")):
        problems.append(f"{where}: settings.nginx_tls_cert/nginx_tls_key: {cert!r} and {key_file!r}: one would be the "
                        "other's directory. Fix: two files (or one PEM file holding both, the same path twice).")
    dirs = {key: merged[key] for key in MANAGED_DIRS}
    for a, b in itertools.combinations(MANAGED_DIRS, 2):
        if dirs[a] == dirs[b]:
            problems.append(
                f"{where}: settings.{b}: the same directory as {a} ({dirs[a]!r}); they need different owners and "
                f"modes. Fix: give {b} a directory of its own, like the default {DEFAULTS[b]!r}."
            )
    return problems


def _semantic_problems(spec: GatewaySpec, secret_names: set[str] | None) -> list[str]:
    f = spec.path
    problems: list[str] = []
    names = [m.name for m in spec.models]
    known = set(names)

    for name in {n for n in names if names.count(n) > 1}:
        problems.append(
            f"{f}: models: {name!r} is listed twice. Fix: put every deployment of a model under one entry's deployments."
        )

    for i, m in enumerate(spec.models):
        if not m.deployments:
            problems.append(
                f"{f}: models[{i}].deployments: model {m.name!r} has no deployments, so every request for it fails. "
                "Fix: add at least one deployment or remove the model."
            )
        for j, d in enumerate(m.deployments):
            for field, problem in providers.deployment_problems(d.provider, d.api_base, d.api_version):
                problems.append(f"{f}: models[{i}].deployments[{j}].{field}: {problem}.")
            if d.weight <= 0:
                problems.append(
                    f"{f}: models[{i}].deployments[{j}].weight: weight {d.weight:g} for {m.name!r} "
                    f"({escaped(d.provider + '/' + d.model, 80)}); LiteLLM never routes to it ('insufficient quota' while the account "
                    "has balance). Fix: set a weight > 0, or remove the deployment."
                )

    def unknown(name: str, field: str) -> str:
        close = difflib.get_close_matches(name[:200], known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {sorted(known)}"
        return (
            f"{f}: {field}: {shown(name)} is not a model in models (requests routed to it get a 503). "
            f"Fix: {hint} or add the model."
        )

    for alias, target in spec.aliases.items():
        if not re.fullmatch(NAME_RE, alias):
            # Clients ask for an alias like for a model: the same name rule (it reaches config.yaml, the
            # client keys' model lists and the usage rows).
            problems.append(
                f"{f}: aliases: {shown(alias)} is not a valid model name (a letter or digit, then letters, digits, "
                "'.', '_', ':', '/' or '-', at most 128). Fix: rename the alias."
            )
            continue
        if target not in known:
            problems.append(unknown(target, f"aliases.{alias}"))
        if alias in known:
            problems.append(
                f"{f}: aliases.{alias}: the alias shadows the model of the same name. Fix: rename the alias."
            )

    first_from: dict[str, int] = {}
    for i, fb in enumerate(spec.fallbacks):
        src = spec.model(fb.from_)
        if src is None:
            problems.append(unknown(fb.from_, f"fallbacks[{i}].from"))
        if fb.from_ in first_from:  # LiteLLM uses the first entry for a model: a second one would be ignored
            problems.append(f"{f}: fallbacks[{i}].from: {shown(fb.from_)} already has its fallbacks in "
                            f"fallbacks[{first_from[fb.from_]}]. Fix: list all of its targets there, in order.")
        first_from.setdefault(fb.from_, i)
        for j, t in enumerate(fb.targets()):
            dst = spec.model(t.model)
            field = f"fallbacks[{i}].to[{j}]"
            if dst is None:
                problems.append(unknown(t.model, field))
                continue
            if t.model == fb.from_:
                problems.append(f"{f}: {field}: {t.model!r} falls back to itself. Fix: remove it.")
            elif pricier_without_consent(spec, fb.from_, t.model):
                problems.append(
                    f"{f}: {field}: fallback {fb.from_!r} -> {t.model!r} goes to a more expensive model "
                    f"(${dst.price.input_per_1m:g}/${dst.price.output_per_1m:g} vs "
                    f"${src.price.input_per_1m:g}/${src.price.output_per_1m:g} per 1M in/out tokens). "
                    f"Fix: fall back to a cheaper model, or write {{model: {t.model}, allow_pricier: true}} "
                    "to accept the cost."
                )

    for field, why in NEVER_RETRIED.items():
        if getattr(spec.retry, field):
            problems.append(
                f"{f}: retry.{field}: {getattr(spec.retry, field)} retries for {why}; retrying these multiplies "
                f"spend and load. Fix: set retry.{field} to 0."
            )

    if spec.budgets.proxy is not None and not spec.settings.get("litellm_database", DEFAULTS["litellm_database"]):
        problems.append(
            f"{f}: budgets.proxy: LiteLLM enforces a proxy-wide budget only with a database; without one it is "
            "silently ignored. Fix: set settings.litellm_database: true, or use budgets.providers (enforced via Redis)."
        )
    used_providers = {d.provider for m in spec.models for d in m.deployments}
    for p in spec.budgets.providers:
        if p not in used_providers:
            problems.append(
                f"{f}: budgets.providers.{key_shown(p)}: no deployment uses provider {shown(p)}. "
                f"Fix: use one of {sorted(used_providers)}."
            )

    problems += check_settings(spec.settings, str(f))

    if secret_names is not None:
        # secret name -> the field of its first use, so the message points at a line of the spec
        needed: dict[str, str] = {}
        for i, m in enumerate(spec.models):
            for j, d in enumerate(m.deployments):
                needed.setdefault(d.secret, f"models[{i}].deployments[{j}].secret")
        merged = {**DEFAULTS, **spec.settings}
        keys = ["litellm_master_key_secret", "redis_password_secret"]
        if merged["litellm_database"] is True:
            keys.append("postgres_password_secret")
        for key in keys:  # a name that is no secret name is reported by check_settings
            if isinstance(merged[key], str) and re.fullmatch(SECRET_RE, merged[key]):
                needed.setdefault(merged[key], f"settings.{key}")
        for name, used_by in sorted(needed.items()):
            if name not in secret_names:
                problems.append(
                    f"{f}: {used_by}: secret {name!r} does not exist in {spec.vault_path}. "
                    f"Fix: `gatekit secrets --vault {spec.vault_path} set {name}` (value on stdin), or correct the name."
                )
    return problems + _deadline_problems(spec)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _deadline_problems(spec: GatewaySpec) -> list[str]:
    """A call to a model may wait, before its answer's first byte, one timeout per attempt (1 + retry.timeout_errors)
    at a deployment not yet cooled down: a deployment that timed out is cooled down at once (render.py's
    allowed_fails_policy), so each deployment of the model at most once, slowest first; then the same for each of its
    fallbacks. All of it must fit in nginx's nginx_read_timeout, or nginx answers 504 while LiteLLM still waits (and
    the fallback never reaches the client). Settings of the wrong type are check_settings' to report."""
    s = {**DEFAULTS, **spec.settings}
    keys = ("litellm_deployment_timeout", "litellm_deployment_stream_timeout", "nginx_read_timeout")
    if not all(_number(s[k]) for k in keys):
        return []
    attempts = 1 + spec.retry.timeout_errors
    fallbacks = {fb.from_: [t.model for t in fb.targets()] for fb in spec.fallbacks}
    problems = []
    for i, m in enumerate(spec.models):
        chain = [m, *(t for t in (spec.model(n) for n in fallbacks.get(m.name, [])) if t is not None)]
        for field, key in (("timeout", "litellm_deployment_timeout"), ("stream_timeout", "litellm_deployment_stream_timeout")):
            waits = [sum(sorted((getattr(d, field) or s[key] for d in c.deployments), reverse=True)[:attempts])
                     for c in chain]
            if sum(waits) >= s["nginx_read_timeout"]:
                parts = " + ".join(f"{c.name} {w:g} s" for c, w in zip(chain, waits))
                problems.append(
                    f"{spec.path}: models[{i}]: a {'streamed ' if field == 'stream_timeout' else ''}call to {m.name!r} "
                    f"can wait {sum(waits):g} s for its first byte ({parts}: the {field} of each of its "
                    f"{attempts} attempts, each at another deployment, then each fallback), not below settings.nginx_read_timeout "
                    f"({s['nginx_read_timeout']:g} s): nginx would answer 504 while LiteLLM still waits. Fix: lower "
                    f"settings.{key} (or a deployment's {field}) or retry.timeout_errors, or raise "
                    "settings.nginx_read_timeout.")
    return problems


def parse_spec(data: object, path: Path, secret_names: set[str] | None = None) -> GatewaySpec:
    """Validate already-parsed YAML data. Raises SpecError listing every problem."""
    if not isinstance(data, dict):
        raise SpecError([f"{path}: (top level): expected a mapping with version, vault, models. Fix: see the example."])
    retired = _retired_problems(data, path)
    try:
        spec = GatewaySpec.model_validate({k: v for k, v in data.items() if k not in RETIRED_FIELDS})
    except ValidationError as exc:
        raise SpecError(retired + _pydantic_problems(path, exc)) from None
    spec._path = path
    problems = retired + _semantic_problems(spec, secret_names)
    if problems:
        raise SpecError(problems)
    return spec


# Fields a spec once had that nothing reads any more: refused with what replaced them, never silently ignored.
RETIRED_FIELDS = ("litellm_version",)


def _retired_problems(data: dict, path: Path) -> list[str]:
    """litellm_version: the hash lock the hosts install decides LiteLLM's version; a second number in the spec
    that nothing installs would only claim a version (a compromised one, or one the lock has left)."""
    if "litellm_version" not in data:
        return []
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    merged = {**DEFAULTS, **{k: settings[k] for k in ("litellm_requirements", "litellm_database") if k in settings}}
    try:
        name = lock_name(merged)
        version = locked_litellm_version(name) if isinstance(name, str) else None
    except (TypeError, ValueError):
        name, version = DEFAULT_LOCK, None
    pinned = f"{name} pins litellm {version}" if version else "the lock settings.litellm_requirements names"
    return [f"{path}: litellm_version: no longer read: the hash lock the hosts install decides LiteLLM's version "
            f"({escaped(pinned, 200)}). Fix: remove litellm_version; to change the version, point "
            "settings.litellm_requirements at another hash lock."]


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, line: int):
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not a silent override."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str, fix_missing: str):
    """YAML from a file the operator wrote; every way it can be unreadable is one `file: problem. Fix:` line."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. Fix: {fix_missing}."]) from None
    except IsADirectoryError:
        raise SpecError([f"{path}: a directory, not a {what} file. Fix: point at the {what}'s YAML file."]) from None
    except PermissionError:
        raise SpecError([f"{path}: permission denied. Fix: make the {what} readable by the user running gatekit."]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: not UTF-8 text (byte {exc.start}). Fix: save the {what} as UTF-8."]) from None
    except DuplicateKeyError as exc:
        raise SpecError([f"{path}: line {exc.line}: {shown(exc.key)} is given twice; YAML would silently keep the last. "
                         "Fix: keep one."]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError([f"{path}:{where}: not valid YAML ({getattr(exc, 'problem', exc)}). Fix: correct the syntax."]) from None


def load_spec(path: str | Path, check_secrets: bool = True) -> GatewaySpec:
    """Read and validate a spec file; with check_secrets, also that every referenced secret exists.
    The client keys file it names (if present) is validated against it too."""
    path = Path(path)
    data = read_yaml(path, "spec", "point gatekit_spec at an existing spec file")
    secret_names = None
    if check_secrets and isinstance(data, dict) and isinstance(data.get("vault"), str):
        secret_names = _vault_names(path, (path.parent / data["vault"]).resolve())
    spec = parse_spec(data, path, secret_names)
    from gatekit.clientkeys import load_keys

    load_keys(spec)  # raises SpecError naming the keys file, field and fix
    return spec


def _vault_names(spec_path: Path, vault_path: Path) -> set[str]:
    from gatekit.vault import VaultError, list_names

    try:
        return set(list_names(vault_path))
    except VaultError as exc:
        raise SpecError([f"{spec_path}: vault: {exc}"]) from None
    except FileNotFoundError:
        raise SpecError(
            [f"{spec_path}: vault: {vault_path} does not exist. Fix: `gatekit secrets --vault {vault_path} init`."]
        ) from None
