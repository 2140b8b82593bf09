"""Websocket fan-out: room events to many subscribers, against a bare aiohttp baseline.

    python -m loadtests.fanout [--rooms 1] [--subscribers 1000] [--publishers 4] [--seconds 10]
                               [--rate 20] [--mode redis|chat] [--workers W] [--idle 20]
                               [--history 0] [--drain 30] [--skip-baseline]

Runs `livecore serve` (against DATABASE_URL / REDIS_URL, or embedded servers in a temporary
directory), creates ``--rooms`` streams and ``--publishers`` accounts through the HTTP API,
opens ``--subscribers`` websocket connections spread evenly over the rooms (each one
``subscribe``s and waits for its ``ack``), lets them sit idle for ``--idle`` seconds, then
publishes room events at ``--rate`` events per second (all rooms together, round robin) for
``--seconds`` and counts what every subscriber receives. Then the same against a baseline: a
plain aiohttp server that keeps a set of sockets per room, reads the same kind of Redis pub/sub
channel and, for each event, awaits ``ws.send_str`` on each of its sockets in turn.

Event source (``--mode``):

* ``redis`` (the default): events go straight into Redis through the server's own Lua script
  (:meth:`gateway.roombus.RoomBus.publish`), so the run measures fan-out and nothing else; the
  baseline gets the same script under its own key prefix.
* ``chat``: ``--publishers`` logged-in accounts send ``chat`` messages over websockets of their
  own; this adds the chat path (validation, rate limits, moderation) to what is measured. The
  server allows a user one message per second, so the rate is capped at one message per
  publisher per second. The baseline publishes what it is sent with a plain PUBLISH.

Every event carries its send time (``time.time()``, as ``"text":"@<seconds> ..."``); a
subscriber's delivery latency is its receive time minus that. Reported per server: subscribes
per second while connecting, server memory per idle connection (RSS after connecting and idling
minus before, over the connections), idle CPU (over ``--idle``: 20 s covers one heartbeat per
connection), deliveries per second, latency percentiles, and the server's CPU seconds per
million deliveries (``psutil`` times of the server process: neither Redis nor the load generator
is counted; both are shown, and so is the CPU the machine's other processes took meanwhile).
For Livecore it also prints what its own /metrics say: the ``livecore_fanout_lag_seconds``
histogram (publication to flush), which tells server-side delay from client-side delay, the
events coalesced per socket write (``LIVECORE_WS_FLUSH_MS``; set it in the environment to
compare intervals), and the full garbage collections with their pauses. With
``LIVECORE_PROCESSES`` > 1 in the environment, the server's CPU and memory are those of all its
serving processes together; /metrics then answers from one of them (a sample). ``--history N``
publishes N events into each room before anyone subscribes, as a busy room has a history.

The load generator is built to cost the machine as little as possible: subscriber connections
are bare :class:`asyncio.Protocol` objects that parse frames in place (no client-library object
per connection), spread over ``--workers`` processes, each bound to source addresses of its own
in 127.0.0.0/8 (28k ephemeral ports per address). ``RLIMIT_NOFILE`` is raised to the hard limit
here, and the servers inherit it. Everything is bounded: connecting has a deadline
(``--connect-budget``), publishing stops after ``--seconds``, waiting for the last deliveries
after ``--drain`` seconds at most.

Do not point DATABASE_URL at a database you care about: the run migrates it and adds users.
The Redis keys it writes carry a prefix of their own; with REDIS_URL they are deleted at the
end, embedded servers are deleted with their temporary directory.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import math
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families
from websockets.frames import Close, Opcode

from gateway.embedded import EmbeddedRedis
from gateway.roombus import RoomBus
from livecore.chat import CHAT_PER_S
from loadtests.common import (
    Row,
    UpgradingSocket,
    comparison,
    console,
    cpu_seconds,
    free_port,
    handshake,
    masked,
    next_frame,
    percentile,
    progress,
    server_cpu,
    serving_pids,
)
from loadtests.common import server_process as _server_process

#: Connections per source address: below the 28k ephemeral ports of the default range.
PER_SOURCE_ADDRESS = 20_000
#: File descriptors a process keeps for itself beyond its sockets.
FD_RESERVE = 64
#: Subscribes in flight, all workers together. More overflows the server's listen backlog
#: (128), and past 100 the server's Redis pool (redis-py's default max_connections) refuses
#: commands: such subscribes fail with ``service_unavailable``.
CONNECT_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 15.0
#: A worker gives up connecting after this many failures in a row (the server is full).
MAX_CONSECUTIVE_FAILURES = 200
#: Latencies a worker sends back at most (evenly thinned beyond that).
MAX_LATENCIES_PER_WORKER = 1_500_000
PUBLISH_IN_FLIGHT = 64

#: Events are recognised by their first key (the Lua script puts ``seq`` first) and carry
#: their send time at the start of the chat text.
EVENT_PREFIX = b'{"seq":'
MARKER = b'"text":"@'
ACK_PREFIX = b'{"type":"ack"'
ERROR_PREFIX = b'{"type":"error"'

BASELINE_SERVER = """
import asyncio
import sys
import orjson
import redis.asyncio as aioredis
from aiohttp import WSMsgType, web

