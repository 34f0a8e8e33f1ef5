"""The restore stamp hold with two relay nodes on one PostgreSQL and one Redis (real processes).

Both nodes read the hold from ``relay_meta``, both hold claims made on them, and both sweep the
document when the window closes, at the same moment: one node's stamps commit, the other's are
refused for their stamp base (the usual conflict between nodes), and it reloads and finds
nothing left to stamp. Each held claim ends up with exactly one stamp, gap-free, in the order
the shared log stored the claims, and both nodes serve the same document.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import pytest

from crdt_core.engine import Replica
from crdt_core.protocol import Acked, StampReceived
from crdt_core.reader import read_bookings
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, store_args
from tests.support.servers.redis import RedisServer
from tests.support.sync_helpers import Account, SyncClient, fetch_document, new_account

DOC = f"bookings:holdnodes:{(dt.date.today() + dt.timedelta(days=6)).isoformat()}"
SLOT = "cut-10"


def hold_status(node: RelayProcess) -> dict[str, Any]:
    body = httpx.get(f"{node.base_url}/api/v1/sync/status", timeout=5).json()
    hold = body["restore_stamp_hold"]
    assert isinstance(hold, dict)
    return hold


async def book(node: RelayProcess, acct: Account, replica: Replica, *, stamped: bool) -> str:
    c = await SyncClient.connect(node, acct.access)
    await c.subscribe(DOC, replica)
    res, u = acct.author.book(replica, DOC, SLOT, 1)
    assert isinstance(await c.push(DOC, u), Acked)
    if stamped:
        replica.apply_update((await c.next_event(StampReceived)).update)
    else:
        with pytest.raises(TimeoutError):
            await c.next_event(StampReceived, timeout=0.1)
    await c.close()
    return res.id


async def fetch(node: RelayProcess, acct: Account) -> Replica:
    return await fetch_document(node, acct.access, DOC)


def test_two_nodes_hold_then_stamp_each_held_claim_once_in_stored_order(
    request: pytest.FixtureRequest, tmp_path: Any, redis_server: RedisServer
) -> None:
    store = store_args(request, "postgres")
    flags = [*GENEROUS_LIMITS, *store, "--redis", redis_server.url, "--restore-stamp-hold", "8"]
    first = RelayProcess(tmp_path / "node1", *flags).start()
    try:
        # One customer holds one active claim of the slot a day: each claim has its own customer.
        with first.client() as http:
            accounts = [new_account(first, http) for _ in range(6)]
        early, (a1, b1, a2, b2) = accounts[:2], accounts[2:]
        for acct in early:
            asyncio.run(book(first, acct, Replica(acct.author.client_id()), stamped=True))
    finally:
        assert first.stop() == 0
    first.sql("DELETE FROM relay_meta WHERE key = 'epoch'")  # the restore procedure's last step

    nodes = [RelayProcess(tmp_path / "node1", *flags).start()]
    try:
        nodes.append(RelayProcess(tmp_path / "node2", *flags).start())
        assert all(hold_status(n)["window_open"] for n in nodes)
        order = []
        for node, acct in ((nodes[0], a1), (nodes[1], b1), (nodes[0], a2), (nodes[1], b2)):
            order.append(asyncio.run(book(node, acct, Replica(acct.author.client_id()), stamped=False)))
        assert hold_status(nodes[0])["held_claims"] == 2 == hold_status(nodes[1])["held_claims"]
        deadline = time.monotonic() + 15
        while any(hold_status(n)["active"] for n in nodes):
            assert time.monotonic() < deadline, [hold_status(n) for n in nodes]
            time.sleep(0.1)
        views = [asyncio.run(fetch(n, a1)) for n in nodes]
    finally:
        for node in nodes:
            node.stop()
    assert views[0].to_py() == views[1].to_py()
    state = read_bookings(views[0], DOC)
    stamps = {no: s.reservation for no, s in state.stamps.items()}
    assert sorted(stamps) == [1, 2, 3, 4, 5, 6], stamps
    assert sorted(stamps.values()) == sorted(state.reservations)  # one stamp per claim
    assert [stamps[n] for n in (3, 4, 5, 6)] == order
