"""Shop management: ``shop create``, ``shop edit``, ``slot add``, ``staff add``, ``category add``."""

from __future__ import annotations

from client.cli.context import Ctx, Result
from client.cli.errors import CliError
from client.cli.output import category_json, shop_detail_json, slot_json, staff_json
from client.cli.schemas import EXIT_USAGE


async def cmd_shop_create(ctx: Ctx) -> Result:
    ctx.require_login()
    a = ctx.args
    detail = await ctx.local.create_shop(
        a.shop, name=a.name, category=a.category, location=a.location, lat=a.lat, lon=a.lon,
        description=a.description, address=a.address, hours=a.hours,
    )  # fmt: skip
    return {**shop_detail_json(detail), "queued": True}, f"shop {a.shop} created (queued for the relay)"


_EDIT_FIELDS = ("name", "category", "location", "lat", "lon", "rating", "active", "description", "address",
                "hours", "image_url")  # fmt: skip


async def cmd_shop_edit(ctx: Ctx) -> Result:
    ctx.require_login()
    changes = {f: getattr(ctx.args, f) for f in _EDIT_FIELDS if getattr(ctx.args, f) is not None}
    if not changes:
        raise CliError(EXIT_USAGE, "usage", "shop edit: give at least one --field to change")
    detail = await ctx.local.edit_shop(ctx.args.shop, **changes)
    text = f"shop {ctx.args.shop} updated ({', '.join(sorted(changes))}; queued for the relay)"
    return {**shop_detail_json(detail), "queued": True}, text


async def cmd_slot_add(ctx: Ctx) -> Result:
    ctx.require_login()
    a = ctx.args
    row = await ctx.local.add_slot(
        a.shop, a.slot, service=a.service, start=a.start, duration=a.duration, capacity=a.capacity,
        weekdays=a.weekdays, per_customer=a.per_customer,
    )  # fmt: skip
    return {"slot": slot_json(row), "queued": True}, f"slot {a.slot} of {a.shop} saved (queued for the relay)"


async def cmd_staff_add(ctx: Ctx) -> Result:
    ctx.require_login()
    who = ctx.args.user_id
    if "@" in who:  # an email: the relay names the account (asked as an owner of the shop)
        who = str((await ctx.auth().find_user(ctx.args.shop, who))["user_id"])
    row = await ctx.local.add_staff(ctx.args.shop, who, role=ctx.args.role)
    return {
        "staff": staff_json(row),
        "queued": True,
    }, f"{row.user_id} is now {row.role} of {row.shop_id} (queued)"


async def cmd_category_add(ctx: Ctx) -> Result:
    ctx.require_login()
    row = await ctx.local.add_category(ctx.args.id, ctx.args.name, ctx.args.icon)
    return {"category": category_json(row), "queued": True}, f"category {row.id} added (queued for the relay)"
