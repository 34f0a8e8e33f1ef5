"""One chaos client process: the real client code (LocalClient + SyncService) on its own profile.

Run by the harness as ``python -m tests.chaos.client_worker --plan P --name N --seed S`` (live:
act and observe until SIGTERM, or until it is SIGKILLed) or with ``--final OUT`` (one sync round
with the relay, then write the documents and verdicts it holds to OUT as JSON).

What it writes to its journal (:mod:`tests.chaos.journal`), durably, because the checker judges
the whole system by it:

* ``ack``: the relay acknowledged outbox entry ``entry`` (its doc, what it was, and the update's
  bytes), written *before* the entry leaves the outbox, so no ack is ever forgotten;
* ``verdict``: a bookings document's verdict as this replica computed it, whenever it changed;
* ``action`` / ``action_error`` / ``rejected``: what the worker did and what was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from client.local.client import ClientError, LocalClient
from client.storage.secrets import SecretStore
from client.storage.store import OutboxEntry
from client.sync.auth import AuthClient
from client.sync.service import SyncError, SyncService
from crdt_core.verdict import ClaimState, Verdict
from tests.chaos.journal import Journal, read_journal

Compact = dict[str, Any]


class RecordingClient(LocalClient):
    """A LocalClient that journals every acknowledged entry before dropping it from the outbox."""

    journal: Journal | None = None

    async def mark_acked(self, entry_id: int) -> bool:
        entry = await self._pending(entry_id)
        if entry is not None and self.journal is not None:
            self.journal.write(
                "ack", entry=entry_id, doc=entry.doc_id, entity=entry.entity_type,
                entity_id=entry.entity_id, op=entry.operation,
                update=base64.b64encode(entry.payload).decode(),
            )  # fmt: skip
        return await super().mark_acked(entry_id)

    async def mark_rejected(self, entry_id: int, code: str, reason: str) -> OutboxEntry | None:
        entry = await self._pending(entry_id)
        if entry is not None and self.journal is not None:
            self.journal.write(
                "rejected", entry=entry_id, doc=entry.doc_id, entity=entry.entity_type,
                entity_id=entry.entity_id, op=entry.operation, code=code, reason=reason,
            )  # fmt: skip
        return await super().mark_rejected(entry_id, code, reason)

    async def _pending(self, entry_id: int) -> OutboxEntry | None:
        return next((e for e in await self.pending_entries() if e.id == entry_id), None)


def compact_verdict(verdict: Verdict) -> Compact:
    """The verdict in a JSON-able, comparable form."""
    return {
        "prefix": verdict.stamp_prefix,
        "slots": {s: [v.capacity, v.seats_taken] for s, v in sorted(verdict.slots.items())},
        "claims": {
            rid: [c.state.value, c.stamp, c.final, c.holds_seats, c.party, c.slot, c.rank]
            for rid, c in sorted(verdict.claims.items())
        },
    }


def doc_digest(document: dict[str, dict[str, bytes]]) -> str:
    canonical = {root: {k: v.hex() for k, v in sorted(m.items())} for root, m in sorted(document.items())}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()


def dump_tasks() -> None:
    """Every task's whole await chain (``Task.print_stack`` shows only the outermost frame)."""
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        coro: Any = task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                code = frame.f_code
                print(f"  {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    sys.stderr.flush()


class Worker:
    def __init__(self, plan: dict[str, Any], name: str, seed: int) -> None:
        self.plan = plan
        self.name = name
        self.me: dict[str, Any] = plan["clients"][name]
        self.home = Path(self.me["home"])
        self.journal = Journal(Path(self.me["journal"]))
        generation = sum(1 for r in read_journal(Path(self.me["journal"])) if r["kind"] == "start")
        self.rng = random.Random(f"{seed}/{name}/{generation}")
        self.docs = [(shop, day) for shop in plan["shops"] for day in plan["days"]]
        self.last: dict[str, Compact] = {}
        self.local: RecordingClient | None = None

    async def open(self) -> tuple[RecordingClient, SyncService]:
        local = await RecordingClient.open(self.home, secret_store=SecretStore(self.home, backend="file"))
        assert isinstance(local, RecordingClient)
        local.journal = self.journal
        self.local = local
        url = self.plan["url"]
        svc = SyncService(
            local, url, auth=AuthClient(local, url), backoff_initial_s=0.05, backoff_max_s=0.5,
            retry_initial_s=0.1, retry_max_s=1.0, poll_interval_s=0.05, connect_timeout_s=3.0,
            response_timeout_s=float(self.plan.get("response_timeout_s", 5.0)),
            rng=random.Random(self.rng.random()),
        )  # fmt: skip
        return local, svc

    def active(self, lag: int = 0) -> list[tuple[str, str]]:
        """The documents in play now: all of them, or (with ``day_window_s``) one day per shop at a
        time, moving on every window (the same for every process: it follows the wall clock), so
        documents stay small in a long run. ``lag`` 1 adds the previous window's day."""
        window = self.plan.get("day_window_s")
        if not window:
            return self.docs
        days = self.plan["days"]
        now = int(time.time() / window)
        picked = {days[(now - k) % len(days)] for k in range(lag + 1)}
        return [(shop, day) for shop, day in self.docs if day in picked]

    async def observe(self, everything: bool = False) -> None:
        """Journal each document's verdict when it changed: whole the first time in this process,
        then only the claims that changed (``set``) or vanished (``gone``), so journals stay small."""
        assert self.local is not None
        for shop, day in self.docs if everything else self.active(lag=1):
            doc = f"bookings:{shop}:{day}"
            now = compact_verdict(await self.local.verdict(shop, day))
            before = self.last.get(doc)
            if now == before:
                continue
            self.last[doc] = now
            if before is None:
                self.journal.write(
                    "verdict",
                    doc=doc,
                    full=True,
                    prefix=now["prefix"],
                    slots=now["slots"],
                    set=now["claims"],
                    gone=[],
                )
            else:
                changed = {r: c for r, c in now["claims"].items() if before["claims"].get(r) != c}
                gone = sorted(set(before["claims"]) - set(now["claims"]))
                self.journal.write(
                    "verdict",
                    doc=doc,
                    full=False,
                    prefix=now["prefix"],
                    slots=now["slots"],
                    set=changed,
                    gone=gone,
                )

    async def act(self) -> None:
        assert self.local is not None
        local, rng = self.local, self.rng
        shop, day = rng.choice(self.active())
        slot = rng.choice(self.plan["slots"])
        roll = rng.random()
        try:
            if self.me["role"] == "customer":
                if roll < 0.6:
                    res = await local.book(shop, day, slot, party=rng.choice([1, 1, 2]))
                    self.journal.write("action", op="book", rid=res.reservation_id, doc=res.doc_id)
                elif roll < 0.85:
                    mine = [
                        r for r in await local.reservations()
                        if r.state not in (ClaimState.CANCELLED, ClaimState.DECLINED)
                        and r.rejected_code is None
                    ]  # fmt: skip
                    if mine:
                        r = rng.choice(sorted(mine, key=lambda r: r.reservation_id))
                        await local.cancel(r.reservation_id)
                        self.journal.write("action", op="cancel", rid=r.reservation_id, doc=r.doc_id)
            else:
                rows = [
                    r for r in await local.day_reservations(shop, day)
                    if r.state not in (ClaimState.CANCELLED, ClaimState.DECLINED)
                ]  # fmt: skip
                if rows:
                    r = rng.choice(sorted(rows, key=lambda r: r.reservation_id))
                    if roll < 0.6 and not r.staff_confirmed:
                        await local.confirm(r.reservation_id)
                        self.journal.write("action", op="confirm", rid=r.reservation_id, doc=r.doc_id)
                    elif roll < 0.7:
                        await local.decline(r.reservation_id, "chaos")
                        self.journal.write("action", op="decline", rid=r.reservation_id, doc=r.doc_id)
                    elif roll < 0.75 and r.state is ClaimState.CONFIRMED:
                        await local.no_show(r.reservation_id)
                        self.journal.write("action", op="no_show", rid=r.reservation_id, doc=r.doc_id)
        except ClientError as exc:
            self.journal.write("action_error", error=f"{type(exc).__name__}: {exc}")

    async def live(self) -> None:
        local, svc = await self.open()
        self.journal.write("start", mode="live")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # a stuck worker shows where it waits
        task = asyncio.create_task(svc.run())

        def ended(t: asyncio.Task[None]) -> None:
            if not stop.is_set():  # the loop gave up by itself: the checker calls that a violation
                error = repr(t.exception()) if not t.cancelled() and t.exception() else svc.last_error
                self.journal.write("sync_ended", error=error)

        task.add_done_callback(ended)
        interval = float(self.plan.get("action_interval_s", 0.25))
        try:
            while not stop.is_set():
                await self.act()
                svc.wake()
                await self.observe()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval * self.rng.uniform(0.5, 1.5))
        finally:
            svc.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            await self.observe(everything=True)
            await local.close()
            self.journal.write("stop", mode="live")

    async def final(self, out: Path, rounds: int, barrier: Path | None) -> None:
        """Sync with a quiet network until the outbox is empty, then (after every peer got that far,
        when ``barrier`` is given) once more to pull what the others sent; report what it holds."""
        local, svc = await self.open()
        self.journal.write("start", mode="final")
        errors: list[str] = []

        async def sync() -> int | None:
            try:
                summary = await svc.sync_once(timeout_s=60.0, retry_window_s=5.0, settle_s=0.3)
            except SyncError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.5)
                return None
            return summary.pending

        try:
            for _ in range(rounds):
                if await sync() == 0:
                    break
            if barrier is not None:
                (barrier / f"{self.name}.flushed").touch()
                peers = len(self.plan["clients"])
                for _ in range(1200):
                    if len(list(barrier.glob("*.flushed"))) >= peers:
                        break
                    await asyncio.sleep(0.05)
                for _ in range(rounds):
                    if await sync() is not None:
                        break
            await self.observe(everything=True)
            counts = await local.outbox_counts()
            report = {
                "name": self.name,
                "pending": counts.pending,
                "rejected": counts.rejected,
                "errors": errors,
                "digests": {d: doc_digest(await local.document(d)) for d in self.doc_ids()},
                "verdicts": dict(self.last),
            }
        finally:
            await local.close()
        out.write_text(json.dumps(report, indent=1, sort_keys=True))
        self.journal.write("stop", mode="final")

    def doc_ids(self) -> list[str]:
        return [f"bookings:{shop}:{day}" for shop, day in self.docs]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--plan", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--final", type=Path, help="one quiet sync, then write the replica's state here")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--barrier", type=Path, help="a directory where the final processes wait for each other")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    worker = Worker(json.loads(args.plan.read_text()), args.name, args.seed)
    try:
        if args.final is not None:
            asyncio.run(worker.final(args.final, args.rounds, args.barrier))
        else:
            asyncio.run(worker.live())
    finally:
        worker.journal.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
