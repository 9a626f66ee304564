"""A complete local gatekit environment on booted sandbox hosts.

Used by the README's main command (`gatekit sandbox up`), the end-to-end tests and the benchmarks:
sandbox hosts + the fake LLM provider + a wheelhouse served to the hosts + a vault with generated test
keys + a spec pointing at the fake provider + a pyinfra inventory, and helpers to run deploys.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets as pysecrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from gatekit import sandbox as sb

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
FAKE_PROVIDER = REPO / "tests" / "fakeprovider.py"
PROVIDER_PORT = 18080
WHEELHOUSE_PORT = 18081
# Every Debian package the kit installs (roles/*), for a "warm package cache" sandbox base.
KIT_PACKAGES = ["ca-certificates", "openssl", "procps", "python3", "python3-venv", "redis-server", "postgresql",
                "nginx", "libnginx-mod-http-headers-more-filter"]


LOCKS = (REPO / "requirements" / "litellm.lock", REPO / "requirements" / "uv.lock")


def wheelhouse(locks: tuple[Path, ...] = LOCKS) -> Path:
    """Every wheel of the locks, downloaded once into the sandbox cache (keyed by the locks' hash)."""
    digest = hashlib.sha256(b"".join(lock.read_bytes() for lock in locks)).hexdigest()[:12]
    target = sb.BASE_CACHE / f"wheelhouse-{digest}"
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--require-hashes",
         "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
         "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
         "--implementation", "cp", *(a for lock in locks for a in ("-r", str(lock))), "-d", str(tmp)],
        check=True,
    )
    (tmp / ".complete").write_text(digest)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def fake_key(label: str) -> str:
    # Obviously fake, unique per run: never shaped like a real provider key.
    return f"gk-test-{label}-{pysecrets.token_hex(16)}"


