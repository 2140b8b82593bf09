"""HTTP endpoints of the gift economy: catalogue, sending gifts, wallets, grants, boards and
live goals."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api import Call, QueryParam, Route, owned_or_moderated
from gateway.gifts import GiftRequest, gift_json, parse_gift_id
from gateway.http import json_response
from ledger.batcher import grant
from livecore.accounts import Permission
from livecore.economy import (
    MAX_GIFT_PRICE_COINS,
    MAX_GIFT_QUANTITY,
    MAX_GOAL_COINS,
    MAX_GOAL_TITLE_CHARS,
    GiftType,
    Goal,
    iso_week,
    week_from_label,
)
from livecore.errors import BadRequest, ValidationFailed
from livecore.ids import StreamId, parse_user_id, parse_uuid_field
from livecore.schemas import UUID, Schema
from livecore.times import iso_time

MAX_GRANT_COINS = 1_000_000

GIFT_TYPE: Schema = {
    "type": "object",
    "properties": {
        "slug": {"type": "string"},
        "name": {"type": "string", "maxLength": 40},
        "price_coins": {"type": "integer", "minimum": 1, "maximum": MAX_GIFT_PRICE_COINS},
        "streakable": {"type": "boolean"},
        "animation": {"type": "string", "maxLength": 32},
        "is_active": {"type": "boolean"},
    },
    "required": ["slug", "name", "price_coins", "streakable", "animation", "is_active"],
}
GIFT_TYPE_BODY: Schema = {
    "type": "object",
    "properties": {k: v for k, v in GIFT_TYPE["properties"].items() if k != "slug"},
    "required": ["name", "price_coins", "streakable", "animation"],
    "additionalProperties": False,
}
CATALOGUE: Schema = {
    "type": "object",
    "properties": {"gifts": {"type": "array", "items": GIFT_TYPE}},
    "required": ["gifts"],
}
SEND_GIFT: Schema = {
    "type": "object",
    "properties": {
        "gift_id": {**UUID, "description": "Chosen by the client; a retry reuses it."},
        "stream_id": UUID,
        "gift": {"type": "string", "maxLength": 32},
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_GIFT_QUANTITY},
    },
    "required": ["gift_id", "stream_id", "gift"],
    "additionalProperties": False,
}
GIFT_RESULT: Schema = {
    "type": "object",
    "properties": {
        "gift_id": UUID, "stream_id": UUID, "gift": {"type": "string"},
        "name": {"type": "string"}, "quantity": {"type": "integer"},
        "coins": {"type": "integer"}, "combo": {"type": "integer"},
        "created_at": {"type": "string", "format": "date-time"},
        "replayed": {"type": "boolean"},
        "balance": {"type": "integer", "description": "The sender's coins after the gift."},
    },
    "required": ["gift_id", "stream_id", "gift", "quantity", "coins", "created_at", "replayed"],
}
WALLET: Schema = {
    "type": "object",
    "properties": {
        "coins": {"type": "integer"}, "diamonds": {"type": "integer"},
        "debt_coins": {"type": "integer", "description": "Coins you owe after a refund or "
                       "chargeback of coins already spent; gifts wait until it is paid."},
    },
    "required": ["coins", "diamonds", "debt_coins"],
}
GRANT_BODY: Schema = {
    "type": "object",
    "properties": {
        "grant_id": {**UUID, "description": "Chosen by the caller; a retry reuses it."},
        "user_id": UUID,
        "coins": {"type": "integer", "minimum": 1, "maximum": MAX_GRANT_COINS},
        "memo": {"type": "string", "maxLength": 500},
    },
    "required": ["grant_id", "user_id", "coins"],
    "additionalProperties": False,
}
GRANT_RESULT: Schema = {
    "type": "object",
    "properties": {"grant_id": UUID, "user_id": UUID, "coins": {"type": "integer"},
                   "replayed": {"type": "boolean"}},
    "required": ["grant_id", "user_id", "coins", "replayed"],
}


def _type_json(gift: GiftType) -> dict[str, Any]:
    return {"slug": gift.slug, "name": gift.name, "price_coins": gift.price_coins,
            "streakable": gift.streakable, "animation": gift.animation,
            "is_active": gift.is_active}


async def get_catalogue(call: Call) -> web.StreamResponse:
    catalogue = await call.services.gifts.catalogue()
    return json_response({"gifts": [_type_json(g) for g in catalogue.values() if g.is_active]})


async def put_gift_type(call: Call) -> web.StreamResponse:
    body = call.body
    gift = GiftType(call.request.match_info["slug"], body["name"].strip(), body["price_coins"],
                    body["streakable"], body["animation"], body.get("is_active", True))
    saved = await call.services.gifts.save_gift_type(gift)
    return json_response(_type_json(saved))


async def send_gift(call: Call) -> web.StreamResponse:
    request = GiftRequest(parse_gift_id(call.body["gift_id"]),
                          StreamId(parse_uuid_field(call.body["stream_id"], "stream_id")),
                          call.body["gift"], call.body.get("quantity", 1))
    outcome, combo = await call.services.gifts.send(call.account, request)
    catalogue = await call.services.gifts.catalogue()
    result = gift_json(outcome, catalogue.get(outcome.order.gift_slug), combo)
    result["balance"] = (await call.services.gifts.wallet(call.account.id))["coins"]
    return json_response(result, status=201 if outcome.is_new else 200)


async def stream_board(call: Call) -> web.StreamResponse:
    stream = await call.services.streams.get(
        StreamId(parse_uuid_field(call.request.match_info["stream_id"], "stream_id")))
    totals = await call.services.gifts.projection.totals(stream.id, top=10)
    return json_response({"stream_id": str(stream.id), "coins": totals.coins,
                          "gifts": totals.gifts,
                          "top": [{"user_id": user, "coins": coins} for user, coins in totals.top]})


_PERIODS = ("week", "all")


async def creator_board(call: Call) -> web.StreamResponse:
    creator = await call.services.accounts.get(parse_user_id(call.request.match_info["user_id"]))
    period = call.request.query.get("period", "week")
    if period not in _PERIODS:
        raise BadRequest("period must be week or all.", code="invalid_period")
    week = None
    if period == "week":
        week = call.request.query.get("week") or iso_week(call.now)
        try:
            week_from_label(week)
        except ValidationFailed:
            raise BadRequest("week looks like 2026-W48 (ISO 8601, UTC).",
                             code="invalid_week") from None
    top = await call.services.gifts.projection.creator_board(creator.id, week=week, top=10)
    return json_response({"creator_id": str(creator.id), "period": period, "week": week,
                          "top": [{"user_id": user, "coins": coins} for user, coins in top]})


def _goal_json(stream_id: StreamId, goal: Goal, set_at: Any) -> dict[str, Any]:
    return {"stream_id": str(stream_id), **goal.json(), "set_at": iso_time(set_at)}


async def get_goal(call: Call) -> web.StreamResponse:
    stream = await call.services.streams.get(
        StreamId(parse_uuid_field(call.request.match_info["stream_id"], "stream_id")))
    goal, set_at = await call.services.gifts.goal(stream.id)
    return json_response(_goal_json(stream.id, goal, set_at))


async def put_goal(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call, owner_only=True)
    goal, set_at = await call.services.gifts.set_goal(
        stream, target_coins=call.body["target_coins"], title=call.body.get("title", ""),
        actor_id=call.account.id, now=call.now)
    return json_response(_goal_json(stream.id, goal, set_at))


async def delete_goal(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call, owner_only=True)
    await call.services.gifts.clear_goal(stream)
    return web.Response(status=204)


async def my_wallet(call: Call) -> web.StreamResponse:
    return json_response(await call.services.gifts.wallet(call.account.id))


async def post_grant(call: Call) -> web.StreamResponse:
    grant_id = parse_uuid_field(call.body["grant_id"], "grant_id")
    user = await call.services.accounts.get(parse_user_id(call.body["user_id"]))
    applied = await grant(call.services.pool, grant_id=grant_id, user_id=user.id,
                          coins=call.body["coins"], memo=call.body.get("memo", ""),
                          actor_id=call.account.id, now=call.now)
    return json_response({"grant_id": str(grant_id), "user_id": str(user.id),
                          "coins": call.body["coins"], "replayed": not applied},
                         status=201 if applied else 200)


BOARD: Schema = {
    "type": "object",
    "properties": {
        "stream_id": UUID, "coins": {"type": "integer"}, "gifts": {"type": "integer"},
        "top": {"type": "array", "items": {
            "type": "object",
            "properties": {"user_id": UUID, "coins": {"type": "integer"}},
            "required": ["user_id", "coins"]}},
    },
    "required": ["stream_id", "coins", "gifts", "top"],
}

CREATOR_BOARD: Schema = {
    "type": "object",
    "properties": {
        "creator_id": UUID, "period": {"enum": list(_PERIODS)},
        "week": {"type": ["string", "null"], "description": "ISO 8601 week (UTC), 2026-W48."},
        "top": BOARD["properties"]["top"],
    },
    "required": ["creator_id", "period", "week", "top"],
}
GOAL_BODY: Schema = {
    "type": "object",
    "properties": {
        "target_coins": {"type": "integer", "minimum": 1, "maximum": MAX_GOAL_COINS},
        "title": {"type": "string", "maxLength": MAX_GOAL_TITLE_CHARS},
    },
    "required": ["target_coins"],
    "additionalProperties": False,
}
GOAL: Schema = {
    "type": "object",
    "properties": {
        "stream_id": UUID, "target_coins": {"type": "integer"},
        "progress_coins": {"type": "integer",
                           "description": "Coins of gifts to the stream since the goal was set."},
        "percent": {"type": "integer", "minimum": 0, "maximum": 100},
        "reached": {"type": "boolean"}, "title": {"type": "string"},
        "set_at": {"type": "string", "format": "date-time"},
    },
    "required": ["stream_id", "target_coins", "progress_coins", "percent", "reached", "title",
                 "set_at"],
}

GIFT_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/gifts/catalogue", get_catalogue, "The gifts on offer.", "public",
          "gifts", response=CATALOGUE),
    Route("PUT", "/api/v1/gifts/catalogue/{slug}", put_gift_type,
          "Add or change a gift (admins).", Permission.ECONOMY_MANAGE, "gifts",
          body=GIFT_TYPE_BODY, response=GIFT_TYPE, errors=(403, 422)),
    Route("POST", "/api/v1/gifts", send_gift,
          "Send a gift to a live stream; 201 when new, 200 when replaying a retry.", "user",
          "gifts", body=SEND_GIFT, response=GIFT_RESULT, status=201,
          errors=(402, 403, 404, 409, 422)),
    Route("GET", "/api/v1/streams/{stream_id}/leaderboard", stream_board,
          "The stream's gift totals and top gifters (live projection).", "public", "gifts",
          response=BOARD, errors=(404,)),
    Route("GET", "/api/v1/creators/{user_id}/leaderboard", creator_board,
          "A creator's top gifters over all their streams: this ISO week (UTC) or all time.",
          "public", "gifts", response=CREATOR_BOARD,
          query=(QueryParam("period", "week (default) or all.",
                            {"type": "string", "enum": list(_PERIODS)}),
                 QueryParam("week", "With period=week: which week, like 2026-W48 (default: "
                            "this one; boards are kept 4 weeks after their week).")),
          errors=(400, 404)),
    Route("GET", "/api/v1/streams/{stream_id}/goal", get_goal,
          "The stream's live goal and its progress.", "public", "gifts", response=GOAL,
          errors=(404,)),
    Route("PUT", "/api/v1/streams/{stream_id}/goal", put_goal,
          "Set (or replace) the stream's goal; progress counts gifts from now (owner).", "user",
          "gifts", body=GOAL_BODY, response=GOAL, errors=(403, 404, 409, 422)),
    Route("DELETE", "/api/v1/streams/{stream_id}/goal", delete_goal,
          "Remove the stream's goal (owner).", "user", "gifts", status=204,
          errors=(403, 404)),
    Route("GET", "/api/v1/me/wallet", my_wallet, "Your coins, diamonds and any debt.", "user",
          "gifts", response=WALLET),
    Route("POST", "/api/v1/admin/grants", post_grant,
          "Grant promotional coins (admins); idempotent by grant_id.",
          Permission.ECONOMY_MANAGE, "gifts", body=GRANT_BODY, response=GRANT_RESULT,
          status=201, errors=(403, 404, 409, 422)),
)
