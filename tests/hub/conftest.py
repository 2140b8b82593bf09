"""Fixtures for the websocket hub: real servers on real sockets, one or two nodes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from gateway.app import create_app
from gateway.client import HubClient
from gateway.services import Services
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
