"""The wire codec of the sync protocol: one msgpack map per binary websocket message.

Theory of operation
-------------------
Every message is a msgpack map holding ``"v"`` (the protocol version, 1) and ``"t"`` (the type)
beside its own fields. ``docs/protocol.md`` is the normative description; this module is its
reference implementation and the two must agree.

Decoding is the relay's first contact with untrusted bytes (docs/design.md, "Relay"), so it is
built to be boring under attack:

* The size limit is checked before any parsing.
* The decoder never asks msgpack to build an arbitrary object. It walks the top-level map with a
  streaming :class:`msgpack.Unpacker`, peeks at the type byte of each value before reading it, and
  only reads values whose msgpack type is the one the field needs. A 1 MiB message made of a
  million empty maps would make ``unpackb`` allocate some 64 MiB of Python objects; here it is
  refused at its first byte (in a known field) or skipped by msgpack's C code without building
  anything (in an unknown field). Memory stays proportional to the input and time linear in it.
* Field names are global: a name defined here has the same msgpack type in every message type, so
  the decoder can read fields before it has seen ``"t"`` (map order is not guaranteed by every
  msgpack library). Unknown field names are skipped for forward compatibility; names that exist
  but belong to another message type are read and then ignored.
* ``nil`` is the same as an absent field, and encoders omit absent optional fields.
* Every failure, whatever the input, is a :class:`~crdt_core.errors.CodecError`.

Message dataclasses validate in ``__init__`` too, so a message that exists is a valid message,
whether it came off the wire or from local code; invalid local construction raises
``CodecError`` as well (the protocol layer turns that into ``LocalProtocolError``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias, TypeVar

import msgpack

from crdt_core.canonical import packb
from crdt_core.errors import CodecError

__all__ = [
    "DEFAULT_MAX_DOWNLOAD",
    "DEFAULT_MAX_MESSAGE",
    "MAX_CODE_LEN",
    "MAX_FIELDS",
    "MAX_ID_LEN",
    "MAX_INT",
    "MAX_LIMITS",
    "MAX_OFFER",
    "MAX_PROOF_LEN",
    "MAX_REASON_LEN",
    "MAX_STAMPS",
    "MAX_TEXT_LEN",
    "MAX_TOKEN_LEN",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "Challenge",
    "ClientMessage",
    "ClientUpdate",
    "CloseAction",
    "CloseCode",
    "ErrorCode",
    "ErrorMessage",
    "Hello",
    "Limit",
    "Message",
    "RelayMessage",
    "RelayUpdate",
    "Stamp",
    "Stamped",
    "Subscribe",
    "Sync",
    "Unsubscribe",
    "Welcome",
    "close_action",
    "decode",
    "encode_stamp",
    "encode_stamped",
    "encode_update",
    "is_retryable_close",
    "is_retryable_error",
    "is_valid_doc_id",
]

PROTOCOL_VERSION: Final = 1

#: Largest message a relay accepts by default (client to relay). Announced in ``welcome``.
DEFAULT_MAX_MESSAGE: Final = 1 << 20
#: Largest message a client accepts by default (relay to client): a ``sync`` carries a whole
#: document's missing state, so this is sized from the relay's document limit, not its inbound one.
DEFAULT_MAX_DOWNLOAD: Final = 32 << 20

#: Every integer on the wire (uid, seq, stamp number, limit) is in ``0..MAX_INT``: the range
#: every msgpack library and every language's signed 64-bit integer can hold.
MAX_INT: Final = 2**63 - 1
MAX_ID_LEN: Final = 256
MAX_TOKEN_LEN: Final = 8192
MAX_TEXT_LEN: Final = 256
MAX_CODE_LEN: Final = 64
MAX_REASON_LEN: Final = 1024
MAX_LIMITS: Final = 64
MAX_STAMPS: Final = 4096
#: Peer mode: most doc ids a peer's ``welcome`` offers, and bounds of the handshake's bytes.
MAX_OFFER: Final = 4096
MAX_PROOF_LEN: Final = 128
MAX_CERT_LEN: Final = 4096
MIN_NONCE_LEN: Final = 16
MAX_NONCE_LEN: Final = 64
#: Top-level entries, unknown ones included: bounds the decoder's loop.
MAX_FIELDS: Final = 32

# Doc ids, user ids, epochs, reservation ids, error codes and tokens are ASCII tokens: printable,
# no spaces. That keeps them safe in logs, SQL keys and file names on every platform.
_ID_RE: Final = re.compile(r"[\x21-\x7e]+")


# --- close codes and error codes -----------------------------------------------------------------


class CloseCode(enum.IntEnum):
    """Websocket close codes: problems with the whole connection.

    Codes below 4000 are the IANA-registered ones (RFC 6455 section 7.4); 4000-4999 are ours.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    #: Never sent: what a websocket library reports when the transport dropped without a close.
    ABNORMAL = 1006
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    PROTOCOL_VIOLATION = 4002
    AUTH_FAILED = 4003
    AUTH_TIMEOUT = 4008
    SESSION_REVOKED = 4010
    ACCOUNT_DISABLED = 4011
    TOO_FAST = 4029


