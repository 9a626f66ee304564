"""Library-level tests for gatekit.vault: format, crypto, every error class, properties."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gatekit import vault
from gatekit.vault import VaultError

OPENAI = "sk-openai-SECRET-0123456789"
ANTHROPIC = "sk-ant-SECRET-9876543210"
VALUES = {"openai_key": OPENAI, "anthropic_key": ANTHROPIC}
ENV_VARS = ("GATEKIT_VAULT_KEY_FILE", "GATEKIT_VAULT_PASSPHRASE", "GATEKIT_VAULT_NEW_PASSPHRASE")
names = st.from_regex(vault.NAME_RE, fullmatch=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


def _make(dirpath: Path, passphrase: str | None = None) -> tuple[Path, Path, bytes]:
    vp, kf = dirpath / "secrets.enc.yaml", dirpath / "vault.key"
    key = vault.init_vault(vp, None if passphrase else kf, passphrase)
    for name, value in VALUES.items():
        vault.set_secret(vp, key, name, value)
    return vp, kf, key


@pytest.fixture
def kv(tmp_path):
    return _make(tmp_path)


def _code(fn, *args) -> VaultError:
    with pytest.raises(VaultError) as info:
        fn(*args)
    for secret in VALUES.values():
        assert secret not in str(info.value)
    return info.value


def _rewrite(vp: Path, change) -> None:
    """Apply `change` to the parsed YAML and write it back without touching the MAC."""
    data = yaml.safe_load(vp.read_text())
    change(data)
    vp.write_text(yaml.safe_dump(data, sort_keys=False, width=2**31))


def _forge(vp: Path, key: bytes, change) -> None:
    """Apply `change` to the stored ciphertexts and re-MAC with the right key, to reach the AEAD layer."""
    doc = vault._load(vp)
    change(doc.secrets)
    vault._save(vp, key, doc)


# --- basics ------------------------------------------------------------------


def test_init_creates_private_key_file_and_empty_vault(tmp_path):
    vp, kf = tmp_path / "inv" / "secrets.enc.yaml", tmp_path / "keys" / "prod.key"
    key = vault.init_vault(vp, kf, None)
    assert kf.stat().st_mode & 0o777 == 0o600
    assert vp.stat().st_mode & 0o777 == 0o600
    assert kf.read_text().count("\n") == 1 and base64.b64decode(kf.read_text().strip()) == key
    assert len(key) == 32
    data = yaml.safe_load(vp.read_text())
    assert data["gatekit_vault"] == 1 and data["secrets"] == {} and "kdf" not in data
    assert data["key_id"] == vault.key_id(key) == hashlib.sha256(key).hexdigest()[:16]
    assert vault.read_secrets(vp, key) == {}
    assert vault.resolve_key(vp, kf) == key


def test_init_reuses_existing_key_file_and_refuses_existing_vault(kv, tmp_path):
    vp, kf, key = kv
    assert vault.init_vault(tmp_path / "other.enc.yaml", kf, None) == key
    assert _code(vault.init_vault, vp, kf, None).exit_code == 2
    assert _code(vault.init_vault, tmp_path / "x.yaml", None, None).exit_code == 2


def test_set_get_list_read(kv):
    vp, _, key = kv
    assert vault.get_secret(vp, key, "openai_key") == OPENAI
    assert vault.read_secrets(vp, key) == VALUES
    assert vault.list_names(vp) == ["anthropic_key", "openai_key"]
    assert vault.verify(vp, key) == 2
    assert OPENAI not in vp.read_text() and ANTHROPIC not in vp.read_text()


def test_set_rewrites_only_the_changed_line(kv):
    vp, _, key = kv
    before = vp.read_text().splitlines()
    assert vault.set_secret(vp, key, "openai_key", "sk-new") is True
    after = vp.read_text().splitlines()
    changed = [a for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and len(changed) == 2
    assert changed[0].strip().startswith("openai_key:") and changed[1].startswith("mac:")
    assert vault.get_secret(vp, key, "openai_key") == "sk-new"
    # Same value again: nothing to do, file untouched.
    raw = vp.read_bytes()
    assert vault.set_secret(vp, key, "openai_key", "sk-new") is False
    assert vp.read_bytes() == raw


def test_writes_are_atomic_and_private(kv):
    vp, _, key = kv
    vault.set_secret(vp, key, "x", "y")
    assert sorted(p.name for p in vp.parent.iterdir()) == ["secrets.enc.yaml", "vault.key"]
    assert vp.stat().st_mode & 0o777 == 0o600


def test_update_secrets_adds_changes_drops(kv):
    vp, _, key = kv
    line = next(x for x in vp.read_text().splitlines() if "anthropic_key" in x)
    added, changed, removed = vault.update_secrets(vp, key, {"anthropic_key": ANTHROPIC, "new_key": "n"})
    assert (added, changed, removed) == (["new_key"], [], ["openai_key"])
    assert vault.read_secrets(vp, key) == {"anthropic_key": ANTHROPIC, "new_key": "n"}
    assert line in vp.read_text().splitlines()


@pytest.mark.parametrize("bad", ["", "A", "1abc", "_a", "a-b", "a" * 65, "abc\n", "ünï"])
def test_invalid_names_refused(kv, bad):
    vp, _, key = kv
    assert _code(vault.set_secret, vp, key, bad, "v").exit_code == 2


def test_fingerprint():
    assert vault.fingerprint("abc") == "ba7816bf8f01cfea"
    assert len(vault.fingerprint(OPENAI)) == 16 and OPENAI not in vault.fingerprint(OPENAI)


# --- keys --------------------------------------------------------------------


def test_resolve_key_sources(kv, tmp_path, monkeypatch):
    vp, kf, key = kv
    assert _code(vault.resolve_key, vp).exit_code == 2  # no key at all
    monkeypatch.setenv("GATEKIT_VAULT_KEY_FILE", str(kf))
    assert vault.resolve_key(vp) == key
    # Key file wins over a passphrase when both are given.
    assert vault.resolve_key(vp, kf, "some passphrase") == key
    monkeypatch.setenv("GATEKIT_VAULT_PASSPHRASE", "some passphrase")
    assert vault.resolve_key(vp) == key
    monkeypatch.delenv("GATEKIT_VAULT_KEY_FILE")
    # A passphrase cannot open a key-file vault: say which key is needed.
    assert "--key-file" in str(_code(vault.resolve_key, vp))
    assert _code(vault.resolve_key, vp, tmp_path / "missing.key").exit_code == 2


def test_key_file_readable_by_others_refused(kv):
    vp, kf, _ = kv
    kf.chmod(0o644)
    err = _code(vault.resolve_key, vp, kf)
    assert err.exit_code == 2 and "chmod 600" in str(err) and str(kf) in str(err)


def test_garbage_key_file_refused(kv):
    vp, kf, _ = kv
    kf.write_text("not a key\n")
    assert _code(vault.resolve_key, vp, kf).exit_code == 2


def test_passphrase_vault(tmp_path, monkeypatch):
    vp, _, key = _make(tmp_path, passphrase="correct horse")
    kdf = yaml.safe_load(vp.read_text())["kdf"]
    assert kdf["name"] == "scrypt" and (kdf["n"], kdf["r"], kdf["p"]) == (2**15, 8, 1)
    assert len(base64.b64decode(kdf["salt"])) == 16
    assert vault.resolve_key(vp, passphrase="correct horse") == key
    monkeypatch.setenv("GATEKIT_VAULT_PASSPHRASE", "correct horse")
    assert vault.resolve_key(vp) == key
    assert vault.read_secrets(vp, key) == VALUES
    assert _code(vault.resolve_key, vp.parent / "none.yaml").exit_code == 2  # no vault


def test_wrong_key_file(kv, tmp_path):
    vp, _, _ = kv
    other = vault.init_vault(tmp_path / "other.yaml", tmp_path / "other.key", None)
    for fn, args in [(vault.read_secrets, ()), (vault.get_secret, ("openai_key",)), (vault.set_secret, ("a", "b"))]:
        err = _code(fn, vp, other, *args)
        assert err.exit_code == 3 and "wrong key" in str(err)


def test_wrong_passphrase(tmp_path):
    vp, _, _ = _make(tmp_path, passphrase="correct horse")
    key = vault.resolve_key(vp, passphrase="wrong horse")
    assert _code(vault.read_secrets, vp, key).exit_code == 3


def test_rekey_to_key_file_and_passphrase(kv, tmp_path):
    vp, _, old = kv
    new = vault.rekey(vp, old, tmp_path / "new.key")
    assert new != old and (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert _code(vault.read_secrets, vp, old).exit_code == 3
    assert vault.read_secrets(vp, vault.resolve_key(vp, tmp_path / "new.key")) == VALUES
    third = vault.rekey(vp, new, new_passphrase="pass phrase")
    assert _code(vault.read_secrets, vp, new).exit_code == 3
    assert vault.read_secrets(vp, vault.resolve_key(vp, passphrase="pass phrase")) == VALUES
    assert third == vault.resolve_key(vp, passphrase="pass phrase")
    assert _code(vault.rekey, vp, third).exit_code == 2  # no new key source


# --- tampering and corruption -------------------------------------------------


def _flip_first_byte(blob: str) -> str:
    raw = bytearray(base64.b64decode(blob))
    raw[20] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


TAMPERINGS = {
    "ciphertext byte": lambda s: s.update(openai_key=_flip_first_byte(s["openai_key"])),
    "moved to another name": lambda s: s.update(other_key=s.pop("openai_key")),
    "added": lambda s: s.update(extra_key=s["openai_key"]),
    "removed": lambda s: s.pop("anthropic_key"),
    "swapped": lambda s: s.update(openai_key=s["anthropic_key"], anthropic_key=s["openai_key"]),
}


@pytest.mark.parametrize("tamper", TAMPERINGS.values(), ids=TAMPERINGS.keys())
def test_tampering_fails_the_mac(kv, tamper):
    vp, _, key = kv
    _rewrite(vp, lambda data: tamper(data["secrets"]))
    for fn, args in [(vault.read_secrets, ()), (vault.get_secret, ("anthropic_key",)), (vault.verify, ())]:
        err = _code(fn, vp, key, *args)
        assert err.exit_code == 4 and "MAC check failed" in str(err) and str(vp) in str(err)
    # set/edit must not launder a tampered file by re-MACing it.
    assert _code(vault.set_secret, vp, key, "new_key", "v").exit_code == 4


@pytest.mark.parametrize("tamper", ["ciphertext byte", "moved to another name", "swapped"])
def test_aead_catches_what_a_forged_mac_lets_through(kv, tamper):
    # Defence in depth: even with a valid MAC, a ciphertext only decrypts under its own name.
    vp, _, key = kv
    _forge(vp, key, TAMPERINGS[tamper])
    err = _code(vault.read_secrets, vp, key)
    assert err.exit_code == 4 and "does not decrypt" in str(err)


def test_every_truncation_is_reported_as_such(kv):
    vp, _, key = kv
    raw = vp.read_bytes()
    for cut in range(len(raw) - 1):  # dropping only the final newline leaves a complete file
        vp.write_bytes(raw[:cut])
        assert _code(vault.read_secrets, vp, key).exit_code == 5, cut
        assert _code(vault.list_names, vp).exit_code == 5, cut


@pytest.mark.parametrize("text", ["", "just text", "- a list", "{{{", "\x00\xff", "gatekit_vault:\n"])
def test_unparseable_files(kv, text):
    vp, _, key = kv
    vp.write_bytes(text.encode("latin-1"))
    assert _code(vault.read_secrets, vp, key).exit_code == 5


@pytest.mark.parametrize("version", ["2", "0", "'1'", "true", "1.0"])
def test_unknown_version(kv, version):
    vp, _, key = kv
    vp.write_text(vp.read_text().replace("gatekit_vault: 1", f"gatekit_vault: {version}"))
    for fn, args in [(vault.read_secrets, (key,)), (vault.list_names, ()), (vault.resolve_key, ())]:
        err = _code(fn, vp, *args)
        assert err.exit_code == 6 and "unknown vault format version" in str(err)


def test_kdf_params_are_bounded(tmp_path):
    # An edited kdf must not make scrypt allocate gigabytes before the key check.
    vp, _, _ = _make(tmp_path, passphrase="pw")
    _rewrite(vp, lambda data: data["kdf"].update(n=2**20, r=16))
    assert _code(vault.resolve_key, vp, None, "pw").exit_code == 5


def test_missing_secret(kv):
    vp, _, key = kv
    err = _code(vault.get_secret, vp, key, "nope")
    assert err.exit_code == 7 and "nope" in str(err)


def test_missing_vault(tmp_path):
    assert _code(vault.list_names, tmp_path / "none.yaml").exit_code == 2


# --- properties ----------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(names, st.text(), max_size=6))
def test_roundtrip_any_unicode_value(values):
    with tempfile.TemporaryDirectory() as d:
        vp = Path(d) / "v.yaml"
        key = vault.init_vault(vp, Path(d) / "k", None)
        for name, value in values.items():
            vault.set_secret(vp, key, name, value)
        for name, value in values.items():
            assert vault.get_secret(vp, key, name) == value
        assert vault.read_secrets(vp, key) == values
        assert vault.list_names(vp) == sorted(values)


@pytest.fixture(scope="module", params=["key_file", "passphrase"])
def sealed(request, tmp_path_factory):
    """(raw bytes, key, plaintext) of a vault of each kind, for mutation tests."""
    vp, _, key = _make(tmp_path_factory.mktemp("v"), passphrase="pw" if request.param == "passphrase" else None)
    return vp.read_bytes(), key, vault.read_secrets(vp, key)


def _check_mutant(raw: bytes, key: bytes, expected: dict) -> None:
    """A mutated file must raise VaultError (nothing else), or read back exactly as before
    (a change to a comment or to insignificant whitespace)."""
    with tempfile.TemporaryDirectory() as d:
        vp = Path(d) / "v.yaml"
        vp.write_bytes(raw)
        try:
            got = vault.read_secrets(vp, key)
        except VaultError:
            got = None
        assert got is None or got == expected
        with contextlib.suppress(VaultError):
            vault.list_names(vp)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_single_byte_change_is_detected(sealed, data):
    raw, key, expected = sealed
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]), label="byte")
    _check_mutant(raw[:pos] + bytes([byte]) + raw[pos + 1 :], key, expected)


def test_every_position_bit_flip_is_detected(sealed):
    raw, key, expected = sealed
    for pos in range(len(raw)):
        for mask in (0x01, 0x20, 0x80):
            _check_mutant(raw[:pos] + bytes([raw[pos] ^ mask]) + raw[pos + 1 :], key, expected)
