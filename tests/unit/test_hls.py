"""The LL-HLS rendition: every playlist it renders is read twice, by the ``m3u8`` library and by
the line checks below, and held to the rules of draft-pantos-hls-rfc8216bis."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

import m3u8  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livecore.errors import BadRequest
from livecore.hls import (
    INIT_NAME,
    TICKS_PER_S,
    BadBox,
    BadDuration,
    BadReloadRequest,
    BoxFramer,
    Chunk,
    ChunkKind,
    EmptySegment,
    FileRef,
    PackagingError,
    PartRef,
    PartTooLong,
    Reload,
    ReloadRequest,
    Rendition,
    RenditionEnded,
    parse_name,
    parse_reload,
    part_name,
    segment_name,
)

_ATTRIBUTE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


def _ticks(text: str) -> int:
    """A printed duration in ticks, exactly (no float on the way)."""
    value = Decimal(text) * TICKS_PER_S
    assert value == value.to_integral_value(), f"{text} has more than 5 decimals"
    return int(value)


def _attributes(line: str) -> dict[str, str]:
    return {key: value.strip('"') for key, value in _ATTRIBUTE.findall(line.split(":", 1)[1])}


@dataclass
class Seen:
    """What the line checks read from one playlist."""

    target: int = 0  # seconds
    part_target: int | None = None  # ticks
    part_hold_back: int | None = None  # ticks
    media_sequence: int = 0
    segments: list[tuple[str, int]] = field(default_factory=list)  # (uri, ticks)
    parts: list[list[tuple[str, int, bool]]] = field(default_factory=list)  # per segment + open
    hint: str | None = None
    ended: bool = False
    vod: bool = False

    @property
    def listed(self) -> set[str]:
        return {uri for uri, _ in self.segments} | {p[0] for ps in self.parts for p in ps}


def read_lines(text: str) -> Seen:
    """Parse a playlist line by line and assert the spec's rules on the way."""
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U"
    assert lines[1] == "#EXT-X-VERSION:6"
    assert text.endswith("\n") and "" not in lines
    seen = Seen()
    pending: list[tuple[str, int, bool]] = []
    extinf: int | None = None
    for line in lines[2:]:
        tag, _, value = line.partition(":")
        if extinf is not None:
            assert not line.startswith("#"), "EXTINF must be followed by its URI"
            seen.segments.append((line, extinf))
            seen.parts.append(pending)
            pending, extinf = [], None
        elif tag == "#EXT-X-TARGETDURATION":
            seen.target = int(value)
        elif tag == "#EXT-X-PART-INF":
            seen.part_target = _ticks(_attributes(line)["PART-TARGET"])
        elif tag == "#EXT-X-SERVER-CONTROL":
            control = _attributes(line)
            assert control["CAN-BLOCK-RELOAD"] == "YES"
            seen.part_hold_back = _ticks(control["PART-HOLD-BACK"])
        elif tag == "#EXT-X-MEDIA-SEQUENCE":
            seen.media_sequence = int(value)
        elif tag == "#EXT-X-MAP":
            assert _attributes(line) == {"URI": INIT_NAME}
            assert not seen.segments and not pending, "EXT-X-MAP comes before any media"
        elif tag == "#EXT-X-PART":
            part = _attributes(line)
            assert set(part) <= {"DURATION", "URI", "INDEPENDENT"}
            independent = part.get("INDEPENDENT") == "YES"
            pending.append((part["URI"], _ticks(part["DURATION"]), independent))
        elif tag == "#EXTINF":
            assert value.endswith(",")
            extinf = _ticks(value[:-1])
            if pending:  # a segment is the concatenation of its parts
                assert sum(ticks for _, ticks, _ in pending) == extinf
        elif tag == "#EXT-X-PRELOAD-HINT":
            hint = _attributes(line)
            assert hint["TYPE"] == "PART"
            seen.hint = hint["URI"]
            assert line == lines[-1]
        elif tag == "#EXT-X-PLAYLIST-TYPE":
            seen.vod = value == "VOD"
        elif tag == "#EXT-X-ENDLIST":
            seen.ended = True
            assert line == lines[-1]
        else:
            pytest.fail(f"unexpected line {line!r}")
    assert extinf is None
    seen.parts.append(pending)  # the open segment's parts
    # EXT-X-TARGETDURATION: every EXTINF, rounded (up, stricter than the spec's nearest), fits.
    assert seen.target >= 1
    assert all(math.ceil(ticks / TICKS_PER_S) <= seen.target for _, ticks in seen.segments)
    if seen.ended:
        assert seen.vod and seen.hint is None and seen.part_target is None
        assert seen.part_hold_back is None and not any(seen.parts)
    else:
        assert not seen.vod and seen.hint is not None
        assert seen.part_target is not None and seen.part_hold_back is not None
        assert seen.part_hold_back >= 3 * seen.part_target
        assert all(ticks <= seen.part_target for ps in seen.parts for _, ticks, _ in ps)
        assert seen.hint not in seen.listed
        with_parts = [bool(ps) for ps in seen.parts[:-1]]
        assert with_parts == sorted(with_parts), "parts are shown for a suffix of the segments"
    return seen


