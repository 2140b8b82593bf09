"""The watch page in a real Chromium: stream details, live chat, login, and recovery."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from playwright.async_api import Page, WebSocket, async_playwright, expect

from gateway.app import create_app
from gateway.client import HubClient
from livecore.chat import MAX_CHAT_CHARS
from tests.support import CHROMIUM_ARGS, PASSWORD, ApiClient, chromium_path, page_errors

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000  # generous: the page talks to a real server over real sockets
HOSTILE = "<img src=x onerror=alert(1)>"


def ws_url(api: ApiClient) -> str:
    return str(api.client.make_url("/ws")).replace("http://", "ws://")


def record_frames(page: Page) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every JSON frame the page sends and receives on its websockets."""
    sent: list[dict[str, Any]] = []
    received: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: sent.append(json.loads(payload)))
        ws.on("framereceived", lambda payload: received.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return sent, received


async def test_watch_page_reads_chat_logs_in_and_writes(services):
    async with ApiClient.serving(create_app(services)) as api:
        creator, creator_token = await api.new_creator()
        _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                      json={"title": "Sunday soup"})
        room = stream["id"]
        viewer = await api.register()
        url = str(api.client.make_url(f"/watch/{room}"))

        async with await HubClient.connect(ws_url(api), token=creator_token) as creator_ws, \
                async_playwright() as playwright:
            await creator_ws.subscribe(room)
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                errors = page_errors(page)
                sent, _received = record_frames(page)
                await page.goto(url)

                await expect(page.locator("#title")).to_have_text("Sunday soup", timeout=WAIT_MS)
                await expect(page.locator("#creator")).to_have_text(f"@{creator['username']}")
                await expect(page.locator("#state")).to_have_attribute("data-state", "created")
                await expect(page.locator("#player")).to_be_attached()
                await expect(page.locator("#connection")).to_have_attribute(
                    "data-state", "connected", timeout=WAIT_MS)

                # Logged out: the chat can be read, not written.
                await expect(page.locator("#chat-input")).to_be_hidden()
                await expect(page.locator("#login-form")).to_be_visible()

                # A live message, hostile markup included, arrives as plain text.
                await creator_ws.request({"type": "chat", "room": room, "text": "Welcome!"})
                await creator_ws.request({"type": "chat", "room": room, "text": HOSTILE})
                texts = page.locator("#messages .message .text")
                await expect(texts).to_have_text(["Welcome!", HOSTILE], timeout=WAIT_MS)
                assert await page.locator("#messages img").count() == 0

                # Log in through the page's form; the chat input appears, limited as told.
                await page.fill("#login-username", viewer["username"])
                await page.fill("#login-password", PASSWORD)
                await page.click("#login-submit")
                chat_input = page.locator("#chat-input")
                await expect(chat_input).to_be_visible(timeout=WAIT_MS)
                await expect(page.locator("#me")).to_have_text(viewer["username"])
                await expect(page.locator("#login-form")).to_be_hidden()
                await expect(chat_input).to_have_attribute("maxlength", str(MAX_CHAT_CHARS))
                token = await page.evaluate("localStorage.getItem('livecore.token')")
                assert token
                assert {"type": "auth", "token": token} in [
                    {k: v for k, v in m.items() if k != "id"} for m in sent]

                # A message typed in the page reaches the other client.
                await chat_input.fill("Hello from the browser")
                await chat_input.press("Enter")
                event = await creator_ws.next_event(
                    "chat.message", timeout=WAIT_MS / 1000,
                    where=lambda m: m["data"]["text"] == "Hello from the browser")
                assert event["data"]["user"]["username"] == viewer["username"]
                await expect(chat_input).to_have_value("", timeout=WAIT_MS)
                await expect(texts.last).to_have_text("Hello from the browser", timeout=WAIT_MS)

                # A like reaches the room and the total comes back.
                await page.click("#like")
                likes = await creator_ws.next_event("likes", timeout=WAIT_MS / 1000)
                assert likes["data"]["total"] == 1
                await expect(page.locator("#likes")).to_have_attribute(
                    "data-count", "1", timeout=WAIT_MS)

                # Two sockets watch the room (presence ticks every 2 s).
                await page.wait_for_function(
                    "() => Number(document.getElementById('viewers').dataset.count) >= 2",
                    timeout=WAIT_MS)

                # Moderation: a removed message disappears; a mute is announced and explained.
                hostile_id = next(
                    m["data"]["message_id"] for m in creator_ws.events_of("chat.message")
                    if m["data"]["text"] == HOSTILE)
                response, _ = await api.request(
                    "DELETE", f"/api/v1/streams/{room}/chat/messages/{hostile_id}",
                    token=creator_token)
                assert response.status == 204
                await expect(texts).to_have_text(["Welcome!", "Hello from the browser"],
                                                  timeout=WAIT_MS)
                response, body = await api.request(
                    "PUT", f"/api/v1/streams/{room}/chat/sanctions/{viewer['id']}",
                    token=creator_token, json={"kind": "mute"})
                assert response.status == 200, body
                await expect(page.locator("#messages .notice").last).to_contain_text(
                    f"{viewer['username']} was muted", timeout=WAIT_MS)
                await chat_input.fill("Can I still talk?")
                await chat_input.press("Enter")
                await expect(page.locator("#chat-error")).to_contain_text(
                    "You are muted", timeout=WAIT_MS)
                await expect(chat_input).to_have_value("Can I still talk?")

                # Logging out forgets the token and hides the input again.
                await page.click("#logout")
                await expect(page.locator("#login-form")).to_be_visible(timeout=WAIT_MS)
                await expect(chat_input).to_be_hidden()
                assert await page.evaluate("localStorage.getItem('livecore.token')") is None

                assert errors == []
            finally:
                await browser.close()


