"""The pure rules of money in and out (livecore/payments.py)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livecore.errors import Conflict, TooManyRequests, ValidationFailed
from livecore.payments import (
    SPEND_WINDOW,
    CoinPackage,
    OwnLimit,
    PaymentRequired,
    Spend,
    change_own_cap,
    check_cooldown,
    check_payout,
    check_spending,
    coins_to_reverse,
    diamonds_to_minor,
    interpret,
    simulated_event,
    split_credit,
    split_debit,
)

NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
PURCHASE = uuid.UUID("5b0c3c8e-7d7e-4b8a-9d55-3f2a1c0b9e11")


def event(kind: str, obj: dict) -> dict:
    return {"id": "evt_1", "type": kind, "data": {"object": obj}}


def test_payment_events_are_read_as_stripe_sends_them():
    paid = interpret(event("payment_intent.succeeded", {
        "id": "pi_1", "metadata": {"purchase_id": str(PURCHASE)}}))
    assert (paid.kind, paid.purchase_id, paid.payment_intent_id) == ("paid", PURCHASE, "pi_1")
    failed = interpret(event("payment_intent.payment_failed", {
        "id": "pi_1", "last_payment_error": {"message": "Your card was declined."}}))
    assert (failed.kind, failed.failure) == ("failed", "Your card was declined.")
    session = {"id": "cs_1", "client_reference_id": str(PURCHASE), "payment_intent": "pi_2"}
    assert interpret(event("checkout.session.completed",
                           {**session, "payment_status": "paid"})).kind == "paid"
    waiting = interpret(event("checkout.session.completed",
                              {**session, "payment_status": "unpaid"}))
    assert (waiting.kind, waiting.purchase_id, waiting.checkout_id) == (
        "waiting", PURCHASE, "cs_1")
    assert interpret(event("checkout.session.async_payment_succeeded", session)).kind == "paid"
    assert interpret(event("checkout.session.async_payment_failed", session)).kind == "failed"
    assert interpret(event("checkout.session.expired", session)).kind == "failed"
    refund = interpret(event("charge.refunded", {"id": "ch_1", "amount": 999,
                                                 "amount_refunded": 500,
                                                 "payment_intent": {"id": "pi_3"}}))
    assert (refund.kind, refund.refunded_minor, refund.payment_intent_id) == (
        "refund", 500, "pi_3")
    opened = interpret(event("charge.dispute.created", {
        "id": "du_1", "amount": 999, "payment_intent": "pi_3", "status": "needs_response"}))
    assert (opened.kind, opened.dispute_status, opened.dispute_minor) == ("dispute", "open", 999)
    for status, expected in (("won", "won"), ("lost", "lost"), ("warning_closed", "lost")):
        closed = interpret(event("charge.dispute.closed", {"id": "du_1", "status": status}))
        assert closed.dispute_status == expected
    assert interpret(event("customer.created", {"id": "cus_1"})).kind == "ignored"
    assert interpret({"id": "evt_2", "type": "payment_intent.succeeded",
                      "data": {"object": "junk"}}).kind == "ignored"
    assert interpret(event("payment_intent.succeeded",
                           {"id": "pi_1", "metadata": {"purchase_id": "nope"}})).purchase_id is None


@pytest.mark.parametrize("method", ["checkout", "payment_intent"])
def test_test_mode_events_read_back_as_what_they_stand_for(method):
    for paid in (True, False):
        built = simulated_event(event_id="evt_t", method=method, purchase_id=PURCHASE,
                           amount_minor=99, currency="usd", payment_intent_id="pi_t",
                           checkout_id="cs_t", paid=paid, created=1)
        read = interpret(built)
        assert read.kind == ("paid" if paid else "failed")
        assert read.purchase_id == PURCHASE


def test_reversals_follow_refunds_and_open_or_lost_disputes():
    def reverse(refunded: int = 0, status: str | None = None, disputed: int = 0) -> int:
        return coins_to_reverse(coins=70, amount_minor=99, refunded_minor=refunded,
                                dispute_status=status, dispute_minor=disputed)

    assert reverse() == 0
    assert reverse(99) == 70
    assert reverse(50) == 36  # 35.35 rounded up
    assert reverse(status="open", disputed=99) == 70
    assert reverse(status="won", disputed=99) == 0
    assert reverse(status="lost", disputed=99) == 70
    assert reverse(60, "lost", 99) == 70  # never more than the purchase


@given(coins=st.integers(1, 10_000), amount=st.integers(50, 100_000), data=st.data())
def test_reversal_is_monotonic_and_bounded(coins, amount, data):
    first = data.draw(st.integers(0, amount))
    second = data.draw(st.integers(first, amount * 2))
    a = coins_to_reverse(coins=coins, amount_minor=amount, refunded_minor=first,
                         dispute_status=None, dispute_minor=0)
    b = coins_to_reverse(coins=coins, amount_minor=amount, refunded_minor=second,
                         dispute_status=None, dispute_minor=0)
    assert 0 <= a <= b <= coins
    assert (b == coins) == (second >= amount or b == coins)


@given(amount=st.integers(0, 10_000), balance=st.integers(-5, 10_000))
def test_debits_take_the_wallet_first_then_owe(amount, balance):
    wallet, debt = split_debit(amount, balance)
    assert wallet + debt == amount and 0 <= wallet <= max(balance, 0) and debt >= 0
    assert debt == 0 or wallet == max(balance, 0)


@given(amount=st.integers(0, 10_000), owed=st.integers(0, 10_000))
def test_credits_pay_the_debt_first(amount, owed):
    debt, wallet = split_credit(amount, owed)
    assert debt + wallet == amount and debt == min(amount, owed)


def test_packages_check_their_slug_and_currency():
    CoinPackage("coins-70", 70, 99, "usd")
    with pytest.raises(ValidationFailed):
        CoinPackage("Coins!", 70, 99, "usd")
    with pytest.raises(ValidationFailed):
        CoinPackage("coins-70", 70, 99, "dollars")


def test_the_cap_counts_the_last_24_hours_and_says_when_it_frees_up():
    spent = [Spend(NOW - dt.timedelta(hours=25), 9000), Spend(NOW - dt.timedelta(hours=5), 600),
             Spend(NOW - dt.timedelta(hours=1), 300)]
    check_spending(cap_minor=1000, spent=spent, amount_minor=100, now=NOW, currency="usd")
    with pytest.raises(Conflict) as refused:
        check_spending(cap_minor=1000, spent=spent, amount_minor=200, now=NOW, currency="usd")
    details = refused.value.details
    assert refused.value.code == "spending_cap_reached"
    assert (details["cap_minor"], details["spent_minor"]) == (1000, 900)
    assert details["resets_at"] == (NOW - dt.timedelta(hours=5) + SPEND_WINDOW).isoformat(
        ).replace("+00:00", "Z")
    with pytest.raises(Conflict) as never:
        check_spending(cap_minor=1000, spent=[], amount_minor=1001, now=NOW, currency="usd")
    assert never.value.details["resets_at"] is None


def test_the_cool_down_starts_after_the_burst():
    recent = [NOW - dt.timedelta(seconds=s) for s in (500, 300, 10)]
    check_cooldown(recent=recent[:2], max_purchases=3, window_s=600, now=NOW)
    with pytest.raises(TooManyRequests) as waited:
        check_cooldown(recent=recent, max_purchases=3, window_s=600, now=NOW)
    assert waited.value.retry_after_s == 100
    check_cooldown(recent=recent, max_purchases=3, window_s=400, now=NOW)  # 500 s ago is out


def test_own_caps_lower_at_once_and_rise_a_day_later():
    limit = change_own_cap(OwnLimit(), 500, platform_cap_minor=10_000, now=NOW)
    assert limit == OwnLimit(500) and limit.cap(10_000) == 500
    raised = change_own_cap(limit, 2000, platform_cap_minor=10_000, now=NOW)
    assert raised.cap(10_000) == 500 and raised.raise_at == NOW + SPEND_WINDOW
    assert raised.settled(NOW + dt.timedelta(hours=23)).cap(10_000) == 500
    assert raised.settled(NOW + SPEND_WINDOW).cap(10_000) == 2000
    removed = change_own_cap(limit, None, platform_cap_minor=10_000, now=NOW)
    assert removed.settled(NOW + SPEND_WINDOW) == OwnLimit()
    lowered = change_own_cap(raised, 100, platform_cap_minor=10_000, now=NOW)
    assert lowered == OwnLimit(100)  # a lower cap drops the waiting raise
    with pytest.raises(ValidationFailed) as above:
        change_own_cap(limit, 10_001, platform_cap_minor=10_000, now=NOW)
    assert above.value.code == "above_platform_cap"
    assert OwnLimit(50_000).cap(10_000) == 10_000  # the platform's cap still holds


def test_payouts_need_the_minimum_and_the_diamonds():
    assert diamonds_to_minor(1999, 50) == 999
    assert check_payout(diamonds=1000, minimum=1000, available=1000,
                        minor_per_100_diamonds=50) == 500
    with pytest.raises(ValidationFailed):
        check_payout(diamonds=999, minimum=1000, available=5000, minor_per_100_diamonds=50)
    with pytest.raises(ValidationFailed):
        check_payout(diamonds=1, minimum=1, available=5, minor_per_100_diamonds=50)
    with pytest.raises(PaymentRequired):
        check_payout(diamonds=2000, minimum=1000, available=1999, minor_per_100_diamonds=50)
