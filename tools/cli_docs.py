"""Writes docs/cli.md from the two command lines' own parsers.

Why generated: a hand-written reference drifts from ``--help`` the first time an option is added.
The page is built from the same ``argparse`` parsers the programs run, so it lists every command,
argument and option with the help text and default ``--help`` shows; a test fails when the
checked-in page differs from what this module would write now.

    python -m tools.cli_docs            # rewrite docs/cli.md
    python -m tools.cli_docs --check    # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

INTRO = """\
# Command-line reference

Generated from the programs' own parsers by `python -m tools.cli_docs` (a test checks that this page
matches them); `--help` on any command prints the same text.

* `quickslot`: the client (a profile per `--home`): browse, book, staff and owner actions, sync
  with a relay, or with a peer directly.
* `quickslot-relay`: the relay: serve, and administer users and signing keys.

Options shown on a top-level command may also follow the subcommand (`quickslot book ... --json`).
"""

CLIENT_EXIT_CODES = """\
## Exit codes of `quickslot`

| code | name | meaning |
|---|---|---|
| 0 | ok | done (a booking made offline is queued: that is success, with `"queued": true`) |
| 1 | failure | an unexpected failure (a bug, or a local database problem; the message names the path) |
| 2 | usage | bad arguments, or an id or value the record schema refuses |
| 3 | auth | not logged in, wrong credentials, or the session was revoked: log in again |
| 4 | rejected | the relay refused (a change set aside, not allowed, not found), or `sync` left some unsent |
| 5 | unreachable | the relay (or, for `peer sync`, the peer) could not be reached; queued changes wait |
| 6 | insecure | the relay's TLS certificate is not trusted or matches no `--pin`; nothing was sent |

With `--json`, a failure prints `{"error": {"code", "message", "exit_code"}}` on stdout.
"""

RELAY_EXIT_CODES = """\
## Exit codes of `quickslot-relay`

| code | meaning |
|---|---|
| 0 | done; for `serve`, a clean shutdown after SIGTERM or SIGINT |
| 1 | failed: stderr says why (an unusable data directory, a port in use, an unknown account, ...) |
| 2 | usage error: bad arguments |

With `--json`, a failure also prints `{"error": {"code", "message"}}` on stdout.
"""


#: Options every subcommand accepts after its name too; listed once, on the top-level command.
_SHARED = {"home", "json", "data", "log_level", "store", "store_replica"}


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:  # argparse offers no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        params = dict(vars(action), prog="")
        for key, value in list(params.items()):
            if value is argparse.SUPPRESS:
                params[key] = ""
        text = text % params
    return text


def _section(prog: str, about: str, parser: argparse.ArgumentParser, depth: int) -> list[str]:
    lines = [f"{'#' * min(depth, 4)} `{prog}`", ""]
    if about:
        lines += [about[0].upper() + about[1:] + ".", ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if depth > 2 and action.dest in _SHARED:
            continue  # the top-level options every subcommand repeats, listed once above
        if action.option_strings:
            name = ", ".join(action.option_strings)
            if action.nargs != 0:
                name += f" {action.metavar or action.dest.upper()}"
        else:
            name = str(action.metavar or action.dest)
        required = " (required)" if action.required and action.option_strings else ""
        rows.append(f"| `{_cell(name)}` | {_cell(_default_help(action))}{required} |")
    if rows:
        lines += ["| argument | what it does |", "|---|---|", *rows, ""]
    for name, sub_help, sub in _subparsers(parser):
        lines += _section(f"{prog} {name}", sub_help, sub, depth + 1)
    return lines


def render() -> str:
    from client.cli.app import build_parser as client_parser
    from relay.cli.parser import build_parser as relay_parser

    lines = [INTRO]
    lines += _section("quickslot", "the offline-first booking client", client_parser(), 2)
    lines += [CLIENT_EXIT_CODES]
    lines += _section("quickslot-relay", "the relay server and its administration", relay_parser(), 2)
    lines += [RELAY_EXIT_CODES]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description="write docs/cli.md from the parsers")
    args.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale")
    ns = args.parse_args(argv)
    text = render()
    if ns.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is stale: run python -m tools.cli_docs", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
