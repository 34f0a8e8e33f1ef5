"""One case per disallowed change: the exact refusal code, and the receiving replica left untouched.

Every case builds a real update (real pycrdt documents, real Ed25519 signatures) the way an attacker
or a buggy client would, hands it to the receiving replica through ``receive`` (validate, then
apply only if accepted) and checks the ``ValidationError.code`` and that ``to_py()`` and the state
vector are exactly what they were before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from crdt_core.authoring import Author, write_stamps
from crdt_core.canonical import canonical_pack
from crdt_core.certs import SigningKey
from crdt_core.engine import Replica, merge_updates
from crdt_core.reader import read_bookings, read_map
from crdt_core.records import open_record, sign_record
from crdt_core.schema import (
    SCHEMA_VERSION,
    Category,
    DocId,
    Reservation,
    ShopProfile,
    ShopSummary,
    SlotTemplate,
    StaffEntry,
    Stamp,
    StatusEvent,
    UserProfile,
    parse_doc_id,
    stamp_key,
)
from crdt_core.validation import ArrivalPolicy, Rights, validate_update
from crdt_core.yupdate import decode_update
from tests.support.crdt_factory import (
    HOUR_MS,
    NOW_MS,
    World,
    fixed_seed_key,
    relay_client,
    relay_replica,
    signer_replica,
)
from tests.support.strategies import (
    DOC,
    SHOP,
    SHOP_DOC,
    assert_refused,
    map_item,
    receive,
    snapshot,
    struct_block,
    var_string,
    varuint,
    yjs_update,
)

OTHER_DAY = f"bookings:{SHOP}:2027-01-16"
DAY_MS = 24 * HOUR_MS
HLC = f"{NOW_MS:013d}-000000-x"


@dataclass
class Env:
    """A bookings day already holding alice's and bob's stamped reservations and a staff confirm."""

    world: World
    alice: Author
    bob: Author
    sam: Author  # staff of shop1
    olive: Author  # owner of shop1
    ada: Author  # admin
    stranger_staff: Author  # staff of another shop
    relay: Replica
    phones: dict[str, Replica]
    res_a: Reservation
    res_b: Reservation
    confirm_id: str

    def phone(self, author: Author) -> Replica:
        """The author's own replica of the bookings day (other documents use fresh replicas)."""
        if author.user_id not in self.phones:
            self.phones[author.user_id] = Replica(author.client_id())
        return self.phones[author.user_id]


def make_env() -> Env:
    world = World()
    env = Env(
        world=world,
        alice=world.device("alice"),
        bob=world.device("bob"),
        sam=world.device("sam", staff_of=[SHOP]),
        olive=world.device("olive", owner_of=[SHOP]),
        ada=world.device("ada", roles=["admin"]),
        stranger_staff=world.device("stan", staff_of=["shop2"]),
        relay=relay_replica(world.relay),
        phones={},
        res_a=Reservation("x", "s1", 1, "alice", HLC),
        res_b=Reservation("x", "s1", 1, "bob", HLC),
        confirm_id="",
    )
    cache = world.cache()
    env.res_a, u = env.alice.book(env.phone(env.alice), DOC, "s1", 2)
    receive(DOC, env.relay, u, cache)
    env.res_b, u = env.bob.book(env.phone(env.bob), DOC, "s1", 1)
    receive(DOC, env.relay, u, cache)
    _, u = write_stamps(env.relay, DOC, world.relay, [env.res_a.id, env.res_b.id], 1, NOW_MS)
    sam_phone = env.phone(env.sam)
    receive(DOC, sam_phone, env.relay.diff(sam_phone.state_vector()), cache)
    ev, u = env.sam.event(sam_phone, DOC, env.res_a.id, "confirm")
    receive(DOC, env.relay, u, cache)
    env.confirm_id = ev.id
    return env


@dataclass
class Case:
    doc: str
    receiver: Replica
    update: bytes
    code: str
    policy: ArrivalPolicy | None = None


