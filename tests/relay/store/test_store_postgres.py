"""What only the PostgreSQL document store does: several nodes on one database, migrations, replica.

Two store objects on one database stand for two relay nodes (each has its own writer
connection, queue and group commits; nothing in memory is shared). Real PostgreSQL servers
throughout: the worker's shared one, and private ones for the replica and the crash tests.
"""

from __future__ import annotations

import asyncio
import os
import random

import asyncpg
import pytest

from crdt_core.engine import Replica
from relay.store import PostgresDocumentStore, StampConflictError, StoreError
from relay.store.pg_migrations import DOCUMENT_COMPONENT, DOCUMENT_MIGRATIONS
from tests.support.servers.postgres import PostgresServer


def contents(stored: object) -> set[str]:
    replica = Replica()
    snapshot = getattr(stored, "snapshot", None)
    if snapshot is not None:
        replica.apply_update(snapshot)
    for _, update in getattr(stored, "updates", ()):
        replica.apply_update(update)
    return set(replica.to_py().get("m", {}))


async def test_two_nodes_keep_seqs_and_stamps_unique_and_gap_free(pg_dsn: str) -> None:
    """Writers on two nodes stamp the same documents; the row lock serialises them per document."""
    nodes = [await PostgresDocumentStore.open(pg_dsn) for _ in range(2)]
    docs = ["bookings:s:1", "bookings:s:2"]
    results: list[tuple[int, str, str, int, range]] = []  # node, doc, key, seq, stamps
    conflicts = 0

    async def writer(node: int, w: int) -> None:
        nonlocal conflicts
        store = nodes[node]
        clients = {doc: Replica() for doc in docs}  # one writer clock per document
        rng = random.Random(w)
        for i in range(25):
            doc = rng.choice(docs)
            key = f"n{node}w{w}i{i}"
            stamped = i % 2 == 0
            update = clients[doc].write([("m", key, b"x")])  # retried as is after a conflict
            while True:
                base = (await store.load(doc)).next_stamp
                try:
                    result = await store.append(
                        doc, [update], stamp_base=base if stamped else None, stamp_count=1 if stamped else 0
                    )
                except StampConflictError:
                    conflicts += 1  # another writer (maybe the other node) took `base` first
                    continue
                results.append((node, doc, key, result.seq, result.stamps))
                break

    try:
        await asyncio.gather(*(writer(n, w) for n in range(2) for w in range(6)))
        for doc in docs:
            mine = [r for r in results if r[1] == doc]
            assert sorted(r[3] for r in mine) == list(range(1, len(mine) + 1)), "seqs not unique/gap-free"
            stamps = sorted(s for r in mine for s in r[4])
            assert stamps == list(range(1, len(stamps) + 1)), "stamps not unique/gap-free"
            stored = await nodes[0].load(doc)
            assert stored.seq == len(mine) and stored.next_stamp == len(stamps) + 1
            assert contents(stored) == {r[2] for r in mine}
        assert conflicts > 0, "the writers never raced: the test did not exercise the lock"
        # Both nodes wrote the same documents interleaved (not one after the other).
        switches = 0
        for doc in docs:
            by_seq = sorted((r[3], r[0]) for r in results if r[1] == doc)
            switches += sum(1 for a, b in zip(by_seq, by_seq[1:], strict=False) if a[1] != b[1])
        assert switches >= 4, f"only {switches} node switches: the nodes did not write concurrently"
    finally:
        for store in nodes:
            await store.close()


async def test_a_stale_stamp_base_from_another_node_is_refused_alone(pg_dsn: str) -> None:
    a = await PostgresDocumentStore.open(pg_dsn)
    b = await PostgresDocumentStore.open(pg_dsn)
    try:
        client = Replica()
        assert (
            await a.append("d", [client.write([("m", "a", b"1")])], stamp_base=1, stamp_count=1)
        ).stamps == range(1, 2)
        # Node b still believes the next stamp is 1. In one group commit: its stale stamped append
        # and a plain append; only the stale one is refused.
        stale = b.enqueue_append("d", [client.write([("m", "b", b"2")])], stamp_base=1, stamp_count=1)
        plain = b.enqueue_append("d", [client.write([("m", "c", b"3")])])
        with pytest.raises(StampConflictError):
            await stale
        assert (await plain).seqs == (2,)
        stored = await b.load("d")
        assert (stored.seq, stored.next_stamp) == (2, 2)
        assert contents(stored) == {"a", "c"}
    finally:
        await a.close()
        await b.close()


