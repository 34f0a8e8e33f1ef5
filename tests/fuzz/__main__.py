"""The long fuzz run (``make fuzz``): many batches against one relay process, with progress output.

Hypothesis drives it in rounds of ``--round`` examples, each round with its own seed (the base
seed plus the round number), so every round replays with ``--seed``. Oracle violations do not stop
the run: they are counted, printed with the round's seed, and summarised at the end (exit status
1). A dead relay is restarted and counted as a crash. Shrinking is off: against a live process it
would re-run the failing batch many times; replay a round with the printed seed instead.

    python -m tests.fuzz --cases 20000 --minutes 30 --seed 7
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings, strategies as st

from tests.fuzz.generators import auth_cases, framing_cases, unauth_cases
from tests.fuzz.harness import FuzzSession

LANES = ("auth", "auth", "auth", "unauth", "framing-auth", "framing-unauth")


def run_round(session: FuzzSession, round_seed: int, examples: int, deadline: float) -> None:
    corpus = session.corpus
    assert corpus is not None

    @seed(round_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data(), lane=st.sampled_from(LANES))
    def batch(data: st.DataObject, lane: str) -> None:
        # Draw first, whatever the time: data generation must not depend on outside state.
        if lane == "auth":
            cases = data.draw(st.lists(auth_cases(corpus), min_size=10, max_size=60))
        elif lane == "unauth":
            cases = data.draw(st.lists(unauth_cases(corpus), min_size=5, max_size=25))
        else:
            cases = data.draw(st.lists(framing_cases(corpus), min_size=5, max_size=25))
        if time.monotonic() < deadline:
            session.run(lane.removeprefix("framing-"), cases)

    batch()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="stop after this many cases")
    parser.add_argument("--minutes", type=float, default=30.0, help="stop after this long")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--round", type=int, default=40, help="hypothesis examples (batches) per round")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    parser.add_argument("--first-round", type=int, default=0, help="start at this round (replay)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    deadline = started + args.minutes * 60
    crashes = 0
    violations: list[str] = []
    with tempfile.TemporaryDirectory(prefix="quickslot-fuzz-") as tmp:
        session = FuzzSession(Path(tmp) / "s0").start()
        print(
            f"relay pid {session.relay.proc.pid if session.relay.proc else '?'}, baseline VmRSS "
            f"{session.stats.baseline_rss / 2**20:.1f} MiB, bound {session.rss_bound / 2**20:.1f} MiB",
            flush=True,
        )
        n = args.first_round
        while session.stats.total < args.cases and time.monotonic() < deadline:
            round_seed = args.seed + n
            try:
                run_round(session, round_seed, args.round, deadline)
            except Exception as exc:  # an oracle or harness failure inside a round: record, go on
                violations.append(f"round seed {round_seed}: {type(exc).__name__}: {exc}"[:2000])
            found, session.stats.violations = session.stats.violations, []
            violations += [f"round seed {round_seed}: {v}" for v in found]
            for text in found:
                print(f"VIOLATION round seed {round_seed}: {text}"[:2000], file=sys.stderr, flush=True)
            proc = session.relay.proc
            if proc is not None and proc.poll() is not None:
                crashes += 1
                violations.append(f"round seed {round_seed}: relay exited with {proc.returncode}")
                print(session.relay.log_text()[-3000:], file=sys.stderr)
                session.relay.start()
            s = session.stats
            print(
                f"[{time.monotonic() - started:7.1f} s] round {n} seed {round_seed}: {s.total} cases "
                f"({s.by_lane()}), {s.batches} batches, closes {dict(s.closes)}, acks {s.acks}, "
                f"peak RSS (VmHWM) {s.peak_rss / 2**20:.1f} MiB, now {s.last_rss / 2**20:.1f}, "
                f"violations {len(violations)}",
                flush=True,
            )
            n += 1
        summary = session.summary()
        code = session.stop()
    summary.update(
        seconds=round(time.monotonic() - started, 1),
        crashes=crashes,
        relay_exit=code,
        violations=len(violations),
        seed=args.seed,
        rounds=n,
        command=f"python -m tests.fuzz --cases {args.cases} --minutes {args.minutes} --seed {args.seed}",
    )
    for text in violations[:50]:
        print("VIOLATION", text, file=sys.stderr)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if violations or crashes or code != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
