"""Realistic synthetic video for the media tests: moving, noisy pictures that x264 cannot
squeeze, encoded at the bitrates real publishers send (OBS: 2.5-6 Mbit/s at 720p or 1080p;
browsers: 0.3-2.5 Mbit/s), as the access units a WebRTC publisher forwards.

A flat grey picture costs x264 about 46 kbit/s whatever bitrate it is given, and hides every bug
that depends on size (a fragment above PyAV's 32 KiB write buffer, say). Here each picture is a
noise texture scrolling diagonally, a block of fresh noise moving across it and a brightness
ramp that changes every frame, so the encoder spends the bitrate it is allowed. Sources are
encoded once per test session (:func:`h264_source` is cached) and hold their measured bitrate,
which tests assert before trusting them.
"""

from __future__ import annotations

import fractions
import functools
import random
from dataclasses import dataclass

import av

CLOCK = 90_000  # RTP's video clock: the pts unit of forwarded frames
FPS = 30


@dataclass(frozen=True)
class AccessUnit:
    """One H.264 access unit as ``gateway/media.py`` hands it to the packager: Annex-B bytes
    (in-band SPS/PPS before each keyframe, no extradata), pts in the 90 kHz clock."""

    data: bytes
    pts: int
    keyframe: bool


@dataclass(frozen=True)
class Source:
    width: int
    height: int
    bitrate: int  # asked of the encoder, bit/s
    units: tuple[AccessUnit, ...]

    @property
    def seconds(self) -> float:
        return len(self.units) / FPS

    @property
    def measured_bitrate(self) -> float:
        """What the encoder actually produced, bit/s."""
        return sum(len(unit.data) for unit in self.units) * 8 / self.seconds


def _pictures(width: int, height: int, frames: int, seed: int) -> list[av.VideoFrame]:
    rng = random.Random(seed)
    pad = 64
    texture = rng.randbytes((width + pad) * (height + pad))
    chroma_w, chroma_h = width // 2, height // 2
    block_w, block_h = width // 4, height // 4
    pictures = []
    for index in range(frames):
        frame = av.VideoFrame(width, height, "yuv420p")
        luma = bytearray(width * height)
        shift = index % pad
        ramp = (index * 3) % 64
        for row in range(height):
            start = (row + shift) * (width + pad) + shift
            luma[row * width:(row + 1) * width] = texture[start:start + width]
        # A block of fresh noise moving across the picture.
        left = (index * 17) % (width - block_w)
        top = (index * 11) % (height - block_h)
        for row in range(top, top + block_h):
            luma[row * width + left:row * width + left + block_w] = rng.randbytes(block_w)
        luma = luma.translate(bytes((value + ramp) & 0xFF for value in range(256)))
        _fill(frame.planes[0], luma, width, height)
        _fill(frame.planes[1], bytes([96 + ramp]) * (chroma_w * chroma_h), chroma_w, chroma_h)
        _fill(frame.planes[2], rng.randbytes(chroma_w * chroma_h), chroma_w, chroma_h)
        pictures.append(frame)
    return pictures


def _fill(plane: av.video.plane.VideoPlane, data: bytes | bytearray, width: int,
          height: int) -> None:
    if plane.line_size == width:
        plane.update(bytes(data))
        return
    padded = bytearray(plane.line_size * height)
    for row in range(height):
        padded[row * plane.line_size:row * plane.line_size + width] = data[
            row * width:(row + 1) * width]
    plane.update(bytes(padded))


@functools.cache
def h264_source(width: int, height: int, bitrate: int, seconds: float = 4.0,
                keyframe_s: float = 2.0, seed: int = 1) -> Source:
    """``seconds`` of 30 fps video at ``bitrate`` (constant-rate x264, a keyframe every
    ``keyframe_s`` as OBS is told to, no B-frames as WebRTC has none)."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, CLOCK)
    encoder.framerate = fractions.Fraction(FPS, 1)
    encoder.bit_rate = bitrate
    gop = round(keyframe_s * FPS)
    encoder.options = {
        "preset": "ultrafast", "tune": "zerolatency", "bf": "0", "g": str(gop),
        "keyint_min": str(gop), "sc_threshold": "0", "maxrate": str(bitrate),
        "bufsize": str(bitrate), "x264-params": "repeat-headers=1",
    }
    units: list[AccessUnit] = []
    frames = round(seconds * FPS)
    for index, picture in enumerate(_pictures(width, height, frames, seed)):
        picture.pts, picture.time_base = index * CLOCK // FPS, encoder.time_base
        units += [AccessUnit(bytes(p), int(p.pts or 0), bool(p.is_keyframe))
                  for p in encoder.encode(picture)]
    units += [AccessUnit(bytes(p), int(p.pts or 0), bool(p.is_keyframe))
              for p in encoder.encode(None)]
    return Source(width, height, bitrate, tuple(units))


@functools.cache
def vp8_source(width: int, height: int, bitrate: int, seconds: float = 4.0,
               keyframe_s: float = 2.0) -> Source:
    """VP8 (libvpx in real-time mode, as a browser sends) of a bar sliding over a gradient:
    libvpx on this machine encodes noise at about 15 fps even at 320x240, and overshoots its
    bitrate several times over, so the VP8 sources are for the transcoding path, not for
    bitrates."""
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base = fractions.Fraction(1, CLOCK)
    encoder.framerate = fractions.Fraction(FPS, 1)
    encoder.bit_rate = bitrate
    encoder.gop_size = round(keyframe_s * FPS)
    encoder.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    units: list[AccessUnit] = []
    frames = round(seconds * FPS)
    for index in range(frames):
        picture = av.VideoFrame(width, height, "yuv420p")
        bar = (index * 8) % width
        row = bytes((x + index) & 0xFF if abs(x - bar) > 8 else 255 for x in range(width))
        _fill(picture.planes[0], row * height, width, height)
        for plane in picture.planes[1:]:
            _fill(plane, bytes([128]) * (plane.width * plane.height), plane.width, plane.height)
        picture.pts, picture.time_base = index * CLOCK // FPS, encoder.time_base
        units += [AccessUnit(bytes(p), int(p.pts or 0), bool(p.is_keyframe))
                  for p in encoder.encode(picture)]
    units += [AccessUnit(bytes(p), int(p.pts or 0), bool(p.is_keyframe))
              for p in encoder.encode(None)]
    return Source(width, height, bitrate, tuple(units))
