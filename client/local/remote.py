"""What the sync engines drive: remote updates, state vectors and diffs, the outbox, and
rebuilding a document from the relay's."""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Iterable

from client.local import projections as proj
from client.local.base import LocalBase
from client.local.events import BookingRejected, ChangeAcked
from client.local.model import (
    _T,
    BatchFailure,
    BatchResult,
    RebuildResult,
    _as_day,
    _drop_vanished_rows,
    _Loaded,
    _signer_of,
    _writer_client,
)
from client.local.projections import ProjectedRecord
from client.log import get_logger, log_event
from client.storage.store import OutboxCounts, OutboxEntry
from crdt_core.clientids import GENERATIONS, client_id_for
from crdt_core.engine import EngineError, Replica, parse_state_vector, state_vector_of_update
from crdt_core.errors import SchemaError, ValidationError
from crdt_core.reader import read_map
from crdt_core.schema import CERTS_ROOT, DocId, DocKind, TypedRecord, parse_doc_id, per_customer_limits
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import Verdict, VerdictChange, compute_verdict
from crdt_core.yupdate import decode_update

log = get_logger(__name__)


class RemoteSync(LocalBase):
    """Applying what the relay or a peer sent, the outbox's transitions and document rebuilds."""

    # --- remote updates --------------------------------------------------------------------------

    async def apply_remote(
        self, doc_id: str, update: bytes, *, from_peer: bool = False
    ) -> list[VerdictChange]:
        """Validate and apply one update received from the relay (or a peer, ``from_peer=True``).

        Returns the verdict changes of the user's own reservations.

        Raises:
            ValidationError: the update breaks a writer rule (``.code``); nothing was applied.
        """
        result = await self.apply_remote_batch([(doc_id, update)], from_peer=from_peer)
        if result.failed:
            raise result.failed[0].error
        return result.changes

    async def apply_remote_batch(
        self, updates: Iterable[tuple[str, bytes]], *, from_peer: bool = False
    ) -> BatchResult:
        """Validate and apply many updates in one transaction, recomputing each verdict once.

        Each update is validated against the document as the earlier ones left it; one that
        depends on a later one in the batch (``missing_deps``) is retried after the others. What a
        peer sent is judged by the peer arrival rules too (``ArrivalPolicy.for_peer``, by this
        device's clock) and queued for the
        relay (``operation = 'forward'``): the relay may not have it, and it validates and stamps
        it whoever carried it.
        """
        certs = self._require_certs()
        policy = ArrivalPolicy.for_peer(self._now_ms()) if from_peer else None
        items = [(str(d), bytes(u)) for d, u in updates]
        failed: dict[int, BatchFailure] = {}
        applied = 0
        origin = "peer" if from_peer else "remote"
        async with self._write(local=False) as work:
            todo = list(range(len(items)))
            while todo:
                retry: list[int] = []
                progress = False
                for index in todo:
                    raw_doc, update = items[index]
                    try:
                        doc = parse_doc_id(raw_doc)
                    except SchemaError as exc:
                        failed[index] = BatchFailure(index, raw_doc, ValidationError("bad_doc", str(exc)))
                        continue
                    did = str(doc)
                    loaded = await self._load(work.tx, did)
                    try:
                        staff = await self._staff_list(work.tx, doc)
                        validated = validate_update(doc, loaded.replica, update, certs, policy, staff)
                    except ValidationError as exc:
                        failed[index] = BatchFailure(index, did, exc)
                        if exc.code in ("missing_deps", "forbidden"):  # forbidden: the staff list may follow
                            retry.append(index)
                        continue
                    failed.pop(index, None)
                    progress = True
                    if validated.noop:
                        continue
                    work.dirty.add(did)
                    try:
                        loaded.replica.apply_update(update)
                    except EngineError as exc:  # validated, so not expected; the replica is unchanged
                        failed[index] = BatchFailure(index, did, ValidationError("malformed", str(exc)))
                        continue
                    appended = await work.tx.append_update(did, update, origin)
                    loaded.upto, loaded.version = appended.update_id, appended.version
                    work.appended[did] = appended
                    if from_peer:
                        await work.tx.enqueue("update", did, "forward", update, did)
                    records = work.touched.setdefault(did, [])
                    newest = ""
                    for accepted in validated.records:
                        if isinstance(accepted.record, TypedRecord):
                            records.append((accepted.root, accepted.key, accepted.record))
                            newest = max(newest, getattr(accepted.record, "hlc", None) or "")
                    if newest:
                        self._observe(newest)
                    applied += 1
                todo = retry if progress else []
        changes = work.changes
        return BatchResult(changes, [failed[i] for i in sorted(failed)], applied)

    # --- sync helpers --------------------------------------------------------------------------

    async def state_vector(self, doc_id: str) -> bytes:
        """This replica's state vector of a document (empty if it holds none of it)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.state_vector()

    async def diff(self, doc_id: str, state_vector: bytes) -> bytes:
        """What a peer holding ``state_vector`` lacks of a document (Yjs sync step 2)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.diff(state_vector)

    async def inspect(self, doc_id: str, check: Callable[[Replica], _T]) -> _T:
        """Run a pure, read-only ``check`` on a document as this replica holds it.

        Why: peer sync compares what a peer sends with what this replica already integrated
        (equivocation, ``client.peer.data``) without a copy of the document; ``check`` must not
        modify the replica.
        """
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return check((await self._load(tx, did)).replica)

    async def document(self, doc_id: str) -> dict[str, dict[str, bytes]]:
        """A document's raw maps (for convergence checks and debugging)."""
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            return (await self._load(tx, did)).replica.to_py()

    async def verdict(self, shop_id: str, day: _dt.date | str) -> Verdict:
        """The full verdict of one bookings document on this replica."""
        d = _as_day(day)
        doc = DocId.bookings(shop_id, d)
        async with self._read() as tx:
            state = await self._bookings_state(tx, await self._load(tx, str(doc)), doc, ())
            templates = await self._shop_templates(tx, shop_id)
            return compute_verdict(state, proj.capacities_on(templates, d), per_customer_limits(templates))

    # --- outbox (for the sync engine) ------------------------------------------------------------

    async def pending_entries(self, limit: int | None = None) -> list[OutboxEntry]:
        return await self.store.pending_entries(limit)

    async def rejected_entries(self) -> list[OutboxEntry]:
        return await self.store.rejected_entries()

    async def outbox_counts(self) -> OutboxCounts:
        return await self.store.outbox_counts()

    async def mark_acked(self, entry_id: int) -> bool:
        """The relay durably holds a queued change: drop it from the outbox and emit
        :class:`ChangeAcked`. False, and no event, when it was gone already (an ack repeated
        after a reconnect, or another process sharing the profile took it)."""
        taken = await self.store.take_acked(entry_id)
        if taken is None:
            return False
        entity_type, entity_id, operation, doc_id = taken
        self.emit(
            ChangeAcked(
                at_ms=self._now_ms(), entry_id=entry_id, entity_type=entity_type, entity_id=entity_id,
                operation=operation, doc_id=doc_id,
            )
        )  # fmt: skip
        return True

    async def mark_retry(self, entry_id: int, error: str) -> bool:
        return await self.store.mark_retry(entry_id, error)

    async def mark_rejected(self, entry_id: int, code: str, reason: str) -> OutboxEntry | None:
        """Set an entry aside as refused by the relay, flag its reservation, and tell the user."""
        async with self._write(local=False) as work:
            tx = work.tx
            before = await tx.outbox_entry(entry_id)
            if before is None or before.state != "pending":
                return before  # unknown, or already set aside: nothing new to tell
            entry = await tx.mark_rejected(entry_id, code, reason[:1000])
            if entry is not None and entry.entity_type == "reservation" and entry.operation == "create":
                await proj.mark_reservation_rejected(tx, entry.doc_id, entry.entity_id, code, reason[:1000])
            # ``tx.mark_rejected`` queued the document for a rebuild from the relay's state
            # (``rebuild_from_relay``): that drops the refused record from it (and so from the
            # verdict) and re-writes the pending writes behind it under a new client id.
        if entry is not None:
            self.emit(
                BookingRejected(
                    at_ms=self._now_ms(),
                    entry_id=entry.id,
                    entity_type=entry.entity_type,
                    entity_id=entry.entity_id,
                    operation=entry.operation,
                    doc_id=entry.doc_id,
                    code=code,
                    reason=reason,
                )
            )
        return entry

    # --- rebuilding a document from the relay's ------------------------------------------------

    async def pending_rebuilds(self) -> dict[str, str]:
        """``{doc_id: reason}`` of the documents the next sync rebuilds from the relay's state."""
        return await self.store.rebuilds()

    async def request_rebuild(self, doc_id: str, reason: str) -> None:
        """Queue a document for :meth:`rebuild_from_relay` (kept across restarts until done)."""
        did = str(parse_doc_id(doc_id))
        async with self.store.transaction() as tx:
            await tx.request_rebuild(did, reason)

    async def writer_id(self, doc_id: str) -> int | None:
        """The Yjs client id this device writes ``doc_id`` under now (None: not logged in)."""
        identity = self._identity
        if identity is None:
            return None
        did = str(parse_doc_id(doc_id))
        async with self._read() as tx:
            generation = await tx.writer_generation(did, identity.device.cert_id)
        return None if generation >= GENERATIONS else client_id_for(identity.device.cert_id, generation)

    async def rebuild_from_relay(self, doc_id: str, relay_state: bytes) -> RebuildResult:
        """Replace a document by the relay's whole state; re-write this device's pending writes of it.

        Why: the relay's document is the authority on the relay path. After the relay refused one
        of this device's writes, the local document keeps the refused structs and every later
        write continues their client's clock, which the relay will never hold; after a malicious
        device handed this replica (through a peer) a record at a Yjs id where the relay holds
        another, the relay's own updates stop fitting here and no state-vector exchange repairs
        it. Both end here, in one transaction:

        1. ``relay_state`` (what the relay sends for a sync with an empty state vector) is
           validated like any update and becomes the document.
        2. Every pending local entry of the document is replaced by a new one that writes its
           records that the relay lacks, byte for byte and at the same keys, under this device's
           next generation's client id (``crdt_core.clientids``), with the certificate when the
           relay's document lacks it. A signer moves to the next generation only when the local
           document held more of its client than the relay: those clocks may have reached peers
           with other content. Refused entries stay refused (their record is simply gone).
        3. Pending ``forward`` entries (peers' updates carried for the relay) stay as they are;
           their content goes back into the document when it still validates.
        4. The snapshot replaces the stored document (log dropped); projections and verdicts are
           recomputed, and reservation rows the document no longer holds are dropped (refused
           ones stay, with their reason).

        Raises:
            ValidationError: ``relay_state`` breaks a writer rule; nothing changed.
        """
        certs = self._require_certs()
        doc = parse_doc_id(doc_id)
        did = str(doc)
        identity = self._identity
        current = None if identity is None else identity.device.cert_id
        async with self._write(local=False) as work:
            tx = work.tx
            old = await self._load(tx, did)
            work.dirty.add(did)
            staff = await self._staff_list(tx, doc)
            validate_update(doc, Replica(), relay_state, certs, None, staff)  # the relay judged arrival rules
            relay_clocks = parse_state_vector(state_vector_of_update(relay_state))
            old_clocks = old.replica.state_clocks()
            reason = (await tx.rebuilds()).get(did, "relay update did not fit the local document")
            pending = await tx.pending_of(did)
            planned: list[tuple[OutboxEntry, dict[str, bytes], list[tuple[str, str, bytes]]]] = []
            signers = {current} if current is not None else set()
            for entry in pending:
                if entry.operation == "forward":
                    continue
                try:
                    inserts = decode_update(entry.payload).inserts
                except EngineError:
                    continue  # never readable, never written: the relay refuses it as it is
                carried = {
                    i.key: i.value for i in inserts if i.root == CERTS_ROOT and isinstance(i.value, bytes)
                }
                records = [
                    (i.root, i.key, i.value)
                    for i in inserts
                    if i.root != CERTS_ROOT and isinstance(i.value, bytes)
                ]
                for _root, _key, raw in records:
                    signers.add(_signer_of(raw) or "")
                planned.append((entry, carried, records))
            signers.discard("")
            generations: dict[str, int] = {}
            for signer in sorted(signers):
                stored = await tx.writer_generation(did, signer)
                generations[signer] = stored
                if stored < GENERATIONS:
                    at = client_id_for(signer, stored)
                    if old_clocks.get(at, 0) > relay_clocks.get(at, 0):
                        generations[signer] = stored + 1
                if generations[signer] != stored:
                    await tx.set_writer_generation(did, signer, generations[signer])
            own = generations.get(current or "", GENERATIONS)
            replica = Replica(_writer_client(current, own))
            replica.apply_update(relay_state)
            writers: dict[str, Replica] = {} if current is None else {current: replica}
            dropped: list[int] = []
            queued: list[tuple[OutboxEntry, bytes]] = []
            exhausted: dict[int, OutboxEntry] = {}
            for entry, carried, records in planned:
                dropped.append(entry.id)
                by_signer: dict[str, list[tuple[str, str, bytes]]] = {}
                for root, key, raw in records:
                    if not replica.has_key(root, key):  # else the relay has it (its ack was lost)
                        by_signer.setdefault(_signer_of(raw) or "", []).append((root, key, raw))
                for signer, recs in by_signer.items():
                    if generations.get(signer, GENERATIONS) >= GENERATIONS:
                        exhausted[entry.id] = entry
                        continue
                    writes = list(recs)
                    if not replica.has_key(CERTS_ROOT, signer):
                        raw_cert = carried.get(signer)
                        if raw_cert is None and identity is not None and signer == current:
                            raw_cert = identity.device.certificate
                        if raw_cert is not None:
                            writes.insert(0, (CERTS_ROOT, signer, raw_cert))
                    writer = writers.get(signer)
                    if writer is None:
                        writer = writers[signer] = replica.copy(client_id_for(signer, generations[signer]))
                    update = writer.write(writes)
                    if writer is not replica:
                        replica.apply_update(update)
                    queued.append((entry, update))
            for entry in pending:
                if entry.operation != "forward":
                    continue
                try:
                    if not validate_update(doc, replica, entry.payload, certs, None, staff).noop:
                        replica.apply_update(entry.payload)
                except (ValidationError, EngineError) as exc:
                    log_event(log, "carried_update_left_out", entry=entry.id, doc=did, error=str(exc))
            generation, version = await tx.replace_doc(did, replica.encode_state())
            await tx.delete_entries(dropped)
            new_ids = [
                await tx.enqueue(e.entity_type, e.entity_id, e.operation, update, did) for e, update in queued
            ]
            for entry in exhausted.values():  # set aside, with the reason, for the user
                e = entry
                kept = await tx.enqueue(e.entity_type, e.entity_id, e.operation, e.payload, did)
                await tx.execute(
                    "UPDATE outbox SET state = 'rejected', reject_code = 'client_ids_exhausted', "
                    "reject_reason = 'this device used all its client ids in the document: log in again' "
                    "WHERE id = ?",
                    (kept,),
                )
            await tx.rebuilt(did)
            self._docs[did] = _Loaded(replica, generation, 0, version, signer=current)
            records_now: list[ProjectedRecord] = []
            if doc.kind is not DocKind.BOOKINGS:
                await proj.clear_doc_projection(tx, doc)
                if doc.shop_id is not None:
                    self._templates.pop(doc.shop_id, None)
                for root in sorted(doc.roots - {CERTS_ROOT}):
                    records_now.extend((root, key, rec) for key, rec in read_map(replica, doc, root).items())
            work.touched[did] = records_now
            if doc.kind is DocKind.BOOKINGS:
                work.epilogue.append(lambda tx: _drop_vanished_rows(tx, did, work.verdicts.get(did)))
        result = RebuildResult(
            doc_id=did,
            reason=reason,
            generation=own if current is not None else None,
            rewritten=len(queued),
            entries=tuple(new_ids),
        )
        log_event(
            log, "doc_rebuilt", logging.WARNING,
            doc=did, reason=reason, generation=result.generation, rewritten=len(queued),
        )  # fmt: skip
        return result
