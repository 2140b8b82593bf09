"""A small asyncio client for the websocket protocol (used by the tests and the load tests).

    async with await HubClient.connect("ws://127.0.0.1:8080/ws", token=token) as client:
        ack = await client.request({"type": "subscribe", "room": stream_id})
        await client.request({"type": "chat", "room": stream_id, "text": "hello"})
        event = await client.next_event("chat.message")

It keeps what a reconnecting client needs: the last ``(epoch, seq)`` seen per room, so
``subscribe`` can ask for what was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from livecore.wire import CURRENT_VERSION, SUBPROTOCOL_PREFIX


class HubError(Exception):
    """The server answered a request with an ``error`` message."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message['code']}: {message['message']}")
        self.code: str = message["code"]
        self.message = message


class HubClient:
    def __init__(self, connection: ClientConnection, hello: dict[str, Any]) -> None:
        self.connection = connection
        self.hello = hello
        self.positions: dict[str, tuple[str, int]] = {}
        self.received: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, url: str, *, token: str | None = None,
                      version: int = CURRENT_VERSION, **options: Any) -> HubClient:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        subprotocol = Subprotocol(f"{SUBPROTOCOL_PREFIX}{version}")
        connection = await connect(
            url, additional_headers=headers, subprotocols=[subprotocol],
            compression=None, max_size=2**20, **options,
        )
        hello = orjson.loads(await connection.recv())
        return cls(connection, hello)

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                message = orjson.loads(raw)
                self.received.append(message)
                if "seq" in message and "room" in message:
                    self.positions[message["room"]] = (message["epoch"], message["seq"])
                waiter = self._waiting.pop(message.get("id", ""), None)
                if waiter is not None and message["type"] in ("ack", "error", "pong"):
                    if not waiter.done():
                        waiter.set_result(message)
                    continue
                await self._events.put(message)
        except ConnectionClosed:
            pass
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("connection closed"))

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(orjson.dumps(message).decode())

    # A default timeout keeps a test or load run from hanging on a lost reply.
    async def request(
        self, message: dict[str, Any], timeout: float = 10  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """Send a message with a fresh id; return the ``ack`` result (or pong), raise on error."""
        message_id = f"r{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[message_id] = future
        await self.send({**message, "id": message_id})
        reply = await asyncio.wait_for(future, timeout)
        if reply["type"] == "error":
            raise HubError(reply)
        if reply["type"] == "ack":
            result: dict[str, Any] = reply["result"]
            if message["type"] == "subscribe":
                self.positions[result["room"]] = (result["epoch"], result["seq"])
            return result
        return reply

    async def subscribe(self, room: str, *, recover: bool = False) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "room": room}
        if recover and room in self.positions:
            epoch, seq = self.positions[room]
            message["since"] = {"epoch": epoch, "seq": seq}
        return await self.request(message)

    async def next_event(self, *types: str, timeout: float = 10,  # noqa: ASYNC109
                         where: Callable[[dict[str, Any]], bool] | None = None
                         ) -> dict[str, Any]:
        """The next server message of one of ``types`` (any type if none given)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self._events.get()
                if (not types or message["type"] in types) and (where is None or where(message)):
                    return message

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == kind]

    @property
    def close_code(self) -> int | None:
        return self.connection.close_code
