"""The domain rules of schema version 2 in crdt_core: no control characters in text, a booking's day
within its HLC's reach, one active claim per customer per slot (``duplicate``, the relay's
``duplicate_booking``), a shop's category must exist at arrival, staff rights from the shop's staff
list. The conformance corpus holds the same rules as vectors; these tests drive the Python API."""

from __future__ import annotations

import pytest

from crdt_core.engine import Replica
from crdt_core.errors import SchemaError, ValidationError
from crdt_core.reader import read_bookings, shop_staff
from crdt_core.records import open_record
from crdt_core.repeats import refuse_repeat_bookings
from crdt_core.schema import (
    Category,
    DocId,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    has_control_characters,
    parse_record,
    per_customer_limits,
)
from crdt_core.validation import ArrivalPolicy, Rights, day_in_range, may_write, validate_update
from crdt_core.verdict import ClaimState, compute_verdict
from tests.support.crdt_factory import NOW_MS, World, write_through

SHOP = "s1"
DAY = "2027-01-15"  # NOW_MS is 2027-01-15T08:00Z
DOC = f"bookings:{SHOP}:{DAY}"
SHOP_DOC = f"shop:{SHOP}"


@pytest.mark.parametrize(
    "text", ["a\x1b[2Jb", "bell\x07", "two\nlines", "cr\r", "del\x7f", "csi\x9b", "nel\x85"]
)
def test_one_line_text_refuses_terminal_control_characters(text: str) -> None:
    assert has_control_characters(text)
    fields = {"id": "c1", "name": text, "hlc": f"{NOW_MS}-000000-ada"}
    with pytest.raises(SchemaError, match="control character"):
        Category.from_fields(fields)


def test_a_description_may_hold_line_feeds_only() -> None:
    base = ShopProfile("Shop", "", "addr", 0.0, 0.0, None, "9-5", f"{NOW_MS}-000000-sam").to_fields()
    ok = ShopProfile.from_fields({**base, "description": "line one\nline two"})
    assert isinstance(ok, ShopProfile) and ok.description == "line one\nline two"
    with pytest.raises(SchemaError):
        ShopProfile.from_fields({**base, "description": "tab\there"})
    assert not has_control_characters("Café ✂ ünïcode")


def test_a_bookings_day_lies_between_the_day_before_its_hlc_and_366_days_after() -> None:
    import datetime as dt

    at = f"{NOW_MS}-000000-bob"
    assert day_in_range(dt.date(2027, 1, 14), at) and day_in_range(dt.date(2028, 1, 16), at)
    assert not day_in_range(dt.date(2027, 1, 13), at)
    assert not day_in_range(dt.date(2028, 1, 17), at)
    assert not day_in_range(dt.date(2020, 1, 1), at) and not day_in_range(dt.date(9999, 12, 31), at)


@pytest.mark.parametrize(("day", "ok"), [("2020-01-01", False), ("9999-12-31", False), ("2027-02-01", True)])
def test_validation_refuses_a_booking_for_a_far_day(day: str, ok: bool) -> None:
    world = World()
    bob = world.device("bob")
    doc = f"bookings:{SHOP}:{day}"
    _, update = bob.book(Replica(bob.client_id()), doc, "s-9")
    if ok:
        assert validate_update(doc, Replica(1), update, world.cache()).new_reservations
    else:
        with pytest.raises(ValidationError) as err:
            validate_update(doc, Replica(1), update, world.cache())
        assert err.value.code == "day_out_of_range"


def test_per_customer_is_a_field_of_schema_version_2_and_authors_sign_the_lowest_version() -> None:
    world = World()
    sam = world.device("sam", staff_of=[SHOP])
    plain = SlotTemplate("s-9", "Cut", "09:00", 30, 4, None, True, sam.hlc())
    more = SlotTemplate("s-9", "Class", "18:00", 60, 12, None, True, sam.hlc(), per_customer=3)
    assert plain.needed_version() == 1 and more.needed_version() == 2
    shop = Replica(1)
    write_through(shop, sam.client_id(), lambda r: sam.put(r, SHOP_DOC, [(plain, "k1"), (more, "k2")]))
    assert open_record(shop.get_bytes("slots", "k1") or b"").schema_version == 1
    assert open_record(shop.get_bytes("slots", "k2") or b"").schema_version == 2
    with pytest.raises(SchemaError, match="unknown fields"):
        parse_record(DocId.shop(SHOP).kind, "slots", "k", "slot", more.to_fields(), 1)
    assert per_customer_limits({"s-9": more, "s-1": plain}) == {"s-9": 3, "s-1": 1}


