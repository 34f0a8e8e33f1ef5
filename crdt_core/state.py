"""The sync session's state machines, as tables.

Theory of operation
-------------------
Two machines describe a connection, in the manner of h11's ``_state.py``.

Rule 1: every state and every transition lives in this file. ``protocol.py`` decides *which*
event a message or a call means; only this file decides what that event does to the state, and an
event that the table does not list raises :class:`LocalProtocolError` before anything changes.

Rule 2: this file does not know which role it plays. The client and the relay run the *same*
tables. The client fires ``SUB``/``UNSUB`` when it sends and ``ANSWER``/``REFUSE`` when it
receives; the relay fires ``SUB``/``UNSUB`` when it receives and ``ANSWER``/``REFUSE`` when it
sends. Both see the answers in the same order (one ordered connection), so once the connection is
quiet both sides agree on every document's state without any extra handshake.

The connection machine::

    AWAIT_AUTH --AUTH--> AUTHENTICATING --WELCOME--> OPEN
         any state but CLOSED --CLOSE--> CLOSING --EOF--> CLOSED   (EOF also from any other state)

A side that learns the token from the HTTP header starts in AUTHENTICATING: the auth message is
skipped, the welcome is not.

The document machine, one per doc id, with ``pending`` = subscriptions not yet answered::

    ABSENT ---SUB---> SYNCING ---ANSWER (last pending)---> LIVE ---GAP---> STALE
                         |  ---REFUSE (last pending)---> ABSENT
                         '---UNSUB---> DRAINING ---ANSWER/REFUSE (last)---> ABSENT

Why count pending subscriptions: every ``sub`` gets exactly one answer (``sync`` or a doc-level
``err``), but a client may unsubscribe and subscribe again before the first answer arrives. The
answers carry no request id, so each side counts them. DRAINING is the tombstone of an
unsubscribed doc whose answers are still in flight; answers it absorbs are dropped, and a new
``SUB`` continues counting from it. ``SUB`` while SYNCING or LIVE restarts the exchange (a
resync after a gap); the doc is not LIVE again until every pending answer has arrived.

STALE is only ever reached on the client: it saw a gap in the sequence numbers and must resync.
The relay never fires ``GAP``.

The peer handshake machine (peer mode only, docs/peer.md), run inside AWAIT_AUTH before the
``auth`` message, by both roles in the same way (the dialer fires ``HELLO`` when it sends the
``hello`` and ``CHALLENGE`` when it receives the ``challenge``; the acceptor the other way round)::

    START --HELLO--> HELLO --CHALLENGE--> CHALLENGED

The connection's ``AUTH`` event is allowed in peer mode only from CHALLENGED: a token is never
sent to, nor accepted from, a side that has not proven possession of its device key yet.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Final

from crdt_core.errors import LocalProtocolError

__all__ = [
    "CONN_TRANSITIONS",
    "DOC_TRANSITIONS",
    "ConnEvent",
    "ConnState",
    "ConnectionMachine",
    "DocEvent",
    "DocMachine",
    "DocState",
    "PEER_TRANSITIONS",
    "PeerEvent",
    "PeerMachine",
    "PeerPhase",
]


class ConnState(enum.Enum):
    AWAIT_AUTH = "AWAIT_AUTH"
    AUTHENTICATING = "AUTHENTICATING"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


class ConnEvent(enum.Enum):
    AUTH = "AUTH"
    WELCOME = "WELCOME"
    CLOSE = "CLOSE"
    EOF = "EOF"


AWAIT_AUTH: Final = ConnState.AWAIT_AUTH
AUTHENTICATING: Final = ConnState.AUTHENTICATING
OPEN: Final = ConnState.OPEN
CLOSING: Final = ConnState.CLOSING
CLOSED: Final = ConnState.CLOSED

CONN_TRANSITIONS: Final[dict[ConnState, dict[ConnEvent, ConnState]]] = {
    AWAIT_AUTH: {ConnEvent.AUTH: AUTHENTICATING, ConnEvent.CLOSE: CLOSING, ConnEvent.EOF: CLOSED},
    AUTHENTICATING: {ConnEvent.WELCOME: OPEN, ConnEvent.CLOSE: CLOSING, ConnEvent.EOF: CLOSED},
    OPEN: {ConnEvent.CLOSE: CLOSING, ConnEvent.EOF: CLOSED},
    CLOSING: {ConnEvent.EOF: CLOSED},
    CLOSED: {},
}


class ConnectionMachine:
    """The connection's state; only :meth:`process` changes it."""

    __slots__ = ("state",)

    def __init__(self, initial: ConnState = AWAIT_AUTH) -> None:
        if initial not in (AWAIT_AUTH, AUTHENTICATING):
            raise LocalProtocolError(f"a connection cannot start in {initial.name}")
        self.state: ConnState = initial

    def allows(self, event: ConnEvent) -> bool:
        return event in CONN_TRANSITIONS[self.state]

    def process(self, event: ConnEvent) -> ConnState:
        """Apply ``event``.

        Raises:
            LocalProtocolError: the table has no such transition; the state is unchanged.
        """
        target = CONN_TRANSITIONS[self.state].get(event)
        if target is None:
            raise LocalProtocolError(f"can't handle {event.name} when the connection is {self.state.name}")
        self.state = target
        return target