class CloseAction(enum.Enum):
    """What a client does after the connection closed with a given code."""

    #: Reconnect after a backoff with jitter; nothing needs to change first.
    RECONNECT = "reconnect"
    #: Use the refresh token to get a new access token, then reconnect at once.
    REFRESH_TOKEN = "refresh_token"
    #: The session is gone: the user must log in again before any reconnect.
    LOGIN = "login"
    #: Reconnecting as-is would fail the same way: surface it and stop retrying automatically.
    STOP = "stop"


_CLOSE_ACTIONS: Final[dict[int, CloseAction]] = {
    CloseCode.NORMAL: CloseAction.RECONNECT,
    CloseCode.GOING_AWAY: CloseAction.RECONNECT,
    CloseCode.ABNORMAL: CloseAction.RECONNECT,
    CloseCode.POLICY: CloseAction.STOP,
    CloseCode.TOO_BIG: CloseAction.STOP,
    CloseCode.INTERNAL: CloseAction.RECONNECT,
    CloseCode.TRY_AGAIN_LATER: CloseAction.RECONNECT,
    CloseCode.TOKEN_EXPIRED: CloseAction.REFRESH_TOKEN,
    # Not STOP: the chaos run (tests/chaos) showed one duplicated or lost message in transit (a
    # mangling middlebox, not a bug of either side) turns into a 4002, and a client that stops for
    # good then never sends its queued bookings. A fresh connection starts a fresh protocol state;
    # the client waits its longest backoff first, which bounds the cost if it *is* a bug.
    CloseCode.PROTOCOL_VIOLATION: CloseAction.RECONNECT,
    CloseCode.AUTH_FAILED: CloseAction.LOGIN,
    CloseCode.AUTH_TIMEOUT: CloseAction.RECONNECT,
    CloseCode.SESSION_REVOKED: CloseAction.LOGIN,
    CloseCode.ACCOUNT_DISABLED: CloseAction.STOP,
    CloseCode.TOO_FAST: CloseAction.RECONNECT,
}


def close_action(code: int) -> CloseAction:
    """What the client should do after a close with ``code``.

    Unknown codes reconnect with backoff: an offline-first client must never stop syncing
    silently because a newer relay invented a code, and backoff bounds the cost of being wrong.
    """
    return _CLOSE_ACTIONS.get(code, CloseAction.RECONNECT)


def is_retryable_close(code: int) -> bool:
    """True when reconnecting can succeed without the user (possibly after a token refresh)."""
    return close_action(code) in (CloseAction.RECONNECT, CloseAction.REFRESH_TOKEN)


class ErrorCode(enum.StrEnum):
    """Codes of ``err`` messages: problems confined to one document or one update."""

    #: The connection's user may not read (subscribe) this document.
    FORBIDDEN = "forbidden"
    #: Validation refused the update; the reason starts with the validator's reason code.
    REJECTED = "rejected"
    #: The doc id names no document kind the relay serves.
    BAD_DOC = "bad_doc"
    #: An update for a document this connection has not subscribed to: subscribe, then re-send.
    NOT_SUBSCRIBED = "not_subscribed"
    #: The subscription would exceed the connection's ``max_docs`` limit.
    TOO_MANY_DOCS = "too_many_docs"
    #: Storing the update would make the document exceed the relay's ``max_doc`` limit.
    DOC_TOO_LARGE = "doc_too_large"
    #: The update depends on state the relay lacks: run the sync exchange again, then re-send.
    MISSING_DEPS = "missing_deps"
    #: The relay failed; nothing was stored. Re-send later.
    INTERNAL = "internal"
    #: Too many updates; re-send after a backoff.
    RATE_LIMITED = "rate_limited"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE_ERRORS


_RETRYABLE_ERRORS: Final = frozenset(
    {ErrorCode.NOT_SUBSCRIBED, ErrorCode.MISSING_DEPS, ErrorCode.INTERNAL, ErrorCode.RATE_LIMITED}
)


