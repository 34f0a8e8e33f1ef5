"""JWT access and refresh tokens signed with the relay's Ed25519 keys (EdDSA).

Why so strict: these tokens are verified offline by peers with the published JWKS, so the token
alone has to say everything and nothing may be guessed. On verify:

* the algorithm is pinned to EdDSA (``alg: none`` and HS256-with-the-public-key are refused);
* the key is chosen by the ``kid`` header among our published keys (unknown kid: refused);
* ``iss``, ``aud``, ``sub``, ``exp``, ``iat``, ``nbf``, ``jti``, ``fam`` and ``typ`` must be
  present and right; the ``typ`` claim and the ``typ`` header (RFC 8725 explicit typing:
  ``at+jwt``/``rt+jwt``) keep an access token from passing as a refresh token and vice versa;
* the lifetime (``exp - iat``) may not exceed the configured TTL of its type, and a retired key
  cannot have issued a token after it retired; together these make a retired key useless for
  new tokens while tokens it issued stay valid until they expire;
* time claims are checked against an injectable clock with a small leeway for clock skew.

Access tokens issued for a device key (login or refresh with ``device_public_key``) are **bound**
to it: they carry ``cnf: {"jwk": <the Ed25519 key>}`` (RFC 7800) and :meth:`TokenService.verify_access`
accepts them only with a proof of possession made with that key for the use at hand
(:mod:`crdt_core.pop`). Why: a peer sees our access token in the peer handshake and must not be
able to replay it here. Why ``jwk`` and not a thumbprint (``jkt``): the relay must verify a proof
from the token alone, without a lookup; a SHA-256 thumbprint is as long as the Ed25519 key
itself (32 bytes), so carrying the key costs nothing, and RFC 7800 wants one key member only.
Tokens issued without a device key carry no ``cnf`` and stay bearer tokens.

A refresh token may be bound too (the browser sessions whose refresh token is an HttpOnly cookie,
``relay.http.refresh_cookie``): it carries the same ``cnf`` and is rotated only for a refresh that
presents that device key (:meth:`relay.auth.accounts.AccountService.refresh`), so script that can
make the browser send the cookie cannot get tokens or a certificate for a key of its own.

Access tokens carry the refresh family id as ``fam`` so that revoking a family (logout, refresh
reuse, password reset, disabled account) also invalidates its live access tokens:
:meth:`TokenService.verify_access` consults the in-memory :class:`RevocationState`, which the
account service keeps current (directly, and from ``account_events`` written by the CLI).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jwt

from crdt_core.pop import Proof, ProofError, Purpose, bound_key, check_proof, cnf_claim
from relay.auth.keys import KeyStore
from relay.errors import RelayError

TokenType = Literal["access", "refresh"]
ACCESS: TokenType = "access"
REFRESH: TokenType = "refresh"
ALGORITHM = "EdDSA"
_HEADER_TYP = {"access": "at+jwt", "refresh": "rt+jwt"}
MAX_TOKEN_LENGTH = 4096
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "nbf", "jti"]


class TokenError(RelayError):
    """Base of token failures; ``code`` is the machine-readable reason sent to clients."""

    code = "token_invalid"


class TokenInvalid(TokenError):
    """Malformed, badly signed, wrong issuer/audience/type, not yet valid: never retry as is."""

    code = "token_invalid"


class TokenExpired(TokenError):
    """Validly signed but past ``exp``: the client should refresh and try again."""

    code = "token_expired"


class TokenRevoked(TokenError):
    """Validly signed and unexpired, but its family was revoked or its user disabled."""

    code = "token_revoked"


class ProofFailed(TokenInvalid):
    """A token bound to a device key came without a valid proof of possession.

    ``code`` is the :class:`crdt_core.pop.ProofError`'s: ``proof_required``, ``proof_stale`` or
    ``proof_invalid``. A subclass of :class:`TokenInvalid`, so every caller that refuses an
    invalid token refuses this too (the websocket closes 4003, REST answers 401).
    """

    def __init__(self, error: ProofError) -> None:
        super().__init__(error.reason)
        self.code = error.code
        self.reason = error.reason


@dataclass(frozen=True)
class Claims:
    """The verified content of a token."""

    sub: str  # user id
    typ: TokenType
    jti: str
    fam: str  # refresh family id
    iat: int
    nbf: int
    exp: int
    iss: str
    aud: str
    kid: str
    #: The device key an access token is bound to (``cnf``), None for a bearer token.
    cnf_key: bytes | None = None


@dataclass(frozen=True)
class IssuedToken:
    token: str
    claims: Claims


class RevocationState:
    """What the relay knows is revoked, checked on every access-token verification.

    Revoked families are remembered until no access token issued before the revocation can still
    be alive (``revoked_at + horizon``); disabled users until they are enabled again.
    """

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._families: dict[str, float] = {}
        self._disabled: set[str] = set()

    def revoke_family(self, family_id: str, revoked_at: float) -> None:
        self._families[family_id] = revoked_at + self.horizon_s

    def is_family_revoked(self, family_id: str) -> bool:
        return family_id in self._families

    def disable_user(self, user_id: str) -> None:
        self._disabled.add(user_id)

    def enable_user(self, user_id: str) -> None:
        self._disabled.discard(user_id)

    def is_user_disabled(self, user_id: str) -> bool:
        return user_id in self._disabled

    def prune(self, now: float) -> None:
        for fam in [f for f, until in self._families.items() if until <= now]:
            del self._families[fam]

    def __len__(self) -> int:
        return len(self._families)


class TokenService:
    """Issues and verifies the relay's JWTs."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        leeway_s: int = 30,
        clock: Callable[[], float] = time.time,
        revocations: RevocationState | None = None,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.ttl: dict[str, int] = {ACCESS: access_ttl_s, REFRESH: refresh_ttl_s}
        self.leeway_s = leeway_s
        self.clock = clock
        self.revocations = revocations or RevocationState(max(access_ttl_s, refresh_ttl_s) + leeway_s)

    # -- issuing ---------------------------------------------------------------------------------

    def issue(
        self,
        typ: TokenType,
        user_id: str,
        family_id: str,
        *,
        jti: str | None = None,
        device_key: bytes | None = None,
    ) -> IssuedToken:
        """Sign a token of ``typ`` for ``user_id`` in refresh family ``family_id``; a token given
        ``device_key`` is bound to it (``cnf``, module docstring): an access token then needs a
        proof of possession, a refresh token the same key presented with it at refresh."""
        now = int(self.clock())
        key = self.keys.active
        claims = Claims(
            sub=user_id,
            typ=typ,
            jti=jti or secrets.token_urlsafe(18),
            fam=family_id,
            iat=now,
            nbf=now,
            exp=now + self.ttl[typ],
            iss=self.issuer,
            aud=self.audience,
            kid=key.kid,
            cnf_key=device_key,
        )
        payload: dict[str, Any] = {
            "iss": claims.iss,
            "aud": claims.aud,
            "sub": claims.sub,
            "iat": claims.iat,
            "nbf": claims.nbf,
            "exp": claims.exp,
            "jti": claims.jti,
            "fam": claims.fam,
            "typ": claims.typ,
        }
        if device_key is not None:
            payload["cnf"] = cnf_claim(device_key)
        token = jwt.encode(
            payload, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": _HEADER_TYP[typ]}
        )
        return IssuedToken(token=token, claims=claims)

    # -- verifying -------------------------------------------------------------------------------

    def decode(self, token: str, expected: TokenType) -> Claims:
        """Verify signature and claims of a token of type ``expected`` (no revocation check).

        Raises :class:`TokenExpired` or :class:`TokenInvalid`.
        """
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenInvalid("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise TokenInvalid("algorithm not allowed")
        kid = header.get("kid")
        info = self.keys.key_info(kid) if isinstance(kid, str) else None
        if info is None:
            raise TokenInvalid("unknown key id")
        typ_header = header.get("typ")
        if not isinstance(typ_header, str) or typ_header.lower() != _HEADER_TYP[expected]:
            raise TokenInvalid("wrong token type")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                info.key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                # Time claims are checked below against our clock (testable, one leeway rule).
                options={"require": _REQUIRED, "verify_exp": False, "verify_nbf": False, "verify_iat": False},
            )
        except jwt.PyJWTError as e:
            raise TokenInvalid(_reason(e)) from None

        if payload.get("typ") != expected:
            raise TokenInvalid("wrong token type")
        for name in ("sub", "jti", "fam"):
            value = payload.get(name)
            if not isinstance(value, str) or not 0 < len(value) <= 128:
                raise TokenInvalid(f"bad {name} claim")
        times: dict[str, int] = {}
        for name in ("iat", "nbf", "exp"):
            value = payload.get(name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TokenInvalid(f"bad {name} claim")
            times[name] = value

        now = self.clock()
        if times["iat"] > now + self.leeway_s:
            raise TokenInvalid("issued in the future")
        if times["nbf"] > now + self.leeway_s:
            raise TokenInvalid("not yet valid")
        if times["exp"] - times["iat"] > self.ttl[expected] + self.leeway_s:
            raise TokenInvalid("lifetime longer than allowed")
        if info.retired_at is not None and times["iat"] > info.retired_at + self.leeway_s:
            raise TokenInvalid("issued by a retired key")
        if times["exp"] <= now - self.leeway_s:
            raise TokenExpired("token expired")
        try:
            cnf_key = bound_key(payload)
        except ValueError:
            raise TokenInvalid("bad cnf claim") from None

        aud = payload["aud"]
        return Claims(
            sub=payload["sub"],
            typ=expected,
            jti=payload["jti"],
            fam=payload["fam"],
            iat=times["iat"],
            nbf=times["nbf"],
            exp=times["exp"],
            iss=payload["iss"],
            aud=aud if isinstance(aud, str) else self.audience,
            kid=info.kid,
            cnf_key=cnf_key,
        )

    def verify_access(
        self, token: str, *, purpose: Purpose | None = None, proof: Proof | None = None
    ) -> Claims:
        """Verify an access token for a request or a websocket connection.

        A token bound to a device key also needs ``proof``, made with that key for ``purpose``
        (``crdt_core.pop.SYNC`` or ``crdt_core.pop.rest(method, path)``); without one it is
        refused, so a caller that forgets to pass the proof fails closed.

        Raises :class:`TokenExpired` (refresh and retry), :class:`TokenRevoked` (log in again)
        or :class:`TokenInvalid` (never valid; :class:`ProofFailed` for a missing or bad proof).
        """
        claims = self.decode(token, ACCESS)
        self.check_revocation(claims)
        if claims.cnf_key is not None:
            # No purpose means the caller has no proof to check: refused as "proof required".
            given = proof if purpose is not None else None
            try:
                check_proof(claims.cnf_key, given, purpose or "", claims.aud, claims.jti, now=self.clock())
            except ProofError as exc:
                raise ProofFailed(exc) from None
        return claims

    def check_revocation(self, claims: Claims) -> None:
        """Raise :class:`TokenRevoked` if the claims' family or user was revoked/disabled."""
        if self.revocations.is_family_revoked(claims.fam) or self.revocations.is_user_disabled(claims.sub):
            raise TokenRevoked("token revoked")


def _reason(error: jwt.PyJWTError) -> str:
    if isinstance(error, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(error, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(error, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing {error.claim} claim"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    return "malformed token"
