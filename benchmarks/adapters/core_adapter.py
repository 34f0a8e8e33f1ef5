"""crdt_core's engine wrapper (``crdt_core.engine.Replica``), the thing QuickSlot actually ships.

Why through ``Replica`` and not the authoring API: the adapter interface writes bytes that are
already records, so this measures the wrapper alone. The workloads that care about the typed,
signing API (``Author.book``) time it separately, with and without the Ed25519 signature.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.adapters.base import BaseAdapter, Entry
from crdt_core import __version__ as _core_version
from crdt_core.engine import Replica, merge_updates

__all__ = ["CrdtCoreAdapter"]


class CrdtCoreAdapter(BaseAdapter):
    name = "crdt_core"
    notes = (
        "crdt_core.engine.Replica (pycrdt underneath); writes pre-signed record bytes; "
        "no text type (QuickSlot documents are maps), so text workloads report it unsupported"
    )

    def version(self) -> str:
        return _core_version

    def new_doc(self, client_id: int) -> Replica:
        return Replica(client_id)

    def write(self, doc: Replica, entries: Sequence[Entry]) -> bytes:
        return doc.write(entries)

    def encode_state(self, doc: Replica) -> bytes:
        return doc.encode_state()

    def state_vector(self, doc: Replica) -> bytes:
        return doc.state_vector()

    def diff(self, doc: Replica, state_vector: bytes) -> bytes:
        return doc.diff(state_vector)

    def apply(self, doc: Replica, update: bytes) -> None:
        doc.apply_update(update)

    def merge(self, updates: Sequence[bytes]) -> bytes:
        return merge_updates(updates)

    def read(self, doc: Replica, root: str) -> dict[str, bytes]:
        return dict(doc.items(root))
