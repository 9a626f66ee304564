"""Background steps (gatekit/background.py) and the package waves built on them (roles/packages.py).

The wait command runs for real under sh with fake systemctl/journalctl/dpkg-query: it must wait while the unit
runs or is still queued, unload the unit, and fail with the unit's own log when the step's result is missing.
"""

from __future__ import annotations

import subprocess

import pytest

from gatekit import background
from gatekit.roles import packages

# ActiveState: "activating" for the first $BUSY calls (counted in a file), then $FINAL; list-jobs shows the
# unit as queued for the first $QUEUED calls.
FAKE_SYSTEMCTL = """#!/bin/sh
count() { n=$(cat "$DIR/$1" 2>/dev/null || echo 0); echo $((n + 1)) > "$DIR/$1"; echo "$n"; }
case "$1 $2 $3" in
    "show -P ActiveState") if [ "$(count active)" -lt "${BUSY:-0}" ]; then echo activating; else echo "${FINAL:-active}"; fi;;
    "show -P Result") echo "${RESULT:-success}";;
    "show -P InvocationID") echo 0123abcd;;
    "list-jobs --no-legend ") if [ "$(count jobs)" -lt "${QUEUED:-0}" ]; then echo "42 gatekit-test.service start waiting"; fi;;
    *) echo "systemctl $*" >> "$DIR/log";;
esac
"""
FAKE_JOURNALCTL = """#!/bin/sh
echo "journal($*): E: Unable to locate package postgresql-99"
"""
FAKE_DPKG_QUERY = """#!/bin/sh
shift 2  # -W -f=FORMAT
for p in "$@"; do case " $INSTALLED " in *" $p "*) echo "ii ";; *) echo "un ";; esac; done
"""


@pytest.fixture
def host_tools(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("journalctl", FAKE_JOURNALCTL), ("dpkg-query", FAKE_DPKG_QUERY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run_wait(host_tools, done: str, **env) -> subprocess.CompletedProcess:
    cmd = background.wait_command("gatekit-test.service", done=done, failure="step failed (result: $result). Fix: retry")
    full = {"PATH": f"{host_tools / 'bin'}:/usr/bin:/bin", "DIR": str(host_tools), **env}
    return subprocess.run(["sh", "-c", cmd], env=full, capture_output=True, text=True, timeout=30)


def test_wait_returns_once_the_unit_is_done_and_unloads_it(host_tools):
    res = run_wait(host_tools, "true", BUSY="3")
    assert res.returncode == 0, res.stderr
    assert (host_tools / "active").read_text().strip() == "4"  # polled until it stopped activating
    log = (host_tools / "log").read_text()
    assert "stop gatekit-test.service" in log and "reset-failed gatekit-test.service" in log


def test_wait_covers_a_unit_still_queued(host_tools):
    """Right after `systemd-run --no-block` the start job may still be queued: not done yet."""
    res = run_wait(host_tools, "true", QUEUED="2", FINAL="inactive")
    assert res.returncode == 0, res.stderr
    assert int((host_tools / "jobs").read_text()) >= 3


def test_wait_fails_with_the_units_own_log(host_tools):
    res = run_wait(host_tools, "false", RESULT="exit-code")
    assert res.returncode == 1
    assert "journal(_SYSTEMD_INVOCATION_ID=0123abcd" in res.stderr and "Unable to locate package" in res.stderr
    assert "step failed (result: exit-code). Fix: retry" in res.stderr


def test_start_is_a_no_block_oneshot_with_its_properties():
    clear, start = background.start_commands("gatekit-test.service", "gatekit: a test", "/bin/true", 60, ("Nice=19",))
    assert "stop gatekit-test.service" in clear and "reset-failed gatekit-test.service" in clear
    assert start.startswith("systemd-run --no-block --quiet --unit=gatekit-test.service ")
    for part in ("--service-type=oneshot", "-p RemainAfterExit=yes", "-p TimeoutStartSec=60", "-p Nice=19",
                 "--description='gatekit: a test'"):
        assert part in start
    assert start.endswith(" /bin/true")


# --- package waves ----------------------------------------------------------------------------------------------------


def test_each_host_gets_the_packages_of_its_groups():
    first = packages.wanted(packages.FIRST_WAVE, ["gateways"])
    assert "python3-venv" in first and "redis-server" not in first and "procps" in first  # "all" included
    assert "redis-server" in packages.wanted(packages.FIRST_WAVE, ["redis", "postgres"])
    assert packages.wanted(packages.SECOND_WAVE, ["redis", "postgres"]) == ["postgresql"]
    both = packages.wanted(packages.SECOND_WAVE, ["gateways", "postgres"])
    assert both == sorted(both) and {"nginx", "postgresql"} <= set(both)
    assert packages.wanted(packages.SECOND_WAVE, ["redis"]) == []


def test_every_roles_packages_are_in_a_wave():
    from gatekit.roles import litellm, nginx, postgres, redis

    waves = {p for wave in (packages.FIRST_WAVE, packages.SECOND_WAVE) for names in wave.values() for p in names}
    assert {*litellm.PACKAGES, *nginx.PACKAGES, *postgres.PACKAGES, *redis.PACKAGES} <= waves


def test_install_command_is_noninteractive_and_waits_for_the_dpkg_lock():
    cmd = packages.install_command(["nginx", "postgresql"])
    assert cmd.startswith("DEBIAN_FRONTEND=noninteractive apt-get -y")
    assert "DPkg::Lock::Timeout=300" in cmd and "--force-confold" in cmd
    assert cmd.endswith("install --no-install-recommends nginx postgresql")


@pytest.mark.parametrize("installed, ok", [("nginx postgresql", True), ("nginx", False), ("", False)])
def test_the_package_wait_checks_dpkg_not_just_the_units_result(host_tools, installed, ok):
    """A unit that 'succeeded' without installing everything (or was collected) still fails the wait."""
    done = packages.installed_test(("nginx", "postgresql"))
    res = run_wait(host_tools, done, INSTALLED=installed)
    assert (res.returncode == 0) is ok, res.stderr
