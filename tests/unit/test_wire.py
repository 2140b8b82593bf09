import pytest
from jsonschema import Draft202012Validator

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
