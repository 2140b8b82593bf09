"""The websocket hub: rooms, fan-out, presence, recovery, chat and likes on one node.

How an event reaches a thousand sockets
---------------------------------------

Every room event goes through Redis (:mod:`gateway.roombus`), even when publisher and
subscribers are on the same node, so all nodes see one order. Each node holds one pub/sub
connection, subscribed to the rooms that have local subscribers. For each event it:

1. parses the JSON once (to learn ``seq`` and to apply moderation to its cached rules),
2. frames it once as an unmasked websocket text frame (server frames are never masked, so
   the same bytes are valid on every socket; permessage-deflate is off),
3. queues the frame on the room and schedules the room's flush: at once (``call_soon``) when
   the room has not flushed for ``LIVECORE_WS_FLUSH_MS``, else when that interval has passed
   since its last flush. A quiet room's event goes out immediately; in a busy room every event
   of the interval shares one write per socket (a ``send()`` system call per socket is most of
   the cost of fan-out, so this divides it by the number of events coalesced),
4. on flush, joins the queued frames and hands the same bytes to each socket's transport in
   one ``write``, :data:`FLUSH_CHUNK` sockets at a time, yielding to the event loop between
   chunks so one big room does not stall the others (or acks, pings and accepts).

No per-recipient serialisation, no per-recipient task, no per-recipient queue object. The
transport's write buffer is the bounded queue: a socket whose buffer holds more than
:data:`SLOW_CONSUMER_BYTES` is closed with 4008 and dropped from its rooms at once, so it can
never delay the room. Messages to one client (acks, errors, recovery) use the same framing.

Each socket is a :class:`Connection`, the asyncio protocol of its transport
(:mod:`gateway.sockets`): frames in are parsed by the ``websockets`` library's sans-I/O
protocol, frames out are written to the transport directly, and the event loop runs one
callback at a time, so frames never interleave (on a pooled connection that aiohttp upgraded,
aiohttp writes its pings and close frame, each whole and synchronously). An idle socket has
no task and no queue.

Subscribing with recovery: the connection is put on the room in *holding* mode (live frames
are parked on the connection), the room's position and missed events are read from Redis,
the ``ack`` and the missed events are written, then the parked frames newer than what was
written are released. So a client sees every event once, in order, with no gap. A frame still
queued for the room's next flush may already be in what was written (the room's position is read
from Redis, which is ahead of this node's delivery): the connection is remembered with the last
seq it got (``LocalRoom.fresh``) and the next flushes skip what it already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.exceptions
from aiohttp import web
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from gateway.auth import bearer_token, token_digest
from gateway.gifts import GiftRequest, gift_json
from gateway.metrics import Metrics
from gateway.services import Services
from gateway.sockets import CLOSE_TIMEOUT_S, ServerSocket
from ledger.postgres import UNAVAILABLE_ERRORS
from livecore.accounts import Account, Permission
from livecore.chat import (
    CHAT_BURST,
    CHAT_PER_S,
    RoomRules,
    Sanction,
    SanctionKind,
    TokenBucket,
    WordFilter,
    rate_limited,
)
from livecore.errors import (
    ClientError,
    Forbidden,
    LivecoreError,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
)
from livecore.ids import StreamId, parse_stream_id
from livecore.wire import (
    CLOSE_FLOODING,
    CLOSE_GOING_AWAY,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNSUPPORTED_VERSION,
    CONNECTION_BURST,
    CONNECTION_MESSAGES_PER_S,
    CURRENT_VERSION,
    FLOOD_STRIKES,
    HISTORY_EVENTS,
    MAX_FRAME_BYTES,
    MAX_SUBSCRIPTIONS,
    RECENT_CHAT_IN_SNAPSHOT,
    SUBPROTOCOL_PREFIX,
    ClientMessage,
    ProtocolError,
    error_message,
    limits,
    negotiate_version,
    parse_client_message,
)

log = logging.getLogger(__name__)

#: Bytes a socket may have waiting in its write buffer before it counts as a slow consumer.
SLOW_CONSUMER_BYTES = 1024 * 1024
#: A socket silent this long is pinged; it has PONG_TIMEOUT_S to answer (any frame will do).
HEARTBEAT_S = 20.0
PONG_TIMEOUT_S = 10.0
HEARTBEAT_CHECK_S = 5.0
PRESENCE_INTERVAL_S = 2.0
LIKES_INTERVAL_S = 1.0
#: A room with no local subscriber for this long is unsubscribed from Redis.
IDLE_ROOM_S = 30.0
NODE_TTL_S = 10
MAX_JOINS_SAMPLED = 5
SNAPSHOT_SCAN_EVENTS = RECENT_CHAT_IN_SNAPSHOT * 4
#: Sockets written per slice of a flush before the event loop gets a turn.
FLUSH_CHUNK = 1000

_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def text_frame(payload: bytes) -> bytes:
    """One unmasked websocket text frame (RFC 6455 section 5.2), as servers send them."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def dumps_frame(message: dict[str, Any]) -> bytes:
    return text_frame(orjson.dumps(message))


