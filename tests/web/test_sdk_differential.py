"""Live differential test: the JavaScript SDK and crdt_core judge the same random histories alike.

Hypothesis draws a history of one bookings day (and its shop document) across four replicas: the
relay (arrival rules with a revocation list and current rights), two customer phones and a staff
phone (peers: arrival rules for what other peers send, none for what the relay sends, as
``ArrivalPolicy.for_peer`` says). Honest devices book, cancel, confirm, decline and mark no-shows
under their own Yjs client ids, the relay stamps, the owner changes slot templates, and replicas
exchange state-vector diffs (whole or split per writer) in any order, so updates also arrive early
(``missing_deps``, ``unknown_reservation``) and twice (no-ops). An adversary with a valid
certificate, an expired one, a revoked one and one signed by a key nobody trusts squats other
signers' Yjs ids (``foreign_client``), re-wraps or tampers with honest records (bit flips,
non-canonical msgpack, a higher schema version, another signer), forges stamps, rewrites and
deletes, writes in others' names, books impossible parties, back-dates, writes from the future,
equivocates (two records at one Yjs id, to two replicas), replays old updates to other replicas,
mutates update bytes, and dates records a millisecond either side of every arrival-rule and
certificate-validity edge (so an off-by-one in either implementation is a disagreement).
crdt_core judges every delivery as it happens (a refused update is not applied); the SDK, in one
long-lived Node process (``sdk_differential.mjs``, JSON lines), judges the same deliveries on its
own replicas, and both must agree on each update's acceptance, refusal
reason, records and no-op flag, and at the end (and at drawn checkpoints) on every replica's
capacities and verdict: every claim's state, waitlist place, stamp, finality, rank, seats and staff
confirmation.

Budget: 2,000 histories under ``HYPOTHESIS_PROFILE=ci``, 50,000 under ``thorough``, 200 otherwise;
``SDK_DIFFERENTIAL_EXAMPLES`` overrides. Skipped (with the reason) without node or the SDK's
dependencies (``make test-web`` installs them).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import CertificateCache, DeviceKey, SigningKey
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.hlc import HybridClock
from crdt_core.reader import read_bookings, slot_templates
from crdt_core.records import RELAY_SIGNER_PREFIX, sign_record
from crdt_core.schema import (
    CERTS_ROOT,
    SCHEMA_VERSION,
    Reservation,
    SlotTemplate,
    Stamp,
    StatusEvent,
    stamp_key,
)
from crdt_core.validation import ArrivalPolicy, Rights, validate_update
from crdt_core.verdict import compute_verdict, stamp_order
from tests.core.test_adversary_properties import craft, inserts, loose_pack, split_by_client
from tests.support.crdt_factory import HOUR_MS, NOW_MS, World, fixed_seed_key
from tests.support.strategies import DOC, SHOP, SHOP_DOC, SLOTS
from tests.web.sdk_env import SDK, node_or_skip

DRIVER = Path(__file__).with_name("sdk_differential.mjs")
DAY = "2027-01-15"
OTHER_DOC = f"bookings:{SHOP}:2027-01-16"
DAY_MS = 24 * HOUR_MS
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
EXAMPLES = int(
    os.environ.get("SDK_DIFFERENTIAL_EXAMPLES", {"ci": 2000, "thorough": 50_000}.get(PROFILE, 200))
)

# --- the world: keys and certificates, made once (histories make fresh clocks and ids) ---------------

WORLD = World()
IMPOSTER = SigningKey(WORLD.relay.kid, fixed_seed_key(2))
KEYS: dict[str, tuple[str, DeviceKey, int]] = {}
"""name -> (user id, device key, the device clock's physical time)."""


def _device(name: str, user: str, clock_ms: int = NOW_MS, **kwargs: Any) -> None:
    KEYS[name] = (user, WORLD.device(user, **kwargs).device, clock_ms)


_device("c0", "c0")
_device("c1", "c1")
_device("staff", "staff1", staff_of=[SHOP])
_device("owner", "owner1", owner_of=[SHOP])
_device("mal", "mallory")
_device(
    "mal_old",
    "mallory",
    NOW_MS - 5 * DAY_MS // 2,
    valid_from_ms=NOW_MS - 3 * DAY_MS,
    valid_until_ms=NOW_MS - 2 * DAY_MS,
)
_device(
    "mal_long",
    "mallory",
    NOW_MS - 40 * DAY_MS,
    valid_from_ms=NOW_MS - 60 * DAY_MS,
    valid_until_ms=NOW_MS + 60 * DAY_MS,
)
_device("mal_revoked", "mallory")
_device("mal_forged", "mallory", signer=IMPOSTER)
_device("demoted", "staff2", staff_of=[SHOP])
KEYS["mal_future"] = (KEYS["mal"][0], KEYS["mal"][1], NOW_MS + 10 * 60_000)
CACHE = CertificateCache(WORLD.trusted)
RELAY_SIGNER = RELAY_SIGNER_PREFIX + WORLD.relay.kid
RELAY_CLIENT = client_id_for(RELAY_SIGNER, 0)
#: The relay's view at arrival: one revoked certificate, and staff2 no longer staff.
REVOKED = frozenset({KEYS["mal_revoked"][1].cert_id})
CURRENT = {
    "c0": (False, [], []),
    "c1": (False, [], []),
    "staff1": (False, [], [SHOP]),
    "owner1": (False, [SHOP], []),
    "mallory": (False, [], []),
    "staff2": (False, [], []),
}
RELAY_POLICY = ArrivalPolicy(
    now_ms=NOW_MS,
    is_revoked=lambda cert: cert.cert_id in REVOKED,
    current_rights=lambda user: (
        Rights(user, CURRENT[user][0], frozenset(CURRENT[user][1]), frozenset(CURRENT[user][2]))
        if user in CURRENT
        else None
    ),
)
PEER_POLICY = ArrivalPolicy.for_peer(NOW_MS)
POLICY_JSON: dict[int, Any] = {  # by id(): a policy holds callables
    id(RELAY_POLICY): {"now": NOW_MS, "revoked": sorted(REVOKED), "rights": CURRENT},
    id(PEER_POLICY): {"now": NOW_MS},
}
NODES = ("relay", "c0", "c1", "staff")
ATTACKS = (
    "squat_device",
    "squat_relay",
    "tamper",
    "forged_certificate",
    "forge_stamp",
    "rewrite_delete",
    "in_others_name",
    "impossible_party",
    "backdate",
    "future",
    "revoked",
    "demoted_staff",
    "equivocate",
    "mutate_bytes",
    "replay",
    "clock_edge",
)
#: Record times (ms from now) on either side of each arrival-rule and validity edge: the
#: back-dating window of a long certificate (30 days), the future skew (60 s), and the validity
#: of a current certificate (an hour ago to a day ahead) and of an expired one.
EDGES = (
    ("mal_long", -30 * DAY_MS - 1), ("mal_long", -30 * DAY_MS), ("mal_long", -30 * DAY_MS + 1),
    ("mal", 60_000), ("mal", 60_001), ("mal", -HOUR_MS - 1), ("mal", -HOUR_MS),
    ("mal", 24 * HOUR_MS - 1), ("mal", 24 * HOUR_MS),
    ("mal_old", -3 * DAY_MS - 1), ("mal_old", -3 * DAY_MS),
    ("mal_old", -2 * DAY_MS - 1), ("mal_old", -2 * DAY_MS),
)  # fmt: skip


def author(name: str) -> Author:
    user, key, at = KEYS[name]
    ids = iter(range(1, 10**9))
    return Author(
        user, key, HybridClock(name, physical_ms=lambda: at), id_factory=lambda: f"{name}-{next(ids)}"
    )


# --- one history ----------------------------------------------------------------------------------


@dataclass
class History:
    """Replicas judged by crdt_core as steps happen; ``steps`` and ``expect`` are what the SDK gets."""

    capacities: dict[str, int]
    authors: dict[str, Author] = field(default_factory=dict)
    day: dict[str, Replica] = field(default_factory=dict)
    shop: dict[str, Replica] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    expect: list[dict[str, Any]] = field(default_factory=list)
    produced: list[bytes] = field(default_factory=list)
    next_stamp: int = 1
    why: str = ""
    """The drawn step being run, named in a failure's message."""
    sink: Any = None
    """Where each step goes as it is made (the SDK judges while the history is still being written)."""

    def emit(self, step: dict[str, Any], outcome: dict[str, Any]) -> None:
        if self.sink is not None:
            self.sink(step)
        self.steps.append({**step, "why": self.why})
        self.expect.append(outcome)

    def __post_init__(self) -> None:
        self.authors = {name: author(name) for name in KEYS}
        for node in NODES:
            writer = RELAY_CLIENT if node == "relay" else self.authors[node].client_id()
            self.day[node] = Replica(writer)
        self.shop["relay"] = Replica()
        self.owner_phone = Replica(self.authors["owner"].client_id())
        owner = self.authors["owner"]
        first = [
            (SlotTemplate(s, "cut", "10:00", 30, self.capacities[s], None, True, owner.hlc()), None)
            for s in SLOTS
        ]
        self.why = "templates"
        self.deliver("relay", owner.put(self.owner_phone, SHOP_DOC, first), shop=True, policy=RELAY_POLICY)

    def policy(self, node: str, from_relay: bool = False) -> ArrivalPolicy | None:
        if node == "relay":
            return RELAY_POLICY
        return None if from_relay else PEER_POLICY

    def deliver(self, node: str, update: bytes, *, shop: bool = False, policy: ArrivalPolicy | None) -> bool:
        replica = (self.shop if shop else self.day)[node]
        doc = SHOP_DOC if shop else DOC
        try:
            result = validate_update(doc, replica, update, CACHE, policy)
        except ValidationError as exc:
            outcome: dict[str, Any] = {"no": exc.code}
        else:
            replica.apply_update(update)
            records = sorted(
                ([r.root, r.key] for r in result.records), key=lambda rk: (rk[0].encode(), rk[1].encode())
            )
            outcome = {"ok": records, "noop": result.noop}
        step = {"r": node, "d": doc, "u": base64.b64encode(update).decode(), "p": POLICY_JSON.get(id(policy))}
        self.emit(step, outcome)
        if not shop:
            self.produced.append(update)
        return "ok" in outcome

    def verdicts(self) -> None:
        # every replica's verdict under the relay's shop document: copies of the shop document
        # would only repeat the same judgements of the same template updates
        caps = {
            s: t.capacity_on(dt.date(2027, 1, 15))
            for s, t in slot_templates(self.shop["relay"], SHOP_DOC).items()
        }
        for node in NODES:
            verdict = compute_verdict(read_bookings(self.day[node], DOC), caps)
            claims = {
                rid: [c.state.value, c.position, c.stamp, c.final, c.rank, c.holds_seats, c.staff_confirmed]
                for rid, c in verdict.claims.items()
            }
            self.emit(
                {"day": node, "shop": "relay", "dd": DOC, "sd": SHOP_DOC, "date": DAY},
                {"caps": caps, "prefix": verdict.stamp_prefix, "claims": claims},
            )

    # --- honest writers ---------------------------------------------------------------------------

    def template(self, slot: str, capacity: int, active: bool, weekdays: tuple[int, ...] | None) -> None:
        owner = self.authors["owner"]
        tmpl = SlotTemplate(slot, "cut", "10:00", 30, capacity, weekdays, active, owner.hlc())
        self.deliver(
            "relay", owner.put(self.owner_phone, SHOP_DOC, [(tmpl, None)]), shop=True, policy=RELAY_POLICY
        )

    def local(self, node: str, write: Any) -> None:
        """``write(view)`` on a copy of the node's day under its writer id, judged as it lands."""
        replica = self.day[node]
        view = replica.copy(replica.client_id)
        update = write(view)
        self.deliver(node, update, policy=PEER_POLICY if node != "relay" else None)

    def book(self, who: str, slot: str, party: int) -> None:
        self.local(who, lambda view: self.authors[who].book(view, DOC, slot, party)[1])

    def event(self, who: str, pick: int, kind: str) -> None:
        claims = sorted(read_bookings(self.day[who], DOC).reservations)
        if claims:
            rid = claims[pick % len(claims)]
            self.local(who, lambda view: self.authors[who].event(view, DOC, rid, kind)[1])

    def stamp(self, pick: int, count: int) -> None:
        state = read_bookings(self.day["relay"], DOC)
        stamped = {s.reservation for s in state.stamps.values()}
        waiting = [r for r in state.reservations.values() if r.id not in stamped]
        if not waiting:
            return
        ordered = [r.id for r in stamp_order(waiting)]
        start = pick % len(ordered)
        chosen = (ordered[start:] + ordered[:start])[: max(1, count)]
        first = max(state.stamps, default=0) + 1

        def write(view: Replica) -> bytes:
            return write_stamps(view, DOC, WORLD.relay, chosen, first, NOW_MS)[1]

        self.local("relay", write)

    def send(self, src: str, dst: str, split: bool) -> None:
        diff = self.day[src].diff(self.day[dst].state_vector())
        policy = self.policy(dst, from_relay=src == "relay")
        for part in split_by_client(diff) if split else [diff]:
            self.deliver(dst, part, policy=policy)

    # --- the adversary ----------------------------------------------------------------------------

    def sign(self, name: str, record: Any, key: str, doc: str = DOC) -> bytes:
        return sign_record(
            doc, key, record.KIND, record.to_fields(), self.authors[name].device, SCHEMA_VERSION
        )

    def with_cert(self, target: Replica, name: str) -> list[tuple[str, str, bytes]]:
        device = self.authors[name].device
        return (
            []
            if target.has_key(CERTS_ROOT, device.cert_id)
            else [(CERTS_ROOT, device.cert_id, device.certificate)]
        )

    def booking(
        self,
        target: Replica,
        name: str,
        slot: str = SLOTS[0],
        party: int = 1,
        customer: str | None = None,
        at_ms: int | None = None,
    ) -> list[tuple[str, str, bytes]]:
        a = self.authors[name]
        hlc = a.hlc() if at_ms is None else f"{at_ms:013d}-000000-{name}"
        res = Reservation(a._new_id(), slot, party, customer or a.user_id, hlc, None)
        return [*self.with_cert(target, name), (res.ROOT, res.id, self.sign(name, res, res.id))]

    def crafted(
        self, node: str, name: str, items: list[tuple[str, str, bytes]], client: int | None = None
    ) -> None:
        target = self.day[node]
        cid = self.authors[name].client_id() if client is None else client
        self.deliver(node, craft(cid, target.state_clocks().get(cid, 0), items), policy=self.policy(node))

    def records(self, target: Replica) -> list[tuple[str, str, bytes]]:
        return [
            (i.root, i.key, i.value) for u in self.produced for i in inserts(u) if i.root != CERTS_ROOT
        ] + [
            (r, k, v)
            for r in ("reservations", "events", "stamps")
            if r in target.roots()
            for k, v in target.items(r)
        ]

    def attack(self, kind: str, node: str, pick: int, variant: int, flag: bool) -> None:
        target = self.day[node]
        if kind in ("squat_device", "squat_relay"):
            victim = (
                self.authors[("c0", "c1", "staff")[variant % 3]].client_id()
                if kind == "squat_device"
                else RELAY_CLIENT
            )
            self.crafted(node, "mal", self.booking(target, "mal"), client=victim)
        elif kind == "tamper":
            self.tamper(node, pick, variant, flag)
        elif kind == "forged_certificate":
            self.crafted(node, "mal_forged", self.booking(target, "mal_forged"))
        elif kind == "forge_stamp":
            self.forge_stamp(node, pick, variant)
        elif kind == "rewrite_delete":
            self.rewrite(node, pick, variant)
        elif kind == "in_others_name":
            self.in_others_name(node, pick, variant)
        elif kind == "impossible_party":
            slot = SLOTS[variant % 2]
            self.crafted(
                node, "mal", self.booking(target, "mal", slot, self.capacities[slot] + 1 + pick % 25)
            )
        elif kind == "clock_edge":
            name, offset = EDGES[pick % len(EDGES)]
            self.crafted(node, name, self.booking(target, name, SLOTS[variant % 2], at_ms=NOW_MS + offset))
        elif kind in ("backdate", "future", "revoked"):
            name = {"future": "mal_future", "revoked": "mal_revoked"}.get(
                kind, ("mal_old", "mal_long")[variant % 2]
            )
            self.crafted(node, name, self.booking(target, name, SLOTS[variant % 2]))
        elif kind == "demoted_staff":
            claims = sorted(read_bookings(target, DOC).reservations)
            a = self.authors["demoted"]
            if claims:
                ev = StatusEvent(
                    a._new_id(),
                    claims[pick % len(claims)],
                    ("confirm", "decline", "no_show")[variant % 3],
                    a.user_id,
                    a.hlc(),
                    None,
                )
                self.crafted(
                    node,
                    "demoted",
                    [*self.with_cert(target, "demoted"), (ev.ROOT, ev.id, self.sign("demoted", ev, ev.id))],
                )
        elif kind == "equivocate":
            other = NODES[(NODES.index(node) + 1 + variant % 3) % len(NODES)]
            one, two = self.booking(target, "mal"), self.booking(self.day[other], "mal", SLOTS[1], 2)
            cid = self.authors["mal"].client_id()
            clock = max(target.state_clocks().get(cid, 0), self.day[other].state_clocks().get(cid, 0))
            self.deliver(node, craft(cid, clock, one), policy=self.policy(node))
            self.deliver(other, craft(cid, clock, two), policy=self.policy(other))
        elif kind == "mutate_bytes":
            if self.produced:
                raw = bytearray(self.produced[pick % len(self.produced)]) or bytearray(b"\x00")
                at = variant % len(raw)
                how = pick % 3
                if how == 0:
                    raw[at] ^= 1 << (variant % 8)
                elif how == 1:
                    del raw[at:]
                else:
                    raw[at:at] = bytes([(0x00, 0x7F, 0x80, 0xFF, 0x77)[variant % 5]])
                self.deliver(node, bytes(raw), policy=self.policy(node))
        elif self.produced:  # replay an old update to any replica, as a carrier may
            self.deliver(
                node, self.produced[pick % len(self.produced)], policy=self.policy(node, from_relay=flag)
            )

    def tamper(self, node: str, pick: int, variant: int, flag: bool) -> None:
        """An honest record re-wrapped or altered, at its signer's own next Yjs id."""
        candidates = self.records(self.day[node])
        if not candidates:
            return
        root, key, value = candidates[pick % len(candidates)]
        try:
            outer = msgpack.unpackb(value, raw=False)
        except Exception:  # noqa: BLE001 - an adversary's own junk, carried by someone
            outer = None
        how = variant % 5
        if not (isinstance(outer, list) and len(outer) == 6 and isinstance(outer[3], dict)):
            outer, how = [None] * 6, 0
        if how == 0:
            raw = bytearray(value)
            raw[(variant // 5) % len(raw)] ^= 1 << (pick % 8)
            altered = bytes(raw)
        elif how == 1:
            altered = loose_pack(outer, 1 + (variant // 5) % 31)
        elif how == 2:
            outer[1] = outer[1] + 1 + (variant // 5) % 3
            altered = msgpack.packb(outer, use_bin_type=True)
        elif how == 3:
            outer[4] = self.authors["mal"].device.cert_id
            altered = msgpack.packb(outer, use_bin_type=True)
        else:
            fields = dict(outer[3])
            if "party" in fields:
                fields["party"] = int(fields["party"]) + 1
            elif "type" in fields:
                fields["type"] = "cancel" if fields["type"] != "cancel" else "confirm"
            else:
                fields["no"] = int(fields.get("no", 0)) + 1
            outer[3] = fields
            altered = msgpack.packb(outer, use_bin_type=True)
        signer = str(outer[4]) if isinstance(outer[4], str) else ""
        try:
            client = client_id_for(signer, 0) if signer else self.authors["mal"].client_id()
        except Exception:  # noqa: BLE001 - a signer that is no reference: squat mallory's own id
            client = self.authors["mal"].client_id()
        new_key = key if flag else f"{key}x"[:64]
        self.crafted(node, "mal", [(root, new_key, altered)], client=client)

    def forge_stamp(self, node: str, pick: int, variant: int) -> None:
        target = self.day[node]
        state = read_bookings(target, DOC)
        items = []
        if state.reservations:
            rid = sorted(state.reservations)[pick % len(state.reservations)]
        else:
            items = self.booking(target, "mal")
            rid = items[-1][1]
        no = max(state.stamps, default=0) + 1
        key = stamp_key(no)
        fields = Stamp(no, rid, NOW_MS).to_fields()
        mal = self.authors["mal"]
        how = variant % 4
        if how == 0:  # signed by the adversary
            raw = sign_record(DOC, key, Stamp.KIND, fields, mal.device, SCHEMA_VERSION)
        elif how == 1:  # names the relay as signer, signed by the adversary
            outer = msgpack.unpackb(
                sign_record(DOC, key, Stamp.KIND, fields, mal.device, SCHEMA_VERSION), raw=False
            )
            outer[4] = RELAY_SIGNER
            raw = msgpack.packb(outer, use_bin_type=True)
        elif how == 2:  # a real relay stamp of another day
            raw = sign_record(OTHER_DOC, key, Stamp.KIND, fields, WORLD.relay, SCHEMA_VERSION)
        else:  # signed by a relay key nobody trusts
            raw = sign_record(DOC, key, Stamp.KIND, fields, IMPOSTER, SCHEMA_VERSION)
        items = [
            *self.with_cert(target, "mal"),
            *[i for i in items if i[0] != CERTS_ROOT],
            ("stamps", key, raw),
        ]
        self.crafted(node, "mal", items, client=RELAY_CLIENT if variant % 8 >= 4 else None)

    def rewrite(self, node: str, pick: int, variant: int) -> None:
        target = self.day[node]
        keys = sorted(
            (r, k)
            for r in ("reservations", "events", "stamps")
            if r in target.roots()
            for k in target.keys(r)
        )
        if not keys:
            return
        root, key = keys[pick % len(keys)]
        how = variant % 3
        if how == 0:  # a second item for an existing key
            mal = self.authors["mal"]
            res = Reservation(key, SLOTS[0], 1, mal.user_id, mal.hlc(), None)
            self.crafted(
                node, "mal", [*self.with_cert(target, "mal"), (root, key, self.sign("mal", res, key))]
            )
        elif how == 1:  # delete someone's struct
            from tests.support.strategies import yjs_update

            victim = next(i for i in inserts(target.encode_state()) if i.root == root and i.key == key)
            self.deliver(node, yjs_update([], {victim.client: [(victim.clock, 1)]}), policy=self.policy(node))
        else:  # overwrite through the engine: an item with an origin and a delete set
            scratch = target.copy(self.authors["mal"].client_id(1))
            self.deliver(
                node,
                scratch.write([(root, key, self.booking(target, "mal")[-1][2])]),
                policy=self.policy(node),
            )

    def in_others_name(self, node: str, pick: int, variant: int) -> None:
        target = self.day[node]
        mal = self.authors["mal"]
        state = read_bookings(target, DOC)
        how = variant % 4
        if how == 0 or not state.reservations:
            self.crafted(
                node, "mal", self.booking(target, "mal", SLOTS[1], 1, customer=("c0", "c1")[pick % 2])
            )
            return
        rid = sorted(state.reservations)[pick % len(state.reservations)]
        kind = "cancel" if how != 2 else ("confirm", "decline", "no_show")[pick % 3]
        by = mal.user_id if how != 3 else state.reservations[rid].customer
        ev = StatusEvent(mal._new_id(), rid, kind, by, mal.hlc(), None)
        self.crafted(
            node, "mal", [*self.with_cert(target, "mal"), (ev.ROOT, ev.id, self.sign("mal", ev, ev.id))]
        )


# --- strategies ------------------------------------------------------------------------------------

#: Drawn op names, repeated for weight: honest traffic about as often as attacks.
OPS = ("book",) * 5 + ("event",) * 3 + ("stamp",) * 3 + ("send",) * 5 + ("template", "check") + ATTACKS
ops = st.tuples(
    st.sampled_from(OPS), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000), st.booleans()
)
histories = st.tuples(
    st.fixed_dictionaries({slot: st.sampled_from([0, 1, 2, 3, 4, 6]) for slot in SLOTS}),
    st.lists(ops, min_size=3, max_size=16),
)


def run_history(capacities: dict[str, int], steps: list[tuple[Any, ...]], sink: Any = None) -> History:
    h = History(dict(capacities), sink=sink)
    for n, (op, a, b, c, flag) in enumerate(steps):
        h.why = f"#{n} {op} {a} {b} {c} {flag}"
        if op == "book":
            h.book(("c0", "c1")[a % 2], SLOTS[b % 2], 1 + c % (6 if flag else 3))
        elif op == "event":
            who = ("c0", "c1", "staff")[a % 3]
            h.event(
                who, b, ("confirm", "decline", "no_show", "cancel")[c % 4] if who == "staff" else "cancel"
            )
        elif op == "stamp":
            h.stamp(a, 1 + b % 3)
        elif op == "send":
            src, dst = NODES[a % len(NODES)], NODES[b % len(NODES)]
            if src != dst:
                h.send(src, dst, flag)
        elif op == "template":
            slot, capacity = SLOTS[a % 2], (0, 1, 2, 3, 4, 6)[b % 6]
            h.capacities[slot] = capacity
            h.template(slot, capacity, c % 4 != 0, (5, 6) if flag else None)
        elif op == "check":
            h.verdicts()
        else:
            h.attack(op, NODES[a % len(NODES)], b, c, flag)
    h.why = "final sync"
    for src, dst in (
        ("c0", "relay"),
        ("c1", "relay"),
        ("staff", "relay"),
        ("relay", "c0"),
        ("relay", "staff"),
    ):
        h.send(src, dst, split=True)
    h.verdicts()
    return h


# --- the SDK process ---------------------------------------------------------------------------------


class Sdk:
    def __init__(self, node: str) -> None:
        self.proc = subprocess.Popen(
            [node, str(DRIVER)],
            cwd=SDK,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.ask({"trust": {k: v.hex() for k, v in WORLD.trusted.items()}}) == {"ok": True}

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"the SDK process died: {self.proc.stderr.read()[-4000:]}")
        return json.loads(line)

    def ask(self, message: dict[str, Any]) -> Any:
        self.send(message)
        return self.answer()

    def judge(self, capacities: dict[str, int], steps: list[tuple[Any, ...]]) -> tuple[History, list[Any]]:
        """Run a history in crdt_core, streaming its steps to the SDK; returns both sides' results."""
        self.send({"begin": True})
        history = run_history(capacities, steps, sink=self.send)
        return history, self.ask({"end": True})["results"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sdk() -> Iterator[Sdk]:
    proc = Sdk(node_or_skip())
    yield proc
    proc.close()


def _first_difference(history: History, got: list[Any]) -> str | None:
    assert len(got) == len(history.expect), (len(got), len(history.expect))
    for i, (step, want, have) in enumerate(zip(history.steps, history.expect, got, strict=True)):
        if want != have:
            where = {k: v for k, v in step.items() if k != "u"}
            return f"step {i} {where}: crdt_core {want}, SDK {have}"
    return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(history=histories)
def test_sdk_judges_random_histories_like_crdt_core(
    sdk: Sdk, history: tuple[dict[str, int], list[tuple[Any, ...]]]
) -> None:
    h, got = sdk.judge(*history)
    difference = _first_difference(h, got)
    assert difference is None, difference
