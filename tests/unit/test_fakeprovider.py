"""Unit tests for lab/fakeprovider.py (loopback only, port 0, fast)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lab.fakeprovider import (
    FakeProviderClient,
    FakeProviderError,
    answer_text,
    fingerprint,
    serve_in_thread,
    split_pieces,
)

KEY = "fake-unit-test-PLAINTEXT-9f8e7d6c5b4a"
OTHER_KEY = "sk-other-PLAINTEXT-0a1b2c3d"
MODULE = Path(__file__).resolve().parents[2] / "lab" / "fakeprovider.py"


@pytest.fixture()
def provider(tmp_path):
    server, base_url = serve_in_thread(state_dir=tmp_path / "state", seed=1234)
    try:
        yield server, base_url
    finally:
        server.stop()


@pytest.fixture()
def base_url(provider):
    return provider[1]


@pytest.fixture()
def ctl(base_url):
    return FakeProviderClient(base_url)


@pytest.fixture()
def http(base_url):
    with httpx.Client(base_url=base_url, timeout=15, trust_env=False) as client:
        yield client


def chat(http, model="up-a", key=KEY, **extra):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def messages(http, model="claude-up", key=KEY, **extra):
    headers = {"anthropic-version": "2023-06-01"}
    if key is not None:
        headers["x-api-key"] = key
    body = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hello"}], **extra}
    return http.post("/v1/messages", json=body, headers=headers)


def sse_events(response):
    """Yield (arrival monotonic time, event name or None, data str) per SSE event."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            yield time.monotonic(), event, line[len("data:"):].strip()
            event = None


def openai_stream(response) -> tuple[list, list]:
    """An OpenAI-shaped SSE answer (OpenAI's and Azure's), checked to end in [DONE]: every chunk and the chunks with
    content, each as (arrival time, chunk)."""
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = list(sse_events(response))
    assert events[-1][2] == "[DONE]"
    chunks = [(t, json.loads(d)) for t, _, d in events[:-1]]
    return chunks, [(t, c) for t, c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]


def assert_arrived_apart(times: list[float]):
    """5 pieces sent 0.2 s apart arrived apart: lower bounds only, and relative (a loaded machine may delay one read,
    never batch the whole stream)."""
    assert times[-1] - times[0] > 0.6, "5 pieces, 0.2 s apart: ~0.8 s between first and last"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert sorted(gaps)[len(gaps) // 2] > 0.1, f"pieces were batched: gaps {gaps}"


def finished_record(ctl) -> dict:
    """The one recorded request once the fake has finished it (`duration` set): the client can read a stream's last
    bytes before the fake's handler thread records the end (seen on a loaded machine: `completed` still False)."""
    deadline = time.monotonic() + 10
    while True:
        (rec,) = ctl.requests()
        if rec["duration"] is not None or time.monotonic() > deadline:
            return rec
        time.sleep(0.02)


# -- helpers -----------------------------------------------------------------


def test_fingerprint_is_sha256_prefix():
    import hashlib

    assert fingerprint(KEY) == hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert len(fingerprint("x")) == 16


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 40])
def test_split_pieces_rejoins(n):
    text = answer_text("some-model")
    pieces = split_pieces(text, n)
    assert "".join(pieces) == text
    assert all(pieces)
    assert len(pieces) == n


# -- OpenAI-compatible ---------------------------------------------------------


def test_chat_completion_plain(http, ctl):
    r = chat(http, model="up-a", max_tokens=2)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    assert body["model"] == "up-a"
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "fake-answer model=up-a deployment=up-a",
                                 "refusal": None}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0

    rec = finished_record(ctl)
    assert rec["path"] == "/v1/chat/completions"
    assert rec["model"] == "up-a" and rec["deployment"] == "up-a"
    assert rec["stream"] is False and rec["status"] == 200
    assert rec["fingerprint"] == fingerprint(KEY)
    # The sender's address is recorded and filters: which gateway sent what, when several share one provider.
    assert rec["client"] == "127.0.0.1"
    assert ctl.requests(client="127.0.0.1") == [rec] and ctl.requests(client="10.0.0.9") == []


