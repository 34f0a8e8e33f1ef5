"""Query tables projected from the documents, so browsing is an indexed SQL query that works offline.

Why projections at all: answering "shops in category X" from the catalog document would parse
every signed record of it on every query; a table with an index answers in microseconds and
needs no document in memory. The documents stay the truth; these rows are derived from them and
written **in the same transaction** as the document change, so they never disagree with it, and
:meth:`client.local.client.LocalClient.rebuild_projections` can recreate them from the documents alone.

Incremental, and why that is exact:

* Catalog and shop documents hold "latest record wins" data: readers take, per logical id, the
  record with the greatest (HLC, record key) (docs/records.md). Each row keeps the (hlc, rkey) it
  came from, and an upsert replaces it only with a greater one. Applying new records in any order
  therefore lands on the same row as a full scan, and costs O(new records), not O(document).
* A bookings document is projected through the verdict (``crdt_core.verdict``), which is a
  function of the whole document; it is recomputed once per document per batch, and only the
  reservation rows whose verdict changed are rewritten. The previous verdict, needed to name
  promotions and demotions, is read back from those rows when the caller has none in memory.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client.storage.store import Tx
from crdt_core.reader import BookingsState
from crdt_core.schema import (
    Category,
    DocId,
    DocKind,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    TypedRecord,
    capacities_on,
    capacity_on,
)
from crdt_core.verdict import ClaimState, ClaimVerdict, Verdict, VerdictChange, diff_verdicts

__all__ = [
    "CategoryRow",
    "ProjectedRecord",
    "ReservationRow",
    "ShopDetail",
    "ShopProfileRow",
    "ShopRow",
    "SlotAvailability",
    "SlotRow",
    "StaffRow",
    "baseline_verdict",
    "capacities_on",
    "clear_projections",
    "project_bookings",
    "project_records",
    "query_categories",
    "query_day_reservations",
    "query_my_reservations",
    "query_reservation",
    "query_shop",
    "query_shops",
    "query_slot_availability",
]

#: ``(root, key, record)`` as validation and authoring produce them.
ProjectedRecord = tuple[str, str, TypedRecord]


# --- rows (what browsing returns) --------------------------------------------------------------


@dataclass(frozen=True)
class CategoryRow:
    id: str
    name: str
    icon: str | None


@dataclass(frozen=True)
class ShopRow:
    """A shop's catalog entry (``shop_summary``): what the category listing shows."""

    id: str
    name: str
    category: str
    location: str
    lat: float
    lon: float
    rating: float | None
    active: bool


@dataclass(frozen=True)
class ShopProfileRow:
    shop_id: str
    name: str
    description: str
    address: str
    lat: float
    lon: float
    image_url: str | None
    hours: str


@dataclass(frozen=True)
class SlotRow:
    shop_id: str
    slot_id: str
    service: str
    start: str
    duration: int
    capacity: int
    weekdays: tuple[int, ...] | None
    active: bool

    def capacity_on(self, day: _dt.date) -> int:
        """``crdt_core.schema.capacity_on``: inactive or off-day slots offer no seat."""
        return capacity_on(day, self.capacity, self.weekdays, self.active)


@dataclass(frozen=True)
class StaffRow:
    shop_id: str
    user_id: str
    role: str
    active: bool


@dataclass(frozen=True)
class ShopDetail:
    shop_id: str
    summary: ShopRow | None
    profile: ShopProfileRow | None
    slots: tuple[SlotRow, ...]
    staff: tuple[StaffRow, ...]


@dataclass(frozen=True)
class SlotAvailability:
    """One slot on one day. ``known`` is False when this client holds no bookings for that day
    yet (then ``seats_taken`` is 0 for want of data, not because the slot is empty)."""

    shop_id: str
    day: str
    slot_id: str
    service: str
    start: str
    duration: int
    capacity: int
    seats_taken: int
    seats_left: int
    waitlisted: int
    known: bool


@dataclass(frozen=True)
class ReservationRow:
    """A reservation with its verdict on this replica (``final``: no later data can change it)."""

    doc_id: str
    reservation_id: str
    shop_id: str
    day: str
    slot_id: str
    customer: str
    party: int
    note: str | None
    hlc: str
    state: ClaimState
    waitlist_position: int | None
    final: bool
    stamp: int | None
    staff_confirmed: bool
    holds_seats: bool
    rejected_code: str | None
    rejected_reason: str | None
    start: str | None
    service: str | None

    @property
    def tentative(self) -> bool:
        return not self.final