def read_m3u8(text: str, seen: Seen) -> m3u8.M3U8:
    """The m3u8 library (strict) reads the same playlist as the line checks."""
    playlist = m3u8.M3U8(text, strict=True)
    assert playlist.version == 6
    assert playlist.target_duration == seen.target
    assert playlist.media_sequence == seen.media_sequence
    assert playlist.segment_map[0].uri == INIT_NAME
    closed = [s for s in playlist.segments if s.uri is not None]
    assert [(s.uri, round(s.duration * TICKS_PER_S)) for s in closed] == seen.segments
    parts = [[(p.uri, round(p.duration * TICKS_PER_S), p.independent == "YES") for p in s.parts]
             for s in playlist.segments]
    if len(playlist.segments) == len(closed):
        parts.append([])  # no open segment
    assert parts == seen.parts
    assert playlist.is_endlist is seen.ended
    if seen.ended:
        assert playlist.playlist_type == "vod"
        assert playlist.preload_hint is None and not playlist.part_inf
    else:
        assert playlist.playlist_type is None
        assert playlist.server_control.can_block_reload == "YES"
        part_target = playlist.part_inf.part_target
        assert playlist.server_control.part_hold_back >= 3 * part_target - 1e-9
        assert all(p.duration <= part_target for s in playlist.segments for p in s.parts)
        assert playlist.preload_hint.hint_type == "PART"
        assert playlist.preload_hint.uri == seen.hint
    return playlist


def check(rendition: Rendition) -> Seen:
    text = rendition.render()
    seen = read_lines(text)
    read_m3u8(text, seen)
    return seen


def feed(rendition: Rendition, segments: int, parts: int, part_s: float) -> None:
    for _ in range(segments):
        for index in range(parts):
            rendition.add_part(part_s, independent=index == 0)
        rendition.close_segment()


def test_a_live_playlist_as_rendered():
    rendition = Rendition(target_duration_s=1, part_target_s=0.5, window=4)
    feed(rendition, 5, 2, 0.5)
    rendition.add_part(0.5, independent=True)
    # Media time is 5.5 s: segment 1 ended 3.5 s ago, so only its EXTINF is left.
    assert rendition.render() == (
        "#EXTM3U\n"
        "#EXT-X-VERSION:6\n"
        "#EXT-X-TARGETDURATION:1\n"
        "#EXT-X-PART-INF:PART-TARGET=0.50000\n"
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.50000\n"
        "#EXT-X-MEDIA-SEQUENCE:1\n"
        '#EXT-X-MAP:URI="init.mp4"\n'
        "#EXTINF:1.00000,\n"
        "seg1.m4s\n"
        '#EXT-X-PART:DURATION=0.50000,URI="part2.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PART:DURATION=0.50000,URI="part2.1.m4s"\n'
        "#EXTINF:1.00000,\n"
        "seg2.m4s\n"
        '#EXT-X-PART:DURATION=0.50000,URI="part3.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PART:DURATION=0.50000,URI="part3.1.m4s"\n'
        "#EXTINF:1.00000,\n"
        "seg3.m4s\n"
        '#EXT-X-PART:DURATION=0.50000,URI="part4.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PART:DURATION=0.50000,URI="part4.1.m4s"\n'
        "#EXTINF:1.00000,\n"
        "seg4.m4s\n"
        '#EXT-X-PART:DURATION=0.50000,URI="part5.0.m4s",INDEPENDENT=YES\n'
        '#EXT-X-PRELOAD-HINT:TYPE=PART,URI="part5.1.m4s"\n'
    )
    check(rendition)


