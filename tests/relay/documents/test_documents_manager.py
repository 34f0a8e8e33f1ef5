"""The loaded-document manager: submit (check, apply, stamp, store), no-ops, catch-up, pins, memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crdt_core.engine import EngineError, Replica
from relay.documents.manager import DocumentManager
from relay.documents.results import Applied, CapacityError, ManagerClosedError, StampSequence
from relay.store import SQLiteDocumentStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteDocumentStore]:
    s = await SQLiteDocumentStore.open(tmp_path)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def manager(store: SQLiteDocumentStore) -> AsyncIterator[DocumentManager]:
    m = DocumentManager(store)
    try:
        yield m
    finally:
        await m.close()


async def stored_doc(store: SQLiteDocumentStore, doc_id: str) -> dict[str, dict[str, bytes]]:
    stored = await store.load(doc_id)
    replica = Replica()
    if stored.snapshot:
        replica.apply_update(stored.snapshot)
    for _, update in stored.updates:
        replica.apply_update(update)
    return replica.to_py()


async def in_memory(manager: DocumentManager, doc_id: str) -> dict[str, dict[str, bytes]]:
    return await manager.read(doc_id, lambda replica, seq: replica.to_py())


# The booking flow in miniature: a claim is a key in "claims"; the relay stamps each new claim
# with the next stamp number, in the same transaction.


def claim_key(replica: Replica, update: bytes) -> str:
    """The check: which claim does this update add? (Refuses updates that add none.)"""
    probe = replica.copy()
    before = probe.keys("claims")
    probe.apply_update(update)
    added = probe.keys("claims") - before
    if len(added) != 1:
        raise ValueError("an update must add exactly one claim")
    return added.pop()


def stamp_claim(replica: Replica, key: str, stamps: StampSequence) -> bytes:
    return replica.write([("stamps", key, str(stamps.next()).encode())])


def highest_stamp(replica: Replica) -> int:
    return max((int(v) for _, v in replica.items("stamps")), default=0)


# --- submit ------------------------------------------------------------------------------------


async def test_apply_stores_durably_and_returns_the_seq(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    client = Replica()
    first = await manager.apply("d", client.write([("m", "a", b"1")]))
    second = await manager.apply("d", client.write([("m", "b", b"2")]))
    assert (first.update_seq, first.seq, second.update_seq, second.seq) == (1, 1, 2, 2)
    assert not first.noop
    assert await stored_doc(store, "d") == {"m": {"a": b"1", "b": b"2"}}
    assert await in_memory(manager, "d") == {"m": {"a": b"1", "b": b"2"}}


async def test_a_resend_is_a_noop_without_a_log_row(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    client = Replica()
    update = client.write([("m", "a", b"1")])
    await manager.apply("d", update)
    await manager.apply("d", client.write([("m", "b", b"2")]))
    again = await manager.apply("d", update)
    assert (again.noop, again.update_seq, again.seq) == (True, None, 2)
    assert (await store.load("d")).seq == 2
    assert manager.stats().noops == 1


async def test_a_resend_is_not_checked_again(manager: DocumentManager) -> None:
    update = Replica().write([("claims", "r1", b"c")])
    await manager.submit("d", update, claim_key, stamp_claim)
    again = await manager.submit("d", update, claim_key, stamp_claim)  # claim_key would refuse it
    assert again.noop and again.stamps == range(0)


async def test_an_update_partly_new_is_stored_whole(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    client = Replica()
    one = client.write([("m", "a", b"1")])
    await manager.apply("d", one)
    client.write([("m", "b", b"2")])
    both = client.encode_state()  # "a" (already there) and "b" (new)
    result = await manager.apply("d", both)
    assert result.update_seq == 2
    assert await stored_doc(store, "d") == {"m": {"a": b"1", "b": b"2"}}


async def test_out_of_order_update_is_stored_not_mistaken_for_a_noop(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    """An update whose dependencies are missing does not move the state vector, yet it is new."""
    client = Replica()
    writes = [client.write([("m", f"k{i}", b"v")]) for i in range(3)]
    await manager.apply("d", writes[2])
    await manager.apply("d", writes[0])
    await manager.apply("d", writes[1])
    assert (await store.load("d")).seq == 3
    assert set((await stored_doc(store, "d"))["m"]) == {"k0", "k1", "k2"}


async def test_a_resent_parked_update_is_a_noop_even_after_reload(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    """A parked update does not move the state vector: re-sends are recognised by digest instead."""
    client = Replica()
    first = client.write([("m", "k0", b"v")])
    parked = client.write([("m", "k1", b"v")])
    assert (await manager.apply("d", parked)).update_seq == 1  # its dependency has not arrived
    assert (await manager.apply("d", parked)).noop
    assert await manager.unload("d")
    assert (await manager.apply("d", parked)).noop  # digests are rebuilt while loading
    assert (await manager.apply("d", first)).update_seq == 2
    assert (await manager.apply("d", parked)).noop  # now integrated: the diff rule says so
    assert (await store.load("d")).seq == 2


async def test_engine_refusal_stores_nothing_and_leaves_the_document(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    client = Replica()
    await manager.apply("d", client.write([("m", "a", b"1")]))
    for garbage in (b"\xff" * 40, b"\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", b""):
        with pytest.raises(EngineError):
            await manager.apply("d", garbage)
    with pytest.raises(EngineError):
        await manager.apply("d", "not bytes")  # type: ignore[arg-type]
    assert (await store.load("d")).seq == 1
    assert await in_memory(manager, "d") == {"m": {"a": b"1"}}
    assert (await manager.apply("d", client.write([("m", "b", b"2")]))).update_seq == 2


async def test_a_refused_check_applies_nothing(manager: DocumentManager, store: SQLiteDocumentStore) -> None:
    client = Replica()
    no_claim = client.write([("m", "x", b"1")])
    with pytest.raises(ValueError, match="exactly one claim"):
        await manager.submit("d", no_claim, claim_key, stamp_claim)
    assert await in_memory(manager, "d") == {}
    assert (await store.load("d")).seq == 0


async def test_claims_are_stamped_in_the_same_transaction(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    update = Replica().write([("claims", "r1", b"claim")])
    result = await manager.submit("d", update, claim_key, stamp_claim)
    assert (result.update_seq, result.extra_seq, result.seq) == (1, 2, 2)
    assert result.stamps == range(1, 2)
    assert result.checked == "r1"
    assert result.extra is not None
    doc = await stored_doc(store, "d")
    assert doc["stamps"] == {"r1": b"1"}
    assert (await store.load("d")).next_stamp == 2
    # What the relay forwards (update + extra) brings a subscriber to the same state.
    subscriber = Replica()
    subscriber.apply_update(update)
    subscriber.apply_update(result.extra)
    assert subscriber.to_py() == doc


async def test_concurrent_claims_get_gap_free_stamps_in_few_commits(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    clients = [Replica() for _ in range(100)]
    results = await asyncio.gather(
        *(
            manager.submit("d", c.write([("claims", f"r{i}", b"c")]), claim_key, stamp_claim)
            for i, c in enumerate(clients)
        )
    )
    assert sorted(r.stamps.start for r in results) == list(range(1, 101))
    seqs = sorted(s for r in results for s in (r.update_seq, r.extra_seq) if s is not None)
    assert seqs == list(range(1, 201))
    assert all(r.extra_seq == r.update_seq + 1 for r in results if r.update_seq is not None)
    doc = await stored_doc(store, "d")
    assert sorted(int(v) for v in doc["stamps"].values()) == list(range(1, 101))
    assert {r.checked: str(r.stamps.start).encode() for r in results} == doc["stamps"]
    assert (await store.stats()).commits < 60  # pipelined: one document's updates share commits


async def test_stamping_continues_after_reload(manager: DocumentManager) -> None:
    await manager.submit("d", Replica().write([("claims", "a", b"c")]), claim_key, stamp_claim)
    assert await manager.unload("d")
    result = await manager.submit("d", Replica().write([("claims", "b", b"c")]), claim_key, stamp_claim)
    assert result.stamps == range(2, 3)


async def test_restored_relay_continues_after_the_highest_stamp_in_the_document(
    store: SQLiteDocumentStore,
) -> None:
    # A backup restored from before stamp 7 was counted: the document (merged back from clients)
    # holds stamps up to 7, the store's counter says 1.
    relay = Replica()
    await store.append("d", [relay.write([("stamps", f"old{i}", str(i).encode()) for i in range(1, 8)])])
    assert (await store.load("d")).next_stamp == 1
    manager = DocumentManager(store, highest_stamp=highest_stamp)
    result = await manager.submit("d", Replica().write([("claims", "new", b"c")]), claim_key, stamp_claim)
    assert result.stamps == range(8, 9)
    assert (await store.load("d")).next_stamp == 9
    await manager.close()


async def test_build_extra_must_return_the_update_for_its_stamps(
    manager: DocumentManager, store: SQLiteDocumentStore
) -> None:
    def forgets(replica: Replica, key: str, stamps: StampSequence) -> bytes | None:
        stamps.next()
        return None

    with pytest.raises(ValueError, match="stamp numbers"):
        await manager.submit("d", Replica().write([("claims", "a", b"c")]), claim_key, forgets)
    assert (await store.load("d")).seq == 0
    assert await in_memory(manager, "d") == {}  # the applied claim was dropped with the reload
    ok = await manager.submit("d", Replica().write([("claims", "a", b"c")]), claim_key, stamp_claim)
    assert ok.stamps == range(1, 2)


async def test_stamp_numbers_cannot_be_taken_after_build_extra(manager: DocumentManager) -> None:
    kept: list[StampSequence] = []

    def keeps(replica: Replica, key: str, stamps: StampSequence) -> bytes:
        kept.append(stamps)
        return stamp_claim(replica, key, stamps)

    await manager.submit("d", Replica().write([("claims", "a", b"c")]), claim_key, keeps)
    with pytest.raises(RuntimeError):
        kept[0].next()


# --- catch-up ----------------------------------------------------------------------------------


async def test_catch_up_returns_exactly_the_missing_diff(manager: DocumentManager) -> None:
    author = Replica()
    updates = [author.write([("m", f"k{i}", bytes([i]))]) for i in range(10)]
    for update in updates:
        await manager.apply("d", update)
    peer = Replica()
    for update in updates[:4]:
        peer.apply_update(update)
    diff, seq = await manager.diff("d", peer.state_vector())
    assert seq == 10
    peer.apply_update(diff)
    assert peer.to_py() == await in_memory(manager, "d")
    full_sv, sv_seq = await manager.state_vector("d")
    assert sv_seq == 10 and full_sv == peer.state_vector()
    nothing, _ = await manager.diff("d", peer.state_vector())
    bystander = Replica()
    bystander.apply_update(nothing)
    assert bystander.to_py() == {}  # nothing the peer already has is sent again
    assert len(nothing) < len(diff)
    with pytest.raises(EngineError):
        await manager.diff("d", b"\xff\xff\xff")


# --- pins, idle unloading, memory bounds --------------------------------------------------------


async def test_idle_documents_unload_unless_pinned(store: SQLiteDocumentStore) -> None:
    now = [0.0]
    manager = DocumentManager(store, idle_seconds=60, clock=lambda: now[0])
    client = Replica()
    for doc in ("a", "b", "c"):
        await manager.apply(doc, client.write([("m", doc, b"v")]))
    pin = manager.pin("b")
    now[0] = 30.0
    await manager.apply("c", client.write([("m", "c2", b"v")]))
    now[0] = 70.0
    assert await manager.unload_idle() == 1  # "a"; "b" is pinned, "c" was used at 30
    assert [manager.is_loaded(d) for d in "abc"] == [False, True, True]
    now[0] = 200.0
    pin.release()  # the idle time restarts when the last subscriber leaves
    assert await manager.unload_idle() == 1  # "c"
    assert manager.is_loaded("b")
    now[0] = 260.0
    assert await manager.unload_idle() == 1
    assert manager.loaded_count == 0 and manager.loaded_bytes == 0
    assert (await in_memory(manager, "a"))["m"] == {"a": b"v"}  # reload from the store
    await manager.close()


async def test_background_sweeper_unloads(store: SQLiteDocumentStore) -> None:
    async with DocumentManager(store, idle_seconds=0, sweep_interval=0.01) as manager:
        await manager.apply("d", Replica().write([("m", "a", b"1")]))
        for _ in range(500):
            if not manager.is_loaded("d"):
                break
            await asyncio.sleep(0.01)
        assert not manager.is_loaded("d")


async def test_document_count_is_bounded_by_evicting_the_least_recently_used(
    store: SQLiteDocumentStore,
) -> None:
    now = [0.0]
    manager = DocumentManager(store, max_documents=3, capacity_wait=0, clock=lambda: now[0])
    client = Replica()
    for i in range(6):
        now[0] = float(i)
        await manager.apply(f"d{i}", client.write([("m", f"k{i}", b"v")]))
        assert manager.loaded_count <= 3
    assert [manager.is_loaded(f"d{i}") for i in range(6)] == [False] * 3 + [True] * 3
    assert manager.stats().evictions == 3
    pins = [manager.pin(f"d{i}") for i in range(3, 6)]
    with pytest.raises(CapacityError):
        await manager.state_vector("d0")  # every loaded document is pinned: refuse, do not grow
    pins[0].release()
    await manager.state_vector("d0")
    assert not manager.is_loaded("d3") and manager.loaded_count == 3
    for pin in pins:
        pin.release()
    await manager.close()


async def test_a_burst_waits_for_room_instead_of_failing(store: SQLiteDocumentStore) -> None:
    manager = DocumentManager(store, max_documents=2, capacity_wait=30)
    clients = [Replica() for _ in range(10)]
    results = await asyncio.gather(
        *(manager.apply(f"d{i % 5}", c.write([("m", f"k{i}", b"v")])) for i, c in enumerate(clients))
    )
    assert sorted(r.update_seq for r in results) == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]  # type: ignore[type-var]
    assert manager.loaded_count <= 2
    await manager.close()


async def test_loaded_bytes_are_bounded(store: SQLiteDocumentStore) -> None:
    manager = DocumentManager(store, max_bytes=10_000)
    client = Replica()
    for i in range(20):
        await manager.apply(f"d{i}", client.write([("m", "blob", bytes(3000))]))
        await asyncio.gather(*manager._background)
        assert manager.loaded_bytes <= 10_000 + 3100
    assert manager.loaded_count <= 4
    stats = manager.stats()
    assert stats.loaded_bytes == manager.loaded_bytes and stats.evictions >= 16
    await manager.close()


async def test_forced_unload_of_a_pinned_document_keeps_the_pin(manager: DocumentManager) -> None:
    await manager.apply("d", Replica().write([("m", "a", b"1")]))
    pin = manager.pin("d")
    assert await manager.unload("d") is False
    assert await manager.unload("d", force=True) is True
    assert manager.stats().pinned == 1
    await manager.state_vector("d")
    assert await manager.unload("d") is False
    pin.release()
    pin.release()  # idempotent
    assert manager.stats().pinned == 0


async def test_closed_manager_refuses_work(store: SQLiteDocumentStore) -> None:
    manager = DocumentManager(store)
    await manager.apply("d", Replica().write([("m", "a", b"1")]))
    await manager.close()
    with pytest.raises(ManagerClosedError):
        await manager.apply("d", Replica().write([("m", "b", b"1")]))


def test_applied_is_typed_by_the_check() -> None:
    applied: Applied[str] = Applied(doc_id="d", seq=1, update_seq=1, checked="r1")
    assert applied.checked == "r1" and not applied.noop


async def test_the_relay_writes_under_its_writer_id_and_follows_a_change_of_it(
    manager: DocumentManager,
) -> None:
    """The hub sets ``writer_id`` (the relay's Yjs id for its current key): a loaded replica
    writes under it, and after a key rotation changes it, the replica is re-opened under the new
    id before the relay writes again, keeping everything it held."""
    ids = iter([1111, 1111, 2222, 2222])
    manager.writer_id = lambda: next(ids)
    writers: list[int] = []

    def stamp_recording(replica: Replica, checked: str, stamps: StampSequence) -> bytes:
        writers.append(replica.client_id)
        return stamp_claim(replica, checked, stamps)

    await manager.submit("d", Replica().write([("claims", "r1", b"c")]), claim_key, stamp_recording)
    await manager.submit("d", Replica().write([("claims", "r2", b"c")]), claim_key, stamp_recording)
    assert writers == [1111, 2222]
    doc = await in_memory(manager, "d")
    assert set(doc["claims"]) == {"r1", "r2"} and set(doc["stamps"]) == {"r1", "r2"}
