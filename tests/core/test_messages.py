"""The wire codec: round trips, strictness, and that hostile bytes only ever raise CodecError."""

from __future__ import annotations

import random
import time
import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, strategies as st

import crdt_core.messages as messages
from crdt_core.errors import CodecError
from crdt_core.messages import (
    DEFAULT_MAX_MESSAGE,
    MAX_INT,
    MAX_STAMPS,
    Ack,
    Auth,
    ClientUpdate,
    CloseAction,
    CloseCode,
    ErrorCode,
    ErrorMessage,
    Limit,
    Message,
    RelayUpdate,
    Stamp,
    Stamped,
    Subscribe,
    Sync,
    Unsubscribe,
    Welcome,
    close_action,
    decode,
    encode_stamp,
    encode_stamped,
    encode_update,
    is_retryable_close,
    is_retryable_error,
    is_valid_doc_id,
)

# --- strategies ----------------------------------------------------------------------------------

ascii_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
doc_ids = st.one_of(
    ascii_ids,
    st.sampled_from(["catalog", "shop:s1", "bookings:s1:2025-06-01", "user:u-42", "x" * 256]),
)
ints = st.one_of(st.integers(0, 300), st.integers(0, MAX_INT))
payloads = st.binary(min_size=1, max_size=300)
printable = st.text(st.characters(categories=("L", "M", "N", "P", "S"), include_characters=" "), max_size=60)
limits = st.dictionaries(
    st.one_of(st.sampled_from([str(limit) for limit in Limit]), ascii_ids.filter(lambda s: len(s) <= 64)),
    ints,
    max_size=8,
)

any_message: st.SearchStrategy[Message] = st.one_of(
    st.builds(Auth, token=ascii_ids),
    st.builds(Subscribe, doc=doc_ids, sv=payloads),
    st.builds(ClientUpdate, doc=doc_ids, uid=ints, update=payloads),
    st.builds(Unsubscribe, doc=doc_ids),
    st.builds(Welcome, user=ascii_ids, epoch=ascii_ids, server=printable.filter(bool), limits=limits),
    st.builds(Sync, doc=doc_ids, update=payloads, sv=payloads, seq=ints),
    st.builds(RelayUpdate, doc=doc_ids, update=payloads, seq=ints),
    st.builds(Ack, doc=doc_ids, uid=ints, seq=ints),
    st.builds(
        Stamp,
        doc=doc_ids,
        seq=ints,
        update=payloads,
        stamps=st.lists(st.tuples(ints, ascii_ids), max_size=6).map(tuple),
    ),
    st.builds(
        Stamped,
        doc=doc_ids,
        seq=ints.filter(lambda n: n < MAX_INT),
        stamp=payloads,
        stamps=st.lists(st.tuples(ints, ascii_ids), max_size=6).map(tuple),
        uid=ints,
    ),
    st.builds(
        Stamped,
        doc=doc_ids,
        seq=ints.filter(lambda n: n < MAX_INT),
        stamp=payloads,
        stamps=st.lists(st.tuples(ints, ascii_ids), max_size=6).map(tuple),
        update=payloads,
    ),
    st.builds(
        ErrorMessage,
        code=st.one_of(st.sampled_from(list(ErrorCode)), ascii_ids.filter(lambda s: len(s) <= 64)),
        reason=printable,
        doc=st.none() | doc_ids,
        uid=st.none() | ints,
        retry=st.booleans(),
    ),
)

NAMESPACE: dict[str, Any] = {cls.__name__: cls for cls in messages._TYPES.values()}
NAMESPACE.update(ClientUpdate=ClientUpdate, RelayUpdate=RelayUpdate)


def raw(body: object) -> bytes:
    """Pack a hand-made value, bypassing the message classes."""
    return bytes(msgpack.packb(body, use_bin_type=True))


def assert_rejected(data: Any, match: str | None = None, **kwargs: Any) -> None:
    with pytest.raises(CodecError, match=match):
        decode(data, **kwargs)


def decode_or_codec_error(data: Any) -> None:
    """The contract for hostile input: a message or a CodecError, never anything else."""
    try:
        message = decode(data)
    except CodecError:
        return
    # Whatever decodes must be a valid message that re-encodes to something that decodes equal.
    assert decode(message.to_wire()) == message