def test_media_sequence_follows_the_sliding_window():
    rendition = Rendition(target_duration_s=1, part_target_s=0.5, window=3)
    sequences = []
    for closed in range(1, 9):
        feed(rendition, 1, 2, 0.5)
        seen = check(rendition)
        sequences.append(seen.media_sequence)
        first = max(0, closed - 3)
        assert [uri for uri, _ in seen.segments] == [segment_name(m) for m in range(first, closed)]
        assert rendition.media_sequence == first
    assert sequences == [0, 0, 0, 1, 2, 3, 4, 5]


def test_the_window_never_shrinks_below_three_target_durations():
    # 0.5 s segments with a 2 s target: 3 segments would be 1.5 s, under the 6 s floor (6.2.2).
    rendition = Rendition(target_duration_s=2, part_target_s=0.25, window=3)
    feed(rendition, 30, 2, 0.25)
    seen = check(rendition)
    assert len(seen.segments) == 12 and seen.media_sequence == 18
    assert sum(ticks for _, ticks in seen.segments) == 6 * TICKS_PER_S


def test_parts_are_listed_for_the_last_three_target_durations_only():
    rendition = Rendition(target_duration_s=1, part_target_s=0.25, window=6)
    feed(rendition, 8, 4, 0.25)
    rendition.add_part(0.25, independent=True)
    seen = check(rendition)
    # Media time is 8.25 s: segments ending after 5.25 s (5, 6, 7) keep their parts.
    assert [bool(ps) for ps in seen.parts] == [False, False, False, True, True, True, True]
    assert seen.parts[3][0] == ("part5.0.m4s", 25_000, True)
    assert [uri for uri, _, _ in seen.parts[-1]] == ["part8.0.m4s"]


def test_the_preload_hint_names_the_next_part():
    rendition = Rendition()
    assert check(rendition).hint == "part0.0.m4s"
    rendition.add_part(0.2, independent=True)
    assert check(rendition).hint == "part0.1.m4s"
    assert rendition.next_part == PartRef(0, 1)
    rendition.add_part(0.2, independent=False)
    rendition.close_segment()
    seen = check(rendition)
    assert seen.hint == "part1.0.m4s" and rendition.next_part == PartRef(1, 0)
    assert seen.listed == {"seg0.m4s", "part0.0.m4s", "part0.1.m4s"}


def test_end_makes_the_whole_replay():
    rendition = Rendition(target_duration_s=1, part_target_s=0.5, window=2)
    feed(rendition, 9, 2, 0.5)
    rendition.add_part(0.5, independent=True)  # the open segment is closed by end()
    assert check(rendition).media_sequence == 6  # window 2, but 3 target durations are kept
    rendition.end()
    seen = check(rendition)
    assert seen.ended and seen.vod and seen.media_sequence == 0
    assert [uri for uri, _ in seen.segments] == [segment_name(m) for m in range(10)]
    assert seen.segments[-1] == ("seg9.m4s", 50_000)
    text = rendition.render()
    assert "#EXT-X-PART" not in text and "PRELOAD-HINT" not in text
    assert "SERVER-CONTROL" not in text and text.endswith("#EXT-X-ENDLIST\n")
    assert rendition.is_ended and rendition.next_part is None
    rendition.end()  # ending twice changes nothing
    assert rendition.render() == text


