"""gatekit/onhost/gcpolicy.py: Python's cycle collector run from LiteLLM's event loop only, between callbacks."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gatekit.onhost import gcpolicy


@pytest.mark.parametrize("counts, due", [
    ((0, 0, 0), None), ((700, 9, 9), None),  # CPython collects when a count exceeds its threshold
    ((701, 0, 0), 0), ((701, 10, 3), 0), ((701, 11, 0), 1),
    ((5000, 11, 50), 1),  # full collections never come from the counts (they run on their own schedule)
])
def test_young_generation_due_follows_cpythons_thresholds(counts, due):
    assert gcpolicy.young_generation_due(counts, (700, 10, 10)) == due


@pytest.fixture
def restore_gc():
    yield
    gc.enable()
    gc.unfreeze()


def test_collections_run_from_the_loop_freeze_then_full_on_schedule(restore_gc):
    loop = asyncio.new_event_loop()
    try:
        collector = gcpolicy.SafePointCollector(loop, tick=0.01, freeze_after=0.2, full_every=0.25)
        collector.install()
        assert not gc.isenabled()  # no collection can start inside an allocation (a ContextVar.set)

        class Cycle:
            pass

        async def churn():
            for _ in range(80):
                for _ in range(2000):  # cycles only the collector frees
                    a, b = Cycle(), Cycle()
                    a.b, b.a = b, a
                await asyncio.sleep(0.01)

        loop.run_until_complete(churn())
        assert not gc.isenabled()
        assert collector.collections[0] > 0 and collector.collections[1] > 0, collector.collections
        assert collector.last_full is not None and gc.get_freeze_count() > 0  # startup's objects frozen
        assert collector.collections[2] >= 1, collector.collections  # full collections on their schedule
        # Young cycles do not pile up: what is left uncollected stays within a few ticks' worth.
        assert gc.get_count()[0] < 20_000
    finally:
        loop.close()


def test_new_event_loop_installs_the_collector(restore_gc):
    loop = gcpolicy.new_event_loop()
    try:
        assert not gc.isenabled()
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        loop.close()
