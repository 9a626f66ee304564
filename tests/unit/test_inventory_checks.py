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


# --- --data rotate= / role=: refused while the inventory loads, before any host is contacted -----------
@pytest.mark.parametrize("argv, expected", [
    (["inv.py", "deploy.py", "--data", "rotate=openai_key"], {"rotate": "openai_key"}),
    (["--data=role=nginx", "inv.py", "roles/run.py"], {"role": "nginx"}),
    (["-y", "--data", "rotate=a,b", "--data", "x=1=2"], {"rotate": "a,b", "x": "1=2"}),
    (["--data"], {}),
    (["--data", "novalue"], {}),
])
def test_cli_data_reads_pyinfras_data_arguments(argv, expected):
    from gatekit.inventory import cli_data

    assert cli_data(argv) == expected


@pytest.mark.parametrize("args, needle", [
    (["--data", "rotate=opnai_key"], "'opnai_key' is not a secret the gateways use"),
    (["--data", "rotate=openai_key,../../etc"], "'../../etc' is not a secret"),
    (["--data", "rotate=,"], "no secret named"),
    (["--data", "role=ngnix"], "'ngnix' is not a role"),
    (["--data", "role=litellm\nrm -rf /"], "is not a role"),
    (["--data", "litellm_workers=0"], "litellm_workers: settings cannot be given with --data"),
    (["--data=litellm_egress_allow=0.0.0.0/0"], "litellm_egress_allow: settings cannot be given with --data"),
])
def test_a_bad_rotate_or_role_stops_the_inventory_before_any_host(env, monkeypatch, args, needle):
    spec, _, _ = env
    monkeypatch.setattr("sys.argv", ["/usr/bin/pyinfra", "inv.py", "rotate_keys.py", *args])
    with pytest.raises(PyinfraError) as exc:
        groups("inv.py", str(spec), HOSTS)
    assert needle in str(exc.value) and "Fix: " in str(exc.value), str(exc.value)


def test_good_rotate_and_role_values_load(env, monkeypatch):
    spec, _, _ = env
    for args in (["--data", "rotate=openai_key,litellm_master_key"], ["--data", "role=postgres"]):
        monkeypatch.setattr("sys.argv", ["/usr/bin/pyinfra", "inv.py", "x.py", *args])
        assert groups("inv.py", str(spec), HOSTS)["gateways"]
    monkeypatch.setattr("sys.argv", ["/usr/bin/pyinfra", "inv.py", "rotate_keys.py"])
    monkeypatch.setenv("GATEKIT_ROTATE", "not_a_secret")
    with pytest.raises(PyinfraError, match="not_a_secret"):
        groups("inv.py", str(spec), HOSTS)


# --- host and group data: every wrong value is a one-line problem, checked over the spec's settings ------------


@pytest.mark.parametrize("entry", [("gw1", {"private_address": "10.0.0.11", "memory_mb": "4096"}), ("gw1",), "gw1",
                                   ("gw1", ["10.0.0.11"]), ("gw1", {"private_address": 123}),
                                   ("gw1", {"private_address": "10.0.0.11", "litellm_ports": "4001"}),
                                   ("gw1", {"private_address": "10.0.0.11", "nginx_server_name": ["gw.example"]})])
def test_a_malformed_host_stops_the_inventory_with_one_line_problems(env, entry):
    spec, _, _ = env
    with pytest.raises(PyinfraError) as exc:
        groups("inv.py", str(spec), {**HOSTS, "gateways": [entry]})
    head, *lines = str(exc.value).splitlines()
    assert head == "invalid gatekit input:" and lines
    for line in lines:
        assert line.startswith("  inv.py: gateways") and "Fix:" in line, line


def test_group_data_settings_are_checked(env):
    spec, _, _ = env
    with pytest.raises(PyinfraError) as exc:
        groups("inv.py", str(spec), HOSTS, data={"ssh_user": "root", "litellm_workers": "4"})
    assert "inv.py: data: settings.litellm_workers: expected int, got '4'" in str(exc.value)


def test_host_settings_are_checked_over_the_spec_settings(env):
    import yaml

    spec, _, _ = env
    data = yaml.safe_load(spec.read_text())
    data["settings"].update(litellm_memory_high="3G", litellm_memory_max="4G")
    spec.write_text(yaml.safe_dump(data))
    gw = ("gw1", {"private_address": "10.0.0.11", "litellm_memory_high": "2G", "memory_mb": 8192})
    assert groups("inv.py", str(spec), {**HOSTS, "gateways": [gw]})["gateways"]  # 2G < the spec's 4G
    gw = ("gw1", {"private_address": "10.0.0.11", "litellm_memory_max": "2G"})
    with pytest.raises(PyinfraError, match=r"gateways: gw1: settings.litellm_memory_high: MemoryHigh \(3G\) must be below"):
        groups("inv.py", str(spec), {**HOSTS, "gateways": [gw]})
