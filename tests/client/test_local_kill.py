"""Kill safety: real child processes book in a loop on a real profile and are killed with SIGKILL.

The one-transaction rule says a local change is the document update *and* its outbox entry, or
neither. After every kill we reopen the profile and check both directions: every reservation and
event in the document has exactly one outbox entry, every outbox entry's payload is in the
document, nothing is duplicated, and the projection agrees with the document.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.storage.store import DB_FILE
from crdt_core.engine import Replica
from crdt_core.reader import booked_days, read_bookings
from tests.support.clients import DAY, SHOP, FakeRelay, close_all, open_profile, pull, setup_shop
from tests.support.crdt_factory import NOW_MS, World

REPO = Path(__file__).resolve().parents[2]
DOC = f"bookings:{SHOP}:{DAY}"


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    await close_all()


async def _child(profile: str, seed: int, pause: float) -> None:
    rng = random.Random(seed)
    client = await LocalClient.open(
        profile,
        now_ms=lambda: NOW_MS,
        secret_store=SecretStore(profile, backend="file"),
        compact_min_bytes=4096,  # compact often, so kills land inside compactions too
    )
    mine: list[str] = []
    while True:
        if mine and rng.random() < 0.15:
            rid = mine.pop(rng.randrange(len(mine)))
            await client.cancel(rid)
            print(f"cancel {rid}", flush=True)
        else:
            res = await client.book(SHOP, DAY, "cut-10")
            mine.append(res.reservation_id)
            print(f"book {res.reservation_id}", flush=True)
        if pause:
            # Two processes in tight loops starve each other on SQLite's write lock (its busy
            # handler sleeps and the other grabs the lock again); real CLI + daemon use pauses.
            await asyncio.sleep(pause)


def child_main(profile: str, seed: int, pause: float = 0.0) -> None:
    """Entry point of the child process (never returns: it is killed)."""
    asyncio.run(_child(profile, seed, pause))


def spawn(profile: Path, seed: int, pause: float = 0.0) -> subprocess.Popen[str]:
    code = (
        f"from tests.client.test_local_kill import child_main; child_main({str(profile)!r}, {seed}, {pause})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def run_and_kill(children: list[subprocess.Popen[str]], lines: int, rng: random.Random) -> list[str]:
    """Read ``lines`` acknowledgements from the children, then SIGKILL them at a random moment."""
    seen: list[str] = []
    deadline = time.monotonic() + 60
    assert children[0].stdout is not None
    while len(seen) < lines and time.monotonic() < deadline:
        line = children[len(seen) % len(children)].stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line.strip())
    time.sleep(rng.uniform(0, 0.004))
    for child in children:
        os.kill(child.pid, signal.SIGKILL)
    for child in children:
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    assert len(seen) >= lines, "children stopped acknowledging"
    return seen


async def check_profile(profile: Path, world: World, acknowledged: list[str]) -> None:
    with sqlite3.connect(profile / DB_FILE) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    client = await open_profile(profile, world)
    try:
        # What the document holds (snapshot + log replayed by the client) ...
        whole = Replica()
        whole.apply_update(await client.diff(DOC, b"\x00"))
        held = read_bookings(whole, DOC)
        # ... and what the outbox would deliver.
        pending = await client.pending_entries()
        entries = [e for e in pending if e.doc_id == DOC]
        listed = [e for e in pending if e.doc_id != DOC]
        queued = Replica()
        for entry in entries:
            queued.apply_update(entry.payload)
        doc = read_bookings(queued, DOC)

        creates = [e.entity_id for e in entries if e.operation == "create"]
        cancels = [e.entity_id for e in entries if e.operation == "cancel"]
        # One entry per local transaction, none twice.
        assert len(creates) == len(set(creates))
        assert len(cancels) == len(set(cancels))
        # Document -> outbox and outbox -> document: the same records on both sides.
        assert set(held.reservations) == set(creates)
        assert {ev.reservation for ev in held.events.values()} == set(cancels)
        assert set(doc.reservations) == set(held.reservations)
        assert set(doc.events) == set(held.events)
        # Each entry carries exactly the record it names.
        for entry in entries:
            one = Replica()
            one.apply_update(entry.payload)
            got = read_bookings(one, DOC)
            if entry.operation == "create":
                assert list(got.reservations) == [entry.entity_id] and not got.events
            else:
                assert [ev.reservation for ev in got.events.values()] == [entry.entity_id]
        # The day is listed in the user's document (for the user's other devices) in the same
        # transaction as the first booking: listed exactly when a booking is held, and once.
        user = Replica()
        user.apply_update(await client.diff("user:u-alice", b"\x00"))
        assert booked_days(user, "u-alice") == ({(SHOP, DAY)} if held.reservations else set())
        assert [(e.entity_type, e.doc_id) for e in listed] == [("booked_day", "user:u-alice")] * bool(
            held.reservations
        )
        for entry in listed:
            one = Replica()
            one.apply_update(entry.payload)
            assert booked_days(one, "u-alice") == {(SHOP, DAY)}
        # Whatever a child reported done is durable.
        for line in acknowledged:
            kind, rid = line.split()
            assert rid in (held.reservations if kind == "book" else set(cancels)), line
        # The projection is the document's.
        rows = {r.reservation_id: r for r in await client.reservations()}
        assert set(rows) == set(held.reservations)
        assert {rid for rid, r in rows.items() if r.state.value == "cancelled"} == set(cancels)
        # HLCs are unique even across processes sharing the profile (one device, one clock).
        hlcs = [r.hlc for r in held.reservations.values()] + [e.hlc for e in held.events.values()]
        assert len(hlcs) == len(set(hlcs))
    finally:
        await client.close()


async def prepare(tmp_path: Path) -> tuple[World, Path]:
    world = World()
    relay = FakeRelay(world)
    owner = await setup_shop(tmp_path, world, relay, capacity=10_000)
    await owner.close()
    customer = await open_profile(tmp_path / "alice", world, "u-alice")
    await pull(customer, relay, ["catalog", f"shop:{SHOP}"])
    await customer.close()
    return world, tmp_path / "alice"


async def test_sigkill_during_local_bookings_keeps_document_and_outbox_in_step(tmp_path: Path) -> None:
    world, profile = await prepare(tmp_path)
    rng = random.Random(20270120)
    acknowledged: list[str] = []
    for round_no, lines in enumerate((12, 40, 3, 25)):
        child = spawn(profile, seed=round_no)
        acknowledged += run_and_kill([child], lines, rng)
        await check_profile(profile, world, acknowledged)
    with sqlite3.connect(profile / DB_FILE) as db:
        generation = db.execute("SELECT generation FROM documents WHERE doc_id = ?", (DOC,)).fetchone()[0]
    assert generation >= 1  # the kills happened across compactions, not only plain appends


async def test_sigkill_two_processes_sharing_one_profile(tmp_path: Path) -> None:
    world, profile = await prepare(tmp_path)
    rng = random.Random(7)
    acknowledged: list[str] = []
    for round_no in range(2):
        children = [spawn(profile, 100 + 2 * round_no, 0.003), spawn(profile, 101 + 2 * round_no, 0.003)]
        acknowledged += run_and_kill(children, 30, rng)
        await check_profile(profile, world, acknowledged)
