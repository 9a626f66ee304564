"""Constant client traffic through the gateways' nginx, every request's outcome recorded."""

from __future__ import annotations

import threading
import time

import httpx

from lab.checks import lab_client


class Load:
    """Constant client traffic through nginx (plain and streamed), recording every failure."""

    def __init__(self, lab, gateways: list[str], models=("fast", "claude"), threads_per_gateway: int = 1,
                 think: float = 0.05, api_key: str | None = None, streams: bool = True):
        self.lab, self.gateways, self.models, self.think, self.streams = lab, gateways, models, think, streams
        self.api_key = api_key or lab.secret_values["litellm_master_key"]
        self.stop_event = threading.Event()
        self.results: list[tuple[float, str, bool, str, float]] = []  # (start, gateway, ok, detail, seconds)
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(gw,), daemon=True)
            for gw in gateways
            for i in range(threads_per_gateway)
        ]

    def _run(self, gw: str):
        url = f"{self.lab.gateway_url(gw)}/v1/chat/completions"
        n = 0
        with lab_client({"Authorization": f"Bearer {self.api_key}"}) as c:
            while not self.stop_event.is_set():
                model = self.models[n % len(self.models)]
                stream = self.streams and (n // len(self.models)) % 2 == 1  # every model both plain and streamed
                n += 1
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
                t0 = time.monotonic()
                # Sent once: a request lost on a connection nginx closed or refused is a failed request, as a
                # client without resends sees it. No resend hides a failure.
                ok, detail = self._one(c, url, body, model, stream)
                with self.lock:
                    self.results.append((t0, gw, bool(ok), detail, time.monotonic() - t0))
                # Constant traffic, not a CPU-saturating flood: a 2-core machine runs all hosts at once.
                self.stop_event.wait(self.think)

    @staticmethod
    def _one(c, url: str, body: dict, model: str, stream: bool) -> tuple[bool, str]:
        """(ok, detail) of one request, sent once."""
        try:
            if stream:
                with c.stream("POST", url, json={**body, "stream": True}) as r:
                    if r.status_code != 200:  # what answered: nginx's own page or LiteLLM's JSON
                        return False, f"{model} stream {r.status_code} {r.read().decode(errors='replace')[:120]}"
                    lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                ok = bool(lines) and lines[-1] == "data: [DONE]" and len(lines) >= 3
                return ok, f"{model} stream {r.status_code} {len(lines)} events"
            r = c.post(url, json=body)
            return r.status_code == 200 and "fake-answer" in r.text, f"{model} {r.status_code} {r.text[:120]}"
        except httpx.HTTPError as exc:  # refused, reset, closed without a response, timed out: all failures
            return False, f"{model} {type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - anything else the client raised is a failed request too
            return False, f"{model} {type(exc).__name__}: {exc}"

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(90)

    @property
    def failures(self):
        return [r for r in self.results if not r[2]]

    def summary(self, gateway: str | None = None) -> dict:
        """Requests, failures and latency percentiles (plain and streamed together, whole responses), of every
        gateway's requests or of `gateway`'s alone."""
        results = [r for r in self.results if gateway is None or r[1] == gateway]
        failures = [r for r in results if not r[2]]
        lat = sorted(r[4] for r in results)
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None  # noqa: E731
        return {"requests": len(results), "failed": len(failures),
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                # What went wrong, not only how often: the first few failures, one line each.
                "failures": [f"{gw}: {' '.join(str(detail).split())[:160]}" for _, gw, _, detail, _ in failures[:5]]}
