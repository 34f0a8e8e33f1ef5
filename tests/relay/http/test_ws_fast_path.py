"""The sync websocket's fast path (``relay.http.ws_protocol.FastWriter``) and its fallback.

A relay started from the CLI serves every sync socket through uvicorn's sans-I/O protocol and so
writes queued messages with one socket write; under any other ASGI server (here Starlette's test
client) the same transport falls back to one ASGI send per message and still delivers all of
them in order. ``quickslot_sync_socket_writer_total`` tells which path each socket took.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect

from relay.http.sync_socket import AsgiTransport, SyncSocketRoute
from relay.http.ws_protocol import FALLBACK, FAST_PATH, FastWriter
from tests.support.eventually import eventually_blocking
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess


def writer_counts(metrics_text: str) -> dict[str, float]:
    found = re.findall(r'^quickslot_sync_socket_writer_total\{writer="([^"]+)"\} (\S+)$', metrics_text, re.M)
    return {writer: float(value) for writer, value in found}


def test_a_relay_started_from_the_cli_uses_the_fast_path(tmp_path: Path) -> None:
    with (
        RelayProcess(tmp_path / "data", *GENEROUS_LIMITS) as relay,
        httpx.Client(base_url=relay.base_url) as http,
    ):
        ws_url = relay.base_url.replace("http", "ws", 1) + "/api/v1/sync"
        for _ in range(2):
            with connect(ws_url, open_timeout=10, close_timeout=2):
                pass
        counts = eventually_blocking(
            lambda: (c := writer_counts(http.get("/metrics").text)).get(FAST_PATH, 0) >= 2 and c,
            what="two sockets counted",
        )
    assert counts.get(FALLBACK, 0) == 0, counts


def test_off_uvicorn_the_transport_falls_back_to_asgi_sends() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "websocket" and (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        transport = AsgiTransport(receive, send)
        seen["writer"] = transport.writer
        seen["write_now"] = transport.write_now([b"never"])
        await transport.send_many([b"one", b"two", b"three"])
        await transport.send(b"four")
        transport.abort()  # nothing to abort off the fast path: the socket stays usable
        await transport.send(b"five")
        await transport.close(1000, "done")

    with TestClient(app).websocket_connect("/ws") as ws:  # no lifespan: a bare ASGI app
        got = [ws.receive_bytes() for _ in range(5)]
    assert got == [b"one", b"two", b"three", b"four", b"five"]
    assert seen == {"writer": FALLBACK, "write_now": False}


def test_fast_writer_refuses_anything_but_uvicorns_sansio_protocol() -> None:
    class NotAProtocol:
        conn = transport = writable = disconnected = close_sent = handshake_complete = None

        async def receive(self) -> None:
            await asyncio.sleep(0)

    assert FastWriter.of(object()) is None
    assert FastWriter.of(None) is None
    assert FastWriter.of(NotAProtocol().receive) is None


def test_the_sync_socket_is_served_outside_fastapis_routing(tmp_path: Path) -> None:
    """Under Starlette's test client too: the app's sync path is answered by the hub (an
    unauthenticated hello gets the protocol's answer), other websocket paths by the app (none)."""
    from relay.http.app import create_app
    from relay.ops.config import RelayConfig

    app = create_app(RelayConfig(data_dir=tmp_path / "data"))
    outermost = app.user_middleware[0]
    assert getattr(outermost, "cls", None) is SyncSocketRoute, app.user_middleware
    with TestClient(app) as client:
        with client.websocket_connect("/api/v1/sync") as ws:
            ws.send_bytes(b"\xc0")  # msgpack nil: not a message
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_bytes()
                ws.receive_bytes()
        assert closed.value.code >= 4000 or closed.value.code == 1002, closed.value.code
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/api/v1/other") as ws:
            ws.receive_bytes()


async def test_the_opening_handshake_is_let_go_once_answered() -> None:
    """An idle connection keeps neither uvicorn's handshake request and response nor the
    scope's request headers (about 6 KiB a connection), and the hub still gets what it needs."""
    import uvicorn
    from websockets.asyncio.client import connect as aconnect

    from relay.http.sync_socket import SyncExtension
    from relay.http.ws_protocol import RelayWebSocketProtocol
    from relay.ops.config import RelayConfig

    seen: dict[str, Any] = {}
    ext = SyncExtension(RelayConfig(data_dir=Path("unused")))

    class Hub:
        async def serve(self, transport: AsgiTransport, token: str | None, proof: Any, client: Any) -> None:
            proto = transport._fast._proto if transport._fast is not None else None
            seen.update(token=token, proof=proof, client=client, proto=proto)
            await transport.send(b"hello")
            await transport.recv()

    ext.hub = Hub()  # type: ignore[assignment]
    scopes: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scopes.append(scope)
            await ext.serve_socket(scope, receive, send)

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, ws=RelayWebSocketProtocol, lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    headers = {"Authorization": "Bearer tok", "QuickSlot-Proof": "p", "QuickSlot-Proof-Time": "1"}
    async with aconnect(f"ws://127.0.0.1:{port}/api/v1/sync", additional_headers=headers) as ws:
        assert await ws.recv() == b"hello"
        proto = seen["proto"]
        assert isinstance(proto, RelayWebSocketProtocol)
        assert proto.request is None and proto.response is None
        assert scopes[0]["headers"] == []
    assert seen["token"] == "tok" and seen["proof"] == ("p", "1") and seen["client"] == "127.0.0.1"
    server.should_exit = True
    await task


def test_the_server_runs_the_sync_socket_ahead_of_the_whole_app(tmp_path: Path) -> None:
    from fastapi import FastAPI

    from relay.http.app import create_app
    from relay.http.sync_socket import sync_socket_first
    from relay.ops.config import RelayConfig

    app = create_app(RelayConfig(data_dir=tmp_path / "data"))
    outer = sync_socket_first(app)
    assert isinstance(outer, SyncSocketRoute) and outer.app is app
    plain = FastAPI()
    assert sync_socket_first(plain) is plain
