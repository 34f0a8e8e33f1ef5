"""The ``domain`` suite: what QuickSlot's booking rules cost on top of the engine.

Why these workloads (the domain suite's questions): a reservation storm (many
clients booking the same day's slots offline, the last seats contended) and the time to merge
their claims and compute the verdict; validating an incoming update, signatures included; the
verdict on a realistic day; the document's bytes per reservation as it grows, signed against
unsigned; and how much compaction (folding a day's update log into one state) saves. Each size
sweep grows the document or the number of clients, so the report's log plots show how each cost
scales.

Every result is checked: verdicts must not depend on delivery order and never overfill a slot,
validation must accept typical updates and refuse forged, tampered and rewriting ones, compacted
state must hold exactly the day's records. Baselines: the engine's plain operations ("apply to a
copy and inspect" for validation, unsigned records for bytes, the raw update log for compaction,
applying updates one by one for the storm).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from benchmarks.apply_inspect import ApplyInspectValidator
from benchmarks.fixtures import (
    DOC,
    NOW_MS,
    SLOTS,
    Entry,
    _customer,
    booking_day,
    corpus,
    make_author,
    trusted_cache,
    typical_updates,
)
from benchmarks.harness import (
    OK,
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
from benchmarks.suites.common import Adapters, LimitTracker, diff_maps, guarded, sizes_for
from crdt_core.engine import Replica, fold_updates, merge_updates
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import ClaimState, Verdict, compute_verdict

__all__ = [
    "TARGETS",
    "BytesPerReservation",
    "Compaction",
    "Storm",
    "Validation",
    "VerdictTime",
    "suite_description",
    "workloads",
]

suite_description = (
    "QuickSlot's booking rules on top of the engine: reservation storm (merge + verdict), "
    "validation per update, verdict, bytes per reservation, compaction"
)

TARGETS = (
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
        return sizes_for(scale, [40], [100, 1_000], [100, 1_000, 10_000])

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

            results.append(guarded(result, measure, progress))
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
        return sizes_for(scale, [40], [100, 1_000], [100, 1_000, 10_000])

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
        "per customer); `<engine> unsigned` holds the same reservation fields as plain msgpack bytes "
        "with no envelope, signature or certificate, in each engine's own encoding of the whole state "
        "(y-py as base64 text); `y-py unsigned (plain values)` holds them as native Yjs map values. "
        "Checked: every record reads back unchanged."
    )
    baseline: str | None = "pycrdt unsigned"

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [40], [100, 1_000], [100, 1_000, 10_000, 30_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        c = corpus(size)
        results: list[Result] = []

        def one(subject: str, engine: str, measure: Callable[[Result], float]) -> None:
            result = Result(self.name, subject, engine, size, "bytes", "B/reservation", "reservation", size)
            results.append(guarded(result, lambda: [measure(result)], progress))

        if "crdt_core" in self.adapters:

            def signed(result: Result) -> float:
                replica = Replica(1)
                for entries in c.transactions:
                    replica.write(entries)
                diff_maps("crdt_core", replica.to_py(), c.expected)
                certs = c.expected.get("certs", {})
                result.extra["certificate_bytes_per_reservation"] = sum(map(len, certs.values())) / size
                result.extra["record_bytes_per_reservation"] = (
                    sum(map(len, c.expected["reservations"].values())) / size
                )
                return len(replica.encode_state()) / size

            one("crdt_core signed", "crdt_core", signed)
        plain: list[Entry] = [("reservations", k, v) for k, v in c.unsigned.items()]
        for adapter in self.adapters.values():
            if adapter.name == "crdt_core":
                continue

            def unsigned(result: Result, adapter: Any = adapter) -> float:
                doc = adapter.new_doc(1)
                adapter.write_many(doc, [[entry] for entry in plain])
                diff_maps(
                    adapter.name,
                    {"reservations": adapter.read(doc, "reservations")},
                    {"reservations": c.unsigned},
                )
                return len(adapter.encode_state(doc)) / size

            one(f"{adapter.name} unsigned", adapter.name, unsigned)
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


# --- reservation storm: merge + verdict -----------------------------------------------------------


@dataclass
class StormData:
    updates: list[bytes]
    capacities: dict[str, int]
    expected: Verdict
    demand_seats: int


@lru_cache(maxsize=4)
def storm_data(clients: int) -> StormData:
    """K customers, each booking once offline from a fresh device; capacities just short of demand.

    Demand is skewed the way a popular day is: 30% of the clients want the last slot of the day,
    the rest spread over all slots. Each slot's capacity is 90% of the seats asked for it, so the
    last tenth of every slot's queue is contended and waitlisted.
    """
    rng = random.Random(clients)
    updates: list[bytes] = []
    demand: dict[str, int] = {}
    for i in range(clients):
        slot = SLOTS[-1] if rng.random() < 0.3 else rng.choice(SLOTS)
        party = 1 + rng.randrange(2)
        author = make_author(_customer(i, "storm"), id_prefix="s")
        _, update = author.book(Replica(author.client_id()), DOC, slot=slot, party=party)
        updates.append(update)
        demand[slot] = demand.get(slot, 0) + party
    capacities = {slot: max(1, (seats * 9) // 10) for slot, seats in demand.items()}
    shuffled = list(updates)
    rng.shuffle(shuffled)
    reference = Replica(9)
    for update in shuffled:
        reference.apply_update(update)
    expected = compute_verdict(read_bookings(reference, DOC), capacities)
    return StormData(updates, capacities, expected, sum(demand.values()))


@dataclass
class Storm:
    adapters: Adapters
    name: str = "storm"
    title: str = "Reservation storm: K clients book the same day offline; merge and verdict"
    description: str = (
        "K customers each book one seat or two from their own device while offline (a signed "
        "reservation plus the device certificate: one update each); 30% want the day's last slot; "
        "every slot has 90% of the seats asked for it, so the last seats are contended. A replica "
        "(the relay's, or a client catching up) then receives all K updates and computes the verdict. "
        "`apply each` applies the updates one by one (the baseline); `fold` folds them into one "
        "update first (`fold_updates`); `merge_updates` merges them with the engine's merge. Timed: "
        "merge, reading the records, verdict (each split in the notes). Checked: the verdict equals "
        "that of a replica that received the updates shuffled, no slot is over capacity, every claim "
        "is confirmed or waitlisted."
    )
    baseline: str | None = "apply each + verdict"
    limits: LimitTracker = field(default_factory=LimitTracker)

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [20], [100, 1_000], [100, 1_000, 5_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        data = storm_data(size)

        def apply_each(replica: Replica) -> None:
            for update in data.updates:
                replica.apply_update(update)

        merges: dict[str, Callable[[Replica], None]] = {
            "apply each + verdict": apply_each,
            "fold + verdict": lambda r: r.apply_update(fold_updates(data.updates)),
            "merge_updates + verdict": lambda r: r.apply_update(merge_updates(data.updates)),
        }
        trials = []
        splits: dict[str, list[tuple[float, float, float]]] = {}
        for subject, merge in merges.items():
            split = splits.setdefault(subject, [])
            trials.append(self._trial(subject, merge, data, size, split))
        runnable = [t for t in trials if self.limits.skip(t.result.subject) is None]
        skipped = [self.limits.skipped_result(t.result) for t in trials if t not in runnable]
        results = run_trials(runnable, config.repeat, progress, limit_s=20.0, budget_s=60.0)
        self.limits.record(results)
        for r in results:
            if r.status == OK and r.samples:
                kept = splits[r.subject][-len(r.samples) :]
                r.extra["merge_phase_seconds"] = [m for m, _, _ in kept]
                r.extra["read_seconds"] = [rd for _, rd, _ in kept]
                r.extra["compute_seconds"] = [v for _, _, v in kept]
        return results + skipped

    def _trial(
        self,
        subject: str,
        merge: Callable[[Replica], None],
        data: StormData,
        size: int,
        split: list[tuple[float, float, float]],
    ) -> Trial:
        result = Result(self.name, subject, "crdt_core", size, "time", "s/op", "client", size)

        def run(replica: Replica) -> Verdict:
            t0 = time.perf_counter()
            merge(replica)
            t1 = time.perf_counter()
            state = read_bookings(replica, DOC)
            t2 = time.perf_counter()
            verdict = compute_verdict(state, data.capacities)
            split.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
            return verdict

        def check(verdict: Verdict) -> None:
            if verdict != data.expected:
                raise Diverged(f"{subject}: the verdict depends on how the updates arrived")
            for slot in verdict.slots.values():
                if slot.seats_taken > slot.capacity:
                    raise Diverged(f"slot {slot.slot} over capacity")
            states = [c.state for c in verdict.claims.values()]
            if len(states) != size or any(
                s not in (ClaimState.CONFIRMED, ClaimState.WAITLISTED) for s in states
            ):
                raise Diverged(f"{subject}: {len(states)} claims, want {size} confirmed or waitlisted")
            result.extra["confirmed"] = states.count(ClaimState.CONFIRMED)
            result.extra["waitlisted"] = states.count(ClaimState.WAITLISTED)
            result.extra["seats_asked"] = data.demand_seats
            result.extra["seats"] = sum(data.capacities.values())

        return Trial(result, lambda: Replica(7), run, check, size)


# --- compaction -----------------------------------------------------------------------------------


@dataclass
class Compaction:
    adapters: Adapters
    name: str = "compaction"
    title: str = "Compaction: a day's update log against its folded state (bytes per reservation)"
    description: str = (
        "A realistic day (N reservations, a third staff-confirmed, one in eleven cancelled, 70% relay-"
        "stamped) kept as the log of every single update the relay received, against that log folded "
        "into one update (`fold_updates`, what compaction stores) and the live document's encoded "
        "state. Bytes per reservation; the ratio column is the compacted size over the log's, and the "
        "notes give the fold's time. Checked: the folded update rebuilds exactly the day's document."
    )
    baseline: str | None = "update log"

    def sizes(self, scale: Scale) -> list[int]:
        return sizes_for(scale, [40], [100, 1_000], [100, 1_000, 10_000])

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        day = booking_day(size)
        want = day.replica.to_py()
        log_bytes = sum(map(len, day.updates))
        results: list[Result] = []

        def one(subject: str, measure: Callable[[Result], float]) -> None:
            result = Result(
                self.name, subject, "crdt_core", size, "bytes", "B/reservation", "reservation", size
            )
            results.append(guarded(result, lambda: [measure(result)], progress))

        def log(result: Result) -> float:
            result.extra["updates"] = len(day.updates)
            return log_bytes / size

        def folded(result: Result) -> float:
            seconds = []
            out = b""
            for _ in range(max(1, min(config.repeat, 3))):
                t0 = time.perf_counter()
                out = fold_updates(day.updates)
                seconds.append(time.perf_counter() - t0)
            check = Replica(8)
            check.apply_update(out)
            diff_maps("fold_updates", check.to_py(), want)
            result.extra["fold_seconds"] = seconds
            result.extra["compaction_ratio"] = log_bytes / len(out)
            return len(out) / size

        def live(result: Result) -> float:
            return len(day.replica.encode_state()) / size

        one("update log", log)
        one("folded (fold_updates)", folded)
        one("live document state", live)
        return results


def workloads(adapters: Adapters) -> list[Workload]:
    """The suite's workloads, in the order they run and appear in the report."""
    return [
        Storm(adapters),
        Validation(adapters),
        VerdictTime(adapters),
        BytesPerReservation(adapters),
        Compaction(adapters),
    ]
