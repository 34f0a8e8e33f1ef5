"""``quickslot-relay`` (also ``python -m relay.cli``): serve, and administer users and keys.

:mod:`relay.cli.commands` holds the parser and the commands.
"""

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point under its earlier name: an editable install made before the CLI
    became a package still has a ``quickslot-relay`` script that calls ``relay.cli:main``, and it
    keeps working until the package is reinstalled (the entry point is now
    ``relay.cli.commands:main``)."""
    from relay.cli.commands import main as run

    return run(argv)
