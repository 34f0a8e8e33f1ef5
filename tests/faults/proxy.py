"""A seeded fault-injecting proxy on loopback, between sync clients and the relay.

Why a proxy and not hooks in the code: faults injected inside the client or the relay only test
what their authors thought could go wrong. A proxy sits where the network does, sees the same
bytes, and the code under test cannot tell it from a bad network or a bad middlebox.

What it understands: the HTTP upgrade (so plain HTTP, e.g. login and token refresh, passes through
untouched) and, after ``101 Switching Protocols``, websocket *frames* in both directions (RFC 6455
section 5.2: client-to-relay frames are masked; the proxy forwards them byte for byte, mask
included, and unmasks only to let tests look inside). Faults apply to whole data messages
(unfragmented text/binary frames: every protocol message is one binary message); control frames
(ping, pong, close) always pass, in order.

What each fault models (each is drawn per data message, per direction, from the rates):

``delay``      the message waits up to ``delay_max_s`` before it and everything behind it in that
               direction moves on: latency spikes and bufferbloat. Order is kept, as TCP keeps it.
``drop``       the whole message vanishes and the connection stays up. TCP never does this; a
               buggy middlebox, a proxy that mishandles a frame, or a relay/client bug that loses
               a message does. The protocol's sequence numbers, acks and timeouts must notice.
``duplicate``  the message is delivered twice: a middlebox replaying, or an attacker replaying a
               captured message. Re-applying an update must be harmless; a duplicated ack or
               sequence number must not confuse the receiver into losing anything.
``reorder``    the message is held and sent after the next one in the same direction (or alone
               after ``reorder_hold_s`` if nothing follows): a middlebox that reorders, or two
               paths. Sequence numbers arrive out of order.
``cut``        the connection is aborted (both sockets, no close frame) before this message:
               a Wi-Fi drop, a NAT timeout, a relay host vanishing. The message in flight is lost.
``truncate``   half of this message's bytes go out, then the connection is aborted: the
               connection dies in the middle of a frame. The receiver must not act on a partial
               message.

Seeded replay: each connection gets its own ``random.Random`` per direction, seeded from
(seed, connection number, direction), and every data message draws the same number of values
whatever the rates. So the same traffic on the same connection meets the same faults; a failure
found with seed S replays with seed S. :attr:`FaultProxy.log` records every fault injected.

``permessage-deflate`` is removed from the upgrade request by default: with its shared
compression context, a dropped, duplicated or reordered message corrupts every message after it,
so every fault would degrade into "the receiver fails to inflate" and test nothing else.

Targeted faults (:meth:`FaultProxy.add_rule`): a fault for the next data message(s) whose decoded
msgpack payload matches a predicate, e.g. "drop the first ``upd`` the client sends". Rules fire
before the random draw (which is still made, so the seeded sequence does not shift); regression
tests use them to replay exactly the fault a chaos run found.

The upstream address can change at runtime (:meth:`FaultProxy.set_upstream`): a relay restarted
on a new port stays reachable at the proxy's stable address, as behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import msgpack

__all__ = ["Fault", "FaultProxy", "FaultRates", "FaultRecord", "Frame", "read_frame"]

log = logging.getLogger(__name__)

_DATA_OPCODES = (0x1, 0x2)


class Fault(StrEnum):
    DELAY = "delay"
    DROP = "drop"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    CUT = "cut"
    TRUNCATE = "truncate"


#: The order in which one uniform draw is mapped onto the rates (stable, so replay is stable).
_DRAW_ORDER = (Fault.CUT, Fault.TRUNCATE, Fault.DROP, Fault.DUPLICATE, Fault.REORDER, Fault.DELAY)


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per data message and direction (their sum must stay ≤ 1)."""

    delay: float = 0.0
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    cut: float = 0.0
    truncate: float = 0.0
    delay_max_s: float = 0.05

    def __post_init__(self) -> None:
        total = sum(self.rate(f) for f in Fault)
        if any(self.rate(f) < 0 for f in Fault) or total > 1.0:
            raise ValueError(f"fault rates must be ≥ 0 and sum to ≤ 1 (sum {total})")

    def rate(self, fault: Fault) -> float:
        value: float = getattr(self, fault.value)
        return value

    def pick(self, draw: float) -> Fault | None:
        edge = 0.0
        for fault in _DRAW_ORDER:
            edge += self.rate(fault)
            if draw < edge:
                return fault
        return None


@dataclass(frozen=True)
class FaultRecord:
    conn: int
    direction: str
    """``up`` (client to relay) or ``down`` (relay to client)."""
    message: int
    """0-based index of the data message in that direction of that connection."""
    fault: Fault


