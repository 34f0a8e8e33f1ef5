"""The measuring machinery shared by every suite: results, timing, statistics, progress.

Why this shape: researchers need raw samples (not only medians) that researchers can reanalyse,
ratios against a named baseline computed within the same run, and engines that disagree reported
as ``diverged`` rather than as fast. So a workload produces :class:`Result` rows holding every
sample, a status and the checks' verdict; ratios and statistics are derived from those rows when
the report is written, and can be recomputed from the JSON alone.

Timing: ``time.perf_counter`` around the measured region only; the garbage collector is run
before and disabled during each timed run (its pauses otherwise land on whichever engine happens
to allocate the millionth object); one untimed warm-up run precedes the samples.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar

__all__ = [
    "Check",
    "Diverged",
    "TimedOut",
    "Progress",
    "Result",
    "RunConfig",
    "Scale",
    "Target",
    "Trial",
    "Workload",
    "percentile",
    "run_trials",
    "stats",
    "time_runs",
]

T = TypeVar("T")
Scale = Literal["tiny", "quick", "full"]

OK = "ok"
DIVERGED = "diverged"
UNSUPPORTED = "unsupported"
ERROR = "error"
TIMEOUT = "timeout"
"""A subject that exceeded its time limit: reported as a result (how far it got), not a crash."""


class Diverged(Exception):
    """A convergence or equality check failed: the subject's result is wrong, so its time is void."""


class TimedOut(Exception):
    """A run exceeded the subject's time limit; the subject is reported as ``timeout``."""


Check = Callable[[Any], None]
"""Raises :class:`Diverged` when a run's output is not what every engine must produce."""


@dataclass
class Result:
    """Every sample of one subject (an engine, or an engine in one mode) at one size of one workload."""

    workload: str
    subject: str
    engine: str
    size: int
    metric: Literal["time", "bytes"]
    unit: str
    """``s/op`` (seconds per operation) or ``B/reservation``."""
    op: str
    """What one operation is (``write``, ``sync``, ``update``, ``validation``...)."""
    ops_per_run: int
    samples: list[float] = field(default_factory=list)
    """Per-operation values, one per timed run (or one per operation for latency workloads)."""
    status: str = OK
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["stats"] = stats(self.samples) if self.samples and self.status == OK else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Result:
        fields = {k: v for k, v in data.items() if k != "stats"}
        return cls(**fields)


@dataclass(frozen=True)
class Target:
    """A goal from an issue, checked in the report: ``metric`` of ``subject`` at ``size`` vs ``limit``."""

    label: str
    workload: str
    subject: str
    size: int
    metric: Literal["ratio", "p99", "median"]
    limit: float
    unit_scale: float = 1.0
    """Multiplier from the stored unit to the unit ``limit`` is written in (1e6 for µs)."""
    unit_label: str = ""


@dataclass
class RunConfig:
    suites: Sequence[str] = ("crdt",)
    scale: Scale = "full"
    repeat: int = 7
    engines: Sequence[str] | None = None
    workloads: Sequence[str] | None = None
    sizes: Sequence[int] | None = None
    """Overrides every workload's size sweep (for exploring; the default sweeps are the product)."""
    plots: bool = True
    command: str = ""


class Progress:
    """One line per step on stderr, so a long run shows where it is and what it has found."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.started = time.perf_counter()

    def say(self, message: str) -> None:
        if self.enabled:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:7.1f}s] {message}", file=self.stream, flush=True)

    def result(self, r: Result) -> None:
        if r.status != OK or not r.samples:
            self.say(f"  {r.workload} n={r.size:,} {r.subject}: {r.status.upper()} {r.note}")
            return
        s = stats(r.samples)
        if r.metric == "bytes":
            self.say(f"  {r.workload} n={r.size:,} {r.subject}: {s['median']:.1f} {r.unit}")
        else:
            self.say(
                f"  {r.workload} n={r.size:,} {r.subject}: median {fmt_seconds(s['median'])}/{r.op}, "
                f"p99 {fmt_seconds(s['p99'])} ({len(r.samples)} samples)"
            )


class Workload(Protocol):
    """One benchmark shape: knows its sizes, its subjects and its baseline, and produces results."""

    name: str
    title: str
    description: str
    baseline: str | None
    """The subject every other subject's ratio is computed against (None: absolute numbers only)."""

    def sizes(self, scale: Scale) -> list[int]: ...

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]: ...


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100), the same definition numpy uses by default."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
    }


def fmt_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


