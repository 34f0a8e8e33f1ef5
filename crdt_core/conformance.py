"""The conformance corpus: deterministic test vectors for implementations in other languages.

Why a corpus and not just the docs: a client written from ``docs/records.md`` and
``docs/protocol.md`` alone still has to agree with every other replica byte for byte and verdict
for verdict. The corpus gives it the cases to prove that: records valid and refused (with the
reason code), whole Yjs updates against a given document state, wire messages valid and invalid,
and bookings days with the verdict every replica must compute. ``conformance/README.md`` describes
the files for implementers.

Why generated: every case is built from fixed seeds and fixed clocks, so the checked-in files are
reproducible (``tests/core/test_conformance.py`` regenerates them and compares). Every case states the
outcome it is *meant* to have; :func:`build_corpus` runs crdt_core on each and refuses to emit a
corpus where the two disagree, so the files are a specification checked against this
implementation, not a recording of whatever it happens to do.

Building is pure, like the rest of crdt_core: :func:`build_corpus` returns the files' text, and
``tools/conformance.py`` writes or checks them (``python -m tools.conformance write DIR``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core import messages as wire
from crdt_core.canonical import canonical_pack
from crdt_core.certs import (
    CertificateCache,
    DeviceKey,
    SigningKey,
    cert_id_of,
    issue_certificate,
    public_bytes,
)
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import CodecError, ValidationError
from crdt_core.reader import BookingsState, newest_per, shop_staff
from crdt_core.records import RECORD_DOMAIN, RECORD_FORMAT, RELAY_SIGNER_PREFIX, open_record, sign_record
from crdt_core.schema import (
    CERTS_ROOT,
    SCHEMA_VERSION,
    BookedDay,
    Category,
    DocId,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    Stamp,
    StatusEvent,
    TypedRecord,
    UserProfile,
    capacities_on,
    parse_day,
    per_customer_limits,
    stamp_key,
)
from crdt_core.validation import ArrivalPolicy, Rights, validate_update
from crdt_core.verdict import compute_verdict, stamp_prefix
from crdt_core.yupdate import encode_varuint

__all__ = [
    "CORPUS_FORMAT",
    "build_corpus",
    "judge_message",
    "judge_record",
    "judge_update",
    "judge_verdict",
]

#: Version of the corpus files' layout (not of the records or the protocol they test).
CORPUS_FORMAT: Final = 1
#: The corpus's fixed "now": 2027-01-15T08:00:00Z. Every clock in it derives from this.
NOW_MS: Final = 1_800_000_000_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
DAY: Final = "2027-01-15"
SHOP: Final = "s1"
DAY_DOC: Final = f"bookings:{SHOP}:{DAY}"
SHOP_DOC: Final = f"shop:{SHOP}"
CATALOG_DOC: Final = "catalog"
RELAY_KID: Final = "relay-k1"


def _hex(raw: bytes) -> str:
    return raw.hex()


def _seed_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))


def hlc(offset_ms: int = 0, counter: int = 0, node: str = "n") -> str:
    """An HLC string at ``NOW_MS + offset_ms``."""
    return f"{NOW_MS + offset_ms:013d}-{counter:06d}-{node}"


# --- the fixed world: relay keys and certified devices ------------------------------------------------


@dataclass(frozen=True)
class Device:
    name: str
    user: str
    seed: int
    key: DeviceKey

    @property
    def cert_id(self) -> str:
        return self.key.cert_id

    def client_id(self, generation: int = 0) -> int:
        return client_id_for(self.cert_id, generation)


class World:
    """The relay's keys and a fixed set of devices; everything derives from small integer seeds."""

    def __init__(self) -> None:
        self.relay = SigningKey(RELAY_KID, _seed_key(1))
        #: Same kid as the relay's, another key: what a forger holds.
        self.imposter = SigningKey(RELAY_KID, _seed_key(2))
        #: A key id the replicas do not trust.
        self.unknown = SigningKey("relay-k9", _seed_key(3))
        self.devices: dict[str, Device] = {}
        self._device("alice", "alice", 101)
        self._device("bob", "bob", 102)
        self._device("sam", "sam", 103, staff_of=[SHOP])
        self._device("olga", "olga", 104, owner_of=[SHOP])
        self._device("ada", "ada", 105, roles=["admin"])
        self._device("stan", "stan", 106, staff_of=["s2"])
        self._device("alice_old", "alice", 107, validity=(NOW_MS - 10 * DAY_MS, NOW_MS - 3 * DAY_MS))
        self._device("alice_forged", "alice", 108, issuer=self.imposter)
        self._device("alice_unknown_kid", "alice", 109, issuer=self.unknown)
        self._device("alice_long", "alice", 110, validity=(NOW_MS - 60 * DAY_MS, NOW_MS + 60 * DAY_MS))

    def _device(
        self,
        name: str,
        user: str,
        seed: int,
        *,
        roles: Sequence[str] = (),
        owner_of: Sequence[str] = (),
        staff_of: Sequence[str] = (),
        validity: tuple[int, int] = (NOW_MS - HOUR_MS, NOW_MS + DAY_MS),
        issuer: SigningKey | None = None,
    ) -> None:
        private = _seed_key(seed)
        signer = issuer or self.relay
        cert = issue_certificate(
            signer,
            user_id=user,
            roles=list(roles),
            owner_of=list(owner_of),
            staff_of=list(staff_of),
            device_public_key=public_bytes(private),
            issued_at_ms=validity[0],
            expires_at_ms=validity[1],
        )
        self.devices[name] = Device(name, user, seed, DeviceKey(private, cert))

    def __getitem__(self, name: str) -> Device:
        return self.devices[name]

    @property
    def trusted(self) -> dict[str, bytes]:
        return {self.relay.kid: self.relay.public}

    @property
    def relay_signer(self) -> str:
        return RELAY_SIGNER_PREFIX + self.relay.kid

    def keys_file(self) -> dict[str, Any]:
        devices = []
        for dev in self.devices.values():
            devices.append(
                {
                    "name": dev.name,
                    "user": dev.user,
                    "private_key": _hex(dev.seed.to_bytes(32, "big")),
                    "public_key": _hex(public_bytes(dev.key.private)),
                    "certificate": _hex(dev.key.certificate),
                    "cert_id": dev.cert_id,
                }
            )
        client_ids = []
        signers = [self["alice"].cert_id, self["bob"].cert_id, self.relay_signer, "example-signer"]
        for signer in signers:
            for generation in (0, 1, 2, 63):
                client_ids.append(
                    {
                        "signer": signer,
                        "generation": generation,
                        "client_id": client_id_for(signer, generation),
                    }
                )
        return {
            "now_ms": NOW_MS,
            "trusted_relay_keys": {kid: _hex(key) for kid, key in self.trusted.items()},
            "untrusted_relay_keys": {
                "relay-k1 (imposter: same kid, another key)": _hex(self.imposter.public),
                self.unknown.kid: _hex(self.unknown.public),
            },
            "devices": devices,
            "client_ids": client_ids,
        }


# --- record helpers -----------------------------------------------------------------------------------


def _signed(
    doc: str, key: str, record: TypedRecord, by: Device | SigningKey, version: int | None = None
) -> bytes:
    """``record`` signed by ``by``, as the lowest schema version that holds it unless ``version``."""
    signer = by.key if isinstance(by, Device) else by
    return sign_record(doc, key, record.KIND, record.to_fields(), signer, version or record.needed_version())


def _signed_fields(
    doc: str,
    key: str,
    kind: str,
    fields: dict[str, Any],
    by: Device | SigningKey,
    version: int = 1,
) -> bytes:
    signer = by.key if isinstance(by, Device) else by
    return sign_record(doc, key, kind, fields, signer, version)


def _envelope(version: int, kind: str, fields_raw: bytes, signer: str, signature: bytes) -> bytes:
    out: bytes = msgpack.packb(
        [RECORD_FORMAT, version, kind, fields_raw, signer, signature], use_bin_type=True
    )
    return out


def _reswap(raw: bytes, *, fields: dict[str, Any] | None = None, signer: str | None = None) -> bytes:
    """A record's bytes with its fields or signer swapped, keeping the original signature."""
    env = open_record(raw)
    fields_raw = canonical_pack(fields) if fields is not None else env.fields_raw
    return _envelope(env.schema_version, env.kind, fields_raw, signer or env.signer, env.signature)


def _res(
    rid: str, customer: str, *, party: int = 1, slot: str = "s-9", at: int = 0, note: str | None = None
) -> Reservation:
    return Reservation(
        id=rid, slot=slot, party=party, customer=customer, hlc=hlc(at, node=customer), note=note
    )


def _event(eid: str, rid: str, kind: str, by: str, at: int = 0, reason: str | None = None) -> StatusEvent:
    return StatusEvent(id=eid, reservation=rid, type=kind, by=by, hlc=hlc(at, node=by), reason=reason)


# --- judges: crdt_core's answer for one case, in the case's own "expect" shape -----------------------


def _arrival(spec: Mapping[str, Any] | None) -> ArrivalPolicy | None:
    if spec is None:
        return None
    revoked = frozenset(spec.get("revoked", ()))
    rights_spec: Mapping[str, Any] | None = spec.get("current_rights")

    def current(user: str) -> Rights | None:
        assert rights_spec is not None
        entry = rights_spec.get(user)
        if entry is None:
            return None
        return Rights(user, bool(entry["admin"]), frozenset(entry["owner_of"]), frozenset(entry["staff_of"]))

    return ArrivalPolicy(
        now_ms=int(spec["now_ms"]),
        is_revoked=lambda cert: cert.cert_id in revoked,
        current_rights=current if rights_spec is not None else None,
    )


def _outcome(
    doc: str,
    replica: Replica,
    update: bytes,
    trusted: Mapping[str, bytes],
    arrival: Mapping[str, Any] | None,
    staff: frozenset[str] | None = None,
) -> dict[str, Any]:
    try:
        result = validate_update(doc, replica, update, CertificateCache(trusted), _arrival(arrival), staff)
    except ValidationError as exc:
        return {"valid": False, "reason": exc.code}
    return {"valid": True, "records": sorted([r.root, r.key] for r in result.records)}