def carry(author: Author, receiver: Replica, *entries: tuple[str, str, bytes]) -> bytes:
    """An update from a fresh client with the given raw entries, plus the author's certificate when
    the receiver lacks it (re-inserting a certificate it holds would itself be a ``rewrite``)."""
    cert = (
        []
        if receiver.has_key("certs", author.device.cert_id)
        else [("certs", author.device.cert_id, author.device.certificate)]
    )
    return Replica(author.client_id(1)).write([*cert, *entries])


def rebuild(raw: bytes, *, fields: dict[str, object] | None = None, signer: str | None = None) -> bytes:
    """A record's bytes with its fields or signer swapped, keeping the original signature."""
    env = open_record(raw)
    fields_raw = canonical_pack(fields) if fields is not None else env.fields_raw
    return canonical_pack([2, env.schema_version, env.kind, fields_raw, signer or env.signer, env.signature])


def res_of(author: Author, rid: str = "r-new", **changes: object) -> Reservation:
    res = Reservation(rid, "s1", 2, author.user_id, author.hlc())
    return replace(res, **changes)  # type: ignore[arg-type]


# --- the cases -----------------------------------------------------------------------------------


def reservation_in_someone_elses_name(env: Env) -> Case:
    update = env.bob.put(env.phone(env.bob), DOC, [(res_of(env.bob, customer="alice"), None)])
    return Case(DOC, env.relay, update, "forbidden")


def forged_stamp_signed_by_a_client(env: Env) -> Case:
    stamp = Stamp(no=3, reservation=env.res_b.id, at=NOW_MS)
    update = env.bob.put(env.phone(env.bob), DOC, [(stamp, stamp_key(3))])
    return Case(DOC, env.relay, update, "relay_only")


def stamp_with_tampered_fields(env: Env) -> Case:
    _, real = write_stamps(
        env.relay.copy(relay_client(env.world.relay, 1)), DOC, env.world.relay, [env.res_b.id], 3, NOW_MS
    )
    (ins,) = decode_update(real).inserts
    fields = dict(open_record(ins.value).fields)
    fields["reservation"] = env.res_a.id  # move the stamp to another claim, keep the relay's signature
    forged = rebuild(ins.value, fields=fields)
    return Case(DOC, env.relay, signer_replica(forged).write([("stamps", ins.key, forged)]), "bad_signature")


def stamp_resigned_by_another_key_under_the_relays_kid(env: Env) -> Case:
    impostor = SigningKey(env.world.relay.kid, fixed_seed_key(666))
    _, update = write_stamps(
        env.relay.copy(relay_client(impostor, 1)), DOC, impostor, [env.res_b.id], 3, NOW_MS
    )
    return Case(DOC, env.relay, update, "bad_signature")


def stamp_signed_by_an_unknown_relay_key(env: Env) -> Case:
    rogue = SigningKey("rogue-kid", fixed_seed_key(667))
    _, update = write_stamps(env.relay.copy(relay_client(rogue)), DOC, rogue, [env.res_b.id], 3, NOW_MS)
    return Case(DOC, env.relay, update, "bad_signature")


def stamp_for_an_unknown_reservation(env: Env) -> Case:
    _, update = write_stamps(relay_replica(env.world.relay, 1), DOC, env.world.relay, ["nobody-1"], 3, NOW_MS)
    return Case(DOC, env.relay, update, "unknown_reservation")


def relay_signed_reservation(env: Env) -> Case:
    res = res_of(env.alice)
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.world.relay, SCHEMA_VERSION)
    return Case(DOC, env.relay, signer_replica(raw).write([("reservations", res.id, raw)]), "relay_only")


def record_under_an_expired_certificate(env: Env) -> Case:
    old = env.world.device("alice", valid_from_ms=NOW_MS - 3 * DAY_MS, valid_until_ms=NOW_MS - DAY_MS)
    _, update = old.book(Replica(old.client_id()), DOC, "s1", 1, reservation_id="r-902")
    return Case(DOC, env.relay, update, "certificate_expired")