def is_retryable_error(code: str, default: bool = False) -> bool:
    """Whether re-sending after an ``err`` with ``code`` can succeed; a client's outbox uses it.

    Args:
        code: the ``code`` of an ``err`` message, known or not.
        default: the answer for codes this version does not know; pass the message's own
            ``retry`` flag so a newer relay's codes are classified as the relay says.
    """
    try:
        return ErrorCode(code).retryable
    except ValueError:
        return default


class Limit(enum.StrEnum):
    """Keys of ``welcome.limits``. Clients ignore keys they do not know."""

    #: Largest message, in bytes, the relay accepts from this client.
    MAX_MESSAGE = "max_message"
    #: Most documents one connection may be subscribed to at once.
    MAX_DOCS = "max_docs"
    #: Largest stored size, in bytes, of one document.
    MAX_DOC = "max_doc"
    #: Sustained updates per second per connection.
    RATE = "rate"
    #: Updates a connection may send in a burst above ``rate``.
    BURST = "burst"
    #: Updates of one connection the relay works on at once (received, not yet answered); it
    #: reads nothing more from the connection until one is answered (backpressure, not an error).
    MAX_INFLIGHT = "max_inflight"


# --- field validation ------------------------------------------------------------------------------


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(name: str, value: object) -> None:
    # ``type(...) is int`` on purpose: bool and IntEnum are ints to isinstance, not to the wire.
    if type(value) is not int:
        raise CodecError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_INT:
        raise CodecError(f"{name} out of range 0..2**63-1: {_show(value)}")


def _check_optional_int(name: str, value: object) -> None:
    if value is not None:
        _check_int(name, value)


def _check_id(name: str, value: object, max_len: int = MAX_ID_LEN) -> str:
    if type(value) is not str:
        raise CodecError(f"{name} must be a str, not {type(value).__name__}")
    if not 1 <= len(value) <= max_len or _ID_RE.fullmatch(value) is None:
        raise CodecError(
            f"{name} must be 1..{max_len} printable ASCII characters without spaces: {_show(value)}"
        )
    return value


def is_valid_doc_id(doc: object) -> bool:
    """Whether ``doc`` may name a document on the wire (the shape only, not whether it exists)."""
    return type(doc) is str and 1 <= len(doc) <= MAX_ID_LEN and _ID_RE.fullmatch(doc) is not None


def _check_text(name: str, value: object, max_len: int, *, allow_empty: bool) -> None:
    if type(value) is not str:
        raise CodecError(f"{name} must be a str, not {type(value).__name__}")
    if len(value) > max_len or (not value and not allow_empty):
        raise CodecError(f"{name} must be {0 if allow_empty else 1}..{max_len} characters long")
    if not value.isprintable():
        raise CodecError(f"{name} must not contain control characters: {_show(value)}")


def _check_sized_bytes(name: str, value: object, min_len: int, max_len: int) -> None:
    if type(value) is not bytes:
        raise CodecError(f"{name} must be bytes, not {type(value).__name__}")
    if not min_len <= len(value) <= max_len:
        raise CodecError(f"{name} must be {min_len}..{max_len} bytes long")


def _check_bytes(name: str, value: object) -> None:
    if type(value) is not bytes:
        raise CodecError(f"{name} must be bytes, not {type(value).__name__}")
    if not value:
        # No Yjs v1 update or state vector is empty (the empty ones are 00 00 and 00).
        raise CodecError(f"{name} must not be empty")


