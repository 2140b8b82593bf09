"""The gift load generator reads its sockets without walking frames: check it counts and
answers exactly what a frame-by-frame reader would, however the bytes are cut into reads."""

import asyncio
import random
from typing import Any

import orjson
from websockets.frames import Frame, Opcode

from loadtests.gifts import GiftSocket


def _frame(message: dict[str, Any]) -> bytes:
    return Frame(Opcode.TEXT, orjson.dumps(message)).serialize(mask=False)


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def test_the_gift_reader_counts_events_and_matches_answers_across_any_cut() -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    for _ in range(5):
        sock = GiftSocket(b"", loop.create_future())
        sock.transport = _Transport()  # type: ignore[assignment]
        stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + _frame({"type": "hello", "v": 1})
        gifts, waiters = 0, []
        for seq in range(2000):
            roll = rng.random()
            if roll < 0.8:  # room events may hold the answers' first bytes, nested
                stream += _frame({"seq": seq, "epoch": "e", "type": "gift.sent",
                                  "data": {"pad": "x" * rng.randint(0, 300),
                                           "nested": {"type": "ack"}}})
                gifts += 1
            elif roll < 0.9:  # answers of both header sizes (under and over 126 bytes)
                message_id = f"r{seq}"
                waiter = loop.create_future()
                sock._waiting[message_id] = waiter
                waiters.append((message_id, waiter))
                stream += _frame({"type": "ack", "result": {"pad": "z" * rng.randint(0, 400)},
                                  "id": message_id})
            else:
                stream += _frame({"seq": seq, "epoch": "e", "type": "leaderboard.updated",
                                  "data": {}})
        position = 0
        while position < len(stream):
            size = rng.randint(1, 700)
            sock.data_received(stream[position : position + size])
            position += size
        assert sock.hello.done()
        assert sock.deliveries == gifts
        assert all(w.done() and w.result()["id"] == i for i, w in waiters)
        assert len(sock.buffer) < 32
