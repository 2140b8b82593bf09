"""WHIP ingest and WHEP playback with real aiortc peers over real sockets (tests/media)."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.codecs.vpx import DEFAULT_BITRATE as VP8_DEFAULT_BITRATE
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

from gateway.app import create_app
from gateway.client import HubClient
from gateway.logs import quiet_libraries
from gateway.media import MEDIA_KEY, MediaHub
from livecore.ids import StreamId
from livecore.media import SDP_TYPE, TRICKLE_TYPE, summarize_offer
from livecore.settings import Secret
from tests.support import ApiClient, stream_state, until_state

WIDTH, HEIGHT = 320, 240


class Pattern(VideoStreamTrack):
    """A synthetic camera: small frames whose brightness changes every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=WIDTH, height=HEIGHT, format="yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(self.count * 7) % 256]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.count += 1
        return frame


class Steady(Pattern):
    """Brightness that moves smoothly (a triangle wave): no scene cut for x264 to start a new
    GOP at, so keyframes come only when asked for (and every 250 frames)."""

    async def recv(self) -> VideoFrame:
        frame = await super().recv()
        level = 100 + abs(self.count % 32 - 16)
        for plane in frame.planes:
            plane.update(bytes([level]) * plane.buffer_size)
        return frame


async def new_stream(api: ApiClient) -> tuple[str, str, str]:
    """(stream id, stream key, creator token)."""
    _, token = await api.new_creator()
    response, stream = await api.request("POST", "/api/v1/streams", token=token,
                                         json={"title": "Media test"})
    assert response.status == 201, stream
    return stream["id"], stream["stream_key"], token


async def publisher_offer(camera: VideoStreamTrack | None = None) -> RTCPeerConnection:
    """A publisher with its offer made (ICE gathered), ready to POST."""
    pc = RTCPeerConnection()
    pc.addTrack(camera or Pattern())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def publish(api: ApiClient, stream_id: str, key: str,
                  *, video_codec: str | None = None,
                  camera: VideoStreamTrack | None = None,
                  prepared: RTCPeerConnection | None = None) -> tuple[RTCPeerConnection, str]:
    pc = prepared or await publisher_offer(camera)
    response, _ = await api.request(
        "POST", f"/whip/{stream_id}", data=pc.localDescription.sdp,
        headers={"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"})
    answer = await response.text()
    assert response.status == 201, answer
    assert response.headers["Content-Type"].startswith(SDP_TYPE)
    if video_codec is not None:
        assert f"{video_codec}/90000" in answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, response.headers["Location"]


