"""The home page in a real Chromium (Debian's, driven by Playwright)."""

import datetime as dt

import pytest
from playwright.async_api import async_playwright

from gateway.app import create_app
from livecore.streams import StreamEvent
from tests.support import CHROMIUM_ARGS, ApiClient, chromium_path

pytestmark = pytest.mark.e2e

async def test_home_page_lists_live_streams_safely(services):
    async with ApiClient.serving(create_app(services)) as api:
        _, token = await api.new_creator()
        hostile = '<img src=x onerror="document.title=\'pwned\'"> Cooking'
        _, stream = await api.request("POST", "/api/v1/streams", token=token,
                                      json={"title": hostile})
        await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
        _, quiet_token = await api.new_creator()
        _, not_live = await api.request("POST", "/api/v1/streams", token=quiet_token,
                                        json={"title": "Not live yet"})
        url = str(api.client.make_url("/"))

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(url)
                item = page.locator(f'li[data-stream-id="{stream["id"]}"]')
                await item.wait_for(timeout=10_000)
                assert await item.locator(".title").text_content() == " ".join(hostile.split())
                assert await page.locator("li img").count() == 0  # shown as text, not HTML
                assert await page.title() == "Livecore: live now"
                assert await page.locator(f'li[data-stream-id="{not_live["id"]}"]').count() == 0
                assert await page.locator("#status").get_attribute("data-state") == "loaded"
                assert errors == []
            finally:
                await browser.close()
