"""gatekit doctor: the pure checks. Evidence from one host (gatekit/onhost/probe.py's JSON) + what the kit
knows (spec, settings, the vault's fingerprints, the lock) in; one Result per check out.

Every check names one production pitfall (docs/architecture.md), says what it saw (short, never a secret:
a key a process holds is only said to match or differ from the vault's), and one line of fix. Nothing here
touches a host: gatekit/doctor_run.py collects the evidence and makes the optional model calls.

Evidence a check cannot read (a field missing or of another type, a date openssl printed differently, a
config.yaml edited into another shape) fails that check, saying what it could not read; the others go on.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import json
import os
import re
import traceback
from dataclasses import asdict, dataclass

import yaml

from gatekit.onhost.layout import Layout
from gatekit.spec import NEVER_RETRIED, RETRY_CLASSES, GatewaySpec, pricier_without_consent

OK, FAIL, SKIPPED = "ok", "fail", "skipped"
EXPOSURE_LIMIT = 2.5  # systemd-analyze security: the kit's contract for litellm@PORT (README, security model)
MEMORY_FULL = 0.9  # MemoryCurrent above this share of MemoryMax: the kernel kill is near
START_SLACK = 2.0  # seconds: a process start time is known to the clock tick, the boot time to the second


@dataclass(frozen=True)
class Result:
    host: str
    check: str
    status: str
    evidence: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _short(items, limit: int = 4) -> str:
    items = list(items)
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(str(i) for i in items[:limit]) + more


def _result(host: str, check: str, problems: list[str], ok_evidence: str, fix: str) -> Result:
    if problems:
        return Result(host, check, FAIL, _short(problems), fix)
    return Result(host, check, OK, ok_evidence)


# ---- evidence a check cannot read ------------------------------------------------------------------------
class Malformed(Exception):
    """Evidence not in the shape a check reads: that check fails, naming what it could not read."""

    def __init__(self, what: str, fix: str = ""):
        super().__init__(what)
        self.fix = fix


MALFORMED_FIX = ("the host printed evidence this check cannot read (a tool's output changed, or the host was "
                 "tampered with): run the command of gatekit/onhost/probe.py that gives it on the host and look; "
                 "GATEKIT_DEBUG=1 gatekit doctor shows where it failed")
CONFIG_FIX = "the live config.yaml was edited by hand: redeploy (it renders config.yaml from the spec)"
_KINDS = {dict: "a mapping", list: "a list", str: "a string"}
NUMBER = (int, float)


def _need(value, kind, what: str, fix: str = ""):
    """`value` when it is a `kind` (NUMBER: an int or float, never a bool); else Malformed saying what it is."""
    if value is None:
        raise Malformed(f"{what}: missing", fix)
    if not isinstance(value, kind) or (kind is NUMBER and isinstance(value, bool)):
        raise Malformed(f"{what}: {type(value).__name__}, not {_KINDS.get(kind, 'a number')}", fix)
    return value


def _clip(value, limit: int = 60) -> str:
    """A value from the host, quoted and cut, on one line."""
    return repr(value)[:limit]


def _where(exc: BaseException) -> str:
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == __file__]
    return f" at gatekit/doctor.py:{lines[-1]}" if lines else ""


def _check(name: str):
    """A check that fails with evidence instead of raising when what the host printed is not what it reads.
    Only the exception's type and place are shown: its message could quote anything the host printed."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(host: str, *args, **kwargs):
            try:
                return fn(host, *args, **kwargs)
            except Malformed as exc:
                return Result(host, name, FAIL, str(exc).replace("\n", "\\n"), exc.fix or MALFORMED_FIX)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
                if os.environ.get("GATEKIT_DEBUG"):
                    raise
                return Result(host, name, FAIL, f"evidence not readable ({type(exc).__name__}{_where(exc)})",
                              MALFORMED_FIX)
        return run
    return wrap


def _instances(gw) -> dict[str, dict]:
    """The collector's litellm@PORT units: each a mapping with its systemd properties as strings."""
    units = _need(_need(gw, dict, "gateway evidence").get("instances", {}), dict, "instances")
    for unit, entry in units.items():
        props = _need(_need(entry, dict, f"instances: {unit}").get("props"), dict, f"{unit}: props")
        for key, value in props.items():
            _need(value, str, f"{unit}: {key}")
    return units


def active_instances(gw: dict) -> dict[str, dict]:
    return {u: e for u, e in _instances(gw).items() if e["props"].get("ActiveState") == "active"}


