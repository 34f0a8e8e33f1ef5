"""Store-and-forward: a booking the SDK made offline reaches the relay in a Python peer's hands.

A Node SDK client (``QuickSlotClient`` in ``tests/web/sdk_driver.mjs``) books while the relay is
down and hands its pending signed updates (``pendingUpdates()``) to the shop's tablet, a
``quickslot`` CLI profile. The tablet takes them exactly as its peer server takes an ``upd`` from
a peer (``client.peer_data.apply_from_peer``: split per writer, checked for equivocation, validated
with the peer arrival rules by its own clock, stored and queued as ``forward`` outbox entries).
The relay comes back; only the tablet syncs (``quickslot sync``, a real process): the relay
validates what it carries, whoever carried it, acknowledges and stamps the booking, and the
tablet sees the stamp. Then the SDK client reconnects: its own outbox entry is a re-send of what
the relay holds, acknowledged as such, and the catch-up brings the stamp, so the SDK sees its
booking stamped and final, with the seat the tablet's copy shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from client.local.client import LocalClient
from client.peer.data import apply_from_peer
from client.storage.secrets import SecretStore
from tests.client.test_cli import Cli
from tests.support.relay_process import PASSWORD, FixedPortRelay, unique_email
from tests.web.test_sdk_client import DAY, Driver, open_shop


async def _carry(home: Path, pending: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The tablet stores what the SDK handed it, as from a peer; returns the refusals."""
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    try:
        report = await apply_from_peer(local, [(p["docId"], bytes.fromhex(p["update"])) for p in pending])
        assert report.applied >= 1
        return report.refused
    finally:
        await local.close()


async def _day_rows(home: Path, shop: str) -> list[Any]:
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    try:
        return await local.day_reservations(shop, DAY)
    finally:
        await local.close()


def test_a_booking_made_by_the_sdk_reaches_the_relay_through_a_python_peer(
    fresh_relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop, slot = "carried1", "cut-10"
    tablet = Cli(tmp_path / "tablet")
    open_shop(tablet, fresh_relay, shop, slot, capacity=2)
    tablet.json("slots", "slots", shop, DAY)  # the tablet holds the day
    assert tablet.json("sync", "sync")["pending"] == 0

    web = Driver(fresh_relay.base_url)
    try:
        web("register", email=unique_email("cara"), password=PASSWORD)
        web("slots", shop=shop, day=DAY)
        web("sync")
        fresh_relay.stop()
        web.wait_event("offline")
        web("stop")  # the phone stays away from the relay until the end
        mine = web("book", shop=shop, day=DAY, slot=slot, party=2)
        assert (mine["state"], mine["stamp"], mine["pending"]) == ("confirmed", None, True)
        pending = web("pending")
        assert [p["docId"] for p in pending] == [f"bookings:{shop}:{DAY}"]

        # the tablet meets the phone: it validates and stores the booking, tentative
        assert asyncio.run(_carry(tablet.home, pending)) == []
        (carried,) = asyncio.run(_day_rows(tablet.home, shop))
        assert carried.reservation_id == mine["reservationId"] and carried.stamp is None

        # only the tablet reaches the relay: it forwards the booking, the relay stamps it
        fresh_relay.start()
        synced = tablet.json("sync", "sync")
        assert synced["pending"] == 0, synced
        (stamped,) = asyncio.run(_day_rows(tablet.home, shop))
        if stamped.stamp is None:  # the stamp may trail the ack: one more catch-up brings it
            tablet.json("sync", "sync")
            (stamped,) = asyncio.run(_day_rows(tablet.home, shop))
        assert stamped.reservation_id == mine["reservationId"] and stamped.stamp is not None
        assert web("status")["pending"] == 1  # the phone has not been online yet

        # the phone comes back: its entry is acknowledged as a re-send and the stamp arrives
        assert web("sync")["pending"] == 0
        if not any(e["event"] == "final" for e in web.seen):
            web.wait_event("final")
        (view,) = [r for r in web("reservations", all=False) if r["reservationId"] == mine["reservationId"]]
        assert (view["state"], view["final"], view["pending"]) == ("confirmed", True, False)
        assert view["stamp"] == stamped.stamp
        assert web("outbox") == []
    finally:
        web.close()
