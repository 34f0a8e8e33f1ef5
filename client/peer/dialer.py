"""Peer sync with no relay: ``quickslot peer sync ws://HOST:P`` dials a ``quickslot peer serve``.

Why it is shaped this way (docs/peer.md is the full story):

* **The relay's protocol, in peer mode.** The dialer runs crdt_core's ``ClientProtocol`` and the
  acceptor (:mod:`client.peer.server`) its ``RelayProtocol``, both with ``peer=True``: the same
  codec, the same sub/sync/upd/ack exchange and state tables, plus a mutual proof-of-possession
  handshake (:mod:`client.peer.auth`). A peer never stamps and its acks mean "stored by that
  peer": the dialer's outbox is never touched by a peer's ack, so every local change still goes
  to the relay, which alone makes a booking final.
* **One exchange, both directions.** The dialer subscribes the documents both sides carry (its own
  selective-sync set, plus what the acceptor offers that it carries); each ``sync`` answer brings
  what the acceptor had and the dialer lacked, and the dialer answers with what the acceptor
  lacks, split per writer (:func:`client.peer.data.split_by_writer`) so one refusal refuses one
  author's transaction, not the bundle.
* **Store-and-forward.** Everything stored from a peer is validated by crdt_core like anything
  from the relay, queued as ``forward`` outbox entries for the relay, and subscribed, so the
  next relay sync delivers it (the relay stamps it, whoever carried it) and brings the stamps
  back to pass on to the next peer.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection

from client.local.client import LocalClient
from client.peer.auth import (
    PeerAuthError,
    PeerCredentials,
    PeerVerifier,
    Scope,
    may_share,
    new_nonce,
    transcript,
)
from client.peer.data import PeerApply, apply_from_peer, content_digest, split_by_writer
from client.peer.wire import (
    PeerError,
    PeerIsARelay,
    PeerProtocolError,
    PeerRefusedUs,
    PeerUnreachable,
    PeerUntrusted,
    Wire,
    closed_error,
)
from crdt_core.certs import Certificate
from crdt_core.engine import EMPTY_UPDATE, parse_state_vector
from crdt_core.errors import LocalProtocolError
from crdt_core.messages import DEFAULT_MAX_DOWNLOAD, CloseCode
from crdt_core.protocol import (
    Acked,
    ChallengeReceived,
    ClientEvent,
    ClientProtocol,
    ConnState,
    DocState,
    DocSynced,
    ErrorReceived,
    GapDetected,
    UpdateReceived,
    Welcomed,
)

__all__ = [
    "PeerError",
    "PeerLink",
    "PeerProtocolError",
    "PeerRefusedUs",
    "PeerSummary",
    "PeerUnreachable",
    "PeerUntrusted",
    "peer_sync",
]

_E = TypeVar("_E")
#: A state vector claiming nothing: subscribing with it fetches the whole document.
EMPTY_STATE_VECTOR = b"\x00"


@dataclass
class PeerSummary:
    """What one :func:`peer_sync` did."""

    peer_url: str
    peer_user: str = ""
    peer_shops: dict[str, str] = field(default_factory=dict)
    """The shops the peer's certificate makes it owner or staff of: ``shop -> role``."""
    docs: list[str] = field(default_factory=list)
    refused_docs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Documents the peer does not share with us: ``doc -> (code, reason)``."""
    received: int = 0
    """Updates (one per author transaction) stored here from the peer."""
    sent: int = 0
    """Updates of ours the peer stored (acked)."""
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    """``(doc, code, reason)`` of ours the peer refused."""
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    """``(doc, code, reason)`` of the peer's we refused (validation, equivocation)."""
    diverged: list[str] = field(default_factory=list)
    """Documents whose state vectors agree but whose contents do not (equivocation)."""
    duration_s: float = 0.0


