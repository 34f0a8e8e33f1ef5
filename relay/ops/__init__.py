"""Running the relay: configuration, structured logs, metrics, and process limits.

:mod:`relay.ops.config` (``RelayConfig`` and the data directory), :mod:`relay.ops.logging`
(JSON logs, ``log_event``), :mod:`relay.ops.metrics` (Prometheus), :mod:`relay.ops.fdlimit`
(open-file limit), :mod:`relay.ops.malloc_tuning` (glibc arenas).
"""
