"""Reliability of the sync engine against REAL relay processes, real SQLite profiles, real sockets.

What each test proves, and why it needs the real parts:

* a client process SIGKILLed at random moments while flushing its outbox loses nothing and makes
  the relay store nothing twice (the relay is the only place a duplicate stamp could be born);
* a relay restored from a backup (a new epoch, the lost period's bookings gone) gets back what it
  lost from its clients, with the same stamps, and keeps numbering after them;
* three replicas driven through a random schedule (book, cancel, staff decisions, browsing,
  going offline, a live ``run()`` loop) converge to identical documents and verdicts;
* a refused update no longer poisons the catch-up diff, and the certificate it carried reaches
  the relay alone so the entries written after it still go through;
* the relay's SIGTERM close (1001) is reported to the app and the loop reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import client.local.client as local_mod
from client.local.client import ClientError, LocalClient
from client.local.events import ClientEvent, RelayReachable, RelayUnreachable
from client.storage.secrets import SecretStore
from client.storage.store import DB_FILE
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from crdt_core.clientids import client_id_for
from crdt_core.engine import EMPTY_UPDATE, Replica
from crdt_core.reader import read_bookings
from crdt_core.validation import Rights
from crdt_core.verdict import ClaimState
from crdt_core.yupdate import decode_state_vector, decode_update
from tests.client.test_cli import Cli
from tests.client.test_sync_relay import accounts, drain, open_profile, open_shop, service
from tests.support.clients import (
    DAY as OFFLINE_DAY,
    OPENED,
    SHOP as OFFLINE_SHOP,
    close_all,
    open_profile as offline_profile,
)
from tests.support.crdt_factory import World
from tests.support.relay_process import REPO, FixedPortRelay, _env, serving_fixed_port_relay
from tests.support.sync_helpers import seed_categories

FIRST_DAY = _dt.date.today() + _dt.timedelta(days=40)
SLOT = "cut-10"


def day(offset: int) -> str:
    return (FIRST_DAY + _dt.timedelta(days=offset)).isoformat()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("reliability"))


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


def fast_service(local: LocalClient, relay: FixedPortRelay, auth: AuthClient) -> SyncService:
    return SyncService(
        local,
        relay.base_url,
        auth=auth,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        retry_initial_s=0.1,
        poll_interval_s=0.05,
    )


async def bookings_of(local: LocalClient, doc: str) -> Any:
    whole = Replica()
    whole.apply_update(await local.diff(doc, b"\x00"))
    return read_bookings(whole, doc)


async def wait_for_event(
    local: LocalClient, predicate: Any, timeout: float = 15.0, seen: list[ClientEvent] | None = None
) -> ClientEvent:
    """The next event satisfying ``predicate`` (others are kept in ``seen``); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching event in {timeout}s; saw {seen}")
        event = await asyncio.wait_for(local.events.get(), remaining)
        if predicate(event):
            return event
        if seen is not None:
            seen.append(event)


# --- 1. SIGKILL in the middle of a flush -----------------------------------------------------------


def relay_db(relay: FixedPortRelay) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{relay.data_dir / 'relay.sqlite3'}?mode=ro", uri=True, timeout=10)


