"""``python -m benchmarks``: the same as the ``quickslot-bench`` console script."""

from benchmarks.cli import main

raise SystemExit(main())
