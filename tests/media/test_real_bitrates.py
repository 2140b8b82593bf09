"""WebRTC at the bitrates users send (tests/media): an aiortc WHIP publisher sends pre-encoded
x264 access units (tests/media_sources.py: 720p at 2.5 Mbit/s, 1080p at 6 Mbit/s, a keyframe
every 2 s as OBS is told to) in real time, without re-encoding them; an aiortc WHEP viewer
receives and decodes what the gateway forwards, and the gateway's LL-HLS output is read back.

The other media tests publish a small flat picture that aiortc encodes itself (about 46 kbit/s),
which hides everything that depends on size: a 1080p keyframe here is some 450 KB, about 360
RTP packets sent in one burst.

The publisher's track returns ``av.Packet``s (pts in the 90 kHz clock): ``RTCRtpSender`` then
packs them with the H.264 packetiser (``H264Encoder.pack``, FU-A/STAP-A, 1300-byte payloads)
and never encodes. Like OBS, it does not answer keyframe requests: keyframes come every 2 s.
Every frame is checked byte for byte (its NAL units) against the access unit that was sent,
both at the viewer and in the HLS segments.

At 1080p this found two losses in gateway/media.py, both of whole keyframes (so of whole GOPs):
the publisher's keyframe burst overflowed the gateway's UDP receive buffer (HLS and every viewer
lost it), and the gateway sent each viewer a keyframe as one burst, which overflowed the
viewer's (see ``enlarge_receive_buffers`` and ``Pacer`` there).
"""

from __future__ import annotations

import asyncio
import fractions
import hashlib
import io
import time
from dataclasses import dataclass, field
from typing import Any

import av
import m3u8  # type: ignore[import-untyped]
import pytest
from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecParameters,
    RTCRtpSender,
    RTCSessionDescription,
    rtcrtpreceiver,
)
from aiortc.codecs.h264 import H264Decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack

from gateway.media import MEDIA_KEY, PACING_BPS, PACING_BURST_BYTES, Pacer, enlarge_receive_buffers
from livecore.media import SDP_TYPE
from tests.media.test_hls import closed, fetch, playlist
from tests.media.test_whip_whep import new_stream
from tests.media_sources import CLOCK, FPS, Source, h264_source
from tests.support import ApiClient, until_state

TICKS = CLOCK // FPS  # pts step between frames
#: Frames the viewer must be sent from its first keyframe on: one whole loop of the 4 s
#: source, so the bytes sent in it are exactly the source's measured bitrate.
WINDOW = 120


def nal_units(data: bytes, *, annex_b: bool = True) -> tuple[bytes, ...]:
    """The NAL units of an access unit, Annex-B (start codes, as sent and forwarded) or
    length-prefixed (in MP4): what must survive packetisation, forwarding and muxing unchanged
    (start code lengths and trailing zero bytes need not). Damaged data comes back whole."""
    if annex_b:
        if data[:3] != b"\x00\x00\x01" and data[:4] != b"\x00\x00\x00\x01":
            return (data,)  # a damaged frame: it starts inside a NAL unit
        chunks = (chunk.rstrip(b"\x00") for chunk in data.split(b"\x00\x00\x01")[1:])
        return tuple(chunk for chunk in chunks if chunk)
    units, offset = [], 0
    while offset + 4 <= len(data):
        size = int.from_bytes(data[offset:offset + 4], "big")
        units.append(data[offset + 4:offset + 4 + size])
        offset += 4 + size
    if offset != len(data):  # the lengths do not add up: damaged
        return (data,)
    return tuple(units)


def digest(data: bytes, *, annex_b: bool = True) -> bytes:
    return hashlib.sha1(b"|".join(nal_units(data, annex_b=annex_b))).digest()


