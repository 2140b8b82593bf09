"""Chat rules and moderation, enforced on every node and kept in PostgreSQL."""

import asyncio
import datetime as dt
import uuid

import pytest

from gateway.app import create_app
from gateway.client import HubError
from livecore.accounts import Role
from tests.hub.conftest import Node
from tests.support import ApiClient


async def _expect_error(client, message, code):
    with pytest.raises(HubError) as caught:
        await client.request(message)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


async def test_per_user_rate_limit(node, live_room):
    room, _ = live_room
    _, token = await node.api.new_user()
    async with node.client(token) as client:
        await client.subscribe(room)
        for i in range(5):
            await client.request({"type": "chat", "room": room, "text": f"m{i}"})
        error = await _expect_error_full(client, {"type": "chat", "room": room, "text": "m5"})
        assert error["code"] == "rate_limited" and error["retry_after_s"] >= 1


async def _expect_error_full(client, message):
    with pytest.raises(HubError) as caught:
        await client.request(message)
    return caught.value.message


async def test_slow_mode_holds_across_nodes_and_spares_the_creator(
    node, second_node, live_room
):
    room, creator = live_room
    response, body = await node.api.request(
        "PUT", f"/api/v1/streams/{room}/chat/settings", token=creator, json={"slow_mode_s": 30}
    )
    assert response.status == 200 and body["slow_mode_s"] == 30
    _, token = await node.api.new_user()
    async with node.client(token) as here, second_node.client(token) as there, \
            node.client(creator) as owner:
        for client in (here, there, owner):
            result = await client.subscribe(room)
            assert result["snapshot"]["slow_mode_s"] == 30
        await here.request({"type": "chat", "room": room, "text": "first"})
        error = await _expect_error_full(there, {"type": "chat", "room": room, "text": "again"})
        assert error["code"] == "slow_mode" and 1 <= error["retry_after_s"] <= 30
        for i in range(3):
            await owner.request({"type": "chat", "room": room, "text": f"owner {i}"})


async def test_blocked_words_global_and_per_stream(make_services, services):
    app_services = make_services(blocked_words="spoon, Crème brûlée")
    async with ApiClient.serving(create_app(app_services)) as api:
        node = Node(api)
        _, creator = await api.new_creator()
        _, stream = await api.request("POST", "/api/v1/streams", token=creator,
                                      json={"title": "Words"})
        room = stream["id"]
        response, body = await api.request(
            "PUT", f"/api/v1/streams/{room}/chat/settings", token=creator,
            json={"blocked_words": ["Fork", "fork", "  knife "]},
        )
        assert body["blocked_words"] == ["fork", "knife"]
        _, token = await api.new_user()
        async with node.client(token) as client, node.client(creator) as owner:
            await client.subscribe(room)
            await owner.subscribe(room)
            for text in ("a SPOON!", "creme brulee please", "pass the fork", "KNIFE"):
                await _expect_error(client, {"type": "chat", "room": room, "text": text},
                                    "message_blocked")
            await client.request({"type": "chat", "room": room, "text": "spoonful forklift"})
            await owner.request({"type": "chat", "room": room, "text": "fork (creator)"})
        # The words stay private to the owner and moderators.
        _, stranger = await api.new_user()
        response, _ = await api.request("GET", f"/api/v1/streams/{room}/chat/settings",
                                        token=stranger)
        assert response.status == 403


async def test_settings_changed_while_subscribed_apply_on_every_node(node, second_node,
                                                                     live_room):
    room, creator = live_room
    _, token = await node.api.new_user()
    async with second_node.client(token) as client:
        await client.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "tea time"})
        response, _ = await node.api.request(
            "PUT", f"/api/v1/streams/{room}/chat/settings", token=creator,
            json={"blocked_words": ["tea"]},
        )
        assert response.status == 200
        event = await client.next_event("chat.settings")
        assert event["data"] == {"slow_mode_s": 0, "blocked_words_count": 1}
        await _expect_error(client, {"type": "chat", "room": room, "text": "more tea"},
                            "message_blocked")


