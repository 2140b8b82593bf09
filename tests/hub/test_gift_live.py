"""Combos, goals and boards: kept in Redis, shared by every node, and sent to the room."""

import asyncio
import datetime as dt
import secrets
import uuid
from typing import Any

from gateway.gifts import COMBO_SCAN_S, GiftRequest
from ledger.projection import RedisProjection
from livecore.economy import iso_week
from livecore.ids import StreamId
from livecore.streams import StreamEvent
from tests.hub.conftest import send_gift


def _request(room: str, gift: str = "rose", quantity: int = 1) -> GiftRequest:
    return GiftRequest(uuid.uuid4(), StreamId(uuid.UUID(room)), gift, quantity)


async def test_a_combo_continues_across_nodes_and_its_end_is_announced_once(
        node, economy, services, make_services, monkeypatch):
    """Two gift services (two gateway processes) share one combo; both scan for lapsed
    combos, and exactly one announces its end."""
    other = make_services()
    window_s = 1.0
    for svc in (services, other):
        monkeypatch.setattr(svc.gifts.projection, "combo_window_s", window_s)
    await other.gifts.start()
    try:
        room = economy["stream"]
        viewer = await services.accounts.get(uuid.UUID(economy["viewer_id"]))
        async with node.client() as watcher:
            await watcher.subscribe(room)
            _, first = await services.gifts.send(viewer, _request(room, "rose", 2))
            _, second = await other.gifts.send(viewer, _request(room, "rose", 3))
            # Another gift is another combo, and does not break the rose combo.
            _, heart = await other.gifts.send(viewer, _request(room, "heart"))
            assert (first, second, heart) == (2, 5, 1)
            sender = {"id": economy["viewer_id"], "username": viewer.username}
            ended = [await watcher.next_event("gift.combo_ended", timeout=15)
                     for _ in range(2)]
            assert sorted((e["data"] for e in ended), key=lambda d: d["gift"]) == [
                {"sender": sender, "gift": "heart", "combo": 1},
                {"sender": sender, "gift": "rose", "combo": 5}]
            # Both nodes keep scanning; nothing is left to claim, so nothing else comes.
            await asyncio.sleep(COMBO_SCAN_S * 6)
            assert not await services.redis.zrangebyscore(
                services.gifts.projection.open_combos, "-inf", "+inf")
            await services.bus.publish(room, "likes", {"total": 0, "delta": 1}, 0.0)
            await watcher.next_event("likes")
            assert len(watcher.events_of("gift.combo_ended")) == 2
            sent = [e["data"]["combo"] for e in watcher.events_of("gift.sent")]
            assert sent == [2, 5, 1]
            # After the end, the same gift starts a new combo.
            _, again = await other.gifts.send(viewer, _request(room, "rose"))
            assert again == 1
    finally:
        await other.gifts.stop()


async def test_combo_rule_replays_and_lapses_in_redis(services):
    """The script applies the pure rule with the gifts' commit times; a replay bumps
    nothing; a lapsed combo is ended by the next gift of its kind or by a scanner, once."""
    prefix = f"{services.bus.prefix}combo{secrets.token_hex(3)}:"
    projection = RedisProjection(services.redis, prefix)
    stream, creator, sender = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    t0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)

    async def apply(gift_id, seconds, quantity=1):
        return await projection.apply(
            gift_id=gift_id, stream_id=stream, creator_id=creator, sender_id=sender,
            coins=quantity, at=t0 + dt.timedelta(seconds=seconds), gift="rose",
            quantity=quantity, streakable=True, sender_username="ada")

    ids = [uuid.uuid4() for _ in range(4)]
    assert (await apply(ids[0], 0, 2)).combo == 2
    assert (await apply(ids[1], 4.9)).combo == 3
    replay = await apply(ids[1], 4.9)
    assert replay.counted is False and replay.combo is None
    # Out of order (another node's batch committed earlier): still the same combo.
    assert (await apply(ids[2], 3.0)).combo == 4
    # 5 s after the latest gift: the window lapsed, so this gift ends the combo and starts one.
    lapsed = await apply(ids[3], 9.9)
    assert lapsed.combo == 1
    assert lapsed.ended is not None and (lapsed.ended.count, lapsed.ended.gift) == (4, "rose")
    assert lapsed.ended.sender_username == "ada"
    # The scanner ends the new combo once its deadline passed, and only once.
    assert await projection.claim_ended_combos(t0 + dt.timedelta(seconds=14.8)) == []
    claimed = await projection.claim_ended_combos(t0 + dt.timedelta(seconds=15))
    assert [(c.stream_id, c.sender_id, c.count) for c in claimed] == [(str(stream), str(sender),
                                                                        1)]
    assert await projection.claim_ended_combos(t0 + dt.timedelta(seconds=60)) == []
    totals = await projection.totals(stream)
    assert (totals.coins, totals.gifts) == (5, 4)


