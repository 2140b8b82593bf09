"""HLS and LL-HLS output of a live stream, read back like a player would (tests/media)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import random
import re
import time
import tracemalloc
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import av
import m3u8  # type: ignore[import-untyped]
import pytest
from aiohttp import web

from gateway.hls import (
    PART_TARGET_S,
    PLAYLIST_TYPE,
    TARGET_DURATION_S,
    HlsOutput,
    Packager,
    Transcoder,
)
from livecore.errors import ClientError, NotFound
from livecore.hls import TICKS_PER_S
from livecore.ids import StreamId
from tests.media.test_whip_whep import (
    HEIGHT,
    WIDTH,
    new_stream,
    publish,
    until,
)
from tests.media_sources import CLOCK, FPS, Source, h264_source, vp8_source
from tests.support import ApiClient, page_errors, until_state


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


# -- at real bitrates: every part and segment read back by an independent reader ------------


@dataclass
class Packaged:
    """What a packager made of a source, gathered while it was live."""

    source: Source
    directory: Path
    playlists: list[str] = field(default_factory=list)  # after each new part
    parts: dict[str, bytes] = field(default_factory=dict)  # read as soon as each was listed
    first_segment_at: int | None = None  # pts fed when segment 0 was closed


def package(source: Source, directory: Path, *, loops: int = 1) -> Packaged:
    """Feed ``source`` (``loops`` times, end to end) to a packager the way gateway/media.py
    does, and read every playlist and part as a live client would, as soon as they exist."""
    packager = Packager(directory)
    packaged = Packaged(source, directory)
    span = source.units[-1].pts + CLOCK // FPS
    seen = 0
    for loop in range(loops):
        for unit in source.units:
            pts = unit.pts + loop * span
            packager.add_video(unit.data, pts, unit.keyframe)
            rendition = packager.rendition
            count = sum(len(s.parts) for s in rendition.segments)
            if rendition.next_part is not None:
                count += rendition.next_part.index
            if count == seen:
                continue
            seen = count
            packaged.playlists.append(rendition.render())
            if rendition.segments and packaged.first_segment_at is None:
                packaged.first_segment_at = pts
            listed = re.findall(r'#EXT-X-PART:.*URI="(part[0-9.]+\.m4s)"', packaged.playlists[-1])
            for name in listed:
                if name not in packaged.parts:
                    data = packager.read_part(name)
                    assert data is not None, name
                    packaged.parts[name] = data
    packager.finish()
    for segment in packager.rendition.segments:  # the parts the end flushed out
        for part in segment.parts:
            if part.uri not in packaged.parts:
                data = packager.read_part(part.uri)
                assert data is not None, part.uri
                packaged.parts[part.uri] = data
    return packaged


def demuxed(init: bytes, media: bytes) -> list[av.Packet]:
    with av.open(io.BytesIO(init + media), mode="r", format="mp4") as container:
        return [packet for packet in container.demux(video=0) if packet.size]


def check_packaged(packaged: Packaged) -> None:
    """The RFC's rules on every playlist, and every part and segment demuxed and decoded."""
    from tests.unit.test_hls import read_lines, read_m3u8

    targets, part_targets, sequences = set(), set(), []
    for text in packaged.playlists:
        seen = read_lines(text)  # EXTINF <= target, parts <= PART-TARGET, the spec's lines
        playlist = read_m3u8(text, seen)  # and the m3u8 library agrees
        targets.add(playlist.target_duration)
        part_targets.add(playlist.part_inf.part_target)
        sequences.append(playlist.media_sequence)
    assert targets == {TARGET_DURATION_S}  # never changes (RFC 8216 6.2.1)
    assert part_targets == {PART_TARGET_S}
    assert sequences == sorted(sequences)
    directory = packaged.directory
    init = (directory / "init.mp4").read_bytes()
    replay_text = (directory / "index.m3u8").read_text()
    replay = read_m3u8(replay_text, read_lines(replay_text))
    assert replay.media_sequence == 0 and replay.is_endlist
    assert replay.target_duration == TARGET_DURATION_S
    uris = [segment.uri for segment in replay.segments]
    assert uris == [f"seg{n}.m4s" for n in range(len(uris))]  # every segment, in order
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [*uris, "index.m3u8", "init.mp4"])  # no open (.tmp) segment left behind
    # Each segment: its parts, as served live, are its bytes; each part demuxes alone into
    # whole samples; the segment decodes frame for frame.
    frames = 0
    pts: list[int] = []
    for msn, entry in enumerate(replay.segments):
        media = (directory / entry.uri).read_bytes()
        names = sorted((n for n in packaged.parts if n.startswith(f"part{msn}.")),
                       key=lambda n: int(n.split(".")[1]))
        assert names, entry.uri
        assert b"".join(packaged.parts[n] for n in names) == media
        in_parts = 0
        for name in names:
            part = packaged.parts[name]
            assert part[4:8] == b"moof", name
            packets = demuxed(init, part)
            assert packets, name
            in_parts += len(packets)
        packets = demuxed(init, media)
        assert in_parts == len(packets)
        seconds = sum(float((p.duration or 0) * (p.time_base or 0)) for p in packets)
        assert seconds == pytest.approx(entry.duration, abs=2e-5)
        if packets[0].is_keyframe:
            decoded_frames = decoded(init, media)
            assert len(decoded_frames) == len(packets)
            assert {(f.width, f.height) for f in decoded_frames} == {
                (packaged.source.width, packaged.source.height)}
        frames += len(packets)
        pts += [int(p.pts or 0) for p in packets]
    assert pts == sorted(set(pts))  # rising, none twice
    # The whole replay, played on from the start as a player does, decodes every frame.
    everything = b"".join((directory / uri).read_bytes() for uri in uris)
    assert len(decoded(init, everything)) == frames