def test_end_without_an_open_segment_and_before_any_media():
    rendition = Rendition()
    feed(rendition, 2, 3, 0.2)
    rendition.end()
    assert [uri for uri, _ in check(rendition).segments] == ["seg0.m4s", "seg1.m4s"]
    empty = Rendition(target_duration_s=4)
    empty.end()
    seen = check(empty)
    assert seen.ended and seen.segments == [] and seen.target == 4


def test_durations_print_without_float_noise():
    rendition = Rendition(target_duration_s=2, part_target_s=0.1)
    for _ in range(20):
        rendition.add_part(0.1, independent=False)  # 20 x 0.1 is 2.0000000000000004 in floats
    rendition.close_segment()
    text = rendition.render()
    assert "#EXTINF:2.00000," in text and "#EXT-X-TARGETDURATION:2\n" in text
    assert rendition.segments[0].duration == 2 * TICKS_PER_S


def test_segments_are_cut_at_a_keyframe_once_long_enough():
    rendition = Rendition(target_duration_s=4, part_target_s=0.5, min_segment_s=1.0)
    keys = [True, False, True, False, False, True, False, False, False, False, True]
    parts = [rendition.add_part(0.5, independent=key) for key in keys]
    # Keyframes 1.0 s, 1.5 s and 2.5 s into their segments: each is a cut.
    assert [(p.msn, p.index) for p in parts] == [
        (0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 0)]
    assert [s.duration for s in rendition.segments] == [100_000, 150_000, 250_000]
    early = Rendition(target_duration_s=4, part_target_s=0.5, min_segment_s=1.0)
    early.add_part(0.5, independent=True)
    assert early.add_part(0.5, independent=True).msn == 0  # 0.5 s in: too short to cut
    check(rendition)


def test_without_keyframes_segments_are_cut_at_the_target_which_never_changes():
    """A publisher whose keyframes are further apart than the target (RFC 8216 4.3.3.1 and
    6.2.1: every EXTINF fits the target, and the target does not change)."""
    rendition = Rendition(target_duration_s=2, part_target_s=0.3)
    rendition.add_part(0.3, independent=True)
    for _ in range(30):
        rendition.add_part(0.3, independent=False)
        assert check(rendition).target == 2
    durations = [s.duration for s in rendition.segments]
    assert durations == [180_000] * 5  # six parts; a seventh would make 2.1 s
    assert [s.parts[0].independent for s in rendition.segments] == [True] + [False] * 4
    assert rendition.target_duration_s == 2


def test_a_part_longer_than_the_part_target_is_refused_and_changes_nothing():
    rendition = Rendition(target_duration_s=2, part_target_s=0.2)
    rendition.add_part(0.2, independent=True)
    before = rendition.render()
    with pytest.raises(PartTooLong):
        rendition.add_part(0.26, independent=False)
    assert rendition.render() == before
    seen = check(rendition)
    assert seen.part_target == 20_000 and seen.part_hold_back == 60_000
    assert rendition.part_target_s == 0.2


@pytest.mark.parametrize("duration", [0.0, -0.2, math.nan, math.inf, -math.inf, 4e-6, 1e308])
def test_bad_durations_are_refused_and_change_nothing(duration):
    rendition = Rendition()
    rendition.add_part(0.2, independent=True)
    before = rendition.render()
    with pytest.raises(BadDuration):
        rendition.add_part(duration, independent=False)
    assert rendition.render() == before


def test_misuse_is_refused_with_clear_errors():
    rendition = Rendition()
    with pytest.raises(EmptySegment):
        rendition.close_segment()
    rendition.add_part(0.2, independent=True)
    rendition.end()
    with pytest.raises(RenditionEnded):
        rendition.add_part(0.2, independent=True)
    with pytest.raises(RenditionEnded):
        rendition.close_segment()
    assert issubclass(PackagingError, ValueError)
    assert len(rendition.segments) == 1
    for kwargs in ({"target_duration_s": 0}, {"window": 0}, {"part_target_s": 0.0},
                   {"target_duration_s": 1, "part_target_s": 1.5},
                   {"target_duration_s": 1, "min_segment_s": 1.5}):
        with pytest.raises(ValueError):
            Rendition(**kwargs)


