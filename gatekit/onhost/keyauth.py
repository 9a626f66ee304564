"""Client keys inside LiteLLM, without its database: gatekit's custom auth and usage hook.

Runs in every LiteLLM worker (config.yaml: general_settings.custom_auth = keyauth.user_api_key_auth,
litellm_settings.callbacks = [keyauth.usage_logger]).
- Auth: the master key is the operator's (admin identity). Any other key is looked up by its SHA-256 in
  the table the deploy ships (Layout.client_keys); the file is re-read when it changes, so adding or
  revoking a key needs no restart. Unknown, revoked or expired -> 401; a route outside the client API or a
  model the key may not use -> 403 naming it. rpm/tpm go to LiteLLM's own rate limiter (shared through
  Redis across workers and gateways) as the identity's rpm_limit/tpm_limit.
- Usage: requests, failures, tokens and cost per (day, key name, model), summed in memory and written in
  batches to PostgreSQL (gatekit.key_usage) off the request path. PostgreSQL being down never fails a
  request: rows stay buffered (bounded) and are written on recovery; anything dropped is counted and logged.
- Budgets: a key's monthly budget is checked before the call against this month's cost in PostgreSQL (all
  gateways) plus what this worker has not written yet; refused with 429 naming the budget.

The pure parts (KeyTable, Usage) need only the standard library; LiteLLM is imported inside the hooks.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import threading
import time

try:
    from .layout import Layout
except ImportError:  # on the host: beside layout.py
    from layout import Layout


def _stub_otel_v2_without_sdk() -> None:
    """LiteLLM's auth imports `litellm.integrations.otel.logger` on every request (`_seed_request_destinations`)
    and ignores the failure. That module imports the OpenTelemetry SDK at its top, which the locked venv does not
    ship, so each import failed half-way and was retried on the next request: 192 µs of CPU per request (measured;
    1.6 µs with this), about 4% of the GIL time under load. Without the
    SDK the import can never succeed: recording that in sys.modules makes it fail at once with the same
    ModuleNotFoundError every caller already handles. With the SDK installed nothing changes."""
    import importlib.util

    try:
        if importlib.util.find_spec("opentelemetry.sdk") is not None:
            return
    except (ImportError, ValueError):
        pass
    sys.modules.setdefault("litellm.integrations.otel.logger", None)


if "litellm" in sys.modules:  # loaded by LiteLLM (custom_auth / callbacks), never on the controller
    _stub_otel_v2_without_sdk()


MASTER = "(master)"  # usage of the master key (key names cannot contain parentheses)
OTHER_MODEL = "(other)"  # a model name the spec does not know (keeps usage rows bounded)
PUBLIC_ROUTES = frozenset({"/health/liveliness", "/health/liveness", "/health/readiness"})
# What a client key may call: the client API nginx passes to the public side.
CLIENT_ROUTES = frozenset({
    "/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions", "/v1/embeddings",
    "/embeddings", "/v1/responses", "/responses", "/v1/models", "/models", "/v1/messages",
    "/v1/messages/count_tokens",
})
CLIENT_PREFIXES = ("/v1/models/", "/models/", "/v1/responses/", "/responses/")
RELOAD_SECONDS = 1.0
FLUSH_SECONDS = float(os.environ.get("GK_USAGE_FLUSH_SECONDS", "2"))
MAX_BUFFERED_ROWS = 50_000


def log(message: str) -> None:
    print(f"gatekit-keys: {message}", file=sys.stderr, flush=True)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def shown(value: object, limit: int = 80) -> str:
    """A client-supplied value, safe to put in an error message (bounded, control characters escaped)."""
    return repr(str(value)[:limit])


def client_route(route: str) -> bool:
    if any(seg in (".", "..") for seg in route.split("/")):
        return False  # nginx resolves dot segments on the public side; refuse them anywhere else
    return route in CLIENT_ROUTES or route.startswith(CLIENT_PREFIXES)


class Denied(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class KeyTable:
    """The shipped table (by hash), re-read when its file changes."""

    def __init__(self, path: str):
        self.path = path
        self.keys: dict[str, dict] = {}
        self._names: dict[str, dict] = {}  # the same entries by key name (the budget check runs per call)
        self.models: frozenset[str] = frozenset()
        self._stamp = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def refresh(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if now - self._checked < RELOAD_SECONDS and self._stamp is not None:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and stamp is not None:
            return
        with self._lock:
            if stamp is None:
                self.keys, self._names, self.models, self._stamp = {}, {}, frozenset(), ("absent",)
                return
            try:
                with open(self.path, encoding="utf-8") as fh:
                    data = json.load(fh)
                keys = {h: e for h, e in data["keys"].items()}
                models = frozenset(data.get("models", ()))
                names = {e["name"]: e for e in keys.values()}
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
                # Keep serving with the table we had: a half-written or broken file must not open the gateway
                # nor lock every client out. The deploy writes it atomically, so this is a hand edit.
                log(f"cannot read {self.path} ({type(exc).__name__}); keeping the previous table")
                self._stamp = stamp
                return
            self.keys, self._names, self.models, self._stamp = keys, names, models, stamp
            log(f"loaded {len(keys)} client keys from {self.path}")

    def by_name(self, name: str) -> dict | None:
        return self._names.get(name)

    def check(self, api_key: str, route: str, model: object, now: dt.datetime) -> dict:
        """The key's entry if it may make this call; raises Denied (status, message) otherwise."""
        entry = self.keys.get(key_hash(api_key)) if api_key else None
        if entry is None:
            raise Denied(401, "Authentication Error: invalid API key (unknown or revoked). "
                              "Ask the gateway's operator for a key.")
        name = entry["name"]
        if entry.get("expires_at") and now >= dt.datetime.fromisoformat(entry["expires_at"]):
            raise Denied(401, f"Authentication Error: key {name!r} expired at {entry['expires_at']}.")
        if not client_route(route):
            raise Denied(403, f"key {name!r} may call only the client API; {shown(route)} is not part of it.")
        if model is not None and model not in entry["models"]:
            raise Denied(403, f"key {name!r} may not use model {shown(model)}; it may use: {', '.join(entry['models'])}.")
        return entry


