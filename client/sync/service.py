"""The sync service: one websocket to the relay, driven by crdt_core's sans-I/O ``ClientProtocol``.

Why it is shaped this way:

* **One connection for every subscribed document.** The protocol multiplexes documents, and a
  phone should not hold a socket per shop-day. A :class:`_Session` owns the websocket, the
  :class:`~crdt_core.protocol.ClientProtocol` and two tasks: a reader that only moves bytes into a
  queue, and a processor that feeds them to the protocol and handles the events *in order*. All
  database work happens in the processor (or in the caller awaiting it), so events of one doc are
  applied in the order the relay sent them.
* **Live updates are applied in small batches.** Whatever the reader has already queued (up to
  ``batch_size`` messages) goes through ``LocalClient.apply_remote_batch`` in one transaction,
  so verdicts are recomputed (and booking events emitted) once per batch, not once per message.
* **The outbox drains in order and an entry leaves only on its ack.** The uid of an update is
  its outbox entry id, so an ack (even on a later connection) names exactly one entry. A refusal
  with ``retry: false`` sets the entry aside for good (``mark_rejected``) and never blocks the
  entries behind it; a retryable one is counted (``mark_retry``) and re-sent by a **timer** with
  exponential backoff — never only when the user happens to write again.
* **The sync exchange repairs everything else.** After each ``sync`` answer the local diff
  against the relay's state vector is sent as an extra update (not an outbox entry): it carries
  whatever the relay lacks, e.g. after the relay lost data (new epoch) or when another process
  wrote the profile. If the relay refuses the diff, the outbox entries carry each local write
  individually; the refusal is logged and reported in ``SyncSummary.repair_refused``.
* **A refused write, or a relay update that does not fit, rebuilds the document from the
  relay's.** A device writes a document under one Yjs client id, so the writes behind a refused
  one continue a client clock the relay will never hold. The refusal queues the document for a
  rebuild (``LocalClient.pending_rebuilds``); the session asks the relay for the whole document
  (a sync with an empty state vector) and hands it to ``LocalClient.rebuild_from_relay``, which
  re-writes the still-pending local records under the next client id as new outbox entries;
  those are flushed at once. The same happens when an update from the relay cannot be applied
  locally even after a state-vector resync (the local document holds, at some Yjs id, something
  the relay does not: a malicious device gave it another record at that id through a peer): the
  relay's document is the authority on the relay path. Both are logged (``doc_rebuilt``,
  ``relay_update_conflict``) and reported in ``SyncSummary.rebuilt`` / ``conflicts``. Until the
  rebuild, no catch-up diff of that document is sent (it would carry the refused structs).
* **Closes follow** :func:`crdt_core.messages.close_action`: refresh the token and reconnect at
  once (4001), log in again (4003/4010: tokens cleared, ``LoggedOut``), stop (1008/4011...),
  or reconnect with exponential backoff and jitter (after a 4002, the longest backoff). An
  unreachable relay is reported once (``RelayUnreachable``) and retried from 0.2 s doubling to
  30 s; the queued bookings go out by themselves when it answers again. A transient close of a
  working connection (above all the relay's ``1001 relay restarting``) is reported the same way,
  with ``retry_in_s``, even when the relay is back before the first retry, and ``RelayReachable``
  follows the reconnect: an app learns that its live view paused.
* **TLS failures are not outages.** An untrusted certificate or a pin mismatch
  (:mod:`client.sync.tls`) raises :class:`SyncRelayInsecure` from :meth:`SyncService.sync_once`; the
  handshake aborts before the token is sent, and nothing ever falls back to plain ``ws://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection

from client.local.client import LocalClient
from client.local.events import RelayReachable, RelayUnreachable, Synced
from client.storage.store import OutboxEntry
from client.sync.auth import AuthClient, LoginRequired, RelayInsecure, RelayUnavailable, http_base
from client.sync.tls import tls_failure
from crdt_core.engine import merge_updates
from crdt_core.errors import EngineError, LocalProtocolError, ValidationError
from crdt_core.messages import CloseAction, CloseCode, ErrorCode, close_action
from crdt_core.pop import STALE_REASON, SYNC, proof_headers
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
from crdt_core.yupdate import decode_state_vector, decode_update

__all__ = [
    "SyncError",
    "SyncLoginRequired",
    "SyncRelayInsecure",
    "SyncRelayUnreachable",
    "SyncService",
    "SyncStopped",
    "SyncSummary",
    "SyncWebsocketBlocked",
    "sync_url",
]

log = logging.getLogger(__name__)

#: Yjs's encoding of an update that carries nothing: never worth sending.
_EMPTY_UPDATE = b"\x00\x00"
#: uids of the extra (diff) updates live above every outbox id.
_EXTRA_UID_BASE = 1 << 62
#: The relay's ``sync`` carries a whole document's missing state; accept large downloads.
_MAX_DOWNLOAD = 64 * 1024 * 1024
_SUBSCRIBED = (DocState.SYNCING, DocState.LIVE, DocState.STALE)
#: The state vector of a replica holding nothing: a sync with it fetches the whole document.
_EMPTY_SV = b"\x00"


def _is_full_state(update: bytes, relay_sv: bytes) -> bool:
    """Whether a sync answer carries the relay's whole document (every client from clock 0 up to
    the relay's state vector) rather than a diff against some state vector."""
    try:
        clocks = decode_state_vector(relay_sv)
        ranges = decode_update(update).ranges
    except EngineError:
        return False
    return all(start == 0 for start, _end in ranges.values()) and {
        client: end for client, (_start, end) in ranges.items()
    } == {client: clock for client, clock in clocks.items() if clock > 0}


