"""The gift batcher: many gifts per PostgreSQL transaction (group commit).

Why: a commit costs about half a millisecond here, so one transaction per gift caps a
connection near 2,000 gifts/s, and a popular streamer's earnings row would be updated (and
locked) once per gift. Gathering the gifts that arrive within a couple of milliseconds into one
transaction pays the commit once, and credits each creator and the platform once per batch.

Two batches are in flight at once, each on its own connection (``max_in_flight``), so that one
batch's statements run while the other waits for its commit to reach the disk, and PostgreSQL
can use both cores. A sender's gifts are never in two batches in flight at once: a batch takes
only orders whose sender is not in a batch still running (the others wait, in order, for the
next one). So the batches in flight lock disjoint wallets, and each sender's gifts are still
funded in arrival order.

One batch, in one transaction:

1. Read the stored gifts among the batch's ids: those are replays (same content: the stored
   outcome is returned) or conflicts (same id, other content: an error). A batch that holds
   the same id twice treats the later one the same way, once the first is decided.
   Then read and share-lock (``FOR SHARE``) the streams of the new gifts: a gift whose stream
   is not live is refused (``stream_not_live``) and moves nothing, and a stream cannot end
   while a batch that found it live commits. So the gateway may look streams up from a cache:
   the ledger itself decides whether a stream takes gifts.
2. Lock the senders' wallets, in id order, in one statement (``FOR NO KEY UPDATE``: the lock
   an ``UPDATE`` takes, which does not block the foreign-key checks of other batches' entries).
3. Walk the new gifts in arrival order against the locked balances: a gift the sender can
   afford is accepted and its price held back; one it cannot is refused (``insufficient_coins``)
   and moves nothing.
4. Claim the accepted ids, in id order, together with the batch's transfer row (``INSERT ... ON
   CONFLICT DO NOTHING``); an id another batch claimed meanwhile is resolved as in step 1 after
   commit. The same statement leaves out the gifts of senders who owe coins (a ``debt``
   account below zero after a refund or chargeback): they are refused (``wallet_in_debt``).
   If no id was claimed, the transaction is rolled back: nothing is written.
5. Debit each sender once and write every entry (one per gift for the debit, one per account
   for the credits) in one statement, which the database checks sums to zero (and names an
   existing transfer).
6. Lock the credited accounts (each creator's earnings and the platform account) in id order,
   credit each once, and COMMIT. Only then are the senders answered; only then do gifts reach rooms.

Deadlocks: every batch (of this process or another gateway's) locks wallets first, in id order,
then the credited accounts, in id order; wallets are never credited and earnings or the
platform never debited by a batch, so that is one global order. Ids are claimed in id order too
(a claim waits for another batch's uncommitted claim of the same id). The credited accounts, a
popular streamer's and the platform's, are shared by every batch: they are locked last, for the
few hundred microseconds of two small statements and the commit, not for the whole batch.

The creators' earnings accounts are created, when missing, before the transaction (in short
statements of their own, so no batch holds its locks while it waits for another's new account
row), and their ids, like the platform account's, are cached.

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
#: Batches committing at once, each on its own pooled connection.
MAX_IN_FLIGHT = 2
#: Cached earnings account ids (creator -> account); the cache is emptied when it grows past this.
MAX_CACHED_ACCOUNTS = 100_000


class InsufficientCoins(ClientError):
    status = 402
    default_code = "insufficient_coins"


class WalletInDebt(ClientError):
    """The sender owes coins (a refund or lost dispute took back coins already spent): no gift
    until the debt is paid, which their next purchase does first."""

    status = 402
    default_code = "wallet_in_debt"


class StreamNotLive(Conflict):
    """The gift's stream was not live when its batch was committed (it ended, say, after the
    gateway looked it up); nothing was spent."""

    default_code = "stream_not_live"


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

_Queued = tuple[GiftOrder, "asyncio.Future[GiftOutcome]", float]


def _order(row: Any) -> GiftOrder:
    return GiftOrder(row["id"], row["sender_id"], row["stream_id"], row["creator_id"],
                     row["gift_slug"], row["quantity"], row["price"], row["creator_share"],
                     row["platform_cut"])


class GiftBatcher:
    """Group-commits gifts; :meth:`send` returns once the gift is committed (or refused)."""

    def __init__(self, pool: Any, *, clock: Callable[[], dt.datetime],
                 max_batch: int = MAX_BATCH, max_wait_s: float = MAX_WAIT_S,
                 max_in_flight: int = MAX_IN_FLIGHT,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._pool = pool
        self._clock = clock
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_in_flight = max_in_flight
        self._on_batch = on_batch
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing: set[asyncio.Task[None]] = set()
        #: Senders with a batch in flight: their next gifts wait for the one after.
        self._busy: set[uuid.UUID] = set()
        #: Every queued order's sender is busy: nothing to start until a batch ends.
        self._blocked = False
        self._earnings: dict[uuid.UUID, int] = {}
        self._platform: int | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gift-batcher")

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while self._queue or self._flushing:
            while self._queue and len(self._flushing) < self._max_in_flight:
                if not self._launch():
                    break
            if self._flushing:
                await asyncio.wait(set(self._flushing), return_when=asyncio.FIRST_COMPLETED)

    async def send(self, order: GiftOrder) -> GiftOutcome:
        if self._task is None:
            raise ServiceUnavailable("The gift service is not running.")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[GiftOutcome] = loop.create_future()
        self._queue.append((order, future, loop.time()))
        if order.sender_id not in self._busy:
            self._blocked = False
        self._wake.set()
        return await asyncio.shield(future)

    async def stored(self, gift_id: uuid.UUID) -> GiftOutcome | None:
        """The committed gift with this id, as a replay (None if there is none)."""
        row = await self._pool.fetchrow(f"SELECT {_GIFT_COLUMNS} FROM gifts WHERE id = $1",
                                        gift_id)
        return None if row is None else GiftOutcome(_order(row), row["created_at"], False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if (not self._queue or self._blocked
                    or len(self._flushing) >= self._max_in_flight):
                await self._wake.wait()
                self._wake.clear()
                continue
            # Flush on size, or once the oldest queued gift has waited max_wait_s.
            if len(self._queue) < self._max_batch:
                delay = self._queue[0][2] + self._max_wait_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
            if not self._launch():
                self._blocked = True

    def _launch(self) -> bool:
        """Start a batch of the queued orders whose senders have none in flight.

        With several free slots, a batch takes about its share of the waiting senders (all of
        a sender's queued gifts go to the same batch), and the next slot the others: so a few
        hundred gifts from a few dozen senders still make two batches running side by side.
        """
        free = self._max_in_flight - len(self._flushing)
        waiting = {item[0].sender_id for item in self._queue} - self._busy
        share = -(-len(waiting) // free) if free > 1 else len(waiting)
        batch: list[_Queued] = []
        rest: list[_Queued] = []
        senders: set[uuid.UUID] = set()
        for item in self._queue:
            sender = item[0].sender_id
            if sender not in senders and (len(senders) >= share or sender in self._busy):
                rest.append(item)
            elif len(batch) < self._max_batch:
                batch.append(item)
                senders.add(sender)
            else:
                rest.append(item)
        if not batch:
            return False
        self._queue = rest
        self._busy |= senders
        task = asyncio.create_task(self._flush(batch, senders), name="gift-batch")
        self._flushing.add(task)
        return True

    async def _flush(self, batch: list[_Queued], senders: set[uuid.UUID]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await self._commit([order for order, _, _ in batch])
        except UNAVAILABLE_ERRORS as exc:
            log.warning("gift batch failed: database unavailable",
                        extra={"gifts": len(batch), "error": repr(exc)})
            error: LivecoreError = ServiceUnavailable(
                "Gifts are paused: the ledger is unreachable. Retry with the same gift id.",
                code="ledger_unavailable")
            results = [error] * len(batch)
            self._forget_accounts()
        except Exception:
            log.exception("gift batch failed", extra={"gifts": len(batch)})
            results = [LivecoreError("Internal error; retry with the same gift id.")] * len(batch)
            self._forget_accounts()
        finally:
            self._busy -= senders
            self._blocked = False
            task = asyncio.current_task()
            if task is not None:
                self._flushing.discard(task)
            self._wake.set()
        if self._on_batch is not None:
            self._on_batch(len(batch), loop.time() - started)
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _forget_accounts(self) -> None:
        self._earnings.clear()
        self._platform = None

    async def _accounts(self, conn: Any, creators: set[uuid.UUID]
                        ) -> tuple[int, dict[uuid.UUID, int]]:
        """The platform account's id and the creators' earnings account ids, creating the
        missing earnings accounts (ids are cached).

        Outside the batch's transaction: a new account row is committed at once, so no batch
        holds its locks while it waits for another's new account row.
        """
        platform = self._platform
        if platform is None:
            platform = self._platform = int(await conn.fetchval(
                "SELECT id FROM ledger_accounts WHERE kind = 'platform'"))
        if len(self._earnings) + len(creators) > MAX_CACHED_ACCOUNTS:
            self._earnings.clear()
        missing = [c for c in creators if c not in self._earnings]
        if missing:
            made = await conn.fetch(
                """
                INSERT INTO ledger_accounts (kind, owner_id)
                SELECT 'earnings', unnest($1::uuid[])
                ON CONFLICT (kind, owner_id) DO NOTHING
                RETURNING id, owner_id
                """,
                missing,
            )
            # The others existed, or another transaction created them while this insert
            # waited for it: a new statement (a new snapshot) sees them.
            found = await conn.fetch(
                "SELECT id, owner_id FROM ledger_accounts"
                " WHERE kind = 'earnings' AND owner_id = ANY($1::uuid[])",
                missing,
            ) if len(made) < len(missing) else []
            for row in [*made, *found]:
                self._earnings[row["owner_id"]] = row["id"]
        return platform, {c: self._earnings[c] for c in creators}

    async def _commit(self, orders: list[GiftOrder]) -> list[GiftOutcome | LivecoreError]:
        now = self._clock()
        async with self._pool.acquire() as conn:
            platform, earnings = await self._accounts(conn, {o.creator_id for o in orders})
            transaction = conn.transaction()
            await transaction.start()
            try:
                stored = {
                    row["id"]: row for row in await conn.fetch(
                        f"SELECT {_GIFT_COLUMNS} FROM gifts WHERE id = ANY($1::uuid[])",
                        [o.gift_id for o in orders])
                }
                fresh: list[GiftOrder] = []
                seen: set[uuid.UUID] = set()
                for order in orders:
                    if order.gift_id not in stored and order.gift_id not in seen:
                        seen.add(order.gift_id)
                        fresh.append(order)
                states = await self._stream_states(conn, fresh)
                closed = {o.gift_id for o in fresh if states.get(o.stream_id) != "live"}
                fresh = [o for o in fresh if o.gift_id not in closed]
                accepted, refused, wallets = await self._fund(conn, fresh)
                claimed: set[uuid.UUID] = set()
                debtors: set[uuid.UUID] = set()
                if accepted:
                    claimed, debtors = await self._post(conn, accepted, wallets, earnings,
                                                        platform, now)
            except BaseException:
                # Keep the original error; a broken connection is reset by the pool anyway.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            if claimed:
                await transaction.commit()
            else:  # nothing to write: only locks were taken
                await transaction.rollback()
        outcomes: dict[uuid.UUID, GiftOutcome] = {}
        for order in accepted:
            if order.gift_id in claimed:
                outcomes[order.gift_id] = GiftOutcome(order, now, True)
        indebted = {o.gift_id for o in accepted if o.sender_id in debtors}
        if refused:  # for want of coins, or (more to the point) because the sender owes?
            owing = await self._owing({o.sender_id for o in fresh if o.gift_id in refused})
            indebted |= {o.gift_id for o in fresh if o.gift_id in refused and o.sender_id in owing}
            refused -= indebted
        unresolved = ({o.gift_id for o in orders} - set(outcomes) - set(stored) - refused
                      - closed - indebted)
        if unresolved:  # claimed by another batch meanwhile: read what it stored
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
            elif order.gift_id in indebted:
                results.append(WalletInDebt(
                    "You owe coins after a refund or chargeback; buy coins to settle it "
                    "before sending gifts. Nothing was spent.", gift_id=str(order.gift_id)))
            elif order.gift_id in closed:
                results.append(StreamNotLive(
                    "Gifts go to live streams only.",
                    state=states.get(order.stream_id, "missing"), gift_id=str(order.gift_id)))
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
    async def _stream_states(conn: Any, orders: list[GiftOrder]) -> dict[uuid.UUID, str]:
        """The state of the orders' streams, share-locked until COMMIT: a stream cannot end
        (``UPDATE streams SET state``) while a batch that found it live is committing, so a
        gift is in the ledger only if its stream was live when it was committed."""
        if not orders:
            return {}
        rows = await conn.fetch(
            "SELECT id, state FROM streams WHERE id = ANY($1::uuid[]) ORDER BY id FOR SHARE",
            list({o.stream_id for o in orders}),
        )
        return {row["id"]: row["state"] for row in rows}

    @staticmethod
    async def _fund(conn: Any, orders: list[GiftOrder]
                    ) -> tuple[list[GiftOrder], set[uuid.UUID], dict[uuid.UUID, int]]:
        """Lock the senders' wallets and decide, in arrival order, which gifts they afford.

        Returns the accepted orders, the refused ids and each sender's wallet account id.
        """
        if not orders:
            return [], set(), {}
        senders = sorted({o.sender_id for o in orders})
        rows = await conn.fetch(
            """
            SELECT id, owner_id, balance FROM ledger_accounts
            WHERE kind = 'wallet' AND owner_id = ANY($1::uuid[])
            ORDER BY id FOR NO KEY UPDATE
            """,
            senders,
        )
        balance = {row["owner_id"]: row["balance"] for row in rows}
        wallets = {row["owner_id"]: row["id"] for row in rows}
        accepted, refused = [], set()
        for order in orders:
            available = balance.get(order.sender_id, 0)
            if available >= order.price:
                balance[order.sender_id] = available - order.price
                accepted.append(order)
            else:
                refused.add(order.gift_id)
        return accepted, refused, wallets

    async def _owing(self, senders: set[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``senders`` owe coins (read after their batch: only to word a refusal)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT owner_id FROM ledger_accounts WHERE kind = 'debt'"
                " AND owner_id = ANY($1::uuid[]) AND balance < 0", list(senders))
        return {row["owner_id"] for row in rows}

    @staticmethod
    async def _post(conn: Any, orders: list[GiftOrder], wallets: dict[uuid.UUID, int],
                    earnings: dict[uuid.UUID, int], platform: int,
                    now: dt.datetime) -> tuple[set[uuid.UUID], set[uuid.UUID]]:
        """Claim the gifts and post the batch; (the claimed ids, the senders who owe coins)."""
        transfer_id = uuid.uuid4()
        claims = sorted(orders, key=lambda o: o.gift_id.int)  # one global claim order
        # Senders who owe coins (a refund or lost dispute took back coins they had spent)
        # give nothing until it is paid: their gifts are not claimed. This statement starts
        # after the wallets were locked, so its snapshot sees a reversal that committed while
        # the batch waited for a wallet (a reversal holds the wallet's lock until it
        # commits), and the check costs no round trip of its own.
        claimed_rows = await conn.fetch(
            """
            WITH transfer AS (
                INSERT INTO ledger_transfers (id, kind, created_at)
                VALUES ($10::uuid, 'gift_batch', $11::timestamptz)
            ),
            debtors AS (
                SELECT owner_id FROM ledger_accounts
                WHERE kind = 'debt' AND balance < 0 AND owner_id = ANY($2::uuid[])
            ),
            claimed AS (
                INSERT INTO gifts (id, sender_id, stream_id, creator_id, gift_slug, quantity,
                                   price, creator_share, platform_cut, transfer_id, created_at)
                SELECT g.*, $10::uuid, $11::timestamptz
                FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                            $6::int[], $7::bigint[], $8::bigint[], $9::bigint[])
                     AS g (id, sender_id, stream_id, creator_id, gift_slug, quantity, price,
                           creator_share, platform_cut)
                WHERE g.sender_id NOT IN (SELECT owner_id FROM debtors)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            )
            SELECT id, false AS debtor FROM claimed
            UNION ALL SELECT owner_id, true FROM debtors
            """,
            [o.gift_id for o in claims], [o.sender_id for o in claims],
            [o.stream_id for o in claims], [o.creator_id for o in claims],
            [o.gift_slug for o in claims], [o.quantity for o in claims],
            [o.price for o in claims], [o.creator_share for o in claims],
            [o.platform_cut for o in claims], transfer_id, now,
        )
        claimed = {row["id"] for row in claimed_rows if not row["debtor"]}
        debtors = {row["id"] for row in claimed_rows if row["debtor"]}
        posted = [o for o in orders if o.gift_id in claimed]
        if not posted:
            return claimed, debtors
        debits: dict[int, int] = {}
        credits: dict[int, int] = {}
        cut = 0
        for order in posted:
            wallet = wallets[order.sender_id]
            debits[wallet] = debits.get(wallet, 0) + order.price
            if order.creator_share:
                account = earnings[order.creator_id]
                credits[account] = credits.get(account, 0) + order.creator_share
            cut += order.platform_cut
        if cut:
            credits[platform] = cut
        entry_accounts = [wallets[o.sender_id] for o in posted]
        entry_amounts = [-o.price for o in posted]
        entry_gifts: list[uuid.UUID | None] = [o.gift_id for o in posted]
        for account, amount in credits.items():
            entry_accounts.append(account)
            entry_amounts.append(amount)
            entry_gifts.append(None)
        debited = sorted(debits)
        # The entries and the debits of the (already locked) wallets: one statement.
        await conn.execute(
            """
            WITH debit AS (
                UPDATE ledger_accounts a SET balance = a.balance - d.amount
                FROM unnest($5::bigint[], $6::bigint[]) AS d(id, amount)
                WHERE a.id = d.id
            )
            INSERT INTO ledger_entries (transfer_id, account_id, amount, gift_id)
            SELECT $1, e.account, e.amount, e.gift
            FROM unnest($2::bigint[], $3::bigint[], $4::uuid[]) AS e(account, amount, gift)
            """,
            transfer_id, entry_accounts, entry_amounts, entry_gifts,
            debited, [debits[i] for i in debited],
        )
        credited = sorted(credits)
        await conn.execute(
            "SELECT id FROM ledger_accounts WHERE id = ANY($1::bigint[])"
            " ORDER BY id FOR NO KEY UPDATE",
            credited,
        )
        await conn.execute(
            """
            UPDATE ledger_accounts a SET balance = a.balance + c.amount
            FROM unnest($1::bigint[], $2::bigint[]) AS c(id, amount)
            WHERE a.id = c.id
            """,
            credited, [credits[i] for i in credited],
        )
        return claimed, debtors


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
