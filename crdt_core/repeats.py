"""The relay's arrival check for repeat bookings (``duplicate_booking``).

Why at arrival as well as in the verdict: the verdict already makes a customer's extra claim on a
slot ``duplicate`` (``crdt_core.verdict``: it holds no seat and blocks nobody), but refusing it when
it reaches the relay tells the customer at once and keeps it out of the log, like
``party_too_large``. The test is the verdict's own (``verdict.repeat_booking``) over the relay's
copy of the day: the customer's claims on the slot that count (not ``duplicate`` themselves), still
active at the new claim's HLC, against the slot's ``per_customer`` (1 when absent).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings
from crdt_core.schema import DocId, Reservation
from crdt_core.validation import Reason
from crdt_core.verdict import ClaimState, compute_verdict, repeat_booking, stamp_order

__all__ = ["refuse_repeat_bookings"]


def _end_hlcs(events: Iterable[tuple[str, str, str, str]]) -> dict[str, str]:
    """Per reservation, the HLC of its earliest cancel or decline by (HLC, event id)."""
    ends: dict[str, tuple[str, str]] = {}
    for reservation, kind, hlc, event_id in events:
        if kind in ("cancel", "decline") and (reservation not in ends or (hlc, event_id) < ends[reservation]):
            ends[reservation] = (hlc, event_id)
    return {rid: end[0] for rid, end in ends.items()}


def refuse_repeat_bookings(
    replica: Replica, doc: DocId, new: Iterable[Reservation], limits: Mapping[str, int]
) -> None:
    """Raise ``ValidationError(duplicate_booking)`` for the first new claim (in stamp order) whose
    customer already holds ``limits[slot]`` (default 1) active claims on its slot in ``replica``
    (the document before the update) or earlier in ``new``.
    """
    claims = stamp_order(new)
    if not claims:
        return
    state = read_bookings(replica, doc)
    wanted = {(r.customer, r.slot) for r in claims}
    if not any((r.customer, r.slot) in wanted for r in state.reservations.values()):
        held: dict[tuple[str, str], list[str | None]] = {}
    else:
        verdict = compute_verdict(state, {}, limits)
        ends = _end_hlcs((e.reservation, e.type, e.hlc, e.id) for e in state.events.values())
        held = {}
        for rid, claim in verdict.claims.items():
            if (claim.customer, claim.slot) in wanted and claim.state is not ClaimState.DUPLICATE:
                held.setdefault((claim.customer, claim.slot), []).append(ends.get(rid))
    for res in claims:
        mine = held.setdefault((res.customer, res.slot), [])
        limit = limits.get(res.slot, 1)
        if repeat_booking(mine, res.hlc, limit):
            raise ValidationError(
                Reason.DUPLICATE_BOOKING.value,
                f"reservation {res.id}: {res.customer} already holds {limit} active booking(s) of slot"
                f" {res.slot!r} that day",
            )
        mine.append(None)
