"""Update validation: the writer rules every replica enforces, whoever carried the update.

Why here and pure: the relay and a peer client that syncs with no relay must refuse exactly the
same updates, or a peer could launder into the system what the relay would refuse (docs/design.md,
"Authorship"). Validation reads the update's bytes (``yupdate``), never applies it, so a refused
update leaves the document exactly as it was, and a typical booking update costs one or two
Ed25519 verifications rather than a document copy.

The rules, in the order checked (first failure wins; one bad record refuses the whole update):

1. The update is a well-formed Yjs v1 update that only *inserts new keys into top-level maps*:
   no delete set (``deletion``), no overwrite of a key (``rewrite``, which Yjs encodes as an item
   with an origin, or as a second item for an existing key), nothing else (``shape``). A struct
   the document already holds under the same Yjs id (client, clock) must hold the same record:
   otherwise its writer reused clocks (a device or a relay restored from an older backup) and
   the engine would silently keep one copy here and another elsewhere, so it is a ``rewrite``.
2. It does not skip any clock the document lacks (``missing_deps``): the sender must re-run the
   state-vector exchange first. This also keeps a pending, unvalidated struct out of the engine.
3. Each map belongs to the document's kind (``wrong_map``) and each value is a record of that
   map's kind with schema-valid fields (``schema``: no control characters in text either), stored
   under the key its id demands; a reservation's day lies within :func:`day_in_range` of its HLC
   (``day_out_of_range``).
4. Certificates (map ``certs``) verify against the trusted relay keys and sit under their id.
5. Each struct's Yjs client id belongs to the record's signer (``foreign_client``, see
   ``crdt_core.clientids``): ``owns_client(signer, client)`` where the signer is the envelope's
   ``signer`` (a certificate id, or ``relay:<kid>`` for stamps) and, for a certificate, that
   certificate's own id. Checked as soon as the envelope is read (a cached set lookup), so a
   squatted id costs no signature verification.
6. Each record's signature verifies: relay-signed (stamps only, ``relay_only``) or signed by the
   device key of a certificate present in the document or in the same update
   (``unknown_certificate``, ``bad_signature``), with the record's HLC inside the certificate's
   validity (``certificate_expired``).
7. The author may write it (``forbidden``): docs/records.md section 8's writer table, :func:`may_write`,
   with staff rights for the users the shop's staff list names (``shop_staff_list``).
8. At arrival (``ArrivalPolicy``: the relay, and peers for what other peers send them): no HLC
   from the future (``clock_skew``), none older than the back-dating window, ``min(max_backdate_ms,
   the certificate's lifetime exp - iat)`` (``backdated``), no revoked certificate (``revoked``),
   and rights checked against the author's *current* roles too (the last two at the relay only);
   a shop's catalogue entry must name a category the catalogue defines (``unknown_category``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from crdt_core.certs import Certificate, CertificateCache, cert_id_of
from crdt_core.clientids import owns_client
from crdt_core.engine import Replica
from crdt_core.errors import EngineError, SchemaError, SignatureError, ValidationError
from crdt_core.hlc import Timestamp
from crdt_core.reader import category_ids, shop_staff
from crdt_core.records import Envelope, open_record, verify_envelope
from crdt_core.schema import (
    CERTS_ROOT,
    BookedDay,
    Category,
    DocId,
    DocKind,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    Stamp,
    StatusEvent,
    TypedRecord,
    UserProfile,
    parse_doc_id,
    parse_record,
)
from crdt_core.yupdate import DecodedUpdate, decode_update

__all__ = [
    "AcceptedRecord",
    "ArrivalPolicy",
    "Reason",
    "Rights",
    "ValidatedUpdate",
    "day_in_range",
    "may_write",
    "validate_update",
]


class Reason(StrEnum):
    MALFORMED = "malformed"
    DELETION = "deletion"
    REWRITE = "rewrite"
    SHAPE = "shape"
    MISSING_DEPS = "missing_deps"
    BAD_DOC = "bad_doc"
    WRONG_MAP = "wrong_map"
    SCHEMA = "schema"
    BAD_CERTIFICATE = "bad_certificate"
    UNKNOWN_CERTIFICATE = "unknown_certificate"
    BAD_SIGNATURE = "bad_signature"
    CERTIFICATE_EXPIRED = "certificate_expired"
    RELAY_ONLY = "relay_only"
    FORBIDDEN = "forbidden"
    UNKNOWN_RESERVATION = "unknown_reservation"
    CLOCK_SKEW = "clock_skew"
    BACKDATED = "backdated"
    REVOKED = "revoked"
    PARTY_TOO_LARGE = "party_too_large"  # relay arrival only: relay.sync.hub, verdict.exceeds_capacity
    FOREIGN_CLIENT = "foreign_client"
    DAY_OUT_OF_RANGE = "day_out_of_range"
    UNKNOWN_CATEGORY = "unknown_category"  # arrival only
    DUPLICATE_BOOKING = "duplicate_booking"  # relay arrival only: crdt_core.repeats, verdict.repeat_booking


def _fail(reason: Reason, detail: str) -> ValidationError:
    return ValidationError(reason.value, detail)


@dataclass(frozen=True)
class Rights:
    """What a user may write: roles and the shops they own or staff."""

    user_id: str
    admin: bool
    owner_of: frozenset[str]
    staff_of: frozenset[str]

    @classmethod
    def of(cls, cert: Certificate) -> Rights:
        return cls(cert.user_id, cert.is_admin, cert.owner_of, cert.staff_of)

    def narrowed(self, current: Rights | None) -> Rights:
        """The rights both the certificate and the relay's current view grant (role removal bites now)."""
        if current is None:
            return Rights(self.user_id, False, frozenset(), frozenset())
        return Rights(
            self.user_id,
            self.admin and current.admin,
            self.owner_of & current.owner_of,
            self.staff_of & current.staff_of,
        )

    def owns(self, shop: str | None) -> bool:
        return shop is not None and shop in self.owner_of

    def staffs(self, shop: str | None) -> bool:
        return shop is not None and (shop in self.staff_of or shop in self.owner_of)

    def manages(self, shop: str | None) -> bool:
        """May change ``shop``'s catalog entry and staff (:func:`may_write`): admin or owner."""
        return self.admin or self.owns(shop)

    def with_shop_staff(self, shop: str | None, staff: Collection[str]) -> Rights:
        """These rights plus staff rights on ``shop`` when its staff list (``reader.shop_staff``)
        names this user: rights an owner gives in the shop's data count at once, everywhere,
        without a new certificate. They never include ownership (``manages``)."""
        if shop is None or self.user_id not in staff or shop in self.staff_of:
            return self
        return Rights(self.user_id, self.admin, self.owner_of, self.staff_of | {shop})

    def edits(self, shop: str | None) -> bool:
        """May change ``shop``'s profile and slots and act on its bookings: admin, owner or staff."""
        return self.admin or self.staffs(shop)