def spawn_sync(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = _env()
    env["QUICKSLOT_SECRETS"] = "file"
    env.pop("QUICKSLOT_HOME", None)
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "client.cli", "--home", str(home), "--json", "sync"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def kill_mid_flush(
    proc: subprocess.Popen[bytes], profile_db: Path, mode: str, start: int, rng: random.Random
) -> tuple[str, int]:
    """SIGKILL the sync process at a random moment; returns (what happened, pending at the kill).

    ``time`` kills after a random delay (it may land in start-up, the handshake or the catch-up);
    ``count`` kills once the acks have brought the outbox down past a random threshold, so it lands
    while acks are being received and applied.
    """
    started = time.monotonic()
    fire_at = started + rng.uniform(0.3, 1.6)
    threshold = start - rng.randint(1, max(1, start - 1))
    with contextlib.closing(sqlite3.connect(f"file:{profile_db}?mode=ro", uri=True, timeout=10)) as outbox:
        while time.monotonic() - started < 30:
            row = outbox.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()
            pending = int(row[0])
            if proc.poll() is not None:
                return "finished", pending
            if (mode == "count" and pending <= threshold) or (mode == "time" and time.monotonic() >= fire_at):
                time.sleep(rng.uniform(0, 0.004))
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return ("killed" if proc.returncode == -signal.SIGKILL else "finished"), pending
            time.sleep(0.001)
    proc.kill()
    proc.wait(10)
    raise AssertionError("the sync process made no progress in 30 s")


async def test_sigkill_during_outbox_flush_loses_nothing_and_duplicates_nothing(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "killshop"
    days = [day(0), day(1)]
    people = await accounts(relay, tmp_path, ["owner"], {"owner": shop})
    owner, owner_auth = people["owner"]
    await open_shop(owner, owner_auth, relay, shop, capacity=10_000)
    kim_cli = Cli(tmp_path / "kim")
    await asyncio.to_thread(kim_cli.register_and_login, relay.base_url)
    kim_home = kim_cli.home
    rng = random.Random(5_2027)

    booked: dict[str, set[str]] = {d: set() for d in days}
    outcomes: list[tuple[str, int, int]] = []
    log = tmp_path / "sync-children.log"
    for round_no, mode in enumerate(("time", "count", "count", "time", "count")):
        kim = await open_profile(kim_home)
        if round_no == 0:
            await kim.follow(shop)
            await service(kim, relay).sync_once()
        for i in range(24):  # queued offline: this round's flush has real work to do
            d = days[i % 2]
            booked[d].add((await kim.book(shop, d, SLOT)).reservation_id)
        start = (await kim.outbox_counts()).pending
        await kim.close()
        OPENED.remove(kim)
        proc = spawn_sync(kim_home, log)
        what, at = await asyncio.to_thread(kill_mid_flush, proc, kim_home / DB_FILE, mode, start, rng)
        outcomes.append((what, start, at))

    # Some kills really landed mid-flush: acks had been applied for part of the queue only.
    assert any(what == "killed" and 0 < at < start for what, start, at in outcomes), outcomes
    final = await asyncio.to_thread(kim_cli.json, "sync", "sync")
    assert final["pending"] == 0 and final["rejected"] == [], final

    kim = await open_profile(kim_home)
    counts = await kim.outbox_counts()
    assert (counts.pending, counts.rejected) == (0, 0)
    for d in days:
        doc = f"bookings:{shop}:{d}"
        await owner.subscribe(doc)
    await service(owner, relay, owner_auth).sync_once()
    await service(kim, relay).sync_once()  # any stamp that trailed the last ack
    with contextlib.closing(relay_db(relay)) as db:
        for d in days:
            doc = f"bookings:{shop}:{d}"
            seen = await bookings_of(owner, doc)
            assert set(seen.reservations) == booked[d]  # every booking, once (keys are unique)
            stamped = [s.reservation for s in seen.stamps.values()]
            assert sorted(stamped) == sorted(booked[d])  # one stamp each, none for a duplicate
            assert sorted(seen.stamps) == list(range(1, len(booked[d]) + 1))  # gap-free
            rows = await owner.day_reservations(shop, d)
            assert all(r.final and r.state is ClaimState.CONFIRMED for r in rows)
            assert await kim.verdict(shop, d) == await owner.verdict(shop, d)
            assert await kim.document(doc) == await owner.document(doc)
            # The relay handed out exactly one stamp number per booking and stored no update twice.
            (next_stamp,) = db.execute("SELECT next_stamp FROM doc_head WHERE doc_id = ?", (doc,)).fetchone()
            assert next_stamp == len(booked[d]) + 1
            total, distinct = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT data) FROM doc_log WHERE doc_id = ?", (doc,)
            ).fetchone()
            assert total == distinct