def _check_stamps(value: object) -> tuple[tuple[int, str], ...]:
    """``(stamp number, reservation id)`` pairs, at most :data:`MAX_STAMPS`; returns them as tuples."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise CodecError(f"stamps must be a sequence, not {type(value).__name__}")
    if len(value) > MAX_STAMPS:
        raise CodecError(f"more than {MAX_STAMPS} stamps in one message")
    pairs: list[tuple[int, str]] = []
    for entry in value:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise CodecError(f"a stamp is a (number, reservation id) pair: {_show(entry)}")
        number, reservation = entry
        _check_int("stamp number", number)
        _check_id("reservation id", reservation)
        pairs.append((number, reservation))
    return tuple(pairs)


def _plain_str(value: object) -> object:
    # StrEnum members (ErrorCode.X) would make the repr invalid Python; keep the plain value.
    return str.__str__(value) if isinstance(value, str) and type(value) is not str else value


# --- messages --------------------------------------------------------------------------------------


class _Message:
    """Behaviour shared by every message; the dataclasses below hold the fields."""

    __slots__ = ()

    TYPE: ClassVar[str]
    #: Field names in wire order (after ``v`` and ``t``).
    FIELDS: ClassVar[tuple[str, ...]]

    def to_wire(self) -> bytes:
        body: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": self.TYPE}
        for name in self.FIELDS:
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        return packb(body)

    @classmethod
    def from_wire(
        cls: type[_M], data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_MESSAGE
    ) -> _M:
        """Decode ``data`` and insist on this message type.

        Raises:
            CodecError: not a valid message, or a valid message of another type.
        """
        message = decode(data, max_size=max_size)
        if not isinstance(message, cls):
            raise CodecError(f"expected a {cls.__name__} message, got {type(message).__name__}")
        return message


_M = TypeVar("_M", bound=_Message)


@dataclass(frozen=True, slots=True)
class Auth(_Message):
    """client → relay: the access token, for clients that cannot set an Authorization header."""

    TYPE: ClassVar[str] = "auth"
    FIELDS: ClassVar[tuple[str, ...]] = ("token", "proof", "proof_time")

    token: str
    #: The device key's signature: in peer mode over the handshake transcript (docs/peer.md); to
    #: a relay, for a token bound to a device key, over the relay proof statement (crdt_core.pop).
    proof: bytes | None = None
    #: Relay mode: the unix time (seconds) the relay proof was made at. Ignored in peer mode.
    proof_time: int | None = None

    def __post_init__(self) -> None:
        _check_id("token", self.token, MAX_TOKEN_LEN)
        if self.proof is not None:
            _check_sized_bytes("proof", self.proof, 1, MAX_PROOF_LEN)
        _check_optional_int("proof_time", self.proof_time)


@dataclass(frozen=True, slots=True)
class Hello(_Message):
    """dialer → acceptor, peer mode only, the first message: a fresh nonce and the dialer's
    relay-issued device certificate. No token yet: it is only revealed to a proven peer."""

    TYPE: ClassVar[str] = "hello"
    FIELDS: ClassVar[tuple[str, ...]] = ("nonce", "cert")

    nonce: bytes
    cert: bytes

    def __post_init__(self) -> None:
        _check_sized_bytes("nonce", self.nonce, MIN_NONCE_LEN, MAX_NONCE_LEN)
        _check_sized_bytes("cert", self.cert, 1, MAX_CERT_LEN)


@dataclass(frozen=True, slots=True)
class Challenge(_Message):
    """acceptor → dialer, peer mode only, the answer to ``hello``: the acceptor's own nonce and
    certificate, and its device key's signature over the transcript (it proves itself first)."""

    TYPE: ClassVar[str] = "challenge"
    FIELDS: ClassVar[tuple[str, ...]] = ("nonce", "cert", "proof")

    nonce: bytes
    cert: bytes
    proof: bytes

    def __post_init__(self) -> None:
        _check_sized_bytes("nonce", self.nonce, MIN_NONCE_LEN, MAX_NONCE_LEN)
        _check_sized_bytes("cert", self.cert, 1, MAX_CERT_LEN)
        _check_sized_bytes("proof", self.proof, 1, MAX_PROOF_LEN)


@dataclass(frozen=True, slots=True)
class Subscribe(_Message):
    """client → relay: subscribe to ``doc`` and start the sync exchange (Yjs sync step 1)."""

    TYPE: ClassVar[str] = "sub"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "sv")

    doc: str
    #: The client's Yjs v1 state vector of the document.
    sv: bytes

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_bytes("sv", self.sv)


@dataclass(frozen=True, slots=True)
class ClientUpdate(_Message):
    """client → relay (``t = "upd"`` with ``uid``): an update for the relay to store and forward."""

    TYPE: ClassVar[str] = "upd"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "uid", "update")

    doc: str
    #: The client's id for this update; the relay's ``ack`` or ``err`` names it.
    uid: int
    #: Yjs v1 update bytes.
    update: bytes

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_int("uid", self.uid)
        _check_bytes("update", self.update)


@dataclass(frozen=True, slots=True)
class Unsubscribe(_Message):
    """client → relay: stop sending live updates of ``doc``."""

    TYPE: ClassVar[str] = "unsub"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc",)

    doc: str

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)


