"""Proof of possession of a device key at the relay, for access tokens bound to that key.

Why: a peer that proved itself in a peer handshake sees our access token (docs/peer.md). A plain
bearer token would let it read as us at the relay until the token expires. So the relay binds
the access tokens it issues to the device key presented at login or refresh (RFC 7800: the claim
``cnf: {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": ...}}``) and accepts a bound token only
together with a fresh signature by that key. A token without ``cnf`` (issued without a device
key) stays a bearer token.

The proof is a detached Ed25519 signature over::

    "quickslot-relay-pop-v1\\0" || msgpack([purpose, audience, jti, unix_time])

* the **domain prefix** differs from every other thing a device key signs (records
  ``quickslot-record-v2\\0``, peer transcripts ``quickslot-peer-v1\\0``), so no proof made for a
  peer, and no record, ever verifies as a relay proof, and no relay proof as either of them;
* **purpose** is ``"sync"`` for the websocket and ``["rest", METHOD, PATH]`` for a REST call, so
  a proof made for one use opens nothing else;
* **audience** and **jti** tie it to one relay and one token: a proof never travels to another
  token;
* **unix_time** (seconds) is checked against the relay's clock within :data:`WINDOW_S`.

Pure (no I/O): the relay, the reference client and every test or benchmark client share it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crdt_core.b64 import b64url, b64url_decode
from crdt_core.canonical import packb

__all__ = [
    "DOMAIN",
    "PROOF_HEADER",
    "PROOF_TIME_HEADER",
    "STALE_REASON",
    "SYNC",
    "WINDOW_S",
    "Binding",
    "Proof",
    "ProofError",
    "Purpose",
    "auth_proof",
    "bound_key",
    "check_proof",
    "cnf_claim",
    "make_proof",
    "parse_proof",
    "proof_headers",
    "rest",
    "statement",
    "token_binding",
]

DOMAIN: Final = b"quickslot-relay-pop-v1\x00"
#: How far a proof's time may be from the relay's clock, either way. Five minutes is the clock
#: slack the relay already grants a device (certificates are back-dated by it), so any device
#: whose records are accepted can also prove possession; it is a sixth of an access token's life,
#: so a proof that leaked (a logged header) is useless long before the token it names.
WINDOW_S: Final = 300
#: The close reason of a proof whose time is outside the window: stable, so a client can tell
#: "my clock is off" (learn the relay's time and retry) from a refused token (log in again).
STALE_REASON: Final = f"proof of possession failed: proof time not within {WINDOW_S} s of the relay's clock"
PROOF_HEADER: Final = "QuickSlot-Proof"
PROOF_TIME_HEADER: Final = "QuickSlot-Proof-Time"
#: The purpose of a proof for the sync websocket (header or first ``auth`` message alike).
SYNC: Final = "sync"
SIGNATURE_BYTES: Final = 64
KEY_BYTES: Final = 32
_MAX_TIME: Final = 2**63 - 1

#: ``"sync"``, or ``("rest", METHOD, PATH)`` (see :func:`rest`).
Purpose = str | tuple[str, str, str]


class ProofError(ValueError):
    """A proof is missing, malformed, stale or does not verify; ``code`` is machine-readable."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Proof:
    """A detached signature and the unix time (seconds) it claims to have been made at."""

    signature: bytes
    at: int


def rest(method: str, path: str) -> tuple[str, str, str]:
    """The purpose of a proof for one REST call: the method and the path, without the query."""
    return ("rest", method.upper(), path)


def statement(purpose: Purpose, audience: str, jti: str, at: int) -> bytes:
    """The bytes a proof signs (module docstring)."""
    what: Any = list(purpose) if isinstance(purpose, tuple) else purpose
    body = packb([what, audience, jti, at])
    return DOMAIN + body


def cnf_claim(device_public_key: bytes) -> dict[str, Any]:
    """The ``cnf`` claim binding a token to an Ed25519 device key (RFC 7800, ``jwk`` member)."""
    if len(device_public_key) != KEY_BYTES:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64url(device_public_key)}}


def bound_key(claims: Mapping[str, Any]) -> bytes | None:
    """The device key a token's claims bind it to, or None for a bearer token.

    Raises:
        ValueError: ``cnf`` is present but is not exactly the form :func:`cnf_claim` writes (an
            unknown confirmation method must not pass as "unbound").
    """
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict) or set(cnf) != {"jwk"}:
        raise ValueError("cnf must hold exactly a jwk")
    jwk = cnf["jwk"]
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("cnf.jwk must be an OKP Ed25519 key")
    x = jwk.get("x")
    raw = b64url_decode(x) if isinstance(x, str) else b""
    if len(raw) != KEY_BYTES or b64url(raw) != x:
        raise ValueError("cnf.jwk.x must be base64url of 32 bytes")
    return raw


