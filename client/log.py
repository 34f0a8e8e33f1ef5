"""The client's logging: one namespace (``quickslot.client.*``) and one structured style.

Every module of the client logs through :func:`get_logger` (``quickslot.client.sync.session``,
``quickslot.client.local.base`` ...), so an embedding app sets the level of the whole client, or
of one part, with one ``logging.getLogger("quickslot.client")`` call. Events are logged with
:func:`log_event`: a short stable event name (``doc_rebuilt``, ``relay_unreachable``) as the
message and the details as fields on the record (``extra``), the style of the relay's
``relay/logging.py``, so a JSON formatter (the relay's ``JsonFormatter`` works) emits them as fields.
Fields named like secrets (tokens, passwords, keys) are never passed: the client logs none.
"""

from __future__ import annotations

import logging
from typing import Any

#: The root of every client logger.
NAMESPACE = "quickslot.client"

# Attributes every LogRecord has; a field with one of these names is renamed (``name`` -> ``name_``).
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


def get_logger(module: str) -> logging.Logger:
    """The logger of a client module: ``get_logger(__name__)`` in ``client.sync.session`` is
    ``quickslot.client.sync.session``."""
    short = module.removeprefix("client").lstrip(".")
    return logging.getLogger(f"{NAMESPACE}.{short}" if short else NAMESPACE)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` as the message with ``fields`` on the record (never formatted into it)."""
    if logger.isEnabledFor(level):
        safe = {k if k not in _RECORD_ATTRS else f"{k}_": v for k, v in fields.items()}
        logger.log(level, event, extra=safe)
