"""The relay memory soak, for a few seconds: so ``make soak`` (2 hours, by hand) cannot rot.

Why in the suite: the soak drives a real relay process through its REST login and the sync
protocol (bookings, cancels, day roll-over with unsubscribes, reconnects, newcomers catching up);
a protocol or CLI change would break it silently, and it is only run by hand for hours. This runs
it end to end with time compressed further (a "day" of 2 s) and checks what the long run is judged
by: every update acknowledged, fanned out, no error, samples with RSS, the slope and the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.relay_bench.soak import main, rss_slope_mib_per_hour


def test_short_soak_acknowledges_everything_and_writes_slope_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    argv = [
        "--seconds", "6", "--out", str(out), "--devices", "4", "--shops", "2", "--rate", "6",
        "--day-seconds", "2", "--idle-unload", "1", "--reconnect-seconds", "6", "--newcomer-seconds", "3",
        "--newcomer-stay", "1.5", "--sample-seconds", "1", "--warmup-seconds", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["errors"] == {}
    assert s["sent"] == s["acked"] > 10
    assert s["delivered"] > s["sent"]  # each update reaches the other subscribers
    assert s["days"] >= 3 and s["newcomers"] >= 1
    assert s["samples"] >= 6 and s["fit_samples"] >= 3
    assert s["rss_first_mib"] > 10 and s["slope_mib_per_hour"] == s["slope_mib_per_hour"]  # not NaN
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(p["rss"] >= p["rss_anon"] > 0 and "loaded_documents" in p for p in samples)
    assert (out / "soak.png").stat().st_size > 10_000


def test_slope_is_least_squares_after_warmup() -> None:
    samples = [{"t": t, "rss": (100 + (t / 3600) * 2) * 2**20} for t in range(0, 7200, 60)]
    samples[0]["rss"] = 10 * 2**20  # warm-up, ignored
    slope, n = rss_slope_mib_per_hour(samples, 600)
    assert abs(slope - 2.0) < 1e-9 and n == len(samples) - 10
