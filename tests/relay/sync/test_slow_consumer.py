"""A consumer that stops reading, against a real relay process (docs/protocol.md, section 7: 1013).

Each connection has a bounded send queue; a consumer that falls behind is disconnected
with "try again later" (1013), catches up by state vector when it returns, and never grows the
relay's memory without bound.

Why raw sockets for the slow side: a websockets client keeps reading into its own buffers, so it
is never slow. :class:`StalledClient` speaks websocket through the sans-I/O ``websockets`` protocol
over a plain socket and reads only when told to. Its receive buffer is small and its MSS is 1 KiB
(``TCP_MAXSEG``): on loopback the MSS is 64 KiB, and Linux sizes the relay's kernel send buffer
in segments, so it took 2.7 MB (measured) before the relay itself saw any backpressure; with 1 KiB
segments the cut-off comes after about 220 KB.

The relay runs with ``--send-queue-bytes 64 KiB``. Per stalled connection it can hold at most:
the socket write buffer (uvicorn writes while it is under asyncio's 64 KiB high-water mark, so at
most 64 KiB plus one write of at most the budget, or one larger message), the batch the writer
task waits to send (at most the budget) and the queue (at most the budget): about four times the
budget. The memory tests below allow ``RSS_NOISE`` on top of that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from websockets.client import ClientProtocol as WsClient
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from crdt_core.authoring import new_id
from crdt_core.engine import Replica
from crdt_core.messages import (
    CloseCode,
    Message,
    RelayUpdate,
    Stamp,
    Stamped,
    Subscribe,
    Sync,
    Welcome,
    decode,
)
from crdt_core.pop import SYNC
from crdt_core.protocol import Acked, DocSynced, ErrorReceived, StampReceived, UpdateReceived
from crdt_core.schema import Reservation
from relay.sync.connection import CLOSE_GRACE_S
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, rss_bytes
from tests.support.sync_helpers import Account, SyncClient, new_account, token_headers

DAY = (dt.date.today() + dt.timedelta(days=3)).isoformat()

#: ``--send-queue-bytes`` of the relay under test.
QUEUE_BYTES = 64 * 1024
#: What one stalled connection may hold (module docstring): queue, writer batch, socket buffer.
PER_CONNECTION = 4 * QUEUE_BYTES
#: Allocator and interpreter noise allowed on top, when the documents do not grow.
RSS_NOISE = 8 * 1024 * 1024
#: A growing document costs the relay about 7 times its encoded size in VmRSS (measured here:
#: + 6.3 to 7.4 MiB for 966 KiB), allowed on top where it grows.
DOC_COST = 8
#: The stalled clients' receive buffer (Linux doubles it) and segment size.
RCVBUF = 4096
MSS = 1024
#: Bookings per update, each with the schema's longest note: about 13 KB per update.
PER_UPDATE = 16
NOTE = "n" * 500
#: Every booking takes a slot of its own: one customer holds one active booking of a slot a day.
SLOT_NUMBERS = itertools.count()

SLOW = "quickslot_slow_consumers_total"
CONNECTIONS = "quickslot_connections"


def metric(http: httpx.Client, name: str) -> float:
    """One unlabelled sample from ``/metrics``."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


