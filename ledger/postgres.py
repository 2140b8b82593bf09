"""The PostgreSQL connection pool, and which of its exceptions mean "the database is away".

Those exceptions are translated to :class:`livecore.errors.ServiceUnavailable` (503, retryable)
at the gateway's error boundary; any other database error is a bug and answers 500.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from livecore.errors import ServiceUnavailable

#: Raised by asyncpg (or the socket under it) when the server is down, restarting or unreachable.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A pooled connection whose server vanished mid-operation can be left in a state asyncpg
    # reports this way; the pool replaces it on the next acquire.
    asyncpg.exceptions.InternalClientError,
)

CONNECT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 30.0


async def _reset_on_release(conn: Any) -> None:
    """What a connection needs when it goes back to the pool: only a transaction left open
    is ended. asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, closing cursors,
    releasing advisory locks) is a round trip on every release, on the gift path's ack
    among others, and Livecore leaves none of that state on a pooled connection: no ``SET``,
    no ``LISTEN``, cursors only inside transactions, advisory locks only on the migration's own
    connection, released before it is."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(url: str, *, max_size: int) -> Any:
    """An asyncpg pool; fails fast with :class:`ServiceUnavailable` if nobody answers."""
    try:
        return await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT_S,
            command_timeout=COMMAND_TIMEOUT_S,
            reset=_reset_on_release,
            # Money is written here: keep synchronous_commit on (the server default).
            server_settings={"application_name": "livecore", "timezone": "UTC"},
        )
    except UNAVAILABLE_ERRORS as exc:
        raise ServiceUnavailable(
            f"PostgreSQL is unreachable: {exc}", code="database_unavailable"
        ) from exc


async def connect(url: str) -> Any:
    """One connection, for the command line (migrations, admin commands)."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except UNAVAILABLE_ERRORS as exc:
        raise ServiceUnavailable(
            f"PostgreSQL is unreachable: {exc}", code="database_unavailable"
        ) from exc
