"""What the relay suite's clients send: pre-built wire messages, each carrying a findable marker.

Why pre-built: the suite measures the servers, so everything a client would compute per update
(QuickSlot: the HLC, the signed record, the Yjs transaction, the msgpack frame; Yjs baselines:
the map insert and the y-protocols frame) is done before the timed phase. The relay's work on
each message (validation, stamping, storing, fan-out) is what the timed phase contains.

Markers: every update carries ``qsb:SSSSS:NNNNNN`` (sender index, sequence number) as bytes that
travel verbatim through every server (QuickSlot: the reservation's ``note`` inside the signed
msgpack record; Yjs: the start of the binary map value), so a receiver identifies an update with
one ``bytes.find`` instead of decoding it, whatever the server re-encodes around it. Send times
are recorded by the sender; latency is receive time minus send time, both ``CLOCK_MONOTONIC``
(comparable across the load generator's processes on one machine).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MARK = b"qsb:"
MARK_LEN = len("qsb:00000:000000")


def marker(sender: int, seq: int) -> str:
    return f"qsb:{sender:05d}:{seq:06d}"


def parse_marker(data: bytes, at: int) -> tuple[int, int]:
    return int(data[at + 4 : at + 9]), int(data[at + 10 : at + 16])


def marker_of(update: bytes) -> tuple[int, int]:
    """The (sender, seq) an update carries."""
    at = update.find(MARK)
    if at < 0:
        raise ValueError("update carries no marker")
    return parse_marker(update, at)


def booking_day(days_ahead: int = 3) -> str:
    return (dt.date.today() + dt.timedelta(days=days_ahead)).isoformat()


def bookings_doc(shop: str, day: str | None = None) -> str:
    return f"bookings:{shop}:{day or booking_day()}"


# --- y-protocols framing ---------------------------------------------------------------------------

YJS_SYNC, YJS_AWARENESS = 0, 1
YJS_STEP1, YJS_STEP2, YJS_UPDATE = 0, 1, 2
EMPTY_UPDATE = b"\x00\x00"
EMPTY_SV = b"\x00"


def varuint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def yjs_message(kind: int, payload: bytes) -> bytes:
    """A y-protocols sync message: ``[0, kind, varUint8Array(payload)]``."""
    return bytes((YJS_SYNC, kind)) + varuint(len(payload)) + payload


# --- Hocuspocus framing: the document name in front of every y-protocols message ------------------

HP_SYNC, HP_AWARENESS, HP_AUTH, HP_SYNC_REPLY, HP_SYNC_STATUS = 0, 1, 2, 4, 8


def varstring(text: str) -> bytes:
    raw = text.encode("utf-8")
    return varuint(len(raw)) + raw


def hocuspocus_message(doc: str, yjs_msg: bytes) -> bytes:
    """A Hocuspocus message: ``varString(doc)`` then a y-protocols message (its type first)."""
    return varstring(doc) + yjs_msg


def hocuspocus_auth(doc: str, token: str) -> bytes:
    """The auth message a Hocuspocus provider sends first: ``[doc, Auth, Token, token]``."""
    return varstring(doc) + bytes((HP_AUTH, 0)) + varstring(token)


def strip_hocuspocus(message: bytes) -> bytes:
    """The y-protocols message after a Hocuspocus message's document name."""
    length, pos = read_varuint(message, 0)
    return message[pos + length :]


def read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def yjs_payload(message: bytes) -> bytes:
    """The update or state vector inside a sync message."""
    length, pos = read_varuint(message, 2)
    return message[pos : pos + length]


# --- Yjs baseline updates ----------------------------------------------------------------------------


@dataclass
class YjsWriter:
    """One baseline client's document replica: a map insert per update, like a booking record."""

    client_id: int
    value_size: int

    def __post_init__(self) -> None:
        import pycrdt

        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=self.client_id)
        self._map = self._doc.get("reservations", type=pycrdt.Map)
        self._updates: list[bytes] = []
        self._sub = self._doc.observe(lambda event: self._updates.append(event.update))

    def update(self, sender: int, seq: int) -> bytes:
        """One transaction inserting ``marker -> value`` (``value_size`` bytes starting with the marker)."""
        mark = marker(sender, seq).encode()
        value = mark + b"r" * max(0, self.value_size - len(mark))
        self._map[f"r{sender}-{seq}"] = value
        return self._updates.pop()


def yjs_value_size_for(target_update_bytes: int) -> int:
    """The map value size that makes a Yjs update about ``target_update_bytes`` long."""
    probe = YjsWriter(client_id=1, value_size=0)
    overhead = len(probe.update(1, 1))  # an update whose value is only the marker
    return max(MARK_LEN, target_update_bytes - overhead + MARK_LEN)


# --- QuickSlot signed bookings -----------------------------------------------------------------------


@dataclass
class Identity:
    """A signed-in QuickSlot client: its account, tokens and certified device key."""

    user_id: str
    email: str
    access: str
    author: object  # crdt_core.authoring.Author (kept untyped: payloads stays importable without it)

    @property
    def device_key(self) -> bytes:
        """The raw Ed25519 private key the access token is bound to (for proofs of possession)."""
        from crdt_core.authoring import Author

        assert isinstance(self.author, Author)
        return self.author.device.private.private_bytes_raw()


def quickslot_updates(identity: Identity, doc: str, sender: int, seqs: Sequence[int]) -> list[bytes]:
    """Pre-signed booking updates of one client for one document (its certificate rides on the first).

    Each booking is on a slot of its own (``s<seq + 1>``): one customer holds one active claim per
    slot and day, and the relay refuses a second (``duplicate_booking``).
    """
    from crdt_core.authoring import Author
    from crdt_core.engine import Replica

    author = identity.author
    assert isinstance(author, Author)
    replica = Replica(author.client_id())
    out = []
    for seq in seqs:
        _, update = author.book(replica, doc, f"s{seq + 1}", 1 + seq % 3, note=marker(sender, seq))
        out.append(update)
    return out


def quickslot_update_message(doc: str, uid: int, update: bytes) -> bytes:
    from crdt_core.messages import ClientUpdate

    return ClientUpdate(doc, uid, update).to_wire()


def quickslot_subscribe_message(doc: str, sv: bytes = EMPTY_SV) -> bytes:
    from crdt_core.messages import Subscribe

    return Subscribe(doc, sv).to_wire()
