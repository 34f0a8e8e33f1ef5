"""The relay's document store on PostgreSQL (asyncpg), shared by several relay nodes.

Same promises as the SQLite store (:mod:`relay.store.base`), but the writers are now several
processes on several machines, so the per-document counters cannot live in one process's memory.

**One sequencer per document, in the database.** ``doc_head`` holds each document's ``seq`` (the
highest committed seq) and ``next_stamp``. A group commit, in one transaction:

1. creates the head rows it needs (``INSERT ... ON CONFLICT DO NOTHING``; a document's head is
   never deleted, so this runs once per document per node);
2. locks them: ``SELECT ... WHERE doc_id = ANY(...) ORDER BY doc_id FOR UPDATE``;
3. checks every append's ``stamp_base`` against the locked ``next_stamp`` (plus what earlier
   appends of the same batch took), assigns seqs ``seq+1 ...`` and stamps, and writes the log
   rows and the advanced heads;
4. commits, and only then resolves the callers' futures.

Why the seqs and stamps are unique and gap-free with concurrent writers on different nodes:

* *Serialised per document.* ``FOR UPDATE`` gives a transaction the head row until it commits or
  rolls back; a second transaction locking the same row waits, and under READ COMMITTED its
  ``SELECT ... FOR UPDATE`` then returns the row as the first one *committed* it. So every
  transaction that writes a document starts from the previous writer's committed counters:
  seqs and stamps handed out are exactly ``old+1 ... old+n``, never reused and never skipped.
* *Exists only if committed.* Counters advance in the same transaction as the log rows. A
  rollback (error, crash, SIGKILL, lost connection) discards both; the next writer starts from
  the unchanged head. No PostgreSQL ``SEQUENCE`` is used for this because sequences are not
  transactional (a rolled-back ``nextval`` leaves a gap).
* *A stale stamp base is refused, not renumbered.* A stamp update carries its numbers in its
  bytes, chosen before the commit. If another node stamped the document meanwhile, the locked
  ``next_stamp`` differs from ``stamp_base``: that append alone gets
  :class:`~relay.store.base.StampConflictError` and writes nothing; the batch's other appends are
  unaffected (the check happens before anything is written, so no savepoint is needed).
* *No deadlock between nodes.* Every transaction locks its head rows in ``doc_id`` order (the
  sort runs below PostgreSQL's row-locking step), and creates missing ones in the same order,
  so two group commits that share documents wait for each other instead of deadlocking. Should
  PostgreSQL still report a deadlock or serialisation failure, the batch rolls back and is
  retried.
* The primary key ``(doc_id, seq)`` of ``doc_log`` is a last line of defence: a bug that reused a
  seq would fail the commit rather than store two rows with one seq.

Order within one node is the queue's order, exactly as in the SQLite store: one writer task
takes everything queued, in ``enqueue_append`` call order, into one transaction.

**Compaction** reads snapshot + log, folds them off the event loop, and hands the result to the
writer, whose transaction locks the head, checks that nobody compacted meanwhile
(``snapshot_seq`` unchanged), writes the snapshot and deletes only ``seq <= covered``. An
append that committed meanwhile, on any node, has a higher seq and stays.

**Replica reads** (``replica_url``): :meth:`load` reads snapshot + log + seq from the replica in
one statement, then asks the primary, by the primary key, for the document's head and any log
rows after the replica's seq. A replica that lags therefore costs a few extra rows from the
primary, never a stale document or a stale stamp counter (``next_stamp`` always comes from the
primary). If the primary compacted past what the replica has, or the replica is unreachable,
the load reads everything from the primary. Operator statistics read from the replica.

**Acknowledged means committed.** ``synchronous_commit`` is forced ``on`` for the writer's
sessions, so ``COMMIT`` returns only after the commit record is flushed on the primary (and, if
the operator configured synchronous standbys, on them). A commit whose outcome is unknown (the
connection broke during it) is reported as a failure: the caller resends, and a CRDT update
applied twice is the same document; a repeated stamp base then finds the counter advanced and is
refused, so a stamp is never handed out twice.

**A node that stops mid-commit** never holds a document for long: killed, its socket closes and
the server rolls its transaction back at once; cut off or frozen (no FIN reaches the server), its
session is ended after ``idle_in_transaction_s`` of silence inside a transaction. Either way the
row locks go with the transaction, nothing of it is stored, and the other nodes go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from relay.config import redact_url
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
    should_compact,
)
from relay.store.pg_migrations import (
    DOCUMENT_COMPONENT,
    DOCUMENT_MIGRATIONS,
    apply_migrations,
    load_or_create_epoch,
)
from relay.store.sqlite import _fold

__all__ = ["PostgresDocumentStore"]

log = logging.getLogger("quickslot.relay.store.postgres")

#: ``on_commit(requests_in_batch, seconds)``, as in the SQLite store.
CommitHook = Callable[[int, float], None]

# SQLSTATEs after which the whole transaction may simply be run again.
_RETRYABLE: Final = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_MAX_RETRIES: Final = 5

# One statement = one snapshot under READ COMMITTED, so a compaction committing between the
# snapshot and the log rows cannot make the load miss the rows it folded.
_LOAD_SQL: Final = """
SELECT 0 AS kind, s.covered_seq AS seq, s.data, 0::bigint AS stamp FROM doc_snapshot s WHERE s.doc_id = $1
UNION ALL
SELECT 1, l.seq, l.data, 0 FROM doc_log l
 WHERE l.doc_id = $1
   AND l.seq > COALESCE((SELECT covered_seq FROM doc_snapshot WHERE doc_id = $1), 0)
