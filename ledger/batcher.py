"""The gift batcher: many gifts per PostgreSQL transaction (group commit).

Why: a commit costs about half a millisecond here, so one transaction per gift caps a
connection near 2,000 gifts/s, and a popular streamer's earnings row would be updated (and
locked) once per gift. Gathering the gifts that arrive within a couple of milliseconds into one
transaction pays the commit once, and credits each creator and the platform once per batch.

One batch, in one transaction:

1. Read the stored gifts among the batch's ids: those are replays (same content: the stored
   outcome is returned) or conflicts (same id, other content: an error). A batch that holds
   the same id twice treats the later one the same way, once the first is decided.
2. Lock every account the batch touches, in id order (one statement, so concurrent batches on
   other gateway processes always lock in the same order and cannot deadlock).
3. Walk the new gifts in arrival order against the locked wallet balances: a gift the sender
   can afford is accepted and its price held back; one it cannot is refused
   (``insufficient_coins``) and moves nothing.
4. Claim the accepted ids (``INSERT ... ON CONFLICT DO NOTHING``); an id another process
   claimed meanwhile is resolved as in step 1 after commit.
5. Debit each sender once, credit each creator once and the platform once, and write the
   entries (one per gift for the debit, one per account for the credits) in one statement,
   which the database checks sums to zero.
6. COMMIT. Only then are the senders answered; only then do gifts reach rooms.

If the transaction fails (PostgreSQL unreachable, say), every gift of the batch is answered
with a retryable error and nothing was acknowledged: the client retries with the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.postgres import UNAVAILABLE_ERRORS
from livecore.errors import ClientError, Conflict, LivecoreError, ServiceUnavailable

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_WAIT_S = 0.002


class InsufficientCoins(ClientError):
    status = 402
    default_code = "insufficient_coins"


@dataclass(frozen=True)
class GiftOrder:
    """A priced gift, ready for the ledger (pricing happens before, from the catalogue)."""

    gift_id: uuid.UUID
    sender_id: uuid.UUID
    stream_id: uuid.UUID
    creator_id: uuid.UUID
    gift_slug: str
    quantity: int
    price: int
    creator_share: int
    platform_cut: int

    def same_request(self, other: GiftOrder) -> bool:
        """Whether ``other`` asks for the same gift (the price may have changed since)."""
        return (self.sender_id, self.stream_id, self.gift_slug, self.quantity) == (
            other.sender_id, other.stream_id, other.gift_slug, other.quantity)


@dataclass(frozen=True)
class GiftOutcome:
    order: GiftOrder
    created_at: dt.datetime
    #: False when this answer replays a gift committed earlier (a retry).
    is_new: bool


_GIFT_COLUMNS = ("id, sender_id, stream_id, creator_id, gift_slug, quantity, price, "
                 "creator_share, platform_cut, created_at")


def _order(row: Any) -> GiftOrder:
    return GiftOrder(row["id"], row["sender_id"], row["stream_id"], row["creator_id"],
                     row["gift_slug"], row["quantity"], row["price"], row["creator_share"],
                     row["platform_cut"])


class GiftBatcher:
    """Group-commits gifts; :meth:`send` returns once the gift is committed (or refused)."""

    def __init__(self, pool: Any, *, clock: Callable[[], dt.datetime],
                 max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        self._pool = pool
        self._clock = clock
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._on_batch = on_batch
        self._queue: list[tuple[GiftOrder, asyncio.Future[GiftOutcome]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gift-batcher")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        task, self._task = self._task, None
        while self._queue:
            await self._flush()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def send(self, order: GiftOrder) -> GiftOutcome:
        if self._task is None:
            raise ServiceUnavailable("The gift service is not running.")
        future: asyncio.Future[GiftOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append((order, future))
        self._wake.set()
        return await asyncio.shield(future)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if len(self._queue) < self._max_batch:
                await asyncio.sleep(self._max_wait_s)
            while self._queue:
                await self._flush()

    async def _flush(self) -> None:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        if not batch:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await self._commit([order for order, _ in batch])
        except UNAVAILABLE_ERRORS as exc:
            log.warning("gift batch failed: database unavailable",
                        extra={"gifts": len(batch), "error": repr(exc)})
            error: LivecoreError = ServiceUnavailable(
                "Gifts are paused: the ledger is unreachable. Retry with the same gift id.",
                code="ledger_unavailable")
            results = [error] * len(batch)
        except Exception:
            log.exception("gift batch failed", extra={"gifts": len(batch)})
            results = [LivecoreError("Internal error; retry with the same gift id.")] * len(batch)
        if self._on_batch is not None:
            self._on_batch(len(batch), loop.time() - started)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _commit(self, orders: list[GiftOrder]) -> list[GiftOutcome | LivecoreError]:
        now = self._clock()
        async with self._pool.acquire() as conn, conn.transaction():
            stored = {
                row["id"]: row for row in await conn.fetch(
                    f"SELECT {_GIFT_COLUMNS} FROM gifts WHERE id = ANY($1::uuid[])",
                    list({o.gift_id for o in orders}))
            }
            fresh: list[int] = []
            seen: set[uuid.UUID] = set()
            for index, order in enumerate(orders):
                if order.gift_id not in stored and order.gift_id not in seen:
                    seen.add(order.gift_id)
                    fresh.append(index)
            accepted, refused = await self._fund(conn, [orders[i] for i in fresh])
            claimed: set[uuid.UUID] = set()
            if accepted:
                claimed = await self._post(conn, accepted, now)
        outcomes: dict[uuid.UUID, GiftOutcome] = {}
        for order in accepted:
            if order.gift_id in claimed:
                outcomes[order.gift_id] = GiftOutcome(order, now, True)
        unresolved = {o.gift_id for o in orders} - set(outcomes) - set(stored) - refused
        if unresolved:  # claimed by another process meanwhile: read what it stored
            async with self._pool.acquire() as conn:
                for row in await conn.fetch(
                        f"SELECT {_GIFT_COLUMNS} FROM gifts WHERE id = ANY($1::uuid[])",
                        list(unresolved)):
                    stored[row["id"]] = row
        results: list[GiftOutcome | LivecoreError] = []
        answered: set[uuid.UUID] = set()
        for order in orders:
            outcome = outcomes.get(order.gift_id)
            if outcome is not None and order.gift_id not in answered:
                answered.add(order.gift_id)
                results.append(outcome)
                continue
            if outcome is not None:  # the same id twice in one batch
                results.append(self._replay(order, outcome.order, outcome.created_at))
            elif order.gift_id in stored:
                row = stored[order.gift_id]
                results.append(self._replay(order, _order(row), row["created_at"]))
            else:
                results.append(InsufficientCoins(
                    "Not enough coins for this gift; nothing was spent.",
                    gift_id=str(order.gift_id), price=order.price))
        return results

    @staticmethod
    def _replay(order: GiftOrder, stored: GiftOrder,
                created_at: dt.datetime) -> GiftOutcome | LivecoreError:
        if order.same_request(stored):
            return GiftOutcome(stored, created_at, False)
        return Conflict("This gift id was already used for a different gift.",
                        code="gift_id_conflict", gift_id=str(order.gift_id))

    @staticmethod
    async def _fund(conn: Any, orders: list[GiftOrder]) -> tuple[list[GiftOrder], set[uuid.UUID]]:
        """Lock the accounts and decide, in arrival order, which gifts the senders afford."""
        if not orders:
            return [], set()
        senders = sorted({o.sender_id for o in orders})
        rows = await conn.fetch(
            """
            SELECT id, owner_id, balance FROM ledger_accounts
            WHERE kind = 'wallet' AND owner_id = ANY($1::uuid[])
            ORDER BY id FOR UPDATE
            """,
            senders,
        )
        balance = {row["owner_id"]: row["balance"] for row in rows}
        accepted, refused = [], set()
        for order in orders:
            available = balance.get(order.sender_id, 0)
            if available >= order.price:
                balance[order.sender_id] = available - order.price
                accepted.append(order)
            else:
                refused.add(order.gift_id)
        return accepted, refused

    @staticmethod
    async def _post(conn: Any, orders: list[GiftOrder], now: dt.datetime) -> set[uuid.UUID]:
        transfer_id = uuid.uuid4()
        claimed_rows = await conn.fetch(
            """
            INSERT INTO gifts (id, sender_id, stream_id, creator_id, gift_slug, quantity, price,
                               creator_share, platform_cut, transfer_id, created_at)
            SELECT g.*, $10::uuid, $11::timestamptz
            FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                        $6::int[], $7::bigint[], $8::bigint[], $9::bigint[]) AS g
            ON CONFLICT (id) DO NOTHING
            RETURNING id
            """,
            [o.gift_id for o in orders], [o.sender_id for o in orders],
            [o.stream_id for o in orders], [o.creator_id for o in orders],
            [o.gift_slug for o in orders], [o.quantity for o in orders],
            [o.price for o in orders], [o.creator_share for o in orders],
            [o.platform_cut for o in orders], transfer_id, now,
        )
        claimed = {row["id"] for row in claimed_rows}
        posted = [o for o in orders if o.gift_id in claimed]
        if not posted:
            return claimed
        await conn.execute(
            "INSERT INTO ledger_transfers (id, kind, created_at) VALUES ($1, 'gift_batch', $2)",
            transfer_id, now,
        )
        creators = sorted({o.creator_id for o in posted})
        await conn.execute(
            """
            INSERT INTO ledger_accounts (kind, owner_id)
            SELECT 'earnings', unnest($1::uuid[])
            ON CONFLICT (kind, owner_id) DO NOTHING
            """,
            creators,
        )
        debits: dict[uuid.UUID, int] = {}
        shares: dict[uuid.UUID, int] = {}
        cut = 0
        for order in posted:
            debits[order.sender_id] = debits.get(order.sender_id, 0) + order.price
            shares[order.creator_id] = shares.get(order.creator_id, 0) + order.creator_share
            cut += order.platform_cut
        # Every account of the batch, locked in id order (wallets were locked already).
        accounts = await conn.fetch(
            """
            SELECT id, kind, owner_id FROM ledger_accounts
            WHERE (kind = 'wallet' AND owner_id = ANY($1::uuid[]))
               OR (kind = 'earnings' AND owner_id = ANY($2::uuid[]))
               OR kind = 'platform'
            ORDER BY id FOR UPDATE
            """,
            list(debits), creators,
        )
        wallet = {r["owner_id"]: r["id"] for r in accounts if r["kind"] == "wallet"}
        earnings = {r["owner_id"]: r["id"] for r in accounts if r["kind"] == "earnings"}
        platform = next(r["id"] for r in accounts if r["kind"] == "platform")
        changes: dict[int, int] = {}
        for sender, amount in debits.items():
            changes[wallet[sender]] = -amount
        for creator, amount in shares.items():
            if amount:
                changes[earnings[creator]] = changes.get(earnings[creator], 0) + amount
        if cut:
            changes[platform] = changes.get(platform, 0) + cut
        ids = sorted(changes)
        await conn.execute(
            """
            UPDATE ledger_accounts a SET balance = a.balance + c.delta
            FROM unnest($1::bigint[], $2::bigint[]) AS c(id, delta)
            WHERE a.id = c.id
            """,
            ids, [changes[i] for i in ids],
        )
        entry_accounts = [wallet[o.sender_id] for o in posted]
        entry_amounts = [-o.price for o in posted]
        entry_gifts: list[uuid.UUID | None] = [o.gift_id for o in posted]
        for creator, amount in shares.items():
            if amount:
                entry_accounts.append(earnings[creator])
                entry_amounts.append(amount)
                entry_gifts.append(None)
        if cut:
            entry_accounts.append(platform)
            entry_amounts.append(cut)
            entry_gifts.append(None)
        await conn.execute(
            """
            INSERT INTO ledger_entries (transfer_id, account_id, amount, gift_id)
            SELECT $1, e.account, e.amount, e.gift
            FROM unnest($2::bigint[], $3::bigint[], $4::uuid[]) AS e(account, amount, gift)
            """,
            transfer_id, entry_accounts, entry_amounts, entry_gifts,
        )
        return claimed


async def grant(pool: Any, *, grant_id: uuid.UUID, user_id: uuid.UUID, coins: int,
                memo: str, actor_id: uuid.UUID | None, now: dt.datetime) -> bool:
    """Give ``coins`` promotional coins to a user's wallet (from the promotions account).

    ``grant_id`` is the transfer's id, so a retried grant is applied once; returns whether
    this call applied it. A retry with other content is a conflict.
    """
    if coins <= 0:
        raise ValueError("coins must be positive")
    async with pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            """
            INSERT INTO ledger_transfers (id, kind, memo, actor_id, created_at)
            VALUES ($1, 'grant', $2, $3, $4)
            ON CONFLICT (id) DO NOTHING RETURNING id
            """,
            grant_id, memo, actor_id, now,
        )
        if inserted is None:
            previous = await conn.fetch(
                """
                SELECT a.owner_id, e.amount FROM ledger_entries e
                JOIN ledger_accounts a ON a.id = e.account_id
                WHERE e.transfer_id = $1 AND a.kind = 'wallet'
                """,
                grant_id,
            )
            if [(r["owner_id"], r["amount"]) for r in previous] != [(user_id, coins)]:
                raise Conflict("This grant id was already used for another grant.",
                               code="grant_id_conflict")
            return False
        await conn.execute(
            "INSERT INTO ledger_accounts (kind, owner_id) VALUES ('wallet', $1)"
            " ON CONFLICT (kind, owner_id) DO NOTHING",
            user_id,
        )
        rows = await conn.fetch(
            """
            SELECT id, kind FROM ledger_accounts
            WHERE (kind = 'wallet' AND owner_id = $1) OR kind = 'promotions'
            ORDER BY id FOR UPDATE
            """,
            user_id,
        )
        ids = {row["kind"]: row["id"] for row in rows}
        await conn.execute(
            """
            UPDATE ledger_accounts SET balance = balance + CASE WHEN id = $1 THEN $3::bigint
                                                               ELSE -$3::bigint END
            WHERE id IN ($1, $2)
            """,
            ids["wallet"], ids["promotions"], coins,
        )
        await conn.execute(
            """
            INSERT INTO ledger_entries (transfer_id, account_id, amount)
            SELECT $1, e.account, e.amount
            FROM unnest($2::bigint[], $3::bigint[]) AS e(account, amount)
            """,
            grant_id, [ids["wallet"], ids["promotions"]], [coins, -coins],
        )
    return True


async def balance_of(pool: Any, user_id: uuid.UUID, kind: str = "wallet") -> int:
    value = await pool.fetchval(
        "SELECT balance FROM ledger_accounts WHERE kind = $1 AND owner_id = $2", kind, user_id)
    return int(value or 0)
