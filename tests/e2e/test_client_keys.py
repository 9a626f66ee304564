"""Client keys without LiteLLM's database, on the deployed stack: made with `gatekit keys`, shipped by a
deploy, enforced by gatekit's custom-auth hook in LiteLLM on both gateways (gw2 with non-default paths),
rate-limited through Redis, their usage kept in PostgreSQL, their budgets enforced across gateways.
"""

from __future__ import annotations

import json
import re
import shlex
import time

import httpx
import pytest

from gatekit.onhost.keyauth import RELOAD_SECONDS
from lab import faults
from lab.checks import doctor_failures, gatekit, lab_client, prometheus_query, secret_locations, wait_until
from lab.load import Load

GATEWAYS = ("gw1", "gw2")


def add_key(lab, name: str, *opts: str) -> str:
    proc = gatekit(lab, "keys", "add", name, "--spec", str(lab.spec_path), *opts)
    key = proc.stdout.strip()
    assert key.startswith("gk-") and key not in proc.stderr and key not in lab.spec_path.with_name("lab.keys.yaml").read_text()
    return key


def http_client(key: str | None, anthropic: bool = False) -> httpx.Client:
    headers = {}
    if key is not None:
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if anthropic else {"Authorization": f"Bearer {key}"}
    return lab_client(headers)


def chat(lab, gw: str, key: str | None, model: str = "fast") -> httpx.Response:
    with http_client(key) as c:
        return c.post(f"{lab.gateway_url(gw)}/v1/chat/completions",
                      json={"model": model, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5})


def messages(lab, gw: str, key: str | None, model: str = "claude") -> httpx.Response:
    with http_client(key, anthropic=True) as c:
        return c.post(f"{lab.gateway_url(gw)}/v1/messages",
                      json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})


def live_pids(lab) -> dict[str, list[str]]:
    """The main process of every live instance of each gateway."""
    out = {}
    for gw in GATEWAYS:
        L = lab.layout(gw)
        out[gw] = [lab.hosts[gw].run(f"systemctl show -p MainPID --value {L.instance(port)}").stdout.strip()
                   for port in lab.live_ports(gw)]
    return out


@pytest.fixture(scope="module")
def keys(lab):
    """Three keys, deployed: `app` (fast and the alias gpt-4o's target smart), `limited` (rpm 6),
    `tight` (a budget of a millionth of a dollar: one call spends it), `tokens` (tpm 40)."""
    made = {
        "app": add_key(lab, "app", "--models", "fast,smart"),
        "limited": add_key(lab, "limited", "--models", "fast", "--rpm", "6"),
        "tight": add_key(lab, "tight", "--models", "fast", "--budget", "0.000001"),
        "tokens": add_key(lab, "tokens", "--models", "fast", "--tpm", "40"),
    }
    result = lab.deploy()
    assert result.ok
    return made


def test_a_client_key_serves_on_every_gateway_and_the_master_key_still_works(lab, keys):
    for gw in GATEWAYS:
        for model in ("fast", "smart", "gpt-4o"):  # gpt-4o: an alias of smart, which the key may use
            r = chat(lab, gw, keys["app"], model)
            assert r.status_code == 200, (gw, model, r.text)
        assert chat(lab, gw, lab.secret_values["litellm_master_key"], "claude").status_code == 200
        with http_client(keys["app"]) as c:
            listed = {m["id"] for m in c.get(f"{lab.gateway_url(gw)}/v1/models").json()["data"]}
        assert {"fast", "smart"} <= listed and "claude" not in listed, listed


@pytest.mark.parametrize("key", ["gk-" + "A" * 43, None, "Bearer", "x" * 5000, "gk-' OR 1=1 --"])
def test_an_unknown_key_gets_401_in_each_api_shape(lab, keys, key):
    r = chat(lab, "gw1", key)
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and "invalid API key" in err["message"]
    if key:
        assert key not in r.text
    a = messages(lab, "gw2", key)
    assert a.status_code == 401, a.text
    body = a.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    assert "x-gatekit-denied" not in {h.lower() for h in a.headers}


