"""Validation as properties: rights hold whoever carries a record, carried records are accepted,
accepted updates keep the schema, and no byte mutation escapes as anything but a ValidationError.

The writer table is restated here as an independent oracle (:func:`may_write`) and compared with
what ``validate_update`` decides, in both directions.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import given, strategies as st

from crdt_core.authoring import Author, write_stamps
from crdt_core.engine import Replica, merge_updates
from crdt_core.errors import ValidationError
from crdt_core.reader import read_map
from crdt_core.records import sign_record
from crdt_core.schema import (
    Category,
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
    stamp_key,
)
from crdt_core.validation import ArrivalPolicy, validate_update
from tests.support.crdt_factory import NOW_MS, World, relay_replica
from tests.support.strategies import DOC, SHOP, assert_refused, fields_of, receive, snapshot

OTHER_SHOP = "shop2"
ACTORS = ("cust", "staff1", "staff2", "owner1", "admin")
_client_ids = itertools.count(1000)


def fresh(replica: Replica | None = None, writer: Author | None = None) -> Replica:
    """A new replica (a copy of ``replica`` when given). It writes under ``writer``'s client id
    when given, else a copy keeps the original's (a phone's author, the relay) and an empty one
    gets an id nobody writes under (a receiver)."""
    if writer is not None:
        cid = writer.client_id()
    elif replica is not None:
        cid = replica.client_id
    else:
        cid = next(_client_ids)
    return replica.copy(cid) if replica is not None else Replica(cid)


@dataclass
class Base:
    world: World
    authors: dict[str, Author]
    phones: dict[str, Replica]
    """Each actor's own replica of the bookings day (holding their certificate)."""
    relay: Replica
    """The day as the relay holds it: one stamped reservation per actor."""
    reservation_of: dict[str, str]
    extra: Author
    """A bystander whose certificate-only update is always valid, to bundle with others."""


@functools.cache
def base() -> Base:
    world = World()
    authors = {
        "cust": world.device("cust"),
        "staff1": world.device("staff1", staff_of=[SHOP]),
        "staff2": world.device("staff2", staff_of=[OTHER_SHOP]),
        "owner1": world.device("owner1", owner_of=[SHOP]),
        "admin": world.device("admin", roles=["admin"]),
    }
    relay = relay_replica(world.relay)
    cache = world.cache()
    phones: dict[str, Replica] = {}
    reservation_of: dict[str, str] = {}
    for name, author in authors.items():
        phones[name] = Replica(author.client_id())
        res, update = author.book(phones[name], DOC, "s1", 1)
        receive(DOC, relay, update, cache)
        reservation_of[name] = res.id
    write_stamps(relay, DOC, world.relay, list(reservation_of.values()), 1, NOW_MS)
    return Base(world, authors, phones, relay, reservation_of, world.device("bystander"))


# --- actions and the oracle -----------------------------------------------------------------------

Action = tuple[str, ...]
actions: st.SearchStrategy[Action] = st.one_of(
    st.tuples(st.just("reservation"), st.sampled_from(["self", "other"])),
    st.tuples(
        st.just("event"),
        st.sampled_from(["cancel", "confirm", "decline", "no_show"]),
        st.sampled_from(ACTORS),  # whose reservation
        st.sampled_from(["self", "other"]),  # whom the event names as its author
    ),
    st.tuples(st.just("stamp")),
    st.tuples(
        st.just("shop"), st.sampled_from(["profile", "slot", "staff"]), st.sampled_from([SHOP, OTHER_SHOP])
    ),
    st.tuples(st.just("category")),
    st.tuples(st.just("summary"), st.sampled_from([SHOP, OTHER_SHOP])),
    st.tuples(st.just("user"), st.sampled_from(["self", "other"])),
)

ROLES: dict[str, dict[str, Any]] = {
    "cust": {"admin": False, "owns": set(), "staffs": set()},
    "staff1": {"admin": False, "owns": set(), "staffs": {SHOP}},
    "staff2": {"admin": False, "owns": set(), "staffs": {OTHER_SHOP}},
    "owner1": {"admin": False, "owns": {SHOP}, "staffs": set()},
    "admin": {"admin": True, "owns": set(), "staffs": set()},
}


