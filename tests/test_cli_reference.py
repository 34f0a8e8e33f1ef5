"""The command-line reference (docs/cli.md) matches the parsers, and every option explains itself.

Why: a newcomer learns the CLIs from ``--help`` and docs/cli.md; an option without a word of help,
or whose default is not said, sends them to the source instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from client.cli.app import build_parser as client_parser
from relay.cli.parser import build_parser as relay_parser
from tools import cli_docs


def _actions(prog: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(f"{prog} {name}", sub)
            continue
        yield prog, action


PARSERS = [("quickslot", client_parser), ("quickslot-relay", relay_parser)]


@pytest.mark.parametrize(("prog", "build"), PARSERS)
def test_every_argument_has_help(prog: str, build: object) -> None:
    assert callable(build)
    missing = [f"{where}: {a.option_strings or a.dest}" for where, a in _actions(prog, build()) if not a.help]
    assert missing == []


@pytest.mark.parametrize(("prog", "build"), PARSERS)
def test_every_option_with_a_default_says_it(prog: str, build: object) -> None:
    assert callable(build)
    silent = []
    for where, action in _actions(prog, build()):
        default = action.default
        if not action.option_strings or default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            continue
        if "default" not in (action.help or ""):
            silent.append(f"{where}: {action.option_strings[0]} (default {default!r})")
    assert silent == []


def test_the_reference_page_matches_the_parsers() -> None:
    assert cli_docs.PAGE.read_text() == cli_docs.render(), (
        "docs/cli.md is stale: run python -m tools.cli_docs"
    )
