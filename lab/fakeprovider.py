#!/usr/bin/env python3
"""Fake LLM provider for the gatekit end-to-end tests.

Standard library only: it must run on any Python >= 3.11 without the venv::

    python3 lab/fakeprovider.py --host 10.77.0.1 --port 18080 --state-dir DIR

It speaks just enough of four upstream APIs for LiteLLM Proxy to use it (LiteLLM's own
``openai/``, ``anthropic/``, ``gemini/`` and ``azure/`` provider code runs against it unchanged):

* OpenAI-compatible (LiteLLM ``api_base = http://HOST:PORT/v1``)::

      POST /v1/chat/completions     (auth: ``Authorization: Bearer <key>``)
      GET  /v1/models

* Anthropic Messages (LiteLLM ``api_base = http://HOST:PORT``)::

      POST /v1/messages             (auth: ``x-api-key: <key>``)
      POST /v1/messages/count_tokens

* Google Gemini, AI Studio API (LiteLLM ``gemini/<model>``, ``api_base = http://HOST:PORT/v1beta``)::

      POST /v1beta/models/<model>:generateContent
      POST /v1beta/models/<model>:streamGenerateContent?alt=sse
                                    (auth: ``x-goog-api-key: <key>`` or ``?key=<key>``;
                                     /v1/ and /v1alpha/ work too; without alt=sse
                                     the stream is a JSON array, as Google sends it)

  Answers are ``GenerateContentResponse`` objects (``candidates[0].content.parts[0].text``,
  ``usageMetadata``, ``modelVersion``); errors are Google's
  ``{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED"}}``.  A
  refused key is answered as Google does: 400 INVALID_ARGUMENT "API key not valid. Please
  pass a valid API key." (403 PERMISSION_DENIED when no key was sent).

* Azure OpenAI (LiteLLM ``azure/<deployment>``, ``api_base = http://HOST:PORT``, ``api_version``)::

      POST /openai/deployments/<deployment>/chat/completions?api-version=<version>
                                    (auth: ``api-key: <key>``, or ``Authorization: Bearer <token>``)

  Bodies and answers are OpenAI's (the answer's ``model`` is the deployment); errors are
  Azure's ``{"error": {"code": "401", "message": ...}}``; no ``api-version`` is 404
  "Resource not found", as Azure answers it.  Records carry the ``api_version`` seen.

Every request is recorded with its ``api`` ("openai", "anthropic", "gemini", "azure",
"models"); for Gemini and Azure the model (and deployment) is the one in the path.

Every answer is deterministic: ``fake-answer model=<model> deployment=<model>``
(the deployment tag is the whole upstream model name; give each deployment a
distinct upstream model name).  Streams are split into N pieces (default 5,
one word or word fragment each -- their concatenation is exactly the answer)
with a delay between pieces (default 0.2 s); every SSE event is written as its
own HTTP chunk and flushed immediately.

Keys are never stored: each request is recorded with ``fingerprint(key)`` (the
first 16 hex characters of sha256(key)), path, model, stream flag, status, time
and the client's address (which gateway sent it).  The test-side control API lives under ``/_control/`` (see
``FakeProviderClient`` below for the complete list).

Fault rules (``POST /_control/faults``) match a model (or every model when no
model is given), and answer with an HTTP status and/or add latency:

* ``count`` N      -- only the next N matching requests (default: every one,
  until ``{"clear": true}`` or ``/_control/reset``);
* ``fraction`` p   -- each matching request is hit with probability p;
* ``status``       -- 4xx/5xx answered instead of the completion (429 carries
  ``Retry-After``, default 1 s);
* ``latency`` s    -- sleep s seconds before answering.

Faults apply to the completion endpoints only (OpenAI, Anthropic Messages, Gemini
generateContent / streamGenerateContent, Azure chat completions; the model of a Gemini or
Azure request is the one in its path), and only to requests that passed the key check;
errors are in the shape of the API asked.  Model-specific rules are consulted before
global ones.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import http.server
import itertools
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Iterable

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_DELAY",
    "FakeProviderClient",
    "FakeProviderError",
    "FakeProviderServer",
    "answer_text",
    "fingerprint",
    "main",
    "make_server",
    "serve_in_thread",
    "split_pieces",
]

DEFAULT_CHUNKS = 5
DEFAULT_DELAY = 0.2
DEFAULT_RETRY_AFTER = 1.0
MAX_BODY = 16 * 1024 * 1024
MAX_RECORDS = 200_000

PID_FILE = "fakeprovider.pid"
INFO_FILE = "fakeprovider.json"
REQUEST_LOG = "requests.jsonl"
SERVER_LOG = "fakeprovider.log"

_FP_RE = re.compile(r"^[0-9a-f]{16}$")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def fingerprint(key: str) -> str:
    """First 16 hex chars of sha256(key): how keys appear everywhere here. The same scheme as
    gatekit.onhost.probe.fingerprint, written out because the provider runs without gatekit (python -S)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def answer_text(model: str) -> str:
    """The deterministic completion text for ``model``."""
    return f"fake-answer model={model} deployment={model}"


def split_pieces(text: str, n: int) -> list[str]:
    """Split ``text`` into ``n`` non-empty pieces whose concatenation is ``text``.

    Pieces follow word boundaries (a word keeps its trailing whitespace); with
    more pieces than words the longest pieces are halved, with fewer the words
    are grouped.  Never returns more pieces than ``len(text)``.
    """
    if not text:
        return []
    n = max(1, int(n))
    words = re.findall(r"\s*\S+\s*", text) or [text]
    if len(words) >= n:
        base, extra = divmod(len(words), n)
        out, i = [], 0
        for k in range(n):
            size = base + (1 if k < extra else 0)
            out.append("".join(words[i : i + size]))
            i += size
        return out
    pieces = list(words)
    while len(pieces) < n:
        idx = max(range(len(pieces)), key=lambda j: len(pieces[j]))
        p = pieces[idx]
        if len(p) < 2:
            break
        mid = len(p) // 2
        pieces[idx : idx + 1] = [p[:mid], p[mid:]]
    return pieces