SIZES = [
    pytest.param(1280, 720, 500_000, id="720p-0.5M"),
    pytest.param(1280, 720, 2_500_000, id="720p-2.5M"),
    pytest.param(1280, 720, 6_000_000, id="720p-6M"),
    pytest.param(1280, 720, 8_000_000, id="720p-8M"),
    pytest.param(1920, 1080, 6_000_000, id="1080p-6M"),
]


@pytest.mark.parametrize(("width", "height", "bitrate"), SIZES)
def test_hls_at_real_bitrates_has_whole_parts_and_segments_and_a_fixed_target(
        tmp_path: Path, width: int, height: int, bitrate: int) -> None:
    """OBS-like H.264 (a keyframe every 2 s) at browser and OBS bitrates, 720p and 1080p: a
    fragment is far above PyAV's 32 KiB write buffer, and still every part starts on a box and
    holds whole samples, segments follow the keyframes and close on time, the target duration
    never moves."""
    source = h264_source(width, height, bitrate)
    assert source.measured_bitrate >= 0.8 * bitrate  # the test runs at the bitrate it says
    packaged = package(source, tmp_path)
    check_packaged(packaged)
    replay = m3u8.loads((tmp_path / "index.m3u8").read_text())
    assert [round(s.duration, 3) for s in replay.segments] == [2.0, 2.0]
    assert all(s.parts == [] for s in replay.segments)
    # Segment 0 closed as soon as the keyframe at 2 s began the next one (its part done).
    assert packaged.first_segment_at is not None
    assert packaged.first_segment_at <= 2.5 * CLOCK
    # Every segment starts with a keyframe, in a part marked INDEPENDENT=YES.
    last_live = m3u8.loads(packaged.playlists[-1])
    assert all(s.parts[0].independent == "YES" for s in last_live.segments if s.parts)


def test_keyframes_further_apart_than_the_target_still_close_segments_in_time(
        tmp_path: Path) -> None:
    """A publisher with a keyframe every 5 s (over the 4 s target): segments are cut at the
    target without one, the target stays 4, and the replay still decodes every frame."""
    source = h264_source(640, 360, 1_000_000, seconds=11.0, keyframe_s=5.0)
    packaged = package(source, tmp_path)
    check_packaged(packaged)
    replay = m3u8.loads((tmp_path / "index.m3u8").read_text())
    assert max(s.duration for s in replay.segments) <= TARGET_DURATION_S
    assert len(replay.segments) >= 3


