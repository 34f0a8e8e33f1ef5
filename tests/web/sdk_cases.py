"""Cross-check cases for the JavaScript SDK (``web/sdk``), computed by crdt_core.

Why: the SDK must be the same engine as crdt_core. Until the repository's conformance corpus is
in record format 2, this writes a few dozen cases in the corpus layout (``conformance/README.md``:
``keys.json``, ``hlc.json``, ``records.json``, ``updates.json``, ``verdicts.json``) plus
``histories.json`` (verdict histories with their ``diff_verdicts`` changes). Every expectation is
whatever crdt_core decides, so any disagreement the SDK's runner reports is a difference between
the two implementations.

Run: ``python -m tests.web.sdk_cases OUT_DIR``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import pycrdt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.canonical import canonical_pack
from crdt_core.certs import DeviceKey, SigningKey, cert_id_of, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import BookingsState, slot_templates
from crdt_core.records import open_record, sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation, Stamp, StatusEvent, parse_doc_id, stamp_key
from crdt_core.validation import ArrivalPolicy, Rights, validate_update
from crdt_core.verdict import compute_verdict, diff_verdicts

NOW = 1_800_000_000_000
HOUR = 3_600_000
DAY_DOC = "bookings:s1:2027-01-15"
SHOP_DOC = "shop:s1"
KID = "relay-k1"


def _packb(value: Any) -> bytes:
    """Plain msgpack (not canonical): how a careless or hostile writer encodes."""
    return bytes(msgpack.packb(value, use_bin_type=True))


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))


def _seed_hex(seed: int) -> str:
    return seed.to_bytes(32, "big").hex()


RELAY = SigningKey(KID, _key(1))
IMPOSTER = SigningKey(KID, _key(2))
TRUSTED = {KID: RELAY.public}


class Device:
    def __init__(self, name: str, seed: int, signer: SigningKey = RELAY, **claims: Any) -> None:
        self.name = name
        self.seed = seed
        self.user = claims.pop("user", name)
        iat = claims.pop("iat", NOW - HOUR)
        exp = claims.pop("exp", NOW + 24 * HOUR)
        raw = (
            issue_certificate(
                signer,
                user_id=self.user,
                roles=claims.get("roles", []),
                owner_of=claims.get("owner_of", []),
                staff_of=claims.get("staff_of", []),
                device_public_key=public_bytes(_key(seed)),
                issued_at_ms=iat,
                expires_at_ms=exp,
            )
            if signer is RELAY
            else _forge(signer, self.user, _key(seed), iat, exp)
        )
        self.key = DeviceKey(_key(seed), raw)
        self.cert_id = cert_id_of(raw)

    def client(self, generation: int = 0) -> int:
        return client_id_for(self.cert_id, generation)

    def sign(
        self, doc: str, root_key: str, kind: str, fields: dict[str, Any], version: int = SCHEMA_VERSION
    ) -> bytes:
        return sign_record(doc, root_key, kind, fields, self.key, version)


def _forge(signer: SigningKey, user: str, device: Ed25519PrivateKey, iat: int, exp: int) -> bytes:
    """A certificate signed by a key the replicas do not trust (issue_certificate would refuse it)."""
    body = canonical_pack(
        {"u": user, "r": [], "o": [], "s": [], "k": public_bytes(device), "iat": iat, "exp": exp}
    )
    return canonical_pack([1, body, signer.kid, signer.sign(b"quickslot-cert-v1\x00" + body)])


def _odd_certificate_bodies() -> list[tuple[str, bytes]]:
    """Certificate bodies the trusted relay key signed but that are malformed or unusual."""
    good: dict[str, Any] = {"u": "alice", "r": [], "o": ["s1"], "s": [], "k": public_bytes(_key(101))}
    good.update(iat=NOW - HOUR, exp=NOW + HOUR)
    bodies: list[tuple[str, bytes]] = [
        ("no_lists", canonical_pack({k: v for k, v in good.items() if k not in ("r", "o", "s")})),
        ("nil_roles", canonical_pack(dict(good, r=None))),
        ("unknown_role_dropped", canonical_pack(dict(good, r=["admin", "root"]))),
        ("user_of_65", canonical_pack(dict(good, u="u" * 65))),
        ("shop_of_65", canonical_pack(dict(good, o=["s" * 65]))),
        ("exp_equals_iat", canonical_pack(dict(good, exp=good["iat"]))),
        ("iat_as_bool", canonical_pack(dict(good, iat=True))),
        ("key_of_31_bytes", canonical_pack(dict(good, k=bytes(31)))),
        ("extra_body_field", canonical_pack(dict(good, zz=1))),
        ("body_unsorted", _packb(dict(reversed(list(good.items()))))),
        ("body_not_a_map", canonical_pack([1, 2])),
    ]
    return bodies


ALICE = Device("alice", 101)
BOB = Device("bob", 102)
SAM = Device("sam", 103, staff_of=["s1"])
OLGA = Device("olga", 104, owner_of=["s1"])
ADA = Device("ada", 105, roles=["admin"])
ALICE_OLD = Device("alice_old", 106, user="alice", iat=NOW - 10 * 24 * HOUR, exp=NOW - 3 * 24 * HOUR)
ALICE_FORGED = Device("alice_forged", 107, signer=IMPOSTER, user="alice")
ALICE_LONG = Device("alice_long", 108, user="alice", iat=NOW - 60 * 24 * HOUR, exp=NOW + 60 * 24 * HOUR)
DEVICES = [ALICE, BOB, SAM, OLGA, ADA, ALICE_OLD, ALICE_FORGED, ALICE_LONG]


def hlc(ms: int = NOW, node: str = "n", counter: int = 0) -> str:
    return f"{ms:013d}-{counter:06d}-{node}"


def res_fields(rid: str, customer: str, slot: str = "s-9", party: int = 2, at: int = NOW) -> dict[str, Any]:
    return {"id": rid, "slot": slot, "party": party, "customer": customer, "hlc": hlc(at, customer)}


def relay_sign(doc: str, key: str, fields: dict[str, Any], signer: SigningKey = RELAY) -> bytes:
    return sign_record(doc, key, "stamp", fields, signer, SCHEMA_VERSION)


def write(replica_state: list[bytes], client: int, entries: list[tuple[str, str, bytes]]) -> bytes:
    """The update a replica holding ``replica_state`` writes under ``client``."""
    replica = Replica(client)
    for upd in replica_state:
        replica.apply_update(upd)
    return replica.write(entries)


def with_pycrdt(state: list[bytes], client: int, act: Callable[[pycrdt.Doc[Any]], None]) -> bytes:
    """An update made by raw pycrdt operations (deletes, nested types), which Replica never writes."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client)
    for upd in state:
        doc.apply_update(upd)
    before = doc.get_state()
    act(doc)
    return bytes(doc.get_update(before))


