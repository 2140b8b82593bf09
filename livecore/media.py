"""Media rules that need no I/O: what an SDP offer asks for, and which encoded frames are
keyframes.

The gateway forwards the publisher's encoded frames to every viewer without decoding them
(``gateway/media.py``), so it must tell a keyframe from the bytes alone: a viewer can only start
decoding on one. And it judges WHIP/WHEP requests from their SDP before any WebRTC work starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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


class UnsupportedCodec(ClientError):
    """An offer the server cannot answer with media it forwards: no video codec in common, or
    audio that is not Opus (the only audio the gateway forwards and packages for HLS)."""

    status = 422
    default_code = "unsupported_codec"


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
    #: Per media section in use (port not 0), its kind and the codec names of its
    #: ``a=rtpmap`` lines, upper-case, in the offer's order of preference.
    codecs: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def codecs_of(self, kind: str) -> set[str]:
        """Every codec the offer's sections of ``kind`` can take."""
        return {name for section, names in self.codecs if section == kind for name in names}


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
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("m="):
            fields = line[2:].split(" ")
            kind = fields[0]
            kinds.append(kind)
            names: list[str] = []
            if len(fields) < 2 or fields[1] != "0":  # port 0: a section turned down
                sections.append((kind, names))
        elif line.startswith("a=rtpmap:") and sections and kind == sections[-1][0]:
            # a=rtpmap:<payload type> <encoding name>/<clock rate>[/<channels>] (RFC 8866 6.6)
            parts = line.split(" ", 1)
            if len(parts) == 2:
                sections[-1][1].append(parts[1].split("/", 1)[0].upper())
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
    return OfferSummary(tuple(kinds), ufrag, fid_ssrc if fid_ssrc is not None else video_ssrc,
                        tuple((k, tuple(names)) for k, names in sections))


def check_codecs(offer: OfferSummary, video: Iterable[str]) -> None:
    """Raise :class:`UnsupportedCodec` (422) unless every video section of ``offer`` can take
    one of the ``video`` codecs (names as in SDP: ``H264``, ``VP8``) and every audio section
    can take Opus.

    For WHIP, ``video`` is what the gateway takes; for WHEP, the stream's own codec (frames are
    forwarded as they come, never re-encoded per viewer)."""
    wanted = {name.upper() for name in video}
    for kind, names in offer.codecs:
        if kind == "video" and not wanted & set(names):
            raise UnsupportedCodec(
                f"The offer's video takes none of {', '.join(sorted(wanted))}"
                f" (it offers {', '.join(_media_codecs(names)) or 'no codec'}).",
                kind="video", accepted=sorted(wanted))
        if kind == "audio" and "OPUS" not in names:
            raise UnsupportedCodec(
                "The offer's audio must be Opus"
                f" (it offers {', '.join(_media_codecs(names)) or 'no codec'}).",
                kind="audio", accepted=["OPUS"])


def _media_codecs(names: Iterable[str]) -> list[str]:
    """Codec names without the helpers that are not media (retransmission, FEC, DTMF...)."""
    helpers = {"RTX", "RED", "ULPFEC", "FLEXFEC-03", "TELEPHONE-EVENT", "CN"}
    return list(dict.fromkeys(n for n in names if n not in helpers))


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
