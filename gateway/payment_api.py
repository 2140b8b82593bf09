"""HTTP endpoints of money in and out: coin packages, purchases, the Stripe webhook, the
test-payments page's action, spending limits, creator earnings and payouts.
See docs/payments.md."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiohttp import web

from gateway.api import Call, Route, base_url, confirm_password
from gateway.http import json_response
from ledger.payments import Purchase
from ledger.providers import InvalidSignature
from livecore.accounts import Permission
from livecore.errors import BadRequest, NotFound, ServiceUnavailable
from livecore.ids import parse_uuid, parse_uuid_field
from livecore.payments import METHODS, CoinPackage
from livecore.schemas import UUID, Schema

log = logging.getLogger(__name__)

#: Largest webhook body read (Stripe's events are a few kilobytes).
MAX_WEBHOOK_BYTES = 1024 * 1024

PACKAGE: Schema = {
    "type": "object",
    "properties": {
        "slug": {"type": "string"}, "coins": {"type": "integer"},
        "price_minor": {"type": "integer", "description": "In the currency's minor units."},
        "currency": {"type": "string"}, "is_active": {"type": "boolean"},
    },
    "required": ["slug", "coins", "price_minor", "currency", "is_active"],
}
PACKAGES: Schema = {
    "type": "object",
    "properties": {"packages": {"type": "array", "items": PACKAGE},
                   "test_mode": {"type": "boolean"},
                   "publishable_key": {"type": ["string", "null"]}},
    "required": ["packages", "test_mode", "publishable_key"],
}
PACKAGE_BODY: Schema = {
    "type": "object",
    "properties": {
        "coins": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "price_minor": {"type": "integer", "minimum": 50, "maximum": 100_000_000},
        "currency": {"type": "string", "pattern": "^[a-z]{3}$"},
        "is_active": {"type": "boolean"},
    },
    "required": ["coins", "price_minor", "currency"],
    "additionalProperties": False,
}
PURCHASE_BODY: Schema = {
    "type": "object",
    "properties": {
        "purchase_id": {**UUID, "description": "Chosen by the client; a retry reuses it."},
        "package": {"type": "string", "maxLength": 32},
        "method": {"enum": list(METHODS)},
    },
    "required": ["purchase_id", "package", "method"],
    "additionalProperties": False,
}
PURCHASE: Schema = {
    "type": "object",
    "properties": {
        "purchase_id": UUID,
        "status": {"enum": ["pending", "paid", "failed", "refunded", "partially_refunded",
                            "disputed"]},
        "package": {"type": "string"}, "coins": {"type": "integer"},
        "coins_reversed": {"type": "integer"}, "amount_minor": {"type": "integer"},
        "currency": {"type": "string"}, "method": {"enum": list(METHODS)},
        "client_secret": {"type": ["string", "null"],
                          "description": "For the PaymentSheet / Payment Element (pending)."},
        "checkout_url": {"type": ["string", "null"],
                         "description": "The hosted payment page (pending)."},
        "test_mode": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "paid_at": {"type": ["string", "null"]}, "refunded_minor": {"type": "integer"},
        "dispute_status": {"enum": [None, "open", "won", "lost"]},
        "failure": {"type": ["string", "null"]},
    },
    "required": ["purchase_id", "status", "package", "coins", "amount_minor", "currency",
                 "method", "test_mode", "created_at"],
}
PURCHASES: Schema = {
    "type": "object", "properties": {"purchases": {"type": "array", "items": PURCHASE}},
    "required": ["purchases"],
}
TEST_PAYMENT_BODY: Schema = {
    "type": "object", "properties": {"outcome": {"enum": ["pay", "decline"]}},
    "required": ["outcome"], "additionalProperties": False,
}
SPENDING: Schema = {
    "type": "object",
    "properties": {
        "currency": {"type": "string"}, "platform_cap_minor": {"type": "integer"},
        "own_cap_minor": {"type": ["integer", "null"]},
        "pending_own_cap": {"type": ["object", "null"]},
        "cap_minor": {"type": "integer"}, "spent_minor": {"type": "integer"},
        "resets_at": {"type": ["string", "null"]}, "cooldown": {"type": "object"},
    },
    "required": ["currency", "platform_cap_minor", "own_cap_minor", "pending_own_cap",
                 "cap_minor", "spent_minor", "resets_at", "cooldown"],
}
SPENDING_BODY: Schema = {
    "type": "object",
    "properties": {"own_cap_minor": {"type": ["integer", "null"], "minimum": 0}},
    "required": ["own_cap_minor"], "additionalProperties": False,
}
SETTLED: Schema = {
    "type": "object",
    "properties": {"settled_coins": {"type": "integer"}, "coins": {"type": "integer"},
                   "diamonds": {"type": "integer"}, "debt_coins": {"type": "integer"}},
    "required": ["settled_coins", "coins", "diamonds", "debt_coins"],
}
WEBHOOK_RESULT: Schema = {
    "type": "object",
    "properties": {"received": {"type": "boolean"},
                   "result": {"enum": ["applied", "duplicate", "ignored", "unmatched"]}},
    "required": ["received", "result"],
}
EARNINGS: Schema = {
    "type": "object",
    "properties": {
        "available_diamonds": {"type": "integer"}, "pending_diamonds": {"type": "integer"},
        "paid_diamonds": {"type": "integer"}, "earned_diamonds": {"type": "integer"},
        "currency": {"type": "string"}, "minor_per_100_diamonds": {"type": "integer"},
        "available_minor": {"type": "integer"}, "pending_minor": {"type": "integer"},
        "paid_minor": {"type": "integer"}, "min_payout_diamonds": {"type": "integer"},
        "payout_account": {"type": ["string", "null"]}, "test_mode": {"type": "boolean"},
        "daily": {"type": "array", "items": {
            "type": "object", "properties": {"day": {"type": "string", "format": "date"},
                                             "diamonds": {"type": "integer"}}}},
    },
    "required": ["available_diamonds", "pending_diamonds", "paid_diamonds",
                 "earned_diamonds", "currency", "available_minor", "pending_minor",
                 "paid_minor", "min_payout_diamonds", "payout_account", "daily"],
}
PAYOUT_ACCOUNT_BODY: Schema = {
    "type": "object",
    "properties": {
        "stripe_account_id": {"type": "string", "pattern": "^acct_[A-Za-z0-9]{1,64}$"},
        "password": {"type": "string", "maxLength": 256,
                     "description": "Your password again: where payouts go is not changed "
                                    "with a token alone."},
    },
    "required": ["stripe_account_id", "password"], "additionalProperties": False,
}
PAYOUT_ACCOUNT: Schema = {
    "type": "object", "properties": {"stripe_account_id": {"type": "string"}},
    "required": ["stripe_account_id"],
}
PAYOUT_BODY: Schema = {
    "type": "object",
    "properties": {"payout_id": {**UUID, "description": "Chosen by the client; a retry "
                                                        "reuses it."},
                   "diamonds": {"type": "integer", "minimum": 1}},
    "required": ["payout_id", "diamonds"], "additionalProperties": False,
}
PAYOUT: Schema = {
    "type": "object",
    "properties": {
        "payout_id": UUID, "status": {"enum": ["pending", "paid", "failed"]},
        "diamonds": {"type": "integer"}, "amount_minor": {"type": "integer"},
        "currency": {"type": "string"}, "destination": {"type": "string"},
        "transfer_id": {"type": ["string", "null"]}, "failure": {"type": ["string", "null"]},
        "attempts": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "resolved_at": {"type": ["string", "null"]},
    },
    "required": ["payout_id", "status", "diamonds", "amount_minor", "currency",
                 "transfer_id", "failure", "created_at", "resolved_at"],
}
PAYOUTS: Schema = {
    "type": "object", "properties": {"payouts": {"type": "array", "items": PAYOUT}},
    "required": ["payouts"],
}


# -- packages and purchases -----------------------------------------------------------------


async def list_packages(call: Call) -> web.StreamResponse:
    provider = call.services.provider
    packages = await call.services.purchases.packages()
    return json_response({"packages": [p.json() for p in packages],
                          "test_mode": provider.test_mode,
                          "publishable_key": provider.publishable_key})


async def put_package(call: Call) -> web.StreamResponse:
    body = call.body
    package = CoinPackage(call.request.match_info["slug"], body["coins"], body["price_minor"],
                          body["currency"], body.get("is_active", True))
    return json_response((await call.services.purchases.save_package(package)).json())


def _purchase_json(call: Call, purchase: Purchase) -> dict[str, Any]:
    """The purchase as its buyer sees it; a local checkout page's URL made absolute (for apps
    that open it outside the site)."""
    body = purchase.json()
    if body["checkout_url"] and body["checkout_url"].startswith("/"):
        body["checkout_url"] = base_url(call) + body["checkout_url"]
    return body


async def create_purchase(call: Call) -> web.StreamResponse:
    purchase_id = parse_uuid_field(call.body["purchase_id"], "purchase_id")
    base = base_url(call)
    purchase, is_new = await call.services.purchases.create(
        call.account, purchase_id=purchase_id, slug=call.body["package"],
        method=call.body["method"], success_url=f"{base}/coins?purchase={purchase_id}",
        cancel_url=f"{base}/coins?purchase={purchase_id}&cancelled=1")
    return json_response(_purchase_json(call, purchase), status=201 if is_new else 200)


def _purchase_id(call: Call) -> uuid.UUID:
    return parse_uuid(call.request.match_info["purchase_id"], what="purchase")


async def _own_purchase(call: Call) -> Purchase:
    purchase = await call.services.purchases.get(_purchase_id(call))
    if purchase.user_id != call.account.id:
        raise NotFound("No such purchase.", code="purchase_not_found")
    return purchase


async def get_purchase(call: Call) -> web.StreamResponse:
    return json_response(_purchase_json(call, await _own_purchase(call)))


async def my_purchases(call: Call) -> web.StreamResponse:
    purchases = await call.services.purchases.of_user(call.account.id)
    return json_response({"purchases": [_purchase_json(call, p) for p in purchases]})


async def test_payment(call: Call) -> web.StreamResponse:
    purchase = await call.services.purchases.complete_test_payment(
        call.account, _purchase_id(call), call.body["outcome"] == "pay")
    return json_response(_purchase_json(call, purchase))


async def stripe_webhook(call: Call) -> web.StreamResponse:
    """Verify the signature over the raw body, then apply the event once."""
    provider = call.services.provider
    if not provider.accepts_webhooks:
        raise ServiceUnavailable("This server has no Stripe webhook secret configured.",
                                 code="webhooks_not_configured")
    request = call.request
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise BadRequest("The event is too large.", code="invalid_event")
    payload = await request.read()
    try:
        event = provider.verify_event(payload, request.headers.get("Stripe-Signature"))
    except InvalidSignature as exc:
        log.warning("webhook refused: bad signature", extra={"error": str(exc)})
        raise BadRequest("The Stripe-Signature header does not verify.",
                         code="invalid_signature") from None
    result = await call.services.purchases.handle_event(event)
    log.info("webhook event", extra={"event_id": event["id"], "type": event.get("type"),
                                     "result": result})
    return json_response({"received": True, "result": result})


async def settle_debt(call: Call) -> web.StreamResponse:
    settled = await call.services.purchases.settle_debt(call.account.id)
    wallet = await call.services.gifts.wallet(call.account.id)
    return json_response({"settled_coins": settled, **wallet})


async def get_spending(call: Call) -> web.StreamResponse:
    return json_response(await call.services.purchases.spending(call.account.id))


async def put_spending(call: Call) -> web.StreamResponse:
    return json_response(await call.services.purchases.set_own_cap(
        call.account.id, call.body["own_cap_minor"]))


# -- creator payouts --------------------------------------------------------------------------


async def my_earnings(call: Call) -> web.StreamResponse:
    return json_response(await call.services.payouts.earnings(call.account.id))


async def put_payout_account(call: Call) -> web.StreamResponse:
    await confirm_password(call, call.body["password"])
    saved = await call.services.payouts.set_account(call.account.id,
                                                    call.body["stripe_account_id"])
    log.info("payout account changed", extra={"user_id": str(call.account.id),
                                              "stripe_account_id": saved})
    return json_response({"stripe_account_id": saved})


async def request_payout(call: Call) -> web.StreamResponse:
    payout, is_new = await call.services.payouts.request(
        call.account.id, parse_uuid_field(call.body["payout_id"], "payout_id"),
        call.body["diamonds"])
    return json_response(payout.json(), status=201 if is_new else 200)


async def my_payouts(call: Call) -> web.StreamResponse:
    payouts = await call.services.payouts.of_creator(call.account.id)
    return json_response({"payouts": [p.json() for p in payouts]})


PAYMENT_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/coins/packages", list_packages,
          "The coin packages on sale, and whether this server takes real payments.", "public",
          "payments", response=PACKAGES),
    Route("PUT", "/api/v1/coins/packages/{slug}", put_package,
          "Add or change a coin package (admins).", Permission.ECONOMY_MANAGE, "payments",
          body=PACKAGE_BODY, response=PACKAGE, errors=(403, 422)),
    Route("POST", "/api/v1/purchases", create_purchase,
          "Buy a coin package: a PaymentIntent (client_secret) or a Checkout Session "
          "(checkout_url). Coins are credited from the provider's webhook only; 201 when new, "
          "200 when replaying a retry.", "user", "payments", body=PURCHASE_BODY,
          response=PURCHASE, status=201, errors=(403, 404, 409, 422, 429, 503)),
    Route("GET", "/api/v1/purchases/{purchase_id}", get_purchase, "One of your purchases.",
          "user", "payments", response=PURCHASE, errors=(404,)),
    Route("GET", "/api/v1/me/purchases", my_purchases, "Your purchases, newest first.", "user",
          "payments", response=PURCHASES),
    Route("POST", "/api/v1/test-payments/{purchase_id}", test_payment,
          "Test-payments mode only: pay or decline a pending purchase as its local checkout "
          "page does.", "user", "payments", body=TEST_PAYMENT_BODY, response=PURCHASE,
          errors=(404, 409)),
    Route("POST", "/api/v1/payments/stripe/webhook", stripe_webhook,
          "Stripe's webhook: verifies Stripe-Signature over the raw body, applies each event "
          "once.", "public", "payments", response=WEBHOOK_RESULT, errors=(400, 503)),
    Route("POST", "/api/v1/me/debt/settle", settle_debt,
          "Pay the coins you owe (after a refund or chargeback) from your wallet, as far as it "
          "goes; your next purchase pays it first anyway.", "user", "payments",
          response=SETTLED),
    Route("GET", "/api/v1/me/spending", get_spending,
          "Your daily spending cap, what counts against it, and the cool-down.", "user",
          "payments", response=SPENDING),
    Route("PUT", "/api/v1/me/spending", put_spending,
          "Set your own daily cap (null: the platform's). Lower applies at once, higher after "
          "24 hours.", "user", "payments", body=SPENDING_BODY, response=SPENDING,
          errors=(422,)),
    Route("GET", "/api/v1/me/earnings", my_earnings,
          "Your available, pending and paid-out diamonds, their money, and diamonds per day "
          "(creators).", Permission.STREAM_CREATE, "payouts", response=EARNINGS,
          errors=(403,)),
    Route("PUT", "/api/v1/me/payout-account", put_payout_account,
          "Your Stripe Connect account for payouts, with your password (creators).",
          Permission.STREAM_CREATE, "payouts", body=PAYOUT_ACCOUNT_BODY,
          response=PAYOUT_ACCOUNT, errors=(403, 422, 429)),
    Route("POST", "/api/v1/me/payouts", request_payout,
          "Pay out diamonds to your connected account: reserved, transferred, then posted "
          "(or voided); 201 when new, 200 when replaying a retry (creators).",
          Permission.STREAM_CREATE, "payouts", body=PAYOUT_BODY, response=PAYOUT, status=201,
          errors=(402, 403, 409, 422)),
    Route("GET", "/api/v1/me/payouts", my_payouts, "Your payouts, newest first (creators).",
          Permission.STREAM_CREATE, "payouts", response=PAYOUTS, errors=(403,)),
)
