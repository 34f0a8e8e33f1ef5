"""Deterministic booking data for the benchmarks: certified customers, signed reservations, documents.

Why deterministic: every engine in a run must be fed byte-identical records, and a later run must
be comparable with this one. Ed25519 signatures are deterministic, keys come from fixed seeds and
clocks are frozen, so the same plan always produces the same bytes, and the typed API measured
with signing produces exactly the bytes the other engines write pre-signed (which is how its
results are checked).

The shape of a day: 12 slots, parties of 1 to 4, a note on every fifth booking, and customers who
book twice on average (so about one device certificate travels per two reservations). The
certificate is written in the same transaction as its device's first record, as ``Author.put``
does.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from functools import cache, lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import CertificateCache, DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.clientids import GENERATIONS, client_id_for
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.records import RELAY_SIGNER_PREFIX, pack_fields
from crdt_core.schema import DocId, EventType, Reservation
from crdt_core.yupdate import decode_update

__all__ = [
    "DOC",
    "NOW_MS",
    "RELAY",
    "SHOP",
    "SLOTS",
    "BookingDay",
    "Corpus",
    "Customer",
    "Entry",
    "booking_day",
    "corpus",
    "null_signer",
]

NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000
SHOP = "bench-shop"
DOC = DocId.bookings(SHOP, "2027-06-01")
SLOTS = tuple(f"slot-{h:02d}" for h in range(8, 20))
BOOKINGS_PER_CUSTOMER = 2

Entry = tuple[str, str, bytes]


def _key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


RELAY = SigningKey("bench-relay", _key("bench-relay"))
#: The Yjs client id the benchmark relay stamps under (crdt_core.clientids).
RELAY_CLIENT_ID = client_id_for(RELAY_SIGNER_PREFIX + RELAY.kid, 0)


def trusted_cache() -> CertificateCache:
    return CertificateCache({RELAY.kid: RELAY.public})


@dataclass(frozen=True)
class Customer:
    user_id: str
    device: DeviceKey


@cache
def _customer(index: int, role: str = "cust") -> Customer:
    user_id = f"{role}{index}"
    key = _key(f"bench-{user_id}")
    cert = issue_certificate(
        RELAY,
        user_id=user_id,
        roles=[],
        owner_of=[],
        staff_of=[SHOP] if role == "staff" else [],
        device_public_key=public_bytes(key),
        issued_at_ms=NOW_MS - HOUR_MS,
        expires_at_ms=NOW_MS + 24 * HOUR_MS,
    )
    return Customer(user_id, DeviceKey(key, cert))


class _NullSignerKey(DeviceKey):
    """A device key whose "signature" is 64 zero bytes: the typed API with Ed25519 taken out."""

    def sign(self, message: bytes) -> bytes:
        return bytes(64)


def null_signer(device: DeviceKey) -> DeviceKey:
    return _NullSignerKey(device.private, device.certificate)


def make_author(customer: Customer, *, id_prefix: str = "", sign: bool = True) -> Author:
    """A fresh author for ``customer`` (frozen clock, ids ``<user>-<prefix><n>``), as at login."""
    clock = HybridClock(customer.user_id, physical_ms=lambda: NOW_MS)
    counter = itertools.count(1)
    device = customer.device if sign else null_signer(customer.device)

    def new_id() -> str:
        return f"{customer.user_id}-{id_prefix}{next(counter)}"

    return Author(customer.user_id, device, clock, id_factory=new_id)


@dataclass(frozen=True)
class Booking:
    customer: int
    slot: str
    party: int
    note: str | None


def plan(n: int) -> list[Booking]:
    """The day's bookings in the order customers make them."""
    out = []
    for i in range(n):
        out.append(
            Booking(
                customer=i // BOOKINGS_PER_CUSTOMER,
                slot=SLOTS[(i * 7) % len(SLOTS)],
                party=1 + (i * 5) % 4,
                note="window seat, please" if i % 5 == 0 else None,
            )
        )
    return out


@dataclass
class Corpus:
    """``n`` reservations: the plan, the customers, and the exact entries each booking transaction writes."""

    n: int
    bookings: list[Booking]
    customers: list[Customer]
    transactions: list[list[Entry]]
    expected: dict[str, dict[str, bytes]] = field(default_factory=dict)
    unsigned: dict[str, bytes] = field(default_factory=dict)
    """Each reservation's fields as plain msgpack (no envelope, signature or certificate)."""
    reservations: list[Reservation] = field(default_factory=list)
    updates: list[bytes] = field(default_factory=list)
    """Each booking transaction's update, written from its customer's own device (client id)."""
    first_update: dict[int, bytes] = field(default_factory=dict)
    """Per customer, the update that carried its certificate (seeds that customer's other devices)."""

    def authors(self, *, sign: bool = True) -> list[Author]:
        return [make_author(c, sign=sign) for c in self.customers]

    def book_all(self, replica: Replica, authors: list[Author], doc: DocId = DOC) -> list[bytes]:
        """The typed API: what a client does for each booking (sign, write, keep the update).

        Each customer writes on its own device (a replica under its own client id, as every
        replica requires: crdt_core.clientids) and ``replica`` applies each update, so this
        measures a write plus one apply per booking.
        """
        devices: dict[int, Replica] = {}
        updates = []
        for b in self.bookings:
            device = devices.get(b.customer)
            if device is None:
                device = devices[b.customer] = Replica(authors[b.customer].client_id())
            update = authors[b.customer].book(device, doc, slot=b.slot, party=b.party, note=b.note)[1]
            replica.apply_update(update)
            updates.append(update)
        return updates


