"""Access tokens bound to the device key, on a real relay process over loopback.

The attack this closes (docs/peer.md section 6): a peer that proved itself in a peer handshake
sees our access token, and with a bearer token it could read as us at the relay for up to 30
minutes. Here the token is taken from a *real* handshake, both ways (as the acceptor's
``welcome`` shows it to the dialer, and as the dialer's ``auth`` shows it to the acceptor, with
its handshake proof), and replayed on every path the relay has: websocket header, websocket first
message, and REST (``/me``, ``logout``). Then each kind of wrong proof is refused on each path,
the owner with its device key gets in everywhere, and unbound tokens work as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.local.client import LocalClient
from client.peer.auth import PeerCredentials, PeerVerifier, transcript
from client.peer.dialer import PeerLink, peer_sync
from client.peer.server import PeerServer
from client.storage.secrets import SecretStore
from client.sync.auth import AuthClient
from client.sync.service import SyncService
from crdt_core.certs import Certificate, public_bytes
from crdt_core.messages import CloseCode
from crdt_core.pop import (
    PROOF_HEADER,
    PROOF_TIME_HEADER,
    STALE_REASON,
    SYNC,
    WINDOW_S,
    Proof,
    Purpose,
    make_proof,
    proof_headers,
    rest,
    token_binding,
)
from tests.support.relay_process import GENEROUS_LIMITS, PASSWORD, RelayProcess, bearer, login, unique_email
from tests.support.sync_helpers import SyncClient, b64url, new_account, remember_key

ME = rest("GET", "/api/v1/auth/me")
LOGOUT = rest("POST", "/api/v1/auth/logout")
REQUIRED = "proof of possession required (the token is bound to a device key)"


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("binding") / "data", *GENEROUS_LIMITS) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


async def profile(relay: RelayProcess, home: Path) -> tuple[LocalClient, AuthClient]:
    """A reference-client profile logged in at the relay (its token is bound to its device key)."""
    local = await LocalClient.open(home, secret_store=SecretStore(home, backend="file"))
    auth = AuthClient(local, relay.base_url)
    email = unique_email(home.name)
    await auth.register(email, PASSWORD, home.name)
    await auth.login(email, PASSWORD)
    return local, auth


def access_of(local: LocalClient) -> str:
    tokens = local.secrets.tokens()
    assert tokens is not None
    return tokens.access.reveal()


def device_of(local: LocalClient) -> Ed25519PrivateKey:
    assert local.identity is not None
    return local.identity.device.private


async def socket(
    relay: RelayProcess, token: str, *, header: bool, proof: Proof | None = None
) -> tuple[Any, ...]:
    """What the relay answers a connection: ``("welcome", user)`` or ``("closed", code, reason)``."""
    client = await SyncClient.connect(relay, token, header=header, prove=False, proof=proof)
    try:
        if client.proto.welcome is not None:
            return ("welcome", client.proto.welcome.user)
        code, reason = await asyncio.wait_for(client.closed, 10)
        return ("closed", code, reason)
    finally:
        await client.close()


async def closed_with(relay: RelayProcess, headers: dict[str, str]) -> tuple[int | None, str]:
    """The close a websocket upgrade with exactly ``headers`` gets."""
    url = f"ws://{relay.host}:{relay.port}/api/v1/sync"
    async with websockets.connect(url, additional_headers=headers) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
    raise AssertionError("the relay sent a message instead of closing")


def rest_headers(token: str, proof: Proof | None) -> dict[str, str]:
    headers = bearer(token)
    if proof is not None:
        headers[PROOF_HEADER] = b64url(proof.signature)
        headers[PROOF_TIME_HEADER] = str(proof.at)
    return headers


def me(http: httpx.Client, token: str, proof: Proof | None = None) -> tuple[int, str]:
    r = http.get("/api/v1/auth/me", headers=rest_headers(token, proof))
    return r.status_code, r.json().get("code") or r.json().get("id")


def proof_for(token: str, key: Ed25519PrivateKey, purpose: Purpose, at: int | None = None) -> Proof:
    """A proof for ``token``'s relay and jti, for ``purpose``, signed with ``key`` (right or not)."""
    binding = token_binding(token)
    assert binding is not None
    return make_proof(key, purpose, binding.audience, binding.jti, at)