UNION ALL
SELECT 2, h.seq, NULL, h.next_stamp FROM doc_head h WHERE h.doc_id = $1
"""

# The primary's part of a replica load: the head and the log rows after the replica's seq.
_TAIL_SQL: Final = """
SELECT 2 AS kind, h.seq, NULL::bytea AS data, h.next_stamp AS stamp, h.snapshot_seq
  FROM doc_head h WHERE h.doc_id = $1
UNION ALL
SELECT 1, l.seq, l.data, 0, 0 FROM doc_log l WHERE l.doc_id = $1 AND l.seq > $2
"""

_LOCK_HEADS: Final = """
SELECT doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes
  FROM doc_head WHERE doc_id = ANY($1::text[]) ORDER BY doc_id FOR UPDATE
"""
_CREATE_HEADS: Final = """
INSERT INTO doc_head (doc_id) SELECT d FROM unnest($1::text[]) AS d ORDER BY d
ON CONFLICT (doc_id) DO NOTHING
"""
_INSERT_LOG: Final = """
INSERT INTO doc_log (doc_id, seq, data)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
"""
_UPDATE_HEADS: Final = """
UPDATE doc_head h SET seq = v.seq, next_stamp = v.next_stamp, log_rows = v.log_rows,
       log_bytes = v.log_bytes, snapshot_seq = v.snapshot_seq, snapshot_bytes = v.snapshot_bytes,
       updated = now()
  FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
              $7::bigint[]) AS v(doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes)
 WHERE h.doc_id = v.doc_id
"""
_DELETE_COVERED: Final = """
WITH gone AS (DELETE FROM doc_log WHERE doc_id = $1 AND seq <= $2 RETURNING octet_length(data) AS n)
SELECT count(*) AS rows, COALESCE(sum(n), 0) AS bytes FROM gone
"""
_UPSERT_SNAPSHOT: Final = """
INSERT INTO doc_snapshot (doc_id, data, covered_seq) VALUES ($1, $2, $3)
ON CONFLICT (doc_id) DO UPDATE SET data = excluded.data, covered_seq = excluded.covered_seq,
                                   created = now()
"""
_STATS_SQL: Final = """
SELECT count(*), COALESCE(sum(log_rows), 0), COALESCE(sum(log_bytes), 0),
       COALESCE(sum(snapshot_bytes), 0) FROM doc_head
