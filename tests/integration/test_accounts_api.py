"""Accounts and auth over a real socket against the real PostgreSQL and Redis."""

import datetime as dt

from livecore import schemas
from livecore.accounts import Role
from tests.support import PASSWORD, assert_matches, unique_name


async def test_register_login_me_logout(api):
    name = unique_name("Ada")
    user = await api.register(name)
    assert_matches(schemas.USER, user)
    assert user["username"] == name.lower()
    assert user["roles"] == ["viewer"]
    assert user["is_adult"] is True
    assert "password" not in str(user) and "hash" not in str(user)

    response, body = await api.request(
        "POST", "/api/v1/auth/login", json={"username": name.upper(), "password": PASSWORD}
    )
    assert response.status == 200
    assert_matches(schemas.LOGIN_RESULT, body)
    assert response.headers["Cache-Control"] == "no-store"
    token = body["token"]

    response, me = await api.request("GET", "/api/v1/me", token=token)
    assert response.status == 200
    assert me["id"] == user["id"] and me["birthdate"] == "1990-05-17"

    response, _ = await api.request("POST", "/api/v1/auth/logout", token=token)
    assert response.status == 204
    response, body = await api.request("GET", "/api/v1/me", token=token)
    assert response.status == 401
    assert body["error"]["code"] == "invalid_token"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_passwords_are_stored_as_argon2_hashes(api, services):
    user = await api.register()
    stored = await services.pool.fetchval(
        "SELECT password_hash FROM users WHERE id = $1::uuid", user["id"]
    )
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_tokens_are_stored_as_digests_and_can_be_listed_and_revoked(api, services):
    user = await api.register()
    first = await api.login(user["username"])
    second = await api.login(user["username"])
    stored = await services.pool.fetch(
        "SELECT token_hash FROM auth_tokens WHERE user_id = $1::uuid", user["id"]
    )
    assert len(stored) == 2
    assert all(first.encode() not in row["token_hash"] for row in stored)

    response, body = await api.request("GET", "/api/v1/auth/tokens", token=first)
    assert response.status == 200
    assert_matches(schemas.TOKEN_LIST, body)
    assert [t["is_current"] for t in body["tokens"]].count(True) == 1
    other = next(t for t in body["tokens"] if not t["is_current"])

    response, _ = await api.request("DELETE", f"/api/v1/auth/tokens/{other['id']}", token=first)
    assert response.status == 204
    response, _ = await api.request("GET", "/api/v1/me", token=second)
    assert response.status == 401
    response, _ = await api.request("GET", "/api/v1/me", token=first)
    assert response.status == 200
    # Revoking again, or revoking another user's token, is a 404 that changes nothing.
    response, body = await api.request(
        "DELETE", f"/api/v1/auth/tokens/{other['id']}", token=first
    )
    assert (response.status, body["error"]["code"]) == (404, "token_not_found")
    _, intruder = await api.new_user()
    _, current = await api.request("GET", "/api/v1/auth/tokens", token=first)
    mine = current["tokens"][0]["id"]
    response, _ = await api.request("DELETE", f"/api/v1/auth/tokens/{mine}", token=intruder)
    assert response.status == 404
    response, _ = await api.request("GET", "/api/v1/me", token=first)
    assert response.status == 200


