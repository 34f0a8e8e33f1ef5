"""Attack classes as stateful properties: honest replicas and a relay model next to one adversary.

The model (crdt_core only, no sockets): customer phones, a staff phone and the shop's tablet (staff,
the usual carrier between peers) write real signed records into one bookings day, each under the
one Yjs client id its signer owns for that document (generation ``g``). A relay model validates
what reaches it with an ``ArrivalPolicy``, refuses a party over capacity (``party_too_large``, as
``relay.sync.hub`` does) and a re-send that differs from what it holds at the same Yjs id
(``equivocation``), and stamps each update's new claims under its own derived client id, in
``crdt_core.verdict.stamp_order``. Devices go offline, exchange state-vector diffs with each other
(split per writer, as peer sync does, peers judging them with ``ArrivalPolicy.for_peer``; each part
queued to be forwarded), upload their outbox and what they carry one update at a time, as one
flush, or as one bundled update, pull from the relay, and the owner changes capacities. One
adversary (a customer device that also acts as a peer and sees what carriers hold) performs one
attack class per test (all of them in ``test_mixed_attacks``), sending to the relay or to any
honest device: squatting a device's or the relay's next Yjs id; re-wrapping an honest record
(higher schema version, non-canonical msgpack, the other certificate of the same device key),
placed at its writer's own id where that hurts most; forged or replayed stamps; rewrites and
deletions; records and events in others' names; impossible parties; back-dating with an expired
certificate; equivocation (two records at one of its ids, to two replicas); replaying a device's
later record at its earlier Yjs id (``reorder``, an expected failure: see ``XFAIL``).

Invariants, after every step:

* an honest update is accepted by every honest receiver (relay or peer) unless it only arrived too
  early; so the relay and every replica agree on honest updates, and none is refused because of
  the adversary;
* no honest record is silently dropped: after a receiver applied an update, every honest record in
  it is there, byte for byte (a struct squatted at its Yjs id would hide it);
* the attack itself is refused where the design says so (relay and, for most, peers);
* no verdict puts more people in a slot than its capacity, and an impossible party (above the
  slot's capacity) neither holds nor waits for seats;
* stamps keep the tentative order of claims the relay received together: when a tentatively later
  claim holds the earlier stamp, it reached the relay in an earlier update (across a group commit:
  ``test_group_commit_keeps_tentative_order``, an expected failure);
* after a final full sync (everyone uploads and pulls; a replica whose copy still differs from the
  relay's takes the relay's state, as the client's rebuild does), every honest record is at the
  relay and every replica's verdict equals the relay's: state, waitlist position, stamp, finality.
  A staff event on a claim the relay refused (seen on a peer) can never be accepted and blocks the
  device's later writes under that Yjs id (``missing_deps``); the device then moves to the next
  generation, re-writing the rest.

Budget: ``ci`` runs 20 examples of 25 steps per test (about 20 s of CPU for the file); ``thorough``
2,000 examples of 40 steps per test, 22,000 attack cases in the 11 attack properties that run (plus
2,000 honest-only), about 200 s of CPU per test. ``ADVERSARY_EXAMPLES`` overrides the count and
``ADVERSARY_SHRINK=0`` skips shrinking (a failing run can otherwise shrink for minutes).
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import Phase, event, settings, strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import DeviceKey, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica, diff_update, merge_updates
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings, slot_templates
from crdt_core.records import RELAY_SIGNER_PREFIX, open_record, sign_record
from crdt_core.schema import (
    CERTS_ROOT,
    SCHEMA_VERSION,
    Reservation,
    SlotTemplate,
    Stamp,
    StatusEvent,
    TypedRecord,
    parse_doc_id,
    stamp_key,
)
from crdt_core.validation import ArrivalPolicy, ValidatedUpdate, validate_update
from crdt_core.verdict import ClaimState, Verdict, compute_verdict, exceeds_capacity, stamp_order
from crdt_core.yupdate import MapInsert, decode_update, encode_state_vector
from tests.support.crdt_factory import HOUR_MS, NOW_MS, World
from tests.support.strategies import DOC, RETRYABLE, SHOP, SHOP_DOC, SLOTS, map_item, struct_block, yjs_update

DAY = parse_doc_id(DOC).day
OTHER_DOC = f"bookings:{SHOP}:2027-01-16"
DAY_MS = 24 * HOUR_MS
#: Honest parties and capacities never collide with the party-size rule: every honest booking fits
#: its slot whatever capacity the owner sets, so no honest write is ever legitimately refused.
HONEST_PARTY = st.integers(1, 3)
CAPACITY = st.integers(3, 6)
#: The tentative order the verdict uses for unstamped claims.
TENTATIVE: Callable[[Reservation], tuple[str, str, str]] = lambda r: (r.hlc, r.customer, r.id)  # noqa: E731
TOO_LARGE: ClaimState | None = getattr(ClaimState, "TOO_LARGE", None)
#: The relay's default ``--max-party``.
MAX_PARTY = 20
PEER_POLICY = ArrivalPolicy.for_peer(NOW_MS)
UPLOAD = st.sampled_from(["each", "group", "bundle"])

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
#: Examples per attack test. ``thorough``: 2,000 for each of the 13 tests below, 26,000 in all.
EXAMPLES = {"thorough": 2000, "ci": 20}.get(PROFILE, 6)
STEPS = {"thorough": 40}.get(PROFILE, 25)
#: For gauging speed and for long local runs: ``ADVERSARY_EXAMPLES=500``.
EXAMPLES = int(os.environ.get("ADVERSARY_EXAMPLES", EXAMPLES))


def note(text: str) -> None:
    """A hypothesis event (statistics), also when a reproducer runs the model outside a test."""
    if currently_in_test_context():
        event(text)


def client_of(signer: str, generation: int = 0) -> int:
    """The Yjs client id a signer (certificate id or ``relay:<kid>``) writes under."""
    return client_id_for(signer, generation)


def author_client(author: Author, generation: int = 0) -> int:
    return client_of(author.device.cert_id, generation)


def sign(author: Author, record: TypedRecord, key: str, doc: str = DOC) -> bytes:
    return sign_record(doc, key, record.KIND, record.to_fields(), author.device, SCHEMA_VERSION)


def craft(client: int, clock: int, items: Sequence[tuple[str, str, bytes]]) -> bytes:
    """A hand-made update: ``items`` as consecutive fresh map inserts at ``client:clock``."""
    return yjs_update([struct_block(client, clock, [map_item(r, k, v) for r, k, v in items])])


def inserts(update: bytes) -> list[MapInsert]:
    try:
        return decode_update(update).inserts
    except Exception:  # noqa: BLE001 - a crafted update may not decode; validation says why
        return []


_RANK = {CERTS_ROOT: 0, "reservations": 1, "events": 2, "stamps": 3}


def split_by_client(update: bytes) -> list[bytes]:
    """One part per Yjs client id (one writer since ids are bound to signers), dependencies first."""
    decoded = decode_update(update)
    if len(decoded.ranges) <= 1:
        return [update] if decoded.ranges else []
    rank: dict[int, int] = {}
    for ins in decoded.inserts:
        rank[ins.client] = min(rank.get(ins.client, 9), _RANK.get(ins.root, 9))
    parts: list[tuple[int, int, bytes]] = []
    for client, (start, _) in decoded.ranges.items():
        known = {c: (start if c == client else end) for c, (_, end) in decoded.ranges.items()}
        parts.append((rank.get(client, 9), client, diff_update(update, encode_state_vector(known))))
    return [part for _, _, part in sorted(parts)]


def loose_pack(obj: Any, style: int) -> bytes:
    """msgpack with the same values in non-canonical forms: wide ints (bit 0), str16 (bit 1), bin32
    (bit 2), array16 (bit 3), map16 with reversed keys (bit 4); nested values too."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, float):
        return msgpack.packb(obj)  # type: ignore[no-any-return]
    if isinstance(obj, int):
        if style & 1:
            return b"\xcf" + struct.pack(">Q", obj) if obj >= 0 else b"\xd3" + struct.pack(">q", obj)
        return msgpack.packb(obj)  # type: ignore[no-any-return]
    if isinstance(obj, str):
        raw = obj.encode()
        if style & 2:
            return b"\xda" + struct.pack(">H", len(raw)) + raw
        return msgpack.packb(obj)  # type: ignore[no-any-return]
    if isinstance(obj, bytes):
        if style & 4:
            return b"\xc6" + struct.pack(">I", len(obj)) + obj
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    if isinstance(obj, list):
        head = b"\xdc" + struct.pack(">H", len(obj)) if style & 8 else msgpack.packb(len(obj) * [0])[:1]
        if not style & 8 and len(obj) >= 16:
            head = b"\xdc" + struct.pack(">H", len(obj))
        return head + b"".join(loose_pack(x, style) for x in obj)
    if isinstance(obj, dict):
        keys = sorted(obj, key=lambda k: str(k).encode(), reverse=bool(style & 16))
        head = (
            b"\xde" + struct.pack(">H", len(obj))
            if style & 16 or len(obj) >= 16
            else bytes([0x80 | len(obj)])
        )
        return head + b"".join(loose_pack(k, style) + loose_pack(obj[k], style) for k in keys)
    raise TypeError(type(obj))


