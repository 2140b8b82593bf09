"""Every kind of bad input gets the one error format, the right status, and changes nothing."""

import uuid

import pytest

from livecore import schemas
from tests.support import PASSWORD, assert_matches, unique_name


async def _user_count(services):
    return await services.pool.fetchval("SELECT count(*) FROM users")


def _error(body, status_code, response):
    assert_matches(schemas.ERROR, body)
    assert response.status == status_code, body
    return body["error"]["code"]


@pytest.mark.parametrize(
    ("data", "headers", "status", "code"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b'{"username": "a", ', {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 422, "invalid_body"),
        (b'"text"', {"Content-Type": "application/json"}, 422, "invalid_body"),
        (b"username=a&password=b", {"Content-Type": "application/x-www-form-urlencoded"},
         415, "unsupported_media_type"),
        (b'{"username": "a"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b"", {"Content-Type": "application/json"}, 422, "missing_field"),
    ],
)
async def test_malformed_bodies(api, services, data, headers, status, code):
    before = await _user_count(services)
    response, body = await api.request(
        "POST", "/api/v1/auth/register", data=data, headers=headers
    )
    assert _error(body, status, response) == code
    assert await _user_count(services) == before


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"password": PASSWORD, "birthdate": "1990-01-01"}, "missing_field", "username"),
        ({"username": 42, "password": PASSWORD, "birthdate": "1990-01-01"}, "invalid_field",
         "username"),
        ({"username": "okname", "password": ["x"], "birthdate": "1990-01-01"}, "invalid_field",
         "password"),
        ({"username": "okname", "password": PASSWORD, "birthdate": 19900101}, "invalid_field",
         "birthdate"),
        ({"username": "okname", "password": PASSWORD, "birthdate": "1990-01-01", "role": "admin"},
         "unknown_field", "role"),
        ({"username": "no spaces", "password": PASSWORD, "birthdate": "1990-01-01"},
         "invalid_field", "username"),
        ({"username": "okname", "password": "short", "birthdate": "1990-01-01"},
         "invalid_field", "password"),
        ({"username": "okname", "password": PASSWORD, "birthdate": "1990-13-01"},
         "invalid_field", "birthdate"),
    ],
)
async def test_wrong_types_and_missing_fields_are_422_naming_the_field(
    api, services, payload, code, field
):
    before = await _user_count(services)
    response, body = await api.request("POST", "/api/v1/auth/register", json=payload)
    assert _error(body, 422, response) == code
    assert body["error"]["field"] == field
    assert await _user_count(services) == before


async def test_oversized_bodies_are_413(api, services):
    before = await _user_count(services)
    huge = {"username": unique_name(), "password": PASSWORD, "birthdate": "1990-01-01",
            "padding": "x" * 70_000}
    response, body = await api.request("POST", "/api/v1/auth/register", json=huge)
    assert _error(body, 413, response) == "payload_too_large"

    async def chunks():
        yield b'{"username": "' + b"y" * 40_000
        yield b"z" * 40_000 + b'"}'

    # Chunked upload without Content-Length: counted while reading.
    raw = await api.client.post(
        "/api/v1/auth/register", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert raw.status == 413
    assert (await raw.json())["error"]["code"] == "payload_too_large"
    assert await _user_count(services) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/streams/{unknown}"),
        ("GET", "/api/v1/streams/not-a-uuid"),
        ("GET", "/api/v1/streams/{upper}"),
        ("PATCH", "/api/v1/streams/{unknown}"),
        ("POST", "/api/v1/streams/{unknown}/end"),
        ("POST", "/api/v1/streams/{unknown}/key"),
        ("DELETE", "/api/v1/auth/tokens/{unknown}"),
    ],
)
async def test_unknown_ids_are_404(api, method, path):
    _, token = await api.new_user()
    unknown = uuid.uuid4()
    path = path.format(unknown=unknown, upper=str(unknown).upper())
    json = {"title": "x"} if method == "PATCH" else None
    response, body = await api.request(method, path, token=token, json=json)
    assert _error(body, 404, response).endswith("not_found")


async def test_unknown_user_id_is_404_for_admins(api, services):
    import datetime as dt

    from livecore.accounts import Role

    admin, token = await api.new_user()
    await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    response, body = await api.request("GET", f"/api/v1/users/{uuid.uuid4()}", token=token)
    assert _error(body, 404, response) == "user_not_found"
    response, body = await api.request(
        "PUT", f"/api/v1/users/{uuid.uuid4()}/roles", token=token, json={"roles": ["creator"]}
    )
    assert _error(body, 404, response) == "user_not_found"


