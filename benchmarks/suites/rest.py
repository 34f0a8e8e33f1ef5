"""The ``rest`` suite: the sync API over plain HTTP (``relay/rest_sync.py``) on a real relay process.

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
  documents, subjects in rotating order.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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
    "a 100-update batch against the same updates on the websocket"
)

AUTH_ME = "auth_me"
PAGE = "page"
NOT_MODIFIED = "not_modified"
WEBSOCKET = "websocket"
BATCH_MSGPACK = "batch_msgpack"
BATCH_JSON = "batch_json"
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


@dataclass
class Batch100:
    name: str = "batch_100"
    title: str = "100 signed bookings: one REST batch vs the websocket"
    description: str = (
        "100 signed bookings over 10 day documents, sent as one `POST /api/v1/sync/batch` (msgpack, or "
        "JSON with base64) against the same kind of updates pipelined on an open, subscribed sync "
        "websocket. Sample: first byte sent to the last ack (every update durable and stamped); fresh "
        "documents every round, subjects in rotating order."
    )
    baseline: str | None = WEBSOCKET

    def sizes(self, scale: Scale) -> list[int]:
        return [BATCH_UPDATES]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        subjects = [WEBSOCKET, BATCH_MSGPACK, BATCH_JSON]
        results = {
            s: Result(self.name, s, "quickslot", size, "time", "s/op", "batch", size) for s in subjects
        }
        rounds = _rounds(config) + 1  # round 0 is a warm-up
        with scratch_dir("quickslot-rest-bench-") as workdir:
            relay = QuickSlotAsgi(workdir)
            relay.start()
            try:
                ids = dict(zip(subjects, relay.ensure_identities(len(subjects)), strict=True))
                with httpx.Client(base_url=relay.base, timeout=120) as http:
                    for round_no in range(rounds):
                        for n, subject in enumerate(_rotate(subjects, round_no)):
                            docs = _docs(f"b{round_no}x{n}", round_no * len(subjects) + n)
                            items = _bookings(ids[subject], docs, size)
                            if subject == WEBSOCKET:
                                seconds = asyncio.run(_websocket(relay, ids[subject], docs, items))
                            else:
                                seconds = _post_batch(
                                    http, ids[subject], items, binary=subject == BATCH_MSGPACK
                                )
                            if round_no > 0:
                                results[subject].samples.append(seconds)
            except Exception as exc:
                for r in results.values():
                    r.status, r.note, r.samples = DIVERGED, f"failed: {type(exc).__name__}: {exc}"[:600], []
            finally:
                relay.stop()
        for r in results.values():
            if r.samples:
                r.note = f"median {fmt_seconds(statistics.median(r.samples))} per {size} updates"
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
        _, update = who.author.book(replicas[doc], doc, "s1", 1)
        out.append((doc, i + 1, update))
    return out


async def _websocket(
    relay: QuickSlotAsgi, who: Identity, docs: list[str], items: list[tuple[str, int, bytes]]
) -> float:
    """Subscribe to ``docs`` (untimed), then send every update and wait for every ack."""
    import websockets

    from crdt_core.authoring import Author
    from crdt_core.pop import PROOF_HEADER, PROOF_TIME_HEADER, auth_proof
    from crdt_core.protocol import Acked, ClientProtocol, DocSynced, ErrorReceived

    assert isinstance(who.author, Author)
    headers = {"Authorization": f"Bearer {who.access}"}
    proof = auth_proof(who.access, who.author.device.private)
    if proof is not None:
        headers[PROOF_HEADER] = base64.urlsafe_b64encode(proof.signature).rstrip(b"=").decode()
        headers[PROOF_TIME_HEADER] = str(proof.at)
    async with websockets.connect(relay.url(""), additional_headers=headers, max_size=2**26) as ws:
        proto = ClientProtocol(header_auth=True)

        async def pump(until: Callable[[list[Any]], bool]) -> None:
            seen: list[Any] = []
            while not until(seen):
                proto.receive_message(await ws.recv())  # type: ignore[arg-type]
                for data in proto.data_to_send():
                    await ws.send(data)
                for event in proto.events_received():
                    if isinstance(event, ErrorReceived):
                        raise RuntimeError(f"websocket refused: {event.code} {event.reason}")
                    seen.append(event)

        await pump(lambda seen: proto.welcome is not None)
        for doc in docs:
            proto.subscribe(doc, b"\x00")
        for data in proto.data_to_send():
            await ws.send(data)
        await pump(lambda seen: sum(isinstance(e, DocSynced) for e in seen) >= len(docs))
        started = time.perf_counter()
        for doc, uid, update in items:
            proto.send_update(doc, uid, update)
        for data in proto.data_to_send():
            await ws.send(data)
        await pump(lambda seen: sum(isinstance(e, Acked) for e in seen) >= len(items))
        return time.perf_counter() - started


def workloads(adapters: dict[str, EngineAdapter[Any]]) -> list[Any]:
    """The REST suite runs a relay process; it ignores the engine adapters."""
    return [CataloguePage(), Batch100()]


def suite() -> Any:
    """The registry entry (``SUITES["rest"]`` in ``benchmarks/suites/__init__.py``)."""
    from benchmarks.suites.common import Suite

    return Suite("rest", suite_description, workloads, (), uses_engines=False)
