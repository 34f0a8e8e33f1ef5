"""Where a durable commit goes: the sender's ack, this node's subscribers, the other nodes.

Every path that shows subscribers something ends here, in commit order: a client's update
committed on this node (websocket or HTTP), the stamps a stamp hold left for later, another
node's commit (``relay.fanout``), and the catch-up after a document was reloaded. Each message
is encoded once and queued on every subscriber by :func:`relay.sync.connection.send_to_subscribers`
(``relay.sync.hub``, "Fan-out" and "Several nodes").
"""

from __future__ import annotations

import time
from collections.abc import Callable

from crdt_core.messages import MAX_STAMPS, encode_stamp, encode_stamped, encode_update
from crdt_core.validation import ValidatedUpdate
from relay.fanout.base import Committed, Fanout
from relay.store.base import AppendResult
from relay.sync.connection import Submission, SyncConnection, send_to_subscribers
from relay.sync.metrics import HubMetrics
from relay.sync.stamping import claims_to_stamp

#: Called once a client's update is durable: the append, the checked update, the stamp update.
OnDurable = Callable[[AppendResult, ValidatedUpdate | None, bytes | None], None]


class Delivery:
    """Acks and fan-out of one hub (its subscribers: document -> connection -> subscribed seq)."""

    def __init__(
        self,
        subscribers: dict[str, dict[SyncConnection, int]],
        metrics: HubMetrics,
        fanout: Fanout | None,
    ) -> None:
        self.subscribers = subscribers
        self.metrics = metrics
        self.fanout = fanout

    def committed(
        self,
        doc: str,
        update: bytes,
        result: AppendResult,
        checked: ValidatedUpdate | None,
        extra: bytes | None,
        sender: Submission | None = None,
    ) -> None:
        """Runs in commit order: ack the sender (if a websocket sent it), then fan the durable
        bytes out to every other subscriber.

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
            self.metrics.stamps_issued.inc(len(stamps))
            if len(stamps) > MAX_STAMPS:
                # More than one message may summarise: send the update alone; subscribers see the
                # stamps' seq missing at their next message and resync, which brings them.
                stamp_update, stamps = None, []
        delivered = 0
        conn = sender.conn if sender is not None else None
        if sender is not None and conn is not None and conn.proto.is_unanswered(sender.uid):
            base = subs.get(conn)
            if stamp_update is not None and base is not None and update_seq > base:
                # (Not live on the doc, e.g. resyncing: a plain ack; the sync brings the stamps.)
                if conn.proto.ack_stamped(doc, sender.uid, update_seq, stamp_update, stamps):
                    delivered += 1
            else:
                conn.proto.ack(doc, sender.uid, update_seq)
            conn.flush()
            self.metrics.ack_latency.observe(time.monotonic() - sender.started)
        if stamp_update is not None:
            data = encode_stamped(doc, update_seq, update, stamp_update, stamps)
        else:
            data = encode_update(doc, update, update_seq)
        per = 1 if stamp_update is None else 2
        delivered += per * send_to_subscribers(subs, doc, update_seq, data, skip=conn)
        self.metrics.updates_out.inc(delivered)

    def stamps(self, doc: str, seq: int, update: bytes, stamped: list[tuple[int, str]]) -> None:
        """Stamps of claims stored earlier (a stamp hold's sweep), durable at ``seq``."""
        self.metrics.stamps_issued.inc(len(stamped))
        if len(stamped) <= MAX_STAMPS:
            data = encode_stamp(doc, seq, update, stamped)
        else:  # too many for one summary: the stamp records alone, as a plain update
            data = encode_update(doc, update, seq)
        self.metrics.updates_out.inc(send_to_subscribers(self.subscribers.get(doc, {}), doc, seq, data))

    def remote(self, message: Committed) -> None:
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
        self.metrics.updates_out.inc(per * send_to_subscribers(subs, doc, seq, data))

    def catchup(self, doc: str, update: bytes, seq: int) -> None:
        """The document was reloaded up to ``seq``: send subscribers behind it what they lack."""
        subs = self.subscribers.get(doc)
        if not subs:
            return
        self.metrics.catchups.inc()
        send_to_subscribers(subs, doc, seq, encode_update(doc, update, seq), advance=True)

    # --- to the other nodes ------------------------------------------------------------------------

    def announcer(self, doc: str, update: bytes) -> OnDurable | None:
        """With several nodes: what publishes a client's update to the others once committed."""
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

    def stamps_announcer(
        self, doc: str, stamped: list[tuple[int, str]]
    ) -> Callable[[AppendResult, bytes], None] | None:
        """With several nodes: what publishes a stamp sweep (``stamped``, filled as it is built)."""
        fanout = self.fanout
        if fanout is None:
            return None

        def announce(result: AppendResult, update: bytes) -> None:
            fanout.publish(
                Committed(fanout.node_id, doc, result.seq, (update,), tuple(stamped), result.stamps.stop)
            )

        return announce