def _month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


class Usage:
    """Per (day, key, model) sums not yet in PostgreSQL, this month's totals read back, and drops."""

    FIELDS = ("requests", "failures", "prompt_tokens", "completion_tokens", "cost_usd")

    def __init__(self, max_rows: int = MAX_BUFFERED_ROWS):
        self.max_rows = max_rows
        self.rows: dict[tuple, list] = {}
        self.inflight: dict[tuple, list] = {}
        self.month_cost: dict[str, float] = {}  # this month's cost per key, all gateways (last read)
        self.dropped = 0
        self._lock = threading.Lock()

    def add(self, day: dt.date, key: str, model: str, requests=0, failures=0, prompt=0, completion=0, cost=0.0):
        row_key = (day, key, model)
        with self._lock:
            row = self.rows.get(row_key)
            if row is None:
                if len(self.rows) >= self.max_rows:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log(f"usage buffer full ({self.max_rows} rows): {self.dropped} usage events dropped so far")
                    return
                row = self.rows[row_key] = [0, 0, 0, 0, 0.0]
            for i, v in enumerate((requests, failures, prompt, completion, cost)):
                row[i] += v

    def take(self) -> dict[tuple, list]:
        with self._lock:
            self.inflight, self.rows = self.rows, {}
            return self.inflight

    def written(self) -> None:
        with self._lock:
            self.inflight = {}

    def put_back(self) -> None:
        """A write failed: its rows rejoin the buffer (merged), so nothing is lost while there is room."""
        with self._lock:
            back, self.inflight = self.inflight, {}
        for (day, key, model), row in back.items():
            self.add(day, key, model, *row)

    def pending_cost(self, key: str, month: dt.date) -> float:
        with self._lock:
            return sum(r[4] for src in (self.rows, self.inflight) for (d, k, _), r in src.items()
                       if k == key and _month_start(d) == month)

    def spent(self, key: str, today: dt.date) -> float:
        return self.month_cost.get(key, 0.0) + self.pending_cost(key, _month_start(today))


