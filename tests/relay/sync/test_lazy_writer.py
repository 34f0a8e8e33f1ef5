"""A sync connection starts its writer task only when a message cannot be written at once or it
closes (``relay.sync.connection.SyncConnection.wake_writer``): an idle connection on the fast
path holds no task, no event and no coroutine. What is queued still goes out whole and in order."""

from __future__ import annotations

import asyncio

from relay.ops.config import SyncLimits
from relay.ops.metrics import MetricsRegistry
from relay.sync.connection import SyncConnection, Writes


class FakeTransport:
    """Takes writes at once while ``open_now``; otherwise the writer task must send."""

    def __init__(self, open_now: bool) -> None:
        self.open_now = open_now
        self.wire: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    async def recv(self) -> bytes | None:
        return None

    async def send(self, data: bytes) -> None:
        self.wire.append(data)

    async def send_many(self, items: list[bytes]) -> None:
        self.wire.extend(items)

    def write_now(self, items: list[bytes]) -> bool:
        if self.open_now:
            self.wire.extend(items)
        return self.open_now

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _conn(transport: FakeTransport) -> SyncConnection:
    metrics = MetricsRegistry()
    writes = Writes(metrics.counter("b", "bytes"), metrics.counter("s", "slow"))
    return SyncConnection(transport, None, SyncLimits(), writes)


async def test_writes_taken_at_once_need_no_writer_task() -> None:
    transport = FakeTransport(open_now=True)
    conn = _conn(transport)
    conn.push(b"one")
    conn.push(b"two")
    await asyncio.sleep(0)  # the end-of-turn flush
    assert transport.wire == [b"one", b"two"] and conn.writer_task is None
    conn.make_room()  # nobody waits: nothing is made
    assert conn._room is None


async def test_a_paused_socket_and_the_close_go_through_the_writer_in_order() -> None:
    transport = FakeTransport(open_now=False)
    conn = _conn(transport)
    conn.push(b"one")
    await asyncio.sleep(0)
    assert conn.writer_task is not None
    transport.open_now = True
    conn.push(b"two")
    conn.close(1000, "bye")
    await asyncio.wait_for(conn.writer_task, 2.0)
    assert transport.wire == [b"one", b"two"] and transport.closed == (1000, "bye")


async def test_off_the_fast_path_every_message_goes_through_the_writer() -> None:
    transport = FakeTransport(open_now=True)
    conn = _conn(transport)
    conn.write_now = None  # a transport without write_now
    for data in (b"a", b"b", b"c"):
        conn.push(data)
    conn.close(1000, "")
    assert conn.writer_task is not None
    await asyncio.wait_for(conn.writer_task, 2.0)
    assert transport.wire == [b"a", b"b", b"c"] and conn.queued_bytes == 0
