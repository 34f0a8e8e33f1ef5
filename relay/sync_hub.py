"""The relay's sync service: authenticate, authorise, validate, store, stamp, acknowledge, fan out.

Theory of operation
-------------------
Each websocket is a :class:`SyncConnection`: a sans-I/O :class:`crdt_core.protocol.RelayProtocol`
plus a bounded send queue drained by one writer task. The hub feeds received frames to the
protocol and handles its events; everything the protocol wants to send is moved to the queue
right away, before the next ``await``, so answers and the live stream never overtake each other.

* **Subscribe** (sync step 1): read rights by the connection's identity; then, under the
  document's lock (``DocumentManager.read``, which first waits for every ordered commit), the
  diff against the client's state vector is computed and the connection is registered as a
  subscriber at that sequence number, in one synchronous step: no live update can fall between.
* **Update**: under the document's lock (``DocumentManager.order``) the update is validated by
  crdt_core (the same rules every peer runs), applied, the relay stamps each new reservation with
  the document's next stamp numbers (a relay-signed record in its own update), and both updates
  are ordered into one group commit. When it commits, a callback (run in commit order, so in
  sequence order) acknowledges the sender and fans the bytes out: the update to every other live
  subscriber, and with it, in the same ``stamped`` message, the stamp update (the sender's ack
  carries the stamps likewise). Nothing is shown to anyone before it is durable, and nothing
  rejected is stored or forwarded.
* **Pipelining**: the read loop does not wait for a commit. Once an update is ordered it reads,
  validates and orders the next one, so one connection's outbox flush shares group commits
  instead of paying one commit latency per update. Acks still go out only after the commit, in
  commit order (which is the order the connection sent them). At most ``max_inflight`` updates
  of a connection are ordered and unanswered; at the bound the loop stops reading that socket
  until one is answered (TCP backpressure; nothing is refused).
* **Fan-out** encodes each outgoing message once and appends the same bytes to each subscriber's
  queue: no task and no protocol work per recipient beyond a set lookup. Where the transport can
  write without waiting (``write_now``), one callback per event-loop turn writes every
  connection that got messages in that turn, all of a connection's messages with one socket
  write, with no task switch per recipient; a connection whose socket is full (flow control), or
  a transport without ``write_now``, is written by its own writer task, which waits.
* **Unauthenticated sockets**: one client address holds at most ``anonymous_per_address`` sockets
  that have not sent ``auth`` yet; the next is closed with 1013 at once (``relay.anonymous_slots``).
* **Slow consumers**: a queue over its byte budget whose socket takes nothing now closes the
  connection with 1013 ("try again later"); the client reconnects and catches up by state
  vector. (Over budget with a socket that takes bytes, as when one turn queues a large group
  commit's fan-out or a sync answer larger than the budget, the queue is written at once.) Per
  connection the relay holds at most the queue, the batch the writer task waits to send and the
  socket's write buffer (under asyncio's 64 KiB high-water mark plus one write): about three
  budgets plus 64 KiB, or one larger message. A connection the hub closes is dropped
  ``CLOSE_GRACE_S`` later (``Transport.abort``): a peer that stopped reading never takes its
  close frame. (Pongs: ``relay.ws_protocol``.)
* **Several nodes** (a :class:`relay.fanout.Fanout`; without one none of this runs): every append
  this node commits is published at once (``on_commit``), and every other node's append goes to
  ``DocumentManager.remote_commit``, which applies it to the loaded replica and, in seq order with
  this node's own commits, calls back to forward it to the subscribers here, exactly like a local
  one (``stamped`` for a booking). An update whose stamp base another node used first
  (``StampConflictError``; nothing of it is stored) is ordered again, after a short random
  pause, up to ``STAMP_CONFLICT_RETRIES`` times, once the document is reloaded, so the client
  never sees the race. Meanwhile that connection's next update of the document waits (a gate per
  connection and document, ``SyncConnection.stamping``): it usually depends on the refused one,
  and ordered first it would be refused for missing dependencies. When the manager reloads a
  document its subscribers may have missed seqs of, they get the difference as one ``upd`` at
  the store's seq (``_catchup``); a skipped seq there makes the client resync. A fan-out reset
  (Redis lost entries) reloads every loaded document so.
* **Stamp order** (``claims_to_stamp``): the claims of one update are numbered in
  ``crdt_core.verdict.stamp_order``, the tentative order (HLC, customer, reservation id) every
  replica already showed, not in the order the update happens to hold them: a device carrying
  several customers' offline bookings never reorders them. Claims of *different* updates are
  numbered in the order the updates are ordered, even when they share one group commit: each
  update's stamp records are built, applied and fanned out with it before the batch exists.
* **Impossible parties** (``_refuse_impossible_parties``): a bookings update with a reservation whose
  party exceeds ``SyncLimits.max_party`` (``--max-party``), or the capacity its slot has that day
  in the relay's copy of the shop document (an open slot: capacity above 0), is refused at
  arrival with ``party_too_large``. The verdict would make it ``too_large`` anyway
  (``crdt_core.verdict``); refusing it tells the sender at once and keeps it out of the log.
  Likewise a customer's further claim on a slot beyond its ``per_customer`` (``duplicate`` in the
  verdict) is refused with ``duplicate_booking`` (``crdt_core.repeats``), and the shop's staff
  list gives staff rights in its days (``crdt_core.shop_rules``, read with the templates).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from crdt_core.authoring import write_stamps
from crdt_core.certs import CertificateCache, SigningKey
from crdt_core.clientids import GENERATIONS, client_id_for
from crdt_core.engine import Replica
from crdt_core.equivocation import find_equivocation
from crdt_core.errors import EngineError, ValidationError
from crdt_core.messages import (
    MAX_STAMPS,
    CloseCode,
    ErrorCode,
    Limit,
    encode_stamp,
    encode_stamped,
    encode_update,
)
from crdt_core.pop import SYNC, Proof, ProofError, Purpose, parse_proof
from crdt_core.protocol import (
    AuthRequested,
    RelayProtocol,
    SubscribeRequested,
    UnsubscribeRequested,
    UpdateSubmitted,
)
from crdt_core.records import RELAY_SIGNER_PREFIX
from crdt_core.repeats import refuse_repeat_bookings
from crdt_core.schema import DocId, DocKind, parse_doc_id
from crdt_core.shop_rules import ShopRules, read_shop_rules
from crdt_core.validation import ArrivalPolicy, Reason, ValidatedUpdate, validate_update
from crdt_core.verdict import exceeds_capacity, stamp_order
from relay.anonymous_slots import AnonymousSlots, address_key
from relay.config import SyncLimits
from relay.documents import (
    Applied,
    CapacityError,
    DocumentManager,
    ManagerClosedError,
    Ordered,
    Pin,
    StampSequence,
)
from relay.fanout.base import Committed, Fanout
from relay.metrics import MetricsRegistry
from relay.rights import RightsCache
from relay.stamp_hold import StampHold, held_claims
from relay.store.base import AppendResult, StampConflictError, StoredDocument, StoreError
from relay.tokens import Claims, ProofFailed, TokenError, TokenExpired, TokenRevoked

log = logging.getLogger("quickslot.relay.sync")

SERVER_NAME = "quickslot-relay/0.1"

#: Updates of one connection ordered and not yet answered, at most (see "Pipelining" above).
DEFAULT_MAX_INFLIGHT = SyncLimits.max_inflight
#: How often an update is ordered again after another node took its stamp numbers first, and the
#: longest random pause before one attempt (jitter: several nodes contending for one document
#: would otherwise collide again in lockstep).
STAMP_CONFLICT_RETRIES = 20
#: Close reason (with 1013) for a socket over the per-address cap on unauthenticated sockets.
ANONYMOUS_CAP_REASON = "too many unauthenticated connections from your address: try again later"
STAMP_RETRY_MAX_PAUSE_S = 0.05
#: How long a connection the hub closed may take to read what is queued and the close frame;
#: then it is dropped (``Transport.abort``), so a peer that stopped reading is disconnected too.
CLOSE_GRACE_S = 5.0
#: Shop documents whose slot templates are kept parsed (by seq) for the party check at arrival.
TEMPLATE_CACHE_DOCS = 1024


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


class TokenVerifier(Protocol):
    def verify_access(
        self, token: str, *, purpose: Purpose | None = None, proof: Proof | None = None
    ) -> Claims: ...


#: A proof of possession as it arrived: header text (signature, time) or ``auth`` fields.
ProofParts = tuple[str | bytes | None, str | int | None]
NO_PROOF: ProofParts = (None, None)


class _Bucket:
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

    def __init__(self, hub: SyncHub, transport: Transport, header_token: str | None) -> None:
        self.id = next(self._ids)
        self.hub = hub
        self.transport = transport
        self.proto = RelayProtocol(
            header_auth=header_token is not None, max_message_size=hub.limits.max_message
        )
        self.header_token = header_token
        self.claims: Claims | None = None
        self.pins: dict[str, Pin] = {}
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.closing: tuple[int, str] | None = None
        self.bucket = _Bucket(hub.limits.rate_per_s, hub.limits.burst)
        self.strikes = 0
        self.expiry: asyncio.TimerHandle | None = None
        #: Updates ordered and not yet answered, and the event the read loop waits on at the bound.
        self.inflight = 0
        self.room = asyncio.Event()
        self.write_now: Callable[[list[bytes]], bool] | None = getattr(transport, "write_now", None)
        #: Queued for the hub's end-of-turn flush (``SyncHub._flush_dirty``).
        self.dirty = False
        #: The writer task is sending: it owns the queue's order until it is done.
        self.sending = False
        #: With several nodes: per document, open once this connection's last booking is stored
        #: or ordered again (``SyncHub._order``).
        self.stamping: dict[str, asyncio.Future[None]] = {}
        #: While this connection holds an unauthenticated slot: the address key it is counted
        #: under (``SyncHub.anonymous``); None before, after authentication and once closed.
        self.anonymous_key: str | None = None

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
        if self.queued_bytes > self.hub.limits.send_queue_bytes:
            # Over budget is "behind" only if the socket takes nothing now: one event-loop turn
            # can queue more than the budget (a group commit's fan-out, a sync answer larger
            # than the budget) before its end-of-turn write, for a consumer that keeps up.
            self.write_queued()
            if self.queue:
                self.queue.pop()
                self.queued_bytes -= len(data)
                self.hub.metrics_slow.inc()
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: reconnect and catch up")
                return
        if self.write_now is None:
            self.wakeup.set()
        elif not self.dirty:
            self.dirty = True
            self.hub._mark_dirty(self)

    def write_queued(self) -> None:
        """Write everything queued now if the transport takes it without waiting; else wake the
        writer task (socket full, closing, or the writer mid-send: it keeps the order)."""
        if not self.queue:
            return
        if self.sending or self.closing is not None or self.write_now is None:
            self.wakeup.set()
            return
        try:
            written = self.write_now(list(self.queue))
        except Exception:  # the socket went away: the writer task meets it the ordinary way
            written = False
        if not written:
            self.wakeup.set()
            return
        self.queue.clear()
        sent, self.queued_bytes = self.queued_bytes, 0
        self.hub.bytes_out.inc(sent)

    def flush(self) -> None:
        """Move everything the protocol produced to the queue; honour a close it asked for."""
        for data in self.proto.data_to_send():
            self.push(data)
        if self.proto.close_expected() and self.closing is None:
            self.close(self.proto.close_code or CloseCode.PROTOCOL_VIOLATION, self.proto.close_reason or "")

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (int(code), reason)
            self.wakeup.set()
            abort = getattr(self.transport, "abort", None)
            if abort is not None:
                # A peer that reads nothing never takes the close frame (it waits behind the
                # queue); the relay would hold the socket, its buffers and its slot for ever.
                asyncio.get_running_loop().call_later(CLOSE_GRACE_S, abort)

    async def writer(self) -> None:
        send_many = getattr(self.transport, "send_many", None)
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                while self.queue:
                    self.sending = True
                    if send_many is not None:
                        # Everything queued so far in one call: one socket write on transports
                        # that can, instead of one per message.
                        batch = list(self.queue)
                        self.queue.clear()
                        sent, self.queued_bytes = self.queued_bytes, 0
                        await send_many(batch)
                        self.hub.bytes_out.inc(sent)
                        continue
                    data = self.queue.popleft()
                    self.queued_bytes -= len(data)
                    await self.transport.send(data)
                    self.hub.bytes_out.inc(len(data))
                self.sending = False
                if self.closing is not None:
                    code, reason = self.closing
                    with contextlib.suppress(Exception):
                        await self.transport.close(code, reason)
                    return
        except Exception:  # the socket went away under us; the reader sees it too
            if self.closing is None:
                self.closing = (CloseCode.GOING_AWAY, "")


class SyncHub:
    """Every connection and subscription of one relay process."""

    def __init__(
        self,
        *,
        manager: DocumentManager,
        tokens: TokenVerifier,
        rights: RightsCache,
        signing_key: Callable[[], SigningKey],
        trusted_keys: Callable[[], dict[str, bytes]],
        epoch: str,
        metrics: MetricsRegistry,
        limits: SyncLimits | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        fanout: Fanout | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be >= 1")
        self.manager = manager
        self.tokens = tokens
        self.rights = rights
        self.signing_key = signing_key
        self._trusted_keys = trusted_keys
        self.epoch = epoch
        self.limits = limits or SyncLimits()
        self.max_inflight = max_inflight
        self.clock_ms = clock_ms
        self.connections: set[SyncConnection] = set()
        self.subscribers: dict[str, dict[SyncConnection, int]] = {}
        #: Connections with messages queued in this event-loop turn (see "Fan-out" above).
        self._dirty: list[SyncConnection] = []
        self._certs = CertificateCache(trusted_keys())
        self.stopping = False
        self.fanout = fanout
        self._retries: set[asyncio.Task[None]] = set()
        #: Shop document -> (seq, its slot templates and staff list), for the checks at arrival.
        self._templates: dict[str, tuple[int, ShopRules]] = {}
        #: A restored relay's stamp hold (``relay.stamp_hold``); None: stamp at once, always.
        self.stamp_hold: StampHold | None = None
        #: Unauthenticated sockets per client address (relay.anonymous_slots).
        self.anonymous = AnonymousSlots(self.limits.anonymous_per_address)
        if fanout is not None:
            manager.on_catchup = self._catchup
        #: This process's generation of the relay's Yjs client ids (``crdt_core.clientids``),
        #: random so that nodes sharing one store rarely write under one id; when they do, the
        #: store's stamp-base check refuses the later node's stamps anyway.
        self.writer_generation = random.randrange(GENERATIONS)
        manager.writer_id = self.writer_id
        m = metrics
        self.gauge_conns = m.gauge("quickslot_connections", "Open sync websocket connections")
        self.gauge_conns.set_function(lambda: float(len(self.connections)))
        anonymous = m.gauge("quickslot_anonymous_connections", "Open sync websockets not authenticated yet")
        anonymous.set_function(lambda: float(self.anonymous.total))
        self.refused = m.counter(
            "quickslot_sync_refused_total", "Sync websockets refused on connect, by reason", ["reason"]
        )
        self.updates_in = m.counter("quickslot_updates_in_total", "Updates received from clients")
        self.updates_out = m.counter("quickslot_updates_out_total", "Update deliveries to subscribers")
        self.bytes_in = m.counter("quickslot_sync_bytes_in_total", "Bytes received on sync websockets")
        self.bytes_out = m.counter("quickslot_sync_bytes_out_total", "Bytes sent on sync websockets")
        self.rejections = m.counter("quickslot_rejections_total", "Refused updates by reason", ["reason"])
        self.auth_failures = m.counter("quickslot_sync_auth_failures_total", "Sync auth failures", ["code"])
        self.ack_latency = m.histogram("quickslot_ack_latency_seconds", "Update received to ack sent")
        self.stamps_issued = m.counter("quickslot_stamps_total", "Booking claims stamped")
        self.metrics_slow = m.counter("quickslot_slow_consumers_total", "Connections cut for falling behind")
        self.stamp_retries = m.counter(
            "quickslot_stamp_conflict_retries_total", "Updates ordered again after another node stamped first"
        )
        self.catchups = m.counter("quickslot_catchups_total", "Documents reloaded with subscribers caught up")
        stats = getattr(fanout, "stats", None)
        if callable(stats):
            for name, field, doc in (
                ("quickslot_fanout_published_total", "published", "Commits published to other nodes"),
                ("quickslot_fanout_received_total", "received", "Commits received from other nodes"),
                ("quickslot_fanout_backlog", "backlog", "Commits waiting to be published"),
                ("quickslot_fanout_dropped_total", "dropped_backlog", "Commits dropped, backlog full"),
                ("quickslot_fanout_resets_total", "resets", "Times fan-out entries may have been lost"),
                ("quickslot_fanout_connected", "connected", "1 while the fan-out reaches Redis"),
            ):
                m.gauge(name, doc).set_function(_stat_reader(stats, field))

    def writer_id(self) -> int:
        """The Yjs client id the relay stamps under: ``client_id_for("relay:<kid>", generation)``
        for the current signing key, since every replica refuses stamps under any other id."""
        return client_id_for(RELAY_SIGNER_PREFIX + self.signing_key().kid, self.writer_generation)

    # --- fan-out between nodes ---------------------------------------------------------------------

    async def start_fanout(self) -> None:
        """Start publishing to and consuming from the other nodes (no-op on a single node)."""
        if self.fanout is not None:
            await self.fanout.start(self._remote, self._fanout_reset)

    async def stop_fanout(self) -> None:
        if self.fanout is not None:
            await self.fanout.close()

    def _remote(self, message: Committed) -> None:
        self.manager.remote_commit(
            message.doc,
            message.seq,
            message.updates,
            message.next_stamp,
            deliver=lambda: self._deliver_remote(message),
        )

    def _fanout_reset(self) -> None:
        queued = self.manager.refresh_all()
        log.warning("fan-out reset: reloading %d documents from the store", queued)

    def _deliver_remote(self, message: Committed) -> None:
        """Another node's append, in its seq turn: to every subscriber here, as a local one goes."""
        doc, seq = message.doc, message.seq
        subs = self.subscribers.get(doc)
        if not subs:
            return
        if len(message.updates) > 1 and message.stamps and len(message.stamps) <= MAX_STAMPS:
            data = encode_stamped(doc, seq, message.updates[0], message.updates[1], message.stamps)
            per = 2
        else:  # (too many stamps for one summary: recipients see seq + 1 missing and resync)
            data = encode_update(doc, message.updates[0], seq)
            per = 1
        delivered = 0
        for conn, base in subs.items():
            if seq > base and conn.proto.is_live(doc):
                conn.push(data)
                delivered += per
        self.updates_out.inc(delivered)

    def _catchup(self, doc: str, update: bytes, seq: int) -> None:
        """The document was reloaded up to ``seq``: send subscribers behind it what they lack."""
        subs = self.subscribers.get(doc)
        if not subs:
            return
        self.catchups.inc()
        data = encode_update(doc, update, seq)
        for conn, base in subs.items():
            if base < seq:
                subs[conn] = seq
                if conn.proto.is_live(doc):
                    conn.push(data)

    def _announcer(
        self, doc: str, update: bytes
    ) -> Callable[[AppendResult, ValidatedUpdate | None, bytes | None], None] | None:
        fanout = self.fanout
        if fanout is None:
            return None
        node = fanout.node_id

        def announce(result: AppendResult, checked: ValidatedUpdate | None, extra: bytes | None) -> None:
            updates = (update,) if extra is None else (update, extra)
            stamps: tuple[tuple[int, str], ...] = ()
            if extra is not None and checked is not None and len(result.seqs) > 1:
                stamps = tuple(zip(result.stamps, claims_to_stamp(checked), strict=False))
            next_stamp = result.stamps.stop if len(result.stamps) else 0
            fanout.publish(
                Committed(node, doc, result.seqs[0], updates[: len(result.seqs)], stamps, next_stamp)
            )

        return announce

    # --- writing -----------------------------------------------------------------------------------

    def _mark_dirty(self, conn: SyncConnection) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush_dirty)
        self._dirty.append(conn)

    def _flush_dirty(self) -> None:
        """Once per event-loop turn: write what this turn queued, connection by connection."""
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.dirty = False
            conn.write_queued()

    # --- trust -----------------------------------------------------------------------------------

    def certs(self) -> CertificateCache:
        """The certificate cache, rebuilt when the relay's key set changes (keys rotate)."""
        keys = self._trusted_keys()
        if keys != self._certs.trusted_keys:
            self._certs = CertificateCache(keys)
        return self._certs

    # --- connection lifecycle --------------------------------------------------------------------

    async def serve(
        self,
        transport: Transport,
        header_token: str | None = None,
        header_proof: ProofParts = NO_PROOF,
        client: str | None = None,
    ) -> None:
        """Run one connection until it closes. Never raises for anything the peer sends.

        ``header_proof`` is the ``QuickSlot-Proof`` and ``QuickSlot-Proof-Time`` header values, the
        proof of possession a token bound to a device key needs (``crdt_core.pop``).
        ``client``: the peer's address (after proxy headers), for the per-address cap on
        sockets that have not authenticated (``relay.anonymous_slots``); a socket with a header
        token is authenticated or closed before it reads anything, so it is not counted.
        """
        conn = SyncConnection(self, transport, header_token)
        if self.stopping:
            await transport.close(CloseCode.GOING_AWAY, "relay restarting: come back shortly")
            return
        if len(self.connections) >= self.limits.max_connections:
            self.refused.labels("relay_full").inc()
            await transport.close(CloseCode.TRY_AGAIN_LATER, "relay full: try again later")
            return
        if header_token is None:
            key = address_key(client)
            if not self.anonymous.take(key):
                self.refused.labels("anonymous_per_address").inc()
                await transport.close(CloseCode.TRY_AGAIN_LATER, ANONYMOUS_CAP_REASON)
                return
            # Released by _drop in the ``finally`` below (nothing between can raise or
            # switch tasks) or at authentication, whichever comes first.
            conn.anonymous_key = key
        self.connections.add(conn)
        writer = asyncio.create_task(conn.writer(), name=f"sync-writer-{conn.id}")
        try:
            if header_token is not None:
                self._authenticate(conn, header_token, header_proof)
            await self._read_loop(conn)
        finally:
            self._drop(conn)
            if conn.closing is None:
                conn.close(CloseCode.NORMAL, "")
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(writer, timeout=2.0)
            writer.cancel()

    async def _read_loop(self, conn: SyncConnection) -> None:
        deadline = time.monotonic() + self.limits.auth_deadline_s
        while conn.closing is None:
            if conn.inflight >= self.max_inflight:
                # Backpressure: read nothing more until one of this connection's updates is answered.
                conn.room.clear()
                await conn.room.wait()
                continue
            timeout = None if conn.claims is not None else max(0.0, deadline - time.monotonic())
            try:
                data = await asyncio.wait_for(conn.transport.recv(), timeout)
            except TimeoutError:
                self.auth_failures.labels("timeout").inc()
                conn.close(CloseCode.AUTH_TIMEOUT, "authenticate first, within the deadline")
                return
            if data is None:
                return
            if isinstance(data, str):
                conn.close(CloseCode.PROTOCOL_VIOLATION, "binary frames only")
                return
            if conn.claims is None and len(data) > self.limits.preauth_max_bytes:
                conn.close(CloseCode.TOO_BIG, "first message too big")
                return
            self.bytes_in.inc(len(data))
            conn.proto.receive_message(data)
            conn.flush()
            for event in conn.proto.events_received():
                await self._handle(conn, event)
                if conn.closing is not None:
                    return

    async def _handle(self, conn: SyncConnection, event: object) -> None:
        if isinstance(event, AuthRequested):
            self._authenticate(conn, event.token, (event.proof, event.proof_time))
        elif isinstance(event, SubscribeRequested):
            await self._subscribe(conn, event.doc, event.sv)
        elif isinstance(event, UpdateSubmitted):
            await self._update(conn, event.doc, event.uid, event.update)
        elif isinstance(event, UnsubscribeRequested):
            self._unsubscribe(conn, event.doc)

    def _authenticate(self, conn: SyncConnection, token: str, proof_parts: ProofParts) -> None:
        malformed: ProofError | None = None
        try:
            proof = parse_proof(*proof_parts)
        except ProofError as exc:  # refused only if the token needs a proof (it is bound)
            proof, malformed = None, exc
        try:
            claims = self.tokens.verify_access(token, purpose=SYNC, proof=proof)
        except ProofFailed as exc:
            failure = malformed or exc
            self.auth_failures.labels(failure.code).inc()
            conn.proto.reject_auth(CloseCode.AUTH_FAILED, failure.reason)
        except TokenExpired:
            self.auth_failures.labels("expired").inc()
            conn.proto.reject_auth(CloseCode.TOKEN_EXPIRED, "access token expired: refresh and reconnect")
        except TokenRevoked:
            self.auth_failures.labels("revoked").inc()
            conn.proto.reject_auth(CloseCode.SESSION_REVOKED, "session revoked: log in again")
        except TokenError:
            self.auth_failures.labels("invalid").inc()
            conn.proto.reject_auth(CloseCode.AUTH_FAILED, "authentication failed")
        else:
            if self.rights.current(claims.sub) is None:
                conn.proto.reject_auth(CloseCode.ACCOUNT_DISABLED, "account disabled")
            else:
                conn.claims = claims
                self._release_anonymous(conn)
                limits = {**self.limits.announce(), Limit.MAX_INFLIGHT: self.max_inflight}
                conn.proto.accept_auth(claims.sub, self.epoch, SERVER_NAME, limits)
                delay = claims.exp - time.time()
                conn.expiry = asyncio.get_running_loop().call_later(max(0.0, delay), self._expire, conn)
        conn.flush()

    def _expire(self, conn: SyncConnection) -> None:
        conn.close(CloseCode.TOKEN_EXPIRED, "access token expired: refresh and reconnect")

    def _drop(self, conn: SyncConnection) -> None:
        self.connections.discard(conn)
        if conn.expiry is not None:
            conn.expiry.cancel()
        for doc, pin in list(conn.pins.items()):
            subs = self.subscribers.get(doc)
            if subs is not None:
                subs.pop(conn, None)
                if not subs:
                    del self.subscribers[doc]
            pin.release()
        conn.pins.clear()
        self._release_anonymous(conn)

    def _release_anonymous(self, conn: SyncConnection) -> None:
        """Give back the connection's unauthenticated slot, if it holds one (idempotent)."""
        key, conn.anonymous_key = conn.anonymous_key, None
        if key is not None:
            self.anonymous.release(key)

    # --- subscribe -------------------------------------------------------------------------------

    async def _subscribe(self, conn: SyncConnection, doc: str, sv: bytes) -> None:
        user = conn.user
        assert user is not None
        try:
            parse_doc_id(doc)
        except ValueError as exc:
            self._refuse_sub(conn, doc, ErrorCode.BAD_DOC, str(exc))
            return
        if not self.rights.can_read(user, doc):
            self.rejections.labels("forbidden_read").inc()
            self._refuse_sub(conn, doc, ErrorCode.FORBIDDEN, "no read access to this document")
            return
        if doc not in conn.pins:
            conn.pins[doc] = self.manager.pin(doc)

        def register(replica: Replica, seq: int) -> bool:
            try:
                diff = replica.diff(sv)
            except EngineError:
                return False
            self.subscribers.setdefault(doc, {})[conn] = seq
            conn.proto.send_sync(doc, diff, replica.state_vector(), seq)
            conn.flush()
            return True

        try:
            if not await self.manager.read(doc, register):
                self._refuse_sub(conn, doc, ErrorCode.BAD_DOC, "state vector does not decode")
        except (CapacityError, ManagerClosedError, StoreError) as exc:
            self._refuse_sub(conn, doc, ErrorCode.INTERNAL, f"try again: {type(exc).__name__}", retry=True)

    def _refuse_sub(
        self, conn: SyncConnection, doc: str, code: ErrorCode, reason: str, retry: bool | None = None
    ) -> None:
        """Answer a ``sub`` with an ``err``, which ends the subscription (protocol 5.2): the hub
        drops its side too, so a refused doc holds no pin and gets no fan-out. (Subs of one
        connection are handled one at a time, so this was the doc's only pending sub.)"""
        conn.proto.send_error(code, reason, doc=doc, retry=retry)
        conn.flush()
        self._unsubscribe(conn, doc)

    def _unsubscribe(self, conn: SyncConnection, doc: str) -> None:
        subs = self.subscribers.get(doc)
        if subs is not None:
            subs.pop(conn, None)
            if not subs:
                del self.subscribers[doc]
        pin = conn.pins.pop(doc, None)
        if pin is not None:
            pin.release()

    # --- updates ---------------------------------------------------------------------------------

    def _check(
        self, doc: str, shop: tuple[ShopRules, DocId] | None = None
    ) -> Callable[[Replica, bytes], ValidatedUpdate]:
        def check(replica: Replica, update: bytes) -> ValidatedUpdate:
            policy = ArrivalPolicy(
                now_ms=self.clock_ms(),
                is_revoked=self.rights.is_revoked,
                current_rights=self.rights.current,
            )
            staff = shop[0].staff if shop is not None else None
            checked = validate_update(doc, replica, update, self.certs(), policy, staff)
            if shop is not None:
                rules, day_doc = shop
                assert day_doc.day is not None
                capacities = rules.capacities(day_doc.day)
                self._refuse_impossible_parties(checked, capacities)
                refuse_repeat_bookings(replica, checked.new_reservations, rules.limits(), capacities)
            return checked

        return check

    def _refuse_impossible_parties(self, checked: ValidatedUpdate, capacities: dict[str, int]) -> None:
        """Refuse (``party_too_large``) a new reservation over ``--max-party`` or its open slot's capacity."""
        for res in checked.new_reservations:
            capacity = capacities.get(res.slot, 0)
            what = f"reservation {res.id}: a party of {res.party}"
            if res.party > self.limits.max_party:
                why = f"{what} is over this relay's limit of {self.limits.max_party}"
                raise ValidationError(Reason.PARTY_TOO_LARGE.value, why)
            if exceeds_capacity(res.party, capacity):
                why = f"{what} cannot fit slot {res.slot!r} ({capacity} seats that day)"
                raise ValidationError(Reason.PARTY_TOO_LARGE.value, why)

    async def _shop_rules(self, doc: str) -> tuple[ShopRules, DocId] | None:
        """For a bookings document, what the relay's copy of its shop document says (slot
        capacities and limits, the staff list: ``crdt_core.shop_rules``) and the parsed doc id;
        None for other kinds."""
        parsed = parse_doc_id(doc)
        if parsed.kind is not DocKind.BOOKINGS:
            return None
        assert parsed.shop_id is not None
        shop_doc = str(DocId.shop(parsed.shop_id))

        def rules(replica: Replica, seq: int) -> ShopRules:
            held = self._templates.get(shop_doc)
            if held is not None and held[0] == seq:
                return held[1]
            found = read_shop_rules(replica, shop_doc)
            if len(self._templates) >= TEMPLATE_CACHE_DOCS:
                self._templates.clear()
            self._templates[shop_doc] = (seq, found)
            return found

        return await self.manager.read(shop_doc, rules), parsed

    def _stamper(self, doc: str) -> Callable[[Replica, ValidatedUpdate, StampSequence], bytes | None]:
        def build(replica: Replica, checked: ValidatedUpdate, stamps: StampSequence) -> bytes | None:
            carried = checked.new_stamps
            if carried:
                # A client re-sending what a restored relay lost brings the stamps with the claims.
                stamps.carried(max(s.no for s in carried))
            claims = claims_to_stamp(checked)
            if not claims:
                return None
            hold = self.stamp_hold
            if hold is not None and hold.holds(doc):
                # A restored relay's stamp hold: stored and forwarded, stamped when it ends.
                hold.note_held(doc, len(claims))
                return None
            numbers = [stamps.next() for _ in claims]
            _, update = write_stamps(replica, doc, self.signing_key(), claims, numbers[0], self.clock_ms())
            return update

        return build

    async def stamp_held(self, doc: str) -> int:
        """Stamp the claims a restore's stamp hold left unstamped in ``doc`` (``relay.stamp_hold``),
        in the order they were stored, as one append; subscribers get a ``stamp``. Returns how
        many were stamped, once durable.

        Raises:
            StoreError: the append failed (nothing of it is stored; the document reloads).
        """
        hold = self.stamp_hold
        stamped: list[tuple[int, str]] = []

        def build(replica: Replica, stored: StoredDocument, stamps: StampSequence) -> bytes | None:
            claims = held_claims(replica, doc, stored)
            if hold is not None:
                hold.mark_swept(doc)  # under the lock: later claims are stamped after these
            if not claims:
                return None
            first = stamps.next()
            for _ in claims[1:]:
                stamps.next()
            stamped.extend(zip(range(first, first + len(claims)), claims, strict=True))
            _, update = write_stamps(replica, doc, self.signing_key(), claims, first, self.clock_ms())
            return update

        def publish(result: AppendResult, update: bytes) -> None:
            self.stamps_issued.inc(len(stamped))
            subs = self.subscribers.get(doc, {})
            if len(stamped) <= MAX_STAMPS:
                data = encode_stamp(doc, result.seq, update, stamped)
            else:  # too many for one summary: the stamp records alone, as a plain update
                data = encode_update(doc, update, result.seq)
            delivered = 0
            for conn, base in subs.items():
                if result.seq > base and conn.proto.is_live(doc):
                    conn.push(data)
                    delivered += 1
            self.updates_out.inc(delivered)

        announce = None
        if self.fanout is not None:
            fanout = self.fanout

            def announce(result: AppendResult, update: bytes) -> None:
                fanout.publish(
                    Committed(fanout.node_id, doc, result.seq, (update,), tuple(stamped), result.stamps.stop)
                )

        commit = await self.manager.order_own(doc, build, on_durable=publish, on_commit=announce)
        if commit is None:
            return 0
        await asyncio.shield(commit)
        return len(stamped)

    async def _update(self, conn: SyncConnection, doc: str, uid: int, update: bytes) -> None:
        started = time.monotonic()
        self.updates_in.inc()
        if not conn.bucket.take():
            conn.strikes += 1
            if conn.strikes >= self.limits.flood_strikes:
                conn.close(CloseCode.TOO_FAST, "too many updates: slow down")
                return
            conn.proto.send_error(ErrorCode.RATE_LIMITED, "too many updates: retry later", doc=doc, uid=uid)
            conn.flush()
            return
        conn.strikes = 0
        if self.manager.doc_bytes(doc) + len(update) > self.limits.max_doc_bytes:
            self.rejections.labels("doc_too_large").inc()
            conn.proto.send_error(ErrorCode.DOC_TOO_LARGE, "document at its size limit", doc=doc, uid=uid)
            conn.flush()
            return
        if doc not in self.subscribers or conn not in self.subscribers[doc]:
            # The protocol admits updates for subscribed docs only; a doc whose sync answer was an
            # error (forbidden, bad doc) never got registered here.
            conn.proto.send_error(ErrorCode.FORBIDDEN, "not subscribed to this document", doc=doc, uid=uid)
            conn.flush()
            return

        await self._order(conn, doc, uid, update, started, 0)

    async def _order(
        self,
        conn: SyncConnection,
        doc: str,
        uid: int,
        update: bytes,
        started: float,
        attempt: int,
        retried: asyncio.Future[None] | None = None,
    ) -> None:
        """Order one update; with several nodes, never on top of this connection's booking of
        the same document that may still be refused for its stamps (see "Several nodes").

        ``retried``: the gate of the attempt this one repeats, opened once this one is ordered
        (or given up), so the connection's next update of the document is ordered after it.
        """
        try:
            if self.fanout is not None and retried is None:
                while (gate := conn.stamping.get(doc)) is not None and not gate.done():
                    await gate
            await self._order_now(conn, doc, uid, update, started, attempt)
        finally:
            if retried is not None and not retried.done():
                retried.set_result(None)

    async def order_update(
        self,
        doc: str,
        update: bytes,
        on_durable: Callable[[AppendResult, ValidatedUpdate | None, bytes | None], None],
    ) -> Ordered[ValidatedUpdate]:
        """Validate, order and stamp one client update: the path every transport shares.

        Why one method: the websocket and the HTTP batch must refuse exactly the same updates
        (arrival rules, the party limits read from the shop document, re-sends that differ) and
        stamp and fan them out alike; the HTTP path once built this call itself and skipped the
        party limits. Raises what ``DocumentManager.order`` raises.
        """
        shop = await self._shop_rules(doc)
        return await self.manager.order(
            doc,
            update,
            self._check(doc, shop),
            self._stamper(doc),
            on_durable=on_durable,
            on_commit=self._announcer(doc, update),
            check_resend=refuse_equivocation,
        )

    async def _order_now(
        self, conn: SyncConnection, doc: str, uid: int, update: bytes, started: float, attempt: int
    ) -> None:
        def on_durable(result: AppendResult, checked: ValidatedUpdate | None, extra: bytes | None) -> None:
            try:
                self._publish(conn, doc, uid, update, result, checked, extra, started)
            except Exception:
                log.exception("answering update %d on %s failed", uid, doc)
                if conn.proto.is_unanswered(uid):
                    conn.proto.ack(doc, uid, result.seqs[0])
                    conn.flush()

        ordered: Ordered[ValidatedUpdate]
        try:
            ordered = await self.order_update(doc, update, on_durable)
        except ValidationError as exc:
            self.rejections.labels(exc.code).inc()
            code = ErrorCode.MISSING_DEPS if exc.code == "missing_deps" else ErrorCode.REJECTED
            conn.proto.send_error(code, f"{exc.code}: {exc.detail}"[:400], doc=doc, uid=uid)
            conn.flush()
            return
        except EngineError as exc:
            self.rejections.labels("malformed").inc()
            conn.proto.send_error(ErrorCode.REJECTED, f"malformed: {exc}"[:400], doc=doc, uid=uid)
            conn.flush()
            return
        except (CapacityError, ManagerClosedError, StoreError) as exc:
            conn.proto.send_error(
                ErrorCode.INTERNAL, f"not stored, retry: {type(exc).__name__}", doc=doc, uid=uid
            )
            conn.flush()
            return
        # Ordered: the commit runs while the read loop goes on. ``_publish`` answers a stored
        # update when it is durable; ``_settled`` answers the rest (a no-op, a failed commit).
        conn.inflight += 1
        gate: asyncio.Future[None] | None = None
        if self.fanout is not None and ordered.extra is not None:
            # A booking: until it is stored (or ordered again after a stamp conflict), this
            # connection's next update of the document waits (it may depend on this one).
            gate = asyncio.get_running_loop().create_future()
            conn.stamping[doc] = gate
        ordered.add_done_callback(
            lambda outcome: self._settled(conn, doc, uid, outcome, update, started, attempt, gate)
        )

    async def _reorder(
        self,
        conn: SyncConnection,
        doc: str,
        uid: int,
        update: bytes,
        started: float,
        attempt: int,
        gate: asyncio.Future[None] | None,
    ) -> None:
        try:
            await asyncio.sleep(random.uniform(0, min(STAMP_RETRY_MAX_PAUSE_S, 0.001 * 2**attempt)))
        finally:
            if conn.closing is not None or not conn.proto.is_unanswered(uid):
                if gate is not None and not gate.done():
                    gate.set_result(None)
        if conn.closing is None and conn.proto.is_unanswered(uid):
            # ``retried`` is never None here, so this attempt does not wait on its own gate.
            await self._order(conn, doc, uid, update, started, attempt, gate or _opened())

    def _settled(
        self,
        conn: SyncConnection,
        doc: str,
        uid: int,
        outcome: Applied[ValidatedUpdate] | BaseException,
        update: bytes,
        started: float,
        attempt: int,
        gate: asyncio.Future[None] | None = None,
    ) -> None:
        """Runs once an ordered update's outcome is known (after ``_publish`` for a stored one
        whose seqs came in turn; with several nodes ``_publish`` may run later, see the manager)."""
        conn.inflight -= 1
        conn.room.set()
        retry = (
            isinstance(outcome, StampConflictError)
            and attempt < STAMP_CONFLICT_RETRIES
            and conn.closing is None
            and conn.proto.is_unanswered(uid)
        )
        if gate is not None and not retry and not gate.done():
            gate.set_result(None)
        if not conn.proto.is_unanswered(uid):
            return  # answered by _publish, or the connection is gone
        if retry:
            # Another node stamped this document first; nothing of this update is stored and the
            # document reloads on its next use: validate and stamp it again against that.
            self.stamp_retries.inc()
            task = asyncio.ensure_future(self._reorder(conn, doc, uid, update, started, attempt + 1, gate))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        if not isinstance(outcome, BaseException) and outcome.update_seq is not None:
            return  # stored: _publish answers it in its seq turn
        if isinstance(outcome, BaseException):
            conn.proto.send_error(
                ErrorCode.INTERNAL, f"not stored, retry: {type(outcome).__name__}", doc=doc, uid=uid
            )
        else:
            # A re-send of what the relay already holds, now durable: acknowledge it.
            conn.proto.ack(doc, uid, outcome.seq)
        conn.flush()

    def _publish(
        self,
        sender: SyncConnection,
        doc: str,
        uid: int,
        update: bytes,
        result: AppendResult,
        checked: ValidatedUpdate | None,
        extra: bytes | None,
        started: float,
    ) -> None:
        """Runs in commit order: ack the sender, then fan the durable bytes out.

        A booking and its stamps (stored as ``seq`` and ``seq + 1``) travel as one ``stamped``
        message per recipient: ack and stamps to the sender, update and stamps to the others.
        """
        subs = self.subscribers.get(doc, {})
        update_seq = result.seqs[0]
        stamps: list[tuple[int, str]] = []
        stamp_update = extra if checked is not None and len(result.seqs) > 1 else None
        if stamp_update is not None:
            assert checked is not None
            stamps = list(zip(result.stamps, claims_to_stamp(checked), strict=False))
            self.stamps_issued.inc(len(stamps))
            if len(stamps) > MAX_STAMPS:
                # More than one message may summarise: send the update alone; subscribers see the
                # stamps' seq missing at their next message and resync, which brings them.
                stamp_update, stamps = None, []
        delivered = 0
        if sender.proto.is_unanswered(uid):
            base = subs.get(sender)
            if stamp_update is not None and base is not None and update_seq > base:
                # (Not live on the doc, e.g. resyncing: a plain ack; the sync brings the stamps.)
                if sender.proto.ack_stamped(doc, uid, update_seq, stamp_update, stamps):
                    delivered += 1
            else:
                sender.proto.ack(doc, uid, update_seq)
            sender.flush()
            self.ack_latency.observe(time.monotonic() - started)
        if stamp_update is not None:
            data = encode_stamped(doc, update_seq, update, stamp_update, stamps)
        else:
            data = encode_update(doc, update, update_seq)
        for conn, base in subs.items():
            if conn is not sender and update_seq > base and conn.proto.is_live(doc):
                conn.push(data)
                delivered += 1 if stamp_update is None else 2
        self.updates_out.inc(delivered)

    # --- revocation --------------------------------------------------------------------------------

    def close_where(self, predicate: Callable[[SyncConnection], bool], code: int, reason: str) -> int:
        n = 0
        for conn in list(self.connections):
            if predicate(conn):
                conn.close(code, reason)
                n += 1
        return n

    def family_revoked(self, family_id: str, user_id: str) -> None:
        self.close_where(
            lambda c: c.claims is not None and c.claims.fam == family_id,
            CloseCode.SESSION_REVOKED,
            "session revoked: log in again",
        )

    def user_disabled(self, user_id: str) -> None:
        self.rights.mark_disabled(user_id)
        self.close_where(lambda c: c.user == user_id, CloseCode.ACCOUNT_DISABLED, "account disabled")

    async def shutdown(self, grace_s: float = 3.0) -> None:
        """Stop accepting, tell every client to come back, give writers a moment to flush."""
        self.stopping = True
        self.close_where(lambda c: True, CloseCode.GOING_AWAY, "relay restarting: come back shortly")
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


