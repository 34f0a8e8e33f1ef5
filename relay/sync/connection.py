"""One sync websocket on the relay, its bounded send queue, the updates it submits, and the one
fan-out loop.

A :class:`SyncConnection` is a sans-I/O :class:`crdt_core.protocol.RelayProtocol` plus a send
queue drained by one writer task (see ``relay.sync.hub``, "Fan-out" and "Slow consumers").
:class:`Writes` is what the connections of one hub share for writing: the end-of-turn flush of
every connection that got messages in that turn, and the byte and slow-consumer counters.
:func:`send_to_subscribers` is the one place a message goes to every subscriber of a document.
:class:`Submission` is one update a connection sent, as the ordering path carries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import Protocol

from crdt_core.messages import CloseCode
from crdt_core.protocol import RelayProtocol
from relay.auth.tokens import Claims
from relay.documents.results import Pin
from relay.ops.config import SyncLimits
from relay.ops.metrics import Counter

#: How long a connection the hub closed may take to read what is queued and the close frame;
#: then it is dropped (``Transport.abort``), so a peer that stopped reading is disconnected too.
CLOSE_GRACE_S = 5.0


class Transport(Protocol):
    """What the hub needs of a websocket, so it runs under ASGI or straight on ``websockets``."""

    async def recv(self) -> bytes | str | None:
        """The next message; None when the peer has gone."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    # Optional: ``async def send_many(self, items: list[bytes]) -> None`` sends several messages
    # with one socket write; the writer uses it when the transport has it. And
    # ``def write_now(self, items: list[bytes]) -> bool`` writes them at once if the socket takes
    # them without waiting, else returns False (the writer task then sends them). And
    # ``def abort(self) -> None`` drops the connection at once, without the closing handshake:
    # ``CLOSE_GRACE_S`` after the hub closes a connection (a no-op if it is gone by then).


class Bucket:
    """Token bucket for updates per connection."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SyncConnection:
    """One websocket: its protocol state, identity, pins and bounded send queue."""

    _ids = itertools.count(1)

    def __init__(
        self, transport: Transport, header_token: str | None, limits: SyncLimits, writes: Writes
    ) -> None:
        self.id = next(self._ids)
        self.writes = writes
        self.send_queue_bytes = limits.send_queue_bytes
        self.transport = transport
        self.proto = RelayProtocol(header_auth=header_token is not None, max_message_size=limits.max_message)
        self.header_token = header_token
        self.claims: Claims | None = None
        self.pins: dict[str, Pin] = {}
        # A list, not a deque: an idle connection's empty deque costs 600 bytes, a list 56; the
        # queue is only ever taken whole (the writer, ``write_queued``) or trimmed at its end.
        self.queue: list[bytes] = []
        self.queued_bytes = 0
        #: The writer task and its wake-up event, made the first time a message cannot be
        #: written at once (socket full, off the fast path) or the connection closes: an idle
        #: connection on the fast path never needs them (a task, its coroutine and an event cost
        #: about 2 KiB each connection).
        self.writer_task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self.closing: tuple[int, str] | None = None
        self.bucket = Bucket(limits.rate_per_s, limits.burst)
        self.strikes = 0
        self.expiry: asyncio.TimerHandle | None = None
        #: Updates ordered and not yet answered, and the event the read loop waits on at the bound
        #: (made when first needed: an event costs about 700 bytes, and most connections never
        #: reach the bound).
        self.inflight = 0
        self._room: asyncio.Event | None = None
        self.write_now: Callable[[list[bytes]], bool] | None = getattr(transport, "write_now", None)
        #: Queued for the end-of-turn flush (:meth:`Writes.flush_dirty`).
        self.dirty = False
        #: The writer task is sending: it owns the queue's order until it is done.
        self.sending = False
        #: With several nodes: per document, open once this connection's last booking is stored
        #: or ordered again (``relay.sync.pipeline``).
        self.stamping: dict[str, asyncio.Future[None]] = {}
        #: While this connection holds an unauthenticated slot: the address key it is counted
        #: under (``SyncHub.anonymous``); None before, after authentication and once closed.
        self.anonymous_key: str | None = None

    @property
    def room(self) -> asyncio.Event:
        """Set when an update of this connection is answered (below the in-flight bound again)."""
        if self._room is None:
            self._room = asyncio.Event()
        return self._room

    def make_room(self) -> None:
        """One of this connection's updates was answered: wake the read loop if it waits."""
        if self._room is not None:
            self._room.set()

    @property
    def user(self) -> str | None:
        return self.claims.sub if self.claims else None

    # --- sending -------------------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Queue bytes for the writer; a consumer over its budget is cut off, never buffered forever."""
        if self.closing is not None:
            return
        self.queue.append(data)
        self.queued_bytes += len(data)
        if self.queued_bytes > self.send_queue_bytes:
            # Over budget is "behind" only if the socket takes nothing now: one event-loop turn
            # can queue more than the budget (a group commit's fan-out, a sync answer larger
            # than the budget) before its end-of-turn write, for a consumer that keeps up.
            self.write_queued()
            if self.queue:
                self.queue.pop()
                self.queued_bytes -= len(data)
                self.writes.slow_consumers.inc()
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: reconnect and catch up")
                return
        if self.write_now is None:
            self.wake_writer()
        elif not self.dirty:
            self.dirty = True
            self.writes.mark_dirty(self)

    def wake_writer(self) -> None:
        """Have the writer task send what is queued (and the close, once closing); starts it."""
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self.writer_task is None:
            self.writer_task = asyncio.get_running_loop().create_task(
                self.writer(), name=f"sync-writer-{self.id}"
            )

    def write_queued(self) -> None:
        """Write everything queued now if the transport takes it without waiting; else wake the
        writer task (socket full, closing, or the writer mid-send: it keeps the order)."""
        if not self.queue:
            return
        if self.sending or self.closing is not None or self.write_now is None:
            self.wake_writer()
            return
        try:
            written = self.write_now(self.queue)
        except Exception:  # the socket went away: the writer task meets it the ordinary way
            written = False
        if not written:
            self.wake_writer()
            return
        self.queue.clear()
        sent, self.queued_bytes = self.queued_bytes, 0
        self.writes.bytes_out.inc(sent)

    def flush(self) -> None:
        """Move everything the protocol produced to the queue; honour a close it asked for."""
        for data in self.proto.data_to_send():
            self.push(data)
        if self.proto.close_expected() and self.closing is None:
            self.close(self.proto.close_code or CloseCode.PROTOCOL_VIOLATION, self.proto.close_reason or "")

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (int(code), reason)
            self.wake_writer()
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                # A peer that reads nothing never takes the close frame (it waits behind the
                # queue); the relay would hold the socket, its buffers and its slot for ever.
                asyncio.get_running_loop().call_later(CLOSE_GRACE_S, abort)

    async def writer(self) -> None:
        send_many = getattr(self.transport, "send_many", None)
        try:
            while True:
                assert self._wakeup is not None  # made before the task (wake_writer)
                await self._wakeup.wait()
                self._wakeup.clear()
                while self.queue:
                    self.sending = True
                    batch, self.queue = self.queue, []
                    if send_many is not None:
                        # Everything queued so far in one call: one socket write on transports
                        # that can, instead of one per message.
                        sent, self.queued_bytes = self.queued_bytes, 0
                        await send_many(batch)
                        self.writes.bytes_out.inc(sent)
                        continue
                    for data in batch:  # what is queued meanwhile waits for the next round
                        self.queued_bytes -= len(data)
                        await self.transport.send(data)
                        self.writes.bytes_out.inc(len(data))
                self.sending = False
                if self.closing is not None:
                    code, reason = self.closing
                    with contextlib.suppress(Exception):
                        await self.transport.close(code, reason)
                    return
        except Exception:  # the socket went away under us; the reader sees it too
            if self.closing is None:
                self.closing = (CloseCode.GOING_AWAY, "")


