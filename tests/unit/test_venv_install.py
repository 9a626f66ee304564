"""The venv install script (templates/litellm/venv-install.sh.j2), run for real with fake python3/pip/uv.

What must hold: a build goes into its own directory and its stamp appears only once it is complete; a failed or
cut-off build is redone from scratch; uv comes from its own hash-locked file and is removed afterwards; the index
arguments reach the installer; the live venv (a symlink) moves only to a complete build, keeping one previous.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gatekit import render
from gatekit.defaults import DEFAULTS
from gatekit.roles.venv import pip_args as _pip_args, switch_venv_commands, uv_args as _uv_args

FAKE_PYTHON = """#!/bin/sh
# fake python3. `-m venv [--without-pip] DIR`: a venv whose pip (unless --without-pip) appends its arguments
# to $LOG. `python3 WHEEL/pip ARGS`: pip run from its wheel, the same fake pip.
case "$1" in
    */pip) echo "pip-from $1" >> "$LOG"; shift; exec "$FAKE_DIR/fake-pip" "$@";;
esac
[ "$1" = -m ] && [ "$2" = venv ] || exit 2
if [ "$3" = --without-pip ]; then dir=$4; note=" without-pip"; else dir=$3; note=""; fi
mkdir -p "$dir/bin"
cp "$FAKE_DIR/fake-venv-python" "$dir/bin/python3"
[ -n "$note" ] || cp "$FAKE_DIR/fake-pip" "$dir/bin/pip"
echo "venv $dir$note" >> "$LOG"
"""

FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$LOG"
[ -n "${PIP_FAIL:-}" ] && exit 1
# pip --target DIR: leave a fake uv there, as the uv wheel does
prev=""
for a in "$@"; do
    if [ "$prev" = --target ]; then mkdir -p "$a/bin"; cp "$FAKE_DIR/fake-uv" "$a/bin/uv"; echo "$a" > "$FAKE_DIR/uv-dir"; fi
    prev="$a"
done
exit 0
"""

FAKE_UV = """#!/bin/sh
echo "uv $* link=${UV_LINK_MODE:-}" >> "$LOG"
[ -n "${UV_FAIL:-}" ] && exit 1
exit 0
"""


@pytest.fixture
def fakes(tmp_path):
    d = tmp_path / "fakes"
    (d / "bin").mkdir(parents=True)
    for name, text in (("bin/python3", FAKE_PYTHON), ("fake-pip", FAKE_PIP), ("fake-uv", FAKE_UV),
                       ("fake-venv-python", "#!/bin/sh\nexit 0\n")):
        (d / name).write_text(text)
        (d / name).chmod(0o755)
    return d


def script(tmp_path, installer: str, settings: dict | None = None, stamp: str = "abc123") -> Path:
    s = {**DEFAULTS, **(settings or {})}
    wheels = tmp_path / "python-wheels"  # like python3-pip-whl: the newest pip wheel is used
    wheels.mkdir(exist_ok=True)
    for name in ("pip-9.0.1-py2.py3-none-any.whl", "pip-23.0.1-py3-none-any.whl", "setuptools-66.1.1-py3-none-any.whl"):
        (wheels / name).write_text("")
    text = render.template(
        "litellm/venv-install.sh.j2",
        venv=str(tmp_path / "venv"),
        new=str(tmp_path / "venvs" / stamp),
        installer=installer,
        pip_args=_pip_args(s),
        uv_args=_uv_args(s),
        lock="/opt/litellm/requirements.lock",
        uv_lock="/opt/litellm/uv.lock",
        pip_wheels=str(wheels),
        stamp=stamp,
    )
    path = tmp_path / f"gatekit-venv-install-{stamp}"
    path.write_text(text)
    path.chmod(0o700)
    return path


