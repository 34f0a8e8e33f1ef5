"""The only module that talks to the CRDT engine (Yrs, through pycrdt).

Why a wrapper at all: the engine is swappable (y-py before, maybe loro later), and its quirks
belong in one place. The quirks handled here:

* pycrdt writes every Python number as a JSON-style double (a small int comes back as ``3.0``,
  and the encoder may even pick float32). QuickSlot therefore stores every value as opaque bytes:
  typed values go through msgpack (``set_value``/``get_value``), so ``3`` comes back as ``3``.
  Signed records are bytes already and are never re-encoded by the engine.
* pycrdt raises plain ``ValueError`` (and on very odd input possibly ``RuntimeError`` or a
  Rust panic surfaced as ``BaseException``); every call that touches untrusted bytes maps all of
  them to :class:`EngineError`. An update that fails to decode leaves the document unchanged,
  because Yrs decodes the whole update before it integrates anything.
* Yrs reserves memory for the entry count an update or a state vector declares in its first
  varint before it reads a single entry: a 6-byte state vector declaring 2**29 entries made the
  engine allocate 1 GiB for a second (measured; found by the relay's fuzzing). Every call that
  hands untrusted bytes to the engine first checks that count against the bytes that follow
  (:func:`_check_declared_count`), so what the engine reserves is bounded by the input's size.
* ``merge_updates`` is quadratic in the number of inputs (docs/design.md, "Engine": 10,000 small updates take
  781 ms merged against 94 ms applied one by one), so :func:`fold_updates` folds a log by applying it to
  a scratch document instead.

Documents here only ever hold top-level maps whose values are bytes; that is the shape the
update validator (``crdt_core.yupdate``) knows how to read without applying.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import Any

import msgpack
import pycrdt

from crdt_core.errors import EngineError
from crdt_core.yupdate import decode_state_vector, decode_update, encode_map_inserts

__all__ = [
    "EngineError",
    "Replica",
    "covered_by",
    "Subscription",
    "diff_update",
    "empty_update",
    "fold_updates",
    "merge_updates",
    "parse_state_vector",
    "state_vector_of_update",
]

#: Changes :meth:`Replica.updates_since` remembers (their updates, up to this size each).
JOURNAL_LENGTH = 64
JOURNAL_MAX_BYTES = 64 * 1024

#: The Yjs v1 encoding of an update that changes nothing (no structs, empty delete set).
EMPTY_UPDATE = b"\x00\x00"
#: The Yjs v1 encoding of an empty state vector.
EMPTY_STATE_VECTOR = b"\x00"


def empty_update() -> bytes:
    return EMPTY_UPDATE


def _guard(what: str, exc: BaseException) -> EngineError:
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    return EngineError(f"{what}: {exc}")


#: The fewest bytes one declared entry can take: a state-vector entry is two varints (client,
#: clock); an update's per-client block is at least three (struct count, client, first clock).
SV_ENTRY_MIN_BYTES = 2
UPDATE_BLOCK_MIN_BYTES = 3


def _check_declared_count(data: bytes, min_entry_bytes: int, what: str) -> None:
    """Refuse bytes whose leading count promises more entries than the bytes could hold.

    Only the count is read (at most ten bytes); a truncated varint is left to the engine, which
    reports it without reserving anything.
    """
    count = 0
    for i in range(min(len(data), 10)):
        byte = data[i]
        count |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            room = len(data) - (i + 1)
            if count * min_entry_bytes > room:
                raise EngineError(f"{what} declares {count} entries in {room} bytes")
            return
    if len(data) > 10:
        raise EngineError(f"{what} starts with an over-long count")


class Subscription:
    """Handle returned by :meth:`Replica.observe`; call :meth:`close` to stop observing."""

    def __init__(self, doc: pycrdt.Doc[Any], native: Any) -> None:
        self._doc = doc
        self._native = native
        self._open = True

    def close(self) -> None:
        if self._open:
            self._doc.unobserve(self._native)
            self._open = False


class _UpdateSlot:
    """Receives each transaction's update; deliberately holds no reference to its replica."""

    __slots__ = ("update",)

    def __init__(self) -> None:
        self.update = EMPTY_UPDATE

    def __call__(self, event: Any) -> None:
        self.update = bytes(event.update)


