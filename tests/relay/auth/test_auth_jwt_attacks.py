"""Forged and misused JWTs against a real relay: each must be refused with 401.

Attacks that need a valid signature (expired, not yet valid, wrong issuer/audience, unknown kid)
are signed with the relay's real private key read from its data directory, so they prove the
claim checks themselves, not just the signature check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, bearer, login, register, unique_email

KeyPair = tuple[str, Ed25519PrivateKey]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("jwt") / "data", *GENEROUS_LIMITS) as proc:
        yield proc


@pytest.fixture(scope="module")
def session(relay: RelayProcess) -> dict[str, Any]:
    with relay.client() as c:
        email = unique_email()
        register(c, email)
        return login(c, email)


@pytest.fixture(scope="module")
def relay_key(relay: RelayProcess) -> tuple[str, Ed25519PrivateKey]:
    manifest = json.loads((relay.data_dir / "keys" / "manifest.json").read_text())
    kid = manifest["active"]
    key = serialization.load_pem_private_key((relay.data_dir / "keys" / f"{kid}.key").read_bytes(), None)
    assert isinstance(key, Ed25519PrivateKey)
    return kid, key


@pytest.fixture
def client(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as c:
        yield c


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def sign(payload: dict[str, Any], key: Ed25519PrivateKey, kid: str, typ: str = "at+jwt") -> str:
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid, "typ": typ})


def me(client: httpx.Client, token: str) -> tuple[int, str]:
    r = client.get("/api/v1/auth/me", headers=bearer(token))
    return r.status_code, r.json().get("code", "")


def test_genuine_token_is_accepted(client: httpx.Client, session: dict[str, Any]) -> None:
    assert me(client, session["access_token"])[0] == 200


def test_alg_none(client: httpx.Client, session: dict[str, Any]) -> None:
    claims = claims_of(session["access_token"])
    kid = jwt.get_unverified_header(session["access_token"])["kid"]
    for alg in ("none", "None", "NONE"):
        token = f"{b64json({'alg': alg, 'typ': 'at+jwt', 'kid': kid})}.{b64json(claims)}."
        assert me(client, token) == (401, "token_invalid")


def test_hs256_signed_with_the_public_key(
    client: httpx.Client, session: dict[str, Any], relay: RelayProcess
) -> None:
    claims = claims_of(session["access_token"])
    jwk = client.get("/.well-known/jwks.json").json()["keys"][0]
    raw = base64.urlsafe_b64decode(jwk["x"] + "==")
    pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    secrets = [raw, jwk["x"].encode(), pem, json.dumps(jwk).encode()]
    for secret in secrets:
        header = b64json({"alg": "HS256", "typ": "at+jwt", "kid": jwk["kid"]})
        body = b64json(claims)
        sig = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
        assert me(client, f"{header}.{body}.{b64(sig)}") == (401, "token_invalid")


def test_signed_with_another_key(client: httpx.Client, session: dict[str, Any]) -> None:
    claims = claims_of(session["access_token"])
    kid = jwt.get_unverified_header(session["access_token"])["kid"]
    attacker = Ed25519PrivateKey.generate()
    assert me(client, sign(claims, attacker, kid)) == (401, "token_invalid")


def test_unknown_kid(client: httpx.Client, session: dict[str, Any], relay_key: KeyPair) -> None:
    _, key = relay_key
    claims = claims_of(session["access_token"])
    assert me(client, sign(claims, key, "no-such-key")) == (401, "token_invalid")
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"typ": "at+jwt"})  # no kid at all
    assert me(client, token) == (401, "token_invalid")


def test_tampered_payload(client: httpx.Client, session: dict[str, Any]) -> None:
    header, body, sig = session["access_token"].split(".")
    claims = claims_of(session["access_token"])
    claims["sub"] = "someone-else"
    assert me(client, f"{header}.{b64json(claims)}.{sig}") == (401, "token_invalid")
    claims = claims_of(session["access_token"])
    claims["exp"] += 3600
    assert me(client, f"{header}.{b64json(claims)}.{sig}") == (401, "token_invalid")
    # Flipping one signature bit.
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    assert me(client, f"{header}.{body}.{b64(bytes(raw))}") == (401, "token_invalid")
    assert me(client, "not.a.jwt") == (401, "token_invalid")
    assert me(client, "x" * 5000) == (401, "token_invalid")


def test_expired(client: httpx.Client, session: dict[str, Any], relay_key: KeyPair) -> None:
    kid, key = relay_key
    claims = claims_of(session["access_token"])
    now = int(time.time())
    claims.update(iat=now - 3600, nbf=now - 3600, exp=now - 1800)
    assert me(client, sign(claims, key, kid)) == (401, "token_expired")


def test_not_yet_valid(client: httpx.Client, session: dict[str, Any], relay_key: KeyPair) -> None:
    kid, key = relay_key
    now = int(time.time())
    claims = claims_of(session["access_token"])
    claims.update(nbf=now + 3600)
    assert me(client, sign(claims, key, kid)) == (401, "token_invalid")
    claims = claims_of(session["access_token"])
    claims.update(iat=now + 3600, nbf=now + 3600, exp=now + 3600 + 600)
    assert me(client, sign(claims, key, kid)) == (401, "token_invalid")


def test_wrong_issuer_or_audience(client: httpx.Client, session: dict[str, Any], relay_key: KeyPair) -> None:
    kid, key = relay_key
    for change in ({"iss": "evil-relay"}, {"aud": "another-service"}, {"aud": ["another-service"]}):
        claims = claims_of(session["access_token"])
        claims.update(change)
        assert me(client, sign(claims, key, kid)) == (401, "token_invalid"), change


def test_missing_claims_and_overlong_lifetime(
    client: httpx.Client, session: dict[str, Any], relay_key: KeyPair
) -> None:
    kid, key = relay_key
    for name in ("sub", "exp", "iat", "nbf", "jti", "fam", "typ", "iss", "aud"):
        claims = claims_of(session["access_token"])
        del claims[name]
        assert me(client, sign(claims, key, kid)) == (401, "token_invalid"), name
    claims = claims_of(session["access_token"])
    claims["exp"] = claims["iat"] + 365 * 24 * 3600  # a year-long "access" token
    assert me(client, sign(claims, key, kid)) == (401, "token_invalid")


def test_refresh_token_used_as_access_token(client: httpx.Client, session: dict[str, Any]) -> None:
    assert me(client, session["refresh_token"]) == (401, "token_invalid")


def test_access_token_used_as_refresh_token(
    client: httpx.Client, session: dict[str, Any], relay_key: KeyPair
) -> None:
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": session["access_token"]})
    assert (r.status_code, r.json()["code"]) == (401, "token_invalid")
    # Even re-labelled in the header only or in the claim only, the types must agree.
    kid, key = relay_key
    claims = claims_of(session["access_token"])
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": sign(claims, key, kid, typ="rt+jwt")})
    assert (r.status_code, r.json()["code"]) == (401, "token_invalid")
    claims["typ"] = "refresh"
    assert me(client, sign(claims, key, kid)) == (401, "token_invalid")


def test_forged_refresh_with_valid_signature_but_unknown_jti(
    client: httpx.Client, session: dict[str, Any], relay_key: KeyPair
) -> None:
    """A refresh token the server never issued (e.g. minted with a stolen key) has no row."""
    kid, key = relay_key
    claims = claims_of(session["refresh_token"])
    claims["jti"] = "never-issued"
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": sign(claims, key, kid, typ="rt+jwt")})
    assert r.status_code == 401
