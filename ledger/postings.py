"""Writing one ledger transfer outside the gift hot path: purchases, reversals, payouts.

The caller holds a transaction. It locks the accounts it will move (:func:`lock`, in id order,
the one global lock order of the ledger, see ``ledger/batcher.py``), decides the amounts from
their balances, then writes the transfer, its entries (one statement: the database checks they
sum to zero) and the new balances with :func:`write`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

SYSTEM_KINDS = ("platform", "promotions", "sales", "payouts_pending", "payouts_paid")


async def system_accounts(conn: Any) -> dict[str, int]:
    rows = await conn.fetch("SELECT kind, id FROM ledger_accounts WHERE owner_id IS NULL")
    return {row["kind"]: row["id"] for row in rows}


async def user_account(conn: Any, kind: str, owner_id: uuid.UUID) -> int:
    """The id of a user's account of ``kind``, created when missing."""
    found = await conn.fetchval(
        "SELECT id FROM ledger_accounts WHERE kind = $1 AND owner_id = $2", kind, owner_id)
    if found is not None:
        return int(found)
    await conn.execute(
        "INSERT INTO ledger_accounts (kind, owner_id) VALUES ($1, $2)"
        " ON CONFLICT (kind, owner_id) DO NOTHING", kind, owner_id)
    return int(await conn.fetchval(
        "SELECT id FROM ledger_accounts WHERE kind = $1 AND owner_id = $2", kind, owner_id))


async def lock(conn: Any, account_ids: list[int]) -> dict[int, int]:
    """Lock the accounts in id order until the end of the transaction; their balances."""
    rows = await conn.fetch(
        "SELECT id, balance FROM ledger_accounts WHERE id = ANY($1::bigint[])"
        " ORDER BY id FOR NO KEY UPDATE", sorted(set(account_ids)))
    return {row["id"]: row["balance"] for row in rows}


async def write(conn: Any, *, transfer_id: uuid.UUID, kind: str, legs: dict[int, int],
                now: dt.datetime, purchase_id: uuid.UUID | None = None,
                payout_id: uuid.UUID | None = None, memo: str = "",
                actor_id: uuid.UUID | None = None) -> None:
    """Write a transfer moving ``legs`` (account id -> signed amount, summing to zero) on
    accounts the caller has locked. Zero legs are left out."""
    legs = {account: amount for account, amount in legs.items() if amount}
    if sum(legs.values()) != 0:
        raise ValueError(f"transfer legs do not sum to zero: {legs}")
    if not legs:
        return
    accounts = sorted(legs)
    await conn.execute(
        "INSERT INTO ledger_transfers (id, kind, memo, actor_id, created_at, purchase_id,"
        " payout_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        transfer_id, kind, memo, actor_id, now, purchase_id, payout_id)
    await conn.execute(
        """
        WITH moved AS (
            UPDATE ledger_accounts a SET balance = a.balance + m.amount
            FROM unnest($2::bigint[], $3::bigint[]) AS m(id, amount)
            WHERE a.id = m.id
        )
        INSERT INTO ledger_entries (transfer_id, account_id, amount)
        SELECT $1, m.id, m.amount FROM unnest($2::bigint[], $3::bigint[]) AS m(id, amount)
        """,
        transfer_id, accounts, [legs[a] for a in accounts])
