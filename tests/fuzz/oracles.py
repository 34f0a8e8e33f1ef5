"""What the relay must do with a fuzz case, predicted from the bytes with the reference codec.

The prediction is exact where the protocol is (docs/protocol.md): a message that does not decode
closes with 4002, one over the size limit with 1009, a ``sub`` gets exactly one ``sync`` or doc
``err``, an ``upd`` exactly one ``ack``/``stamped`` or uid ``err``, an unauthenticated first
message that is not a valid ``auth`` closes with 4002 and a bad token with 4003, as does the real
token when it is bound to a device key and the ``auth`` carries no valid proof of possession
(``crdt_core.pop``; the fuzzer cannot forge one, the corpus holds one genuine). Malformed
websocket frames are refused by the websocket layer before the protocol sees a message, with the
RFC 6455 codes 1002 (protocol error), 1007 (invalid UTF-8) or 1009 (too big).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import Counter
from dataclasses import dataclass, field

from crdt_core.errors import CodecError
from crdt_core.messages import (
    Auth,
    ClientUpdate,
    CloseCode,
    Subscribe,
    Unsubscribe,
    decode,
)
from crdt_core.pop import SYNC, WINDOW_S, ProofError, check_proof, parse_proof, token_binding
from tests.fuzz.cases import Fragments

#: Close codes of the websocket layer for malformed frames (RFC 6455 section 7.4.1).
FRAMING_CLOSES = frozenset({1002, 1007, 1009})
PROTOCOL = frozenset({CloseCode.PROTOCOL_VIOLATION.value})
TOO_BIG = frozenset({CloseCode.TOO_BIG.value})


@dataclass
class Expect:
    """The answers a case must get, or the close codes that may end it."""

    close: frozenset[int] = frozenset()
    uids: dict[int, bytes] = field(default_factory=dict)
    pings: set[int] = field(default_factory=set)
    subs: Counter[str] = field(default_factory=Counter)
    welcome: bool = False
    #: A welcome is one acceptable outcome (a token that decodes to the real one), not required.
    welcome_ok: bool = False
    unsubscribed: bool = False

    @property
    def waiting(self) -> bool:
        return bool(self.uids or self.pings or +self.subs or self.welcome)


def joined_parts(step: Fragments) -> bytes | str:
    """The message a fragmented send delivers."""
    parts = step.parts
    if all(isinstance(p, bytes) for p in parts):
        return b"".join(p for p in parts if isinstance(p, bytes))
    return "".join(p for p in parts if isinstance(p, str))


def predict_open(data: bytes | str, max_message: int, expect: Expect) -> None:
    """An authenticated connection receives ``data``: add what it must answer to ``expect``."""
    if isinstance(data, str):
        expect.close = PROTOCOL
        return
    if len(data) > max_message:
        expect.close = TOO_BIG
        return
    try:
        message = decode(data, max_size=max_message)
    except CodecError:
        expect.close = PROTOCOL
        return
    if isinstance(message, Subscribe):
        expect.subs[message.doc] += 1
    elif isinstance(message, ClientUpdate):
        if message.uid in expect.uids:
            expect.close = PROTOCOL  # a uid re-used while unanswered
        else:
            expect.uids[message.uid] = message.update
    elif isinstance(message, Unsubscribe):
        expect.unsubscribed = True
    else:
        expect.close = PROTOCOL  # auth again, peer-only or relay-to-client messages


def _segments(token: str) -> list[bytes] | None:
    try:
        return [base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)) for p in token.split(".")]
    except (binascii.Error, ValueError):
        return None


def predict_first(data: bytes | str, preauth_max: int, real_token: str) -> Expect:
    """An unauthenticated connection's first message is ``data``."""
    expect = Expect()
    if isinstance(data, str):
        expect.close = PROTOCOL
        return expect
    if len(data) > preauth_max:
        expect.close = TOO_BIG
        return expect
    try:
        message = decode(data)
    except CodecError:
        expect.close = PROTOCOL
        return expect
    if not isinstance(message, Auth):
        expect.close = PROTOCOL
        return expect
    real = _segments(real_token)
    same = message.token == real_token or (real is not None and _segments(message.token) == real)
    proven = _proof_verdict(message, real_token) if same else False
    if message.token == real_token and proven is True:
        expect.welcome = True
        return expect
    expect.close = frozenset({CloseCode.AUTH_FAILED.value})
    if same and proven is not False:
        # Base64 has spellings that decode to the same bytes; the signature still holds. And a
        # proof at the edge of its window may be judged either way by the time the relay sees it.
        expect.welcome_ok = True
    return expect


#: Seconds either side of the proof window's edge where the oracle accepts either answer.
_EDGE_S = 10


def _proof_verdict(message: Auth, real_token: str) -> bool | None:
    """Whether the relay must accept this ``auth``'s proof of possession for the real token:
    always for a bearer token; for a bound one only with a valid, fresh proof (None: at the edge)."""
    binding = token_binding(real_token)
    if binding is None:
        return True
    try:
        proof = parse_proof(message.proof, message.proof_time)
    except ProofError:
        return False
    if proof is None:
        return False
    now = time.time()
    if abs(abs(proof.at - now) - WINDOW_S) <= _EDGE_S:
        return None
    try:
        check_proof(binding.key, proof, SYNC, binding.audience, binding.jti, now=now)
    except ProofError:
        return False
    return True
