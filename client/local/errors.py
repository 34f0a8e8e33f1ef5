"""The local library's exceptions, under the client's root (the tree is drawn in :mod:`client`)."""

from __future__ import annotations

from client.errors import ClientError

__all__ = ["ClientError", "InvalidRequest", "NotAllowed", "NotFound", "NotLoggedIn"]


class NotLoggedIn(ClientError):
    """No identity (or no relay keys, or the certificate expired): log in again."""


class NotAllowed(ClientError):
    """The user's certificate does not grant this action (the relay would refuse it)."""


class NotFound(ClientError):
    """No such shop, slot or reservation on this replica (sync first?)."""


class InvalidRequest(ClientError, ValueError):
    """An argument breaks the schema (an id, a party size, a time...)."""
