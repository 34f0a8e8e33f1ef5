"""The original design's client store, the baseline: plain SQLite tables and a ``sync_queue``.

Why this baseline: before the CRDT documents, a booking was a row in a ``reservations`` table plus
a ``sync_queue`` row (the server decided who got the seat), and browsing read a ``shops`` table.
That is the cheapest a durable offline booking can be, so the client's costs are stated as a
multiple of it. Same SQLite, same file settings as ``client/storage/store.py`` (WAL, ``synchronous=FULL``,
``busy_timeout``, ``BEGIN IMMEDIATE`` per write) and, for the named baseline, the same driver
(aiosqlite: one thread hop per statement); :func:`book_sync` is the same without aiosqlite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import aiosqlite

from benchmarks.client_bench.world import DOC, SHOP, SLOTS, ShopRow, shop_rows

__all__ = [
    "PRAGMAS",
    "book",
    "book_sync",
    "build",
    "open_async",
    "open_sync",
    "shops_in",
]

#: The pragmas ``client.storage.store.Store.open`` sets, in the same order (checked against a live store
#: by the suite, which records both in the results).
PRAGMAS = (
    "PRAGMA busy_timeout = 10000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)

_SCHEMA = (
    """CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        shop_id TEXT NOT NULL,
        day TEXT NOT NULL,
        slot_id TEXT NOT NULL,
        customer TEXT NOT NULL,
        party INTEGER NOT NULL,
        note TEXT,
        status TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    )""",
    "CREATE INDEX reservations_by_slot ON reservations(shop_id, day, slot_id)",
    "CREATE INDEX reservations_by_customer ON reservations(customer, day)",
    """CREATE TABLE sync_queue (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        entity_type TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        operation TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        retry_count INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )""",
    """CREATE TABLE shops (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        category TEXT NOT NULL,
        location TEXT NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        rating REAL,
        active INTEGER NOT NULL
    )""",
    "CREATE INDEX shops_by_category ON shops(category, name)",
)

_DAY = DOC.day.isoformat() if DOC.day is not None else "2027-06-01"
_INSERT_RESERVATION = (
    "INSERT INTO reservations(id, shop_id, day, slot_id, customer, party, note, status, created_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)"
)
_INSERT_QUEUE = (
    "INSERT INTO sync_queue(entity_type, entity_id, operation, payload, created_ms) "
    "VALUES ('reservation', ?, 'create', ?, ?)"
)
_SHOPS_IN = (
    "SELECT id, name, category, location, lat, lon, rating, active FROM shops "
    "WHERE category = ? AND active = 1 ORDER BY name, id"
)


def _reservation(i: int, customer: str) -> tuple[Any, ...]:
    return (f"r{i:08d}-{customer}", SHOP, _DAY, SLOTS[i % len(SLOTS)], customer, 1 + i % 4, None, 1_000 + i)


def build(path: Path, *, reservations: int, shops: int) -> Path:
    """A plain store with ``reservations`` rows of other customers and ``shops`` catalog rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_sync(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.executemany(_INSERT_RESERVATION, (_reservation(i, f"cust{i // 2}") for i in range(reservations)))
        rows: list[ShopRow] = shop_rows(shops)
        conn.executemany("INSERT INTO shops VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def open_sync(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn


async def open_async(path: Path) -> aiosqlite.Connection:
    """Opened the way ``Store.open`` opens its file (a daemon worker thread, the same pragmas)."""
    pending = aiosqlite.connect(str(path), isolation_level=None)
    worker = getattr(pending, "_thread", None)
    if isinstance(worker, threading.Thread) and not worker.is_alive():
        worker.daemon = True
    db = await pending
    for pragma in PRAGMAS:
        await db.execute(pragma)
    return db


def _payload(row: tuple[Any, ...]) -> str:
    rid, shop, day, slot, customer, party, note, created = row
    return json.dumps(
        {"id": rid, "shop_id": shop, "day": day, "slot_id": slot, "customer": customer, "party": party,
         "note": note, "created_ms": created},
        separators=(",", ":"),
    )  # fmt: skip


async def book(db: aiosqlite.Connection, i: int, customer: str) -> None:
    """One booking the original way: the reservation row and its queue row, one transaction."""
    row = _reservation(i, customer)
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute(_INSERT_RESERVATION, row)
        await db.execute(_INSERT_QUEUE, (row[0], _payload(row), row[-1]))
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


def book_sync(conn: sqlite3.Connection, i: int, customer: str) -> None:
    """:func:`book` through the ``sqlite3`` module directly: no worker thread, no event loop."""
    row = _reservation(i, customer)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_INSERT_RESERVATION, row)
        conn.execute(_INSERT_QUEUE, (row[0], _payload(row), row[-1]))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


async def shops_in(db: aiosqlite.Connection, category: str) -> list[tuple[Any, ...]]:
    """The category listing the original way: an indexed query on the plain ``shops`` table."""
    rows = await db.execute_fetchall(_SHOPS_IN, (category,))
    return [tuple(r) for r in rows]
