"""Tests of the pure core (``crdt_core``): engine, schema, records, validation, verdict, protocol."""
