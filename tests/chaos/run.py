"""``python -m tests.chaos.run``: the chaos run from the command line, with progress and a JSON summary.

``make chaos`` runs the long version (hundreds of relay kills); the short seeded version is
``tests/chaos/test_chaos_short.py``. Exit status 0 only when every invariant held.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import ChaosConfig, run_sync


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--relay-kills", type=int, default=300)
    p.add_argument("--client-kills", type=int, default=None, help="default: relay kills / 4")
    p.add_argument("--partitions", type=int, default=None, help="default: relay kills / 8")
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--capacity", type=int, default=3)
    p.add_argument("--duration", type=float, default=None, help="stop killing after this many seconds")
    p.add_argument("--days", type=int, default=6, help="bookings days (documents) in play")
    p.add_argument("--day-window", type=float, default=120.0, help="seconds per booked day (0: all at once)")
    p.add_argument("--action-interval", type=float, default=0.3, help="mean seconds between actions")
    p.add_argument("--workdir", type=Path, default=None, help="default: a fresh temporary directory")
    p.add_argument("--summary", type=Path, default=Path("chaos-summary.json"))
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="quickslot-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def progress(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    cfg = ChaosConfig(
        seed=args.seed,
        workdir=workdir,
        clients=args.clients,
        relay_kills=args.relay_kills,
        client_kills=args.client_kills if args.client_kills is not None else max(1, args.relay_kills // 4),
        partitions=args.partitions if args.partitions is not None else args.relay_kills // 8,
        capacity=args.capacity,
        max_duration_s=args.duration,
        days=args.days,
        day_window_s=args.day_window or None,
        action_interval_s=args.action_interval,
        progress=progress,
    )
    progress(f"chaos run seed={args.seed} relay_kills={args.relay_kills} workdir={workdir}")
    report = run_sync(cfg)
    report.figures["command"] = " ".join(["python -m tests.chaos.run", *(argv or sys.argv[1:])])
    report.figures["started_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    args.summary.write_text(report.to_json())
    progress(f"summary written to {args.summary}")
    for v in report.violations:
        print(f"VIOLATION {v}", flush=True)
    print(report.to_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
