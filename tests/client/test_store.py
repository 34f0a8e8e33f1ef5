"""The SQLite store on real files: settings, migrations, outbox semantics, cursors, the document log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from client.storage.store import DB_FILE, MIGRATIONS, SCHEMA_VERSION, Store, StoreError
from crdt_core.engine import Replica


async def open_store(tmp_path: Path, **kw: Any) -> Store:
    return await Store.open(tmp_path / DB_FILE, now_ms=lambda: 1_000, **kw)


async def enqueue(store: Store, n: int) -> list[int]:
    ids = []
    async with store.transaction() as tx:
        for i in range(n):
            ids.append(
                await tx.enqueue("reservation", f"r{i}", "create", b"payload-%d" % i, "bookings:s:2027-01-01")
            )
    return ids


async def test_settings_wal_full_busy_timeout_and_migrations(tmp_path: Path) -> None:
    store = await open_store(tmp_path, busy_timeout_ms=1234)
    try:
        assert str(await store.pragma("journal_mode")).lower() == "wal"
        assert await store.pragma("synchronous") == 2  # FULL
        assert await store.pragma("busy_timeout") == 1234
        assert await store.pragma("foreign_keys") == 1
        assert await store.schema_version() == SCHEMA_VERSION
        assert await store.pragma("user_version") == SCHEMA_VERSION
    finally:
        await store.close()
    # Reopening applies nothing twice.
    store = await open_store(tmp_path)
    async with store.read() as tx:
        rows = await tx.fetchall("SELECT version, name FROM schema_migrations")
    await store.close()
    assert rows == [(1, "initial"), (2, "rejected_clients"), (3, "doc_snapshots"), (4, "doc_writers")]


def back_to_schema_2(db: sqlite3.Connection) -> None:
    """Turn a current file into what a schema-2 client left behind."""
    db.execute("DROP TABLE doc_snapshots")
    db.execute("DROP TABLE doc_writers")
    db.execute("DROP TABLE doc_rebuilds")
    for statement in MIGRATIONS[1].statements:
        db.execute(statement)
    db.execute("DELETE FROM schema_migrations WHERE version >= 3")


async def test_schema_4_queues_documents_with_refused_clients_for_a_rebuild(tmp_path: Path) -> None:
    """Refused per-write client ids (schema 2) are gone; their documents get rebuilt at next sync."""
    store = await open_store(tmp_path)
    async with store.transaction() as tx:
        await tx.append_update("catalog", b"\x01\x02", "local")
    await store.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        back_to_schema_2(db)
        db.execute(
            "INSERT INTO rejected_clients(doc_id, client_id, end_clock, certs, certs_end, entry_id) "
            "VALUES ('catalog', 7, 2, NULL, 0, 1), ('catalog', 8, 1, NULL, 0, 2)"
        )
    store = await open_store(tmp_path)
    try:
        assert list(await store.rebuilds()) == ["catalog"]
        async with store.read() as tx:
            tables = {r[0] for r in await tx.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "rejected_clients" not in tables and {"doc_writers", "doc_rebuilds"} <= tables
    finally:
        await store.close()


async def test_schema_3_moves_inline_snapshots_out_of_the_documents_row(tmp_path: Path) -> None:
    """A file written before schema 3 keeps its documents: the snapshot moves to doc_snapshots."""
    store = await open_store(tmp_path)
    async with store.transaction() as tx:
        await tx.append_update("catalog", b"\x01\x02", "local")
        await tx.append_update("catalog", b"\x03", "local")
    await store.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:  # what a schema-2 client left behind
        back_to_schema_2(db)
        db.execute("UPDATE documents SET snapshot = x'cafe', snapshot_bytes = 2, generation = 1")
    store = await open_store(tmp_path)
    try:
        async with store.read() as tx:
            inline = await tx.fetchone("SELECT length(snapshot) FROM documents WHERE doc_id = 'catalog'")
            stored = await tx.load_doc("catalog")
            delta = await tx.doc_since("catalog", 0, 0)
        assert inline == (0,)
        assert stored is not None and stored.snapshot == b"\xca\xfe" and len(stored.updates) == 2
        assert delta is not None and delta.snapshot == b"\xca\xfe" and delta.generation == 1
    finally:
        await store.close()


async def test_refuses_a_file_from_a_newer_client(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    with sqlite3.connect(tmp_path / DB_FILE) as db:
        db.execute("INSERT INTO schema_migrations(version, name, applied_ms) VALUES (99, 'future', 0)")
    with pytest.raises(StoreError, match="schema version 99"):
        await open_store(tmp_path)


async def test_indexes_serve_browsing_queries(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        async with store.read() as tx:
            plan = await tx.fetchall(
                "EXPLAIN QUERY PLAN SELECT id FROM shops WHERE category = ? AND active IN (1) ORDER BY name",
                ("hair",),
            )
            mine = await tx.fetchall(
                "EXPLAIN QUERY PLAN SELECT reservation_id FROM reservations WHERE customer = ? ORDER BY day",
                ("u",),
            )
    finally:
        await store.close()
    assert any("shops_by_category" in str(row) for row in plan)
    assert any("reservations_by_customer" in str(row) for row in mine)


async def test_outbox_order_retry_reject_ack(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        a, b, c = await enqueue(store, 3)
        assert [e.id for e in await store.pending_entries()] == [a, b, c]
        assert [e.id for e in await store.pending_entries(limit=2)] == [a, b]

        assert await store.mark_retry(a, "connection reset")
        assert await store.mark_retry(a, "timeout")
        head = (await store.pending_entries())[0]
        assert (head.id, head.retry_count, head.last_error, head.state) == (a, 2, "timeout", "pending")

        rejected = await store.mark_rejected(b, "forbidden", "not your shop")
        assert rejected is not None and rejected.state == "rejected"
        # A rejected entry is terminal and never blocks the ones behind it.
        assert [e.id for e in await store.pending_entries()] == [a, c]
        assert [(e.id, e.reject_code, e.reject_reason) for e in await store.rejected_entries()] == [
            (b, "forbidden", "not your shop")
        ]
        assert not await store.mark_retry(b, "late retry")  # terminal: stays rejected
        counts = await store.outbox_counts()
        assert (counts.pending, counts.rejected, counts.total) == (2, 1, 3)

        assert await store.mark_acked(a)
        assert not await store.mark_acked(a)  # a duplicate ack is harmless
        assert await store.mark_acked(c)
        assert await store.pending_entries() == []
        # Ids are never reused, even after the highest one was deleted.
        (d,) = await enqueue(store, 1)
        assert d > c
        assert await store.dismiss_rejected(b)
        assert (await store.outbox_counts()).total == 1
    finally:
        await store.close()


async def test_outbox_survives_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    ids = await enqueue(store, 2)
    await store.mark_rejected(ids[1], "schema", "bad field")
    await store.close()
    store = await open_store(tmp_path)
    try:
        assert [e.id for e in await store.pending_entries()] == ids[:1]
        assert (await store.pending_entries())[0].payload == b"payload-0"
        assert [e.reject_code for e in await store.rejected_entries()] == ["schema"]
    finally:
        await store.close()


async def test_cursors_and_epoch_reset(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    relay = "wss://relay.example"
    try:
        assert await store.get_epoch(relay) is None
        assert await store.get_last_seq(relay, "catalog") == 0
        await store.set_epoch(relay, "epoch-1")
        await store.set_last_seq(relay, "catalog", 5)
        await store.set_last_seq(relay, "catalog", 3)  # a late reply never moves it back
        await store.set_last_seq(relay, "shop:s", 9)
        await store.set_last_seq("wss://other", "catalog", 2)
        assert await store.get_last_seq(relay, "catalog") == 5
        assert await store.last_seqs(relay) == {"catalog": 5, "shop:s": 9}

        async with store.transaction() as tx:
            await tx.append_update("catalog", Replica().set_value("m", "k", 1), "remote")
        held = await store.reset_for_epoch(relay, "epoch-2")
        assert held == ["catalog"]
        assert await store.get_epoch(relay) == "epoch-2"
        assert await store.last_seqs(relay) == {}
        assert await store.get_last_seq("wss://other", "catalog") == 2  # other relays untouched
    finally:
        await store.close()


async def test_document_log_compaction_and_reload(tmp_path: Path) -> None:
    store = await open_store(tmp_path, compact_min_bytes=0)
    writer = Replica(7)
    try:
        async with store.transaction() as tx:
            first = await tx.append_update("shop:s", writer.set_value("m", "a", 1), "local")
            assert tx.needs_compaction(first)  # an empty snapshot is outgrown at once (floor 0)
            assert await tx.compact("shop:s", writer.encode_state()) == (1, 2)
        for i in range(5):
            async with store.transaction() as tx:
                last = await tx.append_update("shop:s", writer.set_value("m", f"k{i}", i), "local")
        stored = await store.load_doc("shop:s")
        assert stored is not None and stored.generation == 1 and len(stored.updates) == 5
        assert last.log_bytes == sum(len(p) for _, p in stored.updates)

        rebuilt = Replica()
        rebuilt.apply_update(stored.snapshot)
        for _, payload in stored.updates:
            rebuilt.apply_update(payload)
        assert rebuilt.to_py() == writer.to_py()

        async with store.transaction() as tx:
            delta = await tx.doc_since("shop:s", 1, stored.updates[2][0])
            assert delta is not None and delta.snapshot is None and len(delta.updates) == 2
            stale = await tx.doc_since("shop:s", 0, 10**9)  # compacted since: whole state again
            assert stale is not None and stale.snapshot == stored.snapshot and len(stale.updates) == 5
    finally:
        await store.close()


async def test_compaction_waits_for_the_floor(tmp_path: Path) -> None:
    store = await open_store(tmp_path, compact_min_bytes=10_000)
    try:
        async with store.transaction() as tx:
            result = await tx.append_update("catalog", Replica().set_value("m", "k", "x" * 100), "local")
            assert not tx.needs_compaction(result)
    finally:
        await store.close()


async def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        with pytest.raises(RuntimeError):
            async with store.transaction() as tx:
                await tx.append_update("catalog", Replica().set_value("m", "k", 1), "local")
                await tx.enqueue("category", "c", "create", b"x", "catalog")
                raise RuntimeError("crash between the two writes")
        assert await store.held_docs() == []
        assert (await store.outbox_counts()).total == 0
    finally:
        await store.close()


async def test_concurrent_coroutines_get_serialised_transactions(tmp_path: Path) -> None:
    store = await open_store(tmp_path)

    async def writer(tag: str) -> None:
        for i in range(20):
            async with store.transaction() as tx:
                await tx.enqueue("x", f"{tag}{i}", "create", b"p", "catalog")
                await asyncio.sleep(0)  # yield inside the transaction: another writer must wait
                await tx.set_meta(f"last-{tag}", str(i))

    try:
        await asyncio.gather(writer("a"), writer("b"), writer("c"))
        assert (await store.outbox_counts()).pending == 60
        assert await store.get_meta("last-b") == "19"
    finally:
        await store.close()


async def test_meta_and_subscriptions(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        await store.set_meta("k", "v1")
        await store.set_meta("k", "v2")
        assert await store.get_meta("k") == "v2"
        async with store.transaction() as tx:
            await tx.subscribe("shop:s", "follow")
            await tx.subscribe("shop:s", "browsed")
            await tx.subscribe("bookings:s:2027-01-01", "booking")
        assert await store.subscriptions() == {
            "bookings:s:2027-01-01": {"booking"},
            "shop:s": {"browsed", "follow"},
        }
        async with store.transaction() as tx:
            await tx.unsubscribe("shop:s", "follow")
        assert (await store.subscriptions())["shop:s"] == {"browsed"}
    finally:
        await store.close()
