"""A booking the relay refused leaves its author's verdict: every replica then agrees on the rest.

Why this matters: a CRDT cannot take an update back out of the local document, so without this
the author's replica keeps counting the refused claim's seats, which no other replica ever
received, and its verdict for everybody else's claims differs from theirs for good. Real relay
process, real SQLite profiles (as in ``test_sync_relay``).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client.local.client import LocalClient
from crdt_core.authoring import new_id
from crdt_core.schema import DocId, Reservation
from crdt_core.verdict import ClaimState, Verdict
from tests.client.test_sync_relay import SLOT, accounts, open_shop, service
from tests.support.clients import OPENED, close_all
from tests.support.relay_process import FixedPortRelay, serving_fixed_port_relay

DAY = (_dt.date.today() + _dt.timedelta(days=41)).isoformat()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("rejected_verdict"))


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


async def forge_booking(local: LocalClient, shop: str, customer: str, party: int, day: str = DAY) -> str:
    """Book in someone else's name: the relay refuses it (``forbidden``), the local write succeeds.

    Goes through the client's own write path (``_write``/``_put``), as ``book`` does, only with
    another customer, because ``book`` itself always books for the signed-in user.
    """
    author, _ = local._require_author()
    res = Reservation(id=new_id(), slot=SLOT, party=party, customer=customer, hlc=author.hlc())
    doc = DocId.bookings(shop, _dt.date.fromisoformat(day))
    async with local._write(local=True) as work:
        await local._put(work, doc, [res], ("reservation", res.id, "create"))
    return res.id


def without(verdict: Verdict, reservation_id: str) -> tuple[dict[str, object], dict[str, object]]:
    return (
        {k: v for k, v in verdict.claims.items() if k != reservation_id},
        dict(verdict.slots),
    )


async def test_a_refused_booking_leaves_its_authors_verdict(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop = "rejverdict"
    people = await accounts(relay, tmp_path, ["owner", "bob", "erin"], {"owner": shop})
    (owner, owner_auth), (bob, bob_auth), (erin, erin_auth) = people["owner"], people["bob"], people["erin"]
    await open_shop(owner, owner_auth, relay, shop, capacity=3)
    bob_sync, erin_sync = service(bob, relay, bob_auth), service(erin, relay, erin_auth)
    await bob.slots(shop, DAY)  # browsing the day subscribes it (and the shop)
    await erin.slots(shop, DAY)
    await bob_sync.sync_once()
    await erin_sync.sync_once()

    assert bob.user_id is not None
    forged = await forge_booking(erin, shop, bob.user_id, party=1)
    await bob.book(shop, DAY, SLOT)
    await bob_sync.sync_once()

    summary = await erin_sync.sync_once()
    refused = [(code, reason.split(":")[0]) for _, code, reason in summary.rejected]
    assert refused == [("rejected", "forbidden")], summary
    await erin_sync.sync_once()  # Bob's stamped booking

    # The refused booking is still listed, with the relay's reason, and holds no seats.
    row = await erin.reservation(forged)
    assert row is not None and row.rejected_code == "rejected" and not row.holds_seats, row
    # 3 seats, Bob's 1 taken: a party of 2 fits, unless the refused 1 is (wrongly) still counted.
    mine = await erin.book(shop, DAY, SLOT, party=2)
    assert mine.state is ClaimState.CONFIRMED, mine
    (slot,) = [s for s in await erin.slots(shop, DAY) if s.slot_id == SLOT]
    assert slot.seats_taken == 3, slot

    later = await erin_sync.sync_once()
    assert later.pending == 0 and not later.rejected, later
    await bob_sync.sync_once()
    erin_view = await erin.verdict(shop, DAY)
    bob_view = await bob.verdict(shop, DAY)
    assert forged not in bob_view.claims and forged not in erin_view.claims
    assert without(erin_view, forged) == without(bob_view, forged)
    assert len(bob_view.claims) == 2 and bob_view.slots[SLOT].seats_taken == 3

    # A fresh process (verdict rebuilt from disk) leaves it out too.
    await erin.close()
    OPENED.remove(erin)
    reopened = await LocalClient.open(erin.profile_dir, secret_store=erin.secrets)
    OPENED.append(reopened)
    assert without(await reopened.verdict(shop, DAY), forged) == without(bob_view, forged)
    assert forged not in (await reopened.verdict(shop, DAY)).claims

    # Rebuilding the projections from the documents keeps the refused row and its reason (the
    # reason lives in the outbox, not in the document), and still counts no seats for it.
    await reopened.rebuild_projections()
    row = await reopened.reservation(forged)
    assert row is not None and row.rejected_code == "rejected" and not row.holds_seats, row
    (slot,) = [s for s in await reopened.slots(shop, DAY) if s.slot_id == SLOT]
    assert slot.seats_taken == 3, slot
    assert without(await reopened.verdict(shop, DAY), forged) == without(bob_view, forged)