def record_before_its_certificate_was_issued(env: Env) -> Case:
    early = env.world.device("alice", clock_ms=NOW_MS - 2 * HOUR_MS)  # certificate issued at NOW - 1h
    _, update = early.book(Replica(early.client_id()), DOC, "s1", 1, reservation_id="r-902")
    return Case(DOC, env.relay, update, "certificate_expired")


def record_under_a_certificate_from_a_foreign_relay_key(env: Env) -> Case:
    foreign = SigningKey(env.world.relay.kid, fixed_seed_key(777))  # same kid, different key
    fake = env.world.device("alice", roles=["admin"], signer=foreign)
    _, update = fake.book(Replica(fake.client_id()), DOC, "s1", 1, reservation_id="r-902")
    return Case(DOC, env.relay, update, "bad_certificate")


def record_under_a_certificate_from_an_unknown_kid(env: Env) -> Case:
    fake = env.world.device("alice", signer=SigningKey("elsewhere", fixed_seed_key(778)))
    _, update = fake.book(Replica(fake.client_id()), DOC, "s1", 1, reservation_id="r-902")
    return Case(DOC, env.relay, update, "bad_certificate")


def certificate_stored_under_the_wrong_id(env: Env) -> Case:
    carol = env.world.device("carol")
    update = Replica(903).write([("certs", "0" * 32, carol.device.certificate)])
    return Case(DOC, env.relay, update, "bad_certificate")


def record_signed_under_a_certificate_not_in_the_document(env: Env) -> Case:
    carol = env.world.device("carol")
    res = res_of(carol)
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), carol.device, SCHEMA_VERSION)
    update = signer_replica(raw).write([("reservations", res.id, raw)])
    return Case(DOC, env.relay, update, "unknown_certificate")


def tampered_field_under_a_valid_signature(env: Env) -> Case:
    res = res_of(env.alice)
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.alice.device, SCHEMA_VERSION)
    tampered = rebuild(raw, fields={**res.to_fields(), "party": 9})
    return Case(
        DOC, env.relay, carry(env.alice, env.relay, ("reservations", res.id, tampered)), "bad_signature"
    )


def record_replayed_under_another_key(env: Env) -> Case:
    """A slot template is keyed by a free record id, so the key is bound only by the signature."""
    shop = Replica(2)
    slot = SlotTemplate("s1", "cut", "09:00", 30, 2, None, True, env.sam.hlc())
    receive(
        SHOP_DOC, shop, env.sam.put(Replica(env.sam.client_id()), SHOP_DOC, [(slot, "k1")]), env.world.cache()
    )
    raw = shop.get_bytes("slots", "k1")
    assert raw is not None
    return Case(SHOP_DOC, shop, signer_replica(raw).write([("slots", "k2", raw)]), "bad_signature")


def reservation_replayed_under_another_key(env: Env) -> Case:
    raw = env.relay.get_bytes("reservations", env.res_a.id)
    assert raw is not None
    return Case(DOC, env.relay, signer_replica(raw).write([("reservations", "alice-99", raw)]), "schema")


def record_replayed_into_another_doc(env: Env) -> Case:
    raw = env.relay.get_bytes("reservations", env.res_a.id)
    assert raw is not None
    receiver = Replica(3)
    return Case(
        OTHER_DAY, receiver, carry(env.alice, receiver, ("reservations", env.res_a.id, raw)), "bad_signature"
    )


def record_replayed_under_another_signer(env: Env) -> Case:
    """Bob's certificate is in the document; pretending he signed alice's bytes fails the signature."""
    res = res_of(env.alice, customer="bob")
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.alice.device, SCHEMA_VERSION)
    forged = rebuild(raw, signer=env.bob.device.cert_id)
    update = signer_replica(forged).write([("reservations", res.id, forged)])
    return Case(DOC, env.relay, update, "bad_signature")