# --- catalog and shop documents --------------------------------------------------------------

_UPSERT_CATEGORY = (
    "INSERT INTO categories(id, name, icon, hlc, rkey) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET name = excluded.name, icon = excluded.icon, hlc = excluded.hlc, "
    "rkey = excluded.rkey WHERE (excluded.hlc, excluded.rkey) > (categories.hlc, categories.rkey)"
)
_UPSERT_SHOP = (
    "INSERT INTO shops(id, name, category, location, lat, lon, rating, active, hlc, rkey) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET name = excluded.name, category = excluded.category, "
    "location = excluded.location, lat = excluded.lat, lon = excluded.lon, rating = excluded.rating, "
    "active = excluded.active, hlc = excluded.hlc, rkey = excluded.rkey "
    "WHERE (excluded.hlc, excluded.rkey) > (shops.hlc, shops.rkey)"
)
_UPSERT_PROFILE = (
    "INSERT INTO shop_profiles(shop_id, name, description, address, lat, lon, image_url, hours, hlc, rkey) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(shop_id) DO UPDATE SET name = excluded.name, description = excluded.description, "
    "address = excluded.address, lat = excluded.lat, lon = excluded.lon, image_url = excluded.image_url, "
    "hours = excluded.hours, hlc = excluded.hlc, rkey = excluded.rkey "
    "WHERE (excluded.hlc, excluded.rkey) > (shop_profiles.hlc, shop_profiles.rkey)"
)
_UPSERT_SLOT = (
    "INSERT INTO slots(shop_id, slot_id, service, start, duration, capacity, weekdays, active, hlc, rkey) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(shop_id, slot_id) DO UPDATE SET service = excluded.service, start = excluded.start, "
    "duration = excluded.duration, capacity = excluded.capacity, weekdays = excluded.weekdays, "
    "active = excluded.active, hlc = excluded.hlc, rkey = excluded.rkey "
    "WHERE (excluded.hlc, excluded.rkey) > (slots.hlc, slots.rkey)"
)
_UPSERT_STAFF = (
    "INSERT INTO staff(shop_id, user_id, role, active, hlc, rkey) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(shop_id, user_id) DO UPDATE SET role = excluded.role, active = excluded.active, "
    "hlc = excluded.hlc, rkey = excluded.rkey "
    "WHERE (excluded.hlc, excluded.rkey) > (staff.hlc, staff.rkey)"
)


async def project_records(tx: Tx, doc: DocId, records: Iterable[ProjectedRecord]) -> bool:
    """Fold newly accepted records of a catalog or shop document into the tables.

    Returns True when slot templates of the shop were among them: the caller must then recompute
    the verdicts of that shop's bookings documents (capacities may have changed).
    """
    categories: list[tuple[Any, ...]] = []
    shops: list[tuple[Any, ...]] = []
    profiles: list[tuple[Any, ...]] = []
    slots: list[tuple[Any, ...]] = []
    staff: list[tuple[Any, ...]] = []
    for _root, key, rec in records:
        if doc.kind is DocKind.CATALOG:
            if isinstance(rec, Category):
                categories.append((rec.id, rec.name, rec.icon, rec.hlc, key))
            elif isinstance(rec, ShopSummary):
                shops.append(
                    (rec.id, rec.name, rec.category, rec.location, rec.lat, rec.lon, rec.rating,
                     int(rec.active), rec.hlc, key)
                )  # fmt: skip
        elif doc.kind is DocKind.SHOP:
            shop = doc.shop_id
            if isinstance(rec, ShopProfile):
                profiles.append(
                    (shop, rec.name, rec.description, rec.address, rec.lat, rec.lon, rec.image_url,
                     rec.hours, rec.hlc, key)
                )  # fmt: skip
            elif isinstance(rec, SlotTemplate):
                weekdays = None if rec.weekdays is None else json.dumps(list(rec.weekdays))
                slots.append(
                    (shop, rec.id, rec.service, rec.start, rec.duration, rec.capacity, weekdays,
                     int(rec.active), rec.hlc, key)
                )  # fmt: skip
            elif isinstance(rec, StaffEntry):
                staff.append((shop, rec.user, rec.role, int(rec.active), rec.hlc, key))
    await tx.executemany(_UPSERT_CATEGORY, categories)
    await tx.executemany(_UPSERT_SHOP, shops)
    await tx.executemany(_UPSERT_PROFILE, profiles)
    await tx.executemany(_UPSERT_SLOT, slots)
    await tx.executemany(_UPSERT_STAFF, staff)
    return bool(slots)


