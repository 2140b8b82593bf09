"""The life of a stream, as a transition table.

In the manner of h11's ``_state.py``: the table below is the whole truth about which state may
follow which, and :func:`next_state` is the only way to move. A stream is ``created`` by its
creator, goes ``live`` when media arrives (the WHIP ingest sends ``start``), and is ``ended``
when the publisher leaves or the owner (or a moderator) ends it. ``ended`` is final: a replay is
a property of an ended stream, not a state of its own, and going live again means a new stream,
so every stream's ledger and statistics cover exactly one broadcast.

A creator may hold at most one stream that is not ``ended`` (one broadcast at a time); the
database enforces it with a partial unique index.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from livecore.errors import Conflict, ValidationFailed
from livecore.ids import StreamId, UserId


class StreamState(enum.StrEnum):
    CREATED = "created"
    LIVE = "live"
    ENDED = "ended"


class StreamEvent(enum.StrEnum):
    START = "start"  # media arrived from the publisher
    END = "end"  # the publisher left, or the owner or a moderator ended it


TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (StreamState.CREATED, StreamEvent.START): StreamState.LIVE,
    (StreamState.CREATED, StreamEvent.END): StreamState.ENDED,
    (StreamState.LIVE, StreamEvent.END): StreamState.ENDED,
}


def next_state(state: StreamState, event: StreamEvent) -> StreamState:
    """The state after ``event``; a transition not in the table is a 409 Conflict."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise Conflict(
            f"A stream that is {state.value} cannot {event.value}.",
            code="invalid_stream_transition",
            state=state.value,
        ) from None


def is_open(state: StreamState) -> bool:
    """Open streams count against the one-open-stream-per-creator rule."""
    return state is not StreamState.ENDED


TITLE_MAX_CHARS = 140
DESCRIPTION_MAX_CHARS = 2000


@dataclass(frozen=True)
class StreamText:
    """Validated title and description of a stream."""

    title: str
    description: str

    @classmethod
    def parse(cls, title: str, description: str | None) -> StreamText:
        clean_title = " ".join(title.split())
        if not clean_title:
            raise ValidationFailed(
                "The title must not be blank.", code="invalid_field", field="title"
            )
        if len(clean_title) > TITLE_MAX_CHARS:
            raise ValidationFailed(
                f"The title is longer than {TITLE_MAX_CHARS} characters.",
                code="invalid_field",
                field="title",
            )
        clean_description = (description or "").strip()
        if len(clean_description) > DESCRIPTION_MAX_CHARS:
            raise ValidationFailed(
                f"The description is longer than {DESCRIPTION_MAX_CHARS} characters.",
                code="invalid_field",
                field="description",
            )
        _refuse_control_characters(clean_title, "title")
        _refuse_control_characters(clean_description, "description", allow_newlines=True)
        return cls(clean_title, clean_description)


def _refuse_control_characters(text: str, name: str, *, allow_newlines: bool = False) -> None:
    allowed = {"\n", "\t"} if allow_newlines else set()
    if any((ord(ch) < 32 or ord(ch) == 127) and ch not in allowed for ch in text):
        raise ValidationFailed(
            f"The {name} contains control characters.", code="invalid_field", field=name
        )


@dataclass(frozen=True)
class Stream:
    """A stream as stored. ``stream_key`` is a secret: only its owner ever sees it."""

    id: StreamId
    creator_id: UserId
    creator_username: str
    title: str
    description: str
    state: StreamState
    stream_key: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"Stream(id={self.id}, state={self.state.value}, title={self.title!r})"
