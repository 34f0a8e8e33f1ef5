"""Sessions on the sync websocket: token expiry, revocation, disabled accounts, restarts, SIGKILL.

Each test runs against the SQLite store and against PostgreSQL (``store_flags``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import time
from pathlib import Path

import httpx
import pytest

from crdt_core.authoring import Author
from crdt_core.engine import Replica
from crdt_core.messages import CloseCode
from crdt_core.protocol import Acked, DocSynced
from crdt_core.reader import read_bookings
from tests.relay.store_backends import LONG_STORES
from tests.support.relay_process import GENEROUS_LIMITS, STORES, RelayProcess, run_cli, store_args
from tests.support.sync_helpers import SyncClient, fetch_document, login_device, new_account

# A booking's day must lie from a day before to 366 days after its HLC (day_out_of_range).
DOC = f"bookings:shop1:{(dt.date.today() + dt.timedelta(days=30)).isoformat()}"


@pytest.fixture(params=STORES)
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    """Serve (and CLI) flags of a fresh store: ``[]`` for SQLite, ``--store DSN`` for PostgreSQL."""
    return store_args(request, request.param)


async def test_expired_access_token_closes_4001_and_refresh_lets_back_in(
    tmp_path: Path, store_flags: list[str]
) -> None:
    with (
        RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags, "--access-ttl", "2") as relay,
        relay.client() as http,
    ):
        acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        assert isinstance(await c.subscribe(DOC, Replica()), DocSynced)
        code, reason = await asyncio.wait_for(c.closed, 15)
        assert code == CloseCode.TOKEN_EXPIRED, reason
        r = http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
        assert r.status_code == 200, r.text
        c2 = await SyncClient.connect(relay, r.json()["access_token"])
        assert isinstance(await c2.subscribe(DOC, Replica()), DocSynced)
        await c2.close()


async def test_refresh_reuse_closes_the_family_and_logout_revokes(
    tmp_path: Path, store_flags: list[str]
) -> None:
    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags) as relay, relay.client() as http:
        acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        assert isinstance(await c.subscribe(DOC, Replica()), DocSynced)
        assert http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh}).status_code == 200
        reuse = http.post("/api/v1/auth/refresh", json={"refresh_token": acct.refresh})
        assert reuse.status_code == 401
        code, _ = await asyncio.wait_for(c.closed, 10)
        assert code == CloseCode.SESSION_REVOKED
        # The revoked family's access token no longer opens a session.
        again = await SyncClient.connect(relay, acct.access)
        code, _ = await asyncio.wait_for(again.closed, 10)
        assert code == CloseCode.SESSION_REVOKED


async def test_disabled_user_is_closed_out(tmp_path: Path, store_flags: list[str]) -> None:
    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags) as relay, relay.client() as http:
        acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        assert isinstance(await c.subscribe(DOC, Replica()), DocSynced)
        result = relay.run_cli("user", "disable", acct.email)
        assert result.returncode == 0, result.stderr
        code, _ = await asyncio.wait_for(c.closed, 10)
        assert code in (CloseCode.ACCOUNT_DISABLED, CloseCode.SESSION_REVOKED)


async def test_sigterm_tells_clients_to_come_back(tmp_path: Path, store_flags: list[str]) -> None:
    relay = RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags).start()
    with relay.client() as http:
        acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    assert isinstance(await c.subscribe(DOC, Replica()), DocSynced)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    exit_code = await loop.run_in_executor(None, relay.stop)
    code, _ = await asyncio.wait_for(c.closed, 10)
    assert code == CloseCode.GOING_AWAY
    assert exit_code == 0
    assert time.monotonic() - started < 10


async def _writer(
    relay: RelayProcess, acct_access: str, author: Author, acked: list[str], stop: asyncio.Event
) -> None:
    """Books as fast as acks come back until the relay dies; records every acknowledged booking.
    Each booking is of its own slot: one customer holds one active booking of a slot a day."""
    slots = (f"s{i}" for i in itertools.count())
    try:
        c = await SyncClient.connect(relay, acct_access)
        replica = Replica(author.client_id())
        if not isinstance(await c.subscribe(DOC, replica), DocSynced):
            return
        while not stop.is_set() and not c.closed.done():
            res, update = author.book(replica, DOC, next(slots), 1)
            try:
                answer = await c.push(DOC, update)
            except (TimeoutError, Exception):
                return
            if isinstance(answer, Acked):
                acked.append(res.id)
    except Exception:
        return


@pytest.mark.parametrize("store_flags", LONG_STORES, indirect=True)
def test_sigkill_at_random_moments_loses_no_acknowledged_booking(
    tmp_path: Path, store_flags: list[str]
) -> None:
    data = tmp_path / "data"
    rng = random.Random(20261126)
    acked: list[str] = []
    kills = 4
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    with relay.client() as http:
        accounts = [new_account(relay, http) for _ in range(3)]

    async def run_round(relay: RelayProcess) -> None:
        stop = asyncio.Event()
        tasks = []
        with relay.client() as http:
            for acct in accounts:
                fresh = login_device(relay, http, acct.email)
                tasks.append(asyncio.create_task(_writer(relay, fresh.access, fresh.author, acked, stop)))
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        relay.proc.kill()  # type: ignore[union-attr]  # SIGKILL mid-traffic
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait(tasks, timeout=15)

    for _ in range(kills):
        asyncio.run(run_round(relay))
        relay.proc.wait()  # type: ignore[union-attr]
        relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    assert acked, "no booking was acknowledged: the test proved nothing"

    async def fetch() -> Replica:
        with relay.client() as http:
            acct = login_device(relay, http, accounts[0].email)
        return await fetch_document(relay, acct.access, DOC)

    try:
        replica = asyncio.run(fetch())
        state = read_bookings(replica, DOC)
        missing = set(acked) - set(state.reservations)
        assert not missing, f"{len(missing)} acknowledged bookings lost after {kills} SIGKILLs"
        # Every stored booking was stamped exactly once, with gap-free numbers.
        stamped = [s.reservation for s in state.stamps.values()]
        assert sorted(state.stamps) == list(range(1, len(state.stamps) + 1))
        assert len(stamped) == len(set(stamped))
        assert set(stamped) == set(state.reservations)
        assert httpx.get(f"{relay.base_url}/healthz").status_code == 200
    finally:
        assert relay.stop() == 0


async def test_operator_stats_and_compact(tmp_path: Path, store_flags: list[str]) -> None:
    from tests.support.relay_process import cli_json

    data = tmp_path / "data"
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    try:
        with relay.client() as http:
            acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        replica = Replica(acct.author.client_id())
        await c.subscribe(DOC, replica)
        for i in range(4):
            _, update = acct.author.book(replica, DOC, f"s{i}", 1)
            assert isinstance(await c.push(DOC, update), Acked)
        await c.close()
        busy = run_cli("compact", "--json", *store_flags, data_dir=data)
        assert busy.returncode == 1 and "already serving" in busy.stderr
    finally:
        assert relay.stop() == 0
    stats = cli_json("stats", *store_flags, data_dir=data)
    assert stats["documents"]["documents"] == 1 and stats["documents"]["log_rows"] >= 8
    compacted = cli_json("compact", *store_flags, data_dir=data)
    assert compacted["compacted"] == 1
    after = cli_json("stats", *store_flags, data_dir=data)
    assert after["documents"]["log_rows"] == 0 and after["documents"]["snapshot_bytes"] > 0
    # The compacted document still serves every booking.
    relay = RelayProcess(data, *GENEROUS_LIMITS, *store_flags).start()
    try:
        with relay.client() as http:
            acct2 = login_device(relay, http, acct.email)
        c = await SyncClient.connect(relay, acct2.access)
        fresh = Replica()
        await c.subscribe(DOC, fresh)
        await c.close()
        assert fresh.to_py()["reservations"] == replica.to_py()["reservations"]
    finally:
        assert relay.stop() == 0


async def test_document_size_limit(tmp_path: Path, store_flags: list[str]) -> None:
    from crdt_core.messages import ErrorCode
    from crdt_core.protocol import ErrorReceived

    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags, "--max-doc-bytes", "4000") as relay:
        with relay.client() as http:
            acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        replica = Replica(acct.author.client_id())
        await c.subscribe(DOC, replica)
        answers = []
        for i in range(20):
            _, update = acct.author.book(replica, DOC, f"s{i}", 1)
            answers.append(await c.push(DOC, update))
        assert isinstance(answers[0], Acked)
        refused = [a for a in answers if isinstance(a, ErrorReceived)]
        assert refused and all(a.code == ErrorCode.DOC_TOO_LARGE for a in refused)
        await c.close()


async def test_max_inflight_flag_reaches_the_welcome(tmp_path: Path, store_flags: list[str]) -> None:
    from crdt_core.messages import Limit

    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *store_flags, "--max-inflight", "3") as relay:
        with relay.client() as http:
            acct = new_account(relay, http)
        c = await SyncClient.connect(relay, acct.access)
        welcome = c.proto.welcome
        assert welcome is not None and welcome.limits[Limit.MAX_INFLIGHT] == 3
        # The bound slows a pipelined flush down; it never refuses one.
        replica = Replica(acct.author.client_id())
        await c.subscribe(DOC, replica)
        updates = [acct.author.book(replica, DOC, f"s{i}", 1)[1] for i in range(12)]
        for uid, update in enumerate(updates, start=1):
            c.proto.send_update(DOC, uid, update)
        await c.flush()
        acked: list[int] = []
        while len(acked) < len(updates):
            event = await c.next_event((Acked,))
            acked.append(event.uid)
        assert acked == list(range(1, 13))
        await c.close()
