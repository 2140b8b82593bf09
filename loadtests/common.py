"""Shared pieces of the load generators: percentiles, a progress bar, server CPU readings."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


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


def report(title: str, subject: Figures, baseline: Figures) -> None:
    """Both runs side by side, and the subject as a ratio of the baseline."""
    table = Table(title=title)
    table.add_column("figure")
    table.add_column(subject.name, justify="right")
    table.add_column(baseline.name, justify="right")
    table.add_column("ratio", justify="right")

    def row(label: str, a: float, b: float, fmt: str = "{:,.1f}") -> None:
        table.add_row(label, fmt.format(a), fmt.format(b), f"{a / b:.2f}" if b else "-")

    row("requests/s", subject.per_second, baseline.per_second)
    for fraction, label in ((0.5, "p50 ms"), (0.95, "p95 ms"), (0.99, "p99 ms")):
        row(label, subject.latency_ms(fraction), baseline.latency_ms(fraction), "{:.2f}")
    row("server CPU µs/request", subject.cpu_us_per_op, baseline.cpu_us_per_op)
    table.add_row("errors", str(subject.errors), str(baseline.errors), "")
    console.print(table)


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


@contextlib.contextmanager
def server_process(args: list[str], *, env: dict[str, str], port: int,
                   ready_path: str = "/healthz") -> Iterator[int]:
    """Start a server process, wait until ``ready_path`` answers, yield its pid, stop it."""
    import urllib.request

    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    sys.exit(f"server {args} did not start:\n{err[-2000:]}")
                time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        process.wait(30)
        if process.stderr:
            process.stderr.close()
