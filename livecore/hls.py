"""One live HLS rendition with Low-Latency HLS parts, and its media playlist.

The packager (PyAV in the gateway) muxes fMP4; :class:`BoxFramer` cuts its byte stream into the
init segment and fragments, and the packager gathers fragments into parts. It tells a
:class:`Rendition` about every part as it is made; the rendition decides where segments are cut
(a segment is the concatenation of its parts), numbers parts and segments, names their files,
decides what the playlist shows and renders it. It does no I/O and reads no clock: the only time
it knows is media time, the sum of the durations it was fed.

Decisions, with the spec's sections (draft-pantos-hls-rfc8216bis, "HLS 2nd Edition"):

* Durations are kept as integers of 10 microseconds, the precision the playlist prints
  (5 decimals), so sums are exact and the text never shows float noise.
* ``EXT-X-TARGETDURATION`` and ``PART-TARGET`` are fixed when the rendition is made and never
  change (RFC 8216 6.2.1: the target duration MUST NOT change; 4.3.3.1: every EXTINF, rounded,
  MUST be at most it; rfc8216bis 4.4.4.9: every part MUST be at most the Part Target). So the
  rendition cuts the segments itself, from the parts it is fed (:meth:`Rendition.add_part`):

  - at an independent part (one starting with a keyframe) once the open segment holds at least
    ``min_segment_s``: segments follow the publisher's keyframes, which the gateway asks for
    every segment length, so they normally start with a keyframe;
  - before any part that would take the open segment past the target duration, keyframe or
    not. Only a publisher whose keyframes are further apart than the target duration gets such
    a segment; it does not start with a keyframe (its first part is not ``INDEPENDENT=YES``,
    and the playlist never claims ``EXT-X-INDEPENDENT-SEGMENTS``): players playing on decode it
    from the previous one, a player joining there starts at the next independent part. A
    segment longer than the target is never made: it would stall players (4.3.3.1).

  The configured target therefore needs headroom over the keyframe interval (the gateway uses
  4 s for 2 s keyframes). A part longer than ``PART-TARGET`` is refused: the packager makes
  parts that fit.
* The live playlist keeps the last ``window`` closed segments, and more when dropping one would
  leave less than three target durations (6.2.2). The media sequence only grows.
* ``EXT-X-PART`` tags are shown for the segments that end within the last three target
  durations, plus the open segment: parts for at least the last three target durations, gone
  soon after (6.2.2, "SHOULD be removed ... greater than three Target Durations from the end").
* Part files stay downloadable for three target durations after their tag left the playlist
  (6.2.2); :meth:`Rendition.take_expired` names them once that has passed, so the gateway can
  delete their bytes. Segment files never expire: every segment stays remembered because the
  replay of an ended stream is the whole recording (a VOD playlist from media sequence 0).
* ``EXT-X-VERSION`` is 6, the lowest that allows ``EXT-X-MAP`` in a non-I-frame playlist; the
  Low-Latency tags need no higher version, and 6.2.1 says not to claim more than needed.
* Blocking playlist reload follows 6.2.5.2, including its "or later" rule (a part index past
  a closed segment's last part means part 0 of the next segment) and the Advance Part Limit.
"""

from __future__ import annotations

import enum
import math
import re
from collections import deque
from dataclasses import dataclass

from livecore.errors import BadRequest, ServerError

#: Durations are counted in ticks of 10 microseconds: the printed precision of the playlist.
TICKS_PER_S = 100_000
#: Closed segments a live playlist keeps (more when fewer would be under 3 target durations).
DEFAULT_WINDOW = 6
DEFAULT_TARGET_DURATION_S = 4
DEFAULT_PART_TARGET_S = 0.3
#: A segment is cut at a keyframe once it holds this much media.
DEFAULT_MIN_SEGMENT_S = 1.0
#: The lowest version allowing EXT-X-MAP without EXT-X-I-FRAMES-ONLY (section 8).
PLAYLIST_VERSION = 6
INIT_NAME = "init.mp4"

_SEGMENT_NAME = re.compile(r"seg(0|[1-9][0-9]{0,17})\.m4s")
_PART_NAME = re.compile(r"part(0|[1-9][0-9]{0,17})\.(0|[1-9][0-9]{0,8})\.m4s")
#: A decimal-integer as the spec defines it (4.2): ASCII digits only, at most 2**64 - 1.
_DECIMAL_INTEGER = re.compile(r"[0-9]{1,20}")
_MAX_DECIMAL_INTEGER = 2**64 - 1


