"""The documentation names every error code the code can answer with."""

import re
from pathlib import Path

REPO = Path(__file__).parents[2]
CODE_PATTERN = re.compile(r'(?:code=|default_code = )"([a-z_]+)"')


def test_every_error_code_is_documented():
    api_doc = (REPO / "docs" / "api.md").read_text()
    codes = set()
    for package in ("livecore", "gateway", "ledger"):
        for path in (REPO / package).rglob("*.py"):
            codes |= set(CODE_PATTERN.findall(path.read_text()))
    assert len(codes) > 20
    missing = sorted(code for code in codes if f"`{code}`" not in api_doc)
    assert missing == []
