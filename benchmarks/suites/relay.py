"""The ``relay`` suite: the QuickSlot relay as a real process against y-websocket and pycrdt-websocket.

Why these workloads (the relay's targets in docs/benchmarks.md, "Relay", and docs/design.md, "Relay"):

* **fan-out**: N clients on one document, each sending booking updates at a steady rate; the
  relay's CPU per delivered update (docs/design.md's figures: y-websocket ~5.5 µs, pycrdt-websocket
  40-46 µs, target <= 10 µs), delivered updates per second, end-to-end latency p50/p99 (send to
  receipt at every other client), peak RSS and bytes on the wire;
* **many documents**: 500 documents with 20 updates each, one writer and one reader per
  document, as fast as each server acknowledges (QuickSlot: its durable ``ack``; the Yjs
  servers: the echo of the update they broadcast back to the sender);
* **catch-up**: a client subscribes to a document with a 10,000-update history;
* **idle memory**: N documents loaded and left idle, RSS growth per document;
* **idle connections**: N connections open, authenticated and subscribed, then idle;
  the server's RSS per connection and its CPU while nothing happens.

Every server runs as its own process on loopback, all in the same run, and subjects are
interleaved round by round (the harness's convention) so machine load falls on all alike. Only
the server process is measured (CPU from ``/proc``, so the load generator's work is not in it).

QuickSlot's updates are real signed booking records, pre-signed before the timed phase: the
relay's validation, stamping, durable group commit and fan-out are what is measured. The Yjs
servers get map inserts of a byte string of the same size. y-websocket and pycrdt-websocket
persist nothing; QuickSlot acknowledges only what SQLite has committed (``synchronous=FULL``).
``quickslot postgresql`` is the same relay on a PostgreSQL store (``--store``, a server the suite
starts, ``fsync`` and ``synchronous_commit`` on), so the fan-out and many-documents tables show one
node on SQLite against one node on PostgreSQL as a ratio in the same run.

Subjects: ``quickslot`` (``python -m relay.cli serve``), ``quickslot direct`` (the same
``SyncHub`` on the ``websockets`` library without ASGI: the experiment of docs/design.md, "Relay", the
transport being the only difference), ``quickslot direct batched`` (the same, writing each connection's queued
frames with one syscall per event-loop turn, which only the direct server can do; fan-out only),
the baseline ``y-websocket``, ``pycrdt-websocket`` and ``hocuspocus`` (``@hocuspocus/server`` on Node,
in the live workloads only: it drops a document when its last connection closes). Clients offer
permessage-deflate, as the
``websockets`` library and browsers do by default; no server here accepts it (the relay serves
with ``ws_per_message_deflate=False`` since this suite measured what it cost: 125 against 73 µs
of CPU per delivery and a p99 of 95 against 5.8 ms at 50 clients; y-websocket's ``ws`` server
declines it by default; the pycrdt-websocket script turns it off in uvicorn likewise).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.adapters import EngineAdapter
from benchmarks.harness import (
    DIVERGED,
    OK,
    UNSUPPORTED,
    Progress,
    Result,
    RunConfig,
    Scale,
    Target,
    fmt_seconds,
    stats,
)
from benchmarks.relay_bench import experiments as ex, floor as cost_floor
from benchmarks.relay_bench.payloads import bookings_doc, yjs_value_size_for
from benchmarks.relay_bench.servers import (
    BASELINE,
    BATCHED,
    DIRECT,
    HOCUSPOCUS,
    HOCUSPOCUS_SAME,
    PYCRDT_WEBSOCKET,
    QUICKSLOT,
    QUICKSLOT_CLUSTER,
    QUICKSLOT_PG,
    Y_WEBSOCKET,
    Fleet,
    Lane,
    QuickSlotAsgi,
    QuickSlotPostgres,
)
from benchmarks.suites.common import scratch_dir

__all__ = ["SCALE_SHAPES", "TARGETS", "suite_description", "workloads"]

suite_description = (
    "the QuickSlot relay (real process) against y-websocket and pycrdt-websocket in the same run "
    "(docs/benchmarks.md, Relay targets)"
)

FANOUT_LANES = (
    QUICKSLOT, QUICKSLOT_PG, QUICKSLOT_CLUSTER, DIRECT, BATCHED, Y_WEBSOCKET, PYCRDT_WEBSOCKET, HOCUSPOCUS,
    HOCUSPOCUS_SAME,
)  # fmt: skip
DOCS_LANES = (
    QUICKSLOT, QUICKSLOT_PG, QUICKSLOT_CLUSTER, DIRECT, Y_WEBSOCKET, PYCRDT_WEBSOCKET, HOCUSPOCUS,
    HOCUSPOCUS_SAME,
)  # fmt: skip
MEMORY_LANES = (QUICKSLOT, Y_WEBSOCKET, PYCRDT_WEBSOCKET)
IDLE_CONN_LANES = (QUICKSLOT, Y_WEBSOCKET, PYCRDT_WEBSOCKET, HOCUSPOCUS)
#: Restricts the fan-out and many-documents lanes to these (comma-separated names; QuickSlot always
#: runs), for a run that compares two or three servers without starting them all.
LANES_ENV = "QUICKSLOT_BENCH_LANES"


def _chosen(lanes: tuple[str, ...]) -> tuple[str, ...]:
    wanted = os.environ.get(LANES_ENV, "").strip()
    if not wanted:
        return lanes
    names = {x.strip() for x in wanted.split(",")} | {QUICKSLOT}
    return tuple(x for x in lanes if x in names)


#: Rounds per subject are capped: each round is seconds of live traffic with thousands of samples.
MAX_ROUNDS = 3

TARGETS = (
    Target(
        "fan-out: relay CPU per delivered update <= 10 µs (docs/design.md), 50 clients",
        "fanout_cpu", QUICKSLOT, 50, "median", 10.0, 1e6, "µs",
    ),
    Target(
        "fan-out: p99 latency at 50 clients no worse than y-websocket's",
        "fanout_p99", QUICKSLOT, 50, "ratio", 1.0, 1.0, "x",
    ),
    Target(
        "500 documents x 20 updates: throughput at least y-websocket's (time per update ratio)",
        "docs_throughput", QUICKSLOT, 500, "ratio", 1.0, 1.0, "x",
    ),
    Target(
        "memory per idle loaded document no more than y-websocket's",
        "idle_memory", QUICKSLOT, 1000, "ratio", 1.0, 1.0, "x",
    ),
)  # fmt: skip


@dataclass(frozen=True)
class Shapes:
    fanout: dict[int, ex.FanoutShape]
    docs: list[int]
    per_doc: int
    catchup: list[int]
    catchup_samples: int
    idle: list[int]
    idle_conns: list[int] = field(default_factory=lambda: [1_000])
    idle_conn_seconds: float = 15.0


SCALE_SHAPES: dict[Scale, Shapes] = {
    "tiny": Shapes(
        fanout={4: ex.FanoutShape(4, 5, 10.0)},
        docs=[10], per_doc=5, catchup=[200], catchup_samples=2, idle=[40],
        idle_conns=[200], idle_conn_seconds=2.0,
    ),
    "quick": Shapes(
        fanout={10: ex.FanoutShape(10, 16, 10.0), 50: ex.FanoutShape(50, 5, 3.0)},
        docs=[100], per_doc=20, catchup=[2_000], catchup_samples=4, idle=[500],
        idle_conns=[500], idle_conn_seconds=5.0,
    ),
    "full": Shapes(
        fanout={
            10: ex.FanoutShape(10, 50, 10.0),
            50: ex.FanoutShape(50, 15, 3.0),
            200: ex.FanoutShape(200, 3, 0.25),
        },
        docs=[500], per_doc=20, catchup=[10_000], catchup_samples=7, idle=[1_000, 5_000],
    ),
}  # fmt: skip


def _rounds(config: RunConfig) -> int:
    return max(1, min(config.repeat, MAX_ROUNDS))


def _warmup(config: RunConfig) -> int:
    return 0 if config.scale == "tiny" else 1


def _rotate(items: Sequence[str], shift: int) -> list[str]:
    if not items:
        return []
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def _fmt_rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s"


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 2**20:.0f} MB"


def _versions_note(fleet: Fleet, name: str) -> str:
    lane = fleet.lanes.get(name)
    return lane.subject.version() if lane else ""


def _unavailable_rows(fleet: Fleet, lanes: Sequence[str], make: Callable[[str], Result]) -> list[Result]:
    rows = []
    for name in lanes:
        if name in fleet.unavailable:
            r = make(name)
            r.status, r.note = UNSUPPORTED, f"unavailable: {fleet.unavailable[name]}"
            rows.append(r)
    return rows


def _vs(value: float | None, other: float | None) -> str:
    if value is None or not other:
        return ""
    return f"{value / other:.2f}x"


def _lane_ids(fleet: Fleet, lane: Lane, n: int) -> list[Any]:
    """Identities valid on ``lane``: a relay with its own accounts and keys (the PostgreSQL
    lane) signs its own; the direct servers share the main relay's."""
    if isinstance(lane.subject, QuickSlotAsgi):
        return lane.subject.ensure_identities(n)
    assert fleet.relay is not None
    return fleet.relay.ensure_identities(n)


