"""The relay's exceptions form one tree under ``relay.errors.RelayError`` (drawn in that module)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import relay
from relay.errors import RelayError

RELAY = Path(relay.__file__).resolve().parent


def _relay_exceptions() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for path in sorted(RELAY.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(RELAY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        classes = [
            n.name for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)
        ]
        if not classes:
            continue
        module = importlib.import_module(name)
        for cls_name in classes:
            cls = getattr(module, cls_name)
            if inspect.isclass(cls) and issubclass(cls, BaseException):
                found.append(cls)
    return found


def test_every_relay_exception_is_a_relay_error() -> None:
    found = _relay_exceptions()
    assert len(found) > 20  # the account, token, store, document, fan-out, HTTP and CLI errors
    assert [f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, RelayError)] == []


def test_the_tree_in_the_docstring_names_every_relay_exception() -> None:
    drawn = relay.errors.__doc__ or ""
    missing = [c.__name__ for c in _relay_exceptions() if c.__name__ not in drawn]
    assert missing == []
