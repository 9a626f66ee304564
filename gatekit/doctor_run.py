"""gatekit doctor, the controller side: collect each host's evidence, make the optional model calls, and run
the checks of gatekit/doctor.py on them. Read-only: nothing here or in the on-host collector changes a host.

The inventory loads as pyinfra's CLI loads it (as gatekit/usage.py does), so the spec and the vault are
validated the same way. Each host gets one SSH command: gatekit/onhost/probe.py (compressed, in the
command itself) run by the host's `python3 -I`, parameters in argv (paths and names, never a secret).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gatekit import doctor as d
from gatekit.spec import SpecError

KIT_ROOT = Path(__file__).resolve().parent.parent  # deploy.py lives here in a checkout (not in the wheel)
PROBE_TIMEOUT = 300


def probe_command(params: dict) -> str:
    from gatekit.resources import onhost_source

    code = base64.b64encode(zlib.compress(onhost_source("probe.py").encode(), 9)).decode()
    arg = base64.b64encode(json.dumps(params).encode()).decode()
    return f"python3 -I -c \"import base64,zlib;exec(zlib.decompress(base64.b64decode('{code}')))\" {arg}"


def probe_params(host, ctx) -> dict:
    """What the collector needs to know about this host: paths, ports, credential names (no secret)."""
    from gatekit.onhost.layout import Layout
    from gatekit.roles import credentials

    s = ctx.settings
    L = Layout.from_settings(s)
    params: dict = {}
    if "gateways" in host.groups:
        params.update(
            gateway=True, ports=list(L.litellm_ports), secret_env=credentials.secrets_for_gateway(ctx),
            credentials_runtime_dir=L.credentials_runtime_dir, env_file=L.env_file, creds_dir=L.creds_dir,
            live_file=L.live_file, journal_file=L.journal_file, config=L.config, venv=L.venv, venvs_dir=L.venvs_dir,
            # Files a venv has that no distribution installed (the venv tool's, uv's lock, the build's stamp).
            venv_scaffolding=["pyvenv.cfg", ".gatekit-stamp", ".lock", ".gitignore", "CACHEDIR.TAG", "bin/Activate.ps1"],
            redis_secret=s["redis_password_secret"], postgres_secret=s["postgres_password_secret"],
        )
    if "redis" in host.groups:
        params["redis_port"] = s["redis_port"]
    if "postgres" in host.groups:
        params["postgres_port"] = s["postgres_port"]
    if "monitoring" in host.groups:
        params["prometheus_port"] = s["monitoring_prometheus_port"]
    return params


def connector_error(exc: BaseException) -> str:
    """A connector's failure in one line: its type and the first line of its message, cut."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


def collect(host, params: dict) -> tuple[dict | None, str | None]:
    """(evidence, None) or (None, one line saying why not)."""
    kwargs = {"_sudo": True} if host.data.get("_sudo") else {}
    try:
        host.connect(raise_exceptions=True)
    except Exception as exc:  # noqa: BLE001 - any connector failure is one line for the operator
        return None, f"cannot connect: {connector_error(exc)}"
    try:
        ok, output = host.run_shell_command(probe_command(params), print_output=False, print_input=False,
                                            _timeout=PROBE_TIMEOUT, **kwargs)
    finally:
        host.disconnect()
    for line in output.stdout_lines:
        if line.startswith("GATEKIT-PROBE "):
            try:
                ev = json.loads(line[len("GATEKIT-PROBE "):])
            except ValueError:
                ev = None
            if not isinstance(ev, dict):
                return None, f"the collector's line is not one JSON object ({len(line)} characters; output cut off?)"
            return ev, None
    detail = " ".join(output.stderr_lines)[-200:]
    return None, f"the collector failed (python3 -I on the host): {detail or 'no output'}"


# ---- model calls (--calls) ------------------------------------------------------------------------------
def _client(master_key: str):
    import ssl

    import httpx

    tls = ssl.create_default_context()
    # The address is the gateway's private one, not its certificate's name; the tls check reads expiry.
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    return httpx.Client(verify=tls, timeout=60, trust_env=False, headers={"Authorization": f"Bearer {master_key}"})