# The kit's own schema, created and migrated by the deploy (roles/postgres.py) as the LiteLLM role; every
# statement is idempotent, and the table comment says which version the database holds.
SCHEMA_VERSION = "gatekit key usage v1"
SCHEMA_SQL = f"""
CREATE SCHEMA IF NOT EXISTS gatekit;
CREATE TABLE IF NOT EXISTS gatekit.key_usage (
    day date NOT NULL,
    key_name text NOT NULL,
    model text NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    failures bigint NOT NULL DEFAULT 0,
    prompt_tokens bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cost_usd double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (day, key_name, model)
);
COMMENT ON TABLE gatekit.key_usage IS '{SCHEMA_VERSION}';
"""
USAGE_REPORT = (  # per key: today and this month (UTC), as JSON lines; read by `gatekit keys list`
    "SELECT json_build_object('key', key_name, "
    "'today', json_build_object('requests', sum(requests) FILTER (WHERE day = (now() AT TIME ZONE 'UTC')::date), "
    "'tokens', sum(prompt_tokens + completion_tokens) FILTER (WHERE day = (now() AT TIME ZONE 'UTC')::date), "
    "'cost_usd', sum(cost_usd) FILTER (WHERE day = (now() AT TIME ZONE 'UTC')::date)), "
    "'month', json_build_object('requests', sum(requests), 'tokens', sum(prompt_tokens + completion_tokens), "
    "'cost_usd', sum(cost_usd))) FROM gatekit.key_usage "
    "WHERE day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date GROUP BY key_name ORDER BY key_name"
)
UPSERT = (
    "INSERT INTO gatekit.key_usage (day, key_name, model, requests, failures, prompt_tokens, completion_tokens, cost_usd) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (day, key_name, model) DO UPDATE SET "
    "requests = key_usage.requests + EXCLUDED.requests, failures = key_usage.failures + EXCLUDED.failures, "
    "prompt_tokens = key_usage.prompt_tokens + EXCLUDED.prompt_tokens, "
    "completion_tokens = key_usage.completion_tokens + EXCLUDED.completion_tokens, "
    "cost_usd = key_usage.cost_usd + EXCLUDED.cost_usd"
)
MONTH_COST = ("SELECT key_name, sum(cost_usd) FROM gatekit.key_usage "
              "WHERE day >= date_trunc('month', now() AT TIME ZONE 'UTC')::date GROUP BY key_name")


def _conninfo() -> dict | None:
    """PostgreSQL for usage: GK_USAGE_PG (host/port/dbname/user, from litellm.env) + the password credential."""
    spec = os.environ.get("GK_USAGE_PG")
    password = os.environ.get("GK_POSTGRES_PASSWORD")
    if not spec or not password:
        return None
    info = dict(part.split("=", 1) for part in spec.split())
    return {**info, "password": password, "connect_timeout": 3, "application_name": "gatekit-usage"}


class Writer:
    """Writes Usage to PostgreSQL every FLUSH_SECONDS from a task on the worker's event loop."""

    def __init__(self, usage: Usage, table: KeyTable):
        self.usage, self.table = usage, table
        self.conn = None
        self.task = None
        self.pid = None
        self.down_since = None

    def ensure_started(self) -> None:
        if self.pid == os.getpid() and self.task is not None and not self.task.done():
            return
        if _conninfo() is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self.pid, self.conn = os.getpid(), None
        self.task = loop.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any single failure
                log(f"usage writer: {type(exc).__name__}")

    async def _connect(self):
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(**_conninfo(), autocommit=True)
        return self.conn

    async def flush(self) -> None:
        rows = self.usage.take()
        budgets = any(e.get("budget_usd") for e in self.table.keys.values())
        if not rows and not budgets:
            return
        try:
            conn = await self._connect()
            if rows:
                async with conn.transaction():
                    async with conn.cursor() as cur:
                        await cur.executemany(UPSERT, [(*k, *v) for k, v in rows.items()])
            self.usage.written()
            if budgets:
                async with conn.cursor() as cur:
                    await cur.execute(MONTH_COST)
                    self.usage.month_cost = {k: float(v) for k, v in await cur.fetchall()}
            if self.down_since is not None:
                log(f"PostgreSQL is back after {time.monotonic() - self.down_since:.0f} s; buffered usage written")
                self.down_since = None
        except Exception as exc:  # noqa: BLE001 - PostgreSQL down must never reach a client
            self.usage.put_back()
            if self.conn is not None:
                try:
                    await self.conn.close()
                except Exception:  # noqa: BLE001
                    pass
            self.conn = None
            if self.down_since is None:
                self.down_since = time.monotonic()
                log(f"cannot write usage to PostgreSQL ({type(exc).__name__}); buffering "
                    f"{len(self.usage.rows)} rows until it answers")

    def flush_at_exit(self) -> None:
        """A worker that exits (recycled, stopped) writes what it holds, synchronously."""
        if self.pid != os.getpid() or _conninfo() is None:
            return
        rows = self.usage.take()
        if not rows:
            return
        try:
            import psycopg

            with psycopg.connect(**_conninfo(), autocommit=True) as conn, conn.cursor() as cur:
                cur.executemany(UPSERT, [(*k, *v) for k, v in rows.items()])
        except Exception as exc:  # noqa: BLE001
            log(f"at exit: {len(rows)} usage rows not written ({type(exc).__name__})")


_table: KeyTable | None = None
_usage = Usage()
_writer: Writer | None = None


def table() -> KeyTable:
    global _table, _writer
    if _table is None:
        _table = KeyTable(Layout.beside(__file__).client_keys)
        _writer = Writer(_usage, _table)
        atexit.register(_writer.flush_at_exit)
    _table.refresh()
    return _table


