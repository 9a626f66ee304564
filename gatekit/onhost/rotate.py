"""gatekit-rotate: blue/green provider-key rotation on ONE gateway host. Installed by the deploy in
{litellm_home}/lib/gatekit/ beside layout.py, instance.py and the host's layout.json (every path, unit and
port it touches comes from there), and run (as root, inside a transient systemd unit so a dropped SSH
session cannot cut it in half) by rotate_keys.py. Python standard library only, run by the system's python3 with
no site directories: it runs as root, so nothing from LiteLLM's venv (where a compromised dependency could sit)
may execute in it.

Why not reload: LiteLLM has no working in-process config reload, so fresh processes must start from the
new credential, be proven by a canary, and only then receive traffic.

The layout's litellm_ports are two sets of instances, blue and green (Layout.instance_sets). Every instance
of the live set (OLD) serves behind nginx at once; the rotation brings up the other set (NEW).

Steps (each recorded in a journal so an interrupted run is recovered on the next run):
  swap-creds   the staged NAME.cred.next and config.yaml.next become live (previous kept as .prev); the
               config's deployment ids carry the new key's fingerprint, so nothing the new key does
               in the shared Redis (a failing canary's cooldown) touches the old key's deployments
  start        every litellm@NEW starts from it (the live instances keep the old key in memory)
  ready        /health/readiness of every NEW instance
  canary       a 1-token completion per rotated deployment, sent to each NEW instance directly, answered
               by that deployment (x-litellm-model-id), fallbacks and retries disabled
  switch       nginx upstream -> the NEW set (nginx -t, graceful reload), done only once every nginx worker
               from before the reload has stopped taking connections (until then one still sends requests
               to OLD: seen, the canary through nginx answered by an old instance after the reload returned)
  purge        Redis keys of the old key's deployments in LiteLLM's DB (cooldowns, counters); never FLUSH*
  canary-nginx the same canary through nginx over TLS
  drain        the OLD set stops gracefully (in-flight requests finish), NEW enabled at boot instead of OLD
  record       /var/lib/gatekit/live.json: ports, secret versions, fingerprints, time
Any failure: upstream back to OLD, NEW stopped, previous credentials restored, exit 1 naming the step;
an OLD instance that systemd started again after the swap (a crash, a reboot) started from the refused key,
so it is restarted from the restored one, one at a time (their systemd InvocationIDs are in the journal).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

if __package__:
    from . import instance, probe
    from .layout import Layout
else:  # on the host: uploaded beside this program
    import instance
    import probe
    from layout import Layout

LAYOUT = Layout()  # main() reads the host's own from layout.json beside this program
KEEP_PREFIXES = ("deployment_spend:", "deployment_budget_start_time:")
STEPS = ["swap-creds", "start", "ready", "canary", "switch", "purge", "canary-nginx", "drain", "record"]


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"step {step}: {reason}")
        self.step = step


def log(msg: str, err: bool = False):
    # The controller may be gone (killed pyinfra, dropped SSH): losing output must not stop the rotation.
    try:
        print(f"gatekit-rotate: {msg}", file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        pass


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc


def write_atomic(path: str, text: str, mode: int = 0o644):
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


# ---- nginx upstream --------------------------------------------------------------------------------
SERVER_LINE = re.compile(r"^([ \t]*server[ \t]+\S+:)(\d+)\b(.*(?:\n|\Z))", re.M)


def upstream_ports() -> list[int]:
    with open(LAYOUT.nginx_upstream) as fh:
        ports = [int(m.group(2)) for m in SERVER_LINE.finditer(fh.read())]
    if not ports:
        raise RuntimeError(f"{LAYOUT.nginx_upstream}: no upstream server line")
    return ports


def upstream_text(text: str, ports) -> str:
    """The upstream file with one server line per port, shaped like its first one (as the deploy renders it)."""
    first = SERVER_LINE.search(text)
    if not first:
        raise RuntimeError(f"{LAYOUT.nginx_upstream}: no upstream server line")
    end = first.group(3) if first.group(3).endswith("\n") else first.group(3) + "\n"
    lines = "".join(f"{first.group(1)}{p}{end}" for p in ports)
    rest = SERVER_LINE.sub("", text)
    return rest[:first.start()] + lines + rest[first.start():]


def set_upstream(ports):
    """One atomic write (the file is never missing, even when cut off here), then `nginx -t` and a graceful
    reload; a refused file is put back as it was."""
    with open(LAYOUT.nginx_upstream) as fh:
        text = fh.read()
    new = upstream_text(text, ports)
    if new == text:
        return
    write_atomic(LAYOUT.nginx_upstream, new)
    test = run("nginx", "-t", "-q", check=False)
    if test.returncode != 0:
        write_atomic(LAYOUT.nginx_upstream, text)
        raise RuntimeError(f"nginx -t refused the new upstream: {test.stderr.strip()[-300:]}")
    before = nginx_workers()
    run("systemctl", "reload", LAYOUT.nginx_unit)  # graceful: old workers finish their requests
    t0 = time.monotonic()
    wait_switched(before, SWITCH_TIMEOUT)
    log(f"nginx on {named(ports)}: its workers from before the reload took connections for {time.monotonic() - t0:.2f} s more")


# ---- nginx's workers: when a reload has taken effect ------------------------------------------------
SWITCH_TIMEOUT = 30.0
RETIRING = "shutting down"  # nginx's title for a worker told to stop: it has closed its listening sockets


def nginx_workers(proc: str = "/proc") -> dict[int, str]:
    """{pid: title} of nginx's worker processes (children of its master, whose titles name them)."""
    master = probe.unit_props(LAYOUT.nginx_unit).get("MainPID", "0")
    if not master.isdigit() or master == "0":
        return {}
    workers = {}
    for pid, ppid in probe.all_parents(proc).items():
        if ppid != int(master):
            continue
        title = (probe.read(f"{proc}/{pid}/cmdline", binary=True) or b"").replace(b"\0", b" ").decode("utf-8", "replace").strip()
        if "worker process" in title:
            workers[pid] = title
    return workers


