"""The projection's boards and goals: rebuilt from PostgreSQL, and audited against it."""

import datetime as dt
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from ledger.audit import verify_projection
from ledger.batcher import GiftBatcher, GiftOrder
from ledger.projection import GoalRecord, RedisProjection, postgres_goal
from livecore.economy import iso_week
from tests.support import seed_live_stream


@pytest.fixture
async def ledger(fresh_database, backend):
    """A live stream in a database of its own, a viewer with coins, and a projection under a
    prefix of its own (so the audit sees only this test's streams)."""
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=3)
    client = aioredis.from_url(backend.redis_url)
    creator, viewer, stream = await seed_live_stream(pool, coins=1000)
    batcher = GiftBatcher(pool, clock=lambda: dt.datetime.now(dt.UTC))
    await batcher.start()
    projection = RedisProjection(client, f"{backend.redis_prefix}proj{uuid.uuid4().hex[:6]}:")

    async def gift(coins: int) -> None:
        outcome = await batcher.send(GiftOrder(uuid.uuid4(), viewer, stream, creator, "rose",
                                               coins, coins, coins - coins // 2, coins // 2))
        await projection.apply(gift_id=outcome.order.gift_id, stream_id=stream,
                               creator_id=creator, sender_id=viewer, coins=coins,
                               at=outcome.created_at, gift="rose", quantity=coins,
                               streakable=True, sender_username="viewer1")

    try:
        yield pool, client, projection, stream, creator, viewer, gift
    finally:
        await batcher.stop()
        async for key in client.scan_iter(match=f"{projection.sentinel[:-len('proj:intact')]}*"):
            await client.delete(key)
        await client.aclose()
        await pool.close()


async def _set_goal(pool, projection, stream, creator, target):
    now = dt.datetime.now(dt.UTC)
    await pool.execute("INSERT INTO stream_goals (stream_id, target_coins, title, set_by, set_at)"
                       " VALUES ($1, $2, 'mic', $3, $4) ON CONFLICT (stream_id) DO UPDATE"
                       " SET target_coins = $2, set_at = $4", stream, target, creator, now)
    return await projection.set_goal(pool, stream, GoalRecord(target, "mic", now))


async def test_goal_and_boards_survive_a_flush_and_the_audit_catches_tampering(ledger):
    pool, client, projection, stream, creator, viewer, gift = ledger
    await gift(3)  # before the goal
    await _set_goal(pool, projection, stream, creator, 50)
    await gift(4)
    await gift(5)
    week = iso_week(dt.datetime.now(dt.UTC))
    goal = await projection.goal(stream)
    assert goal is not None and (goal.target_coins, goal.progress_coins) == (50, 9)
    assert await projection.creator_board(creator, week=week) == [(str(viewer), 12)]
    assert await projection.creator_board(creator, week=None) == [(str(viewer), 12)]
    assert (await verify_projection(pool, projection)).ok

    # Redis loses everything: the rebuild restores the goal (and its counted gifts), the
    # stream's totals and the creator's boards from the ledger.
    keys = [k async for k in client.scan_iter(match=f"{projection.sentinel[:-6]}*")]
    await client.delete(*keys)
    assert await projection.goal(stream) is None
    assert not (await verify_projection(pool, projection)).ok
    assert await projection.rebuild_live(pool) == 1
    assert (await verify_projection(pool, projection)).ok
    goal = await projection.goal(stream)
    assert goal is not None and goal.progress_coins == 9
    assert await projection.creator_board(creator, week=week) == [(str(viewer), 12)]
    assert await projection.creator_board(creator, week=None) == [(str(viewer), 12)]
    assert 0 < await client.ttl(f"{projection.sentinel[:-6]}creator:{{{creator}}}:week:{week}")
    # The goal's counted set came back too: a gift after the rebuild counts once.
    await gift(6)
    goal = await projection.goal(stream)
    assert goal is not None and goal.progress_coins == 15
    record = await postgres_goal(pool, stream)
    assert record is not None and record.progress_coins == 15

    # Tampering with the goal or the weekly board is caught, and repaired from the ledger.
    for key, change, part in (
            (f"{projection.sentinel[:-6]}stream:{{{stream}}}:goal", "goal", "goal"),
            (f"{projection.sentinel[:-6]}creator:{{{creator}}}:week:{week}", "week",
             "weekly_board"),
            (f"{projection.sentinel[:-6]}creator:{{{creator}}}:top", "week", "creator_board")):
        if change == "goal":
            await client.hincrby(key, "progress", 1)
        else:
            await client.zincrby(key, 1, str(viewer))
        result = await verify_projection(pool, projection)
        assert result.failures == 1 and part in result.examples[0], result.examples
        difference = await projection.reconcile(pool, stream, repair=True)
        assert difference is not None and difference.parts == (part,)
        assert (await verify_projection(pool, projection)).ok


async def test_a_goal_set_while_gifts_flow_counts_each_later_gift_once(ledger):
    """Gifts committed after the goal was set but applied before it reached Redis are counted
    by the catch-up; setting it again restarts the count."""
    pool, client, projection, stream, creator, viewer, gift = ledger
    await gift(2)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)  # set "before" the next gifts
    await pool.execute("INSERT INTO stream_goals (stream_id, target_coins, title, set_by, set_at)"
                       " VALUES ($1, 10, '', $2, $3)", stream, creator, now)
    await gift(3)  # applied while Redis has no goal yet
    goal = await projection.set_goal(pool, stream, GoalRecord(10, "", now))
    assert goal.progress_coins == 5  # both gifts came after `now`
    assert (await verify_projection(pool, projection)).ok
    goal = await projection.set_goal(pool, stream, GoalRecord(10, "", now))  # again: no double
    assert goal.progress_coins == 5
    await gift(7)
    live = await projection.goal(stream)
    assert live is not None and (live.progress_coins, live.reached, live.percent) == (12, True,
                                                                                       100)
