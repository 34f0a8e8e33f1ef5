"""The restore stamp hold (relay/sync/stamp_hold.py) against real relay processes, real files, real sockets.

The gap it closes: a relay restored from an *older* backup numbers stamps on after the highest
stamp it holds, while a client may still hold a later stamp of the lost period under the next
number. A new claim stamped first takes that number, and the client's copy is then refused as a
rewrite: a booking its holder saw as final is gone from the relay. With the hold, the restored
relay stamps nothing new for a while, the client's stamp comes back first, and the new claim is
stamped after it when the hold ends.

Each test starts its own relays on free loopback ports in its own directories. "Restored" is
what the operator does (docs/operations.md): the data directory copied back, its ``epoch`` file
deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdt_core.engine import Replica
from crdt_core.protocol import Acked, ErrorReceived, StampReceived, UpdateReceived
from crdt_core.reader import read_bookings
from crdt_core.verdict import ClaimState, Verdict, compute_verdict
from tests.relay.store_backends import LONG_STORES
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, store_args
from tests.support.sync_helpers import Account, SyncClient, fetch_document, new_account

DAY = (dt.date.today() + dt.timedelta(days=5)).isoformat()
DOC = f"bookings:holdshop:{DAY}"
SLOT = "cut-10"
CAPACITY = 3


def start(data: Path, *flags: str) -> RelayProcess:
    return RelayProcess(data, *GENEROUS_LIMITS, *flags).start()


def status(relay: RelayProcess) -> dict[str, Any]:
    hold = httpx.get(f"{relay.base_url}/api/v1/sync/status", timeout=5).json()["restore_stamp_hold"]
    assert isinstance(hold, dict)
    return hold


def verdict(replica: Replica) -> Verdict:
    return compute_verdict(read_bookings(replica, DOC), {SLOT: CAPACITY})


def stamps_of(replica: Replica) -> dict[int, str]:
    return {no: s.reservation for no, s in read_bookings(replica, DOC).stamps.items()}


def restore(backup: Path, data: Path) -> None:
    """The operator's restore: copy the backup back, delete its epoch (a new lineage)."""
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(backup, data)
    (data / "epoch").unlink()


async def fetch(relay: RelayProcess, acct: Account) -> Replica:
    return await fetch_document(relay, acct.access, DOC)


async def book_stamped(relay: RelayProcess, *accts: Account) -> tuple[list[str], Replica]:
    """Each account books one claim of the slot (one customer holds one active claim of a slot a
    day), acknowledged and stamped at once (no hold). Returns the claims and the last account's
    copy of the document, which holds them all."""
    ids = []
    replica = Replica()
    for acct in accts:
        replica = Replica(acct.author.client_id())
        c = await SyncClient.connect(relay, acct.access)
        await c.subscribe(DOC, replica)
        res, u = acct.author.book(replica, DOC, SLOT, 1)
        assert isinstance(await c.push(DOC, u), Acked)
        replica.apply_update((await c.next_event(StampReceived)).update)
        ids.append(res.id)
        await c.close()
    return ids, replica


async def stamp_into(c: SyncClient, replica: Replica, timeout: float = 10.0) -> StampReceived:
    """Apply what arrives until the next ``stamp`` (applied too), and return that."""
    deadline = time.monotonic() + timeout
    while True:
        event = await c.next_event((UpdateReceived, StampReceived), timeout=deadline - time.monotonic())
        replica.apply_update(event.update)
        if isinstance(event, StampReceived):
            return event


async def no_stamp_within(c: SyncClient, seconds: float) -> None:
    try:
        event = await c.next_event(StampReceived, timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"stamped during the hold: {event}")


def assert_capacity(v: Verdict) -> None:
    for slot in v.slots.values():
        held = sum(c.party for c in slot.claims if c.holds_seats)
        assert held <= slot.capacity, slot


# --- 1. the gap, and the hold closing it -------------------------------------------------------------


class Lost:
    """A relay data directory backed up after stamps 1-2, and a client holding stamp 3 of the
    period after the backup (which the backup lacks)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backup = root / "backup"
        self.x: Account
        self.y: Account
        self.x_state = b""
        self.c3 = ""


@pytest.fixture(scope="module")
def lost(tmp_path_factory: pytest.TempPathFactory) -> Lost:
    """Built once for the module's two scenarios, which each restore a copy of the backup."""
    return lose_a_period(tmp_path_factory.mktemp("lost"))


