"""HLS and Low-Latency HLS output of a live stream, and its replay once the stream has ended.

The publisher's H.264 access units (forwarded by ``gateway/media.py``, never decoded) are muxed
by PyAV's ``mp4`` muxer in fragmented mode into a Python file object. The muxer is asked for a
fragment per frame (``frag_duration`` of 1 us): PyAV writes through a 32 KiB buffer, so its
writes bear no relation to fragments, and :class:`livecore.hls.BoxFramer` cuts the byte stream
into the init segment (``ftyp`` + ``moov``) and its ``moof`` + ``mdat`` fragments by their box
headers (a fragment header costs about 110 bytes: some 60 kbit/s with audio's fragments too,
2.5% of a 2.5 Mbit/s stream, the price of parts that fit their target whatever the frame rate).
The packager gathers fragments into LL-HLS parts of at most :data:`PART_TARGET_S`
(a part always starts at a keyframe, so keyframes start independent parts), and
``livecore/hls.py`` cuts segments from the parts: at a keyframe once a segment holds
:data:`MIN_SEGMENT_S`, and never past :data:`TARGET_DURATION_S`, which is fixed for the whole
stream. The gateway asks the publisher for a keyframe every :data:`SEGMENT_S`, so segments
normally last about that and start with a keyframe. A gap in the publisher's video longer than
a part (a stall) is shortened to one part on the HLS timeline, as the audio's own timeline (laid
by samples) already is, so no frame lasts longer than a part.

Files, under ``LIVECORE_DATA_DIR/hls/{stream_id}/``: the init segment; each part is appended to
its segment's file as it is made (``seg{n}.m4s.tmp`` while open, renamed whole to ``seg{n}.m4s``
when closed) and served from there by its byte range, so no segment or part is held in memory
and memory stays flat however long or fast the stream. When the stream ends the replay playlist
(``EXT-X-ENDLIST``) is written there too, and the same URLs then serve the recording.

A VP8 publisher's frames are decoded and encoded once to H.264 for HLS (:class:`Transcoder`,
libx264 ``veryfast``/``zerolatency``, a keyframe every segment length), in a thread of their own
so the event loop never waits for x264; WebRTC viewers still get the VP8 frames as sent.

The publisher's Opus audio is decoded and encoded once to AAC (48 kHz stereo) into the same
fragments, placed on the video's timeline by the arrival time of its first packet (the two
RTP clocks start independently).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fractions
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
from aiohttp import web

from livecore.errors import ClientError, NotFound, ServiceUnavailable
from livecore.hls import (
    INIT_NAME,
    BoxFramer,
    Chunk,
    ChunkKind,
    Part,
    Reload,
    Rendition,
    parse_name,
    segment_name,
)
from livecore.ids import StreamId

log = logging.getLogger(__name__)

#: EXT-X-TARGETDURATION, fixed for the whole stream: twice the segment length, headroom for a
#: keyframe that comes late (or a publisher whose keyframes are 3 or 4 s apart).
TARGET_DURATION_S = 4
#: How often the gateway asks the publisher for a keyframe: the usual segment length.
SEGMENT_S = 2
#: PART-TARGET, fixed: parts gather whole frames up to this (9 frames at 30 fps, 3 at 10 fps).
PART_TARGET_S = 0.3
#: A segment is cut at the first keyframe after this much media.
MIN_SEGMENT_S = 1.0
PLAYLIST_TYPE = "application/vnd.apple.mpegurl"
IMMUTABLE = "public, max-age=31536000, immutable"
_CLOCK = 90_000  # RTP video clock: the packets' pts unit
_TIME_BASE = fractions.Fraction(1, _CLOCK)
_AUDIO_RATE = 48_000  # Opus's clock, and the AAC output's sample rate
_AUDIO_TIME_BASE = fractions.Fraction(1, _AUDIO_RATE)
_PART_TARGET = round(PART_TARGET_S * _CLOCK)  # in clock ticks
_MAX_FRAME = _PART_TARGET  # the longest a video frame may last on the HLS timeline


class HlsUnavailable(ClientError):
    status = 404
    default_code = "hls_unavailable"


class _Output(io.RawIOBase):
    """The muxer's output: its writes (in any sizes) framed into init and fragment chunks."""

    def __init__(self) -> None:
        super().__init__()
        self.framer = BoxFramer()
        self.chunks: list[Chunk] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.chunks.extend(self.framer.feed(view))
        return view.nbytes

    def take(self) -> list[Chunk]:
        chunks, self.chunks = self.chunks, []
        return chunks


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int,
                                                                                 int]]:
    """The ISO BMFF boxes in ``data[start:end]``: (type, payload start, payload end)."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size = int.from_bytes(data[at:at + 4], "big")
        kind = data[at + 4:at + 8]
        header = 8
        if size == 1:
            size, header = int.from_bytes(data[at + 8:at + 16], "big"), 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for found, begin, finish in _boxes(data, start, end):
        if found == kind:
            return begin, finish
    return None


def video_timescale(init: bytes) -> int | None:
    """The first track's timescale (``moov/trak/mdia/mdhd``): the video's, as muxed here."""
    path = [b"moov", b"trak", b"mdia", b"mdhd"]
    start, end = 0, len(init)
    for kind in path:
        found = _child(init, start, end, kind)
        if found is None:
            return None
        start, end = found
    return _u32(init, start + (20 if init[start] == 1 else 12))


def _u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at:at + 4], "big")


def video_fragment(fragment: bytes) -> tuple[int, bool] | None:
    """For a ``moof`` + ``mdat`` fragment: the first track's (video's) total sample duration in
    its timescale and whether its first sample is a sync sample (a keyframe); None if the
    fragment holds no video sample. (ISO/IEC 14496-12: ``tfhd`` defaults, ``trun`` samples.)"""
    moof = _child(fragment, 0, len(fragment), b"moof")
    if moof is None:
        return None
    for kind, start, end in _boxes(fragment, *moof):
        tfhd, trun = _child(fragment, start, end, b"tfhd"), _child(fragment, start, end, b"trun")
        if kind != b"traf" or tfhd is None or trun is None or _u32(fragment, tfhd[0] + 4) != 1:
            continue  # not the video track's run
        flags = _u32(fragment, tfhd[0]) & 0xFFFFFF
        at = tfhd[0] + 8 + (8 if flags & 0x01 else 0) + (4 if flags & 0x02 else 0)
        default_duration = _u32(fragment, at) if flags & 0x08 else 0
        at += (4 if flags & 0x08 else 0) + (4 if flags & 0x10 else 0)
        default_flags = _u32(fragment, at) if flags & 0x20 else 0
        run_flags, count = _u32(fragment, trun[0]) & 0xFFFFFF, _u32(fragment, trun[0] + 4)
        at = trun[0] + 8 + (4 if run_flags & 0x01 else 0)
        first_flags = _u32(fragment, at) if run_flags & 0x04 else None
        at += 4 if run_flags & 0x04 else 0
        # Each sample: duration, size, flags, composition offset, as the run's flags say.
        fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if run_flags & bit]
        total = 0
        for index in range(count):
            values = {bit: _u32(fragment, at + 4 * n) for n, bit in enumerate(fields)}
            at += 4 * len(fields)
            total += values.get(0x100, default_duration)
            if index == 0 and first_flags is None and 0x400 in values:
                first_flags = values[0x400]
        if count == 0:
            return None
        sample_flags = default_flags if first_flags is None else first_flags
        return total, not sample_flags & 0x00010000  # sample_is_non_sync_sample
    return None


class Packager:
    """One live stream's HLS output: H.264 video as forwarded, and the publisher's Opus audio
    encoded once to AAC, in the same fMP4 fragments."""

    def __init__(self, directory: Path, *, audio: bool = False) -> None:
        self.directory = directory
        self.audio = audio
        self.rendition = Rendition(target_duration_s=TARGET_DURATION_S,
                                   part_target_s=PART_TARGET_S, min_segment_s=MIN_SEGMENT_S)
        self.init: bytes | None = None
        #: Where each part the playlist may still name lies: (msn, offset, length).
        self._parts: dict[str, tuple[int, int, int]] = {}
        self._file: Any = None  # the open segment's file, appended to part by part
        self._file_msn = -1
        self._file_size = 0
        self._output = _Output()
        self._container: Any = None
        self._stream: Any = None
        self._audio_stream: Any = None
        self._opus: Any = None
        self._resampler: Any = None
        self._timescale = _CLOCK  # the video track's, read from the init segment
        # The part being gathered: its fragments, its video length (clock ticks), independence.
        self._gathered: list[bytes] = []
        self._gathered_media = 0
        self._gathered_independent: bool | None = None  # None: no video sample yet
        self._last_frame = 0  # the last video fragment's length, to foresee the next
        self._last_pts: int | None = None
        self._shift = 0  # clock ticks taken off the publisher's pts (stalls shortened)
        self._last_video_at = 0.0
        #: Audio on the video's timeline: the next AAC input frame's pts (48 kHz samples).
        self._audio_started = False
        self._audio_next = 0
        self._updated = asyncio.Event()
        self.closed = False

    # -- input --

    def add_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        """One H.264 access unit (Annex-B, as forwarded) with its pts in the 90 kHz clock."""
        if self.closed:
            return
        if self._container is None:
            if not keyframe:
                return  # start on a keyframe
            self._open(data)
        pts -= self._shift
        if self._last_pts is not None:
            if pts <= self._last_pts:
                return  # a repeated or reordered frame: the muxer needs rising timestamps
            gap = pts - self._last_pts
            if gap > _MAX_FRAME:  # a stall: the frame before it lasts one part, no more
                self._shift += gap - _MAX_FRAME
                pts -= gap - _MAX_FRAME
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = _TIME_BASE
        packet.stream = self._stream
        if keyframe:
            packet.is_keyframe = True
        self._mux(packet)
        self._last_pts = pts
        self._last_video_at = time.monotonic()

    def add_audio(self, data: bytes, arrived: float) -> None:
        """One Opus packet that arrived at ``time.monotonic()`` ``arrived``: decoded and encoded
        to AAC. The first is placed on the video's timeline by its arrival time; the next follow
        by their samples (so the AAC track has no gaps; a lost packet is a short drift)."""
        if self.closed or self._audio_stream is None or self._last_pts is None:
            return
        if not self._audio_started:
            self._audio_started = True
            self._audio_next = max(0, self._last_pts * _AUDIO_RATE // _CLOCK + int(
                (arrived - self._last_video_at) * _AUDIO_RATE))
        try:
            frames = self._opus.decode(av.Packet(data))
        except av.FFmpegError:
            return  # a damaged packet: skipped
        for frame in frames:
            frame.pts = None
            for resampled in self._resampler.resample(frame):
                resampled.pts = self._audio_next
                resampled.time_base = _AUDIO_TIME_BASE
                self._audio_next += resampled.samples
                for packet in self._audio_stream.encode(resampled):
                    self._mux(packet)

    def _open(self, keyframe: bytes) -> None:
        width, height = _dimensions(keyframe)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._container = av.open(self._output, mode="w", format="mp4", options={
            "movflags": "empty_moov+default_base_moof+frag_keyframe+cmaf",
            # A fragment per frame: the packager, not the muxer, gathers them into parts.
            "frag_duration": "1",
        })
        self._stream = self._container.add_stream("h264", rate=30)
        self._stream.width, self._stream.height = width, height
        self._stream.time_base = _TIME_BASE
        if self.audio:
            self._audio_stream = self._container.add_stream("aac", rate=_AUDIO_RATE)
            self._audio_stream.layout = "stereo"
            self._audio_stream.time_base = _AUDIO_TIME_BASE
            self._opus = av.CodecContext.create("opus", "r")
            self._resampler = av.AudioResampler(format="fltp", layout="stereo",
                                                rate=_AUDIO_RATE)

    def _mux(self, packet: Any) -> None:
        self._container.mux(packet)
        self._take()

    def _take(self) -> None:
        """Sort what the muxer wrote: the init segment, then fragments, gathered into parts.
        A fragment's length and whether it starts with a keyframe are read from its own boxes
        (the first track is video); a fragment with no video sample (audio) joins the part
        being gathered."""
        for chunk in self._output.take():
            if chunk.kind is ChunkKind.INIT:
                self.init = chunk.data
                self._timescale = video_timescale(chunk.data) or _CLOCK
                _write_file(self.directory / INIT_NAME, chunk.data)
                continue
            video = video_fragment(chunk.data)
            if video is None or video[0] <= 0:
                self._gathered.append(chunk.data)
                continue
            duration = video[0] * _CLOCK // self._timescale
            keyframe = video[1]
            if self._gathered_independent is not None and (
                    keyframe or self._gathered_media + duration > _PART_TARGET):
                self._emit()
            self._gathered.append(chunk.data)
            if self._gathered_independent is None:
                self._gathered_independent = keyframe
            self._gathered_media += duration
            self._last_frame = duration
            if self._gathered_media + self._last_frame > _PART_TARGET:
                self._emit()  # the next frame would not fit: the part is done now

    def _emit(self) -> None:
        """The gathered fragments become the next part, appended to its segment's file."""
        if self._gathered_independent is None:
            return  # no video yet: the audio waits for the next part
        data = b"".join(self._gathered)
        part = self.rendition.add_part(self._gathered_media / _CLOCK,
                                       independent=self._gathered_independent)
        self._gathered, self._gathered_media, self._gathered_independent = [], 0, None
        self._append(part, data)
        for name in self.rendition.take_expired():
            self._parts.pop(name, None)
        self._notify()

    def _append(self, part: Part, data: bytes) -> None:
        if part.msn != self._file_msn:
            self._close_file()
            self._file = _open_path(self.directory, part.msn).open("wb")
            self._file_msn, self._file_size = part.msn, 0
        self._file.write(data)
        self._file.flush()  # readable by the part's requests from now on
        self._parts[part.uri] = (part.msn, self._file_size, len(data))
        self._file_size += len(data)

    def _close_file(self) -> None:
        """The open segment's file is whole: it takes its final name."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        os.replace(_open_path(self.directory, self._file_msn),
                   self.directory / segment_name(self._file_msn))

    def _notify(self) -> None:
        self._updated.set()
        self._updated = asyncio.Event()

    def finish(self) -> None:
        """The stream ended: write the last part and segment and the replay playlist."""
        if self.closed:
            return
        self.closed = True
        if self._container is not None and self._last_pts is not None:
            with contextlib.suppress(av.FFmpegError):
                if self._audio_stream is not None:
                    for packet in self._audio_stream.encode(None):
                        self._mux(packet)
            with contextlib.suppress(av.FFmpegError):
                self._container.close()
            self._take()
            self._emit()
            if self._gathered and self._file is not None:  # audio after the last video
                data = b"".join(self._gathered)
                self._file.write(data)
                self._gathered = []
        if self.rendition.segments or self._file is not None:
            self.rendition.end()
            self._close_file()
            _write_file(self.directory / "index.m3u8", self.rendition.render().encode())
        self._notify()

    @property
    def last_pts(self) -> int | None:
        return self._last_pts

    # -- output --

    def has_part(self, name: str) -> bool:
        return name in self._parts

    def read_part(self, name: str) -> bytes | None:
        """A part's bytes, read from its segment's file; None once it has expired."""
        where = self._parts.get(name)
        if where is None:
            return None
        msn, offset, length = where
        path = self.directory / segment_name(msn)
        if msn == self._file_msn and self._file is not None:
            path = _open_path(self.directory, msn)
        with path.open("rb") as file:
            file.seek(offset)
            return file.read(length)

    async def changed(self) -> bool:
        """Wait for the next part (or the end); False after three target durations (how long
        the spec lets a server hold a blocked request)."""
        try:
            async with asyncio.timeout(3.0 * self.rendition.target_duration_s):
                await self._updated.wait()
            return True
        except TimeoutError:
            return False


def _open_path(directory: Path, msn: int) -> Path:
    """The open segment's file, before it is whole."""
    return directory / (segment_name(msn) + ".tmp")


