"""The gift economy: coins, the catalogue, the revenue split, combos, boards and goals.

Units. Viewers hold **coins** (whole numbers). A gift costs a whole number of coins; the
creator earns **diamonds** (one diamond per coin of the creator's share) and the platform keeps
the rest, also counted in coins. Nothing here is ever a float.

Rounding rule. The platform's cut is ``floor(price * cut_bp / 10_000)`` and the creator gets
everything else, so ``creator_share + platform_cut == price`` exactly and any odd coin goes to
the creator. With the default cut of 5,000 bp (50%), a 1-coin gift is 1 diamond and 0 cut; a
5-coin gift is 3 diamonds and 2 cut.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from livecore.errors import ValidationFailed

BASIS_POINTS = 10_000
DEFAULT_PLATFORM_CUT_BP = 5_000
MAX_GIFT_PRICE_COINS = 100_000
MAX_GIFT_QUANTITY = 99
#: The same gift from the same viewer within this many seconds continues a combo.
COMBO_WINDOW_S = 5.0
#: A week's board (per creator, ISO week, UTC) is kept this many weeks after the week ended.
WEEKLY_BOARD_KEPT_WEEKS = 4
#: Gifters shown in a room's ``leaderboard.updated`` event and its snapshot.
ROOM_BOARD_TOP = 5
MAX_GOAL_COINS = 100_000_000
MAX_GOAL_TITLE_CHARS = 60
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_WEEK = dt.timedelta(days=7)
GIFT_SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")


@dataclass(frozen=True)
class Split:
    price: int
    creator_share: int
    platform_cut: int


def split(price: int, cut_bp: int) -> Split:
    """Divide ``price`` coins between creator and platform (see the rounding rule above)."""
    if price < 0:
        raise ValueError("price must not be negative")
    if not 0 <= cut_bp <= BASIS_POINTS:
        raise ValueError("cut must be between 0 and 10,000 basis points")
    cut = price * cut_bp // BASIS_POINTS
    return Split(price, price - cut, cut)


@dataclass(frozen=True)
class GiftType:
    """An entry of the catalogue."""

    slug: str
    name: str
    price_coins: int
    streakable: bool
    animation: str
    is_active: bool = True

    def check(self) -> GiftType:
        if not GIFT_SLUG_RE.fullmatch(self.slug):
            raise ValidationFailed(
                "A gift id is 2 to 32 characters: lower-case letters, digits and '_', "
                "starting with a letter.", code="invalid_field", field="slug")
        if not self.name.strip() or len(self.name) > 40:
            raise ValidationFailed("A gift name is 1 to 40 characters.", code="invalid_field",
                                   field="name")
        if not 1 <= self.price_coins <= MAX_GIFT_PRICE_COINS:
            raise ValidationFailed(
                f"A gift costs 1 to {MAX_GIFT_PRICE_COINS:,} coins.", code="invalid_field",
                field="price_coins")
        if not GIFT_SLUG_RE.fullmatch(self.animation):
            raise ValidationFailed("An animation id looks like a gift id.",
                                   code="invalid_field", field="animation")
        return self


#: The catalogue a new installation starts with; admins edit it afterwards.
DEFAULT_CATALOGUE: tuple[GiftType, ...] = (
    GiftType("rose", "Rose", 1, True, "rose_float"),
    GiftType("heart", "Heart", 5, True, "heart_pop"),
    GiftType("coffee", "Coffee", 10, True, "coffee_steam"),
    GiftType("star", "Shooting star", 49, True, "star_trail"),
    GiftType("crown", "Crown", 299, False, "crown_drop"),
    GiftType("rocket", "Rocket", 999, False, "rocket_launch"),
    GiftType("castle", "Castle", 4_999, False, "castle_rise"),
    GiftType("galaxy", "Galaxy", 29_999, False, "galaxy_spin"),
)


def price_of(gift: GiftType, quantity: int) -> int:
    if not 1 <= quantity <= MAX_GIFT_QUANTITY:
        raise ValidationFailed(f"quantity is 1 to {MAX_GIFT_QUANTITY}.", code="invalid_field",
                               field="quantity")
    if not gift.is_active:
        raise ValidationFailed(f"The gift {gift.slug!r} is no longer offered.",
                               code="gift_unavailable", field="gift")
    return gift.price_coins * quantity


def epoch_us(at: dt.datetime) -> int:
    """Microseconds since the epoch, exactly (PostgreSQL's precision; a float would round)."""
    return (at - _EPOCH) // dt.timedelta(microseconds=1)


def combo_continues(last_ms: int | None, at_ms: int, window_ms: int) -> bool:
    """The combo rule: a gift continues its sender's open combo of the same gift in the same
    stream if it was sent less than the window after that combo's latest gift (or before it:
    gifts committed by two nodes may be applied out of order). Otherwise it starts a new one.

    The Redis projection applies this rule inside its Lua script (``ledger/projection.py``),
    so every gateway node agrees; this function is the reference the tests hold it to.
    """
    return last_ms is not None and at_ms - last_ms < window_ms


def iso_week(at: dt.datetime) -> str:
    """The ISO 8601 week of ``at`` in UTC, like ``2026-W48`` (weeks start on Monday)."""
    year, week, _ = at.astimezone(dt.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_from_label(label: str) -> dt.datetime:
    """Monday 00:00 UTC of the week an :func:`iso_week` label names."""
    match = re.fullmatch(r"(\d{4})-W(\d{2})", label)
    if match is None:
        raise ValidationFailed("A week looks like 2026-W48.", code="invalid_field", field="week")
    try:
        day = dt.date.fromisocalendar(int(match.group(1)), int(match.group(2)), 1)
    except ValueError:
        raise ValidationFailed("No such ISO week.", code="invalid_field", field="week") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def week_start(at: dt.datetime) -> dt.datetime:
    """Monday 00:00 UTC of the ISO week that holds ``at``."""
    day = at.astimezone(dt.UTC).date()
    monday = day - dt.timedelta(days=day.weekday())
    return dt.datetime(monday.year, monday.month, monday.day, tzinfo=dt.UTC)


def weekly_board_expires_at(at: dt.datetime) -> dt.datetime:
    """When the board of ``at``'s week is dropped: :data:`WEEKLY_BOARD_KEPT_WEEKS` after the
    week ended."""
    return week_start(at) + _WEEK * (1 + WEEKLY_BOARD_KEPT_WEEKS)


def kept_weeks_since(now: dt.datetime) -> dt.datetime:
    """The start of the oldest week whose board is still kept at ``now``."""
    return week_start(now) - _WEEK * WEEKLY_BOARD_KEPT_WEEKS


@dataclass
class Combo:
    """A run of the same streakable gift from one viewer in one stream."""

    count: int
    last_s: float


@dataclass
class ComboTracker:
    """Combo counts, pure: the caller passes the time of each gift.

    A gift continues a combo if the same viewer sent the same streakable gift in the same
    stream less than :data:`COMBO_WINDOW_S` seconds before (:func:`combo_continues`);
    otherwise it starts one at its quantity. :meth:`expired` returns the combos that ended,
    for a combo-end event. The servers keep this state in Redis (so every node agrees, see
    ``ledger/projection.py``); this in-memory model is the reference for the rule.
    """

    window_s: float = COMBO_WINDOW_S
    combos: dict[tuple[str, str, str], Combo] = field(default_factory=dict)

    def record(self, stream: str, sender: str, gift: GiftType, quantity: int,
               now_s: float) -> int:
        if not gift.streakable:
            return quantity
        key = (stream, sender, gift.slug)
        combo = self.combos.get(key)
        window_ms = round(self.window_s * 1000)
        if combo is None or not combo_continues(round(combo.last_s * 1000),
                                                round(now_s * 1000), window_ms):
            combo = self.combos[key] = Combo(0, now_s)
        combo.count += quantity
        combo.last_s = max(combo.last_s, now_s)
        return combo.count

    def expired(self, now_s: float) -> list[tuple[tuple[str, str, str], int]]:
        ended = [(key, c.count) for key, c in self.combos.items()
                 if now_s - c.last_s >= self.window_s]
        for key, _count in ended:
            del self.combos[key]
        return ended


@dataclass(frozen=True)
class Goal:
    """A stream's live goal: coins of gifts to the stream since the goal was set."""

    target_coins: int
    progress_coins: int
    title: str = ""

    @staticmethod
    def check_target(target_coins: int, title: str) -> str:
        """Validate a goal a creator sets; returns the title, stripped."""
        if not 1 <= target_coins <= MAX_GOAL_COINS:
            raise ValidationFailed(f"A goal is 1 to {MAX_GOAL_COINS:,} coins.",
                                   code="invalid_field", field="target_coins")
        title = title.strip()
        if len(title) > MAX_GOAL_TITLE_CHARS:
            raise ValidationFailed(f"A goal title is at most {MAX_GOAL_TITLE_CHARS} characters.",
                                   code="invalid_field", field="title")
        return title

    def json(self) -> dict[str, object]:
        """As sent in ``goal.updated``, snapshots and the API."""
        return {"target_coins": self.target_coins, "progress_coins": self.progress_coins,
                "percent": self.percent, "reached": self.reached, "title": self.title}

    @property
    def reached(self) -> bool:
        return self.progress_coins >= self.target_coins

    @property
    def percent(self) -> int:
        if self.target_coins <= 0:
            return 100
        return min(100, self.progress_coins * 100 // self.target_coins)
