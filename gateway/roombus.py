"""Rooms shared between gateway nodes through Redis.

Publishing a room event is one Lua script, so it is atomic: it takes the room's next sequence
number (creating the room's epoch if there is none), appends the event to the room's capped
history stream (entry id ``<seq>-1``), and PUBLISHes it on the room's channel. Because Redis
runs scripts one at a time, every subscriber sees a room's events in ``seq`` order, whichever
node published them.

The event JSON is completed inside the script: the caller sends ``{"type": ...}`` and the
script prepends ``"seq"`` and ``"epoch"``, so the bytes stored, published and finally written
to every socket are the same bytes, serialised once.

Keys carry the room in a hash tag (``{room}``), so a Redis Cluster keeps a room on one shard
(the script touches two keys of the same room). If Redis loses a room's state, the next event
starts a new epoch (and drops any history left behind), which tells clients plainly that what
they hold cannot be continued.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from livecore.wire import HISTORY_EVENTS

# KEYS: room state hash, room history stream[, a counter]
# ARGV: channel, epoch if new, event JSON without seq/epoch, history length[, counter increment]
# With a counter, the script adds to it and writes the new total into the event in place of
# the literal "total":null, so totals reach every node in the same order as the events.
_PUBLISH = """
local created = redis.call('HSETNX', KEYS[1], 'epoch', ARGV[2])
if created == 1 then redis.call('DEL', KEYS[2]) end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local body = ARGV[3]
if KEYS[3] then
  local total = redis.call('INCRBY', KEYS[3], ARGV[5])
  body = (string.gsub(body, '"total":null', '"total":' .. total, 1))