class PreEncodedVideo(MediaStreamTrack):
    """A camera that sends a source's access units as they are, at 30 fps in real time, looping
    it (pts keep rising) until stopped. Records what it sent and when."""

    kind = "video"

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source
        self.digests = [digest(unit.data) for unit in source.units]
        self.sent_at: list[float] = []  # time.monotonic() of each frame handed to the sender
        self._start: float | None = None

    def unit_of(self, index: int) -> int:
        """The source unit sent as frame ``index``."""
        return index % len(self.source.units)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        index = len(self.sent_at)
        if self._start is None:
            self._start = time.monotonic()
        else:  # pacing: frame n leaves at start + n / FPS
            await asyncio.sleep(max(0.0, self._start + index / FPS - time.monotonic()))
        unit = self.source.units[self.unit_of(index)]
        packet = av.Packet(unit.data)
        packet.pts = index * TICKS
        packet.time_base = fractions.Fraction(1, CLOCK)
        self.sent_at.append(time.monotonic())
        return packet


@dataclass
class Arrival:
    """One encoded frame the viewer's receiver reassembled, and what decoding it gave."""

    timestamp: int  # RTP timestamp
    at: float  # time.monotonic()
    size: int
    digest: bytes
    error: str | None = None


@dataclass
class ViewerLog:
    arrivals: list[Arrival] = field(default_factory=list)
    pictures: list[tuple[int, int, int, bool]] = field(default_factory=list)  # pts, w, h, bad


class RecordingH264Decoder(H264Decoder):
    """aiortc's own H.264 decoder, recording every frame it is given and every picture (or
    error) it makes of them. Runs in the receiver's decoder thread."""

    def __init__(self, log: ViewerLog) -> None:
        super().__init__()
        self.log = log

    def decode(self, encoded_frame: JitterFrame) -> list[Any]:
        arrival = Arrival(encoded_frame.timestamp, time.monotonic(), len(encoded_frame.data),
                          digest(encoded_frame.data))
        self.log.arrivals.append(arrival)
        try:
            frames = super().decode(encoded_frame)
        except av.FFmpegError as exc:
            arrival.error = repr(exc)
            raise
        self.log.pictures += [(int(f.pts or 0), f.width, f.height, bool(f.is_corrupt))
                              for f in frames if isinstance(f, av.VideoFrame)]
        return frames


def h264_only(pc: RTCPeerConnection, kind: str = "video") -> None:
    [transceiver] = [t for t in pc.getTransceivers() if t.kind == kind]
    capabilities = RTCRtpSender.getCapabilities(kind)
    assert capabilities is not None
    transceiver.setCodecPreferences(
        [c for c in capabilities.codecs if c.mimeType in ("video/H264", "video/rtx")])


async def publish_pre_encoded(api: ApiClient, stream_id: str, key: str,
                              camera: PreEncodedVideo) -> RTCPeerConnection:
    pc = RTCPeerConnection()
    pc.addTrack(camera)
    pc.addTrack(AudioStreamTrack())  # OBS sends audio too (HLS then carries it)
    h264_only(pc)
    await pc.setLocalDescription(await pc.createOffer())
    response, _ = await api.request(
        "POST", f"/whip/{stream_id}", data=pc.localDescription.sdp,
        headers={"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"})
    answer = await response.text()
    assert response.status == 201, answer
    assert "H264/90000" in answer and "VP8/90000" not in answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc


async def watch_recorded(api: ApiClient, stream_id: str,
                         monkeypatch: pytest.MonkeyPatch) -> tuple[RTCPeerConnection, ViewerLog]:
    """A WHEP viewer (video) whose decoder records everything (see RecordingH264Decoder); its
    decoded pictures are read and dropped (1080p frames are 3 MB each)."""
    log = ViewerLog()
    original = rtcrtpreceiver.get_decoder

    def get_decoder(codec: RTCRtpCodecParameters) -> Any:
        # Only the viewer's receivers decode: the gateway's forward (gateway/media.py).
        return RecordingH264Decoder(log) if codec.name == "H264" else original(codec)

    monkeypatch.setattr(rtcrtpreceiver, "get_decoder", get_decoder)
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def drain() -> None:
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return

        asyncio.ensure_future(drain())

    await pc.setLocalDescription(await pc.createOffer())
    # A browser reads its socket on a network thread of its own; this viewer reads it one
    # datagram per turn of an event loop it shares with the gateway and the publisher, on a
    # shared machine, and so needs the buffer the gateway gives its publishers.
    enlarge_receive_buffers(pc)
    response, _ = await api.request("POST", f"/whep/{stream_id}", data=pc.localDescription.sdp,
                                    headers={"Content-Type": SDP_TYPE})
    answer = await response.text()
    assert response.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, log