def rewritten_event(env: Env) -> Case:
    """Overwriting an existing key (a Yjs item with an origin, plus a delete of the old one)."""
    clone = env.relay.copy(env.sam.client_id(1))
    other = StatusEvent(env.confirm_id, env.res_a.id, "decline", "sam", env.sam.hlc())
    raw = sign_record(DOC, other.id, other.KIND, other.to_fields(), env.sam.device, SCHEMA_VERSION)
    return Case(DOC, env.relay, clone.write([("events", other.id, raw)]), "rewrite")


def rewritten_reservation_by_a_fresh_insert(env: Env) -> Case:
    """A second, validly signed record under an existing key from a replica that never saw the first."""
    res = res_of(env.alice, env.res_a.id, party=1)
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.alice.device, SCHEMA_VERSION)
    return Case(DOC, env.relay, carry(env.alice, env.relay, ("reservations", res.id, raw)), "rewrite")


def same_key_twice_in_one_update(env: Env) -> Case:
    one = sign_record(DOC, "r-x", "reservation", res_of(env.alice, "r-x").to_fields(), env.alice.device, 1)
    two = sign_record(
        DOC, "r-x", "reservation", res_of(env.alice, "r-x", party=1).to_fields(), env.alice.device, 1
    )
    cert = map_item("certs", env.alice.device.cert_id, env.alice.device.certificate)
    items = [cert, map_item("reservations", "r-x", one), map_item("reservations", "r-x", two)]
    return Case(DOC, Replica(3), yjs_update([struct_block(env.alice.client_id(), 0, items)]), "rewrite")


def deleted_record(env: Env) -> Case:
    client = env.phone(env.alice).client_id
    (ins,) = [i for i in decode_update(env.relay.encode_state()).inserts if i.key == env.res_a.id]
    update = yjs_update([], deletes={client: [(ins.clock, 1)]})
    scratch = env.relay.copy(908)
    scratch.apply_update(update)  # the engine would really remove it
    assert not scratch.has_key("reservations", env.res_a.id)
    return Case(DOC, env.relay, update, "deletion")


def wrong_type_party_as_text(env: Env) -> Case:
    res = res_of(env.alice)
    raw = sign_record(DOC, res.id, res.KIND, {**res.to_fields(), "party": "2"}, env.alice.device, 1)
    return Case(DOC, env.relay, carry(env.alice, env.relay, ("reservations", res.id, raw)), "schema")


def wrong_type_bool_as_int(env: Env) -> Case:
    slot = SlotTemplate("s1", "cut", "09:00", 30, 2, None, True, env.sam.hlc())
    raw = sign_record(SHOP_DOC, "k1", slot.KIND, {**slot.to_fields(), "active": 1}, env.sam.device, 1)
    receiver = Replica(3)
    return Case(SHOP_DOC, receiver, carry(env.sam, receiver, ("slots", "k1", raw)), "schema")


def text_value_instead_of_a_record(env: Env) -> Case:
    any_string = bytes([8 | 0x20]) + varuint(1) + var_string("reservations") + var_string("r-t")
    any_string += varuint(1) + bytes([119]) + var_string("free text")
    return Case(DOC, env.relay, yjs_update([struct_block(909, 0, [any_string])]), "shape")


def unknown_doc_kind(env: Env) -> Case:
    _, update = env.alice.book(Replica(env.alice.client_id()), DOC, "s1", 1, reservation_id="r-910")
    return Case("thing:x", Replica(3), update, "bad_doc")


def wrong_map_for_the_doc_kind(env: Env) -> Case:
    _, update = env.alice.book(Replica(env.alice.client_id()), DOC, "s1", 1, reservation_id="r-910")
    return Case(SHOP_DOC, Replica(3), update, "wrong_map")


def profile_map_in_a_bookings_doc(env: Env) -> Case:
    profile = UserProfile("Alice", None, None, None, env.alice.hlc())
    update = env.alice.put(env.phone(env.alice), DOC, [(profile, "p1")])
    return Case(DOC, env.relay, update, "wrong_map")


