"""The sync websocket ``/api/v1/sync`` and the document store, plugged into the relay app.

Why an extension: the app factory (``relay.http.app``, which imports this module) owns accounts and
tokens and opens extensions after them and closes them before them, so on SIGTERM the hub can
still tell every client to come back (close 1001) and the store can finish its commits while
accounts are open.

Socket writes: an ASGI ``websocket.send`` event is one frame and one ``write`` syscall, and on
loopback most of a delivery's CPU is that syscall and the layers above it (Starlette's state
checks, uvicorn's send). So :class:`AsgiTransport` has a ``send_many`` that, when the server is
uvicorn's ``websockets-sansio`` implementation (the one ``relay.cli`` runs), frames every queued
message with that connection's own ``websockets`` protocol object and writes them with one
``transport.write``, honouring the same flow control (``writable``) and state checks as uvicorn's
``send``. On any other ASGI server, or if uvicorn's internals ever change shape, it falls back to
one ``websocket.send`` per message. Every access to uvicorn's and Starlette's private objects is
in ``relay.http.ws_protocol`` (:class:`relay.http.ws_protocol.FastWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from crdt_core.pop import PROOF_HEADER, PROOF_TIME_HEADER
from crdt_core.reader import highest_stamp
from relay.auth.rights import RightsCache
from relay.context import RelayContext
from relay.documents.manager import DocumentManager
from relay.fanout import open_fanout
from relay.http.ws_protocol import FALLBACK, FAST_PATH, FastWriter
from relay.ops.config import RelayConfig, SyncLimits
from relay.ops.logging import get_logger, log_event
from relay.ops.metrics import Counter
from relay.store.open import AnyDocumentStore, open_document_store, store_description
from relay.sync.hub import SyncHub
from relay.sync.stamp_hold import open_stamp_hold

log = get_logger(__name__)


class AsgiTransport:
    """Adapts an ASGI websocket (its ``receive`` and ``send``, after the accept) to the hub's
    :class:`relay.sync.hub.Transport`."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._fast = FastWriter.of(receive)

    @property
    def writer(self) -> str:
        """``FAST_PATH`` or ``FALLBACK``: how this socket's messages are written."""
        return FAST_PATH if self._fast is not None else FALLBACK

    async def recv(self) -> bytes | str | None:
        try:
            message = await self._receive()
        except Exception:  # the server's receive after the peer went: gone either way
            return None
        if message["type"] != "websocket.receive":
            return None
        data: bytes | None = message.get("bytes")
        if data is not None:
            return data
        text: str | None = message.get("text")
        return text if text is not None else b""

    async def send(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    def write_now(self, items: list[bytes]) -> bool:
        """Frame and write ``items`` at once, with one socket write, if the socket is open and not
        paused by flow control; False (nothing written) otherwise, or off the fast path."""
        fast = self._fast
        if fast is None or not fast.can_write_now:
            return False
        fast.write(items)
        return True

    async def send_many(self, items: list[bytes]) -> None:
        """Send ``items`` in order, as one socket write when the server allows (module docstring)."""
        fast = self._fast
        if fast is not None:
            await fast.wait_writable()
            if fast.is_open:
                fast.write(items)
                return
        for data in items:  # off the fast path, or closing: the ordinary path raises or refuses
            await self.send(data)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def abort(self) -> None:
        """Drop the TCP connection now, without the closing handshake (off the fast path:
        nothing). For a peer that takes no bytes: neither asyncio's ``close`` nor uvicorn's close
        timeout ever ends a connection whose write buffer cannot drain."""
        if self._fast is not None:
            self._fast.abort()


def header(scope: Scope, name: str) -> str | None:
    """The first value of request header ``name`` (any case) in an ASGI scope, as Starlette reads it."""
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", ()):
        if key == wanted:
            text: str = value.decode("latin-1")
            return text
    return None


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; None without the header, "" if malformed."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else ""


def client_host(scope: Scope) -> str | None:
    """The client's address as the REST rate limits see it (``relay.http.api._client_address``):
    the ASGI scope's ``client``, which uvicorn rewrites from ``X-Forwarded-For`` when the peer is
    a proxy trusted with ``--forwarded-allow-ips``."""
    client = scope.get("client")
    return str(client[0]) if client else None


#: Where clients open the sync websocket.
SYNC_PATH = "/api/v1/sync"


def sync_socket_first(app: FastAPI) -> ASGIApp:
    """What the ASGI server should run: ``app`` behind its own :class:`SyncSocketRoute`, so a
    sync socket skips even FastAPI's and Starlette's outermost layers (about 1.4 KiB of frames
    per idle connection); ``app`` itself when it serves no sync socket. The route stays in the
    app too, for whoever runs the app directly (tests)."""
    for middleware in app.user_middleware:
        extension = middleware.kwargs.get("extension")
        if getattr(middleware, "cls", None) is SyncSocketRoute and isinstance(extension, SyncExtension):
            return SyncSocketRoute(app, extension=extension)
    return app


class SyncSocketRoute:
    """ASGI middleware that serves the sync websocket itself, outside FastAPI's routing.

    Why: a sync connection lives for hours, mostly idle, and every layer it passes through keeps
    a coroutine frame and its per-connection objects alive as long as it does. Behind FastAPI
    that was Starlette's error and exception middleware, its router, FastAPI's websocket route
    with two dependency exit stacks, the app's HTTP-only middleware and a Starlette
    ``WebSocket``: about 9 KiB of the 43 KiB each idle connection cost (tracemalloc over 1,000
    idle connections; docs/benchmarks.md, "Relay"). Installed outermost, it hands the sync path's
    ``receive`` and ``send`` straight to the hub; every other scope goes on to the app.
    """

    def __init__(self, app: ASGIApp, *, extension: SyncExtension) -> None:
        self.app = app
        self.extension = extension

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == SYNC_PATH:
            await self.extension.serve_socket(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: The cyclic GC's first threshold while the relay serves (CPython's default is 700; see
#: :meth:`SyncExtension.start`).
GC_GEN0_THRESHOLD = 50_000


class SyncExtension:
    name = "sync"

    def __init__(self, config: RelayConfig, limits: SyncLimits | None = None) -> None:
        self.config = config
        self.limits = limits or config.sync
        self.store: AnyDocumentStore | None = None
        self.manager: DocumentManager | None = None
        self.hub: SyncHub | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._gc_threshold: tuple[int, int, int] | None = None
        self._hold_task: asyncio.Task[None] | None = None
        self._writers: Counter | None = None

    def install(self, app: FastAPI, ctx: RelayContext) -> None:
        writers = ctx.metrics.counter(
            "quickslot_sync_socket_writer_total",
            "Sync websockets served, by how their messages are written (relay.http.ws_protocol)",
            ["writer"],
        )
        self._writers = writers
        # Outermost of the app's middleware (added after the others: relay.http.app).
        app.add_middleware(SyncSocketRoute, extension=self)

    async def serve_socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One sync websocket, from the ASGI ``websocket.connect`` to its end."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        hub = self.hub
        if hub is None:
            await send(
                {"type": "websocket.close", "code": 1013, "reason": "relay starting: try again shortly"}
            )
            return
        proof = (header(scope, PROOF_HEADER), header(scope, PROOF_TIME_HEADER))
        token = bearer_token(header(scope, "authorization"))
        # Nothing reads the request headers again, and the server's scope would keep them (about
        # 2 KiB) for as long as the connection lives.
        scope["headers"] = []
        transport = AsgiTransport(receive, send)
        if self._writers is not None:
            self._writers.labels(writer=transport.writer).inc()
        await hub.serve(transport, token, proof, client_host(scope))

    async def start(self, ctx: RelayContext) -> None:
        commit_latency = ctx.metrics.histogram(
            "quickslot_commit_latency_seconds", "Group commit duration (one transaction)"
        )
        commit_batch = ctx.metrics.histogram(
            "quickslot_commit_batch_size",
            "Appends per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )

        def on_commit(batch: int, seconds: float) -> None:
            commit_latency.observe(seconds)
            commit_batch.observe(batch)

        self.store = await open_document_store(self.config, on_commit=on_commit)
        store = self.store
        compactions = ctx.metrics.gauge("quickslot_compactions", "Compactions since start")
        compactions.set_function(lambda: float(store.compactions_done))
        store.on_compaction = ctx.metrics.histogram(
            "quickslot_compaction_seconds", "Automatic compaction of one document (fold and write)"
        ).observe
        self.manager = DocumentManager(
            self.store,
            highest_stamp=highest_stamp,
            idle_seconds=self.limits.idle_unload_s,
            max_documents=self.limits.max_loaded_docs,
        )
        self.manager.on_load = ctx.metrics.histogram(
            "quickslot_document_load_seconds", "Loading one document from the store into memory"
        ).observe
        await self.manager.start()
        rights = RightsCache()
        await rights.load(ctx.account_store)
        keys = ctx.keys
        hub = SyncHub(
            manager=self.manager,
            tokens=ctx.tokens,
            rights=rights,
            signing_key=keys.signing_key,
            trusted_keys=keys.public_keys,
            epoch=self.store.epoch,
            metrics=ctx.metrics,
            limits=self.limits,
            max_inflight=self.limits.max_inflight,
            fanout=open_fanout(self.config.redis_url),  # None on a single node (relay.fanout)
        )
        await hub.start_fanout()
        hold = await open_stamp_hold(self.store, self.config.restore_stamp_hold_s)
        hub.stamp_hold = hold
        hold.register_metrics(ctx.metrics)
        ctx.stamp_hold = hold
        self._hold_task = asyncio.create_task(hold.run(hub.stamp_held), name="restore-stamp-hold")
        manager = self.manager
        loaded = ctx.metrics.gauge("quickslot_loaded_documents", "Documents loaded in memory")
        loaded.set_function(lambda: float(manager.loaded_count))

        async def on_changed(user_id: str) -> None:
            await rights.refresh(ctx.account_store, user_id)

        async def on_family_revoked(family_id: str, _user_id: str) -> None:
            await rights.family_revoked(ctx.account_store, family_id)

        ctx.hooks.on_family_revoked.append(on_family_revoked)
        ctx.hooks.on_family_revoked.append(hub.family_revoked)
        ctx.hooks.on_user_disabled.append(hub.user_disabled)
        ctx.hooks.on_user_changed.append(on_changed)
        ctx.sync_hub = hub
        ctx.docstore = self.store
        self.hub = hub

        async def say_goodbye_on_stop() -> None:
            # uvicorn waits for open websockets to end before it runs the lifespan shutdown, so
            # the hub must react to the signal itself: close every client with 1001 at once.
            await ctx.stopping.wait()
            await hub.shutdown()

        # The CLI's signal handler runs the goodbyes before uvicorn's own shutdown (which would
        # close clients with 1012); the watcher covers a relay stopped any other way.
        ctx.goodbyes.append(hub.shutdown)
        self._watcher = asyncio.create_task(say_goodbye_on_stop(), name="sync-stop-watcher")
        self._tune_gc()
        log_event(log, "sync started", epoch=self.store.epoch, store=store_description(self.config))

    def _tune_gc(self) -> None:
        """Make CPython's cyclic GC run less often while serving.

        Why: a relay holds hundreds of thousands of long-lived objects (connections, loaded
        documents, the app) and allocates a few thousand short-lived ones per update, nearly all
        freed by reference counting. With the default thresholds (700, 10, 10) a full collection,
        which walks every tracked object, ran every few dozen updates: 11% of the event loop's
        time in a py-spy profile of 500 documents x 20 updates. Objects alive now (the app,
        modules, the accounts) move to the permanent generation (``gc.freeze``), and the young
        generation collects after 50,000 allocations instead of 700; cycles are still collected.
        """
        self._gc_threshold = gc.get_threshold()
        gc.collect()
        gc.freeze()
        _, gen1, gen2 = self._gc_threshold
        gc.set_threshold(max(GC_GEN0_THRESHOLD, self._gc_threshold[0]), gen1, gen2)

    async def stop(self, ctx: RelayContext) -> None:
        if self._gc_threshold is not None:
            gc.set_threshold(*self._gc_threshold)
            gc.unfreeze()
            self._gc_threshold = None
        if self._watcher is not None:
            self._watcher.cancel()
        if self._hold_task is not None:
            self._hold_task.cancel()  # a sweep cut short runs again at the next start
            await asyncio.gather(self._hold_task, return_exceptions=True)
        if self.hub is not None:
            await self.hub.shutdown()
            await self.hub.stop_fanout()
        if self.manager is not None:
            await self.manager.close()
        if self.store is not None:
            await self.store.close()
        log_event(log, "sync stopped")
