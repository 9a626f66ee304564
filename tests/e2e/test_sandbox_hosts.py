"""Real systemd-nspawn hosts from lab.sandbox: systemd as PID 1, own machine-ids, networking,
package mirrors through the NAT, real MemoryMax enforcement, clean teardown (also of killed runs)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lab import sandbox as sbx
from lab.sandbox import Sandbox

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandbox hosts need root"),
]

REPO = Path(__file__).resolve().parents[2]


def _resources_present(bridge: str, table: str, cgroups: list[str], dirs: list[str]) -> list[str]:
    left = []
    if Path(f"/sys/class/net/{bridge}").exists():
        left.append(f"bridge {bridge}")
    if subprocess.run(["nft", "list", "table", "ip", table], capture_output=True).returncode == 0:
        left.append(f"nft table {table}")
    left += [f"cgroup {c}" for c in cgroups if Path(c).exists()]
    left += [f"dir {d}" for d in dirs if Path(d).exists()]
    return left


def _snapshot(sb: Sandbox) -> tuple[str, str, list[str], list[str]]:
    st = sb._state
    cgroups = list(st["cgroup_roots"]) + [c for h in st["hosts"].values() for c in h["cgroups"]]
    return sb.bridge, sb.table, cgroups, [st["data_dir"], str(sb.run_dir)]


@pytest.fixture(scope="module")
def pair():
    with Sandbox() as sb:
        t0 = time.monotonic()
        alpha, beta = sb.boot(["alpha", "beta"])
        print(f"\n2 hosts ssh-ready in {time.monotonic() - t0:.2f} s")
        yield sb, alpha, beta


@pytest.mark.timeout(120)
def test_hosts_run_systemd_as_pid1_with_own_identity(pair):
    sb, alpha, beta = pair
    assert alpha.address == f"10.77.{sb.subnet_index}.11"
    assert beta.address == f"10.77.{sb.subnet_index}.12"
    ids = set()
    for host in (alpha, beta):
        out = host.run("readlink /proc/1/exe; cat /proc/1/comm; cat /etc/machine-id; hostname; "
                       "cut -d' ' -f1 /proc/uptime").stdout.split()
        exe, comm, machine_id, hostname, uptime = out
        assert exe.endswith("/systemd") and comm == "systemd"
        assert len(machine_id) == 32
        ids.add(machine_id)
        assert hostname == host.name
        assert float(uptime) < 300, "time namespace: uptime must count from the container's boot"
        state = host.run("systemctl is-system-running --wait", check=False, timeout=60).stdout.strip()
        assert state in ("running", "degraded"), state
        failed = host.run("systemctl --failed --no-legend --plain", check=False).stdout.strip()
        assert failed == "", failed
    assert len(ids) == 2, "every host must get its own machine-id"


@pytest.mark.timeout(120)
def test_host_to_host_tcp(pair):
    _sb, alpha, beta = pair
    alpha.run(f"systemd-run --unit=sbx-http -p WorkingDirectory=/etc "
              f"python3 -m http.server 8080 --bind {alpha.address}")
    fetch = textwrap.dedent(f"""\
        import time, urllib.request
        for i in range(100):
            try:
                print(urllib.request.urlopen("http://{alpha.address}:8080/os-release", timeout=2).read().decode())
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("no answer")
    """)
    out = beta.run("python3 -", input=fetch).stdout
    assert "bookworm" in out
    alpha.run("systemctl stop sbx-http", check=False)


@pytest.mark.timeout(120)
def test_hosts_reach_services_on_the_gateway_address(pair):
    sb, alpha, _beta = pair

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"hello from the machine"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer((sb.gateway_address, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{sb.gateway_address}:{server.server_address[1]}/"
        out = alpha.run(f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{url}\", "
                        f"timeout=5).read().decode())'").stdout
        assert "hello from the machine" in out
    finally:
        server.shutdown()


@pytest.mark.timeout(600)
def test_package_mirrors_reachable_through_nat(pair):
    _sb, alpha, _beta = pair
    alpha.run("apt-get update -q", timeout=300)
    # the base is minimal: the kit under test must install what it needs
    assert alpha.run("command -v curl", check=False).returncode != 0
    alpha.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip",
              timeout=400)
    # pip over HTTPS (through the machine's proxy CA, copied into the base)
    out = alpha.run("python3 -m pip download --no-deps --disable-pip-version-check -d /tmp/pipdl idna==3.7 "
                    "&& ls /tmp/pipdl", timeout=300).stdout
    assert "idna-3.7" in out


@pytest.mark.timeout(180)
def test_memory_max_is_really_enforced(pair):
    _sb, alpha, _beta = pair
    assert alpha.memory_cgroup is not None and alpha.memory_cgroup.is_dir()
    alpha.put("/root/hog.py", "b = bytearray(300 * 1024 * 1024)\n"
                              "for i in range(0, len(b), 4096):\n    b[i] = 1  # touch every page\n"
                              "print('survived')\n")
    res = alpha.run("systemd-run --wait --collect -p MemoryMax=100M python3 /root/hog.py", check=False, timeout=120)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "survived" not in res.stdout
    assert "result: signal" in (res.stdout + res.stderr)
    # the same allocation under a higher limit works, so the kill above was the limit
    ok = alpha.run("systemd-run --wait --collect -p MemoryMax=1G python3 /root/hog.py", check=False, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.timeout(180)
def test_host_added_later_and_reboot(pair):
    sb, alpha, beta = pair
    (gamma,) = sb.boot(["gamma"])
    (delta,) = sb.boot(["delta"])  # a 4th host, added later still
    assert gamma.address == f"10.77.{sb.subnet_index}.13"
    assert delta.address == f"10.77.{sb.subnet_index}.14"
    assert gamma.run("hostname").stdout.strip() == "gamma"
    assert delta.run(f"python3 -c 'import socket; socket.create_connection((\"{beta.address}\", 22), 5)'"
                     " && hostname").stdout.strip() == "delta"
    sb.stop("delta")
    machine_id = gamma.run("cat /etc/machine-id").stdout.strip()
    gamma.run("touch /root/survives-reboot")
    time.sleep(2)
    took = sb.reboot("gamma")
    print(f"\nreboot to ssh-ready: {took:.2f} s")
    assert float(gamma.run("cut -d' ' -f1 /proc/uptime").stdout) < 30, "uptime restarts on reboot"
    assert gamma.run("test -e /root/survives-reboot && cat /etc/machine-id").stdout.strip() == machine_id
    # neighbours still reachable after the reboot
    gamma.run(f"python3 -c 'import socket; socket.create_connection((\"{alpha.address}\", 22), 5)'")
    sb.stop("gamma")
    assert "gamma" not in sb.hosts


@pytest.mark.timeout(180)
def test_down_removes_everything_and_is_idempotent():
    sb = Sandbox()
    with sb:
        sb.boot(["one", "two"])
        bridge, table, cgroups, dirs = _snapshot(sb)
        expected = [f"bridge {bridge}", f"nft table {table}", *(f"cgroup {c}" for c in cgroups),
                    *(f"dir {d}" for d in dirs)]
        assert _resources_present(bridge, table, cgroups, dirs) == expected  # i.e. all exist while up
    assert _resources_present(bridge, table, cgroups, dirs) == []
    sb.down()  # again: no error
    assert all(s["run_id"] != sb.run_id for s in sbx.read_states())


_OWNER = textwrap.dedent("""\
    import json, signal, sys, time
    # An interactive owner: a suite started as a background job inherits SIGINT ignored, and the
    # sandbox (rightly) leaves an ignored signal ignored, which would make the SIGINT case untestable.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from lab.sandbox import Sandbox
    sb = Sandbox().up()
    sb.boot(["victim"])
    st = sb._state
    print(json.dumps({"bridge": sb.bridge, "table": sb.table, "run_dir": str(sb.run_dir),
                      "data_dir": st["data_dir"], "address": sb.hosts["victim"].address,
                      "cgroups": st["cgroup_roots"] + st["hosts"]["victim"]["cgroups"]}), flush=True)
    time.sleep(600)
""")


def _start_owner() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line, "owner process died before booting"
    return proc, json.loads(line)


@pytest.mark.timeout(180)
def test_leftovers_of_a_killed_run_are_cleaned_up():
    proc, info = _start_owner()
    proc.kill()  # SIGKILL: no atexit, no handlers -> the host keeps running
    proc.wait()
    host = sbx.Host("victim", info["address"], sbx.key_path())
    assert host.ssh_ready(), "host of a killed run keeps running until cleanup"
    sbx.cleanup_leftovers()  # (a concurrent run's up() may have cleaned it already: that is fine too)
    assert _resources_present(info["bridge"], info["table"], info["cgroups"], [info["data_dir"], info["run_dir"]]) == []
    assert not host.ssh_ready()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_owner_tears_everything_down(sig):
    proc, info = _start_owner()
    proc.send_signal(sig)
    assert proc.wait(timeout=60) in (-sig, 1)
    assert _resources_present(info["bridge"], info["table"], info["cgroups"], [info["data_dir"], info["run_dir"]]) == []


@pytest.mark.timeout(180)
def test_cleanup_command_line():
    out = subprocess.run([sys.executable, "-m", "lab", "down"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sandbox leftovers removed:")
