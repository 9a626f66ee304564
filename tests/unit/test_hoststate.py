"""Unit tests for gatekit/hoststate.py: the HostState fact's command and parser, and Layout.live_set().

The command is run for real with `sh` against a temporary directory (no dpkg/systemctl needed: packages and
units are left empty, and the command then must not call those tools at all)."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from gatekit.hoststate import LIVE_FILE, ROTATION_JOURNAL, HostState
from gatekit.onhost.layout import Layout

SHA_A = hashlib.sha1(b"a").hexdigest()


def parse(*lines: str) -> dict:
    return HostState().process(list(lines))


def sh(command: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", *flags, "-c", command], capture_output=True, text=True, timeout=30)


def lines_of(stdout: str) -> list[str]:
    # What pyinfra hands to process(): stdout split into lines, only the newline removed.
    return stdout.split("\n")[:-1] if stdout.endswith("\n") else stdout.split("\n")


def owner(path: Path) -> tuple[str, str]:
    st = os.lstat(path)
    return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


# --- process(): parsing realistic output lines --------------------------------------------------------


def test_process_of_no_output_is_empty_state():
    assert parse() == {"mem_mb": None, "paths": {}, "packages": set(), "units": {}, "users": set(), "texts": {}}


def test_process_mem_line():
    assert parse("mem 1987")["mem_mb"] == 1987
    assert parse("mem 0")["mem_mb"] == 0


def test_process_path_lines_for_file_dir_and_link():
    state = parse(
        f"path f 640 root litellm {SHA_A} /etc/litellm/config.yaml",
        "path d 750 litellm litellm - /opt/litellm",
        "path l - - - - /etc/nginx/sites-enabled/default",
    )
    assert state["paths"] == {
        "/etc/litellm/config.yaml": ("f", "640", "root", "litellm", SHA_A),
        "/opt/litellm": ("d", "750", "litellm", "litellm", "-"),
        "/etc/nginx/sites-enabled/default": ("l", "-", "-", "-", "-"),
    }


def test_process_path_with_spaces_keeps_the_whole_path():
    state = parse(f"path f 644 root root {SHA_A} /srv/my dir/a file  with  spaces.txt")
    assert state["paths"] == {"/srv/my dir/a file  with  spaces.txt": ("f", "644", "root", "root", SHA_A)}


def test_process_packages_only_installed_ones_without_arch():
    state = parse(
        "pkg nginx ii ",
        "pkg libc6:amd64 ii ",
        "pkg redis-server rc ",  # removed, config files left: not installed
        "pkg postgresql-15 un ",  # unknown / not installed
        "pkg python3-venv iU ",  # unpacked, not configured
        "pkg openssl ii",  # trailing space already gone
    )
    assert state["packages"] == {"nginx", "libc6", "openssl"}


def test_process_unit_lines():
    state = parse(
        "unit nginx.service active enabled",
        "unit litellm@4002.service inactive ",  # is-enabled printed nothing (unknown unit)
        "unit redis-server.service failed",  # no enabled word at all
        "unit litellm@4001.service activating disabled",
    )
    assert state["units"] == {
        "nginx.service": ("active", "enabled"),
        "litellm@4002.service": ("inactive", ""),
        "redis-server.service": ("failed", ""),
        "litellm@4001.service": ("activating", "disabled"),
    }


def test_process_user_lines():
    assert parse("user litellm", "user redis")["users"] == {"litellm", "redis"}


def test_process_text_lines_keep_inner_spaces_and_strip_the_end():
    live = '{"port": 4002,  "secrets": {"openai_key": {"fingerprint": "abc", "version": 2}}} '
    state = parse(
        f"text {len(LIVE_FILE)} {LIVE_FILE} {live}",
        "text 32 /etc/gatekit/creds/openai_key.fp 0123456789abcdef ",
        f"text {len(ROTATION_JOURNAL)} {ROTATION_JOURNAL} ",  # empty file
    )
    assert state["texts"][LIVE_FILE] == live.strip()
    assert json.loads(state["texts"][LIVE_FILE])["port"] == 4002
    assert state["texts"]["/etc/gatekit/creds/openai_key.fp"] == "0123456789abcdef"
    assert state["texts"][ROTATION_JOURNAL] == ""


def test_process_ignores_unknown_and_empty_lines():
    state = parse("", "garbage line here", "mem 512", "warning: something")
    assert state["mem_mb"] == 512
    assert state["paths"] == {} and state["packages"] == set() and state["units"] == {}
    assert state["users"] == set() and state["texts"] == {}


def test_process_everything_together():
    state = parse(
        "mem 3900",
        f"path f 600 root root {SHA_A} /etc/gatekit/creds/openai_key.cred",
        "pkg nginx ii ",
        "unit nginx.service active enabled",
        "user litellm",
        "text 26 /var/lib/gatekit/live.json {}",
    )
    assert state["mem_mb"] == 3900
    assert state["paths"]["/etc/gatekit/creds/openai_key.cred"][0] == "f"
    assert state["packages"] == {"nginx"}
    assert state["units"] == {"nginx.service": ("active", "enabled")}
    assert state["users"] == {"litellm"}
    assert state["texts"] == {"/var/lib/gatekit/live.json": "{}"}


# --- Layout.live_set() ---------------------------------------------------------------------------------

PAIR = Layout(litellm_ports=(4001, 4002))  # one instance per set (the layout of older releases)
QUAD = Layout(litellm_ports=(4001, 4002, 4003, 4004))  # two instances live at once


@pytest.mark.parametrize(
    "live_json, expected",
    [
        ("", (4001,)),  # no live.json yet: blue
        ('{"port": 4002}', (4001,)),  # a single "port" is no live.json this kit writes: blue
        ('{"ports": [4002], "secrets": {}, "rotated_at": "2025-01-01T00:00:00Z"}', (4002,)),
        ('{"ports": [4003]}', (4001,)),  # not one of the pair (ports changed since): blue
        ('{"ports": ["4002"]}', (4001,)),  # a string is not a port
        ('{"ports": "4002"}', (4001,)),
        ('{"ports": 4002}', (4001,)),
        ("{not json", (4001,)),
        ('{"port": 40', (4001,)),  # truncated
        ('{"secrets": {}}', (4001,)),  # no port
        ("{}", (4001,)),
        ("[4002]", (4001,)),
    ],
)
def test_live_set_of_a_pair(live_json, expected):
    assert PAIR.live_set(live_json) == expected


@pytest.mark.parametrize(
    "live_json, expected",
    [
        ("", (4001, 4002)),
        ('{"ports": [4003, 4004]}', (4003, 4004)),
        ('{"ports": [4004, 4003]}', (4003, 4004)),
        ('{"ports": [4001, 4002]}', (4001, 4002)),
        ('{"port": 4003}', (4001, 4002)),  # a single "port" is no live.json this kit writes: blue
        ('{"ports": [4002, 4003]}', (4001, 4002)),  # straddles both sets: not a set, blue
        ('{"ports": [4005, 4006]}', (4001, 4002)),
        ('{"ports": []}', (4001, 4002)),
    ],
)
def test_live_set_of_two_sets(live_json, expected):
    assert QUAD.live_set(live_json) == expected


def test_sets_follow_the_port_order_and_other_set():
    L = Layout(litellm_ports=(5002, 5001, 5004, 5003))
    assert L.instance_sets == ((5002, 5001), (5004, 5003))
    assert L.live_set("") == (5002, 5001)
    assert L.other_set((5001, 5002)) == (5004, 5003)
    assert L.other_set((5004, 5003)) == (5002, 5001)


def test_live_set_of_live_json_as_read_by_hoststate():
    # live.json is written with indent=1; HostState turns its newlines into spaces.
    text = json.dumps({"ports": [4003, 4004], "secrets": {"k": {"version": 3}}}, indent=1).replace("\n", " ")
    state = parse(f"text {len(LIVE_FILE)} {LIVE_FILE} {text} ")
    assert QUAD.live_set(state["texts"][LIVE_FILE]) == (4003, 4004)


# --- command(): valid sh, safe quoting, and really run ----------------------------------------------------

NASTY = [
    "/tmp/with space/file name.txt",
    "/tmp/it's here",
    '/tmp/double "quoted"',
    "/tmp/$(touch PWNED)",
    "/tmp/`touch PWNED`",
    "/tmp/a;touch PWNED",
    "/tmp/a && touch PWNED",
    "/tmp/*",
    "/tmp/$HOME",
]


def test_command_is_valid_sh_with_everything():
    cmd = HostState().command(
        paths=tuple(NASTY),
        packages=("nginx", "redis-server"),
        units=("nginx.service", "litellm@4001.service"),
        users=("litellm", "redis"),
        texts=(LIVE_FILE, ROTATION_JOURNAL),
    )
    result = sh(cmd, "-n")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", NASTY)
def test_command_is_valid_sh_for_each_nasty_path(path):
    result = sh(HostState().command(paths=(path,)), "-n")
    assert result.returncode == 0, (path, result.stderr)


def test_command_without_packages_units_users_texts_calls_no_such_tool():
    cmd = HostState().command(paths=("/etc/hostname",))
    assert "dpkg-query" not in cmd
    assert "systemctl" not in cmd
    assert "id -u" not in cmd
    assert "head -c" not in cmd
    assert "/proc/meminfo" in cmd
    assert cmd.endswith("; true")


def test_command_with_packages_asks_dpkg_for_each_quoted():
    cmd = HostState().command(packages=("nginx", "libc6"))
    assert cmd.count("dpkg-query") == 1
    assert "'pkg ${Package} ${db:Status-Abbrev}\\n'" in cmd
    assert "nginx libc6" in cmd


def test_command_with_units_asks_systemctl_per_unit():
    cmd = HostState().command(units=("nginx.service", "redis-server.service"))
    assert cmd.count("systemctl is-active") == 2
    assert cmd.count("systemctl is-enabled") == 2


def test_command_with_nothing_prints_only_memory(tmp_path):
    result = sh(HostState().command())
    assert result.returncode == 0, result.stderr
    state = HostState().process(lines_of(result.stdout))
    meminfo = Path("/proc/meminfo").read_text()
    kb = int(next(line for line in meminfo.splitlines() if line.startswith("MemTotal:")).split()[1])
    assert state["mem_mb"] == kb // 1024
    assert state["paths"] == {} and state["texts"] == {} and state["users"] == set()
    assert [line for line in lines_of(result.stdout) if not line.startswith("mem ")] == []


def test_command_run_on_a_real_directory(tmp_path):
    d = tmp_path / "conf dir"
    d.mkdir()
    d.chmod(0o750)
    f = tmp_path / "it's a \"file\" $(x).txt"
    content = b"server 127.0.0.1:4001 max_fails=0;\nline two\n"
    f.write_bytes(content)
    f.chmod(0o640)
    link = tmp_path / "link to file"
    link.symlink_to(f)
    dirlink = tmp_path / "dir'link \"$(x)\""
    dirlink.symlink_to(d)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    empty.chmod(0o600)
    missing = tmp_path / "missing file"
    paths = [str(p) for p in (d, f, link, dirlink, empty, missing)]

    cmd = HostState().command(paths=tuple(paths))
    result = sh(cmd)
    assert result.returncode == 0, result.stderr
    state = HostState().process(lines_of(result.stdout))

    assert set(state["paths"]) == {str(d), str(f), str(link), str(dirlink), str(empty)}
    assert state["paths"][str(f)] == ("f", "640", *owner(f), hashlib.sha1(content).hexdigest())
    assert state["paths"][str(empty)] == ("f", "600", *owner(empty), hashlib.sha1(b"").hexdigest())
    assert state["paths"][str(d)] == ("d", "750", *owner(d), "-")
    # A symlink is reported as a link even when it points to a file or directory.
    assert state["paths"][str(link)] == ("l", "-", "-", "-", "-")
    assert state["paths"][str(dirlink)] == ("l", "-", "-", "-", "-")
    # The mode string is what stat prints: octal without leading zero, equal to the real mode.
    assert int(state["paths"][str(f)][1], 8) == stat.S_IMODE(os.stat(f).st_mode)
    # Nothing outside the asked paths was touched or created by the quoting.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(p).name for p in paths[:-1])


def test_command_quoting_never_executes_path_contents(tmp_path):
    # Run in tmp_path: an injected `touch PWNED` would create tmp_path/PWNED.
    names = ["$(touch PWNED)", "`touch PWNED`", "x; touch PWNED", "x' ; touch PWNED; '", 'x" ; touch PWNED; "']
    paths = [f"{tmp_path}/{n}" for n in names]
    for p, n in zip(paths, names):  # real files, so every branch (stat, sha1sum) runs on each name
        Path(p).write_text(n)
        Path(p).chmod(0o644)
    # ...and the same names as a directory and as a symlink (the other two branches).
    dirs = [f"{tmp_path}/dir {n}" for n in names]
    links = [f"{tmp_path}/link {n}" for n in names]
    for dpath, lpath, p in zip(dirs, links, paths):
        os.mkdir(dpath, 0o755)
        os.chmod(dpath, 0o755)
        os.symlink(p, lpath)
    cmd = HostState().command(paths=tuple(paths + dirs + links))
    result = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "PWNED").exists()
    state = HostState().process(lines_of(result.stdout))
    assert set(state["paths"]) == set(paths + dirs + links)
    for dpath, lpath in zip(dirs, links):
        assert state["paths"][dpath] == ("d", "755", *owner(Path(dpath)), "-")
        assert state["paths"][lpath] == ("l", "-", "-", "-", "-")
    for p, n in zip(paths, names):
        assert state["paths"][p] == ("f", "644", *owner(Path(p)), hashlib.sha1(n.encode()).hexdigest())


def test_command_texts_and_users_run(tmp_path):
    live = tmp_path / "live.json"
    live.write_text(json.dumps({"ports": [4002], "secrets": {"openai_key": {"version": 2}}}, indent=1) + "\n")
    fp = tmp_path / "openai_key.fp"
    fp.write_text("0123456789abcdef\n")
    me = pwd.getpwuid(os.getuid()).pw_name
    cmd = HostState().command(
        texts=(str(live), str(fp), str(tmp_path / "rotation.json")),
        users=(me, "no-such-user-gatekit-test"),
    )
    result = sh(cmd)
    assert result.returncode == 0, result.stderr  # missing text/user must not fail the command
    state = HostState().process(lines_of(result.stdout))
    assert state["users"] == {me}
    assert set(state["texts"]) == {str(live), str(fp)}  # a missing file has no text at all
    assert state["texts"][str(fp)] == "0123456789abcdef"
    assert json.loads(state["texts"][str(live)]) == {"ports": [4002], "secrets": {"openai_key": {"version": 2}}}
    assert PAIR.live_set(state["texts"][str(live)]) == (4002,)


def test_command_text_is_cut_at_4096_bytes(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("x" * 5000)
    result = sh(HostState().command(texts=(str(big),)))
    state = HostState().process(lines_of(result.stdout))
    assert state["texts"][str(big)] == "x" * 4096


def test_command_exit_status_is_zero_even_when_the_last_check_fails(tmp_path):
    result = sh(HostState().command(paths=(str(tmp_path / "nope"),), texts=(str(tmp_path / "nope"),)))
    assert result.returncode == 0
    assert [line for line in lines_of(result.stdout) if not line.startswith("mem ")] == []


def test_process_text_path_with_spaces_round_trips():
    path = "/tmp/a dir/with spaces.json"
    state = parse(f"text {len(path)} {path} {{\"port\": 4002}} ")
    assert state["texts"] == {path: '{"port": 4002}'}
