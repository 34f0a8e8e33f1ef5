"""The relay's write path under load: pipelined updates, backpressure, one message per booking.

In process (the hub, the document manager and a real store, SQLite and PostgreSQL in turn; the
transport is a pair of queues), so the tests can hold commits back and watch what the read loop
does meanwhile. The
end-to-end path through uvicorn is covered by ``test_sync_relay.py`` and the client's tests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.messages import (
    Ack,
    ClientUpdate,
    ErrorMessage,
    Limit,
    Stamped,
    Subscribe,
    Sync,
    Welcome,
    decode,
)
from crdt_core.pop import Proof, Purpose
from crdt_core.reader import highest_stamp
from relay.auth.rights import RightsCache
from relay.auth.tokens import Claims, TokenError
from relay.documents.manager import DocumentManager
from relay.ops.config import SyncLimits
from relay.ops.metrics import MetricsRegistry
from relay.store.open import AnyDocumentStore
from relay.sync.hub import SyncHub
from tests.relay.store_backends import BACKENDS, StoreBackend, backend_fixture

DOC = f"bookings:shop1:{(dt.date.today() + dt.timedelta(days=3)).isoformat()}"
RELAY_KEY = SigningKey("k1", Ed25519PrivateKey.generate())


class Tokens:
    """Token ``user:<id>`` is valid for ``<id>``; anything else is refused."""

    def verify_access(
        self, token: str, *, purpose: Purpose | None = None, proof: Proof | None = None
    ) -> Claims:
        if not token.startswith("user:"):
            raise TokenError("bad token")
        now = int(time.time())
        user = token.removeprefix("user:")
        return Claims(user, "access", "j", "f", now, now, now + 3600, "i", "a", "k1")


class QueueTransport:
    """The hub's transport as two queues: what the test sends, and what the relay sent."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent: asyncio.Queue[Any] = asyncio.Queue()
        self.recv_calls = 0
        self.closed: tuple[int, str] | None = None

    async def recv(self) -> bytes | str | None:
        self.recv_calls += 1
        return await self.inbox.get()

    async def send(self, data: bytes) -> None:
        await self.sent.put(decode(data, max_size=1 << 30))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    async def next(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.sent.get(), timeout)


def author(user: str) -> Author:
    key = Ed25519PrivateKey.generate()
    now = int(time.time() * 1000)
    cert = issue_certificate(
        RELAY_KEY,
        user_id=user,
        roles=[],
        owner_of=[],
        staff_of=[],
        device_public_key=public_bytes(key),
        issued_at_ms=now - 60_000,
        expires_at_ms=now + 3_600_000,
    )
    return Author(user, DeviceKey(key, cert), HybridClock(user))


class Relay:
    def __init__(self, hub: SyncHub, store: AnyDocumentStore) -> None:
        self.hub = hub
        self.store = store
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, user: str) -> QueueTransport:
        transport = QueueTransport()
        self.tasks.append(asyncio.create_task(self.hub.serve(transport, f"user:{user}")))
        welcome = await transport.next()
        assert isinstance(welcome, Welcome)
        return transport

    async def subscribe(self, transport: QueueTransport, doc: str = DOC) -> Sync:
        await transport.inbox.put(Subscribe(doc, b"\x00").to_wire())
        sync = await transport.next()
        assert isinstance(sync, Sync)
        return sync


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    async for b in backend_fixture(request, tmp_path):
        yield b


@asynccontextmanager
async def serving_in_process(store: AnyDocumentStore) -> AsyncIterator[Relay]:
    """A hub on ``store`` (closed on exit) with a fast rate limit and 8 updates in flight."""
    manager = DocumentManager(store, highest_stamp=highest_stamp)
    await manager.start()
    hub = SyncHub(
        manager=manager,
        tokens=Tokens(),
        rights=RightsCache(),
        signing_key=lambda: RELAY_KEY,
        trusted_keys=lambda: {RELAY_KEY.kid: RELAY_KEY.public},
        epoch="e1",
        metrics=MetricsRegistry(),
        limits=SyncLimits(rate_per_s=1e6, burst=1_000_000),
        max_inflight=8,
    )
    r = Relay(hub, store)
    try:
        yield r
    finally:
        await hub.shutdown(grace_s=0.5)
        for task in r.tasks:
            task.cancel()
        await asyncio.gather(*r.tasks, return_exceptions=True)
        await manager.close()
        await store.close()


@pytest.fixture
async def relay(backend: StoreBackend) -> AsyncIterator[Relay]:
    async with serving_in_process(await backend.open()) as r:
        yield r


