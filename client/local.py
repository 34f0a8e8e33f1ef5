"""The offline half of the client: :class:`LocalClient`, an async library API over one profile.

Why a library first: the CLI, the sync engine, the peer server and an embedding app all drive the
same operations, and every one of them must keep the same invariants:

* **A local change is one SQLite transaction** holding the document update, its outbox entry,
  the projection rows it changes and the clock reading it used. A crash (even SIGKILL) leaves
  either all of them or none, so nothing is ever queued that the document lacks, or written
  to the document and never queued.
* **Memory never runs ahead of disk.** Documents are loaded (snapshot + log replay through
  :class:`crdt_core.engine.Replica`) and kept in memory. A write mutates the in-memory replica
  inside the transaction; if the transaction fails, that replica is dropped and reloaded from disk
  on next use.
* **Several processes may share a profile** (``quickslot book`` while ``quickslot sync --watch``
  runs). Each write transaction first catches up with what other processes committed
  (``PRAGMA data_version`` says whether anyone did), so a process never signs on top of, nor
  compacts away, a state it has not seen.
* **A device writes each document under one Yjs client id**, derived from its certificate id and
  the document's generation (``crdt_core.clientids``; generations in ``doc_writers``). Writes go
  into the loaded replica itself, so consecutive writes continue one client's clocks and a day of
  10,000 bookings carries one state-vector entry per device, not one per booking (Yjs slows down
  with the state vector). Two processes sharing the profile never reuse a clock: each write
  catches up with the other's commits under the write lock first.
* **A refused write never wedges the writes behind it.** The relay refusing one of this device's
  writes in a document (or a relay update that does not fit the local document) queues that
  document for a rebuild (``Store``'s ``doc_rebuilds``); :meth:`LocalClient.rebuild_from_relay`
  then replaces the local document by the relay's and re-writes every still-pending local record
  (the same signed bytes) under the next generation's client id, as new outbox entries.
* **Everything that arrives is validated** with ``crdt_core.validation.validate_update`` against
  the relay keys cached at login, whoever carried it. What a peer handed over is also judged by
  the peer arrival rules (this device's clock; ``ArrivalPolicy``) and queued for the relay
  (store-and-forward), because the relay may not have it yet. What the relay sent is not judged
  by arrival rules again: the relay did that when it arrived there.
* **Verdicts are recomputed once per batch**, and changes to the user's own reservations are
  returned and emitted as :mod:`client.events`.
* **The HLC never goes backwards**, across restarts and processes: its last reading is stored in
  ``meta`` in every write transaction.

No networking here; the sync engine drives :meth:`LocalClient.apply_remote_batch`,
:meth:`LocalClient.diff`, the outbox methods and the cursors in :attr:`LocalClient.store`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as _dt
import json
import logging
import os
import secrets as _random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from client import projections as proj
from client.events import BookingRejected, ClientEvent, LoggedOut, booking_event
from client.projections import (
    CategoryRow,
    ProjectedRecord,
    ReservationRow,
    ShopDetail,
    SlotAvailability,
    SlotRow,
    StaffRow,
)
from client.secrets import SecretStore
from client.store import (
    DB_FILE,
    DEFAULT_COMPACT_MIN_BYTES,
    AppendResult,
    OutboxCounts,
    OutboxEntry,
    Store,
    Tx,
)
from crdt_core.authoring import Author, new_id
from crdt_core.certs import Certificate, CertificateCache, DeviceKey, parse_certificate, public_bytes
from crdt_core.clientids import GENERATIONS, client_id_for, generation_of
from crdt_core.engine import EngineError, Replica, parse_state_vector, state_vector_of_update
from crdt_core.errors import ClockSkewError, SchemaError, SignatureError, ValidationError
from crdt_core.hlc import HybridClock, Timestamp
from crdt_core.reader import BookingsState, read_bookings, read_map, shop_staff, slot_templates
from crdt_core.records import open_record
from crdt_core.schema import (
    CERTS_ROOT,
    SCHEMA_VERSION,
    Category,
    DocId,
    DocKind,
    EventType,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    Stamp,
    StatusEvent,
    TypedRecord,
    check_id,
    parse_day,
    parse_doc_id,
    parse_record,
    per_customer_limits,
)
from crdt_core.validation import ArrivalPolicy, Rights, day_in_range, may_write, validate_update
from crdt_core.verdict import (
    ClaimState,
    ClaimVerdict,
    SlotVerdict,
    Verdict,
    VerdictChange,
    compute_verdict,
    exceeds_capacity,
    tentative_key,
)
from crdt_core.yupdate import decode_update

__all__ = [
    "BatchFailure",
    "BatchResult",
    "ClientError",
    "Identity",
    "InvalidRequest",
    "LocalClient",
    "NotAllowed",
    "NotFound",
    "NotLoggedIn",
    "RebuildResult",
]

log = logging.getLogger(__name__)

_META_NODE = "hlc_node"
_META_HLC = "hlc_last"
_META_USER = "user_id"
_META_CERT = "certificate"
_META_RELAY_KEYS = "relay_keys"
_EVENT_QUEUE_SIZE = 10_000
_T = TypeVar("_T")


class ClientError(Exception):
    """Base of the errors the local client raises on purpose (messages are for the user)."""


class NotLoggedIn(ClientError):
    """No identity (or no relay keys, or the certificate expired): log in again."""


class NotAllowed(ClientError):
    """The user's certificate does not grant this action (the relay would refuse it)."""


class NotFound(ClientError):
    """No such shop, slot or reservation on this replica (sync first?)."""


class InvalidRequest(ClientError, ValueError):
    """An argument breaks the schema (an id, a party size, a time...)."""


class _Stale(Exception):
    """Another process committed since this one last looked: an optimistic write was rolled back."""


@dataclass(frozen=True)
class Identity:
    """Who this profile signs as: set at login, cleared at logout."""

    user_id: str
    device: DeviceKey = field(repr=False)
    certificate: Certificate = field(repr=False)
    relay_keys: Mapping[str, bytes] = field(repr=False)

    @property
    def rights(self) -> Rights:
        return Rights.of(self.certificate)


@dataclass(frozen=True)
class BatchFailure:
    index: int
    doc_id: str
    error: ValidationError


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`LocalClient.apply_remote_batch` did: the user's verdict changes and the refusals.

    A refused update is skipped whole (nothing of it is applied); the others are applied. An
    update refused with ``missing_deps`` after the whole batch was tried means the sender must
    re-run the state-vector exchange.
    """

    changes: list[VerdictChange]
    failed: list[BatchFailure]
    applied: int


@dataclass(frozen=True)
class RebuildResult:
    """What :meth:`LocalClient.rebuild_from_relay` did to one document."""

    doc_id: str
    reason: str
    generation: int | None
    """The generation this device now writes the document under (None: not logged in)."""
    rewritten: int
    """Pending local writes re-written under it (as new outbox entries)."""
    entries: tuple[int, ...]
    """The new outbox entries' ids."""


def _writer_client(signer: str | None, generation: int) -> int | None:
    """The client id ``signer`` writes a document under at ``generation``; None (a random id that
    is never written under) when there is no signer or it has used up its generations."""
    if signer is None or generation >= GENERATIONS:
        return None
    return client_id_for(signer, generation)


def _signer_of(raw: bytes) -> str | None:
    try:
        return open_record(raw).signer
    except SchemaError:
        return None


async def _drop_vanished_rows(tx: Tx, doc_id: str, verdict: Verdict | None) -> None:
    """After a rebuild: drop the reservation rows of claims the document no longer holds.

    Rows of refused claims stay (they carry the relay's reason for the user), holding no seats.
    """
    keep = set() if verdict is None else set(verdict.claims)
    rows = await tx.fetchall(
        "SELECT reservation_id FROM reservations WHERE doc_id = ? AND rejected_code IS NULL", (doc_id,)
    )
    await tx.executemany(
        "DELETE FROM reservations WHERE doc_id = ? AND reservation_id = ?",
        [(doc_id, r[0]) for r in rows if r[0] not in keep],
    )
    # A refused claim counted until the rebuild (it was in the document): it holds nothing now.
    await tx.execute(
        "UPDATE reservations SET holds_seats = 0 WHERE doc_id = ? AND rejected_code IS NOT NULL", (doc_id,)
    )


@dataclass
class _Loaded:
    """A document in memory, and how far into the stored log it has been replayed.

    ``bookings`` caches a bookings document's parsed records (the verdict's input), kept current
    by adding each transaction's new records, so a booking costs O(new records) of parsing rather
    than re-reading the whole day; it is dropped whenever the replica changes another way.
    """

    replica: Replica
    generation: int
    upto: int
    version: int
    bookings: BookingsState | None = None
    signer: str | None = None
    """The certificate id whose client id (at the document's generation) the replica writes under."""


