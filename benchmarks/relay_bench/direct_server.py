"""The relay's ``SyncHub`` served straight from the ``websockets`` library, without ASGI.

Why this exists: docs/design.md ("Relay") asks to measure whether the ASGI layer (uvicorn + Starlette's
websocket wrapper) lets the relay spend 10 µs of CPU or less per delivered update, and if it does
not, to serve the sync websocket straight from ``websockets``. This is that alternative, built
from the very same pieces as ``relay.http.sync_socket.SyncExtension`` (the SQLite document store,
the DocumentManager, the rights cache, the token service and keys of a relay data directory),
so the benchmark can run both in one run and attribute the difference to the transport alone.
It lives in the benchmark package on purpose: it is an experiment, not a second relay.

It reads accounts and keys from ``--data`` (the directory of a running ASGI relay, so tokens and
device certificates that relay issued are valid here too) and keeps its documents in
``--docs`` (its own SQLite file: two stores must not share a document table).

    python -m benchmarks.relay_bench.direct_server --data DIR --docs DIR2 --port P
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from crdt_core.pop import PROOF_HEADER, PROOF_TIME_HEADER
from crdt_core.reader import highest_stamp
from relay.auth.accounts import open_auth
from relay.auth.rights import RightsCache
from relay.documents.manager import DocumentManager
from relay.http.sync_socket import bearer_token
from relay.ops.config import RelayConfig, SyncLimits
from relay.ops.metrics import MetricsRegistry
from relay.store.sqlite import SQLiteDocumentStore
from relay.sync.hub import SyncHub


class WebsocketsTransport:
    """The hub's ``Transport`` over a ``websockets`` server connection."""

    __slots__ = ("ws",)

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def recv(self) -> bytes | str | None:
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            return None

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class BatchingTransport(WebsocketsTransport):
    """Like :class:`WebsocketsTransport`, but the frames queued for one connection within one
    event-loop iteration reach the socket in one ``write`` (one syscall) instead of one each.

    Why: on loopback most of a delivery's CPU is the write syscall (the kernel delivers to the
    receiving socket inside it), and the hub hands a connection several messages at once (an
    update and its stamp; every update of a group commit). ASGI offers no way to do this (one
    ``websocket.send`` event is one write); on ``websockets`` it takes its sans-I/O protocol:
    frames are serialised into the protocol's buffer and flushed once per loop iteration, with
    the connection's own flow control (``drain``) kept. Uses ``Connection.protocol``,
    ``transport`` and ``drain``: public attributes, but below the documented ``send`` API.
    """

    __slots__ = ("_scheduled",)

    def __init__(self, ws: ServerConnection) -> None:
        super().__init__(ws)
        self._scheduled = False

    async def send(self, data: bytes) -> None:
        ws = self.ws
        if ws.protocol.state is not State.OPEN:
            await ws.send(data)  # raises ConnectionClosed the usual way
            return
        ws.protocol.send_binary(data)
        if not self._scheduled:
            self._scheduled = True
            ws.loop.call_soon(self._flush)
        await ws.drain()

    def _flush(self) -> None:
        self._scheduled = False
        ws = self.ws
        chunks = ws.protocol.data_to_send()
        if not chunks:
            return
        if all(chunks) and not ws.transport.is_closing():
            ws.transport.write(b"".join(chunks))
            return
        for chunk in chunks:  # an end-of-stream marker: let websockets handle it
            if chunk:
                ws.transport.write(chunk)
            elif ws.transport.can_write_eof():
                ws.transport.write_eof()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = SyncLimits()
    p.add_argument("--data", type=Path, required=True, help="relay data directory (accounts, keys)")
    p.add_argument("--docs", type=Path, required=True, help="directory of this server's document store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-message", type=int, default=d.max_message)
    p.add_argument("--max-docs", type=int, default=d.max_docs)
    p.add_argument("--sync-rate", type=float, default=d.rate_per_s)
    p.add_argument("--sync-burst", type=int, default=d.burst)
    p.add_argument("--max-connections", type=int, default=d.max_connections)
    p.add_argument("--send-queue-bytes", type=int, default=d.send_queue_bytes)
    p.add_argument("--idle-unload", type=float, default=d.idle_unload_s)
    p.add_argument("--no-deflate", action="store_true", help="refuse permessage-deflate")
    p.add_argument(
        "--batch-writes", action="store_true", help="one socket write per connection per loop turn"
    )
    return p


async def main_async(args: argparse.Namespace) -> None:
    limits = SyncLimits(
        max_message=args.max_message,
        max_docs=args.max_docs,
        rate_per_s=args.sync_rate,
        burst=args.sync_burst,
        max_connections=args.max_connections,
        send_queue_bytes=args.send_queue_bytes,
        idle_unload_s=args.idle_unload,
    )
    config = RelayConfig(data_dir=args.data, sync=limits)
    metrics = MetricsRegistry()
    auth = await open_auth(config, metrics=metrics, origin="bench-direct-server", warm_up=False)
    store = await SQLiteDocumentStore.open(args.docs)
    manager = DocumentManager(
        store,
        highest_stamp=highest_stamp,
        idle_seconds=limits.idle_unload_s,
        max_documents=limits.max_loaded_docs,
    )
    await manager.start()
    rights = RightsCache()
    await rights.load(auth.store)
    hub = SyncHub(
        manager=manager,
        tokens=auth.tokens,
        rights=rights,
        signing_key=auth.keys.signing_key,
        trusted_keys=auth.keys.public_keys,
        epoch=store.epoch,
        metrics=metrics,
        limits=limits,
    )

    async def handler(ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path != "/api/v1/sync":
            await ws.close(1008, "unknown path")
            return
        transport = BatchingTransport(ws) if args.batch_writes else WebsocketsTransport(ws)
        headers = ws.request.headers
        proof = (headers.get(PROOF_HEADER), headers.get(PROOF_TIME_HEADER))
        await hub.serve(transport, bearer_token(headers.get("authorization")), proof)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serve(
            handler,
            args.host,
            args.port,
            max_size=limits.max_message,
            compression=None if args.no_deflate else "deflate",
        ):
            print(f"direct sync server on ws://{args.host}:{args.port}/api/v1/sync", flush=True)
            await stop.wait()
            await hub.shutdown(grace_s=2.0)
    finally:
        await manager.close()
        await store.close()
        await auth.aclose()


def main() -> None:
    asyncio.run(main_async(_parser().parse_args()))


if __name__ == "__main__":
    main()