class PeerLink:
    """The dialer's connection to a peer: connect, prove both sides, then the sync exchange.

    Tests drive it step by step (:meth:`handshake`, then ``proto`` and :meth:`events`).
    """

    def __init__(self, url: str, ws: ClientConnection, timeout_s: float) -> None:
        self.url = url
        self.proto = ClientProtocol(peer=True, max_message_size=DEFAULT_MAX_DOWNLOAD)
        self.wire = Wire(ws, self.proto)
        self.timeout_s = timeout_s
        self.peer_cert: Certificate | None = None
        self.welcome: Welcomed | None = None

    @classmethod
    async def connect(cls, url: str, timeout_s: float = 10.0) -> PeerLink:
        """Open the websocket. Raises :class:`PeerUnreachable`."""
        try:
            ws = await websockets.connect(
                url, max_size=DEFAULT_MAX_DOWNLOAD, open_timeout=timeout_s, ping_interval=20, compression=None
            )
        except websockets.InvalidStatus as exc:
            # A peer's server never answers the upgrade with an HTTP status; a relay (or any web
            # server) does, e.g. 404 for a path that is not its websocket.
            if await relay_answers(url):
                raise PeerIsARelay(not_a_peer(url)) from exc
            raise PeerUnreachable(
                f"{url} is not a peer: it answered HTTP {exc.response.status_code}"
            ) from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise PeerUnreachable(f"cannot reach the peer at {url}: {why_unreachable(url, exc)}") from exc
        return cls(url, ws, timeout_s)

    async def events(self, timeout_s: float | None = None) -> list[ClientEvent]:
        """Wait for the next message, feed it to the machine and return its events.

        Raises:
            PeerError: the connection ended (by the peer, or by us after a violation).
            TimeoutError: nothing arrived in time.
        """
        try:
            data = await asyncio.wait_for(self.wire.ws.recv(), timeout_s or self.timeout_s)
        except websockets.ConnectionClosed as exc:
            self.proto.receive_eof()
            rcvd = exc.rcvd
            raise closed_error(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None
        if isinstance(data, str):
            self.proto.close(CloseCode.PROTOCOL_VIOLATION, "text messages are not part of the protocol")
        else:
            self.proto.receive_message(data)
        await self.wire.flush()
        if self.proto.state in (ConnState.CLOSING, ConnState.CLOSED):
            code, reason = self.proto.close_code, self.proto.close_reason
            raise PeerProtocolError(f"closed the connection: {code} {reason}", code)
        return self.proto.events_received()

    async def _expect(self, kind: type[_E]) -> _E:
        while True:
            for event in await self.events():
                if isinstance(event, kind):
                    return event
                await self.close(CloseCode.PROTOCOL_VIOLATION, f"unexpected {type(event).__name__}")
                raise PeerProtocolError(f"the peer sent {type(event).__name__} during the handshake")

    async def _untrusted(self, exc: PeerAuthError) -> PeerUntrusted:
        await self.close(exc.close_code, exc.reason)
        return PeerUntrusted(f"the peer at {self.url} failed our checks: {exc.reason}", exc.close_code)

    async def handshake(self, creds: PeerCredentials, verifier: PeerVerifier) -> Welcomed:
        """hello → challenge (the acceptor proves itself) → auth (we prove) → welcome (its token).

        Raises:
            PeerUntrusted: the acceptor's certificate, proof or token failed (we closed 4003/4001).
            PeerRefusedUs: the acceptor refused ours.
        """
        nonce = new_nonce()
        mine = creds.certificate.cert_id
        self.proto.hello(nonce, creds.device.certificate)
        await self.wire.flush()
        try:
            challenge = await self._expect(ChallengeReceived)
        except PeerError as exc:
            # A relay's sync websocket takes the connection, then closes it at our peer hello.
            if await relay_answers(self.url):
                raise PeerIsARelay(not_a_peer(self.url)) from exc
            raise
        try:
            cert = verifier.certificate(challenge.cert)
            signed = transcript("acceptor", nonce, challenge.nonce, mine, cert.cert_id)
            verifier.proof(cert, signed, challenge.proof)
        except PeerAuthError as exc:
            raise await self._untrusted(exc) from None
        self.proto.authenticate(
            creds.token, creds.sign(transcript("dialer", nonce, challenge.nonce, mine, cert.cert_id))
        )
        await self.wire.flush()
        welcome = await self._expect(Welcomed)
        try:
            if welcome.token is None:
                raise PeerAuthError(CloseCode.AUTH_FAILED, "the peer presented no token")
            verifier.token(welcome.token, cert)
            if welcome.user != creds.user_id:  # as in a relay's welcome: who *we* are to the peer
                raise PeerAuthError(CloseCode.AUTH_FAILED, "the welcome names another user")
        except PeerAuthError as exc:
            raise await self._untrusted(exc) from None
        self.peer_cert = cert
        self.welcome = welcome
        return welcome

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        await self.wire.close(code, reason)


async def _apply(local: LocalClient, updates: list[tuple[str, bytes]], summary: PeerSummary) -> PeerApply:
    report = await apply_from_peer(local, updates)
    summary.received += report.applied
    summary.refused.extend(report.refused)
    held = set(await local.subscribed_docs())
    for doc in sorted(report.stored_docs - held):
        await local.subscribe(doc, "peer")  # keep it current at the relay, to pass the stamps on
    return report


def not_a_peer(url: str) -> str:
    return (
        f"{url} is a relay, not a peer: `quickslot sync` syncs with a relay; `peer sync` needs the "
        "ws:// URL a `quickslot peer serve` prints"
    )


def why_unreachable(url: str, exc: BaseException) -> str:
    """A connection failure in words (some, TLS ones above all, have an empty message)."""
    text = str(exc) or type(exc).__name__
    if url.startswith("wss://") and isinstance(exc, ssl.SSLError | ConnectionResetError | EOFError):
        return f"the TLS handshake failed ({text}); a `quickslot peer serve` speaks plain ws://, try that"
    return text


async def relay_answers(url: str) -> bool:
    """Whether the host of ``url`` answers as a relay does (``GET /healthz``, briefly)."""
    import httpx  # only when a dial failed

    parts = urlsplit(url)
    base = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2.0, verify=False) as http:
            answer = await http.get("/healthz")
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and "json" in answer.headers.get("content-type", "")


