"""What this machine charges for the things Livecore's hot paths do most: wake another process.

    python -m loadtests.machine [--count 3000]

The gift and fan-out benchmarks are dominated by loopback round trips (gateway to
PostgreSQL and Redis, gateway to each socket's reader), so their figures move with what a
round trip costs on the machine they run on, which differs widely between machines of the same
kind. This prints those costs, each beside a baseline measured in the same run:

* a 300-byte TCP ``send()`` to a peer that is asleep in ``epoll`` (the kernel must wake it),
  on the other CPU and on the same CPU, against the same ``send()`` to a peer that is not
  waiting (nothing to wake);
* a PostgreSQL round trip (``SELECT 1`` through asyncpg) and a Redis round trip (``PING``
  through redis-py), against a local no-op: an asyncio round trip through a socket pair in this
  process;
* ``getppid()`` (the cheapest system call) and ``sum(range(1000))`` (plain Python).

Uses DATABASE_URL and REDIS_URL, or embedded servers in a temporary directory when unset.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from rich.table import Table

from gateway.embedded import EmbeddedServers
from loadtests.common import console, progress

MESSAGE = b"x" * 300


def _sleeping_reader(port: int, cpu: int | None) -> int:
    """A child process that connects to ``port`` and reads, asleep in epoll between reads."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            peer = socket.create_connection(("127.0.0.1", port))
            poller = select.epoll()
            poller.register(peer.fileno(), select.EPOLLIN)
            while True:
                poller.poll()
                if not peer.recv(1 << 20):
                    break
        finally:
            os._exit(0)
    return pid


def send_to_sleeper(count: int, own_cpu: int, reader_cpu: int | None) -> float:
    """Microseconds of this process's time per ``send()`` to a reader asleep in epoll."""
    listener = socket.create_server(("127.0.0.1", 0))
    pid = _sleeping_reader(listener.getsockname()[1], reader_cpu)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {own_cpu})
    try:
        spent = 0.0
        for _ in range(count):
            started = time.perf_counter()
            conn.send(MESSAGE)
            spent += time.perf_counter() - started
            time.sleep(0.0003)  # the reader reads and goes back to sleep
    finally:
        os.sched_setaffinity(0, before)
        conn.close()
        listener.close()
        os.waitpid(pid, 0)
    return spent / count * 1e6


def send_to_nobody(count: int) -> float:
    """Microseconds per ``send()`` to a peer that is not waiting (its buffer is large)."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    try:
        started = time.perf_counter()
        for _ in range(count):
            sender.send(MESSAGE)
        return (time.perf_counter() - started) / count * 1e6
    finally:
        for sock in (sender, peer, listener):
            sock.close()


def per_call(count: int, call: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return (time.perf_counter() - started) / count * 1e6


async def median_round_trip(count: int, call: Callable[[], object]) -> float:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        await call()  # type: ignore[misc]
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def local_round_trip(count: int) -> float:
    """A round trip through a socket pair inside this process: one loop, no other process."""
    left, right = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=left)
    echo_reader, echo_writer = await asyncio.open_connection(sock=right)

    async def once() -> None:
        writer.write(b"ping\n")
        line = await echo_reader.readline()
        echo_writer.write(line)
        await reader.readline()

    try:
        return await median_round_trip(count, once)
    finally:
        writer.close()
        echo_writer.close()


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """DATABASE_URL and REDIS_URL, or both servers embedded in a temporary directory."""
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    with EmbeddedServers(Path(tempfile.mkdtemp(prefix="livecore-machine-"))) as embedded:
        yield embedded.start()


async def main(args: argparse.Namespace) -> None:
    count = args.count
    cpus = sorted(os.sched_getaffinity(0))
    rows: list[tuple[str, float, str, float]] = []
    with progress() as bar:
        task = bar.add_task("measuring", total=5)
        nobody = send_to_nobody(count)
        other = send_to_sleeper(count, cpus[0], cpus[-1]) if len(cpus) > 1 else float("nan")
        same = send_to_sleeper(count, cpus[0], cpus[0])
        rows.append(("300-byte send(), reader asleep on the other CPU", other,
                     "the same send(), nobody to wake", nobody))
        rows.append(("300-byte send(), reader asleep on the same CPU", same,
                     "the same send(), nobody to wake", nobody))
        bar.advance(task)
        with servers() as (database_url, redis_url):
            local = await local_round_trip(count)
            bar.advance(task)
            conn = await asyncpg.connect(database_url)
            try:
                postgres = await median_round_trip(count, lambda: conn.fetchval("SELECT 1"))
            finally:
                await conn.close()
            bar.advance(task)
            client = aioredis.from_url(redis_url)
            try:
                redis = await median_round_trip(count, client.ping)
            finally:
                await client.aclose()
            bar.advance(task)
        rows.append(("PostgreSQL round trip (asyncpg SELECT 1, median)", postgres,
                     "asyncio round trip in-process (socket pair)", local))
        rows.append(("Redis round trip (redis-py PING, median)", redis,
                     "asyncio round trip in-process (socket pair)", local))
        syscall = per_call(100_000, os.getppid)
        python = per_call(2_000, lambda: sum(range(1000)))
        bar.advance(task)
    console.width = max(console.width, 130)  # keep the table whole in a log
    table = Table(title="What a wake-up costs on this machine (µs)")
    for column in ("what", "µs", "baseline", "baseline µs", "ratio"):
        table.add_column(column, justify="left" if "what" in column or column == "baseline"
                         else "right")
    for what, value, baseline, base in rows:
        table.add_row(what, f"{value:.1f}", baseline, f"{base:.1f}", f"{value / base:.1f} ×")
    table.add_row("getppid()", f"{syscall:.2f}", "", "", "")
    table.add_row("sum(range(1000)) in Python", f"{python:.1f}", "", "", "")
    console.print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="samples per measurement")
    asyncio.run(main(parser.parse_args()))
