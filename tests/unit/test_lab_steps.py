"""lab.faults.steps_on_each_gateway: how the e2e kill-at-each-step tests spread steps over the gateways."""

from __future__ import annotations

import threading

from lab.faults import steps_on_each_gateway


def test_steps_go_in_turns_of_one_per_gateway_and_every_failure_is_reported():
    turns, done, lock = [], [], threading.Lock()

    def prepare(runs):
        turns.append(runs)
        return len(turns)

    def run(gw, step, turn):
        with lock:
            done.append((turn, gw, step))
        if step in ("b", "c"):
            raise AssertionError(f"{step} broke")

    errors = steps_on_each_gateway(["gw1", "gw2"], ("a", "b", "c"), prepare, run)
    assert turns == [[("gw1", "a"), ("gw2", "b")], [("gw1", "c")]]
    assert sorted(done) == [(1, "gw1", "a"), (1, "gw2", "b"), (2, "gw1", "c")]
    assert errors == ["gw2, killed after b: AssertionError: b broke", "gw1, killed after c: AssertionError: c broke"]
