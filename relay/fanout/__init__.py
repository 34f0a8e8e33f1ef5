"""Cross-node fan-out: how an update committed on one relay node reaches the others.

:mod:`relay.fanout.base` is the seam (:class:`Fanout`, the :class:`Committed` message);
:mod:`relay.fanout.redis_streams` fills it with Redis Streams. A single node runs without one.
"""

from __future__ import annotations

from relay.fanout.base import Committed, Fanout, OnMessage, OnReset

__all__ = ["Committed", "Fanout", "OnMessage", "OnReset", "open_fanout"]


def open_fanout(redis_url: str | None, **options: int | str) -> Fanout | None:
    """The fan-out for ``--redis URL``, or ``None`` for a single node (no Redis, no cost)."""
    if not redis_url:
        return None
    from relay.fanout.redis_streams import RedisStreamFanout

    return RedisStreamFanout(redis_url, **options)  # type: ignore[arg-type]
