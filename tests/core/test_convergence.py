"""Convergence: 2 to 6 replicas book, cancel, confirm and stamp offline, exchange updates over a
channel that reorders, duplicates, delays and loses them, then run one state-vector exchange; every
replica ends with the same contents and the same verdict.

Every update a replica receives is validated first (``tests.support.strategies.Inbox``). An update refused
only because something it refers to has not arrived yet (``missing_deps``, ``unknown_reservation``)
is held back and retried after each later delivery, or forgotten when the history says so (the
state-vector exchange recovers it). Any other refusal of an honest update fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, given, strategies as st

from crdt_core.authoring import Author, write_stamps
from crdt_core.engine import Replica
from crdt_core.reader import read_bookings
from crdt_core.schema import EventType
from crdt_core.validation import validate_update
from crdt_core.verdict import ClaimState
from tests.support.crdt_factory import NOW_MS, World, relay_client, write_through
from tests.support.strategies import DOC, SHOP, SLOTS, Inbox, capacities_st, full_sync, verdict_of

STAFF_EVENTS = (EventType.CONFIRM, EventType.DECLINE, EventType.NO_SHOW)

Op = tuple[str, int, int, int]


@dataclass
class Node:
    author: Author
    staff: bool
    inbox: Inbox

    @property
    def replica(self) -> Replica:
        return self.inbox.replica


@dataclass
class Network:
    """Replica 0 is also the sequencer: it stamps, in the order it accepted them, the claims it holds."""

    world: World
    nodes: list[Node]
    queues: dict[tuple[int, int], list[bytes]] = field(default_factory=dict)
    stamp_queue: list[str] = field(default_factory=list)
    next_stamp: int = 1
    written: set[tuple[str, str]] = field(default_factory=set)
    delivered: int = 0
    held_back: int = 0

    @classmethod
    def create(cls, staff: list[bool]) -> Network:
        world = World()
        nodes = []
        for i, is_staff in enumerate(staff):
            author = world.device(f"u{i}", staff_of=[SHOP] if is_staff else [])
            nodes.append(Node(author, is_staff, Inbox(DOC, Replica(author.client_id()), world.cache())))
        net = cls(world, nodes)
        for src in range(len(nodes)):
            for dst in range(len(nodes)):
                if src != dst:
                    net.queues[(src, dst)] = []
        return net

    # --- local writes ------------------------------------------------------------------------

    def broadcast(self, src: int, update: bytes) -> None:
        for (s, _), queue in self.queues.items():
            if s == src:
                queue.append(update)

    def local(self, i: int, records: list[tuple[str, str]], update: bytes) -> None:
        self.written.update(records)
        self.broadcast(i, update)

    def book(self, i: int, slot: str, party: int) -> None:
        node = self.nodes[i]
        res, update = node.author.book(node.replica, DOC, slot, party)
        if i == 0:
            self.stamp_queue.append(res.id)
        self.local(i, [("reservations", res.id)], update)

    def event(self, i: int, pick: int, kind: EventType) -> None:
        node = self.nodes[i]
        state = read_bookings(node.replica, DOC)
        if kind is EventType.CANCEL:
            candidates = sorted(
                r.id for r in state.reservations.values() if r.customer == node.author.user_id
            )
        elif node.staff:
            candidates = sorted(state.reservations)
        else:
            return
        if not candidates:
            return
        ev, update = node.author.event(node.replica, DOC, candidates[pick % len(candidates)], kind)
        self.local(i, [("events", ev.id)], update)

    def stamp(self) -> None:
        if not self.stamp_queue:
            return
        # node 0 also plays the relay: its stamps go under the relay's own client id
        stamps, update = write_through(
            self.nodes[0].replica,
            relay_client(self.world.relay),
            lambda r: write_stamps(r, DOC, self.world.relay, self.stamp_queue, self.next_stamp, NOW_MS),
        )
        self.next_stamp += len(stamps)
        self.stamp_queue = []
        self.local(0, [("stamps", f"{s.no:016d}") for s in stamps], update)

    # --- the channel ---------------------------------------------------------------------------

    def busy(self) -> list[tuple[int, int]]:
        return sorted(k for k, q in self.queues.items() if q)

    def receive(self, dst: int, update: bytes) -> None:
        node = self.nodes[dst]
        before = {r for r in read_bookings(node.replica, DOC).reservations} if dst == 0 else set()
        applied = node.inbox.offer(update)
        self.delivered += 1
        self.held_back += not applied
        if dst == 0:  # the sequencer queues what it newly holds, in arrival order
            now = sorted(read_bookings(node.replica, DOC).reservations)
            self.stamp_queue.extend(r for r in now if r not in before)

    def deliver(self, pick_queue: int, pick: int, keep: bool = False) -> None:
        busy = self.busy()
        if not busy:
            return
        key = busy[pick_queue % len(busy)]
        queue = self.queues[key]
        update = queue[pick % len(queue)] if keep else queue.pop(pick % len(queue))
        self.receive(key[1], update)

    def duplicate(self, pick_queue: int, pick: int) -> None:
        busy = self.busy()
        if busy:
            queue = self.queues[busy[pick_queue % len(busy)]]
            queue.insert(pick % (len(queue) + 1), queue[pick % len(queue)])

    def drop(self, pick_queue: int, pick: int) -> None:
        busy = self.busy()
        if busy:
            queue = self.queues[busy[pick_queue % len(busy)]]
            queue.pop(pick % len(queue))

    def send_diff(self, src: int, dst: int) -> None:
        """Store and forward: src answers dst's state vector; the answer travels (and may go stale)."""
        if src != dst:
            self.queues[(src, dst)].append(
                self.nodes[src].replica.diff(self.nodes[dst].replica.state_vector())
            )

    def run(self, op: Op) -> None:
        name, a, b, c = op
        n = len(self.nodes)
        if name == "book":
            self.book(a % n, SLOTS[b % len(SLOTS)], c)
        elif name == "cancel":
            self.event(a % n, b, EventType.CANCEL)
        elif name == "staff":
            self.event(a % n, b, STAFF_EVENTS[c % len(STAFF_EVENTS)])
        elif name == "stamp":
            self.stamp()
        elif name == "diff":
            self.send_diff(a % n, b % n)
        elif name == "deliver":
            self.deliver(a, b)
        elif name == "deliver_keep":  # delivered, and a copy stays queued (a retransmission later)
            self.deliver(a, b, keep=True)
        elif name == "duplicate":
            self.duplicate(a, b)
        elif name == "drop":
            self.drop(a, b)
        elif name == "forget":
            self.nodes[a % n].inbox.held.clear()
        else:
            raise AssertionError(name)


