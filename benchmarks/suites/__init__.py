"""Benchmark suites by name. A suite is a list of workloads built for the available adapters.

Why a registry: ``--suite`` picks suites by name and ``list`` shows them; the relay and client
suites plug in here, without touching the runner. ``ALIASES`` keeps old
names working: ``crdt`` (the first suite) is now ``engine`` plus ``domain``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

from benchmarks.suites.common import Suite

__all__ = ["ALIASES", "SUITES", "Suite", "expand"]


def _engine() -> Suite:
    from benchmarks.suites import engine

    return Suite("engine", engine.suite_description, engine.workloads, engine.TARGETS)


def _domain() -> Suite:
    from benchmarks.suites import domain

    return Suite("domain", domain.suite_description, domain.workloads, domain.TARGETS)


def _relay() -> Suite:
    from benchmarks.suites import relay

    built: Suite = relay.suite()
    built.uses_engines = False  # it runs servers, not the engine adapters
    return built


def _client() -> Suite:
    from benchmarks.suites import client  # type: ignore[attr-defined,unused-ignore]

    built: Suite = client.suite()
    return built


def _rest() -> Suite:
    from benchmarks.suites import rest

    built: Suite = rest.suite()
    return built


def _web() -> Suite:
    from benchmarks.suites import web

    built: Suite = web.suite()
    return built


SUITES: dict[str, Callable[[], Suite]] = {
    "engine": _engine,
    "domain": _domain,
    "relay": _relay,
    "rest": _rest,
    "web": _web,
}
if importlib.util.find_spec("benchmarks.suites.client") is not None:
    SUITES["client"] = _client

ALIASES: dict[str, tuple[str, ...]] = {"crdt": ("engine", "domain")}


def expand(names: Sequence[str]) -> list[str]:
    """Suite names with aliases replaced by what they stand for, each once, in order."""
    out: list[str] = []
    for name in names:
        for real in ALIASES.get(name, (name,)):
            if real not in out:
                out.append(real)
    return out
