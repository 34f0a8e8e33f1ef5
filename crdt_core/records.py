"""Signed records: the only kind of value QuickSlot writes into a shared document.

Why signed bytes: the engine must never reinterpret a record (pycrdt reads ints back as floats and
may reorder map keys, and either breaks a signature over a re-encoded value), so a record is stored
as one binary value, exactly the bytes its author signed. Unknown fields written by a newer schema
version survive every hop because nobody re-encodes ``fields``.

Wire form (msgpack array), record format 2::

    [2, schema_version, kind, fields, signer, signature]

* ``schema_version``: the schema version its author wrote, an int in 1..999.
* ``fields``: canonical msgpack bytes of the record's field map (see ``crdt_core.schema``).
* ``signer``: a certificate id (device-signed) or ``"relay:<kid>"`` (relay-signed, for stamps).
* ``signature``: Ed25519 over ``b"quickslot-record-v2\\0" +
  msgpack([doc_id, key, 2, schema_version, kind, fields, signer])``: the whole envelope but the
  signature, bound to its document and key. So a record cannot be replayed under another key or
  into another document, re-wrapped under another schema version or format, or re-attributed to
  another certificate of the same device key.

Exactly one byte string is valid per record: the record and its ``fields`` must each equal their
canonical msgpack encoding (``crdt_core.canonical``), so nobody but the author can make a second
byte string that verifies. Format 1 records (whose envelope was not signed) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdt_core.canonical import canonical_pack, check_canonical, packb
from crdt_core.certs import DeviceKey, SigningKey
from crdt_core.errors import SchemaError, SignatureError

__all__ = [
    "RECORD_DOMAIN",
    "RELAY_SIGNER_PREFIX",
    "Envelope",
    "open_record",
    "pack_fields",
    "sign_record",
    "signer_ref",
    "verify_envelope",
]

RECORD_DOMAIN = b"quickslot-record-v2\x00"
RECORD_FORMAT = 2
MAX_SCHEMA_VERSION = 999
RELAY_SIGNER_PREFIX = "relay:"
MAX_RECORD_BYTES = 16 * 1024


@dataclass(frozen=True)
class Envelope:
    schema_version: int
    kind: str
    fields_raw: bytes
    fields: dict[str, Any]
    signer: str
    signature: bytes

    @property
    def relay_kid(self) -> str | None:
        if self.signer.startswith(RELAY_SIGNER_PREFIX):
            return self.signer[len(RELAY_SIGNER_PREFIX) :]
        return None


def pack_fields(fields: dict[str, Any]) -> bytes:
    """The canonical bytes of a field map (keys sorted by their UTF-8 bytes)."""
    return canonical_pack(fields)


def signer_ref(signer: DeviceKey | SigningKey) -> str:
    """What a record's ``signer`` names: the device's certificate id, or ``relay:<kid>``."""
    return signer.cert_id if isinstance(signer, DeviceKey) else RELAY_SIGNER_PREFIX + signer.kid


def _signed_message(
    doc_id: str, key: str, schema_version: int, kind: str, fields_raw: bytes, signer: str
) -> bytes:
    body = packb([doc_id, key, RECORD_FORMAT, schema_version, kind, fields_raw, signer])
    return RECORD_DOMAIN + body


def sign_record(
    doc_id: str,
    key: str,
    kind: str,
    fields: dict[str, Any],
    signer: DeviceKey | SigningKey,
    schema_version: int,
) -> bytes:
    """Encode and sign one record; ``signer`` is a device (clients) or a relay key (stamps)."""
    if not 1 <= schema_version <= MAX_SCHEMA_VERSION:
        raise SchemaError(f"schema version {schema_version} outside 1..{MAX_SCHEMA_VERSION}")
    fields_raw = pack_fields(fields)
    ref = signer_ref(signer)
    sig = signer.sign(_signed_message(doc_id, key, schema_version, kind, fields_raw, ref))
    return canonical_pack([RECORD_FORMAT, schema_version, kind, fields_raw, ref, sig])


def _unpack(raw: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_RECORD_BYTES,
            max_str_len=MAX_RECORD_BYTES,
            max_array_len=1024,
            max_map_len=256,
        )
    except Exception as exc:
        raise SchemaError(f"{what} is not valid msgpack: {exc}") from None


def open_record(raw: bytes, *, canonical: bool = True) -> Envelope:
    """Parse a record's envelope and fields, without checking the signature.

    ``canonical=False`` skips the canonical-encoding check (a re-encoding per record): only for
    reading records a replica already holds, which validation checked when they arrived.

    Raises:
        SchemaError: not a format-2 record (in canonical form, unless ``canonical`` is False).
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_RECORD_BYTES:
        raise SchemaError(f"a record is at most {MAX_RECORD_BYTES} bytes")
    outer = _unpack(bytes(raw), "record")
    if not (isinstance(outer, list) and len(outer) == 6):
        raise SchemaError("record envelope malformed")
    if type(outer[0]) is not int or outer[0] != RECORD_FORMAT:
        raise SchemaError(f"record format {outer[0]!r} is not {RECORD_FORMAT}")
    _, version, kind, fields_raw, signer, sig = outer
    if type(version) is not int or not 1 <= version <= MAX_SCHEMA_VERSION:
        raise SchemaError("record schema version malformed")
    if not (isinstance(kind, str) and isinstance(fields_raw, bytes)):
        raise SchemaError("record kind or fields malformed")
    if not (isinstance(signer, str) and 0 < len(signer) <= 80 and isinstance(sig, bytes) and len(sig) == 64):
        raise SchemaError("record signer or signature malformed")
    if canonical:
        check_canonical(bytes(raw), outer, "record")
    fields = _unpack(fields_raw, "record fields")
    if not isinstance(fields, dict):
        raise SchemaError("record fields must be a map")
    if canonical:
        check_canonical(fields_raw, fields, "record fields")
    return Envelope(version, kind, fields_raw, fields, signer, sig)


def verify_envelope(env: Envelope, doc_id: str, key: str, public_key: bytes) -> None:
    """Raises SignatureError unless ``public_key`` signed this record for ``(doc_id, key)``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            env.signature,
            _signed_message(doc_id, key, env.schema_version, env.kind, env.fields_raw, env.signer),
        )
    except (InvalidSignature, ValueError):
        raise SignatureError(f"record {key!r} signature does not verify") from None
