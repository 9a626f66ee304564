"""Client keys: who may call the gateway, kept as hashes and limits in a file beside the spec.

A key is shown once when it is made. Only its SHA-256 is kept: in the keys file (committed, one block per
key, diff-friendly) and in the table a deploy ships to each gateway, where gatekit's LiteLLM custom-auth
hook (gatekit/onhost/keyauth.py) looks requests up by it. A key has 256 bits of entropy, so a plain
SHA-256 is enough: there is nothing to brute-force, and a lookup costs one hash per request.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from gatekit.spec import GatewaySpec, SpecError, _pydantic_problems, read_yaml

KEY_PREFIX = "gk-"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
NAME_HINT = "1-63 characters: lowercase letters, digits, '.', '_', '-', starting with a letter or digit"
KEY_RE = re.compile(r"^gk-[A-Za-z0-9_-]{43}$")
MAX_RPM = 10_000_000
MAX_TPM = 10_000_000_000
MAX_BUDGET_USD = 1_000_000_000.0
HEADER = (
    "# gatekit client keys: SHA-256 hashes and limits only (a key is shown once, when made).\n"
    "# Managed with `gatekit keys add|revoke|rotate`; commit this file. A deploy ships it to the gateways.\n"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Entry(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = Field(min_length=1)
    rpm: StrictInt | None = Field(default=None, ge=1, le=MAX_RPM)
    tpm: StrictInt | None = Field(default=None, ge=1, le=MAX_TPM)
    budget_usd: float | None = Field(default=None, gt=0, le=MAX_BUDGET_USD, allow_inf_nan=False, strict=True)
    expires: dt.date | None = Field(default=None, strict=True)
    created: dt.date | None = Field(default=None, strict=True)
    revoked: dt.date | None = Field(default=None, strict=True)


class _File(_Strict):
    version: Literal[1]
    keys: dict[str, _Entry] = Field(default_factory=dict)


@dataclass
class ClientKey:
    name: str
    sha256: str
    models: list[str]
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    expires: dt.date | None = None
    created: dt.date | None = None
    revoked: dt.date | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def expired(self, today: dt.date) -> bool:
        return self.expires is not None and today > self.expires


def new_key() -> str:
    """A fresh client key: 32 random bytes, URL-safe, with a prefix that says where it belongs."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def name_problem(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return f"{str(name)[:40]!r} is not a valid key name. Fix: use {NAME_HINT}"
    return ""


def _model_problems(path: Path, name: str, models: list[str], spec: GatewaySpec) -> list[str]:
    known = {m.name for m in spec.models} | set(spec.aliases)
    problems = []
    for m in models:
        if m not in known:
            problems.append(
                f"{path}: keys.{name}.models: {str(m)[:80]!r} is not a model or alias of {spec.path}. "
                f"Fix: use one of {', '.join(sorted(known))}."
            )
    if len(set(models)) != len(models):
        problems.append(f"{path}: keys.{name}.models: a model is listed twice. Fix: list each once.")
    return problems


def parse_keys(data: object, path: Path, spec: GatewaySpec) -> dict[str, ClientKey]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError([f"{path}: (top level): expected a mapping with version and keys. Fix: see the README."])
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(path, exc)) from None
    problems, by_hash = [], {}
    for name, e in parsed.keys.items():
        bad = name_problem(name)
        if bad:
            problems.append(f"{path}: keys: {bad}.")
            continue
        problems += _model_problems(path, name, e.models, spec)
        if e.sha256 in by_hash:
            problems.append(f"{path}: keys.{name}.sha256: the same as keys.{by_hash[e.sha256]}'s. "
                            f"Fix: `gatekit keys rotate {name}` to give it a key of its own.")
        by_hash[e.sha256] = name
    if problems:
        raise SpecError(problems)
    return {name: ClientKey(name=name, **e.model_dump()) for name, e in parsed.keys.items()}


def load_keys(spec: GatewaySpec) -> dict[str, ClientKey]:
    """The spec's client keys ({} when its keys file does not exist), validated against the spec."""
    path = spec.keys_path
    if not path.exists() and not path.is_symlink():
        return {}
    return parse_keys(read_yaml(path, "keys", "create it with `gatekit keys add`"), path, spec)


def dump_keys(keys: dict[str, ClientKey]) -> str:
    entries = {}
    for name in sorted(keys):
        k = keys[name]
        e = {"sha256": k.sha256, "models": list(k.models)}
        for field in ("rpm", "tpm", "budget_usd", "expires", "created", "revoked"):
            if getattr(k, field) is not None:
                e[field] = getattr(k, field)
        entries[name] = e
    return HEADER + yaml.safe_dump({"version": 1, "keys": entries}, sort_keys=False, default_flow_style=None)


def save_keys(path: Path, keys: dict[str, ClientKey]) -> None:
    """Atomically replace the keys file (it holds hashes only: readable like the spec)."""
    text = dump_keys(keys)
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def allowed_models(spec: GatewaySpec, models: list[str]) -> list[str]:
    """What a key listing `models` may ask for: those names, and every alias that points at one of them."""
    allowed = set(models) | {alias for alias, target in spec.aliases.items() if target in models}
    return sorted(allowed)


def expires_at(day: dt.date) -> str:
    """A key is valid through its expiry date (UTC): it stops working when the next day begins."""
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc).isoformat()


def host_table(spec: GatewaySpec, keys: dict[str, ClientKey]) -> str:
    """The table a gateway serves from: active keys by hash, with what each may do. Deterministic JSON."""
    table = {}
    for k in keys.values():
        if not k.active:
            continue
        table[k.sha256] = {
            "name": k.name,
            "models": allowed_models(spec, k.models),
            "rpm": k.rpm,
            "tpm": k.tpm,
            "budget_usd": k.budget_usd,
            "expires_at": expires_at(k.expires) if k.expires else None,
        }
    models = sorted({m.name for m in spec.models} | set(spec.aliases))  # usage rows name only these
    return json.dumps({"version": 1, "models": models, "keys": table}, sort_keys=True, indent=1) + "\n"
