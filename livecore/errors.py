"""Every error Livecore raises on purpose.

The hierarchy follows the split that h11 and websockets draw: who is at fault decides what we
answer with.

    LivecoreError
    ├── ClientError            the caller or peer sent something we refuse (4xx)
    │   ├── BadRequest             400  malformed body, bad query parameter
    │   ├── ValidationFailed       422  well-formed JSON that breaks the schema or a domain rule
    │   ├── Unauthenticated        401  missing, unknown, expired or revoked credentials
    │   ├── Forbidden              403  authenticated, but the role or ownership does not allow it
    │   ├── NotFound               404  unknown id or route
    │   ├── MethodNotAllowed       405
    │   ├── Conflict               409  duplicate, or a state transition that is not allowed
    │   ├── PayloadTooLarge        413
    │   ├── UnsupportedMediaType   415
    │   └── TooManyRequests        429  throttled; carries ``retry_after_s``
    └── ServerError            our fault or a dependency's (5xx)
        └── ServiceUnavailable     503  Postgres or Redis unreachable; retrying later may work

Each client error carries a stable machine ``code`` (snake_case, documented in docs/api.md),
the HTTP status and the websocket close code to answer with, so the gateway maps errors to
responses in exactly one place. A replayed idempotency key is never an error.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LivecoreError(Exception):
    """Root of every error Livecore raises deliberately."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"
    #: RFC 6455 close code when the error ends a websocket (1011: internal error).
    ws_close_code: ClassVar[int] = 1011

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The body of the one error format: ``{"error": {"code", "message", ...}}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.details)
        return {"error": error}


class ClientError(LivecoreError):
    """The caller or peer is at fault; answering with the carried status is the right reply."""

    status = 400
    default_code = "bad_request"
    ws_close_code = 1008  # policy violation


class BadRequest(ClientError):
    status = 400
    default_code = "bad_request"


class ValidationFailed(ClientError):
    status = 422
    default_code = "validation_failed"


class Unauthenticated(ClientError):
    status = 401
    default_code = "unauthenticated"


class Forbidden(ClientError):
    status = 403
    default_code = "forbidden"


class NotFound(ClientError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(ClientError):
    status = 405
    default_code = "method_not_allowed"


class Conflict(ClientError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ClientError):
    status = 413
    default_code = "payload_too_large"
    ws_close_code = 1009  # message too big


class UnsupportedMediaType(ClientError):
    status = 415
    default_code = "unsupported_media_type"
    ws_close_code = 1003  # unsupported data


class TooManyRequests(ClientError):
    status = 429
    default_code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class ServerError(LivecoreError):
    """We (or a dependency) failed; the caller did nothing wrong."""

    status = 500
    default_code = "internal_error"


class ServiceUnavailable(ServerError):
    """A dependency is unreachable; the same request may succeed later."""

    status = 503
    default_code = "service_unavailable"
    ws_close_code = 1013  # try again later


class SettingsError(LivecoreError):
    """The environment does not describe a valid configuration (raised at start-up)."""

    default_code = "invalid_settings"
