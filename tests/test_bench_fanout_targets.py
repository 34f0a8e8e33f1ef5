"""Targets 2 and 4 of the relay suite (``targets.py --fanout``): fan-out at offered rates and at
saturation, and the p99 bound taken from the relay's own commit-latency histogram.

Why a test: the command is run by hand for the benchmark document, against real servers; a relay
change (metric names, protocol) or a harness refactor would break it silently. This runs it with
three clients for a few seconds and checks what the verdicts are computed from, never a time.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.relay_bench import promhist, targets
from benchmarks.relay_bench.servers import QUICKSLOT, Y_WEBSOCKET

BEFORE = """# TYPE quickslot_commit_latency_seconds histogram
quickslot_commit_latency_seconds_bucket{le="0.001"} 5
quickslot_commit_latency_seconds_bucket{le="0.01"} 8
quickslot_commit_latency_seconds_bucket{le="0.1"} 10
quickslot_commit_latency_seconds_bucket{le="+Inf"} 10
quickslot_commit_latency_seconds_sum 0.3
quickslot_commit_latency_seconds_count 10
quickslot_commit_batch_size_bucket{le="1"} 99
"""
AFTER = BEFORE.replace('"0.001"} 5', '"0.001"} 55').replace('"0.01"} 8', '"0.01"} 148')
AFTER = AFTER.replace('"0.1"} 10', '"0.1"} 160').replace('"+Inf"} 10', '"+Inf"} 161')


def test_commit_p99_comes_from_the_bucket_deltas_of_two_scrapes() -> None:
    d = promhist.delta(
        promhist.buckets(AFTER, promhist.COMMIT_LATENCY), promhist.buckets(BEFORE, promhist.COMMIT_LATENCY)
    )
    assert d == [(0.001, 50.0), (0.01, 140.0), (0.1, 150.0), (math.inf, 151.0)]
    assert promhist.count(d) == 151
    # rank 0.99 x 151 = 149.49 lies in (0.01, 0.1]: 9.49 of that bucket's 10 observations
    assert promhist.quantile(d, 0.99) == pytest.approx(0.01 + 0.09 * 9.49 / 10)
    assert promhist.quantile_upper(d, 0.99) == 0.1
    assert promhist.quantile(d, 0.5) == pytest.approx(0.001 + 0.009 * (75.5 - 50) / 90)
    assert promhist.quantile(d, 1.0) == 0.1  # in the +Inf bucket: the highest finite bound
    assert promhist.quantile([], 0.99) is None
    assert promhist.buckets(AFTER, "no_such_metric") == []


def test_fanout_targets_run_offered_and_saturated_rounds_on_real_servers() -> None:
    args = targets.parser().parse_args(
        ["--docs", "0", "--idle-conns", "0", "--fanout", "3", "--fanout-rounds", "1",
         "--fanout-offered", "3,10", "--fanout-window", "2", "--fanout-deliveries", "60"]
    )  # fmt: skip
    out = targets.run(args)
    rec, s = out["fanout"]["3"], out["summary"]["fanout"]["3"]
    assert rec["shapes"]["saturated"]["window"] == 2 and rec["shapes"]["saturated"]["per_client"] == 10
    for mode in ("offered", "saturated"):
        (qs,) = rec[mode][QUICKSLOT]
        assert qs["complete"] and qs["deliveries"] == qs["expected_deliveries"] > 0
        assert qs["cpu_per_delivery_s"] > 0 and qs["latency"]["p99"] > 0
        assert promhist.count(qs["commit_buckets"]) > 0  # the relay's own commits in this round
        assert s[mode]["commit_count"] > 0 and s[mode]["commit_p99_s"] > 0
        if Y_WEBSOCKET in s["unavailable"]:
            continue  # no Node here: QuickSlot's half still ran
        (yws,) = rec[mode][Y_WEBSOCKET]
        assert yws["complete"] and yws["deliveries"] == yws["expected_deliveries"]
        assert s[mode]["target2_cpu_ratio"] > 0 and isinstance(s[mode]["target2_met"], bool)
        lanes = s[mode]["lanes"]
        limit = lanes[Y_WEBSOCKET]["p99_s"] + s[mode]["commit_p99_s"]
        assert s[mode]["target4_limit_s"] == pytest.approx(limit)
        assert s[mode]["target4_met"] == (lanes[QUICKSLOT]["p99_s"] <= limit)
        assert len(s[mode]["target4_round_ratios"]) == 1  # one round: paired with itself
        assert s[mode]["target4_round_ratios"][0] == pytest.approx(s[mode]["target4_ratio"])
    assert rec["offered"][QUICKSLOT][0]["offered_per_s"] == pytest.approx(3 * 2 * 3 / 0.3)
    assert rec["saturated"][QUICKSLOT][0]["offered_per_s"] is None


def test_cost_per_update_splits_into_a_per_update_and_a_per_recipient_part() -> None:
    from benchmarks.relay_bench.fanout_targets import _split

    # 100 µs per update plus 5 µs per recipient: 49 recipients and 199 recipients
    cpd = {50: (100e-6 + 49 * 5e-6) / 49, 200: (100e-6 + 199 * 5e-6) / 199}
    summary = {
        str(n): {"saturated": {"lanes": {QUICKSLOT: {"cpu_per_delivery_s": c}}}} for n, c in cpd.items()
    }
    got = _split(summary)["saturated"][QUICKSLOT]
    assert got["per_update_s"] == pytest.approx(100e-6) and got["per_recipient_s"] == pytest.approx(5e-6)
