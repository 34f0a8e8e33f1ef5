"""The integrity of signed records beyond their signature: who may write under a Yjs id, one byte
string per record, and how long an expired certificate's records are accepted at arrival.

* Squatting (``foreign_client``): a device with a valid certificate writes its own valid record at
  the Yjs ids another device or the relay will use next; Yjs would then skip the victim's real
  write as a re-send. Every replica refuses a struct whose client id is not its signer's.
* Malleability (records format 2): the whole envelope is signed, and records, their fields and
  certificates are accepted only in canonical msgpack, so no third party can publish a variant of
  someone's record (re-framed, re-versioned, re-attributed) that would block the real one.
* Expiry (``ArrivalPolicy``): a record is refused at arrival when it is dated further back than the
  lesser of the policy's window and its certificate's lifetime.
"""

from __future__ import annotations

import msgpack
import pytest

from crdt_core.authoring import Author, write_stamps
from crdt_core.canonical import canonical_pack
from crdt_core.certs import DeviceKey, cert_id_of, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import SchemaError
from crdt_core.hlc import HybridClock
from crdt_core.reader import schema_version_of
from crdt_core.records import RECORD_DOMAIN, open_record, sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation, parse_doc_id
from crdt_core.validation import ArrivalPolicy, Reason
from crdt_core.yupdate import decode_update
from tests.support.crdt_factory import HOUR_MS, NOW_MS, World, fixed_seed_key, relay_client, relay_replica
from tests.support.strategies import DOC, assert_refused, receive

DAY_MS = 24 * HOUR_MS


def booked(world: World, *names: str) -> tuple[Replica, dict[str, Author], dict[str, Replica]]:
    """A relay copy of the day where each named device booked once from its own replica."""
    relay = relay_replica(world.relay)
    authors = {name: world.device(name) for name in names}
    phones = {name: Replica(a.client_id()) for name, a in authors.items()}
    for name, author in authors.items():
        _, update = author.book(phones[name], DOC, "s1", 1)
        receive(DOC, relay, update, world.cache())
    for phone in phones.values():
        phone.apply_update(relay.diff(phone.state_vector()))
    return relay, authors, phones


def record_of(update: bytes, root: str = "reservations") -> tuple[str, bytes]:
    (ins,) = [i for i in decode_update(update).inserts if i.root == root]
    assert isinstance(ins.value, bytes)
    return ins.key, ins.value


# --- squatting ---------------------------------------------------------------------------------


def test_a_device_writing_its_own_record_under_another_devices_client_id_is_refused() -> None:
    world = World()
    relay, authors, phones = booked(world, "mallory", "victim")
    mallory, victim = authors["mallory"], authors["victim"]
    # Mallory's own, validly signed booking, at the Yjs id the victim's next write will take.
    squat = relay.copy(victim.client_id())
    res = Reservation("m-1", "s1", 1, "mallory", mallory.hlc())
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), mallory.device, SCHEMA_VERSION)
    update = squat.write([("reservations", res.id, raw)])
    assert assert_refused(DOC, relay, update, world.cache()).code == Reason.FOREIGN_CLIENT
    assert Reason.FOREIGN_CLIENT.value == "foreign_client"
    # The victim's real write at that id is accepted, not skipped as a re-send.
    real, u = victim.book(phones["victim"], DOC, "s1", 1)
    assert not receive(DOC, relay, u, world.cache()).noop
    assert relay.has_key("reservations", real.id)


def test_a_device_writing_under_the_relays_client_id_is_refused() -> None:
    world = World()
    relay, authors, _ = booked(world, "mallory")
    mallory = authors["mallory"]
    for generation in (0, 7, 63):
        squat = relay.copy(relay_client(world.relay, generation))
        res = Reservation(f"m-{generation}", "s1", 1, "mallory", mallory.hlc())
        raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), mallory.device, SCHEMA_VERSION)
        update = squat.write([("reservations", res.id, raw)])
        assert assert_refused(DOC, relay, update, world.cache()).code == "foreign_client"


