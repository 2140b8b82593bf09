"""Shared fixtures: real PostgreSQL and Redis, a fresh database and key space per run.

Where the services come from:

* ``TEST_DATABASE_URL`` / ``TEST_REDIS_URL`` if set (an admin URL: the run creates and drops
  its own database on that server);
* else the machine's own PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379)
  when they answer, which they must under ``CI=true`` (a missing service fails the run, it
  does not skip it);
* else the embedded servers that ``livecore serve`` uses, started in a temporary directory.

``LIVECORE_TEST_SERVERS=embedded`` chooses the embedded servers whatever answers (``.ci/run``
runs the suite that way as well, so the zero-configuration run is tested as users run it);
``LIVECORE_TEST_SERVERS=machine`` requires the machine's.

Every run works in a database named ``livecore_test_<random>`` (dropped at the end) and under
the Redis key prefix ``lctest:<random>:`` (deleted at the end), so runs never collide.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from playwright.async_api import Browser, async_playwright

from gateway.app import create_app
from gateway.embedded import EmbeddedServers
from gateway.services import Services
from ledger.migrate import migrate
from livecore.settings import Secret, Settings
from tests.support import (
    CHROMIUM_ARGS,
    ApiClient,
    chromium_path,
    database_url_for,
    own_database,
)

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Backend:
    admin_url: str  # a database on the server where the test database is created
    database_url: str  # the run's own fresh database
    redis_url: str
    redis_prefix: str
    source: str


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    embedded: EmbeddedServers | None = None
    admin_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    source = "TEST_DATABASE_URL / TEST_REDIS_URL"
    wanted = os.environ.get("LIVECORE_TEST_SERVERS", "")
    if wanted not in ("", "machine", "embedded"):
        raise pytest.UsageError(
            f"LIVECORE_TEST_SERVERS={wanted!r}: use 'machine', 'embedded' or leave it unset")
    if wanted == "embedded":
        embedded = EmbeddedServers(Path(tempfile.mkdtemp(prefix="livecore-test-")))
        admin_url, redis_url = embedded.start()
        source = "embedded PostgreSQL and Redis (LIVECORE_TEST_SERVERS=embedded)"
    elif admin_url is None or redis_url is None:
        in_ci = os.environ.get("CI", "").lower() == "true"
        if in_ci or wanted == "machine" or (_answers("127.0.0.1", 5432)
                                            and _answers("127.0.0.1", 6379)):
            admin_url = admin_url or MACHINE_POSTGRES
            redis_url = redis_url or MACHINE_REDIS
            source = "the machine's PostgreSQL and Redis"
        else:
            embedded = EmbeddedServers(Path(tempfile.mkdtemp(prefix="livecore-test-")))
            admin_url, redis_url = embedded.start()
            source = "embedded PostgreSQL and Redis"
    run_id = secrets.token_hex(4)
    name = f"livecore_test_{run_id}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(database_url_for(admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        client = aioredis.from_url(redis_url)
        try:
            async for key in client.scan_iter(match=f"lctest:{run_id}:*", count=1000):
                await client.delete(key)
        finally:
            await client.aclose()

    asyncio.run(create())
    try:
        yield Backend(
            admin_url=admin_url,
            database_url=database_url_for(admin_url, name),
            redis_url=redis_url,
            redis_prefix=f"lctest:{run_id}:",
            source=source,
        )
    finally:
        asyncio.run(drop())
        if embedded is not None:
            embedded.stop()


def pytest_report_header(config: pytest.Config) -> str:
    chosen = os.environ.get("LIVECORE_TEST_SERVERS") or "chosen by tests/conftest.py"
    return f"livecore: test servers {chosen} (see tests/conftest.py's docstring)"


@pytest.fixture(scope="session")
def settings(backend: Backend) -> Settings:
    return Settings(
        database_url=Secret(backend.database_url),
        redis_url=Secret(backend.redis_url),
        redis_prefix=backend.redis_prefix,
    )


@pytest.fixture(scope="session")
async def services(settings: Settings, backend: Backend) -> AsyncIterator[Services]:
    svc = await Services.connect(
        settings, database_url=backend.database_url, redis_url=backend.redis_url
    )
    yield svc
    await svc.close()


@pytest.fixture
async def api(services: Services) -> AsyncIterator[ApiClient]:
    """An HTTP client talking to a real server on a real socket."""
    async with ApiClient.serving(create_app(services)) as client:
        yield client


@pytest.fixture
async def empty_database(backend: Backend) -> AsyncIterator[str]:
    """A database of the test's own, with no schema (dropped afterwards)."""
    async with own_database(backend, migrated=False) as url:
        yield url


@pytest.fixture
async def fresh_database(backend: Backend) -> AsyncIterator[str]:
    """A migrated database of the test's own, for tests that damage or count everything."""
    async with own_database(backend, migrated=True) as url:
        yield url


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A directory for embedded servers, outside pytest's own temporary tree: pytest resets
    /tmp/pytest-of-<user> to mode 0700 whenever a session starts, and the embedded
    PostgreSQL runs as another user (pgserver's, when we are root) that must traverse it."""
    path = Path(tempfile.mkdtemp(prefix="livecore-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def own_servers(server_dir: Path) -> AsyncIterator[tuple[EmbeddedServers, str, str]]:
    """PostgreSQL and Redis that only this test uses, so it may stop and start them."""
    servers = EmbeddedServers(server_dir / "data")
    database_url, redis_url = servers.start()
    try:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield servers, database_url, redis_url
    finally:
        servers.stop()


@pytest.fixture
def make_services(services: Services) -> Any:
    """Services sharing the run's connections but with other settings (limits, a clock)."""

    def make(**overrides: Any) -> Services:
        clock = overrides.pop("clock", services.clock)
        changed = dataclasses.replace(services.settings, **overrides)
        return Services(settings=changed, pool=services.pool, redis=services.redis, clock=clock)

    return make


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium (the system's, see tests/support.chromium_path) for page tests."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path(),
                                                    args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def media_api(make_services: Any, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """A served app whose streams end 0.5 s after their publisher leaves; its HLS files under
    ``tmp_path``."""
    services = make_services(media_grace_s=0.5, data_dir=str(tmp_path))
    async with ApiClient.serving(create_app(services)) as api:
        yield api
