"""``quickslot``: the command-line client (entry point ``quickslot = "client.cli:main"``).

``app`` builds the parser and runs a command; the commands live in modules per group.
"""

from client.cli.app import main

__all__ = ["main"]
