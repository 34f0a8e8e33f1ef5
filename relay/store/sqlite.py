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
is retried alone so one bad request cannot fail its neighbours.

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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeVar

import aiosqlite

from crdt_core.engine import EngineError, Replica
from relay.store.base import (
    FIRST_STAMP,
    AppendResult,
    CompactionResult,
    StampConflictError,
    StoreClosedError,
    StoredDocument,
    StoreError,
    StoreStats,
    check_doc_id,
    load_or_create_epoch,
    should_compact,
)

__all__ = ["DB_FILENAME", "SCHEMA_VERSION", "SQLiteDocumentStore"]

log = logging.getLogger("quickslot.relay.store")

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
#: ``on_commit(requests_in_batch, seconds)``: a hook for the commit-latency histogram.
CommitHook = Callable[[int, float], None]


# --- writer requests ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Head:
    doc_id: str
    seq: int = 0
    next_stamp: int = FIRST_STAMP
    log_rows: int = 0
    log_bytes: int = 0
    snapshot_seq: int = 0
    snapshot_bytes: int = 0

    def row(self, now: float) -> tuple[object, ...]:
        return (
            self.doc_id,
            self.seq,
            self.next_stamp,
            self.log_rows,
            self.log_bytes,
            self.snapshot_seq,
            self.snapshot_bytes,
            now,
        )


@dataclass(slots=True, eq=False)
class _Append:
    doc_id: str
    updates: tuple[bytes, ...]
    stamp_base: int | None
    stamp_count: int
    future: asyncio.Future[AppendResult]


@dataclass(slots=True, eq=False)
class _Floor:
    doc_id: str
    next_stamp: int
    future: asyncio.Future[int]


@dataclass(slots=True, eq=False)
class _CompactWrite:
    doc_id: str
    snapshot: bytes
    covered_seq: int
    #: The snapshot seq the fold started from; if it changed, someone else compacted: skip.
    base_snapshot_seq: int
    future: asyncio.Future[CompactionResult | None]


_Job = _Append | _Floor | _CompactWrite
_Outcome = AppendResult | int | CompactionResult | None | BaseException


class _Stop:
    """Queue sentinel: the writer finishes what is before it and exits."""


_STOP: Final = _Stop()


