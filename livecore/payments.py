"""Money in and out, as pure rules: coin packages, what a provider event means for a purchase,
how many coins a refund or dispute takes back, the debt split, spending limits, payouts.

No I/O here: ``ledger/payments.py`` and ``ledger/payouts.py`` apply these rules in
transactions. See docs/payments.md.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from livecore.errors import ClientError, Conflict, TooManyRequests, ValidationFailed
from livecore.times import iso_time

#: Spending is counted over this rolling window, and a raised own cap waits this long.
SPEND_WINDOW = dt.timedelta(hours=24)
#: A purchase that was never paid stops counting against the cap after this.
PENDING_COUNTS_FOR = dt.timedelta(hours=1)
METHODS = ("payment_intent", "checkout")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{1,31}$")
_CURRENCY = re.compile(r"^[a-z]{3}$")


class PaymentRequired(ClientError):
    status = 402
    default_code = "payment_required"


@dataclass(frozen=True)
class CoinPackage:
    slug: str
    coins: int
    price_minor: int
    currency: str
    is_active: bool = True

    def __post_init__(self) -> None:
        if not _SLUG.match(self.slug):
            raise ValidationFailed("A package slug is 2-32 lowercase letters, digits, - or _.",
                                   code="invalid_field", field="slug")
        if not _CURRENCY.match(self.currency):
            raise ValidationFailed("currency is a three-letter ISO 4217 code, like usd.",
                                   code="invalid_field", field="currency")

    def json(self) -> dict[str, Any]:
        return {"slug": self.slug, "coins": self.coins, "price_minor": self.price_minor,
                "currency": self.currency, "is_active": self.is_active}


# -- what a provider event says --------------------------------------------------------------

EventKind = Literal["paid", "waiting", "failed", "refund", "dispute", "ignored"]

#: The dispute states, in the only order they may move (an older event never moves one back).
DISPUTE_RANK = {None: 0, "open": 1, "won": 2, "lost": 2}


@dataclass(frozen=True)
class PaymentEvent:
    """The part of a Stripe event the ledger acts on."""

    kind: EventKind
    purchase_id: uuid.UUID | None = None
    payment_intent_id: str | None = None
    checkout_id: str | None = None
    #: charge.refunded: the charge's cumulative refunded amount.
    refunded_minor: int = 0
    dispute_id: str | None = None
    dispute_status: str | None = None
    dispute_minor: int = 0
    failure: str | None = None
    #: paid: the sum the event says was paid (None when it does not say).
    amount_minor: int | None = None
    currency: str | None = None


def _purchase_id(metadata: Any) -> uuid.UUID | None:
    if not isinstance(metadata, dict):
        return None
    try:
        return uuid.UUID(str(metadata.get("purchase_id")))
    except ValueError:
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    return value if isinstance(value, str) and value else None


_CHECKOUT_FAILURES = {
    "checkout.session.async_payment_failed": "The payment failed.",
    "checkout.session.expired": "The checkout expired before it was paid.",
}


def interpret(event: dict[str, Any]) -> PaymentEvent:
    """What a (verified) Stripe event means for a purchase; ``ignored`` for anything else."""
    kind = event.get("type")
    obj = (event.get("data") or {}).get("object") or {}
    if not isinstance(obj, dict):
        return PaymentEvent("ignored")
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        failure = None
        if kind == "payment_intent.payment_failed":
            error = obj.get("last_payment_error") or {}
            failure = (error.get("message") if isinstance(error, dict) else None) or "declined"
        return PaymentEvent("paid" if failure is None else "failed",
                            purchase_id=_purchase_id(obj.get("metadata")),
                            payment_intent_id=_text(obj.get("id")), failure=failure,
                            **_paid_sum(obj, "amount_received", "amount"))
    if kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded",
                "checkout.session.async_payment_failed", "checkout.session.expired"):
        if kind == "checkout.session.completed":
            what: EventKind = "paid" if obj.get("payment_status") == "paid" else "waiting"
        elif kind == "checkout.session.async_payment_succeeded":
            what = "paid"
        else:
            what = "failed"
        return PaymentEvent(
            what,
            purchase_id=_purchase_id(obj.get("metadata")) or _maybe_uuid(
                obj.get("client_reference_id")),
            payment_intent_id=_text(obj.get("payment_intent")), checkout_id=_text(obj.get("id")),
            failure=None if what != "failed" else _CHECKOUT_FAILURES[kind],
            **_paid_sum(obj, "amount_total"))
    if kind == "charge.refunded":
        return PaymentEvent("refund", purchase_id=_purchase_id(obj.get("metadata")),
                            payment_intent_id=_text(obj.get("payment_intent")),
                            refunded_minor=int(obj.get("amount_refunded") or 0))
    if kind in ("charge.dispute.created", "charge.dispute.closed"):
        status = "open"
        if kind == "charge.dispute.closed":
            status = "won" if obj.get("status") == "won" else "lost"
        return PaymentEvent("dispute", purchase_id=_purchase_id(obj.get("metadata")),
                            payment_intent_id=_text(obj.get("payment_intent")),
                            dispute_id=_text(obj.get("id")), dispute_status=status,
                            dispute_minor=int(obj.get("amount") or 0))
    return PaymentEvent("ignored")


def _paid_sum(obj: dict[str, Any], *fields: str) -> dict[str, Any]:
    """The amount (the first of ``fields`` present) and currency an object says was paid."""
    for name in fields:
        if isinstance(obj.get(name), int) and obj[name] > 0:
            currency = obj.get("currency")
            return {"amount_minor": obj[name],
                    "currency": currency.lower() if isinstance(currency, str) else None}
    return {}


def _maybe_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# -- refunds, disputes and debt ---------------------------------------------------------------


def coins_to_reverse(*, coins: int, amount_minor: int, refunded_minor: int,
                     dispute_status: str | None, dispute_minor: int) -> int:
    """The coins a purchase should have taken back, given what the provider took back.

    The refunded money (cumulative) and the money of a dispute that is open or lost count,
    together at most the purchase's amount; their share of the coins is rounded up (a
    partial refund never leaves the viewer a fraction of a coin they did not pay for).
    """
    taken = refunded_minor
    if dispute_status in ("open", "lost"):
        taken += dispute_minor
    taken = max(0, min(taken, amount_minor))
    return -(-coins * taken // amount_minor)


def split_debit(amount: int, wallet_balance: int) -> tuple[int, int]:
    """(from the wallet, into debt) for taking ``amount`` coins back."""
    from_wallet = min(amount, max(wallet_balance, 0))
    return from_wallet, amount - from_wallet


def split_credit(amount: int, owed: int) -> tuple[int, int]:
    """(paying the debt, into the wallet) for giving ``amount`` coins: debt is paid first."""
    to_debt = min(amount, max(owed, 0))
    return to_debt, amount - to_debt


# -- spending limits --------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnLimit:
    """A viewer's own daily cap (None: the platform's), and a raise waiting for its time."""

    own_cap_minor: int | None = None
    raise_pending: bool = False
    raise_to_minor: int | None = None
    raise_at: dt.datetime | None = None

    def settled(self, now: dt.datetime) -> OwnLimit:
        """The limit with a raise whose time has come applied."""
        if self.raise_pending and self.raise_at is not None and self.raise_at <= now:
            return OwnLimit(self.raise_to_minor)
        return self

    def cap(self, platform_cap_minor: int) -> int:
        if self.own_cap_minor is None:
            return platform_cap_minor
        return min(self.own_cap_minor, platform_cap_minor)


def change_own_cap(current: OwnLimit, requested: int | None, *, platform_cap_minor: int,
                   now: dt.datetime) -> OwnLimit:
    """A viewer asks for ``requested`` (None: no cap of their own). Lower takes effect at once
    (and drops a waiting raise); higher, or none, waits :data:`SPEND_WINDOW`."""
    if requested is not None and requested < 0:
        raise ValidationFailed("own_cap_minor must not be negative.", code="invalid_field",
                               field="own_cap_minor")
    if requested is not None and requested > platform_cap_minor:
        raise ValidationFailed(
            "Your own cap cannot be above the platform's daily cap.", code="above_platform_cap",
            platform_cap_minor=platform_cap_minor)
    current = current.settled(now)
    effective = current.cap(platform_cap_minor)
    wanted = platform_cap_minor if requested is None else requested
    if wanted < effective or (wanted == effective and requested is not None):
        return OwnLimit(requested)
    if current.own_cap_minor is None and requested is None:
        return OwnLimit()
    return OwnLimit(current.own_cap_minor, True, requested, now + SPEND_WINDOW)


@dataclass(frozen=True)
class Spend:
    """A purchase that counts against the cap: when it was made and its money."""

    at: dt.datetime
    amount_minor: int


def check_spending(*, cap_minor: int, spent: Iterable[Spend], amount_minor: int,
                   now: dt.datetime, currency: str) -> None:
    """Refuse (``spending_cap_reached``) a purchase that would take the last 24 hours'
    spending above the cap; the error says when enough of it leaves the window."""
    counted = sorted((s for s in spent if s.at > now - SPEND_WINDOW), key=lambda s: s.at)
    total = sum(s.amount_minor for s in counted)
    if total + amount_minor <= cap_minor:
        return
    resets_at = None
    remaining = total
    for spend in counted:
        remaining -= spend.amount_minor
        if remaining + amount_minor <= cap_minor:
            resets_at = spend.at + SPEND_WINDOW
            break
    raise Conflict(
        "This purchase would go over your daily spending cap.", code="spending_cap_reached",
        cap_minor=cap_minor, spent_minor=total, amount_minor=amount_minor, currency=currency,
        resets_at=iso_time(resets_at))


def check_cooldown(*, recent: Iterable[dt.datetime], max_purchases: int, window_s: int,
                   now: dt.datetime) -> None:
    """More than ``max_purchases`` purchases within ``window_s`` is unusually fast spending:
    the next one waits until the oldest of them leaves the window (``spending_cooldown``)."""
    window = dt.timedelta(seconds=window_s)
    inside = sorted(t for t in recent if t > now - window)
    if len(inside) < max_purchases:
        return
    frees_at = inside[len(inside) - max_purchases] + window
    retry_after = max(1, int((frees_at - now).total_seconds() + 0.999))
    raise TooManyRequests(
        f"That is a lot of purchases in a short time; take a break and try again in "
        f"{retry_after} s.", retry_after_s=retry_after, code="spending_cooldown")


# -- payouts ---------------------------------------------------------------------------------


def diamonds_to_minor(diamonds: int, minor_per_100_diamonds: int) -> int:
    """The money value of diamonds, rounded down to a whole minor unit."""
    return diamonds * minor_per_100_diamonds // 100


def check_payout(*, diamonds: int, minimum: int, available: int,
                 minor_per_100_diamonds: int) -> int:
    """The payout's money; refuses one below the minimum, worth nothing, or not covered."""
    if diamonds < minimum:
        raise ValidationFailed(f"The smallest payout is {minimum} diamonds.",
                               code="below_minimum", minimum_diamonds=minimum)
    amount = diamonds_to_minor(diamonds, minor_per_100_diamonds)
    if amount <= 0:
        raise ValidationFailed("That many diamonds are worth nothing yet.",
                               code="below_minimum", minimum_diamonds=minimum)
    if diamonds > available:
        raise PaymentRequired("You do not have that many diamonds available.",
                              code="insufficient_diamonds", available_diamonds=available)
    return amount