def judge(doc: str, state: list[bytes], update: bytes, arrival: dict[str, Any] | None) -> dict[str, Any]:
    replica = Replica()
    for upd in state:
        replica.apply_update(upd)
    policy = None
    if arrival is not None:
        rights = arrival.get("current_rights")
        policy = ArrivalPolicy(
            now_ms=arrival["now_ms"],
            is_revoked=(lambda c: c.cert_id in arrival.get("revoked", [])) if "revoked" in arrival else None,
            current_rights=((lambda u: _rights(u, rights.get(u))) if rights is not None else None),
        )
    from crdt_core.certs import CertificateCache

    try:
        result = validate_update(doc, replica, update, CertificateCache(TRUSTED), policy)
    except ValidationError as exc:
        return {"valid": False, "reason": exc.code}
    return {"valid": True, "records": sorted([r.root, r.key] for r in result.records)}


def _rights(user: str, view: dict[str, Any] | None) -> Rights | None:
    if view is None:
        return None
    return Rights(user, view["admin"], frozenset(view["owner_of"]), frozenset(view["staff_of"]))


# --- updates -------------------------------------------------------------------------------------


def update_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []

    def add(
        name: str,
        state: list[bytes],
        update: bytes,
        doc: str = DAY_DOC,
        arrival: dict[str, Any] | None = None,
    ) -> None:
        case: dict[str, Any] = {
            "name": name,
            "note": "",
            "doc": doc,
            "state": [s.hex() for s in state],
            "update": update.hex(),
        }
        if arrival is not None:
            case["arrival"] = arrival
        case["expect"] = judge(doc, state, update, arrival)
        cases.append(case)

    a = ALICE.client()
    cert_a = ("certs", ALICE.cert_id, ALICE.key.certificate)
    res_a = (
        "reservations",
        "r-alice",
        ALICE.sign(DAY_DOC, "r-alice", "reservation", res_fields("r-alice", "alice")),
    )
    first = write([], a, [cert_a, res_a])
    add("first_write_with_certificate", [], first)
    add("noop_resend", [first], first)
    add("certificate_missing", [], write([], a, [res_a]))
    b = BOB.client()
    res_b = (
        "reservations",
        "r-bob",
        BOB.sign(DAY_DOC, "r-bob", "reservation", res_fields("r-bob", "bob", party=3, at=NOW + 5)),
    )
    second = write([first], b, [("certs", BOB.cert_id, BOB.key.certificate), res_b])
    add("second_author", [first], second)
    add(
        "foreign_client_squats_alice",
        [first],
        write([first], a, [("certs", BOB.cert_id, BOB.key.certificate)]),
    )
    add(
        "foreign_client_record",
        [first, second],
        write(
            [first, second],
            a,
            [("reservations", "r-b2", BOB.sign(DAY_DOC, "r-b2", "reservation", res_fields("r-b2", "bob")))],
        ),
    )
    add(
        "rewrite_existing_key",
        [first],
        write(
            [first],
            a,
            [
                (
                    "reservations",
                    "r-alice",
                    ALICE.sign(DAY_DOC, "r-alice", "reservation", res_fields("r-alice", "alice", party=1)),
                )
            ],
        ),
    )
    add(
        "deletion",
        [first],
        with_pycrdt([first], a, lambda d: d.get("reservations", type=pycrdt.Map).pop("r-alice")),
    )
    add(
        "nested_map",
        [first],
        with_pycrdt(
            [first],
            a,
            lambda d: d.get("reservations", type=pycrdt.Map).__setitem__("x", pycrdt.Map({"a": 1})),
        ),
    )
    add("text_root", [], with_pycrdt([], a, lambda d: d.get("notes", type=pycrdt.Text).insert(0, "hi")))
    add(
        "non_binary_value",
        [first],
        with_pycrdt([first], a, lambda d: d.get("reservations", type=pycrdt.Map).__setitem__("x", 5)),
    )
    two = Replica(a)
    u1 = two.write([cert_a])
    u2 = two.write([res_a])
    add("missing_deps", [], u2)
    add("in_order_second_write", [u1], u2)
    add("wrong_map", [first], write([first], a, [("slots", "k1", ALICE.sign(DAY_DOC, "k1", "slot", {}))]))
    add(
        "schema_bad_party",
        [first],
        write(
            [first],
            a,
            [
                (
                    "reservations",
                    "r-2",
                    ALICE.sign(DAY_DOC, "r-2", "reservation", res_fields("r-2", "alice", party=0)),
                )
            ],
        ),
    )
    add(
        "schema_key_mismatch",
        [first],
        write(
            [first],
            a,
            [("reservations", "r-3", ALICE.sign(DAY_DOC, "r-3", "reservation", res_fields("r-4", "alice")))],
        ),
    )
    add(
        "forbidden_other_customer",
        [first],
        write(
            [first],
            a,
            [("reservations", "r-5", ALICE.sign(DAY_DOC, "r-5", "reservation", res_fields("r-5", "bob")))],
        ),
    )
    stamp = (
        "stamps",
        stamp_key(1),
        relay_sign(DAY_DOC, stamp_key(1), {"no": 1, "reservation": "r-alice", "at": NOW}),
    )
    relay_client = client_id_for("relay:" + KID, 3)
    stamped = write([first], relay_client, [stamp])
    add("relay_stamp", [first], stamped)
    add("stamp_under_device_client", [first], write([first], a, [stamp]))
    add(
        "stamp_unknown_reservation",
        [first],
        write(
            [first],
            relay_client,
            [
                (
                    "stamps",
                    stamp_key(1),
                    relay_sign(DAY_DOC, stamp_key(1), {"no": 1, "reservation": "r-zz", "at": NOW}),
                )
            ],
        ),
    )
    add(
        "stamp_by_imposter_key",
        [first],
        write(
            [first],
            relay_client,
            [
                (
                    "stamps",
                    stamp_key(1),
                    relay_sign(
                        DAY_DOC, stamp_key(1), {"no": 1, "reservation": "r-alice", "at": NOW}, IMPOSTER
                    ),
                )
            ],
        ),
    )
    add(
        "stamp_signed_by_device",
        [first],
        write(
            [first],
            a,
            [
                (
                    "stamps",
                    stamp_key(1),
                    ALICE.sign(
                        DAY_DOC, stamp_key(1), "stamp", {"no": 1, "reservation": "r-alice", "at": NOW}
                    ),
                )
            ],
        ),
    )
    add(
        "stamp_key_mismatch",
        [first],
        write(
            [first],
            relay_client,
            [
                (
                    "stamps",
                    "0000000000000002",
                    relay_sign(DAY_DOC, "0000000000000002", {"no": 1, "reservation": "r-alice", "at": NOW}),
                )
            ],
        ),
    )
    cancel = {
        "id": "e-1",
        "reservation": "r-alice",
        "type": "cancel",
        "by": "alice",
        "hlc": hlc(NOW + 10, "alice"),
    }
    add(
        "cancel_by_customer",
        [first],
        write([first], a, [("events", "e-1", ALICE.sign(DAY_DOC, "e-1", "event", cancel))]),
    )
    bob_cancel = dict(cancel, by="bob", hlc=hlc(NOW + 10, "bob"))
    add(
        "cancel_by_another_customer",
        [first, second],
        write([first, second], b, [("events", "e-1", BOB.sign(DAY_DOC, "e-1", "event", bob_cancel))]),
    )
    confirm = {
        "id": "e-2",
        "reservation": "r-alice",
        "type": "confirm",
        "by": "sam",
        "hlc": hlc(NOW + 20, "sam"),
    }
    add(
        "confirm_by_staff",
        [first],
        write(
            [first],
            SAM.client(),
            [
                ("certs", SAM.cert_id, SAM.key.certificate),
                ("events", "e-2", SAM.sign(DAY_DOC, "e-2", "event", confirm)),
            ],
        ),
    )
    add(
        "confirm_by_customer",
        [first],
        write(
            [first], a, [("events", "e-2", ALICE.sign(DAY_DOC, "e-2", "event", dict(confirm, by="alice")))]
        ),
    )
    add(
        "event_unknown_reservation",
        [first],
        write(
            [first],
            a,
            [
                (
                    "events",
                    "e-3",
                    ALICE.sign(DAY_DOC, "e-3", "event", dict(cancel, id="e-3", reservation="r-none")),
                )
            ],
        ),
    )
    old = write(
        [],
        ALICE_OLD.client(),
        [
            ("certs", ALICE_OLD.cert_id, ALICE_OLD.key.certificate),
            (
                "reservations",
                "r-old",
                ALICE_OLD.sign(DAY_DOC, "r-old", "reservation", res_fields("r-old", "alice")),
            ),
        ],
    )
    add("certificate_expired", [], old)
    forged = write([], ALICE_FORGED.client(), [("certs", ALICE_FORGED.cert_id, ALICE_FORGED.key.certificate)])
    add("forged_certificate", [], forged)
    add(
        "certificate_under_wrong_key",
        [],
        write([], ALICE.client(), [("certs", BOB.cert_id, ALICE.key.certificate)]),
    )
    tampered = bytearray(res_a[2])
    tampered[-1] ^= 1
    add("tampered_signature", [], write([], a, [cert_a, ("reservations", "r-alice", bytes(tampered))]))
    add("replayed_into_other_day", [], write([], a, [cert_a, res_a]), doc="bookings:s1:2027-01-16")
    # arrival rules
    add("arrival_ok", [], first, arrival={"now_ms": NOW + 1000})
    add("arrival_clock_skew", [], first, arrival={"now_ms": NOW - 120_000})
    long = ALICE_LONG
    backdated = write(
        [],
        long.client(),
        [
            ("certs", long.cert_id, long.key.certificate),
            (
                "reservations",
                "r-bd",
                long.sign(
                    DAY_DOC, "r-bd", "reservation", res_fields("r-bd", "alice", at=NOW - 40 * 24 * HOUR)
                ),
            ),
        ],
    )
    add("arrival_backdated_beyond_30_days", [], backdated, arrival={"now_ms": NOW})
    add("no_arrival_no_backdating_rule", [], backdated)
    add("arrival_revoked", [], first, arrival={"now_ms": NOW, "revoked": [ALICE.cert_id]})
    staff_write = write(
        [first],
        SAM.client(),
        [
            ("certs", SAM.cert_id, SAM.key.certificate),
            ("events", "e-2", SAM.sign(DAY_DOC, "e-2", "event", confirm)),
        ],
    )
    add(
        "arrival_staff_right_removed",
        [first],
        staff_write,
        arrival={"now_ms": NOW, "current_rights": {"sam": {"admin": False, "owner_of": [], "staff_of": []}}},
    )
    add(
        "arrival_staff_right_kept",
        [first],
        staff_write,
        arrival={
            "now_ms": NOW,
            "current_rights": {"sam": {"admin": False, "owner_of": [], "staff_of": ["s1"]}},
        },
    )
    # malformed bytes
    add("trailing_byte", [], first + b"\x00")
    add("truncated", [], first[: len(first) // 2])
    add("bad_doc_id", [], first, doc="bookings:s1:2027-02-30")
    # shop document rights
    slot = {
        "id": "s-9",
        "service": "cut",
        "start": "09:00",
        "duration": 30,
        "capacity": 4,
        "active": True,
        "hlc": hlc(NOW, "olga"),
    }
    add(
        "slot_by_owner",
        [],
        write(
            [],
            OLGA.client(),
            [
                ("certs", OLGA.cert_id, OLGA.key.certificate),
                ("slots", "k-1", OLGA.sign(SHOP_DOC, "k-1", "slot", slot)),
            ],
        ),
        doc=SHOP_DOC,
    )
    add(
        "slot_by_customer",
        [],
        write([], a, [cert_a, ("slots", "k-1", ALICE.sign(SHOP_DOC, "k-1", "slot", slot))]),
        doc=SHOP_DOC,
    )
    staff = {"user": "sam", "role": "staff", "active": True, "hlc": hlc(NOW, "sam")}
    add(
        "staff_entry_by_staff",
        [],
        write(
            [],
            SAM.client(),
            [
                ("certs", SAM.cert_id, SAM.key.certificate),
                ("staff", "k-2", SAM.sign(SHOP_DOC, "k-2", "staff", staff)),
            ],
        ),
        doc=SHOP_DOC,
    )
    add(
        "staff_entry_by_admin",
        [],
        write(
            [],
            ADA.client(),
            [
                ("certs", ADA.cert_id, ADA.key.certificate),
                ("staff", "k-2", ADA.sign(SHOP_DOC, "k-2", "staff", staff)),
            ],
        ),
        doc=SHOP_DOC,
    )
    profile = {
        "name": "Cuts",
        "description": "",
        "address": "1 Way",
        "lat": 45.0,
        "lon": 7.5,
        "hours": "9-5",
        "hlc": hlc(NOW, "sam"),
    }
    add(
        "profile_float_fields",
        [],
        write(
            [],
            SAM.client(),
            [
                ("certs", SAM.cert_id, SAM.key.certificate),
                ("profile", "p", SAM.sign(SHOP_DOC, "p", "shop_profile", profile)),
            ],
        ),
        doc=SHOP_DOC,
    )
    add(
        "profile_bad_url",
        [],
        write(
            [],
            SAM.client(),
            [
                ("certs", SAM.cert_id, SAM.key.certificate),
                ("profile", "p", SAM.sign(SHOP_DOC, "p", "shop_profile", dict(profile, image_url="ftp://x"))),
            ],
        ),
        doc=SHOP_DOC,
    )
    add(
        "newer_version_unknown_field",
        [],
        write(
            [],
            OLGA.client(),
            [
                ("certs", OLGA.cert_id, OLGA.key.certificate),
                ("slots", "k-3", OLGA.sign(SHOP_DOC, "k-3", "slot", dict(slot, colour="red"), version=2)),
            ],
        ),
        doc=SHOP_DOC,
    )
    add(
        "current_version_unknown_field",
        [],
        write(
            [],
            OLGA.client(),
            [
                ("certs", OLGA.cert_id, OLGA.key.certificate),
                ("slots", "k-3", OLGA.sign(SHOP_DOC, "k-3", "slot", dict(slot, colour="red"))),
            ],
        ),
        doc=SHOP_DOC,
    )
    user_doc = "user:alice"
    prof = {"display_name": "Alice", "hlc": hlc(NOW, "alice")}
    add(
        "user_profile_own",
        [],
        write([], a, [cert_a, ("profile", "p", ALICE.sign(user_doc, "p", "user_profile", prof))]),
        doc=user_doc,
    )
    add(
        "user_profile_other",
        [],
        write(
            [],
            b,
            [
                ("certs", BOB.cert_id, BOB.key.certificate),
                ("profile", "p", BOB.sign(user_doc, "p", "user_profile", prof)),
            ],
        ),
        doc=user_doc,
    )
    add(
        "category_by_admin",
        [],
        write(
            [],
            ADA.client(),
            [
                ("certs", ADA.cert_id, ADA.key.certificate),
                (
                    "categories",
                    "hair",
                    ADA.sign(
                        "catalog", "hair", "category", {"id": "hair", "name": "Hair", "hlc": hlc(NOW, "ada")}
                    ),
                ),
            ],
        ),
        doc="catalog",
    )
    cases.extend(_mutants(first, second))
    return cases


def _mutants(first: bytes, second: bytes) -> list[dict[str, Any]]:
    """Seeded byte mutations of real updates (a flipped byte, a cut, a spliced tail): where a Yjs
    decoder and crdt_core's strict reader could disagree about malformed input."""
    rng = random.Random(3)
    out: list[dict[str, Any]] = []
    for n in range(40):
        base = bytearray(rng.choice([first, second]))
        how = rng.choice(["flip", "cut", "splice", "insert"])
        at = rng.randrange(len(base))
        if how == "flip":
            base[at] ^= 1 << rng.randrange(8)
        elif how == "cut":
            del base[at:]
        elif how == "splice":
            base[at : at + rng.randint(1, 4)] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        else:
            base[at:at] = bytes([rng.choice([0x00, 0x7F, 0x80, 0xFF])])
        update = bytes(base)
        state = [] if rng.random() < 0.5 else [first]
        try:
            expect = judge(DAY_DOC, state, update, None)
        except Exception:  # noqa: BLE001 - crdt_core itself failed: not a case both can be held to
            continue
        out.append({"name": f"mutant_{n}_{how}", "note": "seeded mutation", "doc": DAY_DOC,
                    "state": [x.hex() for x in state], "update": update.hex(), "expect": expect})  # fmt: skip
    return out


# --- records: one record against a document (built into an update under the signer's id by the runner)


def _noncanonical(raw: bytes, how: str) -> bytes:
    env = msgpack.unpackb(raw, raw=False)
    if how == "unsorted_fields":
        fields = msgpack.unpackb(env[3], raw=False)
        env[3] = _packb(dict(reversed(list(fields.items()))))
        return _packb(env)
    if how == "array16":
        body = _packb(env)
        return b"\xdc\x00\x06" + body[1:]
    if how == "format1":
        env[0] = 1
        return _packb(env)
    if how == "float_party":
        fields = msgpack.unpackb(env[3], raw=False)
        fields["party"] = float(fields["party"])
        env[3] = canonical_pack(fields)
        return canonical_pack(env)
    raise AssertionError(how)


def record_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []

    def add(
        name: str,
        doc: str,
        root: str,
        key: str,
        value: bytes,
        certs: list[Device],
        signer_client: int,
        context: Sequence[tuple[str, str, bytes]] = (),
        arrival: dict[str, Any] | None = None,
    ) -> None:
        state_entries = [("certs", d.cert_id, d.key.certificate) for d in certs] + list(context)
        state = [write([], 12345, state_entries)] if state_entries else []
        update = write(state, signer_client, [(root, key, value)])
        expect = judge(doc, state, update, arrival)
        if expect["valid"]:
            if root == "certs":
                expect["parsed"] = {"certificate": {"cert_id": key}}
            else:
                env = open_record(value)
                expect["parsed"] = {
                    "format": 2,
                    "schema_version": env.schema_version,
                    "kind": env.kind,
                    "signer": env.signer,
                    "fields_hex": env.fields_raw.hex(),
                }
        case = {
            "name": name,
            "note": "",
            "doc": doc,
            "root": root,
            "key": key,
            "value": value.hex(),
            "certificates": [d.cert_id for d in certs],
            "context": [{"root": r, "key": k, "value": v.hex()} for r, k, v in context],
            "expect": expect,
        }
        if arrival is not None:
            case["arrival"] = arrival
        cases.append(case)

    good = BOB.sign(DAY_DOC, "r-1", "reservation", dict(res_fields("r-1", "bob"), note="window seat"))
    add("reservation", DAY_DOC, "reservations", "r-1", good, [BOB], BOB.client())
    bom = dict(res_fields("r-1", "bob"), note="\ufeff" + "window seat, " * 30)  # long: a decoder's fast path
    add("note_starting_with_a_byte_order_mark", DAY_DOC, "reservations", "r-1",
        BOB.sign(DAY_DOC, "r-1", "reservation", bom), [BOB], BOB.client())  # fmt: skip
    for how in ("unsorted_fields", "array16", "format1", "float_party"):
        add(
            f"noncanonical_{how}",
            DAY_DOC,
            "reservations",
            "r-1",
            _noncanonical(good, how),
            [BOB],
            BOB.client(),
        )
    slot = {
        "id": "s-9",
        "service": "cut",
        "start": "09:00",
        "duration": 30,
        "capacity": 4,
        "active": True,
        "hlc": hlc(NOW, "olga"),
        "weekdays": [4, 0],
    }
    slot_raw = OLGA.sign(SHOP_DOC, "k-1", "slot", slot)
    add("slot_with_weekdays", SHOP_DOC, "slots", "k-1", slot_raw, [OLGA], OLGA.client())
    add("slot_replayed_under_other_key", SHOP_DOC, "slots", "k-2", slot_raw, [OLGA], OLGA.client())
    add(
        "slot_bad_hhmm",
        SHOP_DOC,
        "slots",
        "k-1",
        OLGA.sign(SHOP_DOC, "k-1", "slot", dict(slot, start="24:00")),
        [OLGA],
        OLGA.client(),
    )
    add(
        "slot_capacity_bool",
        SHOP_DOC,
        "slots",
        "k-1",
        OLGA.sign(SHOP_DOC, "k-1", "slot", dict(slot, capacity=True)),
        [OLGA],
        OLGA.client(),
    )
    add("certificate", DAY_DOC, "certs", ALICE.cert_id, ALICE.key.certificate, [], ALICE.client())
    for name, body in _odd_certificate_bodies():
        raw = canonical_pack([1, body, KID, RELAY.sign(b"quickslot-cert-v1\x00" + body)])
        cid = cert_id_of(raw)
        add(f"relay_signed_certificate_{name}", DAY_DOC, "certs", cid, raw, [], client_id_for(cid, 0))
    add(
        "certificate_expired_record",
        DAY_DOC,
        "reservations",
        "r-9",
        ALICE_OLD.sign(DAY_DOC, "r-9", "reservation", res_fields("r-9", "alice")),
        [ALICE_OLD],
        ALICE_OLD.client(),
    )
    res_ctx = ("reservations", "r-1", good)
    ev = {"id": "e-1", "reservation": "r-1", "type": "no_show", "by": "olga", "hlc": hlc(NOW + 1, "olga")}
    add(
        "no_show_by_owner",
        DAY_DOC,
        "events",
        "e-1",
        OLGA.sign(DAY_DOC, "e-1", "event", ev),
        [BOB, OLGA],
        OLGA.client(),
        [res_ctx],
    )
    add(
        "newer_event_type_by_customer",
        DAY_DOC,
        "events",
        "e-1",
        BOB.sign(DAY_DOC, "e-1", "event", dict(ev, type="reschedule", by="bob"), version=2),
        [BOB],
        BOB.client(),
        [res_ctx],
    )
    add(
        "unknown_event_type_current_version",
        DAY_DOC,
        "events",
        "e-1",
        BOB.sign(DAY_DOC, "e-1", "event", dict(ev, type="reschedule", by="bob")),
        [BOB],
        BOB.client(),
        [res_ctx],
    )
    add(
        "reservation_at_arrival_backdated",
        DAY_DOC,
        "reservations",
        "r-1",
        good,
        [BOB],
        BOB.client(),
        arrival={"now_ms": NOW + 2 * 24 * HOUR},
    )
    summary = {
        "id": "s1",
        "name": "Cuts",
        "category": "hair",
        "location": "x",
        "lat": 10,
        "lon": -20.25,
        "active": True,
        "hlc": hlc(NOW, "olga"),
    }
    add(
        "shop_summary_by_owner_int_lat",
        "catalog",
        "shops",
        "s1",
        OLGA.sign("catalog", "s1", "shop_summary", summary),
        [OLGA],
        OLGA.client(),
    )
    add(
        "shop_summary_lat_out_of_range",
        "catalog",
        "shops",
        "s1",
        OLGA.sign("catalog", "s1", "shop_summary", dict(summary, lat=91.5)),
        [OLGA],
        OLGA.client(),
    )
    add(
        "shop_summary_other_shop",
        "catalog",
        "shops",
        "s2",
        OLGA.sign("catalog", "s2", "shop_summary", dict(summary, id="s2")),
        [OLGA],
        OLGA.client(),
    )
    return cases


# --- verdicts ---------------------------------------------------------------------------------------


def _templates(slots: list[dict[str, Any]]) -> dict[str, int]:
    """Capacities on the day from signed slot templates, the way a client reads them."""
    replica = Replica(OLGA.client())
    replica.write(
        [("certs", OLGA.cert_id, OLGA.key.certificate)]
        + [
            (
                "slots",
                s["key"],
                OLGA.sign(SHOP_DOC, s["key"], "slot", {k: v for k, v in s.items() if k != "key"}),
            )
            for s in slots
        ]
    )
    day = dt.date(2027, 1, 15)
    return {sid: t.capacity_on(day) for sid, t in slot_templates(replica, SHOP_DOC).items()}


def _state(
    day_doc: str,
    reservations: list[dict[str, Any]],
    events: list[dict[str, Any]],
    stamps: list[dict[str, Any]],
) -> BookingsState:
    return BookingsState(
        doc=parse_doc_id(day_doc),
        reservations={r["id"]: Reservation(**r) for r in reservations},
        events={e["id"]: StatusEvent(**e) for e in events},
        stamps={s["no"]: Stamp(no=s["no"], reservation=s["reservation"], at=NOW) for s in stamps},
    )


def _claims(verdict: Any) -> dict[str, Any]:
    return {
        rid: {
            "state": c.state.value,
            "position": c.position,
            "stamp": c.stamp,
            "final": c.final,
            "rank": c.rank,
            "holds_seats": c.holds_seats,
            "staff_confirmed": c.staff_confirmed,
        }
        for rid, c in verdict.claims.items()
    }


def _random_day(rng: random.Random, size: int) -> dict[str, Any]:
    slots = []
    n_slots = rng.randint(1, 3)
    for i in range(n_slots):
        for version in range(rng.randint(1, 2)):  # a second template changes capacity
            tmpl: dict[str, Any] = {
                "key": f"k-{i}-{version}",
                "id": f"s{i}",
                "service": "x",
                "start": "10:00",
                "duration": 30,
                "capacity": rng.choice([0, 1, 2, 3, 4, 5, 6, 8]),
                "active": rng.random() > 0.15,
                "hlc": hlc(NOW - 1000 + rng.randint(0, 3), "olga"),
            }
            if rng.random() < 0.3:
                tmpl["weekdays"] = sorted(rng.sample(range(7), rng.randint(1, 4)))
            slots.append(tmpl)
    customers = ["ann", "ben", "cat", "dan", "eve"]
    reservations = [
        {
            "id": f"r{i}",
            # mostly slots with templates; some on a slot this replica knows nothing of (they wait)
            "slot": f"s{rng.randrange(n_slots)}" if rng.random() < 0.85 else "s9",
            "party": rng.randint(1, 5),
            "customer": rng.choice(customers),
            "hlc": hlc(NOW + rng.randint(0, 4), rng.choice(customers)),
        }
        for i in range(size)
    ]
    events = []
    for i in range(rng.randint(0, size)):
        r = rng.choice(reservations)
        kind = rng.choice(["cancel", "decline", "no_show", "confirm"])
        events.append(
            {
                "id": f"e{i}",
                "reservation": r["id"],
                "type": kind,
                "by": r["customer"],
                "hlc": hlc(NOW + 10 + rng.randint(0, 3), "x"),
            }
        )
    nos = list(range(1, size + 2))
    rng.shuffle(nos)
    stamps = [
        {"no": nos[i], "reservation": rng.choice(reservations)["id"]} for i in range(rng.randint(0, size))
    ]
    return {"slots": slots, "reservations": reservations, "events": events, "stamps": stamps}


def verdict_cases() -> list[dict[str, Any]]:
    rng = random.Random(7)
    cases = []
    for n in range(24):
        day = _random_day(rng, rng.randint(1, 9))
        verdict = compute_verdict(
            _state(DAY_DOC, day["reservations"], day["events"], day["stamps"]), _templates(day["slots"])
        )
        cases.append(
            {
                "name": f"random_day_{n}",
                "note": "seeded",
                "day": "2027-01-15",
                **day,
                "expect": {"claims": _claims(verdict), "stamp_prefix": verdict.stamp_prefix},
            }
        )
    return cases


def _history(name: str, note: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One day seen at successive moments (``parts``), with the verdict and diff_verdicts of each."""
    steps = []
    previous = None
    for part in parts:
        verdict = compute_verdict(
            _state(DAY_DOC, part["reservations"], part["events"], part["stamps"]),
            _templates(part["slots"]) if part["slots"] else {},
        )
        changes = [
            {
                "reservation_id": c.reservation_id,
                "customer": c.customer,
                "before": c.before.value if c.before else None,
                "after": c.after.value,
                "kind": c.kind,
            }
            for c in diff_verdicts(previous, verdict)
        ]
        expect = {"claims": _claims(verdict), "stamp_prefix": verdict.stamp_prefix, "changes": changes}
        steps.append({**part, "expect": expect})
        previous = verdict
    return {"name": name, "note": note, "day": "2027-01-15", "steps": steps}


def _capacity_cut_and_raise() -> dict[str, Any]:
    """A cut below a booked party makes it too_large (the claim behind it moves up); a raise restores it."""

    def slot(key: str, capacity: int, ms: int) -> dict[str, Any]:
        return {"key": key, "id": "s0", "service": "x", "start": "10:00", "duration": 30,
                "capacity": capacity, "active": True, "hlc": hlc(ms, "olga")}  # fmt: skip

    res = [
        {"id": "r1", "slot": "s0", "party": 3, "customer": "ann", "hlc": hlc(NOW, "ann")},
        {"id": "r2", "slot": "s0", "party": 2, "customer": "ben", "hlc": hlc(NOW + 1, "ben")},
        {"id": "r3", "slot": "s0", "party": 1, "customer": "cat", "hlc": hlc(NOW - 5, "cat")},
    ]
    stamps = [{"no": 1, "reservation": "r1"}, {"no": 2, "reservation": "r2"}]
    parts = [
        {"slots": [slot("k-a", 4, NOW - 100)], "reservations": res[:2], "events": [], "stamps": stamps},
        {
            "slots": [slot("k-a", 4, NOW - 100), slot("k-b", 2, NOW - 50)],
            "reservations": res[:2],
            "events": [],
            "stamps": stamps,
        },
        {
            "slots": [slot("k-a", 4, NOW - 100), slot("k-b", 2, NOW - 50), slot("k-c", 5, NOW - 10)],
            "reservations": res[:2],
            "events": [],
            "stamps": stamps,
        },  # fmt: skip
        {
            "slots": [slot("k-a", 4, NOW - 100), slot("k-b", 2, NOW - 50), slot("k-c", 5, NOW - 10)],
            "reservations": res,
            "events": [],
            "stamps": stamps,
        },  # fmt: skip
        {
            "slots": [slot("k-a", 4, NOW - 100), slot("k-b", 2, NOW - 50), slot("k-c", 5, NOW - 10)],
            "reservations": res,
            "events": [],
            "stamps": [{"no": 3, "reservation": "r3"}, *stamps],
        },  # fmt: skip
    ]
    return _history(
        "capacity_cut_and_raise",
        "too_large after a cut, back after a raise; a stamp ends a tentative claim",
        parts,
    )


def history_cases() -> list[dict[str, Any]]:
    """Days that grow step by step (records only ever arrive), with each step's diff_verdicts."""
    rng = random.Random(11)
    kinds = ("slots", "reservations", "events", "stamps")
    cases = [_capacity_cut_and_raise()]
    for n in range(8):
        full = _random_day(rng, rng.randint(3, 10))
        parts = []
        cut = [0, 0, 0, 0]
        for _ in range(4):
            cut = [min(len(full[k]), c + rng.randint(0, 3)) for k, c in zip(kinds, cut, strict=True)]
            part = {k: full[k][: cut[i]] for i, k in enumerate(kinds)}
            known = {r["id"] for r in part["reservations"]}
            part["events"] = [e for e in part["events"] if e["reservation"] in known]
            parts.append(part)
        cases.append(_history(f"history_{n}", "seeded", parts))
    return cases


def _signed_day(day: dict[str, Any], rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """A day's records signed into a real shop document and bookings document (not validated:
    readers trust what a replica holds), plus a value no reader can parse."""
    shop = Replica(OLGA.client())
    shop_updates = [
        shop.write(
            [
                (
                    "slots",
                    t["key"],
                    OLGA.sign(SHOP_DOC, t["key"], "slot", {k: v for k, v in t.items() if k != "key"}),
                )
            ]
        )
        for t in day["slots"]
    ]
    shop_updates.append(shop.write([("slots", "junk", b"\x01not a record")]))
    bookings = Replica(ALICE.client())
    entries = [
        ("reservations", r["id"], ALICE.sign(DAY_DOC, r["id"], "reservation", r)) for r in day["reservations"]
    ]
    entries += [("events", e["id"], ALICE.sign(DAY_DOC, e["id"], "event", e)) for e in day["events"]]
    stamp_entries = [
        (
            "stamps",
            stamp_key(st["no"]),
            relay_sign(
                DAY_DOC, stamp_key(st["no"]), {"no": st["no"], "reservation": st["reservation"], "at": NOW}
            ),
        )
        for st in day["stamps"]
    ]
    rng.shuffle(entries)
    day_updates = [bookings.write(entries[i : i + 3]) for i in range(0, len(entries), 3)]
    if stamp_entries:
        day_updates.append(Replica(client_id_for("relay:" + KID, 0)).write(stamp_entries))
    newer = ALICE.sign(
        DAY_DOC, "r-new", "reservation", dict(res_fields("r-new", "alice", slot="s8"), extra=1), version=7
    )
    day_updates.append(bookings.write([("reservations", "r-new", newer)]))
    return shop_updates, day_updates


def document_cases() -> list[dict[str, Any]]:
    """Verdicts read from real documents: crdt_core's reader (slot templates, capacities on the
    day, bookings state, schema version) and verdict over signed records in Yjs updates."""
    from crdt_core.reader import read_bookings, schema_version_of

    rng = random.Random(5)
    cases = []
    for n in range(8):
        day = _random_day(rng, rng.randint(2, 9))
        shop_updates, day_updates = _signed_day(day, rng)
        shop, bookings = Replica(), Replica()
        for upd in shop_updates:
            shop.apply_update(upd)
        for upd in day_updates:
            bookings.apply_update(upd)
        date = dt.date(2027, 1, 15)
        capacities = {sid: t.capacity_on(date) for sid, t in slot_templates(shop, SHOP_DOC).items()}
        verdict = compute_verdict(read_bookings(bookings, DAY_DOC), capacities)
        cases.append(
            {
                "name": f"document_{n}",
                "note": "seeded; one unparseable slot value and one reservation of schema version 7",
                "shop_doc": SHOP_DOC,
                "day_doc": DAY_DOC,
                "day": "2027-01-15",
                "shop_state": [u.hex() for u in shop_updates],
                "day_state": [u.hex() for u in day_updates],
                "expect": {
                    "capacities": capacities,
                    "schema_version": schema_version_of(bookings, parse_doc_id(DAY_DOC)),
                    "claims": _claims(verdict),
                    "stamp_prefix": verdict.stamp_prefix,
                },
            }
        )
    return cases


def _message_expect(data: bytes, max_size: int) -> dict[str, Any]:
    """What crdt_core's decoder makes of ``data``, in the corpus's JSON form."""
    from crdt_core import messages as m
    from crdt_core.errors import CodecError

    try:
        message = m.decode(data, max_size=max_size)
    except CodecError:
        return {"valid": False}
    client = (m.Auth, m.Subscribe, m.ClientUpdate, m.Unsubscribe, m.Hello)

    def as_json(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"bin": value.hex()}
        if isinstance(value, (list, tuple)):
            return [as_json(v) for v in value]
        if isinstance(value, dict):
            return {k: as_json(v) for k, v in value.items()}
        return value

    fields = {n: as_json(getattr(message, n)) for n in message.FIELDS if getattr(message, n) is not None}
    direction = "client" if isinstance(message, client) else "relay"
    return {"valid": True, "t": message.TYPE, "direction": direction, "fields": fields}


def message_cases() -> list[dict[str, Any]]:
    """Wire messages of every type, hand-made oddities and seeded byte mutations, judged by crdt_core."""
    from crdt_core import messages as m

    up, sv = bytes.fromhex("0000"), bytes.fromhex("00")
    valid = [
        m.Auth("tok.en", proof=bytes(64), proof_time=1_800_000_000),
        m.Hello(bytes(16), b"\x93\x01"),
        m.Challenge(bytes(32), b"\x93", bytes(64)),
        m.Subscribe("bookings:s1:2027-01-15", sv),
        m.ClientUpdate("shop:s1", 2**40, up),
        m.Unsubscribe("shop:s1"),
        m.Welcome(
            "alice", "ep-1", "relay 2 ✓", {"max_message": 1 << 20, "rate": 0}, token="t", docs=("a", "b")
        ),
        m.Sync("shop:s1", up, sv, 7, digest=bytes(32)),
        m.RelayUpdate("shop:s1", up, 2**63 - 1),
        m.Ack("shop:s1", 0, 1),
        m.Stamp("shop:s1", 3, up, ((1, "r1"), (2, "r2"))),
        m.Stamped("shop:s1", 4, up, ((5, "r5"),), uid=9),
        m.Stamped("shop:s1", 4, up, (), update=up),
        m.ErrorMessage("some_new_code", "ünïcode reason", doc="shop:s1", uid=3, retry=True),
    ]
    pack = _packb
    odd = {
        "repeated_field": b"\x84\xa1v\x01\xa1t\xa5unsub\xa3doc\xa1a\xa3doc\xa1b",
        "unknown_field_with_odd_keys": pack({"v": 1, "t": "unsub", "doc": "a", "x": {b"k": [1.5, None]}}),
        "unknown_field_with_ext": pack({"v": 1, "t": "unsub", "doc": "a", "x": msgpack.ExtType(5, b"zz")}),
        "known_field_bad_utf8": b"\x83\xa1v\x01\xa1t\xa5unsub\xa3doc\xa2\xff\xfe",
        "nil_optional_field": pack({"v": 1, "t": "auth", "token": "t", "proof": None}),
        "float_version": pack({"v": 1.0, "t": "unsub", "doc": "a"}),
        "bool_version": pack({"v": True, "t": "unsub", "doc": "a"}),
        "server_with_a_tab": pack(
            {"v": 1, "t": "welcome", "user": "u", "epoch": "e", "server": "a\tb", "limits": {}}
        ),
        "server_with_nbsp": pack(
            {"v": 1, "t": "welcome", "user": "u", "epoch": "e", "server": "a\u00a0b", "limits": {}}
        ),
        "limit_name_of_65": pack(
            {"v": 1, "t": "welcome", "user": "u", "epoch": "e", "server": "s", "limits": {"l" * 65: 1}}
        ),
        "stamps_in_an_ack_checked_then_ignored": pack(
            {"v": 1, "t": "ack", "doc": "a", "uid": 1, "seq": 2, "stamps": [[1, "r", 3]]}
        ),
        "stamps_in_an_ack_ignored": pack(
            {"v": 1, "t": "ack", "doc": "a", "uid": 1, "seq": 2, "stamps": [[-1, "r r"]]}
        ),
        "upd_client_type_name": pack({"v": 1, "t": "upd/client", "doc": "a", "uid": 1, "update": up}),
        "err_without_retry": pack({"v": 1, "t": "err", "code": "x", "reason": ""}),
    }
    # written by hand: a limits map with a repeated key, a str that is not UTF-8 in an unknown field
    odd["repeated_limit"] = (
        b"\x86\xa1v\x01\xa1t\xa7welcome\xa4user\xa1u\xa5epoch\xa1e\xa6server\xa1s"
        b"\xa6limits\x82\xa4rate\x01\xa4rate\x02"
    )
    odd["unknown_field_bad_utf8"] = b"\x84\xa1v\x01\xa1t\xa5unsub\xa3doc\xa1a\xa1x\xa2\xff\xfe"
    cases: list[dict[str, Any]] = []
    for msg in valid:
        data = msg.to_wire()
        cases.append(
            {
                "name": f"valid_{msg.TYPE}_{len(cases)}",
                "note": "",
                "hex": data.hex(),
                "expect": _message_expect(data, 1 << 20),
            }
        )
    for name, data in odd.items():
        cases.append({"name": name, "note": "", "hex": data.hex(), "expect": _message_expect(data, 1 << 20)})
    rng = random.Random(17)
    for n in range(60):
        base = bytearray(rng.choice(valid).to_wire())
        at = rng.randrange(len(base))
        how = rng.choice(["flip", "cut", "insert"])
        if how == "flip":
            base[at] ^= 1 << rng.randrange(8)
        elif how == "cut":
            del base[at:]
        else:
            base[at:at] = bytes([rng.choice([0x00, 0xC0, 0xC1, 0xCC, 0xFF, 0x91])])
        data = bytes(base)
        cases.append(
            {
                "name": f"mutant_{n}_{how}",
                "note": "seeded mutation",
                "hex": data.hex(),
                "expect": _message_expect(data, 1 << 20),
            }
        )
    return cases


# --- keys and clocks ----------------------------------------------------------------------------------


def keys_file() -> dict[str, Any]:
    return {
        "now_ms": NOW,
        "trusted_relay_keys": {KID: RELAY.public.hex()},
        "relay_private_key": _seed_hex(1),
        "devices": [
            {
                "name": d.name,
                "user": d.user,
                "private_key": _seed_hex(d.seed),
                "public_key": public_bytes(_key(d.seed)).hex(),
                "certificate": d.key.certificate.hex(),
                "cert_id": d.cert_id,
            }
            for d in DEVICES
        ],
        "client_ids": [
            {"signer": s, "generation": g, "client_id": client_id_for(s, g)}
            for s in [ALICE.cert_id, "relay:" + KID, "relay:é✓"]
            for g in (0, 1, 63)
        ],
    }


def hlc_file() -> dict[str, Any]:
    from crdt_core.errors import SchemaError
    from crdt_core.hlc import Timestamp

    candidates = [
        "1800000000000-000000-n",
        "0000000000000-000000-a",
        "1800000000000-000001-dev_1-x",
        "1800000000000-0-n",
        "18000000000000-000000-n",
        "1800000000000-000000-",
        "1800000000000-000000-n\n",
        "1800000000000-000000-n.x",
        " 1800000000000-000000-n",
        "1800000000000-000000-" + "n" * 65,
    ]
    valid, invalid = [], []
    for text in candidates:
        try:
            Timestamp.parse(text)
            valid.append(text)
        except SchemaError:
            invalid.append(text)
    return {"valid": valid, "invalid": invalid, "ordered_pairs": []}


def write_all(out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "keys.json": keys_file(),
        "hlc.json": hlc_file(),
        "records.json": {"cases": record_cases()},
        "updates.json": {"cases": update_cases()},
        "verdicts.json": {"cases": verdict_cases()},
        "histories.json": {"cases": history_cases()},
        "documents.json": {"cases": document_cases()},
        "messages.json": {"cases": message_cases()},
    }
    counts = {name: len(body.get("cases", [])) for name, body in files.items()}
    files["manifest.json"] = {
        "corpus_format": 1,
        "records_format": 2,
        "schema_version": SCHEMA_VERSION,
        "files": counts,
    }
    for name, body in files.items():
        (out / name).write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return counts


if __name__ == "__main__":
    print(write_all(Path(sys.argv[1])))
