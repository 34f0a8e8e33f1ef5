"""One Yjs client id per device per document, and what a refusal or a conflict does to it.

Why these tests: a document's state vector grows with its writers, and Yjs slows down with it, so
a device writes each document under one id (``crdt_core.clientids``) instead of a fresh one per
write. That makes a refused write wedge the writes behind it (they continue its clock), so the
client rebuilds the document from the relay's and re-writes them under its next id; and it makes
the relay's document the authority when an update from it does not fit the local one. Real relay
process, real SQLite profiles (as in ``test_sync_relay``).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client.local.client import LocalClient
from client.peer.data import apply_from_peer
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.reader import read_bookings
from crdt_core.records import sign_record
from crdt_core.schema import CERTS_ROOT, SCHEMA_VERSION, DocId, Reservation
from crdt_core.verdict import Verdict
from crdt_core.yupdate import decode_state_vector
from tests.client.test_rejected_verdict import forge_booking
from tests.client.test_sync_relay import SLOT, accounts, open_shop, service
from tests.support.clients import DAY as OFFLINE_DAY, SHOP as OFFLINE_SHOP, close_all, open_profile
from tests.support.crdt_factory import World
from tests.support.relay_process import FixedPortRelay, serving_fixed_port_relay

DAY = (_dt.date.today() + _dt.timedelta(days=43)).isoformat()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("client_ids"))


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


def cert_of(local: LocalClient) -> str:
    assert local.identity is not None
    return local.identity.device.cert_id


async def relay_view(local: LocalClient, shop: str, relay: FixedPortRelay, auth: object) -> dict[int, int]:
    """The relay's state vector of the day, as a client that just caught up holds it."""
    await local.slots(shop, DAY)
    await service(local, relay, auth).sync_once()  # type: ignore[arg-type]
    return decode_state_vector(
        await local.state_vector(str(DocId.bookings(shop, _dt.date.fromisoformat(DAY))))
    )


def claims(verdict: Verdict) -> dict[str, tuple[str, int | None, bool]]:
    return {rid: (c.state.value, c.stamp, c.final) for rid, c in verdict.claims.items()}


