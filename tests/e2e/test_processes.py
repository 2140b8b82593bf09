"""`livecore serve` with LIVECORE_PROCESSES=2: two nodes on one port, supervised."""

import asyncio
import itertools
import time
from collections.abc import Callable

import psutil
import pytest

from gateway.client import HubClient
from tests.processes import BIN, Background, environment, free_port
from tests.support import ApiClient

pytestmark = pytest.mark.e2e


def serving_processes(parent: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(parent).children():
        try:  # a killed one is a zombie until the supervisor reaps it
            if "--extra-process" in child.cmdline():
                found.append(child)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found


def listening(process: psutil.Process, port: int) -> bool:
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in process.net_connections(kind="tcp"))


def established_on(process: psutil.Process, port: int) -> int:
    return sum(1 for c in process.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


async def test_processes_share_the_port_deliver_across_each_other_restart_and_stop(
        backend, api: ApiClient):
    port = free_port()
    env = environment(PORT=str(port), DATABASE_URL=backend.database_url,
                      REDIS_URL=backend.redis_url, LIVECORE_REDIS_PREFIX=backend.redis_prefix,
                      LIVECORE_PROCESSES="2")
    with Background([str(BIN / "livecore"), "serve"], env) as server:
        banner = server.wait_for("Livecore serving on", timeout=90)
        assert "(2 processes on the port)" in banner
        parent = psutil.Process(server.process.pid)
        assert await eventually(lambda: len(serving_processes(parent.pid)) == 1)
        [extra] = serving_processes(parent.pid)
        assert await eventually(lambda: listening(extra, port))

        _, creator = await api.new_creator()
        _, stream = await api.request("POST", "/api/v1/streams", token=creator,
                                      json={"title": "Two processes"})
        room = stream["id"]
        url = f"ws://127.0.0.1:{port}/ws"
        # The kernel spreads connections over both processes' listening sockets.
        clients = [await HubClient.connect(url) for _ in range(30)]
        writer = await HubClient.connect(url, token=creator)
        try:
            assert established_on(parent, port) > 0 and established_on(extra, port) > 0
            for client in clients:
                await client.subscribe(room)
            await writer.subscribe(room)
            for i in range(3):
                await writer.request({"type": "chat", "room": room, "text": f"m{i}"})
            for client in clients:
                texts = [(await client.next_event("chat.message"))["data"]["text"]
                         for _ in range(3)]
                assert texts == ["m0", "m1", "m2"]
        finally:
            for client in [*clients, writer]:
                await client.close()

        # A serving process that dies is replaced, and the node keeps serving.
        extra.kill()
        assert await eventually(
            lambda: [p for p in serving_processes(parent.pid) if p.pid != extra.pid]
        ), "the dead serving process was not replaced"
        [replaced] = serving_processes(parent.pid)
        assert await eventually(lambda: "a serving process exited" in "".join(server.stderr))
        assert await eventually(lambda: listening(replaced, port))
        for _ in range(10):
            async with await HubClient.connect(url) as client:
                assert client.hello["type"] == "hello"

        # Ctrl-C stops every process.
        assert server.interrupt() == 0
        server.wait_for("Stopped.")
        assert not replaced.is_running() or replaced.status() == psutil.STATUS_ZOMBIE


async def eventually(check: Callable[[], object], timeout_s: float = 60) -> bool:
    """Whether ``check()`` turns true within ``timeout_s`` (looked at every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    for _ in itertools.count():
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)
    return False