# --- 2. the relay restored from a backup: a new epoch -----------------------------------------------
#
# The realistic reset: the relay's disk is lost and the operator restores the data directory from
# the last backup (docs/relay.md: a copy taken with the relay stopped), which predates the latest
# changes, and removes ``DIR/epoch`` so the relay starts a new lineage (a new epoch). Why keep the
# accounts and ``keys/``: a relay that loses its signing keys invalidates every certificate, stamp
# and token it ever issued, so nothing signed under them could be restored by anyone; keys and
# accounts come back with the backup, documents come back from the clients.


@dataclass
class Restored:
    """A relay restored from a backup that lacks a shop edit, a new slot and a day of bookings."""

    relay: FixedPortRelay
    shop: str
    day: str
    homes: dict[str, Path]
    first_epoch: str
    stamps: dict[str, int | None]
    """Each lost reservation's stamp, as the clients held it before the reset."""
    cancelled: str


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    root = tmp_path_factory.mktemp("restore")
    shop, d = "epochshop", day(3)
    # A short restore stamp hold (relay/sync/stamp_hold.py; 600 s by default): claims made right after
    # the restore wait for it, as they would in production.
    relay = FixedPortRelay(root / "relay-data", "--restore-stamp-hold", "1")
    relay.start()

    async def before_and_after() -> Restored:
        names = ["owner", "ann", "ben", "cal"]
        people = await accounts(relay, root, names, {"owner": shop})
        owner, owner_auth = people["owner"]
        ann, ben = people["ann"][0], people["ben"][0]
        await open_shop(owner, owner_auth, relay, shop, capacity=2)
        syncs = {name: fast_service(local, relay, auth) for name, (local, auth) in people.items()}
        for name in ("ann", "ben", "cal"):
            await people[name][0].follow(shop)
            await syncs[name].sync_once()
        first_epoch = (await syncs["owner"].sync_once()).epoch

        relay.stop()
        shutil.copytree(relay.data_dir, root / "backup")
        relay.start()
        # The lost period: a new slot, a profile edit, bookings and a cancellation, all acked.
        await owner.add_slot(shop, "cut-11", service="dye", start="11:00", duration=60, capacity=1)
        await owner.edit_shop(shop, description="restored from clients")
        assert (await syncs["owner"].sync_once()).pending == 0
        await ann.book(shop, d, SLOT)
        a2 = await ann.book(shop, d, SLOT)
        await syncs["ann"].sync_once()
        await ann.cancel(a2.reservation_id)
        await syncs["ann"].sync_once()
        await ben.book(shop, d, SLOT)
        await syncs["ben"].sync_once()  # ben now holds ann's records too; ann lacks ben's stamp
        stamps = {r.reservation_id: r.stamp for r in await ben.day_reservations(shop, d)}
        assert sorted(s for s in stamps.values() if s is not None) == [1, 2, 3], stamps

        relay.stop()
        shutil.rmtree(relay.data_dir)
        shutil.copytree(root / "backup", relay.data_dir)
        (relay.data_dir / "epoch").unlink()
        relay.start()
        await close_all()
        return Restored(relay, shop, d, {n: root / n for n in names}, first_epoch, stamps, a2.reservation_id)

    try:
        yield asyncio.run(before_and_after())
    finally:
        relay.stop()


