"""HLS and LL-HLS output of a live stream, read back like a player would (tests/media)."""

from __future__ import annotations

import asyncio
import io

import av
import m3u8  # type: ignore[import-untyped]
import pytest

from gateway.hls import PLAYLIST_TYPE
from tests.media.test_whip_whep import (
    HEIGHT,
    WIDTH,
    _is,
    new_stream,
    publish,
    state_of,
    until,
)
from tests.support import ApiClient


async def playlist(api: ApiClient, stream_id: str,
                   query: str = "") -> tuple[int, str, dict[str, str]]:
    response, _ = await api.request("GET", f"/hls/{stream_id}/index.m3u8{query}")
    return response.status, await response.text(), dict(response.headers)


async def fetch(api: ApiClient, stream_id: str, name: str) -> bytes:
    response, _ = await api.request("GET", f"/hls/{stream_id}/{name}")
    assert response.status == 200, (name, response.status)
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    return await response.read()


def closed(playlist: m3u8.M3U8) -> list[m3u8.Segment]:
    """The playlist's whole segments (m3u8 lists the open segment's parts as one more)."""
    return [segment for segment in playlist.segments if segment.uri]


def decoded(init: bytes, media: bytes) -> list[av.VideoFrame]:
    with av.open(io.BytesIO(init + media), mode="r", format="mp4") as container:
        return list(container.decode(video=0))


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_a_live_stream_has_ll_hls_with_blocking_reload_and_a_replay(
        media_api: ApiClient, codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """H.264 is packaged as sent; VP8 is encoded once to H.264 for HLS."""
    api = media_api
    monkeypatch.setattr("gateway.media.VIDEO_CODECS",
                        ("video/H264", "video/VP8") if codec == "H264" else ("video/VP8",))
    stream_id, key, _ = await new_stream(api)
    status, _, _ = await playlist(api, stream_id)
    assert status == 404  # nothing before media
    publisher, location = await publish(api, stream_id, key, video_codec=codec)
    try:
        await until(lambda: _is(state_of(api, stream_id), "live"))

        async def two_segments() -> bool:
            status, text, _ = await playlist(api, stream_id)
            return status == 200 and len(closed(m3u8.loads(text))) >= 2

        await until(two_segments)
        status, text, headers = await playlist(api, stream_id)
        assert headers["Content-Type"].startswith(PLAYLIST_TYPE)
        assert headers["Cache-Control"] == "public, max-age=1"
        live = m3u8.loads(text)
        assert "#EXT-X-PART-INF:PART-TARGET=" in text
        assert "CAN-BLOCK-RELOAD=YES" in text
        target = live.target_duration
        assert all(round(s.duration) <= target for s in closed(live))
        assert text.rstrip().splitlines()[-1].startswith("#EXT-X-PRELOAD-HINT:TYPE=PART")
        init = await fetch(api, stream_id, "init.mp4")
        segment = await fetch(api, stream_id, closed(live)[0].uri)
        frames = decoded(init, segment)
        assert frames and {(f.width, f.height) for f in frames} == {(WIDTH, HEIGHT)}
        # Blocking reload: ask for the hinted part, not yet made: held until it is.
        hint = text.rstrip().splitlines()[-1].split('URI="')[1].rstrip('"')
        msn, part = hint[len("part"):-len(".m4s")].split(".")
        waiting = asyncio.ensure_future(
            playlist(api, stream_id, f"?_HLS_msn={msn}&_HLS_part={part}"))
        hinted_bytes = await fetch(api, stream_id, hint)  # held until it exists
        status, blocked_text, headers = await waiting
        assert status == 200 and f'URI="{hint}"' in blocked_text
        assert headers["Cache-Control"] == f"public, max-age={6 * target}"
        assert hinted_bytes[4:8] == b"moof"
        status, body, _ = await playlist(api, stream_id, "?_HLS_part=1")
        assert status == 400 and "bad_request" in body
        status, body, _ = await playlist(api, stream_id, f"?_HLS_msn={int(msn) + 10}")
        assert status == 400
        response, _ = await api.request("GET", f"/hls/{stream_id}/nope.ts")
        assert response.status == 404
    finally:
        response, _ = await api.request("DELETE", location,
                                        headers={"Authorization": f"Bearer {key}"})
        await publisher.close()
    await until(lambda: _is(state_of(api, stream_id), "ended"))
    # The replay: a VOD playlist of every segment from the start, each decodable.
    status, text, headers = await playlist(api, stream_id)
    assert status == 200 and "#EXT-X-ENDLIST" in text and "#EXT-X-PLAYLIST-TYPE:VOD" in text
    assert "#EXT-X-PART:" not in text and "PRELOAD-HINT" not in text
    replay = m3u8.loads(text)
    assert replay.media_sequence == 0 and len(closed(replay)) >= 2
    init = await fetch(api, stream_id, "init.mp4")
    total = 0
    for entry in replay.segments:
        frames = decoded(init, await fetch(api, stream_id, entry.uri))
        assert frames, entry.uri
        total += len(frames)
    assert total >= 30
