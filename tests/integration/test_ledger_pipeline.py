"""The gift batcher with two batches in flight, and two batchers (two gateways) at once.

Real PostgreSQL, a database of the test's own (so whole-table counts are exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ledger.audit import verify_postgres
from ledger.batcher import GiftBatcher, GiftOrder, GiftOutcome, InsufficientCoins, grant
from livecore.economy import split
from livecore.errors import Conflict


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CountingPool:
    """The real pool, counting how many connections the batcher holds at once."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.held = 0
        self.most_held = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        async with self.pool.acquire() as conn:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                yield conn
            finally:
                self.held -= 1


class World:
    def __init__(self, pool: Any, senders: list[uuid.UUID], creators: list[uuid.UUID],
                 streams: list[uuid.UUID]) -> None:
        self.pool, self.senders, self.creators, self.streams = pool, senders, creators, streams

    def order(self, sender: int, target: int, price: int,
              gift_id: uuid.UUID | None = None) -> GiftOrder:
        parts = split(price, 5000)
        return GiftOrder(gift_id or uuid.uuid4(), self.senders[sender], self.streams[target],
                         self.creators[target], "rose", 1, price, parts.creator_share,
                         parts.platform_cut)

    async def balance(self, owner: uuid.UUID, kind: str = "wallet") -> int:
        value = await self.pool.fetchval(
            "SELECT balance FROM ledger_accounts WHERE kind = $1 AND owner_id = $2", kind, owner)
        return int(value or 0)


@pytest.fixture
async def world(fresh_database: str) -> AsyncIterator[World]:
    """Twelve senders holding 1,000 coins each, three creators with live streams."""
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=8)
    senders = [uuid.uuid4() for _ in range(12)]
    creators = [uuid.uuid4() for _ in range(3)]
    streams = [uuid.uuid4() for _ in range(3)]
    await pool.executemany(
        "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
        " VALUES ($1, $2, 'x', '1990-01-01', $3, now())",
        [(u, f"s{u.hex[:16]}", ["viewer"]) for u in senders]
        + [(u, f"c{u.hex[:16]}", ["viewer", "creator"]) for u in creators])
    await pool.executemany(
        "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state, started_at)"
        " VALUES ($1, $2, 't', $3, now(), 'live', now())",
        [(s, c, uuid.uuid4().hex) for s, c in zip(streams, creators, strict=True)])
    await pool.execute("INSERT INTO gift_types (slug, name, price_coins, streakable, animation)"
                       " VALUES ('rose', 'Rose', 1, true, 'rose')")
    for sender in senders:
        await grant(pool, grant_id=uuid.uuid4(), user_id=sender, coins=1000, memo="",
                    actor_id=None, now=now())
    yield World(pool, senders, creators, streams)
    await pool.close()


async def test_two_batches_commit_side_by_side(world: World) -> None:
    pool = CountingPool(world.pool)
    sizes: list[int] = []
    batcher = GiftBatcher(pool, clock=now, max_wait_s=0.01, max_in_flight=2,
                          on_batch=lambda size, _s: sizes.append(size))
    await batcher.start()
    try:
        orders = [world.order(sender, sender % 3, 10) for sender in range(12) for _ in range(5)]
        results = await asyncio.gather(*(batcher.send(o) for o in orders))
    finally:
        await batcher.stop()
    assert all(isinstance(r, GiftOutcome) and r.is_new for r in results)
    # Sixty gifts from twelve senders, queued together: two batches of six senders each,
    # holding a connection each at the same time.
    assert sorted(sizes) == [30, 30]
    assert pool.most_held == 2
    for sender in world.senders:
        assert await world.balance(sender) == 950
    earned = sum(r.order.creator_share for r in results)
    assert sum([await world.balance(c, "earnings") for c in world.creators]) == earned
    assert [c.name for c in await verify_postgres(world.pool) if not c.ok] == []
    # The audit refreshed the planner's statistics before its joins (after a bulk load,
    # stale ones made a check run for minutes).
    analyzed = await world.pool.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL")
    assert {"gifts", "ledger_entries"} <= {r["relname"] for r in analyzed}


