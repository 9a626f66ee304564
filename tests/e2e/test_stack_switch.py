"""A deploy that changes what LiteLLM starts from, on gateways that serve (runs after test_stack_rotation.py, same
session and hosts): the blue/green switch with canaries, the first gateway alone, then the others; a change the
provider refuses is rolled back on the first gateway and never reaches the others. And a provider that accepts calls
and never answers: one timeout per attempt, the deployment cooled down at once, the fallback answers.
"""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from gatekit.onhost.rotate import FAULT_STEPS
from lab.checks import completion, doctor_failures, gatekit, gateway_client, prometheus_query, wait_until
from lab.env import fake_key
from lab.fakeprovider import answer_text, fingerprint
from lab.faults import steps_on_each_gateway
from lab.load import Load


def gateways(lab) -> list[str]:
    return list(lab.groups["gateways"])


def config_sha1(lab, gw: str) -> str:
    return hashlib.sha1(lab.hosts[gw].run(f"cat {lab.layout(gw).config}").stdout.encode()).hexdigest()


def canaries(provider, since: float, model: str, gw_address: str) -> list[float]:
    """When the provider saw calls to upstream `model` from one gateway's address."""
    return [r["time"] for r in provider.requests(since=since, client=gw_address) if r.get("model") == model]


# Models of the other provider shapes (gatekit/providers.py), each with its own key: public name -> (the provider's API
# as the fake provider records it, the upstream model or Azure deployment it must see).
SHAPES = {"gemini-flash": ("gemini", "fake-gemini-flash"), "azure-4o": ("azure", "fake-azure-4o")}
AZURE_API_VERSION = "2024-10-21"


def quick_and_hung(lab):
    """The models the first test adds: `quick`, `hung` (its deployment's provider hangs in the second test: a 2 s
    timeout per attempt, then the fallback to quick) and one model per other provider shape (SHAPES). The second test
    asks for the same spec: run after the first, its deploy changes nothing; alone, it switches to these models."""
    base = f"{lab.provider_url}/v1"
    price = {"input_per_1m": 0.1, "output_per_1m": 0.2}
    lab.extra_models += [
        {"name": "quick", "price": price,
         "deployments": [{"provider": "openai", "model": "fake-quick", "api_base": base, "secret": "openai_key"}]},
        {"name": "hung", "price": price,
         "deployments": [{"provider": "openai", "model": "fake-hung", "api_base": base, "secret": "openai_key",
                          "timeout": 2, "stream_timeout": 2}]},
        # Gemini: LiteLLM calls {api_base}/models/MODEL:generateContent with x-goog-api-key.
        {"name": "gemini-flash", "price": price,
         "deployments": [{"provider": "gemini", "model": "fake-gemini-flash", "api_base": f"{lab.provider_url}/v1beta",
                          "secret": "google_key"}]},
        # Azure: the resource endpoint; LiteLLM appends /openai/deployments/DEPLOYMENT/... with api-version and api-key.
        {"name": "azure-4o", "price": price,
         "deployments": [{"provider": "azure", "model": "fake-azure-4o", "api_base": lab.provider_url,
                          "api_version": AZURE_API_VERSION, "secret": "azure_key"}]},
    ]
    lab.extra_fallbacks.append({"from": "hung", "to": ["quick"]})
    lab.weights["fast"] = 3


