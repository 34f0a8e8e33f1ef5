"""One picture of the relay-floor targets: each measured figure as a multiple of its limit.

Why: the targets table in docs/benchmarks.md mixes ratios, seconds, KiB and rates from several
tools and runs; a reader wants to see at a glance which are met (at or below 1) and how far the
others are. The figures come from ``docs/data/relay-targets.json``, written by hand from the
tools' JSON output (each entry names its command), so the chart is regenerated, never edited.

    python -m benchmarks.relay_bench.target_chart docs/data/relay-targets.json docs/img/relay-targets.png
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TargetFigure:
    target: str
    label: str
    measured: float
    limit: float
    higher_is_better: bool
    command: str

    @property
    def of_limit(self) -> float:
        """How many times the limit the figure is (at or below 1: met), whichever way it points."""
        if self.higher_is_better:
            return self.limit / self.measured
        return self.measured / self.limit


def load(path: Path) -> list[TargetFigure]:
    raw = json.loads(path.read_text(encoding="utf-8"))
    return [
        TargetFigure(
            target=str(e["target"]),
            label=str(e["label"]),
            measured=float(e["measured"]),
            limit=float(e["limit"]),
            higher_is_better=bool(e.get("higher_is_better", False)),
            command=str(e["command"]),
        )
        for e in raw["figures"]
    ]


def render(figures: list[TargetFigure], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(figures) + 1.4), dpi=90)
    names = [f"{f.target}: {f.label}" for f in figures]
    values = [f.of_limit for f in figures]
    colours = ["#2e7d32" if v <= 1.0 else "#c62828" for v in values]
    ys = list(range(len(figures)))[::-1]
    ax.barh(ys, values, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(ys, names, fontsize=8)
    for y, v in zip(ys, values, strict=True):
        ax.text(v * 1.05, y, f"{v:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("measured as a multiple of the target's limit (log; at or left of 1: met)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    ax.set_xlim(min(0.3, min(values) / 1.5), max(values) * 2.2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("figures", type=Path, help="the JSON of figures (docs/data/relay-targets.json)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    raw = json.loads(args.figures.read_text(encoding="utf-8"))
    render(load(args.figures), args.out, str(raw.get("title", "relay targets")))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
