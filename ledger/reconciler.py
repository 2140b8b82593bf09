"""The periodic reconciliation pass: Redis against PostgreSQL, for live and recently ended
streams; differences are logged, repaired (rebuilt from the ledger) and reported.

``livecore worker`` runs :meth:`Reconciler.run_pass` every ``LIVECORE_RECONCILE_INTERVAL_S``.
What counts as a difference (seen on two looks) and the report are pure
(:mod:`livecore.reconciliation`); this module holds the I/O.

One pass at a time, and about one per interval, however many workers run: a pass first takes
the lock key with ``SET NX PX`` (a random token as its value; a pass refreshes it as it goes,
so a long pass keeps it and a crashed worker's lock expires). When the pass is over the lock
is not deleted: its expiry is set to most of the interval, so the other workers, waking on
their own schedules, find it taken and skip until the next pass is due. Only the holder of
the token may touch the lock (a compare-and-set script), so a worker whose lock expired
mid-pass cannot shorten the next holder's.

The last report is stored in Redis (``<prefix>reconcile:last``), where
``GET /api/v1/finance/reconciliation`` and the finance page read it. Redis is the right
home for it: it describes Redis, and it is not money. If Redis loses its data, the report
goes with it until the next pass.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from ledger.projection import Difference, RedisProjection
from livecore.reconciliation import Finding, Report, confirmed_parts

log = logging.getLogger(__name__)

#: A stream that ended this long ago or less is still checked (gifts committed just before
#: the end may be applied just after it).
RECENTLY_ENDED = dt.timedelta(hours=1)
#: The pause before a stream that differed is looked at again.
CONFIRM_DELAY_S = 0.5
#: How long a pass's lock lives without a refresh (a pass refreshes it at every stream).
PASS_LOCK_TTL_MS = 120_000
#: After a pass, the lock is kept for this share of the interval.
COOLDOWN_SHARE = 0.9

# KEYS: the lock. ARGV: token, new expiry (ms). Sets the expiry only while we hold it.
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def worker_name() -> str:
    """``host:pid``: which worker ran a pass (in logs and reports)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lock_key(prefix: str) -> str:
    return f"{prefix}reconcile:lock"


def report_key(prefix: str) -> str:
    return f"{prefix}reconcile:last"


async def last_report(redis: Any, prefix: str) -> Report | None:
    """The last pass's report, as the worker stored it (None before the first pass)."""
    raw = await redis.get(report_key(prefix))
    return None if raw is None else Report.from_json(orjson.loads(raw))


class Reconciler:
    """Runs reconciliation passes against one PostgreSQL pool and one Redis."""

    def __init__(self, pool: Any, redis: Any, *, prefix: str, interval_s: float,
                 clock: Callable[[], dt.datetime], worker: str | None = None,
                 projection: RedisProjection | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 confirm_delay_s: float = CONFIRM_DELAY_S) -> None:
        self._pool = pool
        self._redis = redis
        self._prefix = prefix
        self._interval_s = interval_s
        self._clock = clock
        self._worker = worker or worker_name()
        self._projection = projection or RedisProjection(redis, prefix)
        self._on_report = on_report
        self._confirm_delay_s = confirm_delay_s
        self._extend = redis.register_script(_EXTEND)

    async def streams_to_check(self, now: dt.datetime) -> list[uuid.UUID]:
        rows = await self._pool.fetch(
            "SELECT id FROM streams WHERE state = 'live'"
            " OR (state = 'ended' AND ended_at >= $1) ORDER BY id", now - RECENTLY_ENDED)
        return [row["id"] for row in rows]

    async def run_pass(self, *, repair: bool = True) -> Report | None:
        """One pass, if no other worker holds the lock (None if one does, or if a pass
        finished less than most of an interval ago)."""
        token = uuid.uuid4().hex
        key = lock_key(self._prefix)
        if not await self._redis.set(key, token, nx=True, px=PASS_LOCK_TTL_MS):
            log.debug("reconciliation skipped: another worker holds the lock")
            return None
        try:
            report = await self._pass(token, repair=repair)
        finally:
            # After a failed pass too: the next attempt waits for the next interval, so a
            # broken dependency is not hammered by every worker.
            cooldown_ms = max(1, round(self._interval_s * COOLDOWN_SHARE * 1000))
            await self._extend(keys=[key], args=[token, cooldown_ms])
        await self._redis.set(report_key(self._prefix), orjson.dumps(report.to_json()))
        fields = report.log_fields()
        if report.is_clean:
            log.info("reconciliation pass: Redis matches the ledger", extra=fields)
        else:
            log.warning("reconciliation pass: Redis differed from the ledger", extra=fields)
        if self._on_report is not None:
            self._on_report(report)
        return report

    async def _pass(self, token: str, *, repair: bool) -> Report:
        started = self._clock()
        streams = await self.streams_to_check(started)
        findings: list[Finding] = []
        transient = checked = 0
        for stream_id in streams:
            if not await self._extend(keys=[lock_key(self._prefix)],
                                      args=[token, PASS_LOCK_TTL_MS]):
                # Our lock expired and another worker may be passing: one at a time.
                log.warning("reconciliation pass stopped: the lock was lost",
                            extra={"streams_checked": checked})
                break
            checked += 1
            first = await self._projection.reconcile(self._pool, stream_id, repair=False,
                                                     now=self._clock())
            if first is None:
                continue
            await asyncio.sleep(self._confirm_delay_s)
            second = await self._projection.reconcile(self._pool, stream_id, repair=repair,
                                                      now=self._clock())
            parts = () if second is None else confirmed_parts(first.parts, second.parts)
            if not parts:
                transient += 1
                continue
            assert second is not None
            findings.append(_finding(second, parts, repaired=repair))
            log.warning("projection differed from the ledger", extra=findings[-1].to_json())
        return Report.of(started_at=started, finished_at=self._clock(), worker=self._worker,
                         streams_checked=checked, findings=findings, transient=transient)


def _finding(difference: Difference, parts: tuple[str, ...], *, repaired: bool) -> Finding:
    return Finding(str(difference.stream_id), parts, difference.redis.coins,
                   difference.redis.gifts, difference.postgres.coins, difference.postgres.gifts,
                   repaired)
