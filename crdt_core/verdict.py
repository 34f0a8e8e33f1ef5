"""The booking verdict: who is confirmed and who waits, computed from merged data alone.

Why a verdict and not a CRDT rule: capacity is not preserved by merging (two valid offline states
can each hold the last seat), so documents hold *claims* and this pure function decides.

**Order.** Stamped claims first, by stamp number (the relay's sequence; a claim stamped twice
counts by its lowest stamp); then unstamped claims by (HLC, customer id, reservation id). Every
replica computes the same order from the same records, whatever order they arrived in.

**Status of a claim** (append-only events, never one overwritten key): the earliest of its
``cancel``/``decline`` events by (HLC, event id) makes it cancelled or declined; otherwise a
``no_show`` event makes it a no-show; otherwise it is active. A staff ``confirm`` does not move
seats: it records that the shop acknowledged the booking (``staff_confirmed``). Events of types
from a newer schema version are ignored.

**Seats: strict first-come, first-served.** Walk the order; an active (or no-show) claim takes its
party's seats while it fits; the first claim that does not fit, and every active claim after it,
is waitlisted, in order (a ``too_large`` claim, below, takes no part in the walk). A large party
therefore blocks smaller later ones. We chose that over letting later parties fill leftover seats
because it is the rule under which *a cancellation can never demote anyone*: confirmed claims are
always a prefix of the active order, and removing a claim from a prefix only lengthens it. With
gap-filling, cancelling A(2) in [A(2) B(3) C(2)] at capacity 4 would promote B and demote the
already-confirmed C. It is also the fair rule: nobody jumps the queue by booking a smaller party.

**Seats held:** cancelled and declined claims hold none; a no-show keeps the seat it held (it was
confirmed at the time; the past is not reshuffled).

**Impossible parties (``too_large``).** A claim whose party exceeds its slot's capacity can never
fit; under strict first-come, first-served it would waitlist everyone behind it, so one booking
could block a slot. So a claim that is not cancelled or declined, whose slot is *open* that day
(its capacity in ``capacities`` is above 0) and whose party is larger than that capacity, is
``too_large``: it holds no seats, has no waitlist position, and does not block the claims after
it (the walk skips it; it keeps its rank). That includes a claim staff marked as a no-show: at
this capacity it could not have held a seat. It is decided from the merged data alone, like the
rest of the verdict: a capacity cut below a party moves that claim into ``too_large`` (freeing
whatever it held), and a capacity raise to at least its party moves it back into the walk, where
it takes its place in the order (confirmed if it fits there, else waitlisted). A slot that is not
open that day (no template known here, an inactive template, a weekday it is not offered, or
capacity 0: all give capacity 0) keeps the plain rule: its claims wait, in order, until it opens.
``exceeds_capacity`` is this test, shared with the relay's refusal at arrival.

**Repeat claims (``duplicate``).** One customer holds at most ``per_customer`` active claims on
a slot on one day (the slot template's ``per_customer``, 1 when absent): booking the same slot
again is not a way to queue twice or to hold seats under two ids. Walking a slot's claims in
order, a claim that is not ``too_large`` is ``duplicate`` when at least that many earlier claims
of the same customer in that slot are *counted* (neither ``duplicate`` nor ``too_large``) and
still active at its HLC: not ended by a ``cancel`` or ``decline`` whose HLC is at or before the
claim's own. A ``duplicate`` holds no
seat, has no waitlist place, blocks nobody and counts for nobody (the walk skips it; it keeps its
rank). Comparing HLCs makes it a function of the merged data (a cancel written *after* the repeat
claim does not bring it back, so a cancellation still never promotes a claim over the ones
behind it out of turn), while a customer who cancels and then books again gets the new claim.
A cancelled or declined claim is that, whatever it would count as. ``repeat_booking`` is the
relay's arrival test (``duplicate_booking``).

**Stamp order for claims that arrive together.** The relay stamps the claims that reach it in one
update in ``stamp_order``: the tentative order (HLC, customer, reservation id) every replica
already showed for them, whatever order the update holds them in, so a device that carries
several customers' offline bookings in one update never reorders them. Claims of different
updates are stamped in the order the relay orders the updates (arrival).

**Finality.** A claim is *final* when it is stamped and this replica holds every stamp from 1 up
to its own (the gap-free prefix): nothing that arrives later can rank before it. A final confirmed
claim changes only through its own cancellation, a staff decline, or a capacity change: a cut,
or a raise that brings a ``too_large`` claim ranked before it back into the walk (a raise of the
slot's ``per_customer`` can likewise bring a ``duplicate`` claim ranked before it back). The relay refuses
a party above its slot's capacity at arrival, so a stamped claim is ``too_large`` only after a cut,
and such a raise gives it back the seat it held before the cut. Likewise it refuses a repeat
booking at arrival (``crdt_core.repeats``), so a stamped claim is ``duplicate`` only after a
capacity or ``per_customer`` change: that refusal is needed, because a stamped ``duplicate`` would
count again once a cancel with an earlier HLC arrived late for the claim it repeated, and could
push a final claim behind it onto the waitlist.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from crdt_core.reader import BookingsState
from crdt_core.schema import Reservation, StatusEvent

__all__ = [
    "ClaimState",
    "ClaimVerdict",
    "SlotVerdict",
    "Verdict",
    "VerdictChange",
    "compute_verdict",
    "diff_verdicts",
    "ended_by",
    "exceeds_capacity",
    "repeat_booking",
    "stamp_order",
    "tentative_key",
]


class ClaimState(StrEnum):
    CONFIRMED = "confirmed"
    WAITLISTED = "waitlisted"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    NO_SHOW = "no_show"
    TOO_LARGE = "too_large"
    """The party exceeds the slot's capacity that day: no seats, no waitlist place, blocks nobody."""
    DUPLICATE = "duplicate"
    """The customer already holds the slot's ``per_customer`` active claims that day: no seats, no
    waitlist place, blocks nobody."""