def test_a_certificate_under_another_signers_client_id_is_refused() -> None:
    world = World()
    relay, authors, _ = booked(world, "victim")
    newcomer = world.device("newcomer")
    squat = Replica(authors["victim"].client_id(5))
    update = squat.write([("certs", newcomer.device.cert_id, newcomer.device.certificate)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "foreign_client"


def test_stamps_are_accepted_only_under_the_relays_ids() -> None:
    world = World()
    relay, _, phones = booked(world, "alice")
    (rid,) = relay.keys("reservations")
    wrong = relay.copy(phones["alice"].client_id)
    with pytest.raises(ValueError, match="relay:"):
        write_stamps(wrong, DOC, world.relay, [rid], 1, NOW_MS)
    # Written anyway (bypassing write_stamps' guard), such a stamp is refused.
    raw = sign_record(
        DOC, "0000000000000001", "stamp", {"no": 1, "reservation": rid, "at": NOW_MS}, world.relay, 1
    )
    update = wrong.write([("stamps", "0000000000000001", raw)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "foreign_client"
    # Any of the relay's 64 generations may stamp.
    _, ok = write_stamps(relay.copy(relay_client(world.relay, 40)), DOC, world.relay, [rid], 1, NOW_MS)
    assert [r.key for r in receive(DOC, relay, ok, world.cache()).records] == ["0000000000000001"]


def test_author_put_refuses_a_replica_that_is_not_its_own() -> None:
    world = World()
    alice, bob = world.device("alice"), world.device("bob")
    assert alice.client_id() == client_id_for(alice.device.cert_id, 0)
    assert alice.client_id(3) == client_id_for(alice.device.cert_id, 3)
    with pytest.raises(ValueError, match="not one of"):
        alice.book(Replica(bob.client_id()), DOC, "s1", 1)
    with pytest.raises(ValueError, match="not one of"):
        alice.book(Replica(12345), DOC, "s1", 1)
    _, update = alice.book(Replica(alice.client_id(63)), DOC, "s1", 1)
    receive(DOC, Replica(), update, world.cache())


# --- malleability ------------------------------------------------------------------------------


def test_schema_version_rewrap_is_refused() -> None:
    """Re-wrapping a victim's record under schema version 999 would have made its unknown-field
    rules looser and raised the document's version; the version is signed now."""
    world = World()
    relay, authors, _ = booked(world, "victim")
    victim = authors["victim"]
    _, update = victim.book(Replica(victim.client_id(1)), DOC, "s1", 1)
    key, raw = record_of(update)
    outer = msgpack.unpackb(raw, raw=False)
    assert outer[1] == 1  # signed as the lowest schema version that holds it
    outer[1] = 999
    variant = canonical_pack(outer)
    forged = Replica(victim.client_id(2)).write([("reservations", key, variant)])
    assert assert_refused(DOC, relay, forged, world.cache()).code == "bad_signature"


def test_array16_framing_of_a_victims_record_is_refused_and_the_victims_write_still_lands() -> None:
    world = World()
    relay, authors, phones = booked(world, "victim")
    victim = authors["victim"]
    res, update = victim.book(phones["victim"], DOC, "s1", 2)
    key, raw = record_of(update)
    assert raw[0] == 0x96  # fixarray of 6
    variant = b"\xdc\x00\x06" + raw[1:]  # the same array, as array16: same content, same signature
    assert msgpack.unpackb(variant, raw=False) == msgpack.unpackb(raw, raw=False)
    with pytest.raises(SchemaError, match="canonical"):
        open_record(variant)
    # A third party publishes the variant first (under a victim's id, so only the framing is judged).
    front_run = Replica(victim.client_id(9)).write([("reservations", key, variant)])
    assert assert_refused(DOC, relay, front_run, world.cache()).code == "schema"
    # The victim's own identical write is not refused because of it.
    accepted = receive(DOC, relay, update, world.cache())
    assert [r.key for r in accepted.records] == [res.id]
    assert relay.get_bytes("reservations", res.id) == raw


def test_reattribution_to_another_certificate_of_the_same_key_is_refused() -> None:
    """Two certificates for one device key (two logins): a record signed under one cannot be
    re-labelled as the other's (which may be valid at other times, or carry other rights)."""
    world = World()
    key = fixed_seed_key(4242)
    certs = [
        issue_certificate(
            world.relay,
            user_id="alice",
            roles=[],
            owner_of=[],
            staff_of=[],
            device_public_key=public_bytes(key),
            issued_at_ms=NOW_MS - start * HOUR_MS,
            expires_at_ms=NOW_MS + (10 - start) * HOUR_MS,
        )
        for start in (1, 2)
    ]
    first, second = (
        Author("alice", DeviceKey(key, c), HybridClock("a", physical_ms=lambda: NOW_MS)) for c in certs
    )
    relay = relay_replica(world.relay)
    receive(DOC, relay, first.book(Replica(first.client_id()), DOC, "s1", 1)[1], world.cache())
    receive(DOC, relay, second.book(Replica(second.client_id()), DOC, "s1", 1)[1], world.cache())
    res = Reservation("a-x", "s1", 1, "alice", first.hlc())
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), first.device, SCHEMA_VERSION)
    outer = msgpack.unpackb(raw, raw=False)
    outer[4] = second.device.cert_id
    relabelled = canonical_pack(outer)
    update = Replica(second.client_id(1)).write([("reservations", res.id, relabelled)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "bad_signature"


def test_non_sorted_field_keys_are_refused_even_from_the_author() -> None:
    world = World()
    relay, authors, _ = booked(world, "alice")
    alice = authors["alice"]
    res = Reservation("a-u", "s1", 1, "alice", alice.hlc())
    fields = dict(reversed(sorted(res.to_fields().items())))
    fields_raw: bytes = msgpack.packb(fields, use_bin_type=True)
    signer = alice.device.cert_id
    body = msgpack.packb([DOC, res.id, 2, SCHEMA_VERSION, res.KIND, fields_raw, signer], use_bin_type=True)
    raw = canonical_pack(
        [2, SCHEMA_VERSION, res.KIND, fields_raw, signer, alice.device.sign(RECORD_DOMAIN + body)]
    )
    update = Replica(alice.client_id(1)).write([("reservations", res.id, raw)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "schema"


def test_format_1_records_are_refused() -> None:
    world = World()
    relay, authors, _ = booked(world, "alice")
    alice = authors["alice"]
    res = Reservation("a-1", "s1", 1, "alice", alice.hlc())
    fields_raw = canonical_pack(res.to_fields())
    sig = alice.device.sign(b"quickslot-record-v1\x00" + canonical_pack([DOC, res.id, res.KIND, fields_raw]))
    raw = canonical_pack([1, SCHEMA_VERSION, res.KIND, fields_raw, alice.device.cert_id, sig])
    update = Replica(alice.client_id(1)).write([("reservations", res.id, raw)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "schema"


def test_a_reframed_certificate_is_refused() -> None:
    """A certificate re-framed into other bytes would get another id, so a second set of client ids."""
    world = World()
    relay, _, _ = booked(world, "alice")
    carol = world.device("carol")
    raw = carol.device.certificate
    assert raw[0] == 0x94
    variant = b"\xdc\x00\x04" + raw[1:]
    vid = cert_id_of(variant)
    update = Replica(client_id_for(vid, 0)).write([("certs", vid, variant)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "bad_certificate"


def test_a_newer_schema_version_is_stored_but_never_raises_the_documents_version() -> None:
    world = World()
    relay, authors, _ = booked(world, "alice")
    alice = authors["alice"]
    res = Reservation("a-n", "s1", 1, "alice", alice.hlc())
    raw = sign_record(DOC, res.id, res.KIND, {**res.to_fields(), "deposit": 5}, alice.device, 999)
    update = Replica(alice.client_id(1)).write([("reservations", res.id, raw)])
    receive(DOC, relay, update, world.cache())
    assert relay.get_bytes("reservations", res.id) == raw
    assert schema_version_of(relay, parse_doc_id(DOC)) == SCHEMA_VERSION


# --- expiry ------------------------------------------------------------------------------------


def expired_device(
    world: World, *, issued_days_ago: float, expired_days_ago: float, dated_days_ago: float
) -> Author:
    return world.device(
        "alice",
        valid_from_ms=int(NOW_MS - issued_days_ago * DAY_MS),
        valid_until_ms=int(NOW_MS - expired_days_ago * DAY_MS),
        clock_ms=int(NOW_MS - dated_days_ago * DAY_MS),
    )


@pytest.mark.parametrize("policy", [ArrivalPolicy(now_ms=NOW_MS), ArrivalPolicy.for_peer(NOW_MS)])
def test_backdating_into_an_expired_certificate_is_bounded_by_its_lifetime(policy: ArrivalPolicy) -> None:
    world = World()
    # lifetime 2 days, expired 3 days ago; the record is dated inside its validity, 4 days ago
    old = expired_device(world, issued_days_ago=5, expired_days_ago=3, dated_days_ago=4)
    _, update = old.book(Replica(old.client_id()), DOC, "s1", 1)
    receive(DOC, Replica(), update, world.cache())  # valid without an arrival policy (history)
    assert assert_refused(DOC, Replica(), update, world.cache(), policy).code == "backdated"
    # Signed while valid, arriving after exp but within one lifetime of its date: accepted.
    recent = expired_device(world, issued_days_ago=2, expired_days_ago=1 / 24, dated_days_ago=2 / 24)
    _, update = recent.book(Replica(recent.client_id()), DOC, "s1", 1)
    assert not receive(DOC, Replica(), update, world.cache(), policy).noop


def test_the_backdating_window_is_the_lesser_of_the_policy_and_the_certificate_lifetime() -> None:
    world = World()
    cert = world.cache().verify(world.device("x", valid_from_ms=NOW_MS - 3 * DAY_MS).device.certificate)
    lifetime = cert.expires_at_ms - cert.issued_at_ms
    assert ArrivalPolicy(now_ms=NOW_MS).backdate_window_ms(cert) == lifetime
    assert ArrivalPolicy(now_ms=NOW_MS, max_backdate_ms=HOUR_MS).backdate_window_ms(cert) == HOUR_MS
    assert ArrivalPolicy(now_ms=NOW_MS, max_backdate_ms=None).backdate_window_ms(cert) == lifetime
    peer = ArrivalPolicy.for_peer(NOW_MS)
    assert (peer.is_revoked, peer.current_rights, peer.now_ms) == (None, None, NOW_MS)


@pytest.mark.parametrize(
    "head", [b"\xc3", b"\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00"], ids=["true", "float-1.0"]
)
def test_a_certificate_whose_format_is_not_the_integer_1_is_refused(head: bytes) -> None:
    """msgpack's true and 1.0 equal 1 in Python and are canonical encodings of themselves, so a
    format check by equality let anyone re-frame a relay-signed certificate under a new id."""
    world = World()
    relay, _, _ = booked(world, "alice")
    raw = world.device("carol").device.certificate
    assert raw[:2] == b"\x94\x01"
    variant = raw[:1] + head + raw[2:]
    vid = cert_id_of(variant)
    update = Replica(client_id_for(vid, 0)).write([("certs", vid, variant)])
    assert assert_refused(DOC, relay, update, world.cache()).code == "bad_certificate"
