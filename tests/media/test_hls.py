"""HLS and LL-HLS output of a live stream, read back like a player would (tests/media)."""

from __future__ import annotations

import asyncio
import fractions
import io
import time
from pathlib import Path

import av
import m3u8  # type: ignore[import-untyped]
import pytest

from gateway.hls import PLAYLIST_TYPE, Packager
from livecore.hls import TICKS_PER_S
from tests.media.test_whip_whep import (
    HEIGHT,
    WIDTH,
    new_stream,
    publish,
    until,
)
from tests.support import ApiClient, until_state


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


def decoded_audio(init: bytes, media: bytes) -> list[av.AudioFrame]:
    with av.open(io.BytesIO(init + media), mode="r", format="mp4") as container:
        assert [s.codec_context.name for s in container.streams.audio] == ["aac"]
        return list(container.decode(audio=0))


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_a_live_stream_has_ll_hls_with_blocking_reload_and_a_replay(
        media_api: ApiClient, codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """H.264 is packaged as sent; VP8 is encoded once to H.264 for HLS; Opus audio to AAC."""
    api = media_api
    monkeypatch.setattr("gateway.media.VIDEO_CODECS",
                        ("video/H264", "video/VP8") if codec == "H264" else ("video/VP8",))
    stream_id, key, _ = await new_stream(api)
    status, _, _ = await playlist(api, stream_id)
    assert status == 404  # nothing before media
    publisher, location = await publish(api, stream_id, key, video_codec=codec)
    try:
        await until_state(api, stream_id, "live")

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
    await until_state(api, stream_id, "ended")
    # The replay: a VOD playlist of every segment from the start, each decodable.
    status, text, headers = await playlist(api, stream_id)
    assert status == 200 and "#EXT-X-ENDLIST" in text and "#EXT-X-PLAYLIST-TYPE:VOD" in text
    assert "#EXT-X-PART:" not in text and "PRELOAD-HINT" not in text
    replay = m3u8.loads(text)
    assert replay.media_sequence == 0 and len(closed(replay)) >= 2
    init = await fetch(api, stream_id, "init.mp4")
    total = samples = 0
    for entry in replay.segments:
        media = await fetch(api, stream_id, entry.uri)
        frames = decoded(init, media)
        assert frames, entry.uri
        total += len(frames)
        # The publisher's Opus audio, encoded once to AAC, in the same fragments.
        samples += sum(frame.samples for frame in decoded_audio(init, media))
    assert total >= 30
    seconds = sum(entry.duration for entry in replay.segments)
    assert samples >= 0.5 * seconds * 48_000  # audio for most of the recording


def h264_access_units(frames: int, gop: int) -> list[tuple[bytes, int, bool]]:
    """Annex-B access units as a WebRTC publisher sends them: (data, pts at 90 kHz, key)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 160, 120, "yuv420p"
    encoder.time_base = fractions.Fraction(1, 90_000)
    encoder.framerate = fractions.Fraction(30, 1)
    encoder.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": str(gop)}
    units = []
    for index in range(frames):
        frame = av.VideoFrame(160, 120, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([index * 5 % 256]) * plane.buffer_size)
        frame.pts, frame.time_base = index * 3000, encoder.time_base
        units += [(bytes(p), int(p.pts or 0), p.is_keyframe) for p in encoder.encode(frame)]
    return units


def opus_packets(count: int) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "stereo", "s16"
    encoder.time_base = fractions.Fraction(1, 48_000)
    packets = []
    for index in range(count):
        frame = av.AudioFrame(format="s16", layout="stereo", samples=960)
        frame.sample_rate = 48_000
        frame.planes[0].update(bytes([index % 7]) * frame.planes[0].buffer_size)
        frame.pts = index * 960
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets


async def test_the_packager_cuts_parts_and_segments_from_the_fragments_boxes(
        tmp_path: Path) -> None:
    """Without WebRTC: 4 s of H.264 (a keyframe every second) and Opus into the packager.
    Parts are read from the fragments' own boxes, segments start on keyframes, nothing is
    lost: every frame and most of the audio decode back from the replay."""
    packager = Packager(tmp_path, audio=True)
    audio = iter(opus_packets(200))
    for data, pts, key in h264_access_units(120, gop=30):
        packager.add_video(data, pts, key)
        for _ in range(2 if pts % 9000 else 1):  # 20 ms Opus packets beside 33 ms frames
            packager.add_audio(next(audio), time.monotonic())
    packager.finish()
    segments = packager.rendition.segments
    assert len(segments) >= 2
    assert all(segment.parts[0].independent for segment in segments)
    total_s = sum(segment.duration for segment in segments) / TICKS_PER_S
    assert 3.8 <= total_s <= 4.1  # 120 frames at 30 fps, cut from the boxes' sample durations
    init = (tmp_path / "init.mp4").read_bytes()
    frames = samples = 0
    for segment in segments:
        media = (tmp_path / segment.uri).read_bytes()
        frames += len(decoded(init, media))
        samples += sum(frame.samples for frame in decoded_audio(init, media))
    assert frames == 120
    assert samples >= 0.5 * total_s * 48_000
    replay = m3u8.loads((tmp_path / "index.m3u8").read_text())
    assert [s.uri for s in replay.segments] == [s.uri for s in segments]
