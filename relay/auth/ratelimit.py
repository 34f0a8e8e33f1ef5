"""Rate limiting behind a small interface, with an in-memory token bucket for one node.

Login is the obvious target of password guessing, so attempts are limited per account (slows
guessing one victim from many addresses) and per client address (slows one attacker spraying
many accounts). A token bucket needs two numbers per key, refills smoothly and gives an exact
``Retry-After``. Memory stays bounded: only ``max_keys`` keys are remembered and the least
recently used are dropped first (dropping a key only forgives it, it never blocks anyone).

Several relay nodes must share their buckets, or an attacker multiplies the budget by the
number of nodes behind the load balancer: with a PostgreSQL store the buckets live in the
database (``relay.auth.ratelimit_pg``). :class:`RateLimiter` is the seam; its :meth:`~RateLimiter.take`
is async for that reason, and the in-memory limiter (one node) answers it without waiting.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from relay.ops.config import RateLimit


@dataclass(frozen=True)
class RateDecision:
    """``allowed``, or how long to wait before the next attempt would be."""

    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up and at least 1 (the HTTP ``Retry-After`` form)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter(Protocol):
    """Counts attempts per key."""

    async def take(self, key: str, cost: float = 1.0) -> RateDecision:
        """Record an attempt for ``key`` if allowed; otherwise report the wait."""
        ...

    async def forget(self, key: str) -> None:
        """Forget ``key`` (e.g. after an operator unlocks an account)."""
        ...


class TokenBucketLimiter:
    """``capacity`` attempts in a burst, refilling at ``capacity / window_s`` per second."""

    def __init__(
        self, limit: RateLimit, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(limit.capacity)
        self.rate = limit.capacity / limit.window_s
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def hit(self, key: str, cost: float = 1.0) -> RateDecision:
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - at) * self.rate)
        if tokens >= cost:
            self._store(key, tokens - cost, now)
            return RateDecision(True)
        self._store(key, tokens, now)
        return RateDecision(False, (cost - tokens) / self.rate)

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    async def take(self, key: str, cost: float = 1.0) -> RateDecision:
        return self.hit(key, cost)

    async def forget(self, key: str) -> None:
        self.reset(key)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
