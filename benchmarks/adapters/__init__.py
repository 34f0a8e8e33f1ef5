"""Engine adapters: the one small interface every CRDT engine is benchmarked through.

Why an interface: researchers compare engines, and a new engine must be one file, not
a change to every workload. The interface is the smallest set of operations the workloads need:
create a document, a local edit (map entries written in one transaction, or text patches applied
in one transaction), encode the whole state, the state vector, the diff against a peer's state
vector, apply an update, merge raw updates, and read a map or a text back for the convergence
checks that make a fast-but-wrong engine show up as ``diverged``.

Updates, state vectors and states are opaque bytes in each engine's own format: the Yrs engines
and Yjs exchange Yjs v1 updates, loro exchanges its own; no workload mixes engines. Map values
are bytes throughout (QuickSlot's signed records); an engine that cannot store bytes maps them to
something it can store and says so in ``notes`` (y-py: base64 text).

Bulk helpers (``write_many``, ``apply_many``, ``apply_batch``, ``edit_many``) have plain-loop defaults in
:class:`BaseAdapter`. They exist for engines in another process (Yjs on Node), which run the loop
on their side so that the timed region is the engine's work, not one IPC round trip per edit. The
same reason gives every adapter a ``clock``: in-process engines use ``time.perf_counter``; the
Node adapter's clock only advances by the time Node measured around the engine work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.adapters.base import (
    BaseAdapter,
    EngineAdapter,
    EngineUnavailable,
    Entry,
    Patch,
    Unsupported,
)

__all__ = [
    "ADAPTERS",
    "BaseAdapter",
    "EngineAdapter",
    "EngineUnavailable",
    "Entry",
    "Patch",
    "Unsupported",
    "load_adapters",
]


def _factories() -> dict[str, Callable[[], EngineAdapter[Any]]]:
    from benchmarks.adapters.core_adapter import CrdtCoreAdapter
    from benchmarks.adapters.loro_adapter import LoroAdapter
    from benchmarks.adapters.pycrdt_adapter import PycrdtAdapter
    from benchmarks.adapters.yjs_adapter import YjsNodeAdapter
    from benchmarks.adapters.ypy_adapter import YpyAdapter

    return {
        "pycrdt": PycrdtAdapter,
        "crdt_core": CrdtCoreAdapter,
        "y-py": YpyAdapter,
        "loro": LoroAdapter,
        "yjs": YjsNodeAdapter,
    }


ADAPTERS: tuple[str, ...] = ("pycrdt", "crdt_core", "y-py", "loro", "yjs")
"""Every adapter this package knows, baseline first."""


def load_adapters(names: Sequence[str] | None = None) -> tuple[dict[str, EngineAdapter[Any]], dict[str, str]]:
    """Instantiate the requested adapters; returns ``(available, {name: why unavailable})``.

    An engine that is not installed (y-py has no wheels past CPython 3.12; loro and Node are
    optional) is skipped and the reason recorded in the results, rather than failing the run.
    """
    factories = _factories()
    available: dict[str, EngineAdapter[Any]] = {}
    missing: dict[str, str] = {}
    for name in names or ADAPTERS:
        factory = factories.get(name)
        if factory is None:
            missing[name] = "unknown engine"
            continue
        try:
            available[name] = factory()
        except EngineUnavailable as exc:
            missing[name] = str(exc)
        except ImportError as exc:
            missing[name] = f"not installed ({exc})"
    return available, missing


def close_adapters(adapters: dict[str, EngineAdapter[Any]]) -> None:
    for adapter in adapters.values():
        adapter.close()