def test_chat_completion_stream_chunks_arrive_separately(http, ctl):
    body = {"model": "up-s", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    with http.stream("POST", "/v1/chat/completions", json=body,
                     headers={"Authorization": f"Bearer {KEY}"}) as r:
        chunks, content = openai_stream(r)
    assert len(content) == 5
    assert "".join(c["choices"][0]["delta"]["content"] for _, c in content) == answer_text("up-s")
    assert content[0][1]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "up-s" for _, c in chunks)
    final = chunks[-1][1]
    assert final["choices"][0]["finish_reason"] == "stop"
    assert final["usage"]["total_tokens"] == final["usage"]["prompt_tokens"] + final["usage"]["completion_tokens"]

    assert_arrived_apart([t for t, _ in content])

    rec = finished_record(ctl)
    assert rec["stream"] is True and rec["status"] == 200 and rec["completed"] is True


def test_stream_without_include_usage_and_custom_chunks(http, ctl):
    ctl.stream(chunks=3, delay=0)
    with http.stream("POST", "/v1/chat/completions", json={"model": "up-c", "stream": True, "messages": []},
                     headers={"Authorization": f"Bearer {KEY}"}) as r:
        events = [json.loads(d) for _, _, d in sse_events(r) if d != "[DONE]"]
    content = [e["choices"][0]["delta"]["content"] for e in events if e["choices"][0]["delta"].get("content")]
    assert len(content) == 3 and "".join(content) == answer_text("up-c")
    assert "usage" not in events[-1]
    # per-model stream settings override the global ones
    ctl.stream(chunks=7, delay=0, model="up-d")
    with http.stream("POST", "/v1/chat/completions", json={"model": "up-d", "stream": True, "messages": []},
                     headers={"Authorization": f"Bearer {KEY}"}) as r:
        events = [json.loads(d) for _, _, d in sse_events(r) if d != "[DONE]"]
    assert sum(1 for e in events if e["choices"][0]["delta"].get("content")) == 7


def test_models_endpoint(http):
    r = http.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list" and body["data"]
    assert all(m["object"] == "model" for m in body["data"])
    assert http.get("/v1/models").status_code == 401


