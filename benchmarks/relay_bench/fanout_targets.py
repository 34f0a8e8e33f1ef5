"""Targets 2 and 4 (fan-out) for ``benchmarks.relay_bench.targets``: one run, interleaved lanes.

* Target 2: relay CPU per delivery <= 1.25 x y-websocket's at 50 and 200 clients, both at the
  relay suite's offered rates (``offered``: its full-scale fan-out shapes) and at saturation
  (``saturated``: every client keeps ``--fanout-window`` updates unanswered, so no server idles;
  deliveries per second is then what the server delivered, bounded by the load generator where
  the load generator is the slower side, which ``loadgen_cpu_per_delivery_s`` shows).
* Target 4: QuickSlot's p99 at 50 clients (offered rate) <= y-websocket's p99 + the p99 of the
  relay's own commit-latency histogram (``quickslot_commit_latency_seconds``) over the same
  rounds, scraped from ``/metrics`` before and after each QuickSlot round.

The same-work Hocuspocus lane joins with ``--same-work`` (its ratios are reported beside).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.relay_bench import experiments as ex, promhist
from benchmarks.relay_bench.payloads import bookings_doc, yjs_value_size_for
from benchmarks.relay_bench.servers import HOCUSPOCUS_SAME, QUICKSLOT, Y_WEBSOCKET, Fleet, Lane, QuickSlotAsgi
from benchmarks.suites.common import scratch_dir

#: Target 2's bound on QuickSlot's CPU per delivery over y-websocket's.
CPU_RATIO_LIMIT = 1.25
MODES = ("offered", "saturated")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fanout", default="", help="fan-out sizes for targets 2 and 4, e.g. 50,200 ('' skips)")
    p.add_argument("--fanout-rounds", type=int, default=2)
    p.add_argument("--fanout-window", type=int, default=2, help="saturation: updates in flight per client")
    p.add_argument(
        "--fanout-deliveries",
        type=int,
        default=100_000,
        help="saturation: deliveries per round (rounded up to whole updates per client)",
    )
    p.add_argument("--fanout-deadline", type=float, default=120.0, help="seconds a saturated round may take")
    p.add_argument(
        "--fanout-offered",
        default="",
        metavar="PER_CLIENT,RATE",
        help="offered shape instead of the suite's full-scale one (updates per client, per second each)",
    )
    p.add_argument("--same-work", action="store_true", help="also run the same-work Hocuspocus lane")
    p.add_argument("--py-spy", type=Path, help="record the relay (raw format) in its first saturated round")


def offered_shape(size: int, override: str = "") -> ex.FanoutShape:
    """The relay suite's full-scale shape (its fallback for other sizes), unless overridden."""
    from benchmarks.suites.relay import SCALE_SHAPES

    if override:
        per_client, rate = override.split(",")
        return ex.FanoutShape(size, int(per_client), float(rate))

    shape = SCALE_SHAPES["full"].fanout.get(size)
    return shape or ex.FanoutShape(size, max(2, 600 // size), 10.0 / max(1.0, size / 10))


def saturated_shape(size: int, deliveries: int, window: int) -> ex.FanoutShape:
    per_client = max(window, math.ceil(deliveries / (size * max(1, size - 1))))
    return ex.FanoutShape(size, per_client, 0.0, window=window)


def run_fanout(args: argparse.Namespace, out: dict[str, Any]) -> None:
    lanes_wanted = (QUICKSLOT, Y_WEBSOCKET) + ((HOCUSPOCUS_SAME,) if args.same_work else ())
    for size in [int(x) for x in args.fanout.split(",") if x.strip()]:
        rec: dict[str, Any] = out.setdefault("fanout", {}).setdefault(str(size), {})
        with scratch_dir("quickslot-fan-targets-") as workdir, Fleet(workdir, lanes_wanted) as fleet:
            assert fleet.relay is not None
            rec["unavailable"] = dict(fleet.unavailable)
            ids = fleet.relay.ensure_identities(size)
            lanes = [n for n in lanes_wanted if n in fleet.lanes]
            shapes = {
                "offered": offered_shape(size, args.fanout_offered),
                "saturated": saturated_shape(size, args.fanout_deliveries, args.fanout_window),
            }
            rec["shapes"] = {m: vars(s) for m, s in shapes.items()}
            value_size = yjs_value_size_for(
                sorted(len(u) for u in ex.quickslot_pool(ids, bookings_doc("probe"), range(1), 3)[0])[1]
            )
            rng = random.Random(size)
            for round_no in range(-1, args.fanout_rounds):  # round -1: a short warm-up, dropped
                for mode in MODES:
                    shape = shapes[mode]
                    if round_no < 0:
                        shape = ex.FanoutShape(size, 1, shape.rate_per_client or 10.0, min(1, shape.window))
                    order = lanes if round_no % 2 == 0 else list(reversed(lanes))
                    for name in order:
                        res = _one_round(
                            fleet, fleet.lanes[name], shape, size, round_no, mode, value_size, rng, args
                        )
                        _say(size, round_no, mode, name, res)
                        if round_no >= 0:
                            rec.setdefault(mode, {}).setdefault(name, []).append(res)
            if args.py_spy:
                # One more saturated QuickSlot round under the profiler, kept apart: sampling
                # pauses the relay, so its figures are not comparable with the rounds above.
                spy = _start_py_spy(fleet.lanes[QUICKSLOT], args.py_spy, size)
                try:
                    res = _one_round(
                        fleet, fleet.lanes[QUICKSLOT], shapes["saturated"], size, args.fanout_rounds,
                        "saturated", value_size, rng, args,
                    )  # fmt: skip
                finally:
                    _stop_py_spy(spy)
                _say(size, args.fanout_rounds, "profiled", QUICKSLOT, res)
                rec["profiled_round"] = res


def _one_round(
    fleet: Fleet,
    lane: Lane,
    shape: ex.FanoutShape,
    size: int,
    round_no: int,
    mode: str,
    value_size: int,
    rng: random.Random,
    args: argparse.Namespace,
) -> dict[str, Any]:
    subject = lane.subject
    doc = bookings_doc(f"fan{size}{mode[:3]}r{round_no + 1}{lane.name.replace(' ', '').replace('-', '')}")
    if subject.signed_records:
        assert fleet.relay is not None
        pool = ex.UpdatePool(
            ex.quickslot_pool(fleet.relay.ensure_identities(size), doc, range(size), shape.per_client), {}
        )
    else:
        base = 1_000 + 1_000 * (round_no + 1) + (500 if mode == "saturated" else 0)
        pool = ex.UpdatePool({}, ex.yjs_pool(range(size), shape.per_client, value_size, base))
    commits0 = _commit_buckets(subject)
    res = ex.fanout(
        subject,
        shape,
        doc,
        pool,
        workers=2 if size >= 100 else 1,
        compression=lane.compression,
        rng=rng,
        deadline_s=args.fanout_deadline if shape.window else None,
    )
    if commits0 is not None:
        res["commit_buckets"] = promhist.delta(_commit_buckets(subject) or [], commits0)
    res["latency"].pop("kept", None)
    delivered = res["deliveries"]
    res["loadgen_cpu_per_delivery_s"] = res["loadgen_cpu_s"] / delivered if delivered else None
    return res


def _commit_buckets(subject: Any) -> promhist.Buckets | None:
    if not isinstance(subject, QuickSlotAsgi):
        return None
    return promhist.buckets(promhist.scrape(subject.base), promhist.COMMIT_LATENCY)


def _say(size: int, round_no: int, mode: str, name: str, res: dict[str, Any]) -> None:
    cpd = res["cpu_per_delivery_s"]
    tag = "warm-up" if round_no < 0 else f"round {round_no + 1}"
    print(
        f"fan-out n={size} {mode} {tag} {name}: {res['deliveries']:,}/{res['expected_deliveries']:,} "
        f"in {res['window_s']:.1f} s = {res['throughput_per_s']:,.0f}/s, "
        f"CPU {cpd * 1e6 if cpd else float('nan'):.1f} µs/delivery, "
        f"p99 {res['latency'].get('p99', float('nan')) * 1e3:.0f} ms"
        + (f"; {'; '.join(res['notes'])}" if res["notes"] else ""),
        file=sys.stderr,
        flush=True,
    )


def _start_py_spy(lane: Lane, dest: Path, size: int) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    pid = lane.subject.process.pid
    target = dest.with_name(f"{dest.stem}-n{size}{dest.suffix or '.txt'}")
    return subprocess.Popen(  # noqa: S603 (our own venv's py-spy on our own child)
        [str(exe), "record", "--format", "raw", "--rate", "200", "-p", str(pid), "-o", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    os.kill(spy.pid, signal.SIGINT)
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        os.kill(spy.pid, signal.SIGKILL)
        spy.wait(5)


# --- summary -------------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise_fanout(out: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for size, rec in out.get("fanout", {}).items():
        s: dict[str, Any] = {"unavailable": rec.get("unavailable", {})}
        for mode in MODES:
            rounds = rec.get(mode, {})
            per_lane: dict[str, dict[str, Any]] = {
                name: {
                    "cpu_per_delivery_s": _median([r["cpu_per_delivery_s"] for r in rs]),
                    "deliveries_per_s": _median([r["throughput_per_s"] for r in rs]),
                    "p99_s": _median([r["latency"].get("p99") for r in rs]),
                    "loadgen_cpu_per_delivery_s": _median([r["loadgen_cpu_per_delivery_s"] for r in rs]),
                    "cpu_per_delivery_rounds_s": [r["cpu_per_delivery_s"] for r in rs],
                    "complete": all(r["complete"] for r in rs),
                    "offered_per_s": rs[0]["offered_per_s"] if rs else None,
                }
                for name, rs in rounds.items()
            }
            m: dict[str, Any] = {"lanes": per_lane}
            qs, yws, same = (per_lane.get(n, {}) for n in (QUICKSLOT, Y_WEBSOCKET, HOCUSPOCUS_SAME))
            ratio = _ratio(qs.get("cpu_per_delivery_s"), yws.get("cpu_per_delivery_s"))
            m["target2_cpu_ratio"] = ratio
            m["target2_met"] = None if ratio is None else ratio <= CPU_RATIO_LIMIT
            if same:
                m["same_work_cpu_ratio"] = _ratio(
                    qs.get("cpu_per_delivery_s"), same.get("cpu_per_delivery_s")
                )
                m["same_work_p99_ratio"] = _ratio(qs.get("p99_s"), same.get("p99_s"))
            commits: promhist.Buckets = []
            for r in rounds.get(QUICKSLOT, []):
                commits = _sum_buckets(commits, r.get("commit_buckets") or [])
            m["commit_count"] = promhist.count(commits)
            m["commit_p99_s"] = promhist.quantile(commits, 0.99)
            m["commit_p99_bucket_le_s"] = promhist.quantile_upper(commits, 0.99)
            if qs.get("p99_s") is not None and yws.get("p99_s") is not None and m["commit_p99_s"] is not None:
                limit = yws["p99_s"] + m["commit_p99_s"]
                m["target4_limit_s"] = limit
                m["target4_ratio"] = qs["p99_s"] / limit
                m["target4_met"] = qs["p99_s"] <= limit
            m["target4_round_ratios"] = _paired_target4(rounds)
            s[mode] = m
        summary[size] = s
    if len(summary) >= 2:
        summary["split"] = _split(summary)
    return summary


def _paired_target4(rounds: dict[str, list[dict[str, Any]]]) -> list[float]:
    """Target 4 round by round (QuickSlot's round n against y-websocket's round n and the commits
    of QuickSlot's round n): how much of a verdict the machine's noise decides."""
    out = []
    for q, y in zip(rounds.get(QUICKSLOT, []), rounds.get(Y_WEBSOCKET, []), strict=False):
        commit = promhist.quantile(q.get("commit_buckets") or [], 0.99)
        qp, yp = q["latency"].get("p99"), y["latency"].get("p99")
        if commit is not None and qp is not None and yp is not None:
            out.append(qp / (yp + commit))
    return out


def _split(summary: dict[str, Any]) -> dict[str, Any]:
    """Each server's CPU per update as ``per_update + per_recipient x (clients - 1)``, solved from
    the smallest and largest size of the run: which part of a delivery's cost is paid once per
    update (validation, signatures, commit) and which once per recipient (framing, sending)."""
    lo, hi = sorted(summary, key=int)[0], sorted(summary, key=int)[-1]
    out: dict[str, Any] = {}
    for mode in MODES:
        for name, a in summary[lo].get(mode, {}).get("lanes", {}).items():
            b = summary[hi].get(mode, {}).get("lanes", {}).get(name)
            if not b or a["cpu_per_delivery_s"] is None or b["cpu_per_delivery_s"] is None:
                continue
            r1, r2 = int(lo) - 1, int(hi) - 1
            c1, c2 = a["cpu_per_delivery_s"] * r1, b["cpu_per_delivery_s"] * r2
            per_recipient = (c2 - c1) / (r2 - r1)
            out.setdefault(mode, {})[name] = {
                "per_update_s": c1 - per_recipient * r1,
                "per_recipient_s": per_recipient,
            }
    return out


def _sum_buckets(a: promhist.Buckets, b: promhist.Buckets) -> promhist.Buckets:
    if not a:
        return list(b)
    other = dict(b)
    return [(le, c + other.get(le, 0.0)) for le, c in a]
