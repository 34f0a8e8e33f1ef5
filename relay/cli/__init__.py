"""``quickslot-relay`` (also ``python -m relay.cli``): serve, and administer users and keys.

:mod:`relay.cli.commands` holds the parser and the commands. ``main`` is importable from here as
well, so an entry point installed as ``relay.cli:main`` (before the commands had their own module)
keeps working; it imports the commands only when called.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``quickslot-relay`` (:func:`relay.cli.commands.main`)."""
    from relay.cli.commands import main as run

    return run(argv)
