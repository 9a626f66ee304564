"""gatekit doctor's on-host collector: reads one host and prints what it found as one JSON document.

Sent by the controller (gatekit/doctor_run.py) as source and run as root by the system's `python3 -I`, so it
works on hosts without gatekit's lib directory (data hosts) and imports nothing from LiteLLM's venv (a
compromised dependency there must never run as root). Python 3.11 standard library only.

Read-only: it writes no file, starts or stops nothing. Secrets never leave the host: a key a process
holds is reported as its fingerprint (fingerprint() below), and the Redis/PostgreSQL passwords are read from
a live instance's runtime credentials only to log in from here.

It is also where the facts shared by the controller and every on-host program are defined, once: the key
fingerprint, the litellm.env parser, the Redis client, LiteLLM's Redis key names and the unit-active metric's
name. They live here because this file is sent alone (doctor_run.py ships only it), so it can import no
sibling; rotate.py, instance.py and unitstats.py import it, and the controller imports gatekit.onhost.probe.

Parameters: one JSON object (base64) in argv[1], built by gatekit.doctor_run.probe_params: paths, ports and
names (never a secret).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time


def fingerprint(value: str) -> str:
    """Names a key without revealing it: the credential's .fp file, the deployment ids in LiteLLM's config,
    live.json, doctor's and unitstats' view of what a process holds (the lab's fake provider writes it out)."""
    return hashlib.sha256(value.encode()).hexdigest()[:16]


# The recording rule (gatekit/alerts.py) that is 1 per (host, port) whose litellm@PORT unit systemd runs.
LITELLM_UNIT_ACTIVE = "gatekit:litellm_unit_active"


def run(*cmd: str, timeout: float = 60) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
        return p.returncode, p.stdout, p.stderr
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, "", f"{cmd[0]}: timed out after {timeout:.0f}s"


def read(path: str, binary: bool = False):
    try:
        with open(path, "rb" if binary else "r", **({} if binary else {"errors": "replace"})) as fh:
            return fh.read()
    except OSError:
        return None


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


# ---- processes ----------------------------------------------------------------------------------------
BOOT = next((int(line.split()[1]) for line in (read("/proc/stat") or "").splitlines() if line.startswith("btime ")), 0)
TICKS = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int, proc: str = "/proc") -> tuple[int, float] | None:
    """(parent pid, start time as epoch seconds)."""
    text = read(f"{proc}/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), BOOT + int(fields[19]) / TICKS


def all_parents(proc: str = "/proc") -> dict[int, int]:
    out = {}
    for d in os.listdir(proc):
        if d.isdigit():
            st = proc_stat(int(d), proc)
            if st:
                out[int(d)] = st[0]
    return out


def descendants(pid: int, parents: dict[int, int]) -> list[int]:
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def environ(pid: int, proc: str = "/proc") -> dict[str, str]:
    raw = read(f"{proc}/{pid}/environ", binary=True) or b""
    out = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            out[k.decode(errors="replace")] = v.decode(errors="replace")
    return out


def unit_props(unit: str) -> dict[str, str]:
    names = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result", "MemoryMax", "MemoryHigh", "MemoryCurrent",
             "Restart", "ExecMainStartTimestamp", "LoadState", "InvocationID", "ActiveEnterTimestampMonotonic")
    rc, out, _ = run("systemctl", "show", unit, *(f"--property={n}" for n in names))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def oom_kills(unit: str) -> int:
    # systemd logs this line for the unit whenever the kernel's OOM killer hit one of its processes (this boot).
    rc, out, _ = run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit, "--grep", "OOM killer|oom-kill")
    return len([ln for ln in out.splitlines() if ln.strip() and not ln.startswith("-- ")])


def exposure(unit: str) -> float | None:
    rc, out, err = run("systemd-analyze", "security", "--no-pager", unit)
    m = re.search(r"Overall exposure level for \S+:\s*([0-9.]+)", out + err)
    return float(m.group(1)) if m else None