# --- round trips ---------------------------------------------------------------------------------


@given(any_message)
def test_every_message_round_trips(message: Message) -> None:
    wire = message.to_wire()
    assert decode(wire) == message
    assert type(message).from_wire(wire) == message
    assert type(decode(wire)) is type(message)


@given(any_message)
def test_repr_is_valid_python(message: Message) -> None:
    assert eval(repr(message), dict(NAMESPACE)) == message


@given(any_message)
def test_field_order_on_the_wire_does_not_matter(message: Message) -> None:
    body = msgpack.unpackb(message.to_wire(), raw=False)
    reordered = dict(reversed(list(body.items())))
    assert decode(raw(reordered)) == message


def test_upd_direction_follows_the_id_field() -> None:
    assert decode(raw({"v": 1, "t": "upd", "doc": "d", "uid": 1, "update": b"\0\0"})) == ClientUpdate(
        "d", 1, b"\0\0"
    )
    assert decode(raw({"v": 1, "t": "upd", "doc": "d", "seq": 1, "update": b"\0\0"})) == RelayUpdate(
        "d", b"\0\0", 1
    )
    assert_rejected(
        raw({"v": 1, "t": "upd", "doc": "d", "uid": 1, "seq": 1, "update": b"\0\0"}), "exactly one"
    )
    assert_rejected(raw({"v": 1, "t": "upd", "doc": "d", "update": b"\0\0"}), "exactly one")


def test_stamped_carries_exactly_one_of_uid_or_update() -> None:
    base = {"v": 1, "t": "stamped", "doc": "d", "seq": 4, "stamp": b"\1\2", "stamps": [[1, "r1"]]}
    assert decode(raw({**base, "uid": 9})) == Stamped("d", 4, b"\1\2", ((1, "r1"),), uid=9)
    assert decode(raw({**base, "update": b"\0\0"})) == Stamped("d", 4, b"\1\2", ((1, "r1"),), update=b"\0\0")
    assert_rejected(raw({**base, "uid": 9, "update": b"\0\0"}), "exactly one")
    assert_rejected(raw(base), "exactly one")
    assert decode(raw({**base, "uid": 9, "update": None})) == Stamped("d", 4, b"\1\2", ((1, "r1"),), uid=9)
    for name in ("doc", "seq", "stamp", "stamps"):
        assert_rejected(raw({k: v for k, v in {**base, "uid": 9}.items() if k != name}), f"without '{name}'")
    assert_rejected(raw({**base, "uid": 9, "stamp": b""}), "must not be empty")
    assert_rejected(raw({**base, "uid": 9, "stamp": "x"}), "must be bin, not str")
    assert_rejected(raw({**base, "uid": 9, "stamps": [[1, "r", 2]]}), "pair")
    assert_rejected(raw({**base, "uid": 9, "stamps": [[1, "r"]] * (MAX_STAMPS + 1)}), "more than")
    # The stamp update's seq is seq + 1, so seq itself must leave room for it.
    assert_rejected(raw({**base, "uid": 9, "seq": MAX_INT}), "room")
    assert Stamped("d", MAX_INT - 1, b"\1", (), uid=1).stamp_seq == MAX_INT
    with pytest.raises(CodecError, match="exactly one"):
        Stamped("d", 1, b"\1", ())
    with pytest.raises(CodecError, match="update must be bytes"):
        Stamped("d", 1, b"\1", (), update=bytearray(b"\0"))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="uid must be an int, not bool"):
        Stamped("d", 1, b"\1", (), uid=True)


def test_from_wire_insists_on_the_type() -> None:
    with pytest.raises(CodecError, match="expected a Ack"):
        Ack.from_wire(Unsubscribe("d").to_wire())


def test_documented_hex_example() -> None:
    # docs/protocol.md shows exactly these bytes; keep the two in step.
    assert Ack("shop:s1", 7, 42).to_wire().hex(" ") == (
        "85 a1 76 01 a1 74 a3 61 63 6b a3 64 6f 63 a7 73 68 6f 70 3a 73 31 a3 75 69 64 07 a3 73 65 71 2a"
    )


