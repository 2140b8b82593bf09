"""Rooms across nodes: ordering, recovery, slow consumers."""

import asyncio
import socket
import time

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.client import HubClient
from livecore.wire import CLOSE_SLOW_CONSUMER


async def test_a_client_on_one_node_sees_chat_from_another_in_order(node, second_node, live_room):
    room, token = live_room
    _, other = await node.api.new_user()
    async with node.client(token) as alice, second_node.client(other) as bob, \
            second_node.client() as watcher:
        for client in (alice, bob, watcher):
            await client.subscribe(room)
        sent = []
        for i in range(5):  # within the per-user burst
            for client, name in ((alice, "a"), (bob, "b")):
                ack = await client.request({"type": "chat", "room": room, "text": f"{name}{i}"})
                sent.append((ack["seq"], f"{name}{i}"))
        received = [await watcher.next_event("chat.message") for _ in range(10)]
        on_alice = [await alice.next_event("chat.message") for _ in range(10)]
    assert [(e["seq"], e["data"]["text"]) for e in received] == sorted(sent)
    assert [e["seq"] for e in on_alice] == [e["seq"] for e in received]
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(seqs[0], seqs[0] + 10))  # no gap, no repeat


async def test_recovery_after_reconnect_sends_exactly_what_was_missed(node, live_room, services):
    room, token = live_room
    async with node.client(token) as publisher:
        await publisher.subscribe(room)
        client = await HubClient.connect(node.ws_url)
        await client.subscribe(room)
        await publisher.request({"type": "chat", "room": room, "text": "before"})
        await client.next_event("chat.message")
        position = client.positions[room]
        await client.close()
        for i in range(3):
            await services.bus.publish(room, "chat.message", {
                "message_id": f"00000000-0000-4000-8000-00000000000{i}",
                "user": {"id": "00000000-0000-4000-8000-000000000009", "username": "bot"},
                "text": f"missed {i}"}, time.time())
        again = await HubClient.connect(node.ws_url)
        again.positions[room] = position
        result = await again.subscribe(room, recover=True)
        assert result["recovered"] is True and result["missed"] == 3
        assert "snapshot" not in result
        missed = [await again.next_event("chat.message") for _ in range(3)]
        assert [m["data"]["text"] for m in missed] == ["missed 0", "missed 1", "missed 2"]
        assert [m["seq"] for m in missed] == [position[1] + 1, position[1] + 2, position[1] + 3]
        await publisher.request({"type": "chat", "room": room, "text": "live again"})
        live = await again.next_event("chat.message")
        assert live["data"]["text"] == "live again" and live["seq"] == position[1] + 4
        await again.close()


async def test_recovery_when_nothing_was_missed(node, live_room):
    room, token = live_room
    async with node.client(token) as client:
        await client.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "x"})
        await client.next_event("chat.message")
        position = client.positions[room]
        await client.request({"type": "unsubscribe", "room": room})
        result = await client.subscribe(room, recover=True)
        assert (result["recovered"], result["missed"], result["seq"]) == (True, 0, position[1])


async def test_a_client_that_joined_an_empty_room_recovers_everything_since(
    node, live_room, services
):
    room, token = live_room
    async with node.client(token) as publisher:
        client = await HubClient.connect(node.ws_url)
        first = await client.subscribe(room)
        assert (first["epoch"], first["seq"]) == ("", 0)
        await client.close()
        await publisher.subscribe(room)
        acks = [await publisher.request({"type": "chat", "room": room, "text": f"m{i}"})
                for i in range(3)]
        again = await HubClient.connect(node.ws_url)
        again.positions[room] = ("", 0)
        result = await again.subscribe(room, recover=True)
        assert (result["recovered"], result["missed"]) == (True, 3)
        events = [await again.next_event("chat.message") for _ in range(3)]
        assert [(e["seq"], e["data"]["text"]) for e in events] == [
            (a["seq"], f"m{i}") for i, a in enumerate(acks)]
        assert [e["seq"] for e in events] == [1, 2, 3]
        # Once the start of the epoch has left the history, ("", 0) gets a snapshot.
        await services.redis.xtrim(f"{services.bus.prefix}room:{{{room}}}:history",
                                   minid="2-0", approximate=False)
        again.positions[room] = ("", 0)
        result = await again.subscribe(room, recover=True)
        assert result["recovered"] is False and "snapshot" in result
        await again.close()


