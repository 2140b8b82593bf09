"""Answering concurrent duplicates exactly as sequential ones.

A client-chosen id (a payout id, say) makes a request idempotent: a retry gets the stored
outcome. Two requests with the same id at once must get that same answer too, not one
outcome and one primary-key violation (a 500), nor an answer that depends on which of them
looked first. The database settles the race between processes (a unique index, caught and
replayed); within one process the duplicates also wait for each other, so a duplicate that
arrives while the first is still calling a provider gets the finished outcome, as a retry a
moment later would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable


class KeyedLocks:
    """One :class:`asyncio.Lock` per key while anyone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