def test_names_map_back_to_segments_and_parts():
    assert parse_name(part_name(12, 3)) == FileRef(12, 3)
    assert parse_name(segment_name(0)) == FileRef(0, None)
    assert parse_name("seg4711.m4s") == FileRef(4711, None)
    for name in (INIT_NAME, "seg01.m4s", "seg-1.m4s", "part1.m4s", "part1.01.m4s", "seg1.mp4",
                 "../seg1.m4s", "seg1.m4s/", "seg.m4s", "seg١.m4s", "part1.2.m4s.tmp", ""):
        assert parse_name(name) is None, name


@pytest.mark.parametrize(
    ("msn", "part", "expected"),
    [(None, None, None), ("0", None, ReloadRequest(0)), ("17", "3", ReloadRequest(17, 3))],
)
def test_reload_directives_parse(msn, part, expected):
    assert parse_reload(msn, part) == expected


@pytest.mark.parametrize(
    ("msn", "part"),
    [(None, "1"), ("-1", None), ("3", "-1"), ("abc", None), ("", None), ("3", ""), ("1.5", None),
     ("+1", None), (" 1", None), ("٣", None), ("1e3", None), (str(2**64), None), ("3", "x")],
)
def test_malformed_reload_directives_are_400(msn, part):
    with pytest.raises(BadReloadRequest) as caught:
        parse_reload(msn, part)
    assert isinstance(caught.value, BadRequest) and caught.value.status == 400


def _live() -> Rendition:
    """Segments 0-4 closed (four 0.25 s parts each); segment 5 open with parts 0 and 1."""
    rendition = Rendition(target_duration_s=1, part_target_s=0.25)
    feed(rendition, 5, 4, 0.25)
    rendition.add_part(0.25, independent=True)
    rendition.add_part(0.25, independent=False)
    return rendition


@pytest.mark.parametrize(
    ("msn", "part", "expected"),
    [
        (None, None, Reload.READY),  # no directive
        ("4", None, Reload.READY),  # the last closed segment
        ("0", None, Reload.READY),  # long gone from the window: still "M or later"
        ("0", "3", Reload.READY),
        ("5", "1", Reload.READY),  # the latest part
        ("4", "9", Reload.READY),  # past segment 4's last part: part 0 of segment 5 (6.2.5.2)
        ("5", "2", Reload.WAIT),  # the next part
        ("5", None, Reload.WAIT),  # the next segment, still open
        ("6", None, Reload.WAIT),  # last closed + 2
        ("6", "0", Reload.WAIT),
        ("5", "13", Reload.WAIT),  # 12 parts ahead: exactly the Advance Part Limit (3 / 0.25)
    ],
)
def test_blocking_reload_decisions(msn, part, expected):
    assert _live().reload(msn, part) is expected


@pytest.mark.parametrize(
    ("msn", "part"),
    [("7", None), ("7", "0"), ("5", "14"), ("6", "12"), (None, "2"), ("x", None), ("-1", "0")],
)
def test_blocking_reload_refusals(msn, part):
    with pytest.raises(BadReloadRequest):
        _live().reload(msn, part)


def test_a_part_index_past_a_closed_segment_waits_for_the_next_segment():
    rendition = _live()
    rendition.close_segment()  # segment 5 has parts 0 and 1
    assert rendition.reload_status(ReloadRequest(5, 7)) is Reload.WAIT
    # It is part 0 of segment 6, one part ahead: not 49 parts past the Advance Part Limit.
    assert rendition.reload_status(ReloadRequest(5, 50)) is Reload.WAIT
    rendition.add_part(0.25, independent=True)
    assert rendition.reload_status(ReloadRequest(5, 7)) is Reload.READY
    assert rendition.reload_status(ReloadRequest(6, 1)) is Reload.WAIT