def record_of_another_kind_in_a_map(env: Env) -> Case:
    ev = StatusEvent("ev-x", env.res_a.id, "cancel", "alice", env.alice.hlc())
    raw = sign_record(DOC, "ev-x", ev.KIND, ev.to_fields(), env.alice.device, 1)
    return Case(DOC, env.relay, carry(env.alice, env.relay, ("reservations", "ev-x", raw)), "schema")


def missing_deps(env: Env) -> Case:
    phone = env.phone(env.alice)
    _, _skipped = env.alice.book(phone, DOC, "s1", 1)  # never delivered
    _, later = env.alice.book(phone, DOC, "s2", 1)
    return Case(DOC, env.relay, later, "missing_deps")


def overlapping_client_blocks(env: Env) -> Case:
    """Regression: two blocks for one client at the same clock made pycrdt store garbage bytes."""
    res = res_of(env.alice, "r-o")
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.alice.device, 1)
    cert = map_item("certs", env.alice.device.cert_id, env.alice.device.certificate)
    update = yjs_update(
        [struct_block(911, 0, [cert]), struct_block(911, 0, [map_item("reservations", res.id, raw)])]
    )
    return Case(DOC, Replica(3), update, "malformed")


def client_blocks_with_a_gap(env: Env) -> Case:
    """Regression: a block after a gap slipped past missing_deps, which saw only the merged range."""
    res = res_of(env.alice, "r-g")
    raw = sign_record(DOC, res.id, res.KIND, res.to_fields(), env.alice.device, 1)
    cert = map_item("certs", env.alice.device.cert_id, env.alice.device.certificate)
    update = yjs_update(
        [struct_block(912, 0, [cert]), struct_block(912, 5, [map_item("reservations", res.id, raw)])]
    )
    return Case(DOC, Replica(3), update, "malformed")


def garbage_bytes(env: Env) -> Case:
    return Case(DOC, env.relay, b"\x01\x02\x03", "malformed")


def cancel_of_another_customers_reservation(env: Env) -> Case:
    _, update = env.bob.event(env.phone(env.bob), DOC, env.res_a.id, "cancel")
    return Case(DOC, env.relay, update, "forbidden")


def staff_cancelling_a_customers_reservation(env: Env) -> Case:
    _, update = env.sam.event(env.phone(env.sam), DOC, env.res_a.id, "cancel")
    return Case(DOC, env.relay, update, "forbidden")


def event_naming_another_author(env: Env) -> Case:
    ev = StatusEvent("ev-n", env.res_b.id, "cancel", "bob", env.alice.hlc())
    return Case(DOC, env.relay, env.alice.put(env.phone(env.alice), DOC, [(ev, None)]), "forbidden")


def event_for_an_unknown_reservation(env: Env) -> Case:
    _, update = env.sam.event(env.phone(env.sam), DOC, "nobody-1", "confirm")
    return Case(DOC, env.relay, update, "unknown_reservation")


def staff_event_by_a_customer(env: Env) -> Case:
    _, update = env.bob.event(env.phone(env.bob), DOC, env.res_a.id, "confirm")
    return Case(DOC, env.relay, update, "forbidden")


def staff_event_by_staff_of_another_shop(env: Env) -> Case:
    _, update = env.stranger_staff.event(
        Replica(env.stranger_staff.client_id()), DOC, env.res_a.id, "decline"
    )
    return Case(DOC, env.relay, update, "forbidden")


def shop_profile_by_a_customer(env: Env) -> Case:
    profile = ShopProfile("Mine now", "", "", 0.0, 0.0, None, "", env.bob.hlc())
    return Case(
        SHOP_DOC,
        Replica(3),
        env.bob.put(Replica(env.bob.client_id()), SHOP_DOC, [(profile, None)]),
        "forbidden",
    )


def slot_template_by_staff_of_another_shop(env: Env) -> Case:
    slot = SlotTemplate("s1", "cut", "09:00", 30, 99, None, True, env.stranger_staff.hlc())
    update = env.stranger_staff.put(Replica(env.stranger_staff.client_id()), SHOP_DOC, [(slot, None)])
    return Case(SHOP_DOC, Replica(3), update, "forbidden")