def test_encoders_for_the_fan_out_match_the_messages() -> None:
    assert encode_update("d", b"\1\2", 9) == RelayUpdate("d", b"\1\2", 9).to_wire()
    assert (
        encode_stamp("d", 3, b"\1", [(1, "r1"), (2, "r2")])
        == Stamp("d", 3, b"\1", ((1, "r1"), (2, "r2"))).to_wire()
    )
    assert (
        encode_stamped("d", 3, b"\1\2", b"\3", [(1, "r1")])
        == Stamped("d", 3, b"\3", ((1, "r1"),), update=b"\1\2").to_wire()
    )
    with pytest.raises(CodecError):
        encode_update("not a doc", b"\1", 1)
    with pytest.raises(CodecError):
        encode_stamped("d", 3, b"\1", b"", [])


# --- construction validates ---------------------------------------------------------------------


def test_constructors_validate() -> None:
    with pytest.raises(CodecError, match="token"):
        Auth("")
    with pytest.raises(CodecError, match="token"):
        Auth("has space")
    with pytest.raises(CodecError, match="uid must be an int, not bool"):
        ClientUpdate("d", True, b"\0")
    with pytest.raises(CodecError, match="out of range"):
        Ack("d", 1, MAX_INT + 1)
    with pytest.raises(CodecError, match="out of range"):
        Ack("d", -1, 1)
    with pytest.raises(CodecError, match="update must be bytes"):
        RelayUpdate("d", bytearray(b"\0"), 1)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="must not be empty"):
        Subscribe("d", b"")
    with pytest.raises(CodecError, match="retry must be a bool"):
        ErrorMessage("internal", "x", retry=1)  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="control characters"):
        ErrorMessage("internal", "line\nbreak")
    with pytest.raises(CodecError, match="pair"):
        Stamp("d", 1, b"\0", ((1, "r", 3),))  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="sequence"):
        Stamp("d", 1, b"\0", "r1")  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="more than"):
        Stamp("d", 1, b"\0", tuple((i, "r") for i in range(MAX_STAMPS + 1)))
    with pytest.raises(CodecError, match="limits must be a map"):
        Welcome("u", "e", "s", [("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="more than"):
        Welcome("u", "e", "s", {f"k{i}": i for i in range(65)})
    with pytest.raises(CodecError, match="server"):
        Welcome("u", "e", "", {})


def test_enum_values_become_plain_strings() -> None:
    error = ErrorMessage(ErrorCode.FORBIDDEN, "no")
    assert type(error.code) is str and repr(error).startswith("ErrorMessage(code='forbidden'")
    welcome = Welcome("u", "e", "relay/1", {Limit.MAX_DOCS: 5})
    assert all(type(key) is str for key in welcome.limits)
    assert hash(welcome) == hash(Welcome("u", "e", "relay/1", {"max_docs": 5}))


def test_welcome_keeps_a_private_copy_of_limits() -> None:
    source = {"max_docs": 5}
    welcome = Welcome("u", "e", "relay/1", source)
    source["max_docs"] = 6
    assert welcome.limits == {"max_docs": 5}


@pytest.mark.parametrize(
    ("doc", "valid"),
    [
        ("a", True),
        ("bookings:s1:2025-06-01", True),
        ("~" * 256, True),
        ("", False),
        ("x" * 257, False),
        ("has space", False),
        ("tab\tdoc", False),
        ("caf\u00e9", False),
        ("nul\0", False),
        (b"bytes", False),
        (None, False),
    ],
)
def test_doc_id_rules(doc: object, valid: bool) -> None:
    assert is_valid_doc_id(doc) is valid
    body = raw({"v": 1, "t": "unsub", "doc": doc})
    if valid:
        assert decode(body) == Unsubscribe(doc)  # type: ignore[arg-type]
    else:
        assert_rejected(body)


# --- strict decoding -----------------------------------------------------------------------------

VALID_ACK = {"v": 1, "t": "ack", "doc": "d", "uid": 1, "seq": 2}


def with_field(**changes: Any) -> bytes:
    body = dict(VALID_ACK)
    body.update(changes)
    return raw(body)


def without(name: str) -> bytes:
    return raw({k: v for k, v in VALID_ACK.items() if k != name})


def test_bool_is_not_an_int() -> None:
    assert_rejected(with_field(uid=True), "must be int, not bool")
    assert_rejected(with_field(seq=False), "must be int, not bool")
    assert_rejected(with_field(v=True), "must be int, not bool")


def test_version_is_checked() -> None:
    assert_rejected(with_field(v=2), "unsupported protocol version 2")
    assert_rejected(with_field(v=0), "unsupported protocol version")
    assert_rejected(with_field(v="1"), "must be int, not str")
    assert_rejected(without("v"), "missing protocol version")
    assert_rejected(with_field(v=None), "missing protocol version")


def test_type_is_checked() -> None:
    assert_rejected(with_field(t="nope"), "unknown message type")
    assert_rejected(with_field(t=b"ack"), "must be str, not bin")
    assert_rejected(without("t"), "missing message type")


@pytest.mark.parametrize("name", ["doc", "uid", "seq"])
def test_missing_fields(name: str) -> None:
    assert_rejected(without(name), f"without '{name}'")


def test_nil_is_an_absent_field() -> None:
    assert_rejected(with_field(seq=None), "without 'seq'")
    assert decode(
        raw({"v": 1, "t": "err", "code": "internal", "reason": "", "retry": True, "doc": None})
    ) == (ErrorMessage("internal", "", None, None, True))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"doc": 5}, "must be str, not int"),
        ({"doc": b"d"}, "must be str, not bin"),
        ({"uid": "1"}, "must be int, not str"),
        ({"uid": 1.0}, "must be int, not float"),
        ({"uid": float("nan")}, "must be int, not float"),
        ({"uid": [1]}, "must be int, not array"),
        ({"uid": {"a": 1}}, "must be int, not map"),
        ({"uid": -1}, "out of range"),
        ({"seq": 2**63}, "out of range"),
        ({"seq": 2**64 - 1}, "out of range"),
        ({"uid": msgpack.ExtType(1, b"x")}, "must be int, not ext"),
    ],
)
def test_wrong_field_types(changes: dict[str, Any], match: str) -> None:
    assert_rejected(with_field(**changes), match)