@dataclass(frozen=True, slots=True)
class Submission:
    """One ``upd`` a connection sent, on its way through the ordering path (``relay.sync.pipeline``):
    what every step of that path (order, order again, settle, acknowledge) is about."""

    conn: SyncConnection
    doc: str
    uid: int
    update: bytes
    #: ``time.monotonic()`` when it arrived (ack latency).
    started: float
    #: How many times it was ordered again after another node took its stamp numbers first.
    attempt: int = 0

    def again(self) -> Submission:
        return replace(self, attempt=self.attempt + 1)


class Writes:
    """The writing the connections of one hub share (see ``relay.sync.hub``, "Fan-out")."""

    def __init__(self, bytes_out: Counter, slow_consumers: Counter) -> None:
        self.bytes_out = bytes_out
        self.slow_consumers = slow_consumers
        #: Connections with messages queued in this event-loop turn.
        self._dirty: list[SyncConnection] = []

    def mark_dirty(self, conn: SyncConnection) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self.flush_dirty)
        self._dirty.append(conn)

    def flush_dirty(self) -> None:
        """Once per event-loop turn: write what this turn queued, connection by connection."""
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.dirty = False
            conn.write_queued()


def send_to_subscribers(
    subscribers: MutableMapping[SyncConnection, int],
    doc: str,
    seq: int,
    data: bytes,
    *,
    skip: SyncConnection | None = None,
    advance: bool = False,
) -> int:
    """Queue ``data``, the message for seq ``seq`` of ``doc``, on every subscriber (connection ->
    the seq it subscribed at) that is behind ``seq`` and live on ``doc``, except ``skip``; returns
    how many got it. ``data`` is encoded once for all of them (see ``relay.sync.hub``, "Fan-out").

    ``advance``: ``data`` brings a subscriber up to ``seq`` (a catch-up after a reload), so every
    subscriber behind it is moved to ``seq``, live or not (one that is not live resyncs anyway).
    """
    sent = 0
    for conn, base in subscribers.items():
        if conn is skip or base >= seq:
            continue
        if advance:
            subscribers[conn] = seq
        if conn.proto.is_live(doc):
            conn.push(data)
            sent += 1
    return sent
