"""Live video: WHIP ingest and WHEP playback by forwarding encoded frames (RFC 9725).

A publisher ``POST``s an SDP offer to ``/whip/{stream_id}`` with its stream key; viewers
``POST`` theirs to ``/whep/{stream_id}``. Each gets an SDP answer and a session URL to
``PATCH`` (trickle ICE) and ``DELETE``.

No frame is decoded or encoded per viewer. aiortc has no public API for forwarding, so the
receiver's decoder thread is replaced, for the publisher's tracks only, by one that hands on the
reassembled encoded frame as an ``av.Packet`` (:func:`install_forwarding`); ``RTCRtpSender``
packetises such a packet again without encoding it. This hooks ``aiortc.rtcrtpreceiver``'s
``decoder_worker`` and private methods (``RTCRtpReceiver._send_rtcp_pli``,
``RTCRtpSender._send_keyframe``, ``RTCDtlsTransport._send_rtp`` for pacing) and reaches
aioice's sockets: aiortc is pinned in pyproject.toml and the hooks are covered by tests/media.

What each viewer is sent is paced (:class:`Pacer`), and publishers' sockets get a receive
buffer that holds a 1080p keyframe sent in one burst (:func:`enlarge_receive_buffers`).

A new viewer starts on a keyframe (its video waits for one, and the publisher is asked for
one); a viewer's keyframe request (PLI) is passed on to the publisher, at most once per
:data:`PLI_INTERVAL_S`. The stream goes live when the publisher's first media arrives and ends
:data:`GRACE_S` after the publisher leaves, unless it comes back meanwhile. That timer lives in
this process: while it holds a publisher (or waits for it) the process renews the stream's media
lease in PostgreSQL, and :func:`end_lapsed_streams` (at start-up, and from the worker) ends the
live streams whose lease has lapsed, those of a node that was killed.

The sessions live in this process: run one serving process (``LIVECORE_PROCESSES=1``) for
media until sessions are routed between processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fractions
import hmac
import logging
import secrets
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import redis.exceptions
from aiohttp import web
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
    rtcrtpreceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from gateway import auth
from gateway.api import STREAM_ENDED_KEY, publish_state
from gateway.hls import SEGMENT_S, HlsOutput, write_replay
from gateway.http import error_response
from gateway.hub import NODE_TTL_S, PRESENCE_INTERVAL_S
from gateway.services import Services, utc_now
from ledger import postgres
from livecore.errors import ClientError, Conflict, LivecoreError, NotFound, Unauthenticated
from livecore.ids import StreamId
from livecore.media import (
    SDP_TYPE,
    TRICKLE_TYPE,
    MalformedSdp,
    OfferSummary,
    answer_video_codec,
    check_codecs,
    is_keyframe,
    parse_trickle,
    summarize_offer,
)
from livecore.settings import ice_servers
from livecore.streams import StreamEvent, StreamState

log = logging.getLogger(__name__)

#: After the publisher leaves, how long the stream stays live for it to come back.
GRACE_S = 10.0
#: Keyframe requests passed on to the publisher: at most one per this interval.
PLI_INTERVAL_S = 0.3
#: Frames queued for one viewer before it is considered slow (it then skips to a keyframe).
VIEWER_QUEUE = 90
#: Video codecs the gateway takes, best first: H.264 needs no re-encoding for HLS.
VIDEO_CODECS = ("video/H264", "video/VP8")
#: The kernel receive buffer asked for each publisher's UDP sockets: a publisher that does not
#: pace sends a keyframe in one burst (a 1080p one at 6 Mbit/s: some 450 KB, 360 packets, about
#: 800 KB of kernel buffer), which must wait there until the event loop reads it.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
#: What the gateway sends each viewer is paced at this rate (bit/s), in bursts of at most
#: PACING_BURST_BYTES: a frame is forwarded whole, so without pacing a keyframe leaves as one
#: burst however evenly the publisher sent it, and a viewer's path drops what it cannot queue
#: (aiortc's own receiver lost 1080p keyframes so). Fixed, as the gateway estimates no viewer's
#: bandwidth: about 2.5 times OBS's highest bitrates (libwebrtc paces at 2.5 times its target),
#: so a 6 Mbit/s stream averages 30% of it, and a 450 KB keyframe leaves in 180 ms.
PACING_BPS = 20_000_000
PACING_BURST_BYTES = 16 * 1024

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link, ETag",
    "Access-Control-Max-Age": "86400",
}


class UnsupportedMediaType(ClientError):
    status = 415
    default_code = "unsupported_media_type"


# -- forwarding instead of decoding ------------------------------------------------------------

#: The queues of the remote tracks whose frames are forwarded, not decoded.
_FORWARDED: weakref.WeakSet[asyncio.Queue[Any]] = weakref.WeakSet()
_FORWARDED_LOCK = threading.Lock()
_original_worker = rtcrtpreceiver.decoder_worker


def _forwarding_worker(loop: asyncio.AbstractEventLoop, input_q: Any,
                       output_q: asyncio.Queue[Any], decode_error: threading.Event) -> None:
    """aiortc's decoder thread, except for forwarded tracks: their encoded frames are put on
    the track's queue as ``av.Packet``s (pts in the codec's clock), undecoded."""
    with _FORWARDED_LOCK:
        forwarded = output_q in _FORWARDED
    if not forwarded:
        _original_worker(loop, input_q, output_q, decode_error)
        return
    while True:
        task = input_q.get()
        if task is None:
            asyncio.run_coroutine_threadsafe(output_q.put(None), loop)
            return
        codec, encoded = task
        packet = av.Packet(encoded.data)
        packet.pts = encoded.timestamp
        packet.time_base = fractions.Fraction(1, codec.clockRate)
        asyncio.run_coroutine_threadsafe(output_q.put((codec.name, packet)), loop)


def install_forwarding() -> None:
    """Route aiortc's receivers through :func:`_forwarding_worker` (idempotent)."""
    rtcrtpreceiver.decoder_worker = _forwarding_worker