def test_unknown_path_is_404_and_recorded(http, ctl):
    r = http.post("/v1/embeddings", json={"model": "x"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404
    assert "error" in r.json()
    assert ctl.requests()[-1]["path"] == "/v1/embeddings"


def test_bad_request_body(http):
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    r = http.post("/v1/chat/completions", json={"messages": []}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400


# -- Anthropic -----------------------------------------------------------------


def test_anthropic_plain(http, ctl):
    r = messages(http, model="claude-up")
    assert r.status_code == 200
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["model"] == "claude-up"
    assert body["content"] == [{"type": "text", "text": "fake-answer model=claude-up deployment=claude-up"}]
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    rec = finished_record(ctl)
    assert rec["path"] == "/v1/messages" and rec["api"] == "anthropic"
    assert rec["fingerprint"] == fingerprint(KEY)


def test_anthropic_wrong_auth_header_is_401(http):
    r = http.post("/v1/messages", json={"model": "c", "max_tokens": 5, "messages": []},
                  headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_anthropic_stream(http):
    t0 = time.monotonic()
    with http.stream("POST", "/v1/messages",
                     json={"model": "claude-s", "max_tokens": 64, "stream": True, "messages": []},
                     headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        events = list(sse_events(r))
    names = [e for _, e, _ in events]
    assert names == (["message_start", "content_block_start"] + ["content_block_delta"] * 5
                     + ["content_block_stop", "message_delta", "message_stop"])
    payloads = [json.loads(d) for _, _, d in events]
    assert [p["type"] for p in payloads] == names
    assert payloads[0]["message"]["model"] == "claude-s"
    deltas = [(t, json.loads(d)) for t, e, d in events if e == "content_block_delta"]
    assert "".join(p["delta"]["text"] for _, p in deltas) == answer_text("claude-s")
    assert deltas[-1][0] - deltas[0][0] > 0.6
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"
    assert payloads[-2]["usage"]["output_tokens"] > 0


def test_anthropic_count_tokens(http):
    r = http.post("/v1/messages/count_tokens", json={"model": "c", "messages": [{"role": "user", "content": "a b c"}]},
                  headers={"x-api-key": KEY})
    assert r.status_code == 200 and r.json()["input_tokens"] == 3


# -- Google Gemini (AI Studio) -------------------------------------------------

GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
               "systemInstruction": {"parts": [{"text": "be brief"}]},
               "generationConfig": {"temperature": 1.0}}


def gemini(http, model="gem-up", key=KEY, stream=False, version="v1beta", body=None, **query):
    headers = {"x-goog-api-key": key} if key is not None else {}
    method = "streamGenerateContent" if stream else "generateContent"
    if stream and "alt" not in query:
        query["alt"] = "sse"
    return http.post(f"/{version}/models/{model}:{method}", json=GEMINI_BODY if body is None else body,
                     headers=headers, params=query)


def test_gemini_generate_content_plain(http, ctl):
    r = gemini(http, model="gem-up")
    assert r.status_code == 200
    body = r.json()
    (cand,) = body["candidates"]
    assert cand["content"] == {"parts": [{"text": "fake-answer model=gem-up deployment=gem-up"}], "role": "model"}
    assert cand["finishReason"] == "STOP"
    # 2 words of contents + 2 of systemInstruction; 3 words of answer
    usage = body["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (4, 3, 7)
    assert body["modelVersion"] == "gem-up" and body["responseId"]

    rec = finished_record(ctl)
    assert rec["api"] == "gemini" and rec["path"] == "/v1beta/models/gem-up:generateContent"
    assert rec["model"] == "gem-up" and rec["deployment"] == "gem-up"
    assert rec["stream"] is False and rec["status"] == 200 and rec["completed"] is True
    assert rec["fingerprint"] == fingerprint(KEY)
    assert ctl.requests(api="gemini") == [rec] and ctl.requests(api="openai") == []


def test_gemini_stream_sse_pieces_arrive_separately(http, ctl):
    with http.stream("POST", "/v1beta/models/gem-s:streamGenerateContent", params={"alt": "sse"},
                     json=GEMINI_BODY, headers={"x-goog-api-key": KEY}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [(t, json.loads(d)) for t, _, d in sse_events(r)]
    assert len(events) == 5
    texts = [e["candidates"][0]["content"]["parts"][0]["text"] for _, e in events]
    assert all(texts) and "".join(texts) == answer_text("gem-s")
    assert all(e["candidates"][0]["content"]["role"] == "model" and e["modelVersion"] == "gem-s" for _, e in events)
    assert len({e["responseId"] for _, e in events}) == 1
    # as Google sends it: every event carries the prompt's count, only the last the answer's and STOP
    assert [e["candidates"][0].get("finishReason") for _, e in events] == [None] * 4 + ["STOP"]
    assert all(e["usageMetadata"]["promptTokenCount"] == 4 for _, e in events)
    assert all("candidatesTokenCount" not in e["usageMetadata"] for _, e in events[:-1])
    assert events[-1][1]["usageMetadata"]["candidatesTokenCount"] == 3
    assert events[-1][1]["usageMetadata"]["totalTokenCount"] == 7

    assert_arrived_apart([t for t, _ in events])

    rec = finished_record(ctl)
    assert rec["api"] == "gemini" and rec["model"] == "gem-s" and rec["path"].endswith(":streamGenerateContent")
    assert rec["stream"] is True and rec["status"] == 200 and rec["completed"] is True


def test_gemini_stream_without_alt_sse_is_a_json_array(http, ctl):
    ctl.stream(chunks=3, delay=0, model="gem-arr")
    r = gemini(http, model="gem-arr", stream=True, alt="json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    items = r.json()
    assert isinstance(items, list) and len(items) == 3
    assert "".join(i["candidates"][0]["content"]["parts"][0]["text"] for i in items) == answer_text("gem-arr")
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"


def test_gemini_other_versions_and_bad_requests(http, ctl):
    r = gemini(http, model="gem-v1", version="v1")
    assert r.status_code == 200
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == answer_text("gem-v1")
    r = gemini(http, body={"generationConfig": {}})
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT" and r.json()["error"]["code"] == 400
    r = http.post("/v1beta/models/gem-up:countTokens", json=GEMINI_BODY, headers={"x-goog-api-key": KEY})
    assert r.status_code == 404
    assert r.json()["error"]["status"] == "NOT_FOUND" and r.json()["error"]["code"] == 404
    assert [(x["api"], x["status"]) for x in ctl.requests()] == [("gemini", 200), ("gemini", 400), ("gemini", 404)]


def test_gemini_wrong_key_refused_in_google_shape(http, ctl):
    ctl.revoke(fingerprint(OTHER_KEY))
    r = gemini(http, key=OTHER_KEY)
    assert r.status_code == 400
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (400, "INVALID_ARGUMENT")
    # the words LiteLLM maps to AuthenticationError for gemini/ and vertex_ai/
    assert err["message"] == "API key not valid. Please pass a valid API key."
    assert err["details"][0]["reason"] == "API_KEY_INVALID"
    assert "candidates" not in r.json()
    # no key at all, or only OpenAI's Bearer header: Google's "unregistered caller"
    r = http.post("/v1beta/models/gem-up:generateContent", json=GEMINI_BODY,
                  headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 403
    assert r.json()["error"]["status"] == "PERMISSION_DENIED" and r.json()["error"]["code"] == 403
    # the allow-list applies to Gemini keys too
    ctl.allow([fingerprint(KEY)])
    assert gemini(http, key="not-in-the-allow-list").status_code == 400
    assert gemini(http).status_code == 200

    recs = ctl.requests(api="gemini")
    assert [(x["fingerprint"], x["status"], x["error"]) for x in recs] == [
        (fingerprint(OTHER_KEY), 400, "key_revoked"), (None, 403, "key_missing"),
        (fingerprint("not-in-the-allow-list"), 400, "key_not_allowed"), (fingerprint(KEY), 200, None)]


def test_gemini_key_query_parameter(http, ctl):
    r = http.post("/v1beta/models/gem-q:generateContent", params={"key": OTHER_KEY}, json=GEMINI_BODY)
    assert r.status_code == 200
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == answer_text("gem-q")
    with http.stream("POST", "/v1beta/models/gem-q:streamGenerateContent", params={"alt": "sse", "key": OTHER_KEY},
                     json=GEMINI_BODY) as r:
        assert r.status_code == 200
        text = "".join(json.loads(d)["candidates"][0]["content"]["parts"][0]["text"] for _, _, d in sse_events(r))
    assert text == answer_text("gem-q")
    ctl.revoke(fingerprint(OTHER_KEY))
    r = http.post("/v1beta/models/gem-q:generateContent", params={"key": OTHER_KEY}, json=GEMINI_BODY)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("API key not valid")
    assert [(x["fingerprint"], x["stream"], x["status"]) for x in ctl.requests()] == [
        (fingerprint(OTHER_KEY), False, 200), (fingerprint(OTHER_KEY), True, 200), (fingerprint(OTHER_KEY), False, 400)]
    # the query string (and so the key) is never part of a record
    assert OTHER_KEY not in json.dumps(ctl.requests())


def test_gemini_faults_in_google_shape(http, ctl):
    ctl.faults(status=429, count=1, model="gem-f", retry_after=3)
    r = gemini(http, model="gem-f")
    assert r.status_code == 429
    err = r.json()["error"]
    assert (err["code"], err["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert err["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3s"}]
    assert r.headers["retry-after"] == "3"
    for status, gstatus in ((500, "INTERNAL"), (503, "UNAVAILABLE"), (404, "NOT_FOUND")):
        ctl.faults(status=status, count=1, model="gem-f")
        r = gemini(http, model="gem-f", stream=True)  # a fault answers a stream request before any event
        assert r.status_code == status
        assert r.json()["error"] == {"code": status, "status": gstatus, "message": r.json()["error"]["message"]}
    ctl.faults(status=500, model="gem-f")
    assert gemini(http, model="gem-other").status_code == 200  # per model: the other model is untouched
    ctl.clear_faults(model="gem-f")
    assert gemini(http, model="gem-f").status_code == 200
    recs = ctl.requests()
    assert [x["status"] for x in recs] == [429, 500, 503, 404, 200, 200]
    assert [x["fault"]["status"] for x in recs[:4]] == [429, 500, 503, 404]

    ctl.faults(latency=0.4, count=1, model="gem-slow")
    t0 = time.monotonic()
    r = gemini(http, model="gem-slow")
    assert time.monotonic() - t0 >= 0.4
    assert r.status_code == 200 and r.json()["candidates"][0]["content"]["parts"][0]["text"] == answer_text("gem-slow")
    assert ctl.requests()[-1]["fault"]["latency"] == 0.4


# -- Azure OpenAI --------------------------------------------------------------

AZURE_VERSION = "2024-10-21"


def azure(http, deployment="az-dep", key=KEY, version=AZURE_VERSION, **extra):
    headers = {"api-key": key} if key is not None else {}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}], **extra}
    params = {"api-version": version} if version is not None else {}
    return http.post(f"/openai/deployments/{deployment}/chat/completions", json=body, headers=headers, params=params)


def test_azure_chat_plain(http, ctl):
    r = azure(http, deployment="az-dep")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "az-dep"  # the deployment, whatever the body's model says
    assert body["choices"][0]["message"]["content"] == "fake-answer model=az-dep deployment=az-dep"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}

    rec = finished_record(ctl)
    assert rec["api"] == "azure" and rec["path"] == "/openai/deployments/az-dep/chat/completions"
    assert rec["model"] == "az-dep" and rec["deployment"] == "az-dep"
    assert rec["api_version"] == AZURE_VERSION
    assert rec["fingerprint"] == fingerprint(KEY)
    assert rec["stream"] is False and rec["status"] == 200 and rec["completed"] is True
    assert ctl.requests(api="azure") == [rec] and ctl.requests(api="gemini") == []


def test_azure_stream_pieces_arrive_separately(http, ctl):
    body = {"model": "ignored", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    with http.stream("POST", "/openai/deployments/az-s/chat/completions", params={"api-version": AZURE_VERSION},
                     json=body, headers={"api-key": KEY}) as r:
        chunks, content = openai_stream(r)
    assert len(content) == 5
    assert "".join(c["choices"][0]["delta"]["content"] for _, c in content) == answer_text("az-s")
    assert all(c["model"] == "az-s" for _, c in chunks)
    assert chunks[-1][1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1][1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}

    assert_arrived_apart([t for t, _ in content])

    rec = finished_record(ctl)
    assert rec["api"] == "azure" and rec["model"] == "az-s" and rec["api_version"] == AZURE_VERSION
    assert rec["stream"] is True and rec["status"] == 200 and rec["completed"] is True


def test_azure_wrong_key_refused_in_azure_shape(http, ctl):
    ctl.revoke(fingerprint(OTHER_KEY))
    r = azure(http, key=OTHER_KEY)
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "401", "message": (
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for "
        "an active subscription and use a correct regional API endpoint for your resource.")}}
    # Anthropic's header is not Azure's: no key
    r = http.post("/openai/deployments/az-dep/chat/completions", params={"api-version": AZURE_VERSION},
                  json={"messages": []}, headers={"x-api-key": KEY})
    assert r.status_code == 401 and r.json()["error"]["code"] == "401"
    assert "missing subscription key" in r.json()["error"]["message"]
    # an Entra ID token (LiteLLM's azure_ad_token) is a Bearer header, fingerprinted like a key
    r = http.post("/openai/deployments/az-dep/chat/completions", params={"api-version": AZURE_VERSION},
                  json={"messages": []}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200
    assert [(x["fingerprint"], x["status"], x["error"]) for x in ctl.requests(api="azure")] == [
        (fingerprint(OTHER_KEY), 401, "key_revoked"), (None, 401, "key_missing"), (fingerprint(KEY), 200, None)]


def test_azure_missing_api_version_is_404(http, ctl):
    r = azure(http, version=None)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "404", "message": "Resource not found"}}
    r = azure(http, version="")
    assert r.status_code == 404
    assert azure(http, version="2025-02-01-preview").status_code == 200
    recs = ctl.requests()
    assert [(x["status"], x["error"], x["api_version"]) for x in recs] == [
        (404, "no_api_version", None), (404, "no_api_version", None), (200, None, "2025-02-01-preview")]
    assert all(x["api"] == "azure" and x["deployment"] == "az-dep" for x in recs)
    # other paths under /openai/ are Azure's 404 too
    r = http.post("/openai/deployments/az-dep/embeddings", params={"api-version": AZURE_VERSION},
                  json={"input": "x"}, headers={"api-key": KEY})
    assert r.status_code == 404 and r.json()["error"] == {"code": "404", "message": "Resource not found"}


def test_azure_faults_in_azure_shape(http, ctl):
    ctl.faults(status=429, count=1, model="az-f")
    r = azure(http, deployment="az-f")
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "429" and "message" in r.json()["error"]
    ctl.faults(status=503, count=1, model="az-f")
    r = azure(http, deployment="az-f", stream=True)
    assert r.status_code == 503 and r.json()["error"]["code"] == "ServiceUnavailable"
    ctl.faults(status=500, model="az-f")
    assert azure(http, deployment="az-other").status_code == 200
    assert azure(http, deployment="az-f").status_code == 500
    ctl.clear_faults()
    assert azure(http, deployment="az-f").status_code == 200
    assert [(x["model"], x["status"]) for x in ctl.requests()] == [
        ("az-f", 429), ("az-f", 503), ("az-other", 200), ("az-f", 500), ("az-f", 200)]

    ctl.faults(latency=0.4, count=1, model="az-slow")
    t0 = time.monotonic()
    r = azure(http, deployment="az-slow")
    assert time.monotonic() - t0 >= 0.4
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer_text("az-slow")
    assert ctl.requests()[-1]["fault"]["latency"] == 0.4


# -- keys ----------------------------------------------------------------------


def test_missing_key_is_401(http):
    r = chat(http, key=None)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = messages(http, key=None)
    assert r.status_code == 401
    assert r.json()["type"] == "error"


def test_revoked_key_is_401(http, ctl):
    assert chat(http).status_code == 200
    assert fingerprint(KEY) in ctl.revoke(fingerprint(KEY))

    r = chat(http)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_api_key"
    r = messages(http)
    assert r.status_code == 401
    assert r.json() == {"type": "error", "error": {"type": "authentication_error",
                                                   "message": r.json()["error"]["message"]}}
    assert chat(http, key=OTHER_KEY).status_code == 200

    statuses = [(rec["fingerprint"], rec["status"]) for rec in ctl.requests()]
    assert statuses == [(fingerprint(KEY), 200), (fingerprint(KEY), 401), (fingerprint(KEY), 401),
                        (fingerprint(OTHER_KEY), 200)]
    ctl.unrevoke(fingerprint(KEY))
    assert chat(http).status_code == 200


def test_allow_list_mode(http, ctl):
    assert ctl.allow([fingerprint(KEY)]) == [fingerprint(KEY)]
    assert chat(http).status_code == 200
    assert messages(http).status_code == 200
    assert chat(http, key=OTHER_KEY).status_code == 401
    assert messages(http, key=OTHER_KEY).status_code == 401
    assert ctl.allow([]) == []
    assert chat(http, key=OTHER_KEY).status_code == 200


def test_control_rejects_bad_input(ctl):
    with pytest.raises(FakeProviderError) as exc:
        ctl.revoke(KEY)  # a plaintext key is not a fingerprint
    assert exc.value.status == 400
    with pytest.raises(FakeProviderError):
        ctl.faults(status=200)
    with pytest.raises(FakeProviderError):
        ctl.faults(count=2)  # neither status nor latency
    with pytest.raises(FakeProviderError):
        ctl.stream(chunks=0)


# -- faults --------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fault_status_then_recovery(http, ctl, status):
    ctl.faults(status=status, count=2)
    for _ in range(2):
        r = chat(http)
        assert r.status_code == status
        assert "error" in r.json()
        if status == 429:
            assert r.headers["retry-after"] == "1"
    assert chat(http).status_code == 200
    assert ctl.config()["faults"] == []
    recs = ctl.requests()
    assert [r["status"] for r in recs] == [status, status, 200]
    assert recs[0]["fault"]["status"] == status


def test_fault_on_messages_uses_anthropic_shape(http, ctl):
    ctl.faults(status=429, count=1, retry_after=7)
    r = messages(http)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json()["error"]["type"] == "rate_limit_error"
    ctl.faults(status=503, count=1)
    r = messages(http)
    assert r.status_code == 503 and r.json()["type"] == "error"
    assert messages(http).status_code == 200


def test_fault_per_model(http, ctl):
    ctl.faults(status=500, model="up-bad")  # no count: every request until cleared
    for _ in range(3):
        assert chat(http, model="up-bad").status_code == 500
        assert chat(http, model="up-good").status_code == 200
    ctl.clear_faults(model="up-bad")
    assert chat(http, model="up-bad").status_code == 200


def test_fault_fraction(http, ctl):
    ctl.faults(status=503, fraction=0.5)
    codes = [chat(http).status_code for _ in range(40)]
    failures = codes.count(503)
    assert codes.count(200) + failures == 40
    assert 5 <= failures <= 35
    ctl.clear_faults()
    assert chat(http).status_code == 200


def test_faults_do_not_hit_rejected_keys(http, ctl):
    ctl.revoke(fingerprint(OTHER_KEY))
    ctl.faults(status=500, count=1)
    assert chat(http, key=OTHER_KEY).status_code == 401
    assert chat(http).status_code == 500


def test_latency_injection(http, ctl):
    # Lower bounds on time (a sleep is guaranteed); which request got the delay is read from the
    # provider's own records, not from upper time bounds a loaded machine could break.
    def last_fault():
        return ctl.requests()[-1].get("fault")

    ctl.faults(latency=0.5, count=1)
    t0 = time.monotonic()
    assert chat(http).status_code == 200
    assert time.monotonic() - t0 >= 0.5
    assert last_fault()["latency"] == 0.5
    assert chat(http).status_code == 200
    assert last_fault() is None  # count=1: used up

    ctl.faults(latency=0.3, model="up-slow")
    assert chat(http, model="up-fast").status_code == 200
    assert last_fault() is None
    t0 = time.monotonic()
    assert chat(http, model="up-slow").status_code == 200
    assert time.monotonic() - t0 >= 0.3
    assert last_fault()["latency"] == 0.3


# -- fingerprints / logs -------------------------------------------------------


def test_fingerprints_recorded_never_plaintext(provider, http, ctl, tmp_path):
    server, _ = provider
    assert chat(http).status_code == 200
    assert messages(http).status_code == 200
    with http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []},
                     headers={"Authorization": f"Bearer {KEY}"}) as r:
        r.read()
    ctl.revoke(fingerprint(OTHER_KEY))
    assert chat(http, key=OTHER_KEY).status_code == 401

    fps = ctl.fingerprints()
    assert fps[fingerprint(KEY)]["count"] == 3
    assert fps[fingerprint(KEY)]["statuses"] == {"200": 3}
    assert fps[fingerprint(OTHER_KEY)]["statuses"] == {"401": 1}
    assert fps[fingerprint(OTHER_KEY)]["revoked"] is True

    # nothing the test-side can read contains a plaintext key
    api_dump = json.dumps([ctl.requests(), ctl.fingerprints(), ctl.config(), ctl.health()])
    for key in (KEY, OTHER_KEY):
        assert key not in api_dump
    state_dir = tmp_path / "state"
    server.stop()  # flush and close the logs
    files = list(state_dir.iterdir())
    assert {f.name for f in files} >= {"requests.jsonl", "fakeprovider.log"}
    log_lines = (state_dir / "requests.jsonl").read_text().splitlines()
    assert sum(1 for line in log_lines if json.loads(line).get("event") == "request") == 4
    for f in files:
        data = f.read_bytes()
        for key in (KEY, OTHER_KEY):
            assert key.encode() not in data, f"plaintext key leaked into {f.name}"
    assert fingerprint(KEY).encode() in (state_dir / "requests.jsonl").read_bytes()


def test_fingerprints_since(http, ctl):
    assert chat(http, key=OTHER_KEY).status_code == 200
    time.sleep(0.05)
    mark = time.time()
    assert chat(http).status_code == 200
    assert set(ctl.fingerprints()) == {fingerprint(KEY), fingerprint(OTHER_KEY)}
    recent = ctl.fingerprints(since=mark)
    assert set(recent) == {fingerprint(KEY)}
    assert recent[fingerprint(KEY)]["last_seen"] >= mark
    assert [r["fingerprint"] for r in ctl.requests(since=mark)] == [fingerprint(KEY)]


def test_reset_clears_everything(http, ctl):
    chat(http)
    ctl.revoke(fingerprint(KEY))
    ctl.allow([fingerprint(OTHER_KEY)])
    ctl.faults(status=500)
    ctl.stream(chunks=2, delay=0)
    ctl.reset()
    assert ctl.requests() == []
    cfg = ctl.config()
    assert cfg["revoked"] == [] and cfg["allow"] == [] and cfg["faults"] == []
    assert cfg["stream"]["chunks"] == 5 and cfg["stream"]["delay"] == 0.2
    assert chat(http).status_code == 200


def test_client_disconnect_mid_stream_is_survived(http, ctl):
    ctl.stream(chunks=20, delay=0.05)
    with http.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True, "messages": []},
                     headers={"Authorization": f"Bearer {KEY}"}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rec = ctl.requests()[0]
        if rec["aborted"] or rec["completed"]:
            break
        time.sleep(0.05)
    assert rec["aborted"] is True
    assert chat(http).status_code == 200


# -- concurrency ---------------------------------------------------------------


def test_concurrent_requests(base_url, ctl):
    ctl.stream(delay=0.05)
    results: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(30)

    def worker(i: int) -> None:
        with httpx.Client(base_url=base_url, timeout=30, trust_env=False) as client:
            barrier.wait()
            key = f"sk-concurrent-{i % 5}"
            model = f"up-{i % 3}"
            if i % 3 == 0:
                with client.stream("POST", "/v1/chat/completions",
                                   json={"model": model, "stream": True, "messages": []},
                                   headers={"Authorization": f"Bearer {key}"}) as r:
                    text = "".join(
                        (json.loads(d)["choices"][0]["delta"].get("content") or "")
                        for _, _, d in sse_events(r) if d != "[DONE]")
                    ok = r.status_code == 200 and text == answer_text(model)
            elif i % 3 == 1:
                r = client.post("/v1/messages", json={"model": model, "max_tokens": 5, "messages": []},
                                headers={"x-api-key": key})
                ok = r.status_code == 200 and r.json()["content"][0]["text"] == answer_text(model)
            else:
                r = chat(client, model=model, key=key)
                ok = r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == answer_text(model)
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(results) == 30 and all(results)
    recs = ctl.requests()
    assert len(recs) == 30 and all(r["status"] == 200 for r in recs)
    assert sum(v["count"] for v in ctl.fingerprints().values()) == 30


# -- CLI -----------------------------------------------------------------------


def test_cli_stdlib_only_pidfile_and_sigterm(tmp_path):
    state = tmp_path / "state"
    # -S: no site-packages at all, proving the module is stdlib-only
    proc = subprocess.Popen(
        [sys.executable, "-S", str(MODULE), "--host", "127.0.0.1", "--port", "0", "--state-dir", str(state),
         "--delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": ""},
    )
    try:
        pid_file = state / "fakeprovider.pid"
        deadline = time.monotonic() + 15
        while not pid_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no pid file"
            time.sleep(0.05)
        assert int(pid_file.read_text()) == proc.pid
        info = json.loads((state / "fakeprovider.json").read_text())
        ctl = FakeProviderClient(info["base_url"])
        ctl.wait_ready()
        with httpx.Client(base_url=info["base_url"], timeout=10, trust_env=False) as http:
            assert chat(http).status_code == 200
            assert messages(http).status_code == 200
        assert ctl.fingerprints()[fingerprint(KEY)]["count"] == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0
    assert not pid_file.exists()
    lines = [json.loads(x) for x in (state / "requests.jsonl").read_text().splitlines()]
    reqs = [x for x in lines if x.get("event") == "request"]
    assert [r["path"] for r in reqs] == ["/v1/chat/completions", "/v1/messages"]
    assert all(r["fingerprint"] == fingerprint(KEY) for r in reqs)
    for f in state.iterdir():
        assert KEY.encode() not in f.read_bytes()
