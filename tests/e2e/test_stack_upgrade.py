"""A LiteLLM upgrade on gateways that serve (runs last, same session and hosts): another hash lock in the spec builds
a new venv beside the live one on each gateway, and the launcher naming it goes live through the blue/green switch
(canaries through every new instance, the first gateway alone, then the others); switching back reuses the previous
build; a release that starts but fails every call is rolled back on the first gateway and never reaches the others.
"""

from __future__ import annotations

import json

from lab.checks import gatekit
from lab.load import Load
from lab.releases import BROKEN_MESSAGE, UPGRADE_LOCK

DEFAULT_VERSION, UPGRADE_VERSION = "1.106.2", "1.108.7"


def gateways(lab) -> list[str]:
    return list(lab.groups["gateways"])


def running_builds(lab, gw: str) -> set[str]:
    """The venv builds the live instances' main processes run from (their interpreter, as the launcher named it)."""
    L, host = lab.layout(gw), lab.hosts[gw]
    builds = set()
    for port in lab.live_ports(gw):
        pid = host.run(f"systemctl show -P MainPID {L.instance(port)}").stdout.strip()
        argv0 = host.run(f"tr '\\0' '\\n' < /proc/{pid}/cmdline | head -n 1").stdout.strip()
        builds.add(argv0.removesuffix("/bin/python3"))
    return builds


def build_identity(lab, gw: str, build: str) -> str:
    """Inode and change time of a build's interpreter config: a rebuild (rm -rf + venv) gives another."""
    return lab.hosts[gw].run(f"stat -c '%i %Z' {build}/pyvenv.cfg").stdout.strip()


def status(lab) -> dict:
    return json.loads(gatekit(lab, "status", str(lab.inventory_path), "--json", check=False).stdout)


def test_an_upgrade_under_load_switches_every_gateway_to_the_new_release_and_back_reuses_the_previous_build(
        lab, spec_restored):
    gws = gateways(lab)
    old = {gw: lab.hosts[gw].run(f"readlink {lab.layout(gw).venv}").stdout.strip() for gw in gws}
    assert {gw: running_builds(lab, gw) for gw in gws} == {gw: {old[gw]} for gw in gws}
    kept = {gw: build_identity(lab, gw, old[gw]) for gw in gws}
    assert [g["litellm_version"] for g in status(lab)["gateways"]] == [DEFAULT_VERSION] * len(gws)

    lab.settings["litellm_requirements"] = UPGRADE_LOCK
    lab.write_spec()
    with Load(lab, gws, threads_per_gateway=2) as load:
        up = lab.deploy()
    print(f"upgrade to {UPGRADE_VERSION} under load:", load.summary(), f"{up.seconds:.1f} s")
    assert load.failures == [], load.summary()
    now = status(lab)
    assert not now["mixed"] and now["litellm_versions"] == [UPGRADE_VERSION], now
    for gw in gws:
        live = lab.live_record(gw)
        assert (live["litellm_version"], live["change"]) == (UPGRADE_VERSION, "deploy"), (gw, live)
        assert running_builds(lab, gw) == {live["venv"]} != {old[gw]}, gw
    done_first = lab.live_record(gws[0])["switch_done"]
    assert all(lab.live_record(gw)["switch_started"] > done_first for gw in gws[1:])
    again = lab.deploy()
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in gws}

    del lab.settings["litellm_requirements"]
    lab.write_spec()
    with Load(lab, gws, threads_per_gateway=2) as load:
        back = lab.deploy()
    print(f"back to {DEFAULT_VERSION} under load:", load.summary(), f"{back.seconds:.1f} s")
    assert load.failures == [], load.summary()
    assert status(lab)["litellm_versions"] == [DEFAULT_VERSION]
    for gw in gws:
        # The previous build serves again, and it is the same build: reused, not installed again.
        assert running_builds(lab, gw) == {old[gw]} and lab.live_record(gw)["venv"] == old[gw], gw
        assert build_identity(lab, gw, old[gw]) == kept[gw], gw


def test_a_release_that_fails_every_call_is_rolled_back_on_the_first_gateway_and_never_reaches_the_others(
        lab, spec_restored):
    gws = gateways(lab)
    before = {gw: (lab.live_record(gw), running_builds(lab, gw)) for gw in gws}
    lab.settings["litellm_requirements"] = str(lab.broken_release_lock())
    lab.write_spec()
    with Load(lab, gws, threads_per_gateway=2) as load:
        result = lab.deploy(check=False)
    print("broken release under load:", load.summary(), f"{result.seconds:.1f} s")
    assert not result.ok
    first = lab.hosts[gws[0]].address
    assert first in result.stderr and "step canary failed" in result.stderr, result.stderr[-3000:]
    assert BROKEN_MESSAGE in result.stderr, result.stderr[-3000:]  # what the new instances answered
    assert load.failures == [], load.summary()
    for gw in gws:  # every gateway serves as before: the same record, from the same build
        assert (lab.live_record(gw), running_builds(lab, gw)) == before[gw], gw
    for gw in gws[1:]:
        assert not [n for n in result.changed_ops(lab.hosts[gw].address) if "Switch" in n], gw
    assert status(lab)["litellm_versions"] == [DEFAULT_VERSION]
    lab.settings.pop("litellm_requirements")
    lab.write_spec()
    again = lab.deploy()  # nothing was left half-done: the spec's release is live everywhere
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in gws}