def stream_call(url: str, master_key: str, model: str) -> tuple[str, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "gatekit doctor: count to five"}],
            "max_tokens": 16, "stream": True}
    arrivals: list[float] = []
    try:
        with _client(master_key) as c, c.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return d.evaluate_stream(r.status_code, [])
            t0 = time.monotonic()
            for line in r.iter_lines():
                if line.startswith("data:") and line.strip() != "data: [DONE]":
                    arrivals.append(time.monotonic() - t0)
            return d.evaluate_stream(200, arrivals)
    except Exception as exc:  # noqa: BLE001 - the evidence is the failure's type and first line
        return d.evaluate_stream(None, [], f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")


def routing_calls(url: str, master_key: str, names: list[str]) -> list[str]:
    """Problems of a 1-token call per public name (fallbacks off: a name mismatch must not hide behind one)."""
    problems = []
    try:
        with _client(master_key) as c:
            for name in names:
                body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                        "disable_fallbacks": True}
                r = c.post(f"{url}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    problems.append(f"{name}: HTTP {r.status_code}")
    except Exception as exc:  # noqa: BLE001
        problems.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
    return problems


# ---- drift ----------------------------------------------------------------------------------------------
def dry_run(inventory_file: Path, limit: str | None) -> tuple[dict[str, list[str]] | None, str | None]:
    deploy = KIT_ROOT / "deploy.py"
    if not deploy.exists():
        return None, f"{deploy} not found (kit installed from its wheel): run pyinfra INVENTORY deploy.py --dry yourself"
    pyinfra = Path(sys.executable).with_name("pyinfra")
    # No -y: it turns off pyinfra's change detection, and --dry then reports every operation as unchanged.
    cmd = [str(pyinfra) if pyinfra.exists() else "pyinfra", "--dry", "--json", str(inventory_file.resolve()), str(deploy)]
    if limit:
        cmd += ["--limit", limit]
    try:
        p = subprocess.run(cmd, cwd=KIT_ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "pyinfra --dry timed out after 900 s"
    try:
        plan = json.loads(p.stdout)
    except ValueError:
        last = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        return None, f"pyinfra --dry failed (rc={p.returncode}): {last[0][:200]}"
    try:
        return d.drift_by_host(plan), None
    except (AttributeError, TypeError):
        return None, f"pyinfra --dry --json printed a plan this gatekit does not read (rc={p.returncode})"


# ---- one host -------------------------------------------------------------------------------------------
def host_results(host, ctx, ev: dict, calls: bool) -> list[d.Result]:
    from gatekit.onhost.probe import fingerprint
    from gatekit.onhost.layout import Layout
    from gatekit.roles import credentials
    from gatekit.roles.venv import lock_file

    name, s, spec = host.name, ctx.settings, ctx.spec
    out: list[d.Result] = []
    gw, data = ev.get("gateway"), ev.get("data") or {}
    now = ev.get("now")
    now = now if isinstance(now, (int, float)) and not isinstance(now, bool) else time.time()
    if gw is not None:
        # The checks judge the evidence's shape (each fails on its own); what is read here is only passed on.
        g = gw if isinstance(gw, dict) else {}
        L = Layout.from_settings(s)
        secret_env = credentials.secrets_for_gateway(ctx)
        vault_fps = {n: fingerprint(ctx.secret(n)) for n in secret_env}
        port = s["nginx_https_port"]
        live_json = g.get("live_json") if isinstance(g.get("live_json"), str) else None
        redis = g.get("redis") if isinstance(g.get("redis"), dict) else {}
        out.append(d.check_memory(name, gw, [L.instance(p) for p in L.live_set(live_json)]))
        out.append(d.check_stale_key(name, gw, vault_fps, secret_env))
        out.append(d.check_switch(name, gw))
        out.append(d.check_retries_cost(name, g.get("config"), spec))
        out.append(d.check_routing(name, g.get("config"), spec, redis.get("cooldowns")))
        url = f"https://{host.data.get('private_address') or name}" + ("" if port == 443 else f":{port}")
        master = ctx.secret(s["litellm_master_key_secret"])
        public = spec.public_names()
        if calls:
            problems = routing_calls(url, master, public)
            out.append(d._result(name, "routing_calls", problems, f"{len(public)} public name(s) answered a 1-token call "
                                 "through nginx", "see the failing name's deployment: its provider, key, api_base "
                                 "(journalctl -u litellm@PORT)"))
        else:
            out.append(d.skipped(name, "routing_calls", "no model calls without --calls"))
        out.append(d.check_streaming_config(name, g.get("nginx"), port, L))
        if calls:
            status, evidence = stream_call(url, master, spec.models[0].name)
            out.append(d.Result(name, "streaming_call", status, evidence, "" if status == d.OK else
                                "check nginx -T (proxy_buffering off, no gzip) and the path between client and gateway"))
        else:
            out.append(d.skipped(name, "streaming_call", "no model calls without --calls"))
        out.append(d.check_exposure(name, gw))
        out.append(d.check_tls(name, g.get("nginx"), port, int(s.get("monitoring_cert_days", 14)), now, L))
        lock = lock_file(s)
        extra = ("pip",) if s["litellm_installer"] == "pip" else ()
        out.append(d.check_supply_chain(name, g.get("venv"), g.get("venv_units", []), d.lock_pins(lock.read_text(), d.marker_environment(g.get("venv"))), extra))
    for r in (d.check_redis(name, gw, data), d.check_postgres(name, gw, data), d.check_monitoring(name, data)):
        if r is not None:
            out.append(r)
    return out


def load_fleet(inventory_file: Path, only: str | None = None, group: str | None = None):
    """(hosts, {host name: gatekit context}) of an inventory loaded as pyinfra's CLI loads it (spec and vault
    validated the same way); `only`: one host by name; `group`: that group's hosts, in inventory order."""
    from pyinfra.api import Config, State
    from pyinfra.api.exceptions import PyinfraError
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state
    from pyinfra_cli.inventory import make_inventory

    from gatekit.inventory import context

    # As pyinfra's CLI sets them up: inventory files run inside pyinfra's context.
    state = State(check_for_changes=False)
    state.cwd = os.getcwd()
    ctx_state.set(state)
    config = Config()
    ctx_config.set(config)
    try:
        inventory = make_inventory(str(inventory_file), cwd=state.cwd)
    except PyinfraError as exc:
        raise SpecError([f"{inventory_file}: {line.strip()}" for line in str(exc).splitlines() if line.strip()][-5:]) from None
    ctx_inventory.set(inventory)
    pool = list(inventory.get_group(group, default=[])) if group else list(inventory)
    hosts = [h for h in pool if only is None or h.name == only or h.data.get("sandbox_name") == only]
    if not hosts:
        raise SpecError([f"{inventory_file}: no host named {only!r}. Fix: use a host name from the inventory."])
    state.init(inventory, config)
    contexts = {}
    for h in hosts:
        try:
            contexts[h.name] = context(h)
        except PyinfraError as exc:
            raise SpecError([f"host {h.name}: {line.strip()}" for line in str(exc).splitlines() if line.strip()]) from None
    # pyinfra's connectors warn about unknown host keys on stderr; the operator's ssh settings are theirs.
    logging.getLogger("pyinfra").setLevel(logging.ERROR)
    return hosts, contexts


def run_doctor(inventory_file: Path, calls: bool = False, only: str | None = None) -> list[d.Result]:
    hosts, contexts = load_fleet(inventory_file, only)
    with ThreadPoolExecutor(max_workers=len(hosts) + 1) as pool:
        drift = pool.submit(dry_run, inventory_file, only and hosts[0].name)
        evidence = {h.name: pool.submit(collect, h, probe_params(h, contexts[h.name])) for h in hosts}
        results: list[d.Result] = []
        unreachable = set()
        for h in hosts:
            ev, err = evidence[h.name].result()
            if err:
                unreachable.add(h.name)
                results.append(d.Result(h.name, "connect", d.FAIL, err,
                                        "check that the host is up and that SSH as in the inventory works (pyinfra HOST exec -- true)"))
                continue
            results += host_results(h, contexts[h.name], ev, calls)
        changes, err = drift.result()
    for h in hosts:
        if h.name in unreachable:
            results.append(d.skipped(h.name, "drift", "host not reachable (see connect)"))
        else:
            results.append(d.check_drift(h.name, None if changes is None else changes.get(h.name, []), err))
    order = {h.name: i for i, h in enumerate(hosts)}
    return sorted(results, key=lambda r: order.get(r.host, -1))  # stable: each host's checks together, in order


def render_text(results: list[d.Result]) -> str:
    lines, host = [], None
    for r in results:
        if r.host != host:
            host = r.host
            lines.append(f"{host}")
        lines.append(f"  {r.status.upper():<7} {r.check:<16} {r.evidence}")
        if r.status == d.FAIL and r.fix:
            lines.append(f"  {'':<7} {'':<16} fix: {r.fix}")
    failed = sum(r.status == d.FAIL for r in results)
    lines.append(f"{len(results)} checks: {failed} failed, {sum(r.status == d.SKIPPED for r in results)} skipped")
    return "\n".join(lines)
