"""The media benchmark reads back the time its camera paints into each frame, also after a
VP8 encode and decode (big blocks survive the encoder)."""

from __future__ import annotations

import av

from loadtests.media import (
    HEIGHT,
    STAMP_MASK,
    WIDTH,
    bits_value,
    paint_stamp,
    read_stamp,
    stamp_age_ms,
    stamp_bits,
    stamped_frame,
    synthetic_lumas,
)


def test_painted_times_read_back_and_a_damaged_stamp_is_refused() -> None:
    luma = synthetic_lumas(WIDTH, HEIGHT, 1)[0]
    for ms in (0, 1, 123_456_789, 1_767_225_600_123, STAMP_MASK):
        painted = bytearray(luma)
        paint_stamp(painted, WIDTH, ms)
        assert read_stamp(painted, WIDTH) == ms & STAMP_MASK
    bits = stamp_bits(42)
    assert bits_value(bits) == 42
    for flipped in (0, 10, 31):
        damaged = list(bits)
        damaged[flipped] ^= 1
        assert bits_value(damaged) is None
    assert read_stamp(bytes(len(luma)), WIDTH) is None  # an all-black picture


def test_ages_are_taken_modulo_the_wrap() -> None:
    assert stamp_age_ms(1_000, 1_250) == 250
    assert stamp_age_ms(STAMP_MASK - 10, (STAMP_MASK + 1) + 40) == 51


def test_times_survive_a_vp8_round_trip() -> None:
    lumas = synthetic_lumas(WIDTH, HEIGHT, 4)
    chroma = bytes([128]) * ((WIDTH // 2) * (HEIGHT // 2))
    encoder = av.CodecContext.create("libvpx", "w")
    encoder.width, encoder.height, encoder.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    encoder.bit_rate = 300_000  # below aiortc's 500 kb/s start
    encoder.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0"}
    decoder = av.CodecContext.create("vp8", "r")
    sent = [1_000_000 + 33 * i for i in range(8)]
    read = []
    for i, ms in enumerate(sent):
        frame = stamped_frame(lumas[i % len(lumas)], chroma, ms)
        frame.pts = i
        for packet in encoder.encode(frame):
            for decoded in decoder.decode(packet):
                plane = decoded.planes[0]
                read.append(read_stamp(memoryview(plane), plane.line_size))
    assert read == sent[: len(read)] and len(read) >= 6