def _store_cpu(lane: Lane) -> float:
    """The PostgreSQL server's CPU so far (PostgreSQL lane; 0 otherwise): read around a round, so
    the database's share of the work is reported too (``store_cpu_s``)."""
    return lane.subject.store_cpu_s() if isinstance(lane.subject, QuickSlotPostgres) else 0.0


def _store_note(name: str, medians: dict[str, float], rounds: list[dict[str, Any]]) -> list[str]:
    """The SQLite-versus-PostgreSQL ratio (one node each, same run) for the PostgreSQL lane."""
    if name not in (QUICKSLOT_PG, QUICKSLOT_CLUSTER):
        return []
    bits = []
    if QUICKSLOT in medians:
        bits.append(f"{_vs(medians[name], medians[QUICKSLOT])} quickslot on SQLite")
    if name == QUICKSLOT_CLUSTER and QUICKSLOT_PG in medians:
        bits.append(f"{_vs(medians[name], medians[QUICKSLOT_PG])} one node on PostgreSQL")
    cpu = sorted(x.get("store_cpu_s", 0.0) for x in rounds)[len(rounds) // 2]
    bits.append(f"PostgreSQL server CPU {cpu:.2f} s/round (not in the relay's figure)")
    return bits


def _same_work_note(name: str, medians: dict[str, float]) -> list[str]:
    """Target 3 on QuickSlot's row: its figure over the same-work Hocuspocus's, same run (every
    figure here is a time or a latency: below 1 is QuickSlot ahead)."""
    if name != QUICKSLOT or HOCUSPOCUS_SAME not in medians:
        return []
    return [f"{_vs(medians[QUICKSLOT], medians[HOCUSPOCUS_SAME])} hocuspocus same-work (target 3: <= 1.00x)"]


# --- fan-out ----------------------------------------------------------------------------------------


@dataclass
class FanoutRun:
    """Every round of every lane at one size, shared by the four fan-out workloads."""

    shape: ex.FanoutShape
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    latency_kept: dict[str, list[float]] = field(default_factory=dict)


def _cache(config: RunConfig) -> dict[tuple[Any, ...], Any]:
    """Experiments shared by several workloads (one fan-out run feeds four tables), kept on the
    run's config object so that they live exactly as long as the run."""
    cache: dict[tuple[Any, ...], Any] = config.__dict__.setdefault("_relay_experiments", {})
    return cache


def _fanout_run(size: int, config: RunConfig, progress: Progress) -> FanoutRun:
    shapes = SCALE_SHAPES[config.scale].fanout
    shape = shapes.get(size) or ex.FanoutShape(size, max(2, 600 // size), 10.0 / max(1.0, size / 10))
    key = ("fanout", size)
    cached = _cache(config).get(key)
    if cached is not None:
        assert isinstance(cached, FanoutRun)
        return cached
    run = FanoutRun(shape)
    rng = random.Random(size)
    workers = 2 if shape.clients >= 100 else 1
    with scratch_dir("quickslot-relay-bench-") as workdir, Fleet(workdir, _chosen(FANOUT_LANES)) as fleet:
        assert fleet.relay is not None
        run.unavailable = dict(fleet.unavailable)
        run.versions = fleet.versions()
        ids = fleet.relay.ensure_identities(shape.clients)
        lanes = [n for n in _chosen(FANOUT_LANES) if n in fleet.lanes]
        total = _warmup(config) + _rounds(config)
        value_size: int | None = None
        for round_no in range(total):
            warm = round_no < _warmup(config)
            # The warm-up round is short: it loads code paths and JITs, its numbers are dropped.
            r_shape = ex.FanoutShape(shape.clients, 1, shape.rate_per_client) if warm else shape
            for name in _rotate(lanes, round_no):
                if name in run.failed:
                    continue
                lane = fleet.lanes[name]
                doc = bookings_doc(f"fan{size}r{round_no}{lane.name.replace(' ', '').replace('-', '')}")
                if lane.subject.signed_records:
                    lane_ids = _lane_ids(fleet, lane, shape.clients)
                    pool = ex.UpdatePool(
                        ex.quickslot_pool(lane_ids, doc, range(shape.clients), r_shape.per_client), {}
                    )
                    if value_size is None:
                        sizes = sorted(len(u) for us in pool.quickslot.values() for u in us)
                        value_size = yjs_value_size_for(sizes[len(sizes) // 2])
                else:
                    if value_size is None:
                        probe = ex.quickslot_pool(ids, bookings_doc("probe"), range(1), 3)
                        value_size = yjs_value_size_for(sorted(len(u) for u in probe[0])[1])
                    base = 1_000 + 1_000 * round_no + (500 if name == PYCRDT_WEBSOCKET else 0)
                    pool = ex.UpdatePool(
                        {}, ex.yjs_pool(range(shape.clients), r_shape.per_client, value_size, base)
                    )
                try:
                    store_cpu = _store_cpu(lane)
                    res = ex.fanout(
                        lane.subject,
                        r_shape,
                        doc,
                        pool,
                        workers=workers,
                        compression=lane.compression,
                        rng=rng,
                    )
                    res["store_cpu_s"] = _store_cpu(lane) - store_cpu
                except Exception as exc:  # a server that falls over is a finding for its lane only
                    run.failed[name] = f"{type(exc).__name__}: {exc}"[:600]
                    progress.say(f"  fan-out n={size} {name}: FAILED {run.failed[name]}")
                    continue
                lat = res["latency"]
                tag = "warm-up" if warm else f"round {round_no - _warmup(config) + 1}/{_rounds(config)}"
                cpd = res["cpu_per_delivery_s"]
                progress.say(
                    f"  fan-out n={size} {tag} {name}: {res['deliveries']:,}/{res['expected_deliveries']:,} "
                    f"deliveries, {_fmt_rate(res['throughput_per_s'])} "
                    f"(offered {_fmt_rate(res['offered_per_s'])}), "
                    f"CPU {fmt_seconds(cpd) if cpd else '-'}/delivery, "
                    f"p50 {fmt_seconds(lat.get('p50', 0))} p99 {fmt_seconds(lat.get('p99', 0))}"
                    + (f"; {'; '.join(res['notes'])}" if res["notes"] else "")
                )
                if warm:
                    continue
                kept = lat.pop("kept", [])
                run.latency_kept.setdefault(name, []).extend(kept)
                run.rounds.setdefault(name, []).append(res)
    _cache(config)[key] = run
    return run


@dataclass
class _FanoutWorkload:
    name: str
    title: str
    description: str
    op: str
    pick: Callable[[dict[str, Any]], float | None]
    baseline: str | None = BASELINE
    metric: str = "time"
    unit: str = "s/op"

    def sizes(self, scale: Scale) -> list[int]:
        return sorted(SCALE_SHAPES[scale].fanout)

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        fr = _fanout_run(size, config, progress)
        shape = fr.shape

        def row(subject: str) -> Result:
            return Result(self.name, subject, subject, size, "time", self.unit, self.op, 1)

        out: list[Result] = []
        medians: dict[str, float] = {}
        for name in _chosen(FANOUT_LANES):
            if name in fr.unavailable:
                r = row(name)
                r.status, r.note = UNSUPPORTED, f"unavailable: {fr.unavailable[name]}"
                out.append(r)
                continue
            r = row(name)
            r.extra["version"] = fr.versions.get(name, "")
            r.extra["shape"] = {
                "clients": shape.clients, "updates_per_client": shape.per_client,
                "rate_per_client_per_s": shape.rate_per_client, "deliveries": shape.deliveries,
            }  # fmt: skip
            if name in fr.failed:
                r.status, r.note = DIVERGED, f"failed: {fr.failed[name]}"
                out.append(r)
                continue
            rounds = fr.rounds.get(name, [])
            r.extra["rounds"] = rounds
            bad = [x for x in rounds if not x["complete"]]
            if bad or not rounds:
                x: dict[str, Any] = (
                    bad[0] if bad else {"deliveries": 0, "expected_deliveries": shape.deliveries, "notes": []}
                )
                r.status = DIVERGED
                r.note = (
                    f"incomplete: {x['deliveries']:,} of {x['expected_deliveries']:,} deliveries; "
                    + "; ".join(x["notes"])
                )[:600]
                out.append(r)
                continue
            r.samples = [v for v in (self.pick(x) for x in rounds) if v is not None]
            if self.name == "fanout_p50":
                r.extra["latency_samples"] = fr.latency_kept.get(name, [])
            medians[name] = stats(r.samples)["median"] if r.samples else float("nan")
            out.append(r)
        for r in out:
            if r.status != OK or not r.samples:
                continue
            rounds = r.extra["rounds"]
            thr = sorted(x["throughput_per_s"] for x in rounds)[len(rounds) // 2]
            cpu = sorted(x["server_cpu_s"] for x in rounds)[len(rounds) // 2]
            peak = max((x["peak_rss"] or 0) for x in rounds)
            wire = sorted(x["bytes_recv"] + x["bytes_sent"] for x in rounds)[len(rounds) // 2]
            lat = rounds[len(rounds) // 2]["latency"]
            bits = [
                f"{thr:,.0f} deliveries/s of {rounds[0]['offered_per_s']:,.0f} offered",
                f"relay CPU {cpu:.2f} s/round",
                f"peak RSS {_mb(peak)}",
                f"{wire / 2**20:.1f} MB on the wire",
                f"p50 {fmt_seconds(lat['p50'])} p99 {fmt_seconds(lat['p99'])}",
                f"{rounds[0]['update_bytes_median']} B/update",
            ]
            if r.subject != PYCRDT_WEBSOCKET and PYCRDT_WEBSOCKET in medians:
                bits.append(f"{_vs(medians[r.subject], medians[PYCRDT_WEBSOCKET])} pycrdt-websocket")
            bits += _store_note(r.subject, medians, rounds)
            bits += _same_work_note(r.subject, medians)
            r.note = "; ".join(bits)
        for r in out:
            progress.result(r)
        return out


def _cpu_per_delivery(x: dict[str, Any]) -> float | None:
    v = x.get("cpu_per_delivery_s")
    return float(v) if v is not None else None


def _wall_per_delivery(x: dict[str, Any]) -> float | None:
    return 1.0 / x["throughput_per_s"] if x.get("throughput_per_s") else None


def _p50(x: dict[str, Any]) -> float | None:
    v = x["latency"].get("p50")
    return None if v is None else float(v)


def _p99(x: dict[str, Any]) -> float | None:
    v = x["latency"].get("p99")
    return None if v is None else float(v)


_FANOUT_DESC = (
    "N clients subscribe to one bookings document; each sends pre-signed booking updates (QuickSlot) "
    "or map inserts of the same size (Yjs servers) at a steady rate, staggered. A delivery is one "
    "client's update arriving at one other client: N-1 per update. "
)


def _fanout_workloads() -> list[Any]:
    return [
        _FanoutWorkload(
            "fanout_cpu",
            "Fan-out: relay CPU per delivered update",
            _FANOUT_DESC + "Sample: the server process's CPU time (all threads, /proc) over the round "
            "divided by the deliveries, one per round. QuickSlot's CPU includes validating, stamping, "
            "committing (fsync), its acks and `stamped` messages; the Yjs servers echo every update to its "
            "sender.",
            "delivery",
            _cpu_per_delivery,
        ),
        _FanoutWorkload(
            "fanout_throughput",
            "Fan-out: wall time per delivered update (1 / deliveries per second)",
            _FANOUT_DESC + "Sample: the span from the first send to the last delivery divided by the "
            "deliveries, one per round; a server that keeps up with the offered rate shows the offered "
            "rate, one that falls behind a longer time.",
            "delivery",
            _wall_per_delivery,
        ),
        _FanoutWorkload(
            "fanout_p50",
            "Fan-out: median end-to-end latency (send to receipt at another client)",
            _FANOUT_DESC + "Sample: each round's median latency over all its deliveries; a uniform "
            "sample of the raw latencies is in the JSON (extra.latency_samples).",
            "delivery",
            _p50,
        ),
        _FanoutWorkload(
            "fanout_p99",
            "Fan-out: p99 end-to-end latency",
            _FANOUT_DESC + "Sample: each round's 99th percentile latency over all its deliveries.",
            "delivery",
            _p99,
        ),
    ]


# --- many documents ---------------------------------------------------------------------------------


@dataclass
class DocsRun:
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    floor: list[dict[str, dict[str, float]]] = field(default_factory=list)
    """The Ed25519 floor (``benchmarks.relay_bench.floor``), measured after every round."""
    unavailable: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


DOCS_ACCOUNTS = 25


def _docs_lanes(config: RunConfig) -> tuple[str, ...]:
    """The tiny scale (the harness test in make test) starts the three-node deployment once, for
    fan-out: starting PostgreSQL, Redis, HAProxy and three relays again costs more than it checks."""
    if config.scale == "tiny":
        return tuple(x for x in _chosen(DOCS_LANES) if x != QUICKSLOT_CLUSTER)
    return _chosen(DOCS_LANES)


def _docs_run(size: int, config: RunConfig, progress: Progress) -> DocsRun:
    key = ("docs", size)
    cached = _cache(config).get(key)
    if cached is not None:
        assert isinstance(cached, DocsRun)
        return cached
    per_doc = SCALE_SHAPES[config.scale].per_doc
    run = DocsRun()
    rng = random.Random(size)
    with scratch_dir("quickslot-relay-bench-") as workdir, Fleet(workdir, _docs_lanes(config)) as fleet:
        assert fleet.relay is not None
        run.unavailable = dict(fleet.unavailable)
        run.versions = fleet.versions()
        ids = fleet.relay.ensure_identities(2 * DOCS_ACCOUNTS)
        lanes = [n for n in _docs_lanes(config) if n in fleet.lanes]
        value_size: int | None = None
        for round_no in range(_rounds(config)):
            for name in _rotate(lanes, round_no):
                lane = fleet.lanes[name]
                if name in run.failed:
                    continue
                tag = lane.name.replace(" ", "").replace("-", "")
                docs = [bookings_doc(f"d{size}r{round_no}{tag}k{k}") for k in range(size)]
                if lane.subject.signed_records:
                    lane_ids = _lane_ids(fleet, lane, 2 * DOCS_ACCOUNTS)
                    pool = ex.many_docs_pool("quickslot", docs, per_doc, ids=lane_ids, accounts=DOCS_ACCOUNTS)
                    if value_size is None:
                        sizes = sorted(len(u) for us in pool.values() for u in us)
                        value_size = yjs_value_size_for(sizes[len(sizes) // 2])
                else:
                    if value_size is None:
                        probe = ex.quickslot_pool(ids, bookings_doc("probe"), range(1), 3)
                        value_size = yjs_value_size_for(sorted(len(u) for u in probe[0])[1])
                    pool = ex.many_docs_pool(
                        "yjs", docs, per_doc, value_size=value_size, client_id_base=10 + 10 * size * round_no
                    )
                try:
                    store_cpu = _store_cpu(lane)
                    res = ex.many_docs(
                        lane.subject, docs, pool, accounts=DOCS_ACCOUNTS, window=1,
                        compression=lane.compression, rng=rng, workers=1,
                    )  # fmt: skip
                    res["store_cpu_s"] = _store_cpu(lane) - store_cpu
                except Exception as exc:
                    run.failed[name] = f"{type(exc).__name__}: {exc}"[:600]
                    progress.say(f"  documents n={size} {name}: FAILED {run.failed[name]}")
                    continue
                lat = res["latency"]
                lat.pop("kept", None)
                progress.say(
                    f"  documents n={size} round {round_no + 1}/{_rounds(config)} {name}: "
                    f"{res['deliveries']:,}/{res['expected_deliveries']:,} updates delivered, "
                    f"{_fmt_rate(res['throughput_per_s'])}, "
                    f"CPU {fmt_seconds(res['cpu_per_update_s'])}/update, "
                    f"p50 {fmt_seconds(lat.get('p50', 0))} p99 {fmt_seconds(lat.get('p99', 0))}"
                    + (f"; {'; '.join(res['notes'])}" if res["notes"] else "")
                )
                run.rounds.setdefault(name, []).append(res)
            run.floor.append(cost_floor.measure())
    _cache(config)[key] = run
    return run


#: Target 1 (docs/benchmarks.md, "Relay"): QuickSlot's CPU per durably acknowledged booking is at
#: most this many times y-websocket's CPU per update plus one Ed25519 verification, same run.
FLOOR_FACTOR = 1.25


def floor_ratio(quickslot_s: float, baseline_s: float, verify_s: float) -> float:
    """QuickSlot's CPU per booking over (the baseline's per update + one verification)."""
    return quickslot_s / (baseline_s + verify_s)


@dataclass
class _DocsWorkload:
    name: str
    title: str
    description: str
    pick: Callable[[dict[str, Any]], float | None]
    baseline: str | None = BASELINE

    def sizes(self, scale: Scale) -> list[int]:
        return SCALE_SHAPES[scale].docs

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        dr = _docs_run(size, config, progress)
        out: list[Result] = []
        medians: dict[str, float] = {}
        for name in _docs_lanes(config):
            r = Result(self.name, name, name, size, "time", "s/op", "update", 1)
            r.extra["version"] = dr.versions.get(name, "")
            if name in dr.unavailable:
                r.status, r.note = UNSUPPORTED, f"unavailable: {dr.unavailable[name]}"
                out.append(r)
                continue
            if name in dr.failed:
                r.status, r.note = DIVERGED, f"failed: {dr.failed[name]}"
                out.append(r)
                continue
            rounds = dr.rounds.get(name, [])
            r.extra["rounds"] = rounds
            bad = [x for x in rounds if not x["complete"]]
            if bad or not rounds:
                x: dict[str, Any] = (
                    bad[0] if bad else {"deliveries": 0, "expected_deliveries": 0, "notes": []}
                )
                r.status = DIVERGED
                got, want = x["deliveries"], x["expected_deliveries"]
                r.note = f"incomplete: {got:,} of {want:,}; {'; '.join(x['notes'])}"[:600]
                out.append(r)
                continue
            r.samples = [v for v in (self.pick(x) for x in rounds) if v is not None]
            medians[name] = stats(r.samples)["median"]
            out.append(r)
        for r in out:
            if r.status != OK:
                continue
            rounds = r.extra["rounds"]
            mid = rounds[len(rounds) // 2]
            bits = [
                f"{mid['throughput_per_s']:,.0f} updates/s",
                f"CPU {fmt_seconds(mid['cpu_per_update_s'])}/update",
                f"p50 {fmt_seconds(mid['latency']['p50'])} p99 {fmt_seconds(mid['latency']['p99'])}",
                f"peak RSS {_mb(max((x['peak_rss'] or 0) for x in rounds))}",
                f"{mid['connections']:,} connections",
            ]
            if r.subject != PYCRDT_WEBSOCKET and PYCRDT_WEBSOCKET in medians:
                bits.append(f"{_vs(medians[r.subject], medians[PYCRDT_WEBSOCKET])} pycrdt-websocket")
            bits += _store_note(r.subject, medians, rounds)
            bits += _same_work_note(r.subject, medians)
            bits += self._floor_note(r.subject, dr)
            r.note = "; ".join(bits)
        for r in out:
            progress.result(r)
        return out

    def _floor_note(self, subject: str, dr: DocsRun) -> list[str]:
        """Target 1 beside QuickSlot's CPU row: the floor as measured in this run."""
        if self.name != "docs_cpu" or subject != QUICKSLOT or not dr.floor:
            return []
        cpu = {
            n: sorted(x["cpu_per_update_s"] for x in dr.rounds.get(n, [])) for n in (QUICKSLOT, Y_WEBSOCKET)
        }
        if not cpu[QUICKSLOT] or not cpu[Y_WEBSOCKET]:
            return []
        qs, yws = (v[len(v) // 2] for v in (cpu[QUICKSLOT], cpu[Y_WEBSOCKET]))
        fl = cost_floor.median_floor(dr.floor)
        ratio = floor_ratio(qs, yws, fl["verify_s"])
        bits = [
            f"floor in this run (cryptography): Ed25519 verify {fmt_seconds(fl['verify_s'])}, "
            f"sign {fmt_seconds(fl['sign_s'])}",
            f"target 1: {ratio:.2f}x (y-websocket {fmt_seconds(yws)} + one verification), "
            f"limit {FLOOR_FACTOR}x: {'met' if ratio <= FLOOR_FACTOR else 'not met'}",
        ]
        nacl = cost_floor.median_floor(dr.floor, "pynacl")
        if nacl:
            bits.append(
                f"PyNaCl here: verify {fmt_seconds(nacl['verify_s'])}, sign {fmt_seconds(nacl['sign_s'])}"
            )
        return bits


@dataclass
class CostFloor:
    """The floor itself as rows of the report, so it sits in results.json beside the servers."""

    name: str = "cost_floor"
    title: str = "Cost floor: one Ed25519 verification and one signature (CPU)"
    description: str = (
        "CPU per operation of Ed25519 over a record-sized message with `cryptography` (what crdt_core "
        "uses) and PyNaCl/libsodium when installed, measured in this run (5 samples of 2,000 each); "
        "the relay's targets are stated against these (docs/benchmarks.md, Relay)."
    )
    baseline: str | None = None

    def sizes(self, scale: Scale) -> list[int]:
        return [1]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        samples = [cost_floor.measure(500 if config.scale == "tiny" else 2_000) for _ in range(5)]
        out = []
        for lib in ("cryptography", "pynacl"):
            for what in ("verify", "sign"):
                r = Result(self.name, f"{lib} {what}", lib, size, "time", "s/op", what, 1)
                r.samples = [s[lib][f"{what}_s"] for s in samples if lib in s]
                if not r.samples:
                    r.status, r.note = UNSUPPORTED, f"unavailable: {lib} is not installed"
                out.append(r)
        for r in out:
            progress.result(r)
        return out


_DOCS_DESC = (
    "N bookings documents, 20 updates each; every document has one writer connection and one reader "
    "connection (the y-protocols carry one document per websocket, so QuickSlot gets the same), the "
    "writer sends its next update when the server has answered the previous one (QuickSlot: the ack "
    "after the durable commit; Yjs servers: the echo). "
)


def _docs_workloads() -> list[Any]:
    return [
        _DocsWorkload(
            "docs_throughput",
            "Many documents: wall time per update (1 / updates per second)",
            _DOCS_DESC
            + "Sample: from the first send to the last delivery at a reader, per update, one per round.",
            lambda x: 1.0 / x["throughput_per_s"] if x["throughput_per_s"] else None,
        ),
        _DocsWorkload(
            "docs_cpu",
            "Many documents: relay CPU per update",
            _DOCS_DESC + "Sample: the server process's CPU time over the round divided by the updates.",
            lambda x: x["cpu_per_update_s"],
        ),
    ]


# --- catch-up ---------------------------------------------------------------------------------------

CATCHUP_WRITERS = 10


@dataclass
class CatchUp:
    name: str = "catch_up"
    title: str = "Catch-up: subscribe to a document with an N-update history"
    description: str = (
        "10 writers fill one document with N updates (QuickSlot: N signed bookings, so the relay also "
        "stored N stamps; Yjs servers: N map inserts of the same size), untimed. Then fresh clients, one "
        "after another, connect and subscribe with an empty state vector. Sample: from sending the "
        "subscription (QuickSlot `sub`, Yjs sync step 1) to holding the whole answer; the first "
        "subscriber's time is a sample too. Checked: the answer holds every record."
    )
    baseline: str | None = BASELINE

    def sizes(self, scale: Scale) -> list[int]:
        return SCALE_SHAPES[scale].catchup

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        samples = SCALE_SHAPES[config.scale].catchup_samples
        per_writer = max(1, size // CATCHUP_WRITERS)
        out: list[Result] = []
        with scratch_dir("quickslot-relay-bench-") as workdir, Fleet(workdir, MEMORY_LANES) as fleet:
            assert fleet.relay is not None
            ids = fleet.relay.ensure_identities(CATCHUP_WRITERS + samples)
            doc = bookings_doc(f"catchup{size}")
            qpool = ex.quickslot_pool(ids, doc, range(CATCHUP_WRITERS), per_writer)
            sizes = sorted(len(u) for us in qpool.values() for u in us)
            ypool = ex.yjs_pool(
                range(CATCHUP_WRITERS), per_writer, yjs_value_size_for(sizes[len(sizes) // 2]), 3_000
            )
            expected = CATCHUP_WRITERS * per_writer
            for name in MEMORY_LANES:
                r = Result(self.name, name, name, expected, "time", "s/op", "catch-up", 1)
                if name in fleet.unavailable:
                    r.status, r.note = UNSUPPORTED, f"unavailable: {fleet.unavailable[name]}"
                    out.append(r)
                    continue
                lane = fleet.lanes[name]
                r.extra["version"] = lane.subject.version()
                try:
                    fill = ex.load_single_document(
                        lane.subject, doc, qpool if lane.subject.dialect == "quickslot" else ypool,
                        window=4, compression=lane.compression,
                    )  # fmt: skip
                    res = ex.catch_up(
                        lane.subject, doc, samples, first_idx=CATCHUP_WRITERS, compression=lane.compression
                    )
                except Exception as exc:
                    r.status, r.note = DIVERGED, f"failed: {type(exc).__name__}: {exc}"[:600]
                    out.append(r)
                    progress.result(r)
                    continue
                held = _records_in(lane.subject.dialect, res["payload"]) if res["payload"] else 0
                r.extra.update(
                    sync_bytes=res["sync_bytes"], fill_cpu_s=fill["server_cpu_s"], fill_wall_s=fill["wall_s"],
                    records=held, memory=res["memory"], catchup_cpu_s=res["server_cpu_s"],
                )  # fmt: skip
                if not (fill["complete"] and res["complete"]) or held != expected:
                    r.status = DIVERGED
                    r.note = (
                        f"incomplete: the answer holds {held:,} of {expected:,} records; "
                        + "; ".join(fill["notes"] + res["notes"])
                    )[:600]
                else:
                    r.samples = res["seconds"]
                    r.note = (
                        f"answer {res['sync_bytes'] / 2**20:.1f} MB; "
                        f"first subscriber {fmt_seconds(res['seconds'][0])}; "
                        f"filling took {fill['wall_s']:.1f} s, {fill['server_cpu_s']:.1f} s relay CPU; "
                        f"RSS {_mb(res['memory'].get('rss'))}"
                    )
                progress.say(f"  catch-up n={expected:,} {name}: {r.note}")
                out.append(r)
        return out


def _records_in(dialect: str, payload: bytes) -> int:
    """How many booking records (QuickSlot) or map entries (Yjs) a catch-up answer holds."""
    if dialect == "quickslot":
        from crdt_core.engine import Replica

        replica = Replica()
        replica.apply_update(payload)
        return len(list(replica.keys("reservations")))
    import pycrdt

    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.apply_update(payload)
    return len(doc.get("reservations", type=pycrdt.Map))


# --- idle memory ------------------------------------------------------------------------------------

IDLE_BATCH = 100


def _no_growth_note(before: int | None, after: int | None) -> str:
    """A memory sample that did not grow is no measurement: the note a DIVERGED result carries."""
    return f"no RSS growth measured ({_mb(before)} -> {_mb(after)}): below the allocator's noise at this N"


@dataclass
class IdleMemory:
    name: str = "idle_memory"
    title: str = "Memory per idle loaded document"
    description: str = (
        "Each of N documents gets one booking update (QuickSlot: a signed booking, which the relay "
        "validates, stores and stamps; Yjs servers: a map insert of the same size) through its own "
        "connection (100 at a time, no permessage-deflate), which then closes; the documents stay "
        "loaded and idle (QuickSlot unloads after "
        "--idle-unload, set to a day here; pycrdt-websocket runs with auto_clean_rooms=False). Sample: "
        "the server's RSS after minus before, divided by N (20 documents loaded before the first "
        "reading, so one-time allocations are not counted)."
    )
    baseline: str | None = BASELINE

    def sizes(self, scale: Scale) -> list[int]:
        return SCALE_SHAPES[scale].idle

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        import time as _time

        out: list[Result] = []
        warm_n = 20
        with scratch_dir("quickslot-relay-bench-") as workdir, Fleet(workdir, MEMORY_LANES) as fleet:
            assert fleet.relay is not None
            ids = fleet.relay.ensure_identities(DOCS_ACCOUNTS)
            docs = [bookings_doc(f"idle{k}") for k in range(warm_n + size)]
            qpool = ex.many_docs_pool("quickslot", docs, 1, ids=ids, accounts=DOCS_ACCOUNTS)
            sizes = sorted(len(u[0]) for u in qpool.values())
            ypool = ex.many_docs_pool(
                "yjs", docs, 1, value_size=yjs_value_size_for(sizes[len(sizes) // 2]), client_id_base=20
            )
            for name in MEMORY_LANES:
                r = Result(self.name, name, name, size, "bytes", "B/document", "document", 1)
                if name in fleet.unavailable:
                    r.status, r.note = UNSUPPORTED, f"unavailable: {fleet.unavailable[name]}"
                    out.append(r)
                    continue
                lane = fleet.lanes[name]
                r.extra["version"] = lane.subject.version()
                pool = qpool if lane.subject.dialect == "quickslot" else ypool
                # Without permessage-deflate and 100 connections at a time: a per-connection zlib
                # context is transient, but a Python process keeps the RSS it once reached.
                try:
                    warm = {d: pool[d] for d in docs[:warm_n]}
                    ex.load_documents(
                        lane.subject, warm, accounts=DOCS_ACCOUNTS, compression=False, batch=IDLE_BATCH
                    )
                    _time.sleep(1.0)
                    before = lane.subject.process.memory()
                    rest = {d: pool[d] for d in docs[warm_n:]}
                    fill = ex.load_documents(
                        lane.subject, rest, accounts=DOCS_ACCOUNTS, compression=False, batch=IDLE_BATCH
                    )
                    _time.sleep(1.0)
                    after = lane.subject.process.memory()
                except Exception as exc:
                    r.status, r.note = DIVERGED, f"failed: {type(exc).__name__}: {exc}"[:600]
                    out.append(r)
                    progress.result(r)
                    continue
                loaded = (
                    fleet.relay.metric("quickslot_loaded_documents") if lane.subject is fleet.relay else None
                )
                r.extra.update(
                    rss_before=before.get("rss"), rss_after=after.get("rss"), peak_rss=after.get("peak_rss"),
                    fill_cpu_s=fill["server_cpu_s"], loaded_documents=loaded,
                )  # fmt: skip
                if not fill["complete"] or "rss" not in after:
                    r.status, r.note = DIVERGED, "incomplete: " + "; ".join(fill["notes"])
                elif loaded is not None and loaded < size:
                    r.status, r.note = DIVERGED, f"only {loaded:.0f} of {size + warm_n} documents loaded"
                elif after["rss"] <= (before.get("rss") or 0):
                    # As for idle connections: at small N the documents' cost can be below the
                    # heap's own movement (Node's GC returns memory while they load).
                    r.status, r.note = DIVERGED, _no_growth_note(before.get("rss"), after["rss"])
                else:
                    per_doc = (after["rss"] - (before.get("rss") or 0)) / size
                    r.samples = [per_doc]
                    r.note = (
                        f"RSS {_mb(before.get('rss'))} -> {_mb(after.get('rss'))}; "
                        f"{fill['server_cpu_s'] / size * 1e3:.2f} ms relay CPU per document loaded"
                    )
                progress.say(f"  idle memory n={size:,} {name}: {r.note}")
                out.append(r)
        return out


# --- idle connections -------------------------------------------------------------------------------

IDLE_CONN_DOCS = 100


def _idle_conn_run(size: int, config: RunConfig, progress: Progress) -> dict[str, Any]:
    key = ("idle_conns", size)
    cached = _cache(config).get(key)
    if cached is not None:
        assert isinstance(cached, dict)
        return cached
    idle_s = SCALE_SHAPES[config.scale].idle_conn_seconds
    run: dict[str, Any] = {"rows": {}, "unavailable": {}, "failed": {}, "versions": {}}
    with scratch_dir("quickslot-relay-bench-") as workdir, Fleet(workdir, IDLE_CONN_LANES) as fleet:
        assert fleet.relay is not None
        run["unavailable"] = dict(fleet.unavailable)
        run["versions"] = fleet.versions()
        fleet.relay.ensure_identities(DOCS_ACCOUNTS)
        for name in IDLE_CONN_LANES:
            if name not in fleet.lanes:
                continue
            lane = fleet.lanes[name]
            docs = [bookings_doc(f"idleconn{size}k{k}") for k in range(min(IDLE_CONN_DOCS, size))]
            try:
                warm = [bookings_doc(f"idlewarm{size}k{k}") for k in range(10)]
                res = ex.idle_connections(
                    lane.subject, docs, size, accounts=DOCS_ACCOUNTS, idle_s=idle_s, warm_docs=warm
                )
            except Exception as exc:
                run["failed"][name] = f"{type(exc).__name__}: {exc}"[:600]
                progress.say(f"  idle connections n={size} {name}: FAILED {run['failed'][name]}")
                continue
            run["rows"][name] = res
            grown = (res["rss_connected"] or 0) - (res["rss_before"] or 0)
            progress.say(
                f"  idle connections n={size:,} {name}: {res['connected']:,} connected, "
                f"RSS +{grown / 2**20:.1f} MB ({grown / size / 1024:.1f} KiB/connection), "
                f"idle CPU {res['idle_cpu_s'] * 1e3:.0f} ms over {res['idle_s']:.0f} s"
            )
    _cache(config)[key] = run
    return run


@dataclass
class _IdleConnWorkload:
    name: str
    title: str
    description: str
    metric: str
    unit: str
    op: str
    pick: Callable[[dict[str, Any], int], float]
    baseline: str | None = BASELINE

    def sizes(self, scale: Scale) -> list[int]:
        return SCALE_SHAPES[scale].idle_conns

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        run = _idle_conn_run(size, config, progress)
        out: list[Result] = []
        for name in IDLE_CONN_LANES:
            r = Result(self.name, name, name, size, self.metric, self.unit, self.op, 1)  # type: ignore[arg-type]
            r.extra["version"] = run["versions"].get(name, "")
            if name in run["unavailable"]:
                r.status, r.note = UNSUPPORTED, f"unavailable: {run['unavailable'][name]}"
            elif name in run["failed"]:
                r.status, r.note = DIVERGED, f"failed: {run['failed'][name]}"
            else:
                res = run["rows"][name]
                r.extra.update(res)
                if not res["complete"] or res["connected"] < size or res["rss_connected"] is None:
                    r.status = DIVERGED
                    r.note = (
                        f"incomplete: {res['connected']:,} of {size:,} connected; "
                        f"closed {res['closed']}; errors {res['errors']}"
                    )[:600]
                elif self.metric == "bytes" and self.pick(res, size) <= 0:
                    # Node's and CPython's heaps move by megabytes on their own: at small N the
                    # connections' cost can be below that noise, which is no measurement.
                    r.status, r.note = DIVERGED, _no_growth_note(res["rss_before"], res["rss_connected"])
                else:
                    r.samples = [self.pick(res, size)]
                    grown = (res["rss_connected"] or 0) - (res["rss_before"] or 0)
                    r.note = (
                        f"RSS {_mb(res['rss_before'])} -> {_mb(res['rss_connected'])} "
                        f"(+{grown / size / 1024:.1f} KiB/connection); "
                        f"idle CPU {res['idle_cpu_s'] * 1e3:.0f} ms over {res['idle_s']:.0f} s "
                        f"({res['idle_cpu_s'] / res['idle_s'] * 100:.2f}% of a core); "
                        f"connecting took {res['connect_cpu_s']:.2f} s CPU"
                    )
            out.append(r)
            progress.result(r)
        return out


def _idle_conn_workloads() -> list[Any]:
    desc = (
        "N websocket connections (100 documents, round-robin), each authenticated (QuickSlot: a JWT "
        "in the header; Hocuspocus: its auth message) and subscribed with the sync exchange done, "
        "no permessage-deflate; then nothing is sent for a while. "
    )
    return [
        _IdleConnWorkload(
            "idle_conn_memory",
            "Idle connections: server memory per connection",
            desc + "Sample: the server's RSS with every connection open (2 s after the last one "
            "synced) minus its RSS before the first, divided by N.",
            "bytes",
            "B/connection",
            "connection",
            lambda res, n: max(0, (res["rss_connected"] or 0) - (res["rss_before"] or 0)) / n,
        ),
        _IdleConnWorkload(
            "idle_conn_cpu",
            "Idle connections: server CPU per connection per second of idle",
            desc + "Sample: the server's CPU time (all threads) over the idle period divided by N and "
            "by its length: what keeping a connection open costs (timers, keepalive pings).",
            "time",
            "s/op",
            "connection-second",
            lambda res, n: res["idle_cpu_s"] / n / res["idle_s"],
        ),
    ]


def workloads(adapters: dict[str, EngineAdapter[Any]]) -> list[Any]:
    """The relay suite ignores the engine adapters: its subjects are servers."""
    return [
        CostFloor(),
        *_fanout_workloads(),
        *_docs_workloads(),
        CatchUp(),
        IdleMemory(),
        *_idle_conn_workloads(),
    ]


def suite() -> Any:
    """The registry entry: ``SUITES["relay"] = relay.suite`` in ``benchmarks/suites/__init__.py``."""
    from benchmarks.suites.common import Suite

    return Suite("relay", suite_description, workloads, TARGETS)
