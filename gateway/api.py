"""The HTTP API under ``/api/v1/``: one table of routes, and their handlers.

Each :class:`Route` declares who may call it (``access``), the JSON Schema of its body and of
its answer, and its query parameters. :func:`dispatch` authenticates, authorises and validates
before a handler runs, so no handler can forget to; :mod:`gateway.openapi` renders the same
table as the OpenAPI document, so the document cannot drift from the endpoints.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.exceptions
from aiohttp import web

from gateway import auth
from gateway.http import METRICS_KEY, client_address, json_response, read_json
from gateway.services import Services
from gateway.store import TokenInfo
from livecore import schemas
from livecore.accounts import (
    Account,
    Permission,
    Role,
    check_password,
    is_adult,
    normalise_roles,
    parse_birthdate,
    parse_username,
    sorted_roles,
)
from livecore.errors import BadRequest, Conflict, Forbidden, TooManyRequests, Unauthenticated
from livecore.ids import StreamId, TokenId, UserId, parse_stream_id, parse_token_id, parse_user_id
from livecore.pagination import decode_cursor, encode_cursor, parse_limit
from livecore.streams import Stream, StreamEvent, StreamState, StreamText
from livecore.times import iso_time

log = logging.getLogger(__name__)

SERVICES_KEY = web.AppKey("services", Services)

Access = Literal["public", "optional", "user"] | Permission


@dataclass
class Call:
    """What a handler gets: the request, the services, the caller, the validated body, now."""

    request: web.Request
    services: Services
    user: Account | None
    token_id: TokenId | None
    body: dict[str, Any]
    now: dt.datetime

    @property
    def account(self) -> Account:
        assert self.user is not None, "route declared without authentication"
        return self.user


RouteHandler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    schema: schemas.Schema = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: RouteHandler
    summary: str
    access: Access
    tag: str
    body: schemas.Schema | None = None
    response: schemas.Schema | None = None
    status: int = 200
    query: tuple[QueryParam, ...] = ()
    errors: tuple[int, ...] = ()


async def authenticate(request: web.Request, services: Services, now: dt.datetime) -> tuple[
    Account | None, TokenId | None
]:
    """The caller behind the bearer token; a token that is sent but not valid is a 401."""
    header = request.headers.get("Authorization")
    if header is None:
        return None, None
    token = auth.bearer_token(header)
    if token is None:
        raise Unauthenticated(
            "The Authorization header must be 'Bearer <token>'.", code="invalid_authorization"
        )
    found = await services.accounts.by_token(auth.token_digest(token), now)
    if found is None:
        raise Unauthenticated("The token is unknown, expired or revoked.", code="invalid_token")
    return found


def dispatch(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES_KEY]
        now = services.clock()
        user, token_id = (None, None)
        if route.access != "public":
            user, token_id = await authenticate(request, services, now)
        if route.access not in ("public", "optional"):
            if user is None:
                raise Unauthenticated("Log in first: send 'Authorization: Bearer <token>'.")
            if isinstance(route.access, Permission) and not user.can(route.access):
                raise Forbidden(
                    "Your account's roles do not allow this.",
                    code="forbidden_role",
                    required=route.access.value,
                )
        body: dict[str, Any] = {}
        if route.body is not None:
            raw = await read_json(request, max_bytes=services.settings.max_body_bytes)
            body = schemas.validate(route.body, raw)
        return await route.handler(Call(request, services, user, token_id, body, now))

    return handle


# -- serialisation ------------------------------------------------------------------------


def user_json(account: Account, now: dt.datetime, *, private: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(account.id),
        "username": account.username,
        "roles": sorted_roles(account.roles),
        "is_adult": is_adult(account.birthdate, now.date()),
        "created_at": iso_time(account.created_at),
    }
    if private:
        data["birthdate"] = account.birthdate.isoformat()
    return data


def base_url(call: Call) -> str:
    configured = call.services.settings.public_url
    if configured:
        return configured.rstrip("/")
    return f"{call.request.scheme}://{call.request.host}"


def stream_json(call: Call, stream: Stream) -> dict[str, Any]:
    base = base_url(call)
    data: dict[str, Any] = {
        "id": str(stream.id),
        "creator_id": str(stream.creator_id),
        "creator_username": stream.creator_username,
        "title": stream.title,
        "description": stream.description,
        "state": stream.state.value,
        "created_at": iso_time(stream.created_at),
        "started_at": iso_time(stream.started_at),
        "ended_at": iso_time(stream.ended_at),
        "whep_url": f"{base}/whep/{stream.id}",
        "hls_url": f"{base}/hls/{stream.id}/index.m3u8",
    }
    if call.user is not None and call.user.id == stream.creator_id:
        # Only the owner learns how to publish.
        data["whip_url"] = f"{base}/whip/{stream.id}"
        data["stream_key"] = stream.stream_key
    return data


def token_json(token: TokenInfo, current: TokenId | None) -> dict[str, Any]:
    return {
        "id": str(token.id),
        "created_at": iso_time(token.created_at),
        "expires_at": iso_time(token.expires_at),
        "is_current": token.id == current,
    }


# -- accounts -----------------------------------------------------------------------------


async def register(call: Call) -> web.StreamResponse:
    settings = call.services.settings
    username = parse_username(call.body["username"])
    password = call.body["password"]
    check_password(password, username=username)
    birthdate = parse_birthdate(
        call.body["birthdate"], today=call.now.date(), min_age_years=settings.min_signup_age
    )
    account = await call.services.accounts.create(
        user_id=UserId(uuid.uuid4()),
        username=username,
        password_hash=await auth.hash_password(password),
        birthdate=birthdate,
        roles={Role.VIEWER},
        now=call.now,
    )
    return json_response(user_json(account, call.now, private=True), status=201)


async def confirm_password(call: Call, password: str) -> None:
    """The caller types their password again before a sensitive change (where payouts go):
    a stolen token alone is not enough. Wrong answers count against the login throttle."""
    services = call.services
    username = call.account.username
    address = client_address(
        call.request, trust_proxy_headers=services.settings.trust_proxy_headers
    )
    await services.throttle.check(username, address)
    found = await services.accounts.credentials(username)
    ok, _ = await auth.verify_password(found[1] if found else None, password)
    if not ok:
        await services.throttle.failed(username, address)
        raise Forbidden("That is not your password; this change needs it.",
                        code="wrong_password")
    await services.throttle.succeeded(username, address)


async def login(call: Call) -> web.StreamResponse:
    services = call.services
    logins = call.request.app[METRICS_KEY].logins
    username = call.body["username"].strip().lower()
    address = client_address(
        call.request, trust_proxy_headers=services.settings.trust_proxy_headers
    )
    try:
        await services.throttle.check(username, address)
    except TooManyRequests:
        logins.labels("throttled").inc()
        raise
    found = await services.accounts.credentials(username)
    ok, rehashed = await auth.verify_password(
        found[1] if found else None, call.body["password"]
    )
    if found is None or not ok:
        await services.throttle.failed(username, address)
        logins.labels("invalid").inc()
        raise Unauthenticated("Wrong username or password.", code="invalid_credentials")
    logins.labels("ok").inc()
    account = found[0]
    await services.throttle.succeeded(username, address)
    if rehashed is not None:
        await services.accounts.set_password_hash(account.id, rehashed)
    token, digest = auth.new_token()
    token_id = TokenId(uuid.uuid4())
    expires_at = call.now + dt.timedelta(seconds=services.settings.token_ttl_s)
    await services.accounts.add_token(
        token_id=token_id,
        user_id=account.id,
        token_hash=digest,
        now=call.now,
        expires_at=expires_at,
    )
    return json_response(
        {
            "token": token,
            "token_id": str(token_id),
            "expires_at": iso_time(expires_at),
            "user": user_json(account, call.now, private=True),
        }
    )


async def logout(call: Call) -> web.StreamResponse:
    assert call.token_id is not None
    await call.services.accounts.revoke_token(call.account.id, call.token_id, call.now)
    return web.Response(status=204)


async def list_tokens(call: Call) -> web.StreamResponse:
    tokens = await call.services.accounts.tokens(call.account.id, call.now)
    return json_response({"tokens": [token_json(t, call.token_id) for t in tokens]})


async def revoke_token(call: Call) -> web.StreamResponse:
    token_id = parse_token_id(call.request.match_info["token_id"])
    await call.services.accounts.revoke_token(call.account.id, token_id, call.now)
    return web.Response(status=204)


async def me(call: Call) -> web.StreamResponse:
    return json_response(user_json(call.account, call.now, private=True))


async def become_creator(call: Call) -> web.StreamResponse:
    account = call.account
    _require_adult_for_creator(account, call.now)
    if Role.CREATOR not in account.roles:
        account = await call.services.accounts.set_roles(
            account.id,
            account.roles | {Role.CREATOR},
            actor_id=account.id,
            reason="became a creator",
            now=call.now,
        )
    return json_response(user_json(account, call.now, private=True))


def _require_adult_for_creator(account: Account, now: dt.datetime) -> None:
    if not is_adult(account.birthdate, now.date()):
        raise Forbidden("Only adults can be creators.", code="not_adult")


async def list_users(call: Call) -> web.StreamResponse:
    limit = parse_limit(call.request.query.get("limit"))
    after = call.request.query.get("cursor") or None
    users = await call.services.accounts.page(limit=limit, after_username=after)
    next_cursor = users[-1].username if len(users) == limit else None
    return json_response(
        {"users": [user_json(u, call.now) for u in users], "next_cursor": next_cursor}
    )


async def get_user(call: Call) -> web.StreamResponse:
    user_id = parse_user_id(call.request.match_info["user_id"])
    account = await call.services.accounts.get(user_id)
    return json_response(user_json(account, call.now, private=True))


async def set_user_roles(call: Call) -> web.StreamResponse:
    user_id = parse_user_id(call.request.match_info["user_id"])
    roles = normalise_roles(call.body["roles"])
    target = await call.services.accounts.get(user_id)
    if Role.CREATOR in roles and Role.CREATOR not in target.roles:
        _require_adult_for_creator(target, call.now)
    if user_id == call.account.id and Role.ADMIN not in roles:
        raise Conflict(
            "Admins cannot remove their own admin role; ask another admin.",
            code="cannot_demote_self",
        )
    account = await call.services.accounts.set_roles(
        user_id, roles, actor_id=call.account.id, reason="set by admin", now=call.now
    )
    return json_response(user_json(account, call.now, private=True))


# -- streams ------------------------------------------------------------------------------


async def create_stream(call: Call) -> web.StreamResponse:
    account = call.account
    if not is_adult(account.birthdate, call.now.date()):
        raise Forbidden("Only adults can go live.", code="not_adult")
    text = StreamText.parse(call.body["title"], call.body.get("description"))
    stream = await call.services.streams.create(
        stream_id=StreamId(uuid.uuid4()),
        creator_id=account.id,
        text=text,
        stream_key=auth.new_stream_key(),
        now=call.now,
    )
    return json_response(
        stream_json(call, stream),
        status=201,
        headers={"Location": f"/api/v1/streams/{stream.id}"},
    )


_STATE_FILTERS = {"live": StreamState.LIVE, "created": StreamState.CREATED,
                  "ended": StreamState.ENDED, "all": None}


async def list_streams(call: Call) -> web.StreamResponse:
    query = call.request.query
    state_name = query.get("state", "live")
    if state_name not in _STATE_FILTERS:
        raise BadRequest(
            f"state must be one of {', '.join(_STATE_FILTERS)}.", code="invalid_state_filter"
        )
    creator_id = None
    if "creator_id" in query:
        try:
            creator_id = UserId(uuid.UUID(query["creator_id"]))
        except ValueError:
            raise BadRequest("creator_id must be a UUID.", code="invalid_creator_id") from None
    limit = parse_limit(query.get("limit"))
    cursor = query.get("cursor")
    streams = await call.services.streams.page(
        state=_STATE_FILTERS[state_name],
        creator_id=creator_id,
        limit=limit,
        before=decode_cursor(cursor) if cursor else None,
    )
    last = streams[-1] if len(streams) == limit else None
    return json_response(
        {
            "streams": [stream_json(call, s) for s in streams],
            "next_cursor": encode_cursor(last.created_at, last.id) if last else None,
        }
    )


async def get_stream(call: Call) -> web.StreamResponse:
    stream = await call.services.streams.get(parse_stream_id(call.request.match_info["stream_id"]))
    return json_response(stream_json(call, stream))


async def owned_or_moderated(call: Call, *, owner_only: bool = False) -> Stream:
    stream = await call.services.streams.get(parse_stream_id(call.request.match_info["stream_id"]))
    is_owner = stream.creator_id == call.account.id
    if not is_owner and (owner_only or not call.account.can(Permission.STREAM_MODERATE)):
        raise Forbidden("Only the stream's owner can do this.", code="not_stream_owner")
    return stream


async def update_stream(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    title = call.body.get("title", stream.title)
    description = call.body.get("description", stream.description)
    text = StreamText.parse(title, description)
    updated = await call.services.streams.update_text(stream.id, text)
    return json_response(stream_json(call, updated))


async def rotate_stream_key(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call, owner_only=True)
    updated = await call.services.streams.set_key(stream.id, auth.new_stream_key())
    return json_response(stream_json(call, updated))


#: Called with a stream's id when the API ends it (the media plane hangs up its publisher).
STREAM_ENDED_KEY = web.AppKey("stream_ended", list[Callable[[StreamId], Awaitable[None]]])


async def end_stream(call: Call) -> web.StreamResponse:
    stream = await owned_or_moderated(call)
    ended = await call.services.streams.transition(stream.id, StreamEvent.END, call.now)
    await publish_state(call.services, ended)
    for hang_up in call.request.app.get(STREAM_ENDED_KEY, []):
        await hang_up(ended.id)
    return json_response(stream_json(call, ended))


async def publish_state(services: Services, stream: Stream) -> None:
    """Tell the room the stream's new state. The state is already saved: if Redis is away the
    event is lost, but every client's next snapshot carries the state, so this only logs."""
    try:
        await services.bus.publish(
            str(stream.id), "stream.state", {"state": stream.state.value}, time.time()
        )
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning("stream state not published", extra={"stream_id": str(stream.id),
                                                          "error": repr(exc)})