class SyncError(Exception):
    """A sync could not complete; ``code`` is the close code when the relay closed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SyncRelayUnreachable(SyncError):
    """The relay did not answer (refused, timed out, dropped): local changes stay queued."""


class SyncRelayInsecure(SyncRelayUnreachable):
    """The relay failed the TLS check (untrusted certificate, pin mismatch): nothing was sent to it.

    A subclass of :class:`SyncRelayUnreachable` so that loops which retry later stay correct; the
    CLI tells it apart (its own exit status), because waiting does not fix it.
    """


class SyncWebsocketBlocked(SyncRelayUnreachable):
    """The websocket could not be opened but the relay answers plain HTTP (``transport="auto"``
    only): the sync goes over HTTP instead (:mod:`client.sync.http_fallback`)."""


class SyncLoginRequired(SyncError):
    """The relay refused the session for good (or the refresh failed): log in again."""


class SyncStopped(SyncError):
    """The relay closed with a permanent code (policy, protocol violation, account disabled)."""


@dataclass
class SyncSummary:
    """What one :meth:`SyncService.sync_once` did."""

    relay_url: str
    epoch: str = ""
    epoch_changed: bool = False
    docs: tuple[str, ...] = ()
    refused_docs: dict[str, str] = field(default_factory=dict)
    #: Documents left out because the relay's per-connection limit (``max_docs``) was reached:
    #: they are synced on a later round (pending changes always go first).
    deferred: tuple[str, ...] = ()
    applied: int = 0
    sent: int = 0
    acked: int = 0
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
    #: Repair updates (catch-up diffs) the relay refused: doc -> reason.
    repair_refused: dict[str, str] = field(default_factory=dict)
    #: Documents rebuilt from the relay's state (``LocalClient.rebuild_from_relay``): doc -> why.
    rebuilt: dict[str, str] = field(default_factory=dict)
    #: Relay updates that did not apply locally, so the document was rebuilt: doc -> reason.
    conflicts: dict[str, str] = field(default_factory=dict)
    #: Rebuilds that failed (the relay's document did not validate here): doc -> reason.
    rebuild_failed: dict[str, str] = field(default_factory=dict)
    retrying: int = 0
    pending: int = 0
    refreshed: int = 0
    reconnects: int = 0
    duration_s: float = 0.0


def sync_url(relay_url: str) -> str:
    """The websocket URL of the relay's sync endpoint for a URL the user gave."""
    base = http_base(relay_url)
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return base + "/api/v1/sync"


