"""Gifts end to end: HTTP and websocket, the ledger, and the room."""

import asyncio
import datetime as dt
import uuid

import pytest

from gateway.client import HubError
from tests.hub.conftest import send_gift as _send


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
    assert wallet == {"coins": 100, "diamonds": 0, "debt_coins": 0}


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


async def test_projection_counts_each_gift_once_and_rebuilds_after_loss(node, economy,
                                                                        services):
    from ledger.projection import postgres_totals

    api, room = node.api, economy["stream"]
    first = await _send(api, economy["viewer"], room, "heart", 2)
    await _send(api, economy["viewer"], room, "rose", 3)
    response, board = await api.request("GET", f"/api/v1/streams/{room}/leaderboard")
    assert response.status == 200
    assert (board["coins"], board["gifts"]) == (13, 2)
    assert board["top"] == [{"user_id": economy["viewer_id"], "coins": 13}]
    projection = services.gifts.projection
    # Applying the same gift again (a replay after a crash) changes nothing.
    again = await projection.apply(gift_id=uuid.UUID(first["gift_id"]),
                                   stream_id=uuid.UUID(room),
                                   creator_id=uuid.UUID(economy["creator_id"]),
                                   sender_id=uuid.UUID(economy["viewer_id"]), coins=10,
                                   at=dt.datetime.fromisoformat(first["created_at"]),
                                   gift="heart", quantity=2, streakable=True)
    assert again.counted is False and again.combo is None
    # Redis loses the stream's keys: a reconciliation reports and repairs the difference.
    keys = [k async for k in services.redis.scan_iter(match=f"*proj:stream:{{{room}}}*")]
    await services.redis.delete(*keys)
    difference = await projection.reconcile(services.pool, uuid.UUID(room), repair=True)
    assert difference is not None and difference.redis.coins == 0
    assert difference.postgres.coins == 13
    assert await projection.reconcile(services.pool, uuid.UUID(room), repair=False) is None
    truth = await postgres_totals(services.pool, uuid.UUID(room), top=None)
    assert (await projection.totals(uuid.UUID(room))) == truth


async def test_the_server_notices_redis_lost_its_data_and_rebuilds(node, economy, services):
    api, room = node.api, economy["stream"]
    await _send(api, economy["viewer"], room, "coffee")
    keys = [k async for k in services.redis.scan_iter(match=f"{services.bus.prefix}proj:*")]
    await services.redis.delete(*keys)  # as if Redis restarted empty
    board = None
    for _ in range(40):  # the watcher checks every 2 s
        _, board = await api.request("GET", f"/api/v1/streams/{room}/leaderboard")
        if board["coins"] == 10:
            break
        await asyncio.sleep(0.25)
    assert board is not None and board["coins"] == 10


async def test_a_gift_to_a_stream_that_ended_while_cached_is_refused(node, economy, services,
                                                                     monkeypatch):
    """The gateway caches live streams; another node (here: straight SQL) ends the stream,
    and the next gift is refused by the ledger, not accepted from the stale cache."""
    # A short combo window: the rose's combo leaves no open combo to later tests.
    monkeypatch.setattr(services.gifts.projection, "combo_window_s", 1.0)
    api, room = node.api, economy["stream"]
    async with node.client() as watcher:
        await watcher.subscribe(room)
        first = await _send(api, economy["viewer"], room)  # caches the live stream
        await services.pool.execute(
            "UPDATE streams SET state = 'ended', ended_at = now() WHERE id = $1::uuid", room)
        for _ in range(2):  # from the stale cache, then from a fresh read
            response, answer = await api.request("POST", "/api/v1/gifts",
                                                 token=economy["viewer"], json={
                "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "rose"})
            assert (response.status, answer["error"]["code"]) == (409, "stream_not_live")
            assert answer["error"]["state"] == "ended"
        await watcher.next_event("gift.sent")
        assert [e["data"]["gift_id"] for e in watcher.events_of("gift.sent")] == [
            first["gift_id"]]
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=economy["viewer"])
    assert wallet["coins"] == 100 - first["coins"]


async def test_concurrent_gifts_reach_the_room_once_each_in_commit_order(node, economy,
                                                                          services,
                                                                          monkeypatch):
    """Gifts committed together are projected and published together (one Redis round trip
    each): every gift once, and the room sees the combo counts in the order they were
    counted."""
    # A short window: the combo lapses soon after, and leaves no open combo to later tests.
    monkeypatch.setattr(services.gifts.projection, "combo_window_s", 1.0)
    api, room = node.api, economy["stream"]
    async with node.client() as watcher:
        await watcher.subscribe(room)
        sent = await asyncio.gather(*[_send(api, economy["viewer"], room, "heart")
                                      for _ in range(10)])
        assert sorted(s["combo"] for s in sent) == list(range(1, 11))
        for _ in range(10):
            await watcher.next_event("gift.sent")
        events = watcher.events_of("gift.sent")
        assert [e["data"]["combo"] for e in events] == list(range(1, 11))
        assert sorted(e["data"]["gift_id"] for e in events) == sorted(s["gift_id"] for s in sent)
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs)
        _, board = await api.request("GET", f"/api/v1/streams/{room}/leaderboard")
        assert (board["gifts"], board["coins"]) == (10, 50)
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=economy["viewer"])
    assert wallet["coins"] == 50