def judge_record(case: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """Write the case's record into a document holding its certificates and context, and validate.

    The update carrying the record is written under the signer's generation-0 client id, so only
    the record-level rules decide.
    """
    trusted = {kid: bytes.fromhex(k) for kid, k in keys["trusted_relay_keys"].items()}
    certs = {d["cert_id"]: bytes.fromhex(d["certificate"]) for d in keys["devices"]}
    doc_state = Replica(1)
    entries = [("certs", cid, certs[cid]) for cid in case["certificates"]]
    entries += [(c["root"], c["key"], bytes.fromhex(c["value"])) for c in case["context"]]
    if entries:
        doc_state.write(entries)
    value = bytes.fromhex(case["value"])
    if case["root"] == CERTS_ROOT:
        signer = case["key"]  # a certificate's writer is the certificate itself
    else:
        try:
            signer = open_record(value).signer
        except ValueError:
            signer = "unparsable"
    writer = doc_state.copy(client_id_for(signer, 0))
    update = writer.write([(case["root"], case["key"], value)])
    return _outcome(case["doc"], doc_state, update, trusted, case.get("arrival"), _staff_of(case))


def _staff_of(case: Mapping[str, Any]) -> frozenset[str] | None:
    """The staff list of the case's ``shop`` entries (records of the bookings document's shop)."""
    if "shop" not in case:
        return None
    shop = Replica(1)
    entries = [(c["root"], c["key"], bytes.fromhex(c["value"])) for c in case["shop"]]
    if entries:
        shop.write(entries)
    return shop_staff(shop, SHOP_DOC)


def judge_update(case: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the case's state updates (unvalidated: they are the document) and validate the update."""
    trusted = {kid: bytes.fromhex(k) for kid, k in keys["trusted_relay_keys"].items()}
    replica = Replica(1)
    for update in case["state"]:
        replica.apply_update(bytes.fromhex(update))
    return _outcome(case["doc"], replica, bytes.fromhex(case["update"]), trusted, case.get("arrival"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bin": value.hex()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def judge_message(case: Mapping[str, Any]) -> dict[str, Any]:
    data = bytes.fromhex(case["hex"])
    try:
        message = wire.decode(data, max_size=case.get("max_size", wire.DEFAULT_MAX_MESSAGE))
    except CodecError:
        return {"valid": False}
    direction = "client" if isinstance(message, wire.ClientMessage) else "relay"
    fields = {name: getattr(message, name) for name in message.FIELDS if getattr(message, name) is not None}
    return {"valid": True, "t": message.TYPE, "direction": direction, "fields": _jsonable(fields)}


def _templates(slots: Sequence[Mapping[str, Any]]) -> dict[str, SlotTemplate]:
    """Per slot id, its current template (``reader.newest_per``) from a verdict case's ``slots``."""
    templates = {
        s["key"]: SlotTemplate(
            id=s["id"],
            service="any",
            start="09:00",
            duration=60,
            capacity=s["capacity"],
            weekdays=tuple(s["weekdays"]) if s.get("weekdays") is not None else None,
            active=s["active"],
            hlc=s["hlc"],
            per_customer=s.get("per_customer"),
        )
        for s in slots
    }
    if len(templates) != len(slots):
        raise ValueError("a verdict case names one slot record key twice")
    return newest_per(templates, lambda t: t.id)


def judge_verdict(case: Mapping[str, Any]) -> dict[str, Any]:
    day = parse_day(case["day"])
    state = BookingsState(
        doc=DocId.bookings(SHOP, day),
        reservations={r["id"]: Reservation(**r) for r in case["reservations"]},
        events={e["id"]: StatusEvent(**e) for e in case["events"]},
        stamps={s["no"]: Stamp(no=s["no"], reservation=s["reservation"], at=0) for s in case["stamps"]},
    )
    templates = _templates(case["slots"])
    verdict = compute_verdict(state, capacities_on(templates, day), per_customer_limits(templates))
    claims = {
        rid: {
            "state": c.state.value,
            "position": c.position,
            "stamp": c.stamp,
            "final": c.final,
            "rank": c.rank,
        }
        for rid, c in sorted(verdict.claims.items())
    }
    return {"claims": claims, "stamp_prefix": verdict.stamp_prefix}


# --- records -------------------------------------------------------------------------------------------


def _record_case(
    name: str,
    doc: str,
    root: str,
    key: str,
    value: bytes,
    expect: str | dict[str, Any],
    *,
    certificates: Sequence[Device] = (),
    context: Sequence[tuple[str, str, bytes]] = (),
    arrival: dict[str, Any] | None = None,
    note: str = "",
    shop: Sequence[tuple[str, str, bytes]] | None = None,
) -> dict[str, Any]:
    """``expect`` is a reason code, or ``{"kind": ..., ...}`` for a valid record (its parsed form).
    ``shop``: entries of the bookings document's shop document (its staff list counts)."""
    case: dict[str, Any] = {
        "name": name,
        "note": note,
        "doc": doc,
        "root": root,
        "key": key,
        "value": _hex(value),
        "certificates": [d.cert_id for d in certificates],
        "context": [{"root": r, "key": k, "value": _hex(v)} for r, k, v in context],
    }
    if shop is not None:
        case["shop"] = [{"root": r, "key": k, "value": _hex(v)} for r, k, v in shop]
    if arrival is not None:
        case["arrival"] = arrival
    if isinstance(expect, str):
        case["expect"] = {"valid": False, "reason": expect}
    else:
        case["expect"] = {"valid": True, "records": [[root, key]], "parsed": expect}
    return case


def _parsed(value: bytes) -> dict[str, Any]:
    env = open_record(value)
    return {
        "format": RECORD_FORMAT,
        "schema_version": env.schema_version,
        "kind": env.kind,
        "signer": env.signer,
        "fields": env.fields,
    }


def _sign_raw(
    doc: str, key: str, kind: str, fields_raw: bytes, by: Device, version: int = SCHEMA_VERSION
) -> bytes:
    """A format-2 record over exactly ``fields_raw`` (which need not be canonical), validly signed."""
    message = RECORD_DOMAIN + canonical_pack([doc, key, RECORD_FORMAT, version, kind, fields_raw, by.cert_id])
    return _envelope(version, kind, fields_raw, by.cert_id, by.key.sign(message))


def _format1(doc: str, key: str, kind: str, fields_raw: bytes, by: Device) -> bytes:
    """A record as format 1 wrote it: envelope ``[1, ...]``, signature over doc, key, kind, fields."""
    message = b"quickslot-record-v1\x00" + canonical_pack([doc, key, kind, fields_raw])
    return canonical_pack([1, SCHEMA_VERSION, kind, fields_raw, by.cert_id, by.key.sign(message)])


def _noncanonical_cert(dev: Device) -> tuple[str, bytes]:
    fmt, body, kid, sig = msgpack.unpackb(dev.key.certificate, raw=False)
    kid_raw = kid.encode()
    raw = (
        b"\x94"
        + msgpack.packb(fmt)
        + msgpack.packb(body, use_bin_type=True)
        + b"\xd9"
        + bytes([len(kid_raw)])
        + kid_raw
        + msgpack.packb(sig, use_bin_type=True)
    )
    return cert_id_of(raw), raw


def _unsorted_body_cert(w: World, dev: Device) -> tuple[str, bytes]:
    body = msgpack.unpackb(msgpack.unpackb(dev.key.certificate, raw=False)[1], raw=False)
    unsorted = msgpack.packb(dict(sorted(body.items(), reverse=True)), use_bin_type=True)
    raw = canonical_pack([1, unsorted, w.relay.kid, w.relay.sign(b"quickslot-cert-v1\x00" + unsorted)])
    return cert_id_of(raw), raw


def _record_cases(w: World) -> list[dict[str, Any]]:
    alice, bob, sam, olga, ada, stan = w["alice"], w["bob"], w["sam"], w["olga"], w["ada"], w["stan"]
    cases: list[dict[str, Any]] = []
    res_a = _res("r-alice", "alice", party=2)
    res_a_raw = _signed(DAY_DOC, res_a.id, res_a, alice)
    with_res_a = [("reservations", res_a.id, res_a_raw)]

    def valid(
        name: str,
        doc: str,
        root: str,
        key: str,
        value: bytes,
        certs: Sequence[Device],
        note: str = "",
        context: Sequence[tuple[str, str, bytes]] = (),
    ) -> None:
        cases.append(
            _record_case(
                name, doc, root, key, value, _parsed(value), certificates=certs, context=context, note=note
            )
        )

    def refused(
        name: str,
        doc: str,
        root: str,
        key: str,
        value: bytes,
        reason: str,
        certs: Sequence[Device] = (),
        note: str = "",
        context: Sequence[tuple[str, str, bytes]] = (),
        arrival: dict[str, Any] | None = None,
    ) -> None:
        cases.append(
            _record_case(
                name,
                doc,
                root,
                key,
                value,
                reason,
                certificates=certs,
                context=context,
                arrival=arrival,
                note=note,
            )
        )

    # -- valid records, one of every kind ------------------------------------------------------------
    r = _res("r-1", "bob", party=3, note="window seat")
    valid("reservation", DAY_DOC, "reservations", r.id, _signed(DAY_DOC, r.id, r, bob), [bob])
    ev = _event("e-1", res_a.id, "cancel", "alice", 1000)
    valid(
        "event_cancel_by_its_customer",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, alice),
        [alice],
        context=with_res_a,
    )
    for kind in ("confirm", "decline", "no_show"):
        ev = _event(
            f"e-{kind}", res_a.id, kind, "sam", 1000, reason="staff note" if kind == "decline" else None
        )
        valid(
            f"event_{kind}_by_staff",
            DAY_DOC,
            "events",
            ev.id,
            _signed(DAY_DOC, ev.id, ev, sam),
            [alice, sam],
            context=with_res_a,
        )
    ev = _event("e-owner", res_a.id, "confirm", "olga", 1000)
    valid(
        "event_confirm_by_owner",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, olga),
        [alice, olga],
        context=with_res_a,
    )
    st = Stamp(no=1, reservation=res_a.id, at=NOW_MS)
    valid(
        "stamp_by_the_relay",
        DAY_DOC,
        "stamps",
        stamp_key(1),
        _signed(DAY_DOC, stamp_key(1), st, w.relay),
        [alice],
        context=with_res_a,
    )
    cat = Category(id="c-hair", name="Hair", icon="scissors", hlc=hlc(node="ada"))
    valid(
        "category_by_admin",
        CATALOG_DOC,
        "categories",
        "k-cat",
        _signed(CATALOG_DOC, "k-cat", cat, ada),
        [ada],
    )
    summ = ShopSummary(
        id=SHOP,
        name="Cut & Go",
        category="c-hair",
        location="Main St 1",
        lat=48.5,
        lon=-9.25,
        rating=4.5,
        active=True,
        hlc=hlc(node="olga"),
    )
    valid(
        "shop_summary_by_its_owner",
        CATALOG_DOC,
        "shops",
        "k-shop",
        _signed(CATALOG_DOC, "k-shop", summ, olga),
        [olga],
    )
    prof = ShopProfile(
        name="Cut & Go",
        description="",
        address="Main St 1",
        lat=0,
        lon=0,
        image_url="https://example.com/a.png",
        hours="9-17",
        hlc=hlc(node="sam"),
    )
    valid(
        "shop_profile_by_staff", SHOP_DOC, "profile", "k-prof", _signed(SHOP_DOC, "k-prof", prof, sam), [sam]
    )
    slot = SlotTemplate(
        id="s-9",
        service="Cut",
        start="09:00",
        duration=30,
        capacity=4,
        weekdays=(0, 4),
        active=True,
        hlc=hlc(node="sam"),
    )
    valid("slot_by_staff", SHOP_DOC, "slots", "k-slot", _signed(SHOP_DOC, "k-slot", slot, sam), [sam])
    staff = StaffEntry(user="sam", role="staff", active=True, hlc=hlc(node="olga"))
    valid(
        "staff_entry_by_owner",
        SHOP_DOC,
        "staff",
        "k-staff",
        _signed(SHOP_DOC, "k-staff", staff, olga),
        [olga],
    )
    up = UserProfile(
        display_name="Alice", email="alice@example.com", phone=None, locale="en", hlc=hlc(node="alice")
    )
    valid(
        "user_profile_by_its_user",
        "user:alice",
        "profile",
        "k-up",
        _signed("user:alice", "k-up", up, alice),
        [alice],
    )
    valid(
        "category_by_admin_without_optional_icon",
        CATALOG_DOC,
        "categories",
        "k-cat2",
        _signed_fields(
            CATALOG_DOC, "k-cat2", "category", {"id": "c-nails", "name": "Nails", "hlc": hlc(node="ada")}, ada
        ),
        [ada],
    )
    newer = {**_res("r-new", "bob").to_fields(), "loyalty": "gold"}
    valid(
        "newer_schema_version_with_an_unknown_field",
        DAY_DOC,
        "reservations",
        "r-new",
        _signed_fields(DAY_DOC, "r-new", "reservation", newer, bob, SCHEMA_VERSION + 1),
        [bob],
        note="kept, the unknown field inert",
    )
    ev_new = {**_event("e-new", res_a.id, "confirm", "sam").to_fields(), "type": "reschedule"}
    valid(
        "newer_schema_version_with_an_unknown_event_type_by_staff",
        DAY_DOC,
        "events",
        "e-new",
        _signed_fields(DAY_DOC, "e-new", "event", ev_new, sam, SCHEMA_VERSION + 1),
        [alice, sam],
        context=with_res_a,
        note="an event type unknown here is inert; only staff may write one",
    )
    cases.append(
        _record_case(
            "certificate",
            DAY_DOC,
            "certs",
            bob.cert_id,
            bob.key.certificate,
            {"certificate": {"user": "bob", "cert_id": bob.cert_id}},
            note="a certificate is self-authenticating",
        )
    )

    # -- schema ---------------------------------------------------------------------------------------
    base = _res("r-x", "bob").to_fields()

    def bad_res(
        name: str, fields: dict[str, Any], note: str = "", key: str = "r-x", version: int = SCHEMA_VERSION
    ) -> None:
        refused(
            name,
            DAY_DOC,
            "reservations",
            key,
            _signed_fields(DAY_DOC, key, "reservation", fields, bob, version),
            "schema",
            [bob],
            note,
        )

    bad_res("party_zero", {**base, "party": 0}, "party is 1..100")
    bad_res("party_101", {**base, "party": 101})
    bad_res("party_as_text", {**base, "party": "2"})
    bad_res(
        "party_as_float",
        {**base, "party": 2.0},
        "an integer field never accepts a float, even an integral one",
    )
    bad_res("party_as_bool", {**base, "party": True})
    bad_res("missing_required_field", {k: v for k, v in base.items() if k != "slot"})
    bad_res("unknown_field_in_the_current_version", {**base, "loyalty": "gold"})
    bad_res("id_with_a_space", {**base, "id": "r x"}, key="r x")
    bad_res("id_of_65_characters", {**base, "id": "r" * 65}, key="r" * 65)
    bad_res("hlc_malformed", {**base, "hlc": "1800000000000-0-bob"})
    bad_res("key_differs_from_id", {**base, "id": "r-y"})
    bad_res("note_of_501_characters", {**base, "note": "n" * 501})
    bad_res(
        "nil_for_an_optional_field", {**base, "note": None}, "an absent optional field is left out, never nil"
    )
    refused(
        "record_kind_not_the_maps",
        DAY_DOC,
        "reservations",
        "e-x",
        _signed_fields(
            DAY_DOC, "e-x", "event", _event("e-x", res_a.id, "cancel", "alice").to_fields(), alice
        ),
        "schema",
        [alice],
        context=with_res_a,
    )
    ev_bad = {**_event("e-bad", res_a.id, "confirm", "sam").to_fields(), "type": "reschedule"}
    refused(
        "unknown_event_type_in_the_current_version",
        DAY_DOC,
        "events",
        "e-bad",
        _signed_fields(DAY_DOC, "e-bad", "event", ev_bad, sam),
        "schema",
        [alice, sam],
        context=with_res_a,
    )
    slot_f = slot.to_fields()
    for name, change in (
        ("slot_active_as_int", {"active": 1}),
        ("slot_start_24_00", {"start": "24:00"}),
        ("slot_weekday_7", {"weekdays": [7]}),
        ("slot_capacity_negative", {"capacity": -1}),
        ("slot_duration_zero", {"duration": 0}),
    ):
        refused(
            name,
            SHOP_DOC,
            "slots",
            "k-s",
            _signed_fields(SHOP_DOC, "k-s", "slot", {**slot_f, **change}, sam),
            "schema",
            [sam],
        )
    refused(
        "shop_profile_image_url_not_http",
        SHOP_DOC,
        "profile",
        "k-p",
        _signed_fields(SHOP_DOC, "k-p", "shop_profile", {**prof.to_fields(), "image_url": "ftp://x"}, sam),
        "schema",
        [sam],
    )
    refused(
        "shop_summary_lat_out_of_range",
        CATALOG_DOC,
        "shops",
        "k-s",
        _signed_fields(CATALOG_DOC, "k-s", "shop_summary", {**summ.to_fields(), "lat": 90.5}, olga),
        "schema",
        [olga],
    )
    refused(
        "staff_role_unknown",
        SHOP_DOC,
        "staff",
        "k-st",
        _signed_fields(SHOP_DOC, "k-st", "staff", {**staff.to_fields(), "role": "boss"}, olga),
        "schema",
        [olga],
    )
    st2 = Stamp(no=2, reservation=res_a.id, at=NOW_MS)
    refused(
        "stamp_under_a_key_not_its_number",
        DAY_DOC,
        "stamps",
        "2",
        _signed(DAY_DOC, "2", st2, w.relay),
        "schema",
        [alice],
        context=with_res_a,
        note="stamp n lives under n zero-padded to 16 digits",
    )
    refused("not_msgpack", DAY_DOC, "reservations", "r-x", b"\xc1", "schema", [bob])
    env_wrong = msgpack.packb(
        [RECORD_FORMAT + 7, SCHEMA_VERSION, "reservation", msgpack.packb(base), bob.cert_id, b"\x00" * 64],
        use_bin_type=True,
    )
    refused("unknown_envelope_format", DAY_DOC, "reservations", "r-x", env_wrong, "schema", [bob])
    short = msgpack.packb(
        [RECORD_FORMAT, SCHEMA_VERSION, "reservation", msgpack.packb(base), bob.cert_id], use_bin_type=True
    )
    refused("envelope_of_five_entries", DAY_DOC, "reservations", "r-x", short, "schema", [bob])
    refused(
        "schema_version_zero",
        DAY_DOC,
        "reservations",
        "r-x",
        _envelope(0, "reservation", msgpack.packb(base), bob.cert_id, b"\x00" * 64),
        "schema",
        [bob],
    )
    refused(
        "fields_not_a_map",
        DAY_DOC,
        "reservations",
        "r-x",
        _envelope(SCHEMA_VERSION, "reservation", msgpack.packb([1, 2]), bob.cert_id, b"\x00" * 64),
        "schema",
        [bob],
    )
    refused(
        "signature_of_63_bytes",
        DAY_DOC,
        "reservations",
        "r-x",
        _envelope(SCHEMA_VERSION, "reservation", msgpack.packb(base), bob.cert_id, b"\x00" * 63),
        "schema",
        [bob],
    )

    # -- signatures and certificates ---------------------------------------------------------------------
    good = _signed(DAY_DOC, "r-x", _res("r-x", "bob"), bob)
    refused(
        "tampered_field",
        DAY_DOC,
        "reservations",
        "r-x",
        _reswap(good, fields={**base, "party": 5}),
        "bad_signature",
        [bob],
    )
    refused(
        "replayed_under_another_key",
        CATALOG_DOC,
        "categories",
        "k-2",
        _signed(CATALOG_DOC, "k-1", cat, ada),
        "bad_signature",
        [ada],
        note="the key is part of what is signed",
    )
    refused(
        "replayed_into_another_document",
        f"bookings:{SHOP}:2027-01-16",
        "reservations",
        "r-x",
        good,
        "bad_signature",
        [bob],
        note="the doc id is part of what is signed",
    )
    refused(
        "signer_swapped_to_another_certificate",
        DAY_DOC,
        "reservations",
        "r-x",
        _reswap(good, signer=alice.cert_id),
        "bad_signature",
        [alice, bob],
    )
    refused(
        "stamp_signed_by_another_key_under_the_relays_kid",
        DAY_DOC,
        "stamps",
        stamp_key(1),
        _signed(DAY_DOC, stamp_key(1), st, w.imposter),
        "bad_signature",
        [alice],
        context=with_res_a,
    )
    refused(
        "stamp_signed_by_an_unknown_relay_key",
        DAY_DOC,
        "stamps",
        stamp_key(1),
        _signed(DAY_DOC, stamp_key(1), st, w.unknown),
        "bad_signature",
        [alice],
        context=with_res_a,
    )
    refused(
        "certificate_not_in_the_document",
        DAY_DOC,
        "reservations",
        "r-x",
        good,
        "unknown_certificate",
        [],
        note="the author adds its certificate in its first write to a document",
    )
    old = w["alice_old"]
    stale = _res("r-old", "alice", at=-1 * DAY_MS)
    refused(
        "hlc_after_the_certificate_expired",
        DAY_DOC,
        "reservations",
        stale.id,
        _signed(DAY_DOC, stale.id, stale, old),
        "certificate_expired",
        [old],
    )
    early = _res("r-early", "bob", at=-2 * HOUR_MS)
    refused(
        "hlc_before_the_certificate_was_issued",
        DAY_DOC,
        "reservations",
        early.id,
        _signed(DAY_DOC, early.id, early, bob),
        "certificate_expired",
        [bob],
    )
    at_exp = _res("r-exp", "bob", at=DAY_MS)
    refused(
        "hlc_exactly_at_exp",
        DAY_DOC,
        "reservations",
        at_exp.id,
        _signed(DAY_DOC, at_exp.id, at_exp, bob),
        "certificate_expired",
        [bob],
        note="validity is iat <= hlc < exp",
    )
    at_iat = _res("r-iat", "bob", at=-HOUR_MS)
    valid(
        "hlc_exactly_at_iat",
        DAY_DOC,
        "reservations",
        at_iat.id,
        _signed(DAY_DOC, at_iat.id, at_iat, bob),
        [bob],
    )
    refused(
        "stamp_signed_by_a_device",
        DAY_DOC,
        "stamps",
        stamp_key(1),
        _signed(DAY_DOC, stamp_key(1), st, alice),
        "relay_only",
        [alice],
        context=with_res_a,
    )
    refused(
        "reservation_signed_by_the_relay",
        DAY_DOC,
        "reservations",
        "r-x",
        _signed(DAY_DOC, "r-x", _res("r-x", "bob"), w.relay),
        "relay_only",
        [],
    )
    refused(
        "stamp_for_an_unknown_reservation",
        DAY_DOC,
        "stamps",
        stamp_key(1),
        _signed(DAY_DOC, stamp_key(1), Stamp(no=1, reservation="r-none", at=NOW_MS), w.relay),
        "unknown_reservation",
        [],
    )
    for dev, why in (
        ("alice_forged", "signed by another key under the relay's kid"),
        ("alice_unknown_kid", "signed by an untrusted relay key"),
    ):
        d = w[dev]
        refused(
            f"certificate_{dev}",
            DAY_DOC,
            "certs",
            d.cert_id,
            d.key.certificate,
            "bad_certificate",
            [],
            note=why,
        )
    refused(
        "certificate_under_another_id",
        DAY_DOC,
        "certs",
        bob.cert_id,
        alice.key.certificate,
        "bad_certificate",
        [],
    )
    refused(
        "certificate_garbage",
        DAY_DOC,
        "certs",
        cert_id_of(b"\x93\x01\x02\x03"),
        b"\x93\x01\x02\x03",
        "bad_certificate",
        [],
    )

    # -- writer rights -------------------------------------------------------------------------------
    def forbidden(
        name: str,
        doc: str,
        root: str,
        key: str,
        value: bytes,
        certs: Sequence[Device],
        context: Sequence[tuple[str, str, bytes]] = (),
        reason: str = "forbidden",
    ) -> None:
        refused(name, doc, root, key, value, reason, certs, context=context)

    forbidden(
        "reservation_in_another_customers_name",
        DAY_DOC,
        "reservations",
        "r-x",
        _signed(DAY_DOC, "r-x", _res("r-x", "alice"), bob),
        [bob],
    )
    ev = _event("e-x", res_a.id, "cancel", "bob")
    forbidden(
        "cancel_of_another_customers_reservation",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, bob),
        [alice, bob],
        with_res_a,
    )
    ev = _event("e-x", res_a.id, "cancel", "sam")
    forbidden(
        "cancel_by_staff",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, sam),
        [alice, sam],
        with_res_a,
    )
    ev = _event("e-x", res_a.id, "cancel", "alice")
    forbidden(
        "event_naming_another_author",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, bob),
        [alice, bob],
        with_res_a,
    )
    ev = _event("e-x", "r-none", "cancel", "alice")
    forbidden(
        "event_for_an_unknown_reservation",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, alice),
        [alice],
        reason="unknown_reservation",
    )
    ev = _event("e-x", res_a.id, "confirm", "alice")
    forbidden(
        "confirm_by_the_customer",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, alice),
        [alice],
        with_res_a,
    )
    ev = _event("e-x", res_a.id, "decline", "stan")
    forbidden(
        "decline_by_staff_of_another_shop",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, stan),
        [alice, stan],
        with_res_a,
    )
    forbidden(
        "shop_profile_by_a_customer",
        SHOP_DOC,
        "profile",
        "k-p",
        _signed(SHOP_DOC, "k-p", prof, alice),
        [alice],
    )
    forbidden(
        "slot_by_staff_of_another_shop",
        SHOP_DOC,
        "slots",
        "k-s",
        _signed(SHOP_DOC, "k-s", slot, stan),
        [stan],
    )
    forbidden("staff_entry_by_staff", SHOP_DOC, "staff", "k-st", _signed(SHOP_DOC, "k-st", staff, sam), [sam])
    forbidden(
        "category_by_a_shop_owner",
        CATALOG_DOC,
        "categories",
        "k-c",
        _signed(CATALOG_DOC, "k-c", cat, olga),
        [olga],
    )
    other = ShopSummary(
        id="s2",
        name="Other",
        category="c-hair",
        location="x",
        lat=0,
        lon=0,
        rating=None,
        active=True,
        hlc=hlc(node="olga"),
    )
    forbidden(
        "shop_summary_of_another_shop_by_an_owner",
        CATALOG_DOC,
        "shops",
        "k-s",
        _signed(CATALOG_DOC, "k-s", other, olga),
        [olga],
    )
    forbidden(
        "user_profile_of_another_user",
        "user:alice",
        "profile",
        "k-up",
        _signed("user:alice", "k-up", up, bob),
        [bob],
    )
    forbidden(
        "user_profile_by_an_admin",
        "user:alice",
        "profile",
        "k-up",
        _signed("user:alice", "k-up", up, ada),
        [ada],
    )

    # -- arrival rules (the relay's, with its clock) --------------------------------------------------
    arrive = {"now_ms": NOW_MS}
    future = _res("r-fut", "bob", at=60_001)
    refused(
        "arrival_hlc_more_than_60s_ahead",
        DAY_DOC,
        "reservations",
        future.id,
        _signed(DAY_DOC, future.id, future, bob),
        "clock_skew",
        [bob],
        arrival=arrive,
    )
    near = _res("r-near", "bob", at=60_000)
    cases.append(
        _record_case(
            "arrival_hlc_exactly_60s_ahead",
            DAY_DOC,
            "reservations",
            near.id,
            _signed(DAY_DOC, near.id, near, bob),
            _parsed(_signed(DAY_DOC, near.id, near, bob)),
            certificates=[bob],
            arrival=arrive,
        )
    )
    long_dev = w["alice_long"]
    back = _res("r-back", "alice", at=-31 * DAY_MS)
    refused(
        "arrival_backdated_beyond_30_days",
        DAY_DOC,
        "reservations",
        back.id,
        _signed(DAY_DOC, back.id, back, long_dev),
        "backdated",
        [long_dev],
        arrival=arrive,
    )
    recent = _res("r-recent", "alice", at=-29 * DAY_MS)
    cases.append(
        _record_case(
            "arrival_29_days_old_within_a_long_certificate",
            DAY_DOC,
            "reservations",
            recent.id,
            _signed(DAY_DOC, recent.id, recent, long_dev),
            _parsed(_signed(DAY_DOC, recent.id, recent, long_dev)),
            certificates=[long_dev],
            arrival=arrive,
        )
    )
    refused(
        "arrival_revoked_certificate",
        DAY_DOC,
        "reservations",
        "r-x",
        good,
        "revoked",
        [bob],
        arrival={**arrive, "revoked": [bob.cert_id]},
    )
    ev = _event("e-x", res_a.id, "confirm", "sam")
    refused(
        "arrival_staff_right_removed_since_the_certificate",
        DAY_DOC,
        "events",
        ev.id,
        _signed(DAY_DOC, ev.id, ev, sam),
        "forbidden",
        [alice, sam],
        context=with_res_a,
        arrival={**arrive, "current_rights": {"sam": {"admin": False, "owner_of": [], "staff_of": []}}},
    )

    # -- format 2: one byte string per record, the whole envelope signed -------------------------------
    fields_ok = _res("r-c", "bob").to_fields()
    canon = canonical_pack(fields_ok)
    summ_f = canonical_pack(summ.to_fields())

    def noncanonical(
        name: str,
        fields_raw: bytes,
        note: str = "",
        kind: str = "reservation",
        doc: str = DAY_DOC,
        root: str = "reservations",
        key: str = "r-c",
        by: Device = bob,
    ) -> None:
        assert fields_raw not in (canon, summ_f), name  # the replacement below found its bytes
        refused(name, doc, root, key, _sign_raw(doc, key, kind, fields_raw, by), "schema", [by], note=note)

    plain = msgpack.packb(fields_ok, use_bin_type=True)  # keys in field order, not sorted
    noncanonical("fields_keys_not_sorted", plain, "map keys must be sorted by their UTF-8 bytes")
    noncanonical(
        "fields_int_in_a_wider_form",
        canon.replace(b"\xa5party\x01", b"\xa5party\xcd\x00\x01"),
        "party 1 as uint16",
    )
    noncanonical(
        "fields_short_str_as_str8", canon.replace(b"\xa3bob", b"\xd9\x03bob"), "a 3-byte str as str8"
    )
    assert canon[0] == 0x85  # a fixmap of 5: one more entry repeats a key
    noncanonical("fields_duplicate_key", b"\x86" + canon[1:] + b"\xa4slot\xa3s-9", "a map key twice")
    lat32 = summ_f.replace(b"\xa3lat\xcb" + struct.pack(">d", 48.5), b"\xa3lat\xca" + struct.pack(">f", 48.5))
    noncanonical(
        "fields_float32",
        lat32,
        "floats are float64",
        kind="shop_summary",
        doc=CATALOG_DOC,
        root="shops",
        key="k-s",
        by=olga,
    )
    env_ok = _sign_raw(DAY_DOC, "r-c", "reservation", canon, bob)
    refused(
        "envelope_array16_header",
        DAY_DOC,
        "reservations",
        "r-c",
        b"\xdc\x00\x06" + env_ok[1:],
        "schema",
        [bob],
        note="the envelope is a fixarray",
    )
    refused(
        "format_1_record",
        DAY_DOC,
        "reservations",
        "r-c",
        _format1(DAY_DOC, "r-c", "reservation", canon, bob),
        "schema",
        [bob],
        note="records format 1 is no longer accepted",
    )
    refused(
        "schema_version_changed_under_the_signature",
        DAY_DOC,
        "reservations",
        "r-c",
        _envelope(SCHEMA_VERSION + 1, "reservation", canon, bob.cert_id, open_record(env_ok).signature),
        "bad_signature",
        [bob],
        note="format 2 signs the schema version",
    )
    refused(
        "certificate_not_canonical",
        DAY_DOC,
        "certs",
        *_noncanonical_cert(bob),
        "bad_certificate",
        [],
        note="the kid as str8: the relay's signature still verifies, the encoding is not canonical",
    )
    refused(
        "certificate_body_not_canonical",
        DAY_DOC,
        "certs",
        *_unsorted_body_cert(w, bob),
        "bad_certificate",
        [],
        note="body keys not sorted, signed by the relay",
    )
    old_dev = w["alice_old"]
    within = _res("r-within", "alice", at=-5 * DAY_MS)
    cases.append(
        _record_case(
            "arrival_expired_certificate_within_one_lifetime",
            DAY_DOC,
            "reservations",
            within.id,
            _signed(DAY_DOC, within.id, within, old_dev),
            _parsed(_signed(DAY_DOC, within.id, within, old_dev)),
            certificates=[old_dev],
            arrival={"now_ms": NOW_MS},
            note="written 5 days ago while valid; the certificate lived 7 days and expired 3 days ago",
        )
    )
    beyond = _res("r-beyond", "alice", at=-9 * DAY_MS)
    refused(
        "arrival_expired_certificate_beyond_one_lifetime",
        DAY_DOC,
        "reservations",
        beyond.id,
        _signed(DAY_DOC, beyond.id, beyond, old_dev),
        "backdated",
        [old_dev],
        arrival={"now_ms": NOW_MS},
        note="9 days old: beyond min(30 days, the 7-day lifetime)",
    )
    valid(
        "expired_certificate_without_arrival_rules",
        DAY_DOC,
        "reservations",
        beyond.id,
        _signed(DAY_DOC, beyond.id, beyond, old_dev),
        [old_dev],
        note="what a replica holds stays valid: only arrival rules look at the clock",
    )

    return cases