def run(path: Path, fakes: Path, **env) -> tuple[subprocess.CompletedProcess, list[str]]:
    log = fakes / "log"
    log.unlink(missing_ok=True)
    full = {"PATH": f"{fakes / 'bin'}:/usr/bin:/bin", "LOG": str(log), "FAKE_DIR": str(fakes), **env}
    res = subprocess.run(["sh", str(path)], env=full, capture_output=True, text=True, timeout=30)
    return res, (log.read_text().splitlines() if log.exists() else [])


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_fresh_build_writes_the_stamp_last(tmp_path, fakes, installer):
    res, log = run(script(tmp_path, installer), fakes)
    assert res.returncode == 0, res.stderr
    new = tmp_path / "venvs" / "abc123"
    assert (new / ".gatekit-stamp").read_text() == "abc123\n"
    assert not (tmp_path / "venv").exists()  # the live symlink is the deploy's to switch, not the build's
    if installer == "uv":
        assert log[0] == f"venv {new} without-pip"  # uv fills it: no pip of its own
        assert log[1] == f"pip-from {tmp_path / 'python-wheels' / 'pip-23.0.1-py3-none-any.whl'}/pip"
        assert log[2].startswith("pip ") and "--target" in log[2] and "-r /opt/litellm/uv.lock" in log[2]
        assert "--require-hashes" in log[2]
        uv = log[3]
        assert uv.startswith("uv pip install --python " + str(new / "bin" / "python3"))
        assert "--require-hashes" in uv and "--compile-bytecode" in uv and "-r /opt/litellm/requirements.lock" in uv
        assert uv.endswith("link=copy")
        assert not Path((fakes / "uv-dir").read_text().strip()).exists()  # the throwaway uv is gone
    else:
        assert log[0] == f"venv {new}"
        assert len(log) == 2 and "-r /opt/litellm/requirements.lock" in log[1] and "--require-hashes" in log[1]


@pytest.mark.parametrize("installer,fail", [("uv", "UV_FAIL"), ("pip", "PIP_FAIL")])
def test_failed_build_leaves_no_stamp_and_the_next_run_starts_clean(tmp_path, fakes, installer, fail):
    path = script(tmp_path, installer)
    new = tmp_path / "venvs" / "abc123"
    res, _ = run(path, fakes, **{fail: "1"})
    assert res.returncode != 0
    assert not (new / ".gatekit-stamp").exists()
    (new / "half-written").write_text("x")  # what a cut-off build leaves behind
    if installer == "uv":
        assert not Path((fakes / "uv-dir").read_text().strip()).exists()  # removed even on failure

    res, log = run(path, fakes)
    assert res.returncode == 0, res.stderr
    assert log[0].startswith(f"venv {new}")  # rebuilt from scratch
    assert not (new / "half-written").exists()
    assert (new / ".gatekit-stamp").read_text() == "abc123\n"


def test_a_finished_build_is_not_redone(tmp_path, fakes):
    path = script(tmp_path, "uv")
    run(path, fakes)
    res, log = run(path, fakes)
    assert res.returncode == 0 and log == []


# --- the switch: wait for the build, then point the live symlink at it ---------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl show -P X UNIT -> the unit finished; the build's result comes from $RESULT
case "$1 $2 $3" in
    "show -P ActiveState") echo "${STATE:-active}";;
    "show -P Result") echo "${RESULT:-success}";;
    "show -P InvocationID") echo 0123abcd;;
    *) echo "systemctl $*" >> "$LOG";;
