"""PostgreSQL adapters for accounts, login tokens and streams.

Each method is one short transaction; uniqueness and state rules that must hold under
concurrency are enforced by the database (unique indexes, conditional updates) and translated
here into the domain's errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from livecore.accounts import Account, Role, normalise_roles, sorted_roles
from livecore.chat import SanctionKind
from livecore.errors import Conflict, NotFound
from livecore.ids import StreamId, TokenId, UserId
from livecore.streams import Stream, StreamEvent, StreamState, StreamText, next_state

_USER_COLUMNS = "u.id, u.username, u.roles, u.birthdate, u.created_at"


def _account(row: Any) -> Account:
    return Account(
        id=UserId(row["id"]),
        username=row["username"],
        roles=normalise_roles(row["roles"]),
        birthdate=row["birthdate"],
        created_at=row["created_at"],
    )


@dataclass(frozen=True)
class TokenInfo:
    id: TokenId
    created_at: dt.datetime
    expires_at: dt.datetime


class PostgresAccounts:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        user_id: UserId,
        username: str,
        password_hash: str,
        birthdate: dt.date,
        roles: Iterable[Role],
        now: dt.datetime,
    ) -> Account:
        try:
            row = await self._pool.fetchrow(
                f"""
                INSERT INTO users AS u (id, username, password_hash, birthdate, roles, created_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                RETURNING {_USER_COLUMNS}
                """,
                user_id,
                username,
                password_hash,
                birthdate,
                sorted_roles(normalise_roles(roles)),
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            raise Conflict(
                f"The username {username!r} is taken.", code="username_taken", field="username"
            ) from exc
        return _account(row)

    async def credentials(self, username: str) -> tuple[Account, str] | None:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS}, u.password_hash FROM users u WHERE u.username = $1",
            username,
        )
        return None if row is None else (_account(row), row["password_hash"])

    async def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
        )

    async def get(self, user_id: UserId) -> Account:
        row = await self._pool.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1", user_id
        )
        if row is None:
            raise NotFound(f"No user with id {user_id}.", code="user_not_found")
        return _account(row)

    async def page(self, *, limit: int, after_username: str | None) -> list[Account]:
        """Accounts in username order, ``limit`` at a time."""
        rows = await self._pool.fetch(
            f"""
            SELECT {_USER_COLUMNS} FROM users u
            WHERE $1::text IS NULL OR u.username > $1
            ORDER BY u.username LIMIT $2
            """,
            after_username,
            limit,
        )
        return [_account(row) for row in rows]

    async def set_roles(
        self,
        user_id: UserId,
        roles: Iterable[Role],
        *,
        actor_id: UserId | None,
        reason: str,
        now: dt.datetime,
    ) -> Account:
        """Replace an account's roles and record who did it; a no-op change records nothing."""
        new_roles = sorted_roles(normalise_roles(roles))
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT roles FROM users WHERE id = $1 FOR UPDATE", user_id)
            if old is None:
                raise NotFound(f"No user with id {user_id}.", code="user_not_found")
            if list(old) != new_roles:
                await conn.execute("UPDATE users SET roles = $2 WHERE id = $1", user_id, new_roles)
                await conn.execute(
                    """
                    INSERT INTO role_changes
                        (actor_id, user_id, old_roles, new_roles, reason, changed_at)
                    VALUES ($1, $2, $3, $4, $5, $6)
                    """,
                    actor_id,
                    user_id,
                    list(old),
                    new_roles,
                    reason,
                    now,
                )
            row = await conn.fetchrow(
                f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1", user_id
            )
        return _account(row)

    # -- bearer tokens -------------------------------------------------------------------

    async def add_token(
        self,
        *,
        token_id: TokenId,
        user_id: UserId,
        token_hash: bytes,
        now: dt.datetime,
        expires_at: dt.datetime,
    ) -> None:
        await self._pool.execute(
            """
            INSERT INTO auth_tokens (id, user_id, token_hash, created_at, expires_at)
            VALUES ($1, $2, $3, $4, $5)
            """,
            token_id,
            user_id,
            token_hash,
            now,
            expires_at,
        )

    async def by_token(self, token_hash: bytes, now: dt.datetime) -> tuple[Account, TokenId] | None:
        """The account a live (unexpired, unrevoked) token belongs to."""
        row = await self._pool.fetchrow(
            f"""
            SELECT {_USER_COLUMNS}, t.id AS token_id
            FROM auth_tokens t JOIN users u ON u.id = t.user_id
            WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND t.expires_at > $2
            """,
            token_hash,
            now,
        )
        return None if row is None else (_account(row), TokenId(row["token_id"]))

    async def tokens(self, user_id: UserId, now: dt.datetime) -> list[TokenInfo]:
        rows = await self._pool.fetch(
            """
            SELECT id, created_at, expires_at FROM auth_tokens
            WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
            ORDER BY created_at DESC, id
            """,
            user_id,
            now,
        )
        return [TokenInfo(TokenId(r["id"]), r["created_at"], r["expires_at"]) for r in rows]

    async def revoke_token(self, user_id: UserId, token_id: TokenId, now: dt.datetime) -> None:
        """Revoke one of the user's live tokens; an unknown or already dead one is a 404."""
        status = await self._pool.execute(
            """
            UPDATE auth_tokens SET revoked_at = $3
            WHERE id = $2 AND user_id = $1 AND revoked_at IS NULL AND expires_at > $3
            """,
            user_id,
            token_id,
            now,
        )
        if status == "UPDATE 0":
            raise NotFound(f"No live token with id {token_id}.", code="token_not_found")

    async def revoke_all_tokens(self, user_id: UserId, now: dt.datetime) -> int:
        status: str = await self._pool.execute(
            "UPDATE auth_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            user_id,
            now,
        )
        return int(status.split()[-1])


_STREAM_COLUMNS = """
    s.id, s.creator_id, u.username AS creator_username, s.title, s.description, s.state,
    s.stream_key, s.created_at, s.started_at, s.ended_at
"""
_STREAM_FROM = "streams s JOIN users u ON u.id = s.creator_id"


def _stream(row: Any) -> Stream:
    return Stream(
        id=StreamId(row["id"]),
        creator_id=UserId(row["creator_id"]),
        creator_username=row["creator_username"],
        title=row["title"],
        description=row["description"],
        state=StreamState(row["state"]),
        stream_key=row["stream_key"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        ended_at=row["ended_at"],
    )


class PostgresStreams:
    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def create(
        self,
        *,
        stream_id: StreamId,
        creator_id: UserId,
        text: StreamText,
        stream_key: str,
        now: dt.datetime,
    ) -> Stream:
        try:
            await self._pool.execute(
                """
                INSERT INTO streams (id, creator_id, title, description, stream_key, created_at)
                VALUES ($1, $2, $3, $4, $5, $6)
                """,
                stream_id,
                creator_id,
                text.title,
                text.description,
                stream_key,
                now,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "streams_one_open_per_creator":
                raise Conflict(
                    "You already have a stream that has not ended; end it first.",
                    code="stream_already_open",
                ) from exc
            raise
        return await self.get(stream_id)

    async def get(self, stream_id: StreamId) -> Stream:
        row = await self._pool.fetchrow(
            f"SELECT {_STREAM_COLUMNS} FROM {_STREAM_FROM} WHERE s.id = $1", stream_id
        )
        if row is None:
            raise NotFound(f"No stream with id {stream_id}.", code="stream_not_found")
        return _stream(row)

    async def page(
        self,
        *,
        state: StreamState | None,
        creator_id: UserId | None,
        limit: int,
        before: tuple[dt.datetime, Any] | None,
    ) -> list[Stream]:
        """Streams newest first, optionally by state and creator, ``limit`` at a time."""
        before_at, before_id = before if before is not None else (None, None)
        rows = await self._pool.fetch(
            f"""
            SELECT {_STREAM_COLUMNS} FROM {_STREAM_FROM}
            WHERE ($1::text IS NULL OR s.state = $1)
              AND ($2::uuid IS NULL OR s.creator_id = $2)
              AND ($3::timestamptz IS NULL OR (s.created_at, s.id) < ($3, $4::uuid))
            ORDER BY s.created_at DESC, s.id DESC
            LIMIT $5
            """,
            None if state is None else state.value,
            creator_id,
            before_at,
            before_id,
            limit,
        )
        return [_stream(row) for row in rows]

    async def open_stream_of(self, creator_id: UserId) -> Stream | None:
        """The creator's stream that has not ended, if any (there is at most one)."""
        row = await self._pool.fetchrow(
            f"SELECT {_STREAM_COLUMNS} FROM {_STREAM_FROM}"
            " WHERE s.creator_id = $1 AND s.state <> 'ended'",
            creator_id,
        )
        return None if row is None else _stream(row)

    async def update_text(self, stream_id: StreamId, text: StreamText) -> Stream:
        status = await self._pool.execute(
            "UPDATE streams SET title = $2, description = $3 WHERE id = $1",
            stream_id,
            text.title,
            text.description,
        )
        if status == "UPDATE 0":
            raise NotFound(f"No stream with id {stream_id}.", code="stream_not_found")
        return await self.get(stream_id)

    async def set_key(self, stream_id: StreamId, stream_key: str) -> Stream:
        """Replace the stream key; the old one stops working at once."""
        status = await self._pool.execute(
            "UPDATE streams SET stream_key = $2 WHERE id = $1 AND state <> 'ended'",
            stream_id,
            stream_key,
        )
        if status == "UPDATE 0":
            stream = await self.get(stream_id)  # 404 if it does not exist
            raise Conflict(
                f"A stream that is {stream.state.value} has no key to rotate.",
                code="invalid_stream_transition",
                state=stream.state.value,
            )
        return await self.get(stream_id)

    async def renew_media_leases(self, stream_ids: list[StreamId], until: dt.datetime) -> None:
        """This node still holds these streams' publishers (or waits for them to come back):
        their leases last until ``until``."""
        if stream_ids:
            await self._pool.execute(
                "UPDATE streams SET media_lease_until = $2"
                " WHERE id = ANY($1::uuid[]) AND state <> 'ended'",
                stream_ids,
                until,
            )

    async def end_lapsed(self, now: dt.datetime, *, lease_before: dt.datetime,
                         started_before: dt.datetime, limit: int = 500) -> list[StreamId]:
        """End the live streams whose media lease ended before ``lease_before``: no node holds
        their publisher (a stream never leased counts from its start). Atomic per row, so
        several sweepers end each stream once; the ids of those this call ended. As in
        :meth:`_end`, the end is dated no earlier than the stream's gifts: a row that a gift
        batch holds is skipped (a later pass ends it), and a gift committed before this
        statement may have read the clock after ``now`` was read."""
        rows = await self._pool.fetch(
            """
            UPDATE streams SET state = 'ended', ended_at = greatest($1::timestamptz,
                (SELECT max(created_at) FROM gifts WHERE gifts.stream_id = streams.id))
            WHERE id IN (
                SELECT id FROM streams
                WHERE state = 'live'
                  AND (media_lease_until < $2
                       OR (media_lease_until IS NULL AND started_at < $3))
                ORDER BY started_at
                LIMIT $4
                FOR UPDATE SKIP LOCKED)
              AND state = 'live'
            RETURNING id
            """,
            now,
            lease_before,
            started_before,
            limit,
        )
        return [StreamId(row["id"]) for row in rows]

    async def transition(self, stream_id: StreamId, event: StreamEvent, now: dt.datetime) -> Stream:
        """Apply ``event`` by the transition table, atomically against concurrent changes."""
        while True:
            current = await self.get(stream_id)
            target = next_state(current.state, event)
            if target is StreamState.ENDED:
                if await self._end(stream_id, current.state, now):
                    return await self.get(stream_id)
                continue
            status = await self._pool.execute(
                """
                UPDATE streams SET
                    state = $3,
                    started_at = CASE WHEN $3 = 'live' THEN $4 ELSE started_at END,
                    ended_at = CASE WHEN $3 = 'ended' THEN $4 ELSE ended_at END
                WHERE id = $1 AND state = $2
                """,
                stream_id,
                current.state.value,
                target.value,
                now,
            )
            if status == "UPDATE 1":
                return await self.get(stream_id)
            # Somebody else moved it first: re-read and judge the event against the new state.

    async def _end(self, stream_id: StreamId, state: StreamState, now: dt.datetime) -> bool:
        """End the stream if it is still in ``state``; its ``ended_at`` agrees with the commit
        order of its gifts (ledger/batcher.py): the row lock waits for the gift batches that
        found it live (they share-lock it until COMMIT), and the end is dated no earlier than
        any of their gifts, whose time may have been read after ``now`` was."""
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "SELECT state FROM streams WHERE id = $1 FOR UPDATE", stream_id)
            if found != state.value:
                return False
            # A new statement: its snapshot sees the gifts committed while the lock waited.
            await conn.execute(
                """
                UPDATE streams SET state = 'ended', ended_at = greatest($2::timestamptz,
                    (SELECT max(created_at) FROM gifts WHERE stream_id = $1))
                WHERE id = $1
                """,
                stream_id, now)
        return True


@dataclass(frozen=True)
class ChatSettings:
    slow_mode_s: int
    blocked_words: list[str]


@dataclass(frozen=True)
class SanctionRecord:
    user_id: UserId
    username: str
    kind: SanctionKind
    expires_at: dt.datetime | None
    reason: str


class PostgresChat:
    """Chat settings per stream, sanctions per creator, and the moderation log."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def settings(self, stream_id: StreamId) -> ChatSettings:
        row = await self._pool.fetchrow(
            "SELECT slow_mode_s, blocked_words FROM chat_settings WHERE stream_id = $1", stream_id
        )
        if row is None:
            return ChatSettings(0, [])
        return ChatSettings(row["slow_mode_s"], list(row["blocked_words"]))

    async def save_settings(
        self, stream_id: StreamId, settings: ChatSettings, *, actor_id: UserId, now: dt.datetime
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO chat_settings (stream_id, slow_mode_s, blocked_words, updated_by,
                                           updated_at)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (stream_id) DO UPDATE SET
                    slow_mode_s = EXCLUDED.slow_mode_s, blocked_words = EXCLUDED.blocked_words,
                    updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at
                """,
                stream_id, settings.slow_mode_s, settings.blocked_words, actor_id, now,
            )
            await self._log(conn, stream_id, actor_id, "settings", None, None,
                            {"slow_mode_s": settings.slow_mode_s,
                             "blocked_words": len(settings.blocked_words)}, now)

    async def sanctions(self, creator_id: UserId, now: dt.datetime) -> list[SanctionRecord]:
        rows = await self._pool.fetch(
            """
            SELECT s.user_id, u.username, s.kind, s.expires_at, s.reason
            FROM chat_sanctions s JOIN users u ON u.id = s.user_id
            WHERE s.creator_id = $1 AND (s.expires_at IS NULL OR s.expires_at > $2)
            ORDER BY s.created_at, s.user_id
            """,
            creator_id, now,
        )
        return [
            SanctionRecord(UserId(r["user_id"]), r["username"], SanctionKind(r["kind"]),
                           r["expires_at"], r["reason"])
            for r in rows
        ]

    async def sanction(
        self, stream: Stream, user_id: UserId, kind: SanctionKind, *,
        expires_at: dt.datetime | None, reason: str, actor_id: UserId, now: dt.datetime,
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                INSERT INTO chat_sanctions (creator_id, user_id, kind, expires_at, reason,
                                            created_by, created_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (creator_id, user_id) DO UPDATE SET
                    kind = EXCLUDED.kind, expires_at = EXCLUDED.expires_at,
                    reason = EXCLUDED.reason, created_by = EXCLUDED.created_by,
                    created_at = EXCLUDED.created_at
                """,
                stream.creator_id, user_id, kind.value, expires_at, reason, actor_id, now,
            )
            await self._log(conn, stream.id, actor_id, kind.value, user_id, None,
                            {"reason": reason, "expires_at": None if expires_at is None
                             else expires_at.isoformat()}, now)

    async def lift(self, stream: Stream, user_id: UserId, *, actor_id: UserId,
                   now: dt.datetime) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM chat_sanctions WHERE creator_id = $1 AND user_id = $2",
                stream.creator_id, user_id,
            )
            if status == "DELETE 0":
                raise NotFound("That user has no sanction here.", code="sanction_not_found")
            await self._log(conn, stream.id, actor_id, "lift", user_id, None, {}, now)

    async def log_removal(self, stream_id: StreamId, message_id: Any, *, actor_id: UserId,
                          now: dt.datetime) -> None:
        await self._log(self._pool, stream_id, actor_id, "remove_message", None, message_id,
                        {}, now)

    @staticmethod
    async def _log(conn: Any, stream_id: StreamId, actor_id: UserId, action: str,
                   target: UserId | None, message_id: Any, details: dict[str, Any],
                   now: dt.datetime) -> None:
        await conn.execute(
            """
            INSERT INTO chat_moderation_log
                (stream_id, actor_id, action, target_user_id, message_id, details, at)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
            """,
            stream_id, actor_id, action, target, message_id, orjson.dumps(details).decode(), now,
        )
