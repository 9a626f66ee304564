"""gatekit-rotate: the blue/green switch of ONE gateway host, for every change that needs LiteLLM restarted: a
provider-key rotation (rotate_keys.py) and a deploy that changed the config, environment, launcher, unit or a
program LiteLLM loads (roles/litellm.py). Installed by the deploy in
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
  swap-creds   the staged NAME.cred.next and every staged file (--files: config.yaml, litellm.env, the launcher,
               the unit, ... each as PATH.next) become live (previous kept as .prev; systemd re-reads a staged
               unit); the config's deployment ids carry the new key's fingerprint, so nothing the new key does
               in the shared Redis (a failing canary's cooldown) touches the old key's deployments
  start        every litellm@NEW starts from them (the live instances keep the old inputs in memory)
  ready        /health/readiness of every NEW instance
  canary       a 1-token completion per changed deployment (--deployments), sent to each NEW instance directly,
               answered by that deployment (x-litellm-model-id), and one per public model and alias (--models),
               answered without a fallback; fallbacks and retries disabled
  switch       nginx upstream -> the NEW set (the file as the deploy renders it: upstream.py; nginx -t,
               graceful reload), done only once every nginx worker
               from before the reload has stopped taking connections (until then one still sends requests
               to OLD: seen, the canary through nginx answered by an old instance after the reload returned)
  purge        Redis keys of the old key's deployments in LiteLLM's DB (cooldowns, counters); never FLUSH*
  canary-nginx the same canary through nginx over TLS
  drain        the OLD set stops gracefully (in-flight requests finish), NEW enabled at boot instead of OLD
  record       the `venv` symlink -> the build the live launcher names (an upgrade's new venv is live now);
               /var/lib/gatekit/live.json: ports, secret versions, fingerprints, the config's sha1, the venv and
               its LiteLLM version, the deployments' digests, which change and when
Any failure up to canary-nginx: upstream back to OLD, NEW stopped, previous credentials and files restored, exit 1
naming the step (and, for a canary, the model, the deployment and what the provider answered); an OLD instance that systemd started again after the swap (a crash, a reboot) started from the refused
key, so it is restarted from the restored one, one at a time (their systemd InvocationIDs are in the journal).
A failure in drain or record (past the switch) exits 1 and keeps the journal: the next run finishes forward.
Every systemctl operation the rotation relies on is checked: a refused one fails its step, naming the units and
systemctl's words; a rollback it stops half-way keeps the journal for the next run.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

if __package__:
    from . import instance, probe, upstream
    from .layout import Layout
else:  # on the host: uploaded beside this program
    import instance
    import probe
    import upstream
    from layout import Layout

LAYOUT = Layout()  # main() reads the host's own from layout.json beside this program
# The steps, in order, after each of which a fault can be injected (--fail-after, --fail-at: the lab's tests); `record`
# has no injection point.
FAULT_STEPS = ("swap-creds", "start", "ready", "canary", "switch", "purge", "canary-nginx", "drain")


class UnitError(RuntimeError):
    """systemctl refused a unit operation the rotation relies on (the message names the units and its stderr)."""


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


def systemctl(verb: str, *args: str):
    """A unit operation whose exit status counts: UnitError naming the units and systemctl's own words."""
    proc = run("systemctl", verb, *args, check=False)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout or "").strip()[-500:] or "no output"
        raise UnitError(f"systemctl {verb} {' '.join(args)} failed (exit {proc.returncode}): {said}")


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
def upstream_ports() -> list[int]:
    with open(LAYOUT.nginx_upstream) as fh:
        ports = upstream.ports_in(fh.read())
    if not ports:
        raise RuntimeError(f"{LAYOUT.nginx_upstream}: no upstream server line")
    return ports


