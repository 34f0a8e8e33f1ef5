"""The root of the client's exceptions: :class:`ClientError` (the tree is drawn in :mod:`client`)."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the client raises on purpose; its message is meant for the user."""