# ---- 1. silent OOM --------------------------------------------------------------------------------------
def _bytes(value: str | None) -> int | None:
    """systemd's byte counts; None for "infinity", "[not set]" or nothing."""
    return int(value) if isinstance(value, str) and value.isdigit() else None


@_check("memory")
def check_memory(host: str, gw: dict, live_units: list[str]) -> Result:
    problems, seen = [], []
    instances = _instances(gw)
    for unit in live_units:
        entry = instances.get(unit)
        if entry is None or entry["props"].get("ActiveState") != "active":
            state = entry["props"].get("ActiveState", "?") + "/" + entry["props"].get("Result", "?") if entry else "unknown"
            problems.append(f"{unit} (live) is not running ({state})")
    for unit, entry in instances.items():
        p = entry["props"]
        high, mx, cur = _bytes(p.get("MemoryHigh")), _bytes(p.get("MemoryMax")), _bytes(p.get("MemoryCurrent"))
        if mx is None:
            problems.append(f"{unit}: MemoryMax={p.get('MemoryMax', '?')}")
        if high is None:
            problems.append(f"{unit}: MemoryHigh={p.get('MemoryHigh', '?')}")
        elif mx is not None and high >= mx:
            problems.append(f"{unit}: MemoryHigh {high >> 20}M not below MemoryMax {mx >> 20}M")
        if p.get("Restart") != "always":
            problems.append(f"{unit}: Restart={p.get('Restart', '?')}")
        if entry.get("oom_kills"):
            problems.append(f"{unit}: {entry['oom_kills']} OOM kill(s) this boot")
        if p.get("NRestarts", "0") not in ("", "0"):
            problems.append(f"{unit}: restarted {p['NRestarts']} time(s) by systemd since its last start")
        if p.get("ActiveState") == "active" and cur is not None and mx:
            seen.append(f"{unit.split('.')[0]} {cur >> 20}M/{mx >> 20}M")
            if cur > MEMORY_FULL * mx:
                problems.append(f"{unit}: using {cur >> 20}M of MemoryMax {mx >> 20}M")
    return _result(host, "memory", problems, ", ".join(seen) or "no instance running",
                   "redeploy to restore the unit's MemoryHigh/MemoryMax/Restart=always (remove hand-made drop-ins: "
                   "systemctl cat litellm@PORT); OOM kills/restarts/high use: raise litellm_memory_max or find the leak "
                   "(journalctl -u litellm@PORT)")


# ---- 2. rotated key, old key still used -----------------------------------------------------------------
@_check("stale_key")
def check_stale_key(host: str, gw: dict, vault_fps: dict[str, str], secret_env: dict[str, str]) -> Result:
    """vault_fps: {secret name: fingerprint of the vault's current value}; secret_env: {secret name: env var}."""
    problems, processes = [], 0
    cred_files = _need(_need(gw, dict, "gateway evidence").get("credential_files", {}), dict, "credential_files")
    for unit, entry in active_instances(gw).items():
        u = unit.split(".")[0]
        creds = _need(entry.get("runtime_credentials", {}), dict, f"{unit}: runtime_credentials")
        for name, fp in sorted(creds.items()):
            if name in vault_fps and fp is not None and fp != vault_fps[name]:
                problems.append(f"{u} loaded {name} at start: differs from the vault")
            elif name in vault_fps and fp is None:
                problems.append(f"{u}: no runtime credential {name} (cannot tell which key it holds)")
        for proc in _need(entry.get("processes", []), list, f"{unit}: processes"):
            processes += 1
            proc = _need(proc, dict, f"{unit}: a process")
            start = _need(proc.get("start"), NUMBER, f"{u} pid {_clip(proc.get('pid'), 12)}: start")
            env = _need(proc.get("env", {}), dict, f"{u} pid {_clip(proc.get('pid'), 12)}: env")
            for name, var in secret_env.items():
                fp = env.get(var)
                if fp is not None and name in vault_fps and fp != vault_fps[name]:
                    problems.append(f"{u} pid {proc['pid']} holds {name}: differs from the vault")
                written = _need(cred_files.get(name, {}), dict, f"credential_files: {name}").get("mtime")
                if written is not None and start + START_SLACK < _need(written, NUMBER, f"{name}.cred: mtime"):
                    problems.append(f"{u} pid {proc['pid']} started {written - start:.0f}s before "
                                    f"{name}.cred was last written")
    problems = list(dict.fromkeys(problems))
    return _result(host, "stale_key", problems,
                   f"{len(active_instances(gw))} instance(s), {processes} process(es): every key matches the vault",
                   "rotate so fresh processes load the current keys: pyinfra INVENTORY rotate_keys.py "
                   "--data rotate=NAME (a .cred written by hand: redeploy first)")


