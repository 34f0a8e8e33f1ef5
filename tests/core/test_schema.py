"""The domain schema: document ids, typed records, schema versions and the enum rule."""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import pytest
from hypothesis import given, strategies as st

from client.local.projections import SlotRow
from crdt_core.engine import Replica
from crdt_core.errors import SchemaError, ValidationError
from crdt_core.reader import read_map, schema_version_of
from crdt_core.records import open_record, sign_record
from crdt_core.schema import (
    SCHEMA_VERSION,
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
    capacity_on,
    parse_day,
    parse_doc_id,
    parse_record,
    record_class,
    stamp_key,
)
from crdt_core.validation import validate_update
from tests.support.crdt_factory import World
from tests.support.strategies import DOC, FIELDS, fields_of, receive, record_fields

NEWER = SCHEMA_VERSION + 1
R = TypeVar("R", bound=TypedRecord)


def typed(cls: type[R], fields: dict[str, Any], version: int = SCHEMA_VERSION) -> R:
    record = cls.from_fields(fields, schema_version=version)
    assert isinstance(record, cls)
    return record


# --- document ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("catalog", DocId(DocKind.CATALOG)),
        ("shop:shop1", DocId(DocKind.SHOP, shop_id="shop1")),
        ("shop:A-b_9", DocId(DocKind.SHOP, shop_id="A-b_9")),
        ("shop:" + "x" * 64, DocId(DocKind.SHOP, shop_id="x" * 64)),
        ("user:u1", DocId(DocKind.USER, user_id="u1")),
        ("bookings:shop1:2027-01-15", DocId(DocKind.BOOKINGS, shop_id="shop1", day=dt.date(2027, 1, 15))),
        ("bookings:s:2024-02-29", DocId(DocKind.BOOKINGS, shop_id="s", day=dt.date(2024, 2, 29))),
    ],
)
def test_doc_ids_accepted(text: str, expected: DocId) -> None:
    parsed = parse_doc_id(text)
    assert parsed == expected
    assert str(parsed) == text
    assert parsed.roots >= {"certs"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Catalog",
        "catalog:",
        "catalog:x",
        "shop",
        "shop:",
        "shop:a:b",
        "shop:a b",
        "shop:" + "x" * 65,
        "shop:caf\u00e9",
        "user:",
        "user:a/b",
        "users:a",
        "bookings:shop1",
        "bookings:shop1:",
        "bookings::2027-01-15",
        "bookings:shop1:2027-1-15",
        "bookings:shop1:2027-02-30",
        "bookings:shop1:2027-13-01",
        "bookings:shop1:20270115",
        "bookings:shop1:2027-01-15:x",
        "bookings:shop1:2027-01-15\n",
        "bookings:shop1:\u0662\u0660\u0662\u0667-01-15",  # non-ASCII digits
        "thing:x",
        "x" * 201,
    ],
)
def test_doc_ids_refused(text: str) -> None:
    with pytest.raises(SchemaError):
        parse_doc_id(text)


@pytest.mark.parametrize("value", [None, 1, b"catalog", ["catalog"]])
def test_doc_id_must_be_a_string(value: object) -> None:
    with pytest.raises(SchemaError):
        parse_doc_id(value)


def test_doc_id_constructors_agree_with_the_parser() -> None:
    assert DocId.catalog() == parse_doc_id("catalog")
    assert DocId.shop("s1") == parse_doc_id("shop:s1")
    assert DocId.user("u1") == parse_doc_id("user:u1")
    assert DocId.bookings("s1", dt.date(2027, 1, 2)) == DocId.bookings("s1", "2027-01-02")
    with pytest.raises(SchemaError):
        DocId.shop("bad id")


def test_each_doc_kind_holds_its_own_maps() -> None:
    assert parse_doc_id("catalog").roots == {"certs", "categories", "shops"}
    assert parse_doc_id("shop:s").roots == {"certs", "profile", "slots", "staff"}
    assert parse_doc_id("bookings:s:2027-01-01").roots == {"certs", "reservations", "events", "stamps"}
    assert parse_doc_id("user:u").roots == {"certs", "profile", "days"}
    with pytest.raises(SchemaError):
        record_class(DocKind.BOOKINGS, "profile")


SAMPLE_DOC = {
    DocKind.CATALOG: "catalog",
    DocKind.SHOP: "shop:s",
    DocKind.BOOKINGS: DOC,
    DocKind.USER: "user:u",
}
DOC_KIND_OF = {
    record_class(kind, root): kind
    for kind, doc in SAMPLE_DOC.items()
    for root in parse_doc_id(doc).roots - {"certs"}
}