port, redis_url, prefix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rooms = {}
state = {}

def channel(room):
    return f"{prefix}room:{{{room}}}"

async def fan_out():
    async for message in state["pubsub"].listen():
        if message["type"] != "message":
            continue
        name = message["channel"].decode()
        text = message["data"].decode()
        for ws in list(rooms.get(name[name.index("{") + 1 : name.index("}")], ())):
            try:
                await ws.send_str(text)
            except ConnectionError:
                pass

async def handle(request):
    ws = web.WebSocketResponse(protocols=["livecore.v1"], heartbeat=20.0, compress=False,
                               max_msg_size=8192)
    await ws.prepare(request)
    await ws.send_str(orjson.dumps({"type": "hello", "v": 1}).decode())
    joined = []
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            body = orjson.loads(msg.data)
            room = body.get("room")
            if body.get("type") == "subscribe":
                if room not in rooms:
                    rooms[room] = set()
                    await state["pubsub"].subscribe(channel(room))
                rooms[room].add(ws)
                joined.append(room)
            elif body.get("type") == "chat":
                event = {"seq": 0, "type": "chat.message", "room": room, "data": {
                    "user": {"id": "-", "username": "-"}, "text": body["text"]}}
                await state["redis"].publish(channel(room), orjson.dumps(event))
            reply = {"type": "ack", "result": {"room": room}}
            if "id" in body:
                reply["id"] = body["id"]
            await ws.send_str(orjson.dumps(reply).decode())
    finally:
        for room in joined:
            rooms[room].discard(ws)
    return ws

async def health(request):
    return web.Response(text="ok")

async def start(app):
    state["redis"] = aioredis.from_url(redis_url)
    state["pubsub"] = state["redis"].pubsub()
    await state["pubsub"].subscribe(f"{prefix}baseline")
    state["task"] = asyncio.create_task(fan_out())

app = web.Application()
app.router.add_get("/ws", handle)
app.router.add_get("/healthz", health)
app.on_startup.append(start)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


def raise_fd_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- the subscriber side: one lean protocol object per connection ------------------------------


class Tally:
    """What one process's sockets received."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.deliveries = 0
        self.latencies = array.array("d")
        self.errors = 0
        self.closed = 0
        self.first_receive = 0.0
        self.last_receive = 0.0


class LeanSocket(UpgradingSocket):
    """A websocket client connection that subscribes to one room and then only counts.

    It sends the upgrade request, then a ``subscribe``; ``ready`` resolves on the ``ack``.
    Frames are parsed in place in the receive buffer: room events are counted and their
    latency recorded, pings answered, anything else ignored (errors counted).
    """

    __slots__ = ("tally", "subscribe", "ready", "acks", "leaving")

    def __init__(self, tally: Tally, request: bytes, subscribe: bytes,
                 ready: asyncio.Future[None]) -> None:
        super().__init__(request)
        self.tally = tally
        self.subscribe = subscribe
        self.ready = ready
        self.acks = 0
        self.leaving = False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the ack: {exc!r}"))
        elif not self.leaving:
            self.tally.closed += 1

    def send(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def leave(self) -> None:
        self.leaving = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(masked(Opcode.CLOSE, Close(1000, "").serialize()))
            self.transport.close()

    def opened(self) -> None:
        assert self.transport is not None
        self.transport.write(self.subscribe)

    def refused(self, status_line: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(status_line))

    def received(self, buf: bytes, pos: int) -> bytes:
        tally = self.tally
        size = len(buf)
        now = 0.0
        while (frame := next_frame(buf, pos)) is not None:
            opcode, start, end = frame
            if opcode == 1:
                if buf.startswith(EVENT_PREFIX, start):
                    tally.deliveries += 1
                    at = buf.find(MARKER, start, end)
                    if at >= 0:
                        if not now:
                            now = time.time()
                            if not tally.first_receive:
                                tally.first_receive = now
                            tally.last_receive = now
                        at += len(MARKER)
                        tally.latencies.append(now - float(buf[at : buf.find(b" ", at, end)]))
                elif buf.startswith(ACK_PREFIX, start):
                    if self.ready.done():
                        self.acks += 1
                    else:
                        self.ready.set_result(None)
                elif buf.startswith(ERROR_PREFIX, start):
                    tally.errors += 1
                    if not self.ready.done():
                        self.ready.set_exception(ConnectionError(buf[start:end].decode()))
            elif opcode == 9:
                self.send(masked(Opcode.PONG, buf[start:end]))
            elif opcode == 8:
                self.leave()
            pos = end
        return buf[pos:] if pos < size else b""


async def open_socket(tally: Tally, host: str, port: int, source: str, room: str,
                      token: str | None) -> LeanSocket:
    """Connect, upgrade, subscribe to ``room``; returns once the ``ack`` arrived."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    subscribe = masked(Opcode.TEXT, orjson.dumps({"type": "subscribe", "room": room, "id": "s"}))
    sock: LeanSocket | None = None
    try:
        _transport, sock = await loop.create_connection(
            lambda: LeanSocket(tally, handshake(port, token), subscribe, ready),
            host, port, local_addr=(source, 0),
        )
        await ready
        return sock
    except BaseException:
        if sock is not None and sock.transport is not None:
            sock.leaving = True
            sock.transport.abort()
        raise


