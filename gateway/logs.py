"""JSON logs, configured once at an entry point.

One JSON object per line on stderr: ``time``, ``level``, ``logger``, ``message`` and the
record's context fields (``request_id``, ``stream_id``, ...) passed with ``extra=``; context is
never formatted into the message. Secrets are never logged: settings print through
:class:`livecore.settings.Secret`, and stream keys and tokens are never given to a logger.
"""

from __future__ import annotations

import logging
import sys

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
