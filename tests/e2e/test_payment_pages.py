"""The money pages in a real Chromium, against a real server in test-payments mode (no Stripe
key): buying coins (/coins and the local checkout /pay/test/<id>), the debt notice, the
spending limit, the creator dashboard's chart and payouts, and the finance page's purchases,
payouts and debts sections."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from gateway.app import create_app
from gateway.services import Services
from ledger.batcher import grant
from livecore.accounts import Role
from livecore.streams import StreamEvent
from tests.support import PASSWORD, ApiClient, page_errors

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000  # generous: the pages talk to a real server over real sockets
MIN_PAYOUT_DIAMONDS = 100
UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
async def money(make_services: Any) -> AsyncIterator[tuple[ApiClient, Services]]:
    """A served app in test-payments mode, with a payout minimum small enough for a few
    gifts to reach."""
    services = make_services(payout_min_diamonds=MIN_PAYOUT_DIAMONDS)
    assert services.provider.test_mode
    async with ApiClient.serving(create_app(services)) as api:
        yield api, services


async def open_page(browser: Browser, token: str | None) -> tuple[BrowserContext, Page,
                                                                  list[str]]:
    """A fresh context (logged in with ``token`` if given), a page, and the list its uncaught
    errors and dialogs (an injected ``alert`` would open one) are recorded in."""
    context = await browser.new_context(accept_downloads=True, locale="en-US",
                                        viewport={"width": 1280, "height": 900})
    if token is not None:
        await context.add_init_script(
            f"localStorage.setItem('livecore.token', {json.dumps(token)});")
    page = await context.new_page()
    return context, page, page_errors(page)


def url(api: ApiClient, path: str) -> str:
    return str(api.client.make_url(path))


async def wallet(api: ApiClient, token: str) -> dict[str, Any]:
    response, body = await api.request("GET", "/api/v1/me/wallet", token=token)
    assert response.status == 200, body
    return dict(body)


async def paid_purchase(api: ApiClient, token: str, package: str = "coins-70",
                        outcome: str = "pay") -> dict[str, Any]:
    """A purchase made and settled through the API, as the pages do it."""
    response, purchase = await api.request("POST", "/api/v1/purchases", token=token, json={
        "purchase_id": str(uuid.uuid4()), "package": package, "method": "checkout"})
    assert response.status == 201, purchase
    response, purchase = await api.request(
        "POST", f"/api/v1/test-payments/{purchase['purchase_id']}", token=token,
        json={"outcome": outcome})
    assert response.status == 200, purchase
    return dict(purchase)


async def live_stream(api: ApiClient, services: Services) -> tuple[dict[str, Any], str, str]:
    """A creator (account, token) and their live stream's id."""
    creator, token = await api.new_creator()
    response, stream = await api.request("POST", "/api/v1/streams", token=token,
                                         json={"title": "Payday"})
    assert response.status == 201, stream
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    return creator, token, stream["id"]


async def send_gift(api: ApiClient, token: str, stream: str, gift: str, quantity: int) -> None:
    response, body = await api.request("POST", "/api/v1/gifts", token=token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": stream, "gift": gift, "quantity": quantity})
    assert response.status == 201, body


async def granted_viewer(api: ApiClient, services: Services, coins: int) -> tuple[str, str]:
    viewer, token = await api.new_user()
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer["id"]),
                coins=coins, memo="test", actor_id=None, now=dt.datetime.now(dt.UTC))
    return viewer["id"], token


async def refund(services: Services, purchase: dict[str, Any]) -> None:
    """Stripe's ``charge.refunded`` for the whole purchase, handed to the same processing as
    a verified webhook (test-payments mode takes no webhooks over HTTP)."""
    amount = purchase["amount_minor"]
    status = await services.purchases.handle_event({
        "id": f"evt_test_{uuid.uuid4().hex}", "object": "event", "type": "charge.refunded",
        "livemode": False, "created": int(dt.datetime.now(dt.UTC).timestamp()),
        "data": {"object": {
            "id": f"ch_test_{uuid.uuid4().hex[:24]}", "object": "charge", "amount": amount,
            "amount_refunded": amount, "currency": purchase["currency"], "refunded": True,
            "metadata": {"purchase_id": purchase["purchase_id"]}}}})
    assert status == "applied", status


