"""The document store contract (relay/store/base.py), run against SQLite and PostgreSQL alike.

Every test here runs twice through the parametrized ``backend`` fixture: on the embedded SQLite
store (temporary data directory) and on the PostgreSQL store (a fresh database on a real server
this worker started). Backend-specific behaviour is tested in ``test_store_sqlite.py`` and
``test_store_postgres.py``.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.store import (
    FIRST_STAMP,
    DocumentStore,
    StampConflictError,
    StoreClosedError,
    StoreError,
    should_compact,
)
from relay.store.open import AnyDocumentStore
from tests.relay.store_backends import BACKENDS, StoreBackend, backend_fixture, committed_seqs


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    async for b in backend_fixture(request, tmp_path):
        yield b


@pytest.fixture
async def store(backend: StoreBackend) -> AnyDocumentStore:
    return await backend.open()


def loaded_state(snapshot: bytes | None, updates: tuple[tuple[int, bytes], ...]) -> dict[str, bytes]:
    replica = Replica()
    if snapshot is not None:
        replica.apply_update(snapshot)
    for _, update in updates:
        replica.apply_update(update)
    return replica.to_py().get("m", {})


async def doc_contents(store: AnyDocumentStore, doc_id: str) -> dict[str, bytes]:
    stored = await store.load(doc_id)
    return loaded_state(stored.snapshot, stored.updates)


async def test_store_keeps_the_protocol_and_its_epoch_across_reopening(backend: StoreBackend) -> None:
    first = await backend.open()
    assert isinstance(first, DocumentStore)
    epoch = first.epoch
    assert epoch
    await first.close()
    again = await backend.open()
    assert again.epoch == epoch


# --- append and load ---------------------------------------------------------------------------


async def test_unknown_document_loads_empty(store: AnyDocumentStore) -> None:
    stored = await store.load("shop:nowhere")
    assert (stored.snapshot, stored.updates, stored.seq, stored.next_stamp) == (None, (), 0, FIRST_STAMP)


async def test_append_assigns_consecutive_seqs_and_load_returns_them(store: AnyDocumentStore) -> None:
    client = Replica()
    u1 = client.write([("m", "a", b"1")])
    u2 = client.write([("m", "b", b"2")])
    u3 = client.write([("m", "c", b"3")])
    assert (await store.append("d", [u1])).seqs == (1,)
    assert (await store.append("d", [u2, u3])).seqs == (2, 3)
    stored = await store.load("d")
    assert stored.seq == 3
    assert [seq for seq, _ in stored.updates] == [1, 2, 3]
    assert loaded_state(stored.snapshot, stored.updates) == {"a": b"1", "b": b"2", "c": b"3"}


async def test_append_rejects_bad_arguments(store: AnyDocumentStore) -> None:
    with pytest.raises(ValueError):
        store.enqueue_append("d", [])
    with pytest.raises(ValueError):
        store.enqueue_append("d", [b""])
    with pytest.raises(ValueError):
        store.enqueue_append("d", b"\x00\x00")  # type: ignore[arg-type]  # one update, not a sequence
    with pytest.raises(ValueError):
        store.enqueue_append("", [b"x"])
    with pytest.raises(ValueError):
        store.enqueue_append("x" * 1000, [b"x"])
    with pytest.raises(ValueError):
        store.enqueue_append("d", [b"x"], stamp_count=2)  # stamps need the expected base


async def test_concurrent_appends_share_few_commits_and_seqs_stay_gap_free(
    store: AnyDocumentStore, backend: StoreBackend
) -> None:
    docs = [f"bookings:s:{i}" for i in range(10)]
    clients = {d: Replica() for d in docs}
    work = [(d, clients[d].write([("m", f"k{i}", b"v")])) for i in range(100) for d in docs]
    random.shuffle(work)

    async def one(doc_id: str, update: bytes) -> tuple[str, int]:
        result = await store.append(doc_id, [update])
        # Durable when it returns: another connection already sees the committed row.
        assert result.seq in await committed_seqs(backend, doc_id)
        return doc_id, result.seq

    results = await asyncio.gather(*(one(d, u) for d, u in work))
    stats = await store.stats()
    assert stats.appends == 1000
    assert stats.commits <= 100, f"{stats.commits} commits for 1000 concurrent appends: no group commit"
    assert stats.largest_batch > 10
    for doc_id in docs:
        seqs = sorted(seq for d, seq in results if d == doc_id)
        assert seqs == list(range(1, 101))
        assert len(await doc_contents(store, doc_id)) == 100


async def test_lone_append_commits_without_waiting_for_company(store: AnyDocumentStore) -> None:
    update = Replica().write([("m", "a", b"1")])
    result = await asyncio.wait_for(store.append("d", [update]), timeout=5)
    assert result.seqs == (1,)
    assert (await store.stats()).commits == 1


async def test_close_commits_everything_already_ordered(backend: StoreBackend) -> None:
    store = await backend.open()
    client = Replica()
    futures = [store.enqueue_append("d", [client.write([("m", f"k{i}", b"v")])]) for i in range(50)]
    await store.close()
    assert [f.result().seq for f in futures] == list(range(1, 51))
    with pytest.raises(StoreClosedError):
        store.enqueue_append("d", [b"\x00\x00"])
    reopened = await backend.open()
    assert len(await doc_contents(reopened, "d")) == 50


async def test_a_failing_request_does_not_fail_its_batch_neighbours(
    store: AnyDocumentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._transaction

    async def flaky(batch: list) -> list:  # type: ignore[type-arg]
        if any(job.doc_id == "poison" for job in batch):
            raise RuntimeError("disk I/O error (simulated)")
        return await real(batch)

    monkeypatch.setattr(store, "_transaction", flaky)
    client = Replica()
    good = [store.enqueue_append("good", [client.write([("m", f"k{i}", b"v")])]) for i in range(5)]
    bad = store.enqueue_append("poison", [b"\x00\x00"])
    more = store.enqueue_append("good", [client.write([("m", "last", b"v")])])
    await asyncio.wait([*good, bad, more])
    assert [f.result().seq for f in good] == [1, 2, 3, 4, 5]
    assert more.result().seq == 6
    with pytest.raises(StoreError, match="simulated"):
        bad.result()
    assert (await store.load("poison")).seq == 0


# --- stamps ------------------------------------------------------------------------------------


async def test_stamps_are_allocated_with_the_update_in_one_transaction(store: AnyDocumentStore) -> None:
    client, relay = Replica(), Replica()
    claim = client.write([("m", "r1", b"claim")])
    stamp = relay.write([("m", "stamp:1", b"r1")])
    result = await store.append("d", [claim, stamp], stamp_base=1, stamp_count=1)
    assert result.seqs == (1, 2)
    assert result.stamps == range(1, 2)
    assert (await store.load("d")).next_stamp == 2
    two = await store.append("d", [client.write([("m", "r2", b"c")])], stamp_base=2, stamp_count=2)
    assert two.stamps == range(2, 4)
    assert (await store.load("d")).next_stamp == 4


async def test_a_stale_stamp_base_stores_nothing(store: AnyDocumentStore) -> None:
    client = Replica()
    await store.append("d", [client.write([("m", "a", b"1")])], stamp_base=1, stamp_count=1)
    with pytest.raises(StampConflictError):
        await store.append("d", [client.write([("m", "b", b"2")])], stamp_base=1, stamp_count=1)
    stored = await store.load("d")
    assert (stored.seq, stored.next_stamp) == (1, 2)
    assert loaded_state(stored.snapshot, stored.updates) == {"a": b"1"}


async def test_concurrent_stamped_appends_are_gap_free(store: AnyDocumentStore) -> None:
    """Callers that track the counter (as the document manager does) pipeline into shared commits."""
    client = Replica()
    futures = []
    for i in range(200):
        futures.append(
            store.enqueue_append("d", [client.write([("m", f"k{i}", b"v")])], stamp_base=1 + i, stamp_count=1)
        )
    results = await asyncio.gather(*futures)
    assert [r.stamps.start for r in results] == list(range(1, 201))
    assert [r.seq for r in results] == list(range(1, 201))
    assert (await store.load("d")).next_stamp == 201
    assert (await store.stats()).commits < 50


async def test_stamp_floor_only_raises(store: AnyDocumentStore) -> None:
    assert await store.set_stamp_floor("d", 10) == 10
    assert await store.set_stamp_floor("d", 5) == 10
    stored = await store.load("d")
    assert (stored.seq, stored.next_stamp) == (0, 10)
    result = await store.append("d", [Replica().write([("m", "a", b"1")])], stamp_base=10, stamp_count=1)
    assert result.stamps == range(10, 11)


# --- compaction --------------------------------------------------------------------------------


def test_compaction_rule_is_bytes_not_count() -> None:
    assert should_compact(log_bytes=101, snapshot_bytes=100)
    assert not should_compact(log_bytes=100, snapshot_bytes=100)
    assert not should_compact(log_bytes=10_000, snapshot_bytes=20_000)  # thousands of rows, still small
    assert should_compact(log_bytes=1, snapshot_bytes=0)
    assert not should_compact(log_bytes=1000, snapshot_bytes=0, min_bytes=4096)


async def test_automatic_compaction_follows_log_versus_snapshot_bytes(backend: StoreBackend) -> None:
    store = await backend.open(compact_min_bytes=0)
    client = Replica()
    big = client.write([("m", "big", os.urandom(2000))])
    await store.append("d", [big])
    await store.wait_idle()
    first = await store.load("d")
    assert first.snapshot is not None and first.updates == () and first.snapshot_seq == 1
    snapshot_bytes = len(first.snapshot)
    # Small updates accumulate in the log until their bytes exceed the snapshot's.
    log_bytes = 0
    seq = 1
    while True:
        update = client.write([("m", f"k{seq}", os.urandom(100))])
        seq = (await store.append("d", [update])).seq
        log_bytes += len(update)
        await store.wait_idle()
        stored = await store.load("d")
        if log_bytes <= snapshot_bytes:
            assert stored.snapshot_seq == 1, "compacted before the log outgrew the snapshot"
            assert len(stored.updates) == seq - 1
        else:
            assert stored.snapshot_seq == seq and stored.updates == ()
            break
    assert seq > 10  # many rows were kept: the rule is not a row count
    assert len(await doc_contents(store, "d")) == seq


async def test_minimum_bytes_spares_small_documents(backend: StoreBackend) -> None:
    store = await backend.open(compact_min_bytes=64 * 1024)
    client = Replica()
    for i in range(50):
        await store.append("d", [client.write([("m", f"k{i}", b"v")])])
    await store.wait_idle()
    stats = await store.stats()
    assert (stats.compactions, stats.log_rows) == (0, 50)


async def test_compact_all_and_stats(store: AnyDocumentStore) -> None:
    for doc in ("a", "b", "c"):
        client = Replica()
        for i in range(20):
            await store.append(doc, [client.write([("m", f"k{i}", b"v" * 30)])])
    before = await store.stats()
    assert (before.documents, before.log_rows, before.snapshot_bytes) == (3, 60, 0)
    results = await store.compact_all()
    assert sorted(r.doc_id for r in results) == ["a", "b", "c"]
    assert all(r.covered_seq == 20 and r.removed_rows == 20 for r in results)
    after = await store.stats()
    assert (after.log_rows, after.log_bytes) == (0, 0)
    assert after.snapshot_bytes == sum(r.snapshot_bytes for r in results)
    assert await store.compact("a") is None  # nothing left to fold
    for doc in ("a", "b", "c"):
        assert len(await doc_contents(store, doc)) == 20


async def test_compaction_under_concurrent_appends_loses_nothing(backend: StoreBackend) -> None:
    store = await backend.open(compact_min_bytes=0)
    acked: dict[str, set[str]] = {"hot": set(), "warm": set()}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        client = Replica()
        for i in range(60):
            doc = "hot" if i % 3 else "warm"
            key = f"w{w}-{i}"
            await store.append(doc, [client.write([("m", key, os.urandom(20))])])
            acked[doc].add(key)

    async def compactor() -> None:
        while not stop.is_set():
            await store.compact("hot")
            await asyncio.sleep(0)

    async def loader() -> None:
        # A load racing a compaction must still see everything acknowledged before it.
        while not stop.is_set():
            expected = set(acked["hot"])
            assert expected <= set(await doc_contents(store, "hot"))

    background = [asyncio.ensure_future(compactor()), asyncio.ensure_future(loader())]
    await asyncio.gather(*(writer(w) for w in range(15)))
    stop.set()
    await asyncio.gather(*background)
    await store.wait_idle()
    stats = await store.stats()
    assert stats.compactions > 5
    for doc, keys in acked.items():
        stored = await store.load(doc)
        assert set(loaded_state(stored.snapshot, stored.updates)) == keys
        assert stored.seq == len(keys)


async def test_compaction_drops_an_unreadable_row_instead_of_blocking(store: AnyDocumentStore) -> None:
    client = Replica()
    await store.append("d", [client.write([("m", "a", b"1")])])
    await store.append("d", [b"\xff\xfe not an update"])
    await store.append("d", [client.write([("m", "b", b"2")])])
    result = await store.compact("d")
    assert result is not None and result.covered_seq == 3
    assert await doc_contents(store, "d") == {"a": b"1", "b": b"2"}
