"""``livecore serve`` as a user runs it: embedded PostgreSQL and Redis, Ctrl-C, restart."""

import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from tests.processes import BIN, REPO, Background, environment, free_port
from tests.support import PASSWORD, unique_name

pytestmark = pytest.mark.e2e


def _pids(data: Path) -> dict[str, int]:
    return {
        "postgres": int((data / "postgres" / "postmaster.pid").read_text().split()[0]),
        "redis": int((data / "redis" / "redis.pid").read_text().strip()),
    }


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


async def test_zero_configuration_serve_register_stream_stop_and_restart(server_dir):
    data = server_dir / "data"
    port = free_port()
    env = environment(LIVECORE_DATA_DIR=str(data), PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    name = unique_name("e2e")

    with Background([str(BIN / "livecore"), "serve"], env, cwd=server_dir) as server:
        banner = server.wait_for("Livecore serving on", timeout=90)
        assert f"http://127.0.0.1:{port}" in banner
        server.wait_for("database: embedded PostgreSQL")
        server.wait_for("redis:    embedded Redis")
        pids = _pids(data)
        async with aiohttp.ClientSession(base) as http:
            async with http.get("/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok", "postgres": "ok", "redis": "ok"}
            async with http.post("/api/v1/auth/register", json={
                "username": name, "password": PASSWORD, "birthdate": "1991-06-01",
            }) as response:
                assert response.status == 201
            async with http.post("/api/v1/auth/login",
                                 json={"username": name, "password": PASSWORD}) as response:
                token = (await response.json())["token"]
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post("/api/v1/me/creator", headers=auth) as response:
                assert response.status == 200
            async with http.post("/api/v1/streams", headers=auth,
                                 json={"title": "First light"}) as response:
                assert response.status == 201
                stream = await response.json()
            key = stream["stream_key"]
            async with http.get("/") as response:
                assert response.status == 200
                assert "Live now" in await response.text()
        assert server.interrupt() == 0
        server.wait_for("Stopped.")
        logs = "".join(server.stderr)
        assert key not in logs and token not in logs and PASSWORD not in logs
    assert _gone(pids["postgres"]), "embedded PostgreSQL left running"
    assert _gone(pids["redis"]), "embedded Redis left running"

    # A second start reuses the data: same account, same stream.
    with Background([str(BIN / "livecore"), "serve"], env, cwd=server_dir) as server:
        server.wait_for("Livecore serving on", timeout=90)
        async with aiohttp.ClientSession(base) as http:
            async with http.post("/api/v1/auth/login",
                                 json={"username": name, "password": PASSWORD}) as response:
                assert response.status == 200
                token = (await response.json())["token"]
            async with http.get(f"/api/v1/streams/{stream['id']}",
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert (await response.json())["stream_key"] == key
        pids = _pids(data)
        assert server.interrupt() == 0
    assert _gone(pids["postgres"]) and _gone(pids["redis"])


def test_serve_adopts_servers_left_by_a_killed_serve(server_dir):
    data = server_dir / "data"
    env = environment(LIVECORE_DATA_DIR=str(data), PORT=str(free_port()))
    with Background([str(BIN / "livecore"), "serve"], env, cwd=server_dir) as server:
        server.wait_for("Livecore serving on", timeout=90)
        pids = _pids(data)
        server.kill()  # SIGKILL: no clean-up runs
    assert psutil.pid_exists(pids["postgres"]) and psutil.pid_exists(pids["redis"])
    with Background([str(BIN / "livecore"), "serve"], env, cwd=server_dir) as server:
        server.wait_for("Livecore serving on", timeout=90)
        assert _pids(data) == pids  # reused, not duplicated
        assert server.interrupt() == 0
    assert _gone(pids["postgres"]) and _gone(pids["redis"])


def test_procfile_declares_web_worker_release():
    from honcho.environ import parse_procfile

    procfile = parse_procfile((REPO / "Procfile").read_text())
    assert procfile.processes == {
        "release": "livecore migrate",
        "web": "livecore serve",
        "worker": "livecore worker",
    }


async def test_honcho_runs_web_and_worker_from_the_procfile(backend, tmp_path):
    port = free_port()
    env = environment(
        DATABASE_URL=backend.database_url, REDIS_URL=backend.redis_url,
        LIVECORE_REDIS_PREFIX=backend.redis_prefix, PORT=str(port),
        PATH=f"{BIN}:{environment()['PATH']}",
    )
    command = [str(BIN / "honcho"), "--no-colour", "-f", str(REPO / "Procfile"),
               "-d", str(tmp_path), "start", "web", "worker"]
    with Background(command, env, cwd=tmp_path) as honcho:
        try:
            honcho.wait_for("Livecore serving on", timeout=90)
            honcho.wait_for("worker running", timeout=60)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
        finally:
            # Ctrl-C: honcho passes SIGTERM on; both processes shut down cleanly. (honcho's
            # own status is 130 and the shells it wraps report -15, whatever they do.)
            honcho.interrupt()
    output = honcho.output()
    assert "web.1    | Stopped." in output
    assert "worker.1 | Worker stopped." in output