def forward(track: MediaStreamTrack) -> None:
    """Mark a remote track (before its receiver starts) as forwarded: its ``recv()`` then
    returns ``(codec name, av.Packet)`` pairs."""
    with _FORWARDED_LOCK:
        _FORWARDED.add(track._queue)  # type: ignore[attr-defined]


# -- UDP at real bitrates ------------------------------------------------------------------

_warned_buffer = False


def enlarge_receive_buffers(pc: RTCPeerConnection) -> None:
    """Ask for RECEIVE_BUFFER_BYTES of kernel receive buffer on ``pc``'s ICE sockets (created
    while the answer was made). aioice asks for 256 KiB (512 KiB once the kernel has doubled it
    for its bookkeeping): a 1080p keyframe at 6 Mbit/s sent in one burst, some 360 packets, did
    not fit, and the keyframe was lost with its whole GOP, for HLS and every viewer (the
    publisher is not asked to resend what it sent more than 128 packets ago). The kernel caps
    the request at ``net.core.rmem_max``; where that is too low, say so once."""
    global _warned_buffer
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        for protocol in getattr(connection, "_protocols", []):
            transport = getattr(protocol, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            except OSError:
                continue
            if got < RECEIVE_BUFFER_BYTES and not _warned_buffer:
                _warned_buffer = True
                log.warning("UDP receive buffer capped by the kernel: raise net.core.rmem_max"
                            " (sysctl) to %d, or large keyframes may be lost",
                            RECEIVE_BUFFER_BYTES, extra={"receive_buffer": got})


class Pacer:
    """Sends RTP no faster than PACING_BPS, in bursts of at most PACING_BURST_BYTES: each packet
    is given the next slot on a virtual clock and waits for it (the sender's loop awaits the
    send, so a keyframe's packets leave over some milliseconds instead of at once)."""

    def __init__(self, send: Callable[[bytes], Any], rate_bps: int = PACING_BPS,
                 burst_bytes: int = PACING_BURST_BYTES, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self._send = send
        self._bytes_per_s = rate_bps / 8
        self._burst_s = burst_bytes / self._bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")  # when the next packet may leave, on ``clock``

    async def send(self, data: bytes) -> None:
        now = self._clock()
        start = max(self._next, now - self._burst_s)  # idle time earns one burst, no more
        self._next = start + len(data) / self._bytes_per_s
        if start > now:
            await self._sleep(start - now)
        await self._send(data)


def pace(pc: RTCPeerConnection) -> None:
    """Pace the RTP ``pc``'s senders send (see :class:`Pacer`): each sender calls its DTLS
    transport's ``_send_rtp`` and awaits it, for media and retransmissions alike."""
    transports = {id(t.sender.transport): t.sender.transport for t in pc.getTransceivers()
                  if t.sender.transport is not None}
    for dtls in transports.values():
        dtls._send_rtp = Pacer(dtls._send_rtp).send  # type: ignore[method-assign]


# -- fan-out -------------------------------------------------------------------------------


class ViewerTrack(MediaStreamTrack):
    """What one viewer's sender reads: the publisher's packets of one kind, from a keyframe on."""

    def __init__(self, kind: str, on_keyframe_needed: Callable[[], None]) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.Packet[Any] | None] = asyncio.Queue()
        self._until_keyframe = kind == "video"
        self._on_keyframe_needed = on_keyframe_needed

    def offer(self, packet: av.Packet[Any], keyframe: bool) -> None:
        if self._until_keyframe and not keyframe:
            return
        if self._queue.qsize() >= VIEWER_QUEUE:  # too slow: drop what waits, restart on a key
            while not self._queue.empty():
                self._queue.get_nowait()
            if self.kind == "video":
                self._until_keyframe = True
                self._on_keyframe_needed()
                return
        self._until_keyframe = False
        self._queue.put_nowait(packet)

    @property
    def wants_keyframe(self) -> bool:
        """A video track that waits for a keyframe before it forwards anything."""
        return self._until_keyframe and self.readyState == "live"

    def finish(self) -> None:
        self._queue.put_nowait(None)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        return packet


class Broadcast:
    """One live stream's publisher and viewers in this process."""

    def __init__(self, hub: MediaHub, stream_id: StreamId) -> None:
        self.hub = hub
        self.stream_id = stream_id
        self.publisher: Session | None = None
        self.viewers: dict[str, tuple[Session, dict[str, ViewerTrack]]] = {}
        self.video_codec: str | None = None
        self.video_receiver: RTCRtpReceiver | None = None
        self.video_ssrc: int | None = None
        self.live = False
        self.audio = False  # the publisher offered audio (HLS then carries it)
        self.hls_ok = True
        self._last_pli = float("-inf")
        self._pli_later: asyncio.TimerHandle | None = None
        self._last_key = time.monotonic()
        self._end_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (a PLI), at most once per PLI_INTERVAL_S.

        A request within the interval is not dropped: it is sent when the interval is over,
        if a viewer still waits for a keyframe then. Otherwise a viewer who joined just after
        the last requested keyframe arrived would wait for the publisher's next one of its own
        accord (seconds), while one who joined before it got it at once."""
        now = time.monotonic()
        if self.video_receiver is None or self.video_ssrc is None:
            return
        wait = self._last_pli + PLI_INTERVAL_S - now
        if wait <= 0:
            self._send_pli(now)
        elif self._pli_later is None:
            self._pli_later = asyncio.get_running_loop().call_later(wait, self._pli_if_waiting)

    def _pli_if_waiting(self) -> None:
        self._pli_later = None
        if any(track.wants_keyframe for _, tracks in self.viewers.values()
               for track in tracks.values()):
            self._send_pli(time.monotonic())

    def _send_pli(self, now: float) -> None:
        receiver, ssrc = self.video_receiver, self.video_ssrc
        if receiver is None or ssrc is None:
            return
        self._last_pli = now
        self._spawn(receiver._send_rtcp_pli(ssrc))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def pump(self, track: MediaStreamTrack) -> None:
        """Read the publisher's packets of one track and offer them to every viewer (and, for
        H.264 video, to the HLS packager)."""
        kind = track.kind
        rebase: int | None = None  # this publisher's pts offset in the HLS timeline
        while True:
            try:
                codec, packet = await track.recv()  # type: ignore[misc]  # see forward()
            except MediaStreamError:
                return
            if not self.live:
                await self.hub.went_live(self)
                if self.publisher is None:  # the stream had been ended: hung up
                    return
            data = bytes(packet)
            keyframe = kind != "video" or is_keyframe(codec, data)
            if kind == "video":
                self.video_codec = codec
                now = time.monotonic()
                if keyframe:
                    self._last_key = now
                elif now - self._last_key >= 0.9 * SEGMENT_S:
                    self.request_keyframe()  # keeps HLS segments near their target
                rebase = self._to_hls_video(codec, packet, data, keyframe, rebase)
            elif kind == "audio" and codec.lower() == "opus" and self.hls_ok:
                audio_to = self.hub.hls.live.get(self.stream_id)
                if audio_to is not None:
                    try:
                        audio_to.add_audio(data, time.monotonic())
                    except Exception:
                        self._hls_failed()
            for _, tracks in list(self.viewers.values()):
                viewer_track = tracks.get(kind)
                if viewer_track is not None:
                    viewer_track.offer(packet, keyframe)

    def _to_hls_video(self, codec: str, packet: Any, data: bytes, keyframe: bool,
                      rebase: int | None) -> int | None:
        """Hand a video frame to the HLS output; returns this publisher's pts offset there
        (None until its first keyframe). A failure of HLS never stops the WebRTC forwarding."""
        if not self.hls_ok:
            return rebase
        try:
            packager = self.hub.hls.start(self.stream_id, audio=self.audio)
            if rebase is None and keyframe:
                last = packager.last_pts
                rebase = 0 if last is None else last + 3000 - int(packet.pts or 0)
            if rebase is not None:
                pts = int(packet.pts or 0) + rebase
                if codec == "H264":
                    packager.add_video(data, pts, keyframe)
                else:
                    self.hub.hls.transcoder(self.stream_id).add_vp8(data, pts, keyframe)
        except Exception:
            self._hls_failed()
        return rebase

    def _hls_failed(self) -> None:
        log.exception("HLS output failed; WebRTC goes on", extra={"stream_id": str(self.stream_id)})
        self.hls_ok = False

    def cancel_end(self) -> None:
        if self._end_timer is not None:
            self._end_timer.cancel()
            self._end_timer = None

    @property
    def is_held(self) -> bool:
        """This node holds the stream's publisher, or waits for it to come back."""
        return self.publisher is not None or self._end_timer is not None

    def close(self) -> None:
        """Nothing more to time: the broadcast is over in this process."""
        self.cancel_end()
        if self._pli_later is not None:
            self._pli_later.cancel()
            self._pli_later = None

    def end_later(self, delay: float) -> None:
        self.cancel_end()
        self._end_timer = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self.hub.end_broadcast(self)))


