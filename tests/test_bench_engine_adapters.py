"""Every engine adapter speaks the interface correctly, and the engine suite catches wrong engines.

Why: a benchmark of an engine that diverged must be reported as diverged, not as fast,
and a new adapter must be one file that the same checks cover. Each installed adapter is driven
through the whole interface on a small case and must converge; an adapter that is not installed
is skipped with the reason (the tests never install: ``QUICKSLOT_BENCH_NO_INSTALL``). The trace
replay's deadline must turn a slow engine into a ``timeout`` result, never a crash or a hang.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks import traces
from benchmarks.adapters import ADAPTERS, Patch, Unsupported, load_adapters
from benchmarks.adapters.pycrdt_adapter import PycrdtAdapter, PycrdtDoc
from benchmarks.harness import Progress, Result, RunConfig
from benchmarks.suites import engine
from tests.bench_tiny_traces import write_tiny_traces

QUIET = Progress(enabled=False)
TINY = RunConfig(scale="tiny", repeat=1)


@pytest.fixture(scope="module")
def tiny_traces(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    patch = pytest.MonkeyPatch()
    directory = write_tiny_traces(tmp_path_factory.mktemp("traces"), sequential=3_000)
    patch.setenv("QUICKSLOT_BENCH_DATA", str(directory))
    patch.setenv("QUICKSLOT_BENCH_NO_INSTALL", "1")
    yield directory
    patch.undo()


@pytest.fixture(scope="module")
def adapters(tiny_traces: Path) -> Iterator[dict[str, Any]]:
    found, _ = load_adapters()
    yield found
    for adapter in found.values():
        adapter.close()


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_converges_through_the_whole_interface(name: str, adapters: dict[str, Any]) -> None:
    if name not in adapters:
        _, missing = load_adapters([name])
        pytest.skip(f"{name} unavailable: {missing.get(name)}")
    a = adapters[name]
    assert a.version() and a.notes
    left, right = a.new_doc(1), a.new_doc(2)
    u1 = a.write(left, [("m", "k1", b"\x00\x01binary"), ("m", "k2", b"two")])
    u2 = a.write(right, [("m", "k3", b"three")])
    assert u1 and u2
    sv_left = a.state_vector(left)
    a.apply(left, a.diff(right, sv_left))
    a.apply(right, a.diff(left, a.state_vector(right)))
    want = {"k1": b"\x00\x01binary", "k2": b"two", "k3": b"three"}
    assert a.read(left, "m") == a.read(right, "m") == want
    fresh = a.new_doc(3)
    a.apply_many(fresh, a.write_many(a.new_doc(4), [[("m", "a", b"1")], [("m", "b", b"2")]]))
    assert a.read(fresh, "m") == {"a": b"1", "b": b"2"}
    whole = a.new_doc(5)
    a.apply(whole, a.encode_state(left))
    assert a.read(whole, "m") == want
    try:
        merged = a.merge([u1, u2])
    except Unsupported:
        pass
    else:
        check = a.new_doc(6)
        a.apply(check, merged)
        assert a.read(check, "m") == want
    if not a.supports_text:
        with pytest.raises(Unsupported):
            a.insert_text(a.new_doc(7), "t", 0, "x")
        return
    doc = a.new_doc(8)
    updates = [a.insert_text(doc, "t", 0, "hello"), a.delete_text(doc, "t", 1, 3)]
    updates += a.edit_many(doc, "t", [[(1, 0, "ey"), (0, 1, "H")]], True)
    assert a.text(doc, "t") == "Heyo"
    replica = a.new_doc(9)
    a.apply_many(replica, updates)
    assert a.text(replica, "t") == "Heyo"
    assert a.clock() >= 0


class _DroppingText(PycrdtAdapter):
    """Fast and wrong: loses every 50th keystroke. The suite must call it diverged, not fast."""

    name = "dropping"

    def edit_many(
        self, doc: PycrdtDoc, root: str, transactions: Sequence[Sequence[Patch]], keep_updates: bool = True
    ) -> list[bytes]:
        kept = [t for i, t in enumerate(transactions) if i % 50 != 49]
        return super().edit_many(doc, root, kept, keep_updates)


def test_a_text_engine_that_loses_edits_is_diverged() -> None:
    built = engine.workloads({"dropping": _DroppingText()})
    workload = next(w for w in built if w.name == "b1_random_insert")
    results = workload.run(200, TINY, QUIET)
    assert [(r.subject, r.status) for r in results] == [("dropping", "diverged")]
    assert results[0].samples == [] and "plain replay" in results[0].note


def test_trace_prefixes_are_proved_by_a_plain_replay(tiny_traces: Path) -> None:
    trace = traces.load("automerge-paper")
    assert len(trace) == 3_000
    assert traces.expected_text("automerge-paper", 10**9) == trace.end_content
    agents, steps = traces.schedule("clownschool", 10**9)
    assert agents == 2 and len(steps) % 3 == 0
    texts = traces.replay_concurrent(PycrdtAdapter(), "t", agents, steps, traces.load("clownschool").txns, 10)
    assert texts == [traces.load("clownschool").end_content] * agents


def test_a_replay_past_its_deadline_is_a_timeout_result(
    tiny_traces: Path, adapters: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    subset = {"pycrdt": adapters["pycrdt"]}
    workload = next(w for w in engine.workloads(subset) if w.name == "b4_automerge_trace")
    assert isinstance(workload, engine.TraceReplay)
    try:
        # Far below what replaying 3,000 edits takes: the worker is killed mid-replay.
        monkeypatch.setitem(engine.TRACE_DEADLINE_S, "tiny", 0.001)
        first = workload.run(3_000, TINY, QUIET)
        again = workload.run(3_000, TINY, QUIET)
    finally:
        workload.close()
    assert [(r.subject, r.status) for r in first] == [("pycrdt", "timeout")]
    assert first[0].samples == [] and "killed after" in first[0].note
    # Larger sizes do not retry a subject that already ran out of time; they say why.
    assert [(r.subject, r.status) for r in again] == [("pycrdt", "timeout")]
    assert again[0].note.startswith("skipped: timed out at n=3,000")


def test_concurrent_prefixes_without_a_reference_are_cross_checked() -> None:
    def ok(subject: str, sha: str) -> Result:
        r = Result("b3_trace_concurrent", subject, subject, 10, "time", "s/op", "edit", 10, [1.0])
        r.extra["sha256"] = sha
        return r

    results = [ok("a", "x"), ok("b", "x"), ok("c", "y")]
    engine.TraceReplay._cross_check(results)
    assert [r.status for r in results] == ["ok", "ok", "diverged"]
