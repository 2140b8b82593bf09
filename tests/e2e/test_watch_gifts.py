"""The watch page's gift panel in a real Chromium, against a real server in test-payments mode:
sending a gift (the balance drops, the room's feed shows it), the retry with the same gift id
after a lost answer, not enough coins, a minor, and who does not see the panel."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    Page,
    Request,
    Route,
    expect,
)

from gateway.services import Services
from ledger.batcher import grant
from livecore.economy import GiftType
from tests.support import PASSWORD, ApiClient, page_errors

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000  # generous: the page talks to a real server over real sockets
HOSTILE = "<img src=x onerror=alert(1)>"
PRICE = 7


# -- fixtures and helpers -----------------------------------------------------------------------


@pytest.fixture
async def tulip(api: ApiClient, services: Services) -> AsyncIterator[GiftType]:
    """A gift type of this test's own (a name with markup in it, a price of its own), added
    after the app seeded the catalogue, and withdrawn afterwards."""
    assert services.provider.test_mode  # coins are bought without real money
    gift = await services.gifts.save_gift_type(GiftType(
        f"tulip_{secrets.token_hex(4)}", f"Tulip {HOSTILE}", PRICE, True, "rose_float"))
    try:
        yield gift
    finally:
        await services.gifts.save_gift_type(
            GiftType(gift.slug, gift.name, gift.price_coins, gift.streakable, gift.animation,
                     is_active=False))


async def live_stream(api: ApiClient, services: Services) -> tuple[dict[str, Any], str, str]:
    """A creator's stream, set live in the database; (creator, creator's token, stream id)."""
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Flower market"})
    await services.pool.execute(
        "UPDATE streams SET state = 'live', started_at = now() WHERE id = $1",
        uuid.UUID(stream["id"]))
    return creator, creator_token, str(stream["id"])


async def give_coins(services: Services, user_id: str, coins: int) -> None:
    await grant(services.pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(user_id), coins=coins,
                memo="", actor_id=None, now=dt.datetime.now(dt.UTC))


async def open_page(browser: Browser, url: str, token: str | None = None) -> tuple[Page,
                                                                                   list[str]]:
    """A page of a fresh context (logged in with ``token`` if given) at ``url``, and the list
    its uncaught errors and dialogs (an injected ``alert`` would open one) go to."""
    context = await browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    if token is not None:
        await context.add_init_script(
            f"localStorage.setItem('livecore.token', {json.dumps(token)});")
    page = await context.new_page()
    errors = page_errors(page)
    await page.goto(url)
    return page, errors


def gift_posts(page: Page) -> list[dict[str, Any]]:
    """The bodies of every ``POST /api/v1/gifts`` the page sends."""
    bodies: list[dict[str, Any]] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/api/v1/gifts"):
            body = request.post_data_json
            assert isinstance(body, dict)
            bodies.append(body)

    page.on("request", on_request)
    return bodies


def is_gift_post(response: Any) -> bool:
    return bool(response.request.method == "POST" and response.url.endswith("/api/v1/gifts"))


def sixteen_years_ago() -> str:
    today = dt.date.today()
    try:
        return today.replace(year=today.year - 16).isoformat()
    except ValueError:  # 29 February
        return today.replace(year=today.year - 16, day=28).isoformat()


# -- tests --------------------------------------------------------------------------------------


async def test_a_viewer_sends_gifts_from_the_panel(api, services, browser, tulip):
    _, _, room = await live_stream(api, services)
    viewer = await api.register()
    await give_coins(services, viewer["id"], 30)
    page, errors = await open_page(browser, str(api.client.make_url(f"/watch/{room}")))
    posts = gift_posts(page)
    panel = page.locator("#gift-panel")
    balance = page.locator("#gift-balance")
    button = page.locator(f"#gift-{tulip.slug}")
    quantity = page.locator("#gift-quantity")
    status = page.locator("#gift-status")
    gift_error = page.locator("#gift-error")
    feed = page.locator("#messages .gift")

    # Logged out: no panel; the footer links to the coins page all the same.
    await expect(page.locator("#connection")).to_have_attribute(
        "data-state", "connected", timeout=WAIT_MS)
    await expect(panel).to_have_attribute("data-state", "logged-out")
    await expect(panel).to_be_hidden()
    await expect(page.locator("footer a[href='/coins']")).to_have_text("Buy coins")

    # Logging in through the page's form shows the panel: the catalogue, the balance, the link.
    await page.fill("#login-username", viewer["username"])
    await page.fill("#login-password", PASSWORD)
    await page.click("#login-submit")
    await expect(panel).to_be_visible(timeout=WAIT_MS)
    await expect(balance).to_have_attribute("data-value", "30", timeout=WAIT_MS)
    await expect(balance).to_have_text("You have 30 coins")
    await expect(button).to_contain_text(tulip.name)  # the markup as text
    await expect(button).to_contain_text(f"{PRICE} coins")
    await expect(page.locator("#gift-rose")).to_contain_text("Rose")
    await expect(page.locator("#buy-coins-link")).to_be_visible()
    await expect(page.locator("#buy-coins-link")).to_have_attribute("href", "/coins")
    await expect(page.locator("#gift-test-mode")).to_be_visible()
    await expect(quantity).to_have_value("1")

    # A quantity out of range is refused here, without a request.
    await quantity.fill("100")
    await button.click()
    await expect(gift_error).to_have_text("Choose a quantity from 1 to 99.")
    assert posts == []

    # Two of them, with a double click: one request (the buttons are disabled in flight).
    await quantity.fill("2")
    async with page.expect_response(is_gift_post) as sent:
        await button.dblclick()
    response = await sent.value
    assert response.status == 201
    body = await response.json()
    assert (body["gift"], body["quantity"], body["coins"]) == (tulip.slug, 2, 2 * PRICE)
    assert body["balance"] == 30 - 2 * PRICE
    await expect(balance).to_have_attribute("data-value", str(30 - 2 * PRICE), timeout=WAIT_MS)
    await expect(balance).to_have_text(f"You have {30 - 2 * PRICE} coins")
    await expect(status).to_have_text(f"Sent 2 × {tulip.name} ({2 * PRICE} coins).")
    await expect(gift_error).to_be_hidden()
    await expect(feed).to_have_count(1, timeout=WAIT_MS)
    await expect(feed.locator(".what")).to_have_text(f"sent 2 × {tulip.name} ({2 * PRICE} coins)")
    await expect(feed.locator(".author")).to_have_text(viewer["username"])
    assert len(posts) == 1
    uuid.UUID(posts[0]["gift_id"])  # chosen by the page
    assert {k: v for k, v in posts[0].items() if k != "gift_id"} == {
        "stream_id": room, "gift": tulip.slug, "quantity": 2}

    # The server commits a gift but its answer is lost: the page asks again with the same
    # gift id and is answered with the original outcome; the coins go once.
    attempts = 0

    async def lose_first_answer(route: Route) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await route.fetch()  # reaches the server...
            await route.abort("connectionreset")  # ...but the page never hears back
        else:
            await route.continue_()

    await page.route("**/api/v1/gifts", lose_first_answer)
    await quantity.fill("1")
    async with page.expect_response(is_gift_post) as sent:
        await button.click()
    response = await sent.value
    assert response.status == 200  # a replay of the committed gift
    assert (await response.json())["replayed"] is True
    await page.unroute("**/api/v1/gifts", lose_first_answer)
    assert len(posts) == 3 and posts[1] == posts[2]
    assert posts[1]["gift_id"] != posts[0]["gift_id"]
    left = 30 - 3 * PRICE
    await expect(balance).to_have_attribute("data-value", str(left), timeout=WAIT_MS)
    await expect(status).to_have_text(f"Sent {tulip.name} ({PRICE} coins).")
    await expect(feed).to_have_count(2, timeout=WAIT_MS)
    token = await api.login(viewer["username"])
    _, wallet = await api.request("GET", "/api/v1/me/wallet", token=token)
    assert wallet["coins"] == left

    # Neither attempt is answered: the outcome is unknown, and the page says so. Pressing the
    # same gift again reuses the gift id.
    async def lose_both(route: Route) -> None:
        await route.abort("connectionreset")

    await page.route("**/api/v1/gifts", lose_both)
    await button.click()
    await expect(gift_error).to_contain_text("may or may not have been sent", timeout=WAIT_MS)
    await expect(button).to_be_enabled()
    await page.unroute("**/api/v1/gifts", lose_both)
    assert len(posts) == 5 and posts[3] == posts[4]
    assert posts[3]["gift_id"] not in (posts[0]["gift_id"], posts[1]["gift_id"])
    async with page.expect_response(is_gift_post) as sent:
        await button.click()
    response = await sent.value
    assert response.status == 201  # the first attempts never reached the server
    assert len(posts) == 6 and posts[5] == posts[3]
    left -= PRICE
    await expect(balance).to_have_attribute("data-value", str(left), timeout=WAIT_MS)
    await expect(gift_error).to_be_hidden()
    await expect(feed).to_have_count(3, timeout=WAIT_MS)

    # Too few coins left: a clear message, and the Buy coins link stands out.
    assert left < PRICE
    async with page.expect_response(is_gift_post) as sent:
        await button.click()
    response = await sent.value
    assert response.status == 402
    assert (await response.json())["error"]["code"] == "insufficient_coins"
    await expect(gift_error).to_have_text("Not enough coins for this gift.")
    buy = page.locator("#buy-coins-link")
    await expect(buy).to_be_visible()
    await expect(buy).to_have_class("buy-coins is-emphasised")
    await expect(balance).to_have_attribute("data-value", str(left))
    await expect(status).to_be_hidden()
    await expect(feed).to_have_count(3)
    await expect(button).to_be_enabled()

    assert await page.locator("#gift-panel img, #messages img").count() == 0
    assert errors == []


async def test_a_minor_is_told_that_gifts_need_an_adult(api, services, browser, tulip):
    _, _, room = await live_stream(api, services)
    minor, token = await api.new_user(birthdate=sixteen_years_ago())
    await give_coins(services, minor["id"], 50)
    page, errors = await open_page(browser, str(api.client.make_url(f"/watch/{room}")), token)
    panel = page.locator("#gift-panel")
    adult_only = "Sending gifts needs an adult (18+) account."

    await expect(panel).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#gift-error")).to_have_text(adult_only, timeout=WAIT_MS)
    await expect(page.locator(f"#gift-{tulip.slug}")).to_be_disabled()
    await expect(page.locator("#gift-balance")).to_have_attribute("data-value", "50")

    # The server says so too, if asked anyway (the panel's own send, past the disabled button).
    await page.evaluate("document.getElementById('gift-error').hidden = true")
    async with page.expect_response(is_gift_post) as sent:
        await page.evaluate("slug => LivecoreGifts.send(slug)", tulip.slug)
    response = await sent.value
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "not_adult"
    await expect(page.locator("#gift-error")).to_be_visible()
    await expect(page.locator("#gift-error")).to_have_text(adult_only)
    await expect(page.locator("#gift-balance")).to_have_attribute("data-value", "50")
    assert errors == []


async def test_the_creator_does_not_see_the_panel(api, services, browser, tulip):
    creator, creator_token, room = await live_stream(api, services)
    page, errors = await open_page(browser, str(api.client.make_url(f"/watch/{room}")),
                                   creator_token)
    await expect(page.locator("#me")).to_have_text(creator["username"], timeout=WAIT_MS)
    await expect(page.locator("#state")).to_have_attribute("data-state", "live")
    panel = page.locator("#gift-panel")
    await expect(panel).to_have_attribute("data-state", "own-stream", timeout=WAIT_MS)
    await expect(panel).to_be_hidden()
    await expect(page.locator("#buy-coins-link")).to_be_hidden()
    await expect(page.locator("footer a[href='/coins']")).to_be_visible()

    # Another viewer's page on the same stream has it.
    _, viewer_token = await api.new_user()
    other, other_errors = await open_page(browser, str(api.client.make_url(f"/watch/{room}")),
                                          viewer_token)
    await expect(other.locator("#gift-panel")).to_have_attribute(
        "data-state", "ready", timeout=WAIT_MS)
    await expect(other.locator(f"#gift-{tulip.slug}")).to_be_visible()
    await expect(other.locator("#gift-balance")).to_have_text("You have 0 coins")
    assert errors == [] and other_errors == []


async def test_a_viewer_in_debt_is_told_why_and_where_to_pay(api, services, browser, tulip):
    """Coins bought, spent, then refunded (through the webhook's own processing): the viewer
    owes them, and the panel says so before and after a refused gift."""
    _, _, room = await live_stream(api, services)
    viewer, token = await api.new_user()
    _, purchase = await api.request("POST", "/api/v1/purchases", token=token, json={
        "purchase_id": str(uuid.uuid4()), "package": "coins-70", "method": "payment_intent"})
    await api.request("POST", f"/api/v1/test-payments/{purchase['purchase_id']}", token=token,
                      json={"outcome": "pay"})
    response, _ = await api.request("POST", "/api/v1/gifts", token=token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": tulip.slug, "quantity": 10})
    assert response.status == 201  # 70 of the 70 coins
    stored = await services.purchases.get(uuid.UUID(purchase["purchase_id"]))
    assert await services.purchases.handle_event({
        "id": f"evt_{uuid.uuid4().hex}", "type": "charge.refunded", "data": {"object": {
            "id": "ch_debt", "amount": 99, "amount_refunded": 99,
            "payment_intent": stored.payment_intent_id}}}) == "applied"
    await give_coins(services, viewer["id"], 20)  # coins from elsewhere do not unblock gifts

    page, errors = await open_page(browser, str(api.client.make_url(f"/watch/{room}")), token)
    gift_error = page.locator("#gift-error")
    await expect(gift_error).to_contain_text("You owe 70 coins", timeout=WAIT_MS)
    async with page.expect_response(is_gift_post) as sent:
        await page.locator(f"#gift-{tulip.slug}").click()
    response = await sent.value
    assert response.status == 402
    assert (await response.json())["error"]["code"] == "wallet_in_debt"
    await expect(gift_error).to_contain_text("You owe 70 coins")
    await expect(page.locator("#buy-coins-link")).to_have_class("buy-coins is-emphasised")
    await expect(page.locator("#gift-balance")).to_have_attribute("data-value", "20")
    assert errors == []