async def test_a_senders_gifts_stay_in_arrival_order_across_batches(world: World) -> None:
    # One gift per batch, two batches in flight: a sender's next gift must wait for the batch
    # that holds their previous one, or a later gift could take the coins an earlier one needed.
    batcher = GiftBatcher(world.pool, clock=now, max_batch=1, max_wait_s=0.001, max_in_flight=2)
    await batcher.start()
    try:
        for round_ in range(3):
            rich, poor = world.senders[2 * round_], world.senders[2 * round_ + 1]
            orders = [world.order(2 * round_ + 1, 0, 400) for _ in range(3)]
            orders.insert(1, world.order(2 * round_, 1, 5))
            results = await asyncio.gather(*(batcher.send(o) for o in orders),
                                           return_exceptions=True)
            assert [type(r).__name__ for r in results] == [
                "GiftOutcome", "GiftOutcome", "GiftOutcome", "InsufficientCoins"]
            assert await world.balance(poor) == 200
            assert await world.balance(rich) == 995
    finally:
        await batcher.stop()


async def test_two_gateways_batching_the_same_accounts_neither_deadlock_nor_double(
        world: World) -> None:
    """Two batchers (as two gateway processes would) on overlapping senders and creators, with
    some gift ids sent to both: each id is applied once, the other answer replays it."""
    first = GiftBatcher(world.pool, clock=now, max_wait_s=0.002)
    second = GiftBatcher(world.pool, clock=now, max_wait_s=0.002)
    await first.start()
    await second.start()
    try:
        sends = []
        shared: list[GiftOrder] = []
        for index in range(240):
            order = world.order(index % 12, index % 3, 1)
            if index % 8 == 0:
                shared.append(order)
                sends += [first.send(order), second.send(order)]
            else:
                sends.append((first if index % 2 else second).send(order))
        # And a reused id with other content, on the other gateway: a conflict, not a gift.
        clash = world.order(5, 1, 1)
        other = world.order(6, 2, 2, gift_id=clash.gift_id)
        sends += [first.send(clash), second.send(other)]
        results = await asyncio.gather(*sends, return_exceptions=True)
    finally:
        await first.stop()
        await second.stop()
    outcomes = [r for r in results if isinstance(r, GiftOutcome)]
    refusals = [r for r in results if not isinstance(r, GiftOutcome)]
    assert len(refusals) == 1 and isinstance(refusals[0], Conflict)
    assert refusals[0].code == "gift_id_conflict"
    assert not any(isinstance(r, InsufficientCoins) for r in results)
    new = [r for r in outcomes if r.is_new]
    assert len(new) == 241 and len({r.order.gift_id for r in new}) == 241
    assert len(outcomes) - len(new) == len(shared)  # each shared id: one new, one replay
    stored = await world.pool.fetchval("SELECT count(*) FROM gifts")
    assert stored == 241
    spent = sum(r.order.price for r in new)
    wallets = sum([await world.balance(s) for s in world.senders])
    assert wallets == 12 * 1000 - spent
    # A batch whose ids were all claimed by the other gateway wrote nothing: no empty
    # transfer is left behind (the journal is append-only, so it would stay forever).
    empty = await world.pool.fetchval(
        "SELECT count(*) FROM ledger_transfers t WHERE t.kind = 'gift_batch'"
        " AND NOT EXISTS (SELECT 1 FROM ledger_entries e WHERE e.transfer_id = t.id)")
    assert empty == 0
    assert [c.name for c in await verify_postgres(world.pool) if not c.ok] == []


async def test_an_earnings_account_another_gateway_is_creating_is_found(world: World) -> None:
    """The first gifts to a creator on two gateways at once: both create the creator's
    earnings account; the one that waits for the other's must then find it."""
    creator = world.creators[2]
    async with world.pool.acquire() as other:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "INSERT INTO ledger_accounts (kind, owner_id) VALUES ('earnings', $1)", creator)
        batcher = GiftBatcher(world.pool, clock=now, max_wait_s=0.001)
        await batcher.start()
        try:
            sending = asyncio.ensure_future(batcher.send(world.order(0, 2, 10)))
            for _ in range(1000):  # until the batcher's insert waits for ours
                waiting = await world.pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'")
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert waiting == 1
            await transaction.commit()
            outcome = await sending
        finally:
            await batcher.stop()
    assert outcome.is_new
    assert await world.balance(creator, "earnings") == outcome.order.creator_share