class Replica:
    """One CRDT document held by one replica.

    The client id identifies this replica's writes inside the CRDT; give each device its own
    (random 53-bit ints are what Yjs uses) and never reuse one across two live copies of a doc.
    """

    __slots__ = (
        "_doc",
        "_maps",
        "_captured",
        "_capture_sub",
        "_clocks",
        "_plain",
        "_unexamined",
        "_parkable",
        "_written",
        "_journal",
        "_journal_seq",
        "_journal_from",
        "__weakref__",
    )

    def __init__(self, client_id: int | None = None) -> None:
        if client_id is not None and not 0 <= client_id < 2**53:
            raise EngineError(f"client id out of range: {client_id}")
        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        self._maps: dict[str, pycrdt.Map[Any]] = {}
        self._captured = _UpdateSlot()
        self._capture_sub: Any = None
        #: ``{client: next clock}`` once :meth:`clocks` built it, kept current by every change
        #: (None: not built, or dropped after something it cannot follow; rebuilt on next use).
        self._clocks: dict[int, int] | None = None
        #: While ``_clocks`` is set: nothing here was ever deleted, so a local write of a key
        #: the map does not hold encodes as one insert with no origin (see :meth:`write`).
        self._plain = False
        #: Updates were applied while there was no cache: they may have left structs the engine
        #: parked (waiting for a dependency), which a later update can release unseen.
        self._unexamined = False
        #: The engine may hold parked structs: the cache is never kept (each read parses).
        self._parkable = False
        #: The update the last local write returned: applying it again changes nothing.
        self._written: bytes | None = None
        #: The last few changes' updates, numbered (see :meth:`updates_since`); ``_journal_from``:
        #: the first number it can still answer from.
        self._journal: deque[tuple[int, bytes]] = deque(maxlen=JOURNAL_LENGTH)
        self._journal_seq = 0
        self._journal_from = 1

    def __del__(self) -> None:
        # pycrdt keeps a document's observers alive from Rust, which Python's collector cannot
        # see: a document with an observer is never freed. Dropping ours frees the document.
        sub = getattr(self, "_capture_sub", None)
        if sub is not None:
            try:
                self._doc.unobserve(sub)
            except BaseException:  # noqa: BLE001 - interpreter shutdown; nothing left to free
                pass

    # --- identity and whole-state encoding -------------------------------------------------

    @property
    def client_id(self) -> int:
        return int(self._doc.client_id)

    def encode_state(self) -> bytes:
        """The whole document as one update (what a snapshot stores)."""
        return bytes(self._doc.get_update())

    def state_vector(self) -> bytes:
        return bytes(self._doc.get_state())

    def state_clocks(self) -> dict[int, int]:
        """The state vector as ``{client_id: next_clock}`` (a copy: later changes leave it be)."""
        return dict(self.clocks())

    def clocks(self) -> Mapping[int, int]:
        """The state vector as ``{client_id: next_clock}``: a read-only view that stays current
        (it follows later changes; copy it, or use :meth:`state_clocks`, to keep a snapshot).

        Why not parse ``state_vector()`` each time: a day document holds one Yjs client per
        device that booked there, so its state vector grows with the document (10,000 bookings
        by 10,000 customers: 10,000 entries), and parsing it in Python on every incoming update
        made a booking into a full day 16x dearer than into an empty one (benchmarks,
        ``relay_bench.inprocess``). Built once; then every applied update and local write
        advances the clients it touched (:meth:`_follow`).
        """
        clocks = self._clocks
        if clocks is None:
            state_vector = self.state_vector()
            clocks = decode_state_vector(state_vector)
            if self._unexamined:
                self._check_parked(clocks)
            if self._parkable:
                return MappingProxyType(clocks)
            # The diff against our own state vector holds no structs, only the delete set.
            self._plain = bytes(self._doc.get_update(state_vector)) == EMPTY_UPDATE
            self._clocks = clocks
        return MappingProxyType(clocks)

    def holds_parked(self) -> bool:
        """Whether the engine may hold structs it parked (waiting for a dependency); exact once
        everything applied was examined, else checked on the whole state (once)."""
        if self._unexamined:
            self._check_parked(decode_state_vector(self.state_vector()))
        return self._parkable

    def _check_parked(self, clocks: Mapping[int, int]) -> None:
        # Yrs encodes parked structs in the whole state but not in its state vector: once per
        # loaded document (65 ms at 10,000 bookings by 10,000 devices).
        self._unexamined = False
        whole = bytes(pycrdt.get_state(self.encode_state()))
        self._parkable = self._parkable or decode_state_vector(whole) != clocks

    def covers(self, update: bytes) -> bool:
        """Whether everything ``update`` holds is integrated here already and it deletes nothing
        (its diff against this state vector would be empty), read from the clocks, not the engine.

        Raises:
            EngineError: ``update`` is not a Yjs v1 update.
        """
        return covered_by(update, self.clocks())

    def reading(self) -> AbstractContextManager[object]:
        """One engine transaction around several reads (nests). Never write or apply inside it.

        Why: pycrdt opens a read-write Yrs transaction for every read when none is open;
        validating one booking reads the document several times.
        """
        return self._doc.transaction()

    def _follow(self, update: bytes) -> None:
        """Keep the clock cache (and ``_plain``) right after ``update`` was applied; nothing to
        do while there is no cache (loading a document applies thousands of updates).

        An update of plain top-level map inserts whose every client run starts at or below this
        replica's clock for it integrates whole (no origins to wait for), so each of its clients
        ends at the run's end. Anything else (other structs, a gap the engine parks, an update
        this decoder cannot read) drops the cache, to be rebuilt from the engine.
        """
        clocks = self._clocks
        if clocks is None:
            self._unexamined = True
            return
        try:
            decoded = decode_update(update)
        except EngineError:
            self._clocks, self._parkable = None, True
            return
        if decoded.deletes:
            self._plain = False
        if decoded.others:
            self._clocks, self._parkable = None, True
            return
        for client, (start, end) in decoded.ranges.items():
            have = clocks.get(client, 0)
            if start > have:
                self._clocks, self._parkable = None, True
                return
            if end > have:
                clocks[client] = end

    def _record(self, update: bytes) -> None:
        """Number one change and keep its update while the clock cache vouches that it
        integrated whole (see :meth:`_follow`); otherwise start the journal afresh."""
        self._journal_seq += 1
        if self._clocks is None or len(update) > JOURNAL_MAX_BYTES:
            self._journal.clear()
            self._journal_from = self._journal_seq + 1
            return
        self._journal.append((self._journal_seq, update))
        if len(self._journal) == JOURNAL_LENGTH:
            self._journal_from = self._journal[0][0]

    def journal_mark(self) -> int:
        """The number of the last change (for :meth:`updates_since`)."""
        return self._journal_seq

    def updates_since(self, mark: int) -> list[bytes] | None:
        """The updates of the changes after ``mark`` (a :meth:`journal_mark`), each integrated
        whole when it was applied, in order; None when they are not all known any more (too many,
        too large, or one the clock cache could not follow): read the document instead.

        Why: an index over a document (``crdt_core.repeats``) brought up to date from the new
        structs only; asking the engine for them (``diff`` from a state vector) costs time
        linear in the document's clients.
        """
        if mark < self._journal_from - 1 or mark > self._journal_seq:
            return None
        newer: list[bytes] = []
        for n, u in reversed(self._journal):  # numbered in order: read back to the mark only
            if n <= mark:
                break
            newer.append(u)
        newer.reverse()
        return newer

    def diff(self, state_vector: bytes) -> bytes:
        """Exactly what a peer with ``state_vector`` lacks (Yjs sync step 2)."""
        _check_declared_count(state_vector, SV_ENTRY_MIN_BYTES, "bad state vector")
        try:
            return bytes(self._doc.get_update(state_vector))
        except BaseException as exc:  # noqa: BLE001 - engine panics are not Exceptions
            raise _guard("bad state vector", exc) from None

    # --- applying remote changes -------------------------------------------------------------

    def apply_update(self, update: bytes) -> None:
        """Integrate a remote update. Idempotent; out-of-order updates are held until their deps arrive.

        Raises:
            EngineError: the bytes are not a Yjs v1 update; the document is unchanged.
        """
        if not isinstance(update, (bytes, bytearray, memoryview)):
            raise EngineError(f"update must be bytes, not {type(update).__name__}")
        _check_declared_count(update, UPDATE_BLOCK_MIN_BYTES, "cannot apply update")
        data = bytes(update)
        if data is self._written:
            return  # this replica's own last write, handed back (the relay's stamps)
        try:
            self._doc.apply_update(data)
        except BaseException as exc:  # noqa: BLE001
            self._clocks, self._unexamined = None, True
            raise _guard("cannot apply update", exc) from None
        if self._doc._txn is not None:  # inside an open transaction: not integrated yet
            self._clocks, self._unexamined = None, True
            self._record(data)  # (drops the journal: the cache cannot vouch for it)
            return
        self._follow(data)
        self._record(data)

    # --- reading -----------------------------------------------------------------------------

    def _map(self, root: str) -> pycrdt.Map[Any]:
        found = self._maps.get(root)
        if found is None:
            found = self._doc.get(root, type=pycrdt.Map)
            self._maps[root] = found
        return found

    def _existing(self, root: str) -> pycrdt.Map[Any] | None:
        """The map if the document has it. Reads go through here: pycrdt's ``Doc.get`` creates a
        missing root, so a plain read would change what ``roots()`` and ``to_py()`` report."""
        found = self._maps.get(root)
        if found is not None:
            return found
        if root not in self._doc.keys():
            return None
        return self._map(root)

    def get_bytes(self, root: str, key: str) -> bytes | None:
        m = self._existing(root)
        value = None if m is None else m.get(key)
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise EngineError(f"{root}/{key} holds {type(value).__name__}, not bytes")

    def items(self, root: str) -> Iterator[tuple[str, bytes]]:
        """Every ``(key, bytes)`` of one top-level map; non-bytes values are skipped."""
        m = self._existing(root)
        if m is None:
            return
        for key, value in m.items():
            if isinstance(value, (bytes, bytearray)):
                yield key, bytes(value)

    def keys(self, root: str) -> set[str]:
        m = self._existing(root)
        return set() if m is None else set(m.keys())

    def has_key(self, root: str, key: str) -> bool:
        m = self._existing(root)
        return m is not None and key in m

    def size(self, root: str) -> int:
        m = self._existing(root)
        return 0 if m is None else len(m)

    def get_value(self, root: str, key: str) -> Any:
        """A value written with :meth:`set_value`, with the exact type it was written with.

        Values written by other engines as plain Yjs values (y-py cannot write binary) come back
        as the engine returns them; integral doubles are turned back into ints, because every
        Yjs writer encodes integers that way.
        """
        m = self._existing(root)
        value = None if m is None else m.get(key)
        if isinstance(value, (bytes, bytearray)):
            try:
                return msgpack.unpackb(bytes(value), raw=False, strict_map_key=True)
            except Exception as exc:
                raise EngineError(f"{root}/{key} is not a msgpack value: {exc}") from None
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value

    def to_py(self) -> dict[str, dict[str, bytes]]:
        """Every top-level map this replica knows of, as plain dicts (for equality checks)."""
        out: dict[str, dict[str, bytes]] = {}
        for root in sorted(self._doc.keys()):
            out[root] = dict(self.items(root))
        return out

    def roots(self) -> list[str]:
        return sorted(self._doc.keys())

    # --- local writes ------------------------------------------------------------------------

    def write(self, entries: Iterable[tuple[str, str, bytes]]) -> bytes:
        """Write ``(root, key, bytes)`` entries in one transaction; returns that transaction's update.

        Every entry is checked before the transaction opens: Yrs transactions do not roll back,
        so a bad entry found half-way would leave the earlier ones written.
        """
        batch: list[tuple[str, str, bytes]] = []
        for root, key, value in entries:
            if not isinstance(value, (bytes, bytearray)):
                raise EngineError("values are bytes; encode them first")
            if not (isinstance(root, str) and isinstance(key, str)):
                raise EngineError("map names and keys are strings")
            batch.append((root, key, bytes(value)))
        if not batch:
            return EMPTY_UPDATE
        if self._doc._txn is not None:
            raise EngineError("write inside an open transaction (reading())")
        clocks = self._clocks
        if (
            clocks is not None
            and self._plain
            and len({(root, key) for root, key, _ in batch}) == len(batch)
            and not any(self.has_key(root, key) for root, key, _ in batch)
        ):
            # New keys in a document that never deleted anything: Yrs gives each entry one
            # plain insert (no origin), at this client's next clocks, in order. Encoding that
            # here spares the capturing observer, which makes *every* transaction on the
            # document cost time linear in its clients (700 us per transaction at 10,000
            # clients, against about 1 us without one; measured).
            own = self.client_id
            first = clocks.get(own, 0)
            with self._doc.transaction():
                for root, key, value in batch:
                    self._map(root)[key] = value
            clocks[own] = first + len(batch)
            self._written = encode_map_inserts(own, first, batch)
            self._record(self._written)
            return self._written
        # Otherwise the update comes from a document observer (Yrs encodes it at commit, from
        # the transaction's own changes), attached for this transaction only (see above).
        # ``get_update(get_state())`` around the transaction gave the same bytes but cost time
        # linear in the document.
        self._captured.update = EMPTY_UPDATE
        self._capture_sub = self._doc.observe(self._captured)
        try:
            with self._doc.transaction():
                for root, key, value in batch:
                    self._map(root)[key] = value
        except BaseException:
            self._clocks, self._unexamined = None, True
            raise
        finally:
            self._doc.unobserve(self._capture_sub)
            self._capture_sub = None
        self._follow(self._captured.update)
        self._written = self._captured.update
        self._record(self._written)
        return self._written

    def set_value(self, root: str, key: str, value: Any) -> bytes:
        """Store a plain value (ints stay ints) as msgpack bytes; returns the update."""
        return self.write([(root, key, msgpack.packb(value, use_bin_type=True))])

    def observe(self, callback: Callable[[bytes], None]) -> Subscription:
        """Call ``callback(update)`` after every transaction, local or remote."""

        def on_txn(event: Any) -> None:
            callback(bytes(event.update))

        return Subscription(self._doc, self._doc.observe(on_txn))

    def copy(self, client_id: int | None = None) -> Replica:
        clone = Replica(client_id)
        clone.apply_update(self.encode_state())
        return clone


