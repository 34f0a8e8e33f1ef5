"""The pure Yjs v1 reader (``crdt_core.yupdate``) agrees with the engine, and is strict on hostile bytes.

Why: validation trusts this reader instead of applying an update to a copy of the document. If the
reader ever reported an insert the engine would not perform (or missed one it would), a forged
record could slip past the writer rules. So every claim the reader makes is checked against what
pycrdt actually does with the same bytes, on random multi-replica histories with concurrent edits.
pycrdt is imported directly here only to produce shapes QuickSlot never writes (text, arrays,
nested types, plain values), which the reader must report as "other".
"""

from __future__ import annotations

import os
import random
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pycrdt
import pytest
from hypothesis import given, strategies as st

from crdt_core.engine import Replica, state_vector_of_update
from crdt_core.errors import EngineError
from crdt_core.yupdate import (
    DecodedUpdate,
    MapInsert,
    OtherStruct,
    decode_state_vector,
    decode_update,
    encode_state_vector,
    encode_varuint,
)
from tests.core.test_engine import MUTATION_COUNT, _booking_history, _mutate
from tests.support.crdt_factory import World

ROOTS = ("reservations", "events")
KEYS = tuple(f"k{i}" for i in range(6))


def _fresh(*updates: bytes) -> Replica:
    replica = Replica()
    for update in updates:
        replica.apply_update(update)
    return replica


def _ids(deletes: list[tuple[int, int, int]]) -> set[tuple[int, int]]:
    return {(client, clock) for client, start, n in deletes for clock in range(start, start + n)}


def _deleted(decoded: DecodedUpdate, client: int, clock: int) -> bool:
    return any(c == client and start <= clock < start + n for c, start, n in decoded.deletes)


# --- random multi-replica histories --------------------------------------------------------------


@dataclass
class Write:
    before: bytes
    """The writer's whole state just before the write."""
    had_key: bool
    root: str
    key: str
    value: bytes
    client: int
    clock: int
    update: bytes


_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"),
            st.integers(0, 3),
            st.sampled_from(ROOTS),
            st.sampled_from(KEYS),
            st.binary(max_size=12),
        ),
        st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3)),
    ),
    min_size=1,
    max_size=40,
)
_client_ids = st.lists(st.integers(0, 2**53 - 1), min_size=2, max_size=4, unique=True)


def _sync(a: Replica, b: Replica) -> None:
    a_sv, b_sv = a.state_vector(), b.state_vector()
    a.apply_update(b.diff(a_sv))
    b.apply_update(a.diff(b_sv))


def _run(client_ids: list[int], ops: list[tuple[object, ...]]) -> tuple[list[Replica], list[Write]]:
    replicas = [Replica(cid) for cid in client_ids]
    writes: list[Write] = []
    for op in ops:
        if op[0] == "write":
            _, i, root, key, value = op
            assert isinstance(i, int) and isinstance(root, str) and isinstance(key, str)
            assert isinstance(value, bytes)
            r = replicas[i % len(replicas)]
            before = r.encode_state()
            had = r.has_key(root, key)
            clock = r.state_clocks().get(r.client_id, 0)
            update = r.write([(root, key, value)])
            writes.append(Write(before, had, root, key, value, r.client_id, clock, update))
        else:
            _, i, j = op
            assert isinstance(i, int) and isinstance(j, int)
            a, b = replicas[i % len(replicas)], replicas[j % len(replicas)]
            if a is not b:
                _sync(a, b)
    for a in replicas[1:]:
        _sync(replicas[0], a)
    for a in replicas[1:]:
        _sync(replicas[0], a)
    return replicas, writes


@given(client_ids=_client_ids, ops=_ops)
def test_each_write_is_reported_exactly_as_the_engine_performs_it(
    client_ids: list[int], ops: list[tuple[object, ...]]
) -> None:
    _, writes = _run(client_ids, ops)
    for w in writes:
        decoded = decode_update(w.update)
        assert decoded.ranges == {w.client: (w.clock, w.clock + 1)}
        if w.had_key:
            # Yjs encodes overwriting a key as an item whose origin is the old value, plus a delete.
            assert decoded.inserts == []
            assert len(decoded.others) == 1
            assert "overwrites" in decoded.others[0].why
            assert decoded.deletes, "an overwrite deletes the old value"
        else:
            assert decoded.inserts == [MapInsert(w.client, w.clock, w.root, w.key, w.value)]
            assert decoded.others == []
            # A Yjs diff always carries the document's whole delete set, but an insert deletes
            # nothing new: every id it lists was already deleted before the write.
            assert _ids(decoded.deletes) <= _ids(decode_update(w.before).deletes)
        after = _fresh(w.before, w.update)
        assert after.get_bytes(w.root, w.key) == w.value
        for ins in decoded.inserts:
            assert after.get_bytes(ins.root, ins.key) == ins.value