# ---- 3 + 4. retry storms and cost ------------------------------------------------------------------------
def parse_config(text: str | None) -> tuple[dict | None, str | None]:
    """The live config.yaml as data (it holds only os.environ/ references, no secret values)."""
    if text is None:
        return None, "config.yaml missing or unreadable"
    if not isinstance(text, str):
        return None, f"config.yaml: the collector gave no text ({type(text).__name__})"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return None, f"config.yaml is not valid YAML ({str(exc).splitlines()[0][:80]})"
    return (data, None) if isinstance(data, dict) else (None, "config.yaml is not a mapping")


def _section(parent: dict, key: str, kind, where: str):
    """A part of config.yaml ({} or [] when absent), Malformed when it is of another type."""
    value = parent.get(key)
    return kind() if value is None else _need(value, kind, f"config.yaml: {where}{key}", CONFIG_FIX)


def _fallbacks(router: dict) -> list[tuple[str, list[str]]]:
    """router_settings.fallbacks as (model, [fallback models]) pairs, every name a string."""
    out = []
    for i, fb in enumerate(_section(router, "fallbacks", list, "router_settings.")):
        where = f"config.yaml: router_settings.fallbacks[{i}]"
        for src, targets in _need(fb or {}, dict, where, CONFIG_FIX).items():
            targets = _need(targets or [], list, f"{where}.{src}", CONFIG_FIX)
            for name in [src, *targets]:
                _need(name, str, f"{where}: {_clip(name, 40)}", CONFIG_FIX)
            out.append((src, targets))
    return out


@_check("retries_cost")
def check_retries_cost(host: str, config_text: str | None, spec: GatewaySpec) -> Result:
    cfg, err = parse_config(config_text)
    if err:
        return Result(host, "retries_cost", FAIL, err, "redeploy to render config.yaml")
    router = _section(cfg, "router_settings", dict, "")
    policy = _section(router, "retry_policy", dict, "router_settings.")
    num = router.get("num_retries", 0) or 0
    problems = []
    for field in NEVER_RETRIED:
        name = RETRY_CLASSES[field]
        n = policy.get(name, num)  # without a policy entry LiteLLM retries the class num_retries times
        if n:
            problems.append(f"{name}={n}" + (" (num_retries, no policy entry)" if name not in policy else ""))
    fallbacks = _fallbacks(router)
    for src, targets in fallbacks:
        src_model = spec.model(src)
        for dst in targets:
            dst_model = spec.model(dst)
            if src_model is None or dst_model is None:
                problems.append(f"fallback {src} -> {dst}: not a model of the spec (price unknown)")
            elif pricier_without_consent(spec, src, dst):
                d, s_ = dst_model.price, src_model.price
                problems.append(f"fallback {src} -> {dst} is pricier (${d.input_per_1m:g}/${d.output_per_1m:g} vs "
                                f"${s_.input_per_1m:g}/${s_.output_per_1m:g} per 1M in/out) and the spec does not allow it")
    n_fb = sum(len(targets) for _, targets in fallbacks)
    return _result(host, "retries_cost", problems,
                   f"0 retries for 400/401/403/429, num_retries={num}, {n_fb} fallback(s) none pricier than allowed",
                   "the live config.yaml was edited by hand: redeploy (it renders retry_policy and fallbacks from the spec)")


