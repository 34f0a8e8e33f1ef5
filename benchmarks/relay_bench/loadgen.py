"""The relay suite's load generator: many websocket clients in one process, driven by a spec.

Why a separate process: the clients must not share an interpreter (and a GIL) with the code that
samples the server's CPU, and a large fan-out needs the receive path of every client to be cheap.
So the suite writes a spec (pickled :class:`WorkerSpec`), starts ``python -m
benchmarks.relay_bench.loadgen SPEC OUT``, and talks to it with one line at a time:

    worker -> READY <connected> <failed>    every client connected, authenticated, subscribed
    suite  -> GO <t0 monotonic ns>          start sending (scheduled sends are relative to t0)
    worker -> DONE <complete 0|1>           everything expected arrived (or the deadline passed);
                                            results are in OUT
    suite  -> EXIT                          close the connections and exit

Two dialects: ``quickslot`` (docs/protocol.md: msgpack messages, header authentication,
multiplexed documents, ``ack`` after durable storage, a booking and its stamps in one ``stamped``
message, older relays' separate ``stamp`` messages) and ``yjs`` (the
y-protocols sync protocol of y-websocket and pycrdt-websocket: one document per websocket,
sync step 1/2, updates as ``[0, 2, update]``; those servers echo an update to its sender too,
which the closed-loop mode uses as its acknowledgement).

Sending: scheduled (each send at ``t0 + offset``: a steady rate) or closed-loop (at most
``window`` sends waiting for their ack/echo). Receiving: a message carrying another client's
marker is a delivery, recorded as (receiver, sender, seq, receive ns); nothing is decoded beyond
what tells messages apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from benchmarks.relay_bench.payloads import (
    EMPTY_SV,
    EMPTY_UPDATE,
    HP_SYNC,
    HP_SYNC_REPLY,
    MARK,
    YJS_STEP1,
    YJS_STEP2,
    YJS_SYNC,
    YJS_UPDATE,
    hocuspocus_auth,
    hocuspocus_message,
    parse_marker,
    quickslot_subscribe_message,
    strip_hocuspocus,
    yjs_message,
)
from crdt_core.pop import SYNC, proof_headers

Dialect = Literal["quickslot", "yjs", "hocuspocus"]


@dataclass
class Send:
    seq: int
    message: bytes
    offset: float | None = None
    """Seconds after t0 (scheduled mode); None in closed-loop mode."""
    sender: int | None = None
    """The sender index in this update's marker, when it is not the client's own index."""


@dataclass
class ClientSpec:
    idx: int
    dialect: Dialect
    url: str
    token: str | None = None
    device_key: bytes | None = None
    """quickslot: the raw Ed25519 private key the token is bound to; a proof of possession made
    with it goes with the token at connect (``crdt_core.pop``)."""
    docs: list[str] = field(default_factory=list)
    """quickslot: documents to subscribe to; yjs: the one document (already in the URL)."""
    sends: list[Send] = field(default_factory=list)
    expect_marks: int = 0
    """Deliveries of other clients' updates this client must receive."""
    expect_own: int = 0
    """quickslot: acks; yjs: echoes of its own updates."""
    expect_stamps: int = 0
    window: int = 0
    """> 0: closed loop, at most ``window`` sends unanswered; 0: scheduled by ``Send.offset``."""
    keep_sync: bool = False
    """Keep the first sync answer's payload (catch-up checks)."""
    stage: int = 0
    """Clients connect and sync stage by stage (0 first). pycrdt-websocket 0.16 hangs connections
    that race to create a room (``YRoom.start`` holds its start lock for the room's lifetime while
    ``WebsocketServer.start_room`` checks ``started`` before taking it), so the first client of a
    document connects alone, as it would in practice."""


@dataclass
class WorkerSpec:
    mode: Literal["live", "catchup"]
    clients: list[ClientSpec]
    compression: bool = True
    """Offer permessage-deflate, as websockets and browsers do by default."""
    deadline_s: float = 60.0
    """After GO: give up waiting for expected messages after this long."""
    connect_concurrency: int = 32
    max_size: int = 256 * 1024 * 1024