def may_write(actor: str, action: Action) -> bool:
    """docs/records.md's writer table, restated."""
    role = ROLES[actor]

    def staffs(shop: str) -> bool:  # owners count as staff of their shop
        return shop in role["staffs"] or shop in role["owns"]

    match action:
        case ("reservation", whose):
            return whose == "self"
        case ("event", kind, target, by):
            if by != "self":
                return False
            if kind == "cancel":
                return target == actor
            return bool(role["admin"]) or staffs(SHOP)
        case ("stamp",):
            return False
        case ("shop", "staff", shop):
            return bool(role["admin"]) or shop in role["owns"]
        case ("shop", _, shop):
            return bool(role["admin"]) or staffs(shop)
        case ("category",):
            return bool(role["admin"])
        case ("summary", shop):
            return bool(role["admin"]) or shop in role["owns"]
        case ("user", whose):
            return whose == "self"
    raise AssertionError(action)


def build(actor: str, action: Action) -> tuple[str, Replica, bytes, TypedRecord]:
    """The doc, the receiving replica, the author's update and the record it carries."""
    b = base()
    author = b.authors[actor]
    other = "zoe" if actor != "zoe" else "cust"
    hlc = author.hlc()
    record: TypedRecord
    match action:
        case ("reservation", whose):
            record = Reservation(
                f"{actor}-r{next(_client_ids)}", "s2", 2, actor if whose == "self" else other, hlc
            )
            doc = DOC
        case ("event", kind, target, by):
            rid = f"{actor}-e{next(_client_ids)}"
            record = StatusEvent(rid, b.reservation_of[target], kind, actor if by == "self" else other, hlc)
            doc = DOC
        case ("stamp",):
            record = Stamp(no=99, reservation=b.reservation_of[actor], at=NOW_MS)
            doc = DOC
        case ("shop", kind, shop):
            doc = f"shop:{shop}"
            if kind == "profile":
                record = ShopProfile("Name", "d", "a", 1.0, 2.0, None, "9-5", hlc)
            elif kind == "slot":
                record = SlotTemplate("s1", "cut", "09:00", 30, 4, None, True, hlc)
            else:
                record = StaffEntry("zoe", "staff", True, hlc)
        case ("category",):
            record, doc = Category("barbers", "Barbers", None, hlc), "catalog"
        case ("summary", shop):
            record, doc = ShopSummary(shop, "Shop", "barbers", "x", 1.0, 2.0, None, True, hlc), "catalog"
        case ("user", whose):
            record, doc = (
                UserProfile("Name", None, None, None, hlc),
                f"user:{actor if whose == 'self' else other}",
            )
        case _:
            raise AssertionError(action)
    key = stamp_key(record.no) if isinstance(record, Stamp) else None
    if doc == DOC:
        receiver, origin = fresh(b.relay), fresh(b.phones[actor])
    else:
        receiver, origin = fresh(), fresh(writer=author)
    return doc, receiver, author.put(origin, doc, [(record, key)]), record


def carried(update: bytes, receiver: Replica, how: str) -> bytes:
    """The same records as they reach the receiver through some carrier."""
    if how == "direct":
        return update
    if how == "naive_carrier":  # a peer that stores whatever it is given, unvalidated, and passes it on
        # it holds the receiver's history: the update continues its author's earlier writes
        carrier = receiver.copy(next(_client_ids))
        carrier.apply_update(update)
        return carrier.diff(receiver.state_vector())
    bystander = base().extra
    cert_only = Replica(bystander.client_id()).write(
        [("certs", bystander.device.cert_id, bystander.device.certificate)]
    )
    return merge_updates([cert_only, update])  # bundled with an unrelated valid change


@given(
    actor=st.sampled_from(ACTORS), action=actions, how=st.sampled_from(["direct", "naive_carrier", "bundled"])
)
def test_a_record_is_accepted_exactly_when_its_author_has_the_right_whoever_carries_it(
    actor: str, action: Action, how: str
) -> None:
    doc, receiver, update, record = build(actor, action)
    incoming = carried(update, receiver, how)
    cache = base().world.cache()
    if may_write(actor, action):
        # no catalogue here, so no arrival rules for a shop (its category must exist at arrival)
        policy = None if isinstance(record, ShopSummary) else ArrivalPolicy(now_ms=NOW_MS)
        result = receive(doc, receiver, incoming, cache, policy)
        (accepted,) = [r for r in result.records if r.root == record.ROOT]
        assert accepted.record == record
        assert accepted.author is not None and accepted.author.user_id == actor
        assert record in read_map(receiver, parse_doc_id(doc), record.ROOT).values()
    else:
        err = assert_refused(doc, receiver, incoming, cache)
        assert err.code == ("relay_only" if action == ("stamp",) else "forbidden"), str(err)