async def stamp_hold_over(relay: FixedPortRelay, timeout: float = 15.0) -> None:
    """Wait until the restored relay's stamp hold has ended (``/api/v1/sync/status``)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=relay.base_url, timeout=5) as http:
        while (await http.get("/api/v1/sync/status")).json()["restore_stamp_hold"]["active"]:
            assert time.monotonic() < deadline, "the restore stamp hold did not end"
            await asyncio.sleep(0.1)


async def reopen(world: Restored, name: str) -> tuple[LocalClient, SyncService]:
    local = await open_profile(world.homes[name])
    return local, fast_service(local, world.relay, AuthClient(local, world.relay.base_url))


async def test_relay_restored_from_backup_gets_back_lost_shop_changes(restored: Restored) -> None:
    shop = restored.shop
    owner, owner_sync = await reopen(restored, "owner")
    cal, cal_sync = await reopen(restored, "cal")
    assert await owner.store.last_seqs(owner_sync.relay_url)  # cursors of the old lineage
    summary = await owner_sync.sync_once()  # notices the new epoch, sends what the relay lacks
    assert summary.epoch_changed and summary.epoch != restored.first_epoch, summary
    assert not summary.repair_refused and not summary.rejected and summary.pending == 0, summary
    assert await owner.store.get_epoch(owner_sync.relay_url) == summary.epoch
    cal_summary = await cal_sync.sync_once()
    assert cal_summary.epoch_changed and not cal_summary.repair_refused, cal_summary
    detail = await cal.shop(shop, subscribe=False)
    assert detail is not None and detail.profile is not None
    assert {s.slot_id for s in detail.slots} == {SLOT, "cut-11"}
    assert detail.profile.description == "restored from clients"
    assert await cal.document(f"shop:{shop}") == await owner.document(f"shop:{shop}")
    assert not (await owner_sync.sync_once()).epoch_changed  # noticed once


async def test_relay_restored_from_backup_gets_back_lost_bookings(restored: Restored) -> None:
    shop, d = restored.shop, restored.day
    doc = f"bookings:{shop}:{d}"
    (ann, ann_sync), (ben, ben_sync) = await reopen(restored, "ann"), await reopen(restored, "ben")
    cal, cal_sync = await reopen(restored, "cal")
    for svc in (ann_sync, ben_sync):  # each sends what it holds and the relay lacks
        summary = await svc.sync_once()
        assert summary.epoch_changed and not summary.repair_refused and not summary.rejected, summary
    await cal.subscribe(doc)
    await cal_sync.sync_once()
    seen = {r.reservation_id: r for r in await cal.day_reservations(shop, d)}
    assert {rid: r.stamp for rid, r in seen.items()} == restored.stamps  # the same stamps, restored
    assert seen[restored.cancelled].state is ClaimState.CANCELLED
    # New claims after the restore are numbered after the restored stamps, never on top of them.
    c1 = await cal.book(shop, d, SLOT)
    await cal_sync.sync_once()
    await stamp_hold_over(restored.relay)  # cal's claim may have waited for it, unstamped
    for svc in (cal_sync, ann_sync, ben_sync, cal_sync):
        await svc.sync_once()
    mine = await cal.reservation(c1.reservation_id)
    assert mine is not None and mine.stamp == 4, mine
    for local in (ann, ben):
        assert await local.verdict(shop, d) == await cal.verdict(shop, d)
        assert await local.document(doc) == await cal.document(doc)


# --- 3. three replicas, random operations and connectivity, converge ---------------------------------

CUSTOMERS = ("c1", "c2")


@dataclass
class Replicas:
    """Three logged-in profiles (an owner who also books, two customers) against one relay."""

    relay: FixedPortRelay
    shop: str
    homes: dict[str, Path]
    emails: dict[str, str] = field(default_factory=dict)
    next_day: int = 10


@pytest.fixture(scope="module")
def replicas(relay: FixedPortRelay, tmp_path_factory: pytest.TempPathFactory) -> Replicas:
    """Accounts and the shop, set up once; each schedule opens the profiles again (any event loop)."""
    shop = "convshop"
    root = tmp_path_factory.mktemp("replicas")

    async def setup() -> Replicas:
        people = await accounts(relay, root, ["owner", *CUSTOMERS], {"owner": shop})
        owner, owner_auth = people["owner"]
        await seed_categories(relay, "hair")  # a shop names a category the catalogue defines
        await owner.create_shop(shop, name="Conv", category="hair", location="X", lat=1.0, lon=2.0)
        await owner.add_slot(shop, "s2", service="cut", start="09:00", duration=30, capacity=2)
        await owner.add_slot(  # a customer may book it many times a day: the schedule's volume
            shop, "s3", service="dye", start="10:00", duration=60, capacity=3, per_customer=100
        )
        assert (await service(owner, relay, owner_auth).sync_once()).pending == 0
        for name in CUSTOMERS:
            local, auth = people[name]
            await local.follow(shop)
            await service(local, relay, auth).sync_once()
        await close_all()
        return Replicas(relay, shop, {name: root / name for name in ("owner", *CUSTOMERS)})

    return asyncio.run(setup())


@dataclass
class _Actor:
    name: str
    local: LocalClient
    svc: SyncService
    online: bool = True
    live: asyncio.Task[None] | None = None
    mine: list[str] = field(default_factory=list)
    holds: dict[str, str] = field(default_factory=dict)
    """Day -> the actor's booking of the one-per-customer slot (``ONCE``) it has not cancelled."""