# ---- 7 + 8. model names, weights, cooldowns -------------------------------------------------------------
@_check("routing")
def check_routing(host: str, config_text: str | None, spec: GatewaySpec, cooldowns: list[str] | None) -> Result:
    cfg, err = parse_config(config_text)
    if err:
        return Result(host, "routing", FAIL, err, "redeploy to render config.yaml")
    problems = []
    names, ids = set(), set()
    for i, entry in enumerate(_section(cfg, "model_list", list, "")):
        entry = _need(entry, dict, f"config.yaml: model_list[{i}]", CONFIG_FIX)
        names.add(_need(entry.get("model_name"), str, f"config.yaml: model_list[{i}].model_name", CONFIG_FIX))
        dep_id = _section(entry, "model_info", dict, f"model_list[{i}].").get("id")
        if dep_id is not None:
            _need(dep_id, str, f"config.yaml: model_list[{i}].model_info.id", CONFIG_FIX)
        ids.add(dep_id)
        weight = _section(entry, "litellm_params", dict, f"model_list[{i}].").get("weight", 1)
        if not isinstance(weight, (int, float)) or weight <= 0:
            problems.append(f"model_list[{i}] {entry.get('model_name')}: weight {weight} is never picked")
    router = _section(cfg, "router_settings", dict, "")
    aliases = _section(router, "model_group_alias", dict, "router_settings.")
    for alias, target in aliases.items():
        _need(target, str, f"config.yaml: router_settings.model_group_alias.{alias}", CONFIG_FIX)
    for m in spec.models:
        if m.name not in names:
            problems.append(f"{m.name} (spec) has no deployment in the live config")
    for alias, target in {**spec.aliases, **aliases}.items():
        if alias not in aliases:
            problems.append(f"alias {alias} (spec) missing from the live config")
        elif aliases[alias] not in names:
            problems.append(f"alias {alias} -> {aliases[alias]}: no such model in model_list")
    for src, targets in _fallbacks(router):
        for name in [src, *targets]:
            if name not in names:
                problems.append(f"fallback names {name}: no such model in model_list")
    if cooldowns is None:
        problems.append("Redis not readable: cooldowns unknown")
    else:
        from gatekit.onhost.probe import cooldown_deployment

        for key in cooldowns:
            dep = cooldown_deployment(key)  # the whole id: a model name may hold ':' and '/'
            if dep in ids:
                problems.append(f"deployment {dep} is cooling down now")
    problems = list(dict.fromkeys(problems))
    return _result(host, "routing", problems,
                   f"{len(names)} model(s), {len(aliases)} alias(es), weights > 0, no deployment cooling down",
                   "redeploy (the spec is validated: names, weights); a cooldown: see the provider's errors "
                   "(journalctl -u litellm@PORT) and the fake/real provider's status")


# ---- 6. streams behind nginx -------------------------------------------------------------------------------
Node = tuple  # (directive, args, children or None)


def _tokens(text: str):
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{};":
            yield c
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            yield text[i + 1:j]
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{};":
                j += 1
            yield text[i:j]
            i = j


def nginx_files(dump: str) -> dict[str, str]:
    """`nginx -T`: each configuration file, after a '# configuration file PATH:' line."""
    files, current, lines = {}, None, []
    for line in dump.splitlines():
        m = re.match(r"^# configuration file (.+):$", line)
        if m:
            if current:
                files[current] = "\n".join(lines)
            current, lines = m.group(1), []
        else:
            lines.append(line)
    if current:
        files[current] = "\n".join(lines)
    return files


def parse_nginx(files: dict[str, str], path: str, prefix: str, depth: int = 0) -> list[Node]:
    """The configuration tree from `path`, includes expanded from the files `nginx -T` printed (a relative
    include is relative to `prefix`, the directory of nginx's main file)."""
    if depth > 10 or path not in files:
        return []
    tokens = list(_tokens(files[path]))
    pos = 0

    def block() -> list[Node]:
        nonlocal pos
        out, words = [], []
        while pos < len(tokens):
            t = tokens[pos]
            pos += 1
            if t == ";":
                if words and words[0] == "include" and len(words) > 1:
                    pattern = words[1] if words[1].startswith("/") else f"{prefix}/{words[1]}"
                    for f in sorted(files):
                        if fnmatch.fnmatch(f, pattern):
                            out += parse_nginx(files, f, prefix, depth + 1)
                elif words:
                    out.append((words[0], words[1:], None))
                words = []
            elif t == "{":
                out.append((words[0] if words else "", words[1:], block()))
                words = []
            elif t == "}":
                return out
            else:
                words.append(t)
        return out

    return block()


STREAM_DEFAULTS = {"proxy_buffering": "on", "proxy_request_buffering": "on", "proxy_http_version": "1.0", "gzip": "off",
                   "gzip_types": "text/html"}
STREAM_WANTED = {"proxy_buffering": "off", "proxy_request_buffering": "off", "proxy_http_version": "1.1"}


def _own(nodes: list[Node], name: str) -> list[str] | None:
    found = [args for d, args, children in nodes if d == name and children is None]
    return found[-1] if found else None


def _effective(chain: list[list[Node]], name: str) -> list[str]:
    """nginx's inheritance: the innermost level that sets a directive wins."""
    for level in reversed(chain):
        own = _own(level, name)
        if own is not None:
            return own
    return STREAM_DEFAULTS[name].split()


