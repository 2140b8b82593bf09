"""Coin purchases: packages, purchases, provider events (webhooks), refunds, disputes, debt.

The rules are in :mod:`livecore.payments`; this module applies them in PostgreSQL
transactions. A purchase is written before the provider is called; coins are credited only
by :meth:`Purchases.handle_event`, from a verified event (a Stripe webhook, or the
test-payments page's event built by :func:`livecore.payments.simulated_event`). See
docs/payments.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from ledger import postings
from ledger.providers import PaymentProvider, ProviderRefused, ProviderUnavailable
from livecore.accounts import Account, is_adult
from livecore.errors import Conflict, Forbidden, NotFound, ServiceUnavailable, ValidationFailed
from livecore.payments import (
    DISPUTE_RANK,
    PENDING_COUNTS_FOR,
    SPEND_WINDOW,
    CoinPackage,
    OwnLimit,
    PaymentEvent,
    Spend,
    change_own_cap,
    check_cooldown,
    check_spending,
    coins_to_reverse,
    interpret,
    simulated_event,
    split_credit,
    split_debit,
)
from livecore.settings import Settings
from livecore.times import iso_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purchase:
    id: uuid.UUID
    user_id: uuid.UUID
    package_slug: str
    coins: int
    amount_minor: int
    currency: str
    method: str
    provider: str
    status: str
    payment_intent_id: str | None
    checkout_id: str | None
    client_secret: str | None
    checkout_url: str | None
    refunded_minor: int
    dispute_id: str | None
    dispute_status: str | None
    dispute_minor: int
    coins_reversed: int
    failure: str | None
    created_at: dt.datetime
    paid_at: dt.datetime | None
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Any) -> Purchase:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def shown_status(self) -> str:
        """pending, paid, failed, or what was taken back: refunded, partially_refunded,
        disputed (open or lost)."""
        if self.status != "paid":
            return self.status
        if self.dispute_status in ("open", "lost"):
            return "disputed"
        if self.refunded_minor >= self.amount_minor:
            return "refunded"
        if self.refunded_minor > 0:
            return "partially_refunded"
        return "paid"

    def json(self) -> dict[str, Any]:
        """What its buyer sees (the client secret and checkout URL while it is pending)."""
        pending = self.status == "pending"
        return {
            "purchase_id": str(self.id), "status": self.shown_status,
            "package": self.package_slug, "coins": self.coins,
            "coins_reversed": self.coins_reversed, "amount_minor": self.amount_minor,
            "currency": self.currency, "method": self.method,
            "client_secret": self.client_secret if pending else None,
            "checkout_url": self.checkout_url if pending else None,
            "test_mode": self.provider == "test", "created_at": iso_time(self.created_at),
            "paid_at": iso_time(self.paid_at), "refunded_minor": self.refunded_minor,
            "dispute_status": self.dispute_status, "failure": self.failure,
        }


def _package(row: Any) -> CoinPackage:
    return CoinPackage(row["slug"], row["coins"], row["price_minor"], row["currency"],
                       row["is_active"])


class Purchases:
    def __init__(self, pool: Any, provider: PaymentProvider, settings: Settings,
                 clock: Callable[[], dt.datetime]) -> None:
        self.pool = pool
        self.provider = provider
        self.settings = settings
        self.clock = clock

    # -- packages ------------------------------------------------------------------------

    async def packages(self, *, active_only: bool = True) -> list[CoinPackage]:
        rows = await self.pool.fetch(
            "SELECT * FROM coin_packages WHERE is_active OR NOT $1"
            " ORDER BY price_minor, slug", active_only)
        return [_package(r) for r in rows]

    async def save_package(self, package: CoinPackage) -> CoinPackage:
        row = await self.pool.fetchrow(
            """
            INSERT INTO coin_packages (slug, coins, price_minor, currency, is_active, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (slug) DO UPDATE SET coins = EXCLUDED.coins,
                price_minor = EXCLUDED.price_minor, currency = EXCLUDED.currency,
                is_active = EXCLUDED.is_active, updated_at = EXCLUDED.updated_at
            RETURNING *
            """,
            package.slug, package.coins, package.price_minor, package.currency,
            package.is_active, self.clock())
        return _package(row)

    # -- purchases -----------------------------------------------------------------------

    async def get(self, purchase_id: uuid.UUID) -> Purchase:
        row = await self.pool.fetchrow("SELECT * FROM purchases WHERE id = $1", purchase_id)
        if row is None:
            raise NotFound("No such purchase.", code="purchase_not_found")
        return Purchase.from_row(row)

    async def of_user(self, user_id: uuid.UUID, *, limit: int = 50) -> list[Purchase]:
        rows = await self.pool.fetch(
            "SELECT * FROM purchases WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
            " LIMIT $2", user_id, limit)
        return [Purchase.from_row(r) for r in rows]

    async def create(self, user: Account, *, purchase_id: uuid.UUID, slug: str, method: str,
                     success_url: str, cancel_url: str) -> tuple[Purchase, bool]:
        """Write the purchase (after the age, cap and cool-down checks), then ask the provider
        for its PaymentIntent or Checkout Session. A retry with the same id and request
        returns the same purchase (and finishes the provider call if an earlier try could
        not); the same id for another request is a conflict. Returns (purchase, is_new)."""
        now = self.clock()
        if not is_adult(user.birthdate, now.date()):
            raise Forbidden("Buying coins needs an adult account (18+).", code="not_adult")
        async with self.pool.acquire() as conn, conn.transaction():
            # One purchase decision at a time per viewer, so two at once cannot both pass
            # the cap.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
                               f"purchase:{user.id}")
            row = await conn.fetchrow("SELECT * FROM purchases WHERE id = $1", purchase_id)
            if row is not None:
                purchase = Purchase.from_row(row)
                if (purchase.user_id, purchase.package_slug, purchase.method) != (
                        user.id, slug, method):
                    raise Conflict("This purchase id was already used for another purchase.",
                                   code="purchase_id_conflict")
                is_new = False
            else:
                purchase = await self._insert(conn, user, purchase_id, slug, method, now)
                is_new = True
        if purchase.status == "pending" and purchase.payment_intent_id is None and (
                purchase.checkout_id is None):
            purchase = await self._call_provider(purchase, success_url, cancel_url)
        return purchase, is_new

    async def _insert(self, conn: Any, user: Account, purchase_id: uuid.UUID, slug: str,
                      method: str, now: dt.datetime) -> Purchase:
        row = await conn.fetchrow(
            "SELECT * FROM coin_packages WHERE slug = $1 AND is_active", slug)
        if row is None:
            raise NotFound(f"No coin package named {slug!r} is on sale.",
                           code="unknown_package")
        package = _package(row)
        recent = await conn.fetch(
            "SELECT created_at, amount_minor, status FROM purchases"
            " WHERE user_id = $1 AND created_at > $2", user.id, now - SPEND_WINDOW)
        check_cooldown(recent=[r["created_at"] for r in recent],
                       max_purchases=self.settings.spend_burst_purchases,
                       window_s=self.settings.spend_burst_window_s, now=now)
        limit = await self._own_limit(conn, user.id, now)
        check_spending(
            cap_minor=limit.cap(self.settings.daily_spend_cap_minor),
            spent=[Spend(r["created_at"], r["amount_minor"]) for r in recent
                   if r["status"] == "paid" or (
                       r["status"] == "pending" and r["created_at"] > now - PENDING_COUNTS_FOR)],
            amount_minor=package.price_minor, now=now, currency=package.currency)
        inserted = await conn.fetchrow(
            """
            INSERT INTO purchases (id, user_id, package_slug, coins, amount_minor, currency,
                                   method, provider, created_at, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING *
            """,
            purchase_id, user.id, package.slug, package.coins, package.price_minor,
            package.currency, method, self.provider.name, now)
        return Purchase.from_row(inserted)

    async def _call_provider(self, purchase: Purchase, success_url: str,
                             cancel_url: str) -> Purchase:
        description = f"{purchase.coins} coins"
        try:
            if purchase.method == "payment_intent":
                made = await self.provider.create_payment_intent(
                    purchase_id=purchase.id, amount_minor=purchase.amount_minor,
                    currency=purchase.currency, description=description)
                row = await self.pool.fetchrow(
                    "UPDATE purchases SET payment_intent_id = $2, client_secret = $3,"
                    " updated_at = $4 WHERE id = $1 RETURNING *",
                    purchase.id, made.id, made.client_secret, self.clock())
            else:
                made = await self.provider.create_checkout(
                    purchase_id=purchase.id, amount_minor=purchase.amount_minor,
                    currency=purchase.currency, description=description,
                    success_url=success_url, cancel_url=cancel_url)
                row = await self.pool.fetchrow(
                    "UPDATE purchases SET checkout_id = $2, checkout_url = $3, updated_at = $4"
                    " WHERE id = $1 RETURNING *",
                    purchase.id, made.id, made.url, self.clock())
        except ProviderUnavailable as exc:
            log.warning("payment provider unavailable", extra={
                "purchase_id": str(purchase.id), "error": str(exc)})
            raise ServiceUnavailable(
                "The payment provider did not answer; retry with the same purchase_id.",
                code="payment_provider_unavailable") from exc
        except ProviderRefused as exc:
            await self.pool.execute(
                "UPDATE purchases SET status = 'failed', failure = $2, updated_at = $3"
                " WHERE id = $1 AND status = 'pending'", purchase.id, str(exc)[:500],
                self.clock())
            raise ValidationFailed(f"The payment provider refused: {exc}",
                                   code="payment_refused") from exc
        return Purchase.from_row(row)

    # -- events ----------------------------------------------------------------------------

    async def handle_event(self, event: dict[str, Any]) -> str:
        """Apply a verified provider event, once: 'applied', 'duplicate' (its id was seen),
        'ignored' (a type that moves nothing) or 'unmatched' (no purchase of ours yet; kept,
        and applied when its payment is linked to a purchase)."""
        info = interpret(event)
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            row = None
            if info.kind != "ignored":
                row = await self._find(conn, info)
            stored = await conn.fetchval(
                "INSERT INTO provider_events (id, type, purchase_id, payment_intent_id,"
                " payload, received_at) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                event["id"], str(event.get("type")), None if row is None else row["id"],
                info.payment_intent_id, orjson.dumps(event).decode(), now)
            if stored is None:
                return "duplicate"
            if info.kind == "ignored":
                return "ignored"
            if row is None:
                log.warning("provider event for no known purchase", extra={
                    "event_id": event["id"], "type": event.get("type"),
                    "payment_intent_id": info.payment_intent_id})
                return "unmatched"
            purchase = Purchase.from_row(row)
            updated = self._apply(purchase, info, now)
            if updated.payment_intent_id and not purchase.payment_intent_id:
                updated = await self._adopt_orphans(conn, updated, now)
            await self._settle(conn, purchase, updated, now)
        return "applied"

    @staticmethod
    async def _find(conn: Any, info: PaymentEvent) -> Any:
        """The event's purchase, locked until COMMIT (so events about one purchase apply one
        at a time, whatever order they come in)."""
        for column, value in (("id", info.purchase_id),
                              ("payment_intent_id", info.payment_intent_id),
                              ("checkout_id", info.checkout_id)):
            if value is not None:
                row = await conn.fetchrow(
                    f"SELECT * FROM purchases WHERE {column} = $1 FOR UPDATE", value)
                if row is not None:
                    return row
        return None

    def _apply(self, purchase: Purchase, info: PaymentEvent, now: dt.datetime) -> Purchase:
        """The purchase's state after the event (pure)."""
        changes: dict[str, Any] = {}
        if info.payment_intent_id and not purchase.payment_intent_id:
            changes["payment_intent_id"] = info.payment_intent_id
        if info.checkout_id and not purchase.checkout_id:
            changes["checkout_id"] = info.checkout_id
        if info.kind == "paid" and purchase.status != "paid":
            if (info.amount_minor, info.currency) != (purchase.amount_minor,
                                                      purchase.currency):
                # Never ours to credit: the provider says another sum was paid, or does not
                # say what was paid (every paid event of Stripe's carries its amount and
                # currency; one without them proves no payment of this purchase).
                log.error("paid event's amount differs from the purchase", extra={
                    "purchase_id": str(purchase.id), "paid": info.amount_minor,
                    "currency": info.currency, "expected": purchase.amount_minor})
                return replace(purchase, **changes) if changes else purchase
            changes.update(status="paid", paid_at=now, failure=None)
        elif info.kind == "failed" and purchase.status == "pending":
            changes.update(status="failed", failure=info.failure)
        elif info.kind == "refund":
            changes["refunded_minor"] = max(purchase.refunded_minor, info.refunded_minor)
        elif info.kind == "dispute":
            same = info.dispute_id == purchase.dispute_id
            newer = (DISPUTE_RANK[info.dispute_status] > DISPUTE_RANK[purchase.dispute_status]
                     if same else purchase.dispute_status in (None, "won", "lost"))
            if newer:
                changes.update(dispute_id=info.dispute_id, dispute_status=info.dispute_status,
                               dispute_minor=info.dispute_minor)
        return replace(purchase, **changes) if changes else purchase

    async def _adopt_orphans(self, conn: Any, purchase: Purchase, now: dt.datetime) -> Purchase:
        """Events about this purchase's payment that came before we knew it was ours."""
        rows = await conn.fetch(
            "SELECT id, payload FROM provider_events WHERE payment_intent_id = $1"
            " AND purchase_id IS NULL ORDER BY received_at", purchase.payment_intent_id)
        for row in rows:
            purchase = self._apply(purchase, interpret(orjson.loads(row["payload"])), now)
        if rows:
            await conn.execute("UPDATE provider_events SET purchase_id = $1"
                               " WHERE id = ANY($2::text[])", purchase.id,
                               [r["id"] for r in rows])
        return purchase

    async def _settle(self, conn: Any, before: Purchase, after: Purchase,
                      now: dt.datetime) -> None:
        """Post what the new state asks of the ledger (the credit, a reversal or a
        reinstatement) and save the state."""
        target = 0
        if after.status == "paid":
            target = coins_to_reverse(coins=after.coins, amount_minor=after.amount_minor,
                                      refunded_minor=after.refunded_minor,
                                      dispute_status=after.dispute_status,
                                      dispute_minor=after.dispute_minor)
        credit = after.status == "paid" and before.status != "paid"
        delta = target - after.coins_reversed
        if credit or delta:
            system = await postings.system_accounts(conn)
            wallet = await postings.user_account(conn, "wallet", after.user_id)
            debt = await postings.user_account(conn, "debt", after.user_id)
            balances = await postings.lock(conn, [system["sales"], wallet, debt])
            if credit:
                await self._give(conn, after.id, "purchase", after.coins, system["sales"],
                                 wallet, debt, balances, now)
            if delta > 0:
                taken_wallet, taken_debt = split_debit(delta, balances[wallet])
                await postings.write(
                    conn, transfer_id=uuid.uuid4(), kind="reversal", now=now,
                    purchase_id=after.id, memo=self._why(after),
                    legs={system["sales"]: delta, wallet: -taken_wallet, debt: -taken_debt})
            elif delta < 0:
                await self._give(conn, uuid.uuid4(), "reinstatement", -delta, system["sales"],
                                 wallet, debt, balances, now, purchase_id=after.id)
            after = replace(after, coins_reversed=target)
        await conn.execute(
            """
            UPDATE purchases SET status = $2, paid_at = $3, failure = $4,
                payment_intent_id = $5, checkout_id = $6, refunded_minor = $7,
                dispute_id = $8, dispute_status = $9, dispute_minor = $10,
                coins_reversed = $11, updated_at = $12
            WHERE id = $1
            """,
            after.id, after.status, after.paid_at, after.failure, after.payment_intent_id,
            after.checkout_id, after.refunded_minor, after.dispute_id, after.dispute_status,
            after.dispute_minor, after.coins_reversed, now)

    @staticmethod
    async def _give(conn: Any, transfer_id: uuid.UUID, kind: str, coins: int, sales: int,
                    wallet: int, debt: int, balances: dict[int, int], now: dt.datetime,
                    purchase_id: uuid.UUID | None = None) -> None:
        """Coins to a viewer from sales: what they owe is paid first."""
        to_debt, to_wallet = split_credit(coins, -balances[debt])
        await postings.write(conn, transfer_id=transfer_id, kind=kind, now=now,
                             purchase_id=purchase_id or transfer_id,
                             legs={sales: -coins, debt: to_debt, wallet: to_wallet})
        balances[debt] += to_debt
        balances[wallet] += to_wallet

    @staticmethod
    def _why(purchase: Purchase) -> str:
        parts = []
        if purchase.refunded_minor:
            parts.append(f"refunded {purchase.refunded_minor} {purchase.currency}")
        if purchase.dispute_status:
            parts.append(f"dispute {purchase.dispute_id} {purchase.dispute_status}")
        return "; ".join(parts)

    # -- the test-payments mode ------------------------------------------------------------

    async def complete_test_payment(self, user: Account, purchase_id: uuid.UUID,
                                    paid: bool) -> Purchase:
        """The local checkout page's "Pay" or "Decline": the event Stripe would send, through
        the same processing as a webhook."""
        if not self.provider.test_mode:
            raise NotFound("Test payments are off: this server takes real payments.",
                           code="test_payments_off")
        purchase = await self.get(purchase_id)
        if purchase.user_id != user.id:
            raise NotFound("No such purchase.", code="purchase_not_found")
        if purchase.status != "pending":
            raise self._not_pending(purchase)
        intent = purchase.payment_intent_id or f"pi_test_{purchase.id.hex[:24]}"
        # One event id per purchase, as Stripe sends one payment outcome: of two clicks at
        # once (or a Pay and a Decline), the first event decides and the others are
        # duplicates, answered as a click after it is (purchase_not_pending).
        event = simulated_event(event_id=f"evt_test_{purchase.id.hex}", method=purchase.method,
                                purchase_id=purchase.id, amount_minor=purchase.amount_minor,
                                currency=purchase.currency, payment_intent_id=intent,
                                checkout_id=purchase.checkout_id, paid=paid,
                                created=int(self.clock().timestamp()))
        result = await self.handle_event(event)
        purchase = await self.get(purchase_id)
        if result != "applied":
            raise self._not_pending(purchase)
        return purchase

    @staticmethod
    def _not_pending(purchase: Purchase) -> Conflict:
        return Conflict(f"This purchase is already {purchase.status}.",
                        code="purchase_not_pending", status=purchase.status)

    # -- spending limits ---------------------------------------------------------------------

    @staticmethod
    async def _own_limit(conn: Any, user_id: uuid.UUID, now: dt.datetime) -> OwnLimit:
        row = await conn.fetchrow("SELECT * FROM spending_limits WHERE user_id = $1", user_id)
        if row is None:
            return OwnLimit()
        return OwnLimit(row["own_cap_minor"], row["raise_pending"], row["raise_to_minor"],
                        row["raise_at"]).settled(now)

    async def spending(self, user_id: uuid.UUID) -> dict[str, Any]:
        now = self.clock()
        async with self.pool.acquire() as conn:
            limit = await self._own_limit(conn, user_id, now)
            rows = await conn.fetch(
                "SELECT created_at, amount_minor FROM purchases WHERE user_id = $1"
                " AND created_at > $2 AND (status = 'paid' OR (status = 'pending'"
                " AND created_at > $3)) ORDER BY created_at",
                user_id, now - SPEND_WINDOW, now - PENDING_COUNTS_FOR)
        platform = self.settings.daily_spend_cap_minor
        packages = await self.packages()
        currency = packages[0].currency if packages else "usd"
        return {
            "currency": currency, "platform_cap_minor": platform,
            "own_cap_minor": limit.own_cap_minor,
            "pending_own_cap": None if not limit.raise_pending else {
                "own_cap_minor": limit.raise_to_minor, "effective_at": iso_time(limit.raise_at)},
            "cap_minor": limit.cap(platform),
            "spent_minor": sum(r["amount_minor"] for r in rows),
            "resets_at": iso_time(rows[0]["created_at"] + SPEND_WINDOW) if rows else None,
            "cooldown": {"max_purchases": self.settings.spend_burst_purchases,
                         "window_s": self.settings.spend_burst_window_s},
        }

    async def set_own_cap(self, user_id: uuid.UUID, requested: int | None) -> dict[str, Any]:
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
                               f"purchase:{user_id}")
            current = await self._own_limit(conn, user_id, now)
            new = change_own_cap(current, requested,
                                 platform_cap_minor=self.settings.daily_spend_cap_minor, now=now)
            await conn.execute(
                """
                INSERT INTO spending_limits (user_id, own_cap_minor, raise_pending,
                                             raise_to_minor, raise_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (user_id) DO UPDATE SET own_cap_minor = EXCLUDED.own_cap_minor,
                    raise_pending = EXCLUDED.raise_pending,
                    raise_to_minor = EXCLUDED.raise_to_minor, raise_at = EXCLUDED.raise_at,
                    updated_at = EXCLUDED.updated_at
                """,
                user_id, new.own_cap_minor, new.raise_pending, new.raise_to_minor,
                new.raise_at, now)
        return await self.spending(user_id)


    # -- debt --------------------------------------------------------------------------------

    async def settle_debt(self, user_id: uuid.UUID) -> int:
        """Pay what a viewer owes from the coins in their wallet (as much as it holds);
        the coins moved."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT kind, id FROM ledger_accounts WHERE owner_id = $1"
                " AND kind IN ('wallet', 'debt')", user_id)
            ids = {row["kind"]: row["id"] for row in rows}
            if len(ids) < 2:
                return 0
            balances = await postings.lock(conn, [ids["wallet"], ids["debt"]])
            amount = min(balances[ids["wallet"]], -balances[ids["debt"]])
            if amount > 0:
                await postings.write(conn, transfer_id=uuid.uuid4(), kind="debt_settlement",
                                     now=self.clock(),
                                     legs={ids["wallet"]: -amount, ids["debt"]: amount})
        return max(amount, 0)
