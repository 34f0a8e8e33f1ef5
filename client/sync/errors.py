"""The sync service's exceptions (the client's tree is drawn in :mod:`client`)."""

from __future__ import annotations

from client.errors import ClientError


class SyncError(ClientError):
    """A sync could not complete; ``code`` is the close code when the relay closed."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SyncRelayUnreachable(SyncError):
    """The relay did not answer (refused, timed out, dropped): local changes stay queued."""


class SyncRelayInsecure(SyncRelayUnreachable):
    """The relay failed the TLS check (untrusted certificate, pin mismatch): nothing was sent to it.

    A subclass of :class:`SyncRelayUnreachable` so that loops which retry later stay correct; the
    CLI tells it apart (its own exit status), because waiting does not fix it.
    """


class SyncWebsocketBlocked(SyncRelayUnreachable):
    """The websocket could not be opened but the relay answers plain HTTP (``transport="auto"``
    only): the sync goes over HTTP instead (:mod:`client.sync.http_fallback`)."""


class SyncLoginRequired(SyncError):
    """The relay refused the session for good (or the refresh failed): log in again."""


class SyncStopped(SyncError):
    """The relay closed with a permanent code (policy, protocol violation, account disabled)."""