#: The relay's default back-dating window: 30 days.
MAX_BACKDATE_MS = 30 * 24 * 3600 * 1000


@dataclass(frozen=True)
class ArrivalPolicy:
    """Extra checks at the moment an update arrives from a writer, by the receiver's clock.

    The back-dating window bounds what a device can do after its certificate expired or was
    stolen: a record whose HLC is older than ``now_ms - window`` is refused (``backdated``), where
    ``window = min(max_backdate_ms, exp - iat)`` of the author's certificate. A record must also
    lie inside its certificate's validity (``certificate_expired``, checked without a policy), so
    an expired device can back-date into its old validity for at most one certificate lifetime
    past ``exp``, while honest offline records written while valid still sync within that time.

    ``max_backdate_ms=None`` leaves the certificate's lifetime as the only bound. The relay
    builds one per update with revocation and current-rights lookups; peers use :meth:`for_peer`.
    """

    now_ms: int
    max_future_skew_ms: int = 60_000
    max_backdate_ms: int | None = MAX_BACKDATE_MS
    is_revoked: Callable[[Certificate], bool] | None = None
    current_rights: Callable[[str], Rights | None] | None = None

    @classmethod
    def for_peer(cls, now_ms: int) -> ArrivalPolicy:
        """The arrival rules a peer applies, by its own clock, to updates another *peer* sends it.

        Same clock-skew and back-dating rules as the relay (so an expired device cannot launder
        back-dated records through peers for longer than it could at the relay), but no
        revocation list and no current-rights lookup: a peer has neither, and judges rights by
        the certificate alone. Updates that come from the relay are validated with no policy
        (``policy=None``): the relay judged them at their arrival, and re-judging them later by
        the peer's clock would refuse old, legitimately stamped history.
        """
        return cls(now_ms=now_ms)

    def backdate_window_ms(self, author: Certificate) -> int:
        """How far back from ``now_ms`` this author's records may be dated."""
        lifetime = author.expires_at_ms - author.issued_at_ms
        if self.max_backdate_ms is None:
            return lifetime
        return min(self.max_backdate_ms, lifetime)