#: What a gift's answer says about the gift itself (a retry also says replayed, and only a
#: new streakable gift carries its combo).
_STORED = ("gift_id", "stream_id", "gift", "quantity", "coins", "created_at")


async def test_a_retry_gets_the_stored_answer_whatever_changed_since(node, economy):
    """A gift committed (and charged) is answered as committed on every retry with its id,
    over HTTP and over the websocket, after its gift type was repriced, then withdrawn, then
    its stream ended; only new ids meet the new state."""
    api, room, viewer = node.api, economy["stream"], economy["viewer"]
    slug = f"kite{uuid.uuid4().hex[:8]}"
    kite = {"name": "Kite", "price_coins": 7, "streakable": False, "animation": "kite"}
    response, _ = await api.request("PUT", f"/api/v1/gifts/catalogue/{slug}",
                                    token=economy["admin"], json=kite)
    assert response.status == 200
    by_http = {"gift_id": str(uuid.uuid4()), "stream_id": room, "gift": slug}
    response, first_http = await api.request("POST", "/api/v1/gifts", token=viewer, json=by_http)
    assert response.status == 201, first_http
    async with node.client(viewer) as sender:
        await sender.subscribe(room)
        by_ws = {"type": "gift", "room": room, "gift_id": str(uuid.uuid4()), "gift": slug}
        first_ws = await sender.request(by_ws)
        assert first_ws["replayed"] is False

        async def retries_match(state: str) -> None:
            response, again = await api.request("POST", "/api/v1/gifts", token=viewer,
                                                json=by_http)
            assert response.status == 200, (state, again)
            assert again["replayed"] is True and again["balance"] == 86, state
            assert {k: again[k] for k in _STORED} == {k: first_http[k] for k in _STORED}
            again = await sender.request(by_ws)
            assert again["replayed"] is True, state
            assert {k: again[k] for k in _STORED} == {k: first_ws[k] for k in _STORED}
            response, clash = await api.request("POST", "/api/v1/gifts", token=viewer,
                                                json={**by_http, "quantity": 2})
            assert (response.status, clash["error"]["code"]) == (409, "gift_id_conflict"), state

        await retries_match("live")
        response, _ = await api.request("PUT", f"/api/v1/gifts/catalogue/{slug}",
                                        token=economy["admin"], json={**kite, "price_coins": 9})
        assert response.status == 200
        await retries_match("repriced")
        response, _ = await api.request("PUT", f"/api/v1/gifts/catalogue/{slug}",
                                        token=economy["admin"], json={**kite, "is_active": False})
        assert response.status == 200
        await retries_match("withdrawn")
        response, fresh = await api.request("POST", "/api/v1/gifts", token=viewer, json={
            **by_http, "gift_id": str(uuid.uuid4())})
        assert (response.status, fresh["error"]["code"]) == (422, "gift_unavailable")
        response, _ = await api.request("POST", f"/api/v1/streams/{room}/end",
                                        token=economy["creator"])
        assert response.status == 200
        await retries_match("ended")
        response, fresh = await api.request("POST", "/api/v1/gifts", token=viewer, json={
            "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "rose"})
        assert (response.status, fresh["error"]["code"]) == (409, "stream_not_live")
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=viewer)
    assert wallet["coins"] == 100 - 2 * 7


async def test_concurrent_duplicate_gifts_are_answered_as_a_retry_is(node, economy):
    """Five identical gifts at once over HTTP: one 201, four 200 replays, each equal to
    what a retry afterwards gets; the coins move once."""
    api, room, viewer = node.api, economy["stream"], economy["viewer"]
    body = {"gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "coffee"}

    async def send() -> tuple[int, dict[str, object]]:
        response, answer = await api.request("POST", "/api/v1/gifts", token=viewer, json=body)
        return response.status, answer

    answers = await asyncio.gather(*(send() for _ in range(5)))
    status, retry = await send()
    assert status == 200 and retry["replayed"] is True, retry
    assert sorted(s for s, _ in answers) == [200, 200, 200, 200, 201], answers
    for _, answer in answers:
        assert {k: answer[k] for k in (*_STORED, "balance")} == {
            k: retry[k] for k in (*_STORED, "balance")}
    assert retry["balance"] == 90