def instances(p: dict) -> dict:
    """Every litellm@PORT unit systemd knows (the kit's ports and any other), with what its processes hold."""
    rc, out, _ = run("systemctl", "list-units", "--all", "--plain", "--no-legend", "litellm@*.service")
    units = {line.split()[0] for line in out.splitlines() if line.strip()}
    units |= {f"litellm@{port}.service" for port in p["ports"]}
    parents = all_parents()
    result = {}
    for unit in sorted(units):
        props = unit_props(unit)
        if props.get("LoadState") == "not-found":
            continue
        entry = {"unit": unit, "props": props, "processes": [], "runtime_credentials": {}, "oom_kills": oom_kills(unit)}
        main = int(props.get("MainPID") or 0)
        if props.get("ActiveState") == "active" and main:
            for pid in descendants(main, parents):
                st = proc_stat(pid)
                if st is None:
                    continue
                env = environ(pid)
                entry["processes"].append({
                    "pid": pid, "ppid": st[0], "start": st[1],
                    # which secret variables this process holds, by fingerprint; absent = not in its environ
                    # (a process that set them after exec, like the single-worker launcher, shows none here)
                    "env": {var: fingerprint(env[var]) for var in p["secret_env"].values() if var in env},
                })
            # What systemd decrypted for the unit at its start: what the launcher read into its environment.
            cred_dir = os.path.join(p["credentials_runtime_dir"], unit)
            for name in p["secret_env"]:
                value = read(os.path.join(cred_dir, name))
                entry["runtime_credentials"][name] = fingerprint(value.rstrip("\n")) if value is not None else None
            entry["exposure"] = exposure(unit)
        result[unit] = entry
    return result


# ---- nginx, TLS ---------------------------------------------------------------------------------------
def nginx() -> dict:
    rc_t, _, err_t = run("nginx", "-t")
    rc_T, dump, _ = run("nginx", "-T")
    certs = {}
    for path in sorted(set(re.findall(r"^\s*ssl_certificate\s+(\S+?);", dump, re.M))):
        rc, out, err = run("openssl", "x509", "-noout", "-enddate", "-in", path)
        certs[path] = {"not_after": out.strip().split("=", 1)[1] if rc == 0 and "=" in out else None,
                       "error": None if rc == 0 else (err.strip().splitlines() or ["unreadable"])[-1][:200]}
    return {"test_ok": rc_t == 0, "test_output": err_t.strip()[-600:], "dump": dump if rc_T == 0 else "", "certs": certs}


# ---- the venv against its distributions' RECORDs ------------------------------------------------------
def venv(p: dict) -> dict:
    """Every file of the live venv checked against the RECORD of the distribution that installed it."""
    root = os.path.realpath(p["venv"])
    if not os.path.isdir(root):
        return {"present": False, "path": p["venv"]}
    site = glob.glob(os.path.join(root, "lib", "python3*", "site-packages"))
    recorded, dists, modified, missing, unverifiable = {}, {}, [], [], 0
    for sp in site:
        for dist_info in glob.glob(os.path.join(sp, "*.dist-info")):
            meta = read(os.path.join(dist_info, "METADATA")) or ""
            name = re.search(r"^Name:\s*(.+)$", meta, re.M)
            version = re.search(r"^Version:\s*(.+)$", meta, re.M)
            key = name.group(1).strip() if name else os.path.basename(dist_info)
            dists[key] = version.group(1).strip() if version else "?"
            for line in (read(os.path.join(dist_info, "RECORD")) or "").splitlines():
                parts = line.rsplit(",", 2)
                if len(parts) != 3 or not parts[0]:
                    continue
                path = os.path.normpath(os.path.join(sp, parts[0]))
                recorded[path] = parts[1]
    for path, digest in recorded.items():
        if not digest.startswith("sha256="):
            unverifiable += 1  # RECORD itself, installer metadata: no hash by definition
            continue
        data = read(path, binary=True)
        if data is None:
            missing.append(path)
            continue
        got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if got != digest[len("sha256="):]:
            modified.append(path)
    unrecorded, pth, files = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            path = os.path.join(dirpath, f)
            files += 1
            if path in recorded:
                continue
            rel = os.path.relpath(path, root)
            if f.endswith(".pth"):
                pth.append(rel)
            # Bytecode compiled at install (uv --compile-bytecode) and the venv's own scaffolding are in no RECORD.
            # A .pyc is accepted only beside a recorded source (its content is not verified: see the README).
            if "/__pycache__/" in path and f.endswith(".pyc") and \
                    os.path.join(os.path.dirname(dirpath), f.split(".")[0] + ".py") in recorded:
                continue
            if rel in p["venv_scaffolding"] or \
                    rel.startswith("bin/activate") or re.fullmatch(r"bin/python3?(\.\d+)?", rel):
                continue
            unrecorded.append(rel)
    rel = lambda paths: sorted(os.path.relpath(x, root) for x in paths)  # noqa: E731
    # What the lock's environment markers are evaluated with (gatekit/doctor.py marker_environment).
    cfg = dict(ln.split("=", 1) for ln in (read(os.path.join(root, "pyvenv.cfg")) or "").splitlines() if "=" in ln)
    cfg = {k.strip(): v.strip() for k, v in cfg.items()}
    return {"present": True, "path": p["venv"], "target": root, "dists": dists, "files": files,
            "python_version": cfg.get("version_info") or cfg.get("version", ""), "machine": os.uname().machine,
            "modified": rel(modified), "missing": rel(missing), "unrecorded": sorted(unrecorded),
            "unrecorded_pth": sorted(pth), "unverifiable": unverifiable}


