import pytest
from hypothesis import given
from hypothesis import strategies as st

from livecore.chat import (
    MAX_CHAT_CHARS,
    RoomRules,
    Sanction,
    SanctionKind,
    TokenBucket,
    WordFilter,
    clean_blocked_words,
    clean_text,
)
from livecore.errors import Forbidden, ValidationFailed


def test_text_is_normalised():
    assert clean_text("  hi \n\t there  ") == "hi there"
    assert clean_text("ｆｕｌｌ width") == "full width"  # NFKC
    assert clean_text("<b>bold</b>") == "<b>bold</b>"  # kept as text; clients never parse it


@pytest.mark.parametrize(("raw", "code"), [
    ("", "invalid_chat_text"), ("   ", "invalid_chat_text"),
    ("x" * (MAX_CHAT_CHARS + 1), "chat_too_long"),
    ("zero\u200bwidth", "invalid_chat_text"), ("bell\x07", "invalid_chat_text"),
    ("rtl\u202eoverride", "invalid_chat_text"),
])
def test_bad_text_is_refused(raw, code):
    with pytest.raises(ValidationFailed) as caught:
        clean_text(raw)
    assert caught.value.code == code


def test_word_filter_matches_whole_words_case_and_accent_insensitively():
    words = WordFilter.of(["spoon", "crème brûlée"], ["bad word"])
    assert words.first_match("A SPOON!") == "spoon"
    assert words.first_match("creme brulee") == "creme brulee"
    assert words.first_match("such a Bad Word here") == "bad word"
    assert words.first_match("spoonful") is None
    assert words.first_match("teaspoons") is None
    assert WordFilter.of([]).first_match("anything") is None


def test_blocked_word_lists_are_cleaned():
    assert clean_blocked_words(["Fork", "fork ", " KNIFE", "Crème"]) == ["creme", "fork", "knife"]
    for bad in ([""], ["x" * 65]):
        with pytest.raises(ValidationFailed):
            clean_blocked_words(bad)


def test_token_bucket_bursts_then_refills():
    bucket = TokenBucket(capacity=3, rate_per_s=1.0)
    assert [bucket.take(100.0) for _ in range(3)] == [None, None, None]
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) is None
    assert bucket.take(1000.0) is None  # refill is capped at capacity
    assert bucket.tokens == pytest.approx(2.0)


@given(st.lists(st.floats(min_value=0, max_value=5), max_size=60))
def test_token_bucket_never_allows_more_than_burst_plus_rate(gaps):
    bucket = TokenBucket(capacity=5, rate_per_s=1.0)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        if bucket.take(now) is None:
            allowed += 1
    assert allowed <= 5 + now * 1.0 + 1e-9


def test_sanctions():
    rules = RoomRules(sanctions={
        "muted": Sanction(SanctionKind.MUTE, None),
        "banned": Sanction(SanctionKind.BAN, 2000.0),
    })
    rules.check_can_read("muted", 1000.0)
    with pytest.raises(Forbidden) as caught:
        rules.check_can_read("banned", 1000.0)
    assert caught.value.code == "banned"
    rules.check_can_read("banned", 2000.0)  # expired
    with pytest.raises(Forbidden) as caught:
        rules.check_message("muted", "hi", now_epoch_s=1000.0, is_staff=False)
    assert caught.value.code == "muted"
    assert rules.check_message("someone", " hi ", now_epoch_s=1000.0, is_staff=False) == "hi"


def test_staff_skip_the_word_filter():
    rules = RoomRules(words=WordFilter.of(["tea"]))
    with pytest.raises(ValidationFailed):
        rules.check_message("u", "tea", now_epoch_s=0, is_staff=False)
    assert rules.check_message("u", "tea", now_epoch_s=0, is_staff=True) == "tea"
