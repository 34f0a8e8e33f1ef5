"""The relay's cost-floor targets on two servers only (QuickSlot and y-websocket), in one run.

Why beside the suite: the full relay suite starts every lane (PostgreSQL, a three-node cluster,
Hocuspocus, pycrdt-websocket) and takes tens of minutes; on a shared two-core machine the
targets that compare QuickSlot with y-websocket and with the Ed25519 floor need only those two
servers and the floor, measured in the same run and interleaved round by round:

* target 1: many documents (``--docs`` x ``--per-doc``), QuickSlot's CPU per durably acknowledged
  booking against y-websocket's CPU per update plus one verification (``floor``);
* target 5: RSS per idle connection at ``--idle-conns`` connections;
* targets 2 and 4 with ``--fanout 50,200`` (``fanout_targets``): fan-out CPU per delivery at the
  suite's offered rates and at saturation, and the p99 against y-websocket's plus the relay's own
  commit-latency p99 (``--same-work`` adds the same-work Hocuspocus lane).

    python -m benchmarks.relay_bench.targets [--docs 500] [--per-doc 20] [--rounds 3] [--idle-conns 1000]
    python -m benchmarks.relay_bench.targets --docs 0 --idle-conns 0 --fanout 50,200

Prints one JSON object (every round's raw figures and the ratios); ``--out FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from benchmarks.relay_bench import experiments as ex, fanout_targets, floor as cost_floor
from benchmarks.relay_bench.payloads import bookings_doc, yjs_value_size_for
from benchmarks.relay_bench.servers import QUICKSLOT, Y_WEBSOCKET, Fleet
from benchmarks.suites.common import scratch_dir

ACCOUNTS = 25


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"args": vars(args), "docs_rounds": {}, "floor": [], "idle": {}}
    rng = random.Random(0)
    if args.docs:
        _docs_phase(args, out, rng)
    if args.fanout:
        fanout_targets.run_fanout(args, out)
    if args.idle_conns:
        # Fresh servers: after the documents phase their heaps hold freed memory that new
        # connections would reuse, hiding what a connection costs.
        with scratch_dir("quickslot-targets-") as workdir, Fleet(workdir, (QUICKSLOT, Y_WEBSOCKET)) as fleet:
            assert fleet.relay is not None
            fleet.relay.ensure_identities(2 * ACCOUNTS)
            for name in [n for n in (QUICKSLOT, Y_WEBSOCKET) if n in fleet.lanes]:
                subject = fleet.lanes[name].subject
                docs = [bookings_doc(f"idle{name[:2]}k{k}") for k in range(100)]
                warm = [bookings_doc(f"warm{name[:2]}k{k}") for k in range(10)]
                out["idle"][name] = ex.idle_connections(
                    subject,
                    docs,
                    args.idle_conns,
                    accounts=ACCOUNTS,
                    idle_s=args.idle_seconds,
                    warm_docs=warm,
                )
    return _summarise(out)


def _docs_phase(args: argparse.Namespace, out: dict[str, Any], rng: random.Random) -> None:
    with scratch_dir("quickslot-targets-") as workdir, Fleet(workdir, (QUICKSLOT, Y_WEBSOCKET)) as fleet:
        assert fleet.relay is not None
        out["unavailable"] = dict(fleet.unavailable)
        ids = fleet.relay.ensure_identities(2 * ACCOUNTS)
        value_size: int | None = None
        lanes = [n for n in (QUICKSLOT, Y_WEBSOCKET) if n in fleet.lanes]
        for round_no in range(args.rounds):
            for name in lanes if round_no % 2 == 0 else list(reversed(lanes)):
                subject = fleet.lanes[name].subject
                docs = [bookings_doc(f"t{round_no}{name[:2]}k{k}") for k in range(args.docs)]
                if subject.dialect == "quickslot":
                    pool = ex.many_docs_pool("quickslot", docs, args.per_doc, ids=ids, accounts=ACCOUNTS)
                    if value_size is None:
                        sizes = sorted(len(u) for us in pool.values() for u in us)
                        value_size = yjs_value_size_for(sizes[len(sizes) // 2])
                else:
                    if value_size is None:
                        probe = ex.quickslot_pool(ids, bookings_doc("probe"), range(1), 3)
                        value_size = yjs_value_size_for(sorted(len(u) for u in probe[0])[1])
                    pool = ex.many_docs_pool(
                        "yjs",
                        docs,
                        args.per_doc,
                        value_size=value_size,
                        client_id_base=10 + 10 * args.docs * round_no,
                    )
                res = ex.many_docs(subject, docs, pool, accounts=ACCOUNTS, window=1, rng=rng)
                res["latency"].pop("kept", None)
                out["docs_rounds"].setdefault(name, []).append(res)
            out["floor"].append(cost_floor.measure())


def _summarise(out: dict[str, Any]) -> dict[str, Any]:
    fl = cost_floor.median_floor(out["floor"]) if out["floor"] else {}
    cpu = {n: _median([r["cpu_per_update_s"] for r in rs]) for n, rs in out["docs_rounds"].items()}
    rate = {n: _median([r["throughput_per_s"] for r in rs]) for n, rs in out["docs_rounds"].items()}
    summary: dict[str, Any] = {
        "floor_verify_s": fl.get("verify_s"),
        "floor_sign_s": fl.get("sign_s"),
        "cpu_per_update_s": cpu,
        "updates_per_s": rate,
        "complete": {n: all(r["complete"] for r in rs) for n, rs in out["docs_rounds"].items()},
    }
    nacl = cost_floor.median_floor(out["floor"], "pynacl")
    if nacl:
        summary["pynacl_verify_s"], summary["pynacl_sign_s"] = nacl["verify_s"], nacl["sign_s"]
    if QUICKSLOT in cpu and Y_WEBSOCKET in cpu and "verify_s" in fl:
        summary["target1_ratio"] = cpu[QUICKSLOT] / (cpu[Y_WEBSOCKET] + fl["verify_s"])
    for name, idle in out["idle"].items():
        grown = (idle["rss_connected"] or 0) - (idle["rss_before"] or 0)
        summary.setdefault("idle_rss_per_conn_kib", {})[name] = grown / max(1, idle["connected"]) / 1024
    if out.get("fanout"):
        summary["fanout"] = fanout_targets.summarise_fanout(out)
    out["summary"] = summary
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--per-doc", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle-conns", type=int, default=1_000, help="0: skip the idle-connection phase")
    p.add_argument("--idle-seconds", type=float, default=5.0)
    fanout_targets.add_arguments(p)
    p.add_argument("--out", type=Path)
    return p


def main(argv: list[str] | None = None) -> None:
    res = run(parser().parse_args(argv))
    text = json.dumps(res, indent=1, default=str)
    if res.get("args", {}).get("out"):
        Path(res["args"]["out"]).write_text(text)
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    main()