esac
"""
FAKE_JOURNALCTL = """#!/bin/sh
echo "journal: uv: no wheel for foo==1.0"
"""


def switch(tmp_path, fakes, stamp: str, move_live: bool = True, **env) -> subprocess.CompletedProcess:
    (fakes / "bin" / "systemctl").write_text(FAKE_SYSTEMCTL)
    (fakes / "bin" / "journalctl").write_text(FAKE_JOURNALCTL)
    for name in ("systemctl", "journalctl"):
        (fakes / "bin" / name).chmod(0o755)
    venv, new = str(tmp_path / "venv"), str(tmp_path / "venvs" / stamp)
    full = {"PATH": f"{fakes / 'bin'}:/usr/bin:/bin", "LOG": str(fakes / "log"), **env}
    for cmd in switch_venv_commands(venv, new, stamp, move_live=move_live):
        res = subprocess.run(["sh", "-c", cmd], env=full, capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            return res
    return res


def build(tmp_path, stamp: str):
    d = tmp_path / "venvs" / stamp
    (d / "bin").mkdir(parents=True)
    (d / ".gatekit-stamp").write_text(stamp + "\n")


def test_switch_points_the_live_venv_at_the_build_and_keeps_one_previous(tmp_path, fakes):
    venv = tmp_path / "venv"
    for stamp in ("s1", "s2", "s3"):
        build(tmp_path, stamp)
        res = switch(tmp_path, fakes, stamp)
        assert res.returncode == 0, res.stderr
        assert venv.is_symlink() and os.readlink(venv) == str(tmp_path / "venvs" / stamp)
        assert (venv / ".gatekit-stamp").read_text() == stamp + "\n"
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == ["s2", "s3"]  # live + previous


def test_on_a_serving_gateway_the_build_waits_beside_the_live_venv_and_a_switch_back_finds_the_old_one(tmp_path, fakes):
    """Serving: `venv` stays on the live set's build (the switch moves it); kept are the new build and the live one,
    so that a switch back to the live one's release reuses it. Builds that are neither are removed."""
    venv = tmp_path / "venv"
    for stamp in ("s1", "s0"):
        build(tmp_path, stamp)
    assert switch(tmp_path, fakes, "s1").returncode == 0  # live: s1 (s0 kept as the previous)
    build(tmp_path, "s2")
    res = switch(tmp_path, fakes, "s2", move_live=False)
    assert res.returncode == 0, res.stderr
    assert os.readlink(venv) == str(tmp_path / "venvs" / "s1")
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == ["s1", "s2"]
    venv.unlink()
    venv.symlink_to(tmp_path / "venvs" / "s2")  # the switch to s2 happened (gatekit-rotate record)
    res = switch(tmp_path, fakes, "s1", move_live=False)  # and back: s1's build is there, nothing removed
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "venvs").iterdir()) == ["s1", "s2"]


def test_failed_build_leaves_the_live_venv_alone_and_shows_why(tmp_path, fakes):
    venv = tmp_path / "venv"
    build(tmp_path, "s1")
    switch(tmp_path, fakes, "s1")
    (tmp_path / "venvs" / "s2").mkdir()  # a build that never finished: no stamp
    res = switch(tmp_path, fakes, "s2", RESULT="exit-code")
    assert res.returncode != 0
    assert "venv install failed (result: exit-code)" in res.stderr and "live venv is unchanged" in res.stderr
    assert "no wheel for foo" in res.stderr  # the build's own log, for the operator
    assert os.readlink(venv) == str(tmp_path / "venvs" / "s1")


def test_switch_replaces_a_plain_venv_directory_from_older_deploys(tmp_path, fakes):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    build(tmp_path, "s1")
    res = switch(tmp_path, fakes, "s1")
    assert res.returncode == 0, res.stderr
    assert venv.is_symlink() and not (tmp_path / "venv.old").exists()


@pytest.mark.parametrize(
    "settings,pip_has,uv_has,uv_lacks",
    [
        ({"litellm_pip_find_links": "http://10.0.0.1:8080/"},
         ["--no-index", "--find-links http://10.0.0.1:8080/", "--trusted-host 10.0.0.1"],
         ["--no-index", "--find-links http://10.0.0.1:8080/"], ["--trusted-host"]),
        ({"litellm_pip_index_url": "HTTP://Mirror.example:8080/simple"},  # the scheme in capitals is plain HTTP too
         ["--index-url HTTP://Mirror.example:8080/simple", "--trusted-host mirror.example"],
         ["--index-url HTTP://Mirror.example:8080/simple"], ["--trusted-host"]),
        ({"litellm_pip_index_url": "https://mirror.example/simple"},
         ["--index-url https://mirror.example/simple"], ["--index-url https://mirror.example/simple"],
         ["--trusted-host", "--no-index"]),
        ({}, [], [], ["--index-url", "--find-links", "--no-index"]),
    ],
)
def test_index_settings_reach_both_installers(tmp_path, fakes, settings, pip_has, uv_has, uv_lacks):
    res, log = run(script(tmp_path, "uv", settings), fakes)
    assert res.returncode == 0, res.stderr
    pip_line, uv_line = log[2], log[3]
    for part in pip_has:
        assert part in pip_line
    for part in uv_has:
        assert part in uv_line
    for part in uv_lacks:
        assert part not in uv_line


