"""The sync service against a REAL relay process, with real SQLite profiles in tmp dirs.

Why real processes: the sync service's job is everything the offline tests cannot see — the
websocket, close codes, token expiry, a relay that disappears and comes back on the same port,
the relay's own validation and stamping. A stand-in would only test our reading of the protocol.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import pytest

import client.local.client as local_mod
from client.local.client import LocalClient
from client.local.events import (
    BookingDemoted,
    BookingRejected,
    BookingWaitlisted,
    ClientEvent,
    LoggedOut,
    RelayReachable,
    RelayUnreachable,
)
from client.local.projections import ReservationRow
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncLoginRequired, SyncRelayUnreachable, SyncService
from crdt_core.pop import proof_headers, rest
from crdt_core.validation import Rights
from crdt_core.verdict import ClaimState
from tests.support.clients import OPENED, close_all
from tests.support.eventually import eventually
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    PASSWORD,
    QUICK_ACCOUNT_EVENTS,
    FixedPortRelay,
    RelayProcess,
    applied_by_relay,
    cli_json,
    serving_fixed_port_relay,
    unique_email,
)
from tests.support.sync_helpers import seed_categories

DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
SLOT = "cut-10"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("relay"), *QUICK_ACCOUNT_EVENTS)


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


def drain(local: LocalClient) -> list[ClientEvent]:
    out: list[ClientEvent] = []
    while not local.events.empty():
        out.append(local.events.get_nowait())
    return out


async def open_profile(path: Path) -> LocalClient:
    local = await LocalClient.open(path, secret_store=SecretStore(path, backend="file"))
    OPENED.append(local)
    return local


async def accounts(
    relay: RelayProcess, tmp: Path, names: list[str], owner_of: dict[str, str] | None = None
) -> dict[str, tuple[LocalClient, AuthClient]]:
    """Register and log in one profile per name; ``owner_of`` maps a name to the shop it owns.

    Grants are made with the relay's CLI before the login, so the certificate carries them (the
    relay notices CLI changes by polling, hence the pause).
    """
    out: dict[str, tuple[LocalClient, AuthClient]] = {}
    emails: dict[str, str] = {}
    for name in names:
        local = await open_profile(tmp / name)
        auth = AuthClient(local, relay.base_url)
        emails[name] = unique_email(name)
        await auth.register(emails[name], PASSWORD, name.title())
        out[name] = (local, auth)
    if owner_of:
        for name, shop in owner_of.items():
            await asyncio.to_thread(
                cli_json, "user", "grant", emails[name], "--owner", shop, data_dir=relay.data_dir
            )
        await applied_by_relay(relay)
    for name, (_local, auth) in out.items():
        await auth.login(emails[name], PASSWORD)
    return out


def service(local: LocalClient, relay: RelayProcess, auth: AuthClient | None = None) -> SyncService:
    return SyncService(
        local, relay.base_url, auth=auth, backoff_initial_s=0.1, backoff_max_s=0.8, retry_initial_s=0.2
    )


async def open_shop(
    owner: LocalClient,
    auth: AuthClient,
    relay: RelayProcess,
    shop: str,
    capacity: int,
    per_customer: int | None = 100,
) -> None:
    """The owner creates ``shop`` with slot ``SLOT`` and syncs it. Its customers here book the slot
    again and again, so it allows ``per_customer`` active claims each (the default rule, one, is
    tested in tests/client/test_shop_rules_cli.py and tests/relay/sync/test_shop_rules_at_relay.py)."""
    await seed_categories(relay, "hair")  # a shop names a category the catalogue defines
    await owner.create_shop(shop, name=f"Shop {shop}", category="hair", location="Main St", lat=1.0, lon=2.0)
    await owner.add_slot(
        shop,
        SLOT,
        service="haircut",
        start="10:00",
        duration=30,
        capacity=capacity,
        per_customer=per_customer,
    )
    summary = await service(owner, relay, auth).sync_once()
    assert summary.pending == 0 and not summary.rejected, summary


async def book_with_a_forged_confirm(
    local: LocalClient, svc: SyncService, shop: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ReservationRow, ReservationRow]:
    """Sync, book, confirm that booking as if staff (the relay refuses it), book again; returns
    both bookings, events drained. The second booking continues the refused write's client clock."""
    await svc.sync_once()
    first = await local.book(shop, DAY, SLOT)
    # The app believes its user is staff (a stale role, say): the relay knows better.
    monkeypatch.setattr(
        local_mod.Identity,
        "rights",
        property(lambda self: Rights(self.user_id, False, frozenset(), frozenset({shop}))),
    )
    await local.confirm(first.reservation_id)
    monkeypatch.undo()
    second = await local.book(shop, DAY, SLOT)
    drain(local)
    return first, second


