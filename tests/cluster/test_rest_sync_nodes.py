"""The REST sync batch on two relay nodes (one PostgreSQL store, one Redis fan-out).

What it shows: bookings of one document posted with ``POST /api/v1/sync/batch`` to both nodes at
once are all acknowledged, and their stamps are unique and gap-free (a node whose stamp base the
other used first orders the update again, as the websocket path does, and the client never sees
the race); a booking posted to one node reaches a websocket subscriber of the other node with its
stamps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from crdt_core.engine import Replica
from crdt_core.protocol import DocSynced, StampReceived, UpdateReceived
from crdt_core.reader import read_bookings
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.rest_helpers import Writer, b64, post_batch
from tests.support.servers.redis import RedisServer
from tests.support.sync_helpers import SyncClient, fetch_document, new_account, token_headers

DAY = (dt.date.today() + dt.timedelta(days=9)).isoformat()
DOC = f"bookings:restnodes:{DAY}"


@pytest.fixture
def nodes(tmp_path: Path, pg_dsn: str, redis_server: RedisServer) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    try:
        for i in range(2):  # the first creates the schema, so one after the other
            node = RelayProcess(
                tmp_path / f"node{i}", "--store", pg_dsn, "--redis", redis_server.url, *GENEROUS_LIMITS
            )
            started.append(node.start())
        yield started
    finally:
        for node in started:
            node.stop()


async def test_batches_on_two_nodes_are_all_stamped_once_and_reach_the_other_nodes_sockets(
    nodes: list[RelayProcess],
) -> None:
    a, b = nodes
    with a.client() as http_a, b.client() as http_b:
        watcher = new_account(b, http_b)
        ws = await SyncClient.connect(b, watcher.access)
        seen = Replica()
        assert isinstance(await ws.subscribe(DOC, seen), DocSynced)

        # One booking on node a: node b's subscriber gets it with its stamp.
        alice = Writer(new_account(a, http_a))
        res, update = alice.author.book(alice.replica(DOC), DOC, "s1", 1)
        (ack,) = post_batch(http_a, alice.account, [(DOC, 1, update)])
        assert ack["status"] == "ack", ack
        seen.apply_update((await ws.next_event(UpdateReceived)).update)
        stamp = await ws.next_event(StampReceived)
        assert [rid for _, rid in stamp.stamps] == [res.id]

        # Ten writers, five per node, each posting five bookings of the same document at once.
        writers = [Writer(new_account(a if i % 2 else b, http_a if i % 2 else http_b)) for i in range(10)]
        path = "/api/v1/sync/batch"

        async def post(i: int, w: Writer) -> list[dict[str, Any]]:
            items = []
            for n in range(5):  # a slot per booking: one active claim per customer per slot
                _, u = w.author.book(w.replica(DOC), DOC, f"s{n + 2}", 1)
                items.append({"doc": DOC, "uid": n, "update": b64(u)})
            node = a if i % 2 else b
            async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as client:
                r = await client.post(
                    path,
                    json={"updates": items},
                    headers=token_headers(w.account.access, ("rest", "POST", path)),
                )
            assert r.status_code == 200, r.text
            results: list[dict[str, Any]] = r.json()["results"]
            return results

        answers = await asyncio.gather(*(post(i, w) for i, w in enumerate(writers)))
        results = [r for batch in answers for r in batch]
        assert {r["status"] for r in results} == {"ack"}, results
        numbers = sorted(s["no"] for r in results for s in r["stamps"])
        assert numbers == list(range(2, 52))  # alice's booking took stamp 1

        copy = await fetch_document(a, watcher.access, DOC)
        state = read_bookings(copy, DOC)
        assert len(state.reservations) == 51 and sorted(state.stamps) == list(range(1, 52))
        await ws.close()
