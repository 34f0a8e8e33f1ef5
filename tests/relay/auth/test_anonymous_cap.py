"""The per-address cap on sync websockets that have not authenticated (``relay.auth.anonymous_slots``).

Against a real relay process on a free loopback port, with real sockets from several source
addresses (any of 127.0.0.0/8 works on Linux) or, behind a trusted "proxy", several
``X-Forwarded-For`` addresses:

* past the cap, one address's next unauthenticated socket is closed at once with 1013 and the
  documented reason, and counted in ``/metrics``; other addresses are not affected;
* a client of that same address that brings its token in the ``Authorization`` header is not
  counted and connects; a client that authenticates with its first message is counted until then;
* every way an unauthenticated socket ends (deadline, bad token, protocol violation, dropped TCP,
  the client's close, authenticating) gives its slot back: after rounds of them the count is zero
  and the address can fill its cap again;
* behind a proxy trusted with ``--forwarded-allow-ips`` the cap counts the forwarded clients (IPv6
  per /64), not the proxy; and without the flag the cap derives from ``--max-connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from crdt_core.engine import Replica
from crdt_core.messages import CloseCode
from crdt_core.pop import auth_proof
from crdt_core.protocol import ClientProtocol, DocSynced, Welcomed
from relay.auth.anonymous_slots import AnonymousSlots, address_key
from relay.ops.config import SyncLimits
from relay.sync.hub import ANONYMOUS_CAP_REASON
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.sync_helpers import DEVICE_KEYS, SyncClient, new_account

DOC = "bookings:anoncap:2030-01-07"
REFUSED = 'quickslot_sync_refused_total{reason="anonymous_per_address"}'
HELD = "quickslot_anonymous_connections"


@pytest.fixture
def relays() -> Iterator[list[RelayProcess]]:
    """Relays a test started; stopped (killed if they do not stop) even when the test fails."""
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.stop()


def _start(relays: list[RelayProcess], data: Path, *flags: str) -> RelayProcess:
    relay = RelayProcess(data, *GENEROUS_LIMITS, *flags)
    relays.append(relay)
    return relay.start()


def metric(http: httpx.Client, name: str) -> float:
    """One sample of ``/metrics`` (0 when the series has not been written yet)."""
    text = http.get("/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def wait_metric(http: httpx.Client, name: str, value: float, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := metric(http, name)) != value:
        assert time.monotonic() < deadline, f"{name} is {seen}, expected {value}"
        await asyncio.sleep(0.05)


async def silent(relay: RelayProcess, address: str, n: int) -> list[SyncClient]:
    """``n`` sockets from ``address`` that never authenticate."""
    return [await SyncClient.connect(relay, None, local_address=address) for _ in range(n)]


async def browser(relay: RelayProcess, token: str, address: str) -> SyncClient:
    """A client that authenticates with its first message (browsers cannot set headers). A
    refused one may see the close before its ``auth`` is written; that is not an error here."""
    client = await SyncClient.connect(relay, None, local_address=address)
    proof = auth_proof(token, DEVICE_KEYS.get(token))  # the token is bound to the device key
    client.proto.authenticate(token, *((proof.signature, proof.at) if proof else ()))
    with contextlib.suppress(websockets.ConnectionClosed):
        await client.flush()
    welcome = asyncio.ensure_future(client.next_event(Welcomed))
    await asyncio.wait({welcome, client.closed}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    welcome.cancel()
    return client


async def forwarded(relay: RelayProcess, client_address: str) -> SyncClient:
    """An unauthenticated socket from 127.0.0.1 (the proxy) on behalf of ``client_address``."""
    url = f"ws://{relay.host}:{relay.port}/api/v1/sync"
    ws = await websockets.connect(url, additional_headers={"X-Forwarded-For": client_address})
    return SyncClient(ws, ClientProtocol(header_auth=False))


async def assert_refused(client: SyncClient) -> None:
    code, reason = await asyncio.wait_for(client.closed, 5)
    assert (code, reason) == (CloseCode.TRY_AGAIN_LATER, ANONYMOUS_CAP_REASON)


def assert_open(clients: list[SyncClient]) -> None:
    assert not [c.closed.result() for c in clients if c.closed.done()]


async def close_all(clients: list[SyncClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def test_over_the_cap_one_address_is_refused_while_header_auth_and_other_addresses_connect(
    tmp_path: Path, relays: list[RelayProcess]
) -> None:
    relay = _start(relays, tmp_path / "data", "--max-anonymous-per-address", "3", "--auth-deadline", "5")
    with relay.client() as http:
        account = new_account(relay, http)
        held = await silent(relay, "127.0.0.1", 3)
        await wait_metric(http, HELD, 3)  # all three counted before the next one arrives
        over = await SyncClient.connect(relay, None, local_address="127.0.0.1")
        await assert_refused(over)
        # A first-message (browser-style) client of the same address is unauthenticated at
        # connect, so it is refused too: that is the cap.
        refused_browser = await browser(relay, account.access, "127.0.0.1")
        await assert_refused(refused_browser)
        assert metric(http, REFUSED) == 2

        # Other addresses have their own allowance.
        others = await silent(relay, "127.0.0.2", 3) + await silent(relay, "127.0.0.3", 3)
        await wait_metric(http, HELD, 9)
        # The token in the handshake is checked before anything is read: not counted.
        honest = await SyncClient.connect(relay, account.access, local_address="127.0.0.1")
        assert isinstance(await honest.subscribe(DOC, Replica()), DocSynced)
        assert metric(http, HELD) == 9
        assert_open([*held, *others, honest])
        assert metric(http, REFUSED) == 2

        # One of the address's sockets goes away: its slot is free for a first-message client,
        # which stops counting once it has authenticated.
        await held.pop().close()
        await wait_metric(http, HELD, 8)
        admitted = await browser(relay, account.access, "127.0.0.1")
        assert isinstance(await admitted.subscribe(DOC, Replica()), DocSynced)
        assert metric(http, HELD) == 8
        assert_open([admitted])
        await close_all([*held, *others, honest, admitted, over, refused_browser])
        await wait_metric(http, HELD, 0)


async def test_every_ending_gives_the_slot_back(tmp_path: Path, relays: list[RelayProcess]) -> None:
    """Rounds of sockets that time out, send a bad token, break the protocol, drop their TCP
    connection, close, or authenticate, each round past the cap: afterwards nothing is held and
    the address can fill its whole cap again."""
    cap = 6
    relay = _start(relays, tmp_path / "data", "--max-anonymous-per-address", str(cap), "--auth-deadline", "1")
    address = "127.0.0.4"
    with relay.client() as http:
        account = new_account(relay, http)
        refused = 0
        for _ in range(3):
            held = await silent(relay, address, cap)
            timing_out, bad_token, violating, dropped, closing, authenticating = held
            await wait_metric(http, HELD, cap)
            burst = await asyncio.gather(*(silent(relay, address, 1) for _ in range(10)))
            over = [c for group in burst for c in group]
            for c in over:
                await assert_refused(c)
            refused += len(over)
            bad_token.proto.authenticate("not.a.jwt")
            await bad_token.flush()
            await violating.send_raw("text frames are a violation")
            dropped.ws.transport.abort()
            await closing.close()
            proof = auth_proof(account.access, DEVICE_KEYS.get(account.access))
            assert proof is not None  # the account's token is bound to its device key
            authenticating.proto.authenticate(account.access, proof.signature, proof.at)
            await authenticating.flush()
            await authenticating.next_event(Welcomed)
            assert isinstance(await authenticating.subscribe(DOC, Replica()), DocSynced)
            expected = {
                timing_out: CloseCode.AUTH_TIMEOUT,
                bad_token: CloseCode.AUTH_FAILED,
                violating: CloseCode.PROTOCOL_VIOLATION,
            }
            for client, code in expected.items():
                assert (await asyncio.wait_for(client.closed, 5))[0] == code
            await wait_metric(http, HELD, 0)
            assert_open([authenticating])
            await close_all([*held, *over])
        assert metric(http, REFUSED) == refused == 30

        # The whole cap is there again, and only the cap.
        again = await silent(relay, address, cap)
        await wait_metric(http, HELD, cap)
        extra = await SyncClient.connect(relay, None, local_address=address)
        await assert_refused(extra)
        assert_open(again)
        await close_all([*again, extra])
        await wait_metric(http, HELD, 0)


async def test_behind_a_trusted_proxy_the_cap_counts_forwarded_clients(
    tmp_path: Path, relays: list[RelayProcess]
) -> None:
    """All sockets come from 127.0.0.1, the proxy; the relay counts the X-Forwarded-For client.
    No ``--max-anonymous-per-address``: with ``--max-connections 16`` the cap is 16 // 8 = 2."""
    relay = _start(relays, tmp_path / "data", "--max-connections", "16", "--forwarded-allow-ips", "127.0.0.1")
    with relay.client() as http:
        first = [await forwarded(relay, "203.0.113.7") for _ in range(2)]
        second = [await forwarded(relay, "203.0.113.8") for _ in range(2)]
        # IPv6 is counted per /64: two addresses of one /64, then a third is over the cap.
        v6 = [await forwarded(relay, "2001:db8::1"), await forwarded(relay, "2001:db8::2")]
        v6_other_block = await forwarded(relay, "2001:db8:0:1::1")
        await wait_metric(http, HELD, 7)
        over = [await forwarded(relay, "203.0.113.7"), await forwarded(relay, "2001:db8::3")]
        for c in over:
            await assert_refused(c)
        assert metric(http, REFUSED) == 2
        assert_open([*first, *second, *v6, v6_other_block])
        await close_all([*first, *second, *v6, v6_other_block, *over])
        await wait_metric(http, HELD, 0)


def test_default_cap_follows_the_connection_limit() -> None:
    assert SyncLimits().anonymous_per_address == 64  # 10,000 // 8 is more: 64 is the ceiling
    assert SyncLimits(max_connections=256).anonymous_per_address == 32
    assert SyncLimits(max_connections=3).anonymous_per_address == 1  # never zero
    assert SyncLimits(max_connections=3, max_anonymous_per_address=5).anonymous_per_address == 5


def test_address_keys_and_slot_accounting() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert address_key(None) == address_key("") == "unknown"
    slots = AnonymousSlots(2)
    assert slots.take("a") and slots.take("a") and not slots.take("a") and slots.take("b")
    assert (slots.total, slots.addresses) == (3, 2)
    for key in ("a", "a", "b"):
        slots.release(key)
    assert (slots.total, slots.addresses) == (0, 0)
    with pytest.raises(RuntimeError):
        slots.release("a")  # a double release is a bug, not a silent negative count
