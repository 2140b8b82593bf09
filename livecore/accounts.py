"""Accounts: roles and what they allow, and the rules for usernames, passwords and ages.

Authorisation is a table, not scattered ``if`` statements: each endpoint names the
:class:`Permission` it needs, and :data:`GRANTS` says which roles hold it. Every account is a
``viewer``; the other roles add to it. Ownership rules ("only the stream's owner may rotate its
key") are checked by the handlers on top of this, because they depend on the resource.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from livecore.errors import ValidationFailed
from livecore.ids import UserId


class Role(enum.StrEnum):
    VIEWER = "viewer"
    CREATOR = "creator"
    MODERATOR = "moderator"
    FINANCE = "finance"
    ADMIN = "admin"


class Permission(enum.StrEnum):
    STREAM_CREATE = "stream:create"
    STREAM_MODERATE = "stream:moderate"  # end or edit anyone's stream
    USER_READ = "user:read"  # look up any account
    USER_MANAGE = "user:manage"  # assign roles
    ECONOMY_MANAGE = "economy:manage"  # edit the gift catalogue, grant promotional coins
    FINANCE_READ = "finance:read"  # the journal, balances, statements, reconciliation


GRANTS: dict[Permission, frozenset[Role]] = {
    Permission.STREAM_CREATE: frozenset({Role.CREATOR}),
    Permission.STREAM_MODERATE: frozenset({Role.MODERATOR, Role.ADMIN}),
    Permission.USER_READ: frozenset({Role.MODERATOR, Role.FINANCE, Role.ADMIN}),
    Permission.USER_MANAGE: frozenset({Role.ADMIN}),
    Permission.ECONOMY_MANAGE: frozenset({Role.ADMIN}),
    Permission.FINANCE_READ: frozenset({Role.FINANCE, Role.ADMIN}),
}


def normalise_roles(roles: Iterable[str]) -> frozenset[Role]:
    """Parse role names; every account keeps ``viewer``. Unknown names are a 422."""
    parsed = {Role.VIEWER}
    for name in roles:
        try:
            parsed.add(Role(name))
        except ValueError:
            raise ValidationFailed(
                f"Unknown role {name!r}; roles are {', '.join(r.value for r in Role)}.",
                code="invalid_field",
                field="roles",
            ) from None
    return frozenset(parsed)


def has_permission(roles: Iterable[Role], permission: Permission) -> bool:
    return not GRANTS[permission].isdisjoint(roles)


def sorted_roles(roles: Iterable[Role]) -> list[str]:
    """Roles in the declaration order of :class:`Role`, for stable output."""
    held = set(roles)
    return [role.value for role in Role if role in held]


USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.]{2,31}$")
PASSWORD_MIN_CHARS = 8
# Long enough for any passphrase, short enough that hashing it is no denial of service.
PASSWORD_MAX_CHARS = 256
ADULT_AGE_YEARS = 18
OLDEST_AGE_YEARS = 130


def parse_username(raw: str) -> str:
    """Usernames are case-insensitive: stored and compared in lower case."""
    username = raw.strip().lower()
    if not USERNAME_RE.fullmatch(username):
        raise ValidationFailed(
            "A username is 3 to 32 characters: letters, digits, '_' and '.', "
            "starting with a letter or digit.",
            code="invalid_field",
            field="username",
        )
    return username


def check_password(password: str, *, username: str) -> None:
    if not PASSWORD_MIN_CHARS <= len(password) <= PASSWORD_MAX_CHARS:
        raise ValidationFailed(
            f"A password is {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters.",
            code="invalid_field",
            field="password",
        )
    if password.strip().lower() == username:
        raise ValidationFailed(
            "The password must not be the username.", code="invalid_field", field="password"
        )


def age_on(birthdate: dt.date, today: dt.date) -> int:
    """Whole years completed on ``today``; someone born on 29 February turns a year older on
    1 March in common years (the usual legal reading)."""
    had_birthday = (today.month, today.day) >= (birthdate.month, birthdate.day)
    return today.year - birthdate.year - (0 if had_birthday else 1)


def is_adult(birthdate: dt.date, today: dt.date) -> bool:
    return age_on(birthdate, today) >= ADULT_AGE_YEARS


def parse_birthdate(raw: str, *, today: dt.date, min_age_years: int) -> dt.date:
    """An ISO date (YYYY-MM-DD) of someone at least ``min_age_years`` old and plausibly alive."""
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        birthdate = dt.date.fromisoformat(raw)
    except ValueError:
        raise ValidationFailed(
            "The birthdate must be a date written YYYY-MM-DD.",
            code="invalid_field",
            field="birthdate",
        ) from None
    if birthdate > today:
        raise ValidationFailed(
            "The birthdate is in the future.", code="invalid_field", field="birthdate"
        )
    age = age_on(birthdate, today)
    if age > OLDEST_AGE_YEARS:
        raise ValidationFailed(
            "The birthdate is implausibly long ago.", code="invalid_field", field="birthdate"
        )
    if age < min_age_years:
        raise ValidationFailed(
            f"You must be at least {min_age_years} years old to register.",
            code="too_young",
            field="birthdate",
        )
    return birthdate


def throttle_retry_after_s(failures: int, limit: int, ttl_s: int) -> int | None:
    """Login throttling: once ``failures`` within the window reach ``limit``, further attempts
    are refused (without checking the password, so guessing gains nothing) until the window
    expires; returns the seconds to wait, or ``None`` when an attempt is allowed."""
    if failures < limit:
        return None
    return max(ttl_s, 1)


@dataclass(frozen=True)
class Account:
    """A user account as the rest of the system sees it (never with its password hash)."""

    id: UserId
    username: str
    roles: frozenset[Role]
    birthdate: dt.date
    created_at: dt.datetime

    def can(self, permission: Permission) -> bool:
        return has_permission(self.roles, permission)
