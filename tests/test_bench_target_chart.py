"""The relay targets chart: the committed figures load, point the right way and render."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.relay_bench.target_chart import TargetFigure, load, main

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "data" / "relay-targets.json"


def test_a_figure_is_a_multiple_of_its_limit_whichever_way_the_target_points() -> None:
    below = TargetFigure("5", "KiB", 23.3, 15.0, higher_is_better=False, command="x")
    above = TargetFigure("8", "rate", 0.82, 0.8, higher_is_better=True, command="x")
    assert below.of_limit == pytest.approx(23.3 / 15.0)
    assert above.of_limit == pytest.approx(0.8 / 0.82) and above.of_limit < 1.0


def test_the_committed_figures_render(tmp_path: Path) -> None:
    figures = load(FIGURES)
    assert {f.target for f in figures} >= {"1", "2", "3", "4", "5", "6", "7", "8"}
    assert all(f.command.startswith(("python -m", "QUICKSLOT_BENCH_LANES", "make ")) for f in figures)
    pytest.importorskip("matplotlib")
    out = tmp_path / "chart.png"
    assert main([str(FIGURES), str(out)]) == 0
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
