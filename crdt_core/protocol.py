"""The sans-I/O sync protocol: what each side sends and expects, with no sockets and no clock.

Theory of operation
-------------------
A :class:`ClientProtocol` or :class:`RelayProtocol` is the whole of one connection's logic, in
the manner of the ``websockets`` library's ``Protocol`` and of h11. The shell around it (an
asyncio websocket handler, a test, a peer-to-peer link) does three things:

1. hands every received binary message to :meth:`receive_message` (and the end of the
   transport to :meth:`receive_eof`), or calls the role's methods (``subscribe``, ``ack``...);
2. then writes every ``bytes`` from :meth:`data_to_send` as one binary websocket message, and if
   :meth:`close_expected` is true, closes the websocket with :attr:`close_code` and
   :attr:`close_reason`;
3. handles each event from :meth:`events_received`.

The inbound path never raises. Bytes that do not decode, and messages the protocol forbids in
the current state, become a queued close (``4002`` unless a more specific code applies), the
machine enters CLOSING and ignores anything further. Local calls that the state forbids raise
:class:`LocalProtocolError` before changing anything: that is a bug in the caller.

There is no clock: :meth:`deadlines` names what the machine is waiting for, the shell arms its
own timers and calls :meth:`expire` when one fires.

Sequence numbers (client side): the ``sync`` answer sets the doc's cursor to its ``seq``; then
every ``upd``, ``ack`` and ``stamp`` of that doc carries a ``seq``. ``last + 1`` advances the
cursor, ``<= last`` is a duplicate (delivered anyway: applying a Yjs update twice is a no-op), and
``> last + 1`` is a gap: :class:`GapDetected` is emitted, the doc becomes STALE and the shell must
call :meth:`ClientProtocol.resync` with its current state vector. The message that revealed the
gap is still delivered after the :class:`GapDetected` event.

Fan-out (relay side): a live update goes to many connections. The relay encodes it once with
:func:`encode_update` (or :func:`encode_stamped` for a booking with its stamps, or
:func:`encode_stamp`) and calls :meth:`RelayProtocol.send_live` on each subscriber with the same
bytes: one set lookup and one list append per recipient. The booking's sender gets its ack and
the stamps in one message too (:meth:`RelayProtocol.ack_stamped`); the client machine turns a
``stamped`` into the same events as the two messages it replaces (:class:`Acked` or
:class:`UpdateReceived`, then :class:`StampReceived`), so shells need not know it exists. A shell
that writes straight to its transports instead (``websockets.broadcast``) may skip ``send_live``
and test :meth:`RelayProtocol.is_live` itself, provided it always drains :meth:`data_to_send`
before it yields to the event loop, so a ``sync`` answer never overtakes or trails the live
stream it starts.

Peer mode (``peer=True`` on both roles, docs/peer.md): two clients with no relay run the same
machines, the side that accepted the connection in the relay's role. Before the ``auth`` message
they run a mutual proof-of-possession handshake (``hello`` → ``challenge`` → ``auth`` with a
``proof``), so neither reveals its access token to a side that has not proven it holds a
relay-certified device key. A peer never stamps: the acceptor cannot send ``stamp`` and the
dialer treats one as a protocol violation. Acks mean "stored by that peer", not by a relay.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

from crdt_core.errors import CodecError, LocalProtocolError, RemoteProtocolError
from crdt_core.messages import (
    DEFAULT_MAX_DOWNLOAD,
    DEFAULT_MAX_MESSAGE,
    MAX_REASON_LEN,
    Ack,
    Auth,
    Challenge,
    ClientUpdate,
    CloseCode,
    ErrorCode,
    ErrorMessage,
    Hello,
    Limit,
    Message,
    RelayUpdate,
    Stamp,
    Stamped,
    Subscribe,
    Sync,
    Unsubscribe,
    Welcome,
    decode,
    encode_stamp,
    encode_stamped,
    encode_update,
    is_retryable_error,
)
from crdt_core.state import (
    SUBSCRIBED,
    ConnectionMachine,
    ConnEvent,
    ConnState,
    DocMachine,
    DocState,
    PeerEvent,
    PeerMachine,
    PeerPhase,
)

__all__ = [
    "Acked",
    "AuthRequested",
    "ChallengeReceived",
    "ClientEvent",
    "ClientProtocol",
    "ConnState",
    "Deadline",
    "DocState",
    "DocSynced",
    "ErrorReceived",
    "Event",
    "GapDetected",
    "HelloReceived",
    "RelayEvent",
    "RelayProtocol",
    "StampReceived",
    "SubscribeRequested",
    "UnsubscribeRequested",
    "UpdateReceived",
    "UpdateSubmitted",
    "Welcomed",
    "encode_stamp",
    "encode_stamped",
    "encode_update",
]

#: A websocket close reason must fit in a 125-byte control frame, 2 of which hold the code.
_MAX_CLOSE_REASON_BYTES: Final = 123

AWAIT_AUTH: Final = ConnState.AWAIT_AUTH
AUTHENTICATING: Final = ConnState.AUTHENTICATING
OPEN: Final = ConnState.OPEN
CLOSING: Final = ConnState.CLOSING
CLOSED: Final = ConnState.CLOSED

ABSENT: Final = DocState.ABSENT
SYNCING: Final = DocState.SYNCING
LIVE: Final = DocState.LIVE
STALE: Final = DocState.STALE
DRAINING: Final = DocState.DRAINING


class Deadline(enum.Enum):
    """Something the machine is waiting for; the shell times it."""

    #: Relay: the auth message or the shell's verdict. Client: the welcome.
    AUTH = "auth"
    #: Client: an answer to a ``sub`` or an ``upd`` it sent.
    RESPONSE = "response"


# --- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The relay accepted the token. Compare ``epoch`` with the one stored for this relay:
    a new epoch means cursors from the old one are meaningless (the sync exchange repairs data)."""

    user: str
    epoch: str
    server: str
    limits: dict[str, int]
    #: Peer mode: the acceptor's access token (verify it before subscribing anything).
    token: str | None = None
    #: Peer mode: documents the acceptor offers (it holds them and the dialer may read them).
    docs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ChallengeReceived:
    """Peer mode, dialer: the acceptor's nonce, certificate and proof. Verify them, then call
    ``authenticate(token, proof)`` with this side's proof, or ``close(4003, reason)``."""

    nonce: bytes
    cert: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class DocSynced:
    """Sync step 2 arrived. Apply ``update``, then send ``diff(relay_sv)`` with ``send_update``:
    that is what the relay lacks. The doc is LIVE unless another subscription is still pending."""

    doc: str
    update: bytes
    relay_sv: bytes
    seq: int
    #: Peer mode: the acceptor's content digest (compare it when the state vectors agree).
    digest: bytes | None = None


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    """Someone else's update, stored by the relay as ``seq``. Apply it."""

    doc: str
    update: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The update ``uid`` is durably stored: drop it from the outbox."""

    doc: str
    uid: int
    seq: int


@dataclass(frozen=True, slots=True)
class StampReceived:
    """The relay stamped booking claims. Apply ``update`` (the signed stamp records)."""

    doc: str
    update: bytes
    seq: int
    stamps: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class GapDetected:
    """A live message skipped sequence numbers: call ``resync(doc, current_state_vector)``."""

    doc: str
    expected: int
    got: int


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An ``err`` from the relay. With ``uid``: that update was not stored (keep it in the
    outbox if ``retry``, else mark it rejected). With ``doc`` only: the subscription was refused
    and the doc is no longer subscribed. With neither: a notice about the connection."""

    code: str
    reason: str
    doc: str | None
    uid: int | None
    retry: bool


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """Verify ``token`` (and in peer mode ``proof``), then call ``accept_auth`` or ``reject_auth``.

    To a relay, ``proof`` and ``proof_time`` are the proof of possession a token bound to a device
    key needs (``crdt_core.pop``); in peer mode ``proof`` signs the handshake transcript."""

    token: str
    proof: bytes | None = None
    proof_time: int | None = None


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Peer mode, acceptor: the dialer's nonce and certificate. Verify the certificate, then call
    ``challenge(nonce, cert, proof)`` with this side's own, or ``reject_auth``."""

    nonce: bytes
    cert: bytes


