"""Sending gifts: pricing from the catalogue, the batcher, then the room.

The server prices every gift from its catalogue and the creator's terms; a client only names
the gift, the quantity and the id it chose. The sender is answered after COMMIT; only then is
the gift published to the room (``gift.sent``, with the combo count), so a room never shows a
gift that is not in the ledger.

After COMMIT the gift is applied to the Redis projection (``ledger/projection.py``: totals,
boards, the combo, the goal, once per gift id), and the room gets, in this order: the end of
the sender's previous combo of that gift if this gift found it lapsed
(``gift.combo_ended``), ``gift.sent``, ``goal.updated`` if the gift counted towards the
stream's goal, and, coalesced, ``leaderboard.updated``: at most one per room per
:data:`BOARD_EVENT_INTERVAL_S` per node, the last one always carrying the latest board. A
per-node task ends the combos whose window lapsed (each claimed by exactly one node).
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

import orjson
import redis.exceptions

from ledger.batcher import GiftBatcher, GiftOrder, GiftOutcome
from ledger.postgres import UNAVAILABLE_ERRORS
from ledger.projection import Applied, EndedCombo, GoalRecord, RedisProjection, postgres_goal
from livecore.accounts import Account
from livecore.economy import (
    DEFAULT_CATALOGUE,
    ROOM_BOARD_TOP,
    GiftType,
    Goal,
    epoch_us,
    price_of,
    split,
)
from livecore.errors import Conflict, NotFound, ValidationFailed
from livecore.ids import StreamId
from livecore.streams import Stream, StreamState

log = logging.getLogger(__name__)

CATALOGUE_TTL_S = 10.0
PROJECTION_CHECK_S = 2.0
#: How often each node looks for combos whose window lapsed.
COMBO_SCAN_S = 0.25
#: At most one ``leaderboard.updated`` per room per this many seconds, per node.
BOARD_EVENT_INTERVAL_S = 1.0
BOARD_CACHE_TTL_S = 3600
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_READ_ERRORS: tuple[type[BaseException], ...] = (*_REDIS_ERRORS, *UNAVAILABLE_ERRORS)


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
        self._scan: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Rooms with a leaderboard event scheduled, and when each may have its next one.
        self._board_due: set[str] = set()
        self._board_next: dict[str, float] = {}
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
            self._scan = asyncio.create_task(self._scan_combos(), name="combos")

    async def stop(self) -> None:
        self._users -= 1
        if self._users == 0:
            for task in (self._watch, self._scan, *self._tasks):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._board_due.clear()
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

    async def _scan_combos(self) -> None:
        """End the combos whose window lapsed and announce each once (whichever node claims
        it first); also forget the rooms whose leaderboard pacing is over."""
        while True:
            try:
                for ended in await self.projection.claim_ended_combos(self.services.clock()):
                    await self._publish_combo_end(ended)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("combo scan failed", extra={"error": repr(exc)})
            now = time.monotonic()
            for room in [r for r, at in self._board_next.items() if at < now]:
                del self._board_next[room]
            await asyncio.sleep(COMBO_SCAN_S)

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
        applied = await self._project(outcome, gift, sender)
        room = str(stream.id)
        if applied.ended is not None:
            await self._publish_combo_end(applied.ended)
        combo = applied.combo if outcome.is_new and gift.streakable else None
        if outcome.is_new:
            # The gift is committed; if Redis fails now the room misses the animation, not
            # the money.
            await self._publish(room, "gift.sent", {
                "gift_id": str(order.gift_id),
                "sender": {"id": str(sender.id), "username": sender.username},
                "gift": gift.slug, "name": gift.name, "animation": gift.animation,
                "quantity": order.quantity, "coins": order.price,
                "combo": combo,
            })
        if applied.goal is not None:
            await self._publish(room, "goal.updated", applied.goal.json())
        if applied.counted:
            self._schedule_board(room)
        return outcome, combo

    async def _project(self, outcome: GiftOutcome, gift: GiftType, sender: Account) -> Applied:
        """Count the committed gift in Redis (once per gift id, so a replay fills the gap a
        crash between COMMIT and this update left)."""
        order = outcome.order
        try:
            return await self.projection.apply(
                gift_id=order.gift_id, stream_id=order.stream_id, creator_id=order.creator_id,
                sender_id=order.sender_id, coins=order.price, at=outcome.created_at,
                gift=gift.slug, quantity=order.quantity, streakable=gift.streakable,
                sender_username=sender.username)
        except _REDIS_ERRORS as exc:
            log.warning("gift committed but not projected",
                        extra={"gift_id": str(order.gift_id), "error": repr(exc)})
            return Applied(False)

    async def _publish(self, room: str, event_type: str, data: dict[str, Any]) -> None:
        try:
            await self.services.bus.publish(room, event_type, data, time.time())
        except _REDIS_ERRORS as exc:
            log.warning("room event not published",
                        extra={"room": room, "type": event_type, "error": repr(exc)})

    async def _publish_combo_end(self, ended: EndedCombo) -> None:
        await self._publish(ended.stream_id, "gift.combo_ended", {
            "sender": {"id": ended.sender_id, "username": ended.sender_username},
            "gift": ended.gift, "combo": ended.count,
        })

    # -- the room's leaderboard ---------------------------------------------------------

    def _schedule_board(self, room: str) -> None:
        """Coalesce: one pending event per room; it reads the board when it fires, so the
        gifts that arrive meanwhile are in it."""
        if room in self._board_due:
            return
        self._board_due.add(room)
        delay = max(0.0, self._board_next.get(room, 0.0) - time.monotonic())
        task = asyncio.create_task(self._publish_board(room, delay), name="leaderboard")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_board(self, room: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._board_due.discard(room)
        self._board_next[room] = time.monotonic() + BOARD_EVENT_INTERVAL_S
        try:
            data = await self.room_board(StreamId(uuid.UUID(room)), fresh=True)
        except _READ_ERRORS as exc:
            log.warning("leaderboard not read", extra={"room": room, "error": repr(exc)})
            return
        await self._publish(room, "leaderboard.updated", data)

    def _board_cache_key(self, stream_id: uuid.UUID) -> str:
        return f"{self.services.settings.redis_prefix}proj:stream:{{{stream_id}}}:room_board"

    async def room_board(self, stream_id: StreamId, *, fresh: bool = False) -> dict[str, Any]:
        """The stream's totals and top gifters (with usernames), as ``leaderboard.updated``
        carries them; cached in Redis for snapshots, so a join costs no database query."""
        key = self._board_cache_key(stream_id)
        if not fresh:
            cached = await self.services.redis.get(key)
            if cached is not None:
                board: dict[str, Any] = orjson.loads(cached)
                return board
        totals = await self.projection.totals(stream_id, top=ROOM_BOARD_TOP)
        names: dict[str, str] = {}
        if totals.top:
            rows = await self.services.pool.fetch(
                "SELECT id, username FROM users WHERE id = ANY($1::uuid[])",
                [uuid.UUID(user) for user, _ in totals.top])
            names = {str(r["id"]): r["username"] for r in rows}
        board = {"coins": totals.coins, "gifts": totals.gifts,
                 "top": [{"user": {"id": user, "username": names.get(user, "")}, "coins": coins}
                         for user, coins in totals.top]}
        await self.services.redis.set(key, orjson.dumps(board), ex=BOARD_CACHE_TTL_S)
        return board

    async def room_state(self, stream_id: StreamId) -> dict[str, Any]:
        """The goal and the leaderboard, for a subscriber's snapshot."""
        goal = await self.projection.goal(stream_id)
        return {"goal": None if goal is None else goal.json(),
                "leaderboard": await self.room_board(stream_id)}

    # -- goals ------------------------------------------------------------------------------

    async def set_goal(self, stream: Stream, *, target_coins: int, title: str,
                       actor_id: uuid.UUID, now: dt.datetime) -> tuple[Goal, dt.datetime]:
        """Save the stream's goal (replacing any), count from now on, tell the room."""
        title = Goal.check_target(target_coins, title)
        if stream.state is StreamState.ENDED:
            raise Conflict("The stream has ended; it takes no goal.", code="stream_ended")
        await self.services.pool.execute(
            """
            INSERT INTO stream_goals (stream_id, target_coins, title, set_by, set_at)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (stream_id) DO UPDATE SET target_coins = EXCLUDED.target_coins,
                title = EXCLUDED.title, set_by = EXCLUDED.set_by, set_at = EXCLUDED.set_at
            """,
            stream.id, target_coins, title, actor_id, now)
        goal = await self.projection.set_goal(self.services.pool, stream.id,
                                              GoalRecord(target_coins, title, now))
        await self._publish(str(stream.id), "goal.updated", goal.json())
        return goal, now

    async def goal(self, stream_id: StreamId) -> tuple[Goal, dt.datetime]:
        """The stream's goal: progress from Redis, or from the ledger while Redis lacks it."""
        record = await postgres_goal(self.services.pool, stream_id)
        if record is None:
            raise NotFound("This stream has no goal.", code="goal_not_found")
        state = await self.projection.goal_state(stream_id)
        if state is not None and state[:2] == (record.target_coins, epoch_us(record.set_at)):
            return Goal(record.target_coins, state[2], record.title), record.set_at
        return record.goal, record.set_at

    async def clear_goal(self, stream: Stream) -> None:
        deleted = await self.services.pool.fetchval(
            "DELETE FROM stream_goals WHERE stream_id = $1 RETURNING stream_id", stream.id)
        if deleted is None:
            raise NotFound("This stream has no goal.", code="goal_not_found")
        await self.projection.clear_goal(stream.id)
        await self._publish(str(stream.id), "goal.cleared", {})

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

