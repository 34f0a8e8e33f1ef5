"""Build the fuzz corpus from real accounts: valid updates to mutate, and forged ones, each breaking
exactly one record rule, so the fuzzer reaches the validator with inputs that look right.

The forged updates are the hostile client's toolbox from docs/security.md: a bad signature, a
signature for another document, another user's identity, a clock far ahead or far behind, a stamp
not signed by the relay, a rewrite and a deletion of a stored record, an oversized record, an
unknown root, and status events the customer may not write.
"""

from __future__ import annotations

import itertools
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import SigningKey
from crdt_core.clientids import GENERATIONS, client_id_for
from crdt_core.engine import Replica
from crdt_core.hlc import Timestamp
from crdt_core.messages import Auth, Subscribe, Unsubscribe
from crdt_core.pop import Proof
from crdt_core.records import RELAY_SIGNER_PREFIX, sign_record
from crdt_core.schema import SCHEMA_VERSION, Reservation, StatusEvent, UserProfile
from crdt_core.yupdate import decode_update
from tests.fuzz.cases import Corpus
from tests.fuzz.generators import client_message
from tests.support.strategies import map_item, struct_block, yjs_update

DAY_MS = 86_400_000


def _scratch(state: bytes, client_id: int | None = None) -> Replica:
    """A replica holding ``state`` that writes under ``client_id`` (a signer's: crdt_core.clientids)."""
    replica = Replica(client_id)
    replica.apply_update(state)
    return replica


def _flip_signature(update_replica: Replica, author: Author, doc: str, record: Reservation) -> bytes:
    raw = bytearray(
        sign_record(doc, record.id, record.KIND, record.to_fields(), author.device, SCHEMA_VERSION)
    )
    raw[-5] ^= 0x01  # inside the 64-byte Ed25519 signature, the last element of the envelope
    entries = []
    if not update_replica.has_key("certs", author.device.cert_id):
        entries.append(("certs", author.device.cert_id, author.device.certificate))
    entries.append((record.ROOT, record.id, bytes(raw)))
    return update_replica.write(entries)


