"""Reduce a load run to its summary (JSON) and its plot (PNG).

What counts as an error, each counted separately so a failing run says which kind it was: a
connection that did not open (``connect_failed``), a connection the relay closed
(``closed_by_server``), an ``err`` message (``error_messages``), a scheduled update the driver
could not send (``unsent``), a sent update with no ack when the driver gave up (``ack_timeouts``),
an expected delivery that never came (``delivery_timeouts``), an update delivered twice to one
connection (``duplicate_deliveries``), a relay log line at error level (``relay_log_errors``),
and a relay that did not exit 0 on SIGTERM (``relay_exit``).

The memory bound is stated here, checked by the short test and reported by every run: the relay's
peak RSS stays under :data:`MEMORY_BASE` plus :data:`MEMORY_PER_CONNECTION` per connection.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.harness import percentile
from benchmarks.load.plan import uid_of
from benchmarks.load.run import RunRecord

__all__ = ["MEMORY_BASE", "MEMORY_PER_CONNECTION", "memory_bound", "summarize", "write_outputs"]

MEMORY_BASE = 128 * 2**20
"""A started relay with its accounts loaded stays under this (measured: 76-80 MiB)."""
MEMORY_PER_CONNECTION = 128 * 2**10
"""What one authenticated, subscribed connection may add, its share of the documents and the
buffers under load included (measured: about 60 KiB at 1,000 connections and 200 updates/s)."""
PERCENTILES = (50, 90, 99, 99.9)
WINDOW_S = 5.0


def memory_bound(connections: int) -> int:
    return MEMORY_BASE + MEMORY_PER_CONNECTION * connections


def _latency(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    out: dict[str, Any] = {"n": len(ordered)}
    for q in PERCENTILES:
        out[f"p{q:g}".replace(".", "")] = percentile(ordered, q) * 1e3
    out["max"] = ordered[-1] * 1e3
    out["mean"] = statistics.fmean(ordered) * 1e3
    return out


def _pairs(record: RunRecord) -> tuple[list[tuple[int, float]], list[tuple[int, float]], dict[str, int]]:
    """(send ns, latency s) for every ack and every delivery, and the counts behind the errors."""
    sent: dict[tuple[int, int], int] = {}
    acks: list[tuple[int, float]] = []
    deliveries: list[tuple[int, float]] = []
    for r in record.results:
        s = r["sends"]
        for i in range(0, len(s), 3):
            sent[(s[i], s[i + 1])] = s[i + 2]
    acked: set[tuple[int, int]] = set()
    seen: set[tuple[int, int, int]] = set()
    duplicates = 0
    for r in record.results:
        a = r["acks"]
        for i in range(0, len(a), 3):
            key = (a[i], a[i + 1] - uid_of(0))
            t = sent.get(key)
            if t is not None and key not in acked:
                acked.add(key)
                acks.append((t, (a[i + 2] - t) / 1e9))
        v = r["recvs"]
        for i in range(0, len(v), 4):
            dkey = (v[i], v[i + 1], v[i + 2])
            if dkey in seen:
                duplicates += 1
                continue
            seen.add(dkey)
            t = sent.get((v[i + 1], v[i + 2]))
            if t is not None:
                deliveries.append((t, (v[i + 3] - t) / 1e9))
    counts = {"sent": len(sent), "acked": len(acked), "delivered": len(seen), "duplicates": duplicates}
    return acks, deliveries, counts


def _windows(pairs: list[tuple[int, float]], t0_ns: int) -> list[dict[str, float]]:
    buckets: dict[int, list[float]] = {}
    for t, lat in pairs:
        buckets.setdefault(int((t - t0_ns) / 1e9 // WINDOW_S), []).append(lat)
    return [
        {"t": (k + 0.5) * WINDOW_S, "p50": percentile(v, 50) * 1e3, "p99": percentile(v, 99) * 1e3}
        for k, v in sorted(buckets.items())
    ]


def summarize(record: RunRecord) -> dict[str, Any]:
    shape, plan = record.options.shape, record.plan
    acks, deliveries, counts = _pairs(record)
    res = record.results
    opened = sum(r["clients"] for r in res) - sum(len(r["failed"]) for r in res)
    held = sum(r["held"] for r in res)
    closed = [c for r in res for c in r["closed"]]
    errors = {
        "connect_failed": sum(len(r["failed"]) for r in res),
        "closed_by_server": len(closed),
        "error_messages": sum(r["error_count"] for r in res),
        "unsent": plan.updates - counts["sent"],
        "ack_timeouts": counts["sent"] - counts["acked"],
        "delivery_timeouts": max(0, plan.expected_deliveries - counts["delivered"]),
        "duplicate_deliveries": counts["duplicates"],
        "relay_log_errors": record.relay_log_errors,
        "relay_exit": 0 if record.relay_exit == 0 else 1,
    }
    load = [s for s in record.samples if s.phase == "load"]
    peak_sampled = max((s.rss for s in record.samples), default=0)
    peak = max(peak_sampled, record.peak_rss_hwm)
    relay_cpu = load[-1].cpu.seconds_since(load[0].cpu) if len(load) >= 2 else math.nan
    load_s = (load[-1].at_ns - load[0].at_ns) / 1e9 if len(load) >= 2 else math.nan
    bound = memory_bound(shape.connections)
    timeline = []
    for prev, cur in zip(record.samples, record.samples[1:], strict=False):
        dt = (cur.at_ns - prev.at_ns) / 1e9
        timeline.append(
            {
                "t": round((cur.at_ns - record.t0_ns) / 1e9, 2),
                "rss_mib": round(cur.rss / 2**20, 1),
                "cpu_pct": round(100 * cur.cpu.seconds_since(prev.cpu) / dt, 1) if dt > 0 else 0.0,
                "phase": cur.phase,
            }
        )
    n_errors = sum(errors.values())
    summary: dict[str, Any] = {
        "command": " ".join(record.argv),
        "ok": n_errors == 0 and held == shape.connections and peak <= bound,
        "shape": {
            "connections": shape.connections,
            "duration_s": shape.duration_s,
            "docs": shape.docs,
            "rate_per_s": shape.rate,
            "subscriptions_per_connection": shape.subscriptions,
            "seed": shape.seed,
            "accounts": record.accounts,
            "device_mix": list(record.options.device_mix),
            "drivers": record.options.drivers,
            "drain_s": record.options.drain_s,
        },
        "relay_argv": record.relay_argv[1:],
        "machine": {"cpus": os.cpu_count(), "loadavg": {k: list(v) for k, v in record.loadavg.items()}},
        "open_file_soft_limit": record.nofile_soft,
        "connections": {
            "planned": shape.connections,
            "opened": opened,
            "held_at_end": held,
            "connect_s": round(record.connect_s, 2),
            "closed_examples": closed[:5],
            "failed_examples": [f for r in res for f in r["failed"]][:5],
        },
        "updates": {
            "planned": plan.updates,
            "sent": counts["sent"],
            "acked": counts["acked"],
            "expected_deliveries": plan.expected_deliveries,
            "delivered": counts["delivered"],
            "mean_subscribers_per_doc": round(
                sum(len(v) for v in plan.subscribers.values()) / max(1, len(plan.doc_ids)), 2
            ),
            "load_s": round((record.done_ns - record.t0_ns) / 1e9, 2),
        },
        "errors": errors,
        "error_total": n_errors,
        "error_examples": [e for r in res for e in r["errors"]][:10],
        "relay_log_problems": record.relay_log_problems[:10],
        "latency_ms": {
            "ack": _latency([x for _, x in acks]),
            "delivery": _latency([x for _, x in deliveries]),
        },
        "memory": {
            "rss_idle_mib": round(record.rss_idle / 2**20, 1),
            "rss_connected_mib": round(record.rss_connected / 2**20, 1),
            "rss_peak_mib": round(peak / 2**20, 1),
            "per_connection_connected_kib": round(
                (record.rss_connected - record.rss_idle) / 1024 / max(1, opened), 1
            ),
            "per_connection_peak_kib": round((peak - record.rss_idle) / 1024 / max(1, opened), 1),
            "bound_mib": round(bound / 2**20, 1),
            "bound_rule": f"{MEMORY_BASE // 2**20} MiB + {MEMORY_PER_CONNECTION // 1024} KiB per connection",
            "within_bound": peak <= bound,
        },
        "cpu": {
            "relay_load_s": round(relay_cpu, 2),
            "relay_cores_mean": round(relay_cpu / load_s, 3) if load_s and load_s > 0 else None,
            "relay_per_update_us": round(1e6 * relay_cpu / max(1, counts["sent"]), 1),
            "drivers_load_s": round(record.driver_cpu_s, 2),
        },
        "latency_windows_ms": {
            "ack": _windows(acks, record.t0_ns),
            "delivery": _windows(deliveries, record.t0_ns),
        },
        "timeline": timeline,
    }
    return summary


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_win, ax_pct) = plt.subplots(3, 1, figsize=(9, 11))
    tl = summary["timeline"]
    ts = [p["t"] for p in tl]
    ax_rss.plot(ts, [p["rss_mib"] for p in tl], color="tab:blue", label="relay RSS")
    ax_rss.axhline(summary["memory"]["bound_mib"], color="tab:red", linestyle="--", label="stated bound")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.set_xlabel("seconds from the start of the load phase (negative: connecting)")
    ax_cpu = ax_rss.twinx()
    ax_cpu.plot(ts, [p["cpu_pct"] for p in tl], color="tab:gray", alpha=0.5, linewidth=0.8, label="relay CPU")
    ax_cpu.set_ylabel("relay CPU (% of one core)")
    ax_rss.legend(loc="upper left")
    ax_rss.set_title(
        f"{summary['shape']['connections']} connections, {summary['shape']['rate_per_s']:g} updates/s, "
        f"{summary['shape']['docs']} documents"
    )
    for kind, colour in (("ack", "tab:green"), ("delivery", "tab:purple")):
        w = summary["latency_windows_ms"][kind]
        ax_win.plot([p["t"] for p in w], [p["p50"] for p in w], color=colour, marker="o", label=f"{kind} p50")
        ax_win.plot(
            [p["t"] for p in w],
            [p["p99"] for p in w],
            color=colour,
            marker="x",
            linestyle="--",
            label=f"{kind} p99",
        )
    ax_win.set_yscale("log")
    ax_win.set_ylabel(f"latency (ms), per {WINDOW_S:g} s of send time")
    ax_win.set_xlabel("seconds from the start of the load phase")
    ax_win.legend()
    labels = ["p50", "p90", "p99", "p999", "max"]
    for k, (kind, colour) in enumerate((("ack", "tab:green"), ("delivery", "tab:purple"))):
        lat = summary["latency_ms"][kind]
        values = [lat.get(label, 0.0) for label in labels]
        ax_pct.bar([i + 0.4 * k for i in range(len(labels))], values, width=0.4, color=colour, label=kind)
    ax_pct.set_xticks([i + 0.2 for i in range(len(labels))], ["p50", "p90", "p99", "p99.9", "max"])
    ax_pct.set_yscale("log")
    ax_pct.set_ylabel("latency (ms), whole run")
    ax_pct.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(record: RunRecord, out: Path) -> dict[str, Any]:
    """Write ``summary.json`` and ``load.png`` into ``out``; returns the summary."""
    summary = summarize(record)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "load.png")
    return summary
