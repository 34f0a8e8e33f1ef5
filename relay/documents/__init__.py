"""The documents a relay process holds in memory, and the order in which updates reach each one.

:mod:`relay.documents.manager` (``DocumentManager``: loading, ordering, stamp sequences,
unloading), :mod:`relay.documents.results` (what callers hold and get back: ``Applied``,
``Pin``, ``StampSequence``, the errors), :mod:`relay.documents.entry` (one document's state).
"""