class Transcoder:
    """VP8 in, H.264 out to a :class:`Packager`: one decode and one encode per frame, in one
    worker thread (frames stay in order); results are handed back on the event loop."""

    def __init__(self, packager: Packager) -> None:
        self.packager = packager
        self._loop = asyncio.get_running_loop()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="hls-transcode")
        self._decoder: Any = av.CodecContext.create("vp8", "r")
        self._encoder: Any = None
        self._started = False

    def add_vp8(self, data: bytes, pts: int, keyframe: bool) -> None:
        if not self._started and not keyframe:
            return
        self._started = True
        self._worker.submit(self._convert, data, pts)

    def _convert(self, data: bytes, pts: int) -> None:  # in the worker thread
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:
            log.warning("VP8 frame not decoded for HLS", extra={"error": repr(exc)})
            return
        for frame in frames:
            if self._encoder is None:
                self._encoder = _h264_encoder(frame.width, frame.height)
            frame.pts, frame.time_base = pts, _TIME_BASE
            frame.pict_type = av.video.frame.PictureType.NONE
            for packet in self._encoder.encode(frame):
                self._loop.call_soon_threadsafe(self.packager.add_video, bytes(packet),
                                                int(packet.pts), bool(packet.is_keyframe))

    def close(self) -> None:
        """Stop taking frames; those already submitted are still converted."""
        self._worker.shutdown(wait=False)


