"""Token buckets in PostgreSQL, so every relay node draws from the same budget.

With in-memory buckets, N nodes behind a load balancer give a password guesser N times the
allowed attempts. Here a bucket is one row of ``auth_rate_buckets`` and one attempt is one
statement: an ``INSERT ... ON CONFLICT DO UPDATE`` that refills the row for the time elapsed,
takes the cost if there is enough, and returns the outcome. The row lock held by the upsert makes
concurrent attempts on any nodes apply one after the other, so the budget is exact (no
read-then-write race), and it costs one round trip.

Time comes from the database (``clock_timestamp()``), not from the nodes, so nodes whose clocks
disagree still refill a bucket consistently. A bucket left alone for a whole window is full
again, which is the same as having no row; such rows are deleted now and then, which keeps the
table small under a flood of spoofed keys (each row lives at most one window).

Every node applies its own configured capacity and refill rate to the shared row, so the nodes
must run with the same ``--*-rate-*`` settings (as they must with the same TTLs and issuer). If
the database is unreachable the attempt fails with an error rather than passing unlimited: a
limiter that failed open would be the easiest way around it.
"""

from __future__ import annotations

import time

import asyncpg

from relay.auth.account_store_pg import UNREACHABLE
from relay.auth.account_types import StoreUnavailable
from relay.auth.ratelimit import RateDecision
from relay.ops.config import RateLimit

_TAKE = """
INSERT INTO auth_rate_buckets AS b (scope, key, tokens, at, allowed)
VALUES ($1::text, $2::text, $3::float8 - $4::float8, EXTRACT(EPOCH FROM clock_timestamp()), TRUE)
ON CONFLICT (scope, key) DO UPDATE SET
    tokens = LEAST($3, b.tokens + GREATEST(0, excluded.at - b.at) * $5)
             - CASE WHEN LEAST($3, b.tokens + GREATEST(0, excluded.at - b.at) * $5) >= $4
                    THEN $4 ELSE 0 END,
    allowed = LEAST($3, b.tokens + GREATEST(0, excluded.at - b.at) * $5) >= $4,
    at = excluded.at
RETURNING tokens, allowed
"""

_PRUNE_EVERY_S = 60.0


class PostgresRateLimiter:
    """One purpose's buckets (``scope``), e.g. login attempts per account."""

    def __init__(self, pool: asyncpg.Pool, scope: str, limit: RateLimit) -> None:
        self.pool = pool
        self.scope = scope
        self.capacity = float(limit.capacity)
        self.window_s = float(limit.window_s)
        self.rate = limit.capacity / limit.window_s
        self._next_prune = time.monotonic() + _PRUNE_EVERY_S

    async def take(self, key: str, cost: float = 1.0) -> RateDecision:
        try:
            row = await self.pool.fetchrow(_TAKE, self.scope, key, self.capacity, float(cost), self.rate)
            if time.monotonic() >= self._next_prune:
                self._next_prune = time.monotonic() + _PRUNE_EVERY_S
                await self.prune()
        except UNREACHABLE as e:  # fail closed, and say so: 503 + Retry-After
            raise StoreUnavailable("The account database is unreachable; try again.", retry_after_s=1) from e
        assert row is not None
        if row["allowed"]:
            return RateDecision(True)
        return RateDecision(False, (cost - row["tokens"]) / self.rate)

    async def forget(self, key: str) -> None:
        await self.pool.execute(
            "DELETE FROM auth_rate_buckets WHERE scope = $1 AND key = $2", self.scope, key
        )

    async def prune(self) -> int:
        """Delete rows that have refilled completely (untouched for a whole window)."""
        status = await self.pool.execute(
            "DELETE FROM auth_rate_buckets WHERE scope = $1"
            " AND at < EXTRACT(EPOCH FROM clock_timestamp()) - $2::float8",
            self.scope,
            self.window_s,
        )
        return int(status.rsplit(" ", 1)[-1])
