"""The venv install script (templates/litellm/venv-install.sh.j2), run for real with fake python3/pip/uv.

What must hold: the stamp appears only after a complete install; a failed or cut-off install leaves a marker
and the next run starts from an empty venv; uv comes from its own hash-locked file and is removed afterwards;
the index arguments reach the installer.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gatekit import render
from gatekit.defaults import DEFAULTS
from roles.litellm import _pip_args, _uv_args

FAKE_PYTHON = """#!/bin/sh
# fake `python3 -m venv DIR`: a venv whose pip appends its arguments to $LOG
[ "$1" = -m ] && [ "$2" = venv ] || exit 2
mkdir -p "$3/bin"
cp "$FAKE_DIR/fake-venv-python" "$3/bin/python3"
cp "$FAKE_DIR/fake-pip" "$3/bin/pip"
echo "venv $3" >> "$LOG"
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
    text = render.template(
        "litellm/venv-install.sh.j2",
        venv=str(tmp_path / "venv"),
        installer=installer,
        pip_args=_pip_args(s),
        uv_args=_uv_args(s),
        lock="/opt/litellm/requirements.lock",
        uv_lock="/opt/litellm/uv.lock",
        stamp=stamp,
    )
    path = tmp_path / "gatekit-venv-install"
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
def test_fresh_install_writes_the_stamp_last(tmp_path, fakes, installer):
    res, log = run(script(tmp_path, installer), fakes)
    assert res.returncode == 0, res.stderr
    venv = tmp_path / "venv"
    assert log[0] == f"venv {venv}"
    assert (venv / ".gatekit-stamp").read_text() == "abc123\n"
    assert not (venv / ".gatekit-installing").exists()
    if installer == "uv":
        assert log[1].startswith("pip ") and "--target" in log[1] and "-r /opt/litellm/uv.lock" in log[1]
        assert "--require-hashes" in log[1]
        uv = log[2]
        assert uv.startswith("uv pip install --python " + str(venv / "bin" / "python3"))
        assert "--require-hashes" in uv and "--compile-bytecode" in uv and "-r /opt/litellm/requirements.lock" in uv
        assert uv.endswith("link=copy")
        assert not Path((fakes / "uv-dir").read_text().strip()).exists()  # the throwaway uv is gone
    else:
        assert len(log) == 2 and "-r /opt/litellm/requirements.lock" in log[1] and "--require-hashes" in log[1]


@pytest.mark.parametrize("installer,fail", [("uv", "UV_FAIL"), ("pip", "PIP_FAIL")])
def test_failed_install_leaves_no_stamp_and_the_next_run_starts_clean(tmp_path, fakes, installer, fail):
    path = script(tmp_path, installer)
    venv = tmp_path / "venv"
    res, _ = run(path, fakes, **{fail: "1"})
    assert res.returncode != 0
    assert not (venv / ".gatekit-stamp").exists()
    assert (venv / ".gatekit-installing").exists()
    (venv / "half-written").write_text("x")  # what a cut-off install leaves behind
    if installer == "uv":
        assert not Path((fakes / "uv-dir").read_text().strip()).exists()  # removed even on failure

    res, log = run(path, fakes)
    assert res.returncode == 0, res.stderr
    assert log[0] == f"venv {venv}"  # recreated from scratch
    assert not (venv / "half-written").exists()
    assert (venv / ".gatekit-stamp").read_text() == "abc123\n"


def test_upgrade_keeps_the_venv_and_drops_the_old_stamp_first(tmp_path, fakes):
    venv = tmp_path / "venv"
    run(script(tmp_path, "uv", stamp="old"), fakes)
    (venv / "site-packages-marker").write_text("x")
    path = script(tmp_path, "uv", stamp="new")
    res, log = run(path, fakes, UV_FAIL="1")
    assert res.returncode != 0
    assert not (venv / ".gatekit-stamp").exists()  # never the old stamp over a half-upgraded venv
    assert not any(line.startswith("venv ") for line in log)  # the existing venv was upgraded in place
    res, log = run(path, fakes)
    assert (venv / ".gatekit-stamp").read_text() == "new\n"


@pytest.mark.parametrize(
    "settings,pip_has,uv_has,uv_lacks",
    [
        ({"litellm_pip_find_links": "http://10.0.0.1:8080/"},
         ["--no-index", "--find-links http://10.0.0.1:8080/", "--trusted-host 10.0.0.1"],
         ["--no-index", "--find-links http://10.0.0.1:8080/"], ["--trusted-host"]),
        ({"litellm_pip_index_url": "https://mirror.example/simple"},
         ["--index-url https://mirror.example/simple"], ["--index-url https://mirror.example/simple"],
         ["--trusted-host", "--no-index"]),
        ({}, [], [], ["--index-url", "--find-links", "--no-index"]),
    ],
)
def test_index_settings_reach_both_installers(tmp_path, fakes, settings, pip_has, uv_has, uv_lacks):
    res, log = run(script(tmp_path, "uv", settings), fakes)
    assert res.returncode == 0, res.stderr
    pip_line, uv_line = log[1], log[2]
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