@dataclass
class ConnectOrder:
    host: str
    port: int
    rooms: list[str]  # one per connection
    sources: list[str]  # one per connection
    budget_s: float
    concurrency: int
    token: str | None = None


async def open_many(tally: Tally, order: ConnectOrder, sockets: list[LeanSocket],
                    per_room: Counter[str]) -> tuple[int, str]:
    """Open the ordered connections (bounded concurrency, a deadline); (failures, first error)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + order.budget_s
    todo = iter(zip(order.rooms, order.sources, strict=True))
    failures = consecutive = 0
    first_error = ""

    async def opener() -> None:
        nonlocal failures, consecutive, first_error
        for room, source in todo:
            left = deadline - loop.time()
            if left <= 0 or consecutive >= MAX_CONSECUTIVE_FAILURES:
                failures += 1
                continue
            try:
                async with asyncio.timeout(min(CONNECT_TIMEOUT_S, left)):
                    sock = await open_socket(tally, order.host, order.port, source, room,
                                             order.token)
            except Exception as exc:  # refused, reset, timed out, answered with an error
                failures += 1
                consecutive += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            consecutive = 0
            sockets.append(sock)
            per_room[room] += 1

    await asyncio.gather(*(opener() for _ in range(order.concurrency)))
    return failures, first_error


def worker_main(pipe: Pipe, connected: Any, delivered: Any) -> None:
    """A load-generator process: takes orders over ``pipe``, counts into the shared values."""
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt, EOFError):
        asyncio.run(_worker(pipe, connected, delivered))


async def _worker(pipe: Pipe, connected: Any, delivered: Any) -> None:
    tally = Tally()
    sockets: list[LeanSocket] = []

    async def show() -> None:
        while True:
            connected.value = len(sockets)
            delivered.value = tally.deliveries
            await asyncio.sleep(0.2)

    shower = asyncio.create_task(show())
    try:
        while True:
            command, argument = await asyncio.to_thread(pipe.recv)
            if command == "connect":
                per_room: Counter[str] = Counter()
                failures, error = await open_many(tally, argument, sockets, per_room)
                pipe.send({"per_room": dict(per_room), "failures": failures, "error": error})
            elif command == "ping":
                pipe.send(None)
            elif command == "reset":
                tally.reset()
                pipe.send(None)
            elif command == "collect":
                latencies = tally.latencies
                if len(latencies) > MAX_LATENCIES_PER_WORKER:
                    step = math.ceil(len(latencies) / MAX_LATENCIES_PER_WORKER)
                    latencies = latencies[::step]
                pipe.send({"deliveries": tally.deliveries, "errors": tally.errors,
                           "closed": tally.closed, "first": tally.first_receive,
                           "last": tally.last_receive, "latencies": latencies.tobytes()})
            elif command == "close":
                for sock in sockets:
                    sock.leave()
                await asyncio.sleep(0.5)
                pipe.send(None)
                return
    finally:
        shower.cancel()


@dataclass
class Worker:
    process: BaseProcess
    pipe: Pipe
    connected: Any
    delivered: Any

    def ask(self, command: str, argument: Any = None, timeout: float = 30) -> Any:
        self.pipe.send((command, argument))
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"worker {self.process.pid} did not answer {command!r}")
        return self.pipe.recv()


@contextlib.contextmanager
def workers(count: int) -> Iterator[list[Worker]]:
    context = multiprocessing.get_context("spawn")
    started: list[Worker] = []
    try:
        for _ in range(count):
            ours, theirs = context.Pipe()
            connected, delivered = context.Value("q", 0, lock=False), context.Value("q", 0,
                                                                                    lock=False)
            process = context.Process(target=worker_main, args=(theirs, connected, delivered),
                                      daemon=True)
            process.start()
            started.append(Worker(process, ours, connected, delivered))
        yield started
    finally:
        for worker in started:
            with contextlib.suppress(Exception):
                worker.ask("close", timeout=10)
        for worker in started:
            worker.process.join(5)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(5)


# -- the run ------------------------------------------------------------------------------


@dataclass
class Setup:
    rooms: list[str]
    users: list[dict[str, str]]  # publishers: id, username, token


@dataclass
class Figures:
    name: str
    subscribers: int = 0
    failures: int = 0
    connect_s: float = 0.0
    rss_before: int = 0
    rss_after: int = 0
    published: int = 0
    expected: int = 0
    deliveries: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    idle_cpu_s: float = 0.0
    idle_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    redis_cpu_s: float | None = None
    other_cpu_s: float = 0.0
    errors: int = 0
    closed: int = 0
    note: str = ""
    server_lag: str = ""

    @property
    def kb_per_connection(self) -> float:
        return (self.rss_after - self.rss_before) / self.subscribers / 1024 if self.subscribers \
            else 0.0

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(self.latencies_s, fraction) * 1000

    @property
    def cpu_per_million(self) -> float:
        return self.server_cpu_s / self.deliveries * 1e6 if self.deliveries else 0.0


async def seed(base: str, rooms: int, publishers: int) -> Setup:
    """``rooms`` creators with a stream each, and ``publishers`` logged-in accounts."""
    tag = f"fo{os.getpid()}x{uuid.uuid4().hex[:4]}"
    limit = asyncio.Semaphore(4)
    async with aiohttp.ClientSession(base) as http:

        async def account(name: str) -> dict[str, str]:
            body = {"username": name, "password": "load test password",
                    "birthdate": "1990-01-01"}
            async with limit:
                async with http.post("/api/v1/auth/register", json=body) as response:
                    if response.status != 201:
                        sys.exit(f"register failed: {response.status} {await response.text()}")
                    user = await response.json()
                login = {"username": name, "password": "load test password"}
                async with http.post("/api/v1/auth/login", json=login) as response:
                    token = (await response.json())["token"]
            return {"id": user["id"], "username": name, "token": token}

        async def stream(index: int) -> str:
            creator = await account(f"{tag}c{index}")
            headers = {"Authorization": f"Bearer {creator['token']}"}
            async with limit:
                await (await http.post("/api/v1/me/creator", headers=headers)).read()
                async with http.post("/api/v1/streams", headers=headers,
                                     json={"title": f"Fan-out {index}"}) as response:
                    return str((await response.json())["id"])

        with progress() as bar:
            task = bar.add_task("   seeding", total=rooms + publishers)

            async def counted(coroutine: Any) -> Any:
                result = await coroutine
                bar.advance(task)
                return result

            room_ids = await asyncio.gather(*(counted(stream(i)) for i in range(rooms)))
            users = await asyncio.gather(*(counted(account(f"{tag}p{i}"))
                                           for i in range(publishers)))
    return Setup(list(room_ids), list(users))


def source_address(phase: int, worker: int, index: int) -> str:
    """A source address of its own per phase and worker (so no port is reused while its
    predecessor sits in TIME_WAIT), a new one every 20k connections."""
    return f"127.{10 + phase}.{1 + worker}.{1 + index // PER_SOURCE_ADDRESS}"


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idling, since boot."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def redis_server_pid(redis_url: str) -> int | None:
    """The pid of the embedded Redis (a unix socket in our data directory), else None."""
    if not redis_url.startswith("unix://"):
        return None
    with contextlib.suppress(OSError, ValueError):
        pidfile = Path(redis_url[len("unix://"):]).parent / "redis.pid"
        return int(pidfile.read_text().strip())
    return None


def rss(pid: int) -> int:
    return sum(int(psutil.Process(p).memory_info().rss) for p in serving_pids(pid))


def connect_all(fleet: list[Worker], port: int, setup: Setup, subscribers: int, phase: int,
                budget_s: float, figures: Figures) -> Counter[str]:
    """Spread the subscribers over the rooms (round robin) and the workers; returns how many
    each room got."""
    orders: list[ConnectOrder] = []
    for w in range(len(fleet)):
        mine = range(w, subscribers, len(fleet))
        orders.append(ConnectOrder(
            "127.0.0.1", port, [setup.rooms[i % len(setup.rooms)] for i in mine],
            [source_address(phase, w, k) for k in range(len(mine))], budget_s,
            max(4, CONNECT_CONCURRENCY // len(fleet)),
        ))
    started = time.perf_counter()
    for worker, order in zip(fleet, orders, strict=True):
        worker.pipe.send(("connect", order))
    answers: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + budget_s + CONNECT_TIMEOUT_S + 30
    with progress() as bar:
        task = bar.add_task(f"{figures.name:>10} connecting", total=subscribers)
        while len(answers) < len(fleet) and time.monotonic() < deadline:
            for index, worker in enumerate(fleet):
                if index not in answers and worker.pipe.poll(0.1):
                    answers[index] = worker.pipe.recv()
            bar.update(task, completed=sum(w.connected.value for w in fleet))
        bar.update(task, completed=sum(w.connected.value for w in fleet))
    if len(answers) < len(fleet):
        sys.exit("a load-generator process did not finish connecting")
    figures.connect_s = time.perf_counter() - started
    per_room: Counter[str] = Counter()
    for answer in answers.values():
        per_room.update(answer["per_room"])
        figures.failures += answer["failures"]
        if answer["error"] and not figures.note:
            figures.note = answer["error"]
    figures.subscribers = sum(per_room.values())
    return per_room


async def paced(rate: float, seconds: float) -> AsyncIterator[int]:
    """0, 1, 2, ... on schedule at ``rate`` per second for ``seconds`` (at least one)."""
    started = time.perf_counter()
    for sent in range(max(1, round(rate * seconds))):
        wait = started + sent / rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        yield sent


async def publish_redis(bus: RoomBus, setup: Setup, rate: float, seconds: float,
                        published: Counter[str]) -> int:
    """Publish at ``rate`` (round robin over the rooms) for ``seconds``; returns errors."""
    errors = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(room: str, user: dict[str, str]) -> None:
        nonlocal errors
        now = time.time()
        data = {"message_id": str(uuid.uuid4()),
                "user": {"id": user["id"], "username": user["username"]},
                "text": f"@{now:.6f} fan-out load test"}
        try:
            await bus.publish(room, "chat.message", data, now)
            published[room] += 1
        except Exception:
            errors += 1

    started = time.perf_counter()
    async for sent in paced(rate, seconds):
        if time.perf_counter() - started > seconds + 5:
            break  # far behind schedule: stop rather than run on
        if len(in_flight) >= PUBLISH_IN_FLIGHT:
            _done, in_flight = await asyncio.wait(in_flight,
                                                  return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(one(setup.rooms[sent % len(setup.rooms)],
                                       setup.users[sent % len(setup.users)]))
        in_flight.add(task)
    await asyncio.sleep(started + seconds - time.perf_counter())  # a low rate still lasts
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    return errors


async def fill_history(redis_url: str, prefix: str, setup: Setup, events: int) -> None:
    """Publish ``events`` per room before anyone subscribes, as a busy room has a history."""
    redis = aioredis.from_url(redis_url)
    try:
        bus = RoomBus(redis, prefix)
        for start in range(0, events * len(setup.rooms), 50):
            batch = range(start, min(start + 50, events * len(setup.rooms)))
            await asyncio.gather(*(bus.publish(
                setup.rooms[i % len(setup.rooms)], "chat.message",
                {"message_id": str(uuid.uuid4()),
                 "user": {"id": setup.users[0]["id"], "username": setup.users[0]["username"]},
                 "text": f"history {i} of the fan-out load test"}, time.time()) for i in batch))
    finally:
        await redis.aclose()


async def open_publishers(port: int, setup: Setup, tally: Tally,
                          phase: int) -> list[tuple[LeanSocket, str]]:
    sockets = []
    for index, user in enumerate(setup.users):
        room = setup.rooms[index % len(setup.rooms)]
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            sock = await open_socket(tally, "127.0.0.1", port, f"127.{10 + phase}.250.1", room,
                                     user["token"])
        sockets.append((sock, room))
    return sockets


async def publish_chat(publishers: list[tuple[LeanSocket, str]], rate: float,
                       seconds: float) -> None:
    """Each publisher sends its share of ``rate`` as chat messages, in turn."""
    started = time.perf_counter()
    async for sent in paced(rate, seconds):
        sock, room = publishers[sent % len(publishers)]
        message = {"type": "chat", "room": room, "id": "c",
                   "text": f"@{time.time():.6f} fan-out load test"}
        sock.send(masked(Opcode.TEXT, orjson.dumps(message)))
    await asyncio.sleep(max(1.0, started + seconds - time.perf_counter()))  # the last acks


def delivered(fleet: list[Worker]) -> int:
    return sum(w.delivered.value for w in fleet)


LAG_METRIC = "livecore_fanout_lag_seconds"
GC_METRIC = "livecore_gc_full_pause_seconds"


async def server_metrics(port: int) -> dict[tuple[str, str], float]:
    """The server's /metrics samples as {(name, le label): value}; empty for a server without
    them (the baseline)."""
    samples: dict[tuple[str, str], float] = {}
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{port}/metrics",
                         timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status != 200:
                return samples
            text = await response.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, sample.labels.get("le", ""))] = sample.value
    return samples


def _buckets(samples: dict[tuple[str, str], float], metric: str) -> dict[float, float]:
    return {math.inf if le == "+Inf" else float(le): value
            for (name, le), value in samples.items() if name == metric + "_bucket"}


def _upper(counts: dict[float, float], fraction: float) -> str:
    total = counts.get(math.inf, 0.0)
    bound = next(b for b, c in sorted(counts.items()) if c >= fraction * total)
    return "> the largest bucket" if bound == math.inf else f"<= {bound * 1000:g} ms"


def server_summary(before: dict[tuple[str, str], float],
                   after: dict[tuple[str, str], float]) -> str:
    """What the hub's own metrics say about the run: flush lag (publication to flush, p50/p99/
    max bucket), events coalesced per socket write, full garbage collections."""
    def delta(name: str, le: str = "") -> float:
        return after.get((name, le), 0.0) - before.get((name, le), 0.0)

    lag_before, lag_after = _buckets(before, LAG_METRIC), _buckets(after, LAG_METRIC)
    counts = {bound: lag_after[bound] - lag_before.get(bound, 0.0) for bound in lag_after}
    total = counts.get(math.inf, 0.0)
    if not total:
        return ""
    over = total - counts.get(0.1, total)
    parts = [f"{total:,.0f} flushes; lag from publication to flush p50 {_upper(counts, 0.5)},"
             f" p99 {_upper(counts, 0.99)}, max {_upper(counts, 1.0)};"
             f" {over:,.0f} flushes over 100 ms"]
    writes = delta("livecore_ws_writes_total")
    if writes:
        parts.append(f"{delta('livecore_ws_deliveries_total') / writes:.2f} events per"
                     " socket write")
    collections = delta(GC_METRIC + "_count")
    if collections:
        gc_before, gc_after = _buckets(before, GC_METRIC), _buckets(after, GC_METRIC)
        gc_counts = {b: gc_after[b] - gc_before.get(b, 0.0) for b in gc_after}
        parts.append(f"{collections:,.0f} full collections, {delta(GC_METRIC + '_sum'):.2f} s"
                     f" in all, longest {_upper(gc_counts, 1.0)}")
    else:
        parts.append("no full garbage collection")
    return "; ".join(parts)


async def wait_for_deliveries(fleet: list[Worker], expected: int, limit_s: float,
                              on_tick: Any = None) -> None:
    """Until ``expected`` deliveries arrived, nothing arrived for 3 s, or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    last, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_count = delivered(fleet)
        if on_tick is not None:
            on_tick(now_count)
        if now_count >= expected:
            return
        if now_count != last:
            last, last_change = now_count, time.monotonic()
        elif time.monotonic() - last_change > 3.0:
            return
        await asyncio.sleep(0.25)


