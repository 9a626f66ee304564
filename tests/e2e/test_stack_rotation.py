"""Key rotation on the deployed stack (runs after test_stack.py, same session and hosts).

The fake provider sees the fingerprint of every key; revoking a fingerprint there makes it answer 401.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import httpx
import pytest

from lab.env import PYINFRA, REPO, fake_key
from tests.e2e.conftest import ADDED, ADDED_SETTINGS, ADDED_SUITE
from gatekit.vault import fingerprint
from lab.load import Load
from gatekit.onhost.rotate import FAULT_STEPS
from lab.checks import completion, deployment_id, gateway_client, redis_cli, secret_locations, wait_until
from lab.faults import after_death, kill_9, kill_a_worker, main_pid, oom_kill, restarted_and_ready, steps_on_each_gateway

OPENAI_MODELS = {"fake-fast", "fake-smart", "fake-llama3-8b"}


def rotate(lab, *extra: str, check: bool = False):
    return lab.deploy("rotate_keys.py", extra=["--data", "rotate=openai_key", *extra], check=check)


def openai_fps(provider, since: float, client: str | None = None) -> set[str]:
    """The OpenAI key fingerprints the provider saw since `since` (from one gateway's address, if given)."""
    return {r["fingerprint"] for r in provider.requests(since=since, client=client) if r.get("model") in OPENAI_MODELS}


def stale_key_lines(host, L) -> list[str]:
    """gatekit-unitstats run now: its gatekit_stale_key lines (what the StaleKey alert reads), one per port and secret."""
    prom = host.run(f"systemctl start {L.unitstats_service} && cat {L.textfile_dir}/gatekit.prom").stdout
    return [ln for ln in prom.splitlines() if ln.startswith("gatekit_stale_key")]


def gateways(lab) -> list[str]:
    return list(lab.groups["gateways"])


def test_rotate_under_load_zero_failed_requests(lab, client, provider):
    old, new = lab.secret_values["openai_key"], fake_key("openai-rot")
    lab.set_secret("openai_key", new)
    # The old key's deployment of a model named with ':' is cooling down in the shared Redis (LiteLLM's own key
    # shape): the purge must find it although the name's ':' looks like LiteLLM's separator.
    # A plain deploy refuses to put the changed key on the running gateways (that would be a restart), names
    # rotate_keys.py as the fix, and leaves every host as it was.
    def key_state(gw):  # the credential's fingerprint file, and live.json if a rotation wrote one
        L = lab.layout(gw)
        return lab.hosts[gw].run(f"cat {L.cred_fingerprint('openai_key')}; cat {L.live_file} 2>/dev/null || true").stdout

    before = {gw: key_state(gw) for gw in gateways(lab)}
    assert all(state.startswith(fingerprint(old)) for state in before.values()), before
    refused = lab.deploy(check=False)
    assert not refused.ok, refused.stderr[-2000:]
    assert "openai_key in the vault differ from the credentials live on the host" in refused.stderr
    assert "rotate_keys.py --data rotate=openai_key" in refused.stderr
    assert {gw: key_state(gw) for gw in gateways(lab)} == before
    cooling = f"deployment:{deployment_id(lab, 'gw1', 'llama3:8b')}:cooldown"
    assert redis_cli(lab, f"SET {cooling} gk-test EX 600", f"EXISTS {cooling}") == ["OK", "1"]
    with Load(lab, gateways(lab)) as load:
        result = rotate(lab)
        switched = time.time()
        time.sleep(3)
    assert result.ok, result.stderr[-4000:]
    assert redis_cli(lab, f"EXISTS {cooling}") == ["0"], "the rotated-out deployment's cooldown was not purged"
    assert len(load.results) > 30, f"too little load to prove anything: {len(load.results)}"
    assert {r[3].split()[1] == "stream" for r in load.results} == {True, False}  # plain and streamed
    assert load.failures == [], load.failures[:10]
    for gw in gateways(lab):
        assert lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"] == fingerprint(new)
    # After the switch only the new key reaches the provider...
    since = time.time()
    for gw in gateways(lab):
        assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
    assert openai_fps(provider, since) == {fingerprint(new)}
    assert fingerprint(old) not in openai_fps(provider, switched + 2)
    # ...so revoking the old key at the provider breaks nothing.
    provider.revoke(fingerprint(old))
    with Load(lab, gateways(lab)) as load:
        time.sleep(5)
    assert load.results and load.failures == [], load.failures[:10]
    lab.rotation_seconds = result.seconds


def test_second_rotate_run_changes_nothing(lab):
    again = rotate(lab)
    assert again.ok and again.changes == 0
    redeploy = lab.deploy()
    assert redeploy.ok and redeploy.changes == 0


def test_rotate_to_rejected_key_rolls_back(lab, client, provider):
    current = lab.secret_values["openai_key"]
    bad = fake_key("openai-rejected")
    provider.revoke(fingerprint(bad))  # the provider will answer 401 for it
    lab.set_secret("openai_key", bad)
    before = {gw: lab.live_record(gw) for gw in gateways(lab)}
    try:
        tried_since = time.time()
        with Load(lab, gateways(lab)) as load:
            result = rotate(lab)
        assert not result.ok
        assert "step canary failed" in result.stderr, result.stderr[-3000:]
        assert load.failures == [], load.failures[:10]
        # The tried gateway rolled back; the others were never touched.
        for gw in gateways(lab):
            assert lab.live_record(gw) == before[gw], gw
            files = lab.hosts[gw].run("ls /etc/gatekit/creds").stdout.split()
            assert not [f for f in files if f.endswith((".next", ".prev"))], (gw, files)
        for gw in gateways(lab):
            assert result.changed_ops(lab.hosts[gw].address) == [], gw
        # Exactly one gateway was tried (its canary reached the provider with the refused key) and rolled back: the
        # inventory's first, alone (rollout_first_gateway unset); the others never sent it.
        tried = {gw for gw in gateways(lab)
                 if fingerprint(bad) in openai_fps(provider, tried_since, client=lab.hosts[gw].address)}
        assert tried == {gateways(lab)[0]}, tried
        since = time.time()
        for gw in gateways(lab):
            assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
        assert openai_fps(provider, since) == {fingerprint(current)}
    finally:
        lab.set_secret("openai_key", current)


# Each step of gatekit-rotate, killed (SIGKILL of the on-host rotation process) right after it. Three steps at once,
# one on each gateway (gw2 has every path and port setting moved, gw3 runs Debian 13): a rotation touches only its
# own host, and the provider tells the gateways' calls apart by their address. With fewer gateways a group's steps
# take turns.
GROUPS = [FAULT_STEPS[i:i + 3] for i in range(0, len(FAULT_STEPS), 3)]


def _kill_rotation_after(lab, provider, gw: str, step: str, old: str, new: str):
    address, L = lab.hosts[gw].address, lab.layout(gw)
    with Load(lab, [gw], threads_per_gateway=1) as load:
        crashed = rotate(lab, "--limit", address, "--data", f"gatekit_rotate_fail_after={step}")
        after_crash = time.time()
        time.sleep(2)
    assert not crashed.ok
    assert load.failures == [], load.failures[:10]
    # The host serves, with one key: every request it sent since the crash used the same fingerprint.
    with gateway_client(lab) as client:
        for _ in range(3):
            assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
    used = openai_fps(provider, after_crash, client=address)
    assert len(used) == 1 and used <= {fingerprint(old), fingerprint(new)}, used
    # A re-run completes the rotation.
    with Load(lab, [gw], threads_per_gateway=1) as load:
        done = rotate(lab, "--limit", address)
    assert done.ok, done.stderr[-3000:]
    assert load.failures == [], load.failures[:10]
    assert lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"] == fingerprint(new)
    assert lab.hosts[gw].run(f"test ! -e {L.journal_file}", check=False).returncode == 0
    since = time.time()
    with gateway_client(lab) as client:
        assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
    assert openai_fps(provider, since, client=address) == {fingerprint(new)}


@pytest.mark.parametrize("steps", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_killed_rotation_keeps_one_key_and_rerun_completes(lab, provider, steps):
    ensure_added_gateway(lab)

    def new_key(runs) -> tuple[str, str]:
        old, new = lab.secret_values["openai_key"], fake_key("openai-kill-" + "-".join(step for _, step in runs))
        lab.set_secret("openai_key", new)
        return old, new

    errors = steps_on_each_gateway(gateways(lab), steps, new_key,
                                   lambda gw, step, keys: _kill_rotation_after(lab, provider, gw, step, *keys))
    assert not errors, "\n".join(errors)


def test_kill_9_of_the_controller_mid_rotation(lab, provider):
    gw = gateways(lab)[0]
    new = fake_key("openai-kill-controller")
    lab.set_secret("openai_key", new)
    cmd = [PYINFRA, "-y", str(lab.inventory_path), str(REPO / "rotate_keys.py"), "--data", "rotate=openai_key",
           "--limit", lab.hosts[gw].address]
    with Load(lab, [gw], threads_per_gateway=1) as load:
        proc = subprocess.Popen(cmd, cwd=REPO, env=lab.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        # Kill once the on-host rotation has started its new instance.
        wait_until(lambda: lab.hosts[gw].run(f"test -e {lab.layout(gw).journal_file}", check=False).returncode == 0,
                   60, interval=0.3, what="the rotation to start")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # The on-host rotation runs in its own unit: it finishes or rolls back by itself.
        wait_until(lambda: lab.hosts[gw].run("systemctl is-active --quiet gatekit-rotate.service",
                                             check=False).returncode != 0, 120, what="gatekit-rotate to end")
    assert load.failures == [], load.failures[:10]
    done = rotate(lab, "--limit", lab.hosts[gw].address)
    assert done.ok, done.stderr[-3000:]
    assert lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"] == fingerprint(new)


def _restarted_and_ready(host, L, victim: str, pid: int, port: int):
    """Until systemd has started the dead instance again and it serves: the other one carried the whole load."""
    restarted_and_ready(host, L, victim, pid, port)
    time.sleep(2)


def _only_in_flight_failed(load, killed_at: float, what: str, min_after: int):
    after, in_flight = after_death(load, killed_at)
    served_after = [r for r in load.results if r[0] > killed_at]
    print(f"{what}: {len(served_after)} requests after the death, {len(after)} failed; "
          f"{len(in_flight)} in flight failed", load.summary())
    assert len(served_after) > min_after, len(served_after)
    assert after == [], after[:5]
    assert len(in_flight) <= 3, in_flight  # at most one per client thread: those on the dead process


def _first_of_two_live(lab, gw: str):
    """gw's host, layout, and the first of its two live single-worker instances: (gw, host, L, port, unit).
    The Debian 13 gateway (ADDED) is added first when this module runs without test_stack.py."""
    if gw == ADDED:
        ensure_added_gateway(lab)
    host, L = lab.hosts[gw], lab.layout(gw)
    live_ports = lab.live_ports(gw)
    assert len(live_ports) == 2, live_ports
    return gw, host, L, live_ports[0], L.instance(live_ports[0])


@pytest.mark.parametrize("gw", ["gw1", ADDED])
def test_kill_9_of_a_live_instance_fails_only_its_in_flight_requests(lab, client, gw):
    """gw1 (Debian 12) and the Debian 13 gateway serve from two single-worker instances at once: while systemd
    restarts the killed one (10-20 s), nginx passes every new request it cannot connect with to the other."""
    gw, host, L, port, victim = _first_of_two_live(lab, gw)
    pid = main_pid(host, victim)
    with Load(lab, [gw], threads_per_gateway=3) as load:
        time.sleep(2)
        killed_at = kill_9(host, pid, port)
        _restarted_and_ready(host, L, victim, pid, port)
    _only_in_flight_failed(load, killed_at, f"kill -9 {victim}", min_after=50)
    assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200


def _kill_when_the_other_set_starts(lab, gw: str, rotate_args: tuple) -> tuple[dict, float, str]:
    """Start a rotation of gw in a thread and kill -9 the first live instance once the rotation has swapped
    the credentials and starts the other set. Returns (outcome holder, monotonic time of the kill, victim)."""
    import threading

    host, L = lab.hosts[gw], lab.layout(gw)
    live_before = lab.live_ports(gw)
    standby = L.other_set(live_before)
    victim = L.instance(live_before[0])
    outcome: dict = {}
    rotation = threading.Thread(target=lambda: outcome.setdefault("r", rotate(lab, *rotate_args)))
    rotation.start()
    outcome["thread"] = rotation
    wait_until(lambda: host.run(f"systemctl is-active {L.instance(standby[0])}", check=False).stdout.strip()
               in ("activating", "active"), 120, interval=0.2, what="the rotation to start the other set")
    pid = main_pid(host, victim)
    return outcome, kill_9(host, pid, live_before[0]), victim


def test_kill_9_of_a_live_instance_during_a_rotation_under_load(lab, client, provider):
    """While the rotation brings up the other set, one instance of the live set dies (kill -9) and systemd
    starts it again: only its in-flight requests may fail, the rotation completes, and the gateway ends on
    the new key. With 2 LiteLLM processes starting beside it, the killed one takes longer to die, and requests
    nginx sent it meanwhile are reset (502): in flight on the dying process, counted as such by kill_9.)"""
    gw = gateways(lab)[0]
    new = fake_key("openai-kill9")
    lab.set_secret("openai_key", new)
    with Load(lab, [gw], threads_per_gateway=3) as load:
        time.sleep(1)
        outcome, killed_at, victim = _kill_when_the_other_set_starts(lab, gw, ("--limit", lab.hosts[gw].address))
        outcome["thread"].join(timeout=600)
        time.sleep(2)
    result = outcome["r"]
    after, in_flight = after_death(load, killed_at)
    print(f"kill -9 {victim} mid-rotation: rotation ok={result.ok}; {len(after)} failed after the kill, "
          f"{len(in_flight)} in flight", load.summary())
    assert result.ok, result.stderr[-3000:]
    assert after == [], after[:5]
    assert len(in_flight) <= 3, in_flight
    assert lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"] == fingerprint(new)
    since = time.time()
    for _ in range(3):
        assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
    assert openai_fps(provider, since) == {fingerprint(new)}


def test_instance_restarted_from_a_rejected_key_mid_rotation_is_restarted_by_the_rollback(lab, client, provider):
    """A live instance dies after the swap and systemd starts it from the new key, which the canary then
    rejects: the rollback restores the old key and restarts that instance from it, so after the rollback no
    instance serves the rejected key (the provider sees only the old key, unitstats no stale key)."""
    gw = gateways(lab)[0]
    host, L = lab.hosts[gw], lab.layout(gw)
    current = lab.secret_values["openai_key"]
    bad = fake_key("openai-rejected-after-crash")
    provider.revoke(fingerprint(bad))
    lab.set_secret("openai_key", bad)
    try:
        outcome, _, victim = _kill_when_the_other_set_starts(lab, gw, ("--limit", host.address))
        outcome["thread"].join(timeout=600)
        result = outcome["r"]
        assert not result.ok and "step canary failed" in result.stderr, result.stderr[-3000:]
        assert f"{victim.split('.')[0]} started during the rotation, from the refused key: restarting it" in \
            result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
        since = time.time()
        for _ in range(6):  # both live instances, whichever nginx picks
            assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
        assert openai_fps(provider, since) == {fingerprint(current)}
        stale = stale_key_lines(host, L)
        assert stale and all(ln.endswith(" 0") for ln in stale), stale
    finally:
        lab.set_secret("openai_key", current)


@pytest.mark.parametrize("gw", ["gw1", ADDED])
def test_oom_kill_of_a_live_instance_under_load_fails_only_its_in_flight_requests(lab, client, gw):
    """The kernel's OOM killer ends one live instance (a process in its cgroup allocates past MemoryMax, and
    the instance's raised OOM score makes it the kernel's choice): nginx passes new requests to the other
    instance while systemd restarts it. On gw1 (Debian 12) and the Debian 13 gateway."""
    gw, host, L, port, victim = _first_of_two_live(lab, gw)
    pid = main_pid(host, victim)
    since = host.run("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    with Load(lab, [gw], threads_per_gateway=3) as load:
        time.sleep(2)
        killed_at = oom_kill(host, victim)  # the allocator ends after the instance (the kernel's second choice)
        _restarted_and_ready(host, L, victim, pid, port)
    journal = host.run(f"journalctl -u {victim} --since '{since}' --no-pager -o cat").stdout
    assert "status=9/KILL" in journal, journal[-2000:]
    # Requests sent while the allocator ran may have been in flight on the instance when the kernel chose it.
    _only_in_flight_failed(load, killed_at, f"OOM kill of {victim}", min_after=30)
    assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200


def test_kill_9_of_a_worker_fails_only_its_in_flight_requests(lab):
    """gw2 runs one instance of two workers (its pair of ports): uvicorn's supervisor replaces a killed worker."""
    gw = gateways(lab)[1]
    host, L = lab.hosts[gw], lab.layout(gw)
    (port,) = lab.live_ports(gw)
    supervisor = main_pid(host, L.instance(port))
    with Load(lab, [gw], threads_per_gateway=3) as load:
        time.sleep(2)
        killed_at = kill_a_worker(host, L.instance(port))  # and uvicorn's supervisor replaced it
        time.sleep(2)
    after, in_flight = after_death(load, killed_at)
    print(f"kill -9 of a worker of {L.instance(port)}: {len(after)} failed after, {len(in_flight)} in flight", load.summary())
    assert main_pid(host, L.instance(port)) == supervisor  # the instance itself never restarted
    assert after == [], after[:5]
    assert len(in_flight) <= 3, in_flight


def test_all_gateways_converge_and_no_plaintext_anywhere(lab, provider):
    final = rotate(lab)
    assert final.ok
    for gw in gateways(lab):
        assert lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"] == fingerprint(lab.secret_values["openai_key"])
    assert rotate(lab).changes == 0
    assert lab.deploy().changes == 0
    # gatekit-unitstats (what the StaleKey alert reads) sees every running instance on the current keys.
    for gw in gateways(lab):
        L = lab.layout(gw)
        stale = stale_key_lines(lab.hosts[gw], L)
        assert {f'port="{p}"' for p in lab.live_ports(gw)} <= {ln.split(",")[0].split("{")[1] for ln in stale}
        assert stale and all(ln.endswith(" 0") for ln in stale), stale
    # Every key this session used (current and rotated-out ones) is absent from hosts and outputs.
    values = set(lab.secret_values.values()) | set(lab.rotated_out)
    for text in (final.stdout, final.stderr):
        assert not [v for v in values if v in text]
    assert secret_locations(lab, values) == []


@pytest.mark.parametrize("gw", ["gw2", ADDED])
def test_a_rebooted_gateway_serves_with_the_current_key_and_the_next_deploy_changes_nothing(lab, client, provider, gw):
    """gw2 (non-default paths and ports) and the Debian 13 gateway, after every rotation above: a reboot brings the
    live set back at boot (its instances are the ones enabled), from the current credentials, behind nginx, with no
    stale key."""
    if gw == ADDED:
        ensure_added_gateway(lab)
    host, L = lab.hosts[gw], lab.layout(gw)
    live_before = lab.live_ports(gw)
    took = lab.sandbox.reboot(gw)
    print(f"reboot of {gw} to ssh-ready: {took:.1f} s")
    assert float(host.run("cut -d' ' -f1 /proc/uptime").stdout) < 60, "the host did not reboot"
    for port in live_before:
        assert host.run(f"python3 {L.program('instance.py')} wait-ready {port} --timeout 180", timeout=190).returncode == 0
    standby = L.other_set(live_before)
    assert all(host.run(f"systemctl is-active {L.instance(p)}", check=False).stdout.strip() != "active" for p in standby)
    since = time.time()
    wait_until(lambda: completion(client, lab.gateway_url(gw), model="fast").status_code == 200, 60,
               what="the rebooted gateway to answer through nginx")
    for _ in range(3):
        assert completion(client, lab.gateway_url(gw), model="fast").status_code == 200
    current = lab.live_record(gw)["secrets"]["openai_key"]["fingerprint"]
    assert current == fingerprint(lab.secret_values["openai_key"])  # the vault's key (converged above)
    assert openai_fps(provider, since) == {current}
    stale = stale_key_lines(host, L)
    assert stale and all(ln.endswith(" 0") for ln in stale), stale
    again = lab.deploy()
    assert again.ok and again.changes == 0, again.changed_ops(host.address)


def ensure_added_gateway(lab):
    """The Debian 13 gateway test_stack.py adds, added now when this module runs without it."""
    if ADDED not in lab.hosts:
        lab.add_gateway(ADDED, suite=ADDED_SUITE, settings=ADDED_SETTINGS)


def pg_refusal(lab, gw: str) -> str:
    """What PostgreSQL answers a login from the gateway `gw` with a wrong password (the gateway venv's psycopg): a
    password failure = pg_hba admits the host; "no pg_hba.conf entry" = it does not."""
    dsn = f"host={lab.hosts['data1'].address} port={lab.host_settings('data1')['postgres_port']} user=litellm " \
          "dbname=litellm password=not-the-password connect_timeout=5"
    code = f"import psycopg\ntry:\n    psycopg.connect({dsn!r})\nexcept psycopg.OperationalError as e:\n    print(e)"
    return lab.hosts[gw].run(f"{lab.layout(gw).venv}/bin/python -c {shlex.quote(code)}").stdout


def scraped_hosts(lab) -> set[str]:
    """The host label of every target Prometheus scrapes now."""
    url = f"http://{lab.hosts['data1'].address}:{lab.host_settings('data1')['monitoring_prometheus_port']}"
    active = httpx.get(f"{url}/api/v1/targets", params={"state": "active"}, timeout=30,
                       trust_env=False).json()["data"]["activeTargets"]
    return {t["labels"].get("host") for t in active}


def test_a_gateway_taken_out_of_the_inventory_is_no_longer_admitted_or_scraped(lab):
    """Last of this module: the operator takes the gateway test_stack.py added (added here when this runs alone) out
    of the inventory. The next deploy changes the data host only: PostgreSQL no longer admits it and Prometheus stops
    scraping it; gw1 and gw2 are untouched. It is then powered off (the later modules switch two gateways: fewer
    LiteLLM starts on the lab's 2 cores)."""
    ensure_added_gateway(lab)
    gw3 = lab.hosts[ADDED]
    assert "password authentication failed" in pg_refusal(lab, ADDED)
    assert gw3.address in scraped_hosts(lab)
    lab.write_inventory({**lab.groups, "gateways": [g for g in lab.groups["gateways"] if g != ADDED]})
    result = lab.deploy()
    for name in ("gw1", "gw2"):
        assert result.changed_ops(lab.hosts[name].address) == [], name
    assert {"PostgreSQL | Render pg_hba.conf (only gateway hosts admitted)", "PostgreSQL | Reload PostgreSQL for new pg_hba",
            "Monitoring | Reload Prometheus for its new targets or rules"} <= set(result.changed_ops(lab.hosts["data1"].address))
    assert "no pg_hba.conf entry" in pg_refusal(lab, ADDED)
    wait_until(lambda: gw3.address not in scraped_hosts(lab), 30, what="Prometheus to drop gw3's targets")
    assert lab.hosts["gw1"].address in scraped_hosts(lab)
    lab.remove(ADDED)
    assert lab.deploy().changes == 0
