"""The pure parts of the gateway's custom auth (gatekit/onhost/keyauth.py): KeyTable, check(), Usage, budgets.

No LiteLLM here: only what runs with the standard library. Tables are built with gatekit.clientkeys.host_table,
exactly as a deploy ships them, and keys are made with new_key().
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from gatekit import clientkeys as ck
from gatekit.onhost import keyauth as ka
from gatekit.spec import load_spec

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=UTC)

from tests.unit.test_clientkeys import SPEC_TEXT  # the same small spec: two models, two aliases


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "lab.gateway.yaml"
    path.write_text(SPEC_TEXT)
    return load_spec(path, check_secrets=False)


class Keys:
    """Three clients (alice: fast + its alias, limits, expiring 2027-01-31; bob: smart; carol: revoked)."""

    def __init__(self, spec):
        self.spec = spec
        self.alice, self.bob, self.carol = ck.new_key(), ck.new_key(), ck.new_key()
        self.entries = {
            "alice": ck.ClientKey(name="alice", sha256=ck.key_hash(self.alice), models=["fast"], rpm=5, tpm=500,
                                  budget_usd=2.5, expires=dt.date(2027, 1, 31)),
            "bob": ck.ClientKey(name="bob", sha256=ck.key_hash(self.bob), models=["smart"]),
            "carol": ck.ClientKey(name="carol", sha256=ck.key_hash(self.carol), models=["fast"],
                                  revoked=dt.date(2026, 1, 1)),
        }

    def table_text(self, entries=None) -> str:
        return ck.host_table(self.spec, self.entries if entries is None else entries)


@pytest.fixture
def keys(spec):
    return Keys(spec)


@pytest.fixture
def table_file(tmp_path, keys):
    path = tmp_path / "client_keys.json"
    path.write_text(keys.table_text())
    return path


@pytest.fixture
def table(table_file):
    t = ka.KeyTable(str(table_file))
    t.refresh(now=100.0)
    return t


def denied(t: ka.KeyTable, api_key, route="/v1/chat/completions", model="fast", now=NOW) -> ka.Denied:
    with pytest.raises(ka.Denied) as info:
        t.check(api_key, route, model, now)
    d = info.value
    assert str(d) == d.message
    if isinstance(api_key, str) and api_key:
        assert api_key not in d.message
    return d


def replace_atomically(path: Path, text: str, same_stamp_as: os.stat_result | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if same_stamp_as is not None:
        os.utime(tmp, ns=(same_stamp_as.st_atime_ns, same_stamp_as.st_mtime_ns))
    os.replace(tmp, path)


# --- the controller and the host agree ----------------------------------------------------------------------------


def test_host_hash_matches_the_controller_hash():
    key = ck.new_key()
    assert ka.key_hash(key) == ck.key_hash(key)


def test_cli_made_key_works_on_the_host(tmp_path, spec):
    from click.testing import CliRunner

    from gatekit.cli import main

    result = CliRunner().invoke(main, ["keys", "add", "dave", "--spec", str(spec.path), "--models", "smart",
                                       "--rpm", "3"])
    assert result.exit_code == 0, result.stderr
    key = result.stdout.strip()
    path = tmp_path / "t.json"
    path.write_text(ck.host_table(spec, ck.load_keys(spec)))
    t = ka.KeyTable(str(path))
    t.refresh(now=1.0)
    entry = t.check(key, "/v1/chat/completions", "best", NOW)  # the alias of smart
    assert entry["name"] == "dave" and entry["rpm"] == 3
    assert denied(t, key, model="fast").status == 403


# --- KeyTable.refresh ---------------------------------------------------------------------------------------------


def test_table_loads_active_keys_and_models(table, keys):
    assert set(table.keys) == {ck.key_hash(keys.alice), ck.key_hash(keys.bob)}
    assert table.models == frozenset({"fast", "smart", "quick", "best"})
    assert table.by_name("alice")["rpm"] == 5
    assert table.by_name("carol") is None and table.by_name("nobody") is None


def test_absent_file_means_no_keys(tmp_path, keys):
    t = ka.KeyTable(str(tmp_path / "missing.json"))
    t.refresh(now=5.0)
    assert t.keys == {} and t.models == frozenset()
    assert denied(t, keys.alice).status == 401


def test_a_removed_file_empties_the_table_after_the_throttle(table, table_file, keys):
    table_file.unlink()
    table.refresh(now=100.0 + ka.RELOAD_SECONDS / 2)
    assert table.check(keys.alice, "/v1/chat/completions", "fast", NOW)["name"] == "alice"  # throttled
    table.refresh(now=100.0 + ka.RELOAD_SECONDS)
    assert table.keys == {}
    assert denied(table, keys.alice).status == 401


def test_reload_on_change_is_throttled_then_immediate(table, table_file, keys):
    revoked = dict(keys.entries)
    revoked["alice"] = ck.ClientKey(**{**vars(keys.entries["alice"]), "revoked": dt.date(2026, 6, 1)})
    replace_atomically(table_file, keys.table_text(revoked))
    table.refresh(now=100.0 + ka.RELOAD_SECONDS * 0.99)
    assert ck.key_hash(keys.alice) in table.keys  # within RELOAD_SECONDS: not looked at
    table.refresh(now=100.0 + ka.RELOAD_SECONDS)
    assert ck.key_hash(keys.alice) not in table.keys
    assert denied(table, keys.alice).status == 401
    assert table.check(keys.bob, "/v1/embeddings", "smart", NOW)["name"] == "bob"


def test_a_new_key_works_after_a_change_without_restart(table, table_file, keys, spec):
    erin = ck.new_key()
    more = {**keys.entries, "erin": ck.ClientKey(name="erin", sha256=ck.key_hash(erin), models=["fast"])}
    assert denied(table, erin).status == 401
    table_file.write_text(keys.table_text(more))  # in place (size changes)
    table.refresh(now=200.0)
    assert table.check(erin, "/v1/completions", "quick", NOW)["name"] == "erin"


def test_a_replacement_with_the_same_size_and_mtime_is_seen_by_its_inode(table, table_file, keys):
    old = os.stat(table_file)
    swapped = {
        "alice": ck.ClientKey(name="alice", sha256=ck.key_hash(keys.bob), models=["fast"], rpm=5, tpm=500,
                              budget_usd=2.5, expires=dt.date(2027, 1, 31)),
        "bob": ck.ClientKey(name="bob", sha256=ck.key_hash(keys.alice), models=["smart"]),
    }
    text = keys.table_text(swapped)
    assert len(text) == old.st_size  # same size: only the inode tells
    replace_atomically(table_file, text, same_stamp_as=old)
    new = os.stat(table_file)
    assert (new.st_mtime_ns, new.st_size) == (old.st_mtime_ns, old.st_size) and new.st_ino != old.st_ino
    table.refresh(now=300.0)
    assert table.check(keys.bob, "/v1/chat/completions", "fast", NOW)["name"] == "alice"


def test_an_unchanged_file_is_not_read_again(table, table_file, capsys):
    capsys.readouterr()
    for now in (150.0, 200.0, 250.0):
        table.refresh(now=now)
    assert "loaded" not in capsys.readouterr().err
    table_file.write_text(table_file.read_text() + " ")
    table.refresh(now=300.0)
    assert "loaded 2 client keys" in capsys.readouterr().err


BROKEN_TABLES = {
    "truncated": '{"version": 1, "keys": {"ab',
    "empty": "",
    "not json": "keys: yaml?\n",
    "not utf-8": b'{"keys": {"\xff\xfe": {}}}',
    "keys missing": '{"version": 1, "models": []}',
    "keys a list": '{"keys": []}',
    "top level list": "[]",
    "top level null": "null",
    "top level string": '"keys"',
    "models a number": '{"keys": {}, "models": 5}',
}


@pytest.mark.parametrize("case", sorted(BROKEN_TABLES))
def test_a_broken_table_keeps_serving_the_previous_one(table, table_file, keys, case):
    content = BROKEN_TABLES[case]
    before = dict(table.keys), table.models
    if isinstance(content, bytes):
        table_file.write_bytes(content)
    else:
        table_file.write_text(content)
    table.refresh(now=500.0)  # must not raise: this runs inside every request's auth
    assert (table.keys, table.models) == before
    assert table.check(keys.alice, "/v1/chat/completions", "fast", NOW)["name"] == "alice"
    assert denied(table, keys.carol).status == 401
    # repaired: read again as soon as it changes
    table_file.write_text(keys.table_text({"bob": keys.entries["bob"]}))
    table.refresh(now=600.0)
    assert set(table.keys) == {ck.key_hash(keys.bob)}


def test_a_broken_first_read_serves_no_keys(tmp_path, keys):
    path = tmp_path / "t.json"
    path.write_text('{"keys": {')
    t = ka.KeyTable(str(path))
    t.refresh(now=1.0)
    assert t.keys == {}
    assert denied(t, keys.alice).status == 401


# --- KeyTable.check -----------------------------------------------------------------------------------------------


def test_check_returns_the_entry_with_its_limits(table, keys):
    entry = table.check(keys.alice, "/v1/chat/completions", "fast", NOW)
    assert entry["name"] == "alice" and entry["rpm"] == 5 and entry["tpm"] == 500 and entry["budget_usd"] == 2.5
    assert entry["models"] == ["fast", "quick"]


@pytest.mark.parametrize("model", ["fast", "quick", None])
def test_allowed_models_and_aliases(table, keys, model):
    assert table.check(keys.alice, "/v1/chat/completions", model, NOW)["name"] == "alice"


def bad_api_keys():
    spare = ck.new_key()
    return {
        "empty": "", "none": None, "unknown": spare, "trailing newline": None, "uppercased": None,
        "surrogate": "\udcff", "huge": "gk-" + "A" * 1_000_000, "nul": "gk-\x00", "bearer prefix": None,
        "the stored hash": None, "revoked": None,
    }


@pytest.mark.parametrize("case", sorted(bad_api_keys()))
def test_unknown_or_revoked_keys_are_401(table, keys, case):
    api_key = {
        "trailing newline": keys.alice + "\n", "uppercased": keys.alice.upper(), "bearer prefix": "Bearer " + keys.alice,
        "the stored hash": ck.key_hash(keys.alice), "revoked": keys.carol,
    }.get(case, bad_api_keys()[case])
    d = denied(table, api_key)
    assert d.status == 401 and "unknown or revoked" in d.message
    assert keys.alice not in d.message and "\udcff" not in d.message


def test_unknown_key_on_an_admin_route_is_401_not_403(table):
    assert denied(table, ck.new_key(), route="/key/generate", model=None).status == 401


@pytest.mark.parametrize(("now", "works"), [
    (dt.datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), True),
    (dt.datetime(2027, 1, 31, 0, 0, tzinfo=UTC), True),
    (dt.datetime(2027, 2, 1, 0, 0, tzinfo=UTC), False),
    (dt.datetime(2027, 2, 1, 0, 0, 1, tzinfo=UTC), False),
    (dt.datetime(2027, 1, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-1))), False),  # 00:30 UTC on Feb 1
    (dt.datetime(2027, 2, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))), True),  # 23:30 UTC on Jan 31
    (dt.datetime(2030, 1, 1, tzinfo=UTC), False),
])
def test_a_key_works_through_its_expiry_date_utc(table, keys, now, works):
    if works:
        assert table.check(keys.alice, "/v1/chat/completions", "fast", now)["name"] == "alice"
    else:
        d = denied(table, keys.alice, now=now)
        assert d.status == 401 and "expired" in d.message and "'alice'" in d.message


def test_expiry_is_checked_before_route_and_model(table, keys):
    late = dt.datetime(2027, 3, 1, tzinfo=UTC)
    assert denied(table, keys.alice, route="/key/generate", model="smart", now=late).status == 401


def test_a_key_without_expiry_never_expires(table, keys):
    far = dt.datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert table.check(keys.bob, "/v1/chat/completions", "smart", far)["name"] == "bob"


@pytest.mark.parametrize("route", [
    "/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/embeddings", "/embeddings", "/v1/models",
    "/models", "/v1/models/fast", "/models/x", "/v1/responses", "/v1/responses/resp_123", "/v1/messages",
    "/v1/messages/count_tokens",
])
def test_client_routes_are_allowed(table, keys, route):
    assert ka.client_route(route)
    assert table.check(keys.alice, route, None, NOW)["name"] == "alice"


@pytest.mark.parametrize("route", [
    "/key/generate", "/config/update", "/user/new", "/model/new", "/spend/logs", "/health", "/metrics", "/",
    "", "/v1/chat/completions/../key", "/v1/chat/completions/", "/V1/chat/completions", "/v1//chat/completions",
    "/v1/chat/completions%2F..%2Fkey", "/v1/models/../../key/generate", "/v1/responses/../../config/update",
    "/v1/chat/completions\n/key/generate", "key/generate", "/v1/modelsX", "/v1/messages/../../key/generate",
])
def test_routes_outside_the_client_api_are_403(table, keys, route):
    d = denied(table, keys.alice, route=route, model=None)
    assert d.status == 403 and "'alice'" in d.message and "client API" in d.message
    assert "\n" not in d.message  # the route is shown escaped


@pytest.mark.parametrize("model", ["smart", "best", "Fast", "fast ", "", "(other)", 7, ["fast"], {"fast": 1},
                                   "x" * 500, "fast\n\x1b[31mred"], ids=repr)
def test_models_the_key_may_not_use_are_403_naming_the_model(table, keys, model):
    d = denied(table, keys.alice, model=model)
    assert d.status == 403 and "'alice'" in d.message
    assert ka.shown(model) in d.message  # named, bounded and escaped
    assert "\n" not in d.message and "\x1b" not in d.message and "x" * 100 not in d.message
    assert "fast, quick" in d.message  # what it may use instead


# --- small helpers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("fast", "'fast'"), ("a\nb", "'a\\nb'"), ("\x1b[2J", "'\\x1b[2J'"), (None, "'None'"), (5, "'5'"),
    ("y" * 200, repr("y" * 80)),
])
def test_shown_is_bounded_and_escaped(value, expected):
    assert ka.shown(value) == expected


def test_shown_limit():
    assert ka.shown("abcdef", limit=3) == "'abc'"


# --- Usage --------------------------------------------------------------------------------------------------------

D1, D2 = dt.date(2026, 6, 14), dt.date(2026, 6, 15)


def test_usage_merges_per_day_key_and_model():
    u = ka.Usage()
    u.add(D1, "alice", "fast", requests=1, prompt=10, completion=5, cost=0.25)
    u.add(D1, "alice", "fast", requests=1, failures=1, prompt=3, cost=0.5)
    u.add(D1, "alice", "smart", requests=1)
    u.add(D2, "alice", "fast", requests=1)
    u.add(D1, "bob", "fast", requests=2)
    assert u.rows == {
        (D1, "alice", "fast"): [2, 1, 13, 5, 0.75],
        (D1, "alice", "smart"): [1, 0, 0, 0, 0.0],
        (D2, "alice", "fast"): [1, 0, 0, 0, 0.0],
        (D1, "bob", "fast"): [2, 0, 0, 0, 0.0],
    }
    assert u.dropped == 0


def test_take_then_written_clears_everything():
    u = ka.Usage()
    u.add(D1, "alice", "fast", requests=1, cost=1.0)
    taken = u.take()
    assert taken == {(D1, "alice", "fast"): [1, 0, 0, 0, 1.0]}
    assert u.rows == {} and u.pending_cost("alice", D1.replace(day=1)) == 1.0  # in flight still counts
    u.written()
    assert u.inflight == {} and u.pending_cost("alice", D1.replace(day=1)) == 0.0


def test_put_back_keeps_everything_and_merges_with_newer_rows():
    u = ka.Usage()
    u.add(D1, "alice", "fast", requests=1, prompt=10, cost=0.5)
    u.add(D1, "bob", "smart", requests=1, cost=1.0)
    u.take()
    u.add(D1, "alice", "fast", requests=2, completion=7, cost=0.25)  # arrives while the write is in flight
    u.add(D2, "carol", "fast", requests=1)
    u.put_back()  # the write failed
    assert u.inflight == {}
    assert u.rows == {
        (D1, "alice", "fast"): [3, 0, 10, 7, 0.75],
        (D1, "bob", "smart"): [1, 0, 0, 0, 1.0],
        (D2, "carol", "fast"): [1, 0, 0, 0, 0.0],
    }
    assert u.dropped == 0


def test_the_bound_drops_and_counts_new_rows_but_merges_into_existing(capsys):
    u = ka.Usage(max_rows=2)
    u.add(D1, "alice", "fast", requests=1)
    u.add(D1, "bob", "fast", requests=1)
    u.add(D1, "carol", "fast", requests=1, cost=9.0)
    u.add(D2, "alice", "fast", requests=1)
    assert u.dropped == 2 and len(u.rows) == 2
    assert (D1, "carol", "fast") not in u.rows
    u.add(D1, "alice", "fast", requests=4, cost=1.0)
    assert u.rows[(D1, "alice", "fast")] == [5, 0, 0, 0, 1.0] and u.dropped == 2
    assert "usage buffer full (2 rows)" in capsys.readouterr().err


def test_put_back_into_a_full_buffer_counts_what_it_drops():
    u = ka.Usage(max_rows=2)
    u.add(D1, "alice", "fast", requests=1)
    u.add(D1, "bob", "fast", requests=1)
    u.take()
    u.add(D2, "carol", "fast", requests=1)
    u.add(D2, "dave", "fast", requests=1)
    u.put_back()
    assert len(u.rows) == 2 and u.dropped == 2
    assert set(u.rows) == {(D2, "carol", "fast"), (D2, "dave", "fast")}


def test_spent_is_this_months_cost_plus_pending_for_this_month_only():
    u = ka.Usage()
    u.month_cost = {"alice": 10.0, "bob": 99.0}
    u.add(dt.date(2026, 6, 1), "alice", "fast", cost=1.5)
    u.add(dt.date(2026, 6, 30), "alice", "smart", cost=0.25)
    u.add(dt.date(2026, 5, 31), "alice", "fast", cost=100.0)  # last month
    u.add(dt.date(2025, 6, 15), "alice", "fast", cost=1000.0)  # same month, last year
    u.add(dt.date(2026, 6, 2), "bob", "fast", cost=3.0)
    assert u.spent("alice", dt.date(2026, 6, 15)) == pytest.approx(11.75)
    u.take()  # in flight still counts
    u.add(dt.date(2026, 6, 3), "alice", "fast", cost=2.0)
    assert u.spent("alice", dt.date(2026, 6, 15)) == pytest.approx(13.75)
    assert u.spent("bob", dt.date(2026, 6, 15)) == pytest.approx(102.0)
    assert u.spent("nobody", dt.date(2026, 6, 15)) == 0.0
    assert u.pending_cost("alice", dt.date(2026, 5, 1)) == pytest.approx(100.0)


# --- budgets ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("budget", "spent"), [(None, 1e9), (0.0, 5.0), (10.0, 9.999), (10.0, 0.0)])
def test_no_budget_problem(budget, spent):
    assert ka.budget_problem("alice", budget, spent, dt.date(2026, 6, 15)) == ""


@pytest.mark.parametrize(("today", "resets"), [
    (dt.date(2026, 6, 15), "2026-07-01"), (dt.date(2026, 12, 31), "2027-01-01"), (dt.date(2026, 1, 31), "2026-02-01"),
    (dt.date(2028, 2, 29), "2028-03-01"), (dt.date(2026, 3, 1), "2026-04-01"),
])
def test_budget_problem_names_the_budget_and_the_reset_day(today, resets):
    problem = ka.budget_problem("alice", 10.0, 10.0, today)
    assert "'alice'" in problem and "$10.00" in problem and resets in problem
    assert "$12.35" in ka.budget_problem("alice", 10.0, 12.346, today)


def _import_keyauth_in(code: str) -> str:
    import subprocess
    import sys
    from pathlib import Path

    onhost = Path(__file__).resolve().parents[2] / "gatekit" / "onhost"
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(onhost)!r})\n" + code],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_inside_litellm_without_the_otel_sdk_the_otel_logger_import_fails_at_once():
    """LiteLLM's auth imports litellm.integrations.otel.logger on every request; without the OpenTelemetry SDK
    that import can only fail, half-way and again per request. Loaded inside LiteLLM, keyauth records it as
    unimportable (None in sys.modules: an immediate ModuleNotFoundError, which LiteLLM already handles)."""
    out = _import_keyauth_in(
        "import types; sys.modules['litellm'] = types.ModuleType('litellm')\n"
        "import keyauth\n"
        "print(repr(sys.modules.get('litellm.integrations.otel.logger', 'absent')))\n"
        "try:\n    import litellm.integrations.otel.logger\nexcept ModuleNotFoundError:\n    print('fails')\n"
    )
    assert out.splitlines() == ["None", "fails"]


def test_outside_litellm_or_with_the_otel_sdk_nothing_is_recorded():
    assert _import_keyauth_in("import keyauth\nprint('litellm.integrations.otel.logger' in sys.modules)") == "False"
    # With the SDK importable (a stub package here), the real import must stay possible.
    out = _import_keyauth_in(
        "import types, importlib.machinery\n"
        "sdk = types.ModuleType('opentelemetry.sdk'); sdk.__spec__ = importlib.machinery.ModuleSpec('opentelemetry.sdk', None)\n"
        "otel = types.ModuleType('opentelemetry'); otel.__path__ = []; otel.sdk = sdk\n"
        "sys.modules.update({'opentelemetry': otel, 'opentelemetry.sdk': sdk, 'litellm': types.ModuleType('litellm')})\n"
        "import keyauth\nprint('litellm.integrations.otel.logger' in sys.modules)"
    )
    assert out == "False"
