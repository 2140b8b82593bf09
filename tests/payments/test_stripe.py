"""Money in and out through the real ``stripe`` SDK against a local Stripe (localstripe, and
the fake in tests/stripe_fake.py for Checkout, Connect and disputes), with signed webhooks
delivered to a real server: purchases both ways, duplicate, concurrent and out-of-order
webhooks, forged and stale signatures, refunds after spending, disputes won and lost, and
payouts that crash between the provider's transfer and the ledger's post."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import stripe

from gateway.app import create_app
from gateway.services import Services
from ledger.audit import verify_postgres
from ledger.batcher import grant
from livecore.settings import Secret
from livecore.streams import StreamEvent
from tests.stripe_fake import FakeStripe, deliver, sign
from tests.support import PASSWORD, ApiClient

WEBHOOK_PATH = "/api/v1/payments/stripe/webhook"


@dataclasses.dataclass
class Shop:
    api: ApiClient
    services: Services
    fake: FakeStripe
    client: stripe.StripeClient

    @property
    def webhook_url(self) -> str:
        return str(self.api.client.make_url(WEBHOOK_PATH))

    async def buy(self, token: str, method: str, package: str = "coins-700") -> dict[str, Any]:
        response, body = await self.api.request("POST", "/api/v1/purchases", token=token, json={
            "purchase_id": str(uuid.uuid4()), "package": package, "method": method})
        assert response.status == 201, body
        return dict(body)

    async def wallet(self, token: str) -> dict[str, int]:
        _, body = await self.api.request("GET", "/api/v1/me/wallet", token=token)
        return dict(body)

    async def purchase(self, token: str, purchase_id: str) -> dict[str, Any]:
        _, body = await self.api.request("GET", f"/api/v1/purchases/{purchase_id}", token=token)
        return dict(body)

    async def pay_intent(self, purchase: dict[str, Any]) -> str:
        """What the app's PaymentSheet does with the client secret: attach a card and
        confirm. Returns the PaymentIntent id."""
        intent_id = purchase["client_secret"].split("_secret_")[0]
        card = await self.client.v1.payment_methods.create_async(params={
            "type": "card", "card": {"number": "4242424242424242", "exp_month": 12,
                                     "exp_year": 2030, "cvc": "123"}})
        await self.client.v1.payment_intents.update_async(intent_id,
                                                          params={"payment_method": card.id})
        await self.client.v1.payment_intents.confirm_async(intent_id)
        return intent_id

    async def until(self, token: str, purchase_id: str, status: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            shown = await self.purchase(token, purchase_id)
            if shown["status"] == status or time.monotonic() > deadline:
                assert shown["status"] == status, shown
                return shown
            await asyncio.sleep(0.05)


@pytest.fixture
async def shop(make_services: Any, stripe_fake: FakeStripe,
               stripe_client: stripe.StripeClient) -> AsyncIterator[Shop]:
    services = make_services(
        stripe_secret_key=Secret(stripe_fake.secret_key), stripe_api_base=stripe_fake.api_base,
        stripe_webhook_secret=Secret(stripe_fake.webhook_secret),
        stripe_publishable_key="pk_test_livecore", payout_stuck_after_s=0)
    try:
        async with ApiClient.serving(create_app(services)) as api:
            shop = Shop(api, services, stripe_fake, stripe_client)
            await stripe_fake.add_webhook(shop.webhook_url)
            yield shop
    finally:
        await services.provider.close()


async def test_a_payment_intent_purchase_is_credited_by_its_webhook(shop: Shop) -> None:
    _, token = await shop.api.new_user()
    _, packages = await shop.api.request("GET", "/api/v1/coins/packages")
    assert (packages["test_mode"], packages["publishable_key"]) == (False, "pk_test_livecore")
    purchase = await shop.buy(token, "payment_intent")
    assert purchase["client_secret"].startswith("pi_") and purchase["test_mode"] is False
    # The PaymentIntent was made once, with the purchase's idempotency key.
    made = [r for r in shop.fake.requests if r.path == "/v1/payment_intents"]
    assert [r.idempotency_key for r in made] == [
        f"purchase-{purchase['purchase_id']}-payment_intent"]
    response, body = await shop.api.request(
        "POST", f"/api/v1/test-payments/{purchase['purchase_id']}", token=token,
        json={"outcome": "pay"})
    assert (response.status, body["error"]["code"]) == (404, "test_payments_off")
    intent = await shop.pay_intent(purchase)
    await shop.fake.wait_for_event("payment_intent.succeeded", object_id=intent)
    paid = await shop.until(token, purchase["purchase_id"], "paid")
    assert paid["client_secret"] is None
    assert await shop.wallet(token) == {"coins": 700, "diamonds": 0, "debt_coins": 0}


async def test_a_checkout_purchase_is_credited_once_by_several_events(shop: Shop) -> None:
    _, token = await shop.api.new_user()
    purchase = await shop.buy(token, "checkout")
    assert purchase["checkout_url"].startswith(shop.fake.api_base)
    [session_id] = [s for s in shop.fake.checkout_sessions]
    session = shop.fake.checkout_sessions[session_id]
    assert session["success_url"].endswith(f"/coins?purchase={purchase['purchase_id']}")
    # The buyer comes back before the payment is confirmed: nothing is credited yet.
    await shop.fake.complete_checkout(session_id, payment="async_pending")
    assert (await shop.purchase(token, purchase["purchase_id"]))["status"] == "pending"
    assert (await shop.wallet(token))["coins"] == 0
    await shop.fake.settle_async_checkout(session_id, succeeded=True)
    assert (await shop.purchase(token, purchase["purchase_id"]))["status"] == "paid"
    # Every event about it again, each delivered three times at once, in reverse order.
    recorded = [e for e in shop.fake.events if e.type.startswith("checkout.session")]
    assert len(recorded) == 2
    results = await asyncio.gather(*[
        deliver(shop.webhook_url, event.payload, shop.fake.webhook_secret)
        for event in reversed(recorded) for _ in range(3)])
    assert {status for status, _ in results} == {200}
    assert {orjson.loads(body)["result"] for _, body in results} == {"duplicate"}
    assert await shop.wallet(token) == {"coins": 700, "diamonds": 0, "debt_coins": 0}
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))


async def test_a_new_event_delivered_three_times_at_once_credits_once(shop: Shop) -> None:
    """Three concurrent first deliveries of one event, and a different event about the same
    payment (payment_intent.succeeded after checkout.session.completed) at the same time."""
    user, token = await shop.api.new_user()
    purchase = await shop.buy(token, "checkout")
    [session_id] = [s for s in shop.fake.checkout_sessions]
    session = shop.fake.checkout_sessions[session_id]
    completed = {"id": f"evt_{uuid.uuid4().hex}", "object": "event",
                 "type": "checkout.session.completed", "created": int(time.time()),
                 "data": {"object": {**session, "status": "complete",
                                     "payment_status": "paid", "payment_intent": "pi_same"}}}
    succeeded = {"id": f"evt_{uuid.uuid4().hex}", "object": "event",
                 "type": "payment_intent.succeeded", "created": int(time.time()),
                 "data": {"object": {"id": "pi_same", "object": "payment_intent",
                                     "metadata": {"purchase_id": purchase["purchase_id"]}}}}
    payloads = [orjson.dumps(completed)] * 3 + [orjson.dumps(succeeded)] * 3
    results = await asyncio.gather(*[deliver(shop.webhook_url, p, shop.fake.webhook_secret)
                                     for p in payloads])
    outcomes = sorted(orjson.loads(body)["result"] for _, body in results)
    assert outcomes == ["applied", "applied", "duplicate", "duplicate", "duplicate",
                        "duplicate"]
    assert (await shop.wallet(token))["coins"] == 700
    credits = await shop.services.pool.fetchval(
        "SELECT count(*) FROM ledger_transfers WHERE purchase_id = $1 AND kind = 'purchase'",
        uuid.UUID(purchase["purchase_id"]))
    assert credits == 1
    stored = await shop.services.pool.fetchval(
        "SELECT count(*) FROM provider_events WHERE id = ANY($1::text[])",
        [completed["id"], succeeded["id"]])
    assert stored == 2


async def test_forged_and_stale_signatures_are_refused_and_change_nothing(shop: Shop) -> None:
    _, token = await shop.api.new_user()
    purchase = await shop.buy(token, "payment_intent")
    intent = purchase["client_secret"].split("_secret_")[0]
    event = orjson.dumps({
        "id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": "payment_intent.succeeded",
        "created": int(time.time()), "data": {"object": {
            "id": intent, "object": "payment_intent", "amount": 999, "amount_received": 999,
            "currency": "usd", "metadata": {"purchase_id": purchase["purchase_id"]}}}})
    secret = shop.fake.webhook_secret
    forged = sign(event, "whsec_not_the_secret")
    stale = sign(event, secret, timestamp=int(time.time()) - 3600)
    tampered_sig = sign(event, secret)
    for payload, header in ((event, forged), (event, stale),
                            (event.replace(b"payment_intent", b"payment_intenT", 1), tampered_sig),
                            (event, None), (event, "t=1,v1=deadbeef"), (b"not json", sign(
                                b"not json", secret))):
        if header is None:
            async with shop.api.client.post(WEBHOOK_PATH, data=payload) as response:
                status, body = response.status, await response.json()
        else:
            status, raw = await deliver(shop.webhook_url, payload, secret, signature=header)
            body = orjson.loads(raw)
        assert (status, body["error"]["code"]) == (400, "invalid_signature"), body
    assert (await shop.purchase(token, purchase["purchase_id"]))["status"] == "pending"
    assert (await shop.wallet(token))["coins"] == 0
    assert await shop.services.pool.fetchval(
        "SELECT count(*) FROM provider_events WHERE payload->'data'->'object'->>'id' = $1",
        intent) == 0
    status, raw = await deliver(shop.webhook_url, event, secret)  # the genuine one works
    assert status == 200 and orjson.loads(raw)["result"] == "applied"
    assert (await shop.wallet(token))["coins"] == 700


async def test_unknown_event_types_are_acknowledged(shop: Shop) -> None:
    payload = orjson.dumps({"id": f"evt_{uuid.uuid4().hex}", "object": "event",
                            "type": "invoice.paid", "created": 1,
                            "data": {"object": {"id": "in_1", "object": "invoice"}}})
    status, raw = await deliver(shop.webhook_url, payload, shop.fake.webhook_secret)
    assert status == 200 and orjson.loads(raw) == {"received": True, "result": "ignored"}


@pytest.fixture
async def live_stream(shop: Shop) -> str:
    _, creator_token = await shop.api.new_creator()
    _, stream = await shop.api.request("POST", "/api/v1/streams", token=creator_token,
                                       json={"title": "Refunds"})
    await shop.services.streams.transition(stream["id"], StreamEvent.START,
                                           dt.datetime.now(dt.UTC))
    return str(stream["id"])


async def _gift(shop: Shop, token: str, stream: str, gift: str, quantity: int = 1) -> int:
    response, _ = await shop.api.request("POST", "/api/v1/gifts", token=token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": stream, "gift": gift, "quantity": quantity})
    return response.status


async def test_a_refund_after_spending_leaves_a_debt_that_blocks_gifts(
        shop: Shop, live_stream: str) -> None:
    _, token = await shop.api.new_user()
    purchase = await shop.buy(token, "payment_intent")
    intent = await shop.pay_intent(purchase)
    await shop.until(token, purchase["purchase_id"], "paid")
    assert await _gift(shop, token, live_stream, "crown", 2) == 201  # 598 of 700 coins
    charge = await shop.fake.charge_of(intent)
    # Refunded from the dashboard, half first and then the rest.
    await shop.client.v1.refunds.create_async(params={"charge": charge, "amount": 500})
    await shop.fake.wait_for_event("charge.refunded", object_id=charge)
    await shop.until(token, purchase["purchase_id"], "partially_refunded")
    assert await shop.wallet(token) == {"coins": 0, "diamonds": 0, "debt_coins": 351 - 102}
    start = len(shop.fake.events)
    await shop.client.v1.refunds.create_async(params={"charge": charge})
    await shop.fake.wait_for_event("charge.refunded", object_id=charge, start=start)
    shown = await shop.until(token, purchase["purchase_id"], "refunded")
    assert shown["coins_reversed"] == 700
    assert await shop.wallet(token) == {"coins": 0, "diamonds": 0, "debt_coins": 598}
    assert await _gift(shop, token, live_stream, "rose") == 402
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))


@pytest.mark.parametrize("outcome", ["won", "lost"])
async def test_a_dispute_takes_coins_back_until_it_is_won(shop: Shop, live_stream: str,
                                                          outcome: str) -> None:
    _, token = await shop.api.new_user()
    purchase = await shop.buy(token, "checkout")
    [session_id] = [s for s in shop.fake.checkout_sessions]
    completed = await shop.fake.complete_checkout(session_id)
    intent = completed["data"]["object"]["payment_intent"]
    assert await _gift(shop, token, live_stream, "star", 2) == 201  # 98 of 700
    opened = await shop.fake.open_dispute(await shop.fake.charge_of(intent), intent)
    shown = await shop.until(token, purchase["purchase_id"], "disputed")
    assert shown["dispute_status"] == "open"
    assert await shop.wallet(token) == {"coins": 0, "diamonds": 0, "debt_coins": 98}
    assert await _gift(shop, token, live_stream, "rose") == 402
    await shop.fake.close_dispute(opened["data"]["object"]["id"],
                                  status="won" if outcome == "won" else "lost")
    if outcome == "won":
        await shop.until(token, purchase["purchase_id"], "paid")
        assert await shop.wallet(token) == {"coins": 602, "diamonds": 0, "debt_coins": 0}
        assert await _gift(shop, token, live_stream, "rose") == 201
    else:
        shown = await shop.until(token, purchase["purchase_id"], "disputed")
        assert shown["dispute_status"] == "lost"
        assert await shop.wallet(token) == {"coins": 0, "diamonds": 0, "debt_coins": 98}
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))


async def _creator_with_diamonds(shop: Shop, diamonds: int) -> tuple[str, str, str]:
    """A creator with ``diamonds`` available and a connected account; (id, token, acct)."""
    creator, token = await shop.api.new_creator()
    earnings = await shop.services.pool.fetchval(
        "INSERT INTO ledger_accounts (kind, owner_id) VALUES ('earnings', $1) RETURNING id",
        uuid.UUID(creator["id"]))
    # Diamonds come from gifts: a viewer's granted coins, given in one gift batch.
    _, stream = await shop.api.request("POST", "/api/v1/streams", token=token,
                                       json={"title": "Payouts"})
    await shop.services.streams.transition(stream["id"], StreamEvent.START,
                                           dt.datetime.now(dt.UTC))
    viewer, viewer_token = await shop.api.new_user()
    castles = -(-diamonds * 2 // 4999)  # 4,999 coins each, half of it to the creator
    await grant(shop.services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=castles * 4999, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    assert await _gift(shop, viewer_token, stream["id"], "castle", castles) == 201
    available = await shop.services.pool.fetchval(
        "SELECT balance FROM ledger_accounts WHERE id = $1", earnings)
    assert available >= diamonds
    account = await shop.fake.create_connected_account()
    response, _ = await shop.api.request("PUT", "/api/v1/me/payout-account", token=token,
                                         json={"stripe_account_id": account,
                                               "password": PASSWORD})
    assert response.status == 200
    return creator["id"], token, account


async def test_a_payout_is_a_connect_transfer_with_the_payout_id_as_key(shop: Shop) -> None:
    _, token, account = await _creator_with_diamonds(shop, 10_000)
    payout_id = str(uuid.uuid4())
    response, payout = await shop.api.request("POST", "/api/v1/me/payouts", token=token,
                                              json={"payout_id": payout_id, "diamonds": 4000})
    assert response.status == 201, payout
    assert (payout["status"], payout["amount_minor"]) == ("paid", 2000)
    transfer = shop.fake.transfers[payout["transfer_id"]]
    assert (transfer["destination"], transfer["amount"], transfer["transfer_group"]) == (
        account, 2000, payout_id)
    keys = [r.idempotency_key for r in shop.fake.requests if r.path == "/v1/transfers"]
    assert keys == [payout_id]


async def test_a_refused_transfer_voids_the_payout(shop: Shop) -> None:
    creator_id, token, _ = await _creator_with_diamonds(shop, 5000)
    await shop.services.payouts.set_account(uuid.UUID(creator_id), "acct_unknown1")
    response, payout = await shop.api.request("POST", "/api/v1/me/payouts", token=token,
                                              json={"payout_id": str(uuid.uuid4()),
                                                    "diamonds": 2000})
    assert response.status == 201 and payout["status"] == "failed" and payout["failure"]
    _, earnings = await shop.api.request("GET", "/api/v1/me/earnings", token=token)
    assert (earnings["pending_diamonds"], earnings["paid_diamonds"]) == (0, 0)
    assert earnings["available_diamonds"] >= 5000  # the diamonds came back
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))


async def test_a_crash_between_the_transfer_and_the_post_neither_loses_nor_pays_twice(
        shop: Shop) -> None:
    """The transfer is made but its answer never arrives (three times: the SDK's own retries
    with the same key fail too), so the payout stays pending with its diamonds reserved; the
    retry job finds the transfer by its group and posts it, once."""
    creator_id, token, account = await _creator_with_diamonds(shop, 5000)
    shop.fake.fail_next("/v1/transfers", "after", times=3, method="POST")
    payout_id = str(uuid.uuid4())
    response, payout = await shop.api.request("POST", "/api/v1/me/payouts", token=token,
                                              json={"payout_id": payout_id, "diamonds": 3000})
    assert response.status == 201 and payout["status"] == "pending", payout
    assert len(shop.fake.transfers) == 1  # Stripe did it
    _, earnings = await shop.api.request("GET", "/api/v1/me/earnings", token=token)
    assert (earnings["pending_diamonds"], earnings["paid_diamonds"]) == (3000, 0)
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))
    counts = await shop.services.payouts.retry_stuck()
    assert counts == {"paid": 1, "failed": 0, "pending": 0}
    resolved = await shop.services.payouts.get(uuid.UUID(payout_id))
    assert resolved.status == "paid"
    assert resolved.transfer_id == next(iter(shop.fake.transfers))
    assert len(shop.fake.transfers) == 1
    assert await shop.services.payouts.retry_stuck() == {"paid": 0, "failed": 0, "pending": 0}
    _, earnings = await shop.api.request("GET", "/api/v1/me/earnings", token=token)
    assert (earnings["pending_diamonds"], earnings["paid_diamonds"]) == (0, 3000)
    assert next(iter(shop.fake.transfers.values()))["destination"] == account
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))


async def test_a_process_killed_mid_payout_is_resolved_by_the_retry_job(shop: Shop) -> None:
    """The process dies while the transfer call is in flight (the request's task is cancelled
    after Stripe made the transfer, before any answer): the retry job posts it once."""
    _, token, _ = await _creator_with_diamonds(shop, 5000)
    creator = await shop.api.request("GET", "/api/v1/me", token=token)
    creator_id = uuid.UUID(creator[1]["id"])
    made = asyncio.Event()
    provider = shop.services.provider
    real_transfer = provider.transfer

    async def transfer_then_hang(**kwargs: Any) -> str:
        await real_transfer(**kwargs)
        made.set()
        await asyncio.sleep(3600)  # the answer never reaches the ledger
        raise AssertionError("unreachable")

    provider.transfer = transfer_then_hang  # type: ignore[method-assign]
    payout_id = uuid.uuid4()
    task = asyncio.create_task(shop.services.payouts.request(creator_id, payout_id, 2500))
    await asyncio.wait_for(made.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    provider.transfer = real_transfer  # type: ignore[method-assign]
    assert (await shop.services.payouts.get(payout_id)).status == "pending"
    assert await shop.services.payouts.retry_stuck() == {"paid": 1, "failed": 0, "pending": 0}
    assert len([t for t in shop.fake.transfers.values()
                if t["transfer_group"] == str(payout_id)]) == 1
    assert all(c.ok for c in await verify_postgres(shop.services.pool, analyze=False))
