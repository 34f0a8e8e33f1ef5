"""Signed records: the only kind of value QuickSlot writes into a shared document.

Why signed bytes: the engine must never reinterpret a record (pycrdt reads ints back as floats and
may reorder map keys, and either breaks a signature over a re-encoded value), so a record is stored
as one binary value, exactly the bytes its author signed. Unknown fields written by a newer schema
version survive every hop because nobody re-encodes ``fields``.

Wire form (msgpack array)::

    [1, schema_version, kind, fields, signer, signature]

* ``fields``: msgpack bytes of the record's field map (see ``crdt_core.schema``).
* ``signer``: a certificate id (device-signed) or ``"relay:<kid>"`` (relay-signed, for stamps).
* ``signature``: Ed25519 over ``b"quickslot-record-v1\\0" + msgpack([doc_id, key, kind, fields])``,
  so a record cannot be replayed under another key or into another document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crdt_core.certs import DeviceKey, SigningKey
from crdt_core.errors import SchemaError, SignatureError

__all__ = [
    "RECORD_DOMAIN",
    "RELAY_SIGNER_PREFIX",
    "Envelope",
    "open_record",
    "pack_fields",
    "sign_record",
    "verify_envelope",
]

RECORD_DOMAIN = b"quickslot-record-v1\x00"
RECORD_FORMAT = 1
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
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]


def _signed_message(doc_id: str, key: str, kind: str, fields_raw: bytes) -> bytes:
    body: bytes = msgpack.packb([doc_id, key, kind, fields_raw], use_bin_type=True)
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
    fields_raw = pack_fields(fields)
    sig = signer.sign(_signed_message(doc_id, key, kind, fields_raw))
    signer_ref = signer.cert_id if isinstance(signer, DeviceKey) else RELAY_SIGNER_PREFIX + signer.kid
    return msgpack.packb(  # type: ignore[no-any-return]
        [RECORD_FORMAT, schema_version, kind, fields_raw, signer_ref, sig], use_bin_type=True
    )


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


def open_record(raw: bytes) -> Envelope:
    """Parse a record's envelope and fields, without checking the signature.

    Raises:
        SchemaError: not a record.
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > MAX_RECORD_BYTES:
        raise SchemaError(f"a record is at most {MAX_RECORD_BYTES} bytes")
    outer = _unpack(bytes(raw), "record")
    if not (isinstance(outer, list) and len(outer) == 6 and outer[0] == RECORD_FORMAT):
        raise SchemaError("record envelope malformed")
    _, version, kind, fields_raw, signer, sig = outer
    if type(version) is not int or not 1 <= version < 1000:
        raise SchemaError("record schema version malformed")
    if not (isinstance(kind, str) and isinstance(fields_raw, bytes)):
        raise SchemaError("record kind or fields malformed")
    if not (isinstance(signer, str) and 0 < len(signer) <= 80 and isinstance(sig, bytes) and len(sig) == 64):
        raise SchemaError("record signer or signature malformed")
    fields = _unpack(fields_raw, "record fields")
    if not isinstance(fields, dict):
        raise SchemaError("record fields must be a map")
    return Envelope(version, kind, fields_raw, fields, signer, sig)


def verify_envelope(env: Envelope, doc_id: str, key: str, public_key: bytes) -> None:
    """Raises SignatureError unless ``public_key`` signed this record for ``(doc_id, key)``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            env.signature, _signed_message(doc_id, key, env.kind, env.fields_raw)
        )
    except (InvalidSignature, ValueError):
        raise SignatureError(f"record {key!r} signature does not verify") from None
