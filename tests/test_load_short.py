"""The load tool, small: 100 authenticated connections on a real relay process for 5 seconds.

Why in ``make test``: ``make load`` (1,000 connections, minutes) is run by hand before a release;
without a short run on every change, a protocol or CLI change would break the tool unnoticed, and
a relay change that makes a held connection error, drop an update or grow memory would go
unnoticed too. This runs the tool exactly as ``make load`` does (its CLI, two driver processes,
a relay with default sync limits on a free loopback port) and checks what the full run is judged
by: no error of any kind, every connection held to the end, every update acknowledged and
delivered to every other subscriber once, and the relay's peak RSS within the stated bound.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.load.accounts import accounts_for
from benchmarks.load.report import memory_bound

REPO = Path(__file__).resolve().parents[1]
CONNECTIONS = 100


def test_short_load_run_holds_every_connection_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "load"
    cmd = [
        sys.executable, "-m", "benchmarks.load", "--connections", str(CONNECTIONS), "--duration", "5",
        "--docs", "50", "--rate", "50", "--drain", "15", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())

    assert s["ok"] is True
    assert s["error_total"] == 0, s["errors"]
    assert all(v == 0 for v in s["errors"].values()), s["errors"]
    assert s["connections"]["opened"] == s["connections"]["held_at_end"] == CONNECTIONS
    u = s["updates"]
    assert u["planned"] == u["sent"] == u["acked"] == 250
    assert u["delivered"] == u["expected_deliveries"] > u["sent"]  # each update reaches several subscribers
    assert s["latency_ms"]["ack"]["n"] == 250
    assert s["latency_ms"]["delivery"]["n"] == u["delivered"]
    assert 0 < s["latency_ms"]["ack"]["p50"] <= s["latency_ms"]["ack"]["p99"] <= s["latency_ms"]["ack"]["max"]

    m = s["memory"]
    assert m["within_bound"] is True
    assert 0 < m["rss_idle_mib"] <= m["rss_connected_mib"] <= m["rss_peak_mib"]
    assert m["rss_peak_mib"] * 2**20 <= memory_bound(CONNECTIONS)
    assert len([p for p in s["timeline"] if p["phase"] == "load"]) >= 3  # sampled every second
    assert s["shape"]["accounts"] == len(accounts_for(CONNECTIONS)) < CONNECTIONS  # shared accounts
    assert (out / "load.png").stat().st_size > 10_000


def test_device_mix_adds_up_to_the_connections() -> None:
    assert accounts_for(5, (1, 2)) == [1, 2, 1, 1]
    assert sum(accounts_for(1000)) == 1000


def test_churn_tool_ends_with_a_clean_sigterm(tmp_path: Path) -> None:
    """The churn companion (``python -m benchmarks.load.churn``), small: 2 rounds of 20 connections,
    then SIGTERM with 20 held; every one gets 1001 and the relay exits 0."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.load.churn",
        "--connections",
        "20",
        "--rounds",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "churn.json").read_text())
    assert result["shutdown"]["close_codes"] == {"1001": 20}
    assert result["shutdown"]["exit_code"] == 0
    assert len(result["rounds"]) == 2 and result["rounds"][0]["rss_closed_mib"] > 0
