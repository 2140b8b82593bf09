"""Finance: the journal, balances, per-stream statements, reconciliation, CSV export.

Read-only, for the ``finance`` and ``admin`` roles. The CSV export streams rows from a
server-side cursor, so a million rows never sit in memory.

Filters and batches: a gift batch credits each creator and the platform once for all its
gifts, which may span many streams. So the ``stream_id`` filter yields the senders' debits for
that stream's gifts (each names its gift), and ``creator_id`` those debits plus the credits to
the creator's earnings account; a stream's settlement (share and cut) is the statement
endpoint's job.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import logging
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.api import Call, QueryParam, Route
from gateway.http import json_response
from ledger.audit import verify_postgres, verify_projection
from ledger.reconciler import last_report
from livecore.accounts import Permission
from livecore.errors import BadRequest
from livecore.ids import StreamId, parse_stream_id
from livecore.pagination import decode_cursor, encode_cursor, parse_limit
from livecore.schemas import UUID, Schema
from livecore.times import iso_time

log = logging.getLogger(__name__)

CSV_BATCH_ROWS = 1000
#: The last line of an export that failed after it started (then the connection is cut).
INCOMPLETE_MARKER = "# export incomplete"
_KINDS = ("wallet", "earnings", "platform", "promotions", "sales", "debt", "payouts_pending",
          "payouts_paid")
_TRANSFER_KINDS = ("gift_batch", "grant", "purchase", "reversal", "reinstatement",
                   "debt_settlement", "payout_reserve", "payout_post", "payout_void")

_JOURNAL_SELECT = """
    SELECT e.id, e.transfer_id, t.kind AS transfer_kind, t.created_at, t.memo,
           a.kind AS account_kind, a.owner_id, e.amount, e.gift_id,
           g.stream_id, g.creator_id, g.sender_id, g.gift_slug, t.purchase_id, t.payout_id
    FROM ledger_entries e
    JOIN ledger_transfers t ON t.id = e.transfer_id
    JOIN ledger_accounts a ON a.id = e.account_id
    LEFT JOIN gifts g ON g.id = e.gift_id
    WHERE ($1::text IS NULL OR a.kind = $1)
      AND ($2::uuid IS NULL OR a.owner_id = $2)
      AND ($3::uuid IS NULL OR g.stream_id = $3)
      AND ($4::uuid IS NULL OR g.creator_id = $4
           OR (a.kind = 'earnings' AND a.owner_id = $4))
      AND ($5::timestamptz IS NULL OR t.created_at >= $5)
      AND ($6::timestamptz IS NULL OR t.created_at < $6)
      AND ($7::bigint IS NULL OR e.id < $7)
    ORDER BY e.id DESC
