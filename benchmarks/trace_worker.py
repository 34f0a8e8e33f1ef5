"""Replays editing traces for one engine in a process of its own, so a slow engine can be stopped.

Usage: ``python -m benchmarks.trace_worker ENGINE [TRACE...]`` (the traces are loaded at start).

Why a process: a trace replay through pycrdt grows superlinearly (the whole automerge-paper
trace takes minutes on some machines), and a Python call into Rust cannot be interrupted. The
engine suite starts one worker per engine (``python -m benchmarks.trace_worker ENGINE``), sends
it one JSON request per line, and kills its process group when a reply does not come before the
deadline: the subject is then reported as ``timeout``, with how far it got, and the run goes on.

Each reply holds the seconds on the adapter's clock (Node's own for Yjs), the SHA-256 of the
text every replica ended with, and whether all replicas agreed; the suite compares that hash with
the plain-Python replay's, so a fast but wrong replay is reported as ``diverged``.
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
from typing import Any

from benchmarks import traces
from benchmarks.adapters import load_adapters

__all__ = ["main", "replay"]

ROOT = "text"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def replay(adapter: Any, name: str, prefix: int, client: int = 1) -> dict[str, Any]:
    """One timed replay of the first ``prefix`` transactions of trace ``name``."""
    trace = traces.load(name)
    n = min(prefix, len(trace))
    gc.collect()
    if trace.concurrent:
        agents, steps = traces.schedule(name, n)
        txns = trace.txns[:n]
        gc.disable()
        try:
            t0 = adapter.clock()
            texts = traces.replay_concurrent(adapter, ROOT, agents, steps, txns, client)
            seconds = adapter.clock() - t0
        finally:
            gc.enable()
        return {
            "seconds": seconds,
            "sha": _sha(texts[0]),
            "agree": len(set(texts)) == 1,
            "chars": len(texts[0]),
            "edits": n,
            "doc_bytes": None,
        }
    doc = adapter.new_doc(client)
    txns = trace.txns[:n]
    gc.disable()
    try:
        t0 = adapter.clock()
        adapter.edit_many(doc, ROOT, txns, False)
        seconds = adapter.clock() - t0
    finally:
        gc.enable()
    text = adapter.text(doc, ROOT)
    return {
        "seconds": seconds,
        "sha": _sha(text),
        "agree": True,
        "chars": len(text),
        "edits": n,
        "doc_bytes": len(adapter.encode_state(doc)),
    }


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    adapters, missing = load_adapters([args[0]])
    if not adapters:
        print(json.dumps({"error": missing.get(args[0], "unavailable")}), flush=True)
        return 1
    adapter = adapters[args[0]]
    for name in args[1:]:  # load the traces before saying ready: the suite starts workers in parallel
        try:
            traces.load(name)
        except FileNotFoundError:
            pass  # reported per request, as that workload's error
    print(json.dumps({"ready": adapter.version()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = replay(adapter, request["trace"], int(request["prefix"]), int(request.get("client", 1)))
        except Exception as exc:  # reported to the suite as this subject's error
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    adapter.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
