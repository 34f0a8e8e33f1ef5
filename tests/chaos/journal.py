"""A worker's durable journal: JSON lines, each appended and fsynced before the worker moves on.

Why fsync per line: the journal is the evidence the checker judges the system by. A SIGKILL may
cost the line being written (the worker then simply never claims that ack), but never a line
that was already written: "the relay acknowledged X" must survive the worker's death, or an
acknowledged update the relay lost would go unnoticed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"kind": kind, "t": round(time.time(), 4), "pid": os.getpid(), **fields})
        os.write(self._fd, (line + "\n").encode())
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete line; a torn line (the worker died mid-write) is skipped, never guessed at."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if line.endswith("\n") and isinstance(record, dict):
                yield record
