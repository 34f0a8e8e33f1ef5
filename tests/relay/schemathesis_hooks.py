"""Schemathesis hooks for runs against the relay: a msgpack serializer, so ``POST /api/v1/sync/batch``
is also fuzzed with ``application/msgpack`` bodies (the relay's own wire encoding for it).

Loaded by the schemathesis CLI through ``SCHEMATHESIS_HOOKS=tests.relay.schemathesis_hooks``.
"""

from __future__ import annotations

from typing import Any

import msgpack
import schemathesis


@schemathesis.serializer("application/msgpack")
def to_msgpack(ctx: Any, value: Any) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # a value msgpack cannot hold: send it as JSON text
        packed = msgpack.packb(repr(value))
    return packed
