"""Hybrid logical clocks (Kulkarni et al.): wall-clock-like stamps that never go backwards.

Why: tentative (unstamped) claims are ordered by HLC, and records are checked against their
certificate's validity window by HLC. An HLC stays close to physical time, yet is monotonic on one
device and respects causality across devices (after seeing a remote stamp, every new local stamp
is larger). A remote stamp further in the future than ``max_skew_ms`` is refused rather than
adopted: otherwise one device with a wrong clock would drag every replica's clock forward.

String form ``WWWWWWWWWWWWW-CCCCCC-node``: 13-digit wall milliseconds, 6-digit counter, node id.
Fixed widths make plain string comparison equal to timestamp order (valid until the year 2286).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from crdt_core.errors import ClockSkewError, SchemaError

__all__ = ["HybridClock", "Timestamp"]

_MAX_WALL = 10**13 - 1
_MAX_COUNTER = 999_999
_RE = re.compile(r"([0-9]{13})-([0-9]{6})-([A-Za-z0-9_-]{1,64})\Z")


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    wall_ms: int
    counter: int
    node: str

    def __post_init__(self) -> None:
        if not 0 <= self.wall_ms <= _MAX_WALL or not 0 <= self.counter <= _MAX_COUNTER:
            raise SchemaError("HLC timestamp out of range")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.node):
            raise SchemaError("HLC node id malformed")

    def encode(self) -> str:
        return f"{self.wall_ms:013d}-{self.counter:06d}-{self.node}"

    __str__ = encode

    @classmethod
    def parse(cls, text: str) -> Timestamp:
        m = _RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise SchemaError(f"not an HLC timestamp: {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), m.group(3))


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """One device's clock. ``physical_ms`` is injectable so tests (and replays) are deterministic."""

    def __init__(
        self,
        node: str,
        physical_ms: Callable[[], int] = _system_ms,
        max_skew_ms: int = 60_000,
        last: Timestamp | None = None,
    ) -> None:
        self.node = node
        self._physical = physical_ms
        self.max_skew_ms = max_skew_ms
        self._wall = last.wall_ms if last else 0
        self._counter = last.counter if last else 0
        Timestamp(0, 0, node)  # validates the node id

    @property
    def last(self) -> Timestamp:
        return Timestamp(self._wall, self._counter, self.node)

    def _advance(self, wall: int, counter: int) -> Timestamp:
        if counter > _MAX_COUNTER:
            wall, counter = wall + 1, 0
        self._wall, self._counter = wall, counter
        return Timestamp(wall, counter, self.node)

    def now(self) -> Timestamp:
        """A stamp for a local event: greater than every stamp this clock has issued or seen."""
        phys = self._physical()
        if phys > self._wall:
            return self._advance(phys, 0)
        return self._advance(self._wall, self._counter + 1)

    def observe(self, remote: Timestamp | str) -> Timestamp:
        """Merge a remote stamp; the next ``now()`` is after it.

        Raises:
            ClockSkewError: the remote stamp is more than ``max_skew_ms`` ahead of our physical clock.
        """
        other = Timestamp.parse(remote) if isinstance(remote, str) else remote
        phys = self._physical()
        if other.wall_ms - phys > self.max_skew_ms:
            raise ClockSkewError(
                f"remote clock {other.wall_ms - phys} ms ahead (limit {self.max_skew_ms} ms)"
            )
        wall = max(self._wall, other.wall_ms, phys)
        if wall == self._wall == other.wall_ms:
            counter = max(self._counter, other.counter) + 1
        elif wall == self._wall:
            counter = self._counter + 1
        elif wall == other.wall_ms:
            counter = other.counter + 1
        else:
            counter = 0
        return self._advance(wall, counter)
