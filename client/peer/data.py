"""What peer sync does with the bytes a peer sends: split per writer, check, apply, forward.

Why split an update per Yjs client id before applying it: a QuickSlot device writes each document
under one client id of its own (``crdt_core.clientids``), so one client id's structs are one
device's writes in that document. A peer's ``sync`` answer or diff bundles many devices'. Validated
whole, one record this replica refuses would refuse every other device's with it; forwarded whole,
one record the *relay* refuses (a clock from the future, a revoked device) would keep every
innocent booking in the bundle from reaching it. Split, each device's part is accepted or refused
on its own, here and at the relay. (Within one device's part, a refused struct refuses the rest:
its later structs continue its clock, so they could not be applied without it anyway.) Splitting
costs one engine diff per halving level (O(n log k)).

A device may write only under its own derived client ids: a device writing its record at the id
(and clock) another device uses next would make that device's real write a silent no-op wherever
the squatter's arrived first. ``crdt_core.validation`` refuses such a part (``foreign_client``)
on every path, so a peer's squatting part is refused on its own and never forwarded.

Why check for equivocation: the engine ignores a struct whose (client, clock) it already holds, so
a device that signs *different* records under one Yjs id and hands one version to each peer makes
replicas that never converge, silently. Comparing the incoming value at an already-integrated id
with the one held costs a map lookup per such struct; a mismatch refuses the update with
``equivocation`` and names the signer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial

import msgpack

from client.local.client import LocalClient
from crdt_core.engine import EMPTY_UPDATE, Replica, diff_update
from crdt_core.equivocation import find_equivocation
from crdt_core.errors import EngineError, SchemaError
from crdt_core.schema import CERTS_ROOT
from crdt_core.yupdate import decode_update, encode_state_vector

__all__ = [
    "PeerApply",
    "apply_from_peer",
    "content_digest",
    "find_equivocation",
    "split_by_writer",
]

#: Refusals that a later part of the same batch can cure (its certificate, its reservation, the
#: structs it continues); they are retried while the batch makes progress.
_ORDER_DEPENDENT = frozenset({"missing_deps", "unknown_certificate", "unknown_reservation"})
#: Parts that others depend on first: certificates, then reservations, then events, then stamps.
_RANK = {CERTS_ROOT: 0, "events": 2, "stamps": 3}


def split_by_writer(update: bytes) -> list[bytes]:
    """One update per Yjs client id of ``update``, certificates and records before what needs them.

    An update that does not decode, deletes anything or has a single writer is returned as is:
    validation refuses the first two whole, and the last needs no split.
    """
    try:
        decoded = decode_update(update)
    except EngineError:
        return [update]
    if decoded.deletes or len(decoded.ranges) <= 1:
        return [update]
    ranges = decoded.ranges
    rank: dict[int, int] = {}
    for ins in decoded.inserts:
        rank[ins.client] = min(rank.get(ins.client, 9), _RANK.get(ins.root, 1))
    parts: list[tuple[int, int, bytes]] = []

    def split(data: bytes, clients: list[int]) -> None:
        if len(clients) == 1:
            parts.append((rank.get(clients[0], 9), clients[0], data))
            return
        half = len(clients) // 2
        for side, other in ((clients[:half], clients[half:]), (clients[half:], clients[:half])):
            known = {c: ranges[c][0] for c in side} | {c: ranges[c][1] for c in other}
            split(diff_update(data, encode_state_vector(known)), side)

    try:
        split(update, sorted(ranges))
    except EngineError:
        return [update]
    return [data for _rank, _client, data in sorted(parts)]


def content_digest(replica: Replica) -> bytes:
    """A digest of a document's content (every map's keys and values), independent of how the
    replica came to hold it: two honest replicas with equal state vectors have equal digests."""
    outer = hashlib.sha256()
    for root in sorted(replica.roots()):
        for key, value in sorted(replica.items(root)):
            outer.update(msgpack.packb([root, key, hashlib.sha256(value).digest()]))
    return outer.digest()


@dataclass
class PeerApply:
    """What :func:`apply_from_peer` did: parts stored, and those refused with a reason."""

    applied: int = 0
    stored_docs: set[str] = field(default_factory=set)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    """``(doc id, reason code, detail)`` per refused part."""


async def apply_from_peer(
    local: LocalClient, updates: Iterable[tuple[str, bytes]], *, split: bool = True
) -> PeerApply:
    """Validate and apply what a peer sent, one writer at a time; queue it for the relay.

    Each stored part becomes its own ``forward`` outbox entry (``apply_remote_batch`` with
    ``from_peer=True``), so the relay judges each author's transaction on its own. Parts refused
    for an order dependency are retried while a round makes progress.

    Args:
        split: False to take each update whole, as the acceptor does for an ``upd`` it must
            answer with one ``ack`` or one ``err`` (the dialer already sends one writer per update).
    """
    report = PeerApply()
    todo: list[tuple[str, bytes]] = []
    for doc, update in updates:
        if update == EMPTY_UPDATE:
            continue
        for part in split_by_writer(update) if split else [update]:
            try:
                clash = await local.inspect(doc, partial(find_equivocation, update=part))
            except (SchemaError, ValueError) as exc:
                report.refused.append((doc, "bad_doc", str(exc)))
                continue
            if clash is not None:
                report.refused.append((doc, "equivocation", clash))
            else:
                todo.append((doc, part))
    while todo:
        result = await local.apply_remote_batch(todo, from_peer=True)
        report.applied += result.applied
        failed = {f.index: f for f in result.failed}
        report.stored_docs.update(doc for i, (doc, _) in enumerate(todo) if i not in failed)
        retry = [todo[i] for i, f in failed.items() if f.error.code in _ORDER_DEPENDENT]
        final = [f for f in result.failed if f.error.code not in _ORDER_DEPENDENT]
        report.refused.extend((f.doc_id, f.error.code, f.error.detail) for f in final)
        if len(failed) == len(todo):  # no progress: what is left stays refused
            report.refused.extend(
                (f.doc_id, f.error.code, f.error.detail)
                for f in result.failed
                if f.error.code in _ORDER_DEPENDENT
            )
            break
        todo = retry
    return report