class Connection(ServerSocket):
    """One client's websocket as the hub sees it (the socket itself: :mod:`gateway.sockets`)."""

    __slots__ = ("hub", "session", "user", "version", "rooms", "holding", "bucket", "strikes")

    def __init__(self, hub: Hub, user: Account | None, version: int | None) -> None:
        super().__init__()
        self.hub = hub
        self.session = uuid.uuid4().hex
        self.user = user
        self.version = version
        self.rooms: set[str] = set()
        #: Rooms being subscribed: live frames parked here as (seq, frame) until recovery
        #: is sent.
        self.holding: dict[str, list[tuple[int, bytes]]] = {}
        self.bucket = TokenBucket(CONNECTION_BURST, CONNECTION_MESSAGES_PER_S)
        self.strikes = 0

    def write(self, data: bytes) -> bool:
        """Hand bytes to the socket; a socket too far behind is closed as a slow consumer."""
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > SLOW_CONSUMER_BYTES:
            self.close(CLOSE_SLOW_CONSUMER, "slow consumer")
            return False
        transport.write(data)
        return True

    def send(self, message: dict[str, Any]) -> None:
        self.write(dumps_frame(message))

    def max_message_bytes(self) -> int:
        return MAX_FRAME_BYTES

    def on_open(self) -> None:
        self.hub.opened(self)

    async def on_text(self, text: str) -> None:
        await self.hub.on_text(self, text)

    def on_close_sent(self, reason: str) -> None:
        self.hub.metrics.ws_closed.labels(reason).inc()

    def on_closing(self) -> None:
        # Out of its rooms at once: the close handshake may take seconds (a slow consumer's
        # close frame waits behind its unsent data), and nothing more is written meanwhile.
        self.hub.leave_all(self)

    def on_closed(self) -> None:
        self.hub.closed(self)


@dataclass(eq=False)
class LocalRoom:
    """A room as this node holds it: its local sockets and its cached rules."""

    id: str
    creator_id: str
    creator_username: str
    title: str
    state: str
    rules: RoomRules
    connections: set[Connection] = field(default_factory=set)
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    flush_scheduled: bool = False
    #: A flush is being written in slices; the next one waits for it.
    flushing: bool = False
    last_flush_s: float = 0.0
    #: Connections that subscribed while frames may be queued: the last seq each was sent.
    fresh: dict[Connection, int] = field(default_factory=dict)
    kicks: list[str] = field(default_factory=list)
    likes_pending: int = 0
    joined: list[str] = field(default_factory=list)
    viewers: int = 0
    watching: int = 0  # WebRTC playback sessions (WHEP) on every node
    idle_since: float | None = None
    words_stale: bool = False
    first_pending_ts: float = 0.0