@given(client_ids=_client_ids, ops=_ops)
def test_merged_state_decodes_to_what_the_engine_shows(
    client_ids: list[int], ops: list[tuple[object, ...]]
) -> None:
    replicas, _ = _run(client_ids, ops)
    merged = replicas[0]
    assert all(r.to_py() == merged.to_py() for r in replicas)
    state = merged.encode_state()
    decoded = decode_update(state)

    # Every live (not deleted) struct is one visible map entry; each live insert shows its value.
    live_inserts = [i for i in decoded.inserts if not _deleted(decoded, i.client, i.clock)]
    live_others = [o for o in decoded.others if not _deleted(decoded, o.client, o.clock)]
    assert all("overwrites" in o.why for o in live_others)
    assert len(live_inserts) + len(live_others) == sum(merged.size(root) for root in merged.roots())
    for ins in live_inserts:
        assert merged.get_bytes(ins.root, ins.key) == ins.value
    assert len({(i.root, i.key) for i in live_inserts}) == len(live_inserts)

    # The state vector is where each client's structs end, in the engine's and the reader's view.
    clocks = merged.state_clocks()
    assert decode_state_vector(merged.state_vector()) == clocks
    assert {c: end for c, (_, end) in decoded.ranges.items()} == clocks
    assert all(start == 0 for start, _ in decoded.ranges.values())
    assert decode_state_vector(state_vector_of_update(state)) == clocks


@given(clocks=st.dictionaries(st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1), max_size=8))
def test_encode_state_vector_round_trips(clocks: dict[int, int]) -> None:
    encoded = encode_state_vector(clocks)
    assert decode_state_vector(encoded) == clocks
    assert encode_state_vector(decode_state_vector(encoded)) == encoded


@given(client_ids=_client_ids, ops=_ops, lagging=st.integers(0, 3))
def test_engine_accepts_our_state_vector_encoding(
    client_ids: list[int], ops: list[tuple[object, ...]], lagging: int
) -> None:
    """A diff against our re-encoded vector brings a lagging replica exactly up to date."""
    replicas, _ = _run(client_ids, ops[: len(ops) // 2])
    peer = _fresh(replicas[lagging % len(replicas)].encode_state())
    leader = replicas[0]
    leader.write([("reservations", "late", b"L")])
    ours = encode_state_vector(peer.state_clocks())
    peer.apply_update(leader.diff(ours))
    assert peer.to_py() == leader.to_py()
    assert peer.state_clocks() == leader.state_clocks()


def test_overwrite_is_reported_with_its_delete_set() -> None:
    r = Replica(5)
    first = r.write([("reservations", "k", b"1")])
    second = r.write([("reservations", "k", b"2")])
    assert decode_update(first).inserts == [MapInsert(5, 0, "reservations", "k", b"1")]
    d = decode_update(second)
    assert d.inserts == []
    assert len(d.others) == 1 and isinstance(d.others[0], OtherStruct)
    assert d.others[0].client == 5 and d.others[0].clock == 1 and "overwrites" in d.others[0].why
    assert d.deletes == [(5, 0, 1)]


# --- shapes QuickSlot never writes: all reported as "other" ---------------------------------------


#: pycrdt panics converting ints past a C long; the reader is not what that would test.
_small_ints = st.integers(-(2**53), 2**53)
_shape_ops = st.lists(
    st.one_of(
        # ASCII only: pycrdt's Text indexes differ from Python's for non-BMP characters, and
        # that is pycrdt's business, not the reader's.
        st.tuples(st.just("text_insert"), st.integers(0, 50), st.text("abcxyz ", min_size=1, max_size=8)),
        st.tuples(st.just("text_delete"), st.integers(0, 50), st.integers(1, 4)),
        st.tuples(
            st.just("array_append"),
            st.integers(0, 50),
            st.lists(_small_ints | st.text("ab", max_size=4), min_size=1, max_size=3),
        ),
        st.tuples(st.just("array_delete"), st.integers(0, 50), st.integers(1, 3)),
        st.tuples(
            st.just("nested"),
            st.sampled_from(KEYS),
            st.dictionaries(st.sampled_from(KEYS), _small_ints, max_size=3),
        ),
        st.tuples(st.just("nested_array"), st.sampled_from(KEYS), st.lists(st.booleans(), max_size=3)),
    ),
    min_size=1,
    max_size=12,
)


def _apply_shape_op(doc: pycrdt.Doc[Any], op: tuple[object, ...]) -> None:
    text = doc.get("text", type=pycrdt.Text)
    array = doc.get("array", type=pycrdt.Array)
    nested = doc.get("nested", type=pycrdt.Map)
    kind = op[0]
    if kind == "text_insert":
        at, s = op[1], op[2]
        assert isinstance(at, int) and isinstance(s, str)
        text.insert(min(at, len(text)), s)
    elif kind == "text_delete":
        at, n = op[1], op[2]
        assert isinstance(at, int) and isinstance(n, int)
        if len(text):
            start = min(at, len(text) - 1)
            del text[start : min(len(text), start + n)]
    elif kind == "array_append":
        values = op[2]
        assert isinstance(values, list)
        array.extend(values)
    elif kind == "array_delete":
        at, n = op[1], op[2]
        assert isinstance(at, int) and isinstance(n, int)
        if len(array):
            start = min(at, len(array) - 1)
            del array[start : min(len(array), start + n)]
    elif kind == "nested":
        key, values = op[1], op[2]
        assert isinstance(key, str) and isinstance(values, dict)
        nested[key] = pycrdt.Map(values)
    elif kind == "nested_array":
        key, values = op[1], op[2]
        assert isinstance(key, str) and isinstance(values, list)
        nested[key] = pycrdt.Array(values)


@given(client_id=st.integers(0, 2**53 - 1), ops=_shape_ops)
def test_text_array_and_nested_content_is_reported_as_other(
    client_id: int, ops: list[tuple[object, ...]]
) -> None:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(bytes(event.update)))
    for op in ops:
        with doc.transaction():
            _apply_shape_op(doc, op)
    for update in [*updates, bytes(doc.get_update())]:
        decoded = decode_update(update)
        assert decoded.inserts == [], "no text, array or nested struct may pass for a map insert"
        assert all(o.client == client_id and o.length >= 1 for o in decoded.others)
    state = decode_update(bytes(doc.get_update()))
    assert {c: end for c, (_, end) in state.ranges.items()} == decode_state_vector(bytes(doc.get_state()))


def test_each_other_shape_names_why() -> None:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=9)
    whys: dict[str, list[str]] = {}

    def record(name: str, change: Callable[[], None]) -> None:
        before = doc.get_state()
        change()
        whys[name] = [o.why for o in decode_update(bytes(doc.get_update(before))).others]

    text = doc.get("text", type=pycrdt.Text)
    array = doc.get("array", type=pycrdt.Array)
    outer = doc.get("outer", type=pycrdt.Map)
    record("text", lambda: text.insert(0, "hello"))
    record("text_append", lambda: text.insert(5, "!"))
    record("array_one", lambda: array.append(1))
    record("array_many", lambda: array.extend([2, 3]))
    record("nested_map", lambda: outer.__setitem__("inner", pycrdt.Map({"x": 1})))
    assert whys == {
        "text": ["text content"],
        "text_append": ["text content"],
        "array_one": ["item in a top-level sequence, not a map"],
        "array_many": ["2 values in one item"],
        "nested_map": ["nested shared type", "item inside a nested type"],
    }