async def viewer_in_debt(api: ApiClient, services: Services) -> tuple[str, str, dict[str, Any]]:
    """A viewer who bought 70 coins, gifted them all, and was refunded: owes 70 coins."""
    _, _, stream = await live_stream(api, services)
    viewer, token = await api.new_user()
    purchase = await paid_purchase(api, token)
    assert (await wallet(api, token))["coins"] == 70
    await send_gift(api, token, stream, "coffee", 7)
    assert (await wallet(api, token))["coins"] == 0
    await refund(services, purchase)
    assert (await wallet(api, token))["debt_coins"] == 70
    return viewer["id"], token, purchase


async def admin_token(api: ApiClient, services: Services) -> str:
    admin, token = await api.new_user()
    await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    return token


# -- buying coins ---------------------------------------------------------------------------------


async def test_buy_coins_in_test_mode_end_to_end(money: tuple[ApiClient, Services],
                                                 browser: Browser, tmp_path: Path) -> None:
    api, _ = money
    viewer = await api.register()
    context, page, errors = await open_page(browser, None)
    page_response = await page.goto(url(api, "/coins"))
    assert page_response is not None and page_response.status == 200

    # Logged out: the packages (public) and the login form; the wallet is not shown.
    await expect(page.locator("#test-mode")).to_have_text("TEST MODE — no real money",
                                                          timeout=WAIT_MS)
    packages = page.locator("#packages .package")
    await expect(packages).to_have_count(5, timeout=WAIT_MS)
    first = page.locator('#packages .package[data-slug="coins-70"]')
    await expect(first.locator(".package-coins")).to_have_text("70 coins")
    await expect(first.locator(".price")).to_have_text("$0.99")
    await expect(page.locator('#packages .package[data-slug="coins-3500"] .price')).to_have_text(
        "$49.99")
    await expect(page.locator("#wallet-section")).to_be_hidden()
    await page.click("#buy-coins-70")
    await expect(page.locator("#buy-error")).to_have_text("Log in to buy coins.")

    await page.fill("#login-username", viewer["username"])
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#me")).to_have_text(viewer["username"], timeout=WAIT_MS)
    await expect(page.locator("#wallet-coins")).to_have_attribute("data-value", "0",
                                                                  timeout=WAIT_MS)
    await expect(page.locator("#debt-notice")).to_be_hidden()
    await expect(page.locator("#history-status")).to_have_text(
        "You have not bought any coins yet.", timeout=WAIT_MS)

    # Buy (a double click makes one purchase): to the local checkout page, which says loudly
    # that no money moves.
    await page.dblclick("#buy-coins-70")
    await page.wait_for_url(re.compile(rf"/pay/test/{UUID_PATTERN}$"), timeout=WAIT_MS)
    purchase_id = page.url.rsplit("/", 1)[1]
    assert await page.evaluate(
        "Object.keys(sessionStorage).filter(k => k.startsWith('livecore.purchase.'))") == []
    await expect(page.locator("#test-banner")).to_have_text(
        "TEST MODE — no real money is charged")
    await expect(page.locator("#pay-status")).to_have_attribute("data-state", "pending",
                                                                timeout=WAIT_MS)
    await expect(page.locator("#pay-package")).to_have_text("coins-70")
    await expect(page.locator("#pay-coins")).to_have_text("70")
    await expect(page.locator("#pay-amount")).to_have_text("$0.99")
    await page.screenshot(path=str(tmp_path / "paytest.png"), full_page=True)

    # Pay: back to /coins, which shows what the server says, then the new wallet.
    await page.click("#pay")
    await page.wait_for_url(re.compile(rf"/coins\?purchase={purchase_id}$"), timeout=WAIT_MS)
    status = page.locator("#return-status")
    await expect(status).to_have_attribute("data-state", "paid", timeout=WAIT_MS)
    await expect(status).to_have_text("Payment received: 70 coins credited to your account.")
    await expect(page.locator("#return-detail")).to_have_text("70 coins for $0.99")
    await expect(page.locator("#wallet-coins")).to_have_attribute("data-value", "70",
                                                                  timeout=WAIT_MS)
    await expect(page.locator("#wallet-coins")).to_have_text("70")
    row = page.locator(f'#purchases tr.purchase[data-purchase-id="{purchase_id}"]')
    await expect(row).to_have_attribute("data-status", "paid", timeout=WAIT_MS)
    await expect(row.locator(".status")).to_have_text("Paid")
    await expect(page.locator("#spend-spent")).to_have_attribute("data-value", "99",
                                                                 timeout=WAIT_MS)

    token = await page.evaluate("localStorage.getItem('livecore.token')")
    assert (await wallet(api, token))["coins"] == 70
    response, mine = await api.request("GET", "/api/v1/me/purchases", token=token)
    assert [p["purchase_id"] for p in mine["purchases"]] == [purchase_id], mine
    # The test page cannot pay a purchase twice: opened again, it says how it ended.
    await page.goto(url(api, f"/pay/test/{purchase_id}"))
    await expect(page.locator("#pay-status")).to_have_attribute("data-state", "paid",
                                                                timeout=WAIT_MS)
    await expect(page.locator("#pay")).to_be_disabled()
    await page.goto(url(api, "/coins"))
    await expect(page.locator("#wallet-coins")).to_have_attribute("data-value", "70",
                                                                  timeout=WAIT_MS)
    await page.screenshot(path=str(tmp_path / "coins.png"), full_page=True)
    assert errors == []
    await context.close()


