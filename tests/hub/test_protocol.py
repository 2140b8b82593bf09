"""The websocket protocol end to end: hello, chat, likes, presence, bad input."""

import asyncio
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.app import HUB_KEY
from gateway.client import HubClient, HubError
from livecore.wire import CLOSE_FLOODING, CLOSE_UNSUPPORTED_VERSION, MAX_FRAME_BYTES


async def test_hello_tells_version_session_user_and_limits(node, live_room):
    _, token = live_room
    _, me = await node.api.request("GET", "/api/v1/me", token=token)
    async with node.client(token) as client:
        hello = client.hello
        assert hello["v"] == 1 and len(hello["session"]) == 32
        assert (hello["user"]["id"], hello["user"]["username"]) == (me["id"], me["username"])
        assert hello["limits"]["max_frame_bytes"] == MAX_FRAME_BYTES
    async with node.client() as anonymous:
        assert anonymous.hello["user"] is None
    async with connect(node.ws_url + "?v=1") as raw:
        assert '"v":1' in await raw.recv()
    assert client.connection.subprotocol == "livecore.v1"


async def test_unsupported_version_is_closed_with_4000(node):
    async with connect(node.ws_url, subprotocols=[Subprotocol("livecore.v99")]) as raw:
        with pytest.raises(ConnectionClosed) as caught:
            await raw.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == CLOSE_UNSUPPORTED_VERSION


async def test_a_bad_token_at_connect_is_refused_before_the_upgrade(node):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(node.ws_url, headers={"Authorization": "Bearer nope"})
    assert caught.value.status == 401


async def test_a_plain_get_of_the_websocket_endpoint_is_a_json_400(node):
    response, body = await node.api.request("GET", "/ws")
    assert response.status == 400
    assert body["error"]["code"] == "not_a_websocket"
    async with aiohttp.ClientSession() as http:  # a fresh connection: the lean path
        async with http.get(node.ws_url.replace("ws://", "http://"),
                            headers={"X-Request-Id": "probe-1"}) as fresh:
            assert fresh.status == 400
            assert fresh.headers["X-Request-Id"] == "probe-1"
            assert (await fresh.json())["error"]["code"] == "not_a_websocket"


async def test_upgrade_on_a_pooled_connection_is_served_like_any_other(node, live_room):
    """A client that pools HTTP connections may send the upgrade on one it has used already:
    aiohttp upgrades that one, and the hub serves it all the same."""
    room, token = live_room
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(node.ws_url.replace("ws://", "http://").replace("/ws", "/healthz")):
            pass
        ws = await http.ws_connect(node.ws_url, protocols=["livecore.v1"],
                                   headers={"Authorization": f"Bearer {token}"})
        hub = node.api.client.server.app[HUB_KEY]
        assert [c.upgraded_by_aiohttp for c in hub.connections] == [True]
        assert ws.protocol == "livecore.v1"
        hello = await ws.receive_json()
        assert hello["type"] == "hello" and hello["user"] is not None
        await ws.send_json({"type": "subscribe", "room": room, "id": "s1"})
        await ws.send_json({"type": "chat", "room": room, "text": "pooled", "id": "c1"})
        seen: list[dict[str, Any]] = []
        while not any(m.get("type") == "chat.message" for m in seen):
            seen.append(await asyncio.wait_for(ws.receive_json(), 10))
        assert [m["id"] for m in seen if m["type"] == "ack"] == ["s1", "c1"]
        await ws.send_bytes(b"\x00")
        closing = await asyncio.wait_for(ws.receive(), 10)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1003
    assert not hub.connections


async def test_chat_round_trip_with_ack_and_sequence(node, live_room):
    room, token = live_room
    _, viewer_token = await node.api.new_user()
    async with node.client(token) as creator, node.client(viewer_token) as viewer:
        first = await creator.subscribe(room)
        assert first["recovered"] is False and first["snapshot"]["stream"]["title"] == "Hub test"
        await viewer.subscribe(room)
        text = "  hello   <b>world</b> "
        ack = await viewer.request({"type": "chat", "room": room, "text": text})
        seen = await creator.next_event("chat.message")
        assert seen["seq"] == ack["seq"] and seen["data"]["message_id"] == ack["message_id"]
        assert seen["data"]["text"] == "hello <b>world</b>"  # text, never markup
        assert seen["data"]["user"]["username"] == viewer.hello["user"]["username"]
        mine = await viewer.next_event("chat.message")
        assert mine == seen