@lru_cache(maxsize=8)
def corpus(n: int) -> Corpus:
    """Build (once per size) the signed records every engine will write."""
    bookings = plan(n)
    customers = [_customer(i) for i in range(max(b.customer for b in bookings) + 1)] if bookings else []
    authors = [make_author(c) for c in customers]
    # Each customer books from its own device: a replica under its own Yjs client id
    # (crdt_core.clientids); the scratch replica is the day that collects them all.
    devices = [Replica(a.client_id()) for a in authors]
    scratch = Replica()
    transactions: list[list[Entry]] = []
    expected: dict[str, dict[str, bytes]] = {}
    unsigned: dict[str, bytes] = {}
    reservations: list[Reservation] = []
    updates: list[bytes] = []
    first_update: dict[int, bytes] = {}
    for b in bookings:
        device = devices[b.customer]
        res, update = authors[b.customer].book(device, DOC, slot=b.slot, party=b.party, note=b.note)
        scratch.apply_update(update)
        updates.append(update)
        first_update.setdefault(b.customer, update)
        entries = [(i.root, i.key, i.value) for i in decode_update(update).inserts]
        assert all(isinstance(v, bytes) for _, _, v in entries)
        transactions.append(entries)
        for root, key, value in entries:
            expected.setdefault(root, {})[key] = value
        unsigned[res.id] = pack_fields(res.to_fields())
        reservations.append(res)
    assert expected == scratch.to_py()
    return Corpus(
        n, bookings, customers, transactions, expected, unsigned, reservations, updates, first_update
    )


def write_corpus(replica: Replica, c: Corpus) -> None:
    for entries in c.transactions:
        replica.write(entries)


@dataclass
class BookingDay:
    """A realistic day document: reservations, staff confirmations, cancellations, relay stamps."""

    corpus: Corpus
    replica: Replica
    updates: list[bytes]
    capacities: dict[str, int]


@lru_cache(maxsize=4)
def booking_day(n: int) -> BookingDay:
    c = corpus(n)
    # The day as the relay holds it, so it stamps under the relay's own client id.
    replica = Replica(RELAY_CLIENT_ID)
    updates: list[bytes] = []
    for update in c.updates:
        replica.apply_update(update)
        updates.append(update)
    staff = make_author(_customer(0, "staff"), id_prefix="ev")
    staff_device = Replica(staff.client_id())
    customer_authors = [make_author(cu, id_prefix="ev") for cu in c.customers]
    # A second device (generation 1) per customer, holding its certificate already.
    second: dict[int, Replica] = {}
    for i, (b, res) in enumerate(zip(c.bookings, c.reservations, strict=True)):
        if i % 3 == 0:
            updates.append(staff.event(staff_device, DOC, res.id, EventType.CONFIRM)[1])
            replica.apply_update(updates[-1])
        if i % 11 == 5:
            if b.customer not in second:
                second[b.customer] = Replica(customer_authors[b.customer].client_id(1))
                second[b.customer].apply_update(c.first_update[b.customer])
            updates.append(
                customer_authors[b.customer].event(second[b.customer], DOC, res.id, EventType.CANCEL)[1]
            )
            replica.apply_update(updates[-1])
    stamped = [r.id for r in c.reservations[: (n * 7) // 10]]
    for start in range(0, len(stamped), 100):
        updates.append(write_stamps(replica, DOC, RELAY, stamped[start : start + 100], start + 1, NOW_MS)[1])
    capacities = {slot: 6 for slot in SLOTS}
    return BookingDay(c, replica, updates, capacities)


def typical_updates(n: int, count: int) -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """``count`` independent typical booking updates against ``booking_day(n)``, plus bad ones.

    A typical update is one new reservation by a customer whose certificate the document already
    holds, written from that customer's own device (its own client id, clock 0), so each update
    validates against the day document on its own. The bad ones (each must be refused by every
    validation method): a reservation in another customer's name, a tampered signature, and an
    overwrite of an existing reservation.
    """
    day = booking_day(n)
    customers = day.corpus.customers
    good: list[bytes] = []
    for i in range(count):
        index = (i * 13) % len(customers)
        customer = customers[index]
        author = make_author(customer, id_prefix=f"t{i}-")
        # A device of its own (a generation the day does not use yet) holding its certificate.
        device = Replica(author.client_id(2 + (i // len(customers)) % (GENERATIONS - 2)))
        device.apply_update(day.corpus.first_update[index])
        good.append(author.book(device, DOC, slot=SLOTS[i % len(SLOTS)], party=1 + i % 3)[1])

    bad: list[tuple[str, bytes]] = []
    victim, thief = customers[0], customers[-1]
    forger = Author(
        victim.user_id,
        thief.device,
        HybridClock(victim.user_id, physical_ms=lambda: NOW_MS),
        id_factory=lambda: "forged-1",
    )
    device = Replica(forger.client_id(GENERATIONS - 1))  # the thief's own ids: its key signs
    device.apply_update(day.corpus.first_update[len(customers) - 1])
    bad.append(("forbidden", forger.book(device, DOC, slot=SLOTS[0])[1]))
    tampered = bytearray(good[0])
    tampered[-3] ^= 0x01  # inside the record's signature, the last value of the update
    bad.append(("bad_signature", bytes(tampered)))
    rewriter = day.replica.copy(client_id=200_002)
    key, raw = next(iter(rewriter.items("reservations")))
    bad.append(("rewrite", rewriter.write([("reservations", key, raw)])))
    return good, bad
