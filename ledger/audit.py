"""Ledger invariants, checked over the whole database (``livecore audit verify``).

Each check is one query that returns the offending rows (at most :data:`SAMPLE` of them, and
their count), so a report says what is wrong and where, not only that something is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ledger.projection import RedisProjection

log = logging.getLogger(__name__)

SAMPLE = 5


@dataclass
class CheckResult:
    name: str
    description: str
    failures: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failures == 0


_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("transfers_balance", "every transfer's entries sum to zero",
     "SELECT transfer_id::text AS what FROM ledger_entries GROUP BY transfer_id"
     " HAVING sum(amount) <> 0"),
    ("no_negative_wallets",
     "no wallet, earnings, platform or payouts balance below zero; no debt above zero",
     "SELECT kind || ' ' || coalesce(owner_id::text, '') || ' = ' || balance AS what"
     " FROM ledger_accounts WHERE (kind IN ('wallet', 'earnings', 'platform',"
     " 'payouts_pending', 'payouts_paid') AND balance < 0) OR (kind = 'debt' AND balance > 0)"),
    ("balances_match_entries", "every balance equals the sum of its account's entries",
     "SELECT a.kind || ' ' || coalesce(a.owner_id::text, '') || ': balance ' || a.balance"
     " || ', entries ' || coalesce(e.total, 0) AS what FROM ledger_accounts a"
     " LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries"
     " GROUP BY account_id) e ON e.account_id = a.id WHERE a.balance <> coalesce(e.total, 0)"),
    ("gifts_applied_once", "every gift is debited exactly once, for its price",
     "SELECT g.id::text || ': ' || coalesce(e.n, 0) || ' debit(s)' AS what FROM gifts g"
     " LEFT JOIN (SELECT gift_id, count(*) AS n, sum(amount) AS total FROM ledger_entries"
     " WHERE gift_id IS NOT NULL GROUP BY gift_id) e ON e.gift_id = g.id"
     " WHERE coalesce(e.n, 0) <> 1 OR coalesce(e.total, 0) <> -g.price"),
    ("entries_name_real_gifts", "every gift entry belongs to a gift of its transfer",
     "SELECT e.id::text AS what FROM ledger_entries e LEFT JOIN gifts g ON g.id = e.gift_id"
     " WHERE e.gift_id IS NOT NULL AND (g.id IS NULL OR g.transfer_id <> e.transfer_id)"),
    # The next four check what the foreign keys dropped by 0005_gift_hot_path.sql guaranteed
    # (a gift's sender, creator and transfer, an entry's transfer, exist).
    ("entries_name_real_transfers", "every entry belongs to an existing transfer",
     "SELECT e.id::text AS what FROM ledger_entries e LEFT JOIN ledger_transfers t"
     " ON t.id = e.transfer_id WHERE t.id IS NULL"),
    ("gifts_debit_sender_wallet", "every gift's debit is on its sender's wallet",
     "SELECT g.id::text AS what FROM gifts g JOIN ledger_entries e ON e.gift_id = g.id"
     " JOIN ledger_accounts a ON a.id = e.account_id"
     " WHERE a.kind <> 'wallet' OR a.owner_id IS DISTINCT FROM g.sender_id"),
    ("gifts_creator_is_streams", "every gift's creator is its stream's creator",
     "SELECT g.id::text AS what FROM gifts g LEFT JOIN streams s ON s.id = g.stream_id"
     " WHERE s.creator_id IS DISTINCT FROM g.creator_id"),
    ("gifts_name_real_transfers", "every gift belongs to an existing gift batch transfer",
     "SELECT g.id::text AS what FROM gifts g LEFT JOIN ledger_transfers t"
     " ON t.id = g.transfer_id WHERE t.kind IS DISTINCT FROM 'gift_batch'"),
    ("split_adds_up", "creator share + platform cut = price, for every gift",
     "SELECT id::text AS what FROM gifts WHERE creator_share + platform_cut <> price"),
    ("gift_batches_credit_shares",
     "each gift batch credits creators and the platform exactly the gifts' shares and cuts",
     "SELECT t.id::text AS what FROM ledger_transfers t"
     " JOIN (SELECT transfer_id, sum(price) AS price FROM gifts GROUP BY transfer_id) g"
     " ON g.transfer_id = t.id"
     " JOIN (SELECT transfer_id, sum(amount) FILTER (WHERE amount > 0) AS credits"
     " FROM ledger_entries GROUP BY transfer_id) e ON e.transfer_id = t.id"
     " WHERE t.kind = 'gift_batch' AND g.price <> e.credits"),
    # Money in (docs/payments.md).
    ("purchases_credited_once",
     "each purchase is credited once if paid, never otherwise, and only purchases are",
     "SELECT coalesce(p.id, t.purchase_id)::text || ': ' || coalesce(p.status, 'no purchase')"
     " || ', ' || coalesce(t.n, 0) || ' credit(s)' AS what FROM purchases p"
     " FULL JOIN (SELECT purchase_id, count(*) AS n FROM ledger_transfers"
     " WHERE kind = 'purchase' GROUP BY purchase_id) t ON t.purchase_id = p.id"
     " WHERE p.id IS NULL OR coalesce(t.n, 0) <> CASE WHEN p.status = 'paid' THEN 1 ELSE 0 END"),
    ("purchase_coins_match",
     "each purchase's transfers move its coins less those reversed, and the reversals match "
     "its refunds and disputes",
     "SELECT p.id::text || ': sales moved ' || coalesce(-m.moved, 0) || ', expected '"
     " || (p.coins - p.coins_reversed) AS what FROM purchases p"
     " LEFT JOIN (SELECT t.purchase_id, sum(e.amount) AS moved FROM ledger_transfers t"
     " JOIN ledger_entries e ON e.transfer_id = t.id JOIN ledger_accounts a"
     " ON a.id = e.account_id AND a.kind = 'sales' WHERE t.purchase_id IS NOT NULL"
     " GROUP BY t.purchase_id) m ON m.purchase_id = p.id"
     " WHERE coalesce(-m.moved, 0) <> CASE WHEN p.status = 'paid'"
     " THEN p.coins - p.coins_reversed ELSE 0 END"
     " OR p.coins_reversed <> CASE WHEN p.status <> 'paid' THEN 0 ELSE"
     " (p.coins::bigint * least(p.amount_minor, p.refunded_minor + CASE WHEN p.dispute_status"
     " IN ('open', 'lost') THEN p.dispute_minor ELSE 0 END) + p.amount_minor - 1)"
     " / p.amount_minor END"),
    ("coins_sold_match_purchases",
     "coins sold (minus the sales balance) = coins of paid purchases minus their reversals",
     "SELECT 'sales ' || -s.balance || ', purchases ' || p.net AS what"
     " FROM (SELECT balance FROM ledger_accounts WHERE kind = 'sales') s,"
     " (SELECT coalesce(sum(coins - coins_reversed), 0) AS net FROM purchases"
     " WHERE status = 'paid') p WHERE -s.balance <> p.net"),
    # Money out.
    ("earnings_add_up",
     "for every creator, diamonds earned from gifts = available + pending + paid out",
     "WITH earned AS (SELECT creator_id AS id, sum(creator_share) AS diamonds FROM gifts"
     " GROUP BY creator_id),"
     " held AS (SELECT owner_id AS id, balance FROM ledger_accounts WHERE kind = 'earnings'),"
     " out AS (SELECT creator_id AS id, sum(diamonds) AS diamonds FROM payouts"
     " WHERE status IN ('pending', 'paid') GROUP BY creator_id)"
     " SELECT id::text || ': earned ' || coalesce(earned.diamonds, 0) || ', available '"
     " || coalesce(held.balance, 0) || ', paid or pending ' || coalesce(out.diamonds, 0) AS what"
     " FROM earned FULL JOIN held USING (id) FULL JOIN out USING (id)"
     " WHERE coalesce(earned.diamonds, 0)"
     " <> coalesce(held.balance, 0) + coalesce(out.diamonds, 0)"),
    ("payout_accounts_match",
     "the pending and paid payout accounts hold exactly the pending and paid payouts",
     "SELECT a.kind || ' ' || a.balance || ', payouts ' || coalesce(p.diamonds, 0) AS what"
     " FROM ledger_accounts a LEFT JOIN (SELECT 'payouts_' || status AS kind,"
     " sum(diamonds) AS diamonds FROM payouts GROUP BY status) p ON p.kind = a.kind"
     " WHERE a.kind IN ('payouts_pending', 'payouts_paid')"
     " AND a.balance <> coalesce(p.diamonds, 0)"),
    ("payouts_two_phase",
     "each payout is reserved once, then posted once if paid or voided once if failed",
     "SELECT p.id::text || ' ' || p.status || ': ' || coalesce(t.kinds, 'no transfers') AS what"
     " FROM payouts p LEFT JOIN (SELECT payout_id, string_agg(kind, ',' ORDER BY kind) AS kinds"
     " FROM ledger_transfers WHERE payout_id IS NOT NULL GROUP BY payout_id) t"
     " ON t.payout_id = p.id WHERE coalesce(t.kinds, '') <> CASE p.status"
     " WHEN 'pending' THEN 'payout_reserve' WHEN 'paid' THEN 'payout_post,payout_reserve'"
     " ELSE 'payout_reserve,payout_void' END"),
)


#: The tables the checks read; their planner statistics are refreshed first.
_TABLES = ("ledger_accounts", "ledger_transfers", "ledger_entries", "gifts", "streams",
           "purchases", "payouts")


async def verify_postgres(pool: Any, *, analyze: bool = True) -> list[CheckResult]:
    """Run every check. With ``analyze`` (the default), the tables' planner statistics are
    refreshed first: right after a bulk load they can be so far off that a check's join is
    planned as a nested loop over millions of rows (minutes instead of a second)."""
    if analyze:
        try:
            await pool.execute(f"ANALYZE {', '.join(_TABLES)}")
        except asyncpg.PostgresError as exc:  # a read-only replica, or no privilege
            log.warning("audit: statistics not refreshed", extra={"error": repr(exc)})
    results = []
    for name, description, query in _CHECKS:
        rows = await pool.fetch(f"SELECT what, count(*) OVER () AS n FROM ({query}) q"
                                f" LIMIT {SAMPLE}")
        result = CheckResult(name, description)
        if rows:
            result.failures = int(rows[0]["n"])
            result.examples = [str(r["what"]) for r in rows]
        results.append(result)
    return results


async def verify_projection(pool: Any, projection: RedisProjection) -> CheckResult:
    """Redis equals PostgreSQL for every live stream: totals, the stream's board and goal
    progress, and its creator's all-time and current-week boards."""
    result = CheckResult("redis_matches_postgres",
                         "live streams' Redis totals, boards and goals equal the ledger's")
    for row in await pool.fetch("SELECT id FROM streams WHERE state = 'live' ORDER BY id"):
        difference = await projection.reconcile(pool, row["id"], repair=False)
        if difference is not None:
            result.failures += 1
            if len(result.examples) < SAMPLE:
                result.examples.append(
                    f"{row['id']}: {', '.join(difference.parts)} differ; redis "
                    f"{difference.redis.coins} coins / {difference.redis.gifts} gifts, ledger "
                    f"{difference.postgres.coins} / {difference.postgres.gifts}")
    return result
