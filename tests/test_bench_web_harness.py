"""The web benchmark suite itself: a tiny run must drive the SDK in Node, verify that it reaches
crdt_core's verdict and accepts the same records, book at a real relay until durable acks, and
report ratios against its baselines.

Why a test: the suite drives the SDK's verdict, validation and client through a Node driver
(``benchmarks/node/sdk_bench.mjs``) and a relay process, so a change to any of them could
silently break the benchmark. Structure and sanity only, never a time.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from benchmarks.harness import Progress, RunConfig
from benchmarks.runner import run
from benchmarks.suites import SUITES, web
from tests.bench_checks import assert_every_subject_measured
from tests.web.sdk_env import node_or_skip


def test_a_tiny_web_run_measures_every_subject_and_reports_ratios(tmp_path: Path) -> None:
    node_or_skip()
    assert "web" in SUITES
    config = RunConfig(suites=("web",), scale="tiny", repeat=1, plots=False, command="test web tiny")
    data = run(config, tmp_path, Progress(stream=io.StringIO()))
    assert list(data["workloads"]) == ["sdk_verdict", "sdk_catchup", "sdk_book_ack"]
    subjects = {
        "sdk_verdict": {web.CRDT_CORE, web.SDK_SUBJECT, web.SDK_WARM},
        "sdk_catchup": {web.CRDT_CORE, web.SDK_SUBJECT},
        "sdk_book_ack": {web.WS_CORE, web.SDK_CLIENT, web.PY_CLIENT},
    }
    assert_every_subject_measured(data, subjects)
    ratios = {(x["workload"], x["subject"]): x["ratio"] for x in data["ratios"]}
    assert ratios[("sdk_verdict", web.CRDT_CORE)] == 1.0 and ratios[("sdk_book_ack", web.WS_CORE)] == 1.0
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    catchup = [r for r in data["results"] if r["workload"] == "sdk_catchup"]
    assert all(r["extra"]["records"] > 100 for r in catchup)  # every reservation, plus certificates


def test_without_node_every_subject_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    results = web.SdkVerdict().run(100, RunConfig(scale="tiny"), Progress(stream=io.StringIO()))
    assert [(r.status, r.note) for r in results] == [("unsupported", "node is not installed")] * 3
