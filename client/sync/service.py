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
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, cast

import websockets

from client.local.client import LocalClient
from client.log import get_logger, log_event
from client.sync.auth import AuthClient, LoginRequired, RelayInsecure, RelayUnavailable, http_base
from client.sync.base import (
    _MAX_DOWNLOAD,
    ServiceBase,
    SocketOpener,
    SyncSocket,
    SyncSummary,
    _Closed,
    sync_url,
)
from client.sync.errors import (
    SyncError,
    SyncLoginRequired,
    SyncRelayInsecure,
    SyncRelayUnreachable,
    SyncStopped,
    SyncWebsocketBlocked,
)
from client.sync.session import _Session
from client.sync.tls import tls_failure
from crdt_core.messages import CloseAction, CloseCode, close_action
from crdt_core.pop import STALE_REASON, SYNC, proof_headers

log = get_logger(__name__)

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


class SyncService(ServiceBase):
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
        open_socket: opens the sync connection instead of a websocket (``client.sync.base.SyncSocket``:
            an in-memory channel to an in-process relay, for tests of the session's logic).
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
        open_socket: SocketOpener | None = None,
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
        self.open_socket = open_socket
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

    # --- connecting ----------------------------------------------------------------------------

    async def _open_websocket(self, url: str, headers: Mapping[str, str]) -> SyncSocket:
        """The real transport: a websocket to the relay (what ``open_socket`` stands in for)."""
        connection = await websockets.connect(
            url,
            additional_headers=dict(headers),
            max_size=_MAX_DOWNLOAD,
            open_timeout=self.connect_timeout_s,
            # wss:// with no context of ours: the system's CAs (None would be a ValueError).
            ssl=(self.ssl_context or True) if url.startswith("wss://") else None,
            ping_interval=20,
            ping_timeout=20,
        )
        return cast(SyncSocket, connection)

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
                ws = await (self.open_socket or self._open_websocket)(self.ws_url, headers)
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
            log_event(log, "relay_new_epoch", logging.WARNING, relay=self.relay_url, old=stored, new=epoch)
            held = await store.reset_for_epoch(self.relay_url, epoch)
            summary.epoch_changed = True
            docs.extend(d for d in held if d not in docs)
        new = await session.subscribe(docs)
        summary.docs = tuple(sorted(set(summary.docs) | set(new)))
        await session.wait_for(session.subs_answered(new), self.response_timeout_s)
        await session.flush_outbox()
        # What just arrived can widen what is followed: the user's document lists the days the
        # user booked on other devices (``LocalClient.following``). Subscribe those too, once,
        # so a new device shows every booking after its first sync.
        more = await session.subscribe(await self.local.subscribed_docs())
        if more:
            summary.docs = tuple(sorted(set(summary.docs) | set(more)))
            await session.wait_for(session.subs_answered(more), self.response_timeout_s)
            new = new + more
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