def test_memory_stays_flat_over_a_long_stream(tmp_path: Path) -> None:
    """A minute of 8 Mbit/s: the open segment and the parts are on disk, not in memory. What
    Python holds grows by little between 20 s and 60 s, and peaks below one segment."""
    source = h264_source(1280, 720, 8_000_000)
    packager = Packager(tmp_path)
    span = source.units[-1].pts + CLOCK // FPS
    tracemalloc.start()
    try:
        samples: dict[int, int] = {}
        for loop in range(15):  # 15 x 4 s
            for unit in source.units:
                packager.add_video(unit.data, unit.pts + loop * span, unit.keyframe)
            if loop == 4:  # 20 s in: the live window is full
                samples[20] = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
        samples[60] = tracemalloc.get_traced_memory()[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    packager.finish()
    bytes_per_segment = 2 * 8_000_000 // 8
    assert samples[60] - samples[20] < 256 * 1024
    assert peak - samples[20] < bytes_per_segment
    assert len(packager.rendition.segments) == 30


def test_a_stall_and_jittery_timestamps_keep_every_part_within_its_target(
        tmp_path: Path) -> None:
    """A browser's capture times jitter by a few milliseconds, and a network stall leaves 1.5 s
    without video: no part passes PART-TARGET (the stall lasts one part on the HLS timeline),
    and every frame still decodes."""
    source = h264_source(1280, 720, 2_500_000)
    jitter = random.Random(7)
    units = []
    for unit in source.units:
        stall = 135_000 if unit.pts >= 2 * CLOCK else 0  # 1.5 s, right before the keyframe
        shaken = unit.pts + stall + (jitter.randint(-450, 450) if unit.pts else 0)
        units.append(replace(unit, pts=shaken))
    packaged = package(replace(source, units=tuple(units)), tmp_path)
    check_packaged(packaged)  # parts <= PART-TARGET in every playlist
    replay = m3u8.loads((tmp_path / "index.m3u8").read_text())
    total = sum(s.duration for s in replay.segments)
    assert total == pytest.approx(4.0 - 1 / FPS + PART_TARGET_S, abs=0.02)


async def test_vp8_is_encoded_to_h264_with_a_keyframe_every_segment_length(
        tmp_path: Path) -> None:
    """A browser's VP8 with keyframes 9 s apart: the transcoder's own keyframes (every
    SEGMENT_S) cut the segments, each starting on one, and the output passes every check."""
    source = vp8_source(320, 240, 500_000, seconds=7.0, keyframe_s=9.0)
    packager = Packager(tmp_path)
    transcoder = Transcoder(packager)
    for unit in source.units:
        transcoder.add_vp8(unit.data, unit.pts, unit.keyframe)
    last = source.units[-1].pts
    async with asyncio.timeout(60):
        while packager.last_pts != last:  # noqa: ASYNC110  (results come back on the loop)
            await asyncio.sleep(0.05)
    transcoder.close()
    packager.finish()
    segments = packager.rendition.segments
    assert all(segment.parts[0].independent for segment in segments)
    assert [round(s.duration / TICKS_PER_S, 1) for s in segments] == [2.0, 2.0, 2.0, 1.0]
    init = (tmp_path / "init.mp4").read_bytes()
    frames = sum(len(decoded(init, (tmp_path / s.uri).read_bytes())) for s in segments)
    assert frames == len(source.units)


_PLAYER_PAGE = """<!doctype html><meta charset="utf-8"><video id="v" muted playsinline></video>
<script src="/hls.min.js"></script>
<script>
window.fatal = [];
const video = document.getElementById("v");
const hls = new Hls({lowLatencyMode: true});
hls.on(Hls.Events.ERROR, (_, data) => { if (data.fatal) window.fatal.push(data.details); });
hls.loadSource("/hls/s/index.m3u8");
hls.attachMedia(video);
hls.on(Hls.Events.MANIFEST_PARSED, () => video.play());
video.addEventListener("playing", () => { window.start ??= video.currentTime; });
</script>"""


async def test_hls_js_in_chromium_plays_the_live_stream_at_2_5_mbit(
        tmp_path: Path, browser: Any) -> None:
    """A real LL-HLS player: hls.js in Chromium, against the gateway's HLS answers for a 720p
    stream at 2.5 Mbit/s fed in real time, plays 3 s on with no fatal error."""
    source = h264_source(1280, 720, 2_500_000)
    output = HlsOutput(tmp_path)
    stream_id = StreamId(uuid.UUID(int=1))
    packager = output.start(stream_id)

    async def answer(handler: Any) -> web.StreamResponse:
        try:
            return cast(web.StreamResponse, await handler)
        except ClientError as exc:
            return web.Response(status=exc.status)

    async def playlist_route(request: web.Request) -> web.StreamResponse:
        return await answer(output.playlist(stream_id, request.query))

    async def file_route(request: web.Request) -> web.StreamResponse:
        return await answer(output.file(stream_id, request.match_info["name"]))

    async def page_route(request: web.Request) -> web.StreamResponse:
        return web.Response(text=_PLAYER_PAGE, content_type="text/html")

    async def script_route(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(Path(__file__).parents[2] / "web" / "vendor" / "hls.min.js")

    app = web.Application()
    app.router.add_get("/", page_route)
    app.router.add_get("/hls.min.js", script_route)
    app.router.add_get("/hls/s/index.m3u8", playlist_route)
    app.router.add_get("/hls/s/{name}", file_route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def publish() -> None:
        """The source in a loop, each frame at its time, as a publisher sends it."""
        span = source.units[-1].pts + CLOCK // FPS
        started = asyncio.get_running_loop().time()
        for loop in range(100):
            for unit in source.units:
                pts = unit.pts + loop * span
                delay = started + pts / CLOCK - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
                packager.add_video(unit.data, pts, unit.keyframe)

    feeding = asyncio.ensure_future(publish())
    page = await browser.new_page()
    errors = page_errors(page)
    try:
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function(  # 3 s played, from wherever hls.js started
            "window.start !== undefined && document.getElementById('v').currentTime"
            " >= window.start + 3", timeout=30_000)
        played = await page.evaluate("""() => {
            const video = document.getElementById('v');
            return [video.getVideoPlaybackQuality().totalVideoFrames, window.fatal,
                    video.error && video.error.message];
        }""")
    finally:
        await page.close()
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding
        await runner.cleanup()
        output.finish(stream_id)
    assert played[1] == [] and played[2] is None and errors == []
    assert played[0] >= 60  # frames decoded by the browser (3 s at 30 fps, some dropped)
    assert packager.rendition.target_duration_s == TARGET_DURATION_S


async def test_a_segment_is_served_only_once_whole_and_its_parts_meanwhile(
        tmp_path: Path) -> None:
    """While segment 0 is open its URL is 404 (never half a segment) and its parts are served
    from its file as they are written; once closed, the segment is exactly its parts."""
    source = h264_source(1280, 720, 6_000_000)
    output = HlsOutput(tmp_path)
    stream_id = StreamId(uuid.UUID(int=2))
    packager = output.start(stream_id)
    for unit in source.units:
        if unit.pts >= 1.5 * CLOCK:
            break
        packager.add_video(unit.data, unit.pts, unit.keyframe)
    hint = packager.rendition.next_part
    assert hint is not None and hint.msn == 0 and hint.index > 0  # segment 0 is open
    with pytest.raises(NotFound):
        await output.file(stream_id, "seg0.m4s")
    with pytest.raises(NotFound):
        await output.file(stream_id, "seg0.m4s.tmp")
    served: list[bytes] = []
    for index in range(hint.index):
        response = await output.file(stream_id, f"part0.{index}.m4s")
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert isinstance(response.body, bytes)
        served.append(response.body)
    for unit in source.units:
        if 1.5 * CLOCK <= unit.pts < 2.5 * CLOCK:
            packager.add_video(unit.data, unit.pts, unit.keyframe)
    segment = packager.rendition.segments[0]
    for part in segment.parts[len(served):]:
        body = (await output.file(stream_id, part.uri)).body
        assert isinstance(body, bytes)
        served.append(body)
    response = await output.file(stream_id, "seg0.m4s")
    assert response.body == b"".join(served)
    output.finish(stream_id)
