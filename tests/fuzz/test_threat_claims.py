"""Claims of docs/security.md that no other test showed against a live relay process.

* every forged record of the fuzz corpus is refused by the relay with its own reason, and a
  watcher on the document never receives any of them;
* a stolen access token lets its holder read what the victim reads, but not sign in the victim's
  name (that needs the device key), and the victim's logout cuts the thief's connection;
* a stolen device key stops signing at the relay once its owner is disabled, and once its owner
  logs out (the certificates a session was given are revoked with the session);
* equivocation between a client and the relay (two records under one Yjs id): the second version
  is refused with ``equivocation`` (it used to be acknowledged as a re-send and dropped), and it
  is never stored, forwarded or stamped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import httpx
import pytest

from crdt_core.engine import Replica
from crdt_core.messages import CloseCode, ErrorCode
from crdt_core.pop import rest
from crdt_core.protocol import Acked, DocSynced, ErrorReceived, StampReceived, UpdateReceived
from crdt_core.reader import read_bookings
from crdt_core.records import sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation, UserProfile
from relay.sync.hub import ANONYMOUS_CAP_REASON
from tests.fuzz.corpus import build_corpus
from tests.support.relay_process import GENEROUS_LIMITS, RelayProcess, bearer, login, run_cli
from tests.support.strategies import map_item, struct_block, yjs_update
from tests.support.sync_helpers import Account, SyncClient, new_account, token_headers

DAY = (dt.date.today() + dt.timedelta(days=6)).isoformat()
LOGOUT = rest("POST", "/api/v1/auth/logout")

#: The reason code (docs/records.md) each forged update of the corpus must be refused with.
EXPECTED_REASONS = {
    "bad_signature": "bad_signature",
    "signed_for_other_doc": "bad_signature",
    "other_identity": "forbidden",
    "clock_ahead": "clock_skew",
    # Back-dating leaves the certificate's validity first (the relay's own 30-day rule:
    # test_validation_table arrival_backdated).
    "backdated": "certificate_expired",
    # A clock at the format's maximum puts the booking's day far more than a day before its HLC:
    # the record's own fields are checked before its signature and certificate (crdt_core.validation).
    "max_clock": "day_out_of_range",
    "forged_stamp": "bad_signature",
    "stamp_by_device": "relay_only",
    "rewrite": "rewrite",
    "deletion": "deletion",
    "oversized_record": "schema",
    "unknown_root": "wrong_map",
    "confirm_by_customer": "forbidden",
    "cancel_other_customer": "forbidden",
    "other_user_doc": "forbidden",
    "shop_edit_by_customer": "schema",
    "same_key_twice": "rewrite",
}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    with RelayProcess(tmp_path_factory.mktemp("threats") / "data", *GENEROUS_LIMITS) as proc:
        yield proc


@pytest.fixture(scope="module")
def http(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client


async def test_every_forged_record_is_refused_by_the_relay_with_its_reason(
    relay: RelayProcess, http: httpx.Client
) -> None:
    mallory, victim = new_account(relay, http), new_account(relay, http)
    doc, user_doc, shop_doc = f"bookings:threat1:{DAY}", f"user:{mallory.user_id}", "shop:threat1"
    cv, cm = await SyncClient.connect(relay, victim.access), await SyncClient.connect(relay, mallory.access)
    watcher = await SyncClient.connect(relay, mallory.access)
    rv, rm, rw = Replica(victim.author.client_id()), Replica(mallory.author.client_id()), Replica()
    await cv.subscribe(doc, rv)
    theirs, update = victim.author.book(rv, doc, "s1", 1)
    assert isinstance(await cv.push(doc, update), Acked)
    for d in (doc, user_doc, shop_doc):
        assert isinstance(await cm.subscribe(d, rm if d == doc else Replica()), DocSynced)
        assert isinstance(await watcher.subscribe(d, rw if d == doc else Replica()), DocSynced)
    mine, update = mallory.author.book(rm, doc, "s2", 1)
    assert isinstance(await cm.push(doc, update), Acked)
    await cm.drain_into(rm, quiet=0.3)
    await watcher.drain_into(rw, quiet=0.3)
    corpus = build_corpus(
        bookings=doc,
        user_doc=user_doc,
        shop_doc=shop_doc,
        author=mallory.author,
        other=victim.author,
        token=mallory.access,
        bookings_state=rm.encode_state(),
        stored_reservation=mine.id,
        victim_reservation=theirs.id,
    )
    assert {label for label, _ in corpus.forged} == set(EXPECTED_REASONS)
    got: dict[str, str] = {}
    for label, forged in corpus.forged:
        target = user_doc if label == "other_user_doc" else shop_doc if label.startswith("shop_") else doc
        answer = await cm.push(target, forged)
        assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.REJECTED, (label, answer)
        got[label] = answer.reason.split(":")[0]
    assert got == EXPECTED_REASONS
    # Nothing refused reached the watcher, and the documents hold only the two real bookings.
    seen = await watcher.drain_into(rw, quiet=0.5)
    assert not [e for e in seen if isinstance(e, (UpdateReceived, StampReceived))]
    assert set(read_bookings(rw, doc).reservations) == {theirs.id, mine.id}
    for c in (cv, cm, watcher):
        await c.close()


async def test_a_stolen_bearer_token_reads_but_cannot_sign_for_its_owner(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """A token bound to a device key opens nothing without that key (test_token_binding.py); a
    bearer token (issued without a device key) is what a thief can still use, this way only."""
    victim, thief = new_account(relay, http), new_account(relay, http)
    doc, victim_doc = f"bookings:threat2:{DAY}", f"user:{victim.user_id}"
    bound = await SyncClient.connect(relay, victim.access, prove=False)  # the device's own token
    code, reason = await asyncio.wait_for(bound.closed, 10)
    assert (code, reason) == (
        CloseCode.AUTH_FAILED,
        "proof of possession required (the token is bound to a device key)",
    )
    bearer_token = login(http, victim.email)["access_token"]  # a session without a device key
    stolen = await SyncClient.connect(relay, bearer_token)  # the thief holds the victim's token
    rd, ru = Replica(thief.author.client_id()), Replica(thief.author.client_id())
    assert isinstance(await stolen.subscribe(victim_doc, ru), DocSynced)  # reads as the victim
    assert isinstance(await stolen.subscribe(doc, rd), DocSynced)
    # Signing needs a device key; the thief only has its own, certified for its own user.
    forged = Reservation(id="stolen1", slot="s1", party=1, customer=victim.user_id, hlc=thief.author.hlc())
    answer = await stolen.push(doc, thief.author.put(rd.copy(rd.client_id), doc, [(forged, None)]))
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("forbidden"), answer
    profile = UserProfile("Hijacked", None, None, None, thief.author.hlc())
    answer = await stolen.push(
        victim_doc, thief.author.put(ru.copy(ru.client_id), victim_doc, [(profile, "me")])
    )
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("forbidden"), answer
    # The victim logs out: the stolen token's connection is closed and the token opens nothing.
    assert http.post("/api/v1/auth/logout", headers=bearer(bearer_token)).status_code == 204
    code, _ = await asyncio.wait_for(stolen.closed, 10)
    assert code == CloseCode.SESSION_REVOKED
    again = await SyncClient.connect(relay, bearer_token)
    code, _ = await asyncio.wait_for(again.closed, 10)
    assert code == CloseCode.SESSION_REVOKED
    for c in (bound, stolen, again):
        await c.close()


async def test_equivocation_at_the_relay_is_refused_and_never_stored_forwarded_or_stamped(
    relay: RelayProcess, http: httpx.Client
) -> None:
    """A second version of a Yjs id the relay holds is refused, naming the id (docs/security.md)."""
    mallory, other = new_account(relay, http), new_account(relay, http)
    doc = f"bookings:threat3:{DAY}"
    cm, cw = await SyncClient.connect(relay, mallory.access), await SyncClient.connect(relay, other.access)
    rm, rw = Replica(), Replica()
    await cm.subscribe(doc, rm)
    await cw.subscribe(doc, rw)
    device = mallory.author.device
    cert = map_item("certs", device.cert_id, device.certificate)
    mine = mallory.author.client_id()

    def version(rid: str) -> bytes:
        res = Reservation(id=rid, slot="s1", party=1, customer=mallory.user_id, hlc=mallory.author.hlc())
        raw = sign_record(doc, rid, res.KIND, res.to_fields(), device, SCHEMA_VERSION)
        # The same Yjs client id (her own) and clocks for both versions: one id, two contents.
        return yjs_update([struct_block(mine, 0, [cert, map_item("reservations", rid, raw)])])

    first, second = version("eqA"), version("eqB")
    assert isinstance(await cm.push(doc, first), Acked)
    answer = await cm.push(doc, second)
    assert isinstance(answer, ErrorReceived) and answer.code == ErrorCode.REJECTED, answer
    assert answer.reason.startswith(f"equivocation: Yjs id {mine}:1 (reservations/eqB)"), answer.reason
    await cw.drain_into(rw, quiet=0.5)
    state = read_bookings(rw, doc)
    assert set(state.reservations) == {"eqA"}  # the watcher never got the second version
    assert [s.reservation for s in state.stamps.values()] == ["eqA"]  # stamped once
    fresh = await SyncClient.connect(relay, other.access)
    rf = Replica()
    await fresh.subscribe(doc, rf)  # what the relay stored
    assert set(read_bookings(rf, doc).reservations) == {"eqA"}
    for c in (cm, cw, fresh):
        await c.close()


async def _carry_signed_by(
    relay: RelayProcess, carrier: str, signer: Account, doc: str
) -> Acked | ErrorReceived:
    """A booking signed with ``signer``'s device key, carried on the connection of ``carrier``."""
    c = await SyncClient.connect(relay, carrier)
    replica = Replica(signer.author.client_id())
    assert isinstance(await c.subscribe(doc, replica), DocSynced)
    _, update = signer.author.book(replica, doc, "s1", 1)
    answer = await c.push(doc, update)
    await c.close()
    return answer


