"""The ``engine`` suite: every engine through one adapter interface, on text and on booking maps.

Why two kinds of workload. The standard shapes of dmonad/crdt-benchmarks (B1 one client's edits,
B2 two clients' concurrent edits merged, B3 many clients, B4 a real editing trace) make our
numbers comparable with the published ones and show each engine's text performance, where the
Yrs engines' cost grows superlinearly; the map-heavy workloads (local writes of signed records,
two-replica merge, incremental diff, catching up on single updates) are what QuickSlot actually
does on every booking. crdt_core has no text type, so it appears in the map and B3-map workloads
only and the text workloads report it ``unsupported``.

Every timed run's output is checked (untimed) and an engine whose result is wrong is reported as
``diverged``. Time limits: an in-process run that takes longer than the scale's limit stops that
subject's sampling, and larger sizes skip it (``timeout``); trace replays run in a worker process
per engine (``benchmarks.trace_worker``) that is killed at the deadline, so even a replay that
would take an hour costs only the limit. Baseline: raw pycrdt throughout (the engine QuickSlot
ships); ratios against y-py, loro and Yjs are in the same tables.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from benchmarks import traces
from benchmarks.adapters import BaseAdapter, EngineAdapter, Patch
from benchmarks.fixtures import Corpus, corpus
from benchmarks.harness import (
    DIVERGED,
    ERROR,
    OK,
    UNSUPPORTED,
    Diverged,
    Progress,
    Result,
    RunConfig,
    Scale,
    Target,
    TimedOut,
    Trial,
    Workload,
    run_trials,
)
from benchmarks.suites.common import Adapters, LimitTracker, check_doc, diff_maps, sizes_for
from crdt_core.engine import Replica

__all__ = [
    "TARGETS",
    "ApplyUpdates",
    "ConcurrentMerge",
    "IncrementalDiff",
    "LocalWrites",
    "TraceReplay",
    "suite_description",
    "workloads",
]

suite_description = (
    "engines through one adapter interface (crdt_core, raw pycrdt, y-py, loro, Yjs on Node): "
    "crdt-benchmarks B1-B4 on text, with real traces, and booking-shaped map workloads"
)

TARGETS = (
    Target(
        "crdt_core writes within 1.3x of raw pycrdt (pre-signed records, 10,000 reservations)",
        "local_writes",
        "crdt_core",
        10_000,
        "ratio",
        1.3,
        1.0,
        "x",
    ),
)

TEXT = "text"
LIMIT_S = {"tiny": 10.0, "quick": 10.0, "full": 30.0}
"""One in-process run longer than this stops the subject (and skips it at larger sizes)."""
BUDGET_S = {"tiny": 5.0, "quick": 15.0, "full": 60.0}
"""A subject's runs at one size adding up to more than this stop sampling early."""
TRACE_DEADLINE_S = {"tiny": 60.0, "quick": 60.0, "full": 600.0}
"""A trace replay not finished by then is killed and reported as ``timeout``."""


def _trials(
    trials: list[Trial], config: RunConfig, progress: Progress, limits: LimitTracker, warmup: int = 1
) -> list[Result]:
    """Run trials with the scale's limits; subjects stopped at a smaller size are skipped."""
    runnable = [t for t in trials if limits.skip(t.result.subject) is None]
    skipped = [limits.skipped_result(t.result) for t in trials if limits.skip(t.result.subject) is not None]
    results = run_trials(
        runnable,
        config.repeat,
        progress,
        warmup=warmup,
        limit_s=LIMIT_S[config.scale],
        budget_s=BUDGET_S[config.scale],
    )
    limits.record(results)
    for r in skipped:
        progress.result(r)
    order = {id(t.result): i for i, t in enumerate(trials)}
    return sorted(results + skipped, key=lambda r: order[id(r)])


def _unsupported_text(workload: str, adapter: EngineAdapter[Any], size: int, op: str) -> Result:
    return Result(
        workload, adapter.name, adapter.name, size, "time", "s/op", op, size, [], UNSUPPORTED,
        f"{adapter.name} has no text type",
    )  # fmt: skip


# === map workloads (booking-shaped) ===============================================================


