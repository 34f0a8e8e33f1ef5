"""The ``crdt`` suite of old, kept as an alias: ``--suite crdt`` runs ``engine`` and ``domain``.

Why keep it: earlier commands and docs say ``--suite crdt``, and scripts that ran it must go on
working after it was split into the engine suite (engine operations against other engines)
and the domain suite (booking rules on top of the engine). The runner expands the alias; the
names below are re-exported for code that imported them from here.
"""

from __future__ import annotations

from benchmarks.harness import Workload
from benchmarks.suites import domain, engine
from benchmarks.suites.common import Adapters
from benchmarks.suites.domain import BytesPerReservation, Compaction, Storm, Validation, VerdictTime
from benchmarks.suites.engine import ApplyUpdates, ConcurrentMerge, IncrementalDiff, LocalWrites

__all__ = [
    "TARGETS",
    "ApplyUpdates",
    "BytesPerReservation",
    "Compaction",
    "ConcurrentMerge",
    "IncrementalDiff",
    "LocalWrites",
    "Storm",
    "Validation",
    "VerdictTime",
    "workloads",
]

TARGETS = engine.TARGETS + domain.TARGETS


def workloads(adapters: Adapters) -> list[Workload]:
    return engine.workloads(adapters) + domain.workloads(adapters)