@dataclass
class Seen:
    """What a peer keeps of the other side's handshake."""

    tokens: list[str] = field(default_factory=list)
    proofs: list[tuple[bytes, bytes]] = field(default_factory=list)  # (transcript, signature)


class KeepingVerifier(PeerVerifier):
    """A peer's honest checks, plus a copy of everything the other side showed."""

    def __init__(self, credentials: PeerCredentials, seen: Seen) -> None:
        super().__init__(credentials)
        self.seen = seen

    def proof(self, cert: Certificate, message: bytes, signature: bytes) -> None:
        self.seen.proofs.append((message, signature))
        super().proof(cert, message, signature)

    def token(self, token: str, cert: Certificate) -> dict[str, Any]:
        self.seen.tokens.append(token)
        return super().token(token, cert)


async def test_a_token_seen_in_a_real_peer_handshake_opens_nothing_at_the_relay(
    relay: RelayProcess, http: httpx.Client, tmp_path: Path
) -> None:
    victim, victim_auth = await profile(relay, tmp_path / "victim")
    mallory, _ = await profile(relay, tmp_path / "mallory")
    token, key = access_of(victim), device_of(victim)
    binding = token_binding(token)
    assert binding is not None and binding.key == public_bytes(key)  # bound to the victim's device

    # 1. Mallory dials the victim's `peer serve`: the welcome reveals the victim's token.
    server = PeerServer(victim)
    await server.start()
    try:
        link = await PeerLink.connect(server.url)
        creds = await PeerCredentials.load(mallory)
        welcome = await link.handshake(creds, PeerVerifier(creds))
        await link.close()
    finally:
        await server.stop()
    assert welcome.token == token

    # 2. The victim dials Mallory's `peer serve`: its auth reveals the token and a handshake proof.
    seen = Seen()
    trap = PeerServer(mallory)
    await trap.start()
    assert trap.creds is not None
    trap.verifier = KeepingVerifier(trap.creds, seen)
    try:
        summary = await peer_sync(victim, trap.url, timeout_s=20)
    finally:
        await trap.stop()
    assert summary.peer_user == mallory.user_id and seen.tokens == [token]
    (handshake_message, handshake_proof), *_ = seen.proofs

    # Replayed as it was seen: every path wants a proof of possession.
    for header in (True, False):
        assert await socket(relay, token, header=header) == ("closed", CloseCode.AUTH_FAILED, REQUIRED)
    assert me(http, token) == (401, "proof_required")
    # With the victim's own handshake proof (signed by the right key, for a peer): refused.
    for at in (int(time.time()), 0):
        as_relay_proof = Proof(handshake_proof, at)
        for header in (True, False):
            answer = await socket(relay, token, header=header, proof=as_relay_proof)
            assert (
                answer[:2] == ("closed", CloseCode.AUTH_FAILED) and "proof of possession failed" in answer[2]
            )
        assert me(http, token, as_relay_proof)[0] == 401
    # With a proof Mallory can make (her own device key) for exactly this use: refused.
    for header in (True, False):
        answer = await socket(relay, token, header=header, proof=proof_for(token, device_of(mallory), SYNC))
        assert answer == ("closed", CloseCode.AUTH_FAILED, "proof of possession failed")
    assert me(http, token, proof_for(token, device_of(mallory), ME)) == (401, "proof_invalid")
    r = http.post(
        "/api/v1/auth/logout", headers=rest_headers(token, proof_for(token, device_of(mallory), LOGOUT))
    )
    assert (r.status_code, r.json()["code"]) == (401, "proof_invalid")  # nor log the victim out

    # The victim, with its device key, gets in everywhere: the reference client syncs, and the
    # same helper's proofs open both websocket paths and /me.
    assert (await SyncService(victim, relay.base_url, auth=victim_auth).sync_once()).pending == 0
    for header in (True, False):
        answer = await socket(relay, token, header=header, proof=proof_for(token, key, SYNC))
        assert answer == ("welcome", victim.user_id)
    r = http.get("/api/v1/auth/me", headers=proof_headers(token, key, ME))
    assert r.status_code == 200 and r.json()["id"] == victim.user_id
    await victim.close()
    await mallory.close()