def staff_list_edited_by_staff_not_owner(env: Env) -> Case:
    entry = StaffEntry("bob", "owner", True, env.sam.hlc())
    return Case(
        SHOP_DOC,
        Replica(3),
        env.sam.put(Replica(env.sam.client_id()), SHOP_DOC, [(entry, None)]),
        "forbidden",
    )


def category_by_a_shop_owner(env: Env) -> Case:
    cat = Category("barbers", "Barbers", None, env.olive.hlc())
    return Case(
        "catalog",
        Replica(3),
        env.olive.put(Replica(env.olive.client_id()), "catalog", [(cat, None)]),
        "forbidden",
    )


def shop_summary_of_another_shop_by_an_owner(env: Env) -> Case:
    row = ShopSummary("shop2", "Not mine", "barbers", "x", 0.0, 0.0, None, True, env.olive.hlc())
    return Case(
        "catalog",
        Replica(3),
        env.olive.put(Replica(env.olive.client_id()), "catalog", [(row, None)]),
        "forbidden",
    )


def user_doc_written_by_another_user(env: Env) -> Case:
    profile = UserProfile("Alice (really Bob)", None, None, None, env.bob.hlc())
    return Case(
        "user:alice",
        Replica(3),
        env.bob.put(Replica(env.bob.client_id()), "user:alice", [(profile, None)]),
        "forbidden",
    )


def user_doc_written_by_an_admin(env: Env) -> Case:
    """Private profiles belong to their user alone; the writer table gives admins no exception."""
    profile = UserProfile("Alice", None, None, None, env.ada.hlc())
    return Case(
        "user:alice",
        Replica(3),
        env.ada.put(Replica(env.ada.client_id()), "user:alice", [(profile, None)]),
        "forbidden",
    )


def arrival_clock_skew(env: Env) -> Case:
    ahead = env.world.device("alice", clock_ms=NOW_MS + 2 * 60_000)
    _, update = ahead.book(Replica(ahead.client_id()), DOC, "s1", 1, reservation_id="r-918")
    return Case(DOC, env.relay, update, "clock_skew", ArrivalPolicy(now_ms=NOW_MS))


def arrival_backdated(env: Env) -> Case:
    old = env.world.device("alice", valid_from_ms=NOW_MS - 40 * DAY_MS, clock_ms=NOW_MS - 31 * DAY_MS)
    _, update = old.book(Replica(old.client_id()), DOC, "s1", 1, reservation_id="r-918")
    return Case(DOC, env.relay, update, "backdated", ArrivalPolicy(now_ms=NOW_MS))


def arrival_revoked_certificate(env: Env) -> Case:
    revoked = env.alice.device.cert_id
    _, update = env.alice.book(env.phone(env.alice), DOC, "s1", 1)
    policy = ArrivalPolicy(now_ms=NOW_MS, is_revoked=lambda cert: cert.cert_id == revoked)
    return Case(DOC, env.relay, update, "revoked", policy)


def arrival_current_rights_narrowed(env: Env) -> Case:
    """Sam's certificate still says staff, but the relay's current view has removed him."""
    _, update = env.sam.event(env.phone(env.sam), DOC, env.res_b.id, "decline")
    current = {"sam": Rights("sam", False, frozenset(), frozenset())}
    return Case(DOC, env.relay, update, "forbidden", ArrivalPolicy(now_ms=NOW_MS, current_rights=current.get))


def arrival_unknown_user_has_no_staff_rights(env: Env) -> Case:
    _, update = env.sam.event(env.phone(env.sam), DOC, env.res_b.id, "no_show")
    return Case(
        DOC, env.relay, update, "forbidden", ArrivalPolicy(now_ms=NOW_MS, current_rights=lambda _: None)
    )


