"""The hybrid logical clock: monotonic, causal, skew-refusing, and sortable as a string."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from crdt_core.errors import ClockSkewError, SchemaError
from crdt_core.hlc import HybridClock, Timestamp

NOW = 1_800_000_000_000
SKEW = 60_000

nodes = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
timestamps = st.builds(
    Timestamp,
    wall_ms=st.integers(0, 10**13 - 1),
    counter=st.integers(0, 999_999),
    node=nodes,
)


class FakeClock:
    """A physical clock the test moves by hand, backwards included."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


# An action on a clock: move physical time by a (possibly negative) delta, then either read now()
# or observe a remote stamp at some offset from physical time (never beyond the allowed skew).
actions = st.lists(
    st.tuples(
        st.integers(-3_600_000, 3_600_000),
        st.one_of(
            st.just(None),
            st.tuples(st.integers(-3_600_000, SKEW), st.integers(0, 999_999), nodes),
        ),
    ),
    min_size=1,
    max_size=60,
)


@given(actions)
def test_stamps_strictly_increase_even_when_the_physical_clock_goes_backwards(
    steps: list[tuple[int, tuple[int, int, str] | None]],
) -> None:
    phys = FakeClock(NOW)
    clock = HybridClock("me", physical_ms=phys, max_skew_ms=SKEW)
    issued = [clock.now()]
    highest_input = NOW
    for delta, remote in steps:
        phys.ms = max(0, phys.ms + delta)
        highest_input = max(highest_input, phys.ms)
        if remote is None:
            stamp = clock.now()
        else:
            offset, counter, node = remote
            other = Timestamp(max(0, phys.ms + offset), counter, node)
            highest_input = max(highest_input, other.wall_ms)
            stamp = clock.observe(other)
        assert stamp > issued[-1]
        assert stamp.encode() > issued[-1].encode()
        assert stamp.node == "me"
        # close to physical time: never behind the current reading, never ahead of what it was shown
        # (one extra millisecond only when a counter overflows)
        assert phys.ms <= stamp.wall_ms <= highest_input + 1
        issued.append(stamp)


@given(
    local_ms=st.integers(NOW - 3_600_000, NOW + 3_600_000),
    remote=st.tuples(st.integers(NOW - 3_600_000, NOW + SKEW), st.integers(0, 999_998), nodes),
    physical_later=st.integers(-3_600_000, 3_600_000),
)
def test_observe_merges_so_the_next_local_stamp_is_after_the_remote(
    local_ms: int, remote: tuple[int, int, str], physical_later: int
) -> None:
    phys = FakeClock(NOW)
    clock = HybridClock("me", physical_ms=phys, max_skew_ms=SKEW)
    phys.ms = local_ms
    clock.now()
    phys.ms = NOW
    other = Timestamp(*remote)
    merged = clock.observe(other)
    assert (merged.wall_ms, merged.counter) > (other.wall_ms, other.counter)
    phys.ms = NOW + physical_later
    after = clock.now()
    assert (after.wall_ms, after.counter) > (other.wall_ms, other.counter)
    assert after > merged


def test_observe_accepts_a_remote_string_form() -> None:
    clock = HybridClock("me", physical_ms=lambda: NOW)
    merged = clock.observe(f"{NOW + 5_000:013d}-000007-peer")
    assert (merged.wall_ms, merged.counter) == (NOW + 5_000, 8)


@given(ahead=st.integers(SKEW + 1, 10**12))
def test_a_remote_stamp_beyond_the_skew_is_refused_and_leaves_the_clock_alone(ahead: int) -> None:
    clock = HybridClock("me", physical_ms=lambda: NOW, max_skew_ms=SKEW)
    before = clock.now()
    with pytest.raises(ClockSkewError):
        clock.observe(Timestamp(NOW + ahead, 0, "liar"))
    assert clock.last == before
    assert clock.now() == Timestamp(NOW, before.counter + 1, "me")


def test_a_remote_stamp_exactly_at_the_skew_limit_is_adopted() -> None:
    clock = HybridClock("me", physical_ms=lambda: NOW, max_skew_ms=SKEW)
    assert clock.observe(Timestamp(NOW + SKEW, 3, "peer")) == Timestamp(NOW + SKEW, 4, "me")


def test_counter_overflow_moves_to_the_next_millisecond() -> None:
    clock = HybridClock("me", physical_ms=lambda: NOW, last=Timestamp(NOW, 999_999, "me"))
    assert clock.now() == Timestamp(NOW + 1, 0, "me")


def test_clock_restored_from_its_last_stamp_continues_after_it() -> None:
    last = Timestamp(NOW + 10_000, 42, "me")
    clock = HybridClock("me", physical_ms=lambda: NOW, last=last)
    assert clock.now() > last


@given(timestamps, timestamps)
def test_string_order_equals_timestamp_order(a: Timestamp, b: Timestamp) -> None:
    assert (a < b) == (a.encode() < b.encode())
    assert (a == b) == (a.encode() == b.encode())


@given(timestamps)
def test_encode_parse_round_trip(ts: Timestamp) -> None:
    assert Timestamp.parse(ts.encode()) == ts
    assert str(ts) == ts.encode()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1800000000000-000000-",  # no node
        "180000000000-000000-a",  # 12-digit wall
        "18000000000000-000000-a",  # 14-digit wall
        "1800000000000-00000-a",  # 5-digit counter
        "1800000000000-0000000-a",  # 7-digit counter
        "1800000000000-000000-a b",  # space in node
        "1800000000000-000000-a.b",
        "1800000000000-000000-a\n",  # trailing newline
        " 1800000000000-000000-a",
        "+800000000000-000000-a",
        "1800000000000_000000-a",
        "1800000000000-000000-" + "n" * 65,  # node too long
        # Non-ASCII decimal digits: int() reads them, but they break "string order = time order".
        "\u0661" * 13 + "-000000-a",
        "1800000000000-" + "\u0660" * 6 + "-a",
        "\uff11" * 13 + "-000000-a",
        "1800000000000-000000-\u00e9",
    ],
)
def test_parse_is_strict(text: str) -> None:
    with pytest.raises(SchemaError):
        Timestamp.parse(text)


@pytest.mark.parametrize("value", [None, 1800000000000, b"1800000000000-000000-a"])
def test_parse_refuses_non_strings(value: object) -> None:
    with pytest.raises(SchemaError):
        Timestamp.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("wall", "counter", "node"),
    [(-1, 0, "a"), (10**13, 0, "a"), (0, -1, "a"), (0, 1_000_000, "a"), (0, 0, ""), (0, 0, "a:b")],
)
def test_timestamp_bounds(wall: int, counter: int, node: str) -> None:
    with pytest.raises(SchemaError):
        Timestamp(wall, counter, node)


def test_a_clock_refuses_a_malformed_node_id() -> None:
    with pytest.raises(SchemaError):
        HybridClock("not a node")