def test_script_is_valid_sh_for_both_installers(tmp_path):
    for installer in ("uv", "pip"):
        path = script(tmp_path, installer)
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0
        assert os.access(path, os.X_OK)


def test_uv_build_without_debians_pip_wheel_fails_clearly(tmp_path, fakes):
    path = script(tmp_path, "uv")
    for wheel in (tmp_path / "python-wheels").glob("pip-*.whl"):
        wheel.unlink()
    res, _ = run(path, fakes)
    assert res.returncode != 0 and "install python3-pip-whl" in res.stderr
    assert not (tmp_path / "venvs" / "abc123" / ".gatekit-stamp").exists()


def test_lock_file_resolution_and_refusals(tmp_path, monkeypatch):
    from pyinfra.api.exceptions import PyinfraError

    from gatekit.defaults import DEFAULTS
    from gatekit.roles.venv import lock_file

    s = dict(DEFAULTS)
    # The kit's own locks, found through the package wherever it is installed.
    assert lock_file(s).name == "litellm.lock" and lock_file({**s, "litellm_database": True}).name == "litellm-db.lock"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.lock").write_text("litellm==1.106.2 --hash=sha256:" + "0" * 64 + "\n")
    assert lock_file({**s, "litellm_requirements": "mine.lock"}) == tmp_path / "mine.lock"
    with pytest.raises(PyinfraError, match=r"litellm_requirements: .*missing.lock: No such file.*Fix:"):
        lock_file({**s, "litellm_requirements": "missing.lock"})
    (tmp_path / "bad.lock").write_text("litellm==1.82.7 --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(PyinfraError, match="compromised release"):
        lock_file({**s, "litellm_requirements": str(tmp_path / "bad.lock")})
    (tmp_path / "nohash.lock").write_text("litellm==1.106.2\n")
    with pytest.raises(PyinfraError, match="no hashes"):
        lock_file({**s, "litellm_requirements": "nohash.lock"})


@pytest.mark.parametrize("os_release, refused", [
    ('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)" NAME="Debian GNU/Linux" VERSION_ID="12" ID=debian ', None),
    ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)" NAME="Debian GNU/Linux" VERSION_ID="13" ID=debian ', None),
    ('PRETTY_NAME="Ubuntu 24.04.1 LTS" VERSION_ID="24.04" ID=ubuntu ID_LIKE=debian ', "'Ubuntu 24.04.1 LTS'"),
    ('PRETTY_NAME="Debian GNU/Linux 11 (bullseye)" VERSION_ID="11" ID=debian ', "'Debian GNU/Linux 11 (bullseye)'"),
    ('PRETTY_NAME="Debian GNU/Linux trixie/sid" ID=debian ', "'Debian GNU/Linux trixie/sid'"),  # testing: no VERSION_ID
    ("", "'no /etc/os-release'"),
], ids=["debian12", "debian13", "ubuntu", "debian11", "sid", "none"])
def test_a_gateway_release_no_lock_covers_is_refused_naming_what_is(os_release, refused):
    from gatekit.roles.venv import release_problem

    problem = release_problem(os_release)
    if refused is None:
        assert problem == ""
    else:
        assert problem.startswith(refused + ": no gatekit lock covers its Python. Fix: run gateways on Debian 12 "
                                  "(bookworm, Python 3.11) or Debian 13 (trixie, Python 3.13)."), problem
