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
from collections.abc import Mapping
from typing import Any, Final

import asyncpg

from relay.ops.config import redact_url
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
)
from relay.store.group_commit import (
    Append,
    CommitHook,
    CompactWrite,
    Floor,
    GroupCommitStore,
    Head,
    Job,
    Outcome,
    OutcomeUnknownError,
    assemble,
    compaction_applies,
    heads_from_rows,
    raise_floor,
    record_compaction,
    take_append,
)
from relay.store.pg_migrations import (
    DOCUMENT_COMPONENT,
    DOCUMENT_MIGRATIONS,
    apply_migrations,
    load_or_create_epoch,
)

__all__ = ["PostgresDocumentStore"]

log = get_logger(__name__)

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


class PostgresDocumentStore(GroupCommitStore):
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
        super().__init__(
            max_batch=max_batch,
            auto_compact=auto_compact,
            compact_min_bytes=compact_min_bytes,
            max_concurrent_compactions=max_concurrent_compactions,
            readers=readers,
            on_commit=on_commit,
        )
        self.url = url
        self.replica_url = replica_url
        self._command_timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._idle_in_transaction_ms = idle_in_transaction_s * 1000
        self._writer: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._replica: asyncpg.Pool | None = None
        #: Documents whose head row is known to exist (heads are never deleted).
        self._known_heads: set[str] = set()
        #: Loads whose tail the primary had to supply (the replica lagged) - for tests and metrics.
        self.replica_catch_ups = 0
        self.replica_fallbacks = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, **options: Any) -> PostgresDocumentStore:
        store = cls(url, **options)
        await store.start()
        return store

    def _connected(self) -> bool:
        return self._writer is not None

    async def start(self) -> None:
        self._check_not_started()
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
            log_event(log, "schema_migrations_applied", versions=applied)
        await self._check_replica()
        self._writer = writer
        self._start_writer()

    async def _check_replica(self) -> None:
        """Say at start if the replica is unreachable or is not a standby; not fatal (loads fall
        back to the primary), but an operator should hear about it before the first load."""
        if self._replica is None:
            return
        try:
            standby = await self._replica.fetchval("SELECT pg_is_in_recovery()")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log_event(
                log,
                "replica_unreachable",
                logging.WARNING,
                replica=redact_url(self.replica_url),
                error=repr(exc),
                hint="reads go to the primary",
            )
            return
        if not standby:
            log_event(
                log,
                "replica_not_a_standby",
                logging.WARNING,
                replica=redact_url(self.replica_url),
                hint="is --store-replica right?",
            )

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

    async def _release(self) -> None:
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

    def _primary(self) -> asyncpg.Pool:
        if self._pool is None or self._closing:
            raise StoreClosedError("store is closed")
        return self._pool

    # --- meta (rows of relay_meta beside the epoch; see relay.store.base) --------------------

    async def get_meta(self, key: str) -> str | None:
        check_meta_key(key)
        value = await self._primary().fetchval("SELECT value FROM relay_meta WHERE key = $1", key)
        return None if value is None else str(value)

    async def put_meta(self, values: Mapping[str, str | None]) -> None:
        items = [(check_meta_key(k), v) for k, v in values.items()]
        async with self._primary().acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")  # durable, like the appends
            for key, value in items:
                if value is None:
                    await conn.execute("DELETE FROM relay_meta WHERE key = $1", key)
                else:
                    await conn.execute(
                        "INSERT INTO relay_meta (key, value) VALUES ($1, $2)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        key,
                        value,
                    )

    async def docs_updated_since(self, since: float) -> list[str]:
        rows = await self._primary().fetch(
            "SELECT doc_id FROM doc_head WHERE updated >= to_timestamp($1) ORDER BY doc_id", since
        )
        return [str(r["doc_id"]) for r in rows]

    # --- reads -------------------------------------------------------------------------------

    async def load(self, doc_id: str) -> StoredDocument:
        check_doc_id(doc_id)
        if self._replica is None:
            return await self._load_primary(doc_id)
        try:
            rows = await self._replica.fetch(_LOAD_SQL, doc_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            self.replica_fallbacks += 1
            log_event(
                log,
                "replica_read_failed",
                logging.WARNING,
                doc=doc_id,
                error=repr(exc),
                hint="reading the primary",
            )
            return await self._load_primary(doc_id)
        from_replica = assemble(doc_id, rows)
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
        return assemble(doc_id, rows)

    async def stats(self) -> StoreStats:
        row = None
        if self._replica is not None:
            try:
                row = await self._replica.fetchrow(_STATS_SQL)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log_event(
                    log, "replica_stats_failed", logging.WARNING, error=repr(exc), hint="reading the primary"
                )
        if row is None:
            row = await self._primary().fetchrow(_STATS_SQL)
        assert row is not None
        documents, log_rows, log_bytes, snapshot_bytes = (int(v) for v in row.values())
        return self._stats(documents, log_rows, log_bytes, snapshot_bytes)

    # --- compaction --------------------------------------------------------------------------

    async def _load_for_compaction(self, doc_id: str) -> StoredDocument:
        # From the primary: the fold must cover rows the writer will find there.
        return await self._load_primary(check_doc_id(doc_id))

    async def _doc_ids_with_log(self) -> list[str]:
        rows = await self._primary().fetch("SELECT doc_id FROM doc_head WHERE log_rows > 0 ORDER BY doc_id")
        return [str(row["doc_id"]) for row in rows]

    # --- the writer's transaction ------------------------------------------------------------

    async def _writer_connection(self) -> asyncpg.Connection:
        conn = self._writer
        if conn is None or conn.is_closed():
            if conn is not None:
                log_event(log, "writer_connection_lost", logging.WARNING, hint="reconnecting")
            try:
                conn = await self._connect_writer()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                raise StoreError(f"cannot reach PostgreSQL at {redact_url(self.url)}: {exc}") from exc
            self._writer = conn
        return conn

    async def _write(self, batch: list[Job]) -> tuple[list[Outcome], dict[str, Head]]:
        """Run ``batch`` in one transaction, retrying deadlocks."""
        for attempt in range(_MAX_RETRIES):
            conn = await self._writer_connection()
            try:
                return await self._run_transaction(conn, batch)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in _RETRYABLE and attempt + 1 < _MAX_RETRIES:
                    await asyncio.sleep(0.005 * (attempt + 1))
                    continue
                raise
            except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
                await _close_quietly(conn)
                raise OutcomeUnknownError(f"connection to PostgreSQL lost during a commit: {exc}") from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _run_transaction(
        self, conn: asyncpg.Connection, batch: list[Job]
    ) -> tuple[list[Outcome], dict[str, Head]]:
        doc_ids = sorted({job.doc_id for job in batch})
        async with conn.transaction():
            missing = [d for d in doc_ids if d not in self._known_heads]
            if missing:
                await conn.execute(_CREATE_HEADS, missing)
            heads = heads_from_rows(await conn.fetch(_LOCK_HEADS, doc_ids))
            if len(heads) != len(doc_ids):
                # Heads this node believed created are gone: the database was replaced under a
                # running node (a restore). Create them now; rows already locked stay locked.
                lost = [d for d in doc_ids if d not in heads]
                self._known_heads.difference_update(lost)
                log_event(log, "document_heads_vanished", logging.WARNING, docs=lost[:5], hint="restored?")
                await conn.execute(_CREATE_HEADS, lost)
                heads = heads_from_rows(await conn.fetch(_LOCK_HEADS, doc_ids))
                if len(heads) != len(doc_ids):
                    raise StoreError(
                        f"document heads missing after creating them: {set(doc_ids) - set(heads)}"
                    )
            log_ids: list[str] = []
            log_seqs: list[int] = []
            log_data: list[bytes] = []
            touched: dict[str, Head] = {}
            appended: dict[str, Head] = {}
            outcomes: list[Outcome] = []
            for job in batch:
                head = heads[job.doc_id]
                if isinstance(job, Append):
                    result = take_append(head, job.updates, job.stamp_base, job.stamp_count)
                    outcomes.append(result)
                    if isinstance(result, StampConflictError):
                        continue
                    log_ids.extend(job.doc_id for _ in job.updates)
                    log_seqs.extend(result.seqs)
                    log_data.extend(job.updates)
                    appended[job.doc_id] = head
                elif isinstance(job, Floor):
                    outcomes.append(raise_floor(head, job.next_stamp))
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


async def _write_compaction(
    conn: asyncpg.Connection, head: Head, job: CompactWrite
) -> CompactionResult | None:
    """Inside the writer's transaction, with ``head`` locked."""
    covered = job.covered_seq
    if not compaction_applies(head, job.base_snapshot_seq, covered):
        return None  # another compaction (maybe on another node) got there first; its snapshot stands
    # Every row <= covered is older than this batch's appends (their seqs start above the
    # committed head), so this deletes exactly the rows the fold read.
    gone = await conn.fetchrow(_DELETE_COVERED, head.doc_id, covered)
    removed_rows, removed_bytes = (int(gone["rows"]), int(gone["bytes"])) if gone else (0, 0)
    await conn.execute(_UPSERT_SNAPSHOT, head.doc_id, job.snapshot, covered)
    return record_compaction(head, covered, len(job.snapshot), removed_rows, removed_bytes)


def _with_stamp(doc: StoredDocument, next_stamp: int) -> StoredDocument:
    return StoredDocument(
        doc_id=doc.doc_id,
        snapshot=doc.snapshot,
        snapshot_seq=doc.snapshot_seq,
        updates=doc.updates,
        seq=doc.seq,
        next_stamp=next_stamp,
    )


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 5.0)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()