async def poll(predicate: Any, *, within_s: float = 30, what: str = "") -> None:
    """Poll ``predicate`` (a plain callable) until it is true."""
    try:
        async with asyncio.timeout(within_s):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {within_s} s: {what}") from None


def read_segment(init: bytes, media: bytes) -> tuple[list[av.Packet], list[av.VideoFrame]]:
    """A segment's video packets, demuxed, and the pictures they decode to."""
    with av.open(io.BytesIO(init + media), mode="r", format="mp4") as container:
        stream = container.streams.video[0]
        packets, frames = [], []
        for packet in container.demux(stream):
            if packet.size:
                packets.append(packet)
            frames += stream.codec_context.decode(packet if packet.size else None)
        return packets, frames


SIZES = [
    pytest.param(1280, 720, 2_500_000, id="720p-2.5M"),
    pytest.param(1920, 1080, 6_000_000, id="1080p-6M"),
]


@pytest.mark.parametrize(("width", "height", "bitrate"), SIZES)
async def test_pre_encoded_h264_at_real_bitrates_reaches_viewers_and_hls_whole(
        media_api: ApiClient, monkeypatch: pytest.MonkeyPatch, width: int, height: int,
        bitrate: int) -> None:
    api = media_api
    source = h264_source(width, height, bitrate)
    assert source.measured_bitrate >= 0.8 * bitrate  # the test runs at the bitrate it says
    assert len(source.units) == WINDOW and [u.keyframe for u in source.units].count(True) == 2
    stream_id, key, _ = await new_stream(api)
    camera = PreEncodedVideo(source)
    publisher = await publish_pre_encoded(api, stream_id, key, camera)
    viewer: RTCPeerConnection | None = None
    try:
        await until_state(api, stream_id, "live")
        viewer, log = await watch_recorded(api, stream_id, monkeypatch)
        await poll(lambda: bool(log.arrivals), what="the viewer's first frame")
        # What the gateway sends this viewer is paced (test_the_pacer_... below).
        [session] = [s for s in api.client.app[MEDIA_KEY].sessions.values() if s.kind == "whep"]
        assert {type(getattr(t.sender.transport._send_rtp, "__self__", None))
                for t in session.pc.getTransceivers()} == {Pacer}

        # Which sent frame the viewer started on: the last one with its bytes sent before it
        # arrived (the same source unit comes again only a loop, 4 s, later).
        first = log.arrivals[0]
        candidates = [index for index, at in enumerate(list(camera.sent_at))
                      if at <= first.at and camera.digests[camera.unit_of(index)] == first.digest]
        assert candidates, "the viewer's first frame is none that was sent"
        start = candidates[-1]
        assert source.units[camera.unit_of(start)].keyframe  # it starts on a keyframe
        end = start + WINDOW
        offset = first.timestamp - start * TICKS  # the RTP clock's origin, as seen there

        def index_of(timestamp: int) -> int:
            ticks = (timestamp - offset) % 2**32
            assert ticks % TICKS == 0, timestamp
            return ticks // TICKS

        # The window's frames have all been through: a later one was decoded.
        await poll(lambda: any(index_of(p[0]) >= end for p in list(log.pictures)),
                   what=f"the viewer decoding past frame {end}")
        arrivals = list(log.arrivals)
        pictures = list(log.pictures)

        # HLS, what the gateway itself received: every closed segment of the live playlist
        # decodes at the source's size, and the segments hold, in order, every frame sent from
        # the first on, byte for byte.
        status, text, _ = await playlist(api, stream_id)
        assert status == 200, text
        segments = closed(m3u8.loads(text))
        assert len(segments) >= 2, text  # keyframes at 0, 2 and 4 s at least went by
        init = await fetch(api, stream_id, "init.mp4")
        packets: list[av.Packet] = []
        for segment in segments:
            media = await fetch(api, stream_id, segment.uri)
            in_segment, frames = await asyncio.to_thread(read_segment, init, media)
            assert in_segment and in_segment[0].is_keyframe, segment.uri
            assert len(frames) == len(in_segment), segment.uri
            assert {(f.width, f.height) for f in frames} == {(width, height)}, segment.uri
            assert not any(f.is_corrupt for f in frames), segment.uri
            packets += in_segment
        packaged = [digest(bytes(p), annex_b=False) for p in packets]
        sent = [camera.digests[camera.unit_of(i)] for i in range(len(packets))]
        lost = [i for i, d in enumerate(sent) if d not in packaged]
        assert packaged == sent, f"frames sent but not in HLS: {lost}"

        # Nothing failed to decode, and nothing is damaged: every frame received is, NAL unit
        # for NAL unit, the one sent with its timestamp; they arrived in order.
        assert [a.error for a in arrivals if a.error] == []
        indexes = [index_of(a.timestamp) for a in arrivals]
        assert indexes == sorted(set(indexes))
        damaged = [i for i, a in zip(indexes, arrivals, strict=True)
                   if a.digest != camera.digests[camera.unit_of(i)]]
        assert damaged == []
        # Most of the window arrived (everything, on a quiet machine), and decoded whole at the
        # source's size, one picture per frame.
        got = [a for i, a in zip(indexes, arrivals, strict=True) if start <= i < end]
        shown = [p for p in pictures if start <= index_of(p[0]) < end]
        missing = sorted(set(range(start, end)) - set(indexes))
        assert len(got) >= 0.8 * WINDOW, f"{len(got)} of {WINDOW}; missing {missing}"
        undecoded = sorted({i for i in indexes if start <= i < end}
                           - {index_of(p[0]) for p in shown})
        assert undecoded == [], f"received, not decoded: {undecoded} (missing {missing})"
        assert {(w, h) for _, w, h, _ in shown} == {(width, height)}
        assert [p for p in shown if p[3]] == []  # no picture FFmpeg flagged corrupt
        # The bitrate that reached the viewer: the bytes of the window's frames over its media
        # time (a whole loop of the source: exactly its measured bitrate when nothing is lost).
        received = sum(a.size for a in got) * 8 / (WINDOW / FPS)
        assert received >= 0.7 * source.measured_bitrate, (received, source.measured_bitrate)
    finally:
        if viewer is not None:
            await viewer.close()
        await publisher.close()


