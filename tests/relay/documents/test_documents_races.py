"""Race regressions of the loaded-document manager, each interleaving forced with events.

Each test names the bug it guards against (y-websocket and Hocuspocus shipped each of them):
double load, an update applied to a copy that is being replaced, an unload that drops or misses
an in-flight write, a reader shown data that is not durable. ``GatedStore`` wraps the real SQLite
store and can hold loads and commits, so a test decides exactly when each one finishes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.documents.results import StampSequence
from relay.store import (
    AppendResult,
    CompactionResult,
    DocumentStore,
    SQLiteDocumentStore,
    StoredDocument,
    StoreError,
    StoreStats,
)


@dataclass
class _Held:
    doc_id: str
    updates: list[bytes]
    stamp_base: int | None
    stamp_count: int
    outer: asyncio.Future[AppendResult]


@dataclass
class GatedStore:
    """A :class:`DocumentStore` around the real one that can hold loads and appends."""

    inner: SQLiteDocumentStore
    load_calls: int = 0
    load_gate: asyncio.Event | None = None
    load_started: asyncio.Event = field(default_factory=asyncio.Event)
    holding: bool = False
    held: list[_Held] = field(default_factory=list)
    appended: asyncio.Event = field(default_factory=asyncio.Event)
    held_more: asyncio.Event = field(default_factory=asyncio.Event)
    fail_next: int = 0

    async def wait_held(self, count: int) -> None:
        """Wait (on an event, not a timer) until ``count`` appends are being held."""
        while len(self.held) < count:
            self.held_more.clear()
            await asyncio.wait_for(self.held_more.wait(), timeout=10)

    @property
    def epoch(self) -> str:
        return self.inner.epoch

    async def load(self, doc_id: str) -> StoredDocument:
        self.load_calls += 1
        self.load_started.set()
        if self.load_gate is not None:
            await self.load_gate.wait()
        return await self.inner.load(doc_id)

    def enqueue_append(
        self, doc_id: str, updates: Sequence[bytes], *, stamp_base: int | None = None, stamp_count: int = 0
    ) -> asyncio.Future[AppendResult]:
        self.appended.set()
        if self.fail_next:
            self.fail_next -= 1
            failed: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            failed.set_exception(StoreError("disk full (simulated)"))
            return failed
        if not self.holding:
            return self.inner.enqueue_append(doc_id, updates, stamp_base=stamp_base, stamp_count=stamp_count)
        outer: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self.held.append(_Held(doc_id, list(updates), stamp_base, stamp_count, outer))
        self.held_more.set()
        return outer

    def release(self, *, fail: bool = False) -> None:
        """Order the held appends into the real store (in order), or fail them all."""
        self.holding = False
        held, self.held = self.held, []
        for h in held:
            if fail:
                h.outer.set_exception(StoreError("commit failed (simulated)"))
                continue
            inner = self.inner.enqueue_append(
                h.doc_id, h.updates, stamp_base=h.stamp_base, stamp_count=h.stamp_count
            )
            inner.add_done_callback(functools.partial(_chain, outer=h.outer))

    async def append(
        self, doc_id: str, updates: Sequence[bytes], *, stamp_base: int | None = None, stamp_count: int = 0
    ) -> AppendResult:
        return await self.enqueue_append(doc_id, updates, stamp_base=stamp_base, stamp_count=stamp_count)

    def enqueue_stamp_floor(self, doc_id: str, next_stamp: int) -> asyncio.Future[int]:
        return self.inner.enqueue_stamp_floor(doc_id, next_stamp)

    async def set_stamp_floor(self, doc_id: str, next_stamp: int) -> int:
        return await self.inner.set_stamp_floor(doc_id, next_stamp)

    async def compact(self, doc_id: str) -> CompactionResult | None:
        return await self.inner.compact(doc_id)

    async def compact_all(self) -> list[CompactionResult]:
        return await self.inner.compact_all()

    async def stats(self) -> StoreStats:
        return await self.inner.stats()

    async def close(self) -> None:
        await self.inner.close()


def _chain(inner: asyncio.Future[AppendResult], outer: asyncio.Future[AppendResult]) -> None:
    if inner.exception() is not None:
        outer.set_exception(inner.exception())  # type: ignore[arg-type]
    else:
        outer.set_result(inner.result())


@pytest.fixture
async def gated(tmp_path: Path) -> AsyncIterator[GatedStore]:
    inner = await SQLiteDocumentStore.open(tmp_path)
    store = GatedStore(inner)
    assert isinstance(store, DocumentStore)
    try:
        yield store
    finally:
        if store.load_gate is not None:
            store.load_gate.set()
        store.release()
        await asyncio.wait_for(inner.close(), timeout=10)


@pytest.fixture
async def manager(gated: GatedStore) -> AsyncIterator[DocumentManager]:
    m = DocumentManager(gated)
    try:
        yield m
    finally:
        # Open every gate first, so a failed test fails instead of hanging in teardown.
        if gated.load_gate is not None:
            gated.load_gate.set()
        gated.release()
        await asyncio.wait_for(m.close(), timeout=10)


async def settle() -> None:
    """Let every runnable task run until it blocks (no wall-clock waiting)."""
    for _ in range(20):
        await asyncio.sleep(0)


def keys(manager_doc: dict[str, dict[str, bytes]]) -> set[str]:
    return set(manager_doc.get("m", {}))


async def contents(manager: DocumentManager, doc_id: str) -> set[str]:
    return await manager.read(doc_id, lambda replica, seq: keys(replica.to_py()))


async def stored_keys(store: GatedStore, doc_id: str) -> set[str]:
    stored = await store.inner.load(doc_id)
    replica = Replica()
    if stored.snapshot:
        replica.apply_update(stored.snapshot)
    for _, update in stored.updates:
        replica.apply_update(update)
    return keys(replica.to_py())


# --- loading -----------------------------------------------------------------------------------


async def test_concurrent_first_uses_load_once(gated: GatedStore, manager: DocumentManager) -> None:
    """Bug: two first users each load the document; updates applied to the loser's copy vanish."""
    gated.load_gate = asyncio.Event()
    client = Replica()
    updates = [client.write([("m", f"k{i}", b"v")]) for i in range(5)]
    tasks = [asyncio.ensure_future(manager.apply("d", u)) for u in updates]
    reader = asyncio.ensure_future(contents(manager, "d"))
    await gated.load_started.wait()
    await settle()
    assert gated.load_calls == 1
    assert not any(t.done() for t in tasks)
    gated.load_gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(r.update_seq for r in results) == [1, 2, 3, 4, 5]  # type: ignore[type-var]
    assert gated.load_calls == 1
    await reader
    assert await contents(manager, "d") == {f"k{i}" for i in range(5)}
    assert await stored_keys(gated, "d") == {f"k{i}" for i in range(5)}