@dataclass(frozen=True, slots=True)
class Welcome(_Message):
    """relay → client: authentication succeeded; the connection is open."""

    TYPE: ClassVar[str] = "welcome"
    FIELDS: ClassVar[tuple[str, ...]] = ("user", "epoch", "server", "limits", "token", "docs")

    user: str
    #: Changes when the relay's storage was reset or restored: sequence numbers a client kept
    #: from another epoch mean nothing, and the sync exchange re-sends what the relay lost.
    epoch: str
    server: str
    limits: dict[str, int]
    #: Peer mode only: the acceptor's own access token, revealed once the dialer proved itself.
    token: str | None = None
    #: Peer mode only: documents the acceptor holds that the dialer may want (docs/peer.md).
    docs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.token is not None:
            _check_id("token", self.token, MAX_TOKEN_LEN)
        if self.docs is not None:
            if isinstance(self.docs, (str, bytes)) or not isinstance(self.docs, Sequence):
                raise CodecError(f"docs must be a sequence, not {type(self.docs).__name__}")
            if len(self.docs) > MAX_OFFER:
                raise CodecError(f"more than {MAX_OFFER} docs offered")
            object.__setattr__(self, "docs", tuple(_check_id("doc", d) for d in self.docs))
        _check_id("user", self.user)
        _check_id("epoch", self.epoch)
        _check_text("server", self.server, MAX_TEXT_LEN, allow_empty=False)
        if not isinstance(self.limits, Mapping):
            raise CodecError(f"limits must be a map, not {type(self.limits).__name__}")
        if len(self.limits) > MAX_LIMITS:
            raise CodecError(f"limits has more than {MAX_LIMITS} entries")
        limits: dict[str, int] = {}
        for key, value in self.limits.items():
            name = _check_id("limit name", _plain_str(key), MAX_CODE_LEN)
            _check_int(f"limit {name}", value)
            limits[name] = value
        object.__setattr__(self, "limits", limits)  # a private copy: the message is frozen

    def __hash__(self) -> int:
        limits = tuple(sorted(self.limits.items()))
        return hash((self.user, self.epoch, self.server, limits, self.token, self.docs))


@dataclass(frozen=True, slots=True)
class Sync(_Message):
    """relay → client: the answer to ``sub`` (Yjs sync step 2), which makes the doc live."""

    TYPE: ClassVar[str] = "sync"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "update", "sv", "seq", "digest")

    doc: str
    #: Everything the relay holds that the client's state vector lacks (Yjs v1 update).
    update: bytes
    #: The relay's own state vector, so the client can send back what the relay lacks.
    sv: bytes
    #: The document's sequence number covered by ``update``; live messages continue from it.
    seq: int
    #: Peer mode only: a digest of the sender's document content, so two peers whose state
    #: vectors agree can tell whether their contents do too (equivocation, docs/peer.md).
    digest: bytes | None = None

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_bytes("update", self.update)
        _check_bytes("sv", self.sv)
        _check_int("seq", self.seq)
        if self.digest is not None:
            _check_sized_bytes("digest", self.digest, 1, MAX_PROOF_LEN)


@dataclass(frozen=True, slots=True)
class RelayUpdate(_Message):
    """relay → client (``t = "upd"`` with ``seq``): an update someone else made, now stored."""

    TYPE: ClassVar[str] = "upd"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "update", "seq")

    doc: str
    update: bytes
    seq: int

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_bytes("update", self.update)
        _check_int("seq", self.seq)


@dataclass(frozen=True, slots=True)
class Ack(_Message):
    """relay → client: the client's update ``uid`` is durably stored as sequence ``seq``."""

    TYPE: ClassVar[str] = "ack"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "uid", "seq")

    doc: str
    uid: int
    seq: int

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_int("uid", self.uid)
        _check_int("seq", self.seq)


@dataclass(frozen=True, slots=True)
class Stamp(_Message):
    """relay → client: the relay's stamp records for newly accepted booking claims."""

    TYPE: ClassVar[str] = "stamp"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "seq", "update", "stamps")

    doc: str
    seq: int
    #: The stamp records as a Yjs v1 update (the authoritative copy; ``stamps`` is a summary).
    update: bytes
    #: ``(stamp number, reservation id)`` for each claim stamped by this update.
    stamps: tuple[tuple[int, str], ...]

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_int("seq", self.seq)
        _check_bytes("update", self.update)
        object.__setattr__(self, "stamps", _check_stamps(self.stamps))


