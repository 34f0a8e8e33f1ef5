"""What crosses between relay nodes: one committed append, and the seam a fan-out backend fills.

Why a seam: one relay process needs no fan-out beyond its own subscribers (the hub writes to them
straight from the commit callback, with no serialisation and no extra hop), so single-node
deployments run with ``fanout=None`` and pay nothing. Several nodes behind a load balancer plug a
:class:`Fanout` in (:mod:`relay.fanout.redis_streams`), and every committed append is published
once and reaches every other node.

What a message promises: ``updates`` are *already durable* in the shared store under seqs
``seq .. seq + len(updates) - 1`` (a booking and its stamp update travel together, as they were
stored together). A node that receives one may apply it to its in-memory replica without storing
it, and hand it to its subscribers; a node that misses one notices the hole in the document's
seqs and reloads the document from the store (:mod:`relay.documents.manager`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgpack

from relay.errors import RelayError

__all__ = ["Committed", "DecodeError", "Fanout", "decode", "encode"]

#: Bumped when the wire form changes; a node drops (and logs) messages of another version.
WIRE_VERSION = 1


class DecodeError(RelayError, ValueError):
    """A stream entry that is not a fan-out message of this version."""


@dataclass(frozen=True, slots=True)
class Committed:
    """One append committed by ``origin``: its updates, first seq, and the stamps it allocated."""

    origin: str
    doc: str
    seq: int
    #: The client's update, then (for a booking) the relay's stamp update.
    updates: tuple[bytes, ...]
    #: ``(stamp number, reservation id)`` pairs the stamp update carries (the ``stamped`` summary).
    stamps: tuple[tuple[int, str], ...] = ()
    #: The document's next stamp number after this append (0 when it allocated none).
    next_stamp: int = 0

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.updates) - 1


def encode(message: Committed) -> bytes:
    body = [
        WIRE_VERSION,
        message.origin,
        message.doc,
        message.seq,
        list(message.updates),
        [list(pair) for pair in message.stamps],
        message.next_stamp,
    ]
    return bytes(msgpack.packb(body, use_bin_type=True))


def decode(data: bytes) -> Committed:
    try:
        body = msgpack.unpackb(data, raw=False)
        version, origin, doc, seq, updates, stamps, next_stamp = body
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"undecodable fan-out entry: {exc}") from None
    if version != WIRE_VERSION:
        raise DecodeError(f"fan-out entry of wire version {version!r}, this node speaks {WIRE_VERSION}")
    if (
        not isinstance(origin, str)
        or not isinstance(doc, str)
        or not isinstance(seq, int)
        or seq < 1
        or not isinstance(updates, list)
        or not updates
        or not all(isinstance(u, bytes) for u in updates)
        or not isinstance(next_stamp, int)
    ):
        raise DecodeError("malformed fan-out entry")
    try:
        pairs = tuple((int(n), str(r)) for n, r in stamps)
    except (TypeError, ValueError):
        raise DecodeError("malformed stamp summary in fan-out entry") from None
    return Committed(origin, doc, seq, tuple(updates), pairs, next_stamp)


#: Called for every message another node published, in stream order (per document: publish order).
OnMessage = Callable[[Committed], None]
#: Called when messages may have been lost (the stream was reset or trimmed past this node).
OnReset = Callable[[], None]


class Fanout(Protocol):
    """Carries committed appends between relay nodes. Implementations never block the caller."""

    #: This node's id; messages it published come back with it and are skipped by the receiver.
    node_id: str

    def publish(self, message: Committed) -> None:
        """Queue ``message`` for every other node; returns at once, keeps publish order."""
        ...

    async def start(self, on_message: OnMessage, on_reset: OnReset) -> None:
        """Start publishing and consuming; returns once the starting position is known."""
        ...

    async def close(self) -> None:
        """Stop; messages not yet published are dropped (other nodes resync on the seq gap)."""
        ...