def venv_units(p: dict) -> list[dict]:
    """Processes running something from LiteLLM's venvs, with the unit they belong to."""
    roots = [os.path.realpath(p["venv"]), p["venv"], p["venvs_dir"]]
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        cmd = (read(f"/proc/{d}/cmdline", binary=True) or b"").split(b"\0")
        exe = os.path.realpath(f"/proc/{d}/exe") if os.path.exists(f"/proc/{d}/exe") else ""
        words = [w.decode(errors="replace") for w in cmd[:3] if w] + [exe]
        if not any(w.startswith(r + "/") for w in words for r in roots):
            continue
        cgroup = read(f"/proc/{d}/cgroup") or ""
        unit = next((seg for line in cgroup.splitlines() for seg in reversed(line.split(":")[-1].split("/"))
                     if seg.endswith((".service", ".scope"))), "?")
        out.append({"pid": int(d), "unit": unit, "command": " ".join(w for w in words[:2])[:160]})
    # Unit files that would run something from the venv later (a timer, a boot-time unit) count too.
    for path in glob.glob("/etc/systemd/system/*.service") + glob.glob("/run/systemd/system/*.service") \
            + glob.glob("/lib/systemd/system/*.service"):
        text = read(path) or ""
        if any(re.search(r"^Exec\w*=.*" + re.escape(r) + "/", text, re.M) for r in roots):
            out.append({"pid": 0, "unit": os.path.basename(path), "command": f"unit file {path}"})
    return out


# ---- Redis: the client (rotate.py purges with it), LiteLLM's key names, the check ---------------------------
class RedisError(RuntimeError):
    """An error reply ("-WRONGPASS ..."): the server's words, never the arguments sent (a password)."""

    def __init__(self, reply: str):
        super().__init__(f"redis: {reply[:200]}")
        self.reply = reply


