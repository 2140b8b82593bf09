"""`kill -9` of the gateway while clients send gifts and retry with their ids.

Every acknowledged gift must be in the ledger exactly once, no gift twice, the invariants must
hold, and the Redis projection must converge to PostgreSQL once the clients' retries are in.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import uuid

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from ledger.audit import verify_postgres
from ledger.batcher import GiftBatcher, GiftOrder, grant
from ledger.projection import RedisProjection
from livecore.economy import split
from tests.processes import BIN, Background, environment, free_port
from tests.support import gift_until_answered, live_stream_with_viewers

pytestmark = pytest.mark.e2e

CLIENTS = 12
GIFTS_EACH = 25
KILLS = 3


async def test_kill_9_under_gift_load_loses_and_doubles_nothing(fresh_database, backend):
    prefix = f"{backend.redis_prefix}crash:"
    port = free_port()
    env = environment(DATABASE_URL=fresh_database, REDIS_URL=backend.redis_url,
                      LIVECORE_REDIS_PREFIX=prefix, PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=3)
    acked: set[str] = set()
    under_way = asyncio.Event()  # set once about one gift per client is acknowledged
    interrupted = 0  # requests that died with the server: the crashes hit gifts in flight
    server = Background([str(BIN / "livecore"), "serve"], env)
    try:
        server.wait_for("Livecore serving on", timeout=90)
        stream, viewers = await live_stream_with_viewers(base, pool, viewers=CLIENTS,
                                                          coins=10_000, title="crash")

        async def client(token: str) -> None:
            nonlocal interrupted
            headers = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession(base, headers=headers) as http:
                for _ in range(GIFTS_EACH):
                    gift_id, failed = await gift_until_answered(http, stream)
                    interrupted += failed
                    acked.add(gift_id)
                    if len(acked) >= CLIENTS:
                        under_way.set()

        async def killer() -> None:
            nonlocal server
            for kill in range(KILLS):
                if kill == 0:
                    # The first crash must land mid-load however fast the gifts go (the whole
                    # load can take under half a second): once about one gift per client is in.
                    await under_way.wait()
                else:
                    await asyncio.sleep(random.uniform(0.3, 0.8))
                server.process.send_signal(signal.SIGKILL)
                server.process.wait()
                server.__exit__(None, None, None)
                server = Background([str(BIN / "livecore"), "serve"], env)
                await asyncio.to_thread(server.wait_for, "Livecore serving on", 90)

        await asyncio.gather(killer(), *(client(token) for _, token in viewers))

        rows = await pool.fetch("SELECT id::text FROM gifts WHERE stream_id = $1::uuid", stream)
        stored = [r["id"] for r in rows]
        assert len(stored) == len(set(stored))
        assert acked <= set(stored), "an acknowledged gift is missing from the ledger"
        assert len(acked) == CLIENTS * GIFTS_EACH
        assert interrupted > 0, "no crash hit a gift in flight"
        assert [c.name for c in await verify_postgres(pool) if not c.ok] == []
        # Every gift was retried until answered, and answers apply the projection (once per
        # id), so Redis has converged to the ledger.
        client_redis = aioredis.from_url(backend.redis_url)
        try:
            projection = RedisProjection(client_redis, prefix)
            assert await projection.reconcile(pool, uuid.UUID(stream), repair=False) is None
        finally:
            await client_redis.aclose()
        assert server.interrupt() == 0
    finally:
        server.__exit__(None, None, None)
        await pool.close()


async def test_a_crash_between_commit_and_the_projection_is_healed_by_the_retry(
    api, services
):
    """The gift committed, the process died before Redis heard of it, the client retries."""
    from livecore.streams import StreamEvent

    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "half"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    viewer, viewer_token = await api.new_user()
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=50, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    await services.gifts.seed_catalogue()
    # Commit straight through the batcher: no projection update follows (the "crash").
    gift_id = uuid.uuid4()
    parts = split(5, 5000)
    batcher = GiftBatcher(services.pool, clock=lambda: dt.datetime.now(dt.UTC))
    await batcher.start()
    await batcher.send(GiftOrder(gift_id, uuid.UUID(viewer["id"]), uuid.UUID(stream["id"]),
                                 uuid.UUID(creator["id"]), "heart", 1, 5, parts.creator_share,
                                 parts.platform_cut))
    await batcher.stop()
    _, board = await api.request("GET", f"/api/v1/streams/{stream['id']}/leaderboard")
    assert board["coins"] == 0
    response, body = await api.request("POST", "/api/v1/gifts", token=viewer_token, json={
        "gift_id": str(gift_id), "stream_id": stream["id"], "gift": "heart"})
    assert response.status == 200 and body["replayed"] is True
    _, board = await api.request("GET", f"/api/v1/streams/{stream['id']}/leaderboard")
    assert board["coins"] == 5
