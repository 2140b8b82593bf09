"""The websocket wire format, version 1: message schemas, parsing, and the limits.

Design notes (the full, human-oriented description is ``docs/protocol.md``):

* One JSON object per text frame, with a ``type``. The version is negotiated once, at the
  upgrade (subprotocol ``livecore.v1``, or ``?v=1``), not carried in every message.
* A client may give any message an ``id`` (a string); the server echoes it in the ``ack`` or
  ``error`` that answers the message, so a client can match replies to requests.
* Room events (chat, likes, stream state, moderation, gifts, goals, boards) carry the room, a
  per-room sequence number ``seq`` and the room's ``epoch``. ``seq`` increases by one per event
  within an epoch; an epoch changes only when the room's history is lost (Redis restarted
  empty). A client that reconnects sends its last ``(epoch, seq)`` and gets what it missed,
  or is told ``recovered: false`` and starts again from the snapshot in the answer.
* Presence (viewer counts, sampled joins) is ephemeral: no ``seq``, never replayed.

The schemas below are the machine-readable contract: the tests validate real traffic against
them, and ``livecore protocol-schema`` prints them as one JSON document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fastjsonschema
import orjson
from jsonschema import Draft202012Validator

from livecore.chat import CHAT_BURST, CHAT_PER_S, MAX_CHAT_CHARS
from livecore.errors import ClientError, LivecoreError

PROTOCOL_VERSIONS = (1,)
CURRENT_VERSION = 1
SUBPROTOCOL_PREFIX = "livecore.v"

MAX_FRAME_BYTES = 8 * 1024
MAX_SUBSCRIPTIONS = 20
MAX_LIKES_PER_MESSAGE = 50
MAX_CLIENT_ID_CHARS = 64
#: Messages per second a connection may send in a sustained way, and the burst above it.
CONNECTION_MESSAGES_PER_S = 20.0
CONNECTION_BURST = 40
#: Messages sent over the limit (each answered ``rate_limited``) before the socket is closed.
FLOOD_STRIKES = 20
#: Room events kept for recovery (Redis stream, per room).
HISTORY_EVENTS = 1000
RECENT_CHAT_IN_SNAPSHOT = 50

# -- close codes (RFC 6455 section 7.4; 4000-4999 are ours) ----------------------------------

CLOSE_GOING_AWAY = 1001  # server shutting down: reconnect (to another node)
CLOSE_UNSUPPORTED_DATA = 1003  # a binary frame
CLOSE_TOO_BIG = 1009  # a frame over MAX_FRAME_BYTES
CLOSE_UNSUPPORTED_VERSION = 4000
CLOSE_SLOW_CONSUMER = 4008  # the client did not read fast enough
CLOSE_FLOODING = 4029  # kept sending past the rate limit

CLOSE_CODES = {
    CLOSE_GOING_AWAY: "going_away",
    CLOSE_UNSUPPORTED_DATA: "binary_not_supported",
    CLOSE_TOO_BIG: "message_too_big",
    CLOSE_UNSUPPORTED_VERSION: "unsupported_version",
    CLOSE_SLOW_CONSUMER: "slow_consumer",
    CLOSE_FLOODING: "flooding",
}


def limits() -> dict[str, Any]:
    """The limits a client is told in ``hello``."""
    return {
        "max_frame_bytes": MAX_FRAME_BYTES,
        "max_subscriptions": MAX_SUBSCRIPTIONS,
        "chat_max_chars": MAX_CHAT_CHARS,
        "chat_burst": CHAT_BURST,
        "chat_per_s": CHAT_PER_S,
        "likes_per_message": MAX_LIKES_PER_MESSAGE,
        "messages_per_s": CONNECTION_MESSAGES_PER_S,
        "messages_burst": CONNECTION_BURST,
    }


def negotiate_version(subprotocols: list[str], query_version: str | None) -> int | None:
    """The version to speak, from the offered subprotocols or ``?v=``; None if unsupported."""
    prefix = SUBPROTOCOL_PREFIX
    offered = [p[len(prefix) :] for p in subprotocols if p.startswith(prefix)]
    if query_version is not None:
        offered.append(query_version)
    if not offered:
        return CURRENT_VERSION
    for text in offered:
        if text.isdigit() and int(text) in PROTOCOL_VERSIONS:
            return int(text)
    return None


# -- schemas --------------------------------------------------------------------------------

Schema = dict[str, Any]

_ID: Schema = {"type": "string", "minLength": 1, "maxLength": MAX_CLIENT_ID_CHARS}
_UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ROOM: Schema = {"type": "string", "format": "uuid", "pattern": _UUID_PATTERN,
                 "description": "A stream id."}
_UUID: Schema = {"type": "string", "format": "uuid"}


def _client(type_name: str, properties: dict[str, Schema], required: list[str]) -> Schema:
    return {
        "type": "object",
        "properties": {"type": {"const": type_name}, "id": _ID, **properties},
        "required": ["type", *required],
        "additionalProperties": False,
    }


CLIENT_SCHEMAS: dict[str, Schema] = {
    "auth": _client("auth", {"token": {"type": "string", "minLength": 1, "maxLength": 200}},
                    ["token"]),
    "subscribe": _client(
        "subscribe",
        {
            "room": _ROOM,
            "since": {
                "type": "object",
                "properties": {
                    "epoch": {"type": "string", "maxLength": 64},
                    "seq": {"type": "integer", "minimum": 0},
                },
                "required": ["epoch", "seq"],
                "additionalProperties": False,
            },
        },
        ["room"],
    ),
    "unsubscribe": _client("unsubscribe", {"room": _ROOM}, ["room"]),
    "chat": _client(
        "chat",
        {"room": _ROOM, "text": {"type": "string", "maxLength": MAX_CHAT_CHARS * 4}},
        ["room", "text"],
    ),
    "like": _client(
        "like",
        {"room": _ROOM, "count": {"type": "integer", "minimum": 1,
                                  "maximum": MAX_LIKES_PER_MESSAGE}},
        ["room"],
    ),
    "ping": _client("ping", {}, []),
    "gift": _client(
        "gift",
        {"room": _ROOM,
         "gift_id": {**_UUID, "pattern": _UUID_PATTERN,
                     "description": "Chosen by the client; a retry reuses it."},
         "gift": {"type": "string", "maxLength": 32},
         "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
        ["room", "gift_id", "gift"],
    ),
}

# Server messages are open: they leave ``additionalProperties`` at its default (allowed), as
# do the objects inside them, because a later version of v1 may add optional properties
# (docs/protocol.md, "Messages"); a client that validates what it receives against this
# document keeps working when one appears. Client messages above are closed: the server
# answers an unknown property with ``invalid_message``.

#: The server message that answers each client message when it succeeds (``error`` when not).
CLIENT_ANSWERS: dict[str, str] = {name: "ack" for name in CLIENT_SCHEMAS} | {"ping": "pong"}

_USER_REF: Schema = {
    "type": "object",
    "properties": {"id": _UUID, "username": {"type": "string"}},
    "required": ["id", "username"],
}


def _room_event(type_name: str, data: Schema) -> Schema:
    return {
        "type": "object",
        "properties": {
            "type": {"const": type_name},
            "seq": {"type": "integer", "minimum": 1},
            "epoch": {"type": "string"},
            "room": _ROOM,
            "ts": {"type": "number", "description": "Server time, epoch seconds."},
            "data": data,
        },
        "required": ["type", "seq", "epoch", "room", "ts", "data"],
    }


def _object(properties: dict[str, Schema], required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }


_GOAL: Schema = _object({
    "target_coins": {"type": "integer", "minimum": 1},
    "progress_coins": {"type": "integer", "minimum": 0},
    "percent": {"type": "integer", "minimum": 0, "maximum": 100},
    "reached": {"type": "boolean"},
    "title": {"type": "string"},
})
_BOARD: Schema = _object({
    "coins": {"type": "integer", "minimum": 0},
    "gifts": {"type": "integer", "minimum": 0},
    "top": {"type": "array", "maxItems": 10, "items": _object({
        "user": _USER_REF, "coins": {"type": "integer", "minimum": 1}})},
})

ROOM_EVENT_SCHEMAS: dict[str, Schema] = {
    "chat.message": _room_event(
        "chat.message",
        _object({"message_id": _UUID, "user": _USER_REF, "text": {"type": "string"}}),
    ),
    "chat.removed": _room_event(
        "chat.removed", _object({"message_id": _UUID, "by": _USER_REF})
    ),
    "chat.settings": _room_event(
        "chat.settings",
        _object({"slow_mode_s": {"type": "integer", "minimum": 0},
                 "blocked_words_count": {"type": "integer", "minimum": 0}}),
    ),
    "user.muted": _room_event(
        "user.muted",
        _object({"user": _USER_REF, "until": {"type": ["number", "null"]}, "by": _USER_REF}),
    ),
    "user.banned": _room_event(
        "user.banned",
        _object({"user": _USER_REF, "until": {"type": ["number", "null"]}, "by": _USER_REF}),
    ),
    "user.unsanctioned": _room_event(
        "user.unsanctioned", _object({"user": _USER_REF, "by": _USER_REF})
    ),
    "likes": _room_event(
        "likes",
        _object({"total": {"type": "integer", "minimum": 0},
                 "delta": {"type": "integer", "minimum": 1}}),
    ),
    "gift.sent": _room_event(
        "gift.sent",
        _object({"gift_id": _UUID, "sender": _USER_REF, "gift": {"type": "string"},
                 "name": {"type": "string"}, "animation": {"type": "string"},
                 "quantity": {"type": "integer", "minimum": 1},
                 "coins": {"type": "integer", "minimum": 1},
                 "combo": {"type": ["integer", "null"], "minimum": 1}}),
    ),
    "gift.combo_ended": _room_event(
        "gift.combo_ended",
        _object({"sender": _USER_REF, "gift": {"type": "string"},
                 "combo": {"type": "integer", "minimum": 1}}),
    ),
    "goal.updated": _room_event("goal.updated", _GOAL),
    "goal.cleared": _room_event("goal.cleared", _object({})),
    "leaderboard.updated": _room_event("leaderboard.updated", _BOARD),
    "stream.state": _room_event(
        "stream.state",
        _object({"state": {"enum": ["created", "live", "ended"]}}),
    ),
}

_SNAPSHOT: Schema = _object(
    {
        "stream": _object({"state": {"enum": ["created", "live", "ended"]},
                           "title": {"type": "string"},
                           "creator": _USER_REF}),
        "viewers": {"type": "integer", "minimum": 0},
        "likes": {"type": "integer", "minimum": 0},
        "slow_mode_s": {"type": "integer", "minimum": 0},
        "recent_chat": {"type": "array",
                        "items": ROOM_EVENT_SCHEMAS["chat.message"]},
        "goal": {"anyOf": [_GOAL, {"type": "null"}]},
        "leaderboard": _BOARD,
    }
)

SERVER_SCHEMAS: dict[str, Schema] = {
    "hello": {
        "type": "object",
        "properties": {
            "type": {"const": "hello"},
            "v": {"enum": list(PROTOCOL_VERSIONS)},
            "session": {"type": "string"},
            "server_time": {"type": "number"},
            "user": {"anyOf": [_USER_REF, {"type": "null"}]},
            "limits": {"type": "object"},
        },
        "required": ["type", "v", "session", "server_time", "user", "limits"],
    },
    "ack": {
        "type": "object",
        "properties": {"type": {"const": "ack"}, "id": _ID, "result": {"type": "object"}},
        "required": ["type", "result"],
    },
    "error": {
        "type": "object",
        "properties": {
            "type": {"const": "error"},
            "id": _ID,
            "code": {"type": "string"},
            "message": {"type": "string"},
            "retry_after_s": {"type": "integer"},
            "room": _ROOM,
        },
        "required": ["type", "code", "message"],
    },
    "pong": {
        "type": "object",
        "properties": {"type": {"const": "pong"}, "id": _ID, "server_time": {"type": "number"}},
        "required": ["type", "server_time"],
    },
    "presence": {
        "type": "object",
        "properties": {
            "type": {"const": "presence"},
            "room": _ROOM,
            "viewers": {"type": "integer", "minimum": 0},
            "watching": {"type": "integer", "minimum": 0},
            "joined": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        },
        "required": ["type", "room", "viewers", "joined"],
    },
    "unsubscribed": {
        "type": "object",
        "properties": {
            "type": {"const": "unsubscribed"},
            "room": _ROOM,
            "reason": {"enum": ["banned"]},
        },
        "required": ["type", "room", "reason"],
    },
    "closing": {
        "type": "object",
        "properties": {
            "type": {"const": "closing"},
            "reason": {"type": "string"},
            "reconnect": {"type": "boolean"},
        },
        "required": ["type", "reason", "reconnect"],
    },
    **ROOM_EVENT_SCHEMAS,
}

#: The result of a ``subscribe``, inside its ``ack``.
SUBSCRIBE_RESULT: Schema = _object(
    {
        "room": _ROOM,
        "epoch": {"type": "string"},
        "seq": {"type": "integer", "minimum": 0},
        "recovered": {"type": "boolean"},
        "missed": {"type": "integer", "minimum": 0},
        "snapshot": _SNAPSHOT,
    },
    ["room", "epoch", "seq", "recovered", "missed"],
)


def document() -> dict[str, Any]:
    """Every schema as one JSON Schema document (``$defs`` by message type)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://livecore.invalid/protocol/v1.json",
        "title": "Livecore websocket protocol, version 1",
        "$comment": (
            "Client messages are closed (additionalProperties false): the server refuses an "
            "unknown property. Server messages are open: a later version of v1 may add "
            "optional properties and message types; ignore what you do not know."
        ),
        "$defs": {
            "client": CLIENT_SCHEMAS,
            "server": SERVER_SCHEMAS,
            "subscribe_result": SUBSCRIBE_RESULT,
        },
    }