def _locations(nodes: list[Node], chain: list[list[Node]]):
    for d, args, children in nodes:
        if d == "location" and children is not None:
            yield " ".join(args), chain + [children]
            yield from _locations(children, chain + [children])


def gateway_servers(tree: list[Node], https_port: int):
    """(http level, server block) of every server listening with TLS on the gateway's port."""
    for d, _, http in tree:
        if d != "http" or http is None:
            continue
        for sd, _, server in http:
            if sd == "server" and server is not None and any(
                    d2 == "listen" and "ssl" in a and re.search(rf"(^|:|\]){https_port}$", a[0])
                    for d2, a, c in server if c is None and a):
                yield http, server


def _nginx_tree(nginx: dict, layout: Layout) -> list[Node]:
    dump = _need(nginx.get("dump") or "", str, "nginx -T output")
    return parse_nginx(nginx_files(dump), layout.nginx_conf, layout.nginx_dir)


@_check("streaming_config")
def check_streaming_config(host: str, nginx: dict, https_port: int, layout: Layout = Layout()) -> Result:
    """layout: where nginx's files are (the main file nginx -T starts from, the kit's site)."""
    if not _need(nginx, dict, "nginx evidence").get("dump"):
        return Result(host, "streaming_config", FAIL, "nginx -T printed nothing (nginx missing or its config broken)",
                      "systemctl status nginx; nginx -t; redeploy")
    tree = _nginx_tree(nginx, layout)
    servers = list(gateway_servers(tree, https_port))
    if not servers:
        return Result(host, "streaming_config", FAIL, f"no TLS server on port {https_port} in nginx -T",
                      f"redeploy (it writes {layout.nginx_site})")
    problems, checked = [], 0
    for http, server in servers:
        for where, chain in _locations(server, [http, server]):
            target = _own(chain[-1], "proxy_pass")
            if not target or not target[0].startswith("http://litellm"):
                continue
            checked += 1
            for name, want in STREAM_WANTED.items():
                got = _effective(chain, name)
                if got[:1] != [want]:
                    problems.append(f"location {where}: {name} {' '.join(got)}")
            if _effective(chain, "gzip")[:1] == ["on"]:
                types = _effective(chain, "gzip_types")
                if "*" in types or "text/event-stream" in types:
                    problems.append(f"location {where}: gzip on for text/event-stream")
    if not checked:
        problems.append("no location passes to the litellm upstream")
    return _result(host, "streaming_config", sorted(set(problems)),
                   f"{checked} location(s) to LiteLLM: proxy_buffering off, proxy_request_buffering off, "
                   "HTTP/1.1, no gzip of event streams",
                   f"redeploy to rewrite {layout.nginx_site} and remove the drop-in that changed it (nginx -T shows where)")


def evaluate_stream(status: int | None, arrivals: list[float], error: str | None = None) -> tuple[str, str]:
    """(status, evidence) of a streamed call: arrivals are the seconds at which each data chunk arrived."""
    if error:
        return FAIL, error
    if status != 200:
        return FAIL, f"HTTP {status}"
    if len(arrivals) < 2:
        return FAIL, f"{len(arrivals)} chunk(s): the stream arrived in one piece"
    spread = arrivals[-1] - arrivals[0]
    if spread < 0.05:
        return FAIL, f"{len(arrivals)} chunks within {spread * 1000:.0f} ms: buffered, then sent at once"
    return OK, f"{len(arrivals)} chunks over {spread:.2f}s"


