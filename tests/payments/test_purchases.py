"""Coin purchases without Stripe keys (the test-payments provider), through the real API,
PostgreSQL and the ledger; refunds and disputes through the event processing that a verified
webhook reaches (tests/payments/test_stripe.py covers the webhook itself)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.app import create_app
from gateway.payment_api import PACKAGES, PURCHASE, SPENDING
from gateway.services import Services
from ledger.audit import verify_postgres
from livecore.accounts import Role
from livecore.streams import StreamEvent
from tests.support import ApiClient, assert_matches


async def _buy(api: ApiClient, token: str, *, package: str = "coins-70",
               method: str = "checkout", purchase_id: str | None = None) -> tuple[int, Any]:
    response, body = await api.request("POST", "/api/v1/purchases", token=token, json={
        "purchase_id": purchase_id or str(uuid.uuid4()), "package": package, "method": method})
    return response.status, body


async def _wallet(api: ApiClient, token: str) -> dict[str, int]:
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=token)
    return dict(wallet)


async def _pay(api: ApiClient, token: str, purchase_id: str, outcome: str = "pay") -> Any:
    response, body = await api.request("POST", f"/api/v1/test-payments/{purchase_id}",
                                       token=token, json={"outcome": outcome})
    assert response.status == 200, body
    return body


@pytest.fixture
async def live(api: ApiClient, services: Services) -> dict[str, str]:
    """A creator with a live stream."""
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Payments"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    return {"creator": creator_token, "creator_id": creator["id"], "stream": stream["id"]}


async def _gift(api: ApiClient, token: str, stream: str, gift: str = "rose",
                quantity: int = 1) -> tuple[int, Any]:
    response, body = await api.request("POST", "/api/v1/gifts", token=token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": stream, "gift": gift, "quantity": quantity})
    return response.status, body


async def test_packages_are_public_and_admins_edit_them(api: ApiClient,
                                                       services: Services) -> None:
    response, body = await api.request("GET", "/api/v1/coins/packages")
    assert response.status == 200
    assert_matches(PACKAGES, body)
    assert body["test_mode"] is True and body["publishable_key"] is None
    assert {"slug": "coins-70", "coins": 70, "price_minor": 99, "currency": "usd",
            "is_active": True} in body["packages"]
    admin, admin_token = await api.new_user()
    _, viewer_token = await api.new_user()
    await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    package = {"coins": 10, "price_minor": 50, "currency": "eur", "is_active": False}
    response, _ = await api.request("PUT", "/api/v1/coins/packages/tiny", token=viewer_token,
                                    json=package)
    assert response.status == 403
    response, body = await api.request("PUT", "/api/v1/coins/packages/tiny", token=admin_token,
                                       json=package)
    assert response.status == 200 and body == {"slug": "tiny", **package}
    response, body = await api.request("PUT", "/api/v1/coins/packages/Bad!",
                                       token=admin_token, json=package)
    assert (response.status, body["error"]["field"]) == (422, "slug")
    response, body = await api.request("PUT", "/api/v1/coins/packages/cheap",
                                       token=admin_token, json={**package, "price_minor": 1})
    assert response.status == 422
    _, listed = await api.request("GET", "/api/v1/coins/packages")
    assert "tiny" not in {p["slug"] for p in listed["packages"]}  # inactive
    status, body = await _buy(api, viewer_token, package="tiny")
    assert (status, body["error"]["code"]) == (404, "unknown_package")


@pytest.mark.parametrize("method", ["checkout", "payment_intent"])
async def test_a_purchase_credits_coins_only_once_paid(api: ApiClient, method: str) -> None:
    _, token = await api.new_user()
    purchase_id = str(uuid.uuid4())
    status, purchase = await _buy(api, token, method=method, purchase_id=purchase_id)
    assert status == 201, purchase
    assert_matches(PURCHASE, purchase)
    assert (purchase["status"], purchase["coins"], purchase["amount_minor"]) == (
        "pending", 70, 99)
    if method == "checkout":
        assert purchase["checkout_url"] == str(api.client.make_url(f"/pay/test/{purchase_id}"))
        assert purchase["client_secret"] is None
    else:
        assert purchase["client_secret"].startswith("pi_test_")
        assert purchase["checkout_url"] is None
    # Nothing is credited before the payment's event, whatever the client does.
    assert (await _wallet(api, token))["coins"] == 0
    # A retry replays the purchase.
    status, again = await _buy(api, token, method=method, purchase_id=purchase_id)
    assert status == 200 and again["purchase_id"] == purchase_id
    status, body = await _buy(api, token, method=method, purchase_id=purchase_id,
                              package="coins-350")
    assert (status, body["error"]["code"]) == (409, "purchase_id_conflict")
    paid = await _pay(api, token, purchase_id)
    assert paid["status"] == "paid" and paid["client_secret"] is None
    assert dt.datetime.fromisoformat(paid["paid_at"]) >= dt.datetime.fromisoformat(
        paid["created_at"])
    assert await _wallet(api, token) == {"coins": 70, "diamonds": 0, "debt_coins": 0}
    response, body = await api.request("POST", f"/api/v1/test-payments/{purchase_id}",
                                       token=token, json={"outcome": "pay"})
    assert (response.status, body["error"]["code"]) == (409, "purchase_not_pending")
    assert (await _wallet(api, token))["coins"] == 70
    _, mine = await api.request("GET", "/api/v1/me/purchases", token=token)
    assert [p["purchase_id"] for p in mine["purchases"]] == [purchase_id]


async def test_a_declined_payment_credits_nothing(api: ApiClient) -> None:
    _, token = await api.new_user()
    _, purchase = await _buy(api, token)
    failed = await _pay(api, token, purchase["purchase_id"], "decline")
    assert (failed["status"], failed["failure"]) == ("failed", "The payment failed.")
    assert (await _wallet(api, token))["coins"] == 0


async def test_purchases_are_private(api: ApiClient) -> None:
    _, owner = await api.new_user()
    _, other = await api.new_user()
    _, purchase = await _buy(api, owner)
    path = f"/api/v1/purchases/{purchase['purchase_id']}"
    response, _ = await api.request("GET", path, token=other)
    assert response.status == 404
    response, body = await api.request("POST", f"/api/v1/test-payments/{purchase['purchase_id']}",
                                       token=other, json={"outcome": "pay"})
    assert response.status == 404, body
    response, body = await api.request("GET", path, token=owner)
    assert response.status == 200 and body["status"] == "pending"
    response, body = await api.request("GET", "/api/v1/purchases/not-a-uuid", token=owner)
    assert (response.status, body["error"]["code"]) == (404, "purchase_not_found")


async def test_minors_can_neither_buy_coins_nor_send_gifts(
        api: ApiClient, services: Services, live: dict[str, str]) -> None:
    teen_birthdate = (dt.date.today() - dt.timedelta(days=16 * 365)).isoformat()
    teen, token = await api.new_user(birthdate=teen_birthdate)
    status, body = await _buy(api, token)
    assert (status, body["error"]["code"]) == (403, "not_adult")
    _, mine = await api.request("GET", "/api/v1/me/purchases", token=token)
    assert mine["purchases"] == []
    from ledger.batcher import grant  # coins from elsewhere (a promotion) still can't be gifted
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(teen["id"]), coins=50,
                memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    status, body = await _gift(api, token, live["stream"])
    assert (status, body["error"]["code"]) == (403, "not_adult")
    assert (await _wallet(api, token))["coins"] == 50


@pytest.fixture
async def capped(make_services: Any) -> AsyncIterator[ApiClient]:
    """A server whose daily cap is $15.00 and whose cool-down starts after 3 purchases."""
    services = make_services(daily_spend_cap_minor=1500, spend_burst_purchases=3,
                             spend_burst_window_s=600)
    async with ApiClient.serving(create_app(services)) as api:
        yield api


async def test_the_daily_cap_counts_paid_and_recent_pending_purchases(capped: ApiClient) -> None:
    api = capped
    _, token = await api.new_user()
    status, first = await _buy(api, token, package="coins-700")  # 9.99
    assert status == 201
    await _pay(api, token, first["purchase_id"])
    status, body = await _buy(api, token, package="coins-700")  # 19.98 > 15.00
    assert status == 409 and body["error"]["code"] == "spending_cap_reached", body
    assert (body["error"]["cap_minor"], body["error"]["spent_minor"]) == (1500, 999)
    # The cap resets a day after the first purchase of the window.
    window_starts = dt.datetime.fromisoformat(first["created_at"])
    resets = dt.datetime.fromisoformat(body["error"]["resets_at"]) - window_starts
    assert abs(resets - dt.timedelta(hours=24)) <= dt.timedelta(seconds=5)
    status, _ = await _buy(api, token, package="coins-350")  # 14.98: fits
    assert status == 201
    _, spending = await api.request("GET", "/api/v1/me/spending", token=token)
    assert_matches(SPENDING, spending)
    assert (spending["cap_minor"], spending["spent_minor"]) == (1500, 999 + 499)
    _, mine = await api.request("GET", "/api/v1/me/purchases", token=token)
    assert len(mine["purchases"]) == 2  # the refused one wrote nothing


async def test_a_viewer_lowers_their_cap_at_once_and_raises_it_a_day_later(
        capped: ApiClient) -> None:
    api = capped
    _, token = await api.new_user()
    response, spending = await api.request("PUT", "/api/v1/me/spending", token=token,
                                           json={"own_cap_minor": 500})
    assert response.status == 200, spending
    assert (spending["cap_minor"], spending["own_cap_minor"]) == (500, 500)
    status, body = await _buy(api, token, package="coins-700")
    assert (status, body["error"]["code"], body["error"]["cap_minor"]) == (
        409, "spending_cap_reached", 500)
    response, spending = await api.request("PUT", "/api/v1/me/spending", token=token,
                                           json={"own_cap_minor": None})
    assert spending["cap_minor"] == 500 and spending["pending_own_cap"]["own_cap_minor"] is None
    effective = dt.datetime.fromisoformat(spending["pending_own_cap"]["effective_at"])
    assert effective > dt.datetime.now(dt.UTC) + dt.timedelta(hours=23)
    response, body = await api.request("PUT", "/api/v1/me/spending", token=token,
                                       json={"own_cap_minor": 99_999})
    assert (response.status, body["error"]["code"]) == (422, "above_platform_cap")
    response, spending = await api.request("PUT", "/api/v1/me/spending", token=token,
                                           json={"own_cap_minor": 200})
    assert (spending["cap_minor"], spending["pending_own_cap"]) == (200, None)


async def test_fast_purchases_hit_a_cool_down(capped: ApiClient) -> None:
    api = capped
    _, token = await api.new_user()
    for _ in range(3):
        status, purchase = await _buy(api, token)
        assert status == 201
        await _pay(api, token, purchase["purchase_id"], "decline")
    response, body = await api.request("POST", "/api/v1/purchases", token=token, json={
        "purchase_id": str(uuid.uuid4()), "package": "coins-70", "method": "checkout"})
    assert (response.status, body["error"]["code"]) == (429, "spending_cooldown")
    assert 0 < body["error"]["retry_after_s"] <= 600
    assert int(response.headers["Retry-After"]) == body["error"]["retry_after_s"]


async def test_concurrent_purchases_cannot_both_pass_the_cap(capped: ApiClient) -> None:
    api = capped
    _, token = await api.new_user()
    results = await asyncio.gather(*[_buy(api, token, package="coins-700") for _ in range(3)])
    assert sorted(status for status, _ in results) == [201, 409, 409]


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind,
            "created": 1, "data": {"object": obj}}


async def _paid_purchase(api: ApiClient, services: Services, token: str,
                         package: str = "coins-700") -> Any:
    _, purchase = await _buy(api, token, package=package, method="payment_intent")
    await _pay(api, token, purchase["purchase_id"])
    return await services.purchases.get(uuid.UUID(purchase["purchase_id"]))


async def test_a_refund_after_spending_puts_the_wallet_in_visible_debt(
        api: ApiClient, services: Services, live: dict[str, str]) -> None:
    user, token = await api.new_user()
    purchase = await _paid_purchase(api, services, token)  # 700 coins
    status, _ = await _gift(api, token, live["stream"], "crown")  # 299 coins
    assert status == 201
    refund = _event("charge.refunded", {
        "id": "ch_1", "object": "charge", "amount": 999, "amount_refunded": 999,
        "refunded": True, "payment_intent": purchase.payment_intent_id})
    assert await services.purchases.handle_event(refund) == "applied"
    assert await services.purchases.handle_event(refund) == "duplicate"
    assert await _wallet(api, token) == {"coins": 0, "diamonds": 0, "debt_coins": 299}
    _, shown = await api.request("GET", f"/api/v1/purchases/{purchase.id}", token=token)
    assert (shown["status"], shown["coins_reversed"], shown["refunded_minor"]) == (
        "refunded", 700, 999)
    # Gifting is blocked (the wallet is empty, but that is not what the refusal says)...
    status, body = await _gift(api, token, live["stream"])
    assert (status, body["error"]["code"]) == (402, "wallet_in_debt")
    # ...even with coins from elsewhere, until the debt is paid.
    from ledger.batcher import grant
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(user["id"]),
                coins=10, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    status, body = await _gift(api, token, live["stream"])
    assert (status, body["error"]["code"]) == (402, "wallet_in_debt")
    assert (await _wallet(api, token))["coins"] == 10
    # The viewer pays what the wallet holds...
    response, settled = await api.request("POST", "/api/v1/me/debt/settle", token=token)
    assert response.status == 200, settled
    assert settled == {"settled_coins": 10, "coins": 0, "diamonds": 0, "debt_coins": 289}
    # ...and the next purchase pays the rest first: 700 - 289 owed.
    await _paid_purchase(api, services, token)
    assert await _wallet(api, token) == {"coins": 411, "diamonds": 0, "debt_coins": 0}
    _, settled = await api.request("POST", "/api/v1/me/debt/settle", token=token)
    assert settled["settled_coins"] == 0 and settled["coins"] == 411
    status, _ = await _gift(api, token, live["stream"])
    assert status == 201
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))


async def test_partial_refunds_add_up_and_round_against_the_refunded_buyer(
        api: ApiClient, services: Services) -> None:
    _, token = await api.new_user()
    purchase = await _paid_purchase(api, services, token, package="coins-70")  # 99 cents
    for refunded, reversed_ in ((50, 36), (50, 36), (99, 70)):
        event = _event("charge.refunded", {
            "id": "ch_2", "object": "charge", "amount": 99, "amount_refunded": refunded,
            "payment_intent": purchase.payment_intent_id})
        await services.purchases.handle_event(event)
        assert (await services.purchases.get(purchase.id)).coins_reversed == reversed_
    assert (await _wallet(api, token))["coins"] == 0


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_a_dispute_reverses_then_reinstates_when_won(
        api: ApiClient, services: Services, outcome: str) -> None:
    _, token = await api.new_user()
    purchase = await _paid_purchase(api, services, token)
    dispute = {"id": f"du_{outcome}", "object": "dispute", "amount": 999, "charge": "ch_3",
               "payment_intent": purchase.payment_intent_id, "status": "needs_response"}
    closed = _event("charge.dispute.closed", {**dispute, "status": outcome})
    created = _event("charge.dispute.created", dispute)
    await services.purchases.handle_event(created)
    assert await _wallet(api, token) == {"coins": 0, "diamonds": 0, "debt_coins": 0}
    assert (await services.purchases.get(purchase.id)).dispute_status == "open"
    await services.purchases.handle_event(closed)
    expected = 700 if outcome == "won" else 0
    assert (await _wallet(api, token))["coins"] == expected
    # A late copy of "created" (another event id) does not reopen a closed dispute.
    await services.purchases.handle_event({**created, "id": f"evt_{uuid.uuid4().hex}"})
    assert (await _wallet(api, token))["coins"] == expected
    _, shown = await api.request("GET", f"/api/v1/purchases/{purchase.id}", token=token)
    assert shown["dispute_status"] == outcome
    assert shown["status"] == ("paid" if outcome == "won" else "disputed")
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))


async def test_a_refund_before_its_payment_is_applied_when_the_payment_comes(
        api: ApiClient, services: Services) -> None:
    """Out of order: the refund of a Checkout payment arrives before the session's
    completion (the only event that links the PaymentIntent to the purchase)."""
    _, token = await api.new_user()
    _, created = await _buy(api, token, package="coins-70")
    purchase = await services.purchases.get(uuid.UUID(created["purchase_id"]))
    refund = _event("charge.refunded", {"id": "ch_4", "object": "charge", "amount": 99,
                                        "amount_refunded": 99, "payment_intent": "pi_late"})
    assert await services.purchases.handle_event(refund) == "unmatched"
    completed = _event("checkout.session.completed", {
        "id": purchase.checkout_id, "object": "checkout.session", "payment_status": "paid",
        "amount_total": 99, "currency": "usd",
        "payment_intent": "pi_late", "metadata": {"purchase_id": str(purchase.id)},
        "client_reference_id": str(purchase.id)})
    assert await services.purchases.handle_event(completed) == "applied"
    after = await services.purchases.get(purchase.id)
    assert (after.status, after.coins_reversed) == ("paid", 70)
    assert (await _wallet(api, token))["coins"] == 0


async def test_unknown_events_are_acknowledged_and_change_nothing(services: Services) -> None:
    event = _event("customer.created", {"id": "cus_1", "object": "customer"})
    assert await services.purchases.handle_event(event) == "ignored"
    assert await services.purchases.handle_event(event) == "duplicate"


async def test_a_paid_event_for_another_sum_credits_nothing(api: ApiClient,
                                                           services: Services) -> None:
    _, token = await api.new_user()
    _, created = await _buy(api, token, method="payment_intent")
    purchase = await services.purchases.get(uuid.UUID(created["purchase_id"]))
    for amount, currency in ((1, "usd"), (99, "eur")):
        event = _event("payment_intent.succeeded", {
            "id": purchase.payment_intent_id, "object": "payment_intent",
            "amount": amount, "amount_received": amount, "currency": currency,
            "metadata": {"purchase_id": str(purchase.id)}})
        assert await services.purchases.handle_event(event) == "applied"
        assert (await services.purchases.get(purchase.id)).status == "pending"
    assert (await _wallet(api, token))["coins"] == 0
    right = _event("payment_intent.succeeded", {
        "id": purchase.payment_intent_id, "object": "payment_intent", "amount": 99,
        "amount_received": 99, "currency": "USD", "metadata": {"purchase_id": str(purchase.id)}})
    await services.purchases.handle_event(right)
    assert (await _wallet(api, token))["coins"] == 70


async def _pay_answer(api: ApiClient, token: str, purchase_id: str,
                      outcome: str = "pay") -> tuple[int, Any]:
    response, body = await api.request("POST", f"/api/v1/test-payments/{purchase_id}",
                                       token=token, json={"outcome": outcome})
    return response.status, body


@pytest.mark.parametrize("method", ["checkout", "payment_intent"])
async def test_concurrent_duplicates_are_answered_as_sequential_ones(api: ApiClient,
                                                                    method: str) -> None:
    """Five identical requests at once get what five in a row get: for a purchase, one 201
    and the same purchase four times (200); for the test page's Pay, one 200 and four
    purchase_not_pending (409), as a click after the payment gets; coins are credited once."""
    _, token = await api.new_user()
    purchase_id = str(uuid.uuid4())
    created = await asyncio.gather(*(_buy(api, token, method=method, purchase_id=purchase_id)
                                     for _ in range(5)))
    retry = await _buy(api, token, method=method, purchase_id=purchase_id)
    assert retry[0] == 200, retry
    assert sorted(status for status, _ in created) == [200, 200, 200, 200, 201], created
    assert all(body == retry[1] for _, body in created), created
    paid = await asyncio.gather(*(_pay_answer(api, token, purchase_id) for _ in range(5)))
    later = await _pay_answer(api, token, purchase_id)
    assert (later[0], later[1]["error"]["code"]) == (409, "purchase_not_pending"), later
    assert sorted(status for status, _ in paid) == [200, 409, 409, 409, 409], paid
    assert [body["status"] for status, body in paid if status == 200] == ["paid"]
    assert all(body == later[1] for status, body in paid if status == 409), paid
    # A Decline after the payment (or racing it) does not undo it either.
    declined = await asyncio.gather(*(_pay_answer(api, token, purchase_id, "decline")
                                      for _ in range(2)))
    assert all(answer == later for answer in declined), declined
    assert await _wallet(api, token) == {"coins": 70, "diamonds": 0, "debt_coins": 0}


async def test_a_pay_and_a_decline_at_once_have_one_outcome(api: ApiClient) -> None:
    _, token = await api.new_user()
    _, purchase = await _buy(api, token, method="payment_intent")
    answers = await asyncio.gather(_pay_answer(api, token, purchase["purchase_id"]),
                                   _pay_answer(api, token, purchase["purchase_id"], "decline"))
    assert sorted(status for status, _ in answers) == [200, 409], answers
    [(_, winner)] = [a for a in answers if a[0] == 200]
    [(_, loser)] = [a for a in answers if a[0] == 409]
    assert loser["error"]["status"] == winner["status"]
    assert (await _wallet(api, token))["coins"] == (70 if winner["status"] == "paid" else 0)


@pytest.mark.parametrize("kind", ["payment_intent.succeeded", "checkout.session.completed"])
async def test_a_paid_event_that_does_not_say_the_sum_credits_nothing(
        api: ApiClient, services: Services, kind: str) -> None:
    _, token = await api.new_user()
    method = "payment_intent" if kind.startswith("payment_intent") else "checkout"
    _, created = await _buy(api, token, method=method)
    purchase = await services.purchases.get(uuid.UUID(created["purchase_id"]))
    metadata = {"purchase_id": str(purchase.id)}
    if method == "payment_intent":
        obj: dict[str, Any] = {"id": purchase.payment_intent_id, "object": "payment_intent",
                               "status": "succeeded", "metadata": metadata}
    else:
        obj = {"id": purchase.checkout_id, "object": "checkout.session",
               "payment_status": "paid", "metadata": metadata}
    for sums in ({}, {"currency": "usd"}, {"amount_total": 99, "amount": 99}):
        event = _event(kind, {**obj, **sums})
        assert await services.purchases.handle_event(event) == "applied"
        assert (await services.purchases.get(purchase.id)).status == "pending", sums
    assert (await _wallet(api, token))["coins"] == 0
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))
