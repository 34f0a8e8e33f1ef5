"""Browsing commands: ``categories``, ``shops``, ``shop show``, ``slots`` (offline; a shop not here
yet is fetched from the relay first when a session is open)."""

from __future__ import annotations

from client.cli.context import Ctx, Result, sync_service
from client.cli.errors import CliError, classify
from client.cli.output import availability_json, category_json, shop_detail_json, shop_row_json, table
from client.cli.schemas import EXIT_UNREACHABLE
from client.local.client import NotFound
from client.local.projections import ShopDetail


async def cmd_categories(ctx: Ctx) -> Result:
    rows = [category_json(c) for c in await ctx.local.categories()]
    return {"categories": rows}, table(rows, ["id", "name", "icon"], "(no categories: sync first?)")


async def cmd_shops(ctx: Ctx) -> Result:
    search = ctx.args.search
    rows = [shop_row_json(s) for s in await ctx.local.shops(ctx.args.category, search=search)]
    empty = f"(no shop matches {search!r})" if search else "(no shops: sync first?)"
    human = table(rows, ["id", "name", "category", "location", "rating"], empty)
    return {"category": ctx.args.category, "search": search, "shops": rows}, human


async def cmd_shop_show(ctx: Ctx) -> Result:
    detail = await ctx.local.shop(ctx.args.shop)
    if detail is None or (detail.summary is None and detail.profile is None):
        raise NotFound(f"no shop {ctx.args.shop!r} here (subscribed now: run `quickslot sync`)")
    data = shop_detail_json(detail)
    head = detail.summary or detail.profile
    lines = [f"{detail.shop_id}: {getattr(head, 'name', '')}"]
    if detail.summary is not None:
        lines.append(f"category {detail.summary.category}, {detail.summary.location}")
    if detail.profile is not None and detail.profile.description:
        lines.append(detail.profile.description)
    lines += ["", table(data["slots"], ["slot_id", "service", "start", "duration", "capacity", "active"])]
    if data["staff"]:
        lines += ["", table(data["staff"], ["user_id", "role", "active"])]
    return data, "\n".join(lines)


def shop_known(detail: ShopDetail | None) -> bool:
    if detail is None:
        return False
    return detail.summary is not None or detail.profile is not None or bool(detail.slots)


async def fetch_shop(ctx: Ctx, shop: str, day: str) -> ShopDetail | None:
    """The shop as this device knows it, after fetching it (and ``day``) from the relay first
    when it is not here yet and a session is open: a newcomer need not know which `sync` to run.

    Raises ``NotFound`` when the relay has no such shop (its subscriptions are dropped again),
    and ``CliError`` (5) when it is not here and the relay cannot be reached."""
    await ctx.local.slots(shop, day)  # subscribes the shop and the day
    detail = await ctx.local.shop(shop)
    here = detail is not None and (detail.profile is not None or bool(detail.slots))  # its own doc
    if here or ctx.local.identity is None or ctx.relay(required=False) is None:
        return detail
    try:
        await sync_service(ctx).sync_once()
    except Exception as exc:
        err = classify(exc)
        if err is None or err.exit_code != EXIT_UNREACHABLE:
            raise
        raise CliError(
            EXIT_UNREACHABLE,
            "relay_unreachable",
            f"shop {shop!r} is not on this device yet and the relay is unreachable ({err.message}): "
            "run `quickslot sync` once online, then try again",
        ) from exc
    detail = await ctx.local.shop(shop)
    if not shop_known(detail) and not my_shop(ctx, shop):
        await ctx.local.unsubscribe(f"shop:{shop}")
        await ctx.local.unsubscribe(f"bookings:{shop}:{day}")
        raise NotFound(f"the relay has no shop {shop!r}: see `quickslot shops` for the shops there")
    return detail


def my_shop(ctx: Ctx, shop: str) -> bool:
    """The profile owns or staffs ``shop``: it follows it even before the shop reaches the relay."""
    identity = ctx.local.identity
    return identity is not None and shop in identity.certificate.owner_of | identity.certificate.staff_of


async def cmd_slots(ctx: Ctx) -> Result:
    detail = await fetch_shop(ctx, ctx.args.shop, ctx.args.date)
    if not shop_known(detail) and not my_shop(ctx, ctx.args.shop):
        raise NotFound(f"no shop {ctx.args.shop!r} on this device: log in and run `quickslot sync`")
    rows = await ctx.local.slots(ctx.args.shop, ctx.args.date)
    data_rows = [availability_json(r) for r in rows]
    known = all(r.known for r in rows) if rows else False
    human = table(
        data_rows,
        ["slot_id", "service", "start", "duration", "capacity", "seats_left", "waitlisted"],
        f"(shop {ctx.args.shop} offers no slots on {ctx.args.date})",
    )
    if rows and not known:
        human += "\n(the bookings of this day are not fetched yet; `quickslot sync` fetches them)"
    return {"shop_id": ctx.args.shop, "day": ctx.args.date, "known": known, "slots": data_rows}, human
