"""One loaded (or loading) document's state inside the manager: its lock, replica, seqs and
waiting commits (see :mod:`relay.documents.manager`, "Theory of operation" and "Several nodes")."""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from crdt_core.engine import Replica
from relay.documents.results import StampSequence
from relay.store.base import AppendResult


@dataclass(slots=True)
class Waiting:
    """A committed append waiting for the seqs before it (see "Several nodes")."""

    last: int
    #: Another node's updates, applied when their turn comes; ``None`` for this node's own
    #: commit (already in the replica since it was ordered).
    updates: tuple[bytes, ...] | None
    next_stamp: int
    deliver: Callable[[], None] | None


class State(enum.Enum):
    NEW = "new"
    LOADED = "loaded"
    UNLOADED = "unloaded"


NEW = State.NEW
LOADED = State.LOADED
UNLOADED = State.UNLOADED


def count_stamps(entry: Entry, stamps: StampSequence, commit: asyncio.Future[AppendResult]) -> None:
    """Advance the document's stamp counter past what ``commit`` carries; the next stamping waits
    for that commit (``_locked(after_stamps=True)``)."""
    entry.next_stamp += stamps.count
    if stamps.count:
        entry.stamp_commit = commit


class Entry:
    __slots__ = (
        "doc_id",
        "lock",
        "state",
        "replica",
        "seq",
        "next_stamp",
        "size",
        "last_used",
        "inflight",
        "poisoned",
        "parked",
        "waiting",
        "gap_timer",
        "refreshing",
        "stamp_commit",
        "expect",
    )

    def __init__(self, doc_id: str, now: float) -> None:
        self.doc_id = doc_id
        self.lock = asyncio.Lock()
        self.state = NEW
        self.replica: Replica | None = None
        #: Every seq up to this one is in the replica and handed on (``on_durable``); the replica
        #: may be ahead while commits are in flight or wait for an earlier seq.
        self.seq = 0
        #: Next stamp number to hand out (ahead of the store while commits are in flight).
        self.next_stamp = 0
        #: Approximate memory: bytes of stored updates that make up the replica.
        self.size = 0
        self.last_used = now
        #: Appends ordered for this document and not yet settled (see ``_settle``).
        self.inflight: list[asyncio.Future[AppendResult]] = []
        self.poisoned = False
        #: Digests of stored updates that did not move the state vector (see ``is_noop``).
        self.parked: dict[bytes, None] = {}
        #: Commits waiting for the seqs before them, by first seq (see "Several nodes").
        self.waiting: dict[int, Waiting] = {}
        self.gap_timer: asyncio.TimerHandle | None = None
        #: Reloading from the store in place: remote commits wait rather than apply.
        self.refreshing = False
        #: The last append that allocated stamps (see "Several nodes": nothing is ordered on top
        #: of one still in flight).
        self.stamp_commit: asyncio.Future[AppendResult] | None = None
        #: A refresh without catch-up saw the store at this seq: the seqs up to it are on their
        #: way through the fan-out and are delivered as they come (or, if not, a gap refresh).
        self.expect = 0

    def park(self, update: bytes) -> None:
        self.parked[digest(update)] = None
        if len(self.parked) > MAX_PARKED:
            del self.parked[next(iter(self.parked))]


#: How many parked-update digests one document remembers (oldest forgotten first).
MAX_PARKED = 4096


def digest(update: bytes) -> bytes:
    return hashlib.blake2b(update, digest_size=16).digest()


def is_noop(entry: Entry, update: bytes, replica: Replica) -> bool:
    """Whether ``update`` adds nothing to the document (a re-send), decided *before* applying it.

    Not "the state vector did not move": an update whose dependencies have not arrived yet (a
    carrier forwarded a device's later update first) is parked by the engine without integrating,
    yet it is new and must be stored, or it is acknowledged and then lost with the next reload;
    and Yrs still adds a zero clock for its client to the state vector, so the comparison is not
    even stable. Instead:

    * the update's diff against the current state vector is empty: every struct in it is
      already integrated (and it deletes nothing); or
    * it is byte-for-byte an update this document stored earlier that did not fully integrate
      (a parked update sent again); remembered by digest, rebuilt when loading.

    A re-send that is neither (e.g. a parked update re-encoded differently, or one forgotten by
    compaction) is stored once more: a harmless duplicate row, never a loss.
    """
    if replica.covers(update):
        return True
    return bool(entry.parked) and digest(update) in entry.parked


def integrated(replica: Replica, update: bytes) -> bool:
    """Whether everything in ``update`` (just applied) is now covered by the state vector."""
    return replica.covers(update)