def test_a_spec_change_switches_every_gateway_first_one_alone_then_the_rest_without_a_failed_request(
        lab, provider, spec_restored):
    gws = gateways(lab)
    before = {gw: lab.live_ports(gw) for gw in gws}
    quick_and_hung(lab)
    lab.write_spec()
    since = time.time()
    with Load(lab, gws, threads_per_gateway=2) as load:
        result = lab.deploy()
    print("deploy under load:", load.summary(), f"{result.seconds:.1f} s")
    assert load.failures == [], load.summary()
    # Traffic ran through the whole deploy, on every gateway.
    assert {gw for t, gw, *_ in load.results if t > load.results[0][0] + 5} == set(gws)
    for gw in gws:
        now = lab.live_record(gw)
        assert now["change"] == "deploy" and tuple(now["ports"]) != before[gw], (gw, now)  # the other set serves
        assert now["config_sha1"] == config_sha1(lab, gw)
        # What each deployment is, recorded: the next change canaries only what it adds or alters.
        assert [i for i in now["deployments"] if i.startswith("quick--0")], now["deployments"]
    # gw1's switch ended before any other gateway's began; the canary of the new deployment ran on each of gw1's new
    # instances before any other gateway's.
    done_first = lab.live_record(gws[0])["switch_done"]
    assert all(lab.live_record(gw)["switch_started"] > done_first for gw in gws[1:]), {gw: lab.live_record(gw) for gw in gws}
    address = {gw: lab.hosts[gw].address for gw in gws}
    first = canaries(provider, since, "fake-quick", address[gws[0]])
    assert len(first) >= len(lab.live_record(gws[0])["ports"]), first
    for gw in gws[1:]:
        theirs = canaries(provider, since, "fake-quick", address[gw])
        assert theirs and min(theirs) > max(first), (gw, theirs, first)
    with gateway_client(lab) as client:
        for gw in gws:
            r = completion(client, lab.gateway_url(gw), model="quick")
            assert r.status_code == 200, (gw, r.text)
    provider_shapes_answer_through_nginx(lab, provider, gws, since)
    again = lab.deploy()
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in gws}
    # gatekit status: every gateway current, on one config and version, its last change this deploy.
    status = json.loads(gatekit(lab, "status", str(lab.inventory_path), "--json").stdout)
    assert not status["mixed"] and [g["gateway"] for g in status["gateways"]] == [lab.hosts[gw].address for gw in gws]
    for g, gw in zip(status["gateways"], gws):
        assert (g["state"], g["last_change"], g["config_sha1"]) == ("current", "deploy", config_sha1(lab, gw)), g


def provider_shapes_answer_through_nginx(lab, provider, gws: list[str], since: float):
    """Each other provider shape (SHAPES) was canaried by the switch on every new instance, and answers through nginx
    on every gateway, plain and streamed (in pieces), with its own key, as LiteLLM's provider code sends it."""
    key = {"gemini": fingerprint(lab.secret_values["google_key"]), "azure": fingerprint(lab.secret_values["azure_key"])}
    with gateway_client(lab) as client:
        for gw in gws:
            address = lab.hosts[gw].address
            for model, (api, upstream) in SHAPES.items():
                seen = [r for r in provider.requests(since=since, client=address) if r.get("model") == upstream]
                # The switch's canary: once per new instance (no fallback could answer for it: these models have none).
                assert len(seen) >= len(lab.live_record(gw)["ports"]), (gw, model, seen)
                r = completion(client, lab.gateway_url(gw), model=model)
                assert r.status_code == 200, (gw, model, r.text)
                assert r.json()["choices"][0]["message"]["content"] == answer_text(upstream), (gw, model, r.text)
                arrivals, text = streamed(client, lab.gateway_url(gw), model)
                assert text == answer_text(upstream), (gw, model, text)
                assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.3, (gw, model, arrivals)  # pieces, not one lump
                calls = [r for r in provider.requests(since=since, client=address) if r.get("model") == upstream]
                assert {(r["api"], r["fingerprint"], r["status"]) for r in calls} == {(api, key[api], 200)}, (gw, calls)
                assert [r["stream"] for r in calls][-2:] == [False, True], (gw, calls)
                if api == "azure":
                    assert {r["api_version"] for r in calls} == {AZURE_API_VERSION}, calls


def streamed(client, url: str, model: str) -> tuple[list[float], str]:
    """A streamed call through nginx: when each content piece arrived, and the text they make."""
    arrivals, pieces = [], []
    with client.stream("POST", f"{url}/v1/chat/completions",
                       json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
        assert r.status_code == 200, (model, r.read())
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[len("data: "):]).get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                arrivals.append(time.monotonic())
                pieces.append(piece)
    return arrivals, "".join(pieces)