@dataclass(frozen=True, slots=True)
class Stamped(_Message):
    """relay → client: an update stored as ``seq`` and the relay's stamps for the booking claims
    it carried, stored as ``seq + 1``, in one message (what ``upd`` or ``ack`` followed by
    ``stamp`` say in two).

    Exactly one of ``uid`` and ``update``: with ``uid`` it answers the receiver's own update
    ``uid`` (an ``ack`` at ``seq``; the update itself is not sent back); with ``update`` it is
    someone else's update (an ``upd`` at ``seq``). Either way ``stamp`` is the stamp update
    stored as ``seq + 1`` (the authoritative copy; ``stamps`` summarises it).
    """

    TYPE: ClassVar[str] = "stamped"
    FIELDS: ClassVar[tuple[str, ...]] = ("doc", "seq", "uid", "update", "stamp", "stamps")

    doc: str
    #: The update's sequence number; the stamp update's is ``seq + 1``.
    seq: int
    #: The stamp records as a Yjs v1 update.
    stamp: bytes
    #: ``(stamp number, reservation id)`` for each claim stamped by ``stamp``.
    stamps: tuple[tuple[int, str], ...]
    #: The receiver's own update this answers (then ``update`` is absent).
    uid: int | None = None
    #: Someone else's update (then ``uid`` is absent).
    update: bytes | None = None

    def __post_init__(self) -> None:
        _check_id("doc", self.doc)
        _check_int("seq", self.seq)
        if self.seq >= MAX_INT:
            raise CodecError("seq must leave room for the stamp update's seq + 1")
        if (self.uid is None) == (self.update is None):
            raise CodecError("a stamped carries exactly one of 'uid' (an ack) or 'update' (someone else's)")
        _check_optional_int("uid", self.uid)
        if self.update is not None:
            _check_bytes("update", self.update)
        _check_bytes("stamp", self.stamp)
        object.__setattr__(self, "stamps", _check_stamps(self.stamps))

    @property
    def stamp_seq(self) -> int:
        """The stamp update's sequence number."""
        return self.seq + 1


@dataclass(frozen=True, slots=True)
class ErrorMessage(_Message):
    """relay → client (``t = "err"``): a problem confined to one document or update.

    Which request it answers follows from the fields (docs/protocol.md, "Errors"): with ``uid``
    it answers that update; with ``doc`` but no ``uid`` it refuses the oldest unanswered ``sub``
    of that doc; with neither it is a notice about the connection.
    """

    TYPE: ClassVar[str] = "err"
    FIELDS: ClassVar[tuple[str, ...]] = ("code", "reason", "doc", "uid", "retry")

    #: An :class:`ErrorCode` value, or a code from a newer relay (then trust ``retry``).
    code: str
    reason: str
    doc: str | None = None
    uid: int | None = None
    #: Whether re-sending (after what the code asks: resync, subscribe, backoff) can succeed.
    retry: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", _plain_str(self.code))
        _check_id("code", self.code, MAX_CODE_LEN)
        _check_text("reason", self.reason, MAX_REASON_LEN, allow_empty=True)
        if self.doc is not None:
            _check_id("doc", self.doc)
        _check_optional_int("uid", self.uid)
        if type(self.retry) is not bool:
            raise CodecError(f"retry must be a bool, not {type(self.retry).__name__}")


ClientMessage: TypeAlias = Auth | Subscribe | ClientUpdate | Unsubscribe | Hello
RelayMessage: TypeAlias = Welcome | Sync | RelayUpdate | Ack | Stamp | Stamped | ErrorMessage | Challenge
Message: TypeAlias = ClientMessage | RelayMessage


# --- fast encoders for the fan-out ------------------------------------------------------------------


def encode_update(doc: str, update: bytes, seq: int) -> bytes:
    """The wire bytes of a live ``upd`` (relay → client), built once per update.

    The relay hands the same bytes to every subscriber (``RelayProtocol.send_live``), so the
    per-recipient cost is a set lookup and a list append, not an encoding.
    """
    return RelayUpdate(doc, update, seq).to_wire()


def encode_stamp(doc: str, seq: int, update: bytes, stamps: Sequence[tuple[int, str]]) -> bytes:
    """The wire bytes of a ``stamp`` message, built once and fanned out like :func:`encode_update`."""
    return Stamp(doc, seq, update, tuple(stamps)).to_wire()


def encode_stamped(
    doc: str, seq: int, update: bytes, stamp: bytes, stamps: Sequence[tuple[int, str]]
) -> bytes:
    """The wire bytes of a ``stamped`` for everyone but the update's sender (who gets the ``uid``
    form, :meth:`crdt_core.protocol.RelayProtocol.ack_stamped`): one message per recipient for a
    booking and its stamps, built once and fanned out like :func:`encode_update`."""
    return Stamped(doc, seq, stamp, tuple(stamps), update=update).to_wire()


