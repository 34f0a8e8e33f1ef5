"""Writes or checks the conformance corpus files (``conformance/``) from ``crdt_core``.

Why here and not in crdt_core: the core does no I/O; :func:`crdt_core.conformance.build_corpus`
returns each file's text, and this command puts it on disk or compares it with what is there.

    python -m tools.conformance write conformance/   # (re)write the corpus
    python -m tools.conformance check conformance/   # exit 1 if a file differs from a fresh build
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from crdt_core.conformance import build_corpus


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("write", "check"):
        print("usage: python -m tools.conformance write|check DIR", file=sys.stderr)
        return 2
    command, folder = args[0], Path(args[1])
    corpus = build_corpus()
    if command == "write":
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in corpus.items():
            (folder / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(corpus)} files to {folder}")
        return 0
    stale = [
        name
        for name, text in corpus.items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]
    for name in stale:
        print(f"{folder / name} differs from a fresh build", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