Op = tuple[str, int, int, int]
"""(kind, actor index, a, b): the meaning of a and b depends on the kind."""

KINDS = ("book", "book", "book", "cancel", "staff", "browse", "toggle", "sync", "sync")
ONCE = "s2"
"""The slot one customer may book once a day (``per_customer`` absent); ``s3`` allows 100."""


async def run_schedule(world: Replicas, ops: list[Op], days: list[str]) -> dict[str, int]:
    """Play ``ops`` against three replicas, then bring everyone online and check convergence.

    Actor 0 (a customer) syncs through a live ``run()`` loop while online; the others with
    ``sync_once``. Returns counts of what happened (for the caller's sanity checks).
    """
    shop = world.shop
    actors: list[_Actor] = []
    for name in (*CUSTOMERS, "owner"):
        home = world.homes[name]
        local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
        svc = SyncService(
            local, world.relay.base_url, backoff_initial_s=0.05, backoff_max_s=0.4, retry_initial_s=0.1,
            poll_interval_s=0.05,
        )  # fmt: skip
        actors.append(_Actor(name, local, svc))
    stats = {"book": 0, "cancel": 0, "staff": 0, "sync": 0, "toggle": 0, "browse": 0}
    slots = ("s2", "s3")

    async def set_live(actor: _Actor, on: bool) -> None:
        if on and actor.live is None:
            actor.live = asyncio.create_task(actor.svc.run())
        elif not on and actor.live is not None:
            actor.svc.stop()
            await asyncio.wait_for(actor.live, 15)
            actor.live = None

    try:
        await set_live(actors[0], True)
        for kind, who, a, b in ops:
            actor = actors[who % len(actors)]
            try:
                if kind == "book":
                    d, slot = days[a % len(days)], slots[b % 2]
                    if slot == ONCE and d in actor.holds:  # the relay would refuse it: duplicate_booking
                        slot = "s3"  # a customer who knows its own bookings picks another slot
                    row = await actor.local.book(shop, d, slot, party=1 + b % 2)
                    actor.mine.append(row.reservation_id)
                    if slot == ONCE:
                        actor.holds[d] = row.reservation_id
                elif kind == "cancel" and actor.mine:
                    rid = actor.mine.pop(a % len(actor.mine))
                    await actor.local.cancel(rid)
                    # booking the slot again is fine now (the cancel reaches the relay first, or
                    # with the new booking in one bundle)
                    actor.holds = {d: held for d, held in actor.holds.items() if held != rid}
                elif kind == "staff":
                    staff = actors[2]
                    rows = await staff.local.day_reservations(shop, days[a % len(days)])
                    open_rows = [r for r in rows if r.state in (ClaimState.CONFIRMED, ClaimState.WAITLISTED)]
                    if not open_rows:
                        continue
                    target = open_rows[b % len(open_rows)].reservation_id
                    await (staff.local.confirm(target) if b % 3 else staff.local.decline(target, "full"))
                    actor = staff
                elif kind == "browse":
                    await actor.local.slots(shop, days[a % len(days)])
                elif kind == "toggle":
                    actor.online = not actor.online
                    if actor is actors[0]:
                        await set_live(actor, actor.online)
                elif kind == "sync" and actor.online and actor.live is None:
                    await actor.svc.sync_once(settle_s=0.05)
                else:
                    continue
            except ClientError:
                continue  # e.g. cancelling what is already cancelled: refused locally, nothing queued
            stats[kind] += 1
            if actor.live is not None:
                actor.svc.wake()

        # Everyone online; converge: a few rounds until every replica holds the same state.
        await set_live(actors[0], False)
        for actor in actors:
            for d in days:
                await actor.local.slots(shop, d)  # every day subscribed everywhere
        docs = ["catalog", f"shop:{shop}", *(f"bookings:{shop}:{d}" for d in days)]
        for _round in range(4):
            for actor in actors:
                summary = await actor.svc.sync_once(settle_s=0.1)
                assert not summary.rejected and not summary.repair_refused, (actor.name, summary)
            vectors = [
                [decode_state_vector(await actor.local.state_vector(doc)) for doc in docs] for actor in actors
            ]
            if vectors[0] == vectors[1] == vectors[2]:
                break
        else:
            raise AssertionError("replicas did not converge in 4 rounds")

        for doc in docs:
            contents = [await actor.local.document(doc) for actor in actors]
            assert contents[0] == contents[1] == contents[2], doc
        for d in days:
            verdicts = [await actor.local.verdict(shop, d) for actor in actors]
            assert verdicts[0] == verdicts[1] == verdicts[2], d
            projected = [
                [
                    (r.reservation_id, r.state, r.stamp, r.final)
                    for r in await a.local.day_reservations(shop, d)
                ]
                for a in actors
            ]
            assert projected[0] == projected[1] == projected[2], d
            for slot_id, seats in verdicts[0].slots.items():
                assert seats.seats_taken <= seats.capacity, (d, slot_id, seats)
            state = await bookings_of(actors[0].local, f"bookings:{shop}:{d}")
            assert sorted(s.reservation for s in state.stamps.values()) == sorted(state.reservations)
            assert sorted(state.stamps) == list(range(1, len(state.reservations) + 1))
        for actor in actors:
            counts = await actor.local.outbox_counts()
            assert (counts.pending, counts.rejected) == (0, 0), actor.name
        return stats
    finally:
        for actor in actors:
            if actor.live is not None:
                actor.svc.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(actor.live, 15)
            await actor.local.close()