@dataclass(frozen=True)
class AcceptedRecord:
    root: str
    key: str
    envelope: Envelope | None
    """None for certificates, which are not envelopes."""
    record: TypedRecord | Certificate
    author: Certificate | None
    """None for relay-signed records and certificates."""


@dataclass
class ValidatedUpdate:
    doc_id: DocId
    records: list[AcceptedRecord] = field(default_factory=list)

    @property
    def noop(self) -> bool:
        """Nothing new: a re-send of what the document already holds."""
        return not self.records

    @property
    def new_reservations(self) -> list[Reservation]:
        return [r.record for r in self.records if isinstance(r.record, Reservation)]

    @property
    def new_events(self) -> list[StatusEvent]:
        return [r.record for r in self.records if isinstance(r.record, StatusEvent)]

    @property
    def new_stamps(self) -> list[Stamp]:
        return [r.record for r in self.records if isinstance(r.record, Stamp)]


def _hlc_ms(record: TypedRecord) -> int | None:
    hlc = getattr(record, "hlc", None)
    if hlc is None:
        return None
    return Timestamp.parse(hlc).wall_ms


class _Batch:
    """Lookups across the document and the update being validated."""

    def __init__(self, replica: Replica, doc: DocId, certs: CertificateCache) -> None:
        self.replica = replica
        self.doc = doc
        self.certs = certs
        self.new_certs: dict[str, Certificate] = {}
        self.new_reservations: dict[str, Reservation] = {}
        # Reads never create a missing map (``Replica``'s reads check first), so validation
        # leaves the replica untouched without listing its roots (which costs a Python object
        # per root on every update).

    def get_bytes(self, root: str, key: str) -> bytes | None:
        return self.replica.get_bytes(root, key)

    def has_key(self, root: str, key: str) -> bool:
        return self.replica.has_key(root, key)

    def certificate(self, cert_id: str) -> Certificate | None:
        if cert_id in self.new_certs:
            return self.new_certs[cert_id]
        # A certificate is stored under its id, the hash of its exact bytes (checked when it
        # arrived, rule 4), so one the cache verified under this id is the one the document
        # holds: no need to read and hash its bytes again.
        cached = self.certs.get(cert_id)
        if cached is not None:
            return cached if self.has_key(CERTS_ROOT, cert_id) else None
        raw = self.get_bytes(CERTS_ROOT, cert_id)
        if raw is None:
            return None
        return self.certs.verify(raw)

    def reservation(self, res_id: str) -> Reservation | None:
        if res_id in self.new_reservations:
            return self.new_reservations[res_id]
        raw = self.get_bytes("reservations", res_id)
        if raw is None:
            return None
        env = open_record(raw, canonical=False)  # held, so checked when it arrived
        rec = parse_record(DocKind.BOOKINGS, "reservations", res_id, env.kind, env.fields, env.schema_version)
        assert isinstance(rec, Reservation)
        return rec