def test_plain_values_in_a_top_level_map_are_inserts_with_the_engines_numbers() -> None:
    """Not bytes, so the validator refuses them as shape, but the reader reports them faithfully."""
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=3)
    m = doc.get("m", type=pycrdt.Map)
    m["n"] = 3
    m["s"] = "x"
    m["d"] = {"a": [1, True, None]}
    decoded = decode_update(bytes(doc.get_update()))
    values = {i.key: i.value for i in decoded.inserts}
    assert values == {"n": 3.0, "s": "x", "d": {"a": [1.0, True, None]}}
    assert decoded.others == []


# --- hostile bytes ---------------------------------------------------------------------------------


def _only_engine_error(call: Callable[[], object]) -> bool:
    """True if the call succeeded, False if it raised EngineError; anything else fails the test."""
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - proving that nothing else escapes
        assert type(exc) is EngineError, f"{type(exc).__name__}: {exc}"
        return False
    return True


@given(data=st.binary(max_size=800))
def test_arbitrary_bytes_raise_only_engine_error(data: bytes) -> None:
    _only_engine_error(lambda: decode_update(data))
    _only_engine_error(lambda: decode_state_vector(data))


def test_mutated_real_updates_raise_only_engine_error_and_never_claim_more_than_the_engine() -> None:
    """Seeded loop over mutated booking updates.

    Beyond "only EngineError": the reader is at least as strict as the engine (whatever it
    accepts, the engine applies, so validation never passes bytes the relay then fails to apply),
    and every insert it reports that the engine shows carries the value the engine shows.
    """
    history = _booking_history(World(), 12, seed=5)
    pool = [*history.updates, history.replica.encode_state()]
    rng = random.Random(77)
    count = max(2_000, MUTATION_COUNT // 5)
    decoded_ok = 0
    for n in range(count):
        what, mutated = _mutate(rng, pool)
        try:
            decoded = decode_update(mutated)
        except BaseException as exc:  # noqa: BLE001
            assert type(exc) is EngineError, f"case {n} ({what}): {type(exc).__name__}: {exc}"
            continue
        decoded_ok += 1
        replica = Replica()
        replica.apply_update(mutated)  # raises (and fails the test) if the reader was laxer
        live = [i for i in decoded.inserts if not _deleted(decoded, i.client, i.clock)]
        for ins in live:
            if isinstance(ins.value, bytes) and replica.get_bytes(ins.root, ins.key) not in (None, ins.value):
                # Two live inserts of one key (a corrupted client id, say): the engine picks one.
                assert any(o.key == ins.key and o.root == ins.root and o is not ins for o in live), (n, what)
    assert count // 20 < decoded_ok < count  # both outcomes are exercised


def _alloc_peak(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        _only_engine_error(call)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


_varuint = encode_varuint


HUGE = 2**52

#: Each is a well-formed prefix of an update or state vector whose next length or count is huge.
_HUGE_INPUTS = {
    "client blocks": _varuint(HUGE),
    "structs": b"\x01" + _varuint(HUGE) + b"\x01\x00",
    "root name": b"\x01\x01\x01\x00\x28\x01" + _varuint(HUGE) + b"m",
    "map key": b"\x01\x01\x01\x00\x28\x01\x01m" + _varuint(HUGE) + b"k",
    "binary value": b"\x01\x01\x01\x00\x23\x01\x01m\x01k" + _varuint(HUGE) + b"\x00" * 8,
    "any count": b"\x01\x01\x01\x00\x28\x01\x01m\x01k" + _varuint(HUGE),
    "any string": b"\x01\x01\x01\x00\x28\x01\x01m\x01k\x01\x77" + _varuint(HUGE),
    "any array": b"\x01\x01\x01\x00\x28\x01\x01m\x01k\x01\x75" + _varuint(HUGE),
    "any object": b"\x01\x01\x01\x00\x28\x01\x01m\x01k\x01\x76" + _varuint(HUGE),
    "any bytes": b"\x01\x01\x01\x00\x28\x01\x01m\x01k\x01\x74" + _varuint(HUGE),
    "json count": b"\x01\x01\x01\x00\x22\x01\x01m\x01k" + _varuint(HUGE),
    "delete clients": b"\x00" + _varuint(HUGE),
    "delete ranges": b"\x00\x01\x05" + _varuint(HUGE),
    "too long varuint": b"\xff" * 20,
}


@pytest.mark.parametrize("name", sorted(_HUGE_INPUTS))
def test_huge_declared_lengths_are_refused_without_allocating(name: str) -> None:
    data = _HUGE_INPUTS[name]
    peak = _alloc_peak(lambda: decode_update(data))
    assert not _only_engine_error(lambda: decode_update(data))
    assert peak < 64 * 1024, f"{name}: {peak} bytes allocated"


def test_huge_state_vector_count_is_refused_without_allocating() -> None:
    data = _varuint(HUGE) + b"\x01\x01"
    assert not _only_engine_error(lambda: decode_state_vector(data))
    assert _alloc_peak(lambda: decode_state_vector(data)) < 64 * 1024


def test_values_past_2_53_are_refused() -> None:
    assert not _only_engine_error(lambda: decode_state_vector(b"\x01" + _varuint(2**53) + b"\x00"))
    assert decode_state_vector(b"\x01" + _varuint(2**53 - 1) + b"\x00") == {2**53 - 1: 0}


def test_trailing_bytes_are_refused() -> None:
    r = Replica(1)
    update = r.write([("reservations", "k", b"v")])
    assert decode_update(update).inserts
    assert not _only_engine_error(lambda: decode_update(update + b"\x00"))
    assert not _only_engine_error(lambda: decode_state_vector(r.state_vector() + b"\x00"))


def test_floats_and_big_ints_in_any_values_decode_like_the_engine() -> None:
    """Tags 124 (float32), 123 (float64) and 122 (int64), hand-encoded as other Yjs writers do."""
    header = b"\x01\x01\x01\x00\x28\x01\x01m\x01k\x01"
    cases = {
        b"\x7c" + struct.pack(">f", 1.5): 1.5,
        b"\x7b" + struct.pack(">d", 0.1): 0.1,
        b"\x7a" + struct.pack(">q", -(2**40)): -(2**40),
        b"\x7d\x43": -3,
    }
    for body, expected in cases.items():
        update = header + body + b"\x00"
        (ins,) = decode_update(update).inserts
        assert ins.value == expected
        doc: pycrdt.Doc[Any] = pycrdt.Doc()
        doc.apply_update(update)
        assert doc.get("m", type=pycrdt.Map)["k"] == expected


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") == "dev", reason="the ci profile covers it")
def test_mutation_count_meets_the_floor() -> None:
    assert MUTATION_COUNT >= 10_000
