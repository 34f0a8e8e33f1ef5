"""Drive load-generator worker processes against one server and measure the server meanwhile.

A phase: start the workers (each connects and syncs its clients, then says READY), sample the
server's CPU, tell every worker GO with a common start time, wait for every DONE, sample the
server's CPU and memory again, collect the workers' raw records, and let them close. Only the
server process is measured; the workers' own CPU is reported separately as a sanity figure (a
load generator that saturates a core makes latencies its own, not the server's).
"""

from __future__ import annotations

import select
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.relay_bench.loadgen import WorkerSpec
from benchmarks.relay_bench.procs import ServerProcess, WorkerProcess, child_env


class PhaseError(RuntimeError):
    pass


class _Worker(WorkerProcess):
    def __init__(self, spec: WorkerSpec, tmp: Path, n: int) -> None:
        super().__init__(
            "benchmarks.relay_bench.loadgen",
            spec,
            tmp / f"spec{n}.pkl",
            tmp / f"out{n}.pkl",
            tmp / f"worker{n}.log",
            child_env(),
        )

    def expect(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PhaseError(f"load generator: no {word} within {timeout:.0f} s; log:\n{self.log_tail()}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if not ready:
                if self.proc.poll() is not None:
                    raise PhaseError(f"load generator exited ({self.proc.returncode}):\n{self.log_tail()}")
                continue
            line = self.proc.stdout.readline().decode()
            if not line:
                raise PhaseError(f"load generator closed its output:\n{self.log_tail()}")
            parts = line.split()
            if parts and parts[0] == word:
                return parts[1:]


@dataclass
class PhaseOutcome:
    server_cpu_s: float
    wall_s: float
    """From GO's start time to the last worker's DONE."""
    loadgen_cpu_s: float
    memory: dict[str, int]
    complete: bool
    sends: array[int] = field(default_factory=lambda: array("q"))
    recvs: array[int] = field(default_factory=lambda: array("q"))
    totals: dict[str, int] = field(default_factory=dict)
    errors: list[Any] = field(default_factory=list)
    closed: list[Any] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)
    incomplete: list[Any] = field(default_factory=list)
    sync: list[Any] = field(default_factory=list)
    sync_payload: bytes | None = None
    t0_ns: int = 0


def run_phase(
    server: ServerProcess, specs: list[WorkerSpec], *, ready_timeout: float = 300.0, start_delay: float = 0.3
) -> PhaseOutcome:
    """Run one live phase with one worker process per spec; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        workers = [_Worker(spec, Path(tmp), n) for n, spec in enumerate(specs)]
        try:
            for w in workers:
                w.expect("READY", ready_timeout)
            lg0 = sum(w.cpu_seconds() for w in workers)
            cpu0 = server.cpu()
            t0_ns = time.monotonic_ns() + int(start_delay * 1e9)
            for w in workers:
                w.say(f"GO {t0_ns}")
            deadline = max(s.deadline_s for s in specs) + 60
            flags = [w.expect("DONE", deadline) for w in workers]
            cpu1 = server.cpu()
            wall = (time.monotonic_ns() - t0_ns) / 1e9
            memory = server.memory()
            lg1 = sum(w.cpu_seconds() for w in workers)
            results = [w.results() for w in workers]
        finally:
            for w in workers:
                w.stop()
    out = PhaseOutcome(
        server_cpu_s=cpu1.seconds_since(cpu0),
        wall_s=wall,
        loadgen_cpu_s=lg1 - lg0,
        memory=memory,
        complete=all(f and f[0] == "1" for f in flags),
        t0_ns=t0_ns,
    )
    for r in results:
        out.sends.extend(r["sends"])
        out.recvs.extend(r["recvs"])
        for key in ("own", "stamps", "marks", "bytes_sent", "bytes_recv", "msgs_recv", "error_count"):
            out.totals[key] = out.totals.get(key, 0) + r[key]
        out.errors += r["errors"]
        out.closed += r["closed"]
        out.failed += r["failed"]
        out.incomplete += r["incomplete_clients"]
        out.sync += r["sync"]
        if out.sync_payload is None:
            out.sync_payload = r["sync_payload"]
    return out


def run_catchup(specs: WorkerSpec, timeout: float = 600.0) -> dict[str, Any]:
    """Run a catch-up worker (clients connect and sync one after another); returns its records."""
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        w = _Worker(specs, Path(tmp), 0)
        try:
            w.expect("DONE", timeout)
            return w.results()
        finally:
            w.stop()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """Round-robin ``items`` into at most ``parts`` non-empty lists."""
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def run_idle(server: ServerProcess, spec: WorkerSpec, idle_s: float, settle_s: float = 2.0) -> dict[str, Any]:
    """Open every client of ``spec`` (connected, authenticated, synced), then leave them idle.

    Returns the server's RSS before the first connection and after ``settle_s`` with all of them
    open, and its CPU seconds over the following ``idle_s`` (nothing sent by the clients; the
    server's own keepalive pings and timers are what it spends then).
    """
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        memory0 = server.memory()
        cpu0 = server.cpu()
        w = _Worker(spec, Path(tmp), 0)
        try:
            ready = w.expect("READY", 300.0)
            connect_cpu = server.cpu().seconds_since(cpu0)
            time.sleep(settle_s)
            memory1 = server.memory()
            cpu1 = server.cpu()
            time.sleep(idle_s)
            idle_cpu = server.cpu().seconds_since(cpu1)
            memory2 = server.memory()
            w.say(f"GO {time.monotonic_ns()}")
            flags = w.expect("DONE", 120.0)
            results = w.results()
        finally:
            w.stop()
    connected, failed = (int(ready[0]), int(ready[1])) if len(ready) >= 2 else (0, len(spec.clients))
    return {
        "connected": connected,
        "failed": failed,
        "rss_before": memory0.get("rss"),
        "rss_connected": memory1.get("rss"),
        "rss_after_idle": memory2.get("rss"),
        "connect_cpu_s": connect_cpu,
        "idle_cpu_s": idle_cpu,
        "idle_s": idle_s,
        "complete": bool(flags and flags[0] == "1") and failed == 0 and not results["closed"],
        "closed": results["closed"][:3],
        "errors": results["errors"][:3],
    }