def test_max_int_is_accepted() -> None:
    assert decode(with_field(seq=MAX_INT)) == Ack("d", 1, MAX_INT)


def test_unknown_fields_are_ignored_whatever_they_hold() -> None:
    assert decode(with_field(future={"nested": [1, 2.5, None, msgpack.ExtType(5, b"x")]})) == Ack("d", 1, 2)
    # A defined field that this type does not use is read with its global type, then ignored.
    assert decode(with_field(token="abc")) == Ack("d", 1, 2)
    assert_rejected(with_field(token=5), "must be str")


def test_structural_rejections() -> None:
    assert_rejected(b"", "empty")
    assert_rejected(raw([1, "ack"]), "must be a msgpack map, not array")
    assert_rejected(raw("ack"), "must be a msgpack map, not str")
    assert_rejected(with_field() + b"\x00", "trailing bytes")
    assert_rejected(with_field()[:-1], "truncated|malformed")
    assert_rejected(b"\x81\xc1\x00", "field name must be str, not invalid")
    assert_rejected(raw({1: 2, "v": 1}), "field name must be str, not int")
    assert_rejected(b"\x82\xa1v\x01\xa1v\x01", "duplicate field")
    assert_rejected(raw({f"f{i}": i for i in range(33)}), "more than 32")
    assert_rejected(b"\x81\xa2\xff\xfe\x01", "malformed msgpack")  # a field name that is not UTF-8


@pytest.mark.parametrize("data", ["text", None, 5, [b"x"]])
def test_non_bytes_input(data: Any) -> None:
    assert_rejected(data, "a message is bytes")


def test_bytes_like_inputs_are_accepted() -> None:
    wire = Ack("d", 1, 2).to_wire()
    assert decode(bytearray(wire)) == decode(memoryview(wire)) == Ack("d", 1, 2)


