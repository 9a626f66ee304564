"""Pure logic of lab.sandbox: naming, addresses, rendering, leftover detection (no hosts, no root)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab import sandbox as sb

# ---------------------------------------------------------------------------------------------- names


def test_generated_run_ids_give_short_unique_names():
    ids = {sb.new_run_id() for _ in range(200)}
    assert len(ids) == 200
    for run_id in list(ids)[:20]:
        names = sb.derive_names(run_id)
        assert names.bridge == f"gk{run_id}" and len(names.bridge) <= 15
        assert names.table == f"gatekit_{run_id}"
        assert names.cgroup == f"gatekit-{run_id}"


@pytest.mark.parametrize("run_id", ["ci-4711-attempt-2", "A" * 64, "x.y_z", "abcdefghijk"])
def test_long_or_odd_run_ids_are_hashed_into_short_names(run_id):
    names = sb.derive_names(run_id)
    assert len(names.bridge) <= 15
    assert names.bridge.isalnum()
    assert names.tag == sb.derive_names(run_id).tag  # deterministic
    assert names.cgroup == f"gatekit-{run_id}"


def test_different_run_ids_give_different_names():
    a, b = sb.derive_names("ci-1"), sb.derive_names("ci-2")
    assert a.bridge != b.bridge and a.table != b.table and a.cgroup != b.cgroup


@pytest.mark.parametrize("bad", ["", "-x", "../etc", "a/b", "a b", "x" * 65, "ü"])
def test_invalid_run_ids_rejected(bad):
    with pytest.raises(ValueError):
        sb.derive_names(bad)


@pytest.mark.parametrize("good", ["gw1", "db-primary", "a", "x" * 32])
def test_valid_host_names(good):
    assert sb.validate_host_name(good) == good


@pytest.mark.parametrize("bad", ["", "GW", "-gw", "gw-", "gw_1", "gw.1", "x" * 33, "a b"])
def test_invalid_host_names(bad):
    with pytest.raises(ValueError):
        sb.validate_host_name(bad)


def test_machine_name_carries_run_tag():
    # nspawn names the host-side veth vb-<machine>: same host names in two runs must differ
    assert sb.machine_name("ab12cd", "gw1") != sb.machine_name("ef34ab", "gw1")


# ------------------------------------------------------------------------------------------ addresses


def test_addresses_start_at_11_and_gateway_is_dot_1():
    assert sb.gateway_for(7) == "10.77.7.1"
    assert [sb.host_address(7, i) for i in range(3)] == ["10.77.7.11", "10.77.7.12", "10.77.7.13"]
    assert str(sb.subnet_for(7)) == "10.77.7.0/24"
    with pytest.raises(ValueError):
        sb.host_address(7, 254 - 11 + 1)
    with pytest.raises(ValueError):
        sb.subnet_for(0)
    with pytest.raises(ValueError):
        sb.subnet_for(255)


def test_subnet_index_is_derived_from_run_id():
    i = sb.pick_subnet_index("abc123", existing=[])
    assert i == sb.preferred_subnet_index("abc123") == sb.pick_subnet_index("abc123", existing=[])
    assert 1 <= i <= 254


def test_subnet_index_skips_used_networks_and_reserved():
    start = sb.preferred_subnet_index("run1")
    used = [ipaddress.IPv4Network(f"10.77.{start}.0/24")]
    nxt = start % 254 + 1
    assert sb.pick_subnet_index("run1", existing=used) == nxt
    # reserved by another live run's state, not yet visible as a route
    assert sb.pick_subnet_index("run1", existing=used, reserved={nxt}) == nxt % 254 + 1
    # a host address inside the subnet counts too
    host_route = [ipaddress.IPv4Network(f"10.77.{start}.5/32")]
    assert sb.pick_subnet_index("run1", existing=host_route) != start


def test_default_route_and_unrelated_networks_do_not_block():
    existing = [ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv4Network("192.0.2.0/24"),
                ipaddress.IPv4Network("10.78.0.0/16")]
    assert sb.pick_subnet_index("r", existing=existing) == sb.preferred_subnet_index("r")


def test_requested_subnet_index_collision_raises():
    assert sb.pick_subnet_index("r", existing=[], requested=9) == 9
    with pytest.raises(sb.SandboxError):
        sb.pick_subnet_index("r", existing=[ipaddress.IPv4Network("10.77.9.0/24")], requested=9)
    with pytest.raises(sb.SandboxError):
        sb.pick_subnet_index("r", existing=[], reserved={9}, requested=9)


def test_whole_range_taken_raises():
    with pytest.raises(sb.SandboxError):
        sb.pick_subnet_index("r", existing=[ipaddress.IPv4Network("10.77.0.0/16")])


# ------------------------------------------------------------------------------- rendering / parsing


def test_network_file():
    text = sb.render_network_file("10.77.3.12", "10.77.3.1", ["10.255.255.53"])
    assert "[Match]\nName=host0\n" in text
    assert "Address=10.77.3.12/24" in text
    assert "Gateway=10.77.3.1" in text
    assert "DNS=10.255.255.53" in text
    assert "LinkLocalAddressing=no" in text and "IPv6AcceptRA=no" in text


def test_parse_nameservers_keeps_ipv4_only():
    conf = "# c\nsearch x\nnameserver 10.255.255.53\nnameserver ::1\nnameserver 1.1.1.1\noptions ndots:1\n"
    assert sb.parse_nameservers(conf) == ["10.255.255.53", "1.1.1.1"]


DEB822 = """Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