async def test_watch_page_recovers_after_a_drop_and_a_gap(services):
    async with ApiClient.serving(create_app(services)) as api:
        _, creator_token = await api.new_creator()
        _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                      json={"title": "Night shift"})
        room = stream["id"]
        url = str(api.client.make_url(f"/watch/{room}"))

        async with await HubClient.connect(ws_url(api), token=creator_token) as creator_ws, \
                async_playwright() as playwright:
            await creator_ws.subscribe(room)
            await creator_ws.request({"type": "chat", "room": room, "text": "before"})
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                errors = page_errors(page)
                sent, received = record_frames(page)
                await page.goto(url)
                texts = page.locator("#messages .message .text")
                await expect(texts).to_have_text(["before"], timeout=WAIT_MS)  # the snapshot
                connection = page.locator("#connection")
                await expect(connection).to_have_attribute("data-state", "connected")

                # The socket drops (closed under the page); messages are posted meanwhile.
                await page.evaluate("socket.close()")
                await expect(connection).not_to_have_attribute(
                    "data-state", "connected", timeout=WAIT_MS)
                await creator_ws.request({"type": "chat", "room": room, "text": "while away 1"})
                await creator_ws.request({"type": "chat", "room": room, "text": "while away 2"})
                await expect(connection).to_have_attribute(
                    "data-state", "connected", timeout=WAIT_MS)
                await expect(texts).to_have_text(["before", "while away 1", "while away 2"],
                                                  timeout=WAIT_MS)
                subscribes = [m for m in sent if m["type"] == "subscribe"]
                assert len(subscribes) == 2
                assert "since" not in subscribes[0]
                assert subscribes[1]["since"]["seq"] == 1
                acks = [m["result"] for m in received
                        if m["type"] == "ack" and "recovered" in m.get("result", {})]
                assert [a["recovered"] for a in acks] == [False, True]

                # A gap in seq (an event the page never saw): it leaves and resubscribes from
                # the last event it applied, and the missed events are filled in.
                last_seq = creator_ws.positions[room][1]
                await creator_ws.request({"type": "chat", "room": room, "text": "missed"})
                epoch = creator_ws.positions[room][0]
                await expect(texts).to_have_text(
                    ["before", "while away 1", "while away 2", "missed"], timeout=WAIT_MS)
                await page.evaluate(
                    "event => handleMessage(event)",
                    {"type": "chat.message", "seq": last_seq + 5, "epoch": epoch, "room": room,
                     "ts": 0, "data": {"message_id": "00000000-0000-4000-8000-000000000000",
                                       "user": {"id": "00000000-0000-4000-8000-000000000001",
                                                "username": "ghost"},
                                       "text": "from the future"}})
                await page.wait_for_function(
                    "() => document.getElementById('connection').dataset.state === 'connected'"
                    " && !syncing", timeout=WAIT_MS)
                assert [m["type"] for m in sent[-2:]] == ["unsubscribe", "subscribe"]
                assert sent[-1]["since"] == {"epoch": epoch, "seq": last_seq + 1}
                await creator_ws.request({"type": "chat", "room": room, "text": "after"})
                await expect(texts).to_have_text(
                    ["before", "while away 1", "while away 2", "missed", "after"],
                    timeout=WAIT_MS)
                assert errors == []
            finally:
                await browser.close()


