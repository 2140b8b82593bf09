"""Configuration, read once from the environment at an entry point.

Modelled on starlette's ``Config``: every variable is declared here once, with its type, its
default and one line of documentation; values are cast strictly (``PORT=eighty`` fails at
start-up with a message naming the variable, it does not fall back to a default); secrets are
wrapped in :class:`Secret` so that printing the settings never shows them. ``docs/configuration.md``
lists every variable, and a test keeps that list and this module in step.

Standard names are used where they exist (``PORT``, ``DATABASE_URL``, ``REDIS_URL``); everything
else carries the ``LIVECORE_`` prefix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from livecore.errors import SettingsError


class Secret:
    """A string that hides itself in ``repr``/``str``; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact_url(url: str) -> str:
    """A connection URL with its password replaced, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _env(name: str, doc: str) -> dict[str, str]:
    return {"env": name, "doc": doc}


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told. Build it with :meth:`from_env`."""

    host: str = field(
        default="127.0.0.1",
        metadata=_env("LIVECORE_HOST", "Address the HTTP server binds to (0.0.0.0 for all)."),
    )
    port: int = field(default=8080, metadata=_env("PORT", "TCP port of the HTTP server."))
    database_url: Secret | None = field(
        default=None,
        metadata=_env(
            "DATABASE_URL",
            "PostgreSQL URL. Unset: an embedded PostgreSQL runs in LIVECORE_DATA_DIR.",
        ),
    )
    redis_url: Secret | None = field(
        default=None,
        metadata=_env(
            "REDIS_URL", "Redis URL. Unset: an embedded Redis runs in LIVECORE_DATA_DIR."
        ),
    )
    data_dir: str = field(
        default=".livecore",
        metadata=_env("LIVECORE_DATA_DIR", "Directory for the embedded servers' data."),
    )
    redis_prefix: str = field(
        default="livecore:",
        metadata=_env("LIVECORE_REDIS_PREFIX", "Prefix of every Redis key this server writes."),
    )
    public_url: str | None = field(
        default=None,
        metadata=_env(
            "LIVECORE_PUBLIC_URL",
            "Public base URL (https://live.example.com) used in absolute URLs such as whip_url; "
            "unset: taken from each request's Host.",
        ),
    )
    log_level: str = field(
        default="INFO", metadata=_env("LIVECORE_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR.")
    )
    max_body_bytes: int = field(
        default=64 * 1024,
        metadata=_env("LIVECORE_MAX_BODY_BYTES", "Largest accepted HTTP API request body."),
    )
    token_ttl_s: int = field(
        default=30 * 24 * 3600,
        metadata=_env("LIVECORE_TOKEN_TTL_S", "Lifetime of a login bearer token, in seconds."),
    )
    login_max_failures: int = field(
        default=5,
        metadata=_env(
            "LIVECORE_LOGIN_MAX_FAILURES",
            "Failed logins per username within the window before logins are refused (429).",
        ),
    )
    login_max_failures_per_ip: int = field(
        default=50,
        metadata=_env(
            "LIVECORE_LOGIN_MAX_FAILURES_PER_IP",
            "Failed logins per client address within the window before logins are refused.",
        ),
    )
    login_window_s: int = field(
        default=15 * 60,
        metadata=_env("LIVECORE_LOGIN_WINDOW_S", "Window of the login throttle, in seconds."),
    )
    min_signup_age: int = field(
        default=13,
        metadata=_env("LIVECORE_MIN_SIGNUP_AGE", "Youngest age, in years, that may register."),
    )
    db_pool_max: int = field(
        default=10,
        metadata=_env("LIVECORE_DB_POOL_MAX", "Most PostgreSQL connections per process."),
    )
    trust_proxy_headers: bool = field(
        default=False,
        metadata=_env(
            "LIVECORE_TRUST_PROXY_HEADERS",
            "Take the client address from X-Forwarded-For (only behind a trusted proxy).",
        ),
    )
    platform_cut_bp: int = field(
        default=5000,
        metadata=_env(
            "LIVECORE_PLATFORM_CUT_BP",
            "The platform's share of each gift in basis points (5000 = 50%); per-creator "
            "terms override it.",
        ),
    )
    blocked_words: str = field(
        default="",
        metadata=_env(
            "LIVECORE_BLOCKED_WORDS",
            "Comma-separated words refused in every chat (each stream can add its own).",
        ),
    )
    processes: int = field(
        default=1,
        metadata=_env(
            "LIVECORE_PROCESSES",
            "Serving processes `livecore serve` runs on its one port (SO_REUSEPORT), each a "
            "gateway node; more use more cores and hold more websockets.",
        ),
    )
    header_timeout_s: float = field(
        default=10.0,
        metadata=_env(
            "LIVECORE_HEADER_TIMEOUT_S",
            "Seconds a new connection has to send its first request line and headers before "
            "it is closed (slowloris); later requests on a kept-alive connection are governed "
            "by the keep-alive timeout, request bodies by neither.",
        ),
    )
    ws_flush_ms: int = field(
        default=100,
        metadata=_env(
            "LIVECORE_WS_FLUSH_MS",
            "Websocket fan-out: a room flushes at most once per this many milliseconds; the "
            "events of a busy room's interval share one write per socket (0: every event at "
            "once).",
        ),
    )
    ice_servers: str = field(
        default="",
        metadata=_env(
            "LIVECORE_ICE_SERVERS",
            "STUN/TURN servers for live video, comma-separated URLs (stun:host:port, "
            "turn:host:port?transport=udp, turns:host:port): the server gathers its public "
            "address through them and tells WHIP/WHEP clients about them (Link headers). Empty: "
            "host addresses only, enough when clients reach the server's own address.",
        ),
    )
    turn_username: str = field(
        default="",
        metadata=_env("LIVECORE_TURN_USERNAME", "Username for the turn:/turns: servers."),
    )
    turn_password: Secret | None = field(
        default=None,
        metadata=_env("LIVECORE_TURN_PASSWORD", "Password for the turn:/turns: servers."),
    )
    media_grace_s: float = field(
        default=10.0,
        metadata=_env(
            "LIVECORE_MEDIA_GRACE_S",
            "After a WHIP publisher leaves, seconds its stream stays live for it to come back "
            "before the stream ends.",
        ),
    )
    media_lease_s: float = field(
        default=15.0,
        metadata=_env(
            "LIVECORE_MEDIA_LEASE_S",
            "How long a node's claim on a live stream's publisher lasts unless renewed (it "
            "renews it every third of this). A live stream whose claim has lapsed for "
            "LIVECORE_MEDIA_GRACE_S more (its node was killed) is ended at the next start of "
            "`livecore serve` and by `livecore worker`.",
        ),
    )
    max_connections: int = field(
        default=0,
        metadata=_env(
            "LIVECORE_MAX_CONNECTIONS",
            "Most websockets one node holds; more are refused with 503 (0: the process's "
            "open-file limit minus a reserve).",
        ),
    )
    worker_interval_s: int = field(
        default=30,
        metadata=_env("LIVECORE_WORKER_INTERVAL_S", "Seconds between background worker passes."),
    )
    reconcile_interval_s: int = field(
        default=60,
        metadata=_env(
            "LIVECORE_RECONCILE_INTERVAL_S",
            "Seconds between reconciliation passes (Redis against PostgreSQL) across all "
            "workers.",
        ),
    )
    worker_metrics_port: int = field(
        default=0,
        metadata=_env(
            "LIVECORE_WORKER_METRICS_PORT",
            "TCP port on which `livecore worker` serves Prometheus metrics (on LIVECORE_HOST); "
            "0: not served.",
        ),
    )

    stripe_secret_key: Secret | None = field(
        default=None,
        metadata=_env(
            "LIVECORE_STRIPE_SECRET_KEY",
            "Stripe secret key (sk_live_... or sk_test_...); unset: test-payments mode, no "
            "real money (docs/payments.md).",
        ),
    )
    stripe_publishable_key: str | None = field(
        default=None,
        metadata=_env(
            "LIVECORE_STRIPE_PUBLISHABLE_KEY",
            "Stripe publishable key (pk_...), handed to clients with a PaymentIntent.",
        ),
    )
    stripe_webhook_secret: Secret | None = field(
        default=None,
        metadata=_env(
            "LIVECORE_STRIPE_WEBHOOK_SECRET",
            "Signing secret (whsec_...) of the Stripe webhook endpoint; unset: webhooks "
            "answer 503.",
        ),
    )
    stripe_webhook_tolerance_s: int = field(
        default=300,
        metadata=_env(
            "LIVECORE_STRIPE_WEBHOOK_TOLERANCE_S",
            "Oldest webhook signature timestamp accepted, in seconds.",
        ),
    )
    stripe_api_base: str | None = field(
        default=None,
        metadata=_env(
            "LIVECORE_STRIPE_API_BASE",
            "Base URL of the Stripe API (unset: Stripe's own); for a local fake in tests.",
        ),
    )
    daily_spend_cap_minor: int = field(
        default=50_000,
        metadata=_env(
            "LIVECORE_DAILY_SPEND_CAP_MINOR",
            "Most a viewer may spend on coins in 24 hours, in minor units (cents); each "
            "viewer can set a lower cap of their own.",
        ),
    )
    spend_burst_purchases: int = field(
        default=5,
        metadata=_env(
            "LIVECORE_SPEND_BURST_PURCHASES",
            "Purchases allowed within LIVECORE_SPEND_BURST_WINDOW_S before a cool-down.",
        ),
    )
    spend_burst_window_s: int = field(
        default=600,
        metadata=_env(
            "LIVECORE_SPEND_BURST_WINDOW_S", "The window of the purchase cool-down, seconds."
        ),
    )
    payout_currency: str = field(
        default="usd",
        metadata=_env("LIVECORE_PAYOUT_CURRENCY", "Currency of creator payouts (ISO 4217)."),
    )
    payout_minor_per_100_diamonds: int = field(
        default=50,
        metadata=_env(
            "LIVECORE_PAYOUT_MINOR_PER_100_DIAMONDS",
            "What 100 diamonds are worth in minor units of the payout currency.",
        ),
    )
    payout_min_diamonds: int = field(
        default=1000,
        metadata=_env("LIVECORE_PAYOUT_MIN_DIAMONDS", "The smallest payout, in diamonds."),
    )
    payout_retry_interval_s: int = field(
        default=60,
        metadata=_env(
            "LIVECORE_PAYOUT_RETRY_INTERVAL_S",
            "How often `livecore worker` looks for payouts stuck in pending.",
        ),
    )
    payout_stuck_after_s: int = field(
        default=60,
        metadata=_env(
            "LIVECORE_PAYOUT_STUCK_AFTER_S",
            "A payout pending for this long is retried by the worker.",
        ),
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Cast the variables that are set; every problem is reported at once."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _cast(f.type, raw.strip())
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise SettingsError("Invalid settings: " + "; ".join(problems))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules that span values or ranges; raises :class:`SettingsError`."""
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append("PORT must be between 0 and 65535")
        if not 0 <= self.worker_metrics_port <= 65535:
            problems.append("LIVECORE_WORKER_METRICS_PORT must be between 0 and 65535")
        if self.log_level.upper() not in _LOG_LEVELS:
            problems.append(f"LIVECORE_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)}")
        positive = (
            "max_body_bytes",
            "token_ttl_s",
            "login_max_failures",
            "login_max_failures_per_ip",
            "login_window_s",
            "db_pool_max",
            "worker_interval_s",
            "processes",
            "reconcile_interval_s",
            "media_grace_s",
            "media_lease_s",
            "stripe_webhook_tolerance_s",
            "daily_spend_cap_minor",
            "spend_burst_purchases",
            "spend_burst_window_s",
            "payout_minor_per_100_diamonds",
            "payout_min_diamonds",
            "payout_retry_interval_s",
            "payout_stuck_after_s",
        )
        for f in dataclasses.fields(self):
            if f.name in positive and getattr(self, f.name) <= 0:
                problems.append(f"{f.metadata['env']} must be positive")
        if not 0 <= self.platform_cut_bp <= 10_000:
            problems.append("LIVECORE_PLATFORM_CUT_BP must be between 0 and 10000")
        if self.min_signup_age < 0:
            problems.append("LIVECORE_MIN_SIGNUP_AGE must not be negative")
        if not 0 < self.header_timeout_s <= 3600:
            problems.append("LIVECORE_HEADER_TIMEOUT_S must be above 0 and at most 3600")
        if not 0 <= self.ws_flush_ms <= 1000:
            problems.append("LIVECORE_WS_FLUSH_MS must be between 0 and 1000")
        try:
            ice_servers(self.ice_servers)
        except ValueError as exc:
            problems.append(f"LIVECORE_ICE_SERVERS: {exc}")
        if self.max_connections < 0:
            problems.append("LIVECORE_MAX_CONNECTIONS must not be negative")
        public_scheme = urlsplit(self.public_url).scheme if self.public_url else "https"
        if public_scheme not in {"http", "https"}:
            problems.append("LIVECORE_PUBLIC_URL must be an http:// or https:// URL")
        for secret_url, schemes in (
            (self.database_url, {"postgres", "postgresql"}),
            (self.redis_url, {"redis", "rediss", "unix"}),
        ):
            if secret_url is not None and urlsplit(secret_url.reveal()).scheme not in schemes:
                problems.append(f"URL scheme must be one of {', '.join(sorted(schemes))}")
        if len(self.payout_currency) != 3 or not self.payout_currency.isalpha():
            problems.append("LIVECORE_PAYOUT_CURRENCY must be a three-letter ISO 4217 code")
        if self.stripe_api_base and urlsplit(self.stripe_api_base).scheme not in {"http", "https"}:
            problems.append("LIVECORE_STRIPE_API_BASE must be an http:// or https:// URL")
        if problems:
            raise SettingsError("Invalid settings: " + "; ".join(problems))

    @classmethod
    def documented(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, in declaration order."""
        rows = []
        for f in dataclasses.fields(cls):
            default = "" if f.default is None else str(f.default)
            rows.append((f.metadata["env"], default, f.metadata["doc"]))
        return rows


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def ice_servers(text: str) -> list[str]:
    """The URLs of ``LIVECORE_ICE_SERVERS``; a URL that is not stun:, turn: or turns: is a
    ValueError naming it."""
    urls = [url.strip() for url in text.split(",") if url.strip()]
    for url in urls:
        scheme, _, rest = url.partition(":")
        if scheme not in {"stun", "turn", "turns"} or not rest or rest.startswith("//"):
            raise ValueError(f"{url!r} is not a stun:, turn: or turns: URL (RFC 7064, 7065)")
    return urls


def _cast(annotation: Any, raw: str) -> Any:
    # Annotations are strings under ``from __future__ import annotations``.
    kind = str(annotation)
    if kind.startswith("int"):
        try:
            return int(raw, 10)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
    if kind.startswith("float"):
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    if kind.startswith("bool"):
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind.startswith("Secret"):
        return Secret(raw)
    return raw
