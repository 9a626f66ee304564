"""Graceful recycling of single-worker instances (gatekit/onhost/recycle.py), under load, on the shared lab.

Thresholds every instance passes at once (5% of MemoryHigh: an instance holds about 360 MiB of 1400M) make the
timer recycle the live instances in turns for a minute; each is taken out of nginx before its restart and put back
once ready, never two of a set at a time, and no request fails. A gateway whose sets have one instance each (gw2: two
workers, which uvicorn's supervisor recycles itself) is left alone. The lab's own settings are deployed again after.
"""

from __future__ import annotations

import re
import time

from lab.load import Load

RECYCLE_SEC = 45
FAST = {"litellm_recycle_memory_percent": 5, "litellm_recycle_min_age": 15, "litellm_recycle_interval": 5}


def sample(lab, gw: str) -> tuple[list[int], list[str]]:
    """nginx's upstream ports and the live instances' states, read in one round trip."""
    L, ports = lab.layout(gw), lab.live_ports(gw)
    out = lab.hosts[gw].run(f"cat {L.nginx_upstream}; echo ===; systemctl is-active "
                            + " ".join(L.instance(p) for p in ports), check=False).stdout
    upstream, _, states = out.partition("===")
    return [int(p) for p in re.findall(r"server \S+:(\d+)", upstream)], states.split()


def settled(lab, gw: str) -> bool:
    """No recycle running, and nginx serves the whole live set."""
    busy = lab.hosts[gw].run(f"systemctl is-active {lab.layout(gw).recycle_service}", check=False).stdout.strip()
    return busy not in ("active", "activating") and sorted(sample(lab, gw)[0]) == sorted(lab.live_ports(gw))


def wait_settled(lab, gws, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while not all(settled(lab, gw) for gw in gws):
        assert time.monotonic() < deadline, {gw: sample(lab, gw) for gw in gws}
        time.sleep(1)


def nginx_errors(lab, gw: str) -> list[str]:
    """nginx's error.log lines so far."""
    return lab.hosts[gw].run(f"cat {lab.layout(gw).nginx_log_dir}/error.log", check=False).stdout.splitlines()


def recycled(lab, gw: str, since: int) -> list[str]:
    """The units gatekit-recycle recycled since then (its journal), in order."""
    out = lab.hosts[gw].run(f"journalctl --no-pager -o cat -u {lab.layout(gw).recycle_service} --since @{since}").stdout
    return re.findall(r"gatekit-recycle: recycled (\S+) in ", out)


def test_live_instances_past_their_threshold_are_recycled_one_at_a_time_under_load_without_a_failed_request(
        lab, spec_restored):
    gws = list(lab.groups["gateways"])
    live = {gw: lab.live_ports(gw) for gw in gws}
    lab.settings.update(FAST)
    lab.write_spec()
    try:
        since = int(time.time())
        errors_before = {gw: len(nginx_errors(lab, gw)) for gw in gws}
        samples: dict[str, list] = {gw: [] for gw in gws}
        with Load(lab, gws, threads_per_gateway=2) as load:
            deployed = lab.deploy()  # the timer's settings only: nothing restarts LiteLLM, nothing switches
            t0 = time.monotonic()
            while time.monotonic() - t0 < RECYCLE_SEC:
                for gw in gws:
                    samples[gw].append(sample(lab, gw))
                time.sleep(0.3)
        print(f"recycling for {RECYCLE_SEC} s under load:", load.summary(),
              {gw: recycled(lab, gw, since) for gw in gws})
        assert load.failures == [], load.summary()
        for gw in gws:
            assert not [n for n in deployed.changed_ops(lab.hosts[gw].address) if "Switch" in n or "Restart litellm" in n], gw
            units = recycled(lab, gw, since)
            if len(live[gw]) < 2:  # gw2: one instance per set (of 2 workers): nothing else would serve meanwhile
                assert units == [] and all(u == list(live[gw]) for u, _ in samples[gw]), (gw, units)
                continue
            # Every live instance was recycled (so each was drained while the other served), and again.
            assert {lab.layout(gw).instance(p) for p in live[gw]} <= set(units) and len(units) >= 3, (gw, units)
            for upstream, states in samples[gw]:
                # nginx never lost more than one instance of the set, and never sent to none.
                assert len(upstream) >= len(live[gw]) - 1 and set(upstream) <= set(live[gw]), (gw, upstream)
                assert states.count("active") >= len(live[gw]) - 1, (gw, states)
            assert any(len(u) < len(live[gw]) for u, _ in samples[gw]), "no sample saw an instance drained"
            # Drained first, so nginx never even tried a stopping instance (without the drain it logs refused
            # connects and retries them elsewhere: no failed request at this load, but these lines).
            refused = [ln for ln in nginx_errors(lab, gw)[errors_before[gw]:] if "connect() failed" in ln]
            assert refused == [], (gw, refused[:5])
            assert lab.live_ports(gw) == live[gw]  # the same set serves: recycled in place, no switch
    finally:
        for key in FAST:
            lab.settings.pop(key, None)
        lab.write_spec()
        lab.deploy()  # the lab's own thresholds again (no recycle at 85% of MemoryHigh, 600 s minimum age)
        wait_settled(lab, gws)
