"""Gift throughput: the ledger engine, the whole server over websockets, and a baseline.

    python -m loadtests.gifts [--seconds 10] [--clients 1000] [--senders 2000] [--creators 50]
                              [--viewers 300] [--rate 18] [--streams 100]
                              [--in-flight 2] [--skip-engine] [--skip-e2e]

Makes throwaway databases (on the server of DATABASE_URL, or an embedded PostgreSQL in a
temporary directory when it is unset) and, for the end-to-end part, uses REDIS_URL under a key
prefix of its own (deleted at the end) or an embedded Redis. Each case runs for ``--seconds``.

**Engine** (``ledger.batcher.GiftBatcher`` straight to PostgreSQL, in this process): senders
holding plenty of coins, creators with live streams, ``--clients`` closed-loop clients (each
sends a gift, waits for its answer, sends the next), gifts spread over every creator, then every
gift to one streamer (the hot-spot case). In the same run the **baseline**: one transaction per
gift that locks the sender's wallet, the creator's earnings and the platform account with
``SELECT ... FOR UPDATE`` (in id order), updates the three balances, inserts the gift, the
transfer and its entries and commits (16 connections), uniform and single-streamer.

**End to end**: a real ``livecore serve`` (its own process) and ``--viewers`` websocket
connections, each logged in as a viewer holding coins (accounts, streams and logins made
through the HTTP API; ``LIVECORE_PROCESSES`` is passed on to it, and the server CPU then
counts every serving process). Each viewer subscribes to one room and sends ``gift`` messages there
with fresh ids: one in flight, the next when the ``ack`` is back, at most ``--rate`` a second
(the server allows a connection 20 messages a second). The latency is from sending the gift to
its ``ack``, which the server sends after COMMIT. Uniform: the viewers spread over ``--streams``
live streams; one streamer: every viewer in the same room, gifting that stream. A gifter must be
subscribed, and every subscriber receives every ``gift.sent``, so the one-streamer case also
fans each gift out to every viewer: the deliveries are counted and shown. At the end the ledger
is checked (``ledger.audit.verify_postgres``, and Redis against PostgreSQL), and the gifts in
the ledger must be exactly the acknowledged ones.

Prints gifts/s and latency percentiles, the ratios, and the issue's goals with whether each is
met in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from rich.table import Table
from websockets.frames import Close, Opcode

from gateway.embedded import EmbeddedPostgres, EmbeddedRedis
from ledger.audit import verify_postgres, verify_projection
from ledger.batcher import MAX_IN_FLIGHT, GiftBatcher, GiftOrder, grant
from ledger.migrate import migrate
from ledger.projection import RedisProjection
from livecore.economy import split
from loadtests.common import (
    UpgradingSocket,
    console,
    cpu_seconds,
    free_port,
    handshake,
    masked,
    percentile,
    progress,
    server_cpu,
    server_process,
)

COINS_EACH = 10**9
GIFT_SENT = b'"type":"gift.sent"'
#: How every message that is not a room event starts (ack, error, hello, presence...).
ANSWER = b'{"type":"'
PRICE = 5


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def populate(pool: Any, senders: int, creators: int) -> tuple[list[uuid.UUID],
                                                                   list[tuple[uuid.UUID,
                                                                              uuid.UUID]]]:
    sender_ids = [uuid.uuid4() for _ in range(senders)]
    creator_ids = [uuid.uuid4() for _ in range(creators)]
    stream_ids = [uuid.uuid4() for _ in range(creators)]
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
            " VALUES ($1, $2, 'x', '1990-01-01', $3, now())",
            [(u, f"s{u.hex[:20]}", ["viewer"]) for u in sender_ids]
            + [(u, f"c{u.hex[:20]}", ["viewer", "creator"]) for u in creator_ids],
        )
        await conn.executemany(
            "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state,"
            " started_at) VALUES ($1, $2, 'bench', $3, now(), 'live', now())",
            [(s, c, secrets.token_hex(12)) for s, c in zip(stream_ids, creator_ids,
                                                            strict=True)],
        )
        # Fund the senders with one balanced grant.
        grant_id = uuid.uuid4()
        await conn.execute("INSERT INTO ledger_transfers (id, kind, created_at)"
                           " VALUES ($1, 'grant', now())", grant_id)
        await conn.execute(
            "INSERT INTO ledger_accounts (kind, owner_id, balance)"
            " SELECT 'wallet', unnest($1::uuid[]), $2", sender_ids, COINS_EACH)
        await conn.execute(
            "INSERT INTO ledger_accounts (kind, owner_id) SELECT 'earnings', unnest($1::uuid[])",
            creator_ids)
        await conn.execute(
            "UPDATE ledger_accounts SET balance = balance - $1 WHERE kind = 'promotions'",
            COINS_EACH * senders)
        await conn.execute(
            """
            INSERT INTO ledger_entries (transfer_id, account_id, amount)
            SELECT $1, id,
                   CASE WHEN kind = 'wallet' THEN $2::bigint ELSE -($2::bigint * $3::bigint) END
            FROM ledger_accounts WHERE kind = 'promotions' OR (kind = 'wallet'
                                                                AND owner_id = ANY($4::uuid[]))
            """,
            grant_id, COINS_EACH, senders, sender_ids)
        await conn.execute(
            "INSERT INTO gift_types (slug, name, price_coins, streakable, animation)"
            " VALUES ('heart', 'Heart', $1, true, 'heart') ON CONFLICT DO NOTHING", PRICE)
    return sender_ids, list(zip(stream_ids, creator_ids, strict=True))


def make_order(sender: uuid.UUID, stream: uuid.UUID, creator: uuid.UUID) -> GiftOrder:
    parts = split(PRICE, 5000)
    return GiftOrder(uuid.uuid4(), sender, stream, creator, "heart", 1, PRICE,
                     parts.creator_share, parts.platform_cut)


async def baseline_gift(pool: Any, order: GiftOrder) -> None:
    """One gift, one transaction: lock the three accounts FOR UPDATE (in id order, so
    concurrent gifts cannot deadlock), check the wallet, update, insert, commit."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, kind, balance FROM ledger_accounts"
            " WHERE (kind = 'wallet' AND owner_id = $1) OR (kind = 'earnings' AND owner_id = $2)"
            " OR kind = 'platform' ORDER BY id FOR UPDATE",
            order.sender_id, order.creator_id)
        accounts = {row["kind"]: row for row in rows}
        if accounts["wallet"]["balance"] < order.price:
            raise RuntimeError("insufficient")
        transfer = uuid.uuid4()
        await conn.execute("INSERT INTO ledger_transfers (id, kind, created_at)"
                           " VALUES ($1, 'gift_batch', now())", transfer)
        await conn.execute(
            "INSERT INTO gifts (id, sender_id, stream_id, creator_id, gift_slug, quantity,"
            " price, creator_share, platform_cut, transfer_id, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now())",
            order.gift_id, order.sender_id, order.stream_id, order.creator_id, order.gift_slug,
            order.quantity, order.price, order.creator_share, order.platform_cut, transfer)
        ids = [accounts[k]["id"] for k in ("wallet", "earnings", "platform")]
        amounts = [-order.price, order.creator_share, order.platform_cut]
        await conn.execute(
            "UPDATE ledger_accounts a SET balance = a.balance + c.m"
            " FROM unnest($1::bigint[], $2::bigint[]) AS c(id, m) WHERE a.id = c.id",
            ids, amounts)
        # Only the sender's debit names the gift (as the batcher writes it, and as
        # `livecore audit verify` checks: one debit per gift).
        await conn.execute(
            "INSERT INTO ledger_entries (transfer_id, account_id, amount, gift_id)"
            " SELECT $1, a, m, g FROM unnest($2::bigint[], $3::bigint[], $4::uuid[])"
            " AS t(a, m, g)",
            transfer, ids, amounts, [order.gift_id, None, None])