def _rule_cases(w: World) -> list[dict[str, Any]]:
    """Control characters in text, a booking's day against its HLC, the slot's ``per_customer``
    (schema version 2), a shop's category at arrival, and staff rights from the shop's staff list."""
    alice, bob, sam, olga, ada = w["alice"], w["bob"], w["sam"], w["olga"], w["ada"]
    cases: list[dict[str, Any]] = []

    def case(
        name: str,
        doc: str,
        root: str,
        key: str,
        value: bytes,
        certs: Sequence[Device],
        reason: str = "",
        **kw: Any,
    ) -> None:
        expect: str | dict[str, Any] = reason or _parsed(value)
        cases.append(_record_case(name, doc, root, key, value, expect, certificates=certs, **kw))

    # -- control characters: one-line text refuses C0, DEL and C1; a description may hold line feeds
    prof = ShopProfile("Cut & Go", "", "Main St 1", 0, 0, None, "9-17", hlc(node="sam"))
    for label, field_name, text in (
        ("escape_in_a_shop_name", "name", "Cut \x1b[31mGo"),
        ("bell_in_a_shop_name", "name", "Cut\x07"),
        ("newline_in_an_address", "address", "Main St 1\nFake line"),
        ("c1_csi_in_the_hours", "hours", "9-17\x9b2J"),
        ("delete_in_a_shop_name", "name", "Cut\x7f"),
        ("carriage_return_in_a_description", "description", "line one\rline two"),
    ):
        fields = {**prof.to_fields(), field_name: text}
        raw = _signed_fields(SHOP_DOC, "k-p", "shop_profile", fields, sam)
        case(f"control_{label}", SHOP_DOC, "profile", "k-p", raw, [sam], "schema")
    fields = {**prof.to_fields(), "description": "Cuts.\nNo appointment needed."}
    raw = _signed_fields(SHOP_DOC, "k-p", "shop_profile", fields, sam)
    case("line_feed_in_a_description", SHOP_DOC, "profile", "k-p", raw, [sam], note="a multi-line field")
    res = _res("r-ctl", "bob", note="ring twice\x07")
    case(
        "control_bell_in_a_note",
        DAY_DOC,
        "reservations",
        res.id,
        _signed(DAY_DOC, res.id, res, bob),
        [bob],
        "schema",
    )
    res_a = _res("r-alice", "alice", party=2)
    with_res_a = [("reservations", res_a.id, _signed(DAY_DOC, res_a.id, res_a, alice))]
    ev = _event("e-ctl", res_a.id, "decline", "sam", 1000, reason="full\x1b]0;owned\x07")
    raw = _signed(DAY_DOC, ev.id, ev, sam)
    case("control_osc_in_a_reason", DAY_DOC, "events", ev.id, raw, [alice, sam], "schema", context=with_res_a)
    cat = {"id": "c-x", "name": "Hair\u0085", "hlc": hlc(node="ada")}
    raw = _signed_fields(CATALOG_DOC, "k-c", "category", cat, ada)
    case("control_c1_next_line_in_a_category_name", CATALOG_DOC, "categories", "k-c", raw, [ada], "schema")

    # -- a booking's day: from its HLC's UTC date minus 1 day to plus 366 days
    for label, day, reason in (
        ("day_before_the_hlc_date", "2027-01-14", ""),
        ("two_days_before_the_hlc_date", "2027-01-13", "day_out_of_range"),
        ("far_past_day", "2020-01-01", "day_out_of_range"),
        ("day_366_days_ahead", "2028-01-16", ""),
        ("day_367_days_ahead", "2028-01-17", "day_out_of_range"),
        ("far_future_day", "9999-12-31", "day_out_of_range"),
    ):
        doc = f"bookings:{SHOP}:{day}"
        res = _res("r-d", "bob")
        case(
            f"reservation_{label}", doc, "reservations", res.id, _signed(doc, res.id, res, bob), [bob], reason
        )

    # -- per_customer: a slot field of schema version 2
    slot = SlotTemplate("s-9", "Class", "18:00", 60, 12, None, True, hlc(node="sam"), per_customer=3)
    raw = _signed(SHOP_DOC, "k-s", slot, sam, 2)
    case("slot_per_customer_in_schema_version_2", SHOP_DOC, "slots", "k-s", raw, [sam])
    raw = _signed(SHOP_DOC, "k-s", slot, sam, 1)
    case(
        "slot_per_customer_in_schema_version_1",
        SHOP_DOC,
        "slots",
        "k-s",
        raw,
        [sam],
        "schema",
        note="a field version 1 does not have",
    )
    raw = _signed_fields(SHOP_DOC, "k-s", "slot", {**slot.to_fields(), "per_customer": 0}, sam, 2)
    case("slot_per_customer_zero", SHOP_DOC, "slots", "k-s", raw, [sam], "schema")

    # -- a shop's category must exist (arrival)
    summ = ShopSummary(SHOP, "Cut & Go", "c-none", "Main St 1", 1, 2, None, True, hlc(node="olga"))
    raw = _signed(CATALOG_DOC, "k-sh", summ, olga)
    arrival = {"now_ms": NOW_MS}
    case(
        "arrival_shop_in_a_category_that_does_not_exist",
        CATALOG_DOC,
        "shops",
        "k-sh",
        raw,
        [olga],
        "unknown_category",
        arrival=arrival,
    )
    case(
        "shop_in_an_unknown_category_without_arrival_rules",
        CATALOG_DOC,
        "shops",
        "k-sh",
        raw,
        [olga],
        note="a replica judging what the relay forwards does not look the category up",
    )
    known = Category(id="c-none", name="Other", icon=None, hlc=hlc(node="ada"))
    held = [("categories", "k-c1", _signed(CATALOG_DOC, "k-c1", known, ada))]
    case(
        "arrival_shop_in_a_category_the_catalogue_defines",
        CATALOG_DOC,
        "shops",
        "k-sh",
        raw,
        [olga, ada],
        context=held,
        arrival=arrival,
    )

    # -- staff rights from the shop's staff list (entries signed by the owner)
    NO_RIGHTS = {"admin": False, "owner_of": [], "staff_of": []}  # noqa: N806

    def entry(key: str, user: str, active: bool, at: int = 0) -> tuple[str, str, bytes]:
        rec = StaffEntry(user=user, role="staff", active=active, hlc=hlc(at, node="olga"))
        return ("staff", key, _signed(SHOP_DOC, key, rec, olga))

    ev = _event("e-bob", res_a.id, "confirm", "bob", 1000)
    raw = _signed(DAY_DOC, ev.id, ev, bob)
    listed = [("certs", olga.cert_id, olga.key.certificate), entry("k-st1", "bob", True)]
    case(
        "confirm_by_a_user_the_staff_list_names",
        DAY_DOC,
        "events",
        ev.id,
        raw,
        [alice, bob],
        context=with_res_a,
        shop=listed,
        note="bob's certificate names no shop",
    )
    case(
        "confirm_by_a_user_the_staff_list_names_at_arrival",
        DAY_DOC,
        "events",
        ev.id,
        raw,
        [alice, bob],
        context=with_res_a,
        shop=listed,
        arrival={"now_ms": NOW_MS, "current_rights": {"bob": NO_RIGHTS}},
        note="the relay gives bob no shop either: the owner's word in the shop document counts",
    )
    removed = [*listed, entry("k-st2", "bob", False, 500)]
    case(
        "confirm_by_a_user_the_staff_list_removed",
        DAY_DOC,
        "events",
        ev.id,
        raw,
        [alice, bob],
        "forbidden",
        context=with_res_a,
        shop=removed,
        note="the newest entry for bob (hlc, key) is inactive",
    )
    case(
        "confirm_by_a_user_the_staff_list_names_without_a_relay_account",
        DAY_DOC,
        "events",
        ev.id,
        raw,
        [alice, bob],
        "forbidden",
        context=with_res_a,
        shop=listed,
        arrival={"now_ms": NOW_MS, "current_rights": {}},
    )
    slot_b = SlotTemplate("s-b", "Cut", "10:00", 30, 2, None, True, hlc(1000, node="bob"))
    raw = _signed(SHOP_DOC, "k-sb", slot_b, bob)
    case(
        "slot_by_a_user_the_staff_list_names",
        SHOP_DOC,
        "slots",
        "k-sb",
        raw,
        [olga, bob],
        context=[entry("k-st1", "bob", True)],
    )
    entry_b = StaffEntry(user="alice", role="staff", active=True, hlc=hlc(1000, node="bob"))
    raw = _signed(SHOP_DOC, "k-st9", entry_b, bob)
    case(
        "staff_entry_by_a_user_the_staff_list_names",
        SHOP_DOC,
        "staff",
        "k-st9",
        raw,
        [olga, bob],
        "forbidden",
        context=[entry("k-st1", "bob", True)],
        note="the staff list grants staff rights, never ownership",
    )

    # -- booked days: the user's own list of (shop, day), schema version 2
    day_rec = BookedDay(shop=SHOP, day=DAY, hlc=hlc(node="alice"))
    raw = _signed("user:alice", "k-d1", day_rec, alice)
    case("booked_day_by_its_user", "user:alice", "days", "k-d1", raw, [alice])
    raw = _signed("user:alice", "k-d1", day_rec, bob)
    case("booked_day_in_another_users_document", "user:alice", "days", "k-d1", raw, [bob], "forbidden")
    raw = _signed("user:alice", "k-d1", day_rec, alice, 1)
    case(
        "booked_day_in_schema_version_1", "user:alice", "days", "k-d1", raw, [alice], "schema",
        note="the record kind exists from schema version 2",
    )  # fmt: skip
    fields = {"shop": SHOP, "day": "2027-02-30", "hlc": hlc(node="alice")}
    raw = _signed_fields("user:alice", "k-d1", "booked_day", fields, alice, 2)
    case("booked_day_on_no_such_day", "user:alice", "days", "k-d1", raw, [alice], "schema")
    return cases