class Redis:
    """The few Redis commands gatekit needs (AUTH, SELECT, PING, SCAN, DEL) over RESP, in the standard library:
    the programs using it run as root, so nothing from LiteLLM's venv (a compromised dependency there) may run
    in them. Bulk strings come back as bytes, status replies as str; an error reply raises RedisError."""

    def __init__(self, host: str, port: int, db: int | None = None, password: str | None = None, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = self.sock.makefile("rb")
        try:
            if password:
                self.call("AUTH", password)
            if db is not None:
                self.call("SELECT", str(db))
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.buf.close()
        self.sock.close()

    def call(self, *args: str | bytes):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.buf.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis: connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.buf.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise ValueError(f"redis: unexpected reply {line[:40]!r}")

    def scan_iter(self, match: str, count: int = 500):
        cursor = "0"
        while True:
            cursor, keys = self.call("SCAN", cursor, "MATCH", match, "COUNT", str(count))
            cursor = cursor.decode()
            yield from keys
            if cursor == "0":
                return

    def delete(self, *keys) -> int:
        return self.call("DEL", *keys)


# LiteLLM's router state per deployment in Redis, as LiteLLM 1.106.2 (requirements/litellm.lock) names it. <id> is
# the deployment's model_info.id (gatekit.render.deployment_id: "<public model name>--<index>--<key fingerprint>");
# a public name may hold ':' and '/', so a key is never split on ':' to find its id: the id must fill its place in
# one of these shapes exactly.
#   deployment:<id>:cooldown                  router_utils/cooldown_cache.py (CooldownCache.get_cooldown_cache_key)
#   <id>:fails, <id>:successes                router_utils/router_callbacks/track_deployment_metrics.py
#   [global_router:]<id>:<model>:<kind>:<HH-MM>   types/router.py RouterCacheEnum (global_router:, kind tpm, rpm,
#                                             itpm, otpm) and router_strategy/lowest_tpm_rpm_v2.py (tpm, rpm)
#   <id>:<tpm|rpm>:<HH-MM>                    router_strategy/lowest_tpm_rpm.py
# <model> is the deployment's litellm_params.model, "<provider>/<model>" as gatekit renders it (a provider name is
# [a-z][a-z0-9_]*, spec.py). Never router state: deployment_spend:<id>:<period> and deployment_budget_start_time:<id>
# (router_strategy/budget_limiter.py) are money spent, kept across a rotation.
COOLDOWN_PREFIX, COOLDOWN_SUFFIX = "deployment:", ":cooldown"
COUNTER_SUFFIXES = (":fails", ":successes")
USAGE_PREFIX = "global_router:"
_USAGE_TAIL = re.compile(r"(?:[a-z][a-z0-9_]*/.*:)?(?:tpm|rpm|itpm|otpm):[^:]+", re.S)


def cooldown_key(deployment_id: str) -> str:
    return f"{COOLDOWN_PREFIX}{deployment_id}{COOLDOWN_SUFFIX}"


def cooldown_deployment(key: str) -> str | None:
    """The whole deployment id a cooldown key names, whatever ':' it holds; None for any other key."""
    if key.startswith(COOLDOWN_PREFIX) and key.endswith(COOLDOWN_SUFFIX) \
            and len(key) > len(COOLDOWN_PREFIX) + len(COOLDOWN_SUFFIX):
        return key[len(COOLDOWN_PREFIX):-len(COOLDOWN_SUFFIX)]
    return None


def router_key_deployment(key: str, ids) -> str | None:
    """Which of `ids` a key of LiteLLM's router state (cooldown, failure and success counters, usage counters)
    belongs to; None for the state of any other deployment, spend and budget counters, and every other key.
    When two of `ids` fit one usage key (one is the other plus ':<provider>/...'), the longer one owns it."""
    ids = set(ids)
    dep = cooldown_deployment(key)
    if dep in ids:
        return dep
    for suffix in COUNTER_SUFFIXES:
        if key.endswith(suffix) and key[:-len(suffix)] in ids:
            return key[:-len(suffix)]
    rests = [key, key[len(USAGE_PREFIX):]] if key.startswith(USAGE_PREFIX) else [key]
    for dep in sorted(ids, key=len, reverse=True):
        if any(r.startswith(dep + ":") and _USAGE_TAIL.fullmatch(r, len(dep) + 1) for r in rests):
            return dep
    return None


def scan_literal(text: str) -> str:
    """`text` as a SCAN MATCH pattern that matches only itself (glob characters escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _answer(r: Redis, *args: str) -> str:
    """A reply as doctor reads it: the status ("PONG", "OK"), or "ERR " and the server's error."""
    try:
        reply = r.call(*args)
    except RedisError as exc:
        return f"ERR {exc.reply}"[:80]
    return (reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply))[:80]