@dataclass(frozen=True)
class ClaimVerdict:
    reservation_id: str
    slot: str
    customer: str
    party: int
    state: ClaimState
    position: int | None
    """1-based place on the slot's waitlist, for waitlisted claims."""
    stamp: int | None
    final: bool
    rank: int
    """0-based place in the slot's claim order."""
    staff_confirmed: bool
    holds_seats: bool


@dataclass(frozen=True)
class SlotVerdict:
    slot: str
    capacity: int
    seats_taken: int
    claims: tuple[ClaimVerdict, ...]


@dataclass(frozen=True)
class Verdict:
    slots: Mapping[str, SlotVerdict]
    claims: Mapping[str, ClaimVerdict]
    stamp_prefix: int
    """Highest n such that stamps 1..n are all present."""

    def for_customer(self, customer: str) -> list[ClaimVerdict]:
        return [c for c in self.claims.values() if c.customer == customer]


def _status(events: list[StatusEvent]) -> tuple[ClaimState | None, bool]:
    """Returns (terminal state or None for active, staff_confirmed)."""
    terminal, _, confirmed = _status_at(events)
    return terminal, confirmed


def _status_at(events: list[StatusEvent]) -> tuple[ClaimState | None, str | None, bool]:
    """Returns (terminal state or None for active, the HLC of the event that ended it, staff_confirmed)."""
    terminal: tuple[str, str, ClaimState] | None = None
    no_show = False
    confirmed = False
    for ev in events:
        if ev.type in ("cancel", "decline"):
            state = ClaimState.CANCELLED if ev.type == "cancel" else ClaimState.DECLINED
            rank = (ev.hlc, ev.id, state)
            if terminal is None or rank[:2] < terminal[:2]:
                terminal = rank
        elif ev.type == "no_show":
            no_show = True
        elif ev.type == "confirm":
            confirmed = True
    if terminal is not None:
        return terminal[2], terminal[0], confirmed
    return (ClaimState.NO_SHOW if no_show else None), None, confirmed


def ended_by(end_hlc: str | None, at_hlc: str) -> bool:
    """Whether a claim that ended at ``end_hlc`` (None: still active) had ended by ``at_hlc``."""
    return end_hlc is not None and end_hlc <= at_hlc


def repeat_booking(held_ends: Iterable[str | None], claim_hlc: str, limit: int) -> bool:
    """The ``duplicate`` test: ``held_ends`` are the end HLCs (None: active) of the customer's
    earlier counted claims on the slot; the claim is a repeat when ``limit`` of them were still
    active at its HLC. Shared with the relay's refusal at arrival (``duplicate_booking``)."""
    return sum(1 for end in held_ends if not ended_by(end, claim_hlc)) >= limit


def tentative_key(res: Reservation) -> tuple[str, str, str]:
    """Where an unstamped claim ranks: (HLC, customer, reservation id)."""
    return (res.hlc, res.customer, res.id)


def stamp_order(claims: Iterable[Reservation]) -> list[Reservation]:
    """The order the relay stamps claims that reach it together: their tentative order.

    Why: before the relay stamps them, every replica ranks these claims by ``tentative_key``; giving
    them stamps in that same order keeps every verdict a device already showed, whatever order the
    carrier's update happened to hold them in.
    """
    return sorted(claims, key=tentative_key)


def exceeds_capacity(party: int, capacity: int) -> bool:
    """The ``too_large`` test: the slot is open that day (capacity above 0) and the party cannot fit."""
    return 0 < capacity < party


def claim_order(state: BookingsState) -> list[tuple[Reservation, int | None]]:
    """Every reservation in verdict order, with its stamp number (None when unstamped)."""
    stamp_of: dict[str, int] = {}
    for no, stamp in state.stamps.items():
        if stamp.reservation in state.reservations and no < stamp_of.get(stamp.reservation, no + 1):
            stamp_of[stamp.reservation] = no
    stamped = sorted((stamp_of[r.id], r) for r in state.reservations.values() if r.id in stamp_of)
    tentative = stamp_order(r for r in state.reservations.values() if r.id not in stamp_of)
    return [(r, no) for no, r in stamped] + [(r, None) for r in tentative]


