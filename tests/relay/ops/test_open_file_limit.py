"""The relay fits its connection limit to its open-file limit (relay/ops/fdlimit.py).

Found by the load run (docs/reliability.md, "Load"): with a soft ``RLIMIT_NOFILE`` below what
``--max-connections``
needs (1024 is the usual default, 10,000 the relay's), clients past the descriptor limit hung in
the listen backlog until their own timeout, asyncio logged a traceback per refused accept (about
290,000 log lines in 100 s) and the live connections waited seconds for their acks. The relay
now raises its soft limit as far as the hard limit allows and, if still short, lowers the
connection limit so surplus clients get the documented ``1013 relay full``. A burst can still
exhaust the descriptors for a moment; CPython 3.11's accept loop then reports EMFILE once per
backlog slot (2,048), so the relay folds those reports into one warning per interval.

Each test starts a real relay process with the limits set in the child before it runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import websockets

from crdt_core.engine import Replica
from crdt_core.pop import SYNC
from relay.ops.fdlimit import ACCEPT_EXHAUSTED, AcceptErrorThrottle
from tests.support.relay_process import FAST_HASH_ARGS, GENEROUS_LIMITS, REPO, RelayProcess, _env, free_port
from tests.support.sync_helpers import SyncClient, new_account, token_headers

# A booking's day must lie from a day before to 366 days after its HLC (day_out_of_range).
DOC = f"bookings:fdshop:{(dt.date.today() + dt.timedelta(days=30)).isoformat()}"


def _start(data: Path, soft: int, hard: int, *extra: str) -> RelayProcess:
    relay = RelayProcess(data)
    relay.port = free_port()
    args = [
        sys.executable, "-m", "relay.cli", "serve", "--host", "127.0.0.1", "--port", str(relay.port),
        "--data", str(data), *FAST_HASH_ARGS, *GENEROUS_LIMITS, *extra,
    ]  # fmt: skip

    def limit() -> None:  # in the child, before exec
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with open(relay.log_path, "ab") as log:
        relay.proc = subprocess.Popen(  # noqa: PLW1509 - the test process is single-threaded here
            args, cwd=REPO, env=_env(), stdout=log, stderr=log, preexec_fn=limit
        )
    if not relay._wait_healthy(30):
        relay.stop()
        raise RuntimeError(f"relay did not start:\n{relay.log_text()[-3000:]}")
    return relay


def _nofile(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file line in /proc/PID/limits")


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.stop()


def test_soft_limit_is_raised_for_the_connection_limit(
    tmp_path: Path, relay_factory: list[RelayProcess]
) -> None:
    relay = _start(tmp_path / "data", 256, 1024, "--max-connections", "500")
    relay_factory.append(relay)
    assert relay.proc is not None
    assert _nofile(relay.proc.pid) == (500 + 128, 1024)
    assert "max_connections_lowered" not in relay.log_text()


def test_surplus_clients_get_1013_when_descriptors_are_short(
    tmp_path: Path, relay_factory: list[RelayProcess]
) -> None:
    relay = _start(tmp_path / "data", 256, 256)  # default --max-connections (10,000)
    relay_factory.append(relay)
    assert relay.proc is not None
    assert _nofile(relay.proc.pid) == (256, 256)
    capacity = 256 - 128
    with relay.client() as http:
        account = new_account(relay, http)

    async def scenario() -> None:
        gate = asyncio.Semaphore(16)

        async def open_one() -> SyncClient:
            async with gate:
                return await SyncClient.connect(relay, account.access)

        clients = await asyncio.wait_for(asyncio.gather(*(open_one() for _ in range(capacity + 72))), 60)
        try:
            await asyncio.sleep(0.5)
            refused = [c for c in clients if c.closed.done()]
            held = [c for c in clients if not c.closed.done()]
            assert len(held) == capacity
            assert len(refused) == 72
            assert {c.closed.result()[0] for c in refused} == {1013}
            # The relay still serves the connections it holds.
            replica = Replica(account.author.client_id())
            await held[0].subscribe(DOC, replica)
            _, update = account.author.book(replica, DOC, "s1", 1)
            answer = await held[0].push(DOC, update)
            assert type(answer).__name__ == "Acked", answer
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(scenario())
    assert "out of system resource" not in relay.log_text()
    assert '"max_connections_lowered"' in relay.log_text()  # the operator is told why


def test_a_burst_past_the_descriptors_is_refused_with_1013_not_hung(
    tmp_path: Path, relay_factory: list[RelayProcess]
) -> None:
    """400 clients at once against room for 128: the accept loop runs out of descriptors for a
    moment; every client still ends up held or refused with 1013, and the log stays readable."""
    relay = _start(tmp_path / "data", 256, 256)
    relay_factory.append(relay)
    with relay.client() as http:
        account = new_account(relay, http)
    url = f"ws://127.0.0.1:{relay.port}/api/v1/sync"
    headers = token_headers(account.access, SYNC)  # the token is bound: a proof goes with it

    opened: list[websockets.ClientConnection] = []

    async def one() -> tuple[str, object]:
        try:
            ws = await websockets.connect(url, additional_headers=headers, open_timeout=45, close_timeout=2)
        except websockets.InvalidStatus as exc:  # uvicorn may refuse the upgrade itself
            return "status", exc.response.status_code
        opened.append(ws)  # held open until every client has its answer
        try:
            first = await asyncio.wait_for(ws.recv(), 45)
            assert isinstance(first, bytes)
            return "held", msgpack.unpackb(first)["t"]
        except websockets.ConnectionClosed as closed:
            return "closed", closed.rcvd.code if closed.rcvd else None

    async def scenario() -> list[tuple[str, object]]:
        try:
            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(400))), 90)
        finally:
            await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    held = [v for k, v in outcomes if k == "held"]
    refused = [v for k, v in outcomes if k != "held"]
    assert held == ["welcome"] * 128
    assert set(refused) == {1013}
    log = relay.log_text()
    assert ACCEPT_EXHAUSTED not in log  # no traceback per refused accept
    assert log.count('"accept_out_of_descriptors"') <= 12  # one warning per 10 s at most


def test_accept_failures_are_folded_into_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        now = [100.0]
        throttle = AcceptErrorThrottle(every_s=10.0, clock=lambda: now[0])
        loop.set_exception_handler(throttle)
        failure = {"message": ACCEPT_EXHAUSTED, "exception": OSError(errno.EMFILE, "Too many open files")}
        with caplog.at_level(logging.WARNING):
            for _ in range(2048):
                loop.call_exception_handler(dict(failure))
            now[0] += 10.0
            loop.call_exception_handler(dict(failure))
            loop.call_exception_handler({"message": "something else broke"})
        warnings = [r for r in caplog.records if r.getMessage() == "accept_out_of_descriptors"]
        assert [getattr(r, "folded_in", None) for r in warnings] == [0, 2047]
        assert any("something else broke" in r.getMessage() for r in caplog.records if r.name == "asyncio")
    finally:
        loop.close()
