"""Shared helpers for the crdt_core property tests: validated delivery, crafted Yjs bytes, scenarios.

Every remote update a test puts into a replica goes through :func:`receive`, which validates first
and applies only what validation accepted: the same discipline the relay and every peer follow.
Nothing here mocks crdt_core: documents are real pycrdt documents and every record is really signed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import CertificateCache
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import BookingsState, read_bookings
from crdt_core.schema import (
    BookedDay,
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
)
from crdt_core.validation import ArrivalPolicy, ValidatedUpdate, validate_update
from crdt_core.verdict import Verdict, compute_verdict
from crdt_core.yupdate import decode_update, encode_varuint
from tests.support.crdt_factory import NOW_MS, World, relay_replica

SHOP = "shop1"
DAY = "2027-01-15"
DOC = f"bookings:{SHOP}:{DAY}"
SHOP_DOC = f"shop:{SHOP}"
SLOTS = ("s1", "s2")
MINUTE_MS = 60_000

#: Refusals an honest update can meet only because it arrived before something it refers to:
#: the receiver holds it back and retries after later deliveries.
RETRYABLE = frozenset({"missing_deps", "unknown_reservation"})

Contents = dict[str, dict[str, bytes]]
Snapshot = tuple[Contents, bytes]


def snapshot(replica: Replica) -> Snapshot:
    """Everything observable about a replica: its contents and its state vector."""
    return replica.to_py(), replica.state_vector()


def receive(
    doc: str,
    replica: Replica,
    update: bytes,
    cache: CertificateCache,
    policy: ArrivalPolicy | None = None,
) -> ValidatedUpdate:
    """Validate ``update`` for ``replica`` and apply it only if validation accepted it."""
    result = validate_update(doc, replica, update, cache, policy)
    replica.apply_update(update)
    return result


def assert_refused(
    doc: str,
    replica: Replica,
    update: bytes,
    cache: CertificateCache,
    policy: ArrivalPolicy | None = None,
) -> ValidationError:
    """Receiving ``update`` must fail with a ValidationError and leave ``replica`` exactly as it was."""
    before = snapshot(replica)
    with pytest.raises(ValidationError) as info:
        receive(doc, replica, update, cache, policy)
    assert snapshot(replica) == before
    return info.value


@dataclass
class Inbox:
    """A replica that holds back updates refused only for ordering reasons and retries them later."""

    doc: str
    replica: Replica
    cache: CertificateCache
    held: list[bytes] = field(default_factory=list)
    accepted: int = 0

    def _try(self, update: bytes) -> bool:
        try:
            receive(self.doc, self.replica, update, self.cache)
        except ValidationError as exc:
            if exc.code not in RETRYABLE:
                raise
            return False
        self.accepted += 1
        return True

    def offer(self, update: bytes) -> bool:
        """Deliver one update; returns whether it was applied now (else it is held back)."""
        if not self._try(update):
            self.held.append(update)
            return False
        self.retry()
        return True

    def retry(self) -> None:
        progress = True
        while progress and self.held:
            progress = False
            for update in list(self.held):
                if self._try(update):
                    self.held.remove(update)
                    progress = True


def deliver_all(doc: str, replica: Replica, updates: Iterable[bytes], cache: CertificateCache) -> None:
    """Deliver every update in the given order (holding back early ones); all must end up applied."""
    inbox = Inbox(doc, replica, cache)
    for update in updates:
        inbox.offer(update)
    assert not inbox.held, f"{len(inbox.held)} updates could never be applied"


def full_sync(doc: str, nodes: Sequence[tuple[Replica, CertificateCache]], max_rounds: int = 3) -> None:
    """State-vector exchange between every ordered pair, validated, until nothing changes."""
    for _ in range(max_rounds):
        changed = False
        for dst, cache in nodes:
            for src, _ in nodes:
                if src is dst:
                    continue
                result = receive(doc, dst, src.diff(dst.state_vector()), cache)
                changed = changed or not result.noop
        if not changed:
            return
    raise AssertionError("state-vector exchange did not reach a fixpoint")


def verdict_of(replica: Replica, capacities: dict[str, int], doc: str = DOC) -> Verdict:
    return compute_verdict(read_bookings(replica, doc), capacities)


# --- hand-made Yjs v1 bytes, for updates no honest writer produces ---------------------------------


varuint = encode_varuint


def var_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return varuint(len(raw)) + raw


def map_item(root: str, key: str, value: bytes) -> bytes:
    """One Yjs item: ``root[key] = value`` (binary content, no origin: a fresh insert)."""
    info = 3 | 0x20  # ContentBinary, has parentSub
    return bytes([info]) + varuint(1) + var_string(root) + var_string(key) + varuint(len(value)) + value


def struct_block(client: int, clock: int, items: Sequence[bytes]) -> bytes:
    return varuint(len(items)) + varuint(client) + varuint(clock) + b"".join(items)


def client_block(update: bytes) -> bytes:
    """The one client block of an update written by one client with no delete set (any one
    transaction), to put into :func:`yjs_update` with other blocks in any order."""
    decoded = decode_update(update)
    if len(decoded.ranges) != 1 or decoded.deletes or update[:1] != b"\x01" or update[-1:] != b"\x00":
        raise ValueError("not a one-client update without deletions")
    return update[1:-1]


def yjs_update(blocks: Sequence[bytes], deletes: dict[int, list[tuple[int, int]]] | None = None) -> bytes:
    out = varuint(len(blocks)) + b"".join(blocks)
    dels = deletes or {}
    out += varuint(len(dels))
    for client, ranges in dels.items():
        out += varuint(client) + varuint(len(ranges))
        for clock, length in ranges:
            out += varuint(clock) + varuint(length)
    return out


# --- a bookings day written by real authors -----------------------------------------------------


class Day:
    """One bookings document: customers and a staff member write on their own replicas, and a relay
    replica validates everything (and stamps when told). ``updates`` is every update in the order
    it was produced, for re-delivery in other orders."""

    def __init__(
        self,
        world: World | None = None,
        customers: int = 3,
        clock_offsets_min: Sequence[int] = (),
    ) -> None:
        self.world = world or World()
        self.doc = DOC
        self.relay = relay_replica(self.world.relay)
        self.cache = self.world.cache()
        self.customers: list[Author] = []
        self.replica_of: dict[str, Replica] = {}
        self.cache_of: dict[str, CertificateCache] = {}
        self.updates: list[bytes] = []
        self.next_stamp = 1
        self.staff = self.world.device("staff1", staff_of=[SHOP])
        self._add(self.staff)
        for i in range(customers):
            self.add_customer(clock_offsets_min[i] if i < len(clock_offsets_min) else 0)

    def add_customer(self, clock_offset_min: int = 0) -> int:
        """A customer whose device clock is off by ``clock_offset_min`` (within its certificate)."""
        i = len(self.customers)
        author = self.world.device(f"c{i}", clock_ms=NOW_MS + clock_offset_min * MINUTE_MS)
        self._add(author)
        self.customers.append(author)
        return i

    def _add(self, author: Author) -> None:
        self.replica_of[author.user_id] = Replica(author.client_id())
        self.cache_of[author.user_id] = self.world.cache()

    def publish(self, update: bytes) -> ValidatedUpdate:
        """The relay receives an update (validated) and it joins the log."""
        result = receive(self.doc, self.relay, update, self.cache)
        self.updates.append(update)
        return result

    def pull(self, author: Author) -> None:
        """The author's replica catches up from the relay (validated state-vector exchange)."""
        rep = self.replica_of[author.user_id]
        receive(self.doc, rep, self.relay.diff(rep.state_vector()), self.cache_of[author.user_id])

    def book(self, who: int, slot: str, party: int) -> str:
        author = self.customers[who]
        res, update = author.book(self.replica_of[author.user_id], self.doc, slot, party)
        self.publish(update)
        return res.id

    def cancel(self, res_id: str) -> None:
        customer = self.state().reservations[res_id].customer
        author = next(a for a in self.customers if a.user_id == customer)
        _, update = author.event(self.replica_of[customer], self.doc, res_id, "cancel")
        self.publish(update)

    def staff_event(self, res_id: str, kind: str) -> None:
        self.pull(self.staff)
        _, update = self.staff.event(self.replica_of[self.staff.user_id], self.doc, res_id, kind)
        self.publish(update)

    def stamp(self, res_ids: Sequence[str]) -> None:
        if not res_ids:
            return
        _, update = write_stamps(
            self.relay, self.doc, self.world.relay, list(res_ids), self.next_stamp, NOW_MS
        )
        self.next_stamp += len(res_ids)
        self.updates.append(update)

    def state(self) -> BookingsState:
        return read_bookings(self.relay, self.doc)

    def unstamped(self) -> list[str]:
        state = self.state()
        stamped = {s.reservation for s in state.stamps.values()}
        return [rid for rid in state.reservations if rid not in stamped]

    def verdict(self, capacities: dict[str, int]) -> Verdict:
        return verdict_of(self.relay, capacities, self.doc)