async def run(name: str, seconds: float, clients: int,
              send: Callable[[GiftOrder], Awaitable[Any]],
              pick: Callable[[], GiftOrder]) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    with progress() as bar:
        task = bar.add_task(f"{name:>24}", total=None)

        async def client() -> None:
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                await send(pick())
                latencies.append(time.perf_counter() - sent)
                bar.advance(task)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies), time.perf_counter() - started, latencies


# -- the engine and the baseline ---------------------------------------------------------------

#: What went wrong in this run (reported after the figures; the exit status is then 1).
FAILED: list[str] = []


@dataclass
class Case:
    """One measured case: how many gifts were answered, in what time, how fast each."""

    label: str
    count: int
    seconds: float
    latencies_s: list[float]
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    deliveries: int | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.latencies_s, fraction) * 1000


async def engine(url: str, args: argparse.Namespace) -> dict[str, Case]:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=16, max_size=16)
    results: dict[str, Case] = {}
    try:
        senders, streams = await populate(pool, args.senders, args.creators)
        hot = streams[0]

        def uniform() -> GiftOrder:
            stream, creator = random.choice(streams)
            return make_order(random.choice(senders), stream, creator)

        def single() -> GiftOrder:
            return make_order(random.choice(senders), *hot)

        batches: list[int] = []
        batcher = GiftBatcher(pool, clock=now, max_in_flight=args.in_flight,
                              on_batch=lambda size, _s: batches.append(size))
        await batcher.start()
        for label, pick in (("engine, uniform", uniform), ("engine, one streamer", single)):
            results[label] = await timed(label, args.seconds, args.clients, batcher.send, pick)
        await batcher.stop()
        for label, pick in (("baseline, uniform", uniform),
                            ("baseline, one streamer", single)):
            results[label] = await timed(label, args.seconds, args.clients,
                                         lambda order: baseline_gift(pool, order), pick)
        console.print(f"engine: {len(batches):,} batches, mean batch size "
                      f"{sum(batches) / max(1, len(batches)):.0f} gifts")
        await check_ledger(pool, expected=sum(c.count for c in results.values()))
    finally:
        await pool.close()
    return results


