"""The ``livecore`` command.

    livecore serve                 the HTTP gateway (embedded PostgreSQL and Redis when
                                   DATABASE_URL / REDIS_URL are unset)
    livecore migrate               apply pending database migrations, then exit
    livecore worker                background jobs: the periodic reconciliation of Redis
                                   with the ledger, retrying stuck payouts, and ending the
                                   streams left live by a node that was killed
    livecore payouts retry         resolve the payouts stuck in pending once, then exit
    livecore user create NAME      create an account with roles (bootstrap an admin)
    livecore user roles NAME       replace an account's roles
    livecore protocol-schema       print the websocket protocol's JSON Schema document
    livecore audit verify          check every ledger invariant; exit status 1 if any fails

Settings come from the environment (see docs/configuration.md); this module is the only
place that reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import getpass
import json
import logging
import os
import resource
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis.exceptions
from aiohttp import web
from prometheus_client import start_http_server

from gateway import auth
from gateway.app import Runner, create_app
from gateway.collector import CollectorPolicy
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis, EmbeddedServers
from gateway.http import METRICS_KEY
from gateway.logs import configure_logging
from gateway.media import end_lapsed_streams
from gateway.metrics import WorkerMetrics
from gateway.services import Services, connect_redis, utc_now
from gateway.store import PostgresAccounts
from gateway.supervisor import EXTRA_FLAG, ServingProcesses, watch_parent
from ledger import postgres
from ledger.audit import CheckResult, verify_postgres, verify_projection
from ledger.migrate import migrate
from ledger.payouts import RETRY_BATCH, Payouts
from ledger.projection import RedisProjection
from ledger.providers import provider_for
from ledger.reconciler import Reconciler
from livecore.accounts import (
    Role,
    check_password,
    normalise_roles,
    parse_birthdate,
    parse_username,
    sorted_roles,
)
from livecore.errors import LivecoreError, NotFound
from livecore.ids import UserId
from livecore.settings import Settings, redact_url
from livecore.wire import document as protocol_document

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 10.0
_REDIS_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
ATTACH_TIMEOUT_S = 60.0


def say(message: str) -> None:
    """What a person at the terminal should read (logs go to stderr as JSON)."""
    print(message, flush=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL: DATABASE_URL, or the embedded PostgreSQL for as long as needed."""
    if settings.database_url is not None:
        yield settings.database_url.reveal()
        return
    embedded = EmbeddedPostgres(Path(settings.data_dir).resolve() / "postgres")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@contextlib.contextmanager
def backends(settings: Settings) -> Iterator[tuple[str, str, str]]:
    """(database URL, Redis URL, description) for ``serve``, starting what is embedded."""
    data_dir = Path(settings.data_dir).resolve()
    embedded: EmbeddedServers | None = None
    database_url = settings.database_url.reveal() if settings.database_url else None
    redis_url = settings.redis_url.reveal() if settings.redis_url else None
    if database_url is None or redis_url is None:
        embedded = EmbeddedServers(data_dir)
        if database_url is None:
            database_url = embedded.postgres.start()
        if redis_url is None:
            try:
                embedded.redis.start()
            except BaseException:
                embedded.stop()
                raise
            redis_url = embedded.redis.url
    db_text = (
        redact_url(database_url)
        if settings.database_url
        else f"embedded PostgreSQL in {data_dir / 'postgres'}"
    )
    redis_text = (
        redact_url(redis_url) if settings.redis_url else f"embedded Redis in {data_dir / 'redis'}"
    )
    try:
        yield database_url, redis_url, f"database: {db_text}\nredis:    {redis_text}"
    finally:
        if embedded is not None:
            embedded.stop()


