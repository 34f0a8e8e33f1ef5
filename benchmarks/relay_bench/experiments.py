"""The relay suite's experiments: build the clients' messages, run the phases, reduce the records.

Each function takes one started :class:`~benchmarks.relay_bench.servers.Subject` and returns a
plain dict of measurements (raw enough to reanalyse, reduced enough to store); the workloads in
``benchmarks/suites/relay.py`` interleave subjects and turn these dicts into ``Result`` rows.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import percentile
from benchmarks.relay_bench.loadgen import ClientSpec, Send, WorkerSpec
from benchmarks.relay_bench.orchestrate import run_catchup, run_idle, run_phase, split
from benchmarks.relay_bench.payloads import (
    YJS_UPDATE,
    Identity,
    YjsWriter,
    hocuspocus_message,
    marker_of,
    quickslot_update_message,
    quickslot_updates,
    yjs_message,
)
from benchmarks.relay_bench.servers import QuickSlotAsgi, QuickSlotDirect, Subject

#: Latency samples kept per subject and size in the JSON (a uniform random sample of every
#: delivery); the exact p50/p99/p99.9 over all deliveries are stored beside them.
LATENCY_SAMPLES_KEPT = 5_000


def identities_of(subject: Subject, n: int) -> list[Identity]:
    relay = subject.relay if isinstance(subject, QuickSlotDirect) else subject
    assert isinstance(relay, QuickSlotAsgi)
    return relay.ensure_identities(n)


# --- messages ------------------------------------------------------------------------------------


@dataclass
class UpdatePool:
    """Per client, the raw updates it will send (same count and size across dialects)."""

    quickslot: dict[int, list[bytes]]
    yjs: dict[int, list[bytes]]


def quickslot_pool(
    ids: list[Identity], doc: str, clients: range, per_client: int, seq0: int = 0
) -> dict[int, list[bytes]]:
    return {c: quickslot_updates(ids[c], doc, c, range(seq0, seq0 + per_client)) for c in clients}


def yjs_pool(
    clients: range, per_client: int, value_size: int, client_id_base: int, seq0: int = 0
) -> dict[int, list[bytes]]:
    out = {}
    for c in clients:
        writer = YjsWriter(client_id=client_id_base + c, value_size=value_size)
        out[c] = [writer.update(c, s) for s in range(seq0, seq0 + per_client)]
    return out


def wire(dialect: str, doc: str, updates: list[bytes], first_uid: int = 1) -> list[bytes]:
    if dialect == "quickslot":
        return [quickslot_update_message(doc, first_uid + i, u) for i, u in enumerate(updates)]
    if dialect == "hocuspocus":
        return [hocuspocus_message(doc, yjs_message(YJS_UPDATE, u)) for u in updates]
    return [yjs_message(YJS_UPDATE, u) for u in updates]


# --- reductions ---------------------------------------------------------------------------------


def latencies(sends: Any, recvs: Any) -> list[float]:
    """Seconds from each update's send to each of its deliveries."""
    sent: dict[tuple[int, int], int] = {}
    for i in range(0, len(sends), 3):
        sent[(sends[i], sends[i + 1])] = sends[i + 2]
    out = []
    for i in range(0, len(recvs), 4):
        t = sent.get((recvs[i + 1], recvs[i + 2]))
        if t is not None:
            out.append((recvs[i + 3] - t) / 1e9)
    return out


def summarize_latency(lat: list[float], rng: random.Random) -> dict[str, Any]:
    if not lat:
        return {"n": 0}
    kept = lat if len(lat) <= LATENCY_SAMPLES_KEPT else rng.sample(lat, LATENCY_SAMPLES_KEPT)
    return {
        "n": len(lat),
        "p50": percentile(lat, 50),
        "p99": percentile(lat, 99),
        "p999": percentile(lat, 99.9),
        "max": max(lat),
        "mean": statistics.fmean(lat),
        "kept": kept,
    }


def _delivery_window(out: Any) -> float:
    """Seconds from the first send to the last delivery."""
    first = min(out.sends[2::3]) if out.sends else out.t0_ns
    last = max(out.recvs[3::4]) if out.recvs else first
    return max(1e-9, float(last - first) / 1e9)


def _notes(out: Any) -> list[str]:
    notes = []
    if out.failed:
        notes.append(f"{len(out.failed)} clients failed to connect: {out.failed[0][1]}")
    if out.closed:
        notes.append(f"{len(out.closed)} connections closed by the server, e.g. {out.closed[0][1]}")
    if out.totals.get("error_count"):
        notes.append(
            f"{out.totals['error_count']} error messages, e.g. {out.errors[0][1] if out.errors else ''}"
        )
    if out.incomplete:
        notes.append(f"incomplete clients (idx, got, want, own, want, stamps, want): {out.incomplete[:3]}")
    return notes


