"""What only the SQLite document store does: its file, WAL, schema table, epoch file, shared writer.

The store contract (group commit, seqs, stamps, compaction) runs against both stores in
``test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.store import (
    DocumentStore,
    SQLiteDocumentStore,
    StoreError,
    load_or_create_epoch,
)
from relay.store.sqlite import DB_FILENAME, SCHEMA_VERSION


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteDocumentStore]:
    s = await SQLiteDocumentStore.open(tmp_path)
    try:
        yield s
    finally:
        await s.close()


# --- opening -----------------------------------------------------------------------------------


async def test_open_creates_schema_wal_and_epoch(tmp_path: Path) -> None:
    store = await SQLiteDocumentStore.open(tmp_path)
    epoch = store.epoch
    assert isinstance(store, DocumentStore)
    await store.close()
    assert (tmp_path / "epoch").read_text().strip() == epoch
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"doc_schema", "doc_head", "doc_log", "doc_snapshot"} <= tables
        assert all(name.startswith("doc_") for name in tables)
        assert conn.execute("SELECT version FROM doc_schema").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
    again = await SQLiteDocumentStore.open(tmp_path)  # CREATE IF NOT EXISTS: reopening is harmless
    assert again.epoch == epoch
    await again.close()


async def test_existing_epoch_file_is_read_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "epoch").write_text("abc123\n")
    async with SQLiteDocumentStore(tmp_path) as store:
        assert store.epoch == "abc123"


def test_epoch_created_once_under_concurrent_creators(tmp_path: Path) -> None:
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_epoch(tmp_path))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".epoch")]  # no temp files left


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    async with SQLiteDocumentStore(tmp_path):
        pass
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute("UPDATE doc_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        await SQLiteDocumentStore.open(tmp_path)


# --- sharing the file ----------------------------------------------------------------------


async def test_appends_wait_for_another_writer_on_the_same_file(
    store: SQLiteDocumentStore, tmp_path: Path
) -> None:
    """The accounts code writes the same file through its own connection: we wait, we do not fail."""
    locked = threading.Event()
    release = threading.Event()

    def accounts_writer() -> None:
        conn = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        conn.execute("CREATE TABLE IF NOT EXISTS account_demo (x)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO account_demo VALUES (1)")
        locked.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=accounts_writer)
    thread.start()
    await asyncio.to_thread(locked.wait, 5)
    append = asyncio.ensure_future(store.append("d", [Replica().write([("m", "a", b"1")])]))
    await asyncio.sleep(0.05)  # let it reach the busy wait (timing only makes the check meaningful)
    assert not append.done()
    release.set()
    assert (await append).seqs == (1,)
    await asyncio.to_thread(thread.join)
