"""Keyset pagination: an opaque cursor that names the last row a page showed.

Pages are ordered newest first by (timestamp, id); the cursor holds both, so a row inserted
while a client pages never makes it see a row twice or skip one (offset paging would).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid

from livecore.errors import BadRequest

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def encode_cursor(at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = f"{at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        at_text, id_text = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
        at = dt.datetime.fromisoformat(at_text)
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return at, uuid.UUID(id_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "The cursor is not one this server gave out.", code="invalid_cursor"
        ) from None


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        limit = int(raw, 10)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadRequest(
            f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}.", code="invalid_limit"
        )
    return limit
