"""HTTP endpoints for chat moderation: settings, message removal, mutes and bans.

Each action is saved in PostgreSQL first (with an entry in ``chat_moderation_log``), then
published as a room event, which every node applies to its cached rules and relays to its
sockets. A node that activates the room later loads the saved state, so the rule holds on
every node.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from aiohttp import web

from gateway.api import Call, Route, owned_or_moderated
from gateway.http import json_response
from gateway.store import ChatSettings, SanctionRecord
from livecore.chat import MAX_SLOW_MODE_S, SanctionKind, clean_blocked_words
from livecore.errors import Conflict, NotFound, ValidationFailed
from livecore.ids import parse_user_id, parse_uuid
from livecore.schemas import UUID, Schema
from livecore.streams import Stream
from livecore.times import iso_time

CHAT_SETTINGS: Schema = {
    "type": "object",
    "properties": {
        "slow_mode_s": {"type": "integer", "minimum": 0, "maximum": MAX_SLOW_MODE_S},
        "blocked_words": {"type": "array", "items": {"type": "string", "maxLength": 64},
                          "maxItems": 500},
    },
    "required": ["slow_mode_s", "blocked_words"],
}
CHAT_SETTINGS_UPDATE: Schema = {
    **CHAT_SETTINGS, "required": [], "additionalProperties": False, "minProperties": 1,
}
SANCTION_BODY: Schema = {
    "type": "object",
    "properties": {
        "kind": {"enum": [k.value for k in SanctionKind]},
        "duration_s": {"type": ["integer", "null"], "minimum": 60, "maximum": 366 * 24 * 3600,
                       "description": "Omit or null: until lifted."},
        "reason": {"type": "string", "maxLength": 500},
    },
    "required": ["kind"],
    "additionalProperties": False,
}
SANCTION: Schema = {
    "type": "object",
    "properties": {
        "user_id": UUID,
        "username": {"type": "string"},
        "kind": {"enum": [k.value for k in SanctionKind]},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "reason": {"type": "string"},
    },
    "required": ["user_id", "username", "kind", "expires_at", "reason"],
}
SANCTION_LIST: Schema = {
    "type": "object",
    "properties": {"sanctions": {"type": "array", "items": SANCTION}},
    "required": ["sanctions"],
}


def _ref(user_id: Any, username: str) -> dict[str, str]:
    return {"id": str(user_id), "username": username}


async def _publish_to_channel(call: Call, stream: Stream, event_type: str,
                              data: dict[str, Any]) -> None:
    """A sanction holds in all of the creator's rooms: tell the room named in the request and
    the creator's open (live or upcoming) room, when that is another one."""
    rooms = {str(stream.id)}
    current = await call.services.streams.open_stream_of(stream.creator_id)
    if current is not None:
        rooms.add(str(current.id))
    for room in sorted(rooms):
        await call.services.bus.publish(room, event_type, data, time.time())


def _sanction_json(record: SanctionRecord) -> dict[str, Any]:
    return {
        "user_id": str(record.user_id),
        "username": record.username,
        "kind": record.kind.value,
        "expires_at": iso_time(record.expires_at),
        "reason": record.reason,
    }


