"""Times as the API writes them: ISO 8601 in UTC with a ``Z``."""

from __future__ import annotations

import datetime as dt


def iso_time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