async def timed(name: str, seconds: float, clients: int,
                send: Callable[[GiftOrder], Awaitable[Any]],
                pick: Callable[[], GiftOrder]) -> Case:
    count, elapsed, latencies = await run(name, seconds, clients, send, pick)
    latencies.sort()
    return Case(name, count, elapsed, latencies)


async def check_ledger(pool: Any, *, expected: int, unanswered: int = 0,
                       projection: RedisProjection | None = None) -> None:
    """Every invariant of ``livecore audit verify``, and the acknowledged gifts stored (plus,
    at most, those whose answer never came: they may have committed)."""
    # Fresh statistics first: right after a bulk load the planner would otherwise join the
    # audit's gift and entry scans with nested loops (minutes instead of seconds).
    await pool.execute("ANALYZE gifts, ledger_entries, ledger_transfers, ledger_accounts")
    checks = await verify_postgres(pool)
    if projection is not None:
        checks.append(await verify_projection(pool, projection))
    stored = await pool.fetchval("SELECT count(*) FROM gifts")
    failed = [c.name for c in checks if not c.ok]
    if failed or not expected <= stored <= expected + unanswered:
        console.print(f"[bold red]LEDGER CHECK FAILED[/]: {failed or 'invariants hold'}; "
                      f"{stored:,} gifts stored, {expected:,} acknowledged")
        for check in checks:
            for example in check.examples:
                console.print(f"  {check.name}: {example}")
        FAILED.append("ledger check")
        return
    console.print(f"ledger verified: {len(checks)} checks hold, {stored:,} gifts stored = "
                  f"{expected:,} acknowledged")


# -- end to end: livecore serve over websockets ----------------------------------------------


