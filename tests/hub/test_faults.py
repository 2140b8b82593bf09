"""The hub when Redis goes away and comes back (a Redis of the test's own, never the
machine's)."""

import asyncio

import pytest

from gateway.app import create_app
from gateway.client import HubError
from gateway.services import Services
from livecore.settings import Settings
from tests.hub.conftest import Node
from tests.support import ApiClient


async def test_chat_survives_a_redis_restart(own_servers):
    servers, database_url, redis_url = own_servers
    services = await Services.connect(Settings(redis_prefix="hubfaults:"),
                                      database_url=database_url, redis_url=redis_url)
    try:
        async with ApiClient.serving(create_app(services)) as api:
            node = Node(api)
            _, creator = await api.new_creator()
            _, stream = await api.request("POST", "/api/v1/streams", token=creator,
                                          json={"title": "Faults"})
            room = stream["id"]
            async with node.client(creator) as client, node.client() as reader:
                await client.subscribe(room)
                await reader.subscribe(room)
                await client.request({"type": "chat", "room": room, "text": "before"})
                before = await reader.next_event("chat.message")

                servers.redis.stop()
                servers.redis.erase()  # back empty
                with pytest.raises(HubError) as caught:
                    await client.request({"type": "chat", "room": room, "text": "lost"})
                assert caught.value.code == "service_unavailable"
                assert (await client.request({"type": "ping"}))["type"] == "pong"

                servers.redis.start()
                delivered = None
                for attempt in range(20):  # the node resubscribes about a second later
                    try:
                        await client.request({"type": "chat", "room": room,
                                              "text": f"after {attempt}"})
                        delivered = await reader.next_event("chat.message", timeout=2)
                        break
                    except (HubError, TimeoutError):
                        await asyncio.sleep(0.5)
                assert delivered is not None
                # Redis came back empty: a new epoch tells clients to take a new snapshot.
                assert delivered["epoch"] != before["epoch"]
                again = await reader.request({"type": "unsubscribe", "room": room})
                assert again == {"room": room}
                reader.positions[room] = (before["epoch"], before["seq"])
                result = await reader.subscribe(room, recover=True)
                assert result["recovered"] is False and result["epoch"] == delivered["epoch"]
    finally:
        await services.close()


async def test_gifts_pause_while_postgres_is_down_and_resume_with_the_same_ids(own_servers):
    import datetime as dt
    import uuid

    from livecore.accounts import Role
    from livecore.streams import StreamEvent

    servers, database_url, redis_url = own_servers
    services = await Services.connect(Settings(redis_prefix="giftfaults:"),
                                      database_url=database_url, redis_url=redis_url)
    try:
        async with ApiClient.serving(create_app(services)) as api:
            node = Node(api)
            admin, admin_token = await api.new_user()
            await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None,
                                              reason="t", now=dt.datetime.now(dt.UTC))
            _, creator = await api.new_creator()
            _, stream = await api.request("POST", "/api/v1/streams", token=creator,
                                          json={"title": "Faults"})
            room = stream["id"]
            await services.streams.transition(room, StreamEvent.START, dt.datetime.now(dt.UTC))
            viewer, token = await api.new_user()
            await api.request("POST", "/api/v1/admin/grants", token=admin_token, json={
                "grant_id": str(uuid.uuid4()), "user_id": viewer["id"], "coins": 50})
            async with node.client(token) as client:
                await client.subscribe(room)
                gift = {"type": "gift", "room": room, "gift": "rose"}
                await client.request({**gift, "gift_id": str(uuid.uuid4())})

                servers.postgres.stop()
                pending = str(uuid.uuid4())
                with pytest.raises(HubError) as caught:
                    await client.request({**gift, "gift_id": pending}, timeout=30)
                assert caught.value.code in ("service_unavailable", "ledger_unavailable")

                servers.postgres.start()
                result = None
                for _ in range(20):  # the pool reconnects; the client retries with its id
                    try:
                        result = await client.request({**gift, "gift_id": pending})
                        break
                    except HubError:
                        await asyncio.sleep(0.5)
                assert result is not None and result["replayed"] is False
                again = await client.request({**gift, "gift_id": pending})
                assert again["replayed"] is True
            _, wallet = await api.request("GET", "/api/v1/me/wallet", token=token)
            assert wallet["coins"] == 48  # two roses, each once
    finally:
        await services.close()


async def test_a_server_stopped_right_after_it_started_stops(services):
    """Stopped while its first Redis commands are in flight: redis-py may swallow that
    cancellation, and the service's loops must end anyway (they used to run on forever)."""
    before = asyncio.all_tasks()
    for _ in range(3):
        async with asyncio.timeout(30):
            async with ApiClient.serving(create_app(services)):
                pass
        # Every task the app started (hub loops, gift flusher, media counting) has ended.
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        assert left == set(), sorted(t.get_name() for t in left)
