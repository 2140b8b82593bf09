"""The go-live page in a real Chromium: the creator publishes the fake camera over WHIP, a
viewer's watch page plays it over WHEP, another (whose browser lacks the stream's codec) over
the real HLS output, the room shows the stream going live, chat and gifts, and Stop ends the
broadcast.

The server (aiortc) gathers no ICE candidates on 127.0.0.1, so Chromium must offer its real
interface address: --disable-features=WebRtcHideLocalIpsWithMdns. http://127.0.0.1:PORT is a
secure origin, so getUserMedia works there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Response, async_playwright, expect

from gateway.media import MEDIA_KEY, MediaHub
from ledger.batcher import grant
from livecore.ids import StreamId
from tests.e2e.test_watch_page import COUNT_FRAMES
from tests.support import (
    CHROMIUM_ARGS,
    PASSWORD,
    ApiClient,
    chromium_path,
    page_errors,
    stream_state,
    until_state,
)

pytestmark = pytest.mark.e2e

WAIT_MS = 30_000  # generous: real sockets, real ICE, real encoders
MEDIA_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]
HOSTILE = "<img src=x onerror=alert(1)>"

FRAMES = "document.getElementById('player').getVideoPlaybackQuality().totalVideoFrames"
# The codec of the video the watch page receives over WHEP (its `viewer` is watch.js's).
RECEIVED_CODEC = """async () => {
  const stats = await viewer.pc.getStats();
  for (const report of stats.values()) {
    if (report.type === "inbound-rtp" && report.kind === "video" && report.codecId) {
      return stats.get(report.codecId).mimeType;
    }
  }
  return null;
}"""
PLAYER_STATE = """() => {
  const video = document.getElementById("player");
  const ranges = [];
  for (let i = 0; i < video.buffered.length; i++) {
    ranges.push([video.buffered.start(i), video.buffered.end(i)]);
  }
  return {note: document.getElementById("player-note").textContent, paused: video.paused,
          readyState: video.readyState, currentTime: video.currentTime, buffered: ranges,
          error: video.error && video.error.message, native: !hls};
}"""
# Makes the page's browser answer `canPlayType` for HLS as told (%s: a JavaScript string).
SAYS_HLS = """{
  const canPlayType = HTMLMediaElement.prototype.canPlayType;
  HTMLMediaElement.prototype.canPlayType = function (type) {
    return type === "application/vnd.apple.mpegurl" ? %s : canPlayType.call(this, type);
  };
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path(), args=[*CHROMIUM_ARGS, *MEDIA_ARGS])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_the_creator_goes_live_and_a_viewer_watches_over_whep(
        media_api: ApiClient, browser: Browser, codec: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api = media_api
    media: MediaHub = api.client.app[MEDIA_KEY]
    services = media.services
    if codec == "VP8":  # the server prefers H.264 (which Chromium then sends) unless told
        monkeypatch.setattr("gateway.media.VIDEO_CODECS", ("video/VP8",))
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Camera test"})
    room = stream["id"]
    viewer, viewer_token = await api.new_user()
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=50, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    await services.gifts.seed_catalogue()

    # The viewer opens the watch page first: nothing to play yet, it waits.
    watcher = await (await browser.new_context()).new_page()
    watcher_errors = page_errors(watcher)
    await watcher.goto(str(api.client.make_url(f"/watch/{room}")))
    await expect(watcher.locator("#player-note")).to_have_attribute(
        "data-state", "waiting", timeout=WAIT_MS)
    await expect(watcher.locator("#state")).to_have_attribute("data-state", "created")

    # The creator logs in on the go-live page; the camera preview starts.
    studio = await (await browser.new_context()).new_page()
    studio_errors = page_errors(studio)
    page_response = await studio.goto(str(api.client.make_url(f"/live/{room}")))
    assert page_response is not None and page_response.headers["cache-control"] == "no-cache"
    status = studio.locator("#broadcast-status")
    await expect(status).to_have_attribute("data-state", "login", timeout=WAIT_MS)
    await expect(studio.locator("#start")).to_be_disabled()
    await studio.fill("#login-username", creator["username"])
    await studio.fill("#login-password", PASSWORD)
    await studio.click("#login-submit")
    await expect(status).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    # Functions, not expressions: Playwright evals a string expression in the page, which the
    # pages' Content-Security-Policy (no 'unsafe-eval') refuses.
    await studio.wait_for_function(
        "() => document.getElementById('preview').videoWidth > 0", timeout=WAIT_MS)

    # Start: WHIP, and the stream goes live (the room says so on both pages).
    await studio.click("#start")
    await expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    await expect(studio.locator("#stop")).to_be_enabled()
    await expect(studio.locator("#start")).to_be_disabled()
    await expect(studio.locator("#state")).to_have_attribute("data-state", "live")
    assert await stream_state(api, room) == "live"
    broadcast = media.broadcasts[StreamId(uuid.UUID(room))]
    assert broadcast.publisher is not None
    assert broadcast.video_codec == codec

    # The watch page retried as the stream went live, and decodes frames, on and on.
    await expect(watcher.locator("#state")).to_have_attribute(
        "data-state", "live", timeout=WAIT_MS)
    await expect(watcher.locator("#player-note")).to_have_attribute(
        "data-state", "playing", timeout=WAIT_MS)
    await watcher.wait_for_function(f"() => {FRAMES} >= 30", timeout=WAIT_MS)
    seen = await watcher.evaluate(FRAMES)
    await watcher.wait_for_function(f"() => {FRAMES} >= {seen + 30}", timeout=WAIT_MS)
    assert await watcher.evaluate("document.getElementById('player').videoWidth") > 0
    assert await watcher.evaluate(RECEIVED_CODEC) == f"video/{codec}"
    assert len(broadcast.viewers) == 1

    # A browser that cannot take the stream's codec over WebRTC (its offer names only the
    # other one) is refused with 422 unsupported_codec and plays the real LL-HLS output.
    other = "H264" if codec == "VP8" else "VP8"
    hls_watcher = await (await browser.new_context()).new_page()
    hls_errors = page_errors(hls_watcher)
    refused: list[tuple[int, str]] = []

    async def on_response(response: Response) -> None:
        if "/whep/" in response.url and response.request.method == "POST":
            refused.append((response.status, (await response.json())["error"]["code"]))

    hls_watcher.on("response", on_response)
    await hls_watcher.add_init_script(f"window.livecoreVideoCodecs = ['video/{other}'];")
    await hls_watcher.goto(str(api.client.make_url(f"/watch/{room}")))
    await expect(hls_watcher.locator("#player-note")).to_have_attribute(
        "data-state", "hls", timeout=WAIT_MS)
    try:
        async with asyncio.timeout(2 * WAIT_MS / 1000):
            seen_hls = await hls_watcher.evaluate(COUNT_FRAMES, 30)
    except TimeoutError:
        state = await hls_watcher.evaluate(PLAYER_STATE)
        raise AssertionError(f"the HLS page painted no 30 frames: {state}") from None
    assert refused == [(422, "unsupported_codec")]
    assert seen_hls["webrtc"] is False and seen_hls["width"] > 0
    assert seen_hls["times"][-1] > seen_hls["times"][0]  # the picture moves on
    await hls_watcher.close()
    assert hls_errors == []
    assert len(broadcast.viewers) == 1  # HLS takes no WebRTC session

    # The go-live page shows the room: chat (as text, never markup) and gifts.
    response, body = await api.request("POST", "/api/v1/gifts", token=viewer_token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": "heart", "quantity": 2})
    assert response.status == 201, body
    gift = studio.locator("#messages .gift")
    await expect(gift).to_contain_text(viewer["username"], timeout=WAIT_MS)
    await expect(gift).to_contain_text(f"2 × {body['name']}")
    await watcher.locator("#messages .gift").wait_for(timeout=WAIT_MS)
    chat = studio.locator("#chat-input")
    await expect(chat).to_be_visible(timeout=WAIT_MS)
    await chat.fill(HOSTILE)
    await chat.press("Enter")
    await expect(watcher.locator("#messages .message .text")).to_have_text(
        [HOSTILE], timeout=WAIT_MS)
    await expect(studio.locator("#messages .message .text")).to_have_text([HOSTILE])
    assert await studio.locator("#messages img").count() == 0
    assert await watcher.locator("#messages img").count() == 0

    # Stop: the session is deleted at once, the stream ends after the grace period, and the
    # watch page says so.
    await studio.click("#stop")
    await expect(status).to_have_attribute("data-state", "stopped", timeout=WAIT_MS)
    assert broadcast.publisher is None
    await until_state(api, room, "ended")
    await expect(status).to_have_attribute("data-state", "ended", timeout=WAIT_MS)
    await expect(studio.locator("#start")).to_be_disabled()
    await expect(watcher.locator("#player-note")).to_have_attribute(
        "data-state", "ended", timeout=WAIT_MS)
    assert not media.sessions

    assert studio_errors == []
    assert watcher_errors == []


async def test_the_go_live_page_refuses_others_and_shows_the_servers_errors(
        media_api: ApiClient, browser: Browser) -> None:
    api = media_api
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Not yours"})
    other, _ = await api.new_user()
    page = await (await browser.new_context()).new_page()
    errors = page_errors(page)
    await page.goto(str(api.client.make_url(f"/live/{stream['id']}")))
    await page.fill("#login-username", other["username"])
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    status = page.locator("#broadcast-status")
    await expect(status).to_have_attribute("data-state", "not-owner", timeout=WAIT_MS)
    await expect(page.locator("#start")).to_be_disabled()
    await expect(page.locator("#title")).to_have_text("Not yours")

    # The owner, whose WHIP offer is refused (as if another publisher were connected).
    await page.click("#logout")
    await expect(status).to_have_attribute("data-state", "login", timeout=WAIT_MS)
    await page.route("**/whip/**", lambda route: route.fulfill(
        status=409, content_type="application/json",
        body='{"error": {"code": "already_live", "message": "This stream already has a'
             ' publisher."}}'))
    await page.fill("#login-username", creator["username"])
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(status).to_have_attribute("data-state", "ready", timeout=WAIT_MS)
    await page.click("#start")
    await expect(status).to_have_attribute("data-state", "error", timeout=WAIT_MS)
    await expect(status).to_have_text(
        "Could not go live: This stream already has a publisher.")
    await expect(page.locator("#start")).to_be_enabled()  # to try again
    await expect(page.locator("#stop")).to_be_disabled()
    assert errors == []


async def test_the_watch_page_falls_back_to_hls_and_says_when_it_cannot(
        media_api: ApiClient, browser: Browser) -> None:
    """WHEP fails (not with stream_not_live): the page tries HLS, and says clearly when that
    is missing too (the HLS endpoint and hls.js may not be installed)."""
    api = media_api
    _, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "No WebRTC here"})
    room = stream["id"]
    page = await (await browser.new_context()).new_page()
    errors = page_errors(page)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.route("**/whep/**", lambda route: route.fulfill(
        status=503, content_type="application/json",
        body='{"error": {"code": "service_unavailable", "message": "Media is down."}}'))
    await page.route("**/hls/**", lambda route: route.fulfill(
        status=404, content_type="application/json",
        body='{"error": {"code": "not_found", "message": "No HLS here."}}'))
    await page.goto(str(api.client.make_url(f"/watch/{room}")))
    note = page.locator("#player-note")
    await expect(note).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    await expect(note).to_contain_text("Media is down.")
    await expect(note).to_contain_text("No HLS here.")
    assert any(f"/hls/{room}/index.m3u8" in url for url in requested)

    # A playlist that the browser's own HLS player cannot play (Chromium 156 has one; any
    # browser says it has one here).
    await page.add_init_script(SAYS_HLS % "'maybe'")
    await page.unroute("**/hls/**")
    await page.route("**/hls/**", lambda route: route.fulfill(
        status=200, content_type="application/vnd.apple.mpegurl", body="#EXTM3U\n"))
    await page.reload()
    await expect(note).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    await expect(note).to_contain_text("cannot be played")

    # A browser without native HLS, and no vendored hls.js: the page says so too.
    bare = await page.context.new_page()
    bare_errors = page_errors(bare)
    await bare.add_init_script(SAYS_HLS % "''")
    await bare.route("**/static/vendor/hls.min.js", lambda route: route.fulfill(status=404))
    await bare.route("**/whep/**", lambda route: route.fulfill(status=502, body="Bad gateway"))
    await bare.route("**/hls/**", lambda route: route.fulfill(
        status=200, content_type="application/vnd.apple.mpegurl", body="#EXTM3U\n"))
    vendored: list[str] = []
    bare.on("request", lambda request: vendored.append(request.url)
            if request.url.endswith("/static/vendor/hls.min.js") else None)
    await bare.goto(str(api.client.make_url(f"/watch/{room}")))
    bare_note = bare.locator("#player-note")
    await expect(bare_note).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    await expect(bare_note).to_contain_text("502")
    await expect(bare_note).to_contain_text("no HLS player")
    assert vendored  # it looked for hls.js
    assert bare_errors == []
    assert errors == []
