"""The relay's stamps: which claims of an update it numbers, and in what order.

A stamp is a relay-signed record giving a claim its place in the document's stamp sequence
(``crdt_core.authoring.write_stamps``, under the relay's own Yjs client id). :class:`Stamping`
builds the stamp update of a client's update inside ``DocumentManager.order`` (under the
document's lock, with the document's next numbers) and, after a restore, stamps what the stamp
hold left unstamped (``relay.sync.stamp_hold``). See ``relay.sync.hub``, "Stamp order".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from crdt_core.authoring import write_stamps
from crdt_core.certs import SigningKey
from crdt_core.engine import Replica
from crdt_core.validation import ValidatedUpdate
from crdt_core.verdict import stamp_order
from relay.documents.manager import DocumentManager
from relay.documents.results import StampSequence
from relay.store.base import AppendResult, StoredDocument
from relay.sync.stamp_hold import StampHold, held_claims

#: Builds the stamp update of one checked update, under the document's lock (None: nothing to stamp).
StampBuilder = Callable[[Replica, ValidatedUpdate, StampSequence], bytes | None]


class StampDelivery(Protocol):
    """Where swept stamps go once durable (``relay.sync.delivery.Delivery``)."""

    def stamps(self, doc: str, seq: int, update: bytes, stamped: list[tuple[int, str]]) -> None: ...

    def stamps_announcer(
        self, doc: str, stamped: list[tuple[int, str]]
    ) -> Callable[[AppendResult, bytes], None] | None: ...


class Stamping:
    """Stamps the claims of one relay process, with its signing key and clock."""

    def __init__(
        self,
        *,
        manager: DocumentManager,
        signing_key: Callable[[], SigningKey],
        clock_ms: Callable[[], int],
    ) -> None:
        self.manager = manager
        self.signing_key = signing_key
        self.clock_ms = clock_ms
        #: A restored relay's stamp hold (``relay.sync.stamp_hold``); None: stamp at once, always.
        self.hold: StampHold | None = None

    def builder(self, doc: str) -> StampBuilder:
        def build(replica: Replica, checked: ValidatedUpdate, stamps: StampSequence) -> bytes | None:
            carried = checked.new_stamps
            if carried:
                # A client re-sending what a restored relay lost brings the stamps with the claims.
                stamps.carried(max(s.no for s in carried))
            claims = claims_to_stamp(checked)
            if not claims:
                return None
            hold = self.hold
            if hold is not None and hold.holds(doc):
                # A restored relay's stamp hold: stored and forwarded, stamped when it ends.
                hold.note_held(doc, len(claims))
                return None
            numbers = [stamps.next() for _ in claims]
            _, update = write_stamps(replica, doc, self.signing_key(), claims, numbers[0], self.clock_ms())
            return update

        return build

    async def stamp_held(self, doc: str, delivery: StampDelivery) -> int:
        """Stamp the claims a restore's stamp hold left unstamped in ``doc`` (``relay.sync.stamp_hold``),
        in the order they were stored, as one append; subscribers get a ``stamp``. Returns how
        many were stamped, once durable.

        Raises:
            StoreError: the append failed (nothing of it is stored; the document reloads).
        """
        hold = self.hold
        stamped: list[tuple[int, str]] = []

        def build(replica: Replica, stored: StoredDocument, stamps: StampSequence) -> bytes | None:
            claims = held_claims(replica, doc, stored)
            if hold is not None:
                hold.mark_swept(doc)  # under the lock: later claims are stamped after these
            if not claims:
                return None
            first = stamps.next()
            for _ in claims[1:]:
                stamps.next()
            stamped.extend(zip(range(first, first + len(claims)), claims, strict=True))
            _, update = write_stamps(replica, doc, self.signing_key(), claims, first, self.clock_ms())
            return update

        def publish(result: AppendResult, update: bytes) -> None:
            delivery.stamps(doc, result.seq, update, stamped)

        announce = delivery.stamps_announcer(doc, stamped)
        commit = await self.manager.order_own(doc, build, on_durable=publish, on_commit=announce)
        if commit is None:
            return 0
        await asyncio.shield(commit)
        return len(stamped)


def claims_to_stamp(checked: ValidatedUpdate) -> list[str]:
    """The claims of an incoming update the relay stamps, in the order it numbers them: those that
    did not bring their own stamp (a re-send after a restore), in ``crdt_core.verdict.stamp_order``."""
    carried = {s.reservation for s in checked.new_stamps}
    return [r.id for r in stamp_order(checked.new_reservations) if r.id not in carried]
