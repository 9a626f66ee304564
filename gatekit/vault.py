"""Encrypted secrets vault: one YAML file per environment, committed to git.

Each value is sealed on its own (AES-256-GCM, associated data = its path) so
that changing one secret changes one line of the diff. Per-value AEAD cannot
notice values being added, removed or swapped, so a MAC over the whole
document covers that, and it is checked before anything is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hashlib
import hmac
import json
import os
import re
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from gatekit.onhost.probe import fingerprint  # noqa: F401 - names a secret without revealing it

FORMAT_VERSION = 1
# fullmatch, not ^...$: "$" also matches before a trailing newline.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1

USAGE, WRONG_KEY, TAMPERED, CORRUPT, BAD_VERSION, NOT_FOUND = 2, 3, 4, 5, 6, 7

_FIELDS = {"gatekit_vault", "key_id", "kdf", "secrets", "mac"}
_HEADER = "# gatekit encrypted secrets: change with `gatekit secrets set/edit`, never by hand\n"


class VaultError(Exception):
    """A problem the operator can fix; the message never contains secret values."""

    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class _Doc:
    key_id: str
    kdf: dict | None
    secrets: dict[str, str]  # name -> base64 text exactly as stored, so untouched lines stay identical
    mac: bytes = b""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


# --- encoding and crypto ---------------------------------------------------


def _b64e(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _b64d(text: object) -> bytes | None:
    # Canonical base64 only: otherwise some edits to a stored string would decode to the same bytes.
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if _b64e(raw) == text else None


def _subkey(key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"gatekit-vault-" + purpose).derive(key)


def _derive(passphrase: str, kdf: dict) -> bytes:
    # NFC so the same passphrase typed on macOS and Linux gives the same key.
    secret = unicodedata.normalize("NFC", passphrase).encode()
    return Scrypt(salt=_b64d(kdf["salt"]), length=32, n=kdf["n"], r=kdf["r"], p=kdf["p"]).derive(secret)


def _mac(key: bytes, doc: _Doc) -> bytes:
    canonical = json.dumps(
        {"gatekit_vault": FORMAT_VERSION, "key_id": doc.key_id, "kdf": doc.kdf, "secrets": sorted(doc.secrets.items())},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return hmac.new(_subkey(key, b"mac"), canonical, hashlib.sha256).digest()


def _encrypt(key: bytes, name: str, value: str) -> str:
    nonce = os.urandom(12)
    return _b64e(nonce + AESGCM(_subkey(key, b"enc")).encrypt(nonce, value.encode(), f"secrets/{name}".encode()))


def _decrypt(key: bytes, path: Path, name: str, blob: str) -> str:
    raw = _b64d(blob)
    try:
        return AESGCM(_subkey(key, b"enc")).decrypt(raw[:12], raw[12:], f"secrets/{name}".encode()).decode()
    except (InvalidTag, UnicodeDecodeError):
        raise VaultError(
            f"{path}: secret {name!r} does not decrypt: the file is corrupt; restore it from git", TAMPERED
        ) from None


# --- file format -----------------------------------------------------------


def _corrupt(path: Path, what: str) -> VaultError:
    return VaultError(f"{path}: {what}: the file is truncated or corrupt; restore it from git", CORRUPT)


def _valid_kdf(kdf: object) -> bool:
    if not isinstance(kdf, dict) or set(kdf) != {"name", "salt", "n", "r", "p"}:
        return False
    n, r, p = kdf["n"], kdf["r"], kdf["p"]
    salt = _b64d(kdf["salt"])
    # Bounded so an edited file cannot make scrypt eat the machine's memory.
    return (
        kdf["name"] == "scrypt"
        and salt is not None
        and len(salt) >= 16
        and all(type(x) is int for x in (n, r, p))
        and 2**14 <= n <= 2**20
        and n & (n - 1) == 0
        and 1 <= r <= 16
        and 1 <= p <= 4
        and n * r <= 2**21
    )


def _valid_entry(name: object, blob: object) -> bool:
    raw = _b64d(blob)
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None and raw is not None and len(raw) >= 12 + 16


def _load(path: Path) -> _Doc:
    """Parse and structurally check a vault; no key needed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VaultError(f"{path}: no such vault; create it with `gatekit secrets init`", USAGE) from None
    except IsADirectoryError:
        raise VaultError(f"{path}: a directory, not a vault file; point `vault:` at the vault's file", USAGE) from None
    except PermissionError:
        raise VaultError(f"{path}: permission denied; make the vault readable by the user running gatekit", USAGE) from None
    try:
        from gatekit.spec import UniqueKeyLoader  # a key given twice is refused, never silently overridden

        data = yaml.load(raw, Loader=UniqueKeyLoader)
    except Exception:  # PyYAML also raises ValueError/TypeError from its scalar constructors
        raise _corrupt(path, "not valid YAML") from None
    if not isinstance(data, dict) or data.get("gatekit_vault") is None:
        raise _corrupt(path, "not a gatekit vault")
    version = data["gatekit_vault"]
    if type(version) is not int or version != FORMAT_VERSION:
        raise VaultError(
            f"{path}: unknown vault format version {str(version)[:20]!r} (this gatekit reads version "
            f"{FORMAT_VERSION}); upgrade gatekit",
            BAD_VERSION,
        )
    if not {"key_id", "secrets", "mac"} <= set(data) <= _FIELDS:
        raise _corrupt(path, "missing or unexpected fields")
    kid, secrets, mac = data["key_id"], data["secrets"], _b64d(data["mac"])
    if not isinstance(kid, str) or not re.fullmatch(r"[0-9a-f]{16}", kid):
        raise _corrupt(path, "malformed key_id")
    if "kdf" in data and not _valid_kdf(data["kdf"]):
        raise _corrupt(path, "malformed or unsupported kdf")
    if not isinstance(secrets, dict) or not all(_valid_entry(n, b) for n, b in secrets.items()):
        raise _corrupt(path, "malformed secrets")
    if mac is None or len(mac) != 32:
        raise _corrupt(path, "malformed mac")
    return _Doc(kid, data.get("kdf"), dict(secrets), mac)