# -- the test-payments provider's events --------------------------------------------------------


def simulated_event(*, event_id: str, method: str, purchase_id: uuid.UUID, amount_minor: int,
               currency: str, payment_intent_id: str, checkout_id: str | None, paid: bool,
               created: int) -> dict[str, Any]:
    """The event Stripe would send when the payment of a purchase succeeds or fails, for the
    test-payments mode (so the coins go through the same processing as a real webhook)."""
    metadata = {"purchase_id": str(purchase_id)}
    if method == "checkout":
        obj: dict[str, Any] = {
            "id": checkout_id, "object": "checkout.session", "mode": "payment",
            "status": "complete", "payment_status": "paid" if paid else "unpaid",
            "amount_total": amount_minor, "currency": currency,
            "client_reference_id": str(purchase_id), "metadata": metadata,
            "payment_intent": payment_intent_id,
        }
        kind = ("checkout.session.completed" if paid
                else "checkout.session.async_payment_failed")
    else:
        obj = {"id": payment_intent_id, "object": "payment_intent", "amount": amount_minor,
               "currency": currency, "metadata": metadata,
               "status": "succeeded" if paid else "requires_payment_method",
               "last_payment_error": None if paid else {"message": "Declined on the test page."}}
        kind = "payment_intent.succeeded" if paid else "payment_intent.payment_failed"
    return {"id": event_id, "object": "event", "type": kind, "created": created,
            "livemode": False, "data": {"object": obj}}