async def test_anonymous_clients_read_but_cannot_write(node, live_room):
    room, token = live_room
    async with node.client(token) as creator, node.client() as anonymous:
        await creator.subscribe(room)
        await anonymous.subscribe(room)
        await creator.request({"type": "chat", "room": room, "text": "welcome"})
        assert (await anonymous.next_event("chat.message"))["data"]["text"] == "welcome"
        for message in ({"type": "chat", "room": room, "text": "hi"},
                        {"type": "like", "room": room}):
            with pytest.raises(HubError) as caught:
                await anonymous.request(message)
            assert caught.value.code == "login_required"


async def test_auth_message_logs_a_browser_in(node, live_room):
    room, _ = live_room
    user, token = await node.api.new_user()
    async with node.client() as client:
        with pytest.raises(HubError) as caught:
            await client.request({"type": "auth", "token": "lc_wrong"})
        assert caught.value.code == "invalid_token"
        result = await client.request({"type": "auth", "token": token})
        assert result["user"]["id"] == user["id"]
        await client.subscribe(room)
        assert (await client.request({"type": "chat", "room": room, "text": "in"}))["seq"] >= 1


async def test_subscribe_errors(node, live_room):
    room, token = live_room
    async with node.client(token) as client:
        with pytest.raises(HubError) as caught:
            unknown = "7f1d6a34-0000-4000-8000-000000000000"
            await client.request({"type": "subscribe", "room": unknown})
        assert caught.value.code == "stream_not_found"
        first = await client.subscribe(room)
        again = await client.subscribe(room)  # subscribing again re-synchronises
        assert again["seq"] == first["seq"] and again["recovered"] is False
        await client.request({"type": "unsubscribe", "room": room})
        with pytest.raises(HubError) as caught:
            await client.request({"type": "chat", "room": room, "text": "gone"})
        assert caught.value.code == "not_subscribed"


async def test_likes_are_coalesced(node, live_room):
    room, token = live_room
    _, fan = await node.api.new_user()
    async with node.client(token) as creator, node.client(fan) as tapper:
        await creator.subscribe(room)
        await tapper.subscribe(room)
        for _ in range(10):
            await tapper.request({"type": "like", "room": room, "count": 5})
        events = [await creator.next_event("likes", timeout=5)]
        while sum(e["data"]["delta"] for e in events) < 50:
            events.append(await creator.next_event("likes", timeout=5))
        assert len(events) <= 2  # ten taps became one or two events
        assert events[-1]["data"]["total"] == 50


async def test_presence_counts_viewers(node, live_room):
    room, token = live_room
    async with node.client(token) as creator, node.client() as anonymous:
        await creator.subscribe(room)
        await anonymous.subscribe(room)
        presence = await creator.next_event(
            "presence", timeout=6, where=lambda m: m["viewers"] == 2
        )
        assert creator.hello["user"]["username"] in presence["joined"]


async def test_ping_pong(node):
    async with node.client() as client:
        pong = await client.request({"type": "ping"})
        assert pong["type"] == "pong" and pong["server_time"] > 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": 7}', "invalid_message"),
        ('{"type": "teleport", "id": "t1"}', "unknown_type"),
        ('{"type": "chat", "id": "c1", "room": "not-a-uuid", "text": "x"}', "invalid_message"),
        ('{"type": "like", "id": "l1", "room": "7f1d6a34-0000-4000-8000-000000000000", '
         '"count": 1000}', "invalid_message"),
        ('{"type": "ping", "id": "p1", "extra": true}', "invalid_message"),
    ],
)
async def test_bad_messages_get_an_error_and_the_socket_stays_open(node, raw, code):
    async with node.client() as client:
        await client.connection.send(raw)
        error = await client.next_event("error")
        assert error["code"] == code
        if '"id"' in raw:
            assert error["id"] == raw.split('"id": "')[1].split('"')[0]
        assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_oversized_frames_close_with_1009(node):
    async with node.client() as client:
        await client.connection.send('{"type": "ping", "pad": "' + "x" * MAX_FRAME_BYTES + '"}')
        await asyncio.wait_for(client.connection.wait_closed(), 5)
    assert client.close_code == 1009


async def test_a_message_in_fragments_is_one_message(node):
    async with node.client() as client:
        await client.connection.send(['{"type": ', '"ping", ', '"id": "f1"}'])
        pong = await client.next_event("pong")
        assert pong["id"] == "f1"
        assert (await client.request({"type": "ping"}))["type"] == "pong"


async def test_binary_frames_close_with_1003(node):
    async with node.client() as client:
        await client.connection.send(b"\x00\x01")
        await asyncio.wait_for(client.connection.wait_closed(), 5)
    assert client.close_code == 1003