@dataclass
class Node:
    """An honest replica of the day (and of the shop document, for capacities)."""

    name: str
    author: Author
    staff: bool
    day: Replica
    shop: Replica
    generation: int = 0
    online: bool = True
    outbox: list[bytes] = field(default_factory=list)
    """Own updates the relay has not accepted yet."""
    carried: list[bytes] = field(default_factory=list)
    """Parts received from peers, to forward to the relay."""
    held: list[bytes] = field(default_factory=list)
    """Updates refused only for arriving early, retried after the next delivery."""


@dataclass(frozen=True)
class Attack:
    relay_codes: frozenset[str] | None
    """Refusal codes the relay must answer (None: it may accept, the attack is judged by its effects)."""
    peer_codes: frozenset[str] | None
    """The same for a peer (None: a peer may store it; the relay decides)."""


def _codes(*codes: str) -> frozenset[str]:
    return frozenset(codes)


ATTACKS: dict[str, Attack] = {
    "squat_device": Attack(_codes("foreign_client"), _codes("foreign_client")),
    "squat_relay": Attack(_codes("foreign_client"), _codes("foreign_client")),
    # ``rewrite``: the original already holds the key there (the attack came too late)
    "rewrap_version": Attack(
        _codes("bad_signature", "schema", "foreign_client", "rewrite", "equivocation"),
        _codes("bad_signature", "schema", "foreign_client", "rewrite"),
    ),
    "rewrap_framing": Attack(
        _codes("bad_signature", "schema", "foreign_client", "rewrite", "equivocation"),
        _codes("bad_signature", "schema", "foreign_client", "rewrite"),
    ),
    "reattribute": Attack(
        _codes("bad_signature", "foreign_client", "rewrite", "equivocation"),
        _codes("bad_signature", "foreign_client", "rewrite"),
    ),
    "forge_stamp": Attack(
        _codes("relay_only", "bad_signature", "schema", "foreign_client"),
        _codes("relay_only", "bad_signature", "schema", "foreign_client"),
    ),
    "rewrite_delete": Attack(
        _codes("rewrite", "deletion", "shape", "foreign_client"),
        _codes("rewrite", "deletion", "shape", "foreign_client"),
    ),
    "in_others_name": Attack(_codes("forbidden"), _codes("forbidden")),
    "impossible_party": Attack(_codes("party_too_large"), None),
    "backdate": Attack(
        _codes("backdated", "certificate_expired"), _codes("backdated", "certificate_expired")
    ),
    "equivocation": Attack(None, None),
    "reorder": Attack(None, None),
}


