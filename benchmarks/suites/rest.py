"""The ``rest`` suite: the sync API over plain HTTP (``relay/http/rest_sync.py``) on a real relay process.

Why these workloads:

* **catalogue_page**: a catalogue of N shops (10,000 at full scale) read page by page at 100 rows,
  as a script or a websocket-less client browses it. Subjects: ``page`` (a full page, JSON,
  gzip-encoded since the client accepts it), ``not_modified`` (the same page revalidated with
  ``If-None-Match``: a 304), against the baseline ``auth_me`` (``GET /api/v1/auth/me``, the
  cheapest authenticated JSON read of the same API, in the same run, on the same connection):
  the ratios say what a page and a 304 cost above the floor every authenticated call pays.
  Samples: one per request; every subject makes the same number of requests, interleaved.
* **batch_100**: 100 signed bookings over 10 day documents, sent as one ``POST /batch``
  (``batch_msgpack``, ``batch_json``) against the baseline ``websocket``: the same 100 updates
  pipelined on an open, already subscribed sync websocket, until the last ack. Sample: from the
  first byte sent to the last ack (every update durable and stamped). Each round writes fresh
  documents, subjects in rotating order. Beside the time, per subject: the relay process's CPU
  per update (``/proc``, over the same window) and the document store's group commits
  (``quickslot_commit_latency_seconds_count`` in ``/metrics``), which say whether a batch saves
  relay work or only round trips.
* **catchup_day**: a fresh client catching up one booking day of N signed bookings (1,000 at full
  scale), written through the relay beforehand: ``check_updates`` (``POST /check-updates`` with an
  empty state vector, following ``next_cursor``, default budget, on a new connection) against the
  baseline ``websocket`` (connect, subscribe with an empty state vector, until the sync answer).
  Sample: from connecting to caught up; both must receive the same diff. Payload bytes both ways
  (HTTP bodies; websocket messages, which the relay never deflates; headers and framing not
  counted) and relay CPU are reported beside the time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack

from benchmarks.adapters import EngineAdapter
from benchmarks.harness import DIVERGED, Progress, Result, RunConfig, Scale, fmt_seconds
from benchmarks.relay_bench.payloads import Identity
from benchmarks.relay_bench.servers import PASSWORD, REPO, QuickSlotAsgi
from benchmarks.suites.common import scratch_dir

__all__ = ["suite", "suite_description", "workloads"]

suite_description = (
    "the sync API over plain HTTP: catalogue pages and 304s against the cheapest authenticated call, "
    "a 100-update batch against the same updates on the websocket, "
    "a day's catch-up (check-updates) against a websocket subscribe"
)

AUTH_ME = "auth_me"
PAGE = "page"
NOT_MODIFIED = "not_modified"
WEBSOCKET = "websocket"
BATCH_MSGPACK = "batch_msgpack"
BATCH_JSON = "batch_json"
CHECK_UPDATES = "check_updates"
#: The document store's group commits so far (the count of its commit-latency histogram).
COMMITS = "quickslot_commit_latency_seconds_count"
PAGE_SIZE = 100
ME = "/api/v1/auth/me"
BATCH_DOCS = 10
BATCH_UPDATES = 100


def _rounds(config: RunConfig) -> int:
    return {"tiny": 2, "quick": 3, "full": max(3, config.repeat)}[config.scale]


def _rotate(items: list[str], shift: int) -> list[str]:
    k = shift % len(items)
    return items[k:] + items[:k]


def _headers(identity: Identity, method: str, path: str) -> dict[str, str]:
    from crdt_core.authoring import Author
    from crdt_core.pop import proof_headers, rest

    assert isinstance(identity.author, Author)
    return proof_headers(identity.access, identity.author.device.private, rest(method, path))


def _admin(relay: QuickSlotAsgi, identity: Identity) -> Identity:
    """``identity`` made admin with the CLI, logged in again (a new certificate carries the role)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from crdt_core.authoring import Author
    from crdt_core.certs import DeviceKey, public_bytes
    from crdt_core.hlc import HybridClock

    cmd = [sys.executable, "-m", "relay.cli", "user", "grant", identity.email, "--admin"]
    cmd += ["--data", str(relay.data)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=60)
    time.sleep(1.5)  # the relay polls account events
    key = Ed25519PrivateKey.generate()
    body = httpx.post(
        f"{relay.base}/api/v1/auth/login",
        json={
            "email": identity.email,
            "password": PASSWORD,
            "device_public_key": base64.urlsafe_b64encode(public_bytes(key)).rstrip(b"=").decode(),
        },
        timeout=30,
    ).json()
    cert = base64.urlsafe_b64decode(body["device_certificate"] + "==")
    author = Author(identity.user_id, DeviceKey(key, cert), HybridClock(identity.user_id[:32]))
    return Identity(identity.user_id, identity.email, body["access_token"], author)


