"""Staff and owner views of a shop's day: ``day`` (every booking with its state) and ``waitlist``
(who waits for which slot, in order). Offline, from what this device holds; a day not here yet is
fetched from the relay first when a session is open, as ``slots`` does."""

from __future__ import annotations

from typing import Any

from client.cli.browse import fetch_shop, my_shop, shop_known
from client.cli.context import Ctx, Result
from client.cli.output import reservation_json, state_words, table
from client.local.client import NotFound
from client.local.projections import ReservationRow

_COLUMNS = ["start", "slot_id", "reservation_id", "customer", "party", "state", "final"]


async def _day_rows(ctx: Ctx) -> tuple[list[ReservationRow], bool]:
    """The day's reservations here, and whether this device holds the day's bookings at all."""
    shop, day = ctx.args.shop, ctx.args.date
    detail = await fetch_shop(ctx, shop, day)
    if not shop_known(detail) and not my_shop(ctx, shop):
        raise NotFound(f"no shop {shop!r} on this device: log in and run `quickslot sync`")
    slots = await ctx.local.slots(shop, day)
    known = all(s.known for s in slots) if slots else False
    return await ctx.local.day_reservations(shop, day), known


def _shown(rows: list[ReservationRow]) -> list[dict[str, Any]]:
    return [{**reservation_json(r), "state": state_words(r.state)} for r in rows]


def _not_fetched(ctx: Ctx, known: bool) -> str:
    if known:
        return ""
    return f"\n(the bookings of {ctx.args.date} are not on this device yet: `quickslot sync` fetches them)"


async def cmd_day(ctx: Ctx) -> Result:
    rows, known = await _day_rows(ctx)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    data = {"shop_id": ctx.args.shop, "day": ctx.args.date, "known": known, "counts": counts,
            "reservations": [reservation_json(r) for r in rows]}  # fmt: skip
    human = table(_shown(rows), _COLUMNS, f"(no bookings for {ctx.args.shop} on {ctx.args.date})")
    if counts:
        human += "\n" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return data, human + _not_fetched(ctx, known)


async def cmd_waitlist(ctx: Ctx) -> Result:
    rows, known = await _day_rows(ctx)
    waiting = sorted(
        (r for r in rows if r.state.value == "waitlisted"),
        key=lambda r: (r.start or "", r.slot_id, r.waitlist_position or 0),
    )
    data = {"shop_id": ctx.args.shop, "day": ctx.args.date, "known": known,
            "waitlist": [reservation_json(r) for r in waiting]}  # fmt: skip
    columns = ["start", "slot_id", "waitlist_position", "reservation_id", "customer", "party", "final"]
    human = table(_shown(waiting), columns, f"(nobody waits for {ctx.args.shop} on {ctx.args.date})")
    return data, human + _not_fetched(ctx, known)
