"""Turn a run's JSON into the markdown summary and the PNG plots (also re-runnable from saved JSON).

Why from JSON only: ``quickslot-bench report DIR`` must re-render any saved run, and a researcher
reanalysing the raw samples must get the same ratios we print. So ratios and target verdicts are
pure functions of the results, computed here, and stored in the JSON by the runner too.

Ratios are medians over medians within one run and one size: ``subject / baseline``, so below 1
is faster (or smaller) than the baseline.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.harness import Result, fmt_seconds, stats

__all__ = [
    "compute_ratios",
    "evaluate_targets",
    "load_run",
    "render_markdown",
    "render_plots",
    "write_report",
]

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"


def load_run(directory: Path) -> dict[str, Any]:
    with open(directory / RESULTS_FILE, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _results(data: dict[str, Any]) -> list[Result]:
    return [Result.from_json(r) for r in data["results"]]


def _ok(r: Result) -> bool:
    return r.status == "ok" and bool(r.samples)


def compute_ratios(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ok subject's median (and p99) against its workload's baseline at the same size."""
    results = _results(data)
    baselines = {name: meta.get("baseline") for name, meta in data["workloads"].items()}
    base_of: dict[tuple[str, int], Result] = {}
    for r in results:
        if _ok(r) and r.subject == baselines.get(r.workload):
            base_of[(r.workload, r.size)] = r
    out = []
    for r in results:
        base = base_of.get((r.workload, r.size))
        if base is None or not _ok(r):
            continue
        s, b = stats(r.samples), stats(base.samples)
        out.append(
            {
                "workload": r.workload,
                "size": r.size,
                "subject": r.subject,
                "baseline": base.subject,
                "ratio": s["median"] / b["median"] if b["median"] else None,
                "ratio_p99": s["p99"] / b["p99"] if b["p99"] else None,
            }
        )
    return out


