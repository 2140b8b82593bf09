"""Identifiers.

Ids are UUIDs chosen at the edge (the gateway generates them, or a client does for idempotent
retries) and passed into the core; nothing here makes one. Each kind of id is its own
``NewType`` so a stream id cannot be handed where a user id is expected.
"""

from __future__ import annotations

import uuid
from typing import NewType

from livecore.errors import NotFound, ValidationFailed

UserId = NewType("UserId", uuid.UUID)
StreamId = NewType("StreamId", uuid.UUID)
TokenId = NewType("TokenId", uuid.UUID)


def parse_uuid(text: str, *, what: str) -> uuid.UUID:
    """Parse an id taken from a URL path.

    A malformed id names nothing that exists, so it is answered like an unknown one: 404.
    """
    try:
        value = uuid.UUID(text)
    except ValueError as exc:
        raise NotFound(f"No {what} with id {text!r}.", code=f"{what}_not_found") from exc
    if str(value) != text.lower():
        # Accept only the canonical hyphenated form, so each resource has one URL.
        raise NotFound(f"No {what} with id {text!r}.", code=f"{what}_not_found")
    return value


def parse_user_id(text: str) -> UserId:
    return UserId(parse_uuid(text, what="user"))


def parse_stream_id(text: str) -> StreamId:
    return StreamId(parse_uuid(text, what="stream"))


def parse_token_id(text: str) -> TokenId:
    return TokenId(parse_uuid(text, what="token"))


def parse_uuid_field(text: str, field: str) -> uuid.UUID:
    """Parse an id given in a request body: a malformed one is a 422 naming the field."""
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID.", code="invalid_field",
                               field=field) from None
