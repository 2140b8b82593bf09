"""The payment provider boundary: Stripe, or the local test-payments provider.

Everything past this interface (purchases, webhooks' effects, payouts' ledger postings) is the
same code for both. A provider call either succeeds, is refused (:class:`ProviderRefused`: the
provider answered and said no, so nothing happened), or has an unknown outcome
(:class:`ProviderUnavailable`: a timeout, a 5xx, a lost connection; it may have happened, so
the caller keeps its record pending and asks again with the same idempotency key).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import stripe

from livecore.settings import Settings

log = logging.getLogger(__name__)

STRIPE_RETRIES = 2


class ProviderRefused(Exception):
    """The provider answered and refused: nothing happened there."""


class ProviderUnavailable(Exception):
    """The provider's answer is unknown: the request may or may not have taken effect."""


class InvalidSignature(Exception):
    """A webhook whose signature is missing, wrong or too old."""


@dataclass(frozen=True)
class Created:
    """A provider object made for a purchase: its id, and what the client needs."""

    id: str
    client_secret: str | None = None
    url: str | None = None


class PaymentProvider(Protocol):
    name: str
    test_mode: bool
    publishable_key: str | None
    accepts_webhooks: bool

    async def create_payment_intent(self, *, purchase_id: uuid.UUID, amount_minor: int,
                                    currency: str, description: str) -> Created: ...

    async def create_checkout(self, *, purchase_id: uuid.UUID, amount_minor: int,
                              currency: str, description: str, success_url: str,
                              cancel_url: str) -> Created: ...

    async def find_transfer(self, *, payout_id: uuid.UUID) -> str | None: ...

    async def transfer(self, *, payout_id: uuid.UUID, amount_minor: int, currency: str,
                       destination: str) -> str: ...

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def purchase_key(purchase_id: uuid.UUID, method: str) -> str:
    """The idempotency key of a purchase's provider call."""
    return f"purchase-{purchase_id}-{method}"


def payout_key(payout_id: uuid.UUID) -> str:
    """The idempotency key of a payout's transfer: the payout id itself."""
    return str(payout_id)


