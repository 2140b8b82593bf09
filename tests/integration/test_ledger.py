"""The double-entry ledger and the gift batcher against the real PostgreSQL."""

import asyncio
import datetime as dt
import uuid

import asyncpg
import pytest

from ledger.batcher import (
    GiftBatcher,
    GiftOrder,
    GiftOutcome,
    InsufficientCoins,
    StreamNotLive,
    balance_of,
    grant,
)
from livecore.economy import split
from livecore.errors import Conflict
from livecore.streams import StreamEvent


def now():
    return dt.datetime.now(dt.UTC)


@pytest.fixture
async def batcher(services):
    b = GiftBatcher(services.pool, clock=now, max_wait_s=0.005)
    await b.start()
    yield b
    await b.stop()


@pytest.fixture
async def stage(api, services):
    """A live stream, its creator, and a viewer holding 1,000 coins."""
    creator, token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=token, json={"title": "$"})
    await services.streams.transition(stream["id"], StreamEvent.START, now())
    viewer = await api.register()
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=1000, memo="test", actor_id=None, now=now())
    await services.gifts.seed_catalogue()  # the default catalogue has 'rose'
    return uuid.UUID(creator["id"]), uuid.UUID(stream["id"]), uuid.UUID(viewer["id"])


def order(stage, *, price=10, slug="rose", quantity=None, gift_id=None, sender=None):
    creator, stream, viewer = stage
    parts = split(price, 5000)
    return GiftOrder(gift_id or uuid.uuid4(), sender or viewer, stream, creator, slug,
                     quantity or 1, price, parts.creator_share, parts.platform_cut)


async def test_a_gift_moves_coins_exactly(batcher, stage, services):
    creator, _, viewer = stage
    outcome = await batcher.send(order(stage, price=5))
    assert outcome.is_new
    assert await balance_of(services.pool, viewer) == 995
    assert await balance_of(services.pool, creator, "earnings") == 3
    entries = await services.pool.fetch(
        "SELECT amount FROM ledger_entries e JOIN gifts g ON g.transfer_id = e.transfer_id"
        " WHERE g.id = $1", outcome.order.gift_id)
    assert sum(e["amount"] for e in entries) == 0


async def test_retry_with_the_same_id_replays_and_other_content_conflicts(batcher, stage,
                                                                        services):
    _, _, viewer = stage
    first = order(stage, price=7)
    done = await batcher.send(first)
    again = await batcher.send(first)
    assert not again.is_new and again.order == done.order and again.created_at == done.created_at
    with pytest.raises(Conflict) as caught:
        await batcher.send(order(stage, price=14, quantity=2, gift_id=first.gift_id))
    assert caught.value.code == "gift_id_conflict"
    assert await balance_of(services.pool, viewer) == 993


async def test_insufficient_coins_moves_nothing(batcher, stage, services):
    _, _, viewer = stage
    with pytest.raises(InsufficientCoins):
        await batcher.send(order(stage, price=1001))
    assert await balance_of(services.pool, viewer) == 1000


async def test_a_batch_funds_gifts_in_arrival_order(batcher, stage, services):
    _, _, viewer = stage
    orders = [order(stage, price=400) for _ in range(3)]
    results = await asyncio.gather(*(batcher.send(o) for o in orders), return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["GiftOutcome", "GiftOutcome",
                                                   "InsufficientCoins"]
    assert await balance_of(services.pool, viewer) == 200


async def test_the_same_id_twice_in_one_batch_is_applied_once(batcher, stage, services):
    _, _, viewer = stage
    gift = order(stage, price=10)
    results = await asyncio.gather(batcher.send(gift), batcher.send(gift))
    assert sorted(r.is_new for r in results) == [False, True]
    assert await balance_of(services.pool, viewer) == 990


async def test_many_senders_one_creator_concurrently(batcher, stage, services, api):
    creator, stream, _ = stage
    senders = []
    for _ in range(20):
        user = await api.register()
        senders.append(uuid.UUID(user["id"]))
        await grant(services.pool, grant_id=uuid.uuid4(), user_id=senders[-1], coins=50,
                    memo="t", actor_id=None, now=now())
    orders = [order(stage, price=5, sender=s) for s in senders for _ in range(11)]
    results = await asyncio.gather(*(batcher.send(o) for o in orders), return_exceptions=True)
    accepted = [r for r in results if isinstance(r, GiftOutcome)]
    assert len(accepted) == 200  # 10 gifts of 5 coins per 50-coin sender; the 11th refused
    assert all(isinstance(r, InsufficientCoins) for r in results if isinstance(r, Exception))
    total_share = sum(r.order.creator_share for r in accepted)
    assert await balance_of(services.pool, creator, "earnings") == total_share


async def test_grants_are_idempotent(services, api):
    user = uuid.UUID((await api.register())["id"])
    grant_id = uuid.uuid4()
    assert await grant(services.pool, grant_id=grant_id, user_id=user, coins=30, memo="m",
                       actor_id=None, now=now())
    assert not await grant(services.pool, grant_id=grant_id, user_id=user, coins=30, memo="m",
                           actor_id=None, now=now())
    with pytest.raises(Conflict):
        await grant(services.pool, grant_id=grant_id, user_id=user, coins=31, memo="m",
                    actor_id=None, now=now())
    assert await balance_of(services.pool, user) == 30


async def test_the_database_refuses_unbalanced_transfers_and_edits(services, stage):
    _, _, viewer = stage
    async with services.pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError, match="does not sum to zero"):
            async with conn.transaction():
                transfer = uuid.uuid4()
                await conn.execute("INSERT INTO ledger_transfers (id, kind, created_at)"
                                   " VALUES ($1, 'grant', now())", transfer)
                await conn.execute("INSERT INTO ledger_entries (transfer_id, account_id, amount)"
                                   " SELECT $1, id, 5 FROM ledger_accounts"
                                   " WHERE kind = 'platform'", transfer)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("UPDATE ledger_accounts SET balance = -1"
                               " WHERE kind = 'wallet' AND owner_id = $1", viewer)
        for statement in ("UPDATE ledger_entries SET amount = amount + 1",
                          "DELETE FROM ledger_entries", "DELETE FROM ledger_transfers",
                          "TRUNCATE ledger_entries CASCADE", "DELETE FROM gifts"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement)


async def test_the_batch_refuses_gifts_to_a_stream_that_is_not_live(batcher, stage, services):
    """The gateway may price a gift from a cached stream; the batch's own transaction decides
    whether the stream takes it, and a refused gift moves nothing."""
    creator, stream, viewer = stage
    before_end = await batcher.send(order(stage, price=10))
    await services.streams.transition(stream, StreamEvent.END, now())
    late = order(stage, price=10)
    results = await asyncio.gather(batcher.send(late), batcher.send(order(stage, price=20)),
                                   return_exceptions=True)
    assert all(isinstance(r, StreamNotLive) for r in results), results
    assert [(r.code, r.status, r.details["state"]) for r in results
            if isinstance(r, StreamNotLive)] == [("stream_not_live", 409, "ended")] * 2
    # A gift committed while the stream was live still replays after it ended.
    again = await batcher.send(before_end.order)
    assert not again.is_new and again.created_at == before_end.created_at
    assert await balance_of(services.pool, viewer) == 990
    assert await balance_of(services.pool, creator, "earnings") == 5
    assert await services.pool.fetchval("SELECT count(*) FROM gifts WHERE stream_id = $1",
                                        stream) == 1
