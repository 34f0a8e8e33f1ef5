"""The relay's sync service: authenticate, authorise, validate, store, stamp, acknowledge, fan out.

:class:`SyncHub` holds the connections and subscriptions of one relay process and does the
connection's part itself (authenticate, subscribe, revoke). The rest is done by collaborators it
wires together, one responsibility each:

* ``relay.sync.connection``: one websocket and its send queue; the one fan-out loop.
* ``relay.sync.arrival``: the checks at arrival (the core's writer rules, party limits, re-sends).
* ``relay.sync.stamping``: which claims are stamped, in what order, and the stamp hold's sweep.
* ``relay.sync.pipeline``: a websocket ``upd`` from arrival to its answer (retries included).
* ``relay.sync.delivery``: a durable commit to the sender, the subscribers and the other nodes.
* ``relay.sync.metrics``: the counters.

Theory of operation
-------------------
Each websocket is a :class:`relay.sync.connection.SyncConnection`: a sans-I/O
:class:`crdt_core.protocol.RelayProtocol` plus a bounded send queue drained by one writer task.
The hub feeds received frames to the protocol and handles its events; everything the protocol
wants to send is moved to the queue right away, before the next ``await``, so answers and the
live stream never overtake each other.

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
  that have not sent ``auth`` yet; the next is closed with 1013 at once (``relay.auth.anonymous_slots``).
* **Slow consumers**: a queue over its byte budget whose socket takes nothing now closes the
  connection with 1013 ("try again later"); the client reconnects and catches up by state
  vector. (Over budget with a socket that takes bytes, as when one turn queues a large group
  commit's fan-out or a sync answer larger than the budget, the queue is written at once.) Per
  connection the relay holds at most the queue, the batch the writer task waits to send and the
  socket's write buffer (under asyncio's 64 KiB high-water mark plus one write): about three
  budgets plus 64 KiB, or one larger message. A connection the hub closes is dropped
  ``CLOSE_GRACE_S`` later (``Transport.abort``): a peer that stopped reading never takes its
  close frame. (Pongs: ``relay.http.ws_protocol``.)
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
* **Impossible parties** (``ArrivalRules.refuse_impossible_parties``): a bookings update with a
  reservation whose party exceeds ``SyncLimits.max_party`` (``--max-party``), or the capacity
  its slot has that day in the relay's copy of the shop document (an open slot: capacity above
  0), is refused at arrival with ``party_too_large``. The verdict would make it ``too_large`` anyway
  (``crdt_core.verdict``); refusing it tells the sender at once and keeps it out of the log.
  Likewise a customer's further claim on a slot beyond its ``per_customer`` (``duplicate`` in the
  verdict) is refused with ``duplicate_booking`` (``crdt_core.repeats``), and the shop's staff
  list gives staff rights in its days (``crdt_core.shop_rules``, read with the templates). These
  checks live in ``relay.sync.arrival``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Protocol

from crdt_core.certs import CertificateCache, SigningKey
from crdt_core.clientids import GENERATIONS, client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import EngineError
from crdt_core.messages import CloseCode, ErrorCode, Limit
from crdt_core.pop import SYNC, Proof, ProofError, Purpose, parse_proof
from crdt_core.protocol import AuthRequested, SubscribeRequested, UnsubscribeRequested, UpdateSubmitted
from crdt_core.records import RELAY_SIGNER_PREFIX
from crdt_core.schema import parse_doc_id
from crdt_core.validation import ValidatedUpdate
from relay.auth.anonymous_slots import AnonymousSlots, address_key
from relay.auth.rights import RightsCache
from relay.auth.tokens import Claims, ProofFailed, TokenError, TokenExpired, TokenRevoked
from relay.documents.manager import DocumentManager, Ordered
from relay.documents.results import CapacityError, ManagerClosedError
from relay.fanout.base import Committed, Fanout
from relay.ops.config import SyncLimits
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import MetricsRegistry
from relay.store.base import StoreError
from relay.sync.arrival import ArrivalRules, refuse_equivocation
from relay.sync.connection import SyncConnection, Transport, Writes
from relay.sync.delivery import Delivery, OnDurable
from relay.sync.metrics import HubMetrics
from relay.sync.pipeline import UpdatePipeline
from relay.sync.stamp_hold import StampHold
from relay.sync.stamping import Stamping

log = get_logger(__name__)

SERVER_NAME = "quickslot-relay/0.1"

#: Updates of one connection ordered and not yet answered, at most (see "Pipelining" above).
DEFAULT_MAX_INFLIGHT = SyncLimits.max_inflight
#: Close reason (with 1013) for a socket over the per-address cap on unauthenticated sockets.
ANONYMOUS_CAP_REASON = "too many unauthenticated connections from your address: try again later"


class TokenVerifier(Protocol):
    def verify_access(
        self, token: str, *, purpose: Purpose | None = None, proof: Proof | None = None
    ) -> Claims: ...


#: A proof of possession as it arrived: header text (signature, time) or ``auth`` fields.
ProofParts = tuple[str | bytes | None, str | int | None]
NO_PROOF: ProofParts = (None, None)


class SyncHub:
    """Every connection and subscription of one relay process (collaborators: module docstring)."""

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
        self.epoch = epoch
        self.limits = limits or SyncLimits()
        self.max_inflight = max_inflight
        self.clock_ms = clock_ms
        self.connections: set[SyncConnection] = set()
        self.subscribers: dict[str, dict[SyncConnection, int]] = {}
        self.stopping = False
        self.fanout = fanout
        #: Unauthenticated sockets per client address (relay.auth.anonymous_slots).
        self.anonymous = AnonymousSlots(self.limits.anonymous_per_address)
        #: This process's generation of the relay's Yjs client ids (``crdt_core.clientids``),
        #: random so that nodes sharing one store rarely write under one id; when they do, the
        #: store's stamp-base check refuses the later node's stamps anyway.
        self.writer_generation = random.randrange(GENERATIONS)
        manager.writer_id = self.writer_id
        gauge_conns = metrics.gauge("quickslot_connections", "Open sync websocket connections")
        gauge_conns.set_function(lambda: float(len(self.connections)))
        anonymous = metrics.gauge(
            "quickslot_anonymous_connections", "Open sync websockets not authenticated yet"
        )
        anonymous.set_function(lambda: float(self.anonymous.total))
        self.metrics = HubMetrics(metrics)
        stats = getattr(fanout, "stats", None)
        if callable(stats):
            HubMetrics.fanout_gauges(metrics, stats)
        self.writes = Writes(self.metrics.bytes_out, self.metrics.slow_consumers)
        self.arrival = ArrivalRules(
            manager=manager, rights=rights, trusted_keys=trusted_keys, limits=self.limits, clock_ms=clock_ms
        )
        self.stamping = Stamping(manager=manager, signing_key=signing_key, clock_ms=clock_ms)
        self.delivery = Delivery(self.subscribers, self.metrics, fanout)
        self.pipeline = UpdatePipeline(
            order_update=self.order_update,
            delivery=self.delivery,
            manager=manager,
            subscribers=self.subscribers,
            limits=self.limits,
            metrics=self.metrics,
            several_nodes=fanout is not None,
        )
        if fanout is not None:
            manager.on_catchup = self.delivery.catchup

    def writer_id(self) -> int:
        """The Yjs client id the relay stamps under: ``client_id_for("relay:<kid>", generation)``
        for the current signing key, since every replica refuses stamps under any other id."""
        return client_id_for(RELAY_SIGNER_PREFIX + self.signing_key().kid, self.writer_generation)

    @property
    def stamp_hold(self) -> StampHold | None:
        """A restored relay's stamp hold (``relay.sync.stamp_hold``); None: stamp at once, always."""
        return self.stamping.hold

    @stamp_hold.setter
    def stamp_hold(self, hold: StampHold | None) -> None:
        self.stamping.hold = hold

    def certs(self) -> CertificateCache:
        """The certificate cache, rebuilt when the relay's key set changes (keys rotate)."""
        return self.arrival.certs()

    # --- ordering (every transport) ------------------------------------------------------------------

    async def order_update(self, doc: str, update: bytes, on_durable: OnDurable) -> Ordered[ValidatedUpdate]:
        """Validate, order and stamp one client update: the path every transport shares.

        Why one method: the websocket and the HTTP batch must refuse exactly the same updates
        (arrival rules, the party limits read from the shop document, re-sends that differ) and
        stamp and fan them out alike; the HTTP path once built this call itself and skipped the
        party limits. Raises what ``DocumentManager.order`` raises.
        """
        shop = await self.arrival.shop_rules(doc)
        return await self.manager.order(
            doc,
            update,
            self.arrival.checker(doc, shop),
            self.stamping.builder(doc),
            on_durable=on_durable,
            on_commit=self.delivery.announcer(doc, update),
            check_resend=refuse_equivocation,
        )

    async def stamp_held(self, doc: str) -> int:
        """Stamp what a restore's stamp hold left unstamped in ``doc`` (:meth:`Stamping.stamp_held`)."""
        return await self.stamping.stamp_held(doc, self.delivery)

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
            deliver=lambda: self.delivery.remote(message),
        )

    def _fanout_reset(self) -> None:
        queued = self.manager.refresh_all()
        log_event(log, "fanout_reset", logging.WARNING, reloading_documents=queued)

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
        sockets that have not authenticated (``relay.auth.anonymous_slots``); a socket with a header
        token is authenticated or closed before it reads anything, so it is not counted.
        """
        conn = SyncConnection(transport, header_token, self.limits, self.writes)
        if self.stopping:
            await transport.close(CloseCode.GOING_AWAY, "relay restarting: come back shortly")
            return
        if len(self.connections) >= self.limits.max_connections:
            self.metrics.refused.labels("relay_full").inc()
            await transport.close(CloseCode.TRY_AGAIN_LATER, "relay full: try again later")
            return
        if header_token is None:
            key = address_key(client)
            if not self.anonymous.take(key):
                self.metrics.refused.labels("anonymous_per_address").inc()
                await transport.close(CloseCode.TRY_AGAIN_LATER, ANONYMOUS_CAP_REASON)
                return
            # Released by _drop in the ``finally`` below (nothing between can raise or
            # switch tasks) or at authentication, whichever comes first.
            conn.anonymous_key = key
        self.connections.add(conn)
        try:
            if header_token is not None:
                self._authenticate(conn, header_token, header_proof)
            await self._read_loop(conn)
        finally:
            self._drop(conn)
            if conn.closing is None:
                conn.close(CloseCode.NORMAL, "")
            writer = conn.writer_task  # started by the close at the latest
            if writer is not None:
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
            try:
                if conn.claims is not None:  # no deadline: no wait_for (a frame less per idle socket)
                    data = await conn.transport.recv()
                else:
                    data = await asyncio.wait_for(
                        conn.transport.recv(), max(0.0, deadline - time.monotonic())
                    )
            except TimeoutError:
                self.metrics.auth_failures.labels("timeout").inc()
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
            self.metrics.bytes_in.inc(len(data))
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
            await self.pipeline.submit(conn, event.doc, event.uid, event.update)
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
            self.metrics.auth_failures.labels(failure.code).inc()
            conn.proto.reject_auth(CloseCode.AUTH_FAILED, failure.reason)
        except TokenExpired:
            self.metrics.auth_failures.labels("expired").inc()
            conn.proto.reject_auth(CloseCode.TOKEN_EXPIRED, "access token expired: refresh and reconnect")
        except TokenRevoked:
            self.metrics.auth_failures.labels("revoked").inc()
            conn.proto.reject_auth(CloseCode.SESSION_REVOKED, "session revoked: log in again")
        except TokenError:
            self.metrics.auth_failures.labels("invalid").inc()
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
            self.metrics.rejections.labels("forbidden_read").inc()
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
