"""Password hashing: Argon2id for new hashes, PBKDF2-SHA256 accepted from the old backend.

New hashes are Argon2id (``cryptography``'s implementation) in the PHC string format, which
stores its parameters beside the salt and the hash, so the cost can be raised later: a stored
hash whose parameters are below the configured ones is re-hashed on the next successful login::

    $argon2id$v=19$m=<memory KiB>,t=<passes>,p=<lanes>$<salt>$<hash>

(salt and hash in standard base64 without padding, as in the PHC spec and the reference
``argon2`` CLI; ``cryptography``'s own ``verify_phc_encoded`` accepts these strings.)

Legacy hashes from the original QuickSlot backend are PBKDF2-HMAC-SHA256 with 100,000 salted
iterations. Two spellings of that are accepted, because both were common for Python backends:

* passlib's ``pbkdf2_sha256`` (the usual FastAPI choice)::

      $pbkdf2-sha256$<rounds>$<salt>$<checksum>

  salt and checksum in passlib's "adapted base64": standard base64 with ``.`` instead of ``+``
  and no padding; the salt is decoded to raw bytes before use; the checksum is 32 bytes.

* Django's ``PBKDF2PasswordHasher``::

      pbkdf2_sha256$<iterations>$<salt>$<hash>

  the salt is used as its UTF-8 text (not decoded); the hash is standard padded base64.

Any iteration count from 10,000 to 10,000,000 is honoured as written. Legacy hashes always need
re-hashing, so the first successful login migrates the account to Argon2id.

Verification compares digests with ``hmac.compare_digest``. Malformed stored strings verify as
``False`` (never raise) so a bad row reads as a wrong password, not a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

ARGON2_VERSION = 19
SALT_BYTES = 16
HASH_BYTES = 32
LEGACY_MIN_ITERATIONS = 10_000
LEGACY_MAX_ITERATIONS = 10_000_000
# Bounds on parameters read back from storage, so a corrupt row cannot ask for 1 TiB of RAM.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_ITERATIONS = 64
_MAX_LANES = 64

_PHC = re.compile(
    r"^\$argon2id\$v=(?P<v>\d+)\$m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)$"
)
_PASSLIB = re.compile(r"^\$pbkdf2-sha256\$(?P<n>\d+)\$(?P<salt>[A-Za-z0-9./]*)\$(?P<hash>[A-Za-z0-9./]+)$")
_DJANGO = re.compile(r"^pbkdf2_sha256\$(?P<n>\d+)\$(?P<salt>[^$]+)\$(?P<hash>[A-Za-z0-9+/=]+)$")


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost: memory in KiB, passes over memory, lanes (parallelism)."""

    memory_kib: int
    iterations: int
    lanes: int

    def at_least(self, other: Argon2Params) -> bool:
        return (
            self.memory_kib >= other.memory_kib
            and self.iterations >= other.iterations
            and self.lanes >= other.lanes
        )


