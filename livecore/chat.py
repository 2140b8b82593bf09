"""Chat rules: message text, rate limits, slow mode, blocked words, sanctions.

Everything here is pure: time arrives as ``now`` (seconds, from a monotonic clock at the
edge), so the rules can be tested without waiting.

* Text: at most :data:`MAX_CHAT_CHARS` characters after normalising (Unicode NFKC, trimmed,
  runs of whitespace collapsed); control characters are refused. Chat text is data, never
  markup: every client renders it as text.
* Rate limit: a token bucket per user (:class:`TokenBucket`): a burst of
  :data:`CHAT_BURST` messages, refilled at :data:`CHAT_PER_S` per second.
* Slow mode: per room, a user may post once every ``slow_mode_s`` seconds (0: off). Creators
  and moderators are exempt from slow mode and from the rate limit in their own room.
* Blocked words: a global list (settings) and a per-stream list; a message containing a
  blocked word (whole word, case- and accent-insensitive) is refused.
* Sanctions: a muted user may read but not write; a banned user may neither, until the
  sanction expires (or for ever).
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from livecore.errors import Forbidden, TooManyRequests, ValidationFailed

MAX_CHAT_CHARS = 300
CHAT_BURST = 5
CHAT_PER_S = 1.0
MAX_SLOW_MODE_S = 3600
MAX_BLOCKED_WORDS = 500
MAX_BLOCKED_WORD_CHARS = 64


class SanctionKind(enum.StrEnum):
    MUTE = "mute"
    BAN = "ban"


@dataclass(frozen=True)
class Sanction:
    kind: SanctionKind
    #: Epoch seconds when it ends; ``None``: until lifted.
    expires_at: float | None

    def active(self, now_epoch_s: float) -> bool:
        return self.expires_at is None or now_epoch_s < self.expires_at


def clean_text(raw: str) -> str:
    """Normalise and check a chat message; raises :class:`ValidationFailed`."""
    text = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not text:
        raise ValidationFailed("A chat message must not be blank.", code="invalid_chat_text")
    if len(text) > MAX_CHAT_CHARS:
        raise ValidationFailed(
            f"A chat message is at most {MAX_CHAT_CHARS} characters.", code="chat_too_long"
        )
    if any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co"} for ch in text):
        raise ValidationFailed(
            "A chat message must not contain control characters.", code="invalid_chat_text"
        )
    return text


def _fold(text: str) -> str:
    """Case- and accent-insensitive form, for matching blocked words."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def clean_blocked_words(words: Iterable[str]) -> list[str]:
    """Validate and normalise a blocked-word list (sorted, without duplicates)."""
    cleaned = set()
    for word in words:
        folded = _fold(" ".join(word.split()))
        if not folded or len(folded) > MAX_BLOCKED_WORD_CHARS:
            raise ValidationFailed(
                f"Blocked words are 1 to {MAX_BLOCKED_WORD_CHARS} characters.",
                code="invalid_field",
                field="blocked_words",
            )
        cleaned.add(folded)
    if len(cleaned) > MAX_BLOCKED_WORDS:
        raise ValidationFailed(
            f"At most {MAX_BLOCKED_WORDS} blocked words per stream.",
            code="invalid_field",
            field="blocked_words",
        )
    return sorted(cleaned)


@dataclass(frozen=True)
class WordFilter:
    """A compiled blocked-word list: whole words (or phrases), case- and accent-insensitive."""

    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, *word_lists: Iterable[str]) -> WordFilter:
        words = sorted({_fold(w) for words in word_lists for w in words if w.strip()}, key=len)
        if not words:
            return cls(None)
        alternatives = "|".join(re.escape(w) for w in reversed(words))
        return cls(re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)"))

    def first_match(self, text: str) -> str | None:
        if self.pattern is None:
            return None
        match = self.pattern.search(_fold(text))
        return None if match is None else match.group(0)


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``rate_per_s``; one token per action."""

    capacity: float
    rate_per_s: float
    tokens: float = field(default=-1.0)
    updated_s: float = 0.0

    def take(self, now_s: float, cost: float = 1.0) -> float | None:
        """Spend ``cost`` tokens if there are enough; return ``None``, or the seconds to wait."""
        if self.tokens < 0:
            self.tokens, self.updated_s = self.capacity, now_s
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        self.updated_s = now_s
        if self.tokens >= cost:
            self.tokens -= cost
            return None
        return (cost - self.tokens) / self.rate_per_s


@dataclass
class RoomRules:
    """What one room's chat allows, as a node caches it."""

    slow_mode_s: int = 0
    words: WordFilter = field(default_factory=lambda: WordFilter(None))
    sanctions: dict[str, Sanction] = field(default_factory=dict)

    def sanction(self, user_id: str, now_epoch_s: float) -> Sanction | None:
        found = self.sanctions.get(user_id)
        return found if found is not None and found.active(now_epoch_s) else None

    def check_can_read(self, user_id: str | None, now_epoch_s: float) -> None:
        if user_id is None:
            return
        found = self.sanction(user_id, now_epoch_s)
        if found is not None and found.kind is SanctionKind.BAN:
            raise Forbidden("You are banned from this room.", code="banned")

    def check_message(
        self,
        user_id: str,
        text: str,
        *,
        now_epoch_s: float,
        is_staff: bool,
    ) -> str:
        """The cleaned text if ``user_id`` may post it here; raises the reason otherwise."""
        found = self.sanction(user_id, now_epoch_s)
        if found is not None:
            code = "banned" if found.kind is SanctionKind.BAN else "muted"
            raise Forbidden(f"You are {code} in this room.", code=code)
        cleaned = clean_text(text)
        if not is_staff:
            blocked = self.words.first_match(cleaned)
            if blocked is not None:
                raise ValidationFailed(
                    "The message contains a blocked word.", code="message_blocked"
                )
        return cleaned


def rate_limited(retry_after_s: float, *, code: str = "rate_limited") -> TooManyRequests:
    return TooManyRequests(
        "Slow down: you are sending messages too fast.",
        code=code,
        retry_after_s=max(1, int(retry_after_s + 0.999)),
    )