def _wrong_proofs(token: str, key: Ed25519PrivateKey, purpose: Purpose, other_token: str) -> dict[str, Proof]:
    now = int(time.time())
    other_purpose: Purpose = ME if purpose == SYNC else SYNC
    return {
        "another purpose": proof_for(token, key, other_purpose),
        "another REST call": proof_for(token, key, LOGOUT if purpose != LOGOUT else ME),
        "old": proof_for(token, key, purpose, now - WINDOW_S - 60),
        "from the future": proof_for(token, key, purpose, now + WINDOW_S + 60),
        "another device key": proof_for(token, Ed25519PrivateKey.generate(), purpose),
        "another token of the same device": proof_for(other_token, key, purpose),
        "a peer-handshake proof": Proof(
            key.sign(transcript("dialer", b"d" * 32, b"a" * 32, "c1", "c2")), now
        ),
    }


@pytest.mark.parametrize("path", ["header", "message", "me", "logout"])
async def test_every_wrong_proof_is_refused_and_the_right_one_accepted(
    relay: RelayProcess, http: httpx.Client, path: str
) -> None:
    account = new_account(relay, http)
    token, key = account.access, account.author.device.private
    # A second session of the same device: its token is bound to the same key, with another jti.
    other = login(http, account.email, device_public_key=b64url(public_bytes(key)))["access_token"]
    purposes: dict[str, Purpose] = {"header": SYNC, "message": SYNC, "me": ME, "logout": LOGOUT}
    purpose = purposes[path]

    async def attempt(proof: Proof | None) -> tuple[str, Any]:
        if path in ("header", "message"):
            answer = await socket(relay, token, header=path == "header", proof=proof)
            return ("ok", None) if answer[0] == "welcome" else ("refused", answer[1:])
        method = http.get if path == "me" else http.post
        r = method(f"/api/v1/auth/{path}", headers=rest_headers(token, proof))
        return ("ok", None) if r.status_code in (200, 204) else ("refused", (r.status_code, r.json()["code"]))

    assert await attempt(None) == (
        "refused",
        (4003, REQUIRED) if purpose == SYNC else (401, "proof_required"),
    )
    for name, proof in _wrong_proofs(token, key, purpose, other).items():
        outcome, detail = await attempt(proof)
        assert outcome == "refused", name
        stale = name in ("old", "from the future")
        if purpose == SYNC:
            code, reason = detail
            assert code == CloseCode.AUTH_FAILED and reason.startswith("proof of possession failed"), name
            assert ("not within 300 s" in reason) == stale, (name, reason)
        else:
            assert detail == (401, "proof_stale" if stale else "proof_invalid"), name
    # Malformed proofs: only one of the two parts, or not a signature.
    if purpose == SYNC and path == "header":
        for headers in (
            {PROOF_HEADER: "AAAA", PROOF_TIME_HEADER: "1"},
            {PROOF_TIME_HEADER: str(int(time.time()))},
        ):
            code, reason = await closed_with(relay, {**bearer(token), **headers})
            assert code == CloseCode.AUTH_FAILED and reason.startswith("proof of possession failed"), headers
    elif path == "message":
        answer = await socket(relay, token, header=False, proof=Proof(b"x" * 10, int(time.time())))
        assert answer == ("closed", CloseCode.AUTH_FAILED, "proof of possession failed: malformed proof")
    elif purpose != SYNC:
        r = http.get(
            "/api/v1/auth/me", headers={**bearer(token), PROOF_HEADER: "AAAA", PROOF_TIME_HEADER: "x"}
        )
        assert (r.status_code, r.json()["code"]) == (401, "proof_invalid")
    # Nothing above revoked the session: the right proof opens it (and, last, logs out).
    assert await attempt(proof_for(token, key, purpose)) == ("ok", None)