class SQLiteDocumentStore:
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
        if max_batch < 1 or readers < 1 or max_concurrent_compactions < 1:
            raise ValueError("max_batch, readers and max_concurrent_compactions must be >= 1")
        self.directory = Path(directory)
        self.path = self.directory / DB_FILENAME
        self.synchronous: Synchronous = synchronous
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        self.auto_compact = auto_compact
        self.compact_min_bytes = compact_min_bytes
        self._reader_count = readers
        self._on_commit = on_commit
        self._epoch: str | None = None
        #: The writer's plain sqlite3 connection, used only from ``_writer_thread``'s one thread.
        self._writer: sqlite3.Connection | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        self._queue: asyncio.Queue[_Job | _Stop] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._compactions: dict[str, asyncio.Task[None]] = {}
        self._compaction_slots = asyncio.Semaphore(max_concurrent_compactions)
        self._closing = False
        self._closed = asyncio.Event()
        # Counters since open (StoreStats).
        self._commits = 0
        self._appends = 0
        self._compacted = 0
        self._largest_batch = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, directory: str | Path, **options: object) -> SQLiteDocumentStore:
        store = cls(directory, **options)  # type: ignore[arg-type]
        await store.start()
        return store

    async def __aenter__(self) -> SQLiteDocumentStore:
        if self._writer is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._writer is not None or self._closing:
            raise StoreError("store already started")
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
        self._writer_task = asyncio.create_task(self._run_writer(), name="relay-store-writer")

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

    async def close(self) -> None:
        """Stop taking work, commit everything already ordered, close the connections."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            pending = list(self._compactions.values())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._writer_task is not None:
                self._queue.put_nowait(_STOP)
                await self._writer_task
            for conn in self._readers:
                await conn.close()
            self._readers.clear()
            if self._writer is not None:
                await self._in_writer(self._writer.close)
                self._writer = None
            if self._writer_thread is not None:
                self._writer_thread.shutdown(wait=True)
                self._writer_thread = None
        finally:
            self._closed.set()

    @property
    def epoch(self) -> str:
        if self._epoch is None:
            raise StoreError("store not started")
        return self._epoch

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
        rows = await self._reader().execute_fetchall(_LOAD_SQL, {"id": doc_id})
        snapshot: bytes | None = None
        snapshot_seq = 0
        updates: list[tuple[int, bytes]] = []
        seq = 0
        next_stamp = FIRST_STAMP
        for kind, row_seq, data, stamp in rows:
            if kind == 0:
                snapshot, snapshot_seq = bytes(data), int(row_seq)
            elif kind == 1:
                updates.append((int(row_seq), bytes(data)))
            else:
                seq, next_stamp = int(row_seq), int(stamp)
        updates.sort(key=lambda item: item[0])
        return StoredDocument(
            doc_id=doc_id,
            snapshot=snapshot,
            snapshot_seq=snapshot_seq,
            updates=tuple(updates),
            seq=seq,
            next_stamp=next_stamp,
        )

    async def stats(self) -> StoreStats:
        rows = await self._reader().execute_fetchall(
            "SELECT COUNT(*), COALESCE(SUM(log_rows), 0), COALESCE(SUM(log_bytes), 0),"
            " COALESCE(SUM(snapshot_bytes), 0) FROM doc_head"
        )
        documents, log_rows, log_bytes, snapshot_bytes = next(iter(rows))
        return StoreStats(
            documents=int(documents),
            log_rows=int(log_rows),
            log_bytes=int(log_bytes),
            snapshot_bytes=int(snapshot_bytes),
            commits=self._commits,
            appends=self._appends,
            compactions=self._compacted,
            largest_batch=self._largest_batch,
        )

    # --- writes ------------------------------------------------------------------------------

    def enqueue_append(
        self,
        doc_id: str,
        updates: Sequence[bytes],
        *,
        stamp_base: int | None = None,
        stamp_count: int = 0,
    ) -> asyncio.Future[AppendResult]:
        check_doc_id(doc_id)
        if isinstance(updates, (bytes, bytearray, memoryview)):
            raise ValueError("updates is a sequence of updates, not one update")
        items = tuple(bytes(u) for u in updates)
        if not items or not all(items):
            raise ValueError("append needs at least one non-empty update")
        if stamp_count < 0:
            raise ValueError("stamp_count must be >= 0")
        if stamp_count and (stamp_base is None or stamp_base < FIRST_STAMP):
            raise ValueError("allocating stamps needs the expected stamp_base")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._enqueue(_Append(doc_id, items, stamp_base, stamp_count, future))
        return future

    async def append(
        self,
        doc_id: str,
        updates: Sequence[bytes],
        *,
        stamp_base: int | None = None,
        stamp_count: int = 0,
    ) -> AppendResult:
        future = self.enqueue_append(doc_id, updates, stamp_base=stamp_base, stamp_count=stamp_count)
        # shield: a caller that gives up waiting must not cancel the request itself (it is
        # already ordered and will commit; others may be awaiting the same future).
        return await asyncio.shield(future)

    def enqueue_stamp_floor(self, doc_id: str, next_stamp: int) -> asyncio.Future[int]:
        check_doc_id(doc_id)
        if next_stamp < FIRST_STAMP:
            raise ValueError(f"next_stamp must be >= {FIRST_STAMP}")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._enqueue(_Floor(doc_id, next_stamp, future))
        return future

    async def set_stamp_floor(self, doc_id: str, next_stamp: int) -> int:
        return await asyncio.shield(self.enqueue_stamp_floor(doc_id, next_stamp))

    def _enqueue(self, job: _Job) -> None:
        if self._closing or self._writer_task is None:
            raise StoreClosedError("store is closed")
        self._queue.put_nowait(job)

    @property
    def compactions_done(self) -> int:
        """Compactions committed since this store was opened (for the relay's metrics)."""
        return self._compacted

    # --- compaction --------------------------------------------------------------------------

    async def compact(self, doc_id: str) -> CompactionResult | None:
        stored = await self.load(doc_id)
        if not stored.updates:
            return None
        snapshot = await asyncio.to_thread(_fold, stored)
        future: asyncio.Future[CompactionResult | None] = asyncio.get_running_loop().create_future()
        self._enqueue(
            _CompactWrite(
                doc_id=doc_id,
                snapshot=snapshot,
                covered_seq=stored.updates[-1][0],
                base_snapshot_seq=stored.snapshot_seq,
                future=future,
            )
        )
        return await asyncio.shield(future)

    async def compact_all(self) -> list[CompactionResult]:
        rows = await self._reader().execute_fetchall(
            "SELECT doc_id FROM doc_head WHERE log_rows > 0 ORDER BY doc_id"
        )
        results = []
        for (doc_id,) in rows:
            result = await self.compact(str(doc_id))
            if result is not None:
                results.append(result)
        return results

    async def wait_idle(self) -> None:
        """Wait until no automatic compaction is running (tests and graceful shutdown)."""
        while self._compactions:
            await asyncio.gather(*list(self._compactions.values()), return_exceptions=True)

    def _schedule_compaction(self, doc_id: str) -> None:
        if self._closing or doc_id in self._compactions:
            return
        task = asyncio.create_task(self._auto_compact(doc_id), name=f"compact {doc_id}")
        self._compactions[doc_id] = task
        task.add_done_callback(lambda _t: self._compactions.pop(doc_id, None))

    async def _auto_compact(self, doc_id: str) -> None:
        try:
            async with self._compaction_slots:
                result = await self.compact(doc_id)
            if result is not None:
                log.debug(
                    "= compacted %s up to seq %d: %d rows (%d bytes) into %d bytes",
                    doc_id,
                    result.covered_seq,
                    result.removed_rows,
                    result.removed_bytes,
                    result.snapshot_bytes,
                )
        except (StoreClosedError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("! compaction of %s failed; the log is kept and retried later", doc_id)

    # --- the writer (group commit) -----------------------------------------------------------

    async def _run_writer(self) -> None:
        while True:
            first = await self._queue.get()
            if isinstance(first, _Stop):
                return
            batch: list[_Job] = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if isinstance(job, _Stop):
                    stop = True
                    break
                batch.append(job)
            await self._commit_batch(batch)
            if stop:
                return

    async def _commit_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], _as_store_error(exc))
                return
            # Isolate the culprit: retry each request in its own transaction, in order.
            log.warning("! group commit of %d requests failed (%s); retrying one by one", len(batch), exc)
            for job in batch:
                try:
                    (outcome,) = await self._transaction([job])
                except Exception as single:
                    outcome = _as_store_error(single)
                _settle(job, outcome)
            return
        elapsed = time.perf_counter() - started
        if self._on_commit is not None:
            try:
                self._on_commit(len(batch), elapsed)
            except Exception:  # a metrics hook must not break commits
                log.exception("! on_commit hook failed")
        for job, outcome in zip(batch, outcomes, strict=True):
            _settle(job, outcome)

    async def _transaction(self, batch: list[_Job]) -> list[_Outcome]:
        """Run ``batch`` in one write transaction; the outcomes are valid only once this returns."""
        conn = self._writer
        if conn is None:
            raise StoreClosedError("store is closed")
        # The jobs' futures belong to the event loop: hand the thread plain data only.
        work = [_plain(job) for job in batch]
        outcomes, heads = await self._in_writer(_run_transaction, conn, work, time.time())
        self._commits += 1
        self._appends += sum(1 for job in batch if isinstance(job, _Append))
        self._compacted += sum(1 for outcome in outcomes if isinstance(outcome, CompactionResult))
        self._largest_batch = max(self._largest_batch, len(batch))
        if self.auto_compact:
            for doc_id, head in heads.items():
                if should_compact(head.log_bytes, head.snapshot_bytes, self.compact_min_bytes):
                    self._schedule_compaction(doc_id)
        return outcomes


