"""Creator payouts, two-phase in the ledger (docs/payments.md, "Creator payouts").

1. reserve: the payout row and the transfer earnings -> payouts_pending, in one transaction;
2. the provider's Connect transfer, with the payout id as idempotency key and transfer group;
3. post (payouts_pending -> payouts_paid) on success, void (back to earnings) on refusal.

An unknown outcome (timeout, 5xx, crash) leaves the payout pending; :meth:`Payouts.retry_stuck`
(the worker) first looks for a transfer of its group, else calls again with the same key, and
then posts or voids. Posting and voiding lock the payout row and do nothing to one that is no
longer pending, so two resolutions at once still move the money once.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from ledger import postings
from ledger.idempotency import KeyedLocks
from ledger.providers import PaymentProvider, ProviderRefused, ProviderUnavailable
from livecore.errors import Conflict, NotFound
from livecore.payments import check_payout, diamonds_to_minor
from livecore.settings import Settings
from livecore.times import iso_time

log = logging.getLogger(__name__)

EARNINGS_DAYS = 90
RETRY_BATCH = 100


@dataclass(frozen=True)
class Payout:
    id: uuid.UUID
    creator_id: uuid.UUID
    diamonds: int
    amount_minor: int
    currency: str
    destination: str
    provider: str
    status: str
    transfer_id: str | None
    failure: str | None
    attempts: int
    created_at: dt.datetime
    attempted_at: dt.datetime | None
    resolved_at: dt.datetime | None

    @classmethod
    def from_row(cls, row: Any) -> Payout:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def json(self) -> dict[str, Any]:
        return {"payout_id": str(self.id), "status": self.status, "diamonds": self.diamonds,
                "amount_minor": self.amount_minor, "currency": self.currency,
                "destination": self.destination, "transfer_id": self.transfer_id,
                "failure": self.failure, "attempts": self.attempts,
                "created_at": iso_time(self.created_at), "resolved_at": iso_time(self.resolved_at)}


class Payouts:
    def __init__(self, pool: Any, provider: PaymentProvider, settings: Settings,
                 clock: Callable[[], dt.datetime]) -> None:
        self.pool = pool
        self.provider = provider
        self.settings = settings
        self.clock = clock
        self._requests = KeyedLocks()

    @property
    def currency(self) -> str:
        return self.settings.payout_currency.lower()

    async def get(self, payout_id: uuid.UUID) -> Payout:
        row = await self.pool.fetchrow("SELECT * FROM payouts WHERE id = $1", payout_id)
        if row is None:
            raise NotFound("No such payout.", code="payout_not_found")
        return Payout.from_row(row)

    async def of_creator(self, creator_id: uuid.UUID, *, limit: int = 50) -> list[Payout]:
        rows = await self.pool.fetch(
            "SELECT * FROM payouts WHERE creator_id = $1 ORDER BY created_at DESC, id DESC"
            " LIMIT $2", creator_id, limit)
        return [Payout.from_row(r) for r in rows]

    async def account(self, creator_id: uuid.UUID) -> str | None:
        value = await self.pool.fetchval(
            "SELECT stripe_account_id FROM payout_accounts WHERE creator_id = $1", creator_id)
        return None if value is None else str(value)

    async def set_account(self, creator_id: uuid.UUID, stripe_account_id: str) -> str:
        await self.pool.execute(
            "INSERT INTO payout_accounts (creator_id, stripe_account_id, updated_at)"
            " VALUES ($1, $2, $3) ON CONFLICT (creator_id) DO UPDATE"
            " SET stripe_account_id = EXCLUDED.stripe_account_id,"
            " updated_at = EXCLUDED.updated_at", creator_id, stripe_account_id, self.clock())
        return stripe_account_id

    async def earnings(self, creator_id: uuid.UUID) -> dict[str, Any]:
        """Available, pending and paid-out diamonds (and their money), and diamonds earned
        per day over the last :data:`EARNINGS_DAYS` days (UTC)."""
        now = self.clock()
        async with self.pool.acquire() as conn:
            available = await conn.fetchval(
                "SELECT balance FROM ledger_accounts WHERE kind = 'earnings'"
                " AND owner_id = $1", creator_id) or 0
            sums = await conn.fetchrow(
                "SELECT coalesce(sum(diamonds) FILTER (WHERE status = 'pending'), 0) AS pending,"
                " coalesce(sum(diamonds) FILTER (WHERE status = 'paid'), 0) AS paid"
                " FROM payouts WHERE creator_id = $1", creator_id)
            days = await conn.fetch(
                "SELECT (created_at AT TIME ZONE 'UTC')::date AS day,"
                " sum(creator_share) AS diamonds FROM gifts"
                " WHERE creator_id = $1 AND created_at >= $2 GROUP BY 1 ORDER BY 1",
                creator_id, now - dt.timedelta(days=EARNINGS_DAYS))
        rate = self.settings.payout_minor_per_100_diamonds
        pending, paid = int(sums["pending"]), int(sums["paid"])
        available = int(available)
        return {
            "available_diamonds": available, "pending_diamonds": pending,
            "paid_diamonds": paid, "earned_diamonds": available + pending + paid,
            "currency": self.currency, "minor_per_100_diamonds": rate,
            "available_minor": diamonds_to_minor(available, rate),
            "pending_minor": diamonds_to_minor(pending, rate),
            "paid_minor": diamonds_to_minor(paid, rate),
            "min_payout_diamonds": self.settings.payout_min_diamonds,
            "payout_account": await self.account(creator_id),
            "test_mode": self.provider.test_mode,
            "daily": [{"day": d["day"].isoformat(), "diamonds": int(d["diamonds"])}
                      for d in days],
        }

    async def request(self, creator_id: uuid.UUID, payout_id: uuid.UUID,
                      diamonds: int) -> tuple[Payout, bool]:
        """Reserve, call the provider, post or void. A retry with the same id and amount
        returns the payout as it stands; returns (payout, is_new).

        Duplicates at once get what a retry gets: in this process they wait for the first
        (so they see it resolved, as a retry would); across processes the stored row is read
        again after the creator's earnings are locked (the first has committed by then), and
        a primary-key clash left over is replayed, never a 500."""
        async with self._requests.hold(payout_id):
            try:
                payout = await self._reserve(creator_id, payout_id, diamonds)
            except asyncpg.UniqueViolationError:  # the same id, reserved by another creator
                payout = self._replay(await self.get(payout_id), creator_id, diamonds)
            if payout is not None:
                return payout, False
            await self.attempt(payout_id)
            return await self.get(payout_id), True

    @staticmethod
    def _replay(payout: Payout, creator_id: uuid.UUID, diamonds: int) -> Payout:
        if (payout.creator_id, payout.diamonds) != (creator_id, diamonds):
            raise Conflict("This payout id was already used for another payout.",
                           code="payout_id_conflict")
        return payout

    async def _reserve(self, creator_id: uuid.UUID, payout_id: uuid.UUID,
                       diamonds: int) -> Payout | None:
        """Write the payout and move its diamonds to pending; the stored payout instead if
        the id is taken (checked before anything that can change, and again under the
        lock)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM payouts WHERE id = $1", payout_id)
            if row is not None:
                return self._replay(Payout.from_row(row), creator_id, diamonds)
            destination = await conn.fetchval(
                "SELECT stripe_account_id FROM payout_accounts WHERE creator_id = $1",
                creator_id)
            if destination is None:
                raise Conflict("Add your Stripe account (acct_...) before asking for a payout.",
                               code="no_payout_account")
            system = await postings.system_accounts(conn)
            earnings = await postings.user_account(conn, "earnings", creator_id)
            balances = await postings.lock(conn, [system["payouts_pending"], earnings])
            # A duplicate that committed while this one waited for the lock is visible now
            # (a new statement, a new snapshot): its outcome, not a refusal for want of the
            # diamonds it took.
            row = await conn.fetchrow("SELECT * FROM payouts WHERE id = $1", payout_id)
            if row is not None:
                return self._replay(Payout.from_row(row), creator_id, diamonds)
            amount = check_payout(diamonds=diamonds,
                                  minimum=self.settings.payout_min_diamonds,
                                  available=balances[earnings],
                                  minor_per_100_diamonds=self.settings
                                  .payout_minor_per_100_diamonds)
            await conn.execute(
                "INSERT INTO payouts (id, creator_id, diamonds, amount_minor, currency,"
                " destination, provider, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                payout_id, creator_id, diamonds, amount, self.currency, destination,
                self.provider.name, now)
            await postings.write(conn, transfer_id=payout_id, kind="payout_reserve",
                                 payout_id=payout_id, now=now,
                                 legs={earnings: -diamonds, system["payouts_pending"]: diamonds})
        return None

    async def attempt(self, payout_id: uuid.UUID) -> str:
        """Ask the provider for a pending payout's transfer and resolve it; the payout's
        status afterwards (still 'pending' when the outcome is unknown)."""
        row = await self.pool.fetchrow(
            "UPDATE payouts SET attempts = attempts + 1, attempted_at = $2"
            " WHERE id = $1 AND status = 'pending' RETURNING *", payout_id, self.clock())
        if row is None:
            return (await self.get(payout_id)).status
        payout = Payout.from_row(row)
        try:
            transfer_id = None
            if payout.attempts > 1:  # an earlier try may have made it
                transfer_id = await self.provider.find_transfer(payout_id=payout.id)
            if transfer_id is None:
                transfer_id = await self.provider.transfer(
                    payout_id=payout.id, amount_minor=payout.amount_minor,
                    currency=payout.currency, destination=payout.destination)
        except ProviderRefused as exc:
            log.warning("payout refused by the provider", extra={
                "payout_id": str(payout.id), "error": str(exc)})
            return await self.resolve(payout.id, transfer_id=None, failure=str(exc))
        except ProviderUnavailable as exc:
            log.warning("payout outcome unknown; the worker will retry", extra={
                "payout_id": str(payout.id), "error": str(exc)})
            return "pending"
        return await self.resolve(payout.id, transfer_id=transfer_id, failure=None)

    async def resolve(self, payout_id: uuid.UUID, *, transfer_id: str | None,
                      failure: str | None) -> str:
        """Post (with the transfer id) or void (with the failure) a pending payout, once."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM payouts WHERE id = $1 FOR UPDATE",
                                      payout_id)
            if row is None:
                raise NotFound("No such payout.", code="payout_not_found")
            if row["status"] != "pending":
                return str(row["status"])
            system = await postings.system_accounts(conn)
            diamonds = row["diamonds"]
            if transfer_id is not None:
                await postings.lock(conn, [system["payouts_pending"], system["payouts_paid"]])
                await postings.write(
                    conn, transfer_id=uuid.uuid4(), kind="payout_post", payout_id=payout_id,
                    now=now, memo=transfer_id,
                    legs={system["payouts_pending"]: -diamonds,
                          system["payouts_paid"]: diamonds})
                status = "paid"
            else:
                earnings = await postings.user_account(conn, "earnings", row["creator_id"])
                await postings.lock(conn, [system["payouts_pending"], earnings])
                await postings.write(
                    conn, transfer_id=uuid.uuid4(), kind="payout_void", payout_id=payout_id,
                    now=now, memo=(failure or "")[:500],
                    legs={system["payouts_pending"]: -diamonds, earnings: diamonds})
                status = "failed"
            await conn.execute(
                "UPDATE payouts SET status = $2, transfer_id = $3, failure = $4,"
                " resolved_at = $5 WHERE id = $1",
                payout_id, status, transfer_id, None if failure is None else failure[:500], now)
        log.info("payout resolved", extra={"payout_id": str(payout_id), "status": status})
        return status

    async def retry_stuck(self) -> dict[str, int]:
        """Resolve the payouts pending for longer than ``LIVECORE_PAYOUT_STUCK_AFTER_S``
        (oldest first, at most :data:`RETRY_BATCH` per call); counts by outcome."""
        cutoff = self.clock() - dt.timedelta(seconds=self.settings.payout_stuck_after_s)
        rows = await self.pool.fetch(
            "SELECT id FROM payouts WHERE status = 'pending'"
            " AND coalesce(attempted_at, created_at) < $1 ORDER BY created_at LIMIT $2",
            cutoff, RETRY_BATCH)
        counts = {"paid": 0, "failed": 0, "pending": 0}
        for row in rows:
            counts[await self.attempt(row["id"])] += 1
        if rows:
            log.info("stuck payouts retried", extra=counts)
        return counts
