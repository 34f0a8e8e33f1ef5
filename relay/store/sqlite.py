"""The relay's document store on one SQLite file (aiosqlite), with group commit.

Layout: ``DIR/relay.sqlite3`` holds these ``doc_*`` tables; the accounts code keeps its
``account_*``/``auth_*`` tables in the same file through its own connection (SQLite serialises the
two writers; ``busy_timeout`` makes one wait for the other instead of failing). ``DIR/epoch`` is
the data directory's id (:func:`relay.store.base.load_or_create_epoch`).

Durability: ``journal_mode=WAL`` with ``synchronous=FULL`` by default. The relay acknowledges an
update only once it is durable, and the client then deletes it from its outbox, so an acknowledged
update that is lost is lost everywhere; a lost stamp is worse, since a restarted relay would hand
the same number to another claim after clients had already shown the first as final. WAL with
``NORMAL`` survives a crash of the *process* (the commit is in the OS page cache once ``write``
returns, and SIGKILL does not drop the page cache) but not a power cut or kernel crash, because
the WAL is only fsynced at checkpoints. ``FULL`` fsyncs the WAL on every commit; group commit makes
that one fsync per *batch*, so it does not cost throughput (see ``tests/relay/test_store_*``).
``synchronous="NORMAL"`` stays available for throwaway deployments and benchmarks of the rest.

Group commit: every write (appends, stamp floors, compaction results) goes through one queue to
one writer task. The writer takes everything queued (up to ``max_batch``), runs it in one
``BEGIN IMMEDIATE`` transaction, commits, and only then resolves each request's future. While a
commit is in flight the next requests pile up in the queue and share the next commit; with no
load, a lone request commits at once (no timer, no added latency). If a batch fails, each request
is retried alone so one bad request cannot fail its neighbours. The queue, the writer task and
compaction scheduling are shared with the PostgreSQL store (:mod:`relay.store.group_commit`); this
module supplies the transaction.

The whole transaction (BEGIN, reading the heads, the inserts, COMMIT and its fsync) is *one*
call into the writer's own thread, a plain ``sqlite3`` connection that only that thread uses:
not one round trip per statement through aiosqlite, each of which waits for a turn of a busy
event loop, so durability latency no longer grows with the relay's fan-out load. Readers (loads,
stats) keep their aiosqlite connections.

Compaction reads a consistent view (one SQL statement: snapshot, log after it and head), folds it
by applying it to a scratch document off the event loop, and hands the result to the writer,
which in one transaction checks that nobody compacted meanwhile, writes the snapshot and deletes
``seq <= covered`` only. Appends that committed after the read have higher seqs and stay.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, Literal, TypeVar

import aiosqlite

from relay.ops.logging import get_logger, log_event
from relay.store.base import (
    CompactionResult,
    StampConflictError,
    StoreClosedError,
    StoredDocument,
    StoreError,
    StoreStats,
    check_doc_id,
    check_meta_key,
    load_or_create_epoch,
)
from relay.store.group_commit import (
    Append,
    CommitHook,
    Floor,
    GroupCommitStore,
    Head,
    Job,
    Outcome,
    assemble,
    compaction_applies,
    heads_from_rows,
    raise_floor,
    record_compaction,
    take_append,
)

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "SQLiteDocumentStore"]

log = get_logger(__name__)

DB_FILENAME: Final = "relay.sqlite3"
SCHEMA_VERSION: Final = 1

# Our own version table (not PRAGMA user_version): the accounts code shares the file and versions
# its own tables independently.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS doc_schema (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_head (
    doc_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,            -- highest assigned seq (0: none yet)
    next_stamp INTEGER NOT NULL,     -- next stamp number to hand out
    log_rows INTEGER NOT NULL,       -- rows in doc_log (kept here so the compaction rule is free)
    log_bytes INTEGER NOT NULL,
    snapshot_seq INTEGER NOT NULL,   -- doc_snapshot.covered_seq, 0 without a snapshot
    snapshot_bytes INTEGER NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_log (
    doc_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (doc_id, seq)
);
CREATE TABLE IF NOT EXISTS doc_snapshot (
    doc_id TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    covered_seq INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_meta (
    key TEXT PRIMARY KEY,            -- relay.store.base.check_meta_key
    value TEXT NOT NULL
);
"""