def test_nested_field_shapes() -> None:
    base = {"v": 1, "t": "stamp", "doc": "d", "seq": 1, "update": b"\0"}
    assert decode(raw({**base, "stamps": [[1, "r"]]})).stamps == ((1, "r"),)  # type: ignore[union-attr]
    assert_rejected(raw({**base, "stamps": [[1, "r", 2]]}), "pair")
    assert_rejected(raw({**base, "stamps": [1]}), "a stamp must be array")
    assert_rejected(raw({**base, "stamps": [["r", 1]]}), "stamp number must be int")
    assert_rejected(raw({**base, "stamps": [[1, "r"]] * (MAX_STAMPS + 1)}), "more than")
    welcome = {"v": 1, "t": "welcome", "user": "u", "epoch": "e", "server": "s"}
    assert_rejected(raw({**welcome, "limits": {"a": True}}), "must be int, not bool")
    assert_rejected(raw({**welcome, "limits": {1: 1}}), "limit name must be str")
    assert_rejected(raw({**welcome, "limits": {"a b": 1}}), "limit name")
    assert_rejected(
        b"\x86\xa1v\x01\xa1t\xa7welcome\xa4user\xa1u\xa5epoch\xa1e\xa6server\xa1s"
        + b"\xa6limits\x82\xa1a\x01\xa1a\x02",
        "duplicate limit",
    )
    assert_rejected(raw({**welcome, "limits": {f"k{i}": i for i in range(65)}}), "more than")


# --- size and cost limits ------------------------------------------------------------------------


