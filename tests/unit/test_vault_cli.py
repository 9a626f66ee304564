"""`gatekit secrets ...` through click's CliRunner and as a real subprocess."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekit import vault
from gatekit.cli import dump_plain, main, parse_plain

REPO = Path(__file__).resolve().parents[2]
OPENAI = "sk-openai-SECRET-0123456789"
ANTHROPIC = "sk-ant-SECRET-9876543210"
ENV_VARS = ("GATEKIT_VAULT_KEY_FILE", "GATEKIT_VAULT_PASSPHRASE", "GATEKIT_VAULT_NEW_PASSPHRASE", "EDITOR")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def run(*args: str, input: str | bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(main, ["secrets", *args], input=input, env=env)


def ok(*args: str, **kw):
    result = run(*args, **kw)
    assert result.exit_code == 0, result.stderr
    return result


def fails(code: int, *args: str, **kw) -> str:
    """Run a command that must fail: exit code, one stderr line, nothing on stdout, no secrets."""
    result = run(*args, **kw)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert OPENAI not in result.stderr and ANTHROPIC not in result.stderr
    return lines[0]


@pytest.fixture
def kv(tmp_path):
    """A key-file vault with two secrets; returns the common --vault/--key-file args."""
    vp, kf = tmp_path / "inventories" / "prod" / "secrets.enc.yaml", tmp_path / "prod.key"
    result = ok("init", "--vault", str(vp), "--key-file", str(kf))
    assert "created" in result.stdout and kf.stat().st_mode & 0o777 == 0o600
    args = ("--vault", str(vp), "--key-file", str(kf))
    ok("set", "openai_key", *args, input=OPENAI + "\n")
    ok("set", "anthropic_key", *args, input=ANTHROPIC)
    return vp, kf, args


def test_init_set_get_list_verify(kv):
    vp, kf, args = kv
    assert ok("get", "openai_key", *args).stdout == OPENAI + "\n"
    assert ok("get", "anthropic_key", *args).stdout == ANTHROPIC + "\n"
    assert ok("list", "--vault", str(vp)).stdout == "anthropic_key\nopenai_key\n"
    key_id = vault.key_id(vault.resolve_key(vp, kf))
    assert ok("verify", *args).stdout == f"ok: 2 secrets, key id {key_id}\n"
    assert OPENAI not in vp.read_text()


def test_set_reads_stdin_and_strips_one_newline(kv):
    _, _, args = kv
    ok("set", "multi", *args, input="line1\nline2\n\n")
    assert ok("get", "multi", *args).stdout == "line1\nline2\n\n"
    ok("set", "crlf", *args, input="v\r\n")
    assert ok("get", "crlf", *args).stdout == "v\n"
    ok("set", "uni", *args, input="ключ 🔑")
    assert ok("get", "uni", *args).stdout == "ключ 🔑\n"
    fails(2, "set", "empty", *args, input="")
    fails(2, "set", "Bad-Name", *args, input="v")


def test_key_file_from_env(kv):
    vp, kf, _ = kv
    assert ok("get", "openai_key", "--vault", str(vp), env={"GATEKIT_VAULT_KEY_FILE": str(kf)}).stdout == OPENAI + "\n"


def test_init_errors(kv, tmp_path):
    vp, kf, _ = kv
    assert "already exists" in fails(2, "init", "--vault", str(vp), "--key-file", str(kf))
    fails(2, "init", "--vault", str(tmp_path / "n.yaml"))
    fails(2, "init", "--vault", str(tmp_path / "n.yaml"), "--key-file", str(kf), "--passphrase-env")
    fails(2, "init", "--vault", str(tmp_path / "n.yaml"), "--passphrase-env")  # env unset, no terminal


def test_passphrase_vault(tmp_path):
    vp = str(tmp_path / "s.enc.yaml")
    env = {"GATEKIT_VAULT_PASSPHRASE": "correct horse"}
    ok("init", "--vault", vp, "--passphrase-env", env=env)
    ok("set", "openai_key", "--vault", vp, input=OPENAI, env=env)
    assert ok("get", "openai_key", "--vault", vp, env=env).stdout == OPENAI + "\n"
    assert "wrong key" in fails(3, "get", "openai_key", "--vault", vp, env={"GATEKIT_VAULT_PASSPHRASE": "nope"})
    assert "GATEKIT_VAULT_PASSPHRASE" in fails(2, "get", "openai_key", "--vault", vp)


def test_wrong_key(kv, tmp_path):
    vp, _, _ = kv
    other = tmp_path / "other.key"
    ok("init", "--vault", str(tmp_path / "o.yaml"), "--key-file", str(other))
    line = fails(3, "get", "openai_key", "--vault", str(vp), "--key-file", str(other))
    assert str(vp) in line and "wrong key" in line


def test_missing_key(kv):
    vp, _, _ = kv
    assert "--key-file" in fails(2, "get", "openai_key", "--vault", str(vp))


def test_key_file_mode_0644_refused(kv):
    _, kf, args = kv
    kf.chmod(0o644)
    assert f"chmod 600 {kf}" in fails(2, "get", "openai_key", *args)


def test_tampered_file(kv):
    vp, _, args = kv
    data = yaml.safe_load(vp.read_text())
    raw = bytearray(base64.b64decode(data["secrets"]["openai_key"]))
    raw[-1] ^= 1
    vp.write_text(vp.read_text().replace(data["secrets"]["openai_key"], base64.b64encode(raw).decode()))
    line = fails(4, "get", "anthropic_key", *args)
    assert line == (
        f"error: {vp}: MAC check failed: the file was modified outside `gatekit secrets` or is corrupt; "
        "restore it from git"
    )
    fails(4, "verify", *args)


def test_truncated_unknown_version_missing_secret(kv):
    vp, _, args = kv
    fails(7, "get", "nope", *args)
    original = vp.read_text()
    vp.write_text(original[: len(original) // 2])
    assert "truncated" in fails(5, "get", "openai_key", *args)
    fails(5, "list", "--vault", str(vp))
    vp.write_text(original.replace("gatekit_vault: 1", "gatekit_vault: 2"))
    assert "unknown vault format version" in fails(6, "verify", *args)
    fails(6, "list", "--vault", str(vp))


def test_missing_vault_option_is_a_usage_error():
    assert run("list").exit_code == 2


def test_rekey_to_key_file_then_passphrase(kv, tmp_path):
    vp, kf, args = kv
    new = tmp_path / "new.key"
    assert "->" in ok("rekey", *args, "--new-key-file", str(new)).stdout
    assert new.stat().st_mode & 0o777 == 0o600
    fails(3, "get", "openai_key", *args)
    new_args = ("--vault", str(vp), "--key-file", str(new))
    assert ok("get", "openai_key", *new_args).stdout == OPENAI + "\n"
    ok("rekey", *new_args, env={"GATEKIT_VAULT_NEW_PASSPHRASE": "fresh pass"})
    fails(3, "get", "openai_key", *new_args)
    env = {"GATEKIT_VAULT_PASSPHRASE": "fresh pass"}
    assert ok("verify", "--vault", str(vp), env=env).stdout.startswith("ok: 2 secrets, key id ")
    fails(2, "rekey", "--vault", str(vp), env=env)  # no new key given


# --- edit --------------------------------------------------------------------

FAKE_EDITOR = textwrap.dedent(
    """
    import json, os, sys, yaml
    path = sys.argv[1]
    plan = json.loads(os.environ["FAKE_EDIT"])
    with open(os.environ["FAKE_EDIT_LOG"], "w") as log:
        json.dump({"path": path, "mode": os.stat(path).st_mode & 0o777,
                   "dir_mode": os.stat(os.path.dirname(path)).st_mode & 0o777,
                   "text": open(path).read()}, log)
    open(path + ".swp", "w").write("editor swap file")
    if "raw" in plan:
        open(path, "w").write(plan["raw"])
    else:
        data = yaml.safe_load(open(path)) or {}
        data.update(plan.get("set", {}))
        for name in plan.get("delete", []):
            data.pop(name)
        open(path, "w").write(yaml.safe_dump(data, allow_unicode=True))
    sys.exit(plan.get("exit", 0))
    """
)


@pytest.fixture
def edit(kv, tmp_path):
    vp, kf, args = kv
    script, log = tmp_path / "fake_editor.py", tmp_path / "edit_log.json"
    script.write_text(FAKE_EDITOR)

    def do(plan: dict, code: int = 0):
        env = {"EDITOR": f"{sys.executable} {script}", "FAKE_EDIT": json.dumps(plan), "FAKE_EDIT_LOG": str(log)}
        result = None
        if code:
            fails(code, "edit", *args, env=env)
        else:
            result = ok("edit", *args, env=env)
        seen = json.loads(log.read_text())
        assert not os.path.exists(seen["path"]) and not os.path.exists(os.path.dirname(seen["path"]))
        return result, seen

    return do


def test_edit_changes_adds_and_removes(kv, edit):
    vp, kf, args = kv
    kept = next(line for line in vp.read_text().splitlines() if "anthropic_key" in line)
    result, seen = edit({"set": {"openai_key": "sk-rotated", "new_key": "fresh ✓"}, "delete": []})
    assert seen["mode"] == 0o600 and seen["dir_mode"] == 0o700
    if os.path.isdir("/dev/shm"):
        assert seen["path"].startswith("/dev/shm/")
    assert f"openai_key: {OPENAI}" in seen["text"]
    assert "1 added, 1 changed, 0 removed" in result.stdout
    assert vault.read_secrets(vp, vault.resolve_key(vp, kf)) == {
        "anthropic_key": ANTHROPIC,
        "new_key": "fresh ✓",
        "openai_key": "sk-rotated",
    }
    assert kept in vp.read_text().splitlines()  # untouched value keeps its exact ciphertext

    result, _ = edit({"delete": ["new_key"]})
    assert "0 added, 0 changed, 1 removed" in result.stdout
    assert ok("list", "--vault", str(vp)).stdout == "anthropic_key\nopenai_key\n"


def test_edit_without_changes_leaves_file_alone(kv, edit):
    vp, _, _ = kv
    before = vp.read_bytes()
    edit({})
    assert vp.read_bytes() == before


@pytest.mark.parametrize(
    "plan",
    [
        {"exit": 1, "set": {"openai_key": "x"}},
        {"raw": f"openai_key: [{OPENAI}\n"},
        {"raw": f"- {OPENAI}\n"},
        {"raw": "Bad-Name: x\n"},
        {"raw": "port: 5432\n"},
    ],
    ids=["editor fails", "bad yaml", "not a mapping", "bad name", "not a string"],
)
def test_edit_errors_leave_vault_unchanged_and_shred(kv, edit, plan):
    vp, _, _ = kv
    before = vp.read_bytes()
    edit(plan, code=2)
    assert vp.read_bytes() == before


def test_edit_on_tampered_vault_never_opens_editor(kv):
    vp, _, args = kv
    vp.write_text(vp.read_text().replace("anthropic_key", "anthropic_kez"))
    fails(4, "edit", *args, env={"EDITOR": "false"})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(vault.NAME_RE, fullmatch=True), st.text(), max_size=5))
def test_edit_text_roundtrips_any_value(values):
    assert parse_plain(dump_plain(values)) == values


# --- as a real process -----------------------------------------------------------


def gatekit(*args: str, input: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ENV_VARS} | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "gatekit.cli", "secrets", *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=60,
    )


def test_subprocess_exit_codes_and_no_tracebacks(tmp_path):
    vp, kf = tmp_path / "secrets.enc.yaml", tmp_path / "k.key"
    args = ("--vault", str(vp), "--key-file", str(kf))
    assert gatekit("init", *args).returncode == 0
    assert gatekit("set", "openai_key", *args, input=OPENAI + "\n").returncode == 0
    got = gatekit("get", "openai_key", *args)
    assert (got.returncode, got.stdout) == (0, OPENAI + "\n")

    def check(code: int, *cmd: str, **kw):
        proc = gatekit(*cmd, **kw)
        assert proc.returncode == code, proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr and OPENAI not in proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1

    check(7, "get", "nope", *args)
    check(2, "get", "openai_key", "--vault", str(vp))
    other = tmp_path / "other.key"
    vault.init_vault(tmp_path / "o.yaml", other, None)
    check(3, "get", "openai_key", "--vault", str(vp), "--key-file", str(other))
    good = vp.read_text()
    vp.write_text(good.replace("openai_key", "openai_kez"))
    check(4, "get", "openai_kez", *args)
    vp.write_text(good[:-20])
    check(5, "verify", *args)
    vp.write_text(good.replace("gatekit_vault: 1", "gatekit_vault: 9"))
    check(6, "list", "--vault", str(vp))
    vp.write_text(good)
    kf.chmod(0o640)
    check(2, "get", "openai_key", *args)


def test_set_misuses_never_echo_the_value(kv):
    """A value typed on the command line (as an extra argument, or in place of the name) is refused
    without being repeated in the error."""
    _, _, args = kv
    value = "gk-test-typed-value-" + secrets.token_hex(8)  # obviously fake, unique per run
    for argv in (("set", "openai_key", value, *args), ("set", value, *args)):
        result = run(*argv, input="")
        assert result.exit_code != 0
        assert value not in result.stderr and value not in result.stdout, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
