"""JSON projections of validated documents for the REST sync API (``relay.http.rest_sync``).

Why projections at the relay: a script or a network that blocks websockets should be able to browse
the catalogue, a shop and a day's availability with plain ``GET``s, without a CRDT library. What
a replica held was validated when it arrived, so reading never re-verifies signatures
(``crdt_core.reader``); records a newer schema wrote are read as this version reads them.

Reading rules (the same as the reference client's tables, ``client.local.projections``):

* catalog and shop records are "latest record wins": per logical id, the record with the greatest
  ``(hlc, record key)``;
* a day's availability is the verdict (``crdt_core.verdict``) over the bookings document with the
  shop's slot templates' capacities that day; it exposes seat counts only, never who holds them.

Every projection is a pure function of the replica, so :class:`ProjectionCache` keeps the latest
one per document and sequence number: a page, a 304 or a shop detail costs a lookup while the
document does not change.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from crdt_core.engine import Replica
from crdt_core.hlc import Timestamp
from crdt_core.reader import newest, newest_per, read_bookings, read_map, slot_templates
from crdt_core.schema import (
    Category,
    DocId,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    TypedRecord,
    capacities_on,
    per_customer_limits,
)
from crdt_core.verdict import ClaimState, compute_verdict

__all__ = [
    "CatalogView",
    "ProjectionCache",
    "ShopView",
    "catalog_view",
    "day_view",
    "hlc_ms",
    "page",
    "shop_view",
]

P = TypeVar("P")


def hlc_ms(hlc: str) -> int:
    """The wall-clock milliseconds of an HLC string (``crdt_core.hlc``)."""
    return Timestamp.parse(hlc).wall_ms


def _latest(records: dict[str, TypedRecord], cls: type[TypedRecord], ident: str) -> dict[str, Any]:
    """Per logical id (``ident`` field), the current record (``crdt_core.reader.newest_per``)."""
    kept: dict[str, Any] = {key: rec for key, rec in records.items() if isinstance(rec, cls)}
    return newest_per(kept, lambda rec: str(getattr(rec, ident)))


def _category(rec: Category) -> dict[str, Any]:
    return {"id": rec.id, "name": rec.name, "icon": rec.icon, "updated_at_ms": hlc_ms(rec.hlc)}


def _shop(rec: ShopSummary) -> dict[str, Any]:
    return {
        "id": rec.id,
        "name": rec.name,
        "category": rec.category,
        "location": rec.location,
        "lat": rec.lat,
        "lon": rec.lon,
        "rating": rec.rating,
        "active": rec.active,
        "updated_at_ms": hlc_ms(rec.hlc),
    }


@dataclass(frozen=True)
class CatalogView:
    """The catalogue at one seq: categories and shops as JSON-ready dicts, sorted by id."""

    categories: tuple[dict[str, Any], ...]
    category_ids: tuple[str, ...]
    shops: tuple[dict[str, Any], ...]
    shop_ids: tuple[str, ...]
    #: Lower-cased ``name location`` per shop, for the text search.
    shop_text: tuple[str, ...]

    def shop(self, shop_id: str) -> dict[str, Any] | None:
        i = bisect.bisect_left(self.shop_ids, shop_id)
        return self.shops[i] if i < len(self.shop_ids) and self.shop_ids[i] == shop_id else None


def catalog_view(replica: Replica) -> CatalogView:
    doc = DocId.catalog()
    cats = _latest(read_map(replica, doc, "categories"), Category, "id")
    shops = _latest(read_map(replica, doc, "shops"), ShopSummary, "id")
    cat_rows = tuple(_category(cats[k]) for k in sorted(cats))
    shop_rows = tuple(_shop(shops[k]) for k in sorted(shops))
    return CatalogView(
        categories=cat_rows,
        category_ids=tuple(sorted(cats)),
        shops=shop_rows,
        shop_ids=tuple(sorted(shops)),
        shop_text=tuple(f"{r['name']} {r['location']}".casefold() for r in shop_rows),
    )


def page(
    rows: tuple[dict[str, Any], ...],
    ids: tuple[str, ...],
    after: str | None,
    limit: int,
    keep: Callable[[int], bool] | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Rows after id ``after`` (keyset paging on the sorted ids) that ``keep(index)`` admits, at
    most ``limit``, and the id to continue after (None on the last page)."""
    start = 0 if after is None else bisect.bisect_right(ids, after)
    out: list[dict[str, Any]] = []
    last = start
    for i in range(start, len(ids)):
        if keep is not None and not keep(i):
            continue
        if len(out) == limit:
            return out, ids[last]
        out.append(rows[i])
        last = i
    return out, None