class AdversaryMachine(RuleBasedStateMachine):
    ATTACK_KINDS: tuple[str, ...] = tuple(ATTACKS)
    CHECK_STAMP_ORDER = True
    CHECK_GROUP_ORDER = False
    CHECK_TOO_LARGE = True

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.cache = self.world.cache()
        self.relay_signer = RELAY_SIGNER_PREFIX + self.world.relay.kid
        self.relay_day = Replica(client_of(self.relay_signer, 0))
        self.relay_shop = Replica(client_of(self.relay_signer, 1))
        self.owner = self.world.device("owner1", owner_of=[SHOP])
        self.owner_phone = Replica(author_client(self.owner))
        self.next_stamp = 1
        self.group_no = self.update_no = 0
        self.arrival: dict[str, tuple[int, int]] = {}
        """Reservation id -> the relay group commit and the update it arrived in."""
        self.honest: dict[tuple[str, str], bytes] = {}
        """Every record an honest writer (device or relay) wrote, by (root, key)."""
        self.adversarial: dict[tuple[str, str, bytes], str] = {}
        """Every record (not certificate) the adversary sent, with the attack that made it."""
        self.nodes: list[Node] = []
        self._verdicts: dict[tuple[int, bytes, bytes], Verdict] = {}
        for slot in SLOTS:
            self._write_template(slot, 4)
        # the adversary: a customer with a valid certificate, and the same user's expired one
        self.mal = self.world.device("mallory")
        self.mal_old = self.world.device(
            "mallory",
            valid_from_ms=NOW_MS - 3 * DAY_MS,
            valid_until_ms=NOW_MS - 2 * DAY_MS,
            clock_ms=NOW_MS - 5 * DAY_MS // 2,
        )
        self.mal_client = author_client(self.mal)
        # a customer who renewed: two certificates for one device key; it writes under the new one
        c0 = self.world.device("c0")
        old_cert = issue_certificate(
            self.world.relay,
            user_id="c0",
            roles=[],
            owner_of=[],
            staff_of=[],
            device_public_key=public_bytes(c0.device.private),
            issued_at_ms=NOW_MS - 2 * HOUR_MS,
            expires_at_ms=NOW_MS + 22 * HOUR_MS,
        )
        self.c0_alt = DeviceKey(c0.device.private, old_cert)
        self._add_node("c0", c0, staff=False)

    # --- plumbing -------------------------------------------------------------------------------

    def _write_template(self, slot: str, capacity: int) -> None:
        template = SlotTemplate(slot, "cut", "10:00", 30, capacity, None, True, self.owner.hlc())
        update = self.owner.put(self.owner_phone, SHOP_DOC, [(template, None)])
        validate_update(SHOP_DOC, self.relay_shop, update, self.cache)
        self.relay_shop.apply_update(update)

    def _add_node(self, name: str, author: Author, *, staff: bool) -> None:
        node = Node(name, author, staff, Replica(author_client(author)), Replica())
        node.shop.apply_update(self.relay_shop.encode_state())
        self.nodes.append(node)

    def _capacities(self, shop: Replica) -> dict[str, int]:
        assert DAY is not None
        return {slot: t.capacity_on(DAY) for slot, t in slot_templates(shop, SHOP_DOC).items()}

    def _refuse_impossible_parties(self, result: ValidatedUpdate) -> ValidationError | None:
        """The relay's arrival rule for parties (``party_too_large``): over its ``--max-party``, or
        over an open slot's capacity that day in the relay's copy of the shop document."""
        capacities = self._capacities(self.relay_shop)
        for res in result.new_reservations:
            if res.party > MAX_PARTY or exceeds_capacity(res.party, capacities.get(res.slot, 0)):
                return ValidationError("party_too_large", f"a party of {res.party} in {res.slot}")
        return None

    def _register(self, update: bytes) -> None:
        for ins in inserts(update):
            self.honest[(ins.root, ins.key)] = ins.value

    def _honest_missing(self, replica: Replica, update: bytes) -> list[str]:
        """Honest records of ``update`` that ``replica`` does not hold as written."""
        return [
            f"{ins.root}/{ins.key}"
            for ins in inserts(update)
            if self.honest.get((ins.root, ins.key)) == ins.value
            and replica.get_bytes(ins.root, ins.key) != ins.value
        ]

    @staticmethod
    def _resend_conflict(replica: Replica, update: bytes) -> str | None:
        """The relay's re-send rule: a struct at an id it holds must carry what it holds."""
        clocks = replica.state_clocks()
        for ins in inserts(update):
            if ins.clock < clocks.get(ins.client, 0) and replica.get_bytes(ins.root, ins.key) != ins.value:
                return f"{ins.client}:{ins.clock}"
        return None

    def _validate(
        self, replica: Replica, update: bytes, policy: ArrivalPolicy | None, where: str
    ) -> ValidatedUpdate | ValidationError:
        """Validate and apply as ``where`` (``relay``, a device's name, or ``pull``) would."""
        if where == "relay" and self._resend_conflict(replica, update) is not None:
            return ValidationError("equivocation", "a different struct at a held id")
        try:
            result = validate_update(DOC, replica, update, self.cache, policy)
        except ValidationError as exc:
            return exc
        refused = self._refuse_impossible_parties(result) if where == "relay" else None
        if refused is not None:
            return refused
        replica.apply_update(update)
        missing = self._honest_missing(replica, update)
        assert not missing, f"honest records silently dropped at {where}: {missing}"
        if where != "pull":
            for rec in result.records:
                kind = self.adversarial.get((rec.root, rec.key, replica.get_bytes(rec.root, rec.key) or b""))
                if kind == "impossible_party" and self._fits_now(rec.record):
                    kind = None
                if kind is not None:
                    spec = ATTACKS[kind]
                    codes = spec.relay_codes if where == "relay" else spec.peer_codes
                    assert codes is None, f"{kind} accepted by {where}"
        return result

    def _judge_honest(self, where: str, replica: Replica, update: bytes, outcome: object) -> None:
        if isinstance(outcome, ValidationError) and outcome.code not in RETRYABLE:
            missing = self._honest_missing(replica, update)
            assert not missing, f"{where} refused honest records {missing}: {outcome.code} {outcome}"

    # --- the relay --------------------------------------------------------------------------------

    def _relay_group(self, updates: Sequence[bytes]) -> list[ValidatedUpdate | ValidationError]:
        """Updates that share one group commit: each is validated and applied, and its new claims
        stamped in the core's stamp order, before the next."""
        self.group_no += 1
        outcomes: list[ValidatedUpdate | ValidationError] = []
        for update in updates:
            self.update_no += 1
            outcome = self._validate(self.relay_day, update, ArrivalPolicy(now_ms=NOW_MS), "relay")
            outcomes.append(outcome)
            if isinstance(outcome, ValidatedUpdate) and outcome.new_reservations:
                ordered = [r.id for r in stamp_order(outcome.new_reservations)]
                for rid in ordered:
                    self.arrival[rid] = (self.group_no, self.update_no)
                _, stamps = write_stamps(
                    self.relay_day, DOC, self.world.relay, ordered, self.next_stamp, NOW_MS
                )
                self.next_stamp += len(ordered)
                self._register(stamps)
        return outcomes

    def _upload(self, node: Node, *, how: str) -> None:
        """The node sends its outbox and what it carries: one update at a time (``each``), as one
        flush sharing a group commit (``group``), or as one bundled update (``bundle``, what a
        "send what the relay lacks" diff is; refused whole, the node falls back to one at a time).
        The relay's answers settle each entry."""
        sent = [(u, True) for u in node.outbox] + [(u, False) for u in node.carried]
        if not sent:
            return
        if how == "bundle" and len(sent) > 1:
            if isinstance(self._relay_group([merge_updates(u for u, _ in sent)])[0], ValidatedUpdate):
                node.outbox, node.carried = [], []
                return
            note("a bundle was refused whole; its entries went one by one")
        if how == "group":
            outcomes = self._relay_group([u for u, _ in sent])
        else:
            outcomes = [self._relay_group([u])[0] for u, _ in sent]
        node.outbox, node.carried = [], []
        for (update, own), outcome in zip(sent, outcomes, strict=True):
            self._judge_honest("the relay", self.relay_day, update, outcome)
            if isinstance(outcome, ValidationError) and outcome.code in RETRYABLE:
                (node.outbox if own else node.carried).append(update)

    def _pull(self, node: Node) -> None:
        """The node catches up from the relay (not re-judged by arrival rules)."""
        update = self.relay_day.diff(node.day.state_vector())
        outcome = self._validate(node.day, update, None, "pull")
        if isinstance(outcome, ValidationError):
            # only a copy that diverged from the relay's (an equivocation, a record the relay
            # refused) can refuse the relay's state; the client then rebuilds from the relay
            assert self._diverged(node), f"{node.name} refused the relay's state: {outcome.code} {outcome}"
            self._rebuild(node)
        else:
            self._retry_held(node)
        node.shop.apply_update(self.relay_shop.diff(node.shop.state_vector()))

    def _diverged(self, node: Node) -> bool:
        clocks = self.relay_day.state_clocks()
        for ins in inserts(node.day.encode_state()):
            held = self.relay_day.get_bytes(ins.root, ins.key)
            if ins.clock < clocks.get(ins.client, 0) and held != ins.value:
                return True
            if (ins.root, ins.key) not in self.honest and held is None:
                return True  # holds an adversary record the relay does not
        return False

    def _rebuild(self, node: Node) -> None:
        """Take the relay's state; re-write own records the relay lacks under the next generation."""
        note("a replica rebuilt from the relay's state")
        node.generation += 1
        fresh = Replica(author_client(node.author, node.generation))
        fresh.apply_update(self.relay_day.encode_state())
        own = [
            (ins.root, ins.key, ins.value)
            for update in node.outbox
            for ins in inserts(update)
            if ins.root != CERTS_ROOT and not fresh.has_key(ins.root, ins.key) and not self._orphaned(ins)
        ]
        cert = node.author.device
        if own and not fresh.has_key(CERTS_ROOT, cert.cert_id):
            own.insert(0, (CERTS_ROOT, cert.cert_id, cert.certificate))
        node.day, node.held, node.carried = fresh, [], []
        node.outbox = [fresh.write(own)] if own else []
        for update in node.outbox:
            self._register(update)

    def _fits_now(self, record: object) -> bool:
        """An impossible party that a capacity raise made possible is an ordinary claim now."""
        if not isinstance(record, Reservation):
            return False
        capacity = self._capacities(self.relay_shop).get(record.slot, 0)
        return record.party <= MAX_PARTY and not exceeds_capacity(record.party, capacity)

    def _orphaned(self, ins: MapInsert) -> bool:
        """An honest event about a claim the adversary made and the relay refused (staff may decline
        what they saw on a peer): it can never be accepted, and the client drops it with that
        claim. Forgotten as an honest record."""
        if ins.root != "events":
            return False
        rid = str(open_record(ins.value).fields.get("reservation"))
        dead = (
            self.relay_day.get_bytes("reservations", rid) is None and ("reservations", rid) not in self.honest
        )
        if dead:
            self.honest.pop((ins.root, ins.key), None)
        return dead

    def _deliver_to_node(self, node: Node, update: bytes) -> ValidatedUpdate | ValidationError:
        outcome = self._validate(node.day, update, PEER_POLICY, node.name)
        if isinstance(outcome, ValidationError):
            if outcome.code in RETRYABLE:
                node.held.append(update)
        else:
            if not outcome.noop:
                node.carried.append(update)
            self._retry_held(node)
        return outcome

    def _retry_held(self, node: Node) -> None:
        progress = True
        while progress and node.held:
            progress = False
            for update in list(node.held):
                outcome = self._validate(node.day, update, PEER_POLICY, node.name)
                if isinstance(outcome, ValidationError) and outcome.code in RETRYABLE:
                    continue
                self._judge_honest(node.name, node.day, update, outcome)
                node.held.remove(update)
                progress = True
                if isinstance(outcome, ValidatedUpdate) and not outcome.noop:
                    node.carried.append(update)

    def _replicas(self) -> list[tuple[str, Replica, Replica]]:
        return [("relay", self.relay_day, self.relay_shop)] + [(n.name, n.day, n.shop) for n in self.nodes]

    def _verdict(self, k: int) -> Verdict:
        _, day, shop = self._replicas()[k]
        key = (k, day.state_vector() + day.encode_state(), shop.state_vector())
        if key not in self._verdicts:
            self._verdicts[key] = compute_verdict(read_bookings(day, DOC), self._capacities(shop))
        return self._verdicts[key]

    # --- honest histories -------------------------------------------------------------------------

    @initialize(customers=st.integers(1, 2))
    def make_devices(self, customers: int) -> None:
        for i in range(1, customers + 1):
            self._add_node(f"c{i}", self.world.device(f"c{i}"), staff=False)
        self._add_node("staff", self.world.device("staff1", staff_of=[SHOP]), staff=True)
        self._add_node("tablet", self.world.device("tablet1", staff_of=[SHOP]), staff=True)

    def _write(self, node: Node, update: bytes) -> None:
        self._register(update)
        node.outbox.append(update)

    def _pick(self, nodes: Sequence[Node], index: int) -> Node:
        return nodes[index % len(nodes)]

    @rule(who=st.integers(0, 5), slot=st.sampled_from(SLOTS), party=HONEST_PARTY)
    def book(self, who: int, slot: str, party: int) -> None:
        node = self._pick(self.nodes, who)
        _, update = node.author.book(node.day, DOC, slot, party)
        self._write(node, update)

    @rule(
        bookings=st.lists(
            st.tuples(st.integers(0, 5), st.sampled_from(SLOTS), HONEST_PARTY), min_size=2, max_size=4
        )
    )
    def book_several(self, bookings: list[tuple[int, str, int]]) -> None:
        """A busy minute: several devices book, offline or not yet synced."""
        for who, slot, party in bookings:
            self.book(who, slot, party)

    @rule(who=st.integers(0, 5), pick=st.integers(0, 50))
    def cancel_own(self, who: int, pick: int) -> None:
        node = self._pick(self.nodes, who)
        state = read_bookings(node.day, DOC)
        done = {e.reservation for e in state.events.values() if e.type == "cancel"}
        own = sorted(
            r.id
            for r in state.reservations.values()
            if r.customer == node.author.user_id and r.id not in done
        )
        if own:
            _, update = node.author.event(node.day, DOC, own[pick % len(own)], "cancel")
            self._write(node, update)

    @rule(
        who=st.integers(0, 5),
        pick=st.integers(0, 50),
        kind=st.sampled_from(["confirm", "decline", "no_show"]),
    )
    def staff_event(self, who: int, pick: int, kind: str) -> None:
        node = self._pick([n for n in self.nodes if n.staff], who)
        claims = sorted(read_bookings(node.day, DOC).reservations)
        if claims:
            _, update = node.author.event(node.day, DOC, claims[pick % len(claims)], kind)
            self._write(node, update)

    @rule(slot=st.sampled_from(SLOTS), capacity=CAPACITY)
    def change_capacity(self, slot: str, capacity: int) -> None:
        self._write_template(slot, capacity)

    @rule(who=st.integers(0, 5))
    def toggle_online(self, who: int) -> None:
        node = self._pick(self.nodes, who)
        node.online = not node.online

    @rule(who=st.integers(0, 5), how=UPLOAD)
    def upload(self, who: int, how: str) -> None:
        online = [n for n in self.nodes if n.online]
        if online:
            self._upload(self._pick(online, who), how=how)

    @rule(who=st.integers(0, 5))
    def pull(self, who: int) -> None:
        online = [n for n in self.nodes if n.online]
        if online:
            self._pull(self._pick(online, who))

    @rule(a=st.integers(0, 5), b=st.integers(0, 5), tablet=st.booleans())
    def peer_exchange(self, a: int, b: int, tablet: bool) -> None:
        """Two devices meet (often one of them the shop's tablet) and swap state-vector diffs."""
        src = self.nodes[-1] if tablet else self._pick(self.nodes, a)
        dst = self._pick([n for n in self.nodes if n is not src], b)
        for one, other in ((src, dst), (dst, src)):
            for part in split_by_client(one.day.diff(other.day.state_vector())):
                outcome = self._deliver_to_node(other, part)
                self._judge_honest(other.name, other.day, part, outcome)

    @rule(how=UPLOAD)
    def tablet_round(self, how: str) -> None:
        """The shop's tablet meets every phone in the shop, then forwards what it carries."""
        for b in range(len(self.nodes) - 1):
            self.peer_exchange(0, b, True)
        if self.nodes[-1].online:
            self._upload(self.nodes[-1], how=how)

    @rule()
    def final_sync(self) -> None:
        """Everyone syncs with the relay; a copy that still differs takes the relay's state."""
        for node in self.nodes:
            node.online = True
        for _ in range(3):
            for node in self.nodes:
                self._upload(node, how="group")
                self._pull(node)
        for node in self.nodes:
            if any(self._orphaned(i) for u in node.outbox for i in inserts(u)):
                # its event on a claim the relay refused stays unacceptable, and every later write
                # under this Yjs id waits behind it: the device moves to the next generation
                note("a device moved on from its event on a refused claim")
                self._rebuild(node)
                self._upload(node, how="group")
            assert not node.outbox, f"{node.name}'s writes never reached the relay"
        for node in self.nodes:
            self._pull(node)
            if node.day.to_py() != self.relay_day.to_py():
                assert self._diverged(node)
                self._rebuild(node)
                self._upload(node, how="group")
        for node in self.nodes:
            self._pull(node)
            node.carried, node.held = [], []
        # (a certificate matters only with the records it signs: one that came only with an orphaned
        # event need not arrive)
        lost = [
            f"{r}/{k}"
            for (r, k), v in self.honest.items()
            if r != CERTS_ROOT and self.relay_day.get_bytes(r, k) != v
        ]
        assert not lost, f"honest records never reached the relay: {lost}"
        relay = self._verdict(0)
        for k, node in enumerate(self.nodes, start=1):
            assert node.day.to_py() == self.relay_day.to_py(), node.name
            mine = self._verdict(k)
            for rid, claim in relay.claims.items():
                got = mine.claims[rid]
                assert (got.state, got.position, got.stamp, got.final) == (
                    claim.state,
                    claim.position,
                    claim.stamp,
                    claim.final,
                ), (node.name, rid)
        assert all(c.stamp is not None and c.final for c in relay.claims.values())
        note(f"final sync with {len(relay.claims)} claims")

    def teardown(self) -> None:
        """Every example ends with a final sync, unless a step already failed (hypothesis calls
        teardown while that failure propagates, so ``sys.exc_info()`` shows it)."""
        if self.nodes and sys.exc_info()[1] is None:
            self.final_sync()

    # --- the adversary ----------------------------------------------------------------------------

    def _target(self, index: int) -> tuple[str, Replica]:
        replicas = [("relay", self.relay_day)] + [(n.name, n.day) for n in self.nodes]
        return replicas[index % len(replicas)]

    def _with_cert(self, target: Replica, device: DeviceKey, client: int) -> list[tuple[str, str, bytes]]:
        del client
        return (
            []
            if target.has_key(CERTS_ROOT, device.cert_id)
            else [(CERTS_ROOT, device.cert_id, device.certificate)]
        )

    def _mal_booking(
        self, target: Replica, party: int = 1, author: Author | None = None
    ) -> list[tuple[str, str, bytes]]:
        author = author or self.mal
        res = Reservation(self.mal._new_id(), SLOTS[0], party, author.user_id, author.hlc(), None)
        return self._with_cert(target, author.device, 0) + [(res.ROOT, res.id, sign(author, res, res.id))]

    def _in_flight(self) -> list[bytes]:
        """Honest updates not yet everywhere: what a carrier or an eavesdropper gets to see."""
        return [
            u
            for n in self.nodes
            for u in n.outbox + n.carried
            if inserts(u) and all(self.honest.get((i.root, i.key)) == i.value for i in inserts(u))
        ]

    def _send(self, kind: str, target_index: int, update: bytes) -> None:
        spec = ATTACKS[kind]
        for ins in inserts(update):
            if ins.root != CERTS_ROOT and self.honest.get((ins.root, ins.key)) != ins.value:
                self.adversarial.setdefault((ins.root, ins.key, ins.value), kind)
        name, _ = self._target(target_index)
        if name == "relay":
            outcome = self._relay_group([update])[0]
            codes = spec.relay_codes
        else:
            node = next(n for n in self.nodes if n.name == name)
            outcome = self._deliver_to_node(node, update)
            if update in node.held:
                node.held.remove(update)  # the adversary may send it again; nobody waits for it
            codes = spec.peer_codes
        where = "the relay" if name == "relay" else "a peer"
        if isinstance(outcome, ValidationError):
            note(f"{kind}: {where} refused with {outcome.code}")
            if codes is not None and outcome.code not in RETRYABLE:
                assert outcome.code in codes, (
                    f"{kind} at {name}: unexpected refusal {outcome.code}: {outcome}"
                )
        elif not outcome.noop:
            note(f"{kind}: {where} stored it")

    def _attack_squat(self, kind: str, target_index: int, victim: int) -> None:
        _, replica = self._target(target_index)
        if kind == "squat_relay":
            client = self.relay_day.client_id
        else:
            client = self._pick(self.nodes, victim).day.client_id
        clock = replica.state_clocks().get(client, 0)
        self._send(kind, target_index, craft(client, clock, self._mal_booking(replica)))

    def _runs(self, in_flight: bool, signers: Sequence[str] = ()) -> list[list[MapInsert]]:
        """Honest records the adversary can see: updates still on their way (a carrier holds them;
        one writer each), or any record a device holds, one at a time. ``signers``: only those."""
        if in_flight:
            runs = [inserts(u) for u in self._in_flight()]
        else:
            held = [i for n in self.nodes for i in inserts(n.day.encode_state()) if i.root != CERTS_ROOT]
            runs = [[i] for i in held if self.honest.get((i.root, i.key)) == i.value]
        if signers:
            runs = [
                r
                for r in runs
                if any(open_record(i.value).signer in signers for i in r if i.root != CERTS_ROOT)
            ]
        return [r for r in runs if any(i.root != CERTS_ROOT for i in r)]

    def _attack_rewrap(self, kind: str, target_index: int, pick: int, in_flight: bool, own_id: bool) -> None:
        """Re-wrap someone's record: a higher schema version, a non-canonical encoding, or (c0 has
        two certificates for one key) the other certificate as signer; placed at the writer's own
        Yjs id where the target takes it next (the most harmful place), else at the adversary's."""
        _, replica = self._target(target_index)
        c0 = self.nodes[0].author.device
        both = (c0.cert_id, self.c0_alt.cert_id)
        runs = self._runs(in_flight, both if kind == "reattribute" else ())
        if not runs:
            return
        run = runs[pick % len(runs)]
        items: list[tuple[str, str, bytes]] = []
        for ins in run:
            value = ins.value
            if ins.root != CERTS_ROOT:
                outer = msgpack.unpackb(value, raw=False)
                if kind == "rewrap_version":
                    outer[1] = outer[1] + 1 + pick % 900
                    value = msgpack.packb(outer, use_bin_type=True)
                elif kind == "rewrap_framing" and pick % 3 == 0:
                    # canonical bytes of an equal value of another type: 2.0 or True for an int
                    index = (pick // 3) % 2
                    outer[index] = float(outer[index]) if pick & 64 or outer[index] != 1 else True
                    value = msgpack.packb(outer, use_bin_type=True)
                elif kind == "rewrap_framing":
                    if pick & 16:  # the field map too
                        outer[3] = loose_pack(msgpack.unpackb(outer[3], raw=False), pick)
                    value = loose_pack(outer, pick % 15 + 1)  # int, str, bin or array forms
                    assert value != ins.value
                else:
                    outer[4] = both[1] if outer[4] == both[0] else both[0]
                    value = msgpack.packb(outer, use_bin_type=True)
            items.append((ins.root, ins.key, value))
        clocks = replica.state_clocks()
        if kind == "reattribute":
            signer = c0 if msgpack.unpackb(items[-1][2], raw=False)[4] == both[0] else self.c0_alt
            items = self._with_cert(replica, signer, 0) + [i for i in items if i[0] != CERTS_ROOT]
            client = self.mal_client if own_id else client_of(signer.cert_id)
            self._send(kind, target_index, craft(client, clocks.get(client, 0), items))
        elif own_id or run[0].clock != clocks.get(run[0].client, 0):
            items = [i for i in items if i[0] != CERTS_ROOT]
            signer_id = open_record(run[-1].value).signer  # its certificate goes with it
            cert = next((n.author.device for n in self.nodes if n.author.device.cert_id == signer_id), None)
            if cert is not None:
                items = self._with_cert(replica, cert, 0) + items
            self._send(kind, target_index, craft(self.mal_client, clocks.get(self.mal_client, 0), items))
        else:
            self._send(kind, target_index, craft(run[0].client, run[0].clock, items))

    def _attack_forge_stamp(self, target_index: int, variant: int) -> None:
        _, replica = self._target(target_index)
        state = read_bookings(replica, DOC)
        items = []
        if state.reservations:
            rid = sorted(state.reservations)[variant % len(state.reservations)]
        else:
            items = self._mal_booking(replica)
            rid = items[-1][1]
        no = max(state.stamps, default=0) + 1
        stamp = Stamp(no, rid, NOW_MS)
        key = stamp_key(no)
        fields = stamp.to_fields()
        if variant % 4 == 0:  # signed by the adversary
            raw = sign_record(DOC, key, Stamp.KIND, fields, self.mal.device, SCHEMA_VERSION)
        elif variant % 4 == 1:  # claims the relay, signed by the adversary
            raw = sign_record(DOC, key, Stamp.KIND, fields, self.mal.device, SCHEMA_VERSION)
            outer = msgpack.unpackb(raw, raw=False)
            outer[4] = self.relay_signer
            raw = msgpack.packb(outer, use_bin_type=True)
        elif variant % 4 == 2:  # a real relay stamp from another day, replayed here
            raw = sign_record(OTHER_DOC, key, Stamp.KIND, fields, self.world.relay, SCHEMA_VERSION)
        else:  # a real relay stamp of this day, under another number's key
            if not state.stamps:
                return
            old = replica.get_bytes("stamps", stamp_key(min(state.stamps)))
            assert old is not None
            raw = old
        items = self._with_cert(replica, self.mal.device, 0) + [i for i in items if i[0] != CERTS_ROOT]
        items.append(("stamps", key, raw))
        clock = replica.state_clocks().get(self.mal_client, 0)
        self._send("forge_stamp", target_index, craft(self.mal_client, clock, items))

    def _attack_rewrite(self, target_index: int, variant: int) -> None:
        _, replica = self._target(target_index)
        keys = sorted(
            (r, k)
            for r in ("reservations", "events", "stamps")
            for k in (replica.keys(r) if r in replica.roots() else ())
        )
        if not keys:
            return
        root, key = keys[variant % len(keys)]
        clock = replica.state_clocks().get(self.mal_client, 0)
        if variant % 3 == 0:  # a second item for an existing key
            res = Reservation(key, SLOTS[0], 1, self.mal.user_id, self.mal.hlc(), None)
            items = self._with_cert(replica, self.mal.device, 0) + [(root, key, sign(self.mal, res, key))]
            update = craft(self.mal_client, clock, items)
        elif variant % 3 == 1:  # delete someone's struct
            victim = next(i for i in inserts(replica.encode_state()) if i.root == root and i.key == key)
            update = yjs_update([], {victim.client: [(victim.clock, 1)]})
        else:  # overwrite through the engine: an item with an origin, and a delete set
            scratch = Replica(client_of(self.mal.device.cert_id, 1))
            scratch.apply_update(replica.encode_state())
            update = scratch.write([(root, key, self._mal_booking(replica)[-1][2])])
        self._send("rewrite_delete", target_index, update)

    def _attack_in_others_name(self, target_index: int, variant: int, victim: int) -> None:
        _, replica = self._target(target_index)
        who = self._pick(self.nodes, victim).author.user_id
        state = read_bookings(replica, DOC)
        items = self._with_cert(replica, self.mal.device, 0)
        if variant % 4 == 0 or not state.reservations:
            res = Reservation(self.mal._new_id(), SLOTS[1], 1, who, self.mal.hlc(), None)
            items.append((res.ROOT, res.id, sign(self.mal, res, res.id)))
        else:
            rid = sorted(state.reservations)[variant % len(state.reservations)]
            if variant % 4 == 1:  # cancel someone else's claim
                target_res = state.reservations[rid]
                if target_res.customer == self.mal.user_id:
                    return
                ev = StatusEvent(self.mal._new_id(), rid, "cancel", self.mal.user_id, self.mal.hlc(), None)
            elif variant % 4 == 2:  # a staff event by a customer
                kind = ("confirm", "decline", "no_show")[variant % 3]
                ev = StatusEvent(self.mal._new_id(), rid, kind, self.mal.user_id, self.mal.hlc(), None)
            else:  # an event in someone else's name
                ev = StatusEvent(self.mal._new_id(), rid, "cancel", who, self.mal.hlc(), None)
            items.append((ev.ROOT, ev.id, sign(self.mal, ev, ev.id)))
        clock = replica.state_clocks().get(self.mal_client, 0)
        self._send("in_others_name", target_index, craft(self.mal_client, clock, items))

    def _attack_party(self, target_index: int, excess: int, slot: str) -> None:
        _, replica = self._target(target_index)
        capacity = self._capacities(self.relay_shop)[slot]
        res = Reservation(
            self.mal._new_id(), slot, capacity + 1 + excess, self.mal.user_id, self.mal.hlc(), None
        )
        items = self._with_cert(replica, self.mal.device, 0) + [
            (res.ROOT, res.id, sign(self.mal, res, res.id))
        ]
        clock = replica.state_clocks().get(self.mal_client, 0)
        self._send("impossible_party", target_index, craft(self.mal_client, clock, items))

    def _attack_backdate(self, target_index: int) -> None:
        _, replica = self._target(target_index)
        client = author_client(self.mal_old)
        items = self._mal_booking(replica, author=self.mal_old)
        self._send("backdate", target_index, craft(client, replica.state_clocks().get(client, 0), items))

    def _attack_equivocate(self, first: int, second: int, same_key: bool) -> None:
        _, one = self._target(first)
        _, two = self._target(second)
        if one is two:
            return
        a = self._mal_booking(one)
        b = self._mal_booking(two)
        if same_key:
            res = Reservation(a[-1][1], SLOTS[1], 2, self.mal.user_id, self.mal.hlc(), None)
            b[-1] = (res.ROOT, res.id, sign(self.mal, res, res.id))
        self._send(
            "equivocation", first, craft(self.mal_client, one.state_clocks().get(self.mal_client, 0), a)
        )
        self._send(
            "equivocation", second, craft(self.mal_client, two.state_clocks().get(self.mal_client, 0), b)
        )

    def _attack_reorder(self, target_index: int, victim: int) -> None:
        """A carrier replays a device's later record at the Yjs ids of its earlier one."""
        node = self._pick(self.nodes, victim)
        _, replica = self._target(target_index)
        mine = [u for u in node.outbox if inserts(u)]
        if len(mine) < 2:
            return
        early, late = inserts(mine[0]), inserts(mine[-1])
        if early[0].clock > replica.state_clocks().get(early[0].client, 0):
            return
        swapped = [(i.root, i.key, i.value) for i in early if i.root == CERTS_ROOT]
        swapped += [(i.root, i.key, i.value) for i in late if i.root != CERTS_ROOT][:1]
        swapped += [(i.root, i.key, i.value) for i in early if i.root != CERTS_ROOT][1:]
        if len(swapped) != len(early):
            return
        self._send("reorder", target_index, craft(early[0].client, early[0].clock, swapped))

    @precondition(lambda self: bool(self.ATTACK_KINDS))
    @rule(
        kind=st.integers(0, 100),
        to=st.integers(0, 5),
        other=st.integers(0, 5),
        pick=st.integers(0, 1000),
        flag=st.booleans(),
    )
    def attack(self, kind: int, to: int, other: int, pick: int, flag: bool) -> None:
        target = to
        name = self.ATTACK_KINDS[kind % len(self.ATTACK_KINDS)]
        if name in ("squat_device", "squat_relay"):
            self._attack_squat(name, target, other)
        elif name in ("rewrap_version", "rewrap_framing", "reattribute"):
            self._attack_rewrap(name, target, pick, other % 2 == 0, flag)
        elif name == "forge_stamp":
            self._attack_forge_stamp(target, pick)
        elif name == "rewrite_delete":
            self._attack_rewrite(target, pick)
        elif name == "in_others_name":
            self._attack_in_others_name(target, pick, other)
        elif name == "impossible_party":
            self._attack_party(target, pick % 90, SLOTS[pick % len(SLOTS)])
        elif name == "backdate":
            self._attack_backdate(target)
        elif name == "equivocation":
            self._attack_equivocate(target, other, flag)
        else:
            self._attack_reorder(target, other)

    @precondition(lambda self: bool(self.ATTACK_KINDS))
    @rule(
        kind=st.integers(0, 100),
        to=st.integers(0, 5),
        other=st.integers(0, 5),
        pick=st.integers(0, 1000),
        flag=st.booleans(),
    )
    def attack_again(self, kind: int, to: int, other: int, pick: int, flag: bool) -> None:
        self.attack(kind, to, other, pick, flag)

    # --- invariants -------------------------------------------------------------------------------

    @invariant()
    def verdicts_respect_capacity(self) -> None:
        for k, (name, _, shop) in enumerate(self._replicas()):
            caps = self._capacities(shop)
            for slot in self._verdict(k).slots.values():
                holding = [c for c in slot.claims if c.holds_seats]
                assert sum(c.party for c in holding) == slot.seats_taken <= slot.capacity, name
                for claim in slot.claims:
                    if self.CHECK_TOO_LARGE and exceeds_capacity(claim.party, caps.get(slot.slot, 0)):
                        assert TOO_LARGE is not None and claim.state in (
                            TOO_LARGE,
                            ClaimState.CANCELLED,
                            ClaimState.DECLINED,
                        ), f"{name}: an impossible party {claim.party} > {caps[slot.slot]} is {claim.state}"
                        assert not claim.holds_seats and claim.position is None

    @invariant()
    def stamps_keep_the_tentative_order_of_what_arrived_together(self) -> None:
        if not self.CHECK_STAMP_ORDER:
            return
        # an update, or (checked where CHECK_GROUP_ORDER) a whole group commit
        together = 0 if self.CHECK_GROUP_ORDER else 1
        state = read_bookings(self.relay_day, DOC)
        stamped = [(no, state.reservations[s.reservation]) for no, s in sorted(state.stamps.items())]
        for i, (_, first) in enumerate(stamped):
            for _, later in stamped[i + 1 :]:
                if TENTATIVE(later) < TENTATIVE(first):
                    assert self.arrival[first.id][together] < self.arrival[later.id][together], (
                        f"{later.id} is tentatively before {first.id}, arrived with it, stamped after it"
                    )


def machine_for(kinds: tuple[str, ...]) -> type[AdversaryMachine]:
    return type(
        f"Adversary_{'_'.join(kinds) if len(kinds) == 1 else 'mixed'}",
        (AdversaryMachine,),
        {"ATTACK_KINDS": kinds},
    )


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None)
#: A failing state machine here can take minutes to shrink; expected failures skip it.
NO_SHRINK = settings(SETTINGS, phases=[Phase.explicit, Phase.reuse, Phase.generate])
if os.environ.get("ADVERSARY_SHRINK") == "0":
    SETTINGS = NO_SHRINK

