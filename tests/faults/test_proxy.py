"""The fault proxy itself, against real websocket servers and clients on loopback.

Why these tests: the chaos run trusts the proxy's counters and its replay. So each fault must be
shown to *happen* (the bytes that reach the far side change exactly as the fault log says), and
the same seed must give the same fault sequence.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from tests.faults.proxy import Fault, FaultProxy, FaultRates, FaultRecord
from tests.support.eventually import eventually

Received = list[bytes]


@asynccontextmanager
async def recording_server(send_down: int = 0) -> AsyncIterator[tuple[Server, Received]]:
    """A websocket server that records every message it gets and sends ``send_down`` numbered ones."""
    got: Received = []

    async def handler(ws: ServerConnection) -> None:
        for i in range(send_down):
            await ws.send(i.to_bytes(4, "big"))
        try:
            async for msg in ws:
                got.append(msg if isinstance(msg, bytes) else msg.encode())
        except websockets.ConnectionClosed:
            pass

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield server, got


def port_of(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


def expected_delivery(n: int, records: list[FaultRecord], direction: str) -> list[int]:
    """What the far side must receive for messages 0..n-1, given the proxy's fault log."""
    faults = {r.message: r.fault for r in records if r.direction == direction and r.conn == 0}
    out: list[int] = []
    held: int | None = None
    for i in range(n):
        fault = faults.get(i)
        if fault is Fault.DROP:
            continue
        if fault is Fault.REORDER:
            held = i
            continue
        out.append(i)
        if held is not None:
            out.append(held)
            held = None
        if fault is Fault.DUPLICATE:
            out.append(i)
    if held is not None:
        out.append(held)
    return out


MIXED = FaultRates(delay=0.1, drop=0.1, duplicate=0.1, reorder=0.1, delay_max_s=0.005)


async def run_upward(seed: int, rates: FaultRates, n: int = 150) -> tuple[list[FaultRecord], list[int]]:
    async with recording_server() as (server, got):
        async with FaultProxy(("127.0.0.1", port_of(server)), seed=seed, rates=rates) as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws:
                for i in range(n):
                    await ws.send(i.to_bytes(4, "big"))
                await eventually(lambda: proxy.counters["messages_up"] == n)
                expected = n - proxy.counters["drop"] + proxy.counters["duplicate"]
                await eventually(lambda: len(got) >= expected)
                await asyncio.sleep(0.1)  # nothing more arrives
            return list(proxy.log), [int.from_bytes(m, "big") for m in got]


async def test_same_seed_same_faults_and_each_fault_changes_what_arrives() -> None:
    log_a, got_a = await run_upward(11, MIXED)
    log_b, got_b = await run_upward(11, MIXED)
    log_c, _ = await run_upward(12, MIXED)
    assert log_a == log_b and got_a == got_b  # replay: same faults, same bytes delivered
    assert log_a != log_c
    kinds = {r.fault for r in log_a}
    assert kinds == {Fault.DELAY, Fault.DROP, Fault.DUPLICATE, Fault.REORDER}
    assert got_a == expected_delivery(150, log_a, "up")  # exactly what the log says happened
    assert got_a != list(range(150))


async def test_faults_apply_to_the_relay_to_client_direction_too() -> None:
    rates = FaultRates(drop=0.2, duplicate=0.2)
    async with recording_server(send_down=100) as (server, _got):
        async with FaultProxy(("127.0.0.1", port_of(server)), seed=3, rates=rates) as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws:
                received: list[int] = []
                with pytest.raises(TimeoutError):
                    while True:
                        msg = await asyncio.wait_for(ws.recv(), 0.5)
                        assert isinstance(msg, bytes)
                        received.append(int.from_bytes(msg, "big"))
            assert received == expected_delivery(100, proxy.log, "down")
            assert proxy.counters["drop"] > 0 and proxy.counters["duplicate"] > 0
            assert proxy.counters["messages_down"] == 100