def make_proof(
    private_key: Ed25519PrivateKey, purpose: Purpose, audience: str, jti: str, at: int | None = None
) -> Proof:
    """Sign a proof for ``purpose`` with the device key (``at`` defaults to now)."""
    when = int(time.time()) if at is None else at
    return Proof(private_key.sign(statement(purpose, audience, jti, when)), when)


def check_proof(
    key: bytes, proof: Proof | None, purpose: Purpose, audience: str, jti: str, *, now: float
) -> None:
    """That ``proof`` was made with ``key`` for this purpose, relay and token, within the window.

    Raises:
        ProofError: ``proof_required`` (none), ``proof_stale`` (time outside the window) or
            ``proof_invalid`` (anything else).
    """
    if proof is None:
        raise ProofError(
            "proof_required", "proof of possession required (the token is bound to a device key)"
        )
    if abs(proof.at - now) > WINDOW_S:
        raise ProofError("proof_stale", STALE_REASON)
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(
            proof.signature, statement(purpose, audience, jti, proof.at)
        )
    except (InvalidSignature, ValueError):
        raise ProofError("proof_invalid", "proof of possession failed") from None


def parse_proof(signature: str | bytes | None, at: str | int | None) -> Proof | None:
    """A proof from its wire form: header text (base64url, decimal) or ``auth`` fields (bin, int).

    Returns None when neither part is there.

    Raises:
        ProofError: ``proof_invalid`` when one part is missing or either is malformed.
    """
    if signature is None and at is None:
        return None
    if signature is None or at is None:
        raise ProofError(
            "proof_invalid", "proof of possession failed: a proof needs both its signature and its time"
        )
    try:
        raw = signature if isinstance(signature, bytes) else b64url_decode(signature)
        when = at if isinstance(at, int) else (int(at) if at.isascii() and at.isdigit() else -1)
    except ValueError:
        raw, when = b"", -1
    if len(raw) != SIGNATURE_BYTES or not 0 <= when <= _MAX_TIME or isinstance(when, bool):
        raise ProofError("proof_invalid", "proof of possession failed: malformed proof")
    return Proof(raw, when)


@dataclass(frozen=True, slots=True)
class Binding:
    """What a client needs to know of its own bound token to prove possession for it."""

    key: bytes
    audience: str
    jti: str


def token_binding(token: str) -> Binding | None:
    """The binding of a token this client holds, read without verifying it (the relay verifies).

    Returns None for a bearer token (no ``cnf``) or a token that is not a readable JWT.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(b64url_decode(parts[1]))
    except ValueError:
        return None
    if not isinstance(claims, dict):
        return None
    try:
        key = bound_key(claims)
    except ValueError:
        return None
    aud, jti = claims.get("aud"), claims.get("jti")
    if key is None or not isinstance(aud, str) or not isinstance(jti, str):
        return None
    return Binding(key, aud, jti)


def _own(token: str, private_key: Ed25519PrivateKey | None) -> tuple[Binding, Ed25519PrivateKey] | None:
    binding = token_binding(token)
    if binding is None:
        return None
    if private_key is None:
        raise ValueError("this token is bound to a device key: a proof needs that key")
    if private_key.public_key().public_bytes_raw() != binding.key:
        raise ValueError("this token is bound to another device key")
    return binding, private_key


def auth_proof(
    token: str, private_key: Ed25519PrivateKey | None, *, clock: Callable[[], float] = time.time
) -> Proof | None:
    """The proof for the sync websocket's first ``auth`` message, or None for a bearer token.

    Raises:
        ValueError: the token is bound and ``private_key`` is missing or another key.
    """
    own = _own(token, private_key)
    if own is None:
        return None
    binding, key = own
    return make_proof(key, SYNC, binding.audience, binding.jti, int(clock()))


def proof_headers(
    token: str,
    private_key: Ed25519PrivateKey | None,
    purpose: Purpose,
    *,
    clock: Callable[[], float] = time.time,
) -> dict[str, str]:
    """``Authorization: Bearer`` and, for a bound token, the two proof headers for ``purpose``.

    Raises:
        ValueError: the token is bound and ``private_key`` is missing or another key.
    """
    headers = {"Authorization": f"Bearer {token}"}
    own = _own(token, private_key)
    if own is not None:
        binding, key = own
        proof = make_proof(key, purpose, binding.audience, binding.jti, int(clock()))
        headers[PROOF_HEADER] = b64url(proof.signature)
        headers[PROOF_TIME_HEADER] = str(proof.at)
    return headers
