"""Who a peer is, checked offline: device certificates, proof of possession, access tokens, scope.

Why each piece (docs/peer.md has the whole argument):

* **The certificate decides identity and lifetime.** It is relay-signed (the keys cached from
  ``/.well-known/jwks.json`` at login), binds a device key to a user and their shops, and lasts as
  long as the refresh token (7 days by default). Peers meet when there is no network, often hours
  after the last relay contact, so a 30-minute access token would usually be expired: its expiry
  exists so that the *relay* can cut a revoked session quickly, and a peer has no revocation
  list to consult anyway. So a peer refuses an expired *certificate* (close ``4001``), not an
  expired token.
* **Possession, not bearer.** A token or a certificate copied off the network must not be enough,
  so each side signs a transcript holding both fresh nonces and both certificate ids with its
  device key. Binding the other side's certificate id means a proof made for one peer is useless
  against another (a relaying attacker cannot splice two handshakes with different peers).
* **The token is still checked** (EdDSA pinned, ``kid`` among the cached keys, issuer and
  audience equal to those of this profile's own token, ``typ`` access in claim and header, ``sub``
  the certificate's user), must not be older than the certificate (it belongs to the login or
  refresh that produced it) and, when bound to a device key (``cnf``), must name the
  certificate's key. It is revealed only to a side that has already proven possession. A bound
  token is useless to the peer at the relay (the relay wants a proof signed by the device key,
  :mod:`crdt_core.pop`, under a prefix no peer transcript has); an unbound one would be a bearer
  credential there.
* **Scope.** Peers exchange only documents both sides carry: the catalog, a shop's documents for
  its owners and staff, what each side explicitly follows; a ``user:`` document only between two
  devices of the same user (the relay's read rule).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt
import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client.errors import ClientError
from client.local.client import LocalClient
from crdt_core.certs import Certificate, DeviceKey, parse_certificate
from crdt_core.errors import SchemaError, SignatureError
from crdt_core.messages import CloseCode
from crdt_core.pop import bound_key
from crdt_core.schema import DocKind, parse_doc_id

__all__ = [
    "NONCE_BYTES",
    "PeerAuthError",
    "PeerCredentials",
    "PeerVerifier",
    "Scope",
    "may_share",
    "new_nonce",
    "offer",
    "transcript",
]

NONCE_BYTES = 32
PEER_DOMAIN = b"quickslot-peer-v1\x00"
#: Clock skew tolerated between two offline devices (their clocks were last set independently).
LEEWAY_S = 120
_ACCESS_HEADER_TYP = "at+jwt"

Role = Literal["acceptor", "dialer"]


class PeerAuthError(ClientError):
    """A credential failed a check; ``close_code`` is what the connection closes with."""

    def __init__(self, close_code: int, reason: str) -> None:
        super().__init__(reason)
        self.close_code = int(close_code)
        self.reason = reason


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def transcript(
    role: Role, dialer_nonce: bytes, acceptor_nonce: bytes, dialer_cert_id: str, acceptor_cert_id: str
) -> bytes:
    """What a side signs: domain-separated from records and certificates, bound to both nonces and
    both certificates, and to the signer's role so one side's proof never passes as the other's."""
    body: bytes = msgpack.packb([role, dialer_nonce, acceptor_nonce, dialer_cert_id, acceptor_cert_id])
    return PEER_DOMAIN + body


def _claims_unverified(token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise PeerAuthError(CloseCode.AUTH_FAILED, f"malformed token: {type(exc).__name__}") from None
    return claims


@dataclass(frozen=True)
class PeerCredentials:
    """This profile's side of a peer handshake: what it presents and what it checks against."""

    user_id: str
    device: DeviceKey
    certificate: Certificate
    token: str
    relay_keys: Mapping[str, bytes]
    issuer: str
    audience: str

    @classmethod
    async def load(cls, local: LocalClient, now_ms: int | None = None) -> PeerCredentials:
        """Read the identity, the cached relay keys and the access token from the profile.

        Raises:
            PeerAuthError: not logged in (4003) or this device's certificate has expired (4001):
                a peer would refuse us, so there is no point connecting.
        """
        identity = local.identity
        tokens = await asyncio.to_thread(local.secrets.tokens)
        if identity is None or tokens is None or not local.relay_keys:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "not logged in: log in (online) first")
        cert = identity.certificate
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        if not cert.valid_at(now):
            raise PeerAuthError(
                CloseCode.TOKEN_EXPIRED, "this device's certificate has expired: log in again while online"
            )
        token = tokens.access.reveal()
        claims = _claims_unverified(token)
        issuer, audience = claims.get("iss"), claims.get("aud")
        if not isinstance(issuer, str) or not isinstance(audience, str):
            raise PeerAuthError(CloseCode.AUTH_FAILED, "our own token names no issuer or audience")
        return cls(identity.user_id, identity.device, cert, token, local.relay_keys, issuer, audience)

    def sign(self, message: bytes) -> bytes:
        return self.device.sign(message)