def test_a_repeat_booking_is_duplicate_holds_nothing_and_the_relay_refuses_it() -> None:
    world = World()
    ann, ben = world.device("ann"), world.device("ben")
    day = Replica(1)
    first = write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-9")[0])
    again, update = ann.book(day.copy(ann.client_id()), DOC, "s-9")
    with pytest.raises(ValidationError) as err:
        refuse_repeat_bookings(day, [again], {}, {})
    assert err.value.code == "duplicate_booking"
    refuse_repeat_bookings(day, [again], {"s-9": 2}, {})  # the slot allows two
    day.apply_update(update)  # a peer carried it anyway: the verdict decides
    write_through(day, ben.client_id(), lambda r: ben.book(r, DOC, "s-9"))
    verdict = compute_verdict(read_bookings(day, DOC), {"s-9": 2})
    states = {
        c.customer + ("-again" if c.reservation_id == again.id else ""): c.state
        for c in verdict.claims.values()
    }
    assert states == {
        "ann": ClaimState.CONFIRMED,
        "ann-again": ClaimState.DUPLICATE,
        "ben": ClaimState.CONFIRMED,
    }
    assert not verdict.claims[again.id].holds_seats and verdict.claims[again.id].position is None
    assert verdict.claims[first.id].state is ClaimState.CONFIRMED


def test_booking_again_after_cancelling_is_not_a_repeat() -> None:
    world = World()
    ann = world.device("ann")
    day = Replica(1)
    first = write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-9")[0])
    write_through(day, ann.client_id(), lambda r: ann.event(r, DOC, first.id, "cancel"))
    again, _ = ann.book(day.copy(ann.client_id()), DOC, "s-9")
    refuse_repeat_bookings(day, [again], {}, {})
    two = [again, Reservation("r-x", "s-9", 1, "ann", ann.hlc())]
    with pytest.raises(ValidationError):  # two new claims in one update: the second is a repeat
        refuse_repeat_bookings(day, two, {}, {})


def test_a_cancel_arriving_with_the_rebooking_ends_the_first_claim() -> None:
    """An offline device books, cancels and books again; all three reach the relay in one bundle:
    the cancel in that bundle ends the first claim, so the second is not a repeat (a held claim
    cancelled in the bundle likewise)."""
    world = World()
    ann = world.device("ann")
    day = Replica(1)
    phone = day.copy(ann.client_id())
    first, _ = ann.book(phone, DOC, "s-9")
    cancel, _ = ann.event(phone, DOC, first.id, "cancel")
    again, _ = ann.book(phone, DOC, "s-9")
    refuse_repeat_bookings(day, [first, again], {}, {}, [cancel])
    with pytest.raises(ValidationError):  # without the cancel the second is a repeat
        refuse_repeat_bookings(day, [first, again], {}, {})
    held = write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-9")[0])
    end, _ = ann.event(day.copy(ann.client_id()), DOC, held.id, "cancel")
    later = Reservation("r-later", "s-9", 1, "ann", ann.hlc())
    refuse_repeat_bookings(day, [later], {}, {}, [end])


def _catalog_update(world: World, category: str) -> tuple[Replica, bytes]:
    ada, olga = world.device("ada", roles=["admin"]), world.device("olga", owner_of=[SHOP])
    catalog = Replica(1)
    cat = Category("c-hair", "Hair", None, ada.hlc())
    write_through(catalog, ada.client_id(), lambda r: ada.put(r, "catalog", [(cat, None)]))
    summary = ShopSummary(SHOP, "Cut", category, "Main St", 1.0, 2.0, None, True, olga.hlc())
    return catalog, olga.put(catalog.copy(olga.client_id()), "catalog", [(summary, None)])


def test_a_shop_in_a_category_that_does_not_exist_is_refused_at_arrival() -> None:
    world = World()
    catalog, update = _catalog_update(world, "c-nope")
    with pytest.raises(ValidationError) as err:
        validate_update("catalog", catalog, update, world.cache(), ArrivalPolicy(now_ms=NOW_MS))
    assert err.value.code == "unknown_category"
    validate_update("catalog", catalog, update, world.cache())  # what the relay forwarded: not looked up
    catalog, update = _catalog_update(World(), "c-hair")
    validate_update("catalog", catalog, update, World().cache(), ArrivalPolicy(now_ms=NOW_MS))