def _count_words(value: Any) -> int:
    """Rough, deterministic token count of a prompt (messages / system; Gemini contents / systemInstruction)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    if isinstance(value, dict):
        total = 0
        for k in ("content", "text", "parts"):
            if k in value:
                total += _count_words(value[k])
        return total
    return 0


def _now() -> float:
    return time.time()


# --------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------


class ControlError(ValueError):
    """Bad control-API input (answered with HTTP 400)."""


class FaultRule:
    _ids = itertools.count(1)

    def __init__(
        self,
        *,
        model: str | None = None,
        status: int | None = None,
        latency: float | None = None,
        count: int | None = None,
        fraction: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.id = next(self._ids)
        self.model = model
        self.status = status
        self.latency = latency
        self.remaining = count
        self.count = count
        self.fraction = fraction
        self.retry_after = retry_after
        self.hits = 0

    @classmethod
    def from_json(cls, body: dict) -> "FaultRule":
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ControlError("model must be a non-empty string or null")
        status = body.get("status")
        if status is not None:
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise ControlError("status must be an HTTP error status (400-599), e.g. 429, 500, 503")
        latency = body.get("latency")
        if latency is not None:
            if isinstance(latency, bool) or not isinstance(latency, (int, float)) or latency < 0:
                raise ControlError("latency must be a number of seconds >= 0")
            latency = float(latency)
        if status is None and not latency:
            raise ControlError("a fault needs a status and/or a latency > 0")
        count = body.get("count")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ControlError("count must be an integer >= 1 (omit it for 'every request')")
        fraction = body.get("fraction")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise ControlError("fraction must be a number in (0, 1]")
            fraction = float(fraction)
        retry_after = body.get("retry_after")
        if retry_after is not None:
            if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or retry_after < 0:
                raise ControlError("retry_after must be a number of seconds >= 0")
            retry_after = float(retry_after)
        return cls(
            model=model,
            status=status,
            latency=latency,
            count=count,
            fraction=fraction,
            retry_after=retry_after,
        )

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "latency": self.latency,
            "count": self.count,
            "remaining": self.remaining,
            "fraction": self.fraction,
            "retry_after": self.retry_after,
            "hits": self.hits,
        }


class ProviderState:
    """All mutable state of one fake provider; every access holds ``lock``."""

    def __init__(
        self,
        *,
        chunks: int = DEFAULT_CHUNKS,
        delay: float = DEFAULT_DELAY,
        allow: Iterable[str] = (),
        revoked: Iterable[str] = (),
        state_dir: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.started = _now()
        self._initial = {
            "chunks": _check_chunks(chunks),
            "delay": _check_delay(delay),
            "allow": {_check_fp(f) for f in allow},
            "revoked": {_check_fp(f) for f in revoked},
        }
        self._seed = seed
        self._ids = itertools.count(1)
        self.state_dir = state_dir
        self._request_log = None
        self._server_log = None
        if state_dir:
            os.makedirs(state_dir, exist_ok=True)
            self._request_log = open(os.path.join(state_dir, REQUEST_LOG), "a", encoding="utf-8")
            self._server_log = open(os.path.join(state_dir, SERVER_LOG), "a", encoding="utf-8")
        self.reset(log=False)

    # -- lifecycle -------------------------------------------------------

    def reset(self, log: bool = True) -> None:
        with self.lock:
            self.records: collections.deque[dict] = collections.deque(maxlen=MAX_RECORDS)
            self.revoked = set(self._initial["revoked"])
            self.allow = set(self._initial["allow"])
            self.faults: list[FaultRule] = []
            self.stream_default = {"chunks": self._initial["chunks"], "delay": self._initial["delay"]}
            self.stream_by_model: dict[str, dict] = {}
            self.rng = random.Random(self._seed)
            if log:
                self.log_event({"event": "control", "action": "reset"})

    def close(self) -> None:
        with self.lock:
            for fh in (self._request_log, self._server_log):
                if fh is not None:
                    try:
                        fh.close()
                    except OSError:
                        pass
            self._request_log = self._server_log = None

    # -- logs (fingerprints only, never keys) ----------------------------

    def log_event(self, obj: dict) -> None:
        with self.lock:
            if self._request_log is not None:
                try:
                    self._request_log.write(json.dumps(obj, sort_keys=True) + "\n")
                    self._request_log.flush()
                except (OSError, ValueError):
                    pass

    def log_line(self, line: str) -> None:
        with self.lock:
            if self._server_log is not None:
                try:
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                    self._server_log.write(f"{stamp} {line}\n")
                    self._server_log.flush()
                except (OSError, ValueError):
                    pass

    # -- keys ------------------------------------------------------------

    def key_problem(self, fp: str | None) -> str | None:
        """None when the key is accepted, else a short reason."""
        with self.lock:
            if fp is None:
                return "missing"
            if fp in self.revoked:
                return "revoked"
            if self.allow and fp not in self.allow:
                return "not_allowed"
            return None

    # -- faults ----------------------------------------------------------

    def take_fault(self, model: str | None) -> dict | None:
        """Consume the fault rules matching ``model``; describe what to inject."""
        with self.lock:
            if not self.faults:
                return None
            ordered = [r for r in self.faults if r.model is not None] + [
                r for r in self.faults if r.model is None
            ]
            status = retry_after = None
            latency = 0.0
            rule_ids = []
            for rule in ordered:
                if rule.model is not None and rule.model != model:
                    continue
                if rule.remaining is not None and rule.remaining <= 0:
                    continue
                wants_status = rule.status is not None and status is None
                if not wants_status and not rule.latency:
                    continue
                if rule.fraction is not None and self.rng.random() >= rule.fraction:
                    continue
                if wants_status:
                    status = rule.status
                    retry_after = rule.retry_after
                if rule.latency:
                    latency = max(latency, rule.latency)
                rule.hits += 1
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule_ids.append(rule.id)
            self.faults = [r for r in self.faults if r.remaining is None or r.remaining > 0]
            if not rule_ids:
                return None
            if status == 429 and retry_after is None:
                retry_after = DEFAULT_RETRY_AFTER
            return {"status": status, "latency": latency, "retry_after": retry_after, "rules": rule_ids}

    def add_fault(self, body: dict) -> dict:
        if body.get("clear"):
            model = body.get("model")
            with self.lock:
                if model is None:
                    self.faults = []
                else:
                    self.faults = [r for r in self.faults if r.model != model]
                self.log_event({"event": "control", "action": "faults.clear", "model": model})
                return {"faults": [r.to_json() for r in self.faults]}
        rule = FaultRule.from_json(body)
        with self.lock:
            self.faults.append(rule)
            self.log_event({"event": "control", "action": "faults.add", "rule": rule.to_json()})
            return {"rule": rule.to_json(), "faults": [r.to_json() for r in self.faults]}

    # -- streaming -------------------------------------------------------

    def stream_settings(self, model: str | None) -> tuple[int, float]:
        with self.lock:
            s = dict(self.stream_default)
            if model is not None and model in self.stream_by_model:
                s.update(self.stream_by_model[model])
            return s["chunks"], s["delay"]

    def set_stream(self, body: dict) -> dict:
        upd = {}
        if body.get("chunks") is not None:
            upd["chunks"] = _check_chunks(body["chunks"])
        if body.get("delay") is not None:
            upd["delay"] = _check_delay(body["delay"])
        model = body.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ControlError("model must be a non-empty string or null")
        with self.lock:
            if model is None:
                self.stream_default.update(upd)
            else:
                self.stream_by_model.setdefault(model, {}).update(upd)
            self.log_event({"event": "control", "action": "stream", "model": model, **upd})
            return self.stream_view()

    def stream_view(self) -> dict:
        with self.lock:
            return {**self.stream_default, "per_model": {m: dict(v) for m, v in self.stream_by_model.items()}}

    # -- records ---------------------------------------------------------

    def new_record(self, **fields: Any) -> dict:
        rec = {
            "id": 0,
            "time": _now(),
            "method": "POST",
            "path": "",
            "api": None,
            "model": None,
            "deployment": None,
            "stream": False,
            "fingerprint": None,
            "api_version": None,  # Azure's api-version query parameter
            "client": None,
            "status": None,
            "error": None,
            "fault": None,
            "duration": None,
            "completed": False,
            "aborted": False,
        }
        rec.update(fields)
        with self.lock:
            rec["id"] = next(self._ids)
            self.records.append(rec)
        return rec

    def update_record(self, rec: dict, **fields: Any) -> None:
        with self.lock:
            rec.update(fields)

    def finish_record(self, rec: dict, **fields: Any) -> None:
        with self.lock:
            rec.update(fields)
            rec["duration"] = round(_now() - rec["time"], 4)
            self.log_event({"event": "request", **rec})

    def list_records(
        self,
        *,
        since: float | None = None,
        model: str | None = None,
        path: str | None = None,
        fp: str | None = None,
        client: str | None = None,
        api: str | None = None,
    ) -> list[dict]:
        with self.lock:
            out = []
            for r in self.records:
                if since is not None and r["time"] < since:
                    continue
                if model is not None and r["model"] != model:
                    continue
                if path is not None and r["path"] != path:
                    continue
                if fp is not None and r["fingerprint"] != fp:
                    continue
                if client is not None and r["client"] != client:
                    continue
                if api is not None and r["api"] != api:
                    continue
                out.append(dict(r))
            return out

    def fingerprint_summary(self, since: float | None = None) -> dict:
        with self.lock:
            out: dict[str, dict] = {}
            for r in self.records:
                fp = r["fingerprint"]
                if fp is None or (since is not None and r["time"] < since):
                    continue
                e = out.get(fp)
                if e is None:
                    e = out[fp] = {
                        "count": 0,
                        "first_seen": r["time"],
                        "last_seen": r["time"],
                        "statuses": {},
                        "models": set(),
                        "revoked": fp in self.revoked,
                    }
                e["count"] += 1
                e["first_seen"] = min(e["first_seen"], r["time"])
                e["last_seen"] = max(e["last_seen"], r["time"])
                st = str(r["status"])
                e["statuses"][st] = e["statuses"].get(st, 0) + 1
                if r["model"] is not None:
                    e["models"].add(r["model"])
            for e in out.values():
                e["models"] = sorted(e["models"])
            return out

    def known_models(self) -> list[str]:
        with self.lock:
            seen = {r["model"] for r in self.records if r["model"]}
        return sorted(seen | {"fake-model"})

    def config_view(self) -> dict:
        with self.lock:
            return {
                "revoked": sorted(self.revoked),
                "allow": sorted(self.allow),
                "faults": [r.to_json() for r in self.faults],
                "stream": self.stream_view(),
                "records": len(self.records),
                "started": self.started,
                "pid": os.getpid(),
            }


def _check_fp(value: Any) -> str:
    if not isinstance(value, str) or not _FP_RE.match(value.strip().lower()):
        raise ControlError("fingerprint must be 16 hex characters: sha256(key).hexdigest()[:16]")
    return value.strip().lower()


def _check_chunks(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ControlError("chunks must be an integer in 1..10000")
    return value


def _check_delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 600:
        raise ControlError("delay must be a number of seconds in 0..600")
    return float(value)


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


_OPENAI_ERR = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}
_ANTHROPIC_ERR = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
# "Incorrect API key provided" is what OpenAI says, and what LiteLLM looks for to
# map a 401 with type invalid_request_error to AuthenticationError (not BadRequest).
_KEY_MESSAGES = {
    "missing": "Incorrect API key provided: no API key in the request.",
    "revoked": "Incorrect API key provided: key with fingerprint {fp} is revoked.",
    "not_allowed": "Incorrect API key provided: key with fingerprint {fp} is not in the allow-list.",
}


# Google's canonical status names (google.rpc.Code) for the HTTP statuses its APIs answer with.
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# What Google answers for a key it refuses: LiteLLM maps "API key not valid." to AuthenticationError (its
# vertex/gemini exception mapping), whatever the HTTP status.  No key at all is a 403 (no caller identity).
_GEMINI_KEY_INVALID = "API key not valid. Please pass a valid API key."
_GEMINI_KEY_MISSING = ("Method doesn't allow unregistered callers (callers without established identity). "
                       "Please use API Key or other form of API consumer identity to call this API.")
# Azure's error codes are strings: the status itself for the gateway-level errors (401, 404, 429), names for others.
_AZURE_CODE = {
    400: "BadRequest",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}
_AZURE_KEY_INVALID = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                      "valid key for an active subscription and use a correct regional API endpoint for your "
                      "resource.")
_AZURE_KEY_MISSING = ("Access denied due to missing subscription key. Make sure to include subscription key when "
                      "making requests to an API.")

_GEMINI_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|streamGenerateContent)$")
_GEMINI_ANY = re.compile(r"^/(v1|v1beta|v1alpha)/models/[^/]+:")
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


class _ClientGone(Exception):
    pass


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gatekit-fakeprovider/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 600  # idle keep-alive connections are dropped after this

    server: "FakeProviderServer"

    # -- plumbing --------------------------------------------------------

    @property
    def state(self) -> ProviderState:
        return self.server.state

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # request line + status only; headers (and so keys) are never logged
        self.state.log_line(f"{self.address_string()} {format % args}")

    def _split_path(self) -> tuple[str, dict[str, list[str]]]:
        parsed = urllib.parse.urlsplit(self.path)
        path = re.sub(r"/{2,}", "/", parsed.path or "/")
        if len(path) > 1:
            path = path.rstrip("/")
        return path, urllib.parse.parse_qs(parsed.query)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    # chunked SSE: every event is one HTTP chunk, flushed at once
    def _start_sse(self, content_type: str | None = None, headers: dict[str, str] | None = None) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", content_type or "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone() from exc

    def _sse(self, data: str, event: str | None = None) -> None:
        self._write_chunk((f"event: {event}\n" if event else "") + f"data: {data}\n\n")

    def _write_chunk(self, text: str) -> None:
        payload = text.encode("utf-8")
        if self._chunked:
            payload = b"%x\r\n%s\r\n" % (len(payload), payload)
        try:
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone() from exc

    def _end_sse(self) -> None:
        try:
            if self._chunked:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError as exc:
            raise _ClientGone() from exc

    # -- dispatch --------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        path, query = self._split_path()
        self._query = query
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send_json(400, {"error": {"message": "unreadable request body", "type": "invalid_request_error"}})
            return
        try:
            if path.startswith("/_control/") or path == "/_control":
                self._control(method, path, query, raw)
            elif method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
                self._completion("openai", path, raw)
            elif method == "POST" and path == "/v1/messages":
                self._completion("anthropic", path, raw)
            elif method == "POST" and path == "/v1/messages/count_tokens":
                self._count_tokens(path, raw)
            elif method == "POST" and (m := _GEMINI_PATH.match(path)):
                stream = m.group(3) == "streamGenerateContent"
                alt = (query.get("alt") or [""])[-1]
                self._completion("gemini", path, raw, path_model=urllib.parse.unquote(m.group(2)),
                                 path_stream=stream, sse=alt == "sse")
            elif method == "POST" and (m := _AZURE_PATH.match(path)):
                self._azure(path, urllib.parse.unquote(m.group(1)), query, raw)
            elif method == "GET" and path in ("/v1/models", "/models"):
                self._models(path)
            elif method == "GET" and path in ("/", "/health", "/healthz"):
                self._send_json(200, {"status": "ok", "service": "gatekit-fakeprovider"})
            else:
                if path.startswith("/v1/messages"):
                    api = "anthropic"
                elif _GEMINI_ANY.match(path):
                    api = "gemini"
                elif path.startswith("/openai/"):
                    api = "azure"
                else:
                    api = "openai"
                rec = self._new_record(method=method, path=path, api=api, status=404,
                                       fingerprint=self._fingerprint(api))
                self._error(api, 404, "Resource not found" if api == "azure" else f"Unknown endpoint {method} {path}")
                self.state.finish_record(rec, completed=True, error="not_found")
        except _ClientGone:
            self.close_connection = True

    def _new_record(self, **fields: Any) -> dict:
        """A request's record, with the address it came from (which gateway, when several share this provider)."""
        return self.state.new_record(client=self.client_address[0], **fields)

    # -- auth / errors ---------------------------------------------------

    def _fingerprint(self, api: str) -> str | None:
        if api == "anthropic":
            key = self.headers.get("x-api-key")
        elif api == "gemini":
            # Google AI Studio: the x-goog-api-key header (what LiteLLM sends), else the ?key= query parameter.
            key = self.headers.get("x-goog-api-key")
            if not (key or "").strip():
                key = (getattr(self, "_query", {}).get("key") or [""])[-1]
        elif api == "azure":
            # Azure OpenAI: the api-key header (the openai SDK's AzureOpenAI with an api_key), else an Entra ID
            # bearer token (azure_ad_token), fingerprinted the same way.
            key = self.headers.get("api-key")
            if not (key or "").strip():
                scheme, _, key = (self.headers.get("Authorization") or "").strip().partition(" ")
                if scheme.lower() != "bearer":
                    key = ""
        elif api == "any":
            key = self.headers.get("x-api-key")
            if not key:
                return self._fingerprint("openai")
        else:
            auth = self.headers.get("Authorization") or ""
            scheme, _, key = auth.strip().partition(" ")
            if scheme.lower() != "bearer":
                key = ""
        key = (key or "").strip()
        return fingerprint(key) if key else None

    def _error(self, api: str, status: int, message: str, headers: dict[str, str] | None = None,
               details: list[dict] | None = None) -> None:
        if api == "gemini":
            gstatus = _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
            body = {"error": {"code": status, "message": message, "status": gstatus}}
            if details:
                body["error"]["details"] = details
        elif api == "azure":
            body = {"error": {"code": _AZURE_CODE.get(status, str(status)), "message": message}}
        elif api == "anthropic":
            etype = _ANTHROPIC_ERR.get(status, "api_error" if status >= 500 else "invalid_request_error")
            body = {"type": "error", "error": {"type": etype, "message": message}}
            headers = {"request-id": f"req_fake_{uuid.uuid4().hex[:24]}", **(headers or {})}
        else:
            etype, code = _OPENAI_ERR.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
            body = {"error": {"message": message, "type": etype, "param": None, "code": code}}
        self._send_json(status, body, headers)

    def _key_refusal(self, api: str, problem: str, fp: str | None) -> tuple[int, str, list[dict] | None]:
        """(HTTP status, message, error details) answering a refused key, as the provider of `api` does."""
        if api == "gemini":
            if problem == "missing":
                return 403, _GEMINI_KEY_MISSING, [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "CONSUMER_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"}}]
            return 400, _GEMINI_KEY_INVALID, [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                 "message": _GEMINI_KEY_INVALID}]
        if api == "azure":
            return 401, _AZURE_KEY_MISSING if problem == "missing" else _AZURE_KEY_INVALID, None
        return 401, _KEY_MESSAGES[problem].format(fp=fp), None

    # -- completions -----------------------------------------------------

    def _azure(self, path: str, deployment: str, query: dict[str, list[str]], raw: bytes) -> None:
        """Azure OpenAI chat completions: OpenAI's body and answers, the deployment from the path."""
        api_version = (query.get("api-version") or [""])[-1].strip()
        if not api_version:
            # Azure's front door answers a call without api-version before looking at anything else.
            rec = self._new_record(path=path, api="azure", model=deployment, deployment=deployment,
                                   fingerprint=self._fingerprint("azure"))
            self.state.update_record(rec, status=404, error="no_api_version")
            self._error("azure", 404, "Resource not found")
            self.state.finish_record(rec, completed=True)
            return
        self._completion("azure", path, raw, path_model=deployment, api_version=api_version)

    def _completion(self, api: str, path: str, raw: bytes, *, path_model: str | None = None,
                    path_stream: bool | None = None, api_version: str | None = None, sse: bool = True) -> None:
        """One completion call.  openai/anthropic/azure: streamed when the body says "stream": true; gemini:
        when the path says streamGenerateContent (`sse`: ?alt=sse, else Google's streamed JSON array).
        `path_model`: the model (Gemini) or deployment (Azure) named by the path; the body's otherwise."""
        state = self.state
        fp = self._fingerprint(api)
        rec = self._new_record(path=path, api=api, fingerprint=fp, api_version=api_version)
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if path_model is not None:
            stream = path_stream if path_stream is not None else isinstance(body, dict) and bool(body.get("stream"))
            state.update_record(rec, model=path_model, deployment=path_model, stream=stream)
        elif isinstance(body, dict):
            model = body.get("model")
            state.update_record(rec, model=model if isinstance(model, str) else None,
                                deployment=model if isinstance(model, str) else None,
                                stream=bool(body.get("stream")))

        problem = state.key_problem(fp)
        if problem is not None:
            status, message, details = self._key_refusal(api, problem, fp)
            state.update_record(rec, status=status, error=f"key_{problem}")
            self._error(api, status, message, details=details)
            state.finish_record(rec, completed=True)
            return
        if not isinstance(body, dict):
            state.update_record(rec, status=400, error="bad_json")
            self._error(api, 400, "Invalid JSON payload received: the body must be a JSON object."
                        if api == "gemini" else "Request body must be a JSON object")
            state.finish_record(rec, completed=True)
            return
        model = path_model if path_model is not None else body.get("model")
        if not isinstance(model, str) or not model:
            state.update_record(rec, status=400, error="no_model")
            self._error(api, 400, "you must provide a model parameter")
            state.finish_record(rec, completed=True)
            return
        if api == "gemini" and not (isinstance(body.get("contents"), list) and body["contents"]):
            state.update_record(rec, status=400, error="no_contents")
            self._error(api, 400, "* GenerateContentRequest.contents: contents is not specified\n")
            state.finish_record(rec, completed=True)
            return

        fault = state.take_fault(model)
        if fault is not None:
            state.update_record(rec, fault=fault)
            if fault["latency"]:
                time.sleep(fault["latency"])
            if fault["status"] is not None:
                status = fault["status"]
                headers = {}
                if fault["retry_after"] is not None:
                    headers["Retry-After"] = str(int(fault["retry_after"]) if float(fault["retry_after"]).is_integer()
                                                 else fault["retry_after"])
                details = None
                if api == "gemini" and status == 429 and fault["retry_after"] is not None:
                    # Google says when to retry in the error's details (google.rpc.RetryInfo), not in a header.
                    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                "retryDelay": f"{int(fault['retry_after'])}s"}]
                state.update_record(rec, status=status, error="injected")
                self._error(api, status, f"Injected fault: HTTP {status} for model {model}", headers, details)
                state.finish_record(rec, completed=True)
                return

        if api == "gemini":
            prompt_tokens = max(1, _count_words(body.get("contents"))
                                + _count_words(body.get("systemInstruction") or body.get("system_instruction")))
            stream = bool(path_stream)
        else:
            prompt_tokens = max(1, _count_words(body.get("messages")) + _count_words(body.get("system")))
            stream = bool(body.get("stream"))
        text = answer_text(model)
        completion_tokens = len(text.split())
        state.update_record(rec, status=200)
        try:
            if not stream:
                if api == "anthropic":
                    self._send_json(200, _anthropic_message(model, text, prompt_tokens, completion_tokens))
                elif api == "gemini":
                    self._send_json(200, _gemini_response(model, text, prompt_tokens, completion_tokens))
                else:
                    self._send_json(200, _openai_completion(model, text, prompt_tokens, completion_tokens))
            else:
                chunks, delay = state.stream_settings(model)
                pieces = split_pieces(text, chunks)
                if api == "anthropic":
                    self._stream_anthropic(model, pieces, delay, prompt_tokens, completion_tokens)
                elif api == "gemini":
                    self._stream_gemini(model, pieces, delay, prompt_tokens, completion_tokens, sse)
                else:
                    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._stream_openai(model, pieces, delay, prompt_tokens, completion_tokens, include_usage)
        except (_ClientGone, OSError):
            self.close_connection = True
            state.finish_record(rec, aborted=True)
            return
        state.finish_record(rec, completed=True)

    def _stream_openai(self, model: str, pieces: list[str], delay: float, pt: int, ct: int,
                       include_usage: bool) -> None:
        cid = f"chatcmpl-fake{uuid.uuid4().hex[:20]}"
        created = int(_now())

        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if usage is not None:
                obj["usage"] = usage
            return json.dumps(obj)

        self._start_sse()
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(delay)
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            self._sse(chunk(delta))
        usage = {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct} if include_usage else None
        self._sse(chunk({}, "stop", usage))
        self._sse("[DONE]")
        self._end_sse()

    def _stream_anthropic(self, model: str, pieces: list[str], delay: float, pt: int, ct: int) -> None:
        mid = f"msg_fake{uuid.uuid4().hex[:20]}"
        self._start_sse()
        self._sse(json.dumps({
            "type": "message_start",
            "message": {
                "id": mid, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": pt, "output_tokens": 1},
            },
        }), "message_start")
        self._sse(json.dumps({"type": "content_block_start", "index": 0,
                              "content_block": {"type": "text", "text": ""}}), "content_block_start")
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(delay)
            self._sse(json.dumps({"type": "content_block_delta", "index": 0,
                                  "delta": {"type": "text_delta", "text": piece}}), "content_block_delta")
        self._sse(json.dumps({"type": "content_block_stop", "index": 0}), "content_block_stop")
        self._sse(json.dumps({"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {"output_tokens": ct}}), "message_delta")
        self._sse(json.dumps({"type": "message_stop"}), "message_stop")
        self._end_sse()

    def _stream_gemini(self, model: str, pieces: list[str], delay: float, pt: int, ct: int, sse: bool) -> None:
        """streamGenerateContent: one GenerateContentResponse per piece.  As Google sends them, each carries
        usageMetadata (the prompt's count; the candidates' only on the last) and the last finishReason STOP.
        With alt=sse every response is an SSE event, else an element of one JSON array; either way each
        is its own HTTP chunk, flushed at once."""
        rid = _gemini_response_id()
        last = len(pieces) - 1
        self._start_sse(None if sse else "application/json; charset=UTF-8")
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(delay)
            usage = _gemini_usage(pt, ct) if i == last else _gemini_usage(pt, None)
            data = json.dumps(_gemini_candidate_response(model, rid, piece, usage, finished=i == last))
            if sse:
                self._sse(data)
            else:
                self._write_chunk(("[" if i == 0 else "\n,\r\n") + data + ("\n]" if i == last else ""))
        self._end_sse()

    def _count_tokens(self, path: str, raw: bytes) -> None:
        fp = self._fingerprint("anthropic")
        rec = self._new_record(path=path, api="anthropic", fingerprint=fp)
        problem = self.state.key_problem(fp)
        if problem is not None:
            self.state.update_record(rec, status=401, error=f"key_{problem}")
            self._error("anthropic", 401, _KEY_MESSAGES[problem].format(fp=fp))
        else:
            try:
                body = json.loads(raw.decode("utf-8")) if raw else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                body = {}
            body = body if isinstance(body, dict) else {}
            model = body.get("model") if isinstance(body.get("model"), str) else None
            n = max(1, _count_words(body.get("messages")) + _count_words(body.get("system")))
            self.state.update_record(rec, status=200, model=model, deployment=model)
            self._send_json(200, {"input_tokens": n})
        self.state.finish_record(rec, completed=True)

    def _models(self, path: str) -> None:
        fp = self._fingerprint("any")
        rec = self._new_record(method="GET", path=path, api="models", fingerprint=fp)
        problem = self.state.key_problem(fp)
        if problem is not None:
            self.state.update_record(rec, status=401, error=f"key_{problem}")
            self._error("openai", 401, _KEY_MESSAGES[problem].format(fp=fp))
        else:
            created = int(self.state.started)
            data = [{"id": m, "object": "model", "created": created, "owned_by": "gatekit-fakeprovider"}
                    for m in self.state.known_models()]
            self.state.update_record(rec, status=200)
            self._send_json(200, {"object": "list", "data": data})
        self.state.finish_record(rec, completed=True)

    # -- control API -----------------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> None:
        state = self.state
        name = path[len("/_control/"):] if path.startswith("/_control/") else ""

        def q(key: str) -> str | None:
            vals = query.get(key)
            return vals[-1] if vals else None

        def qfloat(key: str) -> float | None:
            v = q(key)
            if v is None or v == "":
                return None
            try:
                return float(v)
            except ValueError:
                raise ControlError(f"{key} must be a number (unix time)") from None

        try:
            try:
                body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ControlError("body must be JSON") from None
            if not isinstance(body, dict):
                raise ControlError("body must be a JSON object")

            if method == "GET" and name == "requests":
                fp = q("fingerprint")
                recs = state.list_records(since=qfloat("since"), model=q("model"), path=q("path"),
                                          fp=_check_fp(fp) if fp else None, client=q("client"), api=q("api"))
                self._send_json(200, {"requests": recs})
            elif method == "GET" and name == "fingerprints":
                self._send_json(200, {"fingerprints": state.fingerprint_summary(qfloat("since"))})
            elif method == "POST" and name == "reset":
                state.reset()
                self._send_json(200, {"ok": True})
            elif method == "POST" and name in ("revoke", "unrevoke"):
                fps = body.get("fingerprints")
                if fps is None:
                    fps = [body.get("fingerprint")]
                if not isinstance(fps, list):
                    raise ControlError("fingerprints must be a list")
                fps = [_check_fp(f) for f in fps]
                with state.lock:
                    if name == "revoke":
                        state.revoked.update(fps)
                    else:
                        state.revoked.difference_update(fps)
                    state.log_event({"event": "control", "action": name, "fingerprints": fps})
                    revoked = sorted(state.revoked)
                self._send_json(200, {"revoked": revoked})
            elif method == "POST" and name == "allow":
                fps = body.get("fingerprints")
                if fps is None:
                    fps = []
                if not isinstance(fps, list):
                    raise ControlError("fingerprints must be a list (empty = accept every key)")
                fps = [_check_fp(f) for f in fps]
                with state.lock:
                    state.allow = set(fps)
                    state.log_event({"event": "control", "action": "allow", "fingerprints": fps})
                    allow = sorted(state.allow)
                self._send_json(200, {"allow": allow})
            elif name == "faults" and method in ("POST", "DELETE"):
                if method == "DELETE":
                    body = {**body, "clear": True}
                self._send_json(200, state.add_fault(body))
            elif method == "GET" and name == "faults":
                with state.lock:
                    faults = [r.to_json() for r in state.faults]
                self._send_json(200, {"faults": faults})
            elif method == "POST" and name == "stream":
                self._send_json(200, {"stream": state.set_stream(body)})
            elif method == "GET" and name == "stream":
                self._send_json(200, {"stream": state.stream_view()})
            elif method == "GET" and name in ("health", "config", ""):
                self._send_json(200, {"status": "ok", **state.config_view()})
            else:
                self._send_json(404, {"error": f"unknown control endpoint {method} {path}"})
        except ControlError as exc:
            self._send_json(400, {"error": str(exc)})


def _openai_completion(model: str, text: str, pt: int, ct: int) -> dict:
    return {
        "id": f"chatcmpl-fake{uuid.uuid4().hex[:20]}",
        "object": "chat.completion",
        "created": int(_now()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
    }


def _anthropic_message(model: str, text: str, pt: int, ct: int) -> dict:
    return {
        "id": f"msg_fake{uuid.uuid4().hex[:20]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": pt, "output_tokens": ct},
    }


def _gemini_response_id() -> str:
    # letters only: LiteLLM's Gemini error mapping looks for "403" anywhere in a body, so no random digits
    return "".join(random.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(22))


def _gemini_usage(pt: int, ct: int | None) -> dict:
    """usageMetadata; ct None: a stream's intermediate response, which carries the prompt's count only."""
    usage = {"promptTokenCount": pt}
    if ct is not None:
        usage["candidatesTokenCount"] = ct
    usage["totalTokenCount"] = pt + (ct or 0)
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": pt}]
    return usage


def _gemini_candidate_response(model: str, rid: str, text: str, usage: dict, finished: bool) -> dict:
    candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}}
    if finished:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": rid}


def _gemini_response(model: str, text: str, pt: int, ct: int) -> dict:
    """A GenerateContentResponse (Google AI Studio's generateContent answer)."""
    return _gemini_candidate_response(model, _gemini_response_id(), text, _gemini_usage(pt, ct), finished=True)


# --------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------


class FakeProviderServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], state: ProviderState) -> None:
        host = address[0]
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.state = state
        self.thread: threading.Thread | None = None
        super().__init__(address, Handler)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        # type and message only: never a traceback with local variables
        self.state.log_line(f"error handling request from {client_address}: {type(exc).__name__}: {exc}")

    def stop(self) -> None:
        """Stop serving (when started by serve_in_thread) and release everything."""
        if self.thread is not None:
            self.shutdown()
            self.thread.join(timeout=5)
            self.thread = None
        self.server_close()
        self.state.close()