async def test_delay_holds_messages_back_by_the_drawn_amounts() -> None:
    seed, n = 5, 20
    rates = FaultRates(delay=1.0, delay_max_s=0.1)
    rng = random.Random(f"{seed}/0/up")
    owed = 0.0
    for _ in range(n):
        rng.random()
        owed += rng.random() * rates.delay_max_s
    async with recording_server() as (server, got):
        async with FaultProxy(("127.0.0.1", port_of(server)), seed=seed, rates=rates) as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws:
                started = time.monotonic()
                for i in range(n):
                    await ws.send(i.to_bytes(4, "big"))
                await eventually(lambda: len(got) == n)
                elapsed = time.monotonic() - started
    assert proxy.counters["delay"] == n
    assert elapsed >= owed * 0.95 and owed > 0.5
    assert [int.from_bytes(m, "big") for m in got] == list(range(n))  # delay keeps the order


@pytest.mark.parametrize("kind", [Fault.CUT, Fault.TRUNCATE])
async def test_cut_and_truncate_abort_the_connection_without_a_close_frame(kind: Fault) -> None:
    rates = FaultRates(**{kind.value: 1.0})
    async with recording_server() as (server, got):
        async with FaultProxy(("127.0.0.1", port_of(server)), seed=1, rates=rates) as proxy:
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws:
                await ws.send(b"lost")
                with pytest.raises(websockets.ConnectionClosedError) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is None  # aborted: no close frame came back
            assert proxy.counters[kind.value] == 1
            await eventually(lambda: proxy.open_connections == 0)
    assert got == []  # neither a whole nor a partial message was delivered


async def test_cut_all_partitions_and_the_upstream_can_move() -> None:
    async with recording_server() as (first, got_first), recording_server() as (second, got_second):
        async with FaultProxy(("127.0.0.1", port_of(first)), seed=1) as proxy:
            ws = await connect(f"ws://127.0.0.1:{proxy.port}/", compression=None)
            await ws.send(b"one")
            await eventually(lambda: got_first == [b"one"])
            assert proxy.cut_all() == 1
            with pytest.raises(websockets.ConnectionClosedError):
                await asyncio.wait_for(ws.recv(), 5)
            proxy.set_upstream("127.0.0.1", port_of(second))  # the relay came back elsewhere
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws2:
                await ws2.send(b"two")
                await eventually(lambda: got_second == [b"two"])
            assert proxy.counters["connections"] == 2 and proxy.counters["cut_all"] == 1


async def test_plain_http_passes_and_a_dead_upstream_is_a_refused_connection() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    try:
        async with FaultProxy(("127.0.0.1", port), seed=1, rates=FaultRates(cut=1.0)) as proxy:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{proxy.url}/healthz")
                assert (r.status_code, r.text) == (200, "ok")  # HTTP is not framed: no faults
                server.close()
                await server.wait_closed()
                with pytest.raises(httpx.HTTPError):
                    await client.get(f"{proxy.url}/healthz", headers={"Connection": "close"})
            assert proxy.counters["upstream_refused"] == 1
    finally:
        server.close()


def test_rates_that_sum_past_one_are_refused() -> None:
    with pytest.raises(ValueError):
        FaultRates(drop=0.6, cut=0.6)


async def test_a_rule_drops_exactly_the_matching_message_and_keeps_the_seeded_sequence() -> None:
    import msgpack

    async with recording_server() as (server, got):
        async with FaultProxy(("127.0.0.1", port_of(server)), seed=9) as proxy:
            proxy.add_rule("up", Fault.DROP, lambda m: isinstance(m, dict) and m.get("n") == 3)
            async with connect(f"ws://127.0.0.1:{proxy.port}/", compression=None) as ws:
                for n in (1, 3, 3, 5):
                    await ws.send(msgpack.packb({"n": n}))
                await eventually(lambda: len(got) == 3)
    assert [msgpack.unpackb(m)["n"] for m in got] == [1, 3, 5]  # only the first match, once
    assert proxy.log == [FaultRecord(0, "up", 1, Fault.DROP)]
