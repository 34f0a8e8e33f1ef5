"""What a profile keeps on disk: ``store`` (one SQLite file: documents, outbox, cursors) and
``secrets`` (tokens and the device key at rest)."""
