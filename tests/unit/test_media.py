"""The media rules of livecore/media.py: keyframes from bytes, offers and trickle fragments."""

from __future__ import annotations

import av
import pytest

from livecore.media import (
    IceRestartUnsupported,
    MalformedSdp,
    answer_video_codec,
    is_keyframe,
    parse_trickle,
    summarize_offer,
)


def encoded(codec: str, frames: int = 12) -> list[tuple[bytes, bool]]:
    """Real encoder output (PyAV), with the encoder's own keyframe flag for each packet."""
    context = av.CodecContext.create("libx264" if codec == "H264" else "libvpx", "w")
    context.width, context.height, context.pix_fmt = 64, 48, "yuv420p"
    context.gop_size = 5
    context.options = {"bf": "0"} if codec == "H264" else {}
    out = []
    for index in range(frames):
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([index * 9 % 256]) * plane.buffer_size)
        frame.pts = index
        out += [(bytes(p), p.is_keyframe) for p in context.encode(frame)]
    out += [(bytes(p), p.is_keyframe) for p in context.encode(None)]
    return out


@pytest.mark.parametrize("codec", ["H264", "VP8"])
def test_keyframes_are_told_from_the_bytes_as_the_encoder_marked_them(codec: str) -> None:
    packets = encoded(codec)
    assert sum(key for _, key in packets) >= 2  # gop 5 over 12 frames
    assert [is_keyframe(codec, data) for data, _ in packets] == [key for _, key in packets]


def test_audio_frames_need_no_keyframe() -> None:
    assert is_keyframe("opus", b"\x01\x02")


OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=ice-ufrag:abcd", "a=ssrc:42 cname:x",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97", "a=ssrc-group:FID 1111 2222",
    "a=ssrc:2222 cname:x", "a=ssrc:1111 cname:x", ""])


def test_an_offer_is_summarized_with_the_media_ssrc_not_the_rtx_one() -> None:
    summary = summarize_offer(OFFER)
    assert summary.kinds == ("audio", "video")
    assert summary.ice_ufrag == "abcd"
    assert summary.video_ssrc == 1111
    without_group = OFFER.replace("a=ssrc-group:FID 1111 2222\r\n", "")
    assert summarize_offer(without_group).video_ssrc == 2222  # the first one named


@pytest.mark.parametrize("body", ["", "hello", "v=0\r\ns=-\r\n", "v=0\r\nnot sdp\r\n",
                                  "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"])
def test_what_is_not_a_usable_offer_is_refused(body: str) -> None:
    with pytest.raises(MalformedSdp):
        summarize_offer(body)


def test_trickle_fragments_give_candidates_and_refuse_ice_restarts() -> None:
    fragment = ("a=ice-ufrag:abcd\r\na=ice-pwd:x\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\n"
                "a=candidate:1 1 UDP 1 192.0.2.2 5000 typ host\r\n"
                "m=video 9 RTP/AVP 0\r\na=mid:1\r\n"
                "a=candidate:2 1 UDP 1 192.0.2.2 5001 typ host\r\n")
    found = parse_trickle(fragment, "abcd")
    assert [(c.mid, c.line_index, c.candidate.split()[0]) for c in found] == [
        ("0", 0, "1"), ("1", 1, "2")]
    with pytest.raises(IceRestartUnsupported):
        parse_trickle(fragment.replace("abcd", "efgh"), "abcd")
    with pytest.raises(MalformedSdp):
        parse_trickle("garbage", "abcd")
    with pytest.raises(MalformedSdp):
        parse_trickle("a=candidate:1 1 UDP 1 192.0.2.2 5000 host\r\n", "abcd")


def test_the_answer_names_the_video_codec_it_settled_on() -> None:
    answer = "\r\n".join([
        "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 102 97 103", "a=rtpmap:97 VP8/90000",
        "a=rtpmap:102 H264/90000", "a=rtpmap:103 rtx/90000", ""])
    assert answer_video_codec(answer) == "H264"
    assert answer_video_codec(answer.replace("SAVPF 102 97", "SAVPF 97 102")) == "VP8"
    assert answer_video_codec("v=0\r\nm=audio 9 RTP/AVP 111\r\n") is None