def _replica_for(identity: Identity) -> Any:
    from crdt_core.authoring import Author
    from crdt_core.clientids import client_id_for
    from crdt_core.engine import Replica

    assert isinstance(identity.author, Author)
    return Replica(client_id_for(identity.author.device.cert_id, 0))


def _post_batch(
    http: httpx.Client, who: Identity, items: list[tuple[str, int, bytes]], binary: bool
) -> float:
    """One ``POST /batch``; its wall time. Raises if any update is not acked."""
    path = "/api/v1/sync/batch"
    headers = _headers(who, "POST", path)
    rows = [
        {"doc": d, "uid": u, "update": x if binary else base64.b64encode(x).decode()} for d, u, x in items
    ]
    if binary:
        headers |= {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
        started = time.perf_counter()
        r = http.post(path, content=msgpack.packb({"updates": rows}), headers=headers)
        results = msgpack.unpackb(r.content)["results"] if r.status_code == 200 else None
    else:
        started = time.perf_counter()
        r = http.post(path, json={"updates": rows}, headers=headers)
        results = r.json()["results"] if r.status_code == 200 else None
    seconds = time.perf_counter() - started
    if results is None or any(x["status"] != "ack" for x in results):
        raise RuntimeError(f"batch not acked: {r.status_code} {r.text[:300]}")
    return seconds


def _seed_catalogue(relay: QuickSlotAsgi, admin: Identity, n: int) -> None:
    from crdt_core.authoring import Author
    from crdt_core.schema import Category, ShopSummary

    assert isinstance(admin.author, Author)
    replica = _replica_for(admin)
    hlc = admin.author.hlc
    cats = [f"cat{i}" for i in range(20)]
    categories = [(Category(id=c, name=c, icon=None, hlc=hlc()), None) for c in cats]
    updates = [admin.author.put(replica, "catalog", categories)]
    for start in range(0, n, 500):
        shops = [
            ShopSummary(
                id=f"shop{i:06d}", name=f"Shop number {i}", category=cats[i % len(cats)],
                location=f"{i % 97} Long Street, Some Town", lat=48.85, lon=2.35, rating=4.0,
                active=True, hlc=hlc(),
            )
            for i in range(start, min(n, start + 500))
        ]  # fmt: skip
        updates.append(admin.author.put(replica, "catalog", [(s, None) for s in shops]))
    with httpx.Client(base_url=relay.base, timeout=120) as http:
        for i in range(0, len(updates), 8):
            chunk = [("catalog", i + j, u) for j, u in enumerate(updates[i : i + 8])]
            _post_batch(http, admin, chunk, binary=True)


@dataclass
class CataloguePage:
    name: str = "catalogue_page"
    title: str = "REST catalogue: one page of 100 shops, and its 304"
    description: str = (
        "A catalogue of N shops read page by page at 100 (`GET /api/v1/sync/shops`, JSON, gzip accepted), "
        "each page also revalidated with If-None-Match (a 304), against `GET /api/v1/auth/me` (the "
        "cheapest authenticated JSON read) on the same keep-alive connection. Sample: one request; "
        "the three kinds interleaved, the same number of each."
    )
    baseline: str | None = AUTH_ME

    def sizes(self, scale: Scale) -> list[int]:
        return {"tiny": [500], "quick": [2_000], "full": [10_000]}[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        results = {
            s: Result(self.name, s, "quickslot", size, "time", "s/op", "request", 1)
            for s in (AUTH_ME, PAGE, NOT_MODIFIED)
        }
        with scratch_dir("quickslot-rest-bench-") as workdir:
            relay = QuickSlotAsgi(workdir)
            relay.start()
            try:
                ids = relay.ensure_identities(2)
                admin = _admin(relay, ids[0])
                started = time.perf_counter()
                _seed_catalogue(relay, admin, size)
                progress.say(
                    f"  catalogue of {size:,} shops written in {time.perf_counter() - started:.1f} s"
                )
                self._measure(relay, ids[1], size, config, results)
            finally:
                relay.stop()
        pages = -(-size // PAGE_SIZE)
        for r in results.values():
            r.extra["pages"] = pages
            if r.samples:
                r.note = f"{len(r.samples):,} requests over {pages} pages"
        return list(results.values())

    def _measure(
        self, relay: QuickSlotAsgi, reader: Identity, size: int, config: RunConfig, results: dict[str, Result]
    ) -> None:
        seen = 0
        with httpx.Client(base_url=relay.base, timeout=60, headers={"Accept-Encoding": "gzip"}) as http:
            for round_no in range(_rounds(config) + 1):  # round 0 warms the projection cache
                cursor: str | None = None
                seen = 0
                while True:
                    params: dict[str, Any] = {"limit": PAGE_SIZE}
                    if cursor:
                        params["cursor"] = cursor
                    shift = seen // PAGE_SIZE + round_no
                    timings, body = _page_round(http, reader, params, shift)
                    if round_no > 0:
                        for subject, seconds in timings.items():
                            results[subject].samples.append(seconds)
                    seen += len(body["items"])
                    cursor = body["next_cursor"]
                    if cursor is None:
                        break
        if seen != size:
            for r in results.values():
                r.status, r.note, r.samples = DIVERGED, f"paged {seen:,} shops of {size:,}", []


def _timed(what: str, call: Callable[[], httpx.Response], status: int) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    r = call()
    seconds = time.perf_counter() - started
    if r.status_code != status:
        raise RuntimeError(f"{what}: {r.status_code} {r.text[:200]}")
    return seconds, r


def _page_round(
    http: httpx.Client, reader: Identity, params: dict[str, Any], shift: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """One page: the page itself, its 304 and the baseline call, in rotating order; the page's body."""
    path = "/api/v1/sync/shops"
    etag = http.get(path, params=params, headers=_headers(reader, "GET", path)).headers["etag"]
    calls: dict[str, tuple[Callable[[], httpx.Response], int]] = {
        AUTH_ME: (lambda: http.get(ME, headers=_headers(reader, "GET", ME)), 200),
        PAGE: (lambda: http.get(path, params=params, headers=_headers(reader, "GET", path)), 200),
        NOT_MODIFIED: (
            lambda: http.get(
                path, params=params, headers=_headers(reader, "GET", path) | {"If-None-Match": etag}
            ),
            304,
        ),
    }
    timings: dict[str, float] = {}
    body: dict[str, Any] = {}
    for subject in _rotate(list(calls), shift):
        call, status = calls[subject]
        timings[subject], r = _timed(subject, call, status)
        if subject == PAGE:
            if r.headers.get("content-encoding") != "gzip":
                raise RuntimeError("a 100-row page was not gzip-encoded")
            body = json.loads(r.content)
    return timings, body


class _Meter:
    """The relay's CPU (``/proc``) and group commits (``/metrics``) over one measured window.

    ``/metrics`` is read before the CPU sample at the start and after it at the end, so serving
    it is outside the window."""

    def __init__(self, relay: QuickSlotAsgi) -> None:
        self.relay = relay
        self._commits = 0.0
        self._cpu: Any = None

    def _commit_count(self) -> float:
        value = self.relay.metric(COMMITS)
        if value is None:
            raise RuntimeError(f"the relay's /metrics has no {COMMITS}")
        return value

    def start(self) -> None:
        self._commits = self._commit_count()
        self._cpu = self.relay.process.cpu()

    def stop(self) -> tuple[float, float]:
        """CPU seconds and commits since :meth:`start`."""
        cpu = self.relay.process.cpu().seconds_since(self._cpu)
        return cpu, self._commit_count() - self._commits


@dataclass
class Batch100:
    name: str = "batch_100"
    title: str = "100 signed bookings: one REST batch vs the websocket"
    description: str = (
        "100 signed bookings over 10 day documents, sent as one `POST /api/v1/sync/batch` (msgpack, or "
        "JSON with base64) against the same kind of updates pipelined on an open, subscribed sync "
        "websocket. Sample: first byte sent to the last ack (every update durable and stamped); fresh "
        "documents every round, subjects in rotating order. Also per subject: relay CPU per update "
        "(/proc) and group commits per 100 updates (/metrics), over the same window."
    )
    baseline: str | None = WEBSOCKET

    def sizes(self, scale: Scale) -> list[int]:
        return [BATCH_UPDATES]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        subjects = [WEBSOCKET, BATCH_MSGPACK, BATCH_JSON]
        results = {
            s: Result(self.name, s, "quickslot", size, "time", "s/op", "batch", size) for s in subjects
        }
        for r in results.values():
            r.extra |= {"cpu_s": [], "commits": []}
        rounds = _rounds(config) + 1  # round 0 is a warm-up
        with scratch_dir("quickslot-rest-bench-") as workdir:
            relay = QuickSlotAsgi(workdir)
            relay.start()
            meter = _Meter(relay)
            try:
                ids = dict(zip(subjects, relay.ensure_identities(len(subjects)), strict=True))
                with httpx.Client(base_url=relay.base, timeout=120) as http:
                    for round_no in range(rounds):
                        for n, subject in enumerate(_rotate(subjects, round_no)):
                            docs = _docs(f"b{round_no}x{n}", round_no * len(subjects) + n)
                            items = _bookings(ids[subject], docs, size)
                            if subject == WEBSOCKET:
                                seconds, (cpu, commits) = asyncio.run(
                                    _websocket(relay, ids[subject], docs, items, meter)
                                )
                            else:
                                meter.start()
                                seconds = _post_batch(
                                    http, ids[subject], items, binary=subject == BATCH_MSGPACK
                                )
                                cpu, commits = meter.stop()
                            if round_no > 0:
                                results[subject].samples.append(seconds)
                                results[subject].extra["cpu_s"].append(cpu)
                                results[subject].extra["commits"].append(commits)
            except Exception as exc:
                for r in results.values():
                    r.status, r.note, r.samples = DIVERGED, f"failed: {type(exc).__name__}: {exc}"[:600], []
            finally:
                relay.stop()
        for r in results.values():
            if r.samples:
                cpu = statistics.median(r.extra["cpu_s"]) / size
                commits = statistics.median(r.extra["commits"])
                r.extra |= {"cpu_per_update_s": cpu, "median_commits": commits}
                r.note = (
                    f"median {fmt_seconds(statistics.median(r.samples))} per {size} updates; "
                    f"relay CPU {fmt_seconds(cpu)} per update; {commits:g} group commits"
                )
                progress.say(f"  batch_100 {r.subject}: {r.note}")
        return list(results.values())


def _docs(shop: str, offset: int) -> list[str]:
    base = dt.date.today() + dt.timedelta(days=1 + (offset % 30))
    return [f"bookings:{shop}:{(base + dt.timedelta(days=d)).isoformat()}" for d in range(BATCH_DOCS)]


def _bookings(who: Identity, docs: list[str], n: int) -> list[tuple[str, int, bytes]]:
    from crdt_core.authoring import Author

    assert isinstance(who.author, Author)
    replicas = {doc: _replica_for(who) for doc in docs}
    out = []
    for i in range(n):
        doc = docs[i % len(docs)]
        _, update = who.author.book(replicas[doc], doc, f"s{i + 1}", 1)  # one claim per slot and customer
        out.append((doc, i + 1, update))
    return out


class _Socket:
    """An open sync websocket driven by the client protocol, counting message bytes both ways."""

    def __init__(self, ws: Any) -> None:
        from crdt_core.protocol import ClientProtocol

        self.ws = ws
        self.proto = ClientProtocol(header_auth=True)
        self.sent = 0
        self.received = 0

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            self.sent += len(data)
            await self.ws.send(data)

    async def pump(self, until: Callable[[list[Any]], bool]) -> list[Any]:
        """Receive (answering what the protocol answers) until ``until(events so far)``."""
        from crdt_core.protocol import ErrorReceived

        seen: list[Any] = []
        while not until(seen):
            message = await self.ws.recv()
            self.received += len(message)
            self.proto.receive_message(message)
            await self.flush()
            for event in self.proto.events_received():
                if isinstance(event, ErrorReceived):
                    raise RuntimeError(f"websocket refused: {event.code} {event.reason}")
                seen.append(event)
        return seen


@contextlib.asynccontextmanager
async def _socket(relay: QuickSlotAsgi, who: Identity) -> AsyncIterator[_Socket]:
    """A sync websocket for ``who``, welcomed (header auth with the proof of possession)."""
    import websockets

    from crdt_core.authoring import Author
    from crdt_core.pop import PROOF_HEADER, PROOF_TIME_HEADER, auth_proof

    assert isinstance(who.author, Author)
    headers = {"Authorization": f"Bearer {who.access}"}
    proof = auth_proof(who.access, who.author.device.private)
    if proof is not None:
        headers[PROOF_HEADER] = base64.urlsafe_b64encode(proof.signature).rstrip(b"=").decode()
        headers[PROOF_TIME_HEADER] = str(proof.at)
    async with websockets.connect(relay.url(""), additional_headers=headers, max_size=2**26) as ws:
        sock = _Socket(ws)
        await sock.pump(lambda seen: sock.proto.welcome is not None)
        yield sock


async def _websocket(
    relay: QuickSlotAsgi, who: Identity, docs: list[str], items: list[tuple[str, int, bytes]], meter: _Meter
) -> tuple[float, tuple[float, float]]:
    """Subscribe to ``docs`` (untimed), then send every update and wait for every ack: the
    seconds, and ``meter``'s reading over the same part (before the socket closes)."""
    from crdt_core.protocol import Acked, DocSynced

    async with _socket(relay, who) as sock:
        for doc in docs:
            sock.proto.subscribe(doc, b"\x00")
        await sock.flush()
        await sock.pump(lambda seen: sum(isinstance(e, DocSynced) for e in seen) >= len(docs))
        meter.start()
        started = time.perf_counter()
        for doc, uid, update in items:
            sock.proto.send_update(doc, uid, update)
        await sock.flush()
        await sock.pump(lambda seen: sum(isinstance(e, Acked) for e in seen) >= len(items))
        seconds = time.perf_counter() - started
        return seconds, meter.stop()


@dataclass
class CatchUpDay:
    name: str = "catchup_day"
    title: str = "A fresh client catching up a day of signed bookings: check-updates vs the websocket"
    description: str = (
        "One booking day of N signed bookings (1,000 at full scale), written through the relay first, "
        "caught up by a fresh client: `POST /api/v1/sync/check-updates` with an empty state vector, "
        "following next_cursor, default budget, on a new connection, against connecting a sync "
        "websocket and subscribing with an empty state vector until the sync answer. Sample: connect "
        "to caught up; both must receive the same diff. Payload bytes (bodies, messages) and relay CPU "
        "beside the time."
    )
    baseline: str | None = WEBSOCKET

    def sizes(self, scale: Scale) -> list[int]:
        return {"tiny": [40], "quick": [250], "full": [1_000]}[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        subjects = [WEBSOCKET, CHECK_UPDATES]
        results = {
            s: Result(self.name, s, "quickslot", size, "time", "s/op", "catch-up", 1) for s in subjects
        }
        for r in results.values():
            r.extra |= {"bytes": [], "cpu_s": []}
        doc = f"bookings:catchup:{(dt.date.today() + dt.timedelta(days=1)).isoformat()}"
        diffs: set[bytes] = set()
        with scratch_dir("quickslot-rest-bench-") as workdir:
            relay = QuickSlotAsgi(workdir)
            relay.start()
            meter = _Meter(relay)
            try:
                writer, reader = relay.ensure_identities(2)
                started = time.perf_counter()
                with httpx.Client(base_url=relay.base, timeout=120) as http:
                    items = _bookings(writer, [doc], size)
                    for i in range(0, size, BATCH_UPDATES):
                        _post_batch(http, writer, items[i : i + BATCH_UPDATES], binary=True)
                progress.say(f"  day of {size:,} bookings written in {time.perf_counter() - started:.1f} s")
                for round_no in range(_rounds(config) + 1):  # round 0 is a warm-up
                    for subject in _rotate(subjects, round_no):
                        meter.start()
                        if subject == WEBSOCKET:
                            seconds, nbytes, diff = asyncio.run(_catch_up_websocket(relay, reader, doc))
                        else:
                            seconds, nbytes, diff = _catch_up_rest(relay, reader, doc)
                        cpu, _ = meter.stop()
                        diffs.add(diff)
                        if round_no > 0:
                            results[subject].samples.append(seconds)
                            results[subject].extra["bytes"].append(nbytes)
                            results[subject].extra["cpu_s"].append(cpu)
                if len(diffs) != 1:
                    raise RuntimeError(f"the transports sent {len(diffs)} different diffs of the same day")
            except Exception as exc:
                for r in results.values():
                    r.status, r.note, r.samples = DIVERGED, f"failed: {type(exc).__name__}: {exc}"[:600], []
            finally:
                relay.stop()
        self._summarise(results, size, len(next(iter(diffs))) if len(diffs) == 1 else 0, progress)
        return list(results.values())

    def _summarise(self, results: dict[str, Result], size: int, diff: int, progress: Progress) -> None:
        base = results[WEBSOCKET]
        if not base.samples or not results[CHECK_UPDATES].samples:
            return
        base_bytes = statistics.median(base.extra["bytes"])
        for r in results.values():
            nbytes = statistics.median(r.extra["bytes"])
            cpu = statistics.median(r.extra["cpu_s"])
            r.extra |= {
                "day_diff_bytes": diff,
                "median_bytes": nbytes,
                "bytes_vs_websocket": nbytes / base_bytes,
                "median_cpu_s": cpu,
            }
            r.note = (
                f"{size:,} bookings, diff {diff:,} B: median {fmt_seconds(statistics.median(r.samples))}, "
                f"{nbytes:,.0f} B ({nbytes / base_bytes:.2f}x websocket), relay CPU {fmt_seconds(cpu)}"
            )
            progress.say(f"  catchup_day {r.subject}: {r.note}")


def _catch_up_rest(relay: QuickSlotAsgi, who: Identity, doc: str) -> tuple[float, int, bytes]:
    """``check-updates`` from an empty state vector until ``next_cursor`` is null, on a new
    connection: seconds, body bytes both ways, the diff(s) received.

    The client applies nothing in the timed part (nor does the websocket side): the next call
    takes the state vector the answer carries with its diff."""
    path = "/api/v1/sync/check-updates"
    sv = ""
    diffs: list[bytes] = []
    nbytes = 0
    # The client object is made untimed (httpx loads CA certificates for it, client-side work that
    # is no part of the exchange); its pool is empty, so the first call opens a new connection.
    with httpx.Client(base_url=relay.base, timeout=120) as http:
        started = time.perf_counter()
        cursor: str | None = None
        while True:
            body = json.dumps({"documents": [{"doc": doc, "state_vector": sv}], "cursor": cursor}).encode()
            headers = _headers(who, "POST", path) | {"Content-Type": "application/json"}
            r = http.post(path, content=body, headers=headers)
            if r.status_code != 200:
                raise RuntimeError(f"check-updates: {r.status_code} {r.text[:300]}")
            nbytes += len(body) + r.num_bytes_downloaded
            answer = r.json()
            for entry in answer["documents"]:
                if entry["status"] == "error":
                    raise RuntimeError(f"check-updates refused {entry['doc']}: {entry['reason']}")
                if entry.get("update"):
                    diffs.append(base64.b64decode(entry["update"]))
                    sv = entry["state_vector"]
            cursor = answer["next_cursor"]
            if cursor is None:
                return time.perf_counter() - started, nbytes, b"".join(diffs)


async def _catch_up_websocket(relay: QuickSlotAsgi, who: Identity, doc: str) -> tuple[float, int, bytes]:
    """Connect, subscribe with an empty state vector, read the sync answer: seconds, message
    bytes both ways, the diff received."""
    from crdt_core.protocol import DocSynced

    started = time.perf_counter()
    async with _socket(relay, who) as sock:
        sock.proto.subscribe(doc, b"\x00")
        await sock.flush()
        seen = await sock.pump(lambda seen: any(isinstance(e, DocSynced) for e in seen))
        seconds = time.perf_counter() - started
        synced = next(e for e in seen if isinstance(e, DocSynced))
        return seconds, sock.sent + sock.received, bytes(synced.update)


def workloads(adapters: dict[str, EngineAdapter[Any]]) -> list[Any]:
    """The REST suite runs a relay process; it ignores the engine adapters."""
    return [CataloguePage(), Batch100(), CatchUpDay()]


def suite() -> Any:
    """The registry entry (``SUITES["rest"]`` in ``benchmarks/suites/__init__.py``)."""
    from benchmarks.suites.common import Suite

    return Suite("rest", suite_description, workloads, (), uses_engines=False)