async def test_unbound_tokens_are_bearer_tokens_as_before(relay: RelayProcess, http: httpx.Client) -> None:
    account = new_account(relay, http)
    token = login(http, account.email)["access_token"]  # no device key: no cnf
    assert token_binding(token) is None
    for header in (True, False):
        assert await socket(relay, token, header=header) == ("welcome", account.user_id)
    assert me(http, token) == (200, account.user_id)
    # A stray or broken proof next to a bearer token changes nothing.
    assert me(http, token, Proof(b"x" * 64, 1)) == (200, account.user_id)
    r = http.get("/api/v1/auth/me", headers={**bearer(token), PROOF_HEADER: "%%%"})
    assert r.status_code == 200
    assert await socket(relay, token, header=True, proof=Proof(b"x" * 64, 1)) == ("welcome", account.user_id)
    assert http.post("/api/v1/auth/logout", headers=bearer(token)).status_code == 204
    assert await socket(relay, token, header=True) == (
        "closed",
        CloseCode.SESSION_REVOKED,
        "session revoked: log in again",
    )


def test_refresh_binds_to_the_key_it_is_given(relay: RelayProcess, http: httpx.Client) -> None:
    account = new_account(relay, http)
    assert token_binding(account.refresh) is None  # the refresh token is never bound (peers never see it)
    key = Ed25519PrivateKey.generate()
    r = http.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": account.refresh, "device_public_key": b64url(public_bytes(key))},
    )
    assert r.status_code == 200, r.text
    renewed = r.json()
    binding = token_binding(renewed["access_token"])
    assert binding is not None and binding.key == public_bytes(key)
    remember_key(renewed["access_token"], key)
    r = http.post("/api/v1/auth/refresh", json={"refresh_token": renewed["refresh_token"]})
    assert r.status_code == 200 and token_binding(r.json()["access_token"]) is None  # no key: bearer


async def test_a_client_whose_clock_is_off_learns_the_relays_and_stays_logged_in(
    relay: RelayProcess, http: httpx.Client, tmp_path: Path
) -> None:
    """A device 1000 s slow (beyond the proof window) is refused once with the stable stale
    reason, learns the relay's clock from ``/api/v1/sync/status`` and syncs; it is not logged out
    (4003 otherwise means "log in again", which would throw away a healthy session)."""
    home = tmp_path / "slow"
    local, _ = await profile(relay, home)
    slow = AuthClient(local, relay.base_url, clock=lambda: time.time() - 1000)
    token, key = access_of(local), device_of(local)
    late = proof_for(token, key, SYNC, int(slow.proof_clock()))
    assert await socket(relay, token, header=True, proof=late) == (
        "closed",
        CloseCode.AUTH_FAILED,
        STALE_REASON,
    )
    summary = await SyncService(local, relay.base_url, auth=slow).sync_once()
    assert summary.pending == 0 and abs(slow.clock_offset_s - 1000) < 5, slow.clock_offset_s
    assert local.identity is not None and local.secrets.tokens() is not None  # still logged in
    await slow.logout()  # its REST proofs use the learnt clock too: the session is revoked
    answer = await socket(relay, token, header=True, proof=proof_for(token, key, SYNC))
    assert answer[:2] == ("closed", CloseCode.SESSION_REVOKED)
    await local.close()
