"""One live relay process, the connections around it, and the oracles checked after every batch.

Why one process for many cases: starting a relay takes seconds, a fuzz case milliseconds. The
session keeps, besides the fuzzing connections,

* a **watcher**: the fuzzing user's second device, subscribed to every document the fuzzer
  writes; every update it receives must be one the relay acknowledged, never one it refused;
* a **good client**: another user that books on the same day document after every batch and must
  be acknowledged, and seen by the watcher, within the deadline.

After every batch: the process is alive, ``/healthz`` answers within the deadline, VmRSS is below
the bound, the watcher is still open, nothing malformed came from the relay. Violations are
collected as text; the caller decides whether to fail (pytest) or to count (the long run).

Everything asynchronous runs on one event loop in a background thread, so hypothesis (which
calls plain functions) can drive it and connections outlive a single example.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from crdt_core.engine import Replica
from crdt_core.messages import (
    Ack,
    ClientUpdate,
    ErrorCode,
    ErrorMessage,
    Message,
    RelayUpdate,
    Stamp,
    Stamped,
    Subscribe,
    Sync,
    Welcome,
)
from crdt_core.pop import auth_proof
from crdt_core.protocol import Acked
from tests.fuzz.cases import Case, Corpus, Fragments, Message as MessageStep, RawFrames, Silence
from tests.fuzz.conn import FuzzConn
from tests.fuzz.corpus import build_corpus
from tests.fuzz.oracles import (
    FRAMING_CLOSES,
    Expect,
    joined_parts,
    predict_first,
    predict_open,
)
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, peak_rss_bytes, rss_bytes
from tests.support.sync_helpers import Account, SyncClient, login_device, new_account

T = TypeVar("T")

#: Relay flags for fuzzing: rate limits out of the way (they would close the fuzzing connection
#: with 4029 long before the interesting code), a short auth deadline so "silence" cases are cheap,
#: and access tokens that outlive a long run (at 30 minutes every connection is closed with 4001,
#: correctly, and the session's connections would need a refresh the harness does not do).
RELAY_FLAGS = (
    *GENEROUS_LIMITS,
    *("--sync-rate", "1000000", "--sync-burst", "1000000", "--auth-deadline", "1", "--access-ttl", "86400"),
)
AUTH_DEADLINE_S = 1.0
PREAUTH_MAX = 16 * 1024
MAX_MESSAGE = 1 << 20
#: Every answer (an err, an ack, a sync, a close) must arrive within this; longer is a hang.
ANSWER_TIMEOUT_S = 10.0
#: The memory bound: VmRSS may grow at most this much above the baseline measured after setup.
RSS_HEADROOM_MIB = 64
PING_DOC = "fuzz-ping"
PING_BASE = 1 << 62
KNOWN_ERRORS = frozenset(e.value for e in ErrorCode)


class LoopThread:
    """An asyncio loop in a daemon thread; ``run`` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 600.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Stats:
    """What ran and what came back; the figures in docs/reliability.md come from here."""

    cases: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    messages: int = 0
    closes: Counter[int | None] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    acks: int = 0
    welcomes: int = 0
    reconnects: int = 0
    batches: int = 0
    good_updates: int = 0
    watcher_updates: int = 0
    baseline_rss: int = 0
    peak_rss: int = 0
    last_rss: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def by_lane(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (lane, _), n in self.cases.items():
            out[lane] += n
        return dict(out)

    def by_kind(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for (_, kind), n in self.cases.items():
            out[kind] += n
        return dict(sorted(out.items()))


class FuzzSession:
    """A relay under fuzz; create, ``start()``, feed batches, ``check()``, ``stop()``."""

    def __init__(self, root: Path, *, rss_headroom_mib: int = RSS_HEADROOM_MIB) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.relay = RelayProcess(root / "data", *RELAY_FLAGS)
        self.loop = LoopThread()
        self.stats = Stats()
        self.rss_headroom = rss_headroom_mib << 20
        self.day = (dt.date.today() + dt.timedelta(days=5)).isoformat()
        self.corpus: Corpus | None = None
        self.accepted: set[bytes] = set()
        self.rejected: set[bytes] = set()
        #: Sent on a connection that then closed: the answer never came, either outcome is fine.
        self.unknown: set[bytes] = set()
        self.seen: set[bytes] = set()
        self._auth: FuzzConn | None = None
        self._watcher: FuzzConn | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._good: SyncClient | None = None
        self._good_replica = Replica()
        self._replicas: dict[str, Replica] = {}
        self._pings = 0
        self._silent: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self.fuzzer: Account | None = None
        self.watcher_account: Account | None = None
        self.good: Account | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://{self.relay.host}:{self.relay.port}/api/v1/sync"

    @property
    def rss_bound(self) -> int:
        return self.stats.baseline_rss + self.rss_headroom

    def start(self) -> FuzzSession:
        self.relay.start()
        shop = "fuzzshop"
        bookings, shop_doc = f"bookings:{shop}:{self.day}", f"shop:{shop}"
        with self.relay.client() as http:
            self.fuzzer = new_account(self.relay, http)
            self.watcher_account = login_device(self.relay, http, self.fuzzer.email)
            self.good = new_account(self.relay, http)
        user_doc = f"user:{self.fuzzer.user_id}"
        self.loop.run(self._setup(bookings, user_doc, shop_doc))
        self.stats.baseline_rss = self._rss()
        self.stats.peak_rss = self.stats.baseline_rss
        return self

    async def _setup(self, bookings: str, user_doc: str, shop_doc: str) -> None:
        assert self.fuzzer is not None and self.good is not None and self.watcher_account is not None
        self._http = httpx.AsyncClient(base_url=self.relay.base_url, timeout=ANSWER_TIMEOUT_S)
        # One stored booking each for the fuzzer and the good client: targets of rewrite/cancel.
        self._good = await SyncClient.connect(self.relay, self.good.access)
        self._good_replica = Replica(self.good.author.client_id())  # its own Yjs id (crdt_core.clientids)
        await self._good.subscribe(bookings, self._good_replica)
        victim, update = self.good.author.book(self._good_replica, bookings, "s1", 1)
        assert isinstance(await self._good.push(bookings, update), Acked)
        self.accepted.add(update)
        mine = await SyncClient.connect(self.relay, self.fuzzer.access)
        replica = Replica(self.fuzzer.author.client_id())
        await mine.subscribe(bookings, replica)
        own, update = self.fuzzer.author.book(replica, bookings, "s2", 1)
        assert isinstance(await mine.push(bookings, update), Acked)
        self.accepted.add(update)
        await mine.drain_into(replica, quiet=0.3)
        await mine.close()
        self.corpus = build_corpus(
            bookings=bookings,
            user_doc=user_doc,
            shop_doc=shop_doc,
            author=self.fuzzer.author,
            other=self.good.author,
            token=self.fuzzer.access,
            auth_proof=auth_proof(self.fuzzer.access, self.fuzzer.author.device.private),
            bookings_state=replica.encode_state(),
            stored_reservation=own.id,
            victim_reservation=victim.id,
        )
        self._replicas = {doc: Replica() for doc in self.corpus.docs}
        self._watcher = await FuzzConn.open(
            self.url, self.watcher_account.access, "watcher", key=self.watcher_account.author.device.private
        )
        await self._expect_welcome(self._watcher)
        expect = Expect()
        for doc in self.corpus.docs:
            await self._watcher.send(Subscribe(doc, b"\x00").to_wire())
            expect.subs[doc] += 1
        await self._settle(self._watcher, expect, "watcher setup")
        self._watch_task = asyncio.create_task(self._watch(self._watcher))

    def stop(self) -> int:
        with contextlib.suppress(Exception):
            self.loop.run(self._teardown(), timeout=30)
        self.loop.close()
        return self.relay.stop()

    async def _teardown(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        for conn in (self._auth, self._watcher):
            if conn is not None:
                await conn.close()
        if self._good is not None:
            await self._good.close()
        if self._http is not None:
            await self._http.aclose()

    # --- running cases ----------------------------------------------------------------------------

    def run(self, lane: str, cases: Iterable[Case]) -> None:
        """Run ``cases`` on ``lane`` ("auth" or "unauth"), then check every oracle."""
        self.loop.run(self._run(lane, list(cases)))

    async def _run(self, lane: str, cases: list[Case]) -> None:
        loop = asyncio.get_running_loop()
        for case in cases:
            self.stats.cases[(lane, case.kind)] += 1
            started = loop.time()
            if lane == "auth":
                await self._auth_case(case)
            elif isinstance(case.steps[0], Silence):
                # Nothing to send: wait for the auth-deadline close alongside the other cases.
                self._silent.append(asyncio.create_task(self._unauth_case(case)))
            else:
                await self._unauth_case(case)
            self.stats.seconds[case.kind] += loop.time() - started
        started = loop.time()
        if self._silent:
            await asyncio.gather(*self._silent)
            self._silent.clear()
        await self._check()
        self.stats.seconds["(oracles)"] += loop.time() - started

    def violation(self, text: str) -> None:
        self.stats.violations.append(text)

    async def _auth_conn(self) -> FuzzConn:
        conn = self._auth
        if conn is not None and not conn.is_closed:
            return conn
        if conn is not None:
            await conn.close()
            self._check_malformed(conn)
        assert self.fuzzer is not None
        self.stats.reconnects += 1
        conn = await FuzzConn.open(
            self.url, self.fuzzer.access, "fuzz-auth", key=self.fuzzer.author.device.private
        )
        self._auth = conn
        await self._expect_welcome(conn)
        await self._resubscribe(conn)
        return conn

    async def _resubscribe(self, conn: FuzzConn) -> None:
        assert self.corpus is not None
        expect = Expect()
        for doc in self.corpus.docs:
            await conn.send(Subscribe(doc, self._replicas[doc].state_vector()).to_wire())
            expect.subs[doc] += 1
        await self._settle(conn, expect, "resubscribe")

    async def _expect_welcome(self, conn: FuzzConn) -> None:
        expect = Expect(welcome=True)
        await self._settle(conn, expect, "welcome")

    async def _auth_case(self, case: Case) -> None:
        conn = await self._auth_conn()
        await self._drain(conn)
        expect = Expect()
        for step in case.steps:
            if isinstance(step, MessageStep):
                predict_open(step.data, MAX_MESSAGE, expect)
                await conn.send(step.data)
                self.stats.messages += 1
            elif isinstance(step, Fragments):
                joined = joined_parts(step)
                predict_open(joined, MAX_MESSAGE, expect)
                await conn.send(step.parts)
                self.stats.messages += 1
            elif isinstance(step, RawFrames):
                expect.close = FRAMING_CLOSES
                conn.write_raw(step.frames)
                self.stats.messages += 1
            if expect.close:
                break
        if not expect.close and not expect.waiting:
            self._pings += 1
            uid = PING_BASE + self._pings
            await conn.send(ClientUpdate(PING_DOC, uid, b"\x00\x00").to_wire())
            expect.pings.add(uid)
        await self._settle(conn, expect, case.kind)
        if not conn.is_closed and expect.unsubscribed:
            await self._resubscribe(conn)

    async def _unauth_case(self, case: Case) -> None:
        assert self.corpus is not None
        conn = await FuzzConn.open(self.url, None, "fuzz-anon")
        try:
            step = case.steps[0]
            if isinstance(step, Silence):
                expect = Expect(close=frozenset({4008}))
            elif isinstance(step, MessageStep):
                expect = predict_first(step.data, PREAUTH_MAX, self.corpus.token)
                await conn.send(step.data)
            elif isinstance(step, Fragments):
                joined = joined_parts(step)
                expect = predict_first(joined, PREAUTH_MAX, self.corpus.token)
                await conn.send(step.parts)
            else:
                assert isinstance(step, RawFrames)
                expect = Expect(close=FRAMING_CLOSES)
                conn.write_raw(step.frames)
            self.stats.messages += 0 if isinstance(step, Silence) else 1
            timeout = ANSWER_TIMEOUT_S + (AUTH_DEADLINE_S if isinstance(step, Silence) else 0)
            await self._settle(conn, expect, case.kind, timeout=timeout)
        finally:
            await conn.close()
            self._check_malformed(conn)

    # --- answers ----------------------------------------------------------------------------------

    async def _drain(self, conn: FuzzConn) -> None:
        """Absorb what arrived between cases (live updates); a late answer is a violation."""
        late = Expect()
        while not conn.inbox.empty():
            self._absorb(conn, conn.inbox.get_nowait(), late)

    async def _settle(
        self, conn: FuzzConn, expect: Expect, what: str, timeout: float = ANSWER_TIMEOUT_S
    ) -> None:
        """Wait until every expected answer arrived and, if a close is expected, the close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not expect.waiting and not expect.close and not expect.welcome_ok:
                return
            if conn.inbox.empty() and conn.is_closed:
                code, reason = conn.closed.result()
                self.stats.closes[code] += 1
                self.unknown.update(expect.uids.values())
                if code in expect.close:
                    return
                self.violation(
                    f"{what}: closed with {code} {reason!r}, expected "
                    f"{sorted(expect.close) or 'answers'} (pending uids {sorted(expect.uids)[:5]}, "
                    f"subs {dict(+expect.subs)}, pings {sorted(expect.pings)})"
                )
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.violation(
                    f"{what}: no answer or close within {timeout:.0f} s (expected "
                    f"{sorted(expect.close) or 'answers'}, pending uids {sorted(expect.uids)[:5]}, "
                    f"subs {dict(+expect.subs)}, pings {sorted(expect.pings)}, welcome {expect.welcome})"
                )
                self.unknown.update(expect.uids.values())
                await conn.close()  # start the next case on a fresh connection
                return
            getter = asyncio.ensure_future(conn.inbox.get())
            waiters: set[asyncio.Future[Any]] = {getter, conn.closed}
            await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                self._absorb(conn, getter.result(), expect)
            else:
                getter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getter

    def _absorb(self, conn: FuzzConn, message: Message, expect: Expect) -> None:
        """Match one relay message against what the case expects; record payload outcomes."""
        if isinstance(message, Welcome):
            if expect.welcome:
                expect.welcome = False
                self.stats.welcomes += 1
            elif expect.welcome_ok:
                self.stats.welcomes += 1
                expect.welcome_ok = False
                expect.close = frozenset()
            else:
                self.violation(f"{conn.name}: unexpected welcome")
            return
        if isinstance(message, Sync):
            if expect.subs[message.doc] > 0:
                expect.subs[message.doc] -= 1
                self._apply(message.doc, message.update)
            else:
                self.violation(f"{conn.name}: sync for {message.doc!r} with no sub pending")
            return
        if isinstance(message, (Ack, Stamped)) and message.uid is not None:
            self.stats.acks += 1
            payload = expect.uids.pop(message.uid, None)
            if payload is None:
                self.violation(
                    f"{conn.name}: {type(message).__name__} for uid {message.uid} not awaiting one"
                )
            else:
                self.accepted.add(payload)
                self._apply(message.doc, payload)
            if isinstance(message, Stamped):
                self._apply(message.doc, message.stamp)
            return
        if isinstance(message, (RelayUpdate, Stamped)):
            assert message.update is not None
            self._apply(message.doc, message.update)
            if isinstance(message, Stamped):
                self._apply(message.doc, message.stamp)
            return
        if isinstance(message, Stamp):
            self._apply(message.doc, message.update)
            return
        assert isinstance(message, ErrorMessage)
        self.stats.errors[message.code] += 1
        if message.code not in KNOWN_ERRORS:
            self.violation(f"{conn.name}: err with an undocumented code {message.code!r}")
        if message.uid is not None:
            if message.uid in expect.pings:
                expect.pings.discard(message.uid)
                if message.code != ErrorCode.NOT_SUBSCRIBED:
                    self.violation(f"{conn.name}: ping answered with {message.code}, not not_subscribed")
                return
            payload = expect.uids.pop(message.uid, None)
            if payload is None:
                self.violation(f"{conn.name}: err for uid {message.uid} not awaiting one")
            else:
                self.rejected.add(payload)
        elif message.doc is not None:
            if expect.subs[message.doc] > 0:
                expect.subs[message.doc] -= 1
            else:
                self.violation(f"{conn.name}: err {message.code} for {message.doc!r} with no sub pending")

    def _apply(self, doc: str, update: bytes) -> None:
        replica = self._replicas.get(doc)
        if replica is not None:
            with contextlib.suppress(Exception):
                replica.apply_update(update)

    async def _watch(self, conn: FuzzConn) -> None:
        while True:
            message = await conn.inbox.get()
            if isinstance(message, (RelayUpdate, Stamped)) and message.update is not None:
                self.seen.add(message.update)
                self.stats.watcher_updates += 1
            elif not isinstance(message, Stamp):
                self.violation(f"watcher: unexpected {type(message).__name__}")

    # --- oracles ------------------------------------------------------------------------------------

    def _rss(self) -> int:
        assert self.relay.proc is not None
        return rss_bytes(self.relay.proc.pid)

    def _peak_rss(self) -> int:
        assert self.relay.proc is not None
        return peak_rss_bytes(self.relay.proc.pid)

    def _check_malformed(self, conn: FuzzConn) -> None:
        for text in conn.malformed:
            self.violation(f"{conn.name}: {text}")
        conn.malformed.clear()

    async def _check(self) -> None:
        """The oracles: alive, answering, bounded, fan-out clean, a good client still syncing."""
        self.stats.batches += 1
        assert self.relay.proc is not None and self._http is not None and self.corpus is not None
        if self.relay.proc.poll() is not None:
            self.violation(f"relay exited with {self.relay.proc.returncode}")
            return
        started = time.monotonic()
        try:
            r = await self._http.get("/healthz", timeout=ANSWER_TIMEOUT_S)
            if r.status_code != 200:
                self.violation(f"/healthz answered {r.status_code}")
        except httpx.HTTPError as exc:
            self.violation(f"/healthz failed after {time.monotonic() - started:.1f} s: {exc!r}")
        self.stats.last_rss = self._rss()
        peak = self._peak_rss()
        self.stats.peak_rss = max(self.stats.peak_rss, peak)
        if peak > self.rss_bound:
            self.violation(f"VmHWM {peak >> 20} MiB above the bound {self.rss_bound >> 20} MiB")
        await self._good_client_round()
        if self._auth is not None:
            self._check_malformed(self._auth)
        assert self._watcher is not None
        self._check_malformed(self._watcher)
        if self._watcher.is_closed:
            self.violation(f"watcher closed: {self._watcher.closed.result()}")
        leaked = self.seen - self.accepted - self.unknown
        for update in leaked:
            how = "rejected" if update in self.rejected else "never acknowledged"
            self.violation(f"watcher received an update the relay {how}: {update[:40].hex()}")
        self.seen -= leaked

    async def _good_client_round(self) -> None:
        assert self._good is not None and self.good is not None and self.corpus is not None
        doc = self.corpus.docs[0]
        # A slot of its own each round: one customer holds one active booking of a slot a day.
        _, update = self.good.author.book(self._good_replica, doc, f"good-{self.stats.batches}", 1)
        try:
            answer = await asyncio.wait_for(self._good.push(doc, update), ANSWER_TIMEOUT_S)
        except TimeoutError:
            self.violation("good client: no ack within the deadline")
            return
        if not isinstance(answer, Acked):
            self.violation(f"good client: booking refused: {answer}")
            return
        self.accepted.add(update)
        self.stats.good_updates += 1
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while update not in self.seen:
            if time.monotonic() > deadline:
                self.violation("watcher: the good client's booking did not arrive")
                return
            await asyncio.sleep(0.005)
        # Keep the good client's event queue from growing: nothing in it is needed.
        while not self._good.events.empty():
            self._good.events.get_nowait()

    def _doc_bytes(self) -> int:
        """Size of the day document everyone writes to (it grows with every batch)."""
        if self.corpus is None or self.corpus.docs[0] not in self._replicas:
            return 0
        return len(self._replicas[self.corpus.docs[0]].encode_state())

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {
            "cases": s.total,
            "messages": s.messages,
            "by_lane": s.by_lane(),
            "by_kind": s.by_kind(),
            "batches": s.batches,
            "reconnects": s.reconnects,
            "seconds_by_kind": {k: round(v, 1) for k, v in sorted(s.seconds.items())},
            "closes": {str(k): v for k, v in sorted(s.closes.items(), key=lambda kv: str(kv[0]))},
            "errors": dict(sorted(s.errors.items())),
            "acks": s.acks,
            "welcomes": s.welcomes,
            "good_updates": s.good_updates,
            "watcher_updates": s.watcher_updates,
            "rejected_payloads": len(self.rejected),
            "baseline_rss_mib": round(s.baseline_rss / 2**20, 1),
            "peak_rss_mib": round(s.peak_rss / 2**20, 1),
            "rss_bound_mib": round(self.rss_bound / 2**20, 1),
            "last_rss_mib": round(s.last_rss / 2**20, 1),
            "bookings_doc_bytes": self._doc_bytes(),
            "violations": len(s.violations),
        }