# --- decoding --------------------------------------------------------------------------------------

# msgpack type families, indexed by a value's first byte (msgpack spec, "Formats").
_NIL, _BOOL, _INT, _FLOAT, _STR, _BIN, _ARRAY, _MAP, _EXT, _INVALID = range(10)
_FAMILY_NAMES: Final = ("nil", "bool", "int", "float", "str", "bin", "array", "map", "ext", "invalid")


def _family_table() -> bytes:
    table = bytearray(256)
    for byte in range(256):
        if byte <= 0x7F or byte >= 0xE0 or 0xCC <= byte <= 0xD3:
            family = _INT
        elif byte <= 0x8F or byte in (0xDE, 0xDF):
            family = _MAP
        elif byte <= 0x9F or byte in (0xDC, 0xDD):
            family = _ARRAY
        elif byte <= 0xBF or 0xD9 <= byte <= 0xDB:
            family = _STR
        elif byte == 0xC0:
            family = _NIL
        elif byte in (0xC2, 0xC3):
            family = _BOOL
        elif 0xC4 <= byte <= 0xC6:
            family = _BIN
        elif byte in (0xCA, 0xCB):
            family = _FLOAT
        elif 0xC7 <= byte <= 0xC9 or 0xD4 <= byte <= 0xD8:
            family = _EXT
        else:  # 0xC1, never used
            family = _INVALID
        table[byte] = family
    return bytes(table)


_FAMILY: Final = _family_table()

# The msgpack family of every defined field name, whatever the message type.
_FIELD_FAMILY: Final[dict[str, int]] = {
    "v": _INT,
    "t": _STR,
    "token": _STR,
    "doc": _STR,
    "sv": _BIN,
    "uid": _INT,
    "update": _BIN,
    "user": _STR,
    "epoch": _STR,
    "server": _STR,
    "limits": _MAP,
    "seq": _INT,
    "stamps": _ARRAY,
    "stamp": _BIN,
    "code": _STR,
    "reason": _STR,
    "retry": _BOOL,
    "nonce": _BIN,
    "cert": _BIN,
    "proof": _BIN,
    "proof_time": _INT,
    "docs": _ARRAY,
    "digest": _BIN,
}

_TYPES: Final[dict[str, type[Message]]] = {  # "upd": below
    cls.TYPE: cls
    for cls in (
        Auth,
        Subscribe,
        Unsubscribe,
        Welcome,
        Sync,
        Ack,
        Stamp,
        Stamped,
        ErrorMessage,
        Hello,
        Challenge,
    )
}
_REQUIRED: Final[dict[type[Message], tuple[str, ...]]] = {
    Auth: ("token",),
    Subscribe: ("doc", "sv"),
    ClientUpdate: ("doc", "uid", "update"),
    Unsubscribe: ("doc",),
    Welcome: ("user", "epoch", "server", "limits"),
    Sync: ("doc", "update", "sv", "seq"),
    RelayUpdate: ("doc", "update", "seq"),
    Ack: ("doc", "uid", "seq"),
    Stamp: ("doc", "seq", "update", "stamps"),
    Stamped: ("doc", "seq", "stamp", "stamps"),
    ErrorMessage: ("code", "reason", "retry"),
    Hello: ("nonce", "cert"),
    Challenge: ("nonce", "cert", "proof"),
}


class _Reader:
    """A cursor over one message: peeks at type bytes so nothing unwanted is ever built."""

    __slots__ = ("data", "unpacker")

    def __init__(self, data: bytes) -> None:
        self.data = data
        size = len(data)
        # Every limit is the message size: no length header may claim more than the bytes there.
        self.unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_buffer_size=size,
            max_bin_len=size,
            max_str_len=size,
            max_array_len=size,
            max_map_len=size,
            max_ext_len=size,
        )
        self.unpacker.feed(data)

    def peek(self) -> int:
        position: int = self.unpacker.tell()
        if position >= len(self.data):
            raise CodecError("truncated message")
        return _FAMILY[self.data[position]]

    def expect(self, family: int, what: str) -> None:
        found = self.peek()
        if found != family:
            raise CodecError(f"{what} must be {_FAMILY_NAMES[family]}, not {_FAMILY_NAMES[found]}")

    def value(self, family: int, what: str) -> Any:
        self.expect(family, what)
        return self.unpacker.unpack()

    def limits(self) -> dict[str, int]:
        count = self.unpacker.read_map_header()
        if count > MAX_LIMITS:
            raise CodecError(f"limits has {count} entries, more than {MAX_LIMITS}")
        out: dict[str, int] = {}
        for _ in range(count):
            key = self.value(_STR, "a limit name")
            if key in out:
                raise CodecError(f"duplicate limit {_show(key)}")
            out[key] = self.value(_INT, f"limit {_show(key)}")
        return out

    def stamps(self) -> list[tuple[int, str]]:
        count = self.unpacker.read_array_header()
        if count > MAX_STAMPS:
            raise CodecError(f"{count} stamps, more than {MAX_STAMPS}")
        out: list[tuple[int, str]] = []
        for _ in range(count):
            self.expect(_ARRAY, "a stamp")
            if self.unpacker.read_array_header() != 2:
                raise CodecError("a stamp is a [number, reservation id] pair")
            number = self.value(_INT, "a stamp number")
            out.append((number, self.value(_STR, "a reservation id")))
        return out

    def ids(self) -> list[str]:
        count = self.unpacker.read_array_header()
        if count > MAX_OFFER:
            raise CodecError(f"{count} docs, more than {MAX_OFFER}")
        return [self.value(_STR, "a doc id") for _ in range(count)]

    def at_end(self) -> bool:
        position: int = self.unpacker.tell()
        return position == len(self.data)