def _opened() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _stat_reader(stats: Callable[[], object], field: str) -> Callable[[], float]:
    return lambda: float(getattr(stats(), field))


def claims_to_stamp(checked: ValidatedUpdate) -> list[str]:
    """The claims of an incoming update the relay stamps, in the order it numbers them: those that
    did not bring their own stamp (a re-send after a restore), in ``crdt_core.verdict.stamp_order``."""
    carried = {s.reservation for s in checked.new_stamps}
    return [r.id for r in stamp_order(checked.new_reservations) if r.id not in carried]


def refuse_equivocation(replica: Replica, update: bytes) -> None:
    """Refuse a "re-send" that names Yjs ids the document holds with different content.

    The engine skips a struct whose (client, clock) it already holds, so such an update would be
    acknowledged as a re-send and dropped: a device that signed two versions of one id
    (equivocation), or a writer that took another device's next id first (that device's offline
    booking would be acknowledged and lost). Refused, the id is named and the sender's outbox
    shows the entry as failed. The rule is ``crdt_core.equivocation.find_equivocation``, the one
    peers apply to each other: only structs the document has integrated are compared.

    Raises:
        ValidationError: code ``equivocation``.
    """
    clash = find_equivocation(replica, update)
    if clash is not None:
        raise ValidationError("equivocation", clash)
