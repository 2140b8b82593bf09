"""Sending gifts: pricing from the catalogue, the batcher, then the room.

The server prices every gift from its catalogue and the creator's terms; a client only names
the gift, the quantity and the id it chose. A gift is in a room only after COMMIT: it is
counted in the Redis projection, its sender is answered, then it is published to the room
(``gift.sent``, with the combo count), so a room never shows a gift that is not in the ledger.

Pricing costs no database round trip per gift: the catalogue, live streams (their creator)
and creators' terms are cached per process for a few seconds. A stale cache cannot let a gift
into a stream that ended: the batcher's transaction checks (and share-locks) the stream and
refuses the gift (``stream_not_live``) if it is not live. A change of terms applies after at
most :data:`CREATOR_TERMS_TTL_S`.

After COMMIT the gift is applied to the Redis projection (``ledger/projection.py``: totals,
boards, the combo, the goal, once per gift id), and the room gets, in this order: the end of
the sender's previous combo of that gift if this gift found it lapsed
(``gift.combo_ended``), ``gift.sent``, ``goal.updated`` if the gift counted towards the
stream's goal, and, coalesced, ``leaderboard.updated``: at most one per room per
:data:`BOARD_EVENT_INTERVAL_S` per node, the last one always carrying the latest board. A
per-node task ends the combos whose window lapsed (each claimed by exactly one node).

That Redis work is done per group of committed gifts (a batch's gifts come back together),
by one task: one script call applies the whole group, the senders are answered, one more
publishes the group's room events. So the round trips are per group rather than per gift,
and a room's events keep the commit order.
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

from ledger.batcher import GiftBatcher, GiftOrder, GiftOutcome, StreamNotLive
from ledger.postgres import UNAVAILABLE_ERRORS
from ledger.projection import (
    Applied,
    EndedCombo,
    GiftToApply,
    GoalRecord,
    RedisProjection,
    postgres_goal,
)
from livecore.accounts import Account, is_adult
from livecore.economy import (
    DEFAULT_CATALOGUE,
    ROOM_BOARD_TOP,
    GiftType,
    Goal,
    epoch_us,
    price_of,
    split,
)
from livecore.errors import ClientError, Conflict, Forbidden, NotFound, ValidationFailed
from livecore.ids import StreamId
from livecore.streams import Stream, StreamState
from livecore.times import iso_time

log = logging.getLogger(__name__)

CATALOGUE_TTL_S = 10.0
#: A live stream's creator is cached this long per process (whether it is still live is
#: decided by the batcher's transaction, not by this cache).
STREAM_CACHE_TTL_S = 5.0
#: A creator's terms (``creator_terms.platform_cut_bp``) are cached this long per process, so
#: a change of terms applies to the gifts priced after at most this long.
CREATOR_TERMS_TTL_S = 10.0
#: Entries kept in each of those caches before they are emptied.
MAX_CACHED = 100_000
PROJECTION_CHECK_S = 2.0
#: How often each node looks for combos whose window lapsed.
COMBO_SCAN_S = 0.25
#: At most one ``leaderboard.updated`` per room per this many seconds, per node.
BOARD_EVENT_INTERVAL_S = 1.0
BOARD_CACHE_TTL_S = 3600
MAX_CACHED_NAMES = 100_000
_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_READ_ERRORS: tuple[type[BaseException], ...] = (*_REDIS_ERRORS, *UNAVAILABLE_ERRORS)


@dataclass(frozen=True)
class GiftRequest:
    gift_id: uuid.UUID
    stream_id: StreamId
    slug: str
    quantity: int


@dataclass(frozen=True)
class _Settling:
    """A committed gift waiting for its Redis work, and its sender's answer."""

    outcome: GiftOutcome
    gift: GiftType
    sender: Account
    future: asyncio.Future[Applied]


