"""Yjs client ids bound to signers: who may write a struct is a function of its id.

Why: Yjs names every struct by (client id, clock) and a receiver silently skips a struct whose id it
already holds. If any signer could write under any client id, a device with a valid certificate
could write its own valid record at the (client, clock) another device (or the relay) will use
next, and the victim's real write would later arrive as a no-op. So every replica checks, offline
and from the update and the certificates alone, that a struct's client id belongs to the signer of
the record it carries.

How: a signer's client ids are *derived* from its signer reference (a certificate id, or
``relay:<kid>`` for the relay), ``GENERATIONS`` of them::

    client_id(signer, g) = first 53 bits of SHA-256("quickslot-client-v1\\0" + signer + "\\0" + g)

with ``g`` as two big-endian bytes and the 53 bits read big-endian from the digest's first 7 bytes
(56 bits, shifted right by 3). 53 bits because Yjs keeps client ids in JavaScript numbers.

Why derived ids and not a signed ownership record per client id: a derived id needs no state and
no extra record, so a check is a lookup in a small cached set; an ownership record would have to
be the first struct of its client in every document and be looked up in the document for every
struct. Squatting a derived id needs a certificate whose id hashes onto the victim's id, and
certificate ids are hashes of relay-signed certificates, which the attacker cannot grind offline:
each attempt costs a login, against 2**53 ids.

Why several generations: Yjs numbers a client's structs consecutively, so when the relay refuses a
device's write at clock c, that device's later structs under the same id can never be accepted
(they continue from a clock the relay lacks). The device then moves to the next generation's id
for that document (``docs/protocol.md``, "Refused writes"). A device writes under one id per
document until a refusal, so a document's state vector holds about one entry per device that wrote,
not one per write.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "CLIENT_DOMAIN",
    "GENERATIONS",
    "client_id_for",
    "client_ids_of",
    "forget_derived",
    "generation_of",
    "owns_client",
]

CLIENT_DOMAIN = b"quickslot-client-v1\x00"
#: How many client ids one signer has. A device moves to the next one after a refusal in a
#: document; after the last, it needs a new certificate (a new login) to write there again.
GENERATIONS = 64


def client_id_for(signer: str, generation: int) -> int:
    """The Yjs client id of ``signer``'s generation ``generation`` (0-based)."""
    if not 0 <= generation < GENERATIONS:
        raise ValueError(f"generation {generation} outside 0..{GENERATIONS - 1}")
    digest = hashlib.sha256(
        CLIENT_DOMAIN + signer.encode("utf-8") + b"\x00" + generation.to_bytes(2, "big")
    ).digest()
    return int.from_bytes(digest[:7], "big") >> 3


#: Signers whose ids are cached; a cache entry holds the ids of a prefix of the generations.
_CACHE_LIMIT = 65_536


class _Derived:
    """The ids of ``signer``'s generations 0..upto-1, derived lazily in generation order."""

    __slots__ = ("ids", "upto")

    def __init__(self) -> None:
        self.ids: dict[int, int] = {}
        self.upto = 0


_derived: dict[str, _Derived] = {}


def _entry(signer: str) -> _Derived:
    entry = _derived.get(signer)
    if entry is None:
        if len(_derived) >= _CACHE_LIMIT:
            _derived.pop(next(iter(_derived)), None)
        entry = _derived[signer] = _Derived()
    return entry


def forget_derived() -> None:
    """Drop every cached id: what a fresh process has (benchmarks of a fresh client's catch-up)."""
    _derived.clear()


def generation_of(signer: str, client_id: int) -> int | None:
    """Which generation of ``signer`` ``client_id`` is, or None if it is not ``signer``'s.

    Derives ``signer``'s ids in generation order only as far as needed and caches them per signer:
    a device writes under generation 0 unless the relay refused one of its writes, so a signer
    seen for the first time (a catch-up holds one certificate per booking device) usually costs
    one hash instead of all ``GENERATIONS``. An id that is not the signer's costs all of them,
    once per signer; later misses are dictionary lookups. The answer is the same as comparing
    ``client_id`` with every ``client_id_for(signer, g)``.
    """
    entry = _entry(signer)
    found = entry.ids.get(client_id)
    if found is not None:
        return found
    for g in range(entry.upto, GENERATIONS):
        derived = client_id_for(signer, g)
        entry.ids.setdefault(derived, g)
        entry.upto = g + 1
        if derived == client_id:
            return g
    return None


def client_ids_of(signer: str) -> dict[int, int]:
    """``{client id: generation}`` for every id ``signer`` may write under (cached per signer)."""
    generation_of(signer, -1)  # no id is negative: derives them all
    return dict(_entry(signer).ids)


def owns_client(signer: str, client_id: int) -> bool:
    """Whether a struct under ``client_id`` may carry a record signed by ``signer``."""
    return generation_of(signer, client_id) is not None
