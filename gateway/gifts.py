"""Sending gifts: pricing from the catalogue, the batcher, then the room.

The server prices every gift from its catalogue and the creator's terms; a client only names
the gift, the quantity and the id it chose. The sender is answered after COMMIT; only then is
the gift published to the room (``gift.sent``, with the combo count), so a room never shows a
gift that is not in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.exceptions

from ledger.batcher import GiftBatcher, GiftOrder, GiftOutcome
from ledger.projection import RedisProjection
from livecore.accounts import Account
from livecore.economy import DEFAULT_CATALOGUE, ComboTracker, GiftType, price_of, split
from livecore.errors import Conflict, ValidationFailed
from livecore.ids import StreamId
from livecore.streams import StreamState

log = logging.getLogger(__name__)

CATALOGUE_TTL_S = 10.0
PROJECTION_CHECK_S = 2.0


@dataclass(frozen=True)
class GiftRequest:
    gift_id: uuid.UUID
    stream_id: StreamId
    slug: str
    quantity: int


def gift_json(outcome: GiftOutcome, gift: GiftType | None, combo: int | None) -> dict[str, Any]:
    order = outcome.order
    data: dict[str, Any] = {
        "gift_id": str(order.gift_id),
        "stream_id": str(order.stream_id),
        "gift": order.gift_slug,
        "quantity": order.quantity,
        "coins": order.price,
        "created_at": outcome.created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "replayed": not outcome.is_new,
    }
    if combo is not None:
        data["combo"] = combo
    if gift is not None:
        data["name"] = gift.name
    return data


class GiftService:
    def __init__(self, services: Any) -> None:
        self.services = services
        self.batcher = GiftBatcher(services.pool, clock=services.clock)
        self.projection = RedisProjection(services.redis, services.settings.redis_prefix)
        self._watch: asyncio.Task[None] | None = None
        self.combos = ComboTracker()
        self._catalogue: dict[str, GiftType] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._users = 0

    async def start(self) -> None:
        """Start with the first application that uses it (tests run several at once)."""
        self._users += 1
        if self._users == 1:
            await self.seed_catalogue()
            await self.batcher.start()
            self._watch = asyncio.create_task(self._watch_projection(), name="projection")

    async def stop(self) -> None:
        self._users -= 1
        if self._users == 0:
            if self._watch is not None:
                self._watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watch
            await self.batcher.stop()

    async def _watch_projection(self) -> None:
        """Notice when Redis lost its data (the sentinel is gone) and rebuild the live
        streams from PostgreSQL, while gifts keep flowing."""
        while True:
            try:
                if not await self.projection.is_intact():
                    rebuilt = await self.projection.rebuild_live(self.services.pool)
                    log.warning("projection rebuilt from the ledger",
                                extra={"streams": rebuilt})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("projection check failed", extra={"error": repr(exc)})
            await asyncio.sleep(PROJECTION_CHECK_S)

    async def seed_catalogue(self) -> None:
        """A new installation starts with the default catalogue (admins edit it later); an
        installation whose catalogue has any entry is left alone."""
        async with self.services.pool.acquire() as conn, conn.transaction():
            # Two processes starting at once must not both seed.
            await conn.execute("LOCK TABLE gift_types IN SHARE ROW EXCLUSIVE MODE")
            if await conn.fetchval("SELECT count(*) FROM gift_types"):
                return
            await conn.executemany(
                "INSERT INTO gift_types (slug, name, price_coins, streakable, animation)"
                " VALUES ($1, $2, $3, $4, $5)",
                [(g.slug, g.name, g.price_coins, g.streakable, g.animation)
                 for g in DEFAULT_CATALOGUE],
            )

    async def catalogue(self, *, fresh: bool = False) -> dict[str, GiftType]:
        if fresh or time.monotonic() - self._loaded_at > CATALOGUE_TTL_S:
            async with self._lock:
                rows = await self.services.pool.fetch(
                    "SELECT slug, name, price_coins, streakable, animation, is_active"
                    " FROM gift_types ORDER BY price_coins, slug")
                self._catalogue = {r["slug"]: GiftType(r["slug"], r["name"], r["price_coins"],
                                                       r["streakable"], r["animation"],
                                                       r["is_active"]) for r in rows}
                self._loaded_at = time.monotonic()
        return self._catalogue

    async def save_gift_type(self, gift: GiftType) -> GiftType:
        gift.check()
        await self.services.pool.execute(
            """
            INSERT INTO gift_types (slug, name, price_coins, streakable, animation, is_active,
                                    updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, now())
            ON CONFLICT (slug) DO UPDATE SET name = EXCLUDED.name,
                price_coins = EXCLUDED.price_coins, streakable = EXCLUDED.streakable,
                animation = EXCLUDED.animation, is_active = EXCLUDED.is_active,
                updated_at = now()
            """,
            gift.slug, gift.name, gift.price_coins, gift.streakable, gift.animation,
            gift.is_active,
        )
        await self.catalogue(fresh=True)
        return gift

    async def platform_cut_bp(self, creator_id: uuid.UUID) -> int:
        custom = await self.services.pool.fetchval(
            "SELECT platform_cut_bp FROM creator_terms WHERE creator_id = $1", creator_id)
        return int(custom) if custom is not None else self.services.settings.platform_cut_bp

    async def send(self, sender: Account, request: GiftRequest) -> tuple[GiftOutcome, int | None]:
        """Price, commit, then publish; returns the outcome and the combo count."""
        catalogue = await self.catalogue()
        gift = catalogue.get(request.slug)
        if gift is None:
            raise ValidationFailed(f"No gift named {request.slug!r} in the catalogue.",
                                   code="unknown_gift", field="gift")
        price = price_of(gift, request.quantity)
        stream = await self.services.streams.get(request.stream_id)
        if stream.creator_id == sender.id:
            raise Conflict("Creators cannot send gifts to their own stream.",
                           code="cannot_gift_self")
        if stream.state is not StreamState.LIVE:
            raise Conflict("Gifts go to live streams only.", code="stream_not_live",
                           state=stream.state.value)
        parts = split(price, await self.platform_cut_bp(stream.creator_id))
        order = GiftOrder(request.gift_id, sender.id, stream.id, stream.creator_id, gift.slug,
                          request.quantity, price, parts.creator_share, parts.platform_cut)
        outcome = await self.batcher.send(order)
        await self._project(outcome)
        if not outcome.is_new:
            return outcome, None
        combo = self.combos.record(str(stream.id), str(sender.id), gift, request.quantity,
                                   time.monotonic())
        try:
            await self.services.bus.publish(str(stream.id), "gift.sent", {
                "gift_id": str(order.gift_id),
                "sender": {"id": str(sender.id), "username": sender.username},
                "gift": gift.slug, "name": gift.name, "animation": gift.animation,
                "quantity": order.quantity, "coins": order.price,
                "combo": combo if gift.streakable else None,
            }, time.time())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            # The gift is committed; the room misses the animation, not the money.
            log.warning("gift committed but not published",
                        extra={"gift_id": str(order.gift_id), "error": repr(exc)})
        return outcome, combo if gift.streakable else None

    async def _project(self, outcome: GiftOutcome) -> None:
        """Count the committed gift in Redis (once per gift id, so a replay fills the gap a
        crash between COMMIT and this update left)."""
        order = outcome.order
        try:
            await self.projection.apply(gift_id=order.gift_id, stream_id=order.stream_id,
                                        creator_id=order.creator_id, sender_id=order.sender_id,
                                        coins=order.price)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("gift committed but not projected",
                        extra={"gift_id": str(order.gift_id), "error": repr(exc)})

    async def wallet(self, user_id: uuid.UUID) -> dict[str, int]:
        rows = await self.services.pool.fetch(
            "SELECT kind, balance FROM ledger_accounts WHERE owner_id = $1", user_id)
        balances = {r["kind"]: int(r["balance"]) for r in rows}
        return {"coins": balances.get("wallet", 0), "diamonds": balances.get("earnings", 0)}


def parse_gift_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationFailed("gift_id must be a UUID chosen by the client.",
                               code="invalid_field", field="gift_id") from None

