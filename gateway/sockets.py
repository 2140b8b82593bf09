"""The websocket layer under the hub: a callback protocol per socket, no task while idle.

aiohttp serves every HTTP request, but a websocket it has upgraded keeps aiohttp's whole
per-request machinery alive for as long as the socket is open: the parsed request, a reader
queue, the handler task and its coroutine, the parser. That is most of a connection's memory
and much of the CPU of a write. So a connection whose *first* request is ``GET /ws`` never
reaches aiohttp:

* :class:`FrontDoor` is the listening socket's protocol factory. Its :class:`Doorway` reads
  the request line of a new connection and either hands the transport to aiohttp (everything
  but ``/ws``; the bytes read so far are passed on untouched) or to :class:`Upgrade`.
* :class:`Upgrade` parses the handshake with the ``websockets`` library's sans-I/O
  :class:`~websockets.server.ServerProtocol`, checks it, asks the hub (an ``admit`` coroutine)
  whether to accept, and answers ``101`` or a JSON error in the API's format.
* :class:`ServerSocket` is then the transport's protocol: frames are parsed by a fresh
  sans-I/O protocol in the ``OPEN`` state (pings are answered, oversized frames closed with
  1009, close handshakes completed by the library); text messages are queued and served by a
  task that exists only while messages are waiting. Writes go straight to the transport.

A client that sends ``GET /ws`` on a connection it already used for other requests (some HTTP
clients pool connections) is upgraded by aiohttp's route and fed into the same
:class:`ServerSocket` from aiohttp's reader (:meth:`ServerSocket.attach_aiohttp`).

The header deadline (slowloris)
-------------------------------

A client that opens a connection and sends part of a request line or of its headers, then
stalls (or trickles a byte now and then), would hold a socket, a file descriptor and a little
memory for ever: the :class:`Doorway` waits for a line end without a timer, the websocket
handshake parser too, and aiohttp has no header read timeout of its own (its
``RequestHandler`` only closes a connection that is still idle when its keep-alive timeout, an
hour by default, runs out). A few hundred such clients exhaust a node. So every new connection
gets one :class:`HeaderDeadline` (``LIVECORE_HEADER_TIMEOUT_S``) when it is accepted: its first
request line and headers must be complete before it runs out, or the connection is answered
``408`` and closed. It is handed along with the connection: the doorway keeps it until the
request line is read; the websocket handshake cancels it once it has parsed the request;
aiohttp's side cancels it when aiohttp builds the request object, which it does as soon as the
headers are parsed (the ``request_factory`` hook of :class:`aiohttp.web.Server`, wrapped by
:class:`FrontDoor`: the one public place where aiohttp says "headers complete"). It is written
by hand because neither aiohttp nor asyncio offers one. Hence what it does not govern: a
request body (a slow but steady upload is not cut), and later requests on a kept-alive
connection (aiohttp's keep-alive timeout decides, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from livecore.errors import BadRequest, LivecoreError, TooManyRequests

log = logging.getLogger(__name__)
access_log = logging.getLogger("livecore.access")

WS_PATH = "/ws"
#: A request line longer than this is not ours: aiohttp answers it (414).
MAX_REQUEST_LINE = 8 * 1024
#: Messages a socket may have waiting to be served before it stops reading (TCP pushes back).
INBOX_LIMIT = 32
CLOSE_TIMEOUT_S = 5.0
PING_FRAME = Frame(Opcode.PING, b"lc").serialize(mask=False)

#: ``admit(request, response)`` decides on an upgrade: it returns the socket that will serve
#: the connection (after adding headers to the 101 ``response``) or raises a LivecoreError.
Admit = Callable[[Request, Response], Awaitable["ServerSocket"]]
#: Called with (status, seconds) for each handshake, for request metrics.
Observe = Callable[[int, float], None]


def _is_upgrade_line(line: bytes) -> bool:
    return line.startswith((b"GET /ws ", b"GET /ws?"))


_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Length: 0\r\n\r\n")


class HeaderDeadline:
    """Closes a connection whose first request line and headers are not complete in time
    (see the module's notes on slowloris)."""

    __slots__ = ("transport", "handle", "on_expiry")

    def __init__(self, transport: asyncio.Transport, seconds: float) -> None:
        self.transport = transport
        self.handle = asyncio.get_running_loop().call_later(seconds, self._expire)
        #: Called when it runs out (the front door forgets the connection).
        self.on_expiry: Callable[[], None] | None = None

    def cancel(self) -> None:
        """The headers are complete: the connection is the protocol's from now on."""
        self.handle.cancel()
        self.on_expiry = None

    def _expire(self) -> None:
        if self.on_expiry is not None:
            self.on_expiry()
            self.on_expiry = None
        transport = self.transport
        if transport.is_closing():
            return
        log.info("closing a connection that did not send its headers in time",
                 extra={"peer": repr(transport.get_extra_info("peername"))})
        transport.write(_REQUEST_TIMEOUT)
        transport.close()


class FrontDoor:
    """The protocol factory for the listening socket: aiohttp's server, with ``/ws`` aside.

    Everything else about the server (its connections, shutdown) is aiohttp's: attributes
    are looked up on the wrapped :class:`aiohttp.web.Server`.
    """

    def __init__(self, http_server: web.Server, admit: Admit, observe: Observe, *,
                 header_timeout_s: float) -> None:
        self.http = http_server
        self.admit = admit
        self.observe = observe
        self.header_timeout_s = header_timeout_s
        #: aiohttp protocols given a connection whose first request has no headers yet.
        self._awaiting_headers: dict[asyncio.BaseProtocol, HeaderDeadline] = {}
        make_request = http_server.request_factory

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                            task: Any) -> Any:
            deadline = self._awaiting_headers.pop(protocol, None)
            if deadline is not None:
                deadline.cancel()
            return make_request(message, payload, protocol, writer, task)

        # Read by each RequestHandler when it is created, so set before any connection.
        http_server.request_factory = request_factory

    def __call__(self) -> asyncio.Protocol:
        return Doorway(self)

    def hand_to_http(self, protocol: asyncio.BaseProtocol, deadline: HeaderDeadline) -> None:
        """``protocol`` (aiohttp's) serves the connection once its headers come in time."""
        self._awaiting_headers[protocol] = deadline

        def forget() -> None:
            self._awaiting_headers.pop(protocol, None)

        deadline.on_expiry = forget

    def __getattr__(self, name: str) -> Any:
        return getattr(self.http, name)