# --- bookings documents ------------------------------------------------------------------------

_RES_COLUMNS = (
    "r.doc_id, r.reservation_id, r.shop_id, r.day, r.slot_id, r.customer, r.party, r.note, r.hlc, "
    "r.state, r.waitlist_position, r.final, r.stamp, r.staff_confirmed, r.holds_seats, "
    "r.rejected_code, r.rejected_reason, s.start, s.service"
)
_RES_FROM = "reservations r LEFT JOIN slots s ON s.shop_id = r.shop_id AND s.slot_id = r.slot_id"


def _reservation(row: Sequence[Any]) -> ReservationRow:
    return ReservationRow(
        doc_id=row[0],
        reservation_id=row[1],
        shop_id=row[2],
        day=row[3],
        slot_id=row[4],
        customer=row[5],
        party=row[6],
        note=row[7],
        hlc=row[8],
        state=ClaimState(row[9]),
        waitlist_position=row[10],
        final=bool(row[11]),
        stamp=row[12],
        staff_confirmed=bool(row[13]),
        holds_seats=bool(row[14]),
        rejected_code=row[15],
        rejected_reason=row[16],
        start=row[17],
        service=row[18],
    )


def _claim_key(c: ClaimVerdict) -> tuple[Any, ...]:
    """What a reservation row stores of a claim (rank is not stored: it shifts on every insert)."""
    return (c.slot, c.customer, c.party, c.state, c.position, c.stamp, c.final, c.staff_confirmed,
            c.holds_seats)  # fmt: skip


async def baseline_verdict(tx: Tx, doc_id: str) -> Verdict:
    """The verdict last projected for a bookings document, rebuilt from its reservation rows.

    Only ``claims`` is filled (all :func:`diff_verdicts` reads); ``rank`` is 0.
    """
    claims: dict[str, ClaimVerdict] = {}
    for row in await tx.fetchall(
        "SELECT reservation_id, slot_id, customer, party, state, waitlist_position, stamp, final, "
        "staff_confirmed, holds_seats FROM reservations WHERE doc_id = ?",
        (doc_id,),
    ):
        claims[row[0]] = ClaimVerdict(
            reservation_id=row[0],
            slot=row[1],
            customer=row[2],
            party=row[3],
            state=ClaimState(row[4]),
            position=row[5],
            stamp=row[6],
            final=bool(row[7]),
            rank=0,
            staff_confirmed=bool(row[8]),
            holds_seats=bool(row[9]),
        )
    return Verdict(slots={}, claims=claims, stamp_prefix=0)


