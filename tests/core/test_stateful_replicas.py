"""A rule-based state machine: devices, a relay that sequences, and a lossy channel between them.

The relay validates every update it receives and, in the same step, stamps each new reservation it
accepted with the next number (gap-free). Updates travel through per-device queues in both
directions; rules deliver any queued message (so they are reordered), duplicate it, drop it, take
devices offline and online, sync a device with the relay by state vector, change a slot's capacity
through a newer signed slot template, and quiesce everyone. After every step the invariants hold:

* no replica's verdict puts more people in a slot than its capacity;
* a claim a replica once saw final and confirmed stays confirmed at that replica, unless it was
  cancelled or declined, or that replica's capacity for the slot dropped since (a no-show keeps
  its seat);
* the relay's stamps are exactly 1..n, one per reservation it holds, and a device's stamps are
  the relay's;
* the relay, which refuses a repeat booking at arrival (``duplicate_booking``) as the real relay
  does, never refuses one a device made after checking its own copy (devices do not book a slot
  their customer still holds that day), so no replica ever computes a ``duplicate`` claim;
* once quiesced, every replica holds the same documents and computes the same verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from crdt_core.authoring import Author, write_stamps
from crdt_core.certs import CertificateCache
from crdt_core.engine import Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings, slot_templates
from crdt_core.repeats import refuse_repeat_bookings
from crdt_core.schema import SlotTemplate, capacities_on, parse_doc_id, per_customer_limits
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import ClaimState, Verdict, compute_verdict, repeat_booking
from tests.support.crdt_factory import NOW_MS, World, relay_replica
from tests.support.strategies import DOC, RETRYABLE, SHOP, SHOP_DOC, SLOTS, Inbox, receive

DAY = parse_doc_id(DOC).day
INITIAL_CAPACITY = 3
HOLDING = (ClaimState.CONFIRMED, ClaimState.NO_SHOW)
TERMINAL = (ClaimState.CANCELLED, ClaimState.DECLINED)


@dataclass
class Device:
    author: Author
    staff: bool
    day: Inbox
    shop: Replica
    up: list[bytes] = field(default_factory=list)
    """Updates on their way to the relay."""
    down: list[bytes] = field(default_factory=list)
    """Updates on their way from the relay."""
    online: bool = True


class ReplicasMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.cache: CertificateCache = self.world.cache()
        self.policy = ArrivalPolicy(now_ms=NOW_MS)
        self.relay = relay_replica(self.world.relay)
        self.relay_shop = Replica(2)
        self.owner = self.world.device("owner1", owner_of=[SHOP])
        self.owner_phone = Replica(self.owner.client_id())
        self.next_stamp = 1
        self.devices: list[Device] = []
        self.quiesced = False
        # per replica (0: relay, i + 1: device i): reservation -> slot capacity when first seen final
        self.seen_final: list[dict[str, int]] = [{}]
        self._verdicts: dict[tuple[int, bytes, bytes], Verdict] = {}
        for slot in SLOTS:
            self._write_template(slot, INITIAL_CAPACITY)

    # --- helpers -----------------------------------------------------------------------------------

    def _write_template(self, slot: str, capacity: int) -> None:
        template = SlotTemplate(slot, "cut", "10:00", 30, capacity, None, True, self.owner.hlc())
        receive(
            SHOP_DOC,
            self.relay_shop,
            self.owner.put(self.owner_phone, SHOP_DOC, [(template, None)]),
            self.cache,
        )

    def _relay_accepts(self, update: bytes, *, must: bool) -> bool:
        """The relay validates, refuses repeat bookings (as ``relay.sync.arrival`` does), applies,
        stamps new claims in the same step and fans out both."""
        try:
            result = validate_update(DOC, self.relay, update, self.cache, self.policy)
            templates = slot_templates(self.relay_shop, SHOP_DOC)
            assert DAY is not None
            refuse_repeat_bookings(
                self.relay,
                result.new_reservations,
                per_customer_limits(templates),
                capacities_on(templates, DAY),
                result.new_events,
            )
            self.relay.apply_update(update)
        except ValidationError as exc:
            assert not must and exc.code in RETRYABLE, exc
            event("the relay refused an update that arrived too early")
            return False  # lost: the device's next state-vector sync brings it again
        fan_out = [update]
        fresh = [r.id for r in result.new_reservations]
        if fresh:
            _, stamps = write_stamps(self.relay, DOC, self.world.relay, fresh, self.next_stamp, NOW_MS)
            self.next_stamp += len(fresh)
            fan_out.append(stamps)
        if not result.noop:
            for device in self.devices:
                device.down.extend(fan_out)
        return True

    def _sync(self, device: Device) -> None:
        """A full state-vector exchange with the relay, both documents, both directions."""
        self._relay_accepts(device.day.replica.diff(self.relay.state_vector()), must=True)
        receive(DOC, device.day.replica, self.relay.diff(device.day.replica.state_vector()), self.cache)
        device.day.retry()
        receive(SHOP_DOC, device.shop, self.relay_shop.diff(device.shop.state_vector()), self.cache)

    def _replicas(self) -> list[tuple[Replica, Replica]]:
        return [(self.relay, self.relay_shop)] + [(d.day.replica, d.shop) for d in self.devices]

    def _verdict(self, k: int) -> Verdict:
        day, shop = self._replicas()[k]
        key = (k, day.state_vector(), shop.state_vector())
        if key not in self._verdicts:
            assert DAY is not None
            caps = {slot: t.capacity_on(DAY) for slot, t in slot_templates(shop, SHOP_DOC).items()}
            self._verdicts[key] = compute_verdict(read_bookings(day, DOC), caps)
        return self._verdicts[key]

    def _pick(self, devices: list[Device], index: int) -> Device:
        return devices[index % len(devices)]

    def _own_active(self, device: Device) -> list[str]:
        state = read_bookings(device.day.replica, DOC)
        cancelled = {e.reservation for e in state.events.values() if e.type == "cancel"}
        return sorted(
            r.id
            for r in state.reservations.values()
            if r.customer == device.author.user_id and r.id not in cancelled
        )

    def _holds(self, device: Device, slot: str) -> bool:
        """Whether the device's customer still holds a claim on ``slot`` by its own copy: one not
        ended by a cancel or decline at or before the HLC its next booking would carry. The relay
        refuses such a booking (``duplicate_booking``); like a client that knows its own claims,
        the model does not write it, and the relay's copy (which holds every claim this device
        wrote, and every end the device has seen) must agree."""
        state = read_bookings(device.day.replica, DOC)
        ends: dict[str, str] = {}
        for ev in state.events.values():
            if ev.type in ("cancel", "decline") and ev.hlc < ends.get(ev.reservation, "\uffff"):
                ends[ev.reservation] = ev.hlc
        mine = [
            ends.get(r.id)
            for r in state.reservations.values()
            if r.customer == device.author.user_id and r.slot == slot
        ]
        return repeat_booking(mine, device.author.hlc(), 1)

    def _with_own(self) -> list[Device]:
        return [d for d in self.devices if self._own_active(d)]

    def _staff_with_claims(self) -> list[Device]:
        return [d for d in self.devices if d.staff and read_bookings(d.day.replica, DOC).reservations]

    # --- rules -------------------------------------------------------------------------------------

    @initialize(staff=st.lists(st.booleans(), min_size=2, max_size=4))
    def make_devices(self, staff: list[bool]) -> None:
        for i, is_staff in enumerate([True, *staff[1:]]):
            author = self.world.device(f"d{i}", staff_of=[SHOP] if is_staff else [])
            device = Device(
                author, is_staff, Inbox(DOC, Replica(author.client_id()), self.world.cache()), Replica(20 + i)
            )
            receive(SHOP_DOC, device.shop, self.relay_shop.diff(device.shop.state_vector()), self.cache)
            self.devices.append(device)
            self.seen_final.append({})

    @rule(who=st.integers(0, 3), slot=st.sampled_from(SLOTS), party=st.integers(1, 4))
    def book(self, who: int, slot: str, party: int) -> None:
        device = self._pick(self.devices, who)
        if self._holds(device, slot):
            event("a device did not book a slot its customer holds")
            return
        _, update = device.author.book(device.day.replica, DOC, slot, party)
        device.up.append(update)
        self.quiesced = False

    @precondition(lambda self: any(d.online for d in self.devices))
    @rule(who=st.integers(0, 3), slot=st.sampled_from(SLOTS), party=st.integers(1, 4))
    def book_online(self, who: int, slot: str, party: int) -> None:
        """Booking while connected: the update goes straight to the relay, which stamps it at once,
        unless it depends on updates still queued (then it waits in the queue behind them)."""
        device = self._pick([d for d in self.devices if d.online], who)
        if self._holds(device, slot):
            event("a device did not book a slot its customer holds")
            return
        _, update = device.author.book(device.day.replica, DOC, slot, party)
        if device.up or not self._relay_accepts(update, must=False):
            device.up.append(update)
        self.quiesced = False

    @precondition(lambda self: bool(self._with_own()))
    @rule(who=st.integers(0, 3), pick=st.integers(0, 20))
    def cancel_own(self, who: int, pick: int) -> None:
        device = self._pick(self._with_own(), who)
        own = self._own_active(device)
        _, update = device.author.event(device.day.replica, DOC, own[pick % len(own)], "cancel")
        device.up.append(update)
        self.quiesced = False

    @precondition(lambda self: bool(self._staff_with_claims()))
    @rule(
        who=st.integers(0, 3),
        pick=st.integers(0, 20),
        kind=st.sampled_from(["confirm", "decline", "no_show"]),
    )
    def staff_event(self, who: int, pick: int, kind: str) -> None:
        device = self._pick(self._staff_with_claims(), who)
        claims = sorted(read_bookings(device.day.replica, DOC).reservations)
        _, update = device.author.event(device.day.replica, DOC, claims[pick % len(claims)], kind)
        device.up.append(update)
        self.quiesced = False

    @precondition(lambda self: any(d.online and d.up for d in self.devices))
    @rule(who=st.integers(0, 3), pick=st.integers(0, 20))
    def deliver_to_relay(self, who: int, pick: int) -> None:
        device = self._pick([d for d in self.devices if d.online and d.up], who)
        self._relay_accepts(device.up.pop(pick % len(device.up)), must=False)
        self.quiesced = False

    @precondition(lambda self: any(d.online and d.down for d in self.devices))
    @rule(who=st.integers(0, 3), pick=st.integers(0, 20))
    def deliver_to_device(self, who: int, pick: int) -> None:
        device = self._pick([d for d in self.devices if d.online and d.down], who)
        device.day.offer(device.down.pop(pick % len(device.down)))
        self.quiesced = False

    def _queues(self) -> list[list[bytes]]:
        return [q for d in self.devices for q in (d.up, d.down) if q]

    @precondition(lambda self: bool(self._queues()))
    @rule(which=st.integers(0, 7), pick=st.integers(0, 20))
    def drop_message(self, which: int, pick: int) -> None:
        queue = self._queues()[which % len(self._queues())]
        queue.pop(pick % len(queue))

    @precondition(lambda self: bool(self._queues()))
    @rule(which=st.integers(0, 7), pick=st.integers(0, 20), to=st.integers(0, 20))
    def duplicate_message(self, which: int, pick: int, to: int) -> None:
        queue = self._queues()[which % len(self._queues())]
        queue.insert(to % (len(queue) + 1), queue[pick % len(queue)])

    @rule(who=st.integers(0, 3))
    def toggle_online(self, who: int) -> None:
        device = self._pick(self.devices, who)
        device.online = not device.online

    @precondition(lambda self: any(d.online for d in self.devices))
    @rule(who=st.integers(0, 3))
    def sync_with_relay(self, who: int) -> None:
        self._sync(self._pick([d for d in self.devices if d.online], who))
        self.quiesced = False

    @rule(slot=st.sampled_from(SLOTS), capacity=st.integers(0, 6))
    def change_capacity(self, slot: str, capacity: int) -> None:
        """The owner writes a newer slot template; devices learn it when they next sync."""
        self._write_template(slot, capacity)
        self.quiesced = False

    @rule()
    def quiesce(self) -> None:
        for device in self.devices:
            device.online = True
        for _ in range(2):  # the first round uploads everything, the second brings it all down
            for device in self.devices:
                self._sync(device)
        for device in self.devices:
            device.up.clear()
            device.down.clear()
        self.quiesced = True
        self.check_quiesced_replicas_are_equal()
        claims = len(self._verdict(0).claims)
        event(f"quiesced with {'no' if not claims else 'some'} claims")

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def capacity_is_never_exceeded(self) -> None:
        for k in range(len(self._replicas())):
            for slot in self._verdict(k).slots.values():
                holding = [c for c in slot.claims if c.holds_seats]
                assert sum(c.party for c in holding) == slot.seats_taken <= slot.capacity
                assert all(c.state in HOLDING for c in holding)

    @invariant()
    def final_confirmed_claims_stay_confirmed(self) -> None:
        for k, seen in enumerate(self.seen_final):
            verdict = self._verdict(k)
            for rid, capacity_then in list(seen.items()):
                claim = verdict.claims[rid]
                if claim.state in TERMINAL or verdict.slots[claim.slot].capacity != capacity_then:
                    # its own cancel or decline, or a capacity change (a cut, or a raise that brings
                    # a too_large claim ahead of it back into the walk): allowed to change
                    del seen[rid]
                    event("a final claim was released by its cancel, a decline or a capacity change")
                    continue
                if k > 0:
                    event("a device kept a final confirmed claim confirmed")
                assert claim.holds_seats and claim.state in HOLDING, (k, claim)
                assert claim.final
            for rid, claim in verdict.claims.items():
                if claim.final and claim.state is ClaimState.CONFIRMED and rid not in seen:
                    seen[rid] = verdict.slots[claim.slot].capacity

    @invariant()
    def relay_stamps_are_gap_free_and_devices_hold_only_relay_stamps(self) -> None:
        state = read_bookings(self.relay, DOC)
        assert sorted(state.stamps) == list(range(1, self.next_stamp))
        assert sorted(s.reservation for s in state.stamps.values()) == sorted(state.reservations)
        relay_stamps = dict(self.relay.items("stamps")) if "stamps" in self.relay.roots() else {}
        for device in self.devices:
            if "stamps" in device.day.replica.roots():
                for key, raw in device.day.replica.items("stamps"):
                    assert relay_stamps[key] == raw

    @invariant()
    def check_quiesced_replicas_are_equal(self) -> None:
        if not self.quiesced:
            return
        for device in self.devices:
            assert device.day.replica.to_py() == self.relay.to_py()
            assert device.shop.to_py() == self.relay_shop.to_py()
        verdicts = [self._verdict(k) for k in range(len(self._replicas()))]
        assert all(v == verdicts[0] for v in verdicts)
        assert all(c.stamp is not None and c.final for c in verdicts[0].claims.values())
        assert all(c.state is not ClaimState.DUPLICATE for c in verdicts[0].claims.values())


ReplicasMachine.TestCase.settings = settings(stateful_step_count=80)
TestReplicas = ReplicasMachine.TestCase
