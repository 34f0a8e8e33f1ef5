"""Peer sync with no relay: real websockets on loopback, real SQLite profiles, a real relay process.

Three layers, each with what only it can show:

* the sans-I/O machines in peer mode (handshake order, no stamps, digests only between peers);
* in-process peers (a :class:`PeerServer` and :func:`peer_sync` over real websockets) whose
  credentials come from a deterministic relay key (``tests.support.crdt_factory.World``), so expired,
  foreign, stolen and mismatched credentials, forged updates and equivocation are cheap to make;
* the must-show story with real processes: ``quickslot peer serve`` on the shop's tablet,
  ``quickslot peer sync`` from the customer's phone while the relay is down, then only the tablet
  reaches the relay, which stamps the booking; the phone learns it later from the relay, and its
  own queued copy is acknowledged as already delivered.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from client.cli.schemas import SCHEMAS
from client.local.client import LocalClient
from client.local.events import BookingConfirmed
from client.peer.auth import PeerAuthError, PeerCredentials, PeerVerifier, Scope, offer
from client.peer.data import content_digest, find_equivocation, split_by_writer
from client.peer.dialer import (
    PeerLink,
    PeerRefusedUs,
    PeerUntrusted,
    peer_sync,
)
from client.peer.server import PeerServer
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, SigningKey, parse_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import CodecError, LocalProtocolError
from crdt_core.messages import (
    Auth,
    Challenge,
    CloseCode,
    ErrorCode,
    Hello,
    Stamp,
    Sync,
    Welcome,
    decode,
)
from crdt_core.pop import cnf_claim
from crdt_core.protocol import (
    Acked,
    AuthRequested,
    ChallengeReceived,
    ClientProtocol,
    ConnState,
    DocSynced,
    ErrorReceived,
    HelloReceived,
    RelayProtocol,
    UpdateReceived,
    Welcomed,
)
from crdt_core.schema import DocId, Reservation
from crdt_core.yupdate import decode_update
from tests.client.test_cli import check
from tests.support.clients import FakeRelay, close_all, open_profile, pull, push
from tests.support.crdt_factory import World, fixed_seed_key
from tests.support.relay_process import (
    PASSWORD,
    QUICK_ACCOUNT_EVENTS,
    REPO,
    FixedPortRelay,
    _env,
    applied_by_relay,
    cli_json,
    free_port,
    serving_fixed_port_relay,
    unique_email,
)
from tests.support.sync_helpers import seed_categories

SHOP = "peershop"
SLOT = "cut-10"
DAY = (_dt.date.today() + _dt.timedelta(days=30)).isoformat()
BOOKINGS = f"bookings:{SHOP}:{DAY}"
ISSUER, AUDIENCE = "quickslot-relay", "quickslot-sync"


@pytest.fixture(autouse=True)
async def _close_profiles() -> AsyncIterator[None]:
    yield
    await close_all()


# --- credentials minted like the relay mints them ---------------------------------------------------


def own_replica(author: Author, generation: int = 0) -> Replica:
    """An empty document under ``author``'s own client id (``crdt_core.clientids``)."""
    return Replica(client_id_for(author.device.cert_id, generation))


def now_ms() -> int:
    return int(time.time() * 1000)


