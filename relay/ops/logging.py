"""Structured JSON logs for the relay, one object per line, with secrets scrubbed.

Operators feed these lines to a log pipeline, so every line is a JSON object with ``ts``,
``level``, ``logger``, ``event`` and the fields passed by :func:`log_event`. Secrets must never
reach a log: fields whose name suggests a secret are replaced by ``"[redacted]"`` and anything
shaped like a JWT is masked in every message, including third-party ones (uvicorn's access log
prints request lines, and a careless client may put a token into a query string).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

_SECRET_FIELD = re.compile(r"pass(word)?|token|secret|authorization|cookie|private|credential", re.I)
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` (our fields).
# ``color_message`` is uvicorn's ANSI-coloured duplicate of the message.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def scrub(value: Any, key: str = "") -> Any:
    """Return ``value`` with secret-looking fields and JWT-shaped strings masked."""
    if key and _SECRET_FIELD.search(key):
        return REDACTED
    if isinstance(value, str):
        return _JWT_SHAPE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {str(k): scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    """Format records as single-line JSON objects with scrubbed fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": scrub(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                entry[key] = scrub(value, key)
        if record.exc_info:
            entry["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class ClientFaultFilter(logging.Filter):
    """Fold uvicorn's reports of a client's malformed input into a short warning per interval.

    Why: uvicorn logs a text frame with invalid UTF-8 at level error with a traceback (~3 KB a
    line), although the fault is the client's and the connection is already closed with 1007, so
    any client could fill the relay's error log (found by the fuzzing campaign). One warning line,
    without the traceback, per ``interval_s``, says how many such frames it stands for.
    """

    MESSAGES = frozenset({"Invalid UTF-8 sequence received from client."})

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES:
            return True
        self._folded += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        record.msg, record.args = "client sent a text frame with invalid UTF-8 (closed with 1007)", ()
        record.frames = self._folded
        self._folded = 0
        return True


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Route every logger (ours, uvicorn's, asyncio's) through one JSON handler on ``stream``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # deprecation warnings become JSON lines too
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientFaultFilter) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(ClientFaultFilter())


#: The relay's one logger namespace: every relay logger is ``quickslot.relay.<module path>``.
NAMESPACE = "quickslot.relay"


def get_logger(name: str) -> logging.Logger:
    """The logger for relay module ``name`` (pass ``__name__``) in the ``quickslot.relay`` namespace:
    ``relay.sync.hub`` logs as ``quickslot.relay.sync.hub``."""
    if name == NAMESPACE or name.startswith(NAMESPACE + "."):
        return logging.getLogger(name)
    tail = name.removeprefix("relay").lstrip(".")
    return logging.getLogger(f"{NAMESPACE}.{tail}" if tail else NAMESPACE)


def log_event(
    logger: logging.Logger,
    event: str,
    level: int = logging.INFO,
    *,
    exc_info: BaseException | bool | None = None,
    **fields: Any,
) -> None:
    """Log ``event`` (a short snake_case name, the line's ``event``) with structured ``fields``
    (scrubbed by the formatter, never pre-formatted into the message); ``exc_info`` adds a
    traceback as with :meth:`logging.Logger.exception`."""
    if logger.isEnabledFor(level):
        safe = {k if k not in _RECORD_ATTRS else f"{k}_": v for k, v in fields.items()}
        logger.log(level, event, extra=safe, exc_info=exc_info)
