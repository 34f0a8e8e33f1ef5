"""What one fuzz case is: the steps a hostile connection takes, and the corpus the generators draw on.

A case is pure data (hypothesis can shrink and print it); the harness turns it into bytes on a
socket. Raw websocket frames are kept as specs and built at send time, because the client must
mask each frame with a fresh random key.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One websocket message sent through the client library (one frame)."""

    data: bytes | str

    def __repr__(self) -> str:
        shown = self.data[:48]
        size = len(self.data)
        return f"Message({shown!r}{'...' if size > 48 else ''} [{size}])"


@dataclass(frozen=True)
class Fragments:
    """One websocket message split into several frames (a legal fragmented message)."""

    parts: tuple[bytes, ...] | tuple[str, ...]


@dataclass(frozen=True)
class FrameSpec:
    """One raw websocket frame, any field of which may be wrong."""

    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    declared_length: int | None = None


@dataclass(frozen=True)
class RawFrames:
    """Frames written straight to the socket, bypassing the client library's checks."""

    frames: tuple[FrameSpec, ...]


@dataclass(frozen=True)
class Silence:
    """Send nothing (an unauthenticated connection that never authenticates)."""


Step = Message | Fragments | RawFrames | Silence


@dataclass(frozen=True)
class Case:
    """One fuzz case: its kind (for the figures) and the steps of one connection."""

    kind: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Corpus:
    """Valid material captured from a live session, for generators to send or mutate.

    ``docs`` are the documents the fuzzing connection subscribes to (bookings, its own user
    document, a shop document); ``updates`` are valid, unsent updates of those documents;
    ``forged`` are well-formed updates that break one record rule, labelled by the rule.
    """

    docs: tuple[str, ...]
    user_id: str
    other_user_id: str
    token: str
    updates: tuple[bytes, ...]
    forged: tuple[tuple[str, bytes], ...]
    state_vectors: tuple[bytes, ...]
    frames: tuple[bytes, ...] = field(default=())
