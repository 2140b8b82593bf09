"""`livecore audit verify` over a database of its own, healthy and then damaged."""

import datetime as dt
import uuid

import asyncpg
import redis.asyncio as aioredis

from ledger.batcher import GiftBatcher, GiftOrder
from ledger.projection import RedisProjection
from tests.processes import environment, run
from tests.support import seed_live_stream


async def _fill(url, redis_url, prefix):
    """A live stream with a few committed (and projected) gifts."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    creator, viewer, stream = await seed_live_stream(pool, coins=100)
    batcher = GiftBatcher(pool, clock=lambda: dt.datetime.now(dt.UTC))
    await batcher.start()
    client = aioredis.from_url(redis_url)
    projection = RedisProjection(client, prefix)
    for price in (3, 4, 5):
        outcome = await batcher.send(GiftOrder(uuid.uuid4(), viewer, stream, creator, "rose",
                                               price, price, price - price // 2, price // 2))
        await projection.apply(gift_id=outcome.order.gift_id, stream_id=stream,
                               creator_id=creator, sender_id=viewer, coins=price,
                               at=outcome.created_at)
    await batcher.stop()
    await client.aclose()
    return pool, stream


async def test_audit_verify_passes_then_catches_damage(fresh_database, backend):
    prefix = f"{backend.redis_prefix}audit:"
    pool, stream = await _fill(fresh_database, backend.redis_url, prefix)
    env = environment(DATABASE_URL=fresh_database, REDIS_URL=backend.redis_url,
                      LIVECORE_REDIS_PREFIX=prefix)
    try:
        done = run(["audit", "verify"], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "All invariants hold." in done.stdout

        # Damage the projection, and a balance (balances are not append-only).
        client = aioredis.from_url(backend.redis_url)
        await client.delete(f"{prefix}proj:stream:{{{stream}}}:totals")
        await client.aclose()
        await pool.execute("UPDATE ledger_accounts SET balance = balance + 1"
                           " WHERE kind = 'earnings'")
        done = run(["audit", "verify"], env)
        assert done.returncode == 1
        # (A creator's earnings no longer add up to what their gifts earned, either.)
        assert ("FAILED: balances_match_entries, earnings_add_up, redis_matches_postgres"
                in done.stdout)

        # The projection can be repaired from the ledger; the balance cannot (and must not).
        done = run(["audit", "verify", "--repair-redis"], env)
        assert done.returncode == 1
        assert "FAILED: balances_match_entries, earnings_add_up" in done.stdout
        assert "redis_matches_postgres" not in done.stdout.split("FAILED:")[1]

        # A second debit for a gift (a balanced transfer of its own): applied twice.
        await pool.execute("""
            WITH t AS (INSERT INTO ledger_transfers (id, kind, created_at)
                       VALUES (gen_random_uuid(), 'grant', now()) RETURNING id),
                 g AS (SELECT id FROM gifts LIMIT 1),
                 a AS (SELECT id FROM ledger_accounts WHERE kind = 'wallet' LIMIT 1)
            INSERT INTO ledger_entries (transfer_id, account_id, amount, gift_id)
            SELECT t.id, a.id, x.amount, CASE WHEN x.amount < 0 THEN g.id END
            FROM t, g, a, (VALUES (-1), (1)) AS x (amount)
        """)
        done = run(["audit", "verify"], env)
        assert done.returncode == 1
        failed = done.stdout.split("FAILED:")[1]
        assert "gifts_applied_once" in failed and "entries_name_real_gifts" in failed
    finally:
        await pool.close()
