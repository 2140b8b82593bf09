"""Helpers for tests that talk to a real server over a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import secrets
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from jsonschema import Draft202012Validator, FormatChecker
from playwright.async_api import ConsoleMessage, Dialog, Page

from gateway.app import Runner
from ledger.batcher import grant
from ledger.migrate import migrate

PASSWORD = "correct horse battery"

#: Flags for Debian's Chromium driven headless by Playwright (see ../shared/FACTS.md).
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    """Debian's Chromium; a missing browser fails the test (it is never skipped)."""
    path = shutil.which("chromium")
    assert path, "Chromium is not installed: run ./scripts/system-deps (make test does)"
    return path


def assert_matches(schema: dict[str, Any], body: Any) -> None:
    """Fail with every violation if ``body`` does not match ``schema`` (formats checked)."""
    errors = list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(body))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def database_url_for(admin_url: str, name: str) -> str:
    """The admin URL pointed at database ``name`` (unix-socket URLs keep their ?host=)."""
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


async def stream_state(api: ApiClient, stream_id: str) -> str:
    """A stream's state, as the API shows it."""
    _, stream = await api.request("GET", f"/api/v1/streams/{stream_id}")
    return str(stream["state"])


async def until_state(api: ApiClient, stream_id: str, state: str, *, within_s: float = 30) -> None:
    """Poll the API until the stream is in ``state`` (it changes in PostgreSQL: nothing to
    wait on)."""
    async with asyncio.timeout(within_s):
        while await stream_state(api, stream_id) != state:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def own_database(backend: Any, *, migrated: bool) -> AsyncIterator[str]:
    """A database of the caller's own on ``backend``'s server (migrated if asked), dropped
    on exit."""
    name = f"livecore_own_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(backend.admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(backend.admin_url, name)
    try:
        if migrated:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        yield url
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class LivecoreTestServer(TestServer):
    """aiohttp's test server, run as ``livecore serve`` runs the app (gateway.app.Runner)."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        return Runner(self.app, **kwargs)


class ApiClient:
    """A thin wrapper over aiohttp's test client with the calls most tests need."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, app: web.Application) -> AsyncIterator[ApiClient]:
        async with TestClient(LivecoreTestServer(app)) as client:
            yield cls(client)

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[ClientResponse, Any]:
        """Send a request; returns the response and its decoded JSON body (None if empty)."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        response = await self.client.request(
            method, path, json=json, data=data, headers=all_headers
        )
        raw = await response.read()
        body = None
        if raw and response.content_type == "application/json":
            body = await response.json()
        return response, body

    async def register(
        self, username: str | None = None, *, birthdate: str = "1990-05-17"
    ) -> dict[str, Any]:
        username = username or unique_name()
        response, body = await self.request(
            "POST",
            "/api/v1/auth/register",
            json={"username": username, "password": PASSWORD, "birthdate": birthdate},
        )
        assert response.status == 201, body
        return dict(body)

    async def login(self, username: str, password: str = PASSWORD) -> str:
        response, body = await self.request(
            "POST", "/api/v1/auth/login", json={"username": username, "password": password}
        )
        assert response.status == 200, body
        return str(body["token"])

    async def new_user(self, *, birthdate: str = "1990-05-17") -> tuple[dict[str, Any], str]:
        user = await self.register(birthdate=birthdate)
        return user, await self.login(user["username"])

    async def new_creator(self) -> tuple[dict[str, Any], str]:
        user, token = await self.new_user()
        response, body = await self.request("POST", "/api/v1/me/creator", token=token)
        assert response.status == 200, body
        return body, token


async def registered_user(http: aiohttp.ClientSession) -> tuple[str, str]:
    """Through a running server's API: a new adult account, logged in; (user id, token)."""
    name = f"u{uuid.uuid4().hex[:12]}"
    async with http.post("/api/v1/auth/register", json={
            "username": name, "password": PASSWORD, "birthdate": "1990-01-01"}) as r:
        assert r.status == 201, await r.text()
        uid = (await r.json())["id"]
    async with http.post("/api/v1/auth/login",
                         json={"username": name, "password": PASSWORD}) as r:
        return uid, (await r.json())["token"]


async def live_stream_with_viewers(base: str, pool: Any, *, viewers: int, coins: int,
                                   title: str) -> tuple[str, list[tuple[str, str]]]:
    """Through a running server's API: a creator's stream (set live in the database) and
    ``viewers`` logged-in users with ``coins`` granted each; (stream id, [(user id, token)])."""
    async with aiohttp.ClientSession(base) as http:
        _, creator_token = await registered_user(http)
        headers = {"Authorization": f"Bearer {creator_token}"}
        async with http.post("/api/v1/me/creator", headers=headers) as r:
            assert r.status == 200, await r.text()
        async with http.post("/api/v1/streams", headers=headers, json={"title": title}) as r:
            stream = (await r.json())["id"]
        users = [await registered_user(http) for _ in range(viewers)]
    await pool.execute("UPDATE streams SET state = 'live', started_at = now() WHERE id = $1",
                       uuid.UUID(stream))
    for uid, _ in users:
        await grant(pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(uid), coins=coins, memo="",
                    actor_id=None, now=dt.datetime.now(dt.UTC))
    return stream, users


async def seed_live_stream(pool: Any, *, coins: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """Straight into the database: a creator with a live stream, a viewer with ``coins``
    granted, and the gift type ``rose`` (1 coin); returns (creator, viewer, stream)."""
    creator, viewer, stream = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.executemany(
        "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
        " VALUES ($1, $2, 'x', '1990-01-01', '{viewer}', now())",
        [(creator, "creator1"), (viewer, "viewer1")])
    await pool.execute("INSERT INTO streams (id, creator_id, title, stream_key, created_at,"
                       " state, started_at) VALUES ($1, $2, 't', 'k', now(), 'live', now())",
                       stream, creator)
    await pool.execute("INSERT INTO gift_types VALUES ('rose', 'Rose', 1, true, 'rose', true,"
                       " now())")
    await grant(pool, grant_id=uuid.uuid4(), user_id=viewer, coins=coins, memo="",
                actor_id=None, now=dt.datetime.now(dt.UTC))
    return creator, viewer, stream


async def gift_until_answered(http: aiohttp.ClientSession, stream: str) -> tuple[str, int]:
    """``POST /api/v1/gifts`` of one rose (random quantity), retried with the same gift id
    through 503s and dropped connections until it is answered; (gift id, failed attempts)."""
    gift_id = str(uuid.uuid4())
    body = {"gift_id": gift_id, "stream_id": stream, "gift": "rose",
            "quantity": random.randint(1, 5)}
    failed = 0
    for _attempt in range(400):
        try:
            async with http.post("/api/v1/gifts", json=body) as response:
                if response.status in (200, 201):
                    return gift_id, failed
                assert response.status == 503, await response.text()
        except (TimeoutError, aiohttp.ClientError):
            pass
        failed += 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"gift {gift_id} was never answered")


def page_errors(page: Page) -> list[str]:
    """A list that collects a page's uncaught errors, any dialog it opens (an injected
    ``alert`` would open one; it is dismissed, since an open dialog blocks the page) and every
    Content-Security-Policy violation (Chromium reports each on the console: a page that
    needs an inline script, eval or another origin fails its test)."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            errors.append(f"csp: {message.text}")

    page.on("console", on_console)

    async def on_dialog(dialog: Dialog) -> None:
        errors.append(f"dialog: {dialog.message}")
        await dialog.dismiss()

    page.on("pageerror", lambda error: errors.append(f"pageerror: {error}"))
    page.on("dialog", on_dialog)
    return errors