class StripeProvider:
    """Stripe through the official SDK (async, over aiohttp)."""

    name = "stripe"
    test_mode = False

    def __init__(self, settings: Settings) -> None:
        assert settings.stripe_secret_key is not None
        base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
        self._http = stripe.AIOHTTPClient()
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.reveal(), base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http, max_network_retries=STRIPE_RETRIES)
        self.publishable_key = settings.stripe_publishable_key
        secret = settings.stripe_webhook_secret
        self._webhook_secret = None if secret is None else secret.reveal()
        self.accepts_webhooks = self._webhook_secret is not None
        self._tolerance = settings.stripe_webhook_tolerance_s

    async def create_payment_intent(self, *, purchase_id: uuid.UUID, amount_minor: int,
                                    currency: str, description: str) -> Created:
        # The payment methods are the account's dashboard settings (automatic payment
        # methods are Stripe's default since API version 2023-08-16).
        params: dict[str, Any] = {
            "amount": amount_minor, "currency": currency,
            "metadata": {"purchase_id": str(purchase_id), "description": description},
        }
        intent = await self._call(self._client.v1.payment_intents.create_async,
                                  params, purchase_key(purchase_id, "payment_intent"))
        return Created(intent["id"], client_secret=intent["client_secret"])

    async def create_checkout(self, *, purchase_id: uuid.UUID, amount_minor: int,
                              currency: str, description: str, success_url: str,
                              cancel_url: str) -> Created:
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": currency, "unit_amount": amount_minor,
                "product_data": {"name": description}}}],
            "success_url": success_url, "cancel_url": cancel_url,
            "client_reference_id": str(purchase_id),
            "metadata": {"purchase_id": str(purchase_id)},
            "payment_intent_data": {"metadata": {"purchase_id": str(purchase_id)}},
        }
        session = await self._call(self._client.v1.checkout.sessions.create_async,
                                   params, purchase_key(purchase_id, "checkout"))
        return Created(session["id"], url=session["url"])

    async def find_transfer(self, *, payout_id: uuid.UUID) -> str | None:
        try:
            found = await self._client.v1.transfers.list_async(
                params={"transfer_group": str(payout_id), "limit": 3})
        except stripe.StripeError as exc:
            raise ProviderUnavailable(f"Stripe: {exc}") from exc
        for transfer in found.data:
            if not transfer["reversed"]:
                return str(transfer["id"])
        return None

    async def transfer(self, *, payout_id: uuid.UUID, amount_minor: int, currency: str,
                       destination: str) -> str:
        params: dict[str, Any] = {
            "amount": amount_minor, "currency": currency, "destination": destination,
            "transfer_group": str(payout_id), "metadata": {"payout_id": str(payout_id)},
        }
        made = await self._call(self._client.v1.transfers.create_async, params,
                                payout_key(payout_id))
        return str(made["id"])

    @staticmethod
    async def _call(method: Any, params: dict[str, Any], key: str) -> Any:
        try:
            return await method(params=params, options={"idempotency_key": key})
        except (stripe.CardError, stripe.InvalidRequestError) as exc:
            if isinstance(exc, stripe.IdempotencyError):
                # The same key with other parameters: a bug to look at, never a refusal.
                log.error("stripe idempotency error", extra={"key": key, "error": str(exc)})
                raise ProviderUnavailable(f"Stripe: {exc.user_message or exc}") from exc
            raise ProviderRefused(str(exc.user_message or exc)) from exc
        except stripe.StripeError as exc:  # connection, 5xx, rate limit, authentication
            raise ProviderUnavailable(f"Stripe: {exc.user_message or exc}") from exc

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        if self._webhook_secret is None:
            raise InvalidSignature("No webhook secret is configured.")
        try:
            stripe.Webhook.construct_event(payload, signature, self._webhook_secret,
                                           tolerance=self._tolerance)
            event = orjson.loads(payload)
        except (stripe.SignatureVerificationError, ValueError) as exc:
            raise InvalidSignature(str(exc)) from exc
        if not isinstance(event, dict) or not isinstance(event.get("id"), str):
            raise InvalidSignature("The body is not a Stripe event.")
        return event

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


class TestProvider:
    """The zero-configuration provider: no money moves. Checkouts are completed on the local
    page ``/pay/test/<purchase id>``, which builds the event Stripe would send; payouts get a
    local transfer id."""

    __test__ = False  # not a pytest test class
    name = "test"
    test_mode = True
    publishable_key: str | None = None
    accepts_webhooks = False

    def __init__(self, public_base: str | None = None) -> None:
        self._base = (public_base or "").rstrip("/")

    @staticmethod
    def _id(prefix: str, value: uuid.UUID) -> str:
        return f"{prefix}_test_{hashlib.sha256(value.bytes).hexdigest()[:24]}"

    async def create_payment_intent(self, *, purchase_id: uuid.UUID, amount_minor: int,
                                    currency: str, description: str) -> Created:
        intent = self._id("pi", purchase_id)
        return Created(intent, client_secret=f"{intent}_secret_test")

    async def create_checkout(self, *, purchase_id: uuid.UUID, amount_minor: int,
                              currency: str, description: str, success_url: str,
                              cancel_url: str) -> Created:
        return Created(self._id("cs", purchase_id), url=f"{self._base}/pay/test/{purchase_id}")

    def payment_intent_of(self, purchase_id: uuid.UUID) -> str:
        return self._id("pi", purchase_id)

    async def find_transfer(self, *, payout_id: uuid.UUID) -> str | None:
        return None

    async def transfer(self, *, payout_id: uuid.UUID, amount_minor: int, currency: str,
                       destination: str) -> str:
        return self._id("tr", payout_id)

    def verify_event(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        raise InvalidSignature("Test-payments mode takes no webhooks.")

    async def close(self) -> None:
        return None


def provider_for(settings: Settings) -> PaymentProvider:
    if settings.stripe_secret_key is not None:
        return StripeProvider(settings)
    return TestProvider(settings.public_url)
