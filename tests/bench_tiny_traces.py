"""Tiny editing traces in the real traces' format, so the harness tests need neither the data nor time.

Why generated: the real traces (``benchmarks/data/``) take seconds to load; the tests must check
the replay machinery (prefixes, the plain replay, the concurrent schedule, worker deadlines) in
milliseconds. The concurrent trace is built so that any correct CRDT must reach its
``endContent``: in each round two agents edit disjoint regions of the text (left and right of a
character neither touches), so no two concurrent inserts ever share a
position, and the merged text is known without a CRDT.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

__all__ = ["write_tiny_traces"]


def _sequential(n: int, seed: int, multi: bool) -> dict[str, Any]:
    rng = random.Random(seed)
    text = ""
    txns = []
    for i in range(n):
        if text and rng.random() < 0.25:
            pos = rng.randrange(len(text))
            length = min(len(text) - pos, 1 + rng.randrange(3))
            insert = ""
        else:
            pos = rng.randint(0, len(text)) if rng.random() < 0.3 else len(text)
            length = 0
            insert = f"w{i} " if multi else "abcdefghij"[i % 10]
        text = text[:pos] + insert + text[pos + length :]
        txns.append({"time": "2026-01-01T00:00:00Z", "patches": [[pos, length, insert]]})
    return {"startContent": "", "endContent": text, "txns": txns}


def _concurrent(rounds: int, per_agent: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    txns: list[dict[str, Any]] = []

    def add(agent: int, parents: list[int], patch: list[Any]) -> int:
        txns.append({"parents": parents, "numChildren": 0, "agent": agent, "patches": [patch]})
        return len(txns) - 1

    text = "|"
    head = add(0, [], [0, 0, "|"])
    for _ in range(rounds):
        mid = text.index("|")
        left, right = text[:mid], text[mid + 1 :]
        base_left = len(left)  # agent 1 sees the round's base, not agent 0's concurrent edits
        last = [head, head]
        for agent in (0, 1):
            part = left if agent == 0 else right
            for k in range(per_agent):
                if part and rng.random() < 0.2:
                    pos, length, insert = rng.randrange(len(part)), 1, ""
                else:
                    # Inside the agent's own region: never beyond the boundary character.
                    pos, length, insert = rng.randint(0, len(part)), 0, "LR"[agent] + str(k % 10)
                part = part[:pos] + insert + part[pos + length :]
                offset = 0 if agent == 0 else base_left + 1
                last[agent] = add(agent, [last[agent]], [pos + offset, length, insert])
                if agent == 1:
                    right = part
                else:
                    left = part
        text = left + "|" + right
        # Agent 0 merges both branches and types at the very start.
        text = "m" + text
        head = add(0, [last[0], last[1]], [0, 0, "m"])
    return {"kind": "concurrent", "endContent": text, "numAgents": 2, "txns": txns}


def write_tiny_traces(directory: Path, sequential: int = 300) -> Path:
    """Write ``automerge-paper``, ``seph-blog1`` and ``clownschool`` look-alikes into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "automerge-paper": _sequential(sequential, 1, multi=False),
        "seph-blog1": _sequential(sequential, 2, multi=True),
        "clownschool": _concurrent(rounds=12, per_agent=12, seed=3),
    }
    for name, data in files.items():
        with gzip.open(directory / f"{name}.json.gz", "wt", encoding="utf-8") as f:
            json.dump(data, f)
    return directory