def mint_token(
    world: World,
    user: str,
    *,
    iat_s: int | None = None,
    ttl_s: int = 1800,
    signer: SigningKey | None = None,
    issuer: str = ISSUER,
    typ: str = "access",
    cnf: dict[str, Any] | None = None,
) -> str:
    """An access token exactly as ``relay.auth.tokens.TokenService.issue`` writes one (``cnf``: bound)."""
    key = signer or world.relay
    iat = int(time.time()) if iat_s is None else iat_s
    claims: dict[str, Any] = {
        "iss": issuer, "aud": AUDIENCE, "sub": user, "iat": iat, "nbf": iat, "exp": iat + ttl_s,
        "jti": uuid.uuid4().hex, "fam": "fam-" + user, "typ": typ,
    }  # fmt: skip
    if cnf is not None:
        claims["cnf"] = cnf
    header_typ = "at+jwt" if typ == "access" else "rt+jwt"
    return jwt.encode(claims, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": header_typ})


def credentials(world: World, author: Author, token: str) -> PeerCredentials:
    """Credentials built by hand, to present what a dishonest or stale peer would."""
    cert = parse_certificate(author.device.certificate, world.trusted | {"other-k": OTHER.relay.public})
    return PeerCredentials(cert.user_id, author.device, cert, token, world.trusted, ISSUER, AUDIENCE)


OTHER = World(relay=SigningKey("other-k", fixed_seed_key(2)), now_ms=now_ms())


async def profile(
    tmp: Path, world: World, user: str, clock_ms: int | None = None, **rights: Any
) -> LocalClient:
    """A logged-in profile: certificate, cached relay keys and an access token in its secret store."""
    at = world.now_ms if clock_ms is None else clock_ms
    client = await open_profile(tmp / user, world, user, clock_ms=at, **rights)
    client.secrets.set_tokens(mint_token(world, user), "refresh-" + user)
    return client


async def shop_setup(tmp: Path, world: World) -> tuple[FakeRelay, LocalClient, LocalClient, LocalClient]:
    """An owner with a shop and a slot of 2 seats; two customers who hold the shop's documents."""
    relay = FakeRelay(world)
    admin = await profile(tmp, world, "u-admin", roles=["admin"])
    await admin.add_category("hair", "Hair")
    await push(admin, relay)
    owner = await profile(tmp, world, "u-owner", owner_of=[SHOP])
    await pull(owner, relay, ["catalog"])
    await owner.create_shop(SHOP, name="Peer Cuts", category="hair", location="Main St", lat=1.0, lon=2.0)
    await owner.add_slot(SHOP, SLOT, service="haircut", start="10:00", duration=30, capacity=2)
    await push(owner, relay)
    customers = []
    for name in ("u-alice", "u-bob"):
        customer = await profile(tmp, world, name)
        await customer.follow(SHOP)
        await pull(customer, relay, ["catalog", f"shop:{SHOP}"])
        customers.append(customer)
    return relay, owner, customers[0], customers[1]


@pytest.fixture
def world() -> World:
    # The real clock: pyjwt checks a token's iat against it, and so does the peer's verifier.
    return World(now_ms=now_ms())


# --- the sans-I/O machines in peer mode ----------------------------------------------------------------


def move(src: ClientProtocol | RelayProtocol, dst: ClientProtocol | RelayProtocol) -> list[Any]:
    for data in src.data_to_send():
        dst.receive_message(data)
    return list(dst.events_received())


def test_peer_handshake_order_and_no_stamps() -> None:
    dialer, acceptor = ClientProtocol(peer=True), RelayProtocol(peer=True)
    with pytest.raises(LocalProtocolError):
        dialer.authenticate("tok", b"p" * 64)  # no token before the acceptor proved itself
    dialer.hello(b"n" * 32, b"cert")
    assert move(dialer, acceptor) == [HelloReceived(b"n" * 32, b"cert")]
    acceptor.challenge(b"m" * 32, b"cert2", b"q" * 64)
    assert move(acceptor, dialer) == [ChallengeReceived(b"m" * 32, b"cert2", b"q" * 64)]
    with pytest.raises(LocalProtocolError):
        dialer.authenticate("tok")  # a peer's auth needs its proof
    dialer.authenticate("tok", b"p" * 64)
    assert move(dialer, acceptor) == [AuthRequested("tok", b"p" * 64)]
    acceptor.accept_auth("u-d", "peer-x", "peer/test", {}, token="tok2", docs=["catalog"])
    (welcome,) = move(acceptor, dialer)
    assert isinstance(welcome, Welcomed) and (welcome.token, welcome.docs) == ("tok2", ("catalog",))
    assert dialer.state is acceptor.state is ConnState.OPEN
    with pytest.raises(LocalProtocolError, match="never stamps"):
        acceptor.send_stamp("d", 1, b"\0\0", [])
    dialer.subscribe(BOOKINGS, b"\0")
    move(dialer, acceptor)
    acceptor.send_sync(BOOKINGS, b"\0\0", b"\0", 0, b"digest")
    (synced,) = move(acceptor, dialer)
    assert isinstance(synced, DocSynced) and synced.digest == b"digest"
    # A stamp from a peer is a protocol violation, however it got on the wire.
    dialer.receive_message(Stamp(BOOKINGS, 1, b"\0\0", ((1, "r1"),)).to_wire())
    assert dialer.close_code == CloseCode.PROTOCOL_VIOLATION and "never stamps" in dialer.close_reason


def test_a_peer_wants_one_hello_first() -> None:
    acceptor = RelayProtocol(peer=True)
    relay_mode = ClientProtocol()
    relay_mode.authenticate("tok")  # a bearer token straight away, as to a relay
    move(relay_mode, acceptor)
    assert acceptor.close_code == CloseCode.PROTOCOL_VIOLATION
    dialer = ClientProtocol(peer=True)
    dialer.hello(b"n" * 32, b"c")
    with pytest.raises(LocalProtocolError):
        dialer.hello(b"n" * 32, b"c")
    (hello,) = dialer.data_to_send()
    acceptor = RelayProtocol(peer=True)
    acceptor.receive_message(hello)
    acceptor.receive_message(hello)  # anything before the challenge
    assert acceptor.close_code == CloseCode.PROTOCOL_VIOLATION


def test_peer_messages_round_trip_and_are_bounded() -> None:
    samples = [
        Hello(b"n" * 32, b"cert"),
        Challenge(b"n" * 16, b"cert", b"p" * 64),
        Auth("tok", b"p" * 64),
        Welcome("u", "peer-x", "peer/0", {"max_docs": 3}, "tok2", ("catalog", BOOKINGS)),
        Sync(BOOKINGS, b"\0\0", b"\0", 0, b"d" * 32),
    ]
    for message in samples:
        assert decode(message.to_wire()) == message
        assert eval(repr(message), {type(message).__name__: type(message)}) == message
    for bad in (
        lambda: Hello(b"short", b"c"),
        lambda: Hello(b"n" * 32, b"c" * 5000),
        lambda: Challenge(b"n" * 32, b"c", b"p" * 200),
        lambda: Welcome("u", "e", "s", {}, None, tuple(f"d{i}" for i in range(5000))),
        lambda: Welcome("u", "e", "s", {}, None, ("has space",)),
    ):
        with pytest.raises(CodecError):
            bad()


def test_relay_mode_refuses_peer_messages() -> None:
    relay, client = RelayProtocol(), ClientProtocol(peer=True)
    client.hello(b"n" * 32, b"c")
    move(client, relay)
    assert relay.close_code == CloseCode.PROTOCOL_VIOLATION
    with pytest.raises(LocalProtocolError):
        RelayProtocol().challenge(b"n" * 32, b"c", b"p")
    with pytest.raises(LocalProtocolError):
        RelayProtocol(peer=True, header_auth=True)


# --- in-process peers over real websockets --------------------------------------------------------------


class LoggedServer(PeerServer):
    """A peer server that keeps its structured log lines, on the world's clock."""

    def __init__(self, local: LocalClient, world: World, **kw: Any) -> None:
        self.logs: list[tuple[str, dict[str, Any]]] = []
        keep = self.logs.append
        super().__init__(
            local, log=lambda kind, fields: keep((kind, fields)), now_ms=lambda: world.now_ms, **kw
        )

    def logged(self, kind: str) -> list[dict[str, Any]]:
        return [fields for k, fields in self.logs if k == kind]


async def serve(local: LocalClient, world: World, **kw: Any) -> LoggedServer:
    server = LoggedServer(local, world, **kw)
    await server.start()
    return server


async def test_peer_sync_exchanges_both_ways_and_bookings_stay_tentative(
    tmp_path: Path, world: World
) -> None:
    relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    booked = await alice.book(SHOP, DAY, SLOT)
    # Written on the tablet since Alice last saw the shop: she gets it through the peer.
    await owner.add_slot(SHOP, "cut-11", service="haircut", start="11:00", duration=30, capacity=1)
    owner_entries = {e.id for e in await owner.pending_entries()}
    server = await serve(owner, world)
    try:
        summary = await peer_sync(alice, server.url, now_ms=lambda: world.now_ms)
    finally:
        await server.stop()
    assert summary.peer_user == "u-owner"
    assert {BOOKINGS, f"shop:{SHOP}", "catalog"} <= set(summary.docs)
    assert "user:u-alice" not in summary.docs and "user:u-alice" not in summary.refused_docs
    assert summary.sent >= 1 and summary.received >= 1 and not summary.rejected and not summary.refused
    detail = await alice.shop(SHOP, subscribe=False)
    assert detail is not None and "cut-11" in {s.slot_id for s in detail.slots}
    (held,) = await owner.day_reservations(SHOP, DAY)
    assert held.reservation_id == booked.reservation_id and held.stamp is None and not held.final
    assert await owner.document(BOOKINGS) == await alice.document(BOOKINGS)
    # A peer's ack is not the relay's: Alice's booking is still queued for the relay, and what the
    # tablet stored from her is queued there too (store-and-forward), one entry per transaction.
    # Her day listed in her own document waits for the relay too: no peer holds that document.
    assert [
        (e.entity_type, e.entity_id) for e in await alice.pending_entries() if e.operation == "create"
    ] == [
        ("reservation", booked.reservation_id),
        ("booked_day", f"{SHOP}/{DAY}"),
    ]
    forwarded = [e for e in await owner.pending_entries() if e.id not in owner_entries]
    assert forwarded and {e.operation for e in forwarded} == {"forward"}
    assert all(len(decode_update(e.payload).ranges) == 1 for e in forwarded)
    assert BOOKINGS in await owner.subscribed_docs()  # the tablet keeps the day current at the relay
    assert [f["user"] for f in server.logged("peer_authenticated")] == ["u-alice"]
    # Only the relay stamps: once it has the tablet's forward entries, the booking is final.
    for entry in forwarded:
        relay.receive(entry.doc_id, entry.payload)
    stamps = relay.docs[BOOKINGS].keys("stamps")
    assert len(stamps) == 1


async def test_what_a_peer_received_it_passes_on_to_the_next_peer(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, bob = await shop_setup(tmp_path, world)
    await bob.subscribe(BOOKINGS)  # Bob looked at that day
    server = await serve(owner, world)
    try:
        link = await PeerLink.connect(server.url)
        creds = await PeerCredentials.load(bob)
        await link.handshake(creds, PeerVerifier(creds))
        link.proto.subscribe(BOOKINGS, await bob.state_vector(BOOKINGS))
        await link.wire.flush()
        assert any(isinstance(e, DocSynced) for e in await link.events())
        booked = await alice.book(SHOP, DAY, SLOT)
        await peer_sync(alice, server.url)
        # Bob is live on the day at the tablet: Alice's booking is fanned out to him at once...
        (live,) = [e for e in await link.events(5) if isinstance(e, UpdateReceived)]
        assert live.doc == BOOKINGS
        await link.close()
        # ...and a later exchange brings it anyway.
        summary = await peer_sync(bob, server.url)
    finally:
        await server.stop()
    assert BOOKINGS in summary.docs
    (seen,) = await bob.day_reservations(SHOP, DAY)
    assert seen.reservation_id == booked.reservation_id and seen.customer == "u-alice" and not seen.final


async def test_a_verdict_change_learnt_from_a_peer_is_told_to_the_customer(
    tmp_path: Path, world: World
) -> None:
    relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    bob = await profile(tmp_path, world, "u-later", clock_ms=world.now_ms + 60_000)  # books later
    await bob.follow(SHOP)
    await pull(bob, relay, ["catalog", f"shop:{SHOP}"])
    first = await alice.book(SHOP, DAY, SLOT, party=2)
    second = await bob.book(SHOP, DAY, SLOT, party=2)  # both see themselves in the last seats
    assert first.state.value == second.state.value == "confirmed"
    _events(bob)
    server = await serve(owner, world)
    try:
        await peer_sync(alice, server.url)
        await peer_sync(bob, server.url)  # the tablet hands him Alice's claim, which ranks first
    finally:
        await server.stop()
    told = [e for e in _events(bob) if getattr(e, "reservation_id", None) == second.reservation_id]
    assert told and told[-1].state.value == "waitlisted" and not told[-1].final, told
    mine = await bob.reservation(second.reservation_id)
    assert mine is not None and mine.state.value == "waitlisted" and mine.stamp is None


async def test_an_expired_access_token_is_fine_while_the_certificate_is_valid(
    tmp_path: Path, world: World
) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    author = world.device("u-alice")
    stale = mint_token(world, "u-alice", iat_s=int(time.time()) - 3600 * 1 + 60, ttl_s=1800)
    server = await serve(owner, world)
    try:
        summary = await peer_sync(alice, server.url, credentials=credentials(world, author, stale))
    finally:
        await server.stop()
    assert summary.peer_user == "u-owner"


def _dialer_cases(world: World) -> dict[str, tuple[Author, str, int, str]]:
    """What a dishonest or stale dialer presents, and the close code and reason it must get."""
    alice = world.device("u-alice")
    thief = world.device("u-mallory")
    stolen_cert = Author("u-alice", DeviceKey(fixed_seed_key(999), alice.device.certificate), alice.clock)
    expired = world.device(
        "u-alice", valid_from_ms=world.now_ms - 48 * 3600_000, valid_until_ms=world.now_ms - 1000
    )
    foreign = OTHER.device("u-alice")
    return {
        "expired certificate": (expired, mint_token(world, "u-alice"), 4001, "certificate expired"),
        "certificate of another relay": (
            foreign, mint_token(OTHER, "u-alice", signer=OTHER.relay), 4003, "not from our relay"
        ),
        "stolen certificate, no device key": (stolen_cert, mint_token(world, "u-alice"), 4003, "proof"),
        "stolen token": (thief, mint_token(world, "u-alice"), 4003, "different users"),
        "another issuer": (alice, mint_token(world, "u-alice", issuer="evil"), 4003, "another relay"),
        "refresh token": (alice, mint_token(world, "u-alice", typ="refresh"), 4003, "not an access token"),
        "token from before the certificate": (
            alice, mint_token(world, "u-alice", iat_s=int(time.time()) - 3 * 3600), 4003, "older than"
        ),
        "token bound to another device of the same user": (
            alice, mint_token(world, "u-alice", cnf=cnf_claim(public_bytes(fixed_seed_key(998)))), 4003,
            "bound to another device key",
        ),
        "token with a cnf claim of another kind": (
            alice, mint_token(world, "u-alice", cnf={"jkt": "x" * 43}), 4003, "malformed cnf",
        ),
    }  # fmt: skip


async def test_the_acceptor_checks_the_dialer_offline(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    server = await serve(owner, world)
    try:
        for name, (author, token, code, reason) in _dialer_cases(world).items():
            creds = credentials(world, author, token)
            with pytest.raises(PeerRefusedUs) as caught:
                await peer_sync(alice, server.url, credentials=creds, timeout_s=5)
            assert caught.value.code == code and reason in str(caught.value), name
        refusals = server.logged("peer_refused")
        assert len(refusals) == len(_dialer_cases(world))
        assert not server.logged("peer_authenticated")
    finally:
        await server.stop()
    assert await owner.day_reservations(SHOP, DAY) == []


async def test_the_dialer_checks_the_acceptor_too(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    booked = await alice.book(SHOP, DAY, SLOT)
    owner_author = world.device("u-owner", owner_of=[SHOP])
    cases = {
        "foreign acceptor": (OTHER.device("u-owner"), mint_token(OTHER, "u-owner", signer=OTHER.relay), 4003),
        "acceptor with someone else's token": (owner_author, mint_token(world, "u-alice"), 4003),
        "acceptor token bound to another device": (
            owner_author,
            mint_token(world, "u-owner", cnf=cnf_claim(public_bytes(fixed_seed_key(997)))),
            4003,
        ),
        "expired acceptor": (
            world.device(
                "u-owner", valid_from_ms=world.now_ms - 9 * 3600_000, valid_until_ms=world.now_ms - 1
            ),
            mint_token(world, "u-owner"),
            4001,
        ),
    }
    for name, (author, token, code) in cases.items():
        server = await serve(owner, world, credentials=credentials(world, author, token))
        try:
            with pytest.raises(PeerUntrusted) as caught:
                await peer_sync(alice, server.url, timeout_s=5)
            assert caught.value.code == code, name
        finally:
            await server.stop()
    # Nothing of Alice's left her phone for an unproven peer.
    assert await owner.day_reservations(SHOP, DAY) == []
    assert (await alice.reservation(booked.reservation_id)) is not None


async def test_a_silent_or_garbled_dialer_is_closed(tmp_path: Path, world: World) -> None:
    owner = await profile(tmp_path, world, "u-owner", owner_of=[SHOP])
    server = await serve(owner, world, auth_timeout_s=0.3)
    try:
        async with websockets.connect(server.url) as silent:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(silent.recv(), 5)
            assert silent.close_code == CloseCode.AUTH_TIMEOUT
        async with websockets.connect(server.url) as garbled:
            await garbled.send("hello as text")
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(garbled.recv(), 5)
            assert garbled.close_code == CloseCode.PROTOCOL_VIOLATION
    finally:
        await server.stop()
    assert [f["code"] for f in server.logged("peer_refused")] == [4008]


async def test_own_expired_certificate_is_refused_before_connecting(tmp_path: Path, world: World) -> None:
    alice = await profile(tmp_path, world, "u-alice")
    with pytest.raises(PeerAuthError) as caught:
        await PeerCredentials.load(alice, now_ms=world.now_ms + 48 * 3600_000)
    assert caught.value.close_code == 4001


async def raw_link(url: str, local: LocalClient) -> PeerLink:
    link = await PeerLink.connect(url)
    creds = await PeerCredentials.load(local)
    await link.handshake(creds, PeerVerifier(creds))
    return link


async def answers(link: PeerLink, count: int) -> list[Any]:
    """The next ``count`` answers (sync, ack or err), skipping nothing else: there is nothing else."""
    out: list[Any] = []
    while len(out) < count:
        out += [e for e in await link.events(5) if isinstance(e, (DocSynced, Acked, ErrorReceived))]
    return out


async def test_an_invalid_update_is_refused_and_the_connection_stays_usable(
    tmp_path: Path, world: World
) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    server = await serve(owner, world)
    try:
        link = await raw_link(server.url, alice)
        link.proto.subscribe(BOOKINGS, await alice.state_vector(BOOKINGS))
        await link.wire.flush()
        await answers(link, 1)
        mallory = world.device("u-mallory")
        doc = DocId.bookings(SHOP, _dt.date.fromisoformat(DAY))
        in_bobs_name = Reservation(id="r-forged", slot=SLOT, party=1, customer="u-bob", hlc=mallory.hlc())
        forged = mallory.put(own_replica(mallory), doc, [(in_bobs_name, None)])
        # After that refusal Mallory's device moves to its next client id for the document.
        _own, honest = mallory.book(own_replica(mallory, 1), doc, SLOT, reservation_id="r-honest")
        link.proto.send_update(BOOKINGS, 1, forged)
        link.proto.send_update(BOOKINGS, 2, b"\x01\x02garbage")
        link.proto.send_update(BOOKINGS, 3, honest)
        await link.wire.flush()
        first, second, third = await answers(link, 3)
        assert isinstance(first, ErrorReceived) and first.code == ErrorCode.REJECTED
        assert first.reason.startswith("forbidden") and not first.retry
        assert isinstance(second, ErrorReceived) and second.reason.startswith("malformed")
        assert isinstance(third, Acked) and third.uid == 3
        assert link.proto.state is ConnState.OPEN
        await link.close()
    finally:
        await server.stop()
    assert [r.reservation_id for r in await owner.day_reservations(SHOP, DAY)] == ["r-honest"]
    assert [f["code"] for f in server.logged("peer_update_rejected")] == ["forbidden", "malformed"]


async def test_equivocation_is_detected_named_and_refused(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    mallory = world.device("u-mallory")
    # Two different bookings signed under one Yjs id (Mallory's own, clocks 0-1): one for the
    # tablet, one for the phone. State vectors cannot tell them apart.
    _a, to_tablet = mallory.book(own_replica(mallory), BOOKINGS, SLOT, reservation_id="r-version-a")
    _b, to_phone = mallory.book(own_replica(mallory), BOOKINGS, SLOT, reservation_id="r-version-b")
    await owner.apply_remote(BOOKINGS, to_tablet)
    await alice.apply_remote(BOOKINGS, to_phone)
    await alice.subscribe(BOOKINGS)  # she looked at that day
    clash = await owner.inspect(BOOKINGS, lambda replica: find_equivocation(replica, to_phone))
    mallory_id = client_id_for(mallory.device.cert_id, 0)
    assert clash is not None and f"{mallory_id}:1" in clash and "reservations/r-version-b" in clash
    assert await owner.inspect(BOOKINGS, lambda replica: find_equivocation(replica, to_tablet)) is None
    server = await serve(owner, world)
    try:
        summary = await peer_sync(alice, server.url)
    finally:
        await server.stop()
    assert summary.diverged == [BOOKINGS]
    assert [(d, c) for d, c, _ in summary.refused] == [(BOOKINGS, "equivocation")]
    assert [(d, c, r.split(":")[0]) for d, c, r in summary.rejected] == [
        (BOOKINGS, "rejected", "equivocation")
    ]
    assert [f["code"] for f in server.logged("peer_update_rejected")] == ["equivocation"]
    # Neither replica took the other version.
    assert {r.reservation_id for r in await owner.day_reservations(SHOP, DAY)} == {"r-version-a"}
    assert {r.reservation_id for r in await alice.day_reservations(SHOP, DAY)} == {"r-version-b"}


async def test_documents_are_shared_only_within_both_scopes(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    booked = await alice.book(SHOP, DAY, SLOT)
    server = await serve(alice, world)  # this time the phone serves and the tablet dials
    try:
        link = await raw_link(server.url, owner)
        assert link.welcome is not None
        # The phone offers what the tablet's certificate says it carries: the shop's day too.
        assert set(link.welcome.docs) == {"catalog", f"shop:{SHOP}", BOOKINGS}
        for doc in ("user:u-alice", "user:u-owner", "shop:elsewhere", "bookings:elsewhere:2030-01-01"):
            link.proto.subscribe(doc, b"\x00")
        await link.wire.flush()
        refusals = await answers(link, 4)
        assert [(e.doc, e.code) for e in refusals] == [
            ("user:u-alice", "forbidden"),
            ("user:u-owner", "forbidden"),
            ("shop:elsewhere", "bad_doc"),
            ("bookings:elsewhere:2030-01-01", "bad_doc"),
        ]
        await link.close()
        summary = await peer_sync(owner, server.url)
    finally:
        await server.stop()
    assert BOOKINGS in summary.docs and "user:u-owner" not in summary.docs
    assert [r.reservation_id for r in await owner.day_reservations(SHOP, DAY)] == [booked.reservation_id]
    # Two devices of one user do share that user's own document; nobody else does.
    phone, tablet = Scope("u-alice", frozenset(), frozenset()), Scope("u-alice", frozenset(), frozenset())
    assert offer(["user:u-alice", "catalog"], phone, tablet) == ["catalog", "user:u-alice"]
    stranger = Scope("u-bob", frozenset(), frozenset())
    assert offer(["user:u-alice", "catalog"], phone, stranger) == ["catalog"]


def test_split_by_writer_keeps_every_struct_and_puts_certificates_first(world: World) -> None:
    authors = [world.device(f"u-{i}") for i in range(6)]
    whole = Replica(1)
    for author in authors:
        _res, update = author.book(own_replica(author), BOOKINGS, SLOT)
        whole.apply_update(update)
    staff = world.device("u-staff", staff_of=[SHOP])
    first = next(iter(whole.keys("reservations")))
    whole.apply_update(staff.event(own_replica(staff), BOOKINGS, first, "confirm")[1])
    parts = split_by_writer(whole.encode_state())
    assert len(parts) == 7 and all(len(decode_update(p).ranges) == 1 for p in parts)
    rebuilt = Replica(2)
    for part in parts:
        rebuilt.apply_update(part)
    assert rebuilt.to_py() == whole.to_py()
    assert content_digest(rebuilt) == content_digest(whole)
    assert split_by_writer(b"\x00\x00") == [b"\x00\x00"]


# --- the CLI, in real processes ----------------------------------------------------------------------------


def cli_cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "client.cli", "--home", str(home), *args]


def cli_env() -> dict[str, str]:
    env = _env()
    env["QUICKSLOT_SECRETS"] = "file"
    env.pop("QUICKSLOT_HOME", None)
    return env


async def cli(home: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI without blocking the event loop (an in-process peer server may be serving it)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_cmd(home, *args), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json_error(home: Path, code: int, *args: str) -> dict[str, Any]:
    rc, out, err = await cli(home, "--json", *args)
    assert rc == code, (rc, out, err)
    data: dict[str, Any] = json.loads(out)
    check(data, SCHEMAS["error"])
    assert data["error"]["exit_code"] == code and err.startswith("quickslot: ")
    return data


async def test_peer_sync_cli_exit_codes(tmp_path: Path, world: World) -> None:
    _relay, owner, alice, _bob = await shop_setup(tmp_path, world)
    home = alice.profile_dir
    unreachable = await cli_json_error(home, 5, "peer", "sync", f"ws://127.0.0.1:{free_port()}")
    assert unreachable["error"]["code"] == "peer_unreachable"
    await cli_json_error(home, 2, "peer", "sync", "http://127.0.0.1:1")
    nobody = await cli_json_error(tmp_path / "nobody", 3, "peer", "sync", "ws://127.0.0.1:1")
    assert nobody["error"]["code"] == "not_logged_in"
    far = await profile(tmp_path, OTHER, "u-far", owner_of=[SHOP])
    async with PeerServer(far) as foreign:  # a device of another relay: it refuses Alice's certificate
        refused = await cli_json_error(home, 3, "peer", "sync", foreign.url)
    assert refused["error"]["code"] == "peer_refused_us" and "4003" in refused["error"]["message"]
    impostor = credentials(world, world.device("u-owner", owner_of=[SHOP]), mint_token(world, "u-bob"))
    async with PeerServer(owner, credentials=impostor) as untrusted:
        distrusted = await cli_json_error(home, 4, "peer", "sync", untrusted.url)
    assert distrusted["error"]["code"] == "peer_untrusted"
    await alice.book(SHOP, DAY, SLOT)
    async with PeerServer(owner) as honest:
        rc, out, err = await cli(home, "peer", "sync", honest.url)
    assert rc == 0, err
    assert "with owner of Peer Cuts (peershop), user u-owner" in out, out
    assert "stay tentative until the relay stamps them" in out, out


# --- the must-show story: no relay, then only the tablet reaches it -----------------------------------------


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FixedPortRelay]:
    yield from serving_fixed_port_relay(tmp_path_factory.mktemp("peerrelay"), *QUICK_ACCOUNT_EVENTS)


async def account(
    relay: FixedPortRelay, home: Path, owner_of: str | None = None
) -> tuple[LocalClient, AuthClient]:
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    auth = AuthClient(local, relay.base_url)
    email = unique_email(home.name)
    await auth.register(email, PASSWORD, home.name)
    if owner_of is not None:
        await asyncio.to_thread(
            cli_json, "user", "grant", email, "--owner", owner_of, data_dir=relay.data_dir
        )
        await applied_by_relay(relay)  # the relay picks up CLI grants by polling
    await auth.login(email, PASSWORD)
    return local, auth


def service(local: LocalClient, relay: FixedPortRelay, auth: AuthClient) -> SyncService:
    return SyncService(local, relay.base_url, auth=auth, backoff_initial_s=0.1, retry_initial_s=0.2)


async def test_a_booking_made_offline_reaches_the_relay_through_the_shops_tablet(
    relay: FixedPortRelay, tmp_path: Path
) -> None:
    shop = "peerproc1"
    doc = f"bookings:{shop}:{DAY}"
    tablet_home, phone_home = tmp_path / "tablet", tmp_path / "phone"
    # Both log in while the relay is up: certificates issued, relay keys cached.
    tablet, tablet_auth = await account(relay, tablet_home, owner_of=shop)
    phone, phone_auth = await account(relay, phone_home)
    assert tablet.user_id and phone.user_id
    await seed_categories(relay, "hair")  # a shop names a category the catalogue defines
    await tablet.create_shop(shop, name="Tablet Cuts", category="hair", location="Main St", lat=1.0, lon=2.0)
    await tablet.add_slot(shop, SLOT, service="haircut", start="10:00", duration=30, capacity=2)
    assert (await service(tablet, relay, tablet_auth).sync_once()).pending == 0
    await phone.follow(shop)
    await service(phone, relay, phone_auth).sync_once()

    relay.stop()  # from here on nobody can reach the relay
    booked = await phone.book(shop, DAY, SLOT)
    assert not booked.final and booked.stamp is None
    await tablet.close()
    await phone.close()

    serve = subprocess.Popen(
        cli_cmd(tablet_home, "--json", "peer", "serve", "--port", "0"),
        cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        listening = json.loads(serve.stdout.readline())
        check(listening, SCHEMAS["peer serve"])
        assert listening["type"] == "peer_listening"
        rc, out, err = await cli(phone_home, "--json", "peer", "sync", listening["url"])
        assert rc == 0, (out, err)
        exchanged = json.loads(out)
        check(exchanged, SCHEMAS["peer sync"])
        assert doc in exchanged["docs"] and exchanged["sent"] >= 1
        assert exchanged["rejected"] == exchanged["refused"] == [] and exchanged["pending"] >= 1
    finally:
        serve.send_signal(signal.SIGTERM)
        logged_out, serve_err = serve.communicate(timeout=20)
    assert serve.returncode == 0, serve_err
    lines = [json.loads(line) for line in logged_out.splitlines()]
    for line in lines:
        check(line, SCHEMAS["peer serve"])
    kinds = [line["type"] for line in lines]
    assert "peer_update_stored" in kinds and kinds[-1] == "peer_stopped", kinds
    assert [line["user"] for line in lines if line["type"] == "peer_authenticated"] == [phone.user_id]

    tablet = await LocalClient.open(tablet_home, secret_store=SecretStore(tablet_home, backend="file"))
    phone = await LocalClient.open(phone_home, secret_store=SecretStore(phone_home, backend="file"))
    try:
        (carried,) = await tablet.day_reservations(shop, DAY)
        assert carried.reservation_id == booked.reservation_id and carried.stamp is None  # tentative
        relay.start()
        # Only the tablet reaches the relay: what it stored from the phone goes out as forward
        # entries, the relay validates it (whoever carried it) and stamps the booking.
        tablet_sync = service(tablet, relay, tablet_auth)
        summary = await tablet_sync.sync_once()
        assert summary.acked >= 1 and summary.pending == 0 and not summary.rejected, summary
        (stamped,) = await tablet.day_reservations(shop, DAY)
        if stamped.stamp is None:  # the stamp trailed the ack past the settle window
            await tablet_sync.sync_once()
            (stamped,) = await tablet.day_reservations(shop, DAY)
        assert stamped.stamp == 1 and stamped.final

        # Later the phone syncs: it learns its booking is final although it never sent it, and its
        # own queued copy is acknowledged as already delivered (not stamped twice, not rejected).
        while not phone.events.empty():
            phone.events.get_nowait()
        mine = await service(phone, relay, phone_auth).sync_once()
        assert mine.acked >= 1 and mine.pending == 0 and not mine.rejected, mine
        assert await phone.pending_entries() == [] and await phone.rejected_entries() == []
        final = await phone.reservation(booked.reservation_id)
        assert final is not None and (final.stamp, final.final, final.state.value) == (1, True, "confirmed")
        told = [e for e in _events(phone) if isinstance(e, BookingConfirmed)]
        assert [(e.reservation_id, e.final) for e in told] == [(booked.reservation_id, True)]
        stamps = (await phone.document(doc)).get("stamps", {})
        assert len(stamps) == 1  # one stamp: the re-send was a no-op at the relay
        assert await phone.verdict(shop, DAY) == await tablet.verdict(shop, DAY)
    finally:
        await tablet.close()
        await phone.close()


def _events(local: LocalClient) -> list[Any]:
    out = []
    while not local.events.empty():
        out.append(local.events.get_nowait())
    return out
