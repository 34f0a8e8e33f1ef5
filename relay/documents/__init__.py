"""The documents a relay process holds in memory, and the order in which updates reach each one.

:mod:`relay.documents.manager`: ``DocumentManager`` (loading, ordering, stamp sequences, unloading).
"""
