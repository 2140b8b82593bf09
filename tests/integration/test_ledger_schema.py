"""What 0005_gift_hot_path.sql traded: per-row foreign keys of the gift hot path replaced by a
per-statement check (an entry's transfer, also audited) or by `livecore audit verify` checks
(a gift's sender, creator and transfer), each shown to catch what the foreign key caught."""

import datetime as dt
import uuid

import asyncpg
import pytest

from ledger.audit import verify_postgres
from ledger.batcher import GiftBatcher, GiftOrder
from tests.support import seed_live_stream


async def _gifted(url: str) -> asyncpg.Pool:
    """A database with three committed gifts, one transfer each."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    creator, viewer, stream = await seed_live_stream(pool, coins=100)
    batcher = GiftBatcher(pool, clock=lambda: dt.datetime.now(dt.UTC))
    await batcher.start()
    for price in (3, 4, 5):
        await batcher.send(GiftOrder(uuid.uuid4(), viewer, stream, creator, "rose", price,
                                     price, price - price // 2, price // 2))
    await batcher.stop()
    return pool


async def _failing(pool: asyncpg.Pool) -> dict[str, int]:
    return {c.name: c.failures for c in await verify_postgres(pool) if not c.ok}


async def test_entries_naming_a_missing_transfer_are_refused(fresh_database):
    pool = await _gifted(fresh_database)
    try:
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="does not exist"):
                await conn.execute(
                    "INSERT INTO ledger_entries (transfer_id, account_id, amount)"
                    " SELECT $1, id, CASE WHEN kind = 'platform' THEN 5 ELSE -5 END"
                    " FROM ledger_accounts WHERE kind IN ('platform', 'promotions')",
                    uuid.uuid4())
            # The same statement is accepted once its transfer exists (and sums to zero).
            async with conn.transaction():
                transfer = uuid.uuid4()
                await conn.execute("INSERT INTO ledger_transfers (id, kind, created_at)"
                                   " VALUES ($1, 'grant', now())", transfer)
                await conn.execute(
                    "INSERT INTO ledger_entries (transfer_id, account_id, amount)"
                    " SELECT $1, id, CASE WHEN kind = 'platform' THEN 5 ELSE -5 END"
                    " FROM ledger_accounts WHERE kind IN ('platform', 'promotions')",
                    transfer)
                await conn.execute(
                    "UPDATE ledger_accounts SET balance = balance"
                    " + CASE WHEN kind = 'platform' THEN 5 ELSE -5 END"
                    " WHERE kind IN ('platform', 'promotions')")
        assert await _failing(pool) == {}
    finally:
        await pool.close()


async def test_audit_catches_what_the_dropped_gift_foreign_keys_caught(fresh_database):
    pool = await _gifted(fresh_database)
    try:
        assert await _failing(pool) == {}
        stranger = uuid.uuid4()  # no such user
        # Hand-written damage, past the append-only trigger (the audit is for what slips by).
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("ALTER TABLE gifts DISABLE TRIGGER gifts_append_only")
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM gifts ORDER BY id")]
            await conn.execute("UPDATE gifts SET sender_id = $2 WHERE id = $1", ids[0],
                               stranger)
            await conn.execute("UPDATE gifts SET creator_id = $2 WHERE id = $1", ids[1],
                               stranger)
            await conn.execute("UPDATE gifts SET transfer_id = $2 WHERE id = $1", ids[2],
                               uuid.uuid4())
            await conn.execute("ALTER TABLE gifts ENABLE TRIGGER gifts_append_only")
            await conn.execute("ALTER TABLE ledger_entries DISABLE TRIGGER"
                               " ledger_entries_append_only")
            await conn.execute("UPDATE ledger_entries SET transfer_id = $1 WHERE id ="
                               " (SELECT max(id) FROM ledger_entries)", uuid.uuid4())
            await conn.execute("ALTER TABLE ledger_entries ENABLE TRIGGER"
                               " ledger_entries_append_only")
        failing = await _failing(pool)
        assert failing["gifts_debit_sender_wallet"] == 1
        assert failing["gifts_creator_is_streams"] == 1
        assert failing["gifts_name_real_transfers"] == 1
        assert failing["entries_name_real_transfers"] == 1
        # The debit of the re-pointed gift no longer names that gift's transfer either.
        assert failing["entries_name_real_gifts"] == 1
    finally:
        await pool.close()
