"""The relay's document store: what the relay needs from durable storage, as a ``Protocol``.

Why an interface: SQLite (:mod:`relay.store.sqlite`) is the embedded default for one node; the
scale-out design (docs/design.md, "Scale-out") puts many relay nodes on one PostgreSQL. Everything above the
store (the loaded document manager, the websocket layer, the operator CLI) talks to :class:`DocumentStore`
only.

Theory of operation (every implementation must keep these promises):

* **Per document, an append-only update log plus one compacted snapshot.** The snapshot covers
  every log row with ``seq <= covered_seq``; loading a document is "snapshot, then every log row
  after it, in seq order".
* **Sequence numbers** are per document, start at 1 and are gap-free. They are assigned in the
  transaction that stores the update, so a seq exists only for a committed update. Clients use
  them to notice a gap in the live stream and re-run the sync exchange.
* **Acknowledge only what is durable.** :meth:`DocumentStore.append` returns only after the
  transaction holding the updates has committed. Concurrent appends share one commit (group
  commit) so durability does not cost throughput.
* **Order.** Appends are committed in the order :meth:`DocumentStore.enqueue_append` was *called*
  (which is when the append is ordered, not when its result is awaited). The document manager
  relies on this to pipeline several updates of one document into one commit.
* **Stamps.** The relay stamps booking claims with per-document numbers, gap-free (docs/design.md,
  "Booking verdict"). The stamp update carries its numbers in its bytes, so the caller picks
  them before the commit: it passes ``stamp_base`` (which must equal the stored next stamp) and
  ``stamp_count``; the store checks and advances the counter in the same transaction that stores
  the updates, or refuses that append with :class:`StampConflictError`. A relay restored from a
  backup raises the counter's floor (:meth:`DocumentStore.set_stamp_floor`) to continue after
  the highest stamp found in the merged document.
* **Compaction** folds snapshot + log into a new snapshot and deletes only the rows it covers, in
  one transaction, so an append that commits meanwhile is never lost.
* **Meta**: a few named values beside the documents (:class:`DocumentMeta`), stored with
  them so they are backed up and restored with them: the epoch the documents were last served
  under, and a restore's stamp hold (:mod:`relay.sync.stamp_hold`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from relay.errors import RelayError

__all__ = [
    "AppendResult",
    "CompactionResult",
    "DocumentMeta",
    "DocumentStore",
    "FIRST_STAMP",
    "MAX_DOC_ID_LENGTH",
    "StampConflictError",
    "StoreClosedError",
    "StoreError",
    "StoreStats",
    "StoredDocument",
    "check_doc_id",
    "check_meta_key",
    "load_or_create_epoch",
    "should_compact",
]

#: Stamps are numbered from 1, so "next stamp 1" means "nothing stamped yet".
FIRST_STAMP = 1
#: Doc ids are short structured strings (``bookings:<shop>:<day>``); anything longer is a bug or an attack.
MAX_DOC_ID_LENGTH = 256


class StoreError(RelayError):
    """The store could not do what was asked; nothing of that request is stored."""


class StoreClosedError(StoreError):
    """The store is closing or closed and accepts no more work."""


class StampConflictError(StoreError):
    """``stamp_base`` was not the stored next stamp: numbers would be reused or skipped.

    Raised for that append only (other appends in the same group commit are unaffected). Within
    one relay process it means the caller's in-memory counter went stale (a bug, or an earlier
    append of the same document failed); with several nodes it would mean two nodes stamped the
    same document. Either way: reload the document and retry.
    """


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """What :meth:`DocumentStore.load` returns: everything needed to rebuild the document.

    Apply ``snapshot`` (if any) and then ``updates`` in order to an empty replica.
    """

    doc_id: str
    snapshot: bytes | None
    #: The highest seq the snapshot covers (0 when there is no snapshot).
    snapshot_seq: int
    #: ``(seq, update)`` for every log row after the snapshot, in seq order.
    updates: tuple[tuple[int, bytes], ...]
    #: The highest committed seq of the document (0 for a document never written).
    seq: int
    #: The next stamp number to hand out.
    next_stamp: int

    @property
    def stored_bytes(self) -> int:
        return len(self.snapshot or b"") + sum(len(u) for _, u in self.updates)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The seqs given to the appended updates (in the order given) and the stamps allocated."""

    seqs: tuple[int, ...]
    stamps: range

    @property
    def seq(self) -> int:
        """The document's seq after this append (the last of ``seqs``)."""
        return self.seqs[-1]


