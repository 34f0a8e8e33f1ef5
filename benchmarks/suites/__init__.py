"""Benchmark suites by name. A suite is a list of workloads built for the available adapters.

Why a registry: ``--suite`` picks suites by name and ``list`` shows them; the relay and client
suites of issue 6 plug in here as they land, without touching the runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.adapters import EngineAdapter
from benchmarks.harness import Target, Workload

__all__ = ["SUITES", "Suite"]


class Suite:
    def __init__(
        self,
        name: str,
        description: str,
        build: Callable[[dict[str, EngineAdapter[Any]]], list[Workload]],
        targets: tuple[Target, ...] = (),
    ) -> None:
        self.name = name
        self.description = description
        self.build = build
        self.targets = targets


def _crdt() -> Suite:
    from benchmarks.suites import crdt

    return Suite(
        "crdt",
        "engine and domain costs of crdt_core against raw pycrdt and y-py (issue 3's Measure section)",
        crdt.workloads,
        crdt.TARGETS,
    )


def _relay() -> Suite:
    from benchmarks.suites import relay

    built: Suite = relay.suite()
    return built


SUITES: dict[str, Callable[[], Suite]] = {"crdt": _crdt, "relay": _relay}