async def test_mute_and_ban_hold_on_every_node_and_persist(node, second_node, live_room,
                                                            services):
    room, creator = live_room
    victim, token = await node.api.new_user()
    async with second_node.client(token) as client, node.client() as watcher:
        await client.subscribe(room)
        await watcher.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "hello"})

        response, body = await node.api.request(
            "PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}", token=creator,
            json={"kind": "mute", "duration_s": 600, "reason": "spam"},
        )
        assert response.status == 200 and body["kind"] == "mute"
        expires = dt.datetime.fromisoformat(body["expires_at"])
        assert 590 <= (expires - dt.datetime.now(dt.UTC)).total_seconds() <= 600
        muted = await client.next_event("user.muted")
        assert muted["data"]["user"]["id"] == victim["id"]
        assert muted["data"]["until"] == pytest.approx(expires.timestamp(), abs=0.001)
        await _expect_error(client, {"type": "chat", "room": room, "text": "still?"}, "muted")

        response, _ = await node.api.request(
            "PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}", token=creator,
            json={"kind": "ban"},
        )
        assert response.status == 200
        gone = await client.next_event("unsubscribed")
        assert gone == {"type": "unsubscribed", "room": room, "reason": "banned"}
        assert (await watcher.next_event("user.banned"))["data"]["until"] is None
        await _expect_error(client, {"type": "subscribe", "room": room}, "banned")

    rows = await services.pool.fetch(
        "SELECT action FROM chat_moderation_log WHERE stream_id = $1::uuid ORDER BY id", room
    )
    assert [r["action"] for r in rows] == ["mute", "ban"]
    response, body = await node.api.request(
        "GET", f"/api/v1/streams/{room}/chat/sanctions", token=creator)
    assert [(s["username"], s["kind"]) for s in body["sanctions"]] == [
        (victim["username"], "ban")]

    # A node that loads the room afresh enforces the saved ban too.
    async with ApiClient.serving(create_app(services)) as api:
        fresh = Node(api)
        async with fresh.client(token) as client:
            await _expect_error(client, {"type": "subscribe", "room": room}, "banned")
        response, _ = await api.request(
            "DELETE", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}", token=creator)
        assert response.status == 204
        async with fresh.client(token) as client:
            await client.subscribe(room)
            await client.request({"type": "chat", "room": room, "text": "back"})


async def test_bans_follow_the_creator_to_the_next_stream(node, live_room):
    room, creator = live_room
    victim, token = await node.api.new_user()
    await node.api.request("PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}",
                           token=creator, json={"kind": "ban"})
    await node.api.request("POST", f"/api/v1/streams/{room}/end", token=creator)
    _, second = await node.api.request("POST", "/api/v1/streams", token=creator,
                                       json={"title": "Next"})
    async with node.client(token) as client:
        await _expect_error(client, {"type": "subscribe", "room": second["id"]}, "banned")


async def test_removed_messages_vanish_everywhere(node, second_node, live_room):
    room, creator = live_room
    _, token = await node.api.new_user()
    async with node.client(token) as author, second_node.client() as reader:
        await author.subscribe(room)
        await reader.subscribe(room)
        ack = await author.request({"type": "chat", "room": room, "text": "oops"})
        await author.request({"type": "chat", "room": room, "text": "fine"})
        response, _ = await node.api.request(
            "DELETE", f"/api/v1/streams/{room}/chat/messages/{ack['message_id']}", token=creator)
        assert response.status == 204
        removed = await reader.next_event("chat.removed")
        assert removed["data"]["message_id"] == ack["message_id"]
    async with node.client() as late:
        result = await late.subscribe(room)
        assert [m["data"]["text"] for m in result["snapshot"]["recent_chat"]] == ["fine"]


