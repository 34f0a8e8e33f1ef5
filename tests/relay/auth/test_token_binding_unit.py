"""Token binding (RFC 7800 ``cnf``) and relay proofs of possession, with plain calls and a fixed clock.

The real-process story (a peer replaying a token it saw in a handshake) is in
``tests/client/test_token_binding.py``; here each rule is pinned on its own: the claim's exact
shape, the token service's fail-closed default, the proof's window and bindings, and that a relay
proof and a peer-handshake proof can never stand in for each other.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.peer.auth import PEER_DOMAIN, PeerAuthError, PeerCredentials, PeerVerifier, transcript
from crdt_core.certs import CERT_DOMAIN, SigningKey, parse_certificate, public_bytes
from crdt_core.pop import (
    DOMAIN,
    PROOF_HEADER,
    PROOF_TIME_HEADER,
    SYNC,
    WINDOW_S,
    Proof,
    ProofError,
    Purpose,
    auth_proof,
    bound_key,
    check_proof,
    cnf_claim,
    make_proof,
    parse_proof,
    proof_headers,
    rest,
    statement,
    token_binding,
)
from crdt_core.records import RECORD_DOMAIN
from relay.auth.keys import KeyStore
from relay.auth.tokens import ACCESS, REFRESH, ProofFailed, TokenInvalid, TokenService
from tests.support.crdt_factory import World, fixed_seed_key

NOW = float(int(time.time()))
ME = rest("GET", "/api/v1/auth/me")


@pytest.fixture
def tokens(tmp_path: Path) -> TokenService:
    keys = KeyStore.open(tmp_path / "keys")
    return TokenService(
        keys, issuer="iss", audience="aud", access_ttl_s=1800, refresh_ttl_s=86400, clock=lambda: NOW
    )


def _payload(token: str) -> dict[str, object]:
    part = token.split(".")[1]
    loaded: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return loaded


def test_a_token_issued_for_a_device_key_carries_the_key_and_needs_its_proof(tokens: TokenService) -> None:
    device = Ed25519PrivateKey.generate()
    issued = tokens.issue(ACCESS, "u1", "f1", device_key=public_bytes(device))
    x = base64.urlsafe_b64encode(public_bytes(device)).rstrip(b"=").decode()
    assert _payload(issued.token)["cnf"] == {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": x}}
    assert issued.claims.cnf_key == public_bytes(device)
    # Fail closed: no proof, or no purpose to check one against, is "proof required".
    for kwargs in ({}, {"purpose": SYNC}, {"proof": make_proof(device, SYNC, "aud", issued.claims.jti)}):
        with pytest.raises(ProofFailed) as refused:
            tokens.verify_access(issued.token, **kwargs)
        assert refused.value.code == "proof_required"
        assert isinstance(refused.value, TokenInvalid)  # every caller refusing invalid tokens refuses it
    at = int(NOW)
    good = make_proof(device, SYNC, "aud", issued.claims.jti, at)
    assert tokens.verify_access(issued.token, purpose=SYNC, proof=good).sub == "u1"
    with pytest.raises(ProofFailed, match="proof of possession failed") as refused:
        tokens.verify_access(issued.token, purpose=ME, proof=good)  # made for the websocket
    assert refused.value.code == "proof_invalid"
    # A bearer token (no device key) needs nothing, and a proof sent with it is ignored.
    bearer = tokens.issue(ACCESS, "u1", "f2")
    assert "cnf" not in _payload(bearer.token) and bearer.claims.cnf_key is None
    assert tokens.verify_access(bearer.token).sub == "u1"
    # A refresh token may be bound too (a browser's cookie session): it carries the key, which the
    # account service matches at refresh, and is still no access token.
    bound_refresh = tokens.issue(REFRESH, "u1", "f1", device_key=public_bytes(device))
    assert _payload(bound_refresh.token)["cnf"] == _payload(issued.token)["cnf"]
    assert tokens.decode(bound_refresh.token, REFRESH).cnf_key == public_bytes(device)
    with pytest.raises(TokenInvalid, match="wrong token type"):
        tokens.verify_access(bound_refresh.token, purpose=SYNC, proof=good)


@pytest.mark.parametrize(
    "cnf",
    [
        {"jkt": "A" * 43},  # a thumbprint: the relay could not verify a proof from it
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}, "jkt": "A" * 43},
        {"jwk": {"kty": "OKP", "crv": "Ed448", "x": "A" * 43}},
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "A" * 43, "y": "A" * 43}},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 42}},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "A" * 42 + "B"}},  # not canonical base64url
        {"jwk": "key"},
        "bound",
        [],
    ],
)
def test_a_cnf_claim_of_any_other_shape_is_refused_not_taken_as_unbound(
    tokens: TokenService, cnf: object
) -> None:
    with pytest.raises(ValueError):
        bound_key({"cnf": cnf})
    # Even signed by the relay's own key (so only the claim is at fault), the token is refused.
    key = tokens.keys.active
    payload = {"iss": "iss", "aud": "aud", "sub": "u", "iat": int(NOW), "nbf": int(NOW),
               "exp": int(NOW) + 600, "jti": "j", "fam": "f", "typ": "access", "cnf": cnf}  # fmt: skip
    token = jwt.encode(payload, key.private, algorithm="EdDSA", headers={"kid": key.kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match="bad cnf claim"):
        tokens.verify_access(token)
    assert token_binding(token) is None  # a client would not try to prove for it either


def test_a_proof_is_bound_to_purpose_relay_token_key_and_time() -> None:
    device, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key, at = public_bytes(device), int(NOW)
    proof = make_proof(device, ME, "aud", "jti-1", at)
    check_proof(key, proof, ME, "aud", "jti-1", now=NOW)
    check_proof(key, proof, ME, "aud", "jti-1", now=NOW + WINDOW_S)  # the window's edges
    check_proof(key, proof, ME, "aud", "jti-1", now=NOW - WINDOW_S)
    refusals: dict[str, tuple[Proof | None, Purpose, str, str, float, str]] = {
        "another purpose": (proof, rest("POST", "/api/v1/auth/me"), "aud", "jti-1", NOW, "proof_invalid"),
        "another path": (proof, rest("GET", "/api/v1/auth/logout"), "aud", "jti-1", NOW, "proof_invalid"),
        "the websocket": (proof, SYNC, "aud", "jti-1", NOW, "proof_invalid"),
        "another relay": (proof, ME, "aud2", "jti-1", NOW, "proof_invalid"),
        "another token": (proof, ME, "aud", "jti-2", NOW, "proof_invalid"),
        "another key": (make_proof(other, ME, "aud", "jti-1", at), ME, "aud", "jti-1", NOW, "proof_invalid"),
        "a shifted time": (Proof(proof.signature, at + 1), ME, "aud", "jti-1", NOW, "proof_invalid"),
        "too old": (proof, ME, "aud", "jti-1", NOW + WINDOW_S + 1, "proof_stale"),
        "from the future": (proof, ME, "aud", "jti-1", NOW - WINDOW_S - 1, "proof_stale"),
        "none": (None, ME, "aud", "jti-1", NOW, "proof_required"),
    }
    for name, (given, purpose, aud, jti, now, code) in refusals.items():
        with pytest.raises(ProofError) as refused:
            check_proof(key, given, purpose, aud, jti, now=now)
        assert refused.value.code == code, name


def test_relay_proofs_and_peer_handshake_proofs_never_stand_in_for_each_other() -> None:
    """The same device key signs both; the prefixes keep them apart in both directions."""
    prefixes = [DOMAIN, PEER_DOMAIN, RECORD_DOMAIN, CERT_DOMAIN]
    for a in prefixes:
        for b in prefixes:
            assert a == b or not b.startswith(a), (a, b)
    world = World(relay=SigningKey("k1", fixed_seed_key(1)), now_ms=int(NOW * 1000))
    author = world.device("u-alice")
    cert = parse_certificate(author.device.certificate, world.trusted)
    device = author.device.private
    nonces = (b"d" * 32, b"a" * 32)
    peer_message = transcript("dialer", *nonces, cert.cert_id, "acceptor-cert")
    peer_proof = device.sign(peer_message)
    creds = PeerCredentials("u-alice", author.device, cert, "t", world.trusted, "iss", "aud")
    verifier = PeerVerifier(creds, lambda: world.now_ms)
    verifier.proof(cert, peer_message, peer_proof)  # genuine
    # A peer's proof offered to the relay, at any time and for any purpose, fails.
    for purpose in (SYNC, ME):
        with pytest.raises(ProofError, match="failed"):
            check_proof(cert.device_key, Proof(peer_proof, int(NOW)), purpose, "aud", "jti", now=NOW)
    # A relay proof offered to a peer as the handshake proof fails too.
    relay_proof = make_proof(device, SYNC, "aud", "jti", int(NOW))
    check_proof(cert.device_key, relay_proof, SYNC, "aud", "jti", now=NOW)  # genuine
    with pytest.raises(PeerAuthError, match="proof of possession failed"):
        verifier.proof(cert, peer_message, relay_proof.signature)
    assert statement(SYNC, "aud", "jti", 1).startswith(DOMAIN)


def test_wire_forms_and_the_client_helpers() -> None:
    device, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    relay = SigningKey("k1", fixed_seed_key(7))
    claims = {"iss": "i", "aud": "aud", "sub": "u", "jti": "j1", "cnf": cnf_claim(public_bytes(device))}
    bound = jwt.encode(claims, relay.private, algorithm="EdDSA")
    unbound = jwt.encode({**claims, "cnf": None}, relay.private, algorithm="EdDSA")
    assert token_binding(unbound) is None and token_binding("not-a-jwt") is None
    binding = token_binding(bound)
    assert binding is not None and (binding.key, binding.audience, binding.jti) == (
        public_bytes(device),
        "aud",
        "j1",
    )
    headers = proof_headers(bound, device, ME, clock=lambda: NOW)
    assert headers["Authorization"] == f"Bearer {bound}"
    proof = parse_proof(headers[PROOF_HEADER], headers[PROOF_TIME_HEADER])
    assert proof is not None and proof.at == int(NOW)
    check_proof(public_bytes(device), proof, ME, "aud", "j1", now=NOW)
    assert proof_headers(unbound, None, ME) == {"Authorization": f"Bearer {unbound}"}
    message = auth_proof(bound, device, clock=lambda: NOW)
    assert message is not None
    check_proof(public_bytes(device), message, SYNC, "aud", "j1", now=NOW)
    assert auth_proof(unbound, None) is None
    for key in (None, other):  # never a proof the relay would refuse anyway
        with pytest.raises(ValueError):
            proof_headers(bound, key, ME)
    # Wire forms: both parts or none, 64 signature bytes, a decimal time.
    assert parse_proof(None, None) is None
    sig = headers[PROOF_HEADER]
    for signature, at in [(sig, None), (None, "1"), (sig, "-1"), (sig, "1.5"), (sig, "١٢"), ("AAAA", "1"),
                          (sig + "AAAA", "1"), ("%%%", "1"), (b"s" * 63, 1), (b"s" * 64, 2**63)]:  # fmt: skip
        with pytest.raises(ProofError) as refused:
            parse_proof(signature, at)
        assert refused.value.code == "proof_invalid", (signature, at)
