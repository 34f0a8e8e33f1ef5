"""The booking verdict's invariants, as properties over real signed documents.

The seat rule is **strict first-come, first-served** (``crdt_core/verdict.py``): walk the claim order
(stamped claims by stamp, then unstamped ones by HLC, customer, id); an active or no-show claim takes
its party's seats while it fits; the first claim that does not fit, and every active claim after it,
waits, in order. A large party therefore blocks smaller later ones, and a cancellation can never
demote anyone (confirmed claims are a prefix of the active order). A customer's claim on a slot
beyond the slot's limit of active claims (1 here) is ``duplicate`` and takes no part in the walk.
:func:`reference` restates these rules independently and every scenario's verdict is compared with it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import assume, event, given, strategies as st

from crdt_core.authoring import write_stamps
from crdt_core.engine import Replica
from crdt_core.reader import BookingsState, read_bookings, slot_templates
from crdt_core.schema import SlotTemplate, parse_doc_id
from crdt_core.verdict import (
    ClaimState,
    ClaimVerdict,
    Verdict,
    compute_verdict,
    diff_verdicts,
    stamp_order,
)
from tests.support.crdt_factory import World, relay_client
from tests.support.strategies import (
    DOC,
    SHOP,
    SHOP_DOC,
    SLOTS,
    Day,
    Inbox,
    Op,
    booking_scenarios,
    capacities_st,
    deliver_all,
    receive,
    run_ops,
    verdict_of,
)

HOLDING = (ClaimState.CONFIRMED, ClaimState.NO_SHOW)
TERMINAL = (ClaimState.CANCELLED, ClaimState.DECLINED)
#: Claims outside the seat walk: they hold nothing, wait for nothing and block nobody.
OUT_OF_LINE = (*TERMINAL, ClaimState.TOO_LARGE, ClaimState.DUPLICATE)

scenarios = booking_scenarios()
offsets = st.lists(st.integers(-50, 50), min_size=3, max_size=3)


# --- the rule, restated -------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    state: ClaimState
    holds: bool
    position: int | None
    stamp: int | None
    final: bool
    rank: int


def reference(
    state: BookingsState, capacities: dict[str, int], limits: dict[str, int] | None = None
) -> dict[str, Expected]:
    """The documented verdict, written independently of ``verdict.py``."""
    first_stamp: dict[str, int] = {}
    for no in sorted(state.stamps):
        first_stamp.setdefault(state.stamps[no].reservation, no)
    prefix = next(n for n in itertools.count() if n + 1 not in state.stamps)

    def order(rid: str) -> tuple[int, int, str, str, str]:
        r = state.reservations[rid]
        if rid in first_stamp:
            return (0, first_stamp[rid], "", "", "")
        return (1, 0, r.hlc, r.customer, r.id)

    def status(rid: str) -> ClaimState | None:
        evs = [e for e in state.events.values() if e.reservation == rid]
        ends = sorted((e.hlc, e.id, e.type) for e in evs if e.type in ("cancel", "decline"))
        if ends:
            return ClaimState.CANCELLED if ends[0][2] == "cancel" else ClaimState.DECLINED
        return ClaimState.NO_SHOW if any(e.type == "no_show" for e in evs) else None

    def ended_at(rid: str) -> str | None:
        ends = sorted(
            (e.hlc, e.id)
            for e in state.events.values()
            if e.reservation == rid and e.type in ("cancel", "decline")
        )
        return ends[0][0] if ends else None

    out: dict[str, Expected] = {}
    for slot in {r.slot for r in state.reservations.values()}:
        claims = sorted((rid for rid, r in state.reservations.items() if r.slot == slot), key=order)
        left, blocked, waiting = capacities.get(slot, 0), False, 0
        counted: dict[str, list[str | None]] = {}  # per customer: when its counted claims ended
        for rank, rid in enumerate(claims):
            party, st_ = state.reservations[rid].party, status(rid)
            stamp = first_stamp.get(rid)
            final = stamp is not None and stamp <= prefix
            res = state.reservations[rid]
            too_large = capacities.get(slot, 0) > 0 and party > capacities.get(slot, 0)
            earlier = counted.setdefault(res.customer, [])
            active_then = [end for end in earlier if end is None or end > res.hlc]
            repeat = not too_large and len(active_then) >= (limits or {}).get(slot, 1)
            if not repeat and not too_large:
                earlier.append(ended_at(rid))
            if st_ in TERMINAL:
                assert st_ is not None
                out[rid] = Expected(st_, False, None, stamp, final, rank)
            elif too_large:
                out[rid] = Expected(ClaimState.TOO_LARGE, False, None, stamp, final, rank)
            elif repeat:
                out[rid] = Expected(ClaimState.DUPLICATE, False, None, stamp, final, rank)
            elif not blocked and party <= left:
                left -= party
                out[rid] = Expected(st_ or ClaimState.CONFIRMED, True, None, stamp, final, rank)
            else:
                blocked = True
                if st_ is None:
                    waiting += 1
                    out[rid] = Expected(ClaimState.WAITLISTED, False, waiting, stamp, final, rank)
                else:
                    out[rid] = Expected(st_, False, None, stamp, final, rank)
    return out


def observed(claim: ClaimVerdict) -> Expected:
    return Expected(claim.state, claim.holds_seats, claim.position, claim.stamp, claim.final, claim.rank)


def check_capacity(verdict: Verdict) -> None:
    for slot in verdict.slots.values():
        holding = [c for c in slot.claims if c.holds_seats]
        assert sum(c.party for c in holding) == slot.seats_taken <= slot.capacity
        assert all(c.state in HOLDING for c in holding)
        assert all(c.state not in TERMINAL or not c.holds_seats for c in slot.claims)
        confirmed = sum(c.party for c in slot.claims if c.state is ClaimState.CONFIRMED)
        assert confirmed <= slot.capacity


def build(ops: list[Op], clock_offsets: list[int]) -> Day:
    day = Day(World(), customers=3, clock_offsets_min=clock_offsets)
    run_ops(day, ops)
    return day


# --- the properties -------------------------------------------------------------------------------


@given(scenarios, capacities_st, offsets)
def test_confirmed_party_sizes_never_exceed_capacity(
    ops: list[Op], caps: dict[str, int], clocks: list[int]
) -> None:
    check_capacity(build(ops, clocks).verdict(caps))


@given(scenarios, capacities_st, offsets)
def test_the_verdict_follows_the_documented_rule(
    ops: list[Op], caps: dict[str, int], clocks: list[int]
) -> None:
    day = build(ops, clocks)
    verdict = day.verdict(caps)
    expected = reference(day.state(), caps)
    assert {rid: observed(c) for rid, c in verdict.claims.items()} == expected
    for slot in verdict.slots.values():
        assert [c.rank for c in slot.claims] == list(range(len(slot.claims)))
        waitlist = [c.position for c in slot.claims if c.state is ClaimState.WAITLISTED]
        assert waitlist == list(range(1, len(waitlist) + 1))
        # confirmed claims are a prefix of the active (not cancelled, declined or too large) order
        active = [c for c in slot.claims if c.state not in OUT_OF_LINE]
        holds = [c.holds_seats for c in active]
        assert holds == sorted(holds, reverse=True)


@given(
    scenarios,
    capacities_st,
    offsets,
    st.permutations(range(64)),
    st.lists(st.integers(0, 63), max_size=10),
)
def test_the_verdict_is_a_function_of_the_merged_data_only(
    ops: list[Op], caps: dict[str, int], clocks: list[int], perm: list[int], dups: list[int]
) -> None:
    """Any delivery order, with duplicates, ends in the same document and the same verdict."""
    day = build(ops, clocks)
    n = len(day.updates)
    order = [i for i in perm if i < n] + [d % n for d in dups if n]
    replica = Replica(500)
    deliver_all(DOC, replica, [day.updates[i] for i in order], day.world.cache())
    assert replica.to_py() == day.relay.to_py()
    assert verdict_of(replica, caps) == day.verdict(caps)


@given(
    before=scenarios,
    later=st.lists(
        st.tuples(st.integers(-55, 55), st.sampled_from(SLOTS), st.integers(1, 4), st.booleans()), max_size=6
    ),
    caps=capacities_st,
    clocks=offsets,
    perm=st.permutations(range(12)),
)
def test_a_final_confirmed_claim_is_never_demoted_by_claims_that_arrive_later(
    before: list[Op],
    later: list[tuple[int, str, int, bool]],
    caps: dict[str, int],
    clocks: list[int],
    perm: list[int],
) -> None:
    """New claims (from any clock, even far earlier, stamped later or not) arrive in any order."""
    day = build(before, clocks)
    phone = Replica(600)
    deliver_all(DOC, phone, day.updates, day.world.cache())
    first = verdict_of(phone, caps)
    finals = {rid: c for rid, c in first.claims.items() if c.final and c.state is ClaimState.CONFIRMED}
    event(f"final confirmed claims: {min(len(finals), 3)}{'+' if len(finals) >= 3 else ''}")
    start = len(day.updates)
    for offset, slot, party, stamped in later:
        rid = day.book(day.add_customer(offset), slot, party)
        if stamped:
            day.stamp([rid])
    arriving = day.updates[start:]
    inbox = Inbox(DOC, phone, day.world.cache())
    for i in [i for i in perm if i < len(arriving)]:
        inbox.offer(arriving[i])
        now = verdict_of(phone, caps)
        for rid, was in finals.items():
            assert now.claims[rid].state is ClaimState.CONFIRMED and now.claims[rid].holds_seats
            assert now.claims[rid].rank == was.rank  # nothing arriving later ranks before it
    assert not inbox.held


@given(before=scenarios, after=scenarios, caps=capacities_st, clocks=offsets)
def test_a_final_confirmed_claim_changes_only_by_its_own_cancel_or_decline(
    before: list[Op], after: list[Op], caps: dict[str, int], clocks: list[int]
) -> None:
    """Whatever happens next (bookings, stamps, anyone's events), a final confirmed claim keeps its seat
    unless it is itself cancelled or declined (a no-show keeps the seat too)."""
    day = build(before, clocks)
    first = day.verdict(caps)
    run_ops(day, after)
    now = day.verdict(caps)
    for rid, was in first.claims.items():
        if was.final and was.state is ClaimState.CONFIRMED:
            assert now.claims[rid].holds_seats or now.claims[rid].state in TERMINAL


@given(scenarios, capacities_st, offsets, st.integers(0, 100))
def test_a_cancellation_promotes_the_first_waitlisted_claim_if_it_fits_and_never_demotes(
    ops: list[Op], caps: dict[str, int], clocks: list[int], pick: int
) -> None:
    day = build(ops, clocks)
    before = day.verdict(caps)
    active = sorted(rid for rid, c in before.claims.items() if c.state not in TERMINAL)
    if not active:
        return
    gone = before.claims[active[pick % len(active)]]
    day.cancel(gone.reservation_id)
    after = day.verdict(caps)
    assert after.claims[gone.reservation_id].state is ClaimState.CANCELLED
    assert not after.claims[gone.reservation_id].holds_seats
    for rid, was in before.claims.items():
        if was.holds_seats and rid != gone.reservation_id:
            assert after.claims[rid].holds_seats, "a cancellation demoted someone"
            assert after.claims[rid].state is was.state
    # Strict FIFO: the head of the line (the first claim holding no seat that is not cancelled or
    # declined: a waitlisted claim, or rarely a blocked no-show) gets in iff it fits once the cancelled
    # claim's seats are free; if it does not fit, nobody behind it gets in.
    slot = before.slots[gone.slot]
    line = [
        c
        for c in slot.claims
        if not c.holds_seats and c.state not in OUT_OF_LINE and c.reservation_id != gone.reservation_id
    ]
    if not line:
        return
    head = line[0]
    if head.state is ClaimState.WAITLISTED:
        assert head.position == 1 or gone.state is ClaimState.WAITLISTED
    free = slot.capacity - slot.seats_taken + (gone.party if gone.holds_seats else 0)
    fits = head.party <= free
    event(f"head of the line {'fits' if fits else 'does not fit'}")
    assert after.claims[head.reservation_id].holds_seats == fits
    if fits and head.state is ClaimState.WAITLISTED:
        assert after.claims[head.reservation_id].state is ClaimState.CONFIRMED
        assert any(
            ch.kind == "promoted" and ch.reservation_id == head.reservation_id
            for ch in diff_verdicts(before, after)
        )
    if not fits:
        assert not any(after.claims[c.reservation_id].holds_seats for c in line)


@given(scenarios, capacities_st, offsets, st.data())
def test_a_tentative_claim_never_displaces_a_stamped_one(
    ops: list[Op], caps: dict[str, int], clocks: list[int], data: st.DataObject
) -> None:
    day = build(ops, clocks)
    day.stamp(day.unstamped())
    before = day.verdict(caps)
    # new offline bookings, from clocks as early as the certificates allow: all stay unstamped
    for _ in range(data.draw(st.integers(1, 5))):
        who = day.add_customer(data.draw(st.integers(-59, 0)))
        day.book(who, data.draw(st.sampled_from(SLOTS)), data.draw(st.integers(1, 4)))
    after = day.verdict(caps)
    for rid, was in before.claims.items():
        assert observed(after.claims[rid]) == observed(was)
    for slot in after.slots.values():
        stamped = [c.rank for c in slot.claims if c.stamp is not None]
        tentative = [c.rank for c in slot.claims if c.stamp is None]
        assert all(t > s for t in tentative for s in stamped)
        assert all(not c.final for c in slot.claims if c.stamp is None)


@given(scenarios, capacities_st, offsets, st.integers(0, 100))
def test_a_decline_frees_the_seats(ops: list[Op], caps: dict[str, int], clocks: list[int], pick: int) -> None:
    day = build(ops, clocks)
    before = day.verdict(caps)
    holding = sorted(rid for rid, c in before.claims.items() if c.state is ClaimState.CONFIRMED)
    if not holding:
        return
    # A stamped duplicate is a claim the relay refuses at arrival (``duplicate_booking``); these
    # histories skip the relay, and a decline with an HLC before that claim's would revive it.
    assume(not any(c.state is ClaimState.DUPLICATE and c.stamp is not None for c in before.claims.values()))
    target = before.claims[holding[pick % len(holding)]]
    day.staff_event(target.reservation_id, "decline")
    after = day.verdict(caps)
    assert after.claims[target.reservation_id].state is ClaimState.DECLINED
    assert not after.claims[target.reservation_id].holds_seats
    promoted = [
        c.party
        for rid, c in after.claims.items()
        if c.slot == target.slot and c.holds_seats and not before.claims[rid].holds_seats
    ]
    slot_before, slot_after = before.slots[target.slot], after.slots[target.slot]
    assert slot_after.seats_taken == slot_before.seats_taken - target.party + sum(promoted)
    assert all(
        after.claims[rid].holds_seats
        for rid, c in before.claims.items()
        if c.holds_seats and rid != target.reservation_id
    )


@given(scenarios, capacities_st, offsets, st.integers(0, 100))
def test_a_no_show_keeps_its_seat(ops: list[Op], caps: dict[str, int], clocks: list[int], pick: int) -> None:
    day = build(ops, clocks)
    before = day.verdict(caps)
    holding = sorted(rid for rid, c in before.claims.items() if c.state is ClaimState.CONFIRMED)
    if not holding:
        return
    target = holding[pick % len(holding)]
    day.staff_event(target, "no_show")
    after = day.verdict(caps)
    assert after.claims[target].state is ClaimState.NO_SHOW
    assert after.claims[target].holds_seats
    assert (
        after.slots[before.claims[target].slot].seats_taken
        == before.slots[before.claims[target].slot].seats_taken
    )
    for rid, was in before.claims.items():
        if rid != target:
            assert observed(after.claims[rid]) == observed(was)


def capacities_from(shop: Replica) -> dict[str, int]:
    day = parse_doc_id(DOC).day
    assert day is not None
    return {slot: t.capacity_on(day) for slot, t in slot_templates(shop, SHOP_DOC).items()}


@given(scenarios, offsets, st.integers(1, 6), st.integers(0, 6))
def test_a_capacity_cut_through_a_newer_slot_template_can_demote(
    ops: list[Op], clocks: list[int], old_cap: int, new_cap: int
) -> None:
    day = build(ops, clocks)
    owner = day.world.device("owner1", owner_of=[SHOP])
    shop, owner_phone, cache = Replica(700), Replica(owner.client_id()), day.world.cache()
    for slot in SLOTS:
        template = SlotTemplate(slot, "cut", "09:00", 30, old_cap, None, True, owner.hlc())
        receive(SHOP_DOC, shop, owner.put(owner_phone, SHOP_DOC, [(template, None)]), cache)
    assert capacities_from(shop) == {"s1": old_cap, "s2": old_cap}
    before = compute_verdict(day.state(), capacities_from(shop))
    cut = SlotTemplate("s1", "cut", "09:00", 30, new_cap, None, True, owner.hlc())
    receive(SHOP_DOC, shop, owner.put(owner_phone, SHOP_DOC, [(cut, None)]), cache)
    caps = capacities_from(shop)
    assert caps == {"s1": new_cap, "s2": old_cap}
    after = compute_verdict(day.state(), caps)
    check_capacity(after)
    assert {rid: observed(c) for rid, c in after.claims.items()} == reference(day.state(), caps)
    demoted = {rid for rid, c in before.claims.items() if c.holds_seats and not after.claims[rid].holds_seats}
    if new_cap >= old_cap:
        # A raise demotes only behind a claim it brings back from too_large, ranked before it, or
        # makes a claim duplicate: its customer's earlier claim came back from too_large and counts.
        readmitted = [
            c for rid, c in after.claims.items() if before.claims[rid].state is ClaimState.TOO_LARGE
            and c.state is not ClaimState.TOO_LARGE
        ]  # fmt: skip
        for rid in demoted:
            if after.claims[rid].state is ClaimState.DUPLICATE:
                continue
            assert any(c.slot == "s1" and c.rank < after.claims[rid].rank for c in readmitted), rid
    changes = {ch.reservation_id: ch for ch in diff_verdicts(before, after)}
    for rid in demoted:
        assert after.claims[rid].slot == "s1"
        if before.claims[rid].state is ClaimState.CONFIRMED:
            too_large = after.claims[rid].party > new_cap > 0
            duplicate = after.claims[rid].state is ClaimState.DUPLICATE
            assert changes[rid].kind == (
                "too_large" if too_large else "duplicate" if duplicate else "demoted"
            )


def test_a_template_with_an_older_hlc_does_not_supersede_a_newer_one_whatever_the_arrival_order() -> None:
    world = World()
    owner = world.device("owner1", owner_of=[SHOP])
    late_clock = world.device("staff9", staff_of=[SHOP], clock_ms=world.now_ms - 30 * 60_000)
    newer = SlotTemplate("s1", "cut", "09:00", 30, 2, None, True, owner.hlc())
    older = SlotTemplate("s1", "cut", "09:00", 30, 9, None, True, late_clock.hlc())
    u_newer = owner.put(Replica(owner.client_id()), SHOP_DOC, [(newer, None)])
    u_older = late_clock.put(Replica(late_clock.client_id()), SHOP_DOC, [(older, None)])
    for order in ([u_newer, u_older], [u_older, u_newer]):
        shop = Replica(3)
        deliver_all(SHOP_DOC, shop, order, world.cache())
        assert capacities_from(shop) == {"s1": 2}


@given(before=scenarios, after=scenarios, caps=capacities_st, clocks=offsets)
def test_diff_verdicts_names_every_change_and_only_changes(
    before: list[Op], after: list[Op], caps: dict[str, int], clocks: list[int]
) -> None:
    day = build(before, clocks)
    old = day.verdict(caps)
    run_ops(day, after)
    new = day.verdict(caps)
    changes = {ch.reservation_id: ch for ch in diff_verdicts(old, new)}
    for rid, now in new.claims.items():
        was = old.claims.get(rid)
        if was is None:
            assert changes[rid].kind == "new" and changes[rid].before is None
            continue
        if was.state is ClaimState.WAITLISTED and now.state is ClaimState.CONFIRMED:
            assert changes[rid].kind == "promoted"
        elif was.state is ClaimState.CONFIRMED and now.state is ClaimState.WAITLISTED:
            assert changes[rid].kind == "demoted"
        elif was.state is not now.state:
            assert changes[rid].kind == now.state.value
        elif now.final and not was.final:
            assert changes[rid].kind == "final"
        elif now.position != was.position:
            assert changes[rid].kind == "moved"
        else:
            assert rid not in changes
        if rid in changes:
            assert (changes[rid].before, changes[rid].after) == (was.state, now.state)
            assert changes[rid].customer == now.customer
    assert set(changes) <= set(new.claims)
    assert [ch.kind for ch in diff_verdicts(None, new)] == ["new"] * len(new.claims)
    assert diff_verdicts(new, new) == []


# --- documented examples --------------------------------------------------------------------------


def test_strict_fifo_a_large_party_blocks_smaller_later_ones() -> None:
    day = Day(World(), customers=3)
    a, b, c = day.book(0, "s1", 1), day.book(1, "s1", 3), day.book(2, "s1", 1)
    day.stamp([a, b, c])
    v = day.verdict({"s1": 3})
    assert [(v.claims[r].state, v.claims[r].position) for r in (a, b, c)] == [
        (ClaimState.CONFIRMED, None),
        (ClaimState.WAITLISTED, 1),
        (ClaimState.WAITLISTED, 2),  # one seat is free, but C does not jump the queue
    ]
    assert v.slots["s1"].seats_taken == 1


def test_the_docstring_example_a_cancellation_never_demotes() -> None:
    """[A(2) B(3) C(2)] at capacity 4. Gap-filling would confirm A and C, then cancelling A would
    promote B and demote the already-confirmed C. Strict FIFO: C was never confirmed."""
    day = Day(World(), customers=3)
    a, b, c = day.book(0, "s1", 2), day.book(1, "s1", 3), day.book(2, "s1", 2)
    day.stamp([a, b, c])
    v1 = day.verdict({"s1": 4})
    assert [v1.claims[r].state for r in (a, b, c)] == [
        ClaimState.CONFIRMED,
        ClaimState.WAITLISTED,
        ClaimState.WAITLISTED,
    ]
    day.cancel(a)
    v2 = day.verdict({"s1": 4})
    assert [v2.claims[r].state for r in (a, b, c)] == [
        ClaimState.CANCELLED,
        ClaimState.CONFIRMED,
        ClaimState.WAITLISTED,
    ]
    assert {(ch.reservation_id, ch.kind) for ch in diff_verdicts(v1, v2)} == {
        (a, "cancelled"),
        (b, "promoted"),
        (c, "moved"),
    }


def test_a_claim_is_final_only_with_the_gap_free_prefix_of_stamps() -> None:
    """Stamps from one relay replica are ordered by the CRDT itself; a gap shows up when stamps come
    from two relay nodes (or a relay restored from a backup), each writing with its own client id."""
    day = Day(World(), customers=2)
    a, b = day.book(0, "s1", 1), day.book(1, "s1", 1)
    node2 = day.relay.copy(relay_client(day.world.relay, 1))  # another generation of the relay's ids
    day.stamp([a])
    _, stamp2 = write_stamps(node2, DOC, day.world.relay, [b], 2, day.world.now_ms)
    bookings, stamp1 = day.updates[:2], day.updates[2]
    phone = Replica(800)
    deliver_all(DOC, phone, [*bookings, stamp2], day.world.cache())
    v = verdict_of(phone, {"s1": 2})
    assert (v.claims[b].stamp, v.claims[b].final, v.stamp_prefix) == (2, False, 0)
    assert v.claims[b].rank == 0  # stamped claims rank first, even before the prefix is complete
    receive(DOC, phone, stamp1, day.world.cache())
    v = verdict_of(phone, {"s1": 2})
    assert (v.claims[a].final, v.claims[b].final, v.stamp_prefix) == (True, True, 2)
    assert [c.reservation_id for c in v.slots["s1"].claims] == [a, b]


def test_a_claim_stamped_twice_ranks_by_its_lowest_stamp() -> None:
    day = Day(World(), customers=2)
    a, b = day.book(0, "s1", 1), day.book(1, "s1", 1)
    day.stamp([b, a])
    day.stamp([b])
    v = day.verdict({"s1": 1})
    assert (v.claims[b].stamp, v.claims[b].state) == (1, ClaimState.CONFIRMED)
    assert (v.claims[a].stamp, v.claims[a].state) == (2, ClaimState.WAITLISTED)


def test_a_slot_without_a_template_has_no_seats() -> None:
    day = Day(World(), customers=1)
    rid = day.book(0, "s9", 1)
    assert day.verdict({"s1": 5}).claims[rid].state is ClaimState.WAITLISTED


def test_waitlist_positions_count_only_waitlisted_claims() -> None:
    """Regression: a blocked no-show claim took a waitlist number, so the queue started at 2."""
    day = Day(World(), customers=3)
    a, b, c = day.book(0, "s1", 2), day.book(1, "s1", 2), day.book(2, "s1", 1)
    day.stamp([a, b, c])
    day.staff_event(b, "no_show")  # staff mark a waitlisted claim as a no-show
    v = day.verdict({"s1": 2})
    assert (v.claims[b].state, v.claims[b].holds_seats) == (ClaimState.NO_SHOW, False)
    assert (v.claims[c].state, v.claims[c].position) == (ClaimState.WAITLISTED, 1)


def test_the_earliest_terminal_event_decides() -> None:
    day = Day(World(), customers=1)
    rid = day.book(0, "s1", 1)
    day.staff_event(rid, "decline")
    day.cancel(rid)  # later HLC: the decline stands
    assert day.verdict({"s1": 1}).claims[rid].state is ClaimState.DECLINED
    state = read_bookings(day.relay, DOC)
    assert len(state.events) == 2


# --- impossible parties (too_large) ----------------------------------------------------------------


def stamped(*parties: int) -> tuple[Day, list[str]]:
    """One customer per party, each booking slot s1 in turn, stamped in that order."""
    day = Day(World(), customers=len(parties))
    ids = [day.book(i, "s1", party) for i, party in enumerate(parties)]
    day.stamp(ids)
    return day, ids


def seating(v: Verdict, ids: list[str]) -> list[tuple[ClaimState, int | None]]:
    return [(v.claims[r].state, v.claims[r].position) for r in ids]


def test_a_party_larger_than_the_slot_is_too_large_and_blocks_nobody() -> None:
    """Under plain strict FIFO, B(5) at capacity 3 would waitlist itself and everyone behind it."""
    day, (a, b, c) = stamped(1, 5, 2)
    v = day.verdict({"s1": 3})
    assert seating(v, [a, b, c]) == [
        (ClaimState.CONFIRMED, None),
        (ClaimState.TOO_LARGE, None),
        (ClaimState.CONFIRMED, None),  # not blocked by B
    ]
    assert [v.claims[r].holds_seats for r in (a, b, c)] == [True, False, True]
    assert v.claims[b].rank == 1  # it keeps its place in the order, it just takes no part in the walk
    assert v.slots["s1"].seats_taken == 3


def test_too_large_does_not_take_a_waitlist_place() -> None:
    day, ids = stamped(2, 2, 9, 1)
    assert seating(day.verdict({"s1": 3}), ids) == [
        (ClaimState.CONFIRMED, None),
        (ClaimState.WAITLISTED, 1),
        (ClaimState.TOO_LARGE, None),
        (ClaimState.WAITLISTED, 2),  # strict FIFO still holds among claims that can fit
    ]


def test_a_capacity_change_moves_a_claim_into_and_out_of_too_large() -> None:
    day, (a, b, c) = stamped(1, 5, 1)
    small = day.verdict({"s1": 3})
    assert seating(small, [a, b, c]) == [
        (ClaimState.CONFIRMED, None),
        (ClaimState.TOO_LARGE, None),
        (ClaimState.CONFIRMED, None),
    ]
    # raised to 6: B fits again and takes its place in the order, ahead of C
    large = day.verdict({"s1": 6})
    assert seating(large, [a, b, c]) == [
        (ClaimState.CONFIRMED, None),
        (ClaimState.CONFIRMED, None),
        (ClaimState.WAITLISTED, 1),
    ]
    assert {(ch.reservation_id, ch.kind) for ch in diff_verdicts(small, large)} == {
        (b, "confirmed"),
        (c, "demoted"),
    }
    # raised to 5 only: B (rank 1) does not fit behind A, so it waits and C waits behind it
    five = day.verdict({"s1": 5})
    assert seating(five, [b, c]) == [
        (ClaimState.WAITLISTED, 1),
        (ClaimState.WAITLISTED, 2),
    ]
    assert {(ch.reservation_id, ch.kind) for ch in diff_verdicts(small, five)} == {
        (b, "waitlisted"),
        (c, "demoted"),
    }
    # cut back to 3: B is too large again (a confirmed claim leaves the walk), C is promoted
    again = day.verdict({"s1": 3})
    assert again == small
    changes = {(ch.reservation_id, ch.before, ch.after, ch.kind) for ch in diff_verdicts(large, again)}
    assert changes == {
        (b, ClaimState.CONFIRMED, ClaimState.TOO_LARGE, "too_large"),
        (c, ClaimState.WAITLISTED, ClaimState.CONFIRMED, "promoted"),
    }


def test_a_closed_or_unknown_slot_keeps_the_plain_rule_claims_wait() -> None:
    """Capacity 0 (no template here, inactive, not offered that weekday) is not "too small": the slot
    is closed, and its claims wait in order as before, until it opens."""
    day, ids = stamped(5, 1)
    for caps in ({"s1": 0}, {}):
        assert seating(day.verdict(caps), ids) == [
            (ClaimState.WAITLISTED, 1),
            (ClaimState.WAITLISTED, 2),
        ]


def test_an_inactive_template_is_a_closed_slot_not_a_small_one() -> None:
    day = Day(World(), customers=1)
    big = day.book(0, "s1", 4)
    owner = day.world.device("owner1", owner_of=[SHOP])
    shop, owner_phone = Replica(700), Replica(owner.client_id())
    off = SlotTemplate("s1", "cut", "09:00", 30, 2, None, False, owner.hlc())
    receive(SHOP_DOC, shop, owner.put(owner_phone, SHOP_DOC, [(off, None)]), day.world.cache())
    assert day.verdict(capacities_from(shop)).claims[big].state is ClaimState.WAITLISTED
    on = SlotTemplate("s1", "cut", "09:00", 30, 2, None, True, owner.hlc())
    receive(SHOP_DOC, shop, owner.put(owner_phone, SHOP_DOC, [(on, None)]), day.world.cache())
    assert day.verdict(capacities_from(shop)).claims[big].state is ClaimState.TOO_LARGE


def test_cancelled_and_declined_win_over_too_large_a_no_show_does_not() -> None:
    day = Day(World(), customers=3)
    a, b, c = day.book(0, "s1", 5), day.book(1, "s1", 5), day.book(2, "s1", 5)
    day.cancel(a)
    day.staff_event(b, "decline")
    day.staff_event(c, "no_show")
    v = day.verdict({"s1": 2})
    assert [v.claims[r].state for r in (a, b, c)] == [
        ClaimState.CANCELLED,
        ClaimState.DECLINED,
        ClaimState.TOO_LARGE,  # at this capacity it never held a seat to keep
    ]
    assert not v.claims[c].holds_seats


def test_stamp_order_is_the_tentative_order() -> None:
    """What the relay calls to number claims that reach it together: (HLC, customer, id)."""
    day = Day(World(), customers=3, clock_offsets_min=[0, -5, -5])
    a, b, c = day.book(0, "s1", 1), day.book(1, "s1", 1), day.book(2, "s1", 1)
    state = day.state()
    claims = [state.reservations[r] for r in (a, c, b)]
    ordered = stamp_order(claims)
    assert ordered == sorted(claims, key=lambda r: (r.hlc, r.customer, r.id))
    assert [r.id for r in ordered][-1] == a  # the latest clock ranks last
    tentative = [c.reservation_id for c in day.verdict({"s1": 3}).slots["s1"].claims]
    assert tentative == [r.id for r in ordered]
