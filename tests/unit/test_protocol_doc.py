"""docs/protocol.md and docs/protocol-v1.schema.json keep up with livecore/wire.py."""

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from livecore import wire

REPO = Path(__file__).parents[2]
PROTOCOL_DOC = REPO / "docs" / "protocol.md"
SCHEMA_FILE = REPO / "docs" / "protocol-v1.schema.json"
CODE_LITERAL = re.compile(r'\bcode="([a-z_]+)"')
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: Codes the hub answers with that are not ``code="..."`` literals in its sources.
OTHER_CODES = ("muted", "rate_limited", "service_unavailable", "internal_error",
               "stream_not_found", "invalid_token")


def _doc() -> str:
    return PROTOCOL_DOC.read_text()


def _examples() -> list[object]:
    return [json.loads(block) for block in JSON_BLOCK.findall(_doc())]


def test_the_schema_file_is_the_generated_document():
    on_disk = json.loads(SCHEMA_FILE.read_text())
    assert on_disk == wire.document(), (
        "docs/protocol-v1.schema.json is stale: run "
        "`livecore protocol-schema > docs/protocol-v1.schema.json`"
    )


def test_every_message_type_is_documented():
    doc = _doc()
    types = [*wire.CLIENT_SCHEMAS, *wire.SERVER_SCHEMAS]
    missing = [name for name in types if f"`{name}`" not in doc]
    assert missing == []


def test_every_close_code_is_documented():
    doc = _doc()
    missing = [code for code in wire.CLOSE_CODES if str(code) not in doc]
    assert missing == []
    missing_names = [name for name in wire.CLOSE_CODES.values() if f"`{name}`" not in doc]
    assert missing_names == []


def test_every_websocket_error_code_is_documented():
    codes = set(OTHER_CODES)
    for source in ("gateway/hub.py", "livecore/chat.py", "livecore/wire.py"):
        codes |= set(CODE_LITERAL.findall((REPO / source).read_text()))
    assert {"not_subscribed", "message_blocked", "invalid_json"} <= codes
    doc = _doc()
    missing = sorted(code for code in codes if f"`{code}`" not in doc)
    assert missing == []


def test_the_examples_are_json():
    examples = _examples()
    assert len(examples) >= len(wire.CLIENT_SCHEMAS) + len(wire.SERVER_SCHEMAS)


def _schema_for(example: object) -> tuple[str, dict[str, object]] | None:
    if not isinstance(example, dict) or not isinstance(example.get("type"), str):
        return None
    kind = example["type"]
    if kind in wire.SERVER_SCHEMAS:
        return f"server {kind}", wire.SERVER_SCHEMAS[kind]
    if kind in wire.CLIENT_SCHEMAS:
        return f"client {kind}", wire.CLIENT_SCHEMAS[kind]
    return None


@pytest.mark.parametrize("index", range(len(JSON_BLOCK.findall(PROTOCOL_DOC.read_text()))))
def test_each_example_validates_against_its_schema(index):
    example = _examples()[index]
    found = _schema_for(example)
    if found is None:
        return
    name, schema = found
    errors = [f"{'.'.join(map(str, e.absolute_path)) or 'message'}: {e.message}"
              for e in Draft202012Validator(schema).iter_errors(example)]
    assert errors == [], f"the {name} example #{index} is invalid"
    assert isinstance(example, dict)
    result = example.get("result")
    if example["type"] == "ack" and isinstance(result, dict) and "recovered" in result:
        errors = [e.message for e in
                  Draft202012Validator(wire.SUBSCRIBE_RESULT).iter_errors(result)]
        assert errors == [], f"the subscribe result in example #{index} is invalid"


def test_every_message_type_has_an_example():
    shown = {example["type"] for example in _examples()
             if isinstance(example, dict) and "type" in example}
    expected = set(wire.CLIENT_SCHEMAS) | set(wire.SERVER_SCHEMAS)
    assert sorted(expected - shown) == []


def test_the_documented_limits_match_the_code():
    doc = _doc()
    for name, value in wire.limits().items():
        assert f"`{name}`" in doc, name
        assert f'"{name}": {json.dumps(value)}' in doc, f"hello example: {name}"


def _section(doc: str, heading: str) -> str:
    start = doc.index(heading + "\n")
    end = doc.find("\n#", start + len(heading))
    return doc[start:end if end >= 0 else None]


def _table_rows(section: str) -> dict[str, list[str]]:
    """First-column names (backticked) of the first table in ``section``, with their cells."""
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows[name] = cells[1:]
    return rows


def test_the_client_messages_table_lists_every_client_message_and_its_answer():
    rows = _table_rows(_section(_doc(), "### Client messages"))
    assert sorted(rows) == sorted(wire.CLIENT_SCHEMAS)
    wrong = {name: cells[-1] for name, cells in rows.items()
             if not cells[-1].startswith(f"`{wire.CLIENT_ANSWERS[name]}`")}
    assert wrong == {}


def test_the_ack_section_names_every_message_an_ack_answers():
    section = _section(_doc(), "#### ack")
    acked = [name for name, answer in wire.CLIENT_ANSWERS.items() if answer == "ack"]
    missing = [name for name in acked if f"`{name}`" not in section]
    assert missing == []


def test_every_client_message_has_its_own_section():
    doc = _doc()
    missing = [name for name in wire.CLIENT_SCHEMAS if f"\n#### {name}\n" not in doc]
    assert missing == []


def test_the_server_messages_table_lists_every_server_message():
    rows = _table_rows(_section(_doc(), "### Server messages"))
    expected = set(wire.SERVER_SCHEMAS) - set(wire.ROOM_EVENT_SCHEMAS)
    assert sorted(rows) == sorted(expected)


def test_every_server_message_has_its_own_section():
    doc = _doc()
    missing = [name for name in wire.SERVER_SCHEMAS if f"\n#### {name}\n" not in doc]
    assert missing == []
