"""A shop tablet carries two customers' offline bookings to a REAL relay in one update.

Alice and Bob each book the last seat offline, Alice first (by HLC): every replica that sees both
shows Alice confirmed and Bob waitlisted. A tablet that got both from peers forwards them to the
relay in one update, whose client blocks are in whatever order its peers left them. The relay
must stamp them in that tentative order (``crdt_core.verdict.stamp_order``), so Alice gets stamp 1
and keeps the seat on every try, whichever of the two the update holds first.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from crdt_core.engine import EMPTY_STATE_VECTOR
from crdt_core.verdict import ClaimState

# The module's relay and the profile cleanup are test_sync_relay's fixtures.
from tests.client.test_sync_relay import _close_profiles, accounts, open_shop, relay, service  # noqa: F401
from tests.support.relay_process import FixedPortRelay
from tests.support.strategies import client_block, yjs_update

SLOT = "cut-10"
TRIES = 4


async def test_a_tablet_carrying_both_offline_bookings_keeps_alice_first(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    shop = "tabletshop"
    people = await accounts(relay, tmp_path, ["owner", "alice", "bob", "tablet"], {"owner": shop})
    (owner, owner_auth), (alice, alice_auth), (bob, bob_auth) = (people[n] for n in ("owner", "alice", "bob"))
    tablet, tablet_auth = people["tablet"]
    await open_shop(owner, owner_auth, relay, shop, capacity=1)
    for local, auth in ((alice, alice_auth), (bob, bob_auth), (tablet, tablet_auth)):
        await local.follow(shop)
        await service(local, relay, auth).sync_once()  # the slot is known: now they go offline

    for attempt in range(TRIES):
        day = (_dt.date.today() + _dt.timedelta(days=40 + attempt)).isoformat()
        doc = f"bookings:{shop}:{day}"
        a = await alice.book(shop, day, SLOT)  # offline, and earlier by HLC
        b = await bob.book(shop, day, SLOT)
        assert (a.state, b.state) == (ClaimState.CONFIRMED, ClaimState.CONFIRMED)  # each alone here
        assert a.hlc < b.hlc
        # The tablet gets both from peers in one update; every other try with Bob's block first.
        blocks = [client_block(await p.diff(doc, EMPTY_STATE_VECTOR)) for p in (alice, bob)]
        carried = yjs_update(blocks[::-1] if attempt % 2 == 0 else blocks)
        await tablet.apply_remote(doc, carried, from_peer=True)
        await tablet.subscribe(doc, "peer")
        seen = {r.reservation_id: r.state for r in await tablet.day_reservations(shop, day)}
        assert seen == {a.reservation_id: ClaimState.CONFIRMED, b.reservation_id: ClaimState.WAITLISTED}

        summary = await service(tablet, relay, tablet_auth).sync_once()
        assert summary.pending == 0 and not summary.rejected, summary
        for local, auth in ((alice, alice_auth), (bob, bob_auth)):
            await service(local, relay, auth).sync_once()
        mine = {r.reservation_id: r for r in await alice.reservations()}[a.reservation_id]
        theirs = {r.reservation_id: r for r in await bob.reservations()}[b.reservation_id]
        order = "bob's block first" if attempt % 2 == 0 else "alice's block first"
        assert (mine.stamp, mine.state, mine.final) == (1, ClaimState.CONFIRMED, True), order
        assert (theirs.stamp, theirs.state) == (2, ClaimState.WAITLISTED), order


async def test_a_tablet_that_met_bob_first_still_keeps_alice_first(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """The tablet meets Bob, then Alice, in two peer syncs: two queued forwards, Bob's first.

    Sent one by one, the relay would stamp them in the tablet's order and give Bob the seat
    every device showed Alice holding; the sync sends a carrier's queued updates of a document as
    one bundle first (``client.sync.service._Session._send_bundles``), whose claims the relay stamps in
    their tentative order.
    """
    shop = "meetshop"
    people = await accounts(relay, tmp_path, ["owner", "alice", "bob", "tablet"], {"owner": shop})
    (owner, owner_auth), (alice, alice_auth), (bob, bob_auth) = (people[n] for n in ("owner", "alice", "bob"))
    tablet, tablet_auth = people["tablet"]
    await open_shop(owner, owner_auth, relay, shop, capacity=1)
    for local, auth in ((alice, alice_auth), (bob, bob_auth), (tablet, tablet_auth)):
        await local.follow(shop)
        await service(local, relay, auth).sync_once()

    day = (_dt.date.today() + _dt.timedelta(days=50)).isoformat()
    doc = f"bookings:{shop}:{day}"
    a = await alice.book(shop, day, SLOT)
    b = await bob.book(shop, day, SLOT)
    assert a.hlc < b.hlc
    for person in (bob, alice):  # two meetings, Bob's first: two forward entries in that order
        await tablet.apply_remote(doc, await person.diff(doc, EMPTY_STATE_VECTOR), from_peer=True)
    await tablet.subscribe(doc, "peer")
    forwards = [e for e in await tablet.pending_entries() if e.doc_id == doc]
    assert [e.operation for e in forwards] == ["forward", "forward"]

    summary = await service(tablet, relay, tablet_auth).sync_once()
    assert summary.pending == 0 and not summary.rejected, summary
    for local, auth in ((alice, alice_auth), (bob, bob_auth)):
        await service(local, relay, auth).sync_once()
    mine = {r.reservation_id: r for r in await alice.reservations()}[a.reservation_id]
    theirs = {r.reservation_id: r for r in await bob.reservations()}[b.reservation_id]
    assert (mine.stamp, mine.state, mine.final) == (1, ClaimState.CONFIRMED, True)
    assert (theirs.stamp, theirs.state) == (2, ClaimState.WAITLISTED)