def _open(path: Path, key: bytes) -> _Doc:
    """Load and authenticate; after this every ciphertext is one we wrote."""
    doc = _load(path)
    if key_id(key) != doc.key_id:
        raise VaultError(
            f"{path}: wrong key: the vault was sealed with key id {doc.key_id}, the given key is {key_id(key)}; "
            "use the matching key file or passphrase",
            WRONG_KEY,
        )
    if not hmac.compare_digest(_mac(key, doc), doc.mac):
        raise VaultError(
            f"{path}: MAC check failed: the file was modified outside `gatekit secrets` or is corrupt; "
            "restore it from git",
            TAMPERED,
        )
    return doc


def _dump(doc: _Doc) -> str:
    data: dict = {"gatekit_vault": FORMAT_VERSION, "key_id": doc.key_id}
    if doc.kdf is not None:
        data["kdf"] = doc.kdf
    data["secrets"] = dict(sorted(doc.secrets.items()))
    data["mac"] = _b64e(doc.mac)
    # Huge width: one secret per line, never folded, so diffs stay one line per change.
    return _HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=2**31)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _save(path: Path, key: bytes, doc: _Doc) -> None:
    doc.mac = _mac(key, doc)
    _atomic_write(path, _dump(doc))


def _check_name(name: object) -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        # The name is not repeated: what was typed as a name may be a secret value.
        raise VaultError(
            "invalid secret name (not shown, in case it is a value): use a lowercase letter, then up to 63 of "
            "a-z, 0-9, _", USAGE
        )
    return name


# --- keys ------------------------------------------------------------------


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VaultError(f"{path}: key file not found; check --key-file / GATEKIT_VAULT_KEY_FILE", USAGE) from None
    if mode & 0o077:
        raise VaultError(
            f"{path}: key file is accessible by group/others (mode {mode & 0o777:o}); run `chmod 600 {path}`", USAGE
        )
    key = _b64d(path.read_bytes().decode("ascii", "replace").strip())
    if key is None or len(key) != 32:
        raise VaultError(f"{path}: not a gatekit key file (expected 32 bytes, base64 on one line)", USAGE)
    return key