async def test_compaction_on_one_node_loses_no_append_of_another(pg_dsn: str) -> None:
    writer_node = await PostgresDocumentStore.open(pg_dsn, auto_compact=False)
    compactor_node = await PostgresDocumentStore.open(pg_dsn, auto_compact=False)
    acked: set[str] = set()
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        client = Replica()
        for i in range(40):
            key = f"w{w}-{i}"
            await writer_node.append("hot", [client.write([("m", key, os.urandom(20))])])
            acked.add(key)

    async def compactor() -> int:
        done = 0
        while not stop.is_set():
            if await compactor_node.compact("hot") is not None:
                done += 1
            await asyncio.sleep(0)
        return done

    async def loader() -> None:
        while not stop.is_set():
            expected = set(acked)
            assert expected <= contents(await compactor_node.load("hot"))

    try:
        compacting = asyncio.ensure_future(compactor())
        loading = asyncio.ensure_future(loader())
        await asyncio.gather(*(writer(w) for w in range(8)))
        stop.set()
        await loading
        compactions = await compacting
        assert compactions > 3
        stored = await writer_node.load("hot")
        assert contents(stored) == acked
        assert stored.seq == len(acked) and stored.snapshot_seq > 0
    finally:
        await writer_node.close()
        await compactor_node.close()


async def test_migrations_run_once_when_nodes_start_together(pg_dsn: str) -> None:
    stores = await asyncio.gather(*(PostgresDocumentStore.open(pg_dsn) for _ in range(4)))
    try:
        assert len({s.epoch for s in stores}) == 1, "nodes sharing a database must share its epoch"
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT version FROM schema_migrations WHERE component = $1", DOCUMENT_COMPONENT
            )
            assert sorted(r["version"] for r in rows) == [m.version for m in DOCUMENT_MIGRATIONS]
            assert await conn.fetchval("SELECT count(*) FROM relay_meta WHERE key = 'epoch'") == 1
        finally:
            await conn.close()
    finally:
        for s in stores:
            await s.close()


async def test_refuses_a_database_with_a_newer_schema(pg_dsn: str) -> None:
    async with PostgresDocumentStore(pg_dsn):
        pass
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (component, version, description) VALUES ($1, $2, 'future')",
            DOCUMENT_COMPONENT,
            len(DOCUMENT_MIGRATIONS) + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer"):
        await PostgresDocumentStore.open(pg_dsn)


async def test_unreachable_database_is_a_clear_error_not_a_hang() -> None:
    with socket_closed_port() as port:
        with pytest.raises(StoreError, match="cannot open the PostgreSQL store"):
            await asyncio.wait_for(
                PostgresDocumentStore.open(f"postgresql://nobody@127.0.0.1:{port}/none", connect_timeout_s=2),
                10,
            )


