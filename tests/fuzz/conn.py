"""A raw websocket connection to the relay for fuzzing: sends anything, decodes everything it gets.

Unlike ``tests.support.sync_helpers.SyncClient`` it runs no client state machine: the fuzzer sends
messages a correct client never would, and every message the relay sends back is decoded with the
reference codec, so a malformed answer from the relay is itself a finding (``malformed``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from crdt_core.errors import CodecError
from crdt_core.messages import (
    DEFAULT_MAX_DOWNLOAD,
    Ack,
    ErrorMessage,
    Message,
    RelayUpdate,
    Stamp,
    Stamped,
    Sync,
    Welcome,
    decode,
)
from crdt_core.pop import SYNC, proof_headers
from tests.fuzz.cases import FrameSpec
from tests.fuzz.wire import ws_frame

RELAY_MESSAGES = (Welcome, Sync, RelayUpdate, Ack, Stamp, Stamped, ErrorMessage)


class FuzzConn:
    """One websocket; received messages land in ``inbox``; ``closed`` resolves to (code, reason)."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.closed: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()
        #: Relay messages that did not decode, or were not relay-to-client messages.
        self.malformed: list[str] = []
        self._reader = asyncio.create_task(self._read(), name=f"fuzz-reader-{name}")

    @classmethod
    async def open(
        cls,
        url: str,
        token: str | None,
        name: str,
        timeout: float = 10.0,
        key: Ed25519PrivateKey | None = None,
    ) -> FuzzConn:
        """Connect, with ``token`` in the header and, for a token bound to a device key, a proof of
        possession made with ``key`` (``crdt_core.pop``)."""
        headers = proof_headers(token, key, SYNC) if token else None
        ws = await asyncio.wait_for(
            websockets.connect(
                url,
                additional_headers=headers,
                max_size=DEFAULT_MAX_DOWNLOAD,
                ping_interval=None,
                close_timeout=2,
                compression=None,
            ),
            timeout,
        )
        return cls(ws, name)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    self.malformed.append(f"text message from the relay: {data[:60]!r}")
                    continue
                try:
                    message = decode(data, max_size=DEFAULT_MAX_DOWNLOAD)
                except CodecError as exc:
                    self.malformed.append(f"undecodable relay message ({exc}): {data[:60]!r}")
                    continue
                if not isinstance(message, RELAY_MESSAGES):
                    self.malformed.append(f"client-to-relay message from the relay: {message!r:.80}")
                    continue
                self.inbox.put_nowait(message)
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # a library-level failure reading the relay's bytes
            self.malformed.append(f"reader failed: {type(exc).__name__}: {exc}")
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    async def send(self, data: bytes | str | tuple[bytes, ...] | tuple[str, ...]) -> bool:
        """Send one message (a tuple is sent as a fragmented message); False if already closed."""
        if self.closed.done():
            return False
        try:
            if isinstance(data, tuple):
                await self.ws.send(list(data))
            else:
                await self.ws.send(data)
        except (websockets.ConnectionClosed, ConnectionError):
            return False
        return True

    def write_raw(self, frames: tuple[FrameSpec, ...]) -> bool:
        """Write raw frames straight to the transport, past the library's framing checks."""
        if self.closed.done():
            return False
        transport: Any = self.ws.transport
        if transport.is_closing():
            return False
        for f in frames:
            transport.write(
                ws_frame(
                    f.opcode,
                    f.payload,
                    fin=f.fin,
                    rsv=f.rsv,
                    masked=f.masked,
                    declared_length=f.declared_length,
                )
            )
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)
        if not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
