"""Booking commands: ``book``, ``cancel``, ``confirm``, ``decline``, ``no-show``, ``reservations``,
and the refused changes: ``refused``, ``discard``, ``retry``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from client.cli.browse import fetch_shop, shop_known
from client.cli.context import Ctx, Result
from client.cli.errors import CliError
from client.cli.output import entry_json, reservation_json, state_words, table
from client.cli.schemas import EXIT_USAGE
from client.local.client import NotFound
from client.local.projections import ReservationRow
from client.storage.store import OutboxEntry


def change_result(row: ReservationRow, verb: str) -> Result:
    message = f"{verb} {row.reservation_id}: queued, goes to the relay on the next `quickslot sync`"
    data = {"reservation": reservation_json(row), "queued": True, "message": message}
    state = state_words(row.state) + ("" if row.final else " (tentative)")
    return data, f"{message}\nstate here: {state}"


async def cmd_book(ctx: Ctx) -> Result:
    ctx.require_login()
    shop, slot = ctx.args.shop, ctx.args.slot
    detail = await fetch_shop(ctx, shop, ctx.args.date)
    if not shop_known(detail):
        raise NotFound(f"no shop {shop!r} on this device: run `quickslot sync` first")
    assert detail is not None
    if slot not in {s.slot_id for s in detail.slots}:
        offered = ", ".join(sorted(s.slot_id for s in detail.slots)) or "none"
        raise NotFound(f"shop {shop!r} has no slot {slot!r} (its slots: {offered}; see `quickslot slots`)")
    row = await ctx.local.book(ctx.args.shop, ctx.args.date, ctx.args.slot, party=ctx.args.party)
    return change_result(row, "booked")


async def cmd_cancel(ctx: Ctx) -> Result:
    ctx.require_login()
    return change_result(await ctx.local.cancel(ctx.args.reservation, ctx.args.reason), "cancelled")


async def cmd_confirm(ctx: Ctx) -> Result:
    ctx.require_login()
    return change_result(await ctx.local.confirm(ctx.args.reservation), "confirmed")


async def cmd_decline(ctx: Ctx) -> Result:
    ctx.require_login()
    return change_result(await ctx.local.decline(ctx.args.reservation, ctx.args.reason), "declined")


async def cmd_no_show(ctx: Ctx) -> Result:
    ctx.require_login()
    return change_result(await ctx.local.no_show(ctx.args.reservation), "marked no-show")


async def cmd_reservations(ctx: Ctx) -> Result:
    ctx.require_login()
    found = await ctx.local.reservations()
    rows = [reservation_json(r) for r in found]
    shown = [{**row, "state": state_words(r.state)} for row, r in zip(rows, found, strict=True)]
    human = table(
        shown, ["reservation_id", "shop_id", "day", "start", "slot_id", "party", "state", "final"],
        "(no reservations on this device; bookings made on another device show after `quickslot sync`)",
    )  # fmt: skip
    return {"reservations": rows}, human


#: What the user can do about a change the relay refused, by the relay's reason code prefix.
REFUSED_HINTS = {
    "party_too_large": "book a smaller party (`quickslot retry ID --party N`) or discard it",
    "duplicate_booking": "you already hold a booking of this slot that day: keep that one and discard this",
    "day_out_of_range": "that day is too far in the past or the future to book: discard it",
    "unknown_category": "pick a category from `quickslot categories`, then discard this",
    "not_allowed": "this account may not make that change: discard it",
    "backdated": "made too long ago with an expired login: `quickslot retry ID` makes it again now",
    "unknown_certificate": "log in again, then `quickslot retry ID`",
}


#: A refused day listing (``booked_day``, for the user's other devices) needs no command of its own.
_RELIST = "your next booking on that day lists it again; `quickslot discard ID` forgets this one"


def _refused_hint(entry: OutboxEntry) -> str:
    reason = f"{entry.reject_code or ''} {entry.reject_reason or ''}"
    for key, hint in REFUSED_HINTS.items():
        if key in reason:
            return hint
    if entry.entity_type == "reservation":
        return "`quickslot retry ID` makes the change again, `quickslot discard ID` forgets it"
    if entry.entity_type == "booked_day":
        return _RELIST
    return "redo it with its command once fixed, then `quickslot discard ID`"


def _refused_rows(entries: Sequence[OutboxEntry]) -> list[dict[str, Any]]:
    return [
        {**entry_json(e), "entity": f"{e.entity_type} {e.entity_id}",
         "why": f"{e.reject_code}: {e.reject_reason}", "what_to_do": _refused_hint(e)}
        for e in entries
    ]  # fmt: skip


async def cmd_refused(ctx: Ctx) -> Result:
    rows = _refused_rows(await ctx.local.rejected_entries())
    human = table(rows, ["id", "entity", "operation", "doc_id", "why", "what_to_do"], "(no refused changes)")
    return {"refused": rows}, human


async def _refused_entry(ctx: Ctx, entry_id: int) -> OutboxEntry:
    entry = await ctx.local.store.outbox_entry(entry_id)
    if entry is None or entry.state != "rejected":
        raise NotFound(f"no refused change {entry_id} here (see `quickslot refused`)")
    return entry


async def cmd_discard(ctx: Ctx) -> Result:
    ids = [e.id for e in await ctx.local.rejected_entries()] if ctx.args.all else ctx.args.ids
    if not ids:
        raise CliError(EXIT_USAGE, "usage", "discard: give refused change ids, or --all")
    for entry_id in ids:
        await _refused_entry(ctx, entry_id)
    for entry_id in ids:
        await ctx.local.store.dismiss_rejected(entry_id)
    return {"discarded": list(ids)}, f"discarded {len(ids)} refused change(s)"


async def cmd_retry(ctx: Ctx) -> Result:
    """Make a refused reservation change again, as a new change (the refused one is discarded)."""
    ctx.require_login()
    entry = await _refused_entry(ctx, ctx.args.id)
    if entry.entity_type == "booked_day":
        raise CliError(EXIT_USAGE, "cannot_retry", f"a refused day listing is not retried: {_RELIST}")
    if entry.entity_type != "reservation":
        raise CliError(
            EXIT_USAGE,
            "cannot_retry",
            f"a refused {entry.entity_type} change is not retried automatically: redo it with "
            f"`quickslot {entry.entity_type} ...`, then `quickslot discard {entry.id}`",
        )
    old = await ctx.local.reservation(entry.entity_id)
    if old is None:
        raise NotFound(f"reservation {entry.entity_id} is no longer here: `quickslot discard {entry.id}`")
    op = entry.operation
    if op == "create":
        party = ctx.args.party or old.party
        row = await ctx.local.book(old.shop_id, old.day, old.slot_id, party=party, note=old.note)
        verb = "booked again"
    elif op == "cancel":
        row, verb = await ctx.local.cancel(old.reservation_id), "cancelled again"
    elif op == "confirm":
        row, verb = await ctx.local.confirm(old.reservation_id), "confirmed again"
    elif op == "decline":
        row, verb = await ctx.local.decline(old.reservation_id), "declined again"
    elif op == "no_show":
        row, verb = await ctx.local.no_show(old.reservation_id), "marked no-show again"
    else:
        raise CliError(
            EXIT_USAGE, "cannot_retry", f"cannot retry a {op!r} change: `quickslot discard {entry.id}`"
        )
    await ctx.local.store.dismiss_rejected(entry.id)
    return change_result(row, verb)
