"""Document loads and compactions report their durations (log line and metrics hook).

Why: after a restart every document is cold, and a large one holds back its first
acknowledgement while it loads; compactions fold whole documents. Both must be visible in the
relay's metrics (``quickslot_document_load_seconds``, ``quickslot_compaction_seconds``) and log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.store import SQLiteDocumentStore

DOC = "bookings:s1:2030-01-01"


async def test_a_load_and_an_automatic_compaction_report_their_seconds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="quickslot.relay")
    store = await SQLiteDocumentStore.open(tmp_path, compact_min_bytes=1)
    compactions: list[float] = []
    store.on_compaction = compactions.append
    writer = Replica(5)
    try:
        await store.append(DOC, [writer.write([("reservations", f"k{i}", b"x" * 200)]) for i in range(20)])
        loads: list[float] = []
        manager = DocumentManager(store, idle_seconds=3600)
        manager.on_load = loads.append
        await manager.start()
        try:
            await manager.apply(DOC, writer.write([("reservations", "last", b"y")]))
            await store.wait_idle()
        finally:
            await manager.close()
    finally:
        await store.close()
    assert len(loads) == 1 and loads[0] >= 0
    assert compactions and all(s >= 0 for s in compactions)
    events = {(r.getMessage(), getattr(r, "doc", None)): r for r in caplog.records}
    assert getattr(events[("document_loaded", DOC)], "seconds", -1) >= 0
    assert getattr(events[("compacted", DOC)], "seconds", -1) >= 0