# --- raw-update helpers (no document needed) --------------------------------------------------


def merge_updates(updates: Iterable[bytes]) -> bytes:
    """Merge raw updates without a document. Quadratic in the count: prefer :func:`fold_updates`."""
    items = [bytes(u) for u in updates]
    if not items:
        return EMPTY_UPDATE
    for item in items:
        _check_declared_count(item, UPDATE_BLOCK_MIN_BYTES, "cannot merge updates")
    try:
        return bytes(pycrdt.merge_updates(*items))
    except BaseException as exc:  # noqa: BLE001
        raise _guard("cannot merge updates", exc) from None


def fold_updates(updates: Iterable[bytes]) -> bytes:
    """Fold a log of updates into one by applying them to a scratch document (linear, unlike merge)."""
    scratch = Replica()
    for update in updates:
        scratch.apply_update(update)
    return scratch.encode_state()


def state_vector_of_update(update: bytes) -> bytes:
    _check_declared_count(bytes(update), UPDATE_BLOCK_MIN_BYTES, "cannot read update")
    try:
        return bytes(pycrdt.get_state(bytes(update)))
    except BaseException as exc:  # noqa: BLE001
        raise _guard("cannot read update", exc) from None


def covered_by(update: bytes, clocks: Mapping[int, int]) -> bool:
    """Whether a replica at ``clocks`` holds everything ``update`` holds and it deletes nothing.

    Raises:
        EngineError: ``update`` is not a Yjs v1 update.
    """
    decoded = decode_update(update)
    if decoded.deletes:
        return False
    return all(end <= clocks.get(client, 0) for client, (_, end) in decoded.ranges.items())


def diff_update(update: bytes, state_vector: bytes) -> bytes:
    _check_declared_count(bytes(update), UPDATE_BLOCK_MIN_BYTES, "cannot diff update")
    _check_declared_count(bytes(state_vector), SV_ENTRY_MIN_BYTES, "cannot diff update: bad state vector")
    try:
        return bytes(pycrdt.get_update(bytes(update), bytes(state_vector)))
    except BaseException as exc:  # noqa: BLE001
        raise _guard("cannot diff update", exc) from None


def parse_state_vector(state_vector: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector into ``{client_id: clock}`` (pure Python, strict)."""
    return decode_state_vector(state_vector)
