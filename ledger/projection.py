"""The Redis projection of the ledger: totals, boards, combos and goals of live streams.

Derived, fast, rebuildable; never the truth. Each committed gift is applied once, by gift id:
one Lua script adds the id to the stream's applied set and, only if it was not there, adds the
gift to the stream's totals and top-gifter board, to the creator's all-time board and the
board of the gift's ISO week (UTC), to the stream's goal (if the gift came at or after the
goal was set), and to its sender's combo. So a replayed gift (a client's retry after a crash
between COMMIT and this update) can be applied again safely: it fills the gap the crash left
and bumps nothing twice.

Combos. The combo of (stream, sender, gift) lives in a hash with the count, the time of its
latest gift and the combo's name (``stream|sender|gift|first gift id``); the open combos are
in one sorted set scored by deadline (latest gift + window). The script applies the rule of
:func:`livecore.economy.combo_continues` with the gift's commit time. A combo ends when its
deadline passes: whoever removes it from the sorted set first (``ZREM`` returning 1, inside a
script) announces it, exactly once: either a gateway's scanner (:meth:`claim_ended_combos`) or
the next gift of the same kind, which then starts a new combo.

Goals. ``stream_goals`` in PostgreSQL holds the target and the time it was set; the stream's
goal hash in Redis holds them with the progress, and a set of the gift ids counted, so the
catch-up after setting a goal (gifts committed since ``set_at`` but applied before the goal
reached Redis) and the gifts' own applies never count a gift twice.

If Redis loses the data, :meth:`RedisProjection.rebuild` recomputes a stream's keys (and its
creator's boards) from PostgreSQL and swaps them in atomically (RENAME);
:meth:`RedisProjection.reconcile` compares Redis with PostgreSQL and reports (and, asked to,
repairs) any difference.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from livecore.economy import (
    COMBO_WINDOW_S,
    Goal,
    epoch_us,
    iso_week,
    kept_weeks_since,
    week_from_label,
    weekly_board_expires_at,
)

#: An abandoned combo hash outlives its window by this much (a scanner that was down for
#: less than this still announces the combo's end).
COMBO_KEY_GRACE_MS = 120_000

# KEYS: 1 applied set, 2 totals, 3 stream top, 4 creator all-time, 5 creator week,
#       6 goal hash, 7 goal applied set, 8 combo hash, 9 open combos
# ARGV: 1 gift id, 2 sender, 3 coins, 4 week board expiry (epoch s), 5 gift time (epoch us),
#       6 streakable (1/0), 7 quantity, 8 combo window (ms), 9 combo name prefix,
#       10 combo key ttl (ms), 11 sender username
# Returns {applied, combo count, ended combo name, its count, goal progress, goal target,
# goal title}; progress and target are -1 when the gift counts towards no goal.
_APPLY = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return {0} end
local coins = tonumber(ARGV[3])
redis.call('HINCRBY', KEYS[2], 'coins', coins)
redis.call('HINCRBY', KEYS[2], 'gifts', 1)
redis.call('ZINCRBY', KEYS[3], coins, ARGV[2])
redis.call('ZINCRBY', KEYS[4], coins, ARGV[2])
redis.call('ZINCRBY', KEYS[5], coins, ARGV[2])
redis.call('EXPIREAT', KEYS[5], ARGV[4])
local at_us = tonumber(ARGV[5])
local combo, ended, ended_count = 0, '', 0
if ARGV[6] == '1' then
  local window = tonumber(ARGV[8])
  local at_ms = math.floor(at_us / 1000)
  local state = redis.call('HMGET', KEYS[8], 'count', 'last', 'name')
  local count, last, name = tonumber(state[1]), tonumber(state[2]), state[3]
  -- livecore.economy.combo_continues
  if count and at_ms - last < window then
    count = count + tonumber(ARGV[7])
    if at_ms > last then last = at_ms end
  else
    if count and redis.call('ZREM', KEYS[9], name) == 1 then
      ended, ended_count = name, count
    end
    count, last, name = tonumber(ARGV[7]), at_ms, ARGV[9] .. ARGV[1]
  end
  redis.call('HSET', KEYS[8], 'count', count, 'last', last, 'name', name, 'username', ARGV[11])
  redis.call('PEXPIRE', KEYS[8], window + tonumber(ARGV[10]))
  redis.call('ZADD', KEYS[9], last + window, name)
  combo = count
end
local progress, target, title = -1, -1, ''
local goal = redis.call('HMGET', KEYS[6], 'target', 'since_us', 'title')
if goal[1] and at_us >= tonumber(goal[2]) and redis.call('SADD', KEYS[7], ARGV[1]) == 1 then
  progress = redis.call('HINCRBY', KEYS[6], 'progress', coins)
  target, title = tonumber(goal[1]), goal[3] or ''
end
return {1, combo, ended, ended_count, progress, target, title}
"""