def test_a_hung_provider_costs_one_timeout_then_the_fallback_answers_and_the_next_calls_skip_it(
        lab, provider, spec_restored):
    """The provider accepts every call to `hung`'s deployment and never answers (issue 24's hung provider): the first
    call falls back to `quick` after one 2 s timeout (the deployment is cooled down at once, so the retry does not wait
    again), the next calls skip it without reaching the provider, streamed ones too; the other models are untouched.
    Meanwhile gatekit doctor names the cooled-down deployment and DeploymentCooledDown fires for it."""
    quick_and_hung(lab)
    lab.write_spec()
    gws = list(lab.groups["gateways"])
    with Load(lab, gws) as load:
        switched = lab.deploy()  # after the first test: nothing to do; alone: the switch to these models
    assert switched.ok and load.failures == [], load.summary()
    gw = gws[0]
    provider.faults(latency=600, model="fake-hung")
    try:
        since = time.time()
        with Load(lab, gws) as load, gateway_client(lab) as client:
            timings = []
            for stream in (False, False, True):
                t0 = time.monotonic()
                if stream:
                    with client.stream("POST", f"{lab.gateway_url(gw)}/v1/chat/completions",
                                       json={"model": "hung", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 5, "stream": True}) as r:
                        body = r.read().decode()
                else:
                    r = completion(client, lab.gateway_url(gw), model="hung")
                    body = r.text
                timings.append(round(time.monotonic() - t0, 2))
                assert r.status_code == 200 and "fake-answer" in body, (stream, r.status_code, body[:300])
        print("hung provider: seconds per call (plain, plain, streamed):", timings, "other models:", load.summary())
        assert load.failures == [], load.summary()
        seen = [r["model"] for r in provider.requests(since=since, client=lab.hosts[gw].address)
                if r.get("model") in ("fake-hung", "fake-quick")]
        # (nginx strips LiteLLM's x-litellm-* headers: the provider's records say who answered.) One attempt reached
        # the hung deployment; its retry and the next two calls skipped it (cooled down); each call was answered by
        # the fallback's deployment.
        assert seen.count("fake-hung") == 1 and seen.count("fake-quick") == 3, seen
        assert timings[0] < 30, timings  # one 2 s timeout and the fallback, not LiteLLM's 600 s request timeout
        # Reported while it is skipped (the spec's cooldown_time, 30 s): doctor's routing check names the deployment
        # (its id begins with the model's name), and the alert on LiteLLM's cooldown counter fires for its model
        # (LiteLLM labels the counter with the deployment's public model name).
        routing = doctor_failures(lab, gw).get("routing", "")
        assert "deployment hung--" in routing and "is cooling down now" in routing, routing
        cooled = 'ALERTS{alertname="DeploymentCooledDown", alertstate="firing", litellm_model_name="hung"}'
        wait_until(lambda: prometheus_query(lab, cooled), 60, interval=3, what="DeploymentCooledDown for hung")
    finally:
        provider.clear_faults(model="fake-hung")


def test_a_model_the_provider_refuses_is_rolled_back_on_the_first_gateway_and_never_reaches_the_others(
        lab, provider, spec_restored):
    gws = gateways(lab)
    before = {gw: (lab.live_record(gw), config_sha1(lab, gw)) for gw in gws}
    provider.faults(status=404, model="fake-missing")  # the provider does not know this model
    lab.extra_models.append({"name": "missing", "price": {"input_per_1m": 0.1, "output_per_1m": 0.2},
                             "deployments": [{"provider": "openai", "model": "fake-missing",
                                              "api_base": f"{lab.provider_url}/v1", "secret": "openai_key"}]})
    lab.write_spec()
    since = time.time()
    try:
        with Load(lab, gws, threads_per_gateway=2) as load:
            result = lab.deploy(check=False)
    finally:
        provider.clear_faults(model="fake-missing")
    print("refused deploy under load:", load.summary(), f"{result.seconds:.1f} s")
    assert not result.ok
    # The deploy names the host, the deployment and what the provider answered.
    assert lab.hosts[gws[0]].address in result.stderr and "step canary failed" in result.stderr, result.stderr[-3000:]
    assert "deployment missing--0" in result.stderr and "HTTP 404" in result.stderr, result.stderr[-3000:]
    assert load.failures == [], load.summary()
    for gw in gws:  # every gateway serves what it served before: the same set, from the same config
        assert (lab.live_record(gw), config_sha1(lab, gw)) == before[gw], gw
        L = lab.layout(gw)
        left = lab.hosts[gw].run(f"ls {L.litellm_config_dir} {L.creds_dir} {L.systemd_dir}").stdout.split()
        assert not [f for f in left if f.endswith((".next", ".prev"))], (gw, left)
    # Only the first gateway ever called the refused model; the others were never switched.
    callers = {r["client"] for r in provider.requests(since=since) if r.get("model") == "fake-missing"}
    assert callers == {lab.hosts[gws[0]].address}, callers
    for gw in gws[1:]:
        assert not [n for n in result.changed_ops(lab.hosts[gw].address) if "Switch" in n], gw
    # gatekit status: every gateway on its previous config, the spec's change pending everywhere, exit 1.
    proc = gatekit(lab, "status", str(lab.inventory_path), "--json", check=False)
    status = json.loads(proc.stdout)
    assert proc.returncode == 1 and not status["mixed"], proc.stdout
    assert [g["state"] for g in status["gateways"]] == ["pending"] * len(gws), status