async def test_declined_payment_shows_failed_and_no_coins(money: tuple[ApiClient, Services],
                                                          browser: Browser) -> None:
    api, _ = money
    _, token = await api.new_user()
    context, page, errors = await open_page(browser, token)
    # A Buy whose answer was lost (the id is still in sessionStorage): the retry reuses it.
    retried = str(uuid.uuid4())
    await context.add_init_script(
        f"sessionStorage.setItem('livecore.purchase.coins-350', {json.dumps(retried)});")
    await page.goto(url(api, "/coins"))
    await expect(page.locator("#packages .package")).to_have_count(5, timeout=WAIT_MS)
    await page.click("#buy-coins-350")
    await page.wait_for_url(re.compile(rf"/pay/test/{retried}$"), timeout=WAIT_MS)
    await expect(page.locator("#pay-amount")).to_have_text("$4.99", timeout=WAIT_MS)
    await expect(page.locator("#decline")).to_be_enabled(timeout=WAIT_MS)

    await page.click("#decline")
    await page.wait_for_url(re.compile(rf"/coins\?purchase={retried}$"), timeout=WAIT_MS)
    status = page.locator("#return-status")
    await expect(status).to_have_attribute("data-state", "failed", timeout=WAIT_MS)
    await expect(status).to_contain_text("did not go through. No coins were added")
    await expect(page.locator("#wallet-coins")).to_have_attribute("data-value", "0",
                                                                  timeout=WAIT_MS)
    row = page.locator(f'#purchases tr.purchase[data-purchase-id="{retried}"]')
    await expect(row).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    assert (await wallet(api, token))["coins"] == 0
    response, purchase = await api.request("GET", f"/api/v1/purchases/{retried}", token=token)
    assert response.status == 200 and purchase["status"] == "failed", purchase

    # A purchase id that is not this account's: said plainly, no polling forever.
    await page.goto(url(api, f"/coins?purchase={uuid.uuid4()}"))
    await expect(status).to_have_attribute("data-state", "unknown", timeout=WAIT_MS)
    assert errors == []
    await context.close()


