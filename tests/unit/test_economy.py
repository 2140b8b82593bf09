import pytest
from hypothesis import given
from hypothesis import strategies as st

from livecore.economy import (
    DEFAULT_CATALOGUE,
    ComboTracker,
    GiftType,
    Goal,
    price_of,
    split,
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