def may_write(
    doc: DocId,
    record: TypedRecord,
    rights: Rights,
    target_customer: str | None = None,
    shop_staff: Collection[str] = (),
) -> bool:
    """docs/records.md section 8, "Who may write what": whether a user with ``rights`` may write
    ``record`` in ``doc``.

    ``shop_staff``: the users the shop's staff list names (``reader.shop_staff`` of ``shop:S``):
    they have staff rights on S whatever their certificate says.
    The one rule: validation refuses (``forbidden``) what this refuses, and clients ask it before
    writing. ``target_customer``: for a status event, the customer of the reservation it is about
    (None: the reservation is unknown, no right).
    Stamps are the relay's alone (refused before rights): never.
    """
    rights = rights.with_shop_staff(doc.shop_id, shop_staff)
    if isinstance(record, Category):
        return rights.admin
    if isinstance(record, ShopSummary):
        return rights.manages(record.id)
    if isinstance(record, (ShopProfile, SlotTemplate)):
        return rights.edits(doc.shop_id)
    if isinstance(record, StaffEntry):
        return rights.manages(doc.shop_id)
    if isinstance(record, Reservation):
        return record.customer == rights.user_id
    if isinstance(record, StatusEvent):
        if record.by != rights.user_id or target_customer is None:
            return False
        if record.type == "cancel":
            return target_customer == rights.user_id
        # confirm, decline, no_show; and an event type from a newer schema: inert here, so only
        # staff may write it
        return rights.edits(doc.shop_id)
    if isinstance(record, (UserProfile, BookedDay)):
        return doc.user_id == rights.user_id
    return False


def _check_rights(
    doc: DocId, record: TypedRecord, rights: Rights, batch: _Batch, staff: Collection[str]
) -> None:
    """Raises ValidationError(forbidden) when :func:`may_write` refuses, naming why where it can."""
    target_customer = None
    if isinstance(record, Reservation) and record.customer != rights.user_id:
        raise _fail(Reason.FORBIDDEN, f"reservation {record.id} is in another customer's name")
    if isinstance(record, StatusEvent):
        if record.by != rights.user_id:
            raise _fail(Reason.FORBIDDEN, f"event {record.id} names another author")
        target = batch.reservation(record.reservation)
        if target is None:
            raise _fail(Reason.UNKNOWN_RESERVATION, f"event {record.id} refers to an unknown reservation")
        target_customer = target.customer
    if not may_write(doc, record, rights, target_customer, staff):
        raise _fail(Reason.FORBIDDEN, f"{rights.user_id} may not write this {record.KIND} in {doc}")


def _held(replica: Replica, root: str, key: str) -> bytes | None:
    """The record the document holds at ``root/key``; None when it holds none (or not a record)."""
    try:
        return replica.get_bytes(root, key)
    except EngineError:
        return None


def validate_update(
    doc_id: str | DocId,
    replica: Replica,
    update: bytes,
    certs: CertificateCache,
    policy: ArrivalPolicy | None = None,
    shop_staff_list: Collection[str] | None = None,
) -> ValidatedUpdate:
    """See :func:`_validate_update`; its reads of ``replica`` share one engine transaction
    (``Replica.reading``: one per read cost two state-vector copies each, linear in the
    document's clients)."""
    with replica.reading():
        return _validate_update(doc_id, replica, update, certs, policy, shop_staff_list)