async def measure(name: str, fleet: list[Worker], pid: int, port: int, setup: Setup,
                  per_room: Counter[str], args: argparse.Namespace, redis_url: str,
                  prefix: str, phase: int, figures: Figures) -> None:
    rate = args.rate
    redis_pid = redis_server_pid(redis_url)
    redis = aioredis.from_url(redis_url)
    bus = RoomBus(redis, prefix)
    publisher_tally = Tally()
    publishers: list[tuple[LeanSocket, str]] = []
    try:
        if args.mode == "chat":
            publishers = await open_publishers(port, setup, publisher_tally, phase)
        # Warm-up: one event per room, delivered, then counters start from zero.
        warm: Counter[str] = Counter()
        if args.mode == "chat":
            await publish_chat(publishers, len(setup.rooms), 1.0)
            warm = Counter({room: 1 for room in setup.rooms})
        else:
            await publish_redis(bus, setup, len(setup.rooms) * 10, 0.1, warm)
        await wait_for_deliveries(fleet, sum(warm[r] * per_room[r] for r in per_room), 10)
        for worker in fleet:
            worker.ask("reset")
        for sock, _room in publishers:
            sock.acks = 0
        await asyncio.sleep(0.5)

        published: Counter[str] = Counter()
        client_pids = [w.process.pid for w in fleet if w.process.pid is not None]
        client_before = sum(cpu_seconds(p) for p in client_pids)
        cpu_before = server_cpu(pid)
        metrics_before = await server_metrics(port)
        machine_before = machine_busy_seconds()
        own_before = cpu_seconds(os.getpid())
        redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
        started = time.time()
        with progress() as bar:
            total = max(1, round(rate * args.seconds * figures.subscribers / len(setup.rooms)))
            task = bar.add_task(f"{name:>10} deliveries", total=total)
            ticking = True

            async def tick() -> None:
                while ticking:
                    bar.update(task, completed=delivered(fleet))
                    await asyncio.sleep(0.25)

            ticker = asyncio.create_task(tick())
            if args.mode == "chat":
                await publish_chat(publishers, rate, args.seconds)
                for sock, room in publishers:
                    published[room] += sock.acks
                figures.errors += publisher_tally.errors
            else:
                figures.errors += await publish_redis(bus, setup, rate, args.seconds, published)
            expected = sum(published[r] * per_room[r] for r in per_room)
            bar.update(task, total=max(1, expected))
            await wait_for_deliveries(fleet, expected, args.drain)
            ticking = False
            await ticker
            bar.update(task, completed=delivered(fleet))
        figures.server_cpu_s = server_cpu(pid) - cpu_before
        figures.server_lag = server_summary(metrics_before, await server_metrics(port))
        figures.client_cpu_s = (sum(cpu_seconds(p) for p in client_pids) - client_before
                                + cpu_seconds(os.getpid()) - own_before)
        if redis_pid:
            figures.redis_cpu_s = cpu_seconds(redis_pid) - redis_before
        figures.other_cpu_s = (machine_busy_seconds() - machine_before - figures.server_cpu_s
                               - figures.client_cpu_s - (figures.redis_cpu_s or 0.0))
        figures.published = sum(published.values())
        figures.expected = expected
        last = 0.0
        latencies: list[float] = []
        for worker in fleet:
            answer = worker.ask("collect")
            figures.deliveries += answer["deliveries"]
            figures.errors += answer["errors"]
            figures.closed += answer["closed"]
            last = max(last, answer["last"])
            values = array.array("d")
            values.frombytes(answer["latencies"])
            latencies.extend(values)
        latencies.sort()
        figures.latencies_s = latencies
        figures.seconds = max(last - started, args.seconds) if last else args.seconds
    finally:
        for sock, _room in publishers:
            sock.leave()
        await redis.aclose()


