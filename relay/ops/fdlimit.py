"""Fit the connection limit to the process's open-file limit.

Why: every sync connection holds a file descriptor, and Linux starts processes (systemd services
too) with a soft ``RLIMIT_NOFILE`` of 1024 while ``--max-connections`` defaults to 10,000. Past
the descriptor limit ``accept()`` fails with EMFILE: asyncio then logs one traceback per queued
connection (the load run saw ~290,000 log lines in 100 s, the relay's CPU spent on logging and its
live connections waiting seconds for acks), and new clients sit in the listen backlog until their
own timeout, a hang instead of the documented ``1013 relay full``.

So ``serve`` raises its soft limit towards what the connection limit needs (up to the hard limit,
which an unprivileged process may do), and when that is still short it lowers the connection
limit to what the descriptors allow, keeping :data:`RESERVED_FDS` for the database files, the
listening socket, logs and HTTP requests, and for turning surplus clients away with 1013.

A burst of connections can still run out of descriptors for a moment (the accept loop takes up
to a backlog's worth at once, before the surplus is closed). CPython 3.11's accept loop does not
stop at EMFILE: it reports it once per remaining backlog slot, each report a logged traceback.
:class:`AcceptErrorThrottle` turns that into one warning per interval with a count.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.ops.logging import get_logger, log_event

__all__ = ["ACCEPT_EXHAUSTED", "RESERVED_FDS", "AcceptErrorThrottle", "FdFit", "fit_connections"]

ACCEPT_EXHAUSTED = "socket.accept() out of system resource"
"""The message asyncio's accept loop reports EMFILE/ENFILE/ENOBUFS/ENOMEM with."""
_logger = get_logger(__name__)

RESERVED_FDS = 128


@dataclass(frozen=True)
class FdFit:
    max_connections: int
    """The connection limit the descriptors allow (at most the configured one)."""
    soft_limit: int
    """The soft ``RLIMIT_NOFILE`` after raising it (-1: unlimited)."""
    raised_from: int | None
    """The soft limit before, when it was raised."""


def fit_connections(max_connections: int) -> FdFit:
    """Raise the soft open-file limit for ``max_connections`` and return the limit that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return FdFit(max_connections, -1, None)
    wanted = max_connections + RESERVED_FDS
    raised_from = None
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                raised_from, soft = soft, target
            except (ValueError, OSError):
                pass
    return FdFit(max(1, min(max_connections, soft - RESERVED_FDS)), soft, raised_from)


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


class AcceptErrorThrottle:
    """An event-loop exception handler: accept failures for lack of descriptors are logged once
    per ``every_s`` with how many were folded in; every other report goes to the previous handler
    (or the loop's default)."""

    def __init__(
        self,
        previous: ExceptionHandler | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.previous = previous
        self.every_s = every_s
        self.clock = clock
        self.suppressed = 0
        self._last = -math.inf

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != ACCEPT_EXHAUSTED:
            if self.previous is not None:
                self.previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = self.clock()
        if now - self._last < self.every_s:
            self.suppressed += 1
            return
        self._last = now
        log_event(
            _logger,
            "accept_out_of_descriptors",
            logging.WARNING,
            error=str(context.get("exception")),
            folded_in=self.suppressed,
            hint="raise the open-file limit or lower --max-connections",
        )
        self.suppressed = 0

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> AcceptErrorThrottle:
        throttle = cls(loop.get_exception_handler())
        loop.set_exception_handler(throttle)
        return throttle