def test_parse_debian_mirror_deb822_and_one_line():
    assert sb.parse_debian_mirror(DEB822) == "http://deb.debian.org/debian"
    assert sb.parse_debian_mirror("deb http://mirror.example/debian bookworm main\n") == \
        "http://mirror.example/debian"
    assert sb.parse_debian_mirror("deb [arch=amd64] http://m.example/d bookworm main\n") == "http://m.example/d"
    assert sb.parse_debian_mirror("deb http://security.debian.org bookworm-security main\n") is None


def test_base_dir_names_for_cold_and_warm_bases():
    assert sb.base_dir_name() == "base-bookworm"
    assert sb.base_dir_name(suite="trixie") == "base-trixie"
    assert sb.base_dir_name(seed_debs=["nginx"], suite="trixie") != sb.base_dir_name(seed_debs=["nginx"])
    with pytest.raises(sb.SandboxError, match="not one of bookworm, trixie"):
        sb.base_dir_name(suite="sid")
    warm = sb.base_dir_name(seed_debs=["nginx", "redis-server"])
    assert warm.startswith("base-bookworm-") and warm != "base-bookworm"
    assert warm == sb.base_dir_name(seed_debs=["redis-server", "nginx"])  # order does not matter
    assert warm != sb.base_dir_name(seed_debs=["nginx"])
    assert sb.base_dir_name(extra_packages=["nginx"]) != warm


def test_data_root_avoids_small_or_ram_run():
    big = 100 * 1024**3
    assert sb.choose_data_root("ext4", big) == "run"
    assert sb.choose_data_root("tmpfs", big) == "var"
    assert sb.choose_data_root("ext4", 1024**3) == "var"


def test_launcher_script(tmp_path):
    text = sb.render_launcher(
        name="gw1",
        cgroup_dirs=[Path("/sys/fs/cgroup/systemd/gatekit-r/gw1"), Path("/sys/fs/cgroup/unified/gatekit-r/gw1")],
        stop_file=tmp_path / "stop",
        console_log=tmp_path / "console log",
        nspawn_argv=["systemd-nspawn", "--boot", "-M", "r-gw1", "--register=no", "--keep-unit"],
    )
    assert "echo $$ > /sys/fs/cgroup/systemd/gatekit-r/gw1/cgroup.procs" in text
    assert "echo $$ > /sys/fs/cgroup/unified/gatekit-r/gw1/cgroup.procs" in text
    assert "--fork --time --boottime=-\"$off\" --monotonic=-\"$off\"" in text
    assert '-eq 133 ] || break' in text
    assert "</dev/null" in text
    script = tmp_path / "launch.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_launcher_loop_restarts_only_on_133(tmp_path):
    """Run the generated loop with a fake 'nspawn' that exits 133 twice, then 0."""
    counter = tmp_path / "n"
    fake = tmp_path / "fake-nspawn"
    fake.write_text(f"#!/bin/bash\nn=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
                    "[ $n -lt 3 ] && exit 133; exit 0\n")
    fake.chmod(0o755)
    fake_unshare = tmp_path / "fake-unshare"  # drop unshare's options, run the rest
    fake_unshare.write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    fake_unshare.chmod(0o755)
    text = sb.render_launcher(name="h", cgroup_dirs=[], stop_file=tmp_path / "stop",
                              console_log=tmp_path / "log", nspawn_argv=[str(fake)], unshare=str(fake_unshare))
    script = tmp_path / "l.sh"
    script.write_text(text)
    rc = subprocess.run(["bash", str(script)], timeout=30).returncode
    assert rc == 0 and counter.read_text().strip() == "3"
    # stop file present: never starts
    counter.write_text("0")
    (tmp_path / "stop").touch()
    subprocess.run(["bash", str(script)], timeout=30)
    assert counter.read_text().strip() == "0"