def run_phase(name: str, phase: int, pid: int, port: int, setup: Setup,
              args: argparse.Namespace, redis_url: str, prefix: str) -> Figures:
    figures = Figures(name)
    fleet_size = args.workers or max(2, math.ceil(args.subscribers / (args.fd_limit
                                                                      - FD_RESERVE)))
    if args.history:
        asyncio.run(fill_history(redis_url, prefix, setup, args.history))
    with workers(fleet_size) as fleet:
        for worker in fleet:
            worker.ask("ping", timeout=60)  # started and imported
        figures.rss_before = rss(pid)
        per_room = connect_all(fleet, port, setup, args.subscribers, phase, args.connect_budget,
                               figures)
        idle_before, idle_started = server_cpu(pid), time.perf_counter()
        time.sleep(args.idle)
        figures.idle_cpu_s = server_cpu(pid) - idle_before
        figures.idle_s = time.perf_counter() - idle_started
        figures.rss_after = rss(pid)
        console.print(f"{name}: {figures.subscribers:,} subscribed in {figures.connect_s:.1f} s"
                      f" ({figures.failures:,} failed{': ' + figures.note if figures.note else ''})"
                      f"; server RSS {figures.rss_before / 2**20:,.0f} ->"
                      f" {figures.rss_after / 2**20:,.0f} MiB")
        if figures.subscribers and args.seconds > 0:
            asyncio.run(measure(name, fleet, pid, port, setup, per_room, args, redis_url,
                                prefix, phase, figures))
    return figures


