"""Byte-level building blocks: msgpack maps written by hand and raw websocket frames.

Why by hand: ``msgpack.packb`` cannot write what a hostile client would (duplicate keys, a map
header that lies about its entry count, 4 GiB length fields, nesting deeper than its recursion
limit), and the ``websockets`` client refuses to send malformed frames. Both are needed to test
the relay's first contact with untrusted bytes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack


@dataclass(frozen=True)
class Raw:
    """Already-encoded msgpack bytes used as a map key or value (for what packb cannot write)."""

    data: bytes

    def __repr__(self) -> str:
        shown = self.data[:24].hex()
        return f"Raw({shown}{'...' if len(self.data) > 24 else ''} [{len(self.data)}B])"


def pack_value(value: Any) -> bytes:
    if isinstance(value, Raw):
        return value.data
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def map_header(count: int) -> bytes:
    if count < 16:
        return bytes([0x80 | count])
    if count < 1 << 16:
        return b"\xde" + struct.pack(">H", count)
    return b"\xdf" + struct.pack(">I", count)


def pack_map(entries: Sequence[tuple[Any, Any]], *, declared: int | None = None) -> bytes:
    """A msgpack map of ``entries`` in order (duplicates allowed); ``declared`` overrides the count."""
    body = b"".join(pack_value(k) + pack_value(v) for k, v in entries)
    return map_header(len(entries) if declared is None else declared) + body


def deep_nesting(depth: int, *, kind: str = "array") -> Raw:
    """``depth`` nested one-element arrays (or maps) around a nil."""
    if kind == "array":
        return Raw(b"\x91" * depth + b"\xc0")
    return Raw(b"\x81\xa1k" * depth + b"\xc0")


# --- msgpack header walker (for "length field set huge" mutations) -------------------------------


@dataclass(frozen=True)
class Header:
    """A msgpack container or string header at ``offset``: its family and how many bytes it spans."""

    offset: int
    family: str  # "map", "array", "str", "bin", "ext"
    size: int


def _fixed(b: int) -> tuple[str, int, int] | None:
    """(family, header length, inline length or -1) for one leading byte, or None for scalars."""
    if 0x80 <= b <= 0x8F:
        return "map", 1, b & 0x0F
    if 0x90 <= b <= 0x9F:
        return "array", 1, b & 0x0F
    if 0xA0 <= b <= 0xBF:
        return "str", 1, b & 0x1F
    table = {
        0xC4: ("bin", 2), 0xC5: ("bin", 3), 0xC6: ("bin", 5),
        0xD9: ("str", 2), 0xDA: ("str", 3), 0xDB: ("str", 5),
        0xDC: ("array", 3), 0xDD: ("array", 5), 0xDE: ("map", 3), 0xDF: ("map", 5),
        0xC7: ("ext", 3), 0xC8: ("ext", 4), 0xC9: ("ext", 6),
    }  # fmt: skip
    if b in table:
        family, hlen = table[b]
        return family, hlen, -1
    return None


_SCALAR_SIZES = {
    0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,
    0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9, 0xD4: 3, 0xD5: 4, 0xD6: 6, 0xD7: 10, 0xD8: 18,
}  # fmt: skip


def headers(data: bytes) -> Iterator[Header]:
    """Every container/string header of a well-formed msgpack value, in byte order."""
    pos = 0
    pending = 1
    while pending and pos < len(data):
        pending -= 1
        b = data[pos]
        if b <= 0x7F or b >= 0xE0:
            pos += 1
            continue
        if b in _SCALAR_SIZES:
            pos += _SCALAR_SIZES[b]
            continue
        fixed = _fixed(b)
        if fixed is None:
            return
        family, hlen, inline = fixed
        if inline >= 0:
            length = inline
        elif family == "ext":
            length = int.from_bytes(data[pos + 1 : pos + hlen - 1], "big")
        else:
            length = int.from_bytes(data[pos + 1 : pos + hlen], "big")
        yield Header(pos, family, hlen)
        pos += hlen
        if family == "map":
            pending += 2 * length
        elif family == "array":
            pending += length
        else:
            pos += length


def huge_header(family: str) -> bytes:
    """The widest header of ``family`` declaring 2^32-1 items/bytes."""
    return {
        "map": b"\xdf", "array": b"\xdd", "str": b"\xdb", "bin": b"\xc6", "ext": b"\xc9",
    }[family] + b"\xff\xff\xff\xff" + (b"\x01" if family == "ext" else b"")  # fmt: skip


# --- raw websocket frames (client to server: masked) -----------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    declared_length: int | None = None,
) -> bytes:
    """One websocket frame as a client writes it; every field can be made wrong on purpose."""
    first = (0x80 if fin else 0) | ((rsv & 0x7) << 4) | (opcode & 0x0F)
    length = len(payload) if declared_length is None else declared_length
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes([first, mask_bit | length])
    elif length < 1 << 16:
        head = bytes([first, mask_bit | 126]) + struct.pack(">H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack(">Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body