# ---- TLS ------------------------------------------------------------------------------------------------
def cert_end(not_after) -> dt.datetime | None:
    """openssl's notAfter date ("Mar  9 08:05:21 2029 GMT") as a UTC datetime; None when it is not one."""
    if not isinstance(not_after, str):
        return None
    try:
        return dt.datetime.strptime(not_after, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


@_check("tls")
def check_tls(host: str, nginx: dict, https_port: int, min_days: int, now: float, layout: Layout = Layout()) -> Result:
    problems, seen = [], []
    _need(nginx, dict, "nginx evidence")
    _need(now, NUMBER, "the host's clock (now)")
    if not nginx.get("test_ok"):
        output = _need(nginx.get("test_output") or "", str, "nginx -t output")
        problems.append("nginx -t failed: " + output.splitlines()[-1][:160] if output.strip() else "nginx -t failed")
    tree = _nginx_tree(nginx, layout)
    certs = {(_own(server, "ssl_certificate") or _own(http, "ssl_certificate") or [""])[0]
             for http, server in gateway_servers(tree, https_port)} - {""}
    if not certs:
        problems.append(f"no ssl_certificate for port {https_port} in nginx -T")
    read = _need(nginx.get("certs") or {}, dict, "certs")
    for path in sorted(certs):
        info = _need(read.get(path) or {}, dict, f"certs: {path}")
        if not info.get("not_after"):
            problems.append(f"{path}: {info.get('error') or 'not read'}")
            continue
        end = cert_end(info["not_after"])
        if end is None:
            problems.append(f"{path}: end date {_clip(info['not_after'])} not understood")
            continue
        days = (end.timestamp() - now) / 86400
        seen.append(f"{path} expires in {days:.0f} days")
        if days <= min_days:
            problems.append(f"{path} expires in {days:.1f} days (limit {min_days})")
    return _result(host, "tls", problems, "nginx -t ok; " + ", ".join(seen),
                   "renew the certificate (nginx_tls_cert/nginx_tls_key, or delete the self-signed pair and redeploy); "
                   "nginx -t errors: fix the file it names; a certificate not read or its date not understood: "
                   "openssl x509 -noout -enddate -in PATH on the host")


# ---- containment ----------------------------------------------------------------------------------------
@_check("exposure")
def check_exposure(host: str, gw: dict) -> Result:
    problems, seen = [], []
    for unit, entry in active_instances(gw).items():
        score = entry.get("exposure")
        if score is None:
            problems.append(f"{unit}: systemd-analyze security gave no score")
        elif not isinstance(score, NUMBER) or isinstance(score, bool):
            problems.append(f"{unit}: exposure {_clip(score, 40)} is not a number")
        else:
            seen.append(f"{unit.split('.')[0]} {score:g}")
            if score > EXPOSURE_LIMIT:
                problems.append(f"{unit}: exposure {score:g} > {EXPOSURE_LIMIT}")
    return _result(host, "exposure", problems, ", ".join(seen) or "no instance running",
                   "remove drop-ins that loosen the sandbox (systemctl cat litellm@PORT) and redeploy the unit")


# ---- Redis, PostgreSQL ----------------------------------------------------------------------------------
def _redis_problems(where: str, ev: dict, with_auth: bool) -> list[str]:
    _need(ev, dict, f"Redis evidence ({where})")
    if ev.get("error"):
        return [f"{where} {ev.get('target')}: {ev['error']}"]
    problems = []
    if ev.get("without_auth") == "PONG":
        problems.append(f"{where} {ev.get('target')}: answers PING without a password")
    elif not re.search(r"NOAUTH|WRONGPASS|Authentication required", str(ev.get("without_auth") or "")):
        problems.append(f"{where} {ev.get('target')}: without password: {ev.get('without_auth')!r}")
    if with_auth and ev.get("with_auth") != "PONG":
        problems.append(f"{where} {ev.get('target')}: with the password: {ev.get('with_auth')!r}")
    return problems


@_check("redis")
def check_redis(host: str, gw: dict | None, data: dict | None) -> Result | None:
    problems, seen = [], []
    if gw is not None and "redis" in _need(gw, dict, "gateway evidence"):
        problems += _redis_problems("from here to", gw["redis"], with_auth=True)
        seen.append(f"{gw['redis'].get('target')} refuses without password, answers with it")
    if data is not None and "redis_local" in _need(data, dict, "data host evidence"):
        problems += _redis_problems("local", data["redis_local"], with_auth=False)
        seen.append("local Redis refuses without password")
    if not seen and not problems:
        return None
    return _result(host, "redis", problems, "; ".join(seen),
                   "redeploy (redis.conf: user default with the vault's password hash; LiteLLM's credential); "
                   "unreachable: systemctl status redis-server and the private network")


def _pg_refuses(answer: str | None) -> bool:
    return isinstance(answer, str) and (answer.startswith("password requested") or answer.startswith("refused"))


@_check("postgres")
def check_postgres(host: str, gw: dict | None, data: dict | None) -> Result | None:
    problems, seen = [], []
    if gw is not None and "postgres" in _need(gw, dict, "gateway evidence"):
        ev = _need(gw["postgres"], dict, "PostgreSQL evidence")
        if not _pg_refuses(ev.get("without_auth")):
            problems.append(f"{ev.get('target')} without password: {ev.get('without_auth')}")
        if ev.get("with_auth") != "ok":
            problems.append(f"{ev.get('target')} with the password: {ev.get('with_auth')}")
        seen.append(f"{ev.get('target')} asks for a password, accepts the vault's")
    if data is not None and "pg_isready" in _need(data, dict, "data host evidence"):
        ready = _need(data["pg_isready"], dict, "pg_isready")
        if _need(ready.get("rc"), int, "pg_isready: exit status") != 0:
            problems.append(f"pg_isready: {ready.get('output')}")
        seen.append("pg_isready ok")
    if not seen and not problems:
        return None
    return _result(host, "postgres", problems, "; ".join(seen),
                   "redeploy (pg_hba: scram-sha-256 for gateways only; the role's verifier from the vault); "
                   "down: systemctl status postgresql")


# ---- supply chain ---------------------------------------------------------------------------------------
def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# PEP 508 marker variables every gatekit host shares (Debian, CPython on Linux); the Python version and the
# machine come from the host's venv (marker_environment).
_LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
          "platform_python_implementation": "CPython"}


