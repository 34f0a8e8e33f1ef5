"""Equivocation: an update that names a Yjs id a replica already holds, with different content.

Why it needs its own check: the engine skips a struct whose ``(client, clock)`` it already holds,
so such an update looks like a harmless re-send and is dropped, silently. Either a device signed
two versions of one id and handed one to each replica (which then never converge), or a writer
took another device's next id first (that device's offline booking would be acknowledged and
lost). The relay refuses such a "re-send" (reason ``equivocation``) and peers refuse it from
each other, both through :func:`find_equivocation`.

Only structs the replica has integrated are compared (below its state vector); a struct parked
for a missing dependency, or new here, is left to validation. Pure: reads the replica, no I/O.
"""

from __future__ import annotations

from crdt_core.engine import Replica
from crdt_core.errors import EngineError, SchemaError
from crdt_core.records import open_record
from crdt_core.yupdate import decode_update

__all__ = ["find_equivocation"]


def find_equivocation(replica: Replica, update: bytes) -> str | None:
    """Whether ``update`` claims a Yjs id ``replica`` holds with different content.

    Returns a description naming the id, the map and key, and the signer, or None (no such id;
    also for an update that does not decode: validation reports it as malformed). Read-only.

    A key that holds something other than bytes, or nothing, while the update puts bytes there,
    counts as different content (it is never a re-send of a QuickSlot record).
    """
    try:
        decoded = decode_update(update)
    except EngineError:
        return None
    clocks = replica.clocks()
    for ins in decoded.inserts:
        if ins.clock >= clocks.get(ins.client, 0):
            continue  # new here: validation decides
        try:
            held = replica.get_bytes(ins.root, ins.key)
        except EngineError:
            held = None  # not bytes: no record of ours
        if held == ins.value:
            continue
        signer = "unknown signer"
        if isinstance(ins.value, bytes):
            try:
                signer = f"signed by {open_record(ins.value).signer}"
            except SchemaError:
                pass
        where = f"Yjs id {ins.client}:{ins.clock} ({ins.root}/{ins.key})"
        return f"{where} is held with different content ({signer})"
    return None
