"""Streams left live by a killed ``livecore serve``: ended at the next start-up, and by
``livecore worker``, while streams another node still holds stay live (tests/e2e).

Node A is a real ``livecore serve`` process that is killed with SIGKILL while it holds a
publisher (its grace timer dies with it); node B is a served app in this process, sharing the
database and Redis, holding a publisher of its own the whole time. The room is watched through
node B: it must hear the end as it hears a normal one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from gateway.app import create_app
from gateway.client import HubClient
from livecore.hls import segment_name
from livecore.media import SDP_TYPE
from tests.e2e.test_processes import serving_processes
from tests.media.test_whip_whep import Pattern, new_stream, publish
from tests.processes import BIN, Background, environment, free_port
from tests.support import ApiClient, stream_state, until_state

pytestmark = pytest.mark.e2e

GRACE_S = 0.5
LEASE_S = 1.5


def node_env(backend: Any, port: int, data_dir: Path, **more: str) -> dict[str, str]:
    more.setdefault("LIVECORE_PROCESSES", "1")
    return environment(PORT=str(port), DATABASE_URL=backend.database_url,
                       REDIS_URL=backend.redis_url, LIVECORE_REDIS_PREFIX=backend.redis_prefix,
                       LIVECORE_DATA_DIR=str(data_dir),
                       LIVECORE_MEDIA_GRACE_S=str(GRACE_S), LIVECORE_MEDIA_LEASE_S=str(LEASE_S),
                       **more)


@contextlib.asynccontextmanager
async def node_b(make_services: Any, tmp_path: Path) -> AsyncIterator[ApiClient]:
    services = make_services(media_grace_s=GRACE_S, media_lease_s=LEASE_S,
                             data_dir=str(tmp_path / "b"))
    async with ApiClient.serving(create_app(services)) as api:
        yield api


async def publish_to(base: str, stream_id: str, key: str) -> RTCPeerConnection:
    """An aiortc publisher (H.264 preferred by the server, with audio) on another node."""
    pc = RTCPeerConnection()
    pc.addTrack(Pattern())
    pc.addTrack(AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/whip/{stream_id}", data=pc.localDescription.sdp,
            headers={"Content-Type": SDP_TYPE, "Authorization": f"Bearer {key}"}) as response:
        answer = await response.text()
        assert response.status == 201, answer
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc


async def until_true(predicate: Any, *, within_s: float = 60) -> None:
    async with asyncio.timeout(within_s):
        while not await predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def killed_while_live(backend: Any, api: ApiClient, data_a: Path) -> tuple[str, Path]:
    """Start node A, publish a stream to it until it is live with HLS segments on disk, and
    kill node A; (the stream's id, its HLS directory)."""
    port = free_port()
    stream_id, key, _ = await new_stream(api)
    hls_dir = data_a / "hls" / stream_id
    with Background([str(BIN / "livecore"), "serve"], node_env(backend, port, data_a)) as a:
        await asyncio.to_thread(a.wait_for, "Livecore serving on", 90)
        publisher = await publish_to(f"http://127.0.0.1:{port}", stream_id, key)
        try:
            await until_state(api, stream_id, "live")

            async def two_segments() -> bool:
                return (hls_dir / segment_name(1)).is_file()

            await until_true(two_segments)
            a.kill()  # SIGKILL: no shutdown, no grace timer, no end
        finally:
            await publisher.close()
    assert await stream_state(api, stream_id) == "live"
    assert not (hls_dir / "index.m3u8").exists()
    return stream_id, hls_dir


def assert_replay(hls_dir: Path) -> None:
    playlist = (hls_dir / "index.m3u8").read_text()
    assert playlist.rstrip().endswith("#EXT-X-ENDLIST")
    assert "#EXT-X-PLAYLIST-TYPE:VOD" in playlist
    listed = [line for line in playlist.splitlines() if line.endswith(".m4s")]
    on_disk = sorted(p.name for p in hls_dir.glob("*.m4s"))
    assert len(listed) >= 2 and listed == [segment_name(i) for i in range(len(listed))]
    assert sorted(listed) == on_disk


async def test_the_worker_ends_a_stream_whose_node_was_killed_and_spares_a_held_one(
        backend: Any, make_services: Any, tmp_path: Path) -> None:
    async with node_b(make_services, tmp_path) as api:
        held_id, held_key, _ = await new_stream(api)
        held, _ = await publish(api, held_id, held_key)
        try:
            await until_state(api, held_id, "live")
            stream_id, hls_dir = await killed_while_live(backend, api, tmp_path / "a")
            ws_url = str(api.client.make_url("/ws")).replace("http://", "ws://")
            async with await HubClient.connect(ws_url) as room:
                await room.subscribe(stream_id)
                env = node_env(backend, free_port(), tmp_path / "a",
                               LIVECORE_WORKER_INTERVAL_S="1")
                with Background([str(BIN / "livecore"), "worker"], env) as worker:
                    await asyncio.to_thread(worker.wait_for, "worker running", 90)
                    event = await room.next_event("stream.state", timeout=60)
                    assert event["data"] == {"state": "ended"}
                    assert await stream_state(api, stream_id) == "ended"
                    # Several passes later, the stream node B holds is still live.
                    lease = await lease_until(make_services, held_id)
                    await until_true(lambda: passed(lease + dt.timedelta(seconds=2 * LEASE_S)))
                    assert await stream_state(api, held_id) == "live"
                    worker.interrupt()
            assert_replay(hls_dir)
            assert "stream ended: no node holds its publisher" in "".join(worker.stderr)
        finally:
            await held.close()


async def test_start_up_ends_a_stream_whose_node_was_killed_and_spares_a_held_one(
        backend: Any, make_services: Any, tmp_path: Path) -> None:
    async with node_b(make_services, tmp_path) as api:
        held_id, held_key, _ = await new_stream(api)
        held, _ = await publish(api, held_id, held_key)
        try:
            await until_state(api, held_id, "live")
            stream_id, hls_dir = await killed_while_live(backend, api, tmp_path / "a")
            # Wait until the killed node's lease (renewed at the latest as it was killed) has
            # lapsed for longer than the grace period.
            killed_at = dt.datetime.now(dt.UTC)
            await until_true(lambda: passed(
                killed_at + dt.timedelta(seconds=LEASE_S + GRACE_S + 0.5)))
            ws_url = str(api.client.make_url("/ws")).replace("http://", "ws://")
            async with await HubClient.connect(ws_url) as room:
                await room.subscribe(stream_id)
                env = node_env(backend, free_port(), tmp_path / "a")
                with Background([str(BIN / "livecore"), "serve"], env) as again:
                    await asyncio.to_thread(again.wait_for, "Livecore serving on", 90)
                    # Ended before the node served anything: at start-up.
                    assert await stream_state(api, stream_id) == "ended"
                    event = await room.next_event("stream.state", timeout=10)
                    assert event["data"] == {"state": "ended"}
                    assert await stream_state(api, held_id) == "live"
                    again.interrupt()
            assert_replay(hls_dir)
        finally:
            await held.close()


async def test_a_killed_serving_process_among_several_leaves_no_stream_live(
        backend: Any, make_services: Any, tmp_path: Path) -> None:
    """``LIVECORE_PROCESSES=2``: the extra serving process holding a publisher is killed (the
    supervisor replaces it); the stream is ended, while the one node B holds stays live."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = node_env(backend, port, tmp_path / "a", LIVECORE_PROCESSES="2",
                   LIVECORE_WORKER_INTERVAL_S="1")
    async with node_b(make_services, tmp_path) as api:
        held_id, held_key, _ = await new_stream(api)
        held, _ = await publish(api, held_id, held_key)
        publisher: RTCPeerConnection | None = None
        try:
            await until_state(api, held_id, "live")
            with Background([str(BIN / "livecore"), "serve"], env) as server:
                await asyncio.to_thread(server.wait_for, "Livecore serving on", 90)

                async def one_extra() -> bool:
                    return len(serving_processes(server.process.pid)) == 1

                await until_true(one_extra)
                [extra] = serving_processes(server.process.pid)
                # The kernel spreads connections over both processes: publish until a
                # publisher lands on the extra one (its ICE sockets are there).
                for _ in range(16):
                    stream_id, key, _ = await new_stream(api)
                    sockets = len(extra.net_connections(kind="udp"))
                    publisher = await publish_to(base, stream_id, key)
                    await until_state(api, stream_id, "live")
                    if len(extra.net_connections(kind="udp")) > sockets:
                        break
                    await publisher.close()
                    publisher = None
                assert publisher is not None, "no publisher reached the extra process"
                ws_url = str(api.client.make_url("/ws")).replace("http://", "ws://")
                async with await HubClient.connect(ws_url) as room:
                    await room.subscribe(stream_id)
                    extra.kill()  # SIGKILL
                    with Background([str(BIN / "livecore"), "worker"], env) as worker:
                        event = await room.next_event("stream.state", timeout=60)
                        assert event["data"] == {"state": "ended"}
                        worker.interrupt()
                assert await stream_state(api, stream_id) == "ended"
                assert await stream_state(api, held_id) == "live"
                assert psutil.Process(server.process.pid).is_running()
                server.interrupt()
        finally:
            if publisher is not None:
                await publisher.close()
            await held.close()


async def lease_until(make_services: Any, stream_id: str) -> dt.datetime:
    services = make_services()
    value: dt.datetime | None = await services.pool.fetchval(
        "SELECT media_lease_until FROM streams WHERE id = $1", uuid.UUID(stream_id))
    assert value is not None
    return value


async def passed(moment: dt.datetime) -> bool:
    return dt.datetime.now(dt.UTC) > moment