async def test_a_stolen_device_key_is_refused_after_its_owner_logs_out(
    relay: RelayProcess, http: httpx.Client
) -> None:
    victim, thief = new_account(relay, http), new_account(relay, http)
    assert http.post("/api/v1/auth/logout", headers=token_headers(victim.access, LOGOUT)).status_code == 204
    answer = await _carry_signed_by(relay, thief.access, victim, f"bookings:threat4:{DAY}")
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("revoked"), answer


async def test_a_stolen_device_key_is_refused_once_its_owner_is_disabled(
    relay: RelayProcess, http: httpx.Client
) -> None:
    victim, thief = new_account(relay, http), new_account(relay, http)
    doc = f"bookings:threat5:{DAY}"
    assert isinstance(await _carry_signed_by(relay, thief.access, victim, doc), Acked)  # valid so far
    watch = await SyncClient.connect(relay, victim.access)
    assert run_cli("user", "disable", victim.email, data_dir=relay.data_dir).returncode == 0
    code, _ = await asyncio.wait_for(watch.closed, 10)  # the relay has seen the change
    assert code == CloseCode.ACCOUNT_DISABLED
    answer = await _carry_signed_by(relay, thief.access, victim, doc)
    assert isinstance(answer, ErrorReceived) and answer.reason.startswith("revoked"), answer
    await watch.close()