async def test_unknown_routes_and_methods(api):
    response, body = await api.request("GET", "/api/v1/nothing-here")
    assert _error(body, 404, response) == "route_not_found"
    response, body = await api.request("DELETE", "/api/v1/streams")
    assert _error(body, 405, response) == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/me"), ("GET", "/api/v1/auth/tokens"), ("POST", "/api/v1/auth/logout"),
     ("POST", "/api/v1/me/creator"), ("GET", "/api/v1/users")],
)
@pytest.mark.parametrize(
    ("authorization", "code"),
    [(None, "unauthenticated"), ("Bearer lc_forged", "invalid_token"),
     ("Basic YWRhOnB3", "invalid_authorization"), ("Bearer ", "invalid_authorization")],
)
async def test_authentication_is_required(api, method, path, authorization, code):
    headers = {"Authorization": authorization} if authorization else {}
    response, body = await api.request(method, path, headers=headers)
    assert _error(body, 401, response) == code


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/api/v1/users", None),
        ("GET", "/api/v1/users/{me}", None),
        ("PUT", "/api/v1/users/{me}/roles", {"roles": ["admin"]}),
        ("POST", "/api/v1/streams", {"title": "x"}),
    ],
)
async def test_forbidden_roles_are_403_and_change_nothing(api, services, method, path, json):
    me, token = await api.new_user()
    response, body = await api.request(method, path.format(me=me["id"]), token=token, json=json)
    assert _error(body, 403, response) == "forbidden_role"
    roles = await services.pool.fetchval("SELECT roles FROM users WHERE id = $1::uuid", me["id"])
    assert list(roles) == ["viewer"]


async def test_bad_query_parameters_are_400(api):
    for query, code in [("state=paused", "invalid_state_filter"), ("limit=0", "invalid_limit"),
                        ("limit=many", "invalid_limit"), ("cursor=%%%", "invalid_cursor"),
                        ("creator_id=abc", "invalid_creator_id")]:
        response, body = await api.request("GET", f"/api/v1/streams?{query}")
        assert _error(body, 400, response) == code, query


async def test_errors_carry_a_request_id(api):
    response, _ = await api.request("GET", "/api/v1/me", headers={"X-Request-Id": "trace-me"})
    assert response.headers["X-Request-Id"] == "trace-me"
    response, _ = await api.request("GET", "/api/v1/me")
    assert len(response.headers["X-Request-Id"]) == 32


PAGES = ["/", f"/watch/{uuid.UUID(int=1)}", f"/live/{uuid.UUID(int=1)}", "/finance", "/coins",
         f"/pay/test/{uuid.UUID(int=1)}", "/creator"]


def _security(response):
    headers = response.headers
    csp = {part.split()[0]: part.split()[1:]
           for part in headers["Content-Security-Policy"].split("; ")}
    return headers, csp


@pytest.mark.parametrize("path", [*PAGES, "/static/watch.js", "/static/style.css",
                                  "/api/v1/streams", "/api/v1/no-such-route", "/healthz"])
async def test_every_response_carries_the_security_headers(api, path):
    response, _ = await api.request("GET", path)
    assert response.status in (200, 404), path
    headers, csp = _security(response)
    # No inline script (nor eval) anywhere; never framed; only our own origin.
    assert csp["script-src"] == ["'self'"]
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"]
    assert "'unsafe-inline'" not in headers["Content-Security-Policy"]
    assert "'unsafe-eval'" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    policy = headers["Permissions-Policy"]
    if path.startswith("/live/"):
        assert "camera=(self)" in policy and "microphone=(self)" in policy
    else:
        assert "camera=()" in policy and "microphone=()" in policy
    assert "Strict-Transport-Security" not in headers  # LIVECORE_PUBLIC_URL is not https


async def test_hsts_only_when_the_public_url_is_https(make_services):
    from gateway.app import create_app
    from tests.support import ApiClient

    for public_url, expected in (("https://live.example.com", "max-age=31536000"),
                                 ("http://live.example.com", None)):
        async with ApiClient.serving(create_app(make_services(public_url=public_url))) as api:
            for path in ("/", "/api/v1/streams"):
                response, _ = await api.request("GET", path)
                assert response.headers.get("Strict-Transport-Security") == expected, path


def _violates(directive):
    return lambda message: ("Content Security Policy" in message.text
                            and directive in message.text)


@pytest.mark.parametrize("path", PAGES)
async def test_each_page_runs_under_its_policy_and_refuses_inline_script_and_framing(
    api, browser, path
):
    from tests.support import page_errors

    url = str(api.client.make_url(path))
    page = await browser.new_page()
    errors = page_errors(page)
    await page.goto(url)
    await page.wait_for_load_state("load")
    # The page's own scripts ran under the policy without a violation ...
    assert await page.evaluate("document.readyState") == "complete"
    assert [e for e in errors if e.startswith("csp:")] == []
    # ... and an injected inline script is refused (and reported to the page tests).
    async with page.expect_console_message(_violates("script-src"), timeout=10_000):
        await page.evaluate("""() => {
            const script = document.createElement("script");
            script.textContent = "document.title = 'injected'";
            document.body.append(script);
        }""")
    assert await page.title() != "injected"
    assert [e for e in errors if "script-src" in e]
    # Another origin cannot frame it.
    framer = await browser.new_page()
    async with framer.expect_console_message(_violates("frame-ancestors"), timeout=10_000):
        await framer.set_content(f'<iframe src="{url}"></iframe>')
    await framer.close()
    await page.close()