async def rebuild_doc(svc: SyncService, summary: SyncSummary, doc: str, state: bytes) -> bool:
    """Rebuild ``doc`` from the relay's whole ``state`` (``LocalClient.rebuild_from_relay``) and
    drop the retry timers of the entries it replaced; False (logged, in the summary) if it failed.
    Shared by the websocket session and :mod:`client.sync.http_fallback`."""
    try:
        result = await svc.local.rebuild_from_relay(doc, state)
    except ValidationError as exc:
        log.warning("doc_rebuild_failed", extra={"doc": doc, "code": exc.code, "detail": exc.detail})
        summary.rebuild_failed[doc] = f"{exc.code}: {exc.detail}"
        return False
    summary.rebuilt[doc] = result.reason
    summary.rebuild_failed.pop(doc, None)
    pending = {e.id for e in await svc.local.pending_entries()}
    for entry_id in list(svc._not_before):
        if entry_id not in pending:
            svc._forget_retry(entry_id)  # replaced by the rebuild's new entries
    return True


class _Closed(Exception):
    """The session's connection ended; ``code`` as received (1006 when the transport dropped)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed {code} {reason}".strip())
        self.code = code
        self.reason = reason


class _Session:
    """One websocket connection: the protocol machine, the reader and the event processor."""

    def __init__(self, service: SyncService, ws: ClientConnection, summary: SyncSummary) -> None:
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
            log.debug("sync transport error: %s", exc)
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
        log.warning("relay_update_conflict", extra={"doc": doc, "code": error.code, "detail": error.detail})
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
            log.warning("update for %s refused locally: %s", failure.doc_id, failure.error)
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
                log.warning("catch-up of %s refused locally: %s", failure.doc_id, failure.error)
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
            log.info("%s of %s not sent as one update (%s); the outbox carries it", what, doc, exc)
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
                log.warning("subscription to %s deferred: %s %s", event.doc, event.code, event.reason)
                return
            if event.doc is not None:
                self.rebuilding.discard(event.doc)  # no sync answer will come for it
                self.refused[event.doc] = f"{event.code}: {event.reason}"
                self.summary.refused_docs[event.doc] = f"{event.code}: {event.reason}"
                log.warning("subscription to %s refused: %s %s", event.doc, event.code, event.reason)
            else:
                log.warning("relay notice: %s %s", event.code, event.reason)
                if event.code == ErrorCode.RATE_LIMITED:
                    self.svc._slow_down()
            return
        self.inflight.pop(event.uid, None)
        if event.uid >= _EXTRA_UID_BASE:
            what = self.extras.pop(event.uid, "repair update")
            log.info("relay refused the %s of %s (%s: %s)", what, event.doc, event.code, event.reason)
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
                log.warning("cannot subscribe to %s: %s", doc, exc)
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
                log.info("queued updates of %s not bundled: %s", doc, exc)
                continue
            self._send_extra(doc, bundle, f"bundle of {len(group)} queued updates")

    async def _fail_locally(self, entry: OutboxEntry, exc: LocalProtocolError) -> None:
        if "exceeds" in str(exc):  # larger than the relay's max_message: it would close with 1009
            await self.local.mark_rejected(entry.id, "too_big", str(exc))
            self.summary.rejected.append((entry.id, "too_big", str(exc)))
            await self._resync(entry.doc_id, full=True)
        else:
            log.warning("outbox entry %s not sent: %s", entry.id, exc)


class TransportFallback(Protocol):
    """What a :class:`SyncService` needs to sync without a websocket (``http_fallback.HttpFallback``).

    Why injected rather than imported: the HTTP path drives the service's own outbox, retries and
    events, so it depends on this module; the service reaching back into it would make the two
    modules a cycle. The CLI passes one; a service built without one syncs over websockets only.
    """

    def blocked(self, exc: BaseException) -> str | None: ...

    async def reachable(self, svc: SyncService) -> bool: ...

    async def sync_once(
        self,
        svc: SyncService,
        over_websocket: Callable[[], Awaitable[SyncSummary]],
        timeout_s: float,
        retry_window_s: float,
    ) -> SyncSummary: ...

    async def run(self, svc: SyncService, over_websocket: Callable[[], Awaitable[None]]) -> None: ...


class SyncService:
    """Keeps one profile in sync with one relay.

    Args:
        local: the opened profile (it must be logged in: tokens and relay keys cached).
        relay_url: ``http(s)://`` or ``ws(s)://`` base URL of the relay.
        auth: the REST client used to refresh tokens (default: one for ``relay_url``).
        ssl_context: for ``wss://`` (a CA file or pinning is configured in it by the caller).
        backoff_initial_s / backoff_max_s: reconnect delays (doubling, with jitter).
        retry_initial_s / retry_max_s: re-send delays of an outbox entry after a retryable error.
        poll_interval_s: how often a live session looks for new local writes and due retries.
        batch_size: most received messages applied in one ``apply_remote_batch``.
        response_timeout_s: silence while an answer is due before the connection is dropped.
    """

    def __init__(
        self,
        local: LocalClient,
        relay_url: str,
        *,
        auth: AuthClient | None = None,
        ssl_context: Any = None,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        poll_interval_s: float = 0.25,
        batch_size: int = 64,
        connect_timeout_s: float = 10.0,
        response_timeout_s: float = 30.0,
        rng: random.Random | None = None,
        transport: str = "auto",
        http_poll_s: float = 5.0,
        ws_retry_s: float = 300.0,
        fallback: TransportFallback | None = None,
    ) -> None:
        self.local = local
        self.relay_url = http_base(relay_url)
        self.ws_url = sync_url(relay_url)
        self.auth = auth or AuthClient(
            local, relay_url, verify=ssl_context if ssl_context is not None else True
        )
        self.ssl_context = ssl_context
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.connect_timeout_s = connect_timeout_s
        self.response_timeout_s = response_timeout_s
        self._rng = rng or random.Random()
        #: "auto" (websocket, plain HTTP when it is blocked), "websocket" or "http"; see
        #: client.sync.http_fallback. http_poll_s: a watch's poll interval over HTTP; ws_retry_s: how long
        #: an auto watch polls HTTP before trying the websocket again.
        self.transport = transport
        self.fallback = fallback
        if transport == "http" and fallback is None:
            raise ValueError(
                "transport 'http' needs a fallback: pass client.sync.http_fallback.HttpFallback()"
            )
        self.http_poll_s = http_poll_s
        self.ws_retry_s = ws_retry_s
        #: Which transport the last sync used ("websocket"/"http") and why.
        self.last_transport: str | None = None
        self.transport_reason = ""
        self._not_before: dict[int, float] = {}
        self._attempts: dict[int, int] = {}
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._unreachable_reported = False
        self._session: _Session | None = None
        #: Counters for status displays and tests.
        self.refresh_count = 0
        self.retry_count = 0
        self.connect_count = 0
        self.last_sync_ms: int | None = None
        self.last_error: str | None = None
        self.connected = asyncio.Event()

    # --- retry bookkeeping (the retry timer) --------------------------------------------------

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self._rng.random())

    def _schedule_retry(self, entry_id: int) -> None:
        attempts = self._attempts.get(entry_id, 0) + 1
        self._attempts[entry_id] = attempts
        delay = min(self.retry_initial_s * 2 ** (attempts - 1), self.retry_max_s)
        self._not_before[entry_id] = time.monotonic() + self._jitter(delay)

    def _forget_retry(self, entry_id: int) -> None:
        self._not_before.pop(entry_id, None)
        self._attempts.pop(entry_id, None)

    def _due(self, entry_id: int, now: float) -> bool:
        return self._not_before.get(entry_id, 0.0) <= now

    def _slow_down(self) -> None:
        """A connection-level ``rate_limited`` notice: hold every queued retry back a little."""
        later = time.monotonic() + self._jitter(self.retry_initial_s)
        for entry_id in list(self._not_before):
            self._not_before[entry_id] = max(self._not_before[entry_id], later)

    def _next_due_in(self) -> float | None:
        if not self._not_before:
            return None
        return max(0.0, min(self._not_before.values()) - time.monotonic())

    # --- control -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish (it closes the connection with 1000)."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """A local write happened: flush now rather than at the next poll."""
        self._wake.set()

    # --- connecting ----------------------------------------------------------------------------

    async def _connect(self, summary: SyncSummary) -> _Session:
        """Open a session and wait for the welcome, refreshing an expired token once.

        Raises:
            SyncRelayUnreachable, SyncLoginRequired, _Closed
        """
        clock_checked = False
        for _ in range(3):
            try:
                token = await self.auth.access_token()
            except LoginRequired as exc:
                await self._logged_out()
                raise SyncLoginRequired(f"log in again ({exc.code})") from exc
            identity = self.local.identity
            try:
                # A token bound to the device key goes with a proof of possession (crdt_core.pop).
                headers = proof_headers(
                    token, identity.device.private if identity else None, SYNC, clock=self.auth.proof_clock
                )
            except ValueError as exc:
                await self._logged_out()
                raise SyncLoginRequired(f"log in again ({exc})") from exc
            try:
                ws = await websockets.connect(
                    self.ws_url,
                    additional_headers=headers,
                    max_size=_MAX_DOWNLOAD,
                    open_timeout=self.connect_timeout_s,
                    # wss:// with no context of ours: the system's CAs (None would be a ValueError).
                    ssl=(self.ssl_context or True) if self.ws_url.startswith("wss://") else None,
                    ping_interval=20,
                    ping_timeout=20,
                )
            except websockets.InvalidStatus as exc:
                if exc.response.status_code == 401:
                    await self._refresh(summary)
                    continue
                raise await self._unopened(f"handshake refused: {exc}", exc) from exc
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.ConnectionClosed) as exc:
                insecure = tls_failure(exc)
                if insecure is not None:
                    raise SyncRelayInsecure(insecure) from exc
                raise await self._unopened(str(exc) or type(exc).__name__, exc) from exc
            session = _Session(self, ws, summary)
            try:
                await session.await_welcome(self.connect_timeout_s)
            except _Closed as closed:
                await session.close()
                if close_action(closed.code) is CloseAction.REFRESH_TOKEN:
                    await self._refresh(summary)
                    continue
                if closed.code == CloseCode.ABNORMAL:  # dropped before the first message
                    blocked = await self._unopened("", closed)
                    if isinstance(blocked, SyncWebsocketBlocked):
                        raise blocked from closed
                if closed.reason == STALE_REASON and not clock_checked:
                    # Our clock, not our session, is wrong: learn the relay's and try once more.
                    clock_checked = True
                    try:
                        await self.auth.learn_relay_clock()
                    except RelayUnavailable as exc:
                        raise SyncRelayUnreachable(f"relay clock unavailable: {exc}") from exc
                    continue
                raise
            self.connect_count += 1
            return session
        raise SyncLoginRequired("the relay keeps refusing fresh tokens: log in again")

    async def _unopened(self, message: str, exc: BaseException) -> SyncRelayUnreachable:
        """The error for a websocket that did not open: blocked (auto falls back to HTTP) or not."""
        if self.transport == "auto" and self.fallback is not None:
            why = (
                "the connection dropped (1006) before the first message" if isinstance(exc, _Closed) else None
            )
            why = why or self.fallback.blocked(exc)
            if why is not None and await self.fallback.reachable(self):
                return SyncWebsocketBlocked(why)
        return SyncRelayUnreachable(message)

    async def _refresh(self, summary: SyncSummary) -> None:
        try:
            await self.auth.refresh()
        except LoginRequired as exc:
            await self._logged_out()
            raise SyncLoginRequired(f"log in again ({exc.code})") from exc
        except RelayInsecure as exc:
            raise SyncRelayInsecure(str(exc)) from exc
        except RelayUnavailable as exc:
            raise SyncRelayUnreachable(f"token refresh failed: {exc}") from exc
        self.refresh_count += 1
        summary.refreshed += 1

    async def _logged_out(self) -> None:
        tokens = await asyncio.to_thread(self.local.secrets.tokens)
        if self.local.identity is not None or tokens is not None:
            await self.local.logout("log in again")

    async def _start(self, session: _Session, summary: SyncSummary) -> list[str]:
        """After the welcome: check the epoch, subscribe every doc, flush the outbox."""
        assert session.welcome is not None
        epoch = session.welcome.epoch
        summary.epoch = epoch
        store = self.local.store
        stored = await store.get_epoch(self.relay_url)
        # Documents with changes of ours waiting go first: the relay's max_docs may not fit all.
        docs = list(dict.fromkeys(e.doc_id for e in await self.local.pending_entries()))
        docs.extend(d for d in await self.local.pending_rebuilds() if d not in docs)
        docs.extend(d for d in await self.local.subscribed_docs() if d not in docs)
        if stored is None:
            await store.set_epoch(self.relay_url, epoch)
        elif stored != epoch:
            log.warning(
                "relay %s has a new epoch (%s -> %s): sending local state again",
                self.relay_url,
                stored,
                epoch,
            )
            held = await store.reset_for_epoch(self.relay_url, epoch)
            summary.epoch_changed = True
            docs.extend(d for d in held if d not in docs)
        new = await session.subscribe(docs)
        summary.docs = tuple(sorted(set(summary.docs) | set(new)))
        await session.wait_for(session.subs_answered(new), self.response_timeout_s)
        await session.flush_outbox()
        return new

    # --- one round -----------------------------------------------------------------------------

    async def sync_once(
        self, timeout_s: float = 60.0, retry_window_s: float = 5.0, settle_s: float = 0.2
    ) -> SyncSummary:
        """Connect, catch up every subscribed doc, flush the outbox, wait for the answers.

        Retryable failures are re-sent on their timers for up to ``retry_window_s``; what still
        fails is left pending for the next round and counted in ``retrying``. After the last
        answer the connection stays open until the relay has been quiet for ``settle_s``, so
        the stamps that follow an ack (and live updates in flight) are applied in this round.

        Raises:
            SyncRelayUnreachable: the relay could not be reached (``RelayUnreachable`` emitted).
            SyncLoginRequired: tokens cleared, ``LoggedOut`` emitted.
            SyncStopped: the relay closed for good.
        """
        if self.transport != "websocket" and self.fallback is not None:
            return await self.fallback.sync_once(
                self,
                lambda: self._sync_once_ws(timeout_s, retry_window_s, settle_s),
                timeout_s,
                retry_window_s,
            )
        self.last_transport, self.transport_reason = "websocket", "configured: --transport websocket"
        return await self._sync_once_ws(timeout_s, retry_window_s, settle_s)

    async def _sync_once_ws(self, timeout_s: float, retry_window_s: float, settle_s: float) -> SyncSummary:
        summary = SyncSummary(self.relay_url)
        started = time.monotonic()
        deadline = started + timeout_s
        for _attempt in range(4):
            try:
                session = await self._connect(summary)
            except SyncWebsocketBlocked:
                raise  # auto: client.sync.http_fallback syncs over HTTP instead
            except SyncRelayUnreachable as exc:
                self._report_unreachable(str(exc), None)
                raise
            except _Closed as closed:
                await self._handle_fatal_close(closed)
                summary.reconnects += 1
                await asyncio.sleep(self._jitter(self.backoff_initial_s))
                continue
            self._report_reachable()
            try:
                await self._start(session, summary)
                retry_until = min(deadline, time.monotonic() + retry_window_s)
                while True:
                    await session.wait_for(session.idle, max(0.1, deadline - time.monotonic()))
                    wait = self._next_due_in()
                    if wait is None or time.monotonic() + wait > retry_until:
                        break
                    await asyncio.sleep(wait)
                    await session.flush_outbox()
                await session.settle(settle_s, min(deadline, time.monotonic() + 10 * settle_s))
                await self._rotate_all(session, summary, deadline, settle_s)
            except _Closed as closed:
                await session.close()
                await self._handle_fatal_close(closed)
                if close_action(closed.code) is CloseAction.REFRESH_TOKEN:
                    await self._refresh(summary)
                else:
                    self._report_dropped(closed, 0.0)
                summary.reconnects += 1
                continue
            except TimeoutError as exc:
                await session.close(1001, "timed out")
                raise SyncRelayUnreachable("the relay did not answer in time") from exc
            await session.close(1000, "sync done")
            break
        else:
            raise SyncRelayUnreachable("the connection kept dropping")
        counts = await self.local.outbox_counts()
        summary.pending = counts.pending
        summary.retrying = len(self._not_before)
        summary.duration_s = time.monotonic() - started
        self._emit_synced(summary)
        return summary

    async def _rotate_all(
        self, session: _Session, summary: SyncSummary, deadline: float, settle_s: float
    ) -> None:
        """Sync the documents the relay's ``max_docs`` left out, one batch after another."""
        while session.deferred and time.monotonic() < deadline:
            new = await session.rotate()
            if not new:
                break
            summary.docs = tuple(sorted(set(summary.docs) | set(new)))
            await session.wait_for(session.subs_answered(new), max(0.1, deadline - time.monotonic()))
            await session.flush_outbox()
            await session.wait_for(session.idle, max(0.1, deadline - time.monotonic()))
            await session.settle(settle_s, min(deadline, time.monotonic() + 10 * settle_s))
        summary.deferred = tuple(session.deferred)

    # --- forever -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Stay in sync until :meth:`stop`: reconnect with backoff, refresh tokens, retry on timers.

        Returns normally after :meth:`stop`, after a permanent close (an error event is emitted)
        or when the user must log in again (``LoggedOut`` is emitted). A :meth:`stop` that comes
        before the task got to run still ends it (the request is cleared when ``run`` returns, not
        when it starts, so it cannot be lost), and the next ``run`` starts afresh.
        """
        try:
            if self.transport == "websocket":
                self.last_transport, self.transport_reason = "websocket", "configured: --transport websocket"
                await self._run()
            elif self.fallback is not None:
                await self.fallback.run(self, self._run)
            else:
                self.last_transport, self.transport_reason = "websocket", "no HTTP fallback given"
                await self._run()
        finally:
            self._stop.clear()

    async def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            summary = SyncSummary(self.relay_url)
            try:
                session = await self._connect(summary)
            except SyncWebsocketBlocked:
                raise  # auto: client.sync.http_fallback polls over HTTP instead
            except SyncRelayUnreachable as exc:
                delay = self._jitter(backoff)
                self._report_unreachable(str(exc), delay)
                backoff = min(backoff * 2, self.backoff_max_s)
                await self._sleep(delay)
                continue
            except SyncLoginRequired:
                return
            except _Closed as closed:
                if not await self._after_close(closed):
                    return
                delay = self._jitter(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                self._report_dropped(closed, delay)
                await self._sleep(delay)
                continue
            self._report_reachable()
            self._session = session
            self.connected.set()
            try:
                await self._live(session, summary)
            except _Closed as closed:
                await session.close()
                if session.synced:  # the connection worked: a new failure starts a new backoff
                    backoff = self.backoff_initial_s
                if closed.code == CloseCode.TOO_FAST:  # 4029: "reconnect after a longer backoff"
                    backoff = min(backoff * 4, self.backoff_max_s)
                if closed.code == CloseCode.PROTOCOL_VIOLATION:  # a bug, or a mangled message: wait long
                    backoff = self.backoff_max_s
                if close_action(closed.code) is CloseAction.REFRESH_TOKEN:
                    try:
                        await self._refresh(summary)
                    except SyncLoginRequired:
                        return
                    except SyncRelayUnreachable as exc:
                        self._report_unreachable(str(exc), backoff)
                        await self._sleep(self._jitter(backoff))
                    continue  # at once, with the new token
                if not await self._after_close(closed):
                    return
                delay = self._jitter(backoff)
                self._report_dropped(closed, delay)
                await self._sleep(delay)
                backoff = min(backoff * 2, self.backoff_max_s)
            except TimeoutError:
                await session.close(1001, "timed out")
                delay = self._jitter(backoff)
                self._report_unreachable("the relay stopped answering; reconnecting", delay)
                await self._sleep(delay)
            finally:
                self.connected.clear()
                self._session = None
            if self._stop.is_set():
                await session.close(1000, "stopped")

    async def _live(self, session: _Session, summary: SyncSummary) -> None:
        await self._start(session, summary)
        await session.wait_for(session.idle, self.response_timeout_s)
        session.synced = True
        self._emit_synced(summary)
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.poll_interval_s
            due = self._next_due_in()
            if due is not None:
                wait = min(wait, due)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            if session.closed is not None:
                raise session.closed
            if self._stop.is_set():
                break
            new = await session.subscribe(await self.local.subscribed_docs())
            if new:
                summary.docs = tuple(sorted(set(summary.docs) | set(new)))
            if await session.flush_outbox() and not self._not_before:
                self.last_sync_ms = int(time.time() * 1000)
        await session.close(1000, "stopped")

    async def _sleep(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    async def _after_close(self, closed: _Closed) -> bool:
        """Act on a close; returns whether to keep reconnecting."""
        try:
            await self._handle_fatal_close(closed)
        except (SyncLoginRequired, SyncStopped):
            return False
        return True

    async def _handle_fatal_close(self, closed: _Closed) -> None:
        """Raise for closes that end syncing; transient ones just return."""
        action = close_action(closed.code)
        self.last_error = f"closed {closed.code} {closed.reason}".strip()
        if action is CloseAction.LOGIN:
            await self._logged_out()
            raise SyncLoginRequired(f"log in again ({closed.reason or closed.code})", closed.code)
        if action is CloseAction.STOP:
            self.local.emit(
                RelayUnreachable(
                    at_ms=int(time.time() * 1000),
                    relay_url=self.relay_url,
                    error=f"relay closed the connection for good: {closed.code} {closed.reason}".strip(),
                    retry_in_s=None,
                )
            )
            raise SyncStopped(f"relay closed {closed.code}: {closed.reason}", closed.code)
        log.info("connection closed (%s %s); reconnecting", closed.code, closed.reason)

    # --- events --------------------------------------------------------------------------------

    def _report_unreachable(self, error: str, retry_in: float | None) -> None:
        self.last_error = error
        if self._unreachable_reported:
            return
        self._unreachable_reported = True
        log.warning("relay %s unreachable: %s", self.relay_url, error)
        self.local.emit(
            RelayUnreachable(
                at_ms=int(time.time() * 1000), relay_url=self.relay_url, error=error, retry_in_s=retry_in
            )
        )

    def _report_dropped(self, closed: _Closed, retry_in: float) -> None:
        """A working connection ended with a transient close: tell the app its live view paused.

        Why an event even when the relay comes back at once: after ``1001 relay restarting`` the
        app's data is stale until the reconnect, and a restart is exactly when users notice.
        """
        if closed.code == CloseCode.GOING_AWAY:
            what = f"relay going away ({closed.code} {closed.reason or 'restarting'})"
        else:
            what = f"connection closed ({closed.code} {closed.reason})".replace(" )", ")")
        self._report_unreachable(f"{what}; reconnecting", retry_in)

    def _report_reachable(self) -> None:
        if self._unreachable_reported:
            self._unreachable_reported = False
            self.local.emit(RelayReachable(at_ms=int(time.time() * 1000), relay_url=self.relay_url))

    def _emit_synced(self, summary: SyncSummary) -> None:
        self.last_sync_ms = int(time.time() * 1000)
        self.last_error = None
        self.local.emit(
            Synced(
                at_ms=self.last_sync_ms, relay_url=self.relay_url, docs=summary.docs, pending=summary.pending
            )
        )
