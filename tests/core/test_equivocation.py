"""crdt_core.equivocation: one rule for the relay's re-send check and for peers.

The relay and the peer code each had a copy. They differed where a key holds something that is not
bytes (the relay's copy raised ``EngineError`` out of the check; the peer's reported different
content), and in what the description names (the peer's named the signer): both now follow the
peer's rule.
"""

from __future__ import annotations

import pycrdt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.certs import SigningKey
from crdt_core.engine import Replica
from crdt_core.equivocation import find_equivocation
from crdt_core.errors import ValidationError
from crdt_core.records import sign_record
from relay.sync.arrival import refuse_equivocation

CLIENT = 4242
KEY = SigningKey("kid-1", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def _record(no: int) -> bytes:
    return sign_record(
        "day:s:2026-01-01", f"{no:016d}", "stamp", {"no": no, "reservation": "r", "at": 0}, KEY, 1
    )


def _holding(value: bytes) -> tuple[Replica, bytes]:
    """A replica holding ``value`` at stamps/k under CLIENT:0, and the update that wrote it."""
    writer = Replica(CLIENT)
    update = writer.write([("stamps", "k", value)])
    held = Replica()
    held.apply_update(update)
    return held, update


def test_a_re_send_of_what_is_held_is_no_equivocation() -> None:
    held, update = _holding(_record(1))
    assert find_equivocation(held, update) is None
    refuse_equivocation(held, update)


def test_structs_new_here_are_left_to_validation() -> None:
    held = Replica()
    assert find_equivocation(held, Replica(CLIENT).write([("stamps", "k", _record(1))])) is None


def test_an_update_that_does_not_decode_is_left_to_validation() -> None:
    held, _ = _holding(_record(1))
    assert find_equivocation(held, b"\xff\xff\xff") is None


def test_other_content_at_a_held_id_is_named_with_its_signer() -> None:
    held, _ = _holding(_record(1))
    other = Replica(CLIENT).write([("stamps", "k", _record(2))])
    clash = find_equivocation(held, other)
    assert clash is not None
    assert f"{CLIENT}:0" in clash and "stamps/k" in clash and "signed by relay:kid-1" in clash
    with pytest.raises(ValidationError) as refused:
        refuse_equivocation(held, other)
    assert refused.value.code == "equivocation"
    assert str(clash) in str(refused.value)


def test_other_content_that_is_no_record_names_no_signer() -> None:
    held, _ = _holding(_record(1))
    clash = find_equivocation(held, Replica(CLIENT).write([("stamps", "k", b"junk")]))
    assert clash is not None and "unknown signer" in clash


def test_the_same_id_under_another_key_is_an_equivocation() -> None:
    held, _ = _holding(_record(1))
    assert find_equivocation(held, Replica(CLIENT).write([("stamps", "other", _record(1))])) is not None


def test_a_held_value_that_is_not_bytes_counts_as_different_content() -> None:
    """Where the copies differed: the relay's raised EngineError out of its re-send check."""
    doc: pycrdt.Doc[pycrdt.Map[int]] = pycrdt.Doc(client_id=CLIENT)
    stamps: pycrdt.Map[int] = doc.get("stamps", type=pycrdt.Map)
    stamps["k"] = 7
    held = Replica()
    held.apply_update(doc.get_update())
    other = Replica(CLIENT).write([("stamps", "k", _record(1))])
    assert find_equivocation(held, other) is not None
    with pytest.raises(ValidationError):
        refuse_equivocation(held, other)