# -- parsing client messages ----------------------------------------------------------------

_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in CLIENT_SCHEMAS.items()}
#: The same schemas compiled to Python (about 15 times faster than the validators above, on
#: the path of every client message). They use only keywords both libraries implement the
#: same way (checked by tests/unit/test_wire.py); formats are not asserted by either. A
#: message they refuse is judged again by the reference validator, which has the last word
#: and words the error.
_COMPILED = {name: fastjsonschema.compile(schema, use_formats=False)
             for name, schema in CLIENT_SCHEMAS.items()}


@dataclass(frozen=True)
class ClientMessage:
    type: str
    id: str | None
    body: dict[str, Any]


class ProtocolError(ClientError):
    """A message we cannot act on; answered with an ``error`` (the socket stays open)."""

    default_code = "invalid_message"


def parse_client_message(raw: str | bytes) -> ClientMessage:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("The message is not valid JSON.", code="invalid_json") from None
    if not isinstance(message, dict):
        raise ProtocolError("A message must be a JSON object.", code="invalid_message")
    message_id = message.get("id")
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_CLIENT_ID_CHARS:
        message_id = None
    kind = message.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("A message needs a string 'type'.", code="invalid_message",
                            id=message_id)
    compiled = _COMPILED.get(kind)
    if compiled is None:
        raise ProtocolError(f"Unknown message type {kind!r}.", code="unknown_type", id=message_id)
    try:
        compiled(message)
        return ClientMessage(kind, message_id, message)
    except fastjsonschema.JsonSchemaValueException:
        pass
    error = next(iter(_VALIDATORS[kind].iter_errors(message)), None)
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "message"
        raise ProtocolError(f"Invalid {kind} message at {where}: {error.message}",
                            code="invalid_message", id=message_id)
    return ClientMessage(kind, message_id, message)


def error_message(error: LivecoreError, message_id: str | None = None,
                  room: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if message_id is not None:
        body["id"] = message_id
    retry = error.details.get("retry_after_s")
    if isinstance(retry, int):
        body["retry_after_s"] = retry
    if room is not None:
        body["room"] = room
    return body
