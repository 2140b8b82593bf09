"""The aiohttp application: the API, operations endpoints and the static pages of ``web/``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from importlib.util import find_spec
from pathlib import Path
from typing import cast

from aiohttp import web

from gateway.api import ROUTES, SERVICES_KEY, Call, Route, add_routes
from gateway.chat_api import CHAT_ROUTES
from gateway.finance_api import FINANCE_ROUTES
from gateway.gift_api import GIFT_ROUTES
from gateway.http import METRICS_KEY, edge_middleware, json_response, security_headers
from gateway.hub import Hub
from gateway.media import add_media_routes
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.openapi import build_document
from gateway.payment_api import PAYMENT_ROUTES
from gateway.services import Services
from gateway.sockets import WS_PATH, FrontDoor
from livecore import schemas

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 2.0


async def healthz(call: Call) -> web.StreamResponse:
    """200 when PostgreSQL and Redis both answer within the timeout, else 503."""
    services = call.services

    async def check_postgres() -> str:
        await asyncio.wait_for(services.pool.fetchval("SELECT 1"), HEALTH_TIMEOUT_S)
        return "ok"

    async def check_redis() -> str:
        await asyncio.wait_for(services.redis.ping(), HEALTH_TIMEOUT_S)
        return "ok"

    results = {}
    for name, check in (("postgres", check_postgres), ("redis", check_redis)):
        try:
            results[name] = await check()
        except Exception as exc:  # any failure of the probe means "not healthy"
            log.warning("health check failed", extra={"dependency": name, "error": repr(exc)})
            results[name] = "unavailable"
    healthy = all(value == "ok" for value in results.values())
    payload = {"status": "ok" if healthy else "unavailable", **results}
    return json_response(payload, status=200 if healthy else 503)


async def metrics(call: Call) -> web.StreamResponse:
    registry = call.request.app[METRICS_KEY]
    live = await call.services.pool.fetchval("SELECT count(*) FROM streams WHERE state = 'live'")
    registry.live_streams.set(live)
    response = web.Response(body=registry.render())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(call: Call) -> web.StreamResponse:
    return json_response(OPENAPI_DOCUMENT)


OPS_ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "Checks PostgreSQL and Redis.", "public", "operations",
          response=schemas.HEALTH),
    Route("GET", "/metrics", metrics, "Prometheus metrics (text format).", "public",
          "operations", response={"type": "string"}),
    Route("GET", "/api/v1/openapi.json", openapi, "This document.", "public", "operations",
          response={"type": "object"}),
)
ALL_ROUTES = ROUTES + CHAT_ROUTES + GIFT_ROUTES + PAYMENT_ROUTES + FINANCE_ROUTES + OPS_ROUTES
HUB_KEY = web.AppKey("hub", Hub)
OPENAPI_DOCUMENT = build_document(ALL_ROUTES)


def web_dir() -> Path:
    """The static pages: ``web/`` in a checkout, the ``livecore_web`` package when installed."""
    # find_spec, not importlib.resources: ``livecore_web`` is a namespace package (no
    # __init__.py in web/), which resources.files() cannot read on Python 3.11.
    spec = find_spec("livecore_web")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The static pages (livecore_web) are not installed.")
    return Path(next(iter(spec.submodule_search_locations)))


def create_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[edge_middleware])
    public = services.settings.public_url
    app.on_response_prepare.append(
        security_headers(https=public is not None and public.lower().startswith("https://")))
    app[SERVICES_KEY] = services
    metrics_registry = Metrics()
    metrics_registry.track_pool(lambda: services.pool.get_size())
    app[METRICS_KEY] = metrics_registry
    add_routes(app, ALL_ROUTES)
    hub = Hub(services, metrics_registry)
    app[HUB_KEY] = hub
    app.router.add_get(WS_PATH, hub.handle)
    add_media_routes(app, services, node_id=hub.node_id)

    async def start_hub(app: web.Application) -> None:
        await services.gifts.start()
        await hub.start()

    async def stop_hub(app: web.Application) -> None:
        await hub.stop()
        await services.gifts.stop()  # commits the gifts still queued

    app.on_startup.append(start_hub)
    app.on_shutdown.append(stop_hub)
    pages = web_dir()

    def page(name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(pages / name, headers={"Cache-Control": "no-cache"})

        return serve

    for path, name in (("/", "index.html"), ("/watch/{stream_id}", "watch.html"),
                       ("/live/{stream_id}", "golive.html"), ("/finance", "finance.html"),
                       ("/coins", "coins.html"), ("/pay/test/{purchase_id}", "paytest.html"),
                       ("/creator", "creator.html")):
        app.router.add_get(path, page(name))
    app.router.add_static("/static/", pages, append_version=False)
    return app



class Runner(web.AppRunner):
    """aiohttp's runner for :func:`create_app`, with the listening socket's connections
    passing through the :class:`~gateway.sockets.FrontDoor`: websockets are served by the
    hub's lean sockets, every other request by aiohttp."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        app = self.app
        metrics_registry = app[METRICS_KEY]

        def observe(status: int, seconds: float) -> None:
            metrics_registry.observe_request("GET", WS_PATH, status, seconds)

        return cast(web.Server, FrontDoor(
            server, app[HUB_KEY].admit, observe,
            header_timeout_s=app[SERVICES_KEY].settings.header_timeout_s))