def test_a_deploy_switch_killed_on_the_first_gateway_is_finished_by_the_next_deploy(lab, provider, spec_restored):
    """gatekit-rotate SIGKILLed right after nginx switched on the first gateway (the journal stays, nginx is on the new
    set): the deploy fails there and touches no other gateway; `gatekit status` shows the interrupted switch; the next
    deploy finishes it forward and switches the others; no request fails throughout."""
    gws = gateways(lab)
    before = {gw: config_sha1(lab, gw) for gw in gws}
    lab.weights["smart"] = 2
    lab.write_spec()
    with Load(lab, gws) as load:
        killed = lab.deploy(extra=["--data", "gatekit_rotate_fail_after=switch"], check=False)
    assert not killed.ok and "dying after step switch" in killed.stdout + killed.stderr, killed.stderr[-3000:]
    assert load.failures == [], load.summary()
    first, rest = gws[0], gws[1:]
    assert lab.hosts[first].run(f"test -e {lab.layout(first).journal_file}", check=False).returncode == 0
    assert [config_sha1(lab, gw) for gw in rest] == [before[gw] for gw in rest]
    status = json.loads(gatekit(lab, "status", str(lab.inventory_path), "--json", check=False).stdout)
    assert [g["state"] for g in status["gateways"]] == ["interrupted"] + ["pending"] * len(rest), status
    doctor = json.loads(gatekit(lab, "doctor", str(lab.inventory_path), "--json", "--host", first, check=False).stdout)
    (switch,) = [r for r in doctor["results"] if r["check"] == "switch"]
    assert switch["status"] == "fail" and "a deploy switch" in switch["evidence"] and "config.yaml" in switch["evidence"]
    with Load(lab, gws) as load:
        done = lab.deploy()
    print("deploy after a killed switch:", load.summary(), f"{done.seconds:.1f} s")
    assert load.failures == [], load.summary()
    with gateway_client(lab) as client:  # and every gateway serves once it is done (nginx on the set that runs)
        for gw in gws:
            r = completion(client, lab.gateway_url(gw), model="smart")
            assert r.status_code == 200, (gw, r.status_code, r.text[:300])
    for gw in gws:
        L = lab.layout(gw)
        assert lab.hosts[gw].run(f"test ! -e {L.journal_file}", check=False).returncode == 0, gw
        assert lab.live_record(gw)["config_sha1"] == config_sha1(lab, gw) != before[gw], gw
    again = lab.deploy()
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in gws}



# Each step of a deploy's switch (gatekit-rotate, the host program rotations use too), killed right after it: one
# step per gateway at once, each gateway deployed alone (--limit), a new weight per group. With fewer gateways than
# steps in a group, the steps take turns.
GROUPS = [FAULT_STEPS[i:i + 2] for i in range(0, len(FAULT_STEPS), 2)]


