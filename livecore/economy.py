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

import re
from dataclasses import dataclass, field

from livecore.errors import ValidationFailed

BASIS_POINTS = 10_000
DEFAULT_PLATFORM_CUT_BP = 5_000
MAX_GIFT_PRICE_COINS = 100_000
MAX_GIFT_QUANTITY = 99
#: The same gift from the same viewer within this many seconds continues a combo.
COMBO_WINDOW_S = 5.0
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


@dataclass
class Combo:
    """A run of the same streakable gift from one viewer in one stream."""

    count: int
    last_s: float


@dataclass
class ComboTracker:
    """Combo counts, pure: the caller passes the time of each gift.

    A gift continues a combo if the same viewer sent the same streakable gift in the same
    stream less than :data:`COMBO_WINDOW_S` seconds before; otherwise it starts one at 1.
    :meth:`expired` returns the combos that ended, for a combo-end event.
    """

    window_s: float = COMBO_WINDOW_S
    combos: dict[tuple[str, str, str], Combo] = field(default_factory=dict)

    def record(self, stream: str, sender: str, gift: GiftType, quantity: int,
               now_s: float) -> int:
        if not gift.streakable:
            return quantity
        key = (stream, sender, gift.slug)
        combo = self.combos.get(key)
        if combo is None or now_s - combo.last_s >= self.window_s:
            combo = self.combos[key] = Combo(0, now_s)
        combo.count += quantity
        combo.last_s = now_s
        return combo.count

    def expired(self, now_s: float) -> list[tuple[tuple[str, str, str], int]]:
        ended = [(key, c.count) for key, c in self.combos.items()
                 if now_s - c.last_s >= self.window_s]
        for key, _count in ended:
            del self.combos[key]
        return ended


@dataclass(frozen=True)
class Goal:
    target_coins: int
    progress_coins: int

    @property
    def reached(self) -> bool:
        return self.progress_coins >= self.target_coins

    @property
    def percent(self) -> int:
        if self.target_coins <= 0:
            return 100
        return min(100, self.progress_coins * 100 // self.target_coins)
