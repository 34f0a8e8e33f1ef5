"""Three relay nodes on one PostgreSQL and one Redis, behind HAProxy, driven by real clients.

Every part is a real process: PostgreSQL (the worker's server, a fresh database), redis-server,
three ``quickslot-relay serve --store ... --redis ...`` and HAProxy; the clients are the client
library (LocalClient profiles + SyncService run loops) talking only to the proxy, so which node
serves whom is HAProxy's round robin. What each test shows:

* clients spread over the three nodes converge to one document and one verdict, and concurrent
  bookings of the last seat from clients on different nodes get stamps that are unique and
  gap-free (one sequencer per document across nodes: the store's row lock, see
  relay/store/postgres.py, and the nodes' retry on a stale stamp base);
* a node SIGKILLed while its clients book: they reconnect through HAProxy to the other nodes and
  no acknowledged booking is lost (a fresh client that syncs afterwards sees every one);
* Redis restarted empty while clients book: the fan-out resumes and clients that missed updates
  catch up by state vector, ending with the same document as everyone else.

One deployment serves the whole module (``--dist loadfile`` keeps a module on one worker): a
relay node starts in 1-2 s on an idle machine but several times that on a busy one, and the
module's budget in ``make test`` is 90 s. Convergence waits allow 90 s too, for a loaded
machine, and say on failure who lags and how. Each test uses its own shop and people; the tests that
break something run last (Redis restart, then the node kill).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from client.sync.service import SyncService
from tests.cluster.cluster import DAY, SLOT, Cluster, Person, bookings_doc, open_shop, people
from tests.support.clients import close_all
from tests.support.servers.haproxy import unavailable_reason as haproxy_unavailable
from tests.support.servers.postgres import PostgresServer
from tests.support.servers.redis import RedisServer, unavailable_reason as redis_unavailable


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer) -> Iterator[Cluster]:
    for reason in (redis_unavailable(), haproxy_unavailable()):
        if reason is not None:
            pytest.skip(reason)
    with RedisServer.start() as redis:
        c = Cluster(tmp_path_factory.mktemp("relays"), pg_server.create_database(), redis)
        try:
            c.start()
            yield c
        finally:
            c.stop()


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


async def until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float,
    what: str,
    explain: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Wait for ``predicate``; on timeout fail with ``explain()``'s account of what is missing."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            detail = await explain() if explain is not None else ""
            raise AssertionError(f"not within {timeout}s: {what}; {detail}")
        await asyncio.sleep(0.1)


class Running:
    """Every person's SyncService.run loop, stopped (and awaited) on exit."""

    def __init__(self, everyone: list[Person], url: str) -> None:
        self.services: dict[str, SyncService] = {p.name: p.service(url) for p in everyone}
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Running:
        self.tasks = [asyncio.create_task(s.run()) for s in self.services.values()]
        await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in self.services.values())), 20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for service in self.services.values():
            service.stop()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 20)


async def _setup(cluster: Cluster, tmp: Path, shop: str, bookers: int, capacity: int) -> list[Person]:
    names = ["owner"] + [f"p{i}" for i in range(bookers)]
    everyone = await people(cluster, tmp, names, {"owner": shop})
    owner = everyone["owner"]
    await open_shop(owner, cluster.url, shop, capacity=capacity)
    for person in everyone.values():
        await person.local.follow(shop)
        await person.local.subscribe(bookings_doc(shop))
    await asyncio.gather(*(p.service(cluster.url).sync_once() for p in everyone.values()))
    return list(everyone.values())


async def _converged(everyone: list[Person], shop: str, expected: int) -> bool:
    """Every outbox empty, and every replica holds ``expected`` stamped reservations."""
    for person in everyone:
        if (await person.local.outbox_counts()).pending:
            return False
        rows = await person.local.day_reservations(shop, DAY)
        if len(rows) != expected or any(r.stamp is None for r in rows):
            return False
    return True


async def _lagging(everyone: list[Person], shop: str, expected: int) -> str:
    """Who has not converged and how (for a failure message): outbox, rows, unstamped rows."""
    lines = []
    for person in everyone:
        pending = (await person.local.outbox_counts()).pending
        rows = await person.local.day_reservations(shop, DAY)
        unstamped = sum(1 for r in rows if r.stamp is None)
        if pending or len(rows) != expected or unstamped:
            lines.append(
                f"{person.name}: {pending} pending, {len(rows)}/{expected} rows, {unstamped} unstamped"
            )
    return "; ".join(lines)


async def _same_everywhere(everyone: list[Person], shop: str) -> None:
    doc = bookings_doc(shop)
    first = everyone[0].local
    for person in everyone[1:]:
        assert await person.local.document(doc) == await first.document(doc), person.name
        assert await person.local.verdict(shop, DAY) == await first.verdict(shop, DAY), person.name


def _stamps_unique_and_gap_free(rows: list) -> None:  # type: ignore[type-arg]
    stamps = sorted(r.stamp for r in rows)
    assert stamps == list(range(1, len(rows) + 1)), stamps


