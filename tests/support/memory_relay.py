"""An in-process relay behind an in-memory channel, for the sync service's tests without sockets.

Why: the sync session's logic (outbox order, acks and stamps, refusals and rebuilds, live
updates, the relay's closes) is the same whatever carries its bytes. ``SyncService`` takes an
``open_socket`` (``client.sync.base.SyncSocket``); :meth:`MemoryRelay.open` is one. Its other
end runs the relay side of the wire protocol, ``crdt_core.protocol.RelayProtocol``, over
:class:`tests.support.clients.FakeRelay`'s documents: every update validated with the relay's
arrival policy, stamped as the relay stamps, acknowledged, and fanned out to the other
connections. What it leaves out is the real relay's (accounts, durability, limits, many nodes):
those are tested against real relay processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from crdt_core.authoring import write_stamps
from crdt_core.errors import ValidationError
from crdt_core.messages import CloseCode, Limit
from crdt_core.protocol import (
    AuthRequested,
    RelayProtocol,
    SubscribeRequested,
    UnsubscribeRequested,
    UpdateSubmitted,
)
from crdt_core.reader import read_bookings
from crdt_core.schema import DocKind, parse_doc_id
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import stamp_order
from tests.support.clients import FakeRelay

__all__ = ["MemoryRelay", "MemorySocket"]


class MemorySocket:
    """The client's end of one in-memory connection (a ``client.sync.base.SyncSocket``)."""

    def __init__(self, relay: MemoryRelay, user: str) -> None:
        self._relay = relay
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.proto = RelayProtocol(header_auth=True)
        self.user = user
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: Every message the client sent, in order (what a test may assert on).
        self.sent: list[bytes] = []

    async def send(self, message: bytes) -> None:
        if self.close_code is not None:
            return
        self.sent.append(message)
        self.proto.receive_message(message)
        self._relay.serve(self)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.drop(code, reason)

    def drop(self, code: int, reason: str) -> None:
        """End the connection from either side: the client's iteration stops after what is queued."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._inbox.put_nowait(None)
            self._relay.connections.discard(self)

    def deliver(self) -> None:
        """Move what the relay's protocol queued to the client; close if the protocol decided to."""
        for data in self.proto.data_to_send():
            if self.close_code is None:
                self._inbox.put_nowait(data)
        if self.proto.close_expected():
            self.drop(self.proto.close_code or 1000, self.proto.close_reason)

    async def __aiter__(self) -> AsyncIterator[bytes | str]:
        while True:
            data = await self._inbox.get()
            if data is None:
                return
            yield data


@dataclass
class MemoryRelay:
    """The relay's answers to one :class:`FakeRelay`'s documents, for any number of connections.

    ``tokens`` maps an access token to its user; any other token is refused with 4003, as the
    relay refuses a token it cannot verify. ``seqs`` counts each document's stored updates (the
    relay's ``seq``; a stamp update is stored after the update it stamps).
    """

    store: FakeRelay
    tokens: dict[str, str] = field(default_factory=dict)
    epoch: str = "memory-epoch"
    connections: set[MemorySocket] = field(default_factory=set)
    seqs: dict[str, int] = field(default_factory=dict)
    #: Refuse every update with this reason code (a relay-wide failure a test injects), or None.
    refuse_with: str | None = None

    async def open(self, url: str, headers: Mapping[str, str]) -> MemorySocket:
        """A ``client.sync.base.SocketOpener``: the handshake takes the bearer token from ``headers``."""
        del url
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        user = self.tokens.get(token)
        socket = MemorySocket(self, user or "")
        self.connections.add(socket)
        if user is None:
            socket.proto.reject_auth(int(CloseCode.AUTH_FAILED), "invalid token")
        else:
            socket.proto.accept_auth(user, self.epoch, "memory", {Limit.MAX_DOCS: 256})
        socket.deliver()
        return socket

    def serve(self, socket: MemorySocket) -> None:
        """Answer every event the client's last message raised, then deliver the answers."""
        for event in socket.proto.events_received():
            if isinstance(event, SubscribeRequested):
                replica = self.store.replica(event.doc)
                seq = self.seqs.get(event.doc, 0)
                socket.proto.send_sync(event.doc, replica.diff(event.sv), replica.state_vector(), seq)
            elif isinstance(event, UpdateSubmitted):
                self._update(socket, event)
            elif isinstance(event, (UnsubscribeRequested, AuthRequested)):
                pass  # the protocol already stopped the doc's fan-out; auth came in the header
        socket.deliver()

    def _update(self, socket: MemorySocket, event: UpdateSubmitted) -> None:
        doc = event.doc
        replica = self.store.replica(doc)
        world = self.store.world
        try:
            if self.refuse_with is not None:
                raise ValidationError(self.refuse_with, "refused by the test")
            checked = validate_update(
                doc, replica, event.update, world.cache(), ArrivalPolicy(now_ms=world.now_ms)
            )
        except ValidationError as exc:
            socket.proto.send_error(exc.code, exc.detail, doc=doc, uid=event.uid)
            return
        if checked.noop:
            socket.proto.ack(doc, event.uid, self.seqs.get(doc, 0))
            return
        replica.apply_update(event.update)
        seq = self.seqs[doc] = self.seqs.get(doc, 0) + 1
        new = [r.id for r in stamp_order(checked.new_reservations)]
        if parse_doc_id(doc).kind is not DocKind.BOOKINGS or not new:
            socket.proto.ack(doc, event.uid, seq)
            self._fan_out(socket, doc, lambda p: p.send_update(doc, event.update, seq))
            return
        first = len(read_bookings(replica, doc).stamps) + 1
        stamps, stamp_update = write_stamps(replica, doc, world.relay, new, first, world.now_ms)
        numbered = [(s.no, s.reservation) for s in stamps]
        stamp_seq = self.seqs[doc] = seq + 1
        socket.proto.ack_stamped(doc, event.uid, seq, stamp_update, numbered)

        def forward(proto: RelayProtocol) -> None:
            proto.send_update(doc, event.update, seq)
            proto.send_stamp(doc, stamp_seq, stamp_update, numbered)

        self._fan_out(socket, doc, forward)

    def _fan_out(self, sender: MemorySocket, doc: str, send: object) -> None:
        for other in list(self.connections):
            if other is not sender and other.proto.is_live(doc):
                send(other.proto)  # type: ignore[operator]
                other.deliver()

    def close_all(self, code: int = int(CloseCode.GOING_AWAY), reason: str = "relay restarting") -> None:
        """Close every connection as a relay going down does (the clients reconnect)."""
        for socket in list(self.connections):
            socket.proto.close(code, reason)
            socket.deliver()