def _create_key_file(path: Path) -> bytes:
    key = os.urandom(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_b64e(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def _new_key(key_file: Path | None, passphrase: str | None) -> tuple[bytes, dict | None]:
    """Key for a new or rekeyed vault: an existing/new key file, else a passphrase with a fresh salt."""
    if key_file is not None:
        key_file = Path(key_file)
        return (_read_key_file(key_file) if key_file.exists() else _create_key_file(key_file)), None
    kdf = {"name": "scrypt", "salt": _b64e(os.urandom(16)), "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
    return _derive(passphrase, kdf), kdf


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # an empty variable counts as unset


def resolve_key(vault_path: Path, key_file: Path | None = None, passphrase: str | None = None) -> bytes:
    """The vault's key: key file (arg, then GATEKIT_VAULT_KEY_FILE) wins over a passphrase
    (arg, then GATEKIT_VAULT_PASSPHRASE, then a prompt when stdin is a terminal)."""
    vault_path = Path(vault_path)
    key_file = key_file or _env("GATEKIT_VAULT_KEY_FILE")
    if key_file:
        return _read_key_file(Path(key_file))
    doc = _load(vault_path)
    if doc.kdf is None:
        raise VaultError(
            f"{vault_path}: no key: this vault uses a key file; pass --key-file or set GATEKIT_VAULT_KEY_FILE", USAGE
        )
    passphrase = passphrase or _env("GATEKIT_VAULT_PASSPHRASE")
    if not passphrase and sys.stdin is not None and sys.stdin.isatty():
        passphrase = getpass.getpass(f"passphrase for {vault_path}: ")
    if not passphrase:
        raise VaultError(
            f"{vault_path}: no key: set GATEKIT_VAULT_PASSPHRASE (or run on a terminal to be prompted)", USAGE
        )
    return _derive(passphrase, doc.kdf)


# --- operations ------------------------------------------------------------


def init_vault(vault_path: Path, key_file: Path | None, passphrase: str | None) -> bytes:
    """Create an empty vault; creates key_file (0600) if it does not exist. Returns the key."""
    vault_path = Path(vault_path)
    if vault_path.exists():
        raise VaultError(f"{vault_path}: vault already exists; use `gatekit secrets rekey` to change its key", USAGE)
    if key_file is None and not passphrase:
        raise VaultError(f"{vault_path}: no key source: pass --key-file F (created if missing) or --passphrase-env")
    key, kdf = _new_key(key_file, passphrase)
    vault_path.parent.mkdir(parents=True, exist_ok=True)
    _save(vault_path, key, _Doc(key_id(key), kdf, {}))
    return key


def list_names(vault_path: Path) -> list[str]:
    return sorted(_load(Path(vault_path)).secrets)


def read_secrets(vault_path: Path, key: bytes) -> dict[str, str]:
    vault_path = Path(vault_path)
    doc = _open(vault_path, key)
    return {name: _decrypt(key, vault_path, name, blob) for name, blob in sorted(doc.secrets.items())}


def get_secret(vault_path: Path, key: bytes, name: str) -> str:
    vault_path = Path(vault_path)
    doc = _open(vault_path, key)
    if _check_name(name) not in doc.secrets:
        raise VaultError(f"{vault_path}: no secret named {name!r}; `gatekit secrets list` shows the names", NOT_FOUND)
    return _decrypt(key, vault_path, name, doc.secrets[name])


def set_secret(vault_path: Path, key: bytes, name: str, value: str) -> bool:
    """Add or replace one secret; other lines stay byte-identical. Returns False if nothing changed."""
    added, changed, _ = update_secrets(vault_path, key, {name: value}, drop_missing=False)
    return bool(added or changed)


def update_secrets(
    vault_path: Path, key: bytes, values: dict[str, str], drop_missing: bool = True
) -> tuple[list[str], list[str], list[str]]:
    """Make the vault hold `values` (plus the others when not drop_missing), re-encrypting only
    new or changed values. Returns the (added, changed, removed) names."""
    vault_path = Path(vault_path)
    doc = _open(vault_path, key)  # authenticate first so a tampered file is never re-MACed
    for name in values:
        _check_name(name)
    old = doc.secrets
    new = {} if drop_missing else dict(old)
    added, changed = [], []
    for name, value in values.items():
        if name in old and _decrypt(key, vault_path, name, old[name]) == value:
            new[name] = old[name]
            continue
        (changed if name in old else added).append(name)
        new[name] = _encrypt(key, name, value)
    removed = sorted(set(old) - set(new))
    if added or changed or removed:
        doc.secrets = new
        _save(vault_path, key, doc)
    return sorted(added), sorted(changed), removed


def rekey(
    vault_path: Path, old_key: bytes, new_key_file: Path | None = None, new_passphrase: str | None = None
) -> bytes:
    """Re-encrypt everything under a new key file (created if missing) or passphrase. Returns the new key."""
    vault_path = Path(vault_path)
    if new_key_file is None and not new_passphrase:
        raise VaultError(f"{vault_path}: no new key: pass --new-key-file F or set GATEKIT_VAULT_NEW_PASSPHRASE")
    values = read_secrets(vault_path, old_key)
    key, kdf = _new_key(new_key_file, new_passphrase)
    _save(vault_path, key, _Doc(key_id(key), kdf, {n: _encrypt(key, n, v) for n, v in values.items()}))
    return key


def verify(vault_path: Path, key: bytes) -> int:
    """Check the MAC and that every value decrypts; returns the number of secrets."""
    return len(read_secrets(vault_path, key))
