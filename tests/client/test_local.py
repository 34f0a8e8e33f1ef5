"""LocalClient on real SQLite files: offline booking, remote updates, verdict changes, projections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import client.local.base as base_mod
import client.local.model as model_mod
from client.local.client import InvalidRequest, LocalClient, NotAllowed, NotFound, NotLoggedIn
from client.local.events import (
    BookingConfirmed,
    BookingDemoted,
    BookingPromoted,
    BookingRejected,
    ClientEvent,
    LoggedOut,
)
from client.storage.secrets import SecretStore
from client.storage.store import DB_FILE
from crdt_core.authoring import write_stamps
from crdt_core.certs import SigningKey
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import booked_days, read_bookings
from crdt_core.schema import DocId
from crdt_core.verdict import ClaimState, compute_verdict
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, open_profile, pull, push, setup_shop
from tests.support.crdt_factory import HOUR_MS, NOW_MS, World, fixed_seed_key, relay_replica

DOC = f"bookings:{SHOP}:{DAY}"
SHOP_DOC = f"shop:{SHOP}"
LISTED = f"{SHOP}/{DAY}"  # the outbox entity of the user's first booking that day: its booked_day


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


def drain(client: LocalClient) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while not client.events.empty():
        out.append(client.events.get_nowait())
    return out


async def customer(
    tmp: Path, world: World, relay: FakeRelay, name: str, clock_ms: int = NOW_MS, **kw: Any
) -> LocalClient:
    c = await open_profile(tmp / name, world, f"u-{name}", clock_ms=clock_ms, **kw)
    await pull(c, relay, ["catalog", SHOP_DOC])
    return c


async def projection_tables(client: LocalClient) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    async with client.store.read() as tx:
        for table, cols in {
            "categories": "id, name, icon",
            "shops": "id, name, category, location, lat, lon, rating, active",
            "shop_profiles": "shop_id, name, description, address, lat, lon, image_url, hours",
            "slots": "shop_id, slot_id, service, start, duration, capacity, weekdays, active",
            "staff": "shop_id, user_id, role, active",
            "reservations": "doc_id, reservation_id, customer, party, state, waitlist_position, final, "
            "stamp, staff_confirmed, holds_seats",
            "slot_usage": "shop_id, day, slot_id, capacity, seats_taken, confirmed, waitlisted",
        }.items():
            out[table] = sorted(await tx.fetchall(f"SELECT {cols} FROM {table}"))
    return out


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def relay(world: World) -> FakeRelay:
    return FakeRelay(world)


async def test_offline_book_writes_document_outbox_and_projection_together(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    alice = await customer(tmp_path, world, relay, "alice")
    assert [s.name for s in await alice.shops("hair")] == ["Barber One"]
    assert [c.id for c in await alice.categories()] == ["hair"]

    res = await alice.book(SHOP, DAY, "cut-10", party=2, note="window seat")
    assert (res.state, res.final, res.stamp, res.party, res.note) == (
        ClaimState.CONFIRMED,
        False,
        None,
        2,
        "window seat",
    )
    # book() answers from memory (no read-back transaction): exactly the row it committed.
    assert res == await alice.reservation(res.reservation_id)
    assert res.start == "10:00" and res.service == "haircut"

    entry, listed = await alice.pending_entries()
    assert (entry.entity_type, entry.entity_id, entry.operation, entry.doc_id) == (
        "reservation",
        res.reservation_id,
        "create",
        DOC,
    )
    # The queued payload alone carries the signed reservation (and its certificate).
    scratch = Replica()
    scratch.apply_update(entry.payload)
    assert list(read_bookings(scratch, DOC).reservations) == [res.reservation_id]
    # The first booking of the day also lists the day in the user's own document, for the
    # user's other devices (same transaction, an entry of its own).
    assert (listed.entity_type, listed.entity_id, listed.operation, listed.doc_id) == (
        "booked_day",
        LISTED,
        "create",
        "user:u-alice",
    )
    scratch = Replica()
    scratch.apply_update(listed.payload)
    assert booked_days(scratch, "u-alice") == {(SHOP, DAY)}

    (slot,) = await alice.slots(SHOP, DAY)
    assert (slot.capacity, slot.seats_taken, slot.seats_left, slot.known) == (2, 2, 0, True)
    await alice.close()

    # Everything is on disk: a new process sees the same.
    again = await open_profile(tmp_path / "alice", world)
    assert again.user_id == "u-alice"  # identity restored from meta + the secret store
    (mine,) = await again.reservations()
    assert mine == res
    assert await again.pending_entries() == [entry, listed]
    assert read_bookings(Replica(), DOC).reservations == {}
    doc = await again.document(DOC)
    assert list(doc["reservations"]) == [res.reservation_id]
    await again.close()
    await owner.close()


async def test_relay_stamp_makes_the_booking_final_confirmed(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    alice = await customer(tmp_path, world, relay, "alice")
    res = await alice.book(SHOP, DAY, "cut-10")
    drain(alice)
    stamps = await push(alice, relay)
    assert await alice.pending_entries() == []
    # Each ack is told (the booking, then its listed day); the verdict waits for the stamp.
    assert [(e.type, getattr(e, "entity_type", None)) for e in drain(alice)] == [
        ("change_acked", "reservation"),
        ("change_acked", "booked_day"),
    ]
    ((doc_id, stamp_update),) = stamps

    changes = await alice.apply_remote(doc_id, stamp_update)
    assert [(c.reservation_id, c.kind, c.after) for c in changes] == [
        (res.reservation_id, "final", ClaimState.CONFIRMED)
    ]
    (mine,) = await alice.reservations()
    assert (mine.state, mine.final, mine.stamp) == (ClaimState.CONFIRMED, True, 1)
    (event,) = drain(alice)
    assert isinstance(event, BookingConfirmed) and event.final and event.stamp == 1
    assert event.to_dict()["type"] == "booking_confirmed"
    # A duplicate delivery is a no-op: no change, nothing logged twice.
    assert await alice.apply_remote(doc_id, stamp_update) == []
    await alice.close()
    await owner.close()


async def test_last_seat_contention_peer_exchange_and_relay_order(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=2)
    carol = await customer(tmp_path, world, relay, "carol", clock_ms=NOW_MS + 1_000)
    await carol.book(SHOP, DAY, "cut-10")
    for doc_id, update in await push(carol, relay):
        await carol.apply_remote(doc_id, update)
    # Alice's clock reads earlier than Bob's: tentatively she ranks first.
    alice = await customer(tmp_path, world, relay, "alice", clock_ms=NOW_MS + 10_000)
    bob = await customer(tmp_path, world, relay, "bob", clock_ms=NOW_MS + 15_000)
    for c in (alice, bob):
        await pull(c, relay, [DOC])
    ra = await alice.book(SHOP, DAY, "cut-10")
    rb = await bob.book(SHOP, DAY, "cut-10")
    assert ra.state is rb.state is ClaimState.CONFIRMED  # each alone holds the last seat

    # The phones meet with no relay: each validates and applies the other's delta.
    to_bob = await alice.diff(DOC, await bob.state_vector(DOC))
    to_alice = await bob.diff(DOC, await alice.state_vector(DOC))
    bob_changes = await bob.apply_remote(DOC, to_bob, from_peer=True)
    assert [(c.reservation_id, c.kind) for c in bob_changes] == [(rb.reservation_id, "demoted")]
    assert await alice.apply_remote(DOC, to_alice, from_peer=True) == []  # Alice keeps her seat
    assert isinstance(drain(bob)[-1], BookingDemoted)
    # Store-and-forward: what came from the peer is queued for the relay too.
    assert [(e.entity_type, e.operation) for e in await alice.pending_entries()] == [
        ("reservation", "create"),
        ("booked_day", "create"),
        ("update", "forward"),
    ]

    # Only Bob reaches the relay, and carries Alice's booking with his own: both get stamped,
    # his first (it is first in his outbox), so the relay's order reverses the tentative one.
    for doc_id, update in await push(bob, relay):
        await bob.apply_remote(doc_id, update)
    stamped = read_bookings(relay.replica(DOC), DOC).stamps
    assert [stamped[n].reservation for n in sorted(stamped)][1:] == [rb.reservation_id, ra.reservation_id]
    changes = await pull(alice, relay, [DOC])
    assert [(c.reservation_id, c.kind) for c in changes] == [(ra.reservation_id, "demoted")]
    (event,) = [e for e in drain(alice) if isinstance(e, BookingDemoted)]
    assert event.final and event.position == 1

    await pull(bob, relay, [DOC])
    await pull(carol, relay, [DOC])
    views = []
    for c in (alice, bob, carol):
        v = await c.verdict(SHOP, DAY)
        views.append(sorted((x.reservation_id, x.state, x.position, x.final) for x in v.claims.values()))
        assert await c.document(DOC) == relay.replica(DOC).to_py()
    assert views[0] == views[1] == views[2]
    slot = (await alice.verdict(SHOP, DAY)).slots["cut-10"]
    assert slot.seats_taken <= slot.capacity
    for c in (owner, alice, bob, carol):
        await c.close()


async def test_cancel_promotes_the_waitlisted(tmp_path: Path, world: World, relay: FakeRelay) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=1)
    alice = await customer(tmp_path, world, relay, "alice", clock_ms=NOW_MS + 1_000)
    bob = await customer(tmp_path, world, relay, "bob", clock_ms=NOW_MS + 2_000)
    ra = await alice.book(SHOP, DAY, "cut-10")
    await push(alice, relay)
    await pull(bob, relay, [DOC])
    rb = await bob.book(SHOP, DAY, "cut-10")
    assert (rb.state, rb.waitlist_position) == (ClaimState.WAITLISTED, 1)
    await push(bob, relay)
    await pull(alice, relay, [DOC])
    await pull(bob, relay, [DOC])
    drain(bob)

    cancelled = await alice.cancel(ra.reservation_id, reason="sick")
    assert cancelled.state is ClaimState.CANCELLED
    with pytest.raises(InvalidRequest):
        await alice.cancel(ra.reservation_id)
    (entry,) = await alice.pending_entries()
    assert (entry.entity_id, entry.operation) == (ra.reservation_id, "cancel")
    await push(alice, relay)
    changes = await pull(bob, relay, [DOC])
    assert [(c.reservation_id, c.kind) for c in changes] == [(rb.reservation_id, "promoted")]
    (event,) = drain(bob)
    assert isinstance(event, BookingPromoted) and event.state is ClaimState.CONFIRMED
    (mine,) = await bob.reservations()
    assert (mine.state, mine.final) == (ClaimState.CONFIRMED, True)
    with pytest.raises(NotAllowed):
        await bob.cancel(ra.reservation_id)  # not his
    for c in (owner, alice, bob):
        await c.close()


async def test_rejected_entries_are_terminal_and_do_not_block(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=5)
    alice = await customer(tmp_path, world, relay, "alice")
    r1 = await alice.book(SHOP, DAY, "cut-10")
    r2 = await alice.book(SHOP, DAY, "cut-10")
    r3 = await alice.book(SHOP, DAY, "cut-10")
    listed, e1, e2, e3 = sorted(await alice.pending_entries(), key=lambda e: e.entity_type != "booked_day")
    assert listed.entity_id == LISTED and e1.id < listed.id < e2.id  # the day is listed once
    drain(alice)

    # The sync engine hits a retryable failure on the head, then the relay refuses the second.
    assert await alice.mark_retry(e1.id, "relay unreachable")
    assert (await alice.pending_entries())[0].retry_count == 1
    await alice.mark_rejected(e2.id, "revoked", "certificate revoked")
    assert [e.id for e in await alice.pending_entries()] == [e1.id, listed.id, e3.id]
    (gone,) = await alice.rejected_entries()
    assert (gone.entity_id, gone.reject_code, gone.reject_reason) == (
        r2.reservation_id,
        "revoked",
        "certificate revoked",
    )
    (event,) = drain(alice)
    assert (
        isinstance(event, BookingRejected)
        and event.entity_id == r2.reservation_id
        and event.code == "revoked"
    )
    assert await alice.mark_rejected(e2.id, "revoked", "again") is not None
    assert drain(alice) == []  # already set aside: not reported twice
    row = await alice.reservation(r2.reservation_id)
    assert row is not None and row.rejected_code == "revoked"

    # The entries behind it still go through, and new ones too.
    await push(alice, relay)
    r4 = await alice.book(SHOP, DAY, "cut-10")
    await push(alice, relay)
    held = set(read_bookings(relay.replica(DOC), DOC).reservations)
    assert held == {r1.reservation_id, r3.reservation_id, r4.reservation_id}
    counts = await alice.outbox_counts()
    assert (counts.pending, counts.rejected) == (0, 1)
    await alice.close()
    await owner.close()


async def test_invalid_remote_updates_are_refused_and_leave_nothing(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    alice = await customer(tmp_path, world, relay, "alice")
    mallory = world.device("u-mallory")
    bookings = Replica(mallory.client_id())
    _, good = mallory.book(bookings, DOC, "cut-10")

    tampered = bytearray(good)
    tampered[-5] ^= 0x01  # inside the last record's signature
    with pytest.raises(ValidationError) as err:
        await alice.apply_remote(DOC, bytes(tampered))
    assert err.value.code in ("bad_signature", "schema", "malformed")

    # A stamp signed by anyone but the relay.
    impostor = SigningKey("relay-k1", fixed_seed_key(7))
    _, fake_stamp = write_stamps(relay_replica(impostor), DOC, impostor, ["x"], 1, NOW_MS)
    with pytest.raises(ValidationError) as err:
        await alice.apply_remote(DOC, fake_stamp)
    assert err.value.code in ("bad_signature", "missing_deps")

    # A device whose certificate the trusted relay key never signed.
    with pytest.raises(ValidationError):
        forger = World(relay=SigningKey("relay-k1", fixed_seed_key(9)))
        eve = forger.device("u-eve")
        _, forged = eve.book(Replica(eve.client_id()), DOC, "cut-10")
        await alice.apply_remote(DOC, forged)

    assert await alice.held_docs() == ["catalog", SHOP_DOC]
    assert await alice.pending_entries() == []
    assert await alice.reservations() == []

    # The valid one goes in.
    assert await alice.apply_remote(DOC, good) == []
    assert await alice.held_docs() == [DOC, "catalog", SHOP_DOC]
    await alice.close()
    await owner.close()


async def test_batch_applies_out_of_order_updates_and_computes_each_verdict_once(
    tmp_path: Path, world: World, relay: FakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=1)
    alice = await customer(tmp_path, world, relay, "alice")
    bob = world.device("u-bob")
    writer = Replica(bob.client_id())  # one device, one client id: the second continues the first
    _, u1 = bob.book(writer, DOC, "cut-10")
    _, u2 = bob.book(writer, DOC, "cut-10")
    ra = await alice.book(SHOP, DAY, "cut-10")  # alice's clock == theirs: (hlc, customer) decides
    drain(alice)

    calls: list[int] = []
    real = compute_verdict

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    for module in (base_mod, model_mod):  # the write path and its incremental verdicts
        monkeypatch.setattr(module, "compute_verdict", counting)
    # u2 continues the writer's history from u1: alone it is refused (missing_deps).
    with pytest.raises(ValidationError, match="missing_deps"):
        await alice.apply_remote(DOC, u2)
    calls.clear()
    result = await alice.apply_remote_batch([(DOC, u2), (DOC, u1), ("nonsense", b"x")])
    assert result.applied == 2
    assert [(f.index, f.error.code) for f in result.failed] == [(2, "bad_doc")]
    assert len(calls) == 1  # one verdict for the whole batch
    v = await alice.verdict(SHOP, DAY)
    assert sum(c.holds_seats for c in v.claims.values()) == 1
    mine = v.claims[ra.reservation_id]
    expected = "demoted" if mine.state is ClaimState.WAITLISTED else None
    assert [c.kind for c in result.changes] == ([expected] if expected else [])
    await alice.close()
    await owner.close()


async def test_hlc_stays_monotonic_across_restarts(tmp_path: Path, world: World, relay: FakeRelay) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=10)
    alice = await customer(tmp_path, world, relay, "alice", clock_ms=NOW_MS + 50_000)
    first = await alice.book(SHOP, DAY, "cut-10")
    await alice.close()
    # The machine's clock went back a minute while the client was closed.
    again = await open_profile(tmp_path / "alice", world, clock_ms=NOW_MS - 10_000)
    second = await again.book(SHOP, DAY, "cut-10")
    assert second.hlc > first.hlc
    assert second.hlc.split("-")[2] == first.hlc.split("-")[2]  # same device node
    await again.close()
    await owner.close()


async def test_staff_owner_and_admin_actions_with_rights(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=2)
    alice = await customer(tmp_path, world, relay, "alice", clock_ms=NOW_MS + 1_000)
    bob = await customer(tmp_path, world, relay, "bob", clock_ms=NOW_MS + 2_000)

    with pytest.raises(NotAllowed):
        await alice.add_category("nails", "Nails")
    with pytest.raises(NotAllowed):
        await alice.add_slot(SHOP, "x", service="s", start="09:00", duration=10, capacity=1)
    with pytest.raises(NotAllowed):
        await owner.add_category("nails", "Nails")

    staff_row = await owner.add_staff(SHOP, "u-stan")
    assert staff_row.role == "staff"
    detail = await owner.edit_shop(SHOP, description="Best cuts", rating=4.5)
    assert detail.profile is not None and detail.profile.description == "Best cuts"
    assert detail.summary is not None and detail.summary.rating == 4.5
    assert [s.user_id for s in detail.staff] == ["u-stan"]
    await push(owner, relay)

    stan = await customer(tmp_path, world, relay, "stan", staff_of=[SHOP])
    with pytest.raises(NotAllowed):
        await stan.edit_shop(SHOP, category="nails")  # the catalog entry is the owner's
    ra = await alice.book(SHOP, DAY, "cut-10")
    rb = await bob.book(SHOP, DAY, "cut-10")
    await push(alice, relay)
    await push(bob, relay)
    await pull(stan, relay, [DOC])
    await pull(alice, relay, [DOC])
    await pull(bob, relay, [DOC])
    drain(bob)

    confirmed = await stan.confirm(ra.reservation_id)
    assert confirmed.staff_confirmed and confirmed.state is ClaimState.CONFIRMED
    with pytest.raises(NotAllowed):
        await bob.confirm(ra.reservation_id)
    with pytest.raises(NotFound):
        await stan.decline("no-such-reservation")
    assert [r.reservation_id for r in await stan.day_reservations(SHOP, DAY)] == [
        ra.reservation_id,
        rb.reservation_id,
    ]
    await push(stan, relay)

    # The owner cuts the slot to one seat: Bob, confirmed a moment ago, is demoted.
    await pull(owner, relay, [DOC])
    await owner.add_slot(SHOP, "cut-10", service="haircut", start="10:00", duration=30, capacity=1)
    await push(owner, relay)
    changes = await pull(bob, relay, [SHOP_DOC, DOC])
    assert [(c.reservation_id, c.kind) for c in changes] == [(rb.reservation_id, "demoted")]
    assert (await bob.slots(SHOP, DAY))[0].seats_left == 0

    await stan.no_show(ra.reservation_id)
    declined = await stan.decline(ra.reservation_id, reason="closed")
    assert declined.state is ClaimState.DECLINED
    for c in (owner, alice, bob, stan):
        await c.close()


async def test_admin_category_and_shop_creation_project_the_catalog(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    admin = await open_profile(tmp_path / "admin", world, "u-admin", roles=["admin"])
    await admin.add_category("hair", "Hair", icon="scissors")
    await admin.add_category("nails", "Nails")
    await admin.add_category("hair", "Hair & Beard")  # editing = a newer record, same id
    await admin.create_shop("s1", name="Zed", category="hair", location="A", lat=0, lon=0)
    await admin.create_shop("s2", name="Alpha", category="hair", location="B", lat=0, lon=0)
    await admin.create_shop("s3", name="Nailz", category="nails", location="C", lat=0, lon=0, active=False)
    assert [(c.id, c.name) for c in await admin.categories()] == [
        ("hair", "Hair & Beard"),
        ("nails", "Nails"),
    ]
    assert [s.id for s in await admin.shops("hair")] == ["s2", "s1"]
    assert await admin.shops("nails") == []
    assert [s.id for s in await admin.shops("nails", include_inactive=True)] == ["s3"]
    assert [s.id for s in await admin.shops(search="alp")] == ["s2"]
    assert [s.id for s in await admin.shops(search="HAIR a")] == ["s2", "s1"]  # every word, any field
    assert await admin.shops(search="zed b") == []
    assert [s.id for s in await admin.shops("nails", search="nail", include_inactive=True)] == ["s3"]
    entries = await admin.pending_entries()
    assert [(e.entity_type, e.doc_id) for e in entries][-2:] == [("shop", "catalog"), ("shop", "shop:s3")]
    await push(admin, relay)

    # Another client receives the same catalog: same projection.
    other = await open_profile(tmp_path / "other", world, "u-other")
    await pull(other, relay, ["catalog"])
    assert await other.categories() == await admin.categories()
    assert await other.shops("hair") == await admin.shops("hair")
    await admin.close()
    await other.close()


async def test_incremental_projections_equal_a_rebuild(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=2)
    clients = [
        await customer(tmp_path, world, relay, n, clock_ms=NOW_MS + i * 1000) for i, n in enumerate("abc")
    ]
    booked = [await c.book(SHOP, DAY, "cut-10") for c in clients]
    for c in clients:
        await push(c, relay)
    await clients[0].cancel(booked[0].reservation_id)
    await push(clients[0], relay)
    await owner.add_slot(SHOP, "cut-10", service="haircut", start="10:00", duration=30, capacity=3)
    await push(owner, relay)
    for c in clients:
        await pull(c, relay, ["catalog", SHOP_DOC, DOC])
    before = await projection_tables(clients[2])
    drain(clients[2])
    await clients[2].rebuild_projections()
    assert drain(clients[2]) == []  # a rebuild tells the user nothing new
    assert await projection_tables(clients[2]) == before
    assert before["reservations"] and before["slot_usage"]
    for c in (owner, *clients):
        await c.close()


async def test_compaction_keeps_documents_whole(tmp_path: Path, world: World, relay: FakeRelay) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=100)
    alice = await customer(tmp_path, world, relay, "alice", compact_min_bytes=0)
    ids = [(await alice.book(SHOP, DAY, "cut-10")).reservation_id for _ in range(12)]
    async with alice.store.read() as tx:
        row = await tx.fetchone("SELECT generation, log_count FROM documents WHERE doc_id = ?", (DOC,))
    assert row is not None
    gen, log_count = row
    assert gen >= 2 and log_count < 12  # compacted along the way
    for doc_id, stamp_update in await push(alice, relay):
        await alice.apply_remote(doc_id, stamp_update)
    await alice.close()
    again = await open_profile(tmp_path / "alice", world)
    assert sorted((await again.document(DOC))["reservations"]) == sorted(ids)
    assert await again.document(DOC) == relay.replica(DOC).to_py()
    await again.close()
    await owner.close()


async def test_two_processes_sharing_a_profile_never_lose_each_others_writes(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=100)
    first = await customer(tmp_path, world, relay, "alice", compact_min_bytes=0)
    # A second LocalClient on the same directory stands for a second process (CLI + sync daemon).
    second = await open_profile(tmp_path / "alice", world, compact_min_bytes=0)
    booked = []
    for i in range(6):
        booked.append((await (first if i % 2 else second).book(SHOP, DAY, "cut-10")).reservation_id)
    hlcs = [r.hlc for r in await first.reservations()]
    assert len(set(hlcs)) == 6
    for c in (first, second):
        assert sorted((await c.document(DOC))["reservations"]) == sorted(booked)
    # The day is listed in the user's document once, though both processes booked in it.
    assert sorted(e.entity_id for e in await first.pending_entries()) == sorted([*booked, LISTED])
    await first.close()
    await second.close()
    third = await open_profile(tmp_path / "alice", world)
    assert sorted(r.reservation_id for r in await third.reservations()) == sorted(booked)
    await third.close()
    await owner.close()


async def test_booking_errors(tmp_path: Path, world: World, relay: FakeRelay) -> None:
    owner = await setup_shop(tmp_path, world, relay, capacity=2)
    await owner.add_slot(SHOP, "mon-only", service="s", start="09:00", duration=10, capacity=3, weekdays=[0])
    await push(owner, relay)
    anon = await open_profile(tmp_path / "anon", world)
    with pytest.raises(NotLoggedIn):
        await anon.book(SHOP, DAY, "cut-10")
    alice = await customer(tmp_path, world, relay, "alice")
    with pytest.raises(NotFound):
        await alice.book(SHOP, DAY, "no-slot")
    with pytest.raises(InvalidRequest):
        await alice.book(SHOP, DAY, "cut-10", party=3)
    with pytest.raises(InvalidRequest):
        await alice.book(SHOP, DAY, "mon-only")  # 2027-01-20 is a Wednesday
    with pytest.raises(InvalidRequest):
        await alice.book(SHOP, "20-01-2027", "cut-10")
    with pytest.raises(InvalidRequest):
        await alice.book(SHOP, DAY, "cut-10", note="x" * 501)
    assert await alice.pending_entries() == []
    assert await alice.held_docs() == ["catalog", SHOP_DOC]
    assert [s.slot_id for s in await alice.slots(SHOP, "2027-01-18")] == ["mon-only", "cut-10"]
    for c in (owner, anon, alice):
        await c.close()


async def test_an_expired_certificate_asks_to_log_in_again(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    late = await customer(tmp_path, world, relay, "late", clock_ms=NOW_MS + 25 * HOUR_MS)
    with pytest.raises(NotLoggedIn, match="log in again"):
        await late.book(SHOP, DAY, "cut-10")
    assert await late.pending_entries() == []
    await late.close()
    await owner.close()


async def test_subscribed_docs_follow_roles_bookings_and_browsing(
    tmp_path: Path, world: World, relay: FakeRelay
) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    assert set(await owner.subscribed_docs()) >= {"catalog", SHOP_DOC, "user:u-owner"}
    alice = await customer(tmp_path, world, relay, "alice")
    await alice.book(SHOP, DAY, "cut-10")
    await alice.slots(SHOP, "2027-01-21")
    await alice.follow("other-shop")
    assert await alice.subscribed_docs() == sorted(
        ["catalog", DOC, f"bookings:{SHOP}:2027-01-21", SHOP_DOC, "shop:other-shop", "user:u-alice"]
    )
    await alice.unfollow("other-shop")
    assert "shop:other-shop" not in await alice.subscribed_docs()
    await alice.close()
    await owner.close()


async def test_logout_forgets_identity_and_secrets(tmp_path: Path, world: World, relay: FakeRelay) -> None:
    owner = await setup_shop(tmp_path, world, relay)
    alice = await customer(tmp_path, world, relay, "alice")
    alice.secrets.set_tokens("access-xyz", "refresh-xyz")
    await alice.book(SHOP, DAY, "cut-10")
    await alice.logout("log in again")
    assert alice.identity is None
    assert alice.secrets.tokens() is None and alice.secrets.device_key() is None
    assert isinstance(drain(alice)[-1], LoggedOut)
    queued = [e.entity_type for e in await alice.pending_entries()]
    assert queued == ["reservation", "booked_day"]  # queued work is kept for the next login
    await alice.close()
    again = await LocalClient.open(
        tmp_path / "alice", secret_store=SecretStore(tmp_path / "alice", backend="file")
    )
    assert again.identity is None
    await again.close()
    assert (tmp_path / "alice" / DB_FILE).exists()
    await owner.close()


async def test_identity_must_match_its_certificate(tmp_path: Path, world: World) -> None:
    client = await open_profile(tmp_path / "p", world)
    alice = world.device("u-alice")
    with pytest.raises(InvalidRequest):
        await client.set_identity("u-bob", alice.device, world.trusted)
    stranger = World(relay=SigningKey("k2", fixed_seed_key(5)))
    with pytest.raises(InvalidRequest):
        await client.set_identity("u-alice", alice.device, stranger.trusted)
    assert repr(await client.set_identity("u-alice", alice.device, world.trusted)).startswith(
        "Identity(user_id='u-alice')"
    )
    assert DocId.catalog().kind.value == "catalog"
    await client.close()


async def test_a_booking_after_another_process_committed_is_redone_not_lost(
    tmp_path: Path, world: World, relay: FakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``book`` writes optimistically (no catch-up trip first); a commit by another connection to
    the same profile is noticed under the write lock, that attempt rolls back, and the booking is
    made again on top of what the other process wrote: nothing lost, nothing queued twice."""
    await setup_shop(tmp_path, world, relay, capacity=3)
    alice = await customer(tmp_path, world, relay, "alice")
    twin = await open_profile(tmp_path / "alice", world, "u-alice")  # a second process, in effect
    stale: list[bool] = []
    real = model_mod._unchanged_since

    def spy(conn: Any, data_version: int) -> None:
        try:
            real(conn, data_version)
        except model_mod._Stale:
            stale.append(True)
            raise

    monkeypatch.setattr(base_mod, "_unchanged_since", spy)
    booked = [
        await alice.book(SHOP, DAY, "cut-10"),
        await twin.book(SHOP, DAY, "cut-10"),
        await alice.book(SHOP, DAY, "cut-10"),
        await twin.book(SHOP, DAY, "cut-10"),
    ]
    assert len(stale) >= 2  # alice's second and twin's second booking were redone
    ids = {r.reservation_id for r in booked}
    # one customer (two processes of one profile): one active claim per slot, the rest duplicate
    assert [r.state for r in booked] == [ClaimState.CONFIRMED] + [ClaimState.DUPLICATE] * 3
    for client in (alice, twin):
        verdict = await client.verdict(SHOP, DAY)
        assert set(verdict.claims) == ids
        assert verdict == compute_verdict(
            read_bookings(client._docs[f"bookings:{SHOP}:{DAY}"].replica, f"bookings:{SHOP}:{DAY}"),
            {"cut-10": 3},
        )
        # Nothing queued twice, the day listed once (the redone booking saw the other's listing).
        assert sorted(e.entity_id for e in await client.pending_entries()) == sorted([*ids, LISTED])
        assert {r.reservation_id: r.state for r in await client.reservations()} == {
            r.reservation_id: r.state for r in booked
        }
