"""``quickslot-relay`` (also ``python -m relay.cli``): serve, and administer users and keys.

:mod:`relay.cli.commands` holds the parser and the commands.
"""