# The same for many gifts in one call: KEYS and ARGV are those of _APPLY for each gift in
# turn (9 keys and 11 arguments a gift). Returns one string a gift: '0' if it was applied
# before, else _APPLY's fields tab-separated, in its order (the title last: it is free
# text). One flat reply of short strings, rather than a nested array a gift, is cheap for the
# client to parse. RedisProjection.apply uses it too, for one gift.
_APPLY_MANY = "local function apply(KEYS, ARGV)\n" + _APPLY + """end
local out = {}
for i = 0, #ARGV / 11 - 1 do
  local k, a = {}, {}
  for j = 1, 9 do k[j] = KEYS[i * 9 + j] end
  for j = 1, 11 do a[j] = ARGV[i * 11 + j] end
  local r = apply(k, a)
  if r[1] == 0 then
    out[#out + 1] = '0'
  else
    out[#out + 1] = table.concat({r[1], r[2], r[3], r[4], r[5], r[6], r[7]}, '\t')
  end
end
return out
"""

# KEYS: open combos, the combo's hash. ARGV: the combo's name.
# Returns {count, username} if this call ended the combo, else nil.
_END_COMBO = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return false end
local state = redis.call('HMGET', KEYS[2], 'count', 'name', 'username')
if state[2] ~= ARGV[1] then return false end
redis.call('DEL', KEYS[2])
return {state[1], state[3]}
"""

# KEYS: goal hash, goal applied set. ARGV: target, since (epoch us), title.
_SET_GOAL = """
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'target', ARGV[1], 'since_us', ARGV[2], 'progress', 0,
           'title', ARGV[3])
return 1
"""

# KEYS: goal hash, goal applied set. ARGV: since (epoch us), then gift id, coins, ... pairs.
# Counts the gifts the goal has not counted yet, if the goal is still the one set at `since`.
_CATCH_UP_GOAL = """
if redis.call('HGET', KEYS[1], 'since_us') ~= ARGV[1] then return -1 end
for i = 2, #ARGV, 2 do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'progress', ARGV[i + 1])
  end
