"""Device certificates: the relay vouches for a device key, so any replica can check authorship offline.

Why certificates and not "who sent it": a booking often reaches the relay carried by someone else
(docs/design.md, "Authorship"). The relay signs, at login, a small statement "device key K belongs to user U,
who has roles R, owns shops O and staffs shops S, from T1 to T2". The certificate travels inside the
document (top-level map ``certs``, keyed by its id), next to the records its key signed, so a peer
with nothing but the relay's public keys (from ``/.well-known/jwks.json``) can verify every record.

Wire form (msgpack): ``[1, body, kid, signature]`` where ``body`` is the msgpack bytes of
``{"u": user, "r": [roles], "o": [owned shops], "s": [staffed shops], "k": device key (32 bytes),
"iat": ms, "exp": ms}`` and the signature is Ed25519 by relay key ``kid`` over
``b"quickslot-cert-v1\\0" + body``. The certificate id is the first 16 bytes of SHA-256 of the
whole wire form, hex: the key it is stored under, so a certificate cannot be swapped under its id.

Both the wire form and ``body`` must be canonical msgpack (``crdt_core.canonical``: smallest
forms, body keys sorted by their UTF-8 bytes), so one certificate has exactly one byte string and
one id: nobody can re-frame a relay-signed certificate into a second id for the same statement
(which would give its holder a second set of Yjs client ids, ``crdt_core.clientids``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from crdt_core.canonical import canonical_pack, check_canonical
from crdt_core.errors import SchemaError, SignatureError

__all__ = [
    "CERT_DOMAIN",
    "Certificate",
    "CertificateCache",
    "DeviceKey",
    "SigningKey",
    "cert_id_of",
    "issue_certificate",
    "parse_certificate",
    "public_bytes",
]

CERT_DOMAIN = b"quickslot-cert-v1\x00"
CERT_FORMAT = 1
MAX_CERT_BYTES = 4096
ROLES = frozenset({"admin"})


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class SigningKey:
    """A relay signing key with its key id (the same keys sign JWTs, certificates and stamps)."""

    kid: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> bytes:
        return public_bytes(self.private)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)


@dataclass(frozen=True)
class Certificate:
    cert_id: str
    user_id: str
    roles: frozenset[str]
    owner_of: frozenset[str]
    staff_of: frozenset[str]
    device_key: bytes
    issued_at_ms: int
    expires_at_ms: int
    issuer_kid: str
    raw: bytes = field(repr=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def owns(self, shop_id: str) -> bool:
        return shop_id in self.owner_of

    def staffs(self, shop_id: str) -> bool:
        """Owners count as staff of their own shop."""
        return shop_id in self.staff_of or shop_id in self.owner_of

    def valid_at(self, ms: int) -> bool:
        return self.issued_at_ms <= ms < self.expires_at_ms


def cert_id_of(raw: bytes) -> str:
    return hashlib.sha256(raw).digest()[:16].hex()


def _str_list(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or len(value) > 1000:
        raise SchemaError(f"certificate {what} must be a list")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= 64:
            raise SchemaError(f"certificate {what} holds a bad entry")
    return frozenset(value)


def issue_certificate(
    signer: SigningKey,
    *,
    user_id: str,
    roles: Sequence[str],
    owner_of: Sequence[str],
    staff_of: Sequence[str],
    device_public_key: bytes,
    issued_at_ms: int,
    expires_at_ms: int,
) -> bytes:
    """The relay's side: sign a device key for a user. Returns the certificate's wire bytes."""
    if len(device_public_key) != 32:
        raise SchemaError("device key must be 32 raw Ed25519 bytes")
    if expires_at_ms <= issued_at_ms:
        raise SchemaError("certificate expires before it is issued")
    body = canonical_pack(
        {
            "u": user_id,
            "r": sorted(roles),
            "o": sorted(owner_of),
            "s": sorted(staff_of),
            "k": bytes(device_public_key),
            "iat": int(issued_at_ms),
            "exp": int(expires_at_ms),
        }
    )
    sig = signer.sign(CERT_DOMAIN + body)
    raw = canonical_pack([CERT_FORMAT, body, signer.kid, sig])
    parse_certificate(raw, {signer.kid: signer.public})  # refuse to issue what we could not verify
    return raw


def _unpack(raw: bytes) -> Any:
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, max_bin_len=MAX_CERT_BYTES, max_str_len=MAX_CERT_BYTES
        )
    except Exception as exc:
        raise SchemaError(f"certificate is not msgpack: {exc}") from None


def parse_certificate(raw: bytes, trusted_keys: Mapping[str, bytes]) -> Certificate:
    """Verify a certificate against the relay's public keys ``{kid: raw 32-byte key}``.

    Raises:
        SchemaError: not a certificate, or not in canonical form.
        SignatureError: unknown key id or a signature that does not verify.
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_CERT_BYTES:
        raise SchemaError("certificate must be at most 4 KiB of bytes")
    outer = _unpack(bytes(raw))
    # ``type(...) is int``: msgpack's true and 1.0 compare equal to 1 in Python, and each would be
    # another canonical byte string (so another certificate id and set of client ids) for one
    # relay-signed certificate.
    if not (
        isinstance(outer, list) and len(outer) == 4 and type(outer[0]) is int and outer[0] == CERT_FORMAT
    ):
        raise SchemaError("certificate envelope malformed")
    _, body, kid, sig = outer
    if not (isinstance(body, bytes) and isinstance(kid, str) and isinstance(sig, bytes)):
        raise SchemaError("certificate envelope has wrong field types")
    check_canonical(bytes(raw), outer, "certificate")
    pub = trusted_keys.get(kid)
    if pub is None:
        raise SignatureError(f"certificate signed by unknown relay key {kid!r}")
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, CERT_DOMAIN + body)
    except (InvalidSignature, ValueError):
        raise SignatureError("certificate signature does not verify") from None
    fields = _unpack(body)
    if not isinstance(fields, dict):
        raise SchemaError("certificate body must be a map")
    check_canonical(body, fields, "certificate body")
    user = fields.get("u")
    device = fields.get("k")
    iat = fields.get("iat")
    exp = fields.get("exp")
    if not (isinstance(user, str) and 0 < len(user) <= 64):
        raise SchemaError("certificate user id malformed")
    if not (isinstance(device, bytes) and len(device) == 32):
        raise SchemaError("certificate device key malformed")
    if type(iat) is not int or type(exp) is not int or exp <= iat:
        raise SchemaError("certificate validity malformed")
    return Certificate(
        cert_id=cert_id_of(bytes(raw)),
        user_id=user,
        roles=_str_list(fields.get("r", []), "roles") & ROLES,
        owner_of=_str_list(fields.get("o", []), "owned shops"),
        staff_of=_str_list(fields.get("s", []), "staffed shops"),
        device_key=device,
        issued_at_ms=iat,
        expires_at_ms=exp,
        issuer_kid=kid,
        raw=bytes(raw),
    )


class CertificateCache:
    """Verified certificates by id, so a document's certificates are checked once, not per update.

    Keyed by the certificate id, which is a hash of the exact bytes, and remembers which relay keys
    were trusted when it verified: a cache built under one key set never vouches under another.
    """

    def __init__(self, trusted_keys: Mapping[str, bytes], limit: int = 10_000) -> None:
        self.trusted_keys = dict(trusted_keys)
        self._by_id: dict[str, Certificate] = {}
        self._limit = limit

    def get(self, cert_id: str) -> Certificate | None:
        return self._by_id.get(cert_id)

    def verify(self, raw: bytes) -> Certificate:
        cid = cert_id_of(raw)
        found = self._by_id.get(cid)
        if found is not None:
            return found
        cert = parse_certificate(raw, self.trusted_keys)
        if len(self._by_id) >= self._limit:
            self._by_id.pop(next(iter(self._by_id)))
        self._by_id[cid] = cert
        return cert


@dataclass(frozen=True)
class DeviceKey:
    """What a client signs records with: its private device key and the certificate for it."""

    private: Ed25519PrivateKey
    certificate: bytes

    @property
    def cert_id(self) -> str:
        return cert_id_of(self.certificate)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)
