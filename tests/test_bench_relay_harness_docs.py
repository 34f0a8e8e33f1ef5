"""The relay benchmark suite's tiny run, second half: many documents, catch-up and idle memory.

Why a module of its own: ``--dist loadfile`` keeps a module on one worker, and the whole tiny run
kept one worker busy for minutes; split in two (``test_bench_relay_harness.py`` runs the floor
and fan-out), the halves run at once. The shared checks are imported from there and run here on
this half's results; together the halves run every workload of the suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.relay_bench import servers
from benchmarks.suites import relay as relay_suite
from tests import test_bench_relay_harness as first_half
from tests.test_bench_relay_harness import (  # noqa: F401 - collected here, on this half's run
    run_tiny,
    test_every_workload_ran_quickslot_and_its_lanes,
    test_json_markdown_plots_and_headline_table,
    test_postgresql_lane_ran_beside_sqlite_with_a_ratio,
    test_pycrdt_websocket_baseline_ran,
    test_samework_hocuspocus_ran_and_quickslot_rows_carry_the_ratio,
    test_y_websocket_baseline_ran_and_ratios_use_it,
)

WORKLOADS = (
    "docs_throughput",
    "docs_cpu",
    "catch_up",
    "idle_memory",
    "idle_conn_memory",
    "idle_conn_cpu",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    return run_tiny(tmp_path_factory, WORKLOADS)


def test_the_two_halves_run_every_workload_of_the_suite() -> None:
    names = [w.name for w in relay_suite.workloads({})]
    assert sorted(first_half.WORKLOADS + WORKLOADS) == sorted(names)
    assert not set(first_half.WORKLOADS) & set(WORKLOADS)


def test_catch_up_held_every_record_and_idle_documents_stayed_loaded(
    tiny_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, data, _ = tiny_run
    # QuickSlot's updates really were validated and stamped: the catch-up answer held every record.
    (catch,) = [
        r for r in data["results"] if r["workload"] == "catch_up" and r["subject"] == servers.QUICKSLOT
    ]
    assert catch["extra"]["records"] == catch["size"] and catch["extra"]["sync_bytes"] > 0
    (idle,) = [
        r for r in data["results"] if r["workload"] == "idle_memory" and r["subject"] == servers.QUICKSLOT
    ]
    assert idle["extra"]["loaded_documents"] is None or idle["extra"]["loaded_documents"] >= idle["size"]
