"""HTTP endpoints of the gift economy: catalogue, sending gifts, wallets, grants."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from gateway.api import Call, Route
from gateway.gifts import GiftRequest, gift_json, parse_gift_id
from gateway.http import json_response
from ledger.batcher import grant
from livecore.accounts import Permission
from livecore.economy import MAX_GIFT_PRICE_COINS, MAX_GIFT_QUANTITY, GiftType
from livecore.errors import ValidationFailed
from livecore.ids import StreamId, parse_user_id
from livecore.schemas import UUID, Schema

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
    "properties": {"coins": {"type": "integer"}, "diamonds": {"type": "integer"}},
    "required": ["coins", "diamonds"],
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


def _uuid(raw: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationFailed(f"{field} must be a UUID.", code="invalid_field",
                               field=field) from None


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
                          StreamId(_uuid(call.body["stream_id"], "stream_id")),
                          call.body["gift"], call.body.get("quantity", 1))
    outcome, combo = await call.services.gifts.send(call.account, request)
    catalogue = await call.services.gifts.catalogue()
    result = gift_json(outcome, catalogue.get(outcome.order.gift_slug), combo)
    result["balance"] = (await call.services.gifts.wallet(call.account.id))["coins"]
    return json_response(result, status=201 if outcome.is_new else 200)


async def stream_board(call: Call) -> web.StreamResponse:
    stream = await call.services.streams.get(
        StreamId(_uuid(call.request.match_info["stream_id"], "stream_id")))
    totals = await call.services.gifts.projection.totals(stream.id, top=10)
    return json_response({"stream_id": str(stream.id), "coins": totals.coins,
                          "gifts": totals.gifts,
                          "top": [{"user_id": user, "coins": coins} for user, coins in totals.top]})


async def my_wallet(call: Call) -> web.StreamResponse:
    return json_response(await call.services.gifts.wallet(call.account.id))


async def post_grant(call: Call) -> web.StreamResponse:
    grant_id = _uuid(call.body["grant_id"], "grant_id")
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

GIFT_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/gifts/catalogue", get_catalogue, "The gifts on offer.", "public",
          "gifts", response=CATALOGUE),
    Route("PUT", "/api/v1/gifts/catalogue/{slug}", put_gift_type,
          "Add or change a gift (admins).", Permission.ECONOMY_MANAGE, "gifts",
          body=GIFT_TYPE_BODY, response=GIFT_TYPE, errors=(403, 422)),
    Route("POST", "/api/v1/gifts", send_gift,
          "Send a gift to a live stream; 201 when new, 200 when replaying a retry.", "user",
          "gifts", body=SEND_GIFT, response=GIFT_RESULT, status=201,
          errors=(402, 404, 409, 422)),
    Route("GET", "/api/v1/streams/{stream_id}/leaderboard", stream_board,
          "The stream's gift totals and top gifters (live projection).", "public", "gifts",
          response=BOARD, errors=(404,)),
    Route("GET", "/api/v1/me/wallet", my_wallet, "Your coins and diamonds.", "user", "gifts",
          response=WALLET),
    Route("POST", "/api/v1/admin/grants", post_grant,
          "Grant promotional coins (admins); idempotent by grant_id.",
          Permission.ECONOMY_MANAGE, "gifts", body=GRANT_BODY, response=GRANT_RESULT,
          status=201, errors=(403, 404, 409, 422)),
)