class StalledClient:
    """A websocket subscriber (header auth) that reads its socket only inside :meth:`read_until`."""

    def __init__(self, sock: socket.socket, ws: WsClient) -> None:
        self.sock = sock
        self.ws = ws
        self.replica = Replica()
        self.close_code: int | None = None
        self.close_reason = ""
        #: The stream ended without a close frame (EOF or reset): what a dropped transport gives.
        self.dropped = False
        self.received = 0

    @classmethod
    async def connect(cls, relay: RelayProcess, token: str) -> StalledClient:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect: they set the advertised window and MSS (module docstring).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (relay.host, relay.port))
            ws = WsClient(parse_uri(f"ws://{relay.host}:{relay.port}/api/v1/sync"), max_size=None)
            request = ws.connect()
            for name, value in token_headers(token, SYNC).items():  # with the proof of possession
                request.headers[name] = value
            ws.send_request(request)
            client = cls(sock, ws)
            await client.send_pending()
            await client.read_until(lambda m: isinstance(m, Welcome))
        except BaseException:
            sock.close()
            raise
        return client

    async def send_pending(self) -> None:
        loop = asyncio.get_running_loop()
        for chunk in self.ws.data_to_send():
            if chunk:
                await loop.sock_sendall(self.sock, chunk)

    async def send(self, message: Message) -> None:
        self.ws.send_binary(message.to_wire())
        await self.send_pending()

    async def subscribe(self, doc: str) -> None:
        await self.send(Subscribe(doc, self.replica.state_vector()))
        await self.read_until(lambda m: isinstance(m, Sync))

    async def read_until(
        self, done: Callable[[Message], bool] | None, timeout: float = 10.0, pong: bytes | None = None
    ) -> None:
        """Read and apply messages until ``done(message)``, a pong carrying ``pong``, the close
        frame or the end of the stream."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            for event in self.ws.events_received():
                if not isinstance(event, Frame):
                    continue  # the handshake's response
                if event.opcode is Opcode.CLOSE:
                    rcvd = self.ws.close_rcvd
                    self.close_code = rcvd.code if rcvd else None
                    self.close_reason = rcvd.reason if rcvd else ""
                    return
                if event.opcode is Opcode.PONG and pong is not None and bytes(event.data) == pong:
                    return
                if event.opcode is Opcode.BINARY:
                    message = decode(bytes(event.data))
                    self._apply(message)
                    if done is not None and done(message):
                        return
            if self.dropped:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the relay neither answered nor closed in time")
            try:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), remaining)
            except ConnectionError:
                chunk = b""
            self.received += len(chunk)
            if chunk:
                self.ws.receive_data(chunk)
            else:
                self.dropped = True
                self.ws.receive_eof()

    def _apply(self, message: Message) -> None:
        if isinstance(message, (Sync, RelayUpdate, Stamp)):
            self.replica.apply_update(message.update)
        elif isinstance(message, Stamped):
            if message.update is not None:
                self.replica.apply_update(message.update)
            self.replica.apply_update(message.stamp)

    async def resume(self, timeout: float = 10.0) -> None:
        """Read everything the relay still sends, up to its close frame or the end of the stream."""
        await self.read_until(None, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    flags = ["--send-queue-bytes", str(QUEUE_BYTES), "--sync-rate", "100000", "--sync-burst", "100000"]
    with RelayProcess(tmp_path / "data", *GENEROUS_LIMITS, *flags) as proc:
        yield proc


@pytest.fixture
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


@contextlib.asynccontextmanager
async def stalled(relay: RelayProcess, account: Account) -> AsyncIterator[StalledClient]:
    client = await StalledClient.connect(relay, account.access)
    try:
        yield client
    finally:
        client.close()


async def write_round(writer: SyncClient, account: Account, replica: Replica, doc: str, n: int) -> int:
    """Send ``n`` bookings pipelined and wait until every one is acknowledged and its stamps
    are applied to ``replica``. Returns the highest seq the relay stored for them."""
    uids = set()
    for _ in range(n):
        records = [
            (
                Reservation(
                    id=new_id(),
                    slot=f"s{next(SLOT_NUMBERS)}",
                    party=1,
                    customer=account.user_id,
                    hlc=account.author.hlc(),
                    note=NOTE,
                ),
                None,
            )
            for _ in range(PER_UPDATE)
        ]
        writer._uid += 1
        uids.add(writer._uid)
        writer.proto.send_update(doc, writer._uid, account.author.put(replica, doc, records))
    await writer.flush()
    top = 0
    unstamped: set[int] = set()
    while uids or unstamped:
        event = await asyncio.wait_for(writer.events.get(), 10)
        assert not isinstance(event, ErrorReceived), event
        if isinstance(event, Acked):
            uids.discard(event.uid)
            unstamped.add(event.seq + 1)  # the relay's stamps for it are stored right after it
        elif isinstance(event, (StampReceived, UpdateReceived)):
            replica.apply_update(event.update)
            unstamped.discard(event.seq)
            top = max(top, event.seq)
    return top


async def follow(reader: SyncClient, replica: Replica, seq: int) -> None:
    """Apply the reader's live stream until it has reached ``seq`` (it keeps up with the writer)."""
    seen = 0
    deadline = time.monotonic() + 10
    while seen < seq:
        if reader.events.empty() and reader.closed.done():
            raise AssertionError(f"the normal subscriber was closed: {reader.closed.result()}")
        assert time.monotonic() < deadline, f"the normal subscriber is at {seen}, not {seq}"
        try:
            event = await asyncio.wait_for(reader.events.get(), 0.2)
        except TimeoutError:
            continue
        assert not isinstance(event, ErrorReceived), event
        if isinstance(event, (UpdateReceived, StampReceived)):
            replica.apply_update(event.update)
            seen = max(seen, event.seq)