@dataclass(frozen=True, slots=True)
class SubscribeRequested:
    """Check read rights, then answer with ``send_sync`` (the diff against ``sv``, made
    atomically with the doc's current seq) or ``send_error(code, reason, doc=doc)``."""

    doc: str
    sv: bytes


@dataclass(frozen=True, slots=True)
class UpdateSubmitted:
    """Validate and store ``update``; answer with ``ack`` once durable, or ``send_error(uid=...)``."""

    doc: str
    uid: int
    update: bytes


@dataclass(frozen=True, slots=True)
class UnsubscribeRequested:
    """Stop fanning ``doc`` out to this connection (``is_live`` already says so)."""

    doc: str


ClientEvent: TypeAlias = (
    Welcomed
    | DocSynced
    | UpdateReceived
    | Acked
    | StampReceived
    | GapDetected
    | ErrorReceived
    | ChallengeReceived
)
RelayEvent: TypeAlias = (
    AuthRequested | SubscribeRequested | UpdateSubmitted | UnsubscribeRequested | HelloReceived
)
Event: TypeAlias = ClientEvent | RelayEvent

_E = TypeVar("_E")


def _close_reason(reason: str) -> str:
    encoded = reason.encode("utf-8")
    if len(encoded) <= _MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[: _MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def _sanitize(reason: str, limit: int = MAX_REASON_LEN) -> str:
    # Reasons often carry exception text; the codec refuses control characters, so replace them.
    text = "".join(ch if ch.isprintable() else "?" for ch in str(reason))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _wire(build: Callable[[], Message]) -> bytes:
    """Encode a message built from local arguments; invalid arguments are the caller's bug."""
    try:
        return build().to_wire()
    except CodecError as exc:
        raise LocalProtocolError(str(exc)) from exc


def _check_close_code(code: int) -> None:
    # RFC 6455 7.4: 1004-1006 and 1015 must never be sent; 1016-2999 are reserved.
    if type(code) is not int and not isinstance(code, CloseCode):
        raise LocalProtocolError(f"close code must be an int, not {type(code).__name__}")
    if not (1000 <= code <= 1014 or 3000 <= code <= 4999) or code in (1004, 1005, 1006):
        raise LocalProtocolError(f"close code {code} may not be sent")


def _without_frames(exc: Exception) -> Exception:
    """``exc`` with the tracebacks of it and of its causes dropped, for keeping on the protocol.

    Why: a traceback holds every frame it passed through with all their locals (here the
    protocol object itself and the received message) and, through ``f_back``, the caller's
    frame (a relay's read loop and its connection). Kept on the protocol object, that is a
    reference cycle, so a connection closed for a bad message, with its buffers, stayed in memory
    until a full garbage collection, which a relay runs rarely on purpose (docs/reliability.md,
    "Frame fuzzing"). Type and message are what a log line needs.
    """
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__traceback__ = None
        link = link.__cause__ or link.__context__
    return exc


class _Connection(abc.ABC, Generic[_E]):
    """What both roles share: buffers, the connection machine, the inbound boundary, closing."""

    def __init__(self, *, header_auth: bool, max_message_size: int) -> None:
        if type(max_message_size) is not int or max_message_size < 64:
            raise LocalProtocolError(f"max_message_size too small: {max_message_size!r}")
        self._conn = ConnectionMachine(AUTHENTICATING if header_auth else AWAIT_AUTH)
        self._docs = DocMachine()
        self._out: list[bytes] = []
        self._events: list[_E] = []
        #: Inbound messages larger than this close the connection with 1009.
        self.max_message_size = max_message_size
        self.close_code: int | None = None
        self.close_reason = ""
        #: The exception behind a close caused by received bytes, for the shell's logs.
        self.parser_exc: Exception | None = None

    # --- outputs ---------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Messages to write, in order, each as one binary websocket message."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[_E]:
        """Events since the last call, in the order their messages arrived."""
        events, self._events = self._events, []
        return events

    def close_expected(self) -> bool:
        """True once a close is queued: send a close frame with ``close_code``/``close_reason``
        after the remaining ``data_to_send()``, then drop the transport."""
        return self._conn.state is CLOSING

    @property
    def state(self) -> ConnState:
        return self._conn.state

    def doc_state(self, doc: str) -> DocState:
        return self._docs.state(doc)

    def subscribed_docs(self) -> frozenset[str]:
        return frozenset(self._docs.subscribed())

    # --- inputs ----------------------------------------------------------------------------------

    def receive_message(self, data: bytes | bytearray | memoryview) -> None:
        """Process one received binary message. Never raises.

        After it, call ``data_to_send()``, ``close_expected()`` and ``events_received()``.
        Messages that arrive once a close is queued are ignored.
        """
        if self._conn.state in (CLOSING, CLOSED):
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            self._fail(CloseCode.PROTOCOL_VIOLATION, "text messages are not part of the protocol")
            return
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > self.max_message_size:
            self._fail(CloseCode.TOO_BIG, f"message of {size} bytes exceeds {self.max_message_size}")
            return
        try:
            self._handle(decode(data, max_size=self.max_message_size))
        except CodecError as exc:
            self.parser_exc = _without_frames(exc)
            self._fail(CloseCode.PROTOCOL_VIOLATION, f"bad message: {exc}")
        except RemoteProtocolError as exc:
            self.parser_exc = _without_frames(exc)
            self._fail(exc.close_code, exc.reason)
        except LocalProtocolError as exc:
            # A transition the tables forbid, triggered by the peer: the peer's violation (h11).
            self.parser_exc = _without_frames(exc)
            self._fail(CloseCode.PROTOCOL_VIOLATION, str(exc))
        except Exception as exc:
            # A bug here, not the peer's fault; keep details out of the reason (they may be
            # sensitive) and in parser_exc for the logs.
            self.parser_exc = _without_frames(exc)
            self._fail(CloseCode.INTERNAL, "internal error")

    def receive_eof(self) -> None:
        """The transport ended (after a close handshake or not). Idempotent."""
        if self._conn.state is not CLOSED:
            self._conn.process(ConnEvent.EOF)
            self._docs.clear()

    def close(self, code: int, reason: str = "") -> None:
        """Queue a close. The first close wins; later calls do nothing.

        Raises:
            LocalProtocolError: ``code`` may not be sent on the wire (RFC 6455 7.4).
        """
        _check_close_code(code)
        if self._conn.allows(ConnEvent.CLOSE):
            self._fail(code, reason)

    # --- deadlines -------------------------------------------------------------------------------

    @abc.abstractmethod
    def deadlines(self) -> frozenset[Deadline]:
        """What the machine waits for now. Arm a timer when one appears, cancel it when it goes."""

    @abc.abstractmethod
    def expire(self, deadline: Deadline) -> None:
        """A timer armed for ``deadline`` fired. Closes if the machine still waits; else no-op."""

    # --- private ---------------------------------------------------------------------------------

    def _require_open(self, action: str) -> None:
        if self._conn.state is not OPEN:
            raise LocalProtocolError(f"can't {action} when the connection is {self._conn.state.name}")

    def _fail(self, code: int, reason: str) -> None:
        self._conn.process(ConnEvent.CLOSE)
        self.close_code = int(code)
        self.close_reason = _close_reason(_sanitize(reason))
        # Nothing is sent after a close; forgetting the docs also stops the fan-out at once.
        self._docs.clear()

    @abc.abstractmethod
    def _handle(self, message: Message) -> None:
        """Apply one decoded message; raise Remote/LocalProtocolError before changing anything."""


# --- client ----------------------------------------------------------------------------------------


class ClientProtocol(_Connection[ClientEvent]):
    """The client side of a sync connection (also a peer that dials another peer).

    Args:
        header_auth: the token went in the HTTP Authorization header, so the client waits for
            the welcome without calling :meth:`authenticate`.
        max_message_size: largest message accepted from the relay (a ``sync`` carries a whole
            document's missing state, so this follows the relay's document limit).
        peer: peer mode (the other side is a peer, not a relay): :meth:`hello` first, then
            :class:`ChallengeReceived`, then :meth:`authenticate` with a proof; ``stamp`` is refused.
    """

    def __init__(
        self, *, header_auth: bool = False, max_message_size: int = DEFAULT_MAX_DOWNLOAD, peer: bool = False
    ) -> None:
        if peer and header_auth:
            raise LocalProtocolError("peer mode authenticates with messages, not a header")
        super().__init__(header_auth=header_auth, max_message_size=max_message_size)
        #: The peer handshake's phase; None outside peer mode.
        self._peer = PeerMachine() if peer else None
        self._pending: dict[int, str] = {}
        self._sent_auth = header_auth
        #: The relay's welcome, once received.
        self.welcome: Welcomed | None = None

    # --- observing -------------------------------------------------------------------------------

    def last_seq(self, doc: str) -> int | None:
        """The doc's sequence cursor while LIVE; ``None`` otherwise."""
        return self._docs.last_seq(doc)

    @property
    def pending_uids(self) -> frozenset[int]:
        """Updates sent on this connection and not yet answered by ``ack`` or ``err``."""
        return frozenset(self._pending)

    @property
    def max_outgoing(self) -> int | None:
        """The relay's announced message limit; :meth:`send_update` refuses larger messages."""
        if self.welcome is None:
            return None
        return self.welcome.limits.get(Limit.MAX_MESSAGE)

    @property
    def peer(self) -> bool:
        return self._peer is not None

    def deadlines(self) -> frozenset[Deadline]:
        if self._conn.state is AUTHENTICATING:
            return frozenset({Deadline.AUTH})
        if self._conn.state is AWAIT_AUTH and self._peer is not None and self._peer.phase is PeerPhase.HELLO:
            return frozenset({Deadline.AUTH})  # the hello is out, the challenge is due
        if self._conn.state is OPEN and (self._pending or self._docs.any_pending()):
            return frozenset({Deadline.RESPONSE})
        return frozenset()

    def expire(self, deadline: Deadline) -> None:
        if deadline not in self.deadlines():
            return
        if deadline is Deadline.AUTH:
            self._fail(CloseCode.AUTH_TIMEOUT, "no welcome from the relay in time")
        else:
            self._fail(CloseCode.GOING_AWAY, "the relay did not answer in time")

    # --- sending ---------------------------------------------------------------------------------

    def hello(self, nonce: bytes, cert: bytes) -> None:
        """Peer mode: open the handshake with a fresh nonce and this device's certificate.

        Raises:
            LocalProtocolError: not in peer mode, already sent, or invalid arguments.
        """
        if self._peer is None or self._conn.state is not AWAIT_AUTH or not self._peer.allows(PeerEvent.HELLO):
            raise LocalProtocolError("hello is the first message of a peer-mode connection only")
        data = _wire(lambda: Hello(nonce, cert))
        self._peer.process(PeerEvent.HELLO)
        self._out.append(data)

    def authenticate(self, token: str, proof: bytes | None = None, proof_time: int | None = None) -> None:
        """Send the access token as the first message (when no header could carry it).

        In peer mode it follows the challenge and carries ``proof``, this device key's signature
        over the handshake transcript. To a relay, a token bound to a device key goes with a proof
        of possession: ``proof`` and ``proof_time`` from :func:`crdt_core.pop.auth_proof`.

        Raises:
            LocalProtocolError: already authenticated (or header auth), a malformed token, or in
                peer mode: no challenge received yet, no proof, or a ``proof_time``; to a relay:
                one of ``proof`` and ``proof_time`` without the other.
        """
        if self._sent_auth or not self._conn.allows(ConnEvent.AUTH):
            raise LocalProtocolError(f"can't authenticate when the connection is {self._conn.state.name}")
        if self._peer is not None:
            if self._peer.phase is not PeerPhase.CHALLENGED:
                raise LocalProtocolError("peer mode: authenticate only after the challenge")
            if proof is None:
                raise LocalProtocolError("peer mode: authenticate needs a proof")
            if proof_time is not None:
                raise LocalProtocolError("peer mode: the transcript proof has no time")
        elif (proof is None) != (proof_time is None):
            raise LocalProtocolError("a relay proof of possession needs both proof and proof_time")
        data = _wire(lambda: Auth(token, proof, proof_time))
        self._conn.process(ConnEvent.AUTH)
        self._sent_auth = True
        self._out.append(data)

    def subscribe(self, doc: str, sv: bytes) -> None:
        """Subscribe to ``doc`` and send sync step 1 with this replica's state vector.

        Raises:
            LocalProtocolError: not OPEN, already subscribed (use :meth:`resync`), or bad args.
        """
        self._require_open("subscribe")
        if self._docs.state(doc) in SUBSCRIBED:
            raise LocalProtocolError(f"already subscribed to {doc!r}; call resync() to sync again")
        data = _wire(lambda: Subscribe(doc, sv))
        self._docs.subscribe(doc)
        self._out.append(data)

    def resync(self, doc: str, sv: bytes) -> None:
        """Run the sync exchange again for a subscribed doc (after :class:`GapDetected`).

        Raises:
            LocalProtocolError: not OPEN, or ``doc`` is not subscribed.
        """
        self._require_open("resync")
        if self._docs.state(doc) not in SUBSCRIBED:
            raise LocalProtocolError(f"not subscribed to {doc!r}; call subscribe()")
        data = _wire(lambda: Subscribe(doc, sv))
        self._docs.subscribe(doc)
        self._out.append(data)

    def send_update(self, doc: str, uid: int, update: bytes) -> None:
        """Send an update for the relay to store; expect :class:`Acked` or :class:`ErrorReceived`.

        Raises:
            LocalProtocolError: not OPEN, ``doc`` not subscribed, ``uid`` already pending, bad
                args, or the message exceeds the relay's ``max_message`` limit (split the
                update or mark the outbox entry failed: the relay would close with 1009).
        """
        self._require_open("send an update")
        if self._docs.state(doc) not in SUBSCRIBED:
            raise LocalProtocolError(f"not subscribed to {doc!r}; the relay would answer not_subscribed")
        if uid in self._pending:
            raise LocalProtocolError(f"update {uid} is already pending on this connection")
        data = _wire(lambda: ClientUpdate(doc, uid, update))
        limit = self.max_outgoing
        if limit is not None and len(data) > limit:
            raise LocalProtocolError(f"update message of {len(data)} bytes exceeds the relay's limit {limit}")
        self._pending[uid] = doc
        self._out.append(data)

    def unsubscribe(self, doc: str) -> None:
        """Stop receiving ``doc``. Pending updates of it are still answered.

        Raises:
            LocalProtocolError: not OPEN, or ``doc`` is not subscribed.
        """
        self._require_open("unsubscribe")
        if self._docs.state(doc) not in SUBSCRIBED:
            raise LocalProtocolError(f"not subscribed to {doc!r}")
        data = _wire(lambda: Unsubscribe(doc))
        self._docs.unsubscribe(doc)
        self._out.append(data)

    # --- receiving -------------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        if isinstance(message, Welcome):
            self._conn.process(ConnEvent.WELCOME)
            token, docs = (message.token, message.docs or ()) if self._peer is not None else (None, ())
            self.welcome = Welcomed(
                message.user, message.epoch, message.server, dict(message.limits), token, tuple(docs)
            )
            self._events.append(self.welcome)
            return
        if isinstance(message, Challenge):
            if self._peer is None or self._conn.state is not AWAIT_AUTH:
                raise RemoteProtocolError("challenge outside a peer handshake", CloseCode.PROTOCOL_VIOLATION)
            self._peer.process(PeerEvent.CHALLENGE)  # LocalProtocolError (-> 4002) unless after hello
            self._events.append(ChallengeReceived(message.nonce, message.cert, message.proof))
            return
        if self._conn.state is not OPEN:
            raise RemoteProtocolError(f"{message.TYPE} before welcome", CloseCode.PROTOCOL_VIOLATION)
        if isinstance(message, Sync):
            self._on_sync(message)
        elif isinstance(message, RelayUpdate):
            self._on_live(message.doc, message.seq, UpdateReceived(message.doc, message.update, message.seq))
        elif isinstance(message, Stamp):
            if self._peer is not None:
                raise RemoteProtocolError("a peer never stamps", CloseCode.PROTOCOL_VIOLATION)
            event = StampReceived(message.doc, message.update, message.seq, message.stamps)
            self._on_live(message.doc, message.seq, event)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Stamped):
            self._on_stamped(message)
        elif isinstance(message, ErrorMessage):
            self._on_error(message)
        else:
            raise RemoteProtocolError(
                f"{message.TYPE} is a client-to-relay message", CloseCode.PROTOCOL_VIOLATION
            )

    def _on_sync(self, message: Sync) -> None:
        doc = message.doc
        if self._docs.pending(doc) == 0:
            raise RemoteProtocolError(
                f"sync for {doc!r}, which has no pending sub", CloseCode.PROTOCOL_VIOLATION
            )
        was_draining = self._docs.state(doc) is DRAINING
        if self._docs.answer(doc) is LIVE:
            self._docs.set_last_seq(doc, message.seq)
        if not was_draining:  # a tombstone absorbs answers to subscriptions the shell dropped
            digest = message.digest if self._peer is not None else None
            self._events.append(DocSynced(doc, message.update, message.sv, message.seq, digest))

    def _on_live(self, doc: str, seq: int, event: UpdateReceived | StampReceived) -> None:
        state = self._docs.state(doc)
        if state is ABSENT or state is DRAINING:
            return  # in flight across our unsub: the relay cannot know yet
        if state is LIVE:
            self._track(doc, seq)
        self._events.append(event)

    def _on_ack(self, message: Ack) -> None:
        doc = self._pending.get(message.uid)
        if doc is None:
            raise RemoteProtocolError(
                f"ack for update {message.uid}, which is not pending", CloseCode.PROTOCOL_VIOLATION
            )
        if doc != message.doc:
            raise RemoteProtocolError(
                f"ack names {message.doc!r} for update {message.uid} sent for {doc!r}",
                CloseCode.PROTOCOL_VIOLATION,
            )
        del self._pending[message.uid]
        if self._docs.state(doc) is LIVE:
            self._track(doc, message.seq)
        self._events.append(Acked(doc, message.uid, message.seq))

    def _on_stamped(self, message: Stamped) -> None:
        """An update (or the ack of ours) at ``seq`` and its stamp update at ``seq + 1``: the same
        events, cursor moves and checks as ``upd``/``ack`` followed by ``stamp``."""
        if self._peer is not None:
            raise RemoteProtocolError("a peer never stamps", CloseCode.PROTOCOL_VIOLATION)
        doc = message.doc
        stamp = StampReceived(doc, message.stamp, message.stamp_seq, message.stamps)
        if message.uid is not None:
            self._on_ack(Ack(doc, message.uid, message.seq))  # raises before changing anything
        else:
            assert message.update is not None  # the codec admits exactly one of uid and update
            self._on_live(doc, message.seq, UpdateReceived(doc, message.update, message.seq))
        self._on_live(doc, message.stamp_seq, stamp)

    def _on_error(self, message: ErrorMessage) -> None:
        if message.uid is not None:
            doc = self._pending.get(message.uid)
            if doc is None:
                raise RemoteProtocolError(
                    f"err for update {message.uid}, which is not pending", CloseCode.PROTOCOL_VIOLATION
                )
            if message.doc is not None and message.doc != doc:
                raise RemoteProtocolError(
                    f"err names {message.doc!r} for update {message.uid} sent for {doc!r}",
                    CloseCode.PROTOCOL_VIOLATION,
                )
            del self._pending[message.uid]
            self._events.append(ErrorReceived(message.code, message.reason, doc, message.uid, message.retry))
        elif message.doc is not None:
            doc = message.doc
            if self._docs.pending(doc) == 0:
                raise RemoteProtocolError(
                    f"doc-level err for {doc!r}, which has no pending sub", CloseCode.PROTOCOL_VIOLATION
                )
            was_draining = self._docs.state(doc) is DRAINING
            self._docs.refuse(doc)
            if not was_draining:
                self._events.append(ErrorReceived(message.code, message.reason, doc, None, message.retry))
        else:
            self._events.append(ErrorReceived(message.code, message.reason, None, None, message.retry))

    def _track(self, doc: str, seq: int) -> None:
        last = self._docs.last_seq(doc)
        assert last is not None  # LIVE docs always have a cursor
        if seq == last + 1:
            self._docs.set_last_seq(doc, seq)
        elif seq > last + 1:
            self._docs.gap(doc)
            self._events.append(GapDetected(doc, last + 1, seq))
        # seq <= last: a duplicate, or the ack of a re-sent update the relay already had.