class socket_closed_port:
    """A loopback port nobody listens on (bound, then released)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


async def test_replica_reads_never_serve_a_stale_document(pg_private_server: PostgresServer) -> None:
    primary = pg_private_server
    dsn = primary.create_database("docs")
    replica = primary.start_replica()
    writer = await PostgresDocumentStore.open(dsn, auto_compact=False)
    reader = await PostgresDocumentStore.open(
        dsn, replica_url=replica.dsn("docs"), auto_compact=False, connect_timeout_s=2
    )
    control = await asyncpg.connect(replica.dsn("docs"))
    try:
        client = Replica()
        for i in range(5):
            await writer.append("d", [client.write([("m", f"k{i}", b"v")])], stamp_base=i + 1, stamp_count=1)
        await primary.wait_replayed(replica)
        stored = await reader.load("d")
        assert (stored.seq, stored.next_stamp, len(contents(stored))) == (5, 6, 5)
        assert (reader.replica_catch_ups, reader.replica_fallbacks) == (0, 0)

        # Freeze the replica: from now on it lags behind every write.
        await control.execute("SELECT pg_wal_replay_pause()")
        for i in range(5, 8):
            await writer.append("d", [client.write([("m", f"k{i}", b"v")])], stamp_base=i + 1, stamp_count=1)
        stored = await reader.load("d")
        assert (stored.seq, stored.next_stamp, len(contents(stored))) == (8, 9, 8)
        assert [s for s, _ in stored.updates] == list(range(1, 9))
        assert reader.replica_catch_ups == 1
        # The replica itself really is behind (so the tail above came from the primary).
        assert await control.fetchval("SELECT seq FROM doc_head WHERE doc_id = 'd'") == 5

        # The primary compacts rows the replica has not seen: the load reads the primary whole.
        await writer.compact("d")
        await writer.append("d", [client.write([("m", "k8", b"v")])])
        stored = await reader.load("d")
        assert (stored.seq, len(contents(stored))) == (9, 9)
        assert reader.replica_fallbacks == 1

        # A document only the primary has yet.
        await writer.append("new", [client.write([("m", "n", b"v")])])
        assert contents(await reader.load("new")) == {"n"}

        # Operator statistics come from the (lagging) replica: one document, as it saw them.
        assert (await reader.stats()).documents == 1

        await control.execute("SELECT pg_wal_replay_resume()")
        await primary.wait_replayed(replica)
        before = reader.replica_catch_ups + reader.replica_fallbacks
        stored = await reader.load("d")
        assert (stored.seq, len(contents(stored))) == (9, 9)
        assert reader.replica_catch_ups + reader.replica_fallbacks == before  # all from the replica
        assert (await reader.stats()).documents == 2

        # The replica goes away: loads and statistics fall back to the primary.
        replica.stop()
        fallbacks = reader.replica_fallbacks
        assert contents(await asyncio.wait_for(reader.load("new"), 15)) == {"n"}
        assert reader.replica_fallbacks == fallbacks + 1
        assert (await asyncio.wait_for(reader.stats(), 15)).documents == 2
    finally:
        await control.close()
        await writer.close()
        await reader.close()


async def test_lost_connections_fail_the_commit_then_reconnect(pg_dsn: str) -> None:
    """The server drops the store's sessions (failover, restart, idle kill): the append in flight
    fails with StoreError rather than hanging, and the next one reconnects and commits."""
    store = await PostgresDocumentStore.open(pg_dsn, connect_timeout_s=2, command_timeout_s=5)
    admin = await asyncpg.connect(pg_dsn)
    try:
        client = Replica()
        assert (await store.append("d", [client.write([("m", "a", b"1")])])).seq == 1
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert killed >= 1
        lost = client.write([("m", "maybe", b"x")])
        try:
            await asyncio.wait_for(store.append("d", [lost]), 20)
        except StoreError:
            pass  # expected: the writer's session was gone; the caller resends
        result = await asyncio.wait_for(store.append("d", [client.write([("m", "b", b"2")])]), 20)
        stored = await asyncio.wait_for(store.load("d"), 20)
        assert result.seq == stored.seq
        assert {"a", "b"} <= contents(stored)
        assert [s for s, _ in stored.updates] == list(range(1, stored.seq + 1))
    finally:
        await admin.close()
        await store.close()


async def test_a_database_emptied_under_a_running_node_takes_appends_again(pg_dsn: str) -> None:
    """Regression: the node remembers which head rows exist (to skip creating them); when the
    database is restored or emptied under it, the next append must recreate them, not fail."""
    store = await PostgresDocumentStore.open(pg_dsn)
    admin = await asyncpg.connect(pg_dsn)
    try:
        client = Replica()
        assert (await store.append("d", [client.write([("m", "a", b"1")])])).seq == 1
        await admin.execute("TRUNCATE doc_head, doc_log, doc_snapshot")
        fresh = Replica()
        assert (await store.append("d", [fresh.write([("m", "b", b"2")])])).seqs == (1,)
        assert contents(await store.load("d")) == {"b"}
    finally:
        await admin.close()
        await store.close()


async def test_a_node_stalled_mid_transaction_does_not_block_the_others_for_long(pg_dsn: str) -> None:
    """A node frozen while it holds a document's row lock (partition, stopped VM) loses its
    session after ``idle_in_transaction_s``, so the other nodes can write that document again."""
    stalled = await PostgresDocumentStore.open(pg_dsn, idle_in_transaction_s=0.5)
    other = await PostgresDocumentStore.open(pg_dsn)
    try:
        client = Replica()
        await stalled.append("d", [client.write([("m", "a", b"1")])])
        # What the stalled node's writer did before it froze: lock the head, then nothing.
        conn = stalled._writer
        assert conn is not None
        frozen = conn.transaction()
        await frozen.start()
        await conn.execute("SELECT seq FROM doc_head WHERE doc_id = 'd' FOR UPDATE")
        started = asyncio.get_running_loop().time()
        result = await asyncio.wait_for(other.append("d", [client.write([("m", "b", b"2")])]), 10)
        waited = asyncio.get_running_loop().time() - started
        assert result.seqs == (2,)
        assert 0.3 < waited < 5, f"waited {waited:.2f}s: the lock was not held, or held too long"
    finally:
        await stalled.close()
        await other.close()
