"""Health, metrics and behaviour when a dependency goes away.

Fault injection uses servers this test starts itself (an embedded PostgreSQL and a spare
redis-server in a temporary directory), never the machine's shared services.
"""

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.services import Services
from livecore import schemas
from livecore.settings import Settings
from livecore.streams import StreamEvent
from tests.support import ApiClient, assert_matches


async def test_healthz_ok(api):
    response, body = await api.request("GET", "/healthz")
    assert response.status == 200
    assert_matches(schemas.HEALTH, body)
    assert body == {"status": "ok", "postgres": "ok", "redis": "ok"}


async def test_metrics_in_prometheus_text_format(api, services):
    await api.request("GET", "/healthz")
    await api.request("GET", "/api/v1/streams/not-a-stream")
    _, token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=token, json={"title": "m"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    response = await api.client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["livecore_http_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests[("/healthz", "200")] == 1
    assert requests[("/api/v1/streams/{stream_id}", "404")] == 1
    assert families["livecore_logins"].samples[0].labels == {"outcome": "ok"}
    live = families["livecore_live_streams"].samples[0].value
    assert live >= 1
    assert families["livecore_db_pool_connections"].samples[0].value >= 1


async def test_dependencies_going_away_answer_503_and_recover(own_servers):
    servers, database_url, redis_url = own_servers
    services = await Services.connect(
        Settings(redis_prefix="faults:"), database_url=database_url, redis_url=redis_url
    )
    try:
        async with ApiClient.serving(create_app(services)) as api:
            user, token = await api.new_user()

            servers.redis.stop()
            response, body = await api.request("GET", "/healthz")
            assert (response.status, body) == (
                503, {"status": "unavailable", "postgres": "ok", "redis": "unavailable"}
            )
            # Login needs Redis (throttle): a clear, retryable 503, and no token is issued.
            response, body = await api.request(
                "POST", "/api/v1/auth/login",
                json={"username": user["username"], "password": "correct horse battery"},
            )
            assert (response.status, body["error"]["code"]) == (503, "service_unavailable")

            servers.redis.start()
            response, body = await api.request("GET", "/healthz")
            assert response.status == 200, body

            servers.postgres.stop()
            response, body = await api.request("GET", "/healthz")
            assert (response.status, body["postgres"]) == (503, "unavailable")
            response, body = await api.request("GET", "/api/v1/me", token=token)
            assert (response.status, body["error"]["code"]) == (503, "service_unavailable")

            servers.postgres.start()
            for _ in range(3):  # the pool drops dead connections and reconnects
                response, body = await api.request("GET", "/api/v1/me", token=token)
                if response.status == 200:
                    break
            assert response.status == 200, body
            response, _ = await api.request("GET", "/healthz")
            assert response.status == 200
    finally:
        await services.close()


async def test_a_pooled_connection_comes_back_without_a_transaction_left_open(fresh_database):
    """The pool's light reset (ledger.postgres) still ends what a caller left open."""
    from ledger.postgres import create_pool

    pool = await create_pool(fresh_database, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE left_open (x int)")
            backend = await conn.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same one
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await pool.close()
