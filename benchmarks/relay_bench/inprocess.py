"""The relay's per-booking path in one process, without sockets: for profiling and for the size test.

Why: the relay suite measures the relay from outside (a real process, real websockets), which is
the figure that counts but tells nothing about where the time goes. This drives the very same
``SyncHub.order_update`` (validation, ordering, stamping, the SQLite group commit with
``synchronous=FULL``) from one coroutine per writer, with pre-signed bookings, so that a profiler
attached to this process sees the relay's work only, and so that the cost of one booking into a
document that already holds N bookings can be compared with one into an empty document.

    python -m benchmarks.relay_bench.inprocess --fill 10000 --measure 1000 [--profile out.prof]

Prints, for an empty day document and for one holding ``--fill`` bookings, the CPU per booking
and bookings per second with ``--inflight`` bookings in flight (each answered after its durable
commit), and their ratio (docs/benchmarks.md, "Relay", cost independent of document size);
with ``--catchup`` a fresh client's verified catch-up of the full document, with ``--restart``
the first durable acknowledgement on it from a manager opened anew on the same files.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.relay_bench.payloads import bookings_doc, marker
from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.reader import highest_stamp
from relay.auth.rights import RightsCache
from relay.documents.manager import DocumentManager
from relay.ops.config import SyncLimits
from relay.ops.metrics import MetricsRegistry
from relay.store.sqlite import SQLiteDocumentStore
from relay.sync.hub import SyncHub

DAY_MS = 86_400_000


def relay_key() -> SigningKey:
    return SigningKey("bench", Ed25519PrivateKey.generate())


def authors(key: SigningKey, n: int) -> list[Author]:
    """``n`` devices of ``n`` users, certified by ``key`` for a day either side of now."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        user = f"u{i:05d}" + "0" * 20
        device = Ed25519PrivateKey.generate()
        cert = issue_certificate(
            key,
            user_id=user,
            roles=[],
            owner_of=[],
            staff_of=[],
            device_public_key=public_bytes(device),
            issued_at_ms=now - DAY_MS,
            expires_at_ms=now + DAY_MS,
        )
        out.append(Author(user, DeviceKey(device, cert), HybridClock(user[:32])))
    return out


def bookings(devices: Sequence[Author], doc: str, count: int, first: int = 0) -> list[bytes]:
    """``count`` pre-signed booking updates spread round-robin over ``devices`` (each device's
    first carries its certificate); slots s1..s12 and parties 1-3, as the relay suite's."""
    replicas = [Replica(a.client_id()) for a in devices]
    out = []
    for j in range(first, first + count):
        k = j % len(devices)
        _, update = devices[k].book(replicas[k], doc, f"s{j % 12 + 1}", 1 + j % 3, note=marker(k, j))
        out.append(update)
    return out