# --- fan-out --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FanoutShape:
    clients: int
    per_client: int
    rate_per_client: float
    """Updates per second each client sends (a steady rate)."""
    window: int = 0
    """> 0: saturation instead of a steady rate: each client keeps this many of its updates
    unanswered (closed loop: its next update goes as soon as an ack or echo comes back), so the
    server is never idle and the run measures what it can deliver, not what was offered."""

    @property
    def updates(self) -> int:
        return self.clients * self.per_client

    @property
    def deliveries(self) -> int:
        return self.updates * (self.clients - 1)

    @property
    def duration_s(self) -> float:
        """The steady rate's sending time (0 for a saturation shape: as fast as answered)."""
        return 0.0 if self.window else self.per_client / self.rate_per_client


def fanout_messages(subject: Subject, shape: FanoutShape, doc: str, pool: UpdatePool) -> list[list[Send]]:
    n = shape.clients
    per = pool.quickslot if subject.signed_records else pool.yjs
    out = []
    for c in range(n):
        msgs = wire(subject.dialect, doc, per[c])
        if shape.window:  # closed loop: each send waits for a free place in the window
            out.append([Send(seq=j, message=m) for j, m in enumerate(msgs)])
            continue
        stagger = c / (n * shape.rate_per_client)
        out.append(
            [Send(seq=j, message=m, offset=stagger + j / shape.rate_per_client) for j, m in enumerate(msgs)]
        )
    return out