async def test_weekly_and_all_time_creator_boards(node, economy, services):
    api = node.api
    creator = economy["creator_id"]
    await send_gift(api, economy["viewer"], economy["stream"], "heart", 2)
    await send_gift(api, economy["viewer"], economy["stream"], "rose")
    expected = [{"user_id": economy["viewer_id"], "coins": 11}]
    response, week = await api.request("GET", f"/api/v1/creators/{creator}/leaderboard")
    assert response.status == 200
    assert (week["period"], week["week"], week["top"]) == (
        "week", iso_week(dt.datetime.now(dt.UTC)), expected)
    _, all_time = await api.request("GET",
                                    f"/api/v1/creators/{creator}/leaderboard?period=all")
    assert (all_time["week"], all_time["top"]) == (None, expected)
    _, old = await api.request("GET",
                               f"/api/v1/creators/{creator}/leaderboard?week=2020-W01")
    assert old["top"] == []
    # A gift committed in another week counts on that week's board only.
    stream = uuid.UUID(economy["stream"])
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
    await services.gifts.projection.apply(
        gift_id=uuid.uuid4(), stream_id=uuid.uuid4(), creator_id=uuid.UUID(creator),
        sender_id=stream, coins=7, at=past)
    _, last_week = await api.request(
        "GET", f"/api/v1/creators/{creator}/leaderboard?week={iso_week(past)}")
    assert last_week["top"] == [{"user_id": str(stream), "coins": 7}]
    ttl = await services.redis.ttl(
        f"{services.bus.prefix}proj:creator:{{{creator}}}:week:{iso_week(past)}")
    assert 0 < ttl <= 5 * 7 * 86400
    for query, code in (("period=month", "invalid_period"), ("week=2026-48", "invalid_week"),
                        ("week=2026-W60", "invalid_week")):
        response, body = await api.request("GET",
                                           f"/api/v1/creators/{creator}/leaderboard?{query}")
        assert (response.status, body["error"]["code"]) == (400, code)
    response, body = await api.request("GET", f"/api/v1/creators/{uuid.uuid4()}/leaderboard")
    assert (response.status, body["error"]["code"]) == (404, "user_not_found")
    # The gift above is not in the ledger: end the stream so no audit of live streams sees it.
    await api.request("POST", f"/api/v1/streams/{economy['stream']}/end",
                      token=economy["creator"])


