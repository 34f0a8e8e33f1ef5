"""The sync websocket end to end: a real relay process, real websockets, real stores.

Every test runs against the embedded SQLite store and against PostgreSQL (``--store`` with a
fresh database on a real server): the same protocol suite for both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from crdt_core.authoring import write_stamps
from crdt_core.certs import SigningKey
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.messages import CloseCode, ErrorCode
from crdt_core.protocol import Acked, DocSynced, ErrorReceived, StampReceived, UpdateReceived
from crdt_core.reader import read_bookings
from crdt_core.records import RELAY_SIGNER_PREFIX
from crdt_core.schema import SlotTemplate
from tests.relay.store_backends import LONG_STORES, copy_store
from tests.support.relay_process import (
    GENEROUS_LIMITS,
    QUICK_ACCOUNT_EVENTS,
    STORES,
    RelayProcess,
    applied_by_relay,
    rss_bytes,
    store_args,
)
from tests.support.sync_helpers import Account, SyncClient, fetch_document, new_account

DAY = (dt.date.today() + dt.timedelta(days=3)).isoformat()
SHOP = "shop1"
DOC = f"bookings:{SHOP}:{DAY}"


@pytest.fixture(scope="module", params=STORES)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("relay-sync") / "data"
    with RelayProcess(
        data, *GENEROUS_LIMITS, *QUICK_ACCOUNT_EVENTS, *store_args(request, request.param)
    ) as proc:
        yield proc


@pytest.fixture(params=STORES)
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    """Serve flags of a fresh store for tests that start their own relays (``[]``: SQLite)."""
    return store_args(request, request.param)


@pytest.fixture(scope="module")
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


async def test_booking_is_stored_acked_stamped_and_fanned_out(
    relay: RelayProcess, http: httpx.Client
) -> None:
    alice, bob = new_account(relay, http), new_account(relay, http)
    ca = await SyncClient.connect(relay, alice.access)
    cb = await SyncClient.connect(relay, bob.access, header=False)
    ra, rb = Replica(alice.author.client_id()), Replica()
    assert isinstance(await ca.subscribe(DOC, ra), DocSynced)
    assert isinstance(await cb.subscribe(DOC, rb), DocSynced)

    res, update = alice.author.book(ra, DOC, "s1", 2)
    answer = await ca.push(DOC, update)
    assert isinstance(answer, Acked), answer
    stamp = await ca.next_event(StampReceived)
    assert [r for _, r in stamp.stamps] == [res.id]
    ra.apply_update(stamp.update)

    got = await cb.next_event(UpdateReceived)
    rb.apply_update(got.update)
    rb.apply_update((await cb.next_event(StampReceived)).update)
    assert rb.to_py() == ra.to_py()
    state = read_bookings(rb, DOC)
    assert state.reservations[res.id].customer == alice.user_id
    assert [s.reservation for s in state.stamps.values()] == [res.id]

    # A re-send is harmless: acked again, nothing new stored or forwarded.
    again = await ca.push(DOC, update)
    assert isinstance(again, Acked)
    assert again.seq <= stamp.seq
    await ca.close()
    await cb.close()


async def test_rejections_keep_the_connection_and_store_nothing(
    relay: RelayProcess, http: httpx.Client
) -> None:
    mallory, victim, watcher = new_account(relay, http), new_account(relay, http), new_account(relay, http)
    doc = f"bookings:shop2:{DAY}"
    cm = await SyncClient.connect(relay, mallory.access)
    cw = await SyncClient.connect(relay, watcher.access)
    rm, rw = Replica(mallory.author.client_id()), Replica()
    await cm.subscribe(doc, rm)
    await cw.subscribe(doc, rw)
    await cw.drain_into(rw, quiet=0.2)

    # 1. A reservation in someone else's name (mallory signs, names the victim).
    from crdt_core.schema import Reservation

    forged = Reservation(id="forged1", slot="s1", party=1, customer=victim.user_id, hlc=mallory.author.hlc())
    scratch = Replica(mallory.author.client_id())
    scratch.apply_update(rm.encode_state())
    bad = mallory.author.put(scratch, doc, [(forged, None)])
    answer = await cm.push(doc, bad)
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.REJECTED
    assert answer.reason.startswith("forbidden")

    # 2. A forged stamp (signed by a key the relay does not hold).
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    res, ok_update = mallory.author.book(rm, doc, "s1", 1)
    assert isinstance(await cm.push(doc, ok_update), Acked)
    await cm.drain_into(rm, quiet=0.3)
    fake_relay = SigningKey("not-the-relay", Ed25519PrivateKey.generate())
    scratch = rm.copy(client_id_for(RELAY_SIGNER_PREFIX + fake_relay.kid, 0))
    _, fake = write_stamps(scratch, doc, fake_relay, [res.id], 99, 0)
    answer = await cm.push(doc, fake)
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("bad_signature")

    # 3. A deletion / rewrite of an existing record.
    scratch = Replica()
    scratch.apply_update(rm.encode_state())
    rewrite = scratch.write([("reservations", res.id, b"tampered")])
    answer = await cm.push(doc, rewrite)
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("rewrite")

    # 4. Garbage that is not an update at all.
    answer = await cm.push(doc, b"\x01\x02\x03")
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.REJECTED

    # The connection still works: a valid booking goes through.
    _, good = mallory.author.book(rm, doc, "s2", 1)  # another slot: one active claim per slot
    assert isinstance(await cm.push(doc, good), Acked)

    # The watcher saw only the two valid bookings and their stamps, never a rejected record.
    await cw.drain_into(rw, quiet=0.5)
    state = read_bookings(rw, doc)
    assert "forged1" not in state.reservations
    assert len(state.reservations) == 2 and len(state.stamps) == 2
    assert sorted(state.stamps) == [1, 2]
    await cm.close()
    await cw.close()


async def test_user_doc_of_another_user_is_forbidden(relay: RelayProcess, http: httpx.Client) -> None:
    a, b = new_account(relay, http), new_account(relay, http)
    ca = await SyncClient.connect(relay, a.access)
    answer = await ca.subscribe(f"user:{b.user_id}", Replica())
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.FORBIDDEN
    mine = await ca.subscribe(f"user:{a.user_id}", Replica())
    assert isinstance(mine, DocSynced)
    await ca.close()


async def test_booking_carried_by_another_user_is_accepted_and_stamped(
    relay: RelayProcess, http: httpx.Client
) -> None:
    customer, carrier = new_account(relay, http), new_account(relay, http)
    doc = f"bookings:{SHOP}:{(dt.date.today() + dt.timedelta(days=4)).isoformat()}"
    phone = Replica(customer.author.client_id())
    res, _ = customer.author.book(phone, doc, "s1", 1)  # offline, never connects
    tablet = Replica()
    tablet.apply_update(phone.encode_state())  # peer sync in the shop
    ct = await SyncClient.connect(relay, carrier.access)
    synced = await ct.subscribe(doc, tablet)
    assert isinstance(synced, DocSynced)
    answer = await ct.push(doc, tablet.diff(synced.relay_sv))
    assert isinstance(answer, Acked), answer
    stamp = await ct.next_event(StampReceived)
    assert [rid for _, rid in stamp.stamps] == [res.id]
    await ct.close()


async def test_shop_edit_needs_ownership(relay: RelayProcess, http: httpx.Client) -> None:
    owner, stranger = new_account(relay, http), new_account(relay, http)
    relay.cli_json("user", "grant", owner.email, "--owner", "shopx")
    await applied_by_relay(relay)  # the server picks up CLI changes by polling account events
    from tests.support.sync_helpers import login_device

    owner = login_device(relay, http, owner.email)  # a new certificate carries the grant
    doc = "shop:shopx"
    tmpl = SlotTemplate(
        id="s1", service="cut", start="10:00", duration=30, capacity=2, weekdays=None, active=True,
        hlc=stranger.author.hlc(),
    )  # fmt: skip
    cs = await SyncClient.connect(relay, stranger.access)
    rs = Replica(stranger.author.client_id())
    await cs.subscribe(doc, rs)
    answer = await cs.push(doc, stranger.author.put(rs, doc, [(tmpl, None)]))
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("forbidden")
    co = await SyncClient.connect(relay, owner.access)
    ro = Replica(owner.author.client_id())
    await co.subscribe(doc, ro)
    tmpl2 = SlotTemplate(
        id="s1", service="cut", start="10:00", duration=30, capacity=2, weekdays=None, active=True,
        hlc=owner.author.hlc(),
    )  # fmt: skip
    answer = await co.push(doc, owner.author.put(ro, doc, [(tmpl2, None)]))
    assert isinstance(answer, Acked), answer
    await cs.close()
    await co.close()


async def test_hostile_frames_close_only_the_offender(relay: RelayProcess, http: httpx.Client) -> None:
    assert relay.proc is not None
    rss_before = rss_bytes(relay.proc.pid)
    good = new_account(relay, http)
    cg = await SyncClient.connect(relay, good.access)
    rg = Replica(good.author.client_id())
    await cg.subscribe(DOC, rg)
    payloads: list[bytes | str] = [
        b"\x00\xff\xfe garbage",
        b"\x85\xa1v\x01",  # truncated msgpack map
        b"\xdb\xff\xff\xff\xff",  # str32 declaring 4 GiB
        "a text frame",
    ]
    for payload in payloads:
        bad = await SyncClient.connect(relay, good.access)
        await bad.send_raw(payload)
        code, _ = await asyncio.wait_for(bad.closed, 10)
        assert code in (CloseCode.PROTOCOL_VIOLATION, CloseCode.TOO_BIG), (payload, code)
        await bad.close()
    # Unauthenticated: garbage first message, and a client that never authenticates.
    anon = await SyncClient.connect(relay, None)
    await anon.send_raw(b"\x92\x01\x02")
    code, _ = await asyncio.wait_for(anon.closed, 10)
    assert code in (CloseCode.PROTOCOL_VIOLATION, CloseCode.AUTH_FAILED)
    silent = await SyncClient.connect(relay, None)
    code, _ = await asyncio.wait_for(silent.closed, 15)
    assert code == CloseCode.AUTH_TIMEOUT
    # Bad token.
    forged = await SyncClient.connect(relay, "not.a.jwt")
    code, _ = await asyncio.wait_for(forged.closed, 10)
    assert code == CloseCode.AUTH_FAILED
    # Many rounds of garbage from many connections: memory stays bounded.
    for _ in range(5):
        batch = [await SyncClient.connect(relay, good.access) for _ in range(20)]
        for bad in batch:
            await bad.send_raw(b"\xdd\xff\xff\xff\xff" + b"\x00" * 1000)
        for bad in batch:
            await asyncio.wait_for(bad.closed, 10)
            await bad.close()
    assert rss_bytes(relay.proc.pid) - rss_before < 64 * 1024 * 1024
    # The relay and the good client are fine.
    assert httpx.get(f"{relay.base_url}/healthz").status_code == 200
    _, update = good.author.book(rg, DOC, "s2", 1)
    assert isinstance(await cg.push(DOC, update), Acked)
    await cg.close()


async def test_oversized_frame_is_refused(relay: RelayProcess, http: httpx.Client) -> None:
    acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    try:
        await c.send_raw(b"\x00" * (2 * 1024 * 1024))
        code, _ = await asyncio.wait_for(c.closed, 10)
    except websockets.ConnectionClosed as exc:
        # The relay may refuse the frame and close before our send has finished writing it.
        code = exc.rcvd.code if exc.rcvd else None
    assert code == CloseCode.TOO_BIG
    assert httpx.get(f"{relay.base_url}/healthz").status_code == 200


async def test_flood_is_rate_limited(relay: RelayProcess, http: httpx.Client) -> None:
    acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    r = Replica(acct.author.client_id())
    await c.subscribe(DOC, r)
    _, update = acct.author.book(r, DOC, "s3", 1)
    limited = 0
    closed = False
    for _ in range(3000):
        if c.closed.done():
            closed = True
            break
        c._uid += 1
        c.proto.send_update(DOC, c._uid, update)
        try:
            await c.flush()
        except Exception:
            closed = True
            break
    await asyncio.sleep(1.0)
    while not c.events.empty():
        ev = c.events.get_nowait()
        if isinstance(ev, ErrorReceived) and ev.code == ErrorCode.RATE_LIMITED:
            limited += 1
    assert limited > 0 or closed or c.closed.done()
    assert httpx.get(f"{relay.base_url}/healthz").status_code == 200
    await c.close()


@pytest.mark.parametrize("store_flags", LONG_STORES, indirect=True)
def test_relay_restart_keeps_acked_bookings(tmp_path: Path, store_flags: list[str]) -> None:
    async def book_some(relay: RelayProcess, http: httpx.Client) -> tuple[Account, dict[str, bytes]]:
        acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        r = Replica(acct.author.client_id())
        await c.subscribe(DOC, r)
        for i in range(5):
            _, u = acct.author.book(r, DOC, f"s{i}", 1)
            assert isinstance(await c.push(DOC, u), Acked)
        await c.drain_into(r, quiet=0.3)
        await c.close()
        return acct, r.to_py()["reservations"]

    async def fetch(relay: RelayProcess, acct: Account) -> Replica:
        return await fetch_document(relay, acct.access, DOC)

    data = tmp_path / "data"
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    try:
        with relay.client() as http:
            acct, sent = asyncio.run(book_some(relay, http))
    finally:
        relay.proc.kill()  # type: ignore[union-attr]
        relay.proc.wait()  # type: ignore[union-attr]
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    try:
        again = asyncio.run(fetch(relay, acct))
        assert again.to_py()["reservations"] == sent
        assert len(read_bookings(again, DOC).stamps) == 5
    finally:
        assert relay.stop() == 0


async def test_metrics_cover_the_sync_path(relay: RelayProcess, http: httpx.Client) -> None:
    # Traffic of its own (a stamped booking, a forbidden shop edit), so the test holds alone and
    # in any order: pytest-xdist spreads this module's tests over workers, each with its relay.
    acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    replica = Replica(acct.author.client_id())
    await c.subscribe(DOC, replica)
    _, update = acct.author.book(replica, DOC, "metrics", 1)
    assert isinstance(await c.push(DOC, update), Acked)
    await c.next_event(StampReceived)
    shop, shop_replica = "shop:nobodys", Replica(acct.author.client_id())
    await c.subscribe(shop, shop_replica)
    tmpl = SlotTemplate(
        id="m1", service="cut", start="10:00", duration=30, capacity=1, weekdays=None, active=True,
        hlc=acct.author.hlc(),
    )  # fmt: skip
    refused = await c.push(shop, acct.author.put(shop_replica, shop, [(tmpl, None)]))
    assert isinstance(refused, ErrorReceived) and refused.reason.startswith("forbidden"), refused
    await c.close()
    text = httpx.get(f"{relay.base_url}/metrics").text
    for name in (
        "quickslot_connections",
        "quickslot_loaded_documents",
        "quickslot_updates_in_total",
        "quickslot_updates_out_total",
        "quickslot_sync_bytes_in_total",
        "quickslot_rejections_total",
        "quickslot_ack_latency_seconds_bucket",
        "quickslot_commit_latency_seconds_bucket",
        "quickslot_compactions",
        "quickslot_stamps_total",
        "quickslot_sync_auth_failures_total",
    ):
        assert name in text, name
    assert 'quickslot_rejections_total{reason="forbidden"}' in text


@pytest.mark.parametrize("store_flags", LONG_STORES, indirect=True)
def test_restored_relay_keeps_carried_stamps_and_numbers_after_them(
    tmp_path: Path, store_flags: list[str]
) -> None:
    """A relay restored from an older backup gets its lost stamps back from a client.

    Regression: it used to stamp the carried claims again, from its restored counter, writing a
    new stamp under a key a carried stamp held; every replica then refused the document.
    """
    data, backup = tmp_path / "data", tmp_path / "backup"

    async def book(relay: RelayProcess, acct: Account, replica: Replica, slots: list[str]) -> None:
        c = await SyncClient.connect(relay, acct.access)
        await c.subscribe(DOC, replica)
        for slot in slots:
            _, u = acct.author.book(replica, DOC, slot, 1)
            assert isinstance(await c.push(DOC, u), Acked)
            replica.apply_update((await c.next_event(StampReceived)).update)
        await c.close()

    async def restore_from(relay: RelayProcess, acct: Account, held: Replica) -> Replica:
        c = await SyncClient.connect(relay, acct.access)
        fresh = Replica()
        await c.subscribe(DOC, fresh)
        answer = await c.push(DOC, held.diff(fresh.state_vector()))
        assert isinstance(answer, Acked), answer
        _, u = acct.author.book(held, DOC, "s9", 1)
        assert isinstance(await c.push(DOC, u), Acked)
        await c.drain_into(held, quiet=0.3)
        await c.close()
        check = Replica()
        c = await SyncClient.connect(relay, acct.access)
        await c.subscribe(DOC, check)
        await c.close()
        return check

    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    with relay.client() as http:
        acct = new_account(relay, http)
    held = Replica(acct.author.client_id())
    asyncio.run(book(relay, acct, held, ["s1", "s2"]))
    assert relay.stop() == 0
    shutil.copytree(data, backup)
    copy_store(store_flags, "backup")
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    asyncio.run(book(relay, acct, held, ["s3", "s4", "s5"]))
    assert relay.stop() == 0
    shutil.rmtree(data)
    shutil.copytree(backup, data)
    copy_store(store_flags, "restore")
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    try:
        restored = asyncio.run(restore_from(relay, acct, held))
    finally:
        assert relay.stop() == 0
    state = read_bookings(restored, DOC)
    assert len(state.reservations) == 6
    by_no = {no: s.reservation for no, s in ((s.no, s) for s in state.stamps.values())}
    assert sorted(by_no) == [1, 2, 3, 4, 5, 6], by_no
    assert sorted(by_no.values()) == sorted(state.reservations)
    assert restored.to_py() == held.to_py()