def set_upstream(ports):
    """The file as the deploy renders it for `ports` (upstream.for_layout, the host's layout.json): one atomic write
    (the file is never missing, even when cut off here), then `nginx -t` and a graceful reload; a refused file is
    put back as it was."""
    with open(LAYOUT.nginx_upstream) as fh:
        text = fh.read()
    new = upstream.for_layout(LAYOUT, ports)
    if new == text:
        return
    write_atomic(LAYOUT.nginx_upstream, new)
    test = run("nginx", "-t", "-q", check=False)
    if test.returncode != 0:
        write_atomic(LAYOUT.nginx_upstream, text)
        raise RuntimeError(f"nginx -t refused the new upstream: {test.stderr.strip()[-300:]}")
    before = nginx_workers()
    systemctl("reload", LAYOUT.nginx_unit)  # graceful: old workers finish their requests
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
def staged_files(names: list[str], files=()) -> list[str]:
    """Every path the switch swaps: each credential's .cred and .fp, then the other staged files (--files)."""
    return [*(path for n in names for path in (LAYOUT.cred(n), LAYOUT.cred_fingerprint(n))), *files]


def reload_units(files):
    """systemd reads a unit file at daemon-reload only: after the unit is swapped in or restored."""
    if LAYOUT.unit_file in files:
        systemctl("daemon-reload")


def swap_creds(names: list[str], files=()):
    """NAME.cred/.fp and each of `files` <- their .next; the previous ones kept as .prev. Renames, not copies:
    owners and modes stay exactly as the deploy set them. Nothing is swapped unless all of them are staged."""
    paths = staged_files(names, files)
    missing = [f + ".next" for f in paths if not os.path.exists(f + ".next")]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing (staging incomplete); nothing swapped")
    for f in paths:
        if os.path.exists(f):
            os.replace(f, f + ".prev")
        os.replace(f + ".next", f)
    reload_units(files)


def restore_creds(names: list[str], files=()):
    for f in staged_files(names, files):
        if os.path.exists(f + ".prev"):
            os.replace(f + ".prev", f)
    reload_units(files)


def discard_staged(names: list[str], files=()):
    # Only on this run's own failure: a recovery must keep what the current run has just staged.
    for f in staged_files(names, files):
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


def _ask(base_url: str, master_key: str, model: str) -> tuple[int, dict, str]:
    body = {
        "model": model,  # a deployment id routes to exactly that deployment
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
        "disable_fallbacks": True,
        "num_retries": 0,
    }
    return http(f"{base_url}/v1/chat/completions", body, {"Authorization": f"Bearer {master_key}"})


def canary(base_url: str, master_key: str, deployment_ids: list[str], check_header: bool):
    for dep in deployment_ids:
        status, headers, text = _ask(base_url, master_key, dep)
        if status != 200:
            raise RuntimeError(f"deployment {dep}: HTTP {status}: {text[:300]}")
        if check_header and headers.get("x-litellm-model-id") != dep:
            raise RuntimeError(f"deployment {dep}: answered by {headers.get('x-litellm-model-id')!r}, not that deployment")
        if check_header and headers.get("x-litellm-attempted-fallbacks", "0") not in ("0", ""):
            raise RuntimeError(f"deployment {dep}: answered through a fallback")


def canary_models(base_url: str, master_key: str, names: list[str]):
    """Every public model and alias answers on this instance by itself: 200, no fallback taken."""
    for name in names:
        status, headers, text = _ask(base_url, master_key, name)
        if status != 200:
            raise RuntimeError(f"model {name} (deployment {headers.get('x-litellm-model-id') or 'none answered'}): "
                               f"HTTP {status}: {text[:300]}")
        if headers.get("x-litellm-attempted-fallbacks", "0") not in ("0", ""):
            raise RuntimeError(f"model {name}: answered through a fallback")


