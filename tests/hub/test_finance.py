"""The finance API: journal, CSV export, balances, statements, reconciliation."""

import csv
import datetime as dt
import io
import uuid

from livecore.accounts import Role
from tests.hub.conftest import send_gift as _send


async def _finance_token(api, services):
    user, token = await api.new_user()
    await services.accounts.set_roles(user["id"], {Role.FINANCE}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    return token


async def test_finance_sees_the_journal_statement_and_balances(node, economy, services):
    api, room = node.api, economy["stream"]
    for gift, quantity in (("heart", 2), ("rose", 3), ("coffee", 1)):
        await _send(api, economy["viewer"], room, gift, quantity)
    token = await _finance_token(api, services)

    response, statement = await api.request(
        "GET", f"/api/v1/finance/streams/{room}/statement", token=token)
    assert response.status == 200
    assert (statement["gifts"], statement["gross_coins"]) == (3, 23)
    assert statement["creator_share"] + statement["platform_cut"] == 23
    assert sum(m["coins"] for m in statement["per_minute"]) == 23

    response, page = await api.request(
        "GET", f"/api/v1/finance/journal?stream_id={room}&limit=200", token=token)
    assert response.status == 200
    # The stream filter yields the senders' debits for the stream's gifts.
    assert all(e["gift_id"] and e["stream_id"] == room for e in page["entries"])
    assert sorted(-e["amount"] for e in page["entries"]) == [3, 10, 10]
    response, page_c = await api.request(
        "GET", f"/api/v1/finance/journal?creator_id={economy['creator_id']}&limit=200",
        token=token)
    credits = [e for e in page_c["entries"] if e["amount"] > 0]
    assert credits and all(e["account_kind"] == "earnings" for e in credits)
    assert sum(e["amount"] for e in credits) == statement["creator_share"]

    response = await api.client.get(f"/api/v1/finance/journal.csv?stream_id={room}",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert sorted(int(r["entry_id"]) for r in rows) == sorted(e["entry_id"]
                                                              for e in page["entries"])

    response, wallets = await api.request(
        "GET", "/api/v1/finance/balances?account_kind=wallet&limit=200", token=token)
    assert response.status == 200 and set(wallets["totals"]) == {"wallet"}
    assert {a["kind"] for a in wallets["accounts"]} == {"wallet"}
    response, balances = await api.request("GET", "/api/v1/finance/balances", token=token)
    assert balances["totals"]["promotions"] < 0
    assert sum(balances["totals"].values()) == 0  # every coin came from somewhere
    response, report = await api.request("GET", "/api/v1/finance/reconciliation", token=token)
    assert response.status == 200 and report["ok"] is True, report


async def test_finance_endpoints_are_for_finance_and_admins(node, economy):
    for path in ("/api/v1/finance/journal", "/api/v1/finance/journal.csv",
                 "/api/v1/finance/balances", "/api/v1/finance/reconciliation",
                 f"/api/v1/finance/streams/{economy['stream']}/statement"):
        response, body = await node.api.request("GET", path, token=economy["viewer"])
        assert (response.status, body["error"]["code"]) == (403, "forbidden_role"), path
        response, _ = await node.api.request("GET", path, token=economy["admin"])
        assert response.status == 200, path


async def test_finance_filters_are_checked(node, economy):
    token = economy["admin"]
    for query in ("account_kind=gold", "owner_id=nope", "since=yesterday", "cursor=abc"):
        response, body = await node.api.request("GET", f"/api/v1/finance/journal?{query}",
                                                token=token)
        assert response.status == 400, query
    response, body = await node.api.request(
        "GET", f"/api/v1/finance/streams/{uuid.uuid4()}/statement", token=token)
    assert response.status == 404
