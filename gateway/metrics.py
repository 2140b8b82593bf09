"""Prometheus metrics of one server process.

Each application gets its own registry (tests run several in one process); ``GET /metrics``
serves it in the Prometheus text format. Labels are bounded: routes by their pattern, never by
raw path.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from livecore.reconciliation import Report

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "WorkerMetrics"]


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
        self.gc_pause = Histogram(
            "livecore_gc_full_pause_seconds",
            "Full (generation 2) garbage collections: each stops the event loop this long.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.ws_writes = Counter(
            "livecore_ws_writes",
            "Socket writes of room events (deliveries / writes = events coalesced per write).",
            registry=self.registry,
        )
        self.ws_refused = Counter(
            "livecore_ws_refused", "Websocket upgrades refused because the node was full.",
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

    def watch_gc(self) -> Callable[[], None]:
        """Time the collector's full passes (they stop the event loop); returns the undo."""
        started: list[float] = []

        def callback(phase: str, info: dict[str, int]) -> None:
            if info["generation"] != 2:
                return
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                self.gc_pause.observe(time.perf_counter() - started.pop())

        gc.callbacks.append(callback)
        return lambda: gc.callbacks.remove(callback)

    def track_pool(self, size: Callable[[], int]) -> None:
        self.db_pool_size.set_function(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class WorkerMetrics:
    """Metrics of one ``livecore worker`` (served on LIVECORE_WORKER_METRICS_PORT)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconcile_passes = Counter(
            "livecore_reconcile_passes", "Reconciliation passes this worker ran.",
            registry=self.registry,
        )
        self.reconcile_failures = Counter(
            "livecore_reconcile_failures", "Worker passes that failed (a dependency down).",
            registry=self.registry,
        )
        self.reconcile_differences = Counter(
            "livecore_reconcile_differences",
            "Streams whose Redis projection differed from the ledger on both looks, by outcome "
            "(found, repaired).",
            ["outcome"], registry=self.registry,
        )
        self.reconcile_transient = Counter(
            "livecore_reconcile_transient",
            "Differences that settled between the two looks (gifts between COMMIT and Redis).",
            registry=self.registry,
        )
        self.reconcile_streams = Gauge(
            "livecore_reconcile_streams_checked", "Streams the last pass checked.",
            registry=self.registry,
        )
        self.reconcile_last = Gauge(
            "livecore_reconcile_last_pass_timestamp_seconds",
            "When this worker's last pass finished (Unix time).", registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "livecore_reconcile_pass_duration_seconds", "Time a reconciliation pass took.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120), registry=self.registry,
        )

    def observe_reconciliation(self, report: Report) -> None:
        self.reconcile_passes.inc()
        self.reconcile_differences.labels("found").inc(report.differences_found)
        self.reconcile_differences.labels("repaired").inc(report.differences_repaired)
        self.reconcile_transient.inc(report.transient)
        self.reconcile_streams.set(report.streams_checked)
        self.reconcile_last.set(report.finished_at.timestamp())
        self.reconcile_duration.observe(
            (report.finished_at - report.started_at).total_seconds())

    def render(self) -> bytes:
        return generate_latest(self.registry)
