"""Every use of uvicorn's and Starlette's private objects, in one place.

Two things reach past the ASGI interface, both for the relay's throughput and memory under
uvicorn's ``websockets-sansio`` implementation (the one ``relay.cli`` runs; the pinned range of
uvicorn in pyproject.toml is the one tested with them, tests/relay/http/test_ws_fast_path.py):

* :class:`RelayWebSocketProtocol`, a subclass of that protocol whose pong backlog is bounded;
* :class:`FastWriter`, which writes several queued messages with one ``transport.write`` on the
  connection's own protocol object instead of one ASGI ``websocket.send`` each (the "fast path",
  used by ``relay.http.sync_socket.AsgiTransport``). :meth:`FastWriter.of` checks every attribute
  it will touch and answers None on any other server or shape, and the caller falls back to
  plain ASGI sends.

Pongs. Why: uvicorn answers every ping by writing the pong straight into the socket's write buffer,
whether or not the peer reads. A client that stops reading and keeps sending pings therefore grew
the relay's memory by about one byte per byte it sent, without bound (60 MiB in 4 s from one
socket on loopback, authenticated or not; tests/relay/sync/test_slow_consumer.py). Everything else
the relay sends in bulk goes through the sync hub's bounded send queue, which cuts such a
consumer off.

While the write buffer is over its high-water mark (``pause_writing``: the peer is not keeping
up), pongs are held instead, only the ones owed for the latest chunk read (RFC 6455 5.5.3 lets an
endpoint answer only the most recent ping), and written once the buffer drains. Nothing else of
uvicorn's behaviour changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["FAST_PATH", "FALLBACK", "FastWriter", "RelayWebSocketProtocol"]

#: How a websocket's messages are written (label of ``quickslot_sync_socket_writer_total``).
FAST_PATH = "uvicorn_sansio"
FALLBACK = "asgi"


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol whose pong backlog cannot grow, and which lets go
    of the opening handshake once it is answered."""

    _held_pongs: bytes = b""

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # uvicorn reads the handshake's request and response only to answer it; kept, they
            # cost an idle connection about 4 KiB for as long as it lives (parsed headers).
            self.request = self.response = None  # type: ignore[assignment]

    def handle_ping(self) -> None:
        # The first call for a chunk of frames takes the pongs of every ping in it; the next
        # calls for the same chunk find nothing.
        pongs = b"".join(self.conn.data_to_send())
        if not pongs:
            return
        if self.writable.is_set():
            self.transport.write(pongs)
        else:
            self._held_pongs = pongs  # replaces older ones: only the latest pings are answered

    def resume_writing(self) -> None:
        super().resume_writing()
        pongs, self._held_pongs = self._held_pongs, b""
        if pongs and not self.transport.is_closing():
            self.transport.write(pongs)


class FastWriter:
    """Direct writes on uvicorn's sans-I/O protocol object behind one ASGI websocket.

    Under uvicorn's sans-I/O implementation, with no middleware wrapping ``receive`` for
    websockets (the relay serves its sync socket outermost: ``relay.http.sync_socket``), the ASGI
    ``receive`` callable is the protocol's bound ``receive`` method. From the protocol: its
    ``websockets`` connection (``conn.send_binary``, ``conn.data_to_send``) frames messages, its
    ``transport`` writes them, and ``writable``, ``disconnected``, ``close_sent`` and
    ``handshake_complete`` are the flow control and state checks uvicorn's own ``send`` makes.
    """

    _NEEDED = ("conn", "transport", "writable", "disconnected", "close_sent", "handshake_complete")

    def __init__(self, proto: Any) -> None:
        self._proto = proto

    @classmethod
    def of(cls, receive: Any) -> FastWriter | None:
        """The fast writer behind ASGI ``receive``, or None off uvicorn's sans-I/O."""
        proto = getattr(receive, "__self__", None)
        if proto is None or not isinstance(proto, WebSocketsSansIOProtocol):
            return None
        if not all(hasattr(proto, name) for name in cls._NEEDED):
            return None
        conn = proto.conn
        if not (
            callable(getattr(conn, "send_binary", None)) and callable(getattr(conn, "data_to_send", None))
        ):
            return None
        return cls(proto)

    @property
    def is_open(self) -> bool:
        """Handshake done and no close sent or received: uvicorn's ``send`` would write."""
        proto = self._proto
        return bool(proto.handshake_complete and not proto.disconnected and not proto.close_sent)

    @property
    def can_write_now(self) -> bool:
        """Open and not paused by flow control (the peer is keeping up)."""
        return bool(self._proto.writable.is_set()) and self.is_open

    async def wait_writable(self) -> None:
        """uvicorn's flow control: wait while the socket's write buffer is over its high mark."""
        await self._proto.writable.wait()

    def write(self, items: list[bytes]) -> None:
        """Frame ``items`` as binary messages and write them with one ``transport.write``."""
        conn = self._proto.conn
        for data in items:
            conn.send_binary(data)
        self._proto.transport.write(b"".join(conn.data_to_send()))

    def abort(self) -> None:
        """Drop the TCP connection now, without the closing handshake."""
        if not self._proto.disconnected:
            self._proto.transport.abort()
