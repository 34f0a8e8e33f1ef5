"""The Redis Streams fan-out and the document manager's seq ordering, two nodes in one process.

Each "node" is what a relay process runs below its websocket layer: a DocumentManager on the
shared PostgreSQL store and a RedisStreamFanout to a real redis-server, wired as the hub wires
them (publish on commit, ``remote_commit`` on receipt). What the tests show:

* a commit on one node reaches the other node's loaded replica, delivered in seq order;
* concurrent stamping of one document from two nodes: the store refuses the stale stamp base
  (StampConflictError), the node reloads and stamps again, and the stamps end up unique and
  gap-free;
* a seq that never arrives (a lost stream entry) makes the node reload from the store after
  ``gap_wait`` and hand its subscribers the difference (``on_catchup``);
* Redis restarted empty: the nodes notice (new run_id), reload, and the fan-out resumes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.documents.results import StampSequence
from relay.fanout.base import Committed
from relay.fanout.redis_streams import RedisStreamFanout
from relay.store.base import AppendResult, StampConflictError, StoreError
from relay.store.postgres import PostgresDocumentStore
from tests.support.servers.redis import RedisServer

DOC = "bookings:s1:2030-01-01"


@dataclass
class Node:
    store: PostgresDocumentStore
    manager: DocumentManager
    fanout: RedisStreamFanout
    #: (first seq, updates) in the order the node handed them to its "subscribers".
    delivered: list[int] = field(default_factory=list)
    catchups: list[int] = field(default_factory=list)
    conflicts: int = 0

    def publisher(self, doc: str, update: bytes) -> Callable[[AppendResult, object, bytes | None], None]:
        def publish(result: AppendResult, checked: object, extra: bytes | None) -> None:
            updates = (update,) if extra is None else (update, extra)
            next_stamp = result.stamps.stop if len(result.stamps) else 0
            self.fanout.publish(Committed(self.fanout.node_id, doc, result.seqs[0], updates, (), next_stamp))

        return publish

    async def write(self, doc: str, update: bytes, stamp: bool = False) -> AppendResult:
        """Order ``update`` like the hub does, again after a stamp conflict; returns the commit."""
        for _attempt in range(20):
            ordered = await self.manager.order(
                doc,
                update,
                lambda replica, u: None,
                _stamp_new_claims if stamp else None,
                on_durable=lambda result, checked, extra: self.delivered.extend(result.seqs),
                on_commit=self.publisher(doc, update),
            )
            try:
                applied = await ordered.wait()
            except StampConflictError:
                self.conflicts += 1
                continue
            return AppendResult(
                tuple(s for s in (applied.update_seq, applied.extra_seq) if s is not None), applied.stamps
            )
        raise AssertionError("still conflicting after 20 attempts")


def _stamp_new_claims(replica: Replica, checked: None, stamps: StampSequence) -> bytes | None:
    stamped = set(replica.keys("stamps")) if "stamps" in replica.roots() else set()
    by_claim = {v.decode() for _, v in replica.items("stamps")} if stamped else set()
    todo = (
        sorted(k for k in replica.keys("claims") if k not in by_claim) if "claims" in replica.roots() else []
    )
    if not todo:
        return None
    return replica.write([("stamps", str(stamps.next()), key.encode()) for key in todo])


async def _node(dsn: str, redis_url: str, gap_wait: float = 0.5) -> Node:
    store = await PostgresDocumentStore.open(dsn)
    manager = DocumentManager(store, gap_wait=gap_wait)
    fanout = RedisStreamFanout(redis_url, shards=2, block_ms=200)
    node = Node(store, manager, fanout)
    manager.on_catchup = lambda doc, update, seq: node.catchups.append(seq)

    def receive(message: Committed) -> None:
        manager.remote_commit(
            message.doc,
            message.seq,
            message.updates,
            message.next_stamp,
            deliver=lambda: node.delivered.extend(range(message.seq, message.last_seq + 1)),
        )

    def reset() -> None:
        manager.refresh_all()

    await fanout.start(receive, reset)
    return node


async def _close(node: Node) -> None:
    await node.fanout.close()
    await node.manager.close()
    await node.store.close()


@pytest.fixture
async def nodes(pg_dsn: str, redis_server: RedisServer) -> AsyncIterator[tuple[Node, Node]]:
    a = await _node(pg_dsn, redis_server.url)
    b = await _node(pg_dsn, redis_server.url)
    try:
        yield a, b
    finally:
        await _close(a)
        await _close(b)


async def _doc(node: Node, doc: str = DOC) -> dict[str, dict[str, bytes]]:
    return await node.manager.read(doc, lambda replica, seq: replica.to_py())


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_commits_reach_the_other_nodes_replica_in_seq_order(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    pins = [a.manager.pin(DOC), b.manager.pin(DOC)]
    await _doc(a)
    await _doc(b)  # loaded on both, so b must take a's commits in
    writer = Replica()
    for i in range(30):
        await a.write(DOC, writer.write([("m", f"k{i}", b"v")]))
    await _until(lambda: len(b.delivered) == 30)
    assert b.delivered == list(range(1, 31))
    assert await _doc(b) == await _doc(a) == writer.to_py()
    assert b.manager.stats().remote_applied == 30 and b.manager.stats().loads == 1
    for pin in pins:
        pin.release()


async def test_concurrent_stamps_on_two_nodes_stay_unique_and_gap_free(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    pins = [a.manager.pin(DOC), b.manager.pin(DOC)]
    await _doc(a)
    await _doc(b)

    async def book(node: Node, who: str, n: int) -> None:
        for i in range(n):
            await node.write(DOC, Replica().write([("claims", f"{who}{i}", b"c")]), stamp=True)

    await asyncio.gather(book(a, "a", 15), book(b, "b", 15))
    stored = await a.store.load(DOC)
    whole = Replica()
    for _, update in stored.updates:
        whole.apply_update(update)
    stamps = whole.to_py()["stamps"]
    claims_stamped = sorted(v.decode() for v in stamps.values())
    assert sorted(int(k) for k in stamps) == list(range(1, 31)), "stamp numbers unique and gap-free"
    assert claims_stamped == sorted([f"a{i}" for i in range(15)] + [f"b{i}" for i in range(15)])
    assert stored.next_stamp == 31
    assert a.conflicts + b.conflicts > 0, "the race this test is about did not happen"
    await _until(lambda: a.manager.stats().remote_applied + b.manager.stats().remote_applied > 0)
    # Both nodes end with the stored document, whichever of them stamped what.
    await _until(
        lambda: max(a.delivered, default=0) == stored.seq and max(b.delivered, default=0) == stored.seq
    )
    assert await _doc(a) == await _doc(b) == whole.to_py()
    for pin in pins:
        pin.release()


async def test_a_seq_that_never_arrives_makes_the_node_reload_and_catch_up(nodes: tuple[Node, Node]) -> None:
    _a, b = nodes
    pin = b.manager.pin(DOC)
    await _doc(b)
    writer = Replica()
    lost = writer.write([("m", "lost", b"1")])
    late = writer.write([("m", "late", b"2")])
    await b.store.append(DOC, [lost])  # seq 1: stored, but its stream entry never comes
    await b.store.append(DOC, [late])  # seq 2
    started = time.monotonic()
    assert b.manager.remote_commit(DOC, 2, [late])  # waits for seq 1 ...
    assert await _doc(b) == {}
    await _until(lambda: b.catchups == [2], timeout=5)  # ... then reloads after gap_wait
    assert time.monotonic() - started >= b.manager.gap_wait * 0.9
    assert await _doc(b) == writer.to_py()
    assert b.manager.stats().refreshes == 1
    pin.release()


async def test_redis_restarted_empty_nodes_reload_and_fan_out_resumes(
    nodes: tuple[Node, Node], redis_server: RedisServer
) -> None:
    a, b = nodes
    pins = [a.manager.pin(DOC), b.manager.pin(DOC)]
    await _doc(a)
    await _doc(b)
    writer = Replica()
    await a.write(DOC, writer.write([("m", "before", b"1")]))
    await _until(lambda: b.delivered == [1])
    await asyncio.to_thread(redis_server.kill)
    # Committed while Redis is down: published from a's backlog once Redis is back.
    await a.write(DOC, writer.write([("m", "during", b"2")]))
    await asyncio.to_thread(redis_server.restart, keep_data=False)
    await _until(lambda: b.fanout.stats().resets >= 1, timeout=15)
    await a.write(DOC, writer.write([("m", "after", b"3")]))
    await _until(lambda: b.delivered[-1:] == [3], timeout=15)
    assert await _doc(b) == await _doc(a) == writer.to_py()
    for pin in pins:
        pin.release()


async def test_publishing_never_blocks_while_redis_is_down(pg_dsn: str, redis_server: RedisServer) -> None:
    node = await _node(pg_dsn, redis_server.url)
    try:
        await asyncio.to_thread(redis_server.kill)
        started = time.monotonic()
        writer = Replica()
        for i in range(20):
            await node.write(DOC, writer.write([("m", f"k{i}", b"v")]))
        assert time.monotonic() - started < 5.0
        assert node.fanout.stats().backlog > 0 and not node.fanout.connected
        await asyncio.to_thread(redis_server.restart)
        await _until(lambda: node.fanout.stats().backlog == 0, timeout=15)
        assert node.fanout.stats().published >= 20
    finally:
        await _close(node)
    with pytest.raises(StoreError):  # (the store is closed: a sanity check of the teardown)
        await node.store.append(DOC, [b"\x00"])