"""
_COLUMNS = ("entry_id", "transfer_id", "transfer_kind", "created_at", "account_kind",
            "owner_id", "amount", "gift_id", "stream_id", "creator_id", "sender_id", "gift",
            "purchase_id", "payout_id", "memo")

ENTRY: Schema = {
    "type": "object",
    "properties": {
        "entry_id": {"type": "integer"}, "transfer_id": UUID,
        "transfer_kind": {"enum": list(_TRANSFER_KINDS)},
        "created_at": {"type": "string", "format": "date-time"},
        "account_kind": {"enum": list(_KINDS)},
        "owner_id": {"type": ["string", "null"]}, "amount": {"type": "integer"},
        "gift_id": {"type": ["string", "null"]}, "stream_id": {"type": ["string", "null"]},
        "creator_id": {"type": ["string", "null"]}, "sender_id": {"type": ["string", "null"]},
        "gift": {"type": ["string", "null"]}, "purchase_id": {"type": ["string", "null"]},
        "payout_id": {"type": ["string", "null"]}, "memo": {"type": "string"},
    },
    "required": list(_COLUMNS),
}
JOURNAL: Schema = {
    "type": "object",
    "properties": {"entries": {"type": "array", "items": ENTRY},
                   "next_cursor": {"type": ["string", "null"]}},
    "required": ["entries", "next_cursor"],
}
STATEMENT: Schema = {
    "type": "object",
    "properties": {
        "stream_id": UUID, "creator_id": UUID, "title": {"type": "string"},
        "gifts": {"type": "integer"}, "senders": {"type": "integer"},
        "gross_coins": {"type": "integer"}, "creator_share": {"type": "integer"},
        "platform_cut": {"type": "integer"},
        "first_gift_at": {"type": ["string", "null"]}, "last_gift_at": {"type": ["string", "null"]},
        "per_minute": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["stream_id", "gifts", "gross_coins", "creator_share", "platform_cut"],
}
BALANCES: Schema = {
    "type": "object",
    "properties": {"accounts": {"type": "array", "items": {"type": "object"}},
                   "totals": {"type": "object"}, "next_cursor": {"type": ["string", "null"]}},
    "required": ["accounts", "totals", "next_cursor"],
}
LAST_PASS: Schema = {
    "type": ["object", "null"],
    "properties": {
        "started_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": "string", "format": "date-time"},
        "duration_ms": {"type": "integer"}, "worker": {"type": "string"},
        "streams_checked": {"type": "integer"}, "differences_found": {"type": "integer"},
        "differences_repaired": {"type": "integer"}, "transient": {"type": "integer"},
        "findings": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["finished_at", "streams_checked", "differences_found",
                 "differences_repaired", "findings"],
}
RECONCILIATION: Schema = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "checks": {"type": "array"},
                   "last_pass": LAST_PASS},
    "required": ["ok", "checks", "last_pass"],
}


def _optional_uuid(query: Any, name: str) -> uuid.UUID | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a UUID.", code="invalid_filter") from None


def _optional_time(query: Any, name: str) -> dt.datetime | None:
    raw = query.get(name)
    if not raw:
        return None
    try:
        value = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time.", code="invalid_filter") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _filters(call: Call) -> list[Any]:
    query = call.request.query
    kind = query.get("account_kind") or None
    if kind is not None and kind not in _KINDS:
        raise BadRequest(f"account_kind is one of {', '.join(_KINDS)}.", code="invalid_filter")
    return [kind, _optional_uuid(query, "owner_id"), _optional_uuid(query, "stream_id"),
            _optional_uuid(query, "creator_id"), _optional_time(query, "since"),
            _optional_time(query, "until")]


def _entry(row: Any) -> dict[str, Any]:
    def text(value: Any) -> str | None:
        return None if value is None else str(value)

    return {"entry_id": row["id"], "transfer_id": str(row["transfer_id"]),
            "transfer_kind": row["transfer_kind"], "created_at": iso_time(row["created_at"]),
            "account_kind": row["account_kind"], "owner_id": text(row["owner_id"]),
            "amount": row["amount"], "gift_id": text(row["gift_id"]),
            "stream_id": text(row["stream_id"]), "creator_id": text(row["creator_id"]),
            "sender_id": text(row["sender_id"]), "gift": row["gift_slug"],
            "purchase_id": text(row["purchase_id"]), "payout_id": text(row["payout_id"]),
            "memo": row["memo"]}


async def journal(call: Call) -> web.StreamResponse:
    limit = parse_limit(call.request.query.get("limit"))
    cursor = call.request.query.get("cursor")
    before = None
    if cursor:
        if not cursor.isdigit():
            raise BadRequest("The cursor is not one this server gave out.",
                             code="invalid_cursor")
        before = int(cursor)
    rows = await call.services.pool.fetch(_JOURNAL_SELECT + " LIMIT $8",
                                          *_filters(call), before, limit)
    entries = [_entry(r) for r in rows]
    next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
    return json_response({"entries": entries, "next_cursor": next_cursor})


def _csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula is quoted (OWASP "CSV injection")."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


async def journal_csv(call: Call) -> web.StreamResponse:
    """The filtered journal as CSV, streamed from a server-side cursor."""
    return await stream_csv(call, _JOURNAL_SELECT, [*_filters(call), None], _COLUMNS, _entry,
                            "livecore-journal.csv")


async def stream_csv(call: Call, query: str, args: list[Any], columns: tuple[str, ...],
                     to_json: Callable[[Any], dict[str, Any]],
                     filename: str) -> web.StreamResponse:
    """Rows of ``query`` as CSV, streamed from a server-side cursor.

    A failure after the 200 and the first rows are sent (the database connection lost, say)
    cannot change the status any more. So the export then ends with a last line
    ``# export incomplete: ...`` (for whoever opens the saved file) and the connection is
    closed *without* the final zero-length chunk of the chunked encoding (RFC 9112, section
    7.1): every HTTP client reports such a body as incomplete (curl exits with status 18,
    browsers' fetch rejects, Python clients raise), so a partial export never passes for a
    whole one.
    """
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
    })
    response.enable_chunked_encoding()
    await response.prepare(call.request)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    count = 0
    try:
        async with call.services.pool.acquire() as conn, conn.transaction():
            async for row in conn.cursor(query, *args, prefetch=CSV_BATCH_ROWS):
                record = to_json(row)
                writer.writerow([_csv_cell(record[c]) for c in columns])
                count += 1
                if count % CSV_BATCH_ROWS == 0:
                    await response.write(buffer.getvalue().encode())
                    buffer.seek(0)
                    buffer.truncate()
    except Exception as exc:
        transport = call.request.transport
        if transport is None or transport.is_closing():
            raise  # the client went away: nobody to tell
        log.error("export failed mid-stream", extra={"rows": count, "export": filename,
                                                     "error": repr(exc)})
        buffer.write(f"{INCOMPLETE_MARKER}: failed after {count} rows; retry the export\r\n")
        with contextlib.suppress(ConnectionError):
            await response.write(buffer.getvalue().encode())
        # close() sends what is buffered, then closes: no terminating chunk is ever written
        # (aiohttp's own write_eof then finds the transport closing and gives up).
        transport.close()
        return response
    await response.write(buffer.getvalue().encode())
    await response.write_eof()
    return response


async def balances(call: Call) -> web.StreamResponse:
    query = call.request.query
    kind = query.get("account_kind") or None
    if kind is not None and kind not in _KINDS:
        raise BadRequest(f"account_kind is one of {', '.join(_KINDS)}.", code="invalid_filter")
    limit = parse_limit(query.get("limit"))
    cursor = query.get("cursor")
    if cursor is not None and not cursor.isdigit():
        raise BadRequest("The cursor is not one this server gave out.", code="invalid_cursor")
    rows = await call.services.pool.fetch(
        "SELECT a.id, a.kind, a.owner_id, u.username, a.balance FROM ledger_accounts a"
        " LEFT JOIN users u ON u.id = a.owner_id"
        " WHERE ($1::text IS NULL OR a.kind = $1) AND ($2::bigint IS NULL OR a.id > $2)"
        " ORDER BY a.id LIMIT $3", kind, int(cursor) if cursor else None, limit)
    totals = await call.services.pool.fetch(
        "SELECT kind, sum(balance) AS total FROM ledger_accounts"
        " WHERE $1::text IS NULL OR kind = $1 GROUP BY kind", kind)
    return json_response({
        "accounts": [{"account_id": r["id"], "kind": r["kind"],
                      "owner_id": None if r["owner_id"] is None else str(r["owner_id"]),
                      "username": r["username"], "balance": r["balance"]} for r in rows],
        "totals": {r["kind"]: int(r["total"]) for r in totals},
        "next_cursor": str(rows[-1]["id"]) if len(rows) == limit else None,
    })


async def statement(call: Call) -> web.StreamResponse:
    stream = await call.services.streams.get(
        StreamId(parse_stream_id(call.request.match_info["stream_id"])))
    row = await call.services.pool.fetchrow(
        "SELECT count(*) AS gifts, count(DISTINCT sender_id) AS senders,"
        " coalesce(sum(price), 0) AS gross, coalesce(sum(creator_share), 0) AS share,"
        " coalesce(sum(platform_cut), 0) AS cut, min(created_at) AS first,"
        " max(created_at) AS last FROM gifts WHERE stream_id = $1", stream.id)
    minutes = await call.services.pool.fetch(
        "SELECT date_trunc('minute', created_at) AS minute, sum(price) AS coins, count(*) AS n"
        " FROM gifts WHERE stream_id = $1 GROUP BY 1 ORDER BY 1", stream.id)
    return json_response({
        "stream_id": str(stream.id), "creator_id": str(stream.creator_id),
        "title": stream.title, "gifts": row["gifts"], "senders": row["senders"],
        "gross_coins": int(row["gross"]), "creator_share": int(row["share"]),
        "platform_cut": int(row["cut"]), "first_gift_at": iso_time(row["first"]),
        "last_gift_at": iso_time(row["last"]),
        "per_minute": [{"minute": iso_time(m["minute"]), "coins": int(m["coins"]),
                        "gifts": m["n"]} for m in minutes],
    })


async def reconciliation(call: Call) -> web.StreamResponse:
    results = await verify_postgres(call.services.pool)
    results.append(await verify_projection(call.services.pool, call.services.gifts.projection))
    last = await last_report(call.services.redis, call.services.settings.redis_prefix)
    return json_response({
        "ok": all(r.ok for r in results),
        "checks": [{"name": r.name, "description": r.description, "ok": r.ok,
                    "failures": r.failures, "examples": r.examples} for r in results],
        "last_pass": None if last is None else last.to_json(),
    })


# -- money in and out ----------------------------------------------------------------------

#: What finance sees of a purchase (the status as shown to its buyer: see
#: ledger.payments.Purchase.shown_status, which this CASE follows; a test keeps them in step).
_PURCHASE_STATUS_SQL = (
    "CASE WHEN p.status <> 'paid' THEN p.status"
    " WHEN p.dispute_status IN ('open', 'lost') THEN 'disputed'"
    " WHEN p.refunded_minor >= p.amount_minor THEN 'refunded'"
    " WHEN p.refunded_minor > 0 THEN 'partially_refunded' ELSE 'paid' END")
_PURCHASE_STATUSES = ("pending", "paid", "failed", "refunded", "partially_refunded", "disputed")
_PURCHASES_SELECT = f"""
    SELECT p.*, u.username, {_PURCHASE_STATUS_SQL} AS shown_status
    FROM purchases p JOIN users u ON u.id = p.user_id
    WHERE ($1::text IS NULL OR {_PURCHASE_STATUS_SQL} = $1)
      AND ($2::uuid IS NULL OR p.user_id = $2)
      AND ($3::timestamptz IS NULL OR p.created_at >= $3)
      AND ($4::timestamptz IS NULL OR p.created_at < $4)
      AND ($5::timestamptz IS NULL OR (p.created_at, p.id) < ($5, $6::uuid))
    ORDER BY p.created_at DESC, p.id DESC
"""
_PURCHASE_COLUMNS = ("purchase_id", "created_at", "user_id", "username", "status", "package",
                     "coins", "coins_reversed", "amount_minor", "currency", "provider", "method",
                     "payment_intent_id", "checkout_id", "paid_at", "refunded_minor",
                     "dispute_id", "dispute_status", "failure")
_PAYOUT_STATUSES = ("pending", "paid", "failed")
_PAYOUTS_SELECT = """
    SELECT p.*, u.username FROM payouts p JOIN users u ON u.id = p.creator_id
    WHERE ($1::text IS NULL OR p.status = $1)
      AND ($2::uuid IS NULL OR p.creator_id = $2)
      AND ($3::timestamptz IS NULL OR p.created_at >= $3)
      AND ($4::timestamptz IS NULL OR p.created_at < $4)
      AND ($5::timestamptz IS NULL OR (p.created_at, p.id) < ($5, $6::uuid))
    ORDER BY p.created_at DESC, p.id DESC
"""
_PAYOUT_COLUMNS = ("payout_id", "created_at", "creator_id", "username", "status", "diamonds",
                   "amount_minor", "currency", "provider", "destination", "transfer_id", "failure",
                   "attempts", "resolved_at")


def _purchase_row(row: Any) -> dict[str, Any]:
    return {"purchase_id": str(row["id"]), "created_at": iso_time(row["created_at"]),
            "user_id": str(row["user_id"]), "username": row["username"],
            "status": row["shown_status"], "package": row["package_slug"],
            "coins": row["coins"], "coins_reversed": row["coins_reversed"],
            "amount_minor": row["amount_minor"], "currency": row["currency"],
            "provider": row["provider"], "method": row["method"],
            "payment_intent_id": row["payment_intent_id"],
            "checkout_id": row["checkout_id"], "paid_at": iso_time(row["paid_at"]),
            "refunded_minor": row["refunded_minor"], "dispute_id": row["dispute_id"],
            "dispute_status": row["dispute_status"], "failure": row["failure"]}


def _payout_row(row: Any) -> dict[str, Any]:
    return {"payout_id": str(row["id"]), "created_at": iso_time(row["created_at"]),
            "creator_id": str(row["creator_id"]), "username": row["username"],
            "status": row["status"], "diamonds": row["diamonds"],
            "amount_minor": row["amount_minor"], "currency": row["currency"],
            "provider": row["provider"], "destination": row["destination"],
            "transfer_id": row["transfer_id"],
            "failure": row["failure"], "attempts": row["attempts"],
            "resolved_at": iso_time(row["resolved_at"])}


def _money_filters(call: Call, statuses: tuple[str, ...], owner: str) -> list[Any]:
    query = call.request.query
    status = query.get("status") or None
    if status is not None and status not in statuses:
        raise BadRequest(f"status is one of {', '.join(statuses)}.", code="invalid_filter")
    return [status, _optional_uuid(query, owner), _optional_time(query, "since"),
            _optional_time(query, "until")]


async def _money_page(call: Call, query: str, filters: list[Any],
                      to_json: Callable[[Any], dict[str, Any]], name: str
                      ) -> web.StreamResponse:
    limit = parse_limit(call.request.query.get("limit"))
    cursor = call.request.query.get("cursor")
    before: tuple[Any, Any] = decode_cursor(cursor) if cursor else (None, None)
    rows = await call.services.pool.fetch(query + " LIMIT $7", *filters, *before, limit)
    last = rows[-1] if len(rows) == limit else None
    return json_response({name: [to_json(r) for r in rows],
                          "next_cursor": encode_cursor(last["created_at"], last["id"])
                          if last else None})


async def purchases(call: Call) -> web.StreamResponse:
    filters = _money_filters(call, _PURCHASE_STATUSES, "user_id")
    return await _money_page(call, _PURCHASES_SELECT, filters, _purchase_row, "purchases")


async def purchases_csv(call: Call) -> web.StreamResponse:
    filters = _money_filters(call, _PURCHASE_STATUSES, "user_id")
    return await stream_csv(call, _PURCHASES_SELECT, [*filters, None, None], _PURCHASE_COLUMNS,
                            _purchase_row, "livecore-purchases.csv")


async def payouts(call: Call) -> web.StreamResponse:
    filters = _money_filters(call, _PAYOUT_STATUSES, "creator_id")
    return await _money_page(call, _PAYOUTS_SELECT, filters, _payout_row, "payouts")


async def payouts_csv(call: Call) -> web.StreamResponse:
    filters = _money_filters(call, _PAYOUT_STATUSES, "creator_id")
    return await stream_csv(call, _PAYOUTS_SELECT, [*filters, None, None], _PAYOUT_COLUMNS,
                            _payout_row, "livecore-payouts.csv")


async def debts(call: Call) -> web.StreamResponse:
    rows = await call.services.pool.fetch(
        "SELECT a.owner_id, u.username, -a.balance AS owed, u.created_at FROM ledger_accounts a"
        " JOIN users u ON u.id = a.owner_id WHERE a.kind = 'debt' AND a.balance < 0"
        " ORDER BY a.balance, a.owner_id LIMIT 500")
    total = await call.services.pool.fetchrow(
        "SELECT coalesce(-sum(balance), 0) AS owed, count(*) FILTER (WHERE balance < 0) AS n"
        " FROM ledger_accounts WHERE kind = 'debt'")
    return json_response({
        "debts": [{"user_id": str(r["owner_id"]), "username": r["username"],
                   "owed_coins": int(r["owed"])} for r in rows],
        "total_owed_coins": int(total["owed"]), "debtors": int(total["n"])})


def _page_schema(name: str, columns: tuple[str, ...]) -> Schema:
    item = {"type": "object", "properties": {c: {} for c in columns}, "required": list(columns)}
    return {"type": "object",
            "properties": {name: {"type": "array", "items": item},
                           "next_cursor": {"type": ["string", "null"]}},
            "required": [name, "next_cursor"]}


PURCHASES = _page_schema("purchases", _PURCHASE_COLUMNS)
PAYOUTS = _page_schema("payouts", _PAYOUT_COLUMNS)
DEBTS: Schema = {
    "type": "object",
    "properties": {"debts": {"type": "array", "items": {
        "type": "object", "properties": {"user_id": UUID, "username": {"type": "string"},
                                         "owed_coins": {"type": "integer"}},
        "required": ["user_id", "username", "owed_coins"]}},
        "total_owed_coins": {"type": "integer"},
        "debtors": {"type": "integer", "description": "Everyone who owes (the list stops at "
                                                      "the 500 largest)."}},
    "required": ["debts", "total_owed_coins", "debtors"],
}
_WHEN = (QueryParam("since", "From this time (ISO 8601), inclusive."),
         QueryParam("until", "Until this time (ISO 8601), exclusive."))
_PURCHASE_FILTERS = (QueryParam("status", ", ".join(_PURCHASE_STATUSES) + "."),
                     QueryParam("user_id", "One buyer's purchases.", UUID), *_WHEN)
_PAYOUT_FILTERS = (QueryParam("status", ", ".join(_PAYOUT_STATUSES) + "."),
                   QueryParam("creator_id", "One creator's payouts.", UUID), *_WHEN)

_FILTERS = (
    QueryParam("account_kind", ", ".join(_KINDS) + "."),
    QueryParam("owner_id", "Entries of this user's accounts.", UUID),
    QueryParam("stream_id", "Entries of the gift batches that hold this stream's gifts.", UUID),
    QueryParam("creator_id", "Entries of the gift batches that hold this creator's gifts.", UUID),
    QueryParam("since", "From this time (ISO 8601), inclusive."),
    QueryParam("until", "Until this time (ISO 8601), exclusive."),
)
_PAGE = (QueryParam("limit", "1 to 200 (default 50).", {"type": "integer"}),
         QueryParam("cursor", "The previous page's next_cursor."))

FINANCE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/v1/finance/journal", journal, "Ledger entries, newest first, filtered.",
          Permission.FINANCE_READ, "finance", response=JOURNAL, query=_FILTERS + _PAGE,
          errors=(400, 403)),
    Route("GET", "/api/v1/finance/journal.csv", journal_csv,
          "The filtered journal as CSV (streamed).", Permission.FINANCE_READ, "finance",
          response={"type": "string"}, query=_FILTERS, errors=(400, 403)),
    Route("GET", "/api/v1/finance/balances", balances, "Account balances and totals by kind.",
          Permission.FINANCE_READ, "finance", response=BALANCES,
          query=(QueryParam("account_kind", ", ".join(_KINDS) + "."),
                 *_PAGE), errors=(400, 403)),
    Route("GET", "/api/v1/finance/streams/{stream_id}/statement", statement,
          "A stream's settlement: gross coins, creator share, platform cut, per minute.",
          Permission.FINANCE_READ, "finance", response=STATEMENT, errors=(403, 404)),
    Route("GET", "/api/v1/finance/reconciliation", reconciliation,
          "Every ledger invariant, Redis against PostgreSQL for live streams, and the worker's "
          "last reconciliation pass.",
          Permission.FINANCE_READ, "finance", response=RECONCILIATION, errors=(403,)),
    Route("GET", "/api/v1/finance/purchases", purchases,
          "Coin purchases, newest first, with their refunds and disputes.",
          Permission.FINANCE_READ, "finance", response=PURCHASES,
          query=_PURCHASE_FILTERS + _PAGE, errors=(400, 403)),
    Route("GET", "/api/v1/finance/purchases.csv", purchases_csv,
          "The filtered purchases as CSV (streamed).", Permission.FINANCE_READ, "finance",
          response={"type": "string"}, query=_PURCHASE_FILTERS, errors=(400, 403)),
    Route("GET", "/api/v1/finance/payouts", payouts, "Creator payouts, newest first.",
          Permission.FINANCE_READ, "finance", response=PAYOUTS,
          query=_PAYOUT_FILTERS + _PAGE, errors=(400, 403)),
    Route("GET", "/api/v1/finance/payouts.csv", payouts_csv,
          "The filtered payouts as CSV (streamed).", Permission.FINANCE_READ, "finance",
          response={"type": "string"}, query=_PAYOUT_FILTERS, errors=(400, 403)),
    Route("GET", "/api/v1/finance/debts", debts,
          "Viewers who owe coins after a refund or chargeback (the 500 largest), and the total.",
          Permission.FINANCE_READ, "finance", response=DEBTS, errors=(403,)),
)
