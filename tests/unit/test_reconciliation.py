"""What counts as a reconciliation difference, and the report of a pass (pure)."""

import datetime as dt

from livecore.reconciliation import MAX_FINDINGS_KEPT, Finding, Report, confirmed_parts

T0 = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def _finding(n: int, *, repaired: bool = True) -> Finding:
    return Finding(f"stream-{n}", ("totals",), 10 + n, 2, 10, 2, repaired)


def test_a_difference_counts_only_if_both_looks_see_it():
    assert confirmed_parts(["totals"], ["totals"]) == ("totals",)
    # Settled between the looks: a gift between COMMIT and its Redis update.
    assert confirmed_parts(["totals"], []) == ()
    # New on the second look: not confirmed yet (the next pass will see it twice).
    assert confirmed_parts(["totals"], ["goal"]) == ()
    assert confirmed_parts(["weekly_board", "totals", "goal"],
                           ["goal", "weekly_board", "totals"]) == (
        "totals", "goal", "weekly_board")


def test_a_report_counts_findings_and_repairs():
    report = Report.of(started_at=T0, finished_at=T0 + dt.timedelta(seconds=2), worker="w:1",
                       streams_checked=7, findings=[_finding(1), _finding(2, repaired=False)],
                       transient=3)
    assert (report.differences_found, report.differences_repaired) == (2, 1)
    assert not report.is_clean
    data = report.to_json()
    assert data["started_at"] == "2026-11-28T12:00:00Z" and data["duration_ms"] == 2000
    assert data["findings"][0] == {"stream_id": "stream-1", "parts": ["totals"],
                                   "redis": {"coins": 11, "gifts": 2},
                                   "ledger": {"coins": 10, "gifts": 2}, "repaired": True}
    assert Report.from_json(data) == report
    assert report.log_fields()["streams"] == ["stream-1", "stream-2"]


def test_a_report_keeps_a_bounded_sample_but_complete_counts():
    many = [_finding(n, repaired=n % 2 == 0) for n in range(MAX_FINDINGS_KEPT + 5)]
    report = Report.of(started_at=T0, finished_at=T0, worker="w:1", streams_checked=100,
                       findings=many, transient=0)
    assert len(report.findings) == MAX_FINDINGS_KEPT
    assert report.differences_found == MAX_FINDINGS_KEPT + 5
    assert report.differences_repaired == sum(f.repaired for f in many)
    assert Report.from_json(report.to_json()) == report


def test_a_clean_pass():
    report = Report.of(started_at=T0, finished_at=T0, worker="w:1", streams_checked=3,
                       findings=[], transient=1)
    assert report.is_clean and report.to_json()["findings"] == []
