"""Shared builders for crdt_core tests: a relay key, certified devices, fixed clocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from crdt_core.authoring import Author
from crdt_core.certs import CertificateCache, DeviceKey, SigningKey, issue_certificate, public_bytes
from crdt_core.clientids import client_id_for
from crdt_core.engine import Replica
from crdt_core.hlc import HybridClock
from crdt_core.records import RELAY_SIGNER_PREFIX, open_record

T = TypeVar("T")

#: A fixed "now" so tests never depend on the machine's clock.
NOW_MS = 1_800_000_000_000
HOUR_MS = 3_600_000


def fixed_seed_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))


@dataclass
class World:
    """A relay key and a set of certified devices, all deterministic."""

    relay: SigningKey = field(default_factory=lambda: SigningKey("relay-k1", fixed_seed_key(1)))
    now_ms: int = NOW_MS
    _seed: int = 100

    @property
    def trusted(self) -> dict[str, bytes]:
        return {self.relay.kid: self.relay.public}

    def cache(self) -> CertificateCache:
        return CertificateCache(self.trusted)

    def device(
        self,
        user_id: str,
        *,
        roles: Sequence[str] = (),
        owner_of: Sequence[str] = (),
        staff_of: Sequence[str] = (),
        valid_from_ms: int | None = None,
        valid_until_ms: int | None = None,
        signer: SigningKey | None = None,
        clock_ms: int | None = None,
    ) -> Author:
        self._seed += 1
        key = fixed_seed_key(self._seed)
        cert = issue_certificate(
            signer or self.relay,
            user_id=user_id,
            roles=list(roles),
            owner_of=list(owner_of),
            staff_of=list(staff_of),
            device_public_key=public_bytes(key),
            issued_at_ms=valid_from_ms if valid_from_ms is not None else self.now_ms - HOUR_MS,
            expires_at_ms=valid_until_ms if valid_until_ms is not None else self.now_ms + 24 * HOUR_MS,
        )
        at = clock_ms if clock_ms is not None else self.now_ms
        clock = HybridClock(user_id, physical_ms=lambda: at)
        ids = iter(range(1, 10**9))
        return Author(user_id, DeviceKey(key, cert), clock, id_factory=lambda: f"{user_id}-{next(ids)}")


def relay_client(key: SigningKey, generation: int = 0) -> int:
    """The Yjs client id the relay key ``key`` stamps under (``crdt_core.clientids``)."""
    return client_id_for(RELAY_SIGNER_PREFIX + key.kid, generation)


def relay_replica(key: SigningKey, generation: int = 0) -> Replica:
    """An empty replica that may write stamps signed by ``key``."""
    return Replica(relay_client(key, generation))


def signer_replica(record: bytes, generation: int = 1) -> Replica:
    """An empty replica whose client id belongs to the signer named in ``record``'s envelope:
    what a crafted record needs to reach the check it is meant for (not ``foreign_client``).
    Generation 1 by default, so its clocks never collide with the signer's ordinary writes."""
    return Replica(client_id_for(open_record(record).signer, generation))


def write_through(replica: Replica, client_id: int, write: Callable[[Replica], T]) -> T:
    """Run ``write`` on a copy of ``replica`` that writes under ``client_id``, then bring what it
    wrote back into ``replica``: how a test lets several signers write into one replica, since a
    replica writes under one client id and each signer has its own (``crdt_core.clientids``)."""
    view = replica.copy(client_id)
    out = write(view)
    replica.apply_update(view.diff(replica.state_vector()))
    return out