def evaluate_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value, or ``met: None`` when this run did not measure it."""
    ratios = {(r["workload"], r["size"], r["subject"]): r["ratio"] for r in data.get("ratios", [])}
    results = {(r.workload, r.size, r.subject): r for r in _results(data)}
    out = []
    for t in data.get("target_specs", []):
        key = (t["workload"], t["size"], t["subject"])
        value: float | None = None
        if t["metric"] == "ratio":
            value = ratios.get(key)
        elif key in results and _ok(results[key]):
            value = stats(results[key].samples)[t["metric"]] * t["unit_scale"]
        out.append({**t, "value": value, "met": None if value is None else value < t["limit"]})
    return out


# --- markdown ------------------------------------------------------------------------------------


def _fmt_value(r: Result, value: float) -> str:
    if r.metric == "bytes":
        return f"{value:,.1f} B"
    return fmt_seconds(value)


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    v = m.get("versions", {})
    engines = ", ".join(f"{k} {val}" for k, val in v.items() if val) or "-"
    load_start = m.get("load_average")
    load_end = data.get("load_average_end")
    mem = m.get("memory_bytes")
    parts = [
        f"Python {m['python']} ({m['python_implementation']})",
        f"{m['usable_cores']} usable cores of {m['cpu_count']} ({m['cpu']})",
        f"{mem / 2**30:.0f} GiB RAM" if mem else None,
        f"load average {load_start} at start, {load_end} at end" if load_start else None,
        f"Node {m['node']}" if m.get("node") else "Node: not installed",
        f"{m['platform']}",
    ]
    return "; ".join(p for p in parts if p) + f".\n\nVersions: {engines}."


def render_markdown(data: dict[str, Any], plots: Iterable[str] = ()) -> str:
    plot_set = set(plots)
    lines = [
        f"# QuickSlot benchmarks: {', '.join(data['config']['suites'])}",
        "",
        f"Command: `{data['command']}`  ",
        f"Started {data['started_at']}, took {data['duration_s']:.0f} s; scale `{data['config']['scale']}`, "
        f"{data['config']['repeat']} timed runs per subject after one warm-up.",
        "",
        "Machine: " + _machine_line(data),
        "",
    ]
    if data.get("engines"):
        lines += ["Engines:", ""]
        for name, engine_version in data["engines"].items():
            note = data.get("engine_notes", {}).get(name, "")
            lines.append(f"* `{name}` {engine_version}" + (f": {note}" if note else ""))
        lines.append("")
    if data.get("engines_skipped"):
        skipped = ", ".join(f"{k} ({v})" for k, v in data["engines_skipped"].items())
        lines += [f"Engines skipped: {skipped}.", ""]
    attributions = sorted({m["attribution"] for m in data["workloads"].values() if m.get("attribution")})
    for text in attributions:
        lines += [f"Data: {text}", ""]
    lines += [
        "Ratios are medians over the baseline's median at the same size, in the same run: below 1x "
        "is faster (or smaller). `diverged` means the engine's result failed the workload's "
        "convergence check, so no time is given.",
        "",
    ]
    targets = data.get("targets", [])
    if targets:
        lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
        for t in targets:
            unit = t.get("unit_label", "")
            value = "not measured at this scale" if t["value"] is None else f"{t['value']:.2f} {unit}".strip()
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['label']} | {value} | {t['limit']:g} {unit} | {met} |")
        lines.append("")

    ratios = {(r["workload"], r["size"], r["subject"]): r for r in data.get("ratios", [])}
    results = _results(data)
    suite_seen: str | None = None
    for name, meta in data["workloads"].items():
        rows = [r for r in results if r.workload == name]
        if not rows:
            continue
        if meta.get("suite") and meta["suite"] != suite_seen:
            suite_seen = meta["suite"]
            lines += [f"# Suite `{suite_seen}`", ""]
        baseline = meta.get("baseline")
        lines += [f"## {meta['title']}", "", f"`{name}`: {meta['description']}", ""]
        if baseline:
            lines += [f"Baseline: `{baseline}`.", ""]
        ratio_head = f"vs {baseline}" if baseline else "ratio"
        lines += [
            f"| n | subject | median | p99 | {ratio_head} | samples | notes |",
            "|---:|---|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            note = r.note.replace("|", "/")
            extras = _extra_note(r)
            note = "; ".join(x for x in (note, extras) if x)
            if not _ok(r):
                lines.append(f"| {r.size:,} | {r.subject} | {r.status} | | | | {note} |")
                continue
            s = stats(r.samples)
            ratio = ratios.get((name, r.size, r.subject))
            per = "" if r.metric == "bytes" else f"/{r.op}"
            lines.append(
                f"| {r.size:,} | {r.subject} | {_fmt_value(r, s['median'])}{per} | "
                f"{_fmt_value(r, s['p99']) if r.metric != 'bytes' else '-'} | "
                f"{_fmt_ratio(ratio['ratio'] if ratio else None)} | {len(r.samples)} | {note} |"
            )
        lines.append("")
        if f"{name}.png" in plot_set:
            lines += [f"![{meta['title']}]({name}.png)", ""]
    if "ratios.png" in plot_set:
        lines += ["## Ratios at the largest size", "", "![ratios](ratios.png)", ""]
    return "\n".join(lines)


def _median(values: list[float]) -> float:
    return float(stats(values)["median"])


def _extra_note(r: Result) -> str:
    e = r.extra
    bits = []
    if "update_bytes_per_write" in e:
        bits.append(f"{e['update_bytes_per_write']:.0f} B/update")
    if "exchange_bytes" in e:
        bits.append(f"{e['exchange_bytes']:,} B exchanged")
    if "diff_bytes" in e:
        bits.append(f"diff {e['diff_bytes']:,} B of {e['state_bytes']:,} B")
    if e.get("merge_seconds"):
        merge = sorted(e["merge_seconds"])[len(e["merge_seconds"]) // 2]
        bits.append(f"merge_updates alone {fmt_seconds(merge)}")
    if e.get("merge_phase_seconds"):
        bits.append(f"merging {fmt_seconds(_median(e['merge_phase_seconds']))}")
    if e.get("sync_seconds"):
        bits.append(f"sync alone {fmt_seconds(_median(e['sync_seconds']))}")
    if "update_bytes_per_edit" in e:
        bits.append(f"{e['update_bytes_per_edit']:.0f} B/update")
    if "update_bytes_per_client" in e:
        bits.append(f"{e['update_bytes_per_client']:.0f} B/update")
    if "doc_bytes" in e:
        bits.append(f"document {e['doc_bytes']:,} B")
    if "proof" in e:
        bits.append(f"content proved by {e['proof']}")
    if "confirmed" in e and "waitlisted" in e:
        bits.append(
            f"{e['confirmed']:,} confirmed, {e['waitlisted']:,} waitlisted "
            f"({e['seats']:,} seats for {e['seats_asked']:,} asked)"
        )
    if "compaction_ratio" in e:
        bits.append(f"log/compacted {e['compaction_ratio']:.3f}x; fold {fmt_seconds(min(e['fold_seconds']))}")
    if "updates" in e:
        bits.append(f"{e['updates']:,} updates")
    if e.get("read_seconds") and e.get("compute_seconds"):
        read = sorted(e["read_seconds"])[len(e["read_seconds"]) // 2]
        compute = sorted(e["compute_seconds"])[len(e["compute_seconds"]) // 2]
        bits.append(f"reading records {fmt_seconds(read)}, verdict itself {fmt_seconds(compute)}")
    if "certificate_bytes_per_reservation" in e:
        bits.append(
            f"records {e['record_bytes_per_reservation']:.0f} B + certificates "
            f"{e['certificate_bytes_per_reservation']:.0f} B per reservation"
        )
    if "p99_fastest_pass" in e:
        bits.append(
            f"each update's fastest pass: p50 {fmt_seconds(e['p50_fastest_pass'])}, "
            f"p99 {fmt_seconds(e['p99_fastest_pass'])}"
        )
    if "refusal_codes" in e:
        bits.append("refused: " + ", ".join(f"{k}→{v}" for k, v in e["refusal_codes"].items()))
    return "; ".join(bits)


# --- plots --------------------------------------------------------------------------------------


def render_plots(data: dict[str, Any], out_dir: Path) -> list[str]:
    """Write PNGs next to the JSON; returns their file names ([] when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    results = [r for r in _results(data) if _ok(r)]
    for name, meta in data["workloads"].items():
        rows = [r for r in results if r.workload == name]
        if not rows:
            continue
        sizes = sorted({r.size for r in rows})
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
        subjects = list(dict.fromkeys(r.subject for r in rows))
        scale, unit = (
            (1.0, "bytes per reservation") if rows[0].metric == "bytes" else (1e6, f"µs per {rows[0].op}")
        )
        if len(sizes) > 1:
            for subject in subjects:
                points = sorted((r.size, stats(r.samples)) for r in rows if r.subject == subject)
                xs = [p[0] for p in points]
                line = ax.plot(xs, [p[1]["median"] * scale for p in points], marker="o", label=subject)
                if name in ("validation", "booking"):  # latency workloads with a p99 target
                    ax.plot(
                        xs,
                        [p[1]["p99"] * scale for p in points],
                        linestyle="--",
                        color=line[0].get_color(),
                        label=f"{subject} p99",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n (log): reservations, edits, clients or updates", fontsize=8)
            ax.set_ylabel(f"median {unit} (log)", fontsize=8)
            if rows[0].metric == "time":
                ax.annotate(
                    "per-op cost: flat = linear growth, rising = superlinear",
                    xy=(0.01, 0.01),
                    xycoords="axes fraction",
                    fontsize=6,
                    color="0.4",
                )
        else:
            medians = [
                stats(next(r for r in rows if r.subject == s).samples)["median"] * scale for s in subjects
            ]
            ax.barh(subjects, medians)
            ax.set_xlabel(f"median {unit}, n={sizes[0]:,}")
            ax.invert_yaxis()
        ax.set_title(textwrap.fill(meta["title"], 80), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        if len(sizes) > 1:
            ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
        # Fixed margins, not tight_layout: measuring every label's extent took most of the report's
        # time (seconds per run), and the harness test renders every plot.
        longest = max(len(s) for s in subjects) if len(sizes) == 1 else 0
        left = max(0.11, min(0.6, 0.04 + 0.0095 * longest))
        fig.subplots_adjust(left=left, right=0.97, top=0.86, bottom=0.14)
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)
        written.append(f"{name}.png")

    ratio_rows = data.get("ratios", [])
    if ratio_rows:
        largest: dict[str, int] = {}
        for r in ratio_rows:
            largest[r["workload"]] = max(largest.get(r["workload"], 0), r["size"])
        picked = [
            r
            for r in ratio_rows
            if r["size"] == largest[r["workload"]]
            and r["subject"] != r["baseline"]
            # A zero baseline (or subject) median has no ratio to draw on a log axis.
            and r["ratio"]
        ]
        if picked:
            fig, ax = plt.subplots(figsize=(8, 0.9 + 0.25 * len(picked)), dpi=80)
            labels = [f"{r['workload']} n={r['size']:,}: {r['subject']}" for r in picked]
            values = [r["ratio"] for r in picked]
            bars = ax.barh(labels, values, color=["tab:green" if v <= 1 else "tab:orange" for v in values])
            ax.bar_label(bars, labels=[f"{v:.2f}x" for v in values], fontsize=7, padding=2)
            ax.axvline(1.0, color="black", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_xlim(min(values + [1.0]) / 1.5, max(values + [1.0]) * 2.5)
            ax.set_xlabel("median / baseline median (log); below 1 is faster or smaller", fontsize=8)
            ax.invert_yaxis()
            ax.tick_params(labelsize=7)
            ax.grid(True, axis="x", which="both", alpha=0.3)
            fig.tight_layout()
            fig.savefig(out_dir / "ratios.png")
            plt.close(fig)
            written.append("ratios.png")
    return written


def write_report(data: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    """Write ``summary.md`` and the PNGs into ``out_dir``; returns every file written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = render_plots(data, out_dir) if plots else []
    summary = out_dir / SUMMARY_FILE
    summary.write_text(render_markdown(data, names), encoding="utf-8")
    return [summary, *(out_dir / n for n in names)]
