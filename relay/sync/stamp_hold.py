"""The restore stamp hold: after a restore, issue no new stamp until clients had time to re-send.

Why: a relay restored from an *older* backup numbers stamps on after the highest stamp of each
document it holds (``relay.documents.manager``), but stamps it issued after the backup live on only in
its clients. If a new claim took one of those numbers before the client holding that stamp
re-sent it, the client's copy would name a key the relay already filled: a rewrite, refused for
good, and a booking the client saw as final would be lost. So for a while after a restore the
relay stamps nothing new; clients reconnect (the new epoch makes them re-send everything), their
stamps come back and raise each document's counter; then the claims that waited are stamped
after them.

Theory of operation
-------------------
* **Noticing a restore.** The store keeps, beside the documents (so a backup carries it), the
  epoch its documents were last served under (``documents_epoch``). The restore procedure
  replaces the epoch (``DIR/epoch`` deleted; on PostgreSQL the ``relay_meta`` row deleted), so a
  relay that finds a different epoch than the one its documents were served under is serving a
  restored copy. No value at all: a first start (or data written by a relay older than this
  module): recorded, nothing held.
* **The hold** is ``restore_hold_until`` (and ``restore_hold_since``, when it began) in the
  store's meta, written durably before the relay serves, so a relay restarted or SIGKILLed
  during the hold resumes it (for the rest of the window: ``min(until, now + hold)``, so a
  restart with ``--restore-stamp-hold 0`` ends it at once). Every node of a shared store reads
  the same values.
* **During the hold** claims are validated, stored, acknowledged and forwarded as always, but
  get no stamp (:meth:`StampHold.holds`, asked by the hub's stamper under the document's lock):
  they stay tentative, ordered after every stamped claim by every replica's verdict. Stamps a
  client carries back are kept and raise the counter as at any time.
* **When the window ends** every document written since the hold began (the store says which)
  and every document that held a claim in this process is swept, one at a time: under its lock,
  its unstamped claims are stamped in the order the relay stored them (its update log; claims
  already folded into a snapshot first, in the verdict's tentative order), in one append with
  the stamp counter checked, and sent to subscribers as a ``stamp``. Until a document is swept,
  new claims on it keep waiting, so they are stamped after the held ones. Then the meta values
  are deleted. A sweep cut short (SIGKILL, shutdown) runs again at the next start; it stamps
  only claims with no stamp, so nothing is stamped twice.
* **Several nodes** each sweep. Two nodes stamping one document at once is the ordinary stamp
  conflict: one append commits, the other is refused for its stamp base (nothing of it stored),
  its node reloads the document and finds nothing left to stamp.

Why these choices: "documents but no ``epoch`` file" cannot tell a restore, because the epoch is
created by whoever opens the data directory first (the accounts code at start, or any operator
CLI command run before ``serve``); the epoch the documents were served under, kept with them,
can, and works the same on PostgreSQL, where the epoch is a database row. The stored order, not
the tentative HLC order, decides the stamps, as for every claim the relay stamps: first come,
first served at the relay, so a back-dated HLC does not move a claim ahead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from crdt_core.engine import EngineError, Replica
from crdt_core.reader import read_bookings
from crdt_core.schema import Reservation
from crdt_core.verdict import stamp_order
from crdt_core.yupdate import decode_update
from relay.documents.results import ManagerClosedError
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import MetricsRegistry
from relay.store.base import StoredDocument

if TYPE_CHECKING:
    from relay.store.base import DocumentMeta

__all__ = [
    "DEFAULT_HOLD_S",
    "META_LINEAGE",
    "META_SINCE",
    "META_UNTIL",
    "StampHold",
    "held_claims",
    "open_stamp_hold",
]

log = get_logger(__name__)

#: Ten minutes: long enough for clients that were online at the restore to reconnect (they retry
#: within seconds to a minute), short enough that new bookings are not left tentative for long.
DEFAULT_HOLD_S = 600.0
META_LINEAGE = "documents_epoch"
META_UNTIL = "restore_hold_until"
META_SINCE = "restore_hold_since"
#: Documents written this long before the hold began are swept too (clocks of several nodes and
#: of the database differ a little; sweeping one document too many costs a load, nothing else).
SWEEP_MARGIN_S = 300.0
#: How often one document's sweep is tried before it is left for the next start.
SWEEP_ATTEMPTS = 5
BOOKINGS_PREFIX = "bookings:"

StampDoc = Callable[[str], Awaitable[int]]


class StampHold:
    """Whether stamping waits, per document; and the task that ends the hold (:meth:`run`).

    ``until`` ``None``: no hold (none was needed, or it ended): :meth:`holds` is always False.
    """

    def __init__(
        self,
        store: DocumentMeta | None,
        *,
        until: float | None,
        since: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.until = until
        self.since = since if since is not None else clock()
        self._clock = clock
        self._done = until is None
        #: Documents whose held claims are stamped (new claims on them are stamped at once).
        self._swept: set[str] = set()
        #: Documents that held a claim in this process and are not swept yet.
        self._pending: set[str] = set()
        self.held = 0
        self.stamped = 0
        self.swept_docs = 0
        self.ended = asyncio.Event()
        if self._done:
            self.ended.set()

    @property
    def active(self) -> bool:
        """True until every held claim is stamped (the window, then the sweep)."""
        return not self._done

    def window_open(self) -> bool:
        return self.until is not None and not self._done and self._clock() < self.until

    def holds(self, doc: str) -> bool:
        """Whether new claims of ``doc`` must wait unstamped (asked under the document's lock)."""
        if self._done:
            return False
        return self.window_open() or doc not in self._swept

    def note_held(self, doc: str, claims: int) -> None:
        self._pending.add(doc)
        self.held += claims

    def mark_swept(self, doc: str) -> None:
        """Under the document's lock, as its held claims are stamped: later claims go after them."""
        self._swept.add(doc)
        self._pending.discard(doc)

    def status(self) -> dict[str, Any]:
        """For ``/api/v1/sync/status``."""
        until = self.until if not self._done else None
        return {
            "active": self.active,
            "window_open": self.window_open(),
            "until": None if until is None else _iso(until),
            "remaining_s": 0.0 if until is None else round(max(0.0, until - self._clock()), 3),
            "held_claims": self.held,
            "stamped_claims": self.stamped,
        }

    def register_metrics(self, metrics: MetricsRegistry) -> None:
        active = metrics.gauge(
            "quickslot_restore_stamp_hold_active", "1 while a restore's stamp hold keeps new claims unstamped"
        )
        active.set_function(lambda: 1.0 if self.active else 0.0)
        left = metrics.gauge(
            "quickslot_restore_stamp_hold_remaining_seconds", "Seconds left in the restore's stamp hold"
        )
        left.set_function(lambda: float(self.status()["remaining_s"]))
        held = metrics.gauge(
            "quickslot_restore_held_claims", "Claims left unstamped by the stamp hold (since start)"
        )
        held.set_function(lambda: float(self.held))
        stamped = metrics.gauge(
            "quickslot_restore_held_claims_stamped", "Held claims stamped when the hold ended (since start)"
        )
        stamped.set_function(lambda: float(self.stamped))

    # --- ending the hold ---------------------------------------------------------------------

    async def run(self, stamp_doc: StampDoc) -> None:
        """Wait for the window to close, then stamp what waited (``stamp_doc(doc) -> claims
        stamped``, which calls :meth:`mark_swept` under the document's lock)."""
        if self._done or self.until is None:
            return
        while (left := self.until - self._clock()) > 0:
            await asyncio.sleep(min(left, 60.0))
        log_event(log, "restore stamp hold window closed", held_claims=self.held, since=_iso(self.since))
        failures = 0
        while True:
            try:
                await self._end(stamp_doc)
                return
            except ManagerClosedError:  # shutting down: the next start sweeps
                log_event(log, "restore stamp hold: sweep stopped by shutdown", logging.WARNING)
                return
            except Exception as exc:
                # The store failed to list documents or to clear the hold. Claims must not wait
                # for ever in this process: try again (the task is cancelled at shutdown).
                failures += 1
                log_event(
                    log,
                    "restore stamp hold: sweep failed, retrying",
                    logging.ERROR,
                    error=f"{type(exc).__name__}: {exc}",
                    attempt=failures,
                )
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))

    async def _end(self, stamp_doc: StampDoc) -> None:
        started = time.monotonic()
        assert self._store is not None
        docs = set(await self._store.docs_updated_since(self.since - SWEEP_MARGIN_S))
        failed: list[str] = []
        while True:
            docs |= self._pending
            self._pending.clear()
            docs = {d for d in docs if d.startswith(BOOKINGS_PREFIX) and d not in self._swept}
            if not docs:
                break
            doc = min(docs)
            docs.discard(doc)
            count = await self._sweep_one(doc, stamp_doc)
            if count is None:
                failed.append(doc)
            else:
                self.stamped += count
        # No await since the last look at _pending: nothing can be held past this point.
        self._done = True
        self.ended.set()
        seconds = round(time.monotonic() - started, 3)
        if failed:
            # The meta stays, so the next start sweeps again (it stamps only what has no stamp).
            log_event(
                log,
                "restore stamp hold ended with documents left",
                logging.ERROR,
                documents=failed,
                seconds=seconds,
            )
            return
        await self._store.put_meta({META_UNTIL: None, META_SINCE: None})
        log_event(
            log,
            "restore stamp hold ended",
            stamped_claims=self.stamped,
            documents=self.swept_docs,
            seconds=seconds,
        )

    async def _sweep_one(self, doc: str, stamp_doc: StampDoc) -> int | None:
        """Stamp ``doc``'s held claims; ``None`` if every attempt failed (the document is then
        left to the next start's sweep, and new claims on it are stamped at once meanwhile)."""
        for attempt in range(1, SWEEP_ATTEMPTS + 1):
            try:
                count = await stamp_doc(doc)
            except ManagerClosedError:
                raise
            except Exception as exc:  # StoreError, CapacityError, or a bug: not for ever held
                # The append failed (or another node stamped first): the document reloads on its
                # next use; claims that came meanwhile wait again, and the sweep tries again.
                self._swept.discard(doc)
                log_event(
                    log,
                    "restore stamp hold: sweep failed",
                    logging.WARNING,
                    doc=doc,
                    attempt=attempt,
                    error=f"{type(exc).__name__}: {exc}",
                )
                await asyncio.sleep(0.05 * attempt)
                continue
            self.mark_swept(doc)
            self.swept_docs += 1
            if count:
                log_event(log, "restore stamp hold: held claims stamped", doc=doc, claims=count)
            return count
        self.mark_swept(doc)
        return None


