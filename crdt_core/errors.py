"""The exception tree of crdt_core.

Callers catch a branch, never a bare ``Exception``::

    QuickSlotError
    ├── EngineError            an update or state vector the CRDT engine could not use
    ├── SchemaError            a record or doc id that breaks the domain schema
    ├── ClockSkewError         a remote HLC stamp too far in the future
    ├── SignatureError         a certificate or record signature that does not verify
    ├── ValidationError        an update refused by the writer rules (has ``.code``)
    ├── CodecError             wire bytes that are not a valid protocol message
    └── ProtocolError          a sync-state-machine misuse or a peer violating the protocol
        ├── LocalProtocolError   our side called the API wrongly (a bug)
        └── RemoteProtocolError  the peer sent something the protocol forbids (has ``.close_code``)

Every error is a ``ValueError`` too, so code written against pycrdt's plain ``ValueError``
keeps working, but nothing outside this tree escapes crdt_core on untrusted input.
"""

from __future__ import annotations


class QuickSlotError(ValueError):
    """Root of every error crdt_core raises on purpose."""


class EngineError(QuickSlotError):
    """The CRDT engine refused an update or state vector; the document is unchanged."""


class SchemaError(QuickSlotError):
    """A value breaks the domain schema (type, length, enum, id format)."""


class ClockSkewError(QuickSlotError):
    """A remote clock reading is further in the future than the configured skew allows."""


class SignatureError(QuickSlotError):
    """A signature or certificate does not verify against the trusted keys."""


class ValidationError(QuickSlotError):
    """An incoming update breaks a writer rule; the whole update is refused.

    ``code`` is a stable machine-readable reason (see ``crdt_core.validation.Reason``).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class CodecError(QuickSlotError):
    """Bytes that do not decode to a valid protocol message."""


class ProtocolError(QuickSlotError):
    """A violation of the sync protocol."""


class LocalProtocolError(ProtocolError):
    """This side used the state machine wrongly; a bug in the caller, not the peer."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the connection should close with ``close_code``."""

    def __init__(self, reason: str, close_code: int = 4002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code
