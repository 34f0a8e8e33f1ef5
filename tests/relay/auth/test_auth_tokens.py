"""Tokens and keys with plain calls and an injected clock."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import jwt
import pytest

from relay.auth.keys import KeyStore, KeyStoreError, thumbprint_kid
from relay.auth.tokens import (
    ACCESS,
    REFRESH,
    RevocationState,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
    TokenService,
)

NOW = float(int(time.time()))  # real time: the key store stamps retirement with it


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore.open(tmp_path / "keys")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(keys: KeyStore, clock: Clock) -> TokenService:
    return TokenService(
        keys,
        issuer="iss",
        audience="aud",
        access_ttl_s=1800,
        refresh_ttl_s=7 * 86400,
        leeway_s=30,
        clock=clock,
    )


def test_issue_and_verify(tokens: TokenService, keys: KeyStore) -> None:
    issued = tokens.issue(ACCESS, "user-1", "fam-1")
    claims = tokens.verify_access(issued.token)
    assert claims == issued.claims
    assert (claims.sub, claims.fam, claims.typ, claims.kid) == ("user-1", "fam-1", "access", keys.active_kid)
    assert claims.exp - claims.iat == 1800
    refresh = tokens.issue(REFRESH, "user-1", "fam-1")
    assert tokens.decode(refresh.token, REFRESH).exp - NOW == 7 * 86400
    assert issued.claims.jti != refresh.claims.jti


def test_expiry_with_leeway(tokens: TokenService, clock: Clock) -> None:
    issued = tokens.issue(ACCESS, "u", "f")
    clock.t = NOW + 1800 + 29
    tokens.verify_access(issued.token)  # within the leeway
    clock.t = NOW + 1800 + 31
    with pytest.raises(TokenExpired):
        tokens.verify_access(issued.token)


def test_not_yet_valid(tokens: TokenService, clock: Clock) -> None:
    clock.t = NOW + 600
    issued = tokens.issue(ACCESS, "u", "f")
    clock.t = NOW
    with pytest.raises(TokenInvalid, match="future"):
        tokens.verify_access(issued.token)


def test_types_do_not_mix(tokens: TokenService) -> None:
    with pytest.raises(TokenInvalid):
        tokens.verify_access(tokens.issue(REFRESH, "u", "f").token)
    with pytest.raises(TokenInvalid):
        tokens.decode(tokens.issue(ACCESS, "u", "f").token, REFRESH)


def test_revocation(tokens: TokenService, clock: Clock) -> None:
    a = tokens.issue(ACCESS, "u1", "fam-a")
    b = tokens.issue(ACCESS, "u1", "fam-b")
    c = tokens.issue(ACCESS, "u2", "fam-c")
    tokens.revocations.revoke_family("fam-a", NOW)
    with pytest.raises(TokenRevoked):
        tokens.verify_access(a.token)
    tokens.verify_access(b.token)
    tokens.revocations.disable_user("u2")
    with pytest.raises(TokenRevoked):
        tokens.verify_access(c.token)
    tokens.revocations.enable_user("u2")
    tokens.verify_access(c.token)
    # decode() (no revocation check) still accepts the signature: revocation is separate.
    assert tokens.decode(a.token, ACCESS).fam == "fam-a"


def test_revocation_state_forgets_after_the_horizon() -> None:
    state = RevocationState(horizon_s=100)
    state.revoke_family("f", 1000)
    state.prune(1099)
    assert state.is_family_revoked("f")
    state.prune(1100)
    assert not state.is_family_revoked("f") and len(state) == 0


def test_rotation_keeps_old_tokens_and_refuses_new_ones_from_retired_keys(
    tokens: TokenService, keys: KeyStore, clock: Clock
) -> None:
    old_kid = keys.active_kid
    old_private = keys.active.private
    before = tokens.issue(ACCESS, "u", "f")
    clock.t = NOW + 10
    new_kid = keys.rotate()
    assert new_kid != old_kid and keys.active_kid == new_kid
    assert tokens.verify_access(before.token).kid == old_kid
    after = tokens.issue(ACCESS, "u", "f")
    assert jwt.get_unverified_header(after.token)["kid"] == new_kid
    # Someone holding the retired private key mints a token "now": refused.
    retired_at = keys.key_info(old_kid).retired_at  # type: ignore[union-attr]
    assert retired_at is not None
    iat = int(retired_at) + 3600
    clock.t = iat + 1
    payload = {"iss": "iss", "aud": "aud", "sub": "u", "iat": iat, "nbf": iat, "exp": iat + 600, "jti": "j",
               "fam": "f", "typ": "access"}  # fmt: skip
    forged = jwt.encode(payload, old_private, algorithm="EdDSA", headers={"kid": old_kid, "typ": "at+jwt"})
    with pytest.raises(TokenInvalid, match="retired"):
        tokens.verify_access(forged)


def test_keys_on_disk(tmp_path: Path) -> None:
    keys = KeyStore.open(tmp_path / "keys")
    d = tmp_path / "keys"
    assert d.stat().st_mode & 0o777 == 0o700
    private_files = list(d.glob("*.key"))
    assert [p.stem for p in private_files] == [keys.active_kid]
    assert private_files[0].stat().st_mode & 0o777 == 0o600
    # Re-opening finds the same key rather than making a new one.
    again = KeyStore.open(d)
    assert again.active_kid == keys.active_kid
    # Another process rotating is picked up by reload_if_changed.
    assert not again.reload_if_changed()
    kid = keys.rotate()
    assert again.reload_if_changed() and again.active_kid == kid
    assert set(again.public_keys()) == set(keys.public_keys())


def test_kid_is_the_rfc7638_thumbprint(keys: KeyStore) -> None:
    jwk = keys.jwks()["keys"][0]
    canonical = json.dumps({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":"))
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert jwk["kid"] == expected == thumbprint_kid(keys.public_keys()[jwk["kid"]])
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": jwk["x"],
        "kid": expected,
        "use": "sig",
        "alg": "EdDSA",
    }


def test_corrupt_manifest_is_an_error(tmp_path: Path) -> None:
    keys = KeyStore.open(tmp_path / "keys")
    (tmp_path / "keys" / f"{keys.active_kid}.key").unlink()
    with pytest.raises(KeyStoreError, match="missing"):
        KeyStore.open(tmp_path / "keys")
    (tmp_path / "keys" / "manifest.json").write_text("{not json")
    with pytest.raises(KeyStoreError, match="corrupt"):
        KeyStore.open(tmp_path / "keys")
