"""The websocket's path for one ``upd``: admit, order, settle, answer (``relay.sync.hub``,
"Update", "Pipelining" and "Several nodes").

Every step works on one :class:`relay.sync.connection.Submission`. Ordering is the hub's
``order_update`` (shared with the HTTP batch); the answer of a stored update is the
:class:`relay.sync.delivery.Delivery`'s ack, in commit order; this module answers the rest
(refused, a re-send, a failed commit) and orders an update again after another node took its
stamp numbers first.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from crdt_core.errors import EngineError, ValidationError
from crdt_core.messages import CloseCode, ErrorCode
from crdt_core.validation import ValidatedUpdate
from relay.documents.manager import DocumentManager, Ordered
from relay.documents.results import Applied, CapacityError, ManagerClosedError
from relay.ops.config import SyncLimits
from relay.ops.logging import get_logger, log_event
from relay.store.base import AppendResult, StampConflictError, StoreError
from relay.sync.connection import Submission, SyncConnection
from relay.sync.delivery import Delivery, OnDurable
from relay.sync.metrics import HubMetrics

log = get_logger(__name__)

#: How often an update is ordered again after another node took its stamp numbers first, and the
#: longest random pause before one attempt (jitter: several nodes contending for one document
#: would otherwise collide again in lockstep).
STAMP_CONFLICT_RETRIES = 20
STAMP_RETRY_MAX_PAUSE_S = 0.05

#: ``SyncHub.order_update``: validate, order and stamp one update.
OrderUpdate = Callable[[str, bytes, OnDurable], Awaitable[Ordered[ValidatedUpdate]]]


def retry_pause(attempt: int) -> float:
    """The random pause before ordering an update again (``attempt`` >= 0)."""
    return random.uniform(0, min(STAMP_RETRY_MAX_PAUSE_S, 0.001 * 2**attempt))


class UpdatePipeline:
    """The ``upd`` path of one hub's websockets."""

    def __init__(
        self,
        *,
        order_update: OrderUpdate,
        delivery: Delivery,
        manager: DocumentManager,
        subscribers: dict[str, dict[SyncConnection, int]],
        limits: SyncLimits,
        metrics: HubMetrics,
        several_nodes: bool,
    ) -> None:
        self.order_update = order_update
        self.delivery = delivery
        self.manager = manager
        self.subscribers = subscribers
        self.limits = limits
        self.metrics = metrics
        self.several_nodes = several_nodes
        self._retries: set[asyncio.Task[None]] = set()

    async def submit(self, conn: SyncConnection, doc: str, uid: int, update: bytes) -> None:
        """An ``upd`` from ``conn``: the rate, size and subscription checks, then ordering."""
        started = time.monotonic()
        self.metrics.updates_in.inc()
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
            self.metrics.rejections.labels("doc_too_large").inc()
            conn.proto.send_error(ErrorCode.DOC_TOO_LARGE, "document at its size limit", doc=doc, uid=uid)
            conn.flush()
            return
        if doc not in self.subscribers or conn not in self.subscribers[doc]:
            # The protocol admits updates for subscribed docs only; a doc whose sync answer was an
            # error (forbidden, bad doc) never got registered here.
            conn.proto.send_error(ErrorCode.FORBIDDEN, "not subscribed to this document", doc=doc, uid=uid)
            conn.flush()
            return

        await self._order(Submission(conn, doc, uid, update, started))

    async def _order(self, sub: Submission, retried: asyncio.Future[None] | None = None) -> None:
        """Order one update; with several nodes, never on top of this connection's booking of
        the same document that may still be refused for its stamps (see "Several nodes").

        ``retried``: the gate of the attempt this one repeats, opened once this one is ordered
        (or given up), so the connection's next update of the document is ordered after it.
        """
        try:
            if self.several_nodes and retried is None:
                while (gate := sub.conn.stamping.get(sub.doc)) is not None and not gate.done():
                    await gate
            await self._order_now(sub)
        finally:
            if retried is not None and not retried.done():
                retried.set_result(None)

    async def _order_now(self, sub: Submission) -> None:
        conn, doc, uid = sub.conn, sub.doc, sub.uid

        def on_durable(result: AppendResult, checked: ValidatedUpdate | None, extra: bytes | None) -> None:
            try:
                self.delivery.committed(doc, sub.update, result, checked, extra, sender=sub)
            except Exception:
                log_event(log, "answering_update_failed", logging.ERROR, exc_info=True, uid=uid, doc=doc)
                if conn.proto.is_unanswered(uid):
                    conn.proto.ack(doc, uid, result.seqs[0])
                    conn.flush()

        ordered: Ordered[ValidatedUpdate]
        try:
            ordered = await self.order_update(doc, sub.update, on_durable)
        except ValidationError as exc:
            self.metrics.rejections.labels(exc.code).inc()
            code = ErrorCode.MISSING_DEPS if exc.code == "missing_deps" else ErrorCode.REJECTED
            conn.proto.send_error(code, f"{exc.code}: {exc.detail}"[:400], doc=doc, uid=uid)
            conn.flush()
            return
        except EngineError as exc:
            self.metrics.rejections.labels("malformed").inc()
            conn.proto.send_error(ErrorCode.REJECTED, f"malformed: {exc}"[:400], doc=doc, uid=uid)
            conn.flush()
            return
        except (CapacityError, ManagerClosedError, StoreError) as exc:
            conn.proto.send_error(
                ErrorCode.INTERNAL, f"not stored, retry: {type(exc).__name__}", doc=doc, uid=uid
            )
            conn.flush()
            return
        # Ordered: the commit runs while the read loop goes on. ``Delivery.committed`` answers a
        # stored update when it is durable; ``_settled`` answers the rest (a no-op, a failed commit).
        conn.inflight += 1
        gate: asyncio.Future[None] | None = None
        if self.several_nodes and ordered.extra is not None:
            # A booking: until it is stored (or ordered again after a stamp conflict), this
            # connection's next update of the document waits (it may depend on this one).
            gate = asyncio.get_running_loop().create_future()
            conn.stamping[doc] = gate
        ordered.add_done_callback(lambda outcome: self._settled(sub, outcome, gate))

    async def _reorder(self, sub: Submission, gate: asyncio.Future[None] | None) -> None:
        conn = sub.conn
        try:
            await asyncio.sleep(retry_pause(sub.attempt))
        finally:
            if conn.closing is not None or not conn.proto.is_unanswered(sub.uid):
                if gate is not None and not gate.done():
                    gate.set_result(None)
        if conn.closing is None and conn.proto.is_unanswered(sub.uid):
            # ``retried`` is never None here, so this attempt does not wait on its own gate.
            await self._order(sub, gate or _opened())

    def _settled(
        self,
        sub: Submission,
        outcome: Applied[ValidatedUpdate] | BaseException,
        gate: asyncio.Future[None] | None = None,
    ) -> None:
        """Runs once an ordered update's outcome is known (after ``Delivery.committed`` for a
        stored one whose seqs came in turn; with several nodes that may run later, see the manager)."""
        conn, doc, uid = sub.conn, sub.doc, sub.uid
        conn.inflight -= 1
        conn.make_room()
        retry = (
            isinstance(outcome, StampConflictError)
            and sub.attempt < STAMP_CONFLICT_RETRIES
            and conn.closing is None
            and conn.proto.is_unanswered(uid)
        )
        if gate is not None and not retry and not gate.done():
            gate.set_result(None)
        if not conn.proto.is_unanswered(uid):
            return  # answered by Delivery.committed, or the connection is gone
        if retry:
            # Another node stamped this document first; nothing of this update is stored and the
            # document reloads on its next use: validate and stamp it again against that.
            self.metrics.stamp_retries.inc()
            task = asyncio.ensure_future(self._reorder(sub.again(), gate))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        if not isinstance(outcome, BaseException) and outcome.update_seq is not None:
            return  # stored: Delivery.committed answers it in its seq turn
        if isinstance(outcome, BaseException):
            conn.proto.send_error(
                ErrorCode.INTERNAL, f"not stored, retry: {type(outcome).__name__}", doc=doc, uid=uid
            )
        else:
            # A re-send of what the relay already holds, now durable: acknowledge it.
            conn.proto.ack(doc, uid, outcome.seq)
        conn.flush()


def _opened() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
