"""The streamed CSV export when the database fails mid-stream: the client must notice.

A large journal (80,000 entries) in a database of the test's own; the client reads the first
part of the export, the export's PostgreSQL backend is terminated from another connection
(``pg_terminate_backend``), then the client reads on. The status was 200 long ago, so what
tells the client is the body: it ends with ``# export incomplete`` and the connection is cut
before the chunked encoding's last chunk, which HTTP clients (aiohttp, curl, Chromium's
fetch on the finance page) report as an error.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
import subprocess
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
from playwright.async_api import async_playwright, expect

from gateway.app import create_app
from gateway.finance_api import INCOMPLETE_MARKER
from gateway.services import Services
from ledger.batcher import grant
from livecore.accounts import Role
from livecore.settings import Secret, Settings
from tests.hub.test_finance_page import WAIT_MS, logged_in_context, page_errors
from tests.support import CHROMIUM_ARGS, ApiClient, chromium_path

TRANSFERS = 40_000  # two entries each
BATCH = 5_000


@pytest.fixture
async def big_journal(fresh_database: str, settings: Settings,
                      backend) -> AsyncIterator[tuple[ApiClient, str, asyncpg.Pool]]:
    """(client of a server on that database, a finance token, an admin pool)."""
    own = dataclasses.replace(settings, database_url=Secret(fresh_database))
    services = await Services.connect(own, database_url=fresh_database,
                                      redis_url=backend.redis_url)
    admin = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
    try:
        async with ApiClient.serving(create_app(services)) as api:
            user, token = await api.new_user()
            await services.accounts.set_roles(user["id"], {Role.FINANCE}, actor_id=None,
                                              reason="t", now=dt.datetime.now(dt.UTC))
            await grant(admin, grant_id=uuid.uuid4(), user_id=uuid.UUID(user["id"]), coins=1,
                        memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
            wallet = await admin.fetchval(
                "SELECT id FROM ledger_accounts WHERE kind = 'wallet' AND owner_id = $1",
                uuid.UUID(user["id"]))
            promotions = await admin.fetchval(
                "SELECT id FROM ledger_accounts WHERE kind = 'promotions'")
            for first in range(1, TRANSFERS + 1, BATCH):
                last = min(first + BATCH - 1, TRANSFERS)
                await admin.execute(
                    "INSERT INTO ledger_transfers (id, kind, memo, created_at)"
                    " SELECT md5('bulk' || i)::uuid, 'grant', 'bulk', now()"
                    " FROM generate_series($1::int, $2::int) AS i", first, last)
                # Each transfer's two legs in one statement (the balance trigger checks it).
                await admin.execute(
                    "INSERT INTO ledger_entries (transfer_id, account_id, amount)"
                    " SELECT md5('bulk' || i)::uuid, leg.account, leg.amount"
                    " FROM generate_series($1::int, $2::int) AS i,"
                    " (VALUES ($3::bigint, 1::bigint), ($4::bigint, -1::bigint))"
                    " AS leg(account, amount)", first, last, wallet, promotions)
                # Statistics, so the balance trigger's query uses the transfer index.
                await admin.execute("ANALYZE ledger_entries")
            yield api, token, admin
    finally:
        await admin.close()
        await services.close()


async def _terminate_export(admin: asyncpg.Pool) -> int:
    """Terminate the backend that runs the export's cursor; returns how many."""
    for _ in range(100):
        terminated = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state <> 'idle' AND query LIKE '%FROM ledger_entries e%'")
        if terminated:
            return int(terminated)
        await asyncio.sleep(0.05)
    return 0


async def test_a_whole_export_ends_cleanly(big_journal) -> None:
    api, token, _ = big_journal
    response = await api.client.get("/api/v1/finance/journal.csv",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    text = await response.text()  # raises if the body were cut short
    rows = list(csv.reader(io.StringIO(text)))
    assert len(rows) == 1 + 2 * TRANSFERS + 2  # header, the bulk legs, the first grant's
    assert INCOMPLETE_MARKER not in text


async def test_a_database_failure_mid_export_is_visible_to_the_client(big_journal) -> None:
    api, token, admin = big_journal
    received = bytearray()
    async with api.client.get("/api/v1/finance/journal.csv",
                              headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        received += await response.content.readexactly(64 * 1024)
        # The server is now blocked writing (we stopped reading), in the middle of the export.
        assert await _terminate_export(admin) == 1
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in response.content.iter_any():
                received += chunk
    lines = received.decode().splitlines()
    assert lines[0].startswith("entry_id,")
    # aiohttp raises as soon as it sees the cut, dropping what it buffered but had not handed
    # over yet, so the marker line may or may not be among what we read (curl, below, keeps
    # every byte). Either way, fewer rows than the journal holds arrived.
    if lines[-1].startswith(INCOMPLETE_MARKER):
        lines.pop()
    assert 0 < len(lines) - 1 < 2 * TRANSFERS


async def test_curl_reports_an_export_cut_short(big_journal) -> None:
    """What an operator's script sees: curl's exit status 18 (partial file)."""
    api, token, admin = big_journal
    url = str(api.client.make_url("/api/v1/finance/journal.csv"))
    # --limit-rate keeps the export in flight long enough to cut it.
    curl = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--limit-rate", "200k", "-H",
        f"Authorization: Bearer {token}", url, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert curl.stdout is not None
    first = await curl.stdout.readexactly(16 * 1024)
    assert await _terminate_export(admin) == 1
    rest, err = await curl.communicate()
    assert curl.returncode == 18, err  # CURLE_PARTIAL_FILE
    assert (first + rest).decode().splitlines()[-1].startswith(INCOMPLETE_MARKER)


@pytest.mark.e2e
async def test_the_finance_page_says_an_export_was_cut_short(big_journal) -> None:
    """A browser's fetch fails on the cut body; the page says so and offers no file."""
    api, token, admin = big_journal
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   args=CHROMIUM_ARGS)
        try:
            context = await logged_in_context(browser, token)
            page = await context.new_page()
            errors = page_errors(page)
            await page.goto(str(api.client.make_url("/finance")))
            await expect(page.locator("#journal-status")).to_contain_text(
                "Showing", timeout=WAIT_MS)
            # A slow line, so the export is still in flight when its backend is terminated.
            cdp = await context.new_cdp_session(page)
            await cdp.send("Network.enable")
            await cdp.send("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": 256 * 1024,
                "uploadThroughput": -1})
            await page.click("#csv-button")
            assert await _terminate_export(admin) == 1
            await expect(page.locator("#journal-status")).to_contain_text(
                "cut short", timeout=WAIT_MS)
            await expect(page.locator("#csv-link")).to_be_hidden()
            assert errors == []
            await context.close()
        finally:
            await browser.close()