ALL_ACTIONS: list[Action] = [
    *[("reservation", w) for w in ("self", "other")],
    *[
        ("event", k, t, by)
        for k in ("cancel", "confirm", "decline", "no_show")
        for t in ACTORS
        for by in ("self", "other")
    ],
    ("stamp",),
    *[("shop", k, shop) for k in ("profile", "slot", "staff") for shop in (SHOP, OTHER_SHOP)],
    ("category",),
    *[("summary", shop) for shop in (SHOP, OTHER_SHOP)],
    *[("user", w) for w in ("self", "other")],
]


def test_the_writer_table_exhaustively() -> None:
    """Every actor against every action, directly: the property above samples; this covers them all."""
    cache = base().world.cache()
    for actor in ACTORS:
        for action in ALL_ACTIONS:
            doc, receiver, update, _ = build(actor, action)
            try:
                validate_update(doc, receiver, update, cache)
            except ValidationError as exc:
                assert not may_write(actor, action), (actor, action, exc.code)
                assert exc.code in ("forbidden", "relay_only"), (actor, action, exc.code)
            else:
                assert may_write(actor, action), (actor, action)


def test_the_oracle_allows_and_forbids_something_for_every_actor() -> None:
    """Guard against a vacuous oracle: every actor has both allowed and forbidden actions."""
    samples: list[Action] = [
        ("reservation", "self"),
        ("reservation", "other"),
        ("event", "confirm", "cust", "self"),
        ("shop", "staff", SHOP),
        ("category",),
        ("user", "other"),
    ]
    for actor in ACTORS:
        verdicts = {may_write(actor, a) for a in samples}
        assert verdicts == {True, False}


# --- store and forward --------------------------------------------------------------------------


@given(
    bookings=st.lists(st.tuples(st.sampled_from(ACTORS), st.integers(1, 5)), min_size=1, max_size=4),
    chain=st.integers(1, 4),
    by_update=st.booleans(),
)
def test_a_correctly_signed_booking_carried_by_third_parties_is_accepted(
    bookings: list[tuple[str, int]], chain: int, by_update: bool
) -> None:
    """Bookings hop phone -> carrier -> ... -> relay; every hop validates; authorship never changes."""
    b = base()
    cache = b.world.cache()
    written: dict[str, tuple[str, bytes]] = {}
    # Carriers handed a bare update must already hold the day (and so the author's certificate, which
    # the author's device wrote with its first record); carriers synced by state vector can start empty.
    hops = [fresh(b.relay) if by_update else fresh() for _ in range(chain)]
    relay = fresh(b.relay)
    phones: dict[str, Replica] = {}
    for actor, party in bookings:
        # one replica per device: a device writes under one client id (crdt_core.clientids)
        phone = phones.setdefault(actor, fresh(b.phones[actor]))
        res, update = b.authors[actor].book(phone, DOC, "s2", party)
        raw = phone.get_bytes("reservations", res.id)
        assert raw is not None
        written[res.id] = (actor, raw)
        # the first carrier gets it from the phone, by update or by state-vector diff
        first = update if by_update else phone.diff(hops[0].state_vector())
        receive(DOC, hops[0], first, cache)
    for src, dst in itertools.pairwise(hops):
        receive(DOC, dst, src.diff(dst.state_vector()), cache)
    result = receive(DOC, relay, hops[-1].diff(relay.state_vector()), cache, ArrivalPolicy(now_ms=NOW_MS))
    got = {r.key: r for r in result.records if r.root == "reservations"}
    assert set(got) == set(written)
    for rid, (actor, raw) in written.items():
        author = got[rid].author
        assert author is not None and author.user_id == actor
        assert relay.get_bytes("reservations", rid) == raw


# --- accepted updates keep the schema ---------------------------------------------------------------

