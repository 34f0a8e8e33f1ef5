"""The client benchmark suite itself: a tiny run must build real profiles, start a relay and report.

Why a test: the client suite drives ``LocalClient``, the sync service and a relay process, so a
change to any of them (a new store schema, a sync flag, the relay's CLI) could silently break the
benchmark ("so the harness itself cannot silently break"). This asserts structure and
sanity (every subject measured and checked, the baseline's settings equal the client's, ratios
positive, JSON, markdown and plots written), never a time: timings on a shared box say nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from benchmarks.client_bench import plain, world
from benchmarks.harness import Progress, RunConfig
from benchmarks.report import load_run, render_markdown
from benchmarks.runner import run
from benchmarks.suites import SUITES, client as client_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUBJECTS = {
    "booking": {client_suite.BOOK, client_suite.PLAIN, client_suite.PLAIN_SYNC},
    "booking_cpu": {client_suite.BOOK, client_suite.PLAIN, client_suite.PLAIN_SYNC},
    "shops": {client_suite.SHOPS, client_suite.PLAIN_SHOPS},
    "catch_up": {client_suite.SYNC, client_suite.VALIDATE, client_suite.PYCRDT},
}


def rows_of(data: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    return [r for r in data["results"] if r["workload"] == workload]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    assert "client" in SUITES
    out = tmp_path_factory.mktemp("client-bench")
    stream = io.StringIO()
    config = RunConfig(suites=("client",), scale="tiny", repeat=1, command="test client tiny")
    data = run(config, out, Progress(stream=stream))
    return out, data, stream.getvalue()


def test_every_workload_and_subject_ran_and_passed_its_checks(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, data, progress = tiny_run
    assert list(data["workloads"]) == ["booking", "booking_cpu", "shops", "catch_up"]
    for name, subjects in SUBJECTS.items():
        rows = [r for r in data["results"] if r["workload"] == name]
        assert {r["subject"] for r in rows} == subjects
        for r in rows:
            assert r["status"] == "ok", (name, r["subject"], r["note"])
            assert r["samples"] and all(s > 0 and math.isfinite(s) for s in r["samples"])
            assert r["stats"]["p99"] >= r["stats"]["p50"] > 0
        assert f"client/{name} n=" in progress
    (book,) = [r for r in rows_of(data, "booking") if r["subject"] == client_suite.BOOK]
    assert len(book["samples"]) == book["extra"]["bookings_per_round"] == 5
    assert book["extra"]["reservations_in_day_at_start"] == book["size"] == 20
    assert book["extra"]["document_bytes"] > 0 and len(book["extra"]["first_booking_s"]) == 1
    (cpu,) = [r for r in rows_of(data, "booking_cpu") if r["subject"] == client_suite.BOOK]
    assert cpu["samples"] == book["extra"]["cpu_s"] and len(cpu["samples"]) == len(book["samples"])
    (sync,) = [r for r in data["results"] if r["subject"] == client_suite.SYNC]
    assert sync["size"] == 100 and sync["extra"]["relay_fill_wall_s"] > 0
    assert sync["extra"]["document_bytes"] > 100 * 200  # signed bookings and their stamps


def test_the_baseline_uses_the_clients_sqlite_settings(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    _, data, _ = tiny_run
    rows = {r["subject"]: r for r in data["results"] if r["workload"] == "booking"}
    ours, base = rows[client_suite.BOOK]["extra"], rows[client_suite.PLAIN]["extra"]
    assert ours["synchronous"] == base["synchronous"] == 2  # FULL, what client/storage/store.py sets
    assert str(ours["journal_mode"]).lower() == str(base["journal_mode"]).lower() == "wal"
    for pragma in plain.PRAGMAS:
        assert pragma.startswith("PRAGMA ")
    source = Path(__file__).resolve().parents[1] / "client" / "storage" / "store.py"
    text = source.read_text(encoding="utf-8")
    for setting in ("journal_mode = WAL", "synchronous = FULL", "busy_timeout"):
        assert setting in text, (
            f"client/storage/store.py no longer sets {setting}: update client_bench/plain.py"
        )


def test_ratios_targets_json_markdown_and_plots(tiny_run: tuple[Path, dict[str, Any], str]) -> None:
    out, data, _ = tiny_run
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["config"]["suites"] == ["client"] and saved["config"]["scale"] == "tiny"
    ratios = {(r["workload"], r["subject"]): r["ratio"] for r in saved["ratios"]}
    for name, subjects in SUBJECTS.items():
        baseline = saved["workloads"][name]["baseline"]
        assert baseline in subjects and ratios[(name, baseline)] == 1.0
        for subject in subjects:
            assert ratios[(name, subject)] > 0 and math.isfinite(ratios[(name, subject)])
    assert len(saved["targets"]) == len(client_suite.TARGETS)
    assert all(t["met"] is None for t in saved["targets"])  # tiny sizes never judge a target
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert summary == render_markdown(load_run(out), [p.name for p in out.glob("*.png")])
    for name, meta in data["workloads"].items():
        assert meta["title"] in summary
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert "synchronous=FULL" in summary


def test_a_built_profile_holds_what_the_suite_says(tmp_path: Path) -> None:
    """The fixtures' documents pass the client's own validation and land in the projections."""
    built = asyncio.run(world.build_profile(tmp_path / "p", reservations=30, shops=40))
    with sqlite3.connect(built.path / "quickslot.db") as db:
        (reservations,) = db.execute("SELECT COUNT(*) FROM reservations").fetchone()
        (shops,) = db.execute("SELECT COUNT(*) FROM shops").fetchone()
        (slots,) = db.execute("SELECT COUNT(*) FROM slots").fetchone()
    assert (reservations, shops, slots) == (30, 40, len(world.SLOTS))
    base = plain.build(tmp_path / "plain.db", reservations=30, shops=40)
    with sqlite3.connect(base) as db:
        ours = db.execute("SELECT id FROM shops WHERE category = 'cat-01' ORDER BY name, id").fetchall()
    assert len(ours) == 2