def marker_environment(venv: dict | None) -> dict[str, str]:
    """The marker variables of the host whose venv evidence (onhost/probe.py venv) this is: its Python version and
    machine where the probe read them, else only what every gatekit host shares."""
    env = dict(_LINUX)
    venv = venv if isinstance(venv, dict) else {}  # malformed evidence: the supply-chain check itself fails on it
    version = venv.get("python_version")
    if isinstance(version, str) and re.fullmatch(r"\d+\.\d+(\.\d+)?", version):
        env["python_full_version"] = version
        env["python_version"] = ".".join(version.split(".")[:2])
    machine = venv.get("machine")
    if isinstance(machine, str) and machine:
        env["platform_machine"] = machine
    return env


def lock_pins(lock_text: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """{normalized name: version} of a hash lock's `name==version` lines that install in `environment` (marker
    variables: marker_environment): the locks cover Python 3.11 and 3.13, and their environment markers leave out
    what a host does not install (a Windows-only package, a backport older Pythons need)."""
    from packaging.markers import Marker  # a pyinfra dependency; only the supply-chain check needs it

    env = {**_LINUX, **(environment or {})}
    pins = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)\s*(?:;([^\\]*))?", line)
        if m and (not (m.group(4) or "").strip() or Marker(m.group(4).strip()).evaluate(env)):
            pins[normalize(m.group(1))] = m.group(3)
    return pins


KIT_UNITS = ("litellm@*.service", "gatekit-*.service", "litellm-migrate.service")


def _paths(venv: dict, key: str) -> list[str]:
    paths = _need(venv.get(key, []), list, f"venv: {key}")
    return [_need(p, str, f"venv: {key}: {_clip(p, 40)}") for p in paths]


@_check("supply_chain")
def check_supply_chain(host: str, venv: dict, venv_units: list[dict], pins: dict[str, str],
                       extra_allowed: tuple[str, ...] = ()) -> Result:
    if not _need(venv, dict, "venv evidence").get("present"):
        return Result(host, "supply_chain", FAIL, f"no venv at {venv.get('path')}", "redeploy (it builds the venv)")
    problems = []
    dists = {normalize(_need(k, str, "venv: dists")): v
             for k, v in _need(venv.get("dists", {}), dict, "venv: dists").items()}
    for name, version in sorted(dists.items()):
        if name in extra_allowed:
            continue
        if name not in pins:
            problems.append(f"{name} {version} is not in the lock")
        elif pins[name] != version:
            problems.append(f"{name} {version} (lock: {pins[name]})")
    for name in sorted(set(pins) - set(dists)):
        problems.append(f"{name} {pins[name]} (locked) not installed")
    for what, key in (("modified", "modified"), ("missing", "missing")):
        for path in _paths(venv, key):
            problems.append(f"{what}: {path}")
    for path in _paths(venv, "unrecorded_pth"):
        problems.append(f".pth in no RECORD: {path}")
    for path in _paths(venv, "unrecorded"):
        if not path.endswith(".pth"):
            problems.append(f"file in no RECORD: {path}")
    for u in _need(venv_units, list, "processes and units running from the venv"):
        unit = _need(_need(u, dict, "a unit running from the venv").get("unit"), str, "a unit running from the venv")
        if not any(fnmatch.fnmatch(unit, pat) for pat in KIT_UNITS):
            problems.append(f"unit {u['unit']} runs from the venv ({u['command']})")
    return _result(host, "supply_chain", problems,
                   f"{venv.get('files')} files of {len(dists)} locked distributions match their RECORDs; "
                   "no unknown .pth or unit", "treat the host as compromised: find who wrote it (the paths above), "
                   "rebuild the venv (rm -rf the venv's target and redeploy) and remove unknown units")