async def wait_for_metric(
    http: httpx.Client, name: str, done: Callable[[float], bool], timeout: float
) -> float:
    deadline = time.monotonic() + timeout
    while True:
        value = metric(http, name)
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_a_stalled_subscriber_is_cut_off_with_1013_and_catches_up_by_state_vector(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """The slow one is closed with 1013 while the writer and a normal subscriber go on, and the
    relay's memory stays within the bound; back, it catches up by state vector."""
    assert relay.proc is not None
    pid = relay.proc.pid
    doc = f"bookings:slow1:{DAY}"
    writer_acc, reader_acc, slow_acc = (new_account(relay, http) for _ in range(3))
    writer = await SyncClient.connect(relay, writer_acc.access)
    reader = await SyncClient.connect(relay, reader_acc.access)
    try:
        rw, rr = Replica(writer_acc.author.client_id()), Replica()
        assert isinstance(await writer.subscribe(doc, rw), DocSynced)
        assert isinstance(await reader.subscribe(doc, rr), DocSynced)
        async with stalled(relay, slow_acc) as slow:
            await slow.subscribe(doc)
            cut_before = metric(http, SLOW)
            base = peak = rss_bytes(pid)
            stored = 0
            rounds_after_cut = 0
            for _ in range(40):
                seq = await write_round(writer, writer_acc, rw, doc, 10)  # every update acked
                await follow(reader, rr, seq)  # the normal subscriber keeps up throughout
                stored = len(rw.encode_state())
                peak = max(peak, rss_bytes(pid))
                if metric(http, SLOW) > cut_before:
                    rounds_after_cut += 1
                    if rounds_after_cut == 5:  # the others go on after the cut-off too
                        break
            assert rounds_after_cut == 5, "the stalled subscriber was never cut off"
            assert metric(http, SLOW) == cut_before + 1  # only the stalled one
            assert not reader.closed.done() and not writer.closed.done()
            print(f"cut off; RSS +{(peak - base) >> 10} KiB at peak, document {stored >> 10} KiB")
            # The document grew to ``stored`` bytes; the stalled one's buffers stay within the
            # bound. (Not what tells the cut-off apart here: without it the relay would hold about
            # ``stored`` more, within DOC_COST's margin. The 1013 does; and the memory test below,
            # where the document does not grow.)
            assert peak - base < PER_CONNECTION + RSS_NOISE + DOC_COST * stored, (peak - base, stored)

            # Reading again, it gets what was queued before the cut-off, then the 1013.
            await slow.resume()
            assert (slow.close_code, slow.dropped) == (CloseCode.TRY_AGAIN_LATER, False)
            assert slow.close_reason.startswith("slow consumer")
            assert slow.received < stored  # it did miss the end of the stream
            behind = slow.replica
        assert rr.state_vector() == rw.state_vector() and rr.to_py() == rw.to_py()

        # It reconnects and catches up by its state vector: only the difference is sent.
        back = await SyncClient.connect(relay, slow_acc.access)
        try:
            sync = await back.subscribe(doc, behind)
            assert isinstance(sync, DocSynced)
            # (A sync answer larger than the whole send budget: it goes, the socket takes it.)
            assert QUEUE_BYTES < len(sync.update) < stored
            assert behind.state_vector() == rw.state_vector() and behind.to_py() == rw.to_py()
        finally:
            await back.close()
        assert await wait_for_metric(http, CONNECTIONS, lambda v: v == 2, 5) == 2
    finally:
        await writer.close()
        await reader.close()


async def test_a_subscriber_that_never_reads_again_is_dropped(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """Its close frame waits behind bytes it never takes: without a deadline the relay held the
    socket, its buffers and its connection slot for ever (70 s measured, then uvicorn's keepalive
    wrote 1011 behind them and waited on). It is dropped ``CLOSE_GRACE_S`` after the cut-off."""
    doc = f"bookings:slow2:{DAY}"
    writer_acc, slow_acc = new_account(relay, http), new_account(relay, http)
    writer = await SyncClient.connect(relay, writer_acc.access)
    try:
        rw = Replica(writer_acc.author.client_id())
        await writer.subscribe(doc, rw)
        async with stalled(relay, slow_acc) as slow:
            await slow.subscribe(doc)
            assert metric(http, CONNECTIONS) == 2
            cut_before = metric(http, SLOW)
            for _ in range(40):
                await write_round(writer, writer_acc, rw, doc, 10)
                if metric(http, SLOW) > cut_before:
                    break
            cut_at = time.monotonic()
            assert metric(http, SLOW) == cut_before + 1
            # Still connected while the grace runs (it may yet read and get its 1013)...
            assert metric(http, CONNECTIONS) == 2
            # ...then the relay drops it and frees the slot.
            left = await wait_for_metric(http, CONNECTIONS, lambda v: v == 1, CLOSE_GRACE_S + 5)
            assert left == 1
            assert time.monotonic() - cut_at >= CLOSE_GRACE_S - 1
            await slow.resume()
            assert slow.dropped and slow.close_code is None  # a dropped transport: 1006, reconnect
        assert not writer.closed.done()
    finally:
        await writer.close()


async def test_a_client_that_asks_without_reading_is_cut_off_with_bounded_memory(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """A client that stops reading and keeps re-subscribing (each answer a whole document, the
    document itself not growing) is cut off; without the cut-off the relay would hold every
    answer: 200 x 130 KB = 26 MB here."""
    assert relay.proc is not None
    pid = relay.proc.pid
    doc = f"bookings:slow3:{DAY}"
    writer_acc, slow_acc = new_account(relay, http), new_account(relay, http)
    writer = await SyncClient.connect(relay, writer_acc.access)
    try:
        rw = Replica(writer_acc.author.client_id())
        await writer.subscribe(doc, rw)
        await write_round(writer, writer_acc, rw, doc, 10)
        answer = len(rw.encode_state())
        assert answer > 2 * QUEUE_BYTES
        async with stalled(relay, slow_acc) as slow:
            await slow.subscribe(doc)
            cut_before = metric(http, SLOW)
            base = rss_bytes(pid)
            empty = Subscribe(doc, Replica().state_vector())
            for _ in range(200):
                await slow.send(empty)
            cut = await wait_for_metric(http, SLOW, lambda v: v > cut_before, 5)
            grown = rss_bytes(pid) - base
            print(f"200 subs of a {answer >> 10} KiB document unread: RSS +{grown >> 10} KiB")
            assert grown < PER_CONNECTION + answer + RSS_NOISE, grown
            assert cut == cut_before + 1
            await slow.resume()
            assert slow.close_code == CloseCode.TRY_AGAIN_LATER
    finally:
        await writer.close()


async def test_pings_from_a_client_that_does_not_read_do_not_grow_the_relay(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """uvicorn wrote a pong for every ping straight into the socket buffer: a client that sent
    pings and read nothing grew the relay by what it sent (60 MiB in 4 s). Now pongs wait while
    the buffer is full, the latest only (``relay.http.ws_protocol``)."""
    assert relay.proc is not None
    pid = relay.proc.pid
    account = new_account(relay, http)
    async with stalled(relay, account) as slow:
        base = rss_bytes(pid)
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < 24 * 1024 * 1024:
            for _ in range(500):
                slow.ws.send_ping(b"p" * 125)
            chunk = b"".join(slow.ws.data_to_send())
            await asyncio.wait_for(loop.sock_sendall(slow.sock, chunk), 10)
            sent += len(chunk)
        slow.ws.send_ping(b"last")
        await loop.sock_sendall(slow.sock, b"".join(slow.ws.data_to_send()))
        await asyncio.sleep(0.5)  # the relay reads what is still in its receive buffer
        grown = rss_bytes(pid) - base
        print(f"{sent >> 20} MiB of pings unread: RSS +{grown >> 10} KiB")
        assert grown < RSS_NOISE, f"relay grew {grown >> 20} MiB for {sent >> 20} MiB of pings"
        assert await asyncio.to_thread(lambda: httpx.get(f"{relay.base_url}/healthz").status_code) == 200
        # Reading again, the client gets the pong of its latest ping: held, not lost.
        await slow.read_until(None, pong=b"last")
        assert slow.close_code is None and not slow.dropped
