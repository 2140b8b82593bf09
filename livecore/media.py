"""Media rules that need no I/O: what an SDP offer asks for, and which encoded frames are
keyframes.

The gateway forwards the publisher's encoded frames to every viewer without decoding them
(``gateway/media.py``), so it must tell a keyframe from the bytes alone: a viewer can only start
decoding on one. And it judges WHIP/WHEP requests from their SDP before any WebRTC work starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from livecore.errors import ClientError

#: Content types of the WHIP/WHEP exchange (RFC 9725).
SDP_TYPE = "application/sdp"
TRICKLE_TYPE = "application/trickle-ice-sdpfrag"

#: H.264 NAL unit type of an IDR picture (a keyframe), and of the parameter sets.
_H264_IDR = 5
_START_CODE = re.compile(b"\x00\x00\x01")


class MalformedSdp(ClientError):
    status = 400
    default_code = "malformed_sdp"


class IceRestartUnsupported(ClientError):
    status = 422
    default_code = "ice_restart_unsupported"


def h264_is_keyframe(data: bytes) -> bool:
    """Whether an Annex-B H.264 access unit (as aiortc's depayloader assembles it) holds an IDR
    picture."""
    for match in _START_CODE.finditer(data):
        at = match.end()
        if at < len(data) and data[at] & 0x1F == _H264_IDR:
            return True
    return False


def vp8_is_keyframe(data: bytes) -> bool:
    """Whether a VP8 frame is a keyframe: bit 0 of its frame tag is 0 (RFC 6386, 9.1)."""
    return bool(data) and data[0] & 0x01 == 0


def is_keyframe(codec: str, data: bytes) -> bool:
    """For a video codec name as in SDP (``H264``, ``VP8``); audio frames are all 'key'."""
    name = codec.upper()
    if name == "H264":
        return h264_is_keyframe(data)
    if name == "VP8":
        return vp8_is_keyframe(data)
    return True


@dataclass(frozen=True)
class OfferSummary:
    """What the gateway needs from an offer before WebRTC sees it."""

    kinds: tuple[str, ...]  # the m-lines' media kinds, in order
    ice_ufrag: str | None
    #: The video media SSRC (from ``a=ssrc-group:FID <media> <rtx>`` when present: a PLI to the
    #: RTX SSRC is ignored by browsers), or None when the offer names none.
    video_ssrc: int | None


def summarize_offer(sdp: str) -> OfferSummary:
    """Check that ``sdp`` looks like an SDP offer with media, and read what the gateway needs.

    Raises :class:`MalformedSdp` (400) for anything that is not one."""
    lines = [line.rstrip("\r") for line in sdp.split("\n") if line.strip()]
    if not lines or lines[0] != "v=0":
        raise MalformedSdp("The body is not an SDP offer (it must start with 'v=0').")
    if any(len(line) < 2 or line[1] != "=" for line in lines):
        raise MalformedSdp("The body is not SDP: every line must be '<letter>=<value>'.")
    kinds: list[str] = []
    ufrag: str | None = None
    video_ssrc: int | None = None
    fid_ssrc: int | None = None
    kind: str | None = None
    for line in lines:
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            kinds.append(kind)
        elif line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line.split(":", 1)[1]
        elif kind == "video" and line.startswith("a=ssrc-group:FID ") and fid_ssrc is None:
            fid_ssrc = _int_or_none(line.split(" ")[1])
        elif kind == "video" and line.startswith("a=ssrc:") and video_ssrc is None:
            video_ssrc = _int_or_none(line[7:].split(" ", 1)[0])
    if not kinds:
        raise MalformedSdp("The SDP offer has no media section (m= line).")
    if not set(kinds) <= {"audio", "video"}:
        raise MalformedSdp("Only audio and video media sections are supported.")
    return OfferSummary(tuple(kinds), ufrag, fid_ssrc if fid_ssrc is not None else video_ssrc)


def answer_video_codec(sdp: str) -> str | None:
    """The video codec an SDP answer settled on: the first payload type of its video section,
    by name as in ``a=rtpmap`` (``H264``, ``VP8``), or None without a video section."""
    in_video = False
    chosen: str | None = None
    for raw in sdp.split("\n"):
        line = raw.rstrip("\r")
        if line.startswith("m="):
            if in_video:
                break
            fields = line[2:].split(" ")
            in_video = fields[0] == "video" and len(fields) > 3
            chosen = fields[3] if in_video else None
        elif in_video and chosen is not None and line.startswith(f"a=rtpmap:{chosen} "):
            return line.split(" ", 1)[1].split("/", 1)[0].upper()
    return None


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class TrickleCandidate:
    mid: str | None
    line_index: int
    candidate: str  # the value after "a=candidate:"


def parse_trickle(fragment: str, session_ufrag: str | None) -> list[TrickleCandidate]:
    """The ICE candidates of a trickle-ICE SDP fragment (RFC 8840), for an existing session.

    A fragment carrying another ``ice-ufrag`` than the session's asks for an ICE restart, which
    this server does not do (422, as RFC 9725 allows)."""
    candidates: list[TrickleCandidate] = []
    mid: str | None = None
    index = -1
    for raw in fragment.split("\n"):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if len(line) < 2 or line[1] != "=":
            raise MalformedSdp("The body is not an SDP fragment.")
        if line.startswith("a=ice-ufrag:"):
            ufrag = line.split(":", 1)[1]
            if session_ufrag is not None and ufrag != session_ufrag:
                raise IceRestartUnsupported("ICE restarts are not supported: start a new "
                                            "session instead.")
        elif line.startswith("m="):
            index += 1
        elif line.startswith("a=mid:"):
            mid = line.split(":", 1)[1]
        elif line.startswith("a=candidate:"):
            value = line[len("a=candidate:"):]
            # foundation component transport priority address port "typ" type (RFC 8839)
            fields = value.split()
            if (len(fields) < 8 or fields[6] != "typ"
                    or not all(fields[i].isdigit() for i in (1, 3, 5))):
                raise MalformedSdp(f"Not an ICE candidate: {value[:100]!r}")
            candidates.append(TrickleCandidate(mid, max(index, 0), value))
    return candidates