async def test_removing_a_message_the_room_never_had_is_404_and_publishes_nothing(
    node, live_room, services
):
    room, creator = live_room
    _, other_creator = await node.api.new_creator()
    _, other = await node.api.request("POST", "/api/v1/streams", token=other_creator,
                                      json={"title": "Elsewhere"})
    _, token = await node.api.new_user()
    async with node.client(token) as author, node.client() as reader:
        await author.subscribe(room)
        await author.subscribe(other["id"])
        await reader.subscribe(room)
        mine = await author.request({"type": "chat", "room": room, "text": "here"})
        theirs = await author.request({"type": "chat", "room": other["id"], "text": "there"})
        await reader.next_event("chat.message")
        before = await services.bus.position(room)
        assert before is not None and before.seq == mine["seq"]
        for message_id in (str(uuid.uuid4()), theirs["message_id"]):
            response, body = await node.api.request(
                "DELETE", f"/api/v1/streams/{room}/chat/messages/{message_id}", token=creator)
            assert (response.status, body["error"]["code"]) == (404, "message_not_found")
        assert await services.bus.position(room) == before  # no seq taken
        rows = await services.pool.fetch(
            "SELECT message_id FROM chat_moderation_log WHERE stream_id = $1::uuid", room)
        assert rows == []
        # The next event the reader gets is the next chat, right after the last one.
        after = await author.request({"type": "chat", "room": room, "text": "still here"})
        event = await reader.next_event("chat.message", "chat.removed")
        assert (event["type"], event["seq"]) == ("chat.message", before.seq + 1)
        assert after["seq"] == before.seq + 1


async def test_removing_a_message_twice_publishes_one_removal(node, live_room, services):
    room, creator = live_room
    _, token = await node.api.new_user()
    async with node.client(token) as author:
        await author.subscribe(room)
        ack = await author.request({"type": "chat", "room": room, "text": "twice"})
        path = f"/api/v1/streams/{room}/chat/messages/{ack['message_id']}"
        first, second = await asyncio.gather(
            node.api.request("DELETE", path, token=creator),
            node.api.request("DELETE", path, token=creator))
        assert (first[0].status, second[0].status) == (204, 204)
        removed = await author.next_event("chat.removed")
        assert removed["seq"] == ack["seq"] + 1
        response, _ = await node.api.request("DELETE", path, token=creator)
        assert response.status == 204
        position = await services.bus.position(room)
        assert position is not None and position.seq == ack["seq"] + 1


async def test_moderator_role_moderates_any_room_and_others_cannot(node, live_room, services):
    room, _ = live_room
    stranger, stranger_token = await node.api.new_user()
    victim, _ = await node.api.new_user()
    path = f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}"
    response, body = await node.api.request("PUT", path, token=stranger_token,
                                            json={"kind": "mute"})
    assert (response.status, body["error"]["code"]) == (403, "not_stream_owner")
    await services.accounts.set_roles(stranger["id"], {Role.MODERATOR}, actor_id=None,
                                      reason="t", now=dt.datetime.now(dt.UTC))
    response, _ = await node.api.request("PUT", path, token=stranger_token, json={"kind": "mute"})
    assert response.status == 200


async def test_moderation_api_bad_input(node, live_room):
    room, creator = live_room
    creator_id = (await node.api.request("GET", "/api/v1/me", token=creator))[1]["id"]
    victim, _ = await node.api.new_user()
    base = f"/api/v1/streams/{room}/chat"
    cases = [
        ("PUT", f"{base}/sanctions/{creator_id}", {"kind": "ban"}, 409, "cannot_sanction_owner"),
        ("PUT", f"{base}/sanctions/{uuid.uuid4()}", {"kind": "ban"}, 404, "user_not_found"),
        ("PUT", f"{base}/sanctions/{victim['id']}", {"kind": "exile"}, 422, "invalid_field"),
        ("PUT", f"{base}/sanctions/{victim['id']}", {"kind": "mute", "duration_s": 5}, 422,
         "invalid_field"),
        ("DELETE", f"{base}/sanctions/{victim['id']}", None, 404, "sanction_not_found"),
        ("PUT", f"{base}/settings", {"slow_mode_s": -1}, 422, "invalid_field"),
        ("PUT", f"{base}/settings", {}, 422, "invalid_body"),
        ("PUT", f"{base}/settings", {"blocked_words": [""]}, 422, "invalid_field"),
        ("DELETE", f"{base}/messages/not-a-uuid", None, 404, "message_not_found"),
        ("GET", f"/api/v1/streams/{uuid.uuid4()}/chat/settings", None, 404, "stream_not_found"),
    ]
    for method, path, body, status, code in cases:
        response, answer = await node.api.request(method, path, token=creator, json=body)
        assert (response.status, answer["error"]["code"]) == (status, code), (path, body)