class PackagingError(ServerError, ValueError):
    """The media pipeline fed the rendition something impossible: our bug, never a viewer's."""


class BadDuration(PackagingError):
    """A duration that is not a positive, finite number of seconds (at least 10 us)."""


class RenditionEnded(PackagingError):
    """Media arrived after :meth:`Rendition.end`."""


class EmptySegment(PackagingError):
    """A segment boundary with no part since the last one: a segment cannot be empty."""


class PartTooLong(PackagingError):
    """A part longer than ``PART-TARGET``: the packager must cut parts that fit."""


class BadBox(PackagingError):
    """The muxer's byte stream is not a fragmented MP4 this module can frame."""


class BadReloadRequest(BadRequest):
    """``_HLS_msn`` / ``_HLS_part`` that the spec says to answer with 400 (6.2.5.2)."""


class Reload(enum.Enum):
    """What to do with a playlist request that may carry blocking-reload directives."""

    READY = "ready"  # answer now with the current playlist
    WAIT = "wait"  # hold the request; ask again after the next update


@dataclass(frozen=True, order=True)
class PartRef:
    """A part by its segment's media sequence number and its index within that segment."""

    msn: int
    index: int


@dataclass(frozen=True)
class FileRef:
    """What a media file name refers to: a whole segment (``part is None``) or one part."""

    msn: int
    part: int | None


@dataclass(frozen=True)
class ReloadRequest:
    """Parsed ``_HLS_msn`` and optional ``_HLS_part``."""

    msn: int
    part: int | None = None


@dataclass(frozen=True)
class Part:
    msn: int
    index: int
    duration: int  # ticks
    independent: bool

    @property
    def uri(self) -> str:
        return part_name(self.msn, self.index)


@dataclass(frozen=True)
class Segment:
    msn: int
    start: int  # ticks of media time since the rendition began
    parts: tuple[Part, ...]

    @property
    def duration(self) -> int:
        return sum(part.duration for part in self.parts)

    @property
    def end(self) -> int:
        return self.start + self.duration

    @property
    def uri(self) -> str:
        return segment_name(self.msn)


def segment_name(msn: int) -> str:
    return f"seg{msn}.m4s"


def part_name(msn: int, index: int) -> str:
    return f"part{msn}.{index}.m4s"


def parse_name(name: str) -> FileRef | None:
    """The segment or part a file name produced by this module refers to; ``None`` for any
    other name (the init segment is :data:`INIT_NAME`). Leading zeros are refused, so each
    file has exactly one name."""
    if match := _SEGMENT_NAME.fullmatch(name):
        return FileRef(int(match.group(1)), None)
    if match := _PART_NAME.fullmatch(name):
        return FileRef(int(match.group(1)), int(match.group(2)))
    return None


def parse_reload(msn: str | None, part: str | None) -> ReloadRequest | None:
    """The raw ``_HLS_msn`` and ``_HLS_part`` query values (``None`` when absent); ``None``
    when the request blocks on nothing. Anything malformed raises :class:`BadReloadRequest`."""
    if msn is None:
        if part is not None:
            raise BadReloadRequest("_HLS_part needs _HLS_msn.", parameter="_HLS_part")
        return None
    return ReloadRequest(
        _decimal_integer(msn, "_HLS_msn"),
        None if part is None else _decimal_integer(part, "_HLS_part"),
    )


def _decimal_integer(raw: str, name: str) -> int:
    if _DECIMAL_INTEGER.fullmatch(raw) is None or int(raw) > _MAX_DECIMAL_INTEGER:
        raise BadReloadRequest(f"{name} must be a non-negative integer.", parameter=name)
    return int(raw)


def _ticks(seconds: float, what: str) -> int:
    ticks = seconds * TICKS_PER_S
    if not math.isfinite(ticks) or round(ticks) <= 0:
        raise BadDuration(f"{what} must be a positive number of seconds, not {seconds!r}.")
    return round(ticks)


def _seconds(ticks: int) -> str:
    return f"{ticks // TICKS_PER_S}.{ticks % TICKS_PER_S:05d}"


