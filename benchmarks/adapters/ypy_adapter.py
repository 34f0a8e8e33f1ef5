"""y-py 0.6.2 (yrs 0.12), the abandoned predecessor of pycrdt, as a baseline of another Yrs.

Why it needs a mapping: y-py cannot store a binary map value (``TypeError``, docs/design.md "Engine"), so this
adapter stores each value as base64 text and decodes it on read. Its updates therefore carry
about a third more payload than the other engines'; the results say so rather than hide it.
y-py has no ``merge_updates``, so merging is reported as unsupported. It also drops updates that
arrive before their dependencies; no workload here reorders, and the convergence checks would
report ``diverged`` if one did.

Each transaction's update is taken from an ``observe_after_transaction`` callback, y-py's fastest
way (about 3x cheaper than ``diff_v1`` inside the transaction). y-py has no way to unsubscribe,
and the subscription keeps the document alive from Rust, so every y-py document that was written
to stays in memory until the process ends: acceptable for a benchmark run, noted here.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from typing import Any

from benchmarks.adapters.base import BaseAdapter, Entry, Patch, Unsupported

__all__ = ["YpyAdapter"]


class YpyDoc:
    __slots__ = ("doc", "maps", "texts", "last_update", "observing", "_sub")

    def __init__(self, y: Any, client_id: int) -> None:
        self.doc = y.YDoc(client_id=client_id)
        self.maps: dict[str, Any] = {}
        self.texts: dict[str, Any] = {}
        self.last_update = b""
        self.observing = False
        self._sub: Any = None

    def map(self, root: str) -> Any:
        found = self.maps.get(root)
        if found is None:
            found = self.maps[root] = self.doc.get_map(root)
        return found

    def text(self, root: str) -> Any:
        found = self.texts.get(root)
        if found is None:
            found = self.texts[root] = self.doc.get_text(root)
        return found

    def observe(self) -> None:
        if not self.observing:
            self._sub = self.doc.observe_after_transaction(self.on_transaction)
            self.observing = True
        self.last_update = b"\x00\x00"

    def on_transaction(self, event: Any) -> None:
        self.last_update = event.get_update()


class YpyAdapter(BaseAdapter):
    name = "y-py"
    supports_text = True
    notes = "y-py YDoc/YMap; values stored as base64 text (y-py cannot write binary); no merge_updates"

    def __init__(self) -> None:
        import y_py

        self._y = y_py

    def version(self) -> str:
        return _dist_version("y-py")

    def new_doc(self, client_id: int) -> YpyDoc:
        return YpyDoc(self._y, client_id)

    def write(self, doc: YpyDoc, entries: Sequence[Entry]) -> bytes:
        doc.observe()
        with doc.doc.begin_transaction() as txn:
            for root, key, value in entries:
                doc.map(root).set(txn, key, base64.b64encode(value).decode("ascii"))
        return bytes(doc.last_update)

    def edit_text(self, doc: YpyDoc, root: str, patches: Sequence[Patch]) -> bytes:
        doc.observe()
        self._edit(doc, root, patches)
        return bytes(doc.last_update)

    @staticmethod
    def _edit(doc: YpyDoc, root: str, patches: Sequence[Patch]) -> None:
        text = doc.text(root)
        with doc.doc.begin_transaction() as txn:
            for pos, delete, insert in patches:
                if delete:
                    text.delete_range(txn, pos, delete)
                if insert:
                    text.insert(txn, pos, insert)

    def edit_many(
        self, doc: YpyDoc, root: str, transactions: Sequence[Sequence[Patch]], keep_updates: bool = True
    ) -> list[bytes]:
        if keep_updates:
            return super().edit_many(doc, root, transactions, keep_updates)
        for patches in transactions:  # no observer when nobody wants the updates
            self._edit(doc, root, patches)
        return []

    def text(self, doc: YpyDoc, root: str) -> str:
        return str(doc.text(root))

    def encode_state(self, doc: YpyDoc) -> bytes:
        return bytes(self._y.encode_state_as_update(doc.doc))

    def state_vector(self, doc: YpyDoc) -> bytes:
        return bytes(self._y.encode_state_vector(doc.doc))

    def diff(self, doc: YpyDoc, state_vector: bytes) -> bytes:
        return bytes(self._y.encode_state_as_update(doc.doc, state_vector))

    def apply(self, doc: YpyDoc, update: bytes) -> None:
        self._y.apply_update(doc.doc, update)

    def merge(self, updates: Sequence[bytes]) -> bytes:
        raise Unsupported("y-py has no merge_updates")

    def read(self, doc: YpyDoc, root: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        ymap = doc.map(root)
        for key in ymap.keys():
            value = ymap[key]
            if isinstance(value, str):
                out[key] = base64.b64decode(value)
            elif isinstance(value, (bytes, bytearray)):
                out[key] = bytes(value)
        return out