def fanout(
    subject: Subject,
    shape: FanoutShape,
    doc: str,
    pool: UpdatePool,
    *,
    workers: int = 1,
    compression: bool = True,
    rng: random.Random | None = None,
    deadline_s: float | None = None,
) -> dict[str, Any]:
    """Every client subscribes to one document and sends its updates at a steady rate (or, with
    ``shape.window``, as fast as the server answers; ``deadline_s`` then bounds the run)."""
    rng = rng or random.Random(0)
    n = shape.clients
    sends = fanout_messages(subject, shape, doc, pool)
    qs = subject.dialect == "quickslot"
    clients = [
        ClientSpec(
            idx=c,
            dialect=subject.dialect,
            url=subject.url(doc),
            token=subject.token(c),
            device_key=subject.device_key(c),
            docs=[doc],
            sends=sends[c],
            expect_marks=(n - 1) * shape.per_client,
            expect_own=shape.per_client,
            expect_stamps=shape.updates if qs else 0,
            stage=0 if c == 0 else 1,
            window=shape.window,
        )
        for c in range(n)
    ]
    deadline = deadline_s if deadline_s is not None else shape.duration_s + 60
    specs = [
        WorkerSpec("live", part, compression=compression, deadline_s=deadline)
        for part in split(clients, workers)
    ]
    out = run_phase(subject.process, specs)
    lat = latencies(out.sends, out.recvs)
    delivered = len(out.recvs) // 4
    window = _delivery_window(out)
    sizes = sorted(
        len(u) for c in range(n) for u in (pool.quickslot if subject.signed_records else pool.yjs)[c]
    )
    return {
        "complete": out.complete and delivered == shape.deliveries,
        "deliveries": delivered,
        "expected_deliveries": shape.deliveries,
        "updates": shape.updates,
        "server_cpu_s": out.server_cpu_s,
        "cpu_per_delivery_s": out.server_cpu_s / delivered if delivered else None,
        "throughput_per_s": delivered / window,
        "offered_per_s": shape.deliveries / shape.duration_s if shape.duration_s else None,
        "window": shape.window,
        "window_s": window,
        "latency": summarize_latency(lat, rng),
        "rss": out.memory.get("rss"),
        "peak_rss": out.memory.get("peak_rss"),
        "bytes_sent": out.totals.get("bytes_sent", 0),
        "bytes_recv": out.totals.get("bytes_recv", 0),
        "messages_recv": out.totals.get("msgs_recv", 0),
        "update_bytes_median": sizes[len(sizes) // 2] if sizes else 0,
        "loadgen_cpu_s": out.loadgen_cpu_s,
        "notes": _notes(out),
    }


# --- many documents -------------------------------------------------------------------------------


def many_docs(
    subject: Subject,
    docs: list[str],
    pool: dict[str, list[bytes]],
    *,
    accounts: int,
    window: int = 1,
    workers: int = 1,
    compression: bool = True,
    rng: random.Random | None = None,
) -> dict[str, Any]:
    """Every document gets one writer and one reader connection; each writer sends its document's
    updates in a closed loop (at most ``window`` unanswered: QuickSlot's ack, the Yjs servers'
    echo), the reader receives them. ``pool[doc]`` holds raw updates whose markers name the
    document's index as their sender (:func:`many_docs_pool`).

    One connection per document for every server, QuickSlot included (its protocol could
    multiplex them): the y-protocols carry one document per websocket, and the same connection
    count keeps the comparison about the work per update. QuickSlot writers of document ``k``
    use account ``k % accounts`` (it signed the records); readers use the next ``accounts``.
    """
    rng = rng or random.Random(0)
    qs = subject.dialect == "quickslot"
    per_doc = len(pool[docs[0]])
    clients: list[ClientSpec] = []
    for k, d in enumerate(docs):
        msgs = [Send(seq=j, message=m) for j, m in enumerate(wire(subject.dialect, d, pool[d]))]
        clients.append(
            ClientSpec(
                idx=marker_of(pool[d][0])[0],
                dialect=subject.dialect,
                url=subject.url(d),
                token=subject.token(k % accounts),
                device_key=subject.device_key(k % accounts),
                docs=[d],
                sends=msgs,
                expect_own=per_doc,
                expect_stamps=per_doc if qs else 0,
                window=window,
            )  # fmt: skip
        )
        clients.append(
            ClientSpec(
                idx=200_000 + k,
                dialect=subject.dialect,
                url=subject.url(d),
                token=subject.token(accounts + k % accounts),
                device_key=subject.device_key(accounts + k % accounts),
                docs=[d],
                expect_marks=per_doc,
                expect_stamps=per_doc if qs else 0,
                stage=1,
            )  # fmt: skip
        )
    specs = [
        WorkerSpec("live", part, compression=compression, deadline_s=600) for part in split(clients, workers)
    ]
    out = run_phase(subject.process, specs)
    lat = latencies(out.sends, out.recvs)
    delivered = len(out.recvs) // 4
    expected = len(docs) * per_doc
    window_s = _delivery_window(out)
    return {
        "complete": out.complete and delivered == expected,
        "deliveries": delivered,
        "expected_deliveries": expected,
        "updates": expected,
        "server_cpu_s": out.server_cpu_s,
        "cpu_per_update_s": out.server_cpu_s / expected,
        "throughput_per_s": delivered / window_s,
        "window_s": window_s,
        "latency": summarize_latency(lat, rng),
        "rss": out.memory.get("rss"),
        "peak_rss": out.memory.get("peak_rss"),
        "bytes_sent": out.totals.get("bytes_sent", 0),
        "bytes_recv": out.totals.get("bytes_recv", 0),
        "connections": len(clients),
        "loadgen_cpu_s": out.loadgen_cpu_s,
        "notes": _notes(out),
    }


def many_docs_pool(
    dialect: str,
    docs: list[str],
    per_doc: int,
    *,
    ids: list[Identity] | None = None,
    accounts: int = 1,
    value_size: int = 0,
    client_id_base: int = 1,
) -> dict[str, list[bytes]]:
    """Raw updates per document, markers ``(document index, j)``; QuickSlot records of document
    ``k`` signed by account ``k % accounts``."""
    if dialect == "quickslot":
        assert ids is not None
        return {d: quickslot_updates(ids[k % accounts], d, k, range(per_doc)) for k, d in enumerate(docs)}
    out = {}
    for k, d in enumerate(docs):
        writer = YjsWriter(client_id=client_id_base + k, value_size=value_size)
        out[d] = [writer.update(k, j) for j in range(per_doc)]
    return out


# --- loading documents (catch-up history, idle memory) ---------------------------------------------------


def load_documents(
    subject: Subject,
    pool: dict[str, list[bytes]],
    *,
    accounts: int,
    batch: int = 250,
    compression: bool = True,
) -> dict[str, Any]:
    """Write each document's updates through its own connection (closed loop, no readers), at
    most ``batch`` connections at a time, then close them: the documents stay loaded and idle.
    ``pool`` as for :func:`many_docs` (markers name the document's index)."""
    docs = list(pool)
    cpu = 0.0
    notes: list[str] = []
    complete = True
    for start in range(0, len(docs), batch):
        clients = []
        for k in range(start, min(start + batch, len(docs))):
            d = docs[k]
            msgs = [Send(seq=j, message=m) for j, m in enumerate(wire(subject.dialect, d, pool[d]))]
            clients.append(
                ClientSpec(
                    idx=marker_of(pool[d][0])[0],
                    dialect=subject.dialect,
                    url=subject.url(d),
                    token=subject.token(k % accounts),
                    device_key=subject.device_key(k % accounts),
                    docs=[d],
                    sends=msgs,
                    expect_own=len(msgs),
                    window=1,
                )  # fmt: skip
            )
        out = run_phase(
            subject.process, [WorkerSpec("live", clients, compression=compression, deadline_s=600)]
        )
        cpu += out.server_cpu_s
        complete = complete and out.complete
        notes += _notes(out)
    return {"complete": complete, "server_cpu_s": cpu, "notes": notes[:5]}


def load_single_document(
    subject: Subject, doc: str, per_writer: dict[int, list[bytes]], *, window: int, compression: bool = True
) -> dict[str, Any]:
    """Many writers (client index -> its raw updates) fill one document; untimed setup."""
    clients: list[ClientSpec] = []
    for w, updates in per_writer.items():
        msgs = [Send(seq=j, message=m) for j, m in enumerate(wire(subject.dialect, doc, updates))]
        clients.append(
            ClientSpec(
                idx=w,
                dialect=subject.dialect,
                url=subject.url(doc),
                token=subject.token(w),
                device_key=subject.device_key(w),
                docs=[doc],
                sends=msgs,
                expect_own=len(msgs),
                window=window,
                stage=0 if not clients else 1,
            )  # fmt: skip
        )
    spec = WorkerSpec("live", clients, compression=compression, deadline_s=900)
    out = run_phase(subject.process, [spec])
    return {
        "complete": out.complete,
        "server_cpu_s": out.server_cpu_s,
        "wall_s": out.wall_s,
        "notes": _notes(out),
    }


def catch_up(
    subject: Subject, doc: str, samples: int, *, first_idx: int, compression: bool = True
) -> dict[str, Any]:
    """``samples`` fresh clients, one after another, subscribe with an empty state vector."""
    clients = [
        ClientSpec(
            idx=first_idx + i,
            dialect=subject.dialect,
            url=subject.url(doc),
            token=subject.token(first_idx + i),
            device_key=subject.device_key(first_idx + i),
            docs=[doc],
            keep_sync=(i == 0),
        )  # fmt: skip
        for i in range(samples)
    ]
    cpu0 = subject.process.cpu()
    t0 = time.monotonic()
    res = run_catchup(WorkerSpec("catchup", clients, compression=compression))
    cpu = subject.process.cpu().seconds_since(cpu0)
    wall = time.monotonic() - t0
    times = [(done - started) / 1e9 for _, started, done, _ in res["sync"] if done]
    sizes = [n for *_, n in res["sync"]]
    return {
        "complete": res["complete"] and len(times) == samples,
        "seconds": times,
        "sync_bytes": sizes[0] if sizes else 0,
        "payload": res["sync_payload"],
        "server_cpu_s": cpu,
        "wall_s": wall,
        "memory": subject.process.memory(),
        "notes": [f"{len(res['failed'])} failed: {res['failed'][0][1]}"] if res["failed"] else [],
    }


# --- idle connections -------------------------------------------------------------------------------


def idle_connections(
    subject: Subject, docs: list[str], n: int, *, accounts: int, idle_s: float, warm_docs: list[str]
) -> dict[str, Any]:
    """``n`` connections, round-robin over ``docs``, each authenticated and subscribed (synced),
    then idle for ``idle_s``: the server's RSS per connection and its CPU while nothing happens.

    No permessage-deflate (a zlib context per connection would be the clients' choice, not the
    server's cost). The first connection of each document connects alone (pycrdt-websocket's
    room race, see ``ClientSpec.stage``). QuickSlot connections use ``accounts`` accounts.
    """

    def spec(names: list[str], count: int, first_idx: int) -> WorkerSpec:
        clients = [
            ClientSpec(
                idx=first_idx + i,
                dialect=subject.dialect,
                url=subject.url(names[i % len(names)]),
                token=subject.token(i % accounts),
                device_key=subject.device_key(i % accounts),
                docs=[names[i % len(names)]],
                stage=0 if i < len(names) else 1,
            )  # fmt: skip
            for i in range(count)
        ]
        return WorkerSpec("live", clients, compression=False, deadline_s=60)

    # A warm-up: the first connections of a fresh server allocate what every later one reuses
    # (code paths, JIT, pools), and a young Node heap shrinks at its first collections, which
    # would be counted against the connections.
    run_idle(subject.process, spec(warm_docs, 2 * len(warm_docs), 290_000), 0.0, settle_s=1.0)
    return run_idle(subject.process, spec(docs, n, 300_000), idle_s)