def gift_json(outcome: GiftOutcome, gift: GiftType | None, combo: int | None) -> dict[str, Any]:
    order = outcome.order
    data: dict[str, Any] = {
        "gift_id": str(order.gift_id),
        "stream_id": str(order.stream_id),
        "gift": order.gift_slug,
        "quantity": order.quantity,
        "coins": order.price,
        "created_at": iso_time(outcome.created_at),
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
        #: Usernames of gifters (they never change), learnt from the gifts themselves, so a
        #: room's leaderboard event needs no database query for its names.
        self._names: dict[str, str] = {}
        self._catalogue: dict[str, GiftType] = {}
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._users = 0
        self._stopping = False
        #: Live streams (id -> stream, cached at) and creators' cuts (creator -> bp, at).
        self._streams: dict[uuid.UUID, tuple[Stream, float]] = {}
        self._terms: dict[uuid.UUID, tuple[int, float]] = {}
        #: Committed gifts waiting for the Redis work (projection, then room events), done
        #: for all of them at once by one task, in commit order.
        self._settling: list[_Settling] = []
        self._settler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start with the first application that uses it (tests run several at once)."""
        self._users += 1
        if self._users == 1:
            self._stopping = False
            await self.seed_catalogue()
            await self.batcher.start()
            self._watch = asyncio.create_task(self._watch_projection(), name="projection")
            self._scan = asyncio.create_task(self._scan_combos(), name="combos")

    async def stop(self) -> None:
        self._users -= 1
        if self._users == 0:
            # The loops also stop by this flag: redis-py can swallow a cancellation that
            # arrives while a command is in flight, and the task would then go on forever.
            self._stopping = True
            for task in (self._watch, self._scan, *self._tasks):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._board_due.clear()
            await self.batcher.stop()
            # The gifts the batcher just committed get their Redis work and their answers.
            while self._settler is not None and not self._settler.done():
                await self._settler

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
            if self._stopping:
                return
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
            if self._stopping:
                return
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
        """The platform's cut for the creator, cached for :data:`CREATOR_TERMS_TTL_S`."""
        now = time.monotonic()
        cached = self._terms.get(creator_id)
        if cached is not None and now - cached[1] < CREATOR_TERMS_TTL_S:
            return cached[0]
        custom = await self.services.pool.fetchval(
            "SELECT platform_cut_bp FROM creator_terms WHERE creator_id = $1", creator_id)
        bp = int(custom) if custom is not None else self.services.settings.platform_cut_bp
        if len(self._terms) >= MAX_CACHED:
            self._terms.clear()
        self._terms[creator_id] = (bp, now)
        return bp

    async def _stream(self, stream_id: StreamId) -> Stream:
        """The stream, from the cache if it was live a moment ago (the batcher checks that it
        still is, in the gift's own transaction); streams that are not live are read afresh,
        so one that just went live takes gifts at once."""
        now = time.monotonic()
        cached = self._streams.get(stream_id)
        if cached is not None and now - cached[1] < STREAM_CACHE_TTL_S:
            return cached[0]
        stream: Stream = await self.services.streams.get(stream_id)
        if stream.state is StreamState.LIVE:
            if len(self._streams) >= MAX_CACHED:
                self._streams.clear()
            self._streams[stream_id] = (stream, now)
        else:
            self._streams.pop(stream_id, None)
        return stream

    async def send(self, sender: Account, request: GiftRequest) -> tuple[GiftOutcome, int | None]:
        """Price, commit, count in Redis, answer; the room's events follow (in commit order).

        A gift id already in the ledger is answered with its stored outcome whatever changed
        since it was committed (its gift withdrawn or repriced, its stream ended, the sender's
        coins spent): a refusal here would tell a client whose coins are gone that nothing
        happened, and its next try, under a new id, would pay twice. So every refusal that
        depends on state that can change is checked against the ledger first (on the hot
        path, a gift that passes them costs no extra query: the batcher's transaction finds
        a stored id itself).

        Returns the outcome and the combo count."""
        try:
            gift, order = await self._price(sender, request)
        except ClientError:
            replay = await self._stored(sender, request)
            if replay is None:
                raise
            gift, outcome = replay
        else:
            try:
                outcome = await self.batcher.send(order)
            except StreamNotLive:
                self._streams.pop(order.stream_id, None)  # it ended since it was cached
                raise
        applied = await self._settle(outcome, gift, sender)
        combo = applied.combo if outcome.is_new and gift.streakable else None
        return outcome, combo

    async def _price(self, sender: Account, request: GiftRequest) -> tuple[GiftType, GiftOrder]:
        """The priced order, or the refusal the current state calls for."""
        if not is_adult(sender.birthdate, self.services.clock().date()):
            raise Forbidden("Sending gifts needs an adult account (18+).", code="not_adult")
        catalogue = await self.catalogue()
        gift = catalogue.get(request.slug)
        if gift is None:
            raise ValidationFailed(f"No gift named {request.slug!r} in the catalogue.",
                                   code="unknown_gift", field="gift")
        price = price_of(gift, request.quantity)
        stream = await self._stream(request.stream_id)
        if stream.creator_id == sender.id:
            raise Conflict("Creators cannot send gifts to their own stream.",
                           code="cannot_gift_self")
        if stream.state is not StreamState.LIVE:
            raise Conflict("Gifts go to live streams only.", code="stream_not_live",
                           state=stream.state.value)
        parts = split(price, await self.platform_cut_bp(stream.creator_id))
        return gift, GiftOrder(request.gift_id, sender.id, stream.id, stream.creator_id,
                               gift.slug, request.quantity, price, parts.creator_share,
                               parts.platform_cut)

    async def _stored(self, sender: Account, request: GiftRequest
                      ) -> tuple[GiftType, GiftOutcome] | None:
        """The stored outcome of ``request``'s gift id (None if the ledger has none); the
        same id for another gift is a conflict, as the batcher answers it."""
        outcome = await self.batcher.stored(request.gift_id)
        if outcome is None:
            return None
        stored = outcome.order
        if (stored.sender_id, stored.stream_id, stored.gift_slug, stored.quantity) != (
                sender.id, request.stream_id, request.slug, request.quantity):
            raise Conflict("This gift id was already used for a different gift.",
                           code="gift_id_conflict", gift_id=str(request.gift_id))
        catalogue = await self.catalogue()
        gift = catalogue.get(stored.gift_slug)
        if gift is None:  # added since this process loaded the catalogue
            gift = (await self.catalogue(fresh=True))[stored.gift_slug]
        return gift, outcome

    async def _settle(self, outcome: GiftOutcome, gift: GiftType, sender: Account) -> Applied:
        """Queue the committed gift for the Redis work; returns once it is projected (its
        room events are published right after, by the same task)."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
        self._settling.append(_Settling(outcome, gift, sender, future))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.create_task(self._settle_all(), name="gift-settler")
        return await asyncio.shield(future)

    async def _settle_all(self) -> None:
        """Do the Redis work of the committed gifts queued so far, all at once: one round
        trip for their projection updates (then their senders are answered), one for their
        room events; repeat while gifts keep coming. One task does it, so the room events
        follow the order the gifts were committed (and the batcher answers a batch's gifts in
        order), across batches too."""
        while self._settling:
            group, self._settling = self._settling, []
            try:
                applied = await self._project_many(group)
            except Exception as exc:  # not the Redis connection: a bug; the senders get it
                log.exception("gift projection failed", extra={"gifts": len(group)})
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            events: list[tuple[str, str, dict[str, Any], float]] = []
            for item, result in zip(group, applied, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
                events.extend(self._events(item, result))
            if events:
                await self._publish_many(events)
            if len(self._names) > MAX_CACHED_NAMES:
                self._names.clear()
            for item, result in zip(group, applied, strict=True):
                if result.counted:
                    self._names[str(item.sender.id)] = item.sender.username
                    self._schedule_board(str(item.outcome.order.stream_id))

    def _events(self, item: _Settling, applied: Applied
                ) -> list[tuple[str, str, dict[str, Any], float]]:
        """The room events of one committed gift, in the order the room gets them."""
        order, gift, now = item.outcome.order, item.gift, time.time()
        room = str(order.stream_id)
        events: list[tuple[str, str, dict[str, Any], float]] = []
        if applied.ended is not None:
            events.append(self._combo_end_event(applied.ended, now))
        if item.outcome.is_new:
            # The gift is committed; if Redis fails now the room misses the animation, not
            # the money.
            events.append((room, "gift.sent", {
                "gift_id": str(order.gift_id),
                "sender": {"id": str(item.sender.id), "username": item.sender.username},
                "gift": gift.slug, "name": gift.name, "animation": gift.animation,
                "quantity": order.quantity, "coins": order.price,
                "combo": applied.combo if gift.streakable else None,
            }, now))
        if applied.goal is not None:
            events.append((room, "goal.updated", applied.goal.json(), now))
        return events

    async def _project_many(self, group: list[_Settling]) -> list[Applied]:
        """Count the committed gifts in Redis (once per gift id, so a replay fills the gap a
        crash between COMMIT and this update left)."""
        gifts = [GiftToApply(
            gift_id=item.outcome.order.gift_id, stream_id=item.outcome.order.stream_id,
            creator_id=item.outcome.order.creator_id, sender_id=item.outcome.order.sender_id,
            coins=item.outcome.order.price, at=item.outcome.created_at, gift=item.gift.slug,
            quantity=item.outcome.order.quantity, streakable=item.gift.streakable,
            sender_username=item.sender.username) for item in group]
        try:
            return await self.projection.apply_many(gifts)
        except _REDIS_ERRORS as exc:
            log.warning("gift committed but not projected",
                        extra={"gift_ids": [str(g.gift_id) for g in gifts],
                               "error": repr(exc)})
            return [Applied(False)] * len(group)

    async def _publish_many(self, events: list[tuple[str, str, dict[str, Any], float]]
                            ) -> None:
        try:
            await self.services.bus.publish_many(events)
        except _REDIS_ERRORS as exc:
            log.warning("room events not published",
                        extra={"events": len(events), "error": repr(exc)})

    async def _publish(self, room: str, event_type: str, data: dict[str, Any]) -> None:
        try:
            await self.services.bus.publish(room, event_type, data, time.time())
        except _REDIS_ERRORS as exc:
            log.warning("room event not published",
                        extra={"room": room, "type": event_type, "error": repr(exc)})

    async def _publish_combo_end(self, ended: EndedCombo) -> None:
        await self._publish(*self._combo_end_event(ended, time.time())[:3])

    @staticmethod
    def _combo_end_event(ended: EndedCombo, now: float
                         ) -> tuple[str, str, dict[str, Any], float]:
        return (ended.stream_id, "gift.combo_ended", {
            "sender": {"id": ended.sender_id, "username": ended.sender_username},
            "gift": ended.gift, "combo": ended.count,
        }, now)

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
        names = self._names
        missing = [uuid.UUID(user) for user, _ in totals.top if user not in names]
        if missing:
            rows = await self.services.pool.fetch(
                "SELECT id, username FROM users WHERE id = ANY($1::uuid[])", missing)
            names.update((str(r["id"]), r["username"]) for r in rows)
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
        return {"coins": balances.get("wallet", 0), "diamonds": balances.get("earnings", 0),
                "debt_coins": -balances.get("debt", 0)}


def parse_gift_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ValidationFailed("gift_id must be a UUID chosen by the client.",
                               code="invalid_field", field="gift_id") from None

