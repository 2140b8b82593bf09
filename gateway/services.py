"""The connections and adapters one server process holds, opened and closed together."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from gateway.auth import LoginThrottle
from gateway.gifts import GiftService
from gateway.roombus import RoomBus
from gateway.store import PostgresAccounts, PostgresChat, PostgresStreams
from ledger.payments import Purchases
from ledger.payouts import Payouts
from ledger.postgres import create_pool
from ledger.providers import PaymentProvider, provider_for
from livecore.errors import ServiceUnavailable
from livecore.settings import Settings
from livecore.versions import check_postgres, check_redis

REDIS_TIMEOUT_S = 5.0
REDIS_POOL_MAX = 200


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def connect_redis(url: str) -> aioredis.Redis:
    # A blocking pool: a burst of requests (thousands of viewers joining at once) waits for
    # a connection instead of failing with "too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_POOL_MAX,
        timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        health_check_interval=30,
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # closes the pool with it
    try:
        info = await client.info("server")
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        await client.aclose()
        raise ServiceUnavailable(f"Redis is unreachable: {exc}", code="redis_unavailable") from exc
    try:
        check_redis(str(info.get("redis_version", "")))
    except BaseException:
        await client.aclose()
        raise
    return client


@dataclass
class Services:
    settings: Settings
    pool: Any
    redis: aioredis.Redis
    clock: Callable[[], dt.datetime] = utc_now
    accounts: PostgresAccounts = field(init=False)
    streams: PostgresStreams = field(init=False)
    chat: PostgresChat = field(init=False)
    throttle: LoginThrottle = field(init=False)
    bus: RoomBus = field(init=False)
    gifts: GiftService = field(init=False)
    provider: PaymentProvider = field(init=False)
    purchases: Purchases = field(init=False)
    payouts: Payouts = field(init=False)

    def __post_init__(self) -> None:
        self.accounts = PostgresAccounts(self.pool)
        self.streams = PostgresStreams(self.pool)
        self.chat = PostgresChat(self.pool)
        self.bus = RoomBus(self.redis, self.settings.redis_prefix)
        self.gifts = GiftService(self)
        self.provider = provider_for(self.settings)
        self.purchases = Purchases(self.pool, self.provider, self.settings, self.clock)
        self.payouts = Payouts(self.pool, self.provider, self.settings, self.clock)
        self.throttle = LoginThrottle(
            self.redis,
            prefix=self.settings.redis_prefix,
            max_failures=self.settings.login_max_failures,
            max_failures_per_ip=self.settings.login_max_failures_per_ip,
            window_s=self.settings.login_window_s,
        )

    @property
    def global_blocked_words(self) -> list[str]:
        return [w for w in (p.strip() for p in self.settings.blocked_words.split(",")) if w]

    @classmethod
    async def connect(cls, settings: Settings, *, database_url: str, redis_url: str) -> Services:
        pool = await create_pool(database_url, max_size=settings.db_pool_max)
        try:
            check_postgres(str(await pool.fetchval("SHOW server_version")))
            client = await connect_redis(redis_url)
        except BaseException:
            await pool.close()
            raise
        return cls(settings=settings, pool=pool, redis=client)

    async def close(self) -> None:
        await self.provider.close()
        await self.redis.aclose()
        await self.pool.close()
