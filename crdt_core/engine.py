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

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgpack
import pycrdt

from crdt_core.errors import EngineError

__all__ = [
    "EngineError",
    "Replica",
    "Subscription",
    "diff_update",
    "empty_update",
    "fold_updates",
    "merge_updates",
    "parse_state_vector",
    "state_vector_of_update",
]

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

    __slots__ = ("_doc", "_maps", "_captured", "_capture_sub", "__weakref__")

    def __init__(self, client_id: int | None = None) -> None:
        if client_id is not None and not 0 <= client_id < 2**53:
            raise EngineError(f"client id out of range: {client_id}")
        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        self._maps: dict[str, pycrdt.Map[Any]] = {}
        self._captured = _UpdateSlot()
        self._capture_sub: Any = None

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
        """The state vector as ``{client_id: next_clock}``."""
        return parse_state_vector(self.state_vector())

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
        try:
            self._doc.apply_update(bytes(update))
        except BaseException as exc:  # noqa: BLE001
            raise _guard("cannot apply update", exc) from None

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
        # The update comes from a document observer (Yrs encodes it at commit, from the
        # transaction's own changes). ``get_update(get_state())`` around the transaction gave the
        # same bytes but cost time linear in the document: 13 us per write at 100 records, 39 us
        # at 10,000 (benchmarks, local_writes). The observer is attached on the first local write,
        # so replicas that only apply remote updates never pay for encoding them again; it holds
        # no reference to this replica, so ``__del__`` can drop it (see there).
        if self._capture_sub is None:
            self._capture_sub = self._doc.observe(self._captured)
        self._captured.update = EMPTY_UPDATE
        with self._doc.transaction():
            for root, key, value in batch:
                self._map(root)[key] = value
        return self._captured.update

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


def diff_update(update: bytes, state_vector: bytes) -> bytes:
    _check_declared_count(bytes(update), UPDATE_BLOCK_MIN_BYTES, "cannot diff update")
    _check_declared_count(bytes(state_vector), SV_ENTRY_MIN_BYTES, "cannot diff update: bad state vector")
    try:
        return bytes(pycrdt.get_update(bytes(update), bytes(state_vector)))
    except BaseException as exc:  # noqa: BLE001
        raise _guard("cannot diff update", exc) from None


def parse_state_vector(state_vector: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector into ``{client_id: clock}`` (pure Python, strict)."""
    from crdt_core.yupdate import decode_state_vector

    return decode_state_vector(state_vector)
