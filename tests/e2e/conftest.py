"""One deployed gatekit stack per test session, on booted systemd-nspawn hosts.

data1 holds Redis + PostgreSQL, gw1 and gw2 are gateways. The fake LLM provider runs on the machine,
on the sandbox bridge address. Everything is torn down at the end, also on failure or interrupt
(the sandbox registers atexit and signal handlers too).
"""

from __future__ import annotations

import os
import ssl

import httpx
import pytest

from lab.env import Lab
from lab.fakeprovider import FakeProviderClient

GROUPS = {"gateways": ["gw1", "gw2"], "redis": ["data1"], "postgres": ["data1"]}
# gw1 runs with the default paths and ports, gw2 with other values of every setting that moves a path or
# a port (host data overrides the spec's settings), so deploy, re-run and rotation are tested with both.
NON_DEFAULT = {"litellm_home": "/srv/gk-litellm", "litellm_config_dir": "/srv/gk-etc/litellm",
               "litellm_ports": [4301, 4302], "litellm_workers": 2, "nginx_https_port": 8443,
               "nginx_selfsigned_dir": "/srv/gk-etc/tls"}
HOST_SETTINGS = {"gw2": NON_DEFAULT}


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
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the sandbox gateways use self-signed certificates
    headers = {"Authorization": f"Bearer {lab.secret_values['litellm_master_key']}"}
    with httpx.Client(verify=ctx, headers=headers, timeout=60, trust_env=False) as c:
        yield c