@dataclass(frozen=True, slots=True)
class CompactionResult:
    doc_id: str
    #: The new snapshot covers every update up to and including this seq.
    covered_seq: int
    snapshot_bytes: int
    removed_rows: int
    removed_bytes: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Sizes (from the stored data) and counters (since this store object was opened)."""

    documents: int
    log_rows: int
    log_bytes: int
    snapshot_bytes: int
    #: Write transactions committed (each one a group commit of one or more requests).
    commits: int = 0
    #: Append requests committed (so ``appends / commits`` is the mean group size).
    appends: int = 0
    compactions: int = 0
    largest_batch: int = 0


@runtime_checkable
class DocumentStore(Protocol):
    """Durable storage for the relay's documents. See the module docstring for the promises."""

    @property
    def epoch(self) -> str:
        """The id of this data directory; it changes when the relay's data is reset or replaced."""
        ...

    async def load(self, doc_id: str) -> StoredDocument:
        """Snapshot + log after it, the seq and the next stamp, read as one consistent view.

        A document never written loads as empty (seq 0, next stamp :data:`FIRST_STAMP`).
        """
        ...

    def enqueue_append(
        self,
        doc_id: str,
        updates: Sequence[bytes],
        *,
        stamp_base: int | None = None,
        stamp_count: int = 0,
    ) -> Awaitable[AppendResult]:
        """Order an append now; the returned awaitable resolves once it is committed.

        The updates get consecutive seqs in one transaction (all or none). If ``stamp_count > 0``,
        ``stamp_base`` must equal the stored next stamp and the counter advances by ``stamp_count``
        in that same transaction.

        Raises (synchronously):
            StoreClosedError: the store is closing.
            ValueError: bad arguments (no updates, empty update, bad doc id or stamp range).

        The awaitable raises:
            StampConflictError: ``stamp_base`` was stale; nothing of this append is stored.
            StoreError: the transaction failed; nothing of this append is stored.
        """
        ...

    async def append(
        self,
        doc_id: str,
        updates: Sequence[bytes],
        *,
        stamp_base: int | None = None,
        stamp_count: int = 0,
    ) -> AppendResult:
        """``await enqueue_append(...)``: returns only after the commit."""
        ...

    def enqueue_stamp_floor(self, doc_id: str, next_stamp: int) -> asyncio.Future[int]:
        """Order a ``set_stamp_floor`` now, behind every append already queued; resolves at commit."""
        ...

    async def set_stamp_floor(self, doc_id: str, next_stamp: int) -> int:
        """Raise the document's next stamp to at least ``next_stamp`` (never lowers it); returns it."""
        ...

    async def compact(self, doc_id: str) -> CompactionResult | None:
        """Fold snapshot + log into a new snapshot now; ``None`` if there was no log to fold."""
        ...

    async def compact_all(self) -> list[CompactionResult]:
        """Compact every document that has log rows (the operator CLI's ``compact``)."""
        ...

    async def stats(self) -> StoreStats: ...

    async def close(self) -> None:
        """Commit what was already ordered, then release everything. Idempotent."""
        ...


@runtime_checkable
class DocumentMeta(Protocol):
    """The meta values beside the documents (see "Meta" above); both stores offer it.

    Separate from :class:`DocumentStore` because the document manager never needs it: only the
    restore stamp hold (:mod:`relay.sync.stamp_hold`) does.
    """

    @property
    def epoch(self) -> str: ...

    async def get_meta(self, key: str) -> str | None:
        """The named value (``None`` if unset), as committed."""
        ...

    async def put_meta(self, values: Mapping[str, str | None]) -> None:
        """Set (``None``: delete) the named values in one durable transaction."""
        ...

    async def docs_updated_since(self, since: float) -> list[str]:
        """Ids of documents written at or after ``since`` (Unix seconds, the store's clock)."""
        ...


def should_compact(log_bytes: int, snapshot_bytes: int, min_bytes: int = 0) -> bool:
    """The rule of docs/design.md, "Relay": compact when the log's bytes outgrow the snapshot's (not after a
    fixed count).

    Folding costs about the size of snapshot + log, and this rule only folds once the log is at
    least as big as the snapshot, so the total compaction work stays proportional to the bytes
    written (the snapshot at most doubles between two compactions, as in a growing array).
    ``min_bytes`` spares tiny documents: compacting a 300-byte log into a 280-byte snapshot buys
    nothing and costs a read, a fold and a write transaction.
    """
    return log_bytes > snapshot_bytes and log_bytes > min_bytes


def check_doc_id(doc_id: str) -> str:
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError("doc id must be a non-empty string")
    if len(doc_id) > MAX_DOC_ID_LENGTH:
        raise ValueError(f"doc id longer than {MAX_DOC_ID_LENGTH} characters")
    return doc_id


#: Meta keys are short names; ``epoch`` is not one of them (PostgreSQL keeps the database's epoch
#: in the same table, and only :func:`relay.store.pg_migrations.load_or_create_epoch` writes it).
_META_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def check_meta_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > 64 or not set(key) <= _META_KEY_CHARS:
        raise ValueError(f"meta key must be 1-64 of [a-z0-9_], got {key!r}")
    if key == "epoch":
        raise ValueError("the epoch is not a document meta value")
    return key


def load_or_create_epoch(directory: str | os.PathLike[str], *, wait_seconds: float = 2.0) -> str:
    """Read ``DIR/epoch``, creating it with a random id if it does not exist.

    The accounts code follows the same rule on the same file, and either may start first, so
    creation must be atomic and a reader must never see a half-written id: the id is written and
    fsynced in a private temporary file which is then *linked* to ``epoch``; ``link`` fails if
    the name exists (like ``O_EXCL``) and the name appears with its content already in it.

    A writer that creates ``epoch`` empty with ``O_EXCL`` and fills it afterwards could still be
    observed mid-write, so an empty file is re-read for up to ``wait_seconds`` before giving up.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "epoch"
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            text = None
        if text:
            return text
        if text is None:
            created = _create_epoch(path)
            if created is not None:
                return created
            continue  # someone else created it first: read theirs
        if time.monotonic() >= deadline:
            raise StoreError(f"{path} exists but is empty")
        time.sleep(0.01)


def _create_epoch(path: Path) -> str | None:
    epoch = secrets.token_hex(16)
    tmp = path.with_name(f".epoch.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, epoch.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)
    return epoch


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
