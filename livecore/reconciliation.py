"""Reconciliation of the Redis projection with the ledger: what counts as a difference, and
the report of one pass. Pure: the pass itself (locks, queries, repairs) is
``ledger/reconciler.py``.

Why a difference must be seen twice. Redis is updated *after* COMMIT, so under load a
comparison always catches some gifts that PostgreSQL holds and Redis has not counted yet (the
gateway is between the two). Such a difference settles within milliseconds. A real one (Redis
lost a write, someone edited a key, a gateway died between COMMIT and the update with no
retry to heal it) is still there a moment later. So a pass looks at a stream, and only if it
differs looks again after a short pause; a part that differs on both looks is a finding, and
a difference that settled in between is counted as transient, not reported.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from livecore.times import iso_time

#: The parts of a stream's projection a comparison names (``ledger.projection.Difference``).
PARTS = ("totals", "goal", "creator_board", "weekly_board")
#: At most this many findings are kept in a stored report (the counts are always complete).
MAX_FINDINGS_KEPT = 20


def confirmed_parts(first: Iterable[str], second: Iterable[str]) -> tuple[str, ...]:
    """The parts that differed on both looks, in :data:`PARTS` order: a difference only on
    the first look settled (a gift between COMMIT and its Redis update), and one only on the
    second is new since the first look, so not yet confirmed either."""
    both = set(first) & set(second)
    return tuple(part for part in PARTS if part in both) + tuple(
        sorted(both - set(PARTS)))


@dataclass(frozen=True)
class Finding:
    """A stream whose projection differed from the ledger on both looks."""

    stream_id: str
    parts: tuple[str, ...]
    redis_coins: int
    redis_gifts: int
    ledger_coins: int
    ledger_gifts: int
    repaired: bool

    def to_json(self) -> dict[str, Any]:
        return {"stream_id": self.stream_id, "parts": list(self.parts),
                "redis": {"coins": self.redis_coins, "gifts": self.redis_gifts},
                "ledger": {"coins": self.ledger_coins, "gifts": self.ledger_gifts},
                "repaired": self.repaired}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        return cls(str(data["stream_id"]), tuple(data["parts"]), int(data["redis"]["coins"]),
                   int(data["redis"]["gifts"]), int(data["ledger"]["coins"]),
                   int(data["ledger"]["gifts"]), bool(data["repaired"]))


@dataclass(frozen=True)
class Report:
    """One reconciliation pass: when, by whom, how many streams, what differed."""

    started_at: dt.datetime
    finished_at: dt.datetime
    worker: str
    streams_checked: int
    findings: tuple[Finding, ...] = ()
    #: Differences seen on the first look that had settled by the second.
    transient: int = 0
    #: Findings beyond :data:`MAX_FINDINGS_KEPT` (counted, not kept).
    findings_dropped: int = 0
    repaired_dropped: int = 0

    @property
    def differences_found(self) -> int:
        return len(self.findings) + self.findings_dropped

    @property
    def differences_repaired(self) -> int:
        return sum(f.repaired for f in self.findings) + self.repaired_dropped

    @property
    def is_clean(self) -> bool:
        return self.differences_found == 0

    @classmethod
    def of(cls, *, started_at: dt.datetime, finished_at: dt.datetime, worker: str,
           streams_checked: int, findings: Iterable[Finding], transient: int) -> Report:
        """A report keeping the first :data:`MAX_FINDINGS_KEPT` findings."""
        every = list(findings)
        kept, dropped = every[:MAX_FINDINGS_KEPT], every[MAX_FINDINGS_KEPT:]
        return cls(started_at, finished_at, worker, streams_checked, tuple(kept), transient,
                   len(dropped), sum(f.repaired for f in dropped))

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": iso_time(self.started_at), "finished_at": iso_time(self.finished_at),
            "duration_ms": round((self.finished_at - self.started_at).total_seconds() * 1000),
            "worker": self.worker, "streams_checked": self.streams_checked,
            "differences_found": self.differences_found,
            "differences_repaired": self.differences_repaired,
            "transient": self.transient,
            "findings": [f.to_json() for f in self.findings],
            "findings_dropped": self.findings_dropped,
            "repaired_dropped": self.repaired_dropped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        def when(raw: str) -> dt.datetime:
            return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))

        return cls(when(data["started_at"]), when(data["finished_at"]), str(data["worker"]),
                   int(data["streams_checked"]),
                   tuple(Finding.from_json(f) for f in data["findings"]),
                   int(data["transient"]), int(data["findings_dropped"]),
                   int(data["repaired_dropped"]))

    def log_fields(self) -> dict[str, Any]:
        """Context for the structured log line of a pass (no per-stream detail beyond ids)."""
        return {"streams_checked": self.streams_checked,
                "differences_found": self.differences_found,
                "differences_repaired": self.differences_repaired,
                "transient": self.transient,
                "duration_ms": round((self.finished_at - self.started_at).total_seconds()
                                     * 1000),
                "streams": [f.stream_id for f in self.findings]}
