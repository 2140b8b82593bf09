"""Streams over a real socket against the real PostgreSQL."""

import asyncio
import datetime as dt

from livecore import schemas
from livecore.accounts import Role
from livecore.streams import StreamEvent
from tests.support import assert_matches


async def _create(api, token, **body):
    body.setdefault("title", "Live from the kitchen")
    response, stream = await api.request("POST", "/api/v1/streams", token=token, json=body)
    assert response.status == 201, stream
    return response, stream


async def test_creator_creates_a_stream_and_gets_key_and_urls(api):
    creator, token = await api.new_creator()
    response, stream = await _create(api, token, description="Pasta, slowly.")
    assert_matches(schemas.STREAM, stream)
    assert response.headers["Location"] == f"/api/v1/streams/{stream['id']}"
    assert stream["state"] == "created"
    assert stream["creator_username"] == creator["username"]
    assert stream["stream_key"].startswith("sk_") and len(stream["stream_key"]) > 30
    base = str(api.client.make_url("")).rstrip("/")
    assert stream["whip_url"] == f"{base}/whip/{stream['id']}"
    assert stream["whep_url"] == f"{base}/whep/{stream['id']}"
    assert stream["hls_url"] == f"{base}/hls/{stream['id']}/index.m3u8"


async def test_public_url_setting_shapes_the_urls(make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    services = make_services(public_url="https://live.example.com/")
    async with ApiClient.serving(create_app(services)) as api:
        _, token = await api.new_creator()
        _, stream = await _create(api, token)
    assert stream["whip_url"] == f"https://live.example.com/whip/{stream['id']}"


async def test_the_key_is_shown_only_to_the_owner(api):
    _, owner = await api.new_creator()
    _, stream = await _create(api, owner)
    _, stranger = await api.new_user()
    for token in (None, stranger):
        response, seen = await api.request("GET", f"/api/v1/streams/{stream['id']}", token=token)
        assert response.status == 200
        assert_matches(schemas.STREAM, seen)
        assert "stream_key" not in seen and "whip_url" not in seen
        assert stream["stream_key"] not in str(seen)
    response, mine = await api.request("GET", f"/api/v1/streams/{stream['id']}", token=owner)
    assert mine["stream_key"] == stream["stream_key"]


async def test_viewers_cannot_create_streams(api, services):
    _, token = await api.new_user()
    response, body = await api.request(
        "POST", "/api/v1/streams", token=token, json={"title": "Sneaky"}
    )
    assert (response.status, body["error"]["code"]) == (403, "forbidden_role")
    response, body = await api.request("POST", "/api/v1/streams", json={"title": "Anon"})
    assert (response.status, body["error"]["code"]) == (401, "unauthenticated")


async def test_one_open_stream_per_creator(api, services):
    creator, token = await api.new_creator()
    _, first = await _create(api, token)
    response, body = await api.request(
        "POST", "/api/v1/streams", token=token, json={"title": "Second"}
    )
    assert (response.status, body["error"]["code"]) == (409, "stream_already_open")
    count = await services.pool.fetchval(
        "SELECT count(*) FROM streams WHERE creator_id = $1::uuid", creator["id"]
    )
    assert count == 1
    response, _ = await api.request("POST", f"/api/v1/streams/{first['id']}/end", token=token)
    assert response.status == 200
    await _create(api, token, title="Second")


async def test_concurrent_creates_make_exactly_one_stream(api):
    _, token = await api.new_creator()
    results = await asyncio.gather(
        *(api.request("POST", "/api/v1/streams", token=token, json={"title": f"t{i}"})
          for i in range(6))
    )
    statuses = sorted(response.status for response, _ in results)
    assert statuses == [201] + [409] * 5


async def test_key_rotation(api):
    _, token = await api.new_creator()
    _, stream = await _create(api, token)
    response, rotated = await api.request(
        "POST", f"/api/v1/streams/{stream['id']}/key", token=token
    )
    assert response.status == 200
    assert rotated["stream_key"] != stream["stream_key"]
    assert rotated["stream_key"].startswith("sk_")
    _, moderator = await api.new_user()
    response, body = await api.request(
        "POST", f"/api/v1/streams/{stream['id']}/key", token=moderator
    )
    assert (response.status, body["error"]["code"]) == (403, "not_stream_owner")
    await api.request("POST", f"/api/v1/streams/{stream['id']}/end", token=token)
    response, body = await api.request(
        "POST", f"/api/v1/streams/{stream['id']}/key", token=token
    )
    assert (response.status, body["error"]["code"]) == (409, "invalid_stream_transition")


async def test_lifecycle_and_live_listing(api, services):
    creator, token = await api.new_creator()
    _, stream = await _create(api, token, title="Going live soon")
    response, page = await api.request("GET", "/api/v1/streams")
    assert stream["id"] not in [s["id"] for s in page["streams"]]

    now = dt.datetime.now(dt.UTC)
    live = await services.streams.transition(stream["id"], StreamEvent.START, now)
    assert live.state.value == "live"
    response, page = await api.request("GET", "/api/v1/streams?state=live")
    assert response.status == 200
    assert_matches(schemas.STREAM_LIST, page)
    listed = [s for s in page["streams"] if s["id"] == stream["id"]]
    assert len(listed) == 1 and listed[0]["state"] == "live"
    assert dt.datetime.fromisoformat(listed[0]["started_at"]) == live.started_at
    assert "stream_key" not in listed[0]

    response, ended = await api.request("POST", f"/api/v1/streams/{stream['id']}/end", token=token)
    assert response.status == 200
    assert ended["state"] == "ended"
    assert live.started_at is not None
    ended_at = dt.datetime.fromisoformat(ended["ended_at"])
    assert live.started_at <= ended_at <= dt.datetime.now(dt.UTC)
    response, page = await api.request("GET", "/api/v1/streams?state=live")
    assert stream["id"] not in [s["id"] for s in page["streams"]]
    response, page = await api.request(
        "GET", f"/api/v1/streams?state=ended&creator_id={creator['id']}"
    )
    assert [s["id"] for s in page["streams"]] == [stream["id"]]
    # Ending twice is a conflict, and the stored times do not move.
    response, body = await api.request("POST", f"/api/v1/streams/{stream['id']}/end", token=token)
    assert (response.status, body["error"]["code"]) == (409, "invalid_stream_transition")
    response, again = await api.request("GET", f"/api/v1/streams/{stream['id']}")
    assert again["ended_at"] == ended["ended_at"]


async def test_concurrent_transitions_apply_once(services, api):
    _, token = await api.new_creator()
    _, stream = await _create(api, token)
    now = dt.datetime.now(dt.UTC)
    results = await asyncio.gather(
        *(services.streams.transition(stream["id"], StreamEvent.START, now) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, Exception)) == 1
    assert all(getattr(r, "code", None) == "invalid_stream_transition"
               for r in results if isinstance(r, Exception))


async def test_listing_pages_without_gaps_or_repeats(api, services):
    creator_ids = []
    for _ in range(5):
        creator, token = await api.new_creator()
        await _create(api, token)
        creator_ids.append(creator["id"])
    seen = []
    cursor = None
    while True:
        path = "/api/v1/streams?state=created&limit=2" + (f"&cursor={cursor}" if cursor else "")
        response, page = await api.request("GET", path)
        assert response.status == 200
        seen += page["streams"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [s["id"] for s in seen]
    assert len(ids) == len(set(ids))
    assert {s["creator_id"] for s in seen} >= set(creator_ids)
    stamps = [s["created_at"] for s in seen]
    assert stamps == sorted(stamps, reverse=True)


async def test_owner_and_moderators_edit_and_end_others_cannot(api, services):
    _, owner = await api.new_creator()
    _, stream = await _create(api, owner)
    path = f"/api/v1/streams/{stream['id']}"
    response, updated = await api.request(
        "PATCH", path, token=owner, json={"description": "Now with dessert"}
    )
    assert response.status == 200
    assert updated["description"] == "Now with dessert" and updated["title"] == stream["title"]

    stranger, stranger_token = await api.new_user()
    response, body = await api.request("PATCH", path, token=stranger_token, json={"title": "Mine"})
    assert (response.status, body["error"]["code"]) == (403, "not_stream_owner")
    response, _ = await api.request("POST", path + "/end", token=stranger_token)
    assert response.status == 403

    await services.accounts.set_roles(
        stranger["id"], {Role.MODERATOR}, actor_id=None, reason="t", now=dt.datetime.now(dt.UTC)
    )
    response, body = await api.request("PATCH", path, token=stranger_token, json={"title": "Tidy"})
    assert response.status == 200 and body["title"] == "Tidy"
    assert "stream_key" not in body
    response, body = await api.request("POST", path + "/end", token=stranger_token)
    assert response.status == 200 and body["state"] == "ended"


async def test_bad_stream_text_is_422_and_changes_nothing(api):
    _, token = await api.new_creator()
    _, stream = await _create(api, token)
    path = f"/api/v1/streams/{stream['id']}"
    for body, field in (({"title": "  "}, "title"), ({"title": "x" * 141}, "title"),
                        ({"description": "d" * 2001}, "description")):
        response, error = await api.request("PATCH", path, token=token, json=body)
        assert response.status == 422, body
        assert error["error"]["field"] == field
    _, unchanged = await api.request("GET", path)
    assert unchanged["title"] == stream["title"]
