"""Typed reads of a document's records, for verdicts, projections and tests.

Why a separate reader: validation guarantees that whatever a replica holds is schema-valid and
signed, so reading never re-verifies signatures (that would cost one Ed25519 check per record per
read). Records that nonetheless fail to parse (written by a newer, incompatible schema, say) are
skipped and counted rather than crashing a client's UI.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from crdt_core.engine import Replica
from crdt_core.errors import SchemaError
from crdt_core.records import open_record
from crdt_core.schema import (
    CERTS_ROOT,
    SCHEMA_VERSION,
    BookedDay,
    Category,
    DocId,
    Reservation,
    SlotTemplate,
    StaffEntry,
    Stamp,
    StatusEvent,
    TypedRecord,
    parse_doc_id,
    parse_record,
)

__all__ = [
    "BookingsState",
    "booked_days",
    "category_ids",
    "highest_stamp",
    "newest",
    "newest_per",
    "read_bookings",
    "read_map",
    "schema_version_of",
    "shop_staff",
    "slot_templates",
]

T = TypeVar("T", bound=TypedRecord)


def read_map(replica: Replica, doc: DocId, root: str) -> dict[str, TypedRecord]:
    """Every parseable record of one map, by key."""
    out: dict[str, TypedRecord] = {}
    if root not in replica.roots():  # reading a missing map would create it (pycrdt's Doc.get)
        return out
    for key, raw in replica.items(root):
        try:
            env = open_record(raw, canonical=False)
            out[key] = parse_record(doc.kind, root, key, env.kind, env.fields, env.schema_version)
        except SchemaError:
            continue
    return out


def schema_version_of(replica: Replica, doc: DocId) -> int:
    """The document's schema version: the highest its records were written in (0 if empty),
    capped at the version this code knows (``SCHEMA_VERSION``).

    A record claiming a newer version is stored and its unknown fields are inert, but it never
    raises the version this replica reports: a writer cannot push a document past what its
    readers know by stamping one record ``999``.
    """
    best = 0
    for root in (doc.roots - {CERTS_ROOT}) & set(replica.roots()):
        for _, raw in replica.items(root):
            try:
                best = max(best, min(open_record(raw, canonical=False).schema_version, SCHEMA_VERSION))
            except SchemaError:
                continue
    return best


@dataclass
class BookingsState:
    """A bookings document's claims as typed records: the verdict's only input besides capacities."""

    doc: DocId
    reservations: dict[str, Reservation] = field(default_factory=dict)
    events: dict[str, StatusEvent] = field(default_factory=dict)
    stamps: dict[int, Stamp] = field(default_factory=dict)


def _typed(records: dict[str, TypedRecord], cls: type[T]) -> dict[str, T]:
    return {k: v for k, v in records.items() if isinstance(v, cls)}


def read_bookings(replica: Replica, doc_id: str | DocId) -> BookingsState:
    doc = doc_id if isinstance(doc_id, DocId) else parse_doc_id(doc_id)
    stamps = _typed(read_map(replica, doc, "stamps"), Stamp)
    return BookingsState(
        doc=doc,
        reservations=_typed(read_map(replica, doc, "reservations"), Reservation),
        events=_typed(read_map(replica, doc, "events"), StatusEvent),
        stamps={s.no: s for s in stamps.values()},
    )


class _Versioned(Protocol):
    @property
    def hlc(self) -> str: ...


V = TypeVar("V", bound=_Versioned)


def newest_per(records: Mapping[str, V], ident: Callable[[V], str]) -> dict[str, V]:
    """Per logical id (``ident``), the record that supersedes the others (a slot's templates, a
    shop's catalogue entries): the greatest (HLC, record key); the key breaks HLC ties so every
    replica picks the same one."""
    best: dict[str, tuple[str, str, V]] = {}
    for key, rec in records.items():
        logical = ident(rec)
        held = best.get(logical)
        if held is None or (rec.hlc, key) > held[:2]:
            best[logical] = (rec.hlc, key, rec)
    return {logical: entry[2] for logical, entry in best.items()}


def newest(records: Mapping[str, V]) -> V | None:
    """The record of one thing (a shop's profile) that supersedes the others: see :func:`newest_per`."""
    return newest_per(records, lambda _rec: "").get("")


def slot_templates(replica: Replica, shop_doc: str | DocId) -> dict[str, SlotTemplate]:
    """The current template of every slot (:func:`newest_per` by slot id).

    A newer signed template supersedes an older one (that is how capacity is changed).
    """
    doc = shop_doc if isinstance(shop_doc, DocId) else parse_doc_id(shop_doc)
    templates = {
        key: rec for key, rec in read_map(replica, doc, "slots").items() if isinstance(rec, SlotTemplate)
    }
    return newest_per(templates, lambda rec: rec.id)


def shop_staff(replica: Replica, shop_doc: str | DocId) -> frozenset[str]:
    """Users the shop's staff list names as active staff or owners: per user, the current entry
    (:func:`newest_per`) with ``active`` true. Every entry was signed by an admin or an owner of
    the shop when it arrived (``validation.may_write``), so this is the owner's word; it grants
    staff rights (``validation.Rights.with_shop_staff``), never ownership."""
    doc = shop_doc if isinstance(shop_doc, DocId) else parse_doc_id(shop_doc)
    entries = {k: r for k, r in read_map(replica, doc, StaffEntry.ROOT).items() if isinstance(r, StaffEntry)}
    return frozenset(user for user, e in newest_per(entries, lambda e: e.user).items() if e.active)


def booked_days(replica: Replica, user: str) -> set[tuple[str, str]]:
    """The (shop id, day) pairs the user's document ``user:<user>`` lists: the bookings documents a
    new device of the user fetches to show the bookings made on other devices."""
    doc = DocId.user(user)
    return {
        (r.shop, r.day) for r in read_map(replica, doc, BookedDay.ROOT).values() if isinstance(r, BookedDay)
    }


def category_ids(replica: Replica, catalog: DocId | None = None) -> frozenset[str]:
    """The category ids the catalogue document defines (categories are never removed)."""
    doc = catalog if catalog is not None else DocId.catalog()
    return frozenset(r.id for r in read_map(replica, doc, Category.ROOT).values() if isinstance(r, Category))


def highest_stamp(replica: Replica) -> int:
    """The highest stamp number a document holds, 0 for none, so numbering continues after it.

    Read from the keys of the stamps map (``stamp_key(no)``; validation holds each stamp at its
    own number's key) without opening a record. Keys that are not ASCII digits are not stamps.
    """
    return max((int(key) for key in replica.keys(Stamp.ROOT) if key.isascii() and key.isdigit()), default=0)
