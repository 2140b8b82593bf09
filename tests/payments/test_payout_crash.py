"""`kill -9` of the gateway while a payout's Connect transfer is in flight (Stripe has made
the transfer; its answer never arrives), then `livecore payouts retry` from the shell: the
payout is paid exactly once, and no diamond is lost or paid twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import uuid

import aiohttp
import asyncpg
import pytest

from ledger.audit import verify_postgres
from ledger.batcher import grant
from tests.conftest import Backend
from tests.processes import BIN, Background, environment, free_port, run
from tests.stripe_fake import FakeStripe
from tests.support import PASSWORD, registered_user

pytestmark = pytest.mark.e2e


async def _user(http: aiohttp.ClientSession) -> tuple[str, dict[str, str]]:
    user_id, token = await registered_user(http)
    return user_id, {"Authorization": f"Bearer {token}"}


async def test_kill_9_mid_payout_then_payouts_retry_pays_once(
        fresh_database: str, backend: Backend, stripe_fake: FakeStripe) -> None:
    port = free_port()
    env = environment(
        DATABASE_URL=fresh_database, REDIS_URL=backend.redis_url,
        LIVECORE_REDIS_PREFIX=f"{backend.redis_prefix}payout:",
        PORT=str(port), LIVECORE_STRIPE_SECRET_KEY=stripe_fake.secret_key,
        LIVECORE_STRIPE_API_BASE=stripe_fake.api_base,
        LIVECORE_STRIPE_WEBHOOK_SECRET=stripe_fake.webhook_secret)
    pool = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
    server = Background([str(BIN / "livecore"), "serve"], env)
    try:
        with server:
            await _crash_and_retry(server, pool, env, stripe_fake, port)
    finally:
        await pool.close()


async def _crash_and_retry(server: Background, pool: asyncpg.Pool, env: dict[str, str],
                           stripe_fake: FakeStripe, port: int) -> None:
    await asyncio.to_thread(server.wait_for, "Livecore serving on", 90)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        creator_id, creator = await _user(http)
        async with http.post("/api/v1/me/creator", headers=creator) as response:
            assert response.status == 200
        async with http.post("/api/v1/streams", headers=creator,
                             json={"title": "Payday"}) as response:
            stream = (await response.json())["id"]
        await pool.execute("UPDATE streams SET state = 'live', started_at = now()"
                           " WHERE id = $1", uuid.UUID(stream))
        viewer_id, viewer = await _user(http)
        await grant(pool, grant_id=uuid.uuid4(), user_id=uuid.UUID(viewer_id),
                    coins=3 * 4999, memo="", actor_id=None, now=dt.datetime.now(dt.UTC))
        async with http.post("/api/v1/gifts", headers=viewer, json={
                "gift_id": str(uuid.uuid4()), "stream_id": stream, "gift": "castle",
                "quantity": 3}) as response:
            assert response.status == 201  # 7,499 diamonds to the creator
        account = await stripe_fake.create_connected_account()
        async with http.put("/api/v1/me/payout-account", headers=creator, json={
                "stripe_account_id": account, "password": PASSWORD}) as response:
            assert response.status == 200

        stripe_fake.fail_next("/v1/transfers", "hang", method="POST")
        payout_id = str(uuid.uuid4())
        request = asyncio.create_task(http.post(
            "/api/v1/me/payouts", headers=creator,
            json={"payout_id": payout_id, "diamonds": 6000}))
        for _ in range(200):  # until Stripe has made the transfer
            if stripe_fake.transfers:
                break
            await asyncio.sleep(0.05)
        assert len(stripe_fake.transfers) == 1
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        with pytest.raises(aiohttp.ClientError):
            await request

    # The process died between Stripe's transfer and the ledger's post.
    row = await pool.fetchrow("SELECT status, attempts FROM payouts WHERE id = $1",
                              uuid.UUID(payout_id))
    assert (row["status"], row["attempts"]) == ("pending", 1)
    pending = await pool.fetchval(
        "SELECT balance FROM ledger_accounts WHERE kind = 'payouts_pending'")
    assert pending == 6000
    assert all(check.ok for check in await verify_postgres(pool, analyze=False))

    # The retry job, from the shell (run in a thread: the Stripe fake answers from this
    # event loop).
    done = await asyncio.to_thread(run, ["payouts", "retry", "--all"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 paid, 0 failed, 0 still pending" in done.stdout
    row = await pool.fetchrow("SELECT status, transfer_id FROM payouts WHERE id = $1",
                              uuid.UUID(payout_id))
    [transfer] = stripe_fake.transfers.values()
    assert (row["status"], row["transfer_id"]) == ("paid", transfer["id"])
    assert (transfer["amount"], transfer["destination"]) == (3000, account)
    balances = dict(await pool.fetch(
        "SELECT kind, balance FROM ledger_accounts WHERE kind IN ('payouts_pending',"
        " 'payouts_paid') OR (kind = 'earnings' AND owner_id = $1)",
        uuid.UUID(creator_id)))
    assert balances == {"payouts_pending": 0, "payouts_paid": 6000, "earnings": 1499}
    done = await asyncio.to_thread(run, ["payouts", "retry", "--all"], env)
    assert "0 paid, 0 failed, 0 still pending" in done.stdout
    assert len(stripe_fake.transfers) == 1
    assert all(check.ok for check in await verify_postgres(pool, analyze=False))
