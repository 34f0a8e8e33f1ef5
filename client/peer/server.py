"""``quickslot peer serve``: accept peers on the local network and play the relay's part, minus stamps.

Why it is shaped this way:

* **crdt_core's ``RelayProtocol`` in peer mode** decides what each message means; this shell only
  verifies credentials (:mod:`client.peer.auth`), answers subscriptions from the local profile,
  and validates and stores updates through ``LocalClient`` (:mod:`client.peer.data`), so a peer
  enforces exactly the relay's writer rules. It never stamps: bookings it stores stay tentative.
* **One lock for the profile's documents.** A ``sync`` answer is computed and the connection made
  live on the doc under the same lock that stores an update and fans it out, so no update can
  fall between a peer's catch-up and its live stream (the relay's invariant, kept the cheap way).
* **Sequence numbers per connection.** A peer has no global log; each connection's docs count
  from 0 at their ``sync`` answer, which is all the dialer's gap detection needs.
* **Fan-out to other peers** on the same doc, so a tablet in a shop passes one customer's booking
  to another customer's phone at once; later peers get it from the sync exchange anyway.
* **Structured log lines** through ``log(type, fields)``: the CLI prints them as JSON lines or
  ``type key=value`` text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection

from client.local.client import LocalClient
from client.log import get_logger, log_event
from client.peer.auth import (
    PeerAuthError,
    PeerCredentials,
    PeerVerifier,
    Scope,
    may_share,
    new_nonce,
    offer,
    transcript as peer_transcript,
)
from client.peer.data import apply_from_peer, content_digest
from client.peer.wire import Wire
from crdt_core.certs import Certificate
from crdt_core.engine import EMPTY_UPDATE, EngineError, Replica
from crdt_core.errors import SchemaError
from crdt_core.messages import DEFAULT_MAX_MESSAGE, CloseCode, ErrorCode, Limit
from crdt_core.protocol import (
    AuthRequested,
    ConnState,
    Deadline,
    HelloReceived,
    RelayEvent,
    RelayProtocol,
    SubscribeRequested,
    UpdateSubmitted,
)

__all__ = ["SERVER_NAME", "PeerServer"]

log = get_logger(__name__)

SERVER_NAME = "quickslot-peer/0.1"
#: Documents one peer connection may subscribe at once (more: ``err too_many_docs``).
MAX_DOCS = 1024
EMPTY_STATE_VECTOR = b"\x00"
EMPTY_DIGEST = content_digest(Replica())

LogFn = Callable[[str, dict[str, Any]], None]


class PeerServer:
    """Serves one profile to peers until :meth:`stop`.

    Args:
        local: the opened, logged-in profile.
        host, port: where to listen (port 0: any free port; :attr:`port` tells which).
        log: receives ``(type, fields)`` for every structured log line.
        now_ms: the clock for credential checks (tests pass a fixed one).
    """

    def __init__(
        self,
        local: LocalClient,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log: LogFn | None = None,
        now_ms: Callable[[], int] | None = None,
        credentials: PeerCredentials | None = None,
        auth_timeout_s: float = 10.0,
        watch_s: float = 2.0,
    ) -> None:
        self.local = local
        self.host = host
        self.port = port
        self._log = log or (lambda kind, fields: None)
        self._now_ms = now_ms
        self._credentials = credentials
        self.auth_timeout_s = auth_timeout_s
        self.lock = asyncio.Lock()
        self.connections: set[_Connection] = set()
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.creds: PeerCredentials | None = None
        self.verifier: PeerVerifier | None = None
        #: How often the server checks that it may still serve (logged in, certificate valid).
        self.watch_s = watch_s
        #: Set when the server stopped serving on its own; :attr:`ended` says why.
        self.stopped = asyncio.Event()
        self.ended: str | None = None
        self._watch: asyncio.Task[None] | None = None
        self._signed_in_as: bytes | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def log(self, kind: str, **fields: Any) -> None:
        self._log(kind, fields)

    async def start(self) -> None:
        """Load this profile's credentials and listen.

        Raises:
            PeerAuthError: not logged in, or this device's certificate has expired.
            OSError: the address is taken or not ours.
        """
        self.creds = self._credentials or await PeerCredentials.load(
            self.local, None if self._now_ms is None else self._now_ms()
        )
        self.verifier = PeerVerifier(self.creds, self._now_ms)
        self._signed_in_as = await self.local.certificate_on_disk()
        self._server = await websockets.serve(
            self._serve, self.host, self.port, max_size=DEFAULT_MAX_MESSAGE, compression=None
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.log("peer_listening", url=self.url, user=self.creds.user_id)
        self._watch = asyncio.create_task(self._watch_credentials())

    def _now(self) -> int:
        return self._now_ms() if self._now_ms is not None else int(time.time() * 1000)

    async def why_not_serving(self) -> str | None:
        """Why this device may no longer serve peers (None: it may).

        Why checked while running: a logout (from any process sharing the profile) revokes the
        session, and an expired certificate makes every peer refuse what this device signs; a
        server that went on would hand out a logged-out device's data, or refuse peers with
        reasons that blame them.
        """
        if self.ended is not None:
            return self.ended
        assert self.creds is not None
        if await self.local.certificate_on_disk() != self._signed_in_as:
            return "this profile logged out (or logged in again): stopped serving peers"
        expires = self.creds.certificate.expires_at_ms
        # Credentials handed in (tests playing a bad acceptor) are served as given: the dialer's
        # own checks must catch them.
        if self._credentials is None and self._now() >= expires:
            at = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires / 1000))
            return (
                f"this device's certificate expired at {at}: stopped serving peers; log in again "
                "while online, then start `quickslot peer serve` again"
            )
        return None

    async def _watch_credentials(self) -> None:
        while self.ended is None:
            await asyncio.sleep(self.watch_s)
            reason = await self.why_not_serving()
            if reason is not None:
                self._end(reason)

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.log("peer_serve_ended", reason=reason)
            log_event(log, "peer_serve_ended", logging.WARNING, reason=reason)
            self.stopped.set()

    async def stop(self) -> None:
        """Tell every peer to go away (1001), stop listening, wait for the handlers."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for conn in list(self.connections):
            await conn.wire.close(CloseCode.GOING_AWAY, "peer going away")
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self.log("peer_stopped")

    async def __aenter__(self) -> PeerServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, ws: ServerConnection) -> None:
        reason = await self.why_not_serving()
        if reason is not None:  # between two checks of the watcher: refuse, saying why
            self._end(reason)
            await ws.close(CloseCode.GOING_AWAY, reason[:120])
            return
        conn = _Connection(self, ws)
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception:
            log.exception("peer connection failed")
            await conn.wire.close(CloseCode.INTERNAL, "internal error")
        finally:
            self.connections.discard(conn)
            self.log("peer_closed", remote=conn.remote, user=conn.user, code=conn.close_code())

    def flush_later(self, conn: _Connection) -> None:
        """Send a fan-out to ``conn`` without making the sender wait for that socket."""
        task = asyncio.create_task(conn.wire.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Connection:
    """One dialer: its protocol machine, its proven identity and its per-doc sequence numbers."""

    def __init__(self, server: PeerServer, ws: ServerConnection) -> None:
        self.server = server
        self.local = server.local
        self.proto = RelayProtocol(peer=True, max_message_size=DEFAULT_MAX_MESSAGE)
        self.wire = Wire(ws, self.proto)
        address = ws.remote_address
        self.remote = f"{address[0]}:{address[1]}" if address else "?"
        self.cert: Certificate | None = None
        self.user: str | None = None
        self.scope: Scope | None = None
        self._nonces: tuple[bytes, bytes] = (b"", b"")
        self._seq: dict[str, int] = {}

    def close_code(self) -> int | None:
        if self.proto.close_code is not None:
            return self.proto.close_code
        return self.wire.ws.close_code

    def next_seq(self, doc: str) -> int:
        self._seq[doc] = self._seq.get(doc, 0) + 1
        return self._seq[doc]

    async def run(self) -> None:
        deadline = time.monotonic() + self.server.auth_timeout_s
        self.server.log("peer_connected", remote=self.remote)
        while self.proto.state not in (ConnState.CLOSING, ConnState.CLOSED):
            timeout = None if self.proto.state is ConnState.OPEN else max(0.0, deadline - time.monotonic())
            try:
                data = await asyncio.wait_for(self.wire.ws.recv(), timeout)
            except TimeoutError:
                self.proto.expire(Deadline.AUTH)
                self.server.log("peer_refused", remote=self.remote, code=int(CloseCode.AUTH_TIMEOUT))
                await self.wire.flush()
                return
            except websockets.ConnectionClosed:
                break
            if isinstance(data, str):
                self.proto.close(CloseCode.PROTOCOL_VIOLATION, "text messages are not part of the protocol")
            else:
                self.proto.receive_message(data)
            for event in self.proto.events_received():
                await self._on(event)
            await self.wire.flush()
        self.proto.receive_eof()

    async def _on(self, event: RelayEvent) -> None:
        if isinstance(event, HelloReceived):
            await self._on_hello(event)
        elif isinstance(event, AuthRequested):
            await self._on_auth(event)
        elif isinstance(event, SubscribeRequested):
            await self._on_subscribe(event)
        elif isinstance(event, UpdateSubmitted):
            await self._on_update(event)
        # UnsubscribeRequested: the machine already stopped the doc's live stream.

    def _refuse(self, exc: PeerAuthError) -> None:
        self.proto.reject_auth(exc.close_code, exc.reason)
        self.server.log("peer_refused", remote=self.remote, code=exc.close_code, reason=exc.reason)

    async def _on_hello(self, event: HelloReceived) -> None:
        creds, verifier = self.server.creds, self.server.verifier
        assert creds is not None and verifier is not None
        try:
            cert = verifier.certificate(event.cert)
        except PeerAuthError as exc:
            self._refuse(exc)
            return
        nonce = new_nonce()
        self.cert, self._nonces = cert, (event.nonce, nonce)
        ours = creds.certificate.cert_id
        proof = creds.sign(peer_transcript("acceptor", event.nonce, nonce, cert.cert_id, ours))
        self.proto.challenge(nonce, creds.device.certificate, proof)

    async def _on_auth(self, event: AuthRequested) -> None:
        creds, verifier, cert = self.server.creds, self.server.verifier, self.cert
        assert creds is not None and verifier is not None and cert is not None
        dialer_nonce, nonce = self._nonces
        try:
            signed = peer_transcript("dialer", dialer_nonce, nonce, cert.cert_id, creds.certificate.cert_id)
            verifier.proof(cert, signed, event.proof or b"")
            verifier.token(event.token, cert)
        except PeerAuthError as exc:
            self._refuse(exc)
            return
        self.user = cert.user_id
        self.scope = Scope.of_certificate(creds.certificate, await self.local.subscribed_docs())
        offered = offer(await self.local.held_docs(), self.scope, Scope.of_certificate(cert))
        self.proto.accept_auth(
            cert.user_id,
            f"peer-{creds.certificate.cert_id}",
            SERVER_NAME,
            {Limit.MAX_DOCS: MAX_DOCS},
            token=creds.token,
            docs=offered[:4096],
        )
        self.server.log("peer_authenticated", remote=self.remote, user=cert.user_id, offered=len(offered))

    async def _on_subscribe(self, event: SubscribeRequested) -> None:
        assert self.scope is not None and self.user is not None
        refusal = may_share(event.doc, self.scope, self.user)
        if refusal is not None:
            code, reason = refusal
            self.proto.send_error(code, reason, doc=event.doc)
            self.server.log("peer_doc_refused", user=self.user, doc=event.doc, code=code)
            return
        async with self.server.lock:
            try:
                if event.doc in await self.local.held_docs():
                    diff = await self.local.diff(event.doc, event.sv)
                    sv = await self.local.state_vector(event.doc)
                    digest = await self.local.inspect(event.doc, content_digest)
                else:  # answered without loading it: probing day after day costs no memory here
                    diff, sv, digest = EMPTY_UPDATE, EMPTY_STATE_VECTOR, EMPTY_DIGEST
            except (EngineError, SchemaError, ValueError) as exc:
                self.proto.send_error(ErrorCode.BAD_DOC, f"cannot answer: {exc}", doc=event.doc)
                return
            self._seq[event.doc] = 0
            self.proto.send_sync(event.doc, diff, sv, 0, digest)
        self.server.log("peer_doc_synced", user=self.user, doc=event.doc, bytes=len(diff))

    async def _on_update(self, event: UpdateSubmitted) -> None:
        doc = event.doc
        async with self.server.lock:
            report = await apply_from_peer(self.local, [(doc, event.update)], split=False)
            if report.refused:
                _doc, code, detail = report.refused[0]
                err = ErrorCode.MISSING_DEPS if code == "missing_deps" else ErrorCode.REJECTED
                self.proto.send_error(err, f"{code}: {detail}"[:400], uid=event.uid)
                self.server.log("peer_update_rejected", user=self.user, doc=doc, code=code, reason=detail)
                return
            self.proto.ack(doc, event.uid, self.next_seq(doc))
            if report.applied:
                if doc not in await self.local.subscribed_docs():
                    await self.local.subscribe(doc, "peer")
                for other in self.server.connections:
                    if other is not self and other.proto.is_live(doc):
                        other.proto.send_update(doc, event.update, other.next_seq(doc))
                        self.server.flush_later(other)
        self.server.log("peer_update_stored", user=self.user, doc=doc, new=bool(report.applied))