def build_corpus(
    *,
    bookings: str,
    user_doc: str,
    shop_doc: str,
    author: Author,
    other: Author,
    token: str,
    bookings_state: bytes,
    stored_reservation: str,
    victim_reservation: str,
    n_valid: int = 16,
    auth_proof: Proof | None = None,
) -> Corpus:
    """Valid and forged updates against the documents' current state (``bookings_state``).

    ``stored_reservation`` is one of the fuzzing user's reservations already stored by the relay
    (the target of rewrite/deletion); ``victim_reservation`` belongs to another user.
    """
    generations = itertools.count(1)

    def mine() -> Replica:
        """The author's replica of the day under a generation of its own: every update built here is
        independent of the others (the same generation would make two of them claim one Yjs id)."""
        return _scratch(bookings_state, author.client_id(next(generations) % GENERATIONS))

    valid: list[bytes] = []
    for i in range(n_valid):
        _, update = author.book(mine(), bookings, f"s{i % 3}", 1 + i % 2)
        valid.append(update)
    profile = UserProfile("Fuzz", None, None, None, author.hlc())
    valid.append(author.put(Replica(author.client_id()), user_doc, [(profile, "me")]))

    now = time.time_ns() // 1_000_000
    node = author.user_id[:32]
    forged: list[tuple[str, bytes]] = []

    def res(**over: object) -> Reservation:
        fields: dict[str, object] = {
            "id": f"f{len(forged)}x{now}",
            "slot": "s1",
            "party": 1,
            "customer": author.user_id,
            "hlc": author.hlc(),
            "note": None,
        }
        fields.update(over)
        return Reservation(**fields)  # type: ignore[arg-type]

    forged.append(("bad_signature", _flip_signature(mine(), author, bookings, res())))
    wrong_doc = res()
    raw = sign_record(
        shop_doc, wrong_doc.id, wrong_doc.KIND, wrong_doc.to_fields(), author.device, SCHEMA_VERSION
    )
    target = mine()
    entries = (
        []
        if target.has_key("certs", author.device.cert_id)
        else [("certs", author.device.cert_id, author.device.certificate)]
    )
    forged.append(("signed_for_other_doc", target.write([*entries, ("reservations", wrong_doc.id, raw)])))
    forged.append(
        (
            "other_identity",
            author.put(mine(), bookings, [(res(customer=other.user_id), None)]),
        )
    )
    future = str(Timestamp(now + 3_600_000, 0, node))
    forged.append(("clock_ahead", author.put(mine(), bookings, [(res(hlc=future), None)])))
    past = str(Timestamp(now - 90 * DAY_MS, 0, node))
    forged.append(("backdated", author.put(mine(), bookings, [(res(hlc=past), None)])))
    max_clock = str(Timestamp(9_999_999_999_999, 999_999, node))
    forged.append(("max_clock", author.put(mine(), bookings, [(res(hlc=max_clock), None)])))
    fake_relay = SigningKey("fuzz-fake", Ed25519PrivateKey.generate())
    forged.append(
        (
            "forged_stamp",
            write_stamps(
                _scratch(bookings_state, client_id_for(RELAY_SIGNER_PREFIX + fake_relay.kid, 0)),
                bookings,
                fake_relay,
                [stored_reservation],
                9_999,
                now,
            )[1],
        )
    )
    device_stamp = sign_record(
        bookings,
        f"{7:016d}",
        "stamp",
        {"no": 7, "reservation": stored_reservation, "at": now},
        author.device,
        SCHEMA_VERSION,
    )
    forged.append(("stamp_by_device", mine().write([("stamps", f"{7:016d}", device_stamp)])))
    forged.append(("rewrite", mine().write([("reservations", stored_reservation, b"tampered")])))
    stored = [i for i in decode_update(bookings_state).inserts if i.key == stored_reservation]
    if stored:
        ins = stored[0]
        forged.append(("deletion", yjs_update([], deletes={ins.client: [(ins.clock, 1)]})))
    cert_item = map_item("certs", author.device.cert_id, author.device.certificate)
    one = sign_record(
        bookings, "dup", "reservation", res(id="dup").to_fields(), author.device, SCHEMA_VERSION
    )
    two = sign_record(
        bookings, "dup", "reservation", res(id="dup", party=2).to_fields(), author.device, SCHEMA_VERSION
    )
    same_key = [cert_item, map_item("reservations", "dup", one), map_item("reservations", "dup", two)]
    forged.append(
        ("same_key_twice", yjs_update([struct_block(author.client_id(GENERATIONS - 1), 0, same_key)]))
    )
    forged.append(("oversized_record", author.put(mine(), bookings, [(res(note="n" * 20_000), None)])))
    forged.append(("unknown_root", mine().write([("evil", "k", b"\x93\x01\x02\x03")])))
    confirm = StatusEvent(
        id=f"ev{now}",
        reservation=stored_reservation,
        type="confirm",
        by=author.user_id,
        hlc=author.hlc(),
        reason=None,
    )
    forged.append(("confirm_by_customer", author.put(mine(), bookings, [(confirm, None)])))
    cancel = StatusEvent(
        id=f"cx{now}",
        reservation=victim_reservation,
        type="cancel",
        by=author.user_id,
        hlc=author.hlc(),
        reason=None,
    )
    forged.append(("cancel_other_customer", author.put(mine(), bookings, [(cancel, None)])))
    theirs = UserProfile("Not me", None, None, None, other.hlc())
    forged.append(("other_user_doc", other.put(Replica(other.client_id()), user_doc, [(theirs, "me")])))
    forged.append(
        (
            "shop_edit_by_customer",
            author.put(
                Replica(author.client_id()),
                shop_doc,
                [(UserProfile("x", None, None, None, author.hlc()), "p")],
            ),
        )
    )

    svs = (b"\x00", _scratch(bookings_state).state_vector(), Replica().state_vector())
    docs = (bookings, user_doc, shop_doc)
    frames = [Subscribe(d, sv).to_wire() for d in docs for sv in svs[:2]]
    frames += [client_message("upd", doc=bookings, uid=i, update=u) for i, u in enumerate(valid[:4])]
    frames += [client_message("upd", doc=bookings, uid=99, update=forged[0][1])]
    frames += [Unsubscribe(d).to_wire() for d in docs]
    frames += [Auth(token).to_wire()]
    if auth_proof is not None:  # the genuine proof for a bound token (valid for WINDOW_S)
        frames += [Auth(token, auth_proof.signature, auth_proof.at).to_wire()]
    return Corpus(
        docs=docs,
        user_id=author.user_id,
        other_user_id=other.user_id,
        token=token,
        updates=tuple(valid),
        forged=tuple(forged),
        state_vectors=svs,
        frames=tuple(frames),
    )
