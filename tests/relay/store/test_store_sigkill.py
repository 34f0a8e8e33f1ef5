"""Durability: every acknowledged update survives SIGKILL of the relay process, many times over.

A child process runs the real store and document manager (group commit, stamping, auto
compaction, documents unloaded and reloaded underneath the writers) and prints one ``ACK`` line per
update *after* ``submit`` returned. The test kills it with SIGKILL at random points, restarts it on
the same data directory, and checks after every kill that each acknowledged claim is stored with
its stamp, that stamps are gap-free and unique, and that seqs were never handed out twice.

It runs against both stores: SQLite in a data directory, and PostgreSQL (a fresh database on a
real server), where "acknowledged" must mean the commit record was flushed by the server.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.store import PostgresDocumentStore, SQLiteDocumentStore
from relay.store.open import AnyDocumentStore

REPO = Path(__file__).resolve().parents[3]

CHILD = r"""
import asyncio, os, random, sys, traceback
from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.store import PostgresDocumentStore, SQLiteDocumentStore

DOCS = ["bookings:s:1", "bookings:s:2", "bookings:s:3"]

def claim_key(replica, update):
    probe = Replica()
    probe.apply_update(update)
    (key,) = probe.keys("claims")
    return key

def stamp(replica, key, stamps):
    if replica.has_key("stamps", key):
        return None
    return replica.write([("stamps", key, str(stamps.next()).encode())])

def highest(replica):
    return max((int(v) for _, v in replica.items("stamps")), default=0)

async def main(location, run):
    if location.startswith("postgresql://"):
        store = await PostgresDocumentStore.open(location, compact_min_bytes=2048)
    else:
        store = await SQLiteDocumentStore.open(location, compact_min_bytes=2048)
    manager = DocumentManager(store, highest_stamp=highest, max_documents=2)
    out = sys.stdout
    out.write("READY\n")
    out.flush()

    async def writer(w):
        clients = {doc: Replica() for doc in DOCS}
        i = 0
        while True:
            doc = DOCS[(w + i) % len(DOCS)]
            key = f"r{run}w{w}i{i}"
            update = clients[doc].write([("claims", key, os.urandom(24))])
            try:
                result = await manager.submit(doc, update, claim_key, stamp)
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(3)  # fail loudly and at once (aiosqlite threads would keep us alive)
            out.write(f"ACK {doc} {key} {result.update_seq} {result.stamps.start}\n")
            out.flush()
            i += 1

    async def churn():
        while True:
            await asyncio.sleep(0.003)
            await manager.unload(random.choice(DOCS), force=True)

    await asyncio.gather(*(writer(w) for w in range(8)), churn())

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


#: Generous deadlines: they only turn a stuck child into a failure instead of a hung test run.
STARTUP_TIMEOUT = 60.0
ACK_TIMEOUT = 30.0


async def run_and_kill(
    directory: Path, location: str, run: int, acks_before_kill: int
) -> list[tuple[str, str, int, int]]:
    """Start the child, SIGKILL it after ``acks_before_kill`` acks; return every complete ACK line."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    errors = directory / f"child-{run}.err"
    with open(errors, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            location,
            str(run),
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
            env=env,
        )
        assert proc.stdout is not None
        lines: list[bytes] = []
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
            assert ready == b"READY\n", (ready, errors.read_text())
            while len(lines) < acks_before_kill:
                line = await asyncio.wait_for(proc.stdout.readline(), ACK_TIMEOUT)
                if not line:
                    break  # the child died on its own: the returncode check below reports it
                lines.append(line)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            # What the child wrote before it died is still in the pipe.
            lines.extend((await asyncio.wait_for(proc.stdout.read(), ACK_TIMEOUT)).splitlines(keepends=True))
            await asyncio.wait_for(proc.wait(), ACK_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, errors.read_text()
    acks = []
    for line in lines:
        if not line.endswith(b"\n"):
            continue  # cut mid-line by the kill: that update was not acknowledged to anyone
        _, doc, key, seq, stamp = line.decode().split()
        acks.append((doc, key, int(seq), int(stamp)))
    return acks


def open_store(location: str) -> AnyDocumentStore:
    if location.startswith("postgresql://"):
        return PostgresDocumentStore(location)
    return SQLiteDocumentStore(location)


async def check(location: str, acked: list[tuple[str, str, int, int]]) -> dict[str, int]:
    sizes = {}
    async with open_store(location) as store:
        for doc in sorted({a[0] for a in acked}):
            stored = await store.load(doc)
            replica = Replica()
            if stored.snapshot is not None:
                replica.apply_update(stored.snapshot)
            for _, update in stored.updates:
                replica.apply_update(update)
            claims = replica.keys("claims")
            stamps = {key: int(value) for key, value in replica.items("stamps")}
            mine = [a for a in acked if a[0] == doc]
            for _, key, seq, stamp in mine:
                assert key in claims, f"acknowledged claim {key} (seq {seq}) lost"
                assert stamps.get(key) == stamp, f"{key}: stamp {stamps.get(key)} stored, {stamp} acked"
                assert seq <= stored.seq
            # Every stored claim (acknowledged or not) got its stamp in the same transaction.
            assert set(stamps) == claims
            assert sorted(stamps.values()) == list(range(1, len(stamps) + 1)), "stamps not gap-free"
            assert stored.next_stamp == len(stamps) + 1
            assert len({a[2] for a in mine}) == len(mine), "a seq was acknowledged twice"
            sizes[doc] = len(claims)
    return sizes


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_acknowledged_updates_survive_sigkill(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    location = request.getfixturevalue("pg_dsn") if backend == "postgres" else str(tmp_path)
    rng = random.Random()
    acked: list[tuple[str, str, int, int]] = []
    kill_points = [0, *(rng.randint(1, 400) for _ in range(6))]
    for run, acks_before_kill in enumerate(kill_points):
        acks = await run_and_kill(tmp_path, location, run, acks_before_kill)
        assert len(acks) >= acks_before_kill
        acked.extend(acks)
        await check(location, acked)
    sizes = await check(location, acked)
    assert sum(sizes.values()) >= len(acked) > 300