def _h264_encoder(width: int, height: int) -> Any:
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = _TIME_BASE
    encoder.framerate = fractions.Fraction(30, 1)
    encoder.options = {"preset": "veryfast", "tune": "zerolatency", "bf": "0",
                       "g": str(SEGMENT_S * 30), "keyint_min": "30",
                       "sc_threshold": "0", "repeat-headers": "1"}
    encoder.open()
    return encoder


def _dimensions(keyframe: bytes) -> tuple[int, int]:
    """The picture size, from decoding the stream's first keyframe (once per stream)."""
    decoder = av.CodecContext.create("h264", "r")
    try:
        for frame in decoder.decode(av.Packet(keyframe)):
            return frame.width, frame.height
        for frame in decoder.decode(None):
            return frame.width, frame.height
    except av.FFmpegError:
        pass
    return 0, 0


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (a reader never sees half a segment)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# -- HTTP ------------------------------------------------------------------------------------


def write_replay(directory: Path) -> bool:
    """The replay playlist of a stream whose packager died with its process (killed), made
    from the init segment and the closed segments it had written; whether there is one.
    (The open segment's parts were only in memory: the replay ends before them.)"""
    init = directory / INIT_NAME
    if not init.is_file():
        return False
    timescale = video_timescale(init.read_bytes()) or _CLOCK
    rendition = Rendition(target_duration_s=TARGET_DURATION_S, part_target_s=PART_TARGET_S)
    msn = 0
    while (directory / segment_name(msn)).is_file():
        data = (directory / segment_name(msn)).read_bytes()
        parts = 0
        box_at = fragment_at = 0  # boxes follow each other: one starts where the last ended
        for kind, _, end in _boxes(data):
            if kind == b"moof":
                fragment_at = box_at
            elif kind == b"mdat":
                video = video_fragment(data[fragment_at:end])
                if video is not None and video[0] > 0:
                    rendition.add_part(video[0] / timescale, independent=video[1])
                    parts += 1
            box_at = end
        if parts == 0:
            break
        rendition.close_segment()
        msn += 1
    if not rendition.segments:
        return False
    rendition.end()
    _write_file(directory / "index.m3u8", rendition.render().encode())
    return True