end
return tonumber(redis.call('HGET', KEYS[1], 'progress'))
"""


@dataclass(frozen=True)
class StreamTotals:
    coins: int
    gifts: int
    top: list[tuple[str, int]]


@dataclass(frozen=True)
class EndedCombo:
    """A combo that ended: announced once, by whoever claimed it."""

    stream_id: str
    sender_id: str
    sender_username: str
    gift: str
    count: int


@dataclass(frozen=True)
class Applied:
    """What applying one gift changed."""

    counted: bool
    #: The sender's combo count after this gift (streakable gifts only).
    combo: int | None = None
    #: The combo of the same kind that this gift found ended (its window had lapsed).
    ended: EndedCombo | None = None
    #: The stream's goal after this gift, if the gift counted towards one.
    goal: Goal | None = None


@dataclass(frozen=True)
class GiftToApply:
    """A committed gift, as :meth:`RedisProjection.apply_many` counts it."""

    gift_id: uuid.UUID
    stream_id: uuid.UUID
    creator_id: uuid.UUID
    sender_id: uuid.UUID
    coins: int
    at: dt.datetime
    gift: str = ""
    quantity: int = 1
    streakable: bool = False
    sender_username: str = ""


@dataclass(frozen=True)
class GoalRecord:
    """A goal as PostgreSQL holds it, with its progress computed from the ledger."""

    target_coins: int
    title: str
    set_at: dt.datetime
    progress_coins: int = 0
    gift_ids: list[uuid.UUID] = field(default_factory=list)

    @property
    def goal(self) -> Goal:
        return Goal(self.target_coins, self.progress_coins, self.title)


@dataclass(frozen=True)
class Difference:
    stream_id: uuid.UUID
    redis: StreamTotals
    postgres: StreamTotals
    #: Which parts differ: ``totals``, ``goal``, ``creator_board``, ``weekly_board``.
    parts: tuple[str, ...] = ()


def _combo_name(stream_id: Any, sender_id: Any, gift: str) -> str:
    return f"{stream_id}|{sender_id}|{gift}|"


class RedisProjection:
    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._apply_many = redis.register_script(_APPLY_MANY)
        self._end_combo = redis.register_script(_END_COMBO)
        self._set_goal = redis.register_script(_SET_GOAL)
        self._catch_up_goal = redis.register_script(_CATCH_UP_GOAL)
        #: Present while the projection is whole; gone when Redis lost its data.
        self.sentinel = f"{prefix}proj:intact"
        #: The open combos of every stream, scored by deadline (epoch ms).
        self.open_combos = f"{prefix}proj:combos:open"
        #: Combo window; every node must use the same (tests shorten it).
        self.combo_window_s = COMBO_WINDOW_S

    # -- keys ---------------------------------------------------------------------------

    def _stream_key(self, stream_id: Any, name: str) -> str:
        return f"{self._prefix}proj:stream:{{{stream_id}}}:{name}"

    def _creator_key(self, creator_id: Any, name: str) -> str:
        return f"{self._prefix}proj:creator:{{{creator_id}}}:{name}"

    def _week_key(self, creator_id: Any, week: str) -> str:
        return self._creator_key(creator_id, f"week:{week}")

    def _combo_key(self, stream_id: Any, sender_id: Any, gift: str) -> str:
        return self._stream_key(stream_id, f"combo:{sender_id}:{gift}")

    async def is_intact(self) -> bool:
        return bool(await self._redis.exists(self.sentinel))

    async def mark_intact(self) -> None:
        await self._redis.set(self.sentinel, 1)

    async def rebuild_live(self, pool: Any) -> int:
        """Rebuild every live stream (after Redis lost its data); returns how many."""
        rows = await pool.fetch("SELECT id FROM streams WHERE state = 'live'")
        for row in rows:
            await self.rebuild(pool, row["id"])
        await self.mark_intact()
        return len(rows)

    # -- applying gifts -------------------------------------------------------------------

    async def apply(self, *, gift_id: uuid.UUID, stream_id: uuid.UUID, creator_id: uuid.UUID,
                    sender_id: uuid.UUID, coins: int, at: dt.datetime, gift: str = "",
                    quantity: int = 1, streakable: bool = False,
                    sender_username: str = "") -> Applied:
        """Count a committed gift once (``at`` is its commit time, ``gifts.created_at``);
        returns what this call changed (nothing if the gift was counted before)."""
        [applied] = await self.apply_many([GiftToApply(
            gift_id, stream_id, creator_id, sender_id, coins, at, gift, quantity, streakable,
            sender_username)])
        return applied

    async def apply_many(self, gifts: list[GiftToApply]) -> list[Applied]:
        """Count many committed gifts, in this order, in one script call (one round trip);
        each gift is still counted once, by id."""
        if not gifts:
            return []
        keys: list[str] = []
        args: list[Any] = []
        for g in gifts:
            gift_keys, gift_args = self._apply_call(
                g.gift_id, g.stream_id, g.creator_id, g.sender_id, g.coins, g.at, g.gift,
                g.quantity, g.streakable, g.sender_username)
            keys += gift_keys
            args += gift_args
        replies = await self._apply_many(keys=keys, args=args)
        return [self._applied(reply.split(b"\t", 6), g) for g, reply in zip(gifts, replies,
                                                                          strict=True)]

    def _apply_call(self, gift_id: uuid.UUID, stream_id: uuid.UUID, creator_id: uuid.UUID,
                    sender_id: uuid.UUID, coins: int, at: dt.datetime, gift: str,
                    quantity: int, streakable: bool, sender_username: str
                    ) -> tuple[list[str], list[Any]]:
        window_ms = round(self.combo_window_s * 1000)
        keys = [self._stream_key(stream_id, "applied"), self._stream_key(stream_id, "totals"),
                self._stream_key(stream_id, "top"), self._creator_key(creator_id, "top"),
                self._week_key(creator_id, iso_week(at)), self._stream_key(stream_id, "goal"),
                self._stream_key(stream_id, "goal:applied"),
                self._combo_key(stream_id, sender_id, gift), self.open_combos]
        args = [str(gift_id), str(sender_id), coins,
                int(weekly_board_expires_at(at).timestamp()), epoch_us(at),
                1 if streakable else 0, quantity, window_ms,
                _combo_name(stream_id, sender_id, gift), COMBO_KEY_GRACE_MS, sender_username]
        return keys, args

    @staticmethod
    def _applied(reply: list[bytes], g: GiftToApply) -> Applied:
        """One gift's reply: ``0`` (counted before), or the fields of the apply script."""
        if reply == [b"0"]:
            return Applied(False)
        _, combo, ended_name, ended_count, progress, target, title = reply
        ended = None
        if ended_name:
            ended = EndedCombo(str(g.stream_id), str(g.sender_id), g.sender_username, g.gift,
                               int(ended_count))
        goal = None
        if int(target) >= 0:
            goal = Goal(int(target), int(progress), title.decode())
        return Applied(True, int(combo) if g.streakable else None, ended, goal)

    async def claim_ended_combos(self, now: dt.datetime, *,
                                 limit: int = 200) -> list[EndedCombo]:
        """Combos whose deadline passed by ``now`` that this call ended (each combo is ended
        by exactly one caller, whichever node it runs on)."""
        now_ms = epoch_us(now) // 1000
        names = await self._redis.zrangebyscore(self.open_combos, "-inf", now_ms, start=0,
                                                num=limit)
        ended = []
        for raw in names:
            name = raw.decode()
            stream_id, sender_id, gift, _first = name.split("|")
            claimed = await self._end_combo(
                keys=[self.open_combos, self._combo_key(stream_id, sender_id, gift)],
                args=[name])
            if claimed:
                count, username = claimed
                ended.append(EndedCombo(stream_id, sender_id, (username or b"").decode(), gift,
                                        int(count)))
        return ended

    # -- goals ----------------------------------------------------------------------------

    async def set_goal(self, pool: Any, stream_id: uuid.UUID, record: GoalRecord) -> Goal:
        """Put a goal just saved in PostgreSQL into Redis, then count the gifts committed
        since it was set that were applied before it reached Redis. Every gift at or after
        ``set_at`` is counted exactly once: it is either applied after the goal is in Redis,
        or committed before the catch-up below reads the ledger (or both: the goal's applied
        set keeps it once)."""
        goal_key = self._stream_key(stream_id, "goal")
        applied_key = self._stream_key(stream_id, "goal:applied")
        since = epoch_us(record.set_at)
        await self._set_goal(keys=[goal_key, applied_key],
                             args=[record.target_coins, since, record.title])
        rows = await pool.fetch("SELECT id, price FROM gifts WHERE stream_id = $1"
                                " AND created_at >= $2", stream_id, record.set_at)
        progress = 0
        if rows:
            pairs = [value for r in rows for value in (str(r["id"]), int(r["price"]))]
            progress = int(await self._catch_up_goal(keys=[goal_key, applied_key],
                                                     args=[since, *pairs]))
        return Goal(record.target_coins, max(progress, 0), record.title)

    async def clear_goal(self, stream_id: uuid.UUID) -> None:
        await self._redis.delete(self._stream_key(stream_id, "goal"),
                                 self._stream_key(stream_id, "goal:applied"))

    async def goal(self, stream_id: uuid.UUID) -> Goal | None:
        raw = await self._redis.hgetall(self._stream_key(stream_id, "goal"))
        if not raw:
            return None
        return Goal(int(raw[b"target"]), int(raw.get(b"progress", 0)),
                    raw.get(b"title", b"").decode())

    async def goal_state(self, stream_id: uuid.UUID) -> tuple[int, int, int] | None:
        """(target, set at in epoch microseconds, progress) as Redis holds them."""
        raw = await self._redis.hgetall(self._stream_key(stream_id, "goal"))
        if not raw:
            return None
        return (int(raw[b"target"]), int(raw[b"since_us"]), int(raw.get(b"progress", 0)))

    # -- reading --------------------------------------------------------------------------

    async def totals(self, stream_id: uuid.UUID, *, top: int = 10) -> StreamTotals:
        """The stream's totals and its top gifters, read together (MULTI/EXEC: one round trip,
        and no gift applied between the two reads)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hgetall(self._stream_key(stream_id, "totals"))
        pipe.zrevrange(self._stream_key(stream_id, "top"), 0, top - 1, withscores=True)
        raw, board = await pipe.execute()
        return StreamTotals(int(raw.get(b"coins", 0)), int(raw.get(b"gifts", 0)),
                            _board_rows(board))

    async def creator_board(self, creator_id: uuid.UUID, *, week: str | None,
                            top: int = 10) -> list[tuple[str, int]]:
        """A creator's top gifters, all-time (``week=None``) or in one ISO week."""
        key = self._creator_key(creator_id, "top") if week is None else self._week_key(
            creator_id, week)
        return await self._board(key, top)

    async def _board(self, key: str, top: int) -> list[tuple[str, int]]:
        return _board_rows(await self._redis.zrevrange(key, 0, top - 1, withscores=True))

    # -- rebuild and reconcile ------------------------------------------------------------

    async def rebuild(self, pool: Any, stream_id: uuid.UUID, *,
                      now: dt.datetime | None = None) -> StreamTotals:
        """Recompute the stream's keys (totals, board, goal) and its creator's boards
        (all-time and the kept weeks) from PostgreSQL, and swap them in at once."""
        now = now or dt.datetime.now(dt.UTC)
        # One snapshot of the ledger for every figure: the applied ids and the sums must
        # describe the same set of gifts (a gift committed between two separate reads would
        # be in the applied set but not in the totals, and never counted).
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                            readonly=True):
            creator_id = await conn.fetchval("SELECT creator_id FROM streams WHERE id = $1",
                                             stream_id)
            truth = await postgres_totals(conn, stream_id, top=None)
            gift_ids = await conn.fetch("SELECT id FROM gifts WHERE stream_id = $1", stream_id)
            goal = await postgres_goal(conn, stream_id)
            boards = {} if creator_id is None else await postgres_creator_boards(
                conn, creator_id, now)
        staged: list[tuple[str, str]] = []  # (staged key, final key)
        drop: list[str] = []  # final keys that have nothing to hold
        async with self._redis.pipeline(transaction=True) as pipe:

            def stage(final: str, fill: Any) -> None:
                temp = f"{final}:rebuild"
                pipe.delete(temp)
                if fill is None:
                    drop.append(final)
                else:
                    fill(temp)
                    staged.append((temp, final))

            ids = [str(r["id"]) for r in gift_ids]
            stage(self._stream_key(stream_id, "applied"),
                  (lambda k: pipe.sadd(k, *ids)) if ids else None)
            stage(self._stream_key(stream_id, "totals"),
                  lambda k: pipe.hset(k, mapping={"coins": truth.coins, "gifts": truth.gifts}))
            stage(self._stream_key(stream_id, "top"),
                  (lambda k: pipe.zadd(k, dict(truth.top))) if truth.top else None)
            if goal is None:
                stage(self._stream_key(stream_id, "goal"), None)
                stage(self._stream_key(stream_id, "goal:applied"), None)
            else:
                counted = [str(i) for i in goal.gift_ids]
                stage(self._stream_key(stream_id, "goal"), lambda k: pipe.hset(k, mapping={
                    "target": goal.target_coins, "since_us": epoch_us(goal.set_at),
                    "progress": goal.progress_coins, "title": goal.title}))
                stage(self._stream_key(stream_id, "goal:applied"),
                      (lambda k: pipe.sadd(k, *counted)) if counted else None)
            if creator_id is not None:
                all_time = boards.pop(None, [])
                stage(self._creator_key(creator_id, "top"),
                      (lambda k: pipe.zadd(k, dict(all_time))) if all_time else None)
                for week, board in boards.items():
                    assert week is not None
                    stage(self._week_key(creator_id, week),
                          lambda k, b=board: pipe.zadd(k, dict(b)))
                if iso_week(now) not in boards:
                    stage(self._week_key(creator_id, iso_week(now)), None)
            # Gifts applied since the snapshot (committed after it): the swap below wipes
            # them out of the keys, so they are applied again once it is done.
            applied = self._stream_key(stream_id, "applied")
            since_snapshot = len(pipe)
            pipe.sdiff(applied, f"{applied}:rebuild")
            for temp, final in staged:
                pipe.delete(final)
                pipe.rename(temp, final)
                if ":week:" in final:
                    expiry = weekly_board_expires_at(week_from_label(final.rsplit(":", 1)[1]))
                    pipe.expireat(final, int(expiry.timestamp()))
            if drop:
                pipe.delete(*drop)
            results = await pipe.execute()
        missed = [uuid.UUID(raw.decode()) for raw in results[since_snapshot]]
        if missed:
            # Committed before they were applied, so visible now. Applied once more, into
            # the rebuilt keys (each counts once: the new applied set does not hold it yet,
            # and a concurrent replay of the same gift finds it there afterwards).
            for row in await pool.fetch(
                    "SELECT id, sender_id, creator_id, price, created_at FROM gifts"
                    " WHERE id = ANY($1::uuid[]) AND stream_id = $2", missed, stream_id):
                await self.apply(gift_id=row["id"], stream_id=stream_id,
                                 creator_id=row["creator_id"], sender_id=row["sender_id"],
                                 coins=int(row["price"]), at=row["created_at"])
        return await self.totals(stream_id)

    async def reconcile(self, pool: Any, stream_id: uuid.UUID, *, repair: bool,
                        now: dt.datetime | None = None) -> Difference | None:
        """Compare Redis with PostgreSQL for one stream (totals, top board, goal) and its
        creator's all-time and current-week boards; repair them if asked."""
        now = now or dt.datetime.now(dt.UTC)
        seen = await self.totals(stream_id, top=1_000_000)
        truth = await postgres_totals(pool, stream_id, top=None)
        parts = []
        if (seen.coins, seen.gifts, sorted(seen.top)) != (truth.coins, truth.gifts,
                                                          sorted(truth.top)):
            parts.append("totals")
        goal = await postgres_goal(pool, stream_id)
        goal_truth = None if goal is None else (goal.target_coins, epoch_us(goal.set_at),
                                                goal.progress_coins)
        if await self.goal_state(stream_id) != goal_truth:
            parts.append("goal")
        creator_id = await pool.fetchval("SELECT creator_id FROM streams WHERE id = $1",
                                         stream_id)
        if creator_id is not None:
            boards = await postgres_creator_boards(pool, creator_id, now)
            week = iso_week(now)
            if sorted(await self.creator_board(creator_id, week=None, top=1_000_000)) != sorted(
                    boards.get(None, [])):
                parts.append("creator_board")
            if sorted(await self.creator_board(creator_id, week=week, top=1_000_000)) != sorted(
                    boards.get(week, [])):
                parts.append("weekly_board")
        if not parts:
            return None
        if repair:
            await self.rebuild(pool, stream_id, now=now)
        return Difference(stream_id, seen, truth, tuple(parts))