def test_with_parts_of_a_second_or_more_the_advance_part_limit_is_three_parts():
    rendition = Rendition(target_duration_s=4, part_target_s=1.0)
    rendition.add_part(1.0, independent=True)  # the latest part is (0, 0)
    assert rendition.reload("0", "3") is Reload.WAIT
    with pytest.raises(BadReloadRequest):
        rendition.reload("0", "4")


def test_blocking_reload_before_any_media():
    rendition = Rendition()
    assert rendition.reload("0", "0") is Reload.WAIT
    assert rendition.reload("1", None) is Reload.WAIT
    with pytest.raises(BadReloadRequest):
        rendition.reload("2", None)


def test_after_the_end_every_request_is_answered_at_once():
    rendition = _live()
    rendition.end()
    for msn, part in (("5", "9"), ("99", None), (None, "1"), ("x", "-1"), (None, None)):
        assert rendition.reload(msn, part) is Reload.READY
    assert rendition.reload_status(ReloadRequest(1000, 5)) is Reload.READY


def test_part_files_expire_three_target_durations_after_leaving_the_playlist():
    rendition = Rendition(target_duration_s=1, part_target_s=0.25, window=4)
    expired: list[str] = []
    for _ in range(12):
        for index in range(4):
            rendition.add_part(0.25, independent=index == 0)
            now = sum(s.duration for s in rendition.segments) + 25_000 * (index + 1)
            fresh = rendition.take_expired()
            assert not set(fresh) & check(rendition).listed
            for name in fresh:
                ref = parse_name(name)
                assert ref is not None and ref.part is not None
                # shown until its segment ended 3 s ago, then fetchable 3 s more
                assert rendition.segments[ref.msn].end + 6 * TICKS_PER_S <= now
            expired += fresh
        rendition.close_segment()
    # Media time is 12 s: segments that ended by 6 s (0 to 5) left the playlist 3 s before that.
    assert expired == [part_name(m, i) for m in range(6) for i in range(4)]
    rendition.end()
    rest = rendition.take_expired()
    assert expired + rest == [part_name(m, i) for m in range(12) for i in range(4)]
    assert rendition.take_expired() == []