async def test_connection_slots_are_bounded_and_anonymous_sockets_hold_them_until_the_deadline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``--max-connections`` bounds the relay's sockets; unauthenticated ones count too, for at
    most ``--auth-deadline`` each (the denial-of-service limit stated in docs/security.md). One
    address holds at most ``--max-anonymous-per-address`` of them (here the default, 3 // 8 -> 1),
    so filling the relay this way takes three source addresses."""
    data = tmp_path_factory.mktemp("slots") / "data"
    flags = ("--max-connections", "3", "--auth-deadline", "2")
    with RelayProcess(data, *GENEROUS_LIMITS, *flags) as relay, relay.client() as http:
        acct = new_account(relay, http)
        silent = [await SyncClient.connect(relay, None, local_address="127.0.0.1")]
        second = await SyncClient.connect(relay, None, local_address="127.0.0.1")
        assert await asyncio.wait_for(second.closed, 10) == (CloseCode.TRY_AGAIN_LATER, ANONYMOUS_CAP_REASON)
        silent += [await SyncClient.connect(relay, None, local_address=a) for a in ("127.0.0.2", "127.0.0.3")]
        refused = await SyncClient.connect(relay, acct.access)
        code, _ = await asyncio.wait_for(refused.closed, 10)
        assert code == CloseCode.TRY_AGAIN_LATER  # relay full, come back later
        for s in silent:
            code, _ = await asyncio.wait_for(s.closed, 10)
            assert code == CloseCode.AUTH_TIMEOUT
        admitted = await SyncClient.connect(relay, acct.access)
        assert isinstance(await admitted.subscribe(f"bookings:slots:{DAY}", Replica()), DocSynced)
        for c in (*silent, second, refused, admitted):
            await c.close()
