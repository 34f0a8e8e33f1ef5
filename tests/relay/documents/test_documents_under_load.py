"""Hammer: stamped claims from many writers while documents are evicted, unloaded, reloaded and
compacted underneath them. Nothing acknowledged may be lost, and seqs and stamps stay gap-free."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.documents.results import Applied, CapacityError, StampSequence
from relay.store import SQLiteDocumentStore

DOCS = [f"bookings:shop:2025-01-{d:02d}" for d in range(1, 6)]


def claim_key(replica: Replica, update: bytes) -> str:
    probe = Replica()
    probe.apply_update(update)
    (key,) = probe.keys("claims")
    return key


def stamp_claim(replica: Replica, key: str, stamps: StampSequence) -> bytes | None:
    if replica.has_key("stamps", key):  # idempotent, as the relay's stamper must be
        return None
    return replica.write([("stamps", key, str(stamps.next()).encode())])


def highest_stamp(replica: Replica) -> int:
    return max((int(v) for _, v in replica.items("stamps")), default=0)


async def test_unload_reload_and_compaction_under_load_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(7)
    store = await SQLiteDocumentStore.open(tmp_path, compact_min_bytes=0)
    manager = DocumentManager(
        store, max_documents=3, idle_seconds=0, sweep_interval=0.001, highest_stamp=highest_stamp
    )
    await manager.start()
    acked: dict[str, dict[str, int]] = {doc: {} for doc in DOCS}  # doc -> claim -> stamp
    seqs: dict[str, list[int]] = {doc: [] for doc in DOCS}
    resends_noop = [0]
    done = asyncio.Event()

    async def submit(doc: str, update: bytes) -> Applied[str]:
        while True:
            try:
                return await manager.submit(doc, update, claim_key, stamp_claim)
            except CapacityError:  # transient by contract: every loaded doc was busy
                await asyncio.sleep(0)

    async def writer(w: int) -> None:
        # One client writing to several documents: each document sees gaps in its clocks, so
        # many updates arrive before their dependencies and are parked by the engine.
        client = Replica()
        for i in range(40):
            doc = rng.choice(DOCS)
            key = f"w{w}-{i}"
            update = client.write([("claims", key, b"claim")])
            result = await submit(doc, update)
            assert result.update_seq is not None and result.extra_seq is not None
            acked[doc][key] = result.stamps.start
            seqs[doc] += [result.update_seq, result.extra_seq]
            if rng.random() < 0.2:  # a re-send in the middle of it all
                again = await submit(doc, update)
                assert again.stamps == range(0)
                if again.update_seq is not None:  # stored again only if compaction forgot it
                    seqs[doc].append(again.update_seq)
                else:
                    resends_noop[0] += 1

    async def unloader() -> None:
        while not done.is_set():
            await manager.unload(rng.choice(DOCS), force=True)
            await asyncio.sleep(0)

    async def catching_up() -> None:
        while not done.is_set():
            doc = rng.choice(DOCS)
            expected = set(acked[doc])
            try:
                diff, _ = await manager.diff(doc, b"\x00")
            except CapacityError:
                await asyncio.sleep(0)
                continue
            peer = Replica()
            peer.apply_update(diff)
            assert expected <= peer.keys("claims"), "catch-up lost an acknowledged claim"

    background = [asyncio.ensure_future(unloader()), asyncio.ensure_future(catching_up())]
    await asyncio.gather(*(writer(w) for w in range(20)))
    done.set()
    await asyncio.gather(*background)
    stats = manager.stats()
    await manager.close()
    await store.close()
    assert stats.loads > 50 and stats.unloads > 50, stats
    assert resends_noop[0] > 20
    store_stats = None

    async with SQLiteDocumentStore(tmp_path) as reopened:
        store_stats = await reopened.stats()
        for doc in DOCS:
            stored = await reopened.load(doc)
            replica = Replica()
            if stored.snapshot:
                replica.apply_update(stored.snapshot)
            for _, update in stored.updates:
                replica.apply_update(update)
            claims = replica.keys("claims")
            stamps = {key: int(value) for key, value in replica.items("stamps")}
            assert set(acked[doc]) == claims
            assert {k: stamps[k] for k in acked[doc]} == acked[doc]
            assert sorted(stamps.values()) == list(range(1, len(claims) + 1)), "stamps not gap-free"
            assert sorted(seqs[doc]) == list(range(1, stored.seq + 1)), "seqs not gap-free"
            assert stored.next_stamp == len(claims) + 1
    assert store_stats.compactions == 0  # (counters are per open; the data was compacted before)
    assert store_stats.snapshot_bytes > 0