async def test_flooding_is_answered_then_closed_without_hurting_others(node, live_room):
    room, token = live_room
    async with node.client(token) as bystander, node.client() as flooder:
        await bystander.subscribe(room)
        for _ in range(200):
            try:
                await flooder.send({"type": "ping"})
            except ConnectionClosed:
                break
        await asyncio.wait_for(flooder.connection.wait_closed(), 5)
        assert flooder.close_code == CLOSE_FLOODING
        assert any(e["code"] == "rate_limited" for e in flooder.events_of("error"))
        await bystander.request({"type": "chat", "room": room, "text": "still here"})
        assert (await bystander.next_event("chat.message"))["data"]["text"] == "still here"


async def test_stream_state_reaches_the_room(node, live_room):
    room, token = live_room
    async with node.client() as viewer:
        await viewer.subscribe(room)
        response, _ = await node.api.request("POST", f"/api/v1/streams/{room}/end", token=token)
        assert response.status == 200
        event = await viewer.next_event("stream.state")
        assert event["data"] == {"state": "ended"}


async def test_shutdown_tells_clients_to_reconnect(services, live_room):
    from gateway.app import create_app
    from tests.support import ApiClient

    room, _ = live_room
    async with ApiClient.serving(create_app(services)) as api:
        url = str(api.client.make_url("/ws")).replace("http://", "ws://")
        client = await HubClient.connect(url)
        await client.subscribe(room)
    # Leaving the context shut the server down.
    await asyncio.wait_for(client.connection.wait_closed(), 10)
    assert client.close_code == 1001
    assert client.events_of("closing") == [
        {"type": "closing", "reason": "server shutting down", "reconnect": True}
    ]
    await client.close()


async def test_hub_metrics(node, live_room):
    from prometheus_client.parser import text_string_to_metric_families

    room, token = live_room
    async with node.client(token) as a, node.client() as b:
        await a.subscribe(room)
        await b.subscribe(room)
        await a.request({"type": "chat", "room": room, "text": "counted"})
        await b.next_event("chat.message")
        response = await node.api.client.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["livecore_ws_connections"].samples[0].value == 2
    assert families["livecore_ws_rooms"].samples[0].value >= 1
    deliveries = [s for s in families["livecore_ws_deliveries"].samples
                  if s.name.endswith("_total")]
    assert deliveries[0].value >= 2
    lag = [s for s in families["livecore_fanout_lag_seconds"].samples
           if s.name.endswith("_count")]
    assert lag[0].value >= 1


HEADER_TIMEOUT_S = 0.5


@pytest.fixture
async def strict_door(make_services):
    """A server whose connections have HEADER_TIMEOUT_S to send their first headers."""
    from gateway.app import create_app
    from tests.support import ApiClient

    async with ApiClient.serving(create_app(make_services(header_timeout_s=HEADER_TIMEOUT_S))
                                 ) as api:
        yield api


async def _read_until_closed(reader: asyncio.StreamReader, within_s: float = 30) -> bytes:
    received = b""
    async with asyncio.timeout(within_s):  # generous: "closed eventually", not a timing
        while chunk := await reader.read(65536):
            received += chunk
    return received


@pytest.mark.parametrize("sent", [
    b"GET /heal",  # half a request line (the front door's doorway)
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n",  # half the headers (aiohttp)
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",  # half a websocket handshake
    b"",  # nothing at all
])
async def test_a_client_that_stalls_before_its_headers_end_is_closed(strict_door, sent):
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_door.client.port)
    try:
        if sent:
            writer.write(sent)
            await writer.drain()
        received = await _read_until_closed(reader)
        assert received.startswith(b"HTTP/1.1 408 ")
    finally:
        writer.close()


async def test_the_header_deadline_leaves_kept_alive_connections_and_bodies_alone(
    strict_door
):
    reader, writer = await asyncio.open_connection("127.0.0.1", strict_door.client.port)
    try:
        async def exchange(request: bytes) -> bytes:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            await reader.readexactly(length)
            return head

        get = b"GET /api/v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await exchange(get)).startswith(b"HTTP/1.1 200 ")
        # Idle between requests for several deadlines: keep-alive decides, not the deadline.
        await asyncio.sleep(HEADER_TIMEOUT_S * 3)
        assert (await exchange(get)).startswith(b"HTTP/1.1 200 ")
        # A slow but steady body, over several deadlines, is read to its end.
        body = b'{"username": "nobody_here", "password": "not the password"}'
        writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 15):
            writer.write(body[i:i + 15])
            await writer.drain()
            await asyncio.sleep(HEADER_TIMEOUT_S)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), head
    finally:
        writer.close()
