"""LiteLLM's event loop with Python's cyclic garbage collector run only between loop callbacks.

Why: on CPython before 3.12 (Debian 12 ships 3.11) an automatic collection can start inside
`ContextVar.set()`, while it allocates nodes of the context's HAMT; a finalizer run by that collection that
sets a context variable again frees the HAMT being walked, and the process dies with SIGSEGV
(cpython gh-148891; seen here under load: `Fatal Python error: Segmentation fault` in
`litellm/_internal_context.py` `service_target`, about once per 20,000 requests at 100 requests/s).
LiteLLM sets context variables on every request, and closes abandoned coroutines whose `finally` resets
them. With automatic collection off, a collection starts only from a loop callback, when no C code of
the interpreter is half-way through a context operation, so that crash cannot happen.

What stays the same: reference counting frees most objects at once, as before; cycles among young objects
are collected by CPython's own thresholds (700 new container objects for a young collection, every 10th
of those one generation older), only checked every TICK seconds instead of on each allocation. Full
collections (CPython runs them when the old generation has grown by a quarter) run every FULL_EVERY
seconds, after the objects alive once the proxy has started (modules, config, router) were frozen out of
every collection (`gc.freeze()`): they scan only what has survived since.

uvicorn loads this as its loop factory (`loop="gcpolicy:new_event_loop"`, see the launcher); it runs in
LiteLLM's own venv, on the launcher's sys.path.
"""

from __future__ import annotations

import asyncio
import gc

TICK = 0.05  # seconds between two checks of the allocation counts
FREEZE_AFTER = 30.0  # seconds after the loop starts: startup's objects are frozen out of collections
FULL_EVERY = 60.0  # seconds between two full collections, once frozen


def young_generation_due(counts: tuple[int, int, int], thresholds: tuple[int, int, int]) -> int | None:
    """The young generation (0 or 1) CPython would collect for these counts, or None (nothing due)."""
    if counts[0] <= thresholds[0]:
        return None
    return 1 if counts[1] > thresholds[1] else 0


class SafePointCollector:
    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = TICK, freeze_after: float = FREEZE_AFTER,
                 full_every: float = FULL_EVERY):
        self.loop, self.tick, self.freeze_after, self.full_every = loop, tick, freeze_after, full_every
        self.thresholds = gc.get_threshold()
        self.started = loop.time()
        self.last_full: float | None = None  # None: not frozen yet
        self.collections = [0, 0, 0]

    def install(self):
        gc.disable()
        self.loop.call_soon(self.check)

    def check(self):
        try:
            now = self.loop.time()
            if self.last_full is None and now - self.started >= self.freeze_after:
                gc.collect()
                gc.freeze()
                self.last_full = now
            elif self.last_full is not None and now - self.last_full >= self.full_every:
                gc.collect(2)
                self.collections[2] += 1
                self.last_full = now
            else:
                generation = young_generation_due(gc.get_count(), self.thresholds)
                if generation is not None:
                    gc.collect(generation)
                    self.collections[generation] += 1
        finally:
            self.loop.call_later(self.tick, self.check)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # LiteLLM's dependency; uvicorn's "uvloop" loop is the same
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    SafePointCollector(loop).install()
    return loop
