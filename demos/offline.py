"""`make demo` (until the networked client lands): two offline replicas contend for the last seat.

Everything runs in one process on crdt_core alone, with real CRDT documents and real signatures:

1. A shop offers a slot with capacity 2; Carol's booking already holds one seat (stamped 1).
2. Alice's phone and Bob's phone are both offline; each books the last seat.
3. Their deltas cross: Alice receives Bob's, Bob receives Alice's (opposite orders), each validated.
   Both show the same *tentative* verdict, ordered by HLC.
4. The relay receives Bob's update first, then Alice's, and stamps them in that order.
5. The stamps reach the phones in opposite orders; both end with the same *final* verdict, the
   capacity holds, and Alice (whose offline booking lost) is told she is waitlisted.

Exits non-zero if any invariant fails.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import date

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import CertificateCache, DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.hlc import HybridClock
from crdt_core.reader import read_bookings, slot_templates
from crdt_core.records import RELAY_SIGNER_PREFIX
from crdt_core.schema import DocId, SlotTemplate
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import Verdict, compute_verdict, diff_verdicts

NOW = 1_790_000_000_000
DAY = "2026-12-01"
SHOP = "barber1"


def writer_id(author: Author) -> int:
    """The Yjs client id a device writes a document under (generation 0)."""
    return client_id_for(author.device.cert_id, 0)


def say(step: str, text: str) -> None:
    print(f"[{step:>8}] {text}")


class Phone:
    """One replica: a user's device holding the shop doc and one day's bookings doc."""

    def __init__(self, name: str, author: Author, trust: CertificateCache) -> None:
        self.name = name
        self.author = author
        # Every writer writes under a client id derived from its certificate (crdt_core.clientids).
        self.shop = Replica(writer_id(author))
        self.day = Replica(writer_id(author))
        self.trust = trust
        self.outbox: list[bytes] = []
        self.shown: Verdict | None = None

    def receive(self, update: bytes, what: str) -> None:
        validate_update(DocId.bookings(SHOP, DAY), self.day, update, self.trust)
        self.day.apply_update(update)
        say(self.name, f"received {what}")

    def verdict(self) -> Verdict:
        caps = {
            sid: t.capacity_on(date.fromisoformat(DAY))
            for sid, t in slot_templates(self.shop, f"shop:{SHOP}").items()
        }
        return compute_verdict(read_bookings(self.day, f"bookings:{SHOP}:{DAY}"), caps)

    def refresh(self, names: dict[str, str]) -> Verdict:
        new = self.verdict()
        for change in diff_verdicts(self.shown, new):
            if change.customer == self.author.user_id and change.kind != "new":
                say(
                    self.name,
                    f"NOTICE: your booking {change.reservation_id} is now "
                    f"{change.after.value} ({change.kind})",
                )
        self.shown = new
        return new


def render(v: Verdict, names: dict[str, str]) -> str:
    lines = []
    for slot in v.slots.values():
        lines.append(f"slot {slot.slot}: {slot.seats_taken}/{slot.capacity} seats taken")
        for c in slot.claims:
            tag = f"stamp {c.stamp}" if c.stamp else "tentative"
            fin = "final" if c.final else "not final"
            pos = f" #{c.position}" if c.position else ""
            lines.append(
                f"    {names[c.customer]:<6} party {c.party}  {c.state.value}{pos:<4} ({tag}, {fin})"
            )
    return "\n".join(lines)


def verdict_signature(v: Verdict) -> list[tuple[str, str, int | None]]:
    return [
        (c.reservation_id, c.state.value, c.position)
        for c in sorted(v.claims.values(), key=lambda c: c.reservation_id)
    ]


def check(ok: bool, what: str, failures: list[str]) -> None:
    say("check", f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def main(argv: Iterable[str] = ()) -> int:
    relay_key = SigningKey("relay-demo", Ed25519PrivateKey.from_private_bytes(b"\x01" * 32))
    trust = CertificateCache({relay_key.kid: relay_key.public})

    def device(user: str, seed: int, clock_ms: int, **rights: list[str]) -> Author:
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        cert = issue_certificate(
            relay_key,
            user_id=user,
            roles=rights.get("roles", []),
            owner_of=rights.get("owner_of", []),
            staff_of=rights.get("staff_of", []),
            device_public_key=public_bytes(key),
            issued_at_ms=NOW - 3_600_000,
            expires_at_ms=NOW + 86_400_000,
        )
        return Author(user, DeviceKey(key, cert), HybridClock(user, physical_ms=lambda: clock_ms))

    owner = device("u-owner", 2, NOW, owner_of=[SHOP])
    names = {"u-owner": "owner", "u-carol": "Carol", "u-alice": "Alice", "u-bob": "Bob"}
    # Alice's phone clock reads 5 s earlier than Bob's: tentatively she ranks first.
    alice = Phone("Alice", device("u-alice", 3, NOW + 10_000), trust)
    bob = Phone("Bob", device("u-bob", 4, NOW + 15_000), trust)
    carol = device("u-carol", 5, NOW + 1_000)
    relay_day = Replica(client_id_for(RELAY_SIGNER_PREFIX + relay_key.kid, 0))
    failures: list[str] = []
    policy = ArrivalPolicy(now_ms=NOW + 60_000)

    say("owner", "publishes slot 'cut-10' (10:00, 30 min) with capacity 2")
    shop_update = owner.put(
        Replica(writer_id(owner)),
        f"shop:{SHOP}",
        [
            (
                SlotTemplate(
                    id="cut-10",
                    service="haircut",
                    start="10:00",
                    duration=30,
                    capacity=2,
                    weekdays=None,
                    active=True,
                    hlc=owner.hlc(),
                ),
                None,
            )
        ],
    )
    for phone in (alice, bob):
        phone.shop.apply_update(shop_update)

    carol_res, carol_update = carol.book(Replica(writer_id(carol)), f"bookings:{SHOP}:{DAY}", "cut-10", 1)
    validate_update(f"bookings:{SHOP}:{DAY}", relay_day, carol_update, trust, policy)
    relay_day.apply_update(carol_update)
    _, stamp1 = write_stamps(relay_day, f"bookings:{SHOP}:{DAY}", relay_key, [carol_res.id], 1, NOW + 2_000)
    say("relay", "accepted Carol's booking and stamped it #1 (1 of 2 seats taken)")
    for phone in (alice, bob):
        phone.receive(relay_day.encode_state(), "the day so far from the relay")
        phone.refresh(names)

    say("network", "Alice and Bob go offline")
    a_res, a_update = alice.author.book(alice.day, f"bookings:{SHOP}:{DAY}", "cut-10", 1)
    say("Alice", f"books the last seat offline (reservation {a_res.id})")
    alice.refresh(names)
    b_res, b_update = bob.author.book(bob.day, f"bookings:{SHOP}:{DAY}", "cut-10", 1)
    say("Bob", f"books the last seat offline (reservation {b_res.id})")
    bob.refresh(names)

    say("network", "the phones meet and swap deltas (each applies the other's)")
    alice.receive(b_update, "Bob's booking")
    bob.receive(a_update, "Alice's booking")
    va, vb = alice.refresh(names), bob.refresh(names)
    print(render(va, names))
    check(verdict_signature(va) == verdict_signature(vb), "tentative verdicts agree on both phones", failures)

    say("network", "Bob reaches the relay first, then Alice")
    for who, update in (("Bob", b_update), ("Alice", a_update)):
        accepted = validate_update(f"bookings:{SHOP}:{DAY}", relay_day, update, trust, policy)
        relay_day.apply_update(update)
        rid = accepted.new_reservations[0].id
        no = read_bookings(relay_day, f"bookings:{SHOP}:{DAY}").stamps.keys()
        _, stamp_update = write_stamps(
            relay_day, f"bookings:{SHOP}:{DAY}", relay_key, [rid], max(no) + 1, NOW + 70_000
        )
        say("relay", f"stored {who}'s booking and stamped it #{max(no) + 1}")
        if who == "Bob":
            stamp_bob = stamp_update
        else:
            stamp_alice = stamp_update

    say("network", "stamps arrive in opposite orders")
    try:
        alice.receive(stamp_alice, "stamp #3")
        check(False, "stamp #3 without #2 is held back", failures)
    except ValidationError as exc:
        say("Alice", f"stamp #3 arrived before #2: refused ({exc.code}); re-syncing by state vector")
        alice.receive(relay_day.diff(alice.day.state_vector()), "the relay's diff against her state vector")
    bob.receive(stamp_bob, "stamp #2")
    bob.receive(stamp_alice, "stamp #3")
    bob.receive(stamp_bob, "stamp #2 again (a duplicate: harmless)")
    va, vb = alice.refresh(names), bob.refresh(names)
    print(render(va, names))

    check(verdict_signature(va) == verdict_signature(vb), "final verdicts agree on both phones", failures)
    check(
        alice.day.to_py() == bob.day.to_py() == relay_day.to_py(),
        "documents identical on phones and relay",
        failures,
    )
    for slot in va.slots.values():
        check(slot.seats_taken <= slot.capacity, f"capacity of {slot.slot} never exceeded", failures)
    check(
        va.claims[b_res.id].state.value == "confirmed" and va.claims[b_res.id].final,
        "Bob's stamped booking is confirmed and final",
        failures,
    )
    check(
        va.claims[a_res.id].state.value == "waitlisted",
        "Alice, who lost the last seat, is waitlisted",
        failures,
    )
    if failures:
        print(f"demo FAILED: {len(failures)} invariant(s) broken", file=sys.stderr)
        return 1
    print("demo passed: every invariant holds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