@dataclass(frozen=True)
class ShopView:
    """A shop document at one seq: its profile, slot templates and the services they offer."""

    profile: dict[str, Any] | None
    slots: tuple[dict[str, Any], ...]
    templates: dict[str, SlotTemplate]

    @property
    def services(self) -> list[str]:
        return sorted({s["service"] for s in self.slots if s["active"]})

    @property
    def empty(self) -> bool:
        return self.profile is None and not self.slots


def shop_view(replica: Replica, shop_id: str) -> ShopView:
    doc = DocId.shop(shop_id)
    profiles = read_map(replica, doc, "profile")
    p = newest({key: rec for key, rec in profiles.items() if isinstance(rec, ShopProfile)})
    profile = None
    if p is not None:
        profile = {
            "name": p.name,
            "description": p.description,
            "address": p.address,
            "lat": p.lat,
            "lon": p.lon,
            "image_url": p.image_url,
            "hours": p.hours,
            "updated_at_ms": hlc_ms(p.hlc),
        }
    templates = slot_templates(replica, doc)
    slots = tuple(
        {
            "id": t.id,
            "service": t.service,
            "start": t.start,
            "duration": t.duration,
            "capacity": t.capacity,
            "weekdays": list(t.weekdays) if t.weekdays is not None else None,
            "active": t.active,
            "updated_at_ms": hlc_ms(t.hlc),
        }
        for t in sorted(templates.values(), key=lambda t: (t.start, t.id))
    )
    return ShopView(profile=profile, slots=slots, templates=templates)


def day_view(replica: Replica, doc_id: str, templates: dict[str, SlotTemplate]) -> dict[str, Any]:
    """Seats per slot on the bookings document's day, from the verdict: counts only.

    Every slot that offers seats that day is listed (an empty one too); claims on a slot this
    relay knows no template for are counted under ``unknown_slot_claims`` (they wait, by the
    verdict's rule, until the template arrives).
    """
    state = read_bookings(replica, doc_id)
    day = state.doc.day
    assert day is not None
    capacities = capacities_on(templates, day)
    verdict = compute_verdict(state, capacities, per_customer_limits(templates))
    slots: list[dict[str, Any]] = []
    for t in sorted(templates.values(), key=lambda t: (t.start, t.id)):
        capacity = capacities[t.id]
        if capacity <= 0 and t.id not in verdict.slots:
            continue
        sv = verdict.slots.get(t.id)
        taken = sv.seats_taken if sv is not None else 0
        claims = sv.claims if sv is not None else ()
        slots.append(
            {
                "slot": t.id,
                "service": t.service,
                "start": t.start,
                "duration": t.duration,
                "capacity": capacity,
                "seats_taken": taken,
                "seats_left": max(0, capacity - taken),
                "confirmed": sum(1 for c in claims if c.state is ClaimState.CONFIRMED),
                "waitlisted": sum(1 for c in claims if c.state is ClaimState.WAITLISTED),
            }
        )
    unknown = sum(len(v.claims) for sid, v in verdict.slots.items() if sid not in templates)
    return {
        "day": day.isoformat(),
        "weekday": day.weekday(),
        "slots": slots,
        "unknown_slot_claims": unknown,
        "stamp_prefix": verdict.stamp_prefix,
    }


class ProjectionCache(Generic[P]):
    """The latest projection per document, valid while the document's seq does not move.

    Used from inside ``DocumentManager.read`` (under the document's lock, synchronous), so the
    seq and the replica it describes always agree. Bounded: least recently used entries go.
    """

    def __init__(self, build: Callable[..., P], max_entries: int = 1024) -> None:
        self._build = build
        self._max = max_entries
        self._entries: OrderedDict[str, tuple[int, P]] = OrderedDict()

    def get(self, key: str, seq: int, *args: Any) -> P:
        held = self._entries.get(key)
        if held is not None and held[0] == seq:
            self._entries.move_to_end(key)
            return held[1]
        value = self._build(*args)
        self._entries[key] = (seq, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return value
