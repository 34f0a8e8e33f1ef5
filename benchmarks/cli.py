"""``quickslot-bench`` / ``python -m benchmarks``: run suites, re-render a saved run, list what exists.

Why a CLI of its own: researchers run the suites without reading the code, so every
choice a run makes (suites, scale, repeats, output directory) is a flag, and the output directory
is self-describing.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks.adapters import ADAPTERS, close_adapters, load_adapters
from benchmarks.harness import Progress, RunConfig, Scale
from benchmarks.report import load_run, write_report
from benchmarks.runner import default_out_dir, run
from benchmarks.suites import ALIASES, SUITES

__all__ = ["main"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quickslot-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run benchmark suites and write JSON, markdown and plots")
    aliases = ", ".join(f"{a} = {'+'.join(real)}" for a, real in ALIASES.items())
    p_run.add_argument(
        "--suite",
        default="engine,domain",
        help=f"comma-separated suites ({', '.join(SUITES)}; aliases: {aliases}); default engine,domain",
    )
    scale = p_run.add_mutually_exclusive_group()
    scale.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, trace prefixes only, 2 repeats: minutes, not tens of",
    )
    scale.add_argument("--tiny", action="store_true", help="smoke-test sizes (checks the harness, not speed)")
    p_run.add_argument(
        "--repeat", type=int, default=None, help="timed runs per subject (default 7; 2 with --quick)"
    )
    p_run.add_argument(
        "--out", type=Path, default=None, help="output directory (default bench-results/run-<time>)"
    )
    p_run.add_argument(
        "--engines", type=_csv, default=None, help=f"comma-separated subset of {', '.join(ADAPTERS)}"
    )
    p_run.add_argument(
        "--workload", type=_csv, default=None, help="comma-separated workload names (see list)"
    )
    p_run.add_argument(
        "--sizes", type=lambda s: [int(x) for x in _csv(s)], default=None, help="override sizes"
    )
    p_run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p_run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")

    p_report = sub.add_parser("report", help="re-render summary.md and plots from a run's results.json")
    p_report.add_argument("directory", type=Path)
    p_report.add_argument("--no-plots", action="store_true")

    sub.add_parser("list", help="list suites, workloads and engines")
    return parser


def _list() -> int:
    adapters, missing = load_adapters()
    print("engines:")
    for name, adapter in adapters.items():
        print(f"  {name} {adapter.version()}: {adapter.notes}")
    for name, why in missing.items():
        print(f"  {name}: unavailable, {why}")
    for alias, real in ALIASES.items():
        print(f"alias {alias}: {', '.join(real)}")
    close_adapters(adapters)
    for suite_name, factory in SUITES.items():
        suite = factory()
        print(f"suite {suite_name}: {suite.description}")
        for workload in suite.build(adapters):
            sizes = ", ".join(f"{n:,}" for n in workload.sizes("full"))
            base = f"; baseline {workload.baseline}" if workload.baseline else ""
            print(f"  {workload.name}: {workload.title} (n = {sizes}{base})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        return _list()
    if args.command == "report":
        data = load_run(args.directory)
        for path in write_report(data, args.directory, plots=not args.no_plots):
            print(path)
        return 0
    scale: Scale = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeat = args.repeat if args.repeat is not None else (2 if scale != "full" else 7)
    if repeat < 1:
        print("--repeat must be at least 1", file=sys.stderr)
        return 2
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    config = RunConfig(
        suites=_csv(args.suite),
        scale=scale,
        repeat=repeat,
        engines=args.engines,
        workloads=args.workload,
        sizes=args.sizes,
        plots=not args.no_plots,
        command="quickslot-bench " + shlex.join(argv_list),
    )
    out = args.out or default_out_dir()
    try:
        data = run(config, out, Progress(enabled=not args.quiet))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out / "summary.md")
    # A missed target is a finding, not a failure; a workload that crashed is a failure.
    errors = [r for r in data["results"] if r["status"] == "error"]
    return 1 if errors else 0