def switch_pending(before: dict[int, str], now: dict[int, str]) -> str | None:
    """Why a reload has not taken effect yet, or None once it has: every worker that ran before it is gone or
    retiring (it takes no new connection, so no request can reach the set it was configured with), and a
    worker started after it serves."""
    serving = [pid for pid, title in now.items() if pid in before and RETIRING not in title]
    if serving:
        return f"nginx workers {', '.join(map(str, sorted(serving)))} from before the reload still take connections"
    if not [pid for pid, title in now.items() if pid not in before and RETIRING not in title]:
        return "no nginx worker started by the reload"
    return None


def wait_switched(before: dict[int, str], timeout: float):
    """`systemctl reload nginx` returns once nginx's master has the signal; its old workers take connections
    (with the old upstream) until the master has started new ones and told the old ones to stop. The switch
    is done only then: the old set must not be stopped before (a request there would find it gone: 502)."""
    deadline = time.monotonic() + timeout
    while True:
        pending = switch_pending(before, nginx_workers())
        if pending is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx's reload did not take effect within {timeout:.0f} s: {pending}")
        time.sleep(0.05)


# ---- credentials -----------------------------------------------------------------------------------
def staged_files(names: list[str]) -> list[str]:
    return [path for n in names for path in (LAYOUT.cred(n), LAYOUT.cred_fingerprint(n))]


def swap_creds(names: list[str]):
    """NAME.cred/.fp (and config.yaml when staged) <- their .next; the previous ones kept as .prev.
    Renames, not copies: owners and modes stay exactly as the deploy set them."""
    files = staged_files(names)
    missing = [f + ".next" for f in files if not os.path.exists(f + ".next")]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing (staging incomplete); nothing swapped")
    if os.path.exists(LAYOUT.config + ".next"):
        files.append(LAYOUT.config)
    for f in files:
        if os.path.exists(f):
            os.replace(f, f + ".prev")
        os.replace(f + ".next", f)


def restore_creds(names: list[str]):
    for f in [*staged_files(names), LAYOUT.config]:
        if os.path.exists(f + ".prev"):
            os.replace(f + ".prev", f)


def discard_staged(names: list[str]):
    # Only on this run's own failure: a recovery must keep what the current run has just staged.
    for f in [*staged_files(names), LAYOUT.config]:
        if os.path.exists(f + ".next"):
            os.unlink(f + ".next")


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None


def fingerprint_of(name: str) -> str:
    with open(LAYOUT.cred_fingerprint(name)) as fh:
        return fh.read().strip()


def unit_secret(port: int, name: str) -> str:
    """The credential `name` of the instance on `port` (the canary authenticates like a client). The helper's
    unit loads the same credential file the new instance starts from (roles/rotation.py: NAME.cred.next while
    it is staged, else NAME.cred), so it never reads another unit's runtime credentials."""
    own = os.environ.get("CREDENTIALS_DIRECTORY")
    path = os.path.join(own, name) if own and os.path.exists(os.path.join(own, name)) else LAYOUT.runtime_credential(port, name)
    with open(path) as fh:
        return fh.read().strip()