async def test_the_pacer_spreads_a_keyframe_over_time_in_small_bursts() -> None:
    """A 1080p keyframe's packets (450 KB), sent to a viewer at once, leave at PACING_BPS in
    bursts of at most PACING_BURST_BYTES; after a pause, one burst goes at once again. On a
    virtual clock: no wall-clock time is measured."""
    now = 1000.0
    sent: list[tuple[float, int]] = []

    async def send(data: bytes) -> None:
        sent.append((now, len(data)))

    async def sleep(seconds: float) -> None:
        nonlocal now
        assert seconds > 0
        now += seconds

    pacer = Pacer(send, clock=lambda: now, sleep=sleep)
    packet = bytes(1300)
    for _ in range(350):
        await pacer.send(packet)
    rate = PACING_BPS / 8
    assert sent[0][0] == 1000.0  # the first burst leaves at once
    at_once = sum(size for at, size in sent if at == 1000.0)
    assert PACING_BURST_BYTES - 1300 <= at_once <= PACING_BURST_BYTES + 1300
    # In any 10 ms, no more than a burst and 10 ms at the rate.
    for index, (start, _) in enumerate(sent):
        window = sum(size for at, size in sent[index:] if at < start + 0.01)
        assert window <= PACING_BURST_BYTES + rate * 0.01 + 1300
    total = 350 * len(packet)
    assert now - 1000.0 == pytest.approx((total - PACING_BURST_BYTES) / rate, rel=0.01)
    # After a pause, a burst goes at once again, and no more.
    now += 1.0
    resumed = now
    for _ in range(40):
        await pacer.send(packet)
    again = sum(size for at, size in sent[350:] if at == resumed)
    assert PACING_BURST_BYTES - 1300 <= again <= PACING_BURST_BYTES + 1300
