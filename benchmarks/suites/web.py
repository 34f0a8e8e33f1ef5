"""The ``web`` suite: the JavaScript SDK (``web/sdk``, in Node) against crdt_core and the Python side.

Why these workloads (each measured for the SDK and for its Python counterpart in the same run, on
the same bytes):

* **sdk_verdict**: the verdict of a busy day of N claims (1,000 at full scale, the benchmark
  fixture's day: staff confirmations, cancellations, 70% stamped, twelve slots of six seats): read
  the day's document into typed records and compute the verdict. Baseline ``crdt_core``
  (``read_bookings`` + ``compute_verdict``, which is also what the Python client runs for a day);
  subject ``sdk`` (``readBookings`` + ``computeVerdict`` on a fresh document each time), and
  ``sdk, records cached`` (the same again on the same document: the SDK keeps parsed records by
  the value Yjs holds, which is what a client pays to recompute a day after a change). All must
  find the same states.
* **sdk_catchup**: validating a catch-up of that day (its whole state as one update: every
  certificate, reservation, event and stamp) against an empty replica, then applying it, as a
  fresh device does. Baseline ``crdt_core`` (``validate_update`` + apply, what the Python client's
  sync runs before storing); subject ``sdk`` (``validateUpdate`` + ``Y.applyUpdate``, WebCrypto
  signatures). Both must accept the same number of records.
* **sdk_book_ack**: one booking from the app's call to the relay's ack (the relay acks only what
  is durable) on a real relay process, N bookings in a row on one live connection, into a shop
  with twelve slots. Baseline ``crdt_core websocket``: the Python core signs and writes the
  booking and sends it on an open sync websocket (the protocol's floor in Python); subjects
  ``sdk client`` (``QuickSlotClient.book``: sign, validate, store the document and the outbox
  entry in memory, send, until its ``acked`` event) and ``python client`` (``LocalClient.book``,
  one SQLite transaction with ``synchronous=FULL``, then ``SyncService.wake`` on a live
  ``SyncService.run``, until the outbox is empty).

Skipped (status ``unsupported``, with the reason) without node or the SDK's dependencies
(``make test-web`` installs them). Timing is inside each runtime (``time.perf_counter`` in Python,
``performance.now`` in Node) around the calls only.
"""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.adapters import EngineAdapter
from benchmarks.harness import DIVERGED, UNSUPPORTED, Progress, Result, RunConfig, Scale
from benchmarks.suites.common import scratch_dir

__all__ = ["suite", "suite_description", "workloads"]

suite_description = (
    "the JavaScript SDK in Node against crdt_core: a day's verdict, validating a day's catch-up, "
    "and booking latency to the relay's durable ack"
)

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "web" / "sdk"
DRIVER = REPO / "benchmarks" / "node" / "sdk_bench.mjs"
CRDT_CORE = "crdt_core"
SDK_SUBJECT = "sdk"
SDK_WARM = "sdk, records cached"
WS_CORE = "crdt_core websocket"
SDK_CLIENT = "sdk client"
PY_CLIENT = "python client"


def _rounds(config: RunConfig) -> int:
    return {"tiny": 3, "quick": 10, "full": max(30, config.repeat)}[config.scale]


def node_argv() -> list[str]:
    """How to run Node with a WebSocket (a flag on Node 20); RuntimeError saying what is missing."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    if not (SDK / "node_modules" / "yjs").is_dir():
        raise RuntimeError("web/sdk dependencies missing: run `make test-web` (npm ci)")
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    has_ws = subprocess.run([node, "-e", probe], check=False)
    return [node] if has_ws.returncode == 0 else [node, "--experimental-websocket"]


class Node:
    """The SDK's benchmark driver: one Node process for the whole workload."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [*node_argv(), str(DRIVER)], cwd=SDK, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise RuntimeError(f"the SDK driver died: {self.proc.stderr.read()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"SDK {op} failed: {answer['error'][-3000:]}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _with_node(results: list[Result], measure: Any) -> list[Result]:
    """Run ``measure(node)``; without node or the SDK, every result says why (``unsupported``)."""
    try:
        node = Node()
    except RuntimeError as exc:
        for r in results:
            r.status, r.note = UNSUPPORTED, str(exc)
        return results
    try:
        measure(node)
    finally:
        node.close()
    return results


def _timed(call: Any) -> float:
    gc.disable()
    try:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0
    finally:
        gc.enable()