# --- Yjs updates ---------------------------------------------------------------------------------------


def _varbytes(raw: bytes) -> bytes:
    return encode_varuint(len(raw)) + raw


def _varstr(text: str) -> bytes:
    return _varbytes(text.encode("utf-8"))


# Content refs (low five bits of a struct's info byte) and the bits above them.
_REF_DELETED, _REF_JSON, _REF_BINARY, _REF_STRING, _REF_TYPE, _REF_ANY = 1, 2, 3, 4, 7, 8
_HAS_KEY, _HAS_RIGHT, _HAS_ORIGIN = 0x20, 0x40, 0x80


def _any_binary(value: bytes) -> bytes:
    """ContentAny holding one value, a byte array (tag 116): what Yjs and Yrs write for bytes."""
    return encode_varuint(1) + bytes([116]) + _varbytes(value)


def _map_item(root: str, key: str, content: bytes, ref: int = _REF_ANY) -> bytes:
    """A struct setting ``root[key]`` with no origin: a fresh insert into a top-level map."""
    return bytes([ref | _HAS_KEY]) + encode_varuint(1) + _varstr(root) + _varstr(key) + content


def _block(client: int, clock: int, structs: Sequence[bytes]) -> bytes:
    return encode_varuint(len(structs)) + encode_varuint(client) + encode_varuint(clock) + b"".join(structs)