def normalised(cls: type[TypedRecord], fields: dict[str, Any]) -> dict[str, Any]:
    """What a record's ``to_fields`` must give back: floats as floats, weekdays sorted and unique."""
    out = dict(fields)
    for spec in cls.FIELDS:
        if spec.name in out and spec.type == "float":
            out[spec.name] = float(out[spec.name])
        if spec.name in out and spec.type == "weekdays":
            out[spec.name] = sorted(set(out[spec.name]))
    return out


def test_every_record_kind_has_a_field_strategy() -> None:
    assert set(DOC_KIND_OF) == set(FIELDS)


@given(record_fields)
def test_records_round_trip_through_to_fields_and_from_fields(
    pair: tuple[type[TypedRecord], dict[str, Any]],
) -> None:
    cls, fields = pair
    record = cls.from_fields(fields)
    assert isinstance(record, cls)
    assert record.to_fields() == normalised(cls, fields)
    again = cls.from_fields(record.to_fields())
    assert again == record
    assert again.to_fields() == record.to_fields()
    assert record.extra == {}


@given(record_fields)
def test_records_round_trip_through_signed_bytes(pair: tuple[type[TypedRecord], dict[str, Any]]) -> None:
    cls, fields = pair
    record = cls.from_fields(fields)
    world = World()
    author = world.device("u1")
    key = stamp_key(record.no) if isinstance(record, Stamp) else (getattr(record, "id", None) or "k1")
    signer = world.relay if isinstance(record, Stamp) else author.device
    raw = sign_record(DOC, key, cls.KIND, record.to_fields(), signer, SCHEMA_VERSION)
    env = open_record(raw)
    assert parse_record(DOC_KIND_OF[cls], cls.ROOT, key, env.kind, env.fields, env.schema_version) == record


# --- unknown fields and schema versions ------------------------------------------------------------


