"""Group commit for the document stores: the one-queue, one-writer machinery both backends share.

Why a shared module: the SQLite and PostgreSQL stores make the same promises (:mod:`relay.store.base`)
through the same scheme, and a second copy of it would drift. Every write (appends, stamp floors,
compaction results) goes through one queue to one writer task, which takes everything queued (up
to ``max_batch``), runs it in one transaction, and only after the commit resolves each request's
future; a batch that fails is retried request by request so one bad request cannot fail its
neighbours. Compaction folds snapshot + log off the event loop and hands the result to the same
writer.

What stays in each backend (:class:`GroupCommitStore`'s abstract methods): how a transaction is run
(SQLite: one call into the writer's own thread; PostgreSQL: locked head rows and retries), how a
document is read for compaction, and what closing releases. The head arithmetic shared by both
transactions (seqs, stamps, floors, compaction bookkeeping) is in the small functions below, so the
two databases assign numbers by the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from crdt_core.engine import EngineError, Replica
from relay.ops.logging import get_logger, log_event
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

__all__ = [
    "Append",
    "CommitHook",
    "CompactWrite",
    "Floor",
    "GroupCommitStore",
    "Head",
    "Job",
    "Outcome",
    "OutcomeUnknownError",
    "assemble",
    "compaction_applies",
    "fold",
    "heads_from_rows",
    "raise_floor",
    "record_compaction",
    "settle",
    "take_append",
]

log = get_logger(__name__)

#: ``on_commit(requests_in_batch, seconds)``: a hook for the commit-latency histogram.
CommitHook = Callable[[int, float], None]


# --- writer requests ------------------------------------------------------------------------------


@dataclass(slots=True)
class Head:
    """A document's counters as the writer's transaction sees them (the ``doc_head`` row)."""

    doc_id: str
    seq: int = 0
    next_stamp: int = FIRST_STAMP
    log_rows: int = 0
    log_bytes: int = 0
    snapshot_seq: int = 0
    snapshot_bytes: int = 0


@dataclass(slots=True, eq=False)
class Append:
    doc_id: str
    updates: tuple[bytes, ...]
    stamp_base: int | None
    stamp_count: int
    future: asyncio.Future[AppendResult]


@dataclass(slots=True, eq=False)
class Floor:
    doc_id: str
    next_stamp: int
    future: asyncio.Future[int]


@dataclass(slots=True, eq=False)
class CompactWrite:
    doc_id: str
    snapshot: bytes
    covered_seq: int
    #: The snapshot seq the fold started from; if it changed, someone else compacted: skip.
    base_snapshot_seq: int
    future: asyncio.Future[CompactionResult | None]


Job = Append | Floor | CompactWrite
Outcome = AppendResult | int | CompactionResult | None | BaseException


class _Stop:
    """Queue sentinel: the writer finishes what is before it and exits."""


_STOP: Final = _Stop()


class OutcomeUnknownError(StoreError):
    """The connection broke while the transaction was in flight: it may or may not have committed.

    Such a batch is not retried one by one (repeating it could append its updates twice); every
    caller hears "failed" and resends, which is idempotent for CRDT updates.
    """


# --- the head arithmetic both transactions use ----------------------------------------------------


def take_append(
    head: Head, updates: tuple[bytes, ...], stamp_base: int | None, stamp_count: int
) -> AppendResult | StampConflictError:
    """Give ``updates`` the next seqs (``result.seqs``, in order) and ``stamp_count`` stamps.

    A stale ``stamp_base`` gets the error and leaves ``head`` untouched, so nothing of that append
    is written and the batch's other requests are unaffected.
    """
    if stamp_count and stamp_base != head.next_stamp:
        return StampConflictError(
            f"{head.doc_id}: stamp base {stamp_base}, but the next stamp is {head.next_stamp}"
        )
    first = head.seq + 1
    count = len(updates)
    head.seq += count
    head.log_rows += count
    head.log_bytes += sum(len(u) for u in updates)
    stamps = range(head.next_stamp, head.next_stamp + stamp_count)
    head.next_stamp += stamp_count
    return AppendResult(seqs=tuple(range(first, first + count)), stamps=stamps)


def raise_floor(head: Head, next_stamp: int) -> int:
    head.next_stamp = max(head.next_stamp, next_stamp)
    return head.next_stamp


def compaction_applies(head: Head, base_snapshot_seq: int, covered_seq: int) -> bool:
    """False when another compaction got there first (its snapshot stands) or the range is off."""
    return head.snapshot_seq == base_snapshot_seq and head.snapshot_seq < covered_seq <= head.seq


def record_compaction(
    head: Head, covered_seq: int, snapshot_bytes: int, removed_rows: int, removed_bytes: int
) -> CompactionResult:
    """Account a written snapshot and the deleted rows in ``head``."""
    head.log_rows -= removed_rows
    head.log_bytes -= removed_bytes
    head.snapshot_seq = covered_seq
    head.snapshot_bytes = snapshot_bytes
    return CompactionResult(
        doc_id=head.doc_id,
        covered_seq=covered_seq,
        snapshot_bytes=snapshot_bytes,
        removed_rows=removed_rows,
        removed_bytes=removed_bytes,
    )


def heads_from_rows(rows: Iterable[Iterable[Any]]) -> dict[str, Head]:
    """Rows of ``doc_id, seq, next_stamp, log_rows, log_bytes, snapshot_seq, snapshot_bytes``."""
    heads = {}
    for doc_id, *counters in rows:
        heads[str(doc_id)] = Head(str(doc_id), *(int(v) for v in counters))
    return heads


def assemble(doc_id: str, rows: Iterable[Iterable[Any]]) -> StoredDocument:
    """A document from the load query's rows ``(kind, seq, data, stamp)``.

    Kind 0 is the snapshot (seq: what it covers), 1 a log row, 2 the head (seq and next stamp).
    """
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


def fold(stored: StoredDocument) -> bytes:
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
            log_event(
                log,
                "log_row_unreadable",
                logging.ERROR,
                doc=stored.doc_id,
                seq=seq,
                error=repr(exc),
                hint="dropped by compaction",
            )
    return scratch.encode_state()


def settle(job: Job, outcome: Outcome) -> None:
    future: asyncio.Future[object] = job.future  # type: ignore[assignment]
    if future.done():  # nobody is waiting any more; the outcome stands regardless
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def as_store_error(exc: BaseException) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    error = StoreError(f"write transaction failed: {exc}")
    error.__cause__ = exc
    return error


# --- the queue, the writer and compaction scheduling ----------------------------------------------


class GroupCommitStore(ABC):
    """The backend-independent half of a document store: requests, the writer, compaction.

    A backend sets ``_epoch`` in its ``start``, starts the writer with :meth:`_start_writer` once
    its connections are up, and implements the abstract methods.
    """

    def __init__(
        self,
        *,
        max_batch: int,
        auto_compact: bool,
        compact_min_bytes: int,
        max_concurrent_compactions: int,
        readers: int,
        on_commit: CommitHook | None,
    ) -> None:
        if max_batch < 1 or readers < 1 or max_concurrent_compactions < 1:
            raise ValueError("max_batch, readers and max_concurrent_compactions must be >= 1")
        self.max_batch = max_batch
        self.auto_compact = auto_compact
        self.compact_min_bytes = compact_min_bytes
        self._reader_count = readers
        self._on_commit = on_commit
        #: ``on_compaction(seconds)``: a hook for the compaction-duration histogram (set after open).
        self.on_compaction: Callable[[float], None] | None = None
        self._epoch: str | None = None
        self._queue: asyncio.Queue[Job | _Stop] = asyncio.Queue()
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

    # --- what each backend supplies -----------------------------------------------------------

    @abstractmethod
    async def start(self) -> None:
        """Connect, prepare the schema, then :meth:`_start_writer`."""

    @abstractmethod
    def _connected(self) -> bool:
        """Whether the writer's connection is open."""

    @abstractmethod
    async def _write(self, batch: list[Job]) -> tuple[list[Outcome], dict[str, Head]]:
        """Run ``batch`` in one committed transaction: each job's outcome, and the heads of the
        documents that got appends (for the compaction rule)."""

    @abstractmethod
    async def _load_for_compaction(self, doc_id: str) -> StoredDocument:
        """Read the document where the writer will find the rows the fold covers."""

    @abstractmethod
    async def _doc_ids_with_log(self) -> list[str]:
        """Every document with log rows, in doc id order."""

    @abstractmethod
    async def _release(self) -> None:
        """Close the connections, once the writer has committed everything ordered."""

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if not self._connected():
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_not_started(self) -> None:
        if self._connected() or self._closing:
            raise StoreError("store already started")

    def _start_writer(self) -> None:
        self._writer_task = asyncio.create_task(self._run_writer(), name="relay-store-writer")

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
            await self._release()
        finally:
            self._closed.set()

    @property
    def epoch(self) -> str:
        if self._epoch is None:
            raise StoreError("store not started")
        return self._epoch

    @property
    def compactions_done(self) -> int:
        """Compactions committed since this store was opened (for the relay's metrics)."""
        return self._compacted

    def _stats(self, documents: int, log_rows: int, log_bytes: int, snapshot_bytes: int) -> StoreStats:
        """Stored sizes (read by the backend) with this object's counters."""
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

    # --- writes -------------------------------------------------------------------------------

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
        self._enqueue(Append(doc_id, items, stamp_base, stamp_count, future))
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
        self._enqueue(Floor(doc_id, next_stamp, future))
        return future

    async def set_stamp_floor(self, doc_id: str, next_stamp: int) -> int:
        return await asyncio.shield(self.enqueue_stamp_floor(doc_id, next_stamp))

    def _enqueue(self, job: Job) -> None:
        if self._closing or self._writer_task is None:
            raise StoreClosedError("store is closed")
        self._queue.put_nowait(job)

    # --- compaction ---------------------------------------------------------------------------

    async def compact(self, doc_id: str) -> CompactionResult | None:
        stored = await self._load_for_compaction(doc_id)
        if not stored.updates:
            return None
        snapshot = await asyncio.to_thread(fold, stored)
        future: asyncio.Future[CompactionResult | None] = asyncio.get_running_loop().create_future()
        self._enqueue(
            CompactWrite(
                doc_id=doc_id,
                snapshot=snapshot,
                covered_seq=stored.updates[-1][0],
                base_snapshot_seq=stored.snapshot_seq,
                future=future,
            )
        )
        return await asyncio.shield(future)

    async def compact_all(self) -> list[CompactionResult]:
        results = []
        for doc_id in await self._doc_ids_with_log():
            result = await self.compact(doc_id)
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
                started = time.monotonic()
                result = await self.compact(doc_id)
                seconds = time.monotonic() - started
            if result is not None:
                # Info, with its duration: a compaction folds the whole document (CPU in a
                # thread, then one write), so it shows beside latency it may explain.
                log_event(
                    log,
                    "compacted",
                    logging.INFO,
                    doc=doc_id,
                    seconds=round(seconds, 4),
                    covered_seq=result.covered_seq,
                    removed_rows=result.removed_rows,
                    removed_bytes=result.removed_bytes,
                    snapshot_bytes=result.snapshot_bytes,
                )
                if self.on_compaction is not None:
                    self.on_compaction(seconds)
        except (StoreClosedError, asyncio.CancelledError):
            pass
        except Exception:
            log_event(
                log,
                "compaction_failed",
                logging.ERROR,
                exc_info=True,
                doc=doc_id,
                hint="log kept, retried later",
            )

    # --- the writer (group commit) ------------------------------------------------------------

    async def _run_writer(self) -> None:
        while True:
            first = await self._queue.get()
            if isinstance(first, _Stop):
                return
            batch: list[Job] = [first]
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
                log_event(log, "writer_failed", logging.ERROR, exc_info=True)
                for job in batch:
                    settle(job, as_store_error(exc))
            if stop:
                return

    async def _commit_batch(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            outcomes = await self._transaction(batch)
        except OutcomeUnknownError as exc:
            for job in batch:
                settle(job, exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                settle(batch[0], as_store_error(exc))
                return
            # Isolate the culprit: retry each request in its own transaction, in order.
            log_event(
                log,
                "group_commit_failed",
                logging.WARNING,
                requests=len(batch),
                error=repr(exc),
                hint="retrying one by one",
            )
            for job in batch:
                try:
                    (outcome,) = await self._transaction([job])
                except Exception as single:
                    outcome = as_store_error(single)
                settle(job, outcome)
            return
        elapsed = time.perf_counter() - started
        if self._on_commit is not None:
            try:
                self._on_commit(len(batch), elapsed)
            except Exception:  # a metrics hook must not break commits
                log_event(log, "on_commit_hook_failed", logging.ERROR, exc_info=True)
        for job, outcome in zip(batch, outcomes, strict=True):
            settle(job, outcome)

    async def _transaction(self, batch: list[Job]) -> list[Outcome]:
        """Run ``batch`` in one write transaction; the outcomes are valid only once this returns."""
        outcomes, heads = await self._write(batch)
        self._commits += 1
        self._appends += sum(1 for job in batch if isinstance(job, Append))
        self._compacted += sum(1 for outcome in outcomes if isinstance(outcome, CompactionResult))
        self._largest_batch = max(self._largest_batch, len(batch))
        if self.auto_compact:
            for doc_id, head in heads.items():
                if should_compact(head.log_bytes, head.snapshot_bytes, self.compact_min_bytes):
                    self._schedule_compaction(doc_id)
        return outcomes
