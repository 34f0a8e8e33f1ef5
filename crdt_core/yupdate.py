"""A strict, pure-Python reader of Yjs v1 updates and state vectors.

Why read updates ourselves: the relay validates every incoming update before the engine sees it
(docs/design.md, "Authorship"). Applying the update to a copy of a 1,000-reservation document costs
milliseconds; reading the few hundred bytes of a typical booking update costs microseconds and
tells exactly what it would do: which top-level map, which key, which value, and whether it
deletes anything. The writer rules only ever allow *inserting a new key into a top-level map*, so
anything else (an item with an origin, which is how Yjs encodes overwriting a key; nested types;
text; a delete set) is reported as such and refused by the validator.

Format (Yjs ``UpdateEncoderV1``; lib0 encoding): a varuint count of client blocks, each with a
struct count, client id, start clock and the structs; then the delete set. Every read is bounds
checked and every count is compared with the bytes left, so no input makes this slow or large.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Any

from crdt_core.errors import EngineError

__all__ = [
    "DecodedUpdate",
    "MapInsert",
    "OtherStruct",
    "decode_state_vector",
    "decode_update",
    "encode_state_vector",
    "encode_varuint",
]

_MAX_ANY_DEPTH = 32
#: The lib0 ``any`` tag of a byte buffer (a Uint8Array).
_ANY_BUFFER = 116
_MAX_SAFE = 2**53

# Struct refs (low five bits of the info byte).
_GC = 0
_DELETED = 1
_JSON = 2
_BINARY = 3
_STRING = 4
_EMBED = 5
_FORMAT = 6
_TYPE = 7
_ANY = 8
_DOC = 9
_SKIP = 10


class _Reader:
    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)

    def left(self) -> int:
        return self.end - self.pos

    def u8(self) -> int:
        if self.pos >= self.end:
            raise EngineError("unexpected end of update")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varuint(self) -> int:
        buf, pos, end = self.buf, self.pos, self.end
        num = 0
        shift = 0
        while True:
            if pos >= end:
                raise EngineError("unexpected end of update in varuint")
            b = buf[pos]
            pos += 1
            num |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 53:
                raise EngineError("varuint longer than 53 bits")
        self.pos = pos
        if num >= _MAX_SAFE:
            raise EngineError("varuint above 2**53")
        return num

    def varint(self) -> int:
        b = self.u8()
        num = b & 0x3F
        negative = bool(b & 0x40)
        shift = 6
        while b & 0x80:
            b = self.u8()
            num |= (b & 0x7F) << shift
            shift += 7
            if shift > 60:
                raise EngineError("varint too long")
        return -num if negative else num

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise EngineError(f"declared length {n} exceeds the {self.end - self.pos} bytes left")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def var_bytes(self) -> bytes:
        return self.take(self.varuint())

    def var_string(self) -> str:
        raw = self.var_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EngineError("string is not UTF-8") from None

    def count(self, what: str) -> int:
        """A count of things that each take at least one byte, so it can never exceed what is left."""
        n = self.varuint()
        if n > self.left():
            raise EngineError(f"{what} count {n} exceeds the {self.left()} bytes left")
        return n

    def any(self, depth: int = 0) -> Any:
        if depth > _MAX_ANY_DEPTH:
            raise EngineError("value nested too deeply")
        tag = self.u8()
        if tag in (127, 126):
            return None
        if tag == 125:
            return self.varint()
        if tag == 124:
            return struct.unpack(">f", self.take(4))[0]
        if tag == 123:
            return struct.unpack(">d", self.take(8))[0]
        if tag == 122:
            return struct.unpack(">q", self.take(8))[0]
        if tag == 121:
            return False
        if tag == 120:
            return True
        if tag == 119:
            return self.var_string()
        if tag == 118:
            n = self.count("object entry")
            obj: dict[str, Any] = {}
            for _ in range(n):
                key = self.var_string()
                obj[key] = self.any(depth + 1)
            return obj
        if tag == 117:
            n = self.count("array element")
            return [self.any(depth + 1) for _ in range(n)]
        if tag == _ANY_BUFFER:
            return self.var_bytes()
        raise EngineError(f"unknown value tag {tag}")


@dataclass(frozen=True, slots=True)
class MapInsert:
    """An item that sets ``key`` of the top-level map ``root`` where that key had no value yet."""

    client: int
    clock: int
    root: str
    key: str
    value: Any
    """The single value written: ``bytes`` for QuickSlot records."""


@dataclass(frozen=True, slots=True)
class OtherStruct:
    """Any struct that is not a plain top-level map insert; the validator refuses these."""

    client: int
    clock: int
    length: int
    why: str


@dataclass(slots=True)
class DecodedUpdate:
    inserts: list[MapInsert] = field(default_factory=list)
    others: list[OtherStruct] = field(default_factory=list)
    deletes: list[tuple[int, int, int]] = field(default_factory=list)
    """``(client, clock, length)`` ranges of the delete set."""
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Per client, the ``[start, end)`` clock range the update's structs cover."""


def _read_content(r: _Reader, ref: int) -> tuple[int, Any, str | None]:
    """Returns ``(length, value, why_not_a_plain_value)``."""
    if ref == _ANY:
        n = r.count("any value")
        values = [r.any() for _ in range(n)]
        if n != 1:
            return n, None, f"{n} values in one item"
        return 1, values[0], None
    if ref == _BINARY:
        return 1, r.var_bytes(), None
    if ref == _DELETED:
        return r.varuint(), None, "deleted content"
    if ref == _JSON:
        n = r.count("json value")
        for _ in range(n):
            r.var_string()
        return n, None, "json content"
    if ref == _STRING:
        s = r.var_string()
        return len(s.encode("utf-16-le")) // 2, None, "text content"
    if ref == _EMBED:
        r.var_string()
        return 1, None, "embed content"
    if ref == _FORMAT:
        r.var_string()
        r.var_string()
        return 1, None, "format content"
    if ref == _TYPE:
        type_ref = r.varuint()
        if type_ref in (3, 6):
            r.var_string()
        return 1, None, "nested shared type"
    if ref == _DOC:
        r.var_string()
        r.any()
        return 1, None, "subdocument"
    raise EngineError(f"unknown content ref {ref}")