# One statement, so SQLite reads it in one transaction: a compaction committing between reading
# the snapshot and reading the log can never make us miss the rows it folded.
_LOAD_SQL: Final = """
SELECT 0, covered_seq, data, 0 FROM doc_snapshot WHERE doc_id = :id
UNION ALL
SELECT 1, seq, data, 0 FROM doc_log
 WHERE doc_id = :id
   AND seq > COALESCE((SELECT covered_seq FROM doc_snapshot WHERE doc_id = :id), 0)
UNION ALL
SELECT 2, seq, NULL, next_stamp FROM doc_head WHERE doc_id = :id
"""

_INSERT_LOG: Final = "INSERT INTO doc_log (doc_id, seq, data, created) VALUES (?, ?, ?, ?)"
_UPSERT_HEAD: Final = """
INSERT INTO doc_head
    (doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes, updated)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (doc_id) DO UPDATE SET
    seq = excluded.seq, next_stamp = excluded.next_stamp,
    log_rows = excluded.log_rows, log_bytes = excluded.log_bytes,
    snapshot_seq = excluded.snapshot_seq, snapshot_bytes = excluded.snapshot_bytes,
    updated = excluded.updated
"""
_UPSERT_SNAPSHOT: Final = """
INSERT INTO doc_snapshot (doc_id, data, covered_seq, created) VALUES (?, ?, ?, ?)
ON CONFLICT (doc_id) DO UPDATE SET
    data = excluded.data, covered_seq = excluded.covered_seq, created = excluded.created
"""

_T = TypeVar("_T")

Synchronous = Literal["FULL", "NORMAL"]


