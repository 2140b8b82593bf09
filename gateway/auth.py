"""Passwords, bearer tokens and login throttling.

* Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's second recommended
  profile); hashing runs in a worker thread so a login never stalls the event loop.
* A bearer token is 32 random bytes (``lc_`` + base64url). Only its SHA-256 is stored, so the
  table is useless to whoever copies it; revoking sets ``revoked_at``.
* Login throttling counts failures in Redis per username and per client address within a
  window, so it holds across gateway processes. Once a limit is reached, attempts are refused
  with 429 *before* the password is checked, so guessing gains nothing; a success clears the
  username's counter. Unknown usernames cost the same hash as known ones (no user enumeration
  by timing).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from livecore.accounts import throttle_retry_after_s
from livecore.errors import TooManyRequests

TOKEN_PREFIX = "lc_"
STREAM_KEY_PREFIX = "sk_"

_hasher = PasswordHasher()
# Verified against when the username is unknown, so both paths cost one Argon2 hash.
_DUMMY_HASH = _hasher.hash("livecore-dummy-password")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> tuple[bool, str | None]:
    """Check ``password``; returns (ok, a fresh hash if the stored one's parameters are stale)."""

    def check() -> tuple[bool, str | None]:
        try:
            _hasher.verify(password_hash or _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, None
        if password_hash is None:
            return False, None
        if _hasher.check_needs_rehash(password_hash):
            return True, _hasher.hash(password)
        return True, None

    return await asyncio.to_thread(check)


def new_token() -> tuple[str, bytes]:
    """A fresh bearer token and the digest to store."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_stream_key() -> str:
    return STREAM_KEY_PREFIX + secrets.token_urlsafe(24)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 section 2.1)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class LoginThrottle:
    """Failed-login counters in Redis, per username and per client address."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        max_failures: int,
        max_failures_per_ip: int,
        window_s: int,
    ) -> None:
        self._redis = redis
        self._prefix = prefix + "login-failures:"
        self._limits = {"user": max_failures, "ip": max_failures_per_ip}
        self._window_s = window_s

    def _keys(self, username: str, address: str) -> dict[str, str]:
        return {"user": self._prefix + "user:" + username, "ip": self._prefix + "ip:" + address}

    async def check(self, username: str, address: str) -> None:
        """Raise 429 if either counter has reached its limit."""
        keys = self._keys(username, address)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.get(key)
                pipe.ttl(key)
            values = await pipe.execute()
        for index, kind in enumerate(keys):
            failures = int(values[2 * index] or 0)
            retry = throttle_retry_after_s(failures, self._limits[kind], int(values[2 * index + 1]))
            if retry is not None:
                raise TooManyRequests(
                    "Too many failed logins; wait before trying again.",
                    code="login_throttled",
                    retry_after_s=retry,
                )

    async def failed(self, username: str, address: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in self._keys(username, address).values():
                # The window starts at the first failure; later failures do not extend it:
                # the key is made with its expiry only if absent, and INCR keeps the expiry.
                # (Not ``EXPIRE ... NX``: that is Redis 7, and 6.2 is supported.)
                pipe.set(key, 0, ex=self._window_s, nx=True)
                pipe.incr(key)
            await pipe.execute()

    async def succeeded(self, username: str, address: str) -> None:
        await self._redis.delete(self._keys(username, address)["user"])
