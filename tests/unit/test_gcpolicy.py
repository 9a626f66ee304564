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


class Cycle:
    pass


def churn_until(loop, done, limit=30.0):
    """Make young cycles (only the collector frees them) until done() or `limit` seconds of loop time.

    A bounded wait, not a timing assert: on a loaded machine the loop's ticks come late, so the test waits
    for the collections it expects instead of counting on how many ticks fit in a fixed window."""

    async def churn():
        deadline = loop.time() + limit
        while not done() and loop.time() < deadline:
            for _ in range(2000):
                a, b = Cycle(), Cycle()
                a.b, b.a = b, a
            await asyncio.sleep(0.01)

    loop.run_until_complete(churn())


def test_young_collections_run_from_the_loop_by_cpythons_thresholds(restore_gc):
    loop = asyncio.new_event_loop()
    try:
        # No freeze and no full collection in this test: a full one would reset the count that makes the
        # next young generation due, so generation 1 would wait on how late the loop's ticks come.
        collector = gcpolicy.SafePointCollector(loop, tick=0.01, freeze_after=1e9, full_every=1e9)
        collector.install()
        assert not gc.isenabled()  # no collection can start inside an allocation (a ContextVar.set)
        # Both generations: a count left high by earlier code can make generation 1 due before any generation 0.
        churn_until(loop, lambda: collector.collections[0] > 0 and collector.collections[1] > 0)
        assert not gc.isenabled()
        assert collector.collections[0] > 0 and collector.collections[1] > 0, collector.collections
        assert collector.collections[2] == 0 and collector.last_full is None, collector.collections
        # Young cycles do not pile up: what is left uncollected stays within a few ticks' worth.
        assert gc.get_count()[0] < 20_000
    finally:
        loop.close()


def test_startup_objects_are_frozen_then_full_collections_run_on_schedule(restore_gc):
    loop = asyncio.new_event_loop()
    try:
        collector = gcpolicy.SafePointCollector(loop, tick=0.01, freeze_after=0.2, full_every=0.25)
        collector.install()
        churn_until(loop, lambda: collector.collections[2] >= 2 and collector.collections[0] > 0)
        assert not gc.isenabled()
        assert collector.last_full is not None and gc.get_freeze_count() > 0  # startup's objects frozen
        assert collector.collections[2] >= 2, collector.collections  # full collections on their schedule
        assert collector.collections[0] > 0, collector.collections  # young ones still run between them
    finally:
        loop.close()


def test_new_event_loop_installs_the_collector(restore_gc):
    loop = gcpolicy.new_event_loop()
    try:
        assert not gc.isenabled()
        assert loop.run_until_complete(asyncio.sleep(0, result="ran")) == "ran"
    finally:
        loop.close()