def _yjs_update(
    blocks: Sequence[bytes], deletes: Mapping[int, Sequence[tuple[int, int]]] | None = None
) -> bytes:
    out = encode_varuint(len(blocks)) + b"".join(blocks)
    dels = deletes or {}
    out += encode_varuint(len(dels))
    for client, ranges in dels.items():
        out += encode_varuint(client) + encode_varuint(len(ranges))
        for clock, length in ranges:
            out += encode_varuint(clock) + encode_varuint(length)
    return out


def _update_case(
    name: str,
    doc: str,
    state: Sequence[bytes],
    update: bytes,
    expect: str | Sequence[tuple[str, str]],
    *,
    arrival: dict[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    case: dict[str, Any] = {
        "name": name,
        "note": note,
        "doc": doc,
        "state": [_hex(s) for s in state],
        "update": _hex(update),
    }
    if arrival is not None:
        case["arrival"] = arrival
    if isinstance(expect, str):
        case["expect"] = {"valid": False, "reason": expect}
    else:
        case["expect"] = {"valid": True, "records": sorted([root, key] for root, key in expect)}
    return case


def _relay_written(w: World, state: Sequence[bytes], entry: tuple[str, str, bytes]) -> bytes:
    """An update writing ``entry`` under the relay's generation-0 client id."""
    replica = Replica(client_id_for(w.relay_signer, 0))
    for update in state:
        replica.apply_update(update)
    return replica.write([entry])


def _update_cases(w: World) -> list[dict[str, Any]]:
    alice, bob, sam = w["alice"], w["bob"], w["sam"]
    cases: list[dict[str, Any]] = []
    res_a = _res("r-alice", "alice", party=2)
    res_a_raw = _signed(DAY_DOC, res_a.id, res_a, alice)
    alice_phone = Replica(alice.client_id())
    state0 = alice_phone.write(
        [("certs", alice.cert_id, alice.key.certificate), ("reservations", res_a.id, res_a_raw)]
    )
    a_cert = ("certs", alice.cert_id)
    a_res = ("reservations", res_a.id)

    def phone(dev: Device, *state: bytes, generation: int = 0) -> Replica:
        replica = Replica(dev.client_id(generation))
        for s in state:
            replica.apply_update(s)
        return replica

    res_b = _res("r-bob", "bob")
    res_b_raw = _signed(DAY_DOC, res_b.id, res_b, bob)
    b_cert_entry = ("certs", bob.cert_id, bob.key.certificate)
    bob_phone = phone(bob, state0)
    first = bob_phone.write([b_cert_entry, ("reservations", res_b.id, res_b_raw)])
    res_b2 = _res("r-bob-2", "bob", at=1)
    second = bob_phone.write([("reservations", res_b2.id, _signed(DAY_DOC, res_b2.id, res_b2, bob))])

    # -- accepted ---------------------------------------------------------------------------------------
    cases.append(
        _update_case(
            "first_write_into_an_empty_document",
            DAY_DOC,
            [],
            state0,
            [a_cert, a_res],
            note="the author's certificate travels in its first update",
        )
    )
    cases.append(
        _update_case(
            "first_write_of_a_second_author_carries_its_certificate",
            DAY_DOC,
            [state0],
            first,
            [("certs", bob.cert_id), ("reservations", res_b.id)],
        )
    )
    cases.append(
        _update_case(
            "later_write_without_the_certificate",
            DAY_DOC,
            [state0, first],
            second,
            [("reservations", res_b2.id)],
            note="the document already holds the certificate, so the write does not repeat it",
        )
    )
    cases.append(
        _update_case(
            "resend_of_what_the_document_holds",
            DAY_DOC,
            [state0],
            state0,
            [],
            note="a no-op: accepted, nothing new",
        )
    )
    res_a_other = _res("r-alice", "alice", party=1)
    reused_clocks = Replica(alice.client_id()).write(
        [
            ("certs", alice.cert_id, alice.key.certificate),
            ("reservations", res_a.id, _signed(DAY_DOC, res_a.id, res_a_other, alice)),
        ]
    )
    cases.append(
        _update_case(
            "held_struct_id_with_other_content",
            DAY_DOC,
            [state0],
            reused_clocks,
            "rewrite",
            note="the writer reused its clocks (a device restored from an older backup): the same"
            " Yjs ids with another record, which the engine would silently ignore",
        )
    )
    cases.append(
        _update_case(
            "certificate_alone",
            DAY_DOC,
            [state0],
            phone(bob, state0).write([b_cert_entry]),
            [("certs", bob.cert_id)],
        )
    )
    binary = _yjs_update(
        [
            _block(
                bob.client_id(),
                0,
                [
                    _map_item("certs", bob.cert_id, _varbytes(bob.key.certificate), _REF_BINARY),
                    _map_item("reservations", res_b.id, _varbytes(res_b_raw), _REF_BINARY),
                ],
            )
        ]
    )
    cases.append(
        _update_case(
            "record_as_content_binary",
            DAY_DOC,
            [state0],
            binary,
            [("certs", bob.cert_id), ("reservations", res_b.id)],
            note="ContentBinary (ref 3) carries a record as well as ContentAny with one byte array",
        )
    )
    relay_replica = Replica(client_id_for(w.relay_signer, 0))
    relay_replica.apply_update(state0)
    stamp = Stamp(no=1, reservation=res_a.id, at=NOW_MS)
    stamp_update = relay_replica.write(
        [("stamps", stamp_key(1), _signed(DAY_DOC, stamp_key(1), stamp, w.relay))]
    )
    cases.append(_update_case("relay_stamp", DAY_DOC, [state0], stamp_update, [("stamps", stamp_key(1))]))
    ev = _event("e-conf", res_a.id, "confirm", "sam", 5)
    staff_write = phone(sam, state0).write(
        [("certs", sam.cert_id, sam.key.certificate), ("events", ev.id, _signed(DAY_DOC, ev.id, ev, sam))]
    )
    cases.append(
        _update_case(
            "staff_confirm_with_its_certificate",
            DAY_DOC,
            [state0],
            staff_write,
            [("certs", sam.cert_id), ("events", ev.id)],
        )
    )

    # -- malformed --------------------------------------------------------------------------------------
    cases.append(_update_case("garbage", DAY_DOC, [state0], b"\x01\x02\x03", "malformed"))
    cases.append(_update_case("empty_bytes", DAY_DOC, [state0], b"", "malformed"))
    cases.append(_update_case("truncated", DAY_DOC, [state0], first[:-5], "malformed"))
    cases.append(_update_case("trailing_bytes", DAY_DOC, [state0], first + b"\x00", "malformed"))
    b_id = bob.client_id()
    cert_item = _map_item("certs", bob.cert_id, _any_binary(bob.key.certificate))
    res_item = _map_item("reservations", res_b.id, _any_binary(res_b_raw))
    cases.append(
        _update_case(
            "one_client_in_two_overlapping_blocks",
            DAY_DOC,
            [state0],
            _yjs_update([_block(b_id, 0, [cert_item]), _block(b_id, 0, [res_item])]),
            "malformed",
        )
    )
    cases.append(
        _update_case(
            "one_client_in_two_blocks_with_a_gap",
            DAY_DOC,
            [state0],
            _yjs_update([_block(b_id, 0, [cert_item]), _block(b_id, 5, [res_item])]),
            "malformed",
        )
    )
    cases.append(
        _update_case(
            "unknown_content_ref",
            DAY_DOC,
            [state0],
            _yjs_update(
                [
                    _block(
                        b_id,
                        0,
                        [bytes([11 | _HAS_KEY]) + encode_varuint(1) + _varstr("reservations") + _varstr("k")],
                    )
                ]
            ),
            "malformed",
        )
    )

    # -- deletion, rewrite, shape -------------------------------------------------------------------------
    cases.append(
        _update_case(
            "delete_set",
            DAY_DOC,
            [state0],
            _yjs_update([], {alice.client_id(): [(1, 1)]}),
            "deletion",
            note="records are never removed",
        )
    )
    cases.append(
        _update_case(
            "same_key_twice_in_one_update",
            DAY_DOC,
            [state0],
            _yjs_update([_block(b_id, 0, [cert_item, res_item, res_item])]),
            "rewrite",
        )
    )
    fresh_at_existing = _yjs_update(
        [_block(b_id, 0, [cert_item, _map_item("reservations", res_a.id, _any_binary(res_b_raw))])]
    )
    cases.append(
        _update_case("fresh_insert_at_an_existing_key", DAY_DOC, [state0], fresh_at_existing, "rewrite")
    )
    overwrite = phone(alice, state0).write([("reservations", res_a.id, res_a_raw)])
    cases.append(
        _update_case(
            "overwrite_by_an_item_with_an_origin",
            DAY_DOC,
            [state0],
            overwrite,
            "rewrite",
            note="how Yjs encodes setting a key that has a value",
        )
    )
    shapes: list[tuple[str, bytes]] = [
        (
            "any_string_value",
            _map_item("reservations", "r-s", encode_varuint(1) + bytes([119]) + _varstr("free text")),
        ),
        (
            "any_two_values",
            _map_item(
                "reservations",
                "r-s",
                encode_varuint(2) + bytes([116]) + _varbytes(b"a") + bytes([116]) + _varbytes(b"b"),
            ),
        ),
        ("string_content", _map_item("reservations", "r-s", _varstr("text"), _REF_STRING)),
        ("json_content", _map_item("reservations", "r-s", encode_varuint(1) + _varstr('"x"'), _REF_JSON)),
        ("nested_map", _map_item("reservations", "r-s", encode_varuint(1), _REF_TYPE)),
        ("deleted_content", _map_item("reservations", "r-s", encode_varuint(1), _REF_DELETED)),
        (
            "top_level_sequence_item",
            bytes([_REF_ANY]) + encode_varuint(1) + _varstr("reservations") + _any_binary(res_b_raw),
        ),
        (
            "item_inside_a_nested_type",
            bytes([_REF_ANY | _HAS_KEY])
            + encode_varuint(0)
            + encode_varuint(alice.client_id())
            + encode_varuint(0)
            + _varstr("k")
            + _any_binary(res_b_raw),
        ),
        ("garbage_collected_range", bytes([0]) + encode_varuint(1)),
    ]
    for name, item in shapes:
        cases.append(_update_case(name, DAY_DOC, [state0], _yjs_update([_block(b_id, 0, [item])]), "shape"))

    # -- dependencies, documents, maps, certificates --------------------------------------------------------
    cases.append(
        _update_case(
            "continues_a_history_the_document_lacks",
            DAY_DOC,
            [state0],
            second,
            "missing_deps",
            note="the first update of that writer never arrived: re-run the state-vector exchange",
        )
    )
    cases.append(
        _update_case(
            "skip_struct",
            DAY_DOC,
            [state0],
            _yjs_update([_block(b_id, 0, [bytes([10]) + encode_varuint(2), res_item])]),
            "missing_deps",
        )
    )
    cases.append(_update_case("unknown_document_kind", "thing:x", [], state0, "bad_doc"))
    cases.append(
        _update_case("bookings_day_that_does_not_exist", f"bookings:{SHOP}:2027-02-30", [], state0, "bad_doc")
    )
    cases.append(_update_case("map_of_another_document_kind", SHOP_DOC, [], state0, "wrong_map"))
    no_cert = phone(bob, state0).write([("reservations", res_b.id, res_b_raw)])
    cases.append(
        _update_case(
            "record_without_its_certificate",
            DAY_DOC,
            [state0],
            no_cert,
            "unknown_certificate",
            note="a first write must carry the author's certificate",
        )
    )
    one_bad = phone(bob, state0).write(
        [
            b_cert_entry,
            ("reservations", res_b.id, res_b_raw),
            ("reservations", "r-x", _signed(DAY_DOC, "r-x", _res("r-x", "alice"), bob)),
        ]
    )
    cases.append(
        _update_case("one_bad_record_refuses_the_whole_update", DAY_DOC, [state0], one_bad, "forbidden")
    )

    # -- Yjs client ids bound to signers ---------------------------------------------------------------
    under_alice = phone(alice, state0)
    cases.append(
        _update_case(
            "record_under_another_devices_client_id",
            DAY_DOC,
            [state0, first],
            phone(alice, state0, first).write(
                [("reservations", res_b2.id, _signed(DAY_DOC, res_b2.id, res_b2, bob))]
            ),
            "foreign_client",
            note="bob's record written under alice's client id",
        )
    )
    cases.append(
        _update_case(
            "certificate_under_another_signers_client_id",
            DAY_DOC,
            [state0],
            under_alice.write([b_cert_entry]),
            "foreign_client",
            note="a certificate's writer is the certificate itself",
        )
    )
    cases.append(
        _update_case(
            "record_under_a_random_client_id",
            DAY_DOC,
            [state0],
            _yjs_update([_block(424242, 0, [cert_item, res_item])]),
            "foreign_client",
            note="a fresh random id per write is not allowed any more",
        )
    )
    cases.append(
        _update_case(
            "device_record_under_the_relays_client_id",
            DAY_DOC,
            [state0, first],
            _relay_written(
                w, [state0, first], ("reservations", res_b2.id, _signed(DAY_DOC, res_b2.id, res_b2, bob))
            ),
            "foreign_client",
        )
    )
    stamp_by_device = phone(alice, state0).write(
        [("stamps", stamp_key(1), _signed(DAY_DOC, stamp_key(1), stamp, w.relay))]
    )
    cases.append(
        _update_case(
            "relay_stamp_under_a_devices_client_id", DAY_DOC, [state0], stamp_by_device, "foreign_client"
        )
    )
    gen1 = phone(bob, state0, generation=1).write([b_cert_entry, ("reservations", res_b.id, res_b_raw)])
    cases.append(
        _update_case(
            "write_under_generation_1",
            DAY_DOC,
            [state0],
            gen1,
            [("certs", bob.cert_id), ("reservations", res_b.id)],
            note="every generation 0..63 of the signer is its own",
        )
    )
    gen63 = phone(bob, state0, generation=63).write([b_cert_entry, ("reservations", res_b.id, res_b_raw)])
    cases.append(
        _update_case(
            "write_under_generation_63",
            DAY_DOC,
            [state0],
            gen63,
            [("certs", bob.cert_id), ("reservations", res_b.id)],
        )
    )
    relay_gen = Replica(client_id_for(w.relay_signer, 17))
    relay_gen.apply_update(state0)
    cases.append(
        _update_case(
            "relay_stamp_under_another_relay_generation",
            DAY_DOC,
            [state0],
            relay_gen.write([("stamps", stamp_key(1), _signed(DAY_DOC, stamp_key(1), stamp, w.relay))]),
            [("stamps", stamp_key(1))],
            note="each relay process picks its generation at random",
        )
    )
    return cases


# --- wire messages -------------------------------------------------------------------------------------


def _message_case(
    name: str, data: bytes, valid: bool, *, note: str = "", max_size: int | None = None
) -> dict[str, Any]:
    case: dict[str, Any] = {"name": name, "note": note, "hex": _hex(data)}
    if max_size is not None:
        case["max_size"] = max_size
    case["expect"] = judge_message(case) if valid else {"valid": False}
    return case


def _pack(body: Any) -> bytes:
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def _message_cases() -> list[dict[str, Any]]:
    v = wire.PROTOCOL_VERSION
    cases: list[dict[str, Any]] = []
    ok: list[tuple[str, wire.Message]] = [
        ("auth", wire.Auth("eyJhbGciOiJFZERTQSJ9.e30.sig")),
        (
            "auth_with_proof",
            wire.Auth("eyJhbGciOiJFZERTQSJ9.e30.sig", proof=b"\x01" * 64, proof_time=1_800_000_000),
        ),
        ("sub", wire.Subscribe("shop:s1", b"\x01\x01\x02")),
        ("sub_empty_state_vector", wire.Subscribe(DAY_DOC, b"\x00")),
        ("upd_client", wire.ClientUpdate(DAY_DOC, 7, b"\x00\x00")),
        ("unsub", wire.Unsubscribe(DAY_DOC)),
        (
            "welcome",
            wire.Welcome(
                "alice", "ep-1", "quickslot-relay 1.0", {"max_message": 1 << 20, "max_inflight": 64}
            ),
        ),
        ("sync", wire.Sync(DAY_DOC, b"\x00\x00", b"\x00", 40)),
        ("upd_relay", wire.RelayUpdate(DAY_DOC, b"\x00\x00", 41)),
        ("ack", wire.Ack("shop:s1", 7, 42)),
        ("stamp", wire.Stamp(DAY_DOC, 43, b"\x00\x00", ((1, "r-1"), (2, "r-2")))),
        ("stamped_ack", wire.Stamped(DAY_DOC, 44, b"\x00\x00", ((3, "r-3"),), uid=8)),
        ("stamped_forward", wire.Stamped(DAY_DOC, 44, b"\x00\x00", ((3, "r-3"),), update=b"\x00\x00")),
        ("err_update", wire.ErrorMessage("rejected", "forbidden: not yours", doc=DAY_DOC, uid=7)),
        ("err_subscription", wire.ErrorMessage("bad_doc", "no such document", doc="thing:x")),
        ("err_notice", wire.ErrorMessage("rate_limited", "slow down", retry=True)),
        ("hello", wire.Hello(b"\x02" * 16, b"\x93\x01")),
        ("challenge", wire.Challenge(b"\x03" * 32, b"\x93\x01", b"\x04" * 64)),
        (
            "welcome_peer",
            wire.Welcome("alice", "peer-abc", "peer", {}, token="t.t.t", docs=("shop:s1", DAY_DOC)),
        ),
        ("sync_with_digest", wire.Sync(DAY_DOC, b"\x00\x00", b"\x00", 0, digest=b"\x05" * 32)),
    ]
    for name, message in ok:
        cases.append(_message_case(name, message.to_wire(), True))
    ack = {"v": v, "t": "ack", "doc": "shop:s1", "uid": 7, "seq": 42}
    cases.append(
        _message_case(
            "ack_fields_in_another_order",
            _pack({"seq": 42, "uid": 7, "doc": "shop:s1", "t": "ack", "v": v}),
            True,
        )
    )
    cases.append(_message_case("unknown_field_ignored", _pack({**ack, "future": [1, {"x": 2}]}), True))
    cases.append(
        _message_case(
            "nil_field_is_absent",
            _pack({"v": v, "t": "err", "code": "internal", "reason": "", "retry": True, "doc": None}),
            True,
        )
    )
    cases.append(
        _message_case(
            "int_in_a_wider_encoding",
            bytes.fromhex(
                "85a17601a174a361636ba3646f63a773686f703a7331a3756964cf0000000000000007a3736571cd002a"
            ),
            True,
            note="uid 7 as uint64, seq 42 as uint16: any width is accepted",
        )
    )
    cases.append(_message_case("max_int", _pack({**ack, "seq": 2**63 - 1}), True))

    bad: list[tuple[str, bytes, str]] = [
        ("empty", b"", ""),
        ("not_a_map", _pack([1, "ack"]), ""),
        ("other_protocol_version", _pack({**ack, "v": v + 1}), ""),
        ("missing_version", _pack({k: x for k, x in ack.items() if k != "v"}), ""),
        ("missing_type", _pack({k: x for k, x in ack.items() if k != "t"}), ""),
        ("unknown_type", _pack({**ack, "t": "hug"}), ""),
        ("missing_required_field", _pack({k: x for k, x in ack.items() if k != "seq"}), ""),
        ("negative_int", _pack({**ack, "seq": -1}), ""),
        ("int_above_2_63_minus_1", _pack({**ack, "seq": 2**63}), ""),
        ("float_for_an_int", _pack({**ack, "seq": 42.0}), ""),
        ("bool_for_an_int", _pack({**ack, "uid": True}), ""),
        ("str_for_bin", _pack({"v": v, "t": "sub", "doc": "shop:s1", "sv": "\x00"}), ""),
        ("bin_for_str", _pack({**ack, "doc": b"shop:s1"}), ""),
        (
            "empty_state_vector",
            _pack({"v": v, "t": "sub", "doc": "shop:s1", "sv": b""}),
            "the empty state vector is 00, never empty bytes",
        ),
        ("doc_id_with_a_space", _pack({**ack, "doc": "shop: s1"}), ""),
        ("doc_id_of_257_characters", _pack({**ack, "doc": "d" * 257}), ""),
        (
            "upd_with_uid_and_seq",
            _pack({"v": v, "t": "upd", "doc": "shop:s1", "uid": 1, "seq": 1, "update": b"\x00\x00"}),
            "",
        ),
        (
            "upd_with_neither_uid_nor_seq",
            _pack({"v": v, "t": "upd", "doc": "shop:s1", "update": b"\x00\x00"}),
            "",
        ),
        (
            "stamped_with_uid_and_update",
            _pack(
                {
                    "v": v,
                    "t": "stamped",
                    "doc": "d",
                    "seq": 1,
                    "uid": 1,
                    "update": b"\x00\x00",
                    "stamp": b"\x00\x00",
                    "stamps": [],
                }
            ),
            "",
        ),
        (
            "stamped_at_max_seq",
            _pack(
                {
                    "v": v,
                    "t": "stamped",
                    "doc": "d",
                    "seq": 2**63 - 1,
                    "uid": 1,
                    "stamp": b"\x00\x00",
                    "stamps": [],
                }
            ),
            "the stamp update's seq + 1 must fit",
        ),
        (
            "stamp_pair_of_three",
            _pack(
                {"v": v, "t": "stamp", "doc": "d", "seq": 1, "update": b"\x00\x00", "stamps": [[1, "r", 2]]}
            ),
            "",
        ),
        (
            "reason_with_a_control_character",
            _pack({"v": v, "t": "err", "code": "internal", "reason": "a\nb", "retry": True}),
            "",
        ),
        (
            "limit_value_not_an_int",
            _pack(
                {"v": v, "t": "welcome", "user": "u", "epoch": "e", "server": "s", "limits": {"rate": "fast"}}
            ),
            "",
        ),
        ("retry_as_int", _pack({"v": v, "t": "err", "code": "internal", "reason": "", "retry": 1}), ""),
        (
            "ext_type_in_a_field",
            bytes.fromhex("85a17601a174a361636ba3646f63d40100a3756964") + b"\x07\xa3seq\x2a",
            "",
        ),
        (
            "duplicate_field",
            bytes.fromhex("86a17601a174a361636ba3646f63a773686f703a7331a3756964")
            + b"\x07\xa3seq\x2a\xa3seq\x2b",
            "",
        ),
        ("trailing_bytes", _pack(ack) + b"\x00", ""),
        ("truncated", _pack(ack)[:-1], ""),
        (
            "non_str_field_name",
            bytes.fromhex("86a17601a174a361636ba3646f63a773686f703a7331a3756964")
            + b"\x07\xa3seq\x2a\x01\x02",
            "",
        ),
        (
            "33_fields",
            _pack({**ack, **{f"x{i}": 0 for i in range(28)}}),
            "at most 32 top-level entries, unknown ones included",
        ),
        (
            "hello_nonce_of_15_bytes",
            _pack({"v": v, "t": "hello", "nonce": b"\x00" * 15, "cert": b"\x01"}),
            "",
        ),
        ("auth_proof_of_129_bytes", _pack({"v": v, "t": "auth", "token": "t", "proof": b"\x00" * 129}), ""),
    ]
    for name, data, note in bad:
        cases.append(_message_case(name, data, False, note=note))
    cases.append(
        _message_case(
            "over_the_size_limit",
            _pack(ack),
            False,
            max_size=len(_pack(ack)) - 1,
            note="checked before parsing",
        )
    )
    cases.append(_message_case("exactly_the_size_limit", _pack(ack), True, max_size=len(_pack(ack))))
    return cases


# --- verdicts ------------------------------------------------------------------------------------------


def _slot(
    slot_id: str,
    capacity: int,
    *,
    key: str | None = None,
    at: int = -DAY_MS,
    active: bool = True,
    weekdays: Sequence[int] | None = None,
    per_customer: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": key or f"k-{slot_id}",
        "id": slot_id,
        "capacity": capacity,
        "active": active,
        "hlc": hlc(at, node="olga"),
    }
    if weekdays is not None:
        out["weekdays"] = list(weekdays)
    if per_customer is not None:
        out["per_customer"] = per_customer
    return out


def _claim(rid: str, customer: str, party: int = 1, *, slot: str = "s-9", at: int = 0) -> dict[str, Any]:
    return {"id": rid, "slot": slot, "party": party, "customer": customer, "hlc": hlc(at, node=customer)}


def _ev(eid: str, rid: str, kind: str, by: str, at: int = 0) -> dict[str, Any]:
    return {"id": eid, "reservation": rid, "type": kind, "by": by, "hlc": hlc(at, node=by)}


def _st(no: int, rid: str) -> dict[str, Any]:
    return {"no": no, "reservation": rid}


def _c(
    state: str, rank: int, *, stamp: int | None = None, final: bool = False, position: int | None = None
) -> dict[str, Any]:
    return {"state": state, "position": position, "stamp": stamp, "final": final, "rank": rank}


def _verdict_case(
    name: str,
    note: str,
    slots: list[dict[str, Any]],
    reservations: list[dict[str, Any]],
    expect: dict[str, dict[str, Any]],
    *,
    events: list[dict[str, Any]] | None = None,
    stamps: list[dict[str, Any]] | None = None,
    prefix: int | None = None,
) -> dict[str, Any]:
    stamp_list = stamps or []
    if prefix is None:
        prefix = stamp_prefix({s["no"] for s in stamp_list})
    return {
        "name": name,
        "note": note,
        "day": DAY,
        "slots": slots,
        "reservations": reservations,
        "events": events or [],
        "stamps": stamp_list,
        "expect": {"claims": dict(sorted(expect.items())), "stamp_prefix": prefix},
    }


def _verdict_cases() -> list[dict[str, Any]]:
    s4 = [_slot("s-9", 4)]
    cases = [
        _verdict_case(
            "strict_first_come_first_served",
            "r1 takes 2 of 4 seats; r2 (3) does not fit and blocks the smaller r3 behind it",
            s4,
            [_claim("r1", "ann", 2), _claim("r2", "ben", 3, at=1), _claim("r3", "cat", 1, at=2)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("waitlisted", 1, stamp=2, final=True, position=1),
                "r3": _c("waitlisted", 2, stamp=3, final=True, position=2),
            },
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "tentative_order_hlc_then_customer_then_id",
            "unstamped claims rank by (hlc, customer, reservation id), each compared as a string"
            " (amy may hold 3 claims here)",
            [_slot("s-9", 2, per_customer=3)],
            [
                {**_claim("r-y", "zed"), "hlc": hlc(5, node="dev")},
                {**_claim("r-x", "amy"), "hlc": hlc(5, node="dev")},
                {**_claim("r-c", "amy"), "hlc": hlc(5, node="dev")},
                _claim("r-z", "amy", at=-5),
            ],
            {
                "r-z": _c("confirmed", 0),
                "r-c": _c("confirmed", 1),
                "r-x": _c("waitlisted", 2, position=1),
                "r-y": _c("waitlisted", 3, position=2),
            },
        ),
        _verdict_case(
            "stamped_claims_rank_before_unstamped",
            "an earlier HLC does not beat a stamp",
            [_slot("s-9", 1)],
            [_claim("early", "ann", at=-HOUR_MS), _claim("late", "ben", at=0)],
            {"late": _c("confirmed", 0, stamp=1, final=True), "early": _c("waitlisted", 1, position=1)},
            stamps=[_st(1, "late")],
        ),
        _verdict_case(
            "finality_needs_every_stamp_below",
            "stamp 2 is missing: the claim with stamp 3 is not final (stamp 2 could rank before it)",
            s4,
            [_claim("r1", "ann"), _claim("r3", "cat", at=1)],
            {"r1": _c("confirmed", 0, stamp=1, final=True), "r3": _c("confirmed", 1, stamp=3)},
            stamps=[_st(1, "r1"), _st(3, "r3")],
        ),
        _verdict_case(
            "claim_stamped_twice_counts_by_its_lowest_stamp",
            "a stamp for a reservation the document lacks still counts for the gap-free prefix",
            s4,
            [_claim("r1", "ann"), _claim("r2", "ben", at=1)],
            {"r2": _c("confirmed", 0, stamp=2, final=True), "r1": _c("confirmed", 1, stamp=4, final=True)},
            stamps=[_st(1, "r-elsewhere"), _st(2, "r2"), _st(3, "r2"), _st(4, "r1")],
        ),
        _verdict_case(
            "cancel_frees_seats_and_never_demotes",
            "r1 cancelled: r2 is promoted, nobody already confirmed moves",
            [_slot("s-9", 3)],
            [_claim("r1", "ann", 2), _claim("r2", "ben", 2, at=1), _claim("r3", "cat", 1, at=2)],
            {
                "r1": _c("cancelled", 0, stamp=1, final=True),
                "r2": _c("confirmed", 1, stamp=2, final=True),
                "r3": _c("confirmed", 2, stamp=3, final=True),
            },
            events=[_ev("e1", "r1", "cancel", "ann", 10)],
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "earliest_terminal_event_wins",
            "a decline at the same HLC as a cancel: the event id breaks the tie (e-a < e-b)",
            s4,
            [_claim("r1", "ann"), _claim("r2", "ben", at=1)],
            {"r1": _c("declined", 0, stamp=1, final=True), "r2": _c("cancelled", 1, stamp=2, final=True)},
            events=[
                {**_ev("e-b", "r1", "cancel", "ann"), "hlc": hlc(10, node="dev")},
                {**_ev("e-a", "r1", "decline", "sam"), "hlc": hlc(10, node="dev")},
                _ev("e-c", "r2", "decline", "sam", 20),
                _ev("e-d", "r2", "cancel", "ben", 19),
            ],
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "confirm_moves_no_seat",
            "a staff confirm on a waitlisted claim leaves it waiting",
            [_slot("s-9", 1)],
            [_claim("r1", "ann"), _claim("r2", "ben", at=1)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("waitlisted", 1, stamp=2, final=True, position=1),
            },
            events=[_ev("e1", "r2", "confirm", "sam", 5)],
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "no_show_keeps_its_seats",
            "a no-show that held seats keeps them; the claim behind still waits",
            [_slot("s-9", 2)],
            [_claim("r1", "ann", 2), _claim("r2", "ben", at=1)],
            {
                "r1": _c("no_show", 0, stamp=1, final=True),
                "r2": _c("waitlisted", 1, stamp=2, final=True, position=1),
            },
            events=[_ev("e1", "r1", "no_show", "sam", 5)],
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "waiting_no_show",
            "a no-show on a claim that did not fit holds no seat and has no waitlist place",
            [_slot("s-9", 1)],
            [_claim("r1", "ann"), _claim("r2", "ben", at=1), _claim("r3", "cat", at=2)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("no_show", 1, stamp=2, final=True),
                "r3": _c("waitlisted", 2, stamp=3, final=True, position=1),
            },
            events=[_ev("e1", "r2", "no_show", "sam", 5)],
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "cancel_overrides_no_show",
            "cancel or decline beats a no-show whatever their HLCs",
            [_slot("s-9", 1)],
            [_claim("r1", "ann"), _claim("r2", "ben", at=1)],
            {"r1": _c("cancelled", 0, stamp=1, final=True), "r2": _c("confirmed", 1, stamp=2, final=True)},
            events=[_ev("e1", "r1", "no_show", "sam", 5), _ev("e2", "r1", "cancel", "ann", 9)],
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "unknown_slot_waits",
            "no template for the slot: capacity 0, every claim waits",
            [],
            [_claim("r1", "ann", slot="s-new")],
            {"r1": _c("waitlisted", 0, stamp=1, final=True, position=1)},
            stamps=[_st(1, "r1")],
        ),
        _verdict_case(
            "inactive_slot_and_off_day_wait",
            f"{DAY} is a Friday (weekday 4); a slot offered Monday only, and an inactive one, have no seats",
            [
                _slot("s-mon", 5, weekdays=[0]),
                _slot("s-off", 5, active=False),
                _slot("s-fri", 5, weekdays=[4]),
            ],
            [
                _claim("r1", "ann", slot="s-mon"),
                _claim("r2", "ben", slot="s-off"),
                _claim("r3", "cat", slot="s-fri"),
            ],
            {
                "r1": _c("waitlisted", 0, position=1),
                "r2": _c("waitlisted", 0, position=1),
                "r3": _c("confirmed", 0),
            },
        ),
        _verdict_case(
            "newest_template_sets_the_capacity",
            "templates of one slot: the greatest (hlc, record key) wins; here capacity 1 supersedes 3",
            [
                _slot("s-9", 3, key="k-a", at=-DAY_MS),
                _slot("s-9", 1, key="k-b", at=-HOUR_MS),
                _slot("s-9", 5, key="k-c", at=-2 * DAY_MS),
            ],
            [_claim("r1", "ann"), _claim("r2", "ben", at=1)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("waitlisted", 1, stamp=2, final=True, position=1),
            },
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "event_types_of_a_newer_schema_are_ignored",
            "an unknown event type neither cancels nor confirms",
            [_slot("s-9", 1)],
            [_claim("r1", "ann")],
            {"r1": _c("confirmed", 0, stamp=1, final=True)},
            events=[_ev("e1", "r1", "reschedule", "sam", 5)],
            stamps=[_st(1, "r1")],
        ),
        _verdict_case(
            "slots_are_independent",
            "each slot has its own order and seats",
            [_slot("s-a", 1), _slot("s-b", 1)],
            [
                _claim("r1", "ann", slot="s-a"),
                _claim("r2", "ben", slot="s-b", at=1),
                _claim("r3", "cat", slot="s-a", at=2),
            ],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("confirmed", 0, stamp=2, final=True),
                "r3": _c("waitlisted", 1, stamp=3, final=True, position=1),
            },
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "too_large_blocks_nobody",
            "r1 (3) can never fit a slot of 2: too_large, no seat, no waitlist place;"
            " r2 and r3 behind it are served",
            [_slot("s-9", 2)],
            [_claim("r1", "ann", 3), _claim("r2", "ben", 1, at=1), _claim("r3", "cat", 2, at=2)],
            {
                "r1": _c("too_large", 0, stamp=1, final=True),
                "r2": _c("confirmed", 1, stamp=2, final=True),
                "r3": _c("waitlisted", 2, stamp=3, final=True, position=1),
            },
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "capacity_raise_brings_a_too_large_claim_back",
            "the newest template raises the capacity to 4: r1 (3) takes its place in the order again",
            [_slot("s-9", 2, key="k-a", at=-DAY_MS), _slot("s-9", 4, key="k-b", at=-HOUR_MS)],
            [_claim("r1", "ann", 3), _claim("r2", "ben", 1, at=1), _claim("r3", "cat", 2, at=2)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("confirmed", 1, stamp=2, final=True),
                "r3": _c("waitlisted", 2, stamp=3, final=True, position=1),
            },
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "too_large_beats_no_show_but_not_cancel",
            "a no-show on a party that cannot fit is too_large; a cancelled one stays cancelled",
            [_slot("s-9", 2)],
            [_claim("r1", "ann", 5), _claim("r2", "ben", 5, at=1)],
            {"r1": _c("too_large", 0, stamp=1, final=True), "r2": _c("cancelled", 1, stamp=2, final=True)},
            events=[_ev("e1", "r1", "no_show", "sam", 5), _ev("e2", "r2", "cancel", "ben", 5)],
            stamps=[_st(1, "r1"), _st(2, "r2")],
        ),
        _verdict_case(
            "closed_slot_keeps_claims_waiting",
            "capacity 0 that day (here an active template of capacity 0): not open, so no claim is"
            " too_large; they wait in order",
            [_slot("s-9", 0)],
            [_claim("r1", "ann", 3), _claim("r2", "ben", 1, at=1)],
            {"r1": _c("waitlisted", 0, position=1), "r2": _c("waitlisted", 1, position=2)},
        ),
        _verdict_case(
            "repeat_booking_is_duplicate_and_blocks_nobody",
            "ann books s-9 twice: her second claim is duplicate (no seat, no place); ben behind it is served",
            [_slot("s-9", 2)],
            [_claim("r1", "ann"), _claim("r2", "ann", at=1), _claim("r3", "ben", 1, at=2)],
            {
                "r1": _c("confirmed", 0, stamp=1, final=True),
                "r2": _c("duplicate", 1, stamp=2, final=True),
                "r3": _c("confirmed", 2, stamp=3, final=True),
            },
            stamps=[_st(1, "r1"), _st(2, "r2"), _st(3, "r3")],
        ),
        _verdict_case(
            "waitlisted_claim_counts_as_active",
            "ann waits for s-9 (full); booking it again does not queue her twice",
            [_slot("s-9", 1)],
            [_claim("r0", "ben"), _claim("r1", "ann", at=1), _claim("r2", "ann", at=2)],
            {
                "r0": _c("confirmed", 0),
                "r1": _c("waitlisted", 1, position=1),
                "r2": _c("duplicate", 2),
            },
        ),
        _verdict_case(
            "per_customer_allows_more",
            "the slot's per_customer 2: ann's first two claims count, her third is duplicate",
            [_slot("s-9", 5, per_customer=2)],
            [_claim("r1", "ann"), _claim("r2", "ann", at=1), _claim("r3", "ann", at=2)],
            {"r1": _c("confirmed", 0), "r2": _c("confirmed", 1), "r3": _c("duplicate", 2)},
        ),
        _verdict_case(
            "booking_again_after_a_cancel",
            "ann cancelled r1 (at +5 ms) before booking r2 (at +9 ms): r2 counts",
            [_slot("s-9", 2)],
            [_claim("r1", "ann"), _claim("r2", "ann", at=9)],
            {"r1": _c("cancelled", 0), "r2": _c("confirmed", 1)},
            events=[_ev("e1", "r1", "cancel", "ann", at=5)],
        ),
        _verdict_case(
            "a_cancel_after_the_repeat_does_not_revive_it",
            "r1 cancelled at +20 ms, after r2 was written (+9 ms): r2 was a repeat when written and stays"
            " duplicate, so the cancel promotes no claim over those behind it",
            [_slot("s-9", 2)],
            [_claim("r1", "ann"), _claim("r2", "ann", at=9), _claim("r3", "ben", at=10)],
            {"r1": _c("cancelled", 0), "r2": _c("duplicate", 1), "r3": _c("confirmed", 2)},
            events=[_ev("e1", "r1", "cancel", "ann", at=20)],
        ),
        _verdict_case(
            "a_too_large_claim_counts_for_no_repeat",
            "ann's party of 3 can never fit a slot of 2 (too_large, holds nothing): her next claim counts",
            [_slot("s-9", 2)],
            [_claim("r1", "ann", 3), _claim("r2", "ann", 1, at=1)],
            {"r1": _c("too_large", 0), "r2": _c("confirmed", 1)},
        ),
        _verdict_case(
            "repeats_count_per_slot",
            "one claim per customer per slot: ann on s-9 and on s-10 holds both",
            [_slot("s-9", 2), _slot("s-10", 2)],
            [_claim("r1", "ann"), _claim("r2", "ann", slot="s-10", at=1)],
            {"r1": _c("confirmed", 0), "r2": _c("confirmed", 0)},
        ),
    ]
    return cases


# --- HLC -----------------------------------------------------------------------------------------------


def _hlc_file() -> dict[str, Any]:
    valid = [
        hlc(),
        "0000000000000-000000-a",
        "9999999999999-999999-" + "Z" * 64,
        "1800000000000-000001-dev_1-x",
    ]
    invalid = [
        "1800000000000-0-n",
        "180000000000-000000-n",
        "18000000000000-000000-n",
        "1800000000000-000000-",
        "1800000000000-000000-" + "n" * 65,
        "1800000000000-000000-n.x",
        "1800000000000_000000_n",
        " 1800000000000-000000-n",
        "1800000000000-000000-n\n",
    ]
    pairs = [
        (hlc(0), hlc(1), "wall time first"),
        (hlc(0, 1), hlc(0, 2), "then the counter"),
        (hlc(0, 999_999), hlc(1, 0), "a counter never outranks a later millisecond"),
        (hlc(0, 0, "B"), hlc(0, 0, "a"), "then the node id, by byte (upper case before lower case)"),
        (hlc(0, 0, "a"), hlc(0, 0, "a-"), "a node id that is a prefix ranks first"),
    ]
    return {
        "valid": valid,
        "invalid": invalid,
        "ordered_pairs": [{"lower": a, "higher": b, "why": why} for a, b, why in pairs],
    }


# --- the corpus ----------------------------------------------------------------------------------------


def _checked(
    cases: list[dict[str, Any]], judge: Callable[[dict[str, Any]], dict[str, Any]], what: str
) -> list[dict[str, Any]]:
    names: set[str] = set()
    for case in cases:
        if case["name"] in names:
            raise AssertionError(f"{what}: duplicate case name {case['name']}")
        names.add(case["name"])
        got = judge(case)
        want = case["expect"]
        if what == "records" and want.get("valid"):
            want = {k: v for k, v in want.items() if k != "parsed"}
        if got != want:
            raise AssertionError(f"{what} case {case['name']}: crdt_core says {got}, the case says {want}")
    return cases


def _dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False) + "\n"


