"""Fan-out mechanics: per-room coalescing, sliced flushes, the connection cap."""

import time
import uuid

import aiohttp
import pytest

from gateway import hub as hub_module
from gateway.app import create_app
from gateway.http import METRICS_KEY
from tests.hub.conftest import Node
from tests.support import ApiClient

BOT = {"id": "00000000-0000-4000-8000-000000000009", "username": "bot"}


async def publish_chat(services, room: str, text: str) -> int:
    return await services.bus.publish(room, "chat.message", {
        "message_id": str(uuid.uuid4()), "user": BOT, "text": text}, time.time())


def counter(app, name: str) -> float:
    value = app[METRICS_KEY].registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_a_busy_room_writes_many_events_per_socket_write(make_services, live_room):
    services = make_services(ws_flush_ms=200)
    app = create_app(services)
    async with ApiClient.serving(app) as api:
        node = Node(api)
        room, _token = live_room
        async with node.client() as first, node.client() as second:
            for client in (first, second):
                await client.subscribe(room)
            writes_before = counter(app, "livecore_ws_writes_total")
            seqs = [await publish_chat(services, room, f"burst {i}") for i in range(20)]
            for client in (first, second):
                got = [await client.next_event("chat.message") for _ in range(20)]
                assert [e["seq"] for e in got] == seqs
                assert [e["data"]["text"] for e in got] == [f"burst {i}" for i in range(20)]
            writes = counter(app, "livecore_ws_writes_total") - writes_before
    # One write per socket per flush: the first event goes out alone (the room was quiet),
    # the others wait for the interval and share writes. Written one by one, it would be 40.
    assert 2 <= writes <= 8, writes


async def test_a_subscriber_never_gets_an_event_twice_when_it_joins_during_a_flush_interval(
        make_services, live_room):
    # The interval is long, so an event is still queued on the node when the newcomer's
    # subscribe reads the room's position from Redis (which already counts it).
    services = make_services(ws_flush_ms=1000)
    async with ApiClient.serving(create_app(services)) as api:
        node = Node(api)
        room, _token = live_room
        async with node.client() as early, node.client() as late:
            await early.subscribe(room)
            await publish_chat(services, room, "flushed at once")
            assert (await early.next_event("chat.message"))["data"]["text"] == "flushed at once"
            queued = await publish_chat(services, room, "queued")
            result = await late.subscribe(room)
            assert result["seq"] == queued  # the newcomer's position already includes it
            after = await publish_chat(services, room, "after")
            got = await late.next_event("chat.message")
            assert (got["seq"], got["data"]["text"]) == (after, "after")
            # The early subscriber gets both, once each, in order.
            both = [await early.next_event("chat.message") for _ in range(2)]
            assert [e["seq"] for e in both] == [queued, after]


async def test_a_flush_in_slices_reaches_everyone_in_order(make_services, live_room,
                                                           monkeypatch):
    monkeypatch.setattr(hub_module, "FLUSH_CHUNK", 2)
    services = make_services(ws_flush_ms=0)
    async with ApiClient.serving(create_app(services)) as api:
        node = Node(api)
        room, _token = live_room
        async with node.client() as a, node.client() as b, node.client() as c, \
                node.client() as d, node.client() as e:
            clients = (a, b, c, d, e)
            for client in clients:
                await client.subscribe(room)
            await c.request({"type": "unsubscribe", "room": room})
            seqs = [await publish_chat(services, room, f"m{i}") for i in range(6)]
            for client in (a, b, d, e):
                got = [await client.next_event("chat.message") for _ in range(6)]
                assert [m["seq"] for m in got] == seqs
            assert [m for m in c.received if m["type"] == "chat.message"] == []


async def test_a_full_node_refuses_more_websockets_with_503(make_services, live_room):
    services = make_services(max_connections=2)
    app = create_app(services)
    async with ApiClient.serving(app) as api:
        node = Node(api)
        async with node.client(), node.client():
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(node.ws_url)
                assert refused.value.status == 503
                response = await session.get(node.ws_url, headers={
                    "Connection": "Upgrade", "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
                body = await response.json()
                assert response.status == 503 and body["error"]["code"] == "server_full"
            assert counter(app, "livecore_ws_refused_total") == 2
        # Room again once a connection has closed.
        async with node.client() as again:
            assert again.hello["type"] == "hello"
