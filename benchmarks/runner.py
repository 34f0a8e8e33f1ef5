"""Run suites and write one run's results: ``results.json``, ``summary.md`` and the plots.

Why everything in one directory per run: a run is the unit researchers compare and archive;
the JSON holds every raw sample plus the machine it ran on, and ``report`` can rebuild the rest.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.adapters import close_adapters, load_adapters
from benchmarks.harness import ERROR, Progress, Result, RunConfig
from benchmarks.machine import load_average, machine_info
from benchmarks.report import RESULTS_FILE, compute_ratios, evaluate_targets, write_report
from benchmarks.suites import ALIASES, SUITES, Suite, expand

__all__ = ["default_out_dir", "run"]


def default_out_dir() -> Path:
    return Path("bench-results") / dt.datetime.now().strftime("run-%Y%m%d-%H%M%S")


def run(config: RunConfig, out_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run every selected workload at every size; returns the run's data (also written to ``out_dir``)."""
    progress = progress or Progress()
    unknown = [s for s in config.suites if s not in SUITES and s not in ALIASES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; known: {sorted(SUITES)} (aliases: {sorted(ALIASES)})")
    suites = expand(config.suites)
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    built = {name: SUITES[name]() for name in suites}
    if any(suite.uses_engines for suite in built.values()):
        adapters, missing = load_adapters(config.engines)
    else:
        adapters, missing = {}, {}
    machine = machine_info()
    machine["load_average_by_suite"] = {}
    progress.say(
        f"engines: {', '.join(f'{a.name} {a.version()}' for a in adapters.values())}"
        + (f"; skipped: {missing}" if missing else "")
    )
    results: list[Result] = []
    workloads: dict[str, dict[str, Any]] = {}
    target_specs: list[dict[str, Any]] = []
    try:
        _run_suites(built, config, adapters, progress, results, workloads, target_specs, machine)
    finally:
        close_adapters(adapters)
    data: dict[str, Any] = {
        "schema": 1,
        "command": config.command or "python -m benchmarks run",
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": time.perf_counter() - t0,
        "config": {
            "suites": suites,
            "scale": config.scale,
            "repeat": config.repeat,
            "engines": list(config.engines) if config.engines else None,
            "workloads": list(config.workloads) if config.workloads else None,
            "sizes": list(config.sizes) if config.sizes else None,
        },
        "machine": machine,
        "load_average_end": load_average(),
        "engines": {name: a.version() for name, a in adapters.items()},
        "engine_notes": {name: a.notes for name, a in adapters.items()},
        "engines_skipped": missing,
        "workloads": workloads,
        "target_specs": target_specs,
        "results": [r.to_json() for r in results],
    }
    data["ratios"] = compute_ratios(data)
    data["targets"] = evaluate_targets(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / RESULTS_FILE, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
    written = write_report(data, out_dir, plots=config.plots)
    progress.say(f"wrote {out_dir / RESULTS_FILE} and {', '.join(p.name for p in written)}")
    return data


def _run_suites(
    suites: dict[str, Suite],
    config: RunConfig,
    adapters: dict[str, Any],
    progress: Progress,
    results: list[Result],
    workloads: dict[str, dict[str, Any]],
    target_specs: list[dict[str, Any]],
    machine: dict[str, Any],
) -> None:
    for suite_name, suite in suites.items():
        target_specs += [dataclasses.asdict(t) for t in suite.targets]
        machine["load_average_by_suite"][suite_name] = load_average()
        progress.say(f"suite {suite_name} (load average {load_average()})")
        for workload in suite.build(adapters):
            if config.workloads and workload.name not in config.workloads:
                continue
            sizes = list(config.sizes) if config.sizes else workload.sizes(config.scale)
            workloads[workload.name] = {
                "suite": suite_name,
                "title": workload.title,
                "description": workload.description,
                "baseline": workload.baseline,
                "sizes": sizes,
                "attribution": getattr(workload, "attribution", None),
            }
            for size in sizes:
                progress.say(f"{suite_name}/{workload.name} n={size:,}")
                try:
                    results += workload.run(size, config, progress)
                except Exception as exc:  # a bug in a workload must not lose the rest of the run
                    note = f"{type(exc).__name__}: {exc}"
                    progress.say(f"  ERROR {note}\n{traceback.format_exc()}")
                    results.append(
                        Result(
                            workload.name, "(workload)", "-", size, "time", "s/op", "-", 1, [], ERROR, note
                        )
                    )
            close = getattr(workload, "close", None)
            if close is not None:
                close()  # workloads holding processes (trace workers) release them here
