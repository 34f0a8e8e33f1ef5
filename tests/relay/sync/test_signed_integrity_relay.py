"""Signed-record integrity at a live relay: squatted Yjs ids and back-dating into an expired
certificate are refused at arrival; honest writes around them still land.

One relay process (SQLite store), real websockets, tokens bound to device keys. The expiry cases
need certificates the relay issued in the past, so the test reads the relay's signing key from its
data directory (as an operator could) and issues them itself.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author
from crdt_core.certs import CertificateCache, DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.protocol import Acked, DocSynced, ErrorReceived
from crdt_core.records import RELAY_SIGNER_PREFIX, sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation
from crdt_core.validation import validate_update
from relay.auth.keys import KeyStore
from relay.ops.config import KEYS_DIRNAME
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess
from tests.support.sync_helpers import Account, SyncClient, new_account

DAY = (dt.date.today() + dt.timedelta(days=4)).isoformat()
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("relay-integrity") / "data"
    with RelayProcess(data, *GENEROUS_LIMITS) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


def relay_key(relay: RelayProcess) -> SigningKey:
    return KeyStore.open(relay.data_dir / KEYS_DIRNAME, create=False).signing_key()


async def joined(relay: RelayProcess, acct: Account, doc: str) -> tuple[SyncClient, Replica]:
    """A connection subscribed to ``doc`` with a replica that writes under the account's own id."""
    client = await SyncClient.connect(relay, acct.access)
    replica = Replica(acct.author.client_id())
    assert isinstance(await client.subscribe(doc, replica), DocSynced)
    return client, replica


def refused(answer: object, reason: str) -> bool:
    return isinstance(answer, ErrorReceived) and answer.reason.startswith(reason)


async def test_an_update_squatting_another_signers_client_id_is_refused(
    relay: RelayProcess, http: httpx.Client
) -> None:
    doc = f"bookings:squat:{DAY}"
    mallory, victim = new_account(relay, http), new_account(relay, http)
    cm, rm = await joined(relay, mallory, doc)
    cv, rv = await joined(relay, victim, doc)
    for client, replica, acct in ((cm, rm, mallory), (cv, rv, victim)):
        _, update = acct.author.book(replica, doc, "s1", 1)
        assert isinstance(await client.push(doc, update), Acked)
        await client.drain_into(replica, quiet=0.3)
    await cm.drain_into(rm, quiet=0.2)

    targets = {
        "the victim's next id": acct_id(victim),
        "the relay's id": client_id_for(RELAY_SIGNER_PREFIX + relay_key(relay).kid, 0),
    }
    for what, client_id in targets.items():
        squat = rm.copy(client_id)
        res = Reservation(f"m-{client_id % 1000}", "s1", 1, mallory.user_id, mallory.author.hlc())
        raw = sign_record(doc, res.id, res.KIND, res.to_fields(), mallory.author.device, SCHEMA_VERSION)
        answer = await cm.push(doc, squat.write([("reservations", res.id, raw)]))
        assert refused(answer, "foreign_client"), (what, answer)

    # The victim's real next write, at the id mallory tried to take, is stored and stamped (a
    # slot the victim holds no booking of: one active booking per customer per slot a day).
    res, update = victim.author.book(rv, doc, "s2", 1)
    assert isinstance(await cv.push(doc, update), Acked)
    await cm.drain_into(rm, quiet=0.3)
    assert rm.has_key("reservations", res.id)
    # Everything the relay stored and sent, its own stamps included, passes every replica's
    # rules: the relay stamps under one of its own ids.
    key = relay_key(relay)
    whole = validate_update(doc, Replica(), rm.encode_state(), CertificateCache({key.kid: key.public}))
    assert len([r for r in whole.records if r.root == "stamps"]) == 3
    await cm.close()
    await cv.close()


def acct_id(acct: Account) -> int:
    return acct.author.client_id()


def device_at(key: SigningKey, user_id: str, *, iat: int, exp: int, dated: int) -> Author:
    """A device of ``user_id`` whose certificate (issued by the relay key) ran from ``iat`` to
    ``exp``, with a clock reading ``dated``."""
    private = Ed25519PrivateKey.generate()
    cert = issue_certificate(
        key,
        user_id=user_id,
        roles=[],
        owner_of=[],
        staff_of=[],
        device_public_key=public_bytes(private),
        issued_at_ms=iat,
        expires_at_ms=exp,
    )
    return Author(user_id, DeviceKey(private, cert), HybridClock("old", physical_ms=lambda: dated))


async def test_backdating_into_an_expired_certificate_is_bounded_by_its_lifetime(
    relay: RelayProcess, http: httpx.Client
) -> None:
    doc = f"bookings:expiry:{DAY}"
    alice = new_account(relay, http)
    client = await SyncClient.connect(relay, alice.access)
    assert isinstance(await client.subscribe(doc, Replica()), DocSynced)
    key = relay_key(relay)
    now = time.time_ns() // 1_000_000

    # A two-day certificate that expired three days ago; a record dated inside it, four days ago:
    # older than now - lifetime, so refused although far inside the relay's 30-day window.
    stale = device_at(key, alice.user_id, iat=now - 5 * DAY_MS, exp=now - 3 * DAY_MS, dated=now - 4 * DAY_MS)
    _, update = stale.book(Replica(stale.client_id()), doc, "s1", 1)
    assert refused(await client.push(doc, update), "backdated")

    # Signed while valid (two hours ago), arriving after exp (an hour ago) but within one lifetime
    # (two days) of its date: an honest offline booking, accepted.
    honest = device_at(key, alice.user_id, iat=now - 2 * DAY_MS, exp=now - 3600_000, dated=now - 7200_000)
    res, update = honest.book(Replica(honest.client_id()), doc, "s1", 1)
    answer = await client.push(doc, update)
    assert isinstance(answer, Acked), answer
    fetched = Replica()
    reader = await SyncClient.connect(relay, alice.access)
    await reader.subscribe(doc, fetched)
    assert fetched.has_key("reservations", res.id)
    await reader.close()
    await client.close()
