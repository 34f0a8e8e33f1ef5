"""The replica's clock cache and its self-encoded writes agree with the engine (crdt_core.engine).

Why: ``Replica.clocks`` is kept current from each change instead of parsing the engine's state
vector per update, and ``Replica.write`` encodes a write of new keys itself instead of asking the
engine through an observer (which made every transaction linear in the document's clients). Both
must give exactly what the engine would, or validation would misjudge clocks and peers would
receive other bytes than the engine holds.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings, strategies as st

from crdt_core.engine import Replica, parse_state_vector

ROOTS = st.sampled_from(["reservations", "certs", "stamps", "événements"])
ENTRY = st.tuples(ROOTS, st.text(min_size=1, max_size=6), st.binary(max_size=300))
STEP = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2), st.lists(ENTRY, min_size=1, max_size=3)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
)


def _observed(client_id: int) -> tuple[Replica, list[bytes]]:
    """A replica whose every transaction update is captured by an observer: the engine's bytes."""
    replica = Replica(client_id)
    seen: list[bytes] = []
    replica.observe(seen.append)
    return replica, seen


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=12))
def test_clocks_follow_every_change_and_writes_match_the_engine(steps: list[Any]) -> None:
    fast = [Replica(100 + i) for i in range(3)]
    for r in fast:
        r.clocks()  # the cache exists from the start: every change must keep it right
    engine = [_observed(100 + i) for i in range(3)]
    for step in steps:
        if step[0] == "write":
            _, who, entries = step
            ours = fast[who].write(entries)
            theirs_replica, seen = engine[who]
            seen.clear()
            theirs_replica.write(entries)
            assert ours == (seen[-1] if seen else ours)
        else:
            _, src, dst = step
            fast[dst].apply_update(fast[src].diff(fast[dst].state_vector()))
            engine[dst][0].apply_update(engine[src][0].diff(engine[dst][0].state_vector()))
        for r in fast:
            assert dict(r.clocks()) == parse_state_vector(r.state_vector())
    for ours, (theirs, _) in zip(fast, engine, strict=True):
        assert ours.to_py() == theirs.to_py()


def test_a_parked_update_drops_the_cache_instead_of_guessing() -> None:
    writer = Replica(7)
    first = writer.write([("reservations", "a", b"1")])
    second = writer.write([("reservations", "b", b"2")])
    reader = Replica(8)
    reader.clocks()
    reader.apply_update(second)  # its dependency has not arrived: the engine parks it
    assert dict(reader.clocks()) == parse_state_vector(reader.state_vector())
    assert not reader.covers(second)
    reader.apply_update(first)
    assert dict(reader.clocks()) == parse_state_vector(reader.state_vector()) == {7: 2}
    assert reader.covers(second) and reader.covers(first)


def test_state_clocks_is_a_snapshot_and_clocks_a_live_view() -> None:
    r = Replica(5)
    snapshot, view = r.state_clocks(), r.clocks()
    r.write([("reservations", "x", b"1")])
    assert snapshot == {} and dict(view) == {5: 1}


def test_a_loaded_state_holding_parked_structs_is_never_cached() -> None:
    writer = Replica(7)
    first = writer.write([("reservations", "a", b"1")])
    second = writer.write([("reservations", "b", b"2")])
    holder = Replica(8)
    holder.apply_update(second)  # parked; the whole state still carries it (a snapshot would)
    loaded = Replica(9)
    loaded.apply_update(holder.encode_state())  # applied before any cache existed
    assert dict(loaded.clocks()) == parse_state_vector(loaded.state_vector())
    loaded.apply_update(first)  # releases the parked struct
    assert dict(loaded.clocks()) == parse_state_vector(loaded.state_vector()) == {7: 2}


def test_updates_since_answers_only_while_it_knows_every_change() -> None:
    writer = Replica(7)
    r = Replica(8)
    r.clocks()
    mark = r.journal_mark()
    first = writer.write([("reservations", "a", b"1")])
    r.apply_update(first)
    own = r.write([("stamps", "s1", b"x")])
    assert r.updates_since(mark) == [first, own]
    assert r.updates_since(r.journal_mark()) == []
    later = writer.write([("reservations", "b", b"2")])
    gap = writer.write([("reservations", "c", b"3")])
    r.apply_update(gap)  # parked: the clock cache drops itself, so does the journal
    assert r.updates_since(mark) is None
    r.apply_update(later)
    assert r.updates_since(mark) is None