class Bench:
    """A relay's hub, manager and SQLite store in this process, no transport."""

    def __init__(self, root: Path, key: SigningKey) -> None:
        self.root = root
        self.key = key
        self.store: SQLiteDocumentStore | None = None
        self.manager: DocumentManager | None = None
        self.hub: SyncHub | None = None

    async def __aenter__(self) -> Bench:
        limits = SyncLimits()
        self.store = await SQLiteDocumentStore.open(self.root)
        self.manager = DocumentManager(
            self.store,
            highest_stamp=highest_stamp,
            idle_seconds=3600,
            max_documents=limits.max_loaded_docs,
        )
        await self.manager.start()
        key = self.key
        self.hub = SyncHub(
            manager=self.manager,
            tokens=None,  # type: ignore[arg-type]  # no connections here
            rights=RightsCache(),
            signing_key=lambda: key,
            trusted_keys=lambda: {key.kid: key.public},
            epoch=self.store.epoch,
            metrics=MetricsRegistry(),
            limits=limits,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            await self.store.close()

    async def push(self, doc: str, updates: Sequence[bytes], inflight: int) -> float:
        """Order every update with at most ``inflight`` unanswered (answered once durable);
        returns the wall seconds."""
        hub = self.hub
        assert hub is not None
        sem = asyncio.Semaphore(inflight)
        done: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        for u in updates:
            await sem.acquire()
            fut: asyncio.Future[None] = loop.create_future()
            done.append(fut)

            def durable(result: Any, checked: Any, extra: Any, fut: asyncio.Future[None] = fut) -> None:
                sem.release()
                fut.set_result(None)

            ordered = await hub.order_update(doc, u, durable)

            def settled(outcome: Any, fut: asyncio.Future[None] = fut) -> None:
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                elif not fut.done() and outcome.update_seq is None:
                    sem.release()
                    fut.set_result(None)

            ordered.add_done_callback(settled)
        await asyncio.gather(*done)
        return time.perf_counter() - t0


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    key = relay_key()
    devices = authors(key, args.devices)
    empty_doc, full_doc = bookings_doc("inprocE"), bookings_doc("inprocF")
    both = bookings(devices, full_doc, args.fill + args.measure + 1)
    fill, probe_full, after_restart = both[: args.fill], both[args.fill : -1], both[-1]
    probe_empty = bookings(devices, empty_doc, args.measure)
    out: dict[str, Any] = {"fill": args.fill, "measure": args.measure, "inflight": args.inflight}
    with tempfile.TemporaryDirectory(prefix="inprocess-") as tmp:
        async with Bench(Path(tmp), key) as bench:
            t = time.process_time()
            out["fill_wall_s"] = await bench.push(full_doc, fill, args.inflight) if fill else 0.0
            out["fill_cpu_s"] = time.process_time() - t
            assert bench.store is not None
            # A compaction the fill started would land in the first measured phase: let it end.
            await bench.store.wait_idle()
            prof = cProfile.Profile() if args.profile else None
            for name, doc, probe in (("empty", empty_doc, probe_empty), ("full", full_doc, probe_full)):
                if prof is not None and name == args.profile_which:
                    prof.enable()
                c0, done0 = time.process_time(), bench.store.compactions_done
                wall = await bench.push(doc, probe, args.inflight)
                cpu = time.process_time() - c0
                if prof is not None and name == args.profile_which:
                    prof.disable()
                out[name] = {
                    "cpu_per_update_s": cpu / len(probe),
                    "updates_per_s": len(probe) / wall,
                    "compactions": bench.store.compactions_done - done0,
                }
            if prof is not None:
                prof.dump_stats(args.profile)
            if args.catchup:
                out["catchup"] = await catch_up(bench, full_doc)
        if args.restart:
            # A new manager and store on the same files: what a relay restarted after SIGKILL
            # finds (SQLite's journal makes the committed state the same either way).
            async with Bench(Path(tmp), key) as bench:
                if prof is not None and args.profile_which == "restart":
                    prof.enable()
                c0 = time.process_time()
                out["restart"] = await first_ack(bench, full_doc, after_restart)
                out["restart"]["cpu_s"] = time.process_time() - c0
                if prof is not None and args.profile_which == "restart":
                    prof.disable()
                    prof.dump_stats(args.profile)
    out["ratio_rate_full_vs_empty"] = out["full"]["updates_per_s"] / out["empty"]["updates_per_s"]
    out["ratio_cpu_full_vs_empty"] = out["full"]["cpu_per_update_s"] / out["empty"]["cpu_per_update_s"]
    return out


async def catch_up(bench: Bench, doc: str) -> dict[str, Any]:
    """A fresh client's catch-up of ``doc``: the relay's answer to an empty state vector, then
    the client's validation of it (every record's signature, every certificate) and applying it."""
    from crdt_core.certs import CertificateCache
    from crdt_core.clientids import forget_derived
    from crdt_core.validation import validate_update

    assert bench.manager is not None
    forget_derived()  # the relay in this process derived every signer's client ids; a client has not
    c0, t0 = time.process_time(), time.perf_counter()
    state, _ = await bench.manager.diff(doc, b"\x00")
    relay_s = time.perf_counter() - t0
    relay_cpu = time.process_time() - c0
    c0, t0 = time.process_time(), time.perf_counter()
    client = Replica()
    checked = validate_update(doc, client, state, CertificateCache({bench.key.kid: bench.key.public}))
    verified_s = time.perf_counter() - t0
    client.apply_update(state)
    client_s = time.perf_counter() - t0
    return {
        "bytes": len(state),
        "records": len(checked.records),
        "relay_s": relay_s,
        "relay_cpu_s": relay_cpu,
        "client_validate_s": verified_s,
        "client_total_s": client_s,
        "client_cpu_s": time.process_time() - c0,
    }


async def first_ack(bench: Bench, doc: str, update: bytes) -> dict[str, Any]:
    """From the first update into ``doc`` on a fresh manager to its durable commit: the load of
    the whole document, validating, stamping and the commit."""
    assert bench.hub is not None and bench.manager is not None
    t0 = time.perf_counter()
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def durable(result: Any, checked: Any, extra: Any) -> None:
        done.set_result(time.perf_counter() - t0)

    await bench.hub.order_update(doc, update, durable)
    loaded = time.perf_counter() - t0
    return {"first_ack_s": await done, "ordered_s": loaded}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fill", type=int, default=10_000, help="bookings already in the full document")
    p.add_argument("--measure", type=int, default=1_000, help="bookings timed into each document")
    p.add_argument("--devices", type=int, default=50, help="signing devices (writers)")
    p.add_argument("--inflight", type=int, default=32, help="bookings in flight at once")
    p.add_argument("--profile", help="write a cProfile of one measured phase here")
    p.add_argument("--profile-which", choices=("empty", "full", "restart"), default="full")
    p.add_argument("--catchup", action="store_true", help="time a fresh client's verified catch-up")
    p.add_argument("--restart", action="store_true", help="time the first ack after reopening the store")
    res = asyncio.run(measure(p.parse_args(argv)))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