CASES: list[Callable[[Env], Case]] = [
    reservation_in_someone_elses_name,
    forged_stamp_signed_by_a_client,
    stamp_with_tampered_fields,
    stamp_resigned_by_another_key_under_the_relays_kid,
    stamp_signed_by_an_unknown_relay_key,
    stamp_for_an_unknown_reservation,
    relay_signed_reservation,
    record_under_an_expired_certificate,
    record_before_its_certificate_was_issued,
    record_under_a_certificate_from_a_foreign_relay_key,
    record_under_a_certificate_from_an_unknown_kid,
    certificate_stored_under_the_wrong_id,
    record_signed_under_a_certificate_not_in_the_document,
    tampered_field_under_a_valid_signature,
    record_replayed_under_another_key,
    reservation_replayed_under_another_key,
    record_replayed_into_another_doc,
    record_replayed_under_another_signer,
    rewritten_event,
    rewritten_reservation_by_a_fresh_insert,
    same_key_twice_in_one_update,
    deleted_record,
    wrong_type_party_as_text,
    wrong_type_bool_as_int,
    text_value_instead_of_a_record,
    unknown_doc_kind,
    wrong_map_for_the_doc_kind,
    profile_map_in_a_bookings_doc,
    record_of_another_kind_in_a_map,
    missing_deps,
    overlapping_client_blocks,
    client_blocks_with_a_gap,
    garbage_bytes,
    cancel_of_another_customers_reservation,
    staff_cancelling_a_customers_reservation,
    event_naming_another_author,
    event_for_an_unknown_reservation,
    staff_event_by_a_customer,
    staff_event_by_staff_of_another_shop,
    shop_profile_by_a_customer,
    slot_template_by_staff_of_another_shop,
    staff_list_edited_by_staff_not_owner,
    category_by_a_shop_owner,
    shop_summary_of_another_shop_by_an_owner,
    user_doc_written_by_another_user,
    user_doc_written_by_an_admin,
    arrival_clock_skew,
    arrival_backdated,
    arrival_revoked_certificate,
    arrival_current_rights_narrowed,
    arrival_unknown_user_has_no_staff_rights,
]


@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_disallowed_change_is_refused_and_leaves_the_replica_unchanged(build: Callable[[Env], Case]) -> None:
    env = make_env()
    case = build(env)
    err = assert_refused(case.doc, case.receiver, case.update, env.world.cache(), case.policy)
    assert err.code == case.code, str(err)


@pytest.mark.parametrize("kind", ["confirm", "decline", "no_show"])
def test_every_staff_event_kind_is_refused_from_a_customer(kind: str) -> None:
    env = make_env()
    _, update = env.bob.event(env.phone(env.bob), DOC, env.res_a.id, kind)
    assert assert_refused(DOC, env.relay, update, env.world.cache()).code == "forbidden"
    # ...and accepted from staff, so the refusal is about the author, not the record
    _, update = env.sam.event(env.phone(env.sam), DOC, env.res_a.id, kind)
    assert not receive(DOC, env.relay, update, env.world.cache()).noop


def test_one_bad_record_refuses_the_whole_update() -> None:
    env = make_env()
    good = res_of(env.alice, "r-good")
    bad = res_of(env.bob, "r-bad", customer="alice")
    update = env.bob.put(env.phone(env.bob), DOC, [(res_of(env.bob, "r-fine"), None), (bad, None)])
    update2 = env.alice.put(env.phone(env.alice), DOC, [(good, None)])
    assert not validate_update(DOC, env.relay, update2, env.world.cache()).noop  # fine on its own
    err = assert_refused(DOC, env.relay, merge_updates([update2, update]), env.world.cache())
    assert err.code == "forbidden"
    assert not env.relay.has_key("reservations", "r-good")
    assert not env.relay.has_key("reservations", "r-fine")


# --- what is allowed ------------------------------------------------------------------------------