def lose_a_period(root: Path) -> Lost:
    lost = Lost(root)
    data = root / "data"
    relay = start(data)
    try:
        with relay.client() as http:
            earlier = new_account(relay, http), new_account(relay, http)
            lost.x, lost.y = new_account(relay, http), new_account(relay, http)
        asyncio.run(book_stamped(relay, *earlier))
    finally:
        assert relay.stop() == 0
    shutil.copytree(data, lost.backup)
    relay = start(data)
    try:
        (lost.c3,), x = asyncio.run(book_stamped(relay, lost.x))
    finally:
        assert relay.stop() == 0
    assert stamps_of(x)[3] == lost.c3
    lost.x_state = x.diff(b"\x00")
    return lost


def test_without_the_hold_a_new_claim_takes_a_lost_stamp_number_and_the_client_is_refused(
    tmp_path: Path, lost: Lost
) -> None:
    """The old failure, kept reproducible with ``--restore-stamp-hold 0``."""
    data = tmp_path / "restored"
    restore(lost.backup, data)
    relay = start(data, "--restore-stamp-hold", "0")

    async def scenario() -> tuple[Replica, Replica, str]:
        y = Replica(lost.y.author.client_id())
        cy = await SyncClient.connect(relay, lost.y.access)
        await cy.subscribe(DOC, y)
        c4, u = lost.y.author.book(y, DOC, SLOT, 1)
        assert isinstance(await cy.push(DOC, u), Acked)
        assert (await cy.next_event(StampReceived)).stamps == ((3, c4.id),)  # the lost number
        await cy.close()
        x = Replica()
        x.apply_update(lost.x_state)
        cx = await SyncClient.connect(relay, lost.x.access)
        relay_view = Replica()
        await cx.subscribe(DOC, relay_view)
        answer = await cx.push(DOC, x.diff(relay_view.state_vector()))
        if isinstance(answer, Acked):
            # Open bug: the restored relay drew the writer generation of the lost period (1 in
            # 64), so its stamp for c4 has the very Yjs id of X's stamp 3; the diff against its
            # state vector omits X's stamp, nothing conflicting is sent, and the copies diverge.
            pytest.xfail("restored relay reused the lost period's writer generation (docs/security.md)")
        assert isinstance(answer, ErrorReceived) and answer.reason.startswith("rewrite"), answer
        await cx.close()
        return x, await fetch(relay, lost.y), c4.id

    try:
        x, at_relay, c4 = asyncio.run(scenario())
        assert "restore noticed; stamp hold disabled" in relay.log_text()
    finally:
        assert relay.stop() == 0
    # X saw its claim stamped 3 and final; the relay gave 3 to another claim and never got X's.
    mine = verdict(x).claims[lost.c3]
    assert mine.stamp == 3 and mine.final and mine.state is ClaimState.CONFIRMED
    assert stamps_of(at_relay)[3] == c4 and lost.c3 not in read_bookings(at_relay, DOC).reservations