async def test_update_arriving_while_loading_waits_and_is_applied_after(
    gated: GatedStore, manager: DocumentManager
) -> None:
    """Bug: an update applied to a half-loaded document is overwritten when the load completes."""
    client = Replica()
    existing = client.write([("m", "old", b"1")])
    await gated.inner.append("d", [existing])
    gated.load_gate = asyncio.Event()
    loading = asyncio.ensure_future(manager.state_vector("d"))
    await gated.load_started.wait()
    update = asyncio.ensure_future(manager.apply("d", client.write([("m", "new", b"2")])))
    await settle()
    assert not update.done() and not gated.appended.is_set()  # it waits for the load
    gated.load_gate.set()
    assert (await update).update_seq == 2
    await loading
    assert await contents(manager, "d") == {"old", "new"}
    assert gated.load_calls == 1


async def test_failed_load_is_retried_by_the_next_user(gated: GatedStore, manager: DocumentManager) -> None:
    gated.load_gate = asyncio.Event()
    first = asyncio.ensure_future(manager.state_vector("d"))
    await gated.load_started.wait()
    first.cancel()  # the loader goes away mid-load (its connection closed)
    with pytest.raises(asyncio.CancelledError):
        await first
    gated.load_gate.set()
    assert not manager.is_loaded("d")
    assert (await manager.apply("d", Replica().write([("m", "a", b"1")]))).update_seq == 1
    assert gated.load_calls == 2