async def test_fifty_bookings_leave_one_client_id_for_the_device(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "ids50"
    people = await accounts(relay, tmp_path, ["owner", "erin", "fred"], {"owner": shop})
    (owner, owner_auth), (erin, erin_auth), (fred, fred_auth) = (
        people["owner"],
        people["erin"],
        people["fred"],
    )
    await open_shop(
        owner, owner_auth, relay, shop, capacity=60, per_customer=100
    )  # one customer books the slot again and again
    await erin.slots(shop, DAY)
    erin_sync = service(erin, relay, erin_auth)
    await erin_sync.sync_once()
    for _ in range(50):
        await erin.book(shop, DAY, SLOT)
    summary = await erin_sync.sync_once()
    assert summary.pending == 0 and not summary.rejected, summary
    mine = client_id_for(cert_of(erin), 0)
    doc = str(DocId.bookings(shop, _dt.date.fromisoformat(DAY)))
    for clocks in (
        decode_state_vector(await erin.state_vector(doc)),
        await relay_view(fred, shop, relay, fred_auth),
    ):
        assert clocks[mine] == 51, clocks  # her certificate and 50 bookings, one client
        assert len(set(clocks) - {mine}) <= 1, clocks  # and the relay's stamps
    view = await erin.verdict(shop, DAY)
    assert len(view.claims) == 50 and all(c.final for c in view.claims.values())


async def test_a_refused_write_does_not_wedge_the_writes_queued_behind_it(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "idsrefused"
    people = await accounts(relay, tmp_path, ["owner", "bob", "erin"], {"owner": shop})
    (owner, owner_auth), (bob, bob_auth), (erin, erin_auth) = people["owner"], people["bob"], people["erin"]
    await open_shop(
        owner, owner_auth, relay, shop, capacity=10, per_customer=100
    )  # one customer books the slot again and again
    await erin.slots(shop, DAY)
    erin_sync = service(erin, relay, erin_auth)
    await erin_sync.sync_once()
    assert bob.user_id is not None
    # Offline: a booking, one the relay will refuse (in Bob's name: forbidden), then two more,
    # all under one client id, so the last two continue the refused one's clock.
    first = await erin.book(shop, DAY, SLOT)
    forged = await forge_booking(erin, shop, bob.user_id, party=1, day=DAY)
    later = [await erin.book(shop, DAY, SLOT) for _ in range(2)]
    doc = str(DocId.bookings(shop, _dt.date.fromisoformat(DAY)))

    summary = await erin_sync.sync_once()
    assert [(code, reason.split(":")[0]) for _, code, reason in summary.rejected] == [
        ("rejected", "forbidden")
    ]
    assert summary.pending == 0 and doc in summary.rebuilt, summary
    assert await erin.pending_rebuilds() == {}
    view = await erin.verdict(shop, DAY)
    wanted = {first.reservation_id, *(r.reservation_id for r in later)}
    assert set(view.claims) == wanted  # the refused one is out of the verdict
    assert all(c.stamp is not None and c.final for c in view.claims.values()), view
    row = await erin.reservation(forged)
    assert row is not None and row.rejected_code == "rejected" and row.rejected_reason, row
    (refused,) = await erin.rejected_entries()
    assert refused.entity_id == forged

    # The writes behind the refusal went out under her next id for the document; the relay holds
    # her two ids and its own, and everyone agrees on the day.
    cert = cert_of(erin)
    clocks = await relay_view(bob, shop, relay, bob_auth)
    assert {client_id_for(cert, 0), client_id_for(cert, 1)} <= set(clocks), clocks
    assert len(clocks) <= 3, clocks
    assert await erin.writer_id(doc) == client_id_for(cert, 1)
    assert claims(await bob.verdict(shop, DAY)) == claims(view)
    # Later writes continue generation 1 and go through.
    fourth = await erin.book(shop, DAY, SLOT)
    again = await erin_sync.sync_once()
    assert again.pending == 0 and not again.rejected and not again.repair_refused, again
    mine = (await erin.verdict(shop, DAY)).claims[fourth.reservation_id]
    assert mine.final and mine.stamp is not None


async def test_a_relay_update_that_does_not_fit_rebuilds_the_document_from_the_relays(
    relay: FixedPortRelay, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mallory signs two bookings at one Yjs id: A goes to Vic through a peer, B to the relay.

    Vic's document holds A at that id, so B arrives as a no-op and the relay's stamp for B names
    a reservation Vic does not have; state vectors agree, so no resync repairs it. Vic rebuilds
    the day from the relay's document and ends up with everyone's verdict.
    """
    shop = "idsconflict"
    people = await accounts(relay, tmp_path, ["owner", "mallory", "vic", "wes"], {"owner": shop})
    owner, owner_auth = people["owner"]
    (mallory, mallory_auth), (vic, vic_auth), (wes, wes_auth) = (
        people["mallory"],
        people["vic"],
        people["wes"],
    )
    await open_shop(owner, owner_auth, relay, shop, capacity=4)
    day = _dt.date.fromisoformat(DAY)
    doc = DocId.bookings(shop, day)
    for someone, auth in ((mallory, mallory_auth), (vic, vic_auth)):
        await someone.slots(shop, DAY)
        await service(someone, relay, auth).sync_once()
    author, _identity = mallory._require_author()
    version_a = Reservation(id="r-version-a", slot=SLOT, party=1, customer=author.user_id, hlc=author.hlc())
    to_vic = author.put(Replica(client_id_for(cert_of(mallory), 0)), doc, [(version_a, None)])
    version_b = await mallory.book(shop, DAY, SLOT)  # same client, same clocks: certificate, booking
    assert (await service(mallory, relay, mallory_auth).sync_once()).pending == 0

    handed = await apply_from_peer(vic, [(str(doc), to_vic)])
    assert handed.applied == 1 and not handed.refused, handed
    assert "r-version-a" in (await vic.verdict(shop, DAY)).claims
    caplog.set_level(logging.WARNING, logger="quickslot.client.sync")
    summary = await service(vic, relay, vic_auth).sync_once()
    assert str(doc) in summary.conflicts and str(doc) in summary.rebuilt, summary
    assert any(r.getMessage() == "relay_update_conflict" for r in caplog.records)
    assert await vic.pending_rebuilds() == {}

    await wes.slots(shop, DAY)
    await service(wes, relay, wes_auth).sync_once()
    fresh = await wes.verdict(shop, DAY)
    view = await vic.verdict(shop, DAY)
    assert set(view.claims) == {version_b.reservation_id}
    assert claims(view) == claims(fresh)
    assert all(c.final and c.stamp is not None for c in view.claims.values())
    held = Replica()
    held.apply_update(await vic.diff(str(doc), b"\x00"))
    assert set(read_bookings(held, doc).reservations) == {version_b.reservation_id}
    assert [r.reservation_id for r in await vic.day_reservations(shop, DAY)] == [version_b.reservation_id]


async def test_a_peer_cannot_squat_the_next_client_id_of_a_device(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    """Mallory writes her own booking at the Yjs id (and clock) Vic's next write in the day takes.

    Had Vic taken it, her own booking (same id, same clock) would be a silent no-op wherever
    Mallory's arrived first. The peer path refuses it (``foreign_client``), and Vic's booking is
    accepted and stamped under her id.
    """
    shop = "idssquat"
    people = await accounts(relay, tmp_path, ["owner", "mallory", "vic"], {"owner": shop})
    owner, owner_auth = people["owner"]
    (mallory, _mallory_auth), (vic, vic_auth) = people["mallory"], people["vic"]
    await open_shop(owner, owner_auth, relay, shop, capacity=4)
    doc = DocId.bookings(shop, _dt.date.fromisoformat(DAY))
    await vic.slots(shop, DAY)
    vic_sync = service(vic, relay, vic_auth)
    await vic_sync.sync_once()
    victims_next = await vic.writer_id(str(doc))
    assert victims_next == client_id_for(cert_of(vic), 0)
    author, _identity = mallory._require_author()
    squat = Reservation(id="r-squat", slot=SLOT, party=4, customer=author.user_id, hlc=author.hlc())
    signed = sign_record(str(doc), squat.id, squat.KIND, squat.to_fields(), author.device, SCHEMA_VERSION)
    update = Replica(victims_next).write(
        [(CERTS_ROOT, cert_of(mallory), author.device.certificate), (squat.ROOT, squat.id, signed)]
    )
    handed = await apply_from_peer(vic, [(str(doc), update)])
    assert [code for _doc, code, _detail in handed.refused] == ["foreign_client"], handed
    assert "r-squat" not in (await vic.verdict(shop, DAY)).claims
    assert await vic.pending_entries() == []

    mine = await vic.book(shop, DAY, SLOT)
    summary = await vic_sync.sync_once()
    assert summary.pending == 0 and not summary.rejected, summary
    claim = (await vic.verdict(shop, DAY)).claims[mine.reservation_id]
    assert claim.final and claim.stamp is not None
    assert decode_state_vector(await vic.state_vector(str(doc)))[victims_next] == 2  # certificate, booking


async def test_peer_updates_are_judged_by_the_peer_arrival_rules_and_relay_updates_are_not(
    tmp_path: Path,
) -> None:
    """A record stamped ten minutes ahead of this device's clock is refused from a peer
    (``clock_skew``); the same bytes from the relay path were judged there, and are applied."""
    world = World()
    vic = await open_profile(tmp_path / "vic", world, "u-vic")
    ahead = world.device("u-mallory", clock_ms=world.now_ms + 10 * 60_000)
    doc = f"bookings:{OFFLINE_SHOP}:{OFFLINE_DAY}"
    res, update = ahead.book(Replica(ahead.client_id()), doc, SLOT)
    handed = await apply_from_peer(vic, [(doc, update)])
    assert [code for _doc, code, _detail in handed.refused] == ["clock_skew"], handed
    assert await vic.pending_entries() == []
    await vic.apply_remote(doc, update)  # the relay path: no arrival rules again
    assert res.id in (await vic.verdict(OFFLINE_SHOP, OFFLINE_DAY)).claims