async def test_coins_page_shows_the_debt(money: tuple[ApiClient, Services],
                                         browser: Browser) -> None:
    api, services = money
    _, token, purchase = await viewer_in_debt(api, services)
    context, page, errors = await open_page(browser, token)
    await page.goto(url(api, "/coins"))
    notice = page.locator("#debt-notice")
    await expect(notice).to_be_visible(timeout=WAIT_MS)
    await expect(notice).to_have_attribute("data-owed", "70")
    await expect(notice).to_contain_text("You owe 70 coins.")
    await expect(notice).to_contain_text("cannot send gifts")
    await expect(page.locator("#wallet-coins")).to_have_attribute("data-value", "0")
    row = page.locator(f'#purchases tr.purchase[data-purchase-id="{purchase["purchase_id"]}"]')
    await expect(row).to_have_attribute("data-status", "refunded", timeout=WAIT_MS)
    await expect(row.locator(".notes")).to_have_text("$0.99 refunded; 70 coins taken back")
    # A notice is red: it must stand out.
    color = await notice.evaluate("n => getComputedStyle(n).color")
    assert color in ("rgb(192, 24, 42)", "rgb(255, 138, 138)"), color
    await expect(page.locator("#settle")).to_be_hidden()  # nothing in the wallet to pay with
    # Granted coins pay part of it from the page.
    viewer_id = (await api.request("GET", "/api/v1/me", token=token))[1]["id"]
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer_id), coins=30,
                memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
    await page.reload()
    await page.locator("#settle-debt").click()
    await expect(page.locator("#settle-status")).to_have_text("Paid 30 coins of your debt.",
                                                              timeout=WAIT_MS)
    await expect(notice).to_have_attribute("data-owed", "40", timeout=WAIT_MS)
    await expect(page.locator("#settle")).to_be_hidden()
    assert (await wallet(api, token)) == {"coins": 0, "diamonds": 0, "debt_coins": 40}
    assert errors == []
    await context.close()


async def test_spending_limit_form(money: tuple[ApiClient, Services], browser: Browser) -> None:
    api, _ = money
    _, token = await api.new_user()
    context, page, errors = await open_page(browser, token)
    await page.goto(url(api, "/coins"))
    cap = page.locator("#spend-cap")
    await expect(cap).to_have_text("$500.00 (the platform's limit)", timeout=WAIT_MS)
    await expect(page.locator("#spend-spent")).to_have_text("$0.00")
    await expect(page.locator("#spend-own")).to_contain_text("None")
    await expect(page.locator("#spend-pending")).to_be_hidden()
    await expect(page.locator("#spend-cooldown")).to_contain_text(
        "At most 5 purchases in 10 minutes")

    # Lowering applies at once.
    await page.fill("#limit-input", "20")
    await page.click("#limit-save")
    await expect(page.locator("#spend-own")).to_have_text("$20.00", timeout=WAIT_MS)
    await expect(cap).to_have_text("$20.00 (your own limit)")
    await expect(page.locator("#limit-result")).to_have_text(
        "Saved. Your daily limit is now $20.00.")
    response, spending = await api.request("GET", "/api/v1/me/spending", token=token)
    assert response.status == 200 and spending["own_cap_minor"] == 2000, spending

    # A purchase over it is refused, with the server's reason shown.
    await expect(page.locator("#packages .package")).to_have_count(5, timeout=WAIT_MS)
    await page.click("#buy-coins-3500")
    buy_error = page.locator("#buy-error")
    await expect(buy_error).to_be_visible(timeout=WAIT_MS)
    await expect(buy_error).to_contain_text("Your limit is $20.00 a day")
    assert page.url.endswith("/coins")
    assert await page.evaluate(
        "Object.keys(sessionStorage).filter(k => k.startsWith('livecore.purchase.'))") == []

    # Raising waits 24 hours: shown as pending, the lower limit still applies.
    await page.fill("#limit-input", "30")
    await page.click("#limit-save")
    pending = page.locator("#spend-pending")
    await expect(pending).to_be_visible(timeout=WAIT_MS)
    await expect(pending).to_contain_text("Your limit will rise to $30.00 on")
    await expect(page.locator("#spend-own")).to_have_text("$20.00")
    await expect(page.locator("#limit-result")).to_contain_text("takes effect on")

    # Removing it waits too.
    await page.click("#limit-remove")
    await expect(pending).to_contain_text("Your limit will be removed on", timeout=WAIT_MS)
    await expect(cap).to_have_text("$20.00 (your own limit)")
    response, spending = await api.request("GET", "/api/v1/me/spending", token=token)
    assert spending["own_cap_minor"] == 2000, spending
    assert spending["pending_own_cap"]["own_cap_minor"] is None, spending

    # Nonsense is refused on the page.
    await page.fill("#limit-input", "-5")
    await page.click("#limit-save")
    await expect(page.locator("#limit-error")).to_have_text("Enter an amount of zero or more.")
    assert errors == []
    await context.close()


