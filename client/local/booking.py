"""Writing, offline: bookings and their status events, and the owners' and admins' shop data."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

from client.local import projections as proj
from client.local.browse import Browsing
from client.local.errors import InvalidRequest, NotAllowed, NotFound
from client.local.model import _as_day, _id, _Stale, _Work
from client.local.projections import CategoryRow, ReservationRow, ShopDetail, SlotRow, StaffRow
from crdt_core.authoring import new_id
from crdt_core.schema import (
    BookedDay,
    Category,
    DocId,
    EventType,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    StatusEvent,
    parse_doc_id,
)
from crdt_core.validation import may_write
from crdt_core.verdict import ClaimState


class Booking(Browsing):
    """Book, cancel, confirm, decline, no-show; categories, shops, slots and staff."""

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

        The first booking of the user in a (shop, day) also lists that day in the user's own
        document (a ``booked_day`` record, its own outbox entry, same transaction), so the user's
        other devices learn which day documents to fetch (``following``).

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
                    await self._note_booked_day(work, res, shop_id, d)
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

    async def _note_booked_day(self, work: _Work, res: Reservation, shop_id: str, day: _dt.date) -> None:
        """List (shop, day) in the user's document unless it is there already (written once per
        day by whichever device books there first; the same reading of the clock as ``res``)."""
        if (shop_id, day.isoformat()) in await self._booked_days(work.tx, res.customer):
            return
        record = BookedDay(shop=shop_id, day=day.isoformat(), hlc=res.hlc)
        entity = f"{shop_id}/{day.isoformat()}"
        await self._put(work, DocId.user(res.customer), [record], ("booked_day", entity, "create"))

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
