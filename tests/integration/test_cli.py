"""The ``livecore`` command against the run's real database."""

import asyncio
import signal
import time

import psutil

from tests.processes import BIN, Background, environment, run
from tests.support import PASSWORD, unique_name


def _env(backend, **extra):
    return environment(
        DATABASE_URL=backend.database_url, REDIS_URL=backend.redis_url,
        LIVECORE_REDIS_PREFIX=backend.redis_prefix, **extra,
    )


async def test_user_create_bootstraps_an_admin_who_can_log_in(backend, api):
    name = unique_name("boss")
    done = run(["user", "create", name, "--role", "admin", "--role", "finance",
                "--birthdate", "1980-02-03", "--password-stdin"], _env(backend),
               stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    assert f"Created {name}" in done.stdout and "viewer, finance, admin" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    token = await api.login(name)
    response, users = await api.request("GET", "/api/v1/users?limit=1", token=token)
    assert response.status == 200


async def test_user_roles_replaces_roles(backend, api):
    user = await api.register()
    done = run(["user", "roles", user["username"], "--role", "moderator"], _env(backend))
    assert done.returncode == 0, done.stderr
    assert "viewer, moderator" in done.stdout
    token = await api.login(user["username"])
    _, me = await api.request("GET", "/api/v1/me", token=token)
    assert me["roles"] == ["viewer", "moderator"]


async def test_user_commands_report_bad_input_clearly(backend, api):
    user = await api.register()
    cases = [
        (["user", "create", user["username"], "--birthdate", "1990-01-01", "--password-stdin"],
         PASSWORD, "is taken"),
        (["user", "create", "x!", "--birthdate", "1990-01-01", "--password-stdin"], PASSWORD,
         "username"),
        (["user", "create", unique_name(), "--birthdate", "1990-01-01", "--password-stdin"],
         "short", "password"),
        (["user", "roles", unique_name()], "", "No user named"),
        (["user", "create", unique_name(), "--birthdate", "1990-01-01"], "", "--password-stdin"),
    ]
    for args, stdin, message in cases:
        done = run(args, _env(backend), stdin=stdin)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)


def test_invalid_settings_stop_at_start_up_naming_the_variable(backend):
    done = run(["migrate"], _env(backend, PORT="eighty"))
    assert done.returncode == 2
    assert "PORT" in done.stderr and "eighty" in done.stderr


async def test_two_migrate_processes_at_once(backend):
    async def migrate_once():
        process = await asyncio.create_subprocess_exec(
            str(BIN / "livecore"), "migrate", env=_env(backend),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        return process.returncode, out.decode(), err.decode()

    results = await asyncio.gather(migrate_once(), migrate_once())
    for code, out, err in results:
        assert code == 0, err
        assert "none pending" in out  # the session's database is already migrated


async def test_worker_heartbeats_and_stops_on_sigterm(backend, services):
    with Background([str(BIN / "livecore"), "worker"],
                    _env(backend, LIVECORE_WORKER_INTERVAL_S="1")) as worker:
        worker.wait_for("worker running", timeout=30)
        key = None
        for _ in range(50):
            keys = [k async for k in services.redis.scan_iter(
                match=f"{backend.redis_prefix}worker:heartbeat:*")]
            if keys:
                key = keys[0]
                break
            await asyncio.sleep(0.1)
        assert key is not None, "no heartbeat"
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(30) == 0
        assert await services.redis.exists(key) == 0


def _listening(port: int) -> set[tuple[int | None, str]]:
    """(pid, address) of the sockets listening on ``port``."""
    found = set()
    for conn in psutil.net_connections("tcp"):
        address = conn.laddr
        if conn.status == psutil.CONN_LISTEN and isinstance(address, tuple) and address \
                and address[1] == port:
            found.add((conn.pid, str(address[0])))
    return found


async def test_serve_flags_override_the_environment(backend):
    import aiohttp

    from tests.processes import free_port

    port, other = free_port(), free_port()
    env = _env(backend, PORT=str(other), LIVECORE_HOST="::1", LIVECORE_PROCESSES="1")
    command = [str(BIN / "livecore"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--processes", "2"]
    with Background(command, env) as server:
        banner = server.wait_for("Livecore serving on", timeout=90)
        assert f"http://127.0.0.1:{port} (2 processes on the port)" in banner
        # Two processes listen on the flag's address and port (the extra one took them too,
        # not LIVECORE_HOST and PORT from its environment).
        listening: set[tuple[int | None, str]] = set()
        deadline = time.monotonic() + 60
        while len(listening) < 2 and time.monotonic() < deadline:
            listening = _listening(port)
            await asyncio.sleep(0.2)
        assert len(listening) == 2 and {ip for _pid, ip in listening} == {"127.0.0.1"}
        assert _listening(other) == set()
        async with aiohttp.ClientSession() as http:
            for _ in range(4):
                async with http.get(f"http://127.0.0.1:{port}/healthz",
                                    headers={"Connection": "close"}) as response:
                    assert response.status == 200
        assert server.interrupt() == 0


def test_serve_help_and_bad_flags():
    done = run(["serve", "--help"], environment())
    assert done.returncode == 0
    for flag, variable in (("--host", "LIVECORE_HOST"), ("--port", "PORT"),
                           ("--processes", "LIVECORE_PROCESSES")):
        assert flag in done.stdout and variable in done.stdout
    for args, message in ((["--port", "eighty"], "port must be a whole number"),
                          (["--port", "70000"], "port must be between 0 and 65535"),
                          (["--processes", "0"], "processes must be between 1 and 1024")):
        done = run(["serve", *args], environment())
        assert done.returncode == 2, args
        assert message in done.stderr, (args, done.stderr)