def test_a_model_the_key_may_not_use_is_refused_naming_it(lab, keys):
    r = chat(lab, "gw1", keys["app"], "claude")
    assert r.status_code == 403 and "'claude'" in r.json()["error"]["message"], r.text
    a = messages(lab, "gw2", keys["app"], "claude")
    assert a.status_code == 403, a.text
    assert a.json()["type"] == "error" and a.json()["error"]["type"] == "permission_error"
    assert "'claude'" in a.json()["error"]["message"]


STATUS_FROM_LOOPBACK = (
    "import ssl, sys, urllib.request, urllib.error\n"
    "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
    "data = b'{}' if sys.argv[2] == 'POST' else None\n"
    "req = urllib.request.Request(sys.argv[1], data=data, method=sys.argv[2], headers={'Authorization': 'Bearer ' + "
    "sys.stdin.read().strip(), 'Content-Type': 'application/json'})\n"
    "try:\n    print(urllib.request.urlopen(req, context=ctx, timeout=60).status)\n"
    "except urllib.error.HTTPError as e:\n    print(e.code)\n"
)


def test_a_client_key_cannot_reach_admin_routes_even_from_an_admin_network(lab, keys):
    gw, L = lab.hosts["gw1"], lab.layout("gw1")
    for method, path in (("POST", "/key/generate"), ("GET", "/model/info"), ("GET", "/config/yaml"),
                         ("POST", "/config/update"), ("GET", "/health")):
        code = gw.run(f"python3 -c {shlex.quote(STATUS_FROM_LOOPBACK)} https://127.0.0.1:{L.nginx_https_port}{path} {method}",
                      input=keys["app"] + "\n").stdout.strip()
        assert code == "403", (path, code)
    code = gw.run(f"python3 -c {shlex.quote(STATUS_FROM_LOOPBACK)} https://127.0.0.1:{L.nginx_https_port}/model/info GET",
                  input=lab.secret_values["litellm_master_key"] + "\n").stdout.strip()
    assert code == "200"  # the operator's master key, from an admin network


def test_rpm_is_held_across_workers_and_gateways(lab, keys):
    codes = [chat(lab, GATEWAYS[i % 2], keys["limited"]).status_code for i in range(10)]
    assert codes.count(200) == 6 and codes.count(429) == 4, codes


def test_tpm_is_held_across_gateways(lab, keys):
    """Each call costs at least the fake provider's 5 tokens (LiteLLM may also reserve an estimate before the
    call): with tpm 40 the minute's window fills within 16 calls, whichever gateway served them, and the
    next ones get 429 naming tokens."""
    codes, messages_ = [], []
    for i in range(16):
        r = chat(lab, GATEWAYS[i % 2], keys["tokens"])
        codes.append(r.status_code)
        if r.status_code == 429:
            messages_.append(r.json()["error"]["message"])
        time.sleep(0.3)  # the token count lands after each answer
    assert codes[0] == 200 and 429 in codes and codes.count(200) <= 9, codes  # 8 x 5 = 40, + one counted late
    assert all("tokens" in m.lower() for m in messages_), messages_


def test_usage_lands_in_postgres_and_keys_list_shows_it(lab, keys):
    time.sleep(3)  # earlier tests' last calls are written within a flush interval (2 s)
    before = {k["name"]: k for k in json.loads(gatekit(lab, "keys", "list", "--spec", str(lab.spec_path), "--json",
                                                        "--usage", str(lab.inventory_path)).stdout)["keys"]}
    n = 7
    for i in range(n):
        assert chat(lab, GATEWAYS[i % 2], keys["app"]).status_code == 200

    def month_requests():
        out = json.loads(gatekit(lab, "keys", "list", "--spec", str(lab.spec_path), "--json", "--usage",
                                 str(lab.inventory_path)).stdout)
        return {k["name"]: k for k in out["keys"]}

    def grown():
        now = month_requests()
        return now if now["app"]["month"]["requests"] >= before["app"]["month"]["requests"] + n else None

    now = wait_until(grown, timeout=30, interval=1)
    assert now["app"]["month"]["requests"] == before["app"]["month"]["requests"] + n
    assert now["app"]["today"]["tokens"] > before["app"]["today"]["tokens"]
    assert now["app"]["month"]["cost_usd"] > before["app"]["month"]["cost_usd"]
    assert now["app"]["state"] == "active" and now["app"]["models"] == ["fast", "smart"]
    human = gatekit(lab, "keys", "list", "--spec", str(lab.spec_path), "--usage", str(lab.inventory_path)).stdout
    assert any(line.startswith("app ") for line in human.splitlines())
    for key in keys.values():
        assert key not in human


