"""Helpers for tests that talk to a real server over a real socket."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema import Draft202012Validator, FormatChecker

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


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class ApiClient:
    """A thin wrapper over aiohttp's test client with the calls most tests need."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, app: web.Application) -> AsyncIterator[ApiClient]:
        async with TestClient(TestServer(app)) as client:
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