# -- the creator dashboard ----------------------------------------------------------------------


async def test_creator_dashboard_chart_and_payout(money: tuple[ApiClient, Services],
                                                  browser: Browser, tmp_path: Path) -> None:
    api, services = money
    creator, creator_token, stream = await live_stream(api, services)
    _, viewer_token = await granted_viewer(api, services, 1000)
    # The creator's share of a gift's price (300 and 50 coins) is half, odd coin included.
    await send_gift(api, viewer_token, stream, "coffee", 30)
    await send_gift(api, viewer_token, stream, "heart", 10)
    earned = 150 + 25
    response, earnings = await api.request("GET", "/api/v1/me/earnings", token=creator_token)
    assert response.status == 200 and earnings["available_diamonds"] == earned, earnings

    context, page, errors = await open_page(browser, creator_token)
    await page.goto(url(api, "/creator"))
    await expect(page.locator("#test-mode")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#me")).to_have_text(creator["username"], timeout=WAIT_MS)
    await expect(page.locator("#available-diamonds")).to_have_attribute(
        "data-value", str(earned), timeout=WAIT_MS)
    await expect(page.locator("#available-diamonds")).to_have_text(f"{earned} diamonds")
    await expect(page.locator("#available-money")).to_have_text("$0.87")  # 175 × 50¢ / 100, down
    await expect(page.locator("#pending-diamonds")).to_have_attribute("data-value", "0")
    await expect(page.locator("#paid-diamonds")).to_have_attribute("data-value", "0")
    await expect(page.locator("#rate")).to_contain_text("100 diamonds are worth $0.50")

    # The chart: one bar for today, its diamonds, an accessible title and axis ticks.
    bars = page.locator("#earnings-chart svg rect.bar")
    await expect(bars).to_have_count(1)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    await expect(bars.first).to_have_attribute("data-day", today)
    await expect(bars.first).to_have_attribute("data-diamonds", str(earned))
    await expect(bars.first.locator("title")).to_have_text(f"{today}: {earned} diamonds")
    await expect(page.locator("#earnings-chart svg > title")).to_have_text(
        "Diamonds earned per day")
    assert await page.locator("#earnings-chart svg text.tick").count() >= 4
    assert await page.locator("#earnings-chart svg text.empty").count() == 0

    # The payout form starts at everything available; the minimum is shown.
    await expect(page.locator("#payout-diamonds")).to_have_value(str(earned))
    await expect(page.locator("#payout-min")).to_contain_text(
        f"The minimum payout is {MIN_PAYOUT_DIAMONDS} diamonds ($0.50)")

    # Without a payout account: the server's refusal, explained.
    await page.click("#payout-submit")
    payout_error = page.locator("#payout-error")
    await expect(payout_error).to_contain_text("Save your Stripe connected account id",
                                               timeout=WAIT_MS)
    # Below the minimum: refused before asking.
    await page.fill("#payout-diamonds", "50")
    await page.click("#payout-submit")
    await expect(payout_error).to_have_text(
        f"The minimum payout is {MIN_PAYOUT_DIAMONDS} diamonds.")
    # More than available: the server says so.
    await page.fill("#payout-diamonds", str(earned + 1))
    await page.fill("#account-input", "not an account")
    await page.click("#account-save")
    await expect(page.locator("#account-error")).to_contain_text("acct_")

    await page.fill("#account-input", "acct_1TestCreator")
    await page.click("#account-save")
    await expect(page.locator("#account-error")).to_contain_text("Type your password")
    await page.fill("#account-password", "not the password")
    await page.click("#account-save")
    await expect(page.locator("#account-error")).to_have_text(
        "That is not your password, so the payout account was not changed.", timeout=WAIT_MS)
    await page.fill("#account-password", PASSWORD)
    await page.click("#account-save")
    await expect(page.locator("#account-result")).to_have_text(
        "Saved: payouts go to acct_1TestCreator.", timeout=WAIT_MS)
    await expect(page.locator("#payout-account")).to_have_text(
        "Payouts go to acct_1TestCreator.", timeout=WAIT_MS)
    await page.fill("#payout-diamonds", str(earned + 1))
    await page.click("#payout-submit")
    await expect(payout_error).to_contain_text(f"Available: {earned} diamonds.",
                                               timeout=WAIT_MS)

    # The payout: paid at once in test mode, with a local transfer id.
    await page.fill("#payout-diamonds", str(earned))
    await expect(page.locator("#payout-value")).to_have_text(f"{earned} diamonds = $0.87")
    await page.click("#payout-submit")
    result = page.locator("#payout-result")
    await expect(result).to_have_attribute("data-state", "paid", timeout=WAIT_MS)
    await expect(result).to_contain_text(f"Paid: {earned} diamonds ($0.87) transferred")
    await expect(payout_error).to_be_hidden()
    row = page.locator("#payouts tr.payout")
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await expect(row).to_have_attribute("data-status", "paid")
    await expect(row.locator(".id")).to_have_text(re.compile(r"^tr_test_"))
    await expect(page.locator("#available-diamonds")).to_have_attribute("data-value", "0",
                                                                        timeout=WAIT_MS)
    await expect(page.locator("#paid-diamonds")).to_have_attribute("data-value", str(earned))
    await expect(page.locator("#paid-money")).to_have_text("$0.87")
    await expect(page.locator("#earned-diamonds")).to_have_attribute("data-value", str(earned))
    assert await page.evaluate("sessionStorage.getItem('livecore.payout')") is None
    response, payouts = await api.request("GET", "/api/v1/me/payouts", token=creator_token)
    assert [p["status"] for p in payouts["payouts"]] == ["paid"], payouts
    await page.screenshot(path=str(tmp_path / "creator.png"), full_page=True)
    assert errors == []
    await context.close()

    # A creator with no gifts yet: an empty chart that says so.
    _, fresh_token = await api.new_creator()
    context, page, errors = await open_page(browser, fresh_token)
    await page.goto(url(api, "/creator"))
    await expect(page.locator("#earnings-chart svg text.empty")).to_have_text(
        "No earnings yet", timeout=WAIT_MS)
    assert await page.locator("#earnings-chart svg rect.bar").count() == 0
    await expect(page.locator("#payout-account")).to_have_text("No payout account saved yet.")
    assert errors == []
    await context.close()


async def test_creator_dashboard_refuses_a_viewer(money: tuple[ApiClient, Services],
                                                  browser: Browser) -> None:
    api, _ = money
    viewer = await api.register()
    context, page, errors = await open_page(browser, None)
    await page.goto(url(api, "/creator"))
    await expect(page.locator("#login-form")).to_be_visible(timeout=WAIT_MS)
    await page.fill("#login-username", viewer["username"])
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(page.locator("#access-error")).to_contain_text("not a creator account",
                                                                timeout=WAIT_MS)
    await expect(page.locator("#dashboard")).to_be_hidden()
    assert errors == []
    await context.close()


# -- the finance page ---------------------------------------------------------------------------


async def test_finance_page_purchases_payouts_and_debts(money: tuple[ApiClient, Services],
                                                        browser: Browser,
                                                        tmp_path: Path) -> None:
    api, services = money
    debtor_id, _, refunded = await viewer_in_debt(api, services)
    _, buyer_token = await api.new_user()
    paid = await paid_purchase(api, buyer_token, "coins-350")
    declined = await paid_purchase(api, buyer_token, "coins-70", outcome="decline")
    assert declined["status"] == "failed"
    # A paid payout.
    creator, creator_token, stream = await live_stream(api, services)
    _, gifter = await granted_viewer(api, services, 500)
    await send_gift(api, gifter, stream, "coffee", 40)  # 200 diamonds
    response, body = await api.request("PUT", "/api/v1/me/payout-account", token=creator_token,
                                       json={"stripe_account_id": "acct_1Finance",
                                             "password": PASSWORD})
    assert response.status == 200, body
    response, payout = await api.request("POST", "/api/v1/me/payouts", token=creator_token,
                                         json={"payout_id": str(uuid.uuid4()), "diamonds": 200})
    assert response.status == 201 and payout["status"] == "paid", payout

    context, page, errors = await open_page(browser, await admin_token(api, services))
    await page.goto(url(api, "/finance"))

    # Purchases: the latest first, with refunds; filtered by status.
    rows = page.locator("#purchases tr.purchase")
    await expect(rows.first).to_be_visible(timeout=WAIT_MS)
    for purchase, status in ((refunded, "refunded"), (paid, "paid"), (declined, "failed")):
        row = page.locator(
            f'#purchases tr.purchase[data-purchase-id="{purchase["purchase_id"]}"]')
        await expect(row).to_have_attribute("data-status", status)
    refunded_row = page.locator(
        f'#purchases tr.purchase[data-purchase-id="{refunded["purchase_id"]}"]')
    await expect(refunded_row).to_contain_text("$0.99")
    await expect(refunded_row).to_have_attribute("data-user-id", debtor_id)
    await page.select_option("#purchases-filter", "failed")
    await page.click("#purchases-form button[type=submit]")
    await expect(page.locator("#purchases-status")).to_contain_text("Showing", timeout=WAIT_MS)
    statuses = await rows.evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"failed"}, statuses

    async with page.expect_download(timeout=WAIT_MS) as download_info:
        await page.click("#purchases-csv")
    download = await download_info.value
    assert download.suggested_filename == "livecore-purchases.csv"
    text = await asyncio.to_thread(Path(str(await download.path())).read_text, encoding="utf-8")
    records = list(csv.DictReader(io.StringIO(text)))
    assert any(r.get("purchase_id") == declined["purchase_id"] for r in records), text[:500]
    await expect(page.locator("#purchases-csv-link")).to_be_visible()

    # Payouts.
    payout_row = page.locator(f'#payouts tr.payout[data-payout-id="{payout["payout_id"]}"]')
    await expect(payout_row).to_have_attribute("data-status", "paid", timeout=WAIT_MS)
    await expect(payout_row).to_have_attribute("data-creator-id", creator["id"])
    await expect(payout_row).to_contain_text("$1.00")
    await expect(payout_row).to_contain_text(creator["username"])
    async with page.expect_download(timeout=WAIT_MS) as download_info:
        await page.click("#payouts-csv")
    download = await download_info.value
    assert download.suggested_filename == "livecore-payouts.csv"
    text = await asyncio.to_thread(Path(str(await download.path())).read_text, encoding="utf-8")
    assert payout["payout_id"] in text

    # Viewers in debt, with the total.
    debt_row = page.locator(f'#debts tr.debt[data-user-id="{debtor_id}"]')
    await expect(debt_row).to_have_attribute("data-owed", "70", timeout=WAIT_MS)
    response, debts = await api.request("GET", "/api/v1/finance/debts",
                                        token=await admin_token(api, services))
    assert response.status == 200, debts
    await expect(page.locator("#debts-total")).to_have_attribute(
        "data-value", str(debts["total_owed_coins"]))
    assert debts["total_owed_coins"] >= 70

    # What was there before is still there and still passes, and knows the new accounts.
    await expect(page.locator("#recon-status")).to_have_attribute("data-state", "ok",
                                                                  timeout=WAIT_MS)
    await expect(page.locator('#balances tr[data-kind="debt"] td')).to_have_attribute(
        "data-value", str(-debts["total_owed_coins"]))
    await page.select_option("#journal-kind", "debt")
    await page.click("#journal-form button[type=submit]")
    await expect(page.locator("#journal-status")).to_contain_text("Showing", timeout=WAIT_MS)
    kinds = await page.locator("#journal tr.entry").evaluate_all(
        "rows => rows.map(r => r.dataset.accountKind)")
    assert kinds and set(kinds) == {"debt"}, kinds
    await page.screenshot(path=str(tmp_path / "finance.png"), full_page=True)
    assert errors == []
    await context.close()