def _kill_deploy_after(lab, gw: str, step: str, before: tuple[str, tuple]):
    """gw's deploy, its switch killed after `step`: the gateway serves throughout and in between, and the next deploy
    completes the change (rolled back and switched again, or finished forward): the other set serves the new config,
    recorded, no journal left."""
    address, L = lab.hosts[gw].address, lab.layout(gw)
    with Load(lab, [gw], threads_per_gateway=1) as load:
        killed = lab.deploy(extra=["--limit", address, "--data", f"gatekit_rotate_fail_after={step}"], check=False)
        time.sleep(2)
    assert not killed.ok and f"dying after step {step}" in killed.stdout + killed.stderr, killed.stderr[-3000:]
    assert load.failures == [], load.summary()
    with gateway_client(lab) as client:
        for _ in range(3):
            assert completion(client, lab.gateway_url(gw), model="smart").status_code == 200
    with Load(lab, [gw], threads_per_gateway=1) as load:
        done = lab.deploy(extra=["--limit", address])
    assert done.ok, done.stderr[-3000:]
    assert load.failures == [], load.summary()
    assert lab.hosts[gw].run(f"test ! -e {L.journal_file}", check=False).returncode == 0
    now = lab.live_record(gw)
    assert now["config_sha1"] == config_sha1(lab, gw) != before[0], now
    assert lab.live_ports(gw) != before[1], (lab.live_ports(gw), before)


@pytest.mark.parametrize("steps", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_a_deploy_switch_killed_after_each_step_is_completed_by_the_next_deploy(lab, spec_restored, steps):
    gws = gateways(lab)

    def new_weight(runs) -> dict[str, tuple]:
        lab.weights["smart"] = 10 + FAULT_STEPS.index(runs[0][1])  # a change that needs LiteLLM restarted
        lab.write_spec()
        return {gw: (config_sha1(lab, gw), lab.live_ports(gw)) for gw, _ in runs}

    errors = steps_on_each_gateway(gws, steps, new_weight,
                                   lambda gw, step, before: _kill_deploy_after(lab, gw, step, before[gw]))
    assert not errors, "\n".join(errors)
    again = lab.deploy()
    assert again.ok and again.changes == 0, {h: again.changed_ops(lab.hosts[h].address) for h in gws}


def test_a_gemini_and_an_azure_key_rotated_together_under_load_each_provider_sees_only_its_new_key(
        lab, provider, spec_restored):
    """The one-key provider shapes beside OpenAI (issue 23): google_key and azure_key rotated in one run under load,
    no failed request; afterwards Gemini and Azure see only their new keys, and the OpenAI and Anthropic channels keep
    theirs."""
    quick_and_hung(lab)
    lab.write_spec()
    gws = gateways(lab)
    assert lab.deploy().ok  # after the tests above: the models are live already; alone: the switch to them
    kept = {"fake-fast": fingerprint(lab.secret_values["openai_key"]),
            "fake-claude": fingerprint(lab.secret_values["anthropic_key"])}
    new = {"google_key": fake_key("google-rot"), "azure_key": fake_key("azure-rot")}
    for name, value in new.items():
        lab.set_secret(name, value)
    with Load(lab, gws, threads_per_gateway=2) as load:
        rotated = lab.deploy("rotate_keys.py", extra=["--data", "rotate=google_key,azure_key"], check=False)
    print("gemini + azure rotation under load:", load.summary(), f"{rotated.seconds:.1f} s")
    assert rotated.ok, rotated.stderr[-3000:]
    assert load.failures == [], load.summary()
    since = time.time()
    with gateway_client(lab) as client:
        for gw in gws:
            for model in (*SHAPES, "fast", "claude"):
                r = completion(client, lab.gateway_url(gw), model=model)
                assert r.status_code == 200, (gw, model, r.text[:300])
            record = lab.live_record(gw)["secrets"]
            assert {n: record.get(n, {}).get("fingerprint") for n in new} == {n: fingerprint(v) for n, v in new.items()}, record
    seen: dict[str, set] = {}
    for r in provider.requests(since=since):
        seen.setdefault(r.get("model"), set()).add(r["fingerprint"])
    assert seen["fake-gemini-flash"] == {fingerprint(new["google_key"])}, seen
    assert seen["fake-azure-4o"] == {fingerprint(new["azure_key"])}, seen
    assert {m: seen[m] for m in kept} == {m: {fp} for m, fp in kept.items()}, seen