def _validate_update(
    doc_id: str | DocId,
    replica: Replica,
    update: bytes,
    certs: CertificateCache,
    policy: ArrivalPolicy | None = None,
    shop_staff_list: Collection[str] | None = None,
) -> ValidatedUpdate:
    """Accept or refuse a whole update for ``replica`` (which is not modified).

    Args:
        certs: the trusted relay keys, with a cache of certificates already verified under them.
        policy: arrival-time checks; the relay passes one, peers may pass None.
        shop_staff_list: for a bookings document, the users its shop's staff list names
            (``reader.shop_staff`` of the replica's copy of ``shop:S``); they have staff rights
            there. For a shop document it is read from ``replica`` itself; None elsewhere.

    Returns:
        What the update adds; ``noop`` when it adds nothing (a harmless re-send).

    Raises:
        ValidationError: with ``code`` one of ``Reason``; the caller must not apply the update.
    """
    try:
        doc = doc_id if isinstance(doc_id, DocId) else parse_doc_id(doc_id)
    except SchemaError as exc:
        raise _fail(Reason.BAD_DOC, str(exc)) from None
    try:
        decoded = decode_update(update)
    except EngineError as exc:
        raise _fail(Reason.MALFORMED, str(exc)) from None
    _check_struct_runs(decoded)
    clocks = replica.clocks()
    for other in decoded.others:
        if other.clock + other.length <= clocks.get(other.client, 0):
            continue  # already integrated: the engine ignores it
        reason = Reason.REWRITE if "overwrites" in other.why else Reason.SHAPE
        if "skip" in other.why:
            reason = Reason.MISSING_DEPS
        raise _fail(reason, f"struct {other.client}:{other.clock}: {other.why}")
    if decoded.deletes:
        raise _fail(Reason.DELETION, "records are never removed")
    for client, (start, _end) in decoded.ranges.items():
        if start > clocks.get(client, 0):
            raise _fail(
                Reason.MISSING_DEPS,
                f"client {client} starts at {start}, document has {clocks.get(client, 0)}",
            )

    fresh = [ins for ins in decoded.inserts if ins.clock >= clocks.get(ins.client, 0)]
    for ins in decoded.inserts:
        if ins.clock < clocks.get(ins.client, 0) and _held(replica, ins.root, ins.key) != ins.value:
            raise _fail(
                Reason.REWRITE,
                f"struct {ins.client}:{ins.clock} ({ins.root}/{ins.key}) differs from the one held "
                "under that id: its writer reused clocks",
            )
    result = ValidatedUpdate(doc)
    batch = _Batch(replica, doc, certs)
    seen: set[tuple[str, str]] = set()
    for ins in fresh:
        if ins.root not in doc.roots:
            raise _fail(Reason.WRONG_MAP, f"a {doc.kind.value} document has no map {ins.root!r}")
        if (ins.root, ins.key) in seen or batch.has_key(ins.root, ins.key):
            raise _fail(Reason.REWRITE, f"{ins.root}/{ins.key} already exists")
        seen.add((ins.root, ins.key))
        if not isinstance(ins.value, bytes):
            raise _fail(Reason.SHAPE, f"{ins.root}/{ins.key} is not a binary record")

    # Certificates first: records in the same update may be signed under them.
    for ins in fresh:
        if ins.root != CERTS_ROOT:
            continue
        if ins.key != cert_id_of(ins.value):
            raise _fail(Reason.BAD_CERTIFICATE, f"certificate stored under {ins.key!r}, not its id")
        # A certificate's writer is the certificate itself; checked before its signature.
        _check_client(ins.client, ins.key, ins.root, ins.key)
        try:
            cert = certs.verify(ins.value)
        except (SchemaError, SignatureError) as exc:
            raise _fail(Reason.BAD_CERTIFICATE, str(exc)) from None
        batch.new_certs[ins.key] = cert
        result.records.append(AcceptedRecord(ins.root, ins.key, None, cert, None))

    typed: list[tuple[str, str, Envelope, TypedRecord]] = []
    for ins in fresh:
        if ins.root == CERTS_ROOT:
            continue
        try:
            env = open_record(ins.value)
        except SchemaError as exc:
            raise _fail(Reason.SCHEMA, f"{ins.root}/{ins.key}: {exc}") from None
        _check_client(ins.client, env.signer, ins.root, ins.key)
        try:
            rec = parse_record(doc.kind, ins.root, ins.key, env.kind, env.fields, env.schema_version)
        except SchemaError as exc:
            raise _fail(Reason.SCHEMA, f"{ins.root}/{ins.key}: {exc}") from None
        if isinstance(rec, Reservation):
            _check_day(doc, rec)
            batch.new_reservations[rec.id] = rec
        typed.append((ins.root, ins.key, env, rec))

    staff: Collection[str] = shop_staff_list or ()
    if doc.kind is DocKind.SHOP and any(not isinstance(rec, Stamp) for *_, rec in typed):
        staff = shop_staff(replica, doc)

    for root, key, env, rec in typed:
        if isinstance(rec, Stamp) and env.relay_kid is None:
            # before the signature check: a stamp has no HLC, so a device-signed one would otherwise
            # be reported as ``certificate_expired`` instead of what it is
            raise _fail(Reason.RELAY_ONLY, "only the relay stamps")
        author = _check_signature(str(doc), root, key, env, rec, batch, certs)
        if author is None:
            if not isinstance(rec, Stamp):
                raise _fail(Reason.RELAY_ONLY, "the relay signs only stamps")
            if batch.reservation(rec.reservation) is None:
                raise _fail(Reason.UNKNOWN_RESERVATION, f"stamp {rec.no} for an unknown reservation")
        else:
            rights, granted = Rights.of(author), staff
            if policy is not None:
                _check_arrival(author, rec, policy)
                if policy.current_rights is not None:
                    current = policy.current_rights(author.user_id)
                    rights = rights.narrowed(current)
                    if current is None:  # not a user at the relay now: no staff list helps
                        granted = ()
                if isinstance(rec, ShopSummary):
                    _check_category(rec, replica, typed)
            _check_rights(doc, rec, rights, batch, granted)
        result.records.append(AcceptedRecord(root, key, env, rec, author))
    return result