def held_claims(replica: Replica, doc: str, stored: StoredDocument) -> list[str]:
    """The document's claims with no stamp, in the order the relay stored them.

    The order is the update log's (seq order); claims already folded into the snapshot come
    first (they were stored earlier), in the verdict's tentative order
    (``crdt_core.verdict.stamp_order``).
    """
    state = read_bookings(replica, doc)
    stamped = {s.reservation for s in state.stamps.values()}
    waiting = {rid: r for rid, r in state.reservations.items() if rid not in stamped}
    if not waiting:
        return []
    position: dict[str, int] = {}
    for _seq, update in stored.updates:
        try:
            decoded = decode_update(update)
        except EngineError:
            continue
        for ins in decoded.inserts:
            if ins.root == Reservation.ROOT and ins.key in waiting:
                position.setdefault(ins.key, len(position))
    folded = stamp_order(r for rid, r in waiting.items() if rid not in position)
    logged = sorted((rid for rid in waiting if rid in position), key=position.__getitem__)
    return [r.id for r in folded] + logged


async def open_stamp_hold(
    store: DocumentMeta, hold_s: float, *, clock: Callable[[], float] = time.time
) -> StampHold:
    """Notice a restore (module docstring), start or resume its hold, and record the lineage."""
    if hold_s < 0:
        raise ValueError("the restore stamp hold must be >= 0 seconds")
    epoch = store.epoch
    now = clock()
    lineage = await store.get_meta(META_LINEAGE)
    if lineage is None:
        await store.put_meta({META_LINEAGE: epoch})
        return StampHold(store, until=None, clock=clock)
    if lineage != epoch:
        if hold_s == 0:
            await store.put_meta({META_LINEAGE: epoch, META_UNTIL: None, META_SINCE: None})
            log_event(
                log,
                "restore noticed; stamp hold disabled",
                logging.WARNING,
                epoch=epoch,
                previous_epoch=lineage,
            )
            return StampHold(store, until=None, clock=clock)
        until = now + hold_s
        await store.put_meta({META_LINEAGE: epoch, META_UNTIL: repr(until), META_SINCE: repr(now)})
        log_event(
            log,
            "restore stamp hold started",
            logging.WARNING,
            epoch=epoch,
            previous_epoch=lineage,
            until=_iso(until),
            hold_s=hold_s,
        )
        return StampHold(store, until=until, since=now, clock=clock)
    until_text = await store.get_meta(META_UNTIL)
    if until_text is None:
        return StampHold(store, until=None, clock=clock)
    since_text = await store.get_meta(META_SINCE)
    until = min(float(until_text), now + hold_s)
    since = float(since_text) if since_text is not None else now
    log_event(
        log,
        "restore stamp hold resumed",
        logging.WARNING,
        epoch=epoch,
        until=_iso(until),
        remaining_s=round(max(0.0, until - now), 3),
    )
    return StampHold(store, until=until, since=since, clock=clock)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