@dataclass(frozen=True)
class Frame:
    """One websocket frame as it was on the wire (``raw``), with its header decoded."""

    raw: bytes
    fin: bool
    opcode: int
    mask: bytes | None
    payload_offset: int

    @property
    def is_data_message(self) -> bool:
        return self.fin and self.opcode in _DATA_OPCODES

    def payload(self) -> bytes:
        """The payload, unmasked."""
        body = self.raw[self.payload_offset :]
        if self.mask is None:
            return body
        m = self.mask
        return bytes(b ^ m[i % 4] for i, b in enumerate(body))


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame (raises ``asyncio.IncompleteReadError`` at EOF)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    ext = b""
    if length == 126:
        ext = await reader.readexactly(2)
        length = int.from_bytes(ext, "big")
    elif length == 127:
        ext = await reader.readexactly(8)
        length = int.from_bytes(ext, "big")
    mask = await reader.readexactly(4) if head[1] & 0x80 else None
    body = await reader.readexactly(length)
    prefix = head + ext + (mask or b"")
    return Frame(
        raw=prefix + body, fin=bool(head[0] & 0x80), opcode=head[0] & 0x0F, mask=mask,
        payload_offset=len(prefix),
    )  # fmt: skip


def _strip_extensions(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [ln for ln in lines if not ln.lower().startswith(b"sec-websocket-extensions:")]
    return b"\r\n".join(kept)


def _is_upgrade(head: bytes) -> bool:
    lowered = head.lower()
    return b"\r\nupgrade: websocket" in lowered


@dataclass
class Rule:
    """Inject ``fault`` into the next ``times`` data messages going ``direction`` that ``match``."""

    direction: str
    fault: Fault
    match: Callable[[Any], bool]
    times: int = 1


def decode(frame: Frame) -> Any:
    """The frame's payload as msgpack (None if it is not msgpack)."""
    try:
        return msgpack.unpackb(frame.payload(), raw=False)
    except Exception:
        return None


class _Cut(Exception):
    """This connection is being aborted on purpose."""


@dataclass
class _Connection:
    no: int
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter]
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for pair in (self.client, self.upstream):
            if pair is not None:
                pair[1].transport.abort()