@pytest.mark.parametrize("how", ["other_epoch", "history_lost", "seq_from_the_future"])
async def test_when_recovery_is_impossible_the_client_is_told_and_gets_a_snapshot(
    node, live_room, services, how
):
    room, token = live_room
    async with node.client(token) as client:
        await client.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "kept"})
        await client.next_event("chat.message")
        epoch, seq = client.positions[room]
        await client.request({"type": "unsubscribe", "room": room})
        if how == "other_epoch":
            client.positions[room] = ("0123456789abcdef", seq)
        elif how == "history_lost":
            await services.bus.publish(room, "likes", {"total": 1, "delta": 1}, time.time())
            await services.redis.delete(f"{services.bus.prefix}room:{{{room}}}:history")
        else:
            client.positions[room] = (epoch, seq + 100)
        result = await client.subscribe(room, recover=True)
        assert result["recovered"] is False
        snapshot = result["snapshot"]
        assert snapshot["stream"]["title"] == "Hub test"
        if how != "history_lost":
            assert [c["data"]["text"] for c in snapshot["recent_chat"]] == ["kept"]


async def test_a_new_epoch_after_redis_loses_the_room(node, live_room, services):
    room, token = live_room
    async with node.client(token) as client:
        await client.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "one"})
        first = await client.next_event("chat.message")
        for name in ("state", "history"):
            await services.redis.delete(f"{services.bus.prefix}room:{{{room}}}:{name}")
        await client.request({"type": "chat", "room": room, "text": "two"})
        second = await client.next_event("chat.message")
    assert second["epoch"] != first["epoch"] and second["seq"] == 1


async def test_a_slow_consumer_is_dropped_and_never_delays_the_room(node, live_room, services):
    room, token = live_room
    # A client that stops reading: a small receive buffer, and max_queue=1 makes the
    # websockets library stop reading from the socket almost at once.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", node.api.client.port))
    async with node.client(token) as healthy:
        await healthy.subscribe(room)
        async with connect(node.ws_url, max_queue=1, compression=None, sock=sock) as slow:
            await slow.recv()  # hello
            await slow.send(f'{{"type": "subscribe", "room": "{room}", "id": "s"}}')
            # Subscribed once its answer came (then it stops reading).
            while orjson.loads(await slow.recv()).get("id") != "s":
                pass
            # 9 MB: more than the kernel's socket buffers (4 MB send + receive here) and the
            # hub's 1 MiB limit together.
            text = "x" * 3000
            for i in range(3000):
                await services.bus.publish(room, "chat.message", {
                    "message_id": "00000000-0000-4000-8000-000000000001",
                    "user": {"id": "00000000-0000-4000-8000-000000000009", "username": "bot"},
                    "text": f"{i} {text}"}, time.time())
            # The healthy client receives everything, in order, while the slow one lags.
            last = None
            while last is None or last["data"]["text"].split()[0] != "2999":
                last = await healthy.next_event("chat.message", timeout=30)
            # The slow socket was dropped from the room while the healthy one kept up.
            assert [c.closing for c in _hub(node).rooms[room].connections] == [False]
            with pytest.raises(ConnectionClosed) as caught:
                while True:
                    await asyncio.wait_for(slow.recv(), 10)
        assert caught.value.rcvd is not None and caught.value.rcvd.code == CLOSE_SLOW_CONSUMER


def _hub(node):
    from gateway.app import HUB_KEY

    return node.api.client.server.app[HUB_KEY]