class Hub:
    def __init__(self, services: Services, metrics: Metrics, *,
                 node_id: str | None = None) -> None:
        self.services = services
        self.metrics = metrics
        metrics.ws_connections.set_function(lambda: len(self.connections))
        metrics.ws_rooms.set_function(lambda: len(self.rooms))
        self.bus = services.bus
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self.rooms: dict[str, LocalRoom] = {}
        self.connections: set[Connection] = set()
        self._activating: dict[str, asyncio.Future[LocalRoom]] = {}
        self._subscribed: dict[str, asyncio.Event] = {}
        self._pubsub: Any = None
        #: Chat rate limits per user on this node (a user may hold several connections).
        self._chat_buckets: dict[str, TokenBucket] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flush_interval_s = services.settings.ws_flush_ms / 1000
        self.max_connections = services.settings.max_connections or connection_cap()
        self.stopping = False
        self._all_closed = asyncio.Event()

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pubsub = self.services.redis.pubsub()
        # A channel of our own keeps the pub/sub connection subscribed while no room is.
        await self._subscribe_channel(f"{self.bus.prefix}node:{self.node_id}")
        self._tasks = [
            asyncio.create_task(self._read_pubsub(), name="hub-pubsub"),
            asyncio.create_task(self._tick(PRESENCE_INTERVAL_S, self._presence_pass),
                                name="hub-presence"),
            asyncio.create_task(self._tick(LIKES_INTERVAL_S, self._likes_pass),
                                name="hub-likes"),
            asyncio.create_task(self._tick(HEARTBEAT_CHECK_S, self._heartbeat_pass),
                                name="hub-heartbeat"),
        ]

    async def stop(self) -> None:
        """Tell every client to reconnect elsewhere, close them (1001), stop the tasks."""
        self.stopping = True
        for conn in list(self.connections):
            conn.send({"type": "closing", "reason": "server shutting down", "reconnect": True})
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), CLOSE_TIMEOUT_S)
        for conn in list(self.connections):
            conn.abort()
        with contextlib.suppress(Exception):
            await self._likes_pass()
            for room_id in list(self.rooms):  # our viewers leave the cluster's counts now
                await self.bus.set_viewers(room_id, self.node_id, 0, NODE_TTL_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    # -- pub/sub in -------------------------------------------------------------------------

    async def _subscribe_channel(self, channel: str) -> None:
        event = self._subscribed.setdefault(channel, asyncio.Event())
        await self._pubsub.subscribe(channel)
        if self._tasks:  # the reader confirms; before start() there is no reader yet
            await asyncio.wait_for(event.wait(), 10)

    async def _read_pubsub(self) -> None:
        while not self.stopping:
            try:
                async for message in self._pubsub.listen():
                    kind = message["type"]
                    channel = message["channel"].decode()
                    if kind == b"message" or kind == "message":
                        room = self.rooms.get(self.bus.room_of(channel))
                        if room is not None:
                            self._deliver(room, message["data"])
                    elif kind in (b"subscribe", "subscribe"):
                        self._subscribed.setdefault(channel, asyncio.Event()).set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Redis went away: events published meanwhile are lost to live delivery;
                # clients see a gap in seq and resubscribe with `since` (docs/protocol.md).
                log.warning("pub/sub connection lost; resubscribing", extra={"error": repr(exc)})
            if self.stopping:
                return
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                old, self._pubsub = self._pubsub, self.services.redis.pubsub()
                await old.aclose()
                await self._pubsub.subscribe(*self._subscribed)

    def _deliver(self, room: LocalRoom, payload: bytes) -> None:
        event = orjson.loads(payload)
        self.metrics.room_events.inc()
        self._apply(room, event)
        if not room.pending:
            room.first_pending_ts = event["ts"]
        room.pending.append((int(event["seq"]), text_frame(payload)))
        self._schedule_flush(room)

    def _schedule_flush(self, room: LocalRoom) -> None:
        """Flush now if the room has been quiet for the interval, else when it has been."""
        if room.flush_scheduled or room.flushing or not room.pending:
            return
        room.flush_scheduled = True
        assert self._loop is not None
        wait = room.last_flush_s + self.flush_interval_s - self._loop.time()
        if wait <= 0:
            self._loop.call_soon(self._flush, room)
        else:
            self._loop.call_later(wait, self._flush, room)

    def _apply(self, room: LocalRoom, event: dict[str, Any]) -> None:
        """Keep this node's cached rules in step with moderation events."""
        kind = event["type"]
        data = event["data"]
        if kind in ("user.muted", "user.banned"):
            sanction_kind = SanctionKind.BAN if kind == "user.banned" else SanctionKind.MUTE
            user_id = data["user"]["id"]
            room.rules.sanctions[user_id] = Sanction(sanction_kind, data["until"])
            if sanction_kind is SanctionKind.BAN:
                room.kicks.append(user_id)
        elif kind == "user.unsanctioned":
            room.rules.sanctions.pop(data["user"]["id"], None)
        elif kind == "chat.settings":
            # The words themselves are private (the event carries only their count):
            # the next chat message in this room reloads them before it is judged.
            room.rules.slow_mode_s = data["slow_mode_s"]
            room.words_stale = True
        elif kind == "stream.state":
            room.state = data["state"]

    async def _reload_words(self, room: LocalRoom) -> None:
        room.words_stale = False
        settings = await self.services.chat.settings(StreamId(uuid.UUID(room.id)))
        room.rules.words = WordFilter.of(self.services.global_blocked_words,
                                         settings.blocked_words)

    def _flush(self, room: LocalRoom) -> None:
        room.flush_scheduled = False
        frames, room.pending = room.pending, []
        if not frames:
            return
        assert self._loop is not None
        room.last_flush_s = self._loop.time()
        self.metrics.fanout_lag.observe(max(0.0, time.time() - room.first_pending_ts))
        targets = list(room.connections)
        self.metrics.deliveries.inc(len(frames) * len(targets))
        if room.fresh:
            first_seq = frames[0][0]
            for conn, last in list(room.fresh.items()):
                if first_seq > last:  # in order from here on
                    del room.fresh[conn]
        room.flushing = True
        self._flush_slice(room, frames, b"".join(frame for _seq, frame in frames), targets, 0)

    def _flush_slice(self, room: LocalRoom, frames: list[tuple[int, bytes]], data: bytes,
                     targets: list[Connection], start: int) -> None:
        """Write one slice of a flush; schedule the next, or finish the flush."""
        fresh = room.fresh
        writes = 0
        for conn in targets[start:start + FLUSH_CHUNK]:
            if conn.closing:
                continue
            held = conn.holding.get(room.id)
            if held is not None:
                held.extend(frames)
                continue
            if start and room.id not in conn.rooms:
                continue  # left the room while earlier slices were written
            payload = data
            if fresh:
                last = fresh.get(conn)
                if last is not None:
                    payload = b"".join(frame for seq, frame in frames if seq > last)
                    if not payload:
                        continue
            writes += 1
            conn.write(payload)  # a socket it closes leaves its rooms (Connection.on_closing)
        self.metrics.ws_writes.inc(writes)
        start += FLUSH_CHUNK
        if start < len(targets):
            assert self._loop is not None
            self._loop.call_soon(self._flush_slice, room, frames, data, targets, start)
            return
        room.flushing = False
        if room.kicks:
            banned, room.kicks = set(room.kicks), []
            for conn in list(room.connections):
                if conn.user is not None and str(conn.user.id) in banned:
                    room.connections.discard(conn)
                    conn.rooms.discard(room.id)
                    conn.send({"type": "unsubscribed", "room": room.id, "reason": "banned"})
        self._schedule_flush(room)

    # -- rooms ------------------------------------------------------------------------------

    async def _room(self, room_id: str) -> LocalRoom:
        """The local room, activating it (loading its rules, subscribing) on first use."""
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        pending = self._activating.get(room_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[LocalRoom] = asyncio.get_running_loop().create_future()
        self._activating[room_id] = future
        try:
            room = await self._load_room(room_id)
            await self._subscribe_channel(self.bus.channel(room_id))
            self.rooms[room_id] = room
            future.set_result(room)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._activating[room_id]

    async def _load_room(self, room_id: str) -> LocalRoom:
        services = self.services
        stream = await services.streams.get(parse_stream_id(room_id))
        settings = await services.chat.settings(stream.id)
        now = services.clock()
        sanctions = await services.chat.sanctions(stream.creator_id, now)
        rules = RoomRules(
            slow_mode_s=settings.slow_mode_s,
            words=WordFilter.of(services.global_blocked_words, settings.blocked_words),
            sanctions={
                str(s.user_id): Sanction(s.kind, None if s.expires_at is None
                                         else s.expires_at.timestamp())
                for s in sanctions
            },
        )
        return LocalRoom(
            id=room_id, creator_id=str(stream.creator_id),
            creator_username=stream.creator_username, title=stream.title,
            state=stream.state.value, rules=rules,
            # Idle until a connection joins (a subscribe refused, or a chat checked for a ban,
            # may activate a room nobody joins): the presence pass then lets it go.
            idle_since=time.monotonic(),
        )

    def leave_all(self, conn: Connection) -> None:
        for room_id in list(conn.rooms):
            self._leave(conn, room_id)

    # -- the socket -------------------------------------------------------------------------

    async def admit(self, request: Request, response: Response) -> Connection:
        """Decide on a ``/ws`` upgrade (:mod:`gateway.sockets` calls this): refuse it with an
        error, or return the connection that will serve it, having chosen the subprotocol."""
        services = self.services
        if len(self.connections) >= self.max_connections:
            # Refused before the upgrade, so the socket closes at once: the node stays below
            # its open-file limit, where accept() itself would start failing.
            self.metrics.ws_refused.inc()
            raise ServiceUnavailable("This node holds its most websockets; try again later.",
                                     code="server_full", retry_after_s=5)
        offered = [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol")
                   for p in value.split(",") if p.strip()]
        asked = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query).get("v")
        version = negotiate_version(offered, asked[0] if asked else None)
        user: Account | None = None
        header = request.headers.get("Authorization")
        token = bearer_token(header)
        if header is not None and token is None:
            raise Unauthenticated("The Authorization header must be 'Bearer <token>'.",
                                  code="invalid_authorization")
        if token is not None:
            found = await services.accounts.by_token(token_digest(token), services.clock())
            if found is None:
                raise Unauthenticated("The token is unknown, expired or revoked.",
                                      code="invalid_token")
            user = found[0]
        chosen = f"{SUBPROTOCOL_PREFIX}{version or CURRENT_VERSION}"
        if chosen in offered:
            response.headers["Sec-WebSocket-Protocol"] = chosen
        return Connection(self, user, version)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /ws`` on a connection that served other requests first (a pooling HTTP
        client): aiohttp upgrades it and reads its frames; the hub serves it as any other."""
        headers = Headers(request.headers.items())
        response = Response(101, "Switching Protocols", Headers())
        conn = await self.admit(Request(request.path_qs, headers), response)
        chosen = response.headers.get("Sec-WebSocket-Protocol")
        ws = web.WebSocketResponse(
            protocols=[chosen] if chosen else (), heartbeat=HEARTBEAT_S,
            max_msg_size=MAX_FRAME_BYTES, compress=False, timeout=CLOSE_TIMEOUT_S,
        )
        await ws.prepare(request)
        assert request.transport is not None
        await conn.attach_aiohttp(ws, request.transport)
        return ws

    def opened(self, conn: Connection) -> None:
        """The upgrade is done: greet the client, or tell it why not."""
        self.connections.add(conn)
        if conn.version is None:
            conn.close(CLOSE_UNSUPPORTED_VERSION, "unsupported protocol version")
        elif self.stopping:
            conn.close(CLOSE_GOING_AWAY, "server shutting down")
        else:
            conn.send({
                "type": "hello", "v": conn.version, "session": conn.session,
                "server_time": time.time(), "user": _user_ref(conn.user), "limits": limits(),
            })

    def closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.leave_all(conn)
        if self.stopping and not self.connections:
            self._all_closed.set()

    async def on_text(self, conn: Connection, data: str) -> None:
        message_id = None
        try:
            # Parse first, so even a refusal echoes the message's id; every frame, valid or
            # not, counts against the connection's rate.
            parsed: ClientMessage | ProtocolError
            try:
                parsed = parse_client_message(data)
                message_id = parsed.id
            except ProtocolError as exc:
                parsed = exc
                message_id = exc.details.get("id")
            retry = conn.bucket.take(time.monotonic())
            if retry is not None:
                # Strikes count messages over the limit in a row; one within it forgives.
                conn.strikes += 1
                if conn.strikes >= FLOOD_STRIKES:
                    conn.send(error_message(rate_limited(retry, code="flooding"), message_id))
                    conn.close(CLOSE_FLOODING, "flooding")
                    return
                raise rate_limited(retry)
            conn.strikes = 0
            if isinstance(parsed, ProtocolError):
                raise parsed
            message = parsed
            handler = self._handlers[message.type]
            result = await handler(self, conn, message)
            if result is not None:
                reply: dict[str, Any] = {"type": "ack", "result": result}
                if message_id is not None:
                    reply["id"] = message_id
                conn.send(reply)
        except LivecoreError as exc:
            if message_id is None and isinstance(exc.details.get("id"), str):
                message_id = exc.details["id"]
            room = None
            if isinstance(exc, ClientError) and isinstance(exc.details.get("room"), str):
                room = exc.details["room"]
            conn.send(error_message(exc, message_id, room))
        except UNAVAILABLE_ERRORS + _REDIS_DOWN as exc:
            log.warning("dependency unavailable", extra={"error": repr(exc)})
            conn.send(error_message(ServiceUnavailable(
                "A service this server needs is unreachable; retry shortly."), message_id))
        except Exception:
            log.exception("websocket message failed", extra={"session": conn.session})
            conn.send(error_message(LivecoreError("Internal server error."), message_id))

    # -- client messages --------------------------------------------------------------------

    async def _auth(self, conn: Connection, message: ClientMessage) -> dict[str, Any]:
        services = self.services
        found = await services.accounts.by_token(token_digest(message.body["token"]),
                                                 services.clock())
        if found is None:
            raise Unauthenticated("The token is unknown, expired or revoked.",
                                  code="invalid_token")
        if conn.user is not None and conn.user.id != found[0].id:
            raise Forbidden("This connection is logged in as another user; reconnect.",
                            code="already_authenticated")
        conn.user = found[0]
        user_id = str(conn.user.id)
        for room_id in list(conn.rooms):
            room = self.rooms.get(room_id)
            if room is not None and user_id in room.rules.sanctions:
                try:
                    room.rules.check_can_read(user_id, time.time())
                except Forbidden:
                    self._leave(conn, room_id)
                    conn.send({"type": "unsubscribed", "room": room_id, "reason": "banned"})
        return {"user": _user_ref(conn.user)}

    async def _subscribe(self, conn: Connection, message: ClientMessage) -> None:
        room_id = message.body["room"].lower()
        if room_id in conn.rooms:
            # Subscribing again re-synchronises (after a seq gap, say): leave, then join anew.
            self._leave(conn, room_id)
        if len(conn.rooms) >= MAX_SUBSCRIPTIONS:
            raise ClientError(f"At most {MAX_SUBSCRIPTIONS} rooms per connection.",
                              code="too_many_subscriptions")
        try:
            room = await self._room(room_id)
        except NotFound:
            raise NotFound("No such stream.", code="stream_not_found", room=room_id) from None
        user_id = None if conn.user is None else str(conn.user.id)
        try:
            room.rules.check_can_read(user_id, time.time())
        except Forbidden as exc:
            exc.details["room"] = room_id
            raise
        conn.holding[room_id] = []
        conn.rooms.add(room_id)
        room.connections.add(conn)
        room.idle_since = None
        try:
            result, backlog = await self._catch_up(room, message.body.get("since"))
        except BaseException:
            conn.holding.pop(room_id, None)
            conn.rooms.discard(room_id)
            room.connections.discard(conn)
            raise
        if conn.closing:  # closed meanwhile (and left its rooms): nothing more to send
            return
        if conn.user is not None and len(room.joined) < MAX_JOINS_SAMPLED:
            room.joined.append(conn.user.username)
        reply: dict[str, Any] = {"type": "ack", "result": result}
        if message.id is not None:
            reply["id"] = message.id
        last = result["seq"]
        parts = [dumps_frame(reply)]
        for seq, frame in backlog:
            parts.append(frame)
            last = max(last, seq)
        for seq, frame in conn.holding.pop(room_id, []):
            if seq > last:
                parts.append(frame)
                last = seq
        # The viewer count now, so a client that recovered (no snapshot) need not wait for
        # the count to change.
        parts.append(dumps_frame({"type": "presence", "room": room_id,
                                  "viewers": max(room.viewers, len(room.connections)),
                                  "joined": []}))
        conn.write(b"".join(parts))
        # Redis may be ahead of this node's delivery: later flushes skip what was just sent.
        room.fresh[conn] = last

    async def _catch_up(self, room: LocalRoom, since: dict[str, Any] | None
                        ) -> tuple[dict[str, Any], list[tuple[int, bytes]]]:
        """The subscribe result and the missed events to send (recovery), or a snapshot."""
        position = await self.bus.position(room.id)
        epoch, seq = (position.epoch, position.seq) if position else ("", 0)
        result: dict[str, Any] = {"room": room.id, "epoch": epoch, "seq": seq}
        # ("", 0) is the position of a room that has had no event yet: what followed is the
        # current epoch from its first event, which recovery replays while history holds it
        # (docs/protocol.md, "Recovery").
        before_any = since is not None and since["epoch"] == "" and since["seq"] == 0
        if since is not None and (since["epoch"] == epoch or before_any) \
                and since["seq"] <= seq:
            missed = await self.bus.since(room.id, since["seq"], limit=HISTORY_EVENTS)
            seqs = [int(orjson.loads(raw)["seq"]) for raw in missed]
            # Recovered only if history holds every event after the client's position up to
            # (at least) the room's position, without a hole.
            contiguous = seqs == list(range(since["seq"] + 1, since["seq"] + 1 + len(seqs)))
            if contiguous and len(seqs) >= seq - since["seq"]:
                result.update(recovered=True, missed=len(seqs))
                return result, [(s, text_frame(raw)) for s, raw in zip(seqs, missed,
                                                                        strict=True)]
        result.update(recovered=False, missed=0, snapshot=await self._snapshot(room, seq))
        return result, []

    async def _snapshot(self, room: LocalRoom, upto: int) -> dict[str, Any]:
        # The newest events only: enough to find the last chats and their removals without
        # reading (and decoding) the whole history on every join.
        recent = await self.bus.recent(room.id, limit=SNAPSHOT_SCAN_EVENTS)
        chats: list[dict[str, Any]] = []
        removed: set[str] = set()
        for raw in recent:
            event = orjson.loads(raw)
            if event["seq"] > upto:
                continue
            if event["type"] == "chat.message":
                chats.append(event)
            elif event["type"] == "chat.removed":
                removed.add(event["data"]["message_id"])
        chats = [c for c in chats if c["data"]["message_id"] not in removed]
        return {
            "stream": {"state": room.state, "title": room.title,
                       "creator": {"id": room.creator_id, "username": room.creator_username}},
            "viewers": max(room.viewers, len(room.connections)),
            "likes": await self.bus.likes(room.id),
            "slow_mode_s": room.rules.slow_mode_s,
            "recent_chat": chats[-RECENT_CHAT_IN_SNAPSHOT:],
            # The live goal and the leaderboard (from the gift projection).
            **await self.services.gifts.room_state(StreamId(uuid.UUID(room.id))),
        }

    async def _unsubscribe(self, conn: Connection, message: ClientMessage) -> dict[str, Any]:
        room_id = message.body["room"].lower()
        if room_id not in conn.rooms:
            raise ClientError("Not subscribed to this room.", code="not_subscribed",
                              room=room_id)
        self._leave(conn, room_id)
        return {"room": room_id}

    def _leave(self, conn: Connection, room_id: str) -> None:
        conn.rooms.discard(room_id)
        conn.holding.pop(room_id, None)
        room = self.rooms.get(room_id)
        if room is not None:
            room.connections.discard(conn)
            room.fresh.pop(conn, None)
            if not room.connections:
                room.idle_since = time.monotonic()

    async def _writer_room(self, conn: Connection, room_id: str) -> tuple[Account, LocalRoom]:
        """The writer and the room for ``chat``, ``like`` and ``gift``: refuses anonymous
        connections (``login_required``), banned users (``banned``: a ban removes its user
        from the room, so this is checked before the subscription, which a banned user
        cannot hold) and connections not subscribed (``not_subscribed``)."""
        if conn.user is None:
            raise Unauthenticated("Log in to write: send an auth message first.",
                                  code="login_required")
        room = self.rooms.get(room_id)
        if room_id not in conn.rooms:
            with contextlib.suppress(NotFound):
                room = await self._room(room_id)
                try:
                    room.rules.check_can_read(str(conn.user.id), time.time())
                except Forbidden as exc:
                    exc.details["room"] = room_id
                    raise
            raise ClientError("Subscribe to the room first.", code="not_subscribed",
                              room=room_id)
        if room is None:
            raise ClientError("Subscribe to the room first.", code="not_subscribed",
                              room=room_id)
        return conn.user, room

    async def _chat(self, conn: Connection, message: ClientMessage) -> dict[str, Any]:
        room_id = message.body["room"].lower()
        user, room = await self._writer_room(conn, room_id)
        user_id = str(user.id)
        if room.state == "ended":
            raise ClientError("The stream has ended; its chat is closed.", code="stream_ended",
                              room=room_id)
        is_staff = user_id == room.creator_id or user.can(Permission.STREAM_MODERATE)
        if room.words_stale:
            await self._reload_words(room)
        text = room.rules.check_message(user_id, message.body["text"], now_epoch_s=time.time(),
                                        is_staff=is_staff)
        if not is_staff:
            bucket = self._chat_buckets.get(user_id)
            if bucket is None:
                bucket = self._chat_buckets[user_id] = TokenBucket(CHAT_BURST, CHAT_PER_S)
            retry = bucket.take(time.monotonic())
            if retry is not None:
                raise rate_limited(retry)
            if room.rules.slow_mode_s:
                wait = await self.bus.claim_slow_mode(room_id, user_id, room.rules.slow_mode_s)
                if wait is not None:
                    raise rate_limited(wait, code="slow_mode")
        message_id = str(uuid.uuid4())
        seq = await self.bus.publish(
            room_id, "chat.message",
            {"message_id": message_id, "user": _user_ref(user), "text": text}, time.time(),
        )
        return {"room": room_id, "message_id": message_id, "seq": seq}

    async def _like(self, conn: Connection, message: ClientMessage) -> dict[str, Any]:
        room_id = message.body["room"].lower()
        user, room = await self._writer_room(conn, room_id)
        if room.rules.sanction(str(user.id), time.time()) is not None:
            raise Forbidden("You cannot like in this room while muted or banned.", code="muted")
        room.likes_pending += message.body.get("count", 1)
        return {"room": room_id}

    async def _gift(self, conn: Connection, message: ClientMessage) -> dict[str, Any]:
        """A gift over the socket: answered after COMMIT; the room sees it after that."""
        room_id = message.body["room"].lower()
        user, _room = await self._writer_room(conn, room_id)
        request = GiftRequest(uuid.UUID(message.body["gift_id"]),
                              StreamId(uuid.UUID(room_id)), message.body["gift"],
                              message.body.get("quantity", 1))
        outcome, combo = await self.services.gifts.send(user, request)
        catalogue = await self.services.gifts.catalogue()
        return gift_json(outcome, catalogue.get(outcome.order.gift_slug), combo)

    async def _ping(self, conn: Connection, message: ClientMessage) -> None:
        reply: dict[str, Any] = {"type": "pong", "server_time": time.time()}
        if message.id is not None:
            reply["id"] = message.id
        conn.send(reply)

    _handlers: dict[str, Callable[[Hub, Connection, ClientMessage],
                                  Awaitable[dict[str, Any] | None]]] = {
        "auth": _auth,
        "subscribe": _subscribe,
        "unsubscribe": _unsubscribe,
        "chat": _chat,
        "like": _like,
        "ping": _ping,
        "gift": _gift,
    }

    # -- timers -----------------------------------------------------------------------------

    async def _tick(self, interval_s: float, work: Callable[[], Awaitable[None]]) -> None:
        # Also ends by the flag: redis-py can swallow a cancellation that arrives mid-command.
        while not self.stopping:
            await asyncio.sleep(interval_s)
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("hub timer failed", extra={"work": work.__name__,
                                                       "error": repr(exc)})

    async def _heartbeat_pass(self) -> None:
        """Ping sockets silent for :data:`HEARTBEAT_S`; drop those that did not answer the
        last ping within :data:`PONG_TIMEOUT_S` (anything received counts as an answer)."""
        assert self._loop is not None
        now = self._loop.time()
        quiet_since = now - HEARTBEAT_S
        for conn in list(self.connections):
            if conn.pinged:
                if now - conn.pinged > PONG_TIMEOUT_S:
                    self.metrics.ws_closed.labels("heartbeat timeout").inc()
                    conn.abort()
            elif conn.heard < quiet_since:
                conn.ping(now)

    async def _likes_pass(self) -> None:
        """Tap storms become one ``likes`` event per room per node per second."""
        for room in list(self.rooms.values()):
            delta, room.likes_pending = room.likes_pending, 0
            if delta:
                await self.bus.publish_likes(room.id, delta, time.time())

    async def _presence_pass(self) -> None:
        """Viewer counts across nodes, sent to local sockets when they change."""
        now = time.monotonic()
        # Forget rate-limit buckets that have refilled: they hold no information.
        refill_s = CHAT_BURST / CHAT_PER_S
        for user_id, bucket in list(self._chat_buckets.items()):
            if now - bucket.updated_s > refill_s:
                del self._chat_buckets[user_id]
        for room in list(self.rooms.values()):
            if not room.connections and room.idle_since is not None \
                    and now - room.idle_since > IDLE_ROOM_S:
                await self._deactivate(room)
                continue
            total = await self.bus.set_viewers(room.id, self.node_id, len(room.connections),
                                               NODE_TTL_S)
            watching = await self.bus.total(room.id, "watching")
            if total == room.viewers and watching == room.watching and not room.joined:
                continue
            room.viewers, room.watching = total, watching
            frame = dumps_frame({"type": "presence", "room": room.id, "viewers": total,
                                 "watching": watching,
                                 "joined": room.joined[:MAX_JOINS_SAMPLED]})
            room.joined = []
            for conn in list(room.connections):
                if room.id not in conn.holding:
                    conn.write(frame)

    async def _deactivate(self, room: LocalRoom) -> None:
        self.rooms.pop(room.id, None)
        channel = self.bus.channel(room.id)
        self._subscribed.pop(channel, None)
        await self._pubsub.unsubscribe(channel)
        await self.bus.set_viewers(room.id, self.node_id, 0, NODE_TTL_S)

    # -- for the HTTP API -------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return {"connections": len(self.connections), "rooms": len(self.rooms)}


def connection_cap() -> int:
    """Websockets a node may hold by default: its open-file limit minus a reserve for
    PostgreSQL and Redis connections, HTTP clients and files."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - max(512, soft // 40))


def _user_ref(user: Account | None) -> dict[str, str] | None:
    return None if user is None else {"id": str(user.id), "username": user.username}