def test_a_booking_carried_by_a_third_party_is_accepted_and_a_resend_is_a_noop() -> None:
    """Alice books offline; the shop's tablet syncs with her phone, then reaches the relay first."""
    env = make_env()
    cache = env.world.cache
    phone, tablet = env.phone(env.alice), env.phone(env.sam)
    receive(DOC, phone, env.relay.diff(phone.state_vector()), cache())
    res, _ = env.alice.book(phone, DOC, "s2", 3)
    # phone -> tablet: the tablet validates and applies alice's records as a carrier
    carried = receive(DOC, tablet, phone.diff(tablet.state_vector()), cache())
    assert [r.id for r in carried.new_reservations] == [res.id]
    assert tablet.get_bytes("reservations", res.id) == phone.get_bytes("reservations", res.id)
    # tablet -> relay: the tablet's diff carries alice's signed record; authorship is alice's
    forwarded = tablet.diff(env.relay.state_vector())
    result = receive(DOC, env.relay, forwarded, cache(), ArrivalPolicy(now_ms=NOW_MS))
    assert [r.id for r in result.new_reservations] == [res.id]
    (accepted,) = [r for r in result.records if r.root == "reservations"]
    assert accepted.author is not None and accepted.author.user_id == "alice"
    assert read_bookings(env.relay, DOC).reservations[res.id] == res
    # a re-send changes nothing, and says so
    before = snapshot(env.relay)
    again = receive(DOC, env.relay, forwarded, cache())
    assert again.noop
    assert snapshot(env.relay) == before


@pytest.mark.parametrize(
    ("who", "doc", "record"),
    [
        ("olive", SHOP_DOC, StaffEntry("sam", "staff", True, HLC)),
        ("sam", SHOP_DOC, SlotTemplate("s1", "cut", "09:00", 30, 3, (0, 1), True, HLC)),
        ("sam", SHOP_DOC, ShopProfile("Shop", "d", "a", 1.0, 2.0, "https://x", "9-5", HLC)),
        ("ada", "catalog", Category("barbers", "Barbers", None, HLC)),
        ("olive", "catalog", ShopSummary(SHOP, "Shop", "barbers", "x", 1.0, 2.0, 4.5, True, HLC)),
        ("alice", "user:alice", UserProfile("Alice", "a@x", None, "fr", HLC)),
    ],
)
def test_authorised_writers_are_accepted(who: str, doc: str, record: object) -> None:
    """The positive side of the writer table, so the refusals above are about rights, not records."""
    env = make_env()
    author: Author = getattr(env, who)
    assert isinstance(record, (StaffEntry, SlotTemplate, ShopProfile, Category, ShopSummary, UserProfile))
    record = replace(record, hlc=author.hlc())
    receiver = Replica(3)
    update = author.put(Replica(author.client_id()), doc, [(record, None)])
    # a shop's category must exist at arrival (unknown_category, tests/core/test_core_rules.py): none here
    policy = None if isinstance(record, ShopSummary) else ArrivalPolicy(now_ms=NOW_MS)
    result = receive(doc, receiver, update, env.world.cache(), policy)
    assert not result.noop
    assert list(read_map(receiver, parse_doc_id(doc), record.ROOT).values()) == [record]


def test_validation_does_not_modify_the_replica() -> None:
    env = make_env()
    before = snapshot(env.relay)
    _, update = env.bob.book(env.phone(env.bob), DOC, "s1", 1)
    result = validate_update(DocId.bookings(SHOP, "2027-01-15"), env.relay, update, env.world.cache())
    assert len(result.new_reservations) == 1
    assert snapshot(env.relay) == before


def test_reading_and_validating_never_create_maps() -> None:
    """Regression: pycrdt's ``Doc.get`` creates a missing top-level map, so validating a refused update
    (or computing a verdict) on a replica made ``to_py()`` grow empty maps it never received."""
    env = make_env()
    empty = Replica(950)
    _, update = env.stranger_staff.event(Replica(env.stranger_staff.client_id()), DOC, "nobody-1", "confirm")
    assert_refused(DOC, empty, update, env.world.cache())  # compares to_py() before and after
    read_bookings(empty, DOC)
    read_map(empty, parse_doc_id(SHOP_DOC), "slots")
    assert empty.to_py() == {} and empty.roots() == []