def random_ops(rng: random.Random, count: int) -> list[Op]:
    return [(rng.choice(KINDS), rng.randrange(3), rng.randrange(8), rng.randrange(8)) for _ in range(count)]


async def test_three_replicas_converge_under_a_random_schedule(replicas: Replicas) -> None:
    days = [day(replicas.next_day), day(replicas.next_day + 1)]
    replicas.next_day += 2
    stats = await run_schedule(replicas, random_ops(random.Random(20270311), 300), days)
    assert stats["book"] >= 60 and stats["sync"] >= 20 and stats["toggle"] >= 10, stats
    assert stats["cancel"] >= 5 and stats["staff"] >= 5, stats


@settings(
    max_examples=max(3, settings().max_examples // 10),  # ci: 6, thorough: 200
    deadline=None,
    # The autouse fixture only closes what a failing test left open; nothing per example.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.integers(0, 2),
            st.integers(0, 7),
            st.integers(0, 7),
        ),
        min_size=5,
        max_size=40,
    )
)
def test_any_schedule_converges(replicas: Replicas, ops: list[Op]) -> None:
    days = [day(replicas.next_day), day(replicas.next_day + 1)]
    replicas.next_day += 2
    asyncio.run(run_schedule(replicas, ops, days))


# --- 5. a refused update does not poison later syncs --------------------------------------------


async def reopened(local: LocalClient, world: World) -> LocalClient:
    """Close a profile and open it again (a new process, as far as the profile can tell)."""
    await local.close()
    return await offline_profile(local.profile_dir, world)


