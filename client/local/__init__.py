"""The offline library: ``LocalClient`` over one profile, its query tables and its events.

``client`` (the ``LocalClient`` API: book, cancel, decide, browse, verdicts, applying remote
updates), ``projections`` (query tables projected from the documents), ``events`` (typed events
for the embedding app).
"""
