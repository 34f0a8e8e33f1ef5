"""A minimal real websocket sync client for relay tests, plus account + device setup over REST.

It speaks the protocol through crdt_core's sans-I/O ClientProtocol over a real `websockets`
connection, so what the tests exercise is exactly what a third-party client would see.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from typing import Any

import httpx
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection

from crdt_core.authoring import Author
from crdt_core.certs import DeviceKey, public_bytes
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.pop import (
    PROOF_HEADER,
    PROOF_TIME_HEADER,
    Proof,
    Purpose,
    auth_proof,
    proof_headers,
    token_binding,
)
from crdt_core.protocol import (
    Acked,
    ClientProtocol,
    DocSynced,
    ErrorReceived,
    StampReceived,
    UpdateReceived,
    Welcomed,
)
from tests.support.relay_process import PASSWORD, RelayProcess, login, register, unique_email

TIMEOUT = 10.0


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Account:
    user_id: str
    email: str
    access: str
    refresh: str
    author: Author
    session: dict[str, Any]


def make_account(relay: RelayProcess, http: httpx.Client, *, email: str | None = None) -> Account:
    """Register (if needed) and log in with a fresh device key; returns a certified Author."""
    email = email or unique_email()
    r = http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "display_name": "T"})
    assert r.status_code in (201, 409), r.text
    return login_device(relay, http, email)


#: The device key behind every access token this process obtained with one: the relay binds such
#: tokens to the key, and :meth:`SyncClient.connect` proves possession for them as the reference
#: client does. Attack tests opt out (``prove=False``) or sign with another key (``key=``).
DEVICE_KEYS: dict[str, Ed25519PrivateKey] = {}


def remember_key(access_token: str, key: Ed25519PrivateKey) -> None:
    DEVICE_KEYS[access_token] = key


def login_device(relay: RelayProcess, http: httpx.Client, email: str) -> Account:
    key = Ed25519PrivateKey.generate()
    body = login(http, email, device_public_key=b64url(public_bytes(key)))
    cert = b64url_decode(body["device_certificate"])
    user_id = body["user"]["id"]
    author = Author(user_id, DeviceKey(key, cert), HybridClock(user_id[:32]))
    remember_key(body["access_token"], key)
    return Account(user_id, email, body["access_token"], body["refresh_token"], author, body)


def token_headers(token: str, purpose: Purpose, key: Ed25519PrivateKey | None = None) -> dict[str, str]:
    """``Authorization`` plus, for a bound token, a proof of possession for ``purpose`` made with
    ``key`` (default: the key the token was obtained with)."""
    return proof_headers(token, key or DEVICE_KEYS.get(token), purpose)


async def fetch_document(relay: RelayProcess, token: str, doc: str) -> Replica:
    """The relay's copy of ``doc`` as a fresh subscriber receives it (sync step 2 from nothing)."""
    c = await SyncClient.connect(relay, token)
    replica = Replica()
    await c.subscribe(doc, replica)
    await c.close()
    return replica


def new_account(relay: RelayProcess, http: httpx.Client) -> Account:
    email = unique_email()
    register(http, email)
    return login_device(relay, http, email)


