"""The client library's exceptions (the tree is drawn in :mod:`client`)."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the errors the local client raises on purpose (messages are for the user)."""


class NotLoggedIn(ClientError):
    """No identity (or no relay keys, or the certificate expired): log in again."""


class NotAllowed(ClientError):
    """The user's certificate does not grant this action (the relay would refuse it)."""


class NotFound(ClientError):
    """No such shop, slot or reservation on this replica (sync first?)."""


class InvalidRequest(ClientError, ValueError):
    """An argument breaks the schema (an id, a party size, a time...)."""