class GiftSocket(UpgradingSocket):
    """One viewer's websocket, read without walking its frames.

    In the one-streamer case every gift reaches every viewer: hundreds of thousands of
    ``gift.sent`` frames a second, which a Python loop over frame headers (about 2 µs a frame
    here) cannot keep up with, and the load generator must not be what limits the run. So the
    bytes received are searched in C: ``gift.sent`` frames are counted by their type field
    (which appears once in each and in nothing else this load sends), and the answers (``ack``,
    ``error``, the first ``hello``) are found by their first bytes, their length read from the
    frame header just before them, then decoded and matched with their requests by id. Bytes
    that may hold the start of a marker or of an answer not all received wait for the next read.
    The server never pings a viewer that gifts (pings follow 20 s of silence).
    """

    def __init__(self, request: bytes, hello: asyncio.Future[None]) -> None:
        super().__init__(request)
        self.hello = hello
        #: Where in ``buffer`` the next search for an answer starts.
        self.scan_from = 0
        self.deliveries = 0
        self.closed = False
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    @classmethod
    async def open(cls, port: int, token: str) -> GiftSocket:
        loop = asyncio.get_running_loop()
        hello: asyncio.Future[None] = loop.create_future()
        _transport, sock = await loop.create_connection(
            lambda: cls(handshake(port, token), hello), "127.0.0.1", port)
        async with asyncio.timeout(30):
            await hello
        return sock

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before hello: {exc!r}"))
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection closed"))

    def refused(self, status_line: str) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(status_line))

    def received(self, buf: bytes, pos: int) -> bytes:
        if pos:
            buf = buf[pos:]
        # Answers: from where the last read stopped; one not all received stops the search.
        done = len(buf)
        parsed_end = self.scan_from
        at = buf.find(ANSWER, parsed_end)
        while at != -1:
            length = _payload_length(buf, at)
            if length is None:  # the same bytes inside another message: not an answer
                at = buf.find(ANSWER, at + 1)
                continue
            if at + length > len(buf):
                done = max(0, at - 4)  # from its frame header on, next time
                break
            message = orjson.loads(buf[at : at + length])
            if message["type"] == "hello":
                if not self.hello.done():
                    self.hello.set_result(None)
            elif message["type"] in ("ack", "error"):
                waiter = self._waiting.pop(message.get("id", ""), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
            parsed_end = at + length
            at = buf.find(ANSWER, parsed_end)
        # Keep what is undecided, and enough bytes for a gift.sent marker cut by the end of
        # this read; count the markers that start before the bytes kept (all complete).
        cut = max(0, min(done, len(buf) - len(GIFT_SENT) + 1))
        self.deliveries += buf.count(GIFT_SENT, 0, cut + len(GIFT_SENT) - 1)
        self.scan_from = max(0, parsed_end - cut)
        return buf[cut:]

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        message_id = f"r{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        try:
            self.transport.write(masked(Opcode.TEXT, orjson.dumps({**message, "id": message_id})))
            async with asyncio.timeout(30):
                return await future
        finally:
            self._waiting.pop(message_id, None)

    async def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(masked(Opcode.CLOSE, Close(1000, "").serialize()))
            self.transport.close()


def _payload_length(buf: bytes, at: int) -> int | None:
    """The length of the unmasked text frame whose payload starts at ``at``, from its header
    (2 bytes, or 4 for 126 to 65,535 bytes), or None if no frame header precedes ``at`` (the
    bytes are inside another message; bytes kept from a read always include an answer's
    header)."""
    if at >= 4 and buf[at - 4] == 0x81 and buf[at - 3] == 126:
        return int.from_bytes(buf[at - 2 : at], "big")
    if at >= 2 and buf[at - 2] == 0x81 and buf[at - 1] < 126:
        return buf[at - 1]
    return None


@dataclass
class Stage:
    viewers: list[str]  # their tokens
    streams: list[str]


async def stage(base: str, pool: Any, *, viewers: int, streams: int) -> Stage:
    """Creators with live streams, and viewers holding coins, through the HTTP API."""
    password = "gift load test password"
    gate = asyncio.Semaphore(8)  # registration hashes a password: not all at once

    async def account(http: aiohttp.ClientSession, name: str) -> tuple[str, str]:
        async with gate:
            body = {"username": name, "password": password, "birthdate": "1990-01-01"}
            async with http.post("/api/v1/auth/register", json=body) as response:
                user = await response.json()
                if response.status != 201:
                    raise SystemExit(f"register failed: {user}")
            async with http.post("/api/v1/auth/login",
                                 json={"username": name, "password": password}) as response:
                return user["id"], (await response.json())["token"]

    async def creator(http: aiohttp.ClientSession, index: int) -> str:
        _, token = await account(http, f"giftc{index}x{secrets.token_hex(3)}")
        headers = {"Authorization": f"Bearer {token}"}
        await (await http.post("/api/v1/me/creator", headers=headers)).read()
        async with http.post("/api/v1/streams", headers=headers,
                             json={"title": f"Gift load {index}"}) as response:
            return str((await response.json())["id"])

    async with aiohttp.ClientSession(base) as http:
        stream_ids = await asyncio.gather(*(creator(http, i) for i in range(streams)))
        people = await asyncio.gather(*(account(http, f"giftv{i}x{secrets.token_hex(3)}")
                                        for i in range(viewers)))
    # Streams go live when media arrives; the load has no media, so it says so directly.
    await pool.execute("UPDATE streams SET state = 'live', started_at = now()"
                       " WHERE id = ANY($1::uuid[])", [uuid.UUID(s) for s in stream_ids])
    for user_id, _ in people:
        await grant(pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(user_id), coins=COINS_EACH,
                    memo="gift load test", actor_id=None, now=now())
    return Stage([token for _, token in people], list(stream_ids))


async def e2e_case(label: str, port: int, setup: Stage, rooms: list[str], *, rate: float,
                   seconds: float, pid: int) -> Case:
    """Viewer ``i`` subscribes to ``rooms[i % len(rooms)]`` and gifts there: one gift in flight,
    the next sent when the ack is back but no sooner than ``1 / rate`` seconds after the
    previous one (the server allows a connection 20 messages/s), for ``seconds``."""
    opened = await asyncio.gather(*(GiftSocket.open(port, t) for t in setup.viewers))
    sockets = [(sock, rooms[i % len(rooms)]) for i, sock in enumerate(opened)]
    case = Case(label, 0, 0.0, [])
    try:
        for sock, room in sockets:
            reply = await sock.request({"type": "subscribe", "room": room})
            if reply["type"] != "ack":
                raise SystemExit(f"subscribe failed: {reply}")
        await asyncio.sleep(1)  # the subscribe's message refills the connection's budget
        cpu_before, own_before = server_cpu(pid), cpu_seconds(os.getpid())
        started = time.perf_counter()
        deadline = started + seconds
        with progress() as bar:
            task = bar.add_task(f"{label:>26}", total=None)

            async def viewer(sock: GiftSocket, room: str) -> None:
                # Start spread over one interval, so the viewers do not send in lockstep.
                due = time.perf_counter() + random.random() / rate
                while True:
                    pause = due - time.perf_counter()
                    if pause > 0:
                        await asyncio.sleep(pause)
                    sent = time.perf_counter()
                    if sent >= deadline:
                        return
                    due = max(sent, due + 1 / rate)
                    try:
                        reply = await sock.request({"type": "gift", "room": room,
                                                    "gift_id": str(uuid.uuid4()), "gift": "rose"})
                    except (TimeoutError, ConnectionError) as exc:
                        case.errors[type(exc).__name__] += 1
                        if sock.closed:
                            return
                        continue
                    if reply["type"] == "ack" and reply["result"]["replayed"] is False:
                        case.latencies_s.append(time.perf_counter() - sent)
                        bar.advance(task)
                    else:
                        case.errors[reply.get("code", "unexpected answer")] += 1

            await asyncio.gather(*(viewer(sock, room) for sock, room in sockets))
        case.seconds = time.perf_counter() - started
        case.server_cpu_s = server_cpu(pid) - cpu_before
        case.client_cpu_s = cpu_seconds(os.getpid()) - own_before
        await asyncio.sleep(1)  # the last gifts' events are still on their way
        case.deliveries = sum(sock.deliveries for sock, _ in sockets)
    finally:
        await asyncio.gather(*(sock.close() for sock, _ in sockets))
    case.count = len(case.latencies_s)
    case.latencies_s.sort()
    return case


async def e2e(server_url: str, redis_url: str, args: argparse.Namespace) -> dict[str, Case]:
    name = f"livecore_bench_{secrets.token_hex(4)}"
    prefix = f"giftbench{secrets.token_hex(4)}:"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    database_url = urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    results: dict[str, Case] = {}
    try:
        port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LIVECORE_") or k == "LIVECORE_PROCESSES"}
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, PORT=str(port),
                   LIVECORE_REDIS_PREFIX=prefix, LIVECORE_LOG_LEVEL="WARNING")
        command = [os.path.join(os.path.dirname(sys.executable), "livecore"), "serve"]
        redis = aioredis.from_url(redis_url)
        try:
            with server_process(command, env=env, port=port) as pid:
                pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
                try:
                    setup = await stage(f"http://127.0.0.1:{port}", pool,
                                        viewers=args.viewers, streams=args.streams)
                    for label, rooms in (("end to end, uniform", setup.streams),
                                         ("end to end, one streamer", setup.streams[:1])):
                        results[label] = await e2e_case(label, port, setup, rooms,
                                                        rate=args.rate, seconds=args.seconds,
                                                        pid=pid)
                    await check_ledger(
                        pool, expected=sum(c.count for c in results.values()),
                        unanswered=sum(c.errors["TimeoutError"] + c.errors["ConnectionError"]
                                       for c in results.values()),
                        projection=RedisProjection(redis, prefix))
                finally:
                    await pool.close()
        finally:  # once the server is gone, so nothing writes them again
            async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
                await redis.delete(key)
            await redis.aclose()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    return results