# -- the table ----------------------------------------------------------------------------

_LIMIT = QueryParam(
    "limit", "Page size, 1 to 200 (default 50).", {"type": "integer", "minimum": 1, "maximum": 200}
)
_CURSOR = QueryParam("cursor", "The `next_cursor` of the previous page.")

ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/v1/auth/register", register, "Create an account.", "public", "accounts",
          body=schemas.REGISTER, response=schemas.USER, status=201, errors=(409, 422)),
    Route("POST", "/api/v1/auth/login", login, "Exchange username and password for a token.",
          "public", "accounts", body=schemas.LOGIN, response=schemas.LOGIN_RESULT,
          errors=(401, 422, 429)),
    Route("POST", "/api/v1/auth/logout", logout, "Revoke the token used for this call.", "user",
          "accounts", status=204),
    Route("GET", "/api/v1/auth/tokens", list_tokens, "The caller's live tokens.", "user",
          "accounts", response=schemas.TOKEN_LIST),
    Route("DELETE", "/api/v1/auth/tokens/{token_id}", revoke_token, "Revoke one of your tokens.",
          "user", "accounts", status=204, errors=(404,)),
    Route("GET", "/api/v1/me", me, "The caller's account.", "user", "accounts",
          response=schemas.USER),
    Route("POST", "/api/v1/me/creator", become_creator, "Become a creator (adults only).",
          "user", "accounts", response=schemas.USER, errors=(403,)),
    Route("GET", "/api/v1/users", list_users, "All accounts, by username.", Permission.USER_READ,
          "admin", response=schemas.USER_LIST, query=(_LIMIT, _CURSOR), errors=(400, 403)),
    Route("GET", "/api/v1/users/{user_id}", get_user, "One account.", Permission.USER_READ,
          "admin", response=schemas.USER, errors=(403, 404)),
    Route("PUT", "/api/v1/users/{user_id}/roles", set_user_roles, "Replace an account's roles.",
          Permission.USER_MANAGE, "admin", body=schemas.SET_ROLES, response=schemas.USER,
          errors=(403, 404, 409, 422)),
    Route("POST", "/api/v1/streams", create_stream, "Create a stream (creators).",
          Permission.STREAM_CREATE, "streams", body=schemas.STREAM_CREATE,
          response=schemas.STREAM, status=201, errors=(403, 409, 422)),
    Route("GET", "/api/v1/streams", list_streams, "Streams, newest first (live by default).",
          "optional", "streams", response=schemas.STREAM_LIST,
          query=(QueryParam("state", "live (default), created, ended or all.",
                            {"type": "string", "enum": list(_STATE_FILTERS)}),
                 QueryParam("creator_id", "Only this creator's streams.",
                            {"type": "string", "format": "uuid"}),
                 _LIMIT, _CURSOR),
          errors=(400,)),
    Route("GET", "/api/v1/streams/{stream_id}", get_stream,
          "One stream (its key and whip_url only for its owner).", "optional", "streams",
          response=schemas.STREAM, errors=(404,)),
    Route("PATCH", "/api/v1/streams/{stream_id}", update_stream,
          "Change title or description (owner or moderator).", "user", "streams",
          body=schemas.STREAM_UPDATE, response=schemas.STREAM, errors=(403, 404, 422)),
    Route("POST", "/api/v1/streams/{stream_id}/key", rotate_stream_key,
          "Replace the stream key (owner); the old key stops working.", "user", "streams",
          response=schemas.STREAM, errors=(403, 404, 409)),
    Route("POST", "/api/v1/streams/{stream_id}/end", end_stream,
          "End the stream (owner or moderator).", "user", "streams", response=schemas.STREAM,
          errors=(403, 404, 409)),
)


def add_routes(app: web.Application, routes: tuple[Route, ...]) -> None:
    for route in routes:
        app.router.add_route(route.method, route.path, dispatch(route))