def redis_check(host: str, port: int, db: int, password: str | None, timeout: float = 5.0) -> dict:
    out = {"target": f"{host}:{port}"}
    try:
        with Redis(host, port, timeout=timeout) as r:
            out["without_auth"] = _answer(r, "PING")
        if password is None:
            return out
        with Redis(host, port, timeout=timeout) as r:
            auth = _answer(r, "AUTH", password)
            out["with_auth"] = _answer(r, "PING") if auth == "OK" else auth
            if auth == "OK":
                r.call("SELECT", str(db))
                cooling = [k.decode(errors="replace") for k in r.scan_iter(cooldown_key("*"))]
                out["cooldowns"] = sorted(cooling)[:50]
    except (OSError, ValueError, RedisError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def _pg_msg(sock, kind: bytes, body: bytes):
    sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)


def _pg_read(sock) -> tuple[bytes, bytes]:
    head = b""
    while len(head) < 5:
        chunk = sock.recv(5 - len(head))
        if not chunk:
            raise ConnectionError("closed by the server")
        head += chunk
    n = struct.unpack("!I", head[1:5])[0] - 4
    body = b""
    while len(body) < n:
        chunk = sock.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed by the server")
        body += chunk
    return head[:1], body


def _pg_error(body: bytes) -> str:
    fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
    return f"{fields.get(b'C', '')} {fields.get(b'M', '')}".strip()[:200]