class HlsOutput:
    """Every stream's HLS output in this process, and the replays on disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live: dict[StreamId, Packager] = {}
        self.transcoders: dict[StreamId, Transcoder] = {}

    def start(self, stream_id: StreamId, *, audio: bool = False) -> Packager:
        """The stream's packager (made on first use; ``audio``: the publisher sends audio)."""
        packager = self.live.get(stream_id)
        if packager is None or packager.closed:
            packager = self.live[stream_id] = Packager(self.root / str(stream_id), audio=audio)
        return packager

    def transcoder(self, stream_id: StreamId) -> Transcoder:
        """The VP8-to-H.264 converter feeding the stream's packager."""
        transcoder = self.transcoders.get(stream_id)
        if transcoder is None:
            transcoder = self.transcoders[stream_id] = Transcoder(self.live[stream_id])
        return transcoder

    def finish(self, stream_id: StreamId) -> None:
        transcoder = self.transcoders.pop(stream_id, None)
        if transcoder is not None:
            transcoder.close()
        packager = self.live.pop(stream_id, None)
        if packager is not None:
            packager.finish()

    async def playlist(self, stream_id: StreamId, query: Any) -> web.Response:
        packager = self.live.get(stream_id)
        if packager is None or packager.init is None:
            replay = self.root / str(stream_id) / "index.m3u8"
            if replay.is_file():
                return web.Response(body=replay.read_bytes(), content_type=PLAYLIST_TYPE,
                                    headers={"Cache-Control": "public, max-age=86400"})
            raise HlsUnavailable("This stream has no HLS output (no media has arrived yet).")
        msn, part = query.get("_HLS_msn"), query.get("_HLS_part")
        rendition = packager.rendition
        while rendition.reload(msn, part) is Reload.WAIT:
            if not await packager.changed():
                raise ServiceUnavailable("The requested part did not arrive in time.",
                                         code="hls_part_timeout")
        blocking = msn is not None
        cache = (f"public, max-age={6 * rendition.target_duration_s}" if blocking
                 else "public, max-age=1")
        if rendition.is_ended:
            cache = "public, max-age=86400"
        return web.Response(text=rendition.render(), content_type=PLAYLIST_TYPE,
                            headers={"Cache-Control": cache})

    async def file(self, stream_id: StreamId, name: str) -> web.Response:
        ref = parse_name(name) if name != INIT_NAME else None
        if name != INIT_NAME and ref is None:
            raise NotFound("No such HLS file.", code="hls_file_not_found")
        content_type = "video/mp4" if name == INIT_NAME else "video/iso.segment"
        packager = self.live.get(stream_id)
        if packager is not None and ref is not None and ref.part is not None:
            hinted = packager.rendition.next_part
            # The preload hint's part is held until it exists (LL-HLS): wait for it.
            while (not packager.has_part(name) and hinted is not None
                   and (hinted.msn, hinted.index) == (ref.msn, ref.part)):
                if not await packager.changed():
                    raise ServiceUnavailable("The hinted part did not arrive in time.",
                                             code="hls_part_timeout")
                hinted = packager.rendition.next_part
            data = packager.read_part(name)
            if data is not None:
                return web.Response(body=data, content_type=content_type,
                                    headers={"Cache-Control": IMMUTABLE})
        path = self.root / str(stream_id) / name
        if path.is_file():
            return web.Response(body=path.read_bytes(), content_type=content_type,
                                headers={"Cache-Control": IMMUTABLE})
        raise NotFound("No such HLS file.", code="hls_file_not_found")
