"""The sync service against an in-process relay over an in-memory channel (no sockets).

The same ``SyncService`` and session code the CLI runs, with ``open_socket`` set to
:meth:`tests.support.memory_relay.MemoryRelay.open`: the relay side is crdt_core's sans-I/O
``RelayProtocol`` over validated, stamped documents. The real relay is tested in
``tests/client/test_sync_relay.py``; these tests pin the session's logic fast and exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.cli.bookings import _refused_hint
from client.local.client import LocalClient
from client.local.events import BookingConfirmed, ChangeAcked
from client.sync.errors import SyncLoginRequired
from client.sync.service import SyncService
from crdt_core.reader import read_bookings
from crdt_core.verdict import ClaimState, compute_verdict
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, drain, open_profile, pull, setup_shop
from tests.support.crdt_factory import World
from tests.support.memory_relay import MemoryRelay

DOC = f"bookings:{SHOP}:{DAY}"
URL = "http://relay.memory.invalid"


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


async def customer(tmp: Path, world: World, relay: MemoryRelay, name: str) -> tuple[LocalClient, SyncService]:
    local = await open_profile(tmp / name, world, f"u-{name}")
    await pull(local, relay.store, ["catalog", f"shop:{SHOP}"])
    token = f"token-{name}"
    relay.tokens[token] = f"u-{name}"
    local.secrets.set_tokens(token, f"refresh-{name}")
    return local, SyncService(local, URL, open_socket=relay.open, connect_timeout_s=5, response_timeout_s=5)


async def test_two_offline_bookings_for_the_last_seat_end_in_one_verdict(tmp_path: Path) -> None:
    world = World()
    relay = MemoryRelay(FakeRelay(world))
    await setup_shop(tmp_path, world, relay.store, capacity=1)
    (alice, alice_sync), (bob, bob_sync) = [
        await customer(tmp_path, world, relay, n) for n in ("alice", "bob")
    ]
    a = await alice.book(SHOP, DAY, "cut-10")
    b = await bob.book(SHOP, DAY, "cut-10")

    first = await alice_sync.sync_once(timeout_s=10)
    second = await bob_sync.sync_once(timeout_s=10)
    await alice_sync.sync_once(timeout_s=10)  # alice now hears of bob's claim and its stamp

    assert first.rejected == [] and second.rejected == []
    assert (await alice.outbox_counts()).pending == 0 and (await bob.outbox_counts()).pending == 0
    truth = compute_verdict(read_bookings(relay.store.replica(DOC), DOC), {"cut-10": 1})
    assert truth.claims[a.reservation_id].state is ClaimState.CONFIRMED
    assert truth.claims[b.reservation_id].state is ClaimState.WAITLISTED
    for local in (alice, bob):
        mine = {r.reservation_id: r for r in await local.reservations()}
        for rid, row in mine.items():
            assert (row.state, row.stamp, row.waitlist_position) == (
                truth.claims[rid].state,
                truth.claims[rid].stamp,
                truth.claims[rid].position,
            )
    assert set(read_bookings(relay.store.replica(DOC), DOC).reservations) == {
        a.reservation_id,
        b.reservation_id,
    }


async def test_a_live_session_receives_another_clients_booking_and_its_stamp(tmp_path: Path) -> None:
    world = World()
    relay = MemoryRelay(FakeRelay(world))
    await setup_shop(tmp_path, world, relay.store, capacity=2)
    (alice, alice_sync), (bob, bob_sync) = [
        await customer(tmp_path, world, relay, n) for n in ("alice", "bob")
    ]
    await alice.subscribe(DOC)
    await alice_sync.sync_once(timeout_s=10)
    assert relay.connections == set()  # sync_once closes its connection when done

    b = await bob.book(SHOP, DAY, "cut-10")
    await bob_sync.sync_once(timeout_s=10)
    await alice_sync.sync_once(timeout_s=10)
    verdict = await alice.verdict(SHOP, DAY)
    assert verdict.claims[b.reservation_id].state is ClaimState.CONFIRMED
    assert verdict.claims[b.reservation_id].stamp == 1


async def test_each_acknowledged_change_is_one_event(tmp_path: Path) -> None:
    """``ChangeAcked`` per outbox entry the relay acknowledged, once its entry is gone, before the
    round's ``Synced``; an ack repeated (after a reconnect, say) tells nothing again."""
    world = World()
    relay = MemoryRelay(FakeRelay(world))
    await setup_shop(tmp_path, world, relay.store, capacity=2)
    alice, alice_sync = await customer(tmp_path, world, relay, "alice")
    booked = await alice.book(SHOP, DAY, "cut-10")
    queued = await alice.pending_entries()
    drain(alice)

    summary = await alice_sync.sync_once(timeout_s=10)

    events = drain(alice)
    acks = [e for e in events if isinstance(e, ChangeAcked)]
    assert [(e.entry_id, e.entity_type, e.entity_id, e.operation, e.doc_id) for e in acks] == [
        (e.id, e.entity_type, e.entity_id, e.operation, e.doc_id) for e in queued
    ]
    assert summary.acked == len(acks) == 2  # the booking, and its day listed in alice's document
    assert events[-1].type == "synced"  # every ack is told before the round ends
    assert any(isinstance(e, BookingConfirmed) and e.final for e in events)  # the stamp's verdict
    assert acks[0].to_dict() == {
        "type": "change_acked", "at_ms": acks[0].at_ms, "entry_id": queued[0].id,
        "entity_type": "reservation", "entity_id": booked.reservation_id, "operation": "create",
        "doc_id": DOC,
    }  # fmt: skip
    assert await alice.mark_acked(queued[0].id) is False
    assert drain(alice) == []