async def watch(api: ApiClient, stream_id: str) -> tuple[RTCPeerConnection, asyncio.Queue[Any],
                                                          str]:
    """A WHEP viewer; its queue receives every decoded video frame."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    frames: asyncio.Queue[Any] = asyncio.Queue()

    @pc.on("track")
    def on_track(track: Any) -> None:
        if track.kind != "video":
            return

        async def read() -> None:
            while True:
                try:
                    frames.put_nowait(await track.recv())
                except MediaStreamError:
                    return

        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    response, _ = await api.request("POST", f"/whep/{stream_id}", data=pc.localDescription.sdp,
                                    headers={"Content-Type": SDP_TYPE})
    answer = await response.text()
    assert response.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, frames, response.headers["Location"]


async def until(predicate: Any) -> None:
    """Poll ``predicate`` (an async callable) until it is true."""
    async with asyncio.timeout(20):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def frames_of(queue: asyncio.Queue[Any], count: int) -> list[Any]:
    async with asyncio.timeout(30):
        return [await queue.get() for _ in range(count)]


@pytest.mark.parametrize("codec", ["H264", "VP8"])
async def test_a_published_stream_goes_live_and_viewers_decode_forwarded_frames(
        media_api: ApiClient, codec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    api = media_api
    media: MediaHub = api.client.app[MEDIA_KEY]
    # The gateway prefers H.264; to test VP8 ingest, prefer VP8 for this run.
    monkeypatch.setattr("gateway.media.VIDEO_CODECS",
                        ("video/H264", "video/VP8") if codec == "H264" else ("video/VP8",))
    stream_id, key, _ = await new_stream(api)
    publisher, location = await publish(api, stream_id, key, video_codec=codec)
    try:
        assert location.startswith(f"/whip/{stream_id}/")
        await until_state(api, stream_id, "live")
        ws_url = str(api.client.make_url("/ws")).replace("http://", "ws://")
        async with await HubClient.connect(ws_url) as room:
            await room.subscribe(stream_id)
            viewers = [await watch(api, stream_id) for _ in range(2)]
            # The WebRTC viewers reach the room's presence as `watching`.
            presence = await room.next_event("presence", timeout=10,
                                             where=lambda m: m.get("watching") == 2)
            assert presence["viewers"] == 1
        for _pc, frames, _ in viewers:
            got = await frames_of(frames, 30)
            assert {(f.width, f.height) for f in got} == {(WIDTH, HEIGHT)}
            # Frames arrive in order: their timestamps only grow.
            assert [f.pts for f in got] == sorted(f.pts for f in got)
        # Forwarded, never decoded by the gateway: its receiver hands on packets.
        broadcast = media.broadcasts[StreamId(uuid.UUID(stream_id))]
        assert broadcast.video_codec == codec
        # A late viewer starts on a keyframe: its first forwarded packet decodes.
        late_pc, late_frames, _ = await watch(api, stream_id)
        first = await frames_of(late_frames, 5)
        assert first[0].width == WIDTH
        for pc, _, _ in [*viewers, (late_pc, None, None)]:
            await pc.close()
    finally:
        await publisher.close()


def keyframe_requests(publisher: RTCPeerConnection) -> list[float]:
    """The loop times at which ``publisher`` is asked for a keyframe from now on (its video
    sender's requests, counted as they come)."""
    [video_sender] = [s for s in publisher.getSenders() if s.track and s.track.kind == "video"]
    asked: list[float] = []
    original = video_sender._send_keyframe

    def counted() -> None:
        asked.append(asyncio.get_running_loop().time())
        original()

    video_sender._send_keyframe = counted  # type: ignore[method-assign]
    return asked


async def test_the_stream_ends_when_the_publisher_leaves_and_stays_if_it_returns(
        media_api: ApiClient) -> None:
    api = media_api
    stream_id, key, _ = await new_stream(api)
    ws_url = str(api.client.make_url("/ws")).replace("http://", "ws://")
    room = await HubClient.connect(ws_url)
    await room.subscribe(stream_id)
    publisher, location = await publish(api, stream_id, key)
    await until_state(api, stream_id, "live")
    # The room hears it: media arrived.
    event = await room.next_event("stream.state", timeout=10)
    assert event["data"] == {"state": "live"}
    # Leaving and coming back within the grace period keeps the stream live. (The return's
    # offer is made first: gathering ICE can outlast the test's 0.5 s grace on a busy machine.)
    returning = await publisher_offer()
    response, _ = await api.request("DELETE", location, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200
    await publisher.close()
    again, location = await publish(api, stream_id, key, prepared=returning)
    await asyncio.sleep(1.0)  # longer than the 0.5 s grace
    assert await stream_state(api, stream_id) == "live"
    # A second publisher while one is connected is refused.
    assert await refused_publish(api, stream_id, key) == (409, "already_live")
    # Leaving for good ends it, after the grace period.
    response, _ = await api.request("DELETE", location, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200
    await again.close()
    await until_state(api, stream_id, "ended")
    event = await room.next_event("stream.state", timeout=10)
    assert event["data"] == {"state": "ended"}  # one event: the return kept it live
    await room.close()
    # An ended stream takes no publisher.
    assert await refused_publish(api, stream_id, key) == (409, "stream_ended")


async def refused_publish(api: ApiClient, stream_id: str, key: str) -> tuple[int, str]:
    """Offer to publish with the right key; the status and error code of the refusal."""
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    await pc.setLocalDescription(await pc.createOffer())
    try:
        response, body = await api.request(
            "POST", f"/whip/{stream_id}", data=pc.localDescription.sdp,
            headers={"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"})
    finally:
        await pc.close()
    return response.status, body["error"]["code"]


async def test_bad_requests_get_clear_statuses_and_change_nothing(media_api: ApiClient) -> None:
    api = media_api
    stream_id, key, _ = await new_stream(api)
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    sdp = {"Content-Type": SDP_TYPE}
    cases = [
        ("/whip/" + stream_id, offer, {**sdp, "Authorization": "Bearer wrong"}, 401,
         "invalid_stream_key"),
        ("/whip/" + stream_id, offer, sdp, 401, "invalid_stream_key"),
        ("/whip/00000000-0000-4000-8000-000000000000", offer,
         {**sdp, "Authorization": f"Bearer {key}"}, 404, "stream_not_found"),
        ("/whip/not-a-uuid", offer, {**sdp, "Authorization": f"Bearer {key}"}, 404,
         "stream_not_found"),
        ("/whip/" + stream_id, offer, {"Content-Type": "text/plain",
                                       "Authorization": f"Bearer {key}"}, 415,
         "unsupported_media_type"),
        ("/whip/" + stream_id, "hello", {**sdp, "Authorization": f"Bearer {key}"}, 400,
         "malformed_sdp"),
        ("/whip/" + stream_id, "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
         {**sdp, "Authorization": f"Bearer {key}"}, 400, "malformed_sdp"),
        ("/whep/" + stream_id, offer, sdp, 409, "stream_not_live"),
    ]
    for path, body, headers, status, code in cases:
        response, answer = await api.request("POST", path, data=body, headers=headers)
        assert (response.status, answer["error"]["code"]) == (status, code), (path, answer)
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert await stream_state(api, stream_id) == "created"
    # CORS preflight for browsers.
    response, _ = await api.request("OPTIONS", f"/whip/{stream_id}")
    assert response.status == 204
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    # Trickle ICE on a real session; an ICE restart (new ufrag) is refused with 422.
    publisher, location = await publish(api, stream_id, key)
    auth = {"Authorization": f"Bearer {key}"}
    candidate = ("a=mid:0\r\na=candidate:1 1 UDP 2130706431 192.0.2.2 9 typ host\r\n")
    response, _ = await api.request("PATCH", location, data=candidate,
                                    headers={**auth, "Content-Type": TRICKLE_TYPE})
    assert response.status == 204
    response, body = await api.request("PATCH", location, data="a=candidate:garbage\r\n",
                                       headers={**auth, "Content-Type": TRICKLE_TYPE})
    assert (response.status, body["error"]["code"]) == (400, "malformed_sdp")
    restart = "a=ice-ufrag:other\r\na=ice-pwd:0123456789012345678901\r\n"
    response, body = await api.request("PATCH", location, data=restart,
                                       headers={**auth, "Content-Type": TRICKLE_TYPE})
    assert (response.status, body["error"]["code"]) == (422, "ice_restart_unsupported")
    response, body = await api.request("PATCH", location, data=candidate,
                                       headers={**auth, "Content-Type": SDP_TYPE})
    assert (response.status, body["error"]["code"]) == (415, "unsupported_media_type")
    response, body = await api.request("DELETE", location, headers={"Authorization": "Bearer x"})
    assert (response.status, body["error"]["code"]) == (401, "invalid_stream_key")
    response, body = await api.request("DELETE", location + "x", headers=auth)
    assert (response.status, body["error"]["code"]) == (404, "session_not_found")
    response, _ = await api.request("DELETE", location, headers=auth)
    assert response.status == 200
    await publisher.close()
    await pc.close()


async def test_viewers_keyframe_requests_reach_the_publisher_rate_limited(
        media_api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer's PLI is passed on to the publisher (nothing is encoded at the gateway), at
    most once per PLI_INTERVAL_S; a joining viewer asks for one itself."""
    api = media_api
    stream_id, key, _ = await new_stream(api)
    publisher, _ = await publish(api, stream_id, key)
    try:
        asked = keyframe_requests(publisher)
        await until_state(api, stream_id, "live")
        monkeypatch.setattr("gateway.media.PLI_INTERVAL_S", 3600.0)  # one per test, at most
        media: MediaHub = api.client.app[MEDIA_KEY]
        broadcast = media.broadcasts[StreamId(uuid.UUID(stream_id))]
        broadcast._last_pli = float("-inf")  # forget the requests made before the change
        before = len(asked)
        viewer, frames, _ = await watch(api, stream_id)
        await frames_of(frames, 5)

        async def one_more() -> bool:
            return len(asked) == before + 1

        await until(one_more)  # the joining viewer's request reached the publisher
        # The viewer now asks ten times in a row: within the interval, nothing more goes up.
        [receiver] = [r for r in viewer.getReceivers() if r.track.kind == "video"]
        # The gateway's video SSRC, not its retransmission one (a PLI names the media SSRC).
        media_ssrc = summarize_offer(viewer.remoteDescription.sdp).video_ssrc
        assert media_ssrc is not None
        for _ in range(10):
            await receiver._send_rtcp_pli(media_ssrc)
        await frames_of(frames, 10)  # time for RTCP to travel
        assert len(asked) == before + 1
        # Once the interval has passed, the next request goes up.
        monkeypatch.setattr("gateway.media.PLI_INTERVAL_S", 0.0)
        await receiver._send_rtcp_pli(media_ssrc)
        await until(lambda: _is_more(asked, before + 1))
        await viewer.close()
    finally:
        await publisher.close()


async def _is_more(items: list[float], count: int) -> bool:
    return len(items) > count


async def test_configured_ice_servers_are_used_and_told_to_clients(make_services: Any,
                                                                   tmp_path: Path) -> None:
    """LIVECORE_ICE_SERVERS: the server's peer connections gather through them, and WHIP/WHEP
    clients learn them from Link headers (RFC 9725, 4.6), TURN credentials included."""
    services = make_services(ice_servers="stun:stun.example.net:3478, turn:turn.example.net",
                             turn_username="live", turn_password=Secret("s3cret"),
                             data_dir=str(tmp_path))
    async with ApiClient.serving(create_app(services)) as api:
        media: MediaHub = api.client.app[MEDIA_KEY]
        configuration = media.rtc_configuration()
        assert [(s.urls, s.username, s.credential) for s in configuration.iceServers or []] == [
            ("stun:stun.example.net:3478", None, None),
            ("turn:turn.example.net", "live", "s3cret")]
        response, _ = await api.request("OPTIONS", f"/whep/{uuid.uuid4()}")
        assert response.status == 204
        assert response.headers.getall("Link") == [
            '<stun:stun.example.net:3478>; rel="ice-server"',
            '<turn:turn.example.net>; rel="ice-server"; username="live"; credential="s3cret"'
            '; credential-type="password"']


async def test_ending_the_stream_through_the_api_hangs_up_its_publisher_and_viewers(
        media_api: ApiClient) -> None:
    api = media_api
    stream_id, key, token = await new_stream(api)
    publisher, location = await publish(api, stream_id, key)
    await until_state(api, stream_id, "live")
    viewer, frames, _ = await watch(api, stream_id)
    await frames_of(frames, 5)
    media: MediaHub = api.client.app[MEDIA_KEY]
    response, body = await api.request("POST", f"/api/v1/streams/{stream_id}/end", token=token)
    assert response.status == 200 and body["state"] == "ended"
    # At once, not after the grace period: no session is left, nothing more to watch.
    assert media.sessions == {}
    assert StreamId(uuid.UUID(stream_id)) not in media.broadcasts
    response, body = await api.request(
        "DELETE", location, headers={"Authorization": f"Bearer {key}"})
    assert (response.status, body["error"]["code"]) == (404, "session_not_found")
    await viewer.close()
    await publisher.close()


def only_codecs(pc: RTCPeerConnection, kind: str, mime_types: tuple[str, ...]) -> None:
    """Make ``pc``'s transceiver of ``kind`` offer only these codecs (and their RTX)."""
    [transceiver] = [t for t in pc.getTransceivers() if t.kind == kind]
    capabilities = RTCRtpSender.getCapabilities(kind)
    assert capabilities is not None
    codecs = [c for c in capabilities.codecs if c.mimeType in mime_types]
    rtx = [c for c in capabilities.codecs if c.mimeType == f"{kind}/rtx"]
    transceiver.setCodecPreferences(codecs + (rtx if kind == "video" else []))


async def test_offers_without_a_codec_the_server_forwards_are_refused_with_422(
        media_api: ApiClient) -> None:
    """WHIP video in no codec the gateway takes, WHIP audio other than Opus, and a WHEP viewer
    that cannot take the stream's codec: 422 unsupported_codec, and nothing changes."""
    api = media_api
    media: MediaHub = api.client.app[MEDIA_KEY]
    stream_id, key, _ = await new_stream(api)
    whip = {"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"}

    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    # A camera in codecs the gateway does not take (aiortc makes only VP8 and H.264 offers).
    no_video = offer.replace(" VP8/90000", " VP9/90000").replace(" H264/90000", " AV1/90000")
    response, body = await api.request("POST", f"/whip/{stream_id}", data=no_video,
                                       headers=whip)
    assert (response.status, body["error"]["code"]) == (422, "unsupported_codec"), body
    assert body["error"]["kind"] == "video" and "VP9" in body["error"]["message"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    # Audio in G.711 only: HLS would wait for audio that never comes.
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    pc.addTrack(AudioStreamTrack())
    only_codecs(pc, "audio", ("audio/PCMU",))
    await pc.setLocalDescription(await pc.createOffer())
    response, body = await api.request("POST", f"/whip/{stream_id}",
                                       data=pc.localDescription.sdp, headers=whip)
    await pc.close()
    assert (response.status, body["error"]["code"]) == (422, "unsupported_codec"), body
    assert body["error"]["kind"] == "audio"
    assert media.sessions == {} and StreamId(uuid.UUID(stream_id)) not in media.broadcasts
    assert await stream_state(api, stream_id) == "created"

    # Published in H.264; a viewer offering VP8 only cannot take it.
    publisher, _ = await publish(api, stream_id, key, video_codec="H264")
    try:
        await until_state(api, stream_id, "live")
        viewer = RTCPeerConnection()
        viewer.addTransceiver("video", direction="recvonly")
        viewer.addTransceiver("audio", direction="recvonly")
        only_codecs(viewer, "video", ("video/VP8",))
        await viewer.setLocalDescription(await viewer.createOffer())
        response, body = await api.request("POST", f"/whep/{stream_id}",
                                           data=viewer.localDescription.sdp,
                                           headers={"Content-Type": SDP_TYPE})
        await viewer.close()
        assert (response.status, body["error"]["code"]) == (422, "unsupported_codec"), body
        assert body["error"]["accepted"] == ["H264"]
        broadcast = media.broadcasts[StreamId(uuid.UUID(stream_id))]
        assert broadcast.viewers == {}
        # The same viewer with H.264 is welcome.
        _pc, frames, _ = await watch(api, stream_id)
        await frames_of(frames, 3)
        await _pc.close()
    finally:
        await publisher.close()


async def test_whep_after_the_stream_ended_says_stream_ended(media_api: ApiClient) -> None:
    """Not stream_not_live: a client that waits for a live stream would wait forever."""
    api = media_api
    stream_id, key, token = await new_stream(api)
    viewer = RTCPeerConnection()
    viewer.addTransceiver("video", direction="recvonly")
    await viewer.setLocalDescription(await viewer.createOffer())
    offer = viewer.localDescription.sdp
    await viewer.close()
    sdp = {"Content-Type": SDP_TYPE}
    response, body = await api.request("POST", f"/whep/{stream_id}", data=offer, headers=sdp)
    assert (response.status, body["error"]["code"]) == (409, "stream_not_live")
    publisher, _ = await publish(api, stream_id, key)
    await until_state(api, stream_id, "live")
    response, _ = await api.request("POST", f"/api/v1/streams/{stream_id}/end", token=token)
    assert response.status == 200
    await publisher.close()
    response, body = await api.request("POST", f"/whep/{stream_id}", data=offer, headers=sdp)
    assert (response.status, body["error"]["code"]) == (409, "stream_ended"), body


async def test_a_failed_dtls_handshake_is_logged_once_and_ice_stays_quiet(
        media_api: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    """A publisher whose certificate does not match its offer's fingerprint: the session fails
    at DTLS, and the log says so once, with the stream and session; aioice's per-check INFO
    records are not there (the levels ``configure_logging`` sets)."""
    api = media_api
    quiet_libraries()
    caplog.set_level(logging.INFO)
    stream_id, key, _ = await new_stream(api)
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    await pc.setLocalDescription(await pc.createOffer())
    forged = re.sub(r"a=fingerprint:sha-256 [0-9A-F:]+",
                    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), pc.localDescription.sdp)
    response, answer = await api.request(
        "POST", f"/whip/{stream_id}", data=forged,
        headers={"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"})
    assert response.status == 201
    session_id = response.headers["Location"].rsplit("/", 1)[1]
    await pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
    media: MediaHub = api.client.app[MEDIA_KEY]

    async def gone() -> bool:
        return session_id not in media.sessions

    await until(gone)
    await pc.close()
    failures = [r for r in caplog.records if r.name == "gateway.media"
                and "DTLS handshake failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]
    assert failures[0].levelno == logging.WARNING
    context = failures[0].__dict__
    assert (context["stream_id"], context["session_id"]) == (stream_id, session_id)
    chatter = [r for r in caplog.records if r.name.startswith("aioice")
               and r.levelno < logging.WARNING]
    assert chatter == []
    assert await stream_state(api, stream_id) == "created"


async def test_viewers_joining_together_or_just_after_a_keyframe_all_get_frames(
        media_api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer who joins within PLI_INTERVAL_S of the last keyframe request, after that
    keyframe went by, still gets a keyframe requested (when the interval is over), not the
    publisher's next one of its own accord; viewers joining at once share one request."""
    api = media_api
    # Keyframes only when asked for: VP8 from aiortc (a GOP of 3000 frames; x264 starts new
    # GOPs of its own about every second), its encoder never re-created for a new bitrate
    # estimate (which makes a keyframe), and a picture without scene cuts.
    monkeypatch.setattr("gateway.media.VIDEO_CODECS", ("video/VP8",))
    monkeypatch.setattr(Vp8Encoder, "target_bitrate",
                        property(lambda self: VP8_DEFAULT_BITRATE, lambda self, _: None))
    stream_id, key, _ = await new_stream(api)
    publisher, _ = await publish(api, stream_id, key, camera=Steady())
    viewers: list[RTCPeerConnection] = []
    try:
        asked = keyframe_requests(publisher)
        await until_state(api, stream_id, "live")
        # Long enough that the last viewer joins within it; no keyframe requests for HLS's
        # sake meanwhile.
        monkeypatch.setattr("gateway.media.PLI_INTERVAL_S", 2.0)
        monkeypatch.setattr("gateway.media.SEGMENT_S", 3600)
        media: MediaHub = api.client.app[MEDIA_KEY]
        broadcast = media.broadcasts[StreamId(uuid.UUID(stream_id))]
        broadcast._last_pli = float("-inf")
        before = len(asked)
        together = [await _offered_viewer() for _ in range(4)]
        await asyncio.gather(*(_join(api, stream_id, pc) for pc, _ in together))
        viewers += [pc for pc, _ in together]
        for _, frames in together:
            await frames_of(frames, 3)
        # Still at most one request per interval: the first joiner's, and one for those whose
        # request came after its keyframe had gone by.
        assert 1 <= len(asked) - before <= 2
        before = len(asked)

        # Just after: the keyframe went by; this one's request waits out the interval, and
        # then goes up (it used to be dropped: the viewer waited for a keyframe the publisher
        # would make of its own accord, here never).
        late, late_frames = await _offered_viewer()
        viewers.append(late)
        await _join(api, stream_id, late)
        await frames_of(late_frames, 3)
        assert len(asked) == before + 1
    finally:
        for pc in viewers:
            await pc.close()
        await publisher.close()


async def _offered_viewer() -> tuple[RTCPeerConnection, asyncio.Queue[Any]]:
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    frames: asyncio.Queue[Any] = asyncio.Queue()

    @pc.on("track")
    def on_track(track: Any) -> None:
        async def read() -> None:
            while True:
                try:
                    frames.put_nowait(await track.recv())
                except MediaStreamError:
                    return

        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    return pc, frames


async def _join(api: ApiClient, stream_id: str, pc: RTCPeerConnection) -> None:
    response, _ = await api.request("POST", f"/whep/{stream_id}", data=pc.localDescription.sdp,
                                    headers={"Content-Type": SDP_TYPE})
    answer = await response.text()
    assert response.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