#: One step of a booking scenario (see :func:`run_ops`).
Op = tuple[str, int, int, int]

EVENT_KINDS = ("cancel", "decline", "no_show", "confirm")


def booking_ops(customers: int = 3, max_party: int = 4) -> st.SearchStrategy[Op]:
    """``(name, a, b, c)``; indices are taken modulo what exists when the op runs.

    Bookings and stamps are drawn more often than events, so slots see contention and finality.
    """
    book = st.tuples(
        st.just("book"),
        st.integers(0, customers - 1),
        st.integers(0, len(SLOTS) - 1),
        st.integers(1, max_party),
    )
    stamp = st.tuples(st.just("stamp"), st.integers(0, 50), st.just(0), st.just(0))
    event = st.tuples(st.just("event"), st.integers(0, 50), st.integers(0, len(EVENT_KINDS) - 1), st.just(0))
    return st.one_of(book, book, book, stamp, stamp, event)


def run_ops(day: Day, ops: Iterable[Op]) -> None:
    """Apply scenario steps: book; stamp one unstamped claim (in any order); cancel or a staff event."""
    for name, a, b, c in ops:
        if name == "book":
            day.book(a, SLOTS[b], c)
        elif name == "stamp":
            pending = day.unstamped()
            if pending:
                day.stamp([pending[a % len(pending)]])
        else:
            ids = sorted(day.state().reservations)
            if not ids:
                continue
            rid = ids[a % len(ids)]
            kind = EVENT_KINDS[b]
            if kind == "cancel":
                day.cancel(rid)
            else:
                day.staff_event(rid, kind)


