"""JSON logs, configured once at an entry point.

One JSON object per line on stderr: ``time``, ``level``, ``logger``, ``message`` and the
record's context fields (``request_id``, ``stream_id``, ...) passed with ``extra=``; context is
never formatted into the message. Secrets are never logged: settings print through
:class:`livecore.settings.Secret`, and stream keys and tokens are never given to a logger.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from pythonjsonlogger.json import JsonFormatter


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pgserver logs every command it runs at INFO; its warnings still come through.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    quiet_libraries()
    # At the open-file limit, asyncio logs every failed accept() with a traceback, many
    # times a second; one record per interval (with the count it stood for) says as much.
    logging.getLogger("asyncio").addFilter(RepeatFilter(ACCEPT_FAILED, interval_s=10.0))


#: Libraries whose INFO records are chatter: aioice logs every ICE candidate pair's checks
#: (a third of a media node's log); its failures come as WARNING, and the gateway logs a
#: failed WebRTC session itself, once, with its stream and session ids (gateway/media.py).
QUIET_LOGGERS = ("aioice", "aiortc")


def quiet_libraries() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


#: How asyncio's accept loop starts its message when the process is out of file descriptors.
ACCEPT_FAILED = "socket.accept() out of system resource"


class RepeatFilter(logging.Filter):
    """Lets through one record starting with ``prefix`` per interval; the next one that gets
    through carries ``suppressed``, the number dropped meanwhile."""

    def __init__(self, prefix: str, *, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefix = prefix
        self.interval_s = interval_s
        self.clock = clock
        self.last_s: float | None = None
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = self.clock()
        if self.last_s is not None and now - self.last_s < self.interval_s:
            self.suppressed += 1
            return False
        self.last_s = now
        record.suppressed = self.suppressed
        self.suppressed = 0
        return True
