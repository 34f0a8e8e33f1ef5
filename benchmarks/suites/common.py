"""Helpers the engine and domain suites share: size sweeps, convergence checks, time limits.

Why here: both suites check results the same way (an engine whose maps differ from what was
written is ``diverged``), and both skip a subject at larger sizes once it has exceeded its time
limit, reporting it as ``timeout`` rather than spending the run on it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.adapters import EngineAdapter, Unsupported
from benchmarks.harness import (
    DIVERGED,
    TIMEOUT,
    UNSUPPORTED,
    Diverged,
    Progress,
    Result,
    Scale,
    Target,
    Workload,
)

__all__ = [
    "Adapters",
    "Suite",
    "LimitTracker",
    "check_doc",
    "contents",
    "diff_maps",
    "guarded",
    "sizes_for",
]

Adapters = dict[str, EngineAdapter[Any]]


def sizes_for(scale: Scale, tiny: list[int], quick: list[int], full: list[int]) -> list[int]:
    return {"tiny": tiny, "quick": quick, "full": full}[scale]


def diff_maps(engine: str, got: dict[str, dict[str, bytes]], want: dict[str, dict[str, bytes]]) -> None:
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


def contents(adapter: EngineAdapter[Any], doc: Any, roots: Sequence[str]) -> dict[str, dict[str, bytes]]:
    return {root: adapter.read(doc, root) for root in roots}


def check_doc(adapter: EngineAdapter[Any], expected: dict[str, dict[str, bytes]]) -> Callable[[Any], None]:
    def check(doc: Any) -> None:
        diff_maps(adapter.name, contents(adapter, doc, list(expected)), expected)

    return check


def guarded(result: Result, measure: Callable[[], list[float]], progress: Progress) -> Result:
    """Run one measurement; a failed check or a missing operation becomes the result's status."""
    try:
        result.samples = measure()
    except Diverged as exc:
        result.status, result.note, result.samples = DIVERGED, str(exc), []
    except Unsupported as exc:
        result.status, result.note, result.samples = UNSUPPORTED, str(exc), []
    progress.result(result)
    return result


class LimitTracker:
    """Remembers which subjects went over their time limit, to skip them at larger sizes.

    Why: the sweeps grow sizes geometrically, so an engine that needed more than the limit at one
    size needs several times more at the next. Skipping is reported (``timeout``, with the size
    and the limit that stopped it), so the table shows where an engine fell off, not a gap.
    """

    def __init__(self) -> None:
        self.stopped: dict[str, str] = {}

    def skip(self, subject: str) -> str | None:
        return self.stopped.get(subject)

    def record(self, results: Sequence[Result]) -> None:
        for r in results:
            if r.subject in self.stopped:
                continue
            if r.status == TIMEOUT:
                self.stopped[r.subject] = f"skipped: timed out at n={r.size:,} ({r.note})"
            elif "over_limit_s" in r.extra:
                self.stopped[r.subject] = (
                    f"skipped: a run at n={r.size:,} took longer than the {r.extra['over_limit_s']:g} s limit"
                )

    def skipped_result(self, template: Result) -> Result:
        template.status = TIMEOUT
        template.note = self.stopped[template.subject]
        return template


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A scratch directory for one workload's servers, profiles and stores, removed afterwards.

    Under the system temp directory, which is where a real profile's or relay's files would sit
    on this machine, so fsync costs alike; cleanup ignores files a killed server left behind.
    """
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as path:
        yield Path(path)


class Suite:
    def __init__(
        self,
        name: str,
        description: str,
        build: Callable[[dict[str, EngineAdapter[Any]]], list[Workload]],
        targets: tuple[Target, ...] = (),
        uses_engines: bool = True,
    ) -> None:
        self.name = name
        self.description = description
        self.build = build
        self.targets = targets
        self.uses_engines = uses_engines
        """Whether the suite measures the engine adapters (the runner starts Node only if one does)."""
