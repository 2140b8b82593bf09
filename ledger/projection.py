"""The Redis projection of the ledger: live stream totals and top-gifter boards.

Derived, fast, rebuildable; never the truth. Each committed gift is applied once, by gift id:
a Lua script adds the id to the stream's applied set and, only if it was not there, adds the
gift to the stream's totals, its top-gifter board and the creator's all-time board. So a
replayed gift (a client's retry after a crash between COMMIT and this update) can be applied
again safely, and fills the gap the crash left.

If Redis loses the data, :meth:`RedisProjection.rebuild` recomputes a stream's keys from
PostgreSQL and swaps them in atomically (RENAME); :meth:`RedisProjection.reconcile` compares
Redis with PostgreSQL and reports (and, asked to, repairs) any difference.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

_APPLY = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'coins', ARGV[3])
redis.call('HINCRBY', KEYS[2], 'gifts', 1)
redis.call('ZINCRBY', KEYS[3], ARGV[3], ARGV[2])
redis.call('ZINCRBY', KEYS[4], ARGV[3], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class StreamTotals:
    coins: int
    gifts: int
    top: list[tuple[str, int]]


@dataclass(frozen=True)
class Difference:
    stream_id: uuid.UUID
    redis: StreamTotals
    postgres: StreamTotals


class RedisProjection:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._apply = redis.register_script(_APPLY)
        #: Present while the projection is whole; gone when Redis lost its data.
        self.sentinel = f"{prefix}proj:intact"

    async def is_intact(self) -> bool:
        return bool(await self._redis.exists(self.sentinel))

    async def mark_intact(self) -> None:
        await self._redis.set(self.sentinel, 1)

    async def rebuild_live(self, pool: Any) -> int:
        """Rebuild every live stream (after Redis lost its data); returns how many."""
        rows = await pool.fetch("SELECT id FROM streams WHERE state = 'live'")
        for row in rows:
            await self.rebuild(pool, row["id"])
        await self.mark_intact()
        return len(rows)

    def _keys(self, stream_id: uuid.UUID, creator_id: uuid.UUID) -> list[str]:
        base = f"{self._prefix}proj:stream:{{{stream_id}}}"
        return [f"{base}:applied", f"{base}:totals", f"{base}:top",
                f"{self._prefix}proj:creator:{{{creator_id}}}:top"]

    async def apply(self, *, gift_id: uuid.UUID, stream_id: uuid.UUID, creator_id: uuid.UUID,
                    sender_id: uuid.UUID, coins: int) -> bool:
        """Count a committed gift once; returns whether this call counted it."""
        applied = await self._apply(keys=self._keys(stream_id, creator_id),
                                    args=[str(gift_id), str(sender_id), coins])
        return bool(applied)

    async def totals(self, stream_id: uuid.UUID, *, top: int = 10) -> StreamTotals:
        _, totals_key, top_key, _ = self._keys(stream_id, stream_id)
        raw = await self._redis.hgetall(totals_key)
        board = await self._redis.zrevrange(top_key, 0, top - 1, withscores=True)
        return StreamTotals(int(raw.get(b"coins", 0)), int(raw.get(b"gifts", 0)),
                            [(member.decode(), int(score)) for member, score in board])

    async def rebuild(self, pool: Any, stream_id: uuid.UUID) -> StreamTotals:
        """Recompute the stream's keys from PostgreSQL and swap them in at once."""
        truth = await postgres_totals(pool, stream_id, top=None)
        gift_ids = await pool.fetch("SELECT id FROM gifts WHERE stream_id = $1", stream_id)
        applied, totals_key, top_key, _ = self._keys(stream_id, stream_id)
        staged = [f"{key}:rebuild" for key in (applied, totals_key, top_key)]
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(*staged)
            if gift_ids:
                pipe.sadd(staged[0], *(str(r["id"]) for r in gift_ids))
            pipe.hset(staged[1], mapping={"coins": truth.coins, "gifts": truth.gifts})
            if truth.top:
                pipe.zadd(staged[2], {sender: coins for sender, coins in truth.top})
            pipe.delete(applied, totals_key, top_key)
            if gift_ids:
                pipe.rename(staged[0], applied)
            pipe.rename(staged[1], totals_key)
            if truth.top:
                pipe.rename(staged[2], top_key)
            await pipe.execute()
        return await self.totals(stream_id)

    async def reconcile(self, pool: Any, stream_id: uuid.UUID, *,
                        repair: bool) -> Difference | None:
        """Compare Redis with PostgreSQL for one stream; repair it if asked."""
        seen = await self.totals(stream_id, top=1_000_000)
        truth = await postgres_totals(pool, stream_id, top=None)
        if (seen.coins, seen.gifts, sorted(seen.top)) == (truth.coins, truth.gifts,
                                                          sorted(truth.top)):
            return None
        if repair:
            await self.rebuild(pool, stream_id)
        return Difference(stream_id, seen, truth)


async def postgres_totals(pool: Any, stream_id: uuid.UUID, *, top: int | None) -> StreamTotals:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(price), 0) AS coins, count(*) AS gifts FROM gifts"
        " WHERE stream_id = $1", stream_id)
    board = await pool.fetch(
        "SELECT sender_id, sum(price) AS coins FROM gifts WHERE stream_id = $1"
        " GROUP BY sender_id ORDER BY coins DESC, sender_id LIMIT $2", stream_id, top)
    return StreamTotals(int(row["coins"]), int(row["gifts"]),
                        [(str(r["sender_id"]), int(r["coins"])) for r in board])
