"""Dependencies that go silent instead of refusing (same session and hosts as test_stack.py).

Redis cut off by dropped packets under load: LiteLLM's Redis calls give up after litellm_redis_timeout and its
circuit breaker skips Redis until it answers again (rate limits, cooldowns and budgets per instance meanwhile):
nothing fails, latency stays, RedisBypassed fires, gatekit doctor names the silent Redis, and shared state resumes
without a restart.
(A provider that hangs: tests/e2e/test_stack_switch.py, which runs after the tests that expect the lab's own spec.)
"""

from __future__ import annotations

import time

from lab import faults
from lab.checks import doctor_failures, prometheus_query, redis_cli, wait_for_scrapes, wait_until
from lab.load import Load

HEALTHY_SEC, CUT_SEC, AFTER_SEC = 20, 30, 15


def redis_commands(lab) -> int:
    (line,) = [ln for ln in redis_cli(lab, "INFO stats") if ln.startswith("total_commands_processed:")]
    return int(line.split(":", 1)[1])


def test_redis_cut_off_under_load_fails_nothing_keeps_p99_fires_its_alert_and_resumes(lab):
    gws = list(lab.groups["gateways"])
    redis = lab.groups["redis"][0]
    port = lab.host_settings(redis)["redis_port"]
    # What doctor says of gw1 with Redis answering (earlier tests may have left findings, e.g. a killed instance's
    # restart count): the cut must add exactly its own. Before the healthy window, which it would slow.
    baseline = doctor_failures(lab, gws[0])
    with Load(lab, gws) as healthy:
        time.sleep(HEALTHY_SEC)
    fired: set[tuple[str, str]] = set()
    unreachable: set[tuple[str, str]] = set()  # (gateway, dependency) seen unreachable from that gateway
    with Load(lab, gws) as cut:
        time.sleep(2)
        with faults.dropped(lab, redis, port):
            cut_at = time.monotonic()
            # gatekit doctor names the silent Redis (from the first gateway: the same check runs on every one).
            during = doctor_failures(lab, gws[0])
            while time.monotonic() - cut_at < CUT_SEC:
                for a in prometheus_query(lab, 'ALERTS{alertname="RedisBypassed", alertstate="firing"}'):
                    fired.add((a["metric"]["host"], a["metric"]["port"]))
                for m in prometheus_query(lab, 'gatekit_dependency_reachable == 0'):
                    unreachable.add((m["metric"]["host"], m["metric"]["dependency"]))
                time.sleep(2)
        back_at = time.monotonic()
        time.sleep(AFTER_SEC)
        before = redis_commands(lab)
        time.sleep(5)
        after = redis_commands(lab)
    report = {gw: {"healthy_p99_ms": healthy.summary(gw)["p99_ms"], "cut_p99_ms": cut.summary(gw)["p99_ms"]} for gw in gws}
    print("Redis cut off for", CUT_SEC, "s under load:", cut.summary(), "healthy:", healthy.summary(), report)
    assert cut.failures == [], cut.summary()
    assert "redis" not in baseline and "routing" not in baseline, baseline
    target = f"{lab.hosts[redis].address}:{port}"
    assert f"from here to {target}: TimeoutError" in during.get("redis", ""), during
    # Nothing else is blamed: the routing check says it cannot see the cooldowns, which live in Redis.
    assert "Redis not readable: cooldowns unknown" in during.get("routing", ""), during
    assert sorted(during) == sorted({*baseline, "redis", "routing"}), (baseline, during)
    for gw in gws:  # every gateway keeps its latency: within 1 s of the same load with Redis answering
        assert report[gw]["cut_p99_ms"] <= report[gw]["healthy_p99_ms"] + 1000, report
    # Every live instance's breaker opened (RedisBypassed named each: the lab's gateways have distinct ports), and
    # is closed again: Redis is used once more, without a restart.
    assert {p for _, p in fired} >= {str(p) for gw in gws for p in lab.live_ports(gw)}, fired
    # Each gateway's own view of the path (gatekit-unitstats): Redis unreachable from every gateway, PostgreSQL on
    # the same host never.
    assert unreachable == {(lab.hosts[gw].address, "redis") for gw in gws}, unreachable  # host: the inventory's name
    # Closed again once each worker's next Redis call after LiteLLM's recovery timeout succeeds: within a minute (a
    # breaker that stays open fails here). Seen: a gw2 worker whose breaker last opened 4 s before the cut ended was
    # still open at the first look, 20 s after it.
    wait_for_scrapes(lab)
    open_breakers = 'max by (host, port) (litellm_redis_circuit_breaker_state{job="litellm", state!="closed"}) > 0'
    wait_until(lambda: prometheus_query(lab, open_breakers) == [], 60, interval=5,
               what="every instance's Redis circuit breaker to close again")
    assert after > before, (before, after)  # the gateways write to Redis again (counters, cooldowns)
    print(f"breaker alerts: {sorted(fired)}; Redis commands in 5 s after resume: {after - before}; "
          f"resumed {time.monotonic() - back_at:.0f} s after the cut ended")