class Doorway(asyncio.Protocol):
    """A new connection until its first request line is read."""

    __slots__ = ("door", "transport", "buffer", "deadline")

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.deadline: HeaderDeadline | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.deadline = HeaderDeadline(transport, self.door.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n")
        if end < 0 and len(self.buffer) < MAX_REQUEST_LINE:
            return
        transport, buffered, deadline = self.transport, self.buffer, self.deadline
        assert transport is not None and deadline is not None
        self.transport, self.buffer, self.deadline = None, b"", None
        protocol: asyncio.Protocol
        if end >= 0 and _is_upgrade_line(buffered[:end]):
            protocol = Upgrade(self.door, deadline)
        else:
            protocol = self.door.http()
            self.door.hand_to_http(protocol, deadline)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(buffered)

    def eof_received(self) -> bool | None:
        return None  # closed before a request line: nothing to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


class Upgrade(asyncio.Protocol):
    """A ``GET /ws`` request being read, checked and admitted (or refused)."""

    __slots__ = ("door", "deadline", "transport", "handshake", "started", "task")

    def __init__(self, door: FrontDoor, deadline: HeaderDeadline) -> None:
        self.door = door
        self.deadline = deadline
        self.transport: asyncio.Transport | None = None
        self.handshake = ServerProtocol(max_size=None)
        self.started = time.perf_counter()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return  # a client that writes before the answer: ignored until it has it
        self.handshake.receive_data(data)
        for event in self.handshake.events_received():
            if isinstance(event, Request) and self.transport is not None:
                self.deadline.cancel()  # the headers are in
                self.transport.pause_reading()
                self.task = asyncio.get_running_loop().create_task(self._answer(event))
                return
        self._flush_handshake()  # a request it could not parse: its own 4xx, then EOF

    def _flush_handshake(self) -> None:
        if self.transport is None:
            return
        for chunk in self.handshake.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()
                self.door.observe(400, time.perf_counter() - self.started)
                return

    async def _answer(self, request: Request) -> None:
        transport = self.transport
        assert transport is not None
        request_id = (request.headers.get("X-Request-Id") or "")[:64] or None
        try:
            response = self.handshake.accept(request)
            if response.status_code != 101:
                raise BadRequest("This is a websocket endpoint: send a websocket upgrade "
                                 f"request ({response.reason_phrase}).", code="not_a_websocket")
            socket = await self.door.admit(request, response)
        except LivecoreError as exc:
            self._refuse(exc, request_id)
            return
        except Exception:
            log.exception("websocket upgrade failed")
            self._refuse(LivecoreError("Internal server error."), request_id)
            return
        finally:
            self.task = None
        if transport.is_closing():
            socket.connection_lost(None)
            return
        if request_id is not None:
            response.headers["X-Request-Id"] = request_id
        self._log(101, request_id)
        transport.write(response.serialize())
        leftover = bytes(self.handshake.reader.buffer)
        self.handshake = ServerProtocol(max_size=None)  # drop the parsed request now
        transport.set_protocol(socket)
        socket.connection_made(transport)
        if leftover:
            socket.data_received(leftover)
        transport.resume_reading()

    def _refuse(self, error: LivecoreError, request_id: str | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        headers = Headers()
        headers["Content-Type"] = "application/json"
        headers["Connection"] = "close"
        headers["Cache-Control"] = "no-store"
        if request_id is not None:
            headers["X-Request-Id"] = request_id
        if isinstance(error, TooManyRequests):
            headers["Retry-After"] = str(error.retry_after_s)
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="livecore"'
        body = orjson.dumps(error.to_dict())
        headers["Content-Length"] = str(len(body))
        response = Response(error.status, http.HTTPStatus(error.status).phrase, headers, body)
        transport.write(response.serialize())
        transport.close()
        self._log(error.status, request_id)

    def _log(self, status: int, request_id: str | None) -> None:
        elapsed = time.perf_counter() - self.started
        self.door.observe(status, elapsed)
        access_log.info("request", extra={"request_id": request_id, "method": "GET",
                                          "route": WS_PATH, "path": WS_PATH, "status": status,
                                          "duration_ms": round(elapsed * 1000, 2)})

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.deadline.cancel()


class ServerSocket(asyncio.Protocol):
    """An open server websocket, driven by the event loop's callbacks.

    Subclasses implement :meth:`on_text` (one message at a time, in order) and
    :meth:`on_closed` (once, when the connection is gone).
    """

    __slots__ = ("transport", "frames", "closing", "close_code", "close_reason", "heard",
                 "pinged", "_parts", "_inbox", "_serving", "_abort", "_aiohttp", "_gone")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames: ServerProtocol | None = None
        self.closing = False
        self.close_code: int | None = None
        self.close_reason = ""
        #: Loop time anything was last heard from the client, and of an unanswered ping.
        self.heard = 0.0
        self.pinged = 0.0
        self._parts: list[bytes] | None = None
        self._inbox: deque[str] | None = None
        self._serving = False
        self._abort: asyncio.TimerHandle | None = None
        self._aiohttp: web.WebSocketResponse | None = None
        self._gone = False

    @property
    def upgraded_by_aiohttp(self) -> bool:
        """True for a socket upgraded on a connection that served other requests first."""
        return self._aiohttp is not None

    # -- to implement -----------------------------------------------------------------------

    async def on_text(self, text: str) -> None:
        raise NotImplementedError

    def on_closed(self) -> None:
        raise NotImplementedError

    def on_open(self) -> None:
        """The socket is open (the 101 is written): greet the client, or close it."""

    def on_close_sent(self, reason: str) -> None:
        """The server is closing this socket (``reason`` for metrics)."""

    def on_closing(self) -> None:
        """The socket takes no more messages and gets no more writes (whoever closes it);
        :meth:`on_closed` follows when the connection is gone."""

    # -- the transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.frames = ServerProtocol(state=State.OPEN, max_size=self.max_message_bytes())
        self.heard = asyncio.get_running_loop().time()
        self.on_open()

    def max_message_bytes(self) -> int:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        frames = self.frames
        if frames is None:
            return
        self.heard = asyncio.get_running_loop().time()
        self.pinged = 0.0
        frames.receive_data(data)
        for frame in frames.events_received():
            if isinstance(frame, Frame):
                self._frame(frame)
        self._send_pending()

    def eof_received(self) -> bool | None:
        if self.frames is not None:
            self.frames.receive_eof()
            self._send_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._gone:
            return
        self._gone = True
        if not self.closing:
            self.closing = True
            self.on_closing()
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        if self._inbox is not None:
            self._inbox.clear()
        self.on_closed()

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT and self._parts is not None:
            if frame.fin and self._parts is None:
                self._text(frame.data)
            else:
                parts = self._parts if self._parts is not None else []
                parts.append(bytes(frame.data))
                self._parts = None if frame.fin else parts
                if frame.fin:
                    self._text(b"".join(parts))
        elif opcode is Opcode.BINARY or opcode is Opcode.CONT:
            self.close(1003, "binary frames are not supported")

    def _text(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            return
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            self.close(1007, "invalid UTF-8")
            return
        self.receive_text(text)

    def receive_text(self, text: str) -> None:
        """Queue a message; a task serves the queue while it is not empty."""
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        inbox.append(text)
        if len(inbox) >= INBOX_LIMIT and self.transport is not None and self._aiohttp is None:
            self.transport.pause_reading()
        if not self._serving:
            self._serving = True
            task = asyncio.get_running_loop().create_task(self._serve())
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _serve(self) -> None:
        inbox = self._inbox
        assert inbox is not None
        try:
            while inbox and not self.closing:
                await self.on_text(inbox.popleft())
                if len(inbox) <= INBOX_LIMIT // 2:
                    self._resume()
        finally:
            self._serving = False
            if not inbox:
                self._inbox = None  # an idle socket holds no queue
            self._resume()  # closing: the client's close frame must still be read

    def _resume(self) -> None:
        transport = self.transport
        if transport is not None and self._aiohttp is None and not transport.is_closing() \
                and not transport.is_reading():
            transport.resume_reading()

    def _send_pending(self) -> None:
        frames, transport = self.frames, self.transport
        if frames is None or transport is None:
            return
        if not self.closing and frames.state is not State.OPEN:
            # The client closed, or a bad frame failed the connection: no more messages.
            self.closing = True
            self.on_closing()
            sent = frames.close_sent
            if sent is not None and frames.close_rcvd is None:
                self.close_code, self.close_reason = sent.code, sent.reason
                self.on_close_sent(_reason_name(sent.code))
        for chunk in frames.data_to_send():
            if chunk:
                transport.write(chunk)
            else:  # the close handshake is done (or failed): the server closes TCP
                transport.close()
                return
        if self.closing:
            self._expect_close()

    # -- for the hub ------------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake with ``code``; the connection drops if the client does
        not answer within :data:`CLOSE_TIMEOUT_S`."""
        if self.closing:
            return
        self.closing = True
        self.close_code, self.close_reason = code, reason
        self.on_close_sent(reason)
        self.on_closing()
        if self._aiohttp is not None:
            task = asyncio.get_running_loop().create_task(
                self._aiohttp.close(code=code, message=reason.encode()))
            _background.add(task)
            task.add_done_callback(_background.discard)
            return
        frames = self.frames
        if frames is None or frames.state is not State.OPEN:
            return
        frames.send_close(code, reason)
        self._send_pending()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _expect_close(self) -> None:
        if self._abort is None and not self._gone:
            self._abort = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def ping(self, now: float) -> None:
        """A heartbeat ping (answered by any websocket library with a pong)."""
        if self._aiohttp is None and self.transport is not None and not self.closing:
            self.pinged = now
            self.transport.write(PING_FRAME)

    # -- a socket aiohttp upgraded ----------------------------------------------------------

    async def attach_aiohttp(self, ws: web.WebSocketResponse,
                             transport: asyncio.Transport) -> None:
        """Serve a socket that aiohttp upgraded: aiohttp reads the frames (and pings), this
        object does the rest, as for any other socket. Returns when the socket closes."""
        self._aiohttp = ws
        self.transport = transport
        try:
            self.on_open()
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    self.receive_text(message.data)
                elif message.type is WSMsgType.BINARY:
                    self.close(1003, "binary frames are not supported")
                if self.closing:
                    break
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=self.close_code or 1000,
                                   message=self.close_reason.encode())
        finally:
            self.connection_lost(None)


_background: set[asyncio.Task[Any]] = set()


def _reason_name(code: int) -> str:
    return {1003: "unsupported data", 1007: "invalid data", 1009: "message too big"}.get(
        code, f"code {code}")
