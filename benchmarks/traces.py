"""Real text-editing traces for the engine suite's B4 (and B3-style concurrent merging).

Why real traces: they are the standard inputs of the published CRDT benchmarks
(dmonad/crdt-benchmarks' B4 is the automerge-perf trace), so numbers here can be set beside
theirs, and their shape (long runs of local typing, with jumps) is what a synthetic random trace
does not have.

The data is vendored in ``benchmarks/data/`` (its README has the format; ``QUICKSLOT_BENCH_DATA``
points elsewhere). Source: the josephg/editing-traces repository, licensed
CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); automerge-paper was prepared by Martin
Kleppmann in automerge/automerge-perf. Keep this attribution wherever results from them are
published.

Correctness of a replay is proved by content: a sequential trace's prefix must produce exactly
the text a plain Python string replay of the same prefix produces (the whole trace:
``endContent``); a concurrent trace must leave every agent's replica with ``endContent`` (a
prefix: every agent with the same text, and every engine with the same text).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from benchmarks.adapters import Patch

__all__ = [
    "ATTRIBUTION",
    "CONCURRENT",
    "SEQUENTIAL",
    "Trace",
    "data_dir",
    "expected_text",
    "load",
    "replay_concurrent",
    "schedule",
]

ATTRIBUTION = (
    "Editing traces from josephg/editing-traces (CC BY 4.0, https://creativecommons.org/licenses/by/4.0/); "
    "automerge-paper prepared by Martin Kleppmann in automerge/automerge-perf."
)
SEQUENTIAL = ("automerge-paper", "seph-blog1")
CONCURRENT = ("clownschool",)
EDIT = 0
APPLY = 1


def data_dir() -> Path:
    override = os.environ.get("QUICKSLOT_BENCH_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "data"


@dataclass
class Trace:
    name: str
    txns: list[list[Patch]]
    """Each transaction's patches, applied in order in one engine transaction."""
    end_content: str
    start_content: str = ""
    parents: list[list[int]] = field(default_factory=list)
    """Concurrent traces only: each transaction's parents (indexes of earlier transactions)."""
    agents: list[int] = field(default_factory=list)
    num_agents: int = 0

    @property
    def concurrent(self) -> bool:
        return bool(self.agents)

    def __len__(self) -> int:
        return len(self.txns)


def load(name: str) -> Trace:
    """Read a trace (once per process and data directory); FileNotFoundError when it is not there."""
    return _load(str(data_dir()), name)


@cache
def _load(directory: str, name: str) -> Trace:
    with gzip.open(Path(directory) / f"{name}.json.gz", "rt", encoding="utf-8") as f:
        raw: dict[str, Any] = json.load(f)
    txns = [[(int(p[0]), int(p[1]), str(p[2])) for p in t["patches"]] for t in raw["txns"]]
    trace = Trace(name, txns, raw["endContent"], raw.get("startContent", ""))
    if raw.get("kind") == "concurrent":
        trace.parents = [list(t["parents"]) for t in raw["txns"]]
        trace.agents = [int(t["agent"]) for t in raw["txns"]]
        trace.num_agents = int(raw["numAgents"])
    if trace.start_content:
        raise ValueError(f"{name}: traces with start content are not supported")
    return trace


def _replay_string(txns: Sequence[Sequence[Patch]]) -> str:
    """The plain replay every engine's result is compared with: a Python string, patched in order."""
    # A list of chunks would be faster, but plainness is the point: this is the reference.
    text = ""
    for patches in txns:
        for pos, delete, insert in patches:
            text = text[:pos] + insert + text[pos + delete :]
    return text


def expected_text(name: str, prefix: int) -> str:
    """The text the first ``prefix`` transactions must produce (the plain replay's)."""
    return _expected_text(str(data_dir()), name, prefix)


@cache
def _expected_text(directory: str, name: str, prefix: int) -> str:
    trace = _load(directory, name)
    if trace.concurrent:
        raise ValueError("a concurrent trace has no plain replay")
    if prefix >= len(trace):
        full = _replay_string(trace.txns)
        if full != trace.end_content:
            raise ValueError(f"{name}: the plain replay does not reach endContent; the data is damaged")
        return full
    return _replay_string(trace.txns[:prefix])


def schedule(name: str, prefix: int) -> tuple[int, tuple[int, ...]]:
    """See :func:`_schedule`."""
    return _schedule(str(data_dir()), name, prefix)


@cache
def _schedule(directory: str, name: str, prefix: int) -> tuple[int, tuple[int, ...]]:
    """A concurrent trace as a flat list of steps, ``(kind, agent, txn)`` triples; and the agent count.

    Each agent has one replica. Before an agent makes transaction ``t``'s edits, its replica must
    be at exactly the version of ``t``'s parents (the positions in ``t``'s patches refer to that
    version), so it first applies the update of every ancestor of ``t`` it does not hold yet, in
    trace order (ancestors come earlier). That is sound only if an agent's replica never holds
    something outside ``t``'s ancestry (true of these traces: an agent's transactions are
    causally ordered); were it not, the replay would miss ``endContent`` and report it. At the end
    every replica receives everything it lacks, so all of them must hold the same text.
    """
    trace = _load(directory, name)
    n = min(prefix, len(trace))
    agents = trace.num_agents
    have: list[set[int]] = [set() for _ in range(agents)]
    steps: list[int] = []
    for t in range(n):
        agent = trace.agents[t]
        held = have[agent]
        missing: list[int] = []
        seen: set[int] = set()
        stack = list(trace.parents[t])
        while stack:
            u = stack.pop()
            if u in held or u in seen:
                continue
            seen.add(u)
            missing.append(u)
            stack.extend(trace.parents[u])
        for u in sorted(missing):
            steps += (APPLY, agent, u)
            held.add(u)
        steps += (EDIT, agent, t)
        held.add(t)
    for agent in range(agents):
        for u in range(n):
            if u not in have[agent]:
                steps += (APPLY, agent, u)
    return agents, tuple(steps)


def replay_concurrent(
    adapter: Any,
    root: str,
    agents: int,
    steps: Sequence[int],
    txns: Sequence[Sequence[Patch]],
    client_base: int,
) -> list[str]:
    """Run a schedule through the small adapter interface; returns each agent's final text.

    The updates an agent receives before its next edit are handed over together (``apply_batch``:
    one by one for the Yrs engines and Yjs, ``import_batch`` for loro). Engines in another process
    provide their own ``replay_concurrent`` (the loop must run there); this is the in-process one.
    """
    own = getattr(adapter, "replay_concurrent", None)
    if own is not None:
        result: list[str] = own(root, agents, steps, txns, client_base)
        return result
    docs = [adapter.new_doc(client_base + a) for a in range(agents)]
    updates: list[bytes] = [b""] * len(txns)
    edit, batch = adapter.edit_text, adapter.apply_batch
    pending: list[bytes] = []  # updates an agent receives together, before its next edit
    for i in range(0, len(steps), 3):
        kind, agent, txn = steps[i], steps[i + 1], steps[i + 2]
        if kind == EDIT:
            if pending:
                batch(docs[agent], pending)
                pending = []
            updates[txn] = edit(docs[agent], root, txns[txn])
        else:
            pending.append(updates[txn])
            if i + 3 >= len(steps) or steps[i + 4] != agent:
                batch(docs[agent], pending)
                pending = []
    return [adapter.text(doc, root) for doc in docs]
