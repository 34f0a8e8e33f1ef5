"""A user's bookings follow them to a new device: the user's own document lists the days they
booked (``booked_day``), so a fresh profile logged in as the same user shows the bookings made on
another device, with their verdicts, after one sync and without the user opening any day.

Real relay process on a loopback port; the library API in-process, the CLI as subprocesses.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.http_fallback import HttpFallback
from client.sync.service import SyncService
from crdt_core.verdict import ClaimState
from tests.client.test_cli import Cli
from tests.support.clients import OPENED, close_all
from tests.support.relay_process import (
    PASSWORD,
    QUICK_ACCOUNT_EVENTS,
    FixedPortRelay,
    applied_by_relay,
    cli_json,
    serving_fixed_port_relay,
    unique_email,
)
from tests.support.sync_helpers import seed_categories

TODAY = _dt.date.today()
DAY = (TODAY + _dt.timedelta(days=30)).isoformat()
DAY2 = (TODAY + _dt.timedelta(days=31)).isoformat()
SLOT = "cut-10"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("devices"), *QUICK_ACCOUNT_EVENTS)


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


async def profile(path: Path) -> LocalClient:
    local = await LocalClient.open(path, secret_store=SecretStore(path, backend="file"))
    OPENED.append(local)
    return local


def service(local: LocalClient, relay: FixedPortRelay) -> SyncService:
    return SyncService(local, relay.base_url, backoff_initial_s=0.1, backoff_max_s=0.8, retry_initial_s=0.2)


async def open_shop(relay: FixedPortRelay, tmp: Path, shop: str) -> None:
    """An owner opens ``shop`` with slot ``SLOT`` (5 seats, 100 bookings per customer) at the relay."""
    await seed_categories(relay, "hair")
    owner = await profile(tmp / f"owner-{shop}")
    auth = AuthClient(owner, relay.base_url)
    email = unique_email("owner")
    await auth.register(email, PASSWORD, "Owner")
    await asyncio.to_thread(cli_json, "user", "grant", email, "--owner", shop, data_dir=relay.data_dir)
    await applied_by_relay(relay)
    await auth.login(email, PASSWORD)
    await owner.create_shop(shop, name=f"Shop {shop}", category="hair", location="Main St", lat=1.0, lon=2.0)
    await owner.add_slot(
        shop, SLOT, service="haircut", start="10:00", duration=30, capacity=5, per_customer=100
    )
    assert (await service(owner, relay).sync_once()).pending == 0


async def sync_until_final(local: LocalClient, relay: FixedPortRelay) -> None:
    """Sync until every reservation of the user here is final (a stamp may trail its ack)."""
    for _ in range(3):
        summary = await service(local, relay).sync_once()
        assert summary.pending == 0 and not summary.rejected, summary
        if all(r.final for r in await local.reservations()):
            return


async def test_a_new_device_shows_the_bookings_made_on_another_one(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "devshop1"
    await open_shop(relay, tmp_path, shop)
    email = unique_email("ann")
    phone = await profile(tmp_path / "phone")
    phone_auth = AuthClient(phone, relay.base_url)
    await phone_auth.register(email, PASSWORD, "Ann")
    await phone_auth.login(email, PASSWORD)
    await phone.follow(shop)
    await service(phone, relay).sync_once()

    booked = [
        await phone.book(shop, DAY, SLOT),
        await phone.book(shop, DAY, SLOT, party=2),
        await phone.book(shop, DAY2, SLOT),
    ]
    queued = [(e.entity_type, e.doc_id) for e in await phone.pending_entries()]
    await sync_until_final(phone, relay)
    on_phone = {r.reservation_id: r for r in await phone.reservations()}
    assert set(on_phone) == {r.reservation_id for r in booked}
    assert all(r.state is ClaimState.CONFIRMED and r.final and r.stamp for r in on_phone.values())

    laptop = await profile(tmp_path / "laptop")
    await AuthClient(laptop, relay.base_url).login(email, PASSWORD)
    assert laptop.user_id == phone.user_id
    assert await laptop.reservations() == []
    first = await service(laptop, relay).sync_once()  # no day opened, no shop followed
    assert {f"bookings:{shop}:{DAY}", f"bookings:{shop}:{DAY2}", f"shop:{shop}"} <= set(first.docs)
    on_laptop = {r.reservation_id: r for r in await laptop.reservations()}
    assert set(on_laptop) == set(on_phone)
    for rid, row in on_laptop.items():  # the same verdict as on the device that booked
        mine = on_phone[rid]
        assert (row.state, row.final, row.stamp, row.party, row.day, row.start) == (
            mine.state, mine.final, mine.stamp, mine.party, mine.day, mine.start,
        )  # fmt: skip
    followed = await laptop.following()
    for doc in (f"bookings:{shop}:{DAY}", f"bookings:{shop}:{DAY2}", f"shop:{shop}"):
        assert "your booking" in followed[doc], followed
    assert (await laptop.outbox_counts()).pending == 0  # reading wrote nothing
    # What the phone queued: one day listed per (shop, day), by the first booking there, in the
    # user's own document.
    user_doc = f"user:{phone.user_id}"
    assert queued == [
        ("reservation", f"bookings:{shop}:{DAY}"),
        ("booked_day", user_doc),
        ("reservation", f"bookings:{shop}:{DAY}"),
        ("reservation", f"bookings:{shop}:{DAY2}"),
        ("booked_day", user_doc),
    ]

    # The same over plain HTTP (websockets blocked): one sync round brings the listed days.
    tablet = await profile(tmp_path / "tablet")
    await AuthClient(tablet, relay.base_url).login(email, PASSWORD)
    over_http = SyncService(tablet, relay.base_url, transport="http", fallback=HttpFallback())
    assert {f"bookings:{shop}:{DAY}", f"shop:{shop}"} <= set((await over_http.sync_once()).docs)
    assert {r.reservation_id: (r.state, r.final) for r in await tablet.reservations()} == {
        rid: (r.state, r.final) for rid, r in on_phone.items()
    }

    # A booking on a listed day lists nothing again; the phone sees the laptop's booking.
    more = await laptop.book(shop, DAY2, SLOT)
    assert [e.entity_type for e in await laptop.pending_entries()] == ["reservation"]
    assert (await service(laptop, relay).sync_once()).pending == 0
    await sync_until_final(phone, relay)
    seen = await phone.reservation(more.reservation_id)
    assert seen is not None and seen.state is ClaimState.CONFIRMED and seen.final

    # Bounded: once the days are two days past and settled, neither they nor their shop are
    # followed for the bookings any more.
    later = _dt.date.fromisoformat(DAY2) + _dt.timedelta(days=2)
    followed = await laptop.following(today=later)
    assert not any(doc.startswith("bookings:") for doc in followed), followed
    assert "your booking" not in followed.get(f"shop:{shop}", set()), followed


async def test_reservations_on_a_new_device_from_the_cli(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop = "devshop2"
    await open_shop(relay, tmp_path, shop)
    phone = Cli(tmp_path / "phone")
    phone.register_and_login(relay.base_url)
    made = phone.json("book", "book", shop, DAY, SLOT)["reservation"]
    assert phone.json("sync", "sync")["pending"] == 0

    laptop = Cli(tmp_path / "laptop")
    laptop.email = phone.email
    login = ("login", "--relay", relay.base_url, "--email", phone.email, "--password-stdin")
    laptop.json("login", *login, stdin=PASSWORD)
    assert laptop.json("reservations", "reservations")["reservations"] == []
    laptop.json("sync", "sync")
    shown = laptop.json("reservations", "reservations")["reservations"]
    assert [(r["reservation_id"], r["day"], r["state"], r["final"]) for r in shown] == [
        (made["reservation_id"], DAY, "confirmed", True)
    ]
    human = laptop.run("reservations")
    assert human.returncode == 0 and made["reservation_id"] in human.stdout, human.stdout