class Rendition:
    """The segments and parts of one rendition, live then ended.

    Feed it with :meth:`add_part` and :meth:`close_segment`, finish with :meth:`end`; serve
    :meth:`render`. Files are named by :func:`segment_name`, :func:`part_name` and
    :data:`INIT_NAME`; the gateway writes the init segment before the first part.
    """

    def __init__(
        self,
        *,
        target_duration_s: int = DEFAULT_TARGET_DURATION_S,
        part_target_s: float = DEFAULT_PART_TARGET_S,
        window: int = DEFAULT_WINDOW,
        min_segment_s: float = DEFAULT_MIN_SEGMENT_S,
    ) -> None:
        if target_duration_s < 1:
            raise ValueError("target_duration_s must be at least 1.")
        if window < 1:
            raise ValueError("window must be at least 1.")
        part_target = _ticks(part_target_s, "part_target_s")
        if part_target > target_duration_s * TICKS_PER_S:
            raise ValueError("part_target_s must not exceed target_duration_s.")
        min_segment = _ticks(min_segment_s, "min_segment_s")
        if min_segment > target_duration_s * TICKS_PER_S:
            raise ValueError("min_segment_s must not exceed target_duration_s.")
        self._target = target_duration_s  # whole seconds, fixed (RFC 8216 6.2.1)
        self._part_target = part_target  # ticks, fixed
        self._min_segment = min_segment  # ticks
        self._window = window
        self._segments: list[Segment] = []  # every closed segment; msn == index
        self._open: list[Part] = []
        self._now = 0  # ticks: end of the latest part
        self._first = 0  # msn of the first segment the live playlist shows
        self._parts_from = 0  # msn of the first segment whose parts it shows
        self._retired: deque[tuple[int, Segment]] = deque()  # (parts left the playlist at, seg)
        self._ended = False

    # -- feeding -------------------------------------------------------------------------

    def add_part(self, duration_s: float, *, independent: bool) -> Part:
        """Record the next part; ``independent`` if its first video frame is a keyframe.

        The part goes into the open segment, or first closes it (see the module's notes: at an
        independent part once the segment is long enough, or when the part would take it past
        the target duration). The returned part's ``msn`` says which segment it belongs to;
        ``index == 0`` means it starts a new one."""
        if self._ended:
            raise RenditionEnded("The rendition has ended: no more parts.")
        duration = _ticks(duration_s, "duration_s")
        if duration > self._part_target:
            raise PartTooLong(
                f"A part of {_seconds(duration)} s is longer than the part target "
                f"{_seconds(self._part_target)} s."
            )
        if self._open:
            open_duration = sum(part.duration for part in self._open)
            if (independent and open_duration >= self._min_segment) or (
                open_duration + duration > self._target * TICKS_PER_S
            ):
                self.close_segment()
        part = Part(len(self._segments), len(self._open), duration, independent)
        self._open.append(part)
        self._now += part.duration
        self._slide()
        return part

    def close_segment(self) -> Segment:
        """Close the open segment: its parts, concatenated, are the segment's file."""
        if self._ended:
            raise RenditionEnded("The rendition has ended: no more segments.")
        if not self._open:
            raise EmptySegment("No part since the last segment boundary.")
        start = self._segments[-1].end if self._segments else 0
        segment = Segment(len(self._segments), start, tuple(self._open))
        self._segments.append(segment)
        self._open = []
        self._slide()
        return segment

    def end(self) -> None:
        """End the stream: close the open segment (if any part) and turn the playlist into the
        whole replay. Ending twice is harmless."""
        if self._ended:
            return
        if self._open:
            self.close_segment()
        self._ended = True
        for segment in self._segments[self._parts_from :]:
            self._retired.append((self._now, segment))
        self._parts_from = len(self._segments)

    def _slide(self) -> None:
        """Move the live window and the parts window forward (never back)."""
        three_targets = 3 * self._target * TICKS_PER_S
        kept = self._segments[self._first :]
        duration = sum(segment.duration for segment in kept)
        while len(kept) > self._window and duration - kept[0].duration >= three_targets:
            duration -= kept[0].duration
            kept = kept[1:]
            self._first += 1
        horizon = self._now - three_targets
        while self._parts_from < len(self._segments) and (
            self._parts_from < self._first or self._segments[self._parts_from].end <= horizon
        ):
            self._retired.append((self._now, self._segments[self._parts_from]))
            self._parts_from += 1

    # -- state ---------------------------------------------------------------------------

    @property
    def is_ended(self) -> bool:
        return self._ended

    @property
    def segments(self) -> tuple[Segment, ...]:
        """Every closed segment, from media sequence 0."""
        return tuple(self._segments)

    @property
    def media_sequence(self) -> int:
        """The msn of the first segment the playlist shows; files of earlier segments stay
        (they are the replay)."""
        return 0 if self._ended else self._first

    @property
    def target_duration_s(self) -> int:
        return self._target

    @property
    def part_target_s(self) -> float:
        return self._part_target / TICKS_PER_S

    @property
    def next_part(self) -> PartRef | None:
        """The part the preload hint names: a request for its file should be held until it is
        written, not answered 404 (6.2.6). ``None`` once ended."""
        if self._ended:
            return None
        return PartRef(len(self._segments), len(self._open))

    def take_expired(self) -> list[str]:
        """Names of part files no client may fetch any more, each given once: their tag left
        the playlist at least three target durations of media ago (6.2.2). After :meth:`end`
        every remaining part is given at once, as no more media time will pass; clients may
        still fetch them for three target durations, so delete them that much later."""
        grace = 3 * self._target * TICKS_PER_S
        names: list[str] = []
        while self._retired and (self._ended or self._retired[0][0] + grace <= self._now):
            _, segment = self._retired.popleft()
            names.extend(part.uri for part in segment.parts)
        return names

    # -- blocking reload -----------------------------------------------------------------

    def reload(self, msn: str | None, part: str | None) -> Reload:
        """Whether a playlist request with these raw ``_HLS_msn`` / ``_HLS_part`` values can
        be answered now (6.2.5.2). Raises :class:`BadReloadRequest` for a 400. Once ended the
        directives are ignored, as the spec requires."""
        if self._ended:
            return Reload.READY
        request = parse_reload(msn, part)
        return Reload.READY if request is None else self.reload_status(request)

    def reload_status(self, request: ReloadRequest) -> Reload:
        """Like :meth:`reload`, for a parsed request."""
        if self._ended:
            return Reload.READY
        last_msn = len(self._segments) - 1  # last Media Segment, -1 before the first
        if request.msn > last_msn + 2:
            raise BadReloadRequest(
                f"_HLS_msn is more than two segments past {last_msn}.", parameter="_HLS_msn"
            )
        if request.part is None:
            return Reload.READY if request.msn <= last_msn else Reload.WAIT
        wanted = PartRef(request.msn, request.part)
        if wanted.msn <= last_msn and wanted.index >= len(self._segments[wanted.msn].parts):
            wanted = PartRef(wanted.msn + 1, 0)  # "or later": part 0 of the next segment
        latest = self._latest_part()
        if latest is not None and wanted <= latest:
            return Reload.READY
        if latest is None or wanted.msn > latest.msn:
            ahead = wanted.index + 1
        else:
            ahead = wanted.index - latest.index
        if self._beyond_advance_part_limit(ahead):
            raise BadReloadRequest(
                "_HLS_part is too far past the last part.", parameter="_HLS_part"
            )
        return Reload.WAIT

    def _latest_part(self) -> PartRef | None:
        if self._open:
            return PartRef(self._open[-1].msn, self._open[-1].index)
        if self._segments:
            last = self._segments[-1].parts[-1]
            return PartRef(last.msn, last.index)
        return None

    def _beyond_advance_part_limit(self, ahead: int) -> bool:
        """The Advance Part Limit is 3 / PART-TARGET parts, or 3 if PART-TARGET >= 1 s."""
        if self._part_target < TICKS_PER_S:
            return ahead * self._part_target > 3 * TICKS_PER_S
        return ahead > 3

    # -- rendering -----------------------------------------------------------------------

    def render(self) -> str:
        """The media playlist: live with parts, or the whole replay once ended."""
        lines = [
            "#EXTM3U",
            f"#EXT-X-VERSION:{PLAYLIST_VERSION}",
            f"#EXT-X-TARGETDURATION:{self._target}",
        ]
        if self._ended:
            lines.append("#EXT-X-PLAYLIST-TYPE:VOD")
        else:
            lines.append(f"#EXT-X-PART-INF:PART-TARGET={_seconds(self._part_target)}")
            lines.append(
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,"
                f"PART-HOLD-BACK={_seconds(3 * self._part_target)}"
            )
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{self.media_sequence}")
        lines.append(f'#EXT-X-MAP:URI="{INIT_NAME}"')
        for segment in self._segments[self.media_sequence :]:
            if segment.msn >= self._parts_from:
                lines.extend(_part_line(part) for part in segment.parts)
            lines.append(f"#EXTINF:{_seconds(segment.duration)},")
            lines.append(segment.uri)
        if self._ended:
            lines.append("#EXT-X-ENDLIST")
        else:
            lines.extend(_part_line(part) for part in self._open)
            hint = part_name(len(self._segments), len(self._open))
            lines.append(f'#EXT-X-PRELOAD-HINT:TYPE=PART,URI="{hint}"')
        return "\n".join(lines) + "\n"