METRICS_FROM_LOOPBACK = (
    "import ssl, sys, urllib.request\n"
    "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
    "print(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=60).read().decode())\n"
)
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape_by_port(lab, gw: str) -> dict[int, str]:
    """Each live instance's /metrics/PORT/ through nginx from the gateway's loopback (an admin network),
    without any key."""
    L = lab.layout(gw)
    return {port: lab.hosts[gw].run(f"python3 -c {shlex.quote(METRICS_FROM_LOOPBACK)} "
                                    f"https://127.0.0.1:{L.nginx_https_port}/metrics/{port}/").stdout
            for port in lab.live_ports(gw)}


def scrape(lab, gw: str) -> str:
    """Every live instance's metrics together: what the gateway served."""
    return "".join(scrape_by_port(lab, gw).values())


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1) in (name, name + "_total"):
            got = dict(LABEL.findall(m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
    return total


def test_metrics_count_each_keys_calls_over_all_workers_with_bounded_labels(lab, keys):
    """LiteLLM's Prometheus callback, aggregated over each instance's workers (gw2: two workers in one
    instance) and over the live instances (gw1: two single-worker instances): exact deltas per key name."""
    name = "litellm_proxy_total_requests_metric"
    for gw in GATEWAYS:
        before_by_port = {p: metric_sum(t, name, api_key_alias="app") for p, t in scrape_by_port(lab, gw).items()}
        before = sum(before_by_port.values())
        n = 8  # more calls than processes: nginx spreads them over all
        for _ in range(n):
            assert chat(lab, gw, keys["app"]).status_code == 200
        def counted(gw=gw, before=before, n=n):
            text = scrape(lab, gw)
            return text if metric_sum(text, name, api_key_alias="app") >= before + n else None

        after = wait_until(counted, timeout=20, what="metrics")
        assert metric_sum(after, name, api_key_alias="app") == before + n, gw
        # Where the gateway runs several live instances, each counted its share: the total is not one
        # instance's count (nginx spreads sequential calls over idle instances).
        grew = {p: metric_sum(t, name, api_key_alias="app") - before_by_port[p] for p, t in scrape_by_port(lab, gw).items()}
        assert sum(grew.values()) == n and (len(grew) < 2 or all(d > 0 for d in grew.values())), (gw, grew)
        for label in ("end_user", "client_ip", "user_agent", "hashed_api_key", "requested_model", "user_email"):
            assert f'{label}="' not in after, label
        for key in keys.values():
            assert key not in after


def test_a_monthly_budget_is_enforced_across_gateways(lab, keys):
    # One call on gw1 spends the budget; once written to PostgreSQL, gw2 refuses too.
    assert chat(lab, "gw1", keys["tight"]).status_code == 200

    def refused_on_gw2():
        r = chat(lab, "gw2", keys["tight"])
        return r if r.status_code == 429 else None

    r = wait_until(refused_on_gw2, timeout=30, interval=1)
    assert "monthly budget of $0.000001" in r.json()["error"]["message"], r.text
    # Every instance of gw1 too (each re-reads this month's cost every write interval: the documented lag).
    wait_until(lambda: all(chat(lab, "gw1", keys["tight"]).status_code == 429 for _ in range(4)), timeout=15,
               interval=1, what="every gw1 instance to refuse")
    assert chat(lab, "gw1", keys["app"]).status_code == 200  # other keys unaffected


def test_postgres_down_fails_no_request_and_usage_is_written_on_recovery(lab, keys):
    data = lab.hosts["data1"]

    def month():
        out = json.loads(gatekit(lab, "keys", "list", "--spec", str(lab.spec_path), "--json", "--usage",
                                 str(lab.inventory_path)).stdout)
        return {k["name"]: k["month"]["requests"] for k in out["keys"]}["app"]

    time.sleep(3)  # earlier tests' last calls are written within a flush interval (2 s)
    before = month()
    data.run("systemctl stop postgresql")
    try:
        codes = [chat(lab, GATEWAYS[i % 2], keys["app"]).status_code for i in range(12)]
        time.sleep(5)  # writes fail meanwhile; rows stay buffered
        codes += [chat(lab, GATEWAYS[i % 2], keys["app"]).status_code for i in range(4)]
    finally:
        data.run("systemctl start postgresql")
    assert codes == [200] * 16, codes
    assert wait_until(lambda: month() >= before + 16, timeout=60, interval=2)
    assert month() == before + 16
    log = lab.hosts["gw1"].run("journalctl -q --no-pager -u 'litellm@*' --since '-5min' | grep gatekit-keys || true").stdout
    assert "cannot write usage to PostgreSQL" in log and "buffered usage written" in log, log[-2000:]


def test_postgres_cut_off_under_load_fails_nothing_keeps_p99_and_every_request_is_counted_on_return(lab, keys):
    """PostgreSQL silent (its packets dropped, nothing refused) for 25 s or more under client-key traffic with a
    monthly budget: no request fails, p99 stays within 1 s of the same load with PostgreSQL answering, every served
    request is in the usage ledger once it answers again, gatekit doctor names the silent PostgreSQL (and nothing
    else) meanwhile, and DependencyUnreachable fires for every gateway (PostgreSQL's own exporter still answers:
    PostgresDown cannot see a cut path). The cut lasts until both alerts fire, a minute at most."""
    budgeted = add_key(lab, "budgeted", "--models", "fast", "--budget", "1000")
    assert lab.deploy().ok
    wait_until(lambda: all(chat(lab, gw, budgeted).status_code == 200 for gw in GATEWAYS), timeout=10, what="key works")
    pg = lab.groups["postgres"][0]

    def month() -> int:
        out = json.loads(gatekit(lab, "keys", "list", "--spec", str(lab.spec_path), "--json", "--usage",
                                 str(lab.inventory_path)).stdout)
        return {k["name"]: k["month"]["requests"] for k in out["keys"]}["budgeted"]

    # What doctor finds failing on gw1 with PostgreSQL answering (earlier tests may have left findings of their own):
    # the cut must add exactly its own. Before the healthy window, which it would slow.
    baseline = doctor_failures(lab, GATEWAYS[0])
    time.sleep(3)  # the calls above are written within a flush interval
    before = month()
    with Load(lab, list(GATEWAYS), models=("fast",), api_key=budgeted) as healthy:
        time.sleep(15)
    with Load(lab, list(GATEWAYS), models=("fast",), api_key=budgeted) as cut:
        time.sleep(2)
        with faults.dropped(lab, pg, lab.host_settings(pg)["postgres_port"]):
            cut_at = time.monotonic()
            during = doctor_failures(lab, GATEWAYS[0])
            fired: set[tuple[str, str]] = set()
            # Prometheus' host label is the inventory's name of the host: its address in the lab.
            expected = {(lab.hosts[gw].address, "postgres") for gw in GATEWAYS}
            while time.monotonic() - cut_at < 25 or (fired != expected
                                                     and time.monotonic() - cut_at < 60):
                for a in prometheus_query(lab, 'ALERTS{alertname="DependencyUnreachable", alertstate="firing"}'):
                    fired.add((a["metric"]["host"], a["metric"]["dependency"]))
                time.sleep(2)
            cut_seconds = time.monotonic() - cut_at
        time.sleep(3)
    report = {gw: {"healthy_p99_ms": healthy.summary(gw)["p99_ms"], "cut_p99_ms": cut.summary(gw)["p99_ms"]}
              for gw in GATEWAYS}
    served = len(healthy.results) + len(cut.results)
    print(f"PostgreSQL cut off for {cut_seconds:.0f} s under load:", cut.summary(), "healthy:", healthy.summary(),
          report, "alerts:", sorted(fired))
    assert healthy.failures == [] and cut.failures == [], (healthy.summary(), cut.summary())
    for gw in GATEWAYS:
        assert report[gw]["cut_p99_ms"] <= report[gw]["healthy_p99_ms"] + 1000, report
    assert "postgres" not in baseline, baseline
    target = f"{lab.hosts[pg].address}:{lab.host_settings(pg)['postgres_port']}"
    assert f"{target} with the password: error: TimeoutError" in during.get("postgres", ""), during
    assert sorted(during) == sorted({*baseline, "postgres"}), (baseline, during)
    # Each gateway's own view, and only PostgreSQL: Redis on the same host kept answering.
    assert fired == expected, fired
    t0 = time.monotonic()
    assert wait_until(lambda: month() >= before + served, timeout=180, interval=3)
    assert month() == before + served, (month(), before, served)  # each once: none lost, none twice
    print(f"all {served} served requests in the ledger {time.monotonic() - t0:.0f} s after PostgreSQL answered again")


def test_revoking_a_key_takes_effect_on_deploy_without_restart_or_failed_request(lab, keys):
    extra = add_key(lab, "extra", "--models", "fast")
    pids = live_pids(lab)
    with Load(lab, list(GATEWAYS), models=("fast",), api_key=keys["app"]) as load:
        assert lab.deploy().ok
        # Each worker notices the new table within a second (it checks the file at most once a second).
        wait_until(lambda: all(chat(lab, gw, extra).status_code == 200 for gw in GATEWAYS), timeout=10, what="key works")
        gatekit(lab, "keys", "revoke", "extra", "--spec", str(lab.spec_path))
        assert lab.deploy().ok
        # The documented bound: a worker that looked at the table just before the deploy wrote it looks again
        # on its first request after RELOAD_SECONDS, so from then on every worker refuses the key.
        time.sleep(RELOAD_SECONDS)
        # Every worker of both gateways has dropped it: several calls, spread over the workers.
        assert {chat(lab, GATEWAYS[i % 2], extra).status_code for i in range(8)} == {401}
    assert live_pids(lab) == pids
    s = load.summary()
    assert s["requests"] > 20 and s["failed"] == 0, s


def test_rotating_a_client_key_under_load_swaps_it_without_restart_or_failed_request(lab, keys):
    """`gatekit keys rotate` + deploy while other clients call: the new key works and the old one is refused on
    every worker of both gateways, no instance restarts and no request of the other clients fails."""
    old = add_key(lab, "rotating", "--models", "fast")
    assert lab.deploy().ok
    wait_until(lambda: all(chat(lab, gw, old).status_code == 200 for gw in GATEWAYS), timeout=10, what="key works")
    pids = live_pids(lab)
    with Load(lab, list(GATEWAYS), models=("fast",), api_key=keys["app"]) as load:
        new = gatekit(lab, "keys", "rotate", "rotating", "--spec", str(lab.spec_path)).stdout.strip()
        assert new.startswith("gk-") and new != old
        assert chat(lab, "gw1", old).status_code == 200  # the old key works until the next deploy
        deploy_started = time.monotonic()
        assert lab.deploy().ok
        deploy_ended = time.monotonic()
        time.sleep(RELOAD_SECONDS)  # the documented bound for every worker to read the new table
        assert {chat(lab, GATEWAYS[i % 2], new).status_code for i in range(8)} == {200}
        assert {chat(lab, GATEWAYS[i % 2], old).status_code for i in range(8)} == {401}
    assert live_pids(lab) == pids
    s = load.summary()
    # Traffic all along (one client per gateway, about 0.8 s a call): calls sent while the deploy ran, none failed.
    during = [r for r in load.results if deploy_started <= r[0] <= deploy_ended]
    assert s["requests"] >= 10 and during and s["failed"] == 0, (s, len(during))
    keys.update({"rotating": new, "rotating-old": old})  # the leak scan below looks for both


def test_client_keys_appear_nowhere_on_the_hosts(lab, keys):
    """Only hashes travel: no client key in any file, process command line or journal on any host (the
    calls above sent every one of them through nginx and LiteLLM)."""
    assert secret_locations(lab, list(keys.values())) == []
