"""How many sync websockets each client address may hold before it authenticates.

Why: a socket that has not authenticated yet costs the relay a ``--max-connections`` slot for up
to ``--auth-deadline`` and proves nothing about who holds it. Without a per-address bound one
host reconnecting every few seconds could keep every slot busy and lock honest clients out (the
gap docs/security.md used to list). With it, one address holds at most ``cap`` such sockets; the
next one is refused at once (close 1013, counted in ``quickslot_sync_refused_total``).

What is counted: only sockets still waiting for their ``auth`` message. A socket that brought
its token in the ``Authorization`` header is checked during the handshake and is either
authenticated or closed before it reads a byte, so it never takes a slot here; an authenticated
connection is bounded by accounts and ``--max-connections``. A slot is given back when the
socket authenticates or ends, whichever comes first (``relay.sync.hub.SyncHub._release_anonymous``).

Which address: the host of the ASGI scope's ``client``, the same source the REST rate limits use
(``relay.http.api._client_address``); behind a proxy trusted with ``--forwarded-allow-ips``
uvicorn has already replaced it with the address from ``X-Forwarded-For``. IPv6 addresses are
counted per /64, the block one site is usually given: counting single addresses would let a host
that owns a /64 open as many sockets as it likes.
"""

from __future__ import annotations

import ipaddress

__all__ = ["AnonymousSlots", "address_key"]

#: Key for connections whose scope has no client address (not seen under uvicorn over TCP).
UNKNOWN_ADDRESS = "unknown"


def address_key(host: str | None) -> str:
    """The key an address is counted under: an IPv4 address as is (also when IPv4-mapped), an
    IPv6 address as its /64, anything else that is not an IP address (a name, a socket path)
    as the text itself."""
    if not host:
        return UNKNOWN_ADDRESS
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AnonymousSlots:
    """Counts held slots per key; a key's entry exists only while it holds one, so memory is
    bounded by the number of unauthenticated sockets, not by the addresses ever seen."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the per-address cap must be at least 1")
        self.cap = cap
        self._held: dict[str, int] = {}
        self.total = 0

    def take(self, key: str) -> bool:
        """Hold one slot for ``key``; False (nothing held) when ``key`` is at the cap."""
        held = self._held.get(key, 0)
        if held >= self.cap:
            return False
        self._held[key] = held + 1
        self.total += 1
        return True

    def release(self, key: str) -> None:
        """Give back one slot of ``key`` (the caller releases each slot it took exactly once)."""
        held = self._held.get(key, 0)
        if held <= 0:
            raise RuntimeError(f"release without a slot held for {key!r}")
        if held == 1:
            del self._held[key]
        else:
            self._held[key] = held - 1
        self.total -= 1

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    @property
    def addresses(self) -> int:
        """Keys holding at least one slot."""
        return len(self._held)
