"""Engine adapters: the one small interface every CRDT engine is benchmarked through.

Why an interface: researchers compare engines (issue 6), and a new engine must be one file, not
a change to every workload. The interface is the smallest set of operations the map-heavy
booking workloads need, phrased in Yjs terms because every engine here speaks Yjs v1 updates:
create a document, write entries to top-level maps in one transaction (returning that
transaction's update, which is what a client queues for sync), encode the whole state, the state
vector, the diff against a peer's state vector, apply an update, merge raw updates, and read a
map back for the convergence checks that make a fast-but-wrong engine show up as ``diverged``.

Values are bytes throughout (QuickSlot's signed records); an engine that cannot store bytes maps
them to something it can store and says so in ``notes`` (y-py: base64 text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["ADAPTERS", "EngineAdapter", "Entry", "Unsupported", "load_adapters"]

DocT = TypeVar("DocT")

Entry = tuple[str, str, bytes]
"""``(top-level map, key, value)``: one map write."""


class Unsupported(Exception):
    """The engine has no such operation (y-py cannot merge raw updates); reported, never timed."""


class EngineAdapter(Protocol[DocT]):
    """What a workload may ask of an engine. ``DocT`` is the engine's own document handle."""

    name: str
    """Short stable name used in results (``pycrdt``, ``crdt_core``, ``y-py``)."""
    notes: str
    """How this adapter maps the workload onto the engine, when that is not obvious."""

    def version(self) -> str: ...

    def new_doc(self, client_id: int) -> DocT: ...

    def write(self, doc: DocT, entries: Sequence[Entry]) -> bytes:
        """Write entries in one transaction; returns the update that transaction produced."""
        ...

    def encode_state(self, doc: DocT) -> bytes: ...

    def state_vector(self, doc: DocT) -> bytes: ...

    def diff(self, doc: DocT, state_vector: bytes) -> bytes: ...

    def apply(self, doc: DocT, update: bytes) -> None: ...

    def merge(self, updates: Sequence[bytes]) -> bytes:
        """Merge raw updates without a document; raises :class:`Unsupported` if the engine cannot."""
        ...

    def read(self, doc: DocT, root: str) -> dict[str, bytes]:
        """Every entry of one top-level map, values as the bytes that were written."""
        ...


def _factories() -> dict[str, Callable[[], EngineAdapter[Any]]]:
    from benchmarks.adapters.core_adapter import CrdtCoreAdapter
    from benchmarks.adapters.pycrdt_adapter import PycrdtAdapter
    from benchmarks.adapters.ypy_adapter import YpyAdapter

    return {"pycrdt": PycrdtAdapter, "crdt_core": CrdtCoreAdapter, "y-py": YpyAdapter}


ADAPTERS: tuple[str, ...] = ("pycrdt", "crdt_core", "y-py")
"""Every adapter this package knows, baseline first."""


def load_adapters(names: Sequence[str] | None = None) -> tuple[dict[str, EngineAdapter[Any]], dict[str, str]]:
    """Instantiate the requested adapters; returns ``(available, {name: why unavailable})``.

    An engine that is not installed (y-py has no wheels past CPython 3.12) is skipped and the
    reason recorded in the results, rather than failing the run.
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
        except ImportError as exc:
            missing[name] = f"not installed ({exc})"
    return available, missing
