import datetime as dt

import pytest

from livecore.accounts import (
    GRANTS,
    Permission,
    Role,
    age_on,
    check_password,
    has_permission,
    is_adult,
    normalise_roles,
    parse_birthdate,
    parse_username,
    sorted_roles,
    throttle_retry_after_s,
)
from livecore.errors import ValidationFailed

TODAY = dt.date(2026, 11, 28)


@pytest.mark.parametrize(
    ("birthdate", "today", "age"),
    [
        (dt.date(2008, 11, 28), TODAY, 18),
        (dt.date(2008, 11, 29), TODAY, 17),
        (dt.date(2000, 2, 29), dt.date(2018, 2, 28), 17),  # leap-day birthday: 1 March
        (dt.date(2000, 2, 29), dt.date(2018, 3, 1), 18),
        (dt.date(2000, 2, 29), dt.date(2020, 2, 29), 20),
    ],
)
def test_age_counts_whole_years(birthdate, today, age):
    assert age_on(birthdate, today) == age
    assert is_adult(birthdate, today) is (age >= 18)


def test_every_account_is_a_viewer_and_unknown_roles_are_refused():
    assert normalise_roles([]) == {Role.VIEWER}
    assert normalise_roles(["admin", "admin"]) == {Role.VIEWER, Role.ADMIN}
    with pytest.raises(ValidationFailed) as caught:
        normalise_roles(["superuser"])
    assert caught.value.details == {"field": "roles"}


def test_permissions_follow_the_grant_table():
    assert has_permission({Role.VIEWER, Role.CREATOR}, Permission.STREAM_CREATE)
    assert not has_permission({Role.VIEWER}, Permission.STREAM_CREATE)
    assert not has_permission({Role.VIEWER, Role.CREATOR}, Permission.USER_MANAGE)
    assert has_permission({Role.ADMIN}, Permission.USER_MANAGE)
    assert has_permission({Role.FINANCE}, Permission.USER_READ)
    assert not has_permission({Role.FINANCE}, Permission.STREAM_MODERATE)
    # Nobody holds a permission by being a mere viewer.
    assert all(Role.VIEWER not in roles for roles in GRANTS.values())
    assert set(GRANTS) == set(Permission)


def test_sorted_roles_is_stable():
    assert sorted_roles({Role.ADMIN, Role.VIEWER, Role.CREATOR}) == ["viewer", "creator", "admin"]


@pytest.mark.parametrize("raw", ["Ada", " ada ", "ADA"])
def test_usernames_are_case_insensitive(raw):
    assert parse_username(raw) == "ada"


@pytest.mark.parametrize("raw", ["ab", "a" * 33, "_ada", "ada!", "a da", "äda", ""])
def test_bad_usernames_are_refused(raw):
    with pytest.raises(ValidationFailed) as caught:
        parse_username(raw)
    assert caught.value.details == {"field": "username"}


@pytest.mark.parametrize("password", ["short", "x" * 257, "ada12345"])
def test_bad_passwords_are_refused(password):
    with pytest.raises(ValidationFailed):
        check_password(password, username="ada12345")


def test_good_password_passes():
    check_password("correct horse", username="ada")


def test_birthdate_rules():
    assert parse_birthdate("2000-01-31", today=TODAY, min_age_years=13) == dt.date(2000, 1, 31)
    for raw, code in [
        ("2000-1-31", "invalid_field"),
        ("31/01/2000", "invalid_field"),
        ("2000-02-30", "invalid_field"),
        ("2030-01-01", "invalid_field"),
        ("1850-01-01", "invalid_field"),
        ("2020-01-01", "too_young"),
    ]:
        with pytest.raises(ValidationFailed) as caught:
            parse_birthdate(raw, today=TODAY, min_age_years=13)
        assert caught.value.code == code, raw
        assert caught.value.details == {"field": "birthdate"}


def test_login_throttle_allows_until_the_limit_then_waits_the_window():
    assert throttle_retry_after_s(4, 5, 900) is None
    assert throttle_retry_after_s(5, 5, 900) == 900
    assert throttle_retry_after_s(9, 5, -1) == 1
