"""A load driver process: the relay suite's websocket clients, plus ack times and progress lines.

The clients, the schedule and the control protocol on stdin/stdout (``READY``, ``GO t0``,
``DONE``, ``EXIT``) are :mod:`benchmarks.relay_bench.loadgen`'s. Two things are added for the load
run: every ``ack`` (and every ``stamped`` that acknowledges one of ours) is recorded with its
receive time, so update->ack latency is measured per update, not only counted; and the driver
prints ``PROGRESS connected sent acked delivered errors closed`` every ``progress_s`` seconds, so a
long run shows where it is and a stuck one shows where it stuck.

``python -m benchmarks.load.driver SPEC OUT`` (SPEC: a pickled :class:`WorkerSpec`).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import resource
import sys
import time
from array import array
from typing import Any

import msgpack
from websockets.protocol import State

from benchmarks.relay_bench.loadgen import Client, Worker, WorkerSpec, _stdin_reader

__all__ = ["LoadClient", "LoadWorker", "raise_open_files"]

PROGRESS_S = 2.0


def raise_open_files(needed: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to ``needed`` (up to the hard limit); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return int(soft)


class LoadClient(Client):
    __slots__ = ()

    async def _on_quickslot(self, data: bytes) -> None:
        m = msgpack.unpackb(data)
        if m.get("t") in ("ack", "stamped") and m.get("uid") is not None:
            worker = self.worker
            assert isinstance(worker, LoadWorker)
            worker.acks.extend((self.spec.idx, int(m["uid"]), time.monotonic_ns()))
        await super()._on_quickslot(data)


class LoadWorker(Worker):
    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        self.clients = [LoadClient(c, self) for c in spec.clients]
        self.acks = array("q")
        """(connection, uid, receive ns) per acknowledgement."""

    def connected(self) -> int:
        return sum(1 for c in self.clients if c.ws is not None and c.synced.is_set() and c.closed is None)

    def held(self) -> int:
        """Connections open right now (not closed by either side)."""
        return sum(
            1 for c in self.clients if c.ws is not None and c.ws.state is State.OPEN and c.closed is None
        )

    def progress_line(self) -> str:
        errors = sum(len(c.errors) for c in self.clients) + len(self.failed)
        closed = sum(1 for c in self.clients if c.closed is not None)
        return (
            f"PROGRESS {self.connected()} {len(self.sends) // 3} {len(self.acks) // 3} "
            f"{len(self.recvs) // 4} {errors} {closed}"
        )

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            print(self.progress_line(), flush=True)

    async def run_live(self, control: asyncio.StreamReader) -> dict[str, Any]:
        ticker = asyncio.create_task(self._progress())
        try:
            return await super().run_live(control)
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    def _results(self, complete: bool) -> dict[str, Any]:
        out = super()._results(complete)
        out["acks"] = self.acks
        out["held"] = self.held()
        out["clients"] = len(self.clients)
        return out


async def main_async(spec_path: str, out_path: str) -> int:
    with open(spec_path, "rb") as f:
        spec: WorkerSpec = pickle.load(f)
    raise_open_files(len(spec.clients) + 256)
    worker = LoadWorker(spec)
    control = await _stdin_reader()
    results = await worker.run_live(control)
    with open(out_path, "wb") as f:
        pickle.dump(results, f)
    print(f"DONE {int(results['complete'])}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(control.readline(), 600)
    await worker.close_all()
    return 0


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m benchmarks.load.driver SPEC OUT", file=sys.stderr)
        return 2
    return asyncio.run(main_async(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    raise SystemExit(main())