def canary_through_nginx(https_port: int, master_key: str, deployment_ids: list[str], timeout: float = 10.0):
    """The canary over nginx's TLS port. set_upstream returns only once nginx's workers from before the reload stopped
    taking connections, so whatever answers is the new set: an answer other than 200 fails at once. Only a failure
    to get an answer at all that waiting cures (instance.transient: refused, reset, timed out) is tried again,
    until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return canary(f"https://127.0.0.1:{https_port}", master_key, deployment_ids, check_header=False)
        except Exception as exc:  # noqa: BLE001 - re-raised unless transient
            if not instance.transient(exc) or time.monotonic() > deadline:
                raise
            log(f"canary through nginx: {type(exc).__name__}: {exc}; trying again")
            time.sleep(0.3)


def purge_redis(port: int, deployment_ids: list[str], redis_cred: str, known_ids=()) -> int:
    """Delete LiteLLM's router state of `deployment_ids` (cooldowns, failure, success and usage counters) in its
    Redis DB; never spend or budget counters, never another deployment's keys. A key belongs to a deployment only
    when the id fills its place in one of LiteLLM's key shapes exactly (probe.router_key_deployment); `known_ids`
    (the rotation's new ids) let a longer id keep what is its own."""
    with open(LAYOUT.env_file) as fh:
        env = probe.parse_env(fh.read())
    if "REDIS_HOST" not in env:
        return 0
    known = set(deployment_ids) | set(known_ids)
    r = probe.Redis(env["REDIS_HOST"], int(env["REDIS_PORT"]), int(env.get("REDIS_DB", 0)), unit_secret(port, redis_cred))
    deleted = 0
    try:
        for dep in deployment_ids:
            for key in list(r.scan_iter(match=f"*{probe.scan_literal(dep)}*", count=500)):
                if probe.router_key_deployment(key.decode(errors="replace"), known) == dep:
                    deleted += r.delete(key)
    finally:
        r.close()
    return deleted


def named(ports) -> str:
    return ",".join(map(str, ports))


def stop_instances(ports):
    # One call: the instances drain their in-flight requests side by side.
    if ports:
        systemctl("stop", *(LAYOUT.instance(p) for p in ports))


# ---- the transaction -------------------------------------------------------------------------------
def recover(journal: dict):
    """A previous run was interrupted: return the host to one consistent state. The journal is removed only once
    that is done; a unit operation refused on the way (UnitError) leaves it for the next run to finish."""
    old, new, names, files = journal["old_ports"], journal["new_ports"], journal["secrets"], journal_files(journal)
    live = upstream_ports()
    if set(live) != set(new):
        log(f"rolling back an interrupted rotation (nginx still on {named(live)})")
        roll_back(journal)
        return
    # Traffic already moved to the proven new instances: finish forward.
    log(f"recovering an interrupted rotation forward (nginx already on {named(new)})")
    try:
        purge_redis(new[0], journal["purge"], journal["redis_cred"], journal["deployments"])
        canary_through_nginx(LAYOUT.nginx_https_port, unit_secret(new[0], journal["master_cred"]), journal["deployments"])
    except Exception as exc:  # noqa: BLE001 - old instance may be gone: report, keep the proven new one
        log(f"warning: post-switch checks after recovery failed: {exc}", err=True)
    # As in a run that was not cut off: the switch may be only moments old, so nginx's old workers get
    # the time to hand their last requests to OLD before it stops.
    time.sleep(journal["settle"])
    hand_over(old, new)
    record(new, names, journal)
    cleanup_prev(names, files)
    os.unlink(LAYOUT.journal_file)


def journal_files(journal: dict) -> list[str]:
    """The files a journal's switch swapped besides the credentials (a journal written before --files: the config)."""
    return journal.get("files", [LAYOUT.config])


def roll_back(journal: dict):
    """Traffic back on the old set, the previous credentials back, the new set stopped, and every old instance
    that started since the swap (from the refused key) restarted from them; then the journal goes. While nginx
    cannot be moved back, nothing else is touched (the new set serves). A unit operation refused on the way
    (UnitError, raised once the others are done) leaves the journal: the next run finishes the rollback (and
    restarts again, one at a time, the old instances this one restarted)."""
    old, new, names = journal["old_ports"], journal["new_ports"], journal["secrets"]
    if set(upstream_ports()) != set(old):  # on the new set, or neither (edited by hand since?): the old set
        set_upstream(old)
    refused = []
    if journal["swapped"]:
        try:  # first: an old instance that restarts from now on gets its key and inputs back
            restore_creds(names, journal_files(journal))
        except UnitError as exc:  # the files are back; systemd did not re-read the unit
            refused.append(str(exc))
    try:
        stop_instances(new)
    except UnitError as exc:
        refused.append(str(exc))
    if journal["swapped"]:
        try:
            restart_started_since(old, journal["old_invocations"], journal["ready_timeout"])
        except UnitError as exc:
            refused.append(str(exc))
    if refused:
        raise UnitError("; ".join(refused))
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
    refused = []
    for port, invocation in invocations(old).items():
        if recorded.get(port) == invocation:
            continue
        log(f"litellm@{port} started during the rotation, from the refused key: restarting it", err=True)
        try:
            systemctl("restart", LAYOUT.instance(int(port)))
        except UnitError as exc:  # the others still get theirs; the rollback is then not done
            refused.append(str(exc))
            continue
        try:
            wait_ready(int(port), ready_timeout)
        except RuntimeError as exc:  # systemd keeps restarting it, from the restored key: the rollback is done
            log(f"warning: litellm@{port} not ready after its restart: {exc}", err=True)
    if refused:
        raise UnitError("; ".join(refused))


def hand_over(old, new):
    """The old set stops gracefully (in-flight requests finish); the new one is started at boot instead."""
    stop_instances(old)
    systemctl("enable", *(LAYOUT.instance(p) for p in new))
    systemctl("disable", *(LAYOUT.instance(p) for p in old))


def cleanup_prev(names: list[str], files=()):
    # The previous encrypted credential and files are kept (as .prev) until the switch is recorded, then retired.
    for f in staged_files(names, files):
        if os.path.exists(f + ".prev"):
            os.replace(f + ".prev", f + ".retired")


def file_sha1(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha1(fh.read()).hexdigest()
    except FileNotFoundError:
        return ""


def point_venv_at_live() -> str:
    """`venv` -> the build the (now live) launcher runs; returns it ("" for a launcher that names none)."""
    try:
        with open(LAYOUT.launcher) as fh:
            build = Layout.launcher_venv(fh.read())
    except FileNotFoundError:
        return ""
    if not build or os.path.realpath(LAYOUT.venv) == build:
        return build
    if os.path.isdir(LAYOUT.venv) and not os.path.islink(LAYOUT.venv):
        # A host deployed before venvs were versioned: its instances (stopped now) ran from this directory;
        # the next deploy removes it.
        os.replace(LAYOUT.venv, LAYOUT.venv + ".old")
    tmp = f"{LAYOUT.venv}.tmp-{os.getpid()}"
    os.symlink(build, tmp)
    os.replace(tmp, LAYOUT.venv)
    return build


def record(ports, names: list[str], journal: dict):
    """live.json: what serves now. `gatekit status` and the next deploy read it (which deployments changed)."""
    venv = point_venv_at_live()
    live = read_json(LAYOUT.live_file) or {"secrets": {}}
    live["venv"], live["litellm_version"] = venv, Layout.litellm_version(venv) if venv else ""
    live["ports"] = list(ports)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for n in names:
        prev = live["secrets"].get(n, {})
        live["secrets"][n] = {"fingerprint": fingerprint_of(n), "version": prev.get("version", 1) + 1, "rotated_at": now}
    if names:
        live["rotated_at"] = now
    if journal.get("digests"):
        live["deployments"] = journal["digests"]
    live["config_sha1"] = file_sha1(LAYOUT.config)
    live["changed_at"] = now
    live["change"] = journal.get("change", "rotation")
    if "started" in journal:
        live["last_rotation_seconds"] = round(time.time() - journal["started"], 1)
        # When this host's switch ran (epoch seconds): the fleet's order is checked by them.
        live["switch_started"], live["switch_done"] = round(journal["started"], 3), round(time.time(), 3)
    write_atomic(LAYOUT.live_file, json.dumps(live, indent=1, sort_keys=True) + "\n", 0o644)


def fault(step: str, args):
    if args.fail_after == step:
        log(f"fault injection: dying after step {step}")
        os.kill(os.getpid(), signal.SIGKILL)
    if args.fail_at == step:
        raise RuntimeError("fault injection")


def _list(arg: str) -> list[str]:
    return [i for i in arg.split(",") if i and i != "-"]


def digests(arg: str) -> dict[str, str]:
    """--digests ID=SHA,...: what each deployment of the staged config is (roles/rotation.py deployment_digests)."""
    return dict(item.rsplit("=", 1) for item in _list(arg))


def _same(path: str) -> bool:
    try:
        with open(path + ".next", "rb") as a, open(path, "rb") as b:
            return a.read() == b.read()
    except FileNotFoundError:
        return False


def rotate(args) -> int:
    names = _list(args.secrets)
    ids = _list(args.deployments)
    old_ids = _list(args.purge_deployments)
    models = _list(args.models)
    os.makedirs(LAYOUT.gatekit_state_dir, exist_ok=True)

    journal = read_json(LAYOUT.journal_file)
    if journal:
        try:
            recover(journal)
        except (RuntimeError, OSError) as exc:  # the journal stays
            log(f"recovering the interrupted rotation failed: {exc}. Fix: see the units' and nginx's logs, then "
                "re-run rotate_keys.py: it finishes the recovery", err=True)
            return 1
    staged = [n for n in names if os.path.exists(LAYOUT.cred(n) + ".next")]
    live_already = [n for n in staged if _read(LAYOUT.cred_fingerprint(n) + ".next") == _read(LAYOUT.cred_fingerprint(n))]
    if live_already:
        # Re-staged after an interruption that recovery finished forward: that key is already live.
        discard_staged(live_already)
        staged = [n for n in staged if n not in live_already]
    files = [f for f in _list(args.files) if os.path.exists(f + ".next")]
    if not staged and all(_same(f) for f in files):  # re-staged after a recovery finished forward: already live
        discard_staged([], files)
        files = []
    if not staged and not files:
        log("nothing staged: nothing to switch")
        return 0

    live = upstream_ports()
    old = list(LAYOUT.set_of(live) or live)
    new = list(LAYOUT.other_set(old))
    if set(live) != set(old):  # e.g. a set that has grown since the last deploy: every old instance serves
        log(f"nginx serves {live}, part of the set {old}", err=True)
    journal = {"old_ports": old, "new_ports": new, "secrets": staged, "files": files, "deployments": ids,
               "models": models, "purge": old_ids, "digests": digests(args.digests), "change": args.change,
               "started": time.time(), "swapped": False, "master_cred": args.master_cred,
               "redis_cred": args.redis_cred, "settle": args.settle, "ready_timeout": args.ready_timeout,
               # Which start of each old instance holds the old key: one that starts after the swap does not.
               "old_invocations": invocations(old)}
    write_atomic(LAYOUT.journal_file, json.dumps(journal))
    step = "swap-creds"
    try:
        # Recorded before the swap: a crash in the middle of it must still restore the previous files.
        journal["swapped"] = True
        write_atomic(LAYOUT.journal_file, json.dumps(journal))
        swap_creds(staged, files)
        fault(step, args)

        step = "start"
        stop_instances(new)  # leftovers from an earlier attempt must not keep old credentials
        units = [LAYOUT.instance(p) for p in new]
        # Not checked: it only clears a start limit hit earlier, and a unit still held by one fails `start` below.
        run("systemctl", "reset-failed", *units, check=False)
        systemctl("start", "--no-block", *units)
        fault(step, args)

        step = "ready"
        deadline = time.monotonic() + args.ready_timeout  # they start side by side: one timeout for the set
        for port in new:
            wait_ready(port, max(1.0, deadline - time.monotonic()))
        fault(step, args)

        step = "canary"
        master = unit_secret(new[0], args.master_cred)
        for port in new:  # each instance proves the change on its own: none may serve untested
            canary(f"http://{LAYOUT.litellm_bind}:{port}", master, ids, check_header=True)
            if models:
                canary_models(f"http://{LAYOUT.litellm_bind}:{port}", master, models)
        fault(step, args)

        step = "switch"
        set_upstream(new)
        fault(step, args)

        step = "purge"
        deleted = purge_redis(new[0], old_ids, args.redis_cred, ids)
        fault(step, args)

        step = "canary-nginx"
        canary_through_nginx(LAYOUT.nginx_https_port, master, ids)
        fault(step, args)
    except Exception as exc:  # noqa: BLE001 - every failure rolls back the same way
        log(f"FAILED at step {step}: {exc}; rolling back")
        log(f"step {step} failed: {exc}", err=True)
        discard_staged(staged, files)  # this run's own: a recovery keeps what a newer run has staged
        try:
            roll_back(journal)
        except (RuntimeError, OSError) as rb:  # the journal stays
            log(f"rollback not finished: {rb}. Fix: see the units' and nginx's logs, then re-run rotate_keys.py: "
                "it finishes the rollback (or, while nginx still serves the new set, the rotation)", err=True)
        return 1

    # Past the switch the new key is proven through nginx: from here on only forward. A failure now keeps the
    # journal, and the next run finishes the rotation (recover).
    try:
        step = "drain"
        time.sleep(args.settle)  # nginx's old workers hand their last requests to OLD before it stops
        hand_over(old, new)  # SIGTERM: LiteLLM finishes in-flight requests first
        fault(step, args)

        step = "record"
        record(new, staged, journal)
        cleanup_prev(staged, files)
    except (RuntimeError, OSError) as exc:  # the journal stays
        log(f"step {step} failed: {exc}. Traffic is on the new set with the new key; fix the cause (a unit: see its "
            "journal), then re-run rotate_keys.py: it finishes the rotation", err=True)
        return 1
    os.unlink(LAYOUT.journal_file)
    what = ",".join([*staged, *(os.path.basename(f) for f in files)])
    log(f"switched ({args.change}: {what}): litellm@{named(old)} -> litellm@{named(new)}; "
        f"{len(ids) + len(models)} canaries passed on each of {len(new)} instances; "
        f"{deleted} Redis keys purged")
    return 0


def parser() -> argparse.ArgumentParser:
    """rotate.py's command line, as roles/rotation.py (rotate_argv) builds it. No setting has a default here: the
    controller passes each from the host's settings (gatekit/defaults.py), the only place they are defaulted."""
    ap = argparse.ArgumentParser(prog="gatekit-rotate")
    ap.add_argument("--secrets", required=True, help="comma-separated secret names staged as NAME.cred.next (- = none)")
    ap.add_argument("--files", default="", help="comma-separated paths staged as PATH.next (config, env, launcher, unit)")
    ap.add_argument("--models", default="", help="public model names and aliases canaried on each new instance")
    ap.add_argument("--digests", default="", help="ID=SHA1 of each deployment of the staged config, recorded")
    ap.add_argument("--change", default="rotation", help="what the switch is for, recorded (rotation or deploy)")
    ap.add_argument("--deployments", default="", help="LiteLLM deployment ids with the new keys (canaried)")
    ap.add_argument("--purge-deployments", default="", help="deployment ids of the old keys (Redis state purged)")
    ap.add_argument("--master-cred", required=True, help="credential name of the master key (litellm_master_key_secret)")
    ap.add_argument("--redis-cred", required=True, help="credential name of the Redis password (redis_password_secret)")
    ap.add_argument("--ready-timeout", type=float, required=True, help="seconds (litellm_ready_timeout)")
    ap.add_argument("--settle", type=float, required=True, help="seconds after the switch (rotation_settle_sec)")
    # tests: SIGKILL self after a step, fail inside a step. A step without an injection point is refused: it would
    # never fire, and the test would prove nothing.
    ap.add_argument("--fail-after", default="", choices=("", *FAULT_STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--fail-at", default="", choices=("", *FAULT_STEPS), help=argparse.SUPPRESS)
    return ap


def main():
    args = parser().parse_args()
    global LAYOUT
    LAYOUT = Layout.beside(__file__)
    # One switch per host, and never beside gatekit-recycle (recycle.py), which takes an instance out of nginx.
    with open(LAYOUT.switch_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sys.exit(rotate(args))


if __name__ == "__main__":
    main()
