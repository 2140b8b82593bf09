"""Creator earnings and payouts in test-payments mode, and what finance sees of money in and
out (tests/payments/test_stripe.py runs payouts against the Stripe fake, with crashes)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import uuid
from typing import Any

import pytest

from gateway.finance_api import DEBTS, PAYOUTS, PURCHASES
from gateway.payment_api import EARNINGS, PAYOUT
from gateway.services import Services
from ledger.audit import verify_postgres
from ledger.batcher import grant
from ledger.payouts import Payouts
from livecore.accounts import Role
from livecore.streams import StreamEvent
from tests.support import PASSWORD, ApiClient, assert_matches


@pytest.fixture
async def earner(api: ApiClient, services: Services) -> dict[str, Any]:
    """A creator whose live stream received 3 castles (14,997 coins, 50% cut) from a viewer:
    7,499 diamonds (the odd coin goes to the creator)."""
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Earnings"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    viewer, viewer_token = await api.new_user()
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=20_000, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    response, body = await api.request("POST", "/api/v1/gifts", token=viewer_token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": stream["id"], "gift": "castle",
        "quantity": 3})
    assert response.status == 201, body
    return {"token": creator_token, "id": creator["id"], "viewer": viewer_token}


async def _payout(api: ApiClient, token: str, diamonds: int,
                  payout_id: str | None = None) -> tuple[int, Any]:
    response, body = await api.request("POST", "/api/v1/me/payouts", token=token, json={
        "payout_id": payout_id or str(uuid.uuid4()), "diamonds": diamonds})
    return response.status, body


async def test_earnings_show_available_pending_paid_and_per_day(
        api: ApiClient, earner: dict[str, Any]) -> None:
    response, earnings = await api.request("GET", "/api/v1/me/earnings", token=earner["token"])
    assert response.status == 200, earnings
    assert_matches(EARNINGS, earnings)
    share = 3 * 4999 - (3 * 4999 * 5000 // 10_000)
    assert (earnings["available_diamonds"], earnings["pending_diamonds"],
            earnings["paid_diamonds"], earnings["earned_diamonds"]) == (share, 0, 0, share)
    assert earnings["available_minor"] == share * 50 // 100  # 100 diamonds = 50 cents
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert earnings["daily"] == [{"day": today, "diamonds": share}]
    response, _ = await api.request("GET", "/api/v1/me/earnings", token=earner["viewer"])
    assert response.status == 403  # creators only


async def test_a_payout_is_reserved_paid_and_posted_once(
        api: ApiClient, services: Services, earner: dict[str, Any]) -> None:
    token = earner["token"]
    status, body = await _payout(api, token, 1000)
    assert (status, body["error"]["code"]) == (409, "no_payout_account")
    path = "/api/v1/me/payout-account"
    response, body = await api.request("PUT", path, token=token, json={
        "stripe_account_id": "not-an-account", "password": PASSWORD})
    assert response.status == 422
    # Where payouts go is not changed with a token alone.
    response, body = await api.request("PUT", path, token=token,
                                       json={"stripe_account_id": "acct_1Thief"})
    assert (response.status, body["error"]["field"]) == (422, "password")
    response, body = await api.request("PUT", path, token=token, json={
        "stripe_account_id": "acct_1Thief", "password": "not the password"})
    assert (response.status, body["error"]["code"]) == (403, "wrong_password")
    _, earnings = await api.request("GET", "/api/v1/me/earnings", token=token)
    assert earnings["payout_account"] is None
    response, body = await api.request("PUT", path, token=token, json={
        "stripe_account_id": "acct_1Test", "password": PASSWORD})
    assert response.status == 200 and body == {"stripe_account_id": "acct_1Test"}
    status, body = await _payout(api, token, 999)
    assert (status, body["error"]["code"]) == (422, "below_minimum")
    status, body = await _payout(api, token, 1_000_000)
    assert (status, body["error"]["code"]) == (402, "insufficient_diamonds")
    payout_id = str(uuid.uuid4())
    status, payout = await _payout(api, token, 5000, payout_id)
    assert status == 201, payout
    assert_matches(PAYOUT, payout)
    assert (payout["status"], payout["amount_minor"], payout["currency"]) == ("paid", 2500, "usd")
    assert payout["transfer_id"].startswith("tr_test_")
    status, again = await _payout(api, token, 5000, payout_id)  # a retry replays it
    assert status == 200 and again["transfer_id"] == payout["transfer_id"]
    status, body = await _payout(api, token, 1000, payout_id)
    assert (status, body["error"]["code"]) == (409, "payout_id_conflict")
    _, earnings = await api.request("GET", "/api/v1/me/earnings", token=token)
    assert (earnings["available_diamonds"], earnings["pending_diamonds"],
            earnings["paid_diamonds"]) == (7499 - 5000, 0, 5000)
    _, mine = await api.request("GET", "/api/v1/me/payouts", token=token)
    assert [p["payout_id"] for p in mine["payouts"]] == [payout_id]
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))


async def _csv(api: ApiClient, path: str, token: str) -> list[dict[str, str]]:
    async with api.client.get(path, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        return list(csv.DictReader(io.StringIO(await response.text())))


async def test_finance_sees_purchases_payouts_and_debts(
        api: ApiClient, services: Services, earner: dict[str, Any]) -> None:
    finance, finance_token = await api.new_user()
    await services.accounts.set_roles(finance["id"], {Role.FINANCE}, actor_id=None,
                                      reason="t", now=dt.datetime.now(dt.UTC))
    await api.request("PUT", "/api/v1/me/payout-account", token=earner["token"],
                      json={"stripe_account_id": "acct_1Finance", "password": PASSWORD})
    _, payout = await _payout(api, earner["token"], 2000)
    buyer, buyer_token = await api.new_user()
    _, purchase = await api.request("POST", "/api/v1/purchases", token=buyer_token, json={
        "purchase_id": str(uuid.uuid4()), "package": "coins-70", "method": "payment_intent"})
    await api.request("POST", f"/api/v1/test-payments/{purchase['purchase_id']}",
                      token=buyer_token, json={"outcome": "pay"})
    await api.request("POST", "/api/v1/gifts", token=buyer_token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": (await services.pool.fetchval(
            "SELECT id::text FROM streams WHERE creator_id = $1", uuid.UUID(earner["id"]))),
        "gift": "coffee", "quantity": 5})  # 50 of the 70 coins
    stored = await services.purchases.get(uuid.UUID(purchase["purchase_id"]))
    await services.purchases.handle_event({
        "id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded", "data": {"object": {
            "id": "ch_f", "amount": 99, "amount_refunded": 99,
            "payment_intent": stored.payment_intent_id}}})

    response, listed = await api.request(
        "GET", f"/api/v1/finance/purchases?user_id={buyer['id']}", token=finance_token)
    assert response.status == 200, listed
    assert_matches(PURCHASES, listed)
    [row] = listed["purchases"]
    assert (row["status"], row["coins_reversed"], row["username"]) == (
        "refunded", 70, buyer["username"])
    # The status filter follows the status the buyer is shown, for every status.
    for status in ("pending", "paid", "failed", "refunded", "partially_refunded", "disputed"):
        _, page = await api.request("GET", f"/api/v1/finance/purchases?status={status}&limit=200",
                                    token=finance_token)
        shown = [(await services.purchases.get(uuid.UUID(p["purchase_id"]))).shown_status
                 for p in page["purchases"]]
        assert set(shown) <= {status}
    response, body = await api.request("GET", "/api/v1/finance/purchases?status=nope",
                                       token=finance_token)
    assert (response.status, body["error"]["code"]) == (400, "invalid_filter")

    _, listed = await api.request(
        "GET", f"/api/v1/finance/payouts?creator_id={earner['id']}", token=finance_token)
    assert_matches(PAYOUTS, listed)
    assert [p["payout_id"] for p in listed["payouts"]] == [payout["payout_id"]]

    _, owed = await api.request("GET", "/api/v1/finance/debts", token=finance_token)
    assert_matches(DEBTS, owed)
    assert {"user_id": buyer["id"], "username": buyer["username"], "owed_coins": 50} in (
        owed["debts"])
    assert owed["total_owed_coins"] >= 50

    rows = await _csv(api, f"/api/v1/finance/purchases.csv?user_id={buyer['id']}",
                      finance_token)
    assert [(r["purchase_id"], r["status"]) for r in rows] == [
        (purchase["purchase_id"], "refunded")]
    rows = await _csv(api, f"/api/v1/finance/payouts.csv?creator_id={earner['id']}",
                      finance_token)
    assert [(r["payout_id"], r["status"]) for r in rows] == [(payout["payout_id"], "paid")]

    # The journal names the purchase and payout of each money-in and money-out entry.
    _, journal = await api.request(
        "GET", f"/api/v1/finance/journal?owner_id={buyer['id']}&limit=200", token=finance_token)
    kinds = {(e["transfer_kind"], e["account_kind"], e["purchase_id"])
             for e in journal["entries"] if e["purchase_id"]}
    assert kinds == {("purchase", "wallet", purchase["purchase_id"]),
                     ("reversal", "wallet", purchase["purchase_id"]),
                     ("reversal", "debt", purchase["purchase_id"])}
    response, _ = await api.request("GET", "/api/v1/finance/debts", token=buyer_token)
    assert response.status == 403
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))


async def test_concurrent_duplicate_payouts_are_answered_as_a_retry_is(
        api: ApiClient, services: Services, earner: dict[str, Any]) -> None:
    """Five requests with one payout id at once: one 201, and four answers equal to what a
    retry afterwards gets (200, the payout as it stands); the diamonds move once."""
    token = earner["token"]
    await api.request("PUT", "/api/v1/me/payout-account", token=token,
                      json={"stripe_account_id": "acct_1Dup", "password": PASSWORD})
    payout_id = str(uuid.uuid4())
    answers = await asyncio.gather(*(_payout(api, token, 2000, payout_id) for _ in range(5)))
    retry = await _payout(api, token, 2000, payout_id)
    assert retry[0] == 200 and retry[1]["status"] == "paid", retry
    assert sorted(status for status, _ in answers) == [200, 200, 200, 200, 201], answers
    assert all(body == retry[1] for _, body in answers), answers
    _, earnings = await api.request("GET", "/api/v1/me/earnings", token=token)
    assert (earnings["available_diamonds"], earnings["paid_diamonds"]) == (7499 - 2000, 2000)

    # Two gateway processes (here: two Payouts, which share no lock in memory): the database
    # settles it, and a duplicate gets the stored payout, not a 500 nor a refusal for want of
    # the diamonds the first one took.
    creator_id = uuid.UUID(earner["id"])
    nodes = [Payouts(services.pool, services.provider, services.settings, services.clock)
             for _ in range(5)]
    payout_id_2 = uuid.uuid4()
    results = await asyncio.gather(*(node.request(creator_id, payout_id_2, 5000)
                                     for node in nodes))
    assert sorted(is_new for _, is_new in results) == [False] * 4 + [True]
    assert {(p.id, p.diamonds) for p, _ in results} == {(payout_id_2, 5000)}
    _, earnings = await api.request("GET", "/api/v1/me/earnings", token=token)
    assert earnings["available_diamonds"] == 7499 - 7000
    assert all(check.ok for check in await verify_postgres(services.pool, analyze=False))