async def postgres_totals(pool: Any, stream_id: uuid.UUID, *, top: int | None) -> StreamTotals:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(price), 0) AS coins, count(*) AS gifts FROM gifts"
        " WHERE stream_id = $1", stream_id)
    board = await pool.fetch(
        "SELECT sender_id, sum(price) AS coins FROM gifts WHERE stream_id = $1"
        " GROUP BY sender_id ORDER BY coins DESC, sender_id LIMIT $2", stream_id, top)
    return StreamTotals(int(row["coins"]), int(row["gifts"]),
                        [(str(r["sender_id"]), int(r["coins"])) for r in board])


async def postgres_goal(pool: Any, stream_id: uuid.UUID) -> GoalRecord | None:
    """The stream's goal, with its progress: the coins of the stream's gifts committed at or
    after the goal was set."""
    row = await pool.fetchrow(
        "SELECT target_coins, title, set_at FROM stream_goals WHERE stream_id = $1", stream_id)
    if row is None:
        return None
    gifts = await pool.fetch("SELECT id, price FROM gifts WHERE stream_id = $1"
                             " AND created_at >= $2", stream_id, row["set_at"])
    return GoalRecord(int(row["target_coins"]), row["title"], row["set_at"],
                      sum(int(g["price"]) for g in gifts), [g["id"] for g in gifts])


async def postgres_creator_boards(pool: Any, creator_id: uuid.UUID,
                                  now: dt.datetime) -> dict[str | None, list[tuple[str, int]]]:
    """A creator's boards from the ledger: all-time (key ``None``) and each kept ISO week
    (UTC) that had gifts, as (sender, coins)."""
    boards: dict[str | None, list[tuple[str, int]]] = {}
    for r in await pool.fetch(
            "SELECT sender_id, sum(price) AS coins FROM gifts WHERE creator_id = $1"
            " GROUP BY sender_id", creator_id):
        boards.setdefault(None, []).append((str(r["sender_id"]), int(r["coins"])))
    for r in await pool.fetch(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'IYYY-\"W\"IW') AS week, sender_id,"
            " sum(price) AS coins FROM gifts WHERE creator_id = $1 AND created_at >= $2"
            " GROUP BY 1, 2", creator_id, kept_weeks_since(now)):
        boards.setdefault(r["week"], []).append((str(r["sender_id"]), int(r["coins"])))
    return boards


def _board_rows(board: list[tuple[bytes, float]]) -> list[tuple[str, int]]:
    """A sorted set read with its scores, as (member, coins)."""
    return [(member.decode(), int(score)) for member, score in board]