def _part_line(part: Part) -> str:
    independent = ",INDEPENDENT=YES" if part.independent else ""
    return f'#EXT-X-PART:DURATION={_seconds(part.duration)},URI="{part.uri}"{independent}'


# -- framing the muxer's byte stream -------------------------------------------------------


class ChunkKind(enum.Enum):
    INIT = "init"  # ftyp + moov (and any box before the moov): the EXT-X-MAP file
    FRAGMENT = "fragment"  # moof + mdat (and any box since the last fragment): media


@dataclass(frozen=True)
class Chunk:
    kind: ChunkKind
    data: bytes


#: Top-level boxes of a fragmented MP4 byte stream that belong to no fragment: the trailer
#: FFmpeg writes on close (movie fragment random access, ISO/IEC 14496-12 8.8.9).
_TRAILER_BOXES = frozenset({b"mfra"})


class BoxFramer:
    """Cuts a fragmented MP4 byte stream into the init segment and its fragments, by the
    boxes' own headers (ISO/IEC 14496-12 4.2: a 32-bit size and a type, the size 1 meaning a
    64-bit size follows), whatever the writes it arrives in.

    Why: the muxer's output reaches us through a buffered writer (PyAV's is 32 KiB), so one
    write may hold a fragment's end and the next one's start, and a fragment above the buffer
    size arrives in several writes. Taking writes as fragments cut parts in the middle of a
    box. Sans I/O: :meth:`feed` takes bytes, returns the chunks they complete.

    The init chunk is every box up to and including the ``moov``; then each fragment is every
    box since the previous fragment up to and including the ``mdat`` after a ``moof`` (so a
    ``styp``, ``sidx``, ``prft`` or ``emsg`` travels with its fragment). The ``mfra`` trailer
    is dropped. A box header that cannot be (a size below its header, or 0, "to the end of the
    file", which a live stream has no end for), a fragment before the ``moov``, or a second
    ``moov`` raise :class:`BadBox`.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._group = bytearray()  # complete boxes of the chunk being gathered
        self._has_init = False
        self._has_moof = False

    @property
    def pending(self) -> int:
        """Bytes fed but not yet handed out in a chunk."""
        return len(self._buffer) + len(self._group)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Chunk]:
        self._buffer += data
        chunks: list[Chunk] = []
        while (box := self._next_box()) is not None:
            kind, raw = box
            if kind in _TRAILER_BOXES:
                continue
            if not self._has_init:
                if kind in (b"moof", b"mdat"):
                    raise BadBox(f"A {kind!r} box before the moov.")
                self._group += raw
                if kind == b"moov":
                    chunks.append(Chunk(ChunkKind.INIT, bytes(self._group)))
                    self._group.clear()
                    self._has_init = True
                continue
            if kind == b"moov":
                raise BadBox("A second moov box.")
            self._group += raw
            if kind == b"moof":
                self._has_moof = True
            elif kind == b"mdat" and self._has_moof:
                chunks.append(Chunk(ChunkKind.FRAGMENT, bytes(self._group)))
                self._group.clear()
                self._has_moof = False
        return chunks

    def _next_box(self) -> tuple[bytes, bytes] | None:
        """The first complete box in the buffer, taken out of it; None until there is one."""
        buffer = self._buffer
        if len(buffer) < 8:
            return None
        size = int.from_bytes(buffer[0:4], "big")
        header = 8
        if size == 1:
            if len(buffer) < 16:
                return None
            size, header = int.from_bytes(buffer[8:16], "big"), 16
        elif size == 0:
            raise BadBox("A box sized to the end of the file, in a live stream.")
        if size < header:
            raise BadBox(f"A box of {size} bytes, shorter than its own header.")
        if len(buffer) < size:
            return None
        kind, raw = bytes(buffer[4:8]), bytes(buffer[:size])
        del buffer[:size]
        return kind, raw
