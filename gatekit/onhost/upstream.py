"""nginx's upstream of LiteLLM instances ({nginx_dir}/gatekit/upstream.conf): its one writer and its reader.

The nginx role renders the file on the controller with render() (the live set from live.json), and rotate.py
renders it on the host (the new set, or the old one back) with the same function and the host's layout.json, so
a deploy after a rotation finds the file exactly as it would write it: zero changes. Python stdlib only.
"""

from __future__ import annotations

import re

# A server line as render() writes it: the port is what rotate.py reads back (the set nginx serves now).
_SERVER = re.compile(r"^[ \t]*server[ \t]+\S+:(\d+)\b", re.M)


def render(ports, bind: str, keepalive: int, keepalive_timeout: int) -> str:
    """The whole file for these instance ports (every instance of the live set, side by side)."""
    ports = [int(p) for p in ports]
    if not ports:
        raise ValueError("an upstream needs at least one port")
    servers = "".join(f"    server {bind}:{port} max_fails=0;\n" for port in ports)
    return (
        "# Rendered by gatekit: the LiteLLM instances nginx sends traffic to (every instance of the live set).\n"
        "# A request that cannot connect to one (it died, or is restarting) goes to the next: proxy_next_upstream.\n"
        "upstream litellm {\n"
        "    # Streams hold a connection for minutes: send each request to the instance with the fewest.\n"
        "    least_conn;\n"
        f"{servers}"
        f"    keepalive {int(keepalive)};\n"
        "    # Below LiteLLM's own idle timeout: nginx closes an idle connection before LiteLLM can.\n"
        f"    keepalive_timeout {int(keepalive_timeout)}s;\n"
        "}\n"
    )


def for_layout(layout, ports) -> str:
    """render() with a host's values (gatekit.onhost.layout.Layout: bind address and keepalive settings)."""
    return render(ports, layout.litellm_bind, layout.nginx_upstream_keepalive, layout.nginx_upstream_keepalive_timeout)


def ports_in(text: str) -> list[int]:
    """The instance ports the file sends traffic to, in its order."""
    return [int(m.group(1)) for m in _SERVER.finditer(text)]