# ---- LiteLLM ---------------------------------------------------------------------------------------
http = instance.http


def wait_ready(port: int, timeout: float):
    instance.wait_ready(LAYOUT, port, timeout)


def canary(base_url: str, master_key: str, deployment_ids: list[str], check_header: bool):
    for dep in deployment_ids:
        body = {
            "model": dep,  # a deployment id routes to exactly that deployment
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "disable_fallbacks": True,
            "num_retries": 0,
        }
        status, headers, text = http(f"{base_url}/v1/chat/completions", body, {"Authorization": f"Bearer {master_key}"})
        if status != 200:
            raise RuntimeError(f"{dep}: HTTP {status}: {text[:200]}")
        if check_header and headers.get("x-litellm-model-id") != dep:
            raise RuntimeError(f"{dep}: answered by {headers.get('x-litellm-model-id')!r}, not the rotated deployment")
        if check_header and headers.get("x-litellm-attempted-fallbacks", "0") not in ("0", ""):
            raise RuntimeError(f"{dep}: answered through a fallback")


def canary_through_nginx(https_port: int, master_key: str, deployment_ids: list[str], timeout: float = 10.0):
    """`systemctl reload nginx` returns before the old workers stop taking connections; until then a
    request may still reach the old instance (which does not know the new deployment ids). Wait for
    the switch to take effect; only a failure that outlasts it counts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return canary(f"https://127.0.0.1:{https_port}", master_key, deployment_ids, check_header=False)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


class Redis:
    """The few Redis commands the purge needs (AUTH, SELECT, SCAN, DEL) over RESP, in the standard library:
    the helper runs as root, so it must not import anything from LiteLLM's venv (a compromised dependency
    there would run as root)."""

    def __init__(self, host: str, port: int, db: int, password: str | None, timeout: float = 5.0):
        import socket

        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = self.sock.makefile("rb")
        if password:
            self.call("AUTH", password)
        self.call("SELECT", str(db))

    def close(self):
        self.buf.close()
        self.sock.close()

    def call(self, *args: str):
        out = [f"*{len(args)}\r\n".encode()]
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
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode(errors='replace')[:200]}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.buf.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line[:40]!r}")

    def scan_iter(self, match: str, count: int = 500):
        cursor = "0"
        while True:
            cursor, keys = self.call("SCAN", cursor, "MATCH", match, "COUNT", str(count))
            cursor = cursor.decode()
            yield from keys
            if cursor == "0":
                return

    def delete(self, key) -> int:
        return self.call("DEL", key)


def purge_redis(port: int, deployment_ids: list[str], redis_cred: str = "redis_password") -> int:
    env = {}
    with open(LAYOUT.env_file) as fh:
        for line in fh:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                env[k] = v
    if "REDIS_HOST" not in env:
        return 0
    r = Redis(env["REDIS_HOST"], int(env["REDIS_PORT"]), int(env.get("REDIS_DB", 0)), unit_secret(port, redis_cred))
    deleted = 0
    try:
        for dep in deployment_ids:
            # Only this deployment's keys in LiteLLM's own DB: cooldowns, failure and usage counters.
            for key in list(r.scan_iter(match=f"*{dep}*", count=500)):
                name = key.decode(errors="replace")
                # LiteLLM's keys name a deployment as one ':'-separated segment (deployment:<id>:cooldown,
                # <id>:fails, <id>:<name>:rpm:<minute>); spend/budget counters are money, not failures: kept.
                if dep in name.split(":") and not name.startswith(KEEP_PREFIXES):
                    deleted += r.delete(key)
    finally:
        r.close()
    return deleted


def named(ports) -> str:
    return ",".join(map(str, ports))


def stop_instances(ports):
    # One call: the instances drain their in-flight requests side by side.
    if ports:
        run("systemctl", "stop", *(LAYOUT.instance(p) for p in ports), check=False)


def old_new(journal: dict) -> tuple[list[int], list[int]]:
    # A journal written by an older release names one port per side.
    return (list(journal.get("old_ports") or [journal["old_port"]]),
            list(journal.get("new_ports") or [journal["new_port"]]))


# ---- the transaction -------------------------------------------------------------------------------
def recover(journal: dict):
    """A previous run was interrupted: return the host to one consistent state."""
    (old, new), names = old_new(journal), journal["secrets"]
    live = upstream_ports()
    if set(live) == set(new):
        # Traffic already moved to the proven new instances: finish forward.
        log(f"recovering an interrupted rotation forward (nginx already on {named(new)})")
        ids = journal.get("deployments", [])
        try:
            purge_redis(new[0], journal.get("purge", []), journal.get("redis_cred", "redis_password"))
            canary_through_nginx(journal.get("https_port", LAYOUT.nginx_https_port),
                                 unit_secret(new[0], journal.get("master_cred", "litellm_master_key")), ids)
        except Exception as exc:  # noqa: BLE001 - old instance may be gone: report, keep the proven new one
            log(f"warning: post-switch checks after recovery failed: {exc}", err=True)
        # As in a run that was not cut off: the switch may be only moments old, so nginx's old workers get
        # the time to hand their last requests to OLD before it stops.
        time.sleep(journal.get("settle", 1.0))
        hand_over(old, new)
        record(new, names, journal)
        cleanup_prev(names)
    else:
        log(f"rolling back an interrupted rotation (nginx still on {named(live)})")
        if set(live) != set(old):  # neither set (edited by hand since?): nginx back to the old set
            set_upstream(old)
        stop_instances(new)
        if journal.get("swapped"):
            restore_creds(names)
            if "old_invocations" in journal:  # a journal of an older release did not record them
                restart_started_since(old, journal["old_invocations"], journal.get("ready_timeout", 120.0))
    os.unlink(LAYOUT.journal_file)


def invocations(ports) -> dict[str, str]:
    """{port: systemd's InvocationID} of the instances running now: a new id means a new start."""
    ids = {}
    for port in ports:
        props = probe.unit_props(LAYOUT.instance(port))
        if props.get("ActiveState") in ("active", "activating", "reloading"):
            ids[str(port)] = props.get("InvocationID", "")
    return ids


def restart_started_since(old, recorded: dict[str, str], ready_timeout: float):
    """After a rollback: an old instance that (re)started after the swap (systemd restarted it after a crash,
    or a reboot) started from the credentials being rolled back, so it serves the refused key. Restart those
    one at a time, each ready before the next, so the rest of the set keeps serving."""
    for port, invocation in invocations(old).items():
        if recorded.get(port) == invocation:
            continue
        log(f"litellm@{port} started during the rotation, from the refused key: restarting it", err=True)
        run("systemctl", "restart", LAYOUT.instance(int(port)), check=False)
        try:
            wait_ready(int(port), ready_timeout)
        except Exception as exc:  # noqa: BLE001 - systemd keeps restarting it; the rollback itself is done
            log(f"warning: litellm@{port} not ready after its restart: {exc}", err=True)


def hand_over(old, new):
    """The old set stops gracefully (in-flight requests finish); the new one is started at boot instead."""
    stop_instances(old)
    run("systemctl", "enable", *(LAYOUT.instance(p) for p in new), check=False)
    run("systemctl", "disable", *(LAYOUT.instance(p) for p in old), check=False)


def cleanup_prev(names: list[str]):
    # The previous encrypted credential is kept (as .prev) until the rotation is recorded, then retired.
    for f in [*staged_files(names), LAYOUT.config]:
        if os.path.exists(f + ".prev"):
            os.replace(f + ".prev", f + ".retired")


def record(ports, names: list[str], journal: dict):
    live = read_json(LAYOUT.live_file) or {"secrets": {}}
    live.pop("port", None)  # an older release's single live port
    live["ports"] = list(ports)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for n in names:
        prev = live["secrets"].get(n, {})
        live["secrets"][n] = {"fingerprint": fingerprint_of(n), "version": prev.get("version", 1) + 1, "rotated_at": now}
    live["rotated_at"] = now
    if "started" in journal:
        live["last_rotation_seconds"] = round(time.time() - journal["started"], 1)
    write_atomic(LAYOUT.live_file, json.dumps(live, indent=1, sort_keys=True) + "\n", 0o644)


def fault(step: str, args):
    if args.fail_after == step:
        log(f"fault injection: dying after step {step}")
        os.kill(os.getpid(), signal.SIGKILL)
    if args.fail_at == step:
        raise RuntimeError("fault injection")


def rotate(args) -> int:
    names, ids = args.secrets.split(","), [i for i in args.deployments.split(",") if i]
    old_ids = [i for i in args.purge_deployments.split(",") if i]
    https_port = args.https_port or LAYOUT.nginx_https_port
    os.makedirs(LAYOUT.gatekit_state_dir, exist_ok=True)

    journal = read_json(LAYOUT.journal_file)
    if journal:
        recover(journal)
    staged = [n for n in names if os.path.exists(LAYOUT.cred(n) + ".next")]
    live_already = [n for n in staged if _read(LAYOUT.cred_fingerprint(n) + ".next") == _read(LAYOUT.cred_fingerprint(n))]
    if live_already:
        # Re-staged after an interruption that recovery finished forward: that key is already live.
        discard_staged(live_already)
        staged = [n for n in staged if n not in live_already]
    if not staged:
        log("nothing staged: nothing to rotate")
        return 0

    live = upstream_ports()
    old = list(LAYOUT.set_of(live) or live)
    new = list(LAYOUT.other_set(old))
    if set(live) != set(old):  # e.g. a set that has grown since the last deploy: every old instance serves
        log(f"nginx serves {live}, part of the set {old}", err=True)
    journal = {"old_ports": old, "new_ports": new, "secrets": staged, "deployments": ids, "purge": old_ids,
               "started": time.time(),
               "swapped": False, "https_port": https_port, "master_cred": args.master_cred,
               "redis_cred": args.redis_cred, "settle": args.settle, "ready_timeout": args.ready_timeout,
               # Which start of each old instance holds the old key: one that starts after the swap does not.
               "old_invocations": invocations(old)}
    write_atomic(LAYOUT.journal_file, json.dumps(journal))
    step = "swap-creds"
    try:
        # Recorded before the swap: a crash in the middle of it must still restore the previous files.
        journal["swapped"] = True
        write_atomic(LAYOUT.journal_file, json.dumps(journal))
        swap_creds(staged)
        fault(step, args)

        step = "start"
        stop_instances(new)  # leftovers from an earlier attempt must not keep old credentials
        units = [LAYOUT.instance(p) for p in new]
        run("systemctl", "reset-failed", *units, check=False)
        run("systemctl", "start", "--no-block", *units)
        fault(step, args)

        step = "ready"
        deadline = time.monotonic() + args.ready_timeout  # they start side by side: one timeout for the set
        for port in new:
            wait_ready(port, max(1.0, deadline - time.monotonic()))
        fault(step, args)

        step = "canary"
        master = unit_secret(new[0], args.master_cred)
        for port in new:  # each instance proves the new key on its own: none may serve untested
            canary(f"http://{LAYOUT.litellm_bind}:{port}", master, ids, check_header=True)
        fault(step, args)

        step = "switch"
        set_upstream(new)
        fault(step, args)

        step = "purge"
        deleted = purge_redis(new[0], old_ids, args.redis_cred)
        fault(step, args)

        step = "canary-nginx"
        canary_through_nginx(https_port, master, ids)
        fault(step, args)
    except Exception as exc:  # noqa: BLE001 - every failure rolls back the same way
        log(f"FAILED at step {step}: {exc}; rolling back")
        try:
            if set(upstream_ports()) != set(old):
                set_upstream(old)
        finally:
            stop_instances(new)
            if journal["swapped"]:
                restore_creds(staged)
                restart_started_since(old, journal["old_invocations"], args.ready_timeout)
            discard_staged(staged)
            os.unlink(LAYOUT.journal_file)
        log(f"step {step} failed: {exc}", err=True)
        return 1

    # Past the switch the new key is proven through nginx: from here on only forward.
    step = "drain"
    time.sleep(args.settle)  # nginx's old workers hand their last requests to OLD before it stops
    hand_over(old, new)  # SIGTERM: LiteLLM finishes in-flight requests first
    fault(step, args)

    step = "record"
    record(new, staged, journal)
    cleanup_prev(staged)
    os.unlink(LAYOUT.journal_file)
    log(f"rotated {','.join(staged)}: litellm@{named(old)} -> litellm@{named(new)}; "
        f"{len(ids)} canaries passed on each of {len(new)} instances; "
        f"{deleted} Redis keys purged")
    return 0


def main():
    ap = argparse.ArgumentParser(prog="gatekit-rotate")
    ap.add_argument("--secrets", required=True, help="comma-separated secret names staged as NAME.cred.next")
    ap.add_argument("--deployments", default="", help="LiteLLM deployment ids with the new keys (canaried)")
    ap.add_argument("--purge-deployments", default="", help="deployment ids of the old keys (Redis state purged)")
    ap.add_argument("--https-port", type=int, default=0, help="nginx's TLS port (default: layout.json)")
    ap.add_argument("--master-cred", default="litellm_master_key", help="credential name of the master key")
    ap.add_argument("--redis-cred", default="redis_password", help="credential name of the Redis password")
    ap.add_argument("--ready-timeout", type=float, default=120)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--fail-after", default="", help=argparse.SUPPRESS)  # tests: SIGKILL self after a step
    ap.add_argument("--fail-at", default="", help=argparse.SUPPRESS)  # tests: fail inside a step
    args = ap.parse_args()
    global LAYOUT
    LAYOUT = Layout.beside(__file__)
    sys.exit(rotate(args))


if __name__ == "__main__":
    main()