_ops = st.lists(
    st.one_of(
        st.tuples(st.floats(min_value=0.05, max_value=1.0), st.booleans()),  # of the part target
        st.none(),  # a segment boundary
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=_ops,
    target=st.integers(min_value=1, max_value=3),
    part_target=st.sampled_from([0.1, 0.2, 1 / 3, 0.5, 1.0]),
    window=st.integers(min_value=1, max_value=6),
)
def test_any_feed_keeps_every_playlist_valid(ops, target, part_target, window):
    rendition = Rendition(target_duration_s=target, part_target_s=part_target, window=window)
    previous = check(rendition)
    fed = 0
    expired: set[str] = set()
    for op in ops:
        if op is None:
            if rendition.next_part is not None and rendition.next_part.index == 0:
                with pytest.raises(EmptySegment):
                    rendition.close_segment()
            else:
                rendition.close_segment()
        else:
            fed += rendition.add_part(op[0] * part_target, independent=op[1]).duration
        seen = check(rendition)
        assert seen.target == target  # never changes; check() holds every EXTINF to it
        closed = len(rendition.segments)
        listed = [ticks for _, ticks in seen.segments]
        # The window only slides forward, and shows every segment from there to the last.
        assert seen.media_sequence >= previous.media_sequence
        assert [uri for uri, _ in seen.segments] == [
            segment_name(m) for m in range(seen.media_sequence, closed)
        ]
        assert len(listed) >= min(window, closed)
        assert len(listed) <= window or sum(listed[1:]) < 3 * seen.target * TICKS_PER_S
        assert seen.hint == part_name(closed, len(seen.parts[-1]))
        fresh = set(rendition.take_expired())
        assert not fresh & seen.listed and not fresh & expired
        expired |= fresh
        three = 3 * target * TICKS_PER_S  # the spec's floors hold
        if seen.media_sequence > 0:
            assert sum(listed) >= three
        shown = sum(t for ps in seen.parts for _, t, _ in ps)
        assert shown >= min(three, sum(listed) + sum(t for _, t, _ in seen.parts[-1]))
        previous = seen
    rendition.end()
    seen = check(rendition)
    assert [uri for uri, _ in seen.segments] == [
        segment_name(m) for m in range(len(rendition.segments))
    ]
    assert sum(ticks for _, ticks in seen.segments) == fed
    expired |= set(rendition.take_expired())
    assert expired == {p.uri for s in rendition.segments for p in s.parts}


# -- the byte-stream framer -----------------------------------------------------------------


def _box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:  # size 1, then a 64-bit size (ISO/IEC 14496-12 4.2)
        return (1).to_bytes(4, "big") + kind + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


_INIT = _box(b"ftyp", b"iso6cmfc") + _box(b"moov", _box(b"mvhd", bytes(100)))
_FRAGMENTS = [
    _box(b"moof", _box(b"mfhd", bytes(8))) + _box(b"mdat", bytes(range(256)) * 3),
    _box(b"styp", b"msdh") + _box(b"moof", bytes(40)) + _box(b"mdat", b"x" * 70, large=True),
    _box(b"moof", bytes(24)) + _box(b"mdat", b""),  # an empty mdat is still a fragment's end
]
_STREAM = _INIT + b"".join(_FRAGMENTS) + _box(b"mfra", bytes(16))
_EXPECTED = [Chunk(ChunkKind.INIT, _INIT)] + [Chunk(ChunkKind.FRAGMENT, f) for f in _FRAGMENTS]


def _framed(writes: list[bytes]) -> list[Chunk]:
    framer = BoxFramer()
    chunks = [chunk for write in writes for chunk in framer.feed(write)]
    assert framer.pending == 0
    return chunks


def test_the_framer_cuts_whole_boxes_whatever_the_writes():
    assert _framed([_STREAM]) == _EXPECTED  # many boxes in one write
    assert _framed([bytes([b]) for b in _STREAM]) == _EXPECTED  # a byte at a time
    for cut in range(1, len(_STREAM)):  # mid-header, mid-size, mid-payload, on a boundary
        assert _framed([_STREAM[:cut], _STREAM[cut:]]) == _EXPECTED, cut
    for size in (3, 7, 15, 16, 17, 100, 32 * 1024):
        writes = [_STREAM[at:at + size] for at in range(0, len(_STREAM), size)]
        assert _framed(writes) == _EXPECTED, size


def test_a_fragment_is_handed_out_as_soon_as_its_mdat_is_whole():
    framer = BoxFramer()
    assert framer.feed(_INIT[:-1]) == []
    assert framer.feed(_INIT[-1:]) == [Chunk(ChunkKind.INIT, _INIT)]
    first = _FRAGMENTS[0]
    assert framer.feed(first[:-1]) == [] and framer.pending == len(first) - 1
    assert framer.feed(first[-1:]) == [Chunk(ChunkKind.FRAGMENT, first)]
    assert framer.pending == 0


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_box(b"moof", b"") + _box(b"mdat", b""), "before the moov"),
        (_INIT + _box(b"moov", b""), "second moov"),
        (_INIT + (0).to_bytes(4, "big") + b"mdat", "end of the file"),
        (_INIT + (7).to_bytes(4, "big") + b"moof", "shorter than its own header"),
        (_INIT + (1).to_bytes(4, "big") + b"mdat" + (15).to_bytes(8, "big"), "shorter"),
    ],
)
def test_the_framer_refuses_boxes_that_cannot_be(stream, message):
    framer = BoxFramer()
    with pytest.raises(BadBox, match=message) as caught:
        framer.feed(stream)
    assert isinstance(caught.value, PackagingError)
