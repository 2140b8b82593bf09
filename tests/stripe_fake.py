"""A fake Stripe for the payment tests: what localstripe lacks, in front of localstripe.

Stripe's servers are unreachable from the machines that run the tests, yet the payment code
must be exercised through the real ``stripe`` SDK, over HTTP, with real webhook signatures.
localstripe (PyPI, a subprocess started by ``tests/payments/conftest.py``) imitates Stripe's
API statefully for PaymentIntents, payment methods and refunds, and sends signed webhooks. It
lacks Checkout Sessions, Connect (accounts, transfers) and disputes; it ignores
``Idempotency-Key``; it sends no ``charge.refunded``; and nothing in it can lose a response
after doing the work. :class:`FakeStripe` fills those gaps: an aiohttp server in the test's
own event loop that answers them itself and forwards every other ``/v1/`` request to
localstripe, so the code under test needs one base URL
(``stripe.StripeClient(key, base_addresses={"api": fake.api_base}, ...)``).

Every request under ``/v1/`` goes through the same layers (``FakeStripe._api_middleware``):

1. it is recorded in ``fake.requests`` (``fake.calls(prefix)`` counts them);
2. an injected ``before`` fault answers 500 at once, having done nothing;
3. the API key is checked (401 without one, as Stripe);
4. a POST with an ``Idempotency-Key`` takes the key's lock. A saved response for the key is
   replayed (``Idempotent-Replayed: true``) if the path and form parameters are the same, and
   is an ``idempotency_error`` (400) if not. As at Stripe, a response is saved only when the
   endpoint executed (2xx, or 402 for a declined card); a request that failed validation
   saves nothing and may be retried with the same key
   (https://docs.stripe.com/api/idempotent_requests);
5. the handler runs: the fake's own, or the proxy to localstripe;
6. an injected ``after`` fault replaces the answer with a 500 although the work is done and
   its response saved for the key: a crash or lost response after the provider acted, which
   only a retry with the same key (or a look-up) can resolve. A ``hang`` fault does the work
   too, then answers nothing until the fake stops (the caller's process can be killed while it
   waits).

Events have two sources. The fake's own are built in Stripe's envelope, signed per endpoint
and POSTed to every URL given to :meth:`FakeStripe.add_webhook`: the control methods
(``complete_checkout`` and the like, which tests call directly) deliver before they return
and return the event; events caused by API calls (a refund, an expiry) are delivered in the
background, as Stripe does, so the code under test is never inside its own webhook while it
waits for Stripe. localstripe's events (``payment_intent.succeeded``, ...) reach the fake's
relay endpoint about one second late (localstripe sleeps 1 s before sending); the relay
checks localstripe's signature, keeps only events about objects created through this fake
(localstripe lives for the whole test session, so events of earlier tests would otherwise leak
into later ones), and forwards the raw body, re-signed, to the registered URLs. Both kinds are
recorded in ``fake.events`` in delivery order; :meth:`FakeStripe.wait_for_event` awaits one.

Where localstripe differs from Stripe (visible through the proxy): a PaymentIntent's
``latest_charge`` is the whole charge object, not its id (see :meth:`FakeStripe.charge_of`);
the deprecated ``charges`` list is present; its events carry ``api_version`` 2017-08-15 and
no ``pending_webhooks`` or ``request``; confirming with a ``payment_method`` is "Not
implemented" (give the payment method when creating the PaymentIntent).

With stripe 16, call the services under ``client.v1`` (``client.v1.payment_intents``...):
``client.payment_intents`` and the like still work but warn (DeprecationWarning), which the
test suite's ``filterwarnings = error`` turns into a failure. A ``StripeClient`` retries
nothing unless given ``max_network_retries``; with retries, the SDK itself resends a 5xx
with the same idempotency key, which hides an ``after`` fault from the caller.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

import aiohttp
import stripe
from aiohttp import web

logger = logging.getLogger(__name__)

#: The API version written into the events the fake builds: the SDK's own.
API_VERSION: str = stripe.api_version

DELIVERY_TIMEOUT_S = 10.0
RELAY_TOLERANCE_S = 300

FaultMode = Literal["before", "after", "hang"]
CheckoutPayment = Literal["paid", "async_pending"]
DisputeOutcome = Literal["won", "lost"]

REQUEST_ID = web.RequestKey("stripe_fake_request_id", str)

_ALPHABET = string.ascii_letters + string.digits
_OPEN_DISPUTE_STATUSES = ("needs_response", "under_review", "warning_needs_response")


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: ``prefix`` and random letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header value Stripe sends with ``payload``:
    ``t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<payload>" keyed with the endpoint secret>``
    (https://docs.stripe.com/webhooks#verify-manually)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), b"%d." % ts + payload, hashlib.sha256)
    return f"t={ts},v1={mac.hexdigest()}"


async def deliver(
    url: str,
    payload: bytes,
    secret: str,
    timestamp: int | None = None,
    signature: str | None = None,
) -> tuple[int, bytes]:
    """POST ``payload`` to ``url`` as Stripe delivers a webhook; returns (status, body).

    Signed with ``secret`` at ``timestamp`` (now by default) unless ``signature`` is given,
    which is then sent verbatim (a forged or stale header)."""
    async with aiohttp.ClientSession() as session:
        header = signature if signature is not None else sign(payload, secret, timestamp)
        return await _post_event(session, url, payload, header)


async def _post_event(
    session: aiohttp.ClientSession, url: str, payload: bytes, signature: str
) -> tuple[int, bytes]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": signature,
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
    async with session.post(url, data=payload, headers=headers, timeout=timeout) as response:
        return response.status, await response.read()


class ApiError(Exception):
    """An error answer in Stripe's shape (https://docs.stripe.com/api/errors)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}

    def response(self) -> web.Response:
        return _json_response(self.body(), status=self.status)


def _json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(obj, indent=2).encode(),
        content_type="application/json",
        charset="utf-8",
    )


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required param: {param}.", code="parameter_missing",
                    param=param)