def test_with_the_hold_the_lost_stamp_comes_back_first_and_the_new_claim_is_stamped_after_it(
    tmp_path: Path, lost: Lost
) -> None:
    data = tmp_path / "restored"
    restore(lost.backup, data)
    relay = start(data, "--restore-stamp-hold", "4")

    async def scenario() -> tuple[Replica, Replica, str]:
        y = Replica(lost.y.author.client_id())
        cy = await SyncClient.connect(relay, lost.y.access)
        await cy.subscribe(DOC, y)
        c4, u = lost.y.author.book(y, DOC, SLOT, 1)
        assert isinstance(await cy.push(DOC, u), Acked)  # stored and acknowledged, not stamped
        await no_stamp_within(cy, 0.3)
        assert status(relay)["window_open"] and status(relay)["held_claims"] == 1
        x = Replica()
        x.apply_update(lost.x_state)
        cx = await SyncClient.connect(relay, lost.x.access)
        await cx.subscribe(DOC, x)  # brings Y's held claim
        answer = await cx.push(DOC, x.diff(b"\x00"))  # everything X holds: stamp 3 comes back
        assert isinstance(answer, Acked), answer
        # The window closes: both subscribers get the held claim's stamp, after X's.
        for c, replica in ((cy, y), (cx, x)):
            event = await stamp_into(c, replica)
            assert event.stamps == ((4, c4.id),), event
        await cy.drain_into(y, quiet=0.2)
        await cx.drain_into(x, quiet=0.2)
        await cy.close()
        await cx.close()
        return x, y, c4.id

    try:
        x, y, c4 = asyncio.run(scenario())
        hold = status(relay)
        assert not hold["active"] and hold["stamped_claims"] == 1, hold
        metrics = httpx.get(f"{relay.base_url}/metrics", timeout=5).text
        assert "quickslot_restore_stamp_hold_active 0" in metrics
        assert "quickslot_restore_held_claims_stamped 1" in metrics
        at_relay = asyncio.run(fetch(relay, lost.y))
        text = relay.log_text()
        assert '"restore stamp hold started"' in text or "restore stamp hold started" in text
        assert "restore stamp hold ended" in text
    finally:
        assert relay.stop() == 0
    assert stamps_of(at_relay) == {1: stamps_of(x)[1], 2: stamps_of(x)[2], 3: lost.c3, 4: c4}
    assert x.to_py() == y.to_py() == at_relay.to_py()
    verdicts = [verdict(r) for r in (x, y, at_relay)]
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert_capacity(verdicts[0])
    mine, theirs = verdicts[0].claims[lost.c3], verdicts[0].claims[c4]
    assert mine.state is ClaimState.CONFIRMED and mine.final and mine.stamp == 3
    assert theirs.state is ClaimState.WAITLISTED and theirs.stamp == 4


# --- 2. held claims are stamped once, gap-free, when the window ends ----------------------------------


@pytest.fixture(params=LONG_STORES)
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    """Serve flags of a fresh store (``[]``: SQLite in the data directory)."""
    return store_args(request, request.param)


def served_then_restored(
    root: Path, hold: str, store_flags: list[str], customers: int
) -> tuple[RelayProcess, list[Account], list[str]]:
    """A relay that served two stamps, "restored" (a new epoch: the ``epoch`` file deleted, or on
    PostgreSQL its ``relay_meta`` row) and started with ``hold``. Returns the relay, ``customers``
    accounts with no claim yet (one claim of the slot each) and the flags that start it again."""
    data = root / "data"
    relay = start(data, *store_flags)
    try:
        with relay.client() as http:
            accounts = [new_account(relay, http) for _ in range(customers + 2)]
        asyncio.run(book_stamped(relay, *accounts[:2]))
    finally:
        assert relay.stop() == 0
    if store_flags:
        relay.sql("DELETE FROM relay_meta WHERE key = 'epoch'")
    else:
        (data / "epoch").unlink()
    flags = [*store_flags, "--restore-stamp-hold", hold]
    return start(data, *flags), accounts[2:], flags


class Customer:
    """One customer's device: its copy of the document and a connection subscribed to it."""

    def __init__(self, acct: Account, conn: SyncClient, replica: Replica) -> None:
        self.acct, self.conn, self.replica = acct, conn, replica

    @classmethod
    async def open(cls, relay: RelayProcess, acct: Account) -> Customer:
        replica = Replica(acct.author.client_id())
        conn = await SyncClient.connect(relay, acct.access)
        await conn.subscribe(DOC, replica)
        return cls(acct, conn, replica)

    def write(self) -> tuple[str, bytes]:
        """Book the slot locally (not sent): the claim's id and its update."""
        res, u = self.acct.author.book(self.replica, DOC, SLOT, 1)
        return res.id, u

    async def send(self, update: bytes) -> None:
        assert isinstance(await self.conn.push(DOC, update), Acked)