def print_report(args: argparse.Namespace, subject: Figures, baseline: Figures | None) -> None:
    runs = [subject] if baseline is None else [subject, baseline]
    measured = args.seconds > 0

    def row(label: str, getter: Any, fmt: str = "{:,.1f}", *, ratio: bool = True,
            publishing: bool = True) -> Row:
        values: list[float | None] = [None, None]
        for index, figures in enumerate(runs):
            if not publishing or measured:
                values[index] = float(getter(figures))
        return Row(label, values[0], values[1], fmt, ratio)

    def share(seconds: float | None, f: Figures) -> float:
        return (seconds or 0.0) / f.seconds * 100 if f.seconds else 0.0

    rows = [
        row("subscribers connected", lambda f: f.subscribers, "{:,.0f}", ratio=False,
            publishing=False),
        row("subscribes/s while connecting",
            lambda f: f.subscribers / f.connect_s if f.connect_s else 0.0, "{:,.0f}",
            publishing=False),
        row("server RSS KB per idle connection", lambda f: f.kb_per_connection,
            publishing=False),
        row("idle server CPU, % of one core",
            lambda f: f.idle_cpu_s / f.idle_s * 100 if f.idle_s else 0.0, publishing=False),
        row("events published", lambda f: f.published, "{:,.0f}", ratio=False),
        row("deliveries expected", lambda f: f.expected, "{:,.0f}", ratio=False),
        row("deliveries received", lambda f: f.deliveries, "{:,.0f}"),
        row("deliveries/s", lambda f: f.per_second, "{:,.0f}"),
    ]
    for fraction, label in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        rows.append(row(f"delivery latency {label} ms",
                        lambda f, q=fraction: f.latency_ms(q)))
    rows += [
        row("latency max ms", lambda f: f.latencies_s[-1] * 1000 if f.latencies_s else 0.0),
        row("server CPU s per million deliveries", lambda f: f.cpu_per_million, "{:,.2f}"),
        row("server CPU, % of one core", lambda f: share(f.server_cpu_s, f), "{:,.0f}"),
        row("load generator CPU, % of one core", lambda f: share(f.client_cpu_s, f), "{:,.0f}",
            ratio=False),
        row("Redis CPU, % of one core", lambda f: share(f.redis_cpu_s, f), "{:,.0f}",
            ratio=False),
        row("other processes, % of one core", lambda f: share(f.other_cpu_s, f), "{:,.0f}",
            ratio=False),
        row("failed connects", lambda f: f.failures, "{:,.0f}", ratio=False, publishing=False),
        row("closed by server / error frames", lambda f: f.closed + f.errors, "{:,.0f}",
            ratio=False),
    ]
    title = (f"{args.rooms:,} room(s) x {args.subscribers:,} subscribers, {args.rate:,g} events/s"
             f" ({args.mode}), {args.seconds:g} s, {psutil.cpu_count()} cores")
    comparison(title, subject.name, "baseline", rows)
    if subject.server_lag:
        console.print(f"{subject.name} /metrics: {subject.server_lag}")