async def peer_sync(
    local: LocalClient,
    url: str,
    *,
    timeout_s: float = 30.0,
    now_ms: Callable[[], int] | None = None,
    credentials: PeerCredentials | None = None,
) -> PeerSummary:
    """One exchange with the peer at ``url``: both directions, every document both carry.

    Raises:
        PeerAuthError: our own credentials are unusable (not logged in, certificate expired).
        PeerUnreachable, PeerRefusedUs, PeerUntrusted, PeerProtocolError: see each.
    """
    started = time.monotonic()
    creds = credentials or await PeerCredentials.load(local, None if now_ms is None else now_ms())
    verifier = PeerVerifier(creds, now_ms)
    summary = PeerSummary(url)
    link = await PeerLink.connect(url, min(timeout_s, 10.0))
    try:
        welcome = await link.handshake(creds, verifier)
        assert link.peer_cert is not None
        theirs = summary.peer_user = link.peer_cert.user_id
        summary.peer_shops = {s: "staff" for s in link.peer_cert.staff_of}
        summary.peer_shops.update({s: "owner" for s in link.peer_cert.owner_of})
        own = await local.subscribed_docs()
        mine = Scope.of_certificate(creds.certificate, own)
        wanted = [d for d in dict.fromkeys([*own, *welcome.docs]) if may_share(d, mine, theirs) is None]
        await _Exchange(local, link, summary, started + timeout_s).run(wanted)
        await link.close(CloseCode.NORMAL, "peer sync done")
    except TimeoutError as exc:
        await link.close(CloseCode.GOING_AWAY, "timed out")
        raise PeerUnreachable(f"the peer at {url} did not answer in time") from exc
    except BaseException:
        await link.close(CloseCode.GOING_AWAY, "")
        raise
    summary.duration_s = time.monotonic() - started
    return summary