def make_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    chunks: int = DEFAULT_CHUNKS,
    delay: float = DEFAULT_DELAY,
    allow: Iterable[str] = (),
    revoked: Iterable[str] = (),
    state_dir: str | os.PathLike | None = None,
    seed: int | None = None,
) -> FakeProviderServer:
    state = ProviderState(chunks=chunks, delay=delay, allow=allow, revoked=revoked,
                          state_dir=os.fspath(state_dir) if state_dir else None, seed=seed)
    try:
        return FakeProviderServer((host, port), state)
    except BaseException:
        state.close()
        raise


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> tuple[FakeProviderServer, str]:
    """Start a provider on a daemon thread; returns (server, base_url).

    Stop it with ``server.stop()``.  ``kwargs`` go to :func:`make_server`
    (chunks, delay, allow, revoked, state_dir, seed).
    """
    server = make_server(host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"fakeprovider-{server.server_address[1]}", daemon=True)
    server.thread = thread
    thread.start()
    return server, server.base_url


# --------------------------------------------------------------------------
# client (stdlib urllib; proxies from the environment are ignored)
# --------------------------------------------------------------------------


class FakeProviderError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"fake provider control API answered HTTP {status}: {body}")
        self.status = status
        self.body = body


class FakeProviderClient:
    """Drive a running fake provider through its ``/_control/`` API."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
        url = f"{self.base_url}/_control/{path}"
        if query:
            q = {k: v for k, v in query.items() if v is not None}
            if q:
                url += "?" + urllib.parse.urlencode(q)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            raise FakeProviderError(exc.code, exc.read().decode("utf-8", "replace")) from None

    # -- queries
    def health(self) -> dict:
        return self._call("GET", "health")

    def wait_ready(self, timeout: float = 15.0) -> dict:
        """Poll /_control/health until it answers (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (OSError, FakeProviderError):
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"fake provider at {self.base_url} not ready after {timeout}s") from None
                time.sleep(0.1)

    def requests(self, since: float | None = None, model: str | None = None, path: str | None = None,
                 fingerprint: str | None = None, client: str | None = None, api: str | None = None) -> list[dict]:
        """Recorded requests, filtered; `client` is the address a request came from (a gateway's), `api` one
        of "openai", "anthropic", "gemini", "azure", "models"."""
        return self._call("GET", "requests", query={"since": since, "model": model, "path": path,
                                                      "fingerprint": fingerprint, "client": client,
                                                      "api": api})["requests"]

    def fingerprints(self, since: float | None = None) -> dict[str, dict]:
        """{fingerprint: {count, first_seen, last_seen, statuses, models, revoked}}."""
        return self._call("GET", "fingerprints", query={"since": since})["fingerprints"]

    def config(self) -> dict:
        return self._call("GET", "config")

    # -- changes
    def reset(self) -> None:
        self._call("POST", "reset", {})

    def revoke(self, fp: str) -> list[str]:
        return self._call("POST", "revoke", {"fingerprint": fp})["revoked"]

    def unrevoke(self, fp: str) -> list[str]:
        return self._call("POST", "unrevoke", {"fingerprint": fp})["revoked"]

    def allow(self, fps: Iterable[str]) -> list[str]:
        """Allow-list mode; an empty list accepts every non-empty key again."""
        return self._call("POST", "allow", {"fingerprints": list(fps)})["allow"]

    def faults(
        self,
        status: int | None = None,
        count: int | None = None,
        *,
        model: str | None = None,
        fraction: float | None = None,
        latency: float | None = None,
        retry_after: float | None = None,
    ) -> dict:
        body = {"status": status, "count": count, "model": model, "fraction": fraction,
                "latency": latency, "retry_after": retry_after}
        return self._call("POST", "faults", {k: v for k, v in body.items() if v is not None})

    def clear_faults(self, model: str | None = None) -> dict:
        return self._call("POST", "faults", {"clear": True, **({"model": model} if model else {})})

    def stream(self, chunks: int | None = None, delay: float | None = None, *, model: str | None = None) -> dict:
        body = {"chunks": chunks, "delay": delay, "model": model}
        return self._call("POST", "stream", {k: v for k, v in body.items() if v is not None})["stream"]


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fake OpenAI/Anthropic/Gemini/Azure provider for gatekit e2e tests")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18080, help="port to bind, 0 = any free port (default 18080)")
    p.add_argument("--state-dir", help="directory for the pid file, info file and request logs")
    p.add_argument("--chunks", type=int, default=DEFAULT_CHUNKS, help="stream pieces (default %(default)s)")
    p.add_argument("--delay", type=float, default=DEFAULT_DELAY,
                   help="seconds between stream pieces (default %(default)s)")
    p.add_argument("--allow", action="append", default=[], metavar="FP",
                   help="start in allow-list mode with this key fingerprint (repeatable)")
    p.add_argument("--revoke", action="append", default=[], metavar="FP",
                   help="start with this key fingerprint revoked (repeatable)")
    p.add_argument("--seed", type=int, help="seed for fraction-based faults")
    args = p.parse_args(argv)

    try:
        server = make_server(args.host, args.port, chunks=args.chunks, delay=args.delay, allow=args.allow,
                             revoked=args.revoke, state_dir=args.state_dir, seed=args.seed)
    except ControlError as exc:
        p.error(str(exc))
    except OSError as exc:
        print(f"fakeprovider: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    pid_path = info_path = None
    host, port = server.server_address[:2]
    if args.state_dir:
        pid_path = os.path.join(args.state_dir, PID_FILE)
        info_path = os.path.join(args.state_dir, INFO_FILE)
        _write_atomic(info_path, json.dumps({"pid": os.getpid(), "host": host, "port": port,
                                             "base_url": server.base_url, "started": server.state.started}) + "\n")
        _write_atomic(pid_path, f"{os.getpid()}\n")  # written last: its presence means "listening"

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="fakeprovider", daemon=True)
    thread.start()
    server.state.log_line(f"listening on {host}:{port} pid {os.getpid()}")
    print(f"fakeprovider: listening on {server.base_url} (pid {os.getpid()})", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            if not thread.is_alive():
                break
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
        server.state.log_line("stopped")
        server.state.close()
        for path in (pid_path, info_path):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    print("fakeprovider: stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
