"""Canonical msgpack: exactly one byte string per value, for everything QuickSlot signs.

Why: Yjs stores a record as opaque bytes under a key, and the writer rules refuse a second value
for a key (``rewrite``). If two byte strings could carry the same signed content (an array16
header instead of a fixarray, a str16 instead of a fixstr, map keys in another order), anybody
holding a victim's record could re-frame it and publish the variant first: the victim's real
bytes would then be refused as a rewrite, or two replicas would hold different bytes for one
record and digest comparisons would report an equivocation nobody committed. So a record, its
field map and a certificate are accepted only in their canonical encoding.

The canonical encoding of a value is what ``msgpack.packb(value, use_bin_type=True)`` writes after
sorting every map's keys by their UTF-8 bytes: the smallest int, str, bin, array and map forms,
str for text and bin for bytes, floats as float64 (never float32), map keys strings, no ext types.
"""

from __future__ import annotations

from typing import Any

import msgpack

from crdt_core.errors import SchemaError

__all__ = ["canonical_pack", "check_canonical"]

_MAX_DEPTH = 32


def _sorted(value: Any, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise SchemaError("value nested too deeply")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key in sorted(value, key=_key_bytes):
            out[key] = _sorted(value[key], depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_sorted(item, depth + 1) for item in value]
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    raise SchemaError(f"{type(value).__name__} has no canonical msgpack form")


def _key_bytes(key: Any) -> bytes:
    if not isinstance(key, str):
        raise SchemaError("map keys must be strings")
    return key.encode("utf-8")


#: Starting buffer of a packer (it grows as a value needs); records are a few hundred bytes.
_BUF_SIZE = 1024


def packb(value: Any) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)``, with a small starting buffer.

    Why: ``msgpack.packb`` builds a ``Packer`` whose buffer starts at 256 KiB; with the relay's
    fixed mmap threshold (``relay.malloc_tuning``) that is an ``mmap`` and a ``munmap`` per call.
    A profile of the relay under the many-documents load put 18% of its CPU in ``packb`` (about
    ten calls per booking). A 1 KiB start costs about 0.8 µs a call against 1.3 µs (and 4-6 µs
    under the relay's malloc settings), with no state kept between calls, so no thread can see
    another's buffer.
    """
    out: bytes = msgpack.Packer(use_bin_type=True, buf_size=_BUF_SIZE).pack(value)
    return out


def canonical_pack(value: Any) -> bytes:
    """The canonical msgpack bytes of ``value`` (maps, lists, str, bytes, int, float, bool, None)."""
    return packb(_sorted(value))


_SCALARS = frozenset({bool, int, float, str, bytes, type(None)})


def _in_canonical_order(value: Any, depth: int = 0) -> bool:
    """Whether every map in ``value`` lists its keys in canonical order (strictly increasing
    UTF-8 bytes, so no repeats), and ``value`` holds only types with a canonical form (no ext
    types, no msgpack Timestamps). Written for speed: the relay runs it on every record."""
    if depth > _MAX_DEPTH:
        return False
    kind = type(value)
    if kind is dict:
        previous = b""
        first = True
        for key in value:
            if type(key) is not str:
                return False
            encoded = key.encode("utf-8")
            if not first and encoded <= previous:
                return False
            previous, first = encoded, False
        items = value.values()
    elif kind is list:
        items = value
    else:
        return kind in _SCALARS
    for item in items:
        if type(item) not in _SCALARS and not _in_canonical_order(item, depth + 1):
            return False
    return True


def check_canonical(raw: bytes, decoded: Any, what: str) -> None:
    """Raises SchemaError unless ``raw`` (which decoded to ``decoded``) is the canonical encoding.

    ``decoded`` must come from ``msgpack.unpackb(raw, raw=False, strict_map_key=True)``, which
    keeps map keys in wire order: keys out of order (or repeated) are refused here, and any
    non-minimal header or a float32 shows up as a difference in the re-encoding. Costs one
    re-encoding and one walk, without building a sorted copy.
    """
    if not _in_canonical_order(decoded) or packb(decoded) != raw:
        raise SchemaError(f"{what} is not in canonical msgpack form")