@dataclass
class LocalWrites:
    """A client writes N reservations, one transaction each, and keeps each transaction's update."""

    adapters: Adapters
    name: str = "local_writes"
    title: str = "Local writes: N reservations, one transaction each"
    description: str = (
        "Each engine writes the same pre-signed reservation records (plus each device's certificate "
        "with its first booking), one transaction per booking, keeping every transaction's update as a "
        "client queues it for sync. `crdt_core` is the engine wrapper writing pre-signed bytes (the "
        "1.3x target); `crdt_core typed (null signer)` is the full typed API (`Author.book`: HLC, record, "
        "msgpack, certificate check, write) with a signer that returns zero bytes instead of Ed25519; "
        "`crdt_core typed (signed)` is the same with real Ed25519 signing. y-py stores values as base64 "
        "text (it cannot write binary); loro's updates are its own format; Yjs runs the loop in Node."
    )
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [20, 60], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials = [self._engine(adapter, c, size) for adapter in self.adapters.values()]
        if "crdt_core" in self.adapters:
            trials += [self._typed(c, size, sign=False), self._typed(c, size, sign=True)]
        return _trials(trials, config, progress, self.limits)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "write", size)
        txs = c.transactions
        check_contents = check_doc(adapter, c.expected)

        def setup() -> Any:
            return adapter.new_doc(1)

        def run(doc: Any) -> tuple[Any, list[bytes]]:
            return doc, adapter.write_many(doc, txs)

        def check(state: tuple[Any, list[bytes]]) -> None:
            doc, updates = state
            check_contents(doc)
            replay = adapter.new_doc(2)
            adapter.apply_many(replay, updates)
            check_contents(replay)  # the updates handed to sync carry exactly what was written
            result.extra["update_bytes_per_write"] = sum(map(len, updates)) / len(updates)

        return Trial(result, setup, run, check, size, adapter.clock)

    def _typed(self, c: Corpus, size: int, *, sign: bool) -> Trial:
        from crdt_core.records import open_record

        label = "crdt_core typed (signed)" if sign else "crdt_core typed (null signer)"
        result = Result(self.name, label, "crdt_core", size, "time", "s/op", "write", size)

        def setup() -> tuple[Replica, list[Any]]:
            return Replica(1), c.authors(sign=sign)

        def run(state: tuple[Replica, list[Any]]) -> Replica:
            replica, authors = state
            c.book_all(replica, authors)
            return replica

        def check(replica: Replica) -> None:
            got = replica.to_py()
            if sign:
                diff_maps(label, got, c.expected)
                return
            # Zero signatures: same keys, same certificates, same signed fields.
            if {r: set(m) for r, m in got.items()} != {r: set(m) for r, m in c.expected.items()}:
                raise Diverged(f"{label}: different keys than the pre-signed records")
            for root, entries in got.items():
                for key, raw in entries.items():
                    want = c.expected[root][key]
                    if root == "certs":
                        same = raw == want
                    else:
                        same = open_record(raw).fields_raw == open_record(want).fields_raw
                    if not same:
                        raise Diverged(f"{label}: {root}/{key} differs from the pre-signed record")

        return Trial(result, setup, run, check, size)


@dataclass
class ConcurrentMerge:
    adapters: Adapters
    name: str = "concurrent_merge"
    title: str = "Two-replica concurrent merge: N reservations split across two offline replicas"
    description: str = (
        "Two replicas each write half of the day's reservations offline (alternate bookings), then "
        "sync both ways the Yjs way: each sends its state vector, the other answers with the diff, "
        "both apply. Timed: the whole exchange. Checked: both replicas hold every record."
    )
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [60], [1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials = [self._engine(a, c, size) for a in self.adapters.values()]
        return _trials(trials, config, progress, self.limits)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "sync", 1)
        left, right = adapter.new_doc(11), adapter.new_doc(12)
        adapter.write_many(left, c.transactions[0::2])
        adapter.write_many(right, c.transactions[1::2])
        left_state, right_state = adapter.encode_state(left), adapter.encode_state(right)
        check_contents = check_doc(adapter, c.expected)

        def setup() -> tuple[Any, Any]:
            a, b = adapter.new_doc(11), adapter.new_doc(12)
            adapter.apply(a, left_state)
            adapter.apply(b, right_state)
            return a, b

        def run(docs: tuple[Any, Any]) -> tuple[Any, Any, int]:
            a, b = docs
            sv_a, sv_b = adapter.state_vector(a), adapter.state_vector(b)
            to_a, to_b = adapter.diff(b, sv_a), adapter.diff(a, sv_b)
            adapter.apply(a, to_a)
            adapter.apply(b, to_b)
            return a, b, len(to_a) + len(to_b)

        def check(out: tuple[Any, Any, int]) -> None:
            a, b, wire = out
            check_contents(a)
            check_contents(b)
            result.extra["exchange_bytes"] = wire

        return Trial(result, setup, run, check, 1, adapter.clock)