class DocState(enum.Enum):
    ABSENT = "ABSENT"
    SYNCING = "SYNCING"
    LIVE = "LIVE"
    STALE = "STALE"
    DRAINING = "DRAINING"


class DocEvent(enum.Enum):
    SUB = "SUB"
    #: A ``sync`` answered a subscription and others are still pending.
    ANSWER_MORE = "ANSWER_MORE"
    #: A ``sync`` answered the last pending subscription.
    ANSWER_LAST = "ANSWER_LAST"
    REFUSE_MORE = "REFUSE_MORE"
    REFUSE_LAST = "REFUSE_LAST"
    UNSUB = "UNSUB"
    GAP = "GAP"


ABSENT: Final = DocState.ABSENT
SYNCING: Final = DocState.SYNCING
LIVE: Final = DocState.LIVE
STALE: Final = DocState.STALE
DRAINING: Final = DocState.DRAINING

_SUB, _UNSUB, _GAP = DocEvent.SUB, DocEvent.UNSUB, DocEvent.GAP
_A_MORE, _A_LAST = DocEvent.ANSWER_MORE, DocEvent.ANSWER_LAST
_R_MORE, _R_LAST = DocEvent.REFUSE_MORE, DocEvent.REFUSE_LAST

DOC_TRANSITIONS: Final[dict[DocState, dict[DocEvent, DocState]]] = {
    ABSENT: {_SUB: SYNCING},
    SYNCING: {
        _SUB: SYNCING,
        _A_MORE: SYNCING,
        _A_LAST: LIVE,
        _R_MORE: SYNCING,
        _R_LAST: ABSENT,
        _UNSUB: DRAINING,
    },
    LIVE: {_SUB: SYNCING, _UNSUB: ABSENT, _GAP: STALE},
    STALE: {_SUB: SYNCING, _UNSUB: ABSENT},
    DRAINING: {_SUB: SYNCING, _A_MORE: DRAINING, _A_LAST: ABSENT, _R_MORE: DRAINING, _R_LAST: ABSENT},
}

#: States in which the doc is subscribed (the peer holds a subscription for it).
SUBSCRIBED: Final = frozenset({SYNCING, LIVE, STALE})


class _Doc:
    __slots__ = ("state", "pending", "last_seq")

    def __init__(self) -> None:
        self.state = ABSENT
        self.pending = 0
        #: The client's cursor while LIVE; the table never reads it.
        self.last_seq: int | None = None


