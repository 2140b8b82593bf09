"""The supported server versions (livecore/versions.py)."""

from __future__ import annotations

import pytest

from livecore.versions import UnsupportedServer, check_postgres, check_redis, parse_version


@pytest.mark.parametrize("text, expected", [
    ("6.2.14", (6, 2, 14)), ("7.0.15", (7, 0, 15)), ("16.2 (Debian 16.2-1)", (16, 2)),
    ("8.2.3-rc1", (8, 2, 3)), ("15beta2", (15,)), ("255.255.255", (255, 255, 255)),
])
def test_versions_are_read_as_servers_print_them(text: str, expected: tuple[int, ...]) -> None:
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "beta", " ", ".1"])
def test_a_version_without_a_number_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_version(text)


@pytest.mark.parametrize("found", ["6.2.0", "6.2.14", "7.0.15", "8.2.3", "10.0"])
def test_supported_redis_versions_pass(found: str) -> None:
    check_redis(found)


@pytest.mark.parametrize("found", ["6.0.16", "5.0.7", "6.1.99"])
def test_older_redis_is_refused_with_what_was_found_and_needed(found: str) -> None:
    with pytest.raises(UnsupportedServer) as caught:
        check_redis(found)
    assert caught.value.code == "unsupported_server_version"
    assert found in caught.value.message and "6.2.0 or newer" in caught.value.message


def test_unreadable_redis_version_is_refused() -> None:
    with pytest.raises(UnsupportedServer):
        check_redis("")


@pytest.mark.parametrize("found, ok", [("13.14", False), ("14.0", True), ("16.2", True)])
def test_postgres_versions(found: str, ok: bool) -> None:
    if ok:
        check_postgres(found)
    else:
        with pytest.raises(UnsupportedServer, match="PostgreSQL 14.0 or newer"):
            check_postgres(found)
