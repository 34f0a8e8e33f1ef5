"""``quickslot day`` and ``quickslot waitlist``: a shop's day as its staff and owner see it.

In-process (the CLI's command functions over an opened profile and the in-memory relay stand-in),
each ``--json`` answer checked against its schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client.cli.app import build_parser, handler_of
from client.cli.context import Ctx
from client.cli.schemas import SCHEMAS
from client.local.client import LocalClient
from tests.client.test_cli import check
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, open_profile, pull, push, setup_shop
from tests.support.crdt_factory import World


@pytest.fixture(autouse=True)
async def _close() -> AsyncIterator[None]:
    yield
    await close_all()


async def run(local: LocalClient, home: Path, *argv: str) -> tuple[dict[str, Any], str]:
    args = build_parser().parse_args(["--json", *argv])
    data, human = await handler_of(args.handler)(Ctx(args, home, local))
    check(data, SCHEMAS[args.schema])
    return data, human


async def test_the_owner_lists_a_day_with_states_and_the_waitlist_in_order(tmp_path: Path) -> None:
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay, capacity=1)
    booked = []
    for name in ("alice", "bob", "carol"):
        customer = await open_profile(tmp_path / name, world, f"u-{name}")
        await pull(customer, relay, ["catalog", f"shop:{SHOP}"])
        booked.append(await customer.book(SHOP, DAY, "cut-10"))
        await push(customer, relay)
    await owner.subscribe(f"bookings:{SHOP}:{DAY}")
    await pull(owner, relay, [f"bookings:{SHOP}:{DAY}"])

    day, human = await run(owner, tmp_path / "owner", "day", SHOP, DAY)
    assert day["known"] is True
    assert [r["reservation_id"] for r in day["reservations"]] == [b.reservation_id for b in booked]
    assert [r["state"] for r in day["reservations"]] == ["confirmed", "waitlisted", "waitlisted"]
    assert day["counts"] == {"confirmed": 1, "waitlisted": 2}
    assert "u-alice" in human and "1 confirmed, 2 waitlisted" in human

    waiting, human = await run(owner, tmp_path / "owner", "waitlist", SHOP, DAY)
    assert [(r["customer"], r["waitlist_position"]) for r in waiting["waitlist"]] == [
        ("u-bob", 1),
        ("u-carol", 2),
    ]
    assert human.index("u-bob") < human.index("u-carol")


async def test_a_day_not_fetched_yet_says_so(tmp_path: Path) -> None:
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay)
    day, human = await run(owner, tmp_path / "owner", "day", SHOP, "2027-01-21")
    assert day["reservations"] == [] and day["known"] is False
    assert "not on this device yet" in human
    waiting, _ = await run(owner, tmp_path / "owner", "waitlist", SHOP, "2027-01-21")
    assert waiting["waitlist"] == []
