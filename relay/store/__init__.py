"""Durable storage of the relay's documents: the interface and its two implementations.

``DocumentStore`` (:mod:`relay.store.base`) is what the rest of the relay depends on;
``SQLiteDocumentStore`` (:mod:`relay.store.sqlite`) is the embedded default, one file per data
directory; ``PostgresDocumentStore`` (:mod:`relay.store.postgres`) is shared by several relay
nodes. :func:`open_document_store` (:mod:`relay.store.open`) picks one from the configuration.
"""

from __future__ import annotations

from relay.store.base import (
    FIRST_STAMP as FIRST_STAMP,
    AppendResult as AppendResult,
    CompactionResult as CompactionResult,
    DocumentStore as DocumentStore,
    StampConflictError as StampConflictError,
    StoreClosedError as StoreClosedError,
    StoredDocument as StoredDocument,
    StoreError as StoreError,
    StoreStats as StoreStats,
    load_or_create_epoch as load_or_create_epoch,
    should_compact as should_compact,
)
from relay.store.open import open_document_store as open_document_store
from relay.store.postgres import PostgresDocumentStore as PostgresDocumentStore
from relay.store.sqlite import SQLiteDocumentStore as SQLiteDocumentStore

__all__ = [
    "FIRST_STAMP",
    "AppendResult",
    "CompactionResult",
    "DocumentStore",
    "PostgresDocumentStore",
    "SQLiteDocumentStore",
    "StampConflictError",
    "StoreClosedError",
    "StoreError",
    "StoreStats",
    "StoredDocument",
    "load_or_create_epoch",
    "open_document_store",
    "should_compact",
]