def test_held_claims_are_stamped_once_in_stored_order_when_the_window_ends(
    tmp_path: Path, store_flags: list[str]
) -> None:
    relay, accounts, flags = served_then_restored(tmp_path, "4", store_flags, 5)

    async def scenario() -> tuple[list[str], tuple[tuple[int, str], ...], str]:
        a1, a2, b1, b2, later = [await Customer.open(relay, acct) for acct in accounts]
        # B1's claim was made offline before A1's and A2's: an earlier HLC, stored after them.
        # The stored order (A1, A2, B1, B2) is not the tentative HLC order (B1, A1, A2, B2).
        offline, offline_update = b1.write()
        await asyncio.sleep(0.01)
        order = []
        for online in (a1, a2):
            rid, u = online.write()
            await online.send(u)
            order.append(rid)
        await b1.send(offline_update)
        order.append(offline)
        rid, u = b2.write()
        await b2.send(u)
        order.append(rid)
        tentative = [
            c.reservation_id
            for c in verdict(await fetch(relay, a1.acct)).slots[SLOT].claims
            if c.stamp is None
        ]
        assert tentative != order and sorted(tentative) == sorted(order), (tentative, order)
        await no_stamp_within(a1.conn, 0.2)
        assert status(relay)["held_claims"] == 4
        event = await b2.conn.next_event(StampReceived, timeout=10)
        # After the hold a claim is stamped at once, after the held ones.
        await later.conn.drain_into(later.replica, quiet=0.2)
        late, u = later.write()
        await later.send(u)
        assert (await later.conn.next_event(StampReceived)).stamps == ((7, late),)
        for customer in (a1, a2, b1, b2, later):
            await customer.conn.close()
        return order, event.stamps, late

    try:
        order, stamped, late = asyncio.run(scenario())
        assert stamped == tuple((3 + i, rid) for i, rid in enumerate(order)), (stamped, order)
        assert status(relay)["stamped_claims"] == 4
    finally:
        assert relay.stop() == 0
    # Exactly once, gap-free, and nothing more after a restart (the hold is over for good).
    relay = start(tmp_path / "data", *flags)
    try:
        assert not status(relay)["active"]
        time.sleep(0.3)
        replica = asyncio.run(fetch(relay, accounts[0]))
    finally:
        assert relay.stop() == 0
    stamps = stamps_of(replica)
    assert sorted(stamps) == list(range(1, 8)), stamps
    assert sorted(stamps.values()) == sorted(read_bookings(replica, DOC).reservations)
    assert [stamps[n] for n in range(3, 8)] == [*order, late]
    assert_capacity(verdict(replica))


# --- 3. a relay killed during the hold resumes it ----------------------------------------------------


def kill(relay: RelayProcess) -> None:
    assert relay.proc is not None
    os.kill(relay.proc.pid, signal.SIGKILL)
    relay.proc.wait()


async def book_held(relay: RelayProcess, acct: Account, replica: Replica) -> str:
    """Book one claim during the hold: acknowledged, not stamped."""
    assert status(relay)["window_open"]
    c = await SyncClient.connect(relay, acct.access)
    await c.subscribe(DOC, replica)
    res, u = acct.author.book(replica, DOC, SLOT, 1)
    assert isinstance(await c.push(DOC, u), Acked)
    await no_stamp_within(c, 0.1)
    await c.close()
    return res.id


def wait_hold_over(relay: RelayProcess, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (hold := status(relay))["active"]:
        assert time.monotonic() < deadline, hold
        time.sleep(0.05)
    return hold


def test_a_relay_killed_during_the_hold_resumes_it_and_stamps_what_waited(
    tmp_path: Path, store_flags: list[str]
) -> None:
    """Killed during a long hold, the relay comes back in the same hold (same end, claims still
    waiting, new ones waiting too); restarted with ``--restore-stamp-hold 0`` it ends the hold at
    once and stamps both, in the order they were stored. (That last start takes the path of a
    window that closed while the relay was down: an end already past, swept at start.)"""
    relay, (a, b), flags = served_then_restored(tmp_path, "120", store_flags, 2)
    try:
        until = status(relay)["until"]
        first = asyncio.run(book_held(relay, a, Replica(a.author.client_id())))
        kill(relay)
        relay = start(tmp_path / "data", *flags)
        hold = status(relay)
        assert hold["active"] and hold["window_open"] and hold["until"] == until, (hold, until)
        assert "restore stamp hold resumed" in relay.log_text()
        second = asyncio.run(book_held(relay, b, Replica(b.author.client_id())))
        kill(relay)
        relay = start(tmp_path / "data", *flags[:-1], "0")  # the hold flag, now 0
        hold = wait_hold_over(relay)
        assert hold["stamped_claims"] == 2, hold
        stamps = stamps_of(asyncio.run(fetch(relay, a)))
    finally:
        assert relay.stop() == 0
    assert stamps == {1: stamps[1], 2: stamps[2], 3: first, 4: second}, stamps


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_hold_is_refused_at_start(tmp_path: Path, value: str) -> None:
    relay = RelayProcess(tmp_path / "data", "--restore-stamp-hold", value)
    with pytest.raises(RuntimeError):
        relay.start(timeout=10)
    assert "restore-stamp-hold" in relay.log_text()
