"""The ``crdt`` suite: issue 3's measurements, map-heavy workloads shaped like a day of bookings.

Why these workloads: they are the operations QuickSlot performs on every booking (a local write
of a signed record, a state-vector exchange between two replicas, an incremental diff, catching
up on a log of single updates, validating an incoming update, computing the verdict) and the
storage cost of signing. Each runs every available engine on byte-identical records, checks the
engines' results against each other (and against what the records say they must be), and reports
an engine that disagrees as ``diverged`` instead of timing it.

Baselines: raw pycrdt for engine operations (the engine crdt_core wraps), "apply to a copy and
inspect" for validation, unsigned plain records for bytes. Ratios are taken within the run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from benchmarks.adapters import EngineAdapter, Entry, Unsupported
from benchmarks.apply_inspect import ApplyInspectValidator
from benchmarks.fixtures import DOC, NOW_MS, Corpus, booking_day, corpus, trusted_cache, typical_updates
from benchmarks.harness import (
    DIVERGED,
    UNSUPPORTED,
    Diverged,
    Progress,
    Result,
    RunConfig,
    Scale,
    Target,
    Trial,
    Workload,
    percentile,
    run_trials,
    time_each,
)
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings
from crdt_core.records import open_record
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import Verdict, compute_verdict

__all__ = ["TARGETS", "workloads"]

Adapters = dict[str, EngineAdapter[Any]]

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
    Target(
        "validation p99 under 1 ms per typical update (1,000-reservation document)",
        "validation",
        "crdt_core decoder",
        1_000,
        "p99",
        1000.0,
        1e6,
        "µs",
    ),
)


def _sizes(scale: Scale, tiny: list[int], quick: list[int], full: list[int]) -> list[int]:
    return {"tiny": tiny, "quick": quick, "full": full}[scale]


def _diff_maps(engine: str, got: dict[str, dict[str, bytes]], want: dict[str, dict[str, bytes]]) -> None:
    """Raise Diverged naming the first difference between two map dumps."""
    for root in sorted(set(got) | set(want)):
        g, w = got.get(root, {}), want.get(root, {})
        if g == w:
            continue
        missing = sorted(set(w) - set(g))[:3]
        extra = sorted(set(g) - set(w))[:3]
        changed = sorted(k for k in set(g) & set(w) if g[k] != w[k])[:3]
        raise Diverged(
            f"{engine}: map {root!r} differs (missing {missing}, extra {extra}, changed {changed})"
        )


def _contents(adapter: EngineAdapter[Any], doc: Any, roots: Sequence[str]) -> dict[str, dict[str, bytes]]:
    return {root: adapter.read(doc, root) for root in roots}


def _check_doc(adapter: EngineAdapter[Any], expected: dict[str, dict[str, bytes]]) -> Callable[[Any], None]:
    def check(doc: Any) -> None:
        _diff_maps(adapter.name, _contents(adapter, doc, list(expected)), expected)

    return check


def _guarded(result: Result, measure: Callable[[], list[float]], progress: Progress) -> Result:
    """Run one measurement; a failed check or a missing operation becomes the result's status."""
    try:
        result.samples = measure()
    except Diverged as exc:
        result.status, result.note, result.samples = DIVERGED, str(exc), []
    except Unsupported as exc:
        result.status, result.note, result.samples = UNSUPPORTED, str(exc), []
    progress.result(result)
    return result


# --- local writes -------------------------------------------------------------------------------


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
        "text (it cannot write binary)."
    )
    baseline: str | None = "pycrdt"

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [20, 60], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials = [self._engine(adapter, c, size) for adapter in self.adapters.values()]
        if "crdt_core" in self.adapters:
            trials += [self._typed(c, size, sign=False), self._typed(c, size, sign=True)]
        return run_trials(trials, config.repeat, progress)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "write", size)
        txs = c.transactions
        check_doc = _check_doc(adapter, c.expected)

        def setup() -> tuple[Any, list[bytes]]:
            return adapter.new_doc(1), []

        def run(state: tuple[Any, list[bytes]]) -> tuple[Any, list[bytes]]:
            doc, updates = state
            write, append = adapter.write, updates.append
            for entries in txs:
                append(write(doc, entries))
            return doc, updates

        def check(state: tuple[Any, list[bytes]]) -> None:
            doc, updates = state
            check_doc(doc)
            replay = adapter.new_doc(2)
            for update in updates:
                adapter.apply(replay, update)
            check_doc(replay)  # the updates handed to sync carry exactly what was written
            result.extra["update_bytes_per_write"] = sum(map(len, updates)) / len(updates)

        return Trial(result, setup, run, check, size)

    def _typed(self, c: Corpus, size: int, *, sign: bool) -> Trial:
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
                _diff_maps(label, got, c.expected)
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


