"""Regression tests for what the fuzz campaign found (docs/reliability.md, "Found and fixed").

A refused ``sub`` kept its document pinned: the hub pinned the document before the sync answer
and, when the answer was an ``err`` (a state vector that does not decode, or no room to load),
left the pin (and a re-subscription's registration) in place for the rest of the connection. The
protocol had already dropped the subscription, so it counted against no ``max_docs`` limit: one
authenticated connection could keep any number of documents loaded and unloadable, up to the
relay's document bound, after which every user's new subscriptions fail. Fixed in
``relay.sync.hub.SyncHub._subscribe``: a refused subscription ends the hub's side of it too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import httpx
import pytest

from crdt_core.engine import Replica
from crdt_core.messages import ErrorCode
from crdt_core.protocol import Acked, DocSynced, ErrorReceived
from crdt_core.records import sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, peak_rss_bytes
from tests.support.strategies import map_item, struct_block, yjs_update
from tests.support.sync_helpers import SyncClient, new_account

IDLE_S = 0.4
BAD_SV = b"\xff"  # a state vector that does not decode: err bad_doc


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    data = tmp_path_factory.mktemp("fuzz-regress") / "data"
    with RelayProcess(data, *GENEROUS_LIMITS, "--idle-unload", str(IDLE_S)) as proc:
        yield proc


def loaded_documents(relay: RelayProcess) -> float:
    for line in httpx.get(f"{relay.base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("quickslot_loaded_documents "):
            return float(line.split()[1])
    raise AssertionError("no quickslot_loaded_documents metric")


async def settle_loaded(relay: RelayProcess, at_most: float, timeout: float = 10.0) -> float:
    """Wait (idle unload plus its sweep) until at most ``at_most`` documents are loaded."""
    deadline = time.monotonic() + timeout
    while (n := await asyncio.to_thread(loaded_documents, relay)) > at_most and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return n


async def test_refused_subscriptions_do_not_keep_documents_loaded(relay: RelayProcess) -> None:
    with relay.client() as http:
        acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    # 30 documents refused outright, and one subscribed and then refused on a re-subscription.
    for day in range(1, 31):
        c.proto.subscribe(f"bookings:pinleak:2031-01-{day:02d}", BAD_SV)
        await c.flush()
        answer = await c.next_event((DocSynced, ErrorReceived))
        assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.BAD_DOC, answer
    live = "bookings:pinleak:2031-02-01"
    assert isinstance(await c.subscribe(live, Replica()), DocSynced)
    c.proto.resync(live, BAD_SV)
    await c.flush()
    answer = await c.next_event((DocSynced, ErrorReceived))
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.BAD_DOC
    # The connection stays open and subscribes nothing now: every document may be unloaded.
    assert await settle_loaded(relay, at_most=0) == 0
    assert not c.closed.done()
    await c.close()


async def test_a_squatted_yjs_id_never_turns_an_offline_booking_into_an_acked_loss(
    relay: RelayProcess,
) -> None:
    """Mallory writes her own valid record at the Yjs id the victim's offline booking will take
    (client id and next clock are public: they are in every subscriber's state vector). Once it
    was accepted and the victim's booking, re-sent on reconnect, was acknowledged as a re-send and
    silently dropped (later: refused as an equivocation). Client ids are bound to signers now
    (crdt_core.clientids): the squat is refused ``foreign_client`` and the booking is stored."""
    doc = f"bookings:squat:{dt.date.today() + dt.timedelta(days=30)}"  # within day_out_of_range
    with relay.client() as http:
        victim, mallory = new_account(relay, http), new_account(relay, http)
    cv, cm = await SyncClient.connect(relay, victim.access), await SyncClient.connect(relay, mallory.access)
    rv, rm = Replica(victim.author.client_id()), Replica(mallory.author.client_id())
    await cv.subscribe(doc, rv)
    await cm.subscribe(doc, rm)
    _, update = victim.author.book(rv, doc, "s1", 1)
    assert isinstance(await cv.push(doc, update), Acked)
    _, update = mallory.author.book(rm, doc, "s1", 1)  # puts Mallory's certificate in the doc
    assert isinstance(await cm.push(doc, update), Acked)
    await cv.drain_into(rv, quiet=0.3)
    await cv.close()  # the victim goes offline and books there
    client, clock = rv.client_id, rv.state_clocks()[rv.client_id]
    offline, lost = victim.author.book(rv, doc, "s2", 1)
    look = await SyncClient.connect(relay, mallory.access)
    view = Replica()
    await look.subscribe(doc, view)
    assert view.state_clocks().get(client) == clock  # what any reader sees of the victim's writer
    await look.close()

    res = Reservation(id="squat1", slot="s3", party=1, customer=mallory.user_id, hlc=mallory.author.hlc())
    raw = sign_record(doc, res.id, res.KIND, res.to_fields(), mallory.author.device, SCHEMA_VERSION)
    squat = yjs_update([struct_block(client, clock, [map_item("reservations", res.id, raw)])])
    answer = await cm.push(doc, squat)  # a valid record of her own, under the victim's id
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("foreign_client"), answer

    cv = await SyncClient.connect(relay, victim.access)
    synced = await cv.subscribe(doc, rv)
    assert isinstance(synced, DocSynced)
    answer = await cv.push(doc, lost)  # the outbox entry, re-sent on reconnect
    fresh = await SyncClient.connect(relay, victim.access)
    stored = Replica()
    await fresh.subscribe(doc, stored)
    # Client ids are bound to signers now: the squat never landed, so the booking is stored.
    assert isinstance(answer, Acked), answer
    assert stored.has_key("reservations", offline.id), "acknowledged but not stored"
    for c in (cv, cm, fresh):
        await c.close()


def _varuint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if not n:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


async def test_a_state_vector_declaring_millions_of_entries_costs_the_relay_nothing(
    relay: RelayProcess,
) -> None:
    """A 5-byte state vector declaring 2**28 entries made Yrs reserve a table for all of them
    before reading one (about 500 MiB for half a second per message; found by the long fuzz run
    as VmRSS spikes of 250-500 MiB between batches). The engine wrapper now checks the count
    against the bytes that follow, so the sync answer is an ``err`` at no cost."""
    with relay.client() as http:
        acct = new_account(relay, http)
    c = await SyncClient.connect(relay, acct.access)
    doc = "bookings:svbomb:2031-04-01"
    assert isinstance(await c.subscribe(doc, Replica()), DocSynced)  # the document is loaded
    assert relay.proc is not None
    before = peak_rss_bytes(relay.proc.pid)
    c.proto.resync(doc, _varuint(2**28) + b"\x01\x01")
    await c.flush()
    answer = await c.next_event((DocSynced, ErrorReceived))
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.BAD_DOC, answer
    for _ in range(2):  # the refusal ended the subscription: subscribe afresh with the same bytes
        c.proto.subscribe(doc, _varuint(2**28) + b"\x01\x01")
        await c.flush()
        answer = await c.next_event((DocSynced, ErrorReceived))
        assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.BAD_DOC, answer
    grown = peak_rss_bytes(relay.proc.pid) - before
    assert grown < 64 * 2**20, f"peak RSS grew {grown / 2**20:.0f} MiB for three 7-byte state vectors"
    assert not c.closed.done()
    await c.close()
