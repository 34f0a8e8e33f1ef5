"""``python -m benchmarks.relay_bench.traced_relay SNAPSHOT_DIR FRAMES relay-args...``: the relay
(``relay.cli``) with ``tracemalloc`` on, writing a snapshot on every SIGUSR1.

Why: when the soak (:mod:`benchmarks.relay_bench.soak`, ``--tracemalloc``) sees RSS grow, the
question is which allocation sites hold the growth. Snapshots taken by the process itself at the
end of the warm-up and at the end of the run, compared by traceback, answer it; RSS alone cannot
tell Python objects that are kept from memory the allocator keeps. Snapshots go to
``SNAPSHOT_DIR/trace-N.pickle`` (N counts from 0); the handler runs on the main thread, where the
relay's event loop runs, between two bytecodes.
"""

from __future__ import annotations

import gc
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> int:
    out, frames, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(frames)
    taken = 0

    def snapshot(_signum: int, _frame: FrameType | None) -> None:
        nonlocal taken
        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"trace-{taken}.pickle"))
        taken += 1

    signal.signal(signal.SIGUSR1, snapshot)
    from relay.cli.commands import main as relay_main

    return relay_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
