"""HTTP API load: the stream listing under concurrent clients, against a bare aiohttp baseline.

    python -m loadtests.http_api [--concurrency 32] [--seconds 10] [--streams 20]

Runs `livecore serve` (against DATABASE_URL / REDIS_URL, or embedded servers in a temporary
directory) with some streams, and in the same run a baseline: a plain aiohttp server answering
the same bytes from memory. Each gets the same load (GET /api/v1/streams from N concurrent
keep-alive clients for D seconds). Prints requests/s, latency percentiles and the server's CPU
per request side by side, and the ratios. The gap is what the real endpoint costs:
authentication lookup, a PostgreSQL query, serialisation, logging, metrics.

Do not point DATABASE_URL at a database you care about: the run migrates it and adds users.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

import aiohttp

from loadtests.common import (
    Figures,
    console,
    cpu_seconds,
    free_port,
    progress,
    report,
    server_process,
)

# Streams go live only when media arrives (the media issue); until then the load lists
# created streams, which runs the same query and serialisation.
PATH = "/api/v1/streams?state=created&limit=20"
BASELINE_SERVER = """
import sys
from aiohttp import web
body = open(sys.argv[2], "rb").read()
async def handle(request):
    return web.Response(body=body, content_type="application/json")
async def health(request):
    return web.Response(text="ok")
app = web.Application()
app.router.add_get("/api/v1/streams", handle)
app.router.add_get("/healthz", health)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def seed(base: str, streams: int) -> bytes:
    """``streams`` creators, each with a stream; returns the listing's body."""
    async with aiohttp.ClientSession(base) as http:
        for index in range(streams):
            name = f"load{os.getpid()}x{index}"
            body = {"username": name, "password": "load test password", "birthdate": "1990-01-01"}
            await (await http.post("/api/v1/auth/register", json=body)).read()
            login = {"username": name, "password": "load test password"}
            async with http.post("/api/v1/auth/login", json=login) as response:
                token = (await response.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            await (await http.post("/api/v1/me/creator", headers=headers)).read()
            await (await http.post("/api/v1/streams", headers=headers,
                                   json={"title": f"Load stream {index}"})).read()
        async with http.get(PATH) as response:
            return await response.read()


async def hammer(name: str, base: str, pid: int, concurrency: int, seconds: float,
                 path: str) -> Figures:
    latencies: list[float] = []
    errors = 0
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    deadline = started + seconds
    with progress() as bar:
        task = bar.add_task(f"{name:>10}", total=None)

        async def client(http: aiohttp.ClientSession) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                async with http.get(path) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - sent)
                bar.advance(task)

        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(base, connector=connector) as http:
            await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Figures(name, len(latencies), elapsed, latencies, cpu_seconds(pid) - cpu_before,
                   errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()

    livecore_port, baseline_port = free_port(), free_port()
    env = dict(os.environ, PORT=str(livecore_port), LIVECORE_LOG_LEVEL="WARNING")
    if "DATABASE_URL" not in env or "REDIS_URL" not in env:
        env["LIVECORE_DATA_DIR"] = tempfile.mkdtemp(prefix="livecore-load-")
    livecore = [os.path.join(os.path.dirname(sys.executable), "livecore"), "serve"]
    path = PATH
    with server_process(livecore, env=env, port=livecore_port) as pid:
        base = f"http://127.0.0.1:{livecore_port}"
        body = asyncio.run(seed(base, args.streams))
        console.print(f"listing body: {len(body):,} bytes, {args.streams} streams")
        subject = asyncio.run(hammer("livecore", base, pid, args.concurrency, args.seconds, path))
    with tempfile.NamedTemporaryFile() as payload:
        payload.write(body)
        payload.flush()
        baseline_cmd = [sys.executable, "-c", BASELINE_SERVER, str(baseline_port), payload.name]
        with server_process(baseline_cmd, env=dict(os.environ), port=baseline_port) as pid:
            base = f"http://127.0.0.1:{baseline_port}"
            baseline = asyncio.run(
                hammer("baseline", base, pid, args.concurrency, args.seconds, path)
            )
    report(f"GET {path}, {args.concurrency} clients, {args.seconds:.0f} s", subject, baseline)


if __name__ == "__main__":
    main()
