"""Gifts end to end: HTTP and websocket, the ledger, and the room."""

import datetime as dt
import uuid

import pytest

from gateway.client import HubError
from livecore.accounts import Role
from livecore.streams import StreamEvent


@pytest.fixture
async def economy(node, services):
    """An admin, a live stream, and a viewer with 100 granted coins."""
    api = node.api
    admin, admin_token = await api.new_user()
    await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Gifts"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    viewer, viewer_token = await api.new_user()
    grant_id = str(uuid.uuid4())
    response, body = await api.request("POST", "/api/v1/admin/grants", token=admin_token,
                                       json={"grant_id": grant_id, "user_id": viewer["id"],
                                             "coins": 100, "memo": "welcome"})
    assert response.status == 201 and body["replayed"] is False
    return {"admin": admin_token, "creator": creator_token, "creator_id": creator["id"],
            "stream": stream["id"], "viewer": viewer_token, "viewer_id": viewer["id"],
            "grant_id": grant_id}


async def test_grants_are_admin_only_and_idempotent(node, economy):
    api = node.api
    body = {"grant_id": economy["grant_id"], "user_id": economy["viewer_id"], "coins": 100,
            "memo": "welcome"}
    response, answer = await api.request("POST", "/api/v1/admin/grants",
                                         token=economy["admin"], json=body)
    assert response.status == 200 and answer["replayed"] is True
    response, answer = await api.request("POST", "/api/v1/admin/grants",
                                         token=economy["admin"], json={**body, "coins": 5})
    assert (response.status, answer["error"]["code"]) == (409, "grant_id_conflict")
    response, answer = await api.request("POST", "/api/v1/admin/grants",
                                         token=economy["viewer"], json=body)
    assert response.status == 403
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=economy["viewer"])
    assert wallet == {"coins": 100, "diamonds": 0}


async def test_the_catalogue_is_seeded_and_admins_edit_it(node, economy):
    api = node.api
    _, catalogue = await api.request("GET", "/api/v1/gifts/catalogue")
    slugs = [g["slug"] for g in catalogue["gifts"]]
    assert {"rose", "rocket", "galaxy"} <= set(slugs)
    new = {"name": "Balloon", "price_coins": 3, "streakable": True, "animation": "balloon_up"}
    response, _ = await api.request("PUT", "/api/v1/gifts/catalogue/balloon",
                                    token=economy["viewer"], json=new)
    assert response.status == 403
    response, body = await api.request("PUT", "/api/v1/gifts/catalogue/balloon",
                                       token=economy["admin"], json=new)
    assert response.status == 200 and body["price_coins"] == 3
    response, body = await api.request("PUT", "/api/v1/gifts/catalogue/Bad-Slug!",
                                       token=economy["admin"], json=new)
    assert (response.status, body["error"]["field"]) == (422, "slug")


async def test_http_gift_commits_then_reaches_the_room_with_combos(node, economy):
    api, room = node.api, economy["stream"]
    async with node.client() as watcher:
        await watcher.subscribe(room)
        gift_id = str(uuid.uuid4())
        body = {"gift_id": gift_id, "stream_id": room, "gift": "heart", "quantity": 2}
        response, result = await api.request("POST", "/api/v1/gifts", token=economy["viewer"],
                                             json=body)
        assert response.status == 201, result
        assert (result["coins"], result["combo"], result["balance"]) == (10, 2, 90)
        event = await watcher.next_event("gift.sent")
        assert event["data"]["gift_id"] == gift_id and event["data"]["combo"] == 2
        # A retry replays the stored outcome: no second debit, no second event.
        response, again = await api.request("POST", "/api/v1/gifts", token=economy["viewer"],
                                            json=body)
        assert response.status == 200 and again["replayed"] is True and again["balance"] == 90
        response, clash = await api.request("POST", "/api/v1/gifts", token=economy["viewer"],
                                            json={**body, "quantity": 3})
        assert (response.status, clash["error"]["code"]) == (409, "gift_id_conflict")
        second = {"gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "heart"}
        response, result = await api.request("POST", "/api/v1/gifts", token=economy["viewer"],
                                             json=second)
        assert result["combo"] == 3
        event = await watcher.next_event("gift.sent")
        assert event["data"]["gift_id"] == second["gift_id"]
        # The retry published nothing: the room saw exactly the two gifts.
        assert [e["data"]["gift_id"] for e in watcher.events_of("gift.sent")] == [
            gift_id, second["gift_id"]]
    _, creator_wallet = await api.request("GET", "/api/v1/me/wallet", token=economy["creator"])
    assert creator_wallet["diamonds"] == 8  # 15 coins at 50%: 7 cut + 8, odd coins to creator


async def test_gift_refusals_change_nothing(node, economy):
    api, room = node.api, economy["stream"]
    cases: list[tuple[dict[str, object], str, int, str]] = [
        ({"gift": "galaxy"}, economy["viewer"], 402, "insufficient_coins"),
        ({"gift": "unicorn"}, economy["viewer"], 422, "unknown_gift"),
        ({"gift": "rose", "quantity": 100}, economy["viewer"], 422, "invalid_field"),
        ({"gift": "rose"}, economy["creator"], 409, "cannot_gift_self"),
        ({"gift": "rose", "stream_id": str(uuid.uuid4())}, economy["viewer"], 404,
         "stream_not_found"),
    ]
    for extra, token, status, code in cases:
        body = {"gift_id": str(uuid.uuid4()), "stream_id": room, **extra}
        response, answer = await api.request("POST", "/api/v1/gifts", token=token, json=body)
        assert (response.status, answer["error"]["code"]) == (status, code), extra
    await api.request("POST", f"/api/v1/streams/{room}/end", token=economy["creator"])
    response, answer = await api.request("POST", "/api/v1/gifts", token=economy["viewer"], json={
        "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "rose"})
    assert (response.status, answer["error"]["code"]) == (409, "stream_not_live")
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=economy["viewer"])
    assert wallet["coins"] == 100


async def test_gift_over_the_websocket(node, economy):
    room = economy["stream"]
    async with node.client(economy["viewer"]) as sender, node.client() as watcher:
        await sender.subscribe(room)
        await watcher.subscribe(room)
        gift_id = str(uuid.uuid4())
        ack = await sender.request({"type": "gift", "room": room, "gift_id": gift_id,
                                    "gift": "coffee"})
        assert ack["gift_id"] == gift_id and ack["coins"] == 10 and ack["replayed"] is False
        event = await watcher.next_event("gift.sent")
        assert event["data"]["sender"]["id"] == economy["viewer_id"]
        again = await sender.request({"type": "gift", "room": room, "gift_id": gift_id,
                                      "gift": "coffee"})
        assert again["replayed"] is True
        with pytest.raises(HubError) as caught:
            await sender.request({"type": "gift", "room": room, "gift_id": str(uuid.uuid4()),
                                  "gift": "castle"})
        assert caught.value.code == "insufficient_coins"