async def test_a_goal_counts_gifts_from_when_it_was_set_and_reaches_the_room(node, economy):
    api, room = node.api, economy["stream"]
    path = f"/api/v1/streams/{room}/goal"
    await send_gift(api, economy["viewer"], room, "coffee")  # before the goal: not counted
    response, body = await api.request("GET", path)
    assert (response.status, body["error"]["code"]) == (404, "goal_not_found")
    response, body = await api.request("PUT", path, token=economy["viewer"],
                                       json={"target_coins": 20})
    assert (response.status, body["error"]["code"]) == (403, "not_stream_owner")
    response, body = await api.request("PUT", path, token=economy["creator"],
                                       json={"target_coins": 0})
    assert response.status == 422
    async with node.client() as watcher:
        await watcher.subscribe(room)
        response, goal = await api.request("PUT", path, token=economy["creator"],
                                           json={"target_coins": 20, "title": " New mic "})
        assert response.status == 200, goal
        assert (goal["progress_coins"], goal["percent"], goal["reached"], goal["title"]) == (
            0, 0, False, "New mic")
        event = await watcher.next_event("goal.updated")
        assert event["data"] == {"target_coins": 20, "progress_coins": 0, "percent": 0,
                                 "reached": False, "title": "New mic"}
        await send_gift(api, economy["viewer"], room, "coffee")
        event = await watcher.next_event("goal.updated")
        assert (event["data"]["progress_coins"], event["data"]["percent"]) == (10, 50)
        await send_gift(api, economy["viewer"], room, "heart", 2)
        event = await watcher.next_event("goal.updated")
        assert (event["data"]["progress_coins"], event["data"]["reached"]) == (20, True)
        # The room's order: the gift, then the goal it moved.
        types = [m["type"] for m in watcher.received
                 if m["type"] in ("gift.sent", "goal.updated")]
        assert types == ["goal.updated", "gift.sent", "goal.updated", "gift.sent",
                         "goal.updated"]
        board = await watcher.next_event(
            "leaderboard.updated", where=lambda e: e["data"]["coins"] == 30)
        assert board["data"]["top"][0]["user"]["id"] == economy["viewer_id"]
        assert board["data"]["top"][0]["coins"] == 30 and board["data"]["gifts"] == 3
    response, goal = await api.request("GET", path)
    assert (goal["progress_coins"], goal["percent"], goal["reached"]) == (20, 100, True)
    # A new subscriber's snapshot has the goal and the board.
    async with node.client() as late:
        snapshot = (await late.subscribe(room))["snapshot"]
        assert snapshot["goal"]["progress_coins"] == 20
        assert snapshot["leaderboard"]["coins"] == 30
        assert snapshot["leaderboard"]["top"][0]["user"]["username"]
        # Replacing the goal restarts the count; removing it tells the room.
        response, goal = await api.request("PUT", path, token=economy["creator"],
                                           json={"target_coins": 100})
        assert goal["progress_coins"] == 0
        await late.next_event("goal.updated", where=lambda e: e["data"]["target_coins"] == 100)
        response, _ = await api.request("DELETE", path, token=economy["creator"])
        assert response.status == 204
        await late.next_event("goal.cleared")
        assert (await late.subscribe(room))["snapshot"]["goal"] is None
    response, body = await api.request("DELETE", path, token=economy["creator"])
    assert (response.status, body["error"]["code"]) == (404, "goal_not_found")
    await api.request("POST", f"/api/v1/streams/{room}/end", token=economy["creator"])
    response, body = await api.request("PUT", path, token=economy["creator"],
                                       json={"target_coins": 5})
    assert (response.status, body["error"]["code"]) == (409, "stream_ended")


async def test_a_burst_of_gifts_gives_few_leaderboard_events_and_the_last_is_whole(
        node, economy):
    api, room = node.api, economy["stream"]
    burst = 30
    async with node.client() as watcher:
        await watcher.subscribe(room)
        await asyncio.gather(*(send_gift(api, economy["viewer"], room) for _ in range(burst)))
        await watcher.next_event("leaderboard.updated",
                                 where=lambda e: e["data"]["coins"] == burst)
        boards = watcher.events_of("leaderboard.updated")
        # Coalesced (one per room per second per node, plus the trailing one).
        assert len(boards) < burst // 3
        coins = [b["data"]["coins"] for b in boards]
        assert coins == sorted(coins) and coins[-1] == burst
        assert len(watcher.events_of("gift.sent")) == burst


async def test_leaderboard_names_come_from_gifts_or_the_database(node, economy, services):
    """A room's board names its gifters: from the gifts this node settled, or, for gifters it
    has not seen (sent through another node, or before a restart), from the database."""
    api, room = node.api, economy["stream"]
    _, me = await api.request("GET", "/api/v1/me", token=economy["viewer"])
    async with node.client() as watcher:
        await watcher.subscribe(room)
        await send_gift(api, economy["viewer"], room, "rose")
        # The name is learnt before the board event is scheduled.
        await watcher.next_event("leaderboard.updated")
    assert economy["viewer_id"] in services.gifts._names
    stream = StreamId(uuid.UUID(room))
    learnt = await services.gifts.room_board(stream, fresh=True)
    assert learnt["top"][0]["user"] == {"id": economy["viewer_id"], "username": me["username"]}
    services.gifts._names.clear()
    assert await services.gifts.room_board(stream, fresh=True) == learnt


