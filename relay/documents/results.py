"""What callers of the document manager hold and get back: results, handles, errors, and the
signatures of the callbacks they pass (see :mod:`relay.documents.manager`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from crdt_core.engine import Replica
from relay.errors import RelayError
from relay.store.base import AppendResult

X = TypeVar("X")


class DocumentsError(RelayError):
    """Root of the document manager's errors."""


class CapacityError(DocumentsError):
    """No room to load another document: every loaded document is pinned or busy.

    Transient: the websocket layer reports "overloaded, try again later".
    """


class ManagerClosedError(DocumentsError):
    """The manager is shutting down."""


class StampSequence:
    """Stamp numbers handed to ``build_extra``: consecutive from the document's next stamp.

    Numbers taken here are stored as allocated in the same transaction as the update that
    carries them, so stamps stay gap-free per document.
    """

    __slots__ = ("base", "count", "_open")

    def __init__(self, base: int) -> None:
        self.base = base
        self.count = 0
        self._open = True

    def carried(self, highest: int) -> None:
        """Stamps up to ``highest`` arrived inside the update itself: hand out numbers after them.

        Why: after a restore from backup, clients send back stamps the relay issued before the
        loss. Numbering on from the restored counter would write a new stamp under a key a
        carried stamp already holds, a rewrite every replica refuses for good.
        """
        if not self._open or self.count:
            raise RuntimeError("carried stamps must be declared before any number is taken")
        self.base = max(self.base, highest + 1)

    def next(self) -> int:
        if not self._open:
            raise RuntimeError("stamp numbers can only be taken inside build_extra")
        number = self.base + self.count
        self.count += 1
        return number

    @property
    def allocated(self) -> range:
        return range(self.base, self.base + self.count)

    def close(self) -> None:
        self._open = False


#: ``check(replica, update) -> X``: validate an incoming update against the current document.
#: Raise to refuse it (nothing is applied or stored). Must not modify the replica.
Check = Callable[[Replica, bytes], X]
#: ``build_extra(replica, checked, stamps) -> update | None``: the relay's own update to store in
#: the same transaction (e.g. the stamp records of new booking claims). ``replica`` already holds
#: the incoming update; take stamp numbers with ``stamps.next()``. It must be idempotent with
#: respect to the document (stamp only claims that hold no stamp yet): the same claim can come
#: back inside *different* update bytes (carried by another peer, merged with other records),
#: which is new to the store but not to the claim.
BuildExtra = Callable[[Replica, X, StampSequence], bytes | None]
#: ``on_durable(result, checked, extra)``: called once the append committed, in seq order,
#: synchronously in the event loop (never for a no-op or a failed commit).
OnDurable = Callable[[AppendResult, X | None, bytes | None], None]


#: ``on_commit(result, checked, extra)``: called as soon as the append committed, before it is
#: integrated in seq order (the fan-out publishes here, so other nodes never wait on this one).
OnCommit = Callable[[AppendResult, X | None, bytes | None], None]


@dataclass(frozen=True, slots=True)
class Applied(Generic[X]):
    """The outcome of :meth:`DocumentManager.submit`, returned once it is durable.

    Forward ``update`` (when ``update_seq`` is set) and ``extra`` (when set) to subscribers, in
    seq order; both are already in the store.
    """

    doc_id: str
    #: The document's seq after this submission (for a no-op: its durable seq when acknowledged).
    seq: int
    #: The seq of the incoming update; ``None`` when it was a no-op (nothing stored).
    update_seq: int | None
    #: The relay's own update (e.g. stamps) and its seq, if ``build_extra`` made one.
    extra: bytes | None = None
    extra_seq: int | None = None
    #: The stamp numbers given out (stored with ``extra``).
    stamps: range = range(0)
    #: What ``check`` returned (``None`` for a no-op, which is not checked).
    checked: X | None = None

    @property
    def noop(self) -> bool:
        return self.update_seq is None and self.extra_seq is None


@dataclass(frozen=True, slots=True)
class ManagerStats:
    """For the relay's metrics: gauges first, then counters since the manager started."""

    loaded: int
    loaded_bytes: int
    pinned: int
    loads: int
    unloads: int
    evictions: int
    noops: int
    reloads_after_failure: int
    remote_applied: int = 0
    refreshes: int = 0


class Pin:
    """Keeps a document from being unloaded while a subscriber holds it. Release exactly once.

    Usable as a context manager. Pinning does not load the document; the first read does.
    """

    __slots__ = ("_unpin", "doc_id", "_held")

    def __init__(self, unpin: Callable[[str], None], doc_id: str) -> None:
        self._unpin = unpin
        self.doc_id = doc_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._unpin(self.doc_id)

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
