"""Transport security towards a relay: a private CA file and public-key pins that fail closed.

Why this module exists: docs/design.md ("Client") asks for ``wss://`` with certificate pinning, and a relay is
often self-hosted behind a private CA or a self-signed certificate. Both the REST calls (httpx) and the
sync websocket (``websockets``) take one :class:`ssl.SSLContext`, so the whole policy lives in the
context built here, and no caller can forget half of it.

Pins, and why this format: a pin is the SHA-256 of the relay certificate's
**SubjectPublicKeyInfo** (its public key), written ``sha256//<base64>`` exactly as curl's
``--pinnedpubkey`` and HPKP's ``pin-sha256`` do, so a value printed by the usual recipe works::

    openssl x509 -in relay.pem -pubkey -noout | openssl pkey -pubin -outform der \\
        | openssl dgst -sha256 -binary | base64

``sha256:<base64>`` and 64 hex digits are accepted too (``hex`` is what ``openssl dgst`` prints
without ``-binary``). The key, not the certificate, is pinned so a relay can renew its certificate
with the same key without breaking its clients. Several pins may be given (a backup key, as HPKP
recommends); any one matching is enough. Only the relay's own (leaf) key is compared.

What a pin means:

* ``--pin`` alone: the pin *is* the trust anchor. The chain and host name are not checked against
  any CA (a self-signed relay needs nothing else); the TLS handshake itself proves the relay holds
  the private key whose public half is pinned, which is a stronger statement than any CA's.
* ``--pin`` with ``--cafile``: both must hold (the chain verifies against the CA *and* the key is
  pinned), as with ``curl --cacert --pinnedpubkey``.
* A mismatch aborts the handshake before a single byte of HTTP is written, so no token, password
  or update ever reaches a relay that fails the check, and nothing ever falls back to plain HTTP.

The check runs inside ``do_handshake`` of the context's SSL object classes, which every asyncio
and anyio TLS stream (hence websockets and httpx) calls before it hands the connection over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "PinMismatch",
    "TlsSettings",
    "format_pin",
    "parse_pin",
    "pin_of_certificate",
    "tls_failure",
]


class PinMismatch(ssl.SSLCertVerificationError):
    """The relay's public key matches none of the pins: the connection was aborted in the handshake."""

    def __init__(self, got: str, wanted: Iterable[str]) -> None:
        wanted_text = ", ".join(sorted(wanted))
        # (errno, strerror): asyncio and anyio read ``strerror`` of an SSL error.
        super().__init__(1, f"the relay's public key {got} matches no pinned key ({wanted_text})")
        self.got = got


def parse_pin(text: str) -> bytes:
    """The 32-byte SHA-256 digest a pin names (``sha256//B64``, ``sha256:B64`` or 64 hex digits).

    Raises:
        ValueError: not a SHA-256 pin; the message says what is expected.
    """
    raw = text.strip()
    body = raw
    for prefix in ("sha256//", "sha256:"):
        if raw.lower().startswith(prefix):
            body = raw[len(prefix) :]
            break
    digest: bytes | None = None
    if len(body) == 64:
        try:
            digest = bytes.fromhex(body)
        except ValueError:
            digest = None
    if digest is None:
        try:
            digest = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            digest = None
    if digest is None or len(digest) != 32:
        raise ValueError(
            f"not a SHA-256 public-key pin: {text!r} (expected sha256//<base64 of the SHA-256 of the "
            "certificate's SubjectPublicKeyInfo>, as curl --pinnedpubkey takes)"
        )
    return digest


def format_pin(digest: bytes) -> str:
    """The canonical spelling of a pin: ``sha256//<base64>``."""
    return "sha256//" + base64.b64encode(digest).decode("ascii")


def _spki_digest(certificate_der: bytes) -> bytes:
    # Imported here: every CLI command imports this module, few of them check a certificate.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def pin_of_certificate(certificate: bytes) -> str:
    """The pin of a certificate (PEM or DER): what to pass as ``--pin`` to trust its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = certificate
    if certificate.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(certificate).public_bytes(serialization.Encoding.DER)
    return format_pin(_spki_digest(der))


def _check_pins(context: object, peer_der: bytes | None) -> None:
    pins: frozenset[bytes] = getattr(context, "quickslot_pins", frozenset())
    if not pins:
        return
    if peer_der is None:
        raise PinMismatch("(none: the relay sent no certificate)", (format_pin(p) for p in pins))
    digest = _spki_digest(peer_der)
    if digest not in pins:
        raise PinMismatch(format_pin(digest), (format_pin(p) for p in pins))


class _PinnedSSLObject(ssl.SSLObject):
    """The in-memory TLS object asyncio and anyio use: checks the pins as the handshake completes."""

    def do_handshake(self) -> None:
        super().do_handshake()
        _check_pins(self.context, self.getpeercert(binary_form=True))


class _PinnedSSLSocket(ssl.SSLSocket):
    """The blocking-socket variant (synchronous httpx, ``urllib``), for completeness."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _check_pins(self.context, self.getpeercert(binary_form=True))
        except PinMismatch:
            self.close()
            raise


