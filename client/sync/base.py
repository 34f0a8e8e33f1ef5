"""What the sync service's parts share: the summary of a round, the relay's sync URL, the
transport seam, and :class:`ServiceBase` (settings, retry timer, control, events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from client.local.client import LocalClient
from client.local.events import RelayReachable, RelayUnreachable, Synced
from client.log import get_logger, log_event
from client.sync.auth import AuthClient, http_base
from client.sync.errors import SyncLoginRequired, SyncStopped
from crdt_core.errors import EngineError, ValidationError
from crdt_core.messages import CloseAction, CloseCode, close_action
from crdt_core.protocol import (
    DocState,
)
from crdt_core.yupdate import decode_state_vector, decode_update

log = get_logger(__name__)

#: Yjs's encoding of an update that carries nothing: never worth sending.
_EMPTY_UPDATE = b"\x00\x00"
#: uids of the extra (diff) updates live above every outbox id.
_EXTRA_UID_BASE = 1 << 62
#: The relay's ``sync`` carries a whole document's missing state; accept large downloads.
_MAX_DOWNLOAD = 64 * 1024 * 1024
_SUBSCRIBED = (DocState.SYNCING, DocState.LIVE, DocState.STALE)
#: The state vector of a replica holding nothing: a sync with it fetches the whole document.
_EMPTY_SV = b"\x00"


class SyncSocket(Protocol):
    """What a sync session needs of its connection: a websocket, or an in-memory channel.

    Why a seam: the session's logic (outbox order, acks, refusals, rebuilds, closes) is the same
    whatever carries the bytes, and a test can drive it against an in-process relay (the sans-I/O
    ``crdt_core.protocol.RelayProtocol``) without sockets. Iterating yields each message and ends
    when the connection closes; ``close_code`` is then set.
    """

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def __aiter__(self) -> AsyncIterator[bytes | str]: ...


#: Opens a :class:`SyncSocket` to a sync URL with the handshake headers (token, proof).
SocketOpener = Callable[[str, Mapping[str, str]], Awaitable[SyncSocket]]


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


async def rebuild_doc(svc: ServiceBase, summary: SyncSummary, doc: str, state: bytes) -> bool:
    """Rebuild ``doc`` from the relay's whole ``state`` (``LocalClient.rebuild_from_relay``) and
    drop the retry timers of the entries it replaced; False (logged, in the summary) if it failed.
    Shared by the websocket session and :mod:`client.sync.http_fallback`."""
    try:
        result = await svc.local.rebuild_from_relay(doc, state)
    except ValidationError as exc:
        log_event(log, "doc_rebuild_failed", logging.WARNING, doc=doc, code=exc.code, detail=exc.detail)
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


class ServiceBase:
    """A sync service's settings, retry timer, control and events: what its sessions and the HTTP
    transport use. :class:`client.sync.service.SyncService` adds connecting and the sync rounds."""

    # Set by SyncService.__init__ (its docstring describes them).
    local: LocalClient
    relay_url: str
    ws_url: str
    auth: AuthClient
    ssl_context: Any
    backoff_initial_s: float
    backoff_max_s: float
    retry_initial_s: float
    retry_max_s: float
    poll_interval_s: float
    batch_size: int
    connect_timeout_s: float
    response_timeout_s: float
    transport: str
    http_poll_s: float
    ws_retry_s: float
    last_transport: str | None
    transport_reason: str
    refresh_count: int
    retry_count: int
    connect_count: int
    last_sync_ms: int | None
    last_error: str | None
    connected: asyncio.Event
    _rng: random.Random
    _not_before: dict[int, float]
    _attempts: dict[int, int]
    _stop: asyncio.Event
    _wake: asyncio.Event
    _unreachable_reported: bool

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

    async def _logged_out(self) -> None:
        tokens = await asyncio.to_thread(self.local.secrets.tokens)
        if self.local.identity is not None or tokens is not None:
            await self.local.logout("log in again")

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
        log_event(log, "connection_closed", code=closed.code, reason=closed.reason, reconnecting=True)

    # --- events --------------------------------------------------------------------------------

    def _report_unreachable(self, error: str, retry_in: float | None) -> None:
        self.last_error = error
        if self._unreachable_reported:
            return
        self._unreachable_reported = True
        log_event(log, "relay_unreachable", logging.WARNING, relay=self.relay_url, error=error)
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
