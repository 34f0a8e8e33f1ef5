"""The benchmark harness itself: a tiny run of the engine and domain suites must produce sane output.

Why a test: benchmarks only run by hand, so a refactor could silently break them ("so
the harness itself cannot silently break"). This asserts structure and sanity (every workload and
engine present, ratios positive, plots written, an engine that disagrees reported as diverged),
never a time: timings on a shared CI box say nothing.

Engines: crdt_core and pycrdt always run; y-py, loro and Yjs run when installed (the test never
installs anything: ``QUICKSLOT_BENCH_NO_INSTALL``), and otherwise appear as skipped with the
reason. The trace workloads replay tiny generated traces (``tests/bench_tiny_traces.py``), so the
real data is not needed and the run stays fast.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from benchmarks.adapters import ADAPTERS, Entry, load_adapters
from benchmarks.adapters.core_adapter import CrdtCoreAdapter
from benchmarks.cli import main
from benchmarks.harness import Progress, RunConfig, percentile
from benchmarks.report import load_run, render_markdown, write_report
from benchmarks.runner import run
from benchmarks.suites import SUITES, expand
from benchmarks.suites.crdt import ApplyUpdates, LocalWrites
from crdt_core.engine import Replica
from tests.bench_tiny_traces import write_tiny_traces

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUITE_NAMES = ("engine", "domain")


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Tiny traces and no installs, for this module (workers inherit the environment)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("QUICKSLOT_BENCH_DATA", str(write_tiny_traces(tmp_path_factory.mktemp("traces"))))
    patch.setenv("QUICKSLOT_BENCH_NO_INSTALL", "1")
    yield
    patch.undo()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_env: None) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    stream = io.StringIO()
    config = RunConfig(suites=("crdt",), scale="tiny", repeat=1, command="test tiny")
    data = run(config, out, Progress(stream=stream))
    return out, data, stream.getvalue()


def test_json_has_every_section_and_the_machine(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    out, data, _ = tiny_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(data))
    for key in ("schema", "command", "started_at", "duration_s", "config", "machine", "load_average_end",
                "engines", "engine_notes", "engines_skipped", "workloads", "target_specs", "results",
                "ratios", "targets"):  # fmt: skip
        assert key in saved, key
    machine = saved["machine"]
    for key in ("python", "cpu_count", "usable_cores", "load_average", "versions", "platform"):
        assert key in machine, key
    assert machine["versions"]["pycrdt"]
    assert {"pycrdt", "crdt_core"} <= set(saved["engines"])
    assert saved["config"]["scale"] == "tiny"
    assert saved["config"]["suites"] == list(SUITE_NAMES) == expand(["crdt"])  # the alias expanded
    assert set(machine["load_average_by_suite"]) == set(SUITE_NAMES)
    # Every known engine either ran or says why it did not.
    assert set(saved["engines"]) | set(saved["engines_skipped"]) == set(ADAPTERS)
    assert all(why for why in saved["engines_skipped"].values())


def test_every_workload_ran_every_engine_and_nothing_diverged(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, data, _ = tiny_run
    adapters, _ = load_adapters(list(data["engines"]))
    names = [w.name for s in SUITE_NAMES for w in SUITES[s]().build(adapters)]
    assert list(data["workloads"]) == names
    results = data["results"]
    for name in names:
        rows = [r for r in results if r["workload"] == name]
        assert rows, name
        assert {r["size"] for r in rows} == set(data["workloads"][name]["sizes"])
    engine_rows = [
        r for r in results if r["workload"] in ("local_writes", "concurrent_merge", "incremental_diff")
    ]
    for engine in data["engines"]:
        assert any(r["engine"] == engine for r in engine_rows), engine
    text_prefixes = ("b1_", "b2_", "b3_many_clients_text", "b3_trace", "b4_")
    text_workloads = {name for name in names if name.startswith(text_prefixes)}
    for name in text_workloads:
        for engine in data["engines"]:
            rows = [r for r in results if r["workload"] == name and r["engine"] == engine]
            assert rows, (name, engine)
            if engine == "crdt_core":  # no text type: reported, never timed
                assert {r["status"] for r in rows} == {"unsupported"}
    for r in results:
        assert r["status"] in ("ok", "unsupported"), (r["workload"], r["subject"], r["status"], r["note"])
        if r["status"] == "unsupported":
            assert r["samples"] == [] and r["note"]
            continue
        assert r["samples"] and all(s > 0 and math.isfinite(s) for s in r["samples"])
        assert r["stats"]["p99"] >= r["stats"]["p50"] > 0
    # Unsupported: merging without a document (y-py, loro) and text in crdt_core, nothing else.
    unsupported = {(r["workload"], r["subject"]) for r in results if r["status"] == "unsupported"}
    assert {s for w, s in unsupported if w == "apply_updates"} <= {"y-py merged", "loro merged"}
    assert {s for w, s in unsupported if w != "apply_updates"} <= {"crdt_core"}
    # Every trace replay proved its content.
    for r in results:
        if r["workload"].startswith(("b4_", "b3_trace")) and r["status"] == "ok":
            assert r["extra"]["proof"] and len(r["extra"]["sha256"]) == 64


def test_ratios_are_present_and_positive(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = tiny_run
    ratios = data["ratios"]
    by_key = {(r["workload"], r["size"], r["subject"]): r for r in ratios}
    for r in data["results"]:
        baseline = data["workloads"][r["workload"]]["baseline"]
        if baseline is None or r["status"] != "ok":
            continue
        ratio = by_key[(r["workload"], r["size"], r["subject"])]
        assert ratio["baseline"] == baseline
        assert ratio["ratio"] > 0 and math.isfinite(ratio["ratio"])
        if r["subject"] == baseline:
            assert ratio["ratio"] == 1.0
    assert {"local_writes", "validation", "bytes_per_reservation", "apply_updates"} <= {
        r["workload"] for r in ratios
    }
    validation = by_key[("validation", data["workloads"]["validation"]["sizes"][0], "crdt_core decoder")]
    assert validation["baseline"] == "pycrdt apply-to-copy"
    for r in data["results"]:
        if r["workload"] == "validation":
            assert 0 < r["extra"]["p50_fastest_pass"] <= r["extra"]["p99_fastest_pass"]
            assert set(r["extra"]["refusal_codes"]) == {"forbidden", "bad_signature", "rewrite"}
    # Target checks exist; at tiny scale they are "not measured", never a verdict on speed.
    assert len(data["targets"]) == len(data["target_specs"]) >= 2
    assert all(t["met"] is None for t in data["targets"])


def test_markdown_and_plots_are_written(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    out, data, _ = tiny_run
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary.startswith("# QuickSlot benchmarks")
    assert "## Targets" in summary and "Command: `test tiny`" in summary
    for name, meta in data["workloads"].items():
        assert meta["title"] in summary
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert 1_000 < png.stat().st_size < 300_000
        assert f"]({name}.png)" in summary
    assert (out / "ratios.png").read_bytes()[:8] == PNG_MAGIC
    assert "x |" in summary  # ratio column filled


def test_report_rebuilds_the_same_summary_from_json(
    tiny_run: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    out, _, _ = tiny_run
    data = load_run(out)
    write_report(data, tmp_path, plots=False)
    rebuilt = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert rebuilt == render_markdown(data)
    assert rebuilt.replace("\n", "").count("| ") > 20


def test_progress_is_reported_while_running(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    _, data, progress = tiny_run
    for name, meta in data["workloads"].items():
        assert f"{meta['suite']}/{name} n=" in progress
    assert "wrote " in progress and "engines:" in progress


class _LossyAdapter(CrdtCoreAdapter):
    """Fast and wrong: forgets every third write. The harness must call it diverged, not fast."""

    name = "lossy"

    def __init__(self) -> None:
        self._n = 0

    def write(self, doc: Replica, entries: Sequence[Entry]) -> bytes:
        self._n += 1
        if self._n % 3 == 0:
            return b"\x00\x00"
        return doc.write(entries)


def test_an_engine_that_disagrees_is_reported_as_diverged() -> None:
    config = RunConfig(scale="tiny", repeat=1)
    quiet = Progress(enabled=False)
    results = LocalWrites({"lossy": _LossyAdapter()}).run(20, config, quiet)
    assert [r.status for r in results] == ["diverged"]
    assert results[0].samples == [] and "lossy" in results[0].note
    results = ApplyUpdates({"lossy": _LossyAdapter()}).run(20, config, quiet)
    assert {r.status for r in results} == {"diverged"}


def test_cli_list_and_a_tiny_cli_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_env: None
) -> None:
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    for text in ("suite engine", "suite domain", "local_writes", "b4_automerge_trace", "storm", "pycrdt"):
        assert text in listing
    assert "alias crdt" in listing
    out = tmp_path / "cli"
    assert (
        main(["run", "--tiny", "--workload", "verdict,bytes_per_reservation", "--out", str(out), "--quiet"])
        == 0
    )
    data = load_run(out)
    assert list(data["workloads"]) == ["verdict", "bytes_per_reservation"]
    assert data["config"]["suites"] == ["engine", "domain"]  # the default is every engine suite
    assert data["command"].startswith("quickslot-bench run --tiny")
    assert main(["report", str(out), "--no-plots"]) == 0
    assert main(["run", "--suite", "nope", "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_percentile_matches_the_usual_definition() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.5
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_a_ratio_against_a_zero_baseline_is_none_not_a_division_error() -> None:
    """A baseline can measure a true zero (an idle Node server spends no CPU over 2 s); every
    subject's ratio at that size is then None, and sizes with a non-zero baseline still get one."""
    from benchmarks.harness import Result
    from benchmarks.report import compute_ratios

    def row(subject: str, size: int, value: float) -> dict[str, Any]:
        return Result("idle", subject, subject, size, "time", "s/op", "op", 1, [value]).to_json()

    data = {
        "workloads": {"idle": {"baseline": "base"}},
        "results": [row("base", 1, 0.0), row("ours", 1, 2e-6), row("base", 2, 1e-6), row("ours", 2, 3e-6)],
    }
    ratios = {(r["size"], r["subject"]): r["ratio"] for r in compute_ratios(data)}
    assert ratios[(1, "base")] is None and ratios[(1, "ours")] is None
    assert ratios[(2, "base")] == 1.0 and ratios[(2, "ours")] == pytest.approx(3.0)