class _Exchange:
    """The dialer's side of the sync exchange, in rounds.

    Round 1 subscribes every wanted doc: apply the answer, send back what the acceptor lacks.
    Round 2 re-subscribes the docs that changed, to compare state vectors and content digests:
    equal state vectors with different digests mean someone signed two versions of one Yjs id
    (equivocation). Then both whole documents are exchanged once, so each side's
    ``find_equivocation`` names the culprit and refuses it, instead of diverging silently.
    """

    def __init__(self, local: LocalClient, link: PeerLink, summary: PeerSummary, deadline: float) -> None:
        self.local = local
        self.link = link
        self.proto = link.proto
        self.summary = summary
        self.deadline = deadline
        self.phase: dict[str, str] = {}
        self.verify: list[str] = []
        self.next_uid = 1

    async def run(self, wanted: list[str]) -> None:
        for doc in wanted:
            self.phase[doc] = "first"
            self.proto.subscribe(doc, await self.local.state_vector(doc))
        await self._round(wanted)
        if self.verify:
            docs, self.verify = self.verify, []
            for doc in docs:
                if self.proto.doc_state(doc) is DocState.LIVE:
                    self.phase[doc] = "verify"
                    self.proto.resync(doc, await self.local.state_vector(doc))
            await self._round(docs)

    def _done(self, docs: list[str]) -> bool:
        waiting = (DocState.SYNCING, DocState.STALE)
        return not self.proto.pending_uids and all(self.proto.doc_state(d) not in waiting for d in docs)

    async def _round(self, docs: list[str]) -> None:
        """Handle the answers until every ``sub`` and every update of ours is answered."""
        await self.link.wire.flush()
        while not self._done(docs):
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            live: list[tuple[str, bytes]] = []
            for event in await self.link.events(remaining):
                if isinstance(event, UpdateReceived):
                    live.append((event.doc, event.update))  # another peer's, fanned out to us
                elif isinstance(event, DocSynced):
                    await self._synced(event)
                elif isinstance(event, Acked):
                    self.summary.sent += 1
                elif isinstance(event, ErrorReceived):
                    if event.uid is not None and event.doc is not None:
                        self.summary.rejected.append((event.doc, event.code, event.reason))
                    elif event.doc is not None:
                        self.summary.refused_docs[event.doc] = (event.code, event.reason)
                elif isinstance(event, GapDetected):
                    self.proto.resync(event.doc, await self.local.state_vector(event.doc))
            if live:
                await _apply(self.local, live, self.summary)
            await self.link.wire.flush()

    def _send(self, doc: str, update: bytes) -> None:
        try:
            self.proto.send_update(doc, self.next_uid, update)
        except LocalProtocolError as exc:
            self.summary.rejected.append((doc, "too_big", str(exc)))
        self.next_uid += 1

    async def _synced(self, event: DocSynced) -> None:
        doc, phase = event.doc, self.phase.get(event.doc, "first")
        if doc not in self.summary.docs:
            self.summary.docs.append(doc)
        await _apply(self.local, [(doc, event.update)], self.summary)
        if phase == "first":
            diff = await self.local.diff(doc, event.relay_sv)
            parts = split_by_writer(diff) if diff != EMPTY_UPDATE else []
            for part in parts:
                self._send(doc, part)
            if parts or event.update != EMPTY_UPDATE:
                self.verify.append(doc)  # compare once both sides hold the union
            else:
                await self._compare(event)
        elif phase == "verify":
            await self._compare(event)
        # phase "full": the acceptor's whole document went through find_equivocation in _apply

    async def _compare(self, event: DocSynced) -> None:
        doc = event.doc
        ours = parse_state_vector(await self.local.state_vector(doc))
        if event.digest is None or parse_state_vector(event.relay_sv) != ours:
            return  # nothing to conclude: one side refused something, or more arrived meanwhile
        if event.digest == await self.local.inspect(doc, content_digest):
            return
        self.summary.diverged.append(doc)
        self.phase[doc] = "full"
        self.proto.resync(doc, EMPTY_STATE_VECTOR)  # the acceptor's whole doc, checked here
        self._send(doc, await self.local.inspect(doc, lambda replica: replica.encode_state()))


def describe(summary: PeerSummary) -> dict[str, Any]:
    """The ``--json`` form of a summary (``client.cli.schemas.SCHEMAS["peer sync"]``, without events)."""

    def rows(items: list[tuple[str, str, str]]) -> list[dict[str, str]]:
        return [{"doc": d, "code": c, "reason": r} for d, c, r in items]

    return {
        "peer": summary.peer_url,
        "peer_user": summary.peer_user,
        "docs": sorted(summary.docs),
        "refused_docs": [
            {"doc": d, "code": code, "reason": reason}
            for d, (code, reason) in sorted(summary.refused_docs.items())
        ],
        "received": summary.received,
        "sent": summary.sent,
        "rejected": rows(summary.rejected),
        "refused": rows(summary.refused),
        "diverged": sorted(summary.diverged),
    }
