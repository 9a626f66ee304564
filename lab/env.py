"""A complete local gatekit environment on booted sandbox hosts.

Used by the README's main command (`scripts/sandbox up`, i.e. `python -m lab up`), the end-to-end tests
and the benchmarks:
sandbox hosts + the fake LLM provider + a wheelhouse served to the hosts + a vault with generated test
keys + a spec pointing at the fake provider + a pyinfra inventory, and helpers to run deploys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets as pysecrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gatekit.onhost.layout import Layout
from gatekit.resources import requirements_file
from gatekit.roles.packages import all_packages
from gatekit.roles.venv import DEFAULT_LOCK, UV_LOCK
from lab import releases
from lab import sandbox as sb

REPO = Path(__file__).resolve().parent.parent
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
FAKE_PROVIDER = Path(__file__).resolve().with_name("fakeprovider.py")
PROVIDER_PORT = 18080
WHEELHOUSE_PORT = 18081
# Every Debian package the kit installs (read from the roles), for a "warm package cache" sandbox base.
KIT_PACKAGES = all_packages()
# The kit's locks the lab installs: the default, the upgrade (tests/e2e/test_stack_upgrade.py) and uv.
LOCKS = (requirements_file(DEFAULT_LOCK), requirements_file(releases.UPGRADE_LOCK), requirements_file(UV_LOCK))


# The hosts' Pythons the locks cover: Debian 12's and Debian 13's.
PYTHONS = ("3.11.2", "3.13.5")


def lock_for_python(lock_text: str, python: str) -> str:
    """The lock's requirements a Linux x86_64 host with this Python installs (doctor's lock_pins decides, as for a
    host's venv), their markers taken off: pip download judges markers by the Python running it, not by
    --python-version (it would leave out Debian 12's backports)."""
    from gatekit.doctor import lock_pins, marker_environment, normalize

    installed = lock_pins(lock_text, marker_environment({"python_version": python, "machine": "x86_64"}))
    out, keep = [], False
    for line in lock_text.splitlines():
        if line[:1].isalnum():
            continued = line.rstrip().endswith("\\")
            req = line.rstrip().removesuffix("\\").partition(";")[0].rstrip()
            keep = normalize(re.split(r"[\[=]", req, maxsplit=1)[0]) in installed
            line = req + (" \\" if continued else "")
        elif not line.startswith(" "):
            keep = False
        if keep:
            out.append(line)
    return "\n".join(out) + "\n"


def wheelhouse(locks: tuple[Path, ...] = LOCKS) -> Path:
    """Every wheel of the locks for each of PYTHONS (hash-checked: a lock without a hash for one fails here),
    downloaded once into the sandbox cache (keyed by the locks' hash, PYTHONS and the broken release's recipe),
    and the broken release built beside them (lab/releases.py)."""
    recipe = Path(releases.__file__).read_bytes() + " ".join(PYTHONS).encode()
    digest = hashlib.sha256(b"".join(lock.read_bytes() for lock in locks) + recipe).hexdigest()[:12]
    target = sb.BASE_CACHE / f"wheelhouse-{digest}"
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # One download per lock and Python: the upgrade lock pins other versions of the same packages.
    for i, (lock, python) in enumerate((lock, python) for lock in locks for python in PYTHONS):
        wanted = tmp.with_name(f"{tmp.name}.lock-{i}")
        wanted.write_text(lock_for_python(lock.read_text(), python))
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--require-hashes",
             "--no-deps", "--only-binary=:all:", "--python-version", python, "--platform", "manylinux2014_x86_64",
             "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
             "--implementation", "cp", "-r", str(wanted), "-d", str(tmp)],
            check=True,
        )
        wanted.unlink()
    releases.build_broken_wheel(tmp, requirements_file(DEFAULT_LOCK).read_text())
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
    rotated_out: list[str] = field(default_factory=list)  # every value set_secret replaced: the leak scans look for them
    settings: dict = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    extra_models: list[dict] = field(default_factory=list)  # appended to the spec's models (write_spec)
    extra_fallbacks: list[dict] = field(default_factory=list)  # appended to the spec's fallbacks
    weights: dict[str, int] = field(default_factory=dict)  # {model: weight of its first deployment}, over the spec's

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

    def broken_release_lock(self) -> Path:
        """A lock of the broken LiteLLM release (lab/releases.py) in the lab's directory, for litellm_requirements."""
        path = self.workdir / "litellm-broken.lock"
        path.write_text(releases.broken_lock(wheelhouse()))
        return path

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
            # Keys of the other provider shapes (gatekit/providers.py); shipped only once a deployment names them.
            "google_key": fake_key("google"),
            "azure_key": fake_key("azure"),
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

    def set_secret(self, name: str, value: str):
        """A new value of a vault secret, as `gatekit secrets set` stores it (the next deploy or rotation ships it)."""
        from gatekit import vault

        vault.set_secret(self.vault_path, vault.resolve_key(self.vault_path, key_file=self.key_file), name, value)
        self.rotated_out.append(self.secret_values[name])
        self.secret_values[name] = value

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
                # A public name with ':' (as Ollama and vLLM name models): LiteLLM's Redis keys embed it, so
                # rotation's purge and doctor's cooldown check must match it whole.
                {"name": "llama3:8b", "price": {"input_per_1m": 0.1, "output_per_1m": 0.1},
                 "deployments": [{"provider": "openai", "model": "fake-llama3-8b", "api_base": f"{base}/v1",
                                  "secret": "openai_key", "weight": 1}]},
            ],
            "fallbacks": [{"from": "smart", "to": ["fast"]}, {"from": "claude", "to": ["smart"]}],
            "aliases": {"gpt-4o": "smart"},
            # A short cooldown: tests that make a deployment cool down wait it out.
            "retry": {"num_retries": 1, "timeout_errors": 1, "server_errors": 1, "cooldown_time": 10},
            "budgets": {"providers": {"openai": {"max_usd": 1000, "duration": "1d"}}},
            "settings": {
                "litellm_pip_find_links": f"http://{self.bridge_ip}:{WHEELHOUSE_PORT}/",
                # Every sandbox host shares this machine's 2 cores: starting LiteLLM under load is slow.
                "litellm_ready_timeout": 300,
                "litellm_memory_high": "1400M",
                "litellm_memory_max": "1600M",
                # Alerts and dashboards are tested against live data: scrape and evaluate every 5 s.
                "monitoring_scrape_interval": 5,
                # A change (rotation, deploy) reaches gw1 alone, then every other gateway side by side.
                "rollout_batch": "100%",
                **self.settings,
            },
        }
        spec["models"] += self.extra_models
        spec["fallbacks"] += self.extra_fallbacks
        for model in spec["models"]:
            if model["name"] in self.weights:
                model["deployments"][0]["weight"] = self.weights[model["name"]]
        self.spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def setup(self, groups: dict[str, list[str]], host_settings: dict[str, dict] | None = None,
              suites: dict[str, str] | None = None):
        """Everything before the first deploy: provider + wheelhouse, vault, spec, hosts, inventory.
        `host_settings`: {host name: {setting: value}}, one host's overrides of the spec's settings.
        `suites`: {host name: Debian release (sb.SUITES)} of the hosts not on sb.SUITE."""
        self.start_services()
        self.write_vault()
        self.write_spec()
        names = list(dict.fromkeys(n for hosts in groups.values() for n in hosts))
        suite_of = {n: (suites or {}).get(n, sb.SUITE) for n in names}
        for suite in dict.fromkeys(suite_of.values()):
            self.boot([n for n in names if suite_of[n] == suite], suite=suite)
        for name, values in (host_settings or {}).items():
            self.hosts[name].data.update(values)
        self.write_inventory(groups)

    def boot(self, names: list[str], suite: str = sb.SUITE) -> list[sb.Host]:
        """Boot hosts into the lab; `suite`: their Debian release (sb.SUITES: "trixie" = Debian 13), built once."""
        booted = self.sandbox.boot(names, base=None if suite == sb.SUITE else sb.ensure_base(suite=suite))
        for h in booted:
            self.hosts[h.name] = h
        return booted

    def add_gateway(self, name: str, suite: str = sb.SUITE, settings: dict | None = None) -> "DeployResult":
        """Boot a host, add it to the inventory's gateways with its own settings (host data), and deploy."""
        (added,) = self.boot([name], suite=suite)
        added.data.update(settings or {})
        self.write_inventory({**self.groups, "gateways": [*self.groups["gateways"], name]})
        return self.deploy()

    def remove(self, name: str) -> None:
        """Power a host off and forget it (after the inventory no longer names it)."""
        self.sandbox.stop(name)
        self.hosts.pop(name)

    def write_inventory(self, groups: dict[str, list[str]]):
        """groups: {"gateways": [names], "redis": [name], "postgres": [name]}; a host's own settings
        (host data, e.g. a non-default litellm_home) come from its `data`."""
        self.groups = groups
        sb.write_inventory(self.inventory_path, {g: [self.hosts[n] for n in names] for g, names in groups.items()},
                           spec_file=self.spec_path)

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

    def host_settings(self, name: str) -> dict:
        """The settings one host is deployed with: defaults, the spec's, then its own host data."""
        from gatekit.defaults import DEFAULTS

        return {**DEFAULTS, **self.settings, **self.hosts[name].data}

    def layout(self, name: str) -> Layout:
        """Where everything is on one host (its own paths when its settings move them)."""
        return Layout.from_settings(self.host_settings(name))

    def live_text(self, name: str) -> str:
        """The gateway's live.json as text ("" before its first switch: a fresh deploy starts the blue set without one)."""
        return self.hosts[name].run(f"cat {self.layout(name).live_file} 2>/dev/null || true").stdout

    def live_record(self, name: str) -> dict:
        """The gateway's live.json ({} before its first switch)."""
        text = self.live_text(name)
        return json.loads(text) if text.strip() else {}

    def live_ports(self, name: str) -> tuple[int, ...]:
        """The instance set nginx serves on this gateway, as the kit itself reads it (live.json)."""
        return self.layout(name).live_set(self.live_text(name))

    def gateway_url(self, name: str) -> str:
        port = self.host_settings(name)["nginx_https_port"]
        return f"https://{self.hosts[name].address}" + ("" if port == 443 else f":{port}")

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