class SQLiteDocumentStore(GroupCommitStore):
    """:class:`relay.store.base.DocumentStore` on ``DIR/relay.sqlite3``.

    Use ``store = await SQLiteDocumentStore.open(dir)`` (or ``async with``) and ``await
    store.close()``. One store object per data directory per process: the writer task is the
    only writer of the ``doc_*`` tables, which is what lets it assign seqs from the heads it
    reads inside its own transaction.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_ms: int = 5000,
        max_batch: int = 512,
        auto_compact: bool = True,
        compact_min_bytes: int = 64 * 1024,
        max_concurrent_compactions: int = 2,
        readers: int = 2,
        on_commit: CommitHook | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL")
        super().__init__(
            max_batch=max_batch,
            auto_compact=auto_compact,
            compact_min_bytes=compact_min_bytes,
            max_concurrent_compactions=max_concurrent_compactions,
            readers=readers,
            on_commit=on_commit,
        )
        self.directory = Path(directory)
        self.path = self.directory / DB_FILENAME
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        #: The writer's plain sqlite3 connection, used only from ``_writer_thread``'s one thread.
        self._writer: sqlite3.Connection | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, directory: str | Path, **options: object) -> SQLiteDocumentStore:
        store = cls(directory, **options)  # type: ignore[arg-type]
        await store.start()
        return store

    def _connected(self) -> bool:
        return self._writer is not None

    async def start(self) -> None:
        self._check_not_started()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._epoch = await asyncio.to_thread(load_or_create_epoch, self.directory)
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="relay-store-writer")
        try:
            writer = await self._in_writer(self._open_writer)
            try:
                for _ in range(self._reader_count):
                    reader = await self._connect()
                    await reader.execute("PRAGMA query_only=1")
                    self._readers.append(reader)
            except BaseException:
                await self._in_writer(writer.close)
                raise
        except BaseException:
            for reader in self._readers:
                await reader.close()
            self._readers.clear()
            self._writer_thread.shutdown(wait=False)
            self._writer_thread = None
            raise
        self._writer = writer
        self._start_writer()

    async def _in_writer(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn(*args)`` in the writer's thread (the only thread that touches its connection)."""
        if self._writer_thread is None:
            raise StoreClosedError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    def _open_writer(self) -> sqlite3.Connection:
        """In the writer thread: connect, WAL, the durability level, the schema."""
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit
        # transactions would start a deferred one, which can fail to upgrade to a write lock).
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            row = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            mode = None if row is None else row[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _release(self) -> None:
        for conn in self._readers:
            await conn.close()
        self._readers.clear()
        if self._writer is not None:
            await self._in_writer(self._writer.close)
            self._writer = None
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=True)
            self._writer_thread = None

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves (the sqlite3 module's implicit
        # transactions would start a deferred one, which can fail to upgrade to a write lock).
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT version FROM doc_schema WHERE id = 1").fetchone()
            if row is None:
                conn.execute("INSERT INTO doc_schema (id, version) VALUES (1, ?)", (SCHEMA_VERSION,))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has document schema {row[0]}, newer than this relay's {SCHEMA_VERSION}"
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _reader(self) -> aiosqlite.Connection:
        # Every read is one statement, so readers carry no transaction state between calls and
        # can be shared round-robin (each aiosqlite connection serialises its own calls).
        if not self._readers or self._closing:
            raise StoreClosedError("store is closed")
        conn = self._readers[self._next_reader % len(self._readers)]
        self._next_reader += 1
        return conn

    # --- reads -------------------------------------------------------------------------------

    async def load(self, doc_id: str) -> StoredDocument:
        check_doc_id(doc_id)
        return assemble(doc_id, await self._reader().execute_fetchall(_LOAD_SQL, {"id": doc_id}))

    async def _load_for_compaction(self, doc_id: str) -> StoredDocument:
        return await self.load(doc_id)

    async def stats(self) -> StoreStats:
        rows = await self._reader().execute_fetchall(
            "SELECT COUNT(*), COALESCE(SUM(log_rows), 0), COALESCE(SUM(log_bytes), 0),"
            " COALESCE(SUM(snapshot_bytes), 0) FROM doc_head"
        )
        documents, log_rows, log_bytes, snapshot_bytes = next(iter(rows))
        return self._stats(int(documents), int(log_rows), int(log_bytes), int(snapshot_bytes))

    async def _doc_ids_with_log(self) -> list[str]:
        rows = await self._reader().execute_fetchall(
            "SELECT doc_id FROM doc_head WHERE log_rows > 0 ORDER BY doc_id"
        )
        return [str(doc_id) for (doc_id,) in rows]

    # --- meta --------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        check_meta_key(key)
        rows = list(await self._reader().execute_fetchall("SELECT value FROM doc_meta WHERE key = ?", (key,)))
        return str(rows[0][0]) if rows else None

    async def put_meta(self, values: Mapping[str, str | None]) -> None:
        items = [(check_meta_key(k), v) for k, v in values.items()]
        if self._closing or self._writer is None:
            raise StoreClosedError("store is closed")
        # In the writer's thread, so it is serialised with the group commits (same connection).
        await self._in_writer(_put_meta, self._writer, items)

    async def docs_updated_since(self, since: float) -> list[str]:
        rows = await self._reader().execute_fetchall(
            "SELECT doc_id FROM doc_head WHERE updated >= ? ORDER BY doc_id", (since,)
        )
        return [str(doc_id) for (doc_id,) in rows]

    # --- the writer's transaction ------------------------------------------------------------

    async def _write(self, batch: list[Job]) -> tuple[list[Outcome], dict[str, Head]]:
        conn = self._writer
        if conn is None:
            raise StoreClosedError("store is closed")
        # The jobs' futures belong to the event loop: hand the thread plain data only.
        work = [_plain(job) for job in batch]
        return await self._in_writer(_run_transaction, conn, work, time.time())


def _put_meta(conn: sqlite3.Connection, items: list[tuple[str, str | None]]) -> None:
    """In the writer thread: set or delete meta values in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for key, value in items:
            if value is None:
                conn.execute("DELETE FROM doc_meta WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO doc_meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _plain(job: Job) -> tuple[object, ...]:
    """A job as plain data for the writer thread (no futures cross threads)."""
    if isinstance(job, Append):
        return ("append", job.doc_id, job.updates, job.stamp_base, job.stamp_count)
    if isinstance(job, Floor):
        return ("floor", job.doc_id, job.next_stamp)
    return ("compact", job.doc_id, job.snapshot, job.covered_seq, job.base_snapshot_seq)


def _run_transaction(
    conn: sqlite3.Connection, work: list[tuple[object, ...]], now: float
) -> tuple[list[Outcome], dict[str, Head]]:
    """In the writer thread: the whole group commit, BEGIN to COMMIT (and its fsync), or nothing.

    Returns each job's outcome and the heads of the documents that got appends (for the
    compaction rule).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        heads = _read_heads(conn, {str(item[1]) for item in work})
        log_rows: list[tuple[str, int, bytes, float]] = []
        touched: dict[str, Head] = {}
        appended: dict[str, Head] = {}
        outcomes: list[Outcome] = []
        for item in work:
            kind, doc_id = item[0], str(item[1])
            head = heads.setdefault(doc_id, Head(doc_id))
            if kind == "append":
                _, _, updates, stamp_base, stamp_count = item
                assert isinstance(updates, tuple) and isinstance(stamp_count, int)
                assert stamp_base is None or isinstance(stamp_base, int)
                result = take_append(head, updates, stamp_base, stamp_count)
                outcomes.append(result)
                if isinstance(result, StampConflictError):
                    continue
                rows = zip(result.seqs, updates, strict=True)
                log_rows.extend((doc_id, seq, update, now) for seq, update in rows)
                appended[doc_id] = head
            elif kind == "floor":
                next_stamp = item[2]
                assert isinstance(next_stamp, int)
                outcomes.append(raise_floor(head, next_stamp))
            else:
                _, _, snapshot, covered_seq, base_snapshot_seq = item
                assert isinstance(snapshot, bytes) and isinstance(covered_seq, int)
                assert isinstance(base_snapshot_seq, int)
                outcomes.append(_write_compaction(conn, head, snapshot, covered_seq, base_snapshot_seq, now))
            touched[doc_id] = head
        if log_rows:
            conn.executemany(_INSERT_LOG, log_rows)
        if touched:
            conn.executemany(_UPSERT_HEAD, [_head_row(head, now) for head in touched.values()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log_event(log, "rollback_failed", logging.ERROR, exc_info=True)
        raise
    return outcomes, appended


def _head_row(head: Head, now: float) -> tuple[object, ...]:
    return (
        head.doc_id,
        head.seq,
        head.next_stamp,
        head.log_rows,
        head.log_bytes,
        head.snapshot_seq,
        head.snapshot_bytes,
        now,
    )


def _read_heads(conn: sqlite3.Connection, doc_ids: set[str]) -> dict[str, Head]:
    ids = sorted(doc_ids)
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        "SELECT doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes"
        f" FROM doc_head WHERE doc_id IN ({marks})",
        ids,
    ).fetchall()
    return heads_from_rows(rows)


def _write_compaction(
    conn: sqlite3.Connection,
    head: Head,
    snapshot: bytes,
    covered_seq: int,
    base_snapshot_seq: int,
    now: float,
) -> CompactionResult | None:
    doc_id = head.doc_id
    if not compaction_applies(head, base_snapshot_seq, covered_seq):
        return None  # another compaction got there first; its snapshot stands
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM doc_log WHERE doc_id = ? AND seq <= ?",
        (doc_id, covered_seq),
    ).fetchone()
    removed_rows, removed_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
    conn.execute(_UPSERT_SNAPSHOT, (doc_id, snapshot, covered_seq, now))
    conn.execute("DELETE FROM doc_log WHERE doc_id = ? AND seq <= ?", (doc_id, covered_seq))
    return record_compaction(head, covered_seq, len(snapshot), removed_rows, removed_bytes)