WRITER_OF: dict[type[TypedRecord], tuple[str, str]] = {
    Category: ("admin", "catalog"),
    ShopSummary: ("admin", "catalog"),
    ShopProfile: ("staff1", f"shop:{SHOP}"),
    SlotTemplate: ("owner1", f"shop:{SHOP}"),
    StaffEntry: ("owner1", f"shop:{SHOP}"),
    Reservation: ("cust", DOC),
    StatusEvent: ("staff1", DOC),
    UserProfile: ("cust", "user:cust"),
}


@st.composite
def authorised_records(draw: st.DrawFn) -> list[tuple[type[TypedRecord], dict[str, Any]]]:
    kinds = draw(st.lists(st.sampled_from(sorted(WRITER_OF, key=lambda c: c.KIND)), min_size=1, max_size=5))
    return [(cls, draw(fields_of(cls))) for cls in kinds]


def _as_written(cls: type[TypedRecord], fields: dict[str, Any], author: Author) -> TypedRecord:
    """The random fields, with what the writer rules pin down set to what this author may write."""
    record = cls.from_fields(fields)
    pinned: dict[str, Any] = {"hlc": author.hlc()}
    if isinstance(record, Reservation):
        pinned["customer"] = author.user_id
    if isinstance(record, StatusEvent):  # written by staff: any type but a customer's cancel
        pinned |= {"by": author.user_id, "reservation": base().reservation_of["cust"]}
        if record.type == "cancel":
            pinned["type"] = "confirm"
    return replace(record, **pinned)


@given(authorised_records())
def test_accepted_updates_never_break_the_schema(
    records: list[tuple[type[TypedRecord], dict[str, Any]]],
) -> None:
    """Whatever random (valid) fields an authorised writer signs, every replica reads back exactly that."""
    b = base()
    cache = b.world.cache()
    replicas: dict[str, Replica] = {}
    origins: dict[str, Replica] = {}
    expected: dict[tuple[str, str, str], TypedRecord] = {}
    for cls, fields in records:
        actor, doc = WRITER_OF[cls]
        author = b.authors[actor]
        record = _as_written(cls, fields, author)
        if doc == DOC:
            replicas.setdefault(doc, fresh(b.relay))
            origin = origins.setdefault(f"{doc}/{actor}", fresh(b.phones[actor]))
        else:
            replicas.setdefault(doc, fresh())
            origin = origins.setdefault(f"{doc}/{actor}", fresh(writer=author))
        key = None if cls.KEY_FIELD else f"k{len(expected)}"
        if cls.KEY_FIELD:
            key_field: dict[str, Any] = {cls.KEY_FIELD: f"id{len(expected)}"}
            record = replace(record, **key_field)
        update = author.put(origin, doc, [(record, key)])
        receive(doc, replicas[doc], update, cache)
        expected[(doc, cls.ROOT, key or f"id{len(expected)}")] = record
    for (doc, root, key), record in expected.items():
        got = read_map(replicas[doc], parse_doc_id(doc), root)
        assert got[key] == record
        assert got[key].to_fields() == record.to_fields()
    for doc, replica in replicas.items():
        parsed = sum(
            len(read_map(replica, parse_doc_id(doc), root)) for root in parse_doc_id(doc).roots - {"certs"}
        )
        raw = sum(len(dict(replica.items(root))) for root in parse_doc_id(doc).roots - {"certs"})
        assert parsed == raw  # nothing in the document fails to parse
        # and the whole state re-validates from scratch, as a new peer would receive it
        assert not validate_update(doc, Replica(7), replica.encode_state(), cache).noop


#: A value of the wrong type for each field type of ``crdt_core.schema``.
WRONG_TYPE: dict[str, object] = {
    "str": 7,
    "url": ["http://x"],
    "id": 7,
    "hlc": ["not", "a", "clock"],
    "hhmm": 930,
    "int": "7",
    "float": "1.5",
    "bool": 1,
    "weekdays": "mon",
    "enum": True,
}