async def run_migrations(database_url: str) -> list[str]:
    conn = await postgres.connect(database_url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


def _stop_event() -> asyncio.Event:
    """Set on SIGINT or SIGTERM, so shutdown is graceful whichever arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def serve(settings: Settings, database_url: str, redis_url: str, description: str, *,
                extra_process: bool = False) -> None:
    """Serve until SIGINT/SIGTERM. With ``LIVECORE_PROCESSES`` > 1 this process also starts
    and supervises the other serving processes (:mod:`gateway.supervisor`); an
    ``extra_process`` is one of those."""
    stop = _stop_event()
    raise_open_file_limit()
    if not extra_process:
        applied = await run_migrations(database_url)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
    services = await Services.connect(settings, database_url=database_url, redis_url=redis_url)
    # Streams left live by a node that was killed (its grace timer died with it).
    await end_lapsed_streams(services)
    app = create_app(services)
    app[METRICS_KEY].watch_gc()
    runner = Runner(
        app, access_log=None, handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    shared_port = extra_process or settings.processes > 1
    others: ServingProcesses | None = None
    background: list[asyncio.Task[None]] = []
    undo_collector: Callable[[], None] | None = None
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True,
                           reuse_port=shared_port or None)
        await site.start()
        host, port = runner.addresses[0][:2]
        if extra_process:
            background.append(asyncio.create_task(watch_parent(stop)))
        elif settings.processes > 1:
            others = ServingProcesses(settings.processes - 1, port=port,
                                      database_url=database_url, redis_url=redis_url)
            others.start()
            background.append(asyncio.create_task(others.supervise()))
            log.warning(
                "live video sessions (WHIP, WHEP) and HLS output live in the process that "
                "took the publisher: with several processes on the port a viewer may reach "
                "another one (409 stream_not_live, 404 for HLS); serve media with "
                "LIVECORE_PROCESSES=1 (docs/streaming.md)",
                extra={"processes": settings.processes})
        # Everything allocated so far lives as long as the process: keep it out of the
        # collector's full passes, which otherwise stop the loop longer as the heap grows;
        # later, the survivors of each full pass (gateway/collector.py).
        gc.collect()
        gc.freeze()
        collector = CollectorPolicy()
        background.append(asyncio.create_task(collector.run()))
        undo_collector = collector.install()
        shown = f"[{host}]" if ":" in host else host
        if extra_process:
            log.info("serving process started", extra={"port": port, "pid": os.getpid()})
        else:
            processes = (f" ({settings.processes} processes on the port)"
                         if settings.processes > 1 else "")
            say(f"Livecore serving on http://{shown}:{port}{processes}\n{description}\n"
                "Press Ctrl-C to stop.")
        await stop.wait()
        if not extra_process:
            say("Stopping: finishing requests in flight...")
    finally:
        if undo_collector is not None:
            undo_collector()
        for task in background:
            task.cancel()
        # Stops accepting, lets handlers in flight finish (up to the timeout), closes sockets.
        # Bounded: a shutdown must finish, so the embedded servers are stopped after it.
        stopping = [asyncio.wait_for(runner.cleanup(), SHUTDOWN_TIMEOUT_S + 5)]
        if others is not None:
            stopping.append(others.stop())
        for outcome in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(outcome, TimeoutError):
                log.warning("shutdown: the web server did not stop in time")
            elif isinstance(outcome, BaseException):
                log.error("shutdown failed", exc_info=outcome)
        try:
            await asyncio.wait_for(services.close(), 5)
        except TimeoutError:
            log.warning("shutdown: connections did not close in time; dropping them")
            services.pool.terminate()


def raise_open_file_limit() -> int:
    """Each websocket is a file descriptor: take the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def worker(settings: Settings, database_url: str, redis_url: str) -> None:
    """Background jobs: a heartbeat and the end of streams no node holds any more
    (:func:`gateway.media.end_lapsed_streams`) every LIVECORE_WORKER_INTERVAL_S, a reconciliation
    pass (ledger/reconciler.py) every LIVECORE_RECONCILE_INTERVAL_S, one worker at a time, and
    the payouts stuck in pending resolved every LIVECORE_PAYOUT_RETRY_INTERVAL_S
    (ledger/payouts.py; several workers may do it at once: a payout is resolved once)."""
    stop = _stop_event()
    services = await Services.connect(settings, database_url=database_url, redis_url=redis_url)
    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        start_http_server(settings.worker_metrics_port, addr=settings.host,
                          registry=metrics.registry)
    reconciler = Reconciler(services.pool, services.redis, prefix=settings.redis_prefix,
                            interval_s=settings.reconcile_interval_s, clock=services.clock,
                            on_report=metrics.observe_reconciliation)
    say("Livecore worker running; press Ctrl-C to stop.")
    key = settings.redis_prefix + "worker:heartbeat:" + str(os.getpid())
    loop = asyncio.get_running_loop()
    next_pass = next_payouts = loop.time()
    try:
        while not stop.is_set():
            try:
                await services.redis.set(key, utc_now().isoformat(),
                                         ex=settings.worker_interval_s * 3)
                await end_lapsed_streams(services)
                if loop.time() >= next_payouts:
                    next_payouts = loop.time() + settings.payout_retry_interval_s
                    await services.payouts.retry_stuck()
                if loop.time() >= next_pass:
                    next_pass = loop.time() + settings.reconcile_interval_s
                    await reconciler.run_pass()
            except postgres.UNAVAILABLE_ERRORS + _REDIS_UNAVAILABLE as exc:
                metrics.reconcile_failures.inc()
                log.warning("worker pass failed: a dependency is unavailable",
                            extra={"error": repr(exc)})
            except Exception:
                metrics.reconcile_failures.inc()
                log.exception("worker pass failed")
            wait = min(settings.worker_interval_s,
                       max(0.0, min(next_pass, next_payouts) - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
    finally:
        with contextlib.suppress(Exception):
            await services.redis.delete(key)
        await services.close()
    say("Worker stopped.")


async def _attach_embedded_redis(settings: Settings, data_dir: Path) -> str:
    """The worker shares ``serve``'s embedded Redis; it waits for it rather than starting one."""
    if settings.redis_url is not None:
        return settings.redis_url.reveal()
    embedded = EmbeddedRedis(data_dir / "redis")
    deadline = asyncio.get_running_loop().time() + ATTACH_TIMEOUT_S
    while not embedded.is_running():
        if asyncio.get_running_loop().time() > deadline:
            raise LivecoreError(
                "No Redis: set REDIS_URL, or start `livecore serve` (its embedded Redis) first."
            )
        await asyncio.sleep(0.5)
    client = await connect_redis(embedded.url)
    await client.aclose()
    return embedded.url


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise LivecoreError("No terminal to ask for a password: use --password-stdin.")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise LivecoreError("The passwords differ.")
    return first


async def create_user(database_url: str, args: argparse.Namespace, password: str) -> str:
    now = utc_now()
    username = parse_username(args.username)
    check_password(password, username=username)
    birthdate = parse_birthdate(args.birthdate, today=now.date(), min_age_years=0)
    roles = normalise_roles(args.role or [])
    pool = await postgres.create_pool(database_url, max_size=2)
    try:
        accounts = PostgresAccounts(pool)
        account = await accounts.create(
            user_id=UserId(uuid.uuid4()),
            username=username,
            password_hash=await auth.hash_password(password),
            birthdate=birthdate,
            roles={Role.VIEWER},
            now=now,
        )
        if roles != account.roles:
            account = await accounts.set_roles(
                account.id, roles, actor_id=None, reason="created from the shell", now=now
            )
    finally:
        await pool.close()
    roles_text = ", ".join(sorted_roles(account.roles))
    return f"Created {account.username} ({account.id}) with roles {roles_text}."


async def set_roles(database_url: str, args: argparse.Namespace) -> str:
    username = parse_username(args.username)
    pool = await postgres.create_pool(database_url, max_size=2)
    try:
        accounts = PostgresAccounts(pool)
        found = await accounts.credentials(username)
        if found is None:
            raise NotFound(f"No user named {username!r}.", code="user_not_found")
        account = await accounts.set_roles(
            found[0].id, normalise_roles(args.role or []), actor_id=None,
            reason="set from the shell", now=utc_now(),
        )
    finally:
        await pool.close()
    return f"{account.username} now has roles {', '.join(sorted_roles(account.roles))}."


#: ``serve``'s flags and the variables they override.
SERVE_FLAGS = {"host": "LIVECORE_HOST", "port": "PORT", "processes": "LIVECORE_PROCESSES"}


def _bounded(name: str, low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be between {low} and {high}")
        return value

    return parse


def serve_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables ``serve``'s flags set (only the flags given)."""
    return {variable: str(getattr(args, flag)) for flag, variable in SERVE_FLAGS.items()
            if getattr(args, flag, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livecore", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser(
        "serve", help="run the HTTP gateway",
        description="Run the HTTP gateway. Each flag overrides its environment variable.")
    serve_command.add_argument(
        "--host", help="address to bind (overrides LIVECORE_HOST; 0.0.0.0 for all)")
    serve_command.add_argument(
        "--port", type=_bounded("port", 0, 65535), help="TCP port (overrides PORT; 0: any free)")
    serve_command.add_argument(
        "--processes", type=_bounded("processes", 1, 1024),
        help="serving processes on the port (overrides LIVECORE_PROCESSES)")
    # Set by the first serving process on the others it starts (LIVECORE_PROCESSES).
    serve_command.add_argument(EXTRA_FLAG, dest="extra_process", action="store_true",
                               help=argparse.SUPPRESS)
    commands.add_parser("migrate", help="apply pending database migrations")
    commands.add_parser("worker", help="run background jobs")
    user = commands.add_parser("user", help="manage accounts from the shell")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    role_help = f"a role to hold (repeatable): {', '.join(r.value for r in Role)}"
    create = user_commands.add_parser("create", help="create an account")
    create.add_argument("username")
    create.add_argument("--role", action="append", choices=[r.value for r in Role], help=role_help)
    create.add_argument("--birthdate", required=True, help="YYYY-MM-DD")
    create.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    roles = user_commands.add_parser("roles", help="replace an account's roles")
    roles.add_argument("username")
    roles.add_argument("--role", action="append", choices=[r.value for r in Role], help=role_help)
    audit = commands.add_parser("audit", help="check the ledger")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check every ledger invariant")
    verify.add_argument("--repair-redis", action="store_true",
                        help="rebuild live streams whose Redis projection differs")
    payouts = commands.add_parser("payouts", help="creator payouts")
    payout_commands = payouts.add_subparsers(dest="payouts_command", required=True)
    retry = payout_commands.add_parser(
        "retry", help="resolve the payouts pending for longer than LIVECORE_PAYOUT_STUCK_AFTER_S")
    retry.add_argument("--all", action="store_true",
                       help="every pending payout, however recent")
    commands.add_parser(
        "protocol-schema",
        help="print the websocket protocol's JSON Schema (docs/protocol-v1.schema.json)",
    )
    return parser


def run(argv: list[str] | None, environ: dict[str, str] | Any) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "protocol-schema":
        # Needs no settings, database or Redis: the schemas are constants of the code.
        sys.stdout.write(json.dumps(protocol_document(), indent=2, sort_keys=True) + "\n")
        return 0
    if args.command == "serve":
        overrides = serve_overrides(args)
        environ = {**environ, **overrides}
        # The extra serving processes (LIVECORE_PROCESSES) read this process's environment.
        os.environ.update(overrides)
    try:
        settings = Settings.from_env(environ)
    except LivecoreError as exc:
        print(f"livecore: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        if args.command == "serve" and args.extra_process:
            assert settings.database_url is not None and settings.redis_url is not None
            asyncio.run(serve(settings, settings.database_url.reveal(),
                              settings.redis_url.reveal(), "", extra_process=True))
        elif args.command == "serve":
            with backends(settings) as (database_url, redis_url, description):
                asyncio.run(serve(settings, database_url, redis_url, description))
            say("Stopped.")
        elif args.command == "migrate":
            with database(settings) as database_url:
                applied = asyncio.run(run_migrations(database_url))
            say(f"Applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}.")
        elif args.command == "worker":
            with database(settings) as database_url:
                data_dir = Path(settings.data_dir).resolve()
                asyncio.run(_run_worker(settings, database_url, data_dir))
        elif args.command == "user":
            password = _read_password(args) if args.user_command == "create" else ""
            with database(settings) as database_url:
                asyncio.run(run_migrations(database_url))
                if args.user_command == "create":
                    say(asyncio.run(create_user(database_url, args, password)))
                else:
                    say(asyncio.run(set_roles(database_url, args)))
        elif args.command == "audit":
            with database(settings) as database_url:
                data_dir = Path(settings.data_dir).resolve()
                return asyncio.run(audit_verify(settings, database_url, data_dir,
                                                repair=args.repair_redis))
        elif args.command == "payouts":
            with database(settings) as database_url:
                return asyncio.run(retry_payouts(settings, database_url, everything=args.all))
    except LivecoreError as exc:
        print(f"livecore: {exc.message}", file=sys.stderr)
        return 1
    return 0


async def retry_payouts(settings: Settings, database_url: str, *, everything: bool) -> int:
    """Resolve stuck payouts once; 0 when none is left pending, 1 otherwise."""
    if everything:
        settings = dataclasses.replace(settings, payout_stuck_after_s=0)
    pool = await postgres.create_pool(database_url, max_size=2)
    provider = provider_for(settings)
    try:
        payouts = Payouts(pool, provider, settings, utc_now)
        total = {"paid": 0, "failed": 0, "pending": 0}
        while True:  # RETRY_BATCH at a time, until none is left to try
            counts = await payouts.retry_stuck()
            for name, value in counts.items():
                total[name] += value
            if sum(counts.values()) < RETRY_BATCH or counts["pending"]:
                break
    finally:
        await provider.close()
        await pool.close()
    say(f"Payouts retried: {total['paid']} paid, {total['failed']} failed, "
        f"{total['pending']} still pending.")
    return 1 if total["pending"] else 0


async def audit_verify(settings: Settings, database_url: str, data_dir: Path, *,
                       repair: bool) -> int:
    """Print the invariant report; 0 when every check passes, 1 otherwise."""
    from rich.console import Console
    from rich.table import Table

    pool = await postgres.create_pool(database_url, max_size=2)
    try:
        results = await verify_postgres(pool)
        redis_url = settings.redis_url.reveal() if settings.redis_url else None
        embedded = EmbeddedRedis(data_dir / "redis")
        if redis_url is None and embedded.is_running():
            redis_url = embedded.url
        if redis_url is None:
            results.append(CheckResult("redis_matches_postgres",
                                       "not checked: no REDIS_URL and no embedded Redis running"))
        else:
            client = await connect_redis(redis_url)
            try:
                projection = RedisProjection(client, settings.redis_prefix)
                if repair:
                    live = await pool.fetch("SELECT id FROM streams WHERE state = 'live'")
                    for row in live:
                        await projection.reconcile(pool, row["id"], repair=True)
                results.append(await verify_projection(pool, projection))
            finally:
                await client.aclose()
    finally:
        await pool.close()
    table = Table(title="Ledger audit")
    for column in ("check", "result", "failures", "examples"):
        table.add_column(column)
    for result in results:
        table.add_row(result.description, "ok" if result.ok else "FAILED",
                      str(result.failures), "\n".join(result.examples))
    Console(width=160).print(table)
    failed = [r.name for r in results if not r.ok]
    say("All invariants hold." if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


async def _run_worker(settings: Settings, database_url: str, data_dir: Path) -> None:
    await worker(settings, database_url, await _attach_embedded_redis(settings, data_dir))


def main() -> None:
    sys.exit(run(sys.argv[1:], os.environ))

