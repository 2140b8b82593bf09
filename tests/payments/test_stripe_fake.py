"""The Stripe fake itself, through the real ``stripe`` SDK (no mocks): what the payment tests
rely on must behave as Stripe does."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import aiohttp
import pytest
import stripe
from stripe.params import (
    PaymentIntentCreateParams,
    PaymentMethodCreateParams,
    TransferCreateParams,
)
from stripe.params.checkout import SessionCreateParams

from tests.stripe_fake import FakeStripe, WebhookRecorder, deliver, sign

CARD: PaymentMethodCreateParams = {
    "type": "card",
    "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
}


async def confirmed_payment_intent(client: stripe.StripeClient, amount: int = 500,
                                   metadata: dict[str, str] | None = None) -> stripe.PaymentIntent:
    """A card PaymentIntent at localstripe, created and confirmed through the fake. The
    payment method is given at creation: localstripe cannot confirm with one."""
    method = await client.v1.payment_methods.create_async(params=CARD)
    params: PaymentIntentCreateParams = {
        "amount": amount, "currency": "usd", "payment_method": method.id,
        "metadata": metadata or {},
    }
    intent = await client.v1.payment_intents.create_async(params=params)
    return await client.v1.payment_intents.confirm_async(intent.id)


def checkout_params(purchase_id: str = "p-1", **overrides: Any) -> SessionCreateParams:
    params: dict[str, Any] = {
        "mode": "payment",
        "line_items": [{
            "price_data": {"currency": "usd", "unit_amount": 499,
                           "product_data": {"name": "500 coins"}},
            "quantity": 1,
        }],
        "success_url": "http://app.test/coins?purchase=p-1",
        "cancel_url": "http://app.test/coins?purchase=p-1&cancelled=1",
        "client_reference_id": purchase_id,
        "metadata": {"purchase_id": purchase_id},
        "payment_intent_data": {"metadata": {"purchase_id": purchase_id}},
    }
    params.update(overrides)
    return cast(SessionCreateParams, {k: v for k, v in params.items() if v is not None})


def verified(delivery_payload: bytes, header: str | None, secret: str) -> stripe.Event:
    return stripe.Webhook.construct_event(delivery_payload.decode(), header, secret)


# -- localstripe through the fake --------------------------------------------------------------


async def test_payment_intent_and_refund_events_are_relayed_signed(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    intent = await confirmed_payment_intent(stripe_client, metadata={"purchase_id": "p-9"})
    assert intent.status == "succeeded"
    charge_id = await stripe_fake.charge_of(intent.id)
    assert charge_id.startswith("ch_")

    refund = await stripe_client.v1.refunds.create_async(
        params={"payment_intent": intent.id, "amount": 200}
    )
    assert refund.charge == charge_id

    succeeded = await stripe_fake.wait_for_event("payment_intent.succeeded", object_id=intent.id)
    refunded = await stripe_fake.wait_for_event("charge.refunded", object_id=charge_id)
    assert succeeded.source == "localstripe" and refunded.source == "fake"
    assert succeeded.delivered_status == refunded.delivered_status == 200

    for recorded in (succeeded, refunded):
        [delivery] = [d for d in webhook.deliveries if d.payload == recorded.payload]
        event = verified(delivery.payload, delivery.signature, stripe_fake.webhook_secret)
        assert event.id == recorded.id
    paid = verified(succeeded.payload, sign(succeeded.payload, "whsec_x"), "whsec_x")
    assert paid.data.object.metadata["purchase_id"] == "p-9"
    charge = refunded.data_object
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (500, 200, False)
    assert charge["payment_intent"] == intent.id
    assert refunded.data["request"]["idempotency_key"] is not None  # the SDK always sends one


async def test_dispute_of_a_localstripe_charge(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    intent = await confirmed_payment_intent(stripe_client, amount=700)
    charge_id = await stripe_fake.charge_of(intent.id)

    created = await stripe_fake.open_dispute(charge_id)
    dispute = created["data"]["object"]
    assert created["type"] == "charge.dispute.created"
    assert dispute["id"].startswith("du_")
    assert (dispute["charge"], dispute["payment_intent"]) == (charge_id, intent.id)
    assert (dispute["amount"], dispute["currency"]) == (700, "usd")
    assert (dispute["status"], dispute["reason"]) == ("needs_response", "fraudulent")

    closed = await stripe_fake.close_dispute(dispute["id"], status="lost")
    assert closed["type"] == "charge.dispute.closed"
    assert closed["data"]["object"]["status"] == "lost"
    disputes = webhook.of_type("charge.dispute.created") + webhook.of_type("charge.dispute.closed")
    assert [json.loads(d.payload)["id"] for d in disputes] == [created["id"], closed["id"]]
    fetched = await stripe_client.v1.disputes.retrieve_async(dispute["id"])
    assert fetched.status == "lost"
    with pytest.raises(ValueError, match="already closed"):
        await stripe_fake.close_dispute(dispute["id"], status="won")

    refunded = await stripe_fake.refund_charge(charge_id, 300)  # as from the dashboard
    assert refunded["type"] == "charge.refunded"
    assert refunded["data"]["object"]["amount_refunded"] == 300
    assert refunded["data"]["object"]["payment_intent"] == intent.id


async def test_requests_without_an_api_key_are_refused(stripe_fake: FakeStripe) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{stripe_fake.api_base}/v1/transfers") as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "invalid_request_error"


# -- idempotency keys --------------------------------------------------------------------------


async def test_same_key_and_params_replay_the_first_answer(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    method = await stripe_client.v1.payment_methods.create_async(params=CARD)
    params: PaymentIntentCreateParams = {"amount": 900, "currency": "usd",
                                         "payment_method": method.id}

    async def create() -> stripe.PaymentIntent:
        return await stripe_client.v1.payment_intents.create_async(
            params=params, options={"idempotency_key": "purchase-1-payment_intent"}
        )

    intents = await asyncio.gather(create(), create(), create())
    again = await create()
    assert len({intent.id for intent in [*intents, again]}) == 1
    posts = [r for r in stripe_fake.requests if r.path == "/v1/payment_intents"]
    assert len(posts) == 4
    assert [r.replayed for r in posts].count(False) == 1  # localstripe saw one create
    assert again.last_response is not None
    assert again.last_response.headers["Idempotent-Replayed"] == "true"


async def test_same_key_with_other_params_or_path_is_an_idempotency_error(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    account = await stripe_fake.create_connected_account()
    options: stripe.RequestOptions = {"idempotency_key": "payout-1"}
    first: TransferCreateParams = {"amount": 100, "currency": "usd", "destination": account}
    await stripe_client.v1.transfers.create_async(params=first, options=options)

    with pytest.raises(stripe.IdempotencyError, match="same parameters"):
        await stripe_client.v1.transfers.create_async(
            params={"amount": 101, "currency": "usd", "destination": account}, options=options
        )
    with pytest.raises(stripe.IdempotencyError, match="same endpoint"):
        await stripe_client.v1.accounts.create_async(params={"type": "express"},
                                                     options=options)
    assert len(stripe_fake.transfers) == 1


async def test_validation_errors_are_not_saved_for_the_key(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    options: stripe.RequestOptions = {"idempotency_key": "payout-2"}
    params: TransferCreateParams = {"amount": 100, "currency": "usd",
                                    "destination": "acct_later"}
    with pytest.raises(stripe.InvalidRequestError):
        await stripe_client.v1.transfers.create_async(params=params, options=options)
    stripe_fake.accounts["acct_later"] = {"id": "acct_later", "object": "account"}
    transfer = await stripe_client.v1.transfers.create_async(params=params, options=options)
    assert transfer.destination == "acct_later"


# -- Checkout Sessions -------------------------------------------------------------------------


async def test_checkout_session_create_complete_and_signed_event(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    session = await stripe_client.v1.checkout.sessions.create_async(
        params=checkout_params("p-42"), options={"idempotency_key": "purchase-p-42-checkout"}
    )
    assert session.id.startswith("cs_test_")
    assert (session.object, session.mode, session.status) == ("checkout.session", "payment",
                                                               "open")
    assert (session.payment_status, session.payment_intent) == ("unpaid", None)
    assert (session.amount_total, session.currency) == (499, "usd")
    assert session.client_reference_id == "p-42"
    assert session.metadata is not None and session.metadata.to_dict() == {"purchase_id": "p-42"}
    assert session.url == f"{stripe_fake.api_base}/checkout/{session.id}"
    assert session.livemode is False

    async with aiohttp.ClientSession() as browser:
        async with browser.get(session.url) as page:
            assert page.status == 200 and "Pay" in await page.text()

    event = await stripe_fake.complete_checkout(session.id)
    assert event["type"] == "checkout.session.completed"
    assert set(event) >= {"id", "object", "api_version", "created", "livemode",
                          "pending_webhooks", "request", "data"}
    completed = event["data"]["object"]
    assert (completed["status"], completed["payment_status"]) == ("complete", "paid")
    [delivery] = webhook.deliveries
    verified_event = verified(delivery.payload, delivery.signature, stripe_fake.webhook_secret)
    assert verified_event.id == event["id"]
    assert verified_event.data.object.metadata["purchase_id"] == "p-42"
    assert stripe_fake.events[-1].delivered_status == 200

    fetched = await stripe_client.v1.checkout.sessions.retrieve_async(session.id)
    assert fetched.payment_intent == completed["payment_intent"]
    intent = await stripe_client.v1.payment_intents.retrieve_async(completed["payment_intent"])
    assert intent.metadata["purchase_id"] == "p-42"
    assert (await stripe_fake.charge_of(intent.id)).startswith("ch_")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"mode": None}, "mode"),
        ({"mode": "subscription"}, "mode"),
        ({"line_items": None}, "line_items"),
        ({"success_url": None}, "success_url"),
        ({"line_items": [{"price_data": {"currency": "usd", "unit_amount": 1,
                                         "product_data": {"name": "x"}}}]},
         "line_items[0][quantity]"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_checkout_session_validation(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, change: dict[str, Any],
    param: str,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await stripe_client.v1.checkout.sessions.create_async(params=checkout_params(**change))
    assert raised.value.param == param
    assert raised.value.http_status == 400
    assert stripe_fake.checkout_sessions == {}


async def test_the_hosted_page_pays_and_returns_to_the_success_url(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    session = await stripe_client.v1.checkout.sessions.create_async(
        params=checkout_params(success_url="http://app.test/done?s={CHECKOUT_SESSION_ID}")
    )
    assert session.url is not None
    async with aiohttp.ClientSession() as browser:
        async with browser.post(f"{session.url}/pay", allow_redirects=False) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == f"http://app.test/done?s={session.id}"
    [delivery] = webhook.of_type("checkout.session.completed")
    event = verified(delivery.payload, delivery.signature, stripe_fake.webhook_secret)
    assert event.data.object.payment_status == "paid"


async def test_unknown_checkout_session_is_missing(stripe_client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await stripe_client.v1.checkout.sessions.retrieve_async("cs_test_nope")
    assert (raised.value.http_status, raised.value.code) == (404, "resource_missing")


async def test_delayed_checkout_payments_and_expiry(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    first, second, third = [
        await stripe_client.v1.checkout.sessions.create_async(params=checkout_params(f"p-{n}"))
        for n in range(3)
    ]
    completed = await stripe_fake.complete_checkout(first.id, payment="async_pending")
    assert completed["data"]["object"]["payment_status"] == "unpaid"
    settled = await stripe_fake.settle_async_checkout(first.id, succeeded=True)
    assert settled["type"] == "checkout.session.async_payment_succeeded"
    assert settled["data"]["object"]["payment_status"] == "paid"

    await stripe_fake.complete_checkout(second.id, payment="async_pending")
    failed = await stripe_fake.settle_async_checkout(second.id, succeeded=False)
    assert failed["type"] == "checkout.session.async_payment_failed"
    assert failed["data"]["object"]["payment_status"] == "unpaid"

    expired = await stripe_fake.expire_checkout(third.id)
    assert expired["data"]["object"]["status"] == "expired"
    with pytest.raises(ValueError, match="expired, not open"):
        await stripe_fake.complete_checkout(third.id)
    assert [json.loads(d.payload)["type"] for d in webhook.deliveries] == [
        "checkout.session.completed", "checkout.session.async_payment_succeeded",
        "checkout.session.completed", "checkout.session.async_payment_failed",
        "checkout.session.expired",
    ]


async def test_refunds_of_a_checkout_payment_add_up(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    session = await stripe_client.v1.checkout.sessions.create_async(params=checkout_params())
    completed = await stripe_fake.complete_checkout(session.id)
    intent_id = completed["data"]["object"]["payment_intent"]
    charge_id = await stripe_fake.charge_of(intent_id)

    first = await stripe_fake.refund_charge(charge_id, 100)
    assert first["type"] == "charge.refunded"
    assert (first["data"]["object"]["amount_refunded"], first["data"]["object"]["refunded"]) == (
        100, False)
    # A refund through the API: Stripe sends its event afterwards, in the background.
    seen = len(stripe_fake.events)
    await stripe_client.v1.refunds.create_async(params={"payment_intent": intent_id})
    last = await stripe_fake.wait_for_event("charge.refunded", object_id=charge_id, start=seen)
    charge = last.data_object
    assert (charge["id"], charge["object"], charge["currency"]) == (charge_id, "charge", "usd")
    assert (charge["amount"], charge["amount_refunded"], charge["refunded"]) == (499, 499, True)
    assert charge["payment_intent"] == intent_id
    with pytest.raises(stripe.InvalidRequestError, match="already been refunded"):
        await stripe_client.v1.refunds.create_async(params={"charge": charge_id})


# -- Connect -----------------------------------------------------------------------------------


async def test_transfers_to_known_and_unknown_accounts(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    account = await stripe_client.v1.accounts.create_async(params={"type": "express"})
    assert account.id.startswith("acct_")
    assert (await stripe_client.v1.accounts.retrieve_async(account.id)).type == "express"

    made = [
        await stripe_client.v1.transfers.create_async(params={
            "amount": amount, "currency": "usd", "destination": account.id,
            "transfer_group": group, "metadata": {"payout_id": group},
        })
        for amount, group in [(1000, "payout-a"), (250, "payout-b"), (300, "payout-a")]
    ]
    assert made[0].id.startswith("tr_")
    assert (made[0].amount, made[0].currency, made[0].destination) == (1000, "usd", account.id)
    assert made[0].reversed is False and made[0].metadata["payout_id"] == "payout-a"

    listed = await stripe_client.v1.transfers.list_async(params={"transfer_group": "payout-a"})
    assert [t.id for t in listed.data] == [made[2].id, made[0].id]  # newest first
    assert listed.has_more is False
    assert (await stripe_client.v1.transfers.retrieve_async(made[1].id)).amount == 250

    with pytest.raises(stripe.InvalidRequestError) as raised:
        await stripe_client.v1.transfers.create_async(
            params={"amount": 100, "currency": "usd", "destination": "acct_unknown"}
        )
    assert (raised.value.http_status, raised.value.code, raised.value.param) == (
        400, "resource_missing", "destination")
    with pytest.raises(stripe.InvalidRequestError) as raised:
        await stripe_client.v1.transfers.create_async(
            params={"amount": 0, "currency": "usd", "destination": account.id}
        )
    assert raised.value.param == "amount"
    assert len(stripe_fake.transfers) == 3


# -- faults ------------------------------------------------------------------------------------


async def test_fault_after_the_work_leaves_a_transfer_that_a_retry_replays(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    account = await stripe_fake.create_connected_account()
    params: TransferCreateParams = {"amount": 500, "currency": "usd", "destination": account,
                                    "transfer_group": "payout-7"}
    options: stripe.RequestOptions = {"idempotency_key": "payout-7"}
    stripe_fake.fail_next("/v1/transfers", "after")

    with pytest.raises(stripe.APIError) as raised:
        await stripe_client.v1.transfers.create_async(params=params, options=options)
    assert raised.value.http_status == 500
    [made] = stripe_fake.transfers.values()  # the provider acted; the caller cannot know

    retried = await stripe_client.v1.transfers.create_async(params=params, options=options)
    assert retried.id == made["id"]
    assert len(stripe_fake.transfers) == 1
    found = await stripe_client.v1.transfers.list_async(params={"transfer_group": "payout-7"})
    assert [t.id for t in found.data] == [made["id"]]
    assert stripe_fake.calls("/v1/transfers", "POST") == 2


async def test_fault_before_the_work_does_nothing(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    account = await stripe_fake.create_connected_account()
    params: TransferCreateParams = {"amount": 500, "currency": "usd", "destination": account}
    stripe_fake.fail_next("/v1/transfers", "before", times=2)
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            await stripe_client.v1.transfers.create_async(
                params=params, options={"idempotency_key": "payout-8"}
            )
    assert stripe_fake.transfers == {}
    await stripe_client.v1.transfers.create_async(
        params=params, options={"idempotency_key": "payout-8"}
    )
    assert len(stripe_fake.transfers) == 1
    assert stripe_fake.calls("/v1/transfers") == 3


async def test_a_proxied_request_can_fail_after_the_work(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient
) -> None:
    method = await stripe_client.v1.payment_methods.create_async(params=CARD)
    params: PaymentIntentCreateParams = {"amount": 300, "currency": "usd",
                                         "payment_method": method.id}
    options: stripe.RequestOptions = {"idempotency_key": "purchase-3-payment_intent"}
    stripe_fake.fail_next("/v1/payment_intents", "after")
    with pytest.raises(stripe.APIError):
        await stripe_client.v1.payment_intents.create_async(params=params, options=options)
    intent = await stripe_client.v1.payment_intents.create_async(params=params, options=options)
    posts = [r for r in stripe_fake.requests if r.path == "/v1/payment_intents"]
    assert [(r.status, r.replayed) for r in posts] == [(500, False), (200, True)]
    assert intent.status == "requires_confirmation"


# -- signatures and re-delivery ----------------------------------------------------------------


async def test_signatures_redelivery_stale_and_forged(
    stripe_fake: FakeStripe, stripe_client: stripe.StripeClient, webhook: WebhookRecorder
) -> None:
    session = await stripe_client.v1.checkout.sessions.create_async(params=checkout_params())
    await stripe_fake.complete_checkout(session.id)
    [recorded] = stripe_fake.events
    secret = stripe_fake.webhook_secret

    statuses = await asyncio.gather(*[deliver(webhook.url, recorded.payload, secret)
                                      for _ in range(3)])
    assert [status for status, _ in statuses] == [200, 200, 200]
    assert len(webhook.deliveries) == 4
    for delivery in webhook.deliveries:
        assert delivery.payload == recorded.payload
        verified(delivery.payload, delivery.signature, secret)

    stale = sign(recorded.payload, secret, int(time.time()) - 3600)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        verified(recorded.payload, stale, secret)
    forged = sign(recorded.payload, "whsec_not_the_secret")
    with pytest.raises(stripe.SignatureVerificationError):
        verified(recorded.payload, forged, secret)
    tampered = recorded.payload.replace(b'"paid"', b'"unpaid"')
    with pytest.raises(stripe.SignatureVerificationError):
        verified(tampered, webhook.deliveries[0].signature, secret)
    await deliver(webhook.url, recorded.payload, secret, signature=forged)
    assert webhook.deliveries[-1].signature == forged
