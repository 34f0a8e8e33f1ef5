"""One connection to the relay: :class:`_Session` owns the websocket, the ``ClientProtocol`` and
the reader and processor tasks (see :mod:`client.sync.service` for why it is shaped this way)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

import websockets

from client.log import get_logger, log_event
from client.storage.store import OutboxEntry
from client.sync.base import (
    _EMPTY_SV,
    _EMPTY_UPDATE,
    _EXTRA_UID_BASE,
    _MAX_DOWNLOAD,
    _SUBSCRIBED,
    ServiceBase,
    SyncSocket,
    SyncSummary,
    _Closed,
    _is_full_state,
    rebuild_doc,
)
from crdt_core.engine import merge_updates
from crdt_core.errors import EngineError, LocalProtocolError, ValidationError
from crdt_core.messages import CloseCode, ErrorCode
from crdt_core.protocol import (
    Acked,
    ClientProtocol,
    ConnState,
    Deadline,
    DocState,
    DocSynced,
    ErrorReceived,
    GapDetected,
    StampReceived,
    UpdateReceived,
    Welcomed,
)

log = get_logger(__name__)


class _SessionEvents:
    """A session's plumbing (reader, processor) and its handling of the relay's events; the
    actions (subscribing, flushing the outbox) are :class:`_Session`'s."""

    """One websocket connection: the protocol machine, the reader and the event processor."""

    def __init__(self, service: ServiceBase, ws: SyncSocket, summary: SyncSummary) -> None:
        self.svc = service
        self.local = service.local
        self.ws = ws
        self.summary = summary
        self.proto = ClientProtocol(header_auth=True, max_message_size=_MAX_DOWNLOAD)
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.changed = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.welcome: Welcomed | None = None
        self.closed: _Closed | None = None
        self.inflight: dict[int, str] = {}  # uid -> doc, outbox entries and extras alike
        self.refused: dict[str, str] = {}
        #: Documents wanted but not subscribed because of the relay's ``max_docs`` (in order).
        self.deferred: dict[str, None] = {}
        self.needs_resync: set[str] = set()
        #: The first catch-up of this connection completed (it was healthy, not just open).
        self.synced = False
        #: When the last message arrived (monotonic), to tell a quiet relay from a busy one.
        self.last_rx = time.monotonic()
        self._reader = asyncio.create_task(self._read(), name="quickslot-sync-reader")
        self._processor = asyncio.create_task(self._process(), name="quickslot-sync-processor")
        self._next_extra = _EXTRA_UID_BASE
        #: What each in-flight extra update was (for the log when the relay refuses one).
        self.extras: dict[int, str] = {}
        #: Documents whose whole state was asked for on this connection (to rebuild them).
        self.rebuilding: set[str] = set()
        #: Documents to ask the whole state of once none of our updates in them is in flight.
        self.rebuild_waiting: set[str] = set()
        #: Documents rebuilt (or tried) after a relay update did not fit, on this connection:
        #: once each, so a relay document that does not validate here cannot loop.
        self.repaired: set[str] = set()

    # --- plumbing --------------------------------------------------------------------------------

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, bytes):
                    await self.inbox.put(data)
                else:
                    await self.inbox.put(data.encode())  # the protocol turns text into a 4002 close
        except websockets.ConnectionClosed:
            pass
        except OSError as exc:
            log_event(log, "sync_transport_error", logging.DEBUG, error=str(exc))
        finally:
            await self.inbox.put(None)

    def _close_info(self) -> tuple[int, str]:
        if self.proto.close_code is not None:
            return self.proto.close_code, self.proto.close_reason
        rcvd = self.ws.close_code
        reason = self.ws.close_reason or ""
        return (int(rcvd) if rcvd is not None else int(CloseCode.ABNORMAL)), reason

    async def send_pending(self) -> None:
        """Write what the protocol queued, in order; close when the protocol decided to."""
        async with self.send_lock:
            try:
                for data in self.proto.data_to_send():
                    await self.ws.send(data)
                if self.proto.close_expected() and self.closed is None:
                    code, reason = self.proto.close_code or 1000, self.proto.close_reason
                    await self.ws.close(code, reason)
            except websockets.ConnectionClosed:
                pass

    def _notify(self) -> None:
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` holds; raise :class:`_Closed` if the connection ends first."""
        deadline = time.monotonic() + timeout
        while True:
            if self.closed is not None:
                raise self.closed
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out waiting for the relay")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def _process(self) -> None:
        """Feed received messages to the protocol and handle the events, a batch at a time."""
        try:
            while True:
                try:
                    first = await asyncio.wait_for(self.inbox.get(), self.svc.response_timeout_s)
                except TimeoutError:
                    if Deadline.RESPONSE in self.proto.deadlines():
                        self.proto.expire(Deadline.RESPONSE)  # the relay went silent: 1001, reconnect
                        await self.send_pending()
                        break
                    continue
                self.last_rx = time.monotonic()
                batch = [first]
                while first is not None and len(batch) < self.svc.batch_size and not self.inbox.empty():
                    item = self.inbox.get_nowait()
                    batch.append(item)
                    if item is None:
                        break
                ended = batch[-1] is None
                for data in batch:
                    if data is not None:
                        self.proto.receive_message(data)
                await self.send_pending()
                await self._handle(self.proto.events_received())
                await self.send_pending()
                self._notify()
                if ended or self.proto.close_expected():
                    break
        except Exception:
            log.exception("sync event processing failed")
            with contextlib.suppress(LocalProtocolError):
                self.proto.close(CloseCode.INTERNAL, "client error")
            await self.send_pending()
        finally:
            self.proto.receive_eof()
            code, reason = self._close_info()
            if self.closed is None:
                self.closed = _Closed(code, reason)
            self._notify()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(LocalProtocolError):
            self.proto.close(code, reason)
        await self.send_pending()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        for task in (self._reader, self._processor):
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self.closed is None:
            self.closed = _Closed(code, reason)

    # --- events ----------------------------------------------------------------------------------

    async def _handle(self, events: Iterable[object]) -> None:
        live: list[tuple[str, bytes]] = []
        for event in events:
            if isinstance(event, (UpdateReceived, StampReceived)):
                live.append((event.doc, event.update))
                continue
            if isinstance(event, GapDetected):
                self.needs_resync.add(event.doc)  # after the revealing message is applied
                continue
            await self._apply_live(live)
            live = []
            if isinstance(event, Welcomed):
                self.welcome = event
            elif isinstance(event, DocSynced):
                await self._on_synced(event)
            elif isinstance(event, Acked):
                await self._on_acked(event)
            elif isinstance(event, ErrorReceived):
                await self._on_error(event)
        await self._apply_live(live)
        for doc in sorted(self.needs_resync):
            await self._resync(doc)
        self.needs_resync.clear()
        if self.rebuild_waiting:
            busy = set(self.inflight.values())
            for doc in sorted(self.rebuild_waiting - busy):
                self.rebuild_waiting.discard(doc)
                await self._resync(doc, full=True)

    async def _resync(self, doc: str, *, full: bool = False) -> None:
        """Run the sync exchange of ``doc`` again; for the whole document when it awaits a rebuild."""
        if self.proto.state is not ConnState.OPEN or self.proto.doc_state(doc) not in _SUBSCRIBED:
            return
        full = full or doc in await self.local.pending_rebuilds()
        if full:
            if doc in self.rebuilding or doc in self.summary.rebuild_failed:
                return  # asked already on this connection (its answer rebuilds it), or it failed
            if doc in self.inflight.values():
                # Ask once every update of ours in the document is answered: the relay's state
                # then shows which of them it holds, so none is re-written that also lands.
                self.rebuild_waiting.add(doc)
                return
            self.rebuilding.add(doc)
            self.proto.resync(doc, _EMPTY_SV)
        else:
            self.proto.resync(doc, await self.local.state_vector(doc))

    async def _conflict(self, doc: str, what: str, error: ValidationError) -> None:
        """A relay update did not apply here even so: rebuild ``doc`` from the relay's state."""
        reason = f"{what} did not apply locally: {error.code}: {error.detail}"
        log_event(
            log, "relay_update_conflict", logging.WARNING, doc=doc, code=error.code, detail=error.detail
        )
        self.summary.conflicts[doc] = reason
        if doc in self.repaired:
            return  # rebuilt on this connection already: the next sync tries again
        self.repaired.add(doc)
        await self.local.request_rebuild(doc, reason)
        await self._resync(doc, full=True)

    async def _rebuild(self, doc: str, state: bytes) -> None:
        if not await rebuild_doc(self.svc, self.summary, doc, state):
            self.repaired.add(doc)
            return
        await self.flush_outbox()

    async def _apply_live(self, updates: list[tuple[str, bytes]]) -> None:
        if not updates:
            return
        result = await self.local.apply_remote_batch(updates)
        self.summary.applied += result.applied
        for failure in result.failed:
            log_event(
                log,
                "relay_update_refused_locally",
                logging.WARNING,
                doc=failure.doc_id,
                error=str(failure.error),
            )
            if failure.error.code == "missing_deps":
                self.needs_resync.add(failure.doc_id)  # a resync repairs a gap; if not, a rebuild
            else:
                await self._conflict(failure.doc_id, "a live update", failure.error)
        for doc in {d for d, _ in updates}:
            await self._save_cursor(doc)

    async def _save_cursor(self, doc: str) -> None:
        seq = self.proto.last_seq(doc)
        if seq is not None:
            await self.local.store.set_last_seq(self.svc.relay_url, doc, seq)

    async def _on_synced(self, event: DocSynced) -> None:
        doc = event.doc
        if self.summary.refused_docs.get(doc, "").startswith(ErrorCode.TOO_MANY_DOCS):
            del self.summary.refused_docs[doc]  # synced on a later rotation after all
        rebuilds = await self.local.pending_rebuilds()
        full = _is_full_state(event.update, event.relay_sv)
        if full:
            self.rebuilding.discard(doc)  # the answer to a sync from nothing
        if doc in rebuilds and full:
            if doc in self.inflight.values():  # sent before the rebuild was due: ask again later
                self.rebuild_waiting.add(doc)
                return
            await self._rebuild(doc, event.update)
            await self._save_cursor(doc)
            return
        if event.update != _EMPTY_UPDATE:
            result = await self.local.apply_remote_batch([(doc, event.update)])
            self.summary.applied += result.applied
            for failure in result.failed:
                log_event(
                    log,
                    "catch_up_refused_locally",
                    logging.WARNING,
                    doc=failure.doc_id,
                    error=str(failure.error),
                )
            if result.failed:
                await self._save_cursor(doc)
                await self._conflict(doc, "the relay's catch-up", result.failed[0].error)
                return
        await self._save_cursor(doc)
        if doc in rebuilds:  # a diff, not the whole document: ask for that, and send nothing yet
            await self._resync(doc, full=True)
            return
        diff = await self.local.diff(doc, event.relay_sv)
        self._send_extra(doc, diff, "catch-up diff")

    def _send_extra(self, doc: str, update: bytes, what: str) -> bool:
        """Send a repair update that is not an outbox entry (its uid lives above every entry id)."""
        if (
            update == _EMPTY_UPDATE
            or self.proto.state is not ConnState.OPEN
            or self.proto.doc_state(doc) not in _SUBSCRIBED
        ):
            return False
        uid = self._next_extra
        self._next_extra += 1
        try:
            self.proto.send_update(doc, uid, update)
        except LocalProtocolError as exc:
            log_event(log, "extra_update_not_sent", what=what, doc=doc, error=str(exc))
            return False
        self.inflight[uid] = doc
        self.extras[uid] = what
        return True

    async def _on_acked(self, event: Acked) -> None:
        self.inflight.pop(event.uid, None)
        self.extras.pop(event.uid, None)
        await self._save_cursor(event.doc)
        if event.uid >= _EXTRA_UID_BASE:
            return
        if await self.local.mark_acked(event.uid):
            self.summary.acked += 1
        self.svc._forget_retry(event.uid)

    async def _on_error(self, event: ErrorReceived) -> None:
        if event.uid is None:
            if event.doc is not None and event.code == ErrorCode.TOO_MANY_DOCS:
                # The relay's limit, met sooner than its welcome said: try the doc again on a
                # later rotation; the reason is kept for the user until it syncs.
                self.rebuilding.discard(event.doc)
                self.deferred[event.doc] = None
                self.summary.refused_docs[event.doc] = f"{event.code}: {event.reason}"
                log_event(
                    log,
                    "subscription_deferred",
                    logging.WARNING,
                    doc=event.doc,
                    code=event.code,
                    reason=event.reason,
                )
                return
            if event.doc is not None:
                self.rebuilding.discard(event.doc)  # no sync answer will come for it
                self.refused[event.doc] = f"{event.code}: {event.reason}"
                self.summary.refused_docs[event.doc] = f"{event.code}: {event.reason}"
                log_event(
                    log,
                    "subscription_refused",
                    logging.WARNING,
                    doc=event.doc,
                    code=event.code,
                    reason=event.reason,
                )
            else:
                log_event(log, "relay_notice", logging.WARNING, code=event.code, reason=event.reason)
                if event.code == ErrorCode.RATE_LIMITED:
                    self.svc._slow_down()
            return
        self.inflight.pop(event.uid, None)
        if event.uid >= _EXTRA_UID_BASE:
            what = self.extras.pop(event.uid, "repair update")
            log_event(log, "repair_refused", what=what, doc=event.doc, code=event.code, reason=event.reason)
            if event.doc is not None and not what.startswith("bundle"):  # its entries go alone
                self.summary.repair_refused[event.doc] = f"{event.code}: {event.reason}"
            return
        if not event.retry:
            if (
                event.code == ErrorCode.REJECTED
                and event.reason.startswith("unknown_certificate")
                and event.doc is not None
                and await self._earlier_pending(event.doc, event.uid)
            ):
                # The certificate rides on an earlier entry of this doc that has not reached the
                # relay yet (refused for a retryable reason, or lost with its connection): this
                # entry goes again behind it. Found by the chaos run (tests/chaos).
                await self.local.mark_retry(event.uid, f"{event.code}: {event.reason}")
                self.svc._schedule_retry(event.uid)
                self.svc.retry_count += 1
                return
            entry = await self.local.mark_rejected(event.uid, event.code, event.reason)
            if entry is not None:
                self.summary.rejected.append((event.uid, event.code, event.reason))
            self.svc._forget_retry(event.uid)
            if event.doc is not None and event.doc in await self.local.pending_rebuilds():
                await self._resync(event.doc, full=True)  # the writes behind it get a new client id
            return
        await self.local.mark_retry(event.uid, f"{event.code}: {event.reason}")
        self.svc._schedule_retry(event.uid)
        self.svc.retry_count += 1
        if event.code == ErrorCode.MISSING_DEPS and event.doc is not None:
            self.needs_resync.add(event.doc)
        elif event.code == ErrorCode.NOT_SUBSCRIBED and event.doc is not None:
            self.refused.pop(event.doc, None)

    async def _earlier_pending(self, doc: str, uid: int) -> bool:
        """An outbox entry of ``doc`` older than entry ``uid`` still awaits the relay's ack."""
        return any(e.doc_id == doc and e.id < uid for e in await self.local.pending_entries())

    async def flush_outbox(self) -> int:
        """Send the due outbox entries (:meth:`_Session.flush_outbox`)."""
        raise NotImplementedError


class _Session(_SessionEvents):
    """One websocket to the relay and what a round or a live session does over it."""

    # --- actions ---------------------------------------------------------------------------------

    async def await_welcome(self, timeout: float) -> Welcomed:
        try:
            await self.wait_for(lambda: self.welcome is not None, timeout)
        except TimeoutError:
            self.proto.expire(Deadline.AUTH)
            await self.send_pending()
            raise _Closed(int(CloseCode.AUTH_TIMEOUT), "no welcome in time") from None
        assert self.welcome is not None
        return self.welcome

    @property
    def max_docs(self) -> int | None:
        """The relay's limit of documents subscribed at once on one connection (its welcome)."""
        limit = None if self.welcome is None else self.welcome.limits.get("max_docs")
        return limit if isinstance(limit, int) and limit > 0 else None

    def _full(self) -> bool:
        limit = self.max_docs
        return limit is not None and len(self.proto.subscribed_docs()) >= limit

    async def _busy_docs(self) -> set[str]:
        """Documents that must stay subscribed: changes of ours wait in them or are in flight."""
        busy = {e.doc_id for e in await self.local.pending_entries()}
        return busy | set(self.inflight.values()) | self.rebuilding | self.rebuild_waiting

    async def _release(self, keep: set[str], count: int | None = None) -> int:
        """Unsubscribe up to ``count`` live documents not in ``keep`` (they go back to
        ``deferred`` when they are still wanted); returns how many."""
        released = 0
        for doc in sorted(self.proto.subscribed_docs()):
            if count is not None and released >= count:
                break
            if doc in keep or self.proto.doc_state(doc) is not DocState.LIVE:
                continue
            self.proto.unsubscribe(doc)
            released += 1
        return released

    async def subscribe(self, docs: Iterable[str], *, urgent: bool = False) -> list[str]:
        """Subscribe the docs not yet subscribed (or refused) on this connection; returns them.

        At the relay's ``max_docs`` the rest wait in :attr:`deferred`; ``urgent`` docs (changes of
        ours wait in them) make room instead, by unsubscribing documents with nothing to send.
        """
        new: list[str] = []
        rebuilds = await self.local.pending_rebuilds()
        busy: set[str] | None = None
        for doc in docs:
            self.require_open()
            if doc in self.refused or self.proto.doc_state(doc) in _SUBSCRIBED:
                continue
            if self._full():
                if busy is None:
                    busy = await self._busy_docs() if urgent else set()
                if not (urgent and await self._release(busy | {doc}, 1)):
                    self.deferred[doc] = None
                    continue
            self.deferred.pop(doc, None)
            try:
                if doc in rebuilds:  # the whole document, to rebuild the local one from it
                    self.proto.subscribe(doc, _EMPTY_SV)
                    self.rebuilding.add(doc)
                else:
                    self.proto.subscribe(doc, await self.local.state_vector(doc))
            except (LocalProtocolError, ValueError) as exc:
                log_event(log, "subscribe_failed", logging.WARNING, doc=doc, error=str(exc))
                self.refused[doc] = str(exc)
                continue
            new.append(doc)
        await self.send_pending()
        return new

    def require_open(self) -> None:
        """Raise :class:`_Closed` once the connection is over, so callers reconnect instead of
        mistaking a dead connection for a refused document."""
        if self.closed is not None:
            raise self.closed
        if self.proto.state is not ConnState.OPEN:
            raise _Closed(*self._close_info())

    async def settle(self, quiet_s: float, until: float) -> None:
        """Wait until nothing arrived for ``quiet_s`` (or ``until``, a monotonic time)."""
        while self.closed is None:
            now = time.monotonic()
            quiet_for = now - self.last_rx
            if quiet_for >= quiet_s or now >= until:
                return
            await asyncio.sleep(min(quiet_s - quiet_for, until - now))

    def idle(self) -> bool:
        """No update of ours awaits an answer, and no rebuild awaits the relay's document."""
        return not (self.inflight or self.rebuilding or self.rebuild_waiting)

    def subs_answered(self, docs: Iterable[str]) -> Callable[[], bool]:
        wanted = list(docs)
        return lambda: all(self.proto.doc_state(d) is not DocState.SYNCING for d in wanted)

    async def flush_outbox(self) -> int:
        """Send every pending entry that is due and not in flight, in outbox order."""
        sent = 0
        rebuilds = await self.local.pending_rebuilds()
        # The entries of a document awaiting a rebuild wait for it: they continue a refused
        # write's client clock (or sit in a document that does not fit the relay's), and the
        # rebuild replaces them.
        entries = [e for e in await self.local.pending_entries() if e.doc_id not in rebuilds]
        wanted = [e.doc_id for e in entries if e.doc_id not in self.refused]
        await self.subscribe(dict.fromkeys(wanted), urgent=True)
        now = time.monotonic()
        self._send_bundles(entries, now)
        for entry in entries:
            if entry.id in self.inflight or not self.svc._due(entry.id, now):
                continue
            if entry.doc_id in self.refused or self.proto.doc_state(entry.doc_id) not in _SUBSCRIBED:
                continue
            self.require_open()
            try:
                self.proto.send_update(entry.doc_id, entry.id, entry.payload)
            except LocalProtocolError as exc:
                await self._fail_locally(entry, exc)
                continue
            self.inflight[entry.id] = entry.doc_id
            sent += 1
        self.summary.sent += sent
        await self.send_pending()
        return sent

    async def rotate(self) -> list[str]:
        """Swap deferred documents in: release the subscribed ones with nothing of ours in
        flight or waiting, then subscribe as many deferred ones as now fit; returns them."""
        if not self.deferred:
            return []
        await self._release(await self._busy_docs())
        await self.send_pending()
        return await self.subscribe(list(self.deferred))

    def _send_bundles(self, entries: list[OutboxEntry], now: float) -> None:
        """Send the due entries of a document that carries others' writes as one update first.

        Why: the relay stamps the claims of one update in the verdict's tentative order, but
        separate updates in the order they arrive. A carrier (a shop tablet that met several
        customers offline) holds one ``forward`` entry per writer, in the order it met them; sent
        one by one, the customer who booked later could get the lower stamp and the seat every
        device had shown the other. The bundle is an extra update: if the relay takes it, the
        entries that follow are re-sends it acknowledges without change; if it refuses it (one
        writer's part is refused, say), the entries still go one by one as before, so one bad
        part never holds back the others.
        """
        groups: dict[str, list[OutboxEntry]] = {}
        for entry in entries:
            if entry.id in self.inflight or not self.svc._due(entry.id, now):
                continue
            if entry.doc_id in self.refused or self.proto.doc_state(entry.doc_id) not in _SUBSCRIBED:
                continue
            groups.setdefault(entry.doc_id, []).append(entry)
        for doc, group in groups.items():
            if len(group) < 2 or not any(e.operation == "forward" for e in group):
                continue
            try:
                bundle = merge_updates(e.payload for e in group)
            except EngineError as exc:
                log_event(log, "bundle_not_sent", doc=doc, error=str(exc))
                continue
            self._send_extra(doc, bundle, f"bundle of {len(group)} queued updates")

    async def _fail_locally(self, entry: OutboxEntry, exc: LocalProtocolError) -> None:
        if "exceeds" in str(exc):  # larger than the relay's max_message: it would close with 1009
            await self.local.mark_rejected(entry.id, "too_big", str(exc))
            self.summary.rejected.append((entry.id, "too_big", str(exc)))
            await self._resync(entry.doc_id, full=True)
        else:
            log_event(log, "outbox_entry_not_sent", logging.WARNING, entry=entry.id, error=str(exc))
