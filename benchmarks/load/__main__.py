"""``python -m benchmarks.load``: one sustained-load run against a fresh relay process.

Exit status 0 when the run held every connection with no error and the relay's peak RSS stayed
within the stated bound; 1 when it ran but did not; 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.load.accounts import DEFAULT_DEVICE_MIX
from benchmarks.load.plan import LoadShape
from benchmarks.load.report import write_outputs
from benchmarks.load.run import LoadError, RunOptions, run_load


def _mix(text: str) -> tuple[int, ...]:
    try:
        mix = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"device mix must look like 1,2,4: {text!r}") from exc
    if not mix or min(mix) < 1:
        raise argparse.ArgumentTypeError("device counts must be positive")
    return mix


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of steady updates")
    p.add_argument("--docs", type=int, default=200, help="documents the connections share")
    p.add_argument("--rate", type=float, default=100.0, help="updates per second over all connections")
    p.add_argument("--subscriptions", type=int, default=3, help="documents per connection")
    p.add_argument("--drivers", type=int, default=2, help="driver processes holding the connections")
    p.add_argument("--drain", type=float, default=30.0, help="seconds to wait for acks and deliveries after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--connect-concurrency", type=int, default=32, help="handshakes in flight per driver while connecting"
    )
    p.add_argument(
        "--device-mix",
        type=_mix,
        default=DEFAULT_DEVICE_MIX,
        help="devices per account, cycled (default 1,2,1,4,1,2,1,8)",
    )
    p.add_argument(
        "--relay-arg", action="append", default=[], metavar="ARG",
        help="extra argument for `relay.cli serve` (repeat; e.g. --relay-arg=--max-connections=2000)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="directory for summary.json, load.png and logs")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        shape = LoadShape(
            args.connections, args.duration, args.docs, args.rate, args.subscriptions, args.seed
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = RunOptions(
        shape=shape,
        out=args.out,
        drivers=args.drivers,
        drain_s=args.drain,
        device_mix=args.device_mix,
        relay_args=list(args.relay_arg),
        connect_concurrency=args.connect_concurrency,
        log=lambda line: print(line, flush=True),
    )
    try:
        record = run_load(options, ["python", "-m", "benchmarks.load", *argv])
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = write_outputs(record, args.out)
    lat = s["latency_ms"]
    print(
        json.dumps(
            {
                "ok": s["ok"],
                "held": s["connections"]["held_at_end"],
                "updates": s["updates"],
                "errors": s["errors"],
                "ack_ms": {k: round(v, 2) for k, v in lat["ack"].items() if k != "n"},
                "delivery_ms": {k: round(v, 2) for k, v in lat["delivery"].items() if k != "n"},
                "memory": s["memory"],
                "cpu": s["cpu"],
            },
            indent=1,
        )
    )
    print(f"summary: {args.out / 'summary.json'}  plot: {args.out / 'load.png'}")
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
