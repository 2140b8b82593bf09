"""More serving processes on one port: ``LIVECORE_PROCESSES``.

One Python process writes to its sockets one after the other on one core, and holds at most
its open-file limit of them. ``livecore serve`` with ``LIVECORE_PROCESSES=N`` starts N - 1
more serving processes once it listens; every process binds the same port with
``SO_REUSEPORT``, so the kernel spreads new connections over them. Each is a gateway node of
its own (its own hub, Redis pub/sub connection and gift batcher) sharing PostgreSQL and Redis
with the others, which the hub already supports for separate machines: a room's subscribers
on several processes are flushed in parallel, on several cores.

The first process supervises the others: it restarts one that dies (at most once per
:data:`RESTART_INTERVAL_S`), and on shutdown it stops them (SIGTERM, then SIGKILL past a
deadline) before it stops its own server and the embedded PostgreSQL and Redis. Each extra
process also stops by itself if the first one disappears (its parent changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)

RESTART_INTERVAL_S = 1.0
STOP_TIMEOUT_S = 15.0
#: The hidden ``serve`` flag that makes a process one of the extra ones.
EXTRA_FLAG = "--extra-process"


class ServingProcesses:
    def __init__(self, count: int, *, port: int, database_url: str, redis_url: str) -> None:
        self.count = count
        self.env = dict(os.environ, PORT=str(port), DATABASE_URL=database_url,
                        REDIS_URL=redis_url)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-c", "from gateway.cli import main; main()", "serve",
                   EXTRA_FLAG]
        return subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.processes = [self._spawn() for _ in range(self.count)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def supervise(self) -> None:
        """Restart the processes that exit while the node is serving."""
        last_restart = 0.0
        while not self._stopping:
            await asyncio.sleep(0.2)
            for index, process in enumerate(self.processes):
                code = process.poll()
                if code is None or self._stopping:
                    continue
                if time.monotonic() - last_restart < RESTART_INTERVAL_S:
                    continue
                log.error("a serving process exited; starting another",
                          extra={"pid": process.pid, "exit_status": code})
                self.processes[index] = self._spawn()
                self.restarts += 1
                last_restart = time.monotonic()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._stopping = True
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                await asyncio.to_thread(process.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("a serving process did not stop in time; killing it",
                            extra={"pid": process.pid})
                process.kill()
                await asyncio.to_thread(process.wait)


async def watch_parent(stop: asyncio.Event) -> None:
    """In an extra process: stop when the supervising process is gone."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("the supervising process is gone; stopping")
            stop.set()
            return
        await asyncio.sleep(1.0)