class _PinnedContext(ssl.SSLContext):
    """An ``SSLContext`` whose connections verify ``quickslot_pins`` during the handshake."""

    sslobject_class = _PinnedSSLObject
    sslsocket_class = _PinnedSSLSocket
    quickslot_pins: frozenset[bytes] = frozenset()


@dataclass(frozen=True)
class TlsSettings:
    """How to trust a relay: a CA bundle (else the system's), and optional public-key pins.

    ``TlsSettings()`` means "the library defaults": the system trust store, no pins.
    """

    cafile: Path | None = None
    pins: tuple[bytes, ...] = ()

    @classmethod
    def create(cls, cafile: str | Path | None = None, pins: Iterable[str] = ()) -> TlsSettings:
        """Parse user input (raises ValueError for a malformed pin or a missing CA file)."""
        path = None
        if cafile is not None:
            path = Path(cafile).expanduser().resolve()
            if not path.is_file():
                raise ValueError(f"no CA file at {path}")
        return cls(path, tuple(dict.fromkeys(parse_pin(p) for p in pins)))

    @property
    def custom(self) -> bool:
        """Anything beyond the defaults was asked for (then only ``https``/``wss`` make sense)."""
        return self.cafile is not None or bool(self.pins)

    def check_url(self, relay_url: str) -> None:
        """Refuse a CA file or pin for a plain ``http``/``ws`` relay rather than silently ignore it."""
        if self.custom and not relay_url.lower().startswith(("https://", "wss://")):
            raise ValueError(
                f"--cafile/--pin need an https:// (or wss://) relay URL, not {relay_url!r}: "
                "a plain connection cannot be pinned"
            )

    def context(self) -> ssl.SSLContext:
        """A client context implementing these settings (see the module doc for what a pin means)."""
        ctx = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.pins and self.cafile is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.cafile is not None:
            ctx.load_verify_locations(cafile=str(self.cafile))
        else:
            ctx.load_default_certs()
        ctx.quickslot_pins = frozenset(self.pins)
        return ctx

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx's ``verify`` takes: the context, or True for the defaults."""
        return self.context() if self.custom else True

    def ssl_context(self) -> ssl.SSLContext | None:
        """What ``SyncService(ssl_context=...)`` takes: None for the defaults."""
        return self.context() if self.custom else None

    def to_config(self) -> dict[str, Any]:
        return {
            "cafile": None if self.cafile is None else str(self.cafile),
            "pins": [format_pin(p) for p in self.pins],
        }

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None, base: Path | None = None) -> TlsSettings:
        """Read what :meth:`to_config` stored (a profile's ``cli.json``); a relative ``cafile`` is
        taken from ``base`` (the profile directory, so a moved profile keeps working)."""
        if not data:
            return cls()
        cafile = None if data.get("cafile") is None else Path(str(data["cafile"]))
        if cafile is not None and base is not None and not cafile.is_absolute():
            cafile = base / cafile
        pins = tuple(parse_pin(str(p)) for p in data.get("pins", []))
        return cls(cafile, pins)


def tls_failure(exc: BaseException | None) -> str | None:
    """A message if ``exc`` (or what caused it) is a failed certificate check, else None.

    Why walk the chain: httpx wraps the SSL error in ``ConnectError`` (``raise ... from``), the
    websocket library raises it bare; both must be told apart from "relay unreachable", because
    retrying will not fix an untrusted or mismatching certificate and it may be an attack.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PinMismatch):
            return f"certificate pin mismatch: {exc.strerror}; refusing to talk to this relay"
        if isinstance(exc, ssl.SSLCertVerificationError):
            detail = getattr(exc, "verify_message", None) or str(exc)
            return (
                f"the relay's TLS certificate is not trusted ({detail}); "
                "pass --cafile with the relay's CA or --pin with its key"
            )
        exc = exc.__cause__ or exc.__context__
    return None
