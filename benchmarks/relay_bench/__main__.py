"""``python -m benchmarks.relay_bench``: the relay suite through the standard CLI, plus ``table``.

python -m benchmarks.relay_bench run [--quick] [--out DIR] ...   # = quickslot-bench run --suite relay
python -m benchmarks.relay_bench table DIR                       # headline table of a saved run
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.cli import main as bench_main
from benchmarks.report import load_run
from benchmarks.suites import SUITES
from benchmarks.suites.relay import suite


def main(argv: list[str]) -> int:
    SUITES.setdefault("relay", suite)
    if argv[:1] == ["table"]:
        if len(argv) != 2:
            print(__doc__, file=sys.stderr)
            return 2
        from benchmarks.relay_bench.table import headline

        print(headline(load_run(Path(argv[1]))))
        return 0
    if argv[:1] == ["run"] and not any(a == "--suite" or a.startswith("--suite=") for a in argv):
        argv = [*argv, "--suite", "relay"]
    return bench_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
