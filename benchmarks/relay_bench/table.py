"""The relay suite's headline tables, from a saved run's ``results.json`` alone.

Why a separate renderer: the standard summary has one table per workload (what each sample is,
with notes); a reader comparing servers wants one table per experiment with throughput,
latency, CPU, memory and both ratios side by side. Every number here is recomputed from the raw
rounds stored in the JSON, so ``python -m benchmarks.relay_bench table DIR`` on any saved run
gives the same table.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.harness import fmt_seconds

Y, P = "y-websocket", "pycrdt-websocket"


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e6:,.1f} µs"


def _ms(v: float | None) -> str:
    return "-" if v is None else fmt_seconds(v)


def _rows(data: dict[str, Any], workload: str) -> dict[int, dict[str, dict[str, Any]]]:
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for r in data["results"]:
        if r["workload"] == workload:
            out.setdefault(r["size"], {})[r["subject"]] = r
    return out


def _fanout(data: dict[str, Any]) -> list[str]:
    rows = _rows(data, "fanout_cpu")
    if not rows:
        return []
    lines = [
        "### Fan-out (N clients on one document, steady rate)",
        "",
        "| N | server | deliveries/s (offered) | p50 | p99 | CPU per delivery | vs y-websocket "
        "| vs pycrdt-websocket | p99 vs y-websocket | peak RSS | wire MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted(rows):
        per: dict[str, dict[str, Any]] = {}
        for subject, r in rows[size].items():
            rounds = r.get("extra", {}).get("rounds") or []
            if r["status"] != "ok" or not rounds:
                per[subject] = {"status": r["status"], "note": r["note"]}
                continue
            per[subject] = {
                "status": "ok",
                "thr": _median([x["throughput_per_s"] for x in rounds]),
                "offered": rounds[0]["offered_per_s"],
                "p50": _median([x["latency"]["p50"] for x in rounds]),
                "p99": _median([x["latency"]["p99"] for x in rounds]),
                "cpu": _median([x["cpu_per_delivery_s"] for x in rounds]),
                "rss": max(x["peak_rss"] or 0 for x in rounds),
                "wire": _median([x["bytes_sent"] + x["bytes_recv"] for x in rounds]),
            }
        y, p = per.get(Y, {}), per.get(P, {})
        for subject, v in per.items():
            if v["status"] != "ok":
                lines.append(f"| {size} | {subject} | {v['status']}: {v['note'][:80]} | | | | | | | | |")
                continue
            lines.append(
                f"| {size} | {subject} | {v['thr']:,.0f} ({v['offered']:,.0f}) | {_ms(v['p50'])} "
                f"| {_ms(v['p99'])} "
                f"| {_us(v['cpu'])} | {_ratio(v['cpu'], y.get('cpu'))} | {_ratio(v['cpu'], p.get('cpu'))} "
                f"| {_ratio(v['p99'], y.get('p99'))} | {v['rss'] / 2**20:.0f} MB | {v['wire'] / 2**20:.1f} |"
            )
    return [*lines, ""]


def _docs(data: dict[str, Any]) -> list[str]:
    rows = _rows(data, "docs_cpu")
    if not rows:
        return []
    lines = [
        "### Many documents (20 updates each, one writer and one reader per document)",
        "",
        "| docs | server | updates/s | vs y-websocket | p50 | p99 | CPU per update | vs y-websocket "
        "| vs pycrdt-websocket | peak RSS |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted(rows):
        per: dict[str, dict[str, Any]] = {}
        for subject, r in rows[size].items():
            rounds = r.get("extra", {}).get("rounds") or []
            if r["status"] != "ok" or not rounds:
                per[subject] = {"status": r["status"], "note": r["note"]}
                continue
            per[subject] = {
                "status": "ok",
                "thr": _median([x["throughput_per_s"] for x in rounds]),
                "p50": _median([x["latency"]["p50"] for x in rounds]),
                "p99": _median([x["latency"]["p99"] for x in rounds]),
                "cpu": _median([x["cpu_per_update_s"] for x in rounds]),
                "rss": max(x["peak_rss"] or 0 for x in rounds),
            }
        y, p = per.get(Y, {}), per.get(P, {})
        for subject, v in per.items():
            if v["status"] != "ok":
                lines.append(f"| {size} | {subject} | {v['status']}: {v['note'][:80]} | | | | | | | |")
                continue
            thr_ratio = "-" if not y.get("thr") else f"{v['thr'] / y['thr']:.2f}x"
            lines.append(
                f"| {size} | {subject} | {v['thr']:,.0f} | {thr_ratio} | {_ms(v['p50'])} | {_ms(v['p99'])} "
                f"| {_us(v['cpu'])} | {_ratio(v['cpu'], y.get('cpu'))} | {_ratio(v['cpu'], p.get('cpu'))} "
                f"| {v['rss'] / 2**20:.0f} MB |"
            )
    return [*lines, ""]


def _simple(data: dict[str, Any], workload: str, title: str, fmt: Any, head: str) -> list[str]:
    rows = _rows(data, workload)
    if not rows:
        return []
    lines = [f"### {title}", "", f"| n | server | {head} | vs y-websocket | vs pycrdt-websocket | notes |",
             "|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for size in sorted(rows):
        med = {s: (_median(r["samples"]) if r["status"] == "ok" else None) for s, r in rows[size].items()}
        for subject, r in rows[size].items():
            if r["status"] != "ok":
                lines.append(f"| {size:,} | {subject} | {r['status']} | | | {r['note'][:100]} |")
                continue
            v = med[subject]
            lines.append(
                f"| {size:,} | {subject} | {fmt(v)} | {_ratio(v, med.get(Y))} | {_ratio(v, med.get(P))} "
                f"| {r['note'].replace('|', '/')} |"
            )
    return [*lines, ""]


def headline(data: dict[str, Any]) -> str:
    load = (
        f"load average {data['machine'].get('load_average')} at start, {data.get('load_average_end')} at end"
    )
    lines = [
        f"Command: `{data['command']}`; started {data['started_at']}, {data['duration_s']:.0f} s; {load}.",
        "",
    ]
    lines += _fanout(data)
    lines += _docs(data)
    lines += _simple(data, "catch_up", "Catch-up (subscribe with an empty state vector)", _ms, "median time")
    lines += _simple(
        data,
        "idle_memory",
        "Memory per idle loaded document",
        lambda v: f"{v / 1024:,.1f} KiB",
        "RSS per document",
    )
    lines += _simple(
        data,
        "idle_conn_memory",
        "Idle connections: memory per connection",
        lambda v: f"{v / 1024:,.1f} KiB",
        "RSS per connection",
    )
    lines += _simple(
        data,
        "idle_conn_cpu",
        "Idle connections: CPU per connection per second of idle",
        _us,
        "CPU per connection-second",
    )
    return "\n".join(lines)