async def test_expired_tokens_stop_working(api, make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    user, token = await api.new_user()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    async with ApiClient.serving(create_app(make_services(clock=lambda: later))) as future:
        response, body = await future.request("GET", "/api/v1/me", token=token)
    assert response.status == 401
    assert body["error"]["code"] == "invalid_token"


async def test_wrong_password_and_unknown_user_look_the_same(api):
    user = await api.register()
    wrong = await api.request(
        "POST", "/api/v1/auth/login", json={"username": user["username"], "password": "nope nope"}
    )
    unknown = await api.request(
        "POST", "/api/v1/auth/login", json={"username": unique_name(), "password": "nope nope"}
    )
    for response, body in (wrong, unknown):
        assert response.status == 401
        assert body["error"]["code"] == "invalid_credentials"
    assert wrong[1] == unknown[1]


async def test_login_throttling_per_username(make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    services = make_services(login_max_failures=3, login_window_s=600)
    async with ApiClient.serving(create_app(services)) as api:
        victim = await api.register()
        bystander = await api.register()
        bad = {"username": victim["username"], "password": "guess guess"}
        for _ in range(3):
            response, _ = await api.request("POST", "/api/v1/auth/login", json=bad)
            assert response.status == 401
        good = {"username": victim["username"], "password": PASSWORD}
        response, body = await api.request("POST", "/api/v1/auth/login", json=good)
        assert response.status == 429
        assert body["error"]["code"] == "login_throttled"
        assert 0 < int(response.headers["Retry-After"]) <= 600
        assert body["error"]["retry_after_s"] == int(response.headers["Retry-After"])
        # Other accounts are unaffected.
        assert await api.login(bystander["username"])


async def test_successful_login_clears_the_username_counter(make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    services = make_services(login_max_failures=3)
    async with ApiClient.serving(create_app(services)) as api:
        user = await api.register()
        bad = {"username": user["username"], "password": "guess guess"}
        for _ in range(2):
            await api.request("POST", "/api/v1/auth/login", json=bad)
        await api.login(user["username"])
        for _ in range(2):
            response, _ = await api.request("POST", "/api/v1/auth/login", json=bad)
            assert response.status == 401
        assert await api.login(user["username"])


async def test_login_throttling_per_address(make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    services = make_services(login_max_failures=100, login_max_failures_per_ip=4,
                             trust_proxy_headers=True)
    async with ApiClient.serving(create_app(services)) as api:
        user = await api.register()
        address = {"X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
        for _ in range(4):
            response, _ = await api.request(
                "POST", "/api/v1/auth/login", headers=address,
                json={"username": unique_name(), "password": "spray spray"},
            )
            assert response.status == 401
        response, body = await api.request(
            "POST", "/api/v1/auth/login", headers=address,
            json={"username": user["username"], "password": PASSWORD},
        )
        assert response.status == 429
        # From another address the same account logs in.
        response, _ = await api.request(
            "POST", "/api/v1/auth/login", headers={"X-Forwarded-For": "198.51.100.7"},
            json={"username": user["username"], "password": PASSWORD},
        )
        assert response.status == 200


async def test_duplicate_username_is_409_and_changes_nothing(api, services):
    user = await api.register()
    response, body = await api.request(
        "POST", "/api/v1/auth/register",
        json={"username": user["username"].upper(), "password": "another pass",
              "birthdate": "1980-01-01"},
    )
    assert response.status == 409
    assert body["error"] == {
        "code": "username_taken", "message": body["error"]["message"], "field": "username"
    }
    count = await services.pool.fetchval(
        "SELECT count(*) FROM users WHERE username = $1", user["username"]
    )
    assert count == 1


async def test_registration_age_rules(api):
    today = dt.date.today()
    too_young = today.replace(year=today.year - 12).isoformat()
    response, body = await api.request(
        "POST", "/api/v1/auth/register",
        json={"username": unique_name(), "password": PASSWORD, "birthdate": too_young},
    )
    assert (response.status, body["error"]["code"]) == (422, "too_young")
    teen = await api.register(birthdate=today.replace(year=today.year - 15).isoformat())
    assert teen["is_adult"] is False


async def test_adults_become_creators_and_minors_cannot(api):
    today = dt.date.today()
    _, teen_token = await api.new_user(birthdate=today.replace(year=today.year - 16).isoformat())
    response, body = await api.request("POST", "/api/v1/me/creator", token=teen_token)
    assert (response.status, body["error"]["code"]) == (403, "not_adult")
    response, me = await api.request("GET", "/api/v1/me", token=teen_token)
    assert me["roles"] == ["viewer"]

    creator, token = await api.new_creator()
    assert creator["roles"] == ["viewer", "creator"]
    # Asking twice is harmless.
    response, again = await api.request("POST", "/api/v1/me/creator", token=token)
    assert response.status == 200 and again["roles"] == ["viewer", "creator"]


async def test_admins_assign_roles_and_others_cannot(api, services):
    admin, admin_token = await api.new_user()
    await services.accounts.set_roles(
        admin["id"], {Role.ADMIN}, actor_id=None, reason="test bootstrap",
        now=dt.datetime.now(dt.UTC),
    )
    user, user_token = await api.new_user()

    response, body = await api.request(
        "PUT", f"/api/v1/users/{user['id']}/roles", token=user_token, json={"roles": ["admin"]}
    )
    assert (response.status, body["error"]["code"]) == (403, "forbidden_role")

    response, body = await api.request(
        "PUT", f"/api/v1/users/{user['id']}/roles", token=admin_token,
        json={"roles": ["finance", "moderator"]},
    )
    assert response.status == 200
    assert body["roles"] == ["viewer", "moderator", "finance"]
    changes = await services.pool.fetch(
        "SELECT actor_id::text, new_roles FROM role_changes WHERE user_id = $1::uuid", user["id"]
    )
    assert [(c["actor_id"], list(c["new_roles"])) for c in changes] == [
        (admin["id"], ["viewer", "moderator", "finance"])
    ]
    # Roles take effect on the next request: finance may read accounts, not change them.
    response, body = await api.request("GET", f"/api/v1/users/{admin['id']}", token=user_token)
    assert response.status == 200 and body["username"] == admin["username"]
    response, _ = await api.request(
        "PUT", f"/api/v1/users/{admin['id']}/roles", token=user_token, json={"roles": []}
    )
    assert response.status == 403

    response, body = await api.request(
        "PUT", f"/api/v1/users/{admin['id']}/roles", token=admin_token, json={"roles": []}
    )
    assert (response.status, body["error"]["code"]) == (409, "cannot_demote_self")


async def test_admin_cannot_make_a_minor_a_creator(api, services):
    admin, admin_token = await api.new_user()
    await services.accounts.set_roles(
        admin["id"], {Role.ADMIN}, actor_id=None, reason="t", now=dt.datetime.now(dt.UTC)
    )
    today = dt.date.today()
    teen = await api.register(birthdate=today.replace(year=today.year - 14).isoformat())
    response, body = await api.request(
        "PUT", f"/api/v1/users/{teen['id']}/roles", token=admin_token, json={"roles": ["creator"]}
    )
    assert (response.status, body["error"]["code"]) == (403, "not_adult")


async def test_user_listing_pages_by_username(api, services):
    admin, admin_token = await api.new_user()
    await services.accounts.set_roles(
        admin["id"], {Role.MODERATOR}, actor_id=None, reason="t", now=dt.datetime.now(dt.UTC)
    )
    seen = []
    cursor = None
    while True:
        path = "/api/v1/users?limit=2" + (f"&cursor={cursor}" if cursor else "")
        response, body = await api.request("GET", path, token=admin_token)
        assert response.status == 200
        assert_matches(schemas.USER_LIST, body)
        seen += [u["username"] for u in body["users"]]
        assert all("birthdate" not in u for u in body["users"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert admin["username"] in seen