async def get_chat_settings(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    settings = await call.services.chat.settings(stream.id)
    return json_response({"slow_mode_s": settings.slow_mode_s,
                          "blocked_words": settings.blocked_words})


async def put_chat_settings(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    current = await call.services.chat.settings(stream.id)
    words = current.blocked_words
    if "blocked_words" in call.body:
        words = clean_blocked_words(call.body["blocked_words"])
    settings = ChatSettings(call.body.get("slow_mode_s", current.slow_mode_s), words)
    await call.services.chat.save_settings(stream.id, settings, actor_id=call.account.id,
                                           now=call.now)
    await call.services.bus.publish(
        str(stream.id), "chat.settings",
        {"slow_mode_s": settings.slow_mode_s, "blocked_words_count": len(words)}, time.time(),
    )
    return json_response({"slow_mode_s": settings.slow_mode_s, "blocked_words": words})


async def remove_message(call: Call) -> web.StreamResponse:
    """Remove a chat message of this stream's room: one still in the room's stored history
    (its last events, as recovery keeps them); anything else is 404 ``message_not_found`` and
    publishes nothing. Removing a message already removed changes nothing (204)."""
    stream = await owned_or_moderated(call)
    message_id = parse_uuid(call.request.match_info["message_id"], what="message")
    room, needle = str(stream.id), str(message_id)
    state = await call.services.bus.chat_message_state(room, needle)
    if state == "missing":
        raise NotFound(f"No chat message with id {needle!r} in this stream's recent chat.",
                       code="message_not_found")
    if state == "removed":
        return web.Response(status=204)
    await call.services.chat.log_removal(stream.id, message_id, actor_id=call.account.id,
                                         now=call.now)
    # Checked again in the same atomic step as the publish: a concurrent removal of the same
    # message publishes once.
    await call.services.bus.remove_chat(
        room, needle,
        {"message_id": needle, "by": _ref(call.account.id, call.account.username)},
        time.time(),
    )
    return web.Response(status=204)


async def list_sanctions(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    records = await call.services.chat.sanctions(stream.creator_id, call.now)
    return json_response({"sanctions": [_sanction_json(r) for r in records]})


async def put_sanction(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    user_id = parse_user_id(call.request.match_info["user_id"])
    target = await call.services.accounts.get(user_id)
    if target.id == stream.creator_id:
        raise Conflict("The stream's creator cannot be muted or banned in their own room.",
                       code="cannot_sanction_owner")
    kind = SanctionKind(call.body["kind"])
    duration = call.body.get("duration_s")
    expires_at = None if duration is None else call.now + dt.timedelta(seconds=duration)
    reason = call.body.get("reason", "").strip()
    if "\x00" in reason:
        raise ValidationFailed("The reason contains a NUL character.", code="invalid_field",
                               field="reason")
    await call.services.chat.sanction(stream, user_id, kind, expires_at=expires_at,
                                      reason=reason, actor_id=call.account.id, now=call.now)
    await _publish_to_channel(
        call, stream, f"user.{'banned' if kind is SanctionKind.BAN else 'muted'}",
        {"user": _ref(target.id, target.username),
         "until": None if expires_at is None else expires_at.timestamp(),
         "by": _ref(call.account.id, call.account.username)},
    )
    record = SanctionRecord(target.id, target.username, kind, expires_at, reason)
    return json_response(_sanction_json(record))


async def lift_sanction(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    user_id = parse_user_id(call.request.match_info["user_id"])
    target = await call.services.accounts.get(user_id)
    await call.services.chat.lift(stream, user_id, actor_id=call.account.id, now=call.now)
    await _publish_to_channel(
        call, stream, "user.unsanctioned",
        {"user": _ref(target.id, target.username),
         "by": _ref(call.account.id, call.account.username)},
    )
    return web.Response(status=204)


_BASE = "/api/v1/streams/{stream_id}/chat"
CHAT_ROUTES: tuple[Route, ...] = (
    Route("GET", f"{_BASE}/settings", get_chat_settings,
          "Chat settings: slow mode and blocked words (owner or moderator).", "user", "chat",
          response=CHAT_SETTINGS, errors=(403, 404)),
    Route("PUT", f"{_BASE}/settings", put_chat_settings,
          "Change slow mode and/or the blocked words (owner or moderator).", "user", "chat",
          body=CHAT_SETTINGS_UPDATE, response=CHAT_SETTINGS, errors=(403, 404)),
    Route("DELETE", f"{_BASE}/messages/{{message_id}}", remove_message,
          "Remove a chat message for everyone (owner or moderator).", "user", "chat",
          status=204, errors=(403, 404)),
    Route("GET", f"{_BASE}/sanctions", list_sanctions,
          "Active mutes and bans in the creator's rooms (owner or moderator).", "user", "chat",
          response=SANCTION_LIST, errors=(403, 404)),
    Route("PUT", f"{_BASE}/sanctions/{{user_id}}", put_sanction,
          "Mute or ban a user in the creator's rooms (owner or moderator).", "user", "chat",
          body=SANCTION_BODY, response=SANCTION, errors=(403, 404, 409)),
    Route("DELETE", f"{_BASE}/sanctions/{{user_id}}", lift_sanction,
          "Lift a mute or ban (owner or moderator).", "user", "chat", status=204,
          errors=(403, 404)),
)
