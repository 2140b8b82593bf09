"""The zero-configuration servers, as ``livecore serve`` runs them: supported versions, the
login throttle on the embedded Redis 6.2, and Redis data kept across restarts (clean stops,
``kill -9``, and data directories that hold a snapshot only)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import redis.asyncio as aioredis

from gateway.app import create_app
from gateway.embedded import AOF_NAME
from gateway.roombus import RoomBus
from gateway.services import Services
from livecore.settings import Settings
from livecore.versions import MIN_POSTGRES, MIN_REDIS, parse_version
from tests.support import ApiClient

PREFIX = "embedded:"


async def _bus_writes(redis_url: str) -> tuple[int, int]:
    """Likes and chat history written the way the hub writes them; (likes, history length)."""
    client = aioredis.from_url(redis_url)
    try:
        bus = RoomBus(client, PREFIX)
        await bus.publish("room-1", "chat.message", {"text": "kept"}, 1.0)
        await bus.publish_likes("room-1", 7, 2.0)
        return await bus.likes("room-1"), len(await bus.recent("room-1", limit=10))
    finally:
        await client.aclose()


async def _bus_reads(redis_url: str) -> tuple[int, list[Any]]:
    client = aioredis.from_url(redis_url)
    try:
        bus = RoomBus(client, PREFIX)
        return await bus.likes("room-1"), await bus.recent("room-1", limit=10)
    finally:
        await client.aclose()


async def test_embedded_servers_meet_the_supported_versions(own_servers: Any) -> None:
    _, database_url, redis_url = own_servers
    services = await Services.connect(Settings(redis_prefix=PREFIX),
                                      database_url=database_url, redis_url=redis_url)
    try:
        info = await services.redis.info("server")
        assert parse_version(str(info["redis_version"])) >= MIN_REDIS
        found = await services.pool.fetchval("SHOW server_version")
        assert parse_version(found) >= MIN_POSTGRES
    finally:
        await services.close()


async def test_wrong_passwords_on_the_embedded_redis_are_401_then_throttled(
        own_servers: Any) -> None:
    """The throttle once used ``EXPIRE ... NX`` (Redis 7): on the embedded 6.2 every wrong
    password answered 500."""
    _, database_url, redis_url = own_servers
    settings = Settings(redis_prefix=PREFIX, login_max_failures=3, login_window_s=600)
    services = await Services.connect(settings, database_url=database_url, redis_url=redis_url)
    try:
        async with ApiClient.serving(create_app(services)) as api:
            user = await api.register()
            wrong = {"username": user["username"], "password": "not the password"}
            for _ in range(3):
                response, body = await api.request("POST", "/api/v1/auth/login", json=wrong)
                assert (response.status, body["error"]["code"]) == (401, "invalid_credentials")
            response, body = await api.request("POST", "/api/v1/auth/login", json=wrong)
            assert (response.status, body["error"]["code"]) == (429, "login_throttled")
            assert 0 < int(response.headers["Retry-After"]) <= 600
            # The window starts at the first failure and is not extended by later ones.
            ttl = await services.redis.ttl(PREFIX + "login-failures:user:" + user["username"])
            assert 0 < ttl <= 600
    finally:
        await services.close()


async def test_likes_and_chat_history_survive_a_clean_restart(own_servers: Any) -> None:
    servers, _, redis_url = own_servers
    assert await _bus_writes(redis_url) == (7, 2)
    servers.redis.stop()
    servers.redis.start()
    likes, history = await _bus_reads(redis_url)
    assert likes == 7
    assert len(history) == 2


async def test_acknowledged_writes_survive_kill_9(own_servers: Any) -> None:
    """Redis writes its append-only file before it answers: a write that was acknowledged
    is in the file even if the server dies the next moment."""
    servers, _, redis_url = own_servers
    assert await _bus_writes(redis_url) == (7, 2)
    assert servers.redis.pid is not None
    os.kill(servers.redis.pid, signal.SIGKILL)
    servers.redis.stop()  # reaps it
    servers.redis.start()
    likes, history = await _bus_reads(redis_url)
    assert likes == 7
    assert len(history) == 2


async def test_a_snapshot_without_an_append_only_file_is_loaded_then_kept_both_ways(
        own_servers: Any) -> None:
    """Data directories from before the append-only file hold ``dump.rdb`` only. Started
    with the file switched on, Redis would load the (missing, so empty) file and ignore the
    snapshot."""
    servers, _, redis_url = own_servers
    assert await _bus_writes(redis_url) == (7, 2)
    servers.redis.stop()  # saves the snapshot
    (servers.redis.directory / AOF_NAME).unlink()
    servers.redis.start()
    likes, history = await _bus_reads(redis_url)
    assert (likes, len(history)) == (7, 2)
    client = aioredis.from_url(redis_url)
    try:
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        save = str((await client.config_get("save"))["save"])
        assert save.split() == ["60", "1"]  # a snapshot a minute after a change
    finally:
        await client.aclose()
    # The file is written in the background from what was loaded; then a kill -9 keeps it.
    await _wait_for_rewrite(redis_url)
    assert servers.redis.pid is not None
    os.kill(servers.redis.pid, signal.SIGKILL)
    servers.redis.stop()
    (servers.redis.directory / "dump.rdb").unlink()
    servers.redis.start()
    likes, history = await _bus_reads(redis_url)
    assert (likes, len(history)) == (7, 2)


async def _wait_for_rewrite(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        async with asyncio.timeout(30):
            while True:
                info = await client.info("persistence")
                if (not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]
                        and info["aof_last_bgrewrite_status"] == "ok"
                        and info["aof_enabled"]):
                    return
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
