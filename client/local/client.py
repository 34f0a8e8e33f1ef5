"""The offline half of the client: :class:`LocalClient`, an async library API over one profile.

Why a library first: the CLI, the sync engine, the peer server and an embedding app all drive the
same operations, and every one of them must keep the same invariants:

* **A local change is one SQLite transaction** holding the document update, its outbox entry,
  the projection rows it changes and the clock reading it used. A crash (even SIGKILL) leaves
  either all of them or none, so nothing is ever queued that the document lacks, or written
  to the document and never queued.
* **Memory never runs ahead of disk.** Documents are loaded (snapshot + log replay through
  :class:`crdt_core.engine.Replica`) and kept in memory. A write mutates the in-memory replica
  inside the transaction; if the transaction fails, that replica is dropped and reloaded from disk
  on next use.
* **Several processes may share a profile** (``quickslot book`` while ``quickslot sync --watch``
  runs). Each write transaction first catches up with what other processes committed
  (``PRAGMA data_version`` says whether anyone did), so a process never signs on top of, nor
  compacts away, a state it has not seen.
* **A device writes each document under one Yjs client id**, derived from its certificate id and
  the document's generation (``crdt_core.clientids``; generations in ``doc_writers``). Writes go
  into the loaded replica itself, so consecutive writes continue one client's clocks and a day of
  10,000 bookings carries one state-vector entry per device, not one per booking (Yjs slows down
  with the state vector). Two processes sharing the profile never reuse a clock: each write
  catches up with the other's commits under the write lock first.
* **A refused write never wedges the writes behind it.** The relay refusing one of this device's
  writes in a document (or a relay update that does not fit the local document) queues that
  document for a rebuild (``Store``'s ``doc_rebuilds``); :meth:`LocalClient.rebuild_from_relay`
  then replaces the local document by the relay's and re-writes every still-pending local record
  (the same signed bytes) under the next generation's client id, as new outbox entries.
* **Everything that arrives is validated** with ``crdt_core.validation.validate_update`` against
  the relay keys cached at login, whoever carried it. What a peer handed over is also judged by
  the peer arrival rules (this device's clock; ``ArrivalPolicy``) and queued for the relay
  (store-and-forward), because the relay may not have it yet. What the relay sent is not judged
  by arrival rules again: the relay did that when it arrived there.
* **Verdicts are recomputed once per batch**, and changes to the user's own reservations are
  returned and emitted as :mod:`client.local.events`.
* **The HLC never goes backwards**, across restarts and processes: its last reading is stored in
  ``meta`` in every write transaction.

No networking here; the sync engine drives :meth:`LocalClient.apply_remote_batch`,
:meth:`LocalClient.diff`, the outbox methods and the cursors in :attr:`LocalClient.store`.
"""

from __future__ import annotations

from client.local import projections as proj
from client.local.booking import Booking
from client.local.errors import ClientError, InvalidRequest, NotAllowed, NotFound, NotLoggedIn
from client.local.model import (
    _RESERVATION_COLUMNS,
    BatchFailure,
    BatchResult,
    Identity,
    RebuildResult,
    _restore_refused_rows,
)
from client.local.projections import ProjectedRecord
from client.local.remote import RemoteSync
from crdt_core.reader import read_map
from crdt_core.schema import CERTS_ROOT, parse_doc_id
from crdt_core.verdict import Verdict

__all__ = [
    "BatchFailure",
    "BatchResult",
    "ClientError",
    "Identity",
    "InvalidRequest",
    "LocalClient",
    "NotAllowed",
    "NotFound",
    "NotLoggedIn",
    "RebuildResult",
]


class LocalClient(Booking, RemoteSync):
    """One profile, opened: browsing, booking and staff/owner actions, all offline; see the module doc.

    The operations live in the base classes, one module each: :class:`~client.local.base.LocalBase`
    (state and the write path), :class:`~client.local.browse.Browsing`,
    :class:`~client.local.booking.Booking` (on top of browsing) and
    :class:`~client.local.remote.RemoteSync`.
    """

    # --- maintenance ---------------------------------------------------------------------------

    async def rebuild_projections(self) -> None:
        """Recreate every projection row from the documents alone (after a migration, or to check).

        Emits no events: every claim is "new" against the empty baseline, which ``local=True``
        keeps quiet.
        """
        async with self._write(local=True) as work:
            # A claim the relay refused is in the document but not in the verdict, so projecting
            # the documents alone would drop its row; the refusal (kept on the row, from the
            # outbox) is what tells the user. Those rows go back as they were, holding no seats.
            refused = await work.tx.fetchall(
                f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE rejected_code IS NOT NULL"
            )
            work.epilogue.append(lambda tx: _restore_refused_rows(tx, refused))
            await proj.clear_projections(work.tx)
            self._verdicts.clear()
            for doc_id in await work.tx.held_docs():
                doc = parse_doc_id(doc_id)
                replica = (await self._load(work.tx, doc_id)).replica
                records: list[ProjectedRecord] = []
                for root in sorted(doc.roots - {CERTS_ROOT}):
                    records.extend((root, key, rec) for key, rec in read_map(replica, doc, root).items())
                work.touched[doc_id] = records
            work.verdicts.update({d: Verdict(slots={}, claims={}, stamp_prefix=0) for d in work.touched})
