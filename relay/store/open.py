"""Open the document store a relay configuration names: one place that picks the backend.

``config.store_url`` set (a ``postgresql://`` URL) means the shared PostgreSQL store, with reads
from ``config.store_replica_url`` when given; unset means the embedded SQLite file in the data
directory. The relay app, ``quickslot-relay compact`` and ``stats`` all open the store here, so
they can never disagree about where the documents are.
"""

from __future__ import annotations

from typing import Any

from relay.ops.config import RelayConfig, is_postgres_url
from relay.store.postgres import PostgresDocumentStore
from relay.store.sqlite import SQLiteDocumentStore

__all__ = ["AnyDocumentStore", "open_document_store", "store_description"]

#: Both stores keep :class:`relay.store.base.DocumentStore`'s promises and also offer
#: ``compactions_done`` and ``wait_idle`` (metrics, tests, shutdown).
AnyDocumentStore = SQLiteDocumentStore | PostgresDocumentStore


async def open_document_store(config: RelayConfig, **options: Any) -> AnyDocumentStore:
    """Open (and start) the configured store; ``options`` go to the store's constructor
    (``on_commit``, ``auto_compact``, ``compact_min_bytes``, ...)."""
    if config.store_url is not None:
        if not is_postgres_url(config.store_url):
            raise ValueError("store_url must be a postgresql:// URL")
        return await PostgresDocumentStore.open(
            config.store_url, replica_url=config.store_replica_url, **options
        )
    return await SQLiteDocumentStore.open(
        config.data_dir, busy_timeout_ms=config.sqlite_busy_timeout_ms, **options
    )


def store_description(config: RelayConfig) -> str:
    """Where the documents are, for logs (no password)."""
    from relay.ops.config import redact_url

    if config.store_url is not None:
        replica = config.store_replica_url
        reads = f", reads from {redact_url(replica)}" if replica else ""
        return f"postgresql {redact_url(config.store_url)}{reads}"
    return f"sqlite {config.db_path}"
