import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livecore.economy import (
    DEFAULT_CATALOGUE,
    ComboTracker,
    GiftType,
    Goal,
    combo_continues,
    epoch_us,
    iso_week,
    kept_weeks_since,
    price_of,
    split,
    week_from_label,
    week_start,
    weekly_board_expires_at,
)
from livecore.errors import ValidationFailed


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10_000))
def test_share_plus_cut_is_the_price_and_odd_coins_go_to_the_creator(price, cut_bp):
    parts = split(price, cut_bp)
    assert parts.creator_share + parts.platform_cut == price
    assert parts.platform_cut == price * cut_bp // 10_000
    assert parts.creator_share >= price * (10_000 - cut_bp) // 10_000


def test_split_examples_and_bad_input():
    assert (split(1, 5000).creator_share, split(1, 5000).platform_cut) == (1, 0)
    assert (split(5, 5000).creator_share, split(5, 5000).platform_cut) == (3, 2)
    for price, cut in ((-1, 5000), (10, 10_001), (10, -1)):
        with pytest.raises(ValueError):
            split(price, cut)


def test_default_catalogue_is_valid_and_spans_cheap_to_dear():
    prices = [g.check().price_coins for g in DEFAULT_CATALOGUE]
    assert min(prices) == 1 and max(prices) >= 10_000
    assert len({g.slug for g in DEFAULT_CATALOGUE}) == len(DEFAULT_CATALOGUE)


def test_pricing_and_its_refusals():
    rose = DEFAULT_CATALOGUE[0]
    assert price_of(rose, 3) == 3 * rose.price_coins
    for quantity in (0, 100):
        with pytest.raises(ValidationFailed):
            price_of(rose, quantity)
    retired = GiftType("old", "Old", 5, False, "old", is_active=False)
    with pytest.raises(ValidationFailed) as caught:
        price_of(retired, 1)
    assert caught.value.code == "gift_unavailable"


def test_combos_continue_within_the_window_and_end_after_it():
    rose, crown = DEFAULT_CATALOGUE[0], DEFAULT_CATALOGUE[4]
    combos = ComboTracker(window_s=5.0)
    assert combos.record("s", "u", rose, 1, 0.0) == 1
    assert combos.record("s", "u", rose, 2, 4.9) == 3
    assert combos.record("s", "other", rose, 1, 5.0) == 1  # per sender
    assert combos.record("s", "u", crown, 1, 5.0) == 1  # crowns do not streak
    assert combos.expired(9.0) == []
    assert combos.expired(10.0) == [(("s", "u", "rose"), 3), (("s", "other", "rose"), 1)]
    assert combos.record("s", "u", rose, 1, 10.5) == 1


def test_goal_progress():
    assert Goal(1000, 250).percent == 25 and not Goal(1000, 250).reached
    assert Goal(1000, 1500).percent == 100 and Goal(1000, 1500).reached
    assert Goal(0, 0).percent == 100


def test_the_combo_rule():
    assert not combo_continues(None, 1_000, 5_000)  # nothing open: a new combo
    assert combo_continues(1_000, 5_999, 5_000)
    assert not combo_continues(1_000, 6_000, 5_000)  # the window is half-open
    assert combo_continues(9_000, 8_000, 5_000)  # applied out of order: still the combo


def test_a_lapsed_combo_that_is_not_yet_expired_restarts():
    rose = DEFAULT_CATALOGUE[0]
    combos = ComboTracker(window_s=5.0)
    combos.record("s", "u", rose, 1, 0.0)
    assert combos.record("s", "u", rose, 1, 3.0) == 2
    assert combos.record("s", "u", rose, 1, 1.0) == 3  # out of order
    assert combos.record("s", "u", rose, 1, 8.0) == 1  # 5 s after the latest (3.0)


def test_iso_weeks_in_utc():
    # Sunday 23:30 in New York is Monday 04:30 UTC: the next ISO week.
    new_york = dt.timezone(dt.timedelta(hours=-5))
    sunday = dt.datetime(2026, 11, 29, 23, 30, tzinfo=new_york)
    assert iso_week(sunday) == "2026-W49"
    assert iso_week(dt.datetime(2026, 11, 29, 23, 59, tzinfo=dt.UTC)) == "2026-W48"
    assert iso_week(dt.datetime(2027, 1, 1, tzinfo=dt.UTC)) == "2026-W53"  # ISO year
    assert week_start(sunday) == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert week_from_label("2026-W49") == week_start(sunday)
    assert weekly_board_expires_at(sunday) == dt.datetime(2027, 1, 4, tzinfo=dt.UTC)
    assert kept_weeks_since(sunday) == dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    for bad in ("2026-48", "2026-W54", "week"):
        with pytest.raises(ValidationFailed):
            week_from_label(bad)


@given(st.datetimes(min_value=dt.datetime(1971, 1, 1), max_value=dt.datetime(2200, 1, 1)))
def test_a_week_label_names_the_week_that_holds_the_time(naive):
    at = naive.replace(tzinfo=dt.UTC)
    start = week_from_label(iso_week(at))
    assert start <= at < start + dt.timedelta(days=7) and start.weekday() == 0
    assert epoch_us(at) == round((at - dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
                                 / dt.timedelta(microseconds=1))


def test_goal_checks_and_json():
    assert Goal.check_target(500, "  Mic ") == "Mic"
    for target, title in ((0, ""), (100_000_001, ""), (10, "x" * 61)):
        with pytest.raises(ValidationFailed):
            Goal.check_target(target, title)
    assert Goal(200, 50, "Mic").json() == {"target_coins": 200, "progress_coins": 50,
                                           "percent": 25, "reached": False, "title": "Mic"}