async def test_a_gift_committed_before_the_end_is_not_dated_after_it(economy, services,
                                                                     monkeypatch):
    """The end's time is read, a gift commits (its batch read the clock later), then the end
    is applied, as when an end waits for the batch that holds the stream's row: the stream
    is not dated as ended before a gift it took."""
    monkeypatch.setattr(services.gifts.projection, "combo_window_s", 1.0)
    room = economy["stream"]
    viewer = await services.accounts.get(uuid.UUID(economy["viewer_id"]))
    end_read_at = dt.datetime.now(dt.UTC)
    outcome, _ = await services.gifts.send(viewer, _request(room))
    assert outcome.created_at > end_read_at
    ended = await services.streams.transition(StreamId(uuid.UUID(room)), StreamEvent.END,
                                              end_read_at)
    assert ended.ended_at is not None and outcome.created_at <= ended.ended_at


async def test_a_stream_ended_by_the_lapsed_lease_sweep_is_not_dated_before_its_gifts(
        economy, services, monkeypatch):
    """The sweep that ends streams whose node died (gateway/media.py) follows the same rule
    as an end through the API: a gift committed before the sweep is not dated after it."""
    monkeypatch.setattr(services.gifts.projection, "combo_window_s", 1.0)
    room = StreamId(uuid.UUID(economy["stream"]))
    viewer = await services.accounts.get(uuid.UUID(economy["viewer_id"]))
    sweep_read_at = dt.datetime.now(dt.UTC)
    outcome, _ = await services.gifts.send(viewer, _request(str(room)))
    assert outcome.created_at > sweep_read_at
    # This stream's node died long ago; no other stream's lease is that old.
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    await services.pool.execute("UPDATE streams SET media_lease_until = $2 WHERE id = $1",
                                room, long_ago)
    ended = await services.streams.end_lapsed(
        sweep_read_at, lease_before=long_ago + dt.timedelta(seconds=1),
        started_before=long_ago)
    assert ended == [room]
    stream = await services.streams.get(room)
    assert stream.ended_at is not None and outcome.created_at <= stream.ended_at


async def test_concurrent_gifts_and_an_end_agree_with_commit_order(node, economy, services,
                                                                   monkeypatch):
    """Gifts racing the end of their stream: each is either committed (and dated no later
    than the end) or refused with stream_not_live, and the ledger holds exactly the
    committed ones."""
    monkeypatch.setattr(services.gifts.projection, "combo_window_s", 1.0)
    api, room, viewer = node.api, economy["stream"], economy["viewer"]

    async def gift() -> tuple[int, Any]:
        response, body = await api.request("POST", "/api/v1/gifts", token=viewer, json={
            "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "rose"})
        return response.status, body

    async def end() -> int:
        await send_gift(api, viewer, room)  # gifts are flowing
        response, _ = await api.request("POST", f"/api/v1/streams/{room}/end",
                                        token=economy["creator"])
        return response.status

    ending = asyncio.ensure_future(end())
    answers = await asyncio.gather(*(gift() for _ in range(40)))
    assert await ending == 200
    codes = {status if status == 201 else body["error"]["code"] for status, body in answers}
    assert codes <= {201, "stream_not_live"}, answers
    _, stream = await api.request("GET", f"/api/v1/streams/{room}")
    ended_at = dt.datetime.fromisoformat(stream["ended_at"])
    committed = {body["gift_id"]: dt.datetime.fromisoformat(body["created_at"])
                 for status, body in answers if status == 201}
    assert all(at <= ended_at for at in committed.values()), (ended_at, committed)
    rows = await services.pool.fetch("SELECT id, created_at FROM gifts WHERE stream_id = $1",
                                     uuid.UUID(room))
    assert all(row["created_at"] <= ended_at for row in rows)
    assert set(committed) <= {str(row["id"]) for row in rows}
    assert len(rows) == len(committed) + 1  # and the one sent before the end
