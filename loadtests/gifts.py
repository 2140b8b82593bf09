"""Gift ledger throughput: the group-committing batcher against one transaction per gift.

    python -m loadtests.gifts [--seconds 10] [--clients 200] [--senders 2000] [--creators 50]

Creates a throwaway database (on the server of DATABASE_URL, or an embedded PostgreSQL in a
temporary directory when it is unset), fills it with senders who hold plenty of coins and
creators with live streams, then measures, each for the same duration and the same number of
concurrent clients (each sends a gift, waits for its answer, sends the next):

* the **engine**: ``ledger.batcher.GiftBatcher``, gifts spread over all creators;
* the engine with **every gift to one streamer** (the hot-spot case);
* the **baseline**: one transaction per gift that locks the sender's wallet with
  ``SELECT ... FOR UPDATE``, updates the three balances, inserts the gift, the transfer and its
  entries, and commits (16 connections), again uniform and single-streamer.

Prints gifts/s and answer latency percentiles, side by side, and the ratios. The database is
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from rich.table import Table

from gateway.embedded import EmbeddedPostgres
from ledger.batcher import GiftBatcher, GiftOrder
from ledger.migrate import migrate
from livecore.economy import split
from loadtests.common import console, percentile, progress

COINS_EACH = 10**9
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
        await conn.execute(
            "INSERT INTO ledger_entries (transfer_id, account_id, amount, gift_id)"
            " SELECT $1, a, m, $4 FROM unnest($2::bigint[], $3::bigint[]) AS t(a, m)",
            transfer, ids, amounts, order.gift_id)


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


async def bench(url: str, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=16, max_size=16)
    try:
        senders, streams = await populate(pool, args.senders, args.creators)
        hot = streams[0]

        def uniform() -> GiftOrder:
            stream, creator = random.choice(streams)
            return make_order(random.choice(senders), stream, creator)

        def single() -> GiftOrder:
            return make_order(random.choice(senders), *hot)

        batches: list[int] = []
        batcher = GiftBatcher(pool, clock=now,
                              on_batch=lambda size, _s: batches.append(size))
        await batcher.start()
        results = {}
        for label, pick in (("engine, uniform", uniform), ("engine, one streamer", single)):
            results[label] = await run(label, args.seconds, args.clients, batcher.send, pick)
        await batcher.stop()
        for label, pick in (("baseline, uniform", uniform),
                            ("baseline, one streamer", single)):
            results[label] = await run(label, args.seconds, args.clients,
                                       lambda order: baseline_gift(pool, order), pick)
        check = await pool.fetchval(
            "SELECT count(*) FROM (SELECT transfer_id FROM ledger_entries GROUP BY transfer_id"
            " HAVING sum(amount) <> 0) t")
        console.print(f"unbalanced transfers after the run: {check}; mean batch size "
                      f"{sum(batches) / max(1, len(batches)):.0f} gifts")
    finally:
        await pool.close()
    table = Table(title=f"Gift ledger: {args.clients} concurrent clients, {args.seconds:.0f} s "
                        "each")
    for column in ("case", "gifts/s", "p50 ms", "p95 ms", "p99 ms", "× baseline"):
        table.add_column(column, justify="right" if column != "case" else "left")
    rates = {label: count / elapsed for label, (count, elapsed, _l) in results.items()}
    for label, (_count, _elapsed, latencies) in results.items():
        ordered = sorted(latencies)
        kind = label.split(", ")[1]
        base = rates[f"baseline, {kind}"]
        table.add_row(label, f"{rates[label]:,.0f}",
                      *(f"{percentile(ordered, f) * 1000:.1f}" for f in (0.5, 0.95, 0.99)),
                      f"{rates[label] / base:.1f}")
    console.print(table)
    console.print(
        f"one streamer / uniform (engine): "
        f"{rates['engine, one streamer'] / rates['engine, uniform']:.2f}")


async def main(args: argparse.Namespace) -> None:
    name = f"livecore_bench_{secrets.token_hex(4)}"
    server_url = os.environ.get("DATABASE_URL")
    embedded = None
    if server_url is None:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="livecore-bench-")) / "pg")
        server_url = embedded.start()
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await bench(urlunsplit(urlsplit(server_url)._replace(path="/" + name)), args)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--senders", type=int, default=2000)
    parser.add_argument("--creators", type=int, default=50)
    asyncio.run(main(parser.parse_args()))
