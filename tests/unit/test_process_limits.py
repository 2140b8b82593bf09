"""What a serving process does for itself: log storms, open-file limits, collector pauses."""

import gc
import logging
import resource

from gateway.cli import raise_open_file_limit
from gateway.collector import CollectorPolicy
from gateway.hub import connection_cap
from gateway.logs import ACCEPT_FAILED, RepeatFilter
from gateway.metrics import Metrics


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)


def test_repeat_filter_lets_one_accept_failure_through_per_interval_with_the_count():
    now = [100.0]
    limiter = RepeatFilter(ACCEPT_FAILED, interval_s=10.0, clock=lambda: now[0])
    first = record(f"{ACCEPT_FAILED}\nprotocol: ...")
    assert limiter.filter(first) and first.__dict__["suppressed"] == 0
    assert [limiter.filter(record(ACCEPT_FAILED)) for _ in range(50)] == [False] * 50
    assert limiter.filter(record("something else entirely"))  # other records pass
    now[0] += 10.0
    later = record(ACCEPT_FAILED)
    assert limiter.filter(later) and later.__dict__["suppressed"] == 50
    assert not limiter.filter(record(ACCEPT_FAILED))


def test_serve_raises_the_soft_open_file_limit_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard, 4096) - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        assert connection_cap() == lowered - max(512, lowered // 40)
        assert raise_open_file_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_full_collections_are_timed():
    metrics = Metrics()
    undo = metrics.watch_gc()
    try:
        gc.collect(1)  # not a full collection
        assert metrics.registry.get_sample_value("livecore_gc_full_pause_seconds_count") == 0
        gc.collect()
        gc.collect()
    finally:
        undo()
    assert metrics.registry.get_sample_value("livecore_gc_full_pause_seconds_count") == 2
    pauses = metrics.registry.get_sample_value("livecore_gc_full_pause_seconds_sum")
    assert pauses is not None and pauses > 0


def test_survivors_of_full_collections_are_frozen_and_handed_back_once_per_interval():
    now = [0.0]
    policy = CollectorPolicy(unfreeze_interval_s=600, clock=lambda: now[0])
    undo = policy.install()
    frozen_before = gc.get_freeze_count()
    try:
        assert policy.step() is None  # no full collection yet: nothing to do
        gc.collect(1)
        assert policy.step() is None  # a young collection is not one
        gc.collect()
        assert policy.step() == "freeze"
        assert gc.get_freeze_count() > frozen_before
        assert policy.step() is None  # once per full collection
        now[0] = 601.0
        gc.collect()
        assert policy.step() == "unfreeze"
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert policy.step() == "freeze"  # the interval starts again
    finally:
        undo()
        gc.unfreeze()
