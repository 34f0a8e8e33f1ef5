"""The sync service, transport-agnostic: one hub per process that every websocket (and the HTTP
sync API) goes through.

:mod:`relay.sync.hub` (``SyncHub``: authenticate, authorise, validate, order, stamp, acknowledge,
fan out) and :mod:`relay.sync.stamp_hold` (no new stamps for a while after a restore). The
``/api/v1/sync`` websocket that feeds the hub is :mod:`relay.http.sync_socket`.
"""