"""


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
    base_snapshot_seq: int
    future: asyncio.Future[CompactionResult | None]


_Job = _Append | _Floor | _CompactWrite
_Outcome = AppendResult | int | CompactionResult | None | BaseException


class _Stop:
    """Queue sentinel: the writer finishes what is before it and exits."""


_STOP: Final = _Stop()


class _OutcomeUnknown(StoreError):
    """The connection broke while the transaction was in flight: it may or may not have committed."""


class PostgresDocumentStore:
    """:class:`relay.store.base.DocumentStore` on a PostgreSQL database (see the module docstring).

    ``store = await PostgresDocumentStore.open(url, replica_url=...)``, ``await store.close()``.
    Any number of store objects, in any number of processes, may share one database.
    """

    def __init__(
        self,
        url: str,
        *,
        replica_url: str | None = None,
        max_batch: int = 512,
        auto_compact: bool = True,
        compact_min_bytes: int = 64 * 1024,
        max_concurrent_compactions: int = 2,
        readers: int = 4,
        on_commit: CommitHook | None = None,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        idle_in_transaction_s: float = 10.0,
    ) -> None:
        if max_batch < 1 or readers < 1 or max_concurrent_compactions < 1:
            raise ValueError("max_batch, readers and max_concurrent_compactions must be >= 1")
        self.url = url
        self.replica_url = replica_url
        self.max_batch = max_batch
        self.auto_compact = auto_compact
        self.compact_min_bytes = compact_min_bytes
        self._reader_count = readers
        self._on_commit = on_commit
        self._command_timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._idle_in_transaction_ms = idle_in_transaction_s * 1000
        self._epoch: str | None = None
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._replica: asyncpg.Pool | None = None
        #: Documents whose head row is known to exist (heads are never deleted).
        self._known_heads: set[str] = set()
        self._queue: asyncio.Queue[_Job | _Stop] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._compactions: dict[str, asyncio.Task[None]] = {}
        self._compaction_slots = asyncio.Semaphore(max_concurrent_compactions)
        self._closing = False
        self._closed = asyncio.Event()
        self._commits = 0
        self._appends = 0
        self._compacted = 0
        self._largest_batch = 0
        #: Loads whose tail the primary had to supply (the replica lagged) - for tests and metrics.
        self.replica_catch_ups = 0
        self.replica_fallbacks = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresDocumentStore:
        store = cls(url, **options)
        await store.start()
        return store

    async def __aenter__(self) -> PostgresDocumentStore:
        if self._writer is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._writer is not None or self._closing:
            raise StoreError("store already started")
        try:
            writer = await self._connect_writer()
            try:
                applied = await apply_migrations(writer, DOCUMENT_COMPONENT, DOCUMENT_MIGRATIONS)
                self._epoch = await load_or_create_epoch(writer)
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=1,
                    max_size=self._reader_count,
                    command_timeout=self._command_timeout,
                    timeout=self._connect_timeout,
                )
                if self.replica_url is not None:
                    self._replica = await asyncpg.create_pool(
                        self.replica_url,
                        min_size=0,
                        max_size=self._reader_count,
                        command_timeout=self._command_timeout,
                        timeout=self._connect_timeout,
                    )
            except BaseException:
                await writer.close()
                raise
        except BaseException as exc:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None
            if isinstance(exc, (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)):
                raise StoreError(
                    f"cannot open the PostgreSQL store at {redact_url(self.url)}: {exc}"
                ) from exc
            raise
        if applied:
            log.info("applied document schema migrations %s", applied)
        await self._check_replica()
        self._writer = writer
        self._writer_task = asyncio.create_task(self._run_writer(), name="relay-store-writer")

    async def _check_replica(self) -> None:
        """Say at start if the replica is unreachable or is not a standby; not fatal (loads fall
        back to the primary), but an operator should hear about it before the first load."""
        if self._replica is None:
            return
        try:
            standby = await self._replica.fetchval("SELECT pg_is_in_recovery()")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning(
                "! replica %s unreachable (%s): reads go to the primary", redact_url(self.replica_url), exc
            )
            return
        if not standby:
            log.warning("! %s is not a standby: is --store-replica right?", redact_url(self.replica_url))

    async def _connect_writer(self) -> asyncpg.Connection:
        conn = await asyncpg.connect(
            self.url, timeout=self._connect_timeout, command_timeout=self._command_timeout
        )
        # Acknowledged = flushed: never let a server default of synchronous_commit=off weaken it.
        # A node cut off mid-transaction (network partition, frozen VM: no FIN reaches the server)
        # would hold its documents' row locks until TCP keepalive noticed, hours by default; the
        # server ends such a session after a few idle seconds instead. Our transactions never
        # idle: they are a handful of back-to-back statements.
        await conn.execute(
            "SET synchronous_commit = on; "
            f"SET idle_in_transaction_session_timeout = {int(self._idle_in_transaction_ms)}"
        )
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
            if self._writer is not None:
                await _close_quietly(self._writer)
                self._writer = None
            for pool in (self._pool, self._replica):
                if pool is not None:
                    try:
                        await asyncio.wait_for(pool.close(), 10.0)
                    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        pool.terminate()
            self._pool = self._replica = None
        finally:
            self._closed.set()

    @property
    def epoch(self) -> str:
        if self._epoch is None:
            raise StoreError("store not started")
        return self._epoch

    @property
    def compactions_done(self) -> int:
        return self._compacted

    def _primary(self) -> asyncpg.Pool:
        if self._pool is None or self._closing:
            raise StoreClosedError("store is closed")
        return self._pool

    # --- reads -------------------------------------------------------------------------------

    async def load(self, doc_id: str) -> StoredDocument:
        check_doc_id(doc_id)
        if self._replica is None:
            return await self._load_primary(doc_id)
        try:
            rows = await self._replica.fetch(_LOAD_SQL, doc_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.replica_fallbacks += 1
            log.warning("! replica read of %s failed (%s); reading the primary", doc_id, exc)
            return await self._load_primary(doc_id)
        from_replica = _assemble(doc_id, rows)
        try:
            tail = await self._primary().fetch(_TAIL_SQL, doc_id, from_replica.seq)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"{doc_id}: cannot read the document head from the primary: {exc}") from exc
        head = [r for r in tail if r["kind"] == 2]
        if not head:
            if from_replica.seq:  # the replica has a document the primary lacks: not our replica
                raise StoreError(f"{doc_id}: the replica has seq {from_replica.seq}, the primary nothing")
            return from_replica
        seq, next_stamp, snapshot_seq = (
            int(head[0]["seq"]),
            int(head[0]["stamp"]),
            int(head[0]["snapshot_seq"]),
        )
        extra = sorted((int(r["seq"]), bytes(r["data"])) for r in tail if r["kind"] == 1)
        if seq < from_replica.seq:
            raise StoreError(
                f"{doc_id}: the replica is ahead of the primary (seq {from_replica.seq} > {seq})"
            )
        if seq == from_replica.seq:
            return _with_stamp(from_replica, next_stamp)
        expected = list(range(from_replica.seq + 1, seq + 1))
        if snapshot_seq > from_replica.seq or [s for s, _ in extra] != expected:
            # The primary compacted rows the replica had not seen yet (or committed more between
            # our two reads in a way we cannot stitch): read the whole document from the primary.
            self.replica_fallbacks += 1
            return await self._load_primary(doc_id)
        self.replica_catch_ups += 1
        return StoredDocument(
            doc_id=doc_id,
            snapshot=from_replica.snapshot,
            snapshot_seq=from_replica.snapshot_seq,
            updates=from_replica.updates + tuple(extra),
            seq=seq,
            next_stamp=next_stamp,
        )

    async def _load_primary(self, doc_id: str) -> StoredDocument:
        try:
            rows = await self._primary().fetch(_LOAD_SQL, doc_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"{doc_id}: load failed: {exc}") from exc
        return _assemble(doc_id, rows)

    async def stats(self) -> StoreStats:
        row = None
        if self._replica is not None:
            try:
                row = await self._replica.fetchrow(_STATS_SQL)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("! replica stats failed (%s); reading the primary", exc)
        if row is None:
            row = await self._primary().fetchrow(_STATS_SQL)
        assert row is not None
        documents, log_rows, log_bytes, snapshot_bytes = (int(v) for v in row.values())
        return StoreStats(
            documents=documents,
            log_rows=log_rows,
            log_bytes=log_bytes,
            snapshot_bytes=snapshot_bytes,
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

    # --- compaction --------------------------------------------------------------------------

    async def compact(self, doc_id: str) -> CompactionResult | None:
        # From the primary: the fold must cover rows the writer will find there.
        stored = await self._load_primary(check_doc_id(doc_id))
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
        rows = await self._primary().fetch("SELECT doc_id FROM doc_head WHERE log_rows > 0 ORDER BY doc_id")
        results = []
        for row in rows:
            result = await self.compact(str(row["doc_id"]))
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
                log.debug("= compacted %s up to seq %d", doc_id, result.covered_seq)
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
            try:
                await self._commit_batch(batch)
            except Exception as exc:  # never let the writer die with requests waiting
                log.exception("! writer failed")
                for job in batch:
                    _settle(job, _as_store_error(exc))
            if stop:
                return

    async def _commit_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._transaction(batch)
        except _OutcomeUnknown as exc:
            # Not retried one by one: the batch may have committed, and repeating it would
            # append its updates twice. Every caller hears "failed" and resends (idempotent).
            for job in batch:
                _settle(job, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], _as_store_error(exc))
                return
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
            except Exception:
                log.exception("! on_commit hook failed")
        for job, outcome in zip(batch, outcomes, strict=True):
            _settle(job, outcome)

    async def _writer_connection(self) -> asyncpg.Connection:
        conn = self._writer
        if conn is None or conn.is_closed():
            if conn is not None:
                log.warning("! the store's writer connection was lost; reconnecting")
            try:
                conn = await self._connect_writer()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise StoreError(f"cannot reach PostgreSQL at {redact_url(self.url)}: {exc}") from exc
            self._writer = conn
        return conn

    async def _transaction(self, batch: list[_Job]) -> list[_Outcome]:
        """Run ``batch`` in one transaction, retrying deadlocks; outcomes hold once this returns."""
        for attempt in range(_MAX_RETRIES):
            conn = await self._writer_connection()
            try:
                outcomes, heads = await self._run_transaction(conn, batch)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRYABLE and attempt + 1 < _MAX_RETRIES:
                    await asyncio.sleep(0.005 * (attempt + 1))
                    continue
                raise
            except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
                await _close_quietly(conn)
                raise _OutcomeUnknown(f"connection to PostgreSQL lost during a commit: {exc}") from exc
            break
        self._commits += 1
        self._appends += sum(1 for job in batch if isinstance(job, _Append))
        self._compacted += sum(1 for outcome in outcomes if isinstance(outcome, CompactionResult))
        self._largest_batch = max(self._largest_batch, len(batch))
        if self.auto_compact:
            for doc_id, head in heads.items():
                if should_compact(head.log_bytes, head.snapshot_bytes, self.compact_min_bytes):
                    self._schedule_compaction(doc_id)
        return outcomes

    async def _run_transaction(
        self, conn: asyncpg.Connection, batch: list[_Job]
    ) -> tuple[list[_Outcome], dict[str, _Head]]:
        doc_ids = sorted({job.doc_id for job in batch})
        async with conn.transaction():
            missing = [d for d in doc_ids if d not in self._known_heads]
            if missing:
                await conn.execute(_CREATE_HEADS, missing)
            heads = _heads(await conn.fetch(_LOCK_HEADS, doc_ids))
            if len(heads) != len(doc_ids):
                # Heads this node believed created are gone: the database was replaced under a
                # running node (a restore). Create them now; rows already locked stay locked.
                lost = [d for d in doc_ids if d not in heads]
                self._known_heads.difference_update(lost)
                log.warning("! document heads vanished from the database (restored?): %s", lost[:5])
                await conn.execute(_CREATE_HEADS, lost)
                heads = _heads(await conn.fetch(_LOCK_HEADS, doc_ids))
                if len(heads) != len(doc_ids):
                    raise StoreError(
                        f"document heads missing after creating them: {set(doc_ids) - set(heads)}"
                    )
            log_ids: list[str] = []
            log_seqs: list[int] = []
            log_data: list[bytes] = []
            touched: dict[str, _Head] = {}
            appended: dict[str, _Head] = {}
            outcomes: list[_Outcome] = []
            for job in batch:
                head = heads[job.doc_id]
                if isinstance(job, _Append):
                    if job.stamp_count and job.stamp_base != head.next_stamp:
                        outcomes.append(
                            StampConflictError(
                                f"{job.doc_id}: stamp base {job.stamp_base}, but the next stamp is "
                                f"{head.next_stamp}"
                            )
                        )
                        continue
                    first = head.seq + 1
                    for offset, update in enumerate(job.updates):
                        log_ids.append(job.doc_id)
                        log_seqs.append(first + offset)
                        log_data.append(update)
                    count = len(job.updates)
                    head.seq += count
                    head.log_rows += count
                    head.log_bytes += sum(len(u) for u in job.updates)
                    stamps = range(head.next_stamp, head.next_stamp + job.stamp_count)
                    head.next_stamp += job.stamp_count
                    outcomes.append(AppendResult(seqs=tuple(range(first, first + count)), stamps=stamps))
                    appended[job.doc_id] = head
                elif isinstance(job, _Floor):
                    head.next_stamp = max(head.next_stamp, job.next_stamp)
                    outcomes.append(head.next_stamp)
                else:
                    outcomes.append(await _write_compaction(conn, head, job))
                touched[job.doc_id] = head
            if log_ids:
                await conn.execute(_INSERT_LOG, log_ids, log_seqs, log_data)
            if touched:
                hs = list(touched.values())
                await conn.execute(
                    _UPDATE_HEADS,
                    [h.doc_id for h in hs],
                    [h.seq for h in hs],
                    [h.next_stamp for h in hs],
                    [h.log_rows for h in hs],
                    [h.log_bytes for h in hs],
                    [h.snapshot_seq for h in hs],
                    [h.snapshot_bytes for h in hs],
                )
        # Committed: only now may later batches skip creating these heads.
        self._known_heads.update(doc_ids)
        return outcomes, appended


def _heads(rows: Sequence[asyncpg.Record]) -> dict[str, _Head]:
    return {
        str(r["doc_id"]): _Head(
            str(r["doc_id"]),
            int(r["seq"]),
            int(r["next_stamp"]),
            int(r["log_rows"]),
            int(r["log_bytes"]),
            int(r["snapshot_seq"]),
            int(r["snapshot_bytes"]),
        )
        for r in rows
    }


async def _write_compaction(
    conn: asyncpg.Connection, head: _Head, job: _CompactWrite
) -> CompactionResult | None:
    """Inside the writer's transaction, with ``head`` locked."""
    covered = job.covered_seq
    if head.snapshot_seq != job.base_snapshot_seq or not head.snapshot_seq < covered <= head.seq:
        return None  # another compaction (maybe on another node) got there first; its snapshot stands
    # Every row <= covered is older than this batch's appends (their seqs start above the
    # committed head), so this deletes exactly the rows the fold read.
    gone = await conn.fetchrow(_DELETE_COVERED, head.doc_id, covered)
    removed_rows, removed_bytes = (int(gone["rows"]), int(gone["bytes"])) if gone else (0, 0)
    await conn.execute(_UPSERT_SNAPSHOT, head.doc_id, job.snapshot, covered)
    head.log_rows -= removed_rows
    head.log_bytes -= removed_bytes
    head.snapshot_seq = covered
    head.snapshot_bytes = len(job.snapshot)
    return CompactionResult(
        doc_id=head.doc_id,
        covered_seq=covered,
        snapshot_bytes=len(job.snapshot),
        removed_rows=removed_rows,
        removed_bytes=removed_bytes,
    )


