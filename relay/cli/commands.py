"""``quickslot-relay``: run the relay and administer its accounts and keys.

Operators run these commands on the relay host; the admin commands open the relay's SQLite file
and key directory directly (no network, no admin API to secure), or with ``--store`` the shared
PostgreSQL database, from any host that reaches it. Changes that running servers must act on (a
disabled user's sessions, revoked families, a key rotation) are recorded in the
``account_events`` table, which every server polls about once a second (and, on PostgreSQL, is
woken for at once by NOTIFY).

Exit codes: 0 success, 1 failure (message on stderr; with ``--json`` also an ``{"error": ...}``
object on stdout), 2 usage error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from relay.cli.admin import run
from relay.cli.errors import EXIT_FAILURE, EXIT_OK, CliError
from relay.cli.output import print_human
from relay.cli.parser import build_parser, config_from_args
from relay.cli.serve import serve
from relay.ops.config import prepare_data_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from relay.ops.logging import configure_logging
        from relay.store.base import load_or_create_epoch

        try:
            config = config_from_args(args)
        except ValueError as e:
            parser.error(str(e))
        configure_logging(config.log_level)
        try:
            prepare_data_dir(config)  # fail early and plainly on an unusable data directory
            load_or_create_epoch(config.data_dir)
        except OSError as e:
            print(
                f"quickslot-relay: error: cannot use data directory {config.data_dir}: {e}", file=sys.stderr
            )
            return EXIT_FAILURE
        try:
            return serve(config, forwarded_allow_ips=args.forwarded_allow_ips)
        except CliError as e:
            print(f"quickslot-relay: error: {e}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        result = run(args)
    except CliError as e:
        if args.json:
            print(json.dumps({"error": {"code": e.code, "message": str(e)}}))
        print(f"quickslot-relay: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except ValueError as e:
        parser.error(str(e))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print_human(args, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