async def test_a_rebuild_rewrites_the_pending_writes_under_the_next_client_id(tmp_path: Path) -> None:
    """Offline: what a refusal does to the writes queued behind it (no relay needed).

    The relay holds nothing of the day yet (its whole state is the empty update), refused the first
    booking, and the second continues the same client's clock: the rebuild drops the first and
    re-writes the second, byte for byte at the same key, under generation 1 with the certificate.
    """
    world = World()
    alice = await offline_profile(tmp_path / "alice", world, "u-alice")
    owner = await offline_profile(tmp_path / "owner", world, "u-owner", owner_of=[OFFLINE_SHOP])
    await owner.create_shop(OFFLINE_SHOP, name="S", category="hair", location="L", lat=0.0, lon=0.0)
    await owner.add_slot(OFFLINE_SHOP, SLOT, service="cut", start="10:00", duration=30, capacity=3)
    for entry in await owner.pending_entries():
        await alice.apply_remote(entry.doc_id, entry.payload)
    await alice.book(OFFLINE_SHOP, OFFLINE_DAY, SLOT)
    await alice.book(OFFLINE_SHOP, OFFLINE_DAY, SLOT)
    first, second = [e for e in await alice.pending_entries() if e.doc_id.startswith("bookings:")]
    doc = first.doc_id
    assert alice.identity is not None
    cert = alice.identity.device.cert_id
    assert await alice.writer_id(doc) == client_id_for(cert, 0)
    assert set(decode_update(second.payload).ranges) == {client_id_for(cert, 0)}  # one id, both writes

    await alice.mark_rejected(first.id, "rejected", "forbidden: test")
    # The pending rebuild outlives the process, and the rebuilt document is what is on disk.
    alice = await reopened(alice, world)
    assert await alice.pending_rebuilds() == {doc: "refused write: rejected: forbidden: test"}
    result = await alice.rebuild_from_relay(doc, EMPTY_UPDATE)
    assert result.generation == 1 and result.rewritten == 1 and await alice.pending_rebuilds() == {}
    alice = await reopened(alice, world)
    assert await alice.writer_id(doc) == client_id_for(cert, 1)
    (again,) = [e for e in await alice.pending_entries() if e.doc_id == doc]
    assert again.id == result.entries[0] and again.entity_id == second.entity_id
    rewritten = decode_update(again.payload)
    assert rewritten.ranges == {client_id_for(cert, 1): (0, 2)}  # certificate, then the booking
    old = {(i.root, i.key, i.value) for i in decode_update(second.payload).inserts}
    assert old <= {(i.root, i.key, i.value) for i in rewritten.inserts}
    held = Replica()
    held.apply_update(await alice.diff(doc, b"\x00"))
    state = read_bookings(held, doc)
    assert set(state.reservations) == {second.entity_id}
    (refused,) = await alice.rejected_entries()
    assert refused.id == first.id
    row = await alice.reservation(first.entity_id)
    assert row is not None and row.rejected_code == "rejected" and not row.holds_seats
    # The next write continues generation 1's clock, in the same document.
    third = await alice.book(OFFLINE_SHOP, OFFLINE_DAY, SLOT)
    (last,) = [e for e in await alice.pending_entries() if e.entity_id == third.reservation_id]
    assert decode_update(last.payload).ranges == {client_id_for(cert, 1): (2, 3)}


