"""Waiting for a condition in tests and benchmarks: one helper instead of a copy per file.

Why poll rather than sleep: a fixed sleep is either too short on a loaded machine (the test
flakes) or too long everywhere else (the suite crawls). Poll for the condition the sleep stood
for, and make the thing polled for quick where the relay has a flag for it (``--events-poll``
for account changes, ``--access-ttl`` for token expiry).

``eventually`` (async) takes a predicate that returns a truthy value or an awaitable of one;
``eventually_blocking`` is the same for synchronous code. Both return the first truthy value and
raise ``AssertionError`` naming ``what`` when ``timeout`` passes first.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

__all__ = ["eventually", "eventually_blocking"]


async def eventually(
    predicate: Callable[..., Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(interval)


def eventually_blocking(
    predicate: Callable[..., Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` from synchronous code, sleeping the thread between tries."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)