@dataclass
class Lab:
    workdir: Path
    sandbox: sb.Sandbox
    hosts: dict[str, sb.Host] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    secret_values: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    # ---- setup -------------------------------------------------------------------------------
    @classmethod
    def create(cls, workdir: Path, settings: dict | None = None, run_id: str | None = None,
               base: Path | None = None) -> "Lab":
        workdir.mkdir(parents=True, exist_ok=True)
        sandbox = sb.Sandbox(run_id=run_id, base=base)
        lab = cls(workdir=workdir, sandbox=sandbox, settings=settings or {})
        sandbox.up()
        return lab

    @property
    def bridge_ip(self) -> str:
        return self.sandbox.gateway_address

    @property
    def provider_url(self) -> str:
        return f"http://{self.bridge_ip}:{PROVIDER_PORT}"

    @property
    def vault_path(self) -> Path:
        return self.workdir / "lab.secrets.enc.yaml"

    @property
    def key_file(self) -> Path:
        return self.workdir / "vault.key"

    @property
    def spec_path(self) -> Path:
        return self.workdir / "lab.gateway.yaml"

    @property
    def inventory_path(self) -> Path:
        return self.workdir / "lab_inventory.py"

    def start_services(self):
        """Fake provider and wheelhouse, both bound to the bridge address only."""
        state = self.workdir / "provider"
        state.mkdir(exist_ok=True)
        log = open(self.workdir / "provider.log", "ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, str(FAKE_PROVIDER), "--host", self.bridge_ip, "--port", str(PROVIDER_PORT),
                 "--state-dir", str(state)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        )
        wh = wheelhouse()
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", self.bridge_ip, "--directory", str(wh), str(WHEELHOUSE_PORT)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        )
        _wait_http(f"{self.provider_url}/_control/requests")
        _wait_http(f"http://{self.bridge_ip}:{WHEELHOUSE_PORT}/")

    def write_vault(self, values: dict[str, str] | None = None):
        from gatekit import vault

        self.secret_values = values or {
            "openai_key": fake_key("openai"),
            "anthropic_key": fake_key("anthropic"),
            "litellm_master_key": "sk-gk-master-" + pysecrets.token_hex(16),
            "redis_password": pysecrets.token_urlsafe(24),
            "postgres_password": pysecrets.token_urlsafe(24),
        }
        if self.vault_path.exists():
            self.vault_path.unlink()
        vault.init_vault(self.vault_path, key_file=self.key_file, passphrase=None)
        key = vault.resolve_key(self.vault_path, key_file=self.key_file)
        for name, value in self.secret_values.items():
            vault.set_secret(self.vault_path, key, name, value)

    def write_spec(self):
        base = self.provider_url
        spec = {
            "version": 1,
            "vault": self.vault_path.name,
            "models": [
                {"name": "fast", "price": {"input_per_1m": 0.15, "output_per_1m": 0.6},
                 "deployments": [{"provider": "openai", "model": "fake-fast", "api_base": f"{base}/v1",
                                  "secret": "openai_key", "weight": 1, "rpm": 6000}]},
                {"name": "smart", "price": {"input_per_1m": 2.5, "output_per_1m": 10},
                 "deployments": [{"provider": "openai", "model": "fake-smart", "api_base": f"{base}/v1",
                                  "secret": "openai_key", "weight": 1}]},
                {"name": "claude", "price": {"input_per_1m": 3, "output_per_1m": 15},
                 "deployments": [{"provider": "anthropic", "model": "fake-claude", "api_base": base,
                                  "secret": "anthropic_key", "weight": 1}]},
            ],
            "fallbacks": [{"from": "smart", "to": ["fast"]}, {"from": "claude", "to": ["smart"]}],
            "aliases": {"gpt-4o": "smart"},
            "retry": {"num_retries": 1, "timeout_errors": 1, "server_errors": 1},
            "budgets": {"providers": {"openai": {"max_usd": 1000, "duration": "1d"}}},
            "settings": {
                "litellm_pip_find_links": f"http://{self.bridge_ip}:{WHEELHOUSE_PORT}/",
                # Every sandbox host shares this machine's 2 cores: starting LiteLLM under load is slow.
                "litellm_ready_timeout": 300,
                "litellm_workers": 2,
                "litellm_memory_high": "1400M",
                "litellm_memory_max": "1600M",
                **self.settings,
            },
        }
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def setup(self, groups: dict[str, list[str]]):
        """Everything before the first deploy: provider + wheelhouse, vault, spec, hosts, inventory."""
        self.start_services()
        self.write_vault()
        self.write_spec()
        self.boot(list(dict.fromkeys(n for names in groups.values() for n in names)))
        self.write_inventory(groups)

    def boot(self, names: list[str]) -> list[sb.Host]:
        booted = self.sandbox.boot(names)
        for h in booted:
            self.hosts[h.name] = h
        return booted

    def write_inventory(self, groups: dict[str, list[str]]):
        """groups: {"gateways": [names], "redis": [name], "postgres": [name]}"""
        self.groups = groups
        entries = {
            g: [
                (self.hosts[n].address, {
                    "private_address": self.hosts[n].address,
                    "sandbox_name": n,
                    "ssh_user": "root",
                    "ssh_key": str(self.hosts[n].key_path),
                    "ssh_strict_host_key_checking": "off",
                    "ssh_known_hosts_file": "/dev/null",
                })
                for n in names
            ]
            for g, names in groups.items()
        }
        self.inventory_path.write_text(
            "# Generated by gatekit.lab for local sandbox hosts.\n"
            "from gatekit.inventory import groups\n\n"
            f"_g = groups(inventory_file={str(self.inventory_path)!r}, spec_file={str(self.spec_path)!r},\n"
            f"            hosts={entries!r})\n"
            "gateways, redis, postgres = _g['gateways'], _g['redis'], _g['postgres']\n"
        )

    # ---- running -----------------------------------------------------------------------------
    def env(self) -> dict:
        env = {**os.environ, "GATEKIT_VAULT_KEY_FILE": str(self.key_file)}
        env.pop("GATEKIT_VAULT_PASSPHRASE", None)
        return env

    def deploy(self, entry: str = "deploy.py", extra: list[str] | None = None, check: bool = True) -> "DeployResult":
        cmd = [PYINFRA, "-y", "--json", str(self.inventory_path), str(REPO / entry), *(extra or [])]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=REPO, env=self.env(), capture_output=True, text=True)
        result = DeployResult(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)
        (self.workdir / "last-deploy.stderr").write_text(proc.stderr)
        if check and not result.ok:
            raise RuntimeError(f"deploy failed (rc={proc.returncode}):\n{proc.stderr[-6000:]}")
        return result

    def gateway_url(self, name: str) -> str:
        return f"https://{self.hosts[name].address}"

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.procs.clear()
        self.sandbox.down()