async def test_heartbeat_drops_a_peer_that_stops_answering(node, monkeypatch):
    import gateway.hub

    monkeypatch.setattr(gateway.hub, "HEARTBEAT_S", 0.3)
    monkeypatch.setattr(gateway.hub, "PONG_TIMEOUT_S", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", node.api.client.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    # Never answer the server's pings: it must give up on us by itself.
    received = b""
    async with asyncio.timeout(30):
        while chunk := await reader.read(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 101")
    assert b"\x89" in received  # a ping frame came before the server hung up
    writer.close()


async def test_a_ban_through_an_old_stream_reaches_the_live_room(node, live_room):
    old_room, creator = live_room
    await node.api.request("POST", f"/api/v1/streams/{old_room}/end", token=creator)
    _, current = await node.api.request("POST", "/api/v1/streams", token=creator,
                                        json={"title": "Now"})
    victim, token = await node.api.new_user()
    async with node.client(token) as client:
        await client.subscribe(current["id"])
        response, _ = await node.api.request(
            "PUT", f"/api/v1/streams/{old_room}/chat/sanctions/{victim['id']}", token=creator,
            json={"kind": "mute"})
        assert response.status == 200
        muted = await client.next_event("user.muted")
        assert muted["room"] == current["id"]
        await _expect_error(client, {"type": "chat", "room": current["id"], "text": "hm"},
                            "muted")
        await _expect_error(client, {"type": "like", "room": current["id"]}, "muted")


async def test_auth_after_subscribing_applies_a_ban(node, live_room):
    room, creator = live_room
    victim, token = await node.api.new_user()
    await node.api.request("PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}",
                           token=creator, json={"kind": "ban"})
    async with node.client() as client:
        await client.subscribe(room)  # anonymous reading is allowed
        await client.request({"type": "auth", "token": token})
        gone = await client.next_event("unsubscribed")
        assert gone["reason"] == "banned"


async def test_a_banned_users_chat_is_answered_banned(node, second_node, live_room):
    room, creator = live_room
    victim, token = await node.api.new_user()
    async with node.client(token) as client, second_node.client(token) as elsewhere:
        await client.subscribe(room)
        await client.request({"type": "chat", "room": room, "text": "hi"})
        response, _ = await node.api.request(
            "PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}", token=creator,
            json={"kind": "ban"})
        assert response.status == 200
        assert (await client.next_event("unsubscribed"))["reason"] == "banned"
        # Removed from the room by the ban, and on a node where the user never subscribed.
        for connection in (client, elsewhere):
            with pytest.raises(HubError) as caught:
                await connection.request({"type": "chat", "room": room, "text": "let me in"})
            assert (caught.value.code, caught.value.message["room"]) == ("banned", room)
        # Not subscribed and not banned stays not_subscribed; so does an unknown room.
        _, bystander_token = await node.api.new_user()
        async with node.client(bystander_token) as bystander:
            for target in (room, str(uuid.uuid4())):
                await _expect_error(bystander, {"type": "chat", "room": target, "text": "x"},
                                    "not_subscribed")


async def test_a_room_activated_by_a_refused_subscribe_is_let_go(node, live_room, monkeypatch):
    import gateway.hub
    from gateway.app import HUB_KEY

    monkeypatch.setattr(gateway.hub, "IDLE_ROOM_S", 0.1)
    hub = node.api.client.server.app[HUB_KEY]
    room, creator = live_room
    victim, token = await node.api.new_user()
    await node.api.request("PUT", f"/api/v1/streams/{room}/chat/sanctions/{victim['id']}",
                           token=creator, json={"kind": "ban"})
    async with node.client(token) as client:
        await _expect_error(client, {"type": "subscribe", "room": room}, "banned")
        # Activated to judge the request, joined by nobody: the presence pass (every 2 s)
        # lets it go. A generous bound, no timing.
        for _ in range(300):
            if room not in hub.rooms:
                break
            await asyncio.sleep(0.1)
        assert room not in hub.rooms