async def test_a_refusal_sets_the_write_aside_with_its_reason(tmp_path: Path) -> None:
    world = World()
    relay = MemoryRelay(FakeRelay(world))
    await setup_shop(tmp_path, world, relay.store, capacity=2)
    alice, alice_sync = await customer(tmp_path, world, relay, "alice")
    booked = await alice.book(SHOP, DAY, "cut-10")
    relay.refuse_with = "not_allowed"

    summary = await alice_sync.sync_once(timeout_s=10)

    # Both writes are refused (the booking, and its day listed in the user's document), each set
    # aside with the relay's reason, and nothing is left pending.
    assert len(summary.rejected) == 2
    counts = await alice.outbox_counts()
    assert (counts.pending, counts.rejected) == (0, 2)
    refused = {(e.entity_type, e.reject_code) for e in await alice.rejected_entries()}
    assert refused == {("reservation", "not_allowed"), ("booked_day", "not_allowed")}
    # What `quickslot refused` tells to do (for a reason with no hint of its own): retry the
    # booking; the day listing needs no command, the next booking that day lists it again.
    hints = {
        e.entity_type: _refused_hint(dataclasses.replace(e, reject_code="schema", reject_reason="odd"))
        for e in await alice.rejected_entries()
    }
    assert "quickslot retry ID" in hints["reservation"]
    assert "next booking on that day lists it again" in hints["booked_day"]
    row = next(r for r in await alice.reservations() if r.reservation_id == booked.reservation_id)
    assert row.rejected_code == "not_allowed"


async def test_a_token_the_relay_refuses_means_log_in_again(tmp_path: Path) -> None:
    world = World()
    relay = MemoryRelay(FakeRelay(world))
    await setup_shop(tmp_path, world, relay.store, capacity=2)
    alice, alice_sync = await customer(tmp_path, world, relay, "alice")
    await alice.book(SHOP, DAY, "cut-10")
    relay.tokens.clear()

    with pytest.raises(SyncLoginRequired):
        await alice_sync.sync_once(timeout_s=10)
    assert (await alice.outbox_counts()).pending == 2  # nothing lost (the booking, its listed day)
