"""The relay's loaded documents: load on first use, apply and store updates in order, unload when idle.

Why this module is careful: the worst bugs of y-websocket and Hocuspocus lived exactly here. A
document was loaded twice by two first users (one copy's updates were lost), an update arrived
while the document was loading and was applied to a copy that was then replaced, or a document
was unloaded (and its persistence flushed) while an update was still being written, so the next
load missed it. The rules below make each of those impossible, and the tests in
``tests/relay/documents/`` force each interleaving with events.

Theory of operation
-------------------
* Every document has one :class:`Entry` with an ``asyncio.Lock`` and a state: ``NEW`` (in the
  table, not loaded yet), ``LOADED``, ``UNLOADED`` (dropped; whoever still holds it must look the
  document up again). The table never holds two entries for one document.
* Everything that touches a document's replica runs under its lock: loading, validating and
  applying an update, reading, unloading. Whoever finds no entry inserts a ``NEW`` one without
  awaiting in between, so two first uses share it; the first to get the lock loads, the others
  wait on the lock and then see ``LOADED``: one load, and an update that arrives while loading
  waits and is applied after.
* Writing is pipelined: under the lock an update is validated (caller's ``check``), applied to the
  replica, the relay's own update is built (``build_extra``, e.g. booking stamps, with stamp numbers
  from the document's counter), and both are *ordered* in the store's group-commit queue; then the
  lock is released (:meth:`DocumentManager.order` returns here, with an :class:`Ordered` handle)
  and the caller awaits the commit or is called back when it is done. So the next update of the
  same document, or of the same connection, can be validated against the new state and share the
  same commit, and nothing interleaves between validate, apply, stamp and ordering.
* Because the replica can be ahead of the disk, every *read* (state vector, catch-up diff) first
  waits, under the lock, for the document's last ordered commit: nobody is ever shown an update or
  a stamp that is not durable (a crash would otherwise re-issue a stamp number someone has seen).
  A no-op update (a re-send) waits for the same barrier before it is acknowledged, because the
  data it duplicates may still be in flight.
* Unloading takes the lock, waits for the last ordered commit, re-checks that nobody used or pinned
  the document meanwhile, and only then drops it. An update that was waiting for the lock finds the
  entry ``UNLOADED``, looks the document up again and loads it from the store, which by then holds
  every committed update.
* If a commit fails, the replica holds an update the disk does not: the entry is marked poisoned
  and the next user drops and reloads it (after the remaining commits settle). What the lost
  write held was never shown to anyone (reads and deliveries wait for durability), so the
  reloaded replica may reuse its CRDT clocks.
* The relay writes (stamps) under its own Yjs client id, ``writer_id()`` (set by the hub:
  ``client_id_for("relay:<kid>", g)``, ``crdt_core.clientids``), because every replica refuses a
  stamp under any other id (``foreign_client``). Each load opens the replica under it; if it
  changed since (a key rotation), the replica is re-opened under the new id before the relay
  writes (one document copy per loaded document per rotation).

Several nodes (one shared store, a fan-out between nodes)
---------------------------------------------------------
With several relay nodes on one store, a document's seqs are handed out by the store's commits,
which interleave between nodes: this node may commit seq 9 while seq 8 (another node's) is still
on its way through the fan-out. So a loaded entry integrates seqs *in order*:

* ``entry.seq`` is the highest seq up to which every seq is in the replica and has been handed
  to ``on_durable`` (the hub's acks and deliveries). A commit whose first seq is not
  ``entry.seq + 1`` waits in ``entry.waiting`` (with its ``on_durable`` call) until the missing
  seqs arrive, so subscribers see every document's seqs in order whichever node stored them.
  With one node, commits are always the next seq and nothing ever waits.
* Another node's commit (:meth:`DocumentManager.remote_commit`) is applied to the replica
  without storing it (it is stored already) when its turn comes, synchronously, in the event
  loop: every holder of the lock does its replica work without awaiting in between, so this
  never lands in the middle of a validate-apply-stamp step. While an entry loads or refreshes,
  remote commits only wait; afterwards those the store already covered are dropped.
* A missing seq that has not arrived after ``gap_wait`` (a lost fan-out entry), a poisoned entry
  that subscribers hold (e.g. the store refused a stamp base another node had used:
  :class:`relay.store.base.StampConflictError`), or a fan-out reset leads to a *refresh*: under
  the lock, after the commits settle, the entry's waiting local commits are handed on, the
  document is reloaded from the store in place, and ``on_catchup(doc, diff, seq)`` gives the hub
  what the old replica lacked, to send as one update at the store's seq: a subscriber that
  missed anything sees a gap there and resyncs by state vector (docs/protocol.md 5.6). After a
  poisoned entry's refresh the seqs it gained are not caught up at once: they are on their way
  through the fan-out (``entry.expect``) and are handed on one by one as usual, each booking with
  its ``stamped`` summary; only what has not come after ``gap_wait`` is caught up so.
* Nothing is ordered on top of a stamping append still in flight. Another node may have used
  its stamp base first; the store then refuses it, and an update ordered after it (often the
  same client's next one, which depends on it) would otherwise be stored without it: stored
  with missing dependencies, and forwarded so to every client. So the next update of that
  document waits for the stamping commit; if it failed, the lock is released once (whoever
  queued meanwhile, e.g. the refused update ordered again, goes first) and the document is
  refreshed. One node alone never conflicts and never waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from crdt_core.engine import EngineError, Replica, covered_by
from relay.documents.entry import (
    LOADED,
    NEW,
    UNLOADED,
    Entry,
    Waiting,
    count_stamps,
    integrated,
    is_noop,
)
from relay.documents.results import (
    Applied,
    BuildExtra,
    CapacityError,
    Check,
    ManagerClosedError,
    ManagerStats,
    OnCommit,
    OnDurable,
    Pin,
    StampSequence,
)
from relay.ops.logging import get_logger, log_event
from relay.store.base import AppendResult, DocumentStore, StoredDocument, StoreError, check_doc_id

__all__ = ["DocumentManager", "Ordered"]

log = get_logger(__name__)

X = TypeVar("X")
T = TypeVar("T")


def _log_floor_failure(doc_id: str) -> Callable[[asyncio.Future[int]], None]:
    def done(future: asyncio.Future[int]) -> None:
        if not future.cancelled() and future.exception() is not None:
            # The append queued right behind it fails its stamp_base check and reports to its caller.
            log_event(log, "stamp_floor_failed", logging.ERROR, doc=doc_id, error=repr(future.exception()))

    return done


def _durable_callback(
    doc_id: str, on_durable: OnDurable[X], checked: X | None, extra: bytes | None
) -> Callable[[AppendResult], None]:
    def fire(result: AppendResult) -> None:
        try:
            on_durable(result, checked, extra)
        except Exception:
            log_event(log, "on_durable_callback_failed", logging.ERROR, exc_info=True, doc=doc_id)

    return fire


def _own_callback(
    doc_id: str, fn: Callable[[AppendResult, bytes], None] | None, update: bytes
) -> Callable[[AppendResult], None] | None:
    if fn is None:
        return None

    def fire(result: AppendResult) -> None:
        try:
            fn(result, update)
        except Exception:
            log_event(log, "own_update_callback_failed", logging.ERROR, exc_info=True, doc=doc_id)

    return fire


def _call(doc_id: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log_event(log, "delivery_callback_failed", logging.ERROR, exc_info=True, doc=doc_id)


class Ordered(Generic[X]):
    """An update validated, applied and ordered in the store, whose commit may still be running.

    What :meth:`DocumentManager.order` returns. :meth:`wait` gives the :class:`Applied` once it is
    durable; :meth:`add_done_callback` calls back instead (no task needed), with the ``Applied``
    or the exception :meth:`wait` would raise. Callbacks of one document's updates run in the
    order the updates were ordered. ``on_durable`` (given to ``order``) runs before them.
    """

    __slots__ = ("doc_id", "commit", "checked", "extra", "_barrier", "_seq", "_manager", "_entry")

    def __init__(
        self,
        manager: DocumentManager,
        entry: Entry,
        commit: asyncio.Future[AppendResult] | None,
        barrier: list[asyncio.Future[AppendResult]],
        checked: X | None,
        extra: bytes | None,
    ) -> None:
        self.doc_id = entry.doc_id
        #: The store's commit of this update (``None`` for a no-op: nothing is stored).
        self.commit = commit
        self.checked = checked
        self.extra = extra
        #: A no-op waits for every commit of its document ordered before it (what it repeats).
        self._barrier = barrier
        self._seq = entry.seq
        self._manager = manager
        self._entry = entry

    @property
    def noop(self) -> bool:
        return self.commit is None

    def _outcome(self) -> Applied[X] | BaseException:
        """The outcome; only once the commit (or, for a no-op, every barrier commit) is done."""
        entry = self._entry
        if self.commit is None:
            for future in self._barrier:
                if not self._manager._settle(entry, future):
                    return StoreError(f"{self.doc_id}: the update this one repeats failed to commit")
            seq = max((f.result().seq for f in self._barrier), default=self._seq)
            return Applied(doc_id=self.doc_id, seq=max(seq, self._seq), update_seq=None)
        commit = self.commit
        if not self._manager._settle(entry, commit):
            if commit.cancelled():
                return StoreError(f"{self.doc_id}: the commit was cancelled")
            exc = commit.exception()
            assert exc is not None
            return exc
        result = commit.result()
        return Applied(
            doc_id=self.doc_id,
            seq=result.seq,
            update_seq=result.seqs[0],
            extra=self.extra,
            extra_seq=result.seqs[1] if self.extra is not None else None,
            stamps=result.stamps,
            checked=self.checked,
        )

    async def wait(self) -> Applied[X]:
        """The outcome once durable. Cancelling the wait never cancels the commit.

        Raises:
            StoreError: the commit failed (or, for a no-op, a commit it repeats failed).
        """
        pending = [self.commit] if self.commit is not None else self._barrier
        if pending:
            await asyncio.wait([asyncio.shield(f) for f in pending])
        outcome = self._outcome()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def add_done_callback(self, fn: Callable[[Applied[X] | BaseException], None]) -> None:
        """Call ``fn(outcome)`` in the event loop once the outcome is known (never synchronously)."""
        pending = [self.commit] if self.commit is not None else list(self._barrier)
        loop = asyncio.get_running_loop()
        if not pending:
            loop.call_soon(lambda: fn(self._outcome()))
            return
        left = [len(pending)]

        def one_done(_future: asyncio.Future[AppendResult]) -> None:
            left[0] -= 1
            if left[0] == 0:
                fn(self._outcome())

        for future in pending:
            future.add_done_callback(one_done)


def _no_check(replica: Replica, update: bytes) -> None:
    return None


class DocumentManager:
    """The relay's in-memory documents, backed by a :class:`relay.store.base.DocumentStore`.

    Why one class this long (about 800 lines): its methods are the steps of one per-document
    state machine (the lock discipline, seq order and commit barriers of "Theory of operation"
    and "Several nodes"), and each step relies on every other keeping the same invariants on an
    :class:`relay.documents.entry.Entry` (lock held, ``seq`` and ``waiting`` in step, commits
    settled in order). Split into classes, one invariant would be kept in several places. What
    has no such coupling lives beside it: :mod:`relay.documents.results` (what callers hold and
    get back) and :mod:`relay.documents.entry` (one document's state).

    Args:
        store: where documents are loaded from and updates are appended to.
        idle_seconds: unload a document nobody has used (and nobody pins) for this long.
        sweep_interval: how often :meth:`start`'s background task looks for idle documents.
        max_documents: at most this many documents loaded at once (pinned ones included).
        max_bytes: at most about this many bytes of documents loaded (their stored size; the
            engine's memory is a small multiple of it). Least recently used unpinned documents
            are unloaded to make room; if none can be, loading another raises
            :class:`CapacityError`.
        highest_stamp: ``highest_stamp(replica) -> int``, the highest stamp number present in a
            freshly loaded document (0 if none). A relay restored from an older backup continues
            numbering after it, so it never hands out a number that clients already hold.
        capacity_wait: how long loading waits for room (every loaded document busy or pinned)
            before raising :class:`CapacityError`.
        clock: monotonic seconds, injectable for tests.
        gap_wait: with several nodes, how long a missing seq may stay missing before the
            document is refreshed from the store (see "Several nodes").

    ``on_catchup(doc, update, seq)``, set by the hub when several nodes share the store: after a
    refresh brought the document from ``entry.seq`` to ``seq``, ``update`` is what the old replica
    lacked. Setting it also makes a poisoned document that subscribers hold refresh in place.
    """

    def __init__(
        self,
        store: DocumentStore,
        *,
        idle_seconds: float = 300.0,
        sweep_interval: float | None = None,
        max_documents: int = 10_000,
        max_bytes: int = 512 * 1024 * 1024,
        highest_stamp: Callable[[Replica], int] | None = None,
        capacity_wait: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        gap_wait: float = 1.0,
    ) -> None:
        if max_documents < 1 or max_bytes < 1 or idle_seconds < 0:
            raise ValueError("max_documents and max_bytes must be >= 1, idle_seconds >= 0")
        self._store = store
        self.idle_seconds = idle_seconds
        self.sweep_interval = sweep_interval if sweep_interval is not None else max(idle_seconds / 4, 0.05)
        self.max_documents = max_documents
        self.max_bytes = max_bytes
        self._highest_stamp = highest_stamp
        self.capacity_wait = capacity_wait
        self._clock = clock
        self.gap_wait = gap_wait
        self.on_catchup: Callable[[str, bytes, int], None] | None = None
        #: ``on_load(seconds)`` after each document load from the store (a metrics histogram).
        self.on_load: Callable[[float], None] | None = None
        #: The Yjs client id the relay writes its own updates under (None: a random one, for
        #: managers whose builders write no signed records). Set by the hub.
        self.writer_id: Callable[[], int] | None = None
        #: Refreshes running at once (a fan-out reset refreshes every loaded document).
        self._refresh_slots = asyncio.Semaphore(8)
        #: Set whenever a document may have become evictable (a lock released, a doc dropped).
        self._room = asyncio.Event()
        self._entries: dict[str, Entry] = {}
        self._pins: dict[str, int] = {}
        self._loaded_bytes = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False
        # counters
        self._loads = 0
        self._unloads = 0
        self._evictions = 0
        self._noops = 0
        self._reloads = 0
        self._remote_applied = 0
        self._refreshes = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the idle sweeper (optional: :meth:`unload_idle` can be called directly instead)."""
        if self._sweeper is None and not self._closing:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="relay-doc-sweeper")

    async def close(self) -> None:
        """Refuse new work and wait for every ordered commit; the store stays open (its owner closes it)."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        await asyncio.gather(*list(self._background), return_exceptions=True)
        for entry in list(self._entries.values()):
            async with entry.lock:
                await self._drain(entry)
                self._drop(entry)

    async def __aenter__(self) -> DocumentManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- writing -----------------------------------------------------------------------------

    async def submit(
        self,
        doc_id: str,
        update: bytes,
        check: Check[X],
        build_extra: BuildExtra[X] | None = None,
        on_durable: OnDurable[X] | None = None,
    ) -> Applied[X]:
        """Validate, apply and durably store one incoming update (plus the relay's own update).

        :meth:`order`, then wait for the commit (:meth:`Ordered.wait`).

        Raises:
            EngineError: the update is not a valid update; nothing changed.
            StoreError: the commit failed; the update is not stored (the document is reloaded
                from the store on next use, so memory does not keep what the disk lost).
            CapacityError, ManagerClosedError: transient; retry later.
            Whatever ``check`` or ``build_extra`` raise.
        """
        ordered = await self.order(doc_id, update, check, build_extra, on_durable)
        return await ordered.wait()

    async def order(
        self,
        doc_id: str,
        update: bytes,
        check: Check[X],
        build_extra: BuildExtra[X] | None = None,
        on_durable: OnDurable[X] | None = None,
        on_commit: OnCommit[X] | None = None,
        check_resend: Callable[[Replica, bytes], None] | None = None,
    ) -> Ordered[X]:
        """Validate, apply and order one incoming update (plus the relay's own update) for storing.

        Under the document's lock, in this order, with no other update of the document between:

        1. a no-op (an update that adds nothing, e.g. a re-send; see
           :func:`relay.documents.entry.is_noop`) stops here: nothing is stored;
           ``check_resend(replica, update)`` may refuse it (raise: a "re-send" whose content
           differs from what the document holds at those Yjs ids);
           otherwise it is acknowledged, with the current seq, once everything ordered before
           it is durable;
        2. ``check(replica, update)``: raise to refuse; nothing is applied or stored;
        3. the update is applied (:class:`EngineError` if the engine refuses it; the document is
           unchanged and nothing is stored);
        4. ``build_extra(replica, checked, stamps)`` builds the relay's update, taking stamp
           numbers from ``stamps``;
        5. both are ordered in the store as one append (one transaction, consecutive seqs, the
           stamp counter advanced in it).

        Returns once ordered, *before* the commit: the caller can go on with its next update
        while this one commits, and learns the outcome from the :class:`Ordered` handle.
        Appends are committed in the order they were ordered, so one caller's updates are
        durable in the order it submitted them.

        Raises:
            EngineError: the update is not a valid update; nothing changed.
            StoreError: the store refused to order it (closing); nothing is stored.
            CapacityError, ManagerClosedError: transient; retry later.
            Whatever ``check`` or ``build_extra`` raise.
        """
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise EngineError(f"update must be bytes, not {type(update).__name__}")
        update = bytes(update)
        barrier: list[asyncio.Future[AppendResult]] = []
        commit: asyncio.Future[AppendResult] | None = None
        checked: X | None = None
        extra: bytes | None = None
        async with self._locked(doc_id, after_stamps=True) as entry:
            replica = entry.replica
            assert replica is not None
            if is_noop(entry, update, replica):
                if check_resend is not None:
                    check_resend(replica, update)
                barrier = list(entry.inflight)
            else:
                checked = check(replica, update)
                replica.apply_update(update)
                if not integrated(replica, update):
                    entry.park(update)
                stamps = StampSequence(entry.next_stamp)
                try:
                    if build_extra is not None:
                        replica = self._writer_replica(entry)
                    built = None if build_extra is None else build_extra(replica, checked, stamps)
                    stamps.close()
                    if built is not None:
                        extra = bytes(built)
                        # Idempotent if build_extra wrote through this replica already.
                        replica.apply_update(extra)
                    elif stamps.count:
                        raise ValueError("build_extra took stamp numbers but returned no update")
                    updates = [update] if extra is None else [update, extra]
                    if stamps.base > entry.next_stamp:
                        # Ordered before the append in the same writer queue, so the store's
                        # counter moves past the carried stamps before it checks stamp_base.
                        floor = self._store.enqueue_stamp_floor(doc_id, stamps.base)
                        floor.add_done_callback(_log_floor_failure(doc_id))
                        entry.next_stamp = stamps.base
                    commit = self._enqueue_append(doc_id, updates, stamps)
                except BaseException:
                    # The replica already holds what will not be stored: reload it on next use.
                    self._poison(entry)
                    raise
                count_stamps(entry, stamps, commit)
                # Attached under the lock, so callbacks run in commit (= seq) order: the relay
                # acknowledges and fans out in exactly the order updates are stored.
                deliver: Callable[[AppendResult], None] | None = None
                announce: Callable[[AppendResult], None] | None = None
                if on_durable is not None:
                    deliver = _durable_callback(doc_id, on_durable, checked, extra)
                if on_commit is not None:
                    announce = _durable_callback(doc_id, on_commit, checked, extra)
                self._track(entry, commit, deliver, announce)
                grown = sum(len(u) for u in updates)
                entry.size += grown
                self._loaded_bytes += grown
            ordered = Ordered(self, entry, commit, barrier, checked, extra)
        if commit is None:
            self._noops += 1
        elif self._loaded_bytes > self.max_bytes:
            self._spawn(self._make_room(for_new=False))
        return ordered

    def _enqueue_append(
        self, doc_id: str, updates: list[bytes], stamps: StampSequence
    ) -> asyncio.Future[AppendResult]:
        """Queue ``updates`` as one append; the store checks the stamp numbers ``stamps`` took
        against its own counter in the same commit (a stale base fails only this append)."""
        return asyncio.ensure_future(
            self._store.enqueue_append(
                doc_id,
                updates,
                stamp_base=stamps.base if stamps.count else None,
                stamp_count=stamps.count,
            )
        )

    async def apply(self, doc_id: str, update: bytes) -> Applied[None]:
        """:meth:`submit` with no check and no relay update (an update already validated)."""
        return await self.submit(doc_id, update, _no_check)

    async def order_own(
        self,
        doc_id: str,
        build: Callable[[Replica, StoredDocument, StampSequence], bytes | None],
        on_durable: Callable[[AppendResult, bytes], None] | None = None,
        on_commit: Callable[[AppendResult, bytes], None] | None = None,
    ) -> asyncio.Future[AppendResult] | None:
        """Order an update of the relay's own, with no incoming update (stamps for claims stored
        earlier: :mod:`relay.sync.stamp_hold`). Returns its commit, or ``None`` if ``build`` made none.

        Under the lock, after every commit ordered before has settled, ``build(replica, stored,
        stamps)`` sees the document and the store's view of it (its log in seq order: the order
        the relay stored things in) and takes stamp numbers as ``build_extra`` does; the update
        is applied and ordered as one append, stamp counter checked and advanced in it.
        ``on_durable(result, update)`` runs in seq order once it is durable, like :meth:`order`'s.
        """
        async with self._locked(doc_id, settle=True) as entry:
            replica = entry.replica
            assert replica is not None
            stored = await self._store.load(doc_id)
            stamps = StampSequence(entry.next_stamp)
            try:
                replica = self._writer_replica(entry)
                built = build(replica, stored, stamps)
                stamps.close()
                if built is None:
                    if stamps.count:
                        raise ValueError("build took stamp numbers but returned no update")
                    return None
                update = bytes(built)
                replica.apply_update(update)
                commit = self._enqueue_append(doc_id, [update], stamps)
            except BaseException:
                self._poison(entry)
                raise
            count_stamps(entry, stamps, commit)
            self._track(
                entry,
                commit,
                _own_callback(doc_id, on_durable, update),
                _own_callback(doc_id, on_commit, update),
            )
            entry.size += len(update)
            self._loaded_bytes += len(update)
        return commit

    # --- other nodes (see "Several nodes") ------------------------------------------------------

    def remote_commit(
        self,
        doc_id: str,
        seq: int,
        updates: Sequence[bytes],
        next_stamp: int = 0,
        deliver: Callable[[], None] | None = None,
    ) -> bool:
        """Another node stored ``updates`` as ``seq..``: take them into the loaded replica in seq order.

        Nothing is stored (they are). ``deliver`` runs when their turn comes (the hub forwards
        them to subscribers then). A document that is not loaded is left alone: its next load
        reads them from the store. Returns whether the commit was taken (not loaded, already
        covered or a duplicate: ``False``). Synchronous; never raises for a bad update (logged).
        """
        entry = self._entries.get(doc_id)
        if entry is None or entry.state is UNLOADED or not updates:
            return False
        last = seq + len(updates) - 1
        settled = entry.state is LOADED and not entry.refreshing
        if (settled and last <= entry.seq) or seq in entry.waiting:
            return False
        entry.waiting[seq] = Waiting(last, tuple(updates), next_stamp, deliver)
        if settled:
            self._advance(entry)
        return True

    def _advance(self, entry: Entry) -> None:
        """Integrate waiting commits while the next seq is there; watch for a gap otherwise."""
        waiting = entry.waiting
        while True:
            item = waiting.pop(entry.seq + 1, None)
            if item is None:
                break
            if item.updates is not None:
                self._apply_remote(entry, item)
            entry.seq = item.last
            if item.deliver is not None:
                _call(entry.doc_id, item.deliver)
        for first in [first for first in waiting if first <= entry.seq]:
            item = waiting.pop(first)  # covered by a refresh (or a duplicate)
            if item.updates is None and item.deliver is not None:
                _call(entry.doc_id, item.deliver)
        if entry.expect <= entry.seq:
            entry.expect = 0
        if waiting or entry.expect:
            if entry.gap_timer is None:
                entry.gap_timer = asyncio.get_running_loop().call_later(
                    self.gap_wait, self._gap_expired, entry, entry.seq
                )
        elif entry.gap_timer is not None:
            entry.gap_timer.cancel()
            entry.gap_timer = None

    def _apply_remote(self, entry: Entry, item: Waiting) -> None:
        replica = entry.replica
        assert replica is not None and item.updates is not None
        for update in item.updates:
            if entry.expect and replica.covers(update):
                continue  # already in the replica a refresh read from the store
            try:
                replica.apply_update(update)
            except EngineError as exc:  # stored by another node; the store keeps it either way
                log_event(
                    log, "remote_update_does_not_apply", logging.ERROR, doc=entry.doc_id, error=repr(exc)
                )
                continue
            if not integrated(replica, update):
                entry.park(update)
            entry.size += len(update)
            self._loaded_bytes += len(update)
        entry.next_stamp = max(entry.next_stamp, item.next_stamp)
        self._remote_applied += 1

    def _gap_expired(self, entry: Entry, seen: int) -> None:
        entry.gap_timer = None
        if entry.state is not LOADED or not (entry.waiting or entry.expect):
            return
        if entry.seq != seen:  # progress since: give the rest its own wait
            entry.gap_timer = asyncio.get_running_loop().call_later(
                self.gap_wait, self._gap_expired, entry, entry.seq
            )
            return
        log_event(
            log,
            "seq_gap_reload",
            logging.WARNING,
            doc=entry.doc_id,
            missing_seq=entry.seq + 1,
            waited_s=self.gap_wait,
        )
        self._spawn(self._refresh_if(entry.doc_id, gap_only=True))

    def refresh_all(self) -> int:
        """Reload every loaded document from the store in the background (fan-out entries may be
        lost: Redis restarted or trimmed past this node). Returns how many are queued."""
        docs = [entry.doc_id for entry in self._entries.values() if entry.state is LOADED]
        for doc_id in docs:
            self._spawn(self._refresh_if(doc_id, gap_only=False))
        return len(docs)

    async def _refresh_if(self, doc_id: str, *, gap_only: bool) -> None:
        try:
            async with self._refresh_slots:
                if not self.is_loaded(doc_id):
                    return  # unloaded meanwhile: its next load reads the store anyway
                async with self._locked(doc_id, settle=True) as entry:
                    if gap_only and not (entry.waiting or entry.expect):
                        return  # filled (or refreshed) while we waited for the lock
                    await self._refresh(entry)
        except (StoreError, CapacityError, ManagerClosedError) as exc:
            log_event(log, "refresh_failed", logging.WARNING, doc=doc_id, error=repr(exc))
            left = self._entries.get(doc_id)
            pending = left is not None and (left.waiting or left.expect)
            if left is not None and left.state is LOADED and pending and left.gap_timer is None:
                left.gap_timer = asyncio.get_running_loop().call_later(
                    self.gap_wait, self._gap_expired, left, left.seq
                )

    async def _refresh(self, entry: Entry, *, catch_up: bool = True) -> None:
        """Reload ``entry`` from the store in place (lock held, commits settled). See "Several nodes".

        ``catch_up=False`` (a poisoned entry: a refused stamp base, a failed commit): the replica
        is reloaded, but the seqs it gained are left to arrive through the fan-out and be handed
        on as usual (applying them again changes nothing), so subscribers get each one, with its
        stamps, rather than one difference; ``gap_wait`` later, whatever did not come is caught up.
        """
        replica = entry.replica
        assert replica is not None and entry.state is LOADED
        old_sv = replica.state_vector()
        old_seq = entry.seq
        # This node's own commits waiting on a gap are durable: answer and deliver them now
        # (recipients see the gap and resync); the others' commits are in what the store returns.
        for first in sorted(entry.waiting):
            item = entry.waiting[first]
            if item.updates is None:
                del entry.waiting[first]
                if item.deliver is not None:
                    _call(entry.doc_id, item.deliver)
        entry.refreshing = True
        try:
            fresh, parked, next_stamp, stored = await self._read_store(entry.doc_id)
        finally:
            entry.refreshing = False
        catchup = fresh.diff(old_sv)
        self._loaded_bytes += stored.stored_bytes - entry.size
        entry.replica = fresh
        entry.parked = parked
        entry.size = stored.stored_bytes
        entry.next_stamp = next_stamp
        entry.poisoned = False
        self._refreshes += 1
        self._loads += 1
        if not catch_up and stored.seq > old_seq:
            entry.expect = max(entry.expect, stored.seq)
            self._advance(entry)
            return
        entry.seq = max(stored.seq, old_seq)
        entry.expect = 0
        on_catchup = self.on_catchup
        if stored.seq > old_seq and on_catchup is not None:
            doc_id, seq = entry.doc_id, stored.seq
            _call(doc_id, lambda: on_catchup(doc_id, catchup, seq))
        self._advance(entry)

    # --- reading -----------------------------------------------------------------------------

    async def read(self, doc_id: str, fn: Callable[[Replica, int], T]) -> T:
        """Run ``fn(replica, seq)`` on the durable state of the document, under its lock.

        Every update ordered before this call is committed before ``fn`` runs, and none is
        applied while it runs, so ``seq`` is exactly the state ``fn`` sees. Use it to register a
        subscriber atomically with its catch-up diff. ``fn`` must not modify the replica.
        """
        async with self._locked(doc_id, settle=True) as entry:
            assert entry.replica is not None
            return fn(entry.replica, entry.seq)

    async def state_vector(self, doc_id: str) -> tuple[bytes, int]:
        """The document's durable state vector and seq (sync step 1)."""
        return await self.read(doc_id, lambda replica, seq: (replica.state_vector(), seq))

    async def diff(self, doc_id: str, state_vector: bytes) -> tuple[bytes, int]:
        """Exactly what a peer at ``state_vector`` lacks, and the seq it brings the peer to.

        Raises:
            EngineError: ``state_vector`` is not a valid state vector.
        """
        return await self.read(doc_id, lambda replica, seq: (replica.diff(state_vector), seq))

    # --- pinning, unloading, memory ----------------------------------------------------------

    def pin(self, doc_id: str) -> Pin:
        """Mark the document in use (a subscriber) so it is not unloaded until released."""
        check_doc_id(doc_id)
        self._pins[doc_id] = self._pins.get(doc_id, 0) + 1
        return Pin(self._unpin, doc_id)

    def _unpin(self, doc_id: str) -> None:
        left = self._pins.get(doc_id, 0) - 1
        if left > 0:
            self._pins[doc_id] = left
        else:
            self._pins.pop(doc_id, None)
        entry = self._entries.get(doc_id)
        if entry is not None:
            entry.last_used = self._clock()  # the idle time starts when the last subscriber leaves

    def is_loaded(self, doc_id: str) -> bool:
        entry = self._entries.get(doc_id)
        return entry is not None and entry.state is LOADED

    def doc_bytes(self, doc_id: str) -> int:
        """The stored size of a loaded document (0 if not loaded): for the relay's size limit."""
        entry = self._entries.get(doc_id)
        return entry.size if entry is not None and entry.state is LOADED else 0

    @property
    def loaded_count(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.state is LOADED)

    @property
    def loaded_bytes(self) -> int:
        return self._loaded_bytes

    def stats(self) -> ManagerStats:
        return ManagerStats(
            loaded=self.loaded_count,
            loaded_bytes=self._loaded_bytes,
            pinned=len(self._pins),
            loads=self._loads,
            unloads=self._unloads,
            evictions=self._evictions,
            noops=self._noops,
            reloads_after_failure=self._reloads,
            remote_applied=self._remote_applied,
            refreshes=self._refreshes,
        )

    async def unload(self, doc_id: str, *, force: bool = False) -> bool:
        """Unload now, after its commits settle, unless it is pinned or used meanwhile.

        ``force`` unloads even a pinned document (pins survive; the next use reloads it).
        Returns whether it was unloaded.
        """
        entry = self._entries.get(doc_id)
        if entry is None:
            return False
        return await self._unload_entry(entry, seen=None if force else entry.last_used)

    async def unload_idle(self) -> int:
        """Unload every unpinned document idle for ``idle_seconds``; returns how many."""
        cutoff = self._clock() - self.idle_seconds
        candidates = [
            (entry, entry.last_used)
            for entry in self._entries.values()
            if entry.state is LOADED
            and (entry.poisoned or (entry.last_used <= cutoff and not self._pins.get(entry.doc_id)))
            and not entry.lock.locked()
        ]
        unloaded = 0
        for entry, seen in candidates:
            if await self._unload_entry(entry, seen=None if entry.poisoned else seen):
                unloaded += 1
        return unloaded

    # --- internals: the per-document state machine -------------------------------------------

    @asynccontextmanager
    async def _locked(
        self, doc_id: str, *, settle: bool = False, after_stamps: bool = False
    ) -> AsyncIterator[Entry]:
        """Yield the document's entry, loaded and locked (optionally with its commits settled, or,
        with several nodes, ``after_stamps``: with no stamping append in flight)."""
        check_doc_id(doc_id)
        while True:
            if self._closing:
                raise ManagerClosedError("the relay is shutting down")
            entry = await self._entry_for(doc_id)
            try:
                async with entry.lock:
                    if entry.state is UNLOADED:
                        continue  # dropped while we waited for the lock: look it up again
                    if entry.state is NEW:
                        try:
                            await self._load(entry)
                        except BaseException:
                            self._drop(entry)
                            raise
                    if settle:
                        await self._drain(entry)
                    elif after_stamps and self.on_catchup is not None:
                        stamping = entry.stamp_commit
                        if stamping is not None and not stamping.done():
                            await self._drain(entry)
                            if entry.poisoned:
                                continue  # let whoever queued meanwhile go first (see above)
                    if entry.poisoned:
                        await self._drain(entry)
                        self._reloads += 1
                        if self.on_catchup is not None and self._pins.get(doc_id):
                            # Subscribers hold it: reload in place, so they keep their place.
                            await self._refresh(entry, catch_up=False)
                        else:
                            self._drop(entry)
                            continue
                    entry.last_used = self._clock()
                    yield entry
                    return
            finally:
                self._room.set()  # this entry may be evictable now: wake loads waiting for room

    async def _entry_for(self, doc_id: str) -> Entry:
        entry = self._entries.get(doc_id)
        if entry is not None:
            return entry
        if self._full():
            # A burst can find every slot busy (loading, or mid-update) for a moment: wait a
            # bounded time for one to become evictable before telling the client to come back.
            loop = asyncio.get_running_loop()  # real time: ``self._clock`` only ages documents
            deadline = loop.time() + self.capacity_wait
            while True:
                self._room.clear()
                await self._make_room(for_new=True)
                entry = self._entries.get(doc_id)
                if entry is not None:
                    return entry
                if not self._full():
                    break
                remaining = deadline - loop.time()
                if remaining <= 0 or self._closing:
                    raise CapacityError(
                        f"cannot load {doc_id}: {len(self._entries)} documents and"
                        f" {self._loaded_bytes} bytes loaded, none of them unloadable"
                    )
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=remaining)
                except TimeoutError:
                    pass
        # No await between the lookup above and this insert: concurrent first uses share it.
        entry = Entry(doc_id, self._clock())
        self._entries[doc_id] = entry
        return entry

    async def _load(self, entry: Entry) -> None:
        started = time.monotonic()
        replica, parked, next_stamp, stored = await self._read_store(entry.doc_id)
        seconds = time.monotonic() - started
        # Info, with its duration: a cold document holds back its first acknowledgement (after
        # a restart, every document's), so loads must be visible beside the latency they cause.
        log_event(
            log,
            "document_loaded",
            logging.INFO,
            doc=entry.doc_id,
            seconds=round(seconds, 4),
            updates=len(stored.updates),
            bytes=stored.stored_bytes,
        )
        if self.on_load is not None:
            self.on_load(seconds)
        entry.replica = replica
        entry.parked = parked
        entry.seq = stored.seq
        entry.next_stamp = next_stamp
        entry.size = stored.stored_bytes
        entry.state = LOADED
        self._loaded_bytes += entry.size
        self._loads += 1
        if entry.waiting:  # other nodes' commits that arrived while it loaded
            self._advance(entry)

    def _writer_replica(self, entry: Entry) -> Replica:
        """The entry's replica, re-opened under ``writer_id()`` if that changed since it loaded."""
        replica = entry.replica
        assert replica is not None
        if self.writer_id is None:
            return replica
        wanted = self.writer_id()
        if replica.client_id != wanted:
            replica = replica.copy(wanted)  # the engine's full state carries pending structs too
            entry.replica = replica
        return replica

    async def _read_store(self, doc_id: str) -> tuple[Replica, dict[bytes, None], int, StoredDocument]:
        """A fresh replica of the stored document, its parked digests and its next stamp."""
        stored = await self._store.load(doc_id)
        # The relay's own writer id: see the module docstring.
        replica = Replica(None if self.writer_id is None else self.writer_id())
        holder = Entry(doc_id, 0.0)  # only for its parked-digest bookkeeping
        if stored.snapshot is not None:
            try:
                replica.apply_update(stored.snapshot)
            except EngineError as exc:
                raise StoreError(f"{doc_id}: stored snapshot is unreadable: {exc}") from None
        applied: list[bytes] = []
        for seq, update in stored.updates:
            try:
                replica.apply_update(update)
                applied.append(update)
            except EngineError as exc:  # never stored by us; skip damage rather than lose the doc
                log_event(
                    log, "stored_update_unreadable", logging.ERROR, doc=doc_id, seq=seq, error=repr(exc)
                )
        # Parked rows, judged once against the final clocks (a row a later one released counts
        # as integrated, as it does for a re-send): asking per row cost a state vector each,
        # linear in the document's clients, which made loading a full day quadratic.
        if applied and replica.holds_parked():
            clocks = replica.state_clocks()
            for update in applied:
                if not covered_by(update, clocks):
                    holder.park(update)
        next_stamp = stored.next_stamp
        if self._highest_stamp is not None:
            floor = self._highest_stamp(replica) + 1
            if floor > next_stamp:
                log_event(
                    log,
                    "stamp_floor_raised",
                    logging.WARNING,
                    doc=doc_id,
                    highest_in_document=floor - 1,
                    store_next_stamp=next_stamp,
                )
                next_stamp = await self._store.set_stamp_floor(doc_id, floor)
        return replica, holder.parked, next_stamp, stored

    def _track(
        self,
        entry: Entry,
        commit: asyncio.Future[AppendResult],
        deliver: Callable[[AppendResult], None] | None,
        announce: Callable[[AppendResult], None] | None,
    ) -> None:
        still_running = [commit]
        for future in entry.inflight:
            if future.done():
                self._settle(entry, future)
            else:
                still_running.append(future)
        entry.inflight = still_running
        # Settle promptly even if nobody waits (so the sweeper sees a poisoned entry); but a
        # done-callback runs one loop step *after* the future completes, so whoever needs the
        # outcome right away (drain, no-op barrier, the submitter) also calls _settle itself.
        # This is the commit's first callback, so it runs before anyone awaiting the commit wakes.
        commit.add_done_callback(lambda future: self._committed(entry, future, deliver, announce))

    def _committed(
        self,
        entry: Entry,
        future: asyncio.Future[AppendResult],
        deliver: Callable[[AppendResult], None] | None,
        announce: Callable[[AppendResult], None] | None,
    ) -> None:
        if not self._settle(entry, future):
            return
        result = future.result()
        if announce is not None:
            announce(result)
        call = None if deliver is None else (lambda: deliver(result))
        first = result.seqs[0]
        if entry.state is not LOADED or first <= entry.seq:
            # Dropped meanwhile (nothing left to order against), or covered by a refresh.
            if call is not None:
                call()
            return
        if first == entry.seq + 1 and not entry.waiting:  # always, with one node
            entry.seq = result.seq
            if call is not None:
                call()
            return
        entry.waiting[first] = Waiting(result.seq, None, 0, call)
        self._advance(entry)

    def _settle(self, entry: Entry, future: asyncio.Future[AppendResult]) -> bool:
        """Fold a finished commit into the entry (idempotent); returns whether it succeeded."""
        if future.cancelled() or future.exception() is not None:
            self._poison(entry)
            return False
        return True

    def _poison(self, entry: Entry) -> None:
        if not entry.poisoned:
            entry.poisoned = True
            log_event(
                log, "memory_ahead_of_store", logging.WARNING, doc=entry.doc_id, hint="reloading on next use"
            )

    async def _drain(self, entry: Entry) -> None:
        """Wait until every append ordered for ``entry`` has committed or failed (lock held).

        With the lock held nothing new is ordered, so afterwards ``entry.seq`` is the durable seq
        the replica holds, or ``entry.poisoned`` says the replica is ahead of the disk.
        """
        pending = entry.inflight
        if pending:
            await asyncio.wait(pending)
            for future in pending:
                self._settle(entry, future)
            entry.inflight = []

    def _drop(self, entry: Entry) -> None:
        if entry.gap_timer is not None:
            entry.gap_timer.cancel()
            entry.gap_timer = None
        waiting, entry.waiting = entry.waiting, {}
        for first in sorted(waiting):  # this node's acknowledgements must still go out
            item = waiting[first]
            if item.updates is None and item.deliver is not None:
                _call(entry.doc_id, item.deliver)
        self._room.set()
        if entry.state is LOADED:
            self._loaded_bytes -= entry.size
        entry.state = UNLOADED
        entry.replica = None
        if self._entries.get(entry.doc_id) is entry:
            del self._entries[entry.doc_id]

    async def _unload_entry(self, entry: Entry, *, seen: float | None) -> bool:
        """Unload ``entry``; with ``seen`` set, only if unpinned and unused since ``seen``."""

        def still_wanted() -> bool:
            return seen is not None and (bool(self._pins.get(entry.doc_id)) or entry.last_used > seen)

        async with entry.lock:
            if entry.state is not LOADED or still_wanted():
                return False
            await self._drain(entry)
            # A pin may have arrived while the commits settled (pinning takes no lock).
            if still_wanted():
                return False
            self._drop(entry)
            self._unloads += 1
            return True

    def _full(self) -> bool:
        return len(self._entries) >= self.max_documents or self._loaded_bytes >= self.max_bytes

    async def _make_room(self, *, for_new: bool) -> None:
        """Unload least recently used, unpinned, idle-right-now documents until under the limits."""

        def over() -> bool:
            return self._full() if for_new else self._loaded_bytes > self.max_bytes

        candidates = sorted(
            (
                entry
                for entry in self._entries.values()
                if entry.state is LOADED and not self._pins.get(entry.doc_id) and not entry.lock.locked()
            ),
            key=lambda entry: entry.last_used,
        )
        for entry in candidates:
            if not over():
                return
            if await self._unload_entry(entry, seen=entry.last_used):
                self._evictions += 1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.unload_idle()
            except Exception:
                log_event(log, "idle_sweep_failed", logging.ERROR, exc_info=True)