#: A reservation's day may lie at most this many days before its HLC's (UTC) date...
DAYS_BEFORE_HLC = 1
#: ... and at most this many days after it.
DAYS_AFTER_HLC = 366


def day_in_range(day: _dt.date, hlc: str) -> bool:
    """Whether a reservation written at ``hlc`` may be for ``day``: from the HLC's UTC date minus
    ``DAYS_BEFORE_HLC`` (a shop's local day may still be yesterday in UTC) to plus ``DAYS_AFTER_HLC``.
    Decided from the record alone, so every replica agrees; a device cannot move its HLC into the
    past or the future to get round it, since the HLC must lie in its certificate's validity."""
    written = _dt.datetime.fromtimestamp(Timestamp.parse(hlc).wall_ms / 1000, _dt.UTC).date()
    offset = (day - written).days
    return -DAYS_BEFORE_HLC <= offset <= DAYS_AFTER_HLC


def _check_day(doc: DocId, rec: Reservation) -> None:
    assert doc.day is not None  # reservations live only in bookings documents
    if not day_in_range(doc.day, rec.hlc):
        raise _fail(
            Reason.DAY_OUT_OF_RANGE,
            f"reservation {rec.id} for {doc.day.isoformat()} was written at {rec.hlc}: a booking's day"
            f" must lie from {DAYS_BEFORE_HLC} day before to {DAYS_AFTER_HLC} days after it",
        )


def _check_category(
    rec: ShopSummary, replica: Replica, typed: list[tuple[str, str, Envelope, TypedRecord]]
) -> None:
    """Arrival rule: a shop's category must be one the catalogue defines (or this update adds)."""
    if any(isinstance(other, Category) and other.id == rec.category for *_, other in typed):
        return
    if rec.category not in category_ids(replica):
        raise _fail(
            Reason.UNKNOWN_CATEGORY, f"shop {rec.id} names category {rec.category!r}, which does not exist"
        )