#: Updates up to this size are remembered by :func:`decode_update` (the last few only).
DECODE_MEMO_MAX_BYTES = 16 * 1024


def decode_update(update: bytes) -> DecodedUpdate:
    """Describe what a Yjs v1 update would do, without applying it. The result is shared with
    other callers that decode the same bytes: read it, never change it.

    Why remembered: the relay reads one incoming update three times (is it a re-send, is it
    valid, did it integrate) and each read decoded it in Python again.

    Raises:
        EngineError: the bytes are not a well-formed Yjs v1 update (trailing bytes included).
    """
    data = bytes(update)
    if len(data) > DECODE_MEMO_MAX_BYTES:
        return _decode_update(data)
    return _decode_small(data)


@functools.lru_cache(maxsize=8)
def _decode_small(update: bytes) -> DecodedUpdate:
    return _decode_update(update)


def _decode_update(update: bytes) -> DecodedUpdate:
    r = _Reader(update)
    out = DecodedUpdate()
    n_clients = r.count("client block")
    for _ in range(n_clients):
        n_structs = r.count("struct")
        client = r.varuint()
        clock = r.varuint()
        start = clock
        for _ in range(n_structs):
            info = r.u8()
            ref = info & 0x1F
            if ref == _GC:
                length = r.varuint()
                out.others.append(OtherStruct(client, clock, length, "garbage-collected range"))
                clock += length
                continue
            if ref == _SKIP:
                length = r.varuint()
                out.others.append(OtherStruct(client, clock, length, "gap (skip)"))
                clock += length
                continue
            has_origin = bool(info & 0x80)
            has_right = bool(info & 0x40)
            if has_origin:
                r.varuint()
                r.varuint()
            if has_right:
                r.varuint()
                r.varuint()
            root: str | None = None
            key: str | None = None
            nested_parent = False
            if not (has_origin or has_right):
                if r.varuint() == 1:
                    root = r.var_string()
                else:
                    r.varuint()
                    r.varuint()
                    nested_parent = True
                if info & 0x20:
                    key = r.var_string()
            length, value, why = _read_content(r, ref)
            if length < 1:
                raise EngineError("struct of length 0")
            if why is None:
                if has_origin or has_right:
                    why = "item placed relative to another (overwrites or sequences)"
                elif nested_parent:
                    why = "item inside a nested type"
                elif key is None:
                    why = "item in a top-level sequence, not a map"
            if why is None and root is not None and key is not None:
                out.inserts.append(MapInsert(client, clock, root, key, value))
            else:
                out.others.append(OtherStruct(client, clock, length, why or "unsupported"))
            clock += length
        if n_structs:
            lo, hi = out.ranges.get(client, (start, clock))
            out.ranges[client] = (min(lo, start), max(hi, clock))
    n_ds = r.count("delete-set client")
    for _ in range(n_ds):
        client = r.varuint()
        n_ranges = r.count("delete range")
        for _ in range(n_ranges):
            clock = r.varuint()
            length = r.varuint()
            out.deletes.append((client, clock, length))
    if r.left():
        raise EngineError(f"{r.left()} trailing bytes after the update")
    return out


def decode_state_vector(state_vector: bytes) -> dict[int, int]:
    """``{client: next clock}`` from a Yjs v1 state vector; strict, bounded."""
    r = _Reader(bytes(state_vector))
    n = r.count("state vector entry")
    out: dict[int, int] = {}
    for _ in range(n):
        client = r.varuint()
        out[client] = r.varuint()
    if r.left():
        raise EngineError(f"{r.left()} trailing bytes after the state vector")
    return out


def _write_varuint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)


def encode_varuint(n: int) -> bytes:
    """Yjs' unsigned varint (lib0), for whoever hand-builds update bytes (the corpus, tests)."""
    out = bytearray()
    _write_varuint(out, n)
    return bytes(out)


def encode_map_inserts(client: int, clock: int, entries: list[tuple[str, str, bytes]]) -> bytes:
    """The Yjs v1 update of ``entries`` ``(root, key, value)`` inserted as new keys of top-level
    maps by ``client`` from ``clock`` on, one item each with no origin holding one ``any`` value
    of type buffer: byte for byte what Yrs encodes for such a transaction (``Replica.write``
    relies on it; tests compare the two)."""
    out = bytearray(b"\x01")
    _write_varuint(out, len(entries))
    _write_varuint(out, client)
    _write_varuint(out, clock)
    for root, key, value in entries:
        out.append(0x20 | _ANY)  # has a parent key (map entry), no origins
        out.append(1)  # parent is a top-level type, by name
        for text in (root, key):
            raw = text.encode("utf-8")
            _write_varuint(out, len(raw))
            out += raw
        out.append(1)  # one value
        out.append(_ANY_BUFFER)
        _write_varuint(out, len(value))
        out += value
    out.append(0)  # empty delete set
    return bytes(out)


def encode_state_vector(clocks: dict[int, int]) -> bytes:
    out = bytearray()
    _write_varuint(out, len(clocks))
    for client in sorted(clocks, reverse=True):
        _write_varuint(out, client)
        _write_varuint(out, clocks[client])
    return bytes(out)