def postgres_login(host: str, port: int, user: str, db: str, password: str | None, timeout: float = 5.0) -> str:
    """'ok' when the server let us in; 'password requested' when it asks for one we do not give; else why not.
    SCRAM-SHA-256 (RFC 5802/7677) in the standard library: the password never travels."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        s.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        kind, body = _pg_read(s)
        if kind == b"E":
            return "refused: " + _pg_error(body)
        code = struct.unpack("!I", body[:4])[0]
        if code == 0:
            return "ok (no password asked)"
        if password is None:
            return "password requested" + (" (scram-sha-256)" if code == 10 else f" (method {code})")
        if code != 10:
            return f"unsupported authentication method {code}"
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        first = b"SCRAM-SHA-256\0" + struct.pack("!I", len(first_bare) + 3) + b"n,," + first_bare.encode()
        _pg_msg(s, b"p", first)
        kind, body = _pg_read(s)
        if kind == b"E":
            return "refused: " + _pg_error(body)
        server_first = body[4:].decode()
        attrs = dict(a.split("=", 1) for a in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(hashlib.sha256(client_key).digest(), message, hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
        _pg_msg(s, b"p", f"{without_proof},p={proof}".encode())
        while True:
            kind, body = _pg_read(s)
            if kind == b"E":
                return "refused: " + _pg_error(body)
            if kind == b"R" and struct.unpack("!I", body[:4])[0] == 0:
                _pg_msg(s, b"X", b"")
                return "ok"


def postgres_check(conninfo: str, password: str | None, timeout: float = 5.0) -> dict:
    info = dict(item.split("=", 1) for item in conninfo.split())
    out = {"target": f"{info.get('host')}:{info.get('port')}"}
    for label, pw in (("without_auth", None), ("with_auth", password)):
        if label == "with_auth" and password is None:
            continue
        try:
            out[label] = postgres_login(info["host"], int(info["port"]), info["user"], info["dbname"], pw, timeout)
        except (OSError, ValueError, KeyError) as exc:
            out[label] = f"error: {type(exc).__name__}: {exc}"[:200]
    return out


def parse_env(text: str) -> dict[str, str]:
    """litellm.env (templates/litellm/litellm.env.j2: NAME=value lines, # comments) as a dict."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def env_file(path: str) -> dict[str, str]:
    """parse_env of the file; {} when it cannot be read (doctor reports what is missing elsewhere)."""
    return parse_env(read(path) or "")


def live_credential(p: dict, insts: dict, name: str) -> str | None:
    """A secret as a running instance received it (root reads the unit's runtime credentials)."""
    for unit, entry in insts.items():
        if entry["props"].get("ActiveState") == "active":
            value = read(os.path.join(p["credentials_runtime_dir"], unit, name))
            if value is not None:
                return value.rstrip("\n")
    return None


# ---- the whole host -----------------------------------------------------------------------------------
def gateway(p: dict) -> dict:
    insts = instances(p)
    env = env_file(p["env_file"])
    out = {
        "instances": insts,
        "credential_files": {name: {"mtime": mtime(p["creds_dir"] + f"/{name}.cred")} for name in p["secret_env"]},
        "live_json": read(p["live_file"]),
        "journal": read(p["journal_file"]),
        "nginx": nginx(),
        "config": read(p["config"]),
        "venv": venv(p),
        "venv_units": venv_units(p),
    }
    if "REDIS_HOST" in env:
        out["redis"] = redis_check(env["REDIS_HOST"], int(env["REDIS_PORT"]), int(env.get("REDIS_DB", 0)),
                                   live_credential(p, insts, p["redis_secret"]))
    if "GK_USAGE_PG" in env:
        out["postgres"] = postgres_check(env["GK_USAGE_PG"], live_credential(p, insts, p["postgres_secret"]))
    return out


# ---- Prometheus (monitoring hosts) --------------------------------------------------------------------
# Targets that should answer and do not: every job but LiteLLM's, and LiteLLM instances whose unit runs (the
# standby set of the blue/green pair is stopped by design). The same join as the LiteLLMInstanceDown alert.
DOWN_QUERIES = ('up{job!="litellm"} == 0',
                f'up{{job="litellm"}} == 0 and on (host, port) ({LITELLM_UNIT_ACTIVE} == 1)')


def prometheus_get(port: int, path: str):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        body = r.read().decode(errors="replace")
    return json.loads(body) if path.startswith("/api/") else body


def prometheus_check(port: int) -> dict:
    """Ready, gatekit's rules loaded, targets down, alerts firing: what Prometheus itself says (read-only API)."""
    import urllib.parse

    out: dict = {"port": port}
    try:
        out["ready"] = "Ready" in prometheus_get(port, "/-/ready")
        groups = prometheus_get(port, "/api/v1/rules?type=alert")["data"]["groups"]
        out["alert_rules"] = sum(len(g["rules"]) for g in groups)
        out["targets"] = len(prometheus_get(port, "/api/v1/targets?state=active")["data"]["activeTargets"])
        down = []
        for q in DOWN_QUERIES:
            result = prometheus_get(port, "/api/v1/query?query=" + urllib.parse.quote(q))["data"]["result"]
            down += [{k: r["metric"].get(k) for k in ("job", "host", "port", "instance")} for r in result]
        out["down"] = down
        out["firing"] = sorted({a["labels"]["alertname"] for a in prometheus_get(port, "/api/v1/alerts")["data"]["alerts"]
                                if a["state"] == "firing"})
    except (OSError, ValueError, KeyError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


def data_host(p: dict) -> dict:
    out = {}
    if "prometheus_port" in p:
        out["prometheus"] = prometheus_check(p["prometheus_port"])
    if "redis_port" in p:
        out["redis_local"] = redis_check("127.0.0.1", p["redis_port"], 0, None)
    if "postgres_port" in p:
        rc, o, e = run("pg_isready", "-h", "127.0.0.1", "-p", str(p["postgres_port"]))
        out["pg_isready"] = {"rc": rc, "output": (o + e).strip()[:200]}
    return out


def main() -> int:
    p = json.loads(base64.b64decode(sys.argv[1]))
    t0 = time.monotonic()
    out = {"host": socket.gethostname(), "now": time.time()}
    if p.get("gateway"):
        out["gateway"] = gateway(p)
    out["data"] = data_host(p)
    out["seconds"] = round(time.monotonic() - t0, 2)
    print("GATEKIT-PROBE " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