async def test_watch_page_for_an_unknown_stream(services):
    async with ApiClient.serving(create_app(services)) as api:
        url = str(api.client.make_url(f"/watch/{uuid.uuid4()}"))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                errors = page_errors(page)
                sockets: list[WebSocket] = []
                page.on("websocket", lambda ws: sockets.append(ws))
                response = await page.goto(url)
                assert response is not None
                assert response.headers["cache-control"] == "no-cache"
                await expect(page.locator("#title")).to_have_text("No such stream",
                                                                  timeout=WAIT_MS)
                await expect(page.locator("main")).to_be_hidden()
                assert sockets == []  # no chat for a stream that does not exist
                assert errors == []
            finally:
                await browser.close()


COUNT_FRAMES = """async (count) => {
    const video = document.getElementById("player");
    const times = [];
    await new Promise((resolve) => {
        const tick = (_now, meta) => {
            times.push(meta.mediaTime);
            if (times.length >= count) resolve();
            else video.requestVideoFrameCallback(tick);
        };
        video.requestVideoFrameCallback(tick);
    });
    return {times, width: video.videoWidth, height: video.videoHeight,
            webrtc: video.srcObject instanceof MediaStream,
            decoded: video.getVideoPlaybackQuality().totalVideoFrames};
}"""


async def test_watch_page_plays_real_video_over_webrtc_and_over_hls(
        make_services: Any, tmp_path: Any, browser: Any) -> None:
    """A real publisher (aiortc, H.264 and Opus) on a real server; one watch page plays it over
    WebRTC, another, whose browser offers VP8 only, is refused with 422 unsupported_codec and
    plays the real LL-HLS output through hls.js (or the browser's own player). Frames are
    counted as the page paints them (requestVideoFrameCallback)."""
    from tests.media.test_whip_whep import HEIGHT, WIDTH, new_stream, publish

    services = make_services(media_grace_s=0.5, data_dir=str(tmp_path))
    async with ApiClient.serving(create_app(services)) as api:
        stream_id, key, _ = await new_stream(api)
        publisher, _ = await publish(api, stream_id, key, video_codec="H264")
        try:
            url = str(api.client.make_url(f"/watch/{stream_id}"))
            page = await browser.new_page()
            errors = page_errors(page)
            whep: list[int] = []
            page.on("response", lambda r: whep.append(r.status) if "/whep/" in r.url else None)
            await page.goto(url)
            player = page.locator("#player")
            await expect(player).to_have_attribute("data-state", "playing", timeout=WAIT_MS)
            seen = await page.evaluate(COUNT_FRAMES, 30)
            assert seen["webrtc"] is True
            assert (seen["width"], seen["height"]) == (WIDTH, HEIGHT)
            assert seen["times"] == sorted(seen["times"]) and seen["times"][-1] > seen["times"][0]
            assert seen["decoded"] >= 30
            assert whep == [201]

            hls_page = await browser.new_page()
            hls_errors = page_errors(hls_page)
            refused: list[Any] = []

            async def on_response(response: Any) -> None:
                if "/whep/" in response.url and response.request.method == "POST":
                    refused.append((response.status, (await response.json())["error"]["code"]))

            hls_page.on("response", on_response)
            await hls_page.add_init_script("window.livecoreVideoCodecs = ['video/VP8'];")
            await hls_page.goto(url)
            hls_player = hls_page.locator("#player")
            await expect(hls_player).to_have_attribute("data-state", "hls", timeout=WAIT_MS)
            seen = await hls_page.evaluate(COUNT_FRAMES, 30)
            assert refused == [(422, "unsupported_codec")]
            assert seen["webrtc"] is False
            assert (seen["width"], seen["height"]) == (WIDTH, HEIGHT)
            assert seen["times"] == sorted(seen["times"]) and seen["times"][-1] > seen["times"][0]
            note = await hls_page.locator("#player-note").text_content()
            assert note is not None and "Playing over HLS" in note
            assert errors == [] and hls_errors == []
        finally:
            await publisher.close()