# ------------------------------------------------------------------------------------------ inventory


def _host(name, address, **data):
    return sb.Host(name=name, address=address, key_path=Path("/var/cache/gatekit-sandbox/id_ed25519"), data=data)


_LOAD_INVENTORY = """
import json, sys
from pyinfra.api import State
from pyinfra.context import ctx_state
from pyinfra_cli.inventory import make_inventory_from_files
with ctx_state.use(State()):
    inv = make_inventory_from_files(sys.argv[1])
print(json.dumps({
    "groups": {g: sorted(h.name for h in inv.get_group(g)) for g in sys.argv[2:]},
    "data": {h.name: h.data.dict() for h in inv},
}))
"""


def _load_with_pyinfra(path: Path, groups: list[str]) -> dict:
    # In a subprocess: importing pyinfra_cli monkey-patches the process with gevent.
    proc = subprocess.run([sys.executable, "-c", _LOAD_INVENTORY, str(path), *groups],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inventory_renders_and_loads_in_pyinfra(tmp_path):
    gw1, gw2, db = _host("gw1", "10.77.5.11", litellm_port=4001), _host("gw2", "10.77.5.12"), \
        _host("db1", "10.77.5.13")
    path = sb.write_inventory(
        tmp_path / "sandbox.py",
        {"gateways": [gw1, gw2], "redis": [db], "postgres": [db]},
        data={"litellm_port": 4000, "env": "sandbox"},
    )
    loaded = _load_with_pyinfra(path, ["gateways", "redis", "postgres"])
    assert loaded["groups"] == {"gateways": ["10.77.5.11", "10.77.5.12"], "redis": ["10.77.5.13"],
                                "postgres": ["10.77.5.13"]}
    db_data = loaded["data"]["10.77.5.13"]
    assert db_data["ssh_user"] == "root"
    assert db_data["ssh_key"] == "/var/cache/gatekit-sandbox/id_ed25519"
    assert db_data["ssh_strict_host_key_checking"] == "off"
    assert db_data["ssh_known_hosts_file"] == "/dev/null"
    assert db_data["private_address"] == "10.77.5.13"
    assert db_data["sandbox_name"] == "db1"
    assert db_data["env"] == "sandbox"
    assert loaded["data"]["10.77.5.12"]["litellm_port"] == 4000  # global data
    assert loaded["data"]["10.77.5.11"]["litellm_port"] == 4001  # host data wins


def test_inventory_is_plain_python_literals(tmp_path):
    text = sb.render_inventory({"gateways": [_host("gw1", "10.77.5.11")]})
    ns: dict = {}
    exec(compile(text, "inv", "exec"), ns)
    assert ns["gateways"][0][0] == "10.77.5.11"


@pytest.mark.parametrize("group", ["1abc", "class", "my-group", "_private"])
def test_inventory_rejects_bad_group_names(group):
    with pytest.raises(ValueError):
        sb.render_inventory({group: [_host("gw1", "10.77.5.11")]})


def test_inventory_rejects_non_literal_data():
    with pytest.raises(TypeError):
        sb.render_inventory({"g": [_host("gw1", "10.77.5.11")]}, data={"x": object()})


# --------------------------------------------------------------------------------- leftover detection


def test_stale_detection_uses_owner_pid_and_start_time():
    alive = {(100, 5): True}

    def pid_alive(pid, start):
        return alive.get((pid, start), False)

    live_state = {"run_id": "a", "owner_pid": 100, "owner_start": 5}
    reused_pid = {"run_id": "b", "owner_pid": 100, "owner_start": 6}  # same pid, other process
    dead = {"run_id": "c", "owner_pid": 200, "owner_start": 1}
    broken = {"run_id": "d"}
    live, stale = sb.partition_states([live_state, reused_pid, dead, broken], pid_alive)
    assert [s["run_id"] for s in live] == ["a"]
    assert [s["run_id"] for s in stale] == ["b", "c", "d"]


def test_pid_alive_on_real_processes():
    me = os.getpid()
    assert sb.pid_alive(me)
    assert sb.pid_alive(me, sb.pid_start_time(me))
    assert not sb.pid_alive(me, (sb.pid_start_time(me) or 0) + 1)
    p = subprocess.Popen(["true"])
    while sb._proc_stat(p.pid) and sb._proc_stat(p.pid)[0] != "Z":
        pass
    assert not sb.pid_alive(p.pid)  # zombie counts as dead
    p.wait()
    assert not sb.pid_alive(p.pid)


def test_orphan_names():
    present = ["gkab12cd", "gkdead01", "eth0", "gk"]
    assert sb.orphan_names(present, "gk", {"gkab12cd"}) == ["gk", "gkdead01"]
    assert sb.orphan_names(["gatekit_x", "filter"], "gatekit_", set()) == ["gatekit_x"]


def test_state_files_round_trip_and_ignore_garbage(tmp_path, monkeypatch):
    monkeypatch.setattr(sb, "RUN_ROOT", tmp_path)
    sb._write_state({"run_id": "r1", "owner_pid": 1})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "state.json").write_text(json.dumps({"run_id": "mismatch"}))
    assert [s["run_id"] for s in sb.read_states()] == ["r1"]