async def delete_keys(redis_url: str, prefixes: Sequence[str]) -> int:
    redis = aioredis.from_url(redis_url)
    deleted = 0
    try:
        for prefix in prefixes:
            batch = []
            async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += await redis.delete(*batch)
                    batch = []
            if batch:
                deleted += await redis.delete(*batch)
    finally:
        await redis.aclose()
    return deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="publishing time (0: connect and measure memory only)")
    parser.add_argument("--rate", type=float, default=20.0,
                        help="events per second, all rooms together")
    parser.add_argument("--mode", choices=("redis", "chat"), default="redis")
    parser.add_argument("--workers", type=int, default=0,
                        help="load-generator processes (default: 2, more past the fd limit)")
    parser.add_argument("--connect-budget", type=float, default=0.0,
                        help="seconds allowed for connecting (default: 60 + N/100)")
    parser.add_argument("--drain", type=float, default=30.0,
                        help="seconds to wait at most for deliveries after publishing")
    parser.add_argument("--idle", type=float, default=20.0,
                        help="idle seconds after connecting, before the memory reading; the"
                             " idle CPU is measured over them (20 s: one heartbeat each)")
    parser.add_argument("--history", type=int, default=0,
                        help="events published into each room before subscribers connect")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    if min(args.rooms, args.subscribers, args.publishers) < 1 or args.rate <= 0:
        parser.error("rooms, subscribers, publishers and rate must be positive")
    args.connect_budget = args.connect_budget or 60 + args.subscribers / 100
    args.fd_limit = raise_fd_limit()  # inherited by the servers started below
    if args.mode == "chat" and args.rate > args.publishers * CHAT_PER_S:
        console.print(f"chat mode: {args.publishers} publishers may send {CHAT_PER_S:g}"
                      f" message/s each; rate capped at {args.publishers * CHAT_PER_S:g}/s")
        args.rate = args.publishers * CHAT_PER_S
    console.print(f"RLIMIT_NOFILE {args.fd_limit:,} (load generator and servers): at most about"
                  f" {args.fd_limit - FD_RESERVE:,} connections per server process")

    livecore_port, baseline_port = free_port(), free_port()
    tag = f"lcfanout{os.getpid()}"
    prefix, baseline_prefix = f"{tag}:", f"{tag}b:"
    env = dict(os.environ, PORT=str(livecore_port), LIVECORE_LOG_LEVEL="WARNING",
               LIVECORE_REDIS_PREFIX=prefix)
    data_dir = None
    if "DATABASE_URL" not in env or "REDIS_URL" not in env:
        data_dir = tempfile.mkdtemp(prefix="livecore-fanout-")
        env["LIVECORE_DATA_DIR"] = data_dir
    redis_url = env.get("REDIS_URL") or EmbeddedRedis(Path(str(data_dir)) / "redis").url
    logs = tempfile.mkdtemp(prefix="livecore-fanout-logs-")
    livecore = [os.path.join(os.path.dirname(sys.executable), "livecore"), "serve"]
    baseline: Figures | None = None
    try:
        with _server_process(livecore, env=env, port=livecore_port,
                             log_path=os.path.join(logs, "livecore.log")) as pid:
            setup = asyncio.run(seed(f"http://127.0.0.1:{livecore_port}", args.rooms,
                                     args.publishers))
            subject = run_phase("livecore", 0, pid, livecore_port, setup, args, redis_url,
                                prefix)
            if not args.skip_baseline:
                command = [sys.executable, "-c", BASELINE_SERVER, str(baseline_port), redis_url,
                           baseline_prefix]
                with _server_process(command, env=dict(os.environ), port=baseline_port,
                                     log_path=os.path.join(logs, "baseline.log")) as base_pid:
                    baseline = run_phase("baseline", 1, base_pid, baseline_port, setup, args,
                                         redis_url, baseline_prefix)
        if "REDIS_URL" in os.environ:  # once the servers are gone, so nothing writes again
            deleted = asyncio.run(delete_keys(redis_url, [prefix, baseline_prefix]))
            console.print(f"deleted {deleted:,} Redis keys under {prefix} and {baseline_prefix}")
        print_report(args, subject, baseline)
        for name in ("livecore", "baseline"):
            path = os.path.join(logs, f"{name}.log")
            if os.path.exists(path) and os.path.getsize(path):
                lines = Path(path).read_text(errors="replace").splitlines()
                console.print(f"{name} server log: {len(lines):,} lines; last: {lines[-1][:300]}")
    finally:
        shutil.rmtree(logs, ignore_errors=True)
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
