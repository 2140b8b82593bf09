"""Live video to WebRTC viewers: Livecore's forwarding against aiortc's MediaRelay, same run.

    python -m loadtests.media [--viewers 20] [--seconds 20] [--idle 5] [--warmup 3]
                              [--late-joiners 5] [--together 8] [--together-rounds 3]
                              [--spread 0.5]
                              [--codec vp8|h264] [--skip-baseline]

**Livecore**: a real ``livecore serve`` (its own process, ``LIVECORE_PROCESSES=1``, against
DATABASE_URL / REDIS_URL, or embedded servers in a temporary directory when either is unset).
A creator and a stream are made through the HTTP API (register, login, ``POST
/api/v1/me/creator``, ``POST /api/v1/streams``, whose answer holds the stream key); then, all in
this process: one publisher (WHIP, ``Authorization: Bearer <stream key>``), an aiortc peer whose
only track is a synthetic 640x360 camera at 30 fps offering only ``--codec``; ``--viewers``
WHEP viewers that do not decode (their remote track is marked with
:func:`gateway.media.forward`, so ``recv()`` hands over each reassembled encoded frame as an
``av.Packet``: they count frames); and one more WHEP viewer that decodes, to read the time
painted in each frame (below).

**Baseline**: ``python -m loadtests.media --baseline-server PORT``, its own process: an aiohttp
server taking the same WHIP and WHEP exchange, relaying with aiortc's ``MediaRelay`` as shipped
(the publisher's video decoded once, encoded again for each viewer). Same publisher, viewers and
figures.

What is measured, for each server:

* **server CPU**: ``psutil`` times of the server process (threads included; not the embedded
  databases, not this load generator), first over ``--idle`` seconds with the publisher alone,
  then over ``--seconds`` with every viewer connected (after ``--warmup`` seconds). CPU per
  viewer = (cores with viewers - cores with the publisher alone) / viewers at the server
  (``--viewers`` + the decoding one).
* **frames/s per viewer**: frames each counting viewer received over the window (min, median).
* **late joiner's first frame**: ``--late-joiners`` times, after the window, while the others
  keep watching: a new viewer (offer made beforehand) from its WHEP ``POST`` to its first frame
  (which includes the answer, ICE, DTLS and the wait for a keyframe).
* **joiners arriving together**: ``--together-rounds`` times, ``--together`` new viewers
  POST their offers (made beforehand) within ``--spread`` seconds of each other (evenly; 0: at
  the same moment): first frame p50 and p95 over all of them, each from its own POST, and their
  WHEP answer times (the server's share before ICE and DTLS). They share the keyframe
  requests (at most one per ``PLI_INTERVAL_S`` goes to the publisher), so this is where a
  dropped request shows.
* **glass to glass**: the camera paints the wall-clock milliseconds at which it made each frame
  (24 bits and an 8-bit check, one bit per 40x40 block of the luma plane's top 80 rows); the
  decoding viewer reads them back from what it decodes: latency = time read - time painted
  (encode, network, server, jitter buffer and decode; no real camera or screen).

ICE runs over the machine's own address (aiortc gathers no candidate on 127.0.0.1); HTTP goes to
127.0.0.1. Prints both servers side by side, the CPU ratio, and the issue's goals with met / not
met; exits non-zero if something failed (a viewer without frames, a late joiner without a first
frame, no readable timestamp). Do not point DATABASE_URL at a database you care about: the run
migrates it and adds a user and a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import av
import psutil
from aiohttp import web
from aiortc import (
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from av import VideoFrame
from av.frame import Frame
from rich.table import Table

from gateway.media import forward, install_forwarding
from livecore.media import SDP_TYPE
from loadtests.common import (
    Row,
    comparison,
    console,
    cpu_seconds,
    free_port,
    percentile,
    progress,
    server_cpu,
    server_process,
)

WIDTH, HEIGHT = 640, 360
#: The synthetic camera cycles through this many precomputed pictures (one second at 30 fps).
VARIANTS = 30

# -- the time painted into each frame ------------------------------------------------------

#: Side of one bit's square in the luma plane: big enough to survive the encoder.
BLOCK = 40
STAMP_BITS = 32
STAMP_COLUMNS = 16
STAMP_ROWS = STAMP_BITS // STAMP_COLUMNS
DARK, LIGHT = 16, 235
#: The painted time wraps around every 2**24 ms (4.7 hours).
STAMP_MASK = 0xFFFFFF


def now_ms() -> int:
    return int(time.time() * 1000)


def _check(value: int) -> int:
    return ((value >> 16) ^ (value >> 8) ^ value ^ 0x5A) & 0xFF


def stamp_bits(ms: int) -> list[int]:
    """The 32 bits painted for a time: its low 24 bits of milliseconds, then a check byte."""
    value = ms & STAMP_MASK
    word = value << 8 | _check(value)
    return [(word >> (STAMP_BITS - 1 - i)) & 1 for i in range(STAMP_BITS)]


def bits_value(bits: Sequence[int]) -> int | None:
    """The time (24 bits of milliseconds) the bits hold, or None if their check fails."""
    word = 0
    for bit in bits:
        word = word << 1 | (bit & 1)
    value = word >> 8
    return value if word & 0xFF == _check(value) else None


def paint_stamp(luma: bytearray, stride: int, ms: int) -> None:
    """Paint a time into the top ``STAMP_ROWS * BLOCK`` rows of a luma plane (a row of
    ``stride`` bytes, at least ``STAMP_COLUMNS * BLOCK`` of them shown)."""
    assert stride >= STAMP_COLUMNS * BLOCK
    bits = stamp_bits(ms)
    for band in range(STAMP_ROWS):
        line = b"".join(bytes([LIGHT if bit else DARK]) * BLOCK
                        for bit in bits[band * STAMP_COLUMNS:(band + 1) * STAMP_COLUMNS])
        for row in range(band * BLOCK, (band + 1) * BLOCK):
            luma[row * stride:row * stride + len(line)] = line


def read_stamp(luma: bytes | bytearray | memoryview, stride: int) -> int | None:
    """The time painted by :func:`paint_stamp` (24 bits of ms), from the middle of each block;
    None if unreadable."""
    bits = []
    quarter = BLOCK // 4
    for index in range(STAMP_BITS):
        band, column = divmod(index, STAMP_COLUMNS)
        total = count = 0
        for row in range(band * BLOCK + quarter, band * BLOCK + 3 * quarter, 4):
            start = row * stride + column * BLOCK + quarter
            chunk = luma[start:start + 2 * quarter]
            total += sum(chunk)
            count += len(chunk)
        bits.append(1 if count and total / count > (DARK + LIGHT) / 2 else 0)
    return bits_value(bits)


def stamp_age_ms(stamp: int, at_ms: int) -> int:
    """Milliseconds from a painted time to ``at_ms`` (modulo the painted time's wrap)."""
    return (at_ms - stamp) & STAMP_MASK


def synthetic_lumas(width: int, height: int, variants: int) -> list[bytes]:
    """Luma planes of a diagonal gradient scrolling by 8 pixels a frame, with a bright square
    moving across: cheap to make once, not trivial to encode."""
    ramp = bytes(28 + (x * 200) // width for x in range(width))
    ramp2 = ramp + ramp
    side = height // 4
    planes = []
    for index in range(variants):
        rows = bytearray()
        left = (index * width // variants) % (width - side)
        for y in range(height):
            shift = (y * 2 + index * 8) % width
            row = bytearray(ramp2[shift:shift + width])
            if height // 2 <= y < height // 2 + side:
                row[left:left + side] = bytes([LIGHT]) * side
            rows += row
        planes.append(bytes(rows))
    return planes


def stamped_frame(luma: bytes, chroma: bytes, ms: int) -> VideoFrame:
    """A WIDTH x HEIGHT yuv420p frame: ``luma`` with ``ms`` painted on, grey ``chroma``."""
    frame = VideoFrame(WIDTH, HEIGHT, "yuv420p")
    painted = bytearray(luma)
    paint_stamp(painted, frame.planes[0].line_size, ms)
    frame.planes[0].update(bytes(painted))
    frame.planes[1].update(chroma)
    frame.planes[2].update(chroma)
    return frame


class Camera(VideoStreamTrack):
    """640x360 at 30 fps (aiortc's pacing); each frame carries the time it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.lumas = synthetic_lumas(WIDTH, HEIGHT, VARIANTS)
        self.chroma = bytes([128]) * ((WIDTH // 2) * (HEIGHT // 2))
        self.count = 0

    async def recv(self) -> Frame:
        pts, time_base = await self.next_timestamp()
        frame = stamped_frame(self.lumas[self.count % len(self.lumas)], self.chroma, now_ms())
        self.count += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


# -- peers of the load generator ---------------------------------------------------------------


def prefer(transceiver: RTCRtpTransceiver, codec: str) -> None:
    """Offer only ``codec`` (and its retransmissions) on a video transceiver."""
    capabilities = RTCRtpSender.getCapabilities("video")
    codecs = capabilities.codecs if capabilities is not None else []
    chosen = [c for c in codecs if c.mimeType.lower() == f"video/{codec}"]
    rtx = [c for c in codecs if c.mimeType.lower() == "video/rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


class Failed(Exception):
    pass


async def _post(http: aiohttp.ClientSession, path: str, sdp: str,
                headers: dict[str, str]) -> tuple[int, str, str | None]:
    async with http.post(path, data=sdp,
                         headers={"Content-Type": SDP_TYPE, **headers}) as response:
        return response.status, await response.text(), response.headers.get("Location")


async def _delete(http: aiohttp.ClientSession, location: str | None,
                  headers: dict[str, str] | None = None) -> None:
    if location is None:
        return
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.delete(location, headers=headers or {}) as response:
            await response.read()


class Publisher:
    def __init__(self, codec: str) -> None:
        self.pc = RTCPeerConnection()
        self.camera = Camera()
        prefer(self.pc.addTransceiver(self.camera, direction="sendonly"), codec)
        self.location: str | None = None
        self.headers: dict[str, str] = {}

    async def start(self, http: aiohttp.ClientSession, stream_id: str, key: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.headers = {"Authorization": f"Bearer {key}"}
        status, body, self.location = await _post(http, f"/whip/{stream_id}",
                                                  self.pc.localDescription.sdp, self.headers)
        if status != 201:
            raise Failed(f"WHIP answered {status}: {body[:300]}")
        await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        async with asyncio.timeout(20):
            while self.pc.connectionState != "connected":
                if self.pc.connectionState in ("failed", "closed"):
                    raise Failed(f"publisher connection {self.pc.connectionState}")
                await asyncio.sleep(0.05)

    async def stop(self, http: aiohttp.ClientSession) -> None:
        await _delete(http, self.location, self.headers)
        await self.pc.close()


class Viewer:
    """A WHEP viewer: counts its frames; decoding (``decode``) it reads their painted times,
    else its track is forwarded (encoded frames, never decoded)."""

    def __init__(self, codec: str, *, decode: bool = False) -> None:
        self.decode = decode
        self.pc = RTCPeerConnection()
        prefer(self.pc.addTransceiver("video", direction="recvonly"), codec)
        self.location: str | None = None
        self.posted_at = 0.0
        self.first_frame_s: float | None = None
        self.first = asyncio.Event()
        self.frames = 0
        self.latencies_ms: list[float] = []
        self.unreadable = 0
        self._task: asyncio.Task[None] | None = None
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            return
        if not self.decode:
            forward(track)
        self._task = asyncio.ensure_future(self._read(track))

    async def _read(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                item = await track.recv()
            except MediaStreamError:
                return
            if self.first_frame_s is None:
                self.first_frame_s = time.perf_counter() - self.posted_at
                self.first.set()
            self.frames += 1
            if isinstance(item, VideoFrame):
                plane = item.planes[0]
                stamp = read_stamp(memoryview(plane), plane.line_size)
                if stamp is None:
                    self.unreadable += 1
                else:
                    self.latencies_ms.append(stamp_age_ms(stamp, now_ms()))

    async def join(self, http: aiohttp.ClientSession, stream_id: str) -> tuple[int, str]:
        """Offer (made before the clock starts), POST it, apply the answer: (status, body)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.posted_at = time.perf_counter()
        status, body, self.location = await _post(http, f"/whep/{stream_id}",
                                                  self.pc.localDescription.sdp, {})
        if status == 201:
            await self.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
        return status, body

    async def leave(self, http: aiohttp.ClientSession) -> None:
        await _delete(http, self.location)
        await self.pc.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the baseline: aiortc's MediaRelay as shipped ------------------------------------------------


class RelayServer:
    """WHIP in, WHEP out, through ``MediaRelay`` (decoded once, encoded for each viewer)."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.sources: dict[str, MediaStreamTrack] = {}
        self.sessions: dict[str, RTCPeerConnection] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/whip/{stream_id}", self.whip)
        app.router.add_post("/whep/{stream_id}", self.whep)
        app.router.add_delete("/{kind}/{stream_id}/{session_id}", self.delete)
        app.on_shutdown.append(self.shutdown)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _answer(self, pc: RTCPeerConnection, kind: str, stream_id: str, offer: str,
                      source: MediaStreamTrack | None = None) -> web.Response:
        session_id = secrets.token_urlsafe(12)
        self.sessions[session_id] = pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._close(session_id)

        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        if source is not None:
            pc.addTrack(self.relay.subscribe(source))  # buffered, as shipped
        await pc.setLocalDescription(await pc.createAnswer())
        return web.Response(status=201, content_type=SDP_TYPE, text=pc.localDescription.sdp,
                            headers={"Location": f"/{kind}/{stream_id}/{session_id}"})

    async def whip(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        pc = RTCPeerConnection()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "video":
                return
            self.sources[stream_id] = track
            # Keep the source read (and decoded) with no viewer too, as a live relay would.
            sink = self.relay.subscribe(track, buffered=False)
            task = asyncio.ensure_future(self._drain(sink))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

        return await self._answer(pc, "whip", stream_id, await request.text())

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def whep(self, request: web.Request) -> web.Response:
        stream_id = request.match_info["stream_id"]
        offer = await request.text()
        source = self.sources.get(stream_id)
        if source is None or source.readyState != "live":
            return web.json_response({"code": "stream_not_live"}, status=409)
        return await self._answer(RTCPeerConnection(), "whep", stream_id, offer, source)

    async def delete(self, request: web.Request) -> web.Response:
        await self._close(request.match_info["session_id"])
        return web.Response(status=200)

    async def _close(self, session_id: str) -> None:
        pc = self.sessions.pop(session_id, None)
        if pc is not None:
            await pc.close()

    async def shutdown(self, app: web.Application) -> None:
        for session_id in list(self.sessions):
            await self._close(session_id)


def serve_baseline(port: int) -> None:
    web.run_app(RelayServer().app(), host="127.0.0.1", port=port, print=None,
                handle_signals=True)


# -- one server measured -----------------------------------------------------------------------


@dataclass
class Run:
    name: str
    viewers: int = 0  # at the server during the window: the counting ones and the decoding one
    idle_cpu_s: float = 0.0
    idle_s: float = 0.0
    cpu_s: float = 0.0
    window_s: float = 0.0
    client_cpu_s: float = 0.0
    others_cpu_s: float = 0.0  # the machine's other processes, over the window
    frames: int = 0  # delivered to every viewer over the window
    fps: list[float] = field(default_factory=list)
    decoding_fps: float = 0.0
    first_frame_ms: list[float] = field(default_factory=list)
    #: First frames of the viewers who joined together (--together), from each one's POST.
    together_ms: list[float] = field(default_factory=list)
    #: ... and from each one's POST to its answer (the server's share: SDP, ICE gathering).
    together_answer_ms: list[float] = field(default_factory=list)
    glass_ms: list[float] = field(default_factory=list)
    hls_ms: list[float] = field(default_factory=list)  # frames' age when their LL-HLS part came
    hls_hold_back_s: float = 0.0
    unreadable: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def idle_cores(self) -> float:
        return self.idle_cpu_s / self.idle_s if self.idle_s else 0.0

    @property
    def busy_cores(self) -> float:
        return self.cpu_s / self.window_s if self.window_s else 0.0

    @property
    def cpu_per_viewer(self) -> float | None:
        if not self.viewers or not self.window_s:
            return None
        return (self.busy_cores - self.idle_cores) / self.viewers

    @property
    def cpu_ms_per_frame(self) -> float | None:
        """Server CPU per frame delivered to a viewer: comparable whatever the frame rate."""
        if not self.frames:
            return None
        return (self.busy_cores - self.idle_cores) * self.window_s / self.frames * 1000

    def cores(self, cpu_s: float) -> float | None:
        return cpu_s / self.window_s if self.window_s else None

    @property
    def min_fps(self) -> float | None:
        return min(self.fps) if self.fps else None

    @property
    def median_fps(self) -> float | None:
        return statistics.median(self.fps) if self.fps else None

    @property
    def median_first_ms(self) -> float | None:
        return statistics.median(self.first_frame_ms) if self.first_frame_ms else None

    def together_at(self, fraction: float) -> float | None:
        return percentile(sorted(self.together_ms), fraction) if self.together_ms else None

    def together_answer_at(self, fraction: float) -> float | None:
        answers = self.together_answer_ms
        return percentile(sorted(answers), fraction) if answers else None

    def glass_at(self, fraction: float) -> float | None:
        return percentile(sorted(self.glass_ms), fraction) if self.glass_ms else None

    def hls_at(self, fraction: float) -> float | None:
        """LL-HLS glass to glass: a frame's age when its part arrived, plus the player's
        PART-HOLD-BACK (what a player following the spec waits behind the newest part)."""
        if not self.hls_ms:
            return None
        return percentile(sorted(self.hls_ms), fraction) + self.hls_hold_back_s * 1000


def machine_busy_s() -> float:
    """CPU seconds every process of the machine has used (all cores)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


async def _timed_bar(label: str, seconds: float) -> None:
    with progress() as bar:
        task = bar.add_task(f"{label:>34}", total=seconds)
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            bar.update(task, completed=elapsed)
            await asyncio.sleep(min(0.25, seconds - elapsed))
        bar.update(task, completed=seconds)


async def _wait_live(http: aiohttp.ClientSession, stream_id: str, codec: str) -> None:
    """Until a WHEP offer is taken (the publisher's media has arrived); the probe leaves."""
    deadline = time.monotonic() + 20
    while True:
        probe = Viewer(codec)
        status, body = await probe.join(http, stream_id)
        await probe.leave(http)
        if status == 201:
            return
        if status != 409 or time.monotonic() > deadline:
            raise Failed(f"WHEP answered {status}: {body[:300]}")
        await asyncio.sleep(0.25)


async def measure(name: str, base: str, stream_id: str, key: str, pid: int,
                  args: argparse.Namespace, count: int) -> Run:
    """One server: the publisher alone, then ``count`` counting viewers and a decoding one,
    then the late joiners."""
    run = Run(name)
    viewers: list[Viewer] = []
    decoding = Viewer(args.codec, decode=True)
    publisher = Publisher(args.codec)
    async with aiohttp.ClientSession(base, timeout=aiohttp.ClientTimeout(total=30)) as http:
        try:
            await publisher.start(http, stream_id, key)
            await _wait_live(http, stream_id, args.codec)
            await asyncio.sleep(1)  # the probe's session is gone

            cpu0, t0 = server_cpu(pid), time.perf_counter()
            await _timed_bar(f"{name}: publisher alone (s)", args.idle)
            run.idle_cpu_s, run.idle_s = server_cpu(pid) - cpu0, time.perf_counter() - t0

            gate = asyncio.Semaphore(4)
            with progress() as bar:
                task = bar.add_task(f"{name + ': viewers with a frame':>34}",
                                    total=count + 1)

                async def connect(viewer: Viewer) -> None:
                    async with gate:
                        status, body = await viewer.join(http, stream_id)
                    if status != 201:
                        raise Failed(f"WHEP answered {status}: {body[:300]}")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(30):
                            await viewer.first.wait()
                            bar.advance(task)

                viewers = [Viewer(args.codec) for _ in range(count)]
                await asyncio.gather(*(connect(v) for v in [*viewers, decoding]))
            silent = sum(1 for v in [*viewers, decoding] if v.first_frame_s is None)
            if silent:
                run.failures.append(f"{name}: {silent} viewer(s) got no frame within 30 s")
            await _timed_bar(f"{name}: warm-up (s)", args.warmup)

            counts = [v.frames for v in viewers]
            decoded, latencies, unreadable = (decoding.frames, len(decoding.latencies_ms),
                                              decoding.unreadable)
            cpu0, own0, t0 = server_cpu(pid), cpu_seconds(os.getpid()), time.perf_counter()
            machine0 = machine_busy_s()
            stop_hls = asyncio.Event()
            hls = (asyncio.ensure_future(read_ll_hls(http, stream_id, run, stop_hls))
                   if name == "livecore" else None)
            await _timed_bar(f"{name}: {len(viewers) + 1} viewers (s)", args.seconds)
            stop_hls.set()
            if hls is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await hls
                if not run.hls_ms:
                    run.failures.append(f"{name}: no painted time read back over LL-HLS")
            run.cpu_s, run.client_cpu_s = server_cpu(pid) - cpu0, cpu_seconds(os.getpid()) - own0
            run.window_s = time.perf_counter() - t0
            run.others_cpu_s = machine_busy_s() - machine0 - run.cpu_s - run.client_cpu_s
            run.viewers = len(viewers) + 1
            run.fps = [(v.frames - c) / run.window_s for v, c in zip(viewers, counts,
                                                                      strict=True)]
            run.decoding_fps = (decoding.frames - decoded) / run.window_s
            run.frames = sum(v.frames for v in viewers) - sum(counts) + decoding.frames - decoded
            run.glass_ms = decoding.latencies_ms[latencies:]
            run.unreadable = decoding.unreadable - unreadable
            starved = sum(1 for f in run.fps if f == 0)
            if starved:
                run.failures.append(f"{name}: {starved} viewer(s) got no frame in the window")
            if not run.glass_ms:
                run.failures.append(f"{name}: no painted time read back by the decoding viewer")

            with progress() as bar:
                task = bar.add_task(f"{name + ': late joiners':>34}", total=args.late_joiners)
                for _ in range(args.late_joiners):
                    late = Viewer(args.codec)
                    try:
                        status, body = await late.join(http, stream_id)
                        if status != 201:
                            raise Failed(f"WHEP answered {status}: {body[:300]}")
                        async with asyncio.timeout(10):
                            await late.first.wait()
                        assert late.first_frame_s is not None
                        run.first_frame_ms.append(late.first_frame_s * 1000)
                    except TimeoutError:
                        run.failures.append(f"{name}: a late joiner got no frame within 10 s")
                    finally:
                        await late.leave(http)
                    bar.advance(task)
                    await asyncio.sleep(0.3)
            for _ in range(args.together_rounds):
                await joiners_together(http, stream_id, args, run, name)
                await asyncio.sleep(0.5)
        except Failed as exc:
            run.failures.append(f"{name}: {exc}")
        finally:
            await asyncio.gather(*(v.leave(http) for v in [*viewers, decoding]))
            await publisher.stop(http)
    return run


async def joiners_together(http: aiohttp.ClientSession, stream_id: str,
                           args: argparse.Namespace, run: Run, name: str) -> None:
    """``--together`` viewers POST their offers (made beforehand) within ``--spread`` seconds
    of each other (evenly), while the others keep watching: each one's time from its POST to
    its first frame."""
    joiners = [Viewer(args.codec) for _ in range(args.together)]
    try:
        for joiner in joiners:
            await joiner.pc.setLocalDescription(await joiner.pc.createOffer())

        async def join(joiner: Viewer, delay_s: float) -> None:
            await asyncio.sleep(delay_s)
            joiner.posted_at = time.perf_counter()
            status, body, joiner.location = await _post(http, f"/whep/{stream_id}",
                                                        joiner.pc.localDescription.sdp, {})
            if status != 201:
                raise Failed(f"WHEP answered {status}: {body[:300]}")
            run.together_answer_ms.append((time.perf_counter() - joiner.posted_at) * 1000)
            await joiner.pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await joiner.first.wait()

        step = args.spread / max(1, len(joiners) - 1)
        await asyncio.gather(*(join(joiner, i * step) for i, joiner in enumerate(joiners)))
        late = sum(1 for joiner in joiners if joiner.first_frame_s is None)
        if late:
            run.failures.append(f"{name}: {late} joiner(s) arriving together got no frame"
                                " within 10 s")
        run.together_ms += [j.first_frame_s * 1000 for j in joiners
                            if j.first_frame_s is not None]
    finally:
        await asyncio.gather(*(joiner.leave(http) for joiner in joiners))


_PART = re.compile(r'#EXT-X-PART:[^\n]*URI="(part(\d+)\.(\d+)\.m4s)"')
_HOLD_BACK = re.compile(r"PART-HOLD-BACK=([0-9.]+)")


async def read_ll_hls(http: aiohttp.ClientSession, stream_id: str, run: Run,
                      stop: asyncio.Event) -> None:
    """An LL-HLS client: after each part it asks for the playlist with a blocking reload for
    the next one (``_HLS_msn``/``_HLS_part``: the server answers once it exists, or once the
    next segment's first part does), fetches that part, decodes it as a player does (the init
    segment and the segment's parts so far) and reads the painted times back: each new frame's
    age when its part arrived goes to ``run.hls_ms``; ``run.hls_hold_back_s`` is the
    PART-HOLD-BACK a player adds before it shows the newest part."""
    init: bytes | None = None
    last: tuple[int, int] | None = None
    segment: list[bytes] = []  # the current segment's parts, from its first (a keyframe)
    while not stop.is_set():
        query = "" if last is None else f"?_HLS_msn={last[0]}&_HLS_part={last[1] + 1}"
        async with http.get(f"/hls/{stream_id}/index.m3u8{query}") as response:
            text = await response.text() if response.status == 200 else ""
        parts = [(int(m), int(i), uri) for uri, m, i in _PART.findall(text)]
        hold_back = _HOLD_BACK.search(text)
        if hold_back is not None:
            run.hls_hold_back_s = float(hold_back.group(1))
        if init is None and parts:
            async with http.get(f"/hls/{stream_id}/init.mp4") as response:
                init = await response.read() if response.status == 200 else None
        if last is None:  # start on the newest segment's first part
            starts = [p for p in parts if p[1] == 0]
            following = starts[-1:] if starts else []
        else:
            following = [p for p in parts if (p[0], p[1]) > last][:1]
        if init is None or not following:
            await asyncio.sleep(0.05)
            continue
        msn, index, uri = following[0]
        async with http.get(f"/hls/{stream_id}/{uri}") as response:
            if response.status != 200:
                continue
            part = await response.read()
        arrived = now_ms()
        last = (msn, index)
        segment = [part] if index == 0 else [*segment, part]
        try:
            with av.open(io.BytesIO(init + part), mode="r", format="mp4") as container:
                new = sum(1 for packet in container.demux(video=0) if packet.size)
            with av.open(io.BytesIO(init + b"".join(segment)), mode="r",
                         format="mp4") as container:
                frames = list(container.decode(video=0))
        except av.FFmpegError as exc:  # a broken part is a finding, not the end of the run
            run.failures.append(f"{run.name}: LL-HLS part {uri} did not decode: {exc}")
            continue
        for frame in frames[len(frames) - new:]:
            plane = frame.planes[0]
            stamp = read_stamp(memoryview(plane), plane.line_size)
            if stamp is not None:
                run.hls_ms.append(stamp_age_ms(stamp, arrived))


async def stage(base: str) -> tuple[str, str]:
    """A creator and a stream through the HTTP API: (stream id, stream key)."""
    name, password = f"media{secrets.token_hex(4)}", "media load test password"
    async with aiohttp.ClientSession(base) as http:
        body = {"username": name, "password": password, "birthdate": "1990-01-01"}
        async with http.post("/api/v1/auth/register", json=body) as response:
            if response.status != 201:
                raise SystemExit(f"register failed: {response.status} {await response.text()}")
        async with http.post("/api/v1/auth/login",
                             json={"username": name, "password": password}) as response:
            token = (await response.json())["token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post("/api/v1/me/creator", headers=headers) as response:
            if response.status != 200:
                raise SystemExit(f"becoming a creator failed: {await response.text()}")
        async with http.post("/api/v1/streams", headers=headers,
                             json={"title": "Media load test"}) as response:
            stream = await response.json()
            if response.status != 201:
                raise SystemExit(f"creating a stream failed: {stream}")
    return str(stream["id"]), str(stream["stream_key"])


# -- the report ----------------------------------------------------------------------------


def _yes(met: bool) -> str:
    return "[green]yes[/]" if met else "[red]no[/]"


def report(args: argparse.Namespace, subject: Run, baseline: Run | None) -> None:
    console.width = max(console.width, 120)
    other = baseline or Run("baseline")

    def row(label: str, pick: str, fmt: str = "{:,.1f}", ratio: bool = True) -> Row:
        a, b = getattr(subject, pick), getattr(other, pick) if baseline is not None else None
        return Row(label, a, b, fmt, ratio)

    per_core = [None if r.cpu_per_viewer is None or r.cpu_per_viewer <= 0
                else 1 / r.cpu_per_viewer for r in (subject, other)]
    rows = [
        row("viewers at the server (counting + 1 decoding)", "viewers", "{:,.0f}", ratio=False),
        row("server CPU, publisher alone (cores)", "idle_cores", "{:.3f}"),
        row("server CPU with the viewers (cores)", "busy_cores", "{:.3f}"),
        row("server CPU per viewer (cores)", "cpu_per_viewer", "{:.4f}"),
        row("server CPU per frame delivered (ms)", "cpu_ms_per_frame", "{:.3f}"),
        Row("viewers per server core", per_core[0],
            per_core[1] if baseline is not None else None, "{:,.0f}"),
        Row("frames/s per viewer, min", subject.min_fps, other.min_fps, "{:.1f}"),
        Row("frames/s per viewer, median", subject.median_fps, other.median_fps, "{:.1f}"),
        row("frames/s, decoding viewer", "decoding_fps", "{:.1f}"),
        Row("late joiner's first frame, median ms", subject.median_first_ms,
            other.median_first_ms, "{:,.0f}"),
        Row("late joiner's first frame, max ms", max(subject.first_frame_ms, default=None),
            max(other.first_frame_ms, default=None), "{:,.0f}"),
        Row(f"joiners arriving together ({args.together} within {args.spread:g} s,"
            f" {args.together_rounds} rounds): first frame p50 ms", subject.together_at(0.5),
            other.together_at(0.5), "{:,.0f}"),
        Row("joiners arriving together: first frame p95 ms", subject.together_at(0.95),
            other.together_at(0.95), "{:,.0f}"),
        Row("joiners arriving together: WHEP answer p50 ms", subject.together_answer_at(0.5),
            other.together_answer_at(0.5), "{:,.0f}"),
        Row("joiners arriving together: WHEP answer p95 ms", subject.together_answer_at(0.95),
            other.together_answer_at(0.95), "{:,.0f}"),
        Row("glass to glass p50 ms", subject.glass_at(0.5), other.glass_at(0.5), "{:,.0f}"),
        Row("glass to glass p95 ms", subject.glass_at(0.95), other.glass_at(0.95), "{:,.0f}"),
        Row("glass to glass max ms", max(subject.glass_ms, default=None),
            max(other.glass_ms, default=None), "{:,.0f}"),
        Row("LL-HLS glass to glass p50 ms (part arrival + PART-HOLD-BACK)",
            subject.hls_at(0.5), None, "{:,.0f}"),
        Row("LL-HLS glass to glass p95 ms", subject.hls_at(0.95), None, "{:,.0f}"),
        row("frames with an unreadable time", "unreadable", "{:,.0f}", ratio=False),
        Row("load generator CPU (cores)", subject.cores(subject.client_cpu_s),
            other.cores(other.client_cpu_s), "{:.2f}"),
        Row("the machine's other processes (cores)", subject.cores(subject.others_cpu_s),
            other.cores(other.others_cpu_s), "{:.2f}", ratio=False),
    ]
    comparison(f"Live video: 1 publisher ({WIDTH}x{HEIGHT} {args.codec.upper()} 30 fps), "
               f"counting viewers + 1 decoding, {args.seconds:g} s window, "
               f"{psutil.cpu_count()} cores", "livecore (forwarding)",
               "baseline (MediaRelay)", rows)

    ratios = Table(title="Ratio")
    ratios.add_column("ratio")
    ratios.add_column("value", justify="right")
    mine, theirs = subject.cpu_per_viewer, other.cpu_per_viewer
    per_frame = None
    if baseline is not None and subject.cpu_ms_per_frame and other.cpu_ms_per_frame:
        per_frame = other.cpu_ms_per_frame / subject.cpu_ms_per_frame
    advantage = None
    if baseline is not None and mine is not None and theirs is not None:
        advantage = theirs / mine if mine > 0 else float("inf")
        ratios.add_row("server CPU per viewer: baseline / livecore", f"{advantage:.1f} ×")
        if per_frame is not None:
            ratios.add_row("server CPU per frame delivered: baseline / livecore",
                           f"{per_frame:.1f} ×")
        console.print(ratios)
    # At equal frame rates both ratios agree; a baseline short of 30 fps is compared per frame.
    full_rate = (other.min_fps or 0) >= 29

    goals = Table(title="The issue's goals, on this run (livecore)")
    for column in ("goal", "measured", "met"):
        goals.add_column(column)
    min_fps = subject.min_fps or 0.0
    if mine is not None:
        shown = f"{mine:.4f} core/viewer" + (f" ({1 / mine:,.0f} viewers/core)" if mine > 0
                                               else "")
        goals.add_row("≥ 100 viewers per gateway core at a full 30 fps "
                      "(≤ 0.01 core/viewer, min ≥ 29 fps)",
                      f"{shown}, min {min_fps:.1f} fps", _yes(mine <= 0.01 and min_fps >= 29))
    if advantage is not None and (full_rate or per_frame is None):
        goals.add_row("≥ 10 × less server CPU per viewer than the baseline",
                      f"{advantage:.1f} ×", _yes(advantage >= 10))
    elif per_frame is not None:
        goals.add_row("≥ 10 × less server CPU per viewer than the baseline",
                      f"{per_frame:.1f} × per frame delivered (per viewer: {advantage or 0:.1f}"
                      f" ×, the baseline at {other.median_fps or 0:.0f} fps)",
                      _yes(per_frame >= 10))
    else:
        goals.add_row("≥ 10 × less server CPU per viewer than the baseline", "not measured",
                      "-")
    first = subject.median_first_ms
    goals.add_row("late joiner's first frame < 500 ms (median)",
                  "-" if first is None else f"{first:,.0f} ms (max "
                  f"{max(subject.first_frame_ms):,.0f})", _yes(first is not None
                                                                and first < 500))
    t50, t95 = subject.together_at(0.5), subject.together_at(0.95)
    goals.add_row("joiners arriving together: first frame < 500 ms (p95)",
                  "-" if t95 is None else f"p50 {t50:,.0f} ms, p95 {t95:,.0f} ms",
                  _yes(t95 is not None and t95 < 500))
    p50, p95 = subject.glass_at(0.5), subject.glass_at(0.95)
    goals.add_row("glass to glass < 300 ms over WebRTC (p95)",
                  "-" if p95 is None else f"p50 {p50:,.0f} ms, p95 {p95:,.0f} ms",
                  _yes(p95 is not None and p95 < 300))
    hls50, hls95 = subject.hls_at(0.5), subject.hls_at(0.95)
    goals.add_row("glass to glass < 3 s over LL-HLS (p95, with PART-HOLD-BACK)",
                  "-" if hls95 is None else f"p50 {hls50:,.0f} ms, p95 {hls95:,.0f} ms "
                  f"(hold-back {subject.hls_hold_back_s * 1000:,.0f} ms)",
                  _yes(hls95 is not None and hls95 < 3000))
    console.print(goals)
    if baseline is not None and not full_rate:
        console.print(
            f"[yellow]note[/]: the baseline's slowest viewer got {other.min_fps or 0:.1f} fps:"
            " it could not keep up (CPU-bound on this machine, with its other load), so its"
            " CPU per viewer was spent on fewer frames; the goal is judged per frame"
            " delivered. Fewer baseline viewers: --baseline-viewers.")


# -- main --------------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace, logs: str) -> tuple[Run, Run | None]:
    install_forwarding()
    livecore_port = free_port()
    env = dict(os.environ, PORT=str(livecore_port), LIVECORE_LOG_LEVEL="WARNING",
               LIVECORE_PROCESSES="1", LIVECORE_REDIS_PREFIX=f"lcmedia{os.getpid()}:")
    data_dir = None
    if "DATABASE_URL" not in env or "REDIS_URL" not in env:
        data_dir = tempfile.mkdtemp(prefix="livecore-media-")
        env["LIVECORE_DATA_DIR"] = data_dir
    command = [os.path.join(os.path.dirname(sys.executable), "livecore"), "serve"]
    baseline: Run | None = None
    try:
        console.print("starting livecore serve")
        with server_process(command, env=env, port=livecore_port,
                            log_path=os.path.join(logs, "livecore.log")) as pid:
            base = f"http://127.0.0.1:{livecore_port}"
            stream_id, key = await stage(base)
            subject = await measure("livecore", base, stream_id, key, pid, args, args.viewers)
        if not args.skip_baseline:
            port = free_port()
            console.print("starting the baseline relay")
            with server_process([sys.executable, "-m", "loadtests.media", "--baseline-server",
                                 str(port)], env=dict(os.environ), port=port,
                                log_path=os.path.join(logs, "baseline.log")) as pid:
                baseline = await measure("baseline", f"http://127.0.0.1:{port}",
                                         str(uuid.uuid4()), "baseline", pid, args,
                                         args.baseline_viewers or args.viewers)
    finally:
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
    return subject, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=20,
                        help="counting (non-decoding) WHEP viewers; one decoding viewer more")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--idle", type=float, default=5.0,
                        help="seconds measured with the publisher alone")
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds between the viewers' first frames and the window")
    parser.add_argument("--late-joiners", type=int, default=5)
    parser.add_argument("--together", type=int, default=8,
                        help="viewers joining at the same moment, for their first frame p95")
    parser.add_argument("--together-rounds", type=int, default=3)
    parser.add_argument("--spread", type=float, default=0.5,
                        help="seconds over which the --together viewers arrive (0: at once)")
    parser.add_argument("--baseline-viewers", type=int, default=0,
                        help="counting viewers of the baseline (default: --viewers); fewer"
                             " keep it from running out of CPU on a small machine")
    parser.add_argument("--codec", choices=("vp8", "h264"), default="vp8",
                        help="the only video codec the publisher and viewers offer")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--baseline-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server is not None:
        serve_baseline(args.baseline_server)
        return
    if (min(args.viewers, args.seconds, args.idle) <= 0 or args.warmup < 0
            or args.late_joiners < 0 or args.baseline_viewers < 0 or args.together < 0
            or args.together_rounds < 0 or args.spread < 0):
        parser.error("viewers, seconds and idle must be positive")
    logs = tempfile.mkdtemp(prefix="livecore-media-logs-")
    subject, baseline = asyncio.run(run_all(args, logs))
    report(args, subject, baseline)
    failures = subject.failures + (baseline.failures if baseline is not None else [])
    if failures:
        for name in ("livecore", "baseline"):
            path = Path(logs, f"{name}.log")
            if path.exists() and path.stat().st_size:
                tail = path.read_text(errors="replace").splitlines()[-5:]
                console.print(f"{name} server log ({path}), last lines:", *tail, sep="\n  ")
        raise SystemExit("FAILED: " + "; ".join(failures))
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
