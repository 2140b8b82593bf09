"""Short full garbage collections on a server that holds many long-lived connections.

A full (generation 2) collection scans every tracked object; each websocket holds about 75 of
them, so at 20,000 connections a full pass stops the event loop for about a second (measured:
docs/performance.md). Those objects live as long as their connection, and scanning them again
and again finds nothing. So after each full collection the survivors are frozen
(:func:`gc.freeze`: moved where the collector does not look) and the next full collections scan
only what was allocated since.

Freezing has a cost: a closed connection leaves about 30 objects in reference cycles, and
cycles among frozen objects are not collected. So every :data:`UNFREEZE_INTERVAL_S` the frozen
objects are handed back (:func:`gc.unfreeze`): the next full collection scans everything once,
frees those cycles, and its survivors are frozen again. Memory held by closed connections'
cycles is bounded by that interval's churn; long pauses happen at most once per interval
instead of whenever the heap has grown by a quarter.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

UNFREEZE_INTERVAL_S = 600.0
CHECK_S = 1.0


class CollectorPolicy:
    def __init__(self, *, unfreeze_interval_s: float = UNFREEZE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unfreeze_interval_s = unfreeze_interval_s
        self.clock = clock
        self.last_unfreeze_s = clock()
        self.full_collections = 0
        self._seen = 0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Only note it: freezing from inside the collector's own callback is not safe.
        if phase == "stop" and info["generation"] == 2:
            self.full_collections += 1

    def install(self) -> Callable[[], None]:
        """Start noting full collections; returns the undo."""
        gc.callbacks.append(self._on_gc)
        return lambda: gc.callbacks.remove(self._on_gc)

    def step(self) -> str | None:
        """After a full collection: freeze its survivors, or, once per interval, unfreeze
        everything instead. Returns what it did."""
        if self.full_collections == self._seen:
            return None
        self._seen = self.full_collections
        now = self.clock()
        if now - self.last_unfreeze_s >= self.unfreeze_interval_s:
            self.last_unfreeze_s = now
            gc.unfreeze()
            return "unfreeze"
        gc.freeze()
        return "freeze"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_S)
            self.step()