async def test_after_a_rejection_the_document_keeps_syncing(relay: FixedPortRelay, tmp_path: Path) -> None:
    """The forged write is the first of this device in the document, so it carried the certificate
    that every later write of the device in that document relies on."""
    shop = "rejshop"
    d = day(5)
    doc = f"bookings:{shop}:{d}"
    people = await accounts(relay, tmp_path, ["owner", "bob", "erin"], {"owner": shop})
    (owner, owner_auth), (bob, bob_auth), (erin, erin_auth) = people["owner"], people["bob"], people["erin"]
    await open_shop(owner, owner_auth, relay, shop, capacity=5)
    await bob.follow(shop)
    bob_sync = service(bob, relay, bob_auth)
    await bob_sync.sync_once()
    bobs = await bob.book(shop, d, SLOT)
    await bob_sync.sync_once()
    await erin.slots(shop, d)  # browsing the day subscribes it
    svc = service(erin, relay, erin_auth)
    await svc.sync_once()
    # Erin's app believes she is staff (a stale role): her first write to the day is a confirm.
    original = local_mod.Identity.rights
    local_mod.Identity.rights = property(  # type: ignore[method-assign,assignment]
        lambda self: Rights(self.user_id, False, frozenset(), frozenset({shop}))
    )
    try:
        await erin.confirm(bobs.reservation_id)
    finally:
        local_mod.Identity.rights = original  # type: ignore[method-assign]
    first = await erin.book(shop, d, SLOT)  # written without a certificate: the doc has one
    drain(erin)

    summary = await svc.sync_once()
    refused = [(code, reason.split(":")[0]) for _, code, reason in summary.rejected]
    assert refused == [("rejected", "forbidden")], summary
    assert summary.pending == 0, summary  # the booking behind it went through
    again = await svc.sync_once()
    assert again.repair_refused == {} and again.rejected == [], again  # the diff is accepted now
    second = await erin.book(shop, d, SLOT)
    later = await svc.sync_once()
    assert later.repair_refused == {} and later.rejected == [] and later.pending == 0, later
    await owner.subscribe(doc)
    await service(owner, relay, owner_auth).sync_once()
    rows = {r.reservation_id: r for r in await owner.day_reservations(shop, d)}
    assert set(rows) == {bobs.reservation_id, first.reservation_id, second.reservation_id}
    assert not rows[bobs.reservation_id].staff_confirmed  # the forged confirm never landed
    assert all(r.stamp is not None for r in rows.values())
    await svc.sync_once()
    mine = await erin.reservation(second.reservation_id)
    assert mine is not None and mine.final


# --- 6. the relay's SIGTERM (1001) is an event, and the loop comes back -----------------------------


async def test_relay_restart_is_reported_and_the_loop_reconnects(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "termshop"
    d = day(6)
    people = await accounts(relay, tmp_path, ["owner", "gus"], {"owner": shop})
    owner, owner_auth = people["owner"]
    gus, gus_auth = people["gus"]
    await open_shop(owner, owner_auth, relay, shop, capacity=5)
    await gus.follow(shop)
    svc = fast_service(gus, relay, gus_auth)
    await svc.sync_once()
    drain(gus)
    task = asyncio.create_task(svc.run())
    seen: list[ClientEvent] = []
    try:
        await asyncio.wait_for(svc.connected.wait(), 10)
        relay.stop()  # SIGTERM: the relay closes every sync connection with 1001
        try:
            event = await wait_for_event(gus, lambda e: isinstance(e, RelayUnreachable), seen=seen)
            assert isinstance(event, RelayUnreachable)
            # The relay's own 1001 always comes before uvicorn's shutdown (which would say 1012):
            # the CLI's signal handler lets the relay say goodbye first.
            assert "(1001 relay restarting" in event.error, event
            assert "restarting" in event.error or "reconnecting" in event.error, event
            assert event.retry_in_s is not None and event.retry_in_s > 0
            queued = await gus.book(shop, d, SLOT)  # while the relay is away
        finally:
            relay.start()
        await wait_for_event(gus, lambda e: isinstance(e, RelayReachable), seen=seen)
        deadline = time.monotonic() + 15
        while (await gus.outbox_counts()).pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await gus.outbox_counts()).pending == 0  # delivered with no further local action
        assert svc.connect_count >= 2
    finally:
        svc.stop()
        await asyncio.wait_for(task, 10)
    assert not any(isinstance(e, RelayUnreachable) for e in seen)  # reported once per outage
    await owner.subscribe(f"bookings:{shop}:{d}")
    await service(owner, relay, owner_auth).sync_once()
    assert [r.reservation_id for r in await owner.day_reservations(shop, d)] == [queued.reservation_id]
