"""nginx's upstream file has one writer, gatekit/onhost/upstream.py: the nginx role renders it with it on the
controller, rotate.py on the host (test_rotation_logic.py). Here: the file it writes, and that the role's is it."""

from __future__ import annotations

import pytest

from gatekit.onhost import upstream
from gatekit.onhost.layout import Layout
from tests.unit.test_roles_ops import fake, run_deploy, spec_file  # noqa: F401 - fixtures of the deploy harness

BLUE_DEFAULT = """\
# Rendered by gatekit: the LiteLLM instances nginx sends traffic to (every instance of the live set).
# A request that cannot connect to one (it died, or is restarting) goes to the next: proxy_next_upstream.
upstream litellm {
    # Streams hold a connection for minutes: send each request to the instance with the fewest.
    least_conn;
    server 127.0.0.1:4001 max_fails=0;
    server 127.0.0.1:4002 max_fails=0;
    keepalive 32;
    # Below LiteLLM's own idle timeout: nginx closes an idle connection before LiteLLM can.
    keepalive_timeout 60s;
}
"""


def test_render_writes_every_port_of_the_set_with_the_keepalive_settings():
    assert upstream.render([4001, 4002], "127.0.0.1", 32, 60) == BLUE_DEFAULT
    three = upstream.render([4001, 4002, 4005], "127.0.0.2", 48, 50)
    assert [line.strip() for line in three.splitlines() if line.strip().startswith("server ")] == [
        "server 127.0.0.2:4001 max_fails=0;", "server 127.0.0.2:4002 max_fails=0;", "server 127.0.0.2:4005 max_fails=0;"]
    assert "    keepalive 48;\n" in three and "    keepalive_timeout 50s;\n" in three


def test_for_layout_takes_the_hosts_values():
    L = Layout(litellm_bind="127.0.0.3", nginx_upstream_keepalive=7, nginx_upstream_keepalive_timeout=9)
    text = upstream.for_layout(L, (4301,))
    assert "    server 127.0.0.3:4301 max_fails=0;\n" in text and "keepalive 7;" in text and "keepalive_timeout 9s;" in text
    assert upstream.for_layout(Layout(), (4001, 4002)) == BLUE_DEFAULT


def test_an_upstream_without_ports_is_refused():
    with pytest.raises(ValueError, match="at least one port"):
        upstream.render([], "127.0.0.1", 32, 60)


def test_ports_in_reads_back_what_render_writes_and_nothing_else():
    assert upstream.ports_in(BLUE_DEFAULT) == [4001, 4002]
    assert upstream.ports_in("upstream litellm {\n    keepalive 32;\n}\n") == []
    assert upstream.ports_in("  server 10.0.0.1:4003;\n\tserver 127.0.0.1:4004 max_fails=0;\n# server 1.2.3.4:9\n") == [4003, 4004]


def test_the_nginx_role_deploys_the_file_rotation_writes(fake):
    """gw1 (defaults) and gw2 (ports 4301/4302): the role's upstream file is upstream.render's, for each host's live
    set and values; a rotation that writes the same set leaves a re-deploy nothing to change."""
    run_deploy(fake)
    files = {h: {p: c for want in wants for p, (c, *_) in want.files.items()} for h, wants in fake.declared.items()}
    assert files["gw1"]["/etc/nginx/gatekit/upstream.conf"] == BLUE_DEFAULT
    assert files["gw2"]["/etc/nginx/gatekit/upstream.conf"] == BLUE_DEFAULT.replace(
        "    server 127.0.0.1:4001 max_fails=0;\n    server 127.0.0.1:4002 max_fails=0;\n",
        "    server 127.0.0.1:4301 max_fails=0;\n")