def _assemble(doc_id: str, rows: Sequence[asyncpg.Record]) -> StoredDocument:
    snapshot: bytes | None = None
    snapshot_seq = 0
    updates: list[tuple[int, bytes]] = []
    seq = 0
    next_stamp = FIRST_STAMP
    for row in rows:
        kind = row["kind"]
        if kind == 0:
            snapshot, snapshot_seq = bytes(row["data"]), int(row["seq"])
        elif kind == 1:
            updates.append((int(row["seq"]), bytes(row["data"])))
        else:
            seq, next_stamp = int(row["seq"]), int(row["stamp"])
    updates.sort(key=lambda item: item[0])
    return StoredDocument(
        doc_id=doc_id,
        snapshot=snapshot,
        snapshot_seq=snapshot_seq,
        updates=tuple(updates),
        seq=seq,
        next_stamp=next_stamp,
    )


def _with_stamp(doc: StoredDocument, next_stamp: int) -> StoredDocument:
    return StoredDocument(
        doc_id=doc.doc_id,
        snapshot=doc.snapshot,
        snapshot_seq=doc.snapshot_seq,
        updates=doc.updates,
        seq=doc.seq,
        next_stamp=next_stamp,
    )


def _settle(job: _Job, outcome: _Outcome) -> None:
    future: asyncio.Future[object] = job.future  # type: ignore[assignment]
    if future.done():
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


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5.0)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()
