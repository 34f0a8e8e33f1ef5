"""The adapter interface (module docstring of :mod:`benchmarks.adapters`): the types and the
plain-loop defaults every engine adapter builds on. Separate from the registry in
``benchmarks/adapters/__init__.py`` so the adapters import this module, not the package that
imports them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["BaseAdapter", "EngineAdapter", "EngineUnavailable", "Entry", "Patch", "Unsupported"]

DocT = TypeVar("DocT")

Entry = tuple[str, str, bytes]
"""``(top-level map, key, value)``: one map write."""

Patch = tuple[int, int, str]
"""``(position, characters to delete, text to insert)`` in Unicode characters, as the traces have it."""


class Unsupported(Exception):
    """The engine has no such operation (y-py cannot merge raw updates); reported, never timed."""


class EngineAdapter(Protocol[DocT]):
    """What a workload may ask of an engine. ``DocT`` is the engine's own document handle."""

    name: str
    """Short stable name used in results (``pycrdt``, ``crdt_core``, ``y-py``, ``loro``, ``yjs``)."""
    notes: str
    """How this adapter maps the workload onto the engine, when that is not obvious."""
    supports_text: bool
    """Whether the text operations work (the text workloads report the others unsupported)."""

    def version(self) -> str: ...

    def new_doc(self, client_id: int) -> DocT: ...

    def write(self, doc: DocT, entries: Sequence[Entry]) -> bytes:
        """Write entries in one transaction; returns the update that transaction produced."""
        ...

    def edit_text(self, doc: DocT, root: str, patches: Sequence[Patch]) -> bytes:
        """Apply text patches (in order) in one transaction; returns that transaction's update.

        Raises :class:`Unsupported` for an engine without a text type (crdt_core stores maps only).
        """
        ...

    def insert_text(self, doc: DocT, root: str, pos: int, text: str) -> bytes: ...

    def delete_text(self, doc: DocT, root: str, pos: int, length: int) -> bytes: ...

    def text(self, doc: DocT, root: str) -> str: ...

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

    def write_many(self, doc: DocT, transactions: Sequence[Sequence[Entry]]) -> list[bytes]:
        """``write`` for each transaction in order; returns every transaction's update."""
        ...

    def apply_many(self, doc: DocT, updates: Sequence[bytes]) -> None:
        """``apply`` each update in order (in the engine's process, for Yjs)."""
        ...

    def apply_batch(self, doc: DocT, updates: Sequence[bytes]) -> None:
        """Take many updates at once, the engine's own fastest way (loro: ``import_batch``).

        The default is ``apply_many``: the Yrs engines and Yjs have no batch import (their
        ``merge_updates`` is measured separately, and is quadratic in Yrs).
        """
        ...

    def edit_many(
        self, doc: DocT, root: str, transactions: Sequence[Sequence[Patch]], keep_updates: bool = True
    ) -> list[bytes]:
        """``edit_text`` for each transaction in order; the updates ([] unless ``keep_updates``)."""
        ...

    def clock(self) -> float:
        """Seconds on the clock a timed region is read from (see the module docstring)."""
        ...

    def close(self) -> None:
        """Release processes or other resources the adapter holds (a no-op in process)."""
        ...


class BaseAdapter:
    """Plain-loop defaults for the bulk helpers, and text reported unsupported unless overridden.

    Subclasses override the per-operation methods; the loops below call them, so an engine whose
    only override is ``write`` is still measured correctly (and the test's lossy adapter still
    diverges through ``write_many``).
    """

    name = "base"
    notes = ""
    supports_text = False

    def edit_text(self, doc: Any, root: str, patches: Sequence[Patch]) -> bytes:
        raise Unsupported(f"{self.name} has no text type")

    def text(self, doc: Any, root: str) -> str:
        raise Unsupported(f"{self.name} has no text type")

    def insert_text(self, doc: Any, root: str, pos: int, text: str) -> bytes:
        return self.edit_text(doc, root, ((pos, 0, text),))

    def delete_text(self, doc: Any, root: str, pos: int, length: int) -> bytes:
        return self.edit_text(doc, root, ((pos, length, ""),))

    def write(self, doc: Any, entries: Sequence[Entry]) -> bytes:
        raise NotImplementedError

    def apply(self, doc: Any, update: bytes) -> None:
        raise NotImplementedError

    def write_many(self, doc: Any, transactions: Sequence[Sequence[Entry]]) -> list[bytes]:
        write = self.write
        return [write(doc, entries) for entries in transactions]

    def apply_many(self, doc: Any, updates: Sequence[bytes]) -> None:
        apply = self.apply
        for update in updates:
            apply(doc, update)

    def apply_batch(self, doc: Any, updates: Sequence[bytes]) -> None:
        self.apply_many(doc, updates)

    def edit_many(
        self, doc: Any, root: str, transactions: Sequence[Sequence[Patch]], keep_updates: bool = True
    ) -> list[bytes]:
        edit = self.edit_text
        if keep_updates:
            return [edit(doc, root, patches) for patches in transactions]
        for patches in transactions:
            edit(doc, root, patches)
        return []

    def clock(self) -> float:
        return time.perf_counter()

    def close(self) -> None:
        return None


class EngineUnavailable(ImportError):
    """The engine cannot run here (not installed, no Node); the run records why and goes on."""
