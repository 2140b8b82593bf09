import datetime as dt
import uuid

import pytest

from livecore import schemas
from livecore.errors import BadRequest, ValidationFailed
from livecore.pagination import MAX_PAGE_SIZE, decode_cursor, encode_cursor, parse_limit


def _fails(schema, body):
    with pytest.raises(ValidationFailed) as caught:
        schemas.validate(schema, body)
    return caught.value


def test_valid_body_passes_through():
    body: dict[str, str] = {"username": "ada", "password": "pw", "birthdate": "1990-01-01"}
    assert schemas.validate(schemas.REGISTER, body) is body


def test_body_must_be_an_object():
    bodies: list[object] = [[], "x", 3, None]
    for body in bodies:
        assert _fails(schemas.LOGIN, body).code == "invalid_body"


def test_missing_field_is_named():
    error = _fails(schemas.REGISTER, {"username": "ada", "birthdate": "1990-01-01"})
    assert (error.code, error.details) == ("missing_field", {"field": "password"})


def test_wrong_type_is_named():
    error = _fails(schemas.LOGIN, {"username": 7, "password": "pw"})
    assert (error.code, error.details) == ("invalid_field", {"field": "username"})
    assert "string" in error.message


def test_unknown_field_is_refused():
    error = _fails(schemas.LOGIN, {"username": "a", "password": "b", "admin": True})
    assert (error.code, error.details) == ("unknown_field", {"field": "admin"})


def test_roles_must_be_known_and_unique():
    assert _fails(schemas.SET_ROLES, {"roles": ["wizard"]}).details == {"field": "roles.0"}
    assert _fails(schemas.SET_ROLES, {"roles": ["admin", "admin"]}).code == "invalid_field"


def test_an_update_must_name_a_field():
    assert _fails(schemas.STREAM_UPDATE, {}).code == "invalid_body"


def test_cursor_round_trips_and_bad_cursors_are_400():
    at = dt.datetime(2026, 11, 28, 12, 0, 1, 5, tzinfo=dt.UTC)
    row = uuid.uuid4()
    assert decode_cursor(encode_cursor(at, row)) == (at, row)
    for bad in ("nonsense", "", "Zm9vfGJhcg", encode_cursor(at, row)[:-3]):
        with pytest.raises(BadRequest):
            decode_cursor(bad)


def test_limit_parsing():
    assert parse_limit(None) == 50
    assert parse_limit("7") == 7
    for bad in ("0", str(MAX_PAGE_SIZE + 1), "ten", "-1", "1.5"):
        with pytest.raises(BadRequest):
            parse_limit(bad)
