"""The sync hub's Prometheus metrics, registered once per hub (names: docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable

from relay.ops.metrics import MetricsRegistry


class HubMetrics:
    """Counters and histograms of the sync path; gauges are read from the hub when scraped."""

    def __init__(self, m: MetricsRegistry) -> None:
        self.refused = m.counter(
            "quickslot_sync_refused_total", "Sync websockets refused on connect, by reason", ["reason"]
        )
        self.updates_in = m.counter("quickslot_updates_in_total", "Updates received from clients")
        self.updates_out = m.counter("quickslot_updates_out_total", "Update deliveries to subscribers")
        self.bytes_in = m.counter("quickslot_sync_bytes_in_total", "Bytes received on sync websockets")
        self.bytes_out = m.counter("quickslot_sync_bytes_out_total", "Bytes sent on sync websockets")
        self.rejections = m.counter("quickslot_rejections_total", "Refused updates by reason", ["reason"])
        self.auth_failures = m.counter("quickslot_sync_auth_failures_total", "Sync auth failures", ["code"])
        self.ack_latency = m.histogram("quickslot_ack_latency_seconds", "Update received to ack sent")
        self.stamps_issued = m.counter("quickslot_stamps_total", "Booking claims stamped")
        self.slow_consumers = m.counter(
            "quickslot_slow_consumers_total", "Connections cut for falling behind"
        )
        self.stamp_retries = m.counter(
            "quickslot_stamp_conflict_retries_total", "Updates ordered again after another node stamped first"
        )
        self.catchups = m.counter("quickslot_catchups_total", "Documents reloaded with subscribers caught up")

    @staticmethod
    def fanout_gauges(m: MetricsRegistry, stats: Callable[[], object]) -> None:
        """Gauges read from a cross-node fan-out's ``stats()`` (``relay.fanout``)."""
        for name, field, doc in (
            ("quickslot_fanout_published_total", "published", "Commits published to other nodes"),
            ("quickslot_fanout_received_total", "received", "Commits received from other nodes"),
            ("quickslot_fanout_backlog", "backlog", "Commits waiting to be published"),
            ("quickslot_fanout_dropped_total", "dropped_backlog", "Commits dropped, backlog full"),
            ("quickslot_fanout_resets_total", "resets", "Times fan-out entries may have been lost"),
            ("quickslot_fanout_connected", "connected", "1 while the fan-out reaches Redis"),
        ):
            m.gauge(name, doc).set_function(_stat_reader(stats, field))


def _stat_reader(stats: Callable[[], object], field: str) -> Callable[[], float]:
    return lambda: float(getattr(stats(), field))
