"""Typed events a client emits to its embedding app (and the CLI's ``sync --watch``).

Why typed events rather than callbacks or strings: the app reacts differently to "your booking is
now final" and "you were moved to the waitlist", and the CLI prints both with ``--json``; one
frozen dataclass per kind gives both a stable shape (``to_dict``) and an ``isinstance`` switch.

Booking events come from the verdict: :func:`booking_event` turns one
:class:`crdt_core.verdict.VerdictChange` into the event the user should hear about. The local
store emits them itself after each committed batch, and :class:`ChangeAcked` when a sync engine
marks a queued change acknowledged; the sync engine emits the connection events
(:class:`Synced`, :class:`RelayUnreachable`, ...) through ``LocalClient.emit``.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from crdt_core.schema import DocId
from crdt_core.verdict import ClaimState, ClaimVerdict, VerdictChange

__all__ = [
    "BookingCancelled",
    "BookingConfirmed",
    "BookingDeclined",
    "BookingDemoted",
    "BookingEvent",
    "BookingMoved",
    "BookingNoShow",
    "BookingPromoted",
    "BookingRejected",
    "BookingDuplicate",
    "BookingTooLarge",
    "BookingWaitlisted",
    "ChangeAcked",
    "ClientEvent",
    "LoggedOut",
    "RelayReachable",
    "RelayUnreachable",
    "Synced",
    "booking_event",
]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True, kw_only=True)
class ClientEvent:
    """Base of every event: when the client noticed it (ms since the epoch, the client's clock)."""

    at_ms: int

    @property
    def type(self) -> str:
        """``booking_confirmed``, ``synced``, ...: the stable name used in ``--json`` output."""
        return _snake(type(self).__name__)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Enum) else value
        return out


@dataclass(frozen=True, kw_only=True)
class BookingEvent(ClientEvent):
    """Something happened to one of the user's own reservations, per the recomputed verdict."""

    reservation_id: str
    doc_id: str
    shop_id: str
    day: str
    slot_id: str
    before: ClaimState | None
    state: ClaimState
    kind: str
    """The :class:`VerdictChange` kind that caused it (``promoted``, ``final``, ...)."""
    final: bool
    stamp: int | None
    position: int | None


@dataclass(frozen=True, kw_only=True)
class BookingConfirmed(BookingEvent):
    """The booking holds a seat (``final`` says whether the relay's stamps make that certain)."""


@dataclass(frozen=True, kw_only=True)
class BookingWaitlisted(BookingEvent):
    """The booking waits for a seat (it never held one on this replica, or it is now final there)."""


@dataclass(frozen=True, kw_only=True)
class BookingDemoted(BookingEvent):
    """The booking held a seat and lost it (a claim that ranks earlier reached this replica)."""


@dataclass(frozen=True, kw_only=True)
class BookingPromoted(BookingEvent):
    """The booking was waiting and now holds a seat (someone ahead cancelled, or capacity grew)."""


@dataclass(frozen=True, kw_only=True)
class BookingMoved(BookingEvent):
    """The booking's place on the waitlist changed."""


@dataclass(frozen=True, kw_only=True)
class BookingCancelled(BookingEvent):
    """The booking is cancelled (by the user, possibly from another device)."""


@dataclass(frozen=True, kw_only=True)
class BookingDeclined(BookingEvent):
    """The shop declined the booking."""


@dataclass(frozen=True, kw_only=True)
class BookingNoShow(BookingEvent):
    """The shop recorded a no-show."""


@dataclass(frozen=True, kw_only=True)
class BookingTooLarge(BookingEvent):
    """The party is larger than the slot's capacity that day: it holds no seat and does not wait
    (the shop cut the capacity, or the booking came from a device that did not know it)."""


@dataclass(frozen=True, kw_only=True)
class BookingDuplicate(BookingEvent):
    """The customer already holds the slot's allowed number of active bookings that day (one
    unless the shop allows more): this one holds no seat and does not wait."""


@dataclass(frozen=True, kw_only=True)
class BookingRejected(ClientEvent):
    """The relay refused a queued change for good; it is set aside, with its reason, for ``status``."""

    entry_id: int
    entity_type: str
    entity_id: str
    operation: str
    doc_id: str
    code: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class ChangeAcked(ClientEvent):
    """The relay durably holds one queued change (its outbox entry is gone): a booking, a status
    event, a listed day, shop data, or what this device carried for a peer. One per entry, the
    same fields as :class:`BookingRejected`; a booking's verdict comes with the relay's stamp, as a
    :class:`BookingEvent`. Like every event, the oldest are dropped when nobody reads them."""

    entry_id: int
    entity_type: str
    entity_id: str
    operation: str
    doc_id: str


@dataclass(frozen=True, kw_only=True)
class Synced(ClientEvent):
    """A sync round finished: the subscribed documents are caught up and the outbox flushed."""

    relay_url: str
    docs: tuple[str, ...] = ()
    pending: int = 0


@dataclass(frozen=True, kw_only=True)
class RelayUnreachable(ClientEvent):
    relay_url: str
    error: str
    retry_in_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class RelayReachable(ClientEvent):
    relay_url: str


@dataclass(frozen=True, kw_only=True)
class LoggedOut(ClientEvent):
    """Tokens and device key were removed (logout, or a refresh the relay refused: "log in again")."""

    reason: str


_BY_STATE: dict[ClaimState, type[BookingEvent]] = {
    ClaimState.CONFIRMED: BookingConfirmed,
    ClaimState.WAITLISTED: BookingWaitlisted,
    ClaimState.CANCELLED: BookingCancelled,
    ClaimState.DECLINED: BookingDeclined,
    ClaimState.NO_SHOW: BookingNoShow,
    ClaimState.TOO_LARGE: BookingTooLarge,
    ClaimState.DUPLICATE: BookingDuplicate,
}


def booking_event(
    change: VerdictChange, claim: ClaimVerdict, doc: DocId, at_ms: int, *, local: bool = False
) -> BookingEvent | None:
    """The event to tell the user about ``change``, or None when there is nothing to tell.

    Args:
        local: the change is the user's own action on this device (a booking just made); a
            ``new`` claim then needs no event, the caller already has the result.
    """
    if change.kind == "new" and local:
        return None
    cls: type[BookingEvent]
    if change.kind == "promoted":
        cls = BookingPromoted
    elif change.kind == "demoted":
        cls = BookingDemoted
    elif change.kind == "moved":
        cls = BookingMoved
    else:  # new, final, or a plain state change: named after the state it is in now
        cls = _BY_STATE[change.after]
    assert doc.shop_id is not None and doc.day is not None
    return cls(
        at_ms=at_ms,
        reservation_id=change.reservation_id,
        doc_id=str(doc),
        shop_id=doc.shop_id,
        day=doc.day.isoformat(),
        slot_id=claim.slot,
        before=change.before,
        state=change.after,
        kind=change.kind,
        final=claim.final,
        stamp=claim.stamp,
        position=claim.position,
    )