def build_corpus() -> dict[str, str]:
    """Every corpus file as ``{file name: JSON text}``, each case checked against crdt_core.

    Raises:
        AssertionError: a case's stated outcome is not what crdt_core does (a bug in one of them).
    """
    world = World()
    keys = world.keys_file()
    records = _checked(_record_cases(world) + _rule_cases(world), lambda c: judge_record(c, keys), "records")
    updates = _checked(_update_cases(world), lambda c: judge_update(c, keys), "updates")
    messages = _checked(_message_cases(), judge_message, "messages")
    verdicts = _checked(_verdict_cases(), judge_verdict, "verdicts")
    hlcs = _hlc_file()
    files = {
        "keys.json": keys,
        "hlc.json": hlcs,
        "records.json": {"cases": records},
        "updates.json": {"cases": updates},
        "messages.json": {"cases": messages},
        "verdicts.json": {"cases": verdicts},
    }
    manifest = {
        "corpus_format": CORPUS_FORMAT,
        "records_format": RECORD_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "protocol_version": wire.PROTOCOL_VERSION,
        "record_domain": RECORD_DOMAIN.decode("ascii").replace("\x00", "\\0"),
        "files": {
            "records.json": len(records),
            "updates.json": len(updates),
            "messages.json": len(messages),
            "verdicts.json": len(verdicts),
            "hlc.json": len(hlcs["valid"]) + len(hlcs["invalid"]) + len(hlcs["ordered_pairs"]),
            "keys.json": len(keys["devices"]) + len(keys["client_ids"]),
        },
    }
    out = {"manifest.json": _dump(manifest)}
    out.update({name: _dump(value) for name, value in files.items()})
    return out