def _no_such(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


# -- form parameters ------------------------------------------------------------------------

_KEY_PART = re.compile(r"\[([^\[\]]*)\]")


def parse_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding to nested values: ``a[b][0][c]=v`` gives
    ``{"a": {"b": [{"c": "v"}]}}`` (dicts whose keys are all digits become lists)."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (_KEY_PART.findall("[" + rest) if rest else [])
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ApiError(400, f"Invalid parameters: {key}", param=key)
            node = child
        last = parts[-1] if parts[-1] != "" else str(len(node))
        if isinstance(node.get(last), dict):
            raise ApiError(400, f"Invalid parameters: {key}", param=key)
        node[last] = value
    listed = _listify(root)
    assert isinstance(listed, dict)
    return listed


def _listify(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if value and all(k.isdigit() for k in value):
        return [_listify(value[k]) for k in sorted(value, key=int)]
    return {k: _listify(v) for k, v in value.items()}


def _reject_unknown(params: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            name = f"{prefix}[{key}]" if prefix else key
            raise ApiError(400, f"Received unknown parameter: {name}",
                           code="parameter_unknown", param=name)


def _str(params: dict[str, Any], name: str, param: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _missing(param)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"Invalid string: {param}", param=param)
    return value


def _int(params: dict[str, Any], name: str, param: str, *, minimum: int,
         required: bool = True) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise _missing(param)
        return None
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise ApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer",
                       param=param)
    number = int(value)
    if number < minimum:
        raise ApiError(400, f"This value must be greater than or equal to {minimum}.",
                       code="parameter_invalid_integer", param=param)
    return number


def _currency(params: dict[str, Any], name: str, param: str) -> str:
    value = _str(params, name, param, required=True)
    assert value is not None
    if not re.fullmatch(r"[A-Za-z]{3}", value):
        raise ApiError(400, f"Invalid currency: {value}.", code="invalid_currency", param=param)
    return value.lower()


def _metadata(params: dict[str, Any], name: str, param: str) -> dict[str, str]:
    value = params.get(name)
    if value is None or value == "":
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ApiError(400, "Invalid object", param=param)
    return dict(value)


def _walk_ids(value: Any) -> Iterator[str]:
    """Every string under an ``id`` key in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "id" and isinstance(item, str):
                yield item
            else:
                yield from _walk_ids(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_ids(item)


def _api_key(request: web.Request) -> str | None:
    """The secret key of a request, from ``Authorization: Bearer sk_...`` (the SDK's way) or
    Basic auth with the key as user name."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    key = credentials.strip()
    if scheme.lower() == "basic":
        try:
            key = base64.b64decode(key).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    return key if key.startswith(("sk_", "rk_")) and len(key) > 5 else None


# -- records --------------------------------------------------------------------------------


@dataclasses.dataclass
class RecordedEvent:
    """An event the fake sent (``source="fake"``) or relayed from localstripe."""

    id: str
    type: str
    payload: bytes  # the raw JSON body, byte for byte as delivered
    source: Literal["fake", "localstripe"]
    delivered_status: int | None = None  # the last endpoint's answer; None: not delivered

    @property
    def data(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed

    @property
    def data_object(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.data["data"]["object"]
        return obj


@dataclasses.dataclass
class RecordedRequest:
    """A request the fake received under ``/v1/``."""

    method: str
    path: str
    query: str
    params: list[tuple[str, str]]
    idempotency_key: str | None
    status: int | None = None
    replayed: bool = False


@dataclasses.dataclass
class _Saved:
    path: str
    params: tuple[tuple[str, str], ...]
    status: int
    body: bytes
    request_id: str


@dataclasses.dataclass
class _Fault:
    prefix: str
    mode: FaultMode
    remaining: int
    method: str | None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- the fake -------------------------------------------------------------------------------


class FakeStripe:
    """Checkout Sessions, Connect, disputes, idempotency keys and fault injection in front of
    localstripe (``localstripe_url``; without it, requests it does not handle are 404).

    Use as ``async with FakeStripe(url) as fake:`` or ``await fake.start()`` /
    ``await fake.stop()``, in the event loop of the test."""

    def __init__(
        self,
        localstripe_url: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
    ) -> None:
        self._localstripe_url = localstripe_url.rstrip("/") if localstripe_url else None
        self._clock = clock
        self._host = host
        self.secret_key = "sk_test_" + new_id("", 32)
        self.webhook_secret = "whsec_" + new_id("", 32)

        self.events: list[RecordedEvent] = []
        self.requests: list[RecordedRequest] = []
        # Stripe-shaped objects owned by the fake, by id (tests may read them).
        self.checkout_sessions: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.transfers: dict[str, dict[str, Any]] = {}

        self._endpoints: list[tuple[str, str]] = []
        self._checkout_pi_metadata: dict[str, dict[str, str]] = {}
        self._async_pending: set[str] = set()
        self._faults: list[_Fault] = []
        self._released = asyncio.Event()  # ends the waits of "hang" faults
        self._saved: dict[tuple[str, str], _Saved] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._known_ids: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._new_event = asyncio.Event()
        self._relay_token = new_id("", 16)
        self._relay_secret = "whsec_" + new_id("", 32)
        self._relay_registered = False
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._base: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        """The fake's URL (``http://127.0.0.1:<port>``), the SDK's ``api`` base address."""
        if self._base is None:
            raise RuntimeError("FakeStripe is not started")
        return self._base

    async def start(self) -> FakeStripe:
        app = web.Application(middlewares=[self._api_middleware])
        routes = app.router
        routes.add_post("/v1/checkout/sessions", self._create_checkout)
        routes.add_get("/v1/checkout/sessions/{id}", self._get_checkout)
        routes.add_post("/v1/checkout/sessions/{id}/expire", self._expire_checkout_api)
        routes.add_post("/v1/accounts", self._create_account)
        routes.add_get("/v1/accounts/{id}", self._get_account)
        routes.add_post("/v1/transfers", self._create_transfer)
        routes.add_get("/v1/transfers", self._list_transfers)
        routes.add_get("/v1/transfers/{id}", self._get_transfer)
        routes.add_get("/v1/disputes/{id}", self._get_dispute)
        routes.add_post("/v1/refunds", self._create_refund)
        routes.add_get("/v1/payment_intents/{id}", self._get_payment_intent)
        routes.add_get("/v1/charges/{id}", self._get_charge)
        routes.add_get("/checkout/{id}", self._checkout_page)
        routes.add_post("/checkout/{id}/pay", self._checkout_pay)
        routes.add_post("/checkout/{id}/cancel", self._checkout_cancel)
        routes.add_post("/_relay/{token}", self._relay)
        routes.add_route("*", "/{tail:.*}", self._proxy)

        self._http = aiohttp.ClientSession()
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, 0).start()
        port = self._runner.addresses[0][1]
        self._base = f"http://{self._host}:{port}"
        if self._localstripe_url is not None:
            await self._register_relay(events=None)
        return self

    async def stop(self) -> None:
        self._released.set()
        if self._relay_registered:
            # localstripe cannot forget a webhook: an empty event list silences it.
            with contextlib.suppress(aiohttp.ClientError, OSError, RuntimeError):
                await self._register_relay(events=[])
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> FakeStripe:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("FakeStripe is not started")
        return self._http

    # -- webhooks and events -----------------------------------------------------------------

    async def add_webhook(self, url: str, secret: str | None = None) -> None:
        """Deliver every event from now on to ``url``, signed with ``secret`` (default
        ``self.webhook_secret``). localstripe's events come through the fake's relay, which
        :meth:`start` registered with localstripe (``POST /_config/webhooks/{id}``)."""
        self._endpoints.append((url, secret if secret is not None else self.webhook_secret))
        if self._localstripe_url is not None and not self._relay_registered:
            await self._register_relay(events=None)

    async def _register_relay(self, events: list[str] | None) -> None:
        assert self._localstripe_url is not None
        body: dict[str, Any] = {"url": f"{self.api_base}/_relay/{self._relay_token}",
                                "secret": self._relay_secret}
        if events is not None:
            body["events"] = events  # only JSON can carry an empty list
        url = f"{self._localstripe_url}/_config/webhooks/fake-{self._relay_token}"
        async with self._session.post(url, json=body) as response:
            if response.status != 200:
                raise RuntimeError(
                    f"localstripe refused the relay webhook: {response.status} "
                    f"{await response.text()}"
                )
        self._relay_registered = events is None

    async def wait_for_event(
        self,
        event_type: str,
        *,
        object_id: str | None = None,
        start: int = 0,
        timeout: float = 5.0,  # noqa: ASYNC109 - the brief's API; asyncio.timeout inside
    ) -> RecordedEvent:
        """The first event of ``event_type`` (about ``object_id`` if given) recorded at index
        ``start`` of ``self.events`` or later, waiting for it: localstripe's events arrive about
        a second after their cause, and those of API calls in the background."""

        def find() -> RecordedEvent | None:
            for event in self.events[start:]:
                if event.type == event_type and (
                    object_id is None or event.data_object.get("id") == object_id
                ):
                    return event
            return None

        try:
            async with asyncio.timeout(timeout):
                while (found := find()) is None:
                    self._new_event.clear()
                    await self._new_event.wait()
                return found
        except TimeoutError:
            seen = [event.type for event in self.events]
            raise TimeoutError(
                f"no {event_type} event within {timeout} s; recorded: {seen}"
            ) from None

    def _event(self, event_type: str, obj: dict[str, Any], *,
               request_id: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """An event in Stripe's envelope (https://docs.stripe.com/api/events/object)."""
        return {
            "id": new_id("evt_"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self._clock()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": len(self._endpoints),
            "request": {"id": request_id, "idempotency_key": idempotency_key},
            "type": event_type,
        }

    async def _send(self, event_type: str, obj: dict[str, Any], *,
                    request_id: str | None = None,
                    idempotency_key: str | None = None) -> dict[str, Any]:
        """Build, deliver and record an event; returns it (a copy, as delivered)."""
        event = self._event(event_type, obj, request_id=request_id,
                            idempotency_key=idempotency_key)
        payload = json.dumps(event, indent=2).encode()
        await self._record_and_deliver(event["id"], event_type, payload, "fake")
        sent: dict[str, Any] = json.loads(payload)
        return sent

    def _send_later(self, event_type: str, obj: dict[str, Any], request: web.Request) -> None:
        """Deliver an event caused by an API call in the background, as Stripe does."""
        snapshot = json.loads(json.dumps(obj))
        self._spawn(self._send(event_type, snapshot, request_id=request.get(REQUEST_ID),
                               idempotency_key=request.headers.get("Idempotency-Key")))

    def _spawn(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("background work of the Stripe fake failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_and_deliver(self, event_id: str, event_type: str, payload: bytes,
                                  source: Literal["fake", "localstripe"]) -> RecordedEvent:
        recorded = RecordedEvent(event_id, event_type, payload, source)
        for url, secret in list(self._endpoints):
            try:
                status, _ = await _post_event(self._session, url, payload,
                                              sign(payload, secret, int(self._clock())))
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("webhook delivery failed",
                               extra={"event": event_type, "url": url, "error": repr(exc)})
                recorded.delivered_status = None
            else:
                recorded.delivered_status = status
        self.events.append(recorded)
        self._new_event.set()
        return recorded

    async def _relay(self, request: web.Request) -> web.Response:
        """localstripe's webhook: verify, keep this fake's events, forward re-signed."""
        if request.match_info["token"] != self._relay_token:
            return web.Response(status=404, text="unknown relay")
        payload = await request.read()
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode(), request.headers.get("Stripe-Signature"), self._relay_secret,
                RELAY_TOLERANCE_S,
            )
        except stripe.SignatureVerificationError:
            return web.Response(status=400, text="bad signature")
        event = json.loads(payload)
        obj = event.get("data", {}).get("object", {})
        if obj.get("id") not in self._known_ids:
            return web.Response(text="ignored: not about an object created through this fake")
        await self._record_and_deliver(event["id"], event["type"], payload, "localstripe")
        return web.Response(text="relayed")

    # -- fault injection and request log ------------------------------------------------------

    def fail_next(self, path_prefix: str, mode: FaultMode, times: int = 1, *,
                  method: str | None = None) -> None:
        """The next ``times`` requests whose path starts with ``path_prefix`` (and of
        ``method``, if given) fail with a 500 ``api_error``: ``before`` doing anything, or
        ``after`` the work was done and its idempotent response saved; ``hang`` does the work,
        then holds the answer until the fake stops."""
        if mode not in ("before", "after", "hang"):
            raise ValueError(f"fault mode must be 'before', 'after' or 'hang', not {mode!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        self._faults.append(_Fault(path_prefix, mode, times, method.upper() if method else None))

    def calls(self, path_prefix: str, method: str | None = None) -> int:
        """How many requests under ``/v1/`` with this path prefix (and method) arrived,
        faulted and replayed ones included."""
        return sum(
            1 for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method.upper())
        )

    def _take_fault(self, method: str, path: str) -> FaultMode | None:
        for fault in self._faults:
            if path.startswith(fault.prefix) and fault.method in (None, method):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.mode
        return None

    # -- the request pipeline ----------------------------------------------------------------

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await handler(request)
        request_id = new_id("req_", 14)
        request[REQUEST_ID] = request_id
        body = await request.read()
        pairs = self._pairs(request, body)
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        record = RecordedRequest(request.method, request.path, request.query_string, pairs, key)
        self.requests.append(record)
        response = await self._answer(request, handler, record, tuple(sorted(pairs)))
        record.status = response.status
        response.headers["Request-Id"] = request_id
        if key is not None:
            response.headers["Idempotency-Key"] = key
        return response

    @staticmethod
    def _pairs(request: web.Request, body: bytes) -> list[tuple[str, str]]:
        if request.method != "POST":
            return parse_qsl(request.query_string, keep_blank_values=True)
        if request.content_type == "application/json":
            return [("<json>", body.decode(errors="replace"))]
        return parse_qsl(body.decode(errors="replace"), keep_blank_values=True)

    async def _answer(self, request: web.Request, handler: Handler, record: RecordedRequest,
                      params: tuple[tuple[str, str], ...]) -> web.StreamResponse:
        fault = self._take_fault(request.method, request.path)
        if fault == "before":
            return _fault_error("before").response()
        api_key = _api_key(request)
        if api_key is None:
            return ApiError(401, "You did not provide an API key. You need to provide your API "
                            "key in the Authorization header, using Bearer auth.").response()
        key = record.idempotency_key
        if key is None:
            response = await self._run(handler, request)
        else:
            scope = (api_key, key)
            async with self._locks.setdefault(scope, asyncio.Lock()):
                saved = self._saved.get(scope)
                if saved is not None:
                    mismatch = _idempotency_mismatch(saved, request.path, params, key)
                    if mismatch is not None:
                        return mismatch.response()
                    record.replayed = True
                    response = web.Response(status=saved.status, body=saved.body,
                                            content_type="application/json", charset="utf-8")
                    response.headers["Idempotent-Replayed"] = "true"
                    response.headers["Original-Request"] = saved.request_id
                else:
                    response = await self._run(handler, request)
                    if 200 <= response.status < 300 or response.status == 402:
                        assert isinstance(response, web.Response)
                        assert isinstance(response.body, bytes)
                        self._saved[scope] = _Saved(request.path, params, response.status,
                                                    response.body, request[REQUEST_ID])
        if fault == "hang":
            await self._released.wait()
        if fault in ("after", "hang"):
            return _fault_error("after").response()
        return response

    @staticmethod
    async def _run(handler: Handler, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    async def _form(self, request: web.Request) -> dict[str, Any]:
        if request.method == "POST":
            pairs = parse_qsl((await request.read()).decode(), keep_blank_values=True)
        else:
            pairs = parse_qsl(request.query_string, keep_blank_values=True)
        return parse_form(pairs)

    # -- the proxy to localstripe ------------------------------------------------------------

    async def _proxy(self, request: web.Request) -> web.Response:
        if not request.path.startswith("/v1/"):
            return web.Response(status=404, text="not found")
        if self._localstripe_url is None:
            raise ApiError(404, f"Unrecognized request URL ({request.method}: {request.path}).")
        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type")
                   if name in request.headers}
        try:
            async with self._session.request(
                request.method, self._localstripe_url + request.raw_path,
                data=await request.read(), headers=headers,
            ) as upstream:
                body = await upstream.read()
                status = upstream.status
                content_type = upstream.content_type
        except aiohttp.ClientError as exc:
            raise ApiError(502, f"The Stripe fake could not reach localstripe: {exc!r}",
                           type="api_error") from exc
        if content_type == "application/json":
            with contextlib.suppress(ValueError):
                self._known_ids.update(_walk_ids(json.loads(body)))
        return web.Response(status=status, body=body, content_type=content_type)

    async def _localstripe(self, method: str, path: str,
                           params: dict[str, str] | None = None) -> dict[str, Any]:
        """A call of the fake's own to localstripe (with ``self.secret_key``)."""
        if self._localstripe_url is None:
            raise ValueError(f"{path}: not an object of the fake, and there is no localstripe")
        async with self._session.request(
            method, self._localstripe_url + path, data=params,
            headers={"Authorization": f"Bearer {self.secret_key}"},
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise ValueError(f"localstripe {method} {path}: {response.status} {body!r}")
        obj: dict[str, Any] = json.loads(body)
        return obj

    # -- payment intents, charges, refunds ---------------------------------------------------

    async def _get_payment_intent(self, request: web.Request) -> web.Response:
        intent = self.payment_intents.get(request.match_info["id"])
        return _json_response(intent) if intent is not None else await self._proxy(request)

    async def _get_charge(self, request: web.Request) -> web.Response:
        charge = self.charges.get(request.match_info["id"])
        return _json_response(charge) if charge is not None else await self._proxy(request)

    async def charge_of(self, payment_intent_id: str) -> str:
        """The charge id of a confirmed PaymentIntent, the fake's (from a Checkout) or
        localstripe's. localstripe exports ``latest_charge`` as the whole charge object (Stripe
        gives its id unless expanded), and also the deprecated ``charges.data[0]``."""
        intent = self.payment_intents.get(payment_intent_id)
        if intent is None:
            intent = await self._localstripe("GET", f"/v1/payment_intents/{payment_intent_id}")
        latest = intent.get("latest_charge")
        if isinstance(latest, dict):
            latest = latest.get("id")
        if not latest:
            charges = (intent.get("charges") or {}).get("data") or []
            latest = charges[0]["id"] if charges else None
        if not isinstance(latest, str):
            raise ValueError(f"PaymentIntent {payment_intent_id} has no charge (not confirmed?)")
        return latest

    async def _create_refund(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        charge_id = form.get("charge")
        intent_id = form.get("payment_intent")
        if isinstance(intent_id, str) and intent_id in self.payment_intents:
            charge_id = self.payment_intents[intent_id]["latest_charge"]
        if isinstance(charge_id, str) and charge_id in self.charges:
            _reject_unknown(form, {"charge", "payment_intent", "amount", "metadata", "reason",
                                   "expand"})
            amount = _int(form, "amount", "amount", minimum=1, required=False)
            refund, charge = self._refund_own(charge_id, amount,
                                              _metadata(form, "metadata", "metadata"))
            self._send_later("charge.refunded", charge, request)
            return _json_response(refund)
        response = await self._proxy(request)
        if response.status == 200:
            assert isinstance(response.body, bytes)
            refunded = json.loads(response.body).get("charge")
            if isinstance(refunded, str):
                # localstripe sends no charge.refunded: the fake sends Stripe's.
                self._spawn(self._send_localstripe_refunded(refunded, request))
        return response

    async def _send_localstripe_refunded(self, charge_id: str,
                                         request: web.Request | None) -> dict[str, Any]:
        charge = await self._localstripe("GET", f"/v1/charges/{charge_id}")
        if request is None:
            return await self._send("charge.refunded", charge)
        return await self._send("charge.refunded", charge, request_id=request.get(REQUEST_ID),
                                idempotency_key=request.headers.get("Idempotency-Key"))

    def _refund_own(self, charge_id: str, amount: int | None,
                    metadata: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        charge = self.charges[charge_id]
        if charge["status"] != "succeeded":
            raise ApiError(400, f"Charge {charge_id} has not succeeded: it cannot be refunded.",
                           param="charge")
        left = charge["amount"] - charge["amount_refunded"]
        if left == 0:
            raise ApiError(400, f"Charge {charge_id} has already been refunded.",
                           code="charge_already_refunded", param="charge")
        amount = left if amount is None else amount
        if amount > left:
            raise ApiError(400, f"Refund amount ({amount}) is greater than unrefunded amount "
                           f"on charge ({left})", code="amount_too_large", param="amount")
        refund = {
            "id": new_id("re_"),
            "object": "refund",
            "amount": amount,
            "charge": charge_id,
            "created": int(self._clock()),
            "currency": charge["currency"],
            "metadata": metadata,
            "payment_intent": charge["payment_intent"],
            "reason": None,
            "status": "succeeded",
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        return refund, charge

    async def refund_charge(self, charge_id: str, amount: int | None = None) -> dict[str, Any]:
        """Refund ``amount`` (all that is left by default) of a charge, as from Stripe's
        dashboard, and send ``charge.refunded`` (``amount_refunded`` is cumulative). Works for
        the fake's charges (Checkout) and localstripe's. Returns the event."""
        if charge_id in self.charges:
            try:
                _, charge = self._refund_own(charge_id, amount, {})
            except ApiError as exc:
                raise ValueError(exc.message) from exc
            return await self._send("charge.refunded", charge)
        params = {"charge": charge_id} | ({} if amount is None else {"amount": str(amount)})
        await self._localstripe("POST", "/v1/refunds", params)
        return await self._send_localstripe_refunded(charge_id, None)

    # -- disputes ----------------------------------------------------------------------------

    async def open_dispute(self, charge_id: str, payment_intent_id: str | None = None,
                           amount: int | None = None,
                           currency: str | None = None) -> dict[str, Any]:
        """A cardholder disputes a charge (the fake's or localstripe's; what is not given is
        read from the charge): sends ``charge.dispute.created`` and returns the event, whose
        ``data.object.id`` is the ``du_...`` id for :meth:`close_dispute`."""
        charge = self.charges.get(charge_id)
        if charge is None and None in (payment_intent_id, amount, currency):
            charge = await self._localstripe("GET", f"/v1/charges/{charge_id}")
        if charge is not None:
            charge["disputed"] = True
            payment_intent_id = payment_intent_id or charge.get("payment_intent")
            amount = charge["amount"] if amount is None else amount
            currency = currency or charge["currency"]
        created = int(self._clock())
        dispute: dict[str, Any] = {
            "id": new_id("du_"),
            "object": "dispute",
            "amount": amount,
            "balance_transactions": [],
            "charge": charge_id,
            "created": created,
            "currency": currency,
            "evidence_details": {"due_by": created + 7 * 86400, "has_evidence": False,
                                 "past_due": False, "submission_count": 0},
            "is_charge_refundable": False,
            "livemode": False,
            "metadata": {},
            "payment_intent": payment_intent_id,
            "reason": "fraudulent",
            "status": "needs_response",
        }
        self.disputes[dispute["id"]] = dispute
        return await self._send("charge.dispute.created", dispute)

    async def close_dispute(self, dispute_id: str,
                            status: DisputeOutcome = "won") -> dict[str, Any]:
        """The dispute is decided: sends ``charge.dispute.closed`` with ``status`` ``won`` or
        ``lost``; returns the event."""
        dispute = self.disputes.get(dispute_id)
        if dispute is None:
            raise ValueError(f"no dispute {dispute_id}")
        if status not in ("won", "lost"):
            raise ValueError(f"a dispute closes as won or lost, not {status!r}")
        if dispute["status"] not in _OPEN_DISPUTE_STATUSES:
            raise ValueError(f"dispute {dispute_id} is already closed ({dispute['status']})")
        dispute["status"] = status
        return await self._send("charge.dispute.closed", dispute)

    async def _get_dispute(self, request: web.Request) -> web.Response:
        dispute = self.disputes.get(request.match_info["id"])
        if dispute is None:
            raise _no_such("dispute", request.match_info["id"])
        return _json_response(dispute)

    # -- Checkout Sessions (https://docs.stripe.com/api/checkout/sessions) -------------------

    _CHECKOUT_PARAMS = {
        "mode", "line_items", "success_url", "cancel_url", "client_reference_id", "metadata",
        "payment_intent_data", "customer", "customer_email", "expires_at", "locale",
        "payment_method_types", "submit_type", "expand",
    }

    async def _create_checkout(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        _reject_unknown(form, self._CHECKOUT_PARAMS)
        mode = _str(form, "mode", "mode", required=True)
        if mode not in ("payment", "setup", "subscription"):
            raise ApiError(400, f"Invalid mode: must be one of payment, setup, or subscription "
                           f"(got {mode})", code="parameter_invalid_string", param="mode")
        if mode != "payment":
            raise ApiError(400, f"The Stripe fake implements mode=payment only, not {mode}.",
                           param="mode")
        items = form.get("line_items")
        if items is None or items == "":
            raise _missing("line_items")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "Invalid array", param="line_items")
        amount_total, currency = 0, None
        for index, item in enumerate(items):
            subtotal, item_currency = self._line_item(item, f"line_items[{index}]")
            if currency is not None and item_currency != currency:
                raise ApiError(400, "All line items must use the same currency.",
                               param=f"line_items[{index}][price_data][currency]")
            amount_total += subtotal
            currency = item_currency
        success_url = _str(form, "success_url", "success_url", required=True)
        intent_data = form.get("payment_intent_data") or {}
        if not isinstance(intent_data, dict):
            raise ApiError(400, "Invalid object", param="payment_intent_data")
        _reject_unknown(intent_data, {"metadata", "description", "capture_method",
                                      "receipt_email", "statement_descriptor"},
                        "payment_intent_data")
        created = int(self._clock())
        session_id = new_id("cs_test_", 58)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "amount_subtotal": amount_total,
            "amount_total": amount_total,
            "cancel_url": _str(form, "cancel_url", "cancel_url"),
            "client_reference_id": _str(form, "client_reference_id", "client_reference_id"),
            "created": created,
            "currency": currency,
            "customer": _str(form, "customer", "customer"),
            "customer_email": _str(form, "customer_email", "customer_email"),
            "expires_at": _int(form, "expires_at", "expires_at", minimum=created,
                               required=False) or created + 86400,
            "livemode": False,
            "metadata": _metadata(form, "metadata", "metadata"),
            "mode": mode,
            "payment_intent": None,
            "payment_method_types": ["card"],
            "payment_status": "unpaid",
            "status": "open",
            "success_url": success_url,
            "url": f"{self.api_base}/checkout/{session_id}",
        }
        self.checkout_sessions[session_id] = session
        self._checkout_pi_metadata[session_id] = _metadata(
            intent_data, "metadata", "payment_intent_data[metadata]")
        return _json_response(session)

    @staticmethod
    def _line_item(item: Any, param: str) -> tuple[int, str]:
        if not isinstance(item, dict):
            raise ApiError(400, "Invalid object", param=param)
        _reject_unknown(item, {"price_data", "quantity"}, param)
        price = item.get("price_data")
        if not isinstance(price, dict):
            raise _missing(f"{param}[price_data]")
        _reject_unknown(price, {"currency", "unit_amount", "product_data"},
                        f"{param}[price_data]")
        currency = _currency(price, "currency", f"{param}[price_data][currency]")
        unit_amount = _int(price, "unit_amount", f"{param}[price_data][unit_amount]", minimum=0)
        product = price.get("product_data")
        if not isinstance(product, dict):
            raise _missing(f"{param}[price_data][product_data]")
        _str(product, "name", f"{param}[price_data][product_data][name]", required=True)
        quantity = _int(item, "quantity", f"{param}[quantity]", minimum=1)
        assert unit_amount is not None and quantity is not None
        return unit_amount * quantity, currency

    async def _get_checkout(self, request: web.Request) -> web.Response:
        session = self.checkout_sessions.get(request.match_info["id"])
        if session is None:
            raise _no_such("checkout.session", request.match_info["id"])
        return _json_response(session)

    async def _expire_checkout_api(self, request: web.Request) -> web.Response:
        session = self.checkout_sessions.get(request.match_info["id"])
        if session is None:
            raise _no_such("checkout.session", request.match_info["id"])
        if session["status"] != "open":
            raise ApiError(400, f"Only Checkout Sessions with a status in [\"open\"] can be "
                           f"expired. This session has a status of \"{session['status']}\".")
        session["status"] = "expired"
        self._send_later("checkout.session.expired", session, request)
        return _json_response(session)

    def _open_session(self, session_id: str) -> dict[str, Any]:
        session = self.checkout_sessions.get(session_id)
        if session is None:
            raise ValueError(f"no Checkout Session {session_id}")
        if session["status"] != "open":
            raise ValueError(f"Checkout Session {session_id} is {session['status']}, not open")
        return session

    async def complete_checkout(self, session_id: str, payment: CheckoutPayment = "paid", *,
                                with_payment_intent_event: bool = False) -> dict[str, Any]:
        """The customer pays on the hosted page: ``paid`` (a card: a ``pi_`` and ``ch_`` are
        recorded, payment_status ``paid``) or ``async_pending`` (a delayed method: payment_status
        ``unpaid`` until :meth:`settle_async_checkout`). Sends ``checkout.session.completed``
        and returns it. Stripe also sends ``payment_intent.succeeded`` for a paid Checkout (with
        ``payment_intent_data.metadata``); ``with_payment_intent_event`` sends it too, after."""
        if payment not in ("paid", "async_pending"):
            raise ValueError(f"payment must be 'paid' or 'async_pending', not {payment!r}")
        session = self._open_session(session_id)
        paid = payment == "paid"
        created = int(self._clock())
        intent_id, charge_id = new_id("pi_"), new_id("ch_")
        metadata = dict(self._checkout_pi_metadata.get(session_id, {}))
        amount, currency = session["amount_total"], session["currency"]
        self.charges[charge_id] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount,
            "amount_refunded": 0,
            "captured": True,
            "created": created,
            "currency": currency,
            "disputed": False,
            "livemode": False,
            "metadata": metadata,
            "paid": paid,
            "payment_intent": intent_id,
            "refunded": False,
            "status": "succeeded" if paid else "pending",
        }
        self.payment_intents[intent_id] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_received": amount if paid else 0,
            "created": created,
            "currency": currency,
            "latest_charge": charge_id,
            "livemode": False,
            "metadata": metadata,
            "payment_method_types": ["card"],
            "status": "succeeded" if paid else "processing",
        }
        session.update(status="complete", payment_intent=intent_id,
                       payment_status="paid" if paid else "unpaid")
        if not paid:
            self._async_pending.add(session_id)
        event = await self._send("checkout.session.completed", session)
        if paid and with_payment_intent_event:
            await self._send("payment_intent.succeeded", self.payment_intents[intent_id])
        return event

    async def settle_async_checkout(self, session_id: str,
                                    succeeded: bool = True) -> dict[str, Any]:
        """A delayed payment of a completed Checkout settles: sends
        ``checkout.session.async_payment_succeeded`` (payment_status ``paid``) or
        ``..._failed``; returns the event."""
        if session_id not in self._async_pending:
            raise ValueError(f"Checkout Session {session_id} has no pending delayed payment")
        self._async_pending.discard(session_id)
        session = self.checkout_sessions[session_id]
        intent = self.payment_intents[session["payment_intent"]]
        charge = self.charges[intent["latest_charge"]]
        if succeeded:
            charge.update(status="succeeded", paid=True)
            intent.update(status="succeeded", amount_received=intent["amount"])
            session["payment_status"] = "paid"
            return await self._send("checkout.session.async_payment_succeeded", session)
        charge.update(status="failed", paid=False, failure_code="payment_failed")
        intent["status"] = "requires_payment_method"
        return await self._send("checkout.session.async_payment_failed", session)

    async def expire_checkout(self, session_id: str) -> dict[str, Any]:
        """An open Checkout Session expires: sends ``checkout.session.expired``; returns it."""
        session = self._open_session(session_id)
        session["status"] = "expired"
        return await self._send("checkout.session.expired", session)

    # The hosted page (a nice-to-have for browser tests): Pay completes the session as "paid".

    async def _checkout_page(self, request: web.Request) -> web.Response:
        session = self.checkout_sessions.get(request.match_info["id"])
        if session is None:
            return web.Response(status=404, text="no such Checkout Session")
        sid = html.escape(session["id"])
        amount = f"{session['amount_total'] / 100:.2f} {str(session['currency']).upper()}"
        buttons = (
            f'<form method="post" action="/checkout/{sid}/pay"><button>Pay</button></form>'
            f'<form method="post" action="/checkout/{sid}/cancel"><button>Cancel</button></form>'
            if session["status"] == "open" else f"<p>This session is {session['status']}.</p>"
        )
        page = (f"<!doctype html><title>Stripe fake checkout</title><h1>Pay {amount}</h1>"
                f"<p>TEST MODE: the Stripe fake of the test suite.</p>{buttons}")
        return web.Response(text=page, content_type="text/html")

    async def _checkout_pay(self, request: web.Request) -> web.Response:
        session_id = request.match_info["id"]
        try:
            await self.complete_checkout(session_id, "paid")
        except ValueError as exc:
            return web.Response(status=409, text=str(exc))
        url = str(self.checkout_sessions[session_id]["success_url"])
        raise web.HTTPSeeOther(url.replace("{CHECKOUT_SESSION_ID}", session_id))

    async def _checkout_cancel(self, request: web.Request) -> web.Response:
        session = self.checkout_sessions.get(request.match_info["id"])
        if session is None or not session["cancel_url"]:
            return web.Response(status=404, text="no cancel URL")
        raise web.HTTPSeeOther(session["cancel_url"])

    # -- Connect: accounts and transfers (https://docs.stripe.com/api/transfers) -------------

    def _new_account(self, account_type: str, country: str, email: str | None,
                     metadata: dict[str, str]) -> dict[str, Any]:
        """A connected account, onboarded at once (onboarding is not modelled)."""
        account: dict[str, Any] = {
            "id": new_id("acct_", 16),
            "object": "account",
            "business_type": None,
            "capabilities": {"card_payments": "active", "transfers": "active"},
            "charges_enabled": True,
            "country": country,
            "created": int(self._clock()),
            "default_currency": "usd",
            "details_submitted": True,
            "email": email,
            "livemode": False,
            "metadata": metadata,
            "payouts_enabled": True,
            "type": account_type,
        }
        self.accounts[account["id"]] = account
        return account

    async def create_connected_account(self, *, account_type: str = "express",
                                       country: str = "US", email: str | None = None) -> str:
        """A ready connected account (as ``POST /v1/accounts``); returns its ``acct_`` id."""
        return str(self._new_account(account_type, country, email, {})["id"])

    async def _create_account(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        _reject_unknown(form, {"type", "country", "email", "capabilities", "business_type",
                               "business_profile", "metadata", "controller", "settings",
                               "tos_acceptance", "individual", "company", "expand"})
        account_type = _str(form, "type", "type") or "standard"
        if account_type not in ("express", "custom", "standard"):
            raise ApiError(400, "Invalid type: must be one of custom, express, or standard",
                           code="parameter_invalid_string", param="type")
        account = self._new_account(account_type, _str(form, "country", "country") or "US",
                                    _str(form, "email", "email"),
                                    _metadata(form, "metadata", "metadata"))
        return _json_response(account)

    async def _get_account(self, request: web.Request) -> web.Response:
        account = self.accounts.get(request.match_info["id"])
        if account is None:
            raise _no_such("account", request.match_info["id"])
        return _json_response(account)

    async def _create_transfer(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        _reject_unknown(form, {"amount", "currency", "destination", "transfer_group",
                               "metadata", "description", "source_transaction", "expand"})
        amount = _int(form, "amount", "amount", minimum=1)
        currency = _currency(form, "currency", "currency")
        destination = _str(form, "destination", "destination", required=True)
        assert destination is not None
        if destination not in self.accounts:
            raise ApiError(400, f"No such destination: '{destination}'",
                           code="resource_missing", param="destination")
        transfer_id = new_id("tr_")
        transfer = {
            "id": transfer_id,
            "object": "transfer",
            "amount": amount,
            "amount_reversed": 0,
            "balance_transaction": new_id("txn_"),
            "created": int(self._clock()),
            "currency": currency,
            "description": _str(form, "description", "description"),
            "destination": destination,
            "destination_payment": new_id("py_"),
            "livemode": False,
            "metadata": _metadata(form, "metadata", "metadata"),
            "reversals": {"object": "list", "data": [], "has_more": False, "total_count": 0,
                          "url": f"/v1/transfers/{transfer_id}/reversals"},
            "reversed": False,
            "source_transaction": _str(form, "source_transaction", "source_transaction"),
            "source_type": "card",
            "transfer_group": _str(form, "transfer_group", "transfer_group"),
        }
        self.transfers[transfer_id] = transfer
        return _json_response(transfer)

    async def _list_transfers(self, request: web.Request) -> web.Response:
        """Newest first, filtered by ``transfer_group`` and ``destination``."""
        form = await self._form(request)
        _reject_unknown(form, {"transfer_group", "destination", "limit", "starting_after",
                               "ending_before", "created", "expand"})
        limit = _int(form, "limit", "limit", minimum=1, required=False) or 10
        if limit > 100:
            raise ApiError(400, "This value must be less than or equal to 100.", param="limit")
        group = _str(form, "transfer_group", "transfer_group")
        destination = _str(form, "destination", "destination")
        found = [t for t in reversed(self.transfers.values())
                 if (group is None or t["transfer_group"] == group)
                 and (destination is None or t["destination"] == destination)]
        after = _str(form, "starting_after", "starting_after")
        if after is not None:
            ids = [t["id"] for t in found]
            found = found[ids.index(after) + 1:] if after in ids else []
        return _json_response({"object": "list", "data": found[:limit],
                               "has_more": len(found) > limit, "url": "/v1/transfers"})

    async def _get_transfer(self, request: web.Request) -> web.Response:
        transfer = self.transfers.get(request.match_info["id"])
        if transfer is None:
            raise _no_such("transfer", request.match_info["id"])
        return _json_response(transfer)


def _fault_error(mode: str) -> ApiError:
    return ApiError(500, f"An unknown error occurred (a fault injected by the Stripe fake, "
                    f"{mode} the work).", type="api_error")


def _idempotency_mismatch(saved: _Saved, path: str, params: tuple[tuple[str, str], ...],
                          key: str) -> ApiError | None:
    """Stripe's answer to a key reused for another request, or None if it is the same one."""
    retry = f"Try using a key other than '{key}' if you meant to execute a different request."
    if saved.path != path:
        return ApiError(400, "Keys for idempotent requests can only be used for the same "
                        f"endpoint they were first used for ('{saved.path}' vs '{path}'). "
                        + retry, type="idempotency_error")
    if saved.params != params:
        return ApiError(400, "Keys for idempotent requests can only be used with the same "
                        "parameters they were first used with. " + retry,
                        type="idempotency_error")
    return None


@dataclasses.dataclass(frozen=True)
class Delivery:
    """A webhook request as a :class:`WebhookRecorder` received it."""

    payload: bytes
    signature: str | None


class WebhookRecorder:
    """A webhook endpoint for tests of the fake itself: records every delivery and answers
    ``status``. ``async with WebhookRecorder() as hook: await fake.add_webhook(hook.url)``."""

    def __init__(self, status: int = 200, host: str = "127.0.0.1") -> None:
        self.status = status
        self.deliveries: list[Delivery] = []
        self._host = host
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("WebhookRecorder is not started")
        return self._url

    async def _receive(self, request: web.Request) -> web.Response:
        self.deliveries.append(
            Delivery(await request.read(), request.headers.get("Stripe-Signature"))
        )
        return web.Response(status=self.status, text="recorded")

    async def __aenter__(self) -> WebhookRecorder:
        app = web.Application()
        app.router.add_post("/webhook", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, 0).start()
        self._url = f"http://{self._host}:{self._runner.addresses[0][1]}/webhook"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def of_type(self, event_type: str) -> list[Delivery]:
        """The deliveries of events of ``event_type``, in arrival order."""
        return [d for d in self.deliveries if json.loads(d.payload).get("type") == event_type]
