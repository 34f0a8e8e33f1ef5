"""The relay's FastAPI application: one process, one port, REST and (later) the sync websocket.

``create_app(config)`` builds the app; its lifespan opens the components in order and closes
them in reverse:

1. auth: data directory and epoch, signing keys, the account store (SQLite, or PostgreSQL with
   ``store_url``, which also brings shared rate limiters), tokens, the account service and its
   ``account_events`` reader (operator CLI and other nodes' changes reach the server this way);
2. extensions (:class:`RelayExtension`), in the order given: the document store and the
   websocket endpoint ``/api/v1/sync`` plug in here. An extension adds its routes in
   ``install`` (called by ``create_app``, before the app starts) and opens/closes its resources
   in ``start``/``stop``; it finds everything else on the :class:`relay.context.RelayContext`
   (``app.state.relay``): ``ctx.tokens.verify_access``, ``ctx.hooks`` (revocation and disable
   callbacks), ``ctx.keys`` (signing), ``ctx.metrics``, ``ctx.epoch``, ``ctx.config``.

Shutdown: on SIGTERM the CLI calls :meth:`RelayContext.begin_shutdown` (sets ``ctx.stopping``,
``/healthz`` turns 503) before uvicorn stops accepting; extensions are stopped first, so they can
flush and tell clients to come back while the account store is still open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from relay.auth.accounts import AuthHooks, open_auth
from relay.context import Limiters, RelayContext, RelayExtension
from relay.http.api import (
    MAX_AUTH_BODY_BYTES,
    SERVER_VERSION,
    BodyLimitMiddleware,
    HttpMetricsMiddleware,
    auth_router,
    install_error_handlers,
    ops_router,
)
from relay.http.rest_routes import RestSyncExtension
from relay.http.staff_lookup import router as staff_lookup_router
from relay.http.sync_socket import SyncExtension
from relay.http.web_app import WebAppExtension
from relay.ops.config import RelayConfig
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import MetricsRegistry

__all__ = ["RelayContext", "RelayExtension", "create_app"]

log = get_logger(__name__)


def _builtin_extensions(config: RelayConfig) -> list[RelayExtension]:
    """Extensions every relay runs: the document store and the sync websocket ``/api/v1/sync``,
    and the REST sync API on the same hub; the web app at ``/app/`` unless turned off."""
    exts: list[RelayExtension] = [SyncExtension(config), RestSyncExtension(config)]
    if config.serve_app:
        exts.append(WebAppExtension(config.app_dir))
    return exts


def create_app(
    config: RelayConfig,
    *,
    extensions: Sequence[RelayExtension] | None = None,
    metrics: MetricsRegistry | None = None,
) -> FastAPI:
    """Build the relay app. ``extensions=None`` means the built-in ones."""
    metrics = metrics or MetricsRegistry()
    exts = list(_builtin_extensions(config) if extensions is None else extensions)
    ctx = RelayContext(
        config=config,
        metrics=metrics,
        hooks=AuthHooks(),
        limiters=Limiters.from_config(config),
        extensions=exts,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx._loop = asyncio.get_running_loop()
        ctx.stopping = asyncio.Event()
        ctx.auth = await open_auth(config, metrics=metrics, hooks=ctx.hooks)
        ctx.epoch = ctx.auth.epoch
        if ctx.auth.limiter_factory is not None:  # shared store: every node draws from one budget
            ctx.limiters = Limiters.from_config(config, ctx.auth.limiter_factory)
        poller_stop = asyncio.Event()
        poller = asyncio.create_task(ctx.accounts.run_event_poller(poller_stop), name="account-events")
        started: list[RelayExtension] = []
        try:
            for ext in exts:
                await ext.start(ctx)
                started.append(ext)
            ctx.ready = True
            log_event(
                log,
                "relay started",
                version=SERVER_VERSION,
                epoch=ctx.epoch,
                data_dir=str(config.data_dir),
                active_kid=ctx.keys.active_kid,
                extensions=[e.name for e in exts],
            )
            yield
        finally:
            ctx.ready = False
            ctx.stopping.set()
            for ext in reversed(started):
                try:
                    await ext.stop(ctx)
                except Exception:
                    log_event(log, "extension_stop_failed", logging.ERROR, exc_info=True, extension=ext.name)
            poller_stop.set()
            await poller
            await ctx.auth.aclose()
            log_event(log, "relay stopped")

    app = FastAPI(
        title="QuickSlot Sync relay",
        version=SERVER_VERSION,
        description="Accounts, tokens and operations endpoints of the QuickSlot Sync relay.",
        lifespan=lifespan,
    )
    app.state.relay = ctx
    install_error_handlers(app)
    app.include_router(auth_router)
    app.include_router(ops_router)
    app.include_router(staff_lookup_router)
    _uptime = metrics.gauge("relay_uptime_seconds", "Seconds since the relay app was created")
    _uptime.set_function(lambda: time.time() - ctx.started_at)
    metrics.gauge("relay_build_info", "Relay version", ["version"]).labels(version=SERVER_VERSION).set(1)
    # Middleware wraps every route, whenever added; the websocket scope passes straight through.
    # An extension's own middleware comes after, so outside these (the sync socket's).
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_AUTH_BODY_BYTES)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    for ext in exts:
        ext.install(app, ctx)
    return app
