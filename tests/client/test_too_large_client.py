"""A booking whose party no longer fits its slot (the shop cut the capacity) is ``too_large`` on the
client: its verdict, its event and the words the CLI prints for it; and it comes back when the
capacity does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.cli.output import describe_event
from client.local.client import LocalClient
from client.local.events import BookingConfirmed, BookingEvent, BookingTooLarge
from crdt_core.verdict import ClaimState
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, open_profile, pull, push, setup_shop
from tests.support.crdt_factory import World

SHOP_DOC = f"shop:{SHOP}"


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


def booking_events(local: LocalClient) -> list[BookingEvent]:
    out: list[BookingEvent] = []
    while not local.events.empty():
        event = local.events.get_nowait()
        if isinstance(event, BookingEvent):
            out.append(event)
    return out


async def recapacity(owner: LocalClient, relay: FakeRelay, capacity: int) -> None:
    await owner.add_slot(SHOP, "cut-10", service="haircut", start="10:00", duration=30, capacity=capacity)
    await push(owner, relay)


async def test_a_capacity_cut_below_the_party_makes_the_booking_too_large_and_back(tmp_path: Path) -> None:
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay, capacity=4)
    guest = await open_profile(tmp_path / "guest", world, "u-guest")
    await pull(guest, relay, ["catalog", SHOP_DOC])
    row = await guest.book(SHOP, DAY, "cut-10", party=3)
    assert row.state is ClaimState.CONFIRMED
    await push(guest, relay)
    await pull(guest, relay)
    booking_events(guest)

    await recapacity(owner, relay, 2)
    await pull(guest, relay, [SHOP_DOC])
    (event,) = [e for e in booking_events(guest) if e.reservation_id == row.reservation_id]
    assert isinstance(event, BookingTooLarge) and event.kind == "too_large" and event.position is None
    assert "is now party too large for this slot (too_large)" in describe_event(event)
    (now,) = await guest.reservations()
    assert (now.state, now.waitlist_position, now.holds_seats) == (ClaimState.TOO_LARGE, None, False)

    await recapacity(owner, relay, 3)
    await pull(guest, relay, [SHOP_DOC])
    (event,) = [e for e in booking_events(guest) if e.reservation_id == row.reservation_id]
    assert isinstance(event, BookingConfirmed) and event.before is ClaimState.TOO_LARGE
    (now,) = await guest.reservations()
    assert (now.state, now.holds_seats) == (ClaimState.CONFIRMED, True)