def test_command_error_message_has_output():
    err = sb.SandboxCommandError("gw1", 3, "false", "out-text", "err-text")
    text = str(err)
    assert "gw1" in text and "exited 3" in text and "out-text" in text and "err-text" in text
    assert isinstance(err, subprocess.CalledProcessError)


# ------------------------------------------------------------------------- machine packages, lock


def test_ensure_host_packages_installs_only_missing_and_updates_only_when_needed(monkeypatch, tmp_path):
    calls = []
    missing = {"nft", "debootstrap"}
    monkeypatch.setattr(sb, "_which", lambda b: None if b in missing else f"/usr/bin/{b}")

    def fake_run(argv, check=True, **kw):
        calls.append(list(argv))
        if argv[:2] == ["apt-get", "install"]:
            missing.clear()
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(sb, "_run", fake_run)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages").touch()
    monkeypatch.setattr(sb, "APT_LISTS", lists)
    sb.ensure_host_packages()
    assert calls == [["apt-get", "install", "-y", "--no-install-recommends", "debootstrap", "nftables"]]
    calls.clear()
    sb.ensure_host_packages()  # nothing missing: nothing run
    assert calls == []
    # fresh machine without package lists: apt-get update first
    for f in lists.iterdir():
        f.unlink()
    missing.add("ssh")
    sb.ensure_host_packages()
    assert calls[0] == ["apt-get", "update"] and calls[1][:2] == ["apt-get", "install"]
    assert "openssh-client" in calls[1]


def test_file_lock_is_reentrant_in_process(tmp_path):
    lock = sb._FileLock(lambda: tmp_path / "l")
    with lock:
        with lock:  # e.g. a signal handler cleaning up while the main thread holds it
            assert lock._depth == 2
    assert lock._depth == 0 and lock._fd is None


def test_lab_inventory_is_a_gatekit_inventory_with_per_host_settings(tmp_path, monkeypatch):
    """The lab's one inventory writer, in its gatekit form: groups() validates spec, hosts and vault while
    pyinfra loads it, every group gets the spec, and a host's own settings stay its host data."""
    from gatekit import vault

    spec = tmp_path / "lab.gateway.yaml"
    spec.write_text((Path(__file__).resolve().parents[2] / "inventories" / "example.gateway.yaml").read_text())
    vault_path, key = tmp_path / "example.secrets.enc.yaml", tmp_path / "vault.key"
    vault.init_vault(vault_path, key_file=key, passphrase=None)
    k = vault.resolve_key(vault_path, key_file=key)
    for name in ("openai_key", "anthropic_key", "litellm_master_key", "redis_password", "postgres_password"):
        vault.set_secret(vault_path, k, name, f"test-{name}")
    monkeypatch.setenv("GATEKIT_VAULT_KEY_FILE", str(key))
    gw1, gw2, db = _host("gw1", "10.77.5.11"), _host("gw2", "10.77.5.12", litellm_home="/srv/gk"), _host("db1", "10.77.5.13")
    path = sb.write_inventory(tmp_path / "lab_inventory.py", {"gateways": [gw1, gw2], "redis": [db], "postgres": [db]},
                              spec_file=spec)
    loaded = _load_with_pyinfra(path, ["gateways", "redis", "postgres"])
    assert loaded["groups"]["gateways"] == ["10.77.5.11", "10.77.5.12"]
    assert loaded["data"]["10.77.5.12"]["litellm_home"] == "/srv/gk"
    assert "litellm_home" not in loaded["data"]["10.77.5.11"]
    assert all(d["gatekit_spec"] == str(spec.resolve()) for d in loaded["data"].values())
    # A bad host entry is refused while the inventory loads, before any host is touched.
    bad = _host("gw3", "10.77.5.14", litellm_home="relative/path")
    path = sb.write_inventory(tmp_path / "bad_inventory.py", {"gateways": [bad], "redis": [db], "postgres": [db]},
                              spec_file=spec)
    proc = subprocess.run([sys.executable, "-c", _LOAD_INVENTORY, str(path), "gateways"], capture_output=True, text=True)
    assert proc.returncode != 0 and "litellm_home" in proc.stderr
