#!/usr/bin/env python3
"""Manual check: LiteLLM's own gemini/ and azure/ provider code against lab/fakeprovider.py.

A manual check, not a unit test and not part of any suite (pytest does not collect it): it needs a
throwaway venv with LiteLLM installed (gatekit's own venv has no LiteLLM), built outside the checkout
from the local wheelhouse, and it runs on loopback only, with no network (it passes inside
``unshare -rn sh -c 'ip link set lo up && ...'``)::

    /tmp/uvenv/bin/uv venv /tmp/llvenv --python /usr/bin/python3.11
    /tmp/uvenv/bin/uv pip install --python /tmp/llvenv/bin/python --no-index --no-deps \\
        --find-links /var/cache/gatekit-sandbox/wheelhouse-<one with litellm-1.106.2> -r requirements/litellm.lock
    /tmp/llvenv/bin/python lab/verify_providers.py

It starts the fake provider in-process (port 0), then calls litellm.completion / litellm.acompletion,
non-streamed and streamed, for ``gemini/fake-gemini-1`` (api_base http://HOST:PORT/v1beta) and
``azure/fake-azure-dep`` (api_base http://HOST:PORT, api_version 2024-10-21); then a wrong key for
each, 429 and 503 faults, and a Router with timeout / stream_timeout per deployment as gatekit renders
them.  It prints what LiteLLM sent on the wire (method, path, query parameters with a key's value
redacted, header names, body keys; never a key) and exits non-zero when any check failed.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of the model cost map
os.environ.setdefault("LITELLM_TELEMETRY", "False")
for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(var, None)
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

_spec = importlib.util.spec_from_file_location("fakeprovider", Path(__file__).resolve().parent / "fakeprovider.py")
fp = importlib.util.module_from_spec(_spec)
sys.modules["fakeprovider"] = fp
_spec.loader.exec_module(fp)

import litellm  # noqa: E402  (after the environment above)

KEY = "verify-PLAINTEXT-key-0123"
WRONG = "verify-wrong-key-4567"
GEMINI = "fake-gemini-1"
AZURE = "fake-azure-dep"
API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "say something please"}]

WIRE: list[dict] = []
_orig_dispatch = fp.Handler._dispatch


def _spy(self, method):  # what LiteLLM sent: names only, no key values
    parsed = fp.urllib.parse.urlsplit(self.path)
    query = fp.urllib.parse.parse_qs(parsed.query)
    length = int(self.headers.get("Content-Length") or 0)
    entry = {"method": method, "path": parsed.path, "query": {k: ("<redacted>" if k == "key" else v[-1])
                                                               for k, v in query.items()},
             "headers": sorted(h.lower() for h in self.headers.keys()), "length": length,
             "retry_count": self.headers.get("x-stainless-retry-count")}
    WIRE.append(entry)
    return _orig_dispatch(self, method)


fp.Handler._dispatch = _spy
_orig_read = fp.Handler._read_body


def _read_spy(self):
    raw = _orig_read(self)
    try:
        WIRE[-1]["body_keys"] = sorted(json.loads(raw))
        WIRE[-1]["body"] = {k: v for k, v in json.loads(raw).items() if k not in ("messages", "contents")}
    except (ValueError, TypeError, IndexError):
        pass
    return raw


fp.Handler._read_body = _read_spy

FAILS: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + what)
    if not cond:
        FAILS.append(what)


def params(provider: str, base: str, key: str = KEY) -> dict:
    if provider == "gemini":
        return {"model": f"gemini/{GEMINI}", "api_base": f"{base}/v1beta", "api_key": key}
    return {"model": f"azure/{AZURE}", "api_base": base, "api_version": API_VERSION, "api_key": key}


def show_wire(since: int) -> None:
    for w in WIRE[since:]:
        print(f"    wire: {w['method']} {w['path']} query={w['query']} headers={w['headers']} "
              f"body_keys={w.get('body_keys')} body={w.get('body')}")


def stream_pieces(resp) -> tuple[list[tuple[float, str]], object]:
    pieces, usage = [], None
    for chunk in resp:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append((time.monotonic(), chunk.choices[0].delta.content))
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return pieces, usage


async def astream_pieces(resp) -> tuple[list[tuple[float, str]], object]:
    pieces, usage = [], None
    async for chunk in resp:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append((time.monotonic(), chunk.choices[0].delta.content))
        if getattr(chunk, "usage", None):
            usage = chunk.usage
    return pieces, usage


def run_provider(provider: str, base: str, ctl) -> None:
    model = GEMINI if provider == "gemini" else AZURE
    want = fp.answer_text(model)
    print(f"== {provider}: {params(provider, base)['model']}")

    mark = len(WIRE)
    r = litellm.completion(messages=MESSAGES, **params(provider, base))
    show_wire(mark)
    check(r.choices[0].message.content == want, f"completion text == {want!r} (got {r.choices[0].message.content!r})")
    check(r.usage.prompt_tokens == 3 and r.usage.completion_tokens == len(want.split())
          and r.usage.total_tokens == 3 + len(want.split()), f"completion usage read: {r.usage}")

    mark = len(WIRE)
    r = asyncio.run(litellm.acompletion(messages=MESSAGES, **params(provider, base)))
    show_wire(mark)
    check(r.choices[0].message.content == want, "acompletion text")
    check(r.usage.completion_tokens == len(want.split()), f"acompletion usage read: {r.usage}")

    mark = len(WIRE)
    extra = {"stream_options": {"include_usage": True}}
    pieces, usage = stream_pieces(litellm.completion(messages=MESSAGES, stream=True, **extra,
                                                     **params(provider, base)))
    show_wire(mark)
    check("".join(p for _, p in pieces) == want, f"stream text == answer ({len(pieces)} pieces)")
    check(len(pieces) == fp.DEFAULT_CHUNKS, f"stream: {fp.DEFAULT_CHUNKS} separate pieces (got {len(pieces)})")
    check(pieces[-1][0] - pieces[0][0] > 0.6, f"stream pieces spread in time "
          f"({pieces[-1][0] - pieces[0][0]:.2f} s first..last)")
    check(usage is not None and usage.completion_tokens == len(want.split()), f"stream usage read: {usage}")

    mark = len(WIRE)

    async def astream():
        return await astream_pieces(await litellm.acompletion(messages=MESSAGES, stream=True, **extra,
                                                              **params(provider, base)))
    pieces, usage = asyncio.run(astream())
    show_wire(mark)
    check("".join(p for _, p in pieces) == want and len(pieces) == fp.DEFAULT_CHUNKS,
          f"astream text == answer, {len(pieces)} pieces")
    check(pieces[-1][0] - pieces[0][0] > 0.6, "astream pieces spread in time")
    check(usage is not None and usage.completion_tokens == len(want.split()), f"astream usage read: {usage}")

    for label, call in (("completion", lambda p: litellm.completion(messages=MESSAGES, num_retries=0, **p)),
                        ("acompletion", lambda p: asyncio.run(
                            litellm.acompletion(messages=MESSAGES, num_retries=0, **p)))):
        ctl.revoke(fp.fingerprint(WRONG))
        mark = len(WIRE)
        try:
            call(params(provider, base, key=WRONG))
        except Exception as exc:  # noqa: BLE001
            print(f"    wrong key ({label}) -> {type(exc).__module__}.{type(exc).__name__}: "
                  f"status {getattr(exc, 'status_code', None)}: {str(exc)[:160]}")
            check(isinstance(exc, litellm.AuthenticationError), f"wrong key ({label}): AuthenticationError")
        else:
            check(False, f"wrong key ({label}) raised nothing")
        show_wire(mark)
        ctl.unrevoke(fp.fingerprint(WRONG))

    # Rules without a count: the openai SDK under LiteLLM's azure/ provider retries 429 and 5xx itself
    # (x-stainless-retry-count), so a count=1 rule would be used up by the first try and the retry answered.
    for status, expected in ((429, (litellm.RateLimitError,)),
                             (503, (litellm.ServiceUnavailableError, litellm.InternalServerError))):
        ctl.faults(status=status, model=model)
        mark = len(WIRE)
        try:
            litellm.completion(messages=MESSAGES, num_retries=0, **params(provider, base))
        except Exception as exc:  # noqa: BLE001
            print(f"    {status} fault -> {type(exc).__name__}; tries on the wire: {len(WIRE) - mark} "
                  f"(x-stainless-retry-count {[w['retry_count'] for w in WIRE[mark:]]})")
            check(isinstance(exc, expected), f"{status} fault: {expected[0].__name__}")
        else:
            check(False, f"{status} fault raised nothing")
        ctl.clear_faults(model=model)

    recs = ctl.requests(api=provider)
    check(all(r["model"] == model and r["deployment"] == model for r in recs), "records: model/deployment")
    check({r["fingerprint"] for r in recs if r["status"] == 200} == {fp.fingerprint(KEY)}, "records: fingerprint")
    check(sum(1 for r in recs if r["stream"] and r["completed"]) == 2, "records: two completed streams")
    if provider == "azure":
        check({r["api_version"] for r in recs} == {API_VERSION}, "records: api_version")


def run_router(base: str) -> None:
    print("== Router (timeout / stream_timeout per deployment, as gatekit renders litellm_params)")
    os.environ["GK_VERIFY_KEY"] = KEY
    model_list = []
    for name, p in (("g", params("gemini", base)), ("a", params("azure", base))):
        model_list.append({"model_name": name, "litellm_params": {**p, "api_key": "os.environ/GK_VERIFY_KEY",
                                                                   "timeout": 5, "stream_timeout": 5}})
    router = litellm.Router(model_list=model_list, num_retries=0, timeout=30)
    for name, model in (("g", GEMINI), ("a", AZURE)):
        r = router.completion(model=name, messages=MESSAGES)
        check(r.choices[0].message.content == fp.answer_text(model), f"router {name}: text")
        pieces, _ = stream_pieces(router.completion(model=name, messages=MESSAGES, stream=True))
        check("".join(p for _, p in pieces) == fp.answer_text(model) and len(pieces) == fp.DEFAULT_CHUNKS,
              f"router {name}: stream, {len(pieces)} pieces")

        async def arun(name=name):
            r = await router.acompletion(model=name, messages=MESSAGES)
            s = await router.acompletion(model=name, messages=MESSAGES, stream=True)
            return r, await astream_pieces(s)
        r, (pieces, _) = asyncio.run(arun())
        check(r.choices[0].message.content == fp.answer_text(model) and len(pieces) == fp.DEFAULT_CHUNKS,
              f"router {name}: acompletion + astream")


def main() -> int:
    print(f"litellm {importlib.metadata.version('litellm')}")
    server, base = fp.serve_in_thread(seed=1)
    ctl = fp.FakeProviderClient(base)
    try:
        run_provider("gemini", base, ctl)
        run_provider("azure", base, ctl)
        run_router(base)
    finally:
        server.stop()
    print("FAILED: " + "; ".join(FAILS) if FAILS else "all checks passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
