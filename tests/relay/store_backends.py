"""The two document stores behind one test fixture, so the store contract runs against both.

``StoreBackend.open(**options)`` opens a store on the backend's one location (a temporary data
directory for SQLite, a fresh database on this worker's PostgreSQL server for PostgreSQL);
opening again reaches the same data, which is what "reopen" and "two nodes" tests need.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.store import PostgresDocumentStore, SQLiteDocumentStore
from relay.store.open import AnyDocumentStore

BACKENDS = ("sqlite", "postgres")

#: For the long end-to-end tests whose PostgreSQL variant repeats what a faster test already shows
#: for PostgreSQL (durability under SIGKILL is ``test_store_sigkill.py[postgres]``): ``make test``
#: runs them on SQLite only, ``make thorough`` on both, to keep ``make test`` within its budget.
LONG_STORES = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(
            os.environ.get("HYPOTHESIS_PROFILE") != "thorough",
            reason="PostgreSQL variant of a long test: runs in `make thorough`",
        ),
    ),
]


class StoreBackend:
    """Where one test's documents live, and a way to open stores on it (closed at the end)."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self.opened: list[AnyDocumentStore] = []
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        """A few connections of the test's own to the PostgreSQL database (not the store's)."""
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.location, min_size=1, max_size=4)
            return self._pool

    async def open(self, **options: Any) -> AnyDocumentStore:
        store: AnyDocumentStore
        if self.kind == "postgres":
            store = await PostgresDocumentStore.open(self.location, **options)
        else:
            store = await SQLiteDocumentStore.open(Path(self.location), **options)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()
        if self._pool is not None:
            await self._pool.close()


async def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    """Body of a ``backend`` fixture parametrized over :data:`BACKENDS`."""
    kind = request.param
    location = request.getfixturevalue("pg_dsn") if kind == "postgres" else str(tmp_path)
    backend = StoreBackend(kind, location)
    try:
        yield backend
    finally:
        await backend.close_all()


async def committed_seqs(backend: StoreBackend, doc_id: str) -> list[int]:
    """Seqs of the log rows as a separate connection sees them (i.e. committed ones)."""
    if backend.kind == "postgres":
        pool = await backend.pool()
        rows = await pool.fetch("SELECT seq FROM doc_log WHERE doc_id = $1 ORDER BY seq", doc_id)
        return [int(r["seq"]) for r in rows]
    import sqlite3

    from relay.store.sqlite import DB_FILENAME

    db = sqlite3.connect(Path(backend.location) / DB_FILENAME)
    try:
        return [r[0] for r in db.execute("SELECT seq FROM doc_log WHERE doc_id = ? ORDER BY seq", (doc_id,))]
    finally:
        db.close()


def copy_store(store_flags: list[str], step: str) -> None:
    """Back up (``step="backup"``) or restore (``"restore"``) the PostgreSQL database a relay's
    ``--store`` flag names, as an operator would with ``pg_dump``/``pg_restore``; here a template
    copy (the relay must be stopped). No-op for SQLite, whose data directory the caller copies."""
    if "--store" not in store_flags:
        return
    dsn = store_flags[store_flags.index("--store") + 1]
    base, _, name = dsn.rpartition("/")
    backup = f"{name}_backup"

    async def go() -> None:
        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            if step == "backup":
                await conn.execute(f'CREATE DATABASE "{backup}" TEMPLATE "{name}"')
            else:
                # A rename, not DROP DATABASE: a drop forces a checkpoint of the whole server.
                await conn.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}_replaced"')
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{backup}"')
        finally:
            await conn.close()

    asyncio.run(go())
