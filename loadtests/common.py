"""Shared pieces of the load generators: percentiles, a progress bar, server CPU readings,
and the side-by-side table every benchmark prints (subject, baseline, ratio)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from websockets.frames import Frame, Opcode

console = Console()


#: The load generators' fixed Sec-WebSocket-Key (any 16 bytes, base64).
WS_KEY = base64.b64encode(b"livecore-loadgen").decode()


def masked(opcode: Opcode, payload: bytes) -> bytes:
    """A client frame (clients must mask)."""
    return Frame(opcode, payload).serialize(mask=True)


def handshake(port: int, token: str | None) -> bytes:
    """The upgrade request of a load generator's websocket (``livecore.v1``)."""
    lines = [
        "GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
        "Connection: Upgrade", f"Sec-WebSocket-Key: {WS_KEY}", "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: livecore.v1",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade_answer(buf: bytes) -> int | str | None:
    """The server's answer to a load generator's upgrade request, read from the start of
    ``buf``: None until all of it has arrived; the offset of the first frame after a
    ``101``; the status line of a refusal."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    if not buf.startswith(b"HTTP/1.1 101"):
        return buf[: buf.find(b"\r\n")].decode(errors="replace")
    return end + 4


class UpgradingSocket(asyncio.Protocol):
    """A load generator's websocket connection: it sends its ``upgrade_request``, reads the
    server's answer, then hands every read (after what the last one kept) to :meth:`received`,
    from the offset of the first frame; what that returns is kept for the next read."""

    __slots__ = ("upgrade_request", "transport", "buffer", "upgraded")

    def __init__(self, upgrade_request: bytes) -> None:
        self.upgrade_request = upgrade_request
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.upgrade_request)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos = 0
        if not self.upgraded:
            answer = upgrade_answer(buf)
            if answer is None:
                self.buffer = buf
                return
            if isinstance(answer, str):
                self.buffer = b""
                self.refused(answer)
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            pos = answer
            self.opened()
        self.buffer = self.received(buf, pos)

    def opened(self) -> None:
        """The upgrade was accepted (before the first frames are handed on)."""

    def refused(self, status_line: str) -> None:
        """The server refused the upgrade; the connection is closed next."""

    def received(self, buf: bytes, pos: int) -> bytes:
        """Read the frames in ``buf`` from ``pos``; returns the bytes to keep (an incomplete
        frame's)."""
        raise NotImplementedError


def next_frame(buf: bytes, pos: int) -> tuple[int, int, int] | None:
    """The next complete server frame in ``buf`` from ``pos``: (opcode, payload start, payload
    end), or None if it has not all arrived (server frames are never masked)."""
    size = len(buf)
    if size - pos < 2:
        return None
    length = buf[pos + 1] & 0x7F
    head = 2
    if length == 126:
        if size - pos < 4:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        head = 4
    elif length == 127:
        if size - pos < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        head = 10
    start = pos + head
    end = start + length
    if end > size:
        return None
    return buf[pos] & 0x0F, start, end


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Figures:
    name: str
    count: int
    seconds: float
    latencies_s: list[float]
    server_cpu_s: float
    errors: int = 0

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def latency_ms(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_s), fraction) * 1000

    @property
    def cpu_us_per_op(self) -> float:
        return self.server_cpu_s / self.count * 1e6 if self.count else 0.0


@dataclass(frozen=True)
class Row:
    """One line of a comparison: a figure for the subject and for the baseline (None: n/a)."""

    label: str
    subject: float | None
    baseline: float | None
    fmt: str = "{:,.1f}"
    ratio: bool = True


def comparison(title: str, subject_name: str, baseline_name: str, rows: Sequence[Row]) -> None:
    """Print both runs side by side, and the subject as a ratio of the baseline."""
    table = Table(title=title)
    table.add_column("figure")
    table.add_column(subject_name, justify="right")
    table.add_column(baseline_name, justify="right")
    table.add_column("ratio", justify="right")
    for r in rows:
        a = "-" if r.subject is None else r.fmt.format(r.subject)
        b = "-" if r.baseline is None else r.fmt.format(r.baseline)
        ratio = ""
        if r.ratio and r.subject is not None and r.baseline:
            ratio = f"{r.subject / r.baseline:.2f}"
        table.add_row(r.label, a, b, ratio)
    console.print(table)


def report(title: str, subject: Figures, baseline: Figures) -> None:
    """Both runs side by side, and the subject as a ratio of the baseline."""
    rows = [Row("requests/s", subject.per_second, baseline.per_second)]
    for fraction, label in ((0.5, "p50 ms"), (0.95, "p95 ms"), (0.99, "p99 ms")):
        rows.append(Row(label, subject.latency_ms(fraction), baseline.latency_ms(fraction),
                        "{:.2f}"))
    rows.append(Row("server CPU µs/request", subject.cpu_us_per_op, baseline.cpu_us_per_op))
    rows.append(Row("errors", subject.errors, baseline.errors, "{:,.0f}", ratio=False))
    comparison(title, subject.name, baseline.name, rows)


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,.0f} done"),
        TimeRemainingColumn(), console=console,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children, in seconds."""
    process = psutil.Process(pid)
    times = process.cpu_times()
    return times.user + times.system


def serving_pids(pid: int) -> list[int]:
    """A ``livecore serve`` and, with ``LIVECORE_PROCESSES`` > 1, the serving processes it
    started (not the embedded PostgreSQL and Redis, which are counted apart)."""
    extra = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.ZombieProcess, psutil.NoSuchProcess):
            if "--extra-process" in child.cmdline():
                extra.append(child.pid)
    return [pid, *extra]


def server_cpu(pid: int) -> float:
    """CPU seconds of a server and its serving processes (psutil counts a child's time in its
    parent's only once the child has exited)."""
    return sum(cpu_seconds(p) for p in serving_pids(pid))


@contextlib.contextmanager
def server_process(args: list[str], *, env: dict[str, str], port: int,
                   ready_path: str = "/healthz", log_path: str | None = None) -> Iterator[int]:
    """Start a server process, wait until ``ready_path`` answers, yield its pid, stop it.

    Its stderr goes to a file (``log_path``, or a temporary one), never to a pipe: a pipe
    nobody reads fills up and then blocks a server that logs a lot.
    """
    import urllib.request

    with contextlib.ExitStack() as stack:
        if log_path is None:
            log = stack.enter_context(tempfile.TemporaryFile())
        else:
            log = stack.enter_context(open(log_path, "w+b"))
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}",
                                                timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        err = log.read().decode(errors="replace")
                        sys.exit(f"server {args} did not start:\n{err[-2000:]}")
                    time.sleep(0.1)
            yield process.pid
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
