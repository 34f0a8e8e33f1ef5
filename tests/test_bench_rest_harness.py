"""The REST sync benchmark suite itself: a tiny run must start a relay, page a real catalogue,
send real batches and websocket updates, catch a day up both ways, and report ratios against
its baselines.

Why a test: the suite drives the REST sync API, the websocket and the relay's CLI, so a change to
any of them could silently break the benchmark. Structure and sanity only, never a time.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from benchmarks.harness import Progress, RunConfig
from benchmarks.runner import run
from benchmarks.suites import SUITES, rest
from tests.bench_checks import assert_every_subject_measured


def test_a_tiny_rest_run_measures_every_subject_and_reports_ratios(tmp_path: Path) -> None:
    assert "rest" in SUITES
    config = RunConfig(suites=("rest",), scale="tiny", repeat=1, plots=False, command="test rest tiny")
    data = run(config, tmp_path, Progress(stream=io.StringIO()))
    assert list(data["workloads"]) == ["catalogue_page", "batch_100", "catchup_day"]
    subjects = {
        "catalogue_page": {rest.AUTH_ME, rest.PAGE, rest.NOT_MODIFIED},
        "batch_100": {rest.WEBSOCKET, rest.BATCH_MSGPACK, rest.BATCH_JSON},
        "catchup_day": {rest.WEBSOCKET, rest.CHECK_UPDATES},
    }
    assert_every_subject_measured(data, subjects)
    pages = [r for r in data["results"] if r["workload"] == "catalogue_page"]
    assert {len(r["samples"]) for r in pages} == {5 * 2}  # 500 shops at 100, two rounds, each kind alike
    ratios = {(x["workload"], x["subject"]): x["ratio"] for x in data["ratios"]}
    assert ratios[("catalogue_page", rest.AUTH_ME)] == 1.0 and ratios[("batch_100", rest.WEBSOCKET)] == 1.0
    assert all(math.isfinite(v) and v > 0 for v in ratios.values())
    assert ratios[("catchup_day", rest.WEBSOCKET)] == 1.0
    assert (tmp_path / "summary.md").read_text().count("vs websocket") == 2
    batches = [r for r in data["results"] if r["workload"] == "batch_100"]
    for r in batches:  # relay CPU and group commits measured for every way of sending
        assert r["extra"]["cpu_per_update_s"] > 0 and r["extra"]["median_commits"] >= 1, r["subject"]
    days = {r["subject"]: r for r in data["results"] if r["workload"] == "catchup_day"}
    assert {len(r["samples"]) for r in days.values()} == {2}
    diff = days[rest.WEBSOCKET]["extra"]["day_diff_bytes"]
    for r in days.values():  # both received the whole day, and counted at least its bytes
        assert r["extra"]["median_bytes"] > diff > 40 * 100, r["subject"]
    assert days[rest.WEBSOCKET]["extra"]["bytes_vs_websocket"] == 1.0