async def project_bookings(
    tx: Tx,
    doc: DocId,
    state: BookingsState,
    verdict: Verdict,
    baseline: Verdict | None,
    slots: Collection[str] | None = None,
    changed: Collection[str] | None = None,
) -> list[VerdictChange]:
    """Write the reservation rows whose verdict changed and the day's seat usage.

    Args:
        baseline: the verdict last projected for this document (None: read it from the rows).
        slots: the only slots whose verdict can differ from ``baseline`` (None: any). The others
            are not even compared, so a booking costs O(its slot) rather than O(document).
        changed: with ``slots``, the only claims that can differ from ``baseline`` (the verdict
            was extended by them, ``client.local.client._appended``): the rest are not compared either.

    Returns:
        Every :class:`VerdictChange` between ``baseline`` and ``verdict``, for every customer.
    """
    did = str(doc)
    if baseline is None:
        baseline = await baseline_verdict(tx, did)
    assert doc.shop_id is not None and doc.day is not None
    day = doc.day.isoformat()
    now = tx.now_ms()
    if slots is None:
        slot_verdicts = list(verdict.slots.values())
        claims: Mapping[str, ClaimVerdict] = verdict.claims
    else:
        slot_verdicts = [verdict.slots[s] for s in sorted(slots) if s in verdict.slots]
        if changed is None:
            claims = {c.reservation_id: c for sv in slot_verdicts for c in sv.claims}
        else:
            claims = {rid: verdict.claims[rid] for rid in changed}
    rows: list[tuple[Any, ...]] = []
    for rid, claim in claims.items():
        before = baseline.claims.get(rid)
        # ``is``: an incrementally recomputed verdict keeps the unchanged claims' objects.
        if before is claim or (before is not None and _claim_key(before) == _claim_key(claim)):
            continue
        res = state.reservations[rid]
        rows.append(
            (did, rid, doc.shop_id, day, claim.slot, claim.customer, claim.party, res.note, res.hlc,
             claim.state.value, claim.position, int(claim.final), claim.stamp, int(claim.staff_confirmed),
             int(claim.holds_seats), now)
        )  # fmt: skip
    # Deferred (``Tx.defer_many``): nothing reads these rows back in the transaction before
    # COMMIT carries them, so they cost no trip of their own to the SQLite thread.
    tx.defer_many(
        "INSERT INTO reservations(doc_id, reservation_id, shop_id, day, slot_id, customer, party, note, hlc, "
        "state, waitlist_position, final, stamp, staff_confirmed, holds_seats, updated_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(doc_id, reservation_id) DO UPDATE SET state = excluded.state, "
        "waitlist_position = excluded.waitlist_position, final = excluded.final, stamp = excluded.stamp, "
        "staff_confirmed = excluded.staff_confirmed, holds_seats = excluded.holds_seats, "
        "updated_ms = excluded.updated_ms",
        rows,
    )
    usage = []
    for slot in slot_verdicts:
        states = [c.state for c in slot.claims]  # counted in C: this runs for every booking
        confirmed = states.count(ClaimState.CONFIRMED)
        waiting = states.count(ClaimState.WAITLISTED)
        usage.append((doc.shop_id, day, slot.slot, slot.capacity, slot.seats_taken, confirmed, waiting))
    tx.defer_many(
        "INSERT INTO slot_usage(shop_id, day, slot_id, capacity, seats_taken, confirmed, waitlisted) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(shop_id, day, slot_id) DO UPDATE SET "
        "capacity = excluded.capacity, seats_taken = excluded.seats_taken, confirmed = excluded.confirmed, "
        "waitlisted = excluded.waitlisted",
        usage,
    )
    if slots is None:
        return diff_verdicts(baseline, verdict)
    return diff_verdicts(baseline, Verdict(slots={}, claims=claims, stamp_prefix=verdict.stamp_prefix))


async def mark_reservation_rejected(tx: Tx, doc_id: str, reservation_id: str, code: str, reason: str) -> None:
    """Show on the reservation that the relay refused it (it will never be stamped).

    The row stays, so the user sees the refusal and its reason; it holds no seats. The refused
    claim leaves the document (and so the verdict) when the document is rebuilt from the relay's
    (``LocalClient.rebuild_from_relay``, at the next sync); the rebuild keeps this row.
    """
    await tx.execute(
        "UPDATE reservations SET rejected_code = ?, rejected_reason = ?, holds_seats = 0 "
        "WHERE doc_id = ? AND reservation_id = ?",
        (code, reason, doc_id, reservation_id),
    )


async def clear_doc_projection(tx: Tx, doc: DocId) -> None:
    """Drop the rows projected from one catalog or shop document (before projecting it afresh).

    Why: after the document is rebuilt from the relay's, a record it no longer holds (one the
    relay refused) must not keep winning its row by its HLC.
    """
    if doc.kind is DocKind.CATALOG:
        await tx.execute("DELETE FROM categories")
        await tx.execute("DELETE FROM shops")
    elif doc.kind is DocKind.SHOP:
        for table in ("shop_profiles", "slots", "staff"):
            await tx.execute(f"DELETE FROM {table} WHERE shop_id = ?", (doc.shop_id,))


async def clear_projections(tx: Tx) -> None:
    for table in ("categories", "shops", "shop_profiles", "slots", "staff", "reservations", "slot_usage"):
        await tx.execute(f"DELETE FROM {table}")


# --- queries -----------------------------------------------------------------------------------


async def query_categories(tx: Tx) -> list[CategoryRow]:
    rows = await tx.fetchall("SELECT id, name, icon FROM categories ORDER BY name, id")
    return [CategoryRow(*r) for r in rows]


def _shop(r: Sequence[Any]) -> ShopRow:
    return ShopRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]))


_SHOP_COLUMNS = "id, name, category, location, lat, lon, rating, active"