class DocMachine:
    """Every document's state on one connection.

    The set of LIVE docs is kept as a plain ``set`` so the relay's fan-out asks "is this
    connection live on this doc?" with one hash lookup.
    """

    __slots__ = ("_docs", "live", "_pending_total", "_subscribed_total")

    def __init__(self) -> None:
        self._docs: dict[str, _Doc] = {}
        self.live: set[str] = set()
        # Running totals, so the questions the shell asks after every message stay O(1).
        self._pending_total = 0
        self._subscribed_total = 0

    def state(self, doc: str) -> DocState:
        entry = self._docs.get(doc)
        return ABSENT if entry is None else entry.state

    def pending(self, doc: str) -> int:
        entry = self._docs.get(doc)
        return 0 if entry is None else entry.pending

    def last_seq(self, doc: str) -> int | None:
        entry = self._docs.get(doc)
        return None if entry is None else entry.last_seq

    def set_last_seq(self, doc: str, seq: int) -> None:
        entry = self._docs.get(doc)
        if entry is None or entry.state is not LIVE:
            raise LocalProtocolError(f"{doc!r} is not LIVE; it has no sequence cursor")
        entry.last_seq = seq

    def subscribed(self) -> Iterator[str]:
        return (doc for doc, entry in self._docs.items() if entry.state in SUBSCRIBED)

    def count_subscribed(self) -> int:
        return self._subscribed_total

    def any_pending(self) -> bool:
        return self._pending_total > 0

    # --- transitions ---------------------------------------------------------------------------------

    def subscribe(self, doc: str) -> DocState:
        return self._fire(doc, _SUB, +1)

    def unsubscribe(self, doc: str) -> DocState:
        return self._fire(doc, _UNSUB, 0)

    def answer(self, doc: str) -> DocState:
        """A ``sync`` answered the oldest pending subscription of ``doc``."""
        return self._fire(doc, _A_LAST if self.pending(doc) == 1 else _A_MORE, -1)

    def refuse(self, doc: str) -> DocState:
        """A doc-level ``err`` refused the oldest pending subscription of ``doc``."""
        return self._fire(doc, _R_LAST if self.pending(doc) == 1 else _R_MORE, -1)

    def gap(self, doc: str) -> DocState:
        return self._fire(doc, _GAP, 0)

    def _fire(self, doc: str, event: DocEvent, pending_delta: int) -> DocState:
        entry = self._docs.get(doc)
        state = ABSENT if entry is None else entry.state
        target = DOC_TRANSITIONS[state].get(event)
        if target is None:
            raise LocalProtocolError(f"can't handle {event.name} for {doc!r} in state {state.name}")
        # Everything that can fail has been checked; from here on the change is applied whole.
        if entry is None:
            entry = self._docs[doc] = _Doc()
        entry.pending += pending_delta
        self._pending_total += pending_delta
        self._subscribed_total += (target in SUBSCRIBED) - (state in SUBSCRIBED)
        entry.state = target
        if target is not LIVE:
            entry.last_seq = None
            self.live.discard(doc)
        else:
            self.live.add(doc)
        if target is ABSENT:
            del self._docs[doc]
        return target

    def clear(self) -> None:
        """Forget every document: the connection is closing and nothing more is sent."""
        self._docs.clear()
        self.live.clear()
        self._pending_total = self._subscribed_total = 0


class PeerPhase(enum.Enum):
    START = "START"
    HELLO = "HELLO"
    CHALLENGED = "CHALLENGED"


class PeerEvent(enum.Enum):
    HELLO = "HELLO"
    CHALLENGE = "CHALLENGE"


PEER_TRANSITIONS: Final[dict[PeerPhase, dict[PeerEvent, PeerPhase]]] = {
    PeerPhase.START: {PeerEvent.HELLO: PeerPhase.HELLO},
    PeerPhase.HELLO: {PeerEvent.CHALLENGE: PeerPhase.CHALLENGED},
    PeerPhase.CHALLENGED: {},
}


class PeerMachine:
    """Where a peer-mode connection is in the mutual-proof handshake; only :meth:`process` changes it."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = PeerPhase.START

    def allows(self, event: PeerEvent) -> bool:
        return event in PEER_TRANSITIONS[self.phase]

    def process(self, event: PeerEvent) -> PeerPhase:
        """Apply ``event``.

        Raises:
            LocalProtocolError: the table has no such transition; the phase is unchanged.
        """
        target = PEER_TRANSITIONS[self.phase].get(event)
        if target is None:
            raise LocalProtocolError(f"can't handle {event.name} in peer handshake phase {self.phase.name}")
        self.phase = target
        return target
