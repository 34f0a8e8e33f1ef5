"""crdt_core.validation.may_write: the writer table (docs/records.md section 8), the one rule
validation and clients ask.

The client once re-encoded the table (admin/owner/staff checks before each write); it now asks
``may_write`` (status events) or the ``Rights`` predicates the table itself is written with
(``manages``: admin or owner; ``edits``: admin, owner or staff).
"""

from __future__ import annotations

import itertools

import pytest

from crdt_core.schema import (
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
)
from crdt_core.validation import Rights, may_write

HLC = "0000000000001-000000-a"
SHOP, OTHER = "s1", "s2"
DAY = DocId.bookings(SHOP, "2027-01-11")

ADMIN = Rights("admin", True, frozenset(), frozenset())
OWNER = Rights("owner", False, frozenset({SHOP}), frozenset())
STAFF = Rights("staff", False, frozenset(), frozenset({SHOP}))
ELSEWHERE = Rights("elsewhere", False, frozenset({OTHER}), frozenset({OTHER}))
CUSTOMER = Rights("cust", False, frozenset(), frozenset())
EVERYONE = (ADMIN, OWNER, STAFF, ELSEWHERE, CUSTOMER)


def _event(kind: str, by: str) -> StatusEvent:
    return StatusEvent(id="e1", reservation="r1", type=kind, by=by, hlc=HLC)


def _allowed(doc: DocId, record: TypedRecord, target_customer: str | None = None) -> set[str]:
    return {r.user_id for r in EVERYONE if may_write(doc, record, r, target_customer)}


def test_catalog_records() -> None:
    assert _allowed(DocId.catalog(), Category(id="c", name="C", icon=None, hlc=HLC)) == {"admin"}
    summary = ShopSummary(
        id=SHOP, name="S", category="c", location="x", lat=0.0, lon=0.0, rating=None, active=True, hlc=HLC
    )
    assert _allowed(DocId.catalog(), summary) == {"admin", "owner"}


def test_shop_records() -> None:
    doc = DocId.shop(SHOP)
    profile = ShopProfile(
        name="S", description="", address="", lat=0.0, lon=0.0, image_url=None, hours="", hlc=HLC
    )
    slot = SlotTemplate(
        id="a", service="cut", start="09:00", duration=30, capacity=2, weekdays=None, active=True, hlc=HLC
    )
    assert _allowed(doc, profile) == _allowed(doc, slot) == {"admin", "owner", "staff"}
    assert _allowed(doc, StaffEntry(user="u", role="staff", active=True, hlc=HLC)) == {"admin", "owner"}


def test_bookings_records() -> None:
    booking = Reservation(id="r1", slot="a", party=1, customer="cust", hlc=HLC)
    assert _allowed(DAY, booking) == {"cust"}
    assert _allowed(DAY, Stamp(no=1, reservation="r1", at=0)) == set()


@pytest.mark.parametrize("kind", ["confirm", "decline", "no_show", "a_newer_type"])
def test_staff_events_need_the_shop_and_their_own_name(kind: str) -> None:
    for rights in EVERYONE:
        mine = may_write(DAY, _event(kind, rights.user_id), rights, "cust")
        assert mine == (rights.user_id in {"admin", "owner", "staff"})
        assert not may_write(DAY, _event(kind, "someone-else"), rights, "cust")
        assert not may_write(DAY, _event(kind, rights.user_id), rights, None)  # unknown reservation


def test_only_the_customer_cancels() -> None:
    for rights in EVERYONE:
        assert may_write(DAY, _event("cancel", rights.user_id), rights, "cust") == (rights is CUSTOMER)
    assert not may_write(DAY, _event("cancel", "cust"), CUSTOMER, None)


def test_user_profiles() -> None:
    profile = UserProfile(display_name="C", email=None, phone=None, locale=None, hlc=HLC)
    assert _allowed(DocId.user("cust"), profile) == {"cust"}


def test_the_rights_predicates_are_the_tables_shop_rows() -> None:
    """What the client asks before writing shop records agrees with may_write, for every shop."""
    staff_entry = StaffEntry(user="u", role="staff", active=True, hlc=HLC)
    slot = SlotTemplate(
        id="a", service="cut", start="09:00", duration=30, capacity=2, weekdays=None, active=True, hlc=HLC
    )
    for rights, shop in itertools.product(EVERYONE, (SHOP, OTHER, "s3")):
        assert rights.manages(shop) == may_write(DocId.shop(shop), staff_entry, rights)
        assert rights.edits(shop) == may_write(DocId.shop(shop), slot, rights)