end
local event = '{"seq":' .. seq .. ',"epoch":"' .. epoch .. '",' .. string.sub(body, 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-1', 'e', event)
redis.call('PUBLISH', ARGV[1], event)
return {seq, epoch}
"""


# Many events in one call: KEYS are the state and history keys of each event in turn, ARGV
# the channel, new epoch, event JSON and history length of each. Returns how many.
_PUBLISH_MANY = "local function publish(KEYS, ARGV)\n" + _PUBLISH + """end
for i = 0, #ARGV / 4 - 1 do
  publish({KEYS[i * 2 + 1], KEYS[i * 2 + 2]},
          {ARGV[i * 4 + 1], ARGV[i * 4 + 2], ARGV[i * 4 + 3], ARGV[i * 4 + 4]})
end
return #ARGV / 4
"""


# Removing a chat message, atomically: look for the message in the room's history (newest
# first) and, in mode "remove", publish the removal only if the message is there and not yet
# removed, so a removal never names a message this room did not have (or has forgotten) and
# two removals of one message publish one event.
# KEYS, ARGV[1..4]: as _PUBLISH; ARGV[5]: '"message_id":"<id>"'; ARGV[6]: "check" or "remove".
# Returns {state, seq}: state "missing", "present" or "removed" (as found before this call).
#
# Matching the JSON text is sound: every value a user chose (chat text, names) is a JSON
# string, where a quote is always escaped, so '"message_id":"' and '"type":"' only occur as
# the event's own keys; ``type`` comes before ``data`` in every event (see publish).
_REMOVE_CHAT = "local function publish(KEYS, ARGV)\n" + _PUBLISH + """end
local entries = redis.call('XREVRANGE', KEYS[2], '+', '-')
local state = 'missing'
for _, entry in ipairs(entries) do
  local event = entry[2][2]
  if string.find(event, ARGV[5], 1, true) then
    if string.find(event, '"type":"chat.removed"', 1, true) then
      state = 'removed'
      break
    elseif string.find(event, '"type":"chat.message"', 1, true) then
      state = 'present'
      break
    end
  end
end
if state ~= 'present' or ARGV[6] ~= 'remove' then return {state, 0} end
local published = publish(KEYS, ARGV)
return {state, published[1]}
"""


@dataclass(frozen=True)
class RoomPosition:
    epoch: str
    seq: int


class RoomBus:
    """Publish room events and read a room's history and counters."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self._publish = redis.register_script(_PUBLISH)
        self._publish_many = redis.register_script(_PUBLISH_MANY)
        self._remove_chat = redis.register_script(_REMOVE_CHAT)

    def _key(self, room: str, name: str) -> str:
        return f"{self.prefix}room:{{{room}}}:{name}"

    def channel(self, room: str) -> str:
        return f"{self.prefix}room:{{{room}}}"

    def room_of(self, channel: str) -> str:
        """The room id in a channel name made by :meth:`channel`."""
        return channel[channel.index("{") + 1 : channel.index("}")]

    async def publish(self, room: str, event_type: str, data: dict[str, Any], ts: float) -> int:
        """Sequence, store and broadcast one event; returns its ``seq``."""
        body = orjson.dumps({"type": event_type, "room": room, "ts": round(ts, 3), "data": data})
        seq, _epoch = await self._publish(
            keys=[self._key(room, "state"), self._key(room, "history")],
            args=[self.channel(room), secrets.token_hex(8), body, HISTORY_EVENTS],
        )
        return int(seq)

    async def publish_many(self, events: list[tuple[str, str, dict[str, Any], float]]
                           ) -> None:
        """:meth:`publish` for many events, (room, type, data, ts), in this order, in one
        script call (one round trip, atomic: every room's events keep this order on every
        node)."""
        if not events:
            return
        keys: list[str] = []
        args: list[Any] = []
        for room, event_type, data, ts in events:
            keys += [self._key(room, "state"), self._key(room, "history")]
            args += [self.channel(room), secrets.token_hex(8),
                     orjson.dumps({"type": event_type, "room": room, "ts": round(ts, 3),
                                   "data": data}), HISTORY_EVENTS]
        await self._publish_many(keys=keys, args=args)

    async def chat_message_state(self, room: str, message_id: str) -> str:
        """``"present"``, ``"removed"`` or ``"missing"``: whether the room's stored history
        (its last :data:`~livecore.wire.HISTORY_EVENTS` events) holds this chat message,
        and whether it was removed since."""
        state, _seq = await self._remove_chat(
            keys=[self._key(room, "state"), self._key(room, "history")],
            args=[self.channel(room), "", b"{}", HISTORY_EVENTS,
                  f'"message_id":"{message_id}"', "check"],
        )
        return str(state.decode() if isinstance(state, bytes) else state)

    async def remove_chat(self, room: str, message_id: str, data: dict[str, Any],
                          ts: float) -> int | None:
        """Publish ``chat.removed`` for a message in the room's history that is not removed
        yet (one atomic step); its ``seq``, or ``None`` when nothing was published."""
        body = orjson.dumps({"type": "chat.removed", "room": room, "ts": round(ts, 3),
                             "data": data})
        state, seq = await self._remove_chat(
            keys=[self._key(room, "state"), self._key(room, "history")],
            args=[self.channel(room), secrets.token_hex(8), body, HISTORY_EVENTS,
                  f'"message_id":"{message_id}"', "remove"],
        )
        state = state.decode() if isinstance(state, bytes) else state
        return int(seq) if state == "present" else None

    async def position(self, room: str) -> RoomPosition | None:
        epoch, seq = await self._redis.hmget(self._key(room, "state"), ["epoch", "seq"])
        if epoch is None:
            return None
        return RoomPosition(epoch.decode(), int(seq or 0))

    async def since(self, room: str, seq: int, *, limit: int) -> list[bytes]:
        """Stored events after ``seq`` (oldest first), at most ``limit``."""
        entries = await self._redis.xrange(
            self._key(room, "history"), min=f"{seq + 1}-0", max="+", count=limit
        )
        return [fields[b"e"] for _id, fields in entries]

    async def recent(self, room: str, *, limit: int) -> list[bytes]:
        """The newest ``limit`` stored events, oldest first."""
        entries = await self._redis.xrevrange(self._key(room, "history"), count=limit)
        return [fields[b"e"] for _id, fields in reversed(entries)]

    async def publish_likes(self, room: str, delta: int, ts: float) -> int:
        """Add ``delta`` to the room's like total and publish the ``likes`` event, atomically."""
        body = orjson.dumps({"type": "likes", "room": room, "ts": round(ts, 3),
                             "data": {"total": None, "delta": delta}})
        seq, _epoch = await self._publish(
            keys=[self._key(room, "state"), self._key(room, "history"), self._key(room, "likes")],
            args=[self.channel(room), secrets.token_hex(8), body, HISTORY_EVENTS, delta],
        )
        return int(seq)

    async def likes(self, room: str) -> int:
        return int(await self._redis.get(self._key(room, "likes")) or 0)

    async def set_viewers(self, room: str, node: str, count: int, ttl_s: int,
                          what: str = "viewers") -> int:
        """Record this node's count of ``what`` for the room (``viewers``: websockets in the
        room; ``watching``: WebRTC playback sessions); returns the total over live nodes.

        Each node writes its own field; a field whose node stopped refreshing expires with
        the node's liveness key, so a crashed node's viewers vanish from the total.
        """
        key = self._key(room, what)
        alive = f"{self.prefix}node:{node}:alive"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(alive, 1, ex=ttl_s)
            if count:
                pipe.hset(key, node, count)
            else:
                pipe.hdel(key, node)
            pipe.expire(key, ttl_s * 10)
            await pipe.execute()
        return await self.total(room, what)

    async def total(self, room: str, what: str = "viewers") -> int:
        """The room's count of ``what`` over the nodes still alive (dead nodes' fields go)."""
        key = self._key(room, what)
        counts = await self._redis.hgetall(key)
        nodes = [n.decode() for n in counts]
        if not nodes:
            return 0
        alive_flags = await self._redis.mget([f"{self.prefix}node:{n}:alive" for n in nodes])
        total = 0
        dead = []
        for node_name, flag in zip(nodes, alive_flags, strict=True):
            if flag is None:
                dead.append(node_name)
            else:
                total += int(counts[node_name.encode()])
        if dead:
            await self._redis.hdel(key, *dead)
        return total

    async def claim_slow_mode(self, room: str, user: str, seconds: int) -> float | None:
        """Slow mode across nodes: ``None`` if the user may post now (and the clock starts),
        else the seconds left to wait."""
        key = self._key(room, f"slow:{user}")
        if await self._redis.set(key, 1, px=seconds * 1000, nx=True):
            return None
        remaining_ms = int(await self._redis.pttl(key))
        return max(remaining_ms, 1) / 1000