@dataclass
class Trial:
    """One subject's measurement, ready to run: the harness interleaves trials of one workload.

    Why interleave: on a shared machine the load drifts during a run. Running subject A five
    times and then subject B five times puts the drift into the A/B ratio; running A, B, A, B...
    spreads it over both, which is what a ratio computed "within the same run" needs.
    """

    result: Result
    setup: Callable[[], Any]
    run: Callable[[Any], Any]
    check: Check | None = None
    ops: int = 1
    """Operations per run; samples are stored per operation."""
    clock: Callable[[], float] = time.perf_counter
    """Where the timed region is read from: the engine adapter's clock (Node's own for Yjs)."""


def _timed_once(
    setup: Callable[[], T],
    run: Callable[[T], Any],
    check: Check | None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    state = setup()
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        out = run(state)
        elapsed = clock() - t0
    finally:
        gc.enable()
    if check is not None:
        check(out)
    return elapsed


def run_trials(
    trials: Sequence[Trial],
    repeat: int,
    progress: Progress,
    warmup: int = 1,
    limit_s: float | None = None,
    budget_s: float | None = None,
) -> list[Result]:
    """Run every trial ``warmup + repeat`` times, interleaved; a failed check voids that trial only.

    ``limit_s``: a trial one of whose runs took longer stops there; it keeps the samples it has
    and ``extra["over_limit_s"]`` says so, which the workloads use to skip that subject at larger
    sizes (reported as ``timeout``) instead of spending minutes on a superlinear engine.
    ``budget_s``: a trial whose runs so far add up to more stops sampling early (at least one
    sample), with a note; the rest of the trials go on.
    """
    from benchmarks.adapters import Unsupported

    active = list(trials)
    spent = {id(t): 0.0 for t in trials}
    for round_no in range(warmup + repeat):
        # Rotate the order every round: whichever trial runs right after another's big
        # allocations pays for it (page faults, cold caches), so no subject should always be first.
        shift = round_no % len(active) if active else 0
        for trial in active[shift:] + active[:shift]:
            result = trial.result
            try:
                elapsed = _timed_once(trial.setup, trial.run, trial.check, trial.clock)
            except Diverged as exc:
                result.status, result.note, result.samples = DIVERGED, str(exc), []
                active.remove(trial)
                continue
            except Unsupported as exc:
                result.status, result.note, result.samples = UNSUPPORTED, str(exc), []
                active.remove(trial)
                continue
            except TimedOut as exc:
                result.status, result.note, result.samples = TIMEOUT, str(exc), []
                active.remove(trial)
                continue
            spent[id(trial)] += elapsed
            if round_no >= warmup or limit_s is not None and elapsed > limit_s:
                # A warm-up run over the limit is the only sample there will be: keep it.
                result.samples.append(elapsed / trial.ops)
            if limit_s is not None and elapsed > limit_s:
                result.extra["over_limit_s"] = limit_s
                result.note = f"one run took {elapsed:.1f} s, over the {limit_s:g} s limit: sampling stopped"
                active.remove(trial)
            elif budget_s is not None and spent[id(trial)] > budget_s and result.samples:
                result.note = f"{len(result.samples)} samples: the {budget_s:g} s budget was spent"
                active.remove(trial)
    for trial in trials:
        progress.result(trial.result)
    return [trial.result for trial in trials]


def time_runs(
    setup: Callable[[], T],
    run: Callable[[T], Any],
    repeat: int,
    check: Check | None = None,
    warmup: int = 1,
) -> list[float]:
    """Seconds of ``run(setup())``, ``repeat`` times; ``check`` sees every run's output (untimed).

    Raises:
        Diverged: a run's output failed the check (the samples are then meaningless).
    """
    samples: list[float] = []
    for i in range(warmup + repeat):
        elapsed = _timed_once(setup, run, check)
        if i >= warmup:
            samples.append(elapsed)
    return samples


def time_each(calls: Sequence[Callable[[], Any]], passes: int, budget_s: float | None = None) -> list[float]:
    """Latency of each call separately (for p50/p99), ``passes`` times over the list.

    ``budget_s`` bounds a slow subject (applying to a copy of a 10,000-reservation document):
    sampling stops early once the budget is spent, and the result says how many samples it got.
    """
    samples: list[float] = []
    started = time.perf_counter()
    perf = time.perf_counter
    for _ in range(passes):
        for call in calls:
            gc.disable()
            try:
                t0 = perf()
                call()
                samples.append(perf() - t0)
            finally:
                gc.enable()
            if budget_s is not None and perf() - started > budget_s and len(samples) >= 20:
                return samples
    return samples
