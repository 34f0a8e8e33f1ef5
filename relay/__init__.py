"""The QuickSlot relay: authenticates, authorises, validates, stores, stamps and forwards.

Subpackages, lowest layer first (a module imports its own subpackage and lower layers only;
docs/architecture.md, "Import rules", checked by tests/test_import_cycles.py): ``errors``
(the root of the exception tree, drawn in :mod:`relay.errors`), ``ops`` (configuration, logs,
metrics, process limits), ``store`` and ``fanout`` (durable documents, other nodes), ``auth``
and ``documents`` (accounts and tokens; the documents in memory), ``sync`` (the hub),
``context`` (what the app's parts share), ``http`` (the FastAPI app, REST, websockets),
``cli`` (``quickslot-relay``).

Every relay logger is ``quickslot.relay.<module path>`` (``relay.ops.logging.get_logger(__name__)``)
and logs with ``log_event``: a short event name and structured fields, one JSON object per line.
"""
