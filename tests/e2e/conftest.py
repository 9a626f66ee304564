"""One deployed gatekit stack per test session, on booted systemd-nspawn hosts.

data1 holds Redis + PostgreSQL, gw1 and gw2 are gateways. The fake LLM provider runs on the machine,
on the sandbox bridge address. Everything is torn down at the end, also on failure or interrupt
(the sandbox registers atexit and signal handlers too).
"""

from __future__ import annotations

import os
import re

import httpx
import pytest

from lab.checks import gateway_client
from lab.env import Lab
from lab.fakeprovider import FakeProviderClient

GROUPS = {"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"], "monitoring": ["data1"]}
# gw1 runs with the default paths and ports, gw2 with other values of every setting that moves a path or
# a port (host data overrides the spec's settings), so deploy, re-run and rotation are tested with both.
NON_DEFAULT = {"litellm_home": "/srv/gk-litellm", "litellm_config_dir": "/srv/gk-etc/litellm",
               "litellm_ports": [4301, 4302], "litellm_workers": 2, "nginx_https_port": 8443,
               "nginx_selfsigned_dir": "/srv/gk-etc/tls", "nginx_metrics_port": 9470,
               "monitoring_node_exporter_port": 9101}
HOST_SETTINGS = {"gw2": NON_DEFAULT}
# The gateway test_stack.py adds to the running fleet: Debian 13, the default two instances per set. It stays for
# test_stack_rotation.py (rotation under load, kill -9 and OOM kill of a live instance, and a reboot on Debian 13),
# whose last test takes it out again.
ADDED, ADDED_SUITE, ADDED_SETTINGS = "gw3", "trixie", {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the end-to-end tests boot systemd-nspawn hosts and need root")
    lab = Lab.create(tmp_path_factory.mktemp("lab"))
    try:
        lab.setup(GROUPS, host_settings=HOST_SETTINGS)
        lab.first_deploy = lab.deploy()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def provider(lab) -> FakeProviderClient:
    return FakeProviderClient(lab.provider_url)


@pytest.fixture(scope="session")
def client(lab) -> httpx.Client:
    with gateway_client(lab) as c:
        yield c


@pytest.fixture
def spec_restored(lab):
    """The test edits the lab's spec; the lab's own spec file is back afterwards (deployed by the next deploy: each
    test starts from whatever config the previous one left live, which the switch must handle anyway)."""
    saved = (list(lab.extra_models), list(lab.extra_fallbacks), dict(lab.weights), dict(lab.settings))
    yield
    lab.extra_models[:], lab.extra_fallbacks[:], lab.weights, lab.settings = saved
    lab.write_spec()


# ---- diagnostics: a failed test leaves every host's recent logs behind --------------------------------
NOTABLE = re.compile(r"Traceback|Error|error\]|502|killed|oom|Failed|ContextVar|cooldown", re.I)
DIAG_CMD = ("journalctl --no-pager -o short-precise --since=-{secs}s -u 'litellm@*' -u nginx -u 'gatekit*' "
            "-u redis-server -u 'postgresql*' | tail -n 600; echo '==== nginx error.log'; "
            "grep -v 'GET /metrics/' /var/log/nginx/error.log 2>/dev/null | tail -n 80; echo '==== nginx 5xx (access.log)'; "
            "grep -E '\" 5[0-9]{{2}} ' /var/log/nginx/access.log 2>/dev/null | tail -n 20; echo '==== units'; "
            "systemctl show -p Id -p ActiveState -p NRestarts -p MemoryCurrent -p ExecMainStatus 'litellm@*' 2>/dev/null")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed or "lab" not in item.funcargs:
        return
    lab = item.funcargs["lab"]
    # The test's duration plus a margin: the logs of what this test did, not of the whole session.
    secs = int(report.duration) + 30
    folder = lab.workdir / "failures" / item.name.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, host in lab.hosts.items():
        try:
            out = host.run(DIAG_CMD.format(secs=secs), check=False, timeout=60)
            (folder / f"{name}.log").write_text(out.stdout + out.stderr)
            lines.append(f"{name}: {folder / (name + '.log')}")
            # The lines that usually say why, in the report itself (CI keeps only its output).
            lines += [f"  {ln[:300]}" for ln in out.stdout.splitlines() if NOTABLE.search(ln) and "/metrics/" not in ln][-15:]
        except Exception as exc:  # noqa: BLE001 - diagnostics must never mask the failure itself
            lines.append(f"{name}: no logs ({exc})")
    report.sections.append(("host logs", "\n".join(lines)))