OP_NAMES = (
    "book",
    "book",
    "book",
    "cancel",
    "staff",
    "staff",
    "stamp",
    "stamp",
    "diff",
    "deliver",
    "deliver",
    "deliver",
    "deliver",
    "deliver_keep",
    "duplicate",
    "drop",
    "forget",
)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[bool], list[Op]]:
    n = draw(st.integers(2, 6))
    staff = [True] + draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    ops: list[Op] = []
    for _ in range(draw(st.integers(4, 100))):
        name = draw(st.sampled_from(OP_NAMES))
        ops.append((name, draw(st.integers(0, 63)), draw(st.integers(0, 63)), draw(st.integers(1, 4))))
    return staff, ops


@given(histories(), capacities_st)
def test_replicas_converge_to_the_same_contents_and_verdict(
    history: tuple[list[bool], list[Op]], caps: dict[str, int]
) -> None:
    staff, ops = history
    net = Network.create(staff)
    for op in ops:
        net.run(op)
    event(f"{len(net.nodes)} replicas")
    event("some updates were held back" if net.held_back else "nothing held back")

    # Before the exchange: whatever each replica holds is valid on its own and within capacity.
    for node in net.nodes:
        verdict = verdict_of(node.replica, caps)
        for slot in verdict.slots.values():
            assert slot.seats_taken <= slot.capacity

    full_sync(DOC, [(node.replica, node.inbox.cache) for node in net.nodes])
    for node in net.nodes:
        node.inbox.retry()  # anything still held back is now a harmless re-send

    reference = net.nodes[0].replica
    contents = reference.to_py()
    verdict = verdict_of(reference, caps)
    for node in net.nodes[1:]:
        assert node.replica.to_py() == contents
        assert node.replica.state_clocks() == reference.state_clocks()
        assert verdict_of(node.replica, caps) == verdict
    for node in net.nodes:
        assert not node.inbox.held

    # Nothing written anywhere was lost, and nothing else appeared.
    present = {(root, key) for root, entries in contents.items() if root != "certs" for key in entries}
    assert present == net.written
    # Stamps are gap-free and every claim the sequencer took in before its last stamp is stamped once.
    state = read_bookings(reference, DOC)
    assert sorted(state.stamps) == list(range(1, net.next_stamp))
    stamped = [s.reservation for s in state.stamps.values()]
    assert len(stamped) == len(set(stamped))
    assert verdict.stamp_prefix == net.next_stamp - 1
    assert all(c.final == (c.stamp is not None) for c in verdict.claims.values())
    for slot in verdict.slots.values():
        assert sum(c.party for c in slot.claims if c.holds_seats) == slot.seats_taken <= slot.capacity
        assert all(c.state is not ClaimState.CONFIRMED or c.holds_seats for c in slot.claims)
    # The converged document is exactly what a new peer would accept from scratch.
    from_scratch = validate_update(DOC, Replica(7), reference.encode_state(), net.world.cache())
    assert from_scratch.noop == (not net.written)


def test_two_offline_replicas_racing_for_the_last_seat_agree_in_either_delivery_order() -> None:
    """The demo's story as a fixed example: both book the last seat offline; the relay stamps bob first."""
    net = Network.create([True, False, False])
    net.book(1, "s1", 1)  # alice (u1)
    net.book(2, "s1", 1)  # bob (u2)
    alice_update, bob_update = net.queues[(1, 0)][0], net.queues[(2, 0)][0]
    net.receive(0, bob_update)
    net.receive(0, alice_update)
    net.stamp()
    stamps = net.queues[(0, 1)][-1]
    net.receive(1, stamps)  # held back: alice has not seen bob's claim yet
    assert net.nodes[1].inbox.held == [stamps]
    net.receive(1, bob_update)  # now the stamps apply too
    net.receive(2, stamps)  # held back at bob's: alice's claim is missing
    net.receive(2, alice_update)
    assert not net.nodes[1].inbox.held and not net.nodes[2].inbox.held
    verdicts = [verdict_of(node.replica, {"s1": 1}) for node in net.nodes]
    assert verdicts[0] == verdicts[1] == verdicts[2]
    by_customer = {c.customer: c.state for c in verdicts[0].claims.values()}
    assert by_customer == {"u2": ClaimState.CONFIRMED, "u1": ClaimState.WAITLISTED}
