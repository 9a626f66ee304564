"""Every role on one Debian 13 host: gateway, Redis, PostgreSQL and monitoring, from Debian 13's own packages
(PostgreSQL 17, Redis 8, its nginx and Prometheus), in a lab of its own beside the session's Debian 12 one (issue 25:
the data roles on Debian 13; the session lab's added gateway covers a Debian 13 gateway in a mixed fleet).

The host is booted bare, from a base image without package lists (as a fresh cloud image), so the deploy also proves
that the PostgreSQL release is known before apt has been updated.
"""

from __future__ import annotations

import pytest

from lab.checks import completion, doctor_failures, gateway_client, wait_for_scrapes
from lab.env import Lab

HOST = "solo13"
GROUPS = {group: [HOST] for group in ("gateways", "redis", "postgres", "monitoring")}


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    lab = Lab.create(tmp_path_factory.mktemp("solo13"))
    try:
        lab.setup(GROUPS, suites={HOST: "trixie"})
        lists = lab.hosts[HOST].run("ls /var/lib/apt/lists | grep -c _Packages || true")
        lab.package_lists_before = lists.stdout.strip()
        lab.first_deploy = lab.deploy()
        yield lab
    finally:
        lab.stop()


def test_every_role_deploys_on_debian_13_where_its_packages_read_their_config_and_a_rerun_changes_nothing(solo):
    host = solo.hosts[HOST]
    assert host.run(". /etc/os-release && echo $VERSION_ID").stdout.strip() == "13"
    assert solo.package_lists_before == "0"  # a fresh image: apt could not say which PostgreSQL it would install
    # PostgreSQL runs the cluster whose directory gatekit wrote its settings into, and listens where they say.
    (cluster,) = [ln.split() for ln in host.run("pg_lsclusters --no-header").stdout.splitlines()]
    version, status = cluster[0], cluster[3]
    assert status == "online", cluster
    conf = f"/etc/postgresql/{version}/main"
    assert host.run(f"test -f {conf}/conf.d/gatekit.conf && test -f {conf}/pg_hba.conf && echo ok").stdout.strip() == "ok"
    listen = host.run("runuser -u postgres -- psql -XtAc 'SHOW listen_addresses'").stdout.strip()
    assert host.address in listen, listen
    again = solo.deploy()
    assert again.ok and again.changes == 0, again.changed_ops(host.address)


def test_it_serves_through_nginx_and_doctor_finds_nothing_failing(solo):
    with gateway_client(solo) as client:
        r = completion(client, solo.gateway_url(HOST))
        assert r.status_code == 200 and "fake-answer" in r.text, r.text[:300]
    # Prometheus' last scrape of an instance may predate its readiness (seen: "target down: litellm ... port 4001").
    wait_for_scrapes(solo)
    assert doctor_failures(solo, HOST) == {}