#: Attacks no decision of this round closes; the test stays, expected to fail, until one does.
XFAIL: dict[str, str] = {
    "reorder": (
        "Client ids are bound to their signer, not a struct's clock to its record: a carrier holding"
        " two of a device's queued writes can publish the later record at the earlier one's Yjs id"
        " (both signed by that device, canonical, its own id), so the earlier record is refused"
        " (equivocation) or silently skipped, and the later one refused as a rewrite"
    ),
}


def reproduce_reorder() -> None:
    """c1 queues two bookings; a carrier hands the relay the second one at the first one's Yjs id."""
    machine = machine_for(("reorder",))()
    machine.make_devices(customers=1)
    machine.book(who=1, slot=SLOTS[0], party=1)
    machine.book(who=1, slot=SLOTS[0], party=1)
    machine._attack_reorder(target_index=0, victim=1)
    machine.upload(who=1, how="each")


def reproduce_group_commit_order() -> None:
    """The tablet flushes its own booking and c0's (tentatively first) in one group commit."""
    machine = machine_for(())()
    machine.CHECK_GROUP_ORDER = True
    machine.make_devices(customers=1)
    machine.book(who=3, slot=SLOTS[0], party=1)
    machine.book(who=0, slot=SLOTS[0], party=1)
    machine.tablet_round(how="group")
    machine.stamps_keep_the_tentative_order_of_what_arrived_together()


