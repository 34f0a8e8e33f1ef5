"""The per-slot verdict of local writes equals the whole-document verdict, step by step.

Why: ``LocalClient`` recomputes only the slots a local booking or status event touches (a booking
used to recompute the whole day: O(document) per booking, see the client benchmark suite). That
is only right if no other slot can change, so after every write, push and pull here the verdict
the client keeps is compared with ``compute_verdict`` over the whole document, and at the end
the projection tables with a full rebuild.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.local.client import LocalClient
from client.local.projections import capacities_on
from crdt_core.reader import read_bookings, slot_templates
from crdt_core.verdict import compute_verdict
from tests.support.clients import (
    DAY,
    DAY_DATE,
    SHOP,
    FakeRelay,
    close_all,
    open_profile,
    pull,
    push,
    setup_shop,
)
from tests.support.crdt_factory import NOW_MS, World

DOC = f"bookings:{SHOP}:{DAY}"
SHOP_DOC = f"shop:{SHOP}"


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


async def _assert_whole(client: LocalClient) -> None:
    """The verdict the client keeps equals a from-scratch one over the document it holds."""
    replica = (await client.document(DOC), client._docs[DOC].replica)[1]
    templates = slot_templates(client._docs[SHOP_DOC].replica, SHOP_DOC)
    expected = compute_verdict(read_bookings(replica, DOC), capacities_on(templates, DAY_DATE))
    assert client._verdicts[DOC] == expected


async def _tables(client: LocalClient) -> dict[str, list[tuple[object, ...]]]:
    async with client.store.read() as tx:
        return {
            "reservations": sorted(
                await tx.fetchall(
                    "SELECT reservation_id, slot_id, state, waitlist_position, final, stamp, holds_seats "
                    "FROM reservations"
                )
            ),
            "slot_usage": sorted(await tx.fetchall("SELECT * FROM slot_usage")),
        }


async def test_local_writes_recompute_only_their_slot_and_agree_with_the_whole(tmp_path: Path) -> None:
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay, capacity=2)
    await owner.add_slot(SHOP, "cut-11", service="haircut", start="11:00", duration=30, capacity=2)
    await owner.add_slot(SHOP, "cut-12", service="haircut", start="12:00", duration=30, capacity=3)
    await push(owner, relay)
    clients = []
    for i, name in enumerate("abc"):
        c = await open_profile(tmp_path / name, world, f"u-{name}", clock_ms=NOW_MS + i * 1000)
        await pull(c, relay, ["catalog", SHOP_DOC])
        clients.append(c)

    booked: dict[str, list[str]] = {c.user_id or "": [] for c in clients}
    slots = ["cut-10", "cut-11", "cut-12"]
    for round_no in range(3):
        for i, c in enumerate(clients):
            for k in range(2):
                slot = slots[(i + k + round_no) % len(slots)]
                row = await c.book(SHOP, DAY, slot, party=1 + (i + k) % 2)
                booked[c.user_id or ""].append(row.reservation_id)
                await _assert_whole(c)
        # Cancel one booking per customer (a status event: its slot only), then sync.
        for c in clients:
            await c.cancel(booked[c.user_id or ""][round_no])
            await _assert_whole(c)
        if round_no != 1:  # one round stays offline: later writes build on unstamped claims
            for c in clients:
                await push(c, relay)
            for c in clients:
                await pull(c, relay, [DOC])  # stamps and the others' claims: the whole-verdict path
                await _assert_whole(c)

    for c in clients:
        before = await _tables(c)
        await c.rebuild_projections()
        assert await _tables(c) == before
        assert before["reservations"]
    # Every slot ended up with waitlisted and confirmed claims, so the test crossed capacity.
    states = {row[2] for row in (await _tables(clients[0]))["reservations"]}
    assert {"confirmed", "waitlisted", "cancelled"} <= states
