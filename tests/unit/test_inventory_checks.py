"""What an inventory checks while it loads, before pyinfra connects to any host: the hosts, the spec,
and the vault's key and MAC."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError

from gatekit import vault
from gatekit.inventory import groups

EXAMPLE = Path(__file__).resolve().parents[2] / "inventories" / "example.gateway.yaml"
NAMES = ("openai_key", "anthropic_key", "litellm_master_key", "redis_password", "postgres_password")
HOSTS = {"gateways": [("gw1", {"private_address": "10.0.0.11"})], "redis": [("d1", {"private_address": "10.0.0.10"})],
         "postgres": [("d1", {"private_address": "10.0.0.10"})]}


@pytest.fixture
def env(tmp_path, monkeypatch):
    spec = tmp_path / "x.gateway.yaml"
    spec.write_text(EXAMPLE.read_text())
    path, key = tmp_path / "example.secrets.enc.yaml", tmp_path / "vault.key"
    vault.init_vault(path, key_file=key, passphrase=None)
    k = vault.resolve_key(path, key_file=key)
    for name in NAMES:
        vault.set_secret(path, k, name, f"sk-secret-value-of-{name}")
    monkeypatch.delenv("GATEKIT_VAULT_PASSPHRASE", raising=False)
    monkeypatch.setenv("GATEKIT_VAULT_KEY_FILE", str(key))
    return spec, path, key


def test_a_good_inventory_loads(env):
    spec, _, _ = env
    g = groups("inv.py", str(spec), HOSTS)
    assert [name for name, _ in g["gateways"][0]] == ["gw1"]


def test_a_wrong_vault_key_stops_the_inventory(env, tmp_path, monkeypatch):
    spec, _, _ = env
    other = tmp_path / "other.key"
    vault.init_vault(tmp_path / "other.enc.yaml", key_file=other, passphrase=None)
    monkeypatch.setenv("GATEKIT_VAULT_KEY_FILE", str(other))
    with pytest.raises(PyinfraError, match="wrong key") as exc:
        groups("inv.py", str(spec), HOSTS)
    assert "sk-secret-value" not in str(exc.value)


def test_a_tampered_vault_stops_the_inventory(env):
    spec, path, _ = env
    text = path.read_text()
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip().startswith("openai_key:"))
    name, _, blob = lines[i].partition(": ")
    lines[i] = f"{name}: {blob[:-4]}AAAA"  # another ciphertext, same shape
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PyinfraError, match="MAC check failed|malformed") as exc:
        groups("inv.py", str(spec), HOSTS)
    assert "sk-secret-value" not in str(exc.value)