@given(
    st.sampled_from(sorted(WRITER_OF, key=lambda c: c.KIND)).flatmap(
        lambda c: st.tuples(st.just(c), fields_of(c))
    ),
    st.data(),
)
def test_schema_invalid_fields_are_refused_by_validation(
    pair: tuple[type[TypedRecord], dict[str, Any]], data: st.DataObject
) -> None:
    """A record an authorised writer correctly signs, but with one field of the wrong type, is refused
    as ``schema`` and leaves the receiver unchanged."""
    cls, fields = pair
    actor, doc = WRITER_OF[cls]
    b = base()
    author = b.authors[actor]
    spec = data.draw(st.sampled_from([f for f in cls.FIELDS if f.name != cls.KEY_FIELD]))
    wrong = {**_as_written(cls, fields, author).to_fields(), spec.name: WRONG_TYPE[spec.type]}
    key = str(wrong["id"]) if cls.KEY_FIELD else "k1"
    raw = sign_record(doc, key, cls.KIND, wrong, author.device, 1)
    receiver = fresh(b.relay) if doc == DOC else fresh()
    cert = (
        []
        if receiver.has_key("certs", author.device.cert_id)
        else [("certs", author.device.cert_id, author.device.certificate)]
    )
    update = Replica(author.client_id(1)).write([*cert, (cls.ROOT, key, raw)])
    assert assert_refused(doc, receiver, update, b.world.cache()).code == "schema"


# --- mutated bytes ------------------------------------------------------------------------------------

Mutation = tuple[str, int, bytes]
mutations: st.SearchStrategy[Mutation] = st.tuples(
    # length-preserving edits twice as likely: they get past the decoder into records and signatures
    st.sampled_from(["flip", "flip", "set", "set", "insert", "delete", "truncate", "duplicate"]),
    st.integers(0, 10**6),
    st.binary(min_size=1, max_size=8),
)


def mutate(data: bytes, how: Mutation) -> bytes:
    op, pos, chunk = how
    buf = bytearray(data)
    i = pos % len(buf)
    if op == "flip":
        buf[i] ^= 1 << (chunk[0] % 8)
    elif op == "set":
        buf[i] = chunk[0]
    elif op == "insert":
        buf[i:i] = chunk
    elif op == "delete":
        del buf[i : i + len(chunk)]
    elif op == "truncate":
        del buf[i:]
    else:
        buf[i:i] = buf[i : i + 1 + chunk[0] % 32]
    return bytes(buf)


@functools.cache
def mutation_sources() -> tuple[tuple[str, bytes], ...]:
    """Valid updates to mutate: a booking with its certificate, a stamp, a staff event, a shop edit."""
    b = base()
    phone = fresh(b.phones["cust"])
    _, booking = b.authors["cust"].book(phone, DOC, "s1", 2)
    scratch = fresh(b.relay)
    _, stamps = write_stamps(scratch, DOC, b.world.relay, [b.reservation_of["cust"]], 99, NOW_MS)
    _, event = b.authors["staff1"].event(fresh(b.phones["staff1"]), DOC, b.reservation_of["cust"], "no_show")
    newcomer = b.world.device("newcomer")
    _, with_cert = newcomer.book(fresh(writer=newcomer), DOC, "s2", 1)
    slot = SlotTemplate("s1", "cut", "09:00", 30, 4, (1, 2), True, b.authors["owner1"].hlc())
    shop = b.authors["owner1"].put(fresh(writer=b.authors["owner1"]), f"shop:{SHOP}", [(slot, None)])
    return (("b", booking), ("b", stamps), ("b", event), ("b", with_cert), ("s", shop))


@given(
    source=st.integers(0, 4),
    edits=st.lists(st.lists(mutations, min_size=1, max_size=3), min_size=1, max_size=12),
)
def test_mutated_updates_raise_only_validation_errors_and_leave_the_replica_unchanged(
    source: int, edits: list[list[Mutation]]
) -> None:
    kind, original = mutation_sources()[source]
    doc = DOC if kind == "b" else f"shop:{SHOP}"
    b = base()
    cache = b.world.cache()
    receiver = fresh(b.relay) if kind == "b" else fresh()
    for chain in edits:
        data = original
        for how in chain:
            if data:
                data = mutate(data, how)
        before = snapshot(receiver)
        try:
            result = validate_update(doc, receiver, data, cache)
        except ValidationError:
            assert snapshot(receiver) == before
            continue
        # Accepted (a mutation can keep an update valid, e.g. by changing only its client id):
        # then it must apply cleanly and leave a document that re-validates from scratch.
        assert snapshot(receiver) == before
        receiver.apply_update(data)
        assert not validate_update(doc, Replica(7), receiver.encode_state(), cache).noop
        if result.noop:
            assert snapshot(receiver)[0] == before[0]