# --- unloading ---------------------------------------------------------------------------------


async def test_unload_waits_for_an_inflight_commit_so_the_next_load_sees_it(
    gated: GatedStore, manager: DocumentManager
) -> None:
    """Bug: unloading while a write is in flight; the reload reads the store before the write lands."""
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    gated.holding = True
    writing = asyncio.ensure_future(manager.apply("d", client.write([("m", "b", b"2")])))
    await gated.wait_held(1)
    unloading = asyncio.ensure_future(manager.unload("d", force=True))
    await settle()
    assert not unloading.done(), "unload did not wait for the in-flight commit"
    assert manager.is_loaded("d")
    gated.release()
    assert await unloading is True
    assert (await writing).update_seq == 2
    assert not manager.is_loaded("d")
    assert await contents(manager, "d") == {"a", "b"}  # reloaded from the store
    assert gated.load_calls == 2


async def test_update_accepted_after_the_unload_decision_is_not_dropped(
    gated: GatedStore, manager: DocumentManager
) -> None:
    """Bug: an update lands on the copy being unloaded (after its final save) and is lost."""
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    gated.holding = True
    inflight = asyncio.ensure_future(manager.apply("d", client.write([("m", "b", b"2")])))
    await gated.wait_held(1)
    unloading = asyncio.ensure_future(manager.unload("d", force=True))  # decided; now draining
    await settle()
    late = asyncio.ensure_future(manager.apply("d", client.write([("m", "c", b"3")])))
    await settle()
    assert not late.done() and len(gated.held) == 1  # it waits for the unload to finish
    gated.release()
    assert await unloading is True
    assert (await inflight).update_seq == 2
    assert (await late).update_seq == 3  # applied to a fresh load, after the unload
    assert gated.load_calls == 2
    assert manager.is_loaded("d")
    assert await contents(manager, "d") == {"a", "b", "c"}
    assert await stored_keys(gated, "d") == {"a", "b", "c"}


async def test_idle_unload_gives_up_on_a_document_used_after_the_decision(
    gated: GatedStore, tmp_path: Path
) -> None:
    now = [0.0]
    manager = DocumentManager(gated, idle_seconds=10, clock=lambda: now[0])
    client = Replica()
    await manager.apply("a", client.write([("m", "a1", b"1")]))
    await manager.apply("b", client.write([("m", "b1", b"1")]))
    gated.holding = True
    slow = asyncio.ensure_future(manager.apply("a", client.write([("m", "a2", b"2")])))
    await gated.wait_held(1)
    now[0] = 100.0  # both documents look idle; "a" still has a commit in flight
    sweeping = asyncio.ensure_future(manager.unload_idle())
    await settle()  # the sweep decided on [a, b] and is draining "a"
    used = asyncio.ensure_future(manager.apply("b", client.write([("m", "b2", b"2")])))
    await gated.wait_held(2)
    gated.release()
    assert await sweeping == 1  # "a" went; "b" was used after the decision and stays
    await slow
    await used
    assert not manager.is_loaded("a") and manager.is_loaded("b")
    assert await contents(manager, "b") == {"b1", "b2"}
    assert await contents(manager, "a") == {"a1", "a2"}
    await manager.close()


async def test_pin_taken_while_an_unload_drains_keeps_the_document(
    gated: GatedStore, manager: DocumentManager
) -> None:
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    gated.holding = True
    writing = asyncio.ensure_future(manager.apply("d", client.write([("m", "b", b"2")])))
    await gated.wait_held(1)
    unloading = asyncio.ensure_future(manager.unload("d"))
    await settle()
    pin = manager.pin("d")  # a subscriber arrives during the drain
    gated.release()
    assert await unloading is False
    await writing
    assert manager.is_loaded("d") and gated.load_calls == 1
    pin.release()


# --- durability barrier and failures -----------------------------------------------------------