class Client:
    __slots__ = (
        "spec", "ws", "marks", "own", "stamps", "errors", "bytes_sent", "bytes_recv", "msgs_recv",
        "synced", "sync_waiting", "sync_started", "sync_done", "sync_bytes", "sync_payload",
        "window", "done", "worker", "closed", "welcome",
    )  # fmt: skip

    def __init__(self, spec: ClientSpec, worker: Worker) -> None:
        self.spec = spec
        self.worker = worker
        self.ws: ClientConnection | None = None
        self.marks = 0
        self.own = 0
        self.stamps = 0
        self.errors: list[str] = []
        self.bytes_sent = 0
        self.bytes_recv = 0
        self.msgs_recv = 0
        self.synced = asyncio.Event()
        self.sync_waiting = len(spec.docs) if spec.dialect == "quickslot" else 1
        self.sync_started = 0
        self.sync_done = 0
        self.sync_bytes = 0
        self.sync_payload: bytes | None = None
        self.window = asyncio.Semaphore(spec.window) if spec.window > 0 else None
        self.done = asyncio.Event()
        self.closed: tuple[int | None, str] | None = None
        self.welcome = asyncio.Event()
        self._check_done()

    def _check_done(self) -> None:
        s = self.spec
        if self.marks >= s.expect_marks and self.own >= s.expect_own and self.stamps >= s.expect_stamps:
            self.done.set()

    async def connect(self, w: WorkerSpec) -> None:
        headers = None
        if self.spec.token and self.spec.dialect == "quickslot":  # Hocuspocus's token is a message
            key = self.spec.device_key
            private = Ed25519PrivateKey.from_private_bytes(key) if key is not None else None
            headers = proof_headers(self.spec.token, private, SYNC)
        self.ws = await websockets.connect(
            self.spec.url,
            additional_headers=headers,
            compression="deflate" if w.compression else None,
            max_size=w.max_size,
            open_timeout=30,
            ping_interval=None,
            close_timeout=2,
        )
        self.worker.reader_tasks.append(asyncio.create_task(self._read()))

    async def sync(self) -> None:
        """Authenticate (quickslot) and run the sync exchange for every document."""
        ws = self.ws
        assert ws is not None
        if self.spec.dialect == "quickslot":
            await asyncio.wait_for(self.welcome.wait(), 30)
            self.sync_started = time.monotonic_ns()
            for doc in self.spec.docs:
                data = quickslot_subscribe_message(doc, EMPTY_SV)
                await ws.send(data)
                self.bytes_sent += len(data)
        elif self.spec.dialect == "hocuspocus":
            # The auth message first (the plain server has no auth hook: any token passes; the
            # same-work one checks the relay's access token), then sync step 1; the
            # server queues the second until the first is handled.
            doc = self.spec.docs[0]
            self.sync_started = time.monotonic_ns()
            step1 = hocuspocus_message(doc, yjs_message(YJS_STEP1, EMPTY_SV))
            for data in (hocuspocus_auth(doc, self.spec.token or "bench"), step1):
                await ws.send(data)
                self.bytes_sent += len(data)
        else:
            self.sync_started = time.monotonic_ns()
            data = yjs_message(YJS_STEP1, EMPTY_SV)
            await ws.send(data)
            self.bytes_sent += len(data)
        await asyncio.wait_for(self.synced.wait(), 120)

    # --- receiving -------------------------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        handle = {"quickslot": self._on_quickslot, "yjs": self._on_yjs, "hocuspocus": self._on_hocuspocus}[
            self.spec.dialect
        ]
        try:
            async for data in ws:
                if isinstance(data, str):
                    self.errors.append("text frame")
                    continue
                self.bytes_recv += len(data)
                self.msgs_recv += 1
                await handle(data)
        except websockets.ConnectionClosed:
            pass
        except Exception as exc:  # a bug here must not hang the run: record it, stop this client
            self.errors.append(f"reader: {type(exc).__name__}: {exc}")
        finally:
            rcvd = ws.protocol.close_rcvd
            if not self.worker.exiting:
                self.closed = (rcvd.code if rcvd else None, rcvd.reason if rcvd else "")
            self.synced.set()
            self.welcome.set()
            self.done.set()

    def _delivery(self, payload: bytes) -> bool:
        """Record another client's marker; True if it was this client's own update."""
        at = payload.find(MARK)
        if at < 0:
            return False
        sender, seq = parse_marker(payload, at)
        if sender == self.spec.idx:
            return True
        self.worker.recvs.extend((self.spec.idx, sender, seq, time.monotonic_ns()))
        self.marks += 1
        self._check_done()
        return False

    def _answered(self) -> None:
        self.own += 1
        if self.window is not None:
            self.window.release()
        self._check_done()

    async def _on_quickslot(self, data: bytes) -> None:
        m = msgpack.unpackb(data)
        t = m.get("t")
        if t == "upd":
            self._delivery(m["update"])
        elif t == "ack":
            self._answered()
        elif t == "stamped":
            # A booking and its stamps in one message: the ack of ours (``uid``), or someone
            # else's update; either way the stamps count as received.
            self.stamps += 1
            if m.get("uid") is not None:
                self._answered()
            else:
                self._delivery(m["update"])
                self._check_done()
        elif t == "stamp":
            self.stamps += 1
            self._check_done()
        elif t == "sync":
            self._on_synced(m["update"])
        elif t == "welcome":
            self.welcome.set()
        elif t == "err":
            self.errors.append(f"{m.get('code')}: {m.get('reason')}")
            if m.get("uid") is not None:
                self._answered()  # answered, though not stored: counted in errors

    def _on_synced(self, payload: bytes) -> None:
        self.sync_bytes += len(payload)
        if self.spec.keep_sync and self.sync_payload is None:
            self.sync_payload = payload
        self.sync_waiting -= 1
        if self.sync_waiting == 0:
            self.sync_done = time.monotonic_ns()
            self.synced.set()

    async def _on_hocuspocus(self, data: bytes) -> None:
        inner = strip_hocuspocus(data)
        if len(inner) < 2 or inner[0] not in (HP_SYNC, HP_SYNC_REPLY):
            return  # auth answer, sync status, awareness
        await self._on_yjs(bytes((YJS_SYNC,)) + inner[1:], prefix=self.spec.docs[0])

    async def _on_yjs(self, data: bytes, prefix: str | None = None) -> None:
        if len(data) < 2 or data[0] != YJS_SYNC:
            return  # awareness
        kind = data[1]
        if kind == YJS_UPDATE:
            if self._delivery(data):
                self._answered()
        elif kind == YJS_STEP2:
            if not self.synced.is_set():
                from benchmarks.relay_bench.payloads import yjs_payload

                self._on_synced(yjs_payload(data))
            elif self._delivery(data):
                self._answered()
        elif kind == YJS_STEP1:
            # The server asks for what we hold: nothing the server lacks at this point.
            reply = yjs_message(YJS_STEP2, EMPTY_UPDATE)
            if prefix is not None:
                reply = hocuspocus_message(prefix, reply)
            assert self.ws is not None
            await self.ws.send(reply)
            self.bytes_sent += len(reply)

    # --- sending ---------------------------------------------------------------------------------

    async def run_sends(self, t0_ns: int) -> None:
        ws = self.ws
        assert ws is not None
        sends_log = self.worker.sends
        idx = self.spec.idx
        window = self.window
        t0 = t0_ns / 1e9
        try:
            if window is not None and t0 > time.monotonic():
                await asyncio.sleep(t0 - time.monotonic())
            for send in self.spec.sends:
                if window is not None:
                    await window.acquire()
                elif send.offset is not None:
                    delay = t0 + send.offset - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                sends_log.extend((idx if send.sender is None else send.sender, send.seq, time.monotonic_ns()))
                await ws.send(send.message)
                self.bytes_sent += len(send.message)
        except websockets.ConnectionClosed:
            pass


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.sends = array("q")
        self.recvs = array("q")
        self.reader_tasks: list[asyncio.Task[None]] = []
        self.exiting = False
        self.clients = [Client(c, self) for c in spec.clients]
        self.failed: list[tuple[int, str]] = []

    async def _open(self, client: Client, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                await client.connect(self.spec)
                await client.sync()
            except Exception as exc:
                self.failed.append((client.spec.idx, f"{type(exc).__name__}: {exc}"[:300]))

    async def run_live(self, control: asyncio.StreamReader) -> dict[str, Any]:
        gate = asyncio.Semaphore(self.spec.connect_concurrency)
        for stage in sorted({c.spec.stage for c in self.clients}):
            await asyncio.gather(*(self._open(c, gate) for c in self.clients if c.spec.stage == stage))
        print(f"READY {len(self.clients) - len(self.failed)} {len(self.failed)}", flush=True)
        line = (await control.readline()).decode().split()
        if not line or line[0] != "GO":
            return self._results(False)
        t0_ns = int(line[1])
        live = [c for c in self.clients if c.ws is not None]
        senders = [asyncio.create_task(c.run_sends(t0_ns)) for c in live]
        remaining = self.spec.deadline_s - max(0.0, (time.monotonic_ns() - t0_ns) / 1e9)
        complete = True
        try:
            await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in live), *senders), remaining)
        except TimeoutError:
            complete = False
        complete = complete and all(c.closed is None for c in live) and not self.failed
        return self._results(complete)

    async def run_catchup(self) -> dict[str, Any]:
        for client in self.clients:  # one at a time: each sample is one client's catch-up alone
            gate = asyncio.Semaphore(1)
            await self._open(client, gate)
            self.exiting = True
            if client.ws is not None:
                await client.ws.close()
            self.exiting = False
        return self._results(not self.failed and all(c.sync_done for c in self.clients))

    def _results(self, complete: bool) -> dict[str, Any]:
        cs = self.clients
        return {
            "complete": complete,
            "failed": self.failed,
            "sends": self.sends,
            "recvs": self.recvs,
            "own": sum(c.own for c in cs),
            "stamps": sum(c.stamps for c in cs),
            "marks": sum(c.marks for c in cs),
            "errors": [(c.spec.idx, e) for c in cs for e in c.errors[:5]],
            "error_count": sum(len(c.errors) for c in cs),
            "closed": [(c.spec.idx, c.closed) for c in cs if c.closed is not None],
            "bytes_sent": sum(c.bytes_sent for c in cs),
            "bytes_recv": sum(c.bytes_recv for c in cs),
            "msgs_recv": sum(c.msgs_recv for c in cs),
            "sync": [(c.spec.idx, c.sync_started, c.sync_done, c.sync_bytes) for c in cs],
            "sync_payload": next((c.sync_payload for c in cs if c.sync_payload is not None), None),
            "incomplete_clients": [
                (
                    c.spec.idx,
                    c.marks,
                    c.spec.expect_marks,
                    c.own,
                    c.spec.expect_own,
                    c.stamps,
                    c.spec.expect_stamps,
                )
                for c in cs
                if not (
                    c.marks >= c.spec.expect_marks
                    and c.own >= c.spec.expect_own
                    and c.stamps >= c.spec.expect_stamps
                )
            ][:10],
        }

    async def close_all(self) -> None:
        self.exiting = True
        live = [c.ws for c in self.clients if c.ws is not None]
        await asyncio.gather(*(ws.close() for ws in live), return_exceptions=True)
        for task in self.reader_tasks:
            task.cancel()
        await asyncio.gather(*self.reader_tasks, return_exceptions=True)


async def _stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def main_async(spec_path: str, out_path: str) -> int:
    with open(spec_path, "rb") as f:
        spec: WorkerSpec = pickle.load(f)
    worker = Worker(spec)
    control = await _stdin_reader()
    if spec.mode == "catchup":
        results = await worker.run_catchup()
        with open(out_path, "wb") as f:
            pickle.dump(results, f)
        print(f"DONE {int(results['complete'])}", flush=True)
        return 0
    results = await worker.run_live(control)
    with open(out_path, "wb") as f:
        pickle.dump(results, f)
    print(f"DONE {int(results['complete'])}", flush=True)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(control.readline(), 600)
    await worker.close_all()
    return 0


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m benchmarks.relay_bench.loadgen SPEC OUT", file=sys.stderr)
        return 2
    return asyncio.run(main_async(sys.argv[1], sys.argv[2]))


if __name__ == "__main__":
    raise SystemExit(main())