# ---- drift ----------------------------------------------------------------------------------------------
def drift_by_host(dry_plan: dict) -> dict[str, list[str]]:
    """{host name: operations a deploy would change} from `pyinfra --dry --json` (conditional ones excluded:
    they run only if an earlier operation changes something). pyinfra keys operations by their place in the
    deploy, so one entry can carry the names of several hosts' operations (the nth file of one loop): all
    are given, joined by " / "."""
    out: dict[str, list[str]] = {}
    for op in dry_plan.get("plan") or []:
        label = " / ".join(op.get("names") or [op.get("name", "?")])
        for name in op.get("hosts_with_change") or []:
            out.setdefault(name, []).append(label)
    return out


@_check("monitoring")
def check_monitoring(host: str, data: dict) -> Result | None:
    """A monitoring host: Prometheus ready with gatekit's alert rules, and every target that should answer
    answering. Firing alerts are evidence, not a failure: the checks above judge what they point at."""
    ev = _need(data, dict, "data host evidence").get("prometheus")
    if ev is None:
        return None
    _need(ev, dict, "Prometheus evidence")
    fix = ("systemctl status prometheus on the monitoring host; for a target down: its exporter's or instance's "
           "unit on that host (systemctl status prometheus-node-exporter, litellm@PORT), then the private network")
    if "error" in ev:
        return Result(host, "monitoring", FAIL, f"Prometheus on 127.0.0.1:{ev.get('port')}: {ev['error']}", fix)
    problems = []
    if not ev.get("ready"):
        problems.append("Prometheus is not ready")
    if not ev.get("alert_rules"):
        problems.append("no alert rule loaded (promtool check config, then a reload)")
    down = [_need(t, dict, "Prometheus: a target down") for t in _need(ev.get("down", []), list, "Prometheus: down")]
    problems += [f"target down: {t.get('job')} on {t.get('host')}" + (f" port {t['port']}" if t.get("port") else "")
                 for t in down]
    firing = [_need(a, str, "Prometheus: a firing alert") for a in _need(ev.get("firing") or [], list, "Prometheus: firing")]
    return _result(host, "monitoring", problems,
                   f"Prometheus ready, {ev.get('alert_rules')} alert rules, {ev.get('targets')} targets, every live one up"
                   + (f"; firing: {', '.join(firing)}" if firing else "; no alert firing"), fix)


@_check("switch")
def check_switch(host: str, gw: dict) -> Result:
    """A blue/green switch (rotation or deploy change) whose journal is on the host: running now, or cut off."""
    journal = _need(gw, dict, "gateway evidence").get("journal")
    if journal is None:
        return Result(host, "switch", OK, "no switch running or interrupted")
    try:
        j = json.loads(_need(journal, str, "journal"))
    except ValueError:
        j = None
    j = j if isinstance(j, dict) else {}
    what = ", ".join(str(x)[:80] for x in [*j.get("secrets", []), *j.get("files", [])][:8]) or "unreadable journal"
    return Result(host, "switch", FAIL,
                  f"a {str(j.get('change', 'rotation'))[:20]} switch ({what}) from litellm@{j.get('old_ports')} to "
                  f"litellm@{j.get('new_ports')} is running or was cut off",
                  "if no deploy or rotation is running: re-run deploy.py (or rotate_keys.py); gatekit-rotate finishes "
                  "the switch or rolls it back first")


def check_drift(host: str, changes: list[str] | None, error: str | None = None) -> Result:
    if error:
        return Result(host, "drift", FAIL, error, "run pyinfra INVENTORY deploy.py --dry to see why")
    return _result(host, "drift", [f"a deploy would: {c}" for c in changes or []],
                   "a deploy would change nothing",
                   "the host differs from what the kit would deploy (a hand edit, or the kit/spec changed since the last "
                   "deploy): review the operations above, then redeploy")


# ---- the whole host -------------------------------------------------------------------------------------
def skipped(host: str, check: str, why: str) -> Result:
    return Result(host, check, SKIPPED, why)


def results_json(results: list[Result]) -> str:
    return json.dumps({"ok": all(r.status != FAIL for r in results), "results": [r.as_dict() for r in results]}, indent=1)