def stamp_prefix(stamps: Container[int]) -> int:
    """How many stamps, from number 1, a document holds with no gap (the numbers or a map by number)."""
    n = 0
    while n + 1 in stamps:
        n += 1
    return n


def compute_verdict(
    state: BookingsState, capacities: Mapping[str, int], limits: Mapping[str, int] | None = None
) -> Verdict:
    """The verdict for one bookings document.

    Args:
        capacities: seats per slot id on this document's day (``SlotTemplate.capacity_on``); a slot
            this replica knows no template for has capacity 0, so its claims wait until it does.
            A claim whose party exceeds a capacity above 0 is ``too_large`` (module docstring).
        limits: active claims one customer may hold per slot id (``schema.per_customer_limits``);
            a slot missing here allows 1. Further claims are ``duplicate`` (module docstring).
    """
    events_of: dict[str, list[StatusEvent]] = {}
    for ev in state.events.values():
        events_of.setdefault(ev.reservation, []).append(ev)
    prefix = stamp_prefix(state.stamps)

    by_slot: dict[str, list[tuple[Reservation, int | None]]] = {}
    for res, no in claim_order(state):
        by_slot.setdefault(res.slot, []).append((res, no))

    slots: dict[str, SlotVerdict] = {}
    claims: dict[str, ClaimVerdict] = {}
    for slot in sorted(by_slot):
        capacity = max(0, capacities.get(slot, 0))
        limit = limits.get(slot, 1) if limits is not None else 1
        held: dict[str, list[str | None]] = {}  # per customer: end HLCs of its counted claims
        left = capacity
        blocked = False
        waiting = 0
        out: list[ClaimVerdict] = []
        for rank, (res, no) in enumerate(by_slot[slot]):
            terminal, end_hlc, staff_ok = _status_at(events_of.get(res.id, []))
            position = None
            holds = False
            state_now: ClaimState
            too_large = exceeds_capacity(res.party, capacity)
            mine = held.setdefault(res.customer, [])
            repeat = not too_large and repeat_booking(mine, res.hlc, limit)
            if not (repeat or too_large):  # a too_large claim holds nothing: it counts for nothing
                mine.append(end_hlc)
            if terminal in (ClaimState.CANCELLED, ClaimState.DECLINED):
                state_now = terminal
            elif too_large:
                state_now = ClaimState.TOO_LARGE  # skipped by the walk: it never blocks
            elif repeat:
                state_now = ClaimState.DUPLICATE  # skipped by the walk: it never blocks
            else:
                if not blocked and res.party <= left:
                    left -= res.party
                    holds = True
                    state_now = terminal or ClaimState.CONFIRMED
                else:
                    blocked = True
                    state_now = terminal or ClaimState.WAITLISTED
                    if state_now is ClaimState.WAITLISTED:  # a blocked no-show is not in the queue
                        waiting += 1
                        position = waiting
            cv = ClaimVerdict(
                reservation_id=res.id,
                slot=slot,
                customer=res.customer,
                party=res.party,
                state=state_now,
                position=position if state_now is ClaimState.WAITLISTED else None,
                stamp=no,
                final=no is not None and no <= prefix,
                rank=rank,
                staff_confirmed=staff_ok,
                holds_seats=holds,
            )
            out.append(cv)
            claims[res.id] = cv
        slots[slot] = SlotVerdict(slot, capacity, capacity - left, tuple(out))
    return Verdict(slots=slots, claims=claims, stamp_prefix=prefix)


@dataclass(frozen=True)
class VerdictChange:
    """A claim whose state changed between two verdicts: what a client notifies its user about."""

    reservation_id: str
    customer: str
    before: ClaimState | None
    after: ClaimState
    kind: str
    """``new``, ``confirmed``, ``promoted``, ``demoted``, ``cancelled``, ``declined``, ``no_show``,
    ``too_large`` (the party no longer fits the slot's capacity), ``waitlisted`` (e.g. out of
    ``too_large`` into a queue), ``final`` (same state, now final) or ``moved`` (waitlist position
    changed)."""


def diff_verdicts(old: Verdict | None, new: Verdict) -> list[VerdictChange]:
    """Name every reservation whose verdict changed, for notifications (promoted and demoted included)."""
    changes: list[VerdictChange] = []
    before_claims = old.claims if old is not None else {}
    for rid in sorted(new.claims):
        after = new.claims[rid]
        before = before_claims.get(rid)
        if before is None:
            kind = "new"
        elif before.state != after.state:
            if after.state is ClaimState.CONFIRMED and before.state is ClaimState.WAITLISTED:
                kind = "promoted"
            elif after.state is ClaimState.WAITLISTED and before.state is ClaimState.CONFIRMED:
                kind = "demoted"
            else:
                kind = after.state.value
        elif after.final and not before.final:
            kind = "final"
        elif after.position != before.position:
            kind = "moved"
        else:
            continue
        changes.append(
            VerdictChange(rid, after.customer, before.state if before else None, after.state, kind)
        )
    return changes
