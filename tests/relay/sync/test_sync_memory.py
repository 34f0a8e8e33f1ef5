"""What a refused message leaves behind in the relay's memory: nothing that outlives its answer.

Why this matters: the relay runs the cyclic GC rarely on purpose (``SyncExtension._tune_gc``), so
anything a refused message leaves in a reference cycle stays until a full collection, message
bytes included. A traceback is the usual culprit: its frames hold every local of the code that
raised (``self``, the received buffer) and, through ``f_back``, the hub's read loop and its
connection. The fuzz run found this (docs/reliability.md, "Frame fuzzing"): every connection
closed for a bad message kept itself, its protocol object and the message alive until a full GC.

In process (hub, document manager, real SQLite store; the transport is a pair of queues), with
the cyclic GC off during each test so only reference counting frees anything: an object that is
still alive at the end is held by a cycle or a long-lived owner, exactly what the tests refuse.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from crdt_core.errors import EngineError, ValidationError
from crdt_core.messages import Auth, ClientUpdate, CloseCode, ErrorMessage, Subscribe, Sync
from relay.store.sqlite import SQLiteDocumentStore
from relay.sync.connection import SyncConnection
from tests.relay.sync.test_sync_pipeline import DOC, QueueTransport, Relay, author, serving_in_process

#: Appended to refused messages so a leaked one would be visible in RSS too (not asserted on).
PADDING = b"\x00" * 64_000


@pytest.fixture
def gc_off() -> Iterator[None]:
    """Reference counting only, as between the relay's rare collections."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    async with serving_in_process(await SQLiteDocumentStore.open(tmp_path)) as r:
        yield r


async def _connection(relay: Relay, user: str) -> tuple[QueueTransport, weakref.ref[SyncConnection]]:
    known = set(relay.hub.connections)
    transport = await relay.connect(user)
    (conn,) = relay.hub.connections - known
    return transport, weakref.ref(conn)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"\xff\xfe not msgpack" + PADDING, id="undecodable"),
        pytest.param(Auth("user:again").to_wire(), id="second-auth"),
    ],
)
async def test_a_connection_closed_for_a_bad_message_is_freed_without_the_gc(
    relay: Relay, gc_off: None, bad: bytes
) -> None:
    transport, conn = await _connection(relay, "mallory")
    proto = conn().proto  # type: ignore[union-attr]
    await transport.inbox.put(bad)
    await asyncio.wait_for(relay.tasks[-1], 5.0)
    assert transport.closed is not None and transport.closed[0] == CloseCode.PROTOCOL_VIOLATION
    fault = proto.parser_exc
    del proto
    # Served and dropped: nothing but reference counting is needed to free it (and its buffers).
    assert conn() is None, f"still held by {[type(r).__name__ for r in gc.get_referrers(conn())]}"
    # The protocol still names the fault for the logs, without the frames that raised it.
    assert fault is not None and fault.__traceback__ is None


async def test_rejected_updates_leave_no_exception_reachable(relay: Relay, gc_off: None) -> None:
    transport, conn = await _connection(relay, "alice")
    await transport.inbox.put(Subscribe(DOC, b"\x00").to_wire())
    assert isinstance(await transport.next(), Sync)
    alice = author("alice")
    _, good = alice.book(Replica(alice.client_id()), DOC, "s1", 1)
    forged = bytearray(good)
    forged[-5] ^= 0xFF  # breaks the record's signature (or its encoding): refused either way
    for uid in range(1, 41):
        update = bytes(forged) if uid % 2 else b"\x01\x02 not an update" + PADDING
        await transport.inbox.put(ClientUpdate(DOC, uid, update).to_wire())
        answer = await transport.next()
        assert isinstance(answer, ErrorMessage) and answer.uid == uid
    assert conn() is not None  # still open: the refusals did not cost the connection
    leftovers = [o for o in gc.get_objects() if isinstance(o, (ValidationError, EngineError))]
    assert leftovers == []