# --- two-replica concurrent merge ---------------------------------------------------------------


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

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [60], [1_000], [1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        return run_trials([self._engine(a, c, size) for a in self.adapters.values()], config.repeat, progress)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "sync", 1)
        left, right = adapter.new_doc(11), adapter.new_doc(12)
        for i, entries in enumerate(c.transactions):
            adapter.write(left if i % 2 == 0 else right, entries)
        left_state, right_state = adapter.encode_state(left), adapter.encode_state(right)
        check_doc = _check_doc(adapter, c.expected)

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
            check_doc(a)
            check_doc(b)
            result.extra["exchange_bytes"] = wire

        return Trial(result, setup, run, check)


# --- incremental diff ---------------------------------------------------------------------------


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

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [60], [1_000], [1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        return run_trials([self._engine(a, c, size) for a in self.adapters.values()], config.repeat, progress)

    def _engine(self, adapter: EngineAdapter[Any], c: Corpus, size: int) -> Trial:
        inner = self.inner
        result = Result(self.name, adapter.name, adapter.name, size, "time", "s/op", "diff", inner)
        lag = max(10, size // 100)
        leader = adapter.new_doc(1)
        for entries in c.transactions[: size - lag]:
            adapter.write(leader, entries)
        peer_state = adapter.encode_state(leader)
        for entries in c.transactions[size - lag :]:
            adapter.write(leader, entries)
        peer = adapter.new_doc(5)
        adapter.apply(peer, peer_state)
        peer_sv = adapter.state_vector(peer)
        check_doc = _check_doc(adapter, c.expected)

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
            check_doc(fresh)
            result.extra["diff_bytes"] = len(delta)
            result.extra["state_bytes"] = len(adapter.encode_state(leader))
            result.extra["lagging_reservations"] = lag

        return Trial(result, lambda: None, run, check, inner)


# --- applying N single updates ------------------------------------------------------------------


@dataclass
class ApplyUpdates:
    adapters: Adapters
    name: str = "apply_updates"
    title: str = "Catching up on N single updates: one by one vs merged vs folded"
    description: str = (
        "A replica receives the N single-booking updates of a day. `one-by-one` applies each; "
        "`merged` merges them with the engine's `merge_updates` and applies the result (DESIGN: "
        "quadratic in N); `fold` applies them to a scratch document and applies its encoded state "
        "(what crdt_core's `fold_updates` does). Time per update; checked: same contents."
    )
    baseline: str | None = "pycrdt one-by-one"

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [50], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        trials: list[Trial] = []
        splits: dict[str, list[float]] = {}
        for adapter in self.adapters.values():
            source = adapter.new_doc(1)
            updates = [adapter.write(source, entries) for entries in c.transactions]
            for mode in ("one-by-one", "merged", "fold"):
                split = splits.setdefault(f"{adapter.name} {mode}", [])
                trials.append(self._mode(adapter, mode, updates, c, size, split))
        results = run_trials(trials, config.repeat, progress)
        for result in results:
            split = splits[result.subject]
            if split and result.status == "ok":
                result.extra["merge_seconds"] = split[-config.repeat :]
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
        check_doc = _check_doc(adapter, c.expected)

        def one_by_one(doc: Any) -> Any:
            apply = adapter.apply
            for update in updates:
                apply(doc, update)
            return doc

        def merged(doc: Any) -> Any:
            t0 = time.perf_counter()
            combined = adapter.merge(updates)
            split.append(time.perf_counter() - t0)  # reported beside the total
            adapter.apply(doc, combined)
            return doc

        def fold(doc: Any) -> Any:
            scratch = adapter.new_doc(3)
            for update in updates:
                adapter.apply(scratch, update)
            adapter.apply(doc, adapter.encode_state(scratch))
            return doc

        run = {"one-by-one": one_by_one, "merged": merged, "fold": fold}[mode]
        return Trial(result, lambda: adapter.new_doc(2), run, check_doc, size)


# --- validation ---------------------------------------------------------------------------------


@dataclass
class Validation:
    adapters: Adapters
    name: str = "validation"
    title: str = "Validating a typical booking update against a day document"
    description: str = (
        "A typical update (one new reservation by a customer whose certificate the document holds) "
        "is validated against a day document of N reservations with staff confirmations, "
        "cancellations and relay stamps, signature and certificate checks included, with the relay's "
        "arrival policy, against a warm certificate cache. `crdt_core decoder` is "
        "`crdt_core.validation.validate_update` (reads the update's bytes, never applies it); "
        "`pycrdt apply-to-copy` applies the update to a fresh copy of the document and inspects the "
        "map events, doing the same checks. Latency per update (p50/p99). Checked: both methods "
        "accept every typical update and refuse a forged, a tampered and a rewriting one."
    )
    baseline: str | None = "pycrdt apply-to-copy"
    updates: int = 200
    baseline_budget_s: float = 30.0

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [40], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        count = 10 if config.scale == "tiny" else self.updates
        good, bad = typical_updates(size, count)
        day = booking_day(size)
        replica = day.replica
        cache = trusted_cache()
        policy = ArrivalPolicy(now_ms=NOW_MS)
        copy_validator = ApplyInspectValidator(DOC, replica.encode_state(), cache)

        def ours(update: bytes) -> object:
            return validate_update(DOC, replica, update, cache, policy)

        methods: dict[str, Callable[[bytes], object]] = {
            "crdt_core decoder": ours,
            "pycrdt apply-to-copy": copy_validator.validate,
        }
        results = []
        for subject, method in methods.items():
            engine = "crdt_core" if subject.startswith("crdt_core") else "pycrdt"
            result = Result(self.name, subject, engine, size, "time", "s/op", "validation", 1)
            budget = self.baseline_budget_s if subject.startswith("pycrdt") else None

            def measure(
                method: Callable[[bytes], object] = method,
                result: Result = result,
                budget: float | None = budget,
            ) -> list[float]:
                codes = self._agree(method, good, bad)
                result.extra["refusal_codes"] = codes
                result.extra["typical_update_bytes"] = sum(map(len, good)) / len(good)
                samples = time_each([partial(method, u) for u in good], config.repeat, budget)
                if len(samples) < len(good) * config.repeat:
                    result.note = f"sampling stopped by the {budget:.0f} s budget"
                # Each update's fastest pass: the same distribution over updates, without the
                # scheduler's preemptions that inflate a raw p99 on a shared machine.
                fastest = [min(samples[i :: len(good)]) for i in range(min(len(good), len(samples)))]
                result.extra["p50_fastest_pass"] = percentile(fastest, 50)
                result.extra["p99_fastest_pass"] = percentile(fastest, 99)
                return samples

            results.append(_guarded(result, measure, progress))
        return results

    @staticmethod
    def _agree(
        method: Callable[[bytes], object], good: list[bytes], bad: list[tuple[str, bytes]]
    ) -> dict[str, str]:
        for update in good:
            try:
                method(update)
            except ValidationError as exc:
                raise Diverged(f"refused a typical update: {exc}") from None
        codes: dict[str, str] = {}
        for expected, update in bad:
            try:
                method(update)
            except ValidationError as exc:
                codes[expected] = exc.code
                continue
            raise Diverged(f"accepted a {expected} update")
        return codes


# --- verdict ------------------------------------------------------------------------------------


@dataclass
class VerdictTime:
    adapters: Adapters
    name: str = "verdict"
    title: str = "Booking verdict for a day of N reservations"
    description: str = (
        "Read a day document's records (`read_bookings`) and compute the verdict for every slot "
        "(`compute_verdict`), with a third of the claims staff-confirmed, one in eleven cancelled and "
        "70% stamped. crdt_core only (no other engine has a verdict). Checked: the verdict equals "
        "that of a replica that received the same updates in a shuffled order, and no slot is over "
        "capacity."
    )
    baseline: str | None = None

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [40], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        day = booking_day(size)
        shuffled = list(day.updates)
        random.Random(size).shuffle(shuffled)
        other = Replica(9)
        for update in shuffled:
            other.apply_update(update)
        expected = compute_verdict(read_bookings(other, DOC), day.capacities)
        result = Result(self.name, "crdt_core", "crdt_core", size, "time", "s/op", "verdict", 1)

        read_s: list[float] = []
        compute_s: list[float] = []

        def run(_: None) -> Verdict:
            t0 = time.perf_counter()
            state = read_bookings(day.replica, DOC)
            t1 = time.perf_counter()
            verdict = compute_verdict(state, day.capacities)
            read_s.append(t1 - t0)
            compute_s.append(time.perf_counter() - t1)
            return verdict

        def check(verdict: Verdict) -> None:
            if verdict != expected:
                raise Diverged("verdict depends on delivery order")
            for slot in verdict.slots.values():
                if slot.seats_taken > slot.capacity:
                    raise Diverged(f"slot {slot.slot} over capacity")
            result.extra["confirmed"] = sum(
                1 for c in verdict.claims.values() if c.state.value == "confirmed"
            )

        results = run_trials([Trial(result, lambda: None, run, check)], config.repeat, progress)
        if result.status == "ok":
            result.extra["read_seconds"] = read_s[-config.repeat :]
            result.extra["compute_seconds"] = compute_s[-config.repeat :]
        return results


# --- bytes per reservation ----------------------------------------------------------------------


@dataclass
class BytesPerReservation:
    adapters: Adapters
    name: str = "bytes_per_reservation"
    title: str = "Document bytes per reservation: signed records vs unsigned plain records"
    description: str = (
        "Size of the whole encoded document divided by the number of reservations. `crdt_core "
        "signed` holds the signed records plus one device certificate per customer (two bookings "
        "per customer); `pycrdt unsigned` holds the same reservation fields as plain msgpack bytes "
        "with no envelope, signature or certificate; `y-py unsigned (plain values)` holds them as "
        "native Yjs map values."
    )
    baseline: str | None = "pycrdt unsigned"

    def sizes(self, scale: Scale) -> list[int]:
        return _sizes(scale, [40], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        results: list[Result] = []

        def one(subject: str, engine: str, measure: Callable[[Result], float]) -> None:
            result = Result(self.name, subject, engine, size, "bytes", "B/reservation", "reservation", size)
            results.append(_guarded(result, lambda: [measure(result)], progress))

        if "crdt_core" in self.adapters:

            def signed(result: Result) -> float:
                replica = Replica(1)
                for entries in c.transactions:
                    replica.write(entries)
                _diff_maps("crdt_core", replica.to_py(), c.expected)
                certs = c.expected.get("certs", {})
                result.extra["certificate_bytes_per_reservation"] = sum(map(len, certs.values())) / size
                result.extra["record_bytes_per_reservation"] = (
                    sum(map(len, c.expected["reservations"].values())) / size
                )
                return len(replica.encode_state()) / size

            one("crdt_core signed", "crdt_core", signed)
        plain: list[Entry] = [("reservations", k, v) for k, v in c.unsigned.items()]
        if "pycrdt" in self.adapters:
            adapter = self.adapters["pycrdt"]

            def unsigned(result: Result) -> float:
                doc = adapter.new_doc(1)
                for entry in plain:
                    adapter.write(doc, [entry])
                _diff_maps(
                    "pycrdt",
                    {"reservations": adapter.read(doc, "reservations")},
                    {"reservations": c.unsigned},
                )
                return len(adapter.encode_state(doc)) / size

            one("pycrdt unsigned", "pycrdt", unsigned)
        if "y-py" in self.adapters:

            def ypy_plain(result: Result) -> float:
                import y_py

                y: Any = y_py  # y-py's stubs type transactions wrongly for `with`
                ydoc = y.YDoc(client_id=1)
                ymap = ydoc.get_map("reservations")
                for res in c.reservations:
                    with ydoc.begin_transaction() as txn:
                        ymap.set(txn, res.id, res.to_fields())
                for res in c.reservations:
                    if dict(ymap[res.id]) != res.to_fields():
                        raise Diverged(f"y-py: reservation {res.id} reads back differently")
                return len(bytes(y.encode_state_as_update(ydoc))) / size

            one("y-py unsigned (plain values)", "y-py", ypy_plain)
        return results


def workloads(adapters: Adapters) -> list[Workload]:
    """The suite's workloads, in the order they run and appear in the report."""
    return [
        LocalWrites(adapters),
        ConcurrentMerge(adapters),
        IncrementalDiff(adapters),
        ApplyUpdates(adapters),
        Validation(adapters),
        VerdictTime(adapters),
        BytesPerReservation(adapters),
    ]
