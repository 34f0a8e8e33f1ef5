"""The state one relay app shares between its parts, at ``app.state.relay``.

Why a module of its own: the app factory (``relay.http.app``), the REST endpoints (``relay.http.api``)
and the sync extension (``relay.http.sync_socket``) all use the context, and the factory imports the
other two. With the context here, every one of them imports this module and none imports the
factory, so the relay's modules form no import cycle (``tests/test_import_cycles.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from relay.auth.accounts import AccountService, AccountStore, AuthComponents, AuthHooks
from relay.auth.keys import KeyStore
from relay.auth.ratelimit import RateLimiter, TokenBucketLimiter
from relay.auth.tokens import TokenService
from relay.ops.config import RateLimit, RelayConfig
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import MetricsRegistry

if TYPE_CHECKING:
    from fastapi import FastAPI

    from relay.store.open import AnyDocumentStore
    from relay.sync.hub import SyncHub
    from relay.sync.stamp_hold import StampHold

log = get_logger(__name__)

#: A readiness check an extension adds to ``/healthz`` (False: answer 503).
HealthCheck = Callable[[], Awaitable[bool]]


@dataclass
class Limiters:
    """One limiter per purpose, built from ``config.rate_limits``."""

    login_account: RateLimiter
    login_address: RateLimiter
    register_address: RateLimiter
    reset_account: RateLimiter
    reset_address: RateLimiter

    @classmethod
    def from_config(
        cls, config: RelayConfig, factory: Callable[[str, RateLimit], RateLimiter] | None = None
    ) -> Limiters:
        """In-memory buckets, or ``factory(purpose, limit)`` ones (shared across nodes)."""
        rl = config.rate_limits

        def make(purpose: str, limit: RateLimit) -> RateLimiter:
            if factory is not None:
                return factory(purpose, limit)
            return TokenBucketLimiter(limit, max_keys=rl.max_keys)

        return cls(
            login_account=make("login_account", rl.login_account),
            login_address=make("login_address", rl.login_address),
            register_address=make("register_address", rl.register_address),
            reset_account=make("reset_account", rl.reset_account),
            reset_address=make("reset_address", rl.reset_address),
        )


class RelayExtension(Protocol):
    """A component plugged into the relay app (the sync websocket, the document store)."""

    name: str

    def install(self, app: FastAPI, ctx: RelayContext) -> None:
        """Add routes/middleware. Called once by ``create_app``, before startup."""
        ...

    async def start(self, ctx: RelayContext) -> None:
        """Open resources; auth components are already open."""
        ...

    async def stop(self, ctx: RelayContext) -> None:
        """Flush and close; called in reverse order, before auth closes."""
        ...


@dataclass
class RelayContext:
    """Shared state of one relay app, at ``app.state.relay``."""

    config: RelayConfig
    metrics: MetricsRegistry
    hooks: AuthHooks
    limiters: Limiters
    extensions: list[RelayExtension]
    auth: AuthComponents | None = None
    epoch: str = ""
    ready: bool = False
    started_at: float = field(default_factory=time.time)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Run when a stop signal arrives, before the web server closes its connections (see
    #: :meth:`begin_shutdown`); the sync extension tells its clients to come back here.
    goodbyes: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    health_checks: list[HealthCheck] = field(default_factory=list)
    #: Published by the sync extension (``relay.http.sync_socket``) when it starts, for the REST
    #: endpoints and tests; None before that, or in an app built without it.
    sync_hub: SyncHub | None = None
    docstore: AnyDocumentStore | None = None
    stamp_hold: StampHold | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _goodbye_task: asyncio.Task[None] | None = None

    def _require_auth(self) -> AuthComponents:
        if self.auth is None:
            raise RuntimeError("relay components are not started")
        return self.auth

    @property
    def accounts(self) -> AccountService:
        return self._require_auth().service

    @property
    def tokens(self) -> TokenService:
        return self._require_auth().tokens

    @property
    def keys(self) -> KeyStore:
        return self._require_auth().keys

    @property
    def account_store(self) -> AccountStore:
        return self._require_auth().store

    def begin_shutdown(self, then: Callable[[], None] | None = None, *, within_s: float = 5.0) -> None:
        """Mark the relay as stopping, say goodbye to clients, then call ``then``.

        Safe to call from a signal handler or another thread. Why ``then``: uvicorn's own shutdown
        closes every websocket with 1012; a client must see the relay's 1001 ("restarting, come
        back shortly") first, so the CLI passes uvicorn's exit as ``then`` and it runs only once
        every goodbye has finished (or ``within_s`` has passed, so a stuck goodbye cannot keep the
        process alive).
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            if then is not None:
                then()
            return
        loop.call_soon_threadsafe(self._start_goodbyes, then, within_s)

    def _start_goodbyes(self, then: Callable[[], None] | None, within_s: float) -> None:
        self.stopping.set()
        task = asyncio.get_running_loop().create_task(self._say_goodbyes(then, within_s))
        self._goodbye_task = task

    async def _say_goodbyes(self, then: Callable[[], None] | None, within_s: float) -> None:
        try:
            if self.goodbyes:
                waiters = [asyncio.ensure_future(goodbye()) for goodbye in self.goodbyes]
                done, pending = await asyncio.wait(waiters, timeout=within_s)
                for task in pending:
                    task.cancel()
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        log_event(log, "goodbye_failed", logging.ERROR, exc_info=task.exception())
        finally:
            if then is not None:
                then()
