"""The reconciliation pass (ledger/reconciler.py) against real PostgreSQL and Redis, and the
projection's rebuild while gifts keep arriving."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from ledger.batcher import GiftBatcher, GiftOrder, grant
from ledger.projection import RedisProjection
from ledger.reconciler import Reconciler, last_report, lock_key
from tests.processes import BIN, Background, environment, free_port


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Ledger:
    pool: asyncpg.Pool
    redis: aioredis.Redis
    prefix: str
    projection: RedisProjection
    batcher: GiftBatcher
    creator: uuid.UUID
    viewers: list[uuid.UUID]
    stream: uuid.UUID

    async def stream_row(self, *, state: str, ended_at: dt.datetime | None) -> uuid.UUID:
        stream = uuid.uuid4()
        await self.pool.execute(
            "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state,"
            " started_at, ended_at) VALUES ($1, $2, 't', $3, now(), $4, now(), $5)",
            stream, self.creator, uuid.uuid4().hex, state, ended_at)
        return stream

    async def commit(self, viewer: uuid.UUID, price: int,
                     stream: uuid.UUID | None = None) -> GiftOrder:
        """Commit a gift (not yet projected), as the gateway does before it updates Redis."""
        outcome = await self.batcher.send(GiftOrder(
            uuid.uuid4(), viewer, stream or self.stream, self.creator, "rose", price, price,
            price - price // 2, price // 2))
        self._at[outcome.order.gift_id] = outcome.created_at
        return outcome.order

    async def project(self, order: GiftOrder) -> None:
        await self.projection.apply(gift_id=order.gift_id, stream_id=order.stream_id,
                                    creator_id=order.creator_id, sender_id=order.sender_id,
                                    coins=order.price, at=self._at[order.gift_id])

    async def send(self, viewer: uuid.UUID, price: int) -> GiftOrder:
        order = await self.commit(viewer, price)
        await self.project(order)
        return order

    def reconciler(self, **options: object) -> Reconciler:
        settings: dict[str, object] = {"interval_s": 60, "clock": _now, "worker": "test",
                                       "confirm_delay_s": 0.05}
        settings.update(options)
        return Reconciler(self.pool, self.redis, prefix=self.prefix, **settings)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self._at: dict[uuid.UUID, dt.datetime] = {}


@pytest.fixture
async def ledger(fresh_database: str, backend) -> AsyncIterator[Ledger]:
    """A database of the test's own with a creator, a live stream and viewers with coins;
    a Redis key prefix of its own."""
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=8)
    prefix = f"{backend.redis_prefix}recon{uuid.uuid4().hex[:6]}:"
    client = aioredis.from_url(backend.redis_url)
    creator, stream = uuid.uuid4(), uuid.uuid4()
    viewers = [uuid.uuid4() for _ in range(8)]
    await pool.executemany(
        "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
        " VALUES ($1, $2, 'x', '1990-01-01', '{viewer}', now())",
        [(user, f"u{user.hex[:12]}") for user in (creator, *viewers)])
    await pool.execute("INSERT INTO streams (id, creator_id, title, stream_key, created_at,"
                       " state, started_at) VALUES ($1, $2, 't', 'k', now(), 'live', now())",
                       stream, creator)
    await pool.execute("INSERT INTO gift_types VALUES ('rose', 'Rose', 1, true, 'rose', true,"
                       " now())")
    for viewer in viewers:
        await grant(pool, grant_id=uuid.uuid4(), user_id=viewer, coins=1_000_000, memo="",
                    actor_id=None, now=_now())
    batcher = GiftBatcher(pool, clock=_now)
    await batcher.start()
    projection = RedisProjection(client, prefix)
    try:
        yield Ledger(pool, client, prefix, projection, batcher, creator, viewers, stream)
    finally:
        await batcher.stop()
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            await client.delete(key)
        await client.aclose()
        await pool.close()


async def test_a_pass_repairs_a_tampered_total_and_stores_its_report(ledger: Ledger) -> None:
    for price in (3, 4, 5):
        await ledger.send(ledger.viewers[0], price)
    totals_key = f"{ledger.prefix}proj:stream:{{{ledger.stream}}}:totals"
    await ledger.redis.hincrby(totals_key, "coins", 7)  # somebody edited Redis

    report = await ledger.reconciler().run_pass()

    assert report is not None
    assert report.streams_checked == 1
    assert (report.differences_found, report.differences_repaired) == (1, 1)
    [finding] = report.findings
    assert finding.stream_id == str(ledger.stream)
    assert finding.parts == ("totals",)
    assert (finding.redis_coins, finding.ledger_coins) == (19, 12)
    assert (finding.redis_gifts, finding.ledger_gifts) == (3, 3)
    assert await ledger.projection.reconcile(ledger.pool, ledger.stream, repair=False) is None
    assert (await ledger.projection.totals(ledger.stream)).coins == 12
    # The report is stored for the finance endpoint and page.
    assert await last_report(ledger.redis, ledger.prefix) == report
    # A clean pass reports nothing found (once the lock's cooldown is over).
    await ledger.redis.delete(lock_key(ledger.prefix))
    clean = await ledger.reconciler().run_pass()
    assert clean is not None and clean.is_clean and clean.streams_checked == 1
    assert await last_report(ledger.redis, ledger.prefix) == clean


async def test_a_pass_without_repair_only_reports(ledger: Ledger) -> None:
    await ledger.send(ledger.viewers[0], 5)
    await ledger.redis.delete(f"{ledger.prefix}proj:stream:{{{ledger.stream}}}:top")
    report = await ledger.reconciler().run_pass(repair=False)
    assert report is not None
    assert [(f.parts, f.repaired) for f in report.findings] == [(("totals",), False)]
    assert report.differences_repaired == 0
    assert await ledger.projection.reconcile(ledger.pool, ledger.stream,
                                             repair=False) is not None


async def test_live_and_recently_ended_streams_are_checked(ledger: Ledger) -> None:
    recent = await ledger.stream_row(state="ended", ended_at=_now() - dt.timedelta(minutes=5))
    await ledger.stream_row(state="ended", ended_at=_now() - dt.timedelta(days=2))
    checked = await ledger.reconciler().streams_to_check(_now())
    assert sorted(checked) == sorted([ledger.stream, recent])


async def test_only_one_of_several_workers_runs_a_pass(ledger: Ledger) -> None:
    await ledger.send(ledger.viewers[0], 5)
    workers = [ledger.reconciler(worker=f"w{i}") for i in range(4)]
    reports = await asyncio.gather(*(w.run_pass() for w in workers))
    assert len([r for r in reports if r is not None]) == 1
    # The lock is kept for most of the interval after the pass: no second pass before it.
    assert await workers[0].run_pass() is None
    assert 0 < await ledger.redis.pttl(lock_key(ledger.prefix)) <= 60_000


async def test_a_pass_that_lost_its_lock_stops(ledger: Ledger) -> None:
    await ledger.stream_row(state="ended", ended_at=_now())
    projection = ledger.projection

    class Slow(RedisProjection):
        async def reconcile(self, *args: Any, **kwargs: Any) -> Any:
            # The pass took so long that its lock expired and another worker took it.
            await ledger.redis.set(lock_key(ledger.prefix), "another worker")
            return await projection.reconcile(*args, **kwargs)

    report = await ledger.reconciler(projection=Slow(ledger.redis, ledger.prefix)).run_pass()
    assert report is not None and report.streams_checked == 1  # of two
    assert await ledger.redis.get(lock_key(ledger.prefix)) == b"another worker"


async def test_a_gift_between_commit_and_redis_is_transient_not_a_finding(
    ledger: Ledger,
) -> None:
    await ledger.send(ledger.viewers[0], 5)
    order = await ledger.commit(ledger.viewers[1], 4)  # committed; Redis not updated yet
    projection = ledger.projection
    first_look = asyncio.Event()

    class Watched(RedisProjection):
        async def reconcile(self, *args: Any, **kwargs: Any) -> Any:
            found = await projection.reconcile(*args, **kwargs)
            if found is not None:  # the first look saw the difference; now the pause
                first_look.set()
            return found

    async def late_update() -> None:
        await first_look.wait()  # the pass has seen the difference and is in its pause
        await ledger.project(order)

    reconciler = ledger.reconciler(confirm_delay_s=5.0,
                                   projection=Watched(ledger.redis, ledger.prefix))
    report, _ = await asyncio.gather(reconciler.run_pass(), late_update())
    assert report is not None
    assert report.findings == () and report.transient == 1
    assert await ledger.projection.reconcile(ledger.pool, ledger.stream, repair=False) is None


async def test_rebuilds_while_gifts_flow_lose_and_double_nothing(ledger: Ledger) -> None:
    """Gifts are committed and projected (as the gateway does) by many senders while the
    stream is rebuilt again and again: afterwards Redis equals the ledger exactly. A gift
    committed after a rebuild read the ledger but projected before the rebuild swapped its
    keys in must not be wiped out by the swap."""
    done = asyncio.Event()
    GIFTS_EACH = 60

    async def sender(viewer: uuid.UUID) -> None:
        for _ in range(GIFTS_EACH):
            await ledger.send(viewer, random.randint(1, 9))

    async def rebuilder() -> int:
        rebuilds = 0
        while not done.is_set():
            await ledger.projection.rebuild(ledger.pool, ledger.stream)
            rebuilds += 1
        return rebuilds

    rebuilding = asyncio.create_task(rebuilder())
    await asyncio.gather(*(sender(v) for v in ledger.viewers))
    done.set()
    assert await rebuilding > 0
    difference = await ledger.projection.reconcile(ledger.pool, ledger.stream, repair=False)
    assert difference is None, difference
    assert (await ledger.projection.totals(ledger.stream)).gifts == GIFTS_EACH * len(
        ledger.viewers)


class _Interleaved:
    """A pool whose first connection runs ``after_sums`` after its first ``fetchrow`` (the
    rebuild's sums of the stream's gifts) and ``after_release`` when it is given back: gifts
    arriving at exactly the wrong moments of a rebuild (between its reads; between its reads
    and its swap)."""

    def __init__(self, pool: asyncpg.Pool, after_sums: Callable[[], Awaitable[None]],
                 after_release: Callable[[], Awaitable[None]]) -> None:
        self._pool = pool
        self._hooks = [after_sums, after_release]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        hooks, self._hooks = self._hooks, []
        async with self._pool.acquire() as conn:
            yield _HookedConnection(conn, hooks[0]) if hooks else conn
        if hooks:
            await hooks[1]()


class _HookedConnection:
    def __init__(self, conn: Any, hook: Callable[[], Awaitable[None]]) -> None:
        self._conn = conn
        self._hook: Callable[[], Awaitable[None]] | None = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def fetchrow(self, *args: Any) -> Any:
        result = await self._conn.fetchrow(*args)
        hook, self._hook = self._hook, None
        if hook is not None:
            await hook()
        return result


async def test_gifts_at_the_worst_moments_of_a_rebuild_count_once(ledger: Ledger) -> None:
    for price in (1, 2):
        await ledger.send(ledger.viewers[0], price)
    late: list[GiftOrder] = []

    async def between_reads() -> None:
        # Committed while the rebuild reads the ledger; Redis hears of it only afterwards.
        late.append(await ledger.commit(ledger.viewers[1], 3))

    async def before_swap() -> None:
        # Committed and applied after the rebuild's reads, before its swap.
        await ledger.send(ledger.viewers[2], 4)

    pool = _Interleaved(ledger.pool, between_reads, before_swap)
    await ledger.projection.rebuild(pool, ledger.stream)
    assert len(late) == 1
    await ledger.project(late[0])
    assert await ledger.projection.reconcile(ledger.pool, ledger.stream, repair=False) is None
    totals = await ledger.projection.totals(ledger.stream)
    assert (totals.coins, totals.gifts) == (1 + 2 + 3 + 4, 4)


async def test_the_worker_process_reconciles_and_serves_its_metrics(
    ledger: Ledger, fresh_database: str, backend
) -> None:
    """``livecore worker`` itself: its first pass repairs a tampered total and stores the
    report; its metrics count the pass."""
    for price in (2, 6):
        await ledger.send(ledger.viewers[0], price)
    await ledger.redis.hset(f"{ledger.prefix}proj:stream:{{{ledger.stream}}}:totals",
                            "gifts", 40)
    port = free_port()
    env = environment(DATABASE_URL=fresh_database, REDIS_URL=backend.redis_url,
                      LIVECORE_REDIS_PREFIX=ledger.prefix, LIVECORE_RECONCILE_INTERVAL_S="1",
                      LIVECORE_WORKER_INTERVAL_S="1", LIVECORE_WORKER_METRICS_PORT=str(port))
    with Background([str(BIN / "livecore"), "worker"], env) as worker:
        worker.wait_for("worker running", timeout=30)
        report = None
        for _ in range(300):
            report = await last_report(ledger.redis, ledger.prefix)
            if report is not None:
                break
            await asyncio.sleep(0.05)
        assert report is not None, "".join(worker.stderr)
        assert [(f.stream_id, f.parts, f.redis_gifts, f.ledger_gifts, f.repaired)
                for f in report.findings] == [(str(ledger.stream), ("totals",), 40, 2, True)]
        assert (await ledger.projection.totals(ledger.stream)).gifts == 2
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/metrics") as response:
            metrics = await response.text()
        assert "livecore_reconcile_passes_total" in metrics
        assert 'livecore_reconcile_differences_total{outcome="repaired"} 1.0' in metrics
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(30) == 0
    assert '"message": "reconciliation pass: Redis differed from the ledger"' in "".join(
        worker.stderr)


async def test_the_finance_endpoint_shows_the_last_pass(api, services) -> None:
    from gateway.finance_api import RECONCILIATION
    from livecore.accounts import Role
    from tests.support import assert_matches

    user, token = await api.new_user()
    await services.accounts.set_roles(user["id"], {Role.FINANCE}, actor_id=None, reason="t",
                                      now=_now())
    prefix = services.settings.redis_prefix
    await services.redis.delete(lock_key(prefix), f"{prefix}reconcile:last")
    response, body = await api.request("GET", "/api/v1/finance/reconciliation", token=token)
    assert response.status == 200 and body["last_pass"] is None
    report = await Reconciler(services.pool, services.redis, prefix=prefix, interval_s=60,
                              clock=_now, worker="w:1", confirm_delay_s=0.05).run_pass()
    assert report is not None
    response, body = await api.request("GET", "/api/v1/finance/reconciliation", token=token)
    assert response.status == 200
    assert_matches(RECONCILIATION, body)
    assert body["last_pass"] == report.to_json()
    assert body["last_pass"]["worker"] == "w:1"
