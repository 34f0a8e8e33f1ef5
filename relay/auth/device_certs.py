"""Device certificates issued at login and refresh (docs/design.md, "Authorship").

The client generates an Ed25519 device key and presents the public half; the relay answers with a
certificate, signed with its active key, binding that device key to the user's id, roles and
shops, so any replica can check the user's records offline. The certificate format belongs to
``crdt_core.certs`` (pure, shared with peers); this module only gathers the user's current rights
and calls it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdt_core.b64 import b64url_decode
from crdt_core.certs import issue_certificate
from relay.auth.keys import KeyStore

if TYPE_CHECKING:
    from relay.auth.account_types import User

DEVICE_KEY_BYTES = 32
CLOCK_SLACK_MS = 5 * 60 * 1000


def parse_device_public_key(text: str) -> bytes:
    """Decode a base64url Ed25519 public key (32 bytes); ``ValueError`` if it is not one."""
    raw = b64url_decode(text)
    if len(raw) != DEVICE_KEY_BYTES:
        raise ValueError("a device public key is 32 bytes (Ed25519)")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


def issue_device_certificate(
    user: User,
    device_public_key: bytes,
    *,
    keys: KeyStore,
    ttl_s: int,
    now: float | None = None,
) -> bytes:
    """Certificate bytes binding ``device_public_key`` to ``user`` and the user's current rights."""
    # Back-dated by the allowed clock skew: a device whose clock runs a little behind the relay's
    # must not write records that fall before its certificate's start (certificate_expired). At
    # most half the lifetime, so a short --cert-ttl (300 s or less) is still valid when issued;
    # the lifetime (exp - iat, which the arrival rules use) stays exactly ttl_s.
    now_ms = int((time.time() if now is None else now) * 1000)
    issued_at_ms = now_ms - min(CLOCK_SLACK_MS, ttl_s * 1000 // 2)
    cert = issue_certificate(
        keys.signing_key(),
        user_id=user.user_id,
        roles=list(user.roles),
        owner_of=list(user.owner_of),
        staff_of=list(user.staff_of),
        device_public_key=device_public_key,
        issued_at_ms=issued_at_ms,
        expires_at_ms=issued_at_ms + ttl_s * 1000,
    )
    return bytes(cert)