@dataclass
class IncrementalDiff:
    adapters: Adapters
    name: str = "incremental_diff"
    title: str = "Incremental diff against a state vector (peer lacks the last 1%)"
    description: str = (
        "A document of N reservations answers a peer that holds all but the last 1% (at least 10) "
        "with the diff against the peer's state vector: what the relay does on every catch-up. "
        "Timed: one diff. Checked: the diff brings the peer exactly up to date."
    )
    baseline: str | None = "pycrdt"
    inner: int = 100
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [60], [1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials = [self._engine(a, c, size) for a in self.adapters.values()]
        return _trials(trials, config, progress, self.limits)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        inner = self.inner
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "diff", inner)
        lag = max(10, size // 100)
        leader = adapter.new_doc(1)
        adapter.write_many(leader, c.transactions[: size - lag])
        peer_state = adapter.encode_state(leader)
        adapter.write_many(leader, c.transactions[size - lag :])
        peer = adapter.new_doc(5)
        adapter.apply(peer, peer_state)
        peer_sv = adapter.state_vector(peer)
        check_contents = check_doc(adapter, c.expected)

        def run(_: None) -> bytes:
            diff = adapter.diff
            out = b""
            for _i in range(inner):
                out = diff(leader, peer_sv)
            return out

        def check(delta: bytes) -> None:
            fresh = adapter.new_doc(6)
            adapter.apply(fresh, peer_state)
            adapter.apply(fresh, delta)
            check_contents(fresh)
            result.extra["diff_bytes"] = len(delta)
            result.extra["state_bytes"] = len(adapter.encode_state(leader))
            result.extra["lagging_reservations"] = lag

        return Trial(result, lambda: None, run, check, inner, adapter.clock)


@dataclass
class ApplyUpdates:
    adapters: Adapters
    name: str = "apply_updates"
    title: str = "Catching up on N single updates: one by one vs merged vs folded"
    description: str = (
        "A replica receives the N single-booking updates of a day. `one-by-one` applies each; "
        "`merged` merges them with the engine's `merge_updates` and applies the result (docs/design.md: "
        "quadratic in N for the Yrs engines); `fold` applies them to a scratch document and applies "
        "its encoded state (what crdt_core's `fold_updates` does); `batch` (loro only) hands them all "
        "to the engine's batch import. Time per update; checked: same contents."
    )
    baseline: str | None = "pycrdt one-by-one"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [50], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials: list[Trial] = []
        splits: dict[str, list[float]] = {}
        for adapter in self.adapters.values():
            source = adapter.new_doc(1)
            updates = adapter.write_many(source, c.transactions)
            modes = ["one-by-one", "merged", "fold"]
            own_batch: Any = type(adapter).apply_batch
            if own_batch is not BaseAdapter.apply_batch:
                modes.append("batch")  # the engine has a batch import of its own (loro)
            for mode in modes:
                split = splits.setdefault(f"{adapter.name} {mode}", [])
                trials.append(self._mode(adapter, mode, updates, c, size, split))
        results = _trials(trials, config, progress, self.limits)
        for result in results:
            split = splits[result.subject]
            if split and result.status == OK:
                result.extra["merge_seconds"] = split[-len(result.samples) :]
        return results

    def _mode(
        self,
        adapter: EngineAdapter[Any],
        mode: str,
        updates: list[bytes],
        c: Corpus,
        size: int,
        split: list[float],
    ) -> Trial:
        subject = f"{adapter.name} {mode}"
        result = Result(self.name, subject, adapter.name, size, "time", "s/op", "update", size)
        check_contents = check_doc(adapter, c.expected)
        clock = adapter.clock

        def one_by_one(doc: Any) -> Any:
            adapter.apply_many(doc, updates)
            return doc

        def merged(doc: Any) -> Any:
            t0 = clock()
            combined = adapter.merge(updates)
            split.append(clock() - t0)  # reported beside the total
            adapter.apply(doc, combined)
            return doc

        def fold(doc: Any) -> Any:
            scratch = adapter.new_doc(3)
            adapter.apply_many(scratch, updates)
            adapter.apply(doc, adapter.encode_state(scratch))
            return doc

        def batch(doc: Any) -> Any:
            adapter.apply_batch(doc, updates)
            return doc

        run = {"one-by-one": one_by_one, "merged": merged, "fold": fold, "batch": batch}[mode]
        return Trial(result, lambda: adapter.new_doc(2), run, check_contents, size, clock)


# === B1-B3: text and many clients (dmonad/crdt-benchmarks shapes) =================================

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


def _append_ops(n: int) -> tuple[list[list[Patch]], str]:
    txs = [[(i, 0, ALPHABET[i % 26])] for i in range(n)]
    return txs, "".join(ALPHABET[i % 26] for i in range(n))


def _random_ops(n: int, seed: int, char: str | None = None) -> tuple[list[list[Patch]], str]:
    """N one-character inserts at seeded random positions, and the text they must produce."""
    rng = random.Random(seed)
    chars: list[str] = []
    txs: list[list[Patch]] = []
    for i in range(n):
        pos = rng.randint(0, i)
        ch = char or ALPHABET[i % 26]
        chars.insert(pos, ch)
        txs.append([(pos, 0, ch)])
    return txs, "".join(chars)


@dataclass
class TextEdits:
    """B1: one client's edits, one transaction (and one update) per keystroke."""

    adapters: Adapters
    name: str
    title: str
    description: str
    shape: str
    sizes_by_scale: dict[str, list[int]]
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return self.sizes_by_scale[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        txs, expected = _append_ops(size) if self.shape == "append" else _random_ops(size, seed=size)
        trials: list[Trial] = []
        results: list[Result] = []
        for adapter in self.adapters.values():
            if not adapter.supports_text:
                results.append(_unsupported_text(self.name, adapter, size, "edit"))
                continue
            trials.append(self._engine(adapter, txs, expected, size))
        return _trials(trials, config, progress, self.limits) + results

    def _engine(self, adapter: EngineAdapter[Any], txs: list[list[Patch]], expected: str, size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "edit", size)

        def run(doc: Any) -> tuple[Any, list[bytes]]:
            return doc, adapter.edit_many(doc, TEXT, txs, True)

        def check(out: tuple[Any, list[bytes]]) -> None:
            doc, updates = out
            got = adapter.text(doc, TEXT)
            if got != expected:
                raise Diverged(f"{adapter.name}: text differs from the plain replay ({len(got)} chars)")
            replay = adapter.new_doc(2)
            adapter.apply_many(replay, updates)
            if adapter.text(replay, TEXT) != expected:
                raise Diverged(f"{adapter.name}: replaying the edits' updates gives another text")
            result.extra["update_bytes_per_edit"] = sum(map(len, updates)) / len(updates)
            result.extra["doc_bytes"] = len(adapter.encode_state(doc))

        return Trial(result, lambda: adapter.new_doc(1), run, check, size, adapter.clock)


@dataclass
class ConcurrentText:
    """B2: two clients insert concurrently at random positions, then sync both ways."""

    adapters: Adapters
    name: str = "b2_concurrent_text"
    title: str = "B2: two clients insert N characters concurrently, then sync"
    description: str = (
        "crdt-benchmarks B2.2: two clients, offline, each insert N/2 characters at seeded random "
        "positions of the same (empty) text, one transaction per character; then they sync the Yjs "
        "way (state vectors, diffs, apply; loro: version vectors and exports). Timed: both clients' "
        "edits and the sync; the sync alone is in the notes. Checked: both texts are equal and hold "
        "every character of both clients, each client's in its own order."
    )
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [200], [1_000, 4_000], [1_000, 4_000, 12_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        half = size // 2
        ops_a, _ = _random_ops(half, seed=size, char="a")
        ops_b, _ = _random_ops(half, seed=size + 1, char="b")
        trials: list[Trial] = []
        results: list[Result] = []
        splits: dict[str, list[float]] = {}
        for adapter in self.adapters.values():
            if not adapter.supports_text:
                results.append(_unsupported_text(self.name, adapter, size, "edit"))
                continue
            split = splits.setdefault(adapter.name, [])
            trials.append(self._engine(adapter, ops_a, ops_b, size, split))
        done = _trials(trials, config, progress, self.limits)
        for r in done:
            if r.status == OK and r.samples:
                r.extra["sync_seconds"] = splits[r.subject][-len(r.samples) :]
        return done + results

    def _engine(
        self,
        adapter: EngineAdapter[Any],
        ops_a: list[list[Patch]],
        ops_b: list[list[Patch]],
        size: int,
        sync_seconds: list[float],
    ) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "edit", size)
        clock = adapter.clock

        def run(docs: tuple[Any, Any]) -> tuple[Any, Any]:
            a, b = docs
            adapter.edit_many(a, TEXT, ops_a, False)
            adapter.edit_many(b, TEXT, ops_b, False)
            t0 = clock()
            sv_a, sv_b = adapter.state_vector(a), adapter.state_vector(b)
            to_a, to_b = adapter.diff(b, sv_a), adapter.diff(a, sv_b)
            adapter.apply(a, to_a)
            adapter.apply(b, to_b)
            sync_seconds.append(clock() - t0)
            return a, b

        def check(docs: tuple[Any, Any]) -> None:
            text_a, text_b = adapter.text(docs[0], TEXT), adapter.text(docs[1], TEXT)
            if text_a != text_b:
                raise Diverged(f"{adapter.name}: the two replicas hold different texts after syncing")
            if text_a.count("a") != len(ops_a) or text_a.count("b") != len(ops_b):
                raise Diverged(f"{adapter.name}: characters lost or duplicated in the merge")
            result.extra["doc_bytes"] = len(adapter.encode_state(docs[0]))

        return Trial(result, lambda: (adapter.new_doc(1), adapter.new_doc(2)), run, check, size, clock)


@dataclass
class ManyClients:
    """B3: K clients each make one concurrent edit; one replica receives all K updates."""

    adapters: Adapters
    name: str
    title: str
    description: str
    kind: str
    """``map`` (every client sets the same contended key and one of its own) or ``text``."""
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        # 1,600 is about crdt-benchmarks' 20·√6000; K single-client documents each cost an IPC
        # round trip for Yjs, so the sweep stops there.
        return sizes_for(scale, [10], [100, 400], [100, 400, 1_600])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        trials: list[Trial] = []
        results: list[Result] = []
        for adapter in self.adapters.values():
            if self.kind == "text" and not adapter.supports_text:
                results.append(_unsupported_text(self.name, adapter, size, "client"))
                continue
            trials.append(self._engine(adapter, size))
        return _trials(trials, config, progress, self.limits) + results

    def _engine(self, adapter: EngineAdapter[Any], size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "client", size)
        values = [i.to_bytes(4, "big") * 4 for i in range(size)]
        words = [f"w{i} " for i in range(size)]
        kind = self.kind

        def run(_: None) -> tuple[Any, list[bytes]]:
            updates: list[bytes] = []
            for i in range(size):
                doc = adapter.new_doc(1_000 + i)
                if kind == "map":
                    entries = [("m", "contended", values[i]), ("m", f"c{i}", values[i])]
                    updates.append(adapter.write(doc, entries))
                else:
                    updates.append(adapter.insert_text(doc, TEXT, 0, words[i]))
            receiver = adapter.new_doc(1)
            adapter.apply_batch(receiver, updates)
            return receiver, updates

        def check(out: tuple[Any, list[bytes]]) -> None:
            receiver, updates = out
            other = adapter.new_doc(2)
            # The engine's own batch import here too: one-by-one in loro is quadratic in K and
            # would make this untimed check cost minutes at K = 1,600.
            adapter.apply_batch(other, updates[::-1])
            if kind == "map":
                got, again = adapter.read(receiver, "m"), adapter.read(other, "m")
                if got != again:
                    raise Diverged(f"{adapter.name}: two receivers disagree after different orders")
                if len(got) != size + 1 or got.get("contended") not in values:
                    raise Diverged(f"{adapter.name}: {len(got)} entries, want {size + 1}")
            else:
                got_t, again_t = adapter.text(receiver, TEXT), adapter.text(other, TEXT)
                if got_t != again_t:
                    raise Diverged(f"{adapter.name}: two receivers disagree after different orders")
                if sorted(got_t.split()) != sorted(w.strip() for w in words):
                    raise Diverged(f"{adapter.name}: words lost or duplicated")
            result.extra["update_bytes_per_client"] = sum(map(len, updates)) / len(updates)

        return Trial(result, lambda: None, run, check, size, adapter.clock)


# === B4 and the concurrent trace: replays in worker processes, with deadlines =====================


class _Worker:
    """One ``benchmarks.trace_worker`` process, in a session of its own so it can be killed whole."""

    def __init__(self, engine: str, trace_names: Sequence[str]) -> None:
        self.engine = engine
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.trace_worker", engine, *trace_names],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.ready = False

    def wait_ready(self) -> None:
        """Wait until the worker has loaded its engine and the trace (workers start in parallel)."""
        if self.ready:
            return
        ready = self._read(300.0)
        if "ready" not in ready:
            self.kill()
            raise RuntimeError(f"trace worker for {self.engine}: {ready.get('error', ready)}")
        self.ready = True

    def _read(self, timeout: float) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise TimedOut(f"killed after {timeout:g} s")
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"trace worker for {self.engine} exited ({self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        self.wait_ready()
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(body) + "\n")
        stdin.flush()
        return self._read(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _WorkerPool:
    """One worker per engine, shared by the trace workloads: each worker start costs seconds.

    Each workload that uses the pool ``join``s it and ``leave``s it from its ``close``; the
    workers end when the last one leaves (the runner closes each workload after its sizes).
    """

    def __init__(self, trace_names: Sequence[str]) -> None:
        self.trace_names = list(trace_names)
        self.workers: dict[str, _Worker] = {}
        self.users = 0

    def get(self, engine: str) -> _Worker:
        worker = self.workers.get(engine)
        if worker is None or not worker.alive():
            worker = self.workers[engine] = _Worker(engine, self.trace_names)
        return worker

    def discard(self, engine: str) -> None:
        self.workers.pop(engine, None)

    def leave(self) -> None:
        self.users -= 1
        if self.users <= 0:
            for worker in self.workers.values():
                worker.close()
            self.workers.clear()


class _ReportedClock:
    """A clock that advances by what the worker reports, so ``run_trials`` times the replay alone."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class TraceReplay:
    """B4 (a sequential trace) or B3-trace (a concurrent one): replay a prefix, prove the content."""

    adapters: Adapters
    name: str
    title: str
    description: str
    trace: str
    sizes_by_scale: dict[str, list[int]]
    baseline: str | None = "pycrdt"
    limits: LimitTracker = field(default_factory=LimitTracker)
    pool: _WorkerPool | None = None
    warmed: set[str] = field(default_factory=set)
    attribution: str = traces.ATTRIBUTION

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = _WorkerPool([self.trace])
        self.pool.users += 1

    def sizes(self, scale: Scale) -> list[int]:
        try:
            length = len(traces.load(self.trace))
        except FileNotFoundError:
            return self.sizes_by_scale[scale]
        return sorted({min(n, length) for n in self.sizes_by_scale[scale]})

    def close(self) -> None:
        if self.pool is not None:
            self.pool.leave()
            self.pool = None

    def _worker(self, engine: str) -> _Worker:
        if self.pool is None:  # closed, then run again (the tests do): a pool of its own
            self.pool = _WorkerPool([self.trace])
            self.pool.users = 1
        return self.pool.get(engine)

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        try:
            trace = traces.load(self.trace)
        except FileNotFoundError as exc:
            return [
                Result(self.name, "(trace)", "-", size, "time", "s/op", "edit", size, [], ERROR,
                       f"trace data missing: {exc}")
            ]  # fmt: skip
        n = min(size, len(trace))
        full = n == len(trace)
        expected: tuple[str, int] | None = None
        if not trace.concurrent:
            text = traces.expected_text(self.trace, n)
            expected = (_sha(text), len(text))
        elif full:
            expected = (_sha(trace.end_content), len(trace.end_content))
        deadline = TRACE_DEADLINE_S[config.scale]
        repeat = min(config.repeat, 3 if config.scale == "full" else config.repeat)
        trials: list[Trial] = []
        results: list[Result] = []
        for adapter in self.adapters.values():
            if not adapter.supports_text:
                results.append(_unsupported_text(self.name, adapter, n, "edit"))
                continue
            trials.append(self._engine(adapter.name, n, expected, deadline, progress))
        for t in trials:  # start every engine's worker at once: each loads the trace for seconds
            if self.limits.skip(t.result.subject) is None:
                self._worker(t.result.engine)
        # One warm-up per worker (its first replay), not per size: a whole-trace replay is long.
        warmup = 0 if all(t.result.engine in self.warmed for t in trials) else 1
        runnable = [t for t in trials if self.limits.skip(t.result.subject) is None]
        skipped = [self.limits.skipped_result(t.result) for t in trials if t not in runnable]
        done = run_trials(runnable, repeat, progress, warmup=warmup, budget_s=deadline)
        self.warmed |= {t.result.engine for t in runnable}
        self.limits.record(done)
        for r in skipped:
            progress.result(r)
        if expected is None:
            self._cross_check(done)
        return done + skipped + results

    def _engine(
        self, engine: str, n: int, expected: tuple[str, int] | None, deadline: float, progress: Progress
    ) -> Trial:
        result = Result(self.name, engine, engine, n, "time", "s/op", "edit", n)
        clock = _ReportedClock()
        trace_name = self.trace

        def run(_: None) -> dict[str, Any]:
            progress.say(f"  {self.name}: {engine} replays {n:,} transactions (limit {deadline:g} s)")
            try:
                worker = self._worker(engine)
                reply = worker.request({"trace": trace_name, "prefix": n}, deadline)
            except TimedOut as exc:
                if self.pool is not None:
                    self.pool.discard(engine)
                raise TimedOut(f"replay of {n:,} edits {exc} (the time limit)") from None
            if "error" in reply:
                raise RuntimeError(f"{engine}: {reply['error']}")
            clock.now += float(reply["seconds"])
            return reply

        def check(reply: dict[str, Any]) -> None:
            if not reply["agree"]:
                raise Diverged(f"{engine}: the agents' replicas hold different texts after the final sync")
            if expected is not None and reply["sha"] != expected[0]:
                raise Diverged(
                    f"{engine}: the replayed text differs from the expected content "
                    f"({reply['chars']:,} characters, want {expected[1]:,})"
                )
            result.extra["sha256"] = reply["sha"]
            result.extra["chars"] = reply["chars"]
            if reply.get("doc_bytes") is not None:
                result.extra["doc_bytes"] = reply["doc_bytes"]
            result.extra["proof"] = (
                "endContent" if expected is not None and n == len(traces.load(trace_name))
                else "plain replay of the prefix" if expected is not None
                else "agents agree; engines agree"
            )  # fmt: skip

        return Trial(result, lambda: None, run, check, n, clock)

    @staticmethod
    def _cross_check(results: list[Result]) -> None:
        """A concurrent prefix has no reference text: engines that disagree with the majority diverged."""
        shas = [r.extra.get("sha256") for r in results if r.status == OK]
        if len(shas) < 2:
            return
        majority = max(set(shas), key=shas.count)
        if shas.count(majority) * 2 <= len(shas):
            majority = None  # no majority: every engine is suspect, none is singled out
        for r in results:
            if r.status == OK and majority is not None and r.extra.get("sha256") != majority:
                r.status, r.note, r.samples = DIVERGED, "text differs from the other engines'", []


def workloads(adapters: Adapters) -> list[Workload]:
    """The suite's workloads, in the order they run and appear in the report."""
    pool = _WorkerPool([*traces.CONCURRENT, *traces.SEQUENTIAL])
    found: list[Workload] = [
        LocalWrites(adapters),
        ConcurrentMerge(adapters),
        IncrementalDiff(adapters),
        ApplyUpdates(adapters),
        TextEdits(
            adapters,
            "b1_append",
            "B1.1: one client appends N characters, one transaction each",
            "crdt-benchmarks B1.1: N one-character appends at the end of a text, one transaction (and "
            "one update, kept as a client would) per character. Checked: the text, and the same text "
            "rebuilt from the updates.",
            "append",
            {"tiny": [200], "quick": [1_000, 6_000], "full": [1_000, 6_000, 20_000, 60_000]},
        ),
        TextEdits(
            adapters,
            "b1_random_insert",
            "B1.4: one client inserts N characters at random positions",
            "crdt-benchmarks B1.4: N one-character inserts at seeded random positions, one transaction "
            "each. Finding a position is where the Yrs engines' cost grows with the text (they walk the "
            "block list; Yjs caches search markers, loro uses a B-tree): watch the slope on the log plot. "
            "Checked: the text equals a plain Python replay, and the updates rebuild it.",
            "random",
            {"tiny": [200], "quick": [1_000, 6_000], "full": [1_000, 6_000, 12_000, 24_000]},
        ),
        ConcurrentText(adapters),
        ManyClients(
            adapters,
            "b3_many_clients_map",
            "B3.1: K clients set the same map key (and one of their own) concurrently; one replica merges",
            "crdt-benchmarks B3.1 shape, with K as the size (crdt-benchmarks uses K = 20·√N): K clients, "
            "each a fresh document, write the contended key `contended` and a key of their own in one "
            "transaction (the last seat, K times); one replica takes all K updates (`apply_batch`: one "
            "by one, except loro's `import_batch`). Timed: the K clients' writes and the merge. Checked: "
            "a second replica taking the updates in reverse order holds the same map, with one winner.",
            "map",
        ),
        ManyClients(
            adapters,
            "b3_many_clients_text",
            "B3.4: K clients insert a word at the start of the same text concurrently; one replica merges",
            "crdt-benchmarks B3.4 shape on text: K clients each insert a word at position 0 of an empty "
            "text, concurrently; one replica takes all K updates (`apply_batch`, as in B3.1). Checked: a "
            "replica taking them in reverse order holds the same text, with every word once.",
            "text",
        ),
        TraceReplay(
            adapters,
            "b3_trace_concurrent",
            "B3 on a real concurrent trace (clownschool): agents' replicas edit and merge",
            "The clownschool trace (three users typing at once, 23,136 transactions with a parent DAG): "
            "one replica per agent; before each transaction the agent's replica applies the updates of "
            "the ancestors it lacks, then makes the transaction's edits; at the end every replica "
            "receives everything. Prefixes of the trace as sizes. Timed: the whole replay (edits and "
            "merges), in a worker process per engine with a deadline. Checked: every replica holds the "
            "same text, equal to endContent for the whole trace, and equal across engines for a prefix.",
            "clownschool",
            {"tiny": [300], "quick": [2_000, 23_136], "full": [2_000, 8_000, 23_136]},
            pool=pool,
        ),
        TraceReplay(
            adapters,
            "b4_automerge_trace",
            "B4: replaying the automerge-paper editing trace (prefixes, then all 259,778 edits)",
            "crdt-benchmarks B4: every keystroke of writing a LaTeX paper (182,315 inserts, 77,463 "
            "deletes), one transaction per edit, replayed into one document; prefixes of the trace as "
            "sizes, the whole trace in the full run. Runs in a worker process per engine with a "
            "deadline: an engine that does not finish is reported as `timeout`. Checked: the text equals "
            "a plain Python string replay of the prefix (endContent for the whole trace).",
            "automerge-paper",
            {"tiny": [300], "quick": [10_000, 40_000], "full": [10_000, 40_000, 100_000, 259_778]},
            pool=pool,
        ),
        TraceReplay(
            adapters,
            "b4_blog_trace",
            "B4 on the seph-blog1 trace (writing a blog post, multi-character inserts)",
            'The keystrokes of writing the blog post "CRDTs go brrr" (137,154 transactions, some '
            "pasting whole paragraphs), replayed like B4. Checked against a plain replay / endContent.",
            "seph-blog1",
            {"tiny": [300], "quick": [20_000], "full": [20_000, 137_154]},
            pool=pool,
        ),
    ]
    return found
