import itertools

import pytest

from livecore.errors import Conflict, ValidationFailed
from livecore.streams import (
    TRANSITIONS,
    StreamEvent,
    StreamState,
    StreamText,
    is_open,
    next_state,
)


def test_a_stream_goes_created_live_ended():
    state = StreamState.CREATED
    state = next_state(state, StreamEvent.START)
    assert state is StreamState.LIVE
    assert next_state(state, StreamEvent.END) is StreamState.ENDED


def test_a_stream_can_end_without_going_live():
    assert next_state(StreamState.CREATED, StreamEvent.END) is StreamState.ENDED


@pytest.mark.parametrize(
    ("state", "event"),
    [
        pair
        for pair in itertools.product(StreamState, StreamEvent)
        if pair not in TRANSITIONS
    ],
)
def test_every_transition_outside_the_table_is_a_conflict(state, event):
    with pytest.raises(Conflict) as caught:
        next_state(state, event)
    assert caught.value.code == "invalid_stream_transition"
    assert caught.value.status == 409
    assert caught.value.details == {"state": state.value}


def test_ended_is_final_and_the_only_closed_state():
    assert not any(state is StreamState.ENDED for state, _ in TRANSITIONS)
    assert [s for s in StreamState if not is_open(s)] == [StreamState.ENDED]


def test_stream_text_collapses_whitespace_in_titles_and_keeps_newlines_in_descriptions():
    text = StreamText.parse("  Cooking   live \t tonight ", "  Line one\nLine two  ")
    assert text == StreamText("Cooking live tonight", "Line one\nLine two")
    assert StreamText.parse("Hi", None).description == ""


@pytest.mark.parametrize(
    ("title", "description", "field"),
    [
        ("   ", None, "title"),
        ("x" * 141, None, "title"),
        ("ok", "y" * 2001, "description"),
        ("bell\x07", None, "title"),
        ("ok", "nul\x00here", "description"),
    ],
)
def test_stream_text_rejects_blank_long_or_control_characters(title, description, field):
    with pytest.raises(ValidationFailed) as caught:
        StreamText.parse(title, description)
    assert caught.value.details["field"] == field


def test_stream_repr_hides_the_key():
    import datetime as dt
    import uuid

    from livecore.ids import StreamId, UserId
    from livecore.streams import Stream

    stream = Stream(
        id=StreamId(uuid.uuid4()), creator_id=UserId(uuid.uuid4()), creator_username="a", title="t",
        description="", state=StreamState.LIVE, stream_key="sk_secret",
        created_at=dt.datetime.now(dt.UTC), started_at=None, ended_at=None,
    )
    assert "sk_secret" not in repr(stream)
