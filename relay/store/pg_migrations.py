"""Versioned schema migrations for the relay's PostgreSQL database, applied at start.

Why this shape:

* **Numbered migrations per component.** The document store and the account store own separate
  tables and change them on their own schedules, so each keeps its own numbered list
  (:data:`DOCUMENT_MIGRATIONS` here; the accounts code passes its own list under another
  component name). ``schema_migrations`` records ``(component, version)`` for every migration
  applied, so a migration runs exactly once per database, and a database that holds a version
  newer than this relay knows is refused (an old binary must not write a newer schema).
* **Under an advisory lock, in one transaction.** Several relay nodes usually start together
  against one database. Each takes ``pg_advisory_xact_lock`` before looking at
  ``schema_migrations``: the first applies what is missing and commits, the others then see it
  applied and do nothing. PostgreSQL's DDL is transactional, so a migration that fails leaves
  neither its tables nor its ``schema_migrations`` row behind, and the next start retries it.
* **The epoch lives in the database** (``relay_meta``), not in a data directory: every node
  sharing the database must announce the same epoch, and it must change when the database is
  replaced (a restore into a new cluster gets a new one only if the operator resets it; a
  ``pg_dump`` restore keeps it, like copying a SQLite data directory does).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import asyncpg

from relay.store.base import StoreError

__all__ = [
    "DOCUMENT_COMPONENT",
    "DOCUMENT_MIGRATIONS",
    "Migration",
    "apply_migrations",
    "load_or_create_epoch",
]

#: One lock id for every component's migrations (any constant works; this is "qsmigrat" in hex-ish).
MIGRATION_LOCK_ID: Final = 0x71736D6967726174

DOCUMENT_COMPONENT: Final = "documents"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


# The bootstrap tables every component relies on; created under the lock before anything else.
_BOOTSTRAP: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component   text        NOT NULL,
    version     integer     NOT NULL,
    description text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (component, version)
);
CREATE TABLE IF NOT EXISTS relay_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
"""

DOCUMENT_MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "document heads, update log and snapshots",
        """
        CREATE TABLE doc_head (
            doc_id         text PRIMARY KEY,
            seq            bigint NOT NULL DEFAULT 0,  -- highest committed seq (0: none yet)
            next_stamp     bigint NOT NULL DEFAULT 1,  -- next stamp number to hand out
            log_rows       bigint NOT NULL DEFAULT 0,  -- rows in doc_log (the compaction rule reads these)
            log_bytes      bigint NOT NULL DEFAULT 0,
            snapshot_seq   bigint NOT NULL DEFAULT 0,  -- doc_snapshot.covered_seq, 0 without one
            snapshot_bytes bigint NOT NULL DEFAULT 0,
            updated        timestamptz NOT NULL DEFAULT now(),
            CHECK (seq >= 0 AND next_stamp >= 1 AND snapshot_seq <= seq)
        );
        CREATE TABLE doc_log (
            doc_id  text   NOT NULL,
            seq     bigint NOT NULL,
            data    bytea  NOT NULL,
            created timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (doc_id, seq)
        );
        CREATE TABLE doc_snapshot (
            doc_id      text PRIMARY KEY,
            data        bytea  NOT NULL,
            covered_seq bigint NOT NULL,
            created     timestamptz NOT NULL DEFAULT now()
        );
        -- compact_all's "documents with a log" without scanning every head.
        CREATE INDEX doc_head_with_log ON doc_head (doc_id) WHERE log_rows > 0;
        """,
    ),
)


def _check(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")


async def apply_migrations(
    conn: asyncpg.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """Bring ``component``'s tables up to the last of ``migrations``; returns the versions applied.

    Safe to call from many processes at once (see the module docstring). Raises
    :class:`StoreError` if the database is ahead of this code.
    """
    _check(migrations)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(_BOOTSTRAP)
        rows = await conn.fetch("SELECT version FROM schema_migrations WHERE component = $1", component)
        done = {int(r["version"]) for r in rows}
        newest_known = len(migrations)
        if done and max(done) > newest_known:
            raise StoreError(
                f"the database has {component} schema version {max(done)}, newer than this relay's "
                f"{newest_known}: upgrade the relay"
            )
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, description) VALUES ($1, $2, $3)",
                component,
                migration.version,
                migration.description,
            )
            applied.append(migration.version)
        return applied


async def load_or_create_epoch(conn: asyncpg.Connection) -> str:
    """The database's epoch (``relay_meta.epoch``), created on first use; call after migrations.

    ``ON CONFLICT DO NOTHING`` then a read: when several nodes race, exactly one random id wins
    and every node reads that one.
    """
    await conn.execute(
        "INSERT INTO relay_meta (key, value) VALUES ('epoch', $1) ON CONFLICT (key) DO NOTHING",
        secrets.token_hex(16),
    )
    value = await conn.fetchval("SELECT value FROM relay_meta WHERE key = 'epoch'")
    if not value:
        raise StoreError("relay_meta has an empty epoch")
    return str(value)
