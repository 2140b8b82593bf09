"""livecore/ stays pure: no I/O libraries, no clock, no randomness (see ARCHITECTURE.md)."""

import ast
from pathlib import Path

import livecore

FORBIDDEN_MODULES = {
    "asyncio", "aiohttp", "aiortc", "av", "redis", "asyncpg", "stripe", "websockets",
    "socket", "subprocess", "os", "random", "secrets", "time", "threading", "gateway", "ledger",
    "pgserver", "psutil", "requests", "urllib.request", "http",
}
FORBIDDEN_CALLS = {"uuid4", "uuid1", "now", "utcnow", "today", "time", "random", "urandom"}

PACKAGE = Path(livecore.__file__).parent


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_the_core_has_modules_to_check():
    assert len(_modules()) >= 6


def test_no_io_imports_in_the_core():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in FORBIDDEN_MODULES or name in FORBIDDEN_MODULES:
                    offenders.append(f"{path.name}: import {name}")
    assert offenders == []


def test_no_clock_or_randomness_calls_in_the_core():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in FORBIDDEN_CALLS:
                    offenders.append(f"{path.name}:{node.lineno}: {name}()")
    assert offenders == []
