"""`livecore audit verify`'s money-in and money-out checks catch what they claim to, on a
database of the test's own (it is damaged on purpose)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import asyncpg

from ledger.audit import verify_postgres
from ledger.batcher import GiftBatcher, GiftOrder
from ledger.payments import Purchases
from ledger.payouts import Payouts
from ledger.providers import TestProvider
from livecore.accounts import Account, Role
from livecore.ids import UserId
from livecore.settings import Settings


def _failed(results: list) -> set[str]:
    return {r.name for r in results if not r.ok}


async def test_money_checks_catch_double_credits_wrong_reversals_and_lost_diamonds(
        fresh_database: str) -> None:
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=4)
    try:
        now = dt.datetime.now(dt.UTC)
        buyer, creator = uuid.uuid4(), uuid.uuid4()
        await pool.executemany(
            "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
            " VALUES ($1, $2, 'x', '1990-01-01', $3, now())",
            [(buyer, "buyer1", ["viewer"]), (creator, "creator1", ["viewer", "creator"])])
        settings = dataclasses.replace(Settings(), payout_min_diamonds=10)
        provider = TestProvider()
        purchases = Purchases(pool, provider, settings, lambda: now)
        payouts = Payouts(pool, provider, settings, lambda: now)
        account = Account(UserId(buyer), "buyer1", frozenset({Role.VIEWER}),
                          dt.date(1990, 1, 1), now)
        bought, _ = await purchases.create(account, purchase_id=uuid.uuid4(), slug="coins-70",
                                           method="checkout", success_url="/", cancel_url="/")
        await purchases.complete_test_payment(account, bought.id, paid=True)
        # Diamonds for the creator, as a gift batch would give them (a gift row and its
        # transfer are what "earned" is computed from).
        stream = uuid.uuid4()
        await pool.execute(
            "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state,"
            " started_at) VALUES ($1, $2, 't', 'k', now(), 'live', now())", stream, creator)
        await pool.execute("INSERT INTO gift_types VALUES ('rose', 'Rose', 1, true, 'r', true,"
                           " now())")
        batcher = GiftBatcher(pool, clock=lambda: now)
        await batcher.start()
        await batcher.send(GiftOrder(uuid.uuid4(), buyer, stream, creator, "rose", 40, 40, 40,
                                     0))
        await batcher.stop()
        await payouts.set_account(creator, "acct_1Audit")
        payout, _ = await payouts.request(creator, uuid.uuid4(), 30)
        assert payout.status == "paid"
        assert _failed(await verify_postgres(pool)) == set()

        # A second credit of the same purchase (written by hand: the code cannot).
        await pool.execute("DROP INDEX ledger_one_credit_per_purchase")
        system = await pool.fetchval("SELECT id FROM ledger_accounts WHERE kind = 'sales'")
        wallet = await pool.fetchval(
            "SELECT id FROM ledger_accounts WHERE kind = 'wallet' AND owner_id = $1", buyer)
        await pool.execute("""
            WITH t AS (INSERT INTO ledger_transfers (id, kind, created_at, purchase_id)
                       VALUES (gen_random_uuid(), 'purchase', now(), $1) RETURNING id)
            INSERT INTO ledger_entries (transfer_id, account_id, amount)
            SELECT t.id, x.account, x.amount FROM t, (VALUES ($2::bigint, -70::bigint),
                                                              ($3::bigint, 70::bigint)) AS x
                                                     (account, amount)
        """, bought.id, system, wallet)
        await pool.execute("UPDATE ledger_accounts SET balance = balance - 70 WHERE id = $1",
                           system)
        await pool.execute("UPDATE ledger_accounts SET balance = balance + 70 WHERE id = $1",
                           wallet)
        assert _failed(await verify_postgres(pool)) == {
            "purchases_credited_once", "purchase_coins_match", "coins_sold_match_purchases"}

        # A refund the ledger never reversed.
        await pool.execute("UPDATE purchases SET refunded_minor = 99 WHERE id = $1", bought.id)
        assert "purchase_coins_match" in _failed(await verify_postgres(pool))

        # A paid payout whose diamonds went back to the creator as well.
        await pool.execute("UPDATE payouts SET status = 'failed' WHERE id = $1", payout.id)
        failed = _failed(await verify_postgres(pool))
        assert {"payout_accounts_match", "payouts_two_phase", "earnings_add_up"} <= failed
    finally:
        await pool.close()