REPRODUCERS: dict[str, Callable[[], None]] = {"reorder": reproduce_reorder}


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=XFAIL[k])) if k in XFAIL else k
        for k in ATTACKS
    ],
)
def test_attack(kind: str) -> None:
    if kind in REPRODUCERS:  # a known failure must fail every run, not only when the search finds it
        REPRODUCERS[kind]()
    run_state_machine_as_test(machine_for((kind,)), settings=NO_SHRINK if kind in XFAIL else SETTINGS)


def test_mixed_attacks() -> None:
    run_state_machine_as_test(machine_for(tuple(k for k in ATTACKS if k not in XFAIL)), settings=SETTINGS)


@pytest.mark.xfail(
    strict=True,
    reason="the relay stamps each update's claims in stamp_order but separate updates in arrival order,"
    " even within one group commit; the real client sends a carrier's queued updates of a document as"
    " one bundle first (client.sync.service._Session._send_bundles), which this model's group"
    " upload does not",
)
def test_group_commit_keeps_tentative_order() -> None:
    """A carrier's per-writer forward entries flushed together share a group commit."""
    reproduce_group_commit_order()
    machine = machine_for(())
    machine.CHECK_GROUP_ORDER = True
    run_state_machine_as_test(machine, settings=NO_SHRINK)


def test_honest_only() -> None:
    """No adversary at all: the honest model itself must hold every invariant."""
    run_state_machine_as_test(machine_for(()), settings=SETTINGS)
