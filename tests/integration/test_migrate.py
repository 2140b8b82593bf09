"""Migrations: ordered, recorded, idempotent, safe to run concurrently, tamper-evident."""

import asyncio
import secrets

import asyncpg
import pytest

from ledger import migrate as migrations
from ledger.migrate import Migration, MigrationError, load_migrations, migrate


def test_migration_files_are_numbered_in_order():
    found = load_migrations()
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name == "0001_accounts_streams.sql"


async def test_migrate_applies_once_and_records(empty_database):
    conn = await asyncpg.connect(empty_database)
    try:
        first = await migrate(conn)
        assert first == [m.name for m in load_migrations()]
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["checksum"]) for r in rows] == [
            (m.version, m.checksum) for m in load_migrations()
        ]
        assert await conn.fetchval("SELECT to_regclass('streams')::text") == "streams"
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(empty_database):
    conns = [await asyncpg.connect(empty_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in load_migrations())
    finally:
        for conn in conns:
            await conn.close()


async def test_a_changed_migration_is_refused(empty_database, monkeypatch):
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate(conn)
        original = load_migrations()
        tampered = [Migration(original[0].version, original[0].name, original[0].sql + "\n-- edit")]
        monkeypatch.setattr(migrations, "load_migrations", lambda: tampered + original[1:])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(empty_database, monkeypatch):
    conn = await asyncpg.connect(empty_database)
    try:
        broken = load_migrations() + [
            Migration("9999", "9999_broken.sql", "CREATE TABLE half_done (id int); SELECT 1/0;")
        ]
        monkeypatch.setattr(migrations, "load_migrations", lambda: broken)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        versions = await conn.fetch("SELECT version FROM schema_migrations")
        assert "9999" not in [r["version"] for r in versions]
        # The lock was released: another run can proceed.
        monkeypatch.setattr(migrations, "load_migrations", lambda: broken[:-1])
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_the_database_enforces_the_account_and_stream_rules(backend):
    import datetime as dt
    import uuid

    conn = await asyncpg.connect(backend.database_url)
    now = dt.datetime.now(dt.UTC)
    try:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO users VALUES ($1, 'UPPER', 'h', '1990-01-01', '{viewer}', $2)",
                uuid.uuid4(), now,
            )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO users VALUES ($1, 'nobody', 'h', '1990-01-01', '{wizard}', $2)",
                uuid.uuid4(), now,
            )
        user = uuid.uuid4()
        await conn.execute(
            "INSERT INTO users VALUES ($1, $2, 'h', '1990-01-01', '{viewer,creator}', $3)",
            user, f"db{user.hex[:10]}", now,
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state)"
                " VALUES ($1, $2, 't', $3, $4, 'live')",
                uuid.uuid4(), user, secrets.token_hex(8), now,
            )
    finally:
        await conn.close()