class PeerVerifier:
    """Checks the other side's certificate, proof and token against this profile's cached keys.

    Args:
        credentials: this side's, for the trusted keys and the expected issuer and audience.
        now_ms: the clock; tests pass a fixed one.
    """

    def __init__(self, credentials: PeerCredentials, now_ms: Callable[[], int] | None = None) -> None:
        self.keys = dict(credentials.relay_keys)
        self.issuer = credentials.issuer
        self.audience = credentials.audience
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))

    def certificate(self, raw: bytes) -> Certificate:
        """The other side's certificate, if a known relay key signed it and it is valid now."""
        try:
            cert = parse_certificate(raw, self.keys)
        except SignatureError as exc:
            raise PeerAuthError(CloseCode.AUTH_FAILED, f"certificate not from our relay: {exc}") from None
        except SchemaError as exc:
            raise PeerAuthError(CloseCode.AUTH_FAILED, f"not a certificate: {exc}") from None
        now = self._now_ms()
        if now >= cert.expires_at_ms:
            raise PeerAuthError(CloseCode.TOKEN_EXPIRED, "certificate expired: log in again while online")
        if now + LEEWAY_S * 1000 < cert.issued_at_ms:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "certificate not valid yet (check the clock)")
        return cert

    def proof(self, cert: Certificate, message: bytes, signature: bytes) -> None:
        """That the holder of ``cert``'s device key signed ``message`` (a transcript)."""
        try:
            Ed25519PublicKey.from_public_bytes(cert.device_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            raise PeerAuthError(CloseCode.AUTH_FAILED, "proof of possession failed") from None

    def token(self, token: str, cert: Certificate) -> dict[str, Any]:
        """The other side's access token: signature, issuer, audience, type, subject, age.

        Its ``exp`` is not enforced (see the module doc): the certificate's is, in
        :meth:`certificate`, and the token may not predate the certificate.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "malformed token") from None
        if header.get("alg") != "EdDSA":
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token algorithm not allowed")
        if header.get("typ") != _ACCESS_HEADER_TYP:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "not an access token")
        kid = header.get("kid")
        raw_key = self.keys.get(kid) if isinstance(kid, str) else None
        if raw_key is None:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token signed by a key our relay did not publish")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                Ed25519PublicKey.from_public_bytes(raw_key),
                algorithms=["EdDSA"],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_S,
                options={"verify_exp": False, "require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
            )
        except jwt.InvalidIssuerError:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token from another relay (issuer)") from None
        except jwt.InvalidAudienceError:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token for another service (audience)") from None
        except jwt.PyJWTError as exc:
            raise PeerAuthError(CloseCode.AUTH_FAILED, f"token refused: {type(exc).__name__}") from None
        if claims.get("typ") != "access":
            raise PeerAuthError(CloseCode.AUTH_FAILED, "not an access token")
        if claims.get("sub") != cert.user_id:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token and certificate name different users")
        iat = claims.get("iat")
        if not isinstance(iat, int) or iat * 1000 < cert.issued_at_ms - LEEWAY_S * 1000:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token older than the certificate")
        try:
            bound = bound_key(claims)
        except ValueError:
            raise PeerAuthError(CloseCode.AUTH_FAILED, "token with a malformed cnf claim") from None
        if bound is not None and bound != cert.device_key:
            raise PeerAuthError(
                CloseCode.AUTH_FAILED, "token bound to another device key than the certificate's"
            )
        return claims


@dataclass(frozen=True)
class Scope:
    """The documents one side carries for peers.

    ``shops`` are the shops its certificate says it owns or staffs: it carries every document of
    those (any day of their bookings). ``docs`` are the ones it follows explicitly (its selective
    sync set). ``user:`` documents only for the same user.
    """

    user_id: str
    shops: frozenset[str]
    docs: frozenset[str]

    @classmethod
    def of_certificate(cls, cert: Certificate, docs: Iterable[str] = ()) -> Scope:
        return cls(cert.user_id, cert.owner_of | cert.staff_of, frozenset(docs))

    def covers(self, doc_id: str) -> bool:
        try:
            doc = parse_doc_id(doc_id)
        except (SchemaError, ValueError):
            return False
        if doc.kind is DocKind.USER:
            return doc.user_id == self.user_id
        if doc_id == "catalog" or doc_id in self.docs:
            return True
        return doc.kind in (DocKind.SHOP, DocKind.BOOKINGS) and doc.shop_id in self.shops


def may_share(doc_id: str, mine: Scope, theirs_user: str) -> tuple[str, str] | None:
    """Whether this side serves ``doc_id`` to a peer signed in as ``theirs_user``.

    Returns None when it does, else an ``(error code, reason)`` for the refusal.
    """
    try:
        doc = parse_doc_id(doc_id)
    except (SchemaError, ValueError) as exc:
        return "bad_doc", str(exc)
    if doc.kind is DocKind.USER and not (doc.user_id == theirs_user == mine.user_id):
        return "forbidden", "a user's own document goes only to that user's devices"
    if not mine.covers(doc_id):
        return "bad_doc", "not carried by this peer"
    return None


def offer(held: Iterable[str], mine: Scope, theirs: Scope) -> list[str]:
    """The documents this side holds that the other side's certificate says it carries."""
    return sorted(d for d in held if theirs.covers(d) and may_share(d, mine, theirs.user_id) is None)
