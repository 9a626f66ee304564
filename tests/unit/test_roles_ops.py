"""Facts in, operations out (pyinfra's own style of operation tests), for the whole deploy.

deploy.py is collected for every host against facts that are fed, not read: no host, no SSH.

A converged host yields no operation at all: checked against what a real converged lab answered
(tests/unit/fixtures/converged/facts.json, recorded by `python -m lab record-facts`, lab/record_facts.py),
every fact answered from its recorded output through the fact's own process(). A role that declares a
path, content, mode, owner, package or unit the real host does not have yields an operation there.

Drift: an in-memory inventory (gw1, gw2 with non-default paths and ports, data1 with Redis and PostgreSQL)
whose hosts answer what the roles declare, then changed by a test; each kind of drift yields exactly the
operations that repair it, and the handlers it triggers (reload, restart, readiness wait) are the ones
whose `_if` then holds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import gatekit.inventory as gk_inventory
from gatekit.defaults import DEFAULTS
from pyinfra.api.exceptions import PyinfraError

from gatekit.facts import IPFilteringEnforced, PostgresLitellmState
from gatekit.onhost import keyauth
from gatekit.hoststate import OS_RELEASE, Desired, HostState
from gatekit.onhost.probe import fingerprint
from gatekit.onhost.layout import Layout
from gatekit.render import scram_sha256_verifier
from gatekit.roles.venv import VenvBuild
from lab.record_facts import REFRESH, Recording, collect, normalized, output_lines, would_run

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "inventories" / "example.gateway.yaml"
SECRETS = {"openai_key": "sk-test-openai", "anthropic_key": "sk-test-anthropic", "litellm_master_key": "sk-test-master",
           "redis_password": "test-redis-password", "postgres_password": "test-postgres-password"}
GW2 = {"litellm_home": "/srv/gk", "litellm_config_dir": "/srv/gk-etc", "litellm_ports": [4301, 4302], "litellm_workers": 2,
       "nginx_https_port": 8443, "litellm_egress_allow": ["203.0.113.0/24"]}
HOSTS = {
    "gateways": [("gw1", {"private_address": "10.9.0.11"}), ("gw2", {"private_address": "10.9.0.12", **GW2})],
    "redis": [("data1", {"private_address": "10.9.0.10"})],
    "postgres": [("data1", {"private_address": "10.9.0.10"})],
    "monitoring": [("data1", {"private_address": "10.9.0.10"})],
}


# /etc/os-release of a Debian 12 host, as HostState reads a text (newlines as spaces).
DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)" NAME="Debian GNU/Linux" VERSION_ID="12" VERSION="12 (bookworm)" ID=debian '


class FakeHosts:
    """The hosts' state as HostState would read it, built from what the roles declare (the drift tests'
    starting point; that it is what a real host holds is test_a_converged_host_yields_no_operation's job),
    then changed by a test (drift)."""

    def __init__(self):
        self.converged = False
        self.ip_filtering = True  # what IPFilteringEnforced reads on every host
        self.postgres_major = 15  # the PostgreSQL the data host runs or would install (PostgresLitellmState's "major")
        self.declared: dict[str, list[Desired]] = {}
        self.drift: dict[str, dict] = {}  # host -> {"paths": {path: None | tuple}, "units": {...}, ...}

    def host_state(self, host, kwargs) -> dict:
        state = {"mem_mb": 4096, "paths": {}, "packages": set(), "units": {}, "users": set(), "texts": {}}
        if self.converged:
            s = gk_inventory.context(host).settings
            L = Layout.from_settings(s)
            state["packages"] = set(kwargs.get("packages", ()))
            state["units"] = {u: ("active", "enabled") for u in kwargs.get("units", ())}
            state["users"] = set(kwargs.get("users", ()))
            for want in self.declared.get(host.name, []):
                for path, (content, user, group, mode) in want.files.items():
                    state["paths"][path] = ("f", mode, user, group, hashlib.sha1(content.encode()).hexdigest())
                for path, (user, group, mode) in want.dirs.items():
                    state["paths"][path] = ("d", mode, user, group, "-")
            for path in kwargs.get("paths", ()):
                if path.endswith((".cred", ".crt")):
                    state["paths"][path] = ("f", "600", "root", "root", "0")
            texts = {}
            if "gateways" in host.groups:
                texts[L.venv_stamp] = VenvBuild.for_settings(L, s).stamp
            texts.update({L.cred_fingerprint(n): fingerprint(v) for n, v in SECRETS.items()})
            state["texts"] = {t: texts[t] for t in kwargs.get("texts", ()) if t in texts}
        if OS_RELEASE in kwargs.get("texts", ()):  # every host has one, bare or converged: the lab's Debian 12
            state["texts"][OS_RELEASE] = DEBIAN_12
        drift = self.drift.get(host.name, {})
        for kind in ("paths", "units", "texts"):
            for key, value in drift.get(kind, {}).items():
                if value is None:
                    state[kind].pop(key, None)
                else:
                    state[kind][key] = value
        state["packages"] -= set(drift.get("missing_packages", ()))
        return state

    def answer(self, host, cls, kwargs):
        if cls is HostState:
            return self.host_state(host, kwargs)
        if cls is IPFilteringEnforced:
            return self.ip_filtering
        if cls is PostgresLitellmState:
            user = DEFAULTS["postgres_user"]
            return {"role": scram_sha256_verifier(SECRETS["postgres_password"], salt_seed=user), "db": user,
                    "schema": keyauth.SCHEMA_VERSION, "monitor": "prometheus", "major": self.postgres_major}
        raise AssertionError(f"unexpected fact {cls.__name__}: a role read the host outside its one round trip")

    def on_read(self, host, want: Desired):
        self.declared.setdefault(host.name, []).append(want)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    """The example spec beside a real vault holding SECRETS (key file, no passphrase)."""
    from gatekit import vault

    d = tmp_path_factory.mktemp("inv")
    spec = d / SPEC.name
    spec.write_text(SPEC.read_text())
    path = d / "example.secrets.enc.yaml"
    vault.init_vault(path, key_file=d / "vault.key", passphrase=None)
    key = vault.resolve_key(path, key_file=d / "vault.key")
    for name, value in SECRETS.items():
        vault.set_secret(path, key, name, value)
    return spec


@pytest.fixture
def fake(monkeypatch, spec_file):
    hosts = FakeHosts()
    hosts.spec_file = spec_file
    monkeypatch.setenv("GATEKIT_VAULT_KEY_FILE", str(spec_file.with_name("vault.key")))
    monkeypatch.delenv("GATEKIT_VAULT_PASSPHRASE", raising=False)
    monkeypatch.delenv("GATEKIT_ROTATE", raising=False)
    return hosts


def run_deploy(fake: FakeHosts, entry: str = "deploy.py") -> dict[str, list[tuple[str, object]]]:
    """{host: [(operation names, its _if or None, its meta)]}, in order (lab/record_facts.py's collect)."""
    return collect(fake.spec_file, HOSTS, fake.answer, entry=entry, on_read=fake.on_read)


def converge(fake):
    """First pass: an empty state, to learn what the roles declare; then answer as if the host held it."""
    run_deploy(fake)
    fake.converged = True


# ---- a converged host: what a real one answered --------------------------------------------------------
@pytest.fixture(scope="module")
def recorded() -> Recording:
    return Recording.load()


def test_a_converged_host_yields_no_operation(recorded, tmp_path):
    """Every host of the recorded lab (data1, gw1, gw2 with gw2's non-default paths and ports), every fact
    answered from what the host answered once deployed: nothing to do. A failure names what would run and
    the files changed since the recording; when the change was meant, the recording is stale: refresh it
    (`python -m lab record-facts`, as root) and commit it with the change."""
    problems = recorded.problems(tmp_path)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _tampered(recorded: Recording, host: str, fact: str, edit) -> Recording:
    """A copy of the recording whose `host` (its lab name) answered `fact` with edit(lines) instead."""
    rec = recorded.copy()
    name = rec.host_name(host)
    hits = 0
    for e in rec.facts[name]:
        if e["fact"] == fact:
            new = edit(list(e["stdout"]))
            hits += new != e["stdout"]
            e["stdout"] = new
    assert hits, (host, fact, "edit matched no recorded output")
    return rec


def _layout(recorded: Recording, host: str) -> Layout:
    data = next(d for entries in recorded.hosts.values() for n, d in entries if d.get("sandbox_name") == host)
    return Layout.from_settings({**DEFAULTS, **recorded.spec.get("settings", {}),
                                 **{k: v for k, v in data.items() if k in DEFAULTS}})


def _edit_path(path, **changes):
    """Edit the `path ...` line of `path`: mode, user, group or sha1."""
    fields = ("mode", "user", "group", "sha1")

    def edit(lines):
        out = []
        for line in lines:
            parts = line.split(" ", 6)
            if parts[0] == "path" and len(parts) == 7 and parts[6] == path:
                for k, v in changes.items():
                    parts[2 + fields.index(k)] = v
                line = " ".join(parts)
            out.append(line)
        return out

    return edit


def _replace(prefix, new):
    return lambda lines: [new if line.startswith(prefix) else line for line in lines]


def _drop(prefix):
    return lambda lines: [line for line in lines if not line.startswith(prefix)]


SWITCH = "(blue/green + canaries)"
GW1_TURN = "LiteLLM Proxy | Switch wave 1 of 2: gw1 (another gateway's turn)"

# (lab host, fact, edit, operations it then yields there): the recording is what the roles are checked against.
RECORDED_DRIFTS = {
    "config.yaml's content (gw2, non-default config dir)": (
        "gw2", "HostState", lambda r: _edit_path(_layout(r, "gw2").config, sha1="0" * 40),
        [GW1_TURN.replace("gw1", "{gw1}")]),  # then its own switch, in the second wave (conditional: only if the first did not fail)
    "unit file's mode (gw1)": (
        "gw1", "HostState", lambda r: _edit_path(_layout(r, "gw1").unit_file, mode="600"),
        [f"LiteLLM Proxy | Switch LiteLLM to its new inputs: litellm@.service {SWITCH} (wave 1 of 2: {{gw1}})"]),
    "nginx stopped (gw1)": (
        "gw1", "HostState", lambda r: _replace("unit nginx.service ", "unit nginx.service inactive enabled"),
        ["nginx | Enable and start nginx"]),
    "redis-server not installed (data1)": (
        "data1", "HostState", lambda r: _drop("pkg redis-server "),
        ["Packages | Refresh package lists (at most hourly)", "Packages | Install the first wave of packages"]),
    "PostgreSQL role's password (data1)": (
        "data1", "PostgresLitellmState", lambda r: _replace("role ", "role SCRAM-SHA-256$4096:other"),
        [f"PostgreSQL | Set PostgreSQL role {DEFAULTS['postgres_user']}'s password"]),
}


@pytest.mark.parametrize("drift", sorted(RECORDED_DRIFTS))
def test_the_recorded_answers_are_what_the_roles_are_checked_against(recorded, tmp_path, drift):
    """One recorded answer changed yields exactly its repair on that host and nothing elsewhere: the replay
    reads the recorded outputs, it does not rebuild a converged state from what the roles declare."""
    host, fact, edit, repairs = RECORDED_DRIFTS[drift]
    ops = _tampered(recorded, host, fact, edit(recorded)).replay(tmp_path)
    name = recorded.host_name(host)
    assert _names(ops, name) == [r.format(gw1=recorded.host_name("gw1")) for r in repairs]
    for other in set(ops) - {name}:
        assert _names(ops, other) == [], recorded.label(other)


def test_a_fact_asked_differently_than_recorded_says_to_refresh(recorded, tmp_path):
    """A role that manages one more (or one less) path asks HostState what the recording never read."""
    rec = recorded.copy()
    name = rec.host_name("gw1")
    asked = next(e for e in rec.facts[name] if e["fact"] == "HostState" and e["kwargs"]["paths"])
    gone = asked["kwargs"]["paths"].pop()
    problems = rec.problems(tmp_path)
    assert len(problems) == 1 and "recorded, no longer asked" not in problems[0]
    assert f"now asked, not recorded: {gone}" in problems[0] and REFRESH in problems[0], problems


def test_the_recorder_keeps_output_as_pyinfra_splits_it_and_blanks_only_per_boot_hashes(tmp_path):
    assert output_lines(b"mem 1\n\npath d 755 root root - /a b\n") == ["mem 1", "", "path d 755 root root - /a b"]
    assert output_lines(b"") == [] and output_lines(b"x") == ["x"]
    entry = {"fact": "HostState", "kwargs": {}, "exit": 0,
             "stdout": ["path f 644 root root " + "a" * 40 + " /etc/declared file", "path f 600 root root " + "b" * 40 + " /x.crt",
                        "path d 755 root root - /d"]}
    assert normalized(entry, {"/etc/declared file"})["stdout"] == [
        "path f 644 root root " + "a" * 40 + " /etc/declared file", "path f 600 root root - /x.crt", "path d 755 root root - /d"]
    rec = Recording(spec_name="x.gateway.yaml", spec={"version": 1}, secrets={"a": "b"}, hosts={"gateways": [["h", {}]]},
                    facts={"h": [entry]}, sources={"deploy.py": "0"})
    assert Recording.load(rec.save(tmp_path / "facts.json")) == rec


def test_a_fresh_host_yields_every_install_and_start(fake):
    ops = {h: [n for names, cond, _ in o if cond is None for n in names] for h, o in run_deploy(fake).items()}
    for gw in ("gw1", "gw2"):
        for step in ("LiteLLM Proxy | Start the LiteLLM venv install", "LiteLLM Proxy | Encrypt credentials",
                     "nginx | Generate a self-signed TLS certificate", "LiteLLM Proxy | Install the on-host program rotate.py"):
            assert any(n.startswith(step) for n in ops[gw]), (gw, step)
    assert "Packages | Install the first wave of packages" in ops["data1"]


def _names(ops, host):
    return [name for name, cond, _ in ops[host] if cond is None]


# (host, drift, operations that repair it, handlers that then run)
DRIFTS = {
    "litellm config edited": (
        "gw1", {"paths": {"/etc/litellm/config.yaml": ("f", "640", "root", "litellm", "0" * 40)}},
        # Never written over the live file: staged and switched to (blue/green, canaries), gw1 first and alone.
        [f"LiteLLM Proxy | Switch LiteLLM to its new inputs: config.yaml {SWITCH} (wave 1 of 2: gw1)"], [],
    ),
    "litellm unit edited (non-default layout)": (
        "gw2", {"paths": {"/etc/systemd/system/litellm@.service": ("f", "644", "root", "root", "0" * 40)}},
        # gw2 switches in the second wave, only if gw1's (here: nothing to do) did not fail.
        [GW1_TURN], [f"LiteLLM Proxy | Switch LiteLLM to its new inputs: litellm@.service {SWITCH} (wave 2 of 2: gw2)"],
    ),
    "environment file mode loosened (non-default config dir)": (
        "gw2", {"paths": {"/srv/gk-etc/litellm.env": ("f", "644", "root", "litellm", "0" * 40)}},
        [GW1_TURN], [f"LiteLLM Proxy | Switch LiteLLM to its new inputs: litellm.env {SWITCH} (wave 2 of 2: gw2)"],
    ),
    "on-host rotation program missing": (
        "gw2", {"paths": {"/srv/gk/lib/gatekit/rotate.py": None}},
        ["LiteLLM Proxy | Install the on-host program rotate.py"], [],
    ),
    "instance stopped": (
        "gw1", {"units": {"litellm@4001.service": ("inactive", "enabled")}},
        ["LiteLLM Proxy | Enable and start litellm@4001.service", "LiteLLM Proxy | Wait for litellm@4001.service /health/readiness"],
        [],
    ),
    "nginx site edited": (
        "gw1", {"paths": {"/etc/nginx/conf.d/gatekit.conf": ("f", "644", "root", "root", "0" * 40)}},
        ["nginx | Render the gatekit nginx site"],
        ["nginx | Check the nginx config (nginx -t)", "nginx | Reload nginx gracefully"],
    ),
    "Debian's default site back": (
        "gw2", {"paths": {"/etc/nginx/sites-enabled/default": ("l", "-", "-", "-", "-")}},
        ["nginx | Remove Debian's default site"],
        ["nginx | Check the nginx config (nginx -t)", "nginx | Reload nginx gracefully"],
    ),
    "redis config edited": (
        "data1", {"paths": {"/etc/redis/redis.conf": ("f", "640", "redis", "redis", "0" * 40)}},
        ["Redis | Render /etc/redis/redis.conf"], ["Redis | Restart Redis for its new config"],
    ),
    "pg_hba edited": (
        "data1", {"paths": {"/etc/postgresql/15/main/pg_hba.conf": ("f", "640", "postgres", "postgres", "0" * 40)}},
        ["PostgreSQL | Render pg_hba.conf (only gateway hosts admitted)"], ["PostgreSQL | Reload PostgreSQL for new pg_hba"],
    ),
    "postgres listen settings edited": (
        "data1", {"paths": {"/etc/postgresql/15/main/conf.d/gatekit.conf": ("f", "644", "postgres", "postgres", "0" * 40)}},
        ["PostgreSQL | Render PostgreSQL listen/auth settings"], ["PostgreSQL | Restart PostgreSQL for new listen settings"],
    ),
    "node exporter's drop-in edited": (
        "gw2", {"paths": {"/etc/systemd/system/prometheus-node-exporter.service.d/gatekit.conf": ("f", "644", "root", "root", "0" * 40)}},
        ["Monitoring setup | Render gatekit's drop-in for prometheus-node-exporter.service"],
        ["Monitoring | Reload systemd for gatekit's monitoring units",
         "Monitoring | Restart prometheus-node-exporter.service for its new settings"],
    ),
    "alert rules edited": (
        "data1", {"paths": {"/etc/gatekit/monitoring/alerts.yml": ("f", "644", "root", "root", "0" * 40)}},
        ["Monitoring setup | Render gatekit's alert rules"],
        ["Monitoring | Check Prometheus' configuration and rules (promtool)",
         "Monitoring | Reload Prometheus for its new targets or rules"],
    ),
    "prometheus' drop-in edited": (
        "data1", {"paths": {"/etc/systemd/system/prometheus.service.d/gatekit.conf": ("f", "644", "root", "root", "0" * 40)}},
        ["Monitoring setup | Render gatekit's drop-in for prometheus.service"],
        # A restart reads the configuration too: no reload after it.
        ["Monitoring | Reload systemd for gatekit's monitoring units",
         "Monitoring | Check Prometheus' configuration and rules (promtool)",
         "Monitoring | Restart prometheus.service for its new settings"],
    ),
    "redis exporter stopped": (
        "data1", {"units": {"prometheus-redis-exporter.service": ("failed", "enabled")}},
        ["Monitoring | Enable and start prometheus-redis-exporter.service"], [],
    ),
    "redis stopped": (
        "data1", {"units": {"redis-server.service": ("failed", "enabled")}}, ["Redis | Enable and start Redis"], [],
    ),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_each_drift_yields_exactly_its_repair(fake, drift):
    host, change, repairs, handlers = DRIFTS[drift]
    converge(fake)
    fake.drift = {host: change}
    ops = run_deploy(fake)
    assert _names(ops, host) == repairs
    assert would_run(ops[host], changed=set(repairs)) == repairs + handlers
    for other in {"gw1", "gw2", "data1"} - {host}:
        assert would_run(ops[other]) == [], other


def test_a_missing_package_is_installed_in_its_wave_and_restarts_its_service(fake):
    converge(fake)
    fake.drift = {"data1": {"missing_packages": ["redis-server"]}}
    ops = run_deploy(fake)
    repairs = ["Packages | Refresh package lists (at most hourly)", "Packages | Install the first wave of packages"]
    assert _names(ops, "data1") == repairs
    assert would_run(ops["data1"], changed=set(repairs)) == [*repairs, "Redis | Restart Redis for its new config"]


def test_declared_files_follow_each_hosts_settings(fake):
    run_deploy(fake)
    files = {h: {p: c for want in wants for p, (c, *_) in want.files.items()} for h, wants in fake.declared.items()}
    gw1, gw2 = files["gw1"], files["gw2"]
    assert "/etc/litellm/config.yaml" in gw1 and "/srv/gk-etc/config.yaml" in gw2
    assert "/etc/litellm/config.yaml" not in gw2 and not any(p.startswith("/opt/litellm") for p in gw2)
    unit2 = gw2["/etc/systemd/system/litellm@.service"]
    assert "ExecStart=/srv/gk/bin/gatekit-litellm-launch" in unit2
    # gw2's egress allowlist: its own networks plus the inventory's Redis/PostgreSQL host (data1).
    assert "IPAddressDeny=any" in unit2 and "IPAddressAllow=10.9.0.10" in unit2 and "IPAddressAllow=203.0.113.0/24" in unit2
    assert "IPAddressDeny" not in gw1["/etc/systemd/system/litellm@.service"]
    layout2 = Layout.from_json(gw2["/srv/gk/lib/gatekit/layout.json"])
    assert layout2.litellm_ports == (4301, 4302) and layout2.nginx_https_port == 8443
    assert "include /etc/nginx/gatekit/upstream.conf;" in gw2["/etc/nginx/conf.d/gatekit.conf"]
    assert "server 127.0.0.1:4301 max_fails=0;" in gw2["/etc/nginx/gatekit/upstream.conf"]


def test_an_egress_allowlist_systemd_would_not_enforce_stops_the_deploy(fake):
    """gw2 has litellm_egress_allow; on a host where IPAddressDeny= is not enforced the role refuses."""
    fake.ip_filtering = False
    with pytest.raises(PyinfraError, match=r"host gw2: litellm_egress_allow is set, but systemd on this host does not enforce"):
        run_deploy(fake)


def test_a_gateway_on_a_release_no_lock_covers_stops_the_deploy_before_any_operation(fake):
    fake.drift["gw2"] = {"texts": {OS_RELEASE: 'PRETTY_NAME="Ubuntu 24.04.1 LTS" VERSION_ID="24.04" ID=ubuntu '}}
    with pytest.raises(PyinfraError, match=r"^host gw2: 'Ubuntu 24.04.1 LTS': no gatekit lock covers its Python\. Fix: "
                                           r"run gateways on Debian 12 \(bookworm, Python 3\.11\) or Debian 13"):
        run_deploy(fake)


def test_the_postgres_config_goes_where_the_hosts_postgresql_reads_it_or_the_deploy_stops(fake):
    """Debian 13's PostgreSQL 17 reads /etc/postgresql/17/main; nothing known (no package lists): a one-line stop
    before any operation, naming the fix."""
    fake.postgres_major = 17
    run_deploy(fake)
    files = [path for want in fake.declared["data1"] for path in want.files if "postgresql" in path]
    assert sorted(files) == ["/etc/postgresql/17/main/conf.d/gatekit.conf", "/etc/postgresql/17/main/pg_hba.conf"]
    fake.postgres_major = None
    with pytest.raises(PyinfraError, match=r"^host data1: cannot tell which PostgreSQL it runs or would install .* not Debian 12 or 13\)\. "
                                           r"Fix: apt-get update on the host, or set postgres_version for it\.$"):
        run_deploy(fake)


@pytest.mark.parametrize(("output", "major"), [
    (["installed 15", "candidate 15", "role x"], 15),
    (["installed 15", "candidate 17"], 15),  # the cluster that exists, not what an upgrade would bring
    (["candidate 17"], 17),  # before the first install
    (["installed 15", "installed 17"], 17),
    (["release 13", "candidate", "db litellm"], 17),  # a fresh Debian 13 image: no package lists yet
    (["release 12", "candidate 16"], 16),  # apt's answer (here another repository's) over the release's default
    (["release 24", "candidate"], None),  # another system, nothing known
])
def test_the_postgres_major_version_is_the_installed_clusters_else_apts(output, major):
    assert PostgresLitellmState().process(output)["major"] == major


@pytest.mark.parametrize(("output", "enforced"), [
    (["/bin/bash: connect: Operation not permitted", "/bin/bash: line 1: /dev/tcp/127.0.0.1/9: Operation not permitted"], True),
    (["/bin/bash: connect: Connection refused"], False),
    ([], False),  # systemd-run missing or failed: not proven, so not enforced
])
def test_ip_filtering_fact_reads_what_the_kernel_answered(output, enforced):
    assert IPFilteringEnforced().process(output) is enforced


def test_a_changed_key_on_a_serving_gateway_is_refused_or_switched_never_written_live(fake, spec_file, tmp_path):
    """A key in the vault other than the one live on gw1: refused by default (rotate_keys.py is the way); with
    litellm_restart_on_secret_change it is staged and switched to blue/green (no encryption over the live one)."""
    converge(fake)
    fake.drift = {"gw1": {"texts": {Layout.from_settings({**DEFAULTS, **{"litellm_ports": [4001, 4002, 4003, 4004]}})
                                    .cred_fingerprint("openai_key"): "0" * 16}}}
    with pytest.raises(PyinfraError, match=r"host gw1: openai_key in the vault differ from the credentials live"):
        run_deploy(fake)
    allowed = tmp_path / spec_file.name
    allowed.write_text(spec_file.read_text().replace("\nsettings:\n", "\nsettings:\n  litellm_restart_on_secret_change: true\n"))
    (tmp_path / "example.secrets.enc.yaml").write_bytes(spec_file.with_name("example.secrets.enc.yaml").read_bytes())
    fake.spec_file = allowed
    ops = run_deploy(fake)
    assert _names(ops, "gw1") == [f"LiteLLM Proxy | Switch LiteLLM to its new inputs: openai_key {SWITCH} (wave 1 of 2: gw1)"]
    assert would_run(ops["gw2"]) == [], "gw2 serves the vault's key already"


def test_after_an_interrupted_switch_the_deploy_recovers_it_and_leaves_nginx_upstream_to_it(fake):
    """A journal on gw1 (a switch cut off) and an upstream file other than live.json's set (cut off after nginx
    switched): the deploy stages every input for the switch, which recovers first; the nginx role does not write the
    upstream back to the set live.json named before the recovery (that set may be the one the recovery stops)."""
    converge(fake)
    L = Layout.from_settings({**DEFAULTS, "litellm_ports": [4001, 4002, 4003, 4004]})
    fake.drift = {"gw1": {"texts": {L.journal_file: '{"old_ports": [4001, 4002], "new_ports": [4003, 4004]}'},
                          "paths": {L.nginx_upstream: ("f", "644", "root", "root", "0" * 40)}}}
    ops = run_deploy(fake)
    names = [n for names, _, _ in ops["gw1"] for n in names]
    assert not [n for n in names if "upstream" in n], names
    switch = [m for n in _names(ops, "gw1") for m in n if "Switch LiteLLM to its new inputs" in m]
    assert len(switch) == 1 and all(f in switch[0] for f in ("config.yaml", "litellm.env", "gatekit-litellm-launch",
                                                             "litellm@.service")), switch


def test_after_a_switch_cut_off_in_its_drain_the_deploy_neither_starts_nor_waits_for_the_set_it_drained(fake):
    """Cut off after drain (seen on the lab): the old set (live.json's, not yet re-recorded) is stopped and disabled,
    the new one serves. The deploy must leave which set runs to the switch's recovery: starting live.json's set again
    and waiting for it (the recovery stops it once more) failed the re-run after 300 s."""
    converge(fake)
    L = Layout.from_settings({**DEFAULTS, "litellm_ports": [4001, 4002, 4003, 4004]})
    fake.drift = {"gw1": {"texts": {L.journal_file: '{"old_ports": [4001, 4002], "new_ports": [4003, 4004]}'},
                          "units": {L.instance(4001): ("inactive", "disabled"), L.instance(4002): ("inactive", "disabled"),
                                    L.instance(4003): ("active", "enabled"), L.instance(4004): ("active", "enabled")}}}
    ops = run_deploy(fake)
    names = [m for n in would_run(ops["gw1"]) for m in n]
    assert not [n for n in names if "Enable and start litellm@" in n or "/health/readiness" in n], names
    assert len([n for n in names if "Switch LiteLLM to its new inputs" in n]) == 1, names


def test_a_rotation_switches_only_the_gateways_whose_key_differs_first_gateway_first(fake, monkeypatch):
    """rotate_keys.py collected against converged hosts: gw1 and gw2 both hold another openai_key than the vault's;
    each gets its switch in its own wave (gw1 alone, then gw2, only if gw1's did not fail); with the keys current,
    nothing."""
    converge(fake)
    monkeypatch.setenv("GATEKIT_ROTATE", "openai_key")
    assert would_run(run_deploy(fake, entry="rotate_keys.py")["gw1"]) == []
    fps = {h: Layout.from_settings({**DEFAULTS, **({"litellm_ports": [4001, 4002, 4003, 4004]} if h == "gw1" else GW2)})
           .cred_fingerprint("openai_key") for h in ("gw1", "gw2")}
    fake.drift = {h: {"texts": {fps[h]: "0" * 16}} for h in fps}
    ops = run_deploy(fake, entry="rotate_keys.py")
    rotate = "Rotate provider keys | Rotate openai_key (blue/green + canary)"
    assert would_run(ops["gw1"]) == [f"{rotate} (wave 1 of 2: gw1)"]
    assert would_run(ops["gw2"]) == ["Rotate provider keys | Switch wave 1 of 2: gw1 (another gateway's turn)",
                                     f"{rotate} (wave 2 of 2: gw2)"]
    gate = [cond for names, cond, _ in ops["gw2"] if f"{rotate} (wave 2 of 2: gw2)" in names]
    assert gate and gate[0] is not None  # conditional: skipped once an earlier wave failed


def test_a_litellm_upgrade_on_serving_gateways_builds_beside_the_live_venv_and_switches_gateway_by_gateway(fake, spec_file,
                                                                                                          tmp_path):
    """Another lock (litellm_requirements): each gateway builds the new venv beside the live one (`venv` stays on the
    live set's build), and the launcher naming the new build goes live through the switch, gw1 alone first; no
    instance is restarted in place."""
    converge(fake)
    fake.on_read = lambda host, want: None  # the hosts hold what the first run declared (the old launcher)
    fake.drift = {gw: {"texts": {Layout.from_settings({**DEFAULTS, **data}).venv_stamp: "f" * 64}}  # the old build's
                  for gw, data in (("gw1", {}), ("gw2", GW2))}
    upgraded = tmp_path / spec_file.name
    upgraded.write_text(spec_file.read_text().replace(
        "\nsettings:\n", "\nsettings:\n  litellm_requirements: requirements/litellm-1.108.7.lock\n"))
    (tmp_path / "example.secrets.enc.yaml").write_bytes(spec_file.with_name("example.secrets.enc.yaml").read_bytes())
    fake.spec_file = upgraded
    ops = run_deploy(fake)
    for gw, wave in (("gw1", "wave 1 of 2: gw1"), ("gw2", "wave 2 of 2: gw2")):
        names = [n for names, _, _ in ops[gw] for n in names]
        assert any(n.startswith("LiteLLM Proxy | Start the LiteLLM venv install") for n in names), names
        assert "LiteLLM Proxy | Wait for the LiteLLM venv install" in names, names
        assert not [n for n in names if "then switch to it" in n or n.startswith("LiteLLM Proxy | Restart litellm@")]
        assert f"LiteLLM Proxy | Switch LiteLLM to its new inputs: gatekit-litellm-launch {SWITCH} ({wave})" in names
