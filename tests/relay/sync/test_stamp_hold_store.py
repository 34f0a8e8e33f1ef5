"""The stores' meta values and the restore detection built on them, on SQLite and on PostgreSQL.

``relay.sync.stamp_hold`` notices a restore by comparing the epoch a store's documents were last
served under (a meta value, backed up with the documents) with the epoch it is opened under
now, and keeps its hold in the same meta so a restarted relay resumes it. Both run here against
real stores: a data directory for SQLite, a fresh database on a real server for PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store.open import AnyDocumentStore
from relay.sync.stamp_hold import META_LINEAGE, META_SINCE, META_UNTIL, open_stamp_hold
from tests.relay.store_backends import BACKENDS, StoreBackend, backend_fixture


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreBackend]:
    async for b in backend_fixture(request, tmp_path):
        yield b


async def new_epoch(backend: StoreBackend, store: AnyDocumentStore) -> None:
    """What the restore procedure does: close, replace the epoch (docs/operations.md)."""
    await store.close()
    if backend.kind == "postgres":
        pool = await backend.pool()
        await pool.execute("DELETE FROM relay_meta WHERE key = 'epoch'")
    else:
        (Path(backend.location) / "epoch").unlink()


async def test_meta_values_are_durable_and_deletable(backend: StoreBackend) -> None:
    store = await backend.open()
    assert await store.get_meta("documents_epoch") is None
    await store.put_meta({"documents_epoch": "e1", "restore_hold_until": "12.5"})
    await store.put_meta({"restore_hold_until": None, "restore_hold_since": "3"})
    await store.close()
    again = await backend.open()
    assert await again.get_meta("documents_epoch") == "e1"
    assert await again.get_meta("restore_hold_until") is None
    assert await again.get_meta("restore_hold_since") == "3"
    assert again.epoch == store.epoch  # the epoch is not a meta value and was not touched
    for bad in ("epoch", "", "Upper", "x" * 65):
        with pytest.raises(ValueError):
            await again.put_meta({bad: "v"})
        with pytest.raises(ValueError):
            await again.get_meta(bad)


async def test_documents_written_since_a_moment_are_listed(backend: StoreBackend) -> None:
    store = await backend.open()
    await store.append("bookings:s:2026-01-01", [b"\x00\x00"])
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    await store.append("bookings:s:2026-01-02", [b"\x00\x00"])
    assert await store.docs_updated_since(cut) == ["bookings:s:2026-01-02"]
    assert await store.docs_updated_since(cut - 3600) == ["bookings:s:2026-01-01", "bookings:s:2026-01-02"]


async def test_a_new_epoch_over_served_documents_starts_a_hold_that_a_restart_resumes(
    backend: StoreBackend,
) -> None:
    store = await backend.open()
    first = await open_stamp_hold(store, 600)  # a first start: nothing to hold for
    assert not first.active and await store.get_meta(META_LINEAGE) == store.epoch
    await new_epoch(backend, store)

    restored = await backend.open()
    assert restored.epoch != store.epoch
    t0 = time.time()
    hold = await open_stamp_hold(restored, 600, clock=lambda: t0)
    assert hold.active and hold.window_open() and hold.until == t0 + 600
    assert hold.holds("bookings:s:2026-01-01")
    assert await restored.get_meta(META_LINEAGE) == restored.epoch
    assert await restored.get_meta(META_UNTIL) == repr(t0 + 600)
    await restored.close()

    # A restart during the window resumes it, to the same end.
    again = await backend.open()
    resumed = await open_stamp_hold(again, 600, clock=lambda: t0 + 100)
    assert resumed.active and resumed.until == t0 + 600 and resumed.since == t0
    # A restart with a shorter hold (0: end it now) shortens it; the sweep still runs.
    ended = await open_stamp_hold(again, 0, clock=lambda: t0 + 200)
    assert ended.active and ended.until == t0 + 200 and not ended.window_open()


async def test_a_restore_with_the_hold_disabled_records_the_lineage_and_holds_nothing(
    backend: StoreBackend,
) -> None:
    store = await backend.open()
    await open_stamp_hold(store, 600)
    await new_epoch(backend, store)
    restored = await backend.open()
    hold = await open_stamp_hold(restored, 0)
    assert not hold.active and not hold.holds("bookings:s:2026-01-01")
    assert await restored.get_meta(META_LINEAGE) == restored.epoch
    assert await restored.get_meta(META_UNTIL) is None and await restored.get_meta(META_SINCE) is None
    with pytest.raises(ValueError):
        await open_stamp_hold(restored, -1)
