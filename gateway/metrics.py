"""Prometheus metrics of one server process.

Each application gets its own registry (tests run several in one process); ``GET /metrics``
serves it in the Prometheus text format. Labels are bounded: routes by their pattern, never by
raw path.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "livecore_http_requests",
            "HTTP requests answered, by method, route pattern and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "livecore_http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.logins = Counter(
            "livecore_logins",
            "Login attempts by outcome (ok, invalid, throttled).",
            ["outcome"],
            registry=self.registry,
        )
        self.db_pool_size = Gauge(
            "livecore_db_pool_connections",
            "PostgreSQL connections held by this process's pool.",
            registry=self.registry,
        )
        self.live_streams = Gauge(
            "livecore_live_streams", "Streams that are live.", registry=self.registry
        )
        self.ws_connections = Gauge(
            "livecore_ws_connections", "Open websocket connections on this node.",
            registry=self.registry,
        )
        self.ws_rooms = Gauge(
            "livecore_ws_rooms", "Rooms with local subscribers (or recently had).",
            registry=self.registry,
        )
        self.room_events = Counter(
            "livecore_room_events", "Room events received from Redis by this node.",
            registry=self.registry,
        )
        self.deliveries = Counter(
            "livecore_ws_deliveries", "Room events written to sockets (events x sockets).",
            registry=self.registry,
        )
        self.ws_closed = Counter(
            "livecore_ws_closed", "Websockets the server closed, by reason.", ["reason"],
            registry=self.registry,
        )
        self.fanout_lag = Histogram(
            "livecore_fanout_lag_seconds",
            "From an event's publication (its ts) to its hand-over to the local sockets.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=self.registry,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_latency.labels(route).observe(seconds)

    def track_pool(self, size: Callable[[], int]) -> None:
        self.db_pool_size.set_function(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
