"""Raw pycrdt, the baseline: the same engine crdt_core wraps, driven the cheapest idiomatic way.

Why this is the baseline: it tells how much crdt_core's wrapper costs on top of the engine it
wraps. To keep the comparison honest the baseline gets the fastest way we found to obtain each
transaction's update: a document observer (measured here about 3x cheaper per write than
``get_state()`` before and ``get_update(state)`` after the transaction). The observer is attached
on the first local write only, so documents that only apply remote updates pay nothing for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from typing import Any

import pycrdt

from benchmarks.adapters.base import BaseAdapter, Entry, Patch

__all__ = ["PycrdtAdapter", "PycrdtDoc"]


class _Slot:
    """Receives each transaction's update; holds no reference back to the document."""

    __slots__ = ("update",)

    def __init__(self) -> None:
        self.update = b""

    def __call__(self, event: Any) -> None:
        self.update = event.update


class PycrdtDoc:
    __slots__ = ("doc", "maps", "slot", "sub", "texts")

    def __init__(self, client_id: int) -> None:
        self.doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        self.maps: dict[str, pycrdt.Map[Any]] = {}
        self.texts: dict[str, pycrdt.Text] = {}
        self.slot = _Slot()
        self.sub: Any = None

    def __del__(self) -> None:
        # pycrdt holds observers from Rust, out of the collector's sight: without this, a
        # document that was written to would never be freed during a long benchmark run.
        if self.sub is not None:
            try:
                self.doc.unobserve(self.sub)
            except BaseException:  # noqa: BLE001 - interpreter shutdown
                pass

    def map(self, root: str) -> pycrdt.Map[Any]:
        found = self.maps.get(root)
        if found is None:
            found = self.maps[root] = self.doc.get(root, type=pycrdt.Map)
        return found

    def text(self, root: str) -> pycrdt.Text:
        found = self.texts.get(root)
        if found is None:
            found = self.texts[root] = self.doc.get(root, type=pycrdt.Text)
        return found

    def observe(self) -> None:
        if self.sub is None:
            self.sub = self.doc.observe(self.slot)
        self.slot.update = b"\x00\x00"


class PycrdtAdapter(BaseAdapter):
    name = "pycrdt"
    supports_text = True
    notes = "raw pycrdt Doc/Map; each write's update captured by a document observer"

    def version(self) -> str:
        return _dist_version("pycrdt")

    def new_doc(self, client_id: int) -> PycrdtDoc:
        return PycrdtDoc(client_id)

    def write(self, doc: PycrdtDoc, entries: Sequence[Entry]) -> bytes:
        doc.observe()
        with doc.doc.transaction():
            for root, key, value in entries:
                doc.map(root)[key] = value
        return bytes(doc.slot.update)

    def edit_text(self, doc: PycrdtDoc, root: str, patches: Sequence[Patch]) -> bytes:
        doc.observe()
        text = doc.text(root)
        with doc.doc.transaction():
            for pos, delete, insert in patches:
                if delete:
                    del text[pos : pos + delete]
                if insert:
                    text.insert(pos, insert)
        return bytes(doc.slot.update)

    def edit_many(
        self, doc: PycrdtDoc, root: str, transactions: Sequence[Sequence[Patch]], keep_updates: bool = True
    ) -> list[bytes]:
        if keep_updates:
            return super().edit_many(doc, root, transactions, keep_updates)
        # No observer when nobody wants the updates: a trace replay measures the edits alone.
        text, transaction = doc.text(root), doc.doc.transaction
        for patches in transactions:
            with transaction():
                for pos, delete, insert in patches:
                    if delete:
                        del text[pos : pos + delete]
                    if insert:
                        text.insert(pos, insert)
        return []

    def text(self, doc: PycrdtDoc, root: str) -> str:
        return str(doc.text(root))

    def encode_state(self, doc: PycrdtDoc) -> bytes:
        return bytes(doc.doc.get_update())

    def state_vector(self, doc: PycrdtDoc) -> bytes:
        return bytes(doc.doc.get_state())

    def diff(self, doc: PycrdtDoc, state_vector: bytes) -> bytes:
        return bytes(doc.doc.get_update(state_vector))

    def apply(self, doc: PycrdtDoc, update: bytes) -> None:
        doc.doc.apply_update(update)

    def merge(self, updates: Sequence[bytes]) -> bytes:
        return bytes(pycrdt.merge_updates(*updates))

    def read(self, doc: PycrdtDoc, root: str) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in doc.map(root).items() if isinstance(v, (bytes, bytearray))}