# -- the report ----------------------------------------------------------------------------


def report(results: dict[str, Case], args: argparse.Namespace) -> None:
    console.width = max(console.width, 150)  # the table is wide; keep it whole in a log
    table = Table(title="Gifts: engine and baseline with "
                        f"{args.clients} closed-loop clients; end to end with {args.viewers} "
                        f"viewers at up to {args.rate:g} gifts/s each; {args.seconds:.0f} s each")
    for column in ("case", "gifts/s", "p50 ms", "p95 ms", "p99 ms", "errors",
                   "server CPU µs/gift", "server CPU %", "load generator CPU %",
                   "gift.sent deliveries/s"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for case in results.values():
        errors = sum(case.errors.values())
        table.add_row(
            case.label, f"{case.per_second:,.0f}",
            *(f"{case.latency_ms(f):.1f}" for f in (0.5, 0.95, 0.99)),
            f"{errors:,}" + (f" {dict(case.errors)}" if errors else ""),
            "-" if case.server_cpu_s is None or not case.count
            else f"{case.server_cpu_s / case.count * 1e6:,.0f}",
            *("-" if cpu is None else f"{cpu / case.seconds:.0%}"
              for cpu in (case.server_cpu_s, case.client_cpu_s)),
            "-" if case.deliveries is None else f"{case.deliveries / case.seconds:,.0f}")
    console.print(table)

    def rate(label: str) -> float | None:
        case = results.get(label)
        return case.per_second if case is not None else None

    ratios = Table(title="Ratios")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    goals = Table(title="The issue's goals, on this run")
    for column in ("goal", "measured", "met"):
        goals.add_column(column)
    for kind in ("uniform", "one streamer"):
        engine_rate, base = rate(f"engine, {kind}"), rate(f"baseline, {kind}")
        if engine_rate is not None and base:
            ratios.add_row(f"engine / baseline, {kind}", f"{engine_rate / base:.1f}")
        if engine_rate is not None and base and kind == "uniform":
            goals.add_row("engine ≥ 20,000 gifts/s", f"{engine_rate:,.0f}",
                          _yes(engine_rate >= 20_000))
            goals.add_row("engine ≥ 5 × baseline", f"{engine_rate / base:.1f} ×",
                          _yes(engine_rate >= 5 * base))
    for prefix in ("engine", "end to end"):
        uniform, single = rate(f"{prefix}, uniform"), rate(f"{prefix}, one streamer")
        if uniform and single is not None:
            ratios.add_row(f"{prefix}: one streamer / uniform", f"{single / uniform:.2f}")
    e2e_uniform = results.get("end to end, uniform")
    e2e_single = results.get("end to end, one streamer")
    engine_uniform = rate("engine, uniform")
    if e2e_uniform is not None:
        if engine_uniform:
            ratios.add_row("end to end / engine, uniform",
                           f"{e2e_uniform.per_second / engine_uniform:.2f}")
        goals.add_row("end to end ≥ 5,000 gifts/s", f"{e2e_uniform.per_second:,.0f}",
                      _yes(e2e_uniform.per_second >= 5_000))
        p99 = e2e_uniform.latency_ms(0.99)
        goals.add_row("end to end p99 ack < 50 ms", f"{p99:.1f} ms", _yes(p99 < 50))
        if e2e_single is not None and e2e_uniform.per_second:
            share = e2e_single.per_second / e2e_uniform.per_second
            goals.add_row("one streamer ≥ 80% of uniform (end to end)", f"{share:.0%}",
                          _yes(share >= 0.8))
    console.print(ratios)
    console.print(goals)


def _yes(met: bool) -> str:
    return "[green]yes[/]" if met else "[red]no[/]"


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """REDIS_URL, or an embedded Redis in a temporary directory."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    embedded = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="livecore-bench-")) / "redis")
    embedded.start()
    try:
        yield embedded.url
    finally:
        embedded.stop()


async def main(args: argparse.Namespace) -> None:
    server_url = os.environ.get("DATABASE_URL")
    embedded = None
    if server_url is None:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="livecore-bench-")) / "pg")
        server_url = embedded.start()
    results: dict[str, Case] = {}
    try:
        if not args.skip_engine:
            name = f"livecore_bench_{secrets.token_hex(4)}"
            admin = await asyncpg.connect(server_url)
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                results.update(await engine(
                    urlunsplit(urlsplit(server_url)._replace(path="/" + name)), args))
            finally:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                await admin.close()
        if not args.skip_e2e:
            with redis_server() as redis_url:
                results.update(await e2e(server_url, redis_url, args))
    finally:
        if embedded is not None:
            embedded.stop()
    report(results, args)
    if FAILED:
        raise SystemExit(f"FAILED: {', '.join(FAILED)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1000,
                        help="engine and baseline: closed-loop clients")
    parser.add_argument("--senders", type=int, default=2000,
                        help="engine and baseline: distinct senders")
    parser.add_argument("--creators", type=int, default=50,
                        help="engine and baseline: creators with a live stream")
    parser.add_argument("--in-flight", type=int, default=MAX_IN_FLIGHT,
                        help="engine: batches committing at once")
    parser.add_argument("--viewers", type=int, default=300,
                        help="end to end: websocket connections, one gifting viewer each")
    parser.add_argument("--rate", type=float, default=18.0,
                        help="end to end: most gifts/s per viewer (the server allows 20"
                             " messages/s per connection)")
    parser.add_argument("--streams", type=int, default=100,
                        help="end to end: live streams in the uniform case")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    asyncio.run(main(parser.parse_args()))
