"""Two `livecore serve` processes on different ports sharing one PostgreSQL and Redis."""

import pytest

from gateway.client import HubClient
from tests.processes import BIN, Background, environment, free_port
from tests.support import ApiClient

pytestmark = pytest.mark.e2e


async def test_chat_crosses_gateway_processes_in_order(backend, api: ApiClient):
    ports = [free_port(), free_port()]
    env = dict(DATABASE_URL=backend.database_url, REDIS_URL=backend.redis_url,
               LIVECORE_REDIS_PREFIX=backend.redis_prefix)
    gateways = [Background([str(BIN / "livecore"), "serve"], environment(PORT=str(p), **env))
                for p in ports]
    try:
        for gateway in gateways:
            gateway.wait_for("Livecore serving on", timeout=90)
        _, creator = await api.new_creator()
        _, stream = await api.request("POST", "/api/v1/streams", token=creator,
                                      json={"title": "Two gateways"})
        room = stream["id"]
        _, fan = await api.new_user()
        url_a, url_b = (f"ws://127.0.0.1:{p}/ws" for p in ports)
        async with await HubClient.connect(url_a, token=creator) as on_a, \
                await HubClient.connect(url_b, token=fan) as on_b, \
                await HubClient.connect(url_b) as reader_b:
            for client in (on_a, on_b, reader_b):
                await client.subscribe(room)
            for i in range(4):
                await on_a.request({"type": "chat", "room": room, "text": f"a{i}"})
                await on_b.request({"type": "chat", "room": room, "text": f"b{i}"})
            texts_b = [(await reader_b.next_event("chat.message"))["data"]["text"]
                       for _ in range(8)]
            texts_a = [(await on_a.next_event("chat.message"))["data"]["text"]
                       for _ in range(8)]
        expected = [t for i in range(4) for t in (f"a{i}", f"b{i}")]
        assert texts_b == expected and texts_a == expected
        for gateway in gateways:
            assert gateway.interrupt() == 0
    finally:
        for gateway in gateways:
            gateway.__exit__(None, None, None)