async def test_readers_never_see_an_update_before_it_is_durable(
    gated: GatedStore, manager: DocumentManager
) -> None:
    """Bug: catch-up served from memory includes a write that a crash then loses (or a stamp reused)."""
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    gated.holding = True
    writing = asyncio.ensure_future(manager.apply("d", client.write([("m", "b", b"2")])))
    await gated.wait_held(1)
    catching_up = asyncio.ensure_future(manager.diff("d", b"\x00"))
    await settle()
    assert not catching_up.done()
    gated.release()
    update, seq = await catching_up
    assert seq == 2
    peer = Replica()
    peer.apply_update(update)
    assert keys(peer.to_py()) == {"a", "b"}
    await writing


async def test_a_resend_is_acknowledged_only_once_the_original_is_durable(
    gated: GatedStore, manager: DocumentManager
) -> None:
    update = Replica().write([("m", "a", b"1")])
    await manager.state_vector("d")
    gated.holding = True
    original = asyncio.ensure_future(manager.apply("d", update))
    await gated.wait_held(1)
    resend = asyncio.ensure_future(manager.apply("d", update))
    await settle()
    assert not resend.done(), "a re-send was acknowledged before the data it repeats was durable"
    gated.release()
    first, again = await original, await resend
    assert (first.update_seq, again.update_seq, again.seq, again.noop) == (1, None, 1, True)
    assert (await gated.inner.load("d")).seq == 1  # no log row for the re-send


async def test_a_resend_fails_if_the_original_commit_failed(
    gated: GatedStore, manager: DocumentManager
) -> None:
    update = Replica().write([("m", "a", b"1")])
    await manager.state_vector("d")
    gated.holding = True
    original = asyncio.ensure_future(manager.apply("d", update))
    await gated.wait_held(1)
    resend = asyncio.ensure_future(manager.apply("d", update))
    await settle()
    gated.release(fail=True)
    with pytest.raises(StoreError):
        await original
    with pytest.raises(StoreError):
        await resend
    # Memory was reloaded from the store, so a third send is new again and gets stored.
    third = await manager.apply("d", update)
    assert (third.update_seq, third.noop) == (1, False)
    assert manager.stats().reloads_after_failure == 1


async def test_a_failed_commit_does_not_stay_in_memory(gated: GatedStore, manager: DocumentManager) -> None:
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    gated.fail_next = 1
    with pytest.raises(StoreError):
        await manager.apply("d", client.write([("m", "lost", b"x")]))
    assert await contents(manager, "d") == {"a"}  # not {"a", "lost"}: memory follows the disk
    assert gated.load_calls == 2


async def test_stamps_after_a_failed_commit_reuse_no_number(
    gated: GatedStore, manager: DocumentManager
) -> None:
    """Pipelined stamped updates behind a failed one must not store a number out of sequence."""

    def stamp(replica: Replica, key: str, stamps: StampSequence) -> bytes:
        return replica.write([("stamps", key, str(stamps.next()).encode())])

    client = Replica()
    await manager.state_vector("d")  # loaded, so nothing below waits for real I/O
    gated.holding = True
    u1 = client.write([("m", "c1", b"1")])
    u2 = client.write([("m", "c2", b"2")])
    first = asyncio.ensure_future(manager.submit("d", u1, lambda r, u: "c1", stamp))
    await gated.wait_held(1)
    second = asyncio.ensure_future(manager.submit("d", u2, lambda r, u: "c2", stamp))
    await gated.wait_held(2)
    assert [h.stamp_base for h in gated.held] == [1, 2]
    held = gated.held
    gated.held = []
    gated.holding = False
    held[0].outer.set_exception(StoreError("commit failed (simulated)"))
    inner = gated.inner.enqueue_append(
        held[1].doc_id, held[1].updates, stamp_base=held[1].stamp_base, stamp_count=held[1].stamp_count
    )
    inner.add_done_callback(lambda f: _chain(f, held[1].outer))
    with pytest.raises(StoreError):
        await first
    with pytest.raises(StoreError):  # stamp 2 without stamp 1 is refused by the store
        await second
    stored = await gated.inner.load("d")
    assert (stored.seq, stored.next_stamp) == (0, 1)
    retry = await manager.submit("d", u2, lambda r, u: "c2", stamp)
    assert retry.stamps == range(1, 2)
