"""What both ends of a peer connection share: the send side of a websocket, and the errors.

Why a module of its own: the dialer (:mod:`client.peer.dialer`) and the acceptor
(:mod:`client.peer.server`) both drive a crdt_core protocol machine over a ``websockets``
connection; writing to it in order from several tasks (the handler and the fan-out) and mapping
close codes to errors the CLI can turn into exit codes is the same on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from client.errors import ClientError
from crdt_core.errors import LocalProtocolError
from crdt_core.messages import CloseCode
from crdt_core.protocol import ClientProtocol, RelayProtocol

__all__ = [
    "PeerError",
    "PeerProtocolError",
    "PeerRefusedUs",
    "PeerUnreachable",
    "PeerUntrusted",
    "Wire",
    "closed_error",
]

#: Close codes by which a peer refuses *our* credentials (log in again, online).
_REFUSED_US = frozenset({CloseCode.TOKEN_EXPIRED, CloseCode.AUTH_FAILED, CloseCode.SESSION_REVOKED})
#: Close codes after which trying again later may work: the peer went away, failed or timed out.
_TRANSIENT = frozenset(
    {
        CloseCode.NORMAL,
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL,
        CloseCode.INTERNAL,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.AUTH_TIMEOUT,
    }
)


class PeerError(ClientError):
    """A peer sync did not complete; ``code`` is the websocket close code when there was one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PeerUnreachable(PeerError):
    """No connection to the peer, or it dropped or went silent."""


class PeerRefusedUs(PeerError):
    """The peer refused this device's credentials (expired, from another relay, not logged in)."""


class PeerUntrusted(PeerError):
    """The peer failed our checks (its certificate, proof or token); we closed the connection."""


class PeerProtocolError(PeerError):
    """The connection closed for another reason (a protocol violation, an internal error)."""


class PeerIsARelay(PeerError):
    """The URL is a relay's, not a peer's: ``quickslot sync`` talks to relays."""


def closed_error(code: int | None, reason: str) -> PeerError:
    """The exception for a connection the other side closed with ``code``."""
    text = f"peer closed the connection: {code} {reason}".strip()
    if code is None or code in _TRANSIENT:
        return PeerUnreachable(text, code)
    if code in _REFUSED_US:
        return PeerRefusedUs(text, code)
    return PeerProtocolError(text, code)


class Wire:
    """One websocket and the protocol machine writing to it; sends in order, from any task."""

    def __init__(
        self, ws: ClientConnection | ServerConnection, proto: ClientProtocol | RelayProtocol
    ) -> None:
        self.ws = ws
        self.proto = proto
        self._lock = asyncio.Lock()
        self._closing = False

    async def flush(self) -> None:
        """Write what the machine queued (taken under the lock, so order is kept); close if it asked."""
        async with self._lock:
            with contextlib.suppress(websockets.ConnectionClosed):
                for data in self.proto.data_to_send():
                    await self.ws.send(data)
                if self.proto.close_expected() and not self._closing:
                    self._closing = True
                    await self.ws.close(self.proto.close_code or CloseCode.NORMAL, self.proto.close_reason)

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(LocalProtocolError):
            self.proto.close(code, reason)
        await self.flush()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code, reason), 5)
