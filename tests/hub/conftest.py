"""Fixtures for the websocket hub: real servers on real sockets, one or two nodes."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from gateway.app import create_app
from gateway.client import HubClient
from gateway.services import Services
from livecore.accounts import Role
from livecore.streams import StreamEvent
from livecore.wire import SERVER_SCHEMAS, SUBSCRIBE_RESULT
from tests.support import ApiClient


def check_traffic(client: HubClient) -> None:
    """Every message the client received matches the published schema for its type."""
    checker = FormatChecker()
    for message in [client.hello, *client.received]:
        schema = SERVER_SCHEMAS[message["type"]]
        errors = list(Draft202012Validator(schema, format_checker=checker).iter_errors(message))
        assert not errors, (message, [e.message for e in errors])
        result = message.get("result", {})
        if message["type"] == "ack" and "epoch" in result:
            errors = list(Draft202012Validator(SUBSCRIBE_RESULT, format_checker=checker)
                          .iter_errors(result))
            assert not errors, (message, [e.message for e in errors])


@dataclass
class Node:
    api: ApiClient

    @property
    def ws_url(self) -> str:
        return str(self.api.client.make_url("/ws")).replace("http://", "ws://")

    @contextlib.asynccontextmanager
    async def client(self, token: str | None = None, **options: Any) -> AsyncIterator[HubClient]:
        client = await HubClient.connect(self.ws_url, token=token, **options)
        try:
            yield client
            check_traffic(client)
        finally:
            await client.close()


@pytest.fixture
async def node(services: Services) -> AsyncIterator[Node]:
    async with ApiClient.serving(create_app(services)) as api:
        yield Node(api)


@pytest.fixture
async def second_node(services: Services) -> AsyncIterator[Node]:
    """Another gateway node: its own app, hub and Redis pub/sub, the same database."""
    async with ApiClient.serving(create_app(services)) as api:
        yield Node(api)


@pytest.fixture
async def live_room(node: Node) -> tuple[str, str]:
    """(stream id, creator token) for a fresh stream."""
    _, token = await node.api.new_creator()
    _, stream = await node.api.request("POST", "/api/v1/streams", token=token,
                                       json={"title": "Hub test"})
    return stream["id"], token


@pytest.fixture
async def economy(node: Node, services: Services) -> dict[str, str]:
    """An admin, a live stream, and a viewer with 100 granted coins."""
    api = node.api
    admin, admin_token = await api.new_user()
    await services.accounts.set_roles(admin["id"], {Role.ADMIN}, actor_id=None, reason="t",
                                      now=dt.datetime.now(dt.UTC))
    creator, creator_token = await api.new_creator()
    _, stream = await api.request("POST", "/api/v1/streams", token=creator_token,
                                  json={"title": "Gifts"})
    await services.streams.transition(stream["id"], StreamEvent.START, dt.datetime.now(dt.UTC))
    viewer, viewer_token = await api.new_user()
    grant_id = str(uuid.uuid4())
    response, body = await api.request("POST", "/api/v1/admin/grants", token=admin_token,
                                       json={"grant_id": grant_id, "user_id": viewer["id"],
                                             "coins": 100, "memo": "welcome"})
    assert response.status == 201 and body["replayed"] is False
    return {"admin": admin_token, "creator": creator_token, "creator_id": creator["id"],
            "stream": stream["id"], "viewer": viewer_token, "viewer_id": viewer["id"],
            "grant_id": grant_id}


async def send_gift(api: ApiClient, token: str, room: str, gift: str = "rose",
                    quantity: int = 1) -> dict[str, Any]:
    response, body = await api.request("POST", "/api/v1/gifts", token=token, json={
        "gift_id": str(uuid.uuid4()), "stream_id": room, "gift": gift, "quantity": quantity})
    assert response.status == 201, body
    return body
