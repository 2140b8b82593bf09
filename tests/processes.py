"""Running ``livecore`` (and honcho) as real subprocesses in tests."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(**overrides: str | None) -> dict[str, str]:
    """This process's environment without Livecore settings, plus ``overrides``."""
    env = {
        k: v for k, v in os.environ.items()
        if not (k.startswith("LIVECORE_") or k in {"DATABASE_URL", "REDIS_URL", "PORT"})
    }
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


def run(args: list[str], env: dict[str, str], *, stdin: str = "", timeout: float = 60,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "livecore"), *args], env=env, input=stdin, capture_output=True, text=True,
        timeout=timeout, cwd=cwd,
    )


class Background:
    """A process in its own session whose stdout lines are collected as they arrive."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(
                target=self._pump, args=(self.process.stdout, self.lines), daemon=True
            ),
            threading.Thread(target=self._drain, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        for thread in self._threads:
            thread.join(10)
        self.output()
        if any(thread.is_alive() for thread in self._threads):
            # A grandchild still holds the pipe; closing it under a blocked reader deadlocks.
            raise AssertionError("a child of the process kept its output pipes open")
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    @staticmethod
    def _pump(stream: Any, sink: queue.Queue[str]) -> None:
        for line in stream:
            sink.put(line)

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The first line printed so far, or until ``timeout``, that contains ``text``."""
        for line in self.stdout:
            if text in line:
                return line
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.stdout.append(line)
            if text in line:
                return line
        raise AssertionError(
            f"{text!r} not printed; exit={self.process.poll()}\nstdout:\n{''.join(self.stdout)}"
            f"\nstderr:\n{''.join(self.stderr[-40:])}"
        )

    def output(self) -> str:
        """Everything printed so far (after the process exits: everything)."""
        while True:
            try:
                self.stdout.append(self.lines.get_nowait())
            except queue.Empty:
                return "".join(self.stdout)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C as a terminal sends it: SIGINT to the whole process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process group. (A supervisor such as honcho must be stopped with
        :meth:`interrupt` first: its children live in groups of their own.)"""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