async def test_clients_on_three_nodes_converge_and_last_seat_stamps_are_unique(
    cluster: Cluster, tmp_path: Path
) -> None:
    shop = "k1"
    everyone = await _setup(cluster, tmp_path, shop, bookers=6, capacity=1)
    bookers = everyone[1:]
    async with Running(everyone, cluster.url):
        per_node = [cluster.metric(i, "quickslot_connections") for i in range(3)]
        assert all(n >= 1 for n in per_node), f"HAProxy did not spread the clients: {per_node}"
        # Everyone books the one seat at once, three times each, from all three nodes.
        await asyncio.gather(*(p.local.book(shop, DAY, SLOT) for p in bookers for _ in range(3)))
        await until(
            lambda: _converged(everyone, shop, 18),
            90,
            "clients converge",
            lambda: _lagging(everyone, shop, 18),
        )
    rows = await everyone[0].local.day_reservations(shop, DAY)
    _stamps_unique_and_gap_free(rows)
    assert sum(1 for r in rows if r.state.name == "CONFIRMED") == 1
    await _same_everywhere(everyone, shop)
    received = [cluster.metric(i, "quickslot_fanout_received_total") for i in range(3)]
    assert all(r > 0 for r in received), f"every node took commits from the others: {received}"
    # A booking refused for its stamp base is ordered again before the same client's next one,
    # which depends on it: no update is ever refused for missing dependencies on the way.
    refused = [cluster.metric(i, "quickslot_rejections_total", 'reason="missing_deps"') for i in range(3)]
    assert refused == [0.0, 0.0, 0.0], refused


async def test_redis_restarted_under_load_fan_out_resumes_and_clients_catch_up(
    cluster: Cluster, tmp_path: Path
) -> None:
    shop = "k3"
    everyone = await _setup(cluster, tmp_path, shop, bookers=6, capacity=100)
    bookers = everyone[1:]
    rounds = 6
    async with Running(everyone, cluster.url):

        async def keep_booking(person: Person) -> None:
            for _ in range(rounds):
                await person.local.book(shop, DAY, SLOT)
                await asyncio.sleep(0.15)

        load = asyncio.gather(*(keep_booking(p) for p in bookers))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.redis.restart, keep_data=False, down_for=0.5)  # streams lost
        await load
        await until(
            lambda: _converged(everyone, shop, rounds * len(bookers)),
            90,
            "clients converge",
            lambda: _lagging(everyone, shop, rounds * len(bookers)),
        )
        resets = [cluster.metric(i, "quickslot_fanout_resets_total") for i in range(3)]
        assert all(r >= 1 for r in resets), f"every node noticed the lost streams: {resets}"

        async def all_connected() -> bool:
            return all(cluster.metric(i, "quickslot_fanout_connected") == 1 for i in range(3))

        await until(all_connected, 5, "every node reaches Redis again")
        # Fan-out resumed: a booking made now reaches everyone live, without any reconnect.
        await bookers[0].local.book(shop, DAY, SLOT)
        await until(lambda: _converged(everyone, shop, rounds * len(bookers) + 1), 15, "live after restart")
    rows = await everyone[0].local.day_reservations(shop, DAY)
    _stamps_unique_and_gap_free(rows)
    await _same_everywhere(everyone, shop)


async def test_a_node_killed_under_load_loses_no_acknowledged_update(
    cluster: Cluster, tmp_path: Path
) -> None:
    shop = "k2"
    everyone = await _setup(cluster, tmp_path, shop, bookers=6, capacity=100)
    bookers = everyone[1:]
    rounds = 6
    async with Running(everyone, cluster.url):
        on_victim = cluster.metric(0, "quickslot_connections")
        assert on_victim >= 1, "node 1 serves nobody; killing it would show nothing"

        async def keep_booking(person: Person) -> None:
            for _ in range(rounds):
                await person.local.book(shop, DAY, SLOT)
                await asyncio.sleep(0.15)

        load = asyncio.gather(*(keep_booking(p) for p in bookers))
        await asyncio.sleep(0.4)
        cluster.kill(0)  # SIGKILL: no goodbye, commits in flight die with it
        await load
        await until(
            lambda: _converged(everyone, shop, rounds * len(bookers)),
            90,
            "clients converge",
            lambda: _lagging(everyone, shop, rounds * len(bookers)),
        )
        survivors = [cluster.metric(i, "quickslot_connections") for i in (1, 2)]
        assert sum(survivors) >= len(everyone), f"everyone reconnected to the survivors: {survivors}"
    rows = await everyone[0].local.day_reservations(shop, DAY)
    _stamps_unique_and_gap_free(rows)
    await _same_everywhere(everyone, shop)
    # A newcomer, after the fact, finds every booking in the store (through a surviving node).
    late = (await people(cluster, tmp_path, ["late"], {}))["late"]
    await late.local.follow(shop)
    await late.local.subscribe(bookings_doc(shop))
    await late.service(cluster.url).sync_once()
    assert {r.reservation_id for r in await late.local.day_reservations(shop, DAY)} == {
        r.reservation_id for r in rows
    }
