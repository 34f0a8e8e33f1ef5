"""Syncing over plain HTTP when websockets are blocked, against a REAL relay process.

How websockets are blocked: a loopback proxy (``tests/faults/proxy.py`` with
``refuse_upgrades=403``) sits in front of the relay and answers every websocket upgrade with
``403 Blocked`` while it forwards plain HTTP untouched, as a corporate proxy that forbids
websockets does. The profile behind it runs with the default ``transport="auto"``: it tries the
websocket, is refused, finds that plain HTTP works and syncs over the relay's REST sync API
(``client/sync/http_fallback.py``). The proxy counts the refused upgrades and the websocket messages it
carried, so the tests can say that nothing went over a websocket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from client.local.client import LocalClient
from client.local.events import (
    BookingCancelled,
    BookingConfirmed,
    BookingDemoted,
    BookingPromoted,
    BookingRejected,
    BookingWaitlisted,
    Synced,
)
from client.sync.auth import AuthClient
from client.sync.http_fallback import HttpFallback
from client.sync.service import SyncService
from crdt_core.verdict import ClaimState
from tests.client.test_sync_relay import (  # noqa: F401 - the module's relay and profile cleanup
    DAY,
    SLOT,
    _close_profiles,
    accounts,
    book_with_a_forged_confirm,
    drain,
    open_shop,
    relay,
    service,
)
from tests.faults.proxy import Fault, FaultProxy
from tests.support.relay_process import FixedPortRelay

Person = tuple[LocalClient, AuthClient]


async def shop_with(server: FixedPortRelay, tmp: Path, shop: str, names: list[str]) -> list[Person]:
    """An owner with ``shop`` open (one seat in ``SLOT``); returns the other ``names``, logged in."""
    people = await accounts(server, tmp, ["owner", *names], {"owner": shop})
    await open_shop(*people["owner"], server, shop, capacity=1)
    return [people[name] for name in names]


@pytest.fixture
async def blocking_proxy(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(relay.base_url)
    assert parts.hostname is not None and parts.port is not None
    async with FaultProxy((parts.hostname, parts.port), seed=0, refuse_upgrades=403) as proxy:
        yield proxy


def behind(proxy: FaultProxy, local: LocalClient, auth: AuthClient, http_poll_s: float = 5.0) -> SyncService:
    """A sync service that reaches the relay only through the proxy (auth included)."""
    auth.base_url = proxy.url  # token refreshes go through the proxy too
    return SyncService(
        local,
        proxy.url,
        auth=auth,
        backoff_initial_s=0.1,
        backoff_max_s=0.8,
        retry_initial_s=0.2,
        http_poll_s=http_poll_s,
        fallback=HttpFallback(),
    )


async def test_a_profile_books_cancels_and_catches_up_with_websockets_blocked(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    blocking_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    shop = "httpshop1"
    (alice, alice_auth), (bob, bob_auth) = await shop_with(relay, tmp_path, shop, ["alice", "bob"])
    alice_sync = behind(blocking_proxy, alice, alice_auth)
    bob_sync = service(bob, relay, bob_auth)

    # Catch up: the shop and its slot arrive over HTTP.
    await alice.follow(shop)
    first = await alice_sync.sync_once()
    assert alice_sync.last_transport == "http", alice_sync.transport_reason
    assert "403" in alice_sync.transport_reason
    assert f"shop:{shop}" in first.docs and first.epoch
    assert [s.slot_id for s in await alice.slots(shop, DAY)] == [SLOT]

    # Book over HTTP: acked after the durable commit, stamped, confirmed for good.
    mine = await alice.book(shop, DAY, SLOT)
    drain(alice)
    booked = await alice_sync.sync_once()
    # Two writes acked: the booking, and its day listed in the user's own document.
    assert booked.acked == 2 and booked.pending == 0 and not booked.rejected, booked
    row = await alice.reservation(mine.reservation_id)
    assert row is not None and row.state is ClaimState.CONFIRMED and row.stamp is not None
    events = drain(alice)
    assert any(isinstance(e, BookingConfirmed) and e.final for e in events), events
    assert any(isinstance(e, Synced) for e in events)

    # Bob (websocket) books the same, now full, slot: he is waitlisted behind Alice's stamp.
    await bob.follow(shop)
    await bob_sync.sync_once()
    his = await bob.book(shop, DAY, SLOT)
    await bob_sync.sync_once()
    his_row = await bob.reservation(his.reservation_id)
    assert his_row is not None and his_row.state is ClaimState.WAITLISTED

    # Alice catches up on Bob's claim over HTTP, then cancels: Bob is promoted.
    await alice_sync.sync_once()
    assert mine.reservation_id != his.reservation_id
    assert {r.reservation_id for r in await alice.day_reservations(shop, DAY)} >= {mine.reservation_id}
    await alice.cancel(mine.reservation_id, "plans changed")
    cancelled = await alice_sync.sync_once()
    assert cancelled.acked == 1 and cancelled.pending == 0, cancelled
    assert any(isinstance(e, BookingCancelled) for e in drain(alice))
    drain(bob)
    await bob_sync.sync_once()
    his_row = await bob.reservation(his.reservation_id)
    assert his_row is not None and his_row.state is ClaimState.CONFIRMED
    assert any(isinstance(e, BookingPromoted | BookingConfirmed) for e in drain(bob))
    await alice_sync.sync_once()
    assert await alice.verdict(shop, DAY) == await bob.verdict(shop, DAY)

    # Nothing of Alice's went over a websocket: every upgrade was refused, no frame passed.
    assert blocking_proxy.counters["upgrades_refused"] >= 5
    assert blocking_proxy.counters["messages_up"] == 0 and blocking_proxy.counters["messages_down"] == 0


@pytest.mark.parametrize("first", ["http", "websocket"])
async def test_http_and_websocket_profiles_contending_for_the_last_seat_agree(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    first: str,
) -> None:
    shop = f"httpshop-{first}"
    (hana, hana_auth), (wes, wes_auth) = await shop_with(relay, tmp_path, shop, ["hana", "wes"])
    syncs = {
        "http": (
            hana,
            SyncService(hana, relay.base_url, auth=hana_auth, transport="http", fallback=HttpFallback()),
        ),
        "websocket": (wes, SyncService(wes, relay.base_url, auth=wes_auth, transport="websocket")),
    }
    for local, svc in syncs.values():
        await local.follow(shop)
        await svc.sync_once()
    # Both book the last seat offline; each sees itself confirmed, tentatively.
    claims = {name: await local.book(shop, DAY, SLOT) for name, (local, _svc) in syncs.items()}
    second = "websocket" if first == "http" else "http"
    for name in (first, second, first):
        local, svc = syncs[name]
        if name == second:
            drain(local)
        await svc.sync_once()
        assert svc.last_transport == name
    loser, _ = syncs[second]
    told = [e for e in drain(loser) if isinstance(e, BookingDemoted | BookingWaitlisted)]
    assert told and all(e.reservation_id == claims[second].reservation_id for e in told), told
    winner_row = await syncs[first][0].reservation(claims[first].reservation_id)
    loser_row = await loser.reservation(claims[second].reservation_id)
    assert winner_row is not None and winner_row.state is ClaimState.CONFIRMED
    assert loser_row is not None and loser_row.state is ClaimState.WAITLISTED
    assert await hana.verdict(shop, DAY) == await wes.verdict(shop, DAY)


async def test_watch_over_http_polls_for_updates(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    blocking_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    shop = "httpshop-watch"
    (ivy, ivy_auth), (jon, jon_auth) = await shop_with(relay, tmp_path, shop, ["ivy", "jon"])
    await ivy.follow(shop)
    ivy_sync = behind(blocking_proxy, ivy, ivy_auth, http_poll_s=0.2)
    await ivy_sync.sync_once()
    mine = await ivy.book(shop, DAY, SLOT)
    task = asyncio.create_task(ivy_sync.run())
    try:
        await asyncio.wait_for(ivy_sync.connected.wait(), 15)
        jon_sync = service(jon, relay, jon_auth)
        await jon.follow(shop)
        await jon_sync.sync_once()
        theirs = await jon.book(shop, DAY, SLOT)
        await jon_sync.sync_once()
        # The watch loop sent Ivy's booking and, by polling, learns of Jon's claim.
        for _ in range(100):
            rows = {r.reservation_id for r in await ivy.day_reservations(shop, DAY)}
            if theirs.reservation_id in rows and (await ivy.outbox_counts()).pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the HTTP watch did not catch up")
        assert ivy_sync.last_transport == "http"
        row = await ivy.reservation(mine.reservation_id)
        assert row is not None and row.state is ClaimState.CONFIRMED
    finally:
        ivy_sync.stop()
        await asyncio.wait_for(task, 15)
    assert blocking_proxy.counters["messages_up"] == 0


async def test_a_refused_write_over_http_is_set_aside_and_the_document_rebuilt(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = "httpshop-refused"
    ((erin, erin_auth),) = await shop_with(relay, tmp_path, shop, ["erin"])
    svc = SyncService(
        erin, relay.base_url, auth=erin_auth, transport="http", retry_initial_s=0.2, fallback=HttpFallback()
    )
    await erin.follow(shop)
    _first, second = await book_with_a_forged_confirm(erin, svc, shop, monkeypatch)
    summary = await svc.sync_once()
    assert summary.pending == 0, summary
    ((entry_id, code, reason),) = summary.rejected
    assert code == "rejected" and reason.startswith("forbidden"), reason
    assert any(isinstance(e, BookingRejected) and e.entry_id == entry_id for e in drain(erin))
    # The booking behind the refused confirm continued its client clock: the document was
    # rebuilt from the relay's and the booking re-written under the next client id, and it landed.
    doc = f"bookings:{shop}:{DAY}"
    assert doc in summary.rebuilt, summary
    row = await erin.reservation(second.reservation_id)
    assert row is not None and row.stamp is not None
    third = await erin.book(shop, DAY, SLOT)
    later = await svc.sync_once()
    assert later.rejected == [] and later.repair_refused == {} and later.pending == 0, later
    row = await erin.reservation(third.reservation_id)
    assert row is not None and row.stamp is not None


async def test_a_websocket_dropped_before_the_first_message_falls_back_to_http(
    relay: FixedPortRelay,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    """The proxy passes the upgrade (101) but cuts the connection before the relay's first
    message, every time: a 1006 before the welcome, as middleboxes that kill websockets do."""
    shop = "httpshop-1006"
    ((kim, kim_auth),) = await shop_with(relay, tmp_path, shop, ["kim"])
    parts = urlsplit(relay.base_url)
    assert parts.hostname is not None and parts.port is not None
    async with FaultProxy((parts.hostname, parts.port), seed=0) as proxy:
        proxy.add_rule("down", Fault.CUT, lambda _message: True, times=1000)
        svc = behind(proxy, kim, kim_auth)
        await kim.follow(shop)
        await svc.sync_once()
        assert svc.last_transport == "http" and "1006" in svc.transport_reason, svc.transport_reason
        mine = await kim.book(shop, DAY, SLOT)
        summary = await svc.sync_once()
        assert summary.acked == 2 and summary.pending == 0, summary  # the booking, its listed day
        row = await kim.reservation(mine.reservation_id)
        assert row is not None and row.state is ClaimState.CONFIRMED and row.stamp is not None
        assert proxy.counters["cut"] >= 1