# --- relay -----------------------------------------------------------------------------------------


class RelayProtocol(_Connection[RelayEvent]):
    """The relay side of a sync connection (also a peer that accepts another peer).

    Args:
        header_auth: the shell took the token from the HTTP Authorization header; the machine
            starts waiting for :meth:`accept_auth`/:meth:`reject_auth` instead of an ``auth``.
        max_message_size: largest message accepted from the client; :meth:`accept_auth` may
            change it through the ``max_message`` limit, which is always announced.
        peer: peer mode (this side is a peer accepting another, not a relay): the connection
            opens with :class:`HelloReceived`, answered by :meth:`challenge`; :meth:`send_stamp`
            is refused.
    """

    def __init__(
        self, *, header_auth: bool = False, max_message_size: int = DEFAULT_MAX_MESSAGE, peer: bool = False
    ) -> None:
        if peer and header_auth:
            raise LocalProtocolError("peer mode authenticates with messages, not a header")
        super().__init__(header_auth=header_auth, max_message_size=max_message_size)
        #: The peer handshake's phase; None outside peer mode.
        self._peer = PeerMachine() if peer else None
        self._unanswered: dict[int, str] = {}
        self._max_docs: int | None = None
        #: The welcome sent, once the connection is open (user, epoch, limits).
        self.accepted: Welcome | None = None

    # --- observing -------------------------------------------------------------------------------

    def is_live(self, doc: str) -> bool:
        """Whether live messages of ``doc`` go to this connection now. O(1)."""
        return doc in self._docs.live

    def live_docs(self) -> frozenset[str]:
        return frozenset(self._docs.live)

    @property
    def unanswered_uids(self) -> frozenset[int]:
        """Updates received and not yet answered with ``ack`` or ``send_error``."""
        return frozenset(self._unanswered)

    def deadlines(self) -> frozenset[Deadline]:
        if self._conn.state in (AWAIT_AUTH, AUTHENTICATING):
            return frozenset({Deadline.AUTH})
        return frozenset()

    def expire(self, deadline: Deadline) -> None:
        if deadline in self.deadlines():
            self._fail(CloseCode.AUTH_TIMEOUT, "authentication timed out")

    # --- authentication ----------------------------------------------------------------------------

    @property
    def peer(self) -> bool:
        return self._peer is not None

    def challenge(self, nonce: bytes, cert: bytes, proof: bytes) -> None:
        """Peer mode: answer the dialer's hello with this side's nonce, certificate and proof.

        Raises:
            LocalProtocolError: not in peer mode, no hello awaiting an answer, or invalid arguments.
        """
        peer = self._peer
        if peer is None or self._conn.state is not AWAIT_AUTH or not peer.allows(PeerEvent.CHALLENGE):
            raise LocalProtocolError("a challenge answers the hello of a peer-mode connection only")
        data = _wire(lambda: Challenge(nonce, cert, proof))
        peer.process(PeerEvent.CHALLENGE)
        self._out.append(data)

    def accept_auth(
        self,
        user: str,
        epoch: str,
        server: str,
        limits: Mapping[str, int],
        *,
        token: str | None = None,
        docs: Sequence[str] | None = None,
    ) -> None:
        """Open the connection and send the welcome.

        Args:
            token: peer mode: this side's access token, for the dialer to verify.
            docs: peer mode: the documents offered to the dialer.

        Raises:
            LocalProtocolError: no authentication is pending, or the arguments are invalid.
        """
        if not self._conn.allows(ConnEvent.WELCOME):
            raise LocalProtocolError(f"can't accept auth when the connection is {self._conn.state.name}")
        if self._peer is None and (token is not None or docs is not None):
            raise LocalProtocolError("a welcome carries a token or an offer in peer mode only")
        announced = dict(limits)
        announced.setdefault(Limit.MAX_MESSAGE, self.max_message_size)
        try:
            welcome = Welcome(user, epoch, server, announced, token, None if docs is None else tuple(docs))
        except CodecError as exc:
            raise LocalProtocolError(str(exc)) from exc
        if welcome.limits[Limit.MAX_MESSAGE] < 64:
            raise LocalProtocolError("max_message limit too small")
        data = welcome.to_wire()
        self._conn.process(ConnEvent.WELCOME)
        self.accepted = welcome
        self.max_message_size = welcome.limits[Limit.MAX_MESSAGE]
        self._max_docs = welcome.limits.get(Limit.MAX_DOCS)
        self._out.append(data)

    def reject_auth(self, code: int, reason: str) -> None:
        """Refuse the token: close with ``code`` (4001 expired, 4003 invalid, 4010, 4011).

        In peer mode it may also refuse the hello (a bad certificate) before any challenge.

        Raises:
            LocalProtocolError: the connection is already open or closing.
        """
        hello_pending = (
            self._peer is not None and self._conn.state is AWAIT_AUTH and self._peer.phase is PeerPhase.HELLO
        )
        if self._conn.state is not AUTHENTICATING and not hello_pending:
            raise LocalProtocolError(f"can't reject auth when the connection is {self._conn.state.name}")
        self.close(code, reason)

    # --- answering -----------------------------------------------------------------------------------

    def send_sync(self, doc: str, update: bytes, sv: bytes, seq: int, digest: bytes | None = None) -> None:
        """Answer the oldest pending ``sub`` of ``doc`` with sync step 2; the doc becomes live.

        ``digest`` (peer mode only) summarises this side's content of the doc.

        Compute ``update`` and read ``seq`` without yielding to other work on the doc, so every
        update up to ``seq`` is in ``update`` and every later one reaches the fan-out after this
        call. (A race here is not fatal: the client sees a gap and resyncs.)

        Raises:
            LocalProtocolError: not OPEN, no pending ``sub`` of ``doc``, or invalid arguments.
        """
        self._require_open("send a sync")
        if self._docs.pending(doc) == 0:
            raise LocalProtocolError(f"no pending sub of {doc!r} to answer")
        if digest is not None and self._peer is None:
            raise LocalProtocolError("a sync carries a digest in peer mode only")
        data = _wire(lambda: Sync(doc, update, sv, seq, digest))
        self._docs.answer(doc)
        self._out.append(data)

    def ack(self, doc: str, uid: int, seq: int) -> None:
        """Tell the client its update ``uid`` is durably stored as ``seq``. Only after the commit.

        Raises:
            LocalProtocolError: not OPEN, ``uid`` not unanswered or sent for another doc.
        """
        self._require_open("ack")
        self._take_uid(doc, uid)
        data = _wire(lambda: Ack(doc, uid, seq))
        del self._unanswered[uid]
        self._out.append(data)

    def ack_stamped(
        self, doc: str, uid: int, seq: int, stamp: bytes, stamps: Sequence[tuple[int, str]]
    ) -> bool:
        """:meth:`ack` the update ``uid`` as ``seq`` together with the relay's stamp update for the
        claims it carried, stored as ``seq + 1``: one ``stamped`` message instead of ``ack`` and
        ``stamp``. Only after the commit of both. If the doc is not live on this connection the
        stamps are left out (a plain ``ack``; the client gets them from its next ``sync``).

        Returns:
            Whether the stamps were included.

        Raises:
            LocalProtocolError: not OPEN, ``uid`` not unanswered or sent for another doc, peer
                mode (a peer never stamps), or invalid arguments.
        """
        self._require_open("ack")
        self._take_uid(doc, uid)
        if self._peer is not None:
            raise LocalProtocolError("a peer never stamps: only the relay does")
        live = doc in self._docs.live
        if live:
            data = _wire(lambda: Stamped(doc, seq, stamp, tuple(stamps), uid=uid))
        else:
            data = _wire(lambda: Ack(doc, uid, seq))
        del self._unanswered[uid]
        self._out.append(data)
        return live

    def is_unanswered(self, uid: int) -> bool:
        """Whether the update ``uid`` awaits its ``ack`` or ``err`` on this open connection. O(1)."""
        return uid in self._unanswered and self._conn.state is OPEN

    def send_error(
        self,
        code: str,
        reason: str,
        doc: str | None = None,
        uid: int | None = None,
        retry: bool | None = None,
    ) -> None:
        """Send an ``err``; what it answers follows from ``doc`` and ``uid``.

        Args:
            code: an :class:`ErrorCode` (or a newer code).
            reason: for people and logs; control characters are replaced, long text cut.
            doc: with ``uid``, may be omitted (it is filled in). Without ``uid``: refuses the
                oldest pending ``sub`` of ``doc``, which ends the subscription.
            uid: the unanswered update this error answers.
            retry: defaults to the code's classification (:func:`is_retryable_error`).

        Raises:
            LocalProtocolError: not OPEN, or nothing matching ``doc``/``uid`` awaits an answer.
        """
        self._require_open("send an error")
        if uid is not None:
            doc = self._take_uid(doc, uid)
        elif doc is not None and self._docs.pending(doc) == 0:
            raise LocalProtocolError(f"a doc-level err refuses a pending sub; {doc!r} has none")
        flag = is_retryable_error(code) if retry is None else retry
        data = _wire(lambda: ErrorMessage(code, _sanitize(reason), doc, uid, flag))
        if uid is not None:
            del self._unanswered[uid]
        elif doc is not None:
            self._docs.refuse(doc)
        self._out.append(data)

    # --- fan-out -------------------------------------------------------------------------------------

    def send_live(self, doc: str, data: bytes) -> bool:
        """Queue pre-encoded live bytes (from :func:`encode_update`/:func:`encode_stamp`) if this
        connection is live on ``doc``. Returns whether they were queued. O(1), never raises."""
        if doc in self._docs.live:
            self._out.append(data)
            return True
        return False

    def send_update(self, doc: str, update: bytes, seq: int) -> bool:
        """Encode and queue one live update; the fan-out should use :meth:`send_live` instead."""
        try:
            data = encode_update(doc, update, seq)
        except CodecError as exc:
            raise LocalProtocolError(str(exc)) from exc
        return self.send_live(doc, data)

    def send_stamp(self, doc: str, seq: int, update: bytes, stamps: Sequence[tuple[int, str]]) -> bool:
        """Encode and queue one stamp message (see :meth:`send_update`). Never in peer mode."""
        if self._peer is not None:
            raise LocalProtocolError("a peer never stamps: only the relay does")
        try:
            data = encode_stamp(doc, seq, update, stamps)
        except CodecError as exc:
            raise LocalProtocolError(str(exc)) from exc
        return self.send_live(doc, data)

    # --- receiving -------------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        state = self._conn.state
        if state is AWAIT_AUTH and self._peer is not None:
            self._handle_peer_handshake(message)
            return
        if state is AWAIT_AUTH:
            if not isinstance(message, Auth):
                raise RemoteProtocolError(
                    f"the first message must be auth, not {message.TYPE}", CloseCode.PROTOCOL_VIOLATION
                )
            self._conn.process(ConnEvent.AUTH)
            self._events.append(AuthRequested(message.token, message.proof, message.proof_time))
            return
        if state is AUTHENTICATING:
            raise RemoteProtocolError(f"{message.TYPE} before welcome", CloseCode.PROTOCOL_VIOLATION)
        if isinstance(message, Subscribe):
            self._on_subscribe(message)
        elif isinstance(message, ClientUpdate):
            self._on_update(message)
        elif isinstance(message, Unsubscribe):
            if self._docs.state(message.doc) in SUBSCRIBED:
                self._docs.unsubscribe(message.doc)
                self._events.append(UnsubscribeRequested(message.doc))
            # else: idempotent; the client may not have seen our refusal yet
        elif isinstance(message, Auth):
            raise RemoteProtocolError("already authenticated", CloseCode.PROTOCOL_VIOLATION)
        else:
            raise RemoteProtocolError(
                f"{message.TYPE} is a relay-to-client message", CloseCode.PROTOCOL_VIOLATION
            )

    def _handle_peer_handshake(self, message: Message) -> None:
        assert self._peer is not None
        phase = self._peer.phase
        if phase is PeerPhase.START:
            if not isinstance(message, Hello):
                raise RemoteProtocolError(
                    f"a peer connection opens with hello, not {message.TYPE}", CloseCode.PROTOCOL_VIOLATION
                )
            self._peer.process(PeerEvent.HELLO)
            self._events.append(HelloReceived(message.nonce, message.cert))
        elif phase is PeerPhase.HELLO:
            raise RemoteProtocolError(f"{message.TYPE} before the challenge", CloseCode.PROTOCOL_VIOLATION)
        else:
            if not isinstance(message, Auth) or message.proof is None:
                raise RemoteProtocolError(
                    "after the challenge a peer sends auth with a proof", CloseCode.PROTOCOL_VIOLATION
                )
            self._conn.process(ConnEvent.AUTH)
            self._events.append(AuthRequested(message.token, message.proof))

    def _on_subscribe(self, message: Subscribe) -> None:
        doc = message.doc
        new = self._docs.state(doc) not in SUBSCRIBED
        if new and self._max_docs is not None and self._docs.count_subscribed() >= self._max_docs:
            # Answered here, so the shell never sees it; counted like any sub so both sides agree.
            # (A re-sub of a DRAINING doc may still go live through an older answer; both sides
            # then agree on that too, and the overshoot is bounded by the unsubscribes in flight.)
            self._docs.subscribe(doc)
            self._docs.refuse(doc)
            self._out.append(
                ErrorMessage(
                    ErrorCode.TOO_MANY_DOCS,
                    f"at most {self._max_docs} documents per connection",
                    doc,
                    None,
                    False,
                ).to_wire()
            )
            return
        self._docs.subscribe(doc)
        self._events.append(SubscribeRequested(doc, message.sv))

    def _on_update(self, message: ClientUpdate) -> None:
        doc, uid = message.doc, message.uid
        if uid in self._unanswered:
            raise RemoteProtocolError(
                f"update {uid} sent again before its answer", CloseCode.PROTOCOL_VIOLATION
            )
        if self._docs.state(doc) not in (SYNCING, LIVE):
            self._out.append(
                ErrorMessage(
                    ErrorCode.NOT_SUBSCRIBED, f"subscribe to {doc} before sending updates", doc, uid, True
                ).to_wire()
            )
            return
        self._unanswered[uid] = doc
        self._events.append(UpdateSubmitted(doc, uid, message.update))

    def _take_uid(self, doc: str | None, uid: int) -> str:
        owner = self._unanswered.get(uid)
        if owner is None:
            raise LocalProtocolError(f"update {uid} is not awaiting an answer")
        if doc is not None and doc != owner:
            raise LocalProtocolError(f"update {uid} was sent for {owner!r}, not {doc!r}")
        return owner