@dataclass
class SdkVerdict:
    name: str = "sdk_verdict"
    title: str = "The verdict of a busy day: the SDK in Node vs crdt_core"
    description: str = (
        "A day of N claims (staff confirmations, cancellations, 70% stamped, 12 slots of 6 seats) read "
        "from its document into typed records and its verdict computed: crdt_core (read_bookings + "
        "compute_verdict, the Python client's path) against the SDK (readBookings + computeVerdict) on a "
        "fresh document each time, and again on the same document (records cached, what a client pays "
        "to recompute after a change). Sample: one read + verdict."
    )
    baseline: str | None = CRDT_CORE

    def sizes(self, scale: Scale) -> list[int]:
        return {"tiny": [100], "quick": [1_000], "full": [1_000]}[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        from benchmarks.fixtures import DOC, booking_day
        from crdt_core.reader import read_bookings
        from crdt_core.verdict import compute_verdict

        day = booking_day(size)
        core = Result(self.name, CRDT_CORE, "quickslot", size, "time", "s/op", "verdict", 1)
        sdk = Result(self.name, SDK_SUBJECT, "quickslot", size, "time", "s/op", "verdict", 1)
        warm = Result(self.name, SDK_WARM, "quickslot", size, "time", "s/op", "verdict", 1)
        rounds = _rounds(config)
        verdict = compute_verdict(read_bookings(day.replica, DOC), day.capacities)  # warm-up, and the check
        want: dict[str, int] = {}
        for claim in verdict.claims.values():
            want[claim.state.value] = want.get(claim.state.value, 0) + 1

        def measure(node: Node) -> None:
            core.samples = [
                _timed(lambda: compute_verdict(read_bookings(day.replica, DOC), day.capacities))
                for _ in range(rounds)
            ]
            got = node.ask(
                "verdict", docId=str(DOC), state=day.replica.encode_state().hex(),
                capacities=day.capacities, rounds=rounds + 1,
            )  # fmt: skip
            sdk.samples = got["samples"][1:]  # the first call compiles the code paths
            warm.samples = got["warm"][1:]
            if got["states"] != want:
                for r in (sdk, warm):
                    r.status, r.note, r.samples = DIVERGED, f"SDK states {got['states']} != {want}", []

        for r in _with_node([core, sdk, warm], measure):
            r.extra["claims"] = len(verdict.claims)
            progress.result(r)
        return [core, sdk, warm]


@dataclass
class SdkCatchUp:
    name: str = "sdk_catchup"
    title: str = "Validating a day's catch-up: the SDK in Node vs crdt_core"
    description: str = (
        "The busy day of N reservations as one update (every certificate, reservation, event and stamp), "
        "validated against an empty replica and applied, as a fresh device catches up: crdt_core "
        "(validate_update + apply, what the Python client runs before storing) against the SDK "
        "(validateUpdate with WebCrypto signatures + Y.applyUpdate). Sample: one whole catch-up."
    )
    baseline: str | None = CRDT_CORE

    def sizes(self, scale: Scale) -> list[int]:
        return {"tiny": [100], "quick": [1_000], "full": [1_000]}[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        from benchmarks.fixtures import DOC, RELAY, booking_day
        from crdt_core.certs import CertificateCache
        from crdt_core.engine import Replica
        from crdt_core.validation import validate_update

        day = booking_day(size)
        payload = day.replica.encode_state()
        keys = {RELAY.kid: RELAY.public}
        core = Result(self.name, CRDT_CORE, "quickslot", size, "time", "s/op", "catch-up", 1)
        sdk = Result(self.name, SDK_SUBJECT, "quickslot", size, "time", "s/op", "catch-up", 1)
        rounds = _rounds(config)
        accepted = len(validate_update(str(DOC), Replica(), payload, CertificateCache(keys)).records)

        def once() -> None:
            replica = Replica()
            validate_update(str(DOC), replica, payload, CertificateCache(keys))
            replica.apply_update(payload)

        def measure(node: Node) -> None:
            core.samples = [_timed(once) for _ in range(rounds)]
            got = node.ask(
                "validate", docId=str(DOC), update=payload.hex(),
                trust={k: v.hex() for k, v in keys.items()}, rounds=rounds + 1,
            )  # fmt: skip
            sdk.samples = got["samples"][1:]
            if got["records"] != accepted:
                sdk.status, sdk.note, sdk.samples = (
                    DIVERGED,
                    f"SDK accepted {got['records']} != {accepted}",
                    [],
                )

        for r in _with_node([core, sdk], measure):
            r.extra |= {"records": accepted, "update_bytes": len(payload)}
            progress.result(r)
        return [core, sdk]


@dataclass
class SdkBookAck:
    name: str = "sdk_book_ack"
    title: str = "Booking to the relay's durable ack: the SDK client vs crdt_core on a websocket"
    description: str = (
        "N bookings in a row on one live connection to a real relay process, each timed from the call "
        "to the relay's ack (sent once the update is durable): the Python core signing, writing and "
        "sending on an open sync websocket (the protocol's floor in Python) against the SDK's "
        "QuickSlotClient.book (sign, validate, store the document and outbox entry in memory, send) until "
        "its acked event, and the Python client (LocalClient.book in one durable SQLite transaction, "
        "then a live SyncService) until its outbox is empty. Sample: one booking."
    )
    baseline: str | None = WS_CORE

    def sizes(self, scale: Scale) -> list[int]:
        return {"tiny": [5], "quick": [30], "full": [100]}[scale]

    def run(self, size: int, config: RunConfig, progress: Progress) -> list[Result]:
        from benchmarks.client_bench.catchup import RELAY_ARGS, _create_shop, _grant_owner
        from benchmarks.relay_bench.servers import PASSWORD, QuickSlotAsgi

        core = Result(self.name, WS_CORE, "quickslot", size, "time", "s/op", "booking", 1)
        sdk = Result(self.name, SDK_CLIENT, "quickslot", size, "time", "s/op", "booking", 1)
        py = Result(self.name, PY_CLIENT, "quickslot", size, "time", "s/op", "booking", 1)
        # one day per subject: the relay's work per booking grows with the day (stamps, verdict)
        shop, days = "wb1", {WS_CORE: "2027-06-01", SDK_CLIENT: "2027-06-02", PY_CLIENT: "2027-06-03"}

        def measure(node: Node) -> None:
            with scratch_dir("quickslot-web-bench-") as workdir:
                relay = QuickSlotAsgi(workdir, extra_args=RELAY_ARGS)
                relay.start()
                try:
                    owner, core_id, web_id, py_id = relay.ensure_identities(4)
                    _grant_owner(relay, owner.email, shop)
                    asyncio.run(_create_shop(relay, owner, shop, workdir / "owner"))
                    doc = f"bookings:{shop}:{days[WS_CORE]}"
                    core.samples = asyncio.run(_core_bookings(relay, core_id, doc, size))
                    got = node.ask(
                        "book", relay=relay.base, email=web_id.email, password=PASSWORD,
                        shop=shop, day=days[SDK_CLIENT], slot="s1", count=size,
                    )  # fmt: skip
                    sdk.samples = got["samples"]
                    py.samples = asyncio.run(
                        _client_bookings(relay, py_id, shop, days[PY_CLIENT], size, workdir / "py")
                    )
                finally:
                    relay.stop()

        for r in _with_node([core, sdk, py], measure):
            progress.result(r)
        return [core, sdk, py]


async def _core_bookings(relay: Any, who: Any, doc: str, n: int) -> list[float]:
    """``n`` bookings signed and written by crdt_core, each sent and awaited until its ack."""
    from benchmarks.suites.rest import _replica_for, _socket
    from crdt_core.protocol import Acked, DocSynced

    replica = _replica_for(who)
    samples = []
    async with _socket(relay, who) as sock:
        sock.proto.subscribe(doc, b"\x00")
        await sock.flush()
        await sock.pump(lambda seen: any(isinstance(e, DocSynced) for e in seen))
        for uid in range(1, n + 1):
            t0 = time.perf_counter()
            _, update = who.author.book(replica, doc, "s1", 1)
            sock.proto.send_update(doc, uid, update)
            await sock.flush()
            await sock.pump(lambda seen: any(isinstance(e, Acked) for e in seen))
            samples.append(time.perf_counter() - t0)
    return samples


async def _client_bookings(relay: Any, who: Any, shop: str, day: str, n: int, path: Path) -> list[float]:
    """``n`` bookings by the Python client on a live sync loop, each until its outbox is empty.

    The client tells each acknowledgement as a ``ChangeAcked`` event (emitted once the entry is
    gone from the outbox in SQLite). The first booking of the day also lists the day in the
    user's own document (a second entry), so its sample waits for two acks.
    """
    from benchmarks.client_bench.catchup import _open
    from benchmarks.relay_bench.servers import PASSWORD
    from client.local.events import ChangeAcked, Synced
    from client.sync.auth import AuthClient
    from client.sync.service import SyncService

    local = await _open(path)
    try:
        await AuthClient(local, relay.base).login(who.email, PASSWORD)
        await local.subscribe(f"shop:{shop}", "browsed")
        await local.subscribe(f"bookings:{shop}:{day}", "browsed")
        service = SyncService(local, relay.base)
        task = asyncio.create_task(service.run())
        while not isinstance(await asyncio.wait_for(local.events.get(), 60), Synced):
            pass
        samples = []
        for _ in range(n):
            while not local.events.empty():
                local.events.get_nowait()
            t0 = time.perf_counter()
            await local.book(shop, day, "s1")
            service.wake()
            while (await local.outbox_counts()).pending:
                while not isinstance(await asyncio.wait_for(local.events.get(), 30), ChangeAcked):
                    pass
            samples.append(time.perf_counter() - t0)
        service.stop()
        await asyncio.wait_for(task, 30)
    finally:
        await local.close()
    return samples


def workloads(adapters: dict[str, EngineAdapter[Any]]) -> list[Any]:
    """The web suite runs Node and a relay process; it ignores the engine adapters."""
    return [SdkVerdict(), SdkCatchUp(), SdkBookAck()]


def suite() -> Any:
    """The registry entry (``SUITES["web"]`` in ``benchmarks/suites/__init__.py``)."""
    from benchmarks.suites.common import Suite

    return Suite("web", suite_description, workloads, (), uses_engines=False)