async def query_shops(tx: Tx, category: str | None = None, include_inactive: bool = False) -> list[ShopRow]:
    """Shops by category (index ``shops_by_category``) or all (index ``shops_by_name``), by name."""
    actives = (0, 1) if include_inactive else (1,)
    marks = ",".join("?" * len(actives))
    if category is None:
        rows = await tx.fetchall(
            f"SELECT {_SHOP_COLUMNS} FROM shops WHERE active IN ({marks}) ORDER BY name, id", actives
        )
    else:
        rows = await tx.fetchall(
            f"SELECT {_SHOP_COLUMNS} FROM shops WHERE category = ? AND active IN ({marks}) ORDER BY name, id",
            (category, *actives),
        )
    return [_shop(r) for r in rows]


def _slot(r: Sequence[Any]) -> SlotRow:
    weekdays = None if r[6] is None else tuple(json.loads(r[6]))
    return SlotRow(r[0], r[1], r[2], r[3], r[4], r[5], weekdays, bool(r[7]))


async def _slots(tx: Tx, shop_id: str) -> list[SlotRow]:
    rows = await tx.fetchall(
        "SELECT shop_id, slot_id, service, start, duration, capacity, weekdays, active FROM slots "
        "WHERE shop_id = ? ORDER BY start, slot_id",
        (shop_id,),
    )
    return [_slot(r) for r in rows]


async def query_shop(tx: Tx, shop_id: str) -> ShopDetail | None:
    row = await tx.fetchone(f"SELECT {_SHOP_COLUMNS} FROM shops WHERE id = ?", (shop_id,))
    summary = None if row is None else _shop(row)
    prow = await tx.fetchone(
        "SELECT shop_id, name, description, address, lat, lon, image_url, hours FROM shop_profiles "
        "WHERE shop_id = ?",
        (shop_id,),
    )
    profile = None if prow is None else ShopProfileRow(*prow)
    slots = await _slots(tx, shop_id)
    staff = [
        StaffRow(r[0], r[1], r[2], bool(r[3]))
        for r in await tx.fetchall(
            "SELECT shop_id, user_id, role, active FROM staff WHERE shop_id = ? ORDER BY user_id", (shop_id,)
        )
    ]
    if summary is None and profile is None and not slots and not staff:
        return None
    return ShopDetail(shop_id, summary, profile, tuple(slots), tuple(staff))


async def query_slot_availability(tx: Tx, shop_id: str, day: _dt.date, known: bool) -> list[SlotAvailability]:
    """Every slot offered on ``day`` with its seats left per this replica's verdict."""
    iso = day.isoformat()
    usage = {
        r[0]: (r[1], r[2])
        for r in await tx.fetchall(
            "SELECT slot_id, seats_taken, waitlisted FROM slot_usage WHERE shop_id = ? AND day = ?",
            (shop_id, iso),
        )
    }
    out: list[SlotAvailability] = []
    for slot in await _slots(tx, shop_id):
        capacity = slot.capacity_on(day)
        if capacity <= 0 and slot.slot_id not in usage:
            continue
        taken, waiting = usage.get(slot.slot_id, (0, 0))
        out.append(
            SlotAvailability(
                shop_id=shop_id,
                day=iso,
                slot_id=slot.slot_id,
                service=slot.service,
                start=slot.start,
                duration=slot.duration,
                capacity=capacity,
                seats_taken=taken,
                seats_left=max(0, capacity - taken),
                waitlisted=waiting,
                known=known,
            )
        )
    return out


async def query_my_reservations(tx: Tx, customer: str) -> list[ReservationRow]:
    """The user's reservations by day and slot time (index ``reservations_by_customer``)."""
    rows = await tx.fetchall(
        f"SELECT {_RES_COLUMNS} FROM {_RES_FROM} WHERE r.customer = ? ORDER BY r.day, s.start, r.hlc",
        (customer,),
    )
    return [_reservation(r) for r in rows]


async def query_day_reservations(tx: Tx, shop_id: str, day: _dt.date) -> list[ReservationRow]:
    """Every reservation of a shop's day (the staff view), in slot order then booking order."""
    rows = await tx.fetchall(
        f"SELECT {_RES_COLUMNS} FROM {_RES_FROM} WHERE r.shop_id = ? AND r.day = ? "
        "ORDER BY s.start, r.slot_id, r.stamp IS NULL, r.stamp, r.hlc",
        (shop_id, day.isoformat()),
    )
    return [_reservation(r) for r in rows]


async def query_reservation(tx: Tx, reservation_id: str) -> list[ReservationRow]:
    rows = await tx.fetchall(
        f"SELECT {_RES_COLUMNS} FROM {_RES_FROM} WHERE r.reservation_id = ?", (reservation_id,)
    )
    return [_reservation(r) for r in rows]
