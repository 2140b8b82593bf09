"""Schema migrations: plain SQL files applied in order, each in its own transaction.

Why not an ORM's migration tool: the ledger's guarantees (append-only journal, balances that
can never go negative) live in the SQL itself, so the SQL is the thing we review and apply.

Rules:

* ``ledger/migrations/NNNN_name.sql`` files are applied in ``NNNN`` order; each file runs in
  one transaction together with the row that records it in ``schema_migrations``, so a failed
  migration leaves nothing behind and is retried whole next time.
* A session-level advisory lock serialises concurrent runs (two ``release`` processes, or a
  ``serve`` starting while ``migrate`` runs): the second waits, then finds nothing to do.
* The SHA-256 of each applied file is recorded; if an applied file later changes, migrating
  stops with an error instead of silently diverging from what production ran.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from livecore.errors import ServerError

log = logging.getLogger(__name__)

#: Key of the advisory lock (an arbitrary constant: "LCMIGRAT" in ASCII).
MIGRATION_LOCK_KEY = 0x4C434D4947524154
_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(ServerError):
    default_code = "migration_failed"


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The migration files shipped in this package, in order."""
    found = []
    for entry in resources.files("ledger").joinpath("migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match is None:
            continue
        found.append(Migration(match.group(1), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"Two migration files share a version number: {versions}")
    return found


async def migrate(conn: Any) -> list[str]:
    """Apply every pending migration on ``conn`` (an asyncpg connection); return their names."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    text PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {row["version"]: row for row in rows}
        for migration in load_migrations():
            done = applied.get(migration.version)
            if done is not None:
                if done["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"Migration {migration.name} was changed after it was applied "
                        f"(as {done['name']}); write a new migration instead."
                    )
                continue
            log.info("applying migration", extra={"migration": migration.name})
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now