async def test_offline_booking_reaches_the_relay_and_other_clients(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "shop1"
    people = await accounts(relay, tmp_path, ["owner", "alice", "bob"], {"owner": shop})
    owner, owner_auth = people["owner"]
    alice, alice_auth = people["alice"]
    bob, bob_auth = people["bob"]
    await open_shop(owner, owner_auth, relay, shop, capacity=5)
    await alice.follow(shop)
    alice_sync = service(alice, relay, alice_auth)
    first = await alice_sync.sync_once()
    assert f"shop:{shop}" in first.docs and first.epoch

    relay.stop()
    try:
        res = await alice.book(shop, DAY, SLOT)  # offline: queued, tentatively confirmed
        assert res.state is ClaimState.CONFIRMED and not res.final
        with pytest.raises(SyncRelayUnreachable):
            await alice_sync.sync_once()
        assert (await alice.outbox_counts()).pending == 2  # the booking and its day, listed for her
        assert any(isinstance(e, RelayUnreachable) for e in drain(alice))
    finally:
        relay.start()

    summary = await alice_sync.sync_once()
    assert summary.acked >= 1 and summary.pending == 0 and not summary.rejected, summary
    assert not summary.epoch_changed  # same data directory, same lineage
    doc = f"bookings:{shop}:{DAY}"
    await bob.follow(shop)  # the slot's capacity lives in the shop's document
    await bob.subscribe(doc)
    await service(bob, relay, bob_auth).sync_once()
    await alice_sync.sync_once()  # picks up the stamp if it trailed the ack
    seen = await bob.day_reservations(shop, DAY)
    assert [r.reservation_id for r in seen] == [res.reservation_id]
    assert seen[0].stamp is not None and seen[0].final
    mine = await alice.reservation(res.reservation_id)
    assert mine is not None and (mine.stamp, mine.state, mine.final) == (seen[0].stamp, seen[0].state, True)
    assert await alice.verdict(shop, DAY) == await bob.verdict(shop, DAY)
    assert await alice.document(doc) == await bob.document(doc)
    cursors = await alice.store.last_seqs(alice_sync.relay_url)
    assert cursors.get(doc, 0) >= 1


async def test_bookings_queued_while_the_relay_is_down_go_out_by_themselves(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "shop2"
    people = await accounts(relay, tmp_path, ["owner", "carol"], {"owner": shop})
    owner, owner_auth = people["owner"]
    carol, carol_auth = people["carol"]
    await open_shop(owner, owner_auth, relay, shop, capacity=5)
    await carol.follow(shop)
    svc = service(carol, relay, carol_auth)
    await svc.sync_once()
    drain(carol)
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.connected.wait(), 10)
        relay.stop()
        booked = [await carol.book(shop, DAY, SLOT), await carol.book(shop, DAY, SLOT)]
        await asyncio.sleep(1.0)  # several reconnect attempts fail meanwhile
        assert (await carol.outbox_counts()).pending == 3  # two bookings, their day listed once
        relay.start()

        async def delivered() -> bool:
            return (await carol.outbox_counts()).pending == 0

        await eventually(
            delivered, timeout=15.0, what="outbox delivered"
        )  # no local action: the service noticed on its own
    finally:
        svc.stop()
        await asyncio.wait_for(task, 10)
    events = drain(carol)
    assert sum(isinstance(e, RelayUnreachable) for e in events) == 1  # reported once, not per attempt
    assert any(isinstance(e, RelayReachable) for e in events)
    doc = f"bookings:{shop}:{DAY}"
    await owner.subscribe(doc)
    await service(owner, relay, owner_auth).sync_once()
    held = {r.reservation_id for r in await owner.day_reservations(shop, DAY)}
    assert held == {r.reservation_id for r in booked}


async def access_token_expired(profile: LocalClient) -> None:
    """Wait until the profile's stored access token is past its ``exp`` (``--access-ttl``)."""
    tokens = profile.secrets.tokens()
    assert tokens is not None
    exp = jwt.decode(tokens.access.reveal(), options={"verify_signature": False})["exp"]
    await eventually(lambda: time.time() >= exp + 0.05, timeout=30.0, what="access token expired")


async def test_expiring_access_tokens_are_refreshed_silently(tmp_path: Path) -> None:
    shop = "shop3"
    with RelayProcess(
        tmp_path / "relay", *GENEROUS_LIMITS, *QUICK_ACCOUNT_EVENTS, "--access-ttl", "2"
    ) as relay:
        people = await accounts(relay, tmp_path, ["owner", "dave"], {"owner": shop})
        owner, owner_auth = people["owner"]
        dave, dave_auth = people["dave"]
        await open_shop(owner, owner_auth, relay, shop, capacity=9)
        await dave.follow(shop)
        svc = service(dave, relay, dave_auth)
        await svc.sync_once()
        await access_token_expired(dave)  # 4001 at connect from now on
        await dave.book(shop, DAY, SLOT)
        summary = await svc.sync_once()
        assert summary.refreshed == 1 and summary.pending == 0, summary

        task = asyncio.create_task(svc.run())
        try:
            for _ in range(3):  # the relay closes live connections with 4001 as tokens expire
                await dave.book(shop, DAY, SLOT)
                svc.wake()
                await asyncio.sleep(1.2)

            async def delivered() -> bool:
                return (await dave.outbox_counts()).pending == 0

            await eventually(delivered, timeout=15.0, what="outbox delivered")
        finally:
            svc.stop()
            await asyncio.wait_for(task, 10)
        assert svc.refresh_count >= 2
        events = drain(dave)
        assert not any(isinstance(e, (LoggedOut, BookingRejected)) for e in events)
        assert dave.identity is not None and dave.secrets.tokens() is not None
        assert len(await dave.day_reservations(shop, DAY)) == 4

        # A stolen refresh token: someone else rotates it first. Dave's next refresh presents the
        # spent token, the relay revokes the whole family, and Dave is told to log in again.
        tokens = dave.secrets.tokens()
        assert tokens is not None
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            stolen = await http.post("/api/v1/auth/refresh", json={"refresh_token": tokens.refresh.reveal()})
            assert stolen.status_code == 200, stolen.text
        await access_token_expired(dave)  # his next sync has to refresh
        await dave.book(shop, DAY, SLOT)
        drain(dave)
        with pytest.raises(SyncLoginRequired):
            await svc.sync_once()
        (event,) = [e for e in drain(dave) if isinstance(e, LoggedOut)]
        assert event.reason == "log in again"
        assert dave.secrets.tokens() is None and dave.identity is None
        assert (await dave.outbox_counts()).pending == 1  # the booking waits for the next login


async def test_a_rejected_entry_is_terminal_and_does_not_block_the_next(
    relay: FixedPortRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = "shop4"
    people = await accounts(relay, tmp_path, ["owner", "erin"], {"owner": shop})
    owner, owner_auth = people["owner"]
    erin, erin_auth = people["erin"]
    await open_shop(owner, owner_auth, relay, shop, capacity=5)
    await erin.follow(shop)
    svc = service(erin, relay, erin_auth)
    first, second = await book_with_a_forged_confirm(erin, svc, shop, monkeypatch)

    summary = await svc.sync_once()
    assert summary.pending == 0, summary
    ((entry_id, code, reason),) = summary.rejected
    assert code == "rejected" and reason.startswith("forbidden"), reason
    (gone,) = await erin.rejected_entries()
    assert (gone.id, gone.operation, gone.reject_code) == (entry_id, "confirm", "rejected")
    assert any(isinstance(e, BookingRejected) and e.entry_id == entry_id for e in drain(erin))
    doc = f"bookings:{shop}:{DAY}"
    await owner.subscribe(doc)
    await service(owner, relay, owner_auth).sync_once()
    rows = {r.reservation_id: r for r in await owner.day_reservations(shop, DAY)}
    assert set(rows) == {first.reservation_id, second.reservation_id}
    assert rows[first.reservation_id].state is ClaimState.CONFIRMED  # the forged confirm never landed
    assert not rows[first.reservation_id].staff_confirmed
    # The refused confirm stays in Erin's document (a CRDT cannot drop it), yet the catch-up diff
    # of later syncs leaves it out, so the relay accepts them, and later bookings still flow.
    again = await svc.sync_once()
    assert again.repair_refused == {} and again.rejected == [], again
    third = await erin.book(shop, DAY, SLOT)
    later = await svc.sync_once()
    assert later.repair_refused == {} and later.rejected == [] and later.pending == 0, later
    await service(owner, relay, owner_auth).sync_once()
    assert third.reservation_id in {r.reservation_id for r in await owner.day_reservations(shop, DAY)}


async def test_last_seat_contention_tells_the_loser(relay: FixedPortRelay, tmp_path: Path) -> None:
    shop = "shop5"
    people = await accounts(relay, tmp_path, ["owner", "frank", "gina"], {"owner": shop})
    owner, owner_auth = people["owner"]
    frank, frank_auth = people["frank"]
    gina, gina_auth = people["gina"]
    await open_shop(owner, owner_auth, relay, shop, capacity=1)
    frank_sync, gina_sync = service(frank, relay, frank_auth), service(gina, relay, gina_auth)
    for local, svc in ((frank, frank_sync), (gina, gina_sync)):
        await local.follow(shop)
        await svc.sync_once()
    # Both book the last seat while disconnected: each sees itself confirmed, tentatively.
    f = await frank.book(shop, DAY, SLOT)
    g = await gina.book(shop, DAY, SLOT)
    assert f.state is ClaimState.CONFIRMED and g.state is ClaimState.CONFIRMED
    drain(gina)
    await frank_sync.sync_once()  # frank reaches the relay first: stamp 1
    await gina_sync.sync_once()  # gina's claim is stamped 2 and she learns of frank's
    await frank_sync.sync_once()
    events = drain(gina)
    told = [e for e in events if isinstance(e, (BookingDemoted, BookingWaitlisted))]
    assert told and all(e.reservation_id == g.reservation_id for e in told), events
    mine = await gina.reservation(g.reservation_id)
    assert mine is not None and mine.state is ClaimState.WAITLISTED
    theirs = await frank.reservation(f.reservation_id)
    assert theirs is not None and theirs.state is ClaimState.CONFIRMED
    assert await frank.verdict(shop, DAY) == await gina.verdict(shop, DAY)


async def test_a_revoked_session_says_log_in_again(relay: FixedPortRelay, tmp_path: Path) -> None:
    people = await accounts(relay, tmp_path, ["hank"])
    hank, hank_auth = people["hank"]
    svc = service(hank, relay, hank_auth)
    await svc.sync_once()
    tokens = hank.secrets.tokens()
    assert tokens is not None and hank.identity is not None
    # Logged out elsewhere (another device, the web): the whole session family is revoked. The
    # token is bound to hank's device key, so the call carries its proof of possession.
    logout = proof_headers(
        tokens.access.reveal(), hank.identity.device.private, rest("POST", "/api/v1/auth/logout")
    )
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        r = await http.post("/api/v1/auth/logout", headers=logout)
        assert r.status_code == 204
    drain(hank)
    with pytest.raises(SyncLoginRequired):
        await svc.sync_once()
    (event,) = [e for e in drain(hank) if isinstance(e, LoggedOut)]
    assert event.reason == "log in again"
    assert hank.secrets.tokens() is None and hank.identity is None


async def test_rate_limited_entries_are_retried_on_a_timer(tmp_path: Path) -> None:
    shop = "shop6"
    with RelayProcess(
        tmp_path / "relay", *GENEROUS_LIMITS, *QUICK_ACCOUNT_EVENTS, "--sync-rate", "5", "--sync-burst", "3"
    ) as relay:
        people = await accounts(relay, tmp_path, ["owner", "ivy"], {"owner": shop})
        owner, owner_auth = people["owner"]
        ivy, ivy_auth = people["ivy"]
        await open_shop(owner, owner_auth, relay, shop, capacity=20)
        await ivy.follow(shop)
        svc = service(ivy, relay, ivy_auth)
        await svc.sync_once()
        booked = [await ivy.book(shop, DAY, SLOT) for _ in range(8)]  # offline, then all at once
        task = asyncio.create_task(svc.run())
        try:

            async def delivered() -> bool:
                return (await ivy.outbox_counts()).pending == 0

            await eventually(
                delivered, timeout=15.0, what="outbox delivered"
            )  # no further local write: the retry timer did it
        finally:
            svc.stop()
            await asyncio.wait_for(task, 10)
        assert svc.retry_count >= 1  # the relay did refuse some with rate_limited
        assert (await ivy.outbox_counts()).rejected == 0
        doc = f"bookings:{shop}:{DAY}"
        await owner.subscribe(doc)
        await service(owner, relay, owner_auth).sync_once()
        held = {r.reservation_id for r in await owner.day_reservations(shop, DAY)}
        assert held == {r.reservation_id for r in booked}
