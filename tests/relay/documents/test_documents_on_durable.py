"""``on_durable`` fires once per committed append, in sequence order, and never for refused input.

The relay acknowledges and fans out from this callback; if it ran out of order, subscribers would
see sequence gaps and re-sync for nothing, and a sender could see its ack after later updates.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crdt_core.engine import Replica
from relay.documents.manager import DocumentManager
from relay.store import AppendResult, SQLiteDocumentStore


def no_check(replica: Replica, update: bytes) -> None:
    return None


async def test_callbacks_run_in_seq_order_under_concurrency(tmp_path: Path) -> None:
    store = await SQLiteDocumentStore.open(tmp_path)
    fired: list[int] = []

    def on_durable(result: AppendResult, checked: None, extra: bytes | None) -> None:
        fired.extend(result.seqs)

    async with DocumentManager(store) as manager:
        writers = [Replica(1000 + i) for i in range(40)]
        updates = [w.write([("m", f"k{i}", b"v")]) for i, w in enumerate(writers)]
        results = await asyncio.gather(
            *(manager.submit("doc", u, no_check, on_durable=on_durable) for u in updates)
        )
        # A re-send is a no-op: no callback, no new seq.
        again = await manager.submit("doc", updates[0], no_check, on_durable=on_durable)
    await store.close()
    assert again.noop
    assert fired == sorted(fired) == list(range(1, 41))
    assert sorted(r.update_seq for r in results if r.update_seq is not None) == fired


async def test_no_callback_for_a_refused_update(tmp_path: Path) -> None:
    store = await SQLiteDocumentStore.open(tmp_path)
    fired: list[AppendResult] = []

    def refuse(replica: Replica, update: bytes) -> None:
        raise PermissionError("refused")

    async with DocumentManager(store) as manager:
        update = Replica(7).write([("m", "k", b"v")])
        with pytest.raises(PermissionError):
            await manager.submit("doc", update, refuse, on_durable=lambda r, c, e: fired.append(r))
    await store.close()
    assert fired == []
