"""gatekit/onhost/recycle.py: one live instance at a time, drained by nginx before its restart, never beside a switch."""

from __future__ import annotations

import fcntl
from types import SimpleNamespace

import pytest

from gatekit.onhost import probe, recycle, rotate
from gatekit.onhost.layout import Layout

MiB = 1 << 20
HIGH = 1000 * MiB
NOW_US = 10**6 * 10**6  # CLOCK_MONOTONIC, microseconds (11 days of uptime)


def props(memory_mib: int, age_s: float, state: str = "active", high: str = str(HIGH)) -> dict[str, str]:
    return {"ActiveState": state, "ActiveEnterTimestampMonotonic": str(int(NOW_US - age_s * 1e6)),
            "MemoryCurrent": str(memory_mib * MiB), "MemoryHigh": high}


@pytest.mark.parametrize("p, expected", [
    (props(850, 700), "memory 850 MiB >= 85% of MemoryHigh 1000 MiB"),
    (props(849, 700), None),  # below the threshold
    (props(990, 599), None),  # younger than min_age: never (a fresh one already above would restart in a loop)
    (props(990, 700, state="activating"), None),
    (props(990, 700, high="infinity"), None),  # no MemoryHigh: no share of it
    (props(10, 86_400), "running 86400 s >= litellm_recycle_max_age 86400 s"),
    (props(10, 86_399), None),
])
def test_reason_memory_share_of_memory_high_or_age_never_too_young(p, expected):
    assert recycle.reason(p, NOW_US, memory_percent=85, max_age=86_400, min_age=600) == expected


def test_reason_off_when_both_thresholds_are_zero():
    assert recycle.reason(props(999, 10**6), NOW_US, memory_percent=0, max_age=0, min_age=0) is None


class Host:
    """The host as recycle.py sees it: the live set, nginx's upstream, the units; every action recorded in order."""

    def __init__(self, monkeypatch, tmp_path, units: dict[int, dict], upstream=(4001, 4002), live=(4001, 4002),
                 ports=(4001, 4002, 4003, 4004)):
        self.L = Layout(gatekit_state_dir=str(tmp_path), litellm_ports=ports)
        (tmp_path / "live.json").write_text('{"ports": [%s]}' % ", ".join(map(str, live)))
        self.units, self.upstream, self.actions = units, list(upstream), []
        self.fail_restart = False
        monkeypatch.setattr(probe, "unit_props", lambda unit: self.units[int(unit.split("@")[1].split(".")[0])])
        monkeypatch.setattr(rotate, "upstream_ports", lambda: list(self.upstream))
        monkeypatch.setattr(rotate, "set_upstream", self.set_upstream)
        monkeypatch.setattr(rotate, "systemctl", self.systemctl)
        monkeypatch.setattr(rotate, "wait_ready", lambda port, timeout: self.actions.append(("ready", port)))
        monkeypatch.setattr(recycle.time, "monotonic", lambda: NOW_US / 1e6)

    def set_upstream(self, ports):
        self.upstream = list(ports)
        self.actions.append(("upstream", tuple(ports)))

    def systemctl(self, verb, *units):
        if self.fail_restart:
            raise rotate.UnitError(f"systemctl {verb} {' '.join(units)} failed (exit 1): start-limit-hit")
        self.actions.append((verb, *units))

    def run(self, **kw) -> int:
        args = SimpleNamespace(**{"memory_percent": 85, "max_age": 0, "min_age": 600, "ready_timeout": 30, **kw})
        return recycle.main_with(self.L, args)


def test_one_instance_is_drained_by_nginx_restarted_and_put_back(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(900, 700), 4002: props(950, 700)})
    assert host.run() == 0
    # The first due instance only (the other waits for the next round), out of nginx before its restart.
    assert host.actions == [("upstream", (4002,)), ("restart", "litellm@4001.service"), ("ready", 4001),
                            ("upstream", (4001, 4002))]


def test_nothing_happens_when_none_is_due(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(100, 700), 4002: props(100, 10**5)})
    assert host.run() == 0 and host.actions == []


def test_never_while_another_instance_of_the_set_is_down(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(900, 700), 4002: props(0, 0, state="failed")})
    assert host.run() == 0 and host.actions == []


def test_never_beside_a_switch_journal_or_lock(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(900, 700), 4002: props(900, 700)})
    (tmp_path / "rotation.json").write_text("{}")
    assert host.run() == 0 and host.actions == []
    (tmp_path / "rotation.json").unlink()
    with open(host.L.switch_lock, "a") as held:  # gatekit-rotate holds it for its whole run
        fcntl.flock(held, fcntl.LOCK_EX)
        assert host.run() == 0 and host.actions == []
    assert host.run() == 0 and ("restart", "litellm@4001.service") in host.actions  # free again: it goes ahead


def test_a_set_of_one_instance_is_never_recycled(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(990, 10**5)}, upstream=(4001,), live=(4001,), ports=(4001, 4002))
    assert host.run() == 0 and host.actions == []


def test_an_instance_not_back_stays_out_of_nginx_and_the_next_round_puts_it_back(monkeypatch, tmp_path):
    host = Host(monkeypatch, tmp_path, {4001: props(900, 700), 4002: props(100, 700)})
    host.fail_restart = True
    assert host.run() == 1
    assert host.actions == [("upstream", (4002,))] and host.upstream == [4002]  # the other serves alone meanwhile
    host.fail_restart, host.actions = False, []
    host.units[4001] = props(100, 5)  # systemd restarted it since
    assert host.run() == 0
    assert host.actions == [("ready", 4001), ("upstream", (4001, 4002))]  # back once ready; no recycle that round
