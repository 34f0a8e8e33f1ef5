"""The relay's websocket server protocol: uvicorn's sans-I/O one, with pongs bounded.

Why: uvicorn answers every ping by writing the pong straight into the socket's write buffer,
whether or not the peer reads. A client that stops reading and keeps sending pings therefore grew
the relay's memory by about one byte per byte it sent, without bound (60 MiB in 4 s from one
socket on loopback, authenticated or not; tests/relay/test_slow_consumer.py). Everything else
the relay sends in bulk goes through the sync hub's bounded send queue, which cuts such a
consumer off.

While the write buffer is over its high-water mark (``pause_writing``: the peer is not keeping
up), pongs are held instead, only the ones owed for the latest chunk read (RFC 6455 5.5.3 lets an
endpoint answer only the most recent ping), and written once the buffer drains. Nothing else of
uvicorn's behaviour changes.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol whose pong backlog cannot grow."""

    _held_pongs: bytes = b""

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
