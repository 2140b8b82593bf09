from typing import Any

import pytest
from jsonschema import Draft202012Validator

from livecore import wire
from livecore.wire import (
    CLIENT_SCHEMAS,
    SERVER_SCHEMAS,
    ProtocolError,
    document,
    negotiate_version,
    parse_client_message,
)

ROOM = "6a1f0e1c-9b7e-4c5e-8f59-3c1c7d8e2a10"


@pytest.mark.parametrize(("offered", "query", "version"), [
    ([], None, 1), (["livecore.v1"], None, 1), (["other", "livecore.v1"], None, 1),
    ([], "1", 1), (["livecore.v99"], None, None), ([], "2", None), (["chat"], None, 1),
])
def test_version_negotiation(offered, query, version):
    assert negotiate_version(offered, query) == version


def test_parse_valid_messages():
    message = parse_client_message(f'{{"type": "chat", "id": "c1", "room": "{ROOM}", '
                                   '"text": "hi"}')
    assert (message.type, message.id, message.body["text"]) == ("chat", "c1", "hi")
    assert parse_client_message(b'{"type": "ping"}').id is None


@pytest.mark.parametrize(("raw", "code", "message_id"), [
    ("nope", "invalid_json", None),
    ("[]", "invalid_message", None),
    ('{"id": "x1"}', "invalid_message", "x1"),
    ('{"type": "fly", "id": "x2"}', "unknown_type", "x2"),
    (f'{{"type": "chat", "id": "x3", "room": "{ROOM}"}}', "invalid_message", "x3"),
    (f'{{"type": "like", "room": "{ROOM}", "count": 0}}', "invalid_message", None),
    (f'{{"type": "subscribe", "room": "{ROOM}", "since": {{"epoch": "e"}}}}',
     "invalid_message", None),
    ('{"type": "ping", "id": ""}', "invalid_message", None),
])
def test_bad_messages(raw, code, message_id):
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw)
    assert caught.value.code == code
    assert caught.value.details.get("id") == message_id


def test_the_schema_document_is_valid_json_schema():
    for schema in [*CLIENT_SCHEMAS.values(), *SERVER_SCHEMAS.values()]:
        Draft202012Validator.check_schema(schema)
    Draft202012Validator.check_schema(document())


#: Keywords that fastjsonschema (draft-07) and jsonschema (2020-12) implement alike.
SHARED_KEYWORDS = {"type", "properties", "required", "additionalProperties", "const", "enum",
                   "minLength", "maxLength", "minimum", "maximum", "pattern", "format",
                   "description", "items"}


def _keywords(schema, found):
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            for sub in (value.values() if key == "properties" else [value]):
                _keywords(sub, found)
    elif isinstance(schema, list):
        for item in schema:
            _keywords(item, found)
    return found


def test_client_schemas_use_only_keywords_both_validators_share():
    used: set[str] = set()
    for schema in CLIENT_SCHEMAS.values():
        _keywords(schema, used)
    assert used <= SHARED_KEYWORDS, used - SHARED_KEYWORDS


SAMPLES: dict[str, dict[str, Any]] = {
    "auth": {"token": "lc_x"},
    "subscribe": {"room": ROOM, "since": {"epoch": "e1", "seq": 3}},
    "unsubscribe": {"room": ROOM},
    "chat": {"room": ROOM, "text": "hi"},
    "like": {"room": ROOM, "count": 3},
    "ping": {},
    "gift": {"room": ROOM, "gift_id": ROOM, "gift": "rose", "quantity": 2},
}
ODD_VALUES: list[Any] = [
    None, True, 0, -1, 1, 99, 100, 1.5, "", "x" * 70, ROOM, ROOM.upper(), "not-a-uuid", [], {},
    {"epoch": "e", "seq": -1}, {"epoch": "e", "seq": 2, "more": 1},
]


def _variants():
    for kind, body in SAMPLES.items():
        base = {"type": kind, "id": "m1", **body}
        yield base
        yield {**base, "unexpected": 1}
        for field in base:
            yield {k: v for k, v in base.items() if k != field}
            for odd in ODD_VALUES:
                yield {**base, field: odd}


def test_the_compiled_and_the_reference_validators_agree():
    """The fast path (fastjsonschema) accepts exactly what the reference (jsonschema) does:
    every client message type, each field missing, extra or replaced by odd values."""
    import orjson

    checked = refused = 0
    for message in _variants():
        kind = message.get("type")
        known = isinstance(kind, str) and kind in CLIENT_SCHEMAS
        expected = known and Draft202012Validator(CLIENT_SCHEMAS[kind]).is_valid(message)
        try:
            parse_client_message(orjson.dumps(message))
            accepted = True
        except ProtocolError:
            accepted = False
        assert accepted == expected, message
        checked += 1
        refused += not accepted
    assert checked > 400 and 0 < refused < checked


def test_compiled_validators_alone_match_the_reference():
    """The compiled validators on their own (not through the reference fallback)."""
    import fastjsonschema

    from livecore import wire

    for message in _variants():
        kind = message.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_SCHEMAS:
            continue
        try:
            wire._COMPILED[kind](message)
            fast = True
        except fastjsonschema.JsonSchemaValueException:
            fast = False
        assert fast == Draft202012Validator(CLIENT_SCHEMAS[kind]).is_valid(message), message


def _open_everywhere(schema, where="message"):
    """Paths inside a schema where an object forbids properties it does not list."""
    closed = []
    if isinstance(schema, dict):
        if schema.get("additionalProperties") is False:
            closed.append(where)
        for key, value in schema.items():
            if isinstance(value, dict):
                for name, sub in (value.items() if key in ("properties", "$defs")
                                  else [(key, value)]):
                    closed += _open_everywhere(sub, f"{where}.{name}")
            elif isinstance(value, list):
                for i, sub in enumerate(value):
                    closed += _open_everywhere(sub, f"{where}.{key}[{i}]")
    return closed


def test_server_messages_are_open_to_properties_added_later():
    # A client validating what it receives keeps working when v1 adds optional properties.
    document = wire.document()
    assert _open_everywhere(document["$defs"]["server"]) == []
    assert _open_everywhere(document["$defs"]["subscribe_result"]) == []
    examples: dict[str, dict[str, Any]] = {
        "pong": {"type": "pong", "server_time": 1.5},
        "chat.removed": {"type": "chat.removed", "seq": 3, "epoch": "e",
                         "room": "7f1d6a34-2b9e-4c1d-8e5f-0a6b3c9d2e17", "ts": 1.0,
                         "data": {"message_id": "c1b2a3f4-5e6d-4c7b-8a99-0f1e2d3c4b5a",
                                  "by": {"id": "3c2b1a09-8f7e-4d6c-b5a4-392817160504",
                                         "username": "grace"}}},
    }
    for kind, message in examples.items():
        validator = Draft202012Validator(document["$defs"]["server"][kind])
        assert list(validator.iter_errors(message)) == []
        later: dict[str, Any] = {**message, "added_later": {"x": 1}}
        if "data" in later:
            later["data"] = {**later["data"], "reason": "spam"}
            later["data"]["by"] = {**later["data"]["by"], "avatar": "a.png"}
        assert list(validator.iter_errors(later)) == [], kind


def test_client_messages_stay_closed():
    for name, schema in wire.document()["$defs"]["client"].items():
        assert schema["additionalProperties"] is False, name
    with pytest.raises(wire.ProtocolError) as caught:
        wire.parse_client_message('{"type": "ping", "extra": 1}')
    assert caught.value.code == "invalid_message"