def _plain(job: _Job) -> tuple[object, ...]:
    """A job as plain data for the writer thread (no futures cross threads)."""
    if isinstance(job, _Append):
        return ("append", job.doc_id, job.updates, job.stamp_base, job.stamp_count)
    if isinstance(job, _Floor):
        return ("floor", job.doc_id, job.next_stamp)
    return ("compact", job.doc_id, job.snapshot, job.covered_seq, job.base_snapshot_seq)


def _run_transaction(
    conn: sqlite3.Connection, work: list[tuple[object, ...]], now: float
) -> tuple[list[_Outcome], dict[str, _Head]]:
    """In the writer thread: the whole group commit, BEGIN to COMMIT (and its fsync), or nothing.

    Returns each job's outcome and the heads of the documents that got appends (for the
    compaction rule).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        heads = _read_heads(conn, {str(item[1]) for item in work})
        log_rows: list[tuple[str, int, bytes, float]] = []
        touched: dict[str, _Head] = {}
        appended: dict[str, _Head] = {}
        outcomes: list[_Outcome] = []
        for item in work:
            kind, doc_id = item[0], str(item[1])
            head = heads.setdefault(doc_id, _Head(doc_id))
            if kind == "append":
                _, _, updates, stamp_base, stamp_count = item
                assert isinstance(updates, tuple) and isinstance(stamp_count, int)
                if stamp_count and stamp_base != head.next_stamp:
                    outcomes.append(
                        StampConflictError(
                            f"{doc_id}: stamp base {stamp_base}, but the next stamp is {head.next_stamp}"
                        )
                    )
                    continue
                first = head.seq + 1
                for offset, update in enumerate(updates):
                    log_rows.append((doc_id, first + offset, update, now))
                count = len(updates)
                head.seq += count
                head.log_rows += count
                head.log_bytes += sum(len(u) for u in updates)
                stamps = range(head.next_stamp, head.next_stamp + stamp_count)
                head.next_stamp += stamp_count
                outcomes.append(AppendResult(seqs=tuple(range(first, first + count)), stamps=stamps))
                appended[doc_id] = head
            elif kind == "floor":
                next_stamp = item[2]
                assert isinstance(next_stamp, int)
                head.next_stamp = max(head.next_stamp, next_stamp)
                outcomes.append(head.next_stamp)
            else:
                _, _, snapshot, covered_seq, base_snapshot_seq = item
                assert isinstance(snapshot, bytes) and isinstance(covered_seq, int)
                assert isinstance(base_snapshot_seq, int)
                outcomes.append(_write_compaction(conn, head, snapshot, covered_seq, base_snapshot_seq, now))
            touched[doc_id] = head
        if log_rows:
            conn.executemany(_INSERT_LOG, log_rows)
        if touched:
            conn.executemany(_UPSERT_HEAD, [head.row(now) for head in touched.values()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("! rollback failed")
        raise
    return outcomes, appended


def _read_heads(conn: sqlite3.Connection, doc_ids: set[str]) -> dict[str, _Head]:
    ids = sorted(doc_ids)
    marks = ",".join("?" * len(ids))
    rows = conn.execute(
        "SELECT doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes"
        f" FROM doc_head WHERE doc_id IN ({marks})",
        ids,
    ).fetchall()
    return {str(row[0]): _Head(str(row[0]), *(int(v) for v in row[1:])) for row in rows}


def _write_compaction(
    conn: sqlite3.Connection,
    head: _Head,
    snapshot: bytes,
    covered_seq: int,
    base_snapshot_seq: int,
    now: float,
) -> CompactionResult | None:
    doc_id = head.doc_id
    if head.snapshot_seq != base_snapshot_seq or not head.snapshot_seq < covered_seq <= head.seq:
        return None  # another compaction got there first; its snapshot stands
    row = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM doc_log WHERE doc_id = ? AND seq <= ?",
        (doc_id, covered_seq),
    ).fetchone()
    removed_rows, removed_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
    conn.execute(_UPSERT_SNAPSHOT, (doc_id, snapshot, covered_seq, now))
    conn.execute("DELETE FROM doc_log WHERE doc_id = ? AND seq <= ?", (doc_id, covered_seq))
    head.log_rows -= removed_rows
    head.log_bytes -= removed_bytes
    head.snapshot_seq = covered_seq
    head.snapshot_bytes = len(snapshot)
    return CompactionResult(
        doc_id=doc_id,
        covered_seq=covered_seq,
        snapshot_bytes=len(snapshot),
        removed_rows=removed_rows,
        removed_bytes=removed_bytes,
    )


def _settle(job: _Job, outcome: _Outcome) -> None:
    future: asyncio.Future[object] = job.future  # type: ignore[assignment]
    if future.done():  # nobody is waiting any more; the outcome stands regardless
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    error = StoreError(f"write transaction failed: {exc}")
    error.__cause__ = exc
    return error


def _fold(stored: StoredDocument) -> bytes:
    """Snapshot + log as one update, by applying them to a scratch document (linear, unlike merge).

    This is :func:`crdt_core.engine.fold_updates`, except that a log row the engine refuses is
    logged and skipped instead of failing the fold: the document manager never stores an update
    the engine refused, so such a row can only be damage, and loading skips it the same way; one
    bad row must not block compaction of the document forever.
    """
    scratch = Replica()
    if stored.snapshot is not None:
        try:
            scratch.apply_update(stored.snapshot)
        except EngineError as exc:
            raise StoreError(f"{stored.doc_id}: stored snapshot is unreadable: {exc}") from None
    for seq, update in stored.updates:
        try:
            scratch.apply_update(update)
        except EngineError as exc:
            log.error(
                "! %s: log row %d is unreadable and is dropped by compaction: %s", stored.doc_id, seq, exc
            )
    return scratch.encode_state()
