"""WHIP ingest and WHEP playback with real aiortc peers over real sockets (tests/media)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

from gateway.app import create_app
from gateway.client import HubClient
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


async def new_stream(api: ApiClient) -> tuple[str, str, str]:
    """(stream id, stream key, creator token)."""
    _, token = await api.new_creator()
    response, stream = await api.request("POST", "/api/v1/streams", token=token,
                                         json={"title": "Media test"})
    assert response.status == 201, stream
    return stream["id"], stream["stream_key"], token


async def publish(api: ApiClient, stream_id: str, key: str,
                  *, video_codec: str | None = None) -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
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
    # Leaving and coming back within the grace period keeps the stream live.
    response, _ = await api.request("DELETE", location, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200
    await publisher.close()
    again, location = await publish(api, stream_id, key)
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
        [video_sender] = [s for s in publisher.getSenders() if s.track and s.track.kind == "video"]
        asked: list[float] = []
        original = video_sender._send_keyframe

        def counted() -> None:
            asked.append(asyncio.get_running_loop().time())
            original()

        video_sender._send_keyframe = counted  # type: ignore[method-assign]
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
