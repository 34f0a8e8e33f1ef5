"""Shared helpers for the client tests: an in-memory relay stand-in and profile builders.

The stand-in relay is only what these offline tests need from a relay: it validates every update
with the relay's arrival policy, keeps one replica per document, and stamps new reservations
with ``crdt_core.authoring.write_stamps`` (exactly what the real relay signs). The networked sync
engine and the real relay are tested elsewhere.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client.local.client import LocalClient
from client.local.events import ClientEvent
from client.storage.secrets import SecretStore
from crdt_core.authoring import write_stamps
from crdt_core.engine import EMPTY_UPDATE, Replica
from crdt_core.errors import ValidationError
from crdt_core.reader import read_bookings
from crdt_core.schema import DocKind, parse_doc_id
from crdt_core.validation import ArrivalPolicy, validate_update
from crdt_core.verdict import VerdictChange, stamp_order
from tests.support.crdt_factory import NOW_MS, World, relay_replica

#: Every client the helpers opened, so a test module's autouse fixture can close what a failing
#: test left open (close is idempotent).
OPENED: list[LocalClient] = []

SHOP = "barber1"
DAY = "2027-01-20"
DAY_DATE = _dt.date.fromisoformat(DAY)


@dataclass
class FakeRelay:
    """Validates, stores and stamps like the relay does, with no network and no accounts."""

    world: World
    docs: dict[str, Replica] = field(default_factory=dict)
    received: list[tuple[str, bytes]] = field(default_factory=list)

    def replica(self, doc_id: str) -> Replica:
        return self.docs.setdefault(doc_id, relay_replica(self.world.relay))

    def receive(self, doc_id: str, update: bytes) -> bytes | None:
        """Accept an update (raises ValidationError); returns the stamp update it caused, if any."""
        replica = self.replica(doc_id)
        accepted = validate_update(
            doc_id, replica, update, self.world.cache(), ArrivalPolicy(now_ms=self.world.now_ms)
        )
        replica.apply_update(update)
        self.received.append((doc_id, update))
        new = [r.id for r in stamp_order(accepted.new_reservations)]  # as the relay numbers them
        if parse_doc_id(doc_id).kind is not DocKind.BOOKINGS or not new:
            return None
        first = len(read_bookings(replica, doc_id).stamps) + 1
        _, stamp_update = write_stamps(replica, doc_id, self.world.relay, new, first, self.world.now_ms)
        return stamp_update

    def stamp(self, doc_id: str, reservation_ids: Sequence[str]) -> bytes:
        replica = self.replica(doc_id)
        first = len(read_bookings(replica, doc_id).stamps) + 1
        _, update = write_stamps(replica, doc_id, self.world.relay, list(reservation_ids), first, NOW_MS)
        return update

    def diff(self, doc_id: str, state_vector: bytes) -> bytes:
        return self.replica(doc_id).diff(state_vector)


async def open_profile(
    path: Path,
    world: World,
    user: str | None = None,
    *,
    clock_ms: int = NOW_MS,
    compact_min_bytes: int = 16 * 1024,
    roles: Sequence[str] = (),
    owner_of: Sequence[str] = (),
    staff_of: Sequence[str] = (),
) -> LocalClient:
    """A profile with a file secret store, a fixed clock and (if ``user``) a certified identity."""
    client = await LocalClient.open(
        path,
        now_ms=lambda: clock_ms,
        secret_store=SecretStore(path, backend="file"),
        compact_min_bytes=compact_min_bytes,
    )
    OPENED.append(client)
    await client.set_relay_keys(world.trusted)
    if user is not None:
        author = world.device(user, roles=roles, owner_of=owner_of, staff_of=staff_of)
        await client.set_identity(user, author.device, world.trusted)
    return client


def drain(client: LocalClient) -> list[ClientEvent]:
    """The events the client queued so far, oldest first (the queue is left empty)."""
    out: list[ClientEvent] = []
    while not client.events.empty():
        out.append(client.events.get_nowait())
    return out


async def close_all() -> None:
    while OPENED:
        await OPENED.pop().close()


async def push(client: LocalClient, relay: FakeRelay) -> list[tuple[str, bytes]]:
    """Flush the outbox to the relay in order; returns the stamp updates the relay produced.

    As the sync engine does: ``missing_deps`` leaves an entry pending (retryable), any other
    refusal sets it aside, and a document with a refused write is rebuilt from the relay's state
    (``LocalClient.rebuild_from_relay``), whose re-written entries are flushed in the next round.
    """
    stamps: list[tuple[str, bytes]] = []
    for _round in range(3):
        for entry in await client.pending_entries():
            try:
                stamp = relay.receive(entry.doc_id, entry.payload)
            except ValidationError as exc:
                if exc.code != "missing_deps":
                    await client.mark_rejected(entry.id, exc.code, exc.detail)
                continue
            await client.mark_acked(entry.id)
            if stamp is not None:
                stamps.append((entry.doc_id, stamp))
        rebuilds = await client.pending_rebuilds()
        if not rebuilds:
            break
        for doc_id in rebuilds:
            await client.rebuild_from_relay(doc_id, relay.replica(doc_id).encode_state())
    return stamps


async def pull(
    client: LocalClient, relay: FakeRelay, docs: Iterable[str] | None = None
) -> list[VerdictChange]:
    """Catch up documents from the relay by state vector (the sync engine's catch-up step)."""
    changes: list[VerdictChange] = []
    for doc_id in docs if docs is not None else await client.subscribed_docs():
        if doc_id not in relay.docs:
            continue
        update = relay.diff(doc_id, await client.state_vector(doc_id))
        if update != EMPTY_UPDATE:
            changes.extend(await client.apply_remote(doc_id, update))
    return changes


async def setup_shop(
    tmp: Path, world: World, relay: FakeRelay, capacity: int = 2, shop: str = SHOP
) -> LocalClient:
    """An owner profile that created a shop with slot ``cut-10``, pushed to the relay."""
    admin = await open_profile(tmp / "admin", world, "u-admin", roles=["admin"])
    await admin.add_category("hair", "Hair")
    await push(admin, relay)
    await admin.close()
    owner = await open_profile(tmp / "owner", world, "u-owner", owner_of=[shop])
    await owner.create_shop(shop, name="Barber One", category="hair", location="Main St 1", lat=1.5, lon=2.5)
    await owner.add_slot(shop, "cut-10", service="haircut", start="10:00", duration=30, capacity=capacity)
    await push(owner, relay)
    return owner
