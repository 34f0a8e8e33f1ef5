"""Rendering: rows as JSON objects (the shapes of :data:`client.cli.schemas.SCHEMAS`), plain-text
tables and one-line descriptions of events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from client.cli.schemas import AVAILABILITY, ENTRY, PROFILE, RESERVATION, SHOP_ROW
from client.local.events import (
    BookingEvent,
    BookingRejected,
    ChangeAcked,
    ClientEvent,
    LoggedOut,
    RelayReachable,
    RelayUnreachable,
    Synced,
)
from client.local.projections import (
    CategoryRow,
    ReservationRow,
    ShopDetail,
    SlotAvailability,
    SlotRow,
    StaffRow,
)
from client.storage.store import OutboxEntry
from crdt_core.schema import printable
from crdt_core.verdict import ClaimState

# --- converting rows to JSON ------------------------------------------------------------------------


def category_json(row: CategoryRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "icon": row.icon}


def slot_json(row: SlotRow) -> dict[str, Any]:
    return {
        "shop_id": row.shop_id, "slot_id": row.slot_id, "service": row.service, "start": row.start,
        "duration": row.duration, "capacity": row.capacity,
        "weekdays": None if row.weekdays is None else list(row.weekdays), "active": row.active,
    }  # fmt: skip


def staff_json(row: StaffRow) -> dict[str, Any]:
    return {"shop_id": row.shop_id, "user_id": row.user_id, "role": row.role, "active": row.active}


def shop_row_json(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in SHOP_ROW}


def shop_detail_json(detail: ShopDetail) -> dict[str, Any]:
    return {
        "shop_id": detail.shop_id,
        "summary": None if detail.summary is None else shop_row_json(detail.summary),
        "profile": None if detail.profile is None else {k: getattr(detail.profile, k) for k in PROFILE},
        "slots": [slot_json(s) for s in detail.slots],
        "staff": [staff_json(s) for s in detail.staff],
    }


def availability_json(row: SlotAvailability) -> dict[str, Any]:
    return {k: getattr(row, k) for k in AVAILABILITY}


def reservation_json(row: ReservationRow) -> dict[str, Any]:
    out = {k: getattr(row, k) for k in RESERVATION}
    out["state"] = row.state.value
    return out


def entry_json(entry: OutboxEntry) -> dict[str, Any]:
    return {k: getattr(entry, k) for k in ENTRY}


# --- human output ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return printable(",".join(str(v) for v in value)) or "-"
    return printable(str(value))  # a cell is one line: no control character reaches the terminal


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], empty: str = "(none)") -> str:
    """An aligned plain-text table of ``columns`` of ``rows`` (headers upper-cased)."""
    if not rows:
        return empty
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    headers = [c.upper() for c in columns]
    widths = [max(len(h), *(len(line[i]) for line in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for line in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return "\n".join(lines)


#: How a verdict state reads to a person where its value alone would puzzle (JSON keeps the value).
STATE_WORDS = {
    ClaimState.TOO_LARGE: "party too large for this slot",
    ClaimState.DUPLICATE: "duplicate: you already hold a booking of this slot that day",
}


def state_words(state: ClaimState) -> str:
    return STATE_WORDS.get(state, state.value)


def describe_event(event: ClientEvent) -> str:
    """One line telling the user what happened."""
    if isinstance(event, BookingEvent):
        where = f"{event.shop_id} {event.day} {event.slot_id}"
        now = state_words(event.state)
        text = f"your booking {event.reservation_id} ({where}) is now {now} ({event.kind})"
        if event.position is not None and event.state.value == "waitlisted":
            text += f", waitlist position {event.position}"
        return text + (", final" if event.final and event.kind != "final" else "")
    if isinstance(event, BookingRejected):
        return (
            f"the relay rejected your {event.entity_type} {event.entity_id} ({event.operation}): "
            f"{event.code}: {event.reason}"
        )
    if isinstance(event, ChangeAcked):
        return f"the relay has your {event.entity_type} {event.entity_id} ({event.operation})"
    if isinstance(event, Synced):
        return f"synced {len(event.docs)} documents with {event.relay_url}; {event.pending} changes pending"
    if isinstance(event, RelayUnreachable):
        return f"relay {event.relay_url} unreachable: {event.error}"
    if isinstance(event, RelayReachable):
        return f"relay {event.relay_url} reachable again"
    if isinstance(event, LoggedOut):
        return f"logged out ({event.reason}): log in again"
    return event.type