class SyncClient:
    """One websocket connection driven by ClientProtocol; events land in a queue."""

    def __init__(self, ws: ClientConnection, proto: ClientProtocol) -> None:
        self.ws = ws
        self.proto = proto
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.closed: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self._uid = 0

    @classmethod
    async def connect(
        cls,
        relay: RelayProcess,
        token: str | None,
        *,
        header: bool = True,
        prove: bool = True,
        proof: Proof | None = None,
        local_address: str | None = None,
    ) -> SyncClient:
        """Open a connection authenticated with ``token`` (header, or first ``auth`` message).

        For a bound token it proves possession with the key the token was obtained with, unless
        ``prove`` is False (no proof at all) or ``proof`` is given (sent as is, to attack).
        ``local_address``: the source address to connect from (any of 127.0.0.0/8 on Linux), for
        tests of per-address limits."""
        url = f"ws://{relay.host}:{relay.port}/api/v1/sync"
        if proof is None and prove and token and token_binding(token) is not None:
            proof = auth_proof(token, DEVICE_KEYS.get(token))
        headers: dict[str, str] | None = None
        if token and header:
            headers = {"Authorization": f"Bearer {token}"}
            if proof is not None:
                headers[PROOF_HEADER] = b64url(proof.signature)
                headers[PROOF_TIME_HEADER] = str(proof.at)
        local: dict[str, Any] = {"local_addr": (local_address, 0)} if local_address else {}
        ws = await websockets.connect(url, additional_headers=headers, max_size=64 * 1024 * 1024, **local)
        proto = ClientProtocol(header_auth=bool(token and header))
        client = cls(ws, proto)
        if token and not header:
            if proof is None:
                proto.authenticate(token)
            else:
                proto.authenticate(token, proof.signature, proof.at)
            await client.flush()
        if token:
            # Wait for the welcome (or the close that refuses us) before anything is sent.
            welcome = asyncio.ensure_future(client.next_event(Welcomed))
            await asyncio.wait({welcome, client.closed}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            welcome.cancel()
        return client

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            await self.ws.send(data)

    async def _read(self) -> None:
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    continue
                self.proto.receive_message(data)
                await self.flush()
                for event in self.proto.events_received():
                    await self.events.put(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if not self.closed.done():
                self.closed.set_result((rcvd.code if rcvd else None, rcvd.reason if rcvd else ""))

    async def next_event(self, kind: type | tuple[type, ...] = object, timeout: float = TIMEOUT) -> Any:
        async def find() -> Any:
            while True:
                event = await self.events.get()
                if isinstance(event, kind):
                    return event

        return await asyncio.wait_for(find(), timeout)

    async def subscribe(self, doc: str, replica: Replica) -> DocSynced | ErrorReceived:
        """Sync step 1 and 2: apply the relay's diff; send back what the relay lacks."""
        self.proto.subscribe(doc, replica.state_vector())
        await self.flush()
        event = await self.next_event((DocSynced, ErrorReceived))
        assert isinstance(event, (DocSynced, ErrorReceived))
        if isinstance(event, DocSynced):
            replica.apply_update(event.update)
        return event

    async def push(self, doc: str, update: bytes) -> Acked | ErrorReceived:
        self._uid += 1
        uid = self._uid
        self.proto.send_update(doc, uid, update)
        await self.flush()

        async def answer() -> Acked | ErrorReceived:
            while True:
                event = await self.events.get()
                if isinstance(event, (Acked, ErrorReceived)) and getattr(event, "uid", None) == uid:
                    return event

        return await asyncio.wait_for(answer(), TIMEOUT)

    async def drain_into(self, replica: Replica, quiet: float = 0.3) -> list[Any]:
        """Apply every live update/stamp that arrives until the stream is quiet for ``quiet`` s."""
        seen: list[Any] = []
        while True:
            try:
                event = await asyncio.wait_for(self.events.get(), quiet)
            except TimeoutError:
                return seen
            seen.append(event)
            if isinstance(event, (UpdateReceived, StampReceived)):
                replica.apply_update(event.update)

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)


_SEEDED: dict[str, set[str]] = {}
"""Per relay (its data folder), the categories :func:`seed_categories` wrote."""


async def seed_categories(relay: RelayProcess, *categories: str) -> None:
    """Make an admin account and have it write ``categories`` into the relay's catalogue: a shop's
    catalogue entry must name a category the catalogue defines (``unknown_category`` at arrival)."""
    from crdt_core.schema import Category
    from tests.support.relay_process import applied_by_relay

    seeded = _SEEDED.setdefault(str(relay.data_dir), set())
    categories = tuple(c for c in categories if c not in seeded)
    if not categories:
        return
    seeded.update(categories)
    with relay.client() as http:
        admin = new_account(relay, http)
        await asyncio.to_thread(relay.cli_json, "user", "grant", admin.email, "--admin")
        await applied_by_relay(relay)
        admin = login_device(relay, http, admin.email)
    conn = await SyncClient.connect(relay, admin.access)
    try:
        catalog = Replica(admin.author.client_id())
        await conn.subscribe("catalog", catalog)
        records = [(Category(c, c.title(), None, admin.author.hlc()), None) for c in categories]
        answer = await conn.push("catalog", admin.author.put(catalog, "catalog", records))
        assert isinstance(answer, Acked), answer
    finally:
        await conn.close()
