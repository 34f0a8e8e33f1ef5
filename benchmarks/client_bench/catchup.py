"""A real relay with one busy day, and fresh client profiles catching up from it.

Why a real relay process and real clients: catching up is what a phone does after a night offline
or on first install, and its cost is the whole path: the relay's ``sync`` answer over a
websocket, validation of every signed record and stamp, storing the document, recomputing the
verdict and writing the projection rows. So the relay runs as its own process (as the relay suite
starts it), the day is filled by other clients through the relay (pre-signed bookings from the
relay suite's load generator, which the relay validates and stamps), and each sample is a fresh
profile that logs in, subscribes to the shop and the day, and runs ``SyncService.sync_once``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.relay_bench.experiments import load_single_document, quickslot_pool
from benchmarks.relay_bench.payloads import Identity, bookings_doc
from benchmarks.relay_bench.servers import PASSWORD, REPO, QuickSlotAsgi, _env
from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService, SyncSummary
from crdt_core.engine import Replica

__all__ = ["Day", "SyncSample", "busy_day", "fresh_sync", "stored_state"]

WRITERS = 10
SLOTS = tuple(f"s{i}" for i in range(1, 13))
"""The slots the relay suite's pre-signed bookings use (``payloads.quickslot_updates``)."""


@dataclass(frozen=True)
class Day:
    relay: QuickSlotAsgi
    shop: str
    doc: str
    reservations: int
    reader: Identity
    fill_wall_s: float
    fill_cpu_s: float


#: How often the relay looks for account changes made by ``relay.cli`` (``serve --events-poll``;
#: 1 s by default). A grant counts at validation only once the serving relay has polled it.
EVENTS_POLL_S = 0.1
RELAY_ARGS = ["--events-poll", str(EVENTS_POLL_S)]


def _grant_owner(relay: QuickSlotAsgi, email: str, shop: str) -> None:
    """``relay.cli user grant EMAIL --owner SHOP``: the operator's command, on the serving relay.

    The certificate issued at the next login carries the grant at once, but the relay checks each
    record against its in-memory view of the account too (``relay/auth/rights.py``), which learns of a
    grant made by another process at its next poll of ``account_events``: writing before that is
    refused as ``forbidden``. So wait for a few polls.
    """
    # admin too: the shop names a category the catalogue must define, and only admins add one
    for what in (["--owner", shop], ["--admin"]):
        argv = ["user", "grant", email, *what, "--data", str(relay.data), "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "relay.cli", *argv],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"relay.cli user grant failed: {done.stderr[-500:]}")
    time.sleep(5 * EVENTS_POLL_S)


async def _open(path: Path) -> LocalClient:
    return await LocalClient.open(path, secret_store=SecretStore(path, backend="file"))


async def _create_shop(relay: QuickSlotAsgi, owner: Identity, shop: str, path: Path) -> None:
    """The owner logs in from a profile of its own, creates the shop and its slots, and syncs.

    The slots allow a customer 100 bookings a day (``per_customer``, its largest value): the
    booking benchmarks time one customer booking the same slot up to 100 times in a row, which
    the default of one booking per customer would refuse (``duplicate_booking``)."""
    local = await _open(path)
    try:
        await AuthClient(local, relay.base).login(owner.email, PASSWORD)
        await local.add_category("bench", "Benchmarks")
        await local.create_shop(shop, name="Catch-up Shop", category="bench", location="Main", lat=1, lon=2)
        for i, slot in enumerate(SLOTS):
            await local.add_slot(
                shop,
                slot,
                service="haircut",
                start=f"{8 + i:02d}:00",
                duration=60,
                capacity=10_000,
                per_customer=100,
            )
        summary = await SyncService(local, relay.base).sync_once(settle_s=0.0)
        if summary.rejected or summary.pending:
            raise RuntimeError(f"the relay refused the shop: {summary.rejected}, {summary.pending} pending")
    finally:
        await local.close()


def busy_day(relay: QuickSlotAsgi, reservations: int, workdir: Path) -> Day:
    """A shop with twelve slots and a day of ``reservations`` bookings by ``WRITERS`` customers.

    Identity 0 owns the shop, 1..WRITERS write the bookings, WRITERS + 1 is the reader whose
    fresh profiles catch up.
    """
    ids = relay.ensure_identities(WRITERS + 2)
    shop = f"cu{reservations}"
    doc = bookings_doc(shop)
    _grant_owner(relay, ids[0].email, shop)
    asyncio.run(_create_shop(relay, ids[0], shop, workdir / "owner"))
    per_writer = max(1, reservations // WRITERS)
    pool = quickslot_pool(ids, doc, range(1, WRITERS + 1), per_writer)
    started = time.monotonic()
    fill = load_single_document(relay, doc, pool, window=4, compression=False)
    if not fill["complete"]:
        raise RuntimeError(f"filling the day failed: {fill['notes']}")
    wall = time.monotonic() - started
    return Day(relay, shop, doc, per_writer * WRITERS, ids[WRITERS + 1], wall, fill["server_cpu_s"])


@dataclass(frozen=True)
class SyncSample:
    seconds: float
    summary: SyncSummary
    reservation_rows: int
    login_s: float


async def fresh_sync(day: Day, path: Path) -> SyncSample:
    """A new profile logs in (untimed), subscribes to the shop and the day, and syncs (timed).

    Timed: ``SyncService.sync_once`` with no settle time, from connecting to the relay until the
    documents are stored and their projections written (the call returns after the commit).
    """
    local = await _open(path)
    try:
        t0 = time.perf_counter()
        await AuthClient(local, day.relay.base).login(day.reader.email, PASSWORD)
        login_s = time.perf_counter() - t0
        await local.subscribe(f"shop:{day.shop}", "browsed")
        await local.subscribe(day.doc, "browsed")
        service = SyncService(local, day.relay.base)
        t0 = time.perf_counter()
        summary = await service.sync_once(settle_s=0.0)
        seconds = time.perf_counter() - t0
        async with local.store.read() as tx:
            row = await tx.fetchone("SELECT COUNT(*) FROM reservations WHERE doc_id = ?", (day.doc,))
        rows = int(row[0]) if row else 0
    finally:
        await local.close()
    return SyncSample(seconds, summary, rows, login_s)


async def stored_state(path: Path, doc: str) -> tuple[bytes, dict[str, bytes]]:
    """The day as a synced profile stored it (one update), and the relay keys it validated with."""
    local = await _open(path)
    try:
        stored = await local.store.load_doc(doc)
        keys = local.relay_keys
    finally:
        await local.close()
    if stored is None:
        raise RuntimeError(f"{doc} is not in {path}")
    replica = Replica()
    if stored.snapshot:
        replica.apply_update(stored.snapshot)
    for _id, payload in stored.updates:
        replica.apply_update(payload)
    return replica.encode_state(), keys