def test_oversized_input_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = msgpack.Unpacker

    def spy(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(msgpack, "Unpacker", spy)
    small = Ack("d", 1, 2).to_wire()
    assert_rejected(small, "exceeds the limit", max_size=len(small) - 1)
    assert_rejected(memoryview(small), "exceeds the limit", max_size=len(small) - 1)
    assert_rejected(b"\x00" * (DEFAULT_MAX_MESSAGE + 1), "exceeds the limit")
    assert built == []
    assert decode(small, max_size=len(small)) == Ack("d", 1, 2)
    assert len(built) == 1


def hostile_inputs() -> dict[str, bytes]:
    head = b"\x84\xa1v\x01\xa1t\xa5unsub\xa3doc\xa1d\xa1x"  # unsub with an unknown field "x"
    budget = DEFAULT_MAX_MESSAGE - len(head) - 16
    return {
        # A million empty maps would cost ~64 MiB as Python objects; skipped unbuilt.
        "empty maps": head + b"\xdd" + (budget).to_bytes(4, "big") + b"\x80" * budget,
        "deep nesting": head + b"\x91" * budget + b"\xc0",
        "big str": head + b"\xdb" + budget.to_bytes(4, "big") + b"a" * budget,
        # Claims far more elements than there are bytes.
        "lying header": head + b"\xdd\xff\xff\xff\xff\x80",
        # In a known field, a container where a scalar belongs is refused at its first byte.
        "maps in doc": b"\x83\xa1v\x01\xa1t\xa5unsub\xa3doc\xdd"
        + budget.to_bytes(4, "big")
        + b"\x80" * budget,
        "stamps of maps": b"\x85\xa1v\x01\xa1t\xa5stamp\xa3doc\xa1d\xa3seq\x01\xa6stamps\xdc\x10\x00"
        + b"\x80" * budget,
        "stamped stamps of maps": b"\x85\xa1v\x01\xa1t\xa7stamped\xa3doc\xa1d\xa3seq\x01"
        + b"\xa6stamps\xdc\x10\x00"
        + b"\x80" * budget,
    }


@pytest.mark.parametrize("name", list(hostile_inputs()))
def test_hostile_inputs_are_cheap(name: str) -> None:
    data = hostile_inputs()[name]
    assert len(data) <= DEFAULT_MAX_MESSAGE
    tracemalloc.start()
    started = time.perf_counter()
    try:
        decode_or_codec_error(data)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # Linear in the input and no more than a few copies of it, whatever its shape.
    assert peak < 4 * DEFAULT_MAX_MESSAGE, f"{name}: peak {peak} bytes"
    assert elapsed < 1.0, f"{name}: {elapsed:.3f}s"


# --- hostile bytes only ever raise CodecError ----------------------------------------------------


@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_codec_error(data: bytes) -> None:
    decode_or_codec_error(data)


@given(st.binary(max_size=60))
def test_arbitrary_map_bodies_only_raise_codec_error(tail: bytes) -> None:
    # Start like a real message so the decoder gets past the first byte more often.
    decode_or_codec_error(b"\x85\xa1v\x01\xa1t\xa3upd" + tail)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(sorted(messages._FIELD_FAMILY) + ["extra"])


@given(
    st.sampled_from(
        ["auth", "sub", "upd", "unsub", "welcome", "sync", "ack", "stamp", "stamped", "err", "x"]
    ),
    st.dictionaries(field_names, msgpack_values, max_size=8),
)
def test_structured_garbage_only_raises_codec_error(kind: str, body: dict[str, Any]) -> None:
    decode_or_codec_error(raw({"v": 1, "t": kind, **body}))


def mutate(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(6)
        position = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[position % len(buf)] = rng.randrange(256)
        elif op == 1 and buf:
            buf[position % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 2:
            buf[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 3 and buf:
            del buf[position : position + rng.randint(1, 4)]
        elif op == 4:
            del buf[position:]
        else:
            # Splice in an interesting byte: a type marker with a large length.
            buf[position:position] = rng.choice(
                [b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\xc1", b"\xcf"]
            )
    return bytes(buf)


@given(any_message, st.randoms(use_true_random=False))
def test_mutated_messages_only_raise_codec_error(message: Message, rng: random.Random) -> None:
    decode_or_codec_error(mutate(message.to_wire(), rng))


CORPUS: list[Message] = [
    Auth("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.c2ln"),
    Subscribe("bookings:s1:2025-06-01", b"\x01\x9a\x05\x03"),
    ClientUpdate("shop:s1", 17, b"\x01\x01\x9a\x05\x00\x28\x01\x03res\x02k1\x01\x00"),
    Unsubscribe("catalog"),
    Welcome("u-1", "ep-2025", "quickslot-relay/0.1.0", {"max_message": 1 << 20, "max_docs": 64}),
    Sync("shop:s1", b"\x00\x00", b"\x00", 0),
    RelayUpdate("shop:s1", b"\x01\x02\x03", 44),
    Ack("shop:s1", 17, 45),
    Stamp("bookings:s1:2025-06-01", 46, b"\x01\x02", ((1, "r-1"), (2, "r-2"))),
    Stamped("bookings:s1:2025-06-01", 47, b"\x01\x02", ((3, "r-3"),), uid=18),
    Stamped("bookings:s1:2025-06-01", 49, b"\x01\x02", ((4, "r-4"),), update=b"\x01\x01\x9a\x05\x00"),
    ErrorMessage("rejected", "bad_signature: record r-1", "shop:s1", 17, False),
]


def test_thousands_of_deterministic_mutations_only_raise_codec_error() -> None:
    rng = random.Random(20250601)
    for message in CORPUS:
        wire = message.to_wire()
        for _ in range(400):
            decode_or_codec_error(mutate(wire, rng))


# --- close and error codes -----------------------------------------------------------------------


def test_close_code_actions() -> None:
    assert close_action(CloseCode.GOING_AWAY) is CloseAction.RECONNECT
    assert close_action(CloseCode.TRY_AGAIN_LATER) is CloseAction.RECONNECT
    assert close_action(CloseCode.TOO_FAST) is CloseAction.RECONNECT
    assert close_action(CloseCode.ABNORMAL) is CloseAction.RECONNECT
    assert close_action(CloseCode.TOKEN_EXPIRED) is CloseAction.REFRESH_TOKEN
    assert close_action(CloseCode.AUTH_FAILED) is CloseAction.LOGIN
    assert close_action(CloseCode.SESSION_REVOKED) is CloseAction.LOGIN
    assert close_action(CloseCode.PROTOCOL_VIOLATION) is CloseAction.RECONNECT  # see tests/chaos
    assert close_action(CloseCode.TOO_BIG) is CloseAction.STOP
    assert close_action(CloseCode.ACCOUNT_DISABLED) is CloseAction.STOP
    assert close_action(4999) is CloseAction.RECONNECT  # unknown: keep trying, with backoff
    assert is_retryable_close(1011) and is_retryable_close(4001)
    assert is_retryable_close(4002) and not is_retryable_close(4003)
    assert all(isinstance(close_action(code), CloseAction) for code in CloseCode)


def test_error_code_classification() -> None:
    retryable = {code for code in ErrorCode if code.retryable}
    assert retryable == {"not_subscribed", "missing_deps", "internal", "rate_limited"}
    assert is_retryable_error("internal") and not is_retryable_error("rejected")
    assert not is_retryable_error("from_the_future")
    assert is_retryable_error("from_the_future", default=True)