def _b64_nopad(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def _b64_decode_nopad(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _ab64_decode(text: str) -> bytes:
    return _b64_decode_nopad(text.replace(".", "+"))


def _secret(password: str) -> bytes:
    # NFKC so the same password typed on different keyboards/OSes hashes the same (NIST
    # SP 800-63B recommends normalising); legacy PBKDF2 hashes use the raw UTF-8, as they did.
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def argon2_hash(password: str, params: Argon2Params, *, salt: bytes | None = None) -> str:
    """Hash ``password`` with Argon2id under ``params``; returns a PHC string. Slow by design."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    kdf = Argon2id(
        salt=salt,
        length=HASH_BYTES,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    digest = kdf.derive(_secret(password))
    return (
        f"$argon2id$v={ARGON2_VERSION}$m={params.memory_kib},t={params.iterations},p={params.lanes}"
        f"${_b64_nopad(salt)}${_b64_nopad(digest)}"
    )


def parse_argon2(encoded: str) -> tuple[Argon2Params, bytes, bytes] | None:
    """Split a PHC Argon2id string into (params, salt, hash); ``None`` if it is not one."""
    m = _PHC.match(encoded)
    if not m or int(m["v"]) != ARGON2_VERSION:
        return None
    params = Argon2Params(int(m["m"]), int(m["t"]), int(m["p"]))
    if not (
        1 <= params.lanes <= _MAX_LANES
        and 1 <= params.iterations <= _MAX_ITERATIONS
        and 8 * params.lanes <= params.memory_kib <= _MAX_MEMORY_KIB
    ):
        return None
    try:
        salt, digest = _b64_decode_nopad(m["salt"]), _b64_decode_nopad(m["hash"])
    except (binascii.Error, ValueError):
        return None
    if not (8 <= len(salt) <= 64 and 16 <= len(digest) <= 64):
        return None
    return params, salt, digest


def _verify_argon2(password: str, encoded: str) -> bool:
    parsed = parse_argon2(encoded)
    if parsed is None:
        return False
    params, salt, expected = parsed
    kdf = Argon2id(
        salt=salt,
        length=len(expected),
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return hmac.compare_digest(kdf.derive(_secret(password)), expected)


def _pbkdf2(password: str, salt: bytes, iterations: int, length: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations, dklen=length)


def _verify_legacy(password: str, encoded: str) -> bool:
    if m := _PASSLIB.match(encoded):
        try:
            salt, expected = _ab64_decode(m["salt"]), _ab64_decode(m["hash"])
        except (binascii.Error, ValueError):
            return False
    elif m := _DJANGO.match(encoded):
        salt = m["salt"].encode("utf-8")
        try:
            expected = base64.b64decode(m["hash"], validate=True)
        except (binascii.Error, ValueError):
            return False
    else:
        return False
    iterations = int(m["n"])
    if not (LEGACY_MIN_ITERATIONS <= iterations <= LEGACY_MAX_ITERATIONS) or not 16 <= len(expected) <= 64:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations, len(expected)), expected)


def legacy_pbkdf2_hash(password: str, *, iterations: int = 100_000, style: str = "passlib") -> str:
    """Produce a hash in the old backend's format (for migration tooling and tests)."""
    if style == "passlib":
        salt = os.urandom(16)
        digest = _pbkdf2(password, salt, iterations, 32)

        def ab64(b: bytes) -> str:
            return _b64_nopad(b).replace("+", ".")

        return f"$pbkdf2-sha256${iterations}${ab64(salt)}${ab64(digest)}"
    if style == "django":
        salt_text = base64.b64encode(os.urandom(12)).decode("ascii").replace("+", "x").replace("/", "y")
        digest = _pbkdf2(password, salt_text.encode("utf-8"), iterations, 32)
        return f"pbkdf2_sha256${iterations}${salt_text}${base64.b64encode(digest).decode('ascii')}"
    raise ValueError(f"unknown legacy style {style!r}")


def known_hash_format(encoded: str) -> str | None:
    """``"argon2id"`` or ``"pbkdf2-sha256"`` when ``encoded`` is a hash this relay verifies, else None."""
    if parse_argon2(encoded) is not None:
        return "argon2id"
    if _PASSLIB.match(encoded) or _DJANGO.match(encoded):
        return "pbkdf2-sha256"
    return None


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (Argon2id or a legacy PBKDF2 format)."""
    if encoded.startswith("$argon2id$"):
        return _verify_argon2(password, encoded)
    return _verify_legacy(password, encoded)


def needs_rehash(encoded: str, params: Argon2Params) -> bool:
    """True for legacy hashes and for Argon2id hashes weaker than ``params`` in any dimension."""
    parsed = parse_argon2(encoded)
    return parsed is None or not parsed[0].at_least(params)


class PasswordHasher:
    """Runs the slow KDF off the event loop, at most ``concurrency`` at a time.

    Every Argon2 hash holds ``memory_kib`` of RAM for its duration, so unbounded concurrency
    (``asyncio.to_thread``'s default pool has up to 32 threads) would let a login flood take
    gigabytes; the semaphore queues the excess instead.
    """

    def __init__(self, params: Argon2Params, *, concurrency: int = 2) -> None:
        self.params = params
        self._semaphore = asyncio.Semaphore(max(1, concurrency))
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        async with self._semaphore:
            return await asyncio.to_thread(argon2_hash, password, self.params)

    async def verify(self, password: str, encoded: str) -> bool:
        async with self._semaphore:
            return await asyncio.to_thread(verify_password, password, encoded)

    def needs_rehash(self, encoded: str) -> bool:
        return needs_rehash(encoded, self.params)

    async def verify_dummy(self, password: str) -> None:
        """Spend the time a real verification takes, for unknown emails (no user enumeration
        through timing). The dummy hash is made once, with the current parameters."""
        if self._dummy is None:
            self._dummy = await self.hash(os.urandom(16).hex())
        await self.verify(password, self._dummy)

    async def warm_up(self) -> None:
        """Create the dummy hash at startup so the first unknown-email login is not faster."""
        if self._dummy is None:
            self._dummy = await self.hash(os.urandom(16).hex())
