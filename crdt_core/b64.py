"""Unpadded base64url (RFC 4648 section 5), the one encoding of keys, certificates, proofs and tokens.

Why one module: the relay, the client and the proof-of-possession code each had a copy, and they
had drifted: one decoder silently skipped characters outside the alphabet (so many texts decoded
to the same bytes), another refused them. Decoding here is the strict one: only the URL-safe
alphabet, optional trailing padding, and ``ValueError`` for anything else.
"""

from __future__ import annotations

import base64
import binascii

__all__ = ["b64url", "b64url_decode"]

_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def b64url(data: bytes) -> str:
    """``data`` as unpadded base64url, the form JOSE uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The bytes of base64url ``text``, padded or not.

    Raises:
        ValueError: ``text`` is not a string, holds a character outside the URL-safe alphabet
            (padding aside), or has an impossible length.
    """
    if not isinstance(text, str) or any(c not in _ALPHABET for c in text.rstrip("=")):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("not base64url") from None