def _read_fields(data: bytes) -> dict[str, Any]:
    if _FAMILY[data[0]] != _MAP:
        raise CodecError(f"a message must be a msgpack map, not {_FAMILY_NAMES[_FAMILY[data[0]]]}")
    reader = _Reader(data)
    count = reader.unpacker.read_map_header()
    if count > MAX_FIELDS:
        raise CodecError(f"{count} fields, more than {MAX_FIELDS}")
    seen: set[str] = set()
    fields: dict[str, Any] = {}
    for _ in range(count):
        name = reader.value(_STR, "a field name")
        if name in seen:
            raise CodecError(f"duplicate field {_show(name)}")
        seen.add(name)
        family = _FIELD_FAMILY.get(name)
        if family is None:
            reader.unpacker.skip()  # forward compatibility; msgpack skips without building
            continue
        found = reader.peek()
        if found == _NIL:
            reader.unpacker.skip()  # nil is an absent field
        elif found != family:
            raise CodecError(f"field {name!r} must be {_FAMILY_NAMES[family]}, not {_FAMILY_NAMES[found]}")
        elif family == _MAP:
            fields[name] = reader.limits()
        elif family == _ARRAY:
            fields[name] = reader.ids() if name == "docs" else reader.stamps()
        else:
            fields[name] = reader.unpacker.unpack()
    if not reader.at_end():
        raise CodecError("trailing bytes after the message")
    return fields


def _build(fields: dict[str, Any]) -> Message:
    version = fields.get("v")
    if version is None:
        raise CodecError("missing protocol version 'v'")
    if version != PROTOCOL_VERSION:
        raise CodecError(f"unsupported protocol version {version}")
    kind = fields.get("t")
    if kind is None:
        raise CodecError("missing message type 't'")
    cls: type[Message]
    if kind == "upd":
        # Both directions share the type; the id field says which one this is.
        if ("uid" in fields) == ("seq" in fields):
            raise CodecError("an upd carries exactly one of 'uid' (to the relay) or 'seq' (from it)")
        cls = ClientUpdate if "uid" in fields else RelayUpdate
    else:
        found = _TYPES.get(kind)
        if found is None:
            raise CodecError(f"unknown message type {_show(kind)}")
        cls = found
    required = _REQUIRED[cls]
    for name in required:
        if name not in fields:
            raise CodecError(f"{kind} message without {name!r}")
    return cls(**{name: fields[name] for name in cls.FIELDS if name in fields})


def decode(data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_MESSAGE) -> Message:
    """Decode one wire message.

    Args:
        data: the payload of one binary websocket message.
        max_size: refuse larger inputs before reading a single byte of them.

    Returns:
        The message; its type tells the direction (``ClientMessage`` or ``RelayMessage``).

    Raises:
        CodecError: for every input that is not exactly one valid message. Nothing else escapes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"a message is bytes, not {type(data).__name__}")
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > max_size:
        raise CodecError(f"message of {size} bytes exceeds the limit of {max_size}")
    if not size:
        raise CodecError("empty message")
    try:
        return _build(_read_fields(data if type(data) is bytes else bytes(data)))
    except CodecError:
        raise
    except Exception as exc:  # msgpack's own errors, UnicodeDecodeError, MemoryError...
        raise CodecError(f"malformed msgpack ({type(exc).__name__})") from exc