@given(
    fields_of(Reservation),
    st.dictionaries(
        st.from_regex(r"x_[a-z]{1,8}", fullmatch=True), st.integers() | st.text(max_size=20), min_size=1
    ),
)
def test_unknown_fields_are_preserved_from_a_newer_version_and_refused_in_the_current(
    fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    with_extra = {**fields, **extra}
    newer = Reservation.from_fields(with_extra, schema_version=NEWER)
    assert dict(newer.extra) == extra
    assert newer.to_fields() == with_extra
    assert Reservation.from_fields(newer.to_fields(), schema_version=NEWER).extra == extra
    with pytest.raises(SchemaError, match="unknown fields"):
        Reservation.from_fields(with_extra, schema_version=SCHEMA_VERSION)


def test_a_newer_record_keeps_its_unknown_fields_through_a_document_hop() -> None:
    """The signed bytes are never re-encoded: a field this version does not know survives replication."""
    world = World()
    alice = world.device("alice")
    origin = Replica(alice.client_id())
    fields = {
        "id": "r1",
        "slot": "s1",
        "party": 2,
        "customer": "alice",
        "hlc": alice.hlc(),
        "deposit_cents": 1500,
    }
    raw = sign_record(DOC, "r1", "reservation", fields, alice.device, NEWER)
    update = origin.write(
        [("certs", alice.device.cert_id, alice.device.certificate), ("reservations", "r1", raw)]
    )
    carrier, relay = Replica(2), Replica(3)
    receive(DOC, carrier, update, world.cache())
    receive(DOC, relay, carrier.diff(relay.state_vector()), world.cache())
    assert relay.get_bytes("reservations", "r1") == raw
    (record,) = read_map(relay, parse_doc_id(DOC), "reservations").values()
    assert isinstance(record, Reservation)
    assert record.extra == {"deposit_cents": 1500}
    assert record.schema_version == NEWER
    # Stored, but a version this replica does not know never raises the document's version.
    assert schema_version_of(relay, parse_doc_id(DOC)) == SCHEMA_VERSION


def test_the_same_unknown_field_under_the_current_version_is_refused_by_validation() -> None:
    world = World()
    alice = world.device("alice")
    fields = {
        "id": "r1",
        "slot": "s1",
        "party": 2,
        "customer": "alice",
        "hlc": alice.hlc(),
        "deposit_cents": 1,
    }
    raw = sign_record(DOC, "r1", "reservation", fields, alice.device, SCHEMA_VERSION)
    update = Replica(alice.client_id()).write(
        [("certs", alice.device.cert_id, alice.device.certificate), ("reservations", "r1", raw)]
    )
    with pytest.raises(ValidationError) as info:
        validate_update(DOC, Replica(2), update, world.cache())
    assert info.value.code == "schema"


# --- the enum rule --------------------------------------------------------------------------------


def test_unknown_enum_values_are_accepted_only_from_a_newer_version() -> None:
    base = {"id": "e1", "reservation": "r1", "by": "u1", "hlc": "1800000000000-000000-u1"}
    newer = typed(StatusEvent, {**base, "type": "reschedule"}, NEWER)
    assert newer.type == "reschedule"
    with pytest.raises(SchemaError):
        StatusEvent.from_fields({**base, "type": "reschedule"}, schema_version=SCHEMA_VERSION)
    with pytest.raises(SchemaError):
        StaffEntry.from_fields({"user": "u", "role": "boss", "active": True, "hlc": base["hlc"]})
    assert (
        typed(StaffEntry, {"user": "u", "role": "boss", "active": True, "hlc": base["hlc"]}, NEWER).role
        == "boss"
    )


@pytest.mark.parametrize("version", [SCHEMA_VERSION, NEWER])
@pytest.mark.parametrize("value", [3, None, "x" * 33, b"cancel", True])
def test_an_enum_value_must_be_short_text_in_every_version(version: int, value: object) -> None:
    base = {"id": "e1", "reservation": "r1", "by": "u1", "hlc": "1800000000000-000000-u1"}
    with pytest.raises(SchemaError):
        StatusEvent.from_fields({**base, "type": value}, schema_version=version)


# --- wrong values ---------------------------------------------------------------------------------

GOOD_RES = {"id": "r1", "slot": "s1", "party": 2, "customer": "u1", "hlc": "1800000000000-000000-u1"}
GOOD_SLOT = {
    "id": "s1",
    "service": "cut",
    "start": "09:30",
    "duration": 30,
    "capacity": 3,
    "active": True,
    "hlc": "1800000000000-000000-u1",
}
GOOD_SHOP = {
    "id": "shop1",
    "name": "n",
    "category": "c",
    "location": "l",
    "lat": 1.5,
    "lon": 2,
    "active": True,
    "hlc": "1800000000000-000000-u1",
}


@pytest.mark.parametrize("version", [SCHEMA_VERSION, NEWER])
@pytest.mark.parametrize(
    ("cls", "good", "name", "bad"),
    [
        (Reservation, GOOD_RES, "party", "2"),
        (Reservation, GOOD_RES, "party", True),
        (Reservation, GOOD_RES, "party", 2.0),
        (Reservation, GOOD_RES, "party", 0),
        (Reservation, GOOD_RES, "party", 101),
        (Reservation, GOOD_RES, "customer", "a:b"),
        (Reservation, GOOD_RES, "customer", ""),
        (Reservation, GOOD_RES, "customer", "x" * 65),
        (Reservation, GOOD_RES, "slot", 7),
        (Reservation, GOOD_RES, "hlc", "yesterday"),
        (Reservation, GOOD_RES, "hlc", "\u0661" * 13 + "-000000-u1"),  # non-ASCII digits
        (Reservation, GOOD_RES, "note", "x" * 501),
        (Reservation, GOOD_RES, "note", None),
        (SlotTemplate, GOOD_SLOT, "active", 1),
        (SlotTemplate, GOOD_SLOT, "capacity", -1),
        (SlotTemplate, GOOD_SLOT, "capacity", 10_001),
        (SlotTemplate, GOOD_SLOT, "duration", 0),
        (SlotTemplate, GOOD_SLOT, "start", "24:00"),
        (SlotTemplate, GOOD_SLOT, "start", "9:30"),
        (SlotTemplate, GOOD_SLOT, "start", "1\u0669:3\u0660"),  # non-ASCII digits
        (SlotTemplate, GOOD_SLOT, "weekdays", [7]),
        (SlotTemplate, GOOD_SLOT, "weekdays", [True]),
        (SlotTemplate, GOOD_SLOT, "weekdays", [0, 1, 2, 3, 4, 5, 6, 0]),
        (SlotTemplate, GOOD_SLOT, "weekdays", "mon"),
        (ShopSummary, GOOD_SHOP, "lat", "1.5"),
        (ShopSummary, GOOD_SHOP, "lat", True),
        (ShopSummary, GOOD_SHOP, "lat", float("nan")),
        (ShopSummary, GOOD_SHOP, "lat", 90.5),
        (ShopSummary, GOOD_SHOP, "lon", float("inf")),
        (ShopSummary, GOOD_SHOP, "rating", 5.5),
        (ShopSummary, GOOD_SHOP, "active", "yes"),
    ],
)
def test_wrong_values_are_refused(
    version: int, cls: type[TypedRecord], good: dict[str, Any], name: str, bad: object
) -> None:
    cls.from_fields(good, schema_version=version)  # the baseline is valid
    with pytest.raises(SchemaError):
        cls.from_fields({**good, name: bad}, schema_version=version)


@pytest.mark.parametrize("name", ["id", "slot", "party", "customer", "hlc"])
def test_required_fields(name: str) -> None:
    with pytest.raises(SchemaError, match="required"):
        Reservation.from_fields({k: v for k, v in GOOD_RES.items() if k != name})


def test_urls_must_be_http() -> None:
    base = {k: v for k, v in GOOD_SHOP.items() if k not in ("id", "category", "location", "active")}
    base |= {"description": "", "address": "", "hours": ""}
    assert typed(ShopProfile, {**base, "image_url": "https://x/y.png"}).image_url == "https://x/y.png"
    with pytest.raises(SchemaError):
        ShopProfile.from_fields({**base, "image_url": "javascript:alert(1)"})


# --- records in their maps ------------------------------------------------------------------------


def test_a_record_must_sit_under_the_key_its_id_demands() -> None:
    assert parse_record(
        DocKind.BOOKINGS, "reservations", "r1", "reservation", GOOD_RES, 1
    ) == Reservation.from_fields(GOOD_RES)
    with pytest.raises(SchemaError):
        parse_record(DocKind.BOOKINGS, "reservations", "r2", "reservation", GOOD_RES, 1)
    stamp = {"no": 7, "reservation": "r1", "at": 0}
    assert parse_record(DocKind.BOOKINGS, "stamps", stamp_key(7), "stamp", stamp, 1) == Stamp(7, "r1", 0)
    for key in ("7", stamp_key(8), "0000000000000007 "):
        with pytest.raises(SchemaError):
            parse_record(DocKind.BOOKINGS, "stamps", key, "stamp", stamp, 1)


def test_a_record_must_be_of_its_maps_kind() -> None:
    with pytest.raises(SchemaError):
        parse_record(DocKind.BOOKINGS, "events", "r1", "reservation", GOOD_RES, 1)
    with pytest.raises(SchemaError):
        parse_record(DocKind.SHOP, "reservations", "r1", "reservation", GOOD_RES, 1)
    with pytest.raises(SchemaError):
        parse_record(DocKind.SHOP, "slots", "bad key", "slot", GOOD_SLOT, 1)


def test_slot_capacity_on_a_day() -> None:
    slot = typed(SlotTemplate, {**GOOD_SLOT, "weekdays": [0, 2]})
    monday, tuesday = dt.date(2027, 1, 11), dt.date(2027, 1, 12)
    assert slot.capacity_on(monday) == 3
    assert slot.capacity_on(tuesday) == 0
    assert typed(SlotTemplate, {**GOOD_SLOT, "active": False}).capacity_on(monday) == 0
    assert typed(SlotTemplate, GOOD_SLOT).capacity_on(tuesday) == 3


@given(
    day=st.dates(),
    capacity=st.integers(0, 10_000),
    weekdays=st.none() | st.lists(st.integers(0, 6), unique=True).map(lambda d: tuple(sorted(d))),
    active=st.booleans(),
)
def test_the_clients_slot_rows_offer_the_seats_the_core_rule_does(
    day: dt.date, capacity: int, weekdays: tuple[int, ...] | None, active: bool
) -> None:
    """The client's projection rows once carried their own copy of the rule; now they call it."""
    template = SlotTemplate(
        id="s", service="cut", start="09:00", duration=30, capacity=capacity, weekdays=weekdays,
        active=active, hlc="0000000000001-000000-a",
    )  # fmt: skip
    row = SlotRow("shop", "s", "cut", "09:00", 30, capacity, weekdays, active)
    seats = capacity_on(day, capacity, weekdays, active)
    assert template.capacity_on(day) == row.capacity_on(day) == seats
    assert seats == (capacity if active and (weekdays is None or day.weekday() in weekdays) else 0)


@pytest.mark.parametrize("text", ["20270111", "2027-W02-1", "2027-1-11", "2027-02-30", " 2027-01-11", None])
def test_a_day_has_one_spelling(text: object) -> None:
    """``date.fromisoformat`` alone (the client's and the CLI's former copies) took the first two."""
    with pytest.raises(SchemaError):
        parse_day(text)
    assert parse_day("2027-01-11") == dt.date(2027, 1, 11)