class FaultProxy:
    """Listens on loopback and forwards each connection to the current upstream, injecting faults.

    Use ``async with FaultProxy(...)`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        seed: int,
        rates: FaultRates | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        strip_extensions: bool = True,
        reorder_hold_s: float = 0.05,
        refuse_upgrades: int | None = None,
    ) -> None:
        self.upstream = upstream
        self.seed = seed
        self.rates = rates or FaultRates()
        self.host = host
        self.port = port
        self.strip_extensions = strip_extensions
        self.reorder_hold_s = reorder_hold_s
        #: Answer every websocket upgrade with this HTTP status instead of forwarding it, as a
        #: corporate proxy that blocks websockets does (plain HTTP still passes); counted in
        #: ``upgrades_refused``.
        self.refuse_upgrades = refuse_upgrades
        self.counters: Counter[str] = Counter()
        """Faults injected by kind, plus ``connections``, ``upstream_refused``, ``messages_up`` /
        ``messages_down`` (data messages seen) and ``cut_all`` (connections cut from outside)."""
        self.log: list[FaultRecord] = []
        self.rules: list[Rule] = []
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _Connection] = {}
        self._next_conn = 0

    # --- control ----------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            conn.abort()
        tasks = [t for c in list(self._conns.values()) for t in c.tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_upstream(self, host: str, port: int) -> None:
        """New connections go there; open ones stay where they are (cut them to move them)."""
        self.upstream = (host, port)

    def set_rates(self, rates: FaultRates | None = None, **changes: float) -> None:
        self.rates = replace(rates or self.rates, **changes)

    def faults_off(self) -> None:
        """No random faults from now on (rules already added still fire)."""
        self.rates = FaultRates()

    def add_rule(self, direction: str, fault: Fault, match: Callable[[Any], bool], times: int = 1) -> Rule:
        rule = Rule(direction, fault, match, times)
        self.rules.append(rule)
        return rule

    def _ruled(self, direction: str, frame: Frame) -> Fault | None:
        for rule in self.rules:
            if rule.direction == direction and rule.times > 0:
                message = decode(frame)
                if message is not None and rule.match(message):
                    rule.times -= 1
                    return rule.fault
        return None

    def cut_all(self) -> int:
        """Abort every open connection now (a network partition); returns how many."""
        conns = list(self._conns.values())
        for conn in conns:
            conn.abort()
        self.counters["cut_all"] += len(conns)
        return len(conns)

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def fault_counts(self) -> dict[str, int]:
        return {f.value: self.counters[f.value] for f in Fault}

    # --- one connection ---------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        no = self._next_conn
        self._next_conn += 1
        conn = _Connection(no, (reader, writer))
        self._conns[no] = conn
        self.counters["connections"] += 1
        try:
            await self._run(conn)
        except (ConnectionError, asyncio.IncompleteReadError, _Cut, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            conn.abort()
            self._conns.pop(no, None)

    async def _run(self, conn: _Connection) -> None:
        c_reader, c_writer = conn.client
        host, port = self.upstream
        try:
            u_reader, u_writer = await asyncio.open_connection(host, port)
        except OSError:
            self.counters["upstream_refused"] += 1
            return
        conn.upstream = (u_reader, u_writer)
        request = await c_reader.readuntil(b"\r\n\r\n")
        upgrade = _is_upgrade(request)
        if upgrade and self.refuse_upgrades is not None:
            self.counters["upgrades_refused"] += 1
            body = b"websockets are not allowed here\n"
            c_writer.write(
                f"HTTP/1.1 {self.refuse_upgrades} Blocked\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await c_writer.drain()
            return
        if upgrade and self.strip_extensions:
            request = _strip_extensions(request)
        u_writer.write(request)
        await u_writer.drain()
        if not upgrade:
            await self._pipe_raw(conn)
            return
        response = await u_reader.readuntil(b"\r\n\r\n")
        c_writer.write(response)
        await c_writer.drain()
        if not response.startswith(b"HTTP/1.1 101"):
            await self._pipe_raw(conn)
            return
        up = asyncio.ensure_future(self._pump_frames(conn, c_reader, u_writer, "up"))
        down = asyncio.ensure_future(self._pump_frames(conn, u_reader, c_writer, "down"))
        conn.tasks += [up, down]
        await self._first_end(up, down)

    async def _first_end(self, *tasks: asyncio.Future[None]) -> None:
        """When one direction ends, the connection ends (as a TCP proxy that saw EOF or RST)."""
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def _pipe_raw(self, conn: _Connection) -> None:
        assert conn.upstream is not None

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        a = asyncio.ensure_future(copy(conn.client[0], conn.upstream[1]))
        b = asyncio.ensure_future(copy(conn.upstream[0], conn.client[1]))
        conn.tasks += [a, b]
        with contextlib.suppress(Exception):
            await asyncio.gather(a, b)

    async def _pump_frames(
        self, conn: _Connection, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str
    ) -> None:
        rng = random.Random(f"{self.seed}/{conn.no}/{direction}")
        index = 0
        held: Frame | None = None

        async def send(frame: Frame) -> None:
            dst.write(frame.raw)
            await dst.drain()

        nxt: asyncio.Future[Frame] | None = None
        try:
            while True:
                nxt = asyncio.ensure_future(read_frame(src))
                if held is not None:
                    done, _ = await asyncio.wait({nxt}, timeout=self.reorder_hold_s)
                    if not done:  # nothing to swap with: it goes out late, alone
                        await send(held)
                        held = None
                frame = await nxt
                if not frame.is_data_message:
                    if held is not None:
                        await send(held)
                        held = None
                    await send(frame)
                    continue
                self.counters[f"messages_{direction}"] += 1
                draw, param = rng.random(), rng.random()
                fault = self._ruled(direction, frame) or self.rates.pick(draw)
                message = index
                index += 1
                if fault is Fault.REORDER and held is not None:
                    fault = None  # one held message at a time: this one is the swap partner
                if fault is not None:
                    self._record(conn.no, direction, message, fault)
                if fault is Fault.CUT:
                    raise _Cut()
                if fault is Fault.TRUNCATE:
                    dst.write(frame.raw[: max(1, len(frame.raw) // 2)])
                    await dst.drain()
                    raise _Cut()
                if fault is Fault.DROP:
                    continue
                if fault is Fault.REORDER:
                    held = frame
                    continue
                if fault is Fault.DELAY:
                    await asyncio.sleep(param * self.rates.delay_max_s)
                await send(frame)
                if held is not None:
                    await send(held)
                    held = None
                if fault is Fault.DUPLICATE:
                    await send(frame)
        except _Cut:
            conn.abort()
        finally:
            if nxt is not None:  # a read still pending when the connection ends: cancel and reap it
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt

    def _record(self, conn: int, direction: str, message: int, fault: Fault) -> None:
        self.counters[fault.value] += 1
        self.log.append(FaultRecord(conn, direction, message, fault))
        log.debug("fault %s conn=%d dir=%s msg=%d", fault.value, conn, direction, message)