@dataclass
class _Work:
    """The state of one write transaction of the client, finished by ``LocalClient._finish``."""

    tx: Tx
    local: bool
    dirty: set[str] = field(default_factory=set)
    touched: dict[str, list[ProjectedRecord]] = field(default_factory=dict)
    appended: dict[str, AppendResult] = field(default_factory=dict)
    appended_later: dict[str, AppendResult] = field(default_factory=dict)
    """Local appends that travelled with COMMIT (``Tx.append_update_later``): compacted after it."""
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    changes: list[VerdictChange] = field(default_factory=list)
    events: list[ClientEvent] = field(default_factory=list)
    #: Statements to run after the projection, still inside the transaction.
    epilogue: list[Callable[[Tx], Awaitable[None]]] = field(default_factory=list)


_RESERVATION_COLUMNS = (
    "doc_id, reservation_id, shop_id, day, slot_id, customer, party, note, hlc, state, waitlist_position, "
    "final, stamp, staff_confirmed, holds_seats, rejected_code, rejected_reason, updated_ms"
)


async def _restore_refused_rows(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    for row in rows:
        await tx.execute(
            f"INSERT INTO reservations({_RESERVATION_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
            "ON CONFLICT(doc_id, reservation_id) DO UPDATE SET holds_seats = 0, "
            "rejected_code = excluded.rejected_code, rejected_reason = excluded.rejected_reason",
            (*row[:14], 0, *row[15:]),
        )


def _system_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def _unchanged_since(conn: sqlite3.Connection, data_version: int) -> None:
    """On the SQLite thread, inside the write transaction: raise :class:`_Stale` if another
    connection committed since ``data_version`` was read (``PRAGMA data_version`` ignores ours)."""
    row = conn.execute("PRAGMA data_version").fetchone()
    if row is None or int(row[0]) != data_version:
        raise _Stale


def _as_day(day: _dt.date | str) -> _dt.date:
    if isinstance(day, _dt.date):
        return day
    try:
        return parse_day(day)
    except SchemaError:
        raise InvalidRequest(f"not a day (YYYY-MM-DD): {day!r}") from None


def _id(value: str, what: str) -> str:
    try:
        return check_id(value, what)
    except SchemaError as exc:
        raise InvalidRequest(str(exc)) from None


def _slots_touched(state: BookingsState, records: Iterable[ProjectedRecord]) -> set[str] | None:
    """The slots whose verdict ``records`` (already in ``state``) can change; None: any slot.

    A new claim or status event reorders and reseats its own slot only; a stamp moves the stamp
    prefix, which decides finality in every slot, and anything else is treated alike.
    """
    slots: set[str] = set()
    for _root, _key, rec in records:
        if isinstance(rec, Reservation):
            slots.add(rec.slot)
        elif isinstance(rec, StatusEvent) and rec.reservation in state.reservations:
            slots.add(state.reservations[rec.reservation].slot)
        else:
            return None
    return slots or None


def _reverdict(
    previous: Verdict,
    state: BookingsState,
    capacities: Mapping[str, int],
    slots: set[str],
    limits: Mapping[str, int] | None = None,
) -> Verdict:
    """``compute_verdict(state, capacities)`` when ``state`` differs from ``previous``'s only in ``slots``.

    Why: recomputing a whole day per booking made a booking O(document) (about 12 ms at 1,000
    reservations and 210 ms at 10,000; benchmarks, client suite). Slots are ranked and seated
    independently; what couples them is the stamp prefix, which new claims and status events
    leave alone. So only ``slots`` are recomputed, from their own claims and events with every
    stamp (for the order and the prefix), and every other slot's verdict is kept as it was.
    """
    reservations = {rid: r for rid, r in state.reservations.items() if r.slot in slots}
    events = {eid: e for eid, e in state.events.items() if e.reservation in reservations}
    part = compute_verdict(BookingsState(state.doc, reservations, events, state.stamps), capacities, limits)
    claims = dict(previous.claims)
    claims.update(part.claims)
    by_slot = dict(previous.slots)
    by_slot.update(part.slots)
    return Verdict(slots=by_slot, claims=claims, stamp_prefix=part.stamp_prefix)


def _appended(
    previous: Verdict, state: BookingsState, capacities: Mapping[str, int], added: Sequence[ProjectedRecord]
) -> Verdict | None:
    """The verdict after new, unstamped claims that each rank last in their slot; None: not that case.

    Why: that is what a local booking is (a fresh id, no stamp, an HLC newer than anything this
    replica has seen), and in strict first-come, first-served order a claim ranked last changes
    nobody before it: its own seats follow from the slot's seats left and whether an earlier
    claim is already blocked. That is O(claims in the slot) of cheap checks instead of
    re-ranking the slot (``_reverdict``, ~1 ms at 1,000 reservations). Anything else (a stamp, an
    event, a claim that sorts earlier) returns None and takes the general path, and
    ``tests/client/test_local_slot_verdict.py`` checks the result against a full recompute.
    """
    claims = dict(previous.claims)
    slots = dict(previous.slots)
    for _root, key, rec in added:
        if not isinstance(rec, Reservation) or key != rec.id or key in previous.claims:
            return None
        if key not in state.reservations:  # refused by the relay: not part of the verdict
            return None
        slot = slots.get(rec.slot)
        capacity = max(0, capacities.get(rec.slot, 0))
        before: tuple[ClaimVerdict, ...] = ()
        if slot is not None:
            if slot.capacity != capacity:
                return None
            before = slot.claims
        if any(c.customer == rec.customer for c in before):  # a repeat? the general path decides
            return None
        if before and before[-1].stamp is None:
            last = state.reservations.get(before[-1].reservation_id)
            if last is None or tentative_key(last) >= tentative_key(rec):
                return None
        waiting = 0
        blocked = False  # a waitlisted claim, or a no-show that did not fit, blocks all after it
        for c in before:
            if c.state is ClaimState.WAITLISTED:
                waiting += 1
            elif c.state is ClaimState.NO_SHOW and not c.holds_seats:
                blocked = True
        taken = slot.seats_taken if slot is not None else 0
        too_large = exceeds_capacity(rec.party, capacity)  # no seat, no place, blocks nobody
        fits = not (too_large or blocked or waiting) and rec.party <= capacity - taken
        now = ClaimState.TOO_LARGE if too_large else ClaimState.CONFIRMED if fits else ClaimState.WAITLISTED
        claim = ClaimVerdict(
            reservation_id=rec.id, slot=rec.slot, customer=rec.customer, party=rec.party, state=now,
            position=waiting + 1 if now is ClaimState.WAITLISTED else None, stamp=None, final=False,
            rank=len(before), staff_confirmed=False, holds_seats=fits,
        )  # fmt: skip
        claims[rec.id] = claim
        seats = taken + (rec.party if fits else 0)
        slots[rec.slot] = SlotVerdict(rec.slot, capacity, seats, (*before, claim))
    return Verdict(slots=slots, claims=claims, stamp_prefix=previous.stamp_prefix)


class LocalClient:
    """One profile, opened: browsing, booking and staff/owner actions, all offline; see the module doc."""

    def __init__(
        self,
        store: Store,
        secret_store: SecretStore,
        profile_dir: Path,
        now_ms: Callable[[], int],
    ) -> None:
        self.store = store
        self.secrets = secret_store
        self.profile_dir = profile_dir
        self._now_ms = now_ms
        self._clock = HybridClock("unset", physical_ms=now_ms)
        self._clock_saved = ""
        self._identity: Identity | None = None
        self._author: Author | None = None
        self._certs: CertificateCache | None = None
        self._docs: dict[str, _Loaded] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._templates: dict[str, dict[str, SlotTemplate]] = {}
        self._data_version: int | None = None
        self.events: asyncio.Queue[ClientEvent] = asyncio.Queue(maxsize=_EVENT_QUEUE_SIZE)
        self.dropped_events = 0

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        profile_dir: str | os.PathLike[str],
        *,
        now_ms: Callable[[], int] | None = None,
        secret_store: SecretStore | None = None,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
    ) -> LocalClient:
        """Open (creating if needed) the profile in ``profile_dir`` (mode 0700 when created).

        Args:
            now_ms: the wall clock (ms); tests pass a fixed one so certificates stay valid.
            secret_store: where tokens and the device key live (default: keyring, else a 0600 file).
        """
        profile = Path(profile_dir)
        profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        clock = now_ms or _system_ms
        store = await Store.open(profile / DB_FILE, now_ms=clock, compact_min_bytes=compact_min_bytes)
        try:
            secrets_at_rest = secret_store
            if secrets_at_rest is None:
                secrets_at_rest = await asyncio.to_thread(SecretStore, profile)
            client = cls(store, secrets_at_rest, profile, clock)
            await client._restore()
        except BaseException:
            await store.close()
            raise
        return client

    async def close(self) -> None:
        await self.store.close()
        self._docs.clear()
        self._verdicts.clear()
        self._templates.clear()

    async def __aenter__(self) -> LocalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _restore(self) -> None:
        """Read the clock, the relay keys and the identity back from ``meta`` and the secrets."""
        async with self.store.transaction() as tx:
            node = await tx.get_meta(_META_NODE)
            if node is None:
                node = "d" + _random.token_hex(6)
                await tx.set_meta(_META_NODE, node)
            last_text = await tx.get_meta(_META_HLC)
            user_id = await tx.get_meta(_META_USER)
            cert_text = await tx.get_meta(_META_CERT)
            keys_text = await tx.get_meta(_META_RELAY_KEYS)
        last = Timestamp.parse(last_text) if last_text else None
        if last is not None and last.node != node:
            last = Timestamp(last.wall_ms, last.counter, node)
        self._clock = HybridClock(node, physical_ms=self._now_ms, last=last)
        self._clock_saved = last_text or ""
        if keys_text:
            keys = {kid: base64.b64decode(v) for kid, v in json.loads(keys_text).items()}
            self._certs = CertificateCache(keys)
        if user_id and cert_text and self._certs is not None:
            private = await asyncio.to_thread(self.secrets.device_key)
            if private is None:
                log.warning("profile %s has an identity but no device key: log in again", self.profile_dir)
                return
            device = DeviceKey(private, base64.b64decode(cert_text))
            try:
                self._adopt(user_id, device, self._certs.trusted_keys)
            except ClientError as exc:
                log.warning("stored identity unusable (%s): log in again", exc)

    # --- identity ------------------------------------------------------------------------------

    def _adopt(self, user_id: str, device: DeviceKey, relay_keys: Mapping[str, bytes]) -> Identity:
        try:
            cert = parse_certificate(device.certificate, relay_keys)
        except (SchemaError, SignatureError) as exc:
            raise InvalidRequest(f"certificate does not verify: {exc}") from None
        if cert.user_id != user_id:
            raise InvalidRequest("certificate is for another user")
        if cert.device_key != public_bytes(device.private):
            raise InvalidRequest("certificate is for another device key")
        identity = Identity(user_id, device, cert, dict(relay_keys))
        self._identity = identity
        self._author = Author(user_id, device, self._clock)
        return identity

    @property
    def identity(self) -> Identity | None:
        return self._identity

    @property
    def user_id(self) -> str | None:
        return None if self._identity is None else self._identity.user_id

    @property
    def relay_keys(self) -> dict[str, bytes]:
        return {} if self._certs is None else dict(self._certs.trusted_keys)

    async def set_relay_keys(self, relay_keys: Mapping[str, bytes]) -> None:
        """Cache the relay's public keys (``/.well-known/jwks.json``); every update is checked with them."""
        keys = {str(k): bytes(v) for k, v in relay_keys.items()}
        async with self.store.transaction() as tx:
            await tx.set_meta(
                _META_RELAY_KEYS, json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()})
            )
        self._certs = CertificateCache(keys)

    async def set_identity(
        self, user_id: str, device: DeviceKey, relay_keys: Mapping[str, bytes]
    ) -> Identity:
        """Adopt a login: the device key (kept in the secret store) and its relay-issued certificate."""
        keys = {str(k): bytes(v) for k, v in relay_keys.items()}
        identity = self._adopt(user_id, device, keys)
        await asyncio.to_thread(self.secrets.set_device_key, device.private)
        async with self.store.transaction() as tx:
            await tx.set_meta(_META_USER, user_id)
            await tx.set_meta(_META_CERT, base64.b64encode(device.certificate).decode())
            await tx.set_meta(
                _META_RELAY_KEYS, json.dumps({k: base64.b64encode(v).decode() for k, v in keys.items()})
            )
        self._certs = CertificateCache(keys)
        log.info("profile %s now signs as %s (certificate %s)", self.profile_dir, user_id, device.cert_id)
        return identity

    async def logout(self, reason: str = "logged out") -> None:
        """Forget the tokens and the device key; the local data (and queued changes) stay."""
        await asyncio.to_thread(self.secrets.clear)
        async with self.store.transaction() as tx:
            await tx.delete_meta(_META_USER)
            await tx.delete_meta(_META_CERT)
        self._identity = None
        self._author = None
        self.emit(LoggedOut(at_ms=self._now_ms(), reason=reason))

    def _require_author(self) -> tuple[Author, Identity]:
        if self._author is None or self._identity is None:
            raise NotLoggedIn("not logged in")
        return self._author, self._identity

    def _require_certs(self) -> CertificateCache:
        if self._certs is None:
            raise NotLoggedIn("no relay keys cached: log in first")
        return self._certs

    # --- events --------------------------------------------------------------------------------

    def emit(self, event: ClientEvent) -> None:
        """Queue an event for the app; when nobody reads, the oldest are dropped (and counted)."""
        while True:
            try:
                self.events.put_nowait(event)
                return
            except asyncio.QueueFull:
                self.events.get_nowait()
                self.dropped_events += 1

    # --- documents in memory -------------------------------------------------------------------

    async def _catch_up(self, tx: Tx) -> None:
        """Apply what other processes committed since our last transaction (cheap when nobody did)."""
        version = await tx.data_version()
        if version == self._data_version:
            return
        first = self._data_version is None
        self._data_version = version
        stored = await tx.get_meta(_META_HLC)
        if stored:
            self._observe(stored)  # another process may have used the clock since we read it
        if first:
            return  # nothing loaded yet: documents are read fresh from disk when first used
        self._verdicts.clear()
        self._templates.clear()
        if self._docs:
            current = await tx.doc_versions(self._docs)
            for doc_id, loaded in list(self._docs.items()):
                now = current.get(doc_id)
                if now is None or now == (loaded.generation, loaded.version):
                    continue
                if now[0] != loaded.generation:
                    # Compacted or rebuilt from the relay (a rebuild drops content and may move
                    # the writer generation): read it afresh on next use.
                    del self._docs[doc_id]
                    continue
                delta = await tx.doc_since(doc_id, loaded.generation, loaded.upto)
                if delta is None:
                    continue
                try:
                    if delta.snapshot:
                        loaded.replica.apply_update(delta.snapshot)
                    for update_id, payload in delta.updates:
                        loaded.replica.apply_update(payload)
                        loaded.upto = max(loaded.upto, update_id)
                except EngineError:
                    self._docs.pop(doc_id, None)
                    raise
                loaded.generation, loaded.version = delta.generation, delta.version
                loaded.bookings = None

    def _observe(self, hlc: str) -> None:
        try:
            self._clock.observe(hlc)
        except (ClockSkewError, SchemaError):
            pass  # a remote clock far ahead is not adopted (crdt_core.hlc); the record stays valid

    async def _load(self, tx: Tx, doc_id: str) -> _Loaded:
        loaded = self._docs.get(doc_id)
        if loaded is not None:
            return loaded
        signer = None if self._identity is None else self._identity.device.cert_id
        client_id = None
        if signer is not None:
            client_id = _writer_client(signer, await tx.writer_generation(doc_id, signer))
        replica = Replica(client_id)
        stored = await tx.load_doc(doc_id)
        generation = upto = version = 0
        if stored is not None:
            try:
                if stored.snapshot:
                    replica.apply_update(stored.snapshot)
                for update_id, payload in stored.updates:
                    replica.apply_update(payload)
                    upto = update_id
            except EngineError as exc:
                raise ClientError(f"document {doc_id} is corrupt in {self.store.path}: {exc}") from None
            generation, version = stored.generation, stored.version
        loaded = _Loaded(replica, generation, upto, version, signer=signer)
        self._docs[doc_id] = loaded
        return loaded

    async def _staff_list(self, tx: Tx, doc: DocId) -> frozenset[str] | None:
        """For a bookings or shop document, the users its shop's staff list names (staff rights)."""
        if doc.kind not in (DocKind.BOOKINGS, DocKind.SHOP) or doc.shop_id is None:
            return None
        shop = DocId.shop(doc.shop_id)
        return shop_staff((await self._load(tx, str(shop))).replica, shop)

    async def _rights_in(self, identity: Identity, shop_id: str) -> Rights:
        """The profile's rights, with staff rights on ``shop_id`` if its staff list names the user."""
        async with self._read() as tx:
            staff = await self._staff_list(tx, DocId.shop(shop_id)) or frozenset()
        return identity.rights.with_shop_staff(shop_id, staff)

    async def _shop_templates(self, tx: Tx, shop_id: str) -> dict[str, SlotTemplate]:
        cached = self._templates.get(shop_id)
        if cached is None:
            doc = DocId.shop(shop_id)
            cached = slot_templates((await self._load(tx, str(doc))).replica, doc)
            self._templates[shop_id] = cached
        return cached

    # --- transactions --------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, *, local: bool, optimistic: bool = False) -> AsyncIterator[_Work]:
        """One client write transaction; on failure the replicas it touched are dropped from memory.

        ``optimistic``: do not ask SQLite first whether another process committed (``_catch_up``,
        a trip to the SQLite thread of its own); check it on the thread, under the write lock,
        just before the transaction's first statement (for a booking with warm caches: right
        before COMMIT, in the same trip). If someone did, the transaction rolls back and
        :class:`_Stale` is raised: the caller runs its body again without ``optimistic``.
        """
        work: _Work | None = None
        try:
            async with self.store.transaction() as tx:
                work = _Work(tx, local)
                seen = self._data_version
                if optimistic and seen is not None:
                    tx.defer_call(lambda conn: _unchanged_since(conn, seen))
                else:
                    await self._catch_up(tx)
                yield work
                await self._finish(work)
                for step in work.epilogue:
                    await step(tx)
        except BaseException:
            if work is not None:
                for doc_id in work.dirty:
                    self._docs.pop(doc_id, None)
                    self._verdicts.pop(doc_id, None)
                self._templates.clear()
                self._clock_saved = ""  # _finish may have counted the clock as saved: save it again
            raise
        self._verdicts.update(work.verdicts)
        for event in work.events:
            self.emit(event)
        due = [d for d, r in work.appended_later.items() if self.store.needs_compaction(r)]
        if due:
            await self._compact(due)

    async def _compact(self, doc_ids: Sequence[str]) -> None:
        """Fold the logs of ``doc_ids`` into new snapshots, in a transaction of its own.

        Why after the write rather than inside it: a local write's append travels with its
        COMMIT (one trip to SQLite fewer), so whether the log outgrew the snapshot is known only
        then. Compaction is maintenance, not part of the write's meaning: it only needs the
        write lock and a replica caught up with the whole log, which this transaction has. It
        runs for about one write in a hundred (the log must outgrow the snapshot). A failure is
        logged, not raised: the write itself is committed, and the next append retries.
        """
        try:
            async with self.store.transaction() as tx:
                await self._catch_up(tx)
                for doc_id in doc_ids:
                    loaded = self._docs.get(doc_id)
                    if loaded is not None:
                        loaded.generation, loaded.version = await tx.compact(
                            doc_id, loaded.replica.encode_state()
                        )
        except Exception as exc:
            log.warning("compacting %s failed (retried after the next write): %s", ", ".join(doc_ids), exc)
            for doc_id in doc_ids:
                self._docs.pop(doc_id, None)
        except BaseException:
            for doc_id in doc_ids:
                self._docs.pop(doc_id, None)
            raise

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Tx]:
        async with self.store.read() as tx:
            await self._catch_up(tx)
            yield tx

    async def _finish(self, work: _Work) -> None:
        """Projections and verdicts, compaction, and the clock: the tail of every write transaction."""
        await self._project(work)
        for doc_id, appended in work.appended.items():
            if work.tx.needs_compaction(appended):
                loaded = self._docs[doc_id]
                loaded.generation, loaded.version = await work.tx.compact(
                    doc_id, loaded.replica.encode_state()
                )
        stamp = self._clock.last.encode()
        if stamp != self._clock_saved:
            await work.tx.set_meta(_META_HLC, stamp)
            self._clock_saved = stamp

    async def _project(self, work: _Work) -> None:
        tx = work.tx
        bookings: set[str] = set()
        recapacity: set[str] = set()  # bookings docs whose slot capacities may have changed
        for doc_id, records in work.touched.items():
            doc = parse_doc_id(doc_id)
            if doc.kind is DocKind.BOOKINGS:
                bookings.add(doc_id)
            elif doc.kind in (DocKind.CATALOG, DocKind.SHOP):
                slots_changed = await proj.project_records(tx, doc, records)
                if doc.kind is DocKind.SHOP and slots_changed:
                    assert doc.shop_id is not None
                    self._templates.pop(doc.shop_id, None)
                    held = await tx.held_docs(f"bookings:{doc.shop_id}:")
                    bookings.update(held)
                    recapacity.update(held)
        me = self.user_id
        now = self._now_ms()
        for doc_id in sorted(bookings):
            doc = parse_doc_id(doc_id)
            assert doc.shop_id is not None and doc.day is not None
            state = await self._bookings_state(
                tx, await self._load(tx, doc_id), doc, work.touched.get(doc_id, ())
            )
            templates = await self._shop_templates(tx, doc.shop_id)
            capacities = proj.capacities_on(templates, doc.day)
            limits = per_customer_limits(templates)
            baseline = work.verdicts.get(doc_id) or self._verdicts.get(doc_id)
            slots = None
            if baseline is not None and doc_id not in recapacity:
                slots = _slots_touched(state, work.touched.get(doc_id, ()))
            fast = None
            changed: list[str] | None = None
            if baseline is not None and slots is not None and work.local:
                fast = _appended(baseline, state, capacities, work.touched.get(doc_id, ()))
            if fast is not None:
                verdict = fast
                changed = [key for _root, key, _rec in work.touched.get(doc_id, ())]
            elif baseline is None or slots is None:
                verdict = compute_verdict(state, capacities, limits)
            else:
                verdict = _reverdict(baseline, state, capacities, slots, limits)
            changes = await proj.project_bookings(
                tx, doc, state, verdict, baseline, slots=slots, changed=changed
            )
            work.verdicts[doc_id] = verdict
            for change in changes:
                if change.customer != me:
                    continue
                work.changes.append(change)
                event = booking_event(
                    change, verdict.claims[change.reservation_id], doc, now, local=work.local
                )
                if event is not None:
                    work.events.append(event)

    async def _bookings_state(
        self, tx: Tx, loaded: _Loaded, doc: DocId, added: Iterable[ProjectedRecord]
    ) -> BookingsState:
        """The document's claims as the verdict sees them: the cache plus ``added``, or a full read.

        A record the relay refused is in the local document only until the document is rebuilt
        from the relay's (``rebuild_from_relay``), which the next sync does.
        """
        state = loaded.bookings
        if state is None:
            state = read_bookings(loaded.replica, doc)
            loaded.bookings = state
            return state
        for _root, key, rec in added:
            if isinstance(rec, Reservation):
                state.reservations[key] = rec
            elif isinstance(rec, StatusEvent):
                state.events[key] = rec
            elif isinstance(rec, Stamp):
                state.stamps[rec.no] = rec
        return state

    async def _put(
        self,
        work: _Work,
        doc: DocId,
        records: Sequence[TypedRecord],
        entity: tuple[str, str, str],
    ) -> None:
        """Sign ``records`` into ``doc`` and queue the update (the only local-write path).

        The outbox row is deferred to the transaction's next trip to SQLite (at the latest its
        COMMIT): same transaction, one thread hop fewer per write.
        """
        author, identity = self._require_author()
        did = str(doc)
        pairs: list[tuple[TypedRecord, str]] = []
        for rec in records:
            key = getattr(rec, rec.KEY_FIELD) if rec.KEY_FIELD else new_id()
            try:
                parse_record(doc.kind, rec.ROOT, key, rec.KIND, rec.to_fields(), SCHEMA_VERSION)
            except SchemaError as exc:
                raise InvalidRequest(str(exc)) from None
            if isinstance(rec, Reservation) and doc.day is not None and not day_in_range(doc.day, rec.hlc):
                raise InvalidRequest(f"{doc.day.isoformat()} is too far in the past or the future to book")
            hlc = getattr(rec, "hlc", None)
            if hlc is not None and not identity.certificate.valid_at(Timestamp.parse(hlc).wall_ms):
                raise NotLoggedIn("the device certificate is not valid now: log in again")
            pairs.append((rec, key))
        loaded = await self._load(work.tx, did)
        work.dirty.add(did)
        if loaded.signer != identity.device.cert_id:  # loaded before this login: move to its id
            generation = await work.tx.writer_generation(did, identity.device.cert_id)
            loaded.replica = loaded.replica.copy(_writer_client(identity.device.cert_id, generation))
            loaded.signer = identity.device.cert_id
        if generation_of(identity.device.cert_id, loaded.replica.client_id) is None:
            raise NotLoggedIn(f"this device has used up its client ids in {did}: log in again to write there")
        update = author.put(loaded.replica, doc, pairs)

        def appended(result: AppendResult) -> None:  # on the SQLite thread, before COMMIT returns
            loaded.upto, loaded.version = result.update_id, result.version
            work.appended_later[did] = result

        work.tx.append_update_later(did, update, "local", appended)
        work.touched.setdefault(did, []).extend((rec.ROOT, key, rec) for rec, key in pairs)
        entity_type, entity_id, operation = entity
        work.tx.enqueue_later(entity_type, entity_id, operation, update, did)

    # --- browsing (projections: plain indexed queries, offline) --------------------------------

    async def categories(self) -> list[CategoryRow]:
        async with self.store.read() as tx:
            return await proj.query_categories(tx)

    async def shops(
        self, category: str | None = None, *, include_inactive: bool = False, search: str | None = None
    ) -> list[proj.ShopRow]:
        """Shops by name; ``search`` keeps those whose id, name, category or location contains
        every word of it, ignoring case (the catalogue is local, so this needs no relay)."""
        async with self.store.read() as tx:
            rows = await proj.query_shops(tx, category, include_inactive)
        words = (search or "").casefold().split()
        if not words:
            return rows
        return [
            r
            for r in rows
            if all(w in f"{r.id} {r.name} {r.category} {r.location}".casefold() for w in words)
        ]

    async def shop(self, shop_id: str, *, subscribe: bool = True) -> ShopDetail | None:
        """A shop's catalog entry, profile, slots and staff; browsing it subscribes to its document."""
        _id(shop_id, "shop id")
        if subscribe:
            async with self.store.transaction() as tx:
                await tx.subscribe(f"shop:{shop_id}", "browsed")
        async with self.store.read() as tx:
            return await proj.query_shop(tx, shop_id)

    async def slots(
        self, shop_id: str, day: _dt.date | str, *, subscribe: bool = True
    ) -> list[SlotAvailability]:
        """The slots offered on ``day`` with seats left per this replica's verdict.

        Browsing a day subscribes to it (and to the shop), so the next sync fetches its bookings.
        """
        d = _as_day(day)
        doc = DocId.bookings(_id(shop_id, "shop id"), d)
        if subscribe:
            async with self.store.transaction() as tx:
                await tx.subscribe(str(doc), "browsed")
                await tx.subscribe(f"shop:{shop_id}", "browsed")
        async with self.store.read() as tx:
            # Known: some of it is held here, or a sync found it empty at the relay (a cursor).
            known = bool(
                await tx.fetchone(
                    "SELECT 1 FROM documents WHERE doc_id = ? "
                    "UNION ALL SELECT 1 FROM doc_cursors WHERE doc_id = ?",
                    (str(doc), str(doc)),
                )
            )
            return await proj.query_slot_availability(tx, shop_id, d, known)

    async def reservations(self) -> list[ReservationRow]:
        """The user's own reservations with their verdict on this replica."""
        me = self.user_id
        if me is None:
            return []
        async with self.store.read() as tx:
            return await proj.query_my_reservations(tx, me)

    async def day_reservations(self, shop_id: str, day: _dt.date | str) -> list[ReservationRow]:
        """Every reservation of one shop's day (the staff view)."""
        async with self.store.read() as tx:
            return await proj.query_day_reservations(tx, shop_id, _as_day(day))

    async def reservation(self, reservation_id: str) -> ReservationRow | None:
        async with self.store.read() as tx:
            rows = await proj.query_reservation(tx, reservation_id)
        return self._pick(rows)

    def _pick(self, rows: list[ReservationRow]) -> ReservationRow | None:
        """A reservation id may (in theory) appear in two documents; prefer the user's own."""
        if not rows:
            return None
        mine = [r for r in rows if r.customer == self.user_id]
        return (mine or rows)[0]

    # --- booking and status events ---------------------------------------------------------------

    async def book(
        self,
        shop_id: str,
        day: _dt.date | str,
        slot_id: str,
        party: int = 1,
        note: str | None = None,
    ) -> ReservationRow:
        """Book offline: sign a reservation, write it and its outbox entry in one transaction.

        Returns the reservation with its *tentative* verdict on this replica; the relay's stamp
        (or a claim that ranks earlier) may change it later, which is reported as an event.

        Raises:
            NotFound: the slot is unknown here (the shop's document is not synced yet).
            InvalidRequest: the slot is not offered that day, or the party does not fit it.
        """
        author, _ = self._require_author()
        d = _as_day(day)
        doc = DocId.bookings(_id(shop_id, "shop id"), d)
        _id(slot_id, "slot id")
        if type(party) is not int or not 1 <= party <= 100:
            raise InvalidRequest("party must be a whole number from 1 to 100")
        res_id = new_id()
        # Optimistic first (one trip to SQLite: the whole write with its COMMIT); if another
        # process committed meanwhile, that attempt rolled back and this runs once more, normally.
        for optimistic in (True, False):
            try:
                async with self._write(local=True, optimistic=optimistic) as work:
                    template = (await self._shop_templates(work.tx, shop_id)).get(slot_id)
                    if template is None:
                        raise NotFound(f"no slot {slot_id!r} known for shop {shop_id!r}; sync the shop first")
                    capacity = template.capacity_on(d)
                    if capacity <= 0:
                        raise InvalidRequest(f"slot {slot_id!r} is not offered on {d.isoformat()}")
                    if party > capacity:
                        raise InvalidRequest(
                            f"a party of {party} cannot fit slot {slot_id!r} ({capacity} seats)"
                        )
                    res = Reservation(
                        id=res_id, slot=slot_id, party=party, customer=author.user_id, hlc=author.hlc(),
                        note=note,
                    )  # fmt: skip
                    await self._put(work, doc, [res], ("reservation", res.id, "create"))
                    await work.tx.subscribe(str(doc), "booking")
                    await work.tx.subscribe(f"shop:{shop_id}", "booking")
                break
            except _Stale:
                if not optimistic:  # pragma: no cover - only optimistic writes raise it
                    raise
        assert template is not None
        # Read-your-write from memory: the row just committed holds exactly this claim's verdict
        # (``project_bookings`` wrote it from ``work.verdicts``), so a second transaction to read
        # it back would cost three more trips to the SQLite thread and return the same.
        claim = work.verdicts[str(doc)].claims[res_id]
        return ReservationRow(
            doc_id=str(doc), reservation_id=res_id, shop_id=shop_id, day=d.isoformat(), slot_id=slot_id,
            customer=res.customer, party=party, note=note, hlc=res.hlc, state=claim.state,
            waitlist_position=claim.position, final=claim.final, stamp=claim.stamp,
            staff_confirmed=claim.staff_confirmed, holds_seats=claim.holds_seats, rejected_code=None,
            rejected_reason=None, start=template.start, service=template.service,
        )  # fmt: skip

    async def _reservation_in(self, doc_id: str, reservation_id: str) -> ReservationRow:
        async with self.store.read() as tx:
            rows = [r for r in await proj.query_reservation(tx, reservation_id) if r.doc_id == doc_id]
        if not rows:
            raise NotFound(f"reservation {reservation_id} vanished")  # pragma: no cover - same transaction
        return rows[0]

    async def cancel(self, reservation_id: str, reason: str | None = None) -> ReservationRow:
        """Cancel one of the user's reservations (an append-only ``cancel`` event)."""
        return await self._status_event(reservation_id, EventType.CANCEL, reason)

    async def confirm(self, reservation_id: str) -> ReservationRow:
        """Staff: acknowledge a booking (it moves no seats; see ``crdt_core.verdict``)."""
        return await self._status_event(reservation_id, EventType.CONFIRM, None)

    async def decline(self, reservation_id: str, reason: str | None = None) -> ReservationRow:
        return await self._status_event(reservation_id, EventType.DECLINE, reason)

    async def no_show(self, reservation_id: str) -> ReservationRow:
        return await self._status_event(reservation_id, EventType.NO_SHOW, None)

    async def _status_event(self, reservation_id: str, kind: EventType, reason: str | None) -> ReservationRow:
        author, identity = self._require_author()
        _id(reservation_id, "reservation id")
        async with self._write(local=True) as work:
            row = self._pick(await proj.query_reservation(work.tx, reservation_id))
            if row is None:
                raise NotFound(f"no reservation {reservation_id!r} here")
            event = StatusEvent(
                id=new_id(),
                reservation=reservation_id,
                type=kind.value,
                by=author.user_id,
                hlc=author.hlc(),
                reason=reason,
            )
            target = parse_doc_id(row.doc_id)
            staff = await self._staff_list(work.tx, target) or ()
            if not may_write(target, event, identity.rights, row.customer, staff):
                if kind is EventType.CANCEL:
                    raise NotAllowed("only the customer can cancel a reservation")
                raise NotAllowed(f"only staff of {row.shop_id} can {kind.value.replace('_', '-')} a booking")
            if kind is EventType.CANCEL and row.state in (ClaimState.CANCELLED, ClaimState.DECLINED):
                raise InvalidRequest(f"reservation {reservation_id} is already {row.state.value}")
            await self._put(
                work, parse_doc_id(row.doc_id), [event], ("reservation", reservation_id, kind.value)
            )
            doc_id = row.doc_id
        return await self._reservation_in(doc_id, reservation_id)

    # --- owners and admins ---------------------------------------------------------------------

    async def add_category(self, category_id: str, name: str, icon: str | None = None) -> CategoryRow:
        author, identity = self._require_author()
        if not identity.rights.admin:
            raise NotAllowed("only admins add categories")
        async with self._write(local=True) as work:
            rec = Category(id=_id(category_id, "category id"), name=name, icon=icon, hlc=author.hlc())
            await self._put(work, DocId.catalog(), [rec], ("category", category_id, "create"))
        return CategoryRow(category_id, name, icon)

    async def create_shop(
        self,
        shop_id: str,
        *,
        name: str,
        category: str,
        location: str,
        lat: float,
        lon: float,
        description: str = "",
        address: str | None = None,
        hours: str = "",
        image_url: str | None = None,
        rating: float | None = None,
        active: bool = True,
    ) -> ShopDetail:
        """Owner or admin: the shop's catalog entry and its profile, two documents, one transaction."""
        author, identity = self._require_author()
        _id(shop_id, "shop id")
        if not identity.rights.manages(shop_id):
            raise NotAllowed(f"only the owner of {shop_id} or an admin can create it")
        async with self._write(local=True) as work:
            hlc = author.hlc()
            summary = ShopSummary(
                id=shop_id, name=name, category=category, location=location, lat=lat, lon=lon,
                rating=rating, active=active, hlc=hlc,
            )  # fmt: skip
            profile = ShopProfile(
                name=name, description=description, address=location if address is None else address,
                lat=lat, lon=lon, image_url=image_url, hours=hours, hlc=hlc,
            )  # fmt: skip
            await self._put(work, DocId.catalog(), [summary], ("shop", shop_id, "create"))
            await self._put(work, DocId.shop(shop_id), [profile], ("shop", shop_id, "create"))
            await work.tx.subscribe(f"shop:{shop_id}", "owner")
        detail = await self.shop(shop_id, subscribe=False)
        assert detail is not None
        return detail

    async def edit_shop(
        self,
        shop_id: str,
        *,
        name: str | None = None,
        category: str | None = None,
        location: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        rating: float | None = None,
        active: bool | None = None,
        description: str | None = None,
        address: str | None = None,
        hours: str | None = None,
        image_url: str | None = None,
    ) -> ShopDetail:
        """Write new catalog and/or profile records for the fields given (newest record wins)."""
        author, identity = self._require_author()
        _id(shop_id, "shop id")
        summary_fields = {"name": name, "category": category, "location": location, "lat": lat, "lon": lon,
                          "rating": rating, "active": active}  # fmt: skip
        profile_fields = {"name": name, "description": description, "address": address, "lat": lat,
                          "lon": lon, "image_url": image_url, "hours": hours}  # fmt: skip
        summary_changes = {k: v for k, v in summary_fields.items() if v is not None}
        profile_changes = {k: v for k, v in profile_fields.items() if v is not None}
        owner = identity.rights.manages(shop_id)
        if {"category", "location", "rating", "active"} & summary_changes.keys() and not owner:
            raise NotAllowed(f"only the owner of {shop_id} or an admin can change its catalog entry")
        if not (await self._rights_in(identity, shop_id)).edits(shop_id):
            raise NotAllowed(f"only staff of {shop_id} can edit it")
        async with self._write(local=True) as work:
            current = await proj.query_shop(work.tx, shop_id)
            if current is None or (current.summary is None and current.profile is None):
                raise NotFound(f"no shop {shop_id!r} here")
            hlc = author.hlc()
            if summary_changes and owner and current.summary is not None:
                base = current.summary
                merged: dict[str, Any] = {
                    "id": shop_id, "name": base.name, "category": base.category, "location": base.location,
                    "lat": base.lat, "lon": base.lon, "rating": base.rating, "active": base.active,
                }  # fmt: skip
                merged.update(summary_changes)
                rec = ShopSummary(**merged, hlc=hlc)
                await self._put(work, DocId.catalog(), [rec], ("shop", shop_id, "update"))
            if profile_changes:
                p = current.profile
                s = current.summary
                merged = {
                    "name": p.name if p else (s.name if s else shop_id),
                    "description": p.description if p else "",
                    "address": p.address if p else (s.location if s else ""),
                    "lat": p.lat if p else (s.lat if s else 0.0),
                    "lon": p.lon if p else (s.lon if s else 0.0),
                    "image_url": p.image_url if p else None,
                    "hours": p.hours if p else "",
                }
                merged.update(profile_changes)
                await self._put(
                    work, DocId.shop(shop_id), [ShopProfile(**merged, hlc=hlc)], ("shop", shop_id, "update")
                )
        detail = await self.shop(shop_id, subscribe=False)
        assert detail is not None
        return detail

    async def add_slot(
        self,
        shop_id: str,
        slot_id: str,
        *,
        service: str,
        start: str,
        duration: int,
        capacity: int,
        weekdays: Iterable[int] | None = None,
        active: bool = True,
        per_customer: int | None = None,
    ) -> SlotRow:
        """Staff, owner or admin: offer a slot, or change one (same id; the newest template wins)."""
        author, identity = self._require_author()
        _id(shop_id, "shop id")
        if not (await self._rights_in(identity, shop_id)).edits(shop_id):
            raise NotAllowed(f"only staff of {shop_id} can change its slots")
        days = None if weekdays is None else tuple(sorted(set(weekdays)))
        async with self._write(local=True) as work:
            rec = SlotTemplate(
                id=_id(slot_id, "slot id"), service=service, start=start, duration=duration,
                capacity=capacity, weekdays=days, active=active, hlc=author.hlc(), per_customer=per_customer,
            )  # fmt: skip
            await self._put(work, DocId.shop(shop_id), [rec], ("slot", slot_id, "create"))
        return SlotRow(shop_id, slot_id, service, start, duration, capacity, days, active)

    async def add_staff(
        self, shop_id: str, user_id: str, role: str = "staff", active: bool = True
    ) -> StaffRow:
        """Owner or admin: name a staff member (or co-owner); ``active=False`` removes them."""
        author, identity = self._require_author()
        _id(shop_id, "shop id")
        if not identity.rights.manages(shop_id):
            raise NotAllowed(f"only the owner of {shop_id} or an admin can change its staff")
        async with self._write(local=True) as work:
            rec = StaffEntry(user=_id(user_id, "user id"), role=role, active=active, hlc=author.hlc())
            await self._put(work, DocId.shop(shop_id), [rec], ("staff", user_id, "create"))
        return StaffRow(shop_id, user_id, role, active)

    # --- remote updates --------------------------------------------------------------------------

    async def apply_remote(
        self, doc_id: str, update: bytes, *, from_peer: bool = False
    ) -> list[VerdictChange]:
        """Validate and apply one update received from the relay (or a peer, ``from_peer=True``).

        Returns the verdict changes of the user's own reservations.

        Raises:
            ValidationError: the update breaks a writer rule (``.code``); nothing was applied.
        """
        result = await self.apply_remote_batch([(doc_id, update)], from_peer=from_peer)
        if result.failed:
            raise result.failed[0].error
        return result.changes

    async def apply_remote_batch(
        self, updates: Iterable[tuple[str, bytes]], *, from_peer: bool = False
    ) -> BatchResult:
        """Validate and apply many updates in one transaction, recomputing each verdict once.

        Each update is validated against the document as the earlier ones left it; one that
        depends on a later one in the batch (``missing_deps``) is retried after the others. What a
        peer sent is judged by the peer arrival rules too (``ArrivalPolicy.for_peer``, by this
        device's clock) and queued for the
        relay (``operation = 'forward'``): the relay may not have it, and it validates and stamps
        it whoever carried it.
        """
        certs = self._require_certs()
        policy = ArrivalPolicy.for_peer(self._now_ms()) if from_peer else None
        items = [(str(d), bytes(u)) for d, u in updates]
        failed: dict[int, BatchFailure] = {}
        applied = 0
        origin = "peer" if from_peer else "remote"
        async with self._write(local=False) as work:
            todo = list(range(len(items)))
            while todo:
                retry: list[int] = []
                progress = False
                for index in todo:
                    raw_doc, update = items[index]
                    try:
                        doc = parse_doc_id(raw_doc)
                    except SchemaError as exc:
                        failed[index] = BatchFailure(index, raw_doc, ValidationError("bad_doc", str(exc)))
                        continue
                    did = str(doc)
                    loaded = await self._load(work.tx, did)
                    try:
                        staff = await self._staff_list(work.tx, doc)
                        validated = validate_update(doc, loaded.replica, update, certs, policy, staff)
                    except ValidationError as exc:
                        failed[index] = BatchFailure(index, did, exc)
                        if exc.code in ("missing_deps", "forbidden"):  # forbidden: the staff list may follow
                            retry.append(index)
                        continue
                    failed.pop(index, None)
                    progress = True
                    if validated.noop:
                        continue
                    work.dirty.add(did)
                    try:
                        loaded.replica.apply_update(update)
                    except EngineError as exc:  # validated, so not expected; the replica is unchanged
                        failed[index] = BatchFailure(index, did, ValidationError("malformed", str(exc)))
                        continue
                    appended = await work.tx.append_update(did, update, origin)
                    loaded.upto, loaded.version = appended.update_id, appended.version
                    work.appended[did] = appended
                    if from_peer:
                        await work.tx.enqueue("update", did, "forward", update, did)
                    records = work.touched.setdefault(did, [])
                    newest = ""
                    for accepted in validated.records:
                        if isinstance(accepted.record, TypedRecord):
                            records.append((accepted.root, accepted.key, accepted.record))
                            newest = max(newest, getattr(accepted.record, "hlc", None) or "")
                    if newest:
                        self._observe(newest)
                    applied += 1
                todo = retry if progress else []
        changes = work.changes
        return BatchResult(changes, [failed[i] for i in sorted(failed)], applied)

    # --- sync helpers --------------------------------------------------------------------------

    async def state_vector(self, doc_id: str) -> bytes:
        """This replica's state vector of a document (empty if it holds none of it)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.state_vector()

    async def diff(self, doc_id: str, state_vector: bytes) -> bytes:
        """What a peer holding ``state_vector`` lacks of a document (Yjs sync step 2)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.diff(state_vector)

    async def inspect(self, doc_id: str, check: Callable[[Replica], _T]) -> _T:
        """Run a pure, read-only ``check`` on a document as this replica holds it.

        Why: peer sync compares what a peer sends with what this replica already integrated
        (equivocation, ``client.peer_data``) without a copy of the document; ``check`` must not
        modify the replica.
        """
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return check((await self._load(tx, did)).replica)

    async def document(self, doc_id: str) -> dict[str, dict[str, bytes]]:
        """A document's raw maps (for convergence checks and debugging)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.to_py()

    async def verdict(self, shop_id: str, day: _dt.date | str) -> Verdict:
        """The full verdict of one bookings document on this replica."""
        d = _as_day(day)
        doc = DocId.bookings(shop_id, d)
        async with self._read() as tx:
            state = await self._bookings_state(tx, await self._load(tx, str(doc)), doc, ())
            templates = await self._shop_templates(tx, shop_id)
            return compute_verdict(state, proj.capacities_on(templates, d), per_customer_limits(templates))

    async def held_docs(self) -> list[str]:
        return await self.store.held_docs()

    async def subscribe(self, doc_id: str, reason: str = "manual") -> None:
        did = str(parse_doc_id(doc_id))
        async with self.store.transaction() as tx:
            await tx.subscribe(did, reason)

    async def unsubscribe(self, doc_id: str, reason: str | None = None) -> None:
        async with self.store.transaction() as tx:
            await tx.unsubscribe(doc_id, reason)

    async def follow(self, shop_id: str) -> None:
        await self.subscribe(f"shop:{_id(shop_id, 'shop id')}", "follow")

    async def subscribed_docs(self) -> list[str]:
        """Selective sync: the documents this client keeps up to date (see :meth:`following`)."""
        return sorted(await self.following())

    async def following(self, today: _dt.date | None = None) -> dict[str, set[str]]:
        """The documents this client keeps up to date, each with why.

        The catalog; the shops the user owns or staffs (per certificate and staff records), follows
        or browsed; the days of the user's own bookings and the days browsed; the user's own doc.
        Following stays bounded: a day at least two days past (``today``, default the local date)
        with no change of ours waiting and none of our claims still tentative is released (its
        data stays here, it is no longer synced).
        """
        docs: dict[str, set[str]] = {"catalog": {"catalog"}}
        for doc, reasons in (await self.store.subscriptions()).items():
            docs.setdefault(doc, set()).update(reasons)
        identity = self._identity
        unsettled: set[str] = set()
        if identity is not None:
            docs.setdefault(f"user:{identity.user_id}", set()).add("account")
            for shop in identity.certificate.owner_of | identity.certificate.staff_of:
                docs.setdefault(f"shop:{shop}", set()).add("role")
            async with self.store.read() as tx:
                for (shop,) in await tx.fetchall(
                    "SELECT shop_id FROM staff WHERE user_id = ? AND active = 1", (identity.user_id,)
                ):
                    docs.setdefault(f"shop:{shop}", set()).add("role")
                for doc_id, final in await tx.fetchall(
                    "SELECT doc_id, MIN(final) FROM reservations WHERE customer = ? GROUP BY doc_id",
                    (identity.user_id,),
                ):
                    docs.setdefault(doc_id, set()).add("your booking")
                    if not final:
                        unsettled.add(doc_id)
        if today is None:
            today = _dt.datetime.fromtimestamp(self._now_ms() / 1000).date()
        cutoff = (today - _dt.timedelta(days=1)).isoformat()
        waiting = {e.doc_id for e in await self.store.pending_entries()}
        settled = [
            doc for doc in docs
            if doc.startswith("bookings:") and doc.rsplit(":", 1)[1] < cutoff
            and doc not in waiting and doc not in unsettled
        ]  # fmt: skip
        if settled:
            async with self.store.transaction() as tx:
                for doc in settled:
                    await tx.unsubscribe(doc)
                    del docs[doc]
        return docs

    async def unfollow(self, doc_id: str) -> None:
        """Stop keeping ``doc_id`` up to date (``following``); its data stays here.

        Raises:
            InvalidRequest: the document is followed because of the user's role, account or own
                bookings (or changes of ours wait in it), not because it was browsed or followed.
        """
        did = str(parse_doc_id(doc_id if ":" in doc_id else f"shop:{doc_id}"))  # a bare id: a shop
        reasons = (await self.following()).get(did)
        if reasons is None:
            raise NotFound(f"{did} is not followed (see `quickslot following`)")
        fixed = reasons & {"catalog", "account", "role", "your booking"}
        if fixed or any(e.doc_id == did for e in await self.store.pending_entries()):
            why = ", ".join(sorted(fixed)) or "changes of yours wait to be sent"
            raise InvalidRequest(f"{did} is followed for good while it matters ({why})")
        await self.unsubscribe(did)

    # --- outbox (for the sync engine) ------------------------------------------------------------

    async def pending_entries(self, limit: int | None = None) -> list[OutboxEntry]:
        return await self.store.pending_entries(limit)

    async def rejected_entries(self) -> list[OutboxEntry]:
        return await self.store.rejected_entries()

    async def outbox_counts(self) -> OutboxCounts:
        return await self.store.outbox_counts()

    async def mark_acked(self, entry_id: int) -> bool:
        return await self.store.mark_acked(entry_id)

    async def mark_retry(self, entry_id: int, error: str) -> bool:
        return await self.store.mark_retry(entry_id, error)

    async def mark_rejected(self, entry_id: int, code: str, reason: str) -> OutboxEntry | None:
        """Set an entry aside as refused by the relay, flag its reservation, and tell the user."""
        async with self._write(local=False) as work:
            tx = work.tx
            before = await tx.outbox_entry(entry_id)
            if before is None or before.state != "pending":
                return before  # unknown, or already set aside: nothing new to tell
            entry = await tx.mark_rejected(entry_id, code, reason[:1000])
            if entry is not None and entry.entity_type == "reservation" and entry.operation == "create":
                await proj.mark_reservation_rejected(tx, entry.doc_id, entry.entity_id, code, reason[:1000])
            # ``tx.mark_rejected`` queued the document for a rebuild from the relay's state
            # (``rebuild_from_relay``): that drops the refused record from it (and so from the
            # verdict) and re-writes the pending writes behind it under a new client id.
        if entry is not None:
            self.emit(
                BookingRejected(
                    at_ms=self._now_ms(),
                    entry_id=entry.id,
                    entity_type=entry.entity_type,
                    entity_id=entry.entity_id,
                    operation=entry.operation,
                    doc_id=entry.doc_id,
                    code=code,
                    reason=reason,
                )
            )
        return entry

    # --- rebuilding a document from the relay's ------------------------------------------------

    async def pending_rebuilds(self) -> dict[str, str]:
        """``{doc_id: reason}`` of the documents the next sync rebuilds from the relay's state."""
        return await self.store.rebuilds()

    async def request_rebuild(self, doc_id: str, reason: str) -> None:
        """Queue a document for :meth:`rebuild_from_relay` (kept across restarts until done)."""
        did = str(parse_doc_id(doc_id))
        async with self.store.transaction() as tx:
            await tx.request_rebuild(did, reason)

    async def writer_id(self, doc_id: str) -> int | None:
        """The Yjs client id this device writes ``doc_id`` under now (None: not logged in)."""
        identity = self._identity
        if identity is None:
            return None
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            generation = await tx.writer_generation(did, identity.device.cert_id)
        return None if generation >= GENERATIONS else client_id_for(identity.device.cert_id, generation)

    async def rebuild_from_relay(self, doc_id: str, relay_state: bytes) -> RebuildResult:
        """Replace a document by the relay's whole state; re-write this device's pending writes of it.

        Why: the relay's document is the authority on the relay path. After the relay refused one
        of this device's writes, the local document keeps the refused structs and every later
        write continues their client's clock, which the relay will never hold; after a malicious
        device handed this replica (through a peer) a record at a Yjs id where the relay holds
        another, the relay's own updates stop fitting here and no state-vector exchange repairs
        it. Both end here, in one transaction:

        1. ``relay_state`` (what the relay sends for a sync with an empty state vector) is
           validated like any update and becomes the document.
        2. Every pending local entry of the document is replaced by a new one that writes its
           records that the relay lacks, byte for byte and at the same keys, under this device's
           next generation's client id (``crdt_core.clientids``), with the certificate when the
           relay's document lacks it. A signer moves to the next generation only when the local
           document held more of its client than the relay: those clocks may have reached peers
           with other content. Refused entries stay refused (their record is simply gone).
        3. Pending ``forward`` entries (peers' updates carried for the relay) stay as they are;
           their content goes back into the document when it still validates.
        4. The snapshot replaces the stored document (log dropped); projections and verdicts are
           recomputed, and reservation rows the document no longer holds are dropped (refused
           ones stay, with their reason).

        Raises:
            ValidationError: ``relay_state`` breaks a writer rule; nothing changed.
        """
        certs = self._require_certs()
        doc = parse_doc_id(doc_id)
        did = str(doc)
        identity = self._identity
        current = None if identity is None else identity.device.cert_id
        async with self._write(local=False) as work:
            tx = work.tx
            old = await self._load(tx, did)
            work.dirty.add(did)
            staff = await self._staff_list(tx, doc)
            validate_update(doc, Replica(), relay_state, certs, None, staff)  # the relay judged arrival rules
            relay_clocks = parse_state_vector(state_vector_of_update(relay_state))
            old_clocks = old.replica.state_clocks()
            reason = (await tx.rebuilds()).get(did, "relay update did not fit the local document")
            pending = await tx.pending_of(did)
            planned: list[tuple[OutboxEntry, dict[str, bytes], list[tuple[str, str, bytes]]]] = []
            signers = {current} if current is not None else set()
            for entry in pending:
                if entry.operation == "forward":
                    continue
                try:
                    inserts = decode_update(entry.payload).inserts
                except EngineError:
                    continue  # never readable, never written: the relay refuses it as it is
                carried = {
                    i.key: i.value for i in inserts if i.root == CERTS_ROOT and isinstance(i.value, bytes)
                }
                records = [
                    (i.root, i.key, i.value)
                    for i in inserts
                    if i.root != CERTS_ROOT and isinstance(i.value, bytes)
                ]
                for _root, _key, raw in records:
                    signers.add(_signer_of(raw) or "")
                planned.append((entry, carried, records))
            signers.discard("")
            generations: dict[str, int] = {}
            for signer in sorted(signers):
                stored = await tx.writer_generation(did, signer)
                generations[signer] = stored
                if stored < GENERATIONS:
                    at = client_id_for(signer, stored)
                    if old_clocks.get(at, 0) > relay_clocks.get(at, 0):
                        generations[signer] = stored + 1
                if generations[signer] != stored:
                    await tx.set_writer_generation(did, signer, generations[signer])
            own = generations.get(current or "", GENERATIONS)
            replica = Replica(_writer_client(current, own))
            replica.apply_update(relay_state)
            writers: dict[str, Replica] = {} if current is None else {current: replica}
            dropped: list[int] = []
            queued: list[tuple[OutboxEntry, bytes]] = []
            exhausted: dict[int, OutboxEntry] = {}
            for entry, carried, records in planned:
                dropped.append(entry.id)
                by_signer: dict[str, list[tuple[str, str, bytes]]] = {}
                for root, key, raw in records:
                    if not replica.has_key(root, key):  # else the relay has it (its ack was lost)
                        by_signer.setdefault(_signer_of(raw) or "", []).append((root, key, raw))
                for signer, recs in by_signer.items():
                    if generations.get(signer, GENERATIONS) >= GENERATIONS:
                        exhausted[entry.id] = entry
                        continue
                    writes = list(recs)
                    if not replica.has_key(CERTS_ROOT, signer):
                        raw_cert = carried.get(signer)
                        if raw_cert is None and identity is not None and signer == current:
                            raw_cert = identity.device.certificate
                        if raw_cert is not None:
                            writes.insert(0, (CERTS_ROOT, signer, raw_cert))
                    writer = writers.get(signer)
                    if writer is None:
                        writer = writers[signer] = replica.copy(client_id_for(signer, generations[signer]))
                    update = writer.write(writes)
                    if writer is not replica:
                        replica.apply_update(update)
                    queued.append((entry, update))
            for entry in pending:
                if entry.operation != "forward":
                    continue
                try:
                    if not validate_update(doc, replica, entry.payload, certs, None, staff).noop:
                        replica.apply_update(entry.payload)
                except (ValidationError, EngineError) as exc:
                    log.info("carried update %s left out of rebuilt %s: %s", entry.id, did, exc)
            generation, version = await tx.replace_doc(did, replica.encode_state())
            await tx.delete_entries(dropped)
            new_ids = [
                await tx.enqueue(e.entity_type, e.entity_id, e.operation, update, did) for e, update in queued
            ]
            for entry in exhausted.values():  # set aside, with the reason, for the user
                e = entry
                kept = await tx.enqueue(e.entity_type, e.entity_id, e.operation, e.payload, did)
                await tx.execute(
                    "UPDATE outbox SET state = 'rejected', reject_code = 'client_ids_exhausted', "
                    "reject_reason = 'this device used all its client ids in the document: log in again' "
                    "WHERE id = ?",
                    (kept,),
                )
            await tx.rebuilt(did)
            self._docs[did] = _Loaded(replica, generation, 0, version, signer=current)
            records_now: list[ProjectedRecord] = []
            if doc.kind is not DocKind.BOOKINGS:
                await proj.clear_doc_projection(tx, doc)
                if doc.shop_id is not None:
                    self._templates.pop(doc.shop_id, None)
                for root in sorted(doc.roots - {CERTS_ROOT}):
                    records_now.extend((root, key, rec) for key, rec in read_map(replica, doc, root).items())
            work.touched[did] = records_now
            if doc.kind is DocKind.BOOKINGS:
                work.epilogue.append(lambda tx: _drop_vanished_rows(tx, did, work.verdicts.get(did)))
        result = RebuildResult(
            doc_id=did,
            reason=reason,
            generation=own if current is not None else None,
            rewritten=len(queued),
            entries=tuple(new_ids),
        )
        log.warning(
            "doc_rebuilt",
            extra={"doc": did, "reason": reason, "generation": result.generation, "rewritten": len(queued)},
        )
        return result

    # --- maintenance ---------------------------------------------------------------------------

    async def rebuild_projections(self) -> None:
        """Recreate every projection row from the documents alone (after a migration, or to check).

        Emits no events: every claim is "new" against the empty baseline, which ``local=True``
        keeps quiet.
        """
        async with self._write(local=True) as work:
            # A claim the relay refused is in the document but not in the verdict, so projecting
            # the documents alone would drop its row; the refusal (kept on the row, from the
            # outbox) is what tells the user. Those rows go back as they were, holding no seats.
            refused = await work.tx.fetchall(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE rejected_code IS NOT NULL"
            )
            work.epilogue.append(lambda tx: _restore_refused_rows(tx, refused))
            await proj.clear_projections(work.tx)
            self._verdicts.clear()
            for doc_id in await work.tx.held_docs():
                doc = parse_doc_id(doc_id)
                replica = (await self._load(work.tx, doc_id)).replica
                records: list[ProjectedRecord] = []
                for root in sorted(doc.roots - {CERTS_ROOT}):
                    records.extend((root, key, rec) for key, rec in read_map(replica, doc, root).items())
                work.touched[doc_id] = records
            work.verdicts.update({d: Verdict(slots={}, claims={}, stamp_prefix=0) for d in work.touched})
