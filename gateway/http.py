"""HTTP plumbing shared by every endpoint: JSON in and out, the one error format, request ids,
access logs, request metrics and the security headers.

Errors become responses here and nowhere else: a :class:`~livecore.errors.LivecoreError`
carries its status and code; aiohttp's own HTTP exceptions (unknown route, wrong method) are
rewritten into the same ``{"error": {"code", "message"}}`` shape; an exception that means a
dependency is away becomes 503; anything else is logged with its traceback and answered 500
without internals.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.exceptions
from aiohttp import web

from gateway.metrics import Metrics
from ledger.postgres import UNAVAILABLE_ERRORS
from livecore.errors import (
    BadRequest,
    LivecoreError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("livecore.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METRICS_KEY = web.AppKey("metrics", Metrics)

_REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def json_response(
    payload: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    response = web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json"
    )
    if headers:
        response.headers.update(headers)
    return response


def error_response(error: LivecoreError) -> web.Response:
    headers = {}
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(error.retry_after_s)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="livecore"'
    return json_response(error.to_dict(), status=error.status, headers=headers)


async def read_json(request: web.Request, *, max_bytes: int) -> Any:
    """The request's JSON body; an empty body reads as ``{}``.

    Refuses (changing nothing) a body that is not ``application/json`` (415), larger than
    ``max_bytes`` (413, judged by Content-Length up front and by counting while reading), or
    not valid UTF-8 JSON (400).
    """
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
    chunks = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The request body is larger than {max_bytes} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the request body as application/json.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON: {exc}", code="malformed_json"
        ) from exc


def client_address(request: web.Request, *, trust_proxy_headers: bool) -> str:
    if trust_proxy_headers:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    return request.remote or "unknown"


def _from_http_exception(exc: web.HTTPException) -> LivecoreError:
    if exc.status == 404:
        return NotFound("No such resource.", code="route_not_found")
    if exc.status == 405:
        return MethodNotAllowed("This resource does not accept that method.")
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    return BadRequest(exc.reason or "Bad request.")


def route_name(request: web.Request) -> str:
    """The route pattern (``/api/v1/streams/{stream_id}``), never the raw path: bounded labels."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, error mapping, access log and metrics for every request."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except LivecoreError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(_from_http_exception(exc))
    except UNAVAILABLE_ERRORS + _REDIS_UNAVAILABLE as exc:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away mid-request (an OSError too): nothing to answer
        log.warning(
            "dependency unavailable",
            extra={"request_id": request_id, "error": repr(exc)},
        )
        response = error_response(
            ServiceUnavailable("A service this server needs is unreachable; retry shortly.")
        )
    except Exception:
        log.exception("unhandled error", extra={"request_id": request_id, "path": request.path})
        response = error_response(LivecoreError("Internal server error."))
    elapsed = time.perf_counter() - started
    if not response.prepared:
        response.headers["X-Request-Id"] = request_id
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
    route = route_name(request)
    request.app[METRICS_KEY].observe_request(request.method, route, response.status, elapsed)
    access_log.info(
        "request",
        extra={
            "request_id": request_id,
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": response.status,
            "duration_ms": round(elapsed * 1000, 2),
        },
    )
    return response


# -- security headers -------------------------------------------------------------------------

#: The pages load only their own scripts and styles (no inline script, no inline style, no
#: eval), talk only to their own origin (fetch, WHIP/WHEP, the websocket: CSP 3 lets 'self'
#: match ws:/wss: on the same host), and may not be framed (the coin and gift pages take
#: clicks that spend money: clickjacking). hls.js runs a blob: worker and plays from a blob:
#: MediaSource; WebRTC itself is not governed by CSP. (W3C Content Security Policy Level 3.)
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "worker-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))
#: Camera and microphone only where going live needs them (W3C Permissions Policy).
GO_LIVE_PREFIX = "/live/"
PERMISSIONS_GO_LIVE = "camera=(self), microphone=(self), geolocation=(), payment=()"
PERMISSIONS_ELSEWHERE = "camera=(), microphone=(), geolocation=(), payment=()"
#: One year, the usual HSTS lifetime (RFC 6797); subdomains are not ours to decide.
HSTS = "max-age=31536000"


def security_headers(*, https: bool) -> Callable[[web.Request, web.StreamResponse],
                                                 Awaitable[None]]:
    """An ``on_response_prepare`` handler that adds the security headers to every response.

    A signal rather than a middleware: it also reaches responses a handler prepares itself
    (static files, streamed exports, websocket handshakes aiohttp answers). ``https``: the
    public URL is https (``LIVECORE_PUBLIC_URL``), so browsers are told to keep to it (HSTS;
    browsers ignore it on plain http, and behind a TLS proxy this server sees plain http).
    """

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")  # frame-ancestors for older browsers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Permissions-Policy",
                           PERMISSIONS_GO_LIVE if request.path.startswith(GO_LIVE_PREFIX)
                           else PERMISSIONS_ELSEWHERE)
        if https:
            headers.setdefault("Strict-Transport-Security", HSTS)

    return add
