"""The client's local store: one SQLite file per profile, through aiosqlite, in WAL mode.

Why SQLite and this shape (docs/design.md, "Client"): the client must work with no network at all, so
everything it shows and everything it still owes the relay lives here:

* ``documents`` + ``doc_updates``: each CRDT document as a snapshot plus an append-only log of
  updates. Appending is what a write costs (no re-encoding of a large document per booking); the
  log is folded into a new snapshot when its bytes outgrow the snapshot's, which keeps loading
  linear and the amortised cost of compaction constant per byte written. The snapshot itself
  lives in ``doc_snapshots`` (schema 3), out of the ``documents`` row that every append updates.
* ``outbox``: the original design's ``sync_queue``. One entry per document per local transaction,
  drained in id order, deleted only when the relay acknowledges it. A relay rejection is terminal
  (``state = 'rejected'`` with the reason kept for ``status``) and never blocks later entries: it
  queues the document for a rebuild (``doc_rebuilds``), which replaces the pending entries of that
  document written after it by new ones under the next client id.
  Ids are ``AUTOINCREMENT``: an acknowledged id is never handed out again, so an ack can never
  hit the wrong entry.
* ``relay_cursors`` / ``doc_cursors``: per relay, its epoch and, per document, the last sequence
  number caught up to.
* ``meta``: small key-value settings (identity, HLC, ...); ``subscriptions``: selective sync.
* ``doc_writers`` (schema 4): per document and signer (certificate id), the generation of the
  Yjs client id this device writes that document under (``crdt_core.clientids``; 0 when absent).
  A device writes each document under one client id, so the document's state vector grows by one
  entry per device, not per write; the generation moves on only when the document is rebuilt.
* ``doc_rebuilds`` (schema 4): documents to rebuild from the relay's state at the next sync: the
  relay refused one of this device's writes there (its later structs continue a client clock the
  relay will never have), or an update from the relay did not fit the local document. The sync
  engine fetches the relay's whole document and ``LocalClient.rebuild_from_relay`` replaces the
  local one, re-writing the still-pending local records under the next generation's id.
  (Schema 2's ``rejected_clients``, which named refused per-write ids, is gone; the documents it
  named are queued here by the migration.)
* projection tables (``categories``, ``shops``, ``shop_profiles``, ``slots``, ``staff``,
  ``reservations``, ``slot_usage``), written by ``client.local.projections`` in the same transaction as
  the document change they derive from, so browsing is an indexed query that never disagrees
  with the documents.

Durability settings, and why:

* ``journal_mode=WAL``: readers (another CLI process browsing) never block the writer and vice
  versa, and a commit is one sequential append to the WAL.
* ``synchronous=FULL``: in WAL mode ``NORMAL`` may lose the last commits on power loss (not
  corrupt, but lose). An offline booking exists nowhere but in this file until the relay
  acknowledges it, and the user was told "booked, queued"; losing it silently is worse than an
  fsync per commit (~0.3 ms here).
* ``busy_timeout``: the CLI and a ``sync --watch`` process may share a profile; a writer waits for
  the other's transaction instead of failing with ``SQLITE_BUSY``.
* ``BEGIN IMMEDIATE`` for every write transaction: take the write lock up front, so a transaction
  that read something never fails to upgrade halfway through.

Schema versions: ``schema_migrations`` records each applied migration (and ``PRAGMA user_version``
mirrors the highest); a file written by a newer client is refused rather than misread.

Concurrency inside one process: aiosqlite runs one connection on one thread, so statements of two
coroutines would interleave inside each other's transactions. Every transaction therefore holds
:attr:`Store.lock`; :class:`Tx` is the only way to run statements.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from client.errors import ClientError

__all__ = [
    "DB_FILE",
    "SCHEMA_VERSION",
    "AppendResult",
    "DocDelta",
    "OutboxCounts",
    "OutboxEntry",
    "Store",
    "StoreError",
    "StoredDoc",
    "Tx",
]

_T = TypeVar("_T")

DB_FILE = "quickslot.db"
#: Compaction waits until the log holds at least this much, so a young document is not
#: re-snapshotted on every write (the "log outgrows snapshot" rule alone would do that).
DEFAULT_COMPACT_MIN_BYTES = 16 * 1024


class StoreError(ClientError):
    """The store cannot be used (a newer schema, a corrupt file)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_V1 = (
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID""",
    # --- documents ---------------------------------------------------------------------------
    """CREATE TABLE documents (
        doc_id TEXT PRIMARY KEY,
        snapshot BLOB NOT NULL,
        snapshot_bytes INTEGER NOT NULL,
        log_bytes INTEGER NOT NULL,
        log_count INTEGER NOT NULL,
        generation INTEGER NOT NULL,   -- +1 per compaction
        version INTEGER NOT NULL,      -- +1 per change of any kind: cheap change detection
        updated_ms INTEGER NOT NULL
    )""",
    """CREATE TABLE doc_updates (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        doc_id TEXT NOT NULL REFERENCES documents(doc_id),
        payload BLOB NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('local', 'remote', 'peer')),
        created_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX doc_updates_by_doc ON doc_updates(doc_id, id)",
    # --- outbox (sync_queue) -----------------------------------------------------------------
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        entity_type TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        payload BLOB NOT NULL,
        doc_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'rejected')),
        reject_code TEXT,
        reject_reason TEXT,
        rejected_ms INTEGER
    )""",
    "CREATE INDEX outbox_by_state ON outbox(state, id)",
    "CREATE INDEX outbox_by_entity ON outbox(entity_type, entity_id)",
    # --- relay cursors -----------------------------------------------------------------------
    """CREATE TABLE relay_cursors (
        relay_url TEXT PRIMARY KEY,
        epoch TEXT,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE doc_cursors (
        relay_url TEXT NOT NULL,
        doc_id TEXT NOT NULL,
        last_seq INTEGER NOT NULL,
        PRIMARY KEY (relay_url, doc_id)
    ) WITHOUT ROWID""",
    # --- selective sync ----------------------------------------------------------------------
    """CREATE TABLE subscriptions (
        doc_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        PRIMARY KEY (doc_id, reason)
    ) WITHOUT ROWID""",
    # --- projections (written by client.local.projections) -----------------------------------------
    # (hlc, rkey) of the record a row was projected from: readers take the greatest per id.
    """CREATE TABLE categories (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        icon TEXT,
        hlc TEXT NOT NULL,
        rkey TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX categories_by_name ON categories(name)",
    """CREATE TABLE shops (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        location TEXT NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        rating REAL,
        active INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        rkey TEXT NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX shops_by_category ON shops(category, active, name)",
    "CREATE INDEX shops_by_name ON shops(active, name)",
    """CREATE TABLE shop_profiles (
        shop_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        address TEXT NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        image_url TEXT,
        hours TEXT NOT NULL,
        hlc TEXT NOT NULL,
        rkey TEXT NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE slots (
        shop_id TEXT NOT NULL,
        slot_id TEXT NOT NULL,
        service TEXT NOT NULL,
        start TEXT NOT NULL,
        duration INTEGER NOT NULL,
        capacity INTEGER NOT NULL,
        weekdays TEXT,                 -- JSON list of 0-6, NULL for every day
        active INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        rkey TEXT NOT NULL,
        PRIMARY KEY (shop_id, slot_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE staff (
        shop_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL,
        active INTEGER NOT NULL,
        hlc TEXT NOT NULL,
        rkey TEXT NOT NULL,
        PRIMARY KEY (shop_id, user_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX staff_by_user ON staff(user_id, active)",
    """CREATE TABLE reservations (
        doc_id TEXT NOT NULL,
        reservation_id TEXT NOT NULL,
        shop_id TEXT NOT NULL,
        day TEXT NOT NULL,
        slot_id TEXT NOT NULL,
        customer TEXT NOT NULL,
        party INTEGER NOT NULL,
        note TEXT,
        hlc TEXT NOT NULL,
        state TEXT NOT NULL,
        waitlist_position INTEGER,
        final INTEGER NOT NULL,
        stamp INTEGER,
        staff_confirmed INTEGER NOT NULL,
        holds_seats INTEGER NOT NULL,
        rejected_code TEXT,
        rejected_reason TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (doc_id, reservation_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX reservations_by_customer ON reservations(customer, day, slot_id)",
    "CREATE INDEX reservations_by_id ON reservations(reservation_id)",
    "CREATE INDEX reservations_by_shop_day ON reservations(shop_id, day, slot_id)",
    """CREATE TABLE slot_usage (
        shop_id TEXT NOT NULL,
        day TEXT NOT NULL,
        slot_id TEXT NOT NULL,
        capacity INTEGER NOT NULL,
        seats_taken INTEGER NOT NULL,
        confirmed INTEGER NOT NULL,
        waitlisted INTEGER NOT NULL,
        PRIMARY KEY (shop_id, day, slot_id)
    ) WITHOUT ROWID""",
)

_V2 = (
    """CREATE TABLE rejected_clients (
        doc_id TEXT NOT NULL,
        client_id INTEGER NOT NULL,     -- a Yjs client id of an update the relay refused
        end_clock INTEGER NOT NULL,     -- its refused structs lie below this clock
        certs BLOB,                     -- the certificates it carried, alone, as an update (or NULL)
        certs_end INTEGER NOT NULL,     -- that update covers clocks [0, certs_end) of client_id
        entry_id INTEGER NOT NULL,      -- the outbox entry that was refused (it may be dismissed)
        PRIMARY KEY (doc_id, client_id)
    ) WITHOUT ROWID""",
)

# Each document's snapshot in a row of its own: ``documents`` is updated on every append (log
# size, version), and SQLite rewrites (and reads through) a whole row, overflow pages and all, to
# change one integer of it. With the snapshot inline that cost ~1.4 ms per booking at 1,000
# reservations and 4.5-12 ms at 10,000 (benchmarks, client suite). ``documents.snapshot`` stays
# (always empty) so that no table has to be rebuilt.
_V3 = (
    """CREATE TABLE doc_snapshots (
        doc_id TEXT PRIMARY KEY,
        snapshot BLOB NOT NULL
    )""",
    "INSERT INTO doc_snapshots(doc_id, snapshot) SELECT doc_id, snapshot FROM documents "
    "WHERE length(snapshot) > 0",
    "UPDATE documents SET snapshot = x'' WHERE length(snapshot) > 0",
)

# One Yjs client id per device per document (generation per signer), and the documents waiting
# for a rebuild from the relay. A profile that still has refused per-write clients gets those
# documents rebuilt on its next sync (that removes the refused structs from them).
_V4 = (
    """CREATE TABLE doc_writers (
        doc_id TEXT NOT NULL,
        signer TEXT NOT NULL,          -- a certificate id of this device
        generation INTEGER NOT NULL,   -- crdt_core.clientids generation it writes the doc under
        PRIMARY KEY (doc_id, signer)
    ) WITHOUT ROWID""",
    """CREATE TABLE doc_rebuilds (
        doc_id TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO doc_rebuilds(doc_id, reason, since_ms) "
    "SELECT DISTINCT doc_id, 'refused write (schema 2 client ids)', 0 FROM rejected_clients",
    "DROP TABLE rejected_clients",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial", _V1),
    Migration(2, "rejected_clients", _V2),
    Migration(3, "doc_snapshots", _V3),
    Migration(4, "doc_writers", _V4),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class OutboxEntry:
    """One queued change for the relay (the original design's ``sync_queue`` row)."""

    id: int
    entity_type: str
    entity_id: str
    operation: str
    payload: bytes = field(repr=False)
    doc_id: str
    created_ms: int
    retry_count: int
    last_error: str | None
    state: str
    reject_code: str | None
    reject_reason: str | None


@dataclass(frozen=True)
class OutboxCounts:
    pending: int
    rejected: int

    @property
    def total(self) -> int:
        return self.pending + self.rejected


@dataclass(frozen=True)
class StoredDoc:
    """A document as stored: snapshot, then the log in order (apply both to rebuild it)."""

    doc_id: str
    snapshot: bytes
    updates: list[tuple[int, bytes]]
    generation: int
    version: int


@dataclass(frozen=True)
class DocDelta:
    """What a process holding ``doc_id`` at (generation, log id) must apply to catch up.

    ``snapshot`` is set when the document was compacted meanwhile (then ``updates`` is the whole
    remaining log). Applying both is always safe: CRDT updates are idempotent.
    """

    doc_id: str
    snapshot: bytes | None
    updates: list[tuple[int, bytes]]
    generation: int
    version: int


@dataclass(frozen=True)
class AppendResult:
    update_id: int
    snapshot_bytes: int
    log_bytes: int
    version: int


_OUTBOX_COLUMNS = (
    "id, entity_type, entity_id, operation, payload, doc_id, created_ms, retry_count, last_error, "
    "state, reject_code, reject_reason"
)


def _entry(row: Sequence[Any]) -> OutboxEntry:
    return OutboxEntry(
        id=row[0],
        entity_type=row[1],
        entity_id=row[2],
        operation=row[3],
        payload=bytes(row[4]),
        doc_id=row[5],
        created_ms=row[6],
        retry_count=row[7],
        last_error=row[8],
        state=row[9],
        reject_code=row[10],
        reject_reason=row[11],
    )


_ENQUEUE = (
    "INSERT INTO outbox(entity_type, entity_id, operation, payload, doc_id, created_ms) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def _doc_range(prefix: str) -> tuple[str, str]:
    """Bounds for ``prefix <= doc_id < prefix'`` (ids contain ``_``, a LIKE wildcard, so no LIKE)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Tx:
    """One open transaction: raw statements plus the store's typed operations.

    Only :meth:`Store.transaction` and :meth:`Store.read` create one; it is valid inside that
    ``async with`` block only.
    """

    def __init__(self, db: aiosqlite.Connection, now_ms: Callable[[], int], compact_min_bytes: int) -> None:
        self._db = db
        self.now_ms = now_ms
        self.compact_min_bytes = compact_min_bytes
        # Statements whose result nobody needs, run on the SQLite thread just before the next
        # statement that does (or with COMMIT): see :meth:`defer`. An entry with ``sql=None``
        # is a function of the connection (:meth:`append_update_later`).
        self._deferred: list[tuple[str | None, Any, bool]] = []

    # --- the SQLite thread -------------------------------------------------------------------

    def _on_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> Awaitable[_T]:
        """Run ``fn(connection)`` on aiosqlite's thread, after every deferred statement, in one trip.

        Why the private ``Connection._execute``: it is how aiosqlite itself queues work for its
        thread, and the only way to run several statements per thread hop. Each hop costs an
        event-loop wake-up and two GIL handoffs (~50-100 µs of CPU on this VM), and a booking used
        to make ~14 of them against the plain insert's 4 (benchmarks, client suite). This is the
        one place that touches aiosqlite's internals; statements still run strictly in order, on
        the connection's own thread, inside the open transaction.
        """
        pending, self._deferred = self._deferred, []
        conn = self._db._conn

        def run() -> _T:
            for sql, params, many in pending:
                if sql is None:
                    params(conn)
                elif many:
                    conn.executemany(sql, params)
                else:
                    conn.execute(sql, params)
            return fn(conn)

        result: Awaitable[_T] = self._db._execute(run)  # type: ignore[no-untyped-call]
        return result

    def defer(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Queue a write whose result is not needed; it runs before the next statement or COMMIT.

        Still inside this transaction and in order, so atomicity and durability are unchanged; an
        error it raises surfaces from that later call (and the transaction rolls back).
        """
        self._deferred.append((sql, params, False))

    def defer_call(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue ``fn(connection)`` like :meth:`defer`: a check or a write with a recorded result.

        It runs on the SQLite thread, so it must only touch the connection and plain values; an
        exception it raises ends the trip (and the transaction rolls back).
        """
        self._deferred.append((None, fn, False))

    def defer_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            self._deferred.append((sql, batch, True))

    async def _end(self, statement: str) -> None:
        """Run what is deferred, then ``statement`` (COMMIT), in one trip to the SQLite thread.

        A transaction whose ``BEGIN`` never ran (nothing was asked of it) has nothing to end.
        """

        def run(conn: sqlite3.Connection) -> None:
            if conn.in_transaction:
                conn.execute(statement)

        await self._on_thread(run)

    async def _rollback(self) -> None:
        """Drop what is deferred and roll back, if a transaction was opened at all."""
        self._deferred = []

        def run(conn: sqlite3.Connection) -> None:
            if conn.in_transaction:
                conn.execute("ROLLBACK")

        await self._on_thread(run)

    # --- raw ---------------------------------------------------------------------------------

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement (after the deferred ones, in the same trip); returns the last rowid."""
        return await self._on_thread(lambda conn: conn.execute(sql, params).lastrowid or 0)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        if batch:
            await self._on_thread(lambda conn: conn.executemany(sql, batch))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await self._on_thread(lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        """The first row; the statement runs to completion, which ``... RETURNING`` needs anyway."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def data_version(self) -> int:
        """Changes when *another* connection (another process) commits; ours leave it alone."""
        row = await self.fetchone("PRAGMA data_version")
        assert row is not None
        return int(row[0])

    # --- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        """Deferred (:meth:`defer`): nothing reads the result, and a later read still sees it."""
        self.defer(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def delete_meta(self, key: str) -> None:
        await self.execute("DELETE FROM meta WHERE key = ?", (key,))

    # --- documents ---------------------------------------------------------------------------

    async def load_doc(self, doc_id: str) -> StoredDoc | None:
        head = await self.fetchone(
            "SELECT COALESCE(s.snapshot, x''), d.generation, d.version FROM documents d "
            "LEFT JOIN doc_snapshots s ON s.doc_id = d.doc_id WHERE d.doc_id = ?",
            (doc_id,),
        )
        if head is None:
            return None
        rows = await self.fetchall(
            "SELECT id, payload FROM doc_updates WHERE doc_id = ? ORDER BY id", (doc_id,)
        )
        return StoredDoc(doc_id, bytes(head[0]), [(r[0], bytes(r[1])) for r in rows], head[1], head[2])

    async def doc_versions(self, doc_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """``{doc_id: (generation, version)}`` of the given documents that exist."""
        ids = list(doc_ids)
        out: dict[str, tuple[int, int]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for doc_id, gen, ver in await self.fetchall(
                f"SELECT doc_id, generation, version FROM documents WHERE doc_id IN ({marks})", chunk
            ):
                out[doc_id] = (gen, ver)
        return out

    async def doc_since(self, doc_id: str, generation: int, after_id: int) -> DocDelta | None:
        head = await self.fetchone(
            "SELECT d.generation, d.version, "
            "CASE WHEN d.generation != ? THEN COALESCE(s.snapshot, x'') END FROM documents d "
            "LEFT JOIN doc_snapshots s ON s.doc_id = d.doc_id WHERE d.doc_id = ?",
            (generation, doc_id),
        )
        if head is None:
            return None
        gen, version, snapshot = head
        since = after_id if gen == generation else 0
        rows = await self.fetchall(
            "SELECT id, payload FROM doc_updates WHERE doc_id = ? AND id > ? ORDER BY id", (doc_id, since)
        )
        return DocDelta(
            doc_id,
            None if snapshot is None else bytes(snapshot),
            [(r[0], bytes(r[1])) for r in rows],
            gen,
            version,
        )

    async def append_update(self, doc_id: str, payload: bytes, origin: str) -> AppendResult:
        """Append one update to a document's log (creating the document row if needed)."""
        return await self._on_thread(self._appender(doc_id, payload, origin))

    def append_update_later(
        self, doc_id: str, payload: bytes, origin: str, done: Callable[[AppendResult], None]
    ) -> None:
        """:meth:`append_update`, deferred like :meth:`defer`; ``done(result)`` runs right after it.

        ``done`` runs on the SQLite thread, before this transaction's next trip (at the latest its
        COMMIT) returns, so it must only record the result. Why: a local write needs the new log
        id and counters only after the fact (to know the log position and whether to compact),
        so the append can travel with COMMIT instead of costing a trip of its own.
        """
        append = self._appender(doc_id, payload, origin)
        self.defer_call(lambda conn: done(append(conn)))

    def _appender(
        self, doc_id: str, payload: bytes, origin: str
    ) -> Callable[[sqlite3.Connection], AppendResult]:
        now = self.now_ms()
        size = len(payload)

        def run(conn: sqlite3.Connection) -> AppendResult:  # both statements in one thread trip
            head = conn.execute(
                "INSERT INTO documents(doc_id, snapshot, snapshot_bytes, log_bytes, log_count, generation, "
                "version, updated_ms) VALUES (?, x'', 0, ?, 1, 0, 1, ?) "
                "ON CONFLICT(doc_id) DO UPDATE SET log_bytes = log_bytes + excluded.log_bytes, "
                "log_count = log_count + 1, version = version + 1, updated_ms = excluded.updated_ms "
                "RETURNING snapshot_bytes, log_bytes, version",
                (doc_id, size, now),
            ).fetchall()[0]
            update_id = conn.execute(
                "INSERT INTO doc_updates(doc_id, payload, origin, created_ms) VALUES (?, ?, ?, ?)",
                (doc_id, payload, origin, now),
            ).lastrowid
            return AppendResult(update_id or 0, head[0], head[1], head[2])

        return run

    def needs_compaction(self, appended: AppendResult) -> bool:
        return appended.log_bytes > max(appended.snapshot_bytes, self.compact_min_bytes)

    async def compact(self, doc_id: str, snapshot: bytes) -> tuple[int, int]:
        """Replace a document's snapshot and drop its log; returns the new (generation, version).

        The caller guarantees ``snapshot`` contains every logged update: it holds the write lock
        (``BEGIN IMMEDIATE``) and has applied the whole log, including other processes' rows.
        """
        if await self.fetchone("SELECT 1 FROM documents WHERE doc_id = ?", (doc_id,)) is None:
            raise StoreError(f"cannot compact unknown document {doc_id}")
        return await self.replace_doc(doc_id, snapshot)

    async def replace_doc(self, doc_id: str, snapshot: bytes) -> tuple[int, int]:
        """Make ``snapshot`` the whole document (creating its row if needed); returns (generation, version).

        Unlike :meth:`compact`, ``snapshot`` need not contain the old content: a rebuild from the
        relay drops what the relay refused. The (compaction) generation moves on either way, which
        tells other processes holding the document to read it afresh (``LocalClient._catch_up``).
        """
        row = await self.fetchone(
            "INSERT INTO documents(doc_id, snapshot, snapshot_bytes, log_bytes, log_count, generation, "
            "version, updated_ms) VALUES (?, x'', ?, 0, 0, 1, 1, ?) "
            "ON CONFLICT(doc_id) DO UPDATE SET snapshot_bytes = excluded.snapshot_bytes, log_bytes = 0, "
            "log_count = 0, generation = generation + 1, version = version + 1, "
            "updated_ms = excluded.updated_ms RETURNING generation, version",
            (doc_id, len(snapshot), self.now_ms()),
        )
        assert row is not None
        await self.execute(
            "INSERT INTO doc_snapshots(doc_id, snapshot) VALUES (?, ?) "
            "ON CONFLICT(doc_id) DO UPDATE SET snapshot = excluded.snapshot",
            (doc_id, snapshot),
        )
        await self.execute("DELETE FROM doc_updates WHERE doc_id = ?", (doc_id,))
        return int(row[0]), int(row[1])

    async def held_docs(self, prefix: str | None = None) -> list[str]:
        if prefix is None:
            rows = await self.fetchall("SELECT doc_id FROM documents ORDER BY doc_id")
        else:
            lo, hi = _doc_range(prefix)
            rows = await self.fetchall(
                "SELECT doc_id FROM documents WHERE doc_id >= ? AND doc_id < ? ORDER BY doc_id", (lo, hi)
            )
        return [r[0] for r in rows]

    # --- outbox ------------------------------------------------------------------------------

    async def enqueue(
        self, entity_type: str, entity_id: str, operation: str, payload: bytes, doc_id: str
    ) -> int:
        row = (entity_type, entity_id, operation, payload, doc_id, self.now_ms())
        return await self.execute(_ENQUEUE, row)

    def enqueue_later(
        self, entity_type: str, entity_id: str, operation: str, payload: bytes, doc_id: str
    ) -> None:
        """:meth:`enqueue` when the entry's id is not needed: deferred to the next trip (or COMMIT)."""
        self.defer(_ENQUEUE, (entity_type, entity_id, operation, payload, doc_id, self.now_ms()))

    async def outbox_entry(self, entry_id: int) -> OutboxEntry | None:
        row = await self.fetchone(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (entry_id,))
        return None if row is None else _entry(row)

    async def mark_rejected(self, entry_id: int, code: str, reason: str) -> OutboxEntry | None:
        """Set a pending entry aside for good, and queue its document for a rebuild from the relay.

        Why the rebuild: the entry's structs stay in the local document (a CRDT cannot take them
        back) and every later local write of that document continues their client's clock, which
        the relay will never hold (see ``doc_rebuilds`` in the module doc).
        """
        changed = await self.fetchone(
            "UPDATE outbox SET state = 'rejected', reject_code = ?, reject_reason = ?, rejected_ms = ? "
            "WHERE id = ? AND state = 'pending' RETURNING doc_id",
            (code, reason, self.now_ms(), entry_id),
        )
        if changed is not None:
            await self.request_rebuild(str(changed[0]), f"refused write: {code}: {reason}")
        return await self.outbox_entry(entry_id)

    async def pending_of(self, doc_id: str) -> list[OutboxEntry]:
        """The pending entries of one document, oldest first."""
        rows = await self.fetchall(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND doc_id = ? ORDER BY id",
            (doc_id,),
        )
        return [_entry(r) for r in rows]

    async def delete_entries(self, entry_ids: Iterable[int]) -> None:
        await self.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in entry_ids])

    # --- per-document writer generations and rebuilds ----------------------------------------

    async def writer_generation(self, doc_id: str, signer: str) -> int:
        row = await self.fetchone(
            "SELECT generation FROM doc_writers WHERE doc_id = ? AND signer = ?", (doc_id, signer)
        )
        return 0 if row is None else int(row[0])

    async def set_writer_generation(self, doc_id: str, signer: str, generation: int) -> None:
        await self.execute(
            "INSERT INTO doc_writers(doc_id, signer, generation) VALUES (?, ?, ?) "
            "ON CONFLICT(doc_id, signer) DO UPDATE SET generation = excluded.generation",
            (doc_id, signer, generation),
        )

    async def request_rebuild(self, doc_id: str, reason: str) -> None:
        """Queue ``doc_id`` for a rebuild from the relay's state (the first reason is kept)."""
        await self.execute(
            "INSERT OR IGNORE INTO doc_rebuilds(doc_id, reason, since_ms) VALUES (?, ?, ?)",
            (doc_id, reason[:1000], self.now_ms()),
        )

    async def rebuilds(self) -> dict[str, str]:
        """``{doc_id: reason}`` of the documents waiting for a rebuild from the relay."""
        return {str(d): str(r) for d, r in await self.fetchall("SELECT doc_id, reason FROM doc_rebuilds")}

    async def rebuilt(self, doc_id: str) -> None:
        await self.execute("DELETE FROM doc_rebuilds WHERE doc_id = ?", (doc_id,))

    # --- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, doc_id: str, reason: str) -> None:
        """Deferred (:meth:`defer`): an idempotent insert nobody reads back in the transaction."""
        self.defer(
            "INSERT OR IGNORE INTO subscriptions(doc_id, reason, since_ms) VALUES (?, ?, ?)",
            (doc_id, reason, self.now_ms()),
        )

    async def unsubscribe(self, doc_id: str, reason: str | None = None) -> None:
        if reason is None:
            await self.execute("DELETE FROM subscriptions WHERE doc_id = ?", (doc_id,))
        else:
            await self.execute("DELETE FROM subscriptions WHERE doc_id = ? AND reason = ?", (doc_id, reason))


class Store:
    """One profile's SQLite file. Open with :meth:`open`; every method is a coroutine.

    Args:
        now_ms: the wall clock for ``created``/``updated`` columns (injectable for tests).
        compact_min_bytes: a document's log is folded into its snapshot once the log is larger
            than both the snapshot and this floor.
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        now_ms: Callable[[], int],
        compact_min_bytes: int,
    ) -> None:
        self._db = db
        self.path = path
        self.now_ms = now_ms
        self.compact_min_bytes = compact_min_bytes
        self.lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        now_ms: Callable[[], int] = _system_ms,
        busy_timeout_ms: int = 10_000,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
    ) -> Store:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # isolation_level=None: the sqlite3 module must not open transactions behind our back;
        # every transaction is an explicit BEGIN IMMEDIATE ... COMMIT in Store.transaction.
        pending = aiosqlite.connect(str(target), isolation_level=None)
        # aiosqlite's worker thread is not a daemon: a process that dies on an exception before
        # close() (a CLI command, a test) would hang at exit waiting for it. Being killed mid-
        # transaction is safe for SQLite (like SIGKILL), so let the interpreter exit.
        worker = getattr(pending, "_thread", None)
        if isinstance(worker, threading.Thread) and not worker.is_alive():
            worker.daemon = True
        db = await pending
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            async with db.execute("PRAGMA journal_mode = WAL") as cur:
                mode = await cur.fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{target}: cannot switch to WAL mode (got {mode})")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            store = cls(db, target, now_ms, compact_min_bytes)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    def needs_compaction(self, appended: AppendResult) -> bool:
        """A document's log has outgrown its snapshot (and the floor): fold it (``Tx.compact``)."""
        return appended.log_bytes > max(appended.snapshot_bytes, self.compact_min_bytes)

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            async with self.lock:
                await self._db.close()

    async def _migrate(self) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
            )
            row = await tx.fetchone("SELECT MAX(version) FROM schema_migrations")
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}; this client knows up to {SCHEMA_VERSION}"
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_migrations(version, name, applied_ms) VALUES (?, ?, ?)",
                    (migration.version, migration.name, self.now_ms()),
                )
                await tx.execute(f"PRAGMA user_version = {migration.version}")

    # --- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on exit, rolled back on any error."""
        async with self.lock:
            if self._closed:
                raise StoreError("store is closed")
            tx = Tx(self._db, self.now_ms, self.compact_min_bytes)
            # BEGIN travels with the first statement, and the deferred writes with COMMIT: one
            # trip each instead of one per statement (``Tx._on_thread``). COMMIT (fsync'd, under
            # synchronous=FULL) has returned before this block exits.
            tx.defer("BEGIN IMMEDIATE")
            try:
                yield tx
                await tx._end("COMMIT")
            except BaseException:
                await tx._rollback()
                raise

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        """A read transaction: one consistent snapshot of the file across several queries."""
        async with self.lock:
            if self._closed:
                raise StoreError("store is closed")
            tx = Tx(self._db, self.now_ms, self.compact_min_bytes)
            tx.defer("BEGIN")  # sent with the first query (``Tx._on_thread``)
            try:
                yield tx
            finally:
                await tx._end("COMMIT")

    # --- pragmas (for status and tests) ------------------------------------------------------

    async def pragma(self, name: str) -> Any:
        async with self.read() as tx:
            row = await tx.fetchone(f"PRAGMA {name}")
        return None if row is None else row[0]

    async def schema_version(self) -> int:
        async with self.read() as tx:
            row = await tx.fetchone("SELECT MAX(version) FROM schema_migrations")
        return int(row[0]) if row and row[0] is not None else 0

    # --- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        async with self.read() as tx:
            return await tx.get_meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        async with self.transaction() as tx:
            await tx.set_meta(key, value)

    # --- outbox (the sync engine's API) ------------------------------------------------------

    async def pending_entries(self, limit: int | None = None) -> list[OutboxEntry]:
        """Pending entries, oldest first: the order they must reach the relay in."""
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' ORDER BY id"
        params: tuple[Any, ...] = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        async with self.read() as tx:
            return [_entry(r) for r in await tx.fetchall(sql, params)]

    async def rejected_entries(self) -> list[OutboxEntry]:
        async with self.read() as tx:
            rows = await tx.fetchall(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'rejected' ORDER BY id"
            )
        return [_entry(r) for r in rows]

    async def outbox_entry(self, entry_id: int) -> OutboxEntry | None:
        async with self.read() as tx:
            return await tx.outbox_entry(entry_id)

    async def outbox_counts(self) -> OutboxCounts:
        async with self.read() as tx:
            rows = dict(await tx.fetchall("SELECT state, COUNT(*) FROM outbox GROUP BY state"))
        return OutboxCounts(pending=int(rows.get("pending", 0)), rejected=int(rows.get("rejected", 0)))

    async def mark_acked(self, entry_id: int) -> bool:
        """The relay durably has the entry: delete it. Idempotent; False if it was already gone."""
        return await self.take_acked(entry_id) is not None

    async def take_acked(self, entry_id: int) -> tuple[str, str, str, str] | None:
        """:meth:`mark_acked`, returning what the entry was: ``(entity_type, entity_id,
        operation, doc_id)``, or None if it was already gone."""
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "DELETE FROM outbox WHERE id = ? RETURNING entity_type, entity_id, operation, doc_id",
                (entry_id,),
            )
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), str(row[3]))

    async def mark_retry(self, entry_id: int, error: str) -> bool:
        """A retryable failure: count it and keep the entry pending (the engine retries on a timer)."""
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "UPDATE outbox SET retry_count = retry_count + 1, last_error = ? "
                "WHERE id = ? AND state = 'pending' RETURNING id",
                (error[:1000], entry_id),
            )
        return row is not None

    async def mark_rejected(self, entry_id: int, code: str, reason: str) -> OutboxEntry | None:
        """Terminal: set the entry aside with the relay's reason and queue its document for a
        rebuild (``Tx.mark_rejected``), which replaces the document's later pending entries."""
        async with self.transaction() as tx:
            return await tx.mark_rejected(entry_id, code, reason[:1000])

    async def dismiss_rejected(self, entry_id: int) -> bool:
        """The user has seen a rejection: forget it."""
        async with self.transaction() as tx:
            row = await tx.fetchone(
                "DELETE FROM outbox WHERE id = ? AND state = 'rejected' RETURNING id", (entry_id,)
            )
        return row is not None

    async def rebuilds(self) -> dict[str, str]:
        """The documents waiting for a rebuild from the relay (see ``doc_rebuilds``), with why."""
        async with self.read() as tx:
            return await tx.rebuilds()

    # --- relay cursors -----------------------------------------------------------------------

    async def get_epoch(self, relay_url: str) -> str | None:
        async with self.read() as tx:
            row = await tx.fetchone("SELECT epoch FROM relay_cursors WHERE relay_url = ?", (relay_url,))
        return None if row is None else row[0]

    async def set_epoch(self, relay_url: str, epoch: str) -> None:
        async with self.transaction() as tx:
            await self._set_epoch(tx, relay_url, epoch)

    async def _set_epoch(self, tx: Tx, relay_url: str, epoch: str) -> None:
        await tx.execute(
            "INSERT INTO relay_cursors(relay_url, epoch, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(relay_url) DO UPDATE SET epoch = excluded.epoch, updated_ms = excluded.updated_ms",
            (relay_url, epoch, self.now_ms()),
        )

    async def get_last_seq(self, relay_url: str, doc_id: str) -> int:
        async with self.read() as tx:
            row = await tx.fetchone(
                "SELECT last_seq FROM doc_cursors WHERE relay_url = ? AND doc_id = ?", (relay_url, doc_id)
            )
        return 0 if row is None else int(row[0])

    async def set_last_seq(self, relay_url: str, doc_id: str, seq: int) -> None:
        """Record progress; never moves backwards within an epoch (a late reply cannot undo it)."""
        async with self.transaction() as tx:
            await tx.execute(
                "INSERT INTO doc_cursors(relay_url, doc_id, last_seq) VALUES (?, ?, ?) "
                "ON CONFLICT(relay_url, doc_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                (relay_url, doc_id, int(seq)),
            )

    async def last_seqs(self, relay_url: str) -> dict[str, int]:
        async with self.read() as tx:
            rows = await tx.fetchall(
                "SELECT doc_id, last_seq FROM doc_cursors WHERE relay_url = ?", (relay_url,)
            )
        return {r[0]: int(r[1]) for r in rows}

    async def reset_for_epoch(self, relay_url: str, new_epoch: str) -> list[str]:
        """The relay lost its data (new epoch): forget its sequence numbers, in one transaction.

        Returns every document held locally: the sync engine sends each one's state again (a
        state-vector exchange against the empty relay yields everything). Pending outbox entries
        stay as they are and are flushed as usual; re-sending what the relay already got is a no-op.
        """
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM doc_cursors WHERE relay_url = ?", (relay_url,))
            await self._set_epoch(tx, relay_url, new_epoch)
            return await tx.held_docs()

    # --- documents (read side) ---------------------------------------------------------------

    async def load_doc(self, doc_id: str) -> StoredDoc | None:
        async with self.read() as tx:
            return await tx.load_doc(doc_id)

    async def held_docs(self, prefix: str | None = None) -> list[str]:
        async with self.read() as tx:
            return await tx.held_docs(prefix)

    async def subscriptions(self) -> dict[str, set[str]]:
        async with self.read() as tx:
            rows = await tx.fetchall("SELECT doc_id, reason FROM subscriptions ORDER BY doc_id")
        out: dict[str, set[str]] = {}
        for doc_id, reason in rows:
            out.setdefault(doc_id, set()).add(reason)
        return out
