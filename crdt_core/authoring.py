"""Writing signed records into a document: what clients do for their user and the relay does for stamps.

Why this lives in the pure core: the client, the relay, the demo, the tests and the benchmarks all
write the same records, and a record written any other way would fail validation elsewhere. Each
write is one engine transaction that also carries the author's certificate when the document does
not hold it yet, so the update is self-contained: whoever receives it can verify it offline.

Every write goes through a replica whose Yjs client id belongs to the signer
(``crdt_core.clientids``): ``Replica(author.client_id(g))`` for a device, and for the relay
``client_id_for("relay:" + kid, g)``. Validation refuses anything else (``foreign_client``), so
:meth:`Author.put` and :func:`write_stamps` raise ``ValueError`` rather than write structs that no
replica would accept.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from crdt_core.certs import DeviceKey, SigningKey
from crdt_core.clientids import client_id_for, owns_client
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.records import sign_record, signer_ref
from crdt_core.schema import (
    CERTS_ROOT,
    DocId,
    EventType,
    Reservation,
    Stamp,
    StatusEvent,
    TypedRecord,
    parse_doc_id,
    stamp_key,
)

__all__ = ["Author", "check_writer", "new_id", "write_stamps"]


def new_id() -> str:
    """A random record id: 96 bits, so two offline devices never collide in practice."""
    return secrets.token_hex(12)


def _doc(doc_id: str | DocId) -> DocId:
    return doc_id if isinstance(doc_id, DocId) else parse_doc_id(doc_id)


def check_writer(replica: Replica, signer: DeviceKey | SigningKey) -> None:
    """Raises ValueError unless ``replica`` writes under one of ``signer``'s Yjs client ids.

    Every replica refuses a struct whose client id is not its record's signer's
    (``foreign_client``), so writing through such a replica would only produce a refused update.
    """
    ref = signer_ref(signer)
    if not owns_client(ref, replica.client_id):
        raise ValueError(
            f"replica writes under Yjs client {replica.client_id}, which is not one of {ref}'s:"
            f" open it as Replica(client_id_for({ref!r}, generation))"
        )


class Author:
    """A signed-in device: its user id, its certified key and its clock."""

    def __init__(
        self,
        user_id: str,
        device: DeviceKey,
        clock: HybridClock,
        id_factory: Callable[[], str] = new_id,
    ) -> None:
        self.user_id = user_id
        self.device = device
        self.clock = clock
        self._new_id = id_factory

    def hlc(self) -> str:
        return self.clock.now().encode()

    @property
    def signer(self) -> str:
        """The signer reference this author's records carry: its certificate id."""
        return self.device.cert_id

    def client_id(self, generation: int = 0) -> int:
        """The Yjs client id this device writes a document under at ``generation`` (0..63).

        A device writes each document under one id (generation 0 at first) and moves that
        document to the next generation after the relay refused one of its writes there.
        """
        return client_id_for(self.device.cert_id, generation)

    def put(
        self, replica: Replica, doc_id: str | DocId, records: Sequence[tuple[TypedRecord, str | None]]
    ) -> bytes:
        """Sign and write ``(record, key)`` pairs in one transaction; a None key gets a fresh id.

        Returns the transaction's update, the thing to queue for the relay.

        Raises:
            ValueError: ``replica``'s client id is not one of this device's (see ``client_id``).
        """
        check_writer(replica, self.device)
        doc = _doc(doc_id)
        did = str(doc)
        entries: list[tuple[str, str, bytes]] = []
        if not replica.has_key(CERTS_ROOT, self.device.cert_id):
            entries.append((CERTS_ROOT, self.device.cert_id, self.device.certificate))
        for record, key in records:
            if key is None:
                key = getattr(record, record.KEY_FIELD) if record.KEY_FIELD else self._new_id()
            raw = sign_record(did, key, record.KIND, record.to_fields(), self.device, record.needed_version())
            entries.append((record.ROOT, key, raw))
        return replica.write(entries)

    def book(
        self,
        replica: Replica,
        doc_id: str | DocId,
        slot: str,
        party: int = 1,
        note: str | None = None,
        reservation_id: str | None = None,
    ) -> tuple[Reservation, bytes]:
        res = Reservation(
            id=reservation_id or self._new_id(),
            slot=slot,
            party=party,
            customer=self.user_id,
            hlc=self.hlc(),
            note=note,
        )
        return res, self.put(replica, doc_id, [(res, None)])

    def event(
        self,
        replica: Replica,
        doc_id: str | DocId,
        reservation_id: str,
        kind: EventType | str,
        reason: str | None = None,
        event_id: str | None = None,
    ) -> tuple[StatusEvent, bytes]:
        ev = StatusEvent(
            id=event_id or self._new_id(),
            reservation=reservation_id,
            type=EventType(kind).value,
            by=self.user_id,
            hlc=self.hlc(),
            reason=reason,
        )
        return ev, self.put(replica, doc_id, [(ev, None)])


def write_stamps(
    replica: Replica,
    doc_id: str | DocId,
    relay_key: SigningKey,
    reservation_ids: Sequence[str],
    first_no: int,
    at_ms: int,
) -> tuple[list[Stamp], bytes]:
    """The relay's stamps for newly accepted claims, numbered ``first_no``, ``first_no + 1``, ...

    Raises:
        ValueError: ``replica``'s client id is not one of ``relay:<kid>``'s for ``relay_key``.
    """
    check_writer(replica, relay_key)
    did = str(_doc(doc_id))
    stamps: list[Stamp] = []
    entries: list[tuple[str, str, bytes]] = []
    for offset, rid in enumerate(reservation_ids):
        stamp = Stamp(no=first_no + offset, reservation=rid, at=at_ms)
        key = stamp_key(stamp.no)
        entries.append(
            (
                Stamp.ROOT,
                key,
                sign_record(did, key, Stamp.KIND, stamp.to_fields(), relay_key, stamp.needed_version()),
            )
        )
        stamps.append(stamp)
    return stamps, replica.write(entries)