def test_staff_rights_from_the_shops_staff_list_take_effect_without_a_new_certificate() -> None:
    world = World()
    olga, bob, ann = world.device("olga", owner_of=[SHOP]), world.device("bob"), world.device("ann")
    shop = Replica(1)
    listed = StaffEntry("bob", "staff", True, olga.hlc())
    write_through(shop, olga.client_id(), lambda r: olga.put(r, SHOP_DOC, [(listed, None)]))
    assert shop_staff(shop, SHOP_DOC) == {"bob"}
    day = Replica(2)
    res = write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-9")[0])
    _, confirm = bob.event(day.copy(bob.client_id()), DOC, res.id, "confirm")
    with pytest.raises(ValidationError) as err:  # bob's certificate names no shop
        validate_update(DOC, day, confirm, world.cache())
    assert err.value.code == "forbidden"
    staff = shop_staff(shop, SHOP_DOC)
    validate_update(DOC, day, confirm, world.cache(), None, staff)
    nobody = Rights("bob", False, frozenset(), frozenset())
    relay = ArrivalPolicy(now_ms=NOW_MS, current_rights=lambda user: nobody)
    validate_update(DOC, day, confirm, world.cache(), relay, staff)  # no relay grant needed
    gone = ArrivalPolicy(now_ms=NOW_MS, current_rights=lambda user: None)
    with pytest.raises(ValidationError):  # a user the relay no longer has gets nothing from the list
        validate_update(DOC, day, confirm, world.cache(), gone, staff)
    # the owner removes bob: a newer entry
    removed = StaffEntry("bob", "staff", False, olga.hlc())
    write_through(shop, olga.client_id(), lambda r: olga.put(r, SHOP_DOC, [(removed, None)]))
    assert shop_staff(shop, SHOP_DOC) == frozenset()
    # staff rights, never ownership: bob may edit a slot but not the staff list
    doc = DocId.shop(SHOP)
    slot = SlotTemplate("s-9", "Cut", "09:00", 30, 4, None, True, bob.hlc())
    assert may_write(doc, slot, nobody, shop_staff={"bob"})
    assert not may_write(doc, StaffEntry("zoe", "staff", True, bob.hlc()), nobody, shop_staff={"bob"})


def test_a_users_booked_days_are_written_by_that_user_only_and_list_the_days_to_fetch() -> None:
    from crdt_core.reader import booked_days
    from crdt_core.schema import BookedDay

    world = World()
    ann, bob = world.device("ann"), world.device("bob")
    mine = Replica(1)
    entries = [(BookedDay(SHOP, DAY, ann.hlc()), None), (BookedDay(SHOP, "2027-01-20", ann.hlc()), None)]
    update = ann.put(Replica(ann.client_id()), "user:ann", entries)
    validate_update("user:ann", mine, update, world.cache())
    mine.apply_update(update)
    assert booked_days(mine, "ann") == {(SHOP, DAY), (SHOP, "2027-01-20")}
    assert open_record(mine.get_bytes("days", next(iter(mine.keys("days")))) or b"").schema_version == 2
    forged = bob.put(Replica(bob.client_id()), "user:ann", [(BookedDay(SHOP, DAY, bob.hlc()), None)])
    with pytest.raises(ValidationError) as err:
        validate_update("user:ann", mine, forged, world.cache())
    assert err.value.code == "forbidden"
    with pytest.raises(SchemaError):
        BookedDay.from_fields({"shop": SHOP, "day": "2027-02-30", "hlc": ann.hlc()}, 2)


def test_the_repeat_index_built_from_the_maps_equals_the_one_built_from_the_diff() -> None:
    """The first repeat check on a document (a restart's first booking waits for it) indexes its
    maps' values directly; the index must equal the one the diff of the whole state gives."""
    from crdt_core.authoring import write_stamps
    from crdt_core.repeats import _DayIndex
    from tests.support.crdt_factory import relay_client

    world = World()
    ann, ben = world.device("ann"), world.device("ben")
    day = Replica(1)
    first = write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-9")[0])
    write_through(day, ben.client_id(), lambda r: ben.book(r, DOC, "s-9"))
    write_through(day, ann.client_id(), lambda r: ann.event(r, DOC, first.id, "cancel"))
    write_through(day, ann.client_id(), lambda r: ann.book(r, DOC, "s-2"))
    write_through(
        day, relay_client(world.relay), lambda r: write_stamps(r, DOC, world.relay, [first.id], 1, NOW_MS)
    )
    from_maps, from_diff = _DayIndex(), _DayIndex()
    from_diff.seen.add(("none", "none"))  # not a first check: the diff path
    from_maps.catch_up(day)
    from_diff.catch_up(day)
    from_diff.seen.discard(("none", "none"))
    assert from_maps.claims == from_diff.claims and len(from_maps.seen) == 5
    assert not from_maps.stamp_of and len(from_maps.unparsed_stamps) == 1  # read when needed
    from_maps.parse_stamps()
    from_diff.parse_stamps()
    assert from_maps.stamp_of == from_diff.stamp_of == {first.id: 1}
    assert from_maps.ends == from_diff.ends and first.id in from_maps.ends
    assert from_maps.vector == day.state_vector() and from_maps.mark == day.journal_mark()
    again, _ = ann.book(day.copy(ann.client_id()), DOC, "s-2")
    with pytest.raises(ValidationError):  # and it answers: ann holds s-2 already
        refuse_repeat_bookings(day, [again], {}, {})
