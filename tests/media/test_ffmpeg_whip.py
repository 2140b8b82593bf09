"""WHIP ingest from an independent publisher: FFmpeg's ``whip`` muxer (bundled with PyAV).

The other media tests publish with aiortc, the same library the gateway answers with; this one
publishes H.264 and Opus with FFmpeg's own WebRTC stack (its ICE, DTLS and RTP packetisers) and
checks that an aiortc WHEP viewer decodes what the gateway forwards.

FFmpeg's muxer does blocking network I/O (the HTTP offer, the ICE and DTLS handshakes, every
packet, the DELETE on close), and the test server runs on this test's event loop. A thread is
not enough: PyAV 18 calls ``avformat_write_header`` (where the muxer POSTs its offer and does
the handshakes) and ``av_write_trailer`` (where it sends the DELETE) holding the GIL, so the
server in the same process could never answer them. The publisher therefore runs in a child
process (this module run with ``python -m``), stopped by a line on its stdin.

Addresses: the muxer POSTs to the test server on 127.0.0.1, then sends its media to the first
UDP host candidate of the answer. aiortc gathers none on the loopback, so that is the machine's
own interface address (eth0's), where the gateway's ICE answers FFmpeg's binding requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import fractions
import json
import math
import struct
import sys
import threading
import time
import uuid
from pathlib import Path

import av
from aiortc import RTCPeerConnection
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.media import MEDIA_KEY
from livecore.ids import StreamId
from livecore.media import answer_video_codec
from tests.media.test_whip_whep import frames_of, new_stream, until, watch
from tests.support import ApiClient, stream_state, until_state

WIDTH, HEIGHT, FPS = 320, 240, 30
SAMPLE_RATE = 48_000
#: Opus frames of 20 ms; FFmpeg's whip muxer takes stereo Opus at 48 kHz only.
AUDIO_SAMPLES = SAMPLE_RATE // 50
#: Where the child process runs ``python -m tests.media.test_ffmpeg_whip``.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def p256_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate and its key for FFmpeg's DTLS, as PEM files.

    FFmpeg's default DTLS key is P-224, which the OpenSSL under aiortc refuses (an "illegal
    parameter" alert ends the handshake)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ffmpeg-whip-test")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "whip-cert.pem", directory / "whip-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def video_frame(index: int) -> av.VideoFrame:
    """A gray picture whose brightness changes every frame (so every frame encodes to bytes)."""
    frame = av.VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
    for plane in frame.planes:
        plane.update(bytes([(index * 7) % 256]) * plane.buffer_size)
    frame.pts = index
    frame.time_base = fractions.Fraction(1, FPS)
    return frame


def audio_frame(index: int) -> av.AudioFrame:
    """20 ms of a 440 Hz tone, stereo, interleaved 16-bit samples."""
    first = index * AUDIO_SAMPLES
    samples = (int(8000 * math.sin(2 * math.pi * 440 * (first + n) / SAMPLE_RATE))
               for n in range(AUDIO_SAMPLES))
    pcm = b"".join(struct.pack("<hh", s, s) for s in samples)
    frame = av.AudioFrame(format="s16", layout="stereo", samples=AUDIO_SAMPLES)
    frame.planes[0].update(pcm)
    frame.sample_rate = SAMPLE_RATE
    frame.pts = first
    frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
    return frame


def publish_with_ffmpeg(url: str, stream_key: str, cert_file: Path, key_file: Path,
                        stop: threading.Event) -> int:
    """Publish H.264 and Opus to ``url`` through FFmpeg's whip muxer, paced in real time, until
    ``stop`` is set; the number of video frames sent. Blocking, and holding the GIL in the
    handshakes: the child process runs it (:func:`main`)."""
    options = {"authorization": stream_key, "cert_file": str(cert_file),
               "key_file": str(key_file), "handshake_timeout": "10000"}
    sent = 0
    with av.open(url, mode="w", format="whip", container_options=options) as container:
        video = container.add_stream("libx264", rate=FPS, options={
            "profile": "baseline", "tune": "zerolatency", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.codec_context.gop_size = FPS
        video.codec_context.max_b_frames = 0
        audio = container.add_stream("libopus", rate=SAMPLE_RATE, layout="stereo")
        audio.bit_rate = 64_000
        # The offer, the ICE and the DTLS handshakes: the first write blocks until they are done.
        container.start_encoding()
        started = time.monotonic()
        audio_index = 0
        while not stop.is_set():
            delay = started + sent / FPS - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            # Audio up to this video frame's time, then the frame: packets in time order.
            while audio_index * AUDIO_SAMPLES <= sent * SAMPLE_RATE // FPS:
                container.mux(audio.encode(audio_frame(audio_index)))
                audio_index += 1
            container.mux(video.encode(video_frame(sent)))
            sent += 1
        container.mux(video.encode(None))  # flush the encoders
        container.mux(audio.encode(None))
    # Leaving the block wrote the trailer: the muxer sent DELETE to its session URL.
    return sent


def main() -> None:
    """The child process: its settings as one JSON line on stdin, then publish until the next
    line (or the end of stdin); prints the number of video frames sent."""
    av.logging.set_level(av.logging.ERROR)
    settings = json.loads(sys.stdin.readline())
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    sent = publish_with_ffmpeg(settings["url"], settings["stream_key"],
                               Path(settings["cert_file"]), Path(settings["key_file"]), stop)
    print(sent, flush=True)


@dataclasses.dataclass(frozen=True)
class Published:
    returncode: int
    sent: int  # video frames
    stderr: str


class FfmpegPublisher:
    """:func:`main` in a child process; its pipes are read while it runs (no pipe fills up)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdout is not None and process.stderr is not None
        self._stdout = asyncio.ensure_future(process.stdout.read())
        self._stderr = asyncio.ensure_future(process.stderr.read())

    @classmethod
    async def start(cls, url: str, stream_key: str, cert_file: Path,
                    key_file: Path) -> FfmpegPublisher:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, cwd=PROJECT_ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert process.stdin is not None
        settings = {"url": url, "stream_key": stream_key, "cert_file": str(cert_file),
                    "key_file": str(key_file)}
        process.stdin.write(json.dumps(settings).encode() + b"\n")
        await process.stdin.drain()
        return cls(process)

    async def running(self) -> bool:
        if self.process.returncode is None:
            return True
        raise AssertionError(f"FFmpeg stopped publishing: {await self._stderr!r}")

    async def stop(self) -> Published:
        """Stop publishing (FFmpeg then DELETEs its session) and wait for the process."""
        stdin = self.process.stdin
        assert stdin is not None
        if self.process.returncode is None:
            stdin.write(b"stop\n")
            stdin.close()
        try:
            async with asyncio.timeout(30):
                returncode = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            returncode = await self.process.wait()
        out, err = (await self._stdout).decode(), (await self._stderr).decode()
        lines = out.split()
        return Published(returncode, int(lines[-1]) if lines else 0, err)


