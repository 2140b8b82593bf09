"""The finance page in a real Chromium: reconciliation, statement chart, journal, CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from gateway.services import Services
from ledger.reconciler import Reconciler, lock_key
from tests.hub.conftest import Node, send_gift
from tests.support import CHROMIUM_ARGS, PASSWORD, chromium_path

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000
async def logged_in_context(browser: Browser, token: str | None) -> BrowserContext:
    context = await browser.new_context(accept_downloads=True,
                                        viewport={"width": 1280, "height": 900})
    if token is not None:
        await context.add_init_script(
            f"localStorage.setItem('livecore.token', {json.dumps(token)});")
    return context


def page_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    return errors


async def test_finance_page_shows_reconciliation_statement_journal_and_csv(
        node: Node, economy: dict[str, str], tmp_path: Path, services: Services) -> None:
    api, room = node.api, economy["stream"]
    # A reconciliation pass, as the worker runs it; the page shows its report.
    prefix = services.settings.redis_prefix
    await services.redis.delete(lock_key(prefix))
    last_pass = await Reconciler(services.pool, services.redis, prefix=prefix, interval_s=60,
                                 clock=services.clock, confirm_delay_s=0.05).run_pass()
    assert last_pass is not None
    for gift, quantity in (("heart", 2), ("rose", 3), ("rose", 1)):
        await send_gift(api, economy["viewer"], room, gift, quantity)
    response, statement = await api.request(
        "GET", f"/api/v1/finance/streams/{room}/statement", token=economy["admin"])
    assert response.status == 200, statement
    assert statement["gross_coins"] == 14 and statement["gifts"] == 3
    url = str(api.client.make_url(f"/finance?stream={room}"))

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   args=CHROMIUM_ARGS)
        try:
            context = await logged_in_context(browser, economy["admin"])
            page = await context.new_page()
            errors = page_errors(page)
            page_response = await page.goto(url)
            assert page_response is not None
            assert page_response.headers["cache-control"] == "no-cache"
            await expect(page.locator("#login-form")).to_be_hidden()

            # Reconciliation: every check passes.
            await expect(page.locator("#recon-status")).to_have_attribute(
                "data-state", "ok", timeout=WAIT_MS)
            checks = page.locator("#recon-checks .check")
            assert await checks.count() > 0
            for badge in await checks.locator(".badge").all_text_contents():
                assert badge == "ok"
            await expect(page.locator("#recon-last")).to_contain_text(
                "Last reconciliation pass: ", timeout=WAIT_MS)
            await expect(page.locator("#recon-last")).to_contain_text(
                f"{last_pass.streams_checked} stream(s) checked, "
                f"{last_pass.differences_found} difference(s) found")

            # Balances: one total per account kind (eight, with money in and out's sales, debt
            # and payout accounts), plus the sum.
            await expect(page.locator("#balances tbody tr")).to_have_count(9, timeout=WAIT_MS)

            # The statement of the stream named in the URL, and its per-minute chart.
            await expect(page.locator("#statement")).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#statement-stream")).to_have_value(room)
            await expect(page.locator("#st-gross")).to_have_text("14")
            await expect(page.locator("#st-gifts")).to_have_text("3")
            await expect(page.locator("#st-senders")).to_have_text("1")
            await expect(page.locator("#st-share")).to_have_text(
                str(statement["creator_share"]))
            await expect(page.locator("#st-cut")).to_have_text(str(statement["platform_cut"]))
            bars = page.locator("#chart svg rect.bar")
            await expect(bars).to_have_count(len(statement["per_minute"]))
            tooltips = await bars.locator("title").all_text_contents()
            assert all("coins" in t for t in tooltips)
            assert sum(int(c) for c in await bars.evaluate_all(
                "rects => rects.map(r => r.dataset.coins)")) == 14

            # The journal: the latest entries, the gift debits of the viewer's wallet among them.
            debits = page.locator(
                '#journal tr.entry[data-account-kind="wallet"][data-gift-id]')
            await expect(debits.first).to_be_visible(timeout=WAIT_MS)
            amounts = await debits.evaluate_all("rows => rows.map(r => Number(r.dataset.amount))")
            assert amounts and all(a < 0 for a in amounts)

            # Filtered by the stream: only entries of its gift batches.
            await page.fill("#journal-stream", room)
            await page.click("#journal-form button[type=submit]")
            await expect(page.locator("#journal-status")).to_contain_text(
                "Showing", timeout=WAIT_MS)

            # Download CSV: fetched with the token, handed over as a blob download.
            async with page.expect_download(timeout=WAIT_MS) as download_info:
                await page.click("#csv-button")
            download = await download_info.value
            assert download.suggested_filename == "livecore-journal.csv"
            path = await download.path()
            text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
            assert text.splitlines()[0].startswith("entry_id,")
            rows = list(csv.DictReader(io.StringIO(text)))
            assert rows and all(r["transfer_kind"] == "gift_batch" for r in rows)
            # Filtered by stream: the senders' debits for this stream's gifts.
            assert sorted(-int(r["amount"]) for r in rows) == [1, 3, 10]
            assert all(r["gift_id"] and r["stream_id"] == room for r in rows)
            await expect(page.locator("#csv-link")).to_be_visible()

            await page.screenshot(path=str(tmp_path / "finance.png"), full_page=True)
            assert errors == []
            await context.close()

            # A plain viewer: told in plain words that the finance role is missing.
            context = await logged_in_context(browser, economy["viewer"])
            page = await context.new_page()
            errors = page_errors(page)
            await page.goto(url)
            await expect(page.locator("#access-error")).to_contain_text(
                "does not have the finance role", timeout=WAIT_MS)
            await expect(page.locator("#finance")).to_be_hidden()
            await expect(page.locator("#logout")).to_be_visible()
            assert errors == []
            await context.close()

            # No token: the login form; logging in as someone without the role says so too.
            user = await api.register()
            context = await logged_in_context(browser, None)
            page = await context.new_page()
            errors = page_errors(page)
            await page.goto(url)
            await expect(page.locator("#login-form")).to_be_visible(timeout=WAIT_MS)
            await expect(page.locator("#finance")).to_be_hidden()
            await page.fill("#login-username", user["username"])
            await page.fill("#login-password", PASSWORD)
            await page.click("#login-submit")
            await expect(page.locator("#access-error")).to_contain_text(
                "does not have the finance role", timeout=WAIT_MS)
            assert await page.evaluate("localStorage.getItem('livecore.token')")
            assert errors == []
            await context.close()
        finally:
            await browser.close()
