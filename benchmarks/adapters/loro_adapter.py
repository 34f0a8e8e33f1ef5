"""loro (Rust, Python bindings), a CRDT engine of another design, as an outside baseline.

Why it is here: the Yrs engines all share one implementation's strengths and weaknesses (text
positions are found by walking the block list, which is what makes long traces superlinear in
pycrdt); loro uses a B-tree for text and its own update format, so it shows what the Python
bindings of a different engine cost on the same workloads.

The mapping: a local transaction is the edits followed by ``commit()``; its update is the bytes
``subscribe_local_update`` hands over at the commit (loro's own format, not Yjs). The state vector
is loro's encoded version vector, the diff is ``export(Updates(from=vv))``, the whole state an
export of all updates (the same shape Yjs' ``encode_state_as_update`` gives; a snapshot, which
also carries the materialised state, is larger). Map values are stored as bytes, natively. loro
has no way to merge updates without a document, so ``merge`` is reported unsupported; it does
have ``import_batch``, exposed as ``apply_batch``, which the workloads that receive many updates
at once use (and ``apply_updates`` times beside one-by-one).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version as _dist_version
from typing import Any

from benchmarks.adapters.base import BaseAdapter, Entry, Patch, Unsupported

__all__ = ["LoroAdapter"]


class LoroDocHandle:
    __slots__ = ("doc", "maps", "texts", "last_update", "sub")

    def __init__(self, loro: Any, client_id: int) -> None:
        self.doc = loro.LoroDoc()
        self.doc.peer_id = client_id
        self.maps: dict[str, Any] = {}
        self.texts: dict[str, Any] = {}
        self.last_update = b""
        self.sub: Any = None

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

    def on_update(self, update: bytes) -> bool:
        self.last_update = update
        return True  # keep the subscription

    def observe(self) -> None:
        if self.sub is None:
            self.sub = self.doc.subscribe_local_update(self.on_update)
        self.last_update = b""


class LoroAdapter(BaseAdapter):
    name = "loro"
    supports_text = True
    notes = (
        "loro LoroDoc/LoroMap/LoroText; loro's own update format; a transaction is edits + commit(), "
        "its update taken from subscribe_local_update; whole state = export of all updates; "
        "no merge without a document"
    )

    def __init__(self) -> None:
        import loro

        self._loro: Any = loro  # loro's stubs leave some constructors untyped
        self._all = self._loro.ExportMode.Updates(self._loro.VersionVector())

    def version(self) -> str:
        return _dist_version("loro")

    def new_doc(self, client_id: int) -> LoroDocHandle:
        return LoroDocHandle(self._loro, client_id)

    def write(self, doc: LoroDocHandle, entries: Sequence[Entry]) -> bytes:
        doc.observe()
        for root, key, value in entries:
            doc.map(root).insert(key, value)
        doc.doc.commit()
        return doc.last_update

    def edit_text(self, doc: LoroDocHandle, root: str, patches: Sequence[Patch]) -> bytes:
        doc.observe()
        self._edit(doc, root, patches)
        return doc.last_update

    @staticmethod
    def _edit(doc: LoroDocHandle, root: str, patches: Sequence[Patch]) -> None:
        text = doc.text(root)
        for pos, delete, insert in patches:
            if delete:
                text.delete(pos, delete)
            if insert:
                text.insert(pos, insert)
        doc.doc.commit()

    def edit_many(
        self,
        doc: LoroDocHandle,
        root: str,
        transactions: Sequence[Sequence[Patch]],
        keep_updates: bool = True,
    ) -> list[bytes]:
        if keep_updates:
            return super().edit_many(doc, root, transactions, keep_updates)
        edit = self._edit
        for patches in transactions:
            edit(doc, root, patches)
        return []

    def text(self, doc: LoroDocHandle, root: str) -> str:
        return str(doc.text(root).to_string())

    def encode_state(self, doc: LoroDocHandle) -> bytes:
        return bytes(doc.doc.export(self._all))

    def state_vector(self, doc: LoroDocHandle) -> bytes:
        return bytes(doc.doc.oplog_vv.encode())

    def diff(self, doc: LoroDocHandle, state_vector: bytes) -> bytes:
        vv = self._loro.VersionVector.decode(state_vector)
        return bytes(doc.doc.export(self._loro.ExportMode.Updates(vv)))

    def apply(self, doc: LoroDocHandle, update: bytes) -> None:
        doc.doc.import_(update)

    def apply_many(self, doc: LoroDocHandle, updates: Sequence[bytes]) -> None:
        imp = doc.doc.import_
        for update in updates:
            imp(update)

    def apply_batch(self, doc: LoroDocHandle, updates: Sequence[bytes]) -> None:
        # Importing updates one at a time from many peers is where loro is slowest (each import
        # recomputes the state diff); import_batch is its documented way to take many at once.
        doc.doc.import_batch(list(updates))

    def merge(self, updates: Sequence[bytes]) -> bytes:
        raise Unsupported("loro has no merge of raw updates without a document")

    def read(self, doc: LoroDocHandle, root: str) -> dict[str, bytes]:
        value = doc.map(root).get_value()
        return {k: bytes(v) for k, v in value.items() if isinstance(v, (bytes, bytearray))}