async def test_ffmpeg_publishes_h264_and_opus_that_a_whep_viewer_decodes(
        media_api: ApiClient, tmp_path: Path) -> None:
    api = media_api
    stream_id, key, _ = await new_stream(api)
    assert await stream_state(api, stream_id) == "created"
    (tmp_path / "dtls").mkdir()
    cert_file, key_file = p256_certificate(tmp_path / "dtls")
    url = str(api.client.make_url(f"/whip/{stream_id}"))
    publisher = await FfmpegPublisher.start(url, key, cert_file, key_file)
    viewers: list[RTCPeerConnection] = []
    try:
        await until(lambda: _live(publisher, api, stream_id))
        # The viewer is offered the publisher's codec, known from the WHIP answer already.
        broadcast = api.client.app[MEDIA_KEY].broadcasts[StreamId(uuid.UUID(stream_id))]
        assert broadcast.video_codec == "H264"
        viewer, frames, _ = await watch(api, stream_id)
        viewers.append(viewer)
        assert answer_video_codec(viewer.remoteDescription.sdp) == "H264"
        got = await frames_of(frames, 2 * FPS)
        assert {(f.width, f.height) for f in got} == {(WIDTH, HEIGHT)}
        assert [f.pts for f in got] == sorted(f.pts for f in got)
        # The Opus track is forwarded too: the viewer decodes it (aiortc's Opus decoder).
        [audio] = [t.receiver.track for t in viewer.getTransceivers() if t.kind == "audio"]
        async with asyncio.timeout(30):
            received = [await audio.recv() for _ in range(10)]
        sound = [a for a in received if isinstance(a, av.AudioFrame)]
        assert len(sound) == len(received)
        assert {(a.sample_rate, len(a.layout.channels)) for a in sound} == {(SAMPLE_RATE, 2)}
        assert await stream_state(api, stream_id) == "live"
    finally:
        published = await publisher.stop()
        for pc in viewers:
            await pc.close()
    assert published.returncode == 0, published.stderr
    assert published.sent >= 2 * FPS
    # The muxer's DELETE on close ends the session; the stream ends after the 0.5 s grace.
    await until_state(api, stream_id, "ended")


async def _live(publisher: FfmpegPublisher, api: ApiClient, stream_id: str) -> bool:
    return await publisher.running() and await stream_state(api, stream_id) == "live"


if __name__ == "__main__":
    main()
