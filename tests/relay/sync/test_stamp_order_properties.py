"""The relay's stamp order for claims that reach it together, as a property over real signed updates.

Before the relay stamps anything, every replica ranks unstamped claims by (HLC, customer,
reservation id) (``crdt_core.verdict``). A device that carries several customers' offline bookings
(a shop tablet, a phone passing on what it got from peers) sends them in one update, in whatever
order its encoder or its peers left them. The relay must number claims that arrive together in
that tentative order (``crdt_core.verdict.stamp_order``); only a claim that reached the relay
*earlier*, on its own or in another bundle, may rank before one that every replica showed behind it.

The relay side here is the hub's real stamper (``relay.sync.stamping.Stamping.builder``) with
the document manager's ``StampSequence``, fed real validated updates; what is generated is who
books what, with which clock, and how the claims travel: random bundles (some of a single claim,
some re-carrying claims the relay already has), each with its client blocks in a random order.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, given, strategies as st

from crdt_core.authoring import Author
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica, merge_updates
from crdt_core.reader import read_bookings
from crdt_core.schema import Reservation
from crdt_core.validation import validate_update
from crdt_core.verdict import compute_verdict, tentative_key
from relay.documents.results import StampSequence
from relay.sync.stamping import Stamping
from tests.support.crdt_factory import NOW_MS, World
from tests.support.strategies import DOC, MINUTE_MS, SLOTS, client_block, yjs_update


@dataclass
class Claim:
    res: Reservation
    customer: int
    update: bytes


def bundle(claims: list[Claim], order: list[int]) -> bytes:
    """One Yjs update carrying ``claims``: one client block per customer, customers in ``order``.

    Yjs allows client blocks in any order within an update, and the relay meets the claims in the
    order of the blocks: this is the carrier's "arbitrary internal order"."""
    by_customer: dict[int, list[bytes]] = {}
    for claim in claims:
        by_customer.setdefault(claim.customer, []).append(claim.update)
    return yjs_update([client_block(merge_updates(by_customer[who])) for who in order if who in by_customer])


@st.composite
def journeys(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int]], list[tuple[list[int], list[int]]]]:
    """Clock offsets per customer, the claims ``(customer, slot)`` in booking order per device, and
    the arrivals: ``(claim indices, block order)`` each."""
    customers = draw(st.integers(2, 5))
    offsets = draw(st.lists(st.integers(-20, 0), min_size=customers, max_size=customers))
    claims = draw(
        st.lists(st.tuples(st.integers(0, customers - 1), st.integers(0, 1)), min_size=2, max_size=8)
    )
    arrivals: list[tuple[list[int], list[int]]] = []
    for _ in range(draw(st.integers(1, 6))):
        alone = draw(st.booleans())
        picked = (
            [draw(st.integers(0, len(claims) - 1))]
            if alone
            else draw(
                st.lists(st.integers(0, len(claims) - 1), min_size=1, max_size=len(claims), unique=True)
            )
        )
        arrivals.append((picked, draw(st.permutations(range(customers)))))
    # at the end a carrier brings whatever never reached the relay, so every claim gets a stamp
    arrivals.append((list(range(len(claims))), draw(st.permutations(range(customers)))))
    return offsets, claims, arrivals


def relay_stamper(world: World) -> object:
    """The hub's stamping step (``build_extra``); building stamps reads no document manager."""
    stamping = Stamping(manager=None, signing_key=lambda: world.relay, clock_ms=lambda: NOW_MS)  # type: ignore[arg-type]
    return stamping.builder(DOC)


@given(journeys())
def test_claims_that_arrive_together_are_stamped_in_the_tentative_order(
    journey: tuple[list[int], list[tuple[int, int]], list[tuple[list[int], list[int]]]],
) -> None:
    offsets, plan, arrivals = journey
    world = World()
    authors: list[Author] = [
        world.device(f"c{i}", clock_ms=NOW_MS + off * MINUTE_MS) for i, off in enumerate(offsets)
    ]
    devices = [Replica(client_id_for(a.device.cert_id, 0)) for a in authors]
    claims: list[Claim] = []
    for who, slot in plan:  # every booking is made offline, on the customer's own device
        res, update = authors[who].book(devices[who], DOC, SLOTS[slot], 1)
        claims.append(Claim(res, who, update))

    relay = Replica(client_id_for(f"relay:{world.relay.kid}", 0))
    cache = world.cache()
    build = relay_stamper(world)
    next_stamp = 1
    arrived_at: dict[str, int] = {}  # reservation id -> the arrival that first brought it
    delivered: set[int] = set()
    for when, (picked, order) in enumerate(arrivals):
        # A device's writes depend on its earlier ones: a carrier that has a claim has those too.
        carried = {
            i
            for i in range(len(claims))
            if any(claims[p].customer == claims[i].customer and i <= p for p in picked)
        }
        if carried <= delivered:
            continue
        update = bundle([claims[i] for i in sorted(carried)], order)
        checked = validate_update(DOC, relay, update, cache)
        relay.apply_update(update)
        for res in checked.new_reservations:
            arrived_at[res.id] = when
        stamps = StampSequence(next_stamp)
        assert build(relay, checked, stamps) is not None  # type: ignore[operator]
        stamps.close()
        next_stamp += stamps.count
        delivered |= carried
    event(f"arrivals: {len(set(arrived_at.values()))}")

    state = read_bookings(relay, DOC)
    stamp_of = {s.reservation: no for no, s in state.stamps.items()}
    assert sorted(stamp_of.values()) == list(range(1, len(claims) + 1))
    expected = sorted(claims, key=lambda c: (arrived_at[c.res.id], tentative_key(c.res)))
    assert sorted(claims, key=lambda c: stamp_of[c.res.id]) == expected
    # So every replica that showed these claims tentatively keeps their relative order once stamped,
    # unless one of them reached the relay earlier than the other.
    tentative = sorted(claims, key=lambda c: tentative_key(c.res))
    for i, a in enumerate(tentative):
        for b in tentative[i + 1 :]:
            if arrived_at[a.res.id] <= arrived_at[b.res.id]:
                assert stamp_of[a.res.id] < stamp_of[b.res.id]
    verdict = compute_verdict(state, {slot: 1 for slot in SLOTS})
    for slot_verdict in verdict.slots.values():
        in_order = [c.stamp for c in slot_verdict.claims if c.stamp is not None]
        assert len(in_order) == len(slot_verdict.claims) and in_order == sorted(in_order)
