"""What every connection of a load run does: its subscriptions, its signed bookings and their times.

The aggregate rate is a steady ``rate`` updates per second: update ``k`` goes out at ``k / rate``
seconds after the start, from a connection drawn at random, into one of that connection's
documents. Every update is a booking signed by the sending device (the relay checks that the
signer may write it), made with the relay benchmark's code (:func:`quickslot_updates`), so the
relay validates, stamps, stores and fans out real records. Subscriptions are dealt from a shuffled
deck of the documents, so every document gets about ``connections * subscriptions / docs``
subscribers and each update reaches that many minus its sender.

Everything is drawn from one seeded ``random.Random``: the same arguments give the same plan.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from benchmarks.load.accounts import Device
from benchmarks.relay_bench.loadgen import ClientSpec, Send
from benchmarks.relay_bench.payloads import bookings_doc, quickslot_update_message, quickslot_updates

__all__ = ["LoadShape", "Plan", "build_plan", "uid_of"]


@dataclass(frozen=True)
class LoadShape:
    connections: int
    duration_s: float
    docs: int
    rate: float
    """Updates per second over all connections together."""
    subscriptions: int = 3
    """Documents each connection subscribes to."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.connections < 2 or self.docs < 1 or self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("a load run needs >= 2 connections, >= 1 document, a positive rate and duration")
        if self.connections >= 100_000:
            raise ValueError("update markers carry the sender in 5 digits: fewer than 100,000 connections")

    @property
    def updates(self) -> int:
        return max(1, round(self.rate * self.duration_s))


@dataclass
class Plan:
    clients: list[ClientSpec]
    doc_ids: list[str]
    subscribers: dict[str, list[int]]
    updates: int
    expected_deliveries: int


def uid_of(seq: int) -> int:
    """The ``uid`` a connection puts on its update ``seq`` (its ack names the same uid)."""
    return seq + 1


def _deal_subscriptions(rng: random.Random, shape: LoadShape, doc_ids: list[str]) -> list[list[str]]:
    want = min(shape.subscriptions, len(doc_ids))
    deck: list[str] = []
    out = []
    for _ in range(shape.connections):
        chosen: set[str] = set()
        while len(chosen) < want:
            if not deck:
                deck = doc_ids[:]
                rng.shuffle(deck)
            chosen.add(deck.pop())
        out.append(sorted(chosen))
    return out


def build_plan(shape: LoadShape, devices: list[Device], url: str) -> Plan:
    """Subscriptions, pre-signed sends and expected deliveries for every connection.

    ``devices[c]`` is connection ``c``'s signed-in device; ``url`` the relay's sync endpoint.
    """
    if len(devices) != shape.connections:
        raise ValueError(f"{shape.connections} connections need as many devices, got {len(devices)}")
    rng = random.Random(shape.seed)
    doc_ids = [bookings_doc(f"load{k:04d}") for k in range(shape.docs)]
    subs = _deal_subscriptions(rng, shape, doc_ids)
    subscribers: dict[str, list[int]] = defaultdict(list)
    for c, docs in enumerate(subs):
        for d in docs:
            subscribers[d].append(c)

    next_seq = [0] * shape.connections
    schedule: dict[tuple[int, str], list[tuple[int, float]]] = defaultdict(list)
    expect_marks = [0] * shape.connections
    for k in range(shape.updates):
        c = rng.randrange(shape.connections)
        d = rng.choice(subs[c])
        schedule[(c, d)].append((next_seq[c], k / shape.rate))
        next_seq[c] += 1
        for s in subscribers[d]:
            if s != c:
                expect_marks[s] += 1

    sends: list[list[Send]] = [[] for _ in range(shape.connections)]
    for (c, d), items in schedule.items():
        updates = quickslot_updates(devices[c].identity, d, c, [seq for seq, _ in items])
        for (seq, offset), update in zip(items, updates, strict=True):
            sends[c].append(
                Send(seq=seq, message=quickslot_update_message(d, uid_of(seq), update), offset=offset)
            )
    clients = []
    for c in range(shape.connections):
        sends[c].sort(key=lambda s: s.seq)
        clients.append(
            ClientSpec(
                idx=c,
                dialect="quickslot",
                url=url,
                token=devices[c].identity.access,
                device_key=devices[c].identity.device_key,
                docs=subs[c],
                sends=sends[c],
                expect_marks=expect_marks[c],
                expect_own=len(sends[c]),
            )
        )
    return Plan(clients, doc_ids, dict(subscribers), shape.updates, sum(expect_marks))