class Session:
    """One WHIP or WHEP peer connection, addressed by its session URL."""

    def __init__(self, session_id: str, kind: str, broadcast: Broadcast,
                 pc: RTCPeerConnection, offer: OfferSummary) -> None:
        self.id = session_id
        self.kind = kind  # "whip" or "whep"
        self.broadcast = broadcast
        self.pc = pc
        self.offer = offer

    @property
    def path(self) -> str:
        return f"/{self.kind}/{self.broadcast.stream_id}/{self.id}"


class MediaHub:
    """Every WHIP and WHEP session of this process."""

    def __init__(self, services: Services, *, grace_s: float = GRACE_S,
                 node_id: str = "media") -> None:
        self.services = services
        self.grace_s = grace_s
        self.node_id = node_id
        self._counted: dict[StreamId, int] = {}
        self._counting: asyncio.Task[None] | None = None
        self._leasing: asyncio.Task[None] | None = None
        self._stopping = False
        self.broadcasts: dict[StreamId, Broadcast] = {}
        self.sessions: dict[str, Session] = {}
        self.hls = HlsOutput(Path(services.settings.data_dir).resolve() / "hls")
        install_forwarding()

    # -- publishing --

    async def publish(self, stream_id: StreamId, offer_sdp: str) -> tuple[Session, str]:
        offer = summarize_offer(offer_sdp)
        check_codecs(offer, [name.split("/", 1)[1] for name in VIDEO_CODECS])
        broadcast = self.broadcasts.get(stream_id)
        if broadcast is not None and broadcast.publisher is not None:
            raise Conflict("This stream already has a publisher.", code="already_live")
        if broadcast is None:
            broadcast = self.broadcasts[stream_id] = Broadcast(self, stream_id)
        pc = RTCPeerConnection(self.rtc_configuration())
        session = Session(secrets.token_urlsafe(18), "whip", broadcast, pc, offer)
        for kind in offer.kinds:
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            if kind == "video":
                capabilities = RTCRtpReceiver.getCapabilities("video")
                codecs = capabilities.codecs if capabilities is not None else []
                preferred = [c for name in VIDEO_CODECS for c in codecs if c.mimeType == name]
                rtx = [c for c in codecs if c.mimeType == "video/rtx"]
                transceiver.setCodecPreferences(preferred + rtx)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            forward(track)
            if track.kind == "video":
                for transceiver in pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        broadcast.video_receiver = transceiver.receiver
                broadcast.video_ssrc = offer.video_ssrc
            broadcast._spawn(broadcast.pump(track))

        self._watch_connection(session)
        answer = await self._answer(pc, offer_sdp)
        enlarge_receive_buffers(pc)
        # Known from the answer, before any frame: a viewer joining at once gets this codec.
        broadcast.video_codec = answer_video_codec(answer) or broadcast.video_codec
        broadcast.audio = "audio" in offer.kinds
        broadcast.publisher = session
        broadcast.cancel_end()
        self.sessions[session.id] = session
        await self._renew([stream_id])
        return session, answer

    async def went_live(self, broadcast: Broadcast) -> None:
        """The publisher's first media: the stream goes live (once). If it was ended meanwhile
        (by its owner or a moderator), the publisher is hung up instead."""
        broadcast.live = True
        stream = await self.services.streams.get(broadcast.stream_id)
        try:
            if stream.state is StreamState.CREATED:
                stream = await self.services.streams.transition(stream.id, StreamEvent.START,
                                                                utc_now())
                await self._renew([stream.id])
                await publish_state(self.services, stream)
                log.info("stream live", extra={"stream_id": str(stream.id)})
        except Conflict:  # ended between the WHIP request and its first media
            stream = await self.services.streams.get(broadcast.stream_id)
        if stream.state is StreamState.ENDED:
            await self.stream_ended(broadcast.stream_id)

    async def stream_ended(self, stream_id: StreamId) -> None:
        """The stream was ended (by the API, or before its media came): hang up its publisher
        and viewers now, and close its HLS output (the replay stays)."""
        broadcast = self.broadcasts.get(stream_id)
        if broadcast is None:
            return
        if broadcast.publisher is not None:
            await self.leave(broadcast.publisher)
        broadcast.cancel_end()
        await self.end_broadcast(broadcast)

    async def end_broadcast(self, broadcast: Broadcast) -> None:
        """The publisher did not come back: end the stream and its viewers' sessions."""
        if broadcast.publisher is not None:
            return
        self.broadcasts.pop(broadcast.stream_id, None)
        broadcast.close()
        self.hls.finish(broadcast.stream_id)
        for session, tracks in list(broadcast.viewers.values()):
            for track in tracks.values():
                track.finish()
            await self.leave(session)
        stream = await self.services.streams.get(broadcast.stream_id)
        if stream.state is not StreamState.ENDED:
            with contextlib.suppress(Conflict):
                stream = await self.services.streams.transition(stream.id, StreamEvent.END,
                                                                utc_now())
                await publish_state(self.services, stream)
                log.info("stream ended: publisher gone", extra={"stream_id": str(stream.id)})

    # -- playing --

    async def play(self, stream_id: StreamId, offer_sdp: str) -> tuple[Session, str]:
        offer = summarize_offer(offer_sdp)
        broadcast = self.broadcasts.get(stream_id)
        if broadcast is None or broadcast.publisher is None or not broadcast.live:
            raise Conflict("The stream is not live: nothing to watch yet.",
                           code="stream_not_live")
        # Frames are forwarded as the publisher sends them: the viewer must take that codec.
        check_codecs(offer, [broadcast.video_codec] if broadcast.video_codec is not None
                     else [name.split("/", 1)[1] for name in VIDEO_CODECS])
        pc = RTCPeerConnection(self.rtc_configuration())
        session = Session(secrets.token_urlsafe(18), "whep", broadcast, pc, offer)
        tracks: dict[str, ViewerTrack] = {}
        for kind in offer.kinds:
            if kind in tracks:
                continue
            track = tracks[kind] = ViewerTrack(kind, broadcast.request_keyframe)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            if kind == "video" and broadcast.video_codec is not None:
                capabilities = RTCRtpSender.getCapabilities("video")
                codecs = capabilities.codecs if capabilities is not None else []
                same = [c for c in codecs if c.mimeType == f"video/{broadcast.video_codec}"]
                rtx = [c for c in codecs if c.mimeType == "video/rtx"]
                transceiver.setCodecPreferences(same + rtx)
                # The viewer's keyframe requests go to the publisher (nothing is encoded here).
                transceiver.sender._send_keyframe = broadcast.request_keyframe  # type: ignore[method-assign]

        self._watch_connection(session)
        # The viewer waits for a keyframe from now on, and asks for one: it comes while the
        # answer, ICE and DTLS are under way (its packets queue until the connection is up),
        # and every viewer joining meanwhile starts on the same one.
        broadcast.viewers[session.id] = (session, tracks)
        broadcast.request_keyframe()
        try:
            answer = await self._answer(pc, offer_sdp)
        except BaseException:
            broadcast.viewers.pop(session.id, None)
            raise
        pace(pc)
        self.sessions[session.id] = session
        return session, answer

    # -- both --

    def _watch_connection(self, session: Session) -> None:
        """End the session when its connection fails or closes; say why it failed, once."""
        pc = session.pc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "failed" and session.id in self.sessions:
                self._log_failure(session)
            if pc.connectionState in ("failed", "closed"):
                await self.leave(session)

    @staticmethod
    def _log_failure(session: Session) -> None:
        context = {"stream_id": str(session.broadcast.stream_id), "session_id": session.id,
                   "session_kind": session.kind}
        dtls = [t.sender.transport for t in session.pc.getTransceivers()
                if t.sender.transport is not None]
        if any(transport.state == "failed" for transport in dtls):
            # aiortc says why only at DEBUG ("fingerprint mismatch", an OpenSSL alert...).
            log.warning("WebRTC session failed: DTLS handshake failed", extra=context)
        else:
            ice = {transport.transport.state for transport in dtls}
            log.warning("WebRTC session failed: no network path (ICE)",
                        extra={**context, "ice_state": ",".join(sorted(ice))})

    async def _answer(self, pc: RTCPeerConnection, offer_sdp: str) -> str:
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, KeyError, IndexError) as exc:
            await pc.close()
            raise MalformedSdp(f"The SDP offer could not be used: {exc}") from None
        except BaseException:
            await pc.close()
            raise
        return str(pc.localDescription.sdp)

    async def trickle(self, session: Session, fragment: str) -> None:
        for found in parse_trickle(fragment, session.offer.ice_ufrag):
            try:
                candidate = candidate_from_sdp(found.candidate)
            except (ValueError, IndexError):
                raise MalformedSdp(f"Not an ICE candidate: {found.candidate[:100]!r}") from None
            candidate.sdpMid = found.mid
            candidate.sdpMLineIndex = found.line_index
            await session.pc.addIceCandidate(candidate)

    async def leave(self, session: Session) -> None:
        """End a session (DELETE, or its connection failed); idempotent."""
        if self.sessions.pop(session.id, None) is None:
            return
        broadcast = session.broadcast
        if session.kind == "whep":
            entry = broadcast.viewers.pop(session.id, None)
            if entry is not None:
                for track in entry[1].values():
                    track.finish()
        elif broadcast.publisher is session:
            broadcast.publisher = None
            broadcast.live = False
            broadcast.video_receiver = None
            broadcast.end_later(self.grace_s)
        await session.pc.close()

    async def stop(self) -> None:
        # The counting loop also stops by this flag: redis-py can swallow a cancellation that
        # arrives while a command is in flight, and the task would then go on forever (a
        # shutdown that hung for good in a go-live page test).
        self._stopping = True
        for task in (self._counting, self._leasing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._counting = self._leasing = None
        for session in list(self.sessions.values()):
            await self.leave(session)
        for broadcast in list(self.broadcasts.values()):
            broadcast.cancel_end()
            await self.end_broadcast(broadcast)

    def rtc_configuration(self) -> RTCConfiguration:
        """The server's peer connections gather through LIVECORE_ICE_SERVERS (none: host
        addresses only)."""
        settings = self.services.settings
        password = settings.turn_password.reveal() if settings.turn_password else None
        servers = []
        for url in ice_servers(settings.ice_servers):
            if url.startswith("stun:"):
                servers.append(RTCIceServer(urls=url))
            else:
                servers.append(RTCIceServer(urls=url, username=settings.turn_username or None,
                                            credential=password))
        return RTCConfiguration(iceServers=servers)

    def ice_links(self) -> list[str]:
        """``Link`` header values telling WHIP/WHEP clients the ICE servers (RFC 9725, 4.6)."""
        settings = self.services.settings
        links = []
        for url in ice_servers(settings.ice_servers):
            link = f'<{url}>; rel="ice-server"'
            if not url.startswith("stun:") and settings.turn_username:
                password = settings.turn_password.reveal() if settings.turn_password else ""
                link += (f'; username="{settings.turn_username}"; credential="{password}"'
                         '; credential-type="password"')
            links.append(link)
        return links

    def start_counting(self) -> None:
        self._counting = asyncio.create_task(self._count_forever(), name="media-presence")
        self._leasing = asyncio.create_task(self._renew_forever(), name="media-leases")

    async def _renew_forever(self) -> None:
        interval_s = self.services.settings.media_lease_s / 3
        while not self._stopping:
            held = [sid for sid, broadcast in self.broadcasts.items() if broadcast.is_held]
            try:
                await self._renew(held)
            except Exception:  # the loop must outlive any one failure, or leases lapse
                log.exception("media leases not renewed")
            await asyncio.sleep(interval_s)

    async def _renew(self, stream_ids: list[StreamId]) -> None:
        """Renew this node's leases on the streams whose publishers it holds (see
        :func:`end_lapsed_streams`); a failure only logs: the next renewal tries again, and a
        lease outlives two missed ones."""
        if not stream_ids:
            return
        until = utc_now() + dt.timedelta(seconds=self.services.settings.media_lease_s)
        try:
            await self.services.streams.renew_media_leases(stream_ids, until)
        except postgres.UNAVAILABLE_ERRORS as exc:
            log.warning("media leases not renewed", extra={"error": repr(exc)})

    async def _count_forever(self) -> None:
        while not self._stopping:
            try:
                await self.count_viewers()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("WebRTC viewer counts not recorded", extra={"error": repr(exc)})
            await asyncio.sleep(PRESENCE_INTERVAL_S)

    async def count_viewers(self) -> None:
        """Record this node's WHEP sessions per stream (the hub's presence reads the totals as
        ``watching``); a stream that lost its last viewer here is recorded once as 0."""
        counts = {sid: len(b.viewers) for sid, b in self.broadcasts.items() if b.viewers}
        for stream_id in set(self._counted) | set(counts):
            count = counts.get(stream_id, 0)
            if self._counted.get(stream_id) != count or count:
                await self.services.bus.set_viewers(str(stream_id), self.node_id, count,
                                                    NODE_TTL_S, what="watching")
        self._counted = counts


# -- streams whose node is gone -------------------------------------------------------------


async def end_lapsed_streams(services: Services) -> list[StreamId]:
    """End the live streams no node holds any more, as their node would have.

    The node holding a publisher renews the stream's media lease (``LIVECORE_MEDIA_LEASE_S``)
    while it does and while it waits out the grace period after the publisher leaves. A node
    that is killed renews nothing, and its grace timer dies with it: a live stream whose lease
    lapsed more than ``LIVECORE_MEDIA_GRACE_S`` ago has no publisher anywhere. ``livecore
    serve`` runs this at start-up and ``livecore worker`` on every pass; the ending is atomic
    per stream, so several of them may run at once. The room hears the end, and the stream's
    HLS output becomes its replay (:func:`close_replay`) when its files are on this machine."""
    settings = services.settings
    now = utc_now()
    lapsed_before = now - dt.timedelta(seconds=settings.media_grace_s)
    ended = await services.streams.end_lapsed(
        now, lease_before=lapsed_before,
        started_before=lapsed_before - dt.timedelta(seconds=settings.media_lease_s))
    for stream_id in ended:
        stream = await services.streams.get(stream_id)
        await publish_state(services, stream)
        replay = await asyncio.to_thread(close_replay, settings.data_dir, stream_id)
        log.warning("stream ended: no node holds its publisher any more",
                    extra={"stream_id": str(stream_id), "replay": replay})
    return ended


def close_replay(data_dir: str, stream_id: StreamId) -> bool:
    """Write the replay playlist of a stream whose packager died with its process, from the
    segments it had written under ``data_dir``; whether there is a replay. (Parts still in
    memory are lost.)"""
    directory = Path(data_dir).resolve() / "hls" / str(stream_id)
    if (directory / "index.m3u8").is_file():
        return True
    return write_replay(directory)


# -- HTTP ----------------------------------------------------------------------------------

MEDIA_KEY = web.AppKey("media", MediaHub)


def _with_cors(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except LivecoreError as error:
            response = error_response(error)
        response.headers.update(CORS_HEADERS)
        return response

    return wrapped


def _stream_id(request: web.Request) -> StreamId:
    try:
        return StreamId(uuid.UUID(request.match_info["stream_id"]))
    except ValueError:
        raise NotFound("No such stream.", code="stream_not_found") from None


async def _sdp_body(request: web.Request, expected: str) -> str:
    if request.content_type != expected:
        raise UnsupportedMediaType(f"The body must be {expected}.",
                                   content_type=request.content_type)
    services: Services = request.app[MEDIA_KEY].services
    body = await request.content.read(services.settings.max_body_bytes + 1)
    if len(body) > services.settings.max_body_bytes:
        raise MalformedSdp("The SDP is too large.")
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise MalformedSdp("The SDP is not UTF-8 text.") from None


def _answer(media: MediaHub, session: Session, answer: str) -> web.Response:
    response = web.Response(status=201, text=answer, content_type=SDP_TYPE,
                            headers={"Location": session.path, "ETag": f'"{session.id}"'})
    for link in media.ice_links():
        response.headers.add("Link", link)
    return response


async def whip_post(request: web.Request) -> web.StreamResponse:
    media = request.app[MEDIA_KEY]
    stream_id = _stream_id(request)
    stream = await media.services.streams.get(stream_id)
    key = auth.bearer_token(request.headers.get("Authorization", ""))
    if key is None or not hmac.compare_digest(key.encode(), stream.stream_key.encode()):
        raise Unauthenticated("Send the stream key: 'Authorization: Bearer <stream key>'.",
                              code="invalid_stream_key")
    offer = await _sdp_body(request, SDP_TYPE)
    if stream.state is StreamState.ENDED:
        raise Conflict("This stream has ended; create a new one to go live again.",
                       code="stream_ended")
    session, answer = await media.publish(stream_id, offer)
    return _answer(media, session, answer)


async def whep_post(request: web.Request) -> web.StreamResponse:
    media = request.app[MEDIA_KEY]
    stream_id = _stream_id(request)
    stream = await media.services.streams.get(stream_id)  # 404 for an unknown stream
    offer = await _sdp_body(request, SDP_TYPE)
    if stream.state is StreamState.ENDED:  # not "not live yet": there is nothing to wait for
        raise Conflict("This stream has ended; there is nothing more to watch.",
                       code="stream_ended")
    session, answer = await media.play(stream_id, offer)
    return _answer(media, session, answer)


def _session(request: web.Request, kind: str) -> Session:
    media = request.app[MEDIA_KEY]
    session = media.sessions.get(request.match_info["session_id"])
    if (session is None or session.kind != kind
            or str(session.broadcast.stream_id) != request.match_info["stream_id"]):
        raise NotFound("No such session.", code="session_not_found")
    return session


async def _check_key(request: web.Request, session: Session) -> None:
    if session.kind != "whip":
        return
    stream = await request.app[MEDIA_KEY].services.streams.get(session.broadcast.stream_id)
    key = auth.bearer_token(request.headers.get("Authorization", ""))
    if key is None or not hmac.compare_digest(key.encode(), stream.stream_key.encode()):
        raise Unauthenticated("Send the stream key: 'Authorization: Bearer <stream key>'.",
                              code="invalid_stream_key")


def session_routes(kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    async def patch(request: web.Request) -> web.StreamResponse:
        session = _session(request, kind)
        await _check_key(request, session)
        fragment = await _sdp_body(request, TRICKLE_TYPE)
        await request.app[MEDIA_KEY].trickle(session, fragment)
        return web.Response(status=204)

    async def delete(request: web.Request) -> web.StreamResponse:
        session = _session(request, kind)
        await _check_key(request, session)
        await request.app[MEDIA_KEY].leave(session)
        return web.Response(status=200)

    return patch, delete


async def hls_playlist(request: web.Request) -> web.StreamResponse:
    media = request.app[MEDIA_KEY]
    stream_id = _stream_id(request)
    await media.services.streams.get(stream_id)  # 404 for an unknown stream
    return await media.hls.playlist(stream_id, request.query)


async def hls_file(request: web.Request) -> web.StreamResponse:
    media = request.app[MEDIA_KEY]
    return await media.hls.file(_stream_id(request), request.match_info["name"])


async def preflight(request: web.Request) -> web.StreamResponse:
    """CORS preflight; also where a WHIP/WHEP client may learn the ICE servers first."""
    response = web.Response(status=204)
    for link in request.app[MEDIA_KEY].ice_links():
        response.headers.add("Link", link)
    return response


def add_media_routes(app: web.Application, services: Services, *, node_id: str) -> MediaHub:
    media = MediaHub(services, grace_s=services.settings.media_grace_s, node_id=node_id)
    app[MEDIA_KEY] = media
    for kind, post in (("whip", whip_post), ("whep", whep_post)):
        patch, delete = session_routes(kind)
        app.router.add_post(f"/{kind}/{{stream_id}}", _with_cors(post))
        app.router.add_route("OPTIONS", f"/{kind}/{{stream_id}}", _with_cors(preflight))
        app.router.add_patch(f"/{kind}/{{stream_id}}/{{session_id}}", _with_cors(patch))
        app.router.add_delete(f"/{kind}/{{stream_id}}/{{session_id}}", _with_cors(delete))
        app.router.add_route("OPTIONS", f"/{kind}/{{stream_id}}/{{session_id}}",
                             _with_cors(preflight))

    app.setdefault(STREAM_ENDED_KEY, []).append(media.stream_ended)
    app.router.add_get("/hls/{stream_id}/index.m3u8", _with_cors(hls_playlist))
    app.router.add_get("/hls/{stream_id}/{name}", _with_cors(hls_file))

    async def start_media(app: web.Application) -> None:
        media.start_counting()

    async def stop_media(app: web.Application) -> None:
        await media.stop()

    app.on_startup.append(start_media)
    app.on_shutdown.append(stop_media)
    return media