async def test_a_booking_is_one_message_per_recipient(relay: Relay) -> None:
    alice = author("alice")
    ta, tb = await relay.connect("alice"), await relay.connect("bob")
    await relay.subscribe(ta)
    await relay.subscribe(tb)
    res, update = alice.book(Replica(alice.client_id()), DOC, "s1", 2)
    await ta.inbox.put(ClientUpdate(DOC, 1, update).to_wire())
    mine = await ta.next()
    theirs = await tb.next()
    # The sender: its ack and the stamps (seq and seq + 1). Everyone else: the update and the stamps.
    assert isinstance(mine, Stamped) and mine.uid == 1 and mine.update is None and mine.seq == 1
    assert [rid for _, rid in mine.stamps] == [res.id]
    assert isinstance(theirs, Stamped) and theirs.uid is None and theirs.update == update
    assert (theirs.seq, theirs.stamp, theirs.stamps) == (mine.seq, mine.stamp, mine.stamps)
    replica = Replica(alice.client_id())
    replica.apply_update(update)
    replica.apply_update(mine.stamp)
    assert len(replica.keys("stamps")) == 1
    await asyncio.sleep(0.05)
    assert ta.sent.empty() and tb.sent.empty()  # nothing else: no separate ack or stamp


async def test_welcome_announces_the_inflight_bound(relay: Relay) -> None:
    transport = QueueTransport()
    relay.tasks.append(asyncio.create_task(relay.hub.serve(transport, "user:carol")))
    welcome = await transport.next()
    assert isinstance(welcome, Welcome) and welcome.limits[Limit.MAX_INFLIGHT] == 8


async def test_pipelined_updates_share_commits_and_are_acked_in_order(relay: Relay) -> None:
    alice = author("alice")
    ta = await relay.connect("alice")
    await relay.subscribe(ta)
    replica = Replica(alice.client_id())
    updates = [alice.book(replica, DOC, f"s{i + 1}", 1)[1] for i in range(40)]
    for uid, update in enumerate(updates, start=1):
        await ta.inbox.put(ClientUpdate(DOC, uid, update).to_wire())
    answers = [await ta.next() for _ in updates]
    assert all(isinstance(a, Stamped) for a in answers), answers[:3]
    assert [a.uid for a in answers] == list(range(1, 41))
    # Each booking is stored as seq and its stamps as seq + 1, in the order they were sent.
    assert [a.seq for a in answers] == list(range(1, 80, 2))
    assert sorted(n for a in answers for n, _ in a.stamps) == list(range(1, 41))
    stats = await relay.store.stats()
    assert stats.appends == 40 and stats.commits < 40  # they shared group commits


async def test_backpressure_stops_reading_at_the_inflight_bound(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = author("alice")
    ta = await relay.connect("alice")
    await relay.subscribe(ta)
    gate = asyncio.Event()
    real = relay.store._transaction

    async def held(batch: list[Any]) -> list[Any]:
        await gate.wait()
        return await real(batch)

    monkeypatch.setattr(relay.store, "_transaction", held)
    replica = Replica(alice.client_id())
    updates = [alice.book(replica, DOC, f"s{i + 1}", 1)[1] for i in range(20)]
    for uid, update in enumerate(updates, start=1):
        await ta.inbox.put(ClientUpdate(DOC, uid, update).to_wire())
    await asyncio.sleep(0.3)
    try:
        # 8 ordered and unanswered (the bound): the loop read exactly those and waits.
        assert len(updates) - ta.inbox.qsize() == 8
        assert ta.sent.empty()  # nothing acknowledged before it is durable
    finally:
        gate.set()
    answers = [await ta.next() for _ in updates]
    assert [a.uid for a in answers] == list(range(1, 21))
    assert all(isinstance(a, Stamped) for a in answers)


async def test_a_failed_commit_answers_its_update_with_a_retryable_error(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = author("alice")
    ta = await relay.connect("alice")
    await relay.subscribe(ta)
    real = relay.store._transaction
    fail = {"on": True}

    async def flaky(batch: list[Any]) -> list[Any]:
        if fail["on"]:
            raise OSError("disk full (simulated)")
        return await real(batch)

    monkeypatch.setattr(relay.store, "_transaction", flaky)
    replica = Replica(alice.client_id())
    _, update = alice.book(replica, DOC, "s1", 1)
    await ta.inbox.put(ClientUpdate(DOC, 1, update).to_wire())
    answer = await ta.next()
    assert isinstance(answer, ErrorMessage) and answer.uid == 1 and answer.code == "internal" and answer.retry
    fail["on"] = False
    await ta.inbox.put(ClientUpdate(DOC, 2, update).to_wire())  # the re-send is stored this time
    again = await ta.next()
    assert isinstance(again, Stamped) and again.uid == 2


async def test_a_resend_is_acked_after_what_it_repeats_is_durable(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = author("alice")
    ta = await relay.connect("alice")
    await relay.subscribe(ta)
    gate = asyncio.Event()
    real = relay.store._transaction

    async def held(batch: list[Any]) -> list[Any]:
        await gate.wait()
        return await real(batch)

    monkeypatch.setattr(relay.store, "_transaction", held)
    _, update = alice.book(Replica(alice.client_id()), DOC, "s1", 1)
    await ta.inbox.put(ClientUpdate(DOC, 1, update).to_wire())
    await ta.inbox.put(ClientUpdate(DOC, 2, update).to_wire())  # a re-send while the first commits
    await asyncio.sleep(0.2)
    try:
        assert ta.sent.empty()
    finally:
        gate.set()
    first, second = await ta.next(), await ta.next()
    assert isinstance(first, Stamped) and first.uid == 1
    assert isinstance(second, Ack) and second.uid == 2 and second.seq >= first.seq