async def _requested_model(request) -> object:
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    try:
        from litellm.proxy.common_utils.http_parsing_utils import read_request_body
    except ImportError:  # older LiteLLM
        from litellm.proxy.common_utils.http_parsing_utils import _read_request_body as read_request_body
    body = await read_request_body(request=request)
    return body.get("model") if isinstance(body, dict) else None


DENIED_HEADER = "x-gatekit-denied"  # the refusal as Anthropic's error object; nginx answers /v1/messages with it


def denied_error(d: Denied) -> dict:
    return {"type": "authentication_error" if d.status == 401 else "permission_error", "message": d.message}


def denial(d: Denied):
    """The refusal LiteLLM answers with (OpenAI's error shape). Auth runs before LiteLLM's Anthropic handler, so
    the same refusal also travels as a header (JSON, ASCII: no CR/LF can reach it) for nginx to answer
    /v1/messages in Anthropic's shape."""
    from litellm.proxy._types import ProxyException

    err = denied_error(d)
    return ProxyException(message=d.message, type=err["type"], param=None, code=d.status,
                          headers={DENIED_HEADER: json.dumps(err, ensure_ascii=True)})


async def user_api_key_auth(request, api_key: str):
    """LiteLLM custom auth (general_settings.custom_auth)."""
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
    from litellm.proxy.auth.auth_utils import get_request_route

    route = get_request_route(request)
    t = table()
    _writer.ensure_started()
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if api_key and master and hmac.compare_digest(api_key.encode("utf-8", "surrogatepass"), master.encode()):
        return UserAPIKeyAuth(api_key=master, user_role=LitellmUserRoles.PROXY_ADMIN, key_alias=MASTER,
                              user_id="litellm-proxy-admin")
    if route in PUBLIC_ROUTES:
        return UserAPIKeyAuth(user_role=LitellmUserRoles.INTERNAL_USER_VIEW_ONLY)
    try:
        model = await _requested_model(request) if client_route(route) else None
        entry = t.check(api_key, route, model, dt.datetime.now(dt.timezone.utc))
    except Denied as d:
        raise denial(d) from None
    return UserAPIKeyAuth(
        api_key=key_hash(api_key), key_alias=entry["name"], key_name=entry["name"],
        user_role=LitellmUserRoles.INTERNAL_USER, models=list(entry["models"]),
        rpm_limit=entry.get("rpm"), tpm_limit=entry.get("tpm"),
    )


def _usage_model(model: object) -> str:
    return model if isinstance(model, str) and model in (_table.models if _table else ()) else OTHER_MODEL


def _record(kwargs: dict, failed: bool) -> None:
    slo = kwargs.get("standard_logging_object") or {}
    meta = slo.get("metadata") or {}
    name = meta.get("user_api_key_alias")
    if not name:
        return
    day = dt.datetime.now(dt.timezone.utc).date()
    model = _usage_model(slo.get("model_group") or kwargs.get("model"))
    _usage.add(day, name, model, requests=1, failures=int(failed),
               prompt=int(slo.get("prompt_tokens") or 0), completion=int(slo.get("completion_tokens") or 0),
               cost=float(slo.get("response_cost") or 0.0))


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def usd(value: float) -> str:
    return f"${value:.2f}" if value >= 1 else "$" + (f"{value:.6f}".rstrip("0").rstrip(".") or "0")


def budget_problem(name: str, budget: float | None, spent: float, today: dt.date) -> str:
    if budget and spent >= budget:
        return (f"key {name!r} has used {usd(spent)} of its monthly budget of {usd(budget)}; "
                f"it resets on {_next_month(today).isoformat()} (UTC). Ask the gateway's operator to raise it.")
    return ""


def _make_logger():
    from litellm.integrations.custom_logger import CustomLogger

    class UsageLogger(CustomLogger):
        async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
            name = getattr(user_api_key_dict, "key_alias", None)
            if not name or name == MASTER:
                return None
            t = table()
            _writer.ensure_started()
            entry = t.by_name(name)
            today = dt.datetime.now(dt.timezone.utc).date()
            problem = budget_problem(name, (entry or {}).get("budget_usd"), _usage.spent(name, today), today)
            if problem:
                from fastapi import HTTPException

                raise HTTPException(status_code=429, detail=problem)
            return None

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
            _record(kwargs, failed=False)

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
            _record(kwargs, failed=True)

    return UsageLogger()


def __getattr__(name: str):
    # LiteLLM loads `keyauth.usage_logger` by attribute: build the CustomLogger (which imports LiteLLM) then.
    if name == "usage_logger":
        logger = _make_logger()
        globals()["usage_logger"] = logger
        table()
        return logger
    raise AttributeError(name)