@dataclass
class DeployResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def data(self) -> dict:
        return json.loads(self.stdout) if self.stdout.strip() else {}

    @property
    def ok(self) -> bool:
        if self.returncode != 0 or not self.data:
            return False
        r = self.data["results"]
        return r["totals"]["error"] == 0 and not r.get("failed_hosts")

    @property
    def changes(self) -> int:
        return self.data["results"]["totals"]["success"]

    def changed_ops(self, host_address: str) -> list[str]:
        return [op["name"] for op in self.data["results"]["operations"] if host_address in op["success"]]


class Load:
    """Constant client traffic through nginx (plain and streamed), recording every failure."""

    def __init__(self, lab, gateways: list[str], models=("fast", "claude"), threads_per_gateway: int = 1,
                 think: float = 0.05):
        self.lab, self.gateways, self.models, self.think = lab, gateways, models, think
        self.stop_event = threading.Event()
        self.results: list[tuple[float, str, bool, str, float]] = []  # (start, gateway, ok, detail, seconds)
        self.lock = threading.Lock()
        self.retries = 0
        self.threads = [
            threading.Thread(target=self._run, args=(gw,), daemon=True)
            for gw in gateways
            for i in range(threads_per_gateway)
        ]

    def _run(self, gw: str):
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {self.lab.secret_values['litellm_master_key']}"}
        url = f"{self.lab.gateway_url(gw)}/v1/chat/completions"
        n = 0
        with httpx.Client(verify=ctx, headers=headers, timeout=60, trust_env=False) as c:
            while not self.stop_event.is_set():
                model = self.models[n % len(self.models)]
                stream = (n // len(self.models)) % 2 == 1  # every model both plain and streamed
                n += 1
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
                t0 = time.monotonic()
                for attempt in range(3):
                    ok, detail, retry = self._one(c, url, body, model, stream)
                    if not retry or attempt == 2:
                        break
                    # Like the OpenAI/Anthropic SDKs: a request lost on a keepalive connection the server
                    # closed (nginx reload) is sent again, at most twice. Counted, never hidden.
                    with self.lock:
                        self.retries += 1
                with self.lock:
                    self.results.append((t0, gw, bool(ok), detail, time.monotonic() - t0))
                # Constant traffic, not a CPU-saturating flood: a 2-core machine runs all hosts at once.
                self.stop_event.wait(self.think)

    @staticmethod
    def _one(c, url: str, body: dict, model: str, stream: bool) -> tuple[bool, str, bool]:
        """(ok, detail, retryable): retryable only when no response at all came back."""
        try:
            if stream:
                with c.stream("POST", url, json={**body, "stream": True}) as r:
                    lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                ok = r.status_code == 200 and bool(lines) and lines[-1] == "data: [DONE]" and len(lines) >= 3
                return ok, f"{model} stream {r.status_code} {len(lines)} events", False
            r = c.post(url, json=body)
            return r.status_code == 200 and "fake-answer" in r.text, f"{model} {r.status_code} {r.text[:120]}", False
        except (httpx.RemoteProtocolError, httpx.ConnectError) as exc:
            no_response = "without sending a response" in str(exc) or isinstance(exc, httpx.ConnectError)
            return False, f"{model} {type(exc).__name__}: {exc}", no_response
        except Exception as exc:  # noqa: BLE001 - a client-side failure is a failed request
            return False, f"{model} {type(exc).__name__}: {exc}", False

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

    def summary(self) -> dict:
        """Requests, failures and latency percentiles (plain and streamed together, whole responses)."""
        lat = sorted(r[4] for r in self.results)
        pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None  # noqa: E731
        return {"requests": len(self.results), "failed": len(self.failures), "retried": self.retries,
                "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                # What went wrong, not only how often: the first few failures, one line each.
                "failures": [f"{gw}: {' '.join(str(detail).split())[:160]}" for _, gw, _, detail, _ in self.failures[:5]]}



def _wait_http(url: str, timeout: float = 30):
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