capacities_st = st.fixed_dictionaries(
    {slot: st.sampled_from([0, 1, 2, 2, 3, 3, 4, 4, 5, 6]) for slot in SLOTS}
)


# --- valid field maps for every record kind ------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
hlcs = st.builds(
    lambda w, c, n: f"{w:013d}-{c:06d}-{n}",
    st.integers(0, 10**13 - 1),
    st.integers(0, 999_999),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
)


def text(n: int) -> st.SearchStrategy[str]:
    """Text a record field may hold: no control characters (Unicode category Cc: C0, DEL, C1)."""
    return st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=n)


def number(lo: float, hi: float) -> st.SearchStrategy[float | int]:
    return st.floats(lo, hi, allow_nan=False) | st.integers(int(lo), int(hi))


hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
urls = st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(["http", "https"]), text(100)) | st.just("")

FIELDS: dict[
    type[TypedRecord], tuple[dict[str, st.SearchStrategy[Any]], dict[str, st.SearchStrategy[Any]]]
] = {
    Category: ({"id": ids, "name": text(120), "hlc": hlcs}, {"icon": text(64)}),
    ShopSummary: (
        {
            "id": ids,
            "name": text(120),
            "category": ids,
            "location": text(200),
            "lat": number(-90, 90),
            "lon": number(-180, 180),
            "active": st.booleans(),
            "hlc": hlcs,
        },
        {"rating": number(0, 5)},
    ),
    ShopProfile: (
        {
            "name": text(120),
            "description": text(2000),
            "address": text(300),
            "lat": number(-90, 90),
            "lon": number(-180, 180),
            "hours": text(300),
            "hlc": hlcs,
        },
        {"image_url": urls},
    ),
    SlotTemplate: (
        {
            "id": ids,
            "service": text(120),
            "start": hhmm,
            "duration": st.integers(1, 24 * 60),
            "capacity": st.integers(0, 10_000),
            "active": st.booleans(),
            "hlc": hlcs,
        },
        {"weekdays": st.lists(st.integers(0, 6), max_size=7), "per_customer": st.integers(1, 100)},
    ),
    StaffEntry: (
        {"user": ids, "role": st.sampled_from(["staff", "owner"]), "active": st.booleans(), "hlc": hlcs},
        {},
    ),
    Reservation: (
        {"id": ids, "slot": ids, "party": st.integers(1, 100), "customer": ids, "hlc": hlcs},
        {"note": text(500)},
    ),
    StatusEvent: (
        {
            "id": ids,
            "reservation": ids,
            "type": st.sampled_from(["cancel", "confirm", "decline", "no_show"]),
            "by": ids,
            "hlc": hlcs,
        },
        {"reason": text(500)},
    ),
    Stamp: ({"no": st.integers(1, 2**53), "reservation": ids, "at": st.integers(0, 2**53)}, {}),
    UserProfile: (
        {"display_name": text(120), "hlc": hlcs},
        {"email": text(254), "phone": text(40), "locale": text(20)},
    ),
    BookedDay: ({"shop": ids, "day": st.dates().map(lambda d: d.isoformat()), "hlc": hlcs}, {}),
}


def fields_of(cls: type[TypedRecord]) -> st.SearchStrategy[dict[str, Any]]:
    """A valid field map for ``cls`` (optional fields present or absent)."""
    required, optional = FIELDS[cls]
    return st.fixed_dictionaries(required, optional=optional)


record_fields: st.SearchStrategy[tuple[type[TypedRecord], dict[str, Any]]] = st.sampled_from(
    sorted(FIELDS, key=lambda c: c.KIND)
).flatmap(lambda cls: st.tuples(st.just(cls), fields_of(cls)))


@st.composite
def booking_scenarios(draw: st.DrawFn, max_bookings: int = 10, customers: int = 3) -> list[Op]:
    """A day's history: 2..max_bookings bookings, each followed by 0-2 stamps and sometimes an event.

    Shaped (rather than a flat list of ops) so that most examples have contention, stamps and final
    claims; a flat list of random ops is mostly tiny under a 60-example budget.
    """
    ops: list[Op] = []
    for _ in range(draw(st.integers(2, max_bookings))):
        ops.append(
            (
                "book",
                draw(st.integers(0, customers - 1)),
                draw(st.integers(0, len(SLOTS) - 1)),
                draw(st.integers(1, 4)),
            )
        )
        for _ in range(draw(st.integers(0, 2))):
            ops.append(("stamp", draw(st.integers(0, 50)), 0, 0))
        if draw(st.integers(0, 3)) == 0:
            ops.append(("event", draw(st.integers(0, 50)), draw(st.integers(0, len(EVENT_KINDS) - 1)), 0))
    return ops