def _check_client(client: int, signer: str, root: str, key: str) -> None:
    """Rule 5: the struct's Yjs client id must be one of the signer's (``crdt_core.clientids``)."""
    if not owns_client(signer, client):
        raise _fail(
            Reason.FOREIGN_CLIENT, f"{root}/{key} is written under Yjs client {client}, not one of {signer}'s"
        )


def _check_struct_runs(decoded: DecodedUpdate) -> None:
    """Each client's structs in one update must form one gap-free run of clocks, never overlapping.

    An honest encoder writes one block per client. A crafted update can list a client twice: two
    blocks claiming the same clocks make pycrdt 0.14 store garbage bytes under a validated key, and
    a second block after a gap slips past the ``missing_deps`` check (which sees only the merged
    range) and makes the engine integrate structs out of order.
    """
    runs: dict[int, list[tuple[int, int]]] = {}
    for ins in decoded.inserts:
        runs.setdefault(ins.client, []).append((ins.clock, 1))
    for other in decoded.others:
        runs.setdefault(other.client, []).append((other.clock, other.length))
    for client, spans in runs.items():
        spans.sort()
        expected = spans[0][0]
        for clock, length in spans:
            if clock != expected:
                raise _fail(
                    Reason.MALFORMED, f"client {client}'s structs overlap or leave a gap at clock {clock}"
                )
            expected = clock + length


def _check_signature(
    doc_id: str,
    root: str,
    key: str,
    env: Envelope,
    rec: TypedRecord,
    batch: _Batch,
    certs: CertificateCache,
) -> Certificate | None:
    """Verify the record's signature; returns the author's certificate, or None if the relay signed."""
    kid = env.relay_kid
    if kid is not None:
        relay_key = certs.trusted_keys.get(kid)
        if relay_key is None:
            raise _fail(Reason.BAD_SIGNATURE, f"{root}/{key} claims unknown relay key {kid!r}")
        try:
            verify_envelope(env, doc_id, key, relay_key)
        except SignatureError as exc:
            raise _fail(Reason.BAD_SIGNATURE, str(exc)) from None
        return None
    try:
        author = batch.certificate(env.signer)
    except (SchemaError, SignatureError) as exc:
        raise _fail(Reason.BAD_CERTIFICATE, str(exc)) from None
    if author is None:
        raise _fail(
            Reason.UNKNOWN_CERTIFICATE, f"{root}/{key} is signed under a certificate not in the document"
        )
    try:
        verify_envelope(env, doc_id, key, author.device_key)
    except SignatureError as exc:
        raise _fail(Reason.BAD_SIGNATURE, str(exc)) from None
    at = _hlc_ms(rec)
    if at is None or not author.valid_at(at):
        raise _fail(
            Reason.CERTIFICATE_EXPIRED, f"{root}/{key} was written outside its certificate's validity"
        )
    return author


def _check_arrival(author: Certificate, rec: TypedRecord, policy: ArrivalPolicy) -> None:
    at = _hlc_ms(rec)
    assert at is not None  # every device-signed record kind has an HLC; checked by _check_signature
    if at - policy.now_ms > policy.max_future_skew_ms:
        raise _fail(Reason.CLOCK_SKEW, f"record stamped {at - policy.now_ms} ms in the future")
    window = policy.backdate_window_ms(author)
    if policy.now_ms - at > window:
        raise _fail(
            Reason.BACKDATED,
            f"record dated {policy.now_ms - at} ms ago, beyond the back-dating window of {window} ms"
            " (the lesser of the arrival policy's and the certificate's lifetime)",
        )
    if policy.is_revoked is not None and policy.is_revoked(author):
        raise _fail(Reason.REVOKED, f"certificate {author.cert_id} is revoked")


RightsLookup = Mapping[str, Rights]
