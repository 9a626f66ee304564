"""Credential staging (roles/credentials.py), shared by deploy and rotation: the commands run for real under sh
with a fake systemd-creds; uploads are written as pyinfra would write them.

What must hold: the plaintext never outlives the command that encrypts it (also when encryption fails); the
encrypted file and its fingerprint appear only on success; the deploy swaps the new credential in and keeps
the previous one; nothing secret is in a command line.
"""

from __future__ import annotations

import subprocess

import pytest
from pyinfra.api import FileUploadCommand

from gatekit.onhost.probe import fingerprint
from gatekit.onhost.layout import Layout
from gatekit.roles import credentials

SECRET = "sk-test-credential-9f8e7d6c5b4a"

FAKE_CREDS = """#!/bin/sh
# systemd-creds encrypt --name=NAME IN OUT: "encrypts" by prefixing; fails when $CREDS_FAIL is set
[ -n "${CREDS_FAIL:-}" ] && { echo "systemd-creds: no TPM" >&2; exit 1; }
{ echo "ENCRYPTED($2)"; rev "$3"; } > "$4"
"""


@pytest.fixture
def host_dirs(tmp_path, monkeypatch):
    creds, stage, bin_dir = tmp_path / "creds", tmp_path / "run", tmp_path / "bin"
    creds.mkdir()
    bin_dir.mkdir()
    (bin_dir / "systemd-creds").write_text(FAKE_CREDS)
    (bin_dir / "systemd-creds").chmod(0o755)
    return tmp_path


def layout(tmp_path) -> Layout:
    return Layout(gatekit_etc=str(tmp_path), stage_dir=str(tmp_path / "run"))


def run(commands, tmp_path, **env) -> tuple[int, list[str]]:
    """Execute an operation's commands in order, as pyinfra would; stop at the first failure."""
    shown = []
    for cmd in commands:
        if isinstance(cmd, FileUploadCommand):
            with open(cmd.dest, "w") as fh:
                fh.write(cmd.src.getvalue())
            continue
        shown.append(cmd)
        res = subprocess.run(["sh", "-c", cmd], env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", **env},
                             capture_output=True, text=True, timeout=30)
        if res.returncode != 0:
            return res.returncode, shown
    return 0, shown


def test_deploy_encrypts_swaps_in_and_keeps_the_previous(host_dirs):
    creds = host_dirs / "creds"
    (creds / "openai_key.cred").write_text("old")
    rc, shown = run(credentials.encrypt_credentials._inner(layout(host_dirs), {"openai_key": SECRET}), host_dirs)
    assert rc == 0
    assert (creds / "openai_key.cred").read_text().startswith("ENCRYPTED(--name=openai_key)")
    assert (creds / "openai_key.cred").stat().st_mode & 0o777 == 0o600
    assert (creds / "openai_key.cred.prev").read_text() == "old"
    assert (creds / "openai_key.fp").read_text().strip() == fingerprint(SECRET)
    assert not list((host_dirs / "run").iterdir())  # the plaintext is gone
    assert not [c for c in shown if SECRET in c]


def test_failed_encryption_removes_the_plaintext_and_changes_nothing(host_dirs):
    creds = host_dirs / "creds"
    (creds / "openai_key.cred").write_text("old")
    (creds / "openai_key.fp").write_text("oldfp\n")
    rc, _ = run(credentials.encrypt_credentials._inner(layout(host_dirs), {"openai_key": SECRET}), host_dirs, CREDS_FAIL="1")
    assert rc != 0
    assert not list((host_dirs / "run").iterdir())
    assert (creds / "openai_key.cred").read_text() == "old" and (creds / "openai_key.fp").read_text() == "oldfp\n"
    assert not (creds / "openai_key.cred.new").exists() and not (creds / "openai_key.fp.new").exists()


def test_rotation_stages_beside_the_live_credential(host_dirs):
    creds = host_dirs / "creds"
    (creds / "openai_key.cred").write_text("live")
    L = layout(host_dirs)
    cmds = [f"install -d -m 700 {L.stage_dir}", *credentials.encrypt_commands(L, "openai_key", SECRET, ".next")]
    rc, _ = run(cmds, host_dirs)
    assert rc == 0
    assert (creds / "openai_key.cred").read_text() == "live"  # swapped later by gatekit-rotate
    assert (creds / "openai_key.cred.next").read_text().startswith("ENCRYPTED(--name=openai_key)")
    assert (creds / "openai_key.fp.next").read_text().strip() == fingerprint(SECRET)
