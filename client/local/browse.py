"""Browsing and following, offline: plain indexed queries over the projections, and which
documents this profile keeps in sync."""

from __future__ import annotations

import datetime as _dt

from client.local import projections as proj
from client.local.base import LocalBase
from client.local.errors import InvalidRequest, NotFound
from client.local.model import _as_day, _id
from client.local.projections import CategoryRow, ReservationRow, ShopDetail, SlotAvailability
from client.storage.store import Tx
from crdt_core.reader import booked_days
from crdt_core.schema import DocId, parse_doc_id


class Browsing(LocalBase):
    """Categories, shops, slots and reservations as stored here; subscriptions and following."""

    #: The user's booked days as last read (``_booked_days``), keyed by the user document's
    #: state vector: records are never removed, so an equal vector means an equal list.
    _days_read: tuple[tuple[str, bytes], frozenset[tuple[str, str]]] | None = None

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
        The days of the user's bookings are those its reservations here are in, and those the
        user's document lists (``booked_day``, written by whichever device booked there), with
        their shops: a new device of the user fetches the bookings other devices made without
        the user opening each day.
        Following stays bounded: a day at least two days past (``today``, default the local date)
        with no change of ours waiting and none of our claims still tentative is released (its
        data stays here, it is no longer synced; a listed day this device never fetched is not
        fetched at all).
        """
        docs: dict[str, set[str]] = {"catalog": {"catalog"}}
        subscribed = await self.store.subscriptions()
        for doc, reasons in subscribed.items():
            docs.setdefault(doc, set()).update(reasons)
        identity = self._identity
        unsettled: set[str] = set()
        booked: dict[str, str] = {}  # the days the user's document lists -> their shops
        if identity is not None:
            docs.setdefault(f"user:{identity.user_id}", set()).add("account")
            for shop in identity.certificate.owner_of | identity.certificate.staff_of:
                docs.setdefault(f"shop:{shop}", set()).add("role")
            async with self._read() as tx:
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
                for shop, day in await self._booked_days(tx, identity.user_id):
                    doc_id = str(DocId.bookings(shop, day))
                    docs.setdefault(doc_id, set()).add("your booking")
                    booked[doc_id] = shop
        if today is None:
            today = _dt.datetime.fromtimestamp(self._now_ms() / 1000).date()
        cutoff = (today - _dt.timedelta(days=1)).isoformat()
        waiting = {e.doc_id for e in await self.store.pending_entries()}
        settled = [
            doc for doc in docs
            if doc.startswith("bookings:") and doc.rsplit(":", 1)[1] < cutoff
            and doc not in waiting and doc not in unsettled
        ]  # fmt: skip
        for doc in settled:
            del docs[doc]
        released = [doc for doc in settled if doc in subscribed]
        if released:
            async with self.store.transaction() as tx:
                for doc in released:
                    await tx.unsubscribe(doc)
        for doc, shop in booked.items():
            if doc in docs:  # the slots of a booked day: its verdict needs their capacities
                docs.setdefault(f"shop:{shop}", set()).add("your booking")
        return docs

    async def _booked_days(self, tx: Tx, user: str) -> frozenset[tuple[str, str]]:
        """The (shop id, day) pairs the user's own document lists (``booked_day`` records)."""
        doc = str(DocId.user(user))
        replica = (await self._load(tx, doc)).replica
        key = (doc, replica.state_vector())
        if self._days_read is None or self._days_read[0] != key:
            self._days_read = (key, frozenset(booked_days(replica, user)))
        return self._days_read[1]

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
