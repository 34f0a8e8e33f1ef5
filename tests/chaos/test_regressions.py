"""Regression tests for what the chaos run found, each against a real relay through the fault proxy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.local.client import LocalClient
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from crdt_core.messages import CloseCode
from crdt_core.verdict import ClaimState
from tests.chaos.harness import SHOP, ChaosConfig, Relay, _plan, setup_accounts
from tests.faults.proxy import Fault, FaultProxy, FaultRates


@dataclass
class World:
    relay: Relay
    proxy: FaultProxy
    plan: dict[str, object]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    relay = Relay(tmp_path / "relay-data")
    port = await relay.start()
    proxy = await FaultProxy(("127.0.0.1", port), seed=7).start()
    try:
        cfg = ChaosConfig(seed=7, workdir=tmp_path, clients=2)
        plan = _plan(cfg, proxy.url)
        await setup_accounts(cfg, relay, proxy.url, plan)
        yield World(relay, proxy, plan)
    finally:
        await proxy.stop()
        await relay.stop()
    assert [how for _g, _c, how in relay.exits] == ["sigterm"] and relay.exits[0][1] == 0


async def test_a_protocol_violation_caused_in_transit_does_not_stop_syncing_for_good(world: World) -> None:
    """Found by the chaos run (seed 1): a middlebox duplicating one frame made the relay (or the
    client) close with 4002, which the client treated as permanent: its sync loop ended and the
    bookings it queued afterwards never left the device. Now it reconnects after its longest
    backoff, and the queued booking goes out once the network behaves."""
    home = Path(world.plan["clients"]["customer1"]["home"])  # type: ignore[index]
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    svc = SyncService(
        local, world.proxy.url, auth=AuthClient(local, world.proxy.url), backoff_initial_s=0.05,
        backoff_max_s=0.5, poll_interval_s=0.05,
    )  # fmt: skip
    world.proxy.set_rates(FaultRates(duplicate=1.0))  # every message arrives twice
    task = asyncio.create_task(svc.run())
    try:
        day = world.plan["days"][0]  # type: ignore[index]
        await local.book(SHOP, day, "cut-10")
        deadline = time.monotonic() + 15
        while str(int(CloseCode.PROTOCOL_VIOLATION)) not in (svc.last_error or ""):
            assert time.monotonic() < deadline, f"no 4002 seen; last error {svc.last_error}"
            assert not task.done(), "the sync loop ended before the fault"
            await asyncio.sleep(0.02)
        world.proxy.faults_off()
        deadline = time.monotonic() + 15
        while (await local.outbox_counts()).pending:
            assert not task.done(), f"the sync loop gave up after {svc.last_error}"
            assert time.monotonic() < deadline, "the booking never reached the relay"
            await asyncio.sleep(0.05)
        assert world.proxy.counters["duplicate"] > 0
    finally:
        svc.stop()
        await asyncio.wait_for(task, 10)
        await local.close()


async def _open(world: World, name: str) -> LocalClient:
    home = Path(world.plan["clients"][name]["home"])  # type: ignore[index]
    return await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))


def _service(local: LocalClient, url: str, **knobs: float) -> SyncService:
    return SyncService(
        local, url, auth=AuthClient(local, url), backoff_initial_s=0.05, backoff_max_s=0.3,
        retry_initial_s=0.1, retry_max_s=0.5, poll_interval_s=0.05, **knobs,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_an_entry_refused_for_a_certificate_in_flight_is_retried_not_dropped(world: World) -> None:
    """Found by the chaos run (seed 3): the owner's first write into a day's document carries the
    device certificate; when that message was lost and the next write reached the relay first,
    the relay refused the next one as ``unknown_certificate`` and the client set it aside for
    good (a staff decision silently never reached anyone), although the certificate was only
    late. Now an entry refused so while an older entry of the same document is still unacked is
    retried behind it."""
    url = world.proxy.url
    day = world.plan["days"][0]  # type: ignore[index]
    doc = f"bookings:{SHOP}:{day}"
    customer = await _open(world, "customer1")
    owner = await _open(world, "owner")
    try:
        booked = await customer.book(SHOP, day, "cut-10")
        assert (await _service(customer, url).sync_once()).pending == 0
        await _service(owner, url).sync_once()
        await owner.confirm(booked.reservation_id)  # the owner's first write here: carries the certificate
        await owner.decline(booked.reservation_id, "closed that day")  # relies on it
        extra_uids = 1 << 62  # the sync service's catch-up diffs (they would carry the certificate too)
        proxy = world.proxy
        proxy.add_rule("up", Fault.DROP, lambda m: m.get("t") == "upd" and m.get("uid", 0) >= extra_uids, 50)
        proxy.add_rule("up", Fault.DROP, lambda m: m.get("t") == "upd" and m.get("doc") == doc, 1)
        svc = _service(owner, url, response_timeout_s=1.0)
        task = asyncio.create_task(svc.run())
        try:
            deadline = time.monotonic() + 20
            while (counts := await owner.outbox_counts()).pending:
                assert time.monotonic() < deadline, "the owner's entries never got through"
                assert not task.done()
                await asyncio.sleep(0.05)
        finally:
            svc.stop()
            await asyncio.wait_for(task, 10)
        assert world.proxy.counters["drop"] >= 1
        assert counts.rejected == 0, [(e.operation, e.reject_reason) for e in await owner.rejected_entries()]
        await _service(customer, url).sync_once()
        mine = await customer.reservation(booked.reservation_id)
        assert mine is not None and mine.state is ClaimState.DECLINED and mine.staff_confirmed
    finally:
        await customer.close()
        await owner.close()
